//! Conversations across relays (SPEC.md CONVO-12..CONVO-17), both ends: a batch of entries a
//! peer that homes a conversation sent to this relay's replica (CONVO-13, CONVO-14), and what a
//! peer answered for a batch this relay sent (CONVO-15).

use super::conversations::{events_of, then};
use super::{Ctx, Decision, Outcome};
use crate::engine::error::ApiError;
use crate::engine::events::Event;
use crate::engine::state::{ConvRecord, State};
use formica_protocol::conversation::replica::{Answer, Batch};
use formica_protocol::conversation::{
    ConvEvent, ConvLimits, Conversation, EntryBody, PartState, FIRST_PREV,
};
use formica_protocol::envelope::{ConvActionKind, ConvMode, MessageId, Payload};
use formica_protocol::keylog::KeyLog;
use formica_protocol::presence::Availability;
use formica_protocol::{ContactLevel, ErrorCode, Handle, RelayHost};

/// The one reason a replica relay gives when it declines for an invitee for anything but
/// `busy` (not registered, no contact grant): the other participants learn no more (CONVO-14).
pub const UNAVAILABLE: &str = "unavailable";

/// CONVO-14: whether this relay declines the invitation `inviter` sent to `h`, homed here, and
/// why.
fn decline_reason(
    st: &State,
    now: i64,
    mode: ConvMode,
    inviter: &Handle,
    h: &Handle,
) -> Option<&'static str> {
    let Some(a) = st.agents.get(h) else {
        return Some(UNAVAILABLE);
    };
    let granted = a
        .contacts
        .get(inviter)
        .is_some_and(|(level, _)| *level >= ContactLevel::Message);
    if !granted {
        return Some(UNAVAILABLE);
    }
    let busy = crate::engine::presence::in_force(st, h, now)
        .is_some_and(|s| s.status().status == Availability::Busy);
    (mode == ConvMode::Live && busy).then_some("busy")
}

fn refuse(code: ErrorCode, msg: String) -> ApiError {
    ApiError::new(code, msg)
}

