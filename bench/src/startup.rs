//! Item 6: start-up of a relay whose log holds many entries. The fixture is written directly
//! through the relay's public storage API (`RedbStore` + `EventLog::append`, durable commits of
//! 10,000 records each), with events encoded by `formica_relay::engine::events::Event`: registrations,
//! contact grants, then signed messages with a `read` event after every 10th item of an inbox
//! (what streaming consumers produce). It is a log without projection tables, as a release before
//! storage v2 left it.
//!
//! Then `relay serve` is timed from spawn to its first 200 on `/ready`, in the order a data
//! directory meets its starts: the first start (it finds no tables and rebuilds them from the
//! whole log, once), starts after a clean stop (it checks the log's head and loads the tables),
//! and a start after `kill -9` (the same, after redb repairs a file that was not closed cleanly).
//! The in-process rebuild (`formica_relay::engine::replay::replay_into`) is timed too, split into
//! its parts: the replay within the first start, and what every start cost before storage v2.

use crate::agents::{now_ms, Agent};
use crate::relay_proc::{Launcher, RelayProc, PUBLIC_HOST};
use crate::report::J;
use anyhow::{bail, Context, Result};
use formica_protocol::keylog::{KeyLogEntry, KeyOp};
use formica_protocol::pow::Challenge;
use formica_protocol::ContactLevel;
use formica_relay::engine::events::Event;
use formica_relay::store::{EventLog, LogPosition, RedbStore, Store};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records per durable append while building the fixture.
const FIXTURE_CHUNK: usize = 10_000;
/// A recipient's stream marks its inbox read after this many new items.
const READ_EVERY: u64 = 10;

#[derive(Debug, Clone)]
pub struct Fixture {
    pub entries: u64,
    pub agents: usize,
    pub envelopes: u64,
    pub reads: u64,
    pub file_bytes: u64,
    pub build_seconds: f64,
}

/// A new, empty log at `data_dir/log.redb` (the directory made private, as a relay wants it; a
/// file already there is replaced).
pub fn new_log(data_dir: &Path) -> Result<EventLog> {
    std::fs::create_dir_all(data_dir)?;
    // A relay serves only a private data directory.
    std::fs::set_permissions(
        data_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let path = data_dir.join(formica_relay::LOG_FILE);
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path)?);
    Ok(EventLog::open(store, &mut |_, _| Ok(()))?)
}

