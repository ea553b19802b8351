//! Posting signed envelopes: `send`, `contact-request`, `vouch` and `report`.

use super::sealing::{sealer_for, Sealer, Sealing, Unsealed};
use super::{obj, ok_obj, opt, parse_handle, session, Ctx, Session};
use crate::client::Answer;
use crate::offline::{now_ms, parse_doc, read_input};
use crate::output::{fmt_ms, Exit, Fail, Out};
use formica_protocol::envelope::{ReportReason, VouchAction, ACK_WINDOW_MS_MAX};
use formica_protocol::{
    ContactLevel, Envelope, ErrorCode, Handle, MessageId, MessageType, Payload, SignedEnvelope,
    Value,
};
use std::time::Duration;

/// Signs an envelope from this session's identity, checks it as a relay would, and posts it.
/// Returns the id and `accepted` or `duplicate`.
pub fn post_envelope(
    s: &Session,
    to: Vec<Handle>,
    msg_type: MessageType,
    payload: Payload,
    corr: Option<String>,
    ack_by: Option<i64>,
) -> Result<(MessageId, String), Fail> {
    let sealing = Err(Unsealed::Type);
    post_envelope_sealed(s, to, msg_type, payload, corr, ack_by, &sealing).map(|(id, r, _)| (id, r))
}

/// [`post_envelope`], sealing the payload with `sealer` when it is one and every recipient has
/// a current encryption key at the envelope's time (see `sealing`).
pub fn post_envelope_sealed(
    s: &Session,
    to: Vec<Handle>,
    msg_type: MessageType,
    payload: Payload,
    corr: Option<String>,
    ack_by: Option<i64>,
    sealer: &Result<Sealer, Unsealed>,
) -> Result<(MessageId, String, Sealing), Fail> {
    let env = Envelope {
        msg_type,
        type_version: 1,
        from: s.me.clone(),
        key: s.id.key.public().key_id(),
        to,
        ts: now_ms(),
        corr,
        ack_by,
        conv: None,
        payload,
    };
    let (id, a, sealing) = post_sealed(s, env, sealer)?;
    Ok((
        id,
        a.str("result").unwrap_or("accepted").to_owned(),
        sealing,
    ))
}

/// Seals `env`'s payload (see [`post_envelope_sealed`]), then [`post_built`].
pub fn post_sealed(
    s: &Session,
    mut env: Envelope,
    sealer: &Result<Sealer, Unsealed>,
) -> Result<(MessageId, Answer, Sealing), Fail> {
    let sealing = match sealer {
        Ok(sealer) => sealer.seal(&mut env, s.desc.envelope_limits().payload_bytes_max)?,
        Err(why) => Sealing::Plain(why.clone()),
    };
    let (id, a) = post_built(s, env).map_err(|f| match (&sealing, f.code) {
        // The relay's limit (of the sender's tier) that keytool could not know beforehand.
        (Sealing::Sealed { .. }, Some(ErrorCode::PayloadTooLarge)) if f.hint.is_none() => f.hint(
            "sealing makes a payload larger (padding, base64, a key per recipient): --plain sends it unsealed (relays can read it), or send less",
        ),
        _ => f,
    })?;
    Ok((id, a, sealing))
}

/// Signs `env` with this session's key, checks it as the relay would, and posts it: its id
/// and the relay's answer (whose `id` is checked to be the envelope's).
pub fn post_built(s: &Session, env: Envelope) -> Result<(MessageId, Answer), Fail> {
    let local = |e: formica_protocol::EnvelopeError| Fail::code(e.code(), e.to_string());
    let signed = env.sign(&s.id.key).map_err(local)?;
    // Parse our own envelope under the relay's published limits: a mistake is reported here,
    // with its protocol code, instead of by the relay.
    let checked = SignedEnvelope::from_value(signed.value().clone(), &s.desc.envelope_limits())
        .map_err(local)?;
    let a = s
        .client
        .call("POST", "/v1/envelopes", Some(&checked.wire_bytes()), None)?;
    if a.str("id") != Some(checked.id().to_hex().as_str()) {
        return Err(Fail::new(
            Exit::Failure,
            format!(
                "the relay answered with id {:?}, but the envelope's id is {}",
                a.str("id"),
                checked.id()
            ),
        ));
    }
    Ok((checked.id(), a))
}

