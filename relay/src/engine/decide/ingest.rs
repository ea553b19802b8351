//! Steps 7-10 of envelope ingest (SPEC.md 15.9) against the state: dedup, the sender and its
//! key (again, since the log may have changed since the handler looked), the sender's tier and
//! the recipients, then the rules of the payload's type. Forwarded envelopes (FED-6) take the
//! same path with their origin.

use super::{contacts, conversations, delivery, federation, local_sender, Ctx, Decision, Outcome};
use crate::engine::error::ApiError;
use crate::engine::events::Event;
use crate::engine::policy::Tier;
use crate::engine::state::{Agent, State};
use formica_protocol::envelope::{Envelope, MessageType, Payload, VerifiedEnvelope, VouchAction};
use formica_protocol::keylog::KeyLog;
use formica_protocol::{ErrorCode, Handle, RelayHost, Value};

/// Steps 7-10 of the ingest pipeline (SPEC.md section 15.9) for a verified envelope; with an
/// `origin`, the same steps for an envelope that peer forwarded (FED-6). `fetched` is the
/// sender's key log when it is not cached here and was fetched for this envelope (its key is
/// checked against it; the caller stores it only if the envelope is accepted).
pub(super) fn envelope(
    st: &State,
    ctx: &Ctx<'_>,
    v: VerifiedEnvelope,
    origin: Option<&RelayHost>,
    fetched: Option<&KeyLog>,
) -> Decision {
    let id = v.id();
    let env = v.envelope();
    // 7. Dedup: an exact replay is a success that says so, and stores nothing.
    if st.seen(&id, env.ts) {
        return Ok((vec![], Outcome::Duplicate { id }));
    }
    if let (Some(origin), true) = (origin, env.from.is_relay()) {
        return federation::remote_delivered(st, ctx, &v, origin);
    }
    // 8. Sender homed here (or, forwarded, homed on the origin) with a key valid at the
    //    envelope's time (checked again here, since the log may have changed since the handler
    //    looked).
    let sender = match origin {
        None => Some(local_sender(st, env)?.0),
        Some(origin) => {
            if env.from.host() != origin {
                return Err(ApiError::new(
                    ErrorCode::OriginMismatch,
                    format!("{} is not homed on {origin}", env.from),
                ));
            }
            st.remote_logs
                .get(&env.from)
                .map(|r| &r.log)
                .or(fetched)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::UnknownKey,
                        format!("no key log for {}", env.from),
                    )
                })?
                .key_at(&env.key, env.ts)
                .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
            // CONVO-16: a conversation envelope comes to the conversation's home relay, for
            // all its recipients; a call is made at the caller's own relay, never forwarded.
            if matches!(env.payload, Payload::Call { .. }) {
                return Err(ApiError::new(
                    ErrorCode::TierForbidden,
                    "a call is accepted only from an agent homed here; it is never forwarded",
                ));
            }
            if let Some(c) = env.conv {
                if st.conv(&c).is_none_or(|r| r.home.is_some()) {
                    return Err(ApiError::new(
                        ErrorCode::WrongRelay,
                        format!("conversation {c} is not homed on this relay"),
                    )
                    .with("field", "conv".into()));
                }
            } else if !env.to.iter().any(|h| st.is_local(h)) {
                return Err(ApiError::new(
                    ErrorCode::WrongRelay,
                    "no recipient of this envelope is homed on this relay",
                ));
            }
            if matches!(env.payload, Payload::Vouch { .. } | Payload::Report { .. }) {
                return Err(ApiError::new(
                    ErrorCode::TierForbidden,
                    "vouches and reports are not accepted over federation",
                ));
            }
            None
        }
    };
    // 10. Policy. Remote senders get the tier the federation policy names.
    let tier_i = match origin {
        None => st.tier_of(&env.from, ctx.now, ctx.policy),
        Some(_) => ctx.policy.federation.remote_tier,
    };
    let tier = ctx
        .policy
        .tiers
        .get(tier_i)
        .ok_or_else(|| ApiError::internal("tier index out of range"))?;
    if !tier.may_send(&env.msg_type) {
        return Err(ApiError::new(
            ErrorCode::TierForbidden,
            format!("agents at tier {} may not send {}", tier.name, env.msg_type),
        ));
    }
    // The payload as received (its canonical form is what was signed).
    let payload_len = v.signed().payload_len();
    if payload_len > tier.payload_bytes_max {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "payload is {payload_len} bytes; tier {} allows {}",
                tier.name, tier.payload_bytes_max
            ),
        ));
    }
    if env.to.len() > tier.recipients_max {
        return Err(ApiError::new(
            ErrorCode::TooManyRecipients,
            format!(
                "{} recipients; tier {} allows {}",
                env.to.len(),
                tier.name,
                tier.recipients_max
            ),
        ));
    }
    // CONVO-16: an agent's post or action in a replica goes to the conversation's home relay
    // only, whose queue must have room (FED-16); its recipients are the roster's (CONVO-8).
    let home = env
        .conv
        .and_then(|c| st.conv(&c))
        .and_then(|r| r.home.clone())
        .filter(|_| origin.is_none());
    if let Some(home) = &home {
        if !ctx.policy.federation.enabled || st.active_peer(home).is_none() {
            return Err(ApiError::new(
                ErrorCode::PeerUnavailable,
                format!(
                    "the conversation's home relay {home} is not an active peer of this relay now"
                ),
            ));
        }
        let depth = st.queue_len(home);
        if depth >= ctx.policy.federation.queue_depth_max {
            return Err(ApiError::new(
                ErrorCode::PeerUnavailable,
                format!("{depth} envelopes already wait for {home}; nothing was accepted"),
            ));
        }
    }
    for to in env.to.iter().filter(|_| home.is_none()) {
        if to.host() != &st.host {
            // Forwarded: recipients elsewhere are their home relays' business.
            if origin.is_some() {
                continue;
            }
            // FED-13: a recipient on an active peer is judged there.
            let federates = ctx.policy.federation.enabled
                && st.active_peer(to.host()).is_some()
                && !to.is_relay()
                && !matches!(env.payload, Payload::Vouch { .. } | Payload::Report { .. });
            if !federates {
                return Err(ApiError::new(
                    ErrorCode::UnknownRecipient,
                    format!(
                        "{to} is homed on {}, which is not a peer of this relay",
                        to.host()
                    ),
                ));
            }
            // FED-16: a peer's queue holds at most queue_depth_max envelopes.
            let depth = st.queue_len(to.host());
            if depth >= ctx.policy.federation.queue_depth_max {
                return Err(ApiError::new(
                    ErrorCode::PeerUnavailable,
                    format!(
                        "{} envelopes already wait for {}; nothing was accepted",
                        depth,
                        to.host()
                    ),
                ));
            }
            continue;
        }
        if to.is_relay() {
            if !matches!(env.payload, Payload::Vouch { .. } | Payload::Report { .. }) {
                return Err(ApiError::new(
                    ErrorCode::UnknownRecipient,
                    "the relay address accepts only vouch and report",
                ));
            }
        } else if !st.agents.contains_key(to) {
            return Err(ApiError::new(
                ErrorCode::UnknownRecipient,
                format!("{to} is not registered"),
            ));
        }
    }
    let mut events = vec![Event::Envelope {
        at: ctx.now,
        envelope: v.signed().clone(),
    }];
    let mut conv = None;
    match &env.payload {
        // Section 19: a call opens a conversation, an action or a post is its next entry.
        Payload::Call { .. } => conv = Some(conversations::call(st, ctx, v.signed(), &mut events)?),
        _ if env.conv.is_some() => {
            // By type, not payload: a sealed task request (SEAL-2) is one too.
            if env.msg_type == MessageType::TaskRequest && origin.is_none() {
                within_parent_deadline(st, env)?;
            }
            conv = Some(conversations::entry(st, ctx, v.signed(), &mut events)?)
        }
        Payload::Ack { msg, status, .. } => {
            delivery::ack(st, ctx, env, id, msg, *status, &mut events)?
        }
        Payload::ContactRequest { .. } => contacts::request_allowed(st, ctx, env, sender, tier)?,
        Payload::Vouch { subject, action } => vouch_allowed(st, ctx, env, subject, *action, tier)?,
        Payload::Report { subject, .. } => report_allowed(st, ctx, subject, sender, tier)?,
        _ if env.msg_type == MessageType::TaskRequest => {
            if origin.is_none() {
                within_parent_deadline(st, env)?;
            }
            contacts::grant_allows(st, env)?
        }
        _ => contacts::grant_allows(st, env)?,
    }
    // Per-recipient cap: unread items are never evicted, new ones are refused. A conversation
    // action is exempt: answering, leaving and closing must work whatever the owner's inbox
    // holds (they are bounded by the conversation's roster).
    let capped = !matches!(env.payload, Payload::ConvAction { .. });
    for to in env.to.iter().filter(|_| capped) {
        if let Some(r) = st.agents.get(to) {
            if r.unread() >= ctx.policy.limits.inbox_pending_max {
                return Err(ApiError::new(
                    ErrorCode::InboxFull,
                    format!("{to} has {} unread items", r.unread()),
                )
                .with("retry_after_s", Value::Int(60)));
            }
        }
    }
    Ok((events, Outcome::Accepted { id, conv }))
}

