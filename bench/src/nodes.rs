//! The `nodes` item (only when named, `--only nodes`): the PostgreSQL store and several nodes
//! of one relay against the redb store, measured in one run on a throw-away PostgreSQL cluster.
//!
//! In every round, for the single and the batch endpoint (durable), back to back, the same
//! pre-signed envelopes go closed-loop to: (a) a relay on redb, one node; (b) a relay on
//! PostgreSQL, one node; (c) the same on PostgreSQL as two nodes (the second node's data
//! directory holds a copy of the first's `relay.key`), the requests split evenly between them.
//! Every PostgreSQL run gets a fresh database (`CREATE DATABASE`). After the batch runs of (a)
//! and (b) the relay is stopped (SIGTERM) and a restart on the same data is timed to `/ready`
//! 200. The median round (by accepted/s) of each configuration counts; ratios are of medians.

use crate::agents::{self, Agent};
use crate::http::Conn;
use crate::ingest::{self, Endpoint};
use crate::pg::{self, Cluster};
use crate::relay_proc::{self, Launcher, RelayProc};
use crate::report::J;
use crate::spread::{self, Target};
use crate::sys::{CpuMeter, CpuUse};
use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the item runs.
#[derive(Debug, Clone)]
pub struct NodesPlan {
    pub envelopes: usize,
    pub senders: usize,
    pub rounds: usize,
    pub single_conns: usize,
    pub batch_conns: usize,
    pub batch_size: usize,
    pub text_bytes: usize,
    pub sign_threads: usize,
    pub sign_cpus: Option<String>,
    /// CPUs of a one-node relay (a taskset list; none: not pinned).
    pub one_node_cpus: Option<String>,
    /// CPUs of each of the two nodes, one core each when pinned.
    pub two_node_cpus: [Option<String>; 2],
    /// CPUs PostgreSQL runs on (all of them when pinning; none: inherit).
    pub pg_cpus: Option<String>,
}

/// The three configurations, in the order each round runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Redb,
    PgOne,
    PgTwo,
}

impl Setup {
    pub const ALL: [Setup; 3] = [Setup::Redb, Setup::PgOne, Setup::PgTwo];

    pub fn name(self) -> &'static str {
        match self {
            Setup::Redb => "redb_one_node",
            Setup::PgOne => "postgres_one_node",
            Setup::PgTwo => "postgres_two_nodes",
        }
    }
}

/// A timed restart on the data an ingest run left.
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    /// From spawn to the first `/ready` 200.
    pub to_ready: Duration,
    /// From spawn to the address line (the store open).
    pub to_listening: Duration,
    pub rss_bytes: u64,
}

/// One ingest run of one configuration.
#[derive(Debug, Clone)]
pub struct Run {
    pub round: usize,
    pub setup: Setup,
    pub endpoint: Endpoint,
    pub accepted: u64,
    pub rejected: u64,
    pub first_rejection: Option<String>,
    pub elapsed: Duration,
    /// Per node: its CPU use, and the deltas of its counters over the timed phase.
    pub cpu: Vec<CpuUse>,
    pub catch_ups: Vec<Option<u64>>,
    pub full_loads: Vec<Option<u64>>,
    pub commits: Vec<Option<u64>>,
    /// PostgreSQL's CPU (cores busy over the phase; none on redb).
    pub pg_cores_busy: Option<f64>,
    pub restart: Option<Restart>,
}

