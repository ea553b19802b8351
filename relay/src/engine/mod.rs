//! The core layer: what the relay knows and decides, and the single writer that makes it durable.
//!
//! Owns the policy (every limit and tier), the event types of the log, the projections
//! (`state/`), the pure decisions (`decide/`), the writer thread that decides, applies and
//! appends commands in batches with one fsync, start-up replay, the counters of `/metrics`, the
//! signed descriptor and the deadline ticker. It also defines the in-memory admission tables
//! (rate limits, request nonces, challenges: `limits`), which the edge holds. [`Engine`] is the
//! handle the layers above share.
//!
//! May import: `store`. Never imports `federation` or `http`. `decide/`, `state/` and `events`
//! do no I/O and read no clock (the writer passes the time in `decide::Ctx`); only `writer` and
//! `replay` touch the store, and only the writer changes the state.

pub mod cell;
pub mod decide;
pub mod descriptor;
pub mod error;
pub mod events;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod notifier;
pub mod policy;
pub mod replay;
pub mod state;
pub mod ticker;
pub mod writer;

use crate::store::{EventLog, Store, StoreError};
use cell::{Durable, StateCell};
use formica_protocol::{RelayHost, SecretKey};
use health::StoreHealth;
use metrics::Metrics;
use notifier::Notifier;
use policy::Policy;
use state::State;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use writer::Writer;

/// A clock in milliseconds since the Unix epoch; tests pass a fake one.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    })
}

/// The running core of one relay: its identity, policy, durable state and writer. Shared (in an
/// `Arc`) by the HTTP handlers, the federation workers and the deadline ticker, which read the
/// state and submit commands to the writer; none of them changes the state.
pub struct Engine {
    pub host: RelayHost,
    pub policy: Arc<Policy>,
    pub state: Arc<StateCell>,
    pub writer: Writer,
    pub notifier: Arc<Notifier>,
    pub relay_key: SecretKey,
    pub clock: Clock,
    pub metrics: Metrics,
    /// False while the relay is starting or shutting down (`/ready`).
    pub ready: AtomicBool,
    /// Becomes true when shutdown starts; open streams and workers end so the drain can finish.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Whether the store takes writes and the state is sound, with the store's counters.
    pub store_health: Arc<StoreHealth>,
    /// The log's store, for reads of durable records beside the writer (check, backup).
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({})", self.host)
    }
}

impl Engine {
    /// Starts the writer thread on `log` and `state` (which must be the replay of `log`) and
    /// returns the engine with the writer's thread handle.
    pub fn start(
        host: RelayHost,
        policy: Policy,
        log: EventLog,
        state: State,
        relay_key: SecretKey,
        clock: Clock,
        store_health: Arc<StoreHealth>,
    ) -> (Arc<Engine>, std::thread::JoinHandle<()>) {
        let state = Arc::new(StateCell::new(state));
        let store = log.store().clone();
        let notifier = Arc::new(Notifier::default());
        let policy = Arc::new(policy);
        let (writer, writer_thread) = writer::spawn(
            log,
            state.clone(),
            notifier.clone(),
            relay_key.clone(),
            policy.clone(),
            clock.clone(),
            store_health.clone(),
        );
        let engine = Arc::new(Engine {
            host,
            policy,
            state,
            writer,
            notifier,
            relay_key,
            clock,
            metrics: Metrics::default(),
            ready: AtomicBool::new(true),
            stopping: tokio::sync::watch::channel(false).0,
            store_health,
            store,
        });
        (engine, writer_thread)
    }

    /// The time now, from the engine's clock.
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// The durable state (see [`StateCell::read`]).
    pub fn read(&self) -> Durable<'_> {
        self.state.read()
    }

    /// Records in the durable log now.
    pub fn durable_len(&self) -> u64 {
        self.read().events
    }

    /// The store the log lives in, to read records that are durable (a check, a backup) while
    /// the writer goes on: records up to [`durable_len`](Self::durable_len) never change.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// `relay check` on a running relay: replays the durable log, as of now, into a new state
    /// beside the live one (every record's chain hash and event, as at start-up), without
    /// stopping the writer. Blocking, and as costly as a start-up (time, and memory for a
    /// second state): call it on a blocking thread, one at a time.
    pub fn check_log(&self) -> Result<CheckReport, StoreError> {
        let len = self.durable_len();
        let (log, st) = replay::replay_prefix(self.store.clone(), &self.host, Some(len))?;
        Ok(CheckReport {
            records: log.len(),
            chain_head: formica_protocol::hex::encode(&log.head()),
            agents: st.agents.len() as u64,
            messages: st.messages.len() as u64,
        })
    }
}

/// What a check of the log found (it is sound when there is a report).
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub records: u64,
    /// The chain hash of the last record, hex.
    pub chain_head: String,
    pub agents: u64,
    pub messages: u64,
}
