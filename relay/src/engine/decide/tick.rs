//! Time passing (the `Tick` command): `timed_out` receipts for deadlines that passed without an
//! ack (ACK-4), and dead letters for queued deliveries older than `federation.dead_letter_ms`
//! (FED-10). Each tick does a bounded amount of work; the rest follows in the next one.

use super::{federation, receipt, Ctx, Decision, Outcome};
use crate::engine::events::Event;
use crate::engine::state::State;
use formica_protocol::envelope::{DeliveryState, MessageId};
use formica_protocol::RelayHost;

/// Most timed_out receipts one tick produces; the rest follow in the next tick.
pub const TICK_RECEIPTS_MAX: usize = 1000;

pub(super) fn tick(st: &State, ctx: &Ctx<'_>) -> Decision {
    let mut events = Vec::new();
    for (_, id) in st.deadlines_before(ctx.now, TICK_RECEIPTS_MAX) {
        if events.len() >= TICK_RECEIPTS_MAX {
            break;
        }
        let Some(m) = st.message(&id) else {
            continue;
        };
        for r in m.recipients.iter().filter(|r| !r.state.is_terminal()) {
            if st.agents.contains_key(&m.sender) {
                let rc = receipt(
                    st,
                    ctx,
                    id,
                    &m.sender,
                    &r.handle,
                    DeliveryState::TimedOut,
                    None,
                )?;
                events.push(Event::Envelope {
                    at: ctx.now,
                    envelope: rc,
                });
            }
        }
    }
    let n = events.len();
    // FED-10: queued deliveries past the dead-letter age.
    let max_age = ctx.policy.federation.dead_letter_ms;
    let mut expired: Vec<(RelayHost, MessageId)> = Vec::new();
    for p in st.outbound_len.keys() {
        let room = TICK_RECEIPTS_MAX - expired.len();
        // Each queue is in the order it was accepted: its expired entries come first.
        expired.extend(
            st.queued(p, room)
                .into_iter()
                .take_while(|(_, x)| ctx.now - x.at > max_age)
                .map(|(_, x)| (p.clone(), x.id)),
        );
        if expired.len() >= TICK_RECEIPTS_MAX {
            break;
        }
    }
    for (peer, id) in expired {
        federation::dead_letter(st, ctx, &peer, id, "expired", &mut events)?;
    }
    // CONVO-7, CONVO-9: invitations that rang out, conversations that expired.
    events.extend(super::conversations::due(st, ctx, TICK_RECEIPTS_MAX));
    Ok((events, Outcome::Ticked { timed_out: n }))
}

/// A retention sweep: a `retained` event with the bounds of now, only when it removes
/// something (an idle relay's log does not grow with sweeps).
pub(super) fn retain(st: &State, ctx: &Ctx<'_>) -> Decision {
    let r = &ctx.policy.retention;
    let bounds = crate::engine::events::Retention {
        delivered_before: (ctx.now - r.delivered_ms).max(0),
        any_before: (ctx.now - r.max_ms).max(0),
        seen_before: (ctx.now - r.dedup_ms).max(0),
        max: r.sweep_max as u64,
    };
    let found = st.retention_candidates(&bounds);
    let mut removed = found.inbox.len() + found.messages.len() + found.seen.len();
    let mut events = if found.is_empty() {
        Vec::new()
    } else {
        vec![Event::Retained {
            at: ctx.now,
            bounds,
        }]
    };
    // Closed conversations past `conversations.closed_keep_ms` go as a whole (CONVO-11).
    let mut convs = super::conversations::removals(st, ctx, r.sweep_max);
    convs.extend(super::conversations::at_lowered_limit(st, ctx, r.sweep_max));
    removed += convs.len();
    events.extend(convs);
    Ok((events, Outcome::Retained { removed }))
}

/// A checkpoint record for a snapshot written at `mark.len`: refused unless that is past the
/// last checkpoint's position and not past the log's end.
pub(super) fn checkpoint(
    st: &State,
    ctx: &Ctx<'_>,
    mark: crate::engine::events::CheckpointMark,
) -> Decision {
    let last = st.last_checkpoint().map(|c| c.mark.len).unwrap_or(0);
    // The snapshot was read beside the writer: record `mark.len` must still be the one it saw
    // (a store reopened after a failed write may have put other records there since).
    if mark.len <= last
        || mark.len > st.events
        || mark.keep_from > mark.len + 1
        || st.db.chain_hash_at(mark.len) != Some(mark.head)
    {
        return Err(crate::engine::error::ApiError::new(
            formica_protocol::ErrorCode::Internal,
            format!(
                "a snapshot at record {} cannot be a checkpoint (last checkpoint at {last}, log at {})",
                mark.len, st.events
            ),
        ));
    }
    Ok((
        vec![Event::Checkpoint {
            at: ctx.now,
            cp: mark,
        }],
        Outcome::Checkpointed,
    ))
}
