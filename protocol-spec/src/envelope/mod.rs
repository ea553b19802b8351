//! Envelopes: the typed, versioned, signed messages of Formica (SPEC.md sections 6 and 7).
//!
//! Bytes become an envelope in three steps, and the types say which step a value has passed:
//! 1. [`SignedEnvelope::parse`]: strict JSON (JSON-*), closed schema (ENV-*), payload schema of
//!    the type (TYPE-*), then the signing input `tag || JCS(envelope without id and sig)` and the
//!    id `BLAKE3(signing input)` are computed once, from the received value.
//! 2. [`SignedEnvelope::verify`] with the sender's key: only this makes a [`VerifiedEnvelope`].
//! 3. Whatever the caller does next (freshness, dedup, policy) takes a `VerifiedEnvelope`.

use crate::canon;
use crate::error::ErrorCode;
use crate::handle::Handle;
use crate::hex;
use crate::json::{JsonError, JsonLimits, Object, Value, INT_ABS_MAX};
use crate::keys::{Domain, KeyId, SecretKey, Signature};
use crate::schema::{Fields, SchemaError};
use std::fmt;
use std::sync::Arc;

/// The envelope format version this crate speaks (ENV-2).
pub const PROTOCOL_VERSION: i64 = 1;
/// Default and largest number of recipients of one envelope (ENV-6). Relays may publish less.
pub const RECIPIENTS_MAX_DEFAULT: usize = 16;
/// Default largest payload, in canonical bytes (ENV-8). Relays publish per-tier values.
pub const PAYLOAD_BYTES_MAX_DEFAULT: usize = 32 * 1024;
/// Longest ack deadline after the envelope's timestamp: 7 days (ENV-7).
pub const ACK_WINDOW_MS_MAX: i64 = 7 * 24 * 3600 * 1000;
/// Longest correlation id, in bytes (ENV-5).
pub const CORR_BYTES_MAX: usize = 128;
/// Longest short free-text field (`note`, `reason`), in characters.
pub const NOTE_CHARS_MAX: usize = 280;
/// Longest extension or task name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;

/// Limits applied while parsing an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeLimits {
    pub json: JsonLimits,
    pub recipients_max: usize,
    pub payload_bytes_max: usize,
}

impl Default for EnvelopeLimits {
    fn default() -> Self {
        EnvelopeLimits {
            json: JsonLimits::default(),
            recipients_max: RECIPIENTS_MAX_DEFAULT,
            payload_bytes_max: PAYLOAD_BYTES_MAX_DEFAULT,
        }
    }
}

/// A message id: BLAKE3 of the envelope's signing input (ENV-11), 64 lower-case hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 32]);

impl MessageId {
    pub fn parse_hex(s: &str) -> Option<MessageId> {
        hex::decode_array::<32>(s).map(MessageId)
    }
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
    /// The id of a signing input.
    pub fn of_input(signing_input: &[u8]) -> MessageId {
        MessageId(*blake3::hash(signing_input).as_bytes())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.to_hex())
    }
}
impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

mod payload;
use payload::{opt_s, put_opt};
mod signed;
mod types;

pub use payload::{Invitee, Payload, CONV_TURNS_MAX};
pub use signed::{SignedEnvelope, VerifiedEnvelope};
pub use types::{
    AckStatus, ContactLevel, ConvActionKind, ConvMode, ConvRole, DeliveryState, MessageType,
    ReportReason, TaskStatus, VouchAction,
};

/// The content of an envelope, without id and signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub msg_type: MessageType,
    pub type_version: i64,
    pub from: Handle,
    pub key: KeyId,
    pub to: Vec<Handle>,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    pub corr: Option<String>,
    /// Ack deadline in milliseconds since the Unix epoch; present means "please ack".
    pub ack_by: Option<i64>,
    /// The conversation this envelope belongs to (CONVO-6, CONVO-8): the id of its call.
    pub conv: Option<MessageId>,
    pub payload: Payload,
}

/// Why an envelope was refused before or during verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("unsupported protocol version {got}; this relay speaks version {PROTOCOL_VERSION}")]
    UnsupportedVersion { got: i64 },
    #[error("unknown message type {name:?}")]
    UnknownType { name: String },
    #[error("message type {name} has no version {got} (highest known: {max})")]
    UnsupportedTypeVersion { name: String, got: i64, max: i64 },
    #[error("{count} recipients, more than the limit of {max}")]
    TooManyRecipients { count: usize, max: usize },
    #[error("payload is {len} bytes, more than the limit of {max}")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("`id` is {given} but the envelope's id is {computed}")]
    IdMismatch { given: String, computed: String },
    #[error("{reason}")]
    TypeReserved { reason: &'static str },
    #[error("the key given is {given}, the envelope names {named}")]
    KeyMismatch { given: KeyId, named: KeyId },
    #[error("signature does not verify")]
    BadSignature,
}

