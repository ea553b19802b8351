//! Relay processes on loopback: restart keeps state identical, SIGTERM drains and exits 0, and
//! SIGKILL in the middle of concurrent writes loses nothing that was acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/process.rs"]
mod process;

use process::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "formica-{name}-{}-{}",
        std::process::id(),
        now_ms()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn restart_keeps_state_and_a_replay_is_still_duplicate() {
    let dir = tempdir("restart");
    let config = write_config(&dir);
    let mut r = RelayProc::start(&dir.join("data"), &config);
    let a = Peer::register(&r, "alice", 1);
    let b = Peer::register(&r, "bob", 2);
    b.allow(&r, &a.handle);
    let mut sent = Vec::new();
    for n in 0..5 {
        let m = a.message(&b.handle, &format!("hello {n}"));
        let (st, v) = post_envelope(&r, &m).unwrap();
        assert_eq!((st, result_of(&v)), (201, "accepted".to_owned()));
        sent.push(m);
    }
    let before = b.inbox(&r);
    let keys_before = r
        .request("GET", &format!("/v1/keys/{}", a.handle), &[], b"")
        .unwrap();
    // A signed read, captured: it is answered once, and its nonce is kept across the restart
    // (AUTH-6), so the same request is refused after it.
    let captured = b.auth("GET", "/v1/inbox", b"");
    let (st, _) = r
        .request("GET", "/v1/inbox", &[(captured.0, captured.1.clone())], b"")
        .unwrap();
    assert_eq!(st, 200);
    assert_eq!(r.terminate(), Some(0), "SIGTERM must drain and exit 0");

    let mut r2 = RelayProc::start(&dir.join("data"), &config);
    let (st, v) = r2
        .request("GET", "/v1/inbox", &[(captured.0, captured.1.clone())], b"")
        .unwrap();
    assert_eq!(
        st, 401,
        "a request replayed after a restart was accepted: {v:?}"
    );
    assert!(format!("{v:?}").contains("nonce_reused"), "{v:?}");
    // A signed write, then kill -9: its nonce went into the same commit as its effect.
    let body = b"{\"level\":\"message\"}";
    let path = format!("/v1/contacts/{}", a.handle);
    let write = b.auth("PUT", &path, body);
    let (st, _) = r2
        .request("PUT", &path, &[(write.0, write.1.clone())], body)
        .unwrap();
    assert!((200..300).contains(&st), "{st}");
    r2.kill();
    let r2 = RelayProc::start(&dir.join("data"), &config);
    let (st, v) = r2
        .request("PUT", &path, &[(write.0, write.1.clone())], body)
        .unwrap();
    assert_eq!(
        st, 401,
        "a write replayed after kill -9 was accepted: {v:?}"
    );
    assert_eq!(b.inbox(&r2), before, "inbox identical after restart");
    assert_eq!(
        r2.request("GET", &format!("/v1/keys/{}", a.handle), &[], b"")
            .unwrap(),
        keys_before
    );
    for m in &sent {
        let (st, v) = post_envelope(&r2, m).unwrap();
        assert_eq!(
            (st, result_of(&v)),
            (200, "duplicate".to_owned()),
            "a replay after restart is still a duplicate"
        );
    }
    // Stored once: the replays added nothing to the inbox.
    assert_eq!(
        b.inbox(&r2),
        before,
        "a replay after restart was stored again"
    );
    // The relay key (and so the descriptor's key) survives the restart too.
    let (_, d1) = r2.request("GET", "/.well-known/formica", &[], b"").unwrap();
    assert!(d1.as_object().unwrap().get("key").is_some());
    drop(r2);
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["check", "--public-host", "relay.test", "--data-dir"])
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "relay check: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(String::from_utf8_lossy(&status.stdout).contains("ok"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rounds of SIGKILL during concurrent posts.
const CRASH_ROUNDS: usize = 50;
/// Concurrent writers per round.
const WRITERS: usize = 4;

