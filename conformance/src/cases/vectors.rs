//! Cases driven by the vector files (`vec.<file>.<index>`, VEC-2):
//! - `canon.json`: every refused input is refused by `POST /v1/envelopes` with its code (the
//!   strict parse is the first step of ingest); every accepted input parses, and embedded as
//!   `payload.data` of a self-addressed message whose signature covers the vector's canonical
//!   bytes, is accepted and served with exactly those bytes (CANON-*, ENV-10, ENV-15).
//! - `handles.json`: valid handles are accepted in a contact path, reserved names cannot be
//!   registered, invalid handles in `to` are refused with `invalid_handle`.
//! - `envelopes_valid.json`: the same types and payload shapes, sent by the suite's own agents,
//!   are accepted (receipts: the relay's own receipts have the vector's shape and verify).
//! - `envelopes_invalid.json`: parse-level cases are sent as is (refused before the sender is
//!   looked at); the verification cases are re-created with the suite's agents.
//! - `keylogs.json`, `auth.json`, `pow.json`, `ed25519.json`: re-created against the relay by
//!   the registration, key log and auth modules; the relay vectors of `auth.json` by the
//!   federation module, as handshakes from a relay that is not a peer.

use super::*;
use crate::case::{case, Env};
use crate::target::{random_key, Tier};
use crate::vectors as V;
use std::sync::Arc;

pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (i, c) in V::list(V::canon(), "cases").iter().enumerate() {
        v.push(canon_case(i, c));
    }
    for (i, c) in V::list(V::handles(), "valid").iter().enumerate() {
        v.push(handle_valid(i, c));
    }
    for (i, c) in V::list(V::handles(), "invalid").iter().enumerate() {
        v.push(handle_invalid(i, c));
    }
    for (i, c) in V::list(V::envelopes_valid(), "cases").iter().enumerate() {
        v.push(env_valid(i, c));
    }
    for (i, c) in V::list(V::envelopes_invalid(), "cases").iter().enumerate() {
        v.push(env_invalid(i, c));
    }
    for (i, c) in V::list(V::keylogs(), "valid").iter().enumerate() {
        v.push(super::keylog::vector_valid(i, c));
    }
    for (i, c) in V::list(V::keylogs(), "invalid").iter().enumerate() {
        v.push(super::keylog::vector_invalid(i, c));
    }
    for (i, c) in V::list(V::auth(), "valid").iter().enumerate() {
        v.push(super::auth::vector_valid(i, c));
    }
    for (i, c) in V::list(V::auth(), "invalid").iter().enumerate() {
        v.push(super::auth::vector_invalid(i, c));
    }
    for (i, c) in V::list(V::auth(), "relay_valid").iter().enumerate() {
        v.push(super::federation::vector_relay_valid(i, c));
    }
    for (i, c) in V::list(V::auth(), "relay_invalid").iter().enumerate() {
        v.push(super::federation::vector_relay_invalid(i, c));
    }
    for (i, c) in V::list(V::pow(), "cases").iter().enumerate() {
        v.push(super::registration::vector_pow(i, c));
    }
    for (i, c) in V::list(V::ed25519(), "cases").iter().enumerate() {
        if let Some(k) = super::registration::vector_ed25519(i, c) {
            v.push(k);
        }
    }
    v
}

fn comment(c: &Value) -> String {
    V::field(c, "comment").unwrap_or("").to_owned()
}

/// The JSON-profile requirement a code of section 4 belongs to.
fn json_req(code: ErrorCode) -> &'static str {
    use ErrorCode as E;
    match code {
        E::TooLarge => "JSON-1",
        E::InvalidUtf8 => "JSON-2",
        E::MalformedJson => "JSON-3",
        E::DuplicateKey => "JSON-4",
        E::FloatNotAllowed => "JSON-5",
        E::IntegerOutOfRange => "JSON-6",
        E::LoneSurrogate => "JSON-7",
        E::TooDeep => "JSON-8",
        _ => "JSON-11",
    }
}

/// Codes of the strict JSON profile (section 4).
pub fn is_json_code(code: &str) -> bool {
    [
        "too_large",
        "invalid_utf8",
        "malformed_json",
        "duplicate_key",
        "float_not_allowed",
        "integer_out_of_range",
        "lone_surrogate",
        "too_deep",
    ]
    .contains(&code)
}

