//! Posting envelopes: acceptance and the id (API-7, ENV-10, ENV-11, ENV-14, ENV-15), duplicates
//! and replays (ERR-3, INGEST-2, TIME-3), freshness (TIME-1, TIME-2, TIME-5), the order of the
//! ingest pipeline (INGEST-1, CONV-3), all-or-none (INGEST-3), size and depth (JSON-1, JSON-8,
//! HTTP-2), strict signatures (SIG-3, ENV-17, the envelopes_invalid.json verification cases),
//! and batches (API-8, API-12).

use super::*;
use crate::case::{case, Env};
use crate::http::Body;
use crate::target::random_key;
use formica_protocol::keylog::{EntryHash, KeyLogEntry, KeyOp};

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("env.accept-noncanonical", &["API-7", "ENV-10", "ENV-11", "ENV-14", "ENV-15", "ENV-18", "CANON-5", "HTTP-3"], "an envelope sent with whitespace, another member order and escapes is accepted under the id of its canonical form and served canonical", accept_noncanonical),
        case("env.id-member", &["ENV-14"], "a correct `id` is accepted; any other string is id_mismatch; a non-string is invalid_field", id_member).codes(&[E::IdMismatch, E::InvalidField]),
        case("env.duplicate", &["API-7", "ERR-3", "INGEST-2"], "an exact replay answers 200 duplicate and is stored once", duplicate),
        case("env.duplicate-other-signature", &["INGEST-2"], "a replay with other signature bytes is a duplicate by id and does not replace the stored copy", duplicate_other_sig),
        case("env.duplicate-after-rotation", &["INGEST-2", "INGEST-1"], "a replay after the sender rotated its key is still duplicate (dedup before the key lookup)", duplicate_after_rotation),
        case("env.replay-within-window", &["TIME-3", "INGEST-2"], "a replay of an envelope whose ts is near the end of the window is still recognised after a wait", replay_within_window),
        case("env.stale", &["TIME-1", "TIME-4", "TIME-5", "ENV-12"], "an envelope older than window_ms is stale, with server_time", |e| out_of_window(e, true)).codes(&[E::Stale]),
        case("env.future", &["TIME-2", "TIME-4", "TIME-5", "ENV-12"], "an envelope further ahead than skew_ms is future, with server_time", |e| out_of_window(e, false)).codes(&[E::Future]),
        case("env.fresh-near-bounds", &["TIME-1", "TIME-2"], "timestamps inside the window, near both bounds, are accepted", near_bounds),
        case("env.unknown-sender", &["INGEST-1"], "a sender not registered here, or homed elsewhere, is unknown_sender", unknown_sender).codes(&[E::UnknownSender]),
        case("env.recovery-key-not-signing", &["LOG-12", "ENV-4", "ENV-17"], "an envelope signed with the recovery key is unknown_key: a recovery key is never a signing key", recovery_key_signs).codes(&[E::UnknownKey]),
        case("env.receipt-from-relay-address", &["RCPT-5", "INGEST-1", "TYPE-8"], "a receipt from @relay@host submitted through the client API is type_reserved", receipt_from_relay).codes(&[E::TypeReserved]),
        case("env.unknown-recipient", &["INGEST-1", "TRUST-3"], "an unregistered recipient, or the relay address for a message, is unknown_recipient", unknown_recipient).codes(&[E::UnknownRecipient]),
        case("env.all-or-none", &["INGEST-3", "CONTACT-4"], "an envelope refused for one recipient reaches none", all_or_none).codes(&[E::NotContact]),
        case("env.order", &["INGEST-1", "CONV-3", "ENV-16"], "with several faults, the first check of the ingest order decides the code", order)
            .codes(&[E::UnsupportedVersion, E::Stale, E::BadSignature, E::UnknownKey, E::UnknownRecipient, E::PayloadTooLarge]),
        case("env.too-large", &["JSON-1", "HTTP-2", "API-7"], "a body over envelope_bytes_max is too_large, also when sent chunked", too_large).codes(&[E::TooLarge]),
        case("env.depth-limit", &["JSON-8", "HTTP-13"], "an envelope nested exactly json_depth_max deep is accepted and served in an inbox page; one level more is too_deep", depth_limit).codes(&[E::TooDeep]),
        case("env.recipients-limit", &["ENV-6", "INGEST-1"], "limits.recipients_max + 1 recipients are too_many_recipients", recipients_limit).codes(&[E::TooManyRecipients]),
        case("batch.mixed", &["API-8", "API-12", "HTTP-4"], "a batch answers 200 with one result per element, in order: accepted, duplicate, each refusal with its error", batch_mixed)
            .codes(&[E::NotContact, E::BadSignature]),
        case("batch.limits", &["API-8", "HTTP-2"], "a batch body that is not exactly {\"envelopes\": [...]}, or has too many elements, fails as a whole", batch_limits)
            .codes(&[E::TooLarge, E::MissingField, E::UnknownField, E::InvalidField]),
        case("batch.element-too-large", &["API-8"], "an element over envelope_bytes_max is refused alone with too_large", batch_element_too_large).codes(&[E::TooLarge]),
        case("batch.depth", &["API-8", "JSON-8"], "a batch is parsed with json_depth_max + 2: an element of the maximal depth is judged, a deeper one fails the batch", batch_depth).codes(&[E::TooDeep]),
    ]
}

