//! Sealed payloads at the relay (SPEC.md section 20, issue 27): encryption keys published through
//! the key log endpoint (LOG-16), sealed envelopes accepted under the outer envelope's rules
//! (contacts, replies, conversations), stored and delivered byte for byte and opened by their
//! recipients with the protocol crate, malformed sealed structures refused with their code and
//! field and nothing stored, and no plaintext anywhere in the relay's data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use formica_protocol::envelope::*;
use formica_protocol::keylog::{KeyLog, KeyLogEntry, KeyOp, SignedKeyLogEntry};
use formica_protocol::seal::{self, EncPublicKey, EncSecretKey, Recipient};
use formica_protocol::{canon, Domain, Handle, Object, SecretKey, Value};
use formica_relay::store::{RedbStore, Store};
use std::sync::Arc;

const DAY: i64 = 86_400_000;

/// An agent's encryption key pair, from a seed.
fn enc_pair(seed: u8) -> (EncSecretKey, EncPublicKey) {
    let sk = EncSecretKey::derive(&[seed; 32]);
    let pk = sk.public().unwrap();
    (sk, pk)
}

fn seed32(n: u64) -> [u8; 32] {
    let mut s = [0x33u8; 32];
    s[..8].copy_from_slice(&n.to_le_bytes());
    s
}

/// An `enc` entry for `a`'s log at the relay, stamped now (after a 1 ms step), expiring `life`
/// ms later, signed by `signer`.
async fn enc_entry(
    r: &TestRelay,
    a: &Agent,
    enc: EncPublicKey,
    life: i64,
    signer: &SecretKey,
) -> SignedKeyLogEntry {
    r.advance(1);
    let (seq, prev) = r
        .state(|st| st.agents[&a.handle].keylog.next_position())
        .await;
    KeyLogEntry {
        handle: a.handle.clone(),
        seq,
        prev: Some(prev),
        ts: r.now(),
        op: KeyOp::Enc {
            enc,
            expires: r.now() + life,
        },
        signer: signer.public().key_id(),
    }
    .sign(signer, &[])
    .unwrap()
}

async fn post_entry(r: &TestRelay, a: &Agent, wire: &[u8]) -> Resp {
    r.call("POST", &format!("/v1/keys/{}", a.handle), wire, &[])
        .await
}

/// Publishes an encryption key for `a` (201) and returns its secret key.
async fn publish(r: &TestRelay, a: &Agent, seed: u8) -> EncSecretKey {
    let (sk, pk) = enc_pair(seed);
    let e = enc_entry(r, a, pk, 30 * DAY, &a.key).await;
    post_entry(r, a, &e.wire_bytes()).await.expect(201, "");
    sk
}

/// The log of `h` as the relay serves it (GET /v1/keys), verified from its first entry.
async fn served_log(r: &TestRelay, h: &Handle) -> KeyLog {
    let resp = r.get(&format!("/v1/keys/{h}")).await;
    resp.expect(200, "");
    let entries = resp
        .get("entries")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| SignedKeyLogEntry::from_value(v.clone()).unwrap())
        .collect::<Vec<_>>();
    KeyLog::verify(entries).unwrap()
}

/// Seals `env` to its recipients (their keys current in the served logs), plus the sender's own
/// copy when `self_copy`, and signs it as `from`.
async fn seal_sign(
    r: &TestRelay,
    from: &Agent,
    mut env: Envelope,
    self_copy: bool,
    n: u64,
) -> SignedEnvelope {
    let mut who: Vec<Handle> = env.to.clone();
    if self_copy {
        who.push(env.from.clone());
    }
    let mut rs = Vec::new();
    for (i, h) in who.iter().enumerate() {
        let log = served_log(r, h).await;
        rs.push(Recipient {
            handle: h.clone(),
            key: log.enc_key_current(env.ts).unwrap().key,
            ephemeral: seed32(n * 100 + i as u64),
        });
    }
    let sealed = seal::seal(&env, &rs, seed32(n * 100 + 99)).unwrap();
    env.payload = Payload::Sealed(sealed);
    env.sign(&from.key).unwrap()
}

