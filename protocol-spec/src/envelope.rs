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
use crate::json::{self, JsonError, JsonLimits, Object, Value, INT_ABS_MAX};
use crate::keys::{Domain, KeyError, KeyId, PublicKey, SecretKey, Signature};
use crate::schema::{check_text, Fields, SchemaError};
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

macro_rules! words {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $word:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),* }
        impl $name {
            pub const WORDS: &'static [(&'static str, $name)] = &[$(($word, $name::$variant)),*];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word),* }
            }
            pub fn parse(s: &str) -> Option<$name> {
                Self::WORDS.iter().find(|(w, _)| *w == s).map(|(_, v)| *v)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

words! {
    /// A contact grant's level (CONTACT-2). Levels are ordered: `read < message < task`.
    ContactLevel { Read = "read", Message = "message", Task = "task" }
}
words! {
    /// What an ack says about a message (ACK-2).
    AckStatus { Received = "received", Processed = "processed", Rejected = "rejected" }
}
words! {
    /// The delivery state of a message for one recipient (DELIV-1).
    DeliveryState {
        Accepted = "accepted",
        Forwarded = "forwarded",
        Delivered = "delivered",
        Acked = "acked",
        TimedOut = "timed_out",
        DeadLettered = "dead_lettered",
    }
}
words! {
    /// The outcome a `task_result` reports.
    TaskStatus { Ok = "ok", Error = "error" }
}
words! {
    /// Whether a vouch is given or taken back.
    VouchAction { Grant = "grant", Revoke = "revoke" }
}
words! {
    /// Why an agent is reported.
    ReportReason { Spam = "spam", Abuse = "abuse", Impersonation = "impersonation", Malware = "malware", Other = "other" }
}

impl DeliveryState {
    /// Terminal states never change again (DELIV-2).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeliveryState::Acked | DeliveryState::TimedOut | DeliveryState::DeadLettered
        )
    }
}

/// The message type, an open enum on purpose (TYPE-1): registered types are variants, `x-`
/// extension types are carried by name, and anything else is refused at parse time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MessageType {
    Message,
    TaskRequest,
    TaskResult,
    Ack,
    Receipt,
    ContactRequest,
    Vouch,
    Report,
    /// An extension type `x-...`, opaque to relays.
    Extension(String),
}

impl MessageType {
    pub const REGISTERED: &'static [MessageType] = &[
        MessageType::Message,
        MessageType::TaskRequest,
        MessageType::TaskResult,
        MessageType::Ack,
        MessageType::Receipt,
        MessageType::ContactRequest,
        MessageType::Vouch,
        MessageType::Report,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            MessageType::Message => "message",
            MessageType::TaskRequest => "task_request",
            MessageType::TaskResult => "task_result",
            MessageType::Ack => "ack",
            MessageType::Receipt => "receipt",
            MessageType::ContactRequest => "contact_request",
            MessageType::Vouch => "vouch",
            MessageType::Report => "report",
            MessageType::Extension(s) => s,
        }
    }

    /// TYPE-1/TYPE-2: a registered name, or `x-` followed by `[a-z0-9][a-z0-9._-]*` (64 bytes in all).
    pub fn parse(s: &str) -> Option<MessageType> {
        if let Some(t) = MessageType::REGISTERED.iter().find(|t| t.as_str() == s) {
            return Some(t.clone());
        }
        let rest = s.strip_prefix("x-")?;
        let b = rest.as_bytes();
        let ok = s.len() <= NAME_BYTES_MAX
            && !b.is_empty()
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|&c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
            });
        ok.then(|| MessageType::Extension(s.to_owned()))
    }

    /// The highest `type_version` this crate understands for a registered type (TYPE-3).
    /// Extension types accept any version from 1.
    pub fn max_version(&self) -> Option<i64> {
        match self {
            MessageType::Extension(_) => None,
            _ => Some(1),
        }
    }

    /// The contact level a sender needs to send this type (CONTACT-4). `None`: no contact grant
    /// is involved and other rules apply (acks: ACK-3; contact requests: CONTACT-5; vouches and
    /// reports: TRUST-3; receipts: relays only). A `task_result` that answers a `task_request`
    /// the recipient sent is a reply and needs no grant (CONTACT-6).
    pub fn required_level(&self) -> Option<ContactLevel> {
        match self {
            MessageType::Message | MessageType::Extension(_) | MessageType::TaskResult => {
                Some(ContactLevel::Message)
            }
            MessageType::TaskRequest => Some(ContactLevel::Task),
            MessageType::Ack
            | MessageType::ContactRequest
            | MessageType::Vouch
            | MessageType::Report
            | MessageType::Receipt => None,
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload, typed by the envelope's type (TYPE-4..11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Message {
        text: String,
        data: Option<Value>,
    },
    TaskRequest {
        task: String,
        input: Option<Value>,
    },
    TaskResult {
        status: TaskStatus,
        output: Option<Value>,
        error: Option<String>,
    },
    Ack {
        msg: MessageId,
        status: AckStatus,
        reason: Option<String>,
    },
    Receipt {
        msg: MessageId,
        recipient: Handle,
        status: DeliveryState,
        ack: Option<MessageId>,
        ack_status: Option<AckStatus>,
        reason: Option<String>,
    },
    ContactRequest {
        level: ContactLevel,
        note: Option<String>,
    },
    Vouch {
        subject: Handle,
        action: VouchAction,
    },
    Report {
        subject: Handle,
        reason: ReportReason,
        msg: Option<MessageId>,
        note: Option<String>,
    },
    /// The payload of an `x-` type: any object, not interpreted.
    Extension(Object),
}

