//! The single writer: decides, applies and durably appends commands in batches that share one
//! fsync (group commit).
//!
//! Readers hold the state's read lock; the writer holds the write lock from its first decision
//! until the batch is on disk, so no reader ever sees an event that is not durable. If the append
//! fails (disk full, I/O error), the state is rebuilt from the log on disk and every command in
//! the batch is answered with the error: nothing partial is acknowledged.

use crate::decide::{decide, Command, Ctx, Outcome};
use crate::error::ApiError;
use crate::events::Event;
use crate::policy::Policy;
use crate::state::State;
use crate::store::{EventLog, StoreError};
use formica_protocol::{Handle, SecretKey};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};

/// Most commands in one batch (one fsync).
pub const BATCH_COMMANDS_MAX: usize = 512;
/// Commands that may wait for the writer; beyond this, requests get `unavailable` at once.
pub const QUEUE_COMMANDS_MAX: usize = 8192;

/// A clock in milliseconds since the Unix epoch; tests pass a fake one.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    })
}

struct Job {
    cmd: Command,
    reply: oneshot::Sender<Result<Outcome, ApiError>>,
}

/// Wakes streaming consumers when their inbox grows.
#[derive(Debug, Default)]
pub struct Notifier {
    senders: Mutex<HashMap<Handle, watch::Sender<u64>>>,
}

impl Notifier {
    /// A receiver that changes whenever `h`'s inbox grows.
    pub fn subscribe(&self, h: &Handle) -> watch::Receiver<u64> {
        let mut m = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(h.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn notify(&self, handles: &BTreeSet<Handle>) {
        let mut m = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        for h in handles {
            if let Some(s) = m.get(h) {
                s.send_modify(|v| *v += 1);
                if s.receiver_count() == 0 {
                    m.remove(h);
                }
            }
        }
    }

    /// Number of agents with at least one open stream.
    pub fn watched(&self) -> usize {
        self.senders.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// The handle the HTTP side uses to submit commands.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
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

/// Replays a log into a fresh state (the start-up path and `relay check`).
pub fn replay(
    store: Arc<dyn crate::store::Store>,
    host: &formica_protocol::RelayHost,
) -> Result<(EventLog, State), StoreError> {
    let mut st = State::new(host.clone());
    let log = EventLog::open(store, &mut |seq, payload| {
        let ev = Event::decode(payload).map_err(|reason| StoreError::Corrupt { seq, reason })?;
        st.apply(&ev);
        Ok(())
    })?;
    Ok((log, st))
}

/// Starts the writer thread. It ends when every `Writer` is dropped.
pub fn spawn(
    mut log: EventLog,
    state: Arc<RwLock<State>>,
    notifier: Arc<Notifier>,
    relay_key: SecretKey,
    policy: Arc<Policy>,
    clock: Clock,
) -> (Writer, std::thread::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_COMMANDS_MAX);
    let handle = std::thread::Builder::new()
        .name("formica-writer".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut batch = vec![first];
                while batch.len() < BATCH_COMMANDS_MAX {
                    match rx.try_recv() {
                        Ok(j) => batch.push(j),
                        Err(_) => break,
                    }
                }
                run_batch(
                    &mut log, &state, &notifier, &relay_key, &policy, &clock, batch,
                );
            }
        })
        .unwrap_or_else(|e| panic!("cannot start the writer thread: {e}"));
    (Writer { tx }, handle)
}

fn run_batch(
    log: &mut EventLog,
    state: &Arc<RwLock<State>>,
    notifier: &Notifier,
    relay_key: &SecretKey,
    policy: &Policy,
    clock: &Clock,
    batch: Vec<Job>,
) {
    let mut replies = Vec::with_capacity(batch.len());
    let mut records = Vec::new();
    let mut touched = BTreeSet::new();
    let mut st = state.write().unwrap_or_else(|p| p.into_inner());
    let ctx = Ctx {
        now: clock(),
        relay_key,
        policy,
    };
    for job in batch {
        match decide(&st, &ctx, job.cmd) {
            Ok((events, outcome)) => {
                for e in &events {
                    if let Event::Envelope { envelope, .. } = e {
                        touched.extend(envelope.envelope().to.iter().cloned());
                    }
                    st.apply(e);
                    records.push(e.encode());
                }
                replies.push((job.reply, Ok(outcome)));
            }
            Err(e) => replies.push((job.reply, Err(e))),
        }
    }
    if !records.is_empty() {
        if let Err(e) = log.append(&records) {
            // The events are applied in memory but not on disk: go back to what the disk holds.
            tracing::error!(error = %e, commands = replies.len(), "append failed; rebuilding state from the log");
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
            return;
        }
    }
    drop(st);
    notifier.notify(&touched);
    for (reply, res) in replies {
        let _ = reply.send(res);
    }
}
