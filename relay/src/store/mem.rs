//! An in-memory [`Store`] for tests, with fault injection (failing appends) and a pause that
//! holds the writer in its "fsync".

use super::{Store, StoreError, Visit};
use std::sync::Arc;

/// A store in memory, for tests and for the fault-injection double.
#[derive(Debug, Default)]
pub struct MemStore {
    records: std::sync::Mutex<Vec<Vec<u8>>>,
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
    fn append(&self, first_seq: u64, records: &[Vec<u8>]) -> Result<(), StoreError> {
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
        if r.len() as u64 + 1 != first_seq {
            return Err(StoreError::Io("append out of order".into()));
        }
        r.extend(records.iter().cloned());
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
        Ok(Arc::new(MemStore {
            records: std::sync::Mutex::new(records),
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