struct Pair {
    a: Agent,
    b: Agent,
}

/// Two fresh agents where `b` lets `a` send everything.
fn pair(t: &Target, tag: &str) -> R<Pair> {
    let a = t.register(&format!("{tag}a"))?;
    let b = t.register(&format!("{tag}b"))?;
    t.grant(&b, &a.handle, "task")?;
    Ok(Pair { a, b })
}

// ------------------------------------------------------------------ envelopes_invalid.json, verification

/// Re-creates a verification case of envelopes_invalid.json with the suite's agents.
pub fn invalid_recreation(id: String, comment: &str, code: ErrorCode) -> Case {
    let c = comment.to_ascii_lowercase();
    type F = fn(&Env<'_>) -> R;
    let (reqs, f): (&'static [&'static str], F) = if c.contains("bit of the signature") {
        (
            &["SIG-3", "ENV-13", "ENV-17", "INGEST-1", "VEC-2"],
            flipped_bit,
        )
    } else if c.contains("payload changed") {
        (
            &["ENV-10", "ENV-11", "ENV-17", "SIG-2", "VEC-2"],
            payload_changed,
        )
    } else if c.contains("different key than the one named") {
        (&["ENV-17", "KEY-4", "SIG-3", "VEC-2"], other_key_signed)
    } else if c.contains("key other than the one the envelope names") {
        (
            &["ENV-4", "ENV-17", "KEY-4", "LOG-12", "VEC-2"],
            unknown_key_named,
        )
    } else if c.contains("receipt tag") {
        (
            &["SIG-1", "SIG-2", "ENV-10", "ENV-17", "VEC-2"],
            receipt_tag,
        )
    } else if c.contains("key-log tag") {
        (&["SIG-1", "SIG-2", "ENV-10", "ENV-17", "VEC-2"], keylog_tag)
    } else if c.contains("under the request tag") {
        (
            &["SIG-1", "SIG-2", "ENV-10", "ENV-17", "VEC-2"],
            request_tag,
        )
    } else if c.contains("descriptor tag") {
        (
            &["SIG-1", "SIG-2", "ENV-10", "ENV-17", "VEC-2"],
            descriptor_tag,
        )
    } else if c.contains("relay-request tag") {
        (
            &["SIG-1", "SIG-2", "ENV-10", "ENV-17", "VEC-2"],
            relay_request_tag,
        )
    } else if c.contains("s + l") {
        (&["SIG-3", "ENV-17", "VEC-2"], s_plus_l)
    } else {
        (&["VEC-2"], |_| {
            Err(Stop::Skip(
                "no re-creation of this verification vector is known to this version of the suite"
                    .into(),
            ))
        })
    };
    case(
        id,
        reqs,
        format!(
            "envelopes_invalid.json: {comment}: re-created with the suite's agent, refused with {}",
            code.as_str()
        ),
        f,
    )
    .codes(&[code])
}

fn signer(e: &Env<'_>) -> R<std::sync::Arc<Agent>> {
    e.fixture("sig-agent", |t| t.register("sig"))
}

fn self_msg(t: &Target, a: &Agent) -> Object {
    t.envelope(a, "message", &[&a.handle], text(t))
}

fn flipped_bit(e: &Env<'_>) -> R {
    let a = signer(e)?;
    let sg = e.t.sign(&self_msg(e.t, &a), &a.key);
    let mut sig = sig_bytes(&sg);
    sig[0] ^= 1;
    refuse(
        e.t,
        &with_sig(&sg, &formica_protocol::hex::encode(&sig)),
        ErrorCode::BadSignature,
    )?;
    Ok(())
}

fn payload_changed(e: &Env<'_>) -> R {
    let a = signer(e)?;
    let sg = e.t.sign(&self_msg(e.t, &a), &a.key);
    let mut v = sg.value.clone();
    if let Value::Object(o) = &mut v {
        o.remove("id");
        o.insert("payload", obj(vec![("text", s(&e.t.uniq("changed")))]));
    }
    refuse(e.t, &canon::canonicalize(&v), ErrorCode::BadSignature)?;
    Ok(())
}