impl Run {
    pub fn accepted_per_s(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The nodes' CPU together, in cores busy.
    pub fn relay_cores_busy(&self) -> f64 {
        self.cpu.iter().map(|c| c.relay_cores_busy).sum()
    }

    pub fn to_json(&self) -> J {
        let opt = |v: &[Option<u64>]| J::Arr(v.iter().map(|x| J::from(*x)).collect());
        let mut j = J::obj()
            .with("round", self.round)
            .with("setup", self.setup.name())
            .with("endpoint", self.endpoint.name())
            .with("accepted", self.accepted)
            .with("rejected", self.rejected)
            .with("first_rejection", self.first_rejection.clone())
            .with("seconds", self.elapsed.as_secs_f64())
            .with("accepted_per_s", self.accepted_per_s())
            .with("relay_cores_busy_all_nodes", self.relay_cores_busy())
            .with("postgres_cores_busy", self.pg_cores_busy)
            .with(
                "cpu_per_node",
                J::Arr(self.cpu.iter().map(|c| c.to_json()).collect()),
            )
            .with("catch_ups_per_node", opt(&self.catch_ups))
            .with("full_loads_per_node", opt(&self.full_loads))
            .with("log_commits_per_node", opt(&self.commits));
        if let Some(r) = &self.restart {
            j.set(
                "restart",
                J::obj()
                    .with("to_ready_s", r.to_ready.as_secs_f64())
                    .with("to_listening_s", r.to_listening.as_secs_f64())
                    .with("rss_bytes_when_ready", r.rss_bytes),
            );
        }
        j
    }
}

/// The whole item: starts the cluster, signs, runs the rounds, returns the JSON (with the
/// medians and ratios under `medians`). The cluster is stopped and removed when this returns,
/// also on an error.
pub fn run(launcher: &Launcher, rt: &tokio::runtime::Runtime, p: &NodesPlan) -> Result<J> {
    let pg_dir = launcher.work_dir.join("nodes-pg");
    let _ = std::fs::remove_dir_all(&pg_dir);
    crate::progress(&format!(
        "nodes: initdb and start of PostgreSQL ({}) in {}",
        pg::bin_dir().display(),
        pg_dir.display()
    ));
    let cluster = Cluster::start(&pg_dir, p.pg_cpus.clone())?;
    let settings = cluster.settings()?;
    crate::progress(&format!(
        "nodes: PostgreSQL on port {}: {settings}",
        cluster.port
    ));
    let host = relay_proc::host();
    let agents: Arc<Vec<Agent>> = Arc::new(
        (0..p.senders)
            .map(|i| Agent::new(i, &host))
            .collect::<Result<_>>()?,
    );
    crate::progress(&format!(
        "nodes: signing {} envelopes from {} senders",
        p.envelopes, p.senders
    ));
    let senders = p.senders;
    let signed = agents::presign(
        &agents,
        p.envelopes,
        p.text_bytes,
        p.sign_threads,
        p.sign_cpus.as_deref(),
        &|k| (k % senders, (k + 1) % senders, format!("nod{k:09}")),
    )?;
    let wires: Vec<Vec<u8>> = signed.iter().map(|s| s.wire_bytes()).collect();
    drop(signed);
    let ticks = pg::ticks_per_second();
    let mut runs: Vec<Run> = Vec::new();
    for round in 1..=p.rounds {
        for endpoint in [Endpoint::Single, Endpoint::Batch] {
            for setup in Setup::ALL {
                let r = one_run(
                    launcher, rt, p, &cluster, &agents, &wires, round, setup, endpoint, ticks,
                )?;
                let nodes_txt = if setup == Setup::PgTwo {
                    format!(
                        "; catch-ups {:?}, full loads {:?} per node",
                        r.catch_ups, r.full_loads
                    )
                } else {
                    String::new()
                };
                crate::progress(&format!(
                    "nodes: round {round}/{}: {} {}: {} accepted/s ({} rejected) in {:.1} s; relay cores busy {:.2}, postgres {:.2}{nodes_txt}{}",
                    p.rounds,
                    setup.name(),
                    endpoint.name(),
                    r.accepted_per_s() as u64,
                    r.rejected,
                    r.elapsed.as_secs_f64(),
                    r.relay_cores_busy(),
                    r.pg_cores_busy.unwrap_or(0.0),
                    r.restart
                        .map(|s| format!("; restart to /ready {:.3} s", s.to_ready.as_secs_f64()))
                        .unwrap_or_default()
                ));
                if let Some(f) = &r.first_rejection {
                    crate::progress(&format!("nodes: first rejection: {f}"));
                }
                runs.push(r);
            }
        }
    }
    let mut medians = J::obj();
    for endpoint in [Endpoint::Single, Endpoint::Batch] {
        let ep = endpoint.name();
        let mut m = [f64::NAN; 3];
        for (i, setup) in Setup::ALL.into_iter().enumerate() {
            let Some(r) = median(&runs, setup, endpoint, |r| r.accepted_per_s()) else {
                continue;
            };
            m[i] = r.accepted_per_s();
            let key = format!("{ep}_{}", setup.name());
            medians.set(&format!("{key}_accepted_per_s"), m[i]);
            medians.set(&format!("{key}_relay_cores_busy"), r.relay_cores_busy());
            medians.set(
                &format!("{key}_relay_cpu_us_per_envelope"),
                r.relay_cores_busy() * 1e6 / r.accepted_per_s().max(1e-9),
            );
            medians.set(&format!("{key}_postgres_cores_busy"), r.pg_cores_busy);
            let sum = |v: &[Option<u64>]| v.iter().flatten().sum::<u64>();
            let commits = sum(&r.commits);
            medians.set(&format!("{key}_log_commits"), commits);
            medians.set(
                &format!("{key}_accepted_per_commit"),
                r.accepted as f64 / commits.max(1) as f64,
            );
            if setup == Setup::PgTwo {
                medians.set(&format!("{key}_catch_ups"), sum(&r.catch_ups));
                medians.set(&format!("{key}_full_loads"), sum(&r.full_loads));
            }
        }
        medians.set(&format!("{ep}_postgres_over_redb"), m[1] / m[0]);
        medians.set(&format!("{ep}_two_nodes_over_one_node"), m[2] / m[1]);
    }
    for setup in [Setup::Redb, Setup::PgOne] {
        let secs = |r: &Run| r.restart.map_or(f64::NAN, |s| s.to_ready.as_secs_f64());
        if let Some(r) = median(&runs, setup, Endpoint::Batch, |r| -secs(r)) {
            medians.set(&format!("restart_{}_to_ready_s", setup.name()), secs(r));
        }
    }
    let r_redb = medians.get(&["restart_redb_one_node_to_ready_s"]);
    let r_pg = medians.get(&["restart_postgres_one_node_to_ready_s"]);
    if let (Some(a), Some(b)) = (r_redb, r_pg) {
        medians.set("restart_postgres_over_redb", b / a);
    }
    // Each round's ratios: how much of a median ratio is noise.
    let per_round: Vec<J> = (1..=p.rounds)
        .map(|round| {
            let mut j = J::obj().with("round", round);
            for endpoint in [Endpoint::Single, Endpoint::Batch] {
                let f = |s: Setup| {
                    runs.iter()
                        .find(|r| r.round == round && r.setup == s && r.endpoint == endpoint)
                        .map_or(f64::NAN, Run::accepted_per_s)
                };
                let ep = endpoint.name();
                j.set(
                    &format!("{ep}_postgres_over_redb"),
                    f(Setup::PgOne) / f(Setup::Redb),
                );
                j.set(
                    &format!("{ep}_two_nodes_over_one_node"),
                    f(Setup::PgTwo) / f(Setup::PgOne),
                );
            }
            j
        })
        .collect();
    let cpus = |c: &Option<String>| c.clone().unwrap_or_else(|| "unpinned".into());
    Ok(J::obj()
        .with("envelopes", p.envelopes)
        .with("senders", p.senders)
        .with("agents_registered", p.senders)
        .with("rounds", p.rounds)
        .with("single_conns", p.single_conns)
        .with("batch_conns", p.batch_conns)
        .with("batch_size", p.batch_size)
        .with("envelope_bytes", wires.first().map_or(0, Vec::len))
        .with("fsync", "durable: redb syncs every commit; PostgreSQL fsync=on, synchronous_commit=on")
        .with("postgres_settings", settings)
        .with("postgres_cpus", cpus(&p.pg_cpus))
        .with("one_node_cpus", cpus(&p.one_node_cpus))
        .with(
            "two_node_cpus",
            J::Arr(p.two_node_cpus.iter().map(|c| J::from(cpus(c))).collect()),
        )
        .with("topology", "sender i posts to agent i+1, which granted i a contact; set-up through node 1; for two nodes request j goes to node j % 2, half the connections on each")
        .with("restart", "after the batch run of (a) and (b): the background check of the chain waited for, SIGTERM, then relay serve on the same data, timed from spawn to the first /ready 200")
        .with("figures", "median round per configuration (by accepted/s; restarts: by seconds)")
        .with("medians", medians)
        .with("per_round_ratios", J::Arr(per_round))
        .with("runs", J::Arr(runs.iter().map(Run::to_json).collect())))
}

/// The median run of a configuration by `key`.
fn median(runs: &[Run], s: Setup, e: Endpoint, key: impl Fn(&Run) -> f64) -> Option<&Run> {
    let mut v: Vec<&Run> = runs
        .iter()
        .filter(|r| r.setup == s && r.endpoint == e)
        .collect();
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v.get(v.len() / 2).copied()
}

/// The relay configuration of a run: the benchmark's, with a `[store]` section on PostgreSQL.
fn config_for(url: Option<&str>) -> String {
    let mut c = relay_proc::config_text();
    if let Some(u) = url {
        c.push_str(&format!("\n[store]\nkind = \"postgres\"\nurl = \"{u}\"\n"));
    }
    c
}

/// Starts node `k` of a run in `work_dir/<name>`; a node after the first gets a copy of the
/// first node's `relay.key` (directory 0700, key 0600), as every node of one relay must.
fn start_node(
    launcher: &Launcher,
    cpus: &Option<String>,
    name: &str,
    first: Option<&RelayProc>,
    config: &str,
) -> Result<RelayProc> {
    let l = Launcher {
        relay_cpus: cpus.clone(),
        ..launcher.clone()
    };
    if let Some(n1) = first {
        let data = launcher.work_dir.join(name).join("data");
        std::fs::create_dir_all(&data)?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
        let key = data.join(formica_relay::KEY_FILE);
        std::fs::copy(n1.dir.join("data").join(formica_relay::KEY_FILE), &key)
            .context("copying relay.key to the second node")?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    l.start_with_config(name, config, "warn")
}

/// One ingest run of one configuration on fresh data (and, for the batch run of (a) and (b),
/// the timed restart); everything it started is stopped and removed before it returns.
#[allow(clippy::too_many_arguments)]
fn one_run(
    launcher: &Launcher,
    rt: &tokio::runtime::Runtime,
    p: &NodesPlan,
    cluster: &Cluster,
    agents: &Arc<Vec<Agent>>,
    wires: &[Vec<u8>],
    round: usize,
    setup: Setup,
    endpoint: Endpoint,
    ticks: f64,
) -> Result<Run> {
    let base = format!("nodes-r{round}-{}-{}", endpoint.name(), setup.name());
    let db = base.replace('-', "_");
    let url = match setup {
        Setup::Redb => None,
        _ => Some(cluster.create_database(&db)?),
    };
    let config = config_for(url.as_deref());
    let cpus: Vec<Option<String>> = match setup {
        Setup::PgTwo => p.two_node_cpus.to_vec(),
        _ => vec![p.one_node_cpus.clone()],
    };
    let mut nodes: Vec<RelayProc> = Vec::new();
    let result = (|| -> Result<Run> {
        for (k, c) in cpus.iter().enumerate() {
            let n = start_node(
                launcher,
                c,
                &format!("{base}-n{}", k + 1),
                nodes.first(),
                &config,
            )?;
            nodes.push(n);
        }
        let addr1 = nodes[0].addr.clone();
        rt.block_on(agents::register_all(&addr1, agents.clone(), 0..p.senders))?;
        rt.block_on(agents::allow_all(
            &addr1,
            agents.clone(),
            (0..p.senders).map(|i| ((i + 1) % p.senders, i)).collect(),
        ))?;
        let (per, conns) = match endpoint {
            Endpoint::Single => (1, p.single_conns),
            Endpoint::Batch => (p.batch_size, p.batch_conns),
        };
        let parts = spread::split_wires(wires, per, nodes.len());
        let targets: Vec<Target> = nodes
            .iter()
            .zip(parts)
            .map(|(n, w)| Target {
                addr: n.addr.clone(),
                requests: Arc::new(ingest::build_requests(&n.addr, &w, endpoint, per)),
                envelopes: w.len(),
                conns: (conns / nodes.len()).max(1),
            })
            .collect();
        let counter = |name: &'static str| {
            rt.block_on(async {
                let mut v = Vec::new();
                for n in &nodes {
                    v.push(ingest::relay_metric(&n.addr, name).await.ok());
                }
                v
            })
        };
        let delta = |a: Vec<Option<u64>>, b: Vec<Option<u64>>| -> Vec<Option<u64>> {
            a.into_iter()
                .zip(b)
                .map(|(x, y)| Some(y?.saturating_sub(x?)))
                .collect()
        };
        let catch0 = counter("formica_node_catch_ups_total");
        let full0 = counter("formica_node_full_loads_total");
        let commits0 = counter("formica_log_commits_total");
        let postmaster = cluster.postmaster_pid().filter(|_| url.is_some());
        let pg0 = postmaster.map(|pm| pg::cluster_cpu_seconds(pm, ticks));
        let meters: Vec<CpuMeter> = nodes
            .iter()
            .map(|n| CpuMeter::start(n.pid, &n.cpus))
            .collect();
        let t0 = Instant::now();
        let d = rt.block_on(spread::drive(targets, per))?;
        let elapsed = t0.elapsed();
        let cpu: Vec<CpuUse> = meters.iter().map(CpuMeter::stop).collect();
        let pg_cores_busy = match (postmaster, pg0) {
            (Some(pm), Some(c0)) => {
                Some((pg::cluster_cpu_seconds(pm, ticks) - c0) / elapsed.as_secs_f64())
            }
            _ => None,
        };
        let catch_ups = delta(catch0, counter("formica_node_catch_ups_total"));
        let full_loads = delta(full0, counter("formica_node_full_loads_total"));
        let commits = delta(commits0, counter("formica_log_commits_total"));
        let restart = if endpoint == Endpoint::Batch && setup != Setup::PgTwo {
            Some(restart(
                launcher,
                rt,
                &mut nodes[0],
                &cpus[0],
                &base,
                &config,
            )?)
        } else {
            None
        };
        Ok(Run {
            round,
            setup,
            endpoint,
            accepted: d.accepted,
            rejected: d.rejected,
            first_rejection: d.first_rejection,
            elapsed,
            cpu,
            catch_ups,
            full_loads,
            commits,
            pg_cores_busy,
            restart,
        })
    })();
    for n in &mut nodes {
        let _ = n.stop();
        let _ = std::fs::remove_dir_all(&n.dir);
    }
    if url.is_some() {
        cluster.drop_database(&db)?;
    }
    result
}

/// Stops `node` (SIGTERM, once its background check of the chain ended, so that the stop is
/// clean) and times a start on the same data to `/ready` 200; `node` is the new process after.
fn restart(
    launcher: &Launcher,
    rt: &tokio::runtime::Runtime,
    node: &mut RelayProc,
    cpus: &Option<String>,
    base: &str,
    config: &str,
) -> Result<Restart> {
    rt.block_on(crate::startup::until_log_checked(&node.addr))?;
    node.stop()?;
    let l = Launcher {
        relay_cpus: cpus.clone(),
        ..launcher.clone()
    };
    let fresh = l.start_with_config(&format!("{base}-n1"), config, "warn")?;
    let req = crate::http::request("GET", "/ready", &fresh.addr, &[], b"");
    let to_ready = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(mut c) = Conn::connect(&fresh.addr).await {
                if let Ok(r) = c.send(&req).await {
                    if r.status == 200 {
                        return Ok(fresh.spawned_at.elapsed());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("/ready did not answer 200 within 120 s of a restart");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })?;
    let (rss_bytes, _) = crate::sys::rss(fresh.pid)?;
    let r = Restart {
        to_ready,
        to_listening: fresh.start_to_listening,
        rss_bytes,
    };
    *node = fresh;
    Ok(r)
}
