//! Conversations across relays (SPEC.md CONVO-12..CONVO-17) with real relay processes on
//! loopback: three agents on three relays end with the same gap-free sequence while one
//! participant's relay is killed and restarted mid-conversation; a participant relay judges its
//! own invitees (a stranger's invitation is declined `unavailable`); posts of remote
//! participants travel through the home relay and their refusals come back as receipts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/fed.rs"]
mod fed;
#[path = "common/process.rs"]
mod process;

use fed::*;
use formica_protocol::envelope::{
    ConvActionKind, ConvMode, ConvRole, Envelope, Invitee, MessageId, MessageType, Payload,
    SignedEnvelope,
};
use formica_protocol::{Handle, Value};
use process::*;
use std::time::{Duration, Instant};

fn envelope(
    from: &Peer,
    to: &[&Handle],
    payload: Payload,
    conv: Option<MessageId>,
) -> SignedEnvelope {
    let msg_type = match &payload {
        Payload::Message { .. } => MessageType::Message,
        Payload::Call { .. } => MessageType::Call,
        Payload::ConvAction { .. } => MessageType::ConvAction,
        _ => unreachable!(),
    };
    Envelope {
        msg_type,
        type_version: 1,
        from: from.handle.clone(),
        key: from.key.public().key_id(),
        to: to.iter().map(|h| (*h).clone()).collect(),
        ts: now_ms(),
        corr: None,
        ack_by: None,
        conv,
        payload,
    }
    .sign(&from.key)
    .unwrap()
}

fn call(from: &Peer, to: &[&Handle], turns: Option<i64>) -> SignedEnvelope {
    envelope(
        from,
        to,
        Payload::Call {
            topic: "review PR 7".into(),
            mode: ConvMode::Async,
            participants: to
                .iter()
                .map(|h| Invitee {
                    handle: (*h).clone(),
                    role: ConvRole::Member,
                })
                .collect(),
            turns,
            expires: None,
        },
        None,
    )
}

fn act(from: &Peer, owner: &Handle, conv: MessageId, action: ConvActionKind) -> SignedEnvelope {
    envelope(
        from,
        &[owner],
        Payload::ConvAction {
            action,
            reason: None,
            participants: None,
        },
        Some(conv),
    )
}

fn say(from: &Peer, to: &[&Handle], conv: MessageId, text: &str) -> SignedEnvelope {
    envelope(
        from,
        to,
        Payload::Message {
            text: text.into(),
            data: None,
        },
        Some(conv),
    )
}

fn get<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.as_object()
        .unwrap()
        .get(k)
        .unwrap_or_else(|| panic!("no {k} in {v:?}"))
}

fn send(r: &Node, se: &SignedEnvelope) -> Value {
    let (st, v) = post_envelope(&r.proc_, se).unwrap();
    assert_eq!(st, 201, "{v:?}");
    v
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

/// The conversation's entries as `p` reads them on `r`: (seq, hash, prev, envelope id or event).
fn entries(r: &Node, p: &Peer, conv: &MessageId) -> Vec<(i64, String, String, String)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (st, v) = p.authed(
            &r.proc_,
            "GET",
            &format!("/v1/conversations/{conv}/entries?after={after}"),
            b"",
        );
        assert_eq!(st, 200, "{v:?}");
        let page = get(&v, "entries").as_array().unwrap().to_vec();
        if page.is_empty() {
            return out;
        }
        for e in &page {
            let what = match e.as_object().unwrap().get("envelope") {
                Some(env) => get(env, "id").as_str().unwrap().to_owned(),
                None => format!("{:?}", get(e, "event")),
            };
            out.push((
                get(e, "seq").as_i64().unwrap(),
                get(e, "hash").as_str().unwrap().to_owned(),
                get(e, "prev").as_str().unwrap().to_owned(),
                what,
            ));
        }
        after = get(&v, "next").as_i64().unwrap();
    }
}

fn summary(r: &Node, p: &Peer, conv: &MessageId) -> Option<Value> {
    let (st, v) = p.authed(&r.proc_, "GET", &format!("/v1/conversations/{conv}"), b"");
    (st == 200).then_some(v)
}