/// Deepest bracket nesting of a JSON text (outside strings).
fn depth_of(bytes: &[u8]) -> usize {
    let (mut d, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                d += 1;
                max = max.max(d);
            }
            b']' | b'}' => d = d.saturating_sub(1),
            _ => {}
        }
    }
    max
}

// ------------------------------------------------------------------ canon.json

struct Pool(Vec<Agent>);

fn pool(e: &Env<'_>, name: &'static str, n: usize) -> R<Arc<Pool>> {
    e.fixture(name, |t| Ok(Pool(t.register_n("pool", n)?)))
}

fn canon_case(i: usize, c: &Value) -> Case {
    let id = format!("vec.canon.{i}");
    let title = comment(c);
    let input = V::input_bytes(c);
    if let Some(err) = V::field(c, "error").and_then(ErrorCode::from_wire) {
        let reqs: &'static [&'static str] = match json_req(err) {
            "JSON-2" => &["JSON-2", "JSON-9", "JSON-11", "VEC-2", "INGEST-1"],
            "JSON-3" => &["JSON-3", "JSON-6", "JSON-9", "JSON-11", "VEC-2", "INGEST-1"],
            "JSON-4" => &["JSON-4", "JSON-9", "JSON-11", "VEC-2", "INGEST-1"],
            "JSON-5" => &["JSON-5", "JSON-9", "JSON-11", "VEC-2", "INGEST-1"],
            "JSON-6" => &["JSON-6", "JSON-9", "JSON-11", "VEC-2", "INGEST-1"],
            "JSON-7" => &["JSON-7", "JSON-9", "JSON-11", "VEC-2", "INGEST-1"],
            "JSON-8" => &["JSON-8", "JSON-9", "JSON-11", "VEC-2", "INGEST-1"],
            _ => &["JSON-1", "JSON-9", "JSON-11", "VEC-2", "INGEST-1"],
        };
        return case(
            id,
            reqs,
            format!(
                "canon.json: {title}: POST /v1/envelopes refuses it with {}",
                err.as_str()
            ),
            move |e| {
                if err == ErrorCode::TooDeep
                    && depth_of(&input) as i64 <= e.t.published.json_depth_max
                {
                    skip!(
                        "the relay publishes json_depth_max {}; this input nests {} deep",
                        e.t.published.json_depth_max,
                        depth_of(&input)
                    );
                }
                if input.len() as i64 > e.t.published.envelope_bytes_max {
                    skip!("the input is longer than the relay's envelope_bytes_max");
                }
                refuse(e.t, &input, err)?;
                Ok(())
            },
        )
        .codes(&[err]);
    }
    let canonical = V::field(c, "canonical").unwrap_or("").to_owned();
    case(
        id,
        &["CANON-1", "CANON-2", "CANON-3", "CANON-4", "CANON-5", "JSON-10", "ENV-10", "ENV-15", "HTTP-3", "VEC-2"],
        format!("canon.json: {title}: parsed, and as payload data signed over its canonical bytes, accepted and served canonical"),
        move |e| canon_valid(e, i, &input, &canonical),
    )
}

