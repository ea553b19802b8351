//! Sealed payloads (SPEC.md section 20, issue 27) and encryption keys in key logs (LOG-16), as a
//! relay must handle them: `enc` entries through `POST /v1/keys/{handle}` (accepted and served,
//! or refused with the codes of `vectors/sealed.json`'s `keylogs_invalid`), sealed envelopes
//! judged on their outer envelope (contacts, replies, conversations) and carried byte for byte
//! so that their recipients open them, sealed structures refused with the code and field of
//! `sealed.json`'s `invalid` list, and structurally valid envelopes that no one can open
//! (`unopenable`) accepted all the same: relays check the structure only.
//!
//! The suite seals with the protocol crate to its own agents' published encryption keys, and
//! re-creates the vectors with its own agents (their handles for the vector agents', its
//! relay's time, its signatures): the vectors' envelopes are signed by keys no relay knows.

use super::*;
use crate::case::{case, Env};
use crate::target::env_str;
use crate::vectors;
use formica_protocol::envelope::{EnvelopeLimits, Payload, SignedEnvelope};
use formica_protocol::keylog::KeyOp;
use formica_protocol::seal::{self, EncPublicKey, EncSecretKey, Recipient};
use formica_protocol::{SecretKey, SignedKeyLogEntry};
use rand::RngCore;

/// How long the suite's encryption keys are published for.
const ENC_LIFE_MS: i64 = 30 * 24 * 3600 * 1000;

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    let mut v = vec![
        case("seal.enc-key", &["LOG-16", "API-5", "API-6", "LOG-4", "LOG-10"], "an enc entry signed by the current key is appended (201, seq, head), a re-post is a duplicate, and the served log holds it as posted and verifies with it as the current encryption key", enc_key),
        case("seal.deliver", &["SEAL-1", "SEAL-4", "SEAL-8", "SEAL-9", "LOG-16", "ENV-15", "ENV-18", "API-9", "ACK-3"], "a sealed message to two recipients with the sender's own copy is accepted and served to each recipient byte for byte; each recipient, and the sender, opens it with the keys of the served logs; a recipient's ack settles its delivery as for any message", deliver),
        case("seal.contacts", &["SEAL-2", "CONTACT-4", "TYPE-14"], "contact rules apply to a sealed envelope by its type: a sealed task_request to an agent that granted the level message is level_insufficient; a sealed message, and a sealed task_result whose corr names no task_request of its recipient, from an agent granted nothing are not_contact", contacts).codes(&[E::LevelInsufficient, E::NotContact]),
        case("seal.task-reply", &["SEAL-2", "SEAL-8", "SEAL-9", "CONTACT-6", "TYPE-5", "TYPE-6", "ENV-18"], "a sealed task_request is delivered unchanged and opens; the sealed task_result whose corr names it is a reply that needs no grant (CONTACT-6, by type and corr, never the payload), delivered unchanged, and opens", task_reply),
        case("seal.extension", &["SEAL-1", "SEAL-2", "SEAL-8", "TYPE-12", "ENV-18"], "a sealed payload of an x- type is accepted, delivered unchanged and opens to the extension's object", extension),
        case("seal.conv", &["SEAL-2", "SEAL-8", "SEAL-9", "SEAL-13", "CONVO-8", "CONVO-4", "ENV-18"], "a sealed post in a conversation (sealed to the participants and the poster) is the next entry, served unchanged in the entries and the inbox, and opens for the participant", conv_post),
        case("seal.fed-deliver", &["SEAL-8", "LOG-16", "API-5", "FED-4", "ENV-18"], "with --peer: an agent seals to a peer's agent with the key of its log as the relay under test serves it (fetched from the peer), the peer delivers the envelope byte for byte and its agent opens it; the sealed answer comes back the same way", fed_deliver).peer(),
        case("seal.payload-cap", &["SEAL-8", "ENV-8"], "the tier's payload limit applies to the canonical size of the sealed payload: a plaintext just under the limit is payload_too_large once sealed", payload_cap).codes(&[E::PayloadTooLarge]),
        case("seal.not-sealable", &["SEAL-2", "INGEST-1"], "an ack and a contact_request with a sealed payload are invalid_field payload.sealed; nothing of them is stored", not_sealable).codes(&[E::InvalidField, E::NotFound]),
    ];
    for (i, c) in vectors::list(vectors::sealed(), "keylogs_invalid")
        .iter()
        .enumerate()
    {
        v.push(keylog_invalid(i, c));
    }
    for (i, c) in vectors::list(vectors::sealed(), "invalid")
        .iter()
        .enumerate()
    {
        v.push(envelope_invalid(i, c));
    }
    let relayed = vectors::list(vectors::sealed(), "valid")
        .iter()
        .chain(vectors::list(vectors::sealed(), "unopenable"));
    for (i, c) in relayed.enumerate() {
        if let Some(k) = envelope_relayed(i, c) {
            v.push(k);
        }
    }
    v
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// An agent of the suite with its published encryption key.
#[derive(Debug)]
pub struct Sealer {
    pub a: Agent,
    pub sk: EncSecretKey,
    pub pk: EncPublicKey,
}

