//! Live calls and the open-conversation limit (CONVO-7, CONVO-5, CONVO-6, CONVO-11): an invitee
//! whose status in force is `busy` is declined by the relay at once (the event `declined` with
//! reason `busy` right after the call or invite), async calls are not; a live invitation rings
//! out to `missed` after `conversations.ring_ms` (when the relay publishes a short one) and can
//! still be accepted; async ones never ring out; an agent joined in
//! `conversations.open_max` open conversations may not call again (`too_many_conversations`).

use super::conv_kit::*;
use super::presence_kit::{heartbeat, set_obj, status};
use super::*;
use crate::case::{case, Env};

/// Longest `conversations.ring_ms` the ring-out case waits for.
const RING_WAIT_MS_MAX: i64 = 10_000;
/// Largest `conversations.open_max` the limit case fills.
const OPEN_MAX_FILLED: i64 = 48;

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("conv.busy", &["CONVO-7", "CONVO-2", "CONVO-4", "PRES-2"], "a live call to an agent whose signed status in force is busy is followed at once by the event `declined` (reason busy) for it, which then may not accept; the same for an invite; an async call to it is not declined", busy).codes(&[E::ActionNotAllowed]),
        case("conv.ring-out", &["CONVO-7", "CONVO-2", "CONVO-4", "CONVO-11"], "a live invitation not answered within conversations.ring_ms becomes missed (an event entry), the conversation stays open, and a missed invitee can still accept; an async invitation never rings out", ring_out),
        case("conv.open-max", &["CONVO-5", "CONVO-6", "CONVO-11"], "an agent joined in conversations.open_max open conversations is refused a new call and an accept with too_many_conversations; once one of them is closed it may accept (and is then at the limit again)", open_max).codes(&[E::TooManyConversations]),
    ]
}

fn busy(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let x = trio(t, "cvb")?;
    let d = t.register("cvbd")?;
    t.grant(&d, &x.a.handle, "message")?;
    // b says it is busy (PRES-2) and is connected (PRES-1).
    set_obj(t, &x.b, &status(t, &x.b, "busy"))?;
    heartbeat(t, &x.b)?;
    set_obj(t, &d, &status(t, &d, "busy"))?;
    heartbeat(t, &d)?;
    let c = call(t, &x.a, &[&x.b.handle, &x.c.handle], "live");
    send_at(t, &c, &c.id, 1)?;
    // c's invitation may ring out (conversations.ring_ms) while the case runs: a `missed`
    // event for c may follow the decline, so the counts below allow it.
    let es = entries(t, &x.a, &c.id)?;
    ensure!(
        (2..=3).contains(&es.len()),
        "a live call to a busy agent has {} entries, expected the call, then `declined` busy (CONVO-7)",
        es.len()
    );
    expect_event_at(&es, 2, "declined", Some(&x.b.handle), Some("busy"))?;
    expect_part(t, &x.a, &c.id, &x.b.handle, "declined", Some("busy"))?;
    at_step(
        "the busy invitee's accept",
        refuse_conv(
            t,
            &act(t, &x.b, &c.id, &x.a.handle, "accept"),
            ErrorCode::ActionNotAllowed,
            None,
        )
        .map(|_| ()),
    )?;
    // The busy invitee reads up to the event that declined it (CONVO-10).
    let eb = entries(t, &x.b, &c.id)?;
    ensure!(
        eb.len() == 2,
        "the invitee declined for busy reads {} entries, expected 2 (CONVO-10)",
        eb.len()
    );
    // An invite in a live conversation is declined the same way, in the invite's append.
    send_conv(t, &act(t, &x.c, &c.id, &x.a.handle, "accept"), Some(&c.id))?;
    let inv = invite(t, &x.a, &c.id, &[(&d.handle, "member")]);
    let seq = send_conv(t, &inv, Some(&c.id))?;
    let es = entries(t, &x.a, &c.id)?;
    expect_env_at(&es, seq, &inv)?;
    expect_event_at(&es, seq + 1, "declined", Some(&d.handle), Some("busy"))?;
    // Async invitations are meant to be answered later: no decline.
    let c2 = call(t, &x.a, &[&x.b.handle], "async");
    send_at(t, &c2, &c2.id, 1)?;
    let es = entries(t, &x.a, &c2.id)?;
    ensure!(es.len() == 1, "an async call to a busy agent has {} entries, expected 1: async invitations are not declined for busy (CONVO-7)", es.len());
    expect_part(t, &x.a, &c2.id, &x.b.handle, "ringing", None)?;
    send_at(t, &act(t, &x.b, &c2.id, &x.a.handle, "accept"), &c2.id, 2)
}

