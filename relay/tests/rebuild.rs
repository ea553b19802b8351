//! Projections rebuilt from the log equal the ones maintained as entries were appended, over
//! random sequences of operations (registrations, contacts, messages, acks, reads, deadlines,
//! contact requests, key rotations, federation: messages queued for a peer, transfer outcomes,
//! dead-letters, envelopes and delivery notices from the peer; profiles), including the ones
//! the relay refuses.
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
    /// A local agent sends to an agent on the peer relay (queued).
    SendRemote(usize, bool),
    /// The peer answers for the head of the queue: 0 accepted, 1 refused for good, 2 later.
    Forward(u8),
    /// The peer's agent sends to a local agent.
    Incoming(usize),
    /// A new agent of the peer, whose key log is not cached, sends a contact request (true) or a
    /// message (false, refused) to a local agent, with the log fetched for it: the log is
    /// stored only with an accepted envelope.
    IncomingNew(usize, bool),
    /// The peer reports its agent was handed the oldest message sent to it.
    Delivered,
    /// A retention sweep: settled items past `retention.delivered_ms`, everything past
    /// `retention.max_ms` and ids past `retention.dedup_ms` are removed.
    Sweep,
    /// A checkpoint: a snapshot of the tables and its record; from the second on, the records
    /// the older one no longer needs are dropped.
    Checkpoint,
    /// An agent publishes a profile with this seq (a low one is refused `profile_outdated`),
    /// listed or not, with one of two capabilities.
    Profile(usize, u8, bool),
    /// An agent sets a presence status (busy or away), or the same status again.
    Status(usize, bool),
    /// An agent calls another to a conversation with a turn limit of 3, live or async.
    Call(usize, usize, bool),
    /// An agent acts in its newest conversation: 0 accept, 1 decline, 2 post to the other
    /// joined participants, 3 leave, 4 close.
    Conv(usize, u8),
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
        2 => Just(Op::Sweep),
        2 => Just(Op::Checkpoint),
        1 => (a.clone(), a.clone()).prop_map(|(x, y)| Op::Ask(x, y)),
        1 => (a.clone(), any::<bool>()).prop_map(|(x, y)| Op::Answer(x, y)),
        1 => a.clone().prop_map(Op::Rotate),
        3 => (a.clone(), any::<bool>()).prop_map(|(x, k)| Op::SendRemote(x, k)),
        3 => (0u8..3).prop_map(Op::Forward),
        2 => a.clone().prop_map(Op::Incoming),
        2 => (a.clone(), any::<bool>()).prop_map(|(x, k)| Op::IncomingNew(x, k)),
        1 => Just(Op::Delivered),
        2 => (a.clone(), 1u8..6, any::<bool>()).prop_map(|(x, s, l)| Op::Profile(x, s, l)),
        1 => (a.clone(), any::<bool>()).prop_map(|(x, b)| Op::Status(x, b)),
        2 => (a.clone(), a.clone(), any::<bool>()).prop_map(|(x, y, l)| Op::Call(x, y, l)),
        4 => (a, 0u8..5).prop_map(|(x, k)| Op::Conv(x, k)),
    ]
}

const NAMES: [&str; 4] = ["ann", "ben", "cat", "dan"];

const PEER: &str = "peer.example";

async fn run(ops: Vec<Op>) -> Vec<String> {
    run_with(ops, false).await
}

