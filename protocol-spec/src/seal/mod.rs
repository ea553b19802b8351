//! Sealed payloads (SPEC.md section 20, SEAL-1..SEAL-14): a payload encrypted once under a fresh
//! content key, that key sealed to each recipient's encryption key with HPKE (RFC 9180, base
//! mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305), both bound to the
//! envelope's routing header.
//!
//! Relays read only the structure ([`Sealed::from_value`], [`Sealed::check_addressing`]);
//! senders seal with [`seal`], recipients open with [`open`]. The caller passes the randomness in
//! (the content key and one HPKE ephemeral seed per recipient): this crate does no I/O.

mod crypt;
mod keys;

pub use crypt::{open, padded_len, routing_aad, seal, sealable, OpenError, Recipient, SealError};
pub use keys::{EncPublicKey, EncSecretKey};

use crate::handle::Handle;
use crate::hex;
use crate::json::{Object, Value};
use crate::keys::KeyId;
use crate::schema::{Fields, SchemaError};
use base64::Engine as _;

/// The one suite of version 1 (SEAL-3), by name.
pub const SUITE: &str = "x25519-hkdf-sha256-chacha20poly1305";

/// The HPKE `info` of every sealed content key (SEAL-5): fixed and versioned.
pub const HPKE_INFO: &[u8] = b"formica/v1/sealed-key";

/// The smallest padded plaintext (SEAL-6): shorter payloads all look alike.
pub const PADDED_MIN: usize = 256;

/// The content key's length and that of its sealed form (the key and a 16-byte tag).
pub const CONTENT_KEY_BYTES: usize = 32;
pub const WRAPPED_BYTES: usize = CONTENT_KEY_BYTES + 16;

/// Longest time an encryption key may be published for (LOG-16): 366 days.
pub const ENC_KEY_LIFETIME_MAX_MS: i64 = 366 * 24 * 3600 * 1000;

/// The member of a payload object that marks it sealed (SEAL-1).
pub const SEALED_MEMBER: &str = "sealed";

/// One recipient's sealed copy of the content key (SEAL-4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKey {
    /// The recipient: `to[i]` of the envelope, or its `from` for the sender's own copy.
    pub to: Handle,
    /// The key id (LOG-16) of the encryption key the content key was sealed to.
    pub kid: KeyId,
    /// HPKE's encapsulated key (`enc` of RFC 9180), 32 bytes.
    pub enc: [u8; 32],
    /// HPKE's ciphertext of the content key: 32 bytes and a 16-byte tag.
    pub wrapped: [u8; WRAPPED_BYTES],
}

/// A sealed payload as relays see it (SEAL-1): the suite, one sealed key per recipient, and the
/// content ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub keys: Vec<SealedKey>,
    /// ChaCha20-Poly1305 of the padded plaintext under the content key, tag included.
    pub ct: Vec<u8>,
}

impl Sealed {
    /// True if a payload value is in the sealed form: an object with a `sealed` member.
    pub fn is_sealed_value(v: &Value) -> bool {
        matches!(v, Value::Object(o) if o.get(SEALED_MEMBER).is_some())
    }

    /// Reads the payload object `{"sealed": {...}}` (SEAL-1, SEAL-4), at path `payload`.
    pub fn from_payload(v: &Value) -> Result<Sealed, SchemaError> {
        let mut f = Fields::new(v, "payload")?;
        let s = Sealed::from_value(f.req(SEALED_MEMBER)?, "payload.sealed")?;
        f.finish()?;
        Ok(s)
    }

