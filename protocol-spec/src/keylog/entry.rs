//! Key log entries (SPEC.md 8.1 and 8.2): the operations, an entry's schema, signing input and
//! proofs of possession, its hash, and [`SignedKeyLogEntry`], an entry parsed from the wire with
//! its bytes kept.

use crate::canon;
use crate::error::ErrorCode;
use crate::handle::Handle;
use crate::hex;
use crate::json::{self, JsonError, JsonLimits, Object, Value, INT_ABS_MAX};
use crate::keys::{Domain, KeyId, PublicKey, SecretKey, Signature};
use crate::schema::{Fields, SchemaError};
use crate::seal::{EncPublicKey, ENC_KEY_LIFETIME_MAX_MS};
use std::fmt;

/// The hash of a key log entry: BLAKE3 of its signing input (LOG-4).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryHash(pub [u8; 32]);

impl EntryHash {
    pub fn parse_hex(s: &str) -> Option<EntryHash> {
        hex::decode_array::<32>(s).map(EntryHash)
    }
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Debug for EntryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryHash({})", self.to_hex())
    }
}

/// What an entry does (LOG-5..9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOp {
    /// Creates the log: `key` becomes the current key; `recovery`, if given, may later revoke
    /// and recover. Signed by `key`.
    Register {
        key: PublicKey,
        recovery: Option<PublicKey>,
    },
    /// Replaces the current key. Signed by the current key.
    Rotate { key: PublicKey },
    /// Ends the current key; the handle has no valid key until `recover`. Signed by the current
    /// key or the recovery key.
    Revoke,
    /// Installs a new current key (and optionally a new recovery key). Signed by the recovery key.
    Recover {
        key: PublicKey,
        recovery: Option<PublicKey>,
    },
    /// Closes the log: the agent now lives at `to`. Signed by the current key.
    Move { to: Handle },
    /// Publishes an encryption key (LOG-16): `enc` is the handle's encryption key from `ts`
    /// until `expires`, or until the next `enc`, `revoke`, `recover` or `move`. Signed by the
    /// current key.
    Enc { enc: EncPublicKey, expires: i64 },
}

impl KeyOp {
    pub fn name(&self) -> &'static str {
        match self {
            KeyOp::Register { .. } => "register",
            KeyOp::Rotate { .. } => "rotate",
            KeyOp::Revoke => "revoke",
            KeyOp::Recover { .. } => "recover",
            KeyOp::Move { .. } => "move",
            KeyOp::Enc { .. } => "enc",
        }
    }
}

/// The content of an entry, without its signature and proofs of possession.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLogEntry {
    pub handle: Handle,
    pub seq: i64,
    pub prev: Option<EntryHash>,
    pub ts: i64,
    pub op: KeyOp,
    pub signer: KeyId,
}

/// Why a key log or entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyLogError {
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("unsupported protocol version {got}")]
    UnsupportedVersion { got: i64 },
    #[error("entry {seq}: {reason}")]
    BrokenChain { seq: i64, reason: &'static str },
    #[error("entry {seq} is for {got}, the log is for {want}")]
    HandleMismatch { seq: i64, got: String, want: String },
    #[error("entry {seq}: timestamp {ts} is not after the previous entry's {prev_ts}")]
    TimeOrder { seq: i64, ts: i64, prev_ts: i64 },
    #[error("entry {seq}: the log was closed by a move")]
    Closed { seq: i64 },
    #[error("entry {seq}: {op} may not be signed by key {signer}")]
    UnauthorizedSigner {
        seq: i64,
        op: &'static str,
        signer: KeyId,
    },
    #[error("entry {seq}: signature does not verify")]
    BadSignature { seq: i64 },
    /// A proof of possession (`key_sig`, `recovery_sig`) does not verify with the key it proves.
    #[error("entry {seq}: `{field}` does not verify with the key it proves")]
    BadProof { seq: i64, field: &'static str },
    #[error("entry {seq}: a key that this log has used before may not be introduced again")]
    KeyReused { seq: i64 },
    #[error("a key log holds at most {max} entries")]
    TooLong { max: usize },
}

impl KeyLogError {
    pub fn code(&self) -> ErrorCode {
        match self {
            KeyLogError::Json(e) => e.code(),
            KeyLogError::Schema(e) => e.code(),
            KeyLogError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            KeyLogError::BrokenChain { .. } => ErrorCode::KeylogBrokenChain,
            KeyLogError::HandleMismatch { .. } => ErrorCode::KeylogHandleMismatch,
            KeyLogError::TimeOrder { .. } => ErrorCode::KeylogTimeOrder,
            KeyLogError::Closed { .. } => ErrorCode::KeylogClosed,
            KeyLogError::UnauthorizedSigner { .. } => ErrorCode::KeylogUnauthorizedSigner,
            KeyLogError::BadSignature { .. } | KeyLogError::BadProof { .. } => {
                ErrorCode::BadSignature
            }
            KeyLogError::KeyReused { .. } => ErrorCode::KeylogKeyReused,
            KeyLogError::TooLong { .. } => ErrorCode::TooLarge,
        }
    }
}

/// The proofs of possession an entry carries (LOG-2): signatures over its proof input, each by
/// the key it proves. An entry has exactly the proofs [`KeyLogEntry::proved_keys`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryProofs {
    /// By the new `key` of a `rotate` or `recover`.
    pub key_sig: Option<Signature>,
    /// By the `recovery` key of a `register` or `recover` that names one.
    pub recovery_sig: Option<Signature>,
}

