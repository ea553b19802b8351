//! The PostgreSQL store: the log and the tables in one database that several relay processes
//! (nodes of one relay) share, each through its own [`PgStore`].
//!
//! Durability is the server's: a commit returns once PostgreSQL answered its `COMMIT`, which
//! with `synchronous_commit = on` and `fsync = on` (checked at open, [`schema::check_durability`])
//! means on disk. The nodes take turns to write: [`Store::begin_turn`] opens a transaction on
//! the writer's connection and takes the write lock (an advisory lock, [`schema::LOCK_WRITE`]),
//! which the turn's [`Store::commit`] releases. The lead is a session-level advisory lock on a
//! connection of its own ([`schema::LOCK_LEAD`]), kept while that connection lives.
//!
//! Connections: one for the writer, [`PgConfig::pool`] for reads and claims, one for the lead.
//! A connection that fails is dropped and made again on its next use, so the relay recovers by
//! itself when the database comes back; meanwhile calls fail with
//! [`StoreError::Unavailable`]. Everything runs on the store's own small runtime
//! ([`conn::Bridge`]): the trait is synchronous and called from any thread.
//!
//! One database holds one relay (the table names and the lock class are fixed).

mod conn;
mod ops;
pub mod schema;

use self::conn::{with_conn, Bridge, Conn, Role, Settings, Slot};
use super::{Changes, LogBase, RowVisit, Store, StoreError, Table, TableVisit, Visit};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use self::conn::{
    CALL_TIMEOUT, CONNECT_TIMEOUT, IDLE_IN_TURN_TIMEOUT, LOCK_TIMEOUT, STATEMENT_TIMEOUT,
};

/// How to open a [`PgStore`] (the relay's `[store]` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// A `postgres://` URL or `key=value` connection string (`sslmode=disable` for no TLS).
    pub url: String,
    /// Connections for reads and claims.
    pub pool: usize,
    /// Serve although the server may lose answered commits (see
    /// [`schema::check_durability`]): a warning instead of a refusal.
    pub allow_weak_durability: bool,
}

impl PgConfig {
    /// Read connections when none is configured: the handlers' reads are short, and each node
    /// has its own pool.
    pub const POOL_DEFAULT: usize = 4;

    pub fn new(url: impl Into<String>) -> PgConfig {
        PgConfig {
            url: url.into(),
            pool: Self::POOL_DEFAULT,
            allow_weak_durability: false,
        }
    }
}

/// Rows of a table read in one round trip by `range` and `projections`.
const ROWS_PAGE: i64 = 1000;
/// Records read in one round trip by `scan` (records are up to a few hundred KiB).
const LOG_PAGE: i64 = 256;
/// Expired admission rows are removed at most this often, by the `claim` that finds the time
/// passed, and at most [`SWEEP_ROWS`] at once: bounded work on a request's path.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
const SWEEP_ROWS: i64 = 1000;

/// What a [`PgStore`] and its read-only views share.
struct Inner {
    settings: Settings,
    writer: Slot,
    /// A turn was begun and not yet ended by a commit or `end_turn`: a commit then must run in
    /// that turn's transaction, and fails if the connection (and so the turn) was lost.
    turn: AtomicBool,
    readers: Vec<Slot>,
    next_reader: AtomicUsize,
    lead: Slot,
    commits: AtomicU64,
    last_sweep: Mutex<Option<Instant>>,
    /// What the open let through with `allow_weak_durability`, for the relay to log.
    warnings: Vec<String>,
    /// Last: dropped after the connections (its drop ends their tasks).
    bridge: Bridge,
}

/// The PostgreSQL store. Cheap views of it share its connections ([`Store::read_only`]).
pub struct PgStore {
    inner: Arc<Inner>,
    read_only: bool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PgStore({:?}, read_only {})",
            self.inner.settings, self.read_only
        )
    }
}