fn canon_valid(e: &Env<'_>, i: usize, input: &[u8], canonical: &str) -> R {
    let t = e.t;
    // (a) The document parses: as an envelope body it may fail the envelope schema, but not
    // the strict profile.
    let r = t.post_envelope(input)?;
    if let Some(code) = r.code() {
        ensure!(!is_json_code(code), "POST /v1/envelopes refused this valid document with {code}, a strict-JSON code (JSON-11): {}", r.brief());
    }
    // (b) Embedded as payload.data, signed over the vector's canonical bytes.
    let depth = depth_of(canonical.as_bytes()) as i64;
    if depth + 2 > t.published.json_depth_max {
        return Ok(()); // too deep to embed; (a) is the check
    }
    let pool = pool(e, "canon-senders", 4)?;
    let a = &pool.0[i % pool.0.len()];
    const MARK: &str = "\u{1}vector\u{1}";
    let quoted = String::from_utf8_lossy(&canon::canonicalize(&s(MARK))).into_owned();
    let o = t.envelope(
        a,
        "message",
        &[&a.handle],
        obj(vec![("text", s(&t.uniq("canon"))), ("data", s(MARK))]),
    );
    let body0 =
        String::from_utf8_lossy(&canon::canonicalize(&Value::Object(o.clone()))).into_owned();
    let canon_env = body0.replacen(&quoted, canonical, 1);
    let mut input_si = Domain::Envelope.tag().to_vec();
    input_si.extend_from_slice(canon_env.as_bytes());
    let id = formica_protocol::hex::encode(blake3::hash(&input_si).as_bytes());
    let sig = a.key.sign_input(&input_si).to_hex();
    let full = with(with(o, "id", s(&id)), "sig", s(&sig));
    let wire0 = String::from_utf8_lossy(&canon::canonicalize(&Value::Object(full))).into_owned();
    let expected_wire = wire0.replacen(&quoted, canonical, 1);
    let sent = format!(
        " \n{}\t",
        wire0.replacen(&quoted, &String::from_utf8_lossy(input), 1)
    );
    let r = t.post_envelope(sent.as_bytes())?;
    r.expect_json(201).map_err(|_| {
        Stop::Fail(format!(
            "a message whose payload.data is this vector's input, signed over its canonical form {canonical:?}, was refused: {} (the relay's canonical bytes differ; CANON-1..3, ENV-10)",
            r.brief()
        ))
    })?;
    ensure!(r.str_member("id")? == id, "the relay's id {} differs from the id over the vector's canonical bytes {id} (ENV-11, CANON-5)", r.str_member("id")?);
    let page = t.authed(a, "GET", "/v1/inbox?after=0", b"")?;
    page.expect_json(200)?;
    expect_raw_contains(
        &page,
        expected_wire.as_bytes(),
        "the envelope carrying the vector",
    )?;
    // CANON-4: the canonical bytes are a fixed point: sent as they are served, they are the
    // same envelope.
    let again = t.post_envelope(expected_wire.as_bytes())?;
    again.expect_json(200)?;
    ensure!(
        again.str_member("result")? == "duplicate" && again.str_member("id")? == id,
        "resending the served canonical bytes gave {} (CANON-4, API-7)",
        again.brief()
    );
    Ok(())
}

// ------------------------------------------------------------------ handles.json

fn handle_valid(i: usize, c: &Value) -> Case {
    let h = V::field(c, "handle").unwrap_or("").to_owned();
    let reserved = c
        .as_object()
        .and_then(|o| o.get("reserved"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let reqs: &'static [&'static str] = if reserved {
        &[
            "HANDLE-1", "HANDLE-2", "HANDLE-4", "HANDLE-5", "HANDLE-6", "HANDLE-7", "HTTP-9",
            "API-14", "VEC-2",
        ]
    } else {
        &[
            "HANDLE-1", "HANDLE-2", "HANDLE-3", "HANDLE-4", "HANDLE-5", "HTTP-9", "API-14", "VEC-2",
        ]
    };
    let title = format!(
        "handles.json: {h} is a valid handle{}",
        if reserved {
            " whose name registration refuses"
        } else {
            ""
        }
    );
    let mut k = case(format!("vec.handles.valid.{i}"), reqs, title, move |e| {
        let t = e.t;
        let a = e.fixture("handles-agent", |t| t.register("handles"))?;
        let body = canon::canonicalize(&obj(vec![("level", s("read"))]));
        let r = t.authed(&a, "PUT", &format!("/v1/contacts/{h}"), &body)?;
        r.expect_json(200)?;
        ensure!(
            r.str_member("handle")? == h,
            "{}: the answer names {:?}, not the handle {h} (HANDLE-8, API-14)",
            r.what,
            r.str_member("handle")?
        );
        if reserved {
            let name = h.trim_start_matches('@').split('@').next().unwrap_or("");
            let mine = formica_protocol::Handle::parse(&format!("@{name}@{}", t.host))
                .map_err(|err| Stop::Fail(err.to_string()))?;
            let key = random_key();
            let entry = t.register_entry(&mine, &key, None, t.now(), &key)?;
            let body = obj(vec![
                ("entry", entry.value().clone()),
                (
                    "pow",
                    obj(vec![
                        ("challenge", s(&"0".repeat(32))),
                        ("difficulty", int(0)),
                        ("nonce", int(0)),
                    ]),
                ),
            ]);
            t.post_ip_limited("/v1/register", &canon::canonicalize(&body))?
                .expect_error(ErrorCode::HandleReserved)?;
        }
        Ok(())
    });
    if reserved {
        k = k.codes(&[ErrorCode::HandleReserved]);
    }
    k
}

fn handle_invalid(i: usize, c: &Value) -> Case {
    let h = V::field(c, "handle").unwrap_or("").to_owned();
    let cm = comment(c);
    let l = cm.to_ascii_lowercase();
    let req: &'static str = if l.contains("port") {
        "HANDLE-5"
    } else if l.contains("host")
        || l.contains("label")
        || l.contains("ipv4")
        || l.contains("numeric")
        || l.contains("trailing dot")
    {
        "HANDLE-4"
    } else if l.contains("separator") {
        "HANDLE-3"
    } else if l.contains("local form") || l.contains("leading @") || l.contains("empty string") {
        "HANDLE-1"
    } else {
        "HANDLE-2"
    };
    let reqs: &'static [&'static str] = match req {
        "HANDLE-5" => &["HANDLE-5", "ENV-6", "VEC-2"],
        "HANDLE-4" => &["HANDLE-4", "ENV-6", "VEC-2"],
        "HANDLE-3" => &["HANDLE-3", "ENV-6", "VEC-2"],
        "HANDLE-1" => &["HANDLE-1", "ENV-6", "VEC-2"],
        _ => &["HANDLE-2", "ENV-6", "VEC-2"],
    };
    case(
        format!("vec.handles.invalid.{i}"),
        reqs,
        format!("handles.json: {h:?} ({cm}) in `to` is refused with invalid_handle"),
        move |e| {
            let t = e.t;
            let k = random_key();
            let from = format!("@hcheck@{}", t.host);
            let o = obj(vec![
                ("v", int(1)),
                ("type", s("message")),
                ("type_version", int(1)),
                ("from", s(&from)),
                ("key", s(&k.public().key_id().to_hex())),
                ("to", Value::Array(vec![s(&h)])),
                ("ts", int(t.now())),
                ("payload", obj(vec![("text", s("hi"))])),
            ]);
            let Value::Object(o) = o else {
                fail!("unreachable")
            };
            let sg = sign_as(&o, &k, Domain::Envelope);
            refuse_field(t, &sg.wire, ErrorCode::InvalidHandle, "to[0]")?;
            Ok(())
        },
    )
    .codes(&[ErrorCode::InvalidHandle])
}

