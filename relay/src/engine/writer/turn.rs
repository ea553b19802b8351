//! The writer's turn on a store shared by several nodes of the relay (`engine::nodes`).
//!
//! Inside a turn the writer's session holds the write lock in an open transaction, which the
//! database ends once it has been idle for a few seconds (so that a frozen node cannot hold
//! every other one up). So what may take long, loading the whole state, is done before the
//! turn, without the lock: commits that land meanwhile are read back in the turn from their
//! journal rows, like any other node's, and only that short refresh runs inside it.

use super::WriterCore;
use crate::engine::state::refresh;
use crate::store::{Changes, StoreError, Table};
use std::sync::atomic::Ordering;

impl WriterCore {
    /// A shared store: waits for this node's turn to write, after catching up with what other
    /// nodes appended since this one last did. Every stream is woken after a catch-up: what it
    /// reads may have grown. On any failure the state is marked stale (loaded whole before the
    /// next turn) and the error is returned.
    pub(super) fn take_turn(&mut self) -> Result<(), StoreError> {
        let store = self.log.store().clone();
        let r = (|| {
            if self.stale {
                self.load_whole()?;
            }
            let stored = store.begin_turn()?;
            if stored == self.log.len() {
                return Ok(());
            }
            let caught = self.refresh_gap(stored);
            match caught {
                Ok(true) => Ok(()),
                Ok(false) => {
                    // The journal does not cover the gap: the whole state, outside the turn,
                    // then the turn again (what landed meanwhile is in the journal).
                    store.end_turn();
                    self.load_whole()?;
                    let stored = store.begin_turn()?;
                    if stored == self.log.len() || self.refresh_gap(stored)? {
                        Ok(())
                    } else {
                        store.end_turn();
                        Err(StoreError::Unavailable(
                            "other nodes wrote faster than this node could load its state".into(),
                        ))
                    }
                }
                Err(e) => {
                    store.end_turn();
                    Err(e)
                }
            }
        })();
        match r {
            Ok(()) => {
                self.health.set_db_down(false);
                self.health.set_writable(true);
                Ok(())
            }
            Err(e) => {
                store.end_turn();
                self.stale = true;
                self.health.set_db_down(true);
                Err(e)
            }
        }
    }

    /// In the turn: moves the log to `stored` records (their chain checked from this node's
    /// head) and reads back what the other nodes' commits changed of what the state holds in
    /// memory, as their journal rows name it. `Ok(false)` when the journal does not cover every
    /// record since this node's last: the state is then stale (nothing of it was changed, the
    /// log was moved) and must be loaded whole; so it is after an error.
    fn refresh_gap(&mut self, stored: u64) -> Result<bool, StoreError> {
        let store = self.log.store().clone();
        let mut st = self.state.write();
        st.discard_changes();
        let from = self.log.len();
        // Stale from here until the state holds what the log does.
        self.stale = true;
        self.log.follow(stored)?;
        if !st.refresh(&*store, from, stored)? {
            // Still stale: the caller loads the whole state.
            return Ok(false);
        }
        drop(st);
        self.caught_up();
        Ok(true)
    }

    /// Outside a turn: the whole state loaded from the tables (the log moved to the store's
    /// last record first, its chain checked), reusing the key logs this node checked. Other
    /// nodes may commit while the tables are read; the rows their commits change are read
    /// back in the next turn, from their journal rows.
    fn load_whole(&mut self) -> Result<(), StoreError> {
        let store = self.log.store().clone();
        self.stale = true;
        let stored = store.len()?;
        self.log.follow(stored)?;
        let mut st = self.state.write();
        st.discard_changes();
        let loaded =
            crate::engine::state::State::load_after(st.host.clone(), store.clone(), Some(&st))?;
        *st = loaded;
        drop(st);
        self.prune.extend(refresh::stale_journal(&*store, stored)?);
        self.health.full_loads.fetch_add(1, Ordering::Relaxed);
        self.caught_up();
        Ok(())
    }

    fn caught_up(&mut self) {
        self.stale = false;
        self.health.log_len.store(self.log.len(), Ordering::SeqCst);
        self.health.catch_ups.fetch_add(1, Ordering::Relaxed);
        self.notifier.notify_all();
        self.notifier.wake_outbound();
    }

    /// The journal row of the commit of the next `n` records with `changes`, and the removal of
    /// this node's journal rows beyond [`refresh::JOURNAL_KEEP`] (and, every time that many
    /// were written, of every node's rows older than [`refresh::JOURNAL_SPAN`] records: those
    /// of nodes that stopped, and removals a failed commit lost).
    pub(super) fn journal(&mut self, n: u64, changes: &Changes) -> Changes {
        let first = self.log.len() + 1;
        let (k, v) = refresh::journal_row(first, first + n - 1, &[changes]);
        let mut out = std::mem::take(&mut self.prune);
        out.insert((Table::Meta, k), Some(v));
        self.journal_keys.push_back(first);
        while self.journal_keys.len() > refresh::JOURNAL_KEEP {
            if let Some(old) = self.journal_keys.pop_front() {
                out.insert((Table::Meta, refresh::journal_key(old)), None);
            }
        }
        self.journal_commits += 1;
        if self.journal_commits % refresh::JOURNAL_KEEP as u64 == 1 {
            match refresh::stale_journal(&**self.log.store(), first) {
                Ok(stale) => out.extend(stale),
                Err(e) => tracing::debug!(error = %e, "old journal rows not read; removed later"),
            }
        }
        out
    }
}