/// A batch from `origin` for this relay's replica (CONVO-13). `fetched` are the key logs of
/// remote senders fetched to verify the envelopes (stored only with an accepted batch, FED-8).
pub(super) fn batch(
    st: &State,
    ctx: &Ctx<'_>,
    origin: RelayHost,
    b: Batch,
    fetched: Vec<KeyLog>,
) -> Decision {
    let pol = &ctx.policy.conversations;
    let held = st.conv(&b.conv);
    let (seq, head) = match held {
        Some(r) => match &r.home {
            None => {
                return Err(refuse(
                    ErrorCode::WrongRelay,
                    format!("conversation {} is homed on this relay", b.conv),
                ))
            }
            Some(h) if h != &origin => {
                return Err(refuse(
                    ErrorCode::OriginMismatch,
                    format!("conversation {} is homed on {h}, not on {origin}", b.conv),
                ))
            }
            Some(_) => (r.conv.seq, r.conv.head),
        },
        None => (0, FIRST_PREV),
    };
    // Entries held already must be the same ones (a home relay that sends another entry at a
    // seq held, or one that does not link to the entry held before it, equivocates: refused,
    // nothing changes).
    let fork = |seq: u64| {
        tracing::warn!(conv = %b.conv, seq, peer = %origin, "a conversation's home relay sent an entry that conflicts with the ones held (kept: the ones held)");
        refuse(
            ErrorCode::ConversationFork,
            format!(
                "entry {seq} of conversation {} conflicts with the entries this relay holds",
                b.conv
            ),
        )
    };
    let mut fresh = Vec::with_capacity(b.entries.len());
    for (i, e) in b.entries.into_iter().enumerate() {
        if e.seq <= seq {
            let same = st
                .conv_entries(&b.conv, e.seq - 1, 1)
                .first()
                .is_some_and(|w| *w == e.wire());
            if !same {
                return Err(fork(e.seq));
            }
            continue;
        }
        fresh.push((i, e));
    }
    match fresh.first() {
        Some((_, e)) if e.seq == seq + 1 && e.prev != head => return Err(fork(e.seq)),
        Some((_, e)) if e.seq == seq + 1 => {}
        // Nothing new, or a gap: the answer says where to resume.
        _ => {
            let again = held.map(repeated_declines).unwrap_or_default();
            return Ok((vec![], answer(b.conv, seq, head, again)));
        }
    }
    let (mut c, limits) = match held {
        Some(r) => (r.conv.clone(), r.limits(pol.limits())),
        None => {
            let EntryBody::Envelope(se) = &fresh[0].1.body else {
                return Err(refuse(ErrorCode::InvalidField, "entry 1 is a call".into())
                    .with("field", "entries[0]".into()));
            };
            if se.envelope().from.host() != &origin {
                return Err(refuse(
                    ErrorCode::OriginMismatch,
                    format!("the caller {} is not homed on {origin}", se.envelope().from),
                ));
            }
            if !b.to.iter().any(|h| st.agents.contains_key(h)) {
                return Err(refuse(
                    ErrorCode::WrongRelay,
                    "no participant named in `to` is registered on this relay".into(),
                ));
            }
            if b.turns > pol.turns_max {
                return Err(refuse(
                    ErrorCode::InvalidField,
                    format!(
                        "a turn limit of {}; this relay keeps replicas of at most {} turns (conversations.turns_max)",
                        b.turns, pol.turns_max
                    ),
                )
                .with("field", "turns".into()));
            }
            if st.replicas() >= pol.remote_max || st.replicas_of(&origin) >= pol.remote_per_peer_max
            {
                return Err(refuse(
                    ErrorCode::TooManyConversations,
                    format!(
                        "this relay holds as many replicas of conversations homed elsewhere as it allows (conversations.remote_max {}, remote_per_peer_max {})",
                        pol.remote_max, pol.remote_per_peer_max
                    ),
                ));
            }
            let Some(c) = Conversation::open(se, fresh[0].1.at) else {
                return Err(refuse(ErrorCode::InvalidField, "entry 1 is a call".into())
                    .with("field", "entries[0]".into()));
            };
            let limits = ConvLimits {
                participants_max: pol.participants_max,
                turns_max: b.turns,
                ttl_max_ms: b.expires.saturating_sub(c.created),
            };
            Conversation::check_call(se.envelope(), &limits).map_err(|e| entry_error(0, e))?;
            (c, limits)
        }
    };
    let limits = ConvLimits {
        participants_max: pol.participants_max,
        ..limits
    };
    let mut declined = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (k, (i, e)) in fresh.iter().enumerate() {
        if k > 0 || held.is_some() {
            c.check_next(e, &limits).map_err(|x| entry_error(*i, x))?;
            c.apply(e);
        }
        let EntryBody::Envelope(se) = &e.body else {
            continue;
        };
        // An envelope is in a conversation once: a home relay cannot deliver it twice here.
        let env = se.envelope();
        let again = !ids.insert(se.id())
            || if st.is_local(&env.from) {
                st.message(&se.id())
                    .is_some_and(|m| matches!(m.conv, Some((_, Some(_)))))
            } else {
                st.seen(&se.id(), env.ts)
            };
        if again {
            return Err(refuse(
                ErrorCode::InvalidField,
                format!("envelope {} is already in a conversation here", se.id()),
            )
            .with("field", format!("entries[{i}].envelope").into()));
        }
        let invitation = matches!(
            env.payload,
            Payload::Call { .. }
                | Payload::ConvAction {
                    action: ConvActionKind::Invite,
                    ..
                }
        );
        if !invitation {
            continue;
        }
        for h in env.to.iter().filter(|h| h.host() == &st.host) {
            if let Some(why) = decline_reason(st, ctx.now, c.mode, &env.from, h) {
                declined.push((h.clone(), why.to_owned()));
            }
        }
    }
    let mut answered = declined.clone();
    if let Some(r) = held {
        for (h, why) in repeated_declines(r) {
            if !answered.iter().any(|(x, _)| *x == h) {
                answered.push((h, why));
            }
        }
    }
    // Only those still waiting for an answer in the replica as it now stands.
    answered.retain(|(h, _)| {
        c.participant(h)
            .is_some_and(|p| matches!(p.state, PartState::Ringing | PartState::Missed))
    });
    let mut events = Vec::new();
    for log in fetched {
        if !st.remote_logs.contains_key(log.handle()) {
            let (ev, _) = super::keylog::remote(st, ctx, log.entries().to_vec())?;
            events.extend(ev);
        }
    }
    let (last, last_head) = (c.seq, c.head);
    events.push(Event::ConvReplica {
        at: ctx.now,
        home: origin,
        conv: b.conv,
        turns: b.turns,
        expires: b.expires,
        entries: fresh.into_iter().map(|(_, e)| e).collect(),
        declined,
    });
    Ok((events, answer(b.conv, last, last_head, answered)))
}

