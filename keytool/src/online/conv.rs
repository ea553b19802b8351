//! Conversations (SPEC.md section 19): `call`, `calls`, `accept`, `decline`, and `conv list`,
//! `send`, `leave`, `close`, `invite`. Reading entries (`conv history`, `conv watch`) and the
//! hash-chain check are in `conv_read`; summaries and listings in `conv_list`; the arguments in
//! `conv_args`.
//!
//! Every conversation lives on its home relay, the caller's. A participant homed on another
//! relay reads and posts through its own relay, which keeps a replica (SPEC.md 19.6); keytool
//! talks only to the identity's relay either way. An action (`accept`, `decline`, `leave`,
//! `close`) goes to the owner, whom keytool reads from the conversation's summary (API-24).

use super::conv_args::{CallSpec, ConvCmd, ConvTop, PostOpts};
use super::conv_list::{calls, conv_list, summary, who};
use super::sealing::{sealer_for, Sealer, Sealing, Unsealed};
use super::send::post_sealed;
use super::{clean, obj, ok_obj, opt, parse_handle, session, Ctx, Session};
use crate::offline::now_ms;
use crate::output::{fmt_ms, Exit, Fail};
use formica_protocol::envelope::{ConvActionKind, ConvRole, Invitee, ACK_WINDOW_MS_MAX};
use formica_protocol::{Envelope, ErrorCode, Handle, MessageId, MessageType, Payload, Value};
use std::time::Duration;

/// What the relay answered to a conversation envelope (`conv`, `seq`; absent for a duplicate
/// on a relay that does not repeat them).
struct Posted {
    id: MessageId,
    result: String,
    conv: Option<String>,
    seq: Option<i64>,
    sealing: Sealing,
}

impl Posted {
    fn members(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("id", self.id.to_hex().into()),
            ("result", self.result.as_str().into()),
            ("conv", opt(self.conv.clone())),
            ("seq", opt(self.seq.map(Value::Int))),
        ]
    }
    fn at(&self) -> String {
        self.seq
            .map(|n| format!(" (entry #{n})"))
            .unwrap_or_default()
    }
}

/// Not sealed: actions and calls are read by relays (SEAL-2).
const UNSEALABLE: Result<Sealer, Unsealed> = Err(Unsealed::Type);

/// Signs and posts a conversation envelope from this session's identity, sealed with `sealer`
/// when it is one (see `sealing`).
#[allow(clippy::too_many_arguments)]
fn post(
    s: &Session,
    msg_type: MessageType,
    to: Vec<Handle>,
    conv: Option<MessageId>,
    payload: Payload,
    ts: i64,
    corr: Option<String>,
    ack_by: Option<i64>,
    sealer: &Result<Sealer, Unsealed>,
) -> Result<Posted, Fail> {
    let env = Envelope {
        msg_type,
        type_version: 1,
        from: s.me.clone(),
        key: s.id.key.public().key_id(),
        to,
        ts,
        corr,
        ack_by,
        conv,
        payload,
    };
    let (id, a, sealing) = post_sealed(s, env, sealer).map_err(|f| no_conversations(s, f))?;
    // The conversation is the call's own id for a call, else the one the envelope names.
    let want = conv.unwrap_or(id).to_hex();
    if a.str("conv").is_some_and(|c| c != want) {
        return Err(Fail::new(
            Exit::Failure,
            format!(
                "the relay answered with conversation {:?} for an envelope of conversation {want}",
                a.str("conv")
            ),
        ));
    }
    Ok(Posted {
        id,
        result: a.str("result").unwrap_or("accepted").to_owned(),
        conv: a.str("conv").map(str::to_owned),
        seq: a.body.as_object().and_then(|o| o.get("seq")?.as_i64()),
        sealing,
    })
}

/// A relay without conversations refuses them with `tier_forbidden` (CONVO-11): say that, not
/// the tier hint.
fn no_conversations(s: &Session, f: Fail) -> Fail {
    let has = s
        .desc
        .value
        .as_object()
        .is_some_and(|o| o.get("conversations").is_some());
    if f.code == Some(ErrorCode::TierForbidden) && !has {
        let msg = format!(
            "{} (the relay at {} does not announce conversations: its descriptor has no `conversations` member)",
            f.message,
            s.client.base()
        );
        let mut g = Fail::code(ErrorCode::TierForbidden, msg);
        g.details = f.details;
        return g.hint("use a relay that implements SPEC.md section 19");
    }
    f
}

