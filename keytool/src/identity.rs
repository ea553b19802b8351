//! Identities on disk: one key file per identity in a private directory.
//!
//! Layout: `<home>/identities/<name>.json` (the signing key and what the relay said at
//! registration) and `<name>.recovery.json` (the optional recovery key). Directories are created
//! 0700 and files 0600; a key file or directory that group or others can read is refused, with
//! the command that fixes it, as ssh does.
//!
//! A key change (rotate, recover) never leaves the handle without a stored key: the new key is
//! first written to `<name>.json.new-<keyid>`, the relay is told, and only then is the old file
//! kept as `<name>.json.old-<keyid>` and the new one renamed into place.

use crate::output::{Exit, Fail};
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::{canon, hex, KeyId, Object, SecretKey, Value};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The default home: `$XDG_CONFIG_HOME/formica`, else `$HOME/.config/formica`.
pub fn default_home() -> Result<PathBuf, Fail> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("formica"));
    }
    match std::env::var_os("HOME").filter(|x| !x.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config").join("formica")),
        None => Err(
            Fail::new(Exit::Storage, "neither XDG_CONFIG_HOME nor HOME is set")
                .hint("pass --home DIR or set FORMICA_HOME"),
        ),
    }
}

/// A stored identity.
#[derive(Debug)]
pub struct Identity {
    pub name: String,
    pub key: SecretKey,
    pub handle: Option<String>,
    pub relay: Option<String>,
}

pub(crate) fn check_name(name: &str) -> Result<(), Fail> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_');
    if ok {
        Ok(())
    } else {
        Err(
            Fail::new(Exit::Input, format!("invalid identity name {name:?}"))
                .hint("use 1-64 characters of a-z, 0-9, '-' and '_'"),
        )
    }
}

pub(crate) fn dir(home: &Path) -> PathBuf {
    home.join("identities")
}

pub fn key_path(home: &Path, name: &str) -> PathBuf {
    dir(home).join(format!("{name}.json"))
}

pub fn recovery_path(home: &Path, name: &str) -> PathBuf {
    dir(home).join(format!("{name}.recovery.json"))
}

/// Refuses a path that group or others may access.
pub(crate) fn check_private(path: &Path, want: u32) -> Result<(), Fail> {
    let meta = fs::metadata(path)
        .map_err(|e| Fail::new(Exit::Storage, format!("{}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Fail::new(
            Exit::Storage,
            format!("{} has permissions {mode:04o}: a private key must not be readable by group or others", path.display()),
        )
        .hint(format!("chmod {want:o} {}", path.display())));
    }
    Ok(())
}

pub(crate) fn ensure_dir(home: &Path) -> Result<PathBuf, Fail> {
    let d = dir(home);
    let storage = |e: std::io::Error| Fail::new(Exit::Storage, format!("{}: {e}", d.display()));
    if !d.exists() {
        // The directories made here: the names of each must survive a power loss like the
        // key files in the last one.
        let made: Vec<PathBuf> = d
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
            .map(Path::to_path_buf)
            .collect();
        fs::create_dir_all(&d).map_err(storage)?;
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).map_err(storage)?;
        for m in &made {
            sync_parent(m).map_err(storage)?;
        }
    }
    check_private(&d, 0o700)?;
    Ok(d)
}

pub(crate) fn write_private(path: &Path, v: &Value, force: bool) -> Result<(), Fail> {
    let storage = |e: std::io::Error| Fail::new(Exit::Storage, format!("{}: {e}", path.display()));
    if path.exists() && !force {
        return Err(
            Fail::new(Exit::Conflict, format!("{} already exists", path.display()))
                .hint("choose another --name, or pass --force to replace it (the old key is lost)"),
        );
    }
    // Write a new file beside it, fsync, then rename: a crash never leaves half a key.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(storage)?;
    let mut bytes = canon::to_pretty(v).into_bytes();
    bytes.push(b'\n');
    f.write_all(&bytes).map_err(storage)?;
    f.sync_all().map_err(storage)?;
    fs::rename(&tmp, path).map_err(storage)?;
    sync_parent(path).map_err(storage)?;
    Ok(())
}