/// Which key a proof of possession proves: an entry's `key` or its `recovery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proved {
    Key,
    Recovery,
}

impl Proved {
    /// The member that holds the proof.
    pub fn field(self) -> &'static str {
        match self {
            Proved::Key => "key_sig",
            Proved::Recovery => "recovery_sig",
        }
    }
}

impl EntryProofs {
    pub fn get(&self, which: Proved) -> Option<&Signature> {
        match which {
            Proved::Key => self.key_sig.as_ref(),
            Proved::Recovery => self.recovery_sig.as_ref(),
        }
    }
    fn set(&mut self, which: Proved, sig: Signature) {
        match which {
            Proved::Key => self.key_sig = Some(sig),
            Proved::Recovery => self.recovery_sig = Some(sig),
        }
    }
}

/// Why [`KeyLogEntry::sign`] made no entry: it refuses to make one a verifier would refuse for
/// a missing or wrong proof of possession.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The entry introduces a key whose secret key was not given.
    #[error("the entry introduces key {key} and needs its secret key for `{field}`")]
    MissingProof { field: &'static str, key: KeyId },
    /// A secret key was given that is none of the keys the entry introduces.
    #[error("secret key {0} is not a key that this entry introduces")]
    NotIntroduced(KeyId),
}

impl KeyLogEntry {
    /// The keys this entry introduces that need a proof of possession (LOG-2): `rotate` and
    /// `recover` prove `key` (`key_sig`); `register` and `recover` prove `recovery` when they
    /// name one (`recovery_sig`). A `register`'s `key` needs none: the entry is signed by it.
    pub fn proved_keys(&self) -> Vec<(Proved, PublicKey)> {
        match &self.op {
            KeyOp::Register { recovery, .. } => {
                recovery.iter().map(|r| (Proved::Recovery, *r)).collect()
            }
            KeyOp::Rotate { key } => vec![(Proved::Key, *key)],
            KeyOp::Recover { key, recovery } => std::iter::once((Proved::Key, *key))
                .chain(recovery.iter().map(|r| (Proved::Recovery, *r)))
                .collect(),
            KeyOp::Revoke | KeyOp::Move { .. } | KeyOp::Enc { .. } => vec![],
        }
    }

    /// The input every proof of possession of this entry signs (LOG-2):
    /// `"formica/v1/keylog-pop" || 0x00 || JCS(entry without sig, key_sig and recovery_sig)`.
    pub fn proof_input(&self) -> Vec<u8> {
        Domain::KeyLogPop.input(&canon::canonicalize(&self.to_value()))
    }

    /// Signs the entry. `signer` is the key `self.signer` names; `holders` are the secret keys
    /// of the keys the entry introduces ([`proved_keys`](Self::proved_keys): the new `key` of a
    /// `rotate` or `recover`, and the `recovery` key a `register` or `recover` names), in any
    /// order. Their proofs are made first, then the entry with them is signed by `signer`.
    /// Refuses if a key the entry introduces has no secret key among `holders`, or if one of
    /// `holders` is not such a key.
    pub fn sign(
        &self,
        signer: &SecretKey,
        holders: &[&SecretKey],
    ) -> Result<SignedKeyLogEntry, SignError> {
        let needed = self.proved_keys();
        if let Some(h) = holders
            .iter()
            .find(|h| !needed.iter().any(|(_, k)| *k == h.public()))
        {
            return Err(SignError::NotIntroduced(h.public().key_id()));
        }
        let input = self.proof_input();
        let mut proofs = EntryProofs::default();
        for (which, key) in needed {
            let holder =
                holders
                    .iter()
                    .find(|h| h.public() == key)
                    .ok_or(SignError::MissingProof {
                        field: which.field(),
                        key: key.key_id(),
                    })?;
            proofs.set(which, holder.sign_input(&input));
        }
        Ok(self.sign_unchecked(signer, proofs))
    }

