//! Federation (section 16). Any relay is asked the relay endpoints as a stranger: a relay
//! with federation disabled answers them all with `peer_unknown`, one with federation enabled
//! checks a relay request in RELAY-REQ-3's order and the handshake as FED-3 says. With
//! `--peer URL` (a second relay, already peered with the first) the suite registers agents on
//! both and checks forwarding, the remote key log cache, acks and delivery notices across
//! relays, refusals at the receiving relay and dead-lettering.

use super::*;
use crate::case::{case, Env};
use crate::target::{random_key, random_nonce};
use formica_protocol::auth::{RelayAuth, RequestTarget, RELAY_SCHEME};
use formica_protocol::{PublicKey, RelayHost, SecretKey};

/// How long a forwarded envelope, a delivery notice or a dead-letter may take to show up.
const FED_WAIT_MS: u64 = 20_000;

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("fed.relay-request-stranger", &["RELAY-REQ-1", "RELAY-REQ-3"], "a relay request from a relay that is not a peer is peer_unknown; malformed, misdirected and stale headers are refused first", stranger)
            .codes(&[E::Unauthorized, E::WrongRelay, E::Stale, E::PeerUnknown]),
        case("fed.handshake-checks", &["FED-3"], "a handshake with a descriptor that does not verify, or from a relay that cannot be reached, is refused", handshake_checks)
            .codes(&[E::Unauthorized, E::PeerUnavailable, E::PeerUnknown]),
        case("fed.non-peer-recipient", &["FED-13", "INGEST-1"], "a recipient on a host that is not an active peer is unknown_recipient", non_peer_recipient).codes(&[E::UnknownRecipient]),
        case("fed.peer-descriptor", &["FED-1", "FED-2", "KEY-6", "DESC-2"], "the peer's descriptor is signed, names another host and a different relay key, and publishes its federation policy", peer_descriptor).peer(),
        case("fed.forward", &["FED-4", "FED-6", "FED-13", "ENV-18", "DELIV-3", "FED-8"], "an envelope to a peer's agent is accepted, forwarded, served there byte for byte, and the peer caches the sender's key log", forward).peer(),
        case("fed.ack-across-relays", &["FED-11", "ACK-3", "RCPT-2"], "a remote recipient's read and ack come back as a delivery notice and an ack; the home relay makes the receipts", ack_across).peer(),
        case("fed.key-rotation", &["FED-8", "LOG-12"], "after the sender rotates its key at home, the peer fetches the log again and accepts the new key", key_rotation).peer(),
        case("fed.remote-refusal-dead-letters", &["FED-6", "FED-10", "FED-13", "API-13"], "a remote recipient that refuses the sender dead-letters the delivery with a receipt naming the code", remote_refusal).peer(),
        case("fed.unknown-remote-recipient", &["FED-6", "FED-10", "FED-13"], "an unregistered remote recipient is accepted at home, then dead-lettered with reason unknown_recipient", unknown_remote).peer(),
        case("fed.remote-keylog-lookup", &["FED-17"], "the key log of a peer's agent that never sent here is fetched from the peer on demand, served as not cached, and not stored; a handle on a host that is not a peer is not_found", remote_lookup).peer(),
    ]
}

fn peer<'a>(e: &'a Env<'_>) -> R<&'a Target> {
    let p = e
        .peer
        .ok_or_else(|| Stop::Skip("federation: needs --peer".into()))?;
    if !e.t.published.federation_enabled || !p.published.federation_enabled {
        skip!("federation: the relay or its peer publishes federation.enabled = false");
    }
    Ok(p)
}

/// The suite posing as a relay that is nobody's peer, at an address where nothing listens.
fn stranger_host() -> R<RelayHost> {
    RelayHost::parse("127.0.0.1:1").map_err(|err| Stop::Fail(err.to_string()))
}

/// A signed descriptor for the stranger relay.
fn stranger_descriptor(t: &Target, host: &RelayHost, key: &SecretKey) -> Value {
    descriptor_at(host, key, t.now())
}