/// Opens the envelope served in an inbox item as `me`.
async fn open_item(r: &TestRelay, me: &Agent, sk: &EncSecretKey, env: &Value) -> Payload {
    let se = SignedEnvelope::parse(&canon::canonicalize(env), &EnvelopeLimits::default()).unwrap();
    let log = served_log(r, &me.handle).await;
    let kid = sk.public().unwrap().key_id();
    seal::open(se.envelope(), &me.handle, &log, |k| {
        (*k == kid).then(|| sk.clone())
    })
    .unwrap()
}

fn text(t: &str) -> Payload {
    Payload::Message {
        text: t.into(),
        data: None,
    }
}

/// Signs an arbitrary envelope value as `sk` (its `id` and `sig` replaced).
fn sign_raw(v: &Value, sk: &SecretKey) -> Vec<u8> {
    let mut v = v.clone();
    if let Value::Object(o) = &mut v {
        o.remove("id");
        o.remove("sig");
    }
    let sig = sk.sign(Domain::Envelope, &canon::canonicalize(&v));
    if let Value::Object(o) = &mut v {
        o.insert("sig", sig.to_hex().into());
    }
    canon::canonicalize(&v)
}

/// Signs an arbitrary key log entry value as `sk`.
fn sign_entry_raw(mut o: Object, sk: &SecretKey) -> Vec<u8> {
    o.remove("sig");
    let sig = sk.sign(
        Domain::KeyLog,
        &canon::canonicalize(&Value::Object(o.clone())),
    );
    o.insert("sig", sig.to_hex().into());
    canon::canonicalize(&Value::Object(o))
}

fn entry_obj(e: &SignedKeyLogEntry) -> Object {
    e.value().as_object().unwrap().clone()
}

fn sealed_obj(v: &mut Value) -> &mut Object {
    let Value::Object(o) = v else { panic!() };
    let Some(Value::Object(p)) = o.get_mut("payload") else {
        panic!()
    };
    let Some(Value::Object(s)) = p.get_mut("sealed") else {
        panic!()
    };
    s
}