/// A fresh encryption key pair.
pub fn enc_pair() -> R<(EncSecretKey, EncPublicKey)> {
    let sk = EncSecretKey::derive(&random32());
    let pk = sk
        .public()
        .ok_or_else(|| Stop::Fail("suite bug: a derived encryption key is weak".into()))?;
    Ok((sk, pk))
}

/// The `enc` entry publishing `pk` right after `a`'s register entry, signed by its key.
fn enc_entry(t: &Target, a: &Agent, pk: EncPublicKey) -> R<SignedKeyLogEntry> {
    let ts = t.now().max(a.reg_ts + 1);
    super::keylog::next(
        a,
        1,
        &a.head,
        ts,
        KeyOp::Enc {
            enc: pk,
            expires: ts + ENC_LIFE_MS,
        },
        &a.key,
        &[],
    )
}

/// Registers an agent and publishes an encryption key for it (LOG-16).
pub fn sealer(t: &Target, tag: &str) -> R<Sealer> {
    let a = t.register(tag)?;
    let (sk, pk) = enc_pair()?;
    super::keylog::append(t, &a, &enc_entry(t, &a, pk)?)?;
    Ok(Sealer { a, sk, pk })
}

/// `a` sends; `b`, `c` and `d` granted `a` the level task; all four published encryption keys.
#[derive(Debug)]
pub struct Four {
    pub a: Sealer,
    pub b: Sealer,
    pub c: Sealer,
    pub d: Sealer,
}

fn four(e: &Env<'_>) -> R<std::sync::Arc<Four>> {
    e.fixture("seal-four", |t| {
        let x = Four {
            a: sealer(t, "sla")?,
            b: sealer(t, "slb")?,
            c: sealer(t, "slc")?,
            d: sealer(t, "sld")?,
        };
        for r in [&x.b, &x.c, &x.d] {
            t.grant(&r.a, &x.a.a.handle, "task")?;
        }
        Ok(x)
    })
}

/// The encryption key of `h` current at `ts`, from its log as the relay serves it.
fn served_enc_key(t: &Target, a: &Agent, ts: i64) -> R<EncPublicKey> {
    let (log, _) = super::keylog::served_log(t, a)?;
    log.enc_key_current(ts).map(|p| p.key).ok_or_else(|| {
        Stop::Fail(format!(
            "GET /v1/keys/{}: the served log has no encryption key current at {ts}, though the enc entry was accepted (LOG-16, API-5)",
            a.handle
        ))
    })
}

/// Seals the envelope object `o` (its payload the plaintext) from `from` to the recipients of
/// its `to` (keys from the served logs), plus the sender's own copy when `self_copy`, and signs
/// it.
fn seal_obj(t: &Target, from: &Sealer, o: &Object, who: &[&Sealer], self_copy: bool) -> R<Signed> {
    let plain = t.sign(o, &from.a.key);
    let se = SignedEnvelope::parse(&plain.wire, &EnvelopeLimits::default())
        .map_err(|err| Stop::Fail(format!("suite bug: {err}")))?;
    let ts = se.envelope().ts;
    let mut rs = Vec::new();
    for r in who.iter().copied().chain(self_copy.then_some(from)) {
        rs.push(Recipient {
            handle: r.a.handle.clone(),
            key: served_enc_key(t, &r.a, ts)?,
            ephemeral: random32(),
        });
    }
    let sealed = seal::seal(se.envelope(), &rs, random32())
        .map_err(|err| Stop::Fail(format!("suite bug: sealing: {err}")))?;
    let mut o = o.clone();
    o.insert("payload", sealed.to_payload_value());
    Ok(t.sign(&o, &from.a.key))
}