/// A descriptor for `host` with relay key `key`, made at `ts`.
fn descriptor_at(host: &RelayHost, key: &SecretKey, ts: i64) -> Value {
    let mut o = Object::new();
    o.insert("v", int(1));
    o.insert("relay", s(host.as_str()));
    o.insert("key", s(&key.public().to_hex()));
    o.insert("versions", Value::Array(vec![int(1)]));
    o.insert("ts", int(ts));
    let sig = key.sign(
        Domain::Descriptor,
        &canon::canonicalize(&Value::Object(o.clone())),
    );
    o.insert("sig", s(&sig.to_hex()));
    Value::Object(o)
}

/// POSTs a relay request. The handshake shares the per-IP limit of the unauthenticated
/// endpoints (FED-15), so a `rate_limited` answer is waited out as for them.
fn relay_post(t: &Target, path: &str, body: &[u8], header: String) -> R<Resp> {
    t.send_ip_limited(
        "POST",
        path,
        &[
            ("authorization", header),
            ("content-type", "application/json".into()),
        ],
        body,
    )
}

fn stranger(e: &Env<'_>) -> R {
    let t = e.t;
    let me = stranger_host()?;
    let key = random_key();
    let txn = format!("t-{}-{}", t.run_id, t.next());
    let endpoints: Vec<(&str, Vec<u8>)> = vec![
        (
            "/v1/federation/transfer",
            canon::canonicalize(&obj(vec![
                ("txn", s(&txn)),
                ("envelopes", Value::Array(vec![])),
            ])),
        ),
        (
            "/v1/federation/keylog",
            canon::canonicalize(&obj(vec![("entries", Value::Array(vec![]))])),
        ),
    ];
    for (path, body) in &endpoints {
        let target = RequestTarget {
            method: "POST",
            path,
            body,
        };
        let good = RelayAuth::sign(&key, &me, &t.host, t.now(), random_nonce(), &target);
        if t.published.federation_enabled {
            relay_post(
                t,
                path,
                body,
                good.replacen("Formica-Relay ", "Formica-Relay  ", 1),
            )?
            .expect_error(ErrorCode::Unauthorized)?;
            let other =
                RelayHost::parse("elsewhere.example").map_err(|err| Stop::Fail(err.to_string()))?;
            relay_post(
                t,
                path,
                body,
                RelayAuth::sign(&key, &me, &other, t.now(), random_nonce(), &target),
            )?
            .expect_error(ErrorCode::WrongRelay)?;
            let old = t.now() - t.published.window_ms - 60_000;
            relay_post(
                t,
                path,
                body,
                RelayAuth::sign(&key, &me, &t.host, old, random_nonce(), &target),
            )?
            .expect_error(ErrorCode::Stale)?;
        }
        // Disabled: every relay endpoint is peer_unknown (section 16); enabled: a stranger is
        // not an active peer (RELAY-REQ-3).
        relay_post(t, path, body, good)?.expect_error(ErrorCode::PeerUnknown)?;
    }
    Ok(())
}

fn handshake_checks(e: &Env<'_>) -> R {
    let t = e.t;
    let me = stranger_host()?;
    let key = random_key();
    let path = "/v1/federation/peers";
    let send = |desc: &Value, signer: &SecretKey| {
        let body = canon::canonicalize(&obj(vec![("descriptor", desc.clone())]));
        let target = RequestTarget {
            method: "POST",
            path,
            body: &body,
        };
        relay_post(
            t,
            path,
            &body,
            RelayAuth::sign(signer, &me, &t.host, t.now(), random_nonce(), &target),
        )
    };
    let desc = stranger_descriptor(t, &me, &key);
    if !t.published.federation_enabled {
        send(&desc, &key)?.expect_error(ErrorCode::PeerUnknown)?;
        return Ok(());
    }
    // A descriptor whose signature does not verify.
    let mut bad = desc.clone();
    if let Value::Object(o) = &mut bad {
        o.insert("ts", int(t.now() + 1));
    }
    expect_refused(t, &send(&bad, &key)?, ErrorCode::Unauthorized)?;
    // A header signed by another key than the descriptor's.
    expect_refused(t, &send(&desc, &random_key())?, ErrorCode::Unauthorized)?;
    // A valid request from a relay that cannot be reached: its descriptor cannot be fetched.
    expect_past_header(&send(&desc, &key)?)
}

