//! Profiles and the directory (SPEC.md section 18) through the real `keytool` binary against a
//! real relay process on loopback: `profile set` then `profile show`, verified; `find` by
//! capability and by text, with paging; an unlisted profile hidden from an agent who is not a
//! contact, in `profile show` and in `find`, and shown once the owner grants it a contact level;
//! the `--json` shapes; usage errors and the relay's limits refused before anything is sent; and
//! a relay answer altered on its way (a proxy that changes one byte of every profile it passes)
//! refused as a profile that does not verify, never shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{get, lines, s, start_relay, Kt};
use formica_protocol::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};

fn int(v: &Value, path: &[&str]) -> i64 {
    get(v, path)
        .as_i64()
        .unwrap_or_else(|| panic!("{path:?} is not an integer in {v:?}"))
}

/// A failing run under --json: its exit code and `error.code`.
fn failure(out: &Output) -> (Option<i32>, String) {
    let v = lines(&out.stdout);
    assert_eq!(v.len(), 1, "one failure line: {v:?}");
    assert_eq!(get(&v[0], &["ok"]), &Value::Bool(false));
    (out.status.code(), s(&v[0], &["error", "code"]).to_owned())
}

/// The results of `find --json` (every line but the last) and the last line.
fn found(out: &[Value]) -> (Vec<String>, &Value) {
    let (last, results) = out.split_last().expect("a final line");
    assert_eq!(get(last, &["ok"]), &Value::Bool(true));
    assert_eq!(int(last, &["count"]), results.len() as i64);
    for r in results {
        assert_eq!(get(r, &["verified"]), &Value::Bool(true));
        assert_eq!(s(r, &["handle"]), s(r, &["profile", "handle"]));
        assert!(get(r, &["tier"]).as_i64().is_some(), "{r:?}");
    }
    (
        results
            .iter()
            .map(|r| s(r, &["handle"]).to_owned())
            .collect(),
        last,
    )
}

fn arr<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .as_array()
        .unwrap_or_else(|| panic!("{path:?} is not an array in {v:?}"))
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

/// keytool with `home`, against the relay (or proxy) at `url`.
fn run_at(home: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keytool"))
        .arg("--home")
        .arg(home)
        .args(["--relay", url])
        .args(args)
        .output()
        .unwrap()
}

const ALICE_PROFILE: &[&str] = &[
    "profile",
    "set",
    "--name",
    "Alice Zoë",
    "--description",
    "Reviews Rust code",
    "--capability",
    "code-review@2:rust,sql",
    "--capability",
    "translate",
    "--accepts",
    "message",
    "--accepts",
    "task_request",
    "--platform",
    "formica-test",
    "--model",
    "m-1",
    "--listed",
    "--ttl",
    "1d",
];