fn other_key_signed(e: &Env<'_>) -> R {
    let a = signer(e)?;
    let other = random_key();
    let sg = sign_as(&self_msg(e.t, &a), &other, Domain::Envelope);
    refuse(e.t, &sg.wire, ErrorCode::BadSignature)?;
    Ok(())
}

fn unknown_key_named(e: &Env<'_>) -> R {
    let a = signer(e)?;
    let other = random_key();
    let o = with(
        self_msg(e.t, &a),
        "key",
        s(&other.public().key_id().to_hex()),
    );
    refuse(
        e.t,
        &sign_as(&o, &other, Domain::Envelope).wire,
        ErrorCode::UnknownKey,
    )?;
    Ok(())
}

/// Signed under another purpose's tag, sent without `id` (an id computed under that tag would
/// be refused as id_mismatch before the signature is looked at).
fn wrong_tag(e: &Env<'_>, domain: Domain) -> R {
    let a = signer(e)?;
    let sg = sign_as(&self_msg(e.t, &a), &a.key, domain);
    let mut v = sg.value.clone();
    if let Value::Object(o) = &mut v {
        o.remove("id");
    }
    refuse(e.t, &canon::canonicalize(&v), ErrorCode::BadSignature)?;
    Ok(())
}

fn receipt_tag(e: &Env<'_>) -> R {
    wrong_tag(e, Domain::Receipt)
}

fn keylog_tag(e: &Env<'_>) -> R {
    wrong_tag(e, Domain::KeyLog)
}

fn request_tag(e: &Env<'_>) -> R {
    wrong_tag(e, Domain::Request)
}

fn descriptor_tag(e: &Env<'_>) -> R {
    wrong_tag(e, Domain::Descriptor)
}

fn relay_request_tag(e: &Env<'_>) -> R {
    wrong_tag(e, Domain::RelayRequest)
}

fn s_plus_l(e: &Env<'_>) -> R {
    let a = signer(e)?;
    let sg = e.t.sign(&self_msg(e.t, &a), &a.key);
    let mut sig = sig_bytes(&sg);
    super::signatures::add_l(&mut sig[32..]);
    refuse(
        e.t,
        &with_sig(&sg, &formica_protocol::hex::encode(&sig)),
        ErrorCode::BadSignature,
    )?;
    Ok(())
}

// ------------------------------------------------------------------ acceptance

fn accept_noncanonical(e: &Env<'_>) -> R {
    let t = e.t;
    let p = pair(t, "ncn")?;
    let text = t.uniq("caf\u{e9}/\u{1F600}");
    let o = t.envelope(
        &p.a,
        "message",
        &[&p.b.handle],
        obj(vec![("text", s(&text))]),
    );
    let sg = t.sign(&o, &p.a.key);
    // The same object, written the way a sloppy sender might: members reversed, whitespace,
    // every non-ASCII character and `/` escaped, no `id`.
    let mut members: Vec<(String, Value)> = sg
        .value
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.to_owned(), v.clone())).collect())
        .unwrap_or_default();
    members.retain(|(k, _)| k != "id");
    members.reverse();
    let mut body = String::from("{ \n");
    for (n, (k, v)) in members.iter().enumerate() {
        if n > 0 {
            body.push_str(" ,\r\n\t");
        }
        body.push_str(&format!("\"{k}\" : "));
        let c = String::from_utf8_lossy(&canon::canonicalize(v)).into_owned();
        if k == "payload" {
            body.push_str(&escape_all(&c));
        } else {
            body.push_str(&c);
        }
    }
    body.push_str("\n}\n");
    let r = t.post_envelope(body.as_bytes())?;
    r.expect_json(201)?;
    ensure!(
        r.str_member("id")? == sg.id,
        "the relay's id {} is not the id of the canonical form, {} (ENV-11, CANON-5)",
        r.str_member("id")?,
        sg.id
    );
    ensure!(
        r.str_member("result")? == "accepted",
        "result {:?} (API-7)",
        r.str_member("result")?
    );
    let page = t.authed(&p.b, "GET", "/v1/inbox?after=0", b"")?;
    page.expect_json(200)?;
    expect_raw_contains(&page, &sg.wire, "the envelope")?;
    expect_delivered_as_sent(&t.inbox(&p.b)?, &sg, &p.b.handle)?;
    Ok(())
}

/// Escapes every non-ASCII character (as \u escapes, surrogate pairs above the BMP) and `/`
/// inside JSON strings of a canonical text.
fn escape_all(c: &str) -> String {
    let mut out = String::new();
    for ch in c.chars() {
        if ch == '/' {
            out.push_str("\\/");
        } else if (ch as u32) < 0x80 {
            out.push(ch);
        } else {
            let mut buf = [0u16; 2];
            for u in ch.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{u:04X}"));
            }
        }
    }
    out
}

