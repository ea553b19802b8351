//! The single writer: decides, applies and durably appends commands in batches that share one
//! fsync (group commit).
//!
//! The state sits in a [`StateCell`] with two locks. The writer holds the *durability gate*
//! from its first decision until the batch is on disk, and the state's write lock only while it
//! decides and applies. [`StateCell::read`] takes both, so whatever answers a request or feeds a
//! stream never sees an event that is not durable. [`StateCell::read_unsettled`] takes only the
//! state lock: the ingest pre-checks use it so that signature checks go on while the writer waits
//! for the disk (the writer decides again against the settled state, and anything the pre-checks
//! would answer from unsettled state, a `duplicate` or an error, is re-read through the gate
//! first). If the append fails (disk full, I/O error), the state is rebuilt from the log on disk
//! and every command in the batch is answered with the error: nothing partial is acknowledged.

mod recover;
mod turn;

use super::cell::StateCell;
use super::decide::{self, decide, Command, Ctx, Outcome};
use super::error::ApiError;
use super::events::Event;
use super::health::StoreHealth;
use super::notable::{is_notable, log_events};
use super::notifier::Notifier;
use super::policy::Policy;
use super::state::State;
use super::Clock;
use crate::store::EventLog;
use formica_protocol::SecretKey;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Most commands in one batch (one fsync).
pub const BATCH_COMMANDS_MAX: usize = 512;
/// Commands that may wait for the writer; beyond this, requests get `unavailable` at once.
pub const QUEUE_COMMANDS_MAX: usize = 8192;
/// Under load (a batch begins within [`BUSY_GAP`] of the previous one's end), the writer yields
/// its core for up to this long while it has fewer than [`LINGER_UNTIL_COMMANDS`], so that
/// handlers still verifying signatures share the commit instead of each paying for one (on a
/// relay with one core this doubled the envelopes per commit; see BENCHMARKS.md). It yields
/// rather than sleeps: a timer wake-up per batch cost more than it saved.
pub const LINGER_MAX: Duration = Duration::from_micros(200);
pub const LINGER_UNTIL_COMMANDS: usize = 32;
pub const BUSY_GAP: Duration = Duration::from_micros(100);

struct Job {
    cmd: Command,
    reply: oneshot::Sender<Result<Outcome, ApiError>>,
}

/// What the writer has done (for `/metrics`).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Appends to the log (each one fsync).
    pub commits: AtomicU64,
    /// Events in those appends.
    pub events: AtomicU64,
}

/// The handle the HTTP side uses to submit commands.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    stats: Arc<WriterStats>,
}

impl Writer {
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Submits a command and waits until it is decided and, if it changed anything, on disk.
    pub async fn submit(&self, cmd: Command) -> Result<Outcome, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Job { cmd, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::new(
                formica_protocol::ErrorCode::Unavailable,
                "the relay's write queue is full; retry shortly",
            )
            .with("retry_after_s", formica_protocol::Value::Int(1)),
            mpsc::error::TrySendError::Closed(_) => ApiError::new(
                formica_protocol::ErrorCode::Unavailable,
                "the relay is shutting down",
            ),
        })?;
        rx.await.unwrap_or_else(|_| {
            Err(ApiError::new(
                formica_protocol::ErrorCode::Unavailable,
                "the relay is shutting down",
            ))
        })
    }
}

/// Shortest time between two attempts to reopen a store that refused a write: after a first
/// attempt with the next batch, a store that cannot take writes (a full disk) is tried again at
/// most once a second, when a command arrives (the deadline ticker sends one while the store is
/// down).
pub const STORE_REOPEN_RETRY: Duration = Duration::from_secs(1);

/// Free space, beyond `limits.store_free_bytes_min`, that a store which refused a write must
/// have before it is reopened: 1 MiB. Reopening a store on a disk that is still full would only
/// make the next batch fail again, and each failure rebuilds the state from the log.
pub const REOPEN_FREE_BYTES_MARGIN: u64 = 1 << 20;

/// Longest wait between attempts to reopen a store whose appends keep failing right after it
/// reopens (the wait doubles from [`STORE_REOPEN_RETRY`] with each failure in a row).
pub const STORE_REOPEN_RETRY_MAX: Duration = Duration::from_secs(60);

