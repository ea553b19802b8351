//! Keys, key ids, signatures and domain-separated signing inputs (SPEC.md section 5, KEY-1..8
//! and SIG-1..5).
//!
//! Every signature in Formica is Ed25519 over `tag || canonical-bytes`, where the tag names the
//! purpose. Tags are distinct, fixed-length-prefixed ASCII strings ending in NUL, and no tag is a
//! prefix of another, so bytes signed for one purpose can never be valid for another.
//! Verification is `verify_strict` (small-order and non-canonical R refused, S < l) and public
//! keys are refused at parse time if they are non-canonical encodings or of small order, so weak
//! keys never enter the system.

use crate::error::ErrorCode;
use crate::hex;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use std::fmt;

/// The purpose of a signature or hash. See SPEC.md SIG-1 for the exact bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Domain {
    /// An agent's envelope.
    Envelope,
    /// A relay-signed receipt (an envelope of type `receipt` from `@relay@host`).
    Receipt,
    /// A key log entry.
    KeyLog,
    /// A proof of possession of a key that a key log entry introduces (`key_sig`,
    /// `recovery_sig`; LOG-2).
    KeyLogPop,
    /// An agent's authenticated HTTP request.
    Request,
    /// A relay's signed descriptor.
    Descriptor,
    /// A relay-to-relay HTTP request.
    RelayRequest,
    /// The proof-of-work preimage (hashed, not signed).
    Pow,
    /// Key id derivation (hashed, not signed).
    KeyId,
    /// An agent's profile (PROF-2).
    Profile,
    /// An agent's presence status (PRES-2).
    Presence,
    /// A conversation entry's hash link (CONVO-4; hashed, not signed).
    Conversation,
    /// An encryption key's id (LOG-16; hashed, not signed).
    EncKeyId,
    /// The routing header a sealed payload is bound to (SEAL-5; hashed, not signed).
    Sealed,
}

impl Domain {
    /// Every domain, for tests that check the tags are prefix-free.
    pub const ALL: [Domain; 14] = [
        Domain::Envelope,
        Domain::Receipt,
        Domain::KeyLog,
        Domain::KeyLogPop,
        Domain::Request,
        Domain::Descriptor,
        Domain::RelayRequest,
        Domain::Pow,
        Domain::KeyId,
        Domain::Profile,
        Domain::Presence,
        Domain::Conversation,
        Domain::EncKeyId,
        Domain::Sealed,
    ];

    /// The tag bytes that start every input of this purpose.
    pub fn tag(self) -> &'static [u8] {
        match self {
            Domain::Envelope => b"formica/v1/envelope\0",
            Domain::Receipt => b"formica/v1/receipt\0",
            Domain::KeyLog => b"formica/v1/keylog\0",
            Domain::KeyLogPop => b"formica/v1/keylog-pop\0",
            Domain::Request => b"formica/v1/request\0",
            Domain::Descriptor => b"formica/v1/descriptor\0",
            Domain::RelayRequest => b"formica/v1/relay-request\0",
            Domain::Pow => b"formica/v1/pow\0",
            Domain::KeyId => b"formica/v1/key-id\0",
            Domain::Profile => b"formica/v1/profile\0",
            Domain::Presence => b"formica/v1/presence\0",
            Domain::Conversation => b"formica/v1/conversation\0",
            Domain::EncKeyId => b"formica/v1/enc-key-id\0",
            Domain::Sealed => b"formica/v1/sealed\0",
        }
    }

    /// `tag || canonical`.
    pub fn input(self, canonical: &[u8]) -> Vec<u8> {
        let tag = self.tag();
        let mut v = Vec::with_capacity(tag.len() + canonical.len());
        v.extend_from_slice(tag);
        v.extend_from_slice(canonical);
        v
    }
}

/// A document an agent signs itself (a profile, a presence status): `v` (an object without
/// `sig`) signed under `domain` with `sk`, with `sig` added. `None` when `sk` is not the key the
/// document names (`named`), with the key id `sk` has.
pub(crate) fn sign_document(
    domain: Domain,
    mut v: crate::json::Value,
    sk: &SecretKey,
    named: &KeyId,
) -> Result<crate::json::Value, KeyId> {
    let given = sk.public().key_id();
    if given != *named {
        return Err(given);
    }
    let input = domain.input(&crate::canon::canonicalize(&v));
    let sig = sk.sign_input(&input);
    if let crate::json::Value::Object(o) = &mut v {
        o.insert("sig", sig.to_hex().into());
    }
    Ok(v)
}

/// Strict verification (SIG-3) of a document an agent signed: `Err(Some(given))` when `key` is
/// not the key the document names (`named`; `given` is its id), `Err(None)` when the signature
/// does not verify.
pub(crate) fn verify_document(
    key: &PublicKey,
    named: &KeyId,
    input: &[u8],
    sig: &Signature,
) -> Result<(), Option<KeyId>> {
    let given = key.key_id();
    if given != *named {
        return Err(Some(given));
    }
    key.verify_input(input, sig).map_err(|_| None)
}

