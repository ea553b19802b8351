//! `formica-relay`: the Formica relay as a library. The `relay` binary is thin glue over
//! [`Relay::open`] and [`server::serve`]; tests drive the same pieces, with or without sockets.

pub mod api;
pub mod config;
pub mod deadline;
pub mod decide;
pub mod error;
pub mod events;
pub mod federation;
pub mod limits;
pub mod metrics;
pub mod peer_addr;
pub mod policy;
pub mod server;
pub mod state;
pub mod store;
pub mod stream;
pub mod writer;

use api::{App, Shared};
use config::RelayConfig;
use formica_protocol::{hex, RelayHost, SecretKey};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use store::{RedbStore, Store, StoreError};
use writer::Clock;

/// The OpenAPI 3.1 document of the client API, served at `/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

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
    pub app: Shared,
    pub writer_thread: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Relay({})", self.app.host)
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
        let token = federation::load_or_create_token(&dir.join(federation::ADMIN_TOKEN_FILE))
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
        let (log, state) = writer::replay(store, host)?;
        Ok(Relay::from_replayed(cfg, host, log, state, key, clock))
    }

    /// Starts a relay on a log that is already open and the state replayed from it (what
    /// [`with_store`](Self::with_store) does after [`writer::replay`]). `state` must be the
    /// replay of `log`: the fuzz target copies one replayed state into many relays, each on its
    /// own copy of the log, instead of replaying the log for every input.
    ///
    /// # Panics
    /// If `state` was not replayed for `host`, or has applied a different number of records
    /// than `log` holds (then it cannot be the replay of `log`).
    pub fn from_replayed(
        cfg: &RelayConfig,
        host: &RelayHost,
        log: store::EventLog,
        state: state::State,
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
        let state = Arc::new(writer::StateCell::new(state));
        let notifier = Arc::new(writer::Notifier::default());
        let policy = Arc::new(cfg.policy.clone());
        let (writer, writer_thread) = writer::spawn(
            log,
            state.clone(),
            notifier.clone(),
            key.clone(),
            policy.clone(),
            clock.clone(),
        );
        let app = Arc::new(App {
            host: host.clone(),
            policy,
            state,
            writer,
            notifier,
            relay_key: key,
            clock,
            challenges: Mutex::default(),
            nonces: Mutex::new(limits::Nonces::new(
                cfg.policy.limits.nonces_max,
                cfg.policy.limits.nonces_per_handle_max,
            )),
            key_buckets: Mutex::new(limits::Buckets::new(cfg.policy.limits.rate_limit_keys_max)),
            ip_buckets: Mutex::new(limits::Buckets::new(cfg.policy.limits.rate_limit_keys_max)),
            trusted_proxies: cfg.trusted_proxies.clone(),
            metrics: Default::default(),
            ready: AtomicBool::new(true),
            stopping: tokio::sync::watch::channel(false).0,
            admin_token: std::sync::OnceLock::new(),
            peer_client: federation::PeerClient::default(),
        });
        Relay { app, writer_thread }
    }
}

/// Produces timed_out receipts: every `deadline_check_ms`, asks the writer to settle deadlines
/// that have passed. Runs until the writer is gone.
pub async fn run_deadlines(app: Shared) {
    let every = std::time::Duration::from_millis(app.policy.limits.deadline_check_ms.max(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let due = {
            let st = app.state.read().unwrap_or_else(|p| p.into_inner());
            let now = app.now();
            let max_age = app.policy.federation.dead_letter_ms;
            st.deadlines.iter().next().is_some_and(|(by, _)| *by < now)
                || st
                    .outbound
                    .values()
                    .any(|q| q.values().next().is_some_and(|x| now - x.at > max_age))
        };
        if due {
            if let Err(e) = app.writer.submit(decide::Command::Tick).await {
                if e.code == formica_protocol::ErrorCode::Unavailable {
                    return;
                }
                tracing::warn!(code = %e.code, "deadline tick failed: {}", e.message);
            }
        }
    }
}
