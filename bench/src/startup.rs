//! Item 6: start-up of a relay whose log holds many entries. The fixture is written directly
//! through the relay's public storage API (`RedbStore` + `EventLog::append`, durable commits of
//! 10,000 records each), with events encoded by `formica_relay::engine::events::Event`: registrations,
//! contact grants, then signed messages with a `read` event after every 10th item of an inbox
//! (what streaming consumers produce). Then `relay serve` is timed from spawn to its first 200
//! on `/ready`, and the in-process replay (`formica_relay::engine::replay::replay`) is timed, split
//! into its parts.

use crate::agents::{now_ms, Agent};
use crate::relay_proc::{Launcher, PUBLIC_HOST};
use crate::report::J;
use anyhow::{bail, Context, Result};
use formica_protocol::keylog::{KeyLogEntry, KeyOp};
use formica_protocol::pow::Challenge;
use formica_protocol::ContactLevel;
use formica_relay::engine::events::Event;
use formica_relay::store::{EventLog, RedbStore, Store};
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
    let mut log = EventLog::open(store, &mut |_, _| Ok(()))?;
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
        let entry = KeyLogEntry {
            handle: a.handle.clone(),
            seq: 0,
            prev: None,
            ts: at,
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
        head.push(
            Event::Registered {
                at,
                entry,
                challenge: Challenge(c),
            }
            .encode(),
        );
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

/// `relay serve` on the fixture: spawn -> address printed -> first 200 from `/ready`.
#[derive(Debug, Clone)]
pub struct ServeTiming {
    pub to_listening: Duration,
    pub to_ready: Duration,
    pub rss_after_ready: u64,
}

pub fn time_serve(
    launcher: &Launcher,
    dir: &Path,
    rt: &tokio::runtime::Runtime,
) -> Result<ServeTiming> {
    let mut relay = launcher.start_in(dir, false)?;
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
    let (rss_after_ready, _) = crate::sys::rss(relay.pid)?;
    let t = ServeTiming {
        to_listening: relay.start_to_listening,
        to_ready,
        rss_after_ready,
    };
    relay.stop()?;
    Ok(t)
}

/// The in-process rebuild, split: (a) read every record and check its chain hash, (b) also
/// decode each event (strict JSON, envelope schema, canonical signing input and id), (c) the
/// whole `engine::replay::replay` (b plus `State::apply`).
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
    // Into tables in memory: the fixture itself stays a log without tables, as an earlier
    // release wrote it.
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
