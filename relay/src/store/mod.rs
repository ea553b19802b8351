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
pub mod postgres;
mod redb;
mod redb_damage;
mod redb_upgrade;
mod shared_mem;
pub mod snapshot;
pub mod tables;

pub use self::backend::StoreFaults;
pub use self::log::{EventLog, LogPosition};
pub use self::mem::MemStore;
pub use self::postgres::{PgConfig, PgStore};
pub use self::redb::RedbStore;
pub use self::shared_mem::SharedMem;
pub use self::tables::{Changes, Row, Rows, Table};

/// What `scan` calls for each record: its number and bytes.
pub type Visit<'a> = dyn FnMut(u64, &[u8]) -> Result<(), StoreError> + 'a;

/// What `range` calls for each row of a table: its key and value; `false` stops the range.
pub type RowVisit<'a> = dyn FnMut(&[u8], &[u8]) -> bool + 'a;

/// What `projections` calls for each row of every projection table: table, key, value.
pub type TableVisit<'a> = dyn FnMut(Table, &[u8], &[u8]) -> Result<(), StoreError> + 'a;

/// Where the kept log starts once its oldest records were dropped behind a checkpoint
/// (`engine::checkpoint`): the number of its first record, and the chain hash of the record
/// before it, which the first kept record's chain hash continues. A log that never dropped
/// anything starts at record 1 after 32 zero bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBase {
    pub first: u64,
    pub prev: [u8; 32],
}

impl Default for LogBase {
    fn default() -> Self {
        LogBase {
            first: 1,
            prev: [0; 32],
        }
    }
}

impl LogBase {
    /// 8 bytes of `first` (BE) then `prev`: how stores keep it.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.first.to_be_bytes().to_vec();
        v.extend_from_slice(&self.prev);
        v
    }

    pub fn decode(v: &[u8]) -> Result<LogBase, StoreError> {
        let bad = || StoreError::Corrupt {
            seq: 0,
            reason: "the log base (where the kept log starts) is not 40 bytes".into(),
        };
        if v.len() != 40 {
            return Err(bad());
        }
        let first = u64::from_be_bytes(v[..8].try_into().map_err(|_| bad())?);
        let prev: [u8; 32] = v[8..].try_into().map_err(|_| bad())?;
        if first == 0 {
            return Err(bad());
        }
        Ok(LogBase { first, prev })
    }
}

/// Why the store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("storage is full: {0}")]
    Full(String),
    #[error("storage I/O error: {0}")]
    Io(String),
    /// The database a shared store lives in cannot be reached now (PostgreSQL down or
    /// restarting, the connection lost): nothing was written, or, for a commit whose answer was
    /// lost, the next turn finds out (see [`Store::begin_turn`]). Answered as `unavailable`.
    #[error("the database cannot be reached: {0}")]
    Unavailable(String),
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
    /// The number of the last record (0: none was ever appended). Records before
    /// [`base`](Self::base)`.first` may have been dropped, so this is not always their count.
    fn len(&self) -> Result<u64, StoreError>;
    /// True when the store holds no record.
    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
    /// Where the kept log starts ([`LogBase::default`] until records are dropped).
    fn base(&self) -> Result<LogBase, StoreError>;
    /// Removes every record before `base.first` and records `base` as where the log starts,
    /// all or none, durably. `base.first` is at most one past the last record.
    fn drop_before(&self, base: LogBase) -> Result<(), StoreError>;
    /// Calls `f` with every row of every projection table, in table then key order, all from
    /// one consistent read: the tables as one commit left them (a checkpoint's snapshot).
    fn projections(&self, f: &mut TableVisit<'_>) -> Result<(), StoreError>;
    /// Opens the engine again after a failed write (a full disk): `Ok` once it can write again.
    fn reopen(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// A view of what the store holds that only reads and writes nothing, also while the store
    /// refuses writes: the writer rebuilds its state from it after a failed write.
    fn read_only(&self) -> Result<Arc<dyn Store>, StoreError>;
    /// Removes every record after the first `len`, durably: what a failed write may have left.
    fn truncate(&self, len: u64) -> Result<(), StoreError>;
    /// The folder of this store's checkpoint snapshots ([`snapshot`]), when it keeps them
    /// (a store in files does; one in memory only when a test gives it a folder).
    fn snapshot_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// Free space on the store's file system, when it lives on one.
    fn free_bytes(&self) -> Option<u64> {
        None
    }
    /// Syncs to disk made so far, when the engine counts them.
    fn syncs(&self) -> Option<u64> {
        None
    }

    // ---- several relay processes on one store (PostgreSQL; ARCHITECTURE.md "Nodes") ----

    /// Whether other relay processes (nodes of the same relay) may write to this store. The
    /// methods below matter only then; a store of one process keeps their defaults.
    fn shared(&self) -> bool {
        false
    }
    /// Waits for this process's turn to write, which no other node holds at the same time, and
    /// returns the number of the last record then. The turn lasts until the next
    /// [`commit`](Self::commit) (which ends it, committed or not) or [`end_turn`](Self::end_turn).
    /// When the number is past what this process appended, another node wrote in between: the
    /// writer loads its state again before it decides anything. Only the writer thread calls it.
    fn begin_turn(&self) -> Result<u64, StoreError> {
        self.len()
    }
    /// Ends a turn that commits nothing.
    fn end_turn(&self) {}
    /// Inserts a row of [`Table::Admission`] (a request nonce, a proof-of-work challenge) unless
    /// one with that key is there, durably, before it returns: `Ok(false)` when it was there.
    /// `expires_ms` is when the row may go (a shared store removes expired rows itself). Only
    /// shared stores are asked: the others keep admission rows through the writer's commits.
    fn claim(&self, key: &[u8], value: &[u8], expires_ms: i64) -> Result<bool, StoreError> {
        let _ = (key, value, expires_ms);
        Err(StoreError::Io("this store is not shared".into()))
    }
    /// Whether this process holds the lead among the nodes: the one that runs the duties that
    /// must run once (forwarding to peers, replication, checkpoints), taken when no other node
    /// holds it and kept while this process's connection lives. A store of one process always
    /// leads.
    fn lead(&self) -> Result<bool, StoreError> {
        Ok(true)
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