pub(super) fn emit_posted(
    out: &Out,
    what: &str,
    id: &MessageId,
    result: &str,
    extra: Vec<(&str, Value)>,
    note: &str,
) {
    let text = match result {
        "duplicate" => format!(
            "{what} {id}: duplicate (the relay already had it; nothing was sent twice){note}"
        ),
        "accepted" if what == "contact_request" => {
            format!("{what} {id}: accepted by your relay{note}")
        }
        r => format!("{what} {id}: {r}{note}"),
    };
    let mut m = vec![
        ("id", Value::from(id.to_hex())),
        ("result", result.into()),
        ("type", what.into()),
    ];
    m.extend(extra);
    out.emit(&text, ok_obj(m));
}

/// What `send` sends.
#[derive(Debug)]
pub struct SendArgs {
    pub to: String,
    /// Without `--payload`: the text, then more recipients. With it: more recipients.
    pub rest: Vec<String>,
    pub msg_type: Option<String>,
    pub payload: Option<std::path::PathBuf>,
    /// The payload itself (the MCP server), instead of `payload`'s file.
    pub payload_doc: Option<Value>,
    pub ack_deadline: Option<Duration>,
    pub corr: Option<String>,
    /// Fail with `deadline_after_parent` instead of shortening the ack deadline to the one of
    /// the request this one answers (ACK-5).
    pub no_shorten: bool,
    /// How long to wait for the remote relays' outcome of remote recipients (zero: not at all).
    pub wait: Duration,
    /// Send unsealed even when every recipient publishes an encryption key.
    pub plain: bool,
    /// Fail instead of sending unsealed when a recipient publishes no encryption key.
    pub sealed: bool,
}

/// First pause between `send`'s reads of the delivery state while it waits for remote relays;
/// doubled after each read up to [`WAIT_POLL_MAX`] (each read is a signed request and spends
/// a request nonce of the agent's).
const WAIT_POLL: Duration = Duration::from_millis(200);
const WAIT_POLL_MAX: Duration = Duration::from_secs(1);

/// The delivery of one remote recipient, as `send` last saw it.
#[derive(Debug)]
struct RemoteOutcome {
    handle: Handle,
    status: String,
    reason: Option<String>,
}

/// Waits, at most `wait`, until no delivery to a recipient on another relay is still
/// `accepted` (queued here): it is then `forwarded`/`delivered` (the remote relay took it) or
/// `dead_lettered` (it refused it). Reading the state can fail; the send has succeeded anyway,
/// so the wait just ends then (`None`).
fn wait_remote(
    s: &Session,
    id: &MessageId,
    remote: &[Handle],
    wait: Duration,
) -> Option<Vec<RemoteOutcome>> {
    let end = std::time::Instant::now() + wait;
    let mut pause = WAIT_POLL;
    loop {
        let a = s
            .client
            .get(&format!("/v1/messages/{id}"), Some(&s.auth))
            .ok()?;
        let seen: Vec<RemoteOutcome> = a
            .list("recipients")
            .iter()
            .filter_map(|r| {
                let o = r.as_object()?;
                let handle = Handle::parse(o.get("handle")?.as_str()?).ok()?;
                remote.contains(&handle).then(|| RemoteOutcome {
                    handle,
                    status: o
                        .get("status")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_owned(),
                    reason: o.get("reason").and_then(Value::as_str).map(str::to_owned),
                })
            })
            .collect();
        if seen.iter().all(|r| r.status != "accepted") || std::time::Instant::now() >= end {
            return Some(seen);
        }
        std::thread::sleep(pause.min(end.saturating_duration_since(std::time::Instant::now())));
        pause = (pause * 2).min(WAIT_POLL_MAX);
    }
}

