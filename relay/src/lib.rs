//! `formica-relay`: the Formica relay as a library. The `relay` binary (`main.rs`) is thin glue
//! over [`Relay::open`] and [`http::server::serve`]; tests drive the same pieces, with or
//! without sockets.
//!
//! The folders are the layers, each importing only the ones below it (`tests/layout.rs`
//! checks this):
//!
//! | Layer | Owns |
//! |---|---|
//! | [`http`] | the edge: router, handlers (one module per resource group), request helpers, error rendering, accept loop |
//! | [`federation`] | the outbound side of federation: peer client, peering, remote key logs, forwarding workers |
//! | [`engine`] | the core: policy, events, projections, pure decisions, the single writer, replay |
//! | [`store`] | the `Store` trait, its engines (redb, in memory) and the hash-chained event log |
//!
//! This file and `config.rs` sit above all of them: they assemble a relay from its parts.

pub mod config;
pub mod engine;
pub mod federation;
pub mod http;
pub mod operator;
pub mod store;

use config::RelayConfig;
use engine::health::StoreHealth;
use engine::state::State;
use engine::{Clock, Engine};
use formica_protocol::{hex, RelayHost, SecretKey};
use http::{App, Shared};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use store::datadir::{DirLock, LockError};
use store::{sync_dir, EventLog, RedbStore, Store, StoreError};

pub use engine::ticker::run_deadlines;
pub use http::admin::{ADMIN_ADDR_FILE, ADMIN_TOKEN_FILE};
pub use http::ops::OPENAPI_JSON;

/// File names inside the data directory.
pub use store::datadir::{HOST_FILE, KEY_FILE, LOCK_FILE, LOG_FILE};

