//! Federation with real relay processes on loopback (SPEC.md section 16): three relays with
//! agents on each (contact requests, messages, acks, timeouts, refusals dead-lettered); a relay
//! killed and restarted (nothing lost, nothing twice, order kept); a relay down past the
//! dead-letter age (the sender gets a dead_lettered receipt); and a misbehaving peer (a test
//! double holding a relay key) whose bad transfers are refused with the spec's codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/fed.rs"]
mod fed;
#[path = "common/process.rs"]
mod process;

use fed::*;
use formica_protocol::auth::{Nonce, RelayAuth, RequestTarget};
use formica_protocol::envelope::{
    AckStatus, ContactLevel, Envelope, MessageId, MessageType, Payload, SignedEnvelope,
};
use formica_protocol::keylog::{KeyLogEntry, KeyOp};
use formica_protocol::{canon, Domain, Handle, Object, RelayHost, SecretKey, Value};
use process::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

fn envelope(from: &Peer, to: &[&Handle], payload: Payload, ack_by: Option<i64>) -> SignedEnvelope {
    let ts = now_ms();
    let msg_type = match &payload {
        Payload::Message { .. } => MessageType::Message,
        Payload::Ack { .. } => MessageType::Ack,
        Payload::ContactRequest { .. } => MessageType::ContactRequest,
        _ => unreachable!(),
    };
    Envelope {
        msg_type,
        type_version: 1,
        from: from.handle.clone(),
        key: from.key.public().key_id(),
        to: to.iter().map(|h| (*h).clone()).collect(),
        ts,
        corr: None,
        ack_by,
        conv: None,
        payload,
    }
    .sign(&from.key)
    .unwrap()
}

fn text(from: &Peer, to: &[&Handle], t: &str, ack_by: Option<i64>) -> SignedEnvelope {
    envelope(
        from,
        to,
        Payload::Message {
            text: t.into(),
            data: None,
        },
        ack_by,
    )
}

fn post(r: &Node, se: &SignedEnvelope) -> String {
    let (st, v) = post_envelope(&r.proc_, se).unwrap();
    assert!(st == 201 || st == 200, "{st} {v:?}");
    se.id().to_hex()
}

fn get<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.as_object().unwrap().get(k).unwrap()
}