fn id_member(e: &Env<'_>) -> R {
    let t = e.t;
    let p = pair(t, "idm")?;
    let sg = msg(t, &p.a, &[&p.b.handle]);
    let wrong = msg(t, &p.a, &[&p.b.handle]);
    let mut v = sg.value.clone();
    if let Value::Object(o) = &mut v {
        o.insert("id", s(&wrong.id));
    }
    refuse(t, &canon::canonicalize(&v), ErrorCode::IdMismatch)?;
    if let Value::Object(o) = &mut v {
        o.insert("id", s("not-hex-at-all"));
    }
    refuse(t, &canon::canonicalize(&v), ErrorCode::IdMismatch)?;
    if let Value::Object(o) = &mut v {
        o.insert("id", int(5));
    }
    refuse_field(t, &canon::canonicalize(&v), ErrorCode::InvalidField, "id")?;
    t.send_ok(&sg)?;
    Ok(())
}

fn duplicate(e: &Env<'_>) -> R {
    let t = e.t;
    let p = pair(t, "dup")?;
    let m = msg(t, &p.a, &[&p.b.handle]);
    t.send_ok(&m)?;
    let r = t.post_envelope(&m.wire)?;
    r.expect_json(200)?;
    ensure!(
        r.str_member("result")? == "duplicate",
        "{}: a replay answered {} (ERR-3, API-7)",
        r.what,
        r.brief()
    );
    ensure!(
        r.str_member("id")? == m.id,
        "{}: the duplicate answer names id {} (API-7)",
        r.what,
        r.str_member("id")?
    );
    expect_delivered_as_sent(&t.inbox(&p.b)?, &m, &p.b.handle)?;
    Ok(())
}

fn duplicate_other_sig(e: &Env<'_>) -> R {
    let t = e.t;
    let p = pair(t, "dups")?;
    let m = msg(t, &p.a, &[&p.b.handle]);
    t.send_ok(&m)?;
    let mut sig = sig_bytes(&m);
    sig[10] ^= 0x40;
    let r = t.post_envelope(&with_sig(&m, &formica_protocol::hex::encode(&sig)))?;
    r.expect_json(200)?;
    ensure!(
        r.str_member("result")? == "duplicate",
        "{}: a replay with other signature bytes answered {} (INGEST-2: dedup is by id only)",
        r.what,
        r.brief()
    );
    expect_delivered_as_sent(&t.inbox(&p.b)?, &m, &p.b.handle)?;
    Ok(())
}

/// Posts a rotate of `a`'s log to `new` (signed by the current key) and returns the new head.
pub fn rotate(
    t: &Target,
    a: &Agent,
    seq: i64,
    prev: &str,
    new: &formica_protocol::SecretKey,
    ts: i64,
) -> R<String> {
    let entry = sign_entry(
        &KeyLogEntry {
            handle: a.handle.clone(),
            seq,
            prev: EntryHash::parse_hex(prev),
            ts,
            op: KeyOp::Rotate { key: new.public() },
            signer: a.key.public().key_id(),
        },
        &a.key,
        &[new],
    )?;
    let r = t
        .http
        .post(&format!("/v1/keys/{}", a.handle), &entry.wire_bytes())?;
    r.expect_json(201)?;
    Ok(entry.hash().to_hex())
}

fn duplicate_after_rotation(e: &Env<'_>) -> R {
    let t = e.t;
    let p = pair(t, "dupr")?;
    let m = msg(t, &p.a, &[&p.b.handle]);
    t.send_ok(&m)?;
    rotate(
        t,
        &p.a,
        1,
        &p.a.head,
        &random_key(),
        t.now().max(p.a.reg_ts + 1),
    )?;
    let r = t.post_envelope(&m.wire)?;
    r.expect_json(200)?;
    ensure!(
        r.str_member("result")? == "duplicate",
        "{}: a replay after the key rotation answered {} (INGEST-2: dedup before the key lookup)",
        r.what,
        r.brief()
    );
    Ok(())
}

/// Like [`pair`], with `a` registered `back_ms` in the past so that its key is valid for
/// envelopes stamped that early (LOG-12).
fn old_pair(t: &Target, tag: &str, back_ms: i64) -> R<Pair> {
    let a = t.register_at(&format!("{tag}a"), true, back_ms)?;
    let b = t.register(&format!("{tag}b"))?;
    t.grant(&b, &a.handle, "task")?;
    Ok(Pair { a, b })
}

