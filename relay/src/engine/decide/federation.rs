//! Federation decisions (SPEC.md section 16): peers recorded and removed (with the caps on what
//! strangers may add, FED-15), the envelopes of a transfer in order (FED-9), a peer's delivery
//! notices (FED-11), what a peer answered for each envelope sent, and dead letters (FED-10).

use super::{receipt, receipt_with, Ctx, Decision, Outcome};
use crate::engine::error::ApiError;
use crate::engine::events::{Event, PeerStatus};
use crate::engine::policy::FederationPolicy;
use crate::engine::state::State;
use formica_protocol::envelope::{DeliveryState, MessageId, Payload, VerifiedEnvelope};
use formica_protocol::keylog::KeyLog;
use formica_protocol::{ErrorCode, Handle, Object, PublicKey, RelayHost, Value};
use std::collections::HashSet;

/// One envelope of a transfer (FED-9), decided against the state that includes the events of
/// the envelopes before it: once an envelope from a sender is refused with a retryable error,
/// the later envelopes from that sender in the same transfer (`held`) are refused with
/// `unavailable` instead of being stored ahead of it.
///
/// `fetched` is the sender's key log when it was not cached and was fetched for this envelope:
/// it is stored with the envelope if the envelope is accepted, and not at all otherwise, so
/// that refused envelopes make this relay store nothing (FED-8).
pub fn transfer_item(
    st: &State,
    ctx: &Ctx<'_>,
    held: &mut HashSet<Handle>,
    env: VerifiedEnvelope,
    fetched: Option<KeyLog>,
    origin: &RelayHost,
) -> Decision {
    let from = env.envelope().from.clone();
    if held.contains(&from) {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("an earlier envelope from {from} in this transfer must be retried first"),
        )
        .with("retry_after_s", Value::Int(1)));
    }
    let d = super::ingest::envelope(st, ctx, env, Some(origin), fetched.as_ref()).and_then(
        |(events, outcome)| match fetched {
            // The log goes in first, so that the state holds it when the envelope is applied.
            Some(log) if !st.remote_logs.contains_key(log.handle()) => {
                let (mut all, _) = super::keylog::remote(st, ctx, log.entries().to_vec())?;
                all.extend(events);
                Ok((all, outcome))
            }
            _ => Ok((events, outcome)),
        },
    );
    if let Err(e) = &d {
        if e.code.retry() != formica_protocol::error::Retry::No {
            held.insert(from);
        }
    }
    d
}

/// Records a peer (handshake, approval). A stranger's handshake (`stranger`) that would add a
/// new peer is held to the caps here, where no other handshake can race it.
pub(super) fn peer_set(
    st: &State,
    ctx: &Ctx<'_>,
    host: RelayHost,
    key: PublicKey,
    status: PeerStatus,
    stranger: bool,
) -> Decision {
    if stranger && !st.peers.contains_key(&host) {
        peer_caps(st, &ctx.policy.federation, status)?;
    }
    Ok((
        vec![Event::PeerSet {
            at: ctx.now,
            host: host.clone(),
            key,
            status,
        }],
        Outcome::Done(peer_value(&host, &key, status)),
    ))
}

/// The operator removes a peer.
pub(super) fn peer_remove(st: &State, ctx: &Ctx<'_>, host: RelayHost) -> Decision {
    if !st.peers.contains_key(&host) {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("{host} is not a peer"),
        ));
    }
    Ok((
        vec![Event::PeerRemoved { at: ctx.now, host }],
        Outcome::Done(Value::Null),
    ))
}

/// What a peer answered for each envelope of a transfer: accepted ones leave the queue; a
/// refusal that cannot change dead-letters at once (FED-10); others stay queued for a retry.
pub(super) fn transfer_results(
    st: &State,
    ctx: &Ctx<'_>,
    peer: RelayHost,
    results: Vec<(MessageId, Result<(), ErrorCode>)>,
) -> Decision {
    let mut events = Vec::new();
    for (id, r) in results {
        if !queued(st, &peer, &id) {
            continue;
        }
        match r {
            Ok(()) => events.push(Event::Transferred {
                at: ctx.now,
                peer: peer.clone(),
                id,
            }),
            // FED-10: a refusal that cannot change dead-letters at once.
            Err(code) if code.retry() == formica_protocol::error::Retry::No => {
                dead_letter(st, ctx, &peer, id, code.as_str(), &mut events)?
            }
            Err(_) => {}
        }
    }
    Ok((events, Outcome::Done(Value::Null)))
}

/// The forwarding worker gave up on a queued envelope (too many attempts).
pub(super) fn dead_letter_command(
    st: &State,
    ctx: &Ctx<'_>,
    peer: RelayHost,
    id: MessageId,
    reason: String,
) -> Decision {
    let mut events = Vec::new();
    if queued(st, &peer, &id) {
        dead_letter(st, ctx, &peer, id, &reason, &mut events)?;
    }
    Ok((events, Outcome::Done(Value::Null)))
}

