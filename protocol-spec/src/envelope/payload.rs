//! Payloads, typed by the envelope's type (TYPE-4..11): reading one from its JSON object under
//! the closed-schema rule, and writing it back.

use super::types::{
    AckStatus, ContactLevel, DeliveryState, MessageType, ReportReason, TaskStatus, VouchAction,
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
    /// The payload of an `x-` type: any object, not interpreted.
    Extension(Object),
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
