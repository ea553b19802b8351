//! The writer's turn on a store shared by several nodes of the relay (`engine::nodes`).

use super::WriterCore;
use crate::engine::state::refresh;
use crate::store::{Changes, StoreError, Table};
use std::sync::atomic::Ordering;

impl WriterCore {
    /// A shared store: waits for this node's turn to write, and first loads the state again
    /// when another node appended since this one last did (or when a failed commit left it
    /// stale). Every stream is woken after such a load: what it reads may have grown.
    pub(super) fn take_turn(&mut self) -> Result<(), StoreError> {
        let store = self.log.store().clone();
        let stored = match store.begin_turn() {
            Ok(n) => n,
            Err(e) => {
                self.health.set_db_down(true);
                return Err(e);
            }
        };
        if stored != self.log.len() || self.stale {
            if let Err(e) = self.catch_up(stored) {
                store.end_turn();
                self.health.set_db_down(true);
                return Err(e);
            }
        }
        self.health.set_db_down(false);
        self.health.set_writable(true);
        Ok(())
    }

    /// Moves the log to `stored` records (their chain checked from this node's head) and reads
    /// again what the other nodes' commits changed of what the state holds in memory, as their
    /// journal rows name it; or, when those do not cover every record since this node's last
    /// (or the state is stale), loads the whole state from the tables, which every node's
    /// commits keep the replay of the log.
    fn catch_up(&mut self, stored: u64) -> Result<(), StoreError> {
        let store = self.log.store().clone();
        let mut st = self.state.write();
        st.discard_changes();
        let from = self.log.len();
        self.log.follow(stored)?;
        let refreshed = !self.stale && st.refresh(&*store, from, stored)?;
        if !refreshed {
            let loaded =
                crate::engine::state::State::load_after(st.host.clone(), store.clone(), Some(&st))?;
            *st = loaded;
            self.prune.extend(refresh::stale_journal(&*store, stored)?);
            self.health.full_loads.fetch_add(1, Ordering::Relaxed);
        }
        drop(st);
        self.stale = false;
        self.health.log_len.store(self.log.len(), Ordering::SeqCst);
        self.health.catch_ups.fetch_add(1, Ordering::Relaxed);
        self.notifier.notify_all();
        self.notifier.wake_outbound();
        Ok(())
    }

    /// The journal row of the commit of the next `n` records with `changes`, and the removal of
    /// this node's journal rows beyond [`refresh::JOURNAL_KEEP`] (and of those a whole load
    /// found stale).
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
        out
    }
}