/// Opens `env` as served, as `me`, with `me`'s served log; fails with the SEAL-11 reason.
fn open_as(t: &Target, me: &Sealer, env: &Value, what: &str) -> R<Payload> {
    let se = SignedEnvelope::parse(&canon::canonicalize(env), &EnvelopeLimits::default())
        .map_err(|err| Stop::Fail(format!("{what}: the served envelope does not parse: {err}")))?;
    let (log, _) = super::keylog::served_log(t, &me.a)?;
    let kid = me.pk.key_id();
    seal::open(se.envelope(), &me.a.handle, &log, |k| {
        (*k == kid).then(|| me.sk.clone())
    })
    .map_err(|err| {
        Stop::Fail(format!(
            "{what}: {} cannot open it: {} ({err})",
            me.a.handle,
            err.reason()
        ))
    })
}

fn payload_of(o: &Object) -> R<Payload> {
    let ty = o
        .get("type")
        .and_then(Value::as_str)
        .and_then(formica_protocol::envelope::MessageType::parse)
        .ok_or_else(|| Stop::Fail("suite bug: no type".into()))?;
    Payload::from_value(&ty, o.get("payload").unwrap_or(&Value::Null))
        .map_err(|err| Stop::Fail(format!("suite bug: {err}")))
}

/// Requires `got` (opened) to be the plaintext payload of `o`.
fn expect_opens_to(got: &Payload, o: &Object, who: &Handle) -> R {
    let want = payload_of(o)?;
    ensure!(
        *got == want,
        "{who} opened {:?}, not the payload sealed, {:?}",
        got,
        want
    );
    Ok(())
}

/// Posts `sg` from the shared sender, waiting out `rate_limited` answers (its tier's rate,
/// TRUST-7: the vector cases send more than a minute's burst), and requires `201 accepted`
/// with the suite's id (API-7, ENV-11).
fn send_ok_patiently(t: &Target, sg: &Signed) -> R {
    let r = super::conv_kit::post_patiently(t, sg)?;
    r.expect_json(201)?;
    ensure!(
        r.str_member("result")? == "accepted" && r.str_member("id")? == sg.id,
        "{}: expected 201 accepted with id {}: {}",
        r.what,
        sg.id,
        r.brief()
    );
    Ok(())
}

/// Like [`refuse_field`], waiting out `rate_limited` answers first.
fn refuse_field_patiently(t: &Target, sg: &Signed, code: ErrorCode, field: &str) -> R {
    super::conv_kit::post_patiently(t, sg)?.expect_error_field(code, field)?;
    Ok(())
}

/// The served envelope with id `id` in `a`'s inbox (waiting up to 3 s).
fn served(t: &Target, a: &Agent, sg: &Signed) -> R<Value> {
    served_within(t, a, sg, 3000)
}

/// Like [`served`], waiting up to `ms`.
fn served_within(t: &Target, a: &Agent, sg: &Signed, ms: u64) -> R<Value> {
    let id = sg.id.clone();
    t.wait_inbox(a, ms, &format!("envelope {id}"), |e| {
        env_str(e, "id") == Some(id.as_str())
    })?;
    let items = t.inbox(a)?;
    expect_delivered_as_sent(&items, sg, &a.handle)?;
    Ok(find(&items, &sg.id)
        .map(|(_, e)| e.clone())
        .unwrap_or(Value::Null))
}

fn enc_key(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("slk")?;
    let (_, pk) = enc_pair()?;
    let entry = enc_entry(t, &a, pk)?;
    super::keylog::append(t, &a, &entry)?;
    let again = super::keylog::post_entry(t, &a, &entry)?;
    again.expect_json(200)?;
    ensure!(
        again.str_member("result")? == "duplicate",
        "{}: re-posting the accepted enc entry: {} (API-6: duplicate)",
        again.what,
        again.brief()
    );
    let (log, _) = super::keylog::served_log(t, &a)?;
    let g = t.http.get(&format!("/v1/keys/{}", a.handle))?;
    expect_raw_contains(&g, &entry.wire_bytes(), "the enc entry")?;
    ensure!(
        log.entries().len() == 2,
        "the served log has {} entries, expected the register and the enc entry (API-5)",
        log.entries().len()
    );
    let cur = log.enc_key_current(entry.entry().ts).map(|p| p.key);
    ensure!(
        cur == Some(pk),
        "the served log's current encryption key is {cur:?}, not the one published (LOG-16)"
    );
    Ok(())
}

