//! App-level tests without sockets (`Router::oneshot`): posting envelopes and batches, their
//! error codes, tiers, rate limits, vouches and reports, and durability before an answer.
//! Named after the behaviour they check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use formica_protocol::envelope::*;
use formica_protocol::{canon, Domain, Handle, Value};
use std::sync::Arc;

#[tokio::test]
async fn an_exact_replay_is_a_success_that_says_duplicate_and_is_stored_once() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    let m = a.text(&r, &b.handle, "once");
    let first = a.send(&r, &m).await;
    first.expect(201, "");
    assert_eq!(first.str_("result"), "accepted");
    let second = a.send(&r, &m).await;
    second.expect(200, "");
    assert_eq!(second.str_("result"), "duplicate");
    assert_eq!(second.str_("id"), m.id().to_hex());
    assert_eq!(b.inbox(&r, 0).await.len(), 1);
}

#[tokio::test]
async fn envelope_errors_carry_their_codes() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    // Stale and future timestamps; the error carries the relay's time.
    let mut e = a.envelope(
        &r,
        &[&b.handle],
        Payload::Message {
            text: "old".into(),
            data: None,
        },
    );
    e.ts = r.now() - 6 * 60 * 1000;
    let resp = a.send(&r, &e.sign(&a.key).unwrap()).await;
    resp.expect(400, "stale");
    assert_eq!(
        field(&resp.body, &["error", "server_time"]).as_i64(),
        Some(r.now())
    );
    e.ts = r.now() + 60 * 1000;
    a.send(&r, &e.sign(&a.key).unwrap())
        .await
        .expect(400, "future");
    // A flipped bit in the signature.
    let m = a.text(&r, &b.handle, "flip");
    let mut wire = m.wire_bytes();
    let pos = wire.windows(7).position(|w| w == b"\"sig\":\"").unwrap() + 7;
    wire[pos] = if wire[pos] == b'0' { b'1' } else { b'0' };
    r.call("POST", "/v1/envelopes", &wire, &[])
        .await
        .expect(400, "bad_signature");
    // Signed by another key than the sender's.
    let mallory = r.fresh_key();
    let mut forged = a.envelope(
        &r,
        &[&b.handle],
        Payload::Message {
            text: "forged".into(),
            data: None,
        },
    );
    forged.key = mallory.public().key_id();
    r.call(
        "POST",
        "/v1/envelopes",
        &forged.sign(&mallory).unwrap().wire_bytes(),
        &[],
    )
    .await
    .expect(400, "unknown_key");
    // Unknown recipient and unknown sender; a recipient on another relay.
    let ghost = Handle::parse(&format!("@ghost@{HOST}")).unwrap();
    a.send(&r, &a.text(&r, &ghost, "boo"))
        .await
        .expect(404, "unknown_recipient");
    let remote = Handle::parse("@nova@relay-b.test").unwrap();
    a.send(&r, &a.text(&r, &remote, "far"))
        .await
        .expect(404, "unknown_recipient");
    let stranger = common::Agent::new(ghost.clone(), r.fresh_key(), r.fresh_key());
    stranger
        .send(&r, &stranger.text(&r, &b.handle, "who"))
        .await
        .expect(403, "unknown_sender");
    // Strict JSON, size and schema failures.
    r.call("POST", "/v1/envelopes", b"{\"v\":1,\"v\":1}", &[])
        .await
        .expect(400, "duplicate_key");
    r.call("POST", "/v1/envelopes", b"{\"v\":1.0}", &[])
        .await
        .expect(400, "float_not_allowed");
    r.call("POST", "/v1/envelopes", b"{\"v\":9007199254740992}", &[])
        .await
        .expect(400, "integer_out_of_range");
    r.call("POST", "/v1/envelopes", b"\"\\ud800\"", &[])
        .await
        .expect(400, "lone_surrogate");
    r.call("POST", "/v1/envelopes", b"\"\xff\"", &[])
        .await
        .expect(400, "invalid_utf8");
    r.call("POST", "/v1/envelopes", "[".repeat(10_000).as_bytes(), &[])
        .await
        .expect(400, "too_deep");
    r.call("POST", "/v1/envelopes", &vec![b' '; 70_000], &[])
        .await
        .expect(413, "too_large");
    let mut v = canon::canonicalize(&m.value().clone());
    v.truncate(v.len() - 1);
    v.extend_from_slice(b",\"extra\":1}");
    r.call("POST", "/v1/envelopes", &v, &[])
        .await
        .expect(400, "unknown_field");
    // Over the tier's payload cap (tier `new`: 8 KiB), under the envelope limit.
    let big = a
        .envelope(
            &r,
            &[&b.handle],
            Payload::Message {
                text: "x".repeat(9000),
                data: None,
            },
        )
        .sign(&a.key)
        .unwrap();
    a.send(&r, &big).await.expect(413, "payload_too_large");
    // A receipt claimed by an agent.
    let fake = a.envelope(
        &r,
        &[&b.handle],
        Payload::Message {
            text: "x".into(),
            data: None,
        },
    );
    let mut fake_v = fake.to_value();
    if let Value::Object(o) = &mut fake_v {
        o.insert("from", format!("@relay@{HOST}").into());
    }
    let sig = a.key.sign(Domain::Envelope, &canon::canonicalize(&fake_v));
    if let Value::Object(o) = &mut fake_v {
        o.insert("sig", sig.to_hex().into());
    }
    r.call("POST", "/v1/envelopes", &canon::canonicalize(&fake_v), &[])
        .await
        .expect(403, "type_reserved");
    // Nothing refused reached bob's inbox.
    assert!(b.inbox(&r, 0).await.is_empty());
}

