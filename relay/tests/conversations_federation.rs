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
