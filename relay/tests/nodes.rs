//! Several nodes of one relay on one shared store (`engine::nodes`), in process, on the
//! in-memory double of a shared store (`SharedMem`, which serialises turns and claims as
//! PostgreSQL does). The same behaviour on PostgreSQL with real processes is in
//! `pg_nodes.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use formica_relay::store::{SharedMem, Store};
use std::sync::Arc;
use std::time::Duration;

fn two_nodes() -> (TestRelay, TestRelay, Arc<SharedMem>) {
    two_nodes_with(config(4))
}

fn two_nodes_with(
    cfg: formica_relay::config::RelayConfig,
) -> (TestRelay, TestRelay, Arc<SharedMem>) {
    let first = Arc::new(SharedMem::new());
    let second = Arc::new(first.node());
    let a = TestRelay::on_store(cfg.clone(), first.clone() as Arc<dyn Store>);
    let b = TestRelay::on_store(cfg, second as Arc<dyn Store>);
    (a, b, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_serves_what_another_node_acknowledged() {
    let (n1, n2, _) = two_nodes();
    // Registered through the first node, known at once to the second (the request waits for
    // the second node to catch up with the log).
    let alice = n1.agent("alice").await;
    let bob = n2.agent("bob").await;
    bob.put_contact(&n1, &alice.handle, "task")
        .await
        .expect(200, "");
    let sent = alice
        .send(
            &n2,
            &alice.text(&n2, &bob.handle, "through the second node"),
        )
        .await;
    sent.expect(201, "");
    // Read through the first node: the inbox is in the shared tables.
    let items = bob.inbox(&n1, 0).await;
    assert_eq!(items.len(), 1);
    // More writes on both, interleaved: every one lands, in one unbroken chain (each
    // node checks the other's records from its own head before it writes: `EventLog::follow`).
    for i in 0..10 {
        let node = if i % 2 == 0 { &n1 } else { &n2 };
        alice
            .send(node, &alice.text(node, &bob.handle, &format!("m{i}")))
            .await
            .expect(201, "");
    }
    assert_eq!(bob.inbox(&n2, 0).await.len(), 11);
    let caught = |n: &TestRelay| {
        n.relay
            .app
            .engine
            .store_health
            .catch_ups
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert!(caught(&n1) >= 5 && caught(&n2) >= 5);
    assert_eq!(bob.inbox(&n1, 0).await.len(), 11);
}

/// Regression (review): a catch-up that failed after moving the log left the node believing
/// it had caught up; it then decided on a state without the other node's commits (a second
/// registration of a taken handle was accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_that_fails_is_done_again_before_anything_is_decided() {
    let first = Arc::new(SharedMem::new());
    let second = Arc::new(first.node());
    let n1 = TestRelay::on_store(config(4), first.clone() as Arc<dyn Store>);
    let n2 = TestRelay::on_store(config(4), second.clone() as Arc<dyn Store>);
    let _alice = n1.agent("alice").await;
    // The next read of a range on the second node fails: its catch-up (the journal's rows).
    second.fail_ranges(1);
    let ch = n2.post("/v1/challenges", &obj(vec![])).await;
    ch.expect(503, "unavailable");
    // The follower has the writer catch up again (the node answers unavailable meanwhile).
    n2.relay.spawn_background();
    let mut up = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if n2.get("/ready").await.status == 200 {
            up = true;
            break;
        }
    }
    assert!(up, "the node did not recover within 2.5 s");
    // Then: the second node knows alice, and refuses her handle to another key.
    let key = n2.fresh_key();
    let body = n2.register_body("alice", &key, None).await;
    let again = n2.post("/v1/register", &body).await;
    assert_eq!(again.status, 409, "{}", String::from_utf8_lossy(&again.raw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_replayed_to_another_node_is_refused() {
    let (n1, n2, _) = two_nodes();
    let alice = n1.agent("alice").await;
    let path = "/v1/inbox?after=0";
    let h = alice.auth(&n1, "GET", path, b"");
    let first = n1.call("GET", path, b"", &[(h.0, h.1.clone())]).await;
    first.expect(200, "");
    let replay = n2.call("GET", path, b"", &[(h.0, h.1)]).await;
    replay.expect(401, "nonce_reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_issued_by_one_node_registers_on_another_once() {
    let (n1, n2, _) = two_nodes();
    let key = n1.fresh_key();
    let body = n1.register_body("carol", &key, None).await;
    n2.post("/v1/register", &body).await.expect(201, "");
    // The same proof again, on either node: the challenge is used.
    let again = n1.post("/v1/register", &body).await;
    assert_eq!(again.status, 409, "{}", String::from_utf8_lossy(&again.raw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_of_another_node_that_expired_is_expired_not_unknown() {
    let mut cfg = config(4);
    cfg.policy.limits.challenge_ttl_ms = 1000;
    let (n1, n2, _) = two_nodes_with(cfg);
    let key = n1.fresh_key();
    let body = n1.register_body("dave", &key, None).await;
    n2.advance(1500);
    n2.post("/v1/register", &body)
        .await
        .expect(400, "challenge_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_out_of_reach_is_unavailable_and_the_nodes_recover_by_themselves() {
    let (n1, n2, store) = two_nodes();
    n1.relay.spawn_background();
    n2.relay.spawn_background();
    let (alice, bob) = n1.pair().await;
    store.set_down(true);
    let refused = alice
        .send(&n2, &alice.text(&n2, &bob.handle, "while down"))
        .await;
    refused.expect(503, "unavailable");
    // Both nodes notice within the follower's poll; operational endpoints still answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in [&n1, &n2] {
        n.get("/ready").await.expect(503, "unavailable");
        assert_eq!(n.get("/health").await.status, 200);
        n.get("/v1/inbox").await.expect(503, "unavailable");
    }
    store.set_down(false);
    let mut back = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if n1.get("/ready").await.status == 200 && n2.get("/ready").await.status == 200 {
            back = true;
            break;
        }
    }
    assert!(back, "the nodes did not take requests again within 5 s");
    alice
        .send(&n2, &alice.text(&n2, &bob.handle, "after"))
        .await
        .expect(201, "");
    let items = bob.inbox(&n1, 0).await;
    let texts: Vec<String> = items
        .iter()
        .map(|i| String::from_utf8_lossy(&formica_protocol::canon::canonicalize(i)).into_owned())
        .collect();
    assert_eq!(items.len(), 1, "{texts:?}");
    assert!(texts[0].contains("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_leads_and_another_takes_over_when_it_goes() {
    let (n1, n2, _) = two_nodes();
    n1.relay.spawn_background();
    tokio::time::sleep(Duration::from_millis(200)).await;
    n2.relay.spawn_background();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leads = |n: &TestRelay| n.relay.app.engine.store_health.leading();
    assert!(leads(&n1));
    assert!(!leads(&n2));
    // The first node stops: its tasks end and its handle on the store goes (a closed
    // connection, on PostgreSQL).
    n1.relay.app.engine.stopping.send_replace(true);
    drop(n1);
    let mut took = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if leads(&n2) {
            took = true;
            break;
        }
    }
    assert!(
        took,
        "the second node did not lead within 3 s of the first going"
    );
}

mod memory {
    //! What each node holds in memory after the other nodes' commits equals what a fresh load
    //! of the shared store gives: the journal names every row held in memory that a commit
    //! changed (`state::refresh`), for every kind of row.
    use super::*;
    use formica_protocol::envelope::*;
    use formica_protocol::profile::{Capability, Profile};
    use formica_protocol::{Availability, Handle, MessageType, Status};
    use formica_relay::engine::state::State;
    use std::sync::atomic::Ordering;

    fn profile(r: &TestRelay, a: &Agent, seq: i64, caps: &[&str]) -> Vec<u8> {
        Profile {
            handle: a.handle.clone(),
            key: a.key.public().key_id(),
            seq,
            ts: r.now(),
            expires: r.now() + 3_600_000,
            name: "An agent".into(),
            description: None,
            capabilities: caps
                .iter()
                .map(|c| Capability {
                    id: (*c).into(),
                    version: None,
                    tags: vec![],
                })
                .collect(),
            accepts: vec![MessageType::Message],
            platform: None,
            model: None,
            listed: true,
        }
        .sign(&a.key)
        .unwrap()
        .wire()
        .to_vec()
    }

    fn call(r: &TestRelay, from: &Agent, to: &[&Agent]) -> SignedEnvelope {
        let mut e = from.envelope(
            r,
            &to.iter().map(|a| &a.handle).collect::<Vec<_>>(),
            Payload::Call {
                topic: "shared".into(),
                mode: ConvMode::Live,
                participants: to
                    .iter()
                    .map(|a| Invitee {
                        handle: a.handle.clone(),
                        role: ConvRole::Member,
                    })
                    .collect(),
                turns: Some(5),
                expires: None,
            },
        );
        e.conv = None;
        e.sign(&from.key).unwrap()
    }

    fn in_conv(
        r: &TestRelay,
        from: &Agent,
        to: &Handle,
        conv: MessageId,
        p: Payload,
    ) -> SignedEnvelope {
        let mut e = from.envelope(r, &[to], p);
        e.conv = Some(conv);
        e.sign(&from.key).unwrap()
    }

    fn same_as_a_fresh_load(n: &TestRelay) {
        let store = n.relay.app.engine.store().clone();
        let fresh = State::load(n.host(), store).unwrap();
        let st = n.relay.app.engine.read();
        assert!(
            st.memory_eq(&fresh),
            "a node's memory differs from a fresh load"
        );
    }

    /// Waits (bounded) until every node's writer knows the store's last record.
    async fn settle(nodes: &[&TestRelay]) {
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            for n in nodes {
                n.relay.app.engine.sync_with_nodes().await.unwrap();
            }
            let len = nodes[0].relay.app.engine.store().len().unwrap();
            if nodes.iter().all(|n| {
                n.relay
                    .app
                    .engine
                    .store_health
                    .log_len
                    .load(Ordering::SeqCst)
                    == len
            }) {
                return;
            }
        }
        panic!("the nodes did not catch up with the store within 2 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_node_holds_what_a_fresh_load_gives_after_the_others_commits() {
        let (n1, n2, _) = two_nodes();
        let alice = n1.agent("alice").await;
        let bob = n2.agent("bob").await;
        let carol = n1.agent("carol").await;
        bob.put_contact(&n1, &alice.handle, "task")
            .await
            .expect(200, "");
        carol
            .put_contact(&n2, &alice.handle, "message")
            .await
            .expect(200, "");
        alice
            .authed(
                &n2,
                "PUT",
                "/v1/profile",
                &profile(&n2, &alice, 1, &["code.review"]),
            )
            .await
            .expect(200, "");
        alice
            .authed(
                &n1,
                "PUT",
                "/v1/profile",
                &profile(&n1, &alice, 2, &["code.write"]),
            )
            .await
            .expect(200, "");
        let status = Status {
            handle: alice.handle.clone(),
            key: alice.key.public().key_id(),
            ts: n1.now(),
            expires: n1.now() + 600_000,
            status: Availability::Busy,
            note: None,
        }
        .sign(&alice.key)
        .unwrap();
        alice
            .authed(&n1, "PUT", "/v1/presence", status.wire())
            .await
            .expect(200, "");
        let c = call(&n2, &alice, &[&bob, &carol]);
        alice.send(&n2, &c).await.expect(201, "");
        let id = c.id();
        let accept = Payload::ConvAction {
            action: ConvActionKind::Accept,
            reason: None,
            participants: None,
        };
        bob.send(&n1, &in_conv(&n1, &bob, &alice.handle, id, accept))
            .await
            .expect(201, "");
        let post = Payload::Message {
            text: "hello both".into(),
            data: None,
        };
        alice
            .send(&n2, &in_conv(&n2, &alice, &bob.handle, id, post))
            .await
            .expect(201, "");
        alice
            .send(&n1, &alice.text(&n1, &bob.handle, "plain"))
            .await
            .expect(201, "");
        // Bob reads through the second node (its cursors, the hot row), then each node
        // catches up once more.
        assert_eq!(bob.inbox(&n2, 0).await.len(), 3);
        let _ = carol.inbox(&n1, 0).await;
        let _ = carol.inbox(&n2, 0).await;
        // A read is recorded after its answer (`Command::Read`, in the background): once
        // nothing more is written, both nodes catch up with the last record.
        settle(&[&n1, &n2]).await;
        same_as_a_fresh_load(&n1);
        same_as_a_fresh_load(&n2);
        for n in [&n1, &n2] {
            let h = &n.relay.app.engine.store_health;
            let (all, full) = (
                h.catch_ups.load(Ordering::SeqCst),
                h.full_loads.load(Ordering::SeqCst),
            );
            assert!(all >= 4 && full == 0, "catch-ups {all}, whole loads {full}");
        }
    }
}