/// The failure for a remote refusal: the refusal's protocol code, and what to do about it.
/// `all` is every remote recipient's outcome: the others may have been delivered, and a
/// caller must not send them the message again.
fn refused(id: &MessageId, r: &RemoteOutcome, all: &[RemoteOutcome]) -> Fail {
    let why = r.reason.as_deref().unwrap_or("no reason given");
    let others: Vec<String> = all
        .iter()
        .filter(|o| o.handle != r.handle)
        .map(|o| format!("{} {}", o.handle, o.status))
        .collect();
    let msg = format!(
        "message {id}: accepted by your relay, but {} refused it for {}: {why}{}",
        r.handle.host(),
        r.handle,
        if others.is_empty() {
            String::new()
        } else {
            format!(
                " (not a failure for the others, do not send it to them again: {})",
                others.join(", ")
            )
        }
    );
    let f = match r.reason.as_deref().and_then(ErrorCode::from_wire) {
        Some(code) => Fail::code(code, msg),
        None => Fail::new(Exit::Failure, msg),
    }
    .detail("id", id.to_hex().into())
    .detail("recipient", r.handle.as_str().into())
    .detail("remote", outcomes_value(all));
    match r.reason.as_deref() {
        Some("not_contact") => f.hint(format!(
            "{} accepts messages only from its contacts: ask first with `keytool contact-request {} --level message`; no notice comes back when they answer, so send again later (it fails with not_contact until they accept)",
            r.handle, r.handle
        )),
        Some("unknown_recipient") => f.hint(format!("{} has no agent {}; check the handle", r.handle.host(), r.handle)),
        _ => f.hint(format!("keytool status {id} shows each recipient's delivery")),
    }
}