fn deliver(e: &Env<'_>) -> R {
    let t = e.t;
    let x = four(e)?;
    let o = t.envelope(&x.a.a, "message", &[&x.b.a.handle, &x.c.a.handle], text(t));
    let sg = seal_obj(t, &x.a, &o, &[&x.b, &x.c], true)?;
    send_ok_patiently(t, &sg)?;
    for r in [&x.b, &x.c] {
        let env = served(t, &r.a, &sg)?;
        let got = open_as(t, r, &env, &format!("{}'s inbox", r.a.handle))?;
        expect_opens_to(&got, &o, &r.a.handle)?;
        if r.a.handle == x.b.a.handle {
            // The sender's own copy (SEAL-4) opens for the sender.
            let mine = open_as(t, &x.a, &env, "the sender's copy")?;
            expect_opens_to(&mine, &o, &x.a.a.handle)?;
        }
    }
    // SEAL-9: an ack of the sealed message settles its delivery, by id.
    let k = ack(t, &x.b.a, &x.a.a.handle, &sg.id, "processed");
    t.send_ok(&k)?;
    t.wait_delivery(&x.a.a, &sg.id, &x.b.a.handle, "acked", 3000)?;
    Ok(())
}

fn contacts(e: &Env<'_>) -> R {
    let t = e.t;
    let a = sealer(t, "slca")?;
    let b = sealer(t, "slcb")?;
    t.grant(&b.a, &a.a.handle, "message")?;
    // At level message a task request, sealed or not, is level_insufficient (TYPE-14).
    let task = obj(vec![("task", s("summarize"))]);
    let o = t.envelope(&a.a, "task_request", &[&b.a.handle], task);
    let low = seal_obj(t, &a, &o, &[&b], false)?;
    refuse(t, &low.wire, ErrorCode::LevelInsufficient)?;
    // `a` granted `b` nothing.
    let o = t.envelope(&b.a, "message", &[&a.a.handle], text(t));
    let m = seal_obj(t, &b, &o, &[&a], false)?;
    refuse(t, &m.wire, ErrorCode::NotContact)?;
    let result = obj(vec![("status", s("ok")), ("output", s(&t.uniq("lines")))]);
    let mut stray = t.envelope(&b.a, "task_result", &[&a.a.handle], result);
    stray.insert("corr", s(&"f".repeat(64)));
    let stray = seal_obj(t, &b, &stray, &[&a], false)?;
    refuse(t, &stray.wire, ErrorCode::NotContact)?;
    Ok(())
}

fn task_reply(e: &Env<'_>) -> R {
    let t = e.t;
    let a = sealer(t, "slta")?;
    let b = sealer(t, "sltb")?;
    t.grant(&b.a, &a.a.handle, "task")?;
    let task = obj(vec![
        ("task", s("summarize")),
        ("input", s(&t.uniq("secret"))),
    ]);
    let o = t.envelope(&a.a, "task_request", &[&b.a.handle], task);
    let req = seal_obj(t, &a, &o, &[&b], true)?;
    t.send_ok(&req)?;
    let env = served(t, &b.a, &req)?;
    expect_opens_to(&open_as(t, &b, &env, "the task request")?, &o, &b.a.handle)?;
    // `a` granted `b` nothing: the sealed result is a reply by its corr (CONTACT-6).
    let result = obj(vec![("status", s("ok")), ("output", s(&t.uniq("lines")))]);
    let mut o = t.envelope(&b.a, "task_result", &[&a.a.handle], result);
    o.insert("corr", s(&req.id));
    let reply = seal_obj(t, &b, &o, &[&a], true)?;
    t.send_ok(&reply)?;
    let env = served(t, &a.a, &reply)?;
    expect_opens_to(&open_as(t, &a, &env, "the task result")?, &o, &a.a.handle)?;
    Ok(())
}