    /// Signs the entry with whatever `proofs` are given, checking nothing: for tests and the
    /// conformance suite, which must make entries that a verifier refuses. Use
    /// [`sign`](Self::sign) to make an entry.
    pub fn sign_unchecked(&self, signer: &SecretKey, proofs: EntryProofs) -> SignedKeyLogEntry {
        let mut v = self.to_value();
        if let Value::Object(o) = &mut v {
            if let Some(p) = proofs.key_sig {
                o.insert("key_sig", p.to_hex().into());
            }
            if let Some(p) = proofs.recovery_sig {
                o.insert("recovery_sig", p.to_hex().into());
            }
        }
        let input = Domain::KeyLog.input(&canon::canonicalize(&v));
        let sig = signer.sign_input(&input);
        if let Value::Object(o) = &mut v {
            o.insert("sig", sig.to_hex().into());
        }
        SignedKeyLogEntry {
            entry: self.clone(),
            proofs,
            sig,
            hash: EntryHash(*blake3::hash(&input).as_bytes()),
            signing_input: input,
            value: v,
        }
    }

    /// The entry as a JSON object, without `sig`, `key_sig` and `recovery_sig`: the object its
    /// proofs of possession sign.
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        o.insert("v", Value::Int(crate::envelope::PROTOCOL_VERSION));
        o.insert("handle", self.handle.as_str().into());
        o.insert("seq", Value::Int(self.seq));
        if let Some(p) = &self.prev {
            o.insert("prev", p.to_hex().into());
        }
        o.insert("ts", Value::Int(self.ts));
        o.insert("op", self.op.name().into());
        match &self.op {
            KeyOp::Register { key, recovery } | KeyOp::Recover { key, recovery } => {
                o.insert("key", key.to_hex().into());
                if let Some(r) = recovery {
                    o.insert("recovery", r.to_hex().into());
                }
            }
            KeyOp::Rotate { key } => {
                o.insert("key", key.to_hex().into());
            }
            KeyOp::Revoke => {}
            KeyOp::Move { to } => {
                o.insert("to", to.as_str().into());
            }
            KeyOp::Enc { enc, expires } => {
                o.insert("enc", enc.to_hex().into());
                o.insert("expires", Value::Int(*expires));
            }
        }
        o.insert("signer", self.signer.to_hex().into());
        Value::Object(o)
    }

    fn from_value(v: &Value) -> Result<(KeyLogEntry, EntryProofs, Signature), KeyLogError> {
        let mut f = Fields::new(v, "")?;
        let version = f.req_int("v", 0, INT_ABS_MAX)?;
        if version != crate::envelope::PROTOCOL_VERSION {
            return Err(KeyLogError::UnsupportedVersion { got: version });
        }
        let handle = f.req_handle("handle")?;
        let seq = f.req_int("seq", 0, INT_ABS_MAX)?;
        let prev = match f.opt_str("prev")? {
            None => None,
            Some(s) => Some(EntryHash::parse_hex(s).ok_or_else(|| {
                SchemaError::invalid("prev", "expected 64 lower-case hex characters")
            })?),
        };
        if (seq == 0) != prev.is_none() {
            return Err(KeyLogError::BrokenChain {
                seq,
                reason: "`prev` is absent exactly on the first entry (seq 0)",
            });
        }
        let ts = f.req_int("ts", 0, INT_ABS_MAX)?;
        let op_name = f.req_str("op")?;
        // LOG-3: the op's members in the order `key`, `key_sig`, `recovery`, `recovery_sig`.
        let mut proofs = EntryProofs::default();
        let op = match op_name {
            "register" => KeyOp::Register {
                key: f.req_key("key")?,
                recovery: opt_recovery(&mut f, &mut proofs)?,
            },
            "rotate" => {
                let key = f.req_key("key")?;
                proofs.key_sig = Some(f.req_sig("key_sig")?);
                KeyOp::Rotate { key }
            }
            "revoke" => KeyOp::Revoke,
            "recover" => {
                let key = f.req_key("key")?;
                proofs.key_sig = Some(f.req_sig("key_sig")?);
                KeyOp::Recover {
                    key,
                    recovery: opt_recovery(&mut f, &mut proofs)?,
                }
            }
            "move" => KeyOp::Move {
                to: f.req_handle("to")?,
            },
            "enc" => {
                let s = f.req_str("enc")?;
                let enc = EncPublicKey::parse_hex(s).map_err(|source| SchemaError::InvalidKey {
                    path: f.path("enc"),
                    source,
                })?;
                let expires = f.req_int("expires", 0, INT_ABS_MAX)?;
                if expires <= ts || expires - ts > ENC_KEY_LIFETIME_MAX_MS {
                    return Err(SchemaError::invalid(
                        "expires",
                        format!(
                            "an encryption key expires after the entry's ts and at most {ENC_KEY_LIFETIME_MAX_MS} ms (366 days) after it"
                        ),
                    )
                    .into());
                }
                KeyOp::Enc { enc, expires }
            }
            _ => {
                return Err(SchemaError::invalid(
                    "op",
                    "expected one of register, rotate, revoke, recover, move, enc",
                )
                .into())
            }
        };
        let signer = f.req_key_id("signer")?;
        let sig = f.req_sig("sig")?;
        f.finish()?;
        Ok((
            KeyLogEntry {
                handle,
                seq,
                prev,
                ts,
                op,
                signer,
            },
            proofs,
            sig,
        ))
    }
}