fn put_opt(o: &mut Object, k: &str, v: Option<Value>) {
    if let Some(v) = v {
        o.insert(k, v);
    }
}

fn opt_s(s: &Option<String>) -> Option<Value> {
    s.as_ref().map(|s| Value::String(s.clone()))
}

fn req_msg_id(f: &mut Fields<'_>, key: &str) -> Result<MessageId, SchemaError> {
    let s = f.req_str(key)?;
    MessageId::parse_hex(s)
        .ok_or_else(|| SchemaError::invalid(&f.path(key), "expected 64 lower-case hex characters"))
}

fn opt_msg_id(f: &mut Fields<'_>, key: &str) -> Result<Option<MessageId>, SchemaError> {
    match f.opt_str(key)? {
        None => Ok(None),
        Some(s) => MessageId::parse_hex(s).map(Some).ok_or_else(|| {
            SchemaError::invalid(&f.path(key), "expected 64 lower-case hex characters")
        }),
    }
}

fn opt_note(f: &mut Fields<'_>, key: &str) -> Result<Option<String>, SchemaError> {
    match f.opt_str(key)? {
        None => Ok(None),
        Some(s) => {
            check_text(&f.path(key), s, NOTE_CHARS_MAX)?;
            Ok(Some(s.to_owned()))
        }
    }
}

fn check_name(path: &str, s: &str) -> Result<(), SchemaError> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= NAME_BYTES_MAX
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(SchemaError::invalid(
            path,
            "expected [a-z0-9][a-z0-9._-]*, at most 64 bytes",
        ))
    }
}

impl Payload {
    /// Reads the payload of an envelope of type `ty`.
    pub fn from_value(ty: &MessageType, v: &Value) -> Result<Payload, SchemaError> {
        if let MessageType::Extension(_) = ty {
            return match v {
                Value::Object(o) => Ok(Payload::Extension(o.clone())),
                other => Err(SchemaError::invalid(
                    "payload",
                    format!("expected an object, found {}", other.kind()),
                )),
            };
        }
        let mut f = Fields::new(v, "payload")?;
        let p = match ty {
            MessageType::Message => Payload::Message {
                text: f.req_str("text")?.to_owned(),
                data: f.opt("data").cloned(),
            },
            MessageType::TaskRequest => {
                let task = f.req_str("task")?;
                check_name("payload.task", task)?;
                Payload::TaskRequest {
                    task: task.to_owned(),
                    input: f.opt("input").cloned(),
                }
            }
            MessageType::TaskResult => {
                let status = f.req_word("status", TaskStatus::WORDS)?;
                let output = f.opt("output").cloned();
                let error = opt_note(&mut f, "error")?;
                if error.is_some() && status != TaskStatus::Error {
                    return Err(SchemaError::invalid(
                        "payload.error",
                        "only allowed when status is \"error\"",
                    ));
                }
                Payload::TaskResult {
                    status,
                    output,
                    error,
                }
            }
            MessageType::Ack => Payload::Ack {
                msg: req_msg_id(&mut f, "msg")?,
                status: f.req_word("status", AckStatus::WORDS)?,
                reason: opt_note(&mut f, "reason")?,
            },
            MessageType::Receipt => {
                let msg = req_msg_id(&mut f, "msg")?;
                let recipient = f.req_handle("recipient")?;
                let status = f.req_word("status", DeliveryState::WORDS)?;
                let ack = opt_msg_id(&mut f, "ack")?;
                let ack_status = match f.opt_str("ack_status")? {
                    None => None,
                    Some(s) => Some(f.word("ack_status", s, AckStatus::WORDS)?),
                };
                if (status == DeliveryState::Acked) != (ack.is_some() && ack_status.is_some()) {
                    return Err(SchemaError::invalid(
                        "payload.ack",
                        "`ack` and `ack_status` are present exactly when status is \"acked\"",
                    ));
                }
                Payload::Receipt {
                    msg,
                    recipient,
                    status,
                    ack,
                    ack_status,
                    reason: opt_note(&mut f, "reason")?,
                }
            }
            MessageType::ContactRequest => Payload::ContactRequest {
                level: f.req_word("level", ContactLevel::WORDS)?,
                note: opt_note(&mut f, "note")?,
            },
            MessageType::Vouch => Payload::Vouch {
                subject: f.req_handle("subject")?,
                action: f.req_word("action", VouchAction::WORDS)?,
            },
            MessageType::Report => Payload::Report {
                subject: f.req_handle("subject")?,
                reason: f.req_word("reason", ReportReason::WORDS)?,
                msg: opt_msg_id(&mut f, "msg")?,
                note: opt_note(&mut f, "note")?,
            },
            MessageType::Extension(_) => unreachable!("returned above"),
        };
        f.finish()?;
        Ok(p)
    }