// ------------------------------------------------------------------ envelopes_valid.json

struct Quad {
    a: Agent,
    b: Agent,
    c: Agent,
    d: Agent,
}

fn quad(e: &Env<'_>) -> R<Arc<Quad>> {
    e.fixture("vec-valid", |t| {
        let a = t.register("vva")?;
        let b = t.register("vvb")?;
        let c = t.register("vvc")?;
        let d = t.register("vvd")?;
        t.grant(&b, &a.handle, "task")?;
        t.grant(&c, &a.handle, "task")?;
        Ok(Quad { a, b, c, d })
    })
}

/// What policy says about `ty` sent by a new agent: `None` accepted, or the refusal.
fn tier_refusal(tier: &Tier, ty: &str) -> Option<ErrorCode> {
    if !tier.may_send(ty) {
        Some(ErrorCode::TierForbidden)
    } else if ty == "vouch" && tier.vouches_max == 0 {
        Some(ErrorCode::VouchLimit)
    } else {
        None
    }
}

fn env_valid(i: usize, c: &Value) -> Case {
    let cm = comment(c);
    let venv = c
        .as_object()
        .and_then(|o| o.get("envelope"))
        .cloned()
        .unwrap_or(Value::Null);
    let ty = V::field(&venv, "type").unwrap_or("").to_owned();
    let domain = V::field(c, "domain").unwrap_or("").to_owned();
    if ty == "receipt" || domain == "formica/v1/receipt" {
        let status = at(&venv, &["payload", "status"])
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        return case(
            format!("vec.env-valid.{i}"),
            &["TYPE-8", "RCPT-1", "RCPT-2", "RCPT-3", "RCPT-4", "SIG-1", "HANDLE-7", "VEC-2"],
            format!("envelopes_valid.json: {cm}: the relay's own {status} receipt has this shape and verifies with its key"),
            move |e| receipt_like(e, &venv, &status),
        );
    }
    let mut reqs: Vec<&'static str> = vec!["ENV-1", "ENV-10", "ENV-11", "ENV-15", "API-7", "VEC-2"];
    let has = |k: &str| venv.as_object().and_then(|o| o.get(k)).is_some();
    if has("corr") {
        reqs.push("ENV-5");
    }
    if has("ack_by") {
        reqs.push("ENV-7");
    }
    if venv
        .as_object()
        .and_then(|o| o.get("to"))
        .and_then(Value::as_array)
        .is_some_and(|t| t.len() > 1)
    {
        reqs.push("ENV-6");
    }
    reqs.extend(match ty.as_str() {
        "message" => &["TYPE-4"][..],
        "task_request" => &["TYPE-5"][..],
        "task_result" => &["TYPE-6"][..],
        "ack" => &["TYPE-7", "ACK-1"][..],
        "contact_request" => &["TYPE-9", "CONTACT-5"][..],
        "vouch" => &["TYPE-10", "TRUST-4", "TRUST-7"][..],
        "report" => &["TYPE-11", "TRUST-3"][..],
        _ => &["TYPE-2", "TYPE-3", "TYPE-12"][..],
    });
    let reqs: &'static [&'static str] = Box::leak(reqs.into_boxed_slice());
    let mut k = case(
        format!("vec.env-valid.{i}"),
        reqs,
        format!("envelopes_valid.json: {cm}: the same shape from the suite's agents is accepted"),
        move |e| env_valid_run(e, &venv),
    );
    if ty == "vouch" {
        k = k.codes(&[ErrorCode::TierForbidden]);
    }
    k
}