/// The signing input (`tag || JCS(object without sig)`) and the canonical bytes of a signed
/// document `obj`.
pub(crate) fn document_bytes(domain: Domain, obj: &crate::json::Object) -> (Vec<u8>, Vec<u8>) {
    let mut input = domain.tag().to_vec();
    crate::canon::write_object(obj, Some(&["sig"]), &mut input);
    let wire = crate::canon::canonicalize(&crate::json::Value::Object(obj.clone()));
    (input, wire)
}

/// Why a key or signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("public key is not 64 lower-case hex characters")]
    Encoding,
    #[error("public key is not a canonical encoding of a curve point")]
    NotCanonical,
    #[error("public key has small order (weak key)")]
    Weak,
    #[error("signature is not 128 lower-case hex characters")]
    SignatureEncoding,
    #[error("signature does not verify")]
    BadSignature,
}

impl KeyError {
    pub fn code(&self) -> ErrorCode {
        match self {
            KeyError::Encoding | KeyError::NotCanonical => ErrorCode::InvalidKey,
            KeyError::Weak => ErrorCode::WeakKey,
            KeyError::SignatureEncoding | KeyError::BadSignature => ErrorCode::BadSignature,
        }
    }
}

/// A validated Ed25519 public key: canonical encoding, not of small order (KEY-2).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    vk: VerifyingKey,
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, KeyError> {
        let vk = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::NotCanonical)?;
        // Decompression accepts some non-canonical encodings (y >= p, or x = 0 with the sign bit
        // set); re-encoding the point exposes them.
        if vk.to_edwards().compress().to_bytes() != *bytes {
            return Err(KeyError::NotCanonical);
        }
        if vk.is_weak() {
            return Err(KeyError::Weak);
        }
        Ok(PublicKey { vk })
    }

    pub fn parse_hex(s: &str) -> Result<PublicKey, KeyError> {
        let b = hex::decode_array::<32>(s).ok_or(KeyError::Encoding)?;
        PublicKey::from_bytes(&b)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.vk.to_bytes()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.vk.as_bytes())
    }

    /// KEY-3: the key id, the first 16 bytes of BLAKE3(`formica/v1/key-id\0` || key).
    pub fn key_id(&self) -> KeyId {
        let mut h = blake3::Hasher::new();
        h.update(Domain::KeyId.tag());
        h.update(self.vk.as_bytes());
        let d = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&d.as_bytes()[..16]);
        KeyId(id)
    }

    /// Strict verification of `sig` over `domain.tag() || canonical` (SIG-3).
    pub fn verify(
        &self,
        domain: Domain,
        canonical: &[u8],
        sig: &Signature,
    ) -> Result<(), KeyError> {
        self.verify_input(&domain.input(canonical), sig)
    }

    /// Strict verification over a complete signing input (tag already prepended).
    pub fn verify_input(&self, input: &[u8], sig: &Signature) -> Result<(), KeyError> {
        let s = ed25519_dalek::Signature::from_bytes(&sig.0);
        self.vk
            .verify_strict(input, &s)
            .map_err(|_| KeyError::BadSignature)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// A key id: 16 bytes, written as 32 lower-case hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    pub fn parse_hex(s: &str) -> Option<KeyId> {
        hex::decode_array::<16>(s).map(KeyId)
    }
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}
impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A 64-byte Ed25519 signature, written as 128 lower-case hex characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    pub fn parse_hex(s: &str) -> Result<Signature, KeyError> {
        hex::decode_array::<64>(s)
            .map(Signature)
            .ok_or(KeyError::SignatureEncoding)
    }
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.to_hex())
    }
}

/// An Ed25519 secret key (the 32-byte seed of RFC 8032). The protocol crate never makes
/// randomness itself: callers pass a seed from their own RNG.
#[derive(Clone)]
pub struct SecretKey {
    sk: SigningKey,
}

impl SecretKey {
    pub fn from_seed(seed: &[u8; 32]) -> SecretKey {
        SecretKey {
            sk: SigningKey::from_bytes(seed),
        }
    }

    pub fn seed(&self) -> [u8; 32] {
        self.sk.to_bytes()
    }

    /// The public key. A key derived from a seed is never weak: it is a multiple of the base
    /// point by a clamped scalar, which has prime order l.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            vk: self.sk.verifying_key(),
        }
    }

    /// Signs `domain.tag() || canonical`.
    pub fn sign(&self, domain: Domain, canonical: &[u8]) -> Signature {
        self.sign_input(&domain.input(canonical))
    }

    /// Signs a complete signing input (tag already prepended).
    pub fn sign_input(&self, input: &[u8]) -> Signature {
        Signature(self.sk.sign(input).to_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public={})", self.public().to_hex())
    }
}
