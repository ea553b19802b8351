//! The writer after a failed commit: the state loaded again from what the store holds, writes
//! refused until the store is reopened, and the last attempt when the relay stops.

use super::{
    WriterCore, EXIT_STATE_LOST, REOPEN_FREE_BYTES_MARGIN, STORE_REOPEN_RETRY,
    STORE_REOPEN_RETRY_MAX,
};
use crate::store::{LogPosition, StoreError};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl WriterCore {
    /// The batch's events are applied in memory but not on disk: the state goes back to what
    /// the store holds (read through a read-only view while the store refuses I/O after a
    /// failed write), and writes are refused until the store is reopened. If that fails (the
    /// file cannot be read back, or its tables are not the replay of the durable log), the
    /// process ends with [`EXIT_STATE_LOST`]: open streams and forwarding workers read the
    /// state, and it holds events that are not durable; a restart loads or rebuilds what is.
    pub(super) fn failed_append(&mut self, e: &StoreError) {
        if self.shared {
            // The commit may have been made (its answer lost) or not: the next turn reads
            // what the store holds. Until then nothing of this node's state is served.
            tracing::error!(error = %e, "a commit to the shared store failed; this node answers unavailable until it has loaded its state again");
            self.health.failures.fetch_add(1, Ordering::Relaxed);
            self.health.set_db_down(true);
            self.stale = true;
            // Table reads stop seeing the batch's rows now; what it changed in memory goes
            // with the load before the next turn (a reader already past the `unavailable`
            // gate of `http::observe` may still see it meanwhile).
            self.state.write().discard_changes();
            return;
        }
        tracing::error!(error = %e, "append failed; nothing of the batch is kept, writes are refused until the store can be written again");
        self.health.failures.fetch_add(1, Ordering::Relaxed);
        self.health.set_writable(false);
        // The first attempt may come with the next batch (it is cheap while free space is
        // short: nothing is opened); after failures in a row, the wait doubles.
        self.retry_at = match self.failures_in_a_row {
            0 => None,
            n => Some(Instant::now() + Self::backoff(n)),
        };
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        self.reload_state();
    }

    /// Loads the state again from the store's committed tables, which must be the replay of
    /// the durable log (see [`failed_append`](Self::failed_append)).
    pub(super) fn reload_state(&mut self) {
        let mut st = self.state.write();
        st.discard_changes();
        let host = st.host.clone();
        let store = self.log.store().clone();
        let at = self.log.position();
        let loaded = LogPosition::projected(&*store).and_then(|p| {
            if p == Some(at) {
                return crate::engine::state::State::load(host, store);
            }
            // The failed commit reached the file (its sync failed): the tables hold it. Until
            // the store is reopened (and its tables rebuilt), the state is the replay of the
            // durable records, held in memory.
            tracing::warn!(records = at.len, "the failed commit reached the file; serving the replay of the durable log from memory until the store is reopened");
            let mem: Arc<dyn crate::store::Store> = Arc::new(crate::store::MemStore::default());
            crate::engine::replay::replay_into(store, &host, Some(at.len), mem).map(|(_, s)| s)
        });
        match loaded {
            Ok(s) => *st = s,
            Err(e2) => {
                tracing::error!(error = %e2, code = EXIT_STATE_LOST, "the state cannot be loaded from the store after a failed write; stopping (a restart loads or rebuilds what is durable)");
                std::process::exit(EXIT_STATE_LOST);
            }
        }
    }

    /// When the relay stops with its store down after a failed write: one last attempt to
    /// reopen it, so that records a failed commit left in the file (its bytes written, its sync
    /// failed) are removed and the next start finds exactly what was acknowledged. If the store
    /// still cannot be written, they stay, and the next start serves them (their senders were
    /// answered 507; a retry is answered `duplicate`).
    pub(super) fn close(&mut self) {
        if self.health.writable() {
            // Nonces and challenges of the last moments, so that a clean stop keeps them all.
            let admission = self.take_admission();
            if !admission.is_empty() {
                if let Err(e) = self.log.store().commit(0, &[], &[&admission]) {
                    tracing::warn!(error = %e, "the last request nonces could not be stored");
                }
            }
            return;
        }
        let reopened = self
            .log
            .store()
            .reopen()
            .and_then(|()| self.log.resync())
            .and_then(|()| self.tables_match_log());
        match reopened {
            Ok(()) => tracing::info!(
                records = self.log.len(),
                "store reopened at shutdown: it holds exactly what was acknowledged"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "the store could not be reopened at shutdown; a failed write may have left records in it that the next start will serve")
            }
        }
    }

    /// After a reopen: a failed commit whose bytes reached the file took its table rows with
    /// it, and `resync` removed only its records. Tables that are not the replay of the log
    /// are rebuilt from it before anything is written.
    pub(super) fn tables_match_log(&mut self) -> Result<(), StoreError> {
        let store = self.log.store().clone();
        if LogPosition::projected(&*store)? == Some(self.log.position()) {
            // The state may be a replay held in memory (see `reload_state`): it reads the
            // store's tables again.
            let mut st = self.state.write();
            let host = st.host.clone();
            *st = crate::engine::state::State::load(host, store)?;
            return Ok(());
        }
        tracing::warn!("the projection tables are not the replay of the durable log after a failed write; rebuilding them");
        let mut st = self.state.write();
        let host = st.host.clone();
        let (log, s) = crate::engine::replay::rebuild(store, &host)?;
        *st = s;
        self.log = log;
        Ok(())
    }

    /// The wait before the next reopen after `n` failed appends in a row.
    pub(super) fn backoff(n: u32) -> Duration {
        STORE_REOPEN_RETRY
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(STORE_REOPEN_RETRY_MAX)
    }

    /// Tries to reopen a store that refused a write, at most every [`STORE_REOPEN_RETRY`]:
    /// reopened, it must hold exactly the durable log (what a failed write left beyond it is
    /// removed). True once it takes writes again.
    pub(super) fn try_reopen(&mut self) -> bool {
        let now = Instant::now();
        if self.retry_at.is_some_and(|t| now < t) {
            return false;
        }
        self.retry_at = Some(now + STORE_REOPEN_RETRY.max(Self::backoff(self.failures_in_a_row)));
        let min = self
            .policy
            .limits
            .store_free_bytes_min
            .saturating_add(REOPEN_FREE_BYTES_MARGIN);
        if let Some(free) = self.log.store().free_bytes() {
            self.health.free_bytes.store(free, Ordering::Relaxed);
            if free < min {
                return false;
            }
        }
        let reopened = self
            .log
            .store()
            .reopen()
            .and_then(|()| self.log.resync())
            .and_then(|()| self.tables_match_log());
        match reopened {
            Ok(()) => {
                self.health.set_writable(true);
                self.health.reopens.fetch_add(1, Ordering::Relaxed);
                self.retry_at = None;
                self.damage_reported = false;
                tracing::info!(
                    records = self.log.len(),
                    "store reopened; writes are accepted again"
                );
                true
            }
            Err(e @ StoreError::Corrupt { .. }) => {
                if !std::mem::replace(&mut self.damage_reported, true) {
                    tracing::error!(error = %e, "the reopened store does not hold the log this relay wrote; writes stay refused (stop the relay and run relay check)");
                }
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, "the store cannot be reopened yet");
                false
            }
        }
    }
}