fn env_valid_run(e: &Env<'_>, venv: &Value) -> R {
    let t = e.t;
    let q = quad(e)?;
    let ty = V::field(venv, "type").unwrap_or("");
    let vo = venv
        .as_object()
        .ok_or_else(|| Stop::Fail("vector envelope is not an object".into()))?;
    let vts = vo.get("ts").and_then(Value::as_i64).unwrap_or(0);
    let nto = vo
        .get("to")
        .and_then(Value::as_array)
        .map(<[Value]>::len)
        .unwrap_or(1);
    let mut payload = vo.get("payload").cloned().unwrap_or(Value::Null);
    let (sender, to): (&Agent, Vec<&Handle>) = match ty {
        "vouch" | "report" => (&q.a, vec![]),
        "ack" => (&q.b, vec![&q.a.handle]),
        "contact_request" => (&q.a, vec![&q.d.handle]),
        _ if nto >= 2 => (&q.a, vec![&q.b.handle, &q.c.handle]),
        _ => (&q.a, vec![&q.b.handle]),
    };
    let relay_addr = Handle::relay(&t.host);
    let to: Vec<&Handle> = if ty == "vouch" || ty == "report" {
        vec![&relay_addr]
    } else {
        to
    };
    if let Value::Object(p) = &mut payload {
        if p.get("subject").is_some() {
            p.insert("subject", s(q.b.handle.as_str()));
        }
        if ty == "ack" {
            // The acked message must be one the acker received from the ack's recipient.
            let m = msg(t, &q.a, &[&q.b.handle]);
            t.send_ok(&m)?;
            p.insert("msg", s(&m.id));
        }
        if ty == "message" {
            p.insert(
                "text",
                s(&format!(
                    "{} {}",
                    p.get("text").and_then(Value::as_str).unwrap_or(""),
                    t.uniq("")
                )),
            );
        }
        if ty == "task_request" {
            p.insert("input", obj(vec![("n", s(&t.uniq("task")))]));
        }
        if ty == "contact_request" {
            p.insert("note", s(&t.uniq("hi")));
        }
        if ty.starts_with("x-") {
            p.insert("uniq", s(&t.uniq("x")));
        }
        if ty == "task_result" {
            p.insert("output", obj(vec![("n", s(&t.uniq("out")))]));
        }
    }
    let mut o = t.envelope(sender, ty, &to, payload);
    let now = o.get("ts").and_then(Value::as_i64).unwrap_or(0);
    for k in ["type_version", "corr"] {
        if let Some(v) = vo.get(k) {
            o.insert(k, v.clone());
        }
    }
    if ty == "report" {
        o.insert(
            "payload",
            with(
                o.get("payload")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
                "note",
                s(&t.uniq("r")),
            )
            .into(),
        );
    }
    if let Some(by) = vo.get("ack_by").and_then(Value::as_i64) {
        o.insert("ack_by", int(now + (by - vts)));
    }
    let sg = t.sign(&o, &sender.key);
    if let Some(code) = tier_refusal(&t.published.tier0(), ty) {
        refuse(t, &sg.wire, code)?;
        return Ok(());
    }
    t.send_ok(&sg)?;
    if ty != "vouch" && ty != "report" {
        for h in &to {
            let who = [&q.a, &q.b, &q.c, &q.d]
                .into_iter()
                .find(|x| &&x.handle == h)
                .ok_or_else(|| Stop::Fail("recipient".into()))?;
            let items = t.inbox(who)?;
            expect_delivered_as_sent(&items, &sg, &who.handle)?;
        }
    }
    Ok(())
}

