//! Several nodes of one relay on a shared store (PostgreSQL; ARCHITECTURE.md "Nodes").
//!
//! Every node accepts every request and runs its own writer; the store serialises the writers'
//! turns (`Store::begin_turn`), and a writer that finds records another node appended loads its
//! state again before it decides (`writer::WriterCore::take_turn`). This module holds what
//! else several nodes need: request nonces and proof-of-work challenges claimed in the store,
//! so that a request replayed to another node is still refused (AUTH-6); the follower, which
//! notices other nodes' commits and has the writer catch up with them, so that streams on this
//! node see events committed through another within [`FOLLOW_POLL`]; and the lead, which one
//! node holds at a time for the duties that must run once (forwarding to peers, replication).

use super::error::ApiError;
use super::Engine;
use crate::store::Table;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a node asks the store for its last record: the bound on how late a stream on
/// this node sees an event committed through another node (plus one batch of the writer).
pub const FOLLOW_POLL: Duration = Duration::from_millis(50);

/// How often a node that does not lead tries to take the lead, and one that leads checks that
/// it still does: with the store's own detection of a dead node (its connection closed), the
/// bound on how long forwarding to peers pauses when the leading node dies.
pub const LEAD_POLL: Duration = Duration::from_secs(1);

/// The last probe of the store's last record (`Engine::sync_with_nodes`).
#[derive(Debug, Default)]
pub struct Probe {
    began: Option<Instant>,
    stored: u64,
}

impl Engine {
    /// Whether this relay's store is shared with other nodes.
    pub fn shared(&self) -> bool {
        self.store.shared()
    }

    /// Claims an admission row (a nonce, a challenge) in a shared store, durably: `Ok(false)`
    /// when another node (or this one) claimed it first.
    pub fn claim(&self, key: &[u8], value: &[u8], expires_ms: i64) -> Result<bool, ApiError> {
        self.store
            .claim(key, value, expires_ms)
            .map_err(ApiError::from)
    }

    /// Several nodes: makes this node's state hold at least what the store held when the call
    /// began, so that a request sees every write another node acknowledged before it arrived
    /// (an agent registered through another node, its last key log entry). One query of the
    /// store's last record; when another node appended since, the writer catches up (a `Tick`,
    /// which shares its turn with whatever else waits). A store of one process: nothing.
    pub async fn sync_with_nodes(&self) -> Result<(), ApiError> {
        if !self.store.shared() {
            return Ok(());
        }
        let arrived = Instant::now();
        let stored = {
            // One query at a time, off the runtime's threads; it answers every request that
            // arrived before it began (those waiting here meanwhile), so that requests share
            // one round trip to the database instead of each holding a runtime thread for one.
            let mut p = self.probe.lock().await;
            match p.began {
                Some(began) if began >= arrived => p.stored,
                _ => {
                    let began = Instant::now();
                    let store = self.store.clone();
                    let n = tokio::task::spawn_blocking(move || store.len())
                        .await
                        .map_err(ApiError::internal)?
                        .map_err(ApiError::from)?;
                    *p = Probe {
                        began: Some(began),
                        stored: n,
                    };
                    n
                }
            }
        };
        if stored > self.store_health.log_len.load(Ordering::SeqCst) {
            self.writer.submit(super::decide::Command::Tick).await?;
        }
        Ok(())
    }

    /// An admission row of a shared store (a challenge another node issued).
    pub fn shared_admission(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ApiError> {
        self.store
            .get(Table::Admission, key)
            .map_err(ApiError::from)
    }
}

/// Runs while the relay does, on a shared store only: every [`FOLLOW_POLL`] it asks the store
/// for its last record, and when another node appended (or this node's state must be loaded
/// again, or the database came back), it submits a `Tick`, whose turn makes the writer catch
/// up and wake every stream; every [`LEAD_POLL`] it takes or checks the lead.
pub async fn run_follow(engine: Arc<Engine>) {
    if !engine.shared() {
        return;
    }
    let mut stopping = engine.stopping.subscribe();
    let mut lead_at = Instant::now();
    let mut first = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = stopping.changed() => {}
        }
        if *engine.stopping.borrow() {
            return;
        }
        let lead_due = first || lead_at.elapsed() >= LEAD_POLL;
        first = false;
        let store = engine.store.clone();
        let asked = tokio::task::spawn_blocking(move || {
            let len = store.len();
            let lead = lead_due.then(|| store.lead());
            (len, lead)
        })
        .await;
        let Ok((len, lead)) = asked else { continue };
        let health = &engine.store_health;
        if let Some(lead) = lead {
            lead_at = Instant::now();
            let now = lead.as_ref().is_ok_and(|l| *l);
            if now != health.leading() {
                if now {
                    tracing::info!("this node leads now: it forwards to peers");
                } else {
                    tracing::info!("this node no longer leads");
                }
                health.set_leading(now);
            }
        }
        let behind = match len {
            Ok(n) => n != health.log_len.load(Ordering::SeqCst) || health.db_down(),
            Err(e) => {
                if !health.db_down() {
                    tracing::warn!(error = %e, "the database cannot be reached; answering unavailable until it can");
                }
                health.set_db_down(true);
                false
            }
        };
        if behind {
            if let Err(e) = engine.writer.submit(super::decide::Command::Tick).await {
                tracing::debug!(code = %e.code, "catching up with other nodes failed: {}", e.message);
            }
        }
    }
}