/// `keytool send @nova "text" [@more...]`.
pub fn send(ctx: &Ctx<'_>, identity_name: &str, a: SendArgs) -> Result<(), Fail> {
    let mut to_args = vec![a.to];
    let type_name = a.msg_type.as_deref().unwrap_or("message");
    let msg_type = MessageType::parse(type_name).ok_or_else(|| {
        Fail::code(
            ErrorCode::UnknownType,
            format!("unknown message type {type_name:?}"),
        )
        .hint("a registered type (message, task_request, task_result, ...) or an x- extension type")
    })?;
    // With a payload, the words after the first recipient are recipients: one that is not a
    // handle is most likely text given as well.
    if a.payload.is_some() || a.payload_doc.is_some() {
        if let Some(t) = a.rest.iter().find(|w| !w.starts_with('@')) {
            return Err(Fail::new(
                Exit::Input,
                format!("{t:?} is not a handle: with a payload, give no text (the payload is the message)"),
            )
            .hint("keytool send @them \"text\" for a message, or keytool send @them --type T --payload FILE"));
        }
    }
    let payload_v = match (a.payload_doc, a.payload) {
        (Some(doc), _) => {
            to_args.extend(a.rest);
            doc
        }
        (None, Some(file)) => {
            to_args.extend(a.rest);
            parse_doc(&read_input(Some(&file))?)?
        }
        (None, None) if msg_type == MessageType::Message => {
            let mut rest = a.rest.into_iter();
            let text = rest.next().ok_or_else(|| {
                Fail::new(Exit::Input, "no text to send").hint("keytool send @them \"text\"")
            })?;
            to_args.extend(rest);
            obj(vec![("text", text.into())])
        }
        (None, None) => {
            return Err(Fail::new(
                Exit::Input,
                format!("--type {type_name} needs --payload FILE (or - for standard input)"),
            ))
        }
    };
    let payload = Payload::from_value(&msg_type, &payload_v)
        .map_err(|e| Fail::code(e.code(), e.to_string()))?;
    let s = session(ctx, identity_name)?;
    let to = to_args
        .iter()
        .map(|h| parse_handle(h, &s.me))
        .collect::<Result<Vec<_>, _>>()?;
    let ts_now = now_ms();
    let ack_by = match a.ack_deadline {
        None => None,
        Some(d) => {
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            if ms == 0 || ms > ACK_WINDOW_MS_MAX {
                return Err(Fail::code(
                    ErrorCode::InvalidField,
                    "--ack-deadline is more than 0 and at most 7 days",
                ));
            }
            Some(ts_now + ms)
        }
    };
    let sealer = sealer_for(&s, ctx.home, &msg_type, &to, a.plain, a.sealed)?;
    let mut ack_by = ack_by;
    let mut shortened_from = None;
    let posted = match post_envelope_sealed(
        &s,
        to.clone(),
        msg_type.clone(),
        payload.clone(),
        a.corr.clone(),
        ack_by,
        &sealer,
    ) {
        Err(f) if f.code == Some(ErrorCode::DeadlineAfterParent) && !a.no_shorten => {
            // ACK-5: a request answering a request gets at most the parent's deadline. Sign it
            // again with that deadline, unless it has passed (then no deadline is valid).
            let max = f
                .details
                .iter()
                .find(|(k, _)| *k == "ack_by_max")
                .and_then(|(_, v)| v.as_i64());
            match max {
                Some(max) if max > now_ms() => {
                    shortened_from = ack_by;
                    ack_by = Some(max);
                    post_envelope_sealed(
                        &s,
                        to.clone(),
                        msg_type.clone(),
                        payload,
                        a.corr,
                        ack_by,
                        &sealer,
                    )
                }
                Some(max) => Err(f.hint(format!(
                    "the request it answers had to be acked by {}, which has passed; send it without --ack-deadline",
                    fmt_ms(max)
                ))),
                None => Err(f),
            }
        }
        r => r,
    };
    let (id, result, sealing) = posted?;
    let mut note = sealing.note();
    note.push_str(
        &ack_by
            .map(|t| format!("\n  ack requested by {}", fmt_ms(t)))
            .unwrap_or_default(),
    );
    if shortened_from.is_some() {
        note.push_str(
            "\n  (shortened to the deadline of the request it answers; --no-shorten fails instead)",
        );
    }
    let to_v = Value::Array(to.iter().map(|h| h.as_str().into()).collect());
    let mut extra = vec![("to", to_v), ("ack_by", opt(ack_by.map(Value::Int)))];
    extra.extend(sealing.members());
    if let Some(old) = shortened_from {
        extra.push(("ack_by_asked", Value::Int(old)));
    }
    let remote: Vec<Handle> = to
        .iter()
        .filter(|h| h.host() != s.me.host())
        .cloned()
        .collect();
    if !remote.is_empty() && !a.wait.is_zero() {
        let seen = wait_remote(&s, &id, &remote, a.wait);
        if let Some(all) = &seen {
            if let Some(r) = all.iter().find(|r| r.status == "dead_lettered") {
                return Err(refused(&id, r, all));
            }
        }
        let pending: Vec<String> = seen
            .iter()
            .flatten()
            .filter(|r| r.status == "accepted")
            .map(|r| r.handle.to_string())
            .collect();
        match &seen {
            None => note.push_str(&format!(
                "\n  could not read the delivery state; keytool status {id} shows it"
            )),
            Some(_) if pending.is_empty() => note.push_str(&format!(
                "\n  taken by the remote relay{} ({})",
                if remote.len() > 1 { "s" } else { "" },
                remote.iter().map(|h| h.host().to_string()).collect::<Vec<_>>().join(", ")
            )),
            Some(_) => note.push_str(&format!(
                "\n  still queued for {} after {} ms (its relay has not answered yet); keytool status {id} shows the outcome",
                pending.join(", "),
                a.wait.as_millis()
            )),
        }
        if let Some(seen) = seen {
            extra.push(("remote", outcomes_value(&seen)));
        }
    }
    emit_posted(ctx.out, msg_type.as_str(), &id, &result, extra, &note);
    Ok(())
}

