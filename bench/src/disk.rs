//! Item 8: the disk bound. With retention on and a recipient that reads its inbox, does the data
//! directory stop growing? One relay process, configured so that retention sweeps and
//! checkpoints happen within a short run, takes `messages` envelopes on the batch endpoint from
//! one sender while one reader pages the recipient's inbox (which hands the items out, and
//! settles them: no ack is asked for). The data directory's size, the log's first kept record
//! and the checkpoint counter are sampled every `sample_every` messages; the largest size seen
//! (polled several times a second) and the size after the run settles are the figures.
//!
//! Envelopes are signed while the run goes (3,000,000 signed up front would hold about 2 GB),
//! on threads of their own that stay a bounded number of batches ahead of the senders, so each
//! envelope is well inside the short freshness window this relay is given.

use crate::agents::{self, Agent};
use crate::http::{self, Conn};
use crate::ingest::{count_accepted, relay_metric};
use crate::relay_proc::{self, Launcher, RelayProc, SETUP_POW_DIFFICULTY};
use crate::report::J;
use anyhow::{bail, Context, Result};
use formica_protocol::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Retention of the run's relay, short enough that everything retention does happens within
/// seconds: an item handed to its reader (and settled, no ack being asked) is removable after
/// `DELIVERED_MS`; nothing unread is removed within a run of up to `MAX_MS`.
const DELIVERED_MS: i64 = 2_000;
const MAX_MS: i64 = 600_000;
/// Freshness window and skew of the run's relay. Short, so that deduplication ids may be
/// dropped after `DEDUP_MS`, which must cover the window plus skew and the dead-letter age
/// plus skew (`Policy::validate`); envelopes are sent within a second or so of being signed.
const WINDOW_MS: i64 = 30_000;
const SKEW_MS: i64 = 5_000;
const DEAD_LETTER_MS: i64 = 30_000;
const DEDUP_MS: i64 = 60_000;
/// A sweep twice a second, each examining up to 100,000 rows of each kind (the relay's most):
/// at the benchmark's rates one sweep keeps up with the removable backlog.
const SWEEP_MS: u64 = 500;
const SWEEP_MAX: usize = 100_000;
/// What the relay logs: warnings, and each checkpoint made and each drop of old records.
const LOG_FILTER: &str = "warn,formica_relay::engine::checkpoint=info";
/// Longest any one HTTP exchange may take (a 256-envelope batch is answered in well under a
/// second; a snapshot running alongside may slow it, never by this much).
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the data directory's size is polled for the largest size seen.
const POLL: Duration = Duration::from_millis(250);
/// The reader's pause when a page comes back empty.
const READER_IDLE: Duration = Duration::from_millis(50);
/// Longest the reader waits, once sending ended, for the last accepted items to appear.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Most relay log lines kept for the report (warnings and errors).
const LOG_LINES_MAX: usize = 20;

/// Counts and sizes of one run.
#[derive(Debug, Clone)]
pub struct DiskPlan {
    pub messages: u64,
    pub sample_every: u64,
    pub checkpoint_records: u64,
    pub batch: usize,
    pub conns: usize,
    pub page: usize,
    pub text_bytes: usize,
    pub settle: Duration,
    pub sign_threads: usize,
}

/// The relay configuration of the run: the benchmark's tier (no rate limit bites), batches of
/// `plan.batch`, inbox pages of `plan.page`, and the short retention above.
pub fn config_text(plan: &DiskPlan) -> String {
    format!(
        r#"pow_difficulty = {SETUP_POW_DIFFICULTY}
[limits]
{limits}batch_envelopes_max = {batch}
inbox_page_max = {page}
[time]
window_ms = {WINDOW_MS}
skew_ms = {SKEW_MS}
[federation]
dead_letter_ms = {DEAD_LETTER_MS}
[retention]
delivered_ms = {DELIVERED_MS}
max_ms = {MAX_MS}
dedup_ms = {DEDUP_MS}
sweep_ms = {SWEEP_MS}
sweep_max = {SWEEP_MAX}
checkpoint_records = {checkpoint_records}
{tier}"#,
        batch = plan.batch,
        page = plan.page,
        checkpoint_records = plan.checkpoint_records,
        limits = relay_proc::LIMITS_TEXT,
        tier = relay_proc::tier_text(),
    )
}