fn replay_within_window(e: &Env<'_>) -> R {
    let t = e.t;
    let w = t.published.window_ms;
    let p = old_pair(t, "rpl", w - 10_000)?;
    let o = t.envelope_at(
        &p.a,
        "message",
        &[&p.b.handle],
        text(t),
        t.now() - w + 12_000,
    );
    let m = t.sign(&o, &p.a.key);
    t.send_ok(&m)?;
    sleep_ms(2000);
    let r = t.post_envelope(&m.wire)?;
    r.expect_json(200).map_err(|_| {
        Stop::Fail(format!(
            "{}: a replay 2 s later, while its ts is still fresh, answered {} (TIME-3)",
            r.what,
            r.brief()
        ))
    })?;
    ensure!(
        r.str_member("result")? == "duplicate",
        "{}: replay answered {} (TIME-3)",
        r.what,
        r.brief()
    );
    expect_delivered_as_sent(&t.inbox(&p.b)?, &m, &p.b.handle)?;
    Ok(())
}

fn out_of_window(e: &Env<'_>, stale: bool) -> R {
    let t = e.t;
    let p = pair(t, if stale { "stl" } else { "fut" })?;
    let ts = if stale {
        t.now() - t.published.window_ms - 20_000
    } else {
        t.now() + t.published.skew_ms + 20_000
    };
    let o = t.envelope_at(&p.a, "message", &[&p.b.handle], text(t), ts);
    let r = refuse(
        t,
        &t.sign(&o, &p.a.key).wire,
        if stale {
            ErrorCode::Stale
        } else {
            ErrorCode::Future
        },
    )?;
    let st = r
        .error_member("server_time")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    ensure!(
        (st - t.now()).abs() < 10_000,
        "server_time {st} is not the relay's clock (the suite estimates {}) (TIME-5)",
        t.now()
    );
    ensure!(
        t.inbox(&p.b)?.is_empty(),
        "a refused envelope reached the recipient (CONV-2)"
    );
    Ok(())
}

fn near_bounds(e: &Env<'_>) -> R {
    let t = e.t;
    let p = old_pair(t, "nb", t.published.window_ms - 10_000)?;
    let lo = t.now() - t.published.window_ms + 15_000;
    let hi = t.now() + t.published.skew_ms - 15_000;
    for ts in [lo, hi] {
        let o = t.envelope_at(&p.a, "message", &[&p.b.handle], text(t), ts);
        t.send_ok(&t.sign(&o, &p.a.key)).map_err(|err| match err {
            Stop::Fail(m) => Stop::Fail(format!(
                "ts {ts} (relay time about {}): {m} (TIME-1, TIME-2)",
                t.now()
            )),
            other => other,
        })?;
    }
    Ok(())
}

fn unknown_sender(e: &Env<'_>) -> R {
    let t = e.t;
    let b = e.fixture("sig-agent", |t| t.register("sig"))?;
    for from in [
        t.fresh_handle("ghost"),
        Handle::parse("@ghost@elsewhere.example").map_err(|err| Stop::Fail(err.to_string()))?,
    ] {
        let k = random_key();
        let fake = Agent {
            handle: from,
            key: k,
            recovery: None,
            reg_ts: 0,
            head: String::new(),
        };
        let o = t.envelope(&fake, "message", &[&b.handle], text(t));
        refuse(t, &t.sign(&o, &fake.key).wire, ErrorCode::UnknownSender)?;
    }
    Ok(())
}

fn recovery_key_signs(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("recs")?;
    let rk = a
        .recovery
        .clone()
        .ok_or_else(|| Stop::Fail("agent without recovery key".into()))?;
    let o = with(self_msg(t, &a), "key", s(&rk.public().key_id().to_hex()));
    refuse(
        t,
        &sign_as(&o, &rk, Domain::Envelope).wire,
        ErrorCode::UnknownKey,
    )?;
    Ok(())
}

fn receipt_from_relay(e: &Env<'_>) -> R {
    let t = e.t;
    let a = signer(e)?;
    let k = random_key();
    let relay = Handle::relay(&t.host);
    let o = obj(vec![
        ("v", int(1)),
        ("type", s("receipt")),
        ("type_version", int(1)),
        ("from", s(relay.as_str())),
        ("key", s(&k.public().key_id().to_hex())),
        ("to", Value::Array(vec![s(a.handle.as_str())])),
        ("ts", int(t.now())),
        (
            "payload",
            obj(vec![
                ("msg", s(&"ab".repeat(32))),
                ("recipient", s(a.handle.as_str())),
                ("status", s("timed_out")),
            ]),
        ),
    ]);
    let Value::Object(o) = o else {
        fail!("unreachable")
    };
    refuse(
        t,
        &sign_as(&o, &k, Domain::Receipt).wire,
        ErrorCode::TypeReserved,
    )?;
    Ok(())
}

fn unknown_recipient(e: &Env<'_>) -> R {
    let t = e.t;
    let a = signer(e)?;
    let nobody = t.fresh_handle("nobody");
    refuse(t, &msg(t, &a, &[&nobody]).wire, ErrorCode::UnknownRecipient)?;
    refuse(
        t,
        &msg(t, &a, &[&Handle::relay(&t.host)]).wire,
        ErrorCode::UnknownRecipient,
    )?;
    Ok(())
}

