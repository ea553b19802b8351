//! App-level tests without sockets: every endpoint, and every error code each can return that
//! a client can cause. Named after the behaviour they check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use formica_protocol::envelope::*;
use formica_protocol::keylog::KeyOp;
use formica_protocol::{canon, Domain, Handle, PublicKey, Signature, Value};
use std::sync::Arc;

#[tokio::test]
async fn descriptor_is_signed_by_the_relay_key_and_publishes_policy() {
    let r = TestRelay::new();
    let d = r.get("/.well-known/formica").await;
    assert_eq!(d.status, 200);
    let mut o = d.body.as_object().unwrap().clone();
    let sig = Signature::parse_hex(o.remove("sig").unwrap().as_str().unwrap()).unwrap();
    let key = PublicKey::parse_hex(o.get("key").unwrap().as_str().unwrap()).unwrap();
    key.verify(
        Domain::Descriptor,
        &canon::canonicalize(&Value::Object(o.clone())),
        &sig,
    )
    .unwrap();
    // A descriptor signature is not valid as an envelope signature (domain separation).
    assert!(key
        .verify(
            Domain::Envelope,
            &canon::canonicalize(&Value::Object(o.clone())),
            &sig
        )
        .is_err());
    assert_eq!(d.str_("relay"), HOST);
    assert_eq!(field(&d.body, &["pow", "difficulty"]).as_i64(), Some(4));
    assert_eq!(
        field(&d.body, &["time", "window_ms"]).as_i64(),
        Some(300_000)
    );
    assert!(
        field(&d.body, &["limits", "envelope_bytes_max"])
            .as_i64()
            .unwrap()
            > 0
    );
    assert_eq!(d.get("tiers").as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn health_ready_metrics_and_openapi_answer() {
    let r = TestRelay::new();
    assert_eq!(r.get("/health").await.status, 200);
    assert_eq!(r.get("/ready").await.status, 200);
    let m = r.get("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(String::from_utf8_lossy(&m.raw).contains("formica_envelopes_accepted_total 0"));
    let api = r.get("/v1/openapi.json").await;
    assert_eq!(api.status, 200);
    assert!(api.str_("openapi").starts_with("3.1"));
    r.get("/v1/nothing-here").await.expect(404, "not_found");
    r.call("DELETE", "/v1/envelopes", b"", &[])
        .await
        .expect(405, "method_not_allowed");
}

#[tokio::test]
async fn registration_succeeds_once_and_the_handle_is_then_taken() {
    let r = TestRelay::new();
    let k = r.fresh_key();
    let body = r.register_body("kevin", &k, None).await;
    let ok = r.post("/v1/register", &body).await;
    ok.expect(201, "");
    assert_eq!(ok.str_("handle"), format!("@kevin@{HOST}"));
    assert_eq!(ok.str_("key_id"), k.public().key_id().to_hex());
    // The same handle again, with a fresh challenge and another key.
    let k2 = r.fresh_key();
    let again = r.register_body("kevin", &k2, None).await;
    r.post("/v1/register", &again)
        .await
        .expect(409, "handle_taken");
    // The challenge of the successful registration cannot be used again.
    let k3 = r.fresh_key();
    let mut reuse = r.register_body("other", &k3, None).await;
    if let Value::Object(o) = &mut reuse {
        o.insert("pow", field(&body, &["pow"]).clone());
    }
    r.post("/v1/register", &reuse)
        .await
        .expect(409, "challenge_used");
}

#[tokio::test]
async fn registration_refuses_bad_requests_with_their_codes() {
    let r = TestRelay::new();
    let k = r.fresh_key();
    // Reserved name.
    let b = r.register_body("admin", &k, None).await;
    r.post("/v1/register", &b)
        .await
        .expect(403, "handle_reserved");
    // Missing proof-of-work.
    let mut b = r.register_body("nopow", &k, None).await;
    if let Value::Object(o) = &mut b {
        o.remove("pow");
    }
    r.post("/v1/register", &b).await.expect(400, "pow_missing");
    // A proof that commits to less than the relay requires.
    let mut b = r.register_body("weakpow", &k, None).await;
    if let Value::Object(o) = &mut b {
        let mut p = o.get("pow").unwrap().as_object().unwrap().clone();
        p.insert("difficulty", Value::Int(1));
        o.insert("pow", Value::Object(p));
    }
    r.post("/v1/register", &b)
        .await
        .expect(403, "pow_insufficient");
    // A challenge this relay never issued.
    let mut b = r.register_body("nochal", &k, None).await;
    if let Value::Object(o) = &mut b {
        let mut p = o.get("pow").unwrap().as_object().unwrap().clone();
        p.insert("challenge", "00".repeat(16).into());
        o.insert("pow", Value::Object(p));
    }
    r.post("/v1/register", &b)
        .await
        .expect(400, "challenge_unknown");
    // An expired challenge (with an entry signed after the wait, so only the challenge is old).
    let mut b = r.register_body("late", &k, None).await;
    r.advance(11 * 60 * 1000);
    if let Value::Object(o) = &mut b {
        o.insert("entry", r.register_entry("late", &k));
    }
    r.post("/v1/register", &b)
        .await
        .expect(400, "challenge_expired");
    // An entry timestamped outside the window (the error tells the relay's time).
    let b = r.register_body("stale", &k, None).await;
    r.advance(6 * 60 * 1000);
    let resp = r.post("/v1/register", &b).await;
    resp.expect(400, "stale");
    assert_eq!(
        field(&resp.body, &["error", "server_time"]).as_i64(),
        Some(r.now())
    );
    // A handle of another relay.
    let mut b = r.register_body("elsewhere", &k, None).await;
    let entry = formica_protocol::keylog::KeyLogEntry {
        handle: Handle::parse("@elsewhere@relay-b.test").unwrap(),
        seq: 0,
        prev: None,
        ts: r.now(),
        op: KeyOp::Register {
            key: k.public(),
            recovery: None,
        },
        signer: k.public().key_id(),
    }
    .sign(&k);
    if let Value::Object(o) = &mut b {
        o.insert("entry", entry.value().clone());
    }
    r.post("/v1/register", &b).await.expect(421, "wrong_relay");
    // Squatting by case or by look-alike letters: upper case, a Cyrillic "е", a fullwidth
    // "ｋ", a Latin "é", a doubled or trailing separator. Each is refused as a handle, whatever
    // the rest of the request.
    for squat in [
        "Fine",
        "k\u{435}vin",
        "\u{ff4b}evin",
        "k\u{e9}vin",
        "ke--vin",
        "kevin-",
    ] {
        let mut b = r.register_body("fine", &k, None).await;
        let mut e = field(&b, &["entry"]).as_object().unwrap().clone();
        e.insert("handle", format!("@{squat}@{HOST}").into());
        if let Value::Object(o) = &mut b {
            o.insert("entry", Value::Object(e));
        }
        r.post("/v1/register", &b)
            .await
            .expect(400, "invalid_handle");
    }
    // An entry signed by another key than the one it registers.
    let mut b = r.register_body("forged", &k, None).await;
    let other = r.fresh_key();
    let mut e = field(&b, &["entry"]).as_object().unwrap().clone();
    e.remove("sig");
    let sig = other.sign(
        Domain::KeyLog,
        &canon::canonicalize(&Value::Object(e.clone())),
    );
    e.insert("sig", sig.to_hex().into());
    if let Value::Object(o) = &mut b {
        o.insert("entry", Value::Object(e));
    }
    r.post("/v1/register", &b)
        .await
        .expect(400, "bad_signature");
    // A weak (small-order) key.
    let mut b = r.register_body("weakkey", &k, None).await;
    let mut e = field(&b, &["entry"]).as_object().unwrap().clone();
    e.insert("key", format!("01{}", "00".repeat(31)).into());
    if let Value::Object(o) = &mut b {
        o.insert("entry", Value::Object(e));
    }
    r.post("/v1/register", &b).await.expect(400, "weak_key");
    // Not JSON.
    r.call("POST", "/v1/register", b"{\"entry\":", &[])
        .await
        .expect(400, "malformed_json");
    // Nothing was registered by any of these.
    assert_eq!(r.state(|s| s.agents.len()).await, 0);
}

#[tokio::test]
async fn key_log_is_served_and_verifies_from_its_first_entry() {
    let r = TestRelay::new();
    let a = r.agent("alice").await;
    let resp = r.get(&format!("/v1/keys/{}", a.handle)).await;
    assert_eq!(resp.status, 200);
    let entries: Vec<_> = resp
        .get("entries")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| formica_protocol::SignedKeyLogEntry::from_value(e.clone()).unwrap())
        .collect();
    let log = formica_protocol::KeyLog::verify(entries).unwrap();
    assert_eq!(log.current_key().unwrap().to_hex(), a.key.public().to_hex());
    assert_eq!(resp.str_("tier"), "new");
    // The local form resolves too; an unknown handle is not_found.
    assert_eq!(r.get("/v1/keys/@alice").await.status, 200);
    r.get("/v1/keys/@nobody-here")
        .await
        .expect(404, "not_found");
    r.get("/v1/keys/@Alice").await.expect(400, "invalid_handle");
}

#[tokio::test]
async fn rotation_is_appended_and_the_old_key_stops_working() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    let new_key = r.fresh_key();
    let entry = a
        .next_entry(
            &r,
            KeyOp::Rotate {
                key: new_key.public(),
            },
            &a.key,
        )
        .await;
    let resp = r
        .call(
            "POST",
            &format!("/v1/keys/{}", a.handle),
            &entry.wire_bytes(),
            &[],
        )
        .await;
    resp.expect(201, "");
    assert_eq!(resp.get("seq").as_i64(), Some(1));
    // Posting the same entry again is a duplicate, not an error.
    let again = r
        .call(
            "POST",
            &format!("/v1/keys/{}", a.handle),
            &entry.wire_bytes(),
            &[],
        )
        .await;
    again.expect(200, "");
    assert_eq!(again.str_("result"), "duplicate");
    // An envelope signed with the old key after the rotation is refused.
    r.advance(1);
    let old = a.text(&r, &b.handle, "with the old key");
    a.send(&r, &old).await.expect(403, "key_not_valid");
    // An entry signed by the old key at the next position is refused: it may not sign.
    let bad = a
        .next_entry(
            &r,
            KeyOp::Rotate {
                key: r.fresh_key().public(),
            },
            &a.key,
        )
        .await;
    r.call(
        "POST",
        &format!("/v1/keys/{}", a.handle),
        &bad.wire_bytes(),
        &[],
    )
    .await
    .expect(403, "keylog_unauthorized_signer");
}

/// Only a key the log has named can fork it: entries at taken positions signed by any other key
/// (a stranger's register at seq 0, a rotation at seq 1, a forged signature) are refused and
/// leave no evidence behind, so strangers cannot make a handle look forked.
#[tokio::test]
async fn entries_at_taken_positions_by_other_keys_are_refused_and_not_kept() {
    let r = TestRelay::new();
    let a = r.agent("alice").await;
    let stranger = r.fresh_key();
    let first = r
        .state(|st| st.agents[&a.handle].keylog.entries()[0].hash())
        .await;
    let register = formica_protocol::keylog::KeyLogEntry {
        handle: a.handle.clone(),
        seq: 0,
        prev: None,
        ts: r.now(),
        op: KeyOp::Register {
            key: stranger.public(),
            recovery: None,
        },
        signer: stranger.public().key_id(),
    }
    .sign(&stranger);
    let rotate = formica_protocol::keylog::KeyLogEntry {
        handle: a.handle.clone(),
        seq: 1,
        prev: Some(first),
        ts: r.now() + 1,
        op: KeyOp::Rotate {
            key: r.fresh_key().public(),
        },
        signer: stranger.public().key_id(),
    }
    .sign(&stranger);
    let k2 = r.fresh_key();
    let e1 = a
        .next_entry(&r, KeyOp::Rotate { key: k2.public() }, &a.key)
        .await;
    r.call(
        "POST",
        &format!("/v1/keys/{}", a.handle),
        &e1.wire_bytes(),
        &[],
    )
    .await
    .expect(201, "");
    // The same entry as alice's, claiming her key id but signed by the stranger.
    let mut forged = e1.entry().clone();
    forged.ts += 1;
    let forged = forged.sign(&stranger);
    // A register at seq 0 by a key the log named later (the rotated-to key) is no fork either:
    // only the registering key can fork position 0.
    let register_k2 = formica_protocol::keylog::KeyLogEntry {
        handle: a.handle.clone(),
        seq: 0,
        prev: None,
        ts: r.now(),
        op: KeyOp::Register {
            key: k2.public(),
            recovery: None,
        },
        signer: k2.public().key_id(),
    }
    .sign(&k2);
    for bad in [&register, &rotate, &forged, &register_k2] {
        let resp = r
            .call(
                "POST",
                &format!("/v1/keys/{}", a.handle),
                &bad.wire_bytes(),
                &[],
            )
            .await;
        assert!(
            resp.status >= 400 && resp.code() != "keylog_fork",
            "{} {:?}",
            resp.status,
            resp.body
        );
    }
    let served = r.get(&format!("/v1/keys/{}", a.handle)).await;
    assert_eq!(served.get("conflicts").as_array().unwrap().len(), 0);
    assert_eq!(served.get("entries").as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_second_valid_entry_at_a_taken_position_is_kept_as_evidence() {
    let r = TestRelay::new();
    let a = r.agent("alice").await;
    let e1 = a
        .next_entry(
            &r,
            KeyOp::Rotate {
                key: r.fresh_key().public(),
            },
            &a.key,
        )
        .await;
    r.call(
        "POST",
        &format!("/v1/keys/{}", a.handle),
        &e1.wire_bytes(),
        &[],
    )
    .await
    .expect(201, "");
    // The same position, signed by the same (then current) key, different content: a fork.
    let first = r
        .state(|st| st.agents[&a.handle].keylog.entries()[0].hash())
        .await;
    let fork = formica_protocol::keylog::KeyLogEntry {
        handle: a.handle.clone(),
        seq: 1,
        prev: Some(first),
        ts: r.now(),
        op: KeyOp::Rotate {
            key: r.fresh_key().public(),
        },
        signer: a.key.public().key_id(),
    }
    .sign(&a.key);
    r.call(
        "POST",
        &format!("/v1/keys/{}", a.handle),
        &fork.wire_bytes(),
        &[],
    )
    .await
    .expect(409, "keylog_fork");
    let served = r.get(&format!("/v1/keys/{}", a.handle)).await;
    assert_eq!(served.get("conflicts").as_array().unwrap().len(), 1);
    assert_eq!(
        served.get("entries").as_array().unwrap().len(),
        2,
        "the log itself is unchanged"
    );
}

#[tokio::test]
async fn revoke_then_recover_with_the_recovery_key() {
    let r = TestRelay::new();
    let a = r.agent("alice").await;
    let revoke = a.next_entry(&r, KeyOp::Revoke, &a.recovery).await;
    r.call(
        "POST",
        &format!("/v1/keys/{}", a.handle),
        &revoke.wire_bytes(),
        &[],
    )
    .await
    .expect(201, "");
    r.advance(10);
    let new_key = r.fresh_key();
    let recover = a
        .next_entry(
            &r,
            KeyOp::Recover {
                key: new_key.public(),
                recovery: None,
            },
            &a.recovery,
        )
        .await;
    r.call(
        "POST",
        &format!("/v1/keys/{}", a.handle),
        &recover.wire_bytes(),
        &[],
    )
    .await
    .expect(201, "");
    let served = r.get(&format!("/v1/keys/{}", a.handle)).await;
    assert_eq!(served.str_("current_key"), new_key.public().to_hex());
}

#[tokio::test]
async fn a_stranger_cannot_message_a_private_agent_but_can_ask_for_contact() {
    let r = TestRelay::new();
    let a = r.agent("alice").await;
    let b = r.agent("bob").await;
    let m = a.text(&r, &b.handle, "hi");
    a.send(&r, &m).await.expect(403, "not_contact");
    let req = a
        .envelope(
            &r,
            &[&b.handle],
            Payload::ContactRequest {
                level: ContactLevel::Message,
                note: Some("hello".into()),
            },
        )
        .sign(&a.key)
        .unwrap();
    a.send(&r, &req).await.expect(201, "");
    // A second pending request to the same agent is refused.
    r.advance(1);
    let req2 = a
        .envelope(
            &r,
            &[&b.handle],
            Payload::ContactRequest {
                level: ContactLevel::Task,
                note: None,
            },
        )
        .sign(&a.key)
        .unwrap();
    a.send(&r, &req2).await.expect(429, "rate_limited");
    let list = b.authed(&r, "GET", "/v1/contact-requests", b"").await;
    let reqs = list.get("requests").as_array().unwrap();
    assert_eq!(reqs.len(), 1);
    let id = reqs[0]
        .as_object()
        .unwrap()
        .get("id")
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    // Accepting at a higher level than requested is refused; at the requested level it works.
    let body = canon::canonicalize(&obj(vec![("level", "task".into())]));
    b.authed(
        &r,
        "POST",
        &format!("/v1/contact-requests/{id}/accept"),
        &body,
    )
    .await
    .expect(400, "invalid_field");
    b.authed(
        &r,
        "POST",
        &format!("/v1/contact-requests/{id}/accept"),
        b"",
    )
    .await
    .expect(200, "");
    let m2 = a.text(&r, &b.handle, "hi again");
    a.send(&r, &m2).await.expect(201, "");
    // A message-level contact may not send a task_request.
    let t = a
        .envelope(
            &r,
            &[&b.handle],
            Payload::TaskRequest {
                task: "summarize".into(),
                input: None,
            },
        )
        .sign(&a.key)
        .unwrap();
    a.send(&r, &t).await.expect(403, "level_insufficient");
    let contacts = b.authed(&r, "GET", "/v1/contacts", b"").await;
    assert_eq!(contacts.get("contacts").as_array().unwrap().len(), 1);
    b.authed(&r, "DELETE", &format!("/v1/contacts/{}", a.handle), b"")
        .await
        .expect(200, "");
    b.authed(&r, "DELETE", &format!("/v1/contacts/{}", a.handle), b"")
        .await
        .expect(404, "not_found");
    let m3 = a.text(&r, &b.handle, "after removal");
    a.send(&r, &m3).await.expect(403, "not_contact");
}

#[tokio::test]
async fn rejecting_a_contact_request_removes_it_quietly() {
    let r = TestRelay::new();
    let a = r.agent("alice").await;
    let b = r.agent("bob").await;
    let req = a
        .envelope(
            &r,
            &[&b.handle],
            Payload::ContactRequest {
                level: ContactLevel::Message,
                note: None,
            },
        )
        .sign(&a.key)
        .unwrap();
    a.send(&r, &req).await.expect(201, "");
    b.authed(
        &r,
        "POST",
        &format!("/v1/contact-requests/{}/reject", req.id()),
        b"",
    )
    .await
    .expect(200, "");
    b.authed(
        &r,
        "POST",
        &format!("/v1/contact-requests/{}/reject", req.id()),
        b"",
    )
    .await
    .expect(404, "not_found");
    assert!(b
        .authed(&r, "GET", "/v1/contact-requests", b"")
        .await
        .get("requests")
        .as_array()
        .unwrap()
        .is_empty());
}

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

#[tokio::test]
async fn a_task_result_answering_a_task_needs_no_contact_grant() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await; // bob accepts tasks from alice; alice granted bob nothing
    let t = a
        .envelope(
            &r,
            &[&b.handle],
            Payload::TaskRequest {
                task: "add".into(),
                input: None,
            },
        )
        .sign(&a.key)
        .unwrap();
    a.send(&r, &t).await.expect(201, "");
    let mut res = b.envelope(
        &r,
        &[&a.handle],
        Payload::TaskResult {
            status: TaskStatus::Ok,
            output: None,
            error: None,
        },
    );
    res.corr = Some(t.id().to_hex());
    b.send(&r, &res.sign(&b.key).unwrap()).await.expect(201, "");
    // Without the reference it is an unsolicited message.
    let mut res2 = b.envelope(
        &r,
        &[&a.handle],
        Payload::TaskResult {
            status: TaskStatus::Ok,
            output: None,
            error: None,
        },
    );
    res2.corr = Some("unrelated".into());
    b.send(&r, &res2.sign(&b.key).unwrap())
        .await
        .expect(403, "not_contact");
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
async fn edge_rules_found_by_a_clean_room_client() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    // Two Authorization headers are refused.
    let h1 = b.auth(&r, "GET", "/v1/inbox", b"");
    let h2 = b.auth(&r, "GET", "/v1/inbox", b"");
    r.call("GET", "/v1/inbox", b"", &[(h1.0, h1.1), (h2.0, h2.1)])
        .await
        .expect(401, "unauthorized");
    // Numeric query parameters have no leading zeros.
    b.authed(&r, "GET", "/v1/inbox?limit=050", b"")
        .await
        .expect(400, "invalid_field");
    // A bad handle in a path names the parameter in `field`.
    let resp = r.get("/v1/keys/@Bad").await;
    resp.expect(400, "invalid_handle");
    assert_eq!(
        field(&resp.body, &["error", "field"]).as_str(),
        Some("handle")
    );
    // A payload over every tier's cap is refused while parsing, before the freshness check.
    let mut e = a.envelope(
        &r,
        &[&b.handle],
        Payload::Message {
            text: "x".repeat(33_000),
            data: None,
        },
    );
    e.ts = r.now() - 10 * 60 * 1000;
    a.send(&r, &e.sign(&a.key).unwrap())
        .await
        .expect(413, "payload_too_large");
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
    assert!(r
        .relay
        .app
        .engine
        .state
        .read_unsettled()
        .seen
        .contains(&m.id()));
    let durable = {
        let r = r.clone();
        let id = m.id();
        tokio::task::spawn_blocking(move || r.relay.app.engine.read().seen.contains(&id))
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
    assert_eq!(r.state(|s| s.seen.contains(&m.id())).await, status == 201);
    // And with a working disk, the envelope is stored once.
    a.send(&r, &m)
        .await
        .expect(if status == 201 { 200 } else { 201 }, "");
    assert_eq!(b.inbox(&r, 0).await.len(), 1);
}
