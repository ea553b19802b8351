//! The writer's turn on a store shared by several nodes of the relay (`engine::nodes`).

use super::WriterCore;
use crate::store::StoreError;
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

    /// Moves the log to `stored` records (their chain checked from this node's head) and loads
    /// the state from the tables, which the other nodes' commits keep the replay of the log.
    fn catch_up(&mut self, stored: u64) -> Result<(), StoreError> {
        let store = self.log.store().clone();
        let mut st = self.state.write();
        st.discard_changes();
        self.log.follow(stored)?;
        let loaded = crate::engine::state::State::load(st.host.clone(), store)?;
        *st = loaded;
        drop(st);
        self.stale = false;
        self.health.log_len.store(self.log.len(), Ordering::SeqCst);
        self.health.catch_ups.fetch_add(1, Ordering::Relaxed);
        self.notifier.notify_all();
        self.notifier.wake_outbound();
        Ok(())
    }
}