#[tokio::test]
async fn batch_answers_each_element_on_its_own() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    let m1 = a.text(&r, &b.handle, "one");
    r.advance(1);
    let m2 = a.text(&r, &b.handle, "two");
    let body = obj(vec![(
        "envelopes",
        Value::Array(vec![
            m1.value().clone(),
            m2.value().clone(),
            m1.value().clone(),
            obj(vec![("v", Value::Int(1))]),
        ]),
    )]);
    let resp = r.post("/v1/envelopes/batch", &body).await;
    resp.expect(200, "");
    let results = resp.get("results").as_array().unwrap();
    let res = |i: usize, k: &str| field(&results[i], &[k]).clone();
    assert_eq!(res(0, "result").as_str(), Some("accepted"));
    assert_eq!(res(1, "result").as_str(), Some("accepted"));
    // The same envelope twice in a batch: the second is a duplicate.
    assert_eq!(res(2, "result").as_str(), Some("duplicate"));
    assert_eq!(
        field(&results[3], &["error", "code"]).as_str(),
        Some("missing_field")
    );
    assert_eq!(b.inbox(&r, 0).await.len(), 2);
    r.call("POST", "/v1/envelopes/batch", b"[]", &[])
        .await
        .expect(400, "invalid_field");
    let many = obj(vec![("envelopes", Value::Array(vec![Value::Null; 101]))]);
    r.post("/v1/envelopes/batch", &many)
        .await
        .expect(413, "too_large");
}

#[tokio::test]
async fn the_new_tier_is_rate_limited_per_key() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    // Tier `new`: 60 per minute, burst 15.
    let mut codes = Vec::new();
    for n in 0..16 {
        let m = a.text(&r, &b.handle, &format!("n{n}"));
        codes.push(a.send(&r, &m).await.status);
    }
    assert_eq!(&codes[..15], &[201; 15]);
    assert_eq!(codes[15], 429);
    let m = a.text(&r, &b.handle, "late");
    let resp = a.send(&r, &m).await;
    resp.expect(429, "rate_limited");
    assert!(
        field(&resp.body, &["error", "retry_after_s"])
            .as_i64()
            .unwrap()
            >= 1
    );
    // A minute later the bucket has refilled.
    r.advance(60_000);
    let m = a.text(&r, &b.handle, "later");
    a.send(&r, &m).await.expect(201, "");
}

#[tokio::test]
async fn vouch_limits_follow_the_tier() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    let relay_addr = Handle::relay(&r.host());
    let v = a
        .envelope(
            &r,
            &[&relay_addr],
            Payload::Vouch {
                subject: b.handle.clone(),
                action: VouchAction::Grant,
            },
        )
        .sign(&a.key)
        .unwrap();
    // Tier `new` may not vouch at all.
    a.send(&r, &v).await.expect(403, "tier_forbidden");
    let rep = a
        .envelope(
            &r,
            &[&relay_addr],
            Payload::Report {
                subject: b.handle.clone(),
                reason: ReportReason::Spam,
                msg: None,
                note: None,
            },
        )
        .sign(&a.key)
        .unwrap();
    a.send(&r, &rep).await.expect(201, "");
    // A message to the relay address is refused.
    let m = a.text(&r, &relay_addr, "hello relay");
    a.send(&r, &m).await.expect(404, "unknown_recipient");
}