fn extension(e: &Env<'_>) -> R {
    let t = e.t;
    let x = four(e)?;
    let ty = "x-conformance.sealed";
    if !t.published.tier0().may_send(ty) {
        skip!("the first tier may not send x- types (may_send)");
    }
    let o = t.envelope(
        &x.a.a,
        ty,
        &[&x.d.a.handle],
        obj(vec![("n", int(42)), ("note", s(&t.uniq("ext")))]),
    );
    let sg = seal_obj(t, &x.a, &o, &[&x.d], false)?;
    send_ok_patiently(t, &sg)?;
    let env = served(t, &x.d.a, &sg)?;
    expect_opens_to(
        &open_as(t, &x.d, &env, "the x- envelope")?,
        &o,
        &x.d.a.handle,
    )?;
    Ok(())
}

fn conv_post(e: &Env<'_>) -> R {
    use super::conv_kit as k;
    let t = e.t;
    k::lim(t)?;
    let x = k::trio(t, "slv")?;
    let (conv, _) = k::started(t, &x, "live")?;
    // The owner and the participant who joined publish encryption keys.
    let mut keys = Vec::new();
    for a in [&x.a, &x.b] {
        let (sk, pk) = enc_pair()?;
        super::keylog::append(t, a, &enc_entry(t, a, pk)?)?;
        keys.push(Sealer {
            a: a.clone(),
            sk,
            pk,
        });
    }
    let (owner, part) = (&keys[0], &keys[1]);
    let mut o = t.envelope(&x.a, "message", &[&x.b.handle], text(t));
    o.insert("conv", s(&conv));
    let sg = seal_obj(t, owner, &o, &[part], true)?;
    k::send_at(t, &sg, &conv, 3)?;
    let es = k::entries(t, &x.b, &conv)?;
    k::expect_env_at(&es, 3, &sg)?;
    let env = served(t, &x.b, &sg)?;
    expect_opens_to(&open_as(t, part, &env, "the sealed post")?, &o, &x.b.handle)?;
    // The owner reads its own post from the entries (its own copy).
    let e3 = es
        .iter()
        .find(|v| k::entry_seq(v) == 3)
        .and_then(|v| at(v, &["envelope"]))
        .cloned()
        .unwrap_or(Value::Null);
    expect_opens_to(&open_as(t, owner, &e3, "entry 3")?, &o, &x.a.handle)?;
    Ok(())
}

fn fed_deliver(e: &Env<'_>) -> R {
    const FED_WAIT_MS: u64 = 20_000;
    let t = e.t;
    let p = e
        .peer
        .ok_or_else(|| Stop::Skip("federation: needs --peer".into()))?;
    if !t.published.federation_enabled || !p.published.federation_enabled {
        skip!("the relay or its peer publishes federation.enabled = false");
    }
    let a = sealer(t, "slfa")?;
    let b = sealer(p, "slfb")?;
    p.grant(&b.a, &a.a.handle, "message")?;
    t.grant(&a.a, &b.a.handle, "message")?;
    // `b`'s key as the relay under test serves `b`'s log (API-5: fetched from its home).
    let o = t.envelope(&a.a, "message", &[&b.a.handle], text(t));
    let sg = seal_obj(t, &a, &o, &[&b], true)?;
    t.send_ok(&sg)?;
    let env = served_within(p, &b.a, &sg, FED_WAIT_MS)?;
    expect_opens_to(&open_as(p, &b, &env, "at the peer")?, &o, &b.a.handle)?;
    let o = p.envelope(&b.a, "message", &[&a.a.handle], text(p));
    let back = seal_obj(p, &b, &o, &[&a], true)?;
    p.send_ok(&back)?;
    let env = served_within(t, &a.a, &back, FED_WAIT_MS)?;
    expect_opens_to(&open_as(t, &a, &env, "the answer")?, &o, &a.a.handle)?;
    Ok(())
}

fn payload_cap(e: &Env<'_>) -> R {
    let t = e.t;
    let x = four(e)?;
    let max = t.published.tier0().payload_bytes_max;
    if max <= 64 || max > 1 << 20 {
        skip!("the first tier publishes payload_bytes_max {max}");
    }
    // {"text":"..."} is 11 bytes more than the text: this plaintext is under the limit.
    let plain = obj(vec![("text", s(&"a".repeat((max - 64) as usize)))]);
    ensure!(
        (canon::canonicalize(&plain).len() as i64) < max,
        "suite bug: the plaintext is not under the limit"
    );
    let o = t.envelope(&x.a.a, "message", &[&x.b.a.handle], plain);
    let sg = seal_obj(t, &x.a, &o, &[&x.b], false)?;
    super::conv_kit::post_patiently(t, &sg)?.expect_error(ErrorCode::PayloadTooLarge)?;
    Ok(())
}