fn all_or_none(e: &Env<'_>) -> R {
    let t = e.t;
    let p = pair(t, "aon")?;
    let c = t.register("aonc")?;
    let m = msg(t, &p.a, &[&p.b.handle, &c.handle]);
    refuse(t, &m.wire, ErrorCode::NotContact)?;
    ensure!(
        t.inbox(&p.b)?.is_empty(),
        "{} received an envelope that was refused for another recipient (INGEST-3)",
        p.b.handle
    );
    Ok(())
}

fn order(e: &Env<'_>) -> R {
    let t = e.t;
    let a = signer(e)?;
    let stranger = t.register("ordx")?;
    // ENV-2 first: a future version with other faults is unsupported_version.
    let o = with(with(self_msg(t, &a), "v", int(2)), "bogus", int(1));
    refuse(
        t,
        &t.sign(&with(o, "type", s("Nope")), &a.key).wire,
        ErrorCode::UnsupportedVersion,
    )?;
    // Freshness (step 6) before the signature (9) and before the sender lookup (8).
    let old = t.now() - t.published.window_ms - 60_000;
    let o = t.envelope_at(&a, "message", &[&stranger.handle], text(t), old);
    refuse(
        t,
        &sign_as(&o, &random_key(), Domain::Envelope).wire,
        ErrorCode::Stale,
    )?;
    // The signature (9) before policy (10: not_contact).
    let o = t.envelope(&a, "message", &[&stranger.handle], text(t));
    refuse(
        t,
        &sign_as(&o, &random_key(), Domain::Envelope).wire,
        ErrorCode::BadSignature,
    )?;
    // The key (8) before policy.
    let k = random_key();
    let o = with(
        t.envelope(&a, "message", &[&stranger.handle], text(t)),
        "key",
        s(&k.public().key_id().to_hex()),
    );
    refuse(
        t,
        &sign_as(&o, &k, Domain::Envelope).wire,
        ErrorCode::UnknownKey,
    )?;
    // Recipients exist (10.2) before the contact rule (10.3).
    let o = t.envelope(
        &a,
        "message",
        &[&stranger.handle, &t.fresh_handle("ordnobody")],
        text(t),
    );
    refuse(t, &t.sign(&o, &a.key).wire, ErrorCode::UnknownRecipient)?;
    // Payload size (10.1) before the contact rule (10.3).
    let cap = t.published.tier0().payload_bytes_max;
    if cap > 0 && cap + 1000 < t.published.envelope_bytes_max {
        let o = t.envelope(
            &a,
            "message",
            &[&stranger.handle],
            obj(vec![("text", s(&"x".repeat(cap as usize + 1)))]),
        );
        refuse(t, &t.sign(&o, &a.key).wire, ErrorCode::PayloadTooLarge)?;
    }
    Ok(())
}

fn too_large(e: &Env<'_>) -> R {
    let t = e.t;
    let n = t.published.envelope_bytes_max as usize + 1;
    let mut body = String::from("{\"v\":1,\"pad\":\"");
    body.push_str(&"x".repeat(n.saturating_sub(body.len() + 2)));
    body.push_str("\"}");
    let r = t.http.send(
        "POST",
        "/v1/envelopes",
        &[("content-type", "application/json".into())],
        Body::Bytes(body.as_bytes()),
    )?;
    r.expect_error(ErrorCode::TooLarge)?;
    let r = t.http.send(
        "POST",
        "/v1/envelopes",
        &[("content-type", "application/json".into())],
        Body::Chunked(body.as_bytes()),
    )?;
    r.expect_error(ErrorCode::TooLarge)
        .map_err(|err| match err {
            Stop::Fail(m) => Stop::Fail(format!("chunked body: {m} (HTTP-2)")),
            other => other,
        })?;
    Ok(())
}

/// A value nested `levels` arrays deep (`levels` >= 1).
fn nested(levels: usize) -> Value {
    let mut v = Value::Array(vec![]);
    for _ in 1..levels {
        v = Value::Array(vec![v]);
    }
    v
}