#[tokio::test]
async fn a_full_disk_answers_507_and_nothing_is_acknowledged_or_lost() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    let m1 = a.text(&r, &b.handle, "before");
    a.send(&r, &m1).await.expect(201, "");
    *r.store.fail_appends.lock().unwrap() = Some(formica_relay::store::StoreError::Full(
        "No space left on device".into(),
    ));
    r.advance(1);
    let m2 = a.text(&r, &b.handle, "during");
    a.send(&r, &m2).await.expect(507, "storage_full");
    // Reads keep working and show exactly what was acknowledged.
    let items = b.inbox(&r, 0).await;
    assert_eq!(items.len(), 1);
    *r.store.fail_appends.lock().unwrap() = None;
    r.advance(1);
    a.send(&r, &m2).await.expect(201, "");
    assert_eq!(b.inbox(&r, 1).await.len(), 1);
}

#[tokio::test]
async fn tiers_rise_with_age_and_acked_traffic_and_fall_with_reports() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    let tier = |r: &TestRelay, h: &Handle| {
        let st = r.relay.app.engine.read();
        let i = st.tier_of(h, r.now(), &r.relay.app.engine.policy);
        r.relay.app.engine.policy.tiers[i].name.clone()
    };
    assert_eq!(tier(&r, &a.handle), "new");
    // `member`: a day old and 10 messages acked by recipients.
    for n in 0..10 {
        r.advance(5_000);
        let m = a.text(&r, &b.handle, &format!("n{n}"));
        a.send(&r, &m).await.expect(201, "");
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
    }
    assert_eq!(
        tier(&r, &a.handle),
        "new",
        "acks alone are not enough before a day has passed"
    );
    r.advance(24 * 3600 * 1000);
    assert_eq!(tier(&r, &a.handle), "member");
    // Three reports from member-tier reporters lower alice one tier; they lapse after 30 days.
    let relay_addr = Handle::relay(&r.host());
    let mut reps = Vec::new();
    for name in ["rep1", "rep2", "rep3"] {
        let rep = r.agent(name).await;
        a.put_contact(&r, &rep.handle, "message")
            .await
            .expect(200, "");
        for n in 0..10 {
            r.advance(1);
            let m = rep.text(&r, &a.handle, &format!("{name}{n}"));
            rep.send(&r, &m).await.expect(201, "");
            let ack = a
                .envelope(
                    &r,
                    &[&rep.handle],
                    Payload::Ack {
                        msg: m.id(),
                        status: AckStatus::Received,
                        reason: None,
                    },
                )
                .sign(&a.key)
                .unwrap();
            a.send(&r, &ack).await.expect(201, "");
        }
        reps.push(rep);
    }
    r.advance(24 * 3600 * 1000);
    for rep in &reps {
        assert_eq!(tier(&r, &rep.handle), "member");
        let e = rep.envelope(
            &r,
            &[&relay_addr],
            Payload::Report {
                subject: a.handle.clone(),
                reason: ReportReason::Spam,
                msg: None,
                note: None,
            },
        );
        rep.send(&r, &e.sign(&rep.key).unwrap())
            .await
            .expect(201, "");
    }
    assert_eq!(tier(&r, &a.handle), "new", "three reports demote one tier");
    r.advance(31 * 24 * 3600 * 1000);
    assert_eq!(tier(&r, &a.handle), "member", "reports decay");
}

#[tokio::test]
async fn per_ip_limits_ignore_forwarded_for_from_untrusted_peers() {
    let mut cfg = config(4);
    cfg.policy.limits.ip_requests_per_min = 3;
    cfg.trusted_proxies = vec!["10.0.0.1".parse().unwrap()];
    let r = TestRelay::with(
        cfg,
        std::sync::Arc::new(formica_relay::store::MemStore::default()),
    );
    let client: std::net::SocketAddr = "192.0.2.7:5000".parse().unwrap();
    let body = b"{}";
    for _ in 0..3 {
        r.call_from(Some(client), "POST", "/v1/challenges", body, &[])
            .await
            .expect(201, "");
    }
    // A spoofed X-Forwarded-For from an untrusted peer does not get a fresh bucket.
    let spoof = [("x-forwarded-for", "198.51.100.1".to_owned())];
    r.call_from(Some(client), "POST", "/v1/challenges", body, &spoof)
        .await
        .expect(429, "rate_limited");
    // Through the trusted proxy, the forwarded address is the client.
    let proxy: std::net::SocketAddr = "10.0.0.1:443".parse().unwrap();
    r.call_from(Some(proxy), "POST", "/v1/challenges", body, &spoof)
        .await
        .expect(201, "");
    // The exhausted client through the proxy, with its own address made up in front, in the
    // same line or in a line of its own ahead of the one the proxy appended: still its bucket.
    let joined = [("x-forwarded-for", "203.0.113.5, 192.0.2.7".to_owned())];
    r.call_from(Some(proxy), "POST", "/v1/challenges", body, &joined)
        .await
        .expect(429, "rate_limited");
    let two_lines = [
        ("x-forwarded-for", "203.0.113.6".to_owned()),
        ("x-forwarded-for", "192.0.2.7".to_owned()),
    ];
    r.call_from(Some(proxy), "POST", "/v1/challenges", body, &two_lines)
        .await
        .expect(429, "rate_limited");
}

