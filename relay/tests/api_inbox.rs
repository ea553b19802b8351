//! App-level tests without sockets (`Router::oneshot`): the inbox page, acks, deadlines and
//! receipts. Named after the behaviour they check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use formica_protocol::envelope::*;
use formica_protocol::{Handle, PublicKey};

#[tokio::test]
async fn inbox_reads_need_a_valid_signed_request() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    r.get("/v1/inbox").await.expect(401, "unauthorized");
    // A replayed request (same nonce) is refused.
    let h = b.auth(&r, "GET", "/v1/inbox", b"");
    r.call("GET", "/v1/inbox", b"", &[(h.0, h.1.clone())])
        .await
        .expect(200, "");
    r.call("GET", "/v1/inbox", b"", &[(h.0, h.1.clone())])
        .await
        .expect(401, "nonce_reused");
    // Signed for another path.
    let h = b.auth(&r, "GET", "/v1/inbox", b"");
    r.call("GET", "/v1/inbox?after=0", b"", &[(h.0, h.1)])
        .await
        .expect(401, "unauthorized");
    // Stale.
    let h = b.auth(&r, "GET", "/v1/inbox", b"");
    r.advance(6 * 60 * 1000);
    r.call("GET", "/v1/inbox", b"", &[(h.0, h.1)])
        .await
        .expect(400, "stale");
    // Someone else's key for bob's handle.
    let fake = common::Agent::new(b.handle.clone(), a.key.clone(), a.recovery.clone());
    fake.authed(&r, "GET", "/v1/inbox", b"")
        .await
        .expect(401, "unauthorized");
    // A handle of another relay.
    let other = common::Agent::new(
        Handle::parse("@bob@relay-b.test").unwrap(),
        b.key.clone(),
        b.recovery.clone(),
    );
    other
        .authed(&r, "GET", "/v1/inbox", b"")
        .await
        .expect(421, "wrong_relay");
}

#[tokio::test]
async fn inbox_pages_by_cursor_and_refuses_cursors_it_never_issued() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    for n in 0..5 {
        r.advance(1);
        a.send(&r, &a.text(&r, &b.handle, &format!("m{n}")))
            .await
            .expect(201, "");
    }
    let page = b.authed(&r, "GET", "/v1/inbox?after=0&limit=2", b"").await;
    page.expect(200, "");
    let items = page.get("items").as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(page.str_("next"), "2");
    let rest = b.inbox(&r, 2).await;
    assert_eq!(rest.len(), 3);
    assert_eq!(
        field(item_env(&rest[2]), &["payload", "text"]).as_str(),
        Some("m4")
    );
    b.authed(&r, "GET", "/v1/inbox?after=99", b"")
        .await
        .expect(400, "invalid_cursor");
    b.authed(&r, "GET", "/v1/inbox?after=01", b"")
        .await
        .expect(400, "invalid_cursor");
    b.authed(&r, "GET", "/v1/inbox?limit=0", b"")
        .await
        .expect(400, "invalid_field");
}