fn depth_limit(e: &Env<'_>) -> R {
    let t = e.t;
    let a = e.fixture("depth-agent", |t| t.register("depth"))?;
    let max = t.published.json_depth_max as usize;
    if max < 4 {
        skip!("json_depth_max {max} leaves no room for an envelope's payload data");
    }
    // Envelope object (1) > payload (2) > data: max - 2 more levels.
    let ok = t.sign(
        &t.envelope(
            &a,
            "message",
            &[&a.handle],
            obj(vec![
                ("text", s(&t.uniq("deep"))),
                ("data", nested(max - 2)),
            ]),
        ),
        &a.key,
    );
    t.send_ok(&ok).map_err(|err| match err {
        Stop::Fail(m) => Stop::Fail(format!(
            "an envelope exactly {max} levels deep: {m} (JSON-8)"
        )),
        other => other,
    })?;
    // HTTP-13: the page nests it three levels further down, and is served all the same.
    let page = t.authed(&a, "GET", "/v1/inbox?after=0", b"")?;
    page.expect_json(200)?;
    expect_raw_contains(&page, &ok.wire, "the maximally deep envelope")?;
    let deep = t.envelope(
        &a,
        "message",
        &[&a.handle],
        obj(vec![
            ("text", s(&t.uniq("deep"))),
            ("data", nested(max - 1)),
        ]),
    );
    refuse(t, &t.sign(&deep, &a.key).wire, ErrorCode::TooDeep)?;
    Ok(())
}

fn recipients_limit(e: &Env<'_>) -> R {
    let t = e.t;
    let a = signer(e)?;
    let n = t.published.recipients_max as usize + 1;
    let hs: Vec<Handle> = (0..n)
        .map(|i| Handle::parse(&format!("@r{i}@elsewhere.example")))
        .collect::<Result<_, _>>()
        .map_err(|err| Stop::Fail(err.to_string()))?;
    let refs: Vec<&Handle> = hs.iter().collect();
    refuse(t, &msg(t, &a, &refs).wire, ErrorCode::TooManyRecipients)?;
    Ok(())
}

// ------------------------------------------------------------------ batches

fn batch_body(items: &[Value]) -> Vec<u8> {
    canon::canonicalize(&obj(vec![("envelopes", Value::Array(items.to_vec()))]))
}

fn batch_mixed(e: &Env<'_>) -> R {
    let t = e.t;
    let p = pair(t, "bat")?;
    let c = t.register("batc")?;
    let m1 = msg(t, &p.a, &[&p.b.handle]);
    let m2 = msg(t, &p.a, &[&c.handle]);
    let m3 = t.sign(&self_msg(t, &p.a), &random_key());
    // An ack of m1 by b, in the same batch format (API-12).
    let r = t.http.post(
        "/v1/envelopes/batch",
        &batch_body(&[
            m1.value.clone(),
            m1.value.clone(),
            m2.value.clone(),
            m3.value.clone(),
        ]),
    )?;
    r.expect_json(200)?;
    let results = r.member("results")?.as_array().unwrap_or(&[]).to_vec();
    ensure!(
        results.len() == 4,
        "{}: {} results for 4 elements (API-8)",
        r.what,
        results.len()
    );
    let get = |i: usize, k: &str| results.get(i).and_then(|x| at(x, &[k])).cloned();
    for (i, x) in results.iter().enumerate() {
        ensure!(
            at(x, &["index"]) == Some(&Value::Int(i as i64)),
            "{}: result {i} has index {:?} (API-8, HTTP-4)",
            r.what,
            at(x, &["index"])
        );
    }
    ensure!(
        get(0, "result") == Some(s("accepted")) && get(0, "id") == Some(s(&m1.id)),
        "{}: element 0 is {:?} (API-8)",
        r.what,
        results.first()
    );
    ensure!(
        get(1, "result") == Some(s("duplicate")) && get(1, "id") == Some(s(&m1.id)),
        "{}: element 1, equal to element 0, is {:?}, not duplicate (API-8)",
        r.what,
        results.get(1)
    );
    for (i, code) in [
        (2usize, ErrorCode::NotContact),
        (3, ErrorCode::BadSignature),
    ] {
        let err = get(i, "error");
        let got = err
            .as_ref()
            .and_then(|x| at(x, &["code"]))
            .and_then(Value::as_str)
            .map(str::to_owned);
        ensure!(
            got.as_deref() == Some(code.as_str()),
            "{}: element {i} is {:?}, expected error {} (API-8)",
            r.what,
            results.get(i),
            code.as_str()
        );
        let retry = err
            .as_ref()
            .and_then(|x| at(x, &["retry"]))
            .and_then(Value::as_str)
            .map(str::to_owned);
        ensure!(
            retry.as_deref() == Some(code.retry().as_str()),
            "{}: element {i}'s error has retry {retry:?} (ERR-2)",
            r.what
        );
        ensure!(
            err.as_ref()
                .and_then(|x| at(x, &["message"]))
                .and_then(Value::as_str)
                .is_some(),
            "{}: element {i}'s error has no message (HTTP-4)",
            r.what
        );
    }
    expect_delivered_as_sent(&t.inbox(&p.b)?, &m1, &p.b.handle)?;
    ensure!(
        t.inbox(&c)?.is_empty(),
        "the refused element reached {} (API-8)",
        c.handle
    );
    // API-12: an ack goes through the batch endpoint too.
    let k = ack(t, &p.b, &p.a.handle, &m1.id, "received");
    let r = t.http.post(
        "/v1/envelopes/batch",
        &batch_body(std::slice::from_ref(&k.value)),
    )?;
    r.expect_json(200)?;
    let res = r
        .member("results")?
        .as_array()
        .and_then(|x| x.first())
        .cloned()
        .unwrap_or(Value::Null);
    ensure!(
        at(&res, &["result"]) == Some(&s("accepted")),
        "{}: an ack in a batch was answered {:?} (API-12)",
        r.what,
        res
    );
    t.wait_delivery(&p.a, &m1.id, &p.b.handle, "acked", 3000)?;
    Ok(())
}