#[tokio::test]
async fn one_recipient_flooded_by_many_new_keys_refuses_more_and_keeps_what_it_has() {
    let mut cfg = config(4);
    cfg.policy.limits.contact_requests_pending_max = 5;
    cfg.policy.limits.inbox_pending_max = 8;
    let r = TestRelay::with(
        cfg,
        std::sync::Arc::new(formica_relay::store::MemStore::default()),
    );
    let target = r.agent("target").await;
    // Many fresh agents ask for contact: the first five are kept, the rest refused.
    let mut accepted = Vec::new();
    for n in 0..8 {
        let a = r.agent(&format!("flood{n}")).await;
        let e = a
            .envelope(
                &r,
                &[&target.handle],
                Payload::ContactRequest {
                    level: ContactLevel::Message,
                    note: None,
                },
            )
            .sign(&a.key)
            .unwrap();
        let resp = a.send(&r, &e).await;
        if n < 5 {
            resp.expect(201, "");
            accepted.push(e.id());
        } else {
            resp.expect(429, "inbox_full");
            assert!(field(&resp.body, &["error", "retry_after_s"])
                .as_i64()
                .is_some());
        }
    }
    // Nothing accepted was evicted.
    let pending = target.authed(&r, "GET", "/v1/contact-requests", b"").await;
    let ids: Vec<String> = pending
        .get("requests")
        .as_array()
        .unwrap()
        .iter()
        .map(|p| field(p, &["id"]).as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 5);
    for id in &accepted {
        assert!(ids.contains(&id.to_hex()));
    }
    // Unread items are capped too (5 requests + 3 messages = 8); reading makes room.
    let friend = r.agent("friend").await;
    target
        .put_contact(&r, &friend.handle, "message")
        .await
        .expect(200, "");
    for n in 0..3 {
        r.advance(1);
        friend
            .send(&r, &friend.text(&r, &target.handle, &format!("m{n}")))
            .await
            .expect(201, "");
    }
    r.advance(1);
    friend
        .send(&r, &friend.text(&r, &target.handle, "one too many"))
        .await
        .expect(429, "inbox_full");
    assert_eq!(target.inbox(&r, 0).await.len(), 8);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await; // the read is recorded in the background
    r.advance(1);
    friend
        .send(&r, &friend.text(&r, &target.handle, "after reading"))
        .await
        .expect(201, "");
}

#[tokio::test]
async fn vouch_and_report_limits_are_enforced_per_tier() {
    let mut cfg = config(4);
    // One tier that may vouch twice and report twice a day.
    let mut t = cfg.policy.tiers[1].clone();
    t.min_age_ms = 0;
    t.min_acked = 0;
    t.vouches_max = 2;
    t.reports_per_day = 2;
    t.rate_per_min = 10_000;
    cfg.policy.tiers = vec![t];
    let r = TestRelay::with(
        cfg,
        std::sync::Arc::new(formica_relay::store::MemStore::default()),
    );
    let relay_addr = Handle::relay(&r.host());
    let v = r.agent("voucher").await;
    let subjects = [
        r.agent("s1").await,
        r.agent("s2").await,
        r.agent("s3").await,
    ];
    let vouch = |s: &common::Agent, action| {
        v.envelope(
            &r,
            &[&relay_addr],
            Payload::Vouch {
                subject: s.handle.clone(),
                action,
            },
        )
        .sign(&v.key)
        .unwrap()
    };
    v.send(&r, &vouch(&subjects[0], VouchAction::Grant))
        .await
        .expect(201, "");
    r.advance(1);
    v.send(&r, &vouch(&subjects[1], VouchAction::Grant))
        .await
        .expect(201, "");
    r.advance(1);
    v.send(&r, &vouch(&subjects[2], VouchAction::Grant))
        .await
        .expect(403, "vouch_limit");
    // Revoking frees a slot; revoking what was never given is not_found.
    r.advance(1);
    v.send(&r, &vouch(&subjects[0], VouchAction::Revoke))
        .await
        .expect(201, "");
    r.advance(1);
    v.send(&r, &vouch(&subjects[0], VouchAction::Revoke))
        .await
        .expect(404, "not_found");
    r.advance(1);
    v.send(&r, &vouch(&subjects[2], VouchAction::Grant))
        .await
        .expect(201, "");
    // Reports: two a day.
    for (n, s) in subjects.iter().enumerate() {
        r.advance(1);
        let e = v
            .envelope(
                &r,
                &[&relay_addr],
                Payload::Report {
                    subject: s.handle.clone(),
                    reason: ReportReason::Spam,
                    msg: None,
                    note: None,
                },
            )
            .sign(&v.key)
            .unwrap();
        let resp = v.send(&r, &e).await;
        if n < 2 {
            resp.expect(201, "");
        } else {
            resp.expect(429, "rate_limited");
        }
    }
    // A report about an unregistered subject, and one about oneself, are refused.
    let ghost = Handle::parse(&format!("@ghost@{HOST}")).unwrap();
    r.advance(24 * 3600 * 1000);
    let e = v
        .envelope(
            &r,
            &[&relay_addr],
            Payload::Report {
                subject: ghost,
                reason: ReportReason::Spam,
                msg: None,
                note: None,
            },
        )
        .sign(&v.key)
        .unwrap();
    v.send(&r, &e).await.expect(404, "unknown_recipient");
}