/// Makes a rename or link in `path`'s directory durable. A file system that cannot sync a
/// directory at all (EINVAL, as some network file systems answer) is not an error; any other
/// failure is.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match fs::File::open(parent)?.sync_all() {
        Err(e) if e.raw_os_error() == Some(22) => Ok(()),
        r => r,
    }
}

fn key_value(
    name: &str,
    key: &SecretKey,
    handle: Option<&str>,
    relay: Option<&str>,
) -> Result<Value, Fail> {
    let mut o = Object::new();
    o.insert("v", Value::Int(1));
    o.insert("name", name.into());
    o.insert("public_key", key.public().to_hex().into());
    o.insert("key_id", key.public().key_id().to_hex().into());
    match passphrase() {
        None => {
            o.insert("seed", hex::encode(&key.seed()).into());
        }
        Some(pass) => {
            o.insert(
                "seed_enc",
                seal_secret(&pass, &key.seed(), &key.public().to_hex())?,
            );
        }
    }
    o.insert("handle", handle.map(Value::from).unwrap_or(Value::Null));
    o.insert("relay", relay.map(Value::from).unwrap_or(Value::Null));
    Ok(Value::Object(o))
}

/// The passphrase for key files, from `FORMICA_PASSPHRASE` (empty means none).
pub(crate) fn passphrase() -> Option<String> {
    std::env::var("FORMICA_PASSPHRASE")
        .ok()
        .filter(|p| !p.is_empty())
}

/// scrypt cost: 2^15 x 8 x 128 bytes = 32 MiB and about 0.1 s per key file opened, so that
/// guessing passphrases for a stolen file is slow.
const SCRYPT_LOG_N: u8 = 15;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;

fn derive(pass: &str, salt: &[u8], log_n: u8, r: u32, p: u32) -> Result<[u8; 32], Fail> {
    let params = scrypt::Params::new(log_n, r, p, 32).map_err(|e| {
        Fail::new(
            Exit::Storage,
            format!("key file encryption parameters: {e}"),
        )
    })?;
    let mut out = [0u8; 32];
    scrypt::scrypt(pass.as_bytes(), salt, &params, &mut out)
        .map_err(|e| Fail::new(Exit::Storage, format!("key derivation: {e}")))?;
    Ok(out)
}

/// Encrypts a 32-byte secret (a signing key's seed, an encryption key): scrypt(passphrase,
/// salt) as a ChaCha20-Poly1305 key, the public key's hex as associated data (so a sealed secret
/// cannot be moved to another key's file).
pub(crate) fn seal_secret(pass: &str, secret: &[u8; 32], public_hex: &str) -> Result<Value, Fail> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let k = derive(pass, &salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)?;
    let cipher = chacha20poly1305::ChaCha20Poly1305::new((&k).into());
    let ct = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: secret,
                aad: public_hex.as_bytes(),
            },
        )
        .map_err(|_| Fail::new(Exit::Storage, "encrypting the key failed"))?;
    let mut o = Object::new();
    o.insert("kdf", "scrypt".into());
    o.insert("log_n", Value::Int(i64::from(SCRYPT_LOG_N)));
    o.insert("r", Value::Int(i64::from(SCRYPT_R)));
    o.insert("p", Value::Int(i64::from(SCRYPT_P)));
    o.insert("salt", hex::encode(&salt).into());
    o.insert("aead", "chacha20poly1305".into());
    o.insert("nonce", hex::encode(&nonce).into());
    o.insert("ct", hex::encode(&ct).into());
    Ok(Value::Object(o))
}

