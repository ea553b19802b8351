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

use super::cell::StateCell;
use super::decide::{self, decide, Command, Ctx, Outcome};
use super::error::ApiError;
use super::events::Event;
use super::notifier::Notifier;
use super::policy::Policy;
use super::replay::replay;
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

/// Starts the writer thread. It ends when every `Writer` is dropped.
pub fn spawn(
    mut log: EventLog,
    state: Arc<StateCell>,
    notifier: Arc<Notifier>,
    relay_key: SecretKey,
    policy: Arc<Policy>,
    clock: Clock,
) -> (Writer, std::thread::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_COMMANDS_MAX);
    let stats = Arc::new(WriterStats::default());
    let st2 = stats.clone();
    let handle = std::thread::Builder::new()
        .name("formica-writer".into())
        .spawn(move || {
            let mut last_end: Option<Instant> = None;
            while let Some(first) = rx.blocking_recv() {
                let mut batch = vec![first];
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
                let events = run_batch(
                    &mut log, &state, &notifier, &relay_key, &policy, &clock, batch,
                );
                if events > 0 {
                    st2.commits.fetch_add(1, Ordering::Relaxed);
                    st2.events.fetch_add(events as u64, Ordering::Relaxed);
                }
                last_end = Some(Instant::now());
            }
        })
        .unwrap_or_else(|e| panic!("cannot start the writer thread: {e}"));
    (Writer { tx, stats }, handle)
}

fn run_batch(
    log: &mut EventLog,
    state: &StateCell,
    notifier: &Notifier,
    relay_key: &SecretKey,
    policy: &Policy,
    clock: &Clock,
    batch: Vec<Job>,
) -> usize {
    let mut replies = Vec::with_capacity(batch.len());
    let mut records = Vec::new();
    let mut touched = BTreeSet::new();
    // Durable readers wait from here until the batch is on disk.
    let gate = state.close_gate();
    let mut st = state.write();
    let ctx = Ctx {
        now: clock(),
        relay_key,
        policy,
    };
    let mut apply = |st: &mut State, events: Vec<Event>| {
        for e in &events {
            if let Event::Envelope { envelope, .. } = e {
                touched.extend(envelope.envelope().to.iter().cloned());
            }
            st.apply(e);
            records.push(e.encode());
        }
    };
    for job in batch {
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
    }
    // Only this thread changes the state, so the write lock can go while the disk works: the
    // ingest pre-checks read on, durable readers still wait at the gate.
    drop(st);
    if !records.is_empty() {
        if let Err(e) = log.append(&records) {
            // The events are applied in memory but not on disk: go back to what the disk holds.
            tracing::error!(error = %e, commands = replies.len(), "append failed; rebuilding state from the log");
            let mut st = state.write();
            let host = st.host.clone();
            match replay(log.store().clone(), &host) {
                Ok((l, s)) => {
                    *log = l;
                    *st = s;
                }
                Err(e2) => {
                    tracing::error!(error = %e2, "rebuilding after a failed append failed; stopping");
                    std::process::exit(70);
                }
            }
            let err = ApiError::from(e);
            for (reply, res) in replies {
                let _ = reply.send(res.and(Err(err.clone())));
            }
            return 0;
        }
    }
    drop(gate);
    notifier.notify(&touched);
    if !touched.is_empty() {
        notifier.wake_outbound();
    }
    for (reply, res) in replies {
        let _ = reply.send(res);
    }
    records.len()
}