/// While the writer waits for the disk, the ingest pre-checks read on (they see the batch),
/// but nothing that answers a request does: a durable read waits, and a replay of an envelope
/// whose batch is not yet on disk is not answered `duplicate`. When that batch then fails, the
/// replay is judged against what the disk holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_answered_from_a_batch_before_it_is_on_disk() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    let r = Arc::new(TestRelay::new());
    let (a, b) = r.pair().await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let m = a.text(&r, &b.handle, "held at the disk");
    // Whatever happens below, the disk comes back (a failed assertion must not hang the test).
    struct Resume(Arc<TestRelay>);
    impl Drop for Resume {
        fn drop(&mut self) {
            self.0.store.resume();
        }
    }
    let _resume = Resume(r.clone());
    r.store.pause();
    let first = {
        let (r, a, m) = (r.clone(), a.clone(), m.clone());
        tokio::spawn(async move { a.send(&r, &m).await.status })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !r.store.held.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the append never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The pre-checks see the batch; a durable read does not get through.
    let ts = m.envelope().ts;
    assert!(r.relay.app.engine.state.read_unsettled().seen(&m.id(), ts));
    let durable = {
        let r = r.clone();
        let id = m.id();
        tokio::task::spawn_blocking(move || r.relay.app.engine.read().seen(&id, ts))
    };
    let replay = {
        let (r, a, m) = (r.clone(), a.clone(), m.clone());
        tokio::spawn(async move {
            let resp = a.send(&r, &m).await;
            (resp.status, resp.body.clone())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !durable.is_finished(),
        "a durable read saw a batch before its fsync"
    );
    assert!(
        !replay.is_finished(),
        "a replay was answered before the original was on disk"
    );
    assert!(!first.is_finished());
    // The disk fails: the batch is dropped and the original is refused.
    *r.store.fail_appends.lock().unwrap() = Some(formica_relay::store::StoreError::Full(
        "No space left on device".into(),
    ));
    r.store.resume();
    assert_eq!(first.await.unwrap(), 507);
    assert!(
        !durable.await.unwrap(),
        "the durable view held a lost envelope"
    );
    *r.store.fail_appends.lock().unwrap() = None;
    let (status, body) = replay.await.unwrap();
    // The replay reached the writer either before or after the disk came back.
    assert!(
        status == 507 || status == 201,
        "replay answered {status}: {body:?}"
    );
    let ts = m.envelope().ts;
    assert_eq!(
        {
            let id = m.id();
            r.state(move |s| s.seen(&id, ts))
        }
        .await,
        status == 201
    );
    // And with a working disk, the envelope is stored once. The store is reopened with a
    // later write, at most every second (and less often after a reopen that failed, which
    // the replay may have caused while the disk was still failing): until then writes are
    // refused 507 with retry_after_s, as documented, so a client retries.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let resp = loop {
        let resp = a.send(&r, &m).await;
        if resp.status != 507 || std::time::Instant::now() > deadline {
            break resp;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    resp.expect(if status == 201 { 200 } else { 201 }, "");
    assert_eq!(b.inbox(&r, 0).await.len(), 1);
}