fn not_sealable(e: &Env<'_>) -> R {
    let t = e.t;
    let x = four(e)?;
    let o = t.envelope(&x.a.a, "message", &[&x.b.a.handle], text(t));
    let sealed = seal_obj(t, &x.a, &o, &[&x.b], false)?;
    let payload = at(&sealed.value, &["payload"])
        .cloned()
        .unwrap_or(Value::Null);
    for ty in ["ack", "contact_request"] {
        let mut bad = t.envelope(&x.a.a, ty, &[&x.b.a.handle], payload.clone());
        bad.insert("ts", int(t.now()));
        let sg = t.sign(&bad, &x.a.a.key);
        refuse_field_patiently(t, &sg, ErrorCode::InvalidField, "payload.sealed")?;
        // Nothing was stored: the sender has no message with that id (API-13).
        t.status(&x.a.a, &sg.id)?
            .expect_error(ErrorCode::NotFound)?;
    }
    Ok(())
}

// ------------------------------------------------------------------ sealed.json

/// The vector agents' handles, in the order the suite's `Four` stands in for them.
const VECTOR_HANDLES: [&str; 4] = [
    "@alice@relay-a.example",
    "@nova@relay-b.example",
    "@bob@relay-b.example",
    "@carol@relay-c.example",
];

/// Every string of `v` that is a vector agent's handle replaced by the suite's agent's.
fn map_handles(v: &Value, to: &[&Handle; 4]) -> Value {
    match v {
        Value::String(x) => match VECTOR_HANDLES.iter().position(|h| h == x) {
            Some(i) => s(to[i].as_str()),
            None => v.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(|x| map_handles(x, to)).collect()),
        Value::Object(o) => {
            let mut out = Object::new();
            for (k, x) in o.iter() {
                out.insert(k, map_handles(x, to));
            }
            Value::Object(out)
        }
        _ => v.clone(),
    }
}

/// A vector envelope re-created by the suite: the vector agents' handles replaced by `x`'s,
/// `key` and `ts` those of `x.a` now (an `ack_by` kept as far after it), signed by `x.a`.
fn recreate(t: &Target, x: &Four, input: &str) -> R<Signed> {
    let v = formica_protocol::json::parse(input.as_bytes(), Default::default())
        .map_err(|err| Stop::Fail(format!("sealed.json: an input does not parse: {err}")))?;
    let hs = [&x.a.a.handle, &x.b.a.handle, &x.c.a.handle, &x.d.a.handle];
    let Value::Object(mut o) = map_handles(&v, &hs) else {
        fail!("sealed.json: an input is not an object");
    };
    let ts0 = o.get("ts").and_then(Value::as_i64).unwrap_or(0);
    let now = t.now();
    o.insert("ts", int(now));
    if let Some(ab) = o.get("ack_by").and_then(Value::as_i64) {
        o.insert("ack_by", int(now + (ab - ts0)));
    }
    o.insert("key", s(&x.a.a.key.public().key_id().to_hex()));
    o.remove("id");
    o.remove("sig");
    Ok(t.sign(&o, &x.a.a.key))
}

fn field_reqs(field: &str, code: &str, comment: &str) -> &'static [&'static str] {
    let l = comment.to_ascii_lowercase();
    match (code, field) {
        (_, "corr") => &["SEAL-2", "TYPE-6", "INGEST-1", "VEC-2"],
        (_, "payload.sealed") => &["SEAL-2", "INGEST-1", "VEC-2"],
        (_, "payload.sealed.suite") => &["SEAL-3", "SEAL-4", "INGEST-1", "VEC-2"],
        (_, "payload.sealed.ct") if l.contains("base64") => {
            &["SEAL-4", "SEAL-6", "ENC-6", "INGEST-1", "VEC-2"]
        }
        (_, "payload.sealed.ct") => &["SEAL-4", "SEAL-6", "INGEST-1", "VEC-2"],
        ("unknown_field", f) if !f.starts_with("payload.sealed") => {
            &["SEAL-1", "ENV-9", "INGEST-1", "VEC-2"]
        }
        ("unknown_field", _) => &["SEAL-4", "ENV-9", "INGEST-1", "VEC-2"],
        _ => &["SEAL-4", "INGEST-1", "VEC-2"],
    }
}