/// `run`; with `damage`, once the tables are compared, also flips a byte of the newest
/// checkpoint snapshot and checks that `relay check` names it and that a rebuild of a copy
/// goes back to the older one and gives the same tables.
async fn run_with(ops: Vec<Op>, damage: bool) -> Vec<String> {
    use formica_protocol::{Handle, RelayHost, SecretKey};
    use formica_relay::engine::decide::Command;
    let mut cfg = config(4);
    cfg.policy.federation.enabled = true;
    cfg.policy.federation.dead_letter_ms = 3000;
    // Short enough that the advances of a sequence remove things.
    cfg.policy.time.window_ms = 3000;
    cfg.policy.time.skew_ms = 1000;
    cfg.policy.retention.delivered_ms = 2000;
    cfg.policy.retention.max_ms = 6000;
    cfg.policy.retention.dedup_ms = 5000;
    cfg.policy.retention.sweep_max = 3;
    cfg.policy.validate().unwrap();
    static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let snaps = std::env::temp_dir().join(format!(
        "formica-rebuild-{}-{}",
        std::process::id(),
        CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&snaps);
    let r = TestRelay::with(
        cfg,
        Arc::new(formica_relay::store::MemStore::with_snapshot_dir(
            snaps.clone(),
        )),
    );
    let peer = RelayHost::parse(PEER).unwrap();
    let peer_key = SecretKey::from_seed(&[0x51; 32]);
    let remote = Handle::parse(&format!("@rem@{PEER}")).unwrap();
    let remote_key = SecretKey::from_seed(&[0x52; 32]);
    let w = r.relay.app.engine.writer.clone();
    w.submit(Command::PeerSet {
        host: peer.clone(),
        key: peer_key.public(),
        status: formica_relay::engine::events::PeerStatus::Active,
        stranger: false,
    })
    .await
    .unwrap();
    let reg = formica_protocol::KeyLogEntry {
        handle: remote.clone(),
        seq: 0,
        prev: None,
        ts: r.now() - 1000,
        op: KeyOp::Register {
            key: remote_key.public(),
            recovery: None,
        },
        signer: remote_key.public().key_id(),
    }
    .sign(&remote_key, &[])
    .unwrap();
    w.submit(Command::RemoteKeyLog { entries: vec![reg] })
        .await
        .unwrap();
    let mut sent_remote: Vec<MessageId> = Vec::new();
    let mut fresh: u8 = 0;
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
                    // From the oldest item kept (retention may have removed the first ones).
                    let resp = a.authed(&r, "GET", "/v1/inbox", b"").await;
                    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
                    let items = resp.get("items").as_array().unwrap().to_vec();
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
                    // From the oldest item kept: retention may have removed the first ones.
                    let resp = a.authed(&r, "GET", "/v1/inbox", b"").await;
                    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
                }
            }
            Op::Advance(ms) => r.advance(i64::from(ms)),
            Op::Tick => {
                let _ = r
                    .relay
                    .app
                    .engine
                    .writer
                    .submit(formica_relay::engine::decide::Command::Tick)
                    .await;
            }
            Op::Sweep => {
                let _ = w.submit(Command::Retain).await;
            }
            Op::Checkpoint => {
                let store = r.store.clone();
                let mark = tokio::task::spawn_blocking(move || {
                    formica_relay::engine::checkpoint::snapshot(&*store, &|| false)
                })
                .await
                .unwrap()
                .unwrap();
                // Refused only when nothing was logged since the last one; published once its
                // record is durable, removed otherwise (what the relay's checkpoint task does).
                match w.submit(Command::Checkpoint(mark)).await {
                    Ok(_) => {
                        formica_relay::engine::checkpoint::publish(&*r.store, mark.len).unwrap()
                    }
                    Err(_) => {
                        let p = formica_relay::store::snapshot::partial_path(&snaps, mark.len);
                        std::fs::remove_file(p).unwrap();
                    }
                }
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
            Op::SendRemote(i, ack) => {
                if let Some(a) = &agents[i] {
                    r.advance(1);
                    let mut e = a.envelope(
                        &r,
                        &[&remote],
                        Payload::Message {
                            text: "far".into(),
                            data: None,
                        },
                    );
                    if ack {
                        e.ack_by = Some(r.now() + 1000);
                    }
                    let se = e.sign(&a.key).unwrap();
                    sent_remote.push(se.id());
                    a.send(&r, &se).await;
                }
            }
            Op::Forward(kind) => {
                let head = {
                    let st = r.relay.app.engine.read();
                    st.queued(&peer, 1).first().map(|(_, x)| x.id)
                };
                if let Some(id) = head {
                    let res = match kind {
                        0 => Ok(()),
                        1 => Err(formica_protocol::ErrorCode::NotContact),
                        _ => Err(formica_protocol::ErrorCode::RateLimited),
                    };
                    let _ = w
                        .submit(Command::TransferResults {
                            peer: peer.clone(),
                            results: vec![(id, res)],
                        })
                        .await;
                }
            }
            Op::Incoming(j) => {
                if let Some(b) = &agents[j] {
                    r.advance(1);
                    let se = Envelope {
                        msg_type: MessageType::Message,
                        type_version: 1,
                        from: remote.clone(),
                        key: remote_key.public().key_id(),
                        to: vec![b.handle.clone()],
                        ts: r.now(),
                        corr: None,
                        ack_by: None,
                        conv: None,
                        payload: Payload::Message {
                            text: "from afar".into(),
                            data: None,
                        },
                    }
                    .sign(&remote_key)
                    .unwrap();
                    let env = se.verify(&remote_key.public()).unwrap();
                    let _ = w
                        .submit(Command::Transfer {
                            envs: vec![(env, None)],
                            origin: peer.clone(),
                        })
                        .await;
                }
            }
            Op::IncomingNew(j, ask) => {
                if let Some(b) = &agents[j] {
                    r.advance(1);
                    fresh = fresh.wrapping_add(1);
                    let k = SecretKey::from_seed(&[fresh; 32]);
                    let h = Handle::parse(&format!("@new{fresh}@{PEER}")).unwrap();
                    let reg = formica_protocol::KeyLogEntry {
                        handle: h.clone(),
                        seq: 0,
                        prev: None,
                        ts: r.now() - 1000,
                        op: KeyOp::Register {
                            key: k.public(),
                            recovery: None,
                        },
                        signer: k.public().key_id(),
                    }
                    .sign(&k, &[])
                    .unwrap();
                    let log = formica_protocol::KeyLog::verify(vec![reg]).unwrap();
                    let (msg_type, payload) = if ask {
                        (
                            MessageType::ContactRequest,
                            Payload::ContactRequest {
                                level: ContactLevel::Message,
                                note: None,
                            },
                        )
                    } else {
                        (
                            MessageType::Message,
                            Payload::Message {
                                text: "a stranger".into(),
                                data: None,
                            },
                        )
                    };
                    let se = Envelope {
                        msg_type,
                        type_version: 1,
                        from: h,
                        key: k.public().key_id(),
                        to: vec![b.handle.clone()],
                        ts: r.now(),
                        corr: None,
                        ack_by: None,
                        conv: None,
                        payload,
                    }
                    .sign(&k)
                    .unwrap();
                    let env = se.verify(&k.public()).unwrap();
                    let _ = w
                        .submit(Command::Transfer {
                            envs: vec![(env, Some(log))],
                            origin: peer.clone(),
                        })
                        .await;
                }
            }
            Op::Delivered => {
                if let Some(msg) = sent_remote.first().copied() {
                    r.advance(1);
                    let se = Envelope {
                        msg_type: MessageType::Receipt,
                        type_version: 1,
                        from: Handle::relay(&peer),
                        key: peer_key.public().key_id(),
                        to: vec![],
                        ts: r.now(),
                        corr: None,
                        ack_by: None,
                        conv: None,
                        payload: Payload::Receipt {
                            msg,
                            recipient: remote.clone(),
                            status: DeliveryState::Delivered,
                            ack: None,
                            ack_status: None,
                            reason: None,
                        },
                    };
                    let sender = {
                        let st = r.relay.app.engine.read();
                        st.message(&msg).map(|m| m.sender)
                    };
                    if let Some(sender) = sender {
                        let se = Envelope {
                            to: vec![sender],
                            ..se
                        }
                        .sign(&peer_key)
                        .unwrap();
                        let env = se.verify(&peer_key.public()).unwrap();
                        let _ = w
                            .submit(Command::RemoteEnvelope {
                                env,
                                origin: peer.clone(),
                            })
                            .await;
                    }
                }
            }
            Op::Call(i, j, live) => {
                if let (Some(a), Some(b)) = (&agents[i], &agents[j]) {
                    r.advance(1);
                    let e = a.envelope(
                        &r,
                        &[&b.handle],
                        Payload::Call {
                            topic: "t".into(),
                            mode: if live {
                                ConvMode::Live
                            } else {
                                ConvMode::Async
                            },
                            participants: vec![Invitee {
                                handle: b.handle.clone(),
                                role: ConvRole::Member,
                            }],
                            turns: Some(3),
                            expires: None,
                        },
                    );
                    a.send(&r, &e.sign(&a.key).unwrap()).await;
                }
            }
            Op::Conv(i, k) => {
                if let Some(a) = &agents[i] {
                    let newest = {
                        let st = r.relay.app.engine.read();
                        let found = st.convs_of(&a.handle).next().map(|c| {
                            let others: Vec<formica_protocol::Handle> = c
                                .conv
                                .participants
                                .iter()
                                .filter(|p| {
                                    p.handle != a.handle
                                        && p.state
                                            == formica_protocol::conversation::PartState::Joined
                                })
                                .map(|p| p.handle.clone())
                                .collect();
                            (c.conv.id, c.conv.owner().clone(), others)
                        });
                        found
                    };
                    if let Some((id, owner, others)) = newest {
                        r.advance(1);
                        let (to, payload) = match k {
                            2 if !others.is_empty() => (
                                others,
                                Payload::Message {
                                    text: "p".into(),
                                    data: None,
                                },
                            ),
                            _ => (
                                vec![owner],
                                Payload::ConvAction {
                                    action: [
                                        ConvActionKind::Accept,
                                        ConvActionKind::Decline,
                                        ConvActionKind::Accept,
                                        ConvActionKind::Leave,
                                        ConvActionKind::Close,
                                    ][k as usize],
                                    reason: None,
                                    participants: None,
                                },
                            ),
                        };
                        let mut e = a.envelope(&r, &to.iter().collect::<Vec<_>>(), payload);
                        e.conv = Some(id);
                        a.send(&r, &e.sign(&a.key).unwrap()).await;
                    }
                }
            }
            Op::Status(i, busy) => {
                if let Some(a) = &agents[i] {
                    let s = formica_protocol::Status {
                        handle: a.handle.clone(),
                        key: a.key.public().key_id(),
                        ts: r.now(),
                        expires: r.now() + 60_000,
                        status: if busy {
                            formica_protocol::Availability::Busy
                        } else {
                            formica_protocol::Availability::Away
                        },
                        note: None,
                    };
                    let signed = s.sign(&a.key).unwrap();
                    a.authed(&r, "PUT", "/v1/presence", signed.wire()).await;
                }
            }
            Op::Profile(i, seq, listed) => {
                if let Some(a) = &agents[i] {
                    let p = formica_protocol::Profile {
                        handle: a.handle.clone(),
                        key: a.key.public().key_id(),
                        seq: i64::from(seq),
                        ts: r.now(),
                        expires: r.now() + 60_000,
                        name: format!("{} {seq}", NAMES[i]),
                        description: None,
                        capabilities: vec![formica_protocol::Capability {
                            id: if seq % 2 == 0 { "even" } else { "odd" }.into(),
                            version: None,
                            tags: Vec::new(),
                        }],
                        accepts: Vec::new(),
                        platform: None,
                        model: None,
                        listed,
                    };
                    let signed = p.sign(&a.key).unwrap();
                    a.authed(&r, "PUT", "/v1/profile", signed.wire()).await;
                }
            }
            Op::Rotate(i) => {
                if let Some(a) = agents[i].take() {
                    let k = r.fresh_key();
                    let entry = a
                        .next_entry(&r, KeyOp::Rotate { key: k.public() }, &a.key, &[&k])
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
    let live = r.relay.app.engine.read();
    let store = r.store.clone() as Arc<dyn formica_relay::store::Store>;
    // The tables the writer committed are, row for row, the replay of the log.
    let checked = formica_relay::engine::replay::check(store.clone(), &r.host(), None, true)
        .unwrap_or_else(|e| panic!("the live tables differ from the replay of the log: {e}"));
    assert_eq!(checked.log.len, live.events);
    // And what the live relay holds in memory is what a start loads from them.
    let loaded = formica_relay::engine::state::State::load(r.host(), store.clone()).unwrap();
    assert!(
        live.memory_eq(&loaded),
        "the state in memory differs from the one loaded from the store"
    );
    // What federation did, for the fixed-sequence test below.
    let dump = formica_relay::engine::state::Db::dump(&*store).unwrap();
    let mut seen: Vec<String> = dump
        .iter()
        .filter(|((t, _), _)| *t == formica_relay::store::Table::Messages)
        .filter_map(|(_, v)| formica_relay::engine::state::codec::message_record(v))
        .flat_map(|m| {
            m.recipients
                .into_iter()
                .map(|x| x.state.as_str().to_owned())
        })
        .collect();
    seen.push(format!(
        "queued={}",
        live.outbound_len.values().sum::<usize>()
    ));
    seen.push(format!("dead_letters={}", live.dead_letters));
    seen.push(format!("remote_logs={}", live.remote_logs.len()));
    let rows = |t: formica_relay::store::Table| dump.keys().filter(|(x, _)| *x == t).count();
    seen.push(format!(
        "inbox_rows={}",
        rows(formica_relay::store::Table::Inbox)
    ));
    seen.push(format!(
        "message_rows={}",
        rows(formica_relay::store::Table::Messages)
    ));
    seen.push(format!(
        "seen_rows={}",
        rows(formica_relay::store::Table::SeenByTs)
    ));
    seen.push(format!("first={}", store.base().unwrap().first));
    seen.push(format!("checkpoints={}", live.checkpoints.len()));
    seen.push(format!("statuses={}", live.statuses.len()));
    seen.push(format!(
        "profiles={} seqs={:?}",
        live.profiles.len(),
        live.profiles.values().map(|p| p.seq()).collect::<Vec<_>>()
    ));
    if damage {
        // A snapshot written but never logged (a stop between the two) is no snapshot: check
        // passes beside it, and a start removes it.
        let s2 = r.store.clone();
        let extra = tokio::task::spawn_blocking(move || {
            formica_relay::engine::checkpoint::snapshot(&*s2, &|| false)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            formica_relay::store::snapshot::list_partial(&snaps).unwrap(),
            vec![extra.len]
        );
        formica_relay::engine::replay::check(store.clone(), &r.host(), None, true).unwrap();
        formica_relay::engine::checkpoint::tidy(&*store, &live).unwrap();
        assert!(formica_relay::store::snapshot::list_partial(&snaps)
            .unwrap()
            .is_empty());
        let newest = live.last_checkpoint().unwrap().mark.len;
        let p = formica_relay::store::snapshot::path(&snaps, newest);
        let mut b = std::fs::read(&p).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0x20;
        std::fs::write(&p, &b).unwrap();
        match formica_relay::engine::replay::check(store.clone(), &r.host(), None, true) {
            Err(formica_relay::store::StoreError::Corrupt { reason, .. }) => {
                assert!(reason.contains(&format!("{newest:020}.snap")), "{reason}")
            }
            other => panic!(
                "a damaged snapshot went unnoticed: {:?}",
                other.map(|c| c.log)
            ),
        }
        let copy = store.read_only().unwrap();
        formica_relay::engine::replay::rebuild(copy.clone(), &r.host()).unwrap();
        assert_eq!(
            formica_relay::engine::state::Db::dump(&*copy).unwrap(),
            formica_relay::engine::state::Db::dump(&*store).unwrap()
        );
        assert!(!p.exists(), "the damaged snapshot was not set aside");
        seen.push("rebuilt_past_damage".into());
    }
    drop(live);
    let _ = std::fs::remove_dir_all(&snaps);
    let mut retained = 0;
    store
        .scan(1, u64::MAX, &mut |_, record| {
            if record[32..].windows(14).any(|w| w == b"\"t\":\"retained\"") {
                retained += 1;
            }
            Ok(())
        })
        .unwrap();
    seen.push(format!("retained_events={retained}"));
    seen
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn federation_operations_reach_the_log() {
    let rt = runtime();
    let ops = vec![
        Op::Register(0),
        Op::Register(1),
        Op::Allow(0, 1, 1),
        Op::SendRemote(0, false),
        Op::Forward(0),
        Op::Delivered,
        Op::SendRemote(0, true),
        Op::Forward(1),
        Op::SendRemote(1, false),
        Op::Forward(2),
        Op::Incoming(0),
        Op::Advance(4000),
        Op::Tick,
    ];
    let seen = rt.block_on(run(ops));
    for want in [
        "delivered",
        "dead_lettered",
        "queued=0",
        "dead_letters=2",
        "remote_logs=1",
    ] {
        assert!(seen.iter().any(|s| s == want), "{want} not in {seen:?}");
    }
}

/// Profiles and presence statuses reach the log: a lower seq is refused, a higher one replaces,
/// and they survive checkpoints that drop the records that made them (the tables are compared
/// with the replay in `run`).
#[test]
fn profiles_and_statuses_reach_the_log_and_survive_checkpoints() {
    let rt = runtime();
    let ops = vec![
        Op::Register(0),
        Op::Register(1),
        Op::Profile(0, 3, true),
        Op::Profile(0, 2, false),
        Op::Profile(1, 1, false),
        Op::Checkpoint,
        Op::Profile(1, 4, true),
        Op::Status(0, true),
        Op::Advance(10),
        Op::Status(0, false),
        Op::Checkpoint,
        Op::Checkpoint,
    ];
    let seen = rt.block_on(run(ops));
    for want in ["profiles=2 seqs=[3, 4]", "statuses=1"] {
        assert!(seen.iter().any(|s| s == want), "{want} not in {seen:?}");
    }
}

/// Retention removes settled items after `delivered_ms`, everything after `max_ms` and ids
/// after `dedup_ms`, through logged events: the tables after the removals are still the replay
/// of the log (checked in `run`), and a sweep with nothing to remove logs nothing.
#[test]
fn retention_removes_through_the_log() {
    let rt = runtime();
    let ops = vec![
        Op::Register(0),
        Op::Register(1),
        Op::Allow(1, 0, 1),
        Op::Send(0, 1, false),
        Op::Send(0, 1, true),
        Op::Read(1),
        Op::Sweep,
        Op::Advance(2500),
        // Read, no ack asked: removed; read but not acked: kept.
        Op::Sweep,
        Op::Send(0, 1, false),
        Op::Advance(4000),
        // The unread one is past max_ms only later.
        Op::Sweep,
        Op::Advance(4000),
        // The acked-for message's record stays while its deadline is pending (ACK-4); the
        // tick times it out, and then it goes.
        Op::Sweep,
        Op::Tick,
        Op::Sweep,
        Op::Sweep,
        Op::Sweep,
        Op::Sweep,
    ];
    let seen = rt.block_on(run(ops));
    // What is left is the `timed_out` receipt the tick put into the sender's inbox just now.
    for want in ["inbox_rows=1", "message_rows=0", "seen_rows=1"] {
        assert!(seen.iter().any(|s| s == want), "{want} not in {seen:?}");
    }
    let events = seen
        .iter()
        .find_map(|s| s.strip_prefix("retained_events="))
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap();
    assert!((2..=6).contains(&events), "{seen:?}");
}

/// Checkpoints: after the second one, the records the first one no longer needs are dropped,
/// and the tables are still the replay of what is kept: the first snapshot, then the records
/// after it (compared row for row in `run`), with retention removing what the dropped records
/// made.
#[test]
fn checkpoints_drop_records_and_the_rest_still_rebuilds() {
    let rt = runtime();
    let ops = vec![
        Op::Register(0),
        Op::Register(1),
        Op::Allow(1, 0, 1),
        Op::Send(0, 1, false),
        Op::Read(1),
        Op::Checkpoint,
        Op::Advance(4000),
        Op::Sweep,
        // Read: settled, so retention removes it after the second checkpoint, and the third
        // needs no record before its own position. Records are dropped behind the second
        // (the older of the last two), which still needs this one's.
        Op::Send(0, 1, false),
        Op::Read(1),
        Op::Checkpoint,
        Op::Advance(4000),
        Op::Sweep,
        Op::Allow(0, 1, 1),
        Op::Checkpoint,
    ];
    let seen = rt.block_on(run_with(ops, true));
    assert!(seen.iter().any(|s| s == "rebuilt_past_damage"), "{seen:?}");
    let first: u64 = seen
        .iter()
        .find_map(|s| s.strip_prefix("first="))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(first > 1, "nothing was dropped: {seen:?}");
    assert!(seen.iter().any(|s| s == "checkpoints=2"), "{seen:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn rebuilding_projections_from_the_log_gives_the_live_state(ops in prop::collection::vec(op(), 1..60)) {
        let rt = runtime();
        let _ = rt.block_on(run(ops));
    }
}
