//! Item 9 (only when named, `--only directory`): directory search (SPEC.md PROF-9) over many
//! listed profiles on one relay. The fixture is a log written through the relay's storage API,
//! like item 6's: registrations, then one listed profile per agent (three capabilities of a
//! vocabulary of 50, a description from a few phrases). The relay's first start builds its
//! tables from it; then each kind of query runs for a fixed time on keep-alive connections,
//! every request signed just before it is sent (the search needs an agent's signature), and
//! the latency of each answer is recorded.

use crate::agents::{now_ms, Agent};
use crate::relay_proc::Launcher;
use crate::report::{percentile, J};
use anyhow::{bail, Context, Result};
use formica_protocol::{Capability, Profile};
use formica_relay::engine::events::Event;
use std::path::Path;
use std::time::{Duration, Instant};

const CHUNK: usize = 10_000;
const VOCABULARY: usize = 50;
const PHRASES: [&str; 5] = [
    "Reviews pull requests and explains what it finds",
    "Translates documents between English and French",
    "Runs test suites and reports flaky tests",
    "Answers questions about PostgreSQL query plans",
    "Summarises long threads into short notes",
];

/// The query kinds, with what each one costs the relay.
pub const QUERIES: [(&str, &str); 4] = [
    (
        "capability",
        "capability=skill-07: walks that capability's index, stops at a full page",
    ),
    (
        "capability_text",
        "capability=skill-07&text=translates: the index, and the text of each candidate",
    ),
    (
        "text",
        "text=postgresql: every listed profile in handle order until a page is full",
    ),
    (
        "text_none",
        "text=no-such-words: every listed profile, the worst case (a full scan, empty page)",
    ),
];

fn query_path(kind: &str) -> &'static str {
    match kind {
        "capability" => "/v1/directory?capability=skill-07",
        "capability_text" => "/v1/directory?capability=skill-07&text=translates",
        "text" => "/v1/directory?text=postgresql",
        _ => "/v1/directory?text=no-such-words",
    }
}