/// Opens what [`seal_secret`] made, with `FORMICA_PASSPHRASE`.
pub(crate) fn open_sealed(path: &Path, v: &Value, public_key: &str) -> Result<[u8; 32], Fail> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let bad = |why: &str| {
        Fail::new(
            Exit::Storage,
            format!("{}: encrypted seed: {why}", path.display()),
        )
    };
    let o = v.as_object().ok_or_else(|| bad("not an object"))?;
    let s = |k: &str| o.get(k).and_then(Value::as_str).ok_or_else(|| bad(k));
    let n = |k: &str| o.get(k).and_then(Value::as_i64).ok_or_else(|| bad(k));
    if s("kdf")? != "scrypt" || s("aead")? != "chacha20poly1305" {
        return Err(bad("unknown kdf or aead"));
    }
    let (log_n, r, p) = (n("log_n")?, n("r")?, n("p")?);
    if !(10..=22).contains(&log_n) || !(1..=32).contains(&r) || !(1..=16).contains(&p) {
        return Err(bad("scrypt parameters out of range"));
    }
    let salt = hex::decode(s("salt")?).ok_or_else(|| bad("salt"))?;
    let nonce: [u8; 12] = hex::decode_array(s("nonce")?).ok_or_else(|| bad("nonce"))?;
    let ct = hex::decode(s("ct")?).ok_or_else(|| bad("ct"))?;
    let pass = passphrase().ok_or_else(|| {
        Fail::new(
            Exit::Storage,
            format!("{} is encrypted with a passphrase", path.display()),
        )
        .hint("set FORMICA_PASSPHRASE to the passphrase it was created with")
    })?;
    let k = derive(&pass, &salt, log_n as u8, r as u32, p as u32)?;
    let cipher = chacha20poly1305::ChaCha20Poly1305::new((&k).into());
    let seed = cipher
        .decrypt(
            (&nonce).into(),
            Payload {
                msg: &ct,
                aad: public_key.as_bytes(),
            },
        )
        .map_err(|_| {
            Fail::new(
                Exit::Storage,
                format!(
                    "{}: wrong passphrase (or the file was altered)",
                    path.display()
                ),
            )
            .hint("check FORMICA_PASSPHRASE")
        })?;
    seed.try_into()
        .map_err(|_| bad("the decrypted seed is not 32 bytes"))
}

/// Stores a new identity (and optionally its recovery key).
pub fn create(
    home: &Path,
    name: &str,
    key: &SecretKey,
    recovery: Option<&SecretKey>,
    force: bool,
) -> Result<(), Fail> {
    check_name(name)?;
    ensure_dir(home)?;
    write_private(
        &key_path(home, name),
        &key_value(name, key, None, None)?,
        force,
    )?;
    if let Some(r) = recovery {
        write_private(
            &recovery_path(home, name),
            &key_value(name, r, None, None)?,
            force,
        )?;
    }
    Ok(())
}

fn read_key_file(path: &Path) -> Result<(SecretKey, Option<String>, Option<String>), Fail> {
    check_private(path, 0o600)?;
    let bytes =
        fs::read(path).map_err(|e| Fail::new(Exit::Storage, format!("{}: {e}", path.display())))?;
    let bad = |why: &str| {
        Fail::new(
            Exit::Storage,
            format!("{} is not a valid key file: {why}", path.display()),
        )
    };
    let v = json::parse(&bytes, JsonLimits::default()).map_err(|e| bad(&e.to_string()))?;
    let o = v.as_object().ok_or_else(|| bad("not an object"))?;
    let seed: [u8; 32] = match (o.get("seed"), o.get("seed_enc")) {
        (Some(Value::String(seed)), None) => {
            hex::decode_array(seed).ok_or_else(|| bad("seed is not 64 hex characters"))?
        }
        (None, Some(sealed)) => {
            let pk = o
                .get("public_key")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no public_key"))?;
            open_sealed(path, sealed, pk)?
        }
        _ => return Err(bad("expected exactly one of seed and seed_enc")),
    };
    let key = SecretKey::from_seed(&seed);
    if let Some(pk) = o.get("public_key").and_then(Value::as_str) {
        if pk != key.public().to_hex() {
            return Err(bad("public_key does not match the seed"));
        }
    }
    let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok((key, s("handle"), s("relay")))
}

/// Loads an identity, refusing unsafe permissions.
pub fn load(home: &Path, name: &str) -> Result<Identity, Fail> {
    check_name(name)?;
    let d = dir(home);
    let path = key_path(home, name);
    if !path.exists() {
        return Err(Fail::new(
            Exit::Storage,
            format!("no identity named {name:?} in {}", d.display()),
        )
        .hint(format!(
            "create one with: keytool keygen --name {name} (or keytool register @handle --identity {name})"
        )));
    }
    check_private(&d, 0o700)?;
    let (key, handle, relay) = read_key_file(&path)?;
    Ok(Identity {
        name: name.to_owned(),
        key,
        handle,
        relay,
    })
}

