//! Federated directory search (SPEC.md PROF-11, FED-18) with three relay processes on loopback:
//! an agent on relay C finds listed agents on A and B by capability through C; an unlisted
//! agent on A never appears; a peer that does not answer (its process stopped with SIGSTOP, so
//! its socket accepts and nothing answers) yields a partial result within the deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/fed.rs"]
mod fed;
#[path = "common/process.rs"]
mod process;

use fed::*;
use formica_protocol::{Capability, Profile, Value};
use process::*;
use std::time::{Duration, Instant};

fn publish(r: &Node, p: &Peer, listed: bool) {
    let profile = Profile {
        handle: p.handle.clone(),
        key: p.key.public().key_id(),
        seq: 1,
        ts: now_ms(),
        expires: now_ms() + 3_600_000,
        name: format!("Agent {}", p.handle),
        description: Some("Reviews Rust code".into()),
        capabilities: vec![Capability {
            id: "code-review".into(),
            version: None,
            tags: vec!["rust".into()],
        }],
        accepts: Vec::new(),
        platform: None,
        model: None,
        listed,
    }
    .sign(&p.key)
    .unwrap();
    let (st, v) = p.authed(&r.proc_, "PUT", "/v1/profile", profile.wire());
    assert_eq!(st, 200, "{v:?}");
}

fn member<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.as_object().unwrap().get(k).unwrap()
}

fn found(v: &Value) -> Vec<String> {
    member(v, "results")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            member(member(r, "profile"), "handle")
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// (relay, status) of each relay of a federated answer.
fn relays(v: &Value) -> Vec<(String, String)> {
    member(v, "relays")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                member(r, "relay").as_str().unwrap().to_owned(),
                member(r, "status").as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn an_agent_finds_listed_agents_on_peers_and_a_silent_peer_gives_a_partial_answer() {
    let root = tempdir("search");
    let a = Node::start_with(&root, "a", 60_000, "");
    let b = Node::start_with(&root, "b", 60_000, "");
    let c = Node::start_with(&root, "c", 60_000, "");
    c.peer_with(&a);
    c.peer_with(&b);
    let alice = Peer::register(&a.proc_, "alice", 1);
    let anna = Peer::register(&a.proc_, "anna", 2);
    let bert = Peer::register(&b.proc_, "bert", 3);
    let carl = Peer::register(&c.proc_, "carl", 4);
    publish(&a, &alice, true);
    publish(&a, &anna, false);
    publish(&b, &bert, true);
    let path = "/v1/directory?capability=code-review&federated=1";
    let (st, v) = carl.authed(&c.proc_, "GET", path, b"");
    assert_eq!(st, 200, "{v:?}");
    // Peers' results come in the order of their hosts.
    let mut by_host = vec![
        (a.host(), alice.handle.to_string()),
        (b.host(), bert.handle.to_string()),
    ];
    by_host.sort();
    let want_found: Vec<String> = by_host.into_iter().map(|(_, h)| h).collect();
    assert_eq!(found(&v), want_found);
    assert_eq!(member(&v, "partial").as_bool(), Some(false));
    let mut want = vec![(a.host(), "ok".to_owned()), (b.host(), "ok".to_owned())];
    want.sort();
    want.insert(0, (c.host(), "ok".to_owned()));
    assert_eq!(relays(&v), want);
    // Each result verifies against the key log its searcher gets from its own relay.
    for r in member(&v, "results").as_array().unwrap() {
        let p = formica_protocol::SignedProfile::from_value(member(r, "profile").clone()).unwrap();
        let (st, log) = carl.authed(
            &c.proc_,
            "GET",
            &format!("/v1/keys/{}", p.profile().handle),
            b"",
        );
        assert_eq!(st, 200, "{log:?}");
        let key =
            formica_protocol::PublicKey::parse_hex(member(&log, "current_key").as_str().unwrap())
                .unwrap();
        p.verify(&key).unwrap();
    }
    // Text search reaches the peers too, and an unlisted agent never appears.
    let (_, v) = carl.authed(&c.proc_, "GET", "/v1/directory?text=RUST&federated=1", b"");
    assert!(!found(&v).contains(&anna.handle.to_string()), "{v:?}");
    assert_eq!(found(&v).len(), 2);
    // B stops answering: a partial answer, within the deadline (2 s by default).
    let pid = b.proc_.child.as_ref().unwrap().id();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let t = Instant::now();
    let (st, v) = carl.authed(&c.proc_, "GET", path, b"");
    let took = t.elapsed();
    signal("-CONT");
    assert_eq!(st, 200, "{v:?}");
    assert_eq!(found(&v), vec![alice.handle.to_string()]);
    assert_eq!(member(&v, "partial").as_bool(), Some(true));
    assert!(
        relays(&v).contains(&(b.host(), "timeout".to_owned())),
        "{v:?}"
    );
    assert!(took < Duration::from_secs(8), "the answer took {took:?}");
    // A federated search takes no cursor.
    let (st, v) = carl.authed(
        &c.proc_,
        "GET",
        &format!("{path}&cursor={}", carl.handle),
        b"",
    );
    assert_eq!(st, 400);
    let err = member(&v, "error");
    assert_eq!(member(err, "code").as_str(), Some("invalid_field"));
    assert_eq!(member(err, "field").as_str(), Some("cursor"));
}