/// An invitee of a call or an invite: not the caller, not twice. Its relay is the relay's to
/// judge: this relay's agents, or a peer's (CONVO-3; `unknown_recipient` otherwise).
fn invitees(s: &Session, members: &[String], observers: &[String]) -> Result<Vec<Invitee>, Fail> {
    let mut out: Vec<Invitee> = Vec::new();
    let all = members
        .iter()
        .map(|h| (h, ConvRole::Member))
        .chain(observers.iter().map(|h| (h, ConvRole::Observer)));
    for (text, role) in all {
        let handle = parse_handle(text, &s.me)?;
        if handle == s.me {
            return Err(Fail::code(
                ErrorCode::InvalidField,
                "you are the conversation's owner: do not invite yourself",
            ));
        }
        if out.iter().any(|p| p.handle == handle) {
            return Err(Fail::code(
                ErrorCode::InvalidField,
                format!("{handle} is named twice"),
            ));
        }
        out.push(Invitee { handle, role });
    }
    if out.is_empty() {
        return Err(Fail::new(Exit::Input, "name at least one agent to call")
            .hint("keytool call @them --topic \"what about\""));
    }
    Ok(out)
}

fn invitees_value(ps: &[Invitee]) -> Value {
    Value::Array(
        ps.iter()
            .map(|p| {
                obj(vec![
                    ("handle", p.handle.as_str().into()),
                    ("role", p.role.as_str().into()),
                ])
            })
            .collect(),
    )
}

