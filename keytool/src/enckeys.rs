//! Encryption private keys on disk (SPEC.md LOG-16, SEAL-10): one file per key, beside the
//! identity's key file, named by the key id: `<home>/identities/<name>.enc-<key id>.json`, mode
//! 0600, its secret encrypted with `FORMICA_PASSPHRASE` exactly as a signing key's seed is
//! (`identity::seal_secret`).
//!
//! Files are never deleted by keytool: a message sealed to a key before the next `enc` entry
//! replaced it still opens with that key, so every key ever published stays readable here.

use crate::identity;
use crate::output::{Exit, Fail};
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::seal::{EncPublicKey, EncSecretKey};
use formica_protocol::{hex, KeyId, Object, Value};
use rand::RngCore;
use std::fs;
use std::path::{Path, PathBuf};

/// The file of encryption key `kid` of identity `name`.
pub fn path(home: &Path, name: &str, kid: &KeyId) -> PathBuf {
    identity::dir(home).join(format!("{name}.enc-{}.json", kid.to_hex()))
}

/// A new encryption key from 32 bytes of the OS's CSPRNG (RFC 9180 DeriveKeyPair).
pub fn generate() -> Result<(EncSecretKey, EncPublicKey), Fail> {
    let mut ikm = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut ikm);
    let sk = EncSecretKey::derive(&ikm);
    let pk = sk
        .public()
        .ok_or_else(|| Fail::new(Exit::Failure, "the new encryption key is unusable"))?;
    Ok((sk, pk))
}

/// Stores a new encryption key of identity `name` (0600; encrypted with `FORMICA_PASSPHRASE`
/// when it is set). `expires` is the time the key is published until (ms).
pub fn store(
    home: &Path,
    name: &str,
    sk: &EncSecretKey,
    pk: &EncPublicKey,
    expires: i64,
) -> Result<PathBuf, Fail> {
    identity::check_name(name)?;
    identity::ensure_dir(home)?;
    let mut o = Object::new();
    o.insert("v", Value::Int(1));
    o.insert("name", name.into());
    o.insert("kind", "enc".into());
    o.insert("enc_key", pk.to_hex().into());
    o.insert("key_id", pk.key_id().to_hex().into());
    match identity::passphrase() {
        None => {
            o.insert("secret", hex::encode(&sk.to_bytes()).into());
        }
        Some(pass) => {
            o.insert(
                "secret_enc",
                identity::seal_secret(&pass, &sk.to_bytes(), &pk.to_hex())?,
            );
        }
    }
    o.insert("expires", Value::Int(expires));
    let p = path(home, name, &pk.key_id());
    identity::write_private(&p, &Value::Object(o), false)?;
    Ok(p)
}

/// Drops a key file written for an entry the relay refused (never one that was published).
pub fn discard(p: &Path) {
    let _ = fs::remove_file(p);
}

/// Whether identity `name` holds the private key of encryption key `kid` (a file; not opened).
pub fn held(home: &Path, name: &str, kid: &KeyId) -> bool {
    path(home, name, kid).exists()
}

/// Loads the private key of encryption key `kid`, if this identity holds it. A file that is
/// there but cannot be read (permissions, passphrase, contents) is a failure.
pub fn load(home: &Path, name: &str, kid: &KeyId) -> Result<Option<EncSecretKey>, Fail> {
    identity::check_name(name)?;
    let p = path(home, name, kid);
    if !p.exists() {
        return Ok(None);
    }
    identity::check_private(&identity::dir(home), 0o700)?;
    identity::check_private(&p, 0o600)?;
    let bytes =
        fs::read(&p).map_err(|e| Fail::new(Exit::Storage, format!("{}: {e}", p.display())))?;
    let bad = |why: &str| {
        Fail::new(
            Exit::Storage,
            format!("{} is not a valid encryption key file: {why}", p.display()),
        )
    };
    let v = json::parse(&bytes, JsonLimits::default()).map_err(|e| bad(&e.to_string()))?;
    let o = v.as_object().ok_or_else(|| bad("not an object"))?;
    let public = o
        .get("enc_key")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no enc_key"))?;
    let secret: [u8; 32] = match (o.get("secret"), o.get("secret_enc")) {
        (Some(Value::String(s)), None) => {
            hex::decode_array(s).ok_or_else(|| bad("secret is not 64 hex characters"))?
        }
        (None, Some(sealed)) => identity::open_sealed(&p, sealed, public)?,
        _ => return Err(bad("expected exactly one of secret and secret_enc")),
    };
    let sk = EncSecretKey::from_bytes(&secret);
    let pk = sk
        .public()
        .ok_or_else(|| bad("the secret is not a usable key"))?;
    if pk.to_hex() != public || pk.key_id() != *kid {
        return Err(bad("enc_key does not match the secret or the file name"));
    }
    Ok(Some(sk))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_stored_key_loads_back_and_is_private() {
        let home = std::env::temp_dir().join(format!("formica-enckeys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&home);
        let (sk, pk) = generate().unwrap();
        let p = store(&home, "nova", &sk, &pk, 5).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(held(&home, "nova", &pk.key_id()));
        let back = load(&home, "nova", &pk.key_id()).unwrap().unwrap();
        assert_eq!(back.to_bytes(), sk.to_bytes());
        // A second key of the same id is refused (never overwritten), another id is absent.
        assert!(store(&home, "nova", &sk, &pk, 5).is_err());
        let (_, other) = generate().unwrap();
        assert!(load(&home, "nova", &other.key_id()).unwrap().is_none());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            load(&home, "nova", &pk.key_id()).unwrap_err().exit,
            Exit::Storage
        );
        let _ = fs::remove_dir_all(&home);
    }
}
