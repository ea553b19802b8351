//! Conversations at ingest step 10.3 (SPEC.md section 19): calls (CONVO-3, CONVO-5, CONVO-7),
//! actions (CONVO-6) and posts (CONVO-8) against the conversation's fold, and the relay's own
//! entries that follow at once (a `busy` decline, the close on the turn limit or when everyone
//! left, CONVO-9) or when a timer falls due (a live invitation rang out, the expiry; removal
//! `closed_keep_ms` after the close). Every such entry is an [`Event::Conv`] of the log, so a
//! replay never decides again.

use super::{contacts, Ctx};
use crate::engine::error::ApiError;
use crate::engine::events::{ConvChange, Event};
use crate::engine::state::State;
use formica_protocol::conversation::{ConvError, ConvEvent, Conversation, EntryBody};
use formica_protocol::envelope::{ConvActionKind, ConvMode, MessageId, Payload, SignedEnvelope};
use formica_protocol::presence::Availability;
use formica_protocol::{ErrorCode, Handle, Value};

fn api(e: ConvError) -> ApiError {
    let mut a = ApiError::new(e.code, e.message);
    if let Some(f) = e.field {
        a = a.with("field", Value::String(f));
    }
    if let Some(r) = e.reason {
        a = a.with("reason", r.as_str().into());
    }
    a
}

/// CONVO-3: every participant is an agent of this relay or of an active peer (whose relay
/// judges it when the entry arrives, CONVO-14).
fn all_reachable(st: &State, ctx: &Ctx<'_>, names: &[Handle]) -> Result<(), ApiError> {
    for h in names {
        if st.is_local(h) {
            continue;
        }
        if !ctx.policy.federation.enabled || st.active_peer(h.host()).is_none() {
            return Err(ApiError::new(
                ErrorCode::UnknownRecipient,
                format!(
                    "{h} is homed on {}, which is not an active peer of this relay",
                    h.host()
                ),
            ));
        }
    }
    Ok(())
}

/// CONVO-7: a live invitation to an agent whose signed status in force is `busy` is declined
/// for it at once.
fn busy(st: &State, now: i64, h: &Handle) -> bool {
    crate::engine::presence::in_force(st, h, now)
        .is_some_and(|s| s.status().status == Availability::Busy)
}

/// The conversation with `e` appended, and the events that follow from it at once.
pub(super) fn then(
    c: &mut Conversation,
    ctx: &Ctx<'_>,
    body: EntryBody,
    follow: &mut Vec<ConvEvent>,
) {
    let e = c.next_entry(body, ctx.now);
    c.apply(&e);
    for ev in c.follow_ups(&ctx.policy.conversations.limits()) {
        let e = c.next_entry(EntryBody::Event(ev.clone()), ctx.now);
        c.apply(&e);
        follow.push(ev);
    }
}

/// Declines the busy ones of `invited` for them (live mode), in `c`.
fn decline_busy(
    st: &State,
    ctx: &Ctx<'_>,
    c: &mut Conversation,
    invited: &[Handle],
    follow: &mut Vec<ConvEvent>,
) {
    if c.mode != ConvMode::Live {
        return;
    }
    for h in invited {
        if busy(st, ctx.now, h) && !c.is_closed() {
            let ev = ConvEvent::Declined {
                handle: h.clone(),
                reason: "busy".into(),
            };
            follow.push(ev.clone());
            then(c, ctx, EntryBody::Event(ev), follow);
        }
    }
}

pub(super) fn events_of(
    conv: MessageId,
    now: i64,
    follow: Vec<ConvEvent>,
) -> impl Iterator<Item = Event> {
    follow.into_iter().map(move |ev| Event::Conv {
        at: now,
        conv,
        change: ConvChange::Entry(ev),
    })
}

/// A call (CONVO-5): the conversation it opens is entry 1; returns its seq (1).
pub(super) fn call(
    st: &State,
    ctx: &Ctx<'_>,
    se: &SignedEnvelope,
    events: &mut Vec<Event>,
) -> Result<(MessageId, Option<u64>), ApiError> {
    let env = se.envelope();
    all_reachable(st, ctx, &env.to)?;
    let pol = &ctx.policy.conversations;
    Conversation::check_call(env, &pol.limits()).map_err(api)?;
    contacts::grant_allows(st, env)?;
    open_limit(st, ctx, &env.from)?;
    // Kept conversations (open, or closed and not yet removed) are bounded too, so that a loop
    // of calls closed at once cannot pile up records for `closed_keep_ms`.
    let kept_max = crate::engine::conversations::KEPT_PER_OPEN * ctx.policy.conversations.open_max;
    let kept = st.convs.by_agent.get(&env.from).map_or(0, |s| s.len());
    if kept >= kept_max {
        return Err(ApiError::new(
            ErrorCode::TooManyConversations,
            format!("{} takes part in {kept} conversations kept by this relay (at most {kept_max}: {} times conversations.open_max); closed ones are removed conversations.closed_keep_ms after they closed", env.from, crate::engine::conversations::KEPT_PER_OPEN),
        ));
    }
    let mut c = Conversation::open(se, ctx.now)
        .ok_or_else(|| ApiError::internal("a call that is not a call"))?;
    let mut follow = Vec::new();
    decline_busy(st, ctx, &mut c, &env.to, &mut follow);
    events.extend(events_of(c.id, ctx.now, follow));
    Ok((c.id, Some(1)))
}

fn open_limit(st: &State, ctx: &Ctx<'_>, h: &Handle) -> Result<(), ApiError> {
    let max = ctx.policy.conversations.open_max;
    if st.open_joined(h) >= max {
        return Err(ApiError::new(
            ErrorCode::TooManyConversations,
            format!("{h} already takes part in {max} open conversations (conversations.open_max); leave or close one"),
        ));
    }
    Ok(())
}

