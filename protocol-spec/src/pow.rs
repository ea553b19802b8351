//! Proof-of-work for registration (SPEC.md section 9, POW-1..7): BLAKE3 hashcash bound to the
//! relay, the handle, the public key and a fresh relay-issued challenge, with the difficulty
//! committed in the preimage so that a proof made for an easier target cannot be passed off.

use crate::canon;
use crate::error::ErrorCode;
use crate::handle::{Handle, RelayHost};
use crate::hex;
use crate::json::{Object, Value, INT_ABS_MAX};
use crate::keys::{Domain, PublicKey};
use crate::schema::{Fields, SchemaError};

/// Highest difficulty a proof may commit to (bits of a 256-bit hash).
pub const DIFFICULTY_MAX: u32 = 256;
/// Largest nonce: nonces are JSON integers.
pub const NONCE_MAX: u64 = INT_ABS_MAX as u64;

/// A relay-issued challenge: 16 random bytes, 32 lower-case hex characters on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Challenge(pub [u8; 16]);

impl Challenge {
    pub fn parse_hex(s: &str) -> Option<Challenge> {
        hex::decode_array::<16>(s).map(Challenge)
    }
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

/// A proof as carried in a registration request: `{"challenge", "difficulty", "nonce"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowProof {
    pub challenge: Challenge,
    pub difficulty: u32,
    pub nonce: u64,
}

impl PowProof {
    pub fn from_value(v: &Value, path: &str) -> Result<PowProof, SchemaError> {
        let mut f = Fields::new(v, path)?;
        let challenge = f.req_str("challenge")?;
        let challenge = Challenge::parse_hex(challenge).ok_or_else(|| {
            SchemaError::invalid(
                &f.path("challenge"),
                "expected 32 lower-case hex characters",
            )
        })?;
        let difficulty = f.req_int("difficulty", 0, i64::from(DIFFICULTY_MAX))? as u32;
        let nonce = f.req_int("nonce", 0, INT_ABS_MAX)? as u64;
        f.finish()?;
        Ok(PowProof {
            challenge,
            difficulty,
            nonce,
        })
    }

    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        o.insert("challenge", self.challenge.to_hex().into());
        o.insert("difficulty", Value::Int(i64::from(self.difficulty)));
        o.insert("nonce", Value::Int(self.nonce as i64));
        Value::Object(o)
    }
}

/// Why a proof was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PowError {
    #[error("proof commits to difficulty {committed}, the relay requires {required}")]
    CommitmentTooLow { committed: u32, required: u32 },
    #[error("hash has {zeros} leading zero bits, the proof commits to {committed}")]
    HashTooWeak { zeros: u32, committed: u32 },
}

impl PowError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::PowInsufficient
    }
}

/// POW-3: `tag || JCS({"challenge","difficulty","handle","key","relay"})`, the part of the
/// preimage that does not change while mining.
pub fn preimage_prefix(
    relay: &RelayHost,
    handle: &Handle,
    key: &PublicKey,
    challenge: &Challenge,
    difficulty: u32,
) -> Vec<u8> {
    let mut o = Object::new();
    o.insert("challenge", challenge.to_hex().into());
    o.insert("difficulty", Value::Int(i64::from(difficulty)));
    o.insert("handle", handle.as_str().into());
    o.insert("key", key.to_hex().into());
    o.insert("relay", relay.as_str().into());
    Domain::Pow.input(&canon::canonicalize(&Value::Object(o)))
}

/// POW-4: `BLAKE3(prefix || nonce as 8 bytes little-endian)`.
pub fn pow_hash(prefix: &[u8], nonce: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(prefix);
    h.update(&nonce.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Leading zero bits of a hash, most significant bit of byte 0 first.
pub fn leading_zero_bits(hash: &[u8; 32]) -> u32 {
    let mut n = 0;
    for &b in hash {
        if b == 0 {
            n += 8;
        } else {
            n += b.leading_zeros();
            break;
        }
    }
    n
}

/// POW-5: checks a proof against the prefix and the difficulty the relay requires.
pub fn check(prefix: &[u8], proof: &PowProof, required: u32) -> Result<(), PowError> {
    if proof.difficulty < required {
        return Err(PowError::CommitmentTooLow {
            committed: proof.difficulty,
            required,
        });
    }
    let zeros = leading_zero_bits(&pow_hash(prefix, proof.nonce));
    if zeros < proof.difficulty {
        return Err(PowError::HashTooWeak {
            zeros,
            committed: proof.difficulty,
        });
    }
    Ok(())
}

/// Searches nonces `start, start + stride, ...` for at most `tries` attempts. Several threads
/// mine one prefix by giving each a different `start` and the same `stride`.
pub fn mine(prefix: &[u8], difficulty: u32, start: u64, stride: u64, tries: u64) -> Option<u64> {
    let mut base = blake3::Hasher::new();
    base.update(prefix);
    let mut nonce = start;
    for _ in 0..tries {
        if nonce > NONCE_MAX {
            return None;
        }
        let mut h = base.clone();
        h.update(&nonce.to_le_bytes());
        if leading_zero_bits(h.finalize().as_bytes()) >= difficulty {
            return Some(nonce);
        }
        nonce = nonce.checked_add(stride.max(1))?;
    }
    None
}
