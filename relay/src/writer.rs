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

use crate::decide::{decide, Command, Ctx, Outcome};
use crate::error::ApiError;
use crate::events::Event;
use crate::policy::Policy;
use crate::state::State;
use crate::store::{EventLog, StoreError};
use formica_protocol::{Handle, SecretKey};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LockResult, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

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

/// The relay's state and the gate that keeps events that are not yet durable out of sight.
#[derive(Debug)]
pub struct StateCell {
    gate: RwLock<()>,
    state: RwLock<State>,
}

/// A read view of the state holding only durable events (see [`StateCell::read`]).
pub struct Durable<'a> {
    // Field order: the state guard is released before the gate.
    state: RwLockReadGuard<'a, State>,
    _gate: RwLockReadGuard<'a, ()>,
}

impl std::fmt::Debug for Durable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Durable(..)")
    }
}

impl std::ops::Deref for Durable<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl StateCell {
    pub fn new(state: State) -> StateCell {
        StateCell {
            gate: RwLock::new(()),
            state: RwLock::new(state),
        }
    }

    /// The state as it is on disk: waits while the writer has a batch between its first decision
    /// and its fsync. Never poisoned (a panicking writer leaves the last applied state); the
    /// `LockResult` is for call sites written against `RwLock::read`.
    pub fn read(&self) -> LockResult<Durable<'_>> {
        let gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        Ok(Durable { state, _gate: gate })
    }

    /// The state including a batch the writer has applied but not yet made durable. Only for
    /// checks whose result the writer decides again, and whose refusals are re-read through
    /// [`read`](Self::read) before they are answered.
    pub fn read_unsettled(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Wakes streaming consumers when their inbox grows.
#[derive(Debug, Default)]
pub struct Notifier {
    senders: Mutex<HashMap<Handle, watch::Sender<u64>>>,
    /// Wakes the federation workers when a batch stored envelopes (their queues may have grown).
    outbound: tokio::sync::Notify,
}

impl Notifier {
    /// Completes after the next batch that stored an envelope is durable.
    pub fn outbound_grew(&self) -> tokio::sync::futures::Notified<'_> {
        self.outbound.notified()
    }

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

/// Records handed from one replay stage to the next at a time.
const REPLAY_CHUNK: usize = 1024;
/// Chunks in flight between the two replay stages (bounds the memory the pipeline holds).
const REPLAY_CHUNKS_IN_FLIGHT: usize = 16;

/// Record payloads read by the scan stage, in one buffer that travels back to be reused.
#[derive(Default)]
struct RawChunk {
    seqs: Vec<u64>,
    ends: Vec<usize>,
    bytes: Vec<u8>,
}

impl RawChunk {
    fn records(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        self.seqs
            .iter()
            .zip(starts.zip(self.ends.iter().copied()))
            .map(|(seq, (a, b))| (*seq, &self.bytes[a..b]))
    }
    fn clear(&mut self) {
        self.seqs.clear();
        self.ends.clear();
        self.bytes.clear();
    }
}

/// Replays a log into a fresh state (the start-up path and `relay check`).
///
/// Two stages overlap on a machine with more than one core: this thread reads records and
/// checks their chain hashes, a second thread decodes and applies them in order; read buffers
/// travel back to be reused. The result is the same as applying each record as it is read; the
/// first error (a broken chain or an undecodable record, with its record number) is the one
/// returned. (Decoding and applying stay on one thread: with a third stage the allocator,
/// freeing across threads, cost more than the overlap gained.)
pub fn replay(
    store: Arc<dyn crate::store::Store>,
    host: &formica_protocol::RelayHost,
) -> Result<(EventLog, State), StoreError> {
    use std::sync::mpsc::{channel, sync_channel};
    std::thread::scope(|s| {
        let (raw_tx, raw_rx) = sync_channel::<RawChunk>(REPLAY_CHUNKS_IN_FLIGHT);
        let (reuse_tx, reuse_rx) = channel::<RawChunk>();
        let host = host.clone();
        let applier = std::thread::Builder::new()
            .name("formica-replay".into())
            .spawn_scoped(s, move || -> Result<State, StoreError> {
                let mut st = State::new(host);
                for mut chunk in raw_rx {
                    for (seq, payload) in chunk.records() {
                        let ev = Event::decode(payload)
                            .map_err(|reason| StoreError::Corrupt { seq, reason })?;
                        st.apply(&ev);
                    }
                    chunk.clear();
                    let _ = reuse_tx.send(chunk);
                }
                Ok(st)
            })
            .map_err(|e| StoreError::Io(format!("cannot start the replay thread: {e}")))?;
        let mut chunk = RawChunk::default();
        let stopped = || StoreError::Io("replay stopped".into());
        let opened = EventLog::open(store, &mut |seq, payload| {
            chunk.seqs.push(seq);
            chunk.bytes.extend_from_slice(payload);
            chunk.ends.push(chunk.bytes.len());
            if chunk.seqs.len() == REPLAY_CHUNK {
                let next = reuse_rx.try_recv().unwrap_or_default();
                raw_tx
                    .send(std::mem::replace(&mut chunk, next))
                    .map_err(|_| stopped())?;
            }
            Ok(())
        });
        // Also after a broken chain: the records before the break are decoded, so that an
        // earlier undecodable record is the error reported. A failed send means the applier
        // stopped; its error is reported below.
        if !chunk.seqs.is_empty() {
            let _ = raw_tx.send(std::mem::take(&mut chunk));
        }
        drop(raw_tx);
        let applied = applier
            .join()
            .unwrap_or_else(|_| Err(StoreError::Io("the replay thread panicked".into())));
        // A decoding error stops the scan (its sends fail), so it comes first; then the scan's.
        let st = applied?;
        let log = opened?;
        Ok((log, st))
    })
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
    let gate = state.gate.write().unwrap_or_else(|p| p.into_inner());
    let mut st = state.state.write().unwrap_or_else(|p| p.into_inner());
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
            for env in envs {
                match crate::decide::transfer_item(&st, &ctx, &mut held, env, &origin) {
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
            let mut st = state.state.write().unwrap_or_else(|p| p.into_inner());
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
        notifier.outbound.notify_waiters();
    }
    for (reply, res) in replies {
        let _ = reply.send(res);
    }
    records.len()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{MemStore, Store};
    use formica_protocol::envelope::ContactLevel;
    use formica_protocol::RelayHost;

    /// The staged replay gives the state of applying each record in turn, across many chunks,
    /// and reports a record that does not decode by its number.
    #[test]
    fn staged_replay_equals_applying_in_turn() {
        let host = RelayHost::parse("relay.test").unwrap();
        let store: Arc<dyn Store> = Arc::new(MemStore::default());
        let (mut log, _) = replay(store.clone(), &host).unwrap();
        let owner = Handle::parse("@a@relay.test").unwrap();
        let n = REPLAY_CHUNK * 2 + 7;
        let events: Vec<Event> = (0..n)
            .map(|i| Event::ContactSet {
                at: i as i64,
                owner: owner.clone(),
                contact: Handle::parse(&format!("@b{i}@relay.test")).unwrap(),
                level: ContactLevel::Message,
            })
            .collect();
        let records: Vec<Vec<u8>> = events.iter().map(Event::encode).collect();
        log.append(&records).unwrap();
        let mut expect = State::new(host.clone());
        for e in &events {
            expect.apply(e);
        }
        let (_, got) = replay(store.clone(), &host).unwrap();
        assert_eq!(got, expect);
        assert_eq!(got.events, n as u64);
        // A record that is chained correctly but does not decode is named by its number.
        let (mut log, _) = replay(store.clone(), &host).unwrap();
        log.append(&[b"{\"t\":\"nonsense\"}".to_vec()]).unwrap();
        match replay(store, &host) {
            Err(StoreError::Corrupt { seq, .. }) => assert_eq!(seq, n as u64 + 1),
            other => panic!("expected a corrupt record, got {:?}", other.map(|_| ())),
        }
    }
}