/// The host a data directory recorded at its first start, if it has one (read only).
pub fn recorded_host(data_dir: &Path) -> Result<Option<RelayHost>, String> {
    let file = data_dir.join(HOST_FILE);
    match std::fs::read_to_string(&file) {
        Ok(s) => RelayHost::parse(s.trim())
            .map(Some)
            .map_err(|e| format!("{}: {}", file.display(), e.reason)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// The relay's host: handles embed it, so a data directory keeps the one it started with.
/// `configured` wins on first start; later it must match what the directory recorded.
pub fn resolve_host(
    data_dir: &Path,
    configured: Option<&RelayHost>,
    bound: Option<std::net::SocketAddr>,
) -> Result<RelayHost, String> {
    let file = data_dir.join(HOST_FILE);
    let recorded = recorded_host(data_dir)?;
    let host = match (configured, &recorded) {
        (Some(c), Some(r)) if c != r => {
            return Err(format!(
                "this data directory belongs to relay host {r} (handles are @name@{r}); pass --public-host {r} or use another --data-dir"
            ))
        }
        (Some(c), _) => c.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => {
            let b = bound.ok_or_else(|| "no public host configured or recorded; pass --public-host".to_owned())?;
            RelayHost::parse(&b.to_string()).map_err(|e| format!("bound address {b} is not a valid host ({})", e.reason))?
        }
    };
    if recorded.is_none() {
        store::datadir::create_private_dir(data_dir)
            .map_err(|e| format!("{}: {e}", data_dir.display()))?;
        write_durably(&file, format!("{host}\n").as_bytes())
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(host)
}

/// Writes `bytes` to a new file at `path` and makes both the file and its name durable.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(store::datadir::FILE_MODE)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Takes the data directory's lock ([`LOCK_FILE`]) for as long as the relay runs.
fn lock_data_dir(dir: &Path) -> Result<DirLock, OpenError> {
    let err = |e: String| OpenError::DataDir {
        path: dir.display().to_string(),
        err: e,
    };
    let path = dir.join(LOCK_FILE);
    DirLock::exclusive(dir).map_err(|e| match e {
        LockError::InUse => err(format!(
            "another relay is serving it, or `relay check` or `relay backup` is reading it (the lock on {} is held); stop that first, or use another --data-dir",
            path.display()
        )),
        LockError::Io(e) => err(format!("{}: cannot lock it: {e}", path.display())),
    })
}

/// Why a relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data directory {path}: {err}")]
    DataDir { path: String, err: String },
    #[error("relay key {path}: {err}")]
    Key { path: String, err: String },
    #[error("admin token: {0}")]
    AdminToken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A relay opened on a store, with its writer running.
pub struct Relay {
    /// The edge, which holds the engine (`app.engine`) and the federation client (`app.fed`).
    pub app: Shared,
    pub writer_thread: std::thread::JoinHandle<()>,
    /// The data directory's lock ([`LOCK_FILE`]), held until the writer has closed the store.
    lock: Option<DirLock>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Relay({})", self.app.engine.host)
    }
}

/// Loads the relay key from `path`, or makes one and writes it (0600) on first start.
pub fn load_or_create_key(path: &Path) -> Result<SecretKey, OpenError> {
    let err = |e: String| OpenError::Key {
        path: path.display().to_string(),
        err: e,
    };
    if path.exists() {
        let mode = std::fs::metadata(path)
            .map_err(|e| err(e.to_string()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "permissions {:04o} let others read the relay key; run chmod 600 {}",
                mode & 0o777,
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let seed: [u8; 32] = hex::decode_array(text.trim())
            .ok_or_else(|| err("not 64 lower-case hex characters".into()))?;
        return Ok(SecretKey::from_seed(&seed));
    }
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(e.to_string()))?;
    f.write_all(format!("{}\n", hex::encode(&seed)).as_bytes())
        .map_err(|e| err(e.to_string()))?;
    f.sync_all().map_err(|e| err(e.to_string()))?;
    // A power loss right after the first start must not lose the key's name either.
    sync_dir(path.parent().unwrap_or(Path::new("."))).map_err(|e| err(e.to_string()))?;
    Ok(SecretKey::from_seed(&seed))
}

impl Relay {
    /// Opens the data directory (creating it on first start), replays the log and starts the
    /// writer.
    pub fn open(cfg: &RelayConfig, host: &RelayHost, clock: Clock) -> Result<Relay, OpenError> {
        let dir = &cfg.data_dir;
        let dir_err = |e: std::io::Error| OpenError::DataDir {
            path: dir.display().to_string(),
            err: e.to_string(),
        };
        if !dir.exists() {
            // The names of the directories made here must survive a power loss too.
            let made: Vec<&Path> = dir
                .ancestors()
                .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
                .collect();
            store::datadir::create_private_dir(dir).map_err(dir_err)?;
            for m in made {
                sync_dir(
                    m.parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or(Path::new(".")),
                )
                .map_err(dir_err)?;
            }
        }
        store::datadir::check_private_dir(dir).map_err(|err| OpenError::DataDir {
            path: dir.display().to_string(),
            err,
        })?;
        let lock = lock_data_dir(dir)?;
        // The address of an earlier run (written at its start) is stale from here on, and a
        // `relay peer` or `relay check` must not send the admin token to whatever listens there.
        let _ = std::fs::remove_file(dir.join(ADMIN_ADDR_FILE));
        let key = load_or_create_key(&dir.join(KEY_FILE))?;
        // Checked before the store is opened, so a bad token file stops the start cleanly.
        let token = http::admin::load_or_create_token(&dir.join(ADMIN_TOKEN_FILE))
            .map_err(OpenError::AdminToken)?;
        if let config::StoreConfig::Postgres(pg) = &cfg.store {
            let mut relay = Relay::open_postgres(cfg, pg, host, key, clock)?;
            relay.lock = Some(lock);
            let _ = relay.app.admin_token.set(token);
            let _ = relay.app.data_dir.set(dir.clone());
            return Ok(relay);
        }
        let relaxed = cfg.unsafe_relaxed_fsync_benchmark_only;
        if relaxed {
            tracing::warn!(
                "fsync skipped for benchmarking: acknowledged writes can be lost on a crash"
            );
        }
        let path = dir.join(LOG_FILE);
        // 1. What the file holds is checked on a read-only view, so that a damaged store is
        //    refused without having been written: the log at its head and the projection tables
        //    loaded, when they are the replay of that head; otherwise the whole log (and the
        //    tables are rebuilt below).
        let checked = if path.exists() {
            let view = RedbStore::open_read_only(&path)?;
            if view.recovered() {
                tracing::warn!(
                    "the store was not closed cleanly (a crash or a kill); it is sound and is recovered now"
                );
            }
            // The view goes with this call: its lock on the file would keep it from being
            // opened below.
            Some(engine::replay::open_checked(Arc::new(view), host)?)
        } else {
            None
        };
        // 2. Then it is opened for writing. A file system too full for that (redb marks the
        //    file as open, and recovers it after a crash) does not stop the relay: it serves
        //    what it checked and refuses writes until the writer can reopen the store.
        let cache = cfg.policy.limits.store_cache_bytes;
        let quick = cfg.policy.limits.store_quick_repair;
        let (store, health): (Arc<dyn Store>, _) = match RedbStore::open_cached(
            &path, relaxed, cache, quick,
        ) {
            Ok(s) => (Arc::new(s), StoreHealth::default()),
            Err(StoreError::Full(why)) if matches!(checked, Some((_, Ok(_)))) => {
                tracing::warn!(error = %why, "the store cannot be opened for writing; serving reads, refusing writes until it can");
                (
                    Arc::new(RedbStore::closed(&path, relaxed)),
                    StoreHealth::down(),
                )
            }
            Err(e) => return Err(e.into()),
        };
        // Whether the whole chain was checked here (a rebuild reads it all): the background
        // check after start is then not needed.
        let checked_all = !matches!(checked, Some((_, Ok(_))));
        let (log, state) = match checked {
            Some((at, Ok(mut state))) => {
                state.rebind(store.clone());
                if health.writable() {
                    (at.resume(store)?, state)
                } else {
                    (at.resume_unchecked(store), state)
                }
            }
            Some((at, Err(why))) => {
                tracing::warn!(records = at.len, reason = %why, "rebuilding the projection tables from the log (once; later starts load them)");
                let t0 = std::time::Instant::now();
                let (log, state) = engine::replay::rebuild(store, host)?;
                tracing::info!(
                    records = log.len(),
                    seconds = t0.elapsed().as_secs_f64(),
                    "projection tables rebuilt"
                );
                (log, state)
            }
            None => {
                sync_dir(dir).map_err(|e| OpenError::DataDir {
                    path: dir.display().to_string(),
                    err: e.to_string(),
                })?;
                let (log, state, _) = engine::replay::open(store, host)?;
                (log, state)
            }
        };
        if checked_all {
            health
                .log_check
                .store(1, std::sync::atomic::Ordering::Relaxed);
        }
        let mut relay = Relay::start(cfg, host, log, state, key, clock, Arc::new(health));
        relay.lock = Some(lock);
        let _ = relay.app.admin_token.set(token);
        let _ = relay.app.data_dir.set(dir.clone());
        Ok(relay)
    }

    /// The store part of [`open`](Self::open) for `store.kind = "postgres"`: the data directory
    /// (opened and locked by the caller) keeps the key, host, admin token and lock of this node;
    /// the log and tables are in the database, and start-up replays them as
    /// [`with_store`](Self::with_store) does.
    fn open_postgres(
        cfg: &RelayConfig,
        pg: &store::PgConfig,
        host: &RelayHost,
        key: SecretKey,
        clock: Clock,
    ) -> Result<Relay, OpenError> {
        if cfg.unsafe_relaxed_fsync_benchmark_only {
            return Err(StoreError::Io(
                "the relaxed-fsync benchmark mode applies to the redb store only".into(),
            )
            .into());
        }
        let store = store::PgStore::open(pg)?;
        for w in store.warnings() {
            tracing::warn!("{w}; served anyway: store.allow_weak_durability = true");
        }
        let (log, state, _) = engine::replay::open(Arc::new(store), host)?;
        Ok(Relay::start(
            cfg,
            host,
            log,
            state,
            key,
            clock,
            Arc::new(StoreHealth::default()),
        ))
    }

    /// Opens a relay over any store (tests use `MemStore` and fault-injecting stores).
    pub fn with_store(
        cfg: &RelayConfig,
        host: &RelayHost,
        store: Arc<dyn Store>,
        key: SecretKey,
        clock: Clock,
    ) -> Result<Relay, StoreError> {
        let (log, state, _) = engine::replay::open(store, host)?;
        Ok(Relay::from_replayed(cfg, host, log, state, key, clock))
    }

    /// Starts a relay on a log that is already open and the state replayed from it (what
    /// [`with_store`](Self::with_store) does after [`engine::replay::replay`]). `state` must be
    /// the replay of `log`: the fuzz target copies one replayed state into many relays, each on
    /// its own copy of the log, instead of replaying the log for every input.
    ///
    /// # Panics
    /// If `state` was not replayed for `host`, or has applied a different number of records
    /// than `log` holds (then it cannot be the replay of `log`).
    pub fn from_replayed(
        cfg: &RelayConfig,
        host: &RelayHost,
        log: EventLog,
        state: State,
        key: SecretKey,
        clock: Clock,
    ) -> Relay {
        assert_eq!(
            &state.host, host,
            "the state was replayed for another relay"
        );
        assert_eq!(
            state.events,
            log.len(),
            "the state is not the replay of this log"
        );
        Relay::start(
            cfg,
            host,
            log,
            state,
            key,
            clock,
            Arc::new(StoreHealth::default()),
        )
    }

    fn start(
        cfg: &RelayConfig,
        host: &RelayHost,
        log: EventLog,
        state: State,
        key: SecretKey,
        clock: Clock,
        health: Arc<StoreHealth>,
    ) -> Relay {
        let (engine, writer_thread) = Engine::start(
            host.clone(),
            cfg.policy.clone(),
            log,
            state,
            key,
            clock,
            health,
        );
        let app = Arc::new(App::new(engine, cfg.trusted_proxies.clone()));
        Relay {
            app,
            writer_thread,
            lock: None,
        }
    }

    /// Stops a relay whose server has returned: drops the edge (the engine goes once nothing
    /// else holds it, which ends the writer) and waits for the writer thread, at most `wait`,
    /// so that the store is closed cleanly and the next start finds nothing to recover. True if
    /// the writer ended in time.
    pub fn stop(self, wait: std::time::Duration) -> bool {
        let Relay {
            app,
            writer_thread,
            lock,
        } = self;
        app.engine.stop_verify();
        drop(app);
        let (tx, rx) = std::sync::mpsc::channel();
        let joiner = std::thread::spawn(move || {
            let _ = writer_thread.join();
            let _ = tx.send(());
        });
        let ended = rx.recv_timeout(wait).is_ok();
        if ended {
            let _ = joiner.join();
        }
        // The data directory is let go only after the store is closed (or the wait is over:
        // the process is ending then, which lets go of it anyway).
        drop(lock);
        ended
    }

    /// The relay's engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.app.engine
    }

    /// Starts the background tasks of a serving relay on the current tokio runtime: the
    /// deadline ticker and (when federation is enabled) the forwarding workers.
    pub fn spawn_background(&self) {
        self.app.engine.verify_log_in_background();
        tokio::spawn(run_deadlines(self.app.engine.clone()));
        tokio::spawn(engine::presence::run_presence(self.app.engine.clone()));
        tokio::spawn(self.app.fed.clone().run_forwarding());
        tokio::spawn(engine::nodes::run_follow(self.app.engine.clone()));
    }
}
