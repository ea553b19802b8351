//! Conversations (draft SPEC section 19, `protocol-spec/drafts/conversations.md`): the entries a
//! home relay sequences, their hash links (CONVO-4), and the fold of the states of CONVO-1, CONVO-2,
//! CONVO-6 and CONVO-9 over them, so that a home relay, a replica and a client that read the same
//! entries compute the same states.
//!
//! Pure like the rest of the crate: times come in as arguments.

use crate::canon;
use crate::envelope::{EnvelopeLimits, MessageId, SignedEnvelope};
use crate::error::ErrorCode;
use crate::handle::Handle;
use crate::json::{Object, Value};
use crate::keys::Domain;
use crate::schema::{Fields, SchemaError};

/// The `prev` of entry 1.
pub const FIRST_PREV: [u8; 32] = [0; 32];

/// Why a conversation closed (CONVO-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    TurnLimit,
    Expired,
    ClosedByOwner,
    EveryoneLeft,
}

impl CloseReason {
    pub const WORDS: &'static [(&'static str, CloseReason)] = &[
        ("turn_limit", CloseReason::TurnLimit),
        ("expired", CloseReason::Expired),
        ("closed_by_owner", CloseReason::ClosedByOwner),
        ("everyone_left", CloseReason::EveryoneLeft),
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::TurnLimit => "turn_limit",
            CloseReason::Expired => "expired",
            CloseReason::ClosedByOwner => "closed_by_owner",
            CloseReason::EveryoneLeft => "everyone_left",
        }
    }
}

/// An event the home relay observed (CONVO-4), as opposed to an agent's envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvEvent {
    /// A live invitation rang out (CONVO-7).
    Missed { handle: Handle },
    /// The relay declined for an invitee (`busy`, CONVO-7).
    Declined { handle: Handle, reason: String },
    /// The conversation closed on its turn limit, its expiry, or because everyone left.
    Closed { reason: CloseReason },
}

impl ConvEvent {
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        match self {
            ConvEvent::Missed { handle } => {
                o.insert("kind", "missed".into());
                o.insert("handle", handle.as_str().into());
            }
            ConvEvent::Declined { handle, reason } => {
                o.insert("kind", "declined".into());
                o.insert("handle", handle.as_str().into());
                o.insert("reason", reason.as_str().into());
            }
            ConvEvent::Closed { reason } => {
                o.insert("kind", "closed".into());
                o.insert("reason", reason.as_str().into());
            }
        }
        Value::Object(o)
    }

    /// Reads an entry's `event` member.
    pub fn from_value(v: &Value) -> Result<ConvEvent, SchemaError> {
        let mut f = Fields::new(v, "event")?;
        let kind = f.req_word(
            "kind",
            &[("missed", 0u8), ("declined", 1u8), ("closed", 2u8)],
        )?;
        let e = match kind {
            0 => ConvEvent::Missed {
                handle: f.req_handle("handle")?,
            },
            1 => {
                let handle = f.req_handle("handle")?;
                let reason = f.req_str("reason")?;
                crate::schema::check_text("event.reason", reason, crate::envelope::NOTE_CHARS_MAX)?;
                ConvEvent::Declined {
                    handle,
                    reason: reason.to_owned(),
                }
            }
            _ => {
                let reason = f.req_word("reason", CloseReason::WORDS)?;
                if reason == CloseReason::ClosedByOwner {
                    return Err(SchemaError::invalid(
                        "event.reason",
                        "a close by the owner is the owner's own conv_action",
                    ));
                }
                ConvEvent::Closed { reason }
            }
        };
        f.finish()?;
        Ok(e)
    }
}

/// What an entry holds. An envelope is the common case, and entries are made one at a time, so
/// it is not boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryBody {
    Envelope(SignedEnvelope),
    Event(ConvEvent),
}

/// One entry of a conversation (CONVO-4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub conv: MessageId,
    pub seq: u64,
    /// The home relay's time when it appended the entry.
    pub at: i64,
    pub prev: [u8; 32],
    pub body: EntryBody,
}

