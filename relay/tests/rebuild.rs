//! Projections rebuilt from the log equal the ones maintained as entries were appended, over
//! random sequences of operations (registrations, contacts, messages, acks, reads, deadlines,
//! contact requests, key rotations), including the ones the relay refuses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use formica_protocol::canon;
use formica_protocol::envelope::*;
use formica_protocol::keylog::KeyOp;
use proptest::prelude::*;
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Op {
    Register(usize),
    Allow(usize, usize, u8),
    Remove(usize, usize),
    Send(usize, usize, bool),
    Ack(usize, u8),
    Read(usize),
    Advance(u16),
    Tick,
    Ask(usize, usize),
    Answer(usize, bool),
    Rotate(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let a = 0usize..4;
    prop_oneof![
        2 => a.clone().prop_map(Op::Register),
        2 => (a.clone(), a.clone(), 0u8..3).prop_map(|(x, y, l)| Op::Allow(x, y, l)),
        1 => (a.clone(), a.clone()).prop_map(|(x, y)| Op::Remove(x, y)),
        4 => (a.clone(), a.clone(), any::<bool>()).prop_map(|(x, y, k)| Op::Send(x, y, k)),
        2 => (a.clone(), 0u8..3).prop_map(|(x, s)| Op::Ack(x, s)),
        2 => a.clone().prop_map(Op::Read),
        1 => (0u16..5000).prop_map(Op::Advance),
        1 => Just(Op::Tick),
        1 => (a.clone(), a.clone()).prop_map(|(x, y)| Op::Ask(x, y)),
        1 => (a.clone(), any::<bool>()).prop_map(|(x, y)| Op::Answer(x, y)),
        1 => a.prop_map(Op::Rotate),
    ]
}

const NAMES: [&str; 4] = ["ann", "ben", "cat", "dan"];

async fn run(ops: Vec<Op>) {
    let r = TestRelay::new();
    let mut agents: Vec<Option<Agent>> = (0..4).map(|_| None).collect();
    let levels = ["read", "message", "task"];
    for op in ops {
        match op {
            Op::Register(i) => {
                if agents[i].is_none() {
                    agents[i] = Some(r.agent(NAMES[i]).await);
                }
            }
            Op::Allow(i, j, l) => {
                if let (Some(a), Some(b)) = (&agents[i], &agents[j]) {
                    a.put_contact(&r, &b.handle, levels[l as usize]).await;
                }
            }
            Op::Remove(i, j) => {
                if let (Some(a), Some(b)) = (&agents[i], &agents[j]) {
                    a.authed(&r, "DELETE", &format!("/v1/contacts/{}", b.handle), b"")
                        .await;
                }
            }
            Op::Send(i, j, ack) => {
                if let (Some(a), Some(b)) = (&agents[i], &agents[j]) {
                    r.advance(1);
                    let mut e = a.envelope(
                        &r,
                        &[&b.handle],
                        Payload::Message {
                            text: "m".into(),
                            data: None,
                        },
                    );
                    if ack {
                        e.ack_by = Some(r.now() + 1000);
                    }
                    a.send(&r, &e.sign(&a.key).unwrap()).await;
                }
            }
            Op::Ack(i, s) => {
                if let Some(a) = &agents[i] {
                    let items = a.inbox(&r, 0).await;
                    let target = items
                        .iter()
                        .map(item_env)
                        .find(|e| field(e, &["type"]).as_str() == Some("message"));
                    if let Some(e) = target {
                        let msg =
                            MessageId::parse_hex(field(e, &["id"]).as_str().unwrap()).unwrap();
                        let to =
                            formica_protocol::Handle::parse(field(e, &["from"]).as_str().unwrap())
                                .unwrap();
                        let status = [
                            AckStatus::Received,
                            AckStatus::Processed,
                            AckStatus::Rejected,
                        ][s as usize];
                        r.advance(1);
                        let ack = a
                            .envelope(
                                &r,
                                &[&to],
                                Payload::Ack {
                                    msg,
                                    status,
                                    reason: None,
                                },
                            )
                            .sign(&a.key)
                            .unwrap();
                        a.send(&r, &ack).await;
                    }
                }
            }
            Op::Read(i) => {
                if let Some(a) = &agents[i] {
                    a.inbox(&r, 0).await;
                }
            }
            Op::Advance(ms) => r.advance(i64::from(ms)),
            Op::Tick => {
                let _ = r
                    .relay
                    .app
                    .writer
                    .submit(formica_relay::decide::Command::Tick)
                    .await;
            }
            Op::Ask(i, j) => {
                if let (Some(a), Some(b)) = (&agents[i], &agents[j]) {
                    r.advance(1);
                    let e = a.envelope(
                        &r,
                        &[&b.handle],
                        Payload::ContactRequest {
                            level: ContactLevel::Message,
                            note: None,
                        },
                    );
                    a.send(&r, &e.sign(&a.key).unwrap()).await;
                }
            }
            Op::Answer(i, accept) => {
                if let Some(a) = &agents[i] {
                    let list = a.authed(&r, "GET", "/v1/contact-requests", b"").await;
                    if let Some(first) = list.get("requests").as_array().unwrap().first() {
                        let id = field(first, &["id"]).as_str().unwrap().to_owned();
                        let verb = if accept { "accept" } else { "reject" };
                        a.authed(
                            &r,
                            "POST",
                            &format!("/v1/contact-requests/{id}/{verb}"),
                            b"",
                        )
                        .await;
                    }
                }
            }
            Op::Rotate(i) => {
                if let Some(a) = agents[i].take() {
                    let k = r.fresh_key();
                    let entry = a
                        .next_entry(&r, KeyOp::Rotate { key: k.public() }, &a.key)
                        .await;
                    let resp = r
                        .call(
                            "POST",
                            &format!("/v1/keys/{}", a.handle),
                            &canon::canonicalize(entry.value()),
                            &[],
                        )
                        .await;
                    agents[i] = Some(if resp.status == 201 {
                        Agent::new(a.handle.clone(), k, a.recovery)
                    } else {
                        a
                    });
                }
            }
        }
    }
    // Let background read records land, then compare while holding the read lock: the writer
    // cannot append meanwhile, and it never releases the lock with events that are not on disk.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let live = r.relay.app.state.read().unwrap();
    let (log, rebuilt) = formica_relay::writer::replay(
        r.store.clone() as Arc<dyn formica_relay::store::Store>,
        &r.host(),
    )
    .unwrap();
    assert_eq!(log.len(), live.events);
    assert!(*live == rebuilt, "rebuilt state differs from the live one");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn rebuilding_projections_from_the_log_gives_the_live_state(ops in prop::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