impl PgStore {
    /// Connects, creates the tables when missing (under the schema lock: nodes may start at
    /// once) and checks the server's durability settings. A server that cannot be reached is
    /// [`StoreError::Unavailable`]; a weak setting or a newer schema is refused with its name.
    pub fn open(cfg: &PgConfig) -> Result<PgStore, StoreError> {
        if cfg.pool == 0 {
            return Err(StoreError::Io("store.pool must be at least 1".into()));
        }
        let settings = Settings::parse(&cfg.url)?;
        let bridge = Bridge::new()?;
        let mut writer = None;
        let allow = cfg.allow_weak_durability;
        let (warnings, sync) = with_conn(
            &bridge,
            &settings,
            Role::Writer,
            &mut writer,
            move |mut c| async move {
                let r = match schema::check_durability(&mut c, allow).await {
                    Ok(w) => schema::create(&mut c).await.map(|()| w),
                    Err(e) => Err(e),
                };
                (c, r)
            },
        )?;
        // Every later session commits as the checked one did.
        let settings = if allow {
            settings
        } else {
            settings.pin_synchronous_commit(&sync)
        };
        Ok(PgStore {
            inner: Arc::new(Inner {
                settings,
                writer: Mutex::new(writer),
                turn: AtomicBool::new(false),
                readers: (0..cfg.pool).map(|_| Mutex::new(None)).collect(),
                next_reader: AtomicUsize::new(0),
                lead: Mutex::new(None),
                commits: AtomicU64::new(0),
                last_sweep: Mutex::new(None),
                warnings,
                bridge,
            }),
            read_only: false,
        })
    }

    /// The weak durability settings that `allow_weak_durability` let through at open.
    pub fn warnings(&self) -> &[String] {
        &self.inner.warnings
    }