    /// Reads the `sealed` object at `path` (SEAL-4), in member order `suite`, `keys`, `ct`.
    pub fn from_value(v: &Value, path: &str) -> Result<Sealed, SchemaError> {
        let mut f = Fields::new(v, path)?;
        let suite = f.req_str("suite")?;
        if suite != SUITE {
            return Err(SchemaError::invalid(
                &f.path("suite"),
                format!("the only suite of version 1 is {SUITE}"),
            ));
        }
        let keys_path = f.path("keys");
        let items = f
            .req("keys")?
            .as_array()
            .ok_or_else(|| SchemaError::invalid(&keys_path, "expected an array"))?;
        if items.is_empty() {
            return Err(SchemaError::invalid(
                &keys_path,
                "one sealed key per recipient",
            ));
        }
        let mut keys = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let p = format!("{keys_path}[{i}]");
            let mut k = Fields::new(item, &p)?;
            let to = k.req_handle("to")?;
            let kid = k.req_key_id("kid")?;
            let enc = hex_field::<32>(&mut k, "enc")?;
            let wrapped = hex_field::<WRAPPED_BYTES>(&mut k, "wrapped")?;
            k.finish()?;
            keys.push(SealedKey {
                to,
                kid,
                enc,
                wrapped,
            });
        }
        let ct_path = f.path("ct");
        let ct = decode_b64(f.req_str("ct")?).ok_or_else(|| {
            SchemaError::invalid(&ct_path, "expected base64url without padding (ENC-6)")
        })?;
        let body = ct.len().saturating_sub(16);
        if ct.len() < 16 || body < PADDED_MIN || padded_len(body) != body {
            return Err(SchemaError::invalid(
                &ct_path,
                format!(
                    "{} bytes: a padded plaintext of a size bucket (SEAL-6) and a 16-byte tag",
                    ct.len()
                ),
            ));
        }
        f.finish()?;
        Ok(Sealed { keys, ct })
    }

    /// SEAL-4's addressing rule, which relays check: one sealed key per recipient, in the order
    /// of `to`, then at most one more for the sender itself.
    pub fn check_addressing(&self, from: &Handle, to: &[Handle]) -> Result<(), SchemaError> {
        let n = self.keys.len();
        if n != to.len() && n != to.len() + 1 {
            return Err(SchemaError::invalid(
                "payload.sealed.keys",
                format!(
                    "{n} sealed keys for {} recipients: one per recipient, in the order of `to`, and at most one more for the sender",
                    to.len()
                ),
            ));
        }
        for (i, k) in self.keys.iter().enumerate() {
            let want = to.get(i).unwrap_or(from);
            if k.to != *want {
                return Err(SchemaError::invalid(
                    &format!("payload.sealed.keys[{i}].to"),
                    format!("expected {want}"),
                ));
            }
        }
        Ok(())
    }

    /// The `sealed` object.
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        o.insert("suite", SUITE.into());
        o.insert(
            "keys",
            Value::Array(
                self.keys
                    .iter()
                    .map(|k| {
                        let mut e = Object::new();
                        e.insert("to", k.to.as_str().into());
                        e.insert("kid", k.kid.to_hex().into());
                        e.insert("enc", hex::encode(&k.enc).into());
                        e.insert("wrapped", hex::encode(&k.wrapped).into());
                        Value::Object(e)
                    })
                    .collect(),
            ),
        );
        o.insert("ct", encode_b64(&self.ct).into());
        Value::Object(o)
    }

    /// The payload object `{"sealed": {...}}`.
    pub fn to_payload_value(&self) -> Value {
        let mut o = Object::new();
        o.insert(SEALED_MEMBER, self.to_value());
        Value::Object(o)
    }
}

fn hex_field<const N: usize>(f: &mut Fields<'_>, key: &str) -> Result<[u8; N], SchemaError> {
    let path = f.path(key);
    let s = f.req_str(key)?;
    hex::decode_array::<N>(s).ok_or_else(|| {
        SchemaError::invalid(
            &path,
            format!("expected {} lower-case hex characters", 2 * N),
        )
    })
}

/// ENC-6: base64url (RFC 4648 section 5) without padding, canonical. `URL_SAFE_NO_PAD` is
/// already that strict (padding `RequireNone`, trailing bits not allowed, a length of 1 modulo
/// 4 refused), so no re-encoding is needed to check it on the ingest path; the vectors and
/// `b64_is_canonical` below hold it to that.
pub fn decode_b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

pub fn encode_b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every accepted string is the encoding of what it decodes to (ENC-6), over all lengths of
    /// 0..=6 bytes and every last character.
    #[test]
    fn b64_is_canonical() {
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for n in 0..=6usize {
            let base = encode_b64(&vec![0xa5; n]);
            for last in alphabet.chars().chain("=+/ ".chars()) {
                let mut t = base.clone();
                if t.pop().is_none() {
                    t.clear();
                }
                t.push(last);
                for cand in [t.clone(), format!("{base}{last}"), format!("{base}==")] {
                    if let Some(b) = decode_b64(&cand) {
                        assert_eq!(
                            encode_b64(&b),
                            cand,
                            "{cand:?} decodes but is not canonical"
                        );
                    }
                }
            }
        }
    }
}
