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
pub mod checkpoint;
pub mod conversations;
pub mod decide;
pub mod descriptor;
pub mod directory;
pub mod error;
pub mod events;
mod events_conv;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod nodes;
pub mod notable;
pub mod notifier;
pub mod policy;
pub mod presence;
pub mod replay;
pub mod state;
pub mod ticker;
mod validate;
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
    /// Nonce and challenge rows the writer commits with its next batch (`limits::Journal`).
    admission: Arc<std::sync::Mutex<limits::Journal>>,
    /// The background check of the log's chain, joined when the relay stops (it holds the
    /// store, which closes only when nothing holds it).
    verify: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// True while a checkpoint is being made (`checkpoint::start_if_due`).
    pub checkpointing: AtomicBool,
    /// Who is connected, and the presence feeds of open streams (SPEC.md 18.4).
    pub presence: Arc<presence::Hub>,
    /// Several nodes: the last record the store held at the last probe, shared by the requests
    /// that arrived before it began (`nodes::Engine::sync_with_nodes`).
    probe: tokio::sync::Mutex<nodes::Probe>,
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
        let store = log.store().clone();
        if let Ok(base) = log.base() {
            store_health
                .log_first
                .store(base.first, std::sync::atomic::Ordering::Relaxed);
        }
        store_health.drop_pending.store(
            state.keep_from()
                > store_health
                    .log_first
                    .load(std::sync::atomic::Ordering::Relaxed),
            std::sync::atomic::Ordering::Relaxed,
        );
        if let Err(e) = checkpoint::tidy(&*store, &state) {
            tracing::warn!(error = %e, "the checkpoint folder could not be tidied");
        }
        let state = Arc::new(StateCell::new(state));
        let notifier = Arc::new(Notifier::default());
        let policy = Arc::new(policy);
        let admission = Arc::new(std::sync::Mutex::new(limits::Journal::new()));
        let (writer, writer_thread) = writer::spawn(writer::Setup {
            log,
            state: state.clone(),
            notifier: notifier.clone(),
            relay_key: relay_key.clone(),
            policy: policy.clone(),
            clock: clock.clone(),
            health: store_health.clone(),
            admission: admission.clone(),
        });
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
            admission,
            verify: std::sync::Mutex::new(None),
            checkpointing: AtomicBool::new(false),
            presence: Arc::default(),
            probe: Default::default(),
        });
        (engine, writer_thread)
    }

    /// Hands the changes of a nonce or challenge table (`limits`) to the writer, which commits
    /// them with its next batch.
    pub fn journal(&self, j: &mut limits::Journal) {
        if self.store.shared() {
            // Several nodes: claimed in the store when they were seen (`nodes`), and removed
            // by the store once expired.
            j.clear();
            return;
        }
        if !j.is_empty() {
            let mut a = self.admission.lock().unwrap_or_else(|p| p.into_inner());
            a.append(j);
        }
    }

    /// True when nonce or challenge changes wait for a commit.
    pub fn journal_pending(&self) -> bool {
        !self
            .admission
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
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

    /// Checks the whole log's chain on a thread of its own, as of now: start-up checks only
    /// the head. Damage is logged (run `relay check`) and shown by `/metrics`; the relay goes
    /// on serving (it serves its projection tables, not old records).
    pub fn verify_log_in_background(&self) {
        let h = self.store_health.clone();
        if h.log_check.load(std::sync::atomic::Ordering::Relaxed) != 0 {
            // Start-up already checked the whole chain (a new store, or a rebuild).
            return;
        }
        // Not the engine: holding it would keep the writer (and so the store) open at stop.
        let store = self.store.clone();
        let stopping = self.stopping.subscribe();
        let len = self.durable_len();
        // The records it reads stay until it is done.
        let hold = h.hold_drops();
        let spawned = std::thread::Builder::new()
            .name("formica-verify".into())
            .spawn(move || {
                let _hold = hold;
                let t0 = std::time::Instant::now();
                let stop = || *stopping.borrow();
                let r = crate::store::EventLog::verify_chain_until(&*store, len, 10_000, &stop);
                match r {
                    Ok(false) => {}
                    Ok(true) => {
                        h.log_check.store(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(records = len, seconds = t0.elapsed().as_secs_f64(), "the log's chain is sound");
                    }
                    Err(StoreError::Corrupt { seq, reason }) => {
                        h.log_check
                            .store(seq.max(1) + 1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!(record = seq, reason = %reason, "the log is damaged; the relay serves its projection tables, but stop it and run relay check");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the background check of the log could not read it");
                    }
                }
            });
        match spawned {
            Ok(t) => *self.verify.lock().unwrap_or_else(|p| p.into_inner()) = Some(t),
            Err(e) => tracing::warn!(error = %e, "cannot start the background check of the log"),
        }
    }

    /// Stops the background check of the log and waits for it (it lets go of the store).
    pub fn stop_verify(&self) {
        let _ = self.stopping.send(true);
        let t = self.verify.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    /// `relay check` on a running relay: replays the durable log, as of now, into a new state
    /// beside the live one (every record's chain hash and event, as at start-up), without
    /// stopping the writer. Blocking, and as costly as a start-up (time, and memory for a
    /// second state): call it on a blocking thread, one at a time.
    pub fn check_log(&self) -> Result<CheckReport, StoreError> {
        // The records and snapshots it reads stay until it is done.
        let _hold = self.store_health.hold_drops();
        let len = self.durable_len();
        // The live tables move on while the replay runs: they are compared by `relay check`
        // on a stopped relay only.
        let c = replay::check(self.store.clone(), &self.host, Some(len), false)?;
        Ok(CheckReport {
            records: c.log.len,
            chain_head: formica_protocol::hex::encode(&c.log.head),
            agents: c.agents,
            messages: c.messages,
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
