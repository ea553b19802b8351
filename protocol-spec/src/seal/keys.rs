//! Encryption keys (LOG-16, SEAL-2): X25519 key pairs, separate from the Ed25519 identity keys,
//! that agents publish in their key logs so that others can seal payloads to them.

use crate::hex;
use crate::keys::{Domain, KeyError, KeyId};
use hpke::{Deserializable, Kem as _, Serializable};
use std::fmt;

type Kem = hpke::kem::X25519HkdfSha256;

/// A validated X25519 encryption public key (LOG-16): 32 bytes for which X25519 gives a
/// contributory (not all-zero) shared secret, so HPKE's Encap to it cannot fail.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EncPublicKey([u8; 32]);

impl EncPublicKey {
    /// KEY-2's checks for an encryption key: any 32 bytes encode an X25519 public key (RFC 7748
    /// reads every string), but a point of small order gives the all-zero shared secret with
    /// every private key (RFC 9180 section 7.1.4 makes Encap fail on it). Such a key is `weak`.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<EncPublicKey, KeyError> {
        // Any scalar shows it: X25519 clamps it to a multiple of the cofactor 8, which maps
        // every point of small order (order 1, 2, 4 or 8) to the identity, encoded as zeros.
        const PROBE: [u8; 32] = [0x2a; 32];
        if x25519_dalek::x25519(PROBE, *bytes) == [0u8; 32] {
            return Err(KeyError::Weak);
        }
        Ok(EncPublicKey(*bytes))
    }

    pub fn parse_hex(s: &str) -> Result<EncPublicKey, KeyError> {
        let b = hex::decode_array::<32>(s).ok_or(KeyError::Encoding)?;
        EncPublicKey::from_bytes(&b)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// LOG-16: the first 16 bytes of BLAKE3(`formica/v1/enc-key-id\0` || key), a tag of its own,
    /// so an encryption key and a signing key never share an id.
    pub fn key_id(&self) -> KeyId {
        let mut h = blake3::Hasher::new();
        h.update(Domain::EncKeyId.tag());
        h.update(&self.0);
        let d = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&d.as_bytes()[..16]);
        KeyId(id)
    }
}

impl fmt::Debug for EncPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncPublicKey({})", self.to_hex())
    }
}

/// An X25519 encryption secret key, in the 32-byte form of RFC 9180's SerializePrivateKey.
#[derive(Clone, PartialEq, Eq)]
pub struct EncSecretKey([u8; 32]);

impl EncSecretKey {
    /// RFC 9180 DeriveKeyPair(ikm) for DHKEM(X25519, HKDF-SHA256): the key pair a random
    /// 32-byte `ikm` gives. Callers pass the randomness in (the crate does no I/O).
    pub fn derive(ikm: &[u8; 32]) -> EncSecretKey {
        let (sk, _) = Kem::derive_keypair(ikm);
        let mut out = [0u8; 32];
        out.copy_from_slice(&sk.to_bytes());
        EncSecretKey(out)
    }

    /// Any 32 bytes are an X25519 private key (the scalar is clamped when used).
    pub fn from_bytes(bytes: &[u8; 32]) -> EncSecretKey {
        EncSecretKey(*bytes)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The public key. `None` only for a private key whose public key is weak, which
    /// [`derive`](Self::derive) never makes (a clamped non-zero scalar times the base point).
    pub fn public(&self) -> Option<EncPublicKey> {
        let sk = self.hpke()?;
        let pk = Kem::sk_to_pk(&sk);
        let mut b = [0u8; 32];
        b.copy_from_slice(&pk.to_bytes());
        EncPublicKey::from_bytes(&b).ok()
    }

    pub(crate) fn hpke(&self) -> Option<<Kem as hpke::Kem>::PrivateKey> {
        <Kem as hpke::Kem>::PrivateKey::from_bytes(&self.0).ok()
    }
}

impl fmt::Debug for EncSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncSecretKey(..)")
    }
}