impl Entry {
    /// The entry as served, without `hash`.
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        o.insert("conv", self.conv.to_hex().into());
        o.insert("seq", Value::Int(self.seq as i64));
        o.insert("at", Value::Int(self.at));
        o.insert("prev", crate::hex::encode(&self.prev).into());
        match &self.body {
            EntryBody::Envelope(e) => o.insert("envelope", e.value().clone()),
            EntryBody::Event(e) => o.insert("event", e.to_value()),
        };
        Value::Object(o)
    }

    /// CONVO-4: BLAKE3 of the conversation tag and the canonical entry without `hash`.
    pub fn hash(&self) -> [u8; 32] {
        let input = Domain::Conversation.input(&canon::canonicalize(&self.to_value()));
        *blake3::hash(&input).as_bytes()
    }

    /// The entry as served, with its `hash`.
    pub fn wire_value(&self) -> Value {
        let mut v = self.to_value();
        if let Value::Object(o) = &mut v {
            o.insert("hash", crate::hex::encode(&self.hash()).into());
        }
        v
    }

    /// The canonical bytes served: the entry with its `hash`.
    pub fn wire(&self) -> Vec<u8> {
        let mut v = self.to_value();
        if let Value::Object(o) = &mut v {
            o.insert("hash", crate::hex::encode(&self.hash()).into());
        }
        canon::canonicalize(&v)
    }

    /// Reads a served entry and checks its `hash` (the envelope's signature is the caller's:
    /// it needs the sender's key log). `invalid_field` (field `hash`) for a hash that is not
    /// the entry's.
    pub fn from_value(v: &Value, limits: &EnvelopeLimits) -> Result<Entry, ConvError> {
        let mut f = Fields::new(v, "")?;
        let conv = msg_id(f.req_str("conv")?, "conv")?;
        let seq = f.req_int("seq", 1, crate::json::INT_ABS_MAX)? as u64;
        let at = f.req_int("at", 0, crate::json::INT_ABS_MAX)?;
        let prev = msg_id(f.req_str("prev")?, "prev")?.0;
        let body = match (f.opt("envelope"), f.opt("event")) {
            (Some(e), None) => {
                // Served envelopes carry their id (ENV-15); the hash covers the bytes served.
                if e.as_object().is_some_and(|o| o.get("id").is_none()) {
                    return Err(SchemaError::MissingField {
                        path: "envelope.id".into(),
                    }
                    .into());
                }
                let se = SignedEnvelope::from_value(e.clone(), limits)
                    .map_err(|e| ConvError::new(e.code(), format!("envelope: {e}")))?;
                // The envelope belongs to this conversation: its call, or one naming it.
                let belongs = match se.envelope().msg_type {
                    crate::envelope::MessageType::Call => se.id() == conv && seq == 1,
                    _ => se.envelope().conv == Some(conv) && seq > 1,
                };
                if !belongs {
                    return Err(SchemaError::invalid(
                        "envelope.conv",
                        "the envelope is not this conversation's call, nor does it name it",
                    )
                    .into());
                }
                EntryBody::Envelope(se)
            }
            (None, Some(e)) => EntryBody::Event(ConvEvent::from_value(e)?),
            _ => {
                return Err(SchemaError::invalid(
                    "envelope",
                    "an entry holds exactly one of `envelope` and `event`",
                )
                .into())
            }
        };
        let hash = msg_id(f.req_str("hash")?, "hash")?.0;
        f.finish()?;
        let e = Entry {
            conv,
            seq,
            at,
            prev,
            body,
        };
        if e.hash() != hash {
            return Err(
                SchemaError::invalid("hash", "not the hash of this entry (CONVO-4)").into(),
            );
        }
        Ok(e)
    }
}

fn msg_id(s: &str, path: &str) -> Result<MessageId, SchemaError> {
    MessageId::parse_hex(s)
        .ok_or_else(|| SchemaError::invalid(path, "expected 64 lower-case hex characters"))
}

/// A refusal: the registered code and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConvError {
    pub code: ErrorCode,
    pub message: String,
    /// The member the refusal is about (`to`, `conv`, ...), if any.
    pub field: Option<String>,
    /// For `conversation_closed`: why it closed.
    pub reason: Option<CloseReason>,
}

impl ConvError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ConvError {
        ConvError {
            code,
            message: message.into(),
            field: None,
            reason: None,
        }
    }
    pub(crate) fn field(mut self, f: &str) -> ConvError {
        self.field = Some(f.to_owned());
        self
    }
}

impl From<SchemaError> for ConvError {
    fn from(e: SchemaError) -> ConvError {
        let path = match &e {
            SchemaError::UnknownField { path }
            | SchemaError::MissingField { path }
            | SchemaError::InvalidField { path, .. }
            | SchemaError::InvalidHandle { path, .. }
            | SchemaError::InvalidKey { path, .. } => path.clone(),
        };
        let mut c = ConvError::new(e.code(), e.to_string());
        if !path.is_empty() {
            c.field = Some(path);
        }
        c
    }
}

mod fold;
pub mod replica;
mod views;
pub use fold::{ConvLimits, ConvState, Conversation, PartState, Participant};