impl EnvelopeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            EnvelopeError::Json(e) => e.code(),
            EnvelopeError::Schema(e) => e.code(),
            EnvelopeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            EnvelopeError::UnknownType { .. } => ErrorCode::UnknownType,
            EnvelopeError::UnsupportedTypeVersion { .. } => ErrorCode::UnsupportedTypeVersion,
            EnvelopeError::TooManyRecipients { .. } => ErrorCode::TooManyRecipients,
            EnvelopeError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            EnvelopeError::IdMismatch { .. } => ErrorCode::IdMismatch,
            EnvelopeError::TypeReserved { .. } => ErrorCode::TypeReserved,
            EnvelopeError::KeyMismatch { .. } => ErrorCode::UnknownKey,
            EnvelopeError::BadSignature => ErrorCode::BadSignature,
        }
    }
}

impl Envelope {
    /// Reads an envelope from a strict-JSON value (everything but signature verification).
    /// Returns the envelope, the `id` member if present, the signature and the canonical length
    /// of the payload.
    fn from_value(
        v: &Value,
        limits: &EnvelopeLimits,
    ) -> Result<(Envelope, Option<String>, Signature, usize), EnvelopeError> {
        let mut f = Fields::new(v, "")?;
        // ENV-2: the version first, so that a future version's other changes are reported as
        // "unsupported version", not as a schema error.
        let version = f.req_int("v", 0, INT_ABS_MAX)?;
        if version != PROTOCOL_VERSION {
            return Err(EnvelopeError::UnsupportedVersion { got: version });
        }
        let type_name = f.req_str("type")?;
        let msg_type = MessageType::parse(type_name).ok_or_else(|| EnvelopeError::UnknownType {
            name: type_name.chars().take(64).collect(),
        })?;
        let type_version = f.req_int("type_version", 1, INT_ABS_MAX)?;
        if let Some(max) = msg_type.max_version() {
            if type_version > max {
                return Err(EnvelopeError::UnsupportedTypeVersion {
                    name: msg_type.as_str().to_owned(),
                    got: type_version,
                    max,
                });
            }
        }
        let from = f.req_handle("from")?;
        let key = f.req_key_id("key")?;
        let to_v = f.req("to")?;
        let to_items = to_v
            .as_array()
            .ok_or_else(|| SchemaError::invalid("to", "expected an array of handles"))?;
        if to_items.is_empty() {
            return Err(SchemaError::invalid("to", "at least one recipient is required").into());
        }
        if to_items.len() > limits.recipients_max {
            return Err(EnvelopeError::TooManyRecipients {
                count: to_items.len(),
                max: limits.recipients_max,
            });
        }
        let mut to = Vec::with_capacity(to_items.len());
        for (i, item) in to_items.iter().enumerate() {
            let path = format!("to[{i}]");
            let s = item
                .as_str()
                .ok_or_else(|| SchemaError::invalid(&path, "expected a handle string"))?;
            let h = Handle::parse(s).map_err(|source| SchemaError::InvalidHandle {
                path: path.clone(),
                source,
            })?;
            if to.contains(&h) {
                return Err(SchemaError::invalid(&path, "recipient listed twice").into());
            }
            to.push(h);
        }
        let ts = f.req_int("ts", 0, INT_ABS_MAX)?;
        let corr = match f.opt_str("corr")? {
            None => None,
            Some(c) => {
                let ok = !c.is_empty()
                    && c.len() <= CORR_BYTES_MAX
                    && c.bytes().all(|b| (0x21..=0x7e).contains(&b));
                if !ok {
                    return Err(SchemaError::invalid(
                        "corr",
                        "expected 1-128 printable ASCII characters without spaces",
                    )
                    .into());
                }
                Some(c.to_owned())
            }
        };
        let ack_by = f.opt_int("ack_by", 0, INT_ABS_MAX)?;
        if let Some(by) = ack_by {
            if by <= ts || by - ts > ACK_WINDOW_MS_MAX {
                return Err(SchemaError::invalid(
                    "ack_by",
                    "must be after `ts` and at most 7 days after it",
                )
                .into());
            }
            if matches!(
                msg_type,
                MessageType::Ack
                    | MessageType::Receipt
                    | MessageType::Vouch
                    | MessageType::Report
                    | MessageType::Call
                    | MessageType::ConvAction
            ) {
                return Err(SchemaError::invalid(
                    "ack_by",
                    "acks, receipts, vouches, reports, calls and conversation actions cannot ask for an ack",
                )
                .into());
            }
        }
        // ENV-16 step 11a: the conversation, a message id (CONVO-6, CONVO-8).
        let conv = match f.opt_str("conv")? {
            None => None,
            Some(c) => Some(MessageId::parse_hex(c).ok_or_else(|| {
                SchemaError::invalid("conv", "expected 64 lower-case hex characters")
            })?),
        };
        let payload_v = f.req("payload")?;
        let payload = Payload::from_value(&msg_type, payload_v)?;
        let payload_len = canon::canonical_len(payload_v);
        if payload_len > limits.payload_bytes_max {
            return Err(EnvelopeError::PayloadTooLarge {
                len: payload_len,
                max: limits.payload_bytes_max,
            });
        }
        let id = f.opt_str("id")?.map(str::to_owned);
        let sig = f.req_sig("sig")?;
        f.finish()?;

        let env = Envelope {
            msg_type,
            type_version,
            from,
            key,
            to,
            ts,
            corr,
            ack_by,
            conv,
            payload,
        };
        env.check_rules()?;
        Ok((env, id, sig, payload_len))
    }

