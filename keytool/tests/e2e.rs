//! End-to-end: the real `keytool` binary against a real relay process on loopback. Two agents
//! register, one asks the other for contact, the other accepts; a message with an ack deadline
//! is received through `watch`, acked, and `status` shows it acked; a second message is left
//! unacked and `status` shows it timed out; `--json` output is parsed throughout; a key file
//! with mode 0644 is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{get, lines, s, start_relay, status_of, Kt};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

#[test]
fn two_agents_make_contact_exchange_an_acked_message_and_see_a_timeout() {
    let dir = std::env::temp_dir().join(format!("formica-kt-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let relay = start_relay(&dir);
    let alice = Kt {
        home: dir.join("alice"),
        relay: &relay,
    };
    let bob = Kt {
        home: dir.join("bob"),
        relay: &relay,
    };

    let reg = alice.json(&["register", "@alice"]);
    let alice_handle = s(&reg[0], &["handle"]).to_owned();
    assert!(alice_handle.starts_with("@alice@127.0.0.1:"));
    bob.json(&["register", "@bob"]);

    // A stranger cannot message bob: exit 3 with the protocol's code in the JSON error.
    let out = alice.run(&["--json", "send", "@bob", "too early"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(s(&lines(&out.stdout)[0], &["error", "code"]), "not_contact");

    alice.json(&[
        "contact-request",
        "@bob",
        "--level",
        "message",
        "--note",
        "hi",
    ]);
    let reqs = bob.json(&["requests", "list"]);
    assert_eq!(reqs.len(), 1);
    assert_eq!(s(&reqs[0], &["from"]), alice_handle);
    let req_id = s(&reqs[0], &["id"]).to_owned();
    bob.json(&["requests", "accept", &req_id]);

    let sent = alice.json(&["send", "@bob", "please ack", "--ack-deadline", "60s"]);
    let msg_id = s(&sent[0], &["id"]).to_owned();
    assert_eq!(s(&sent[0], &["result"]), "accepted");

    // watch prints one JSON line per item: the contact request, then the message.
    let watched = bob.json(&["watch", "--count", "2", "--timeout", "30s"]);
    assert_eq!(watched.len(), 2);
    assert_eq!(s(&watched[0], &["cursor"]), "1");
    assert_eq!(s(&watched[1], &["envelope", "id"]), msg_id);
    // Sealed by default (both published encryption keys at registration), opened by watch.
    assert_eq!(s(&watched[1], &["payload", "text"]), "please ack");
    assert_eq!(get(&watched[1], &["sealed"]).as_bool(), Some(true));

    bob.json(&["ack", &msg_id, "--status", "processed"]);
    assert_eq!(status_of(&alice, &msg_id), "acked");

    // A message nobody acks times out; the deadline check runs every 250 ms.
    let sent2 = alice.json(&["send", "@bob", "no ack for this", "--ack-deadline", "1s"]);
    let id2 = s(&sent2[0], &["id"]).to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = status_of(&alice, &id2);
        if st == "timed_out" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {st} long after the deadline"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Bob's readable inbox says which acks are settled, not "ack by" on all of them.
    let text = String::from_utf8_lossy(&bob.run(&["inbox"]).stdout).into_owned();
    let line_of = |id: &str| {
        text.lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("{id} not in {text}"))
            .to_owned()
    };
    assert!(line_of(&msg_id).ends_with("[acked]"), "{text}");
    assert!(
        line_of(&id2).contains("[ack deadline") && line_of(&id2).ends_with("passed]"),
        "{text}"
    );
    // Alice's inbox has bob's ack and the relay's receipts, including timed_out.
    let inbox = alice.json(&["inbox"]);
    let statuses: Vec<String> = inbox
        .iter()
        .filter(|i| s(i, &["envelope", "type"]) == "receipt")
        .map(|i| s(i, &["envelope", "payload", "status"]).to_owned())
        .collect();
    assert!(
        statuses.contains(&"acked".to_owned()) && statuses.contains(&"timed_out".to_owned()),
        "{statuses:?}"
    );
    assert!(inbox.iter().any(|i| s(i, &["envelope", "type"]) == "ack"));

    // A key file that others can read is refused, with the fix in the message.
    let key_file = alice.home.join("identities").join("default.json");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = alice.run(&["whoami"]);
    assert_eq!(out.status.code(), Some(9));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(alice.run(&["whoami"]).status.success());

    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every key change keytool makes proves possession of the keys it introduces (SPEC.md LOG-2):
/// the relay refuses a register naming a recovery key without `recovery_sig`, and a rotate or
/// recover without `key_sig`, so each step below is accepted only with its proofs, and the log
/// `resolve` verifies from its first entry ends at the keys the identity holds.
#[test]
fn register_rotate_revoke_and_recover_carry_their_proofs_of_possession() {
    let dir = std::env::temp_dir().join(format!("formica-kt-pop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let relay = start_relay(&dir);
    let carol = Kt {
        home: dir.join("carol"),
        relay: &relay,
    };
    // Entry 1 is the encryption key register publishes; then rotate, revoke, recover (which
    // publishes the next encryption key, entry 5), rotate.
    let reg = carol.json(&["register", "@carol", "--recovery"]);
    let first_recovery = s(&reg[0], &["recovery_key_id"]).to_owned();
    let rotated = carol.json(&["rotate"]);
    assert_eq!(get(&rotated[0], &["seq"]).as_i64(), Some(2));
    carol.json(&["revoke", "--with-recovery"]);
    let recovered = carol.json(&["recover", "--new-recovery"]);
    let new_recovery = s(&recovered[0], &["recovery_key_id"]).to_owned();
    assert_ne!(new_recovery, first_recovery);
    assert!(
        get(&recovered[0], &["enc_key_id"]).as_str().is_some(),
        "recover publishes a new encryption key: {recovered:?}"
    );
    let rotated = carol.json(&["rotate"]);
    assert_eq!(get(&rotated[0], &["seq"]).as_i64(), Some(6));

    let handle = s(&reg[0], &["handle"]).to_owned();
    let resolved = carol.json(&["resolve", &handle]);
    assert_eq!(get(&resolved[0], &["entries"]).as_i64(), Some(7));
    let me = carol.json(&["whoami"]);
    assert_eq!(
        s(&resolved[0], &["current_key"]),
        s(&me[0], &["public_key"])
    );
    let recovery_key =
        formica_protocol::PublicKey::parse_hex(s(&resolved[0], &["recovery_key"])).unwrap();
    assert_eq!(recovery_key.key_id().to_hex(), new_recovery);

    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression: under --json, usage errors printed clap's text, and network (exit 6) and key
/// file (exit 9) failures had no `code`. Every failure is now one JSON line with `ok: false`
/// and an `error.code`, a keytool code where no protocol code applies.
#[test]
fn every_json_failure_is_one_json_line_with_a_code() {
    let home = std::env::temp_dir().join(format!("formica-kt-json-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let kt = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keytool"))
            .arg("--home")
            .arg(&home)
            .args(args)
            .output()
            .unwrap()
    };
    for (args, exit, code) in [
        (&["--json", "send"][..], 2, "keytool.usage"),
        (&["--json", "no-such-command"][..], 2, "keytool.usage"),
        (&["send", "--json", "--limit", "3"][..], 2, "keytool.usage"),
        (&["--json", "whoami"][..], 9, "keytool.key_file"),
        // Text and a payload file: the text is not taken for a recipient.
        (
            &[
                "--json",
                "send",
                "@bob",
                "t",
                "--type",
                "message",
                "--payload",
                "/dev/null",
            ][..],
            3,
            "keytool.input",
        ),
        (
            &["--json", "--relay", "http://127.0.0.1:1", "resolve", "@x"][..],
            6,
            "keytool.network",
        ),
    ] {
        let out = kt(args);
        assert_eq!(out.status.code(), Some(exit), "{args:?}");
        let v = lines(&out.stdout);
        assert_eq!(v.len(), 1, "{args:?}: {v:?}");
        assert_eq!(get(&v[0], &["ok"]), &formica_protocol::Value::Bool(false));
        assert_eq!(s(&v[0], &["error", "code"]), code, "{args:?}");
        assert!(!s(&v[0], &["error", "message"]).is_empty());
    }
    // Help is still help.
    let out = kt(&["--json", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn a_request_answering_a_request_gets_at_most_its_deadline() {
    let dir = std::env::temp_dir().join(format!("formica-kt-cascade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let relay = start_relay(&dir);
    let kt = |n: &str| Kt {
        home: dir.join(n),
        relay: &relay,
    };
    let (a, b, c) = (kt("a"), kt("b"), kt("c"));
    a.json(&["register", "@casa"]);
    b.json(&["register", "@casb"]);
    c.json(&["register", "@casc"]);
    b.json(&["contacts", "add", "@casa", "--level", "task"]);
    c.json(&["contacts", "add", "@casb", "--level", "task"]);
    let payload = dir.join("task.json");
    std::fs::write(&payload, br#"{"task":"review","input":"PR 7"}"#).unwrap();
    let p = payload.to_str().unwrap();
    let parent = a.json(&[
        "send",
        "@casb",
        "--type",
        "task_request",
        "--payload",
        p,
        "--ack-deadline",
        "1m",
    ]);
    let parent_id = s(&parent[0], &["id"]).to_owned();
    let limit = get(&parent[0], &["ack_by"]).as_i64().unwrap();
    // Asking for more time than the parent has fails with --no-shorten ...
    let out = b.run(&[
        "--json",
        "send",
        "@casc",
        "--type",
        "task_request",
        "--payload",
        p,
        "--corr",
        &parent_id,
        "--ack-deadline",
        "1h",
        "--no-shorten",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = &lines(&out.stdout)[0];
    assert_eq!(s(err, &["error", "code"]), "deadline_after_parent");
    assert_eq!(get(err, &["error", "ack_by_max"]).as_i64(), Some(limit));
    // ... and is shortened to the parent's deadline by default, saying so.
    let child = b.json(&[
        "send",
        "@casc",
        "--type",
        "task_request",
        "--payload",
        p,
        "--corr",
        &parent_id,
        "--ack-deadline",
        "1h",
    ]);
    assert_eq!(s(&child[0], &["result"]), "accepted");
    assert_eq!(get(&child[0], &["ack_by"]).as_i64(), Some(limit));
    assert!(get(&child[0], &["ack_by_asked"]).as_i64().unwrap() > limit);
    let _ = std::fs::remove_dir_all(&dir);
}