fn receipt_like(e: &Env<'_>, venv: &Value, status: &str) -> R {
    let t = e.t;
    let a = t.register("rcpa")?;
    let b = t.register("rcpb")?;
    t.grant(&b, &a.handle, "message")?;
    let within = if status == "timed_out" { 1500 } else { 60_000 };
    let m = msg_ack(t, &a, &[&b.handle], within);
    t.send_ok(&m)?;
    if status == "acked" {
        t.send_ok(&ack(t, &b, &a.handle, &m.id, "processed"))?;
    }
    let wait = if status == "timed_out" {
        1500 + t.deadline_lag_ms()
    } else {
        5000
    };
    let rc = t.wait_inbox(&a, wait, &format!("a {status} receipt for {}", m.id), |x| {
        crate::target::is_receipt(x, &m.id, status)
    })?;
    t.verify_receipt(&rc)?;
    let want_keys: Vec<&str> = at(venv, &["payload"])
        .and_then(Value::as_object)
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    let got_keys: Vec<&str> = at(&rc, &["payload"])
        .and_then(Value::as_object)
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    let mut w = want_keys.clone();
    let mut g = got_keys.clone();
    w.sort_unstable();
    g.sort_unstable();
    ensure!(w == g, "the {status} receipt's payload has members {g:?}, the vector's shape is {w:?} (TYPE-8, RCPT-3)");
    ensure!(
        crate::target::env_str(&rc, "from") == Some(Handle::relay(&t.host).as_str()),
        "receipt `from` is {:?}, not @relay@{} (RCPT-1, HANDLE-7)",
        crate::target::env_str(&rc, "from"),
        t.host
    );
    ensure!(
        at(&rc, &["to"]) == Some(&Value::Array(vec![s(a.handle.as_str())])),
        "receipt `to` is {:?}, not exactly the sender (RCPT-1)",
        at(&rc, &["to"])
    );
    ensure!(
        at(&rc, &["ack_by"]).is_none(),
        "a receipt carries ack_by (RCPT-1)"
    );
    ensure!(
        crate::target::payload_str(&rc, "recipient") == Some(b.handle.as_str()),
        "receipt payload.recipient is not {} (RCPT-3)",
        b.handle
    );
    if status == "acked" {
        ensure!(
            crate::target::payload_str(&rc, "ack_status") == Some("processed"),
            "acked receipt has ack_status {:?} (TYPE-8)",
            crate::target::payload_str(&rc, "ack_status")
        );
    }
    Ok(())
}

// ------------------------------------------------------------------ envelopes_invalid.json

fn env_invalid(i: usize, c: &Value) -> Case {
    let cm = comment(c);
    let input = V::field(c, "input").unwrap_or("").to_owned();
    let code = V::field(c, "error")
        .and_then(ErrorCode::from_wire)
        .unwrap_or(ErrorCode::Internal);
    let verifying = c.as_object().and_then(|o| o.get("public_key")).is_some();
    let id = format!("vec.env-invalid.{i}");
    if verifying {
        return super::envelopes::invalid_recreation(id, &cm, code);
    }
    let reqs = invalid_reqs(code, &cm);
    use ErrorCode as E;
    case(id, reqs, format!("envelopes_invalid.json: {cm}: refused with {}", code.as_str()), move |e| {
        let t = e.t;
        if code == E::TooManyRecipients && t.published.recipients_max != 16 {
            skip!("the vector assumes recipients_max 16; the relay publishes {} (env.recipients-limit checks the published value)", t.published.recipients_max);
        }
        if code == E::PayloadTooLarge {
            return payload_vector(e, &input);
        }
        refuse(t, input.as_bytes(), code)?;
        Ok(())
    })
    .codes(&[code])
}