/// sealed.json `invalid`: the same fault in an envelope of the suite's agents is refused with
/// the vector's code and field, and nothing is stored.
fn envelope_invalid(i: usize, c: &Value) -> Case {
    let cm = vectors::field(c, "comment").unwrap_or("").to_owned();
    let input = vectors::field(c, "input").unwrap_or("").to_owned();
    let code_s = vectors::field(c, "error").unwrap_or("").to_owned();
    let fld = vectors::field(c, "field").unwrap_or("").to_owned();
    let code = ErrorCode::from_wire(&code_s).unwrap_or(ErrorCode::Internal);
    let reqs = field_reqs(&fld, &code_s, &cm);
    case(
        format!("vec.sealed.invalid.{i}"),
        reqs,
        format!("sealed.json: {cm}: refused with {code_s} at {fld}"),
        move |e| {
            let t = e.t;
            let x = four(e)?;
            let sg = recreate(t, &x, &input)?;
            refuse_field_patiently(t, &sg, code, &fld)?;
            t.status(&x.a.a, &sg.id)?
                .expect_error(ErrorCode::NotFound)?;
            Ok(())
        },
    )
    .codes(&[code, ErrorCode::NotFound])
}

/// sealed.json `valid` and `unopenable` (but the conversation post, whose conversation does not
/// exist on the relay): the same envelope from the suite's agents is accepted and delivered
/// byte for byte, whether or not its recipients can open it. Relays check the structure only.
fn envelope_relayed(i: usize, c: &Value) -> Option<Case> {
    let cm = vectors::field(c, "comment").unwrap_or("").to_owned();
    let input = vectors::field(c, "input").unwrap_or("").to_owned();
    if input.contains("\"conv\":") {
        return None;
    }
    Some(case(
        format!("vec.sealed.relayed.{i}"),
        &["SEAL-4", "SEAL-6", "SEAL-8", "ENV-18", "VEC-2"],
        format!("sealed.json: {cm}: accepted and delivered byte for byte (relays do not open sealed payloads)"),
        move |e| {
            let t = e.t;
            let x = four(e)?;
            let sg = recreate(t, &x, &input)?;
            if let Some(ty) = env_str(&sg.value, "type") {
                if !t.published.tier0().may_send(ty) {
                    skip!("the first tier may not send {ty} (may_send)");
                }
            }
            send_ok_patiently(t, &sg)?;
            let to: Vec<String> = at(&sg.value, &["to"])
                .and_then(Value::as_array)
                .unwrap_or(&[])
                .iter()
                .filter_map(|h| h.as_str().map(str::to_owned))
                .collect();
            for r in [&x.b, &x.c, &x.d] {
                if to.iter().any(|h| h == r.a.handle.as_str()) {
                    served(t, &r.a, &sg)?;
                }
            }
            Ok(())
        },
    ))
}

/// Entry members that are not the op's own.
const ENTRY_FRAME: [&str; 8] = ["v", "handle", "seq", "prev", "ts", "op", "signer", "sig"];

/// Signs an entry object under the key-log tag as `sk` and returns its wire bytes and hash.
fn signed_entry(o: &Object, sk: &SecretKey) -> R<(Vec<u8>, String)> {
    let mut v = sign_as(o, sk, Domain::KeyLog).value;
    if let Value::Object(x) = &mut v {
        x.remove("id");
    }
    let wire = canon::canonicalize(&v);
    // The hash, for the next entry's prev (only entries the relay must accept are parsed).
    let hash = SignedKeyLogEntry::from_value(v)
        .map(|e| e.hash().to_hex())
        .unwrap_or_default();
    Ok((wire, hash))
}