// ------------------------------------------------------------------ auth.json relay vectors

/// The handshake (FED-3) is the one relay request whose header a relay checks for a caller
/// that is not its peer, with the key named by the caller's descriptor; on every other relay
/// endpoint a stranger is `peer_unknown` before its signature is looked at (RELAY-REQ-3). So
/// the suite, posing as a relay nobody peers with, re-creates the relay vectors as handshakes.
const HANDSHAKE: &str = "/v1/federation/peers";

fn federating(t: &Target) -> R<()> {
    if !t.published.federation_enabled {
        skip!("federation: the relay publishes federation.enabled = false, so it answers every relay request peer_unknown (fed.relay-request-stranger checks that)");
    }
    Ok(())
}

fn handshake_body(desc: &Value) -> Vec<u8> {
    canon::canonicalize(&obj(vec![("descriptor", desc.clone())]))
}

/// The answer to a handshake whose header passed the relay's check, from a stranger at a
/// loopback host where nothing listens: the relay cannot fetch its descriptor, or refuses to
/// connect to a private address (`peer_unavailable` either way, FED-15), or it refuses the
/// stranger by its policy before fetching anything (`peer_unknown`: not on an allowlist, or
/// past `pending_peers_max` or `open_peers_max`, FED-15).
fn expect_past_header(r: &Resp) -> R {
    if r.code() == Some("peer_unknown") {
        r.expect_error(ErrorCode::PeerUnknown)?;
    } else {
        r.expect_error(ErrorCode::PeerUnavailable)?;
    }
    Ok(())
}

/// A stranger's handshake refused with `code`. Under an allowlist the stranger, never listed,
/// is also refused by policy; reporting `code` first is a SHOULD (CONV-3), so a relay that
/// answers `peer_unknown` instead makes the check invisible from outside: the case is skipped.
fn expect_refused(t: &Target, r: &Resp, code: ErrorCode) -> R {
    if t.published.peering == "allowlist" && r.code() == Some("peer_unknown") {
        skip!("allowlist: the relay refused the unlisted stranger (peer_unknown) before reporting {}, an order CONV-3 allows", code.as_str());
    }
    r.expect_error(code)?;
    Ok(())
}

/// The params of a `Formica-Relay` header, in order.
fn relay_params(h: &str) -> Vec<(String, String)> {
    header_params(h, RELAY_SCHEME)
}