/// A batch takes no further command once its records pass 16 MiB: one commit then writes at
/// most that plus the events of one command, which keeps what `limits.store_free_bytes_min`
/// must cover known. The commands left over start the next batch.
pub const BATCH_RECORD_BYTES_MAX: usize = 16 << 20;

/// Exit status of a relay that could not read its own store back after a failed write
/// (EX_IOERR): its memory then holds events that are not durable, and nothing may be served
/// from it; a restart replays what is.
pub const EXIT_STATE_LOST: i32 = 74;

/// Starts the writer thread. It ends when every `Writer` is dropped, and then drops the log, so
/// that the store is closed cleanly.
/// What the writer thread works with.
pub struct Setup {
    pub log: EventLog,
    pub state: Arc<StateCell>,
    pub notifier: Arc<Notifier>,
    pub relay_key: SecretKey,
    pub policy: Arc<Policy>,
    pub clock: Clock,
    pub health: Arc<StoreHealth>,
    /// Nonce and challenge rows to commit with the next batch.
    pub admission: Arc<std::sync::Mutex<super::limits::Journal>>,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writer::Setup({:?})", self.log)
    }
}

pub fn spawn(setup: Setup) -> (Writer, std::thread::JoinHandle<()>) {
    let Setup {
        log,
        state,
        notifier,
        relay_key,
        policy,
        clock,
        health,
        admission,
    } = setup;
    let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_COMMANDS_MAX);
    let stats = Arc::new(WriterStats::default());
    let st2 = stats.clone();
    let shared = log.store().shared();
    health.log_len.store(log.len(), Ordering::SeqCst);
    if shared {
        // Several nodes: the lead is this node's only once the store says so (`nodes`).
        health.set_leading(false);
    }
    let mut core = WriterCore {
        shared,
        stale: false,
        journal_keys: std::collections::VecDeque::new(),
        journal_commits: 0,
        prune: crate::store::Changes::new(),
        admission,
        log,
        state,
        notifier,
        relay_key,
        policy,
        clock,
        health,
        retry_at: None,
        failures_in_a_row: 0,
        damage_reported: false,
        carry: Vec::new(),
    };
    let handle = std::thread::Builder::new()
        .name("formica-writer".into())
        .spawn(move || {
            let mut last_end: Option<Instant> = None;
            loop {
                // Commands a full batch left over go first.
                let mut batch = std::mem::take(&mut core.carry);
                if batch.is_empty() {
                    match rx.blocking_recv() {
                        Some(first) => batch.push(first),
                        None => break,
                    }
                }
                let drain = |batch: &mut Vec<Job>, rx: &mut mpsc::Receiver<Job>| {
                    while batch.len() < BATCH_COMMANDS_MAX {
                        match rx.try_recv() {
                            Ok(j) => batch.push(j),
                            Err(_) => break,
                        }
                    }
                };
                drain(&mut batch, &mut rx);
                let busy = last_end.is_some_and(|t| t.elapsed() < BUSY_GAP);
                if busy && batch.len() < LINGER_UNTIL_COMMANDS {
                    let until = Instant::now() + LINGER_MAX;
                    while batch.len() < LINGER_UNTIL_COMMANDS && Instant::now() < until {
                        std::thread::yield_now();
                        drain(&mut batch, &mut rx);
                    }
                }
                let events = core.run_batch(batch);
                core.compact();
                if events > 0 {
                    st2.commits.fetch_add(1, Ordering::Relaxed);
                    st2.events.fetch_add(events as u64, Ordering::Relaxed);
                }
                last_end = Some(Instant::now());
            }
            core.close();
        })
        .unwrap_or_else(|e| panic!("cannot start the writer thread: {e}"));
    (Writer { tx, stats }, handle)
}