fn has(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn enc_entries_are_appended_served_and_kept_by_a_rotate() {
    let r = TestRelay::new();
    let a = r.agent("alice").await;
    let (_, pk) = enc_pair(1);
    let e = enc_entry(&r, &a, pk, 30 * DAY, &a.key).await;
    let resp = post_entry(&r, &a, &e.wire_bytes()).await;
    resp.expect(201, "");
    assert_eq!(resp.get("seq").as_i64(), Some(1));
    assert_eq!(resp.str_("head"), e.hash().to_hex());
    // The same entry again is a duplicate.
    let again = post_entry(&r, &a, &e.wire_bytes()).await;
    again.expect(200, "");
    assert_eq!(again.str_("result"), "duplicate");
    // Served as posted, byte for byte, and the log verifies with the key current.
    let served = r.get(&format!("/v1/keys/{}", a.handle)).await;
    assert!(
        has(&served.raw, &e.wire_bytes()),
        "the enc entry is served as posted"
    );
    let log = served_log(&r, &a.handle).await;
    assert_eq!(log.entries().len(), 2);
    assert_eq!(log.enc_key_current(r.now()).unwrap().key, pk);
    // A rotate keeps the encryption key (LOG-16); a new enc entry replaces it.
    let k2 = r.fresh_key();
    let rot = a
        .next_entry(&r, KeyOp::Rotate { key: k2.public() }, &a.key, &[&k2])
        .await;
    post_entry(&r, &a, &rot.wire_bytes()).await.expect(201, "");
    let log = served_log(&r, &a.handle).await;
    assert_eq!(log.enc_key_current(r.now()).unwrap().key, pk);
    let (_, pk2) = enc_pair(2);
    let e2 = enc_entry(&r, &a, pk2, DAY, &k2).await;
    post_entry(&r, &a, &e2.wire_bytes()).await.expect(201, "");
    let log = served_log(&r, &a.handle).await;
    assert_eq!(log.enc_key_current(r.now()).unwrap().key, pk2);
    assert_eq!(log.enc_periods().len(), 2);
    // The relay's own state has the same log.
    r.state(|st| {
        assert_eq!(
            st.agents[&a.handle]
                .keylog
                .enc_key_current(r.now())
                .unwrap()
                .key,
            pk2
        )
    })
    .await;
}

#[tokio::test]
async fn bad_enc_entries_are_refused_with_the_codes_of_the_vectors() {
    let r = TestRelay::new();
    let a = r.agent("alice").await;
    let (_, pk) = enc_pair(1);
    let base = entry_obj(&enc_entry(&r, &a, pk, DAY, &a.key).await);
    let ts = base.get("ts").unwrap().as_i64().unwrap();
    let with = |k: &str, v: Value| {
        let mut o = base.clone();
        o.insert(k, v);
        sign_entry_raw(o, &a.key)
    };
    // weak_key: the all-zero key and u = 1 (small order).
    let zero = "00".repeat(32);
    let one = format!("01{}", "00".repeat(31));
    for weak in [zero, one] {
        post_entry(&r, &a, &with("enc", weak.into()))
            .await
            .expect(400, "weak_key");
    }
    // invalid_key: 62 hex characters.
    post_entry(&r, &a, &with("enc", "ab".repeat(31).into()))
        .await
        .expect(400, "invalid_key");
    // invalid_field expires: at the entry's ts, and more than 366 days after it.
    for bad in [ts, ts + 366 * DAY + 1] {
        let resp = post_entry(&r, &a, &with("expires", Value::Int(bad))).await;
        resp.expect(400, "invalid_field");
        assert_eq!(resp.field_of_error(), "expires");
    }
    // missing_field expires.
    let mut o = base.clone();
    o.remove("expires");
    let resp = post_entry(&r, &a, &sign_entry_raw(o, &a.key)).await;
    resp.expect(400, "missing_field");
    assert_eq!(resp.field_of_error(), "expires");
    // unknown_field: a proof of possession on an enc entry (LOG-16: none).
    let resp = post_entry(&r, &a, &with("key_sig", "00".repeat(64).into())).await;
    resp.expect(400, "unknown_field");
    assert_eq!(resp.field_of_error(), "key_sig");
    // keylog_unauthorized_signer: signed by the recovery key.
    let mut o = base.clone();
    o.insert("signer", a.recovery.public().key_id().to_hex().into());
    post_entry(&r, &a, &sign_entry_raw(o, &a.recovery))
        .await
        .expect(403, "keylog_unauthorized_signer");
    // Nothing of the above changed the log.
    assert_eq!(served_log(&r, &a.handle).await.entries().len(), 1);
    // keylog_key_reused: the same encryption key twice.
    let first = enc_entry(&r, &a, pk, DAY, &a.key).await;
    post_entry(&r, &a, &first.wire_bytes())
        .await
        .expect(201, "");
    let twice = enc_entry(&r, &a, pk, DAY, &a.key).await;
    post_entry(&r, &a, &twice.wire_bytes())
        .await
        .expect(400, "keylog_key_reused");
    // keylog_unauthorized_signer: after a revoke no key is current.
    let rev = a.next_entry(&r, KeyOp::Revoke, &a.key, &[]).await;
    post_entry(&r, &a, &rev.wire_bytes()).await.expect(201, "");
    let (_, pk3) = enc_pair(3);
    let late = enc_entry(&r, &a, pk3, DAY, &a.key).await;
    post_entry(&r, &a, &late.wire_bytes())
        .await
        .expect(403, "keylog_unauthorized_signer");
    let log = served_log(&r, &a.handle).await;
    assert_eq!(log.entries().len(), 3);
    // The revoke ended the encryption key.
    assert!(log.enc_key_current(r.now()).is_none());
}

#[tokio::test]
async fn a_sealed_message_is_delivered_byte_for_byte_and_opens_for_its_recipient() {
    let r = TestRelay::new();
    let alice = r.agent("alice").await;
    let nova = r.agent("nova").await;
    nova.put_contact(&r, &alice.handle, "message")
        .await
        .expect(200, "");
    let a_sk = publish(&r, &alice, 1).await;
    let n_sk = publish(&r, &nova, 2).await;
    r.advance(1);
    let env = alice.envelope(&r, &[&nova.handle], text("the launch code is 1234"));
    let se = seal_sign(&r, &alice, env, true, 1).await;
    let resp = alice.send(&r, &se).await;
    resp.expect(201, "");
    assert_eq!(resp.str_("id"), se.id().to_hex());
    let items = nova.inbox(&r, 0).await;
    assert_eq!(items.len(), 1);
    let served = item_env(&items[0]);
    assert_eq!(canon::canonicalize(served), se.wire_bytes());
    assert_eq!(
        open_item(&r, &nova, &n_sk, served).await,
        text("the launch code is 1234")
    );
    // The sender opens its own copy; its delivery status is there as for any message.
    assert_eq!(
        open_item(&r, &alice, &a_sk, served).await,
        text("the launch code is 1234")
    );
    alice.status(&r, &se.id()).await.expect(200, "");
    // The contact rule applies to the outer envelope: a stranger's sealed message is refused.
    let eve = r.agent("eve").await;
    publish(&r, &eve, 3).await;
    r.advance(1);
    let env = eve.envelope(&r, &[&nova.handle], text("hi"));
    let se = seal_sign(&r, &eve, env, false, 2).await;
    eve.send(&r, &se).await.expect(403, "not_contact");
    assert_eq!(nova.inbox(&r, 0).await.len(), 1);
}

#[tokio::test]
async fn a_sealed_task_request_and_its_sealed_result_follow_the_contact_rules() {
    let r = TestRelay::new();
    let alice = r.agent("alice").await;
    let nova = r.agent("nova").await;
    let a_sk = publish(&r, &alice, 1).await;
    let n_sk = publish(&r, &nova, 2).await;
    let task = Payload::TaskRequest {
        task: "summarize".into(),
        input: Some(Value::String("the secret report".into())),
    };
    // At level message, a task request (sealed or not) is level_insufficient.
    nova.put_contact(&r, &alice.handle, "message")
        .await
        .expect(200, "");
    r.advance(1);
    let env = alice.envelope(&r, &[&nova.handle], task.clone());
    let se = seal_sign(&r, &alice, env, false, 1).await;
    alice.send(&r, &se).await.expect(403, "level_insufficient");
    nova.put_contact(&r, &alice.handle, "task")
        .await
        .expect(200, "");
    r.advance(1);
    let mut env = alice.envelope(&r, &[&nova.handle], task.clone());
    env.ack_by = Some(r.now() + 60_000);
    let req = seal_sign(&r, &alice, env, true, 2).await;
    alice.send(&r, &req).await.expect(201, "");
    let items = nova.inbox(&r, 0).await;
    let served = item_env(items.last().unwrap());
    assert_eq!(canon::canonicalize(served), req.wire_bytes());
    assert_eq!(open_item(&r, &nova, &n_sk, served).await, task);
    // Alice granted nova nothing: a sealed task_result is accepted as the reply (corr names
    // the request), and refused without it.
    let result = Payload::TaskResult {
        status: TaskStatus::Ok,
        output: Some(Value::String("three lines".into())),
        error: None,
    };
    r.advance(1);
    let mut env = nova.envelope(&r, &[&alice.handle], result.clone());
    env.corr = Some(req.id().to_hex());
    let reply = seal_sign(&r, &nova, env, true, 3).await;
    nova.send(&r, &reply).await.expect(201, "");
    let mut env = nova.envelope(&r, &[&alice.handle], result.clone());
    env.corr = Some("f".repeat(64));
    let stray = seal_sign(&r, &nova, env, false, 4).await;
    nova.send(&r, &stray).await.expect(403, "not_contact");
    let items = alice.inbox(&r, 0).await;
    let got = items
        .iter()
        .find(|i| field(item_env(i), &["id"]).as_str() == Some(&reply.id().to_hex()))
        .expect("the result reached alice");
    assert_eq!(canon::canonicalize(item_env(got)), reply.wire_bytes());
    assert_eq!(open_item(&r, &alice, &a_sk, item_env(got)).await, result);
    // The ack works on the sealed request as on any other.
    r.advance(1);
    let ack = nova
        .envelope(
            &r,
            &[&alice.handle],
            Payload::Ack {
                msg: req.id(),
                status: AckStatus::Processed,
                reason: None,
            },
        )
        .sign(&nova.key)
        .unwrap();
    nova.send(&r, &ack).await.expect(201, "");
    let st = alice.status(&r, &req.id()).await;
    st.expect(200, "");
    assert_eq!(
        field(&st.get("recipients").as_array().unwrap()[0], &["status"]).as_str(),
        Some("acked")
    );
}

#[tokio::test]
async fn a_sealed_conversation_post_is_an_entry_that_opens_for_the_participants() {
    let r = TestRelay::new();
    let owner = r.agent("owner").await;
    let nova = r.agent("nova").await;
    nova.put_contact(&r, &owner.handle, "message")
        .await
        .expect(200, "");
    let o_sk = publish(&r, &owner, 1).await;
    let n_sk = publish(&r, &nova, 2).await;
    r.advance(1);
    let mut call = owner.envelope(
        &r,
        &[&nova.handle],
        Payload::Call {
            topic: "review".into(),
            mode: ConvMode::Live,
            participants: vec![Invitee {
                handle: nova.handle.clone(),
                role: ConvRole::Member,
            }],
            turns: None,
            expires: None,
        },
    );
    call.conv = None;
    let call = call.sign(&owner.key).unwrap();
    owner.send(&r, &call).await.expect(201, "");
    let id = call.id();
    r.advance(1);
    let mut acc = nova.envelope(
        &r,
        &[&owner.handle],
        Payload::ConvAction {
            action: ConvActionKind::Accept,
            reason: None,
            participants: None,
        },
    );
    acc.conv = Some(id);
    nova.send(&r, &acc.sign(&nova.key).unwrap())
        .await
        .expect(201, "");
    // A sealed post, sealed to nova and to the owner (its own history).
    r.advance(1);
    let mut env = owner.envelope(&r, &[&nova.handle], text("sealed in the conversation"));
    env.conv = Some(id);
    let post = seal_sign(&r, &owner, env, true, 1).await;
    let resp = owner.send(&r, &post).await;
    resp.expect(201, "");
    assert_eq!(resp.get("seq").as_i64(), Some(3));
    // And nova's sealed answer.
    r.advance(1);
    let mut env = nova.envelope(&r, &[&owner.handle], text("answered sealed"));
    env.conv = Some(id);
    let answer = seal_sign(&r, &nova, env, true, 2).await;
    nova.send(&r, &answer).await.expect(201, "");
    let page = nova
        .authed(
            &r,
            "GET",
            &format!("/v1/conversations/{id}/entries?after=0"),
            b"",
        )
        .await;
    page.expect(200, "");
    let list = page.get("entries").as_array().unwrap();
    assert_eq!(list.len(), 4);
    let e3 = field(&list[2], &["envelope"]);
    assert_eq!(canon::canonicalize(e3), post.wire_bytes());
    assert_eq!(
        open_item(&r, &nova, &n_sk, e3).await,
        text("sealed in the conversation")
    );
    let e4 = field(&list[3], &["envelope"]);
    assert_eq!(canon::canonicalize(e4), answer.wire_bytes());
    assert_eq!(
        open_item(&r, &owner, &o_sk, e4).await,
        text("answered sealed")
    );
    assert_eq!(
        open_item(&r, &nova, &n_sk, e4).await,
        text("answered sealed")
    );
    // The post reached nova's inbox unchanged too.
    let items = nova.inbox(&r, 0).await;
    assert!(items
        .iter()
        .any(|i| canon::canonicalize(item_env(i)) == post.wire_bytes()));
}

#[tokio::test]
async fn malformed_sealed_envelopes_are_refused_with_code_and_field_and_nothing_is_stored() {
    let r = TestRelay::new();
    let alice = r.agent("alice").await;
    let nova = r.agent("nova").await;
    let bob = r.agent("bob").await;
    for x in [&nova, &bob] {
        x.put_contact(&r, &alice.handle, "task")
            .await
            .expect(200, "");
    }
    publish(&r, &alice, 1).await;
    publish(&r, &nova, 2).await;
    publish(&r, &bob, 3).await;
    r.advance(1);
    let env = alice.envelope(&r, &[&nova.handle], text("x"));
    let good = seal_sign(&r, &alice, env, false, 1).await;
    let v = good.value().clone();
    let events = r.store.len().unwrap();

    let mut cases: Vec<(&str, Vec<u8>, &str, &str)> = Vec::new();
    // One sealed key for two recipients.
    let mut x = v.clone();
    if let Value::Object(o) = &mut x {
        o.insert(
            "to",
            Value::Array(vec![
                nova.handle.as_str().into(),
                bob.handle.as_str().into(),
            ]),
        );
    }
    cases.push((
        "one key for two",
        sign_raw(&x, &alice.key),
        "invalid_field",
        "payload.sealed.keys",
    ));
    // A sealed key for someone who is neither a recipient nor the sender.
    let mut x = v.clone();
    {
        let s = sealed_obj(&mut x);
        let Some(Value::Array(ks)) = s.get_mut("keys") else {
            panic!()
        };
        let mut extra = ks[0].clone();
        if let Value::Object(k) = &mut extra {
            k.insert("to", bob.handle.as_str().into());
        }
        ks.push(extra);
    }
    cases.push((
        "extra key",
        sign_raw(&x, &alice.key),
        "invalid_field",
        "payload.sealed.keys[1].to",
    ));
    // A truncated content ciphertext (one byte short of its bucket and tag).
    let mut x = v.clone();
    {
        let s = sealed_obj(&mut x);
        let ct = seal::decode_b64(s.get("ct").unwrap().as_str().unwrap()).unwrap();
        s.insert("ct", seal::encode_b64(&ct[..ct.len() - 1]).into());
    }
    cases.push((
        "truncated ct",
        sign_raw(&x, &alice.key),
        "invalid_field",
        "payload.sealed.ct",
    ));
    // Base64 with padding (ENC-6).
    let mut x = v.clone();
    {
        let s = sealed_obj(&mut x);
        let ct = format!("{}==", s.get("ct").unwrap().as_str().unwrap());
        s.insert("ct", ct.into());
    }
    cases.push((
        "padded base64",
        sign_raw(&x, &alice.key),
        "invalid_field",
        "payload.sealed.ct",
    ));
    // An unknown member in the sealed object.
    let mut x = v.clone();
    sealed_obj(&mut x).insert("hint", "for nova".into());
    cases.push((
        "unknown member",
        sign_raw(&x, &alice.key),
        "unknown_field",
        "payload.sealed.hint",
    ));
    // Another suite.
    let mut x = v.clone();
    sealed_obj(&mut x).insert("suite", "x25519-hkdf-sha256-aes128gcm".into());
    cases.push((
        "unknown suite",
        sign_raw(&x, &alice.key),
        "invalid_field",
        "payload.sealed.suite",
    ));
    // A plaintext member next to sealed.
    let mut x = v.clone();
    if let Value::Object(o) = &mut x {
        if let Some(Value::Object(p)) = o.get_mut("payload") {
            p.insert("text", "leaked".into());
        }
    }
    cases.push((
        "plaintext next to sealed",
        sign_raw(&x, &alice.key),
        "unknown_field",
        "payload.text",
    ));
    // Types relays read cannot be sealed (SEAL-2): an ack and a contact request.
    for ty in ["ack", "contact_request"] {
        let mut x = v.clone();
        if let Value::Object(o) = &mut x {
            o.insert("type", ty.into());
        }
        cases.push((
            ty,
            sign_raw(&x, &alice.key),
            "invalid_field",
            "payload.sealed",
        ));
    }
    // A sealed task result still needs corr.
    let mut x = v.clone();
    if let Value::Object(o) = &mut x {
        o.insert("type", "task_result".into());
    }
    cases.push((
        "task_result without corr",
        sign_raw(&x, &alice.key),
        "missing_field",
        "corr",
    ));
    for (what, wire, code, fld) in &cases {
        let resp = r.call("POST", "/v1/envelopes", wire, &[]).await;
        assert_eq!(
            (resp.status, resp.code(), resp.field_of_error()),
            (400, *code, *fld),
            "{what}: {}",
            String::from_utf8_lossy(&resp.raw)
        );
    }
    // Nothing was stored, nothing delivered.
    assert_eq!(r.store.len().unwrap(), events);
    assert!(nova.inbox(&r, 0).await.is_empty());
    assert!(bob.inbox(&r, 0).await.is_empty());
    // The well-formed one is accepted.
    alice.send(&r, &good).await.expect(201, "");
    assert_eq!(nova.inbox(&r, 0).await.len(), 1);
}

#[tokio::test]
async fn a_sealed_payload_counts_against_the_tier_payload_cap() {
    let r = TestRelay::new();
    let alice = r.agent("alice").await;
    let nova = r.agent("nova").await;
    nova.put_contact(&r, &alice.handle, "message")
        .await
        .expect(200, "");
    publish(&r, &alice, 1).await;
    publish(&r, &nova, 2).await;
    let max = r.relay.app.engine.policy.tiers[0].payload_bytes_max;
    // A plaintext just under the cap is over it once sealed (padding, base64, sealed keys).
    r.advance(1);
    let env = alice.envelope(&r, &[&nova.handle], text(&"a".repeat(max - 64)));
    let big = seal_sign(&r, &alice, env, false, 1).await;
    alice.send(&r, &big).await.expect(413, "payload_too_large");
    // The same plaintext in the clear is within the cap.
    r.advance(1);
    let plain = alice.text(&r, &nova.handle, &"a".repeat(max - 64));
    alice.send(&r, &plain).await.expect(201, "");
}

#[tokio::test]
async fn the_relay_data_never_holds_the_plaintext_of_a_sealed_payload() {
    let dir = std::env::temp_dir().join(format!(
        "formica-sealed-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("log.redb");
    let store = Arc::new(RedbStore::open(&path).unwrap());
    let r = TestRelay::on_store(config(4), store.clone() as Arc<dyn Store>);
    let alice = r.agent("alice").await;
    let nova = r.agent("nova").await;
    nova.put_contact(&r, &alice.handle, "task")
        .await
        .expect(200, "");
    publish(&r, &alice, 1).await;
    let n_sk = publish(&r, &nova, 2).await;
    const SECRET: &str = "CANARY-sealed-7f3a9c-do-not-store";
    const CONTROL: &str = "CONTROL-plain-51d0e2-stored";
    r.advance(1);
    let env = alice.envelope(&r, &[&nova.handle], text(SECRET));
    let sealed = seal_sign(&r, &alice, env, true, 1).await;
    alice.send(&r, &sealed).await.expect(201, "");
    r.advance(1);
    let env = alice.envelope(
        &r,
        &[&nova.handle],
        Payload::TaskRequest {
            task: SECRET.into(),
            input: None,
        },
    );
    let sealed_task = seal_sign(&r, &alice, env, false, 2).await;
    alice.send(&r, &sealed_task).await.expect(201, "");
    r.advance(1);
    let plain = alice.text(&r, &nova.handle, CONTROL);
    alice.send(&r, &plain).await.expect(201, "");
    // The raw inbox answer holds the sealed envelopes as sent and no plaintext.
    let raw = nova.authed(&r, "GET", "/v1/inbox?after=0", b"").await.raw;
    assert!(has(&raw, &sealed.wire_bytes()));
    assert!(has(&raw, &sealed_task.wire_bytes()));
    assert!(!has(&raw, SECRET.as_bytes()));
    assert!(has(&raw, CONTROL.as_bytes()), "the control is found");
    // Nova still opens it.
    let items = nova.inbox(&r, 0).await;
    assert_eq!(
        open_item(&r, &nova, &n_sk, item_env(&items[0])).await,
        text(SECRET)
    );
    // The store file: the sealed envelopes' bytes, never the plaintext (the plain control
    // message shows that the file is searchable).
    drop(items);
    let file = std::fs::read(&path).unwrap();
    assert!(
        has(&file, CONTROL.as_bytes()),
        "the control text is in the file"
    );
    assert!(has(&file, &sealed.wire_bytes()), "stored byte for byte");
    assert!(!has(&file, SECRET.as_bytes()), "no plaintext in the store");
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sealed_envelopes_and_enc_entries_survive_a_restart_unchanged() {
    let store = Arc::new(formica_relay::store::MemStore::default());
    let r = TestRelay::with(config(4), store.clone());
    let alice = r.agent("alice").await;
    let nova = r.agent("nova").await;
    nova.put_contact(&r, &alice.handle, "message")
        .await
        .expect(200, "");
    publish(&r, &alice, 1).await;
    let n_sk = publish(&r, &nova, 2).await;
    r.advance(1);
    let env = alice.envelope(&r, &[&nova.handle], text("kept across a restart"));
    let se = seal_sign(&r, &alice, env, true, 1).await;
    alice.send(&r, &se).await.expect(201, "");
    let log_before = r.get(&format!("/v1/keys/{}", nova.handle)).await.raw;
    let now = r.now();
    drop(r);
    // The state is rebuilt from the stored events.
    let r2 = TestRelay::with(config(4), store);
    r2.now.store(now + 1, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        r2.get(&format!("/v1/keys/{}", nova.handle)).await.raw,
        log_before
    );
    let items = nova.inbox(&r2, 0).await;
    assert_eq!(items.len(), 1);
    assert_eq!(canon::canonicalize(item_env(&items[0])), se.wire_bytes());
    assert_eq!(
        open_item(&r2, &nova, &n_sk, item_env(&items[0])).await,
        text("kept across a restart")
    );
}