/// Each recipient's status of a message, from its sender's home relay.
fn statuses(r: &Node, sender: &Peer, id: &str) -> Vec<(String, String)> {
    let (st, v) = sender.authed(&r.proc_, "GET", &format!("/v1/messages/{id}"), b"");
    assert_eq!(st, 200, "{v:?}");
    get(&v, "recipients")
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                get(x, "handle").as_str().unwrap().to_owned(),
                get(x, "status").as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn wait_status(r: &Node, sender: &Peer, id: &str, who: &Handle, want: &str) {
    wait_until(
        &format!("{who} to be {want} for {id}"),
        Duration::from_secs(15),
        || {
            statuses(r, sender, id)
                .iter()
                .any(|(h, s)| h == who.as_str() && s == want)
        },
    );
}

/// The envelopes in an inbox (full envelope values), in cursor order.
fn inbox_envelopes(r: &Node, p: &Peer) -> Vec<Value> {
    let (st, v) = p.authed(&r.proc_, "GET", "/v1/inbox?after=0&limit=100", b"");
    assert_eq!(st, 200, "{v:?}");
    get(&v, "items")
        .as_array()
        .unwrap()
        .iter()
        .map(|i| get(i, "envelope").clone())
        .collect()
}

fn receipt_statuses(r: &Node, p: &Peer) -> Vec<(String, String)> {
    inbox_envelopes(r, p)
        .iter()
        .filter(|e| get(e, "type").as_str() == Some("receipt"))
        .map(|e| {
            let pl = get(e, "payload");
            (
                get(pl, "msg").as_str().unwrap().to_owned(),
                get(pl, "status").as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn three_relays_contact_requests_messages_acks_timeouts() {
    let root = tempdir("three");
    let a = Node::start(&root, "a", 60_000);
    let b = Node::start(&root, "b", 60_000);
    let c = Node::start(&root, "c", 60_000);
    a.peer_with(&b);
    a.peer_with(&c);
    b.peer_with(&c);
    let (ok, list) = a.peer_cmd(&["list"]);
    assert!(
        ok && list.contains(&b.host()) && list.contains(&c.host()),
        "{list}"
    );

    let alice = Peer::register(&a.proc_, "alice", 1);
    let bob = Peer::register(&b.proc_, "bob", 2);
    let carol = Peer::register(&c.proc_, "carol", 3);

    // A contact request across relays; bob accepts it on his relay.
    let req = envelope(
        &alice,
        &[&bob.handle],
        Payload::ContactRequest {
            level: ContactLevel::Message,
            note: Some("hi from a".into()),
        },
        None,
    );
    let req_id = post(&a, &req);
    wait_until("bob's contact request", Duration::from_secs(15), || {
        let (_, v) = bob.authed(&b.proc_, "GET", "/v1/contact-requests", b"");
        get(&v, "requests").as_array().unwrap().len() == 1
    });
    let (st, v) = bob.authed(
        &b.proc_,
        "POST",
        &format!("/v1/contact-requests/{req_id}/accept"),
        b"",
    );
    assert_eq!(st, 200, "{v:?}");

    // A message with an ack deadline: forwarded, then acked by bob through his relay.
    let m = text(&alice, &[&bob.handle], "hello bob", Some(now_ms() + 30_000));
    let mid = post(&a, &m);
    wait_status(&a, &alice, &mid, &bob.handle, "forwarded");
    assert!(inbox_envelopes(&b, &bob)
        .iter()
        .any(|e| get(e, "id").as_str() == Some(mid.as_str())));
    // Bob's relay reports the read back: delivered, with the sender's own receipt.
    wait_status(&a, &alice, &mid, &bob.handle, "delivered");
    assert!(receipt_statuses(&a, &alice).contains(&(mid.clone(), "delivered".into())));
    let ack = envelope(
        &bob,
        &[&alice.handle],
        Payload::Ack {
            msg: MessageId::parse_hex(&mid).unwrap(),
            status: AckStatus::Processed,
            reason: None,
        },
        None,
    );
    let ack_id = post(&b, &ack);
    wait_status(&a, &alice, &mid, &bob.handle, "acked");
    let ai = inbox_envelopes(&a, &alice);
    assert!(ai
        .iter()
        .any(|e| get(e, "id").as_str() == Some(ack_id.as_str())));
    assert!(receipt_statuses(&a, &alice).contains(&(mid.clone(), "acked".into())));

    // One envelope to agents on two other relays.
    alice.allow(&a.proc_, &carol.handle);
    bob.allow(&b.proc_, &carol.handle);
    let m2 = text(&carol, &[&alice.handle, &bob.handle], "hi both", None);
    let m2id = post(&c, &m2);
    wait_status(&c, &carol, &m2id, &alice.handle, "forwarded");
    wait_status(&c, &carol, &m2id, &bob.handle, "forwarded");
    assert!(inbox_envelopes(&a, &alice)
        .iter()
        .any(|e| get(e, "id").as_str() == Some(m2id.as_str())));
    assert!(inbox_envelopes(&b, &bob)
        .iter()
        .any(|e| get(e, "id").as_str() == Some(m2id.as_str())));

    // An ack deadline that passes: the sender's relay times the remote delivery out.
    let m3 = text(
        &alice,
        &[&bob.handle],
        "ack me soon",
        Some(now_ms() + 1_000),
    );
    let m3id = post(&a, &m3);
    wait_status(&a, &alice, &m3id, &bob.handle, "timed_out");
    assert!(receipt_statuses(&a, &alice).contains(&(m3id.clone(), "timed_out".into())));

    // Refused at the recipient's relay (no contact grant): dead-lettered at once, with reason.
    let m4 = text(&carol, &[&bob.handle], "not to nobody", None);
    let (st, _) = bob.authed(
        &b.proc_,
        "DELETE",
        &format!("/v1/contacts/{}", carol.handle),
        b"",
    );
    assert_eq!(st, 200);
    let m4id = post(&c, &m4);
    wait_status(&c, &carol, &m4id, &bob.handle, "dead_lettered");
    let reason = inbox_envelopes(&c, &carol)
        .iter()
        .find(|e| {
            get(e, "type").as_str() == Some("receipt")
                && get(get(e, "payload"), "msg").as_str() == Some(m4id.as_str())
        })
        .map(|e| {
            get(get(e, "payload"), "reason")
                .as_str()
                .unwrap()
                .to_owned()
        })
        .unwrap();
    assert_eq!(reason, "not_contact");

    // A recipient on a relay that is not a peer is refused at once.
    let stranger = Handle::parse("@zed@127.0.0.1:1").unwrap();
    let (st, v) = post_envelope(&a.proc_, &text(&alice, &[&stranger], "x", None)).unwrap();
    assert_eq!(st, 404, "{v:?}");

    // A key rotation on alice's relay is pushed to the peer that cached her log.
    let (_, log) = a
        .proc_
        .request("GET", &format!("/v1/keys/{}", alice.handle), &[], b"")
        .unwrap();
    let head = formica_protocol::keylog::EntryHash::parse_hex(get(&log, "head").as_str().unwrap())
        .unwrap();
    let new_key = SecretKey::from_seed(&[0x91; 32]);
    let rotate = KeyLogEntry {
        handle: alice.handle.clone(),
        seq: 1,
        prev: Some(head),
        ts: now_ms(),
        op: KeyOp::Rotate {
            key: new_key.public(),
        },
        signer: alice.key.public().key_id(),
    }
    .sign(&alice.key, &[&new_key])
    .unwrap();
    let (st, v) = a
        .proc_
        .request(
            "POST",
            &format!("/v1/keys/{}", alice.handle),
            &[],
            &rotate.wire_bytes(),
        )
        .unwrap();
    assert_eq!(st, 201, "{v:?}");
    wait_until(
        "the rotation to reach relay b",
        Duration::from_secs(10),
        || {
            let (_, v) = b
                .proc_
                .request("GET", &format!("/v1/keys/{}", alice.handle), &[], b"")
                .unwrap();
            get(&v, "current_key").as_str() == Some(new_key.public().to_hex().as_str())
        },
    );
}

#[test]
fn killed_peer_restarts_and_everything_arrives_once_in_order() {
    let root = tempdir("restart");
    let mut a = Node::start(&root, "a", 60_000);
    let mut b = Node::start(&root, "b", 60_000);
    a.peer_with(&b);
    let alice = Peer::register(&a.proc_, "alice", 1);
    let bob = Peer::register(&b.proc_, "bob", 2);
    bob.allow(&b.proc_, &alice.handle);
    let first = text(&alice, &[&bob.handle], "before", None);
    let first_id = post(&a, &first);
    wait_status(&a, &alice, &first_id, &bob.handle, "forwarded");

    b.proc_.kill();
    let mut sent = vec![first_id];
    for i in 0..10 {
        sent.push(post(
            &a,
            &text(&alice, &[&bob.handle], &format!("while down {i}"), None),
        ));
    }
    // The sender's relay is killed too: its queue is in its log.
    std::thread::sleep(Duration::from_millis(500));
    a.proc_.kill();
    a.restart();
    std::thread::sleep(Duration::from_millis(300));
    b.restart();
    wait_until("all ten to arrive", Duration::from_secs(20), || {
        inbox_envelopes(&b, &bob).len() >= sent.len()
    });
    std::thread::sleep(Duration::from_millis(500));
    let got: Vec<String> = inbox_envelopes(&b, &bob)
        .iter()
        .map(|e| get(e, "id").as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, sent, "every message once, in order");
    // Bob has read them all, so his relay reports them delivered.
    for id in &sent {
        wait_status(&a, &alice, id, &bob.handle, "delivered");
    }
}

#[test]
fn peer_down_past_the_dead_letter_age_gives_undeliverable() {
    let root = tempdir("deadletter");
    let a = Node::start(&root, "a", 2_000);
    let mut b = Node::start(&root, "b", 2_000);
    a.peer_with(&b);
    let alice = Peer::register(&a.proc_, "alice", 1);
    let bob = Peer::register(&b.proc_, "bob", 2);
    bob.allow(&b.proc_, &alice.handle);
    b.proc_.kill();
    let id = post(&a, &text(&alice, &[&bob.handle], "into the void", None));
    wait_status(&a, &alice, &id, &bob.handle, "dead_lettered");
    assert!(receipt_statuses(&a, &alice).contains(&(id.clone(), "dead_lettered".into())));
    // Back up later: the dead-lettered envelope is not sent any more.
    b.restart();
    std::thread::sleep(Duration::from_millis(800));
    assert!(inbox_envelopes(&b, &bob).is_empty());
}

// ------------------------------------------------------------------ a misbehaving peer

type KeyLogs = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Value>>>;

/// A fake relay: a relay key, a descriptor and a key log endpoint that serves whatever the test
/// puts there. It answers on its own thread until the test ends.
struct Fake {
    key: SecretKey,
    host: RelayHost,
}

fn fake_descriptor(key: &SecretKey, host: &RelayHost) -> Value {
    let mut o = Object::new();
    o.insert("v", Value::Int(1));
    o.insert("relay", host.as_str().into());
    o.insert("key", key.public().to_hex().into());
    o.insert("key_id", key.public().key_id().to_hex().into());
    o.insert("versions", Value::Array(vec![Value::Int(1)]));
    o.insert("ts", Value::Int(now_ms()));
    let sig = key.sign(
        Domain::Descriptor,
        &canon::canonicalize(&Value::Object(o.clone())),
    );
    o.insert("sig", sig.to_hex().into());
    Value::Object(o)
}

impl Fake {
    fn start(keylogs: KeyLogs) -> Fake {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = RelayHost::parse(&l.local_addr().unwrap().to_string()).unwrap();
        let key = SecretKey::from_seed(&[0x66; 32]);
        let (k2, h2) = (key.clone(), host.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                let _ = r.read_exact(&mut body);
                let (status, v) = if path == "/.well-known/formica" {
                    (200, fake_descriptor(&k2, &h2))
                } else if let Some(h) = path.strip_prefix("/v1/keys/") {
                    match keylogs.lock().unwrap().get(h) {
                        Some(v) => (200, v.clone()),
                        None => (404, Value::Null),
                    }
                } else {
                    (404, Value::Null)
                };
                let b = canon::canonicalize(&v);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    b.len()
                );
                let _ = s.write_all(&b);
            }
        });
        Fake { key, host }
    }

    fn signed(
        &self,
        r: &RelayProc,
        dest: &RelayHost,
        path: &str,
        body: &[u8],
    ) -> (String, (u16, Value)) {
        self.signed_with(&self.key, now_ms(), r, dest, path, body)
    }

    fn signed_with(
        &self,
        key: &SecretKey,
        ts: i64,
        r: &RelayProc,
        dest: &RelayHost,
        path: &str,
        body: &[u8],
    ) -> (String, (u16, Value)) {
        let mut n = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut n);
        let h = RelayAuth::sign(
            key,
            &self.host,
            dest,
            ts,
            Nonce(n),
            &RequestTarget {
                method: "POST",
                path,
                body,
            },
        );
        let res = r
            .request("POST", path, &[("authorization", h.clone())], body)
            .unwrap();
        (h, res)
    }

    fn transfer(
        &self,
        r: &RelayProc,
        dest: &RelayHost,
        envs: &[&SignedEnvelope],
    ) -> (String, Vec<u8>, (u16, Value)) {
        let body = canon::canonicalize(&obj(vec![
            (
                "envelopes",
                Value::Array(envs.iter().map(|e| e.value().clone()).collect()),
            ),
            ("txn", format!("t{}", now_ms()).into()),
        ]));
        let (h, res) = self.signed(r, dest, "/v1/federation/transfer", &body);
        (h, body, res)
    }
}

/// Asserts that `r` has not cached `h`'s key log: `GET /v1/keys/{h}` is either not found or
/// the log fetched from its home relay for this answer (`"cached": false`, API-5), never a
/// cached copy.
fn assert_not_cached(r: &RelayProc, h: &str) {
    let (st, v) = r
        .request("GET", &format!("/v1/keys/{h}"), &[], b"")
        .unwrap();
    if st == 404 {
        return;
    }
    assert_eq!(st, 200, "{v:?}");
    assert_eq!(
        get(&v, "cached"),
        &Value::Bool(false),
        "{h}'s key log was cached for refused envelopes"
    );
}

fn error_code_of(v: &Value) -> String {
    v.as_object()
        .and_then(|o| o.get("error"))
        .and_then(|e| e.as_object())
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn first_result_code(v: &Value) -> String {
    let r = &get(v, "results").as_array().unwrap()[0];
    error_code_of(r)
}

#[test]
fn misbehaving_peer_is_refused_and_nothing_is_stored() {
    let root = tempdir("evil");
    let b = Node::start(&root, "b", 60_000);
    let bob = Peer::register(&b.proc_, "bob", 2);
    let bhost = b.proc_.host();

    // A forged key log for @eve on the fake relay: the register entry is signed by another key.
    let eve_key = SecretKey::from_seed(&[0x77; 32]);
    let keylogs = KeyLogs::default();
    let fake = Fake::start(keylogs.clone());
    let eve = Handle::parse(&format!("@eve@{}", fake.host)).unwrap();
    let forged = KeyLogEntry {
        handle: eve.clone(),
        seq: 0,
        prev: None,
        ts: now_ms() - 1000,
        op: KeyOp::Register {
            key: eve_key.public(),
            recovery: None,
        },
        signer: eve_key.public().key_id(),
    }
    .sign(&SecretKey::from_seed(&[0x78; 32]), &[])
    .unwrap();
    keylogs.lock().unwrap().insert(
        eve.as_str().to_owned(),
        obj(vec![(
            "entries",
            Value::Array(vec![forged.value().clone()]),
        )]),
    );

    // Before peering, a transfer is peer_unknown.
    let stray = SecretKey::from_seed(&[0x79; 32]);
    let mk = |from: &Handle, key: &SecretKey| {
        Envelope {
            msg_type: MessageType::Message,
            type_version: 1,
            from: from.clone(),
            key: key.public().key_id(),
            to: vec![bob.handle.clone()],
            ts: now_ms(),
            corr: None,
            ack_by: None,
            conv: None,
            payload: Payload::Message {
                text: "evil".into(),
                data: None,
            },
        }
        .sign(key)
        .unwrap()
    };
    let from_eve = mk(&eve, &eve_key);
    let (_, _, (st, v)) = fake.transfer(&b.proc_, &bhost, &[&from_eve]);
    assert_eq!(
        (st, error_code_of(&v).as_str()),
        (403, "peer_unknown"),
        "{v:?}"
    );

    // The handshake (B's policy is open).
    let body = canon::canonicalize(&obj(vec![(
        "descriptor",
        fake_descriptor(&fake.key, &fake.host),
    )]));
    let (_, (st, v)) = fake.signed(&b.proc_, &bhost, "/v1/federation/peers", &body);
    assert_eq!(st, 201, "{v:?}");

    // 1. An envelope from a handle not homed on the fake: origin_mismatch.
    let alien = Handle::parse(&format!("@mallory@{}", bhost)).unwrap();
    let from_alien = mk(&alien, &stray);
    let (h1, body1, (st, v)) = fake.transfer(&b.proc_, &bhost, &[&from_alien]);
    assert_eq!(st, 200, "{v:?}");
    assert_eq!(first_result_code(&v), "origin_mismatch");
    // 2. Replaying the refused envelope in a new request: refused again, the same way.
    let (_, _, (st, v)) = fake.transfer(&b.proc_, &bhost, &[&from_alien]);
    assert_eq!(st, 200);
    assert_eq!(first_result_code(&v), "origin_mismatch");
    // 3. Replaying the exact request (same nonce): nonce_reused.
    let (st, v) = b
        .proc_
        .request(
            "POST",
            "/v1/federation/transfer",
            &[("authorization", h1)],
            &body1,
        )
        .unwrap();
    assert_eq!(
        (st, error_code_of(&v).as_str()),
        (401, "nonce_reused"),
        "{v:?}"
    );
    // 4. A forged key log for the sender: its signature does not verify.
    let (_, _, (st, v)) = fake.transfer(&b.proc_, &bhost, &[&from_eve]);
    assert_eq!(st, 200);
    assert_eq!(first_result_code(&v), "bad_signature", "{v:?}");
    // 5. Signed for another destination: wrong_relay.
    let other = RelayHost::parse("relay-z.example").unwrap();
    let (_, _, (st, v)) = fake.transfer(&b.proc_, &other, &[&from_eve]);
    assert_eq!(
        (st, error_code_of(&v).as_str()),
        (421, "wrong_relay"),
        "{v:?}"
    );

    // 6. Two different valid logs for one handle: the second is kept as evidence, reported by
    //    the key log endpoint, and never replaces the first.
    let k1 = SecretKey::from_seed(&[0x81; 32]);
    let k2 = SecretKey::from_seed(&[0x82; 32]);
    let eve2 = Handle::parse(&format!("@eve2@{}", fake.host)).unwrap();
    let reg = |k: &SecretKey, ts: i64| {
        KeyLogEntry {
            handle: eve2.clone(),
            seq: 0,
            prev: None,
            ts,
            op: KeyOp::Register {
                key: k.public(),
                recovery: None,
            },
            signer: k.public().key_id(),
        }
        .sign(k, &[])
        .unwrap()
    };
    let set_log = |e: &formica_protocol::SignedKeyLogEntry| {
        keylogs.lock().unwrap().insert(
            eve2.as_str().to_owned(),
            obj(vec![("entries", Value::Array(vec![e.value().clone()]))]),
        );
    };
    set_log(&reg(&k1, now_ms() - 2000));
    let (_, _, (st, v)) = fake.transfer(&b.proc_, &bhost, &[&mk(&eve2, &k1)]);
    assert_eq!(st, 200);
    assert_eq!(first_result_code(&v), "not_contact", "{v:?}");
    // The refused envelope's sender log was fetched to check its signature, but not stored
    // (FED-8: a log is cached only with an envelope it verified that is accepted).
    assert_not_cached(&b.proc_, &eve2.to_string());
    bob.allow(&b.proc_, &eve2);
    let (_, _, (st, v)) = fake.transfer(&b.proc_, &bhost, &[&mk(&eve2, &k1)]);
    assert_eq!(st, 200);
    assert_eq!(
        result_of(&get(&v, "results").as_array().unwrap()[0]),
        "accepted",
        "{v:?}"
    );
    set_log(&reg(&k2, now_ms() - 1000));
    let (_, _, (st, v)) = fake.transfer(&b.proc_, &bhost, &[&mk(&eve2, &k2)]);
    assert_eq!(st, 200);
    assert_eq!(first_result_code(&v), "keylog_fork", "{v:?}");
    let (st, v) = b
        .proc_
        .request("GET", &format!("/v1/keys/{eve2}"), &[], b"")
        .unwrap();
    assert_eq!(st, 200, "{v:?}");
    assert_eq!(get(&v, "conflicts").as_array().unwrap().len(), 1);
    assert_eq!(
        get(&v, "current_key").as_str(),
        Some(k1.public().to_hex().as_str())
    );

    // 7. A stale request, one from the future, and one signed with another key than the one
    //    learned at the handshake.
    let body = canon::canonicalize(&obj(vec![
        ("envelopes", Value::Array(vec![])),
        ("txn", "t-x".into()),
    ]));
    let (_, (st, v)) = fake.signed_with(
        &fake.key,
        now_ms() - 3_600_000,
        &b.proc_,
        &bhost,
        "/v1/federation/transfer",
        &body,
    );
    assert_eq!((st, error_code_of(&v).as_str()), (400, "stale"), "{v:?}");
    let (_, (st, v)) = fake.signed_with(
        &fake.key,
        now_ms() + 3_600_000,
        &b.proc_,
        &bhost,
        "/v1/federation/transfer",
        &body,
    );
    assert_eq!((st, error_code_of(&v).as_str()), (400, "future"), "{v:?}");
    let (_, (st, v)) = fake.signed_with(
        &stray,
        now_ms(),
        &b.proc_,
        &bhost,
        "/v1/federation/transfer",
        &body,
    );
    assert_eq!(
        (st, error_code_of(&v).as_str()),
        (401, "unauthorized"),
        "{v:?}"
    );

    // Nothing was stored but the one envelope accepted in 6.
    assert_eq!(inbox_envelopes(&b, &bob).len(), 1);

    // 8. A transfer retried after the peer stored it (say the answer timed out): duplicate,
    //    and the envelope is in the inbox once.
    let good = mk(&eve2, &k1);
    let (_, _, (st, v)) = fake.transfer(&b.proc_, &bhost, &[&good]);
    assert_eq!(st, 200);
    assert_eq!(
        result_of(&get(&v, "results").as_array().unwrap()[0]),
        "accepted",
        "{v:?}"
    );
    let (_, _, (st, v)) = fake.transfer(&b.proc_, &bhost, &[&good]);
    assert_eq!(st, 200);
    assert_eq!(
        result_of(&get(&v, "results").as_array().unwrap()[0]),
        "duplicate",
        "{v:?}"
    );
    assert_eq!(inbox_envelopes(&b, &bob).len(), 2);

    // 9. Order per sender: an envelope refused with a retryable error (here `future`) holds
    //    back the later ones from the same sender in that transfer (`unavailable`).
    let ahead = Envelope {
        ts: now_ms() + 3_600_000,
        ..mk(&eve2, &k1).envelope().clone()
    }
    .sign(&k1)
    .unwrap();
    let behind = mk(&eve2, &k1);
    let (_, _, (st, v)) = fake.transfer(&b.proc_, &bhost, &[&ahead, &behind]);
    assert_eq!(st, 200);
    let rs = get(&v, "results").as_array().unwrap();
    assert_eq!(error_code_of(&rs[0]), "future", "{v:?}");
    assert_eq!(error_code_of(&rs[1]), "unavailable", "{v:?}");
    assert_eq!(inbox_envelopes(&b, &bob).len(), 2);
}

/// A key log for `h` on the fake relay: a register entry and `rotations` rotations, served by
/// the fake; the current key is returned.
fn long_log(keylogs: &KeyLogs, h: &Handle, seed: u8, rotations: usize) -> SecretKey {
    let key = |i: usize| {
        SecretKey::from_seed(
            &[seed, (i % 251) as u8, (i / 251) as u8, 9]
                .repeat(8)
                .try_into()
                .unwrap(),
        )
    };
    let t0 = now_ms() - 100_000;
    let mut entries = vec![KeyLogEntry {
        handle: h.clone(),
        seq: 0,
        prev: None,
        ts: t0,
        op: KeyOp::Register {
            key: key(0).public(),
            recovery: None,
        },
        signer: key(0).public().key_id(),
    }
    .sign(&key(0), &[])
    .unwrap()];
    for i in 1..=rotations {
        let prev = entries.last().unwrap().hash();
        entries.push(
            KeyLogEntry {
                handle: h.clone(),
                seq: i as i64,
                prev: Some(prev),
                ts: t0 + i as i64,
                op: KeyOp::Rotate {
                    key: key(i).public(),
                },
                signer: key(i - 1).public().key_id(),
            }
            .sign(&key(i - 1), &[&key(i)])
            .unwrap(),
        );
    }
    keylogs.lock().unwrap().insert(
        h.as_str().to_owned(),
        obj(vec![(
            "entries",
            Value::Array(entries.iter().map(|e| e.value().clone()).collect()),
        )]),
    );
    key(rotations)
}

fn log_events(r: &RelayProc) -> i64 {
    let (_, text) = r.request_text("GET", "/metrics").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("formica_log_events "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Regression: a peer could grow this relay's durable store without bound with envelopes that
/// were refused anyway. For a sender whose key log was not cached, the log was fetched from the
/// origin and stored before the envelope's signature, recipients and policy were judged, and
/// nothing capped the cached logs (40 envelopes with bad signatures from made-up senders with
/// 60-entry logs added 2,400 events). Now a fetched log is stored only with an envelope it
/// verified that is accepted, one transfer fetches at most `keylog_fetches_per_transfer_max`
/// logs, and cached logs are capped per peer (`storage_full`, nothing evicted).
#[test]
fn a_peer_cannot_make_this_relay_store_key_logs_with_envelopes_it_refuses() {
    let root = tempdir("keylog-caps");
    let b = Node::start_with(
        &root,
        "b",
        60_000,
        "remote_keylogs_per_peer_max = 2\nkeylog_fetches_per_transfer_max = 5\n",
    );
    let bob = Peer::register(&b.proc_, "bob", 2);
    let bhost = b.proc_.host();
    let keylogs = KeyLogs::default();
    let fake = Fake::start(keylogs.clone());
    let body = canon::canonicalize(&obj(vec![(
        "descriptor",
        fake_descriptor(&fake.key, &fake.host),
    )]));
    let (_, (st, v)) = fake.signed(&b.proc_, &bhost, "/v1/federation/peers", &body);
    assert_eq!(st, 201, "{v:?}");
    // Six made-up senders on the fake, each with a 30-entry key log.
    let senders: Vec<(Handle, SecretKey)> = (0..6u8)
        .map(|i| {
            let h = Handle::parse(&format!("@made{i}@{}", fake.host)).unwrap();
            let k = long_log(&keylogs, &h, 0x90 + i, 29);
            (h, k)
        })
        .collect();
    let mk = |(from, key): &(Handle, SecretKey), text: &str| {
        Envelope {
            msg_type: MessageType::Message,
            type_version: 1,
            from: from.clone(),
            key: key.public().key_id(),
            to: vec![bob.handle.clone()],
            ts: now_ms(),
            corr: None,
            ack_by: None,
            conv: None,
            payload: Payload::Message {
                text: text.into(),
                data: None,
            },
        }
        .sign(key)
        .unwrap()
    };
    let results = |v: &Value| -> Vec<String> {
        get(v, "results")
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let c = error_code_of(r);
                if c.is_empty() {
                    result_of(r)
                } else {
                    c
                }
            })
            .collect()
    };
    let before = log_events(&b.proc_);

    // 1. Bad signatures (each envelope's signature is another envelope's): all refused, and
    //    nothing is stored, although every sender's log had to be fetched to find that out.
    let forged: Vec<SignedEnvelope> = senders[..4]
        .iter()
        .map(|s| {
            let good = mk(s, "forged");
            let other = mk(s, "another text");
            let mut v = good.value().clone();
            if let Value::Object(o) = &mut v {
                o.insert(
                    "sig",
                    other
                        .value()
                        .as_object()
                        .unwrap()
                        .get("sig")
                        .unwrap()
                        .clone(),
                );
            }
            SignedEnvelope::from_value(v, &Default::default()).unwrap()
        })
        .collect();
    let (_, _, (st, v)) = fake.transfer(&b.proc_, &bhost, &forged.iter().collect::<Vec<_>>());
    assert_eq!(st, 200, "{v:?}");
    assert_eq!(results(&v), vec!["bad_signature"; 4]);
    // 2. Good signatures, but bob has granted none of them: not_contact, nothing stored.
    let unasked: Vec<SignedEnvelope> = senders[..4].iter().map(|s| mk(s, "hello")).collect();
    let (_, _, (st, v)) = fake.transfer(&b.proc_, &bhost, &unasked.iter().collect::<Vec<_>>());
    assert_eq!(st, 200, "{v:?}");
    assert_eq!(results(&v), vec!["not_contact"; 4]);
    assert_eq!(
        log_events(&b.proc_),
        before,
        "refused envelopes stored events"
    );
    for (h, _) in &senders {
        assert_not_cached(&b.proc_, &h.to_string());
    }

    // 3. Bob grants all six. One transfer with an envelope from each: the first two are
    //    accepted with their logs; the next three reach remote_keylogs_per_peer_max (2) and are
    //    refused storage_full; the sixth would be a sixth fetch (keylog_fetches_per_transfer_max
    //    is 5) and is refused unavailable, to come again in a later transfer.
    for (h, _) in &senders {
        bob.allow(&b.proc_, h);
    }
    let granted: Vec<SignedEnvelope> = senders.iter().map(|s| mk(s, "granted")).collect();
    let (_, _, (st, v)) = fake.transfer(&b.proc_, &bhost, &granted.iter().collect::<Vec<_>>());
    assert_eq!(st, 200, "{v:?}");
    assert_eq!(
        results(&v),
        vec![
            "accepted",
            "accepted",
            "storage_full",
            "storage_full",
            "storage_full",
            "unavailable"
        ]
    );
    for (i, (h, _)) in senders.iter().enumerate() {
        let (st, v) = b
            .proc_
            .request("GET", &format!("/v1/keys/{h}"), &[], b"")
            .unwrap();
        if i < 2 {
            assert_eq!(st, 200, "{v:?}");
            assert_eq!(get(&v, "cached"), &Value::Bool(true));
            assert_eq!(get(&v, "entries").as_array().unwrap().len(), 30);
        } else {
            assert_not_cached(&b.proc_, &h.to_string());
        }
    }
    // 4. A later envelope from a cached sender needs no fetch and no room.
    let (_, _, (st, v)) = fake.transfer(&b.proc_, &bhost, &[&mk(&senders[0], "again")]);
    assert_eq!(st, 200, "{v:?}");
    assert_eq!(results(&v), vec!["accepted"]);
    assert_eq!(inbox_envelopes(&b, &bob).len(), 3);
}

#[test]
fn manual_peering_needs_approval_and_removal_stops_forwarding() {
    let root = tempdir("manual");
    let a = Node::start(&root, "a", 60_000);
    let b = Node::start(&root, "b", 60_000);
    // B approves peers by hand.
    let text_cfg = std::fs::read_to_string(&b.config)
        .unwrap()
        .replace("peering = \"open\"", "peering = \"manual\"");
    std::fs::write(&b.config, text_cfg).unwrap();
    let mut b = b;
    b.proc_.terminate();
    b.restart();
    let (ok, out) = a.peer_cmd(&["add", &format!("http://{}", b.host())]);
    assert!(ok && out.contains("\"requested\""), "{out}");
    let (_, list) = b.peer_cmd(&["list"]);
    assert!(list.contains("\"pending\""), "{list}");
    // Not yet mutual: A refuses to forward to B.
    let alice = Peer::register(&a.proc_, "alice", 1);
    let bob = Peer::register(&b.proc_, "bob", 2);
    let (st, _) =
        post_envelope(&a.proc_, &text(&alice, &[&bob.handle], "too early", None)).unwrap();
    assert_eq!(st, 404);
    let (ok, out) = b.peer_cmd(&["approve", &a.host()]);
    assert!(ok && out.contains("\"active\""), "{out}");
    let (_, list) = a.peer_cmd(&["list"]);
    assert!(
        list.contains("\"active\"") && !list.contains("\"requested\""),
        "{list}"
    );
    bob.allow(&b.proc_, &alice.handle);
    let id = post(&a, &text(&alice, &[&bob.handle], "now", None));
    wait_status(&a, &alice, &id, &bob.handle, "forwarded");
    // Removed on B: A's transfers are refused with peer_unknown and stay queued.
    let (ok, out) = b.peer_cmd(&["remove", &a.host()]);
    assert!(ok, "{out}");
    let id2 = post(&a, &text(&alice, &[&bob.handle], "after removal", None));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(statuses(&a, &alice, &id2)[0].1, "accepted");
    let (_, list) = a.peer_cmd(&["list"]);
    assert!(list.contains("\"queued\":1"), "{list}");
    // The admin endpoint needs the token.
    let (st, _) = a.proc_.request("GET", "/admin/v1/peers", &[], b"").unwrap();
    assert_eq!(st, 403);
}

/// Regression: `relay peer add` of a loopback peer without `allow_private_peers` said only
/// "resolves to no public address" (with the URL twice); it now names the settings that allow it.
#[test]
fn a_refused_loopback_peering_names_the_settings_that_allow_it() {
    let root = tempdir("private");
    let mut a = Node::start(&root, "a", 60_000);
    let b = Node::start(&root, "b", 60_000);
    let text_cfg = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace("allow_private_peers = true", "allow_private_peers = false");
    std::fs::write(&a.config, text_cfg).unwrap();
    a.proc_.terminate();
    a.restart();
    let (ok, out) = a.peer_cmd(&["add", &format!("http://{}", b.host())]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("allowlist") && out.contains("allow_private_peers = true"),
        "{out}"
    );
    assert!(out.contains("peer_unavailable"), "{out}");
}

/// Reads one HTTP/1.1 message (headers, then a Content-Length body) from `r`.
fn read_message(r: &mut BufReader<std::net::TcpStream>) -> Option<(Vec<String>, Vec<u8>)> {
    let mut lines = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        if h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        lines.push(h);
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((lines, body))
}

/// What the proxy does with the answer to B's first transfer (B has stored it).
#[derive(Clone, Copy)]
enum Lose {
    /// Closes A's connection at once.
    Close,
    /// Sends A nothing and keeps its connection open this long (past A's
    /// `request_timeout_ms`), then closes it.
    Stall(Duration),
}

/// A proxy in front of relay B that loses the answer to B's first transfer (B stores it, A
/// never hears back), then passes everything through. Returns the number of transfers seen.
fn lossy_proxy(listen: u16, to: u16, lose: Lose) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let lost = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let l = std::net::TcpListener::bind(("127.0.0.1", listen)).unwrap();
    let lost2 = lost.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(client) = c else { continue };
            let lost = lost2.clone();
            std::thread::spawn(move || {
                let mut cr = BufReader::new(client.try_clone().unwrap());
                let mut client = client;
                let Some((head, body)) = read_message(&mut cr) else {
                    return;
                };
                let Ok(up) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                    return;
                };
                let mut upw = up.try_clone().unwrap();
                let mut req: Vec<u8> = head
                    .iter()
                    .filter(|h| !h.to_ascii_lowercase().starts_with("connection:"))
                    .flat_map(|h| h.as_bytes().to_vec())
                    .collect();
                req.extend_from_slice(b"Connection: close\r\n\r\n");
                req.extend_from_slice(&body);
                if upw.write_all(&req).is_err() {
                    return;
                }
                let mut ur = BufReader::new(up);
                let Some((rhead, rbody)) = read_message(&mut ur) else {
                    return;
                };
                let transfer = head[0].starts_with("POST /v1/federation/transfer");
                if transfer && lost.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    // B has stored the transfer; A never hears back.
                    if let Lose::Stall(d) = lose {
                        std::thread::sleep(d);
                    }
                    return;
                }
                let mut resp: Vec<u8> = rhead
                    .iter()
                    .filter(|h| !h.to_ascii_lowercase().starts_with("connection:"))
                    .flat_map(|h| h.as_bytes().to_vec())
                    .collect();
                resp.extend_from_slice(b"Connection: close\r\n\r\n");
                resp.extend_from_slice(&rbody);
                let _ = client.write_all(&resp);
            });
        }
    });
    lost
}