#[test]
fn sigkill_during_concurrent_writes_loses_nothing_acknowledged() {
    let dir = tempdir("crash");
    let config = write_config(&dir);
    let data = dir.join("data");
    let (a, b) = {
        let r = RelayProc::start(&data, &config);
        let a = Peer::register(&r, "alice", 1);
        let b = Peer::register(&r, "bob", 2);
        b.allow(&r, &a.handle);
        (a, b)
    };
    let a = Arc::new(a);
    let acked: Arc<Mutex<Vec<formica_protocol::SignedEnvelope>>> = Arc::default();
    let mut checked = 0;
    for round in 0..CRASH_ROUNDS {
        let mut r = RelayProc::start(&data, &config);
        // Everything acknowledged in the round before the kill is present: a re-post is a
        // duplicate (the final check below covers every round through the inbox).
        assert_still_stored(&r, &acked, &mut checked, round);
        let stop = Instant::now() + Duration::from_millis(100 + (round as u64 * 37) % 300);
        let mut threads = Vec::new();
        for w in 0..WRITERS {
            let a = a.clone();
            let acked = acked.clone();
            let addr = r.addr.clone();
            let bh = b.handle.clone();
            threads.push(std::thread::spawn(move || {
                let mut n = 0;
                loop {
                    let m = a.message(&bh, &format!("r{round} w{w} n{n}"));
                    n += 1;
                    match http(&addr, "POST", "/v1/envelopes", &[], &m.wire_bytes()) {
                        Ok((201, _)) => acked.lock().unwrap().push(m),
                        Ok((st, v)) => panic!("unexpected answer {st}: {v:?}"),
                        Err(_) => return, // the relay was killed
                    }
                }
            }));
        }
        while Instant::now() < stop {
            std::thread::sleep(Duration::from_millis(5));
        }
        r.kill();
        for t in threads {
            t.join().unwrap();
        }
    }
    let total = acked.lock().unwrap().len();
    assert!(
        total > CRASH_ROUNDS * 5,
        "only {total} envelopes were acknowledged in {CRASH_ROUNDS} rounds"
    );
    // Final check: the store opens cleanly, the chain verifies, every acknowledged envelope is in
    // bob's inbox exactly once.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["check", "--public-host", "relay.test", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "relay check after crashes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = RelayProc::start(&data, &config);
    let inbox = b.inbox(&r);
    let ids: std::collections::HashSet<String> = inbox.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids.len(), inbox.len(), "no envelope is in the inbox twice");
    for m in acked.lock().unwrap().iter() {
        assert!(
            ids.contains(&m.id().to_hex()),
            "acknowledged {} missing from the inbox",
            m.id()
        );
    }
    eprintln!("crash test: {CRASH_ROUNDS} rounds, {total} acknowledged envelopes, all present");
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGKILL while retention sweeps remove what the reader has read (every 20 ms, items settled
/// for 50 ms): every acknowledged envelope is still known (a re-post is `duplicate`), every one
/// the reader was never handed is still in the inbox, and after the rounds the tables are the
/// replay of the log (`relay check`).
#[test]
fn sigkill_during_retention_removals_and_checkpoints_loses_nothing_acknowledged() {
    const ROUNDS: usize = 8;
    let dir = tempdir("crash-retention");
    // A checkpoint every 100 records: snapshots, checkpoint records and dropped records all
    // happen while the relay is killed.
    let config = write_config_with(
        &dir,
        "[retention]\nsweep_ms = 20\ndelivered_ms = 50\nmax_ms = 3600000\ncheckpoint_records = 100",
    );
    let data = dir.join("data");
    let (a, b) = {
        let r = RelayProc::start(&data, &config);
        let a = Peer::register(&r, "alice", 1);
        let b = Peer::register(&r, "bob", 2);
        b.allow(&r, &a.handle);
        (Arc::new(a), Arc::new(b))
    };
    let acked: Arc<Mutex<Vec<formica_protocol::SignedEnvelope>>> = Arc::default();
    let handed: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let mut checked = 0;
    let mut removed_some = false;
    for round in 0..ROUNDS {
        let mut r = RelayProc::start(&data, &config);
        assert_still_stored(&r, &acked, &mut checked, round);
        let stop = Instant::now() + Duration::from_millis(200 + (round as u64 * 53) % 300);
        let mut threads = Vec::new();
        for w in 0..2 {
            let (a, acked, addr, bh) = (a.clone(), acked.clone(), r.addr.clone(), b.handle.clone());
            threads.push(std::thread::spawn(move || {
                let mut n = 0;
                loop {
                    let m = a.message(&bh, &format!("r{round} w{w} n{n}"));
                    n += 1;
                    match http(&addr, "POST", "/v1/envelopes", &[], &m.wire_bytes()) {
                        Ok((201, _)) => acked.lock().unwrap().push(m),
                        Ok((st, v)) => panic!("unexpected answer {st}: {v:?}"),
                        Err(_) => return,
                    }
                }
            }));
        }
        {
            // The reader: pages from the oldest item kept, so what it read settles and goes.
            let (b, handed, addr) = (b.clone(), handed.clone(), r.addr.clone());
            threads.push(std::thread::spawn(move || loop {
                let h = b.auth("GET", "/v1/inbox", b"");
                match http(&addr, "GET", "/v1/inbox", &[(h.0, h.1)], b"") {
                    Ok((200, v)) => {
                        let items = v
                            .as_object()
                            .and_then(|o| o.get("items"))
                            .and_then(|i| i.as_array())
                            .map(<[_]>::to_vec)
                            .unwrap_or_default();
                        let mut hd = handed.lock().unwrap();
                        for it in items {
                            if let Some(id) = it
                                .as_object()
                                .and_then(|o| o.get("envelope"))
                                .and_then(|e| e.as_object())
                                .and_then(|e| e.get("id"))
                                .and_then(|i| i.as_str())
                            {
                                hd.insert(id.to_owned());
                            }
                        }
                    }
                    Ok((st, v)) => panic!("reader: unexpected answer {st}: {v:?}"),
                    Err(_) => return,
                }
                std::thread::sleep(Duration::from_millis(5));
            }));
        }
        while Instant::now() < stop {
            std::thread::sleep(Duration::from_millis(5));
        }
        r.kill();
        for t in threads {
            t.join().unwrap();
        }
    }
    // The rounds are short: on a slow machine a kill may have come before any second checkpoint.
    // One more run, without kills, goes on until records were dropped (bounded), so that what
    // follows checks a log that starts after record 1.
    {
        let mut r = RelayProc::start(&data, &config);
        let until = Instant::now() + Duration::from_secs(60);
        let mut n = 0;
        loop {
            let (_, text) = r.request_text("GET", "/metrics").unwrap();
            if metric(&text, "formica_store_log_first_record") > 1 {
                break;
            }
            assert!(Instant::now() < until, "no record dropped: {text}");
            for _ in 0..60 {
                let m = a.message(&b.handle, &format!("after the rounds {n}"));
                n += 1;
                let (st, v) = post_envelope(&r, &m).unwrap();
                assert_eq!(st, 201, "{v:?}");
                acked.lock().unwrap().push(m);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        assert_eq!(r.terminate(), Some(0));
    }
    let out = check_data(&data);
    assert!(
        out.status.success(),
        "relay check after crashes during retention: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("dropped behind a checkpoint"),
        "no record was dropped behind a checkpoint: {said}"
    );
    let r = RelayProc::start(&data, &config);
    // What is still kept: every acknowledged envelope the reader was never handed.
    let mut kept = std::collections::HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(c) => format!("/v1/inbox?after={c}"),
            None => "/v1/inbox".to_owned(),
        };
        let (st, v) = b.authed(&r, "GET", &path, b"");
        assert_eq!(st, 200, "{v:?}");
        let o = v.as_object().unwrap();
        let items = o
            .get("items")
            .and_then(|i| i.as_array())
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        if items.is_empty() {
            break;
        }
        for it in &items {
            let id = it
                .as_object()
                .and_then(|o| o.get("envelope"))
                .and_then(|e| e.as_object())
                .and_then(|e| e.get("id"))
                .and_then(|i| i.as_str())
                .unwrap();
            kept.insert(id.to_owned());
        }
        after = o.get("next").and_then(|n| n.as_str()).map(str::to_owned);
    }
    let handed = handed.lock().unwrap();
    let acked = acked.lock().unwrap();
    for m in acked.iter() {
        let id = m.id().to_hex();
        if !handed.contains(&id) {
            assert!(
                kept.contains(&id),
                "acknowledged {id}, never handed out, is gone"
            );
        } else if !kept.contains(&id) {
            removed_some = true;
        }
    }
    assert!(
        acked.len() > ROUNDS * 5,
        "only {} acknowledged",
        acked.len()
    );
    assert!(
        removed_some,
        "retention removed nothing: the test did not test it"
    );
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A metric's value in `/metrics` text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Every envelope of `acked` after `*checked` (acknowledged before the last kill) is still
/// there: posting it again is answered `duplicate`.
fn assert_still_stored(
    r: &RelayProc,
    acked: &Mutex<Vec<formica_protocol::SignedEnvelope>>,
    checked: &mut usize,
    round: usize,
) {
    let last_round: Vec<_> = acked.lock().unwrap()[*checked..].to_vec();
    *checked += last_round.len();
    for m in &last_round {
        let (st, v) = post_envelope(r, m).unwrap();
        assert_eq!(
            (st, result_of(&v)),
            (200, "duplicate".to_owned()),
            "round {round}: acknowledged envelope {} lost",
            m.id()
        );
    }
}

/// `relay <args> --data-dir <data>`, run to its end.
fn relay_cli(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

fn check_data(data: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["check", "--public-host", "relay.test", "--data-dir"])
        .arg(data)
        .output()
        .unwrap()
}

fn serve_refuses(data: &std::path::Path, config: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--public-host",
            "relay.test",
            "--data-dir",
        ])
        .arg(data)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "relay serve started where it must not"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_damaged_store_is_refused_by_serve_and_named_by_check() {
    let dir = tempdir("damage");
    let config = write_config(&dir);
    let data = dir.join("data");
    {
        let mut r = RelayProc::start(&data, &config);
        let a = Peer::register(&r, "alice", 1);
        let b = Peer::register(&r, "bob", 2);
        b.allow(&r, &a.handle);
        for n in 0..20 {
            let (st, _) =
                post_envelope(&r, &a.message(&b.handle, &format!("MARKER-{n:04}-MARKER"))).unwrap();
            assert_eq!(st, 201);
        }
        assert_eq!(r.terminate(), Some(0));
    }
    assert!(check_data(&data).status.success());
    let log = data.join("log.redb");
    let pristine = std::fs::read(&log).unwrap();

    // A flipped byte in the last record (the log's head; its bytes are also in the inbox
    // table): start-up checks the head, so serve refuses, and check names the record.
    let flip = |marker: &[u8]| {
        let mut bytes = pristine.clone();
        let mut found = 0;
        let mut at = 0;
        while let Some(p) = bytes[at..].windows(marker.len()).position(|w| w == marker) {
            bytes[at + p + 7] ^= 0x01;
            at += p + marker.len();
            found += 1;
        }
        assert!(found > 0, "record bytes in the file");
        bytes
    };
    let bytes = flip(b"MARKER-0019-MARK");
    std::fs::write(&log, &bytes).unwrap();
    let out = check_data(&data);
    assert!(!out.status.success(), "check passed a flipped byte");
    let msg = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(msg.contains("DAMAGED"), "{msg}");
    // The message names the damaged record by its number.
    let named = |msg: &str| {
        msg.split("record ")
            .skip(1)
            .filter_map(|t| t.split(|c: char| !c.is_ascii_digit()).next())
            .filter_map(|n| n.parse::<u64>().ok())
            .any(|n| n > 0)
    };
    assert!(named(&msg), "check does not name the damaged record: {msg}");
    let refused = serve_refuses(&data, &config);
    assert!(refused.contains("refusing to start"), "{refused}");
    // Neither check nor the refused start changed the damaged file.
    // (Regression: every open committed an empty write transaction, even on a damaged store.)
    assert!(
        std::fs::read(&log).unwrap() == bytes,
        "check or serve wrote to a damaged store"
    );

    // A flipped byte in an older record: check names it; serve starts (it checks the head and
    // serves its tables) and its background check of the chain reports the record.
    let bytes = flip(b"MARKER-0007-MARK");
    std::fs::write(&log, &bytes).unwrap();
    let out = check_data(&data);
    let msg = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && msg.contains("DAMAGED") && named(&msg),
        "{msg}"
    );
    {
        let mut r = RelayProc::start(&data, &config);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (_, text) = r.request_text("GET", "/metrics").unwrap();
            let damaged = text
                .lines()
                .find_map(|l| l.strip_prefix("formica_store_log_damaged_record "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            if damaged > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "the background check did not report the damaged record"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(r.terminate(), Some(0));
    }

    // A truncated file.
    let truncated = &pristine[..pristine.len() / 2];
    std::fs::write(&log, truncated).unwrap();
    let out = check_data(&data);
    assert!(!out.status.success(), "check passed a truncated file");
    let msg = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        msg.contains("DAMAGED") && msg.contains("log.redb"),
        "check does not name the damaged file: {msg}"
    );
    let refused = serve_refuses(&data, &config);
    assert!(refused.contains("refusing to start"), "{refused}");
    assert!(
        std::fs::read(&log).unwrap() == truncated,
        "check or serve wrote to a truncated store"
    );

    // A file cut short by less than a page, and one with 100 bytes appended: named for what
    // they are, no panic text reaches the operator, and neither check nor the
    // refused start changes the file. (Regression: the store engine panicked with an assertion
    // and a backtrace, appended bytes were called "truncated or overwritten", and with 1 MiB
    // appended both check and serve modified the file.)
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "cut by 100 bytes",
            pristine[..pristine.len() - 100].to_vec(),
            "cut short",
        ),
        (
            "100 bytes appended",
            [pristine.clone(), vec![0xab; 100]].concat(),
            "appended",
        ),
    ];
    for (what, bytes, named) in cases {
        std::fs::write(&log, &bytes).unwrap();
        let out = check_data(&data);
        assert!(!out.status.success(), "check passed a file with {what}");
        let msg = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            msg.contains("DAMAGED") && msg.contains(named),
            "{what}: {msg}"
        );
        assert!(msg.contains("was not changed"), "{what}: {msg}");
        let refused = serve_refuses(&data, &config);
        for text in [&msg, &refused] {
            assert!(
                !text.contains("panicked") && !text.contains("RUST_BACKTRACE"),
                "{what}: panic text reached the operator: {text}"
            );
        }
        assert!(
            std::fs::read(&log).unwrap() == bytes,
            "check or serve wrote to a file with {what}"
        );
    }

    // Whole pages appended past the store's end (1 MiB) are space redb 3 and later ignore (redb 2
    // refused them): nothing the store holds changed, so check passes with the same report and
    // leaves the file alone, and the relay serves it.
    let ok = String::from_utf8_lossy(&{
        std::fs::write(&log, &pristine).unwrap();
        check_data(&data).stdout
    })
    .into_owned();
    let appended = [pristine.clone(), vec![0xab; 1 << 20]].concat();
    std::fs::write(&log, &appended).unwrap();
    let out = check_data(&data);
    assert!(
        out.status.success(),
        "1 MiB appended: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), ok);
    assert!(
        std::fs::read(&log).unwrap() == appended,
        "check wrote to a file with 1 MiB appended"
    );
    let mut r = RelayProc::start(&data, &config);
    assert_eq!(r.request_text("GET", "/ready").unwrap().0, 200);
    assert_eq!(r.terminate(), Some(0));

    // Restored, it is sound again.
    std::fs::write(&log, &pristine).unwrap();
    assert!(check_data(&data).status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression: SIGTERM left the store marked as needing recovery (the writer thread was not
/// joined, so the database was never closed), and `relay check` on that sound store rewrote it
/// (2.6 MB became 4.7 MB). Now a clean shutdown closes the store, `check` never writes (the
/// file's bytes are the same before and after, also after a crash), and a store left by a
/// crash is called recovered from an unclean shutdown, not damaged.
#[test]
fn a_clean_shutdown_closes_the_store_and_check_never_writes() {
    let dir = tempdir("clean-stop");
    let config = write_config(&dir);
    let data = dir.join("data");
    let log = data.join("log.redb");
    let write_some = |r: &RelayProc, a: &Peer, b: &Peer| {
        for n in 0..10 {
            let (st, _) = post_envelope(r, &a.message(&b.handle, &format!("n{n}"))).unwrap();
            assert_eq!(st, 201);
        }
    };
    let mut r = RelayProc::start(&data, &config);
    let a = Peer::register(&r, "alice", 1);
    let b = Peer::register(&r, "bob", 2);
    b.allow(&r, &a.handle);
    write_some(&r, &a, &b);
    assert_eq!(r.terminate(), Some(0));
    let before = std::fs::read(&log).unwrap();
    let out = check_data(&data);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("not closed cleanly"),
        "after SIGTERM the store was not closed cleanly: {text}"
    );
    assert!(
        std::fs::read(&log).unwrap() == before,
        "check wrote to a clean store"
    );

    // Killed: the store is not closed; check calls it sound and writes nothing. With
    // `store_quick_repair` (the default) every commit saved what a crash needs, so there is
    // nothing to repair; without it, check says the store was not closed cleanly.
    std::fs::create_dir_all(dir.join("slow")).unwrap();
    let slow = write_config_with(&dir.join("slow"), "store_quick_repair = false");
    for (config, repaired) in [(&config, false), (&slow, true)] {
        let mut r = RelayProc::start(&data, config);
        write_some(&r, &a, &b);
        r.kill();
        let before = std::fs::read(&log).unwrap();
        let out = check_data(&data);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "a killed relay's store is not damage: {text}"
        );
        assert_eq!(text.contains("not closed cleanly"), repaired, "{text}");
        assert!(
            std::fs::read(&log).unwrap() == before,
            "check wrote to a store left by a crash"
        );
    }
    // The next start recovers it, and everything acknowledged is there.
    let r = RelayProc::start(&data, &config);
    assert_eq!(b.inbox(&r).len(), 30);
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One data directory, one relay: a second `relay serve` on it is refused with a message that
/// says why, and the first goes on serving.
#[test]
fn a_second_relay_on_the_same_data_directory_is_refused() {
    let dir = tempdir("two");
    let config = write_config(&dir);
    let data = dir.join("data");
    let r = RelayProc::start(&data, &config);
    let said = serve_refuses(&data, &config);
    assert!(said.contains("another relay is serving it"), "{said}");
    assert_eq!(r.request("GET", "/ready", &[], b"").unwrap().0, 200);
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_under_load_drains_and_exits_zero_with_every_answer_durable() {
    let dir = tempdir("term");
    let config = write_config(&dir);
    let data = dir.join("data");
    let mut r = RelayProc::start(&data, &config);
    let a = Arc::new(Peer::register(&r, "alice", 1));
    let b = Peer::register(&r, "bob", 2);
    b.allow(&r, &a.handle);
    let acked: Arc<Mutex<Vec<formica_protocol::SignedEnvelope>>> = Arc::default();
    let mut threads = Vec::new();
    for w in 0..WRITERS {
        let (a, acked, addr, bh) = (a.clone(), acked.clone(), r.addr.clone(), b.handle.clone());
        threads.push(std::thread::spawn(move || {
            for n in 0.. {
                let m = a.message(&bh, &format!("w{w} n{n}"));
                match http(&addr, "POST", "/v1/envelopes", &[], &m.wire_bytes()) {
                    Ok((201, _)) => acked.lock().unwrap().push(m),
                    Ok((503, _)) | Err(_) => return,
                    Ok((st, v)) => panic!("unexpected answer {st}: {v:?}"),
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        r.terminate(),
        Some(0),
        "SIGTERM under load must drain and exit 0"
    );
    for t in threads {
        t.join().unwrap();
    }
    let r2 = RelayProc::start(&data, &config);
    let ids: std::collections::HashSet<String> =
        b.inbox(&r2).into_iter().map(|(_, id)| id).collect();
    let acked = acked.lock().unwrap();
    assert!(!acked.is_empty());
    for m in acked.iter() {
        assert!(
            ids.contains(&m.id().to_hex()),
            "acknowledged {} lost across SIGTERM",
            m.id()
        );
    }
    drop(r2);
    let _ = std::fs::remove_dir_all(&dir);
}

fn relay_cmd(args: &[&str], data: &std::path::Path) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The records count in `relay check`'s line.
fn records_of(check_out: &str) -> u64 {
    check_out
        .split("ok: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no record count in {check_out:?}"))
}

/// Regression: `relay check` on a running relay reported "DAMAGED ... Cannot acquire lock"
/// (exit 1), a false alarm for every monitoring job. Now it asks the running relay, which
/// checks its durable log beside serving; `relay backup` copies a running relay's directory
/// consistently, and the copy is checked and served; against a stopped relay, `relay peer`
/// says no relay serves the directory, and check and backup read the store themselves.
#[test]
fn check_and_backup_work_on_a_running_relay_and_the_backup_restores() {
    let dir = tempdir("backup");
    let config = write_config(&dir);
    let data = dir.join("data");
    let mut r = RelayProc::start(&data, &config);
    let a = Peer::register(&r, "alice", 1);
    let b = Peer::register(&r, "bob", 2);
    b.allow(&r, &a.handle);
    let mut before_ids = Vec::new();
    for n in 0..10 {
        let e = a.message(&b.handle, &format!("before {n}"));
        let (st, _) = post_envelope(&r, &e).unwrap();
        assert_eq!(st, 201);
        before_ids.push(e.id().to_hex());
    }
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };

    // check, online.
    let (code, out, err) = relay_cmd(&["check"], &data);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("checked by the relay serving"), "{out}");
    let at_backup = records_of(&out);
    // The --data-dir flag after a peer subcommand, as the README writes it.
    let (code, out, err) = relay_cmd(&["peer", "list"], &data);
    assert_eq!(code, 0, "{out}{err}");

    assert_eq!(mode(&data.join("admin.addr")), 0o600);
    // backup, online, while another client writes: the copy must be a prefix of the log (the
    // messages before, then some of those written during it, in order, none missing between).
    let bk = dir.join("backup");
    let during: Vec<_> = (0..30)
        .map(|n| a.message(&b.handle, &format!("during {n}")))
        .collect();
    let (code, out, err) = std::thread::scope(|sc| {
        let w = sc.spawn(|| {
            for e in &during {
                let (st, _) = post_envelope(&r, e).unwrap();
                assert_eq!(st, 201);
            }
        });
        let res = relay_cmd(&["backup", "--to", bk.to_str().unwrap()], &data);
        w.join().unwrap();
        res
    });
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("by the running relay"), "{out}");
    let in_backup: u64 = out
        .split("relay backup: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no record count in {out}"));
    assert!(in_backup >= at_backup, "{in_backup} < {at_backup}");
    // An unfinished earlier backup (its partial directory) is refused, never reused.
    let bk3 = dir.join("backup3");
    std::fs::create_dir_all(dir.join(".backup3.partial")).unwrap();
    let (code, _, err) = relay_cmd(&["backup", "--to", bk3.to_str().unwrap()], &data);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("did not finish"), "{err}");
    assert!(!bk3.exists());
    for n in 0..5 {
        let (st, _) = post_envelope(&r, &a.message(&b.handle, &format!("after {n}"))).unwrap();
        assert_eq!(st, 201);
    }
    // A second backup into the same directory is refused; the first is left alone.
    let (code, _, err) = relay_cmd(&["backup", "--to", bk.to_str().unwrap()], &data);
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");
    // With the token, but through a proxy on this machine (a forwarding header): refused.
    let token_text = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let bearer = format!("Bearer {}", token_text.trim());
    let (st, _) = r
        .request(
            "GET",
            "/admin/v1/peers",
            &[("authorization", bearer.clone())],
            b"",
        )
        .unwrap();
    assert_eq!(st, 200);
    let (st, _) = r
        .request(
            "GET",
            "/admin/v1/peers",
            &[
                ("authorization", bearer),
                ("x-forwarded-for", "203.0.113.9".to_owned()),
            ],
            b"",
        )
        .unwrap();
    assert_eq!(st, 403);
    // A relay serves the directory but cannot be asked (here: its token is gone): not damage,
    // its own exit status.
    let token = data.join("admin.token");
    std::fs::rename(&token, dir.join("token.aside")).unwrap();
    let (code, _, err) = relay_cmd(&["check"], &data);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("a relay is serving"), "{err}");
    assert!(!err.contains("DAMAGED"), "{err}");
    std::fs::rename(dir.join("token.aside"), &token).unwrap();
    assert_eq!(r.terminate(), Some(0));

    // Stopped: peer says so; check and backup read the store themselves.
    let (code, _, err) = relay_cmd(&["peer", "list"], &data);
    assert_eq!(code, 1);
    assert!(err.contains("no relay is serving"), "{err}");
    let (code, out, err) = relay_cmd(&["check"], &data);
    assert_eq!(code, 0, "{out}{err}");
    let total = records_of(&out);
    assert!(total > at_backup);
    let bk2 = dir.join("backup2");
    let (code, out, err) = relay_cmd(&["backup", "--to", bk2.to_str().unwrap()], &data);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = relay_cmd(&["check"], &bk2);
    assert_eq!((code, records_of(&out)), (0, total));

    // The online backup holds what was durable when it was asked for, and serves it.
    let (code, out, err) = relay_cmd(&["check"], &bk);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(records_of(&out), in_backup);
    assert!(
        !bk.join("admin.token").exists(),
        "the admin token was copied"
    );
    // Private like the directory it copies: 0700, files 0600.
    assert_eq!(mode(&bk), 0o700);
    for f in ["log.redb", "relay.key", "public_host"] {
        assert_eq!(mode(&bk.join(f)), 0o600, "{f}");
    }
    // A stopped relay leaves no admin address behind for a later command to send its token to.
    assert!(!data.join("admin.addr").exists());
    let restored = RelayProc::start(&bk, &config);
    let got: Vec<String> = b.inbox(&restored).into_iter().map(|(_, id)| id).collect();
    let mut want = before_ids.clone();
    want.extend(
        during
            .iter()
            .take(got.len().saturating_sub(10))
            .map(|e| e.id().to_hex()),
    );
    assert_eq!(got, want, "the backup is not a prefix of the log");
    drop(restored);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression: a restart with another `--listen` still served handles of the first listen
/// address (kept in `public_host`) without a word. It now says so at start.
#[test]
fn a_kept_host_that_differs_from_the_listen_address_is_announced() {
    use std::io::BufRead;
    let dir = tempdir("kepthost");
    let data = dir.join("data");
    let start = || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env("FORMICA_LOG", "error")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let second = rx.recv_timeout(Duration::from_millis(500)).ok();
        let _ = child.kill();
        let _ = child.wait();
        (first, second)
    };
    let (first, note) = start();
    assert!(note.is_none(), "{first} {note:?}");
    // Port 0 again: another port, the same data directory.
    let (first, note) = start();
    let note = note.unwrap_or_else(|| panic!("no note after {first}"));
    assert!(
        note.starts_with("note: this data directory keeps host 127.0.0.1:")
            && note.contains("--public-host"),
        "{note}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression: the relay logged almost nothing and `/metrics` had no per-request figures. A
/// registration is logged (plain text: no colour codes when the log is not a terminal), and
/// `/metrics` counts requests by route and status, refusals by code, latencies by route, and
/// the process figures.
#[test]
fn registrations_are_logged_and_requests_are_counted() {
    let dir = tempdir("observe");
    let config = write_config(&dir);
    let log = dir.join("relay.log");
    let r = RelayProc::start_logging(
        &dir.join("data"),
        &config,
        "127.0.0.1:0",
        "relay.test",
        Some(&log),
    );
    let a = Peer::register(&r, "alice", 1);
    let (st, _) = r.request("GET", "/v1/keys/@nobody", &[], b"").unwrap();
    assert_eq!(st, 404);
    let (st, text) = r.request_text("GET", "/metrics").unwrap();
    assert_eq!(st, 200);
    for want in [
        "formica_http_requests_total{route=\"/v1/register\",method=\"POST\",status=\"201\"} 1",
        "formica_http_requests_total{route=\"/v1/keys/{handle}\",method=\"GET\",status=\"404\"} 1",
        "formica_http_refusals_total{code=\"not_found\"} 1",
        "formica_http_request_duration_seconds_count{route=\"/v1/register\"} 1",
        "formica_http_request_duration_seconds_bucket{route=\"/v1/register\",le=\"+Inf\"} 1",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "formica_streams_open 0",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    drop(r);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("agent registered") && logged.contains(a.handle.as_str()),
        "{logged}"
    );
    assert!(
        !logged.contains('\u{1b}'),
        "colour codes in a log file: {logged}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A flipped byte in a projection table (an inbox item's bytes) is named by `relay check`, and
/// `relay check --rebuild` repairs it from the log; a changed row that still decodes is found
/// by comparing the tables with the replay of the log.
#[test]
fn a_damaged_projection_is_named_by_check_and_repaired_by_rebuild() {
    use formica_relay::store::{Changes, RedbStore, Store, Table};
    let dir = tempdir("projdamage");
    let config = write_config(&dir);
    let data = dir.join("data");
    let before = {
        let mut r = RelayProc::start(&data, &config);
        let a = Peer::register(&r, "alice", 1);
        let b = Peer::register(&r, "bob", 2);
        b.allow(&r, &a.handle);
        for n in 0..3 {
            let (st, _) = post_envelope(
                &r,
                &a.message(&b.handle, &format!("ROWMARK-{n:04}-ROWMARK")),
            )
            .unwrap();
            assert_eq!(st, 201);
        }
        let inbox = b.inbox(&r);
        assert_eq!(r.terminate(), Some(0));
        (inbox, b)
    };
    let run = |args: &[&str]| relay_cli(&data, args);
    assert!(run(&["check"]).status.success());
    let log = data.join("log.redb");
    let pristine = std::fs::read(&log).unwrap();

    // A changed row: the second inbox item's last bytes (the record it points at).
    let id = {
        let store = RedbStore::open(&log).unwrap();
        let mut rows = Vec::new();
        store
            .range(Table::Inbox, &[], None, &mut |k, v| {
                rows.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
        assert_eq!(rows.len(), 3);
        let (k, mut v) = rows[1].clone();
        let id = v[..32].to_vec();
        let n = v.len();
        v[n - 5] ^= 0x01;
        let mut c = Changes::new();
        c.insert((Table::Inbox, k), Some(v));
        store.commit(0, &[], &[&c]).unwrap();
        id
    };
    let out = run(&["check"]);
    let msg = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "check passed a changed inbox row");
    assert!(
        msg.contains("DAMAGED")
            && msg.contains("projection table inbox")
            && msg.contains("--rebuild"),
        "{msg}"
    );
    let out = run(&["check", "--rebuild"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("rebuilt"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run(&["check"]).status.success());

    // A flipped byte in the file, in each copy of a message id's raw bytes: those are only in
    // projection rows (the log holds ids as hex), so each one that check finds is named as a
    // damaged projection table, and a rebuild repairs it; copies in pages the store no longer
    // uses (it writes pages anew) are no damage.
    let marker = id.as_slice();
    let mut at = Vec::new();
    let mut from = 0;
    while let Some(p) = pristine[from..]
        .windows(marker.len())
        .position(|w| w == marker)
    {
        at.push(from + p);
        from += p + marker.len();
    }
    assert!(!at.is_empty(), "the message id's bytes are in the tables");
    let mut named_table = false;
    for p in at {
        let mut bytes = pristine.clone();
        bytes[p + 3] ^= 0x01;
        std::fs::write(&log, &bytes).unwrap();
        let out = run(&["check"]);
        let msg = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            continue;
        }
        assert!(
            msg.contains("DAMAGED") && msg.contains("projection table"),
            "flip at {p}: {msg}"
        );
        named_table = true;
        let out = run(&["check", "--rebuild"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(run(&["check"]).status.success());
    }
    assert!(
        named_table,
        "no flip was named as damage in a projection table"
    );
    std::fs::write(&log, &pristine).unwrap();
    let r = RelayProc::start(&data, &config);
    assert_eq!(before.1.inbox(&r), before.0);
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Checkpoints on a real relay: records are dropped behind them while it serves; a flipped
/// byte in the newest snapshot is named by `relay check`, `relay check --rebuild` sets it
/// aside and rebuilds from the older one, and the relay then serves what it served before.
#[test]
fn a_damaged_checkpoint_snapshot_is_named_by_check_and_set_aside_by_rebuild() {
    let dir = tempdir("snapdamage");
    let config = write_config_with(
        &dir,
        "[retention]\nsweep_ms = 20\ndelivered_ms = 50\nmax_ms = 3600000\ncheckpoint_records = 100",
    );
    let data = dir.join("data");
    let page = |r: &RelayProc, b: &Peer| -> Vec<String> {
        let (st, v) = b.authed(r, "GET", "/v1/inbox", b"");
        assert_eq!(st, 200, "{v:?}");
        v.as_object()
            .and_then(|o| o.get("items"))
            .and_then(|i| i.as_array())
            .unwrap()
            .iter()
            .map(|i| {
                i.as_object()
                    .and_then(|o| o.get("cursor"))
                    .and_then(|c| c.as_str())
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let (a, b, before) = {
        let mut r = RelayProc::start(&data, &config);
        let a = Peer::register(&r, "alice", 1);
        let b = Peer::register(&r, "bob", 2);
        b.allow(&r, &a.handle);
        let until = Instant::now() + Duration::from_secs(60);
        let mut n = 0;
        loop {
            for _ in 0..50 {
                let (st, v) = post_envelope(&r, &a.message(&b.handle, &format!("m{n}"))).unwrap();
                assert_eq!(st, 201, "{v:?}");
                n += 1;
            }
            // Hands out the oldest page: settled, those items go after `delivered_ms`.
            page(&r, &b);
            let (_, text) = r.request_text("GET", "/metrics").unwrap();
            if metric(&text, "formica_store_log_first_record") > 1
                && metric(&text, "formica_checkpoints_total") >= 2
            {
                break;
            }
            assert!(
                Instant::now() < until,
                "no record dropped after {n} messages"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let before = page(&r, &b);
        assert_eq!(r.terminate(), Some(0));
        (a, b, before)
    };
    let run = |args: &[&str]| relay_cli(&data, args);
    let out = run(&["check"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && said.contains("dropped behind a checkpoint"),
        "{said}"
    );
    let snaps = formica_relay::store::snapshot::list(&data.join("checkpoints")).unwrap();
    assert!(snaps.len() >= 2, "{snaps:?}");
    let (_, newest) = snaps.last().unwrap().clone();
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&newest, &bytes).unwrap();
    let out = run(&["check"]);
    let msg = String::from_utf8_lossy(&out.stderr).into_owned();
    let name = newest.file_name().unwrap().to_str().unwrap();
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(msg.contains("DAMAGED") && msg.contains(name), "{msg}");
    let out = run(&["check", "--rebuild"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!newest.exists() && newest.with_extension("snap.damaged").exists());
    let out = run(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What it serves follows on from what it served: retention may have removed more of the
    // items handed out (reading them hands them out), never added any, and the next item's
    // cursor follows the last one.
    let r = RelayProc::start(&data, &config);
    let after = page(&r, &b);
    assert!(
        after.iter().all(|c| before.contains(c)),
        "{after:?} {before:?}"
    );
    let (st, v) = post_envelope(&r, &a.message(&b.handle, "after the rebuild")).unwrap();
    assert_eq!(st, 201, "{v:?}");
    let last = |p: &[String]| p.last().and_then(|c| c.parse::<u64>().ok()).unwrap();
    assert_eq!(last(&page(&r, &b)), last(&before) + 1);
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}
