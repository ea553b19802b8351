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
pub mod store;

use config::RelayConfig;
use engine::state::State;
use engine::{Clock, Engine};
use formica_protocol::{hex, RelayHost, SecretKey};
use http::{App, Shared};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use store::{EventLog, RedbStore, Store, StoreError};

pub use engine::ticker::run_deadlines;
pub use http::admin::{ADMIN_ADDR_FILE, ADMIN_TOKEN_FILE};
pub use http::ops::OPENAPI_JSON;

/// File names inside the data directory.
pub const LOG_FILE: &str = "log.redb";
pub const KEY_FILE: &str = "relay.key";
pub const HOST_FILE: &str = "public_host";

/// The relay's host: handles embed it, so a data directory keeps the one it started with.
/// `configured` wins on first start; later it must match what the directory recorded.
pub fn resolve_host(
    data_dir: &Path,
    configured: Option<&RelayHost>,
    bound: Option<std::net::SocketAddr>,
) -> Result<RelayHost, String> {
    let file = data_dir.join(HOST_FILE);
    let recorded = match std::fs::read_to_string(&file) {
        Ok(s) => Some(
            RelayHost::parse(s.trim()).map_err(|e| format!("{}: {}", file.display(), e.reason))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
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
        std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
        std::fs::write(&file, format!("{host}\n"))
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(host)
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
    Ok(SecretKey::from_seed(&seed))
}

impl Relay {
    /// Opens the data directory (creating it on first start), replays the log and starts the
    /// writer.
    pub fn open(cfg: &RelayConfig, host: &RelayHost, clock: Clock) -> Result<Relay, OpenError> {
        let dir = &cfg.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| OpenError::DataDir {
            path: dir.display().to_string(),
            err: e.to_string(),
        })?;
        let key = load_or_create_key(&dir.join(KEY_FILE))?;
        // Checked before the store is opened, so a bad token file stops the start cleanly.
        let token = http::admin::load_or_create_token(&dir.join(ADMIN_TOKEN_FILE))
            .map_err(OpenError::AdminToken)?;
        if cfg.unsafe_relaxed_fsync_benchmark_only {
            tracing::warn!(
                "fsync relaxed for benchmarking: acknowledged writes can be lost on power failure"
            );
        }
        let store: Arc<dyn Store> = Arc::new(RedbStore::open_with(
            &dir.join(LOG_FILE),
            cfg.unsafe_relaxed_fsync_benchmark_only,
        )?);
        let relay = Relay::with_store(cfg, host, store, key, clock)?;
        let _ = relay.app.admin_token.set(token);
        Ok(relay)
    }

    /// Opens a relay over any store (tests use `MemStore` and fault-injecting stores).
    pub fn with_store(
        cfg: &RelayConfig,
        host: &RelayHost,
        store: Arc<dyn Store>,
        key: SecretKey,
        clock: Clock,
    ) -> Result<Relay, StoreError> {
        let (log, state) = engine::replay::replay(store, host)?;
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
        let (engine, writer_thread) =
            Engine::start(host.clone(), cfg.policy.clone(), log, state, key, clock);
        let app = Arc::new(App::new(engine, cfg.trusted_proxies.clone()));
        Relay { app, writer_thread }
    }

    /// The relay's engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.app.engine
    }

    /// Starts the background tasks of a serving relay on the current tokio runtime: the
    /// deadline ticker and (when federation is enabled) the forwarding workers.
    pub fn spawn_background(&self) {
        tokio::spawn(run_deadlines(self.app.engine.clone()));
        tokio::spawn(self.app.fed.clone().run_forwarding());
    }
}
