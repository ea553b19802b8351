//! The redb store: one table, key = record number, each commit durable before it returns
//! (`Durability::Immediate`) unless the benchmark-only relaxed mode is asked for.
//!
//! A store is opened for writing ([`RedbStore::open`]) or only for reading
//! ([`RedbStore::open_read_only`], over [`OverlayStorage`]: the file is never written). After a
//! failed write (a full disk) redb refuses all further I/O on its handle; [`Store::reopen`]
//! drops it and opens the file again, which succeeds once the file system takes writes again.

use super::backend::{FileStorage, OverlayStorage, StoreFaults};
use super::redb_damage::{damage, quietly};
use super::redb_upgrade::{self, SharedOverlay};
use super::{io, Changes, LogBase, RowVisit, Store, StoreError, Table, TableVisit, Visit};
use redb::ReadableDatabase;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

/// Every projection table in one redb table, each under a one-byte prefix ([`tag`]): a commit
/// then changes two B-trees (this and the log) instead of one per projection table, which
/// measured a large part of a commit's cost. `admission` is a table of its own: a rebuild of
/// the projections drops this one whole and must leave it.
const PROJECTIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("projections");
const ADMISSION: TableDefinition<&[u8], &[u8]> = TableDefinition::new("admission");
/// One row, [`BASE_KEY`]: where the kept log starts ([`LogBase`]), once records were dropped.
const LOG_BASE: TableDefinition<&str, &[u8]> = TableDefinition::new("log_base");
const BASE_KEY: &str = "base";

/// The prefix of a projection table's rows in [`PROJECTIONS`]: part of the file format.
fn tag(t: Table) -> u8 {
    t.code()
}

/// Where `t`'s row `key` is: the redb table and the key in it.
fn place(
    t: Table,
    key: &[u8],
) -> (
    TableDefinition<'static, &'static [u8], &'static [u8]>,
    Vec<u8>,
) {
    if t == Table::Admission {
        return (ADMISSION, key.to_vec());
    }
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(tag(t));
    k.extend_from_slice(key);
    (PROJECTIONS, k)
}

/// Where the kept log starts, as `txn` sees it.
fn read_base(txn: &redb::ReadTransaction) -> Result<LogBase, StoreError> {
    let t = match txn.open_table(LOG_BASE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(LogBase::default()),
        Err(e) => return Err(io(e)),
    };
    // Bound before it is returned: the guard `get` gives borrows `t`, which goes first.
    let base = match t.get(BASE_KEY).map_err(io)? {
        Some(v) => LogBase::decode(v.value()),
        None => Ok(LogBase::default()),
    };
    base
}

/// A read error inside a table: the file's pages are damaged.
fn damaged(t: Table, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        seq: 0,
        reason: format!("projection table {}: {e}", t.name()),
    }
}

/// The redb store: one table, key = record number.
pub struct RedbStore {
    path: PathBuf,
    /// `None` after a failed write until [`Store::reopen`] succeeds.
    db: RwLock<Option<Database>>,
    /// While `db` is `None`: the file opened read-only (an overlay), so that what is durable
    /// can still be read. Dropped before the file is opened for writing again.
    fallback: RwLock<Option<Database>>,
    durability: redb::Durability,
    read_only: bool,
    /// True when opening found a file that was not closed cleanly (a crash, a kill) and redb
    /// recovered it.
    recovered: AtomicBool,
    syncs: Arc<AtomicU64>,
    faults: Arc<StoreFaults>,
    /// Bytes of the file's pages the engine may cache ([`CACHE_BYTES_DEFAULT`] unless the
    /// relay's `limits.store_cache_bytes` says otherwise).
    cache_bytes: usize,
    /// Every write transaction saves redb's allocator state and commits in two phases, so that
    /// opening the file after a crash needs no full repair (`limits.store_quick_repair`).
    quick_repair: bool,
}