/// FED-15: the caps on new peers that strangers' handshakes may add, for a peer that would get
/// `status`. The handshake handler asks before it fetches anything; the writer decides.
pub fn peer_caps(st: &State, fed: &FederationPolicy, status: PeerStatus) -> Result<(), ApiError> {
    let full = |what: String| Err(ApiError::new(ErrorCode::PeerUnknown, what));
    if status == PeerStatus::Pending {
        let pending = st
            .peers
            .values()
            .filter(|p| p.status == PeerStatus::Pending)
            .count();
        if pending >= fed.pending_peers_max {
            return full(format!(
                "this relay already has {} peering requests awaiting its operator's approval (federation.pending_peers_max); ask the operator",
                fed.pending_peers_max
            ));
        }
    } else if fed.peering == "open" {
        let unlisted = st
            .peers
            .keys()
            .filter(|h| !fed.allowlist.iter().any(|l| l == h.as_str()))
            .count();
        if unlisted >= fed.open_peers_max {
            return full(format!(
                "this relay already has {} peers (federation.open_peers_max); ask its operator",
                fed.open_peers_max
            ));
        }
    }
    Ok(())
}

/// The peer as shown to the operator.
pub fn peer_value(host: &RelayHost, key: &PublicKey, status: PeerStatus) -> Value {
    let mut o = Object::new();
    o.insert("host", host.as_str().into());
    o.insert("key", key.to_hex().into());
    o.insert("status", status.as_str().into());
    Value::Object(o)
}

fn queued(st: &State, peer: &RelayHost, id: &MessageId) -> bool {
    st.db
        .get(
            crate::store::Table::OutboundIds,
            &crate::engine::state::codec::outbound_id_key(peer, id),
        )
        .is_some()
}

/// True if `events` already hold a terminal receipt for (`id`, `recipient`).
fn settled_in(events: &[Event], id: &MessageId, recipient: &Handle) -> bool {
    events.iter().any(|e| match e {
        Event::Envelope { envelope, .. } => matches!(
            &envelope.envelope().payload,
            Payload::Receipt { msg, recipient: r, status, .. } if msg == id && r == recipient && status.is_terminal()
        ),
        _ => false,
    })
}

/// FED-10: gives up forwarding `id` to `peer`; the sender gets a dead_lettered receipt for
/// each recipient homed there whose delivery is not settled.
pub(super) fn dead_letter(
    st: &State,
    ctx: &Ctx<'_>,
    peer: &RelayHost,
    id: MessageId,
    reason: &str,
    events: &mut Vec<Event>,
) -> Result<(), ApiError> {
    events.push(Event::DeadLettered {
        at: ctx.now,
        peer: peer.clone(),
        id,
        reason: reason.to_owned(),
    });
    if let Some(m) = st.message(&id) {
        if st.agents.contains_key(&m.sender) {
            let all = m.via.as_ref() == Some(peer);
            for r in m
                .recipients
                .iter()
                .filter(|r| (all || r.handle.host() == peer) && !r.state.is_terminal())
                // The same decision may already have settled it (a deadline in the same tick):
                // one delivery gets one terminal receipt (DELIV-2, RCPT-2).
                .filter(|r| !settled_in(events, &id, &r.handle))
                .collect::<Vec<_>>()
            {
                let rc = receipt_with(
                    st,
                    ctx,
                    id,
                    &m.sender,
                    &r.handle,
                    DeliveryState::DeadLettered,
                    None,
                    Some(reason.to_owned()),
                )?;
                events.push(Event::Envelope {
                    at: ctx.now,
                    envelope: rc,
                });
            }
        }
    }
    Ok(())
}

/// FED-11: a peer's delivery notice (a receipt signed by its relay key, verified by the caller)
/// moves the delivery to one of its agents to `delivered`, and the sender gets this relay's
/// `delivered` receipt if it asked for an ack.
pub(super) fn remote_delivered(
    st: &State,
    ctx: &Ctx<'_>,
    v: &VerifiedEnvelope,
    origin: &RelayHost,
) -> Decision {
    let id = v.id();
    let env = v.envelope();
    let Payload::Receipt {
        msg,
        recipient,
        status: DeliveryState::Delivered,
        ..
    } = &env.payload
    else {
        return Err(ApiError::new(
            ErrorCode::TypeReserved,
            "a relay forwards only delivery notices (receipts with status delivered)",
        ));
    };
    if recipient.host() != origin {
        return Err(ApiError::new(
            ErrorCode::OriginMismatch,
            format!("{recipient} is not homed on {origin}"),
        ));
    }
    let m = st
        .message(msg)
        .filter(|m| st.agents.contains_key(&m.sender))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("no message {msg} sent from here"),
            )
        })?;
    let r = m
        .recipients
        .iter()
        .find(|r| &r.handle == recipient)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("{recipient} is not a recipient of {msg}"),
            )
        })?;
    let mut events = vec![Event::RemoteDelivered {
        at: ctx.now,
        id,
        msg: *msg,
        recipient: recipient.clone(),
    }];
    if m.ack_by.is_some() && matches!(r.state, DeliveryState::Accepted | DeliveryState::Forwarded) {
        let rc = receipt(
            st,
            ctx,
            *msg,
            &m.sender,
            recipient,
            DeliveryState::Delivered,
            None,
        )?;
        events.push(Event::Envelope {
            at: ctx.now,
            envelope: rc,
        });
    }
    Ok((events, Outcome::Accepted { id, conv: None }))
}