fn invitees_text(ps: &[Invitee], me: &Handle) -> String {
    ps.iter()
        .map(|p| match p.role {
            ConvRole::Observer => format!("{} (observer)", who(&p.handle, me)),
            _ => who(&p.handle, me),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// CONVO-5 against the relay's published limits (CONVO-11), where it publishes them.
fn check_limits(s: &Session, n: usize, spec: &CallSpec) -> Result<(), Fail> {
    let lim = |k: &str| s.desc.int(&["conversations", k]);
    let too = |what: String| Fail::code(ErrorCode::InvalidField, what);
    if let Some(max) = lim("participants_max") {
        if (n as i64) + 1 > max {
            return Err(too(format!(
                "{} participants with you; the relay allows at most {max}",
                n + 1
            )));
        }
    }
    if let (Some(t), Some(max)) = (spec.turns, lim("turns_max")) {
        if t > max {
            return Err(too(format!("--turns is at most {max} on this relay")));
        }
    }
    if let (Some(e), Some(max)) = (spec.expires, lim("ttl_max_ms")) {
        if ms(e) > max {
            return Err(too(format!(
                "--expires is at most {} s on this relay",
                max / 1000
            )));
        }
    }
    Ok(())
}

/// `keytool call @a [@b ...] --topic T [--mode M] [--turns N] [--expires D] [--observer @x]`.
pub fn call(ctx: &Ctx<'_>, identity: &str, spec: &CallSpec) -> Result<(), Fail> {
    let s = session(ctx, identity)?;
    let ps = invitees(&s, &spec.members, &spec.observers)?;
    check_limits(&s, ps.len(), spec)?;
    let ts = now_ms();
    let expires = spec.expires.map(|d| ts.saturating_add(ms(d)));
    let payload = Payload::Call {
        topic: spec.topic.clone(),
        mode: spec.mode,
        participants: ps.clone(),
        turns: spec.turns,
        expires,
    };
    let to = ps.iter().map(|p| p.handle.clone()).collect();
    let p = post(
        &s,
        MessageType::Call,
        to,
        None,
        payload,
        ts,
        None,
        None,
        &UNSEALABLE,
    )?;
    let text = format!(
        "call {}: {}\n  conversation {}{}: {:?}, {}, calling {}\n  they answer with keytool accept|decline {}; follow it: keytool conv watch {}",
        p.id,
        p.result,
        p.conv.as_deref().unwrap_or(&p.id.to_hex()),
        p.at(),
        clean(&spec.topic, 120),
        spec.mode,
        invitees_text(&ps, &s.me),
        p.id,
        p.id
    );
    let mut m = vec![("type", "call".into())];
    m.extend(p.members());
    m.extend([
        ("topic", spec.topic.as_str().into()),
        ("mode", spec.mode.as_str().into()),
        ("participants", invitees_value(&ps)),
        ("turns", opt(spec.turns.map(Value::Int))),
        ("expires", opt(expires.map(Value::Int))),
    ]);
    ctx.out.emit(&text, ok_obj(m));
    Ok(())
}

/// Runs one of the top-level conversation commands.
pub fn conversations(ctx: &Ctx<'_>, cmd: ConvTop) -> Result<(), Fail> {
    match cmd {
        ConvTop::Call { spec, id } => call(ctx, &id.identity, &spec),
        ConvTop::Calls { id } => calls(ctx, &id.identity),
        ConvTop::Accept { conv, id } => act(ctx, &id.identity, &conv, ConvActionKind::Accept, None),
        ConvTop::Decline { conv, reason, id } => {
            act(ctx, &id.identity, &conv, ConvActionKind::Decline, reason)
        }
        ConvTop::Conv(c) => conv_cmd(ctx, c),
    }
}

fn conv_cmd(ctx: &Ctx<'_>, cmd: ConvCmd) -> Result<(), Fail> {
    match cmd {
        ConvCmd::List { all, id } => conv_list(ctx, &id.identity, all),
        ConvCmd::Send {
            conv,
            text,
            post,
            id,
        } => conv_send(ctx, &id.identity, &conv, text, &post),
        ConvCmd::Watch {
            conv,
            after,
            count,
            timeout,
            id,
        } => super::conv_read::watch(ctx, &id.identity, &conv, after, count, timeout),
        ConvCmd::History {
            conv,
            after,
            limit,
            id,
        } => super::conv_read::history(ctx, &id.identity, &conv, after, limit),
        ConvCmd::Leave { conv, reason, id } => {
            act(ctx, &id.identity, &conv, ConvActionKind::Leave, reason)
        }
        ConvCmd::Close { conv, reason, id } => {
            act(ctx, &id.identity, &conv, ConvActionKind::Close, reason)
        }
        ConvCmd::Invite {
            conv,
            handles,
            observer,
            id,
        } => invite(ctx, &id.identity, &conv, &handles, observer),
    }
}

/// `accept`, `decline`, `conv leave`, `conv close`: a `conv_action` to the owner.
pub fn act(
    ctx: &Ctx<'_>,
    identity: &str,
    conv: &MessageId,
    action: ConvActionKind,
    reason: Option<String>,
) -> Result<(), Fail> {
    let s = session(ctx, identity)?;
    let before = summary(&s, conv)?;
    let owner = before
        .owner()
        .cloned()
        .ok_or_else(|| Fail::new(Exit::Failure, "the relay's summary names no participant"))?;
    let payload = Payload::ConvAction {
        action,
        reason: reason.clone(),
        participants: None,
    };
    let p = post(
        &s,
        MessageType::ConvAction,
        vec![owner],
        Some(*conv),
        payload,
        now_ms(),
        None,
        None,
        &UNSEALABLE,
    )?;
    emit_action(ctx, &s, conv, action, &p, reason.as_deref(), Vec::new());
    Ok(())
}

/// How long an action in a replica waits to come back from the home relay before it is
/// printed (the answer then says it has not come back yet).
const BACK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Prints an accepted action, with the conversation's state read after it.
fn emit_action(
    ctx: &Ctx<'_>,
    s: &Session,
    conv: &MessageId,
    action: ConvActionKind,
    p: &Posted,
    reason: Option<&str>,
    mut extra: Vec<(&'static str, Value)>,
) {
    let mut after = summary(s, conv).ok();
    // On a relay that keeps a replica, the home relay numbers the action (no seq in the
    // answer) and the replica shows it when the entry comes back, usually within
    // milliseconds: wait for it a little, so that an accept is followed by posts that the
    // replica already allows (SPEC.md CONVO-16).
    if p.seq.is_none() && p.result == "accepted" {
        let want = match action {
            ConvActionKind::Accept => Some("joined"),
            ConvActionKind::Decline => Some("declined"),
            ConvActionKind::Leave => Some("left"),
            _ => None,
        };
        let end = std::time::Instant::now() + BACK_WAIT;
        while let Some(w) = want {
            let mine = after
                .as_ref()
                .and_then(|a| a.part(&s.me))
                .map(|x| x.state.clone());
            if mine.as_deref() == Some(w) || std::time::Instant::now() >= end {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            after = summary(s, conv).ok().or(after);
        }
    }
    let (state, why) = match &after {
        Some(a) => (Some(a.state.clone()), a.reason.clone()),
        None => (None, None),
    };
    let done = match action {
        ConvActionKind::Accept => "joined",
        ConvActionKind::Decline => "declined",
        ConvActionKind::Leave => "left",
        ConvActionKind::Close => "closed",
        ConvActionKind::Invite => "invited to",
    };
    let mut text = format!(
        "{} {}: {}\n  {done} conversation {conv}{}",
        action,
        p.id,
        p.result,
        p.at()
    );
    if let Some(r) = reason {
        text.push_str(&format!(": {}", clean(r, 120)));
    }
    match (state.as_deref(), why.as_deref()) {
        (Some("closed"), w) => text.push_str(&format!(
            "\n  the conversation is closed ({})",
            clean(w.unwrap_or("?"), 40)
        )),
        (Some(st), _) if action == ConvActionKind::Accept => text.push_str(&format!(
            "\n  it is {st}: post with keytool conv send {conv} \"text\"; follow it with keytool conv watch {conv}"
        )),
        _ => {}
    }
    let mut m = vec![
        ("type", "conv_action".into()),
        ("action", action.as_str().into()),
    ];
    m.extend(p.members());
    m.append(&mut extra);
    m.extend([("state", opt(state)), ("reason", opt(why))]);
    ctx.out.emit(&text, ok_obj(m));
}

/// `keytool conv invite ID @x [@y ...] [--observer]`.
pub fn invite(
    ctx: &Ctx<'_>,
    identity: &str,
    conv: &MessageId,
    handles: &[String],
    observer: bool,
) -> Result<(), Fail> {
    let s = session(ctx, identity)?;
    let ps = if observer {
        invitees(&s, &[], handles)?
    } else {
        invitees(&s, handles, &[])?
    };
    let to = ps.iter().map(|p| p.handle.clone()).collect();
    let payload = Payload::ConvAction {
        action: ConvActionKind::Invite,
        reason: None,
        participants: Some(ps.clone()),
    };
    let p = post(
        &s,
        MessageType::ConvAction,
        to,
        Some(*conv),
        payload,
        now_ms(),
        None,
        None,
        &UNSEALABLE,
    )?;
    let extra = vec![("participants", invitees_value(&ps))];
    emit_action(ctx, &s, conv, ConvActionKind::Invite, &p, None, extra);
    Ok(())
}

/// `keytool conv send ID "text" [--to @x ...] [--ack-deadline D] [--corr C]`.
pub fn conv_send(
    ctx: &Ctx<'_>,
    identity: &str,
    conv: &MessageId,
    text: String,
    opts: &PostOpts,
) -> Result<(), Fail> {
    let ts = now_ms();
    let ack_by = match opts.ack_deadline {
        None => None,
        Some(d) if d.is_zero() || ms(d) > ACK_WINDOW_MS_MAX => {
            return Err(Fail::code(
                ErrorCode::InvalidField,
                "--ack-deadline is more than 0 and at most 7 days",
            ))
        }
        Some(d) => Some(ts + ms(d)),
    };
    let s = session(ctx, identity)?;
    let sum = summary(&s, conv)?;
    if sum.closed() {
        let reason = sum.reason.clone().unwrap_or_else(|| "?".into());
        let code = if reason == "turn_limit" {
            ErrorCode::TurnLimitReached
        } else {
            ErrorCode::ConversationClosed
        };
        return Err(
            Fail::code(code, format!("conversation {conv} is closed ({reason})"))
                .detail("reason", reason.into())
                .hint("start a new one with keytool call"),
        );
    }
    if let Some(p) = sum.part(&s.me) {
        if p.state == "ringing" || p.state == "missed" {
            return Err(Fail::code(
                ErrorCode::NotParticipant,
                format!(
                    "you have not joined conversation {conv} yet (you are {})",
                    p.state
                ),
            )
            .hint(format!("accept the call first: keytool accept {conv}")));
        }
    }
    let to: Vec<Handle> = if opts.to.is_empty() {
        sum.participants
            .iter()
            .filter(|p| p.state == "joined" && p.handle != s.me)
            .map(|p| p.handle.clone())
            .collect()
    } else {
        opts.to
            .iter()
            .map(|h| parse_handle(h, &s.me))
            .collect::<Result<_, _>>()?
    };
    if to.is_empty() {
        return Err(Fail::new(
            Exit::Conflict,
            format!("nobody else has joined conversation {conv} yet"),
        )
        .hint(format!(
            "wait until someone accepts: keytool conv watch {conv} shows it"
        )));
    }
    let payload = Payload::Message { text, data: None };
    let sealer = sealer_for(
        &s,
        ctx.home,
        &MessageType::Message,
        &to,
        opts.plain,
        opts.sealed,
    )?;
    let p = post(
        &s,
        MessageType::Message,
        to.clone(),
        Some(*conv),
        payload,
        ts,
        opts.corr.clone(),
        ack_by,
        &sealer,
    )?;
    let names: Vec<String> = to.iter().map(|h| who(h, &s.me)).collect();
    let mut line = format!(
        "message {}: {}\n  conversation {conv}{}, to {}",
        p.id,
        p.result,
        p.at(),
        names.join(", ")
    );
    line.push_str(&p.sealing.note());
    if let Some(t) = ack_by {
        line.push_str(&format!("\n  ack requested by {}", fmt_ms(t)));
    }
    let mut m = vec![("type", "message".into())];
    m.extend(p.members());
    m.extend([
        (
            "to",
            Value::Array(to.iter().map(|h| h.as_str().into()).collect()),
        ),
        ("ack_by", opt(ack_by.map(Value::Int))),
    ]);
    m.extend(p.sealing.members());
    ctx.out.emit(&line, ok_obj(m));
    Ok(())
}