/// An entry's `recovery` and, exactly when it is present, its `recovery_sig` (LOG-1).
fn opt_recovery(
    f: &mut Fields<'_>,
    proofs: &mut EntryProofs,
) -> Result<Option<PublicKey>, SchemaError> {
    let recovery = f.opt_key("recovery")?;
    if recovery.is_some() {
        proofs.recovery_sig = Some(f.req_sig("recovery_sig")?);
    }
    Ok(recovery)
}

/// A parsed entry with its proofs, signature and hash; not yet checked against any log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedKeyLogEntry {
    pub(super) entry: KeyLogEntry,
    pub(super) proofs: EntryProofs,
    pub(super) sig: Signature,
    pub(super) hash: EntryHash,
    pub(super) signing_input: Vec<u8>,
    pub(super) value: Value,
}

impl SignedKeyLogEntry {
    /// Parses one entry under the strict profile.
    pub fn parse(bytes: &[u8], limits: JsonLimits) -> Result<SignedKeyLogEntry, KeyLogError> {
        SignedKeyLogEntry::from_value(json::parse(bytes, limits)?)
    }

    /// Reads one entry from a strict-JSON value.
    pub fn from_value(v: Value) -> Result<SignedKeyLogEntry, KeyLogError> {
        let (entry, proofs, sig) = KeyLogEntry::from_value(&v)?;
        let mut input = Domain::KeyLog.tag().to_vec();
        if let Value::Object(o) = &v {
            canon::write_object(o, Some(&["sig"]), &mut input);
        }
        Ok(SignedKeyLogEntry {
            entry,
            proofs,
            sig,
            hash: EntryHash(*blake3::hash(&input).as_bytes()),
            signing_input: input,
            value: v,
        })
    }

    pub fn entry(&self) -> &KeyLogEntry {
        &self.entry
    }
    pub fn hash(&self) -> EntryHash {
        self.hash
    }
    pub fn signing_input(&self) -> &[u8] {
        &self.signing_input
    }
    pub fn signature(&self) -> &Signature {
        &self.sig
    }
    pub fn proofs(&self) -> &EntryProofs {
        &self.proofs
    }
    /// The input of the entry's proofs of possession (LOG-2), from the entry as received.
    pub fn proof_input(&self) -> Vec<u8> {
        let mut input = Domain::KeyLogPop.tag().to_vec();
        if let Value::Object(o) = &self.value {
            canon::write_object(o, Some(&["sig", "key_sig", "recovery_sig"]), &mut input);
        }
        input
    }
    /// The entry with `sig`, as a value.
    pub fn value(&self) -> &Value {
        &self.value
    }
    pub fn wire_bytes(&self) -> Vec<u8> {
        canon::canonicalize(&self.value)
    }
}