/// ACK-5: a `task_request` whose `corr` names a `task_request` its sender received with an
/// `ack_by` may not ask for an ack later than that. Only the sending relay holds the parent,
/// so only it checks (never on a forwarded envelope); a parent it no longer holds, or a
/// `corr` that is not a message id, limits nothing.
fn within_parent_deadline(st: &State, env: &Envelope) -> Result<(), ApiError> {
    let Some(ack_by) = env.ack_by else {
        return Ok(());
    };
    let Some(parent) = env
        .corr
        .as_deref()
        .and_then(formica_protocol::envelope::MessageId::parse_hex)
        .and_then(|c| st.message(&c))
    else {
        return Ok(());
    };
    let received = parent.msg_type == formica_protocol::envelope::MessageType::TaskRequest
        && parent.recipients.iter().any(|r| r.handle == env.from);
    match parent.ack_by {
        Some(limit) if received && ack_by > limit => Err(ApiError::new(
            ErrorCode::DeadlineAfterParent,
            format!(
                "ack_by {ack_by} is later than {limit}, the ack_by of the request this one answers (corr); ask for {limit} or earlier"
            ),
        )
        .with("field", "ack_by".into())
        .with("ack_by_max", Value::Int(limit))),
        _ => Ok(()),
    }
}

/// TRUST-3: a vouch names a subject registered here; a grant is within the sender's tier's
/// `vouches_max`, and only an existing vouch can be revoked.
fn vouch_allowed(
    st: &State,
    ctx: &Ctx<'_>,
    env: &Envelope,
    subject: &Handle,
    action: VouchAction,
    tier: &Tier,
) -> Result<(), ApiError> {
    if !st.agents.contains_key(subject) {
        return Err(ApiError::new(
            ErrorCode::UnknownRecipient,
            format!("{subject} is not registered"),
        ));
    }
    let exists = st
        .vouches
        .contains_key(&(env.from.clone(), subject.clone()));
    match action {
        VouchAction::Grant
            if !exists
                && st.vouches_given(&env.from, ctx.now, ctx.policy)
                    >= tier.vouches_max as usize =>
        {
            return Err(ApiError::new(
                ErrorCode::VouchLimit,
                format!(
                    "tier {} allows {} active vouches",
                    tier.name, tier.vouches_max
                ),
            ))
        }
        VouchAction::Revoke if !exists => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no vouch for {subject} to revoke"),
            ))
        }
        _ => {}
    }
    Ok(())
}

/// TRUST-3: a report names a subject registered here, within the sender's tier's
/// `reports_per_day`.
fn report_allowed(
    st: &State,
    ctx: &Ctx<'_>,
    subject: &Handle,
    sender: Option<&Agent>,
    tier: &Tier,
) -> Result<(), ApiError> {
    if !st.agents.contains_key(subject) {
        return Err(ApiError::new(
            ErrorCode::UnknownRecipient,
            format!("{subject} is not registered"),
        ));
    }
    let day_ago = ctx.now - 24 * 3600 * 1000;
    if sender
        .map(|s| s.reports_sent.iter().filter(|t| **t > day_ago).count())
        .unwrap_or(0)
        >= tier.reports_per_day as usize
    {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "tier {} allows {} reports per day",
                tier.name, tier.reports_per_day
            ),
        )
        .with("retry_after_s", Value::Int(3600)));
    }
    Ok(())
}