/// Sizes in a data directory, in bytes (file lengths; `allocated` counts the blocks).
#[derive(Debug, Clone, Copy, Default)]
pub struct DirSize {
    pub total: u64,
    pub log: u64,
    pub checkpoints: u64,
    pub snapshots: u64,
    pub allocated: u64,
}

impl DirSize {
    fn to_json(self) -> J {
        J::obj()
            .with("data_dir_bytes", self.total)
            .with("log_redb_bytes", self.log)
            .with("checkpoints_dir_bytes", self.checkpoints)
            .with("snapshot_files", self.snapshots)
            .with("other_bytes", self.total - self.log - self.checkpoints)
            .with("data_dir_allocated_bytes", self.allocated)
    }
}

/// Sums every file under `data` (files that vanish while it looks, as snapshots do, count 0).
pub fn dir_size(data: &Path) -> DirSize {
    fn walk(d: &Path, top: bool, in_ckpt: bool, s: &mut DirSize) {
        use std::os::unix::fs::MetadataExt;
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            let name = e.file_name();
            if m.is_dir() {
                walk(
                    &e.path(),
                    false,
                    in_ckpt || (top && name == "checkpoints"),
                    s,
                );
            } else {
                s.total += m.len();
                s.allocated += m.blocks() * 512;
                if top && name == "log.redb" {
                    s.log += m.len();
                }
                if in_ckpt {
                    s.checkpoints += m.len();
                    if name.to_string_lossy().ends_with(".snap") {
                        s.snapshots += 1;
                    }
                }
            }
        }
    }
    let mut s = DirSize::default();
    walk(data, true, false, &mut s);
    s
}

/// One reading of the run.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Envelopes the relay answered for (accepted or not) when it was taken.
    pub sent: u64,
    pub accepted: u64,
    /// Inbox items the reader was handed.
    pub read: u64,
    pub seconds: f64,
    pub size: DirSize,
    pub log_first_record: Option<u64>,
    pub checkpoints: Option<u64>,
    pub checkpoint_record: Option<u64>,
    pub rss: Option<u64>,
}

impl Sample {
    pub fn to_json(&self) -> J {
        J::obj()
            .with("sent", self.sent)
            .with("accepted", self.accepted)
            .with("read", self.read)
            .with("seconds", self.seconds)
            .with("size", self.size.to_json())
            .with("formica_store_log_first_record", self.log_first_record)
            .with("formica_checkpoints_total", self.checkpoints)
            .with("formica_checkpoint_record", self.checkpoint_record)
            .with("relay_rss_bytes", self.rss)
    }

    /// One line of the printed table.
    pub fn line(&self) -> String {
        format!(
            "{:.1} MB (du {:.1}) = {:.1} + {:.1}; rec {}; ckpt {}; {}",
            self.size.total as f64 / 1e6,
            self.size.allocated as f64 / 1e6,
            self.size.log as f64 / 1e6,
            self.size.checkpoints as f64 / 1e6,
            opt(self.log_first_record),
            opt(self.checkpoints),
            self.rss
                .map(|r| format!("{:.0} MB", r as f64 / 1e6))
                .unwrap_or_else(|| "-".into())
        )
    }
}