/// Writes registrations and one listed profile per agent into `data_dir/log.redb`.
pub fn build_fixture(data_dir: &Path, agents: &[Agent]) -> Result<f64> {
    let t0 = Instant::now();
    let mut log = crate::startup::new_log(data_dir)?;
    let at = now_ms();
    let mut records = Vec::with_capacity(CHUNK);
    for (i, a) in agents.iter().enumerate() {
        records.push(crate::startup::registration(
            a,
            i,
            at,
            crate::agents::registration_ts(),
        )?);
        let caps = (0..3)
            .map(|k| Capability {
                id: format!("skill-{:02}", (i * 7 + k * 13) % VOCABULARY),
                version: None,
                tags: vec!["bench".into()],
            })
            .collect();
        let profile = Profile {
            handle: a.handle.clone(),
            key: a.key.public().key_id(),
            seq: 1,
            ts: at,
            expires: at + 29 * 24 * 3_600_000,
            name: format!("Bench agent {i}"),
            description: Some(PHRASES[i % PHRASES.len()].into()),
            capabilities: caps,
            accepts: vec![formica_protocol::MessageType::Message],
            platform: None,
            model: None,
            listed: true,
        }
        .sign(&a.key)
        .context("signing a profile")?;
        records.push(Event::ProfileSet { at, profile }.encode());
        if records.len() >= CHUNK {
            log.append(&records)?;
            records.clear();
        }
    }
    if !records.is_empty() {
        log.append(&records)?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// One kind of query: searches per second and latency over `seconds` on `conns` connections.
async fn run_query(
    addr: &str,
    agents: &[Agent],
    kind: &str,
    conns: usize,
    seconds: f64,
) -> Result<J> {
    let path = query_path(kind);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let addr = addr.to_owned();
        let me = &agents[c % agents.len()];
        let me = Agent::new(agent_index(me)?, me.handle.host())?;
        tasks.push(tokio::task::spawn_local(async move {
            let mut conn = crate::http::Conn::connect(&addr).await?;
            let mut lat = Vec::new();
            let mut results = 0usize;
            while Instant::now() < deadline {
                let auth = me.auth("GET", path, b"");
                let req =
                    crate::http::request("GET", path, &addr, &[("Authorization", &auth)], b"");
                let t = Instant::now();
                let r = conn.send(&req).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                if r.status != 200 {
                    bail!("{path}: {} {}", r.status, r.text());
                }
                if results == 0 {
                    let v = r.json()?;
                    results = v
                        .as_object()
                        .and_then(|o| o.get("results"))
                        .and_then(|x| x.as_array())
                        .map(|a| a.len())
                        .unwrap_or(0);
                }
            }
            Ok::<_, anyhow::Error>((lat, results))
        }));
    }
    let mut lat = Vec::new();
    let mut results = 0;
    for t in tasks {
        let (l, n) = t.await??;
        lat.extend(l);
        results = results.max(n);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(J::obj()
        .with("query", path)
        .with("searches", lat.len())
        .with("searches_per_s", lat.len() as f64 / seconds)
        .with("results_on_first_page", results)
        .with("p50_ms", percentile(&lat, 50.0))
        .with("p99_ms", percentile(&lat, 99.0))
        .with("max_ms", lat.last().copied().unwrap_or(0.0)))
}

fn agent_index(a: &Agent) -> Result<usize> {
    a.handle
        .name()
        .as_str()
        .strip_prefix('a')
        .and_then(|n| n.parse().ok())
        .context("a bench agent's handle is a<number>")
}

/// The whole item: fixture, first start (tables built), searches of every kind.
pub fn run(launcher: &Launcher, agents: &[Agent], conns: usize, seconds: f64) -> Result<J> {
    let dir = launcher.work_dir.join("directory");
    let build_s = build_fixture(&dir.join("data"), agents)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    // The first start builds the tables from the log; the second loads them (a clean stop
    // between), which is what every later start of such a relay costs.
    let (mut first, first_ready) = start_ready(launcher, &dir, &rt, &local)?;
    let (first_rss, _) = crate::sys::rss(first.pid)?;
    first.stop()?;
    let (relay, ready) = start_ready(launcher, &dir, &rt, &local)?;
    let (rss, _) = crate::sys::rss(relay.pid)?;
    let mut out = J::obj()
        .with("profiles", agents.len())
        .with("fixture_seconds", build_s)
        .with("first_start_ready_seconds", first_ready)
        .with("first_start_rss_bytes", first_rss)
        .with("start_ready_seconds", ready)
        .with("rss_bytes_when_ready", rss)
        .with("connections", conns)
        .with("seconds_per_query", seconds);
    let mut by_kind = J::obj();
    for (kind, why) in QUERIES {
        let j = local.block_on(&rt, run_query(&relay.addr, agents, kind, conns, seconds))?;
        by_kind.set(kind, j.with("what", why));
    }
    out.set("queries", by_kind);
    Ok(out)
}

/// Starts `relay serve` on `dir` and waits for its first 200 from `/ready`.
fn start_ready(
    launcher: &Launcher,
    dir: &Path,
    rt: &tokio::runtime::Runtime,
    local: &tokio::task::LocalSet,
) -> Result<(crate::relay_proc::RelayProc, f64)> {
    let relay = launcher.start_in(dir, false)?;
    let ready = local.block_on(rt, async {
        let req = crate::http::request("GET", "/ready", &relay.addr, &[], b"");
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Ok(mut c) = crate::http::Conn::connect(&relay.addr).await {
                if let Ok(r) = c.send(&req).await {
                    if r.status == 200 {
                        return Ok(relay.spawned_at.elapsed().as_secs_f64());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("/ready did not answer 200 within 600 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })?;
    Ok((relay, ready))
}
