//! Delivery and acks: a read hands items out (and, for messages that asked for an ack, makes
//! `delivered` receipts or, for a remote sender, delivery notices to its relay, FED-11); an ack
//! settles one delivery with an `acked` receipt (ACK-3).

use super::{agent, receipt, Ctx, Decision, Outcome};
use crate::engine::error::ApiError;
use crate::engine::events::Event;
use crate::engine::state::State;
use formica_protocol::envelope::{AckStatus, DeliveryState, Envelope, MessageId};
use formica_protocol::{ErrorCode, Handle, Value};

/// ACK-3: an ack is bound to a message the acker received, not yet settled, and goes back to
/// that message's sender, who gets an `acked` receipt if it is homed here.
pub(super) fn ack(
    st: &State,
    ctx: &Ctx<'_>,
    env: &Envelope,
    id: MessageId,
    msg: &MessageId,
    status: AckStatus,
    events: &mut Vec<Event>,
) -> Result<(), ApiError> {
    let rec = st.message(msg).ok_or_else(|| {
        ApiError::new(
            ErrorCode::AckForbidden,
            format!("no message {msg} was delivered to {}", env.from),
        )
    })?;
    let r = rec
        .recipients
        .iter()
        .find(|r| r.handle == env.from)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::AckForbidden,
                format!("{} is not a recipient of {msg}", env.from),
            )
        })?;
    if env.to[0] != rec.sender {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "an ack goes to the message's sender",
        )
        .with("field", "to".into()));
    }
    if r.state.is_terminal() {
        return Err(ApiError::new(
            ErrorCode::AckSettled,
            format!("delivery of {msg} to {} is already {}", env.from, r.state),
        ));
    }
    if st.agents.contains_key(&rec.sender) {
        let rc = receipt(
            st,
            ctx,
            *msg,
            &rec.sender,
            &env.from,
            DeliveryState::Acked,
            Some((id, status)),
        )?;
        events.push(Event::Envelope {
            at: ctx.now,
            envelope: rc,
        });
    }
    Ok(())
}

pub(super) fn read(st: &State, ctx: &Ctx<'_>, handle: Handle, upto: u64) -> Decision {
    let a = agent(st, &handle)?;
    if upto <= a.read_upto {
        return Ok((vec![], Outcome::Done(Value::Null)));
    }
    let mut events = vec![Event::Read {
        at: ctx.now,
        handle: handle.clone(),
        upto,
    }];
    // A message that asked for an ack tells its sender when it is delivered.
    let span = usize::try_from(upto - a.read_upto).unwrap_or(usize::MAX);
    for item in st
        .inbox_ids_after(&handle, a.read_upto, span)
        .into_iter()
        .filter(|i| i.cursor <= upto)
    {
        let Some(m) = st.message(&item.id) else {
            continue;
        };
        // A remote sender's home relay is told with a delivery notice it turns into its own
        // receipt (FED-11); the notice is queued for that relay like any forwarded envelope.
        let remote = !m.sender.is_relay()
            && m.sender.host() != &st.host
            && ctx.policy.federation.enabled
            && st.active_peer(m.sender.host()).is_some();
        if remote {
            let pending = m.recipients.iter().any(|r| {
                r.handle == handle
                    && matches!(r.state, DeliveryState::Accepted | DeliveryState::Forwarded)
            });
            if pending {
                let notice = receipt(
                    st,
                    ctx,
                    item.id,
                    &m.sender,
                    &handle,
                    DeliveryState::Delivered,
                    None,
                )?;
                events.push(Event::Envelope {
                    at: ctx.now,
                    envelope: notice,
                });
            }
            continue;
        }
        if m.ack_by.is_none() || !st.agents.contains_key(&m.sender) {
            continue;
        }
        let pending = m.recipients.iter().any(|r| {
            r.handle == handle
                && matches!(r.state, DeliveryState::Accepted | DeliveryState::Forwarded)
        });
        if pending {
            let rc = receipt(
                st,
                ctx,
                item.id,
                &m.sender,
                &handle,
                DeliveryState::Delivered,
                None,
            )?;
            events.push(Event::Envelope {
                at: ctx.now,
                envelope: rc,
            });
        }
    }
    Ok((events, Outcome::Done(Value::Null)))
}
