//! An in-memory [`Store`] for tests, with fault injection (failing appends) and a pause that
//! holds the writer in its "fsync".

use super::{Changes, RowVisit, Store, StoreError, Table, Visit};
use std::collections::BTreeMap;
use std::sync::Arc;

type Rows = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// A store in memory, for tests and for the fault-injection double.
#[derive(Debug, Default)]
pub struct MemStore {
    records: std::sync::Mutex<Vec<Vec<u8>>>,
    rows: std::sync::Mutex<Rows>,
    /// When set, appends fail with this error (disk full, I/O error).
    pub fail_appends: std::sync::Mutex<Option<StoreError>>,
    /// While true, appends wait (as if the disk were slow) until [`MemStore::resume`].
    paused: std::sync::Mutex<bool>,
    resumed: std::sync::Condvar,
    /// True while an append is waiting because of [`MemStore::pause`].
    pub held: std::sync::atomic::AtomicBool,
}

impl MemStore {
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
        if !records.is_empty() && r.len() as u64 + 1 != first_seq {
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
        let r = self
            .records
            .lock()
            .map_err(|_| StoreError::Io("poisoned".into()))?
            .clone();
        for (i, rec) in r.iter().enumerate().skip(from.saturating_sub(1) as usize) {
            if i as u64 + 1 > to {
                break;
            }
            f(i as u64 + 1, rec)?;
        }
        Ok(())
    }
    fn len(&self) -> Result<u64, StoreError> {
        Ok(self
            .records
            .lock()
            .map_err(|_| StoreError::Io("poisoned".into()))?
            .len() as u64)
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
        Ok(Arc::new(MemStore {
            records: std::sync::Mutex::new(records),
            rows: std::sync::Mutex::new(rows),
            ..MemStore::default()
        }))
    }
    fn truncate(&self, len: u64) -> Result<(), StoreError> {
        self.records
            .lock()
            .map_err(|_| StoreError::Io("poisoned".into()))?
            .truncate(len as usize);
        Ok(())
    }
}