#[test]
fn profiles_are_published_shown_verified_found_and_hidden_as_the_spec_says() {
    let dir = std::env::temp_dir().join(format!("formica-kt-prof-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let relay = start_relay(&dir);
    let kt = |name: &str| Kt {
        home: dir.join(name),
        relay: &relay,
    };
    let (alice, bob, carol) = (kt("alice"), kt("bob"), kt("carol"));
    let a = s(&alice.json(&["register", "@alice"])[0], &["handle"]).to_owned();
    let b = s(&bob.json(&["register", "@bob"])[0], &["handle"]).to_owned();
    let c = s(&carol.json(&["register", "@carol"])[0], &["handle"]).to_owned();

    // No profile yet: not found (exit 7), for its owner too, and for a handle nobody has.
    for args in [
        &["profile", "show"][..],
        &["profile", "show", "@nobody"][..],
    ] {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        assert_eq!(failure(&alice.run(&all)), (Some(7), "not_found".into()));
    }

    // Publish: the relay's answer, with the signed profile.
    let set = alice.json(ALICE_PROFILE);
    assert_eq!(set.len(), 1);
    let v = &set[0];
    assert_eq!(get(v, &["ok"]), &Value::Bool(true));
    assert_eq!(s(v, &["handle"]), a);
    assert_eq!(s(v, &["result"]), "stored");
    assert_eq!(get(v, &["listed"]), &Value::Bool(true));
    let seq = int(v, &["seq"]);
    assert_eq!(int(v, &["profile", "seq"]), seq);
    assert_eq!(int(v, &["expires"]), int(v, &["profile", "expires"]));
    assert_eq!(
        int(v, &["expires"]) - int(v, &["profile", "ts"]),
        86_400_000
    );

    // Shown to its owner and, listed, to every agent of the relay; verified.
    for (who, args) in [
        (&alice, &["profile", "show"][..]),
        (&bob, &["profile", "show", "@alice"][..]),
        (&bob, &["profile", "show", a.as_str()][..]),
    ] {
        let shown = who.json(args);
        assert_eq!(shown.len(), 1);
        let v = &shown[0];
        assert_eq!(get(v, &["ok"]), &Value::Bool(true));
        assert_eq!(get(v, &["verified"]), &Value::Bool(true));
        assert_eq!(s(v, &["handle"]), a);
        assert_eq!(int(v, &["tier"]), 0);
        assert_eq!(int(v, &["profile", "seq"]), seq);
        assert_eq!(s(v, &["profile", "name"]), "Alice Zoë");
        assert_eq!(s(v, &["profile", "description"]), "Reviews Rust code");
        let caps = arr(v, &["profile", "capabilities"]);
        assert_eq!(caps.len(), 2);
        assert_eq!(
            (s(&caps[0], &["id"]), s(&caps[0], &["version"])),
            ("code-review", "2")
        );
        let tags: Vec<&str> = arr(&caps[0], &["tags"])
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(tags, ["rust", "sql"]);
        let accepts: Vec<&str> = arr(v, &["profile", "accepts"])
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(accepts, ["message", "task_request"]);
        assert_eq!(
            (s(v, &["profile", "platform"]), s(v, &["profile", "model"])),
            ("formica-test", "m-1")
        );
    }
    let shown = text(&bob.run(&["profile", "show", "@alice"]));
    for want in [
        "verified",
        "Alice Zoë",
        "code-review@2:rust,sql",
        "message, task_request",
        "tier          0 (new) (as the relay reports it)",
    ] {
        assert!(shown.contains(want), "{want:?} not in {shown}");
    }

    // Set again: a higher seq, and the new profile replaces the old one.
    let again = alice.json(ALICE_PROFILE);
    assert!(int(&again[0], &["seq"]) > seq, "{again:?}");
    assert_eq!(s(&again[0], &["result"]), "stored");

    // find: by capability, by text (a space and a non-ASCII letter, in any case), by tier.
    let by_cap = bob.json(&["find", "--capability", "code-review"]);
    let (hs, last) = found(&by_cap);
    assert_eq!(hs, [a.as_str()]);
    assert_eq!(get(last, &["next"]), &Value::Null);
    assert_eq!(
        int(&by_cap[0], &["profile", "seq"]),
        int(&again[0], &["seq"])
    );
    for t in ["RUST CODE", "zoË", "sql"] {
        assert_eq!(
            found(&bob.json(&["find", "--text", t])).0,
            [a.as_str()],
            "{t}"
        );
    }
    assert!(found(&bob.json(&["find", "--capability", "cooking"]))
        .0
        .is_empty());
    assert!(found(&bob.json(&["find", "--min-tier", "1"])).0.is_empty());
    let listing = text(&bob.run(&["find", "--capability", "code-review"]));
    assert!(
        listing.contains(&a) && listing.contains("(1 profile, each verified"),
        "{listing}"
    );

    // An unlisted profile: its owner and its contacts see it; nobody finds it.
    let set_b = bob.json(&[
        "profile",
        "set",
        "--name",
        "Bob",
        "--capability",
        "code-review",
    ]);
    assert_eq!(get(&set_b[0], &["listed"]), &Value::Bool(false));
    assert_eq!(
        failure(&carol.run(&["--json", "profile", "show", "@bob"])),
        (Some(7), "not_found".into())
    );
    assert_eq!(
        found(&carol.json(&["find", "--capability", "code-review"])).0,
        [a.as_str()]
    );
    bob.json(&["contacts", "add", "@carol", "--level", "read"]);
    let v = &carol.json(&["profile", "show", "@bob"])[0];
    assert_eq!(
        (s(v, &["handle"]), get(v, &["verified"])),
        (b.as_str(), &Value::Bool(true))
    );
    assert_eq!(
        get(v, &["profile"]).as_object().unwrap().get("listed"),
        None
    );
    assert_eq!(
        found(&carol.json(&["find", "--capability", "code-review"])).0,
        [a.as_str()]
    );

    // Paging: one result per page, `next` to the following one; --all follows it.
    carol.json(&[
        "profile",
        "set",
        "--name",
        "Carol",
        "--capability",
        "code-review:rust",
        "--listed",
    ]);
    let p1 = alice.json(&["find", "--capability", "code-review", "--limit", "1"]);
    let (hs, last) = found(&p1);
    assert_eq!(hs, [a.as_str()]);
    let next = s(last, &["next"]).to_owned();
    let p2 = alice.json(&[
        "find",
        "--capability",
        "code-review",
        "--limit",
        "1",
        "--cursor",
        &next,
    ]);
    let (hs, last) = found(&p2);
    assert_eq!(hs, [c.as_str()]);
    assert_eq!(get(last, &["next"]), &Value::Null);
    let all = alice.json(&[
        "find",
        "--capability",
        "code-review",
        "--limit",
        "1",
        "--all",
    ]);
    let (hs, last) = found(&all);
    assert_eq!(hs, [a.as_str(), c.as_str()]);
    assert_eq!(get(last, &["next"]), &Value::Null);

    // Refused before anything is signed or sent: usage errors (exit 2), the relay's limits
    // (exit 3 with the code the relay would give).
    for args in [
        &["profile", "set", "--name", "x", "--capability", "Bad"][..],
        &["profile", "set", "--name", "x", "--capability", "a@"][..],
        &[
            "profile",
            "set",
            "--name",
            "x",
            "--capability",
            "a",
            "--capability",
            "a@2",
        ][..],
        &["profile", "set", "--name", ""][..],
        &["profile", "set", "--name", "x", "--accepts", "nonsense"][..],
        &["profile", "set", "--name", "x", "--ttl", "0s"][..],
        &["find", "--capability", "Bad"][..],
        &["find", "--text", ""][..],
        &["find", "--limit", "0"][..],
    ] {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        assert_eq!(
            failure(&alice.run(&all)),
            (Some(2), "keytool.usage".into()),
            "{args:?}"
        );
    }
    let out = alice.run(&["--json", "profile", "set", "--name", "x", "--ttl", "31d"]);
    assert_eq!(failure(&out), (Some(3), "invalid_field".into()));
    assert!(String::from_utf8_lossy(&out.stdout).contains("profile_ttl_ms_max"));
    let caps: Vec<String> = (0..17).map(|i| format!("c{i}")).collect();
    let mut args = vec!["--json", "profile", "set", "--name", "x"];
    for cap in &caps {
        args.extend(["--capability", cap.as_str()]);
    }
    assert_eq!(
        failure(&alice.run(&args)),
        (Some(3), "invalid_field".into())
    );
    // Alice's profile is still the one she set.
    let v = &alice.json(&["profile", "show"])[0];
    assert_eq!(int(v, &["profile", "seq"]), int(&again[0], &["seq"]));

    // An answer changed on its way: not shown, exit 4 with the signature's code.
    let proxy = altering_proxy(&relay.url, b"\"name\":\"Alice", b"\"name\":\"Malic");
    let out = run_at(&bob.home, &proxy, &["--json", "profile", "show", "@alice"]);
    assert_eq!(failure(&out), (Some(4), "bad_signature".into()));
    let out = run_at(&bob.home, &proxy, &["--json", "find", "--text", "alice"]);
    assert_eq!(failure(&out), (Some(4), "bad_signature".into()));
    let out = run_at(&bob.home, &proxy, &["profile", "show", "@alice"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Malic"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not verify"));

    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A proxy in front of `upstream` that replaces `from` by `to` (same length) in every answer:
/// one request per connection, `Connection: close` both ways.
fn altering_proxy(upstream: &str, from: &'static [u8], to: &'static [u8]) -> String {
    assert_eq!(from.len(), to.len());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let up = upstream.trim_start_matches("http://").to_owned();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let up = up.clone();
            std::thread::spawn(move || pass(conn, &up, from, to));
        }
    });
    url
}

fn pass(mut conn: TcpStream, up: &str, from: &[u8], to: &[u8]) -> std::io::Result<()> {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        req.extend_from_slice(&buf[..n]);
        if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&req[..head_end]).into_owned();
    let mut len = 0;
    let mut out_head = String::new();
    for (i, line) in head.split("\r\n").enumerate() {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        if name == "content-length" {
            len = line[15..].trim().parse().unwrap_or(0);
        }
        if i > 0 && (name == "connection" || line.is_empty()) {
            continue;
        }
        out_head.push_str(line);
        out_head.push_str("\r\n");
        if i == 0 {
            out_head.push_str("Connection: close\r\n");
        }
    }
    out_head.push_str("\r\n");
    while req.len() < head_end + len {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let mut upstream = TcpStream::connect(up)?;
    upstream.write_all(out_head.as_bytes())?;
    upstream.write_all(&req[head_end..])?;
    let mut resp = Vec::new();
    upstream.read_to_end(&mut resp)?;
    let mut i = 0;
    while i + from.len() <= resp.len() {
        if &resp[i..i + from.len()] == from {
            resp[i..i + from.len()].copy_from_slice(to);
        }
        i += 1;
    }
    conn.write_all(&resp)
}