    /// Cross-field rules of the message types (TYPE-*).
    fn check_rules(&self) -> Result<(), EnvelopeError> {
        // TYPE-8: receipts come from relays, and relays send nothing else.
        let is_receipt = self.msg_type == MessageType::Receipt;
        if is_receipt != self.from.is_relay() {
            return Err(EnvelopeError::TypeReserved {
                reason: if is_receipt {
                    "receipts are sent only by relays (@relay@host)"
                } else {
                    "@relay addresses send only receipts"
                },
            });
        }
        // CONVO-6, CONVO-8: `conv` on posts and actions only; an action needs it.
        match (&self.msg_type, self.conv.is_some()) {
            (MessageType::ConvAction, false) => {
                return Err(SchemaError::MissingField {
                    path: "conv".into(),
                }
                .into())
            }
            (
                MessageType::Message
                | MessageType::TaskRequest
                | MessageType::TaskResult
                | MessageType::Extension(_)
                | MessageType::ConvAction,
                _,
            )
            | (_, false) => {}
            (t, true) => {
                return Err(SchemaError::invalid(
                    "conv",
                    format!("a {t} does not belong to a conversation"),
                )
                .into())
            }
        }
        match &self.payload {
            Payload::Call { participants, .. } => {
                if participants.iter().any(|p| p.handle == self.from) {
                    return Err(SchemaError::invalid(
                        "payload.participants",
                        "the caller is the owner, not an invitee",
                    )
                    .into());
                }
                if !participants.iter().map(|p| &p.handle).eq(self.to.iter()) {
                    return Err(SchemaError::invalid(
                        "to",
                        "a call is addressed to exactly its participants, in their order",
                    )
                    .into());
                }
                Ok(())
            }
            Payload::Ack { .. } | Payload::Receipt { .. } if self.to.len() != 1 => Err(
                SchemaError::invalid("to", "acks and receipts have exactly one recipient").into(),
            ),
            _ if self.msg_type == MessageType::TaskResult && self.corr.is_none() => {
                Err(SchemaError::MissingField {
                    path: "corr".into(),
                }
                .into())
            }
            // SEAL-4: one sealed key per recipient, in the order of `to` (then the sender's).
            Payload::Sealed(s) => Ok(s.check_addressing(&self.from, &self.to)?),
            Payload::Vouch { subject, .. } | Payload::Report { subject, .. } => {
                if self.to.len() != 1 || self.to[0] != Handle::relay(subject.host()) {
                    return Err(SchemaError::invalid(
                        "to",
                        "vouches and reports go to exactly the subject's relay, @relay@<subject host>",
                    )
                    .into());
                }
                if *subject == self.from {
                    return Err(
                        SchemaError::invalid("payload.subject", "cannot name the sender").into(),
                    );
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The signing domain of this envelope: receipts are signed under their own tag (SIG-1).
    pub fn domain(&self) -> Domain {
        if self.msg_type == MessageType::Receipt {
            Domain::Receipt
        } else {
            Domain::Envelope
        }
    }

    /// The envelope as a JSON object, without `id` and `sig`.
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        o.insert("v", Value::Int(PROTOCOL_VERSION));
        o.insert("type", self.msg_type.as_str().into());
        o.insert("type_version", Value::Int(self.type_version));
        o.insert("from", self.from.as_str().into());
        o.insert("key", self.key.to_hex().into());
        o.insert(
            "to",
            Value::Array(self.to.iter().map(|h| h.as_str().into()).collect()),
        );
        o.insert("ts", Value::Int(self.ts));
        put_opt(&mut o, "corr", opt_s(&self.corr));
        put_opt(&mut o, "ack_by", self.ack_by.map(Value::Int));
        put_opt(&mut o, "conv", self.conv.map(|c| c.to_hex().into()));
        o.insert("payload", self.payload.to_value());
        Value::Object(o)
    }

    /// Signs the envelope. The key must be the one `self.key` names.
    pub fn sign(&self, sk: &SecretKey) -> Result<SignedEnvelope, EnvelopeError> {
        let named = self.key;
        let given = sk.public().key_id();
        if named != given {
            return Err(EnvelopeError::KeyMismatch { given, named });
        }
        let mut v = self.to_value();
        let mut input = self.domain().tag().to_vec();
        canon::write_value(&v, &mut input);
        let id = MessageId::of_input(&input);
        let sig = sk.sign_input(&input);
        let payload_len = match &v {
            Value::Object(o) => o.get("payload").map(canon::canonical_len).unwrap_or(0),
            _ => 0,
        };
        if let Value::Object(o) = &mut v {
            o.insert("id", id.to_hex().into());
            o.insert("sig", sig.to_hex().into());
        }
        let wire = Arc::new(canon::canonicalize(&v));
        Ok(SignedEnvelope {
            envelope: self.clone(),
            id,
            sig,
            signing_input: input,
            value: v,
            wire,
            payload_len,
        })
    }
}
