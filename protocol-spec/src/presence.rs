//! Presence statuses (SPEC.md section 18.4, PRES-2): an agent's signed, short-lived word on how
//! available it is (`available`, `busy`, `away`), which its relay shows to its contacts.
//! Whether the agent is connected at all is the relay's observation, not part of this document.

use crate::envelope::PROTOCOL_VERSION;
use crate::error::ErrorCode;
use crate::handle::Handle;
use crate::json::{self, JsonError, JsonLimits, Object, Value};
use crate::keys::{Domain, KeyId, PublicKey, SecretKey, Signature};
use crate::schema::{check_text, Fields, SchemaError};

/// PRES-2: characters of `note` ("note text", TYPE-13).
pub const NOTE_CHARS_MAX: usize = 280;

const INT_MAX: i64 = (1 << 53) - 1;

/// What an agent says of itself; `offline` is never signed (the relay observes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Availability {
    Available,
    Busy,
    Away,
}

impl Availability {
    pub const WORDS: &'static [(&'static str, Availability)] = &[
        ("available", Availability::Available),
        ("busy", Availability::Busy),
        ("away", Availability::Away),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Available => "available",
            Availability::Busy => "busy",
            Availability::Away => "away",
        }
    }

    pub fn parse(s: &str) -> Option<Availability> {
        Self::WORDS.iter().find(|(w, _)| *w == s).map(|(_, a)| *a)
    }
}

/// The members of a status, without its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub handle: Handle,
    pub key: KeyId,
    pub ts: i64,
    /// After this time the status no longer applies (the agent is `available` while connected).
    pub expires: i64,
    pub status: Availability,
    pub note: Option<String>,
}

/// Why a status was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("unsupported protocol version {got}; this crate speaks version {PROTOCOL_VERSION}")]
    UnsupportedVersion { got: i64 },
    #[error("the key given is {given}, the status names {named}")]
    KeyMismatch { given: KeyId, named: KeyId },
    #[error("signature does not verify")]
    BadSignature,
}

impl StatusError {
    pub fn code(&self) -> ErrorCode {
        match self {
            StatusError::Json(e) => e.code(),
            StatusError::Schema(e) => e.code(),
            StatusError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            StatusError::KeyMismatch { .. } => ErrorCode::UnknownKey,
            StatusError::BadSignature => ErrorCode::BadSignature,
        }
    }
}

impl Status {
    fn from_value(v: &Value) -> Result<(Status, Signature), StatusError> {
        let mut f = Fields::new(v, "")?;
        let version = f.req_int("v", 0, INT_MAX)?;
        if version != PROTOCOL_VERSION {
            return Err(StatusError::UnsupportedVersion { got: version });
        }
        let handle = f.req_handle("handle")?;
        let key = f.req_key_id("key")?;
        let ts = f.req_int("ts", 0, INT_MAX)?;
        let expires = f.req_int("expires", 0, INT_MAX)?;
        if expires <= ts {
            return Err(SchemaError::invalid("expires", "not after ts").into());
        }
        let status = f.req_word("status", Availability::WORDS)?;
        let note = f.opt_str("note")?;
        if let Some(n) = note {
            check_text("note", n, NOTE_CHARS_MAX)?;
        }
        let sig = f.req_sig("sig")?;
        f.finish()?;
        Ok((
            Status {
                handle,
                key,
                ts,
                expires,
                status,
                note: note.map(str::to_owned),
            },
            sig,
        ))
    }

    /// The status as a value, without `sig`.
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        o.insert("v", Value::Int(PROTOCOL_VERSION));
        o.insert("handle", self.handle.as_str().into());
        o.insert("key", self.key.to_hex().into());
        o.insert("ts", Value::Int(self.ts));
        o.insert("expires", Value::Int(self.expires));
        o.insert("status", self.status.as_str().into());
        if let Some(n) = &self.note {
            o.insert("note", n.as_str().into());
        }
        Value::Object(o)
    }

    /// Signs the status (PRES-2) with the key `self.key` names.
    pub fn sign(&self, sk: &SecretKey) -> Result<SignedStatus, StatusError> {
        let v = crate::keys::sign_document(Domain::Presence, self.to_value(), sk, &self.key)
            .map_err(|given| StatusError::KeyMismatch {
                given,
                named: self.key,
            })?;
        SignedStatus::from_value(v)
    }
}

/// A parsed status with its signature, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedStatus {
    status: Status,
    sig: Signature,
    signing_input: Vec<u8>,
    value: Value,
    wire: Vec<u8>,
}

impl SignedStatus {
    /// Parses bytes under the strict profile (section 4) and the schema of PRES-2.
    pub fn parse(bytes: &[u8], limits: JsonLimits) -> Result<SignedStatus, StatusError> {
        SignedStatus::from_value(json::parse(bytes, limits)?)
    }

    pub fn from_value(v: Value) -> Result<SignedStatus, StatusError> {
        let (status, sig) = Status::from_value(&v)?;
        let Value::Object(obj) = &v else {
            unreachable!("Status::from_value accepted only an object")
        };
        let (input, wire) = crate::keys::document_bytes(Domain::Presence, obj);
        Ok(SignedStatus {
            status,
            sig,
            signing_input: input,
            value: v,
            wire,
        })
    }

    pub fn status(&self) -> &Status {
        &self.status
    }
    pub fn signature(&self) -> &Signature {
        &self.sig
    }
    /// `tag || JCS(status without sig)`.
    pub fn signing_input(&self) -> &[u8] {
        &self.signing_input
    }
    /// The whole status (with `sig`) as a value.
    pub fn value(&self) -> &Value {
        &self.value
    }
    /// The canonical bytes of the whole status (with `sig`).
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// PRES-2: strict verification with the key the status names (valid at its `ts` in the
    /// agent's verified key log; the caller finds it).
    pub fn verify(&self, key: &PublicKey) -> Result<(), StatusError> {
        let named = self.status.key;
        crate::keys::verify_document(key, &named, &self.signing_input, &self.sig).map_err(|e| {
            match e {
                Some(given) => StatusError::KeyMismatch { given, named },
                None => StatusError::BadSignature,
            }
        })
    }
}
