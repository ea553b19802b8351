//! The durable event log: a small [`Store`] trait, its redb implementation, and the hash chain
//! that [`EventLog`] keeps over the records.
//!
//! Why redb and not sled: the contract is "a 2xx answer means the entry is on disk". sled's
//! `flush` uses `sync_file_range`, which does not make writes durable (sled issue #1452, open)
//! and crash-consistency testing found flushed data lost (sled issues #1077, #1229). redb's
//! `Durability::Immediate` commit writes checksummed pages, flips the commit slot and calls
//! fsync before `commit` returns, which is the contract. The rest of the relay sees only
//! [`Store`], so the engine can change again.
//!
//! Records are numbered from 1. Each stored value is `chain_hash(32) || payload`, where
//! `chain_hash = BLAKE3("formica/relay-log/v1\0" || previous chain_hash || seq (u64 BE) || payload)`
//! and the previous hash of record 1 is 32 zero bytes. [`EventLog::open`] checks every record,
//! so a flipped byte, a missing record or a reordered one stops the relay with the record's number.

//!
//! The layer below everything else: it owns the storage engine (only this folder touches redb)
//! and imports nothing else of the relay.

use std::sync::Arc;

mod backend;
pub mod datadir;
pub mod log;
mod mem;
mod redb;
pub mod tables;

pub use self::backend::StoreFaults;
pub use self::log::{EventLog, LogPosition};
pub use self::mem::MemStore;
pub use self::redb::RedbStore;
pub use self::tables::{Changes, Row, Rows, Table};

/// What `scan` calls for each record: its number and bytes.
pub type Visit<'a> = dyn FnMut(u64, &[u8]) -> Result<(), StoreError> + 'a;

/// What `range` calls for each row of a table: its key and value; `false` stops the range.
pub type RowVisit<'a> = dyn FnMut(&[u8], &[u8]) -> bool + 'a;

/// Why the store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("storage is full: {0}")]
    Full(String),
    #[error("storage I/O error: {0}")]
    Io(String),
    /// `seq` 0 means the damage is in the file as a whole, not in one record.
    #[error("{}", if *seq == 0 { format!("the event log is damaged: {reason}") } else { format!("the event log is damaged at record {seq}: {reason}") })]
    Corrupt { seq: u64, reason: String },
}

/// The storage engine behind the event log: an append-only sequence of byte records, and the
/// projection tables ([`Table`]) that change with them.
pub trait Store: Send + Sync + 'static {
    /// Appends `records` after the last one and applies the sets of `changes` to the tables, in
    /// order, all or none, and returns only once they are on disk (fsync). `records` may be
    /// empty (a rebuild writes projections only).
    fn commit(
        &self,
        first_seq: u64,
        records: &[Vec<u8>],
        changes: &[&Changes],
    ) -> Result<(), StoreError>;
    /// [`commit`](Self::commit) of records alone.
    fn append(&self, first_seq: u64, records: &[Vec<u8>]) -> Result<(), StoreError> {
        self.commit(first_seq, records, &[])
    }
    /// One row of a table, as last committed.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Calls `f` with each row of `table` whose key is at least `from` and below `to` (every
    /// key from `from` when `to` is `None`), in key order, until `f` returns false.
    fn range(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut RowVisit<'_>,
    ) -> Result<(), StoreError>;
    /// Empties every projection table ([`Table::is_projection`]), durably: a rebuild starts here.
    fn clear_projections(&self) -> Result<(), StoreError>;
    /// Calls `f` with each record from `from` to `to` (1-based, both included) in order; `to`
    /// may be past the end (`u64::MAX`: every record from `from`).
    fn scan(&self, from: u64, to: u64, f: &mut Visit<'_>) -> Result<(), StoreError>;
    /// Number of records.
    fn len(&self) -> Result<u64, StoreError>;
    /// True when the store holds no record.
    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
    /// Opens the engine again after a failed write (a full disk): `Ok` once it can write again.
    fn reopen(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// A view of what the store holds that only reads and writes nothing, also while the store
    /// refuses writes: the writer rebuilds its state from it after a failed write.
    fn read_only(&self) -> Result<Arc<dyn Store>, StoreError>;
    /// Removes every record after the first `len`, durably: what a failed write may have left.
    fn truncate(&self, len: u64) -> Result<(), StoreError>;
    /// Free space on the store's file system, when it lives on one.
    fn free_bytes(&self) -> Option<u64> {
        None
    }
    /// Syncs to disk made so far, when the engine counts them.
    fn syncs(&self) -> Option<u64> {
        None
    }
}

/// Makes the entries of directory `dir` durable (a file created, renamed or removed in it): a
/// file's own fsync does not cover its name.
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

pub(crate) fn io<E: std::fmt::Display>(e: E) -> StoreError {
    let s = e.to_string();
    // ENOSPC and EDQUOT surface as I/O errors; the relay answers them with storage_full.
    if s.contains("No space left") || s.contains("os error 28") || s.contains("Disk quota") {
        StoreError::Full(s)
    } else {
        StoreError::Io(s)
    }
}
