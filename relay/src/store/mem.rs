//! An in-memory [`Store`] for tests, with fault injection (failing appends) and a pause that
//! holds the writer in its "fsync".

use super::{Changes, LogBase, RowVisit, Store, StoreError, Table, TableVisit, Visit};
use std::collections::BTreeMap;
use std::sync::Arc;

type Rows = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// A store in memory, for tests and for the fault-injection double.
#[derive(Debug, Default)]
pub struct MemStore {
    /// Records from `base.first` on.
    records: std::sync::Mutex<Vec<Vec<u8>>>,
    base: std::sync::Mutex<LogBase>,
    rows: std::sync::Mutex<Rows>,
    /// When set, appends fail with this error (disk full, I/O error).
    pub fail_appends: std::sync::Mutex<Option<StoreError>>,
    /// While true, appends wait (as if the disk were slow) until [`MemStore::resume`].
    paused: std::sync::Mutex<bool>,
    resumed: std::sync::Condvar,
    /// True while an append is waiting because of [`MemStore::pause`].
    pub held: std::sync::atomic::AtomicBool,
    /// Where checkpoint snapshots go (none: no checkpoints).
    snapshots: Option<std::path::PathBuf>,
}

impl MemStore {
    /// A store whose checkpoint snapshots go to `dir`.
    pub fn with_snapshot_dir(dir: std::path::PathBuf) -> MemStore {
        MemStore {
            snapshots: Some(dir),
            ..MemStore::default()
        }
    }
    /// Makes appends wait until [`resume`](Self::resume): tests hold the writer in its fsync.
    pub fn pause(&self) {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }
    pub fn resume(&self) {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.resumed.notify_all();
    }
}

impl Store for MemStore {
    fn commit(
        &self,
        first_seq: u64,
        records: &[Vec<u8>],
        changes: &[&Changes],
    ) -> Result<(), StoreError> {
        {
            use std::sync::atomic::Ordering;
            let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
            while *paused {
                self.held.store(true, Ordering::SeqCst);
                paused = self.resumed.wait(paused).unwrap_or_else(|p| p.into_inner());
            }
            self.held.store(false, Ordering::SeqCst);
        }
        if let Some(e) = self
            .fail_appends
            .lock()
            .map_err(|_| StoreError::Io("poisoned".into()))?
            .clone()
        {
            return Err(e);
        }
        let mut r = self
            .records
            .lock()
            .map_err(|_| StoreError::Io("poisoned".into()))?;
        let first = self.base.lock().unwrap_or_else(|p| p.into_inner()).first;
        if !records.is_empty() && first + r.len() as u64 != first_seq {
            return Err(StoreError::Io("append out of order".into()));
        }
        r.extend(records.iter().cloned());
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        for ((t, k), v) in changes.iter().flat_map(|c| c.iter()) {
            match v {
                Some(v) => rows.insert((*t, k.clone()), v.clone()),
                None => rows.remove(&(*t, k.clone())),
            };
        }
        Ok(())
    }
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        Ok(rows.get(&(table, key.to_vec())).cloned())
    }
    fn range(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut RowVisit<'_>,
    ) -> Result<(), StoreError> {
        use std::ops::Bound;
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let hi = match to {
            Some(t) => Bound::Excluded((table, t.to_vec())),
            None => match Table::ALL.iter().position(|x| *x == table) {
                Some(i) if i + 1 < Table::ALL.len() => {
                    Bound::Excluded((Table::ALL[i + 1], Vec::new()))
                }
                _ => Bound::Unbounded,
            },
        };
        for ((t, k), v) in rows.range((Bound::Included((table, from.to_vec())), hi)) {
            if *t != table || !f(k, v) {
                break;
            }
        }
        Ok(())
    }
    fn clear_projections(&self) -> Result<(), StoreError> {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.retain(|(t, _), _| !t.is_projection());
        Ok(())
    }
    fn scan(&self, from: u64, to: u64, f: &mut Visit<'_>) -> Result<(), StoreError> {
        let first = self.base.lock().unwrap_or_else(|p| p.into_inner()).first;
        let r = self
            .records
            .lock()
            .map_err(|_| StoreError::Io("poisoned".into()))?
            .clone();
        let skip = from.saturating_sub(first) as usize;
        for (i, rec) in r.iter().enumerate().skip(skip) {
            let seq = first + i as u64;
            if seq > to {
                break;
            }
            f(seq, rec)?;
        }
        Ok(())
    }
    fn len(&self) -> Result<u64, StoreError> {
        let first = self.base.lock().unwrap_or_else(|p| p.into_inner()).first;
        Ok(first - 1
            + self
                .records
                .lock()
                .map_err(|_| StoreError::Io("poisoned".into()))?
                .len() as u64)
    }
    fn base(&self) -> Result<LogBase, StoreError> {
        Ok(*self.base.lock().unwrap_or_else(|p| p.into_inner()))
    }
    fn drop_before(&self, base: LogBase) -> Result<(), StoreError> {
        let mut r = self
            .records
            .lock()
            .map_err(|_| StoreError::Io("poisoned".into()))?;
        let mut b = self.base.lock().unwrap_or_else(|p| p.into_inner());
        let last = b.first - 1 + r.len() as u64;
        if base.first > last + 1 {
            return Err(StoreError::Io(format!(
                "cannot drop records up to {}: the log ends before",
                base.first - 1
            )));
        }
        let n = base.first.saturating_sub(b.first) as usize;
        let n = n.min(r.len());
        r.drain(..n);
        *b = base;
        Ok(())
    }
    fn projections(&self, f: &mut TableVisit<'_>) -> Result<(), StoreError> {
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for ((t, k), v) in rows.iter().filter(|((t, _), _)| t.is_projection()) {
            f(*t, k, v)?;
        }
        Ok(())
    }
    fn reopen(&self) -> Result<(), StoreError> {
        // A test's failing appends make the store refuse until they are switched off.
        match self
            .fail_appends
            .lock()
            .map_err(|_| StoreError::Io("poisoned".into()))?
            .clone()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
    fn read_only(&self) -> Result<Arc<dyn Store>, StoreError> {
        let records = self
            .records
            .lock()
            .map_err(|_| StoreError::Io("poisoned".into()))?
            .clone();
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let base = *self.base.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Arc::new(MemStore {
            records: std::sync::Mutex::new(records),
            base: std::sync::Mutex::new(base),
            snapshots: self.snapshots.clone(),
            rows: std::sync::Mutex::new(rows),
            ..MemStore::default()
        }))
    }
    fn snapshot_dir(&self) -> Option<std::path::PathBuf> {
        self.snapshots.clone()
    }
    fn truncate(&self, len: u64) -> Result<(), StoreError> {
        let first = self.base.lock().unwrap_or_else(|p| p.into_inner()).first;
        self.records
            .lock()
            .map_err(|_| StoreError::Io("poisoned".into()))?
            .truncate(len.saturating_sub(first - 1) as usize);
        Ok(())
    }
}
