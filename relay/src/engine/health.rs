//! What the writer knows about its store, for `/ready`, `/metrics` and the deadline ticker:
//! whether it takes writes (false from a failed write until the store is reopened), whether
//! free space is below `limits.store_free_bytes_min` (writes refused early), and counters.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug)]
pub struct StoreHealth {
    writable: AtomicBool,
    low_space: AtomicBool,
    /// Appends that failed (a full disk, an I/O error).
    pub failures: AtomicU64,
    /// Times the store was reopened and took writes again.
    pub reopens: AtomicU64,
    /// Batches refused because free space was below `limits.store_free_bytes_min`.
    pub low_space_refusals: AtomicU64,
    /// Free space last seen on the store's file system (`u64::MAX`: not known).
    pub free_bytes: AtomicU64,
    /// Syncs to disk the store has made (when its engine counts them).
    pub syncs: AtomicU64,
    /// The background check of the log's chain after start-up: 0 running, 1 sound, or the
    /// number of the first damaged record plus one.
    pub log_check: AtomicU64,
    /// The first record the log keeps (records before it were dropped behind a checkpoint).
    pub log_first: AtomicU64,
    /// Records are due to be dropped: the ticker asks the writer for a batch even when no
    /// client writes, so that dropping goes on.
    pub drop_pending: AtomicBool,
    /// Checkpoints made since start, and the log position of the last one.
    pub checkpoints: AtomicU64,
    pub checkpoint_len: AtomicU64,
    /// Readers of old records beside the writer (a check, a backup, the background chain check):
    /// while any holds, the writer drops no record and removes no old snapshot
    /// ([`StoreHealth::hold_drops`]).
    /// A mutex, so that a hold cannot be taken while a drop is under way.
    drop_holds: std::sync::Mutex<u64>,
    /// A shared store (several nodes on PostgreSQL): its database could not be reached at the
    /// last attempt, or this node's state must be loaded again (a commit failed after its
    /// batch was applied in memory). Every request but the operational ones is answered
    /// `unavailable` meanwhile.
    db_down: AtomicBool,
    /// A shared store: this node holds the lead (forwarding, replication, checkpoints).
    leading: AtomicBool,
    /// A shared store: times this node loaded its state again because another node had
    /// appended to the log.
    pub catch_ups: AtomicU64,
    /// Of those, the ones that loaded the whole state (the journal did not cover the records).
    pub full_loads: AtomicU64,
    /// The number of the last record this node's writer knows durable (appended or caught up).
    pub log_len: AtomicU64,
}

/// Keeps the log's records and snapshots from being dropped while it lives.
#[derive(Debug)]
pub struct DropHold(std::sync::Arc<StoreHealth>);

impl Drop for DropHold {
    fn drop(&mut self) {
        let mut n = self.0.drop_holds.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
    }
}

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth {
            writable: AtomicBool::new(true),
            low_space: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            low_space_refusals: AtomicU64::new(0),
            free_bytes: AtomicU64::new(u64::MAX),
            syncs: AtomicU64::new(0),
            log_check: AtomicU64::new(0),
            log_first: AtomicU64::new(1),
            drop_pending: AtomicBool::new(false),
            checkpoints: AtomicU64::new(0),
            checkpoint_len: AtomicU64::new(0),
            drop_holds: std::sync::Mutex::new(0),
            db_down: AtomicBool::new(false),
            leading: AtomicBool::new(true),
            catch_ups: AtomicU64::new(0),
            full_loads: AtomicU64::new(0),
            log_len: AtomicU64::new(0),
        }
    }
}

impl StoreHealth {
    /// A store that could not be opened for writing at start: writes are refused until the
    /// writer reopens it.
    pub fn down() -> StoreHealth {
        let h = StoreHealth::default();
        h.writable.store(false, Ordering::SeqCst);
        h
    }

    /// True while the store takes writes.
    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::SeqCst)
    }

    /// True while free space was last seen below `limits.store_free_bytes_min`.
    pub fn low_space(&self) -> bool {
        self.low_space.load(Ordering::SeqCst)
    }

    /// True while writes are accepted: the store takes them and free space is above the
    /// reserve.
    pub fn takes_writes(&self) -> bool {
        self.writable() && !self.low_space()
    }

    /// Holds records and snapshots where they are until the hold is dropped (the writer
    /// drops nothing meanwhile): a check or a backup reads them beside the writer.
    /// Waits while records are being dropped.
    pub fn hold_drops(self: &std::sync::Arc<Self>) -> DropHold {
        *self.drop_holds.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        DropHold(self.clone())
    }

    /// When no hold is taken: a guard under which none can be (the writer drops records while
    /// it lives).
    pub fn drops_free(&self) -> Option<std::sync::MutexGuard<'_, u64>> {
        let g = self.drop_holds.lock().unwrap_or_else(|p| p.into_inner());
        (*g == 0).then_some(g)
    }

    /// True while a shared store's database cannot be reached, or this node's state waits to
    /// be loaded again from it (see `db_down`).
    pub fn db_down(&self) -> bool {
        self.db_down.load(Ordering::SeqCst)
    }

    pub(super) fn set_db_down(&self, v: bool) {
        self.db_down.store(v, Ordering::SeqCst);
    }

    /// True while this node runs the duties that must run once (always, on a store of one
    /// process).
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    pub(super) fn set_leading(&self, v: bool) {
        self.leading.store(v, Ordering::SeqCst);
    }

    pub(super) fn set_writable(&self, v: bool) {
        self.writable.store(v, Ordering::SeqCst);
    }

    pub(super) fn set_low_space(&self, v: bool) {
        self.low_space.store(v, Ordering::SeqCst);
    }
}