fn opt(x: Option<u64>) -> String {
    x.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// What one run found.
#[derive(Debug, Clone)]
pub struct DiskResult {
    pub plan: DiskPlan,
    pub config: String,
    pub accepted: u64,
    pub rejected: u64,
    pub first_rejection: Option<String>,
    pub read: u64,
    /// Pages answered 410 `cursor_too_old` (the reader then resumed at the oldest kept item).
    pub cursor_too_old: u64,
    pub send_time: Duration,
    pub total_time: Duration,
    pub samples: Vec<Sample>,
    /// The largest size polled (file lengths), and how many envelopes had been answered then.
    pub max_size: DirSize,
    pub max_at_sent: u64,
    /// The largest allocated size polled (`du`), and when.
    pub max_allocated: DirSize,
    pub max_allocated_at_sent: u64,
    /// After the run and `settle`, before the relay stops.
    pub settled: Sample,
    /// After the relay stopped cleanly.
    pub after_stop: DirSize,
    pub relay_log: RelayLog,
}

impl DiskResult {
    pub fn accepted_per_s(&self) -> f64 {
        self.accepted as f64 / self.send_time.as_secs_f64()
    }

    pub fn to_json(&self) -> J {
        let p = &self.plan;
        J::obj()
            .with("messages_requested", p.messages)
            .with(
                "topology",
                "one sender posts to one recipient, which granted it a contact; one reader pages the recipient's inbox (GET /v1/inbox?after=) as the messages arrive; no ack asked, so a handed-out item is settled",
            )
            .with("batch_size", p.batch)
            .with("connections", p.conns)
            .with("inbox_page", p.page)
            .with("text_bytes", p.text_bytes)
            .with("sample_every", p.sample_every)
            .with("settle_seconds", p.settle.as_secs_f64())
            .with(
                "retention",
                J::obj()
                    .with("delivered_ms", DELIVERED_MS)
                    .with("max_ms", MAX_MS)
                    .with("dedup_ms", DEDUP_MS)
                    .with("sweep_ms", SWEEP_MS)
                    .with("sweep_max", SWEEP_MAX)
                    .with("checkpoint_records", p.checkpoint_records)
                    .with("time_window_ms", WINDOW_MS)
                    .with("time_skew_ms", SKEW_MS)
                    .with("federation_dead_letter_ms", DEAD_LETTER_MS),
            )
            .with("relay_config", self.config.as_str())
            .with("accepted", self.accepted)
            .with("rejected", self.rejected)
            .with("first_rejection", self.first_rejection.clone())
            .with("read", self.read)
            .with("cursor_too_old_answers", self.cursor_too_old)
            .with("send_seconds", self.send_time.as_secs_f64())
            .with("accepted_per_s", self.accepted_per_s())
            .with("seconds", self.total_time.as_secs_f64())
            .with(
                "samples",
                J::Arr(self.samples.iter().map(Sample::to_json).collect()),
            )
            .with("max_data_dir_bytes", self.max_size.total)
            .with("max_seen", self.max_size.to_json().with("at_sent", self.max_at_sent))
            .with("max_data_dir_allocated_bytes", self.max_allocated.allocated)
            .with(
                "max_allocated_seen",
                self.max_allocated
                    .to_json()
                    .with("at_sent", self.max_allocated_at_sent),
            )
            .with("settled", self.settled.to_json())
            .with("after_clean_stop", self.after_stop.to_json())
            .with("relay_log", self.relay_log.to_json())
    }
}

/// What the relay logged (its stderr), read before the data directory goes.
#[derive(Debug, Clone, Default)]
pub struct RelayLog {
    /// Every "checkpoint made" line (position, rows, keep_from, seconds), the first
    /// [`LOG_LINES_MAX`] x 10.
    pub checkpoints: Vec<String>,
    pub checkpoints_made: usize,
    /// Every "dropped" line (the new first record), the first [`LOG_LINES_MAX`] x 10.
    pub drop_lines: Vec<String>,
    pub drops: usize,
    /// Warnings and errors, the first [`LOG_LINES_MAX`].
    pub problems: Vec<String>,
    pub problems_total: usize,
}

impl RelayLog {
    pub fn read(relay: &RelayProc) -> RelayLog {
        let text = std::fs::read_to_string(relay.dir.join("relay.stderr.log")).unwrap_or_default();
        let mut l = RelayLog::default();
        let keep = |v: &mut Vec<String>, line: &str, max: usize| {
            if v.len() < max {
                v.push(line.to_owned());
            }
        };
        for line in text.lines() {
            if line.contains("checkpoint made") {
                l.checkpoints_made += 1;
                keep(&mut l.checkpoints, line, LOG_LINES_MAX * 10);
            } else if line.contains("records behind the older checkpoint dropped") {
                l.drops += 1;
                keep(&mut l.drop_lines, line, LOG_LINES_MAX * 10);
            } else if line.contains(" WARN ") || line.contains("ERROR") {
                l.problems_total += 1;
                keep(&mut l.problems, line, LOG_LINES_MAX);
            }
        }
        l
    }

    /// `name=value` of the last checkpoint line (`rows`, `position`, ...).
    pub fn last_checkpoint_field(&self, name: &str) -> Option<String> {
        let line = self.checkpoints.last()?;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    }

    fn to_json(&self) -> J {
        let lines = |v: &[String]| J::Arr(v.iter().map(|s| J::from(s.as_str())).collect());
        J::obj()
            .with("filter", LOG_FILTER)
            .with("checkpoint_made_lines", self.checkpoints_made)
            .with("drop_lines", self.drops)
            .with("checkpoints", lines(&self.checkpoints))
            .with("drops", lines(&self.drop_lines))
            .with("warnings_and_errors", self.problems_total)
            .with("first_warnings_and_errors", lines(&self.problems))
    }
}

/// Counters shared by the senders, the reader and the monitor.
#[derive(Debug, Default)]
struct Counts {
    answered: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    read: AtomicU64,
    too_old: AtomicU64,
    sending_done: AtomicBool,
    first_rejection: Mutex<Option<String>>,
}

/// Signing threads: told to stop (and joined) when dropped, on every path out of the run.
struct Signers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
}

