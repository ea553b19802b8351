//! keytool across two peered relays (real processes on loopback): resolving a remote handle
//! that never sent anything here; a remote send that the remote relay refuses fails with the
//! refusal's code (not "accepted"), and `status` names the reason; after a contact grant the
//! same send succeeds, sealed to the remote agent's encryption key, and says the remote relay
//! took it; `find --federated` finds a listed
//! profile on the peer, verified, and not an unlisted one; a conversation called from one relay
//! is answered and posted to from the other (sealed posts, opened on both sides), and both serve
//! the same entries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{get, lines, relay_bin, s, start_relay_named, Kt};
use std::path::Path;

fn fed_config(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("relay.toml");
    std::fs::write(
        &p,
        r#"
[federation]
enabled = true
scheme = "http"
peering = "open"
allow_private_peers = true
retry_base_ms = 50
retry_max_ms = 400
request_timeout_ms = 2000
"#,
    )
    .unwrap();
    p
}

#[test]
fn a_refused_remote_send_fails_with_its_code_and_resolve_fetches_remote_logs() {
    let dir = std::env::temp_dir().join(format!("formica-kt-fed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = fed_config(&dir);
    let ra = start_relay_named(&dir, "relay-a", Some(&config));
    let rb = start_relay_named(&dir, "relay-b", Some(&config));

    // The README's form: the data directory after the peer subcommand.
    let out = std::process::Command::new(relay_bin())
        .args(["peer", "add", &rb.url, "--data-dir"])
        .arg(&ra.data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "relay peer add: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let alice = Kt {
        home: dir.join("alice"),
        relay: &ra,
    };
    let nova = Kt {
        home: dir.join("nova"),
        relay: &rb,
    };
    alice.json(&["register", "@alice"]);
    let nova_handle = s(&nova.json(&["register", "@nova"])[0], &["handle"]).to_owned();

    // Resolving a remote handle works before any traffic: relay A fetches the log from B.
    // Two entries: the register entry and the encryption key register publishes.
    let resolved = alice.json(&["resolve", &nova_handle]);
    assert_eq!(get(&resolved[0], &["entries"]).as_i64(), Some(2));
    let nova_key = s(&nova.json(&["whoami"])[0], &["public_key"]).to_owned();
    assert_eq!(s(&resolved[0], &["current_key"]), nova_key);

    // Without a grant, B refuses: the send fails with not_contact (exit 3), not "accepted".
    let out = alice.run(&["--json", "send", &nova_handle, "hello"]);
    let v = lines(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{v:?}");
    assert_eq!(s(&v[0], &["error", "code"]), "not_contact");
    assert!(s(&v[0], &["error", "hint"]).contains("contact-request"));
    let id = s(&v[0], &["error", "id"]).to_owned();
    // status names the reason, in JSON and in text.
    let st = alice.json(&["status", &id]);
    let r = &get(&st[0], &["recipients"]).as_array().unwrap()[0];
    assert_eq!(s(r, &["status"]), "dead_lettered");
    assert_eq!(s(r, &["reason"]), "not_contact");
    let text = String::from_utf8_lossy(&alice.run(&["status", &id]).stdout).into_owned();
    assert!(text.contains("reason: not_contact"), "{text}");

    // The contact request says the relay accepted it and nobody has answered yet.
    let out = alice.run(&["contact-request", &nova_handle, "--level", "message"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("accepted by your relay") && text.contains("not answered yet"),
        "{text}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let req = loop {
        let reqs = nova.json(&["requests", "list"]);
        if let Some(r) = reqs.first() {
            break s(r, &["id"]).to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the contact request never reached nova"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    nova.json(&["requests", "accept", &req]);

    // Now the send succeeds and waits for B to take it. The grant travels to A as an
    // envelope, so B may still be catching up on the first try: retry a few times.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let sent = loop {
        let out = alice.run(&["--json", "send", &nova_handle, "hello again"]);
        if out.status.success() {
            break lines(&out.stdout);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let remote = get(&sent[0], &["remote"]).as_array().unwrap();
    assert!(
        ["forwarded", "delivered"].contains(&s(&remote[0], &["status"])),
        "{remote:?}"
    );
    // Sealed across relays: alice's relay fetched nova's key log (with her encryption key)
    // from B, and nova's inbox on B opens it.
    assert_eq!(get(&sent[0], &["sealed"]).as_bool(), Some(true), "{sent:?}");
    let sealed_id = s(&sent[0], &["id"]).to_owned();
    let inbox = nova.json(&["inbox"]);
    let it = inbox
        .iter()
        .find(|i| s(i, &["envelope", "id"]) == sealed_id)
        .unwrap_or_else(|| panic!("{sealed_id} not in {inbox:?}"));
    assert_eq!(get(it, &["sealed"]).as_bool(), Some(true), "{it:?}");
    assert_eq!(s(it, &["payload", "text"]), "hello again");
    assert!(get(it, &["envelope", "payload", "sealed"])
        .as_object()
        .is_some());
    // --no-wait returns at once, without the remote outcome.
    let quick = alice.json(&["send", &nova_handle, "no wait", "--no-wait"]);
    assert_eq!(s(&quick[0], &["result"]), "accepted");
    assert!(quick[0].as_object().unwrap().get("remote").is_none());

    // Federated search: nova lists a profile on B; alice finds it through A, verified against
    // the key log A fetches from B; an unlisted profile on B stays hidden.
    nova.json(&[
        "profile",
        "set",
        "--name",
        "Nova",
        "--capability",
        "code-review:rust",
        "--listed",
    ]);
    let found = alice.json(&["find", "--capability", "code-review", "--federated"]);
    let handles: Vec<&str> = found[..found.len() - 1]
        .iter()
        .map(|r| s(r, &["handle"]))
        .collect();
    assert_eq!(handles, vec![nova_handle.as_str()], "{found:?}");
    assert_eq!(get(&found[0], &["verified"]).as_bool(), Some(true));
    let last = found.last().unwrap();
    assert_eq!(get(last, &["partial"]).as_bool(), Some(false), "{last:?}");
    assert_eq!(get(last, &["relays"]).as_array().unwrap().len(), 2);
    // Without --federated, only A's own directory: nothing.
    let local = alice.json(&["find", "--capability", "code-review"]);
    assert_eq!(local.len(), 1, "{local:?}");
    nova.json(&[
        "profile",
        "set",
        "--name",
        "Nova",
        "--capability",
        "code-review:rust",
    ]);
    let hidden = alice.json(&["find", "--capability", "code-review", "--federated"]);
    assert_eq!(hidden.len(), 1, "{hidden:?}");
    // --federated takes no cursor.
    let out = alice.run(&["find", "--federated", "--cursor", "x"]);
    assert_eq!(out.status.code(), Some(2));

    // A conversation across the two relays: alice's relay is its home and numbers it; nova's
    // keeps a replica, where nova reads it and through which she answers and posts.
    let call = alice.json(&["call", &nova_handle, "--topic", "across", "--mode", "async"]);
    let conv = s(&call[0], &["conv"]).to_owned();
    let wait =
        |kt: &Kt, what: &str, ok: &dyn Fn(&[formica_protocol::Value]) -> bool, args: &[&str]| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let out = kt.run(args);
                if out.status.success() {
                    let v = lines(&out.stdout);
                    if ok(&v) {
                        return v;
                    }
                }
                assert!(std::time::Instant::now() < deadline, "never: {what}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        };
    let count = |n: i64| {
        move |v: &[formica_protocol::Value]| {
            v.last().and_then(|l| l.as_object()?.get("count")?.as_i64()) == Some(n)
        }
    };
    wait(
        &nova,
        "the call on nova's relay",
        &|v| {
            v.iter().any(|x| {
                x.as_object()
                    .and_then(|o| o.get("id"))
                    .and_then(|i| i.as_str())
                    == Some(conv.as_str())
            })
        },
        &["--json", "calls"],
    );
    // The accept goes to the home relay; keytool waits for it to come back to nova's replica,
    // so that nova can post at once.
    let acc = nova.json(&["accept", &conv]);
    assert_eq!(s(&acc[0], &["state"]), "active", "{acc:?}");
    wait(
        &alice,
        "nova's accept at the home relay",
        &count(2),
        &["--json", "conv", "history", &conv],
    );
    let sent = alice.json(&["conv", "send", &conv, "hello nova"]);
    assert_eq!(get(&sent[0], &["seq"]).as_i64(), Some(3), "{sent:?}");
    assert_eq!(get(&sent[0], &["sealed"]).as_bool(), Some(true), "{sent:?}");
    wait(
        &nova,
        "alice's post on nova's relay",
        &count(3),
        &["--json", "conv", "history", &conv],
    );
    // nova's post goes through her relay to the home relay, which gives it its seq later.
    let sent = nova.json(&["conv", "send", &conv, "hello alice"]);
    assert_eq!(
        get(&sent[0], &["seq"]),
        &formica_protocol::Value::Null,
        "{sent:?}"
    );
    let post_id = s(&sent[0], &["id"]).to_owned();
    assert_eq!(get(&sent[0], &["sealed"]).as_bool(), Some(true), "{sent:?}");
    let a = wait(
        &alice,
        "nova's post at the home relay",
        &count(4),
        &["--json", "conv", "history", &conv],
    );
    let b = wait(
        &nova,
        "nova's post back on her relay",
        &count(4),
        &["--json", "conv", "history", &conv],
    );
    assert_eq!(a, b, "the two relays serve different entries");
    let text = String::from_utf8_lossy(&nova.run(&["conv", "history", &conv]).stdout).into_owned();
    assert!(
        text.contains("hello alice  [sealed]")
            && text.contains("hello nova  [sealed]")
            && text.contains("hash chain checked"),
        "{text}"
    );
    let text = String::from_utf8_lossy(&alice.run(&["conv", "history", &conv]).stdout).into_owned();
    assert!(
        text.contains("hello alice  [sealed]") && text.contains("hello nova  [sealed]"),
        "{text}"
    );
    // Once back from the home relay, the post's status shows its place.
    let text = String::from_utf8_lossy(&nova.run(&["status", &post_id]).stdout).into_owned();
    assert!(text.contains("(entry #4)"), "{text}");

    drop(ra);
    drop(rb);
    let _ = std::fs::remove_dir_all(&dir);
}
