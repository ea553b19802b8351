//! Payloads, typed by the envelope's type (TYPE-4..11): reading one from its JSON object under
//! the closed-schema rule, and writing it back.

use super::types::{
    AckStatus, ContactLevel, ConvActionKind, ConvMode, ConvRole, DeliveryState, MessageType,
    ReportReason, TaskStatus, VouchAction,
};
use super::{MessageId, NAME_BYTES_MAX, NOTE_CHARS_MAX};
use crate::handle::Handle;
use crate::json::{Object, Value};
use crate::schema::{check_text, Fields, SchemaError};

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
    /// A call (CONVO-5): `participants` are the invitees, in the order of the envelope's `to`.
    Call {
        topic: String,
        mode: ConvMode,
        participants: Vec<Invitee>,
        turns: Option<i64>,
        expires: Option<i64>,
    },
    /// A participant's action on the conversation the envelope's `conv` names (CONVO-6).
    ConvAction {
        action: ConvActionKind,
        reason: Option<String>,
        participants: Option<Vec<Invitee>>,
    },
    /// The payload of an `x-` type: any object, not interpreted.
    Extension(Object),
    /// A sealed payload (SEAL-1) of a `message`, `task_request`, `task_result` or `x-` type:
    /// relays see its structure only; recipients open it with [`crate::seal::open`].
    Sealed(crate::seal::Sealed),
}

/// An invited participant of a call or an invite (CONVO-5): its handle and role, `member` or
/// `observer` (the owner is the caller and is never invited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitee {
    pub handle: Handle,
    pub role: ConvRole,
}

/// Most turns a call may ask for in this crate's checks; relays publish lower maxima
/// (`conversations.turns_max`).
pub const CONV_TURNS_MAX: i64 = 1_000_000;

fn invitees(f: &mut Fields<'_>, key: &str) -> Result<Vec<Invitee>, SchemaError> {
    let path = f.path(key);
    let items = f
        .req(key)?
        .as_array()
        .ok_or_else(|| SchemaError::invalid(&path, "expected an array of participants"))?;
    if items.is_empty() {
        return Err(SchemaError::invalid(
            &path,
            "at least one participant is invited",
        ));
    }
    let mut out: Vec<Invitee> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let mut p = Fields::new(item, &format!("{path}[{i}]"))?;
        let handle = p.req_handle("handle")?;
        let role = p.req_word("role", ConvRole::WORDS)?;
        p.finish()?;
        if role == ConvRole::Owner {
            return Err(SchemaError::invalid(
                &format!("{path}[{i}].role"),
                "an invitee is a member or an observer; the caller is the owner",
            ));
        }
        if out.iter().any(|x| x.handle == handle) {
            return Err(SchemaError::invalid(
                &format!("{path}[{i}].handle"),
                "participant listed twice",
            ));
        }
        out.push(Invitee { handle, role });
    }
    Ok(out)
}

fn invitees_value(ps: &[Invitee]) -> Value {
    Value::Array(
        ps.iter()
            .map(|p| {
                let mut o = Object::new();
                o.insert("handle", p.handle.as_str().into());
                o.insert("role", p.role.as_str().into());
                Value::Object(o)
            })
            .collect(),
    )
}

pub(super) fn put_opt(o: &mut Object, k: &str, v: Option<Value>) {
    if let Some(v) = v {
        o.insert(k, v);
    }
}

pub(super) fn opt_s(s: &Option<String>) -> Option<Value> {
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
        // SEAL-1, SEAL-2: a payload object with a `sealed` member is in the sealed form, which
        // only the types relays never read may take.
        if crate::seal::Sealed::is_sealed_value(v) {
            if !crate::seal::sealable(ty) {
                return Err(SchemaError::invalid(
                    "payload.sealed",
                    format!("a {ty} payload cannot be sealed: relays read it (SEAL-2)"),
                ));
            }
            return crate::seal::Sealed::from_payload(v).map(Payload::Sealed);
        }
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
            MessageType::Call => {
                let topic = f.req_str("topic")?;
                check_text("payload.topic", topic, NOTE_CHARS_MAX)?;
                Payload::Call {
                    topic: topic.to_owned(),
                    mode: f.req_word("mode", ConvMode::WORDS)?,
                    participants: invitees(&mut f, "participants")?,
                    turns: f.opt_int("turns", 1, CONV_TURNS_MAX)?,
                    expires: f.opt_int("expires", 0, crate::json::INT_ABS_MAX)?,
                }
            }
            MessageType::ConvAction => {
                let action = f.req_word("action", ConvActionKind::WORDS)?;
                let reason = opt_note(&mut f, "reason")?;
                let participants = if f.opt("participants").is_some() {
                    Some(invitees(&mut f, "participants")?)
                } else {
                    None
                };
                let invite = action == ConvActionKind::Invite;
                if invite != participants.is_some() {
                    return Err(if invite {
                        SchemaError::MissingField {
                            path: "payload.participants".into(),
                        }
                    } else {
                        SchemaError::invalid(
                            "payload.participants",
                            "only an invite names participants",
                        )
                    });
                }
                if reason.is_some()
                    && matches!(action, ConvActionKind::Accept | ConvActionKind::Invite)
                {
                    return Err(SchemaError::invalid(
                        "payload.reason",
                        "accept and invite carry no reason",
                    ));
                }
                Payload::ConvAction {
                    action,
                    reason,
                    participants,
                }
            }
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
            Payload::Call {
                topic,
                mode,
                participants,
                turns,
                expires,
            } => {
                o.insert("topic", Value::String(topic.clone()));
                o.insert("mode", mode.as_str().into());
                o.insert("participants", invitees_value(participants));
                put_opt(&mut o, "turns", turns.map(Value::Int));
                put_opt(&mut o, "expires", expires.map(Value::Int));
            }
            Payload::ConvAction {
                action,
                reason,
                participants,
            } => {
                o.insert("action", action.as_str().into());
                put_opt(&mut o, "reason", opt_s(reason));
                put_opt(
                    &mut o,
                    "participants",
                    participants.as_deref().map(invitees_value),
                );
            }
            Payload::Extension(obj) => return Value::Object(obj.clone()),
            Payload::Sealed(s) => return s.to_payload_value(),
        }
        Value::Object(o)
    }
}