fn state_of(s: &Value, h: &Handle) -> String {
    get(s, "participants")
        .as_array()
        .unwrap()
        .iter()
        .find(|p| get(p, "handle").as_str() == Some(h.as_str()))
        .map(|p| get(p, "state").as_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn wait_state(r: &Node, p: &Peer, conv: &MessageId, who: &Handle, want: &str) {
    wait_until(
        &format!("{who} to be {want} on {}", r.host()),
        Duration::from_secs(20),
        || summary(r, p, conv).is_some_and(|s| state_of(&s, who) == want),
    );
}

fn inbox_ids(r: &Node, p: &Peer) -> Vec<String> {
    let (st, v) = p.authed(&r.proc_, "GET", "/v1/inbox?after=0&limit=100", b"");
    assert_eq!(st, 200, "{v:?}");
    get(&v, "items")
        .as_array()
        .unwrap()
        .iter()
        .map(|i| get(get(i, "envelope"), "id").as_str().unwrap().to_owned())
        .collect()
}

/// Checks a sequence: seq 1..n without gaps, each entry linked to the one before.
fn assert_linked(es: &[(i64, String, String, String)]) {
    let mut prev = "0".repeat(64);
    for (i, (seq, hash, p, _)) in es.iter().enumerate() {
        assert_eq!(*seq, i as i64 + 1, "gap at {i}");
        assert_eq!(p, &prev, "entry {seq} does not link to the one before");
        prev = hash.clone();
    }
}

#[test]
fn three_relays_end_with_one_sequence_while_a_participant_relay_restarts() {
    let root = tempdir("conv3");
    let a = Node::start(&root, "a", 60_000);
    let b = Node::start(&root, "b", 60_000);
    let mut c = Node::start(&root, "c", 60_000);
    a.peer_with(&b);
    a.peer_with(&c);
    b.peer_with(&c);
    let alice = Peer::register(&a.proc_, "alice", 11);
    let bob = Peer::register(&b.proc_, "bob", 12);
    let carol = Peer::register(&c.proc_, "carol", 13);
    bob.allow(&b.proc_, &alice.handle);
    carol.allow(&c.proc_, &alice.handle);

    // The call is entry 1 at alice's relay, which is the conversation's home.
    let cl = call(&alice, &[&bob.handle, &carol.handle], None);
    let v = send(&a, &cl);
    assert_eq!(get(&v, "seq").as_i64(), Some(1), "{v:?}");
    let conv = cl.id();
    // Each participant relay holds a replica, and delivers the call to its invitee's inbox.
    wait_until("the call in bob's inbox", Duration::from_secs(20), || {
        inbox_ids(&b, &bob).contains(&conv.to_hex())
    });
    wait_until("the call in carol's inbox", Duration::from_secs(20), || {
        inbox_ids(&c, &carol).contains(&conv.to_hex())
    });
    let s = summary(&b, &bob, &conv).expect("bob reads the conversation on his relay");
    assert_eq!(get(&s, "home").as_str(), Some(a.host().as_str()), "{s:?}");
    assert_eq!(state_of(&s, &bob.handle), "ringing");

    // Answers go through the participant's own relay to the home relay; the 201 carries the
    // conversation but no seq (the home relay gives it).
    let v = send(&b, &act(&bob, &alice.handle, conv, ConvActionKind::Accept));
    assert_eq!(get(&v, "conv").as_str(), Some(conv.to_hex().as_str()));
    assert!(v.as_object().unwrap().get("seq").is_none(), "{v:?}");
    send(
        &c,
        &act(&carol, &alice.handle, conv, ConvActionKind::Accept),
    );
    wait_state(&a, &alice, &conv, &bob.handle, "joined");
    wait_state(&a, &alice, &conv, &carol.handle, "joined");
    wait_state(&c, &carol, &conv, &bob.handle, "joined");

    let all = |p: &Peer| -> Vec<Handle> {
        [&alice, &bob, &carol]
            .iter()
            .filter(|x| x.handle != p.handle)
            .map(|x| x.handle.clone())
            .collect()
    };
    let mut posted = Vec::new();
    for round in 0..3 {
        for (p, r) in [(&alice, &a), (&bob, &b), (&carol, &c)] {
            let to = all(p);
            let se = say(
                p,
                &to.iter().collect::<Vec<_>>(),
                conv,
                &format!("{} {round}", p.handle),
            );
            send(r, &se);
            posted.push((se.id().to_hex(), p.handle.clone()));
        }
    }
    // Carol's relay goes down mid-conversation; the others go on.
    c.proc_.kill();
    for round in 3..6 {
        for (p, r) in [(&alice, &a), (&bob, &b)] {
            let to = all(p);
            let se = say(
                p,
                &to.iter().collect::<Vec<_>>(),
                conv,
                &format!("{} {round}", p.handle),
            );
            send(r, &se);
            posted.push((se.id().to_hex(), p.handle.clone()));
        }
    }
    c.restart();
    let to = all(&carol);
    let se = say(&carol, &to.iter().collect::<Vec<_>>(), conv, "back");
    // Carol's relay may need a moment to see its replica again after the restart: a post is
    // judged against it.
    send(&c, &se);
    posted.push((se.id().to_hex(), carol.handle.clone()));

    // 1 call + 2 accepts + 9 + 6 + 1 posts.
    let want = 1 + 2 + posted.len();
    wait_until(
        "every relay to hold every entry",
        Duration::from_secs(30),
        || {
            [(&a, &alice), (&b, &bob), (&c, &carol)]
                .iter()
                .all(|(r, p)| entries(r, p, &conv).len() == want)
        },
    );
    let ea = entries(&a, &alice, &conv);
    assert_linked(&ea);
    assert_eq!(
        entries(&b, &bob, &conv),
        ea,
        "bob's relay holds another sequence"
    );
    assert_eq!(
        entries(&c, &carol, &conv),
        ea,
        "carol's relay holds another sequence"
    );
    for (id, _) in &posted {
        assert!(ea.iter().any(|e| &e.3 == id), "post {id} is missing");
    }
    // The heads agree too.
    let head = |r: &Node, p: &Peer| get(&summary(r, p, &conv).unwrap(), "head").clone();
    assert_eq!(head(&a, &alice), head(&b, &bob));
    assert_eq!(head(&a, &alice), head(&c, &carol));
    // Each sender's relay shows where its posts stand: the seq the home relay gave them.
    for (id, from) in &posted {
        let (r, p) = [(&a, &alice), (&b, &bob), (&c, &carol)]
            .into_iter()
            .find(|(_, p)| &p.handle == from)
            .unwrap();
        let (st, v) = p.authed(&r.proc_, "GET", &format!("/v1/messages/{id}"), b"");
        assert_eq!(st, 200, "{v:?}");
        let want = ea.iter().find(|e| &e.3 == id).unwrap().0;
        assert_eq!(get(&v, "seq").as_i64(), Some(want), "{v:?}");
        assert_eq!(get(&v, "conv").as_str(), Some(conv.to_hex().as_str()));
    }
    // Every post reached every other participant's inbox, once.
    for (r, p) in [(&a, &alice), (&b, &bob), (&c, &carol)] {
        let ids = inbox_ids(r, p);
        let mut seen = std::collections::HashSet::new();
        for id in &ids {
            assert!(
                seen.insert(id.clone()),
                "{id} twice in {}'s inbox",
                p.handle
            );
        }
        for (id, from) in &posted {
            assert_eq!(
                ids.contains(id),
                from != &p.handle,
                "post {id} from {from} in {}'s inbox",
                p.handle
            );
        }
    }
}

// ---- a test double for the home relay: what a participant relay accepts from it ----

use formica_protocol::auth::{Nonce, RelayAuth, RequestTarget};
use formica_protocol::conversation::replica::Batch;
use formica_protocol::conversation::{ConvEvent, Entry, EntryBody, FIRST_PREV};
use formica_protocol::keylog::{KeyLogEntry, KeyOp};
use formica_protocol::{canon, Domain, Object, RelayHost, SecretKey};
use std::io::{BufRead, BufReader, Read, Write};

/// A fake home relay: a relay key, a descriptor, its agent's key log, and an answer to every
/// transfer that refuses each envelope with `conversation_closed`. Counts the transfers.
struct Fake {
    key: SecretKey,
    host: RelayHost,
    transfers: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn descriptor(key: &SecretKey, host: &RelayHost) -> Value {
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
    fn start(agent_log: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>) -> Fake {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = RelayHost::parse(&l.local_addr().unwrap().to_string()).unwrap();
        let key = SecretKey::from_seed(&[0x66; 32]);
        let transfers = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (k2, h2, t2) = (key.clone(), host.clone(), transfers.clone());
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
                    (200, descriptor(&k2, &h2))
                } else if let Some(h) = path.strip_prefix("/v1/keys/") {
                    match agent_log.lock().unwrap().iter().find(|(x, _)| x == h) {
                        Some((_, v)) => (200, v.clone()),
                        None => (404, Value::Null),
                    }
                } else if path == "/v1/federation/transfer" {
                    t2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let v = formica_protocol::json::parse(&body, Default::default()).unwrap();
                    let n = get(&v, "envelopes").as_array().unwrap().len();
                    let results = (0..n)
                        .map(|i| {
                            obj(vec![
                                ("index", Value::Int(i as i64)),
                                (
                                    "error",
                                    obj(vec![
                                        ("code", "conversation_closed".into()),
                                        ("message", "closed".into()),
                                        ("retry", "no".into()),
                                    ]),
                                ),
                            ])
                        })
                        .collect();
                    (
                        200,
                        obj(vec![
                            ("txn", get(&v, "txn").clone()),
                            ("results", Value::Array(results)),
                        ]),
                    )
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
        Fake {
            key,
            host,
            transfers,
        }
    }

    fn post(&self, r: &RelayProc, path: &str, body: &[u8]) -> (u16, Value) {
        let mut n = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut n);
        let h = RelayAuth::sign(
            &self.key,
            &self.host,
            &r.host(),
            now_ms(),
            Nonce(n),
            &RequestTarget {
                method: "POST",
                path,
                body,
            },
        );
        r.request("POST", path, &[("authorization", h)], body)
            .unwrap()
    }

    fn batch(&self, r: &RelayProc, b: &Batch) -> (u16, Value) {
        self.post(
            r,
            "/v1/federation/conversation",
            &canon::canonicalize(&b.to_value()),
        )
    }
}

fn code_of(v: &Value) -> String {
    v.as_object()
        .and_then(|o| o.get("error"))
        .and_then(|e| e.as_object())
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn next(prev: &Entry, body: EntryBody, at: i64) -> Entry {
    Entry {
        conv: prev.conv,
        seq: prev.seq + 1,
        at,
        prev: prev.hash(),
        body,
    }
}

#[test]
fn a_participant_relay_keeps_what_the_home_relay_sent_and_nothing_else() {
    let root = tempdir("convfake");
    // One replica per home relay here, so that the bound shows (CONVO-17).
    let b = Node::start_with(
        &root,
        "b",
        60_000,
        "\n[conversations]\nremote_max = 4\nremote_per_peer_max = 1\n",
    );
    let bob = Peer::register(&b.proc_, "bob", 21);
    let dave = Peer::register(&b.proc_, "dave", 22);
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let fake = Fake::start(logs.clone());
    // Hal, an agent of the fake relay, with a valid key log served there.
    let hal_key = SecretKey::from_seed(&[0x71; 32]);
    let hal_handle = Handle::parse(&format!("@hal@{}", fake.host)).unwrap();
    let reg = KeyLogEntry {
        handle: hal_handle.clone(),
        seq: 0,
        prev: None,
        ts: now_ms() - 1000,
        op: KeyOp::Register {
            key: hal_key.public(),
            recovery: None,
        },
        signer: hal_key.public().key_id(),
    }
    .sign(&hal_key, &[])
    .unwrap();
    logs.lock().unwrap().push((
        hal_handle.as_str().to_owned(),
        obj(vec![("entries", Value::Array(vec![reg.value().clone()]))]),
    ));
    let hal = Peer::offline(hal_handle.clone(), hal_key, fake.host.clone());
    // Peering (b's policy is open).
    let body = canon::canonicalize(&obj(vec![(
        "descriptor",
        descriptor(&fake.key, &fake.host),
    )]));
    let (st, v) = fake.post(&b.proc_, "/v1/federation/peers", &body);
    assert_eq!(st, 201, "{v:?}");
    bob.allow(&b.proc_, &hal.handle);

    // Entry 1: hal calls bob (who granted him) and dave (who did not).
    let cl = call(&hal, &[&bob.handle, &dave.handle], Some(10));
    let conv = cl.id();
    let t0 = now_ms();
    let e1 = Entry {
        conv,
        seq: 1,
        at: t0,
        prev: FIRST_PREV,
        body: EntryBody::Envelope(cl.clone()),
    };
    let batch = |entries: Vec<Entry>| Batch {
        conv,
        to: vec![bob.handle.clone(), dave.handle.clone()],
        turns: 10,
        expires: t0 + 3_600_000,
        entries,
    };
    // A batch naming nobody registered here starts no replica.
    let mut nobody = batch(vec![e1.clone()]);
    nobody.to = vec![Handle::parse(&format!("@zed@{}", b.host())).unwrap()];
    let (st, v) = fake.batch(&b.proc_, &nobody);
    assert_eq!((st, code_of(&v).as_str()), (421, "wrong_relay"), "{v:?}");
    // A turn limit above this relay's maximum starts none either.
    let mut long = batch(vec![e1.clone()]);
    long.turns = 1_000_000;
    let (st, v) = fake.batch(&b.proc_, &long);
    assert_eq!((st, code_of(&v).as_str()), (400, "invalid_field"), "{v:?}");
    // A batch whose entry does not hash: refused with the path.
    let mut bad = canon::canonicalize(&batch(vec![e1.clone()]).to_value());
    let s = String::from_utf8(bad.clone()).unwrap();
    let h = e1.hash();
    let hex = formica_protocol::hex::encode(&h);
    bad = s.replacen(&hex, &"f".repeat(64), 1).into_bytes();
    let (st, v) = fake.post(&b.proc_, "/v1/federation/conversation", &bad);
    assert_eq!((st, code_of(&v).as_str()), (400, "invalid_field"), "{v:?}");

    // The call: bob gets it, dave is declined for (unavailable) and does not.
    let (st, v) = fake.batch(&b.proc_, &batch(vec![e1.clone()]));
    assert_eq!(st, 200, "{v:?}");
    assert_eq!(get(&v, "seq").as_i64(), Some(1));
    assert_eq!(
        get(&v, "declined"),
        &Value::Array(vec![obj(vec![
            ("handle", dave.handle.as_str().into()),
            ("reason", "unavailable".into())
        ])])
    );
    assert!(inbox_ids(&b, &bob).contains(&conv.to_hex()));
    assert!(!inbox_ids(&b, &dave).contains(&conv.to_hex()));
    let s = summary(&b, &bob, &conv).unwrap();
    assert_eq!(get(&s, "home").as_str(), Some(fake.host.as_str()));
    assert_eq!(get(&s, "turns").as_i64(), Some(10));
    // A second conversation from the same home relay is past remote_per_peer_max.
    let cl2 = call(&hal, &[&bob.handle], None);
    let e1b = Entry {
        conv: cl2.id(),
        seq: 1,
        at: t0,
        prev: FIRST_PREV,
        body: EntryBody::Envelope(cl2.clone()),
    };
    let mut second = batch(vec![e1b]);
    second.conv = cl2.id();
    let (st, v) = fake.batch(&b.proc_, &second);
    assert_eq!(
        (st, code_of(&v).as_str()),
        (409, "too_many_conversations"),
        "{v:?}"
    );
    assert!(!inbox_ids(&b, &bob).contains(&cl2.id().to_hex()));
    // The same batch again changes nothing, and repeats the decline (dave still rings in the
    // replica): an answer the home relay lost loses no decline.
    let (st, v) = fake.batch(&b.proc_, &batch(vec![e1.clone()]));
    assert_eq!((st, get(&v, "seq").as_i64()), (200, Some(1)), "{v:?}");
    assert_eq!(inbox_ids(&b, &bob).len(), 1);
    let (_, v) = fake.batch(&b.proc_, &batch(vec![]));
    assert_eq!(
        get(&v, "declined"),
        &Value::Array(vec![obj(vec![
            ("handle", dave.handle.as_str().into()),
            ("reason", "unavailable".into())
        ])]),
        "{v:?}"
    );
    // A post to bob, who has not joined: no home relay could accept it, refused.
    let early = say(&hal, &[&bob.handle], conv, "you did not accept");
    let bad_post = next(&e1, EntryBody::Envelope(early), t0 + 1);
    let (st, v) = fake.batch(&b.proc_, &batch(vec![bad_post]));
    assert_eq!((st, code_of(&v).as_str()), (400, "invalid_field"), "{v:?}");
    assert_eq!(
        get(get(&v, "error"), "field").as_str(),
        Some("entries[0].envelope")
    );
    // Entry 2 that does not link to the entry held: equivocation too.
    let mut unlinked = next(
        &e1,
        EntryBody::Event(ConvEvent::Missed {
            handle: bob.handle.clone(),
        }),
        t0 + 1,
    );
    unlinked.prev = [5; 32];
    let (st, v) = fake.batch(&b.proc_, &batch(vec![unlinked]));
    assert_eq!(
        (st, code_of(&v).as_str()),
        (409, "conversation_fork"),
        "{v:?}"
    );
    // Another entry at seq 1: equivocation, refused; the one held stays.
    let mut other = e1.clone();
    other.at += 1;
    let (st, v) = fake.batch(&b.proc_, &batch(vec![other]));
    assert_eq!(
        (st, code_of(&v).as_str()),
        (409, "conversation_fork"),
        "{v:?}"
    );
    // A gap: nothing changes, the answer says where to resume.
    let e2 = next(
        &e1,
        EntryBody::Event(ConvEvent::Declined {
            handle: dave.handle.clone(),
            reason: "unavailable".into(),
        }),
        t0 + 1,
    );
    let e3 = next(
        &e2,
        EntryBody::Event(ConvEvent::Missed {
            handle: bob.handle.clone(),
        }),
        t0 + 2,
    );
    let (st, v) = fake.batch(&b.proc_, &batch(vec![e3.clone()]));
    assert_eq!((st, get(&v, "seq").as_i64()), (200, Some(1)), "{v:?}");
    let (st, v) = fake.batch(&b.proc_, &batch(vec![e2.clone(), e3.clone()]));
    assert_eq!((st, get(&v, "seq").as_i64()), (200, Some(3)), "{v:?}");
    assert_eq!(entries(&b, &bob, &conv).len(), 3);
    assert_eq!(
        get(&summary(&b, &bob, &conv).unwrap(), "head").as_str(),
        Some(formica_protocol::hex::encode(&e3.hash()).as_str())
    );
    // An envelope whose signature does not verify: refused, nothing stored.
    let mut forged = act(&bob, &hal.handle, conv, ConvActionKind::Accept);
    forged = {
        let mut v = forged.value().clone();
        if let Value::Object(o) = &mut v {
            o.insert("sig", "0".repeat(128).into());
        }
        SignedEnvelope::from_value(v, &Default::default()).unwrap_or(forged)
    };
    let e4 = next(&e3, EntryBody::Envelope(forged), t0 + 3);
    let (st, v) = fake.batch(&b.proc_, &batch(vec![e4]));
    assert_eq!((st, code_of(&v).as_str()), (400, "bad_signature"), "{v:?}");
    assert_eq!(entries(&b, &bob, &conv).len(), 3);

    // Bob accepts through his relay, which queues it for the home relay only; the home relay
    // refuses it (the double says conversation_closed): dead-lettered, with a receipt.
    let accept = act(&bob, &hal.handle, conv, ConvActionKind::Accept);
    let v = send(&b, &accept);
    assert!(v.as_object().unwrap().get("seq").is_none(), "{v:?}");
    wait_until("the home relay's refusal", Duration::from_secs(20), || {
        let (_, v) = bob.authed(
            &b.proc_,
            "GET",
            &format!("/v1/messages/{}", accept.id()),
            b"",
        );
        format!("{v:?}").contains("dead_lettered")
    });
    assert!(fake.transfers.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let (_, v) = bob.authed(
        &b.proc_,
        "GET",
        &format!("/v1/messages/{}", accept.id()),
        b"",
    );
    assert!(format!("{v:?}").contains("conversation_closed"), "{v:?}");
}
