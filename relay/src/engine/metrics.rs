//! `/metrics` in the Prometheus text format: counters kept with atomics (by the handlers, the
//! server loop and the writer), gauges read from the durable state.

use super::decide::Outcome;
use super::events::PeerStatus;
use super::Engine;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    pub registrations: AtomicU64,
    pub streams: AtomicI64,
    /// Connections closed because the client took nothing for `write_stall_timeout_ms`.
    pub write_stalls: AtomicU64,
}

impl Metrics {
    pub fn count(&self, o: &Outcome) {
        match o {
            Outcome::Accepted { .. } => self.accepted.fetch_add(1, Ordering::Relaxed),
            Outcome::Duplicate { .. } => self.duplicates.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    /// Every metric of `engine`, in the Prometheus text format.
    pub fn render(engine: &Engine) -> String {
        let m = &engine.metrics;
        let (agents, events, messages, deadlines, peers, queued, dead_letters) = {
            let st = engine.read();
            (
                st.agents.len(),
                st.events,
                st.messages_len as usize,
                st.deadlines_len as usize,
                st.peers
                    .values()
                    .filter(|p| p.status == PeerStatus::Active)
                    .count(),
                st.outbound_len.values().sum::<usize>(),
                st.dead_letters,
            )
        };
        let mut s = String::new();
        let mut line = |name: &str, kind: &str, help: &str, v: i64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        line(
            "formica_envelopes_accepted_total",
            "counter",
            "Envelopes accepted and stored.",
            m.accepted.load(Ordering::Relaxed) as i64,
        );
        let ws = engine.writer.stats();
        line(
            "formica_log_commits_total",
            "counter",
            "Appends to the event log, each made durable with one fsync (group commit).",
            ws.commits.load(Ordering::Relaxed) as i64,
        );
        line(
            "formica_log_committed_events_total",
            "counter",
            "Events written by those appends.",
            ws.events.load(Ordering::Relaxed) as i64,
        );
        line(
            "formica_envelopes_duplicate_total",
            "counter",
            "Exact replays answered as duplicate.",
            m.duplicates.load(Ordering::Relaxed) as i64,
        );
        line(
            "formica_envelopes_rejected_total",
            "counter",
            "Envelopes refused with an error code.",
            m.rejected.load(Ordering::Relaxed) as i64,
        );
        line(
            "formica_registrations_total",
            "counter",
            "Handles registered since start.",
            m.registrations.load(Ordering::Relaxed) as i64,
        );
        line(
            "formica_streams_open",
            "gauge",
            "Open SSE and WebSocket inbox streams.",
            m.streams.load(Ordering::Relaxed),
        );
        line(
            "formica_connections_write_stalled_total",
            "counter",
            "Connections closed because the client stopped reading (limits.write_stall_timeout_ms).",
            m.write_stalls.load(Ordering::Relaxed) as i64,
        );
        line(
            "formica_agents",
            "gauge",
            "Agents homed on this relay.",
            agents as i64,
        );
        line(
            "formica_log_events",
            "gauge",
            "Events in the durable log.",
            events as i64,
        );
        line(
            "formica_messages",
            "gauge",
            "Messages with delivery status.",
            messages as i64,
        );
        line(
            "formica_deadlines_pending",
            "gauge",
            "Messages waiting for an ack before a deadline.",
            deadlines as i64,
        );
        line(
            "formica_peers_active",
            "gauge",
            "Peer relays with an active peering.",
            peers as i64,
        );
        line(
            "formica_outbound_queued",
            "gauge",
            "Envelopes waiting to be forwarded to peers.",
            queued as i64,
        );
        line(
            "formica_dead_letters_total",
            "counter",
            "Deliveries dead-lettered (in the log).",
            dead_letters as i64,
        );
        let h = &engine.store_health;
        line(
            "formica_store_writable",
            "gauge",
            "1 while the store takes writes; 0 from a failed write (disk full) until it is reopened.",
            i64::from(h.writable()),
        );
        line(
            "formica_store_db_down",
            "gauge",
            "Several nodes on PostgreSQL: 1 while the database cannot be reached or this node loads its state again (requests are answered unavailable).",
            i64::from(h.db_down()),
        );
        line(
            "formica_node_leading",
            "gauge",
            "1 while this node leads (forwards to peers, replicates conversations); always 1 on a store of one process.",
            i64::from(h.leading()),
        );
        line(
            "formica_node_catch_ups_total",
            "counter",
            "Times this node caught up with records other nodes of the relay appended.",
            h.catch_ups.load(Ordering::Relaxed) as i64,
        );
        line(
            "formica_node_full_loads_total",
            "counter",
            "Of those, the ones that loaded the whole state (the journal did not cover the records).",
            h.full_loads.load(Ordering::Relaxed) as i64,
        );
        line(
            "formica_store_low_space",
            "gauge",
            "1 while free space is below limits.store_free_bytes_min (writes refused early).",
            i64::from(h.low_space()),
        );
        line(
            "formica_store_write_failures_total",
            "counter",
            "Appends that failed (full disk, I/O error); nothing of their batch was kept.",
            h.failures.load(Ordering::Relaxed) as i64,
        );
        line(
            "formica_store_reopens_total",
            "counter",
            "Times the store was reopened after a failed write and took writes again.",
            h.reopens.load(Ordering::Relaxed) as i64,
        );
        line(
            "formica_store_low_space_refusals_total",
            "counter",
            "Batches refused because free space was below limits.store_free_bytes_min.",
            h.low_space_refusals.load(Ordering::Relaxed) as i64,
        );
        let free = h.free_bytes.load(Ordering::Relaxed);
        if free != u64::MAX {
            line(
                "formica_store_free_bytes",
                "gauge",
                "Free space on the store's file system when the writer last looked.",
                i64::try_from(free).unwrap_or(i64::MAX),
            );
        }
        line(
            "formica_store_syncs_total",
            "counter",
            "Syncs to disk made by the store (none in the benchmark-only relaxed mode).",
            h.syncs.load(Ordering::Relaxed) as i64,
        );
        let lc = h.log_check.load(Ordering::Relaxed);
        line(
            "formica_store_log_damaged_record",
            "gauge",
            "The first record the background check found damaged since start (0: none found; see formica_store_log_checked).",
            lc.saturating_sub(1) as i64,
        );
        line(
            "formica_store_log_checked",
            "gauge",
            "1 once the background check of the log's chain since start has finished.",
            i64::from(lc > 0),
        );
        line(
            "formica_store_log_first_record",
            "gauge",
            "The first record the log keeps (those before were dropped behind a checkpoint).",
            h.log_first.load(Ordering::Relaxed) as i64,
        );
        line(
            "formica_checkpoints_total",
            "counter",
            "Checkpoints made since start (a snapshot of the tables and its record).",
            h.checkpoints.load(Ordering::Relaxed) as i64,
        );
        line(
            "formica_checkpoint_record",
            "gauge",
            "The log position of the last checkpoint made since start (0: none).",
            h.checkpoint_len.load(Ordering::Relaxed) as i64,
        );
        // Per peer (bounded by the peering caps): queue depth and the age of its oldest item.
        let now = engine.now();
        let per_peer: Vec<(String, usize, i64)> = {
            let st = engine.read();
            st.peers
                .keys()
                .map(|p| {
                    let oldest = st
                        .queued(p, 1)
                        .first()
                        .map(|(_, x)| (now - x.at).max(0))
                        .unwrap_or(0);
                    (p.to_string(), st.queue_len(p), oldest)
                })
                .collect()
        };
        s.push_str("# HELP formica_peer_queue_depth Envelopes queued for a peer.\n# TYPE formica_peer_queue_depth gauge\n");
        for (p, n, _) in &per_peer {
            let _ = writeln!(s, "formica_peer_queue_depth{{peer=\"{p}\"}} {n}");
        }
        s.push_str("# HELP formica_peer_queue_oldest_age_seconds Age of the oldest envelope queued for a peer (0 when none).\n# TYPE formica_peer_queue_oldest_age_seconds gauge\n");
        for (p, _, age) in &per_peer {
            let _ = writeln!(
                s,
                "formica_peer_queue_oldest_age_seconds{{peer=\"{p}\"}} {}",
                *age as f64 / 1000.0
            );
        }
        s
    }
}