/// An action (CONVO-6) or a post (CONVO-8) of the conversation `env.conv` names; returns the
/// conversation and the entry's seq (`None` in a replica: the home relay gives it, CONVO-16).
pub(super) fn entry(
    st: &State,
    ctx: &Ctx<'_>,
    se: &SignedEnvelope,
    events: &mut Vec<Event>,
) -> Result<(MessageId, Option<u64>), ApiError> {
    let env = se.envelope();
    let id = env
        .conv
        .ok_or_else(|| ApiError::internal("a conversation envelope without conv"))?;
    let pol = &ctx.policy.conversations;
    let Some(r) = st.conv(&id) else {
        return Err(ApiError::new(
            ErrorCode::NotParticipant,
            format!("{} is not a participant of conversation {id}", env.from),
        )
        .with("field", "conv".into()));
    };
    r.conv
        .judge(env, ctx.now, &r.limits(pol.limits()))
        .map_err(api)?;
    if r.home.is_some() {
        // A replica (CONVO-16): the home relay judges again, with its rate, and sequences it.
        if matches!(
            env.payload,
            Payload::ConvAction {
                action: ConvActionKind::Accept,
                ..
            }
        ) {
            open_limit(st, ctx, &env.from)?;
        }
        return Ok((id, None));
    }
    let mut c = r.conv.clone();
    match &env.payload {
        Payload::ConvAction {
            action: ConvActionKind::Accept,
            ..
        } => open_limit(st, ctx, &env.from)?,
        Payload::ConvAction {
            action: ConvActionKind::Invite,
            ..
        } => {
            all_reachable(st, ctx, &env.to)?;
            contacts::grant_at(st, env, Some(formica_protocol::ContactLevel::Message))?;
        }
        Payload::ConvAction { .. } => {}
        _ => {
            if r.posts_since(ctx.now - 60_000) >= pol.posts_per_min {
                return Err(ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "this conversation takes {} posts per minute (conversations.posts_per_min)",
                        pol.posts_per_min
                    ),
                )
                .with("retry_after_s", Value::Int(5)));
            }
        }
    }
    let mut follow = Vec::new();
    then(&mut c, ctx, EntryBody::Envelope(se.clone()), &mut follow);
    let seq = c.seq - follow.len() as u64;
    if let Payload::ConvAction {
        action: ConvActionKind::Invite,
        ..
    } = &env.payload
    {
        decline_busy(st, ctx, &mut c, &env.to, &mut follow);
    }
    events.extend(events_of(id, ctx.now, follow));
    Ok((id, Some(seq)))
}

/// Timers (CONVO-7, CONVO-9): the events due by `ctx.now` in open conversations, at most
/// about `max`.
pub(super) fn due(st: &State, ctx: &Ctx<'_>, max: usize) -> Vec<Event> {
    let pol = &ctx.policy.conversations;
    let limits = pol.limits();
    let mut out = Vec::new();
    for id in st.convs_due(ctx.now, pol, max) {
        let Some(r) = st.conv(&id) else { continue };
        let mut c = r.conv.clone();
        let mut follow = Vec::new();
        for ev in c.due_events(ctx.now, pol.ring_ms, &limits) {
            if c.is_closed() {
                break;
            }
            follow.push(ev.clone());
            then(&mut c, ctx, EntryBody::Event(ev), &mut follow);
        }
        out.extend(events_of(id, ctx.now, follow));
    }
    out
}

/// Open conversations whose posts reached a turn limit lowered since their last post: closed
/// as after that post (the retention sweep looks, every `retention.sweep_ms`).
pub(super) fn at_lowered_limit(st: &State, ctx: &Ctx<'_>, max: usize) -> Vec<Event> {
    let limits = ctx.policy.conversations.limits();
    st.convs
        .open
        .iter()
        .filter_map(|id| st.conv(id))
        .filter(|r| r.home.is_none() && r.conv.posts >= r.conv.turn_limit(&limits))
        .take(max)
        .map(|r| Event::Conv {
            at: ctx.now,
            conv: r.conv.id,
            change: ConvChange::Entry(ConvEvent::Closed {
                reason: formica_protocol::conversation::CloseReason::TurnLimit,
            }),
        })
        .collect()
}

/// Conversations closed more than `closed_keep_ms` ago, removed (at most `max`; the retention
/// sweep calls this).
pub(super) fn removals(st: &State, ctx: &Ctx<'_>, max: usize) -> Vec<Event> {
    let keep = ctx.policy.conversations.closed_keep_ms;
    st.convs
        .map
        .iter()
        .filter(|(_, r)| {
            // A replica whose home relay stopped sending goes at its expiry + keep, by this
            // relay's clock (CONVO-17).
            // Its expiry as its home relay said, but never later than this relay's own
            // ttl_max_ms after it started the replica.
            let end = match (r.closed_at, r.home.is_some()) {
                (Some(t), _) => Some(t),
                (None, true) => Some(
                    r.conv
                        .expiry(&r.limits(ctx.policy.conversations.limits()))
                        .min(
                            r.replica_since
                                .saturating_add(ctx.policy.conversations.ttl_max_ms),
                        ),
                ),
                (None, false) => None,
            };
            end.is_some_and(|t| ctx.now > t.saturating_add(keep))
        })
        .take(max)
        .map(|(id, _)| Event::Conv {
            at: ctx.now,
            conv: *id,
            change: ConvChange::Removed,
        })
        .collect()
}
