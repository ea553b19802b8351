//! The redb store: one table, key = record number, each commit durable before it returns
//! (`Durability::Immediate`) unless the benchmark-only relaxed mode is asked for.

use super::{io, Store, StoreError, Visit};
use redb::{Database, ReadableTableMetadata, TableDefinition};
use std::path::Path;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

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