fn batch_limits(e: &Env<'_>) -> R {
    let t = e.t;
    let path = "/v1/envelopes/batch";
    let n = t.published.batch_envelopes_max as usize + 1;
    let items: Vec<Value> = (0..n).map(|_| obj(vec![])).collect();
    t.http
        .post(path, &batch_body(&items))?
        .expect_error(ErrorCode::TooLarge)?;
    t.http
        .post(path, b"{}")?
        .expect_error_field(ErrorCode::MissingField, "envelopes")?;
    t.http
        .post(path, b"{\"envelopes\":[],\"extra\":1}")?
        .expect_error(ErrorCode::UnknownField)?;
    t.http
        .post(path, b"{\"envelopes\":{}}")?
        .expect_error_field(ErrorCode::InvalidField, "envelopes")?;
    t.http
        .post(path, b"[]")?
        .expect_error(ErrorCode::InvalidField)?;
    Ok(())
}

fn batch_element_too_large(e: &Env<'_>) -> R {
    let t = e.t;
    let max = t.published.envelope_bytes_max;
    if max + 2000 > t.published.batch_bytes_max {
        skip!("envelope_bytes_max {max} leaves no room for a larger element in a batch of batch_bytes_max {}", t.published.batch_bytes_max);
    }
    let a = signer(e)?;
    let big = t.envelope(
        &a,
        "message",
        &[&a.handle],
        obj(vec![("text", s(&"x".repeat(max as usize)))]),
    );
    let sg = t.sign(&big, &a.key);
    let ok = msg(t, &a, &[&a.handle]);
    let r = t.http.post(
        "/v1/envelopes/batch",
        &batch_body(&[sg.value.clone(), ok.value.clone()]),
    )?;
    r.expect_json(200)?;
    let results = r.member("results")?.as_array().unwrap_or(&[]).to_vec();
    let code0 = results
        .first()
        .and_then(|x| at(x, &["error", "code"]))
        .and_then(Value::as_str)
        .unwrap_or("");
    ensure!(
        code0 == "too_large",
        "{}: an element of {} bytes got {:?}, expected error too_large (API-8)",
        r.what,
        sg.wire.len(),
        results.first()
    );
    ensure!(
        results.get(1).and_then(|x| at(x, &["result"])) == Some(&s("accepted")),
        "{}: the small element next to it got {:?} (API-8: each element is judged alone)",
        r.what,
        results.get(1)
    );
    Ok(())
}

fn batch_depth(e: &Env<'_>) -> R {
    let t = e.t;
    let a = e.fixture("depth-agent", |t| t.register("depth"))?;
    let max = t.published.json_depth_max as usize;
    if max < 4 {
        skip!("json_depth_max {max} too small");
    }
    let ok = t.sign(
        &t.envelope(
            &a,
            "message",
            &[&a.handle],
            obj(vec![("text", s(&t.uniq("bd"))), ("data", nested(max - 2))]),
        ),
        &a.key,
    );
    let r = t.http.post(
        "/v1/envelopes/batch",
        &batch_body(std::slice::from_ref(&ok.value)),
    )?;
    r.expect_json(200)?;
    let res = r
        .member("results")?
        .as_array()
        .and_then(|x| x.first())
        .cloned()
        .unwrap_or(Value::Null);
    ensure!(
        at(&res, &["result"]) == Some(&s("accepted")),
        "{}: an element exactly json_depth_max deep (batch depth + 2) got {:?} (API-8, JSON-8)",
        r.what,
        res
    );
    let deep = t.sign(
        &t.envelope(
            &a,
            "message",
            &[&a.handle],
            obj(vec![("text", s(&t.uniq("bd"))), ("data", nested(max - 1))]),
        ),
        &a.key,
    );
    t.http
        .post(
            "/v1/envelopes/batch",
            &batch_body(std::slice::from_ref(&deep.value)),
        )?
        .expect_error(ErrorCode::TooDeep)?;
    Ok(())
}
