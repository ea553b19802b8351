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
    for (by, id) in st.deadlines.iter() {
        if *by >= ctx.now || events.len() >= TICK_RECEIPTS_MAX {
            break;
        }
        let Some(m) = st.messages.get(id) else {
            continue;
        };
        for r in m.recipients.iter().filter(|r| !r.state.is_terminal()) {
            if st.agents.contains_key(&m.sender) {
                let rc = receipt(
                    st,
                    ctx,
                    *id,
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
    let expired: Vec<(RelayHost, MessageId)> = st
        .outbound
        .iter()
        .flat_map(|(p, q)| {
            q.values()
                .filter(|x| ctx.now - x.at > max_age)
                .map(|x| (p.clone(), x.id))
        })
        .take(TICK_RECEIPTS_MAX)
        .collect();
    for (peer, id) in expired {
        federation::dead_letter(st, ctx, &peer, id, "expired", &mut events)?;
    }
    Ok((events, Outcome::Ticked { timed_out: n }))
}