    /// Runs `f` on a read connection: a free one when there is, else the next in turn.
    fn read<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = (Conn, Result<T, StoreError>)> + Send + 'static,
    {
        let mut slot = self.reader();
        with_conn(
            &self.inner.bridge,
            &self.inner.settings,
            Role::Reader,
            &mut slot,
            f,
        )
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Option<Conn>> {
        let readers = &self.inner.readers;
        let start = self.inner.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..readers.len() {
            if let Ok(g) = readers[(start + i) % readers.len()].try_lock() {
                return g;
            }
        }
        readers[start % readers.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in a write transaction on the writer's connection: the open turn's, or one
    /// begun now under the write lock; commits it (which ends the turn) when `f` succeeds. On
    /// an error the connection is dropped, and the server rolls the transaction back. Every
    /// write (`drop_before`, `truncate`, `clear_projections` too) joins an open turn and ends
    /// it: only the writer thread writes, so a turn is always its own.
    fn write<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = (Conn, Result<T, StoreError>)> + Send + 'static,
    {
        if self.read_only {
            return Err(StoreError::Io("this store is a read-only view".into()));
        }
        let mut slot = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let turn = self.inner.turn.swap(false, Ordering::SeqCst);
        let r = with_conn(
            &self.inner.bridge,
            &self.inner.settings,
            Role::Writer,
            &mut slot,
            move |mut c| async move {
                if turn && !c.in_turn {
                    return (c, Err(lost_turn()));
                }
                if !c.in_turn {
                    if let Err(e) = ops::begin_locked(&mut c).await {
                        return (c, Err(e));
                    }
                }
                let (mut c, r) = f(c).await;
                let r = match r {
                    Ok(v) => c
                        .client
                        .batch_execute("COMMIT")
                        .await
                        .map_err(conn::pg)
                        .map(|()| v),
                    Err(e) => Err(e),
                };
                c.in_turn = false;
                (c, r)
            },
        );
        if r.is_ok() {
            self.inner.commits.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Removes expired admission rows when the last sweep is [`SWEEP_EVERY`] old.
    fn sweep_due(&self) -> bool {
        let mut last = self
            .inner
            .last_sweep
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= SWEEP_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }
}

fn lost_turn() -> StoreError {
    StoreError::Unavailable(
        "the writer's connection was lost during its turn (the server rolled the turn back)".into(),
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store for PgStore {
    fn commit(
        &self,
        first_seq: u64,
        records: &[Vec<u8>],
        changes: &[&Changes],
    ) -> Result<(), StoreError> {
        let batch = ops::Batch::new(first_seq, records, changes)?;
        self.write(move |mut c| async move {
            let r = batch.write(&mut c).await;
            (c, r)
        })
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_vec();
        self.read(move |mut c| async move {
            let r = ops::get(&mut c, table, key).await;
            (c, r)
        })
    }

    fn range(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut RowVisit<'_>,
    ) -> Result<(), StoreError> {
        let to = to.map(<[u8]>::to_vec);
        let mut from = from.to_vec();
        loop {
            let (lo, hi) = (from.clone(), to.clone());
            let rows = self.read(move |mut c| async move {
                let r = ops::range_page(&mut c, table, lo, hi, ROWS_PAGE).await;
                (c, r)
            })?;
            let full = rows.len() as i64 == ROWS_PAGE;
            let Some(last) = rows.last().map(|(k, _)| k.clone()) else {
                return Ok(());
            };
            for (k, v) in &rows {
                if !f(k, v) {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
            // The least key after `last`.
            from = last;
            from.push(0);
        }
    }

    fn clear_projections(&self) -> Result<(), StoreError> {
        self.write(|c| async move {
            let r = c
                .client
                .execute("DELETE FROM formica_rows", &[])
                .await
                .map(|_| ())
                .map_err(conn::pg);
            (c, r)
        })
    }

    fn scan(&self, from: u64, to: u64, f: &mut Visit<'_>) -> Result<(), StoreError> {
        let to = to.min(i64::MAX as u64) as i64;
        let mut from = from.min(i64::MAX as u64) as i64;
        while from <= to {
            let rows = self.read(move |mut c| async move {
                let r = ops::scan_page(&mut c, from, to, LOG_PAGE).await;
                (c, r)
            })?;
            let full = rows.len() as i64 == LOG_PAGE;
            for (seq, v) in &rows {
                f(*seq as u64, v)?;
            }
            match rows.last() {
                Some((seq, _)) if full => from = seq + 1,
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    fn len(&self) -> Result<u64, StoreError> {
        self.read(|mut c| async move {
            let r = ops::last(&mut c).await.map(|(last, _)| last);
            (c, r)
        })
    }

    fn base(&self) -> Result<LogBase, StoreError> {
        self.read(|mut c| async move {
            let r = ops::last(&mut c).await.map(|(_, base)| base);
            (c, r)
        })
    }

    fn drop_before(&self, base: LogBase) -> Result<(), StoreError> {
        self.write(move |mut c| async move {
            let r = ops::drop_before(&mut c, base).await;
            (c, r)
        })
    }

    fn projections(&self, f: &mut TableVisit<'_>) -> Result<(), StoreError> {
        // One REPEATABLE READ transaction, paged on the one connection held throughout.
        let mut slot = self.reader();
        let run = |slot: &mut Option<Conn>, after: Option<(i16, Vec<u8>)>| {
            with_conn(
                &self.inner.bridge,
                &self.inner.settings,
                Role::Reader,
                slot,
                move |mut c| async move {
                    let r = ops::projections_page(&mut c, after, ROWS_PAGE).await;
                    (c, r)
                },
            )
        };
        let mut after = None;
        let done = loop {
            let rows = run(&mut slot, after.clone())?;
            let full = rows.len() as i64 == ROWS_PAGE;
            let mut failed = None;
            for (t, k, v) in &rows {
                let Some(table) = u8::try_from(*t).ok().and_then(Table::from_code) else {
                    failed = Some(StoreError::Corrupt {
                        seq: 0,
                        reason: format!("formica_rows holds a row of unknown table {t}"),
                    });
                    break;
                };
                if let Err(e) = f(table, k, v) {
                    failed = Some(e);
                    break;
                }
            }
            if let Some(e) = failed {
                break Err(e);
            }
            match rows.last() {
                Some((t, k, _)) if full => after = Some((*t, k.clone())),
                _ => break Ok(()),
            }
        };
        // Ends the read transaction; after an error the connection goes (the server ends it).
        match done {
            Ok(()) => with_conn(
                &self.inner.bridge,
                &self.inner.settings,
                Role::Reader,
                &mut slot,
                |mut c| async move {
                    let r = ops::end_read(&mut c).await;
                    (c, r)
                },
            ),
            Err(e) => {
                *slot = None;
                Err(e)
            }
        }
    }

    fn reopen(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        // Every connection is made again; the writer's first, to answer whether it can write.
        let mut w = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        *w = None;
        self.inner.turn.store(false, Ordering::SeqCst);
        for r in &self.inner.readers {
            *r.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        with_conn(
            &self.inner.bridge,
            &self.inner.settings,
            Role::Writer,
            &mut w,
            |c| async move {
                let r = c.client.batch_execute("SELECT 1").await.map_err(conn::pg);
                (c, r)
            },
        )
    }

    fn read_only(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(Arc::new(PgStore {
            inner: self.inner.clone(),
            read_only: true,
        }))
    }

    fn truncate(&self, len: u64) -> Result<(), StoreError> {
        let len = len.min(i64::MAX as u64) as i64;
        self.write(move |c| async move {
            let r = c
                .client
                .execute("DELETE FROM formica_log WHERE seq > $1", &[&len])
                .await
                .map(|_| ())
                .map_err(conn::pg);
            (c, r)
        })
    }

    fn syncs(&self) -> Option<u64> {
        Some(self.inner.commits.load(Ordering::Relaxed))
    }

    fn shared(&self) -> bool {
        true
    }

    fn begin_turn(&self) -> Result<u64, StoreError> {
        if self.read_only {
            return Err(StoreError::Io("this store is a read-only view".into()));
        }
        let mut slot = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let was = self.inner.turn.load(Ordering::SeqCst);
        let r = with_conn(
            &self.inner.bridge,
            &self.inner.settings,
            Role::Writer,
            &mut slot,
            move |mut c| async move {
                if was && !c.in_turn {
                    return (c, Err(lost_turn()));
                }
                if !c.in_turn {
                    if let Err(e) = ops::begin_locked(&mut c).await {
                        return (c, Err(e));
                    }
                }
                let r = ops::last(&mut c).await.map(|(last, _)| last);
                (c, r)
            },
        );
        // A failed turn is over (its connection dropped): the next begins afresh.
        self.inner.turn.store(r.is_ok(), Ordering::SeqCst);
        r
    }

    fn end_turn(&self) {
        if !self.inner.turn.swap(false, Ordering::SeqCst) {
            return;
        }
        let mut slot = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _ = with_conn(
            &self.inner.bridge,
            &self.inner.settings,
            Role::Writer,
            &mut slot,
            |mut c| async move {
                let r = if c.in_turn {
                    c.client.batch_execute("ROLLBACK").await.map_err(conn::pg)
                } else {
                    Ok(())
                };
                c.in_turn = false;
                (c, r)
            },
        );
    }

    fn claim(&self, key: &[u8], value: &[u8], expires_ms: i64) -> Result<bool, StoreError> {
        if self.read_only {
            return Err(StoreError::Io("this store is a read-only view".into()));
        }
        let (key, value) = (key.to_vec(), value.to_vec());
        let sweep = self.sweep_due();
        let now = now_ms();
        self.read(move |mut c| async move {
            let r = ops::claim(&mut c, key, value, expires_ms, now).await;
            let r = match r {
                Ok(inserted) if sweep => {
                    ops::sweep(&mut c, now, SWEEP_ROWS).await.map(|_| inserted)
                }
                r => r,
            };
            (c, r)
        })
    }

    fn lead(&self) -> Result<bool, StoreError> {
        let mut slot = self.inner.lead.lock().unwrap_or_else(|p| p.into_inner());
        let r = with_conn(
            &self.inner.bridge,
            &self.inner.settings,
            Role::Lead,
            &mut slot,
            |mut c| async move {
                let r = ops::lead(&mut c).await;
                (c, r)
            },
        );
        match r {
            // Whoever cannot reach the database does not lead: another node may have the lock.
            Err(StoreError::Unavailable(_)) => Ok(false),
            r => r,
        }
    }
}