fn answer(conv: MessageId, seq: u64, head: [u8; 32], declined: Vec<(Handle, String)>) -> Outcome {
    Outcome::Done(
        Answer {
            conv,
            seq,
            head,
            declined,
        }
        .to_value(),
    )
}

/// A refusal of entry `i` of a batch, with its path.
fn entry_error(i: usize, e: formica_protocol::conversation::ConvError) -> ApiError {
    let field = match e.field {
        Some(f) => format!("entries[{i}].{f}"),
        None => format!("entries[{i}]"),
    };
    ApiError::new(e.code, e.message).with("field", field.into())
}

/// The declines this relay made earlier for invitees that still ring in the replica: repeated
/// in every answer, so that a lost answer loses none (CONVO-14).
fn repeated_declines(r: &ConvRecord) -> Vec<(Handle, String)> {
    r.declined_here
        .iter()
        .filter(|(h, _)| {
            r.conv
                .participant(h)
                .is_some_and(|p| matches!(p.state, PartState::Ringing | PartState::Missed))
        })
        .map(|(h, why)| (h.clone(), why.clone()))
        .collect()
}

/// The participants of `id` homed on `peer` that may still answer an invitation.
fn ringing_on(st: &State, id: &MessageId, peer: &RelayHost) -> Vec<Handle> {
    st.conv(id)
        .map(|r| {
            r.conv
                .participants
                .iter()
                .filter(|p| {
                    p.handle.host() == peer
                        && matches!(p.state, PartState::Ringing | PartState::Missed)
                })
                .map(|p| p.handle.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// What `peer` answered for a batch of conversation `id` this relay sent (CONVO-15): the
/// envelopes it now holds move to `forwarded` for their recipients homed there, and the
/// invitees it declined for are declined (an event entry each). A refusal that cannot change
/// declines every invitee homed there that may still answer, with `unavailable`.
pub(super) fn replicated(
    st: &State,
    ctx: &Ctx<'_>,
    peer: RelayHost,
    id: MessageId,
    sent: Vec<(u64, MessageId)>,
    answer: Result<Answer, ErrorCode>,
) -> Decision {
    let Some(r) = st.conv(&id).filter(|r| r.home.is_none()) else {
        return Ok((vec![], Outcome::Done(formica_protocol::Value::Null)));
    };
    let mut events = Vec::new();
    let declines: Vec<(Handle, String)> = match &answer {
        Ok(a) => {
            for (_, mid) in sent.iter().filter(|(s, _)| *s <= a.seq) {
                // Only a sender's home relay keeps the delivery states that matter (FED-11).
                let moves = st.message(mid).is_some_and(|m| {
                    st.is_local(&m.sender)
                        && m.recipients.iter().any(|x| {
                            x.handle.host() == &peer
                                && x.state == formica_protocol::envelope::DeliveryState::Accepted
                        })
                });
                if moves {
                    events.push(Event::Transferred {
                        at: ctx.now,
                        peer: peer.clone(),
                        id: *mid,
                    });
                }
            }
            let ringing = ringing_on(st, &id, &peer);
            a.declined
                .iter()
                .filter(|(h, _)| ringing.contains(h))
                .map(|(h, why)| {
                    let why = if why == "busy" { "busy" } else { UNAVAILABLE };
                    (h.clone(), why.to_owned())
                })
                .collect()
        }
        Err(code) if code.retry() == formica_protocol::error::Retry::No => {
            tracing::info!(conv = %id, peer = %peer, code = %code, "a participant relay refused the conversation; its invitees are declined");
            ringing_on(st, &id, &peer)
                .into_iter()
                .map(|h| (h, UNAVAILABLE.to_owned()))
                .collect()
        }
        Err(_) => Vec::new(),
    };
    let mut c = r.conv.clone();
    let mut follow = Vec::new();
    for (h, why) in declines {
        if c.is_closed() {
            break;
        }
        let ev = ConvEvent::Declined {
            handle: h,
            reason: why,
        };
        follow.push(ev.clone());
        then(&mut c, ctx, EntryBody::Event(ev), &mut follow);
    }
    events.extend(events_of(id, ctx.now, follow));
    Ok((events, Outcome::Done(formica_protocol::Value::Null)))
}