/// sealed.json `keylogs_invalid`: the same entries, made by a fresh agent of the suite (its
/// handle, keys and times; the register entry is its registration), are accepted up to the
/// last, which is refused with the vector's code.
fn keylog_invalid(i: usize, c: &Value) -> Case {
    let cm = vectors::field(c, "comment").unwrap_or("").to_owned();
    let code_s = vectors::field(c, "error").unwrap_or("").to_owned();
    let code = ErrorCode::from_wire(&code_s).unwrap_or(ErrorCode::Internal);
    let entries: Vec<Value> = at(c, &["entries"])
        .and_then(Value::as_array)
        .unwrap_or(&[])
        .to_vec();
    let mut reqs: Vec<&'static str> = vec!["LOG-16", "API-6", "VEC-2"];
    match code {
        ErrorCode::WeakKey | ErrorCode::InvalidKey => reqs.push("KEY-2"),
        ErrorCode::KeylogKeyReused => reqs.push("LOG-13"),
        ErrorCode::UnknownField => reqs.push("LOG-3"),
        ErrorCode::KeylogUnauthorizedSigner => reqs.push("LOG-7"),
        ErrorCode::KeylogClosed => reqs.push("LOG-9"),
        _ => {}
    }
    let reqs: &'static [&'static str] = Box::leak(reqs.into_boxed_slice());
    case(
        format!("vec.sealed.keylogs-invalid.{i}"),
        reqs,
        format!("sealed.json keylogs_invalid: {cm}: re-created against the relay, refused with {code_s}"),
        move |e| {
            let t = e.t;
            // A log that stays at its register entry (every entry posted to it is refused) is
            // shared; a longer sequence needs an agent of its own.
            let a = if entries.len() == 2 {
                e.fixture("seal-keylog-base", |t| t.register("slkb"))?
            } else {
                std::sync::Arc::new(t.register("slki")?)
            };
            let rec = a
                .recovery
                .clone()
                .ok_or_else(|| Stop::Fail("suite bug: no recovery key".into()))?;
            let reg_signer = at(&entries[0], &["signer"]).cloned();
            let vts0 = at(&entries[0], &["ts"]).and_then(Value::as_i64).unwrap_or(0);
            let vts1 = entries
                .get(1)
                .and_then(|en| at(en, &["ts"]))
                .and_then(Value::as_i64)
                .unwrap_or(vts0);
            let ts1 = t.now().max(a.reg_ts + 1);
            let mut prev = a.head.clone();
            let n = entries.len();
            for (seq, en) in entries.iter().enumerate().skip(1) {
                let Some(vo) = en.as_object() else {
                    fail!("sealed.json: an entry is not an object");
                };
                let vts = vo.get("ts").and_then(Value::as_i64).unwrap_or(vts1);
                let ts = ts1 + (vts - vts1);
                let signer = if vo.get("signer") == reg_signer.as_ref() {
                    &a.key
                } else {
                    &rec
                };
                let mut o = Object::new();
                o.insert("v", int(1));
                o.insert("handle", s(a.handle.as_str()));
                o.insert("seq", int(seq as i64));
                o.insert("prev", s(&prev));
                o.insert("ts", int(ts));
                for (k, v) in vo.iter() {
                    if k == "expires" {
                        let ve = v.as_i64().unwrap_or(0);
                        o.insert("expires", int(ts + (ve - vts)));
                    } else if !ENTRY_FRAME.contains(&k) || k == "op" {
                        o.insert(k, v.clone());
                    }
                }
                o.insert("signer", s(&signer.public().key_id().to_hex()));
                let (wire, hash) = signed_entry(&o, signer)?;
                let r = t.http.post(&format!("/v1/keys/{}", a.handle), &wire)?;
                if seq + 1 == n && n == 2 && r.status < 300 {
                    fail!("{}: the relay accepted the entry ({}); the shared agent's log is changed and later cases of this group may fail", r.what, r.brief());
                }
                if seq + 1 < n {
                    r.expect_json(201)?;
                    prev = hash;
                    continue;
                }
                let unknown = vo
                    .keys()
                    .find(|k| !ENTRY_FRAME.contains(k) && !["enc", "expires"].contains(k));
                match code {
                    ErrorCode::InvalidField | ErrorCode::MissingField => {
                        r.expect_error_field(code, "expires")?;
                    }
                    ErrorCode::UnknownField => {
                        r.expect_error_field(code, unknown.unwrap_or(""))?;
                    }
                    _ => {
                        r.expect_error(code)?;
                    }
                }
            }
            // The refused entry changed nothing.
            let (log, _) = super::keylog::served_log(t, &a)?;
            ensure!(
                log.entries().len() == n - 1,
                "after the refusal the served log has {} entries, expected {} (API-6)",
                log.entries().len(),
                n - 1
            );
            Ok(())
        },
    )
    .codes(&[code])
}