/// A `Formica-Relay` header with `ps`, where `k` (if given) is set to `v`.
fn relay_join(ps: &[(String, String)], set: Option<(&str, &str)>) -> String {
    let ps: Vec<(String, String)> = ps
        .iter()
        .map(|(k, v)| match set {
            Some((sk, sv)) if sk == k => (k.clone(), sv.to_owned()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    header_join(RELAY_SCHEME, &ps)
}

/// auth.json `relay_valid`: a header made the same way by the suite passes the relay's check.
/// Only a handshake can show that to a stranger; the exact bytes of every `relay_valid` vector
/// are checked offline by the protocol crate's vector tests.
pub fn vector_relay_valid(i: usize, c: &Value) -> Case {
    let cm = crate::vectors::field(c, "comment").unwrap_or("").to_owned();
    let path = crate::vectors::field(c, "path").unwrap_or("").to_owned();
    case(
        format!("vec.auth.relay_valid.{i}"),
        &["RELAY-REQ-1", "RELAY-REQ-2", "FED-3", "VEC-2"],
        format!("auth.json relay_valid: {cm}: the same kind of header, made by the suite posing as a relay that is not a peer, passes the relay's check"),
        move |e| {
            let t = e.t;
            federating(t)?;
            if path != HANDSHAKE {
                skip!("federation: a relay checks the signature of a {path} request only for an active peer (RELAY-REQ-3), and the suite is not one");
            }
            let me = stranger_host()?;
            let key = random_key();
            let body = handshake_body(&stranger_descriptor(t, &me, &key));
            let target = RequestTarget {
                method: "POST",
                path: HANDSHAKE,
                body: &body,
            };
            let h = RelayAuth::sign(&key, &me, &t.host, t.now(), random_nonce(), &target);
            expect_past_header(&relay_post(t, HANDSHAKE, &body, h)?)
        },
    )
    .codes(&[ErrorCode::PeerUnavailable])
}

/// auth.json `relay_invalid`, re-created as a handshake by the suite posing as a relay that is
/// not a peer (the vectors' own headers are signed for other hosts, and their `ts` is stale).
pub fn vector_relay_invalid(i: usize, c: &Value) -> Case {
    let cm = crate::vectors::field(c, "comment").unwrap_or("").to_owned();
    let l = cm.to_ascii_lowercase();
    let code = crate::vectors::field(c, "error")
        .and_then(ErrorCode::from_wire)
        .unwrap_or(ErrorCode::Unauthorized);
    let reqs: &'static [&'static str] = if l.contains("presented to") {
        &["RELAY-REQ-3", "VEC-2"]
    } else if l.contains(" tag ") {
        &["SIG-1", "RELAY-REQ-2", "RELAY-REQ-3", "FED-3", "VEC-2"]
    } else if l.contains("after signing") || l.contains("signed for") || l.contains("another key") {
        &["RELAY-REQ-2", "RELAY-REQ-3", "FED-3", "VEC-2"]
    } else {
        &["RELAY-REQ-1", "VEC-2"]
    };
    case(
        format!("vec.auth.relay_invalid.{i}"),
        reqs,
        format!(
            "auth.json relay_invalid: {cm}: re-created as a handshake by the suite posing as a relay that is not a peer, refused with {}",
            code.as_str()
        ),
        move |e| {
            let t = e.t;
            federating(t)?;
            let me = stranger_host()?;
            let key = random_key();
            let body = handshake_body(&stranger_descriptor(t, &me, &key));
            let sign = |sk: &SecretKey,
                        origin: &RelayHost,
                        dest: &RelayHost,
                        method: &str,
                        path: &str,
                        body: &[u8]| {
                let target = RequestTarget { method, path, body };
                RelayAuth::sign(sk, origin, dest, t.now(), random_nonce(), &target)
            };
            let good = sign(&key, &me, &t.host, "POST", HANDSHAKE, &body);
            let ps = relay_params(&good);
            let host = |h: &str| RelayHost::parse(h).map_err(|err| Stop::Fail(err.to_string()));
            let (sent, header) = if l.contains("presented to") {
                let h = sign(&key, &me, &host("elsewhere.example")?, "POST", HANDSHAKE, &body);
                (body, h)
            } else if l.contains("body changed after signing") {
                // Both bodies are valid handshakes of the same relay; the header signs the first.
                let later = handshake_body(&descriptor_at(&me, &key, t.now() + 1));
                (later, good)
            } else if l.contains("signed for /v1/federation/transfer") {
                let h = sign(&key, &me, &t.host, "POST", "/v1/federation/transfer", &body);
                (body, h)
            } else if l.contains("signed for post, sent as put") {
                // The handshake is routed for POST only: the same mismatch the other way round.
                let h = sign(&key, &me, &t.host, "PUT", HANDSHAKE, &body);
                (body, h)
            } else if l.contains("origin changed after signing") {
                // Signed as one host and presented as another, whose descriptor (with the same
                // key) the body carries; nothing listens at either.
                let other = host("127.0.0.1:2")?;
                let b2 = handshake_body(&descriptor_at(&other, &key, t.now()));
                let h = sign(&key, &me, &t.host, "POST", HANDSHAKE, &b2);
                (b2, relay_join(&relay_params(&h), Some(("origin", other.as_str()))))
            } else if l.contains("another key than the one named") {
                let h = sign(&random_key(), &me, &t.host, "POST", HANDSHAKE, &body);
                let named = key.public().key_id().to_hex();
                (body, relay_join(&relay_params(&h), Some(("key", &named))))
            } else if l.contains("agent scheme") {
                (body, good.replacen("Formica-Relay ", "Formica ", 1))
            } else if l.contains("space after a comma") {
                (body, good.replacen(',', ", ", 1))
            } else if l.contains("seventh parameter") {
                (body, format!("{good},handle=@alice@{me}"))
            } else if l.contains("dest missing") {
                let rest: Vec<(String, String)> =
                    ps.iter().filter(|(k, _)| k != "dest").cloned().collect();
                (body, relay_join(&rest, None))
            } else if l.contains("agent request tag instead of the relay request tag") {
                // The relay key signs the relay request's fields under the agent request's tag.
                let parsed = RelayAuth::parse(&good).map_err(|err| Stop::Fail(err.to_string()))?;
                let target = RequestTarget {
                    method: "POST",
                    path: HANDSHAKE,
                    body: &body,
                };
                let input = parsed.signing_input(&target);
                let fields = input
                    .strip_prefix(Domain::RelayRequest.tag())
                    .ok_or_else(|| Stop::Fail("relay signing input without its tag".into()))?;
                let sig = key.sign(Domain::Request, fields).to_hex();
                (body, relay_join(&ps, Some(("sig", &sig))))
            } else {
                skip!("no re-creation of this relay auth vector is known to this version of the suite");
            };
            expect_refused(t, &relay_post(t, HANDSHAKE, &sent, header)?, code)
        },
    )
    .codes(&[code])
}

fn non_peer_recipient(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("fnp")?;
    let remote =
        Handle::parse("@someone@elsewhere.example").map_err(|err| Stop::Fail(err.to_string()))?;
    refuse(t, &msg(t, &a, &[&remote]).wire, ErrorCode::UnknownRecipient)?;
    Ok(())
}

fn peer_descriptor(e: &Env<'_>) -> R {
    let p = e
        .peer
        .ok_or_else(|| Stop::Skip("federation: needs --peer".into()))?;
    let d = p.descriptor.clone().map_err(Stop::Fail)?;
    let o = d
        .as_object()
        .ok_or_else(|| Stop::Fail("the peer's descriptor is not an object".into()))?;
    let key = o
        .get("key")
        .and_then(Value::as_str)
        .and_then(|k| PublicKey::parse_hex(k).ok())
        .ok_or_else(|| Stop::Fail("the peer's descriptor has no valid key (FED-1)".into()))?;
    let sig = o
        .get("sig")
        .and_then(Value::as_str)
        .and_then(|x| formica_protocol::Signature::parse_hex(x).ok())
        .ok_or_else(|| Stop::Fail("the peer's descriptor has no valid sig".into()))?;
    let mut input = Domain::Descriptor.tag().to_vec();
    canon::write_object(o, Some(&["sig"]), &mut input);
    ensure!(
        key.verify_input(&input, &sig).is_ok(),
        "the peer's descriptor does not verify (FED-1, DESC-2)"
    );
    ensure!(
        p.host != e.t.host,
        "the peer names the same host {} (FED-1)",
        p.host
    );
    ensure!(
        Some(key) != e.t.relay_key,
        "the peer uses the same relay key (KEY-6)"
    );
    for (who, tt) in [("relay", e.t), ("peer", p)] {
        if tt.published.federation_enabled {
            let dv = tt.descriptor.clone().map_err(Stop::Fail)?;
            for k in ["remote_tier", "dead_letter_ms", "attempts_max"] {
                ensure!(
                    matches!(at(&dv, &["federation", k]), Some(Value::Int(n)) if *n >= 0),
                    "the {who}'s descriptor has no integer federation.{k} (FED-2)"
                );
            }
        }
    }
    Ok(())
}

/// `a` at the relay under test, `b` at the peer, `b` letting `a` send messages.
fn across(e: &Env<'_>, tag: &str) -> R<(Agent, Agent, Target2)> {
    let p = peer(e)?;
    let a = e.t.register(&format!("{tag}a"))?;
    let b = p.register(&format!("{tag}b"))?;
    p.grant(&b, &a.handle, "message")?;
    Ok((a, b, Target2))
}

/// Marker: the peer is `e.peer`.
struct Target2;

fn forward(e: &Env<'_>) -> R {
    let t = e.t;
    let (a, b, _) = across(e, "ffw")?;
    let p = peer(e)?;
    let m = msg(t, &a, &[&b.handle]);
    t.send_ok(&m)?;
    let got = p.wait_inbox(&b, FED_WAIT_MS, "the forwarded envelope", |v| {
        crate::target::env_str(v, "id") == Some(m.id.as_str())
    })?;
    ensure!(
        canon::canonicalize(&got) == m.wire,
        "the peer serves the forwarded envelope differently from what was signed (ENV-18)"
    );
    let (st, _) = t.delivery(&a, &m.id, &b.handle)?;
    ensure!(
        ["forwarded", "delivered"].contains(&st.as_str()),
        "at the home relay the delivery is {st:?} after the peer stored it (FED-6, DELIV-3)"
    );
    // FED-8: the peer caches the sender's key log and serves it marked as cached.
    let r = p.http.get(&format!("/v1/keys/{}", a.handle))?;
    let v = r.expect_json(200)?;
    ensure!(
        at(v, &["cached"]) == Some(&Value::Bool(true)),
        "{}: the peer's copy of a remote sender's log is not marked cached: {} (FED-8)",
        r.what,
        r.brief()
    );
    let home = t.http.get(&format!("/v1/keys/{}", a.handle))?;
    ensure!(
        at(v, &["entries"]) == at(home.expect_json(200)?, &["entries"]),
        "the peer's cached log differs from the home relay's (FED-8)"
    );
    Ok(())
}

fn ack_across(e: &Env<'_>) -> R {
    let t = e.t;
    let (a, b, _) = across(e, "fak")?;
    let p = peer(e)?;
    let m = msg_ack(t, &a, &[&b.handle], 120_000);
    t.send_ok(&m)?;
    p.wait_inbox(&b, FED_WAIT_MS, "the forwarded envelope", |v| {
        crate::target::env_str(v, "id") == Some(m.id.as_str())
    })?;
    // b has read it at its home: the delivery notice makes the home relay's delivered receipt.
    t.wait_delivery(&a, &m.id, &b.handle, "delivered", FED_WAIT_MS)?;
    let rd = t.wait_inbox(&a, FED_WAIT_MS, "a delivered receipt", |v| {
        crate::target::is_receipt(v, &m.id, "delivered")
    })?;
    t.verify_receipt(&rd)?;
    // b acks at its own relay; the ack travels back and settles the delivery at a's relay.
    let k = ack(p, &b, &a.handle, &m.id, "processed");
    p.send_ok(&k)?;
    t.wait_delivery(&a, &m.id, &b.handle, "acked", FED_WAIT_MS)?;
    let got = t.wait_inbox(&a, FED_WAIT_MS, "the remote ack", |v| {
        crate::target::env_str(v, "id") == Some(k.id.as_str())
    })?;
    ensure!(
        canon::canonicalize(&got) == k.wire,
        "the ack reaches the sender modified (ENV-18)"
    );
    let ra = t.wait_inbox(&a, FED_WAIT_MS, "an acked receipt", |v| {
        crate::target::is_receipt(v, &m.id, "acked")
    })?;
    t.verify_receipt(&ra)?;
    Ok(())
}

fn key_rotation(e: &Env<'_>) -> R {
    let t = e.t;
    let (a, b, _) = across(e, "fkr")?;
    let p = peer(e)?;
    let m1 = msg(t, &a, &[&b.handle]);
    t.send_ok(&m1)?;
    p.wait_inbox(&b, FED_WAIT_MS, "the first envelope", |v| {
        crate::target::env_str(v, "id") == Some(m1.id.as_str())
    })?;
    let k2 = random_key();
    let ts = t.now().max(a.reg_ts + 1);
    super::envelopes::rotate(t, &a, 1, &a.head, &k2, ts)?;
    let a2 = Agent {
        key: k2,
        ..a.clone()
    };
    let o = t.envelope_at(&a2, "message", &[&b.handle], text(t), t.now().max(ts));
    let m2 = t.sign(&o, &a2.key);
    t.send_ok(&m2)?;
    p.wait_inbox(
        &b,
        FED_WAIT_MS,
        "the envelope signed with the rotated key",
        |v| crate::target::env_str(v, "id") == Some(m2.id.as_str()),
    )?;
    Ok(())
}

fn remote_refusal(e: &Env<'_>) -> R {
    let t = e.t;
    let p = peer(e)?;
    let a = t.register("fra")?;
    let b = p.register("frb")?;
    let m = msg(t, &a, &[&b.handle]);
    t.send_ok(&m).map_err(|err| match err {
        Stop::Fail(x) => Stop::Fail(format!("the home relay must accept a remote recipient without knowing its contacts: {x} (FED-13)")),
        other => other,
    })?;
    let d = t.wait_delivery(&a, &m.id, &b.handle, "dead_lettered", FED_WAIT_MS)?;
    let why = d
        .as_object()
        .and_then(|o| o.get("reason"))
        .and_then(Value::as_str)
        .unwrap_or("");
    ensure!(
        why == "not_contact",
        "GET /v1/messages/{{id}}: the dead_lettered delivery's reason is {why:?}, not the refusal's code not_contact (API-13)"
    );
    let rc = t.wait_inbox(&a, 5000, "a dead_lettered receipt", |v| {
        crate::target::is_receipt(v, &m.id, "dead_lettered")
    })?;
    t.verify_receipt(&rc)?;
    let reason = crate::target::payload_str(&rc, "reason").unwrap_or("");
    ensure!(reason == "not_contact", "the dead_lettered receipt's reason is {reason:?}, not the refusal's code not_contact (FED-10)");
    ensure!(
        p.inbox(&b)?.is_empty(),
        "the refused envelope reached the remote recipient (FED-6)"
    );
    Ok(())
}

fn remote_lookup(e: &Env<'_>) -> R {
    let t = e.t;
    let p = peer(e)?;
    let b = p.register("flkb")?;
    let path = format!("/v1/keys/{}", b.handle);
    let home = p.http.get(&path)?;
    let want = at(home.expect_json(200)?, &["entries"]).cloned();
    // Twice: the first look-up must not have stored it (FED-8: only logs of accepted
    // envelopes are cached).
    for n in 0..2 {
        let r = t.http.get(&path)?;
        let v = r.expect_json(200)?;
        ensure!(
            at(v, &["cached"]) == Some(&Value::Bool(false)),
            "{} (look-up {}): a peer agent's log fetched on demand must say \"cached\": false: {} (API-5)",
            r.what,
            n + 1,
            r.brief()
        );
        ensure!(
            at(v, &["entries"]).cloned() == want,
            "{}: the log served differs from the one its home relay serves (API-5)",
            r.what
        );
    }
    let r = t.http.get("/v1/keys/@someone@elsewhere.example")?;
    r.expect_error(ErrorCode::NotFound)?;
    Ok(())
}

fn unknown_remote(e: &Env<'_>) -> R {
    let t = e.t;
    let p = peer(e)?;
    let a = t.register("fua")?;
    let ghost = p.fresh_handle("fughost");
    let m = msg(t, &a, &[&ghost]);
    t.send_ok(&m)?;
    t.wait_delivery(&a, &m.id, &ghost, "dead_lettered", FED_WAIT_MS)?;
    let rc = t.wait_inbox(&a, 5000, "a dead_lettered receipt", |v| {
        crate::target::is_receipt(v, &m.id, "dead_lettered")
    })?;
    let reason = crate::target::payload_str(&rc, "reason").unwrap_or("");
    ensure!(
        reason == "unknown_recipient",
        "the dead_lettered receipt's reason is {reason:?}, not unknown_recipient (FED-10)"
    );
    Ok(())
}
