//! Conversations across relays (SPEC.md CONVO-12..CONVO-17), both ends: a batch of entries a
//! peer that homes a conversation sent to this relay's replica (CONVO-13, CONVO-14), and what a
//! peer answered for a batch this relay sent (CONVO-15).

use super::conversations::{events_of, then};
use super::{Ctx, Decision, Outcome};
use crate::engine::error::ApiError;
use crate::engine::events::Event;
use crate::engine::state::State;
use formica_protocol::conversation::replica::{Answer, Batch};
use formica_protocol::conversation::{ConvEvent, EntryBody, PartState, FIRST_PREV};
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
    let (mut seq, mut head) = match held {
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
    let answer = |seq: u64, head: [u8; 32], declined: Vec<(Handle, String)>| {
        Outcome::Done(
            Answer {
                conv: b.conv,
                seq,
                head,
                declined,
            }
            .to_value(),
        )
    };
    // Entries held already must be the same ones (a home relay that sends another entry at a
    // seq held is equivocating: refused, nothing changes).
    let mut fresh = Vec::with_capacity(b.entries.len());
    for e in b.entries {
        if e.seq <= seq {
            let same = st
                .conv_entries(&b.conv, e.seq - 1, 1)
                .first()
                .is_some_and(|w| *w == e.wire());
            if !same {
                tracing::warn!(conv = %b.conv, seq = e.seq, peer = %origin, "a conversation's home relay sent an entry that differs from the one held (kept: the one held)");
                return Err(refuse(
                    ErrorCode::ConversationFork,
                    format!(
                        "entry {} of conversation {} differs from the one this relay holds",
                        e.seq, b.conv
                    ),
                ));
            }
            continue;
        }
        fresh.push(e);
    }
    let follows = fresh
        .first()
        .is_some_and(|e| e.seq == seq + 1 && e.prev == head);
    if !follows {
        // Nothing new, or a gap: the answer says where to resume.
        return Ok((vec![], answer(seq, head, vec![])));
    }
    let mut c = match held {
        Some(r) => r.conv.clone(),
        None => {
            let EntryBody::Envelope(se) = &fresh[0].body else {
                return Err(refuse(ErrorCode::InvalidField, "entry 1 is a call".into()));
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
            let Some(c) = formica_protocol::conversation::Conversation::open(se, fresh[0].at)
            else {
                return Err(refuse(ErrorCode::InvalidField, "entry 1 is a call".into()));
            };
            seq = 1;
            head = c.head;
            c
        }
    };
    let mut declined = Vec::new();
    for (i, e) in fresh.iter().enumerate() {
        if i > 0 || held.is_some() {
            if e.seq != c.seq + 1 || e.prev != c.head {
                return Err(refuse(
                    ErrorCode::InvalidField,
                    "entries do not follow".into(),
                ));
            }
            c.apply(e);
            seq = c.seq;
            head = c.head;
        }
        let EntryBody::Envelope(se) = &e.body else {
            continue;
        };
        let env = se.envelope();
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
    let mut events = Vec::new();
    for log in fetched {
        if !st.remote_logs.contains_key(log.handle()) {
            let (ev, _) = super::keylog::remote(st, ctx, log.entries().to_vec())?;
            events.extend(ev);
        }
    }
    events.push(Event::ConvReplica {
        at: ctx.now,
        home: origin,
        conv: b.conv,
        turns: b.turns,
        expires: b.expires,
        entries: fresh,
        declined: declined.clone(),
    });
    Ok((events, answer(seq, head, declined)))
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
