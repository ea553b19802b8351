//! Conversations end to end (SPEC.md section 19): the real `keytool` binary against a real
//! relay on loopback. Three agents register and grant the caller the contact level `message`;
//! the caller calls two, one accepts and one declines; posts go both ways; `conv history`
//! shows a gap-free hash chain from entry 1; `conv watch` stops at `--count` and ends by itself
//! once the conversation is closed; leaving closes it (`everyone_left`); refusals carry the
//! relay's code and keytool's exit code; `--json` output is parsed throughout. A second test
//! drives the MCP tools of conversations over stdio.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{get, lines, s, start_relay, Kt, Relay};
use formica_protocol::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("formica-kt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn agent<'a>(d: &std::path::Path, relay: &'a Relay, name: &str) -> (Kt<'a>, String) {
    let kt = Kt {
        home: d.join(name),
        relay,
    };
    let reg = kt.json(&["register", &format!("@{name}")]);
    let h = s(&reg[0], &["handle"]).to_owned();
    (kt, h)
}

fn int(v: &Value, path: &[&str]) -> i64 {
    get(v, path)
        .as_i64()
        .unwrap_or_else(|| panic!("{path:?} is not an integer in {v:?}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The exit code and the JSON error code of a failed `--json` run.
fn failure(o: &Output) -> (Option<i32>, String) {
    let l = lines(&o.stdout);
    assert_eq!(l.len(), 1, "{}", text(o));
    assert_eq!(get(&l[0], &["ok"]), &Value::Bool(false));
    (o.status.code(), s(&l[0], &["error", "code"]).to_owned())
}

/// The entries of a `--json` listing (the lines before the trailer `{"ok":true,...}`).
fn entries(out: &[Value]) -> Vec<Value> {
    out.iter()
        .filter(|v| v.as_object().is_some_and(|o| o.get("ok").is_none()))
        .cloned()
        .collect()
}

/// Entry n+1's prev is entry n's hash; entry 1's is 64 zeros; seqs count from `first`.
fn assert_chain(es: &[Value], first: i64) {
    for (i, e) in es.iter().enumerate() {
        assert_eq!(int(e, &["seq"]), first + i as i64, "{es:?}");
        if i == 0 && first == 1 {
            assert_eq!(s(e, &["prev"]), "0".repeat(64));
        }
        if i > 0 {
            assert_eq!(s(e, &["prev"]), s(&es[i - 1], &["hash"]));
        }
    }
}

#[test]
fn three_agents_call_answer_talk_read_the_chain_and_leave() {
    let d = dir("conv");
    let relay = start_relay(&d);
    let (nova, nova_h) = agent(&d, &relay, "nova");
    let (sage, sage_h) = agent(&d, &relay, "sage");
    let (iris, iris_h) = agent(&d, &relay, "iris");
    let (zed, _) = agent(&d, &relay, "zed");

    // Without a grant the call is refused with the relay's code (exit 3).
    let out = nova.run(&["--json", "call", "@sage", "--topic", "too early"]);
    assert_eq!(failure(&out), (Some(3), "not_contact".into()));

    for kt in [&sage, &iris] {
        kt.json(&["contacts", "add", "@nova", "--level", "message"]);
    }
    // An invitee on a relay that is not a peer of nova's: the relay's unknown_recipient.
    let out = nova.run(&["--json", "call", "@sage@relay-z.example", "--topic", "x"]);
    assert_eq!(failure(&out), (Some(7), "unknown_recipient".into()));

    let call = nova
        .json(&[
            "call",
            "@sage",
            "@iris",
            "--topic",
            "review PR 42",
            "--mode",
            "async",
            "--turns",
            "10",
            "--expires",
            "2h",
        ])
        .remove(0);
    let conv = s(&call, &["conv"]).to_owned();
    assert_eq!(s(&call, &["id"]), conv);
    assert_eq!(
        (s(&call, &["type"]), s(&call, &["result"])),
        ("call", "accepted")
    );
    assert_eq!(int(&call, &["seq"]), 1);
    assert_eq!(int(&call, &["turns"]), 10);
    let ps = get(&call, &["participants"]).as_array().unwrap();
    assert_eq!(s(&ps[0], &["handle"]), sage_h);
    assert_eq!(s(&ps[1], &["role"]), "member");

    // Both see the call waiting for them; the caller does not.
    for kt in [&sage, &iris] {
        let out = kt.json(&["calls"]);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(s(&out[0], &["id"]), conv);
        assert_eq!(s(&out[0], &["topic"]), "review PR 42");
        assert_eq!(int(&out[1], &["count"]), 1);
    }
    assert_eq!(int(&nova.json(&["calls"])[0], &["count"]), 0);
    let listing = text(&sage.run(&["calls"]));
    assert!(
        listing.contains(&format!("keytool accept {conv}")) && listing.contains("@nova"),
        "{listing}"
    );

    // A stranger to the conversation sees nothing of it (exit 7).
    let out = zed.run(&["--json", "conv", "history", &conv]);
    assert_eq!(failure(&out), (Some(7), "not_found".into()));

    // Not joined yet: nothing to post (exit 7), and the hint says how to join.
    let out = sage.run(&["--json", "conv", "send", &conv, "early"]);
    assert_eq!(failure(&out), (Some(7), "not_participant".into()));
    assert!(text(&out).contains("keytool accept"), "{}", text(&out));

    let acc = sage.json(&["accept", &conv]).remove(0);
    assert_eq!(
        (s(&acc, &["action"]), s(&acc, &["conv"])),
        ("accept", conv.as_str())
    );
    assert_eq!(int(&acc, &["seq"]), 2);
    assert_eq!(s(&acc, &["state"]), "active");
    let dec = iris
        .json(&["decline", &conv, "--reason", "busy elsewhere"])
        .remove(0);
    assert_eq!(int(&dec, &["seq"]), 3);
    assert_eq!(int(&iris.json(&["calls"])[0], &["count"]), 0);
    // Answering twice does not apply (exit 8).
    let out = sage.run(&["--json", "accept", &conv]);
    assert_eq!(failure(&out), (Some(8), "action_not_allowed".into()));

    // Posts both ways: to every other joined participant by default.
    let p1 = nova.json(&["conv", "send", &conv, "hello sage"]).remove(0);
    assert_eq!(int(&p1, &["seq"]), 4);
    assert_eq!(
        get(&p1, &["to"]).as_array().unwrap(),
        &[Value::from(sage_h.as_str())]
    );
    let p2 = sage
        .json(&["conv", "send", &conv, "hi nova", "--ack-deadline", "60s"])
        .remove(0);
    assert_eq!(int(&p2, &["seq"]), 5);
    assert!(int(&p2, &["ack_by"]) > 0);
    // The post is also an ordinary inbox item of its recipient.
    let inbox = nova.json(&["inbox"]);
    assert!(inbox
        .iter()
        .any(|i| s(i, &["envelope", "id"]) == s(&p2, &["id"])));
    // Who declined posts nothing (not a participant in a state that allows it: exit 7).
    let out = iris.run(&["--json", "conv", "send", &conv, "me too"]);
    assert_eq!(failure(&out), (Some(7), "not_participant".into()));

    // History: five entries, gap-free and linked, then the trailer.
    let h = nova.json(&["conv", "history", &conv]);
    let es = entries(&h);
    assert_eq!(es.len(), 5, "{h:?}");
    assert_chain(&es, 1);
    let last = h.last().unwrap();
    assert_eq!(int(last, &["count"]), 5);
    assert_eq!(int(last, &["next"]), 5);
    assert_eq!(s(last, &["head"]), s(&es[4], &["hash"]));
    assert_eq!(s(&es[0], &["envelope", "type"]), "call");
    // Posts are sealed (every agent here published an encryption key) and read opened.
    assert_eq!(s(&es[3], &["payload", "text"]), "hello sage");
    assert_eq!(get(&es[3], &["sealed"]).as_bool(), Some(true));
    let readable = text(&nova.run(&["conv", "history", &conv]));
    for want in [
        "#1 @nova called @sage, @iris: \"review PR 42\" [async]",
        "#2 @sage accepted",
        "#3 @iris declined: busy elsewhere",
        "#4 @nova: hello sage  [sealed]",
        "#5 @sage: hi nova  [sealed]  [ack by",
        "(5 entries, hash chain checked from entry #1)",
    ] {
        assert!(readable.contains(want), "{want:?} not in {readable}");
    }
    // Paging: after 2, at most 2.
    let page = entries(&nova.json(&["conv", "history", &conv, "--after", "2", "--limit", "2"]));
    assert_eq!(page.len(), 2);
    assert_chain(&page, 3);
    // Who declined reads up to and including its decline (CONVO-10).
    let theirs = entries(&iris.json(&["conv", "history", &conv]));
    assert_eq!(theirs.len(), 3, "{theirs:?}");

    // watch: from the start, stops at --count; resumed after a seq.
    let w = sage.json(&["conv", "watch", &conv, "--count", "5", "--timeout", "30s"]);
    assert_eq!(w.len(), 5);
    assert_chain(&w, 1);
    let w = sage.json(&[
        "conv",
        "watch",
        &conv,
        "--after",
        "3",
        "--count",
        "2",
        "--timeout",
        "30s",
    ]);
    assert_eq!(
        w.iter().map(|e| int(e, &["seq"])).collect::<Vec<_>>(),
        [4, 5]
    );
    // Nothing new: --timeout ends it quietly.
    let started = Instant::now();
    let w = sage.json(&["conv", "watch", &conv, "--after", "5", "--timeout", "1s"]);
    assert!(w.is_empty() && started.elapsed() < Duration::from_secs(20));

    let open = nova.json(&["conv", "list"]);
    assert_eq!(open.len(), 2, "{open:?}");
    assert_eq!(s(&open[0], &["state"]), "active");
    assert_eq!(int(&open[0], &["seq"]), 5);
    let owner = &get(&open[0], &["participants"]).as_array().unwrap()[0];
    assert_eq!(
        (s(owner, &["handle"]), s(owner, &["role"])),
        (nova_h.as_str(), "owner")
    );

    // sage leaves: only nova remains (iris declined), so it closes with everyone_left.
    let left = sage
        .json(&["conv", "leave", &conv, "--reason", "done"])
        .remove(0);
    assert_eq!(int(&left, &["seq"]), 6);
    assert_eq!(
        (s(&left, &["state"]), s(&left, &["reason"])),
        ("closed", "everyone_left")
    );
    let out = nova.run(&["--json", "conv", "send", &conv, "anyone?"]);
    assert_eq!(failure(&out), (Some(8), "conversation_closed".into()));

    // A watch of a closed conversation ends by itself after its last entry.
    let started = Instant::now();
    let w = nova.json(&["conv", "watch", &conv, "--after", "4", "--timeout", "60s"]);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_chain(&w, 5);
    assert_eq!(w.len(), 3, "{w:?}");
    assert_eq!(s(&w[1], &["envelope", "payload", "action"]), "leave");
    assert_eq!(s(&w[2], &["event", "kind"]), "closed");
    assert_eq!(s(&w[2], &["event", "reason"]), "everyone_left");
    let readable = text(&nova.run(&["conv", "history", &conv, "--after", "5"]));
    assert!(readable.contains("#6 @sage left: done"), "{readable}");
    assert!(
        readable.contains("#7 (event) the conversation closed: everyone_left"),
        "{readable}"
    );

    assert_eq!(int(&nova.json(&["conv", "list"])[0], &["count"]), 0);
    let all = nova.json(&["conv", "list", "--all"]);
    assert_eq!(all.len(), 2);
    assert_eq!(
        (s(&all[0], &["state"]), s(&all[0], &["reason"])),
        ("closed", "everyone_left")
    );

    // A second conversation: the owner invites an observer, then closes it.
    let c2 = nova
        .json(&["call", "@sage", "--topic", "follow-up", "--mode", "async"])
        .remove(0);
    let conv2 = s(&c2, &["conv"]).to_owned();
    let inv = nova
        .json(&["conv", "invite", &conv2, "@iris", "--observer"])
        .remove(0);
    assert_eq!(s(&inv, &["action"]), "invite");
    assert_eq!(int(&inv, &["seq"]), 2);
    let sum = &iris.json(&["calls"])[0];
    let role = get(sum, &["participants"])
        .as_array()
        .unwrap()
        .iter()
        .find(|p| s(p, &["handle"]) == iris_h)
        .map(|p| s(p, &["role"]).to_owned());
    assert_eq!(role.as_deref(), Some("observer"));
    // Only the owner closes.
    let out = sage.run(&["--json", "conv", "close", &conv2]);
    assert_eq!(failure(&out).0, Some(8));
    let closed = nova
        .json(&["conv", "close", &conv2, "--reason", "not needed"])
        .remove(0);
    assert_eq!(
        (s(&closed, &["state"]), s(&closed, &["reason"])),
        ("closed", "closed_by_owner")
    );

    drop(relay);
    let _ = std::fs::remove_dir_all(&d);
}

/// A `keytool mcp` server over stdio, spoken to line by line.
struct Mcp {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    next_id: i64,
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mcp {
    fn start(kt: &Kt<'_>) -> Mcp {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keytool"))
            .arg("--home")
            .arg(&kt.home)
            .args(["--relay", &kt.relay.url, "mcp"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        let mut m = Mcp {
            child,
            input,
            output,
            next_id: 1,
        };
        m.request(
            "initialize",
            serde_json::json!({"protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "conversations-test", "version": "1"}}),
        );
        m.send(&serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        m
    }

    fn send(&mut self, v: &serde_json::Value) {
        let mut line = serde_json::to_vec(v).unwrap();
        line.push(b'\n');
        self.input.write_all(&line).unwrap();
        self.input.flush().unwrap();
    }

    /// Sends a request and returns its id, without waiting for the answer.
    fn start_request(&mut self, method: &str, params: serde_json::Value) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(
            &serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        );
        id
    }

    fn answer(&mut self, id: i64) -> serde_json::Value {
        loop {
            let mut line = String::new();
            assert!(
                self.output.read_line(&mut line).unwrap() > 0,
                "the server ended"
            );
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{v}");
                return v["result"].clone();
            }
        }
    }

    fn request(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.start_request(method, params);
        self.answer(id)
    }

    /// A tool's structured result, and whether it is an error.
    fn tool(&mut self, name: &str, args: serde_json::Value) -> (serde_json::Value, bool) {
        let r = self.request(
            "tools/call",
            serde_json::json!({"name": name, "arguments": args}),
        );
        (
            r["structuredContent"].clone(),
            r["isError"].as_bool().unwrap_or(false),
        )
    }

    fn ok(&mut self, name: &str, args: serde_json::Value) -> serde_json::Value {
        let (v, err) = self.tool(name, args);
        assert!(!err, "{name}: {v}");
        v
    }
}

#[test]
fn the_mcp_tools_call_answer_talk_wait_and_leave() {
    let d = dir("conv-mcp");
    let relay = start_relay(&d);
    let (nova, _) = agent(&d, &relay, "nova");
    let (sage, _) = agent(&d, &relay, "sage");
    sage.json(&["contacts", "add", "@nova", "--level", "message"]);
    let mut a = Mcp::start(&nova);
    let mut b = Mcp::start(&sage);

    let tools = a.request("tools/list", serde_json::json!({}));
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for want in [
        "call",
        "calls",
        "accept",
        "decline",
        "conversation_send",
        "conversation_history",
        "conversation_leave",
        "conversation_close",
        "conversation_list",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }

    let call = a.ok(
        "call",
        serde_json::json!({"to": ["@sage"], "topic": "plan the release", "mode": "async"}),
    );
    let conv = call["conv"].as_str().unwrap().to_owned();
    assert_eq!(call["seq"], 1);
    let calls = b.ok("calls", serde_json::json!({}));
    assert_eq!(calls["count"], 1);
    assert_eq!(calls["calls"][0]["id"], conv.as_str());
    let (e, err) = b.tool(
        "accept",
        serde_json::json!({"id": conv, "reason": "a reason goes with decline only"}),
    );
    assert!(err && e["error"]["code"] == "keytool.input", "{e}");
    let acc = b.ok("accept", serde_json::json!({"id": conv}));
    assert_eq!(
        (acc["seq"].as_i64(), acc["state"].as_str()),
        (Some(2), Some("active"))
    );

    let sent = a.ok(
        "conversation_send",
        serde_json::json!({"id": conv, "text": "first draft?"}),
    );
    assert_eq!(sent["seq"], 3);
    // The conversation is a resource too: each read returns what the previous did not.
    let t = b.request("resources/templates/list", serde_json::json!({}));
    assert_eq!(
        t["resourceTemplates"][0]["uriTemplate"], "formica://conversations/{id}",
        "{t}"
    );
    let uri = format!("formica://conversations/{conv}");
    let read = |m: &mut Mcp| -> serde_json::Value {
        let r = m.request("resources/read", serde_json::json!({"uri": uri}));
        serde_json::from_str(r["contents"][0]["text"].as_str().unwrap()).unwrap()
    };
    let first = read(&mut b);
    assert_eq!(first["entries"].as_array().unwrap().len(), 3, "{first}");
    let again = read(&mut b);
    assert_eq!(
        (
            again["entries"].as_array().unwrap().len(),
            again["next"].as_i64()
        ),
        (0, Some(3)),
        "{again}"
    );
    let r = b.ok("conversation_history", serde_json::json!({"id": conv}));
    assert_eq!(r["entries"].as_array().unwrap().len(), 3);
    assert_eq!(
        (r["next"].as_i64(), r["state"].as_str()),
        (Some(3), Some("active"))
    );
    assert_eq!(r["entries"][2]["payload"]["text"], "first draft?");
    assert_eq!(r["entries"][2]["sealed"], true);
    let r = b.ok(
        "conversation_history",
        serde_json::json!({"id": conv, "after": 3, "wait": 1}),
    );
    assert_eq!(
        (
            r["entries"].as_array().unwrap().len(),
            r["timed_out"].as_bool()
        ),
        (0, Some(true))
    );

    // A read that waits is woken by the next post.
    let waiting = b.start_request(
        "tools/call",
        serde_json::json!({"name": "conversation_history", "arguments": {"id": conv, "after": 3, "wait": 30}}),
    );
    std::thread::sleep(Duration::from_millis(500));
    a.ok(
        "conversation_send",
        serde_json::json!({"id": conv, "text": "here it is"}),
    );
    let r = b.answer(waiting)["structuredContent"].clone();
    assert_eq!(r["entries"][0]["seq"], 4, "{r}");
    assert_eq!(r["entries"][0]["payload"]["text"], "here it is");
    assert_eq!(r["next"], 4);

    let list = a.ok("conversation_list", serde_json::json!({}));
    assert_eq!(list["count"], 1);
    assert_eq!(list["conversations"][0]["id"], conv.as_str());
    let left = b.ok(
        "conversation_leave",
        serde_json::json!({"id": conv, "reason": "done"}),
    );
    assert_eq!(
        (left["state"].as_str(), left["reason"].as_str()),
        (Some("closed"), Some("everyone_left"))
    );
    let (e, err) = a.tool("conversation_close", serde_json::json!({"id": conv}));
    assert!(err, "{e}");
    assert_eq!(e["error"]["code"], "conversation_closed");
    assert_eq!(e["exit"], 8);
    let all = a.ok("conversation_list", serde_json::json!({"all": true}));
    assert_eq!(all["conversations"][0]["state"], "closed");

    drop((a, b));
    drop(relay);
    let _ = std::fs::remove_dir_all(&d);
}

/// The entries of `conv` as `who` reads them, once `pred` holds for them (within 20 s).
fn history_until(who: &Kt<'_>, conv: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let es = entries(&who.json(&["conv", "history", conv]));
        if pred(&es) {
            return es;
        }
        assert!(Instant::now() < end, "still {es:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn event_kinds(es: &[Value]) -> Vec<String> {
    es.iter()
        .filter_map(|e| e.as_object()?.get("event"))
        .map(|ev| s(ev, &["kind"]).to_owned())
        .collect()
}

#[test]
fn live_calls_ring_out_busy_agents_decline_and_the_turn_limit_closes() {
    let d = dir("conv-live");
    let config = d.join("relay.toml");
    std::fs::write(
        &config,
        "[conversations]\nring_ms = 1000\nturns_max = 2\nparticipants_max = 3\n",
    )
    .unwrap();
    let relay = common::start_relay_named(&d, "relay-data", Some(&config));
    let (nova, _) = agent(&d, &relay, "nova");
    let (sage, _) = agent(&d, &relay, "sage");
    let (iris, _) = agent(&d, &relay, "iris");
    for kt in [&sage, &iris] {
        kt.json(&["contacts", "add", "@nova", "--level", "message"]);
    }

    // The relay's published limits are checked before anything is signed.
    let out = nova.run(&["--json", "call", "@sage", "@iris", "@zed", "--topic", "x"]);
    assert_eq!(failure(&out), (Some(3), "invalid_field".into()));
    let out = nova.run(&["--json", "call", "@sage", "--topic", "x", "--turns", "5"]);
    assert_eq!(failure(&out), (Some(3), "invalid_field".into()));

    // iris is busy: the relay declines a live call for her at once.
    iris.json(&["presence", "set", "busy", "--heartbeat"]);
    let call = nova
        .json(&["call", "@sage", "@iris", "--topic", "quick sync"])
        .remove(0);
    let conv = s(&call, &["conv"]).to_owned();
    // sage does not answer within ring_ms: missed, and the call still waits for him.
    let es = history_until(&nova, &conv, |es| {
        event_kinds(es).contains(&"missed".to_owned())
    });
    assert_eq!(event_kinds(&es), ["declined", "missed"], "{es:?}");
    let readable = text(&nova.run(&["conv", "history", &conv]));
    for want in [
        "#2 (event) @iris declined: busy (said by the relay)",
        "#3 (event) @sage missed the call",
    ] {
        assert!(readable.contains(want), "{want:?} not in {readable}");
    }
    let waiting = sage.json(&["calls"]);
    assert_eq!(s(&waiting[0], &["id"]), conv);
    assert_eq!(int(&sage.json(&["accept", &conv])[0], &["seq"]), 4);

    // Two posts reach the turn limit: the second closes the conversation right after it.
    nova.json(&["conv", "send", &conv, "one"]);
    let second = sage.json(&["conv", "send", &conv, "two"]).remove(0);
    assert_eq!(int(&second, &["seq"]), 6);
    let es = history_until(&nova, &conv, |es| es.len() == 7);
    assert_eq!(s(&es[6], &["event", "reason"]), "turn_limit");
    let out = nova.run(&["--json", "conv", "send", &conv, "three"]);
    assert_eq!(failure(&out), (Some(8), "turn_limit_reached".into()));
    let readable = text(&sage.run(&["conv", "watch", &conv, "--after", "5"]));
    assert!(
        readable.contains("#6 @sage: two")
            && readable.contains("#7 (event) the conversation closed: turn_limit"),
        "{readable}"
    );

    drop(relay);
    let _ = std::fs::remove_dir_all(&d);
}