fn outcomes_value(all: &[RemoteOutcome]) -> Value {
    Value::Array(
        all.iter()
            .map(|r| {
                super::obj(vec![
                    ("handle", r.handle.as_str().into()),
                    ("status", r.status.as_str().into()),
                    ("reason", opt(r.reason.clone())),
                ])
            })
            .collect(),
    )
}

/// `keytool contact-request @x --level L`.
pub fn contact_request(
    ctx: &Ctx<'_>,
    identity_name: &str,
    to: &str,
    level: ContactLevel,
    note: Option<String>,
) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let to = parse_handle(to, &s.me)?;
    let (id, result) = post_envelope(
        &s,
        vec![to.clone()],
        MessageType::ContactRequest,
        Payload::ContactRequest { level, note },
        None,
        None,
    )
    .map_err(|f| {
        if f.code == Some(ErrorCode::RateLimited) && f.message.contains("already pending") {
            // Waiting does not help: the request stays pending until they answer it.
            f.hint(format!(
                "your earlier request to {to} waits for their answer (no notice comes back when they answer); if they have accepted, sending to them works already"
            ))
        } else {
            f
        }
    })?;
    let note = format!(
        "\n  asked {to} for level {level}; they have not answered yet: they see it in `keytool requests list` and accept or reject it; no notice comes back either way (SPEC CONTACT-8): once they accept, sending to them works"
    );
    emit_posted(
        ctx.out,
        "contact_request",
        &id,
        &result,
        vec![("to", to.as_str().into()), ("level", level.as_str().into())],
        &note,
    );
    Ok(())
}

/// `keytool vouch @x [--revoke]`: to `@relay@<subject host>`.
pub fn vouch(ctx: &Ctx<'_>, identity_name: &str, subject: &str, revoke: bool) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let subject = parse_handle(subject, &s.me)?;
    let action = if revoke {
        VouchAction::Revoke
    } else {
        VouchAction::Grant
    };
    let to = Handle::relay(subject.host());
    let (id, result) = post_envelope(
        &s,
        vec![to],
        MessageType::Vouch,
        Payload::Vouch {
            subject: subject.clone(),
            action,
        },
        None,
        None,
    )?;
    let note = format!("\n  {action} vouch for {subject}");
    emit_posted(
        ctx.out,
        "vouch",
        &id,
        &result,
        vec![
            ("subject", subject.as_str().into()),
            ("action", action.as_str().into()),
        ],
        &note,
    );
    Ok(())
}

/// `keytool report @x --reason R`: to `@relay@<subject host>`.
pub fn report(
    ctx: &Ctx<'_>,
    identity_name: &str,
    subject: &str,
    reason: ReportReason,
    msg: Option<&str>,
    note: Option<String>,
) -> Result<(), Fail> {
    let msg = msg
        .map(|m| {
            MessageId::parse_hex(m).ok_or_else(|| {
                Fail::code(
                    ErrorCode::InvalidField,
                    format!("--msg {m:?} is not a message id (64 hex)"),
                )
            })
        })
        .transpose()?;
    let s = session(ctx, identity_name)?;
    let subject = parse_handle(subject, &s.me)?;
    let to = Handle::relay(subject.host());
    let payload = Payload::Report {
        subject: subject.clone(),
        reason,
        msg,
        note,
    };
    let (id, result) = post_envelope(&s, vec![to], MessageType::Report, payload, None, None)?;
    let note = format!("\n  reported {subject} for {reason}");
    emit_posted(
        ctx.out,
        "report",
        &id,
        &result,
        vec![
            ("subject", subject.as_str().into()),
            ("reason", reason.as_str().into()),
        ],
        &note,
    );
    Ok(())
}