fn ring_out(e: &Env<'_>) -> R {
    let t = e.t;
    let l = lim(t)?;
    if l.ring_ms > RING_WAIT_MS_MAX {
        skip!("conversations.ring_ms is {} ms: longer than the {RING_WAIT_MS_MAX} ms this case waits (run the relay with [conversations] ring_ms = 2000)", l.ring_ms);
    }
    let x = trio(t, "cvo")?;
    let live = call(t, &x.a, &[&x.b.handle, &x.c.handle], "live");
    send_at(t, &live, &live.id, 1)?;
    let quiet = call(t, &x.a, &[&x.b.handle], "async");
    send_at(t, &quiet, &quiet.id, 1)?;
    let at1 = entries(t, &x.a, &live.id)?
        .first()
        .and_then(|e| at(e, &["at"]))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    // Before ring_ms has passed, nothing rings out.
    let early = entries(t, &x.a, &live.id)?;
    if t.now() < at1 + l.ring_ms - 200 {
        ensure!(
            early.len() == 1,
            "{} entries before ring_ms had passed, expected 1 (CONVO-7)",
            early.len()
        );
    }
    let within = u64::try_from(l.ring_ms).unwrap_or(0) + t.deadline_lag_ms();
    let es = wait_entries(
        t,
        &x.a,
        &live.id,
        within,
        "both invitations ringing out",
        |es| es.len() >= 3,
    )?;
    ensure!(
        es.len() == 3,
        "after ring_ms the live call has {} entries, expected 3 (two `missed` events)",
        es.len()
    );
    let mut missed: Vec<String> = Vec::new();
    for ent in &es[1..] {
        let Some((kind, h, _)) = entry_event(ent) else {
            fail!(
                "entry {} is not an event after the ring-out: {}",
                entry_seq(ent),
                crate::http::quote(&canon::canonicalize(ent))
            );
        };
        ensure!(
            kind == "missed",
            "entry {} is the event {kind:?}, expected `missed` (CONVO-7)",
            entry_seq(ent)
        );
        let at_ms = at(ent, &["at"]).and_then(Value::as_i64).unwrap_or(0);
        ensure!(at_ms >= at1 + l.ring_ms, "the `missed` event is at {at_ms}, before ring_ms ({}) had passed since the call's entry at {at1} (CONVO-7)", l.ring_ms);
        missed.push(h);
    }
    missed.sort();
    let mut want = vec![
        x.b.handle.as_str().to_owned(),
        x.c.handle.as_str().to_owned(),
    ];
    want.sort();
    ensure!(
        missed == want,
        "the `missed` events name {missed:?}, expected {want:?} (CONVO-7)"
    );
    let sum = expect_part(t, &x.a, &live.id, &x.b.handle, "missed", None)?;
    expect_state(&sum, "ringing", None)?;
    // A missed invitation can still be accepted while the conversation is open (CONVO-2).
    send_at(
        t,
        &act(t, &x.b, &live.id, &x.a.handle, "accept"),
        &live.id,
        4,
    )?;
    expect_state(
        &expect_part(t, &x.a, &live.id, &x.b.handle, "joined", None)?,
        "active",
        None,
    )?;
    // The async invitation is still ringing.
    let es = entries(t, &x.a, &quiet.id)?;
    ensure!(es.len() == 1, "an async call has {} entries after ring_ms, expected 1: async invitations never ring out (CONVO-7)", es.len());
    expect_part(t, &x.a, &quiet.id, &x.b.handle, "ringing", None).map(|_| ())
}

fn open_max(e: &Env<'_>) -> R {
    let t = e.t;
    let l = lim(t)?;
    let per_key = t.published.tier0().rate_per_min;
    if l.open_max > OPEN_MAX_FILLED || l.open_max > per_key {
        skip!("conversations.open_max is {} (tier 0 rate_per_min {per_key}): filling it takes more calls than this case makes in a minute (at most {OPEN_MAX_FILLED})", l.open_max);
    }
    let a = t.register("cvma")?;
    let b = t.register("cvmb")?;
    t.grant(&b, &a.handle, "message")?;
    t.grant(&a, &b.handle, "message")?;
    // b calls a first: a's accept of it comes when a is at the limit.
    let waiting = call(t, &b, &[&a.handle], "async");
    send_at(t, &waiting, &waiting.id, 1)?;
    let mut first = String::new();
    for k in 0..l.open_max {
        let c = call(t, &a, &[&b.handle], "async");
        at_step(
            &format!("call {} of conversations.open_max {}", k + 1, l.open_max),
            send_patiently(t, &c, &c.id, 1),
        )?;
        if k == 0 {
            first = c.id.clone();
        }
    }
    let over = post_patiently(t, &call(t, &a, &[&b.handle], "async"))?;
    at_step(
        "a call past open_max",
        over.expect_error(ErrorCode::TooManyConversations)
            .map(|_| ()),
    )?;
    let accept = act(t, &a, &waiting.id, &b.handle, "accept");
    let r = post_patiently(t, &accept)?;
    at_step(
        "an accept past open_max (it counts like a call, CONVO-6)",
        r.expect_error(ErrorCode::TooManyConversations).map(|_| ()),
    )?;
    send_patiently(t, &act(t, &a, &first, &a.handle, "close"), &first, 2)?;
    at_step(
        "the accept after one of the open conversations closed",
        send_patiently(t, &accept, &waiting.id, 2),
    )?;
    let again = call(t, &a, &[&b.handle], "async");
    at_step(
        "a call at open_max again",
        post_patiently(t, &again)?
            .expect_error(ErrorCode::TooManyConversations)
            .map(|_| ()),
    )
}