/// The page cache of a store opened without a size: 64 MiB (the relay passes its
/// `limits.store_cache_bytes`; redb's own default is 1 GiB).
pub const CACHE_BYTES_DEFAULT: usize = 64 << 20;

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedbStore({})", self.path.display())
    }
}

impl RedbStore {
    /// Opens or creates `path` for reading and writing. A damaged file is refused; a file that
    /// was not closed cleanly is recovered (redb writes while it does).
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        Self::open_with(path, false)
    }

    /// Like [`open`](Self::open), with fsync skipped entirely (redb `Durability::None`) when
    /// `unsafe_relaxed_fsync` is set. That breaks the durability contract and exists only so that
    /// benchmarks can measure what fsync costs; the relay refuses it unless started with the flag
    /// whose name says so.
    pub fn open_with(path: &Path, unsafe_relaxed_fsync: bool) -> Result<RedbStore, StoreError> {
        Self::open_faulty(path, unsafe_relaxed_fsync, Arc::default())
    }

    /// Like [`open_with`](Self::open_with), with faults a test can switch on.
    pub fn open_faulty(
        path: &Path,
        unsafe_relaxed_fsync: bool,
        faults: Arc<StoreFaults>,
    ) -> Result<RedbStore, StoreError> {
        let store = RedbStore {
            faults,
            ..Self::closed(path, unsafe_relaxed_fsync)
        };
        let db = store.open_db()?;
        *store.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db);
        Ok(store)
    }

    /// [`open_with`](Self::open_with) with a page cache of `cache_bytes`, and quick repair
    /// (see [`RedbStore::write_txn`]) when `quick_repair` is set: what the serving relay opens.
    pub fn open_cached(
        path: &Path,
        unsafe_relaxed_fsync: bool,
        cache_bytes: usize,
        quick_repair: bool,
    ) -> Result<RedbStore, StoreError> {
        let mut store = Self::closed(path, unsafe_relaxed_fsync);
        store.cache_bytes = cache_bytes;
        store.quick_repair = quick_repair;
        let db = store.open_db()?;
        *store.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db);
        Ok(store)
    }

    /// The store at `path`, not opened yet: every use fails until [`Store::reopen`] succeeds
    /// (the relay starts on a file system too full to open the store for writing).
    pub fn closed(path: &Path, unsafe_relaxed_fsync: bool) -> RedbStore {
        RedbStore {
            path: path.to_path_buf(),
            db: RwLock::new(None),
            fallback: RwLock::new(None),
            durability: if unsafe_relaxed_fsync {
                redb::Durability::None
            } else {
                redb::Durability::Immediate
            },
            read_only: false,
            recovered: AtomicBool::new(false),
            syncs: Arc::default(),
            faults: Arc::default(),
            cache_bytes: CACHE_BYTES_DEFAULT,
            quick_repair: false,
        }
    }

    /// Opens an existing `path` only to read it: whatever redb writes while opening (its open
    /// mark, the recovery of a file that was not closed cleanly) stays in memory, and the file
    /// is left byte for byte as it was. Appending is refused.
    pub fn open_read_only(path: &Path) -> Result<RedbStore, StoreError> {
        let store = RedbStore {
            read_only: true,
            ..Self::closed(path, false)
        };
        let db = store.open_db()?;
        *store.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db);
        Ok(store)
    }

    /// True when opening found a file that was not closed cleanly and recovered it (in memory,
    /// for a store opened read-only).
    pub fn recovered(&self) -> bool {
        self.recovered.load(Ordering::Relaxed)
    }

    fn open_db(&self) -> Result<Database, StoreError> {
        self.open_db_as(self.read_only)
    }

    fn open_db_as(&self, read_only: bool) -> Result<Database, StoreError> {
        let path = &self.path;
        let file = if read_only {
            std::fs::File::open(path)
        } else {
            std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false),
                super::datadir::FILE_MODE,
            )
            .open(path)
        }
        .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
        let in_use = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                StoreError::Io(format!("{}: {e}", path.display()))
            } else {
                io(e)
            }
        };
        let recovered = Arc::new(AtomicBool::new(false));
        let flag = recovered.clone();
        let mut builder = Database::builder();
        builder.set_cache_size(self.cache_bytes);
        builder.set_repair_callback(move |_| flag.store(true, Ordering::Relaxed));
        let opened = if read_only {
            let overlay = SharedOverlay(Arc::new(OverlayStorage::new(file).map_err(in_use)?));
            let first = quietly(|| builder.create_with_backend(overlay.clone()));
            if let Ok(Err(redb::DatabaseError::UpgradeRequired(2))) = first {
                redb_upgrade::in_overlay(&overlay, path)?;
                quietly(|| builder.create_with_backend(overlay))
            } else {
                first
            }
        } else {
            let storage = |file| {
                FileStorage::new(file, self.syncs.clone(), self.faults.clone()).map_err(in_use)
            };
            let backend = storage(file)?;
            let first = quietly(|| builder.create_with_backend(backend));
            if let Ok(Err(redb::DatabaseError::UpgradeRequired(2))) = first {
                // The failed open closed the file (and its lock): redb 2 opens it to upgrade it.
                let backend = storage(redb_upgrade::in_place(path, self.cache_bytes)?)?;
                quietly(|| builder.create_with_backend(backend))
            } else {
                first
            }
        };
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
                if e.kind() != std::io::ErrorKind::InvalidData =>
            {
                return Err(io(e))
            }
            Ok(Err(e)) => return Err(damage(path, &e.to_string())),
            Err(p) => return Err(damage(path, &p)),
        };
        self.recovered
            .fetch_or(recovered.load(Ordering::Relaxed), Ordering::Relaxed);
        // Create the table only if it is missing (a new store); any other error reading it is
        // damage.
        let missing = quietly(|| match db.begin_read() {
            Ok(t) => match t.open_table(LOG) {
                Ok(_) => Ok(false),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(true),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        });
        let missing = match missing {
            Ok(Ok(m)) => m,
            Ok(Err(e)) | Err(e) => return Err(damage(path, &e)),
        };
        if missing {
            let txn = self.write_txn(&db)?;
            txn.open_table(LOG).map_err(io)?;
            txn.commit().map_err(io)?;
        }
        Ok(db)
    }

    /// A write transaction with this store's durability and, when asked, quick repair (the
    /// allocator state saved with the commit, in two phases: a crash needs no full repair).
    fn write_txn(&self, db: &Database) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = db.begin_write().map_err(io)?;
        txn.set_durability(self.durability).map_err(io)?;
        txn.set_quick_repair(self.quick_repair);
        Ok(txn)
    }

    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.db.read().unwrap_or_else(|p| p.into_inner());
        match db.as_ref() {
            Some(db) => f(db),
            None => Err(StoreError::Io(format!(
                "{} is closed after a failed write; it is reopened once it can take writes again",
                self.path.display()
            ))),
        }
    }

    /// Runs a read on the store, or, while it is closed after a failed write, on the file
    /// opened read-only: what was committed stays readable while writes are refused.
    fn read_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        {
            let db = self.db.read().unwrap_or_else(|p| p.into_inner());
            if let Some(db) = db.as_ref() {
                return f(db);
            }
        }
        {
            let fb = self.fallback.read().unwrap_or_else(|p| p.into_inner());
            if let Some(db) = fb.as_ref() {
                return f(db);
            }
        }
        let mut fb = self.fallback.write().unwrap_or_else(|p| p.into_inner());
        if fb.is_none() {
            *fb = Some(self.open_db_as(true)?);
        }
        match fb.as_ref() {
            Some(db) => f(db),
            None => Err(StoreError::Io("the store cannot be read".into())),
        }
    }

    /// Drops the handle after a failed write: redb refuses all I/O on it from then on.
    fn close_failed(&self) {
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Store for RedbStore {
    fn commit(
        &self,
        first_seq: u64,
        records: &[Vec<u8>],
        changes: &[&Changes],
    ) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::Io("this store was opened read-only".into()));
        }
        let r = self.with_db(|db| {
            let txn = self.write_txn(db)?;
            {
                let mut t = txn.open_table(LOG).map_err(io)?;
                for (i, r) in records.iter().enumerate() {
                    t.insert(first_seq + i as u64, r.as_slice()).map_err(io)?;
                }
            }
            {
                let mut proj = txn.open_table(PROJECTIONS).map_err(io)?;
                let mut adm = txn.open_table(ADMISSION).map_err(io)?;
                for ((table, k), v) in changes.iter().flat_map(|c| c.iter()) {
                    let key = place(*table, k).1;
                    let t = if *table == Table::Admission {
                        &mut adm
                    } else {
                        &mut proj
                    };
                    match v {
                        Some(v) => t.insert(key.as_slice(), v.as_slice()).map(|_| ()),
                        None => t.remove(key.as_slice()).map(|_| ()),
                    }
                    .map_err(io)?;
                }
            }
            txn.commit().map_err(io)
        });
        if matches!(r, Err(StoreError::Full(_)) | Err(StoreError::Io(_))) {
            self.close_failed();
        }
        r
    }

    fn scan(&self, from: u64, to: u64, f: &mut Visit<'_>) -> Result<(), StoreError> {
        if from > to {
            return Ok(());
        }
        self.read_db(|db| {
            let txn = db.begin_read().map_err(io)?;
            let t = txn.open_table(LOG).map_err(io)?;
            for item in t.range(from..=to).map_err(io)? {
                let (k, v) = item.map_err(|e| StoreError::Corrupt {
                    seq: 0,
                    reason: e.to_string(),
                })?;
                f(k.value(), v.value())?;
            }
            Ok(())
        })
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_db(|db| {
            let txn = db.begin_read().map_err(io)?;
            let (which, key) = place(table, key);
            let t = match txn.open_table(which) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(damaged(table, e)),
            };
            let v = t.get(key.as_slice()).map_err(|e| damaged(table, e))?;
            Ok(v.map(|v| v.value().to_vec()))
        })
    }

    fn range(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut RowVisit<'_>,
    ) -> Result<(), StoreError> {
        self.read_db(|db| {
            let txn = db.begin_read().map_err(io)?;
            let (which, lo) = place(table, from);
            let skip = usize::from(table != Table::Admission);
            let hi = match to {
                Some(to) => Some(place(table, to).1),
                // The end of this table's prefix (admission: its whole table).
                None if skip == 1 => Some(vec![tag(table) + 1]),
                None => None,
            };
            let t = match txn.open_table(which) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(damaged(table, e)),
            };
            let iter = match &hi {
                Some(hi) => t.range(lo.as_slice()..hi.as_slice()),
                None => t.range(lo.as_slice()..),
            }
            .map_err(|e| damaged(table, e))?;
            for item in iter {
                let (k, v) = item.map_err(|e| damaged(table, e))?;
                if !f(&k.value()[skip..], v.value()) {
                    break;
                }
            }
            Ok(())
        })
    }

    fn clear_projections(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::Io("this store was opened read-only".into()));
        }
        let r = self.with_db(|db| {
            let txn = self.write_txn(db)?;
            txn.delete_table(PROJECTIONS).map_err(io)?;
            txn.commit().map_err(io)
        });
        if matches!(r, Err(StoreError::Full(_)) | Err(StoreError::Io(_))) {
            self.close_failed();
        }
        r
    }

    fn len(&self) -> Result<u64, StoreError> {
        self.read_db(|db| {
            let txn = db.begin_read().map_err(io)?;
            let t = txn.open_table(LOG).map_err(io)?;
            let last = t.last().map_err(io)?.map(|(k, _)| k.value());
            match last {
                Some(l) => Ok(l),
                // Every record dropped (or none yet): the log ends just before its base.
                None => Ok(read_base(&txn)?.first - 1),
            }
        })
    }

    fn base(&self) -> Result<LogBase, StoreError> {
        self.read_db(|db| read_base(&db.begin_read().map_err(io)?))
    }

    fn drop_before(&self, base: LogBase) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::Io("this store was opened read-only".into()));
        }
        let r = self.with_db(|db| {
            let txn = self.write_txn(db)?;
            {
                let mut t = txn.open_table(LOG).map_err(io)?;
                let last = t.last().map_err(io)?.map(|(k, _)| k.value());
                if last.is_some_and(|l| base.first > l + 1) {
                    return Err(StoreError::Io(format!(
                        "cannot drop records up to {}: the log ends before",
                        base.first - 1
                    )));
                }
                t.retain_in(..base.first, |_, _| false).map_err(io)?;
                let mut b = txn.open_table(LOG_BASE).map_err(io)?;
                b.insert(BASE_KEY, base.encode().as_slice()).map_err(io)?;
            }
            txn.commit().map_err(io)
        });
        if matches!(r, Err(StoreError::Full(_)) | Err(StoreError::Io(_))) {
            self.close_failed();
        }
        r
    }

    fn projections(&self, f: &mut TableVisit<'_>) -> Result<(), StoreError> {
        self.read_db(|db| {
            let txn = db.begin_read().map_err(io)?;
            let t = match txn.open_table(PROJECTIONS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(damaged(Table::Meta, e)),
            };
            for item in t.iter().map_err(|e| damaged(Table::Meta, e))? {
                let (k, v) = item.map_err(|e| damaged(Table::Meta, e))?;
                let k = k.value();
                let table = k
                    .first()
                    .and_then(|c| Table::from_code(*c))
                    .filter(|t| t.is_projection())
                    .ok_or_else(|| damaged(Table::Meta, "a row has no table's prefix"))?;
                f(table, &k[1..], v.value())?;
            }
            Ok(())
        })
    }

    fn reopen(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        // The failed handle first: it holds the file's lock; and the read-only one.
        *db = None;
        *self.fallback.write().unwrap_or_else(|p| p.into_inner()) = None;
        *db = Some(self.open_db()?);
        Ok(())
    }

    fn read_only(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(Arc::new(RedbStore::open_read_only(&self.path)?))
    }

    fn truncate(&self, len: u64) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::Io("this store was opened read-only".into()));
        }
        let r = self.with_db(|db| {
            let txn = self.write_txn(db)?;
            {
                let mut t = txn.open_table(LOG).map_err(io)?;
                let extra: Vec<u64> = t
                    .range(len + 1..)
                    .map_err(io)?
                    .filter_map(|i| i.ok().map(|(k, _)| k.value()))
                    .collect();
                for k in extra {
                    t.remove(k).map_err(io)?;
                }
            }
            txn.commit().map_err(io)
        });
        if matches!(r, Err(StoreError::Full(_)) | Err(StoreError::Io(_))) {
            self.close_failed();
        }
        r
    }

    fn snapshot_dir(&self) -> Option<PathBuf> {
        Some(
            self.path
                .parent()
                .unwrap_or(Path::new("."))
                .join(super::snapshot::DIR),
        )
    }

    fn free_bytes(&self) -> Option<u64> {
        match self.faults.free_bytes.load(Ordering::Relaxed) {
            0 => {
                let dir = self.path.parent().unwrap_or(Path::new("."));
                let s = rustix::fs::statvfs(dir).ok()?;
                Some(s.f_bavail.saturating_mul(s.f_frsize))
            }
            n => Some(n),
        }
    }

    fn syncs(&self) -> Option<u64> {
        Some(self.syncs.load(Ordering::Relaxed))
    }
}