impl Signers {
    fn join(mut self) -> Result<()> {
        for t in self.threads.drain(..) {
            t.join()
                .map_err(|_| anyhow::anyhow!("signing thread panicked"))??;
        }
        Ok(())
    }
}

impl Drop for Signers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One prepared batch request and the envelopes in it.
type Batch = (u64, Vec<u8>);

/// Starts the signing threads: batch `b` holds messages `b * batch ..`, each a `message` from
/// `agents[0]` to `agents[1]` signed just before it is queued. The queue holds a few batches per
/// connection, so an envelope waits well under a second between signing and sending.
fn start_signers(
    addr: &str,
    agents: Arc<Vec<Agent>>,
    plan: &DiskPlan,
    tx: tokio::sync::mpsc::Sender<Batch>,
) -> Signers {
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let batches = plan.messages.div_ceil(plan.batch as u64);
    let threads = (0..plan.sign_threads.max(1))
        .map(|_| {
            let (stop, next, tx, agents) = (stop.clone(), next.clone(), tx.clone(), agents.clone());
            let (addr, plan) = (addr.to_owned(), plan.clone());
            std::thread::spawn(move || -> Result<()> {
                let ct = [("content-type", "application/json")];
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches || stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    let lo = b * plan.batch as u64;
                    let hi = (lo + plan.batch as u64).min(plan.messages);
                    let mut body = b"{\"envelopes\":[".to_vec();
                    for k in lo..hi {
                        if k > lo {
                            body.push(b',');
                        }
                        let e = agents[0].message(
                            &agents[1].handle,
                            &format!("disk{k:010}"),
                            plan.text_bytes,
                        )?;
                        body.extend_from_slice(&e.wire_bytes());
                    }
                    body.extend_from_slice(b"]}");
                    let mut item = (
                        hi - lo,
                        http::request("POST", "/v1/envelopes/batch", &addr, &ct, &body),
                    );
                    // Never block for good: the run may end (or fail) while the queue is full.
                    loop {
                        match tx.try_send(item) {
                            Ok(()) => break,
                            Err(tokio::sync::mpsc::error::TrySendError::Full(back)) => {
                                if stop.load(Ordering::Relaxed) {
                                    return Ok(());
                                }
                                item = back;
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                        }
                    }
                }
            })
        })
        .collect();
    Signers { stop, threads }
}

