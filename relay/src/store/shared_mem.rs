//! [`SharedMem`]: several handles on one [`MemStore`], each standing for one node of a relay
//! that shares its store, with the store's side of what nodes need (one writer's turn at a
//! time, claimed admission rows, the lead), as PostgreSQL gives them. For tests of the engine's
//! node logic that run without a database; the PostgreSQL store passes the same tests.

use super::{Changes, LogBase, MemStore, RowVisit, Store, StoreError, Table, TableVisit, Visit};
use std::sync::{Arc, Condvar, Mutex};

#[derive(Debug, Default)]
struct Shared {
    store: MemStore,
    /// The node whose turn it is.
    turn: Mutex<Option<u64>>,
    turn_free: Condvar,
    /// The node that leads.
    lead: Mutex<Option<u64>>,
    nodes: Mutex<u64>,
    /// While true, every call fails as if the database could not be reached.
    down: std::sync::atomic::AtomicBool,
}

/// Per handle: reads of ranges still to fail (as a lost connection would).
#[derive(Debug, Default)]
struct Faults {
    ranges: std::sync::atomic::AtomicU32,
}

/// One node's handle on a store in memory shared by several nodes.
#[derive(Debug)]
pub struct SharedMem {
    shared: Arc<Shared>,
    node: u64,
    faults: Faults,
}

impl SharedMem {
    /// A new shared store and the first node's handle on it.
    pub fn new() -> SharedMem {
        let shared = Arc::new(Shared::default());
        *shared.nodes.lock().unwrap_or_else(|p| p.into_inner()) = 1;
        SharedMem {
            shared,
            node: 1,
            faults: Faults::default(),
        }
    }

    /// Another node's handle on the same store.
    pub fn node(&self) -> SharedMem {
        let mut n = self.shared.nodes.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        SharedMem {
            shared: self.shared.clone(),
            node: *n,
            faults: Faults::default(),
        }
    }

    /// Makes every call of every node fail as if the database were down (or back).
    pub fn set_down(&self, down: bool) {
        self.shared
            .down
            .store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes this handle's next `n` reads of a range fail as if the database were out of reach.
    pub fn fail_ranges(&self, n: u32) {
        self.faults
            .ranges
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    fn up(&self) -> Result<(), StoreError> {
        if self.shared.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err(StoreError::Unavailable(
                "the shared test store is down".into(),
            ))
        } else {
            Ok(())
        }
    }

    fn release_turn(&self) {
        let mut t = self.shared.turn.lock().unwrap_or_else(|p| p.into_inner());
        if *t == Some(self.node) {
            *t = None;
            self.shared.turn_free.notify_all();
        }
    }

    fn take_turn(&self) {
        let mut t = self.shared.turn.lock().unwrap_or_else(|p| p.into_inner());
        while t.is_some_and(|n| n != self.node) {
            t = self
                .shared
                .turn_free
                .wait(t)
                .unwrap_or_else(|p| p.into_inner());
        }
        *t = Some(self.node);
    }
}

impl Default for SharedMem {
    fn default() -> Self {
        SharedMem::new()
    }
}

impl Drop for SharedMem {
    /// A node that goes away ends its turn and its lead, as a closed connection does.
    fn drop(&mut self) {
        self.release_turn();
        let mut l = self.shared.lead.lock().unwrap_or_else(|p| p.into_inner());
        if *l == Some(self.node) {
            *l = None;
        }
    }
}

impl Store for SharedMem {
    fn commit(
        &self,
        first_seq: u64,
        records: &[Vec<u8>],
        changes: &[&Changes],
    ) -> Result<(), StoreError> {
        let in_turn =
            *self.shared.turn.lock().unwrap_or_else(|p| p.into_inner()) == Some(self.node);
        if !in_turn {
            self.take_turn();
        }
        let r = self.up().and_then(|()| {
            if !records.is_empty() && self.shared.store.len()? + 1 != first_seq {
                return Err(StoreError::Io(format!(
                    "append at {first_seq} is not after the last record"
                )));
            }
            self.shared.store.commit(first_seq, records, changes)
        });
        self.release_turn();
        r
    }
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.up()?;
        self.shared.store.get(table, key)
    }
    fn range(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut RowVisit<'_>,
    ) -> Result<(), StoreError> {
        self.up()?;
        let failing = self.faults.ranges.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| n.checked_sub(1),
        );
        if failing.is_ok() {
            return Err(StoreError::Unavailable("a read failed (test)".into()));
        }
        self.shared.store.range(table, from, to, f)
    }
    fn clear_projections(&self) -> Result<(), StoreError> {
        self.up()?;
        self.shared.store.clear_projections()
    }
    fn scan(&self, from: u64, to: u64, f: &mut Visit<'_>) -> Result<(), StoreError> {
        self.up()?;
        self.shared.store.scan(from, to, f)
    }
    fn len(&self) -> Result<u64, StoreError> {
        self.up()?;
        self.shared.store.len()
    }
    fn base(&self) -> Result<LogBase, StoreError> {
        self.up()?;
        self.shared.store.base()
    }
    fn drop_before(&self, base: LogBase) -> Result<(), StoreError> {
        self.up()?;
        self.shared.store.drop_before(base)
    }
    fn projections(&self, f: &mut TableVisit<'_>) -> Result<(), StoreError> {
        self.up()?;
        self.shared.store.projections(f)
    }
    fn read_only(&self) -> Result<Arc<dyn Store>, StoreError> {
        self.up()?;
        self.shared.store.read_only()
    }
    fn truncate(&self, len: u64) -> Result<(), StoreError> {
        self.up()?;
        self.shared.store.truncate(len)
    }
    fn shared(&self) -> bool {
        true
    }
    fn begin_turn(&self) -> Result<u64, StoreError> {
        self.up()?;
        self.take_turn();
        match self.shared.store.len() {
            Ok(n) => Ok(n),
            Err(e) => {
                self.release_turn();
                Err(e)
            }
        }
    }
    fn end_turn(&self) {
        self.release_turn();
    }
    fn claim(&self, key: &[u8], value: &[u8], _expires_ms: i64) -> Result<bool, StoreError> {
        self.up()?;
        // One lock over the check and the insert: the rows' own.
        let _t = self.shared.lead.lock().unwrap_or_else(|p| p.into_inner());
        if self.shared.store.get(Table::Admission, key)?.is_some() {
            return Ok(false);
        }
        let mut c = Changes::new();
        c.insert((Table::Admission, key.to_vec()), Some(value.to_vec()));
        self.shared.store.commit(0, &[], &[&c])?;
        Ok(true)
    }
    fn lead(&self) -> Result<bool, StoreError> {
        self.up()?;
        let mut l = self.shared.lead.lock().unwrap_or_else(|p| p.into_inner());
        if l.is_none() {
            *l = Some(self.node);
        }
        Ok(*l == Some(self.node))
    }
}