async fn settle(r: &TestRelay) {
    // Reads are recorded in the background; give the writer a moment.
    for _ in 0..50 {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let _ = r;
}

#[tokio::test]
async fn ack_settles_delivery_and_sends_the_sender_a_signed_receipt() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    let mut e = a.envelope(
        &r,
        &[&b.handle],
        Payload::Message {
            text: "ack me".into(),
            data: None,
        },
    );
    e.ack_by = Some(r.now() + 30_000);
    let m = e.sign(&a.key).unwrap();
    a.send(&r, &m).await.expect(201, "");
    assert_eq!(
        field(&a.status(&r, &m.id()).await.body, &["recipients"])
            .as_array()
            .unwrap()[0]
            .as_object()
            .unwrap()
            .get("status")
            .unwrap()
            .as_str(),
        Some("accepted")
    );
    assert_eq!(b.inbox(&r, 0).await.len(), 1);
    settle(&r).await;
    let st = a.status(&r, &m.id()).await;
    assert_eq!(
        field(&st.body, &["recipients"]).as_array().unwrap()[0]
            .as_object()
            .unwrap()
            .get("status")
            .unwrap()
            .as_str(),
        Some("delivered")
    );
    // Only the sender may see the status.
    b.status(&r, &m.id()).await.expect(404, "not_found");
    let ack = b
        .envelope(
            &r,
            &[&a.handle],
            Payload::Ack {
                msg: m.id(),
                status: AckStatus::Processed,
                reason: None,
            },
        )
        .sign(&b.key)
        .unwrap();
    b.send(&r, &ack).await.expect(201, "");
    let st = a.status(&r, &m.id()).await;
    let rec = field(&st.body, &["recipients"]).as_array().unwrap()[0]
        .as_object()
        .unwrap()
        .clone();
    assert_eq!(rec.get("status").unwrap().as_str(), Some("acked"));
    assert_eq!(
        rec.get("ack").unwrap().as_str(),
        Some(ack.id().to_hex().as_str())
    );
    assert_eq!(rec.get("ack_status").unwrap().as_str(), Some("processed"));
    // The sender's inbox: a delivered receipt, the ack itself, an acked receipt; receipts verify
    // with the relay key from the descriptor, under the receipt tag.
    let d = r.get("/.well-known/formica").await;
    let relay_key = PublicKey::parse_hex(d.str_("key")).unwrap();
    let items = a.inbox(&r, 0).await;
    let kinds: Vec<String> = items
        .iter()
        .map(|i| {
            let e = item_env(i);
            let t = field(e, &["type"]).as_str().unwrap().to_owned();
            if t == "receipt" {
                let se = SignedEnvelope::from_value(e.clone(), &EnvelopeLimits::default()).unwrap();
                se.verify(&relay_key).unwrap();
                format!(
                    "receipt:{}",
                    field(e, &["payload", "status"]).as_str().unwrap()
                )
            } else {
                t
            }
        })
        .collect();
    assert_eq!(kinds, vec!["receipt:delivered", "ack", "receipt:acked"]);
    // A second ack is refused: delivery is settled.
    r.advance(1);
    let ack2 = b
        .envelope(
            &r,
            &[&a.handle],
            Payload::Ack {
                msg: m.id(),
                status: AckStatus::Rejected,
                reason: None,
            },
        )
        .sign(&b.key)
        .unwrap();
    b.send(&r, &ack2).await.expect(409, "ack_settled");
    // Someone who did not receive the message cannot ack it.
    let c = r.agent("carol").await;
    let ack3 = c
        .envelope(
            &r,
            &[&a.handle],
            Payload::Ack {
                msg: m.id(),
                status: AckStatus::Received,
                reason: None,
            },
        )
        .sign(&c.key)
        .unwrap();
    c.send(&r, &ack3).await.expect(403, "ack_forbidden");
}

#[tokio::test]
async fn a_deadline_without_an_ack_times_out_with_a_receipt() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    let mut e = a.envelope(
        &r,
        &[&b.handle],
        Payload::Message {
            text: "no ack coming".into(),
            data: None,
        },
    );
    e.ack_by = Some(r.now() + 2_000);
    let m = e.sign(&a.key).unwrap();
    a.send(&r, &m).await.expect(201, "");
    r.advance(2_001);
    let out = r
        .relay
        .app
        .engine
        .writer
        .submit(formica_relay::engine::decide::Command::Tick)
        .await
        .unwrap();
    assert_eq!(
        out,
        formica_relay::engine::decide::Outcome::Ticked { timed_out: 1 }
    );
    let st = a.status(&r, &m.id()).await;
    assert_eq!(
        field(&st.body, &["recipients"]).as_array().unwrap()[0]
            .as_object()
            .unwrap()
            .get("status")
            .unwrap()
            .as_str(),
        Some("timed_out")
    );
    let items = a.inbox(&r, 0).await;
    assert_eq!(
        field(item_env(&items[0]), &["payload", "status"]).as_str(),
        Some("timed_out")
    );
    // A late ack is refused.
    let ack = b
        .envelope(
            &r,
            &[&a.handle],
            Payload::Ack {
                msg: m.id(),
                status: AckStatus::Processed,
                reason: None,
            },
        )
        .sign(&b.key)
        .unwrap();
    b.send(&r, &ack).await.expect(409, "ack_settled");
    // A second tick finds nothing more.
    let out = r
        .relay
        .app
        .engine
        .writer
        .submit(formica_relay::engine::decide::Command::Tick)
        .await
        .unwrap();
    assert_eq!(
        out,
        formica_relay::engine::decide::Outcome::Ticked { timed_out: 0 }
    );
}
