//! App-level tests without sockets (`Router::oneshot`): the operational endpoints, registration
//! and key logs, with every error code a client can cause there. Named after the behaviour
//! they check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use formica_protocol::envelope::*;
use formica_protocol::keylog::KeyOp;
use formica_protocol::{canon, Domain, Handle, PublicKey, Signature, Value};

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
    .sign(&k, &[])
    .unwrap();
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
            &[&new_key],
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
    let k3 = r.fresh_key();
    let bad = a
        .next_entry(&r, KeyOp::Rotate { key: k3.public() }, &a.key, &[&k3])
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

/// The finding of an outside attack run: alice rotates to bob's public key, a key she does not
/// hold. Without its proof of possession (LOG-2) the rotate is refused, `missing_field` when
/// `key_sig` is absent and `bad_signature` when alice proves it with her own key, and neither
/// log changes: two handles never share a key.
#[tokio::test]
async fn rotate_adopting_another_agents_key_is_refused_and_the_log_is_unchanged() {
    use formica_protocol::keylog::{EntryProofs, KeyLogEntry};
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    let logs = || async {
        (
            r.get(&format!("/v1/keys/{}", a.handle)).await.body,
            r.get(&format!("/v1/keys/{}", b.handle)).await.body,
        )
    };
    let before = logs().await;
    r.advance(1);
    let (seq, prev) = r
        .state(|st| st.agents[&a.handle].keylog.next_position())
        .await;
    let adopt = KeyLogEntry {
        handle: a.handle.clone(),
        seq,
        prev: Some(prev),
        ts: r.now(),
        op: KeyOp::Rotate {
            key: b.key.public(),
        },
        signer: a.key.public().key_id(),
    };
    let post = |e: formica_protocol::SignedKeyLogEntry| {
        let path = format!("/v1/keys/{}", a.handle);
        let r = &r;
        async move { r.call("POST", &path, &e.wire_bytes(), &[]).await }
    };
    let bare = post(adopt.sign_unchecked(&a.key, EntryProofs::default())).await;
    bare.expect(400, "missing_field");
    assert_eq!(
        field(&bare.body, &["error", "field"]).as_str(),
        Some("key_sig")
    );
    let own = EntryProofs {
        key_sig: Some(a.key.sign_input(&adopt.proof_input())),
        recovery_sig: None,
    };
    let proved_by_alice = post(adopt.sign_unchecked(&a.key, own)).await;
    proved_by_alice.expect(400, "bad_signature");
    assert_eq!(
        field(&proved_by_alice.body, &["error", "field"]).as_str(),
        Some("key_sig")
    );
    assert_eq!(logs().await, before);
    r.state(|st| {
        assert_eq!(
            st.agents[&a.handle].keylog.current_key(),
            Some(&a.key.public())
        );
        assert_eq!(st.agents[&a.handle].keylog.entries().len(), 1);
    })
    .await;
    // The control: the same rotate with the proof made by the key's holder is accepted, so the
    // refusals above were for the proof alone.
    let proved_by_bob = adopt.sign(&a.key, &[&b.key]).unwrap();
    post(proved_by_bob).await.expect(201, "");
}

/// A register entry naming a recovery key is refused without the recovery key's proof (LOG-2,
/// REG-1 step 10): a `recovery_sig` by the registered key instead is `bad_signature` on
/// `entry.recovery_sig`, and nothing is registered.
#[tokio::test]
async fn registration_naming_a_recovery_key_without_its_proof_is_refused() {
    use formica_protocol::keylog::{EntryProofs, KeyLogEntry};
    let r = TestRelay::new();
    let (k, other) = (r.fresh_key(), r.fresh_key());
    let mut body = r.register_body("carol", &k, Some(&other)).await;
    let entry = KeyLogEntry {
        handle: Handle::parse(&format!("@carol@{HOST}")).unwrap(),
        seq: 0,
        prev: None,
        ts: r.now(),
        op: KeyOp::Register {
            key: k.public(),
            recovery: Some(other.public()),
        },
        signer: k.public().key_id(),
    };
    let by_key = EntryProofs {
        key_sig: None,
        recovery_sig: Some(k.sign_input(&entry.proof_input())),
    };
    if let Value::Object(o) = &mut body {
        o.insert("entry", entry.sign_unchecked(&k, by_key).value().clone());
    }
    let resp = r.post("/v1/register", &body).await;
    resp.expect(400, "bad_signature");
    assert_eq!(
        field(&resp.body, &["error", "field"]).as_str(),
        Some("entry.recovery_sig")
    );
    r.get("/v1/keys/@carol").await.expect(404, "not_found");
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
    .sign(&stranger, &[])
    .unwrap();
    let stranger_next = r.fresh_key();
    let rotate = formica_protocol::keylog::KeyLogEntry {
        handle: a.handle.clone(),
        seq: 1,
        prev: Some(first),
        ts: r.now() + 1,
        op: KeyOp::Rotate {
            key: stranger_next.public(),
        },
        signer: stranger.public().key_id(),
    }
    .sign(&stranger, &[&stranger_next])
    .unwrap();
    let k2 = r.fresh_key();
    let e1 = a
        .next_entry(&r, KeyOp::Rotate { key: k2.public() }, &a.key, &[&k2])
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
    let forged = forged.sign(&stranger, &[&k2]).unwrap();
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
    .sign(&k2, &[])
    .unwrap();
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
    let k2 = r.fresh_key();
    let e1 = a
        .next_entry(&r, KeyOp::Rotate { key: k2.public() }, &a.key, &[&k2])
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
    let k3 = r.fresh_key();
    let fork = formica_protocol::keylog::KeyLogEntry {
        handle: a.handle.clone(),
        seq: 1,
        prev: Some(first),
        ts: r.now(),
        op: KeyOp::Rotate { key: k3.public() },
        signer: a.key.public().key_id(),
    }
    .sign(&a.key, &[&k3])
    .unwrap();
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
    let revoke = a.next_entry(&r, KeyOp::Revoke, &a.recovery, &[]).await;
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
            &[&new_key],
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