/// What the writer thread owns.
struct WriterCore {
    /// The store is shared with other nodes of the relay: each batch runs in a turn
    /// ([`Store::begin_turn`](crate::store::Store::begin_turn)).
    shared: bool,
    /// A shared store: a commit failed after its batch was applied in memory, so the state
    /// must be loaded again before anything is decided or served.
    stale: bool,
    /// A shared store: the first records of this node's commits whose journal rows are still
    /// kept (`state::refresh`), oldest first.
    journal_keys: std::collections::VecDeque<u64>,
    /// A shared store: commits with a journal row this node made since it started.
    journal_commits: u64,
    /// A shared store: journal rows to remove with the next commit.
    prune: crate::store::Changes,
    /// Nonce and challenge rows to commit with the next batch.
    admission: Arc<std::sync::Mutex<super::limits::Journal>>,
    log: EventLog,
    state: Arc<StateCell>,
    notifier: Arc<Notifier>,
    relay_key: SecretKey,
    policy: Arc<Policy>,
    clock: Clock,
    health: Arc<StoreHealth>,
    /// While the store is down: when the next attempt to reopen it may be made.
    retry_at: Option<Instant>,
    /// Failed appends since the last one that succeeded: each doubles the wait before the
    /// next reopen (an error free space does not show, such as a quota or a failing disk,
    /// would otherwise cost a rebuild of the state every second).
    failures_in_a_row: u32,
    /// Whether a store that reopened holding other records than the log was reported (once).
    damage_reported: bool,
    /// Commands left over when a batch reached [`BATCH_RECORD_BYTES_MAX`]; the next batch
    /// starts with them.
    carry: Vec<Job>,
}

/// The answer to every write while the store refuses them (logged once, when it failed).
fn store_down() -> ApiError {
    ApiError::new(
        formica_protocol::ErrorCode::StorageFull,
        "the relay cannot store more data now; nothing was accepted",
    )
    .with("retry_after_s", formica_protocol::Value::Int(5))
}

/// Answers every command of a batch with `err`; nothing of it was decided.
fn refuse(batch: Vec<Job>, err: &ApiError) {
    for job in batch {
        let _ = job.reply.send(Err(err.clone()));
    }
}

