//! Conversations across relays (SPEC.md 19.6, CONVO-12..CONVO-17): what a home relay sends a
//! relay that homes some of a conversation's participants (a [`Batch`] of consecutive entries
//! with the terms in force), and what that relay answers ([`Answer`]).

use super::{ConvError, Entry};
use crate::envelope::{EnvelopeLimits, MessageId};
use crate::handle::Handle;
use crate::json::{Object, Value};
use crate::schema::{Fields, SchemaError};

/// Most handles a batch's `to` may name (a conversation has at most this many participants
/// whatever a relay's `participants_max`).
pub const BATCH_TO_MAX: usize = 256;

/// `POST /v1/federation/conversation` (CONVO-13): entries `seq` n, n+1, ... of conversation
/// `conv`, for the participants `to` homed on the receiving relay, with the turn limit and
/// expiry in force at the home relay. No entries: the home relay asks for the receiver's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub conv: MessageId,
    pub to: Vec<Handle>,
    pub turns: i64,
    pub expires: i64,
    pub entries: Vec<Entry>,
}

/// The receiver's answer (CONVO-13): the last entry it holds after the batch (`seq` 0 and 64
/// zeros when it holds none), and the invitees homed on it that it declined (CONVO-14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub conv: MessageId,
    pub seq: u64,
    pub head: [u8; 32],
    pub declined: Vec<(Handle, String)>,
}

fn handles(v: &Value, path: &str, max: usize) -> Result<Vec<Handle>, SchemaError> {
    let a = v
        .as_array()
        .ok_or_else(|| SchemaError::invalid(path, "expected an array of handles"))?;
    if a.len() > max {
        return Err(SchemaError::invalid(path, format!("at most {max} handles")));
    }
    a.iter()
        .enumerate()
        .map(|(i, h)| {
            h.as_str()
                .and_then(|s| Handle::parse(s).ok())
                .filter(|h| !h.is_relay())
                .ok_or_else(|| SchemaError::invalid(&format!("{path}[{i}]"), "not a global handle"))
        })
        .collect()
}

fn msg_id(s: &str, path: &str) -> Result<MessageId, SchemaError> {
    MessageId::parse_hex(s)
        .ok_or_else(|| SchemaError::invalid(path, "expected 64 lower-case hex characters"))
}

impl Batch {
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        o.insert("conv", self.conv.to_hex().into());
        o.insert(
            "to",
            Value::Array(self.to.iter().map(|h| h.as_str().into()).collect()),
        );
        o.insert("turns", Value::Int(self.turns));
        o.insert("expires", Value::Int(self.expires));
        o.insert(
            "entries",
            Value::Array(self.entries.iter().map(Entry::wire_value).collect()),
        );
        Value::Object(o)
    }

    /// Reads a batch: every entry as a reader reads it (CONVO-4: its hash, its envelope's
    /// id and conversation), each naming `conv`, consecutive and linked to the one before it
    /// (`invalid_field`, field `entries[i].seq` or `entries[i].prev`). The envelopes'
    /// signatures are the caller's to check: they need the senders' key logs.
    pub fn from_value(v: &Value, limits: &EnvelopeLimits) -> Result<Batch, ConvError> {
        let mut f = Fields::new(v, "")?;
        let conv = msg_id(f.req_str("conv")?, "conv")?;
        let to = handles(f.req("to")?, "to", BATCH_TO_MAX)?;
        if to.is_empty() {
            return Err(SchemaError::invalid("to", "names at least one participant").into());
        }
        let turns = f.req_int("turns", 1, crate::json::INT_ABS_MAX)?;
        let expires = f.req_int("expires", 0, crate::json::INT_ABS_MAX)?;
        let raw = f
            .req("entries")?
            .as_array()
            .ok_or_else(|| SchemaError::invalid("entries", "expected an array of entries"))?;
        f.finish()?;
        let mut entries: Vec<Entry> = Vec::with_capacity(raw.len());
        for (i, x) in raw.iter().enumerate() {
            let at = |m: &str| format!("entries[{i}].{m}");
            let e = Entry::from_value(x, limits).map_err(|mut e| {
                e.field = Some(match e.field.take() {
                    Some(p) => at(&p),
                    None => format!("entries[{i}]"),
                });
                e
            })?;
            if e.conv != conv {
                return Err(SchemaError::invalid(&at("conv"), "names another conversation").into());
            }
            if let Some(p) = entries.last() {
                if e.seq != p.seq + 1 {
                    return Err(SchemaError::invalid(
                        &at("seq"),
                        "entries of a batch are consecutive",
                    )
                    .into());
                }
                if e.prev != p.hash() {
                    return Err(SchemaError::invalid(
                        &at("prev"),
                        "not the hash of the entry before",
                    )
                    .into());
                }
            }
            entries.push(e);
        }
        Ok(Batch {
            conv,
            to,
            turns,
            expires,
            entries,
        })
    }
}

impl Answer {
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        o.insert("conv", self.conv.to_hex().into());
        o.insert("seq", Value::Int(self.seq as i64));
        o.insert("head", crate::hex::encode(&self.head).into());
        o.insert(
            "declined",
            Value::Array(
                self.declined
                    .iter()
                    .map(|(h, r)| {
                        let mut x = Object::new();
                        x.insert("handle", h.as_str().into());
                        x.insert("reason", r.as_str().into());
                        Value::Object(x)
                    })
                    .collect(),
            ),
        );
        Value::Object(o)
    }

    pub fn from_value(v: &Value) -> Result<Answer, ConvError> {
        let mut f = Fields::new(v, "")?;
        let conv = msg_id(f.req_str("conv")?, "conv")?;
        let seq = f.req_int("seq", 0, crate::json::INT_ABS_MAX)? as u64;
        let head = msg_id(f.req_str("head")?, "head")?.0;
        let raw = f
            .req("declined")?
            .as_array()
            .ok_or_else(|| SchemaError::invalid("declined", "expected an array"))?;
        f.finish()?;
        if raw.len() > BATCH_TO_MAX {
            return Err(SchemaError::invalid("declined", "too many handles").into());
        }
        let mut declined = Vec::with_capacity(raw.len());
        for (i, x) in raw.iter().enumerate() {
            let mut g = Fields::new(x, &format!("declined[{i}]"))?;
            let h = g.req_handle("handle")?;
            let r = g.req_str("reason")?;
            crate::schema::check_text(
                &format!("declined[{i}].reason"),
                r,
                crate::envelope::NOTE_CHARS_MAX,
            )?;
            g.finish()?;
            declined.push((h, r.to_owned()));
        }
        Ok(Answer {
            conv,
            seq,
            head,
            declined,
        })
    }
}
