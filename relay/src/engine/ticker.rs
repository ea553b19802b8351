//! The deadline ticker: every `limits.deadline_check_ms`, if a deadline has passed (an ack's,
//! or a conversation's ring or expiry timer) or a queued
//! delivery is older than `federation.dead_letter_ms`, it submits a `Tick` to the writer, which
//! makes the `timed_out` receipts and dead letters (`decide::tick`); every
//! `retention.sweep_ms` it submits a `Retain` (`decide::tick::retain`) and starts a checkpoint
//! when one is due (`checkpoint::start_if_due`).

use super::decide::Command;
use super::Engine;
use formica_protocol::ErrorCode;
use std::sync::Arc;
use std::time::Duration;

/// Produces timed_out receipts: every `deadline_check_ms`, asks the writer to settle deadlines
/// that have passed. Runs until the relay stops.
pub async fn run_deadlines(engine: Arc<Engine>) {
    let every = Duration::from_millis(engine.policy.limits.deadline_check_ms.max(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sweep_every = Duration::from_millis(engine.policy.retention.sweep_ms);
    let mut last_sweep = std::time::Instant::now();
    // The last sweep removed something: more may be due, so the next tick sweeps again.
    let mut again = false;
    loop {
        tick.tick().await;
        if *engine.stopping.borrow() {
            return;
        }
        if engine.store_health.db_down() {
            // Several nodes, the database out of reach: the follower (`nodes::run_follow`)
            // has the writer catch up once it is back; nothing here could be read meanwhile.
            continue;
        }
        // Retention (SPEC.md RET-1..RET-3): the writer looks for what to remove.
        if (again || last_sweep.elapsed() >= sweep_every) && engine.store_health.takes_writes() {
            last_sweep = std::time::Instant::now();
            again = false;
            match engine.writer.submit(Command::Retain).await {
                Ok(crate::engine::decide::Outcome::Retained { removed }) if removed > 0 => {
                    tracing::debug!(removed, "retention removed rows");
                    // More may be due: sweep again at the next tick, not a whole `sweep_ms`
                    // later, so that removal keeps up with what arrives.
                    again = true;
                }
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::Unavailable && *engine.stopping.borrow() => return,
                Err(e) => {
                    if e.code != ErrorCode::StorageFull {
                        tracing::warn!(code = %e.code, "retention sweep failed: {}", e.message);
                    }
                }
            }
            super::checkpoint::start_if_due(&engine);
        }
        let due = {
            let st = engine.read();
            let now = engine.now();
            let max_age = engine.policy.federation.dead_letter_ms;
            // While writes are refused (a store to reopen, free space to check again), a tick
            // lets the writer look again even when no client writes.
            !engine.store_health.takes_writes()
                // Nonces and challenges wait for a commit: one while nothing else writes.
                || engine.journal_pending()
                // Old records to drop behind a checkpoint (`checkpoint::compact`).
                || engine.store_health.drop_pending.load(std::sync::atomic::Ordering::Relaxed)
                || !st.deadlines_before(now, 1).is_empty()
                // A live invitation that rang out, a conversation that expired.
                || st.conv_due(now, &engine.policy.conversations)
                || st.outbound_len.keys().any(|p| {
                    st.queued(p, 1)
                        .first()
                        .is_some_and(|(_, x)| now - x.at > max_age)
                })
        };
        if due {
            if let Err(e) = engine.writer.submit(Command::Tick).await {
                if e.code == ErrorCode::Unavailable && *engine.stopping.borrow() {
                    return;
                }
                // A store that refuses writes is already reported (log, /ready, /metrics).
                if e.code != ErrorCode::StorageFull {
                    tracing::warn!(code = %e.code, "deadline tick failed: {}", e.message);
                }
            }
        }
    }
}