impl WriterCore {
    /// Decides, applies and appends one batch. Before anything is decided, a store that refused
    /// a write is tried again (at most every [`STORE_REOPEN_RETRY`]) and free space is checked
    /// against `limits.store_free_bytes_min`: while either fails, every command is refused with
    /// `storage_full` and nothing changes. Returns the number of events made durable.
    fn run_batch(&mut self, batch: Vec<Job>) -> usize {
        if self.shared {
            if let Err(e) = self.take_turn() {
                refuse(batch, &ApiError::from(e));
                return 0;
            }
        } else if !self.health.writable() && !self.try_reopen() {
            refuse(batch, &store_down());
            return 0;
        }
        if let Some(free) = self.log.store().free_bytes() {
            self.health.free_bytes.store(free, Ordering::Relaxed);
            let min = self.policy.limits.store_free_bytes_min;
            let low = free < min;
            if low != self.health.low_space() {
                self.health.set_low_space(low);
                if low {
                    tracing::warn!(
                        free,
                        min,
                        "free space below limits.store_free_bytes_min; writes are refused until there is more"
                    );
                } else {
                    tracing::info!(free, min, "free space is back above limits.store_free_bytes_min; writes are accepted again");
                }
            }
            if low {
                self.health
                    .low_space_refusals
                    .fetch_add(1, Ordering::Relaxed);
                refuse(batch, &store_down());
                return 0;
            }
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut records = Vec::new();
        let mut touched = BTreeSet::new();
        let state = self.state.clone();
        // Durable readers wait from here until the batch is on disk.
        let gate = state.close_gate();
        let mut st = state.write();
        let ctx = Ctx {
            now: (self.clock)(),
            relay_key: &self.relay_key,
            policy: &self.policy,
        };
        let bytes = std::cell::Cell::new(0usize);
        let mut notable: Vec<Event> = Vec::new();
        let mut apply = |st: &mut State, events: Vec<Event>| {
            for e in &events {
                if let Event::Envelope { envelope, .. } = e {
                    touched.extend(envelope.envelope().to.iter().cloned());
                }
                if is_notable(e) {
                    notable.push(e.clone());
                }
                st.apply(e);
                touched.extend(st.conv_audience(e));
                let r = e.encode();
                bytes.set(bytes.get() + r.len());
                records.push(r);
            }
        };
        let mut jobs = batch.into_iter();
        while let Some(job) = jobs.next() {
            if let Command::Transfer { envs, origin } = job.cmd {
                // One job, so nothing else runs between its envelopes and none of them can be
                // refused by a full queue while a later one from the same sender is stored.
                let mut held = std::collections::HashSet::new();
                let mut results = Vec::with_capacity(envs.len());
                for (env, fetched) in envs {
                    match decide::transfer_item(&st, &ctx, &mut held, env, fetched, &origin) {
                        Ok((events, outcome)) => {
                            apply(&mut st, events);
                            results.push(Ok(outcome));
                        }
                        Err(e) => results.push(Err(e)),
                    }
                }
                replies.push((job.reply, Ok(Outcome::Transfer(results))));
                continue;
            }
            match decide(&st, &ctx, job.cmd) {
                Ok((events, outcome)) => {
                    apply(&mut st, events);
                    replies.push((job.reply, Ok(outcome)));
                }
                Err(e) => replies.push((job.reply, Err(e))),
            }
            if bytes.get() >= BATCH_RECORD_BYTES_MAX {
                self.carry.extend(jobs.by_ref());
            }
        }
        // The rows the batch changed go into the same commit as its records. A store error met
        // while deciding or applying (a table that could not be read) fails the whole batch.
        let changes = st.take_changes();
        // Only this thread changes the state, so the write lock can go while the disk works: the
        // ingest pre-checks read on, durable readers still wait at the gate.
        drop(st);
        let changes = match changes {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "a projection table could not be read; the batch is refused");
                if self.shared {
                    // Loaded again at the next turn (the database may be out of reach now).
                    self.log.store().end_turn();
                    self.stale = true;
                    self.health.set_db_down(true);
                } else {
                    self.reload_state();
                }
                let err = ApiError::from(e);
                for (reply, res) in replies {
                    let _ = reply.send(res.and(Err(err.clone())));
                }
                return 0;
            }
        };
        let admission = self.take_admission();
        if records.is_empty() {
            // Nonces and challenges alone (a tick while nothing else writes).
            if !admission.is_empty() {
                if let Err(e) = self.log.store().commit(0, &[], &[&admission]) {
                    self.give_back(admission);
                    self.failed_append(&e);
                }
            } else if self.shared {
                self.log.store().end_turn();
            }
        } else {
            let journal = if self.shared {
                self.journal(records.len() as u64, &changes)
            } else {
                crate::store::Changes::new()
            };
            if let Err(e) = self
                .log
                .append_with(&records, &[&changes, &admission, &journal])
            {
                self.give_back(admission);
                self.failed_append(&e);
                let err = ApiError::from(e);
                for (reply, res) in replies {
                    let _ = reply.send(res.and(Err(err.clone())));
                }
                return 0;
            }
            // The rows are in the store now; reads stop looking at the batch's copy.
            self.state.read_unsettled().committed();
            self.health.log_len.store(self.log.len(), Ordering::SeqCst);
            if let Some(n) = self.log.store().syncs() {
                self.health.syncs.store(n, Ordering::Relaxed);
            }
            self.failures_in_a_row = 0;
        }
        drop(gate);
        log_events(&notable);
        self.notifier.notify(&touched);
        if !touched.is_empty() {
            self.notifier.wake_outbound();
        }
        for (reply, res) in replies {
            let _ = reply.send(res);
        }
        records.len()
    }

    /// Drops log records the checkpoints no longer need (`checkpoint::after_batch`). A failed
    /// drop is a failed write (one transaction: nothing half done): writes are refused until
    /// the store is reopened.
    fn compact(&mut self) {
        let r = super::checkpoint::after_batch(&mut self.log, &self.state, &self.health);
        if let Err(e) = r {
            tracing::error!(error = %e, "dropping old log records failed; writes are refused until the store can be written again");
            self.health.failures.fetch_add(1, Ordering::Relaxed);
            self.health.set_writable(false);
            self.retry_at = None;
        }
    }

    /// The nonce and challenge rows waiting for a commit.
    fn take_admission(&self) -> crate::store::Changes {
        // Empty on a shared store: `Engine::journal` adds nothing there (claimed instead).
        let j = std::mem::take(&mut *self.admission.lock().unwrap_or_else(|p| p.into_inner()));
        j.into_iter()
            .map(|(k, v)| ((crate::store::Table::Admission, k), v))
            .collect()
    }

    /// Rows of a commit that failed go back, behind any newer change to the same row.
    fn give_back(&self, rows: crate::store::Changes) {
        let mut a = self.admission.lock().unwrap_or_else(|p| p.into_inner());
        for ((_, k), v) in rows {
            a.entry(k).or_insert(v);
        }
    }
}
