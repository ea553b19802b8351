//! Two `relay serve` processes with the same relay key on one PostgreSQL (the fault
//! tests): SIGKILL of a node under load loses nothing acknowledged and the other node serves
//! on; PostgreSQL going away makes both nodes answer `unavailable`, and they take requests
//! again by themselves once it is back.
//!
//! Each test starts its own throw-away cluster (`common/pg.rs`), so they need PostgreSQL 15's
//! programs (Debian's `postgresql-15`) and are ignored in the README's `cargo test`; `.ci/run`
//! installs PostgreSQL and runs them (`cargo test -- --ignored pg_`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/pg.rs"]
mod pg;
#[path = "common/process.rs"]
mod process;

use formica_protocol::Value;
use pg::Cluster;
use process::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "formica-{name}-{}-{}",
        std::process::id(),
        now_ms()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The process tests' configuration, on PostgreSQL.
fn pg_config(dir: &Path, url: &str) -> PathBuf {
    let p = write_config(dir);
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str(&format!(
        "\n[store]\nkind = \"postgres\"\nurl = \"{url}\"\n"
    ));
    std::fs::write(&p, text).unwrap();
    p
}

/// Two nodes of one relay: the second node's data directory gets a copy of the first's key.
fn two_nodes(dir: &Path, config: &Path) -> (RelayProc, RelayProc) {
    let (d1, d2) = (dir.join("n1"), dir.join("n2"));
    let n1 = RelayProc::start(&d1, config);
    std::fs::create_dir_all(&d2).unwrap();
    std::fs::set_permissions(&d2, std::fs::Permissions::from_mode(0o700)).unwrap();
    let key = d2.join(formica_relay::KEY_FILE);
    std::fs::copy(d1.join(formica_relay::KEY_FILE), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let n2 = RelayProc::start(&d2, config);
    (n1, n2)
}

/// The `error.code` of an answer.
fn code_of(v: &Value) -> &str {
    v.as_object()
        .and_then(|o| o.get("error"))
        .and_then(Value::as_object)
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn metric(r: &RelayProc, name: &str) -> Option<i64> {
    let (_, text) = r.request_text("GET", "/metrics").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Rounds of SIGKILL of the first node while both take writes.
const ROUNDS: usize = 4;

#[test]
#[ignore = "needs PostgreSQL 15 (Debian's postgresql-15); .ci/run runs it"]
fn pg_sigkill_of_a_node_under_load_loses_nothing_acknowledged_and_the_other_serves_on() {
    let pg = Cluster::start();
    let dir = tempdir("pg-kill");
    let config = pg_config(&dir, &pg.url("postgres"));
    let (mut n1, n2) = two_nodes(&dir, &config);
    let a = Arc::new(Peer::register(&n1, "alice", 1));
    let b = Peer::register(&n2, "bob", 2);
    // Through the node alice did not register on: it knows her once it caught up.
    b.allow(&n1, &a.handle);
    let acked: Arc<Mutex<Vec<formica_protocol::SignedEnvelope>>> = Arc::default();
    // The longest a write to the surviving node took in the second after a kill.
    let mut slowest_after_kill = Duration::ZERO;
    for round in 0..ROUNDS {
        if round > 0 {
            n1 = RelayProc::start(&dir.join("n1"), &config);
        }
        let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
        let mut threads = Vec::new();
        for w in 0..4 {
            let a = a.clone();
            let acked = acked.clone();
            let on_first = w % 2 == 0;
            let addr = if on_first {
                n1.addr.clone()
            } else {
                n2.addr.clone()
            };
            let bh = b.handle.clone();
            let killed_at = killed_at.clone();
            threads.push(std::thread::spawn(move || {
                let mut slowest = Duration::ZERO;
                for n in 0.. {
                    let m = a.message(&bh, &format!("r{round} w{w} n{n}"));
                    let t0 = Instant::now();
                    let r = http(&addr, "POST", "/v1/envelopes", &[], &m.wire_bytes());
                    let after_kill = *killed_at.lock().unwrap();
                    match r {
                        Ok((201, _)) => acked.lock().unwrap().push(m),
                        Ok((st, v)) => {
                            panic!("node {} answered {st}: {v:?}", if on_first { 1 } else { 2 })
                        }
                        Err(e) if on_first => {
                            assert!(
                                after_kill.is_some(),
                                "the first node failed before the kill: {e}"
                            );
                            return slowest;
                        }
                        Err(e) => panic!("the surviving node failed: {e}"),
                    }
                    if let Some(k) = after_kill {
                        if t0 >= k {
                            slowest = slowest.max(t0.elapsed());
                        }
                        if k.elapsed() > Duration::from_secs(1) {
                            return slowest;
                        }
                    }
                }
                slowest
            }));
        }
        std::thread::sleep(Duration::from_millis(300 + (round as u64 * 97) % 400));
        *killed_at.lock().unwrap() = Some(Instant::now());
        n1.kill();
        for t in threads {
            slowest_after_kill = slowest_after_kill.max(t.join().unwrap());
        }
    }
    // The survivor leads (forwarding, replication) within two polls of the lead.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&n2, "formica_node_leading") != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the surviving node did not take the lead within 5 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let total = acked.lock().unwrap().len();
    assert!(
        total > ROUNDS * 20,
        "only {total} envelopes were acknowledged"
    );
    // Every acknowledged envelope is in bob's inbox once, read through either node.
    let n1 = RelayProc::start(&dir.join("n1"), &config);
    for node in [&n1, &n2] {
        let inbox = b.inbox(node);
        let ids: std::collections::HashSet<String> =
            inbox.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(ids.len(), inbox.len(), "no envelope is in the inbox twice");
        for m in acked.lock().unwrap().iter() {
            assert!(
                ids.contains(&m.id().to_hex()),
                "acknowledged {} is missing",
                m.id()
            );
        }
    }
    eprintln!(
        "pg kill test: {ROUNDS} rounds, {total} acknowledged envelopes, all present; slowest write to the surviving node after a kill: {slowest_after_kill:?}"
    );
    drop(n1);
    drop(n2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs PostgreSQL 15 (Debian's postgresql-15); .ci/run runs it"]
fn pg_a_database_restart_is_unavailable_then_both_nodes_recover_by_themselves() {
    let pg = Cluster::start();
    let dir = tempdir("pg-restart");
    let config = pg_config(&dir, &pg.url("postgres"));
    let (n1, n2) = two_nodes(&dir, &config);
    let a = Peer::register(&n1, "alice", 1);
    let b = Peer::register(&n2, "bob", 2);
    b.allow(&n2, &a.handle);
    let (st, _) = post_envelope(&n1, &a.message(&b.handle, "before")).unwrap();
    assert_eq!(st, 201);
    pg.stop();
    // A write is refused with unavailable (503), in bounded time, on either node.
    for node in [&n1, &n2] {
        let t0 = Instant::now();
        let (st, v) = post_envelope(node, &a.message(&b.handle, "while down")).unwrap();
        assert_eq!(st, 503, "{v:?}");
        assert_eq!(code_of(&v), "unavailable", "{v:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the refusal took {:?}",
            t0.elapsed()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for node in [&n1, &n2] {
        while node.request("GET", "/ready", &[], b"").unwrap().0 != 503 {
            assert!(
                Instant::now() < deadline,
                "a node stayed ready without its database"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(node.request("GET", "/health", &[], b"").unwrap().0, 200);
    }
    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in [&n1, &n2] {
        while node.request("GET", "/ready", &[], b"").unwrap().0 != 200 {
            assert!(
                Instant::now() < deadline,
                "a node did not recover within 30 s of the database"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let (st, v) = post_envelope(&n2, &a.message(&b.handle, "after")).unwrap();
    assert_eq!(st, 201, "{v:?}");
    assert_eq!(
        b.inbox(&n1).len(),
        2,
        "what was acknowledged, and only that"
    );
    drop(n1);
    drop(n2);
    let _ = std::fs::remove_dir_all(&dir);
}