/// The requirements an envelope vector refused at parse time checks, from its code and comment.
fn invalid_reqs(code: ErrorCode, comment: &str) -> &'static [&'static str] {
    use ErrorCode as E;
    let c = comment.to_ascii_lowercase();
    let has = |w: &str| c.contains(w);
    let mut v: Vec<&'static str> = match code {
        E::UnsupportedVersion => vec!["ENV-2", "TYPE-15", "INGEST-1"],
        E::UnknownType => vec!["ENV-3", "TYPE-1", "TYPE-2", "TYPE-15"],
        E::UnsupportedTypeVersion => vec!["ENV-3", "TYPE-3", "TYPE-15"],
        E::UnknownField if has("payload") => vec!["ENV-9", "TYPE-13", "TYPE-15"],
        E::UnknownField => vec!["ENV-9", "TYPE-15"],
        E::MissingField if has("version") => vec!["ENV-2", "ENV-1"],
        E::MissingField if has("signature") => vec!["ENV-13", "SIG-5", "ENV-1"],
        E::MissingField if has("corr") => vec!["TYPE-6", "ENV-5"],
        E::MissingField => vec!["TYPE-4", "TYPE-13"],
        E::InvalidHandle => vec!["ENV-4", "HANDLE-1", "HANDLE-2", "HANDLE-8"],
        E::TooManyRecipients => vec!["ENV-6"],
        E::FloatNotAllowed => vec!["ENV-12", "JSON-5", "ENC-3"],
        E::IdMismatch => vec!["ENV-14"],
        E::TypeReserved => vec!["TYPE-8", "RCPT-5"],
        E::PayloadTooLarge => vec!["ENV-8", "TRUST-7"],
        E::InvalidField if has("not an object") && !has("payload") => vec!["ENV-1"],
        E::InvalidField if has("type_version") => vec!["ENV-3"],
        E::InvalidField if has("vouch") && has("asks for an ack") => vec!["ENV-7", "TYPE-10"],
        E::InvalidField if has("vouch") => vec!["TRUST-3", "TYPE-10"],
        E::InvalidField if has("ack") && has("asks for an ack") => vec!["ENV-7", "TYPE-7"],
        E::InvalidField if has("ack_by") => vec!["ENV-7"],
        E::InvalidField if has("ack with") => vec!["TYPE-7", "TYPE-13"],
        E::InvalidField if has("recipient") => vec!["ENV-6"],
        E::InvalidField if has("timestamp") => vec!["ENV-12", "ENC-3"],
        E::InvalidField if has("corr") => vec!["ENV-5"],
        E::InvalidField if has("key id") => vec!["ENV-4", "KEY-5", "ENC-1"],
        E::InvalidField if has("signature") => vec!["ENV-13", "SIG-5", "ENC-1", "ENC-2"],
        E::InvalidField if has("task_result") => vec!["TYPE-6"],
        E::InvalidField if has("contact_request") => vec!["TYPE-9", "TYPE-13"],
        E::InvalidField if has("note") => vec!["TYPE-13", "ENC-5"],
        E::InvalidField if has("task name") => vec!["TYPE-5"],
        E::InvalidField if has("payload") && has("text") => vec!["TYPE-4", "TYPE-13"],
        E::InvalidField if has("payload") => vec!["TYPE-13"],
        _ => vec!["ENV-1"],
    };
    v.extend(["ENV-16", "VEC-2"]);
    Box::leak(v.into_boxed_slice())
}

/// The oversized-payload vector, re-sent by a registered agent: the relay enforces its tier's
/// `payload_bytes_max` (ENV-8, TRUST-7) after the signature, so the vector's own (stale,
/// unregistered) envelope would be refused for other reasons first.
fn payload_vector(e: &Env<'_>, input: &str) -> R {
    let t = e.t;
    let v = crate::http::strict_parse(input.as_bytes()).map_err(Stop::Fail)?;
    let payload = at(&v, &["payload"]).cloned().unwrap_or(Value::Null);
    let len = canon::canonicalize(&payload).len() as i64;
    let tier = t.published.tier0();
    if len <= tier.payload_bytes_max {
        skip!(
            "the relay's tier {} allows payloads of {} bytes; the vector's is {len}",
            tier.name,
            tier.payload_bytes_max
        );
    }
    if len + 600 > t.published.envelope_bytes_max {
        skip!("the vector's payload does not fit the relay's envelope_bytes_max");
    }
    let a = e.fixture("payload-vector", |t| t.register("payvec"))?;
    let o = t.envelope(&a, "message", &[&a.handle], payload);
    refuse(t, &t.sign(&o, &a.key).wire, ErrorCode::PayloadTooLarge)?;
    Ok(())
}