/// The record of agent `i`'s registration at `at`, its entry dated `ts`.
pub fn registration(a: &Agent, i: usize, at: i64, ts: i64) -> Result<Vec<u8>> {
    let entry = KeyLogEntry {
        handle: a.handle.clone(),
        seq: 0,
        prev: None,
        ts,
        op: KeyOp::Register {
            key: a.key.public(),
            recovery: None,
        },
        signer: a.key.public().key_id(),
    }
    .sign(&a.key, &[])
    .context("signing the register entry")?;
    let mut c = [0u8; 16];
    c[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Ok(Event::Registered {
        at,
        entry,
        challenge: Challenge(c),
    }
    .encode())
}

/// Writes a log of exactly `entries` records into `data_dir/log.redb`.
pub fn build_fixture(
    data_dir: &Path,
    entries: u64,
    agents_n: usize,
    text_len: usize,
    sign_cpus: Option<&str>,
    threads: usize,
) -> Result<Fixture> {
    let t0 = Instant::now();
    let mut log = new_log(data_dir)?;
    let path = data_dir.join(formica_relay::LOG_FILE);
    let host = crate::relay_proc::host();
    let agents: Vec<Agent> = (0..agents_n)
        .map(|i| Agent::new(i, &host))
        .collect::<Result<_>>()?;
    if entries < 2 * agents_n as u64 {
        bail!("a fixture of {entries} entries cannot hold {agents_n} registrations and grants");
    }
    let at = now_ms();
    // 1. Registrations and grants: agent i+1 lets agent i send.
    let mut head: Vec<Vec<u8>> = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        head.push(registration(a, i, at, at)?);
    }
    for i in 0..agents_n {
        let owner = &agents[(i + 1) % agents_n];
        head.push(
            Event::ContactSet {
                at,
                owner: owner.handle.clone(),
                contact: agents[i].handle.clone(),
                level: ContactLevel::Task,
            }
            .encode(),
        );
    }
    for c in head.chunks(FIXTURE_CHUNK) {
        log.append(c)?;
    }
    // 2. Messages and reads, in chunks signed in parallel.
    let mut inbox = vec![0u64; agents_n];
    let (mut written, mut k, mut envelopes, mut reads) = (log.len(), 0usize, 0u64, 0u64);
    while written < entries {
        let want = ((entries - written) as usize).min(FIXTURE_CHUNK);
        // Signs a few more than needed; reads take some of the chunk's room.
        let signed = crate::agents::presign(&agents, want, text_len, threads, sign_cpus, &|j| {
            let m = k + j;
            (m % agents_n, (m + 1) % agents_n, format!("fix{m:09}"))
        })?;
        let mut records = Vec::with_capacity(want);
        for se in signed {
            if records.len() >= want {
                break;
            }
            let to = (k + 1) % agents_n;
            k += 1;
            records.push(Event::Envelope { at, envelope: se }.encode());
            envelopes += 1;
            inbox[to] += 1;
            if inbox[to].is_multiple_of(READ_EVERY) && records.len() < want {
                records.push(
                    Event::Read {
                        at,
                        handle: agents[to].handle.clone(),
                        upto: inbox[to],
                    }
                    .encode(),
                );
                reads += 1;
            }
        }
        log.append(&records)?;
        written = log.len();
    }
    drop(log);
    let file_bytes = std::fs::metadata(&path)?.len();
    Ok(Fixture {
        entries: written,
        agents: agents_n,
        envelopes,
        reads,
        file_bytes,
        build_seconds: t0.elapsed().as_secs_f64(),
    })
}

/// `relay serve` on the fixture: spawn -> address printed -> first 200 from `/ready`, then ->
/// the end of the relay's background check of the whole chain.
#[derive(Debug, Clone)]
pub struct ServeTiming {
    pub to_listening: Duration,
    pub to_ready: Duration,
    pub rss_after_ready: u64,
    /// `VmHWM` once ready: the peak of the start itself (a rebuild holds rows before it commits
    /// them; a load should hold little).
    pub rss_peak_at_ready: u64,
    /// Since spawn, until `formica_store_log_checked` is 1: a relay that loads its tables
    /// checks only the log's head before it serves, and the whole chain on a thread of its own
    /// afterwards (read-only, one core, while it serves).
    pub to_log_checked: Duration,
    pub rss_after_log_check: u64,
    pub rss_peak_after_log_check: u64,
}

/// Longest the bench waits for the background check of the chain (a full read of the log).
const LOG_CHECK_TIMEOUT: Duration = Duration::from_secs(600);
/// Envelopes the relay accepts (durably) before it is killed: commits after the open, as a
/// serving relay has. An idle relay killed right after its start leaves nothing for redb to
/// repair (its last commit on disk is the clean close's, which records the allocator state),
/// so its next start would only show the cost of a clean start.
pub const WRITES_BEFORE_KILL: usize = 100;