async fn send_bounded(conn: &mut Conn, req: &[u8], what: &str) -> Result<http::Response> {
    tokio::time::timeout(HTTP_TIMEOUT, conn.send(req))
        .await
        .with_context(|| format!("{what}: no answer within {HTTP_TIMEOUT:?}"))?
}

async fn metric(addr: &str, name: &str) -> Option<u64> {
    tokio::time::timeout(HTTP_TIMEOUT, relay_metric(addr, name))
        .await
        .ok()
        .and_then(Result::ok)
}

/// One sender connection: takes prepared batches off the queue until it is empty and closed.
async fn sender(
    addr: String,
    rx: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Batch>>>,
    counts: Arc<Counts>,
) -> Result<()> {
    let mut conn = Conn::connect(&addr).await?;
    loop {
        let next = rx.lock().await.recv().await;
        let Some((n, req)) = next else {
            return Ok(());
        };
        let r = send_bounded(&mut conn, &req, "batch").await?;
        let ok = if r.status == 200 || r.status == 201 {
            count_accepted(&r.body)
        } else {
            0
        };
        counts.accepted.fetch_add(ok, Ordering::Relaxed);
        let bad = n.saturating_sub(ok);
        if bad > 0 {
            counts.rejected.fetch_add(bad, Ordering::Relaxed);
            let mut f = counts
                .first_rejection
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(format!(
                    "{} {}",
                    r.status,
                    r.text().chars().take(400).collect::<String>()
                ));
            }
        }
        counts.answered.fetch_add(n, Ordering::Relaxed);
    }
}

fn str_member(v: &Value, k: &str) -> Option<u64> {
    v.as_object()?.get(k)?.as_str()?.parse().ok()
}

