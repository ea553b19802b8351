//! App-level tests without sockets (`Router::oneshot`): conversations (SPEC.md section 19):
//! calls, actions, posts, the sequence and its hash links, reading, timers, limits, privacy.
//! Named after the behaviour they check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use formica_protocol::conversation::Entry;
use formica_protocol::envelope::*;
use formica_protocol::{Availability, Handle, Status, Value};

async fn grant(r: &TestRelay, owner: &Agent, who: &Agent) {
    owner
        .put_contact(r, &who.handle, "message")
        .await
        .expect(200, "");
}

fn call(
    r: &TestRelay,
    from: &Agent,
    to: &[&Agent],
    mode: ConvMode,
    turns: Option<i64>,
) -> SignedEnvelope {
    let mut e = from.envelope(
        r,
        &to.iter().map(|a| &a.handle).collect::<Vec<_>>(),
        Payload::Call {
            topic: "review PR 7".into(),
            mode,
            participants: to
                .iter()
                .map(|a| Invitee {
                    handle: a.handle.clone(),
                    role: ConvRole::Member,
                })
                .collect(),
            turns,
            expires: None,
        },
    );
    e.conv = None;
    e.sign(&from.key).unwrap()
}

fn act(
    r: &TestRelay,
    from: &Agent,
    owner: &Handle,
    conv: MessageId,
    action: ConvActionKind,
) -> SignedEnvelope {
    let mut e = from.envelope(
        r,
        &[owner],
        Payload::ConvAction {
            action,
            reason: None,
            participants: None,
        },
    );
    e.conv = Some(conv);
    e.sign(&from.key).unwrap()
}

fn post(
    r: &TestRelay,
    from: &Agent,
    to: &[&Handle],
    conv: MessageId,
    text: &str,
) -> SignedEnvelope {
    let mut e = from.envelope(
        r,
        to,
        Payload::Message {
            text: text.into(),
            data: None,
        },
    );
    e.conv = Some(conv);
    e.sign(&from.key).unwrap()
}

/// Sends `se`, expects 201 and returns the entry's seq.
async fn seq_of(r: &TestRelay, a: &Agent, se: &SignedEnvelope) -> i64 {
    let resp = a.send(r, se).await;
    resp.expect(201, "");
    resp.get("seq").as_i64().unwrap()
}

async fn entries(r: &TestRelay, a: &Agent, conv: &MessageId, after: u64) -> Resp {
    a.authed(
        r,
        "GET",
        &format!("/v1/conversations/{conv}/entries?after={after}"),
        b"",
    )
    .await
}