/// Starts `relay serve` on `dir` and waits for its first 200 from `/ready` (the relay prints its
/// address only once its store is open, so the two are close); the relay is left running.
fn serve_until_ready(
    launcher: &Launcher,
    dir: &Path,
    rt: &tokio::runtime::Runtime,
) -> Result<(RelayProc, Duration, u64, u64)> {
    let relay = launcher.start_in(dir, false)?;
    let req = crate::http::request("GET", "/ready", &relay.addr, &[], b"");
    let to_ready = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut c) = crate::http::Conn::connect(&relay.addr).await {
                if let Ok(r) = c.send(&req).await {
                    if r.status == 200 {
                        return Ok(relay.spawned_at.elapsed());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("/ready did not answer 200 within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })?;
    let (rss, peak) = crate::sys::rss(relay.pid)?;
    Ok((relay, to_ready, rss, peak))
}

/// One timed start, then, once the relay's background check of the chain has finished, a clean
/// stop (SIGTERM: the relay drains and closes the store). Waiting for the check is what makes
/// the stop clean: the check's thread holds the store, and a relay stopped while it runs exits
/// without closing the store (the relay logs "the store is closed" all the same), so that the
/// next start finds a file to repair.
/// Waits until the relay at `addr` has checked its whole log (the background check after start).
pub async fn until_log_checked(addr: &str) -> Result<()> {
    let deadline = Instant::now() + LOG_CHECK_TIMEOUT;
    loop {
        if crate::ingest::relay_metric(addr, "formica_store_log_checked").await? == 1 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the relay's background check of the log did not finish within {LOG_CHECK_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn time_serve(
    launcher: &Launcher,
    dir: &Path,
    rt: &tokio::runtime::Runtime,
) -> Result<ServeTiming> {
    let (mut relay, to_ready, rss_after_ready, rss_peak_at_ready) =
        serve_until_ready(launcher, dir, rt)?;
    let to_log_checked = rt.block_on(async {
        until_log_checked(&relay.addr).await?;
        Ok::<_, anyhow::Error>(relay.spawned_at.elapsed())
    })?;
    let (rss_after_log_check, rss_peak_after_log_check) = crate::sys::rss(relay.pid)?;
    relay.stop()?;
    Ok(ServeTiming {
        to_listening: relay.start_to_listening,
        to_ready,
        rss_after_ready,
        rss_peak_at_ready,
        to_log_checked,
        rss_after_log_check,
        rss_peak_after_log_check,
    })
}

/// A start after a crash: a relay is started, accepts [`WRITES_BEFORE_KILL`] envelopes once
/// ready, and is killed with SIGKILL (no drain, the store not closed); then the next start is
/// timed. What the killed relay left is looked at in between, untimed.
#[derive(Debug, Clone)]
pub struct AfterKill {
    pub found: StoreState,
    pub accepted_before_kill: u64,
    pub serve: ServeTiming,
}

pub fn time_serve_after_kill(
    launcher: &Launcher,
    dir: &Path,
    rt: &tokio::runtime::Runtime,
    text_len: usize,
) -> Result<AfterKill> {
    // Fixture agent i+1 granted agent i a contact, so a00000 may write to a00001.
    let host = crate::relay_proc::host();
    let (from, to) = (Agent::new(0, &host)?, Agent::new(1, &host)?);
    let wires = (0..WRITES_BEFORE_KILL)
        .map(|j| {
            from.message(&to.handle, &format!("kill{j:05}"), text_len)
                .map(|se| se.wire_bytes())
        })
        .collect::<Result<Vec<_>>>()?;
    let (mut relay, _, _, _) = serve_until_ready(launcher, dir, rt)?;
    let reqs = crate::ingest::build_requests(
        &relay.addr,
        &wires,
        crate::ingest::Endpoint::Batch,
        WRITES_BEFORE_KILL,
    );
    let accepted_before_kill = rt.block_on(async {
        let mut c = crate::http::Conn::connect(&relay.addr).await?;
        let mut n = 0;
        for r in &reqs {
            n += crate::ingest::count_accepted(&c.send(r).await?.body);
        }
        anyhow::Ok(n)
    })?;
    if accepted_before_kill != WRITES_BEFORE_KILL as u64 {
        bail!("the relay accepted {accepted_before_kill} of {WRITES_BEFORE_KILL} envelopes before the kill");
    }
    relay.kill()?;
    let found = store_state(&dir.join("data"))?;
    let serve = time_serve(launcher, dir, rt)?;
    Ok(AfterKill {
        found,
        accepted_before_kill,
        serve,
    })
}

/// What a start finds in a data directory, read the way the relay reads it first (a read-only
/// view, which leaves the file as it is): whether the projection tables are the replay of the
/// log's head (the relay then loads them instead of rebuilding), and whether redb had to recover
/// the file (it was not closed cleanly). Each start's figure means what its line says only if
/// this is what it found.
#[derive(Debug, Clone, Copy)]
pub struct StoreState {
    pub records: u64,
    pub tables_at_head: bool,
    pub recovered: bool,
    pub file_bytes: u64,
}

pub fn store_state(data_dir: &Path) -> Result<StoreState> {
    let path = data_dir.join(formica_relay::LOG_FILE);
    let view = RedbStore::open_read_only(&path)?;
    let recovered = view.recovered();
    let view: Arc<dyn Store> = Arc::new(view);
    let at = EventLog::open_head(view.clone())?.position();
    let tables_at_head = LogPosition::projected(&*view)? == Some(at);
    drop(view);
    Ok(StoreState {
        records: at.len,
        tables_at_head,
        recovered,
        file_bytes: std::fs::metadata(&path)?.len(),
    })
}

impl ServeTiming {
    pub fn to_json(&self) -> J {
        J::obj()
            .with("serve_to_listening_s", self.to_listening.as_secs_f64())
            .with("serve_to_ready_s", self.to_ready.as_secs_f64())
            .with("relay_rss_bytes_once_ready", self.rss_after_ready)
            .with("relay_rss_peak_bytes_once_ready", self.rss_peak_at_ready)
            .with("serve_to_log_checked_s", self.to_log_checked.as_secs_f64())
            .with("relay_rss_bytes_after_log_check", self.rss_after_log_check)
            .with(
                "relay_rss_peak_bytes_after_log_check",
                self.rss_peak_after_log_check,
            )
    }
}

impl StoreState {
    pub fn to_json(self) -> J {
        J::obj()
            .with("records", self.records)
            .with("tables_at_log_head", self.tables_at_head)
            .with("redb_recovered_unclean_file", self.recovered)
            .with("log_file_bytes", self.file_bytes)
    }
}

/// The in-process rebuild, split: (a) read every record and check its chain hash, (b) also
/// decode each event (strict JSON, envelope schema, canonical signing input and id), (c) the
/// whole `engine::replay::replay_into` into tables in memory (b plus `State::apply` and the
/// commits into a `MemStore`). (c) is what the first start on a log without tables does (into
/// the file, after checking the whole chain once more on its read-only view) and what every
/// start did before storage v2.
#[derive(Debug, Clone, Copy)]
pub struct Replay {
    pub scan_chain: Duration,
    pub scan_decode: Duration,
    pub full: Duration,
}

pub fn time_replay(data_dir: &Path) -> Result<Replay> {
    let path = data_dir.join(formica_relay::LOG_FILE);
    let open = || -> Result<Arc<dyn Store>> { Ok(Arc::new(RedbStore::open(&path)?)) };
    let host =
        formica_protocol::RelayHost::parse(PUBLIC_HOST).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let t = Instant::now();
    let log = EventLog::open(open()?, &mut |_, _| Ok(()))?;
    let scan_chain = t.elapsed();
    drop(log);
    let t = Instant::now();
    let log = EventLog::open(open()?, &mut |seq, p| {
        Event::decode(p)
            .map(drop)
            .map_err(|reason| formica_relay::store::StoreError::Corrupt { seq, reason })
    })?;
    let scan_decode = t.elapsed();
    drop(log);
    let t = Instant::now();
    // Into tables in memory: the data directory's own tables (written by the first start) are
    // neither read nor changed, and no disk write enters the figure.
    let mem: Arc<dyn Store> = Arc::new(formica_relay::store::MemStore::default());
    let (log, state) =
        formica_relay::engine::replay::replay_into(open()?, &host, None, mem).context("replay")?;
    let full = t.elapsed();
    std::hint::black_box(&state);
    drop((log, state));
    Ok(Replay {
        scan_chain,
        scan_decode,
        full,
    })
}

impl Fixture {
    pub fn to_json(&self) -> J {
        J::obj()
            .with("entries", self.entries)
            .with("agents", self.agents)
            .with("registrations", self.agents)
            .with("contact_grants", self.agents)
            .with("envelopes", self.envelopes)
            .with("reads", self.reads)
            .with("log_file_bytes", self.file_bytes)
            .with("built_by", "formica_relay::store::RedbStore + EventLog::append (durable commits of 10,000 records), events from formica_relay::engine::events::Event")
            .with("build_seconds", self.build_seconds)
    }
}
