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

use redb::{Database, ReadableTableMetadata, TableDefinition};
use std::path::Path;
use std::sync::Arc;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const CHAIN_TAG: &[u8] = b"formica/relay-log/v1\0";

/// What `scan` calls for each record: its number and bytes.
pub type Visit<'a> = dyn FnMut(u64, &[u8]) -> Result<(), StoreError> + 'a;

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

/// The storage engine behind the event log: an append-only sequence of byte records.
pub trait Store: Send + Sync + 'static {
    /// Appends `records` after the last one, all or none, and returns only once they are on
    /// disk (fsync).
    fn append(&self, first_seq: u64, records: &[Vec<u8>]) -> Result<(), StoreError>;
    /// Calls `f` with each record from `from` (1-based) in order.
    fn scan(&self, from: u64, f: &mut Visit<'_>) -> Result<(), StoreError>;
    /// Number of records.
    fn len(&self) -> Result<u64, StoreError>;
    /// True when the store holds no record.
    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}

fn io<E: std::fmt::Display>(e: E) -> StoreError {
    let s = e.to_string();
    // ENOSPC and EDQUOT surface as I/O errors; the relay answers them with storage_full.
    if s.contains("No space left") || s.contains("os error 28") || s.contains("Disk quota") {
        StoreError::Full(s)
    } else {
        StoreError::Io(s)
    }
}

/// The redb store: one table, key = record number.
pub struct RedbStore {
    db: Database,
    durability: redb::Durability,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbStore")
    }
}

impl RedbStore {
    /// Opens or creates `path`. A damaged file is refused with the engine's message.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        Self::open_with(path, false)
    }

    /// Opens with fsync relaxed (redb `Durability::Eventual`) when `unsafe_relaxed_fsync` is
    /// set. This breaks the durability contract and exists only so that benchmarks can measure
    /// what fsync costs; the relay refuses it unless started with the flag whose name says so.
    pub fn open_with(path: &Path, unsafe_relaxed_fsync: bool) -> Result<RedbStore, StoreError> {
        // redb 2 answers some damage (a truncated file) with a panic instead of an error; a
        // damaged file must be reported, not crash the process with a backtrace.
        let opened = std::panic::catch_unwind(|| Database::create(path));
        let db = match opened {
            Ok(r) => r.map_err(|e| StoreError::Corrupt {
                seq: 0,
                reason: format!("cannot open {}: {e}", path.display()),
            })?,
            Err(p) => {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                return Err(StoreError::Corrupt {
                    seq: 0,
                    reason: format!(
                        "{} is damaged (truncated or overwritten): {what}",
                        path.display()
                    ),
                });
            }
        };
        // Create the table only if it is missing, so that a store that is only being checked
        // (or is about to be refused as damaged) gets no transaction committed to it. Any other
        // error reading it is damage. (redb itself still marks the file as open in its header
        // and clears the mark on close.)
        let missing = match db.begin_read().map_err(io)?.open_table(LOG) {
            Ok(_) => false,
            Err(redb::TableError::TableDoesNotExist(_)) => true,
            Err(e) => {
                return Err(StoreError::Corrupt {
                    seq: 0,
                    reason: format!("cannot read the log table of {}: {e}", path.display()),
                })
            }
        };
        if missing {
            let txn = db.begin_write().map_err(io)?;
            txn.open_table(LOG).map_err(io)?;
            txn.commit().map_err(io)?;
        }
        let durability = if unsafe_relaxed_fsync {
            redb::Durability::Eventual
        } else {
            redb::Durability::Immediate
        };
        Ok(RedbStore { db, durability })
    }
}

impl Store for RedbStore {
    fn append(&self, first_seq: u64, records: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(io)?;
        txn.set_durability(self.durability);
        {
            let mut t = txn.open_table(LOG).map_err(io)?;
            for (i, r) in records.iter().enumerate() {
                t.insert(first_seq + i as u64, r.as_slice()).map_err(io)?;
            }
        }
        txn.commit().map_err(io)
    }

    fn scan(&self, from: u64, f: &mut Visit<'_>) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let t = txn.open_table(LOG).map_err(io)?;
        for item in t.range(from..).map_err(io)? {
            let (k, v) = item.map_err(|e| StoreError::Corrupt {
                seq: 0,
                reason: e.to_string(),
            })?;
            f(k.value(), v.value())?;
        }
        Ok(())
    }

    fn len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let t = txn.open_table(LOG).map_err(io)?;
        t.len().map_err(io)
    }
}

fn chain(prev: &[u8; 32], seq: u64, payload: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(CHAIN_TAG);
    h.update(prev);
    h.update(&seq.to_be_bytes());
    h.update(payload);
    *h.finalize().as_bytes()
}

/// The hash-chained log over a [`Store`]. Not thread-safe by itself: the relay's single writer
/// owns it.
pub struct EventLog {
    store: Arc<dyn Store>,
    len: u64,
    head: [u8; 32],
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventLog {{ len: {} }}", self.len)
    }
}

impl EventLog {
    /// Opens the log, checking every record's number and chain hash, and hands each payload to
    /// `f` in order (this is how projections are rebuilt).
    pub fn open(store: Arc<dyn Store>, f: &mut Visit<'_>) -> Result<EventLog, StoreError> {
        let mut expect = 1u64;
        let mut head = [0u8; 32];
        store.scan(1, &mut |seq, value| {
            if seq != expect {
                return Err(StoreError::Corrupt {
                    seq: expect,
                    reason: format!("record {expect} is missing (next present is {seq})"),
                });
            }
            if value.len() < 32 {
                return Err(StoreError::Corrupt {
                    seq,
                    reason: "record shorter than its chain hash".into(),
                });
            }
            let (stored, payload) = value.split_at(32);
            let h = chain(&head, seq, payload);
            if stored != h {
                return Err(StoreError::Corrupt {
                    seq,
                    reason: "chain hash mismatch (the record or one before it was altered)".into(),
                });
            }
            f(seq, payload).map_err(|e| match e {
                StoreError::Corrupt { reason, .. } => StoreError::Corrupt { seq, reason },
                other => other,
            })?;
            head = h;
            expect += 1;
            Ok(())
        })?;
        let len = expect - 1;
        let stored_len = store.len()?;
        if stored_len != len {
            return Err(StoreError::Corrupt {
                seq: len + 1,
                reason: format!("the store holds {stored_len} records but only {len} form a chain from record 1"),
            });
        }
        Ok(EventLog { store, len, head })
    }

    /// Appends payloads durably; returns the number of the first.
    pub fn append(&mut self, payloads: &[Vec<u8>]) -> Result<u64, StoreError> {
        let first = self.len + 1;
        let mut head = self.head;
        let mut records = Vec::with_capacity(payloads.len());
        for (i, p) in payloads.iter().enumerate() {
            head = chain(&head, first + i as u64, p);
            let mut r = Vec::with_capacity(32 + p.len());
            r.extend_from_slice(&head);
            r.extend_from_slice(p);
            records.push(r);
        }
        self.store.append(first, &records)?;
        self.len += payloads.len() as u64;
        self.head = head;
        Ok(first)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chain hash of the last record (zeros for an empty log).
    pub fn head(&self) -> [u8; 32] {
        self.head
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

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
    fn scan(&self, from: u64, f: &mut Visit<'_>) -> Result<(), StoreError> {
        let r = self
            .records
            .lock()
            .map_err(|_| StoreError::Io("poisoned".into()))?
            .clone();
        for (i, rec) in r.iter().enumerate().skip(from.saturating_sub(1) as usize) {
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
}