/// Whether an identity of that name has a key file.
pub fn exists(home: &Path, name: &str) -> bool {
    key_path(home, name).exists()
}

/// Loads an identity's recovery key, if it has one. `handle` and `relay` are those recorded at
/// registration, so that `recover` works from this file alone.
pub fn load_recovery(home: &Path, name: &str) -> Result<Option<Identity>, Fail> {
    check_name(name)?;
    let path = recovery_path(home, name);
    if !path.exists() {
        return Ok(None);
    }
    check_private(&dir(home), 0o700)?;
    let (key, handle, relay) = read_key_file(&path)?;
    Ok(Some(Identity {
        name: name.to_owned(),
        key,
        handle,
        relay,
    }))
}

/// Stores a recovery key for an identity that has none yet.
pub fn create_recovery(home: &Path, name: &str, key: &SecretKey) -> Result<(), Fail> {
    check_name(name)?;
    ensure_dir(home)?;
    write_private(
        &recovery_path(home, name),
        &key_value(name, key, None, None)?,
        false,
    )
}

/// Records the registered handle and the relay URL in the identity's key file and, if there
/// is one, its recovery file. Each file is rewritten atomically and stays 0600.
pub fn update(home: &Path, name: &str, handle: &str, relay: &str) -> Result<(), Fail> {
    check_name(name)?;
    check_private(&dir(home), 0o700)?;
    for path in [key_path(home, name), recovery_path(home, name)] {
        if !path.exists() {
            continue;
        }
        let (key, _, _) = read_key_file(&path)?;
        write_private(
            &path,
            &key_value(name, &key, Some(handle), Some(relay))?,
            true,
        )?;
    }
    Ok(())
}

/// Which of an identity's two files a staged key replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Signing,
    Recovery,
}

/// A new key written beside the file it will replace, not yet in force locally.
#[derive(Debug)]
#[must_use = "a staged key must be committed or discarded"]
pub struct Staged {
    pending: PathBuf,
    target: PathBuf,
}

impl Staged {
    /// Where the new key waits until the relay has accepted it.
    pub fn pending(&self) -> &Path {
        &self.pending
    }

    /// Puts the new key in force: the current file (if any) stays as `<file>.old-<old key id>`
    /// (a hard link, so it keeps mode 0600), then the new file is renamed over it. The target
    /// path holds a complete key file at every moment.
    pub fn commit(self, old: Option<KeyId>) -> Result<Option<PathBuf>, Fail> {
        let storage =
            |p: &Path, e: std::io::Error| Fail::new(Exit::Storage, format!("{}: {e}", p.display()));
        let mut kept = None;
        if let (Some(old), true) = (old, self.target.exists()) {
            let mut o = self.target.as_os_str().to_owned();
            o.push(format!(".old-{}", old.to_hex()));
            let o = PathBuf::from(o);
            let _ = fs::remove_file(&o);
            fs::hard_link(&self.target, &o).map_err(|e| storage(&o, e))?;
            kept = Some(o);
        }
        fs::rename(&self.pending, &self.target).map_err(|e| storage(&self.target, e))?;
        sync_parent(&self.target).map_err(|e| storage(&self.target, e))?;
        Ok(kept)
    }

    /// Drops a staged key the relay refused.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.pending);
    }
}

/// Writes a new key for `slot` to `<file>.new-<key id>` (0600), ready to [`Staged::commit`].
pub fn stage(
    home: &Path,
    name: &str,
    slot: Slot,
    key: &SecretKey,
    handle: &str,
    relay: &str,
) -> Result<Staged, Fail> {
    check_name(name)?;
    ensure_dir(home)?;
    let target = match slot {
        Slot::Signing => key_path(home, name),
        Slot::Recovery => recovery_path(home, name),
    };
    let mut p = target.as_os_str().to_owned();
    p.push(format!(".new-{}", key.public().key_id().to_hex()));
    let pending = PathBuf::from(p);
    write_private(
        &pending,
        &key_value(name, key, Some(handle), Some(relay))?,
        true,
    )?;
    Ok(Staged { pending, target })
}