#[test]
fn a_transfer_whose_answer_was_lost_is_duplicate_on_retry_and_delivered_once() {
    lost_answer("lost", Lose::Close);
}

/// A's transfer times out (`request_timeout_ms`, 2 s in `fed_config`) while B, which has stored
/// it, never answers and keeps the connection open: A retries on a new connection and bob gets
/// the message once (B knows the transfer, FED-5). The stall (60 s) outlasts `wait_status`
/// (15 s), so only A's own timeout can bring the retry: with a request timeout longer than
/// 15 s this test fails.
#[test]
fn a_transfer_that_timed_out_after_the_peer_stored_it_is_delivered_once() {
    lost_answer("stall", Lose::Stall(Duration::from_secs(60)));
}

fn lost_answer(name: &str, lose: Lose) {
    let root = tempdir(name);
    let a = Node::start(&root, "a", 60_000);
    // B is known as 127.0.0.1:<public>, where the proxy listens; B itself listens elsewhere.
    let public = free_port();
    let inner = free_port();
    let bdir = root.join("b");
    std::fs::create_dir_all(&bdir).unwrap();
    let bconfig = fed_config(&bdir, 60_000, "");
    let bproc = RelayProc::start_on(
        &bdir.join("data"),
        &bconfig,
        &format!("127.0.0.1:{inner}"),
        &format!("127.0.0.1:{public}"),
    );
    let lost = lossy_proxy(public, inner, lose);
    let b = Node {
        proc_: bproc,
        port: public,
        dir: bdir,
        config: bconfig,
    };
    a.peer_with(&b);
    let alice = Peer::register(&a.proc_, "alice", 1);
    let bob = Peer::register(&b.proc_, "bob", 2);
    bob.allow(&b.proc_, &alice.handle);
    let id = post(&a, &text(&alice, &[&bob.handle], "once only", None));
    wait_status(&a, &alice, &id, &bob.handle, "forwarded");
    assert!(
        lost.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the first answer was lost and the transfer retried"
    );
    let got: Vec<String> = inbox_envelopes(&b, &bob)
        .iter()
        .map(|e| get(e, "id").as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, vec![id]);
}