async fn tick(r: &TestRelay) {
    r.relay
        .app
        .engine
        .writer
        .submit(formica_relay::engine::decide::Command::Tick)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_call_is_accepted_answered_and_posted_to_in_one_linked_sequence() {
    let r = TestRelay::new();
    let owner = r.agent("owner").await;
    let nova = r.agent("nova").await;
    let sage = r.agent("sage").await;
    // A stranger's call is refused: a contact request comes first.
    let c = call(&r, &owner, &[&nova], ConvMode::Live, None);
    owner.send(&r, &c).await.expect(403, "not_contact");
    grant(&r, &nova, &owner).await;
    grant(&r, &sage, &owner).await;
    let c = call(&r, &owner, &[&nova, &sage], ConvMode::Live, Some(3));
    let resp = owner.send(&r, &c).await;
    resp.expect(201, "");
    assert_eq!(resp.str_("conv"), c.id().to_hex());
    assert_eq!(resp.get("seq").as_i64(), Some(1));
    let id = c.id();
    // The call is in the invitees' inboxes, and in their list of calls.
    assert!(nova
        .inbox(&r, 0)
        .await
        .iter()
        .any(|i| field(item_env(i), &["id"]).as_str() == Some(&id.to_hex())));
    let calls = nova
        .authed(&r, "GET", "/v1/conversations?mine=ringing", b"")
        .await;
    calls.expect(200, "");
    assert_eq!(calls.get("conversations").as_array().unwrap().len(), 1);
    // Nova may not post before it accepts.
    nova.send(&r, &post(&r, &nova, &[&owner.handle], id, "early"))
        .await
        .expect(403, "not_participant");
    assert_eq!(
        seq_of(
            &r,
            &nova,
            &act(&r, &nova, &owner.handle, id, ConvActionKind::Accept)
        )
        .await,
        2
    );
    r.advance(1);
    nova.send(
        &r,
        &act(&r, &nova, &owner.handle, id, ConvActionKind::Accept),
    )
    .await
    .expect(409, "action_not_allowed");
    // Posts only to joined participants.
    owner
        .send(&r, &post(&r, &owner, &[&sage.handle], id, "x"))
        .await
        .expect(403, "not_participant");
    assert_eq!(
        seq_of(&r, &owner, &post(&r, &owner, &[&nova.handle], id, "one")).await,
        3
    );
    r.advance(1);
    assert_eq!(
        seq_of(&r, &nova, &post(&r, &nova, &[&owner.handle], id, "two")).await,
        4
    );
    r.advance(1);
    // The third post reaches the turn limit: the close follows it at once.
    assert_eq!(
        seq_of(&r, &owner, &post(&r, &owner, &[&nova.handle], id, "three")).await,
        5
    );
    nova.send(&r, &post(&r, &nova, &[&owner.handle], id, "four"))
        .await
        .expect(409, "turn_limit_reached");
    let page = entries(&r, &nova, &id, 0).await;
    page.expect(200, "");
    let list = page.get("entries").as_array().unwrap();
    assert_eq!(list.len(), 6);
    assert_eq!(page.get("next").as_i64(), Some(6));
    let mut prev = [0u8; 32];
    for (i, v) in list.iter().enumerate() {
        let e = Entry::from_value(v, &EnvelopeLimits::default()).unwrap();
        assert_eq!(e.seq, i as u64 + 1);
        assert_eq!(e.prev, prev);
        prev = e.hash();
    }
    assert_eq!(
        field(&list[5], &["event", "reason"]).as_str(),
        Some("turn_limit")
    );
    let s = owner
        .authed(&r, "GET", &format!("/v1/conversations/{id}"), b"")
        .await;
    s.expect(200, "");
    assert_eq!(s.str_("state"), "closed");
    assert_eq!(s.str_("reason"), "turn_limit");
    assert_eq!(s.str_("head"), formica_protocol::hex::encode(&prev));
    // Paging resumes without gaps or repeats.
    let rest = entries(&r, &sage, &id, 4).await;
    assert_eq!(rest.get("entries").as_array().unwrap().len(), 2);
    entries(&r, &sage, &id, 7)
        .await
        .expect(400, "invalid_cursor");
}

#[tokio::test]
async fn a_non_participant_gets_the_answer_of_an_unknown_conversation() {
    let r = TestRelay::new();
    let owner = r.agent("owner").await;
    let nova = r.agent("nova").await;
    let eve = r.agent("eve").await;
    grant(&r, &nova, &owner).await;
    let c = call(&r, &owner, &[&nova], ConvMode::Async, None);
    owner.send(&r, &c).await.expect(201, "");
    let unknown = MessageId([7; 32]);
    for path in ["", "/entries"] {
        let a = eve
            .authed(
                &r,
                "GET",
                &format!("/v1/conversations/{}{path}", c.id()),
                b"",
            )
            .await;
        let b = eve
            .authed(
                &r,
                "GET",
                &format!("/v1/conversations/{unknown}{path}"),
                b"",
            )
            .await;
        a.expect(404, "not_found");
        // The same answer, but for the id asked about.
        let a_body = String::from_utf8(a.raw.clone()).unwrap();
        let b_body = String::from_utf8(b.raw.clone()).unwrap();
        assert_eq!(
            a_body.replace(&c.id().to_hex(), "ID"),
            b_body.replace(&unknown.to_hex(), "ID")
        );
        // An action on it is not_participant.
        eve.send(
            &r,
            &act(&r, &eve, &owner.handle, c.id(), ConvActionKind::Accept),
        )
        .await
        .expect(403, "not_participant");
    }
}

#[tokio::test]
async fn busy_declines_a_live_call_and_an_unanswered_one_rings_out() {
    let r = TestRelay::new();
    let owner = r.agent("owner").await;
    let nova = r.agent("nova").await;
    let sage = r.agent("sage").await;
    grant(&r, &nova, &owner).await;
    grant(&r, &sage, &owner).await;
    let st = Status {
        handle: nova.handle.clone(),
        key: nova.key.public().key_id(),
        ts: r.now(),
        expires: r.now() + 600_000,
        status: Availability::Busy,
        note: None,
    };
    nova.authed(
        &r,
        "PUT",
        "/v1/presence",
        st.sign(&nova.key).unwrap().wire(),
    )
    .await
    .expect(200, "");
    let c = call(&r, &owner, &[&nova, &sage], ConvMode::Live, None);
    owner.send(&r, &c).await.expect(201, "");
    let id = c.id();
    let page = entries(&r, &owner, &id, 0).await;
    let list = page.get("entries").as_array().unwrap().to_vec();
    assert_eq!(list.len(), 2);
    assert_eq!(
        field(&list[1], &["event", "kind"]).as_str(),
        Some("declined")
    );
    assert_eq!(field(&list[1], &["event", "reason"]).as_str(), Some("busy"));
    // Sage does not answer: after ring_ms it is missed, and the conversation (owner and a
    // missed invitee) stays open; sage can still accept.
    r.advance(60_001);
    tick(&r).await;
    let s = owner
        .authed(&r, "GET", &format!("/v1/conversations/{id}"), b"")
        .await;
    let parts = s.get("participants").as_array().unwrap();
    let sage_state = parts
        .iter()
        .find(|p| field(p, &["handle"]).as_str() == Some(sage.handle.as_str()))
        .unwrap();
    assert_eq!(field(sage_state, &["state"]).as_str(), Some("missed"));
    assert_eq!(s.str_("state"), "ringing");
    sage.send(
        &r,
        &act(&r, &sage, &owner.handle, id, ConvActionKind::Accept),
    )
    .await
    .expect(201, "");
    // Sage leaves: fewer than two remain, so the conversation closes (everyone_left).
    r.advance(1);
    sage.send(
        &r,
        &act(&r, &sage, &owner.handle, id, ConvActionKind::Leave),
    )
    .await
    .expect(201, "");
    let s = owner
        .authed(&r, "GET", &format!("/v1/conversations/{id}"), b"")
        .await;
    assert_eq!(s.str_("reason"), "everyone_left");
    // Sage's leave closed it: sage reads the close too, and sees it closed.
    let mine = sage
        .authed(&r, "GET", &format!("/v1/conversations/{id}"), b"")
        .await;
    mine.expect(200, "");
    assert_eq!(mine.str_("reason"), "everyone_left");
    assert_eq!(mine.get("seq"), s.get("seq"));
    // Nova, declined for busy at entry 2, reads up to it and sees the conversation as it stood
    // then: ringing, with sage still ringing.
    let theirs = entries(&r, &nova, &id, 0).await;
    assert_eq!(theirs.get("entries").as_array().unwrap().len(), 2);
    let then = nova
        .authed(&r, "GET", &format!("/v1/conversations/{id}"), b"")
        .await;
    assert_eq!(then.str_("state"), "ringing");
    assert_eq!(then.get("seq").as_i64(), Some(2));
    entries(&r, &nova, &id, 3)
        .await
        .expect(400, "invalid_cursor");
    // Its list does not tell it the conversation has closed since: still open as it saw it.
    let open = nova
        .authed(&r, "GET", "/v1/conversations?state=open", b"")
        .await;
    assert_eq!(open.get("conversations").as_array().unwrap().len(), 1);
    let open = sage
        .authed(&r, "GET", "/v1/conversations?state=open", b"")
        .await;
    assert_eq!(open.get("conversations").as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn conversations_survive_a_restart_and_closed_ones_are_removed_in_time() {
    let store = std::sync::Arc::new(formica_relay::store::MemStore::default());
    let r = TestRelay::with(config(0), store.clone());
    let owner = r.agent("owner").await;
    let nova = r.agent("nova").await;
    grant(&r, &nova, &owner).await;
    let c = call(&r, &owner, &[&nova], ConvMode::Async, None);
    owner.send(&r, &c).await.expect(201, "");
    let id = c.id();
    nova.send(
        &r,
        &act(&r, &nova, &owner.handle, id, ConvActionKind::Accept),
    )
    .await
    .expect(201, "");
    r.advance(1);
    owner
        .send(&r, &post(&r, &owner, &[&nova.handle], id, "hello"))
        .await
        .expect(201, "");
    let before = entries(&r, &nova, &id, 0).await.raw.clone();
    let r2 = TestRelay::with(config(0), store.clone());
    r2.advance(r.now() - r2.now());
    let after = entries(&r2, &nova, &id, 0).await;
    after.expect(200, "");
    assert_eq!(after.raw, before);
    let eq = r2.state(|st| st.conv(&id).map(|c| c.conv.seq)).await;
    assert_eq!(eq, Some(3));
    // Closed by the owner, then removed closed_keep_ms later by the retention sweep.
    owner
        .send(
            &r2,
            &act(&r2, &owner, &owner.handle, id, ConvActionKind::Close),
        )
        .await
        .expect(201, "");
    r2.advance(7 * 24 * 3600 * 1000 + 1);
    r2.relay
        .app
        .engine
        .writer
        .submit(formica_relay::engine::decide::Command::Retain)
        .await
        .unwrap();
    entries(&r2, &nova, &id, 0).await.expect(404, "not_found");
    let _ = Value::Null;
}
