//! The events an operator wants to see in the relay's log (registrations, peerings, dead
//! letters, forks), logged by the writer once they are durable, bounded per commit.

use super::events::Event;

/// Events an operator wants to see in the log (rare ones: registrations, peerings, dead
/// letters, forks), logged once they are durable.
pub(super) fn is_notable(e: &Event) -> bool {
    matches!(
        e,
        Event::Registered { .. }
            | Event::PeerSet { .. }
            | Event::PeerRemoved { .. }
            | Event::DeadLettered { .. }
            | Event::KeyLogConflict { .. }
            | Event::RemoteKeyLogConflict { .. }
    )
}

/// Most lines one batch logs one by one; the rest are summed up per kind, so that a burst (a
/// whole queue dead-lettered at once) cannot flood the log.
const LOG_LINES_PER_BATCH: usize = 16;

/// Logs a batch's notable events after it is durable (the gate is open again: a slow log
/// sink holds up no reader).
pub(super) fn log_events(events: &[Event]) {
    for e in events.iter().take(LOG_LINES_PER_BATCH) {
        log_event(e);
    }
    if events.len() > LOG_LINES_PER_BATCH {
        let dead = events[LOG_LINES_PER_BATCH..]
            .iter()
            .filter(|e| matches!(e, Event::DeadLettered { .. }))
            .count();
        tracing::warn!(
            more = events.len() - LOG_LINES_PER_BATCH,
            dead_lettered = dead,
            "and more events in the same commit, not logged one by one"
        );
    }
}

fn log_event(e: &Event) {
    match e {
        Event::Registered { entry, .. } => {
            tracing::info!(handle = %entry.entry().handle, "agent registered");
        }
        Event::PeerSet { host, status, .. } => {
            tracing::info!(peer = %host, status = status.as_str(), "peering changed");
        }
        Event::PeerRemoved { host, .. } => tracing::info!(peer = %host, "peer removed"),
        Event::DeadLettered {
            peer, id, reason, ..
        } => {
            tracing::warn!(peer = %peer, id = %id, reason = %reason, "delivery dead-lettered");
        }
        Event::KeyLogConflict { entry, .. } | Event::RemoteKeyLogConflict { entry, .. } => {
            tracing::warn!(handle = %entry.entry().handle, seq = entry.entry().seq, "conflicting key log entry kept as evidence (a fork)");
        }
        _ => {}
    }
}