    /// The payload as a JSON object.
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        match self {
            Payload::Message { text, data } => {
                o.insert("text", Value::String(text.clone()));
                put_opt(&mut o, "data", data.clone());
            }
            Payload::TaskRequest { task, input } => {
                o.insert("task", Value::String(task.clone()));
                put_opt(&mut o, "input", input.clone());
            }
            Payload::TaskResult {
                status,
                output,
                error,
            } => {
                o.insert("status", status.as_str().into());
                put_opt(&mut o, "output", output.clone());
                put_opt(&mut o, "error", opt_s(error));
            }
            Payload::Ack {
                msg,
                status,
                reason,
            } => {
                o.insert("msg", msg.to_hex().into());
                o.insert("status", status.as_str().into());
                put_opt(&mut o, "reason", opt_s(reason));
            }
            Payload::Receipt {
                msg,
                recipient,
                status,
                ack,
                ack_status,
                reason,
            } => {
                o.insert("msg", msg.to_hex().into());
                o.insert("recipient", recipient.as_str().into());
                o.insert("status", status.as_str().into());
                put_opt(&mut o, "ack", ack.map(|a| a.to_hex().into()));
                put_opt(&mut o, "ack_status", ack_status.map(|s| s.as_str().into()));
                put_opt(&mut o, "reason", opt_s(reason));
            }
            Payload::ContactRequest { level, note } => {
                o.insert("level", level.as_str().into());
                put_opt(&mut o, "note", opt_s(note));
            }
            Payload::Vouch { subject, action } => {
                o.insert("subject", subject.as_str().into());
                o.insert("action", action.as_str().into());
            }
            Payload::Report {
                subject,
                reason,
                msg,
                note,
            } => {
                o.insert("subject", subject.as_str().into());
                o.insert("reason", reason.as_str().into());
                put_opt(&mut o, "msg", msg.map(|m| m.to_hex().into()));
                put_opt(&mut o, "note", opt_s(note));
            }
            Payload::Extension(obj) => return Value::Object(obj.clone()),
        }
        Value::Object(o)
    }
}

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
                MessageType::Ack | MessageType::Receipt | MessageType::Vouch | MessageType::Report
            ) {
                return Err(SchemaError::invalid(
                    "ack_by",
                    "acks, receipts, vouches and reports cannot ask for an ack",
                )
                .into());
            }
        }
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
        match &self.payload {
            Payload::Ack { .. } | Payload::Receipt { .. } if self.to.len() != 1 => Err(
                SchemaError::invalid("to", "acks and receipts have exactly one recipient").into(),
            ),
            Payload::TaskResult { .. } if self.corr.is_none() => Err(SchemaError::MissingField {
                path: "corr".into(),
            }
            .into()),
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

/// An envelope that has been parsed and whose id has been computed, but whose signature has not
/// been checked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEnvelope {
    envelope: Envelope,
    id: MessageId,
    sig: Signature,
    signing_input: Vec<u8>,
    /// The full object as received, with `id` set.
    value: Value,
    /// The canonical bytes of `value`, made once (in the same pass as the signing input when
    /// the envelope carried its id) and shared with whoever stores or serves them.
    wire: Arc<Vec<u8>>,
    /// The canonical length of the payload as received.
    payload_len: usize,
}

impl SignedEnvelope {
    /// Parses bytes under the strict profile and the envelope schema (steps 1-5 of ingest).
    pub fn parse(bytes: &[u8], limits: &EnvelopeLimits) -> Result<SignedEnvelope, EnvelopeError> {
        let v = json::parse(bytes, limits.json)?;
        SignedEnvelope::from_value(v, limits)
    }

    /// Like [`parse`](Self::parse), for a value that has already passed the strict parser (one
    /// element of a batch). The value's depth is checked against the limits again.
    pub fn from_value(v: Value, limits: &EnvelopeLimits) -> Result<SignedEnvelope, EnvelopeError> {
        SignedEnvelope::from_value_with(v, limits, None)
    }

