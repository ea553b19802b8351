//! Presence (SPEC.md section 18.4) through the real `keytool` binary against a real relay
//! process on loopback: an agent that holds a stream (`keytool watch`) sets `busy`, and an agent
//! it granted a contact level sees it busy, verified, in `presence show` and in `who`, while a
//! stranger gets not_found; a listed agent's bare status; a heartbeat makes an agent that holds
//! no stream `available` to its contacts; `presence set` says when contacts see `offline`;
//! `watch --presence` prints presence events besides the inbox's items; the `--json` shapes;
//! usage errors and the relay's limit refused before anything is sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{get, lines, s, start_relay, Kt};
use formica_protocol::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn int(v: &Value, path: &[&str]) -> i64 {
    get(v, path)
        .as_i64()
        .unwrap_or_else(|| panic!("{path:?} is not an integer in {v:?}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A failing run under --json: its exit code and `error.code`.
fn failure(out: &Output) -> (Option<i32>, String) {
    let v = lines(&out.stdout);
    assert_eq!(v.len(), 1, "one failure line: {v:?}");
    assert_eq!(get(&v[0], &["ok"]), &Value::Bool(false));
    (out.status.code(), s(&v[0], &["error", "code"]).to_owned())
}

fn text(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A keytool process in the background, killed when dropped (also when a check fails).
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn background(kt: &Kt<'_>, args: &[&str]) -> Background {
    Background(
        Command::new(env!("CARGO_BIN_EXE_keytool"))
            .arg("--home")
            .arg(&kt.home)
            .args(["--relay", &kt.relay.url])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// `who` asks `whom`'s presence until it is `status` (at most 20 s), and returns it.
fn wait_status(who: &Kt<'_>, whom: &str, status: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let v = who.json(&["presence", "show", whom]).remove(0);
        if s(&v, &["status"]) == status {
            return v;
        }
        assert!(Instant::now() < until, "{whom} is not {status}: {v:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `who --json`: the entries (every line but the last), after checking the last.
fn who_entries(kt: &Kt<'_>) -> Vec<Value> {
    let mut out = kt.json(&["who"]);
    let last = out.pop().expect("a final line");
    assert_eq!(get(&last, &["ok"]), &Value::Bool(true));
    assert_eq!(int(&last, &["count"]), out.len() as i64);
    out
}

#[test]
fn presence_is_set_shown_verified_pushed_and_hidden_as_the_spec_says() {
    let dir = std::env::temp_dir().join(format!("formica-kt-pres-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let relay = start_relay(&dir);
    let kt = |name: &str| Kt {
        home: dir.join(name),
        relay: &relay,
    };
    let (alice, bob, carol, dave) = (kt("alice"), kt("bob"), kt("carol"), kt("dave"));
    let a = s(&alice.json(&["register", "@alice"])[0], &["handle"]).to_owned();
    let b = s(&bob.json(&["register", "@bob"])[0], &["handle"]).to_owned();
    let c = s(&carol.json(&["register", "@carol"])[0], &["handle"]).to_owned();
    let d = s(&dave.json(&["register", "@dave"])[0], &["handle"]).to_owned();
    // alice and bob grant each other a level; bob lists carol, who granted him nothing.
    alice.json(&["contacts", "add", "@bob", "--level", "read"]);
    bob.json(&["contacts", "add", "@alice", "--level", "message"]);
    bob.json(&["contacts", "add", "@carol", "--level", "read"]);

    // Never connected: offline, never seen, no status; who lists alice only.
    let v = bob.json(&["presence", "show", "@alice"]).remove(0);
    assert_eq!(get(&v, &["ok"]), &Value::Bool(true));
    assert_eq!(s(&v, &["handle"]), a);
    assert_eq!((s(&v, &["status"]), s(&v, &["view"])), ("offline", "full"));
    for k in ["last_seen", "signed", "note", "expires"] {
        assert_eq!(get(&v, &[k]), &Value::Null, "{k}");
    }
    assert_eq!(get(&v, &["verified"]), &Value::Bool(false));
    let w = who_entries(&bob);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(
        (s(&w[0], &["handle"]), s(&w[0], &["status"])),
        (a.as_str(), "offline")
    );

    // Strangers, unknown handles and other relays' agents: not found (exit 7).
    for (who, h) in [
        (&carol, "@alice"),
        (&carol, a.as_str()),
        (&bob, "@nobody"),
        (&bob, "@alice@relay-z.example"),
    ] {
        assert_eq!(
            failure(&who.run(&["--json", "presence", "show", h])),
            (Some(7), "not_found".into()),
            "{h}"
        );
    }
    let out = bob.run(&["presence", "show", "@alice@relay-z.example"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("across relays"));

    // alice holds a stream: bob sees her available (connected, no status).
    let _alice_stream = background(&alice, &["watch", "--timeout", "120s"]);
    let v = wait_status(&bob, "@alice", "available");
    assert!(int(&v, &["last_seen"]) > 0);
    assert_eq!(get(&v, &["signed"]), &Value::Null);

    // busy for 30 minutes, with a note: the relay's answer, and what contacts see.
    let set = alice
        .json(&[
            "presence",
            "set",
            "busy",
            "--for",
            "30m",
            "--note",
            "reviewing PR 42",
        ])
        .remove(0);
    assert_eq!(get(&set, &["ok"]), &Value::Bool(true));
    assert_eq!(s(&set, &["handle"]), a);
    assert_eq!(
        (s(&set, &["status"]), s(&set, &["result"])),
        ("busy", "stored")
    );
    assert_eq!(s(&set, &["note"]), "reviewing PR 42");
    assert_eq!(s(&set, &["shown"]), "busy");
    assert_eq!(get(&set, &["connected_until"]), &Value::Null);
    assert_eq!(int(&set, &["expires"]), int(&set, &["signed", "expires"]));
    assert_eq!(
        int(&set, &["expires"]) - int(&set, &["signed", "ts"]),
        1_800_000
    );
    assert_eq!(s(&set, &["signed", "status"]), "busy");

    // bob, her contact, sees it verified; carol still sees nothing.
    let v = bob.json(&["presence", "show", "@alice"]).remove(0);
    assert_eq!((s(&v, &["status"]), s(&v, &["view"])), ("busy", "full"));
    assert_eq!(get(&v, &["verified"]), &Value::Bool(true));
    assert_eq!(s(&v, &["note"]), "reviewing PR 42");
    assert_eq!(int(&v, &["expires"]), int(&set, &["expires"]));
    assert!(int(&v, &["last_seen"]) > now_ms() - 60_000);
    assert_eq!(get(&v, &["signed"]), get(&set, &["signed"]));
    let shown = text(&bob.run(&["presence", "show", "@alice"]));
    for want in ["busy", "verified", "reviewing PR 42", "last seen"] {
        assert!(shown.contains(want), "{want:?} not in {shown}");
    }
    assert_eq!(
        failure(&carol.run(&["--json", "presence", "show", "@alice"])),
        (Some(7), "not_found".into())
    );
    // alice sees her own.
    let v = alice.json(&["presence", "show"]).remove(0);
    assert_eq!(
        (s(&v, &["handle"]), s(&v, &["status"])),
        (a.as_str(), "busy")
    );

    // who: alice, busy and verified; carol left out (she granted bob nothing, is not listed).
    let w = who_entries(&bob);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(s(&w[0], &["handle"]), a);
    assert_eq!(s(&w[0], &["status"]), "busy");
    assert_eq!(get(&w[0], &["verified"]), &Value::Bool(true));
    assert_eq!(s(&w[0], &["note"]), "reviewing PR 42");
    let listing = text(&bob.run(&["who"]));
    assert!(
        listing.contains(&a) && listing.contains("busy") && listing.contains("(1 contact;"),
        "{listing}"
    );

    // A listed agent: every agent of the relay sees its status alone.
    carol.json(&["profile", "set", "--name", "Carol", "--listed"]);
    let w = who_entries(&bob);
    let hs: Vec<&str> = w.iter().map(|e| s(e, &["handle"])).collect();
    assert_eq!(hs, [a.as_str(), c.as_str()]);
    let coarse = &w[1];
    assert_eq!(
        (s(coarse, &["status"]), s(coarse, &["view"])),
        ("offline", "coarse")
    );
    assert_eq!(get(coarse, &["last_seen"]), &Value::Null);
    assert_eq!(get(coarse, &["verified"]), &Value::Bool(false));
    let v = alice.json(&["presence", "show", "@carol"]).remove(0);
    assert_eq!(s(&v, &["view"]), "coarse");

    // An agent that holds no stream: its status is stored, but its contacts see it offline
    // (and are told so); with --heartbeat, connected at once.
    let out = carol.run(&["presence", "set", "away"]);
    let said = text(&out);
    assert!(
        said.contains("your contacts see: offline") && said.contains("presence heartbeat"),
        "{said}"
    );
    let v = carol
        .json(&["presence", "set", "away", "--heartbeat"])
        .remove(0);
    assert_eq!(s(&v, &["shown"]), "away");
    assert!(int(&v, &["connected_until"]) > now_ms());
    assert_eq!(
        int(&v, &["expires"]) - int(&v, &["signed", "ts"]),
        3_600_000
    );

    // A heartbeat makes dave, who holds no stream, available to bob.
    dave.json(&["contacts", "add", "@bob", "--level", "read"]);
    let v = bob.json(&["presence", "show", "@dave"]).remove(0);
    assert_eq!(s(&v, &["status"]), "offline");
    assert_eq!(get(&v, &["last_seen"]), &Value::Null);
    let hb = dave.json(&["presence", "heartbeat"]).remove(0);
    assert_eq!(get(&hb, &["ok"]), &Value::Bool(true));
    assert_eq!(s(&hb, &["handle"]), d);
    assert!(int(&hb, &["connected_until"]) > now_ms());
    let v = bob.json(&["presence", "show", "@dave"]).remove(0);
    assert_eq!(s(&v, &["status"]), "available");
    assert!(int(&v, &["last_seen"]) > 0);
    assert_eq!(get(&v, &["signed"]), &Value::Null);
    let said = text(&dave.run(&["presence", "heartbeat"]));
    assert!(said.contains("connected until"), "{said}");

    // watch --presence: bob's stream prints alice's change, then the inbox item, and stops at
    // --count 1 (presence lines are not items).
    let mut watch = background(
        &bob,
        &[
            "--json",
            "watch",
            "--presence",
            "--count",
            "1",
            "--timeout",
            "30s",
        ],
    );
    wait_status(&alice, &b, "available");
    alice.json(&["presence", "set", "away", "--note", "lunch"]);
    let mut out = BufReader::new(watch.0.stdout.take().unwrap());
    let mut next_line = || {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "the watch ended early");
        lines(l.as_bytes()).remove(0)
    };
    let ev = loop {
        let v = next_line();
        let p = get(&v, &["presence"]);
        if s(p, &["handle"]) == a && s(p, &["status"]) == "away" {
            break v;
        }
    };
    assert_eq!(ev.as_object().unwrap().len(), 1, "{ev:?}");
    assert_eq!(get(&ev, &["presence", "verified"]), &Value::Bool(true));
    assert_eq!(s(&ev, &["presence", "view"]), "full");
    assert_eq!(s(&ev, &["presence", "note"]), "lunch");
    let id = s(&alice.json(&["send", "@bob", "hello"])[0], &["id"]).to_owned();
    let item = loop {
        let v = next_line();
        if v.as_object().unwrap().get("cursor").is_some() {
            break v;
        }
        assert!(get(&v, &["presence"]).as_object().is_some(), "{v:?}");
    };
    assert_eq!(s(&item, &["envelope", "id"]), id);
    assert!(watch.0.wait().unwrap().success());

    // available ends away early (5 minutes by default).
    let v = alice.json(&["presence", "set", "available"]).remove(0);
    assert_eq!(int(&v, &["expires"]) - int(&v, &["signed", "ts"]), 300_000);
    let v = bob.json(&["presence", "show", "@alice"]).remove(0);
    assert_eq!(s(&v, &["status"]), "available");
    assert_eq!(s(&v, &["signed", "status"]), "available");

    // Refused before anything is signed or sent: usage errors (exit 2), the relay's limit
    // (exit 3 with the code the relay would give).
    let long_note = "x".repeat(281);
    for args in [
        &["presence"][..],
        &["presence", "set"][..],
        &["presence", "set", "offline"][..],
        &["presence", "set", "sleeping"][..],
        &["presence", "set", "Busy"][..],
        &["presence", "set", "busy", "--for", "0s"][..],
        &["presence", "set", "busy", "--for", "5x"][..],
        &["presence", "set", "busy", "--note", &long_note][..],
        &["presence", "show", "@alice", "@bob"][..],
        &["presence", "heartbeat", "now"][..],
        &["who", "@alice"][..],
        &["watch", "--presence", "yes"][..],
    ] {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        assert_eq!(
            failure(&alice.run(&all)),
            (Some(2), "keytool.usage".into()),
            "{args:?}"
        );
    }
    let out = alice.run(&["--json", "presence", "set", "busy", "--for", "25h"]);
    assert_eq!(failure(&out), (Some(3), "invalid_field".into()));
    assert!(String::from_utf8_lossy(&out.stdout).contains("status_ttl_ms_max"));
    // Still the status she set.
    let v = bob.json(&["presence", "show", "@alice"]).remove(0);
    assert_eq!(s(&v, &["signed", "status"]), "available");

    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}