/// The reader: pages the recipient's inbox after its cursor until everything accepted was
/// handed out. A 410 `cursor_too_old` resumes at the oldest item the relay still keeps.
async fn reader(addr: String, me: Arc<Vec<Agent>>, page: usize, counts: Arc<Counts>) -> Result<()> {
    let mut conn = Conn::connect(&addr).await?;
    let mut cursor = 0u64;
    let mut idle_since: Option<Instant> = None;
    loop {
        let path = format!("/v1/inbox?after={cursor}&limit={page}");
        let auth = me[1].auth("GET", &path, b"");
        let req = http::request("GET", &path, &addr, &[("authorization", &auth)], b"");
        let r = send_bounded(&mut conn, &req, "inbox page").await?;
        let got = match r.status {
            200 => {
                let v = r.json()?;
                let n = v
                    .as_object()
                    .and_then(|o| o.get("items"))
                    .and_then(Value::as_array)
                    .map(<[Value]>::len)
                    .context("inbox page without items")?;
                cursor = str_member(&v, "next").context("inbox page without next")?;
                n as u64
            }
            410 => {
                let v = r.json()?;
                let oldest = str_member(&v, "oldest")
                    .with_context(|| format!("410 without oldest: {}", r.text()))?;
                counts.too_old.fetch_add(1, Ordering::Relaxed);
                cursor = oldest.saturating_sub(1);
                0
            }
            s => bail!("inbox page after {cursor}: {s} {}", r.text()),
        };
        counts.read.fetch_add(got, Ordering::Relaxed);
        if got > 0 {
            idle_since = None;
            continue;
        }
        if counts.sending_done.load(Ordering::SeqCst) {
            if counts.read.load(Ordering::Relaxed) >= counts.accepted.load(Ordering::Relaxed) {
                return Ok(());
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() > DRAIN_TIMEOUT {
                bail!(
                    "the reader was handed {} items of {} accepted, and nothing more for {DRAIN_TIMEOUT:?}",
                    counts.read.load(Ordering::Relaxed),
                    counts.accepted.load(Ordering::Relaxed)
                );
            }
        }
        tokio::time::sleep(READER_IDLE).await;
    }
}

async fn sample(relay: &RelayProc, counts: &Counts, t0: Instant) -> Sample {
    let addr = relay.addr.as_str();
    Sample {
        sent: counts.answered.load(Ordering::Relaxed),
        accepted: counts.accepted.load(Ordering::Relaxed),
        read: counts.read.load(Ordering::Relaxed),
        seconds: t0.elapsed().as_secs_f64(),
        size: dir_size(&relay.dir.join("data")),
        log_first_record: metric(addr, "formica_store_log_first_record").await,
        checkpoints: metric(addr, "formica_checkpoints_total").await,
        checkpoint_record: metric(addr, "formica_checkpoint_record").await,
        rss: crate::sys::rss(relay.pid).ok().map(|(r, _)| r),
    }
}

/// Tracks the largest sizes polled: by file length (what `ls` shows; redb's file may be sparse)
/// and by allocated blocks (what `du` shows, the disk actually used).
struct MaxSeen {
    size: DirSize,
    at_sent: u64,
    allocated: DirSize,
    allocated_at_sent: u64,
}

impl MaxSeen {
    fn poll(&mut self, data: &Path, counts: &Counts) {
        let s = dir_size(data);
        let sent = counts.answered.load(Ordering::Relaxed);
        if s.total > self.size.total {
            self.size = s;
            self.at_sent = sent;
        }
        if s.allocated > self.allocated.allocated {
            self.allocated = s;
            self.allocated_at_sent = sent;
        }
    }
}

/// The run, against a relay already started with [`config_text`].
async fn drive(relay: &RelayProc, plan: &DiskPlan) -> Result<DiskResult> {
    let addr = relay.addr.clone();
    let data = relay.dir.join("data");
    let host = relay_proc::host();
    let pair: Arc<Vec<Agent>> = Arc::new(vec![Agent::new(0, &host)?, Agent::new(1, &host)?]);
    // Registered now, not at the program's start: this relay's window is short.
    let reg_ts = agents::now_ms() - 1_000;
    tokio::time::timeout(
        HTTP_TIMEOUT,
        agents::register_all_at(&addr, pair.clone(), 0..2, reg_ts),
    )
    .await
    .context("registering: no answer in time")??;
    tokio::time::timeout(
        HTTP_TIMEOUT,
        agents::allow_all(&addr, pair.clone(), vec![(1, 0)]),
    )
    .await
    .context("contact grant: no answer in time")??;

    let counts = Arc::new(Counts::default());
    let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(2 * plan.conns.max(1));
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let signers = start_signers(&addr, pair.clone(), plan, tx);
    let t0 = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..plan.conns.max(1) {
        senders.spawn(sender(addr.clone(), rx.clone(), counts.clone()));
    }
    let mut reading = tokio::task::JoinSet::new();
    reading.spawn(reader(
        addr.clone(),
        pair.clone(),
        plan.page,
        counts.clone(),
    ));

    let mut samples = Vec::new();
    let mut max = MaxSeen {
        size: DirSize::default(),
        at_sent: 0,
        allocated: DirSize::default(),
        allocated_at_sent: 0,
    };
    let mut next_sample = plan.sample_every.max(1);
    let mut last_progress = Instant::now();
    loop {
        tokio::time::sleep(POLL).await;
        while let Some(r) = senders.try_join_next() {
            r.context("sender task")??;
        }
        if let Some(r) = reading.try_join_next() {
            r.context("reader task")??;
        }
        max.poll(&data, &counts);
        let sent = counts.answered.load(Ordering::Relaxed);
        if sent >= next_sample {
            let s = sample(relay, &counts, t0).await;
            crate::progress(&format!(
                "disk: {} sent, {} read, {:.0}/s: {}",
                s.sent,
                s.read,
                s.accepted as f64 / s.seconds,
                s.line()
            ));
            samples.push(s);
            while next_sample <= sent {
                next_sample += plan.sample_every.max(1);
            }
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(30) {
            crate::progress(&format!(
                "disk: {sent} sent, {} read",
                counts.read.load(Ordering::Relaxed)
            ));
            last_progress = Instant::now();
        }
        if senders.is_empty() {
            break;
        }
    }
    let send_time = t0.elapsed();
    signers.join()?;
    counts.sending_done.store(true, Ordering::SeqCst);
    crate::progress(&format!(
        "disk: sending done in {:.1} s; waiting for the reader",
        send_time.as_secs_f64()
    ));
    while !reading.is_empty() {
        tokio::time::sleep(POLL).await;
        max.poll(&data, &counts);
        if let Some(r) = reading.try_join_next() {
            r.context("reader task")??;
        }
    }
    crate::progress(&format!(
        "disk: all read; settling for {:.0} s",
        plan.settle.as_secs_f64()
    ));
    let settle_end = Instant::now() + plan.settle;
    while Instant::now() < settle_end {
        tokio::time::sleep(POLL).await;
        max.poll(&data, &counts);
    }
    let settled = sample(relay, &counts, t0).await;
    max.poll(&data, &counts);
    let first_rejection = counts
        .first_rejection
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(DiskResult {
        plan: plan.clone(),
        config: config_text(plan),
        accepted: counts.accepted.load(Ordering::Relaxed),
        rejected: counts.rejected.load(Ordering::Relaxed),
        first_rejection,
        read: counts.read.load(Ordering::Relaxed),
        cursor_too_old: counts.too_old.load(Ordering::Relaxed),
        send_time,
        total_time: t0.elapsed(),
        samples,
        max_size: max.size,
        max_at_sent: max.at_sent,
        max_allocated: max.allocated,
        max_allocated_at_sent: max.allocated_at_sent,
        settled,
        after_stop: DirSize::default(),
        relay_log: RelayLog::default(),
    })
}

/// Runs the item on a relay of its own in `launcher.work_dir/disk`, which it removes unless
/// `keep`. On an error the relay is killed (`RelayProc` on drop) and its last log lines are
/// part of the error.
pub fn run(
    launcher: &Launcher,
    rt: &tokio::runtime::Runtime,
    plan: &DiskPlan,
    keep: bool,
) -> Result<DiskResult> {
    let mut relay = launcher.start_with_config("disk", &config_text(plan), LOG_FILTER)?;
    let dir = relay.dir.clone();
    crate::progress(&format!(
        "disk: relay pid {} at {}, data in {}",
        relay.pid,
        relay.addr,
        dir.display()
    ));
    let r = rt.block_on(drive(&relay, plan));
    let out = match r {
        Ok(mut res) => {
            relay.stop()?;
            res.after_stop = dir_size(&dir.join("data"));
            res.relay_log = RelayLog::read(&relay);
            Ok(res)
        }
        Err(e) => {
            let _ = relay.kill();
            let log = RelayLog::read(&relay);
            Err(e.context(format!(
                "disk run failed; relay log: {} checkpoint line(s), {} drop line(s), warnings/errors: {:?}",
                log.checkpoints_made, log.drops, log.problems
            )))
        }
    };
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_validates() {
        let plan = DiskPlan {
            messages: 1,
            sample_every: 1,
            checkpoint_records: 200_000,
            batch: 256,
            conns: 1,
            page: 1000,
            text_bytes: 160,
            settle: Duration::ZERO,
            sign_threads: 1,
        };
        let dir = std::env::temp_dir().join(format!("formica-bench-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let p = dir.join("c.toml");
        std::fs::write(&p, config_text(&plan)).unwrap_or_default();
        let c = formica_relay::config::RelayConfig::load(Some(&p), Default::default());
        let _ = std::fs::remove_dir_all(&dir);
        let c = match c {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.policy.retention.checkpoint_records, 200_000);
        assert_eq!(c.policy.retention.dedup_ms, DEDUP_MS);
        assert_eq!(c.policy.limits.batch_envelopes_max, 256);
    }
}