    /// Like [`parse`](Self::parse) for bytes the caller guarantees to be the canonical form of
    /// a full envelope (with `id` and `sig`), such as bytes a relay wrote to its own log after
    /// checking them: the bytes are kept as the wire form instead of being written again.
    /// Every check of `parse` still runs (schema, id against the signing input). Do not use it
    /// for bytes from the network.
    pub fn parse_stored_canonical(
        bytes: &[u8],
        limits: &EnvelopeLimits,
    ) -> Result<SignedEnvelope, EnvelopeError> {
        let v = json::parse(bytes, limits.json)?;
        SignedEnvelope::from_value_with(v, limits, Some(bytes))
    }

    fn from_value_with(
        mut v: Value,
        limits: &EnvelopeLimits,
        canonical: Option<&[u8]>,
    ) -> Result<SignedEnvelope, EnvelopeError> {
        if v.depth() > limits.json.depth_max {
            return Err(JsonError::TooDeep {
                offset: 0,
                max: limits.json.depth_max,
            }
            .into());
        }
        let (envelope, given_id, sig, payload_len) = Envelope::from_value(&v, limits)?;
        let Value::Object(obj) = &mut v else {
            unreachable!("Envelope::from_value accepted only an object")
        };
        // ENV-10: the signing input is the tag and the canonical form of the object as received,
        // without `id` and `sig`. The wire form (with both) is written in the same pass.
        let mut input = envelope.domain().tag().to_vec();
        let mut wire = Vec::new();
        match canonical {
            Some(bytes) if given_id.is_some() => {
                canon::write_object(obj, Some(&["id", "sig"]), &mut input);
                wire.extend_from_slice(bytes);
                debug_assert_eq!(wire, canon::canonicalize(&Value::Object(obj.clone())));
            }
            _ => canon::write_object_split(obj, &["id", "sig"], &mut wire, &mut input),
        }
        let id = MessageId::of_input(&input);
        if let Some(given) = given_id {
            if given != id.to_hex() {
                return Err(EnvelopeError::IdMismatch {
                    given: given.chars().take(64).collect(),
                    computed: id.to_hex(),
                });
            }
        } else {
            // The id was left out (ENV-14 allows it): the wire form gains it.
            obj.insert("id", id.to_hex().into());
            wire.clear();
            canon::write_object(obj, None, &mut wire);
        }
        Ok(SignedEnvelope {
            envelope,
            id,
            sig,
            signing_input: input,
            value: v,
            wire: Arc::new(wire),
            payload_len,
        })
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }
    pub fn id(&self) -> MessageId {
        self.id
    }
    pub fn signature(&self) -> &Signature {
        &self.sig
    }
    /// `tag || JCS(envelope without id and sig)`: exactly the bytes that were signed.
    pub fn signing_input(&self) -> &[u8] {
        &self.signing_input
    }
    /// The envelope with `id` and `sig`, as a value.
    pub fn value(&self) -> &Value {
        &self.value
    }
    /// The canonical bytes of the full envelope (with `id` and `sig`), the form relays store
    /// and serve.
    pub fn wire_bytes(&self) -> Vec<u8> {
        self.wire.as_ref().clone()
    }
    /// The same bytes as [`wire_bytes`](Self::wire_bytes), shared rather than copied.
    pub fn wire(&self) -> &Arc<Vec<u8>> {
        &self.wire
    }
    /// The length of the canonical bytes of the payload as received (ENV-8).
    pub fn payload_len(&self) -> usize {
        self.payload_len
    }

    /// SIG-3: strict verification with the sender's key, which must be the key the envelope names.
    pub fn verify(self, key: &PublicKey) -> Result<VerifiedEnvelope, EnvelopeError> {
        let given = key.key_id();
        if given != self.envelope.key {
            return Err(EnvelopeError::KeyMismatch {
                given,
                named: self.envelope.key,
            });
        }
        key.verify_input(&self.signing_input, &self.sig)
            .map_err(|_: KeyError| EnvelopeError::BadSignature)?;
        Ok(VerifiedEnvelope(self))
    }
}

/// An envelope whose signature has been verified with the key it names. Only
/// [`SignedEnvelope::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEnvelope(SignedEnvelope);

impl VerifiedEnvelope {
    pub fn envelope(&self) -> &Envelope {
        &self.0.envelope
    }
    pub fn id(&self) -> MessageId {
        self.0.id
    }
    pub fn signed(&self) -> &SignedEnvelope {
        &self.0
    }
    pub fn wire_bytes(&self) -> Vec<u8> {
        self.0.wire_bytes()
    }
}
