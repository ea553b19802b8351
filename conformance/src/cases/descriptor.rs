//! The relay descriptor (API-1, DESC-1..3), the operational endpoints (API-2), the general HTTP
//! rules that need no agent (HTTP-1, HTTP-8, HTTP-9, HTTP-4 on framework-level refusals), the
//! published units (ENC-4), tiers (TRUST-1) and peering policy (FED-2), and "a refusal changes
//! nothing" (CONV-2, HTTP-7).

use super::*;
use crate::case::{case, Env};
use crate::target::random_key;
use formica_protocol::{PublicKey, RelayHost, Signature};

pub fn cases() -> Vec<Case> {
    vec![
        case("desc.members", &["API-1", "DESC-1", "ENC-3", "TIME-3", "PRES-6"], "the descriptor has every member of DESC-1 with its type (tiers with searches_per_min, the directory object with the federated search limits, the presence object)", members),
        case("desc.signature", &["DESC-2", "SIG-1", "SIG-2", "KEY-1", "KEY-2", "KEY-3"], "the descriptor verifies with its relay key under the descriptor tag", signature),
        case("desc.relay-host", &["DESC-3", "HANDLE-4", "HANDLE-5"], "the descriptor names the host the client contacted", relay_host),
        case("desc.units", &["ENC-4"], "published durations and limits are integers named with their unit", units),
        case("desc.tiers", &["TRUST-1"], "tiers are an ordered list with levels 0..n and their thresholds and limits; a new agent is at level 0", tiers),
        case("desc.retention", &["DESC-1", "RET-1", "RET-3"], "retention publishes delivered_ms, max_ms >= delivered_ms, and dedup_ms covering the freshness window", retention),
        case("desc.peering", &["FED-2"], "federation.peering is allowlist, open, manual or none, and none exactly when federation is disabled", peering),
        case("ops.endpoints", &["API-2"], "/health, /ready, /metrics and /v1/openapi.json answer as API-2 says", ops),
        case("json.answers-strict", &["JSON-12", "HTTP-3"], "answers of every kind are strict-JSON documents with Content-Type application/json", answers_strict),
        case("http.not-found", &["HTTP-8"], "an unknown path is 404 not_found", |e| {
            e.t.http.get(&format!("/v1/no-such-endpoint-{}", e.t.run_id))?.expect_error(ErrorCode::NotFound)?;
            e.t.http.get("/v2/envelopes")?.expect_error(ErrorCode::NotFound)?;
            Ok(())
        })
        .codes(&[ErrorCode::NotFound]),
        case("http.method-not-allowed", &["HTTP-8"], "a known path with a method it does not accept is 405 method_not_allowed", |e| {
            e.t.http.send("DELETE", "/v1/envelopes", &[], crate::http::Body::None)?.expect_error(ErrorCode::MethodNotAllowed)?;
            e.t.http.get("/v1/envelopes")?.expect_error(ErrorCode::MethodNotAllowed)?;
            e.t.http.post("/.well-known/formica", b"{}")?.expect_error(ErrorCode::MethodNotAllowed)?;
            Ok(())
        })
        .codes(&[ErrorCode::MethodNotAllowed]),
        case("http.path-percent-encoded-invalid", &["HTTP-9", "HTTP-4"], "a path segment that percent-decodes to invalid UTF-8 is invalid_handle with the HTTP-4 body", |e| {
            e.t.http.get("/v1/keys/%ff")?.expect_error(ErrorCode::InvalidHandle)?;
            e.t.http.get("/v1/keys/%40a%40b%ff")?.expect_error(ErrorCode::InvalidHandle)?;
            Ok(())
        })
        .codes(&[ErrorCode::InvalidHandle]),
        case("http.ws-without-upgrade", &["HTTP-4"], "a plain GET of the WebSocket endpoint is refused with the HTTP-4 error body", ws_without_upgrade),
        case("http.tls", &["HTTP-1"], "the relay is served over TLS, or on loopback", |e| {
            let a = e.t.http.authority();
            let host = a.rsplit_once(':').map(|(h, _)| h).unwrap_or(a);
            let loopback = host == "localhost" || host.starts_with("127.") || host == "[::1]";
            ensure!(e.t.http.is_tls() || loopback, "{} is plain HTTP on a non-loopback host (HTTP-1)", e.t.http.base());
            Ok(())
        }),
        case("http.declared-too-large", &["HTTP-2", "JSON-1"], "a body declared larger than the limit (Content-Length) is refused too_large before the body read time", declared_too_large).codes(&[ErrorCode::TooLarge]),
        case("http.body-timeout", &["HTTP-14"], "a request whose body stops arriving is answered 408 request_timeout within limits.body_read_timeout_ms", body_timeout)
            .codes(&[ErrorCode::RequestTimeout]),
        case("time.clock-sync", &["TIME-6"], "the relay's clock agrees with the suite's within a tenth of the skew", |e| {
            let skew = e.t.published.skew_ms;
            ensure!(e.t.offset_ms.abs() <= skew / 10 + 1000, "the relay's clock is {} ms off the suite's (skew_ms {skew}) (TIME-6)", e.t.offset_ms);
            Ok(())
        }),
        case("http.ip-rate-limit", &["HTTP-10", "REG-1"], "POST /v1/challenges and POST /v1/register are rate limited per client address, with retry_after_s", ip_rate_limit)
            .codes(&[ErrorCode::RateLimited])
            .last(),
        case("admin.not-agent-api", &["ADMIN-1"], "relay administration is not open to agents: the admin endpoints without the admin token are forbidden (or absent)", admin_closed)
            .codes(&[ErrorCode::Forbidden]),
        case("conv.refusal-changes-nothing", &["CONV-2", "HTTP-7"], "a refused registration, envelope and key log entry change no state (the non-2xx half of HTTP-7)", refusal_changes_nothing)
            .codes(&[ErrorCode::BadSignature, ErrorCode::NotContact, ErrorCode::KeylogUnauthorizedSigner]),
    ]
}

fn descriptor(e: &Env<'_>) -> R<Value> {
    let r = e.t.http.get("/.well-known/formica")?;
    Ok(r.expect_json(200)?.clone())
}

fn req_int(d: &Value, path: &[&str]) -> R<i64> {
    match at(d, path) {
        Some(Value::Int(n)) if *n >= 0 => Ok(*n),
        other => fail!(
            "descriptor member {} is {:?}, expected a non-negative integer (DESC-1)",
            path.join("."),
            other.map(Value::kind)
        ),
    }
}

fn req_str<'a>(d: &'a Value, path: &[&str]) -> R<&'a str> {
    at(d, path).and_then(Value::as_str).ok_or_else(|| {
        Stop::Fail(format!(
            "descriptor member {} is missing or not a string (DESC-1)",
            path.join(".")
        ))
    })
}

fn members(e: &Env<'_>) -> R {
    let d = descriptor(e)?;
    ensure!(
        at(&d, &["v"]) == Some(&Value::Int(1)),
        "descriptor `v` is not 1 (DESC-1)"
    );
    req_str(&d, &["relay"])?;
    req_str(&d, &["key"])?;
    req_str(&d, &["sig"])?;
    let versions = at(&d, &["versions"])
        .and_then(Value::as_array)
        .ok_or_else(|| Stop::Fail("descriptor `versions` is not an array (DESC-1)".into()))?;
    ensure!(
        versions.contains(&Value::Int(1)),
        "descriptor `versions` does not list protocol version 1 (DESC-1)"
    );
    let ts = req_int(&d, &["ts"])?;
    ensure!(
        ts <= 9_007_199_254_740_991,
        "descriptor ts out of range (ENC-3)"
    );
    for k in [
        "body_bytes_max",
        "envelope_bytes_max",
        "batch_bytes_max",
        "batch_envelopes_max",
        "json_depth_max",
        "recipients_max",
        "inbox_page_max",
        "inbox_pending_max",
        "contact_requests_pending_max",
        "connections_max",
        "connections_per_ip_max",
        "header_read_timeout_ms",
        "body_read_timeout_ms",
        "write_stall_timeout_ms",
        "ip_requests_per_min",
    ] {
        req_int(&d, &["limits", k])?;
    }
    let w = req_int(&d, &["time", "window_ms"])?;
    let sk = req_int(&d, &["time", "skew_ms"])?;
    let ret = req_int(&d, &["time", "retention_ms"])?;
    ensure!(
        ret >= w + sk,
        "time.retention_ms {ret} is less than window_ms + skew_ms = {} (TIME-3)",
        w + sk
    );
    req_int(&d, &["pow", "difficulty"])?;
    req_int(&d, &["pow", "challenge_ttl_ms"])?;
    req_int(&d, &["ack", "window_ms_max"])?;
    req_int(&d, &["ack", "deadline_check_ms"])?;
    for k in [
        "vouch_ttl_ms",
        "report_ttl_ms",
        "reports_per_demotion",
        "report_min_tier",
        "vouch_min_tier",
    ] {
        req_int(&d, &["trust", k])?;
    }
    ensure!(
        matches!(at(&d, &["federation", "enabled"]), Some(Value::Bool(_))),
        "descriptor federation.enabled is not a boolean (DESC-1)"
    );
    req_str(&d, &["federation", "peering"])?;
    ensure!(
        matches!(at(&d, &["directory", "public"]), Some(Value::Bool(_))),
        "descriptor directory.public is not a boolean (DESC-1, PROF-7)"
    );
    for k in [
        "profile_bytes_max",
        "profile_capabilities_max",
        "profile_ttl_ms_max",
        "page_max",
        "federated_timeout_ms",
        "peer_searches_per_min",
    ] {
        ensure!(
            req_int(&d, &["directory", k])? >= 1,
            "descriptor directory.{k} is 0 (DESC-1, PROF-4, PROF-9, PROF-11, FED-18)"
        );
    }
    // A relay may ask no peer at all (PROF-11): 0 is a valid federated_peers_max.
    req_int(&d, &["directory", "federated_peers_max"])?;
    for k in [
        "ttl_ms",
        "status_ttl_ms_max",
        "updates_per_min",
        "push_interval_ms",
    ] {
        ensure!(
            req_int(&d, &["presence", k])? >= 1,
            "descriptor presence.{k} is 0 (DESC-1, PRES-6)"
        );
    }
    let tiers = at(&d, &["tiers"])
        .and_then(Value::as_array)
        .ok_or_else(|| Stop::Fail("descriptor `tiers` is not an array (DESC-1)".into()))?;
    ensure!(
        !tiers.is_empty(),
        "descriptor `tiers` is empty (DESC-1, TRUST-1)"
    );
    for (i, t) in tiers.iter().enumerate() {
        let p = |k: &str| format!("tiers[{i}].{k}");
        ensure!(
            at(t, &["name"]).and_then(Value::as_str).is_some(),
            "descriptor {} is not a string (DESC-1)",
            p("name")
        );
        for k in [
            "level",
            "rate_per_min",
            "payload_bytes_max",
            "recipients_max",
            "contact_requests_per_hour",
            "vouches_max",
            "reports_per_day",
            "searches_per_min",
        ] {
            ensure!(
                matches!(at(t, &[k]), Some(Value::Int(n)) if *n >= 0),
                "descriptor {} is not a non-negative integer (DESC-1)",
                p(k)
            );
        }
        for k in ["min_age_ms", "min_acked", "min_vouches"] {
            ensure!(
                matches!(at(t, &["thresholds", k]), Some(Value::Int(n)) if *n >= 0),
                "descriptor {} is not a non-negative integer (DESC-1)",
                p(&format!("thresholds.{k}"))
            );
        }
        let ms = at(t, &["may_send"])
            .and_then(Value::as_array)
            .ok_or_else(|| {
                Stop::Fail(format!(
                    "descriptor {} is not an array (DESC-1)",
                    p("may_send")
                ))
            })?;
        ensure!(
            ms.iter().all(|x| x.as_str().is_some()),
            "descriptor {} holds a non-string (DESC-1)",
            p("may_send")
        );
    }
    Ok(())
}

fn signature(e: &Env<'_>) -> R {
    let d = descriptor(e)?;
    let o = d
        .as_object()
        .ok_or_else(|| Stop::Fail("the descriptor is not an object".into()))?;
    let key_hex = o.get("key").and_then(Value::as_str).unwrap_or("");
    let key = PublicKey::parse_hex(key_hex).map_err(|err| {
        Stop::Fail(format!(
            "descriptor key {key_hex:?} is not a valid public key ({}) (KEY-1, KEY-2)",
            err.code()
        ))
    })?;
    let sig_hex = o.get("sig").and_then(Value::as_str).unwrap_or("");
    let sig = Signature::parse_hex(sig_hex).map_err(|_| {
        Stop::Fail(format!(
            "descriptor sig {sig_hex:?} is not 128 lower-case hex characters (SIG-5)"
        ))
    })?;
    let mut input = Domain::Descriptor.tag().to_vec();
    canon::write_object(o, Some(&["sig"]), &mut input);
    ensure!(key.verify_input(&input, &sig).is_ok(), "the descriptor's signature does not verify with its key over the descriptor tag and its canonical form without `sig` (DESC-2)");
    if let Some(kid) = o.get("key_id").and_then(Value::as_str) {
        ensure!(
            kid == key.key_id().to_hex(),
            "descriptor key_id {kid} is not the key id of its key, {} (KEY-3)",
            key.key_id().to_hex()
        );
    }
    Ok(())
}

fn relay_host(e: &Env<'_>) -> R {
    let d = descriptor(e)?;
    let relay = req_str(&d, &["relay"])?;
    RelayHost::parse(relay).map_err(|err| {
        Stop::Fail(format!(
            "descriptor relay {relay:?} is not a valid host: {}",
            err.reason
        ))
    })?;
    let contacted = e.t.http.authority();
    let default_port = if e.t.http.is_tls() { ":443" } else { ":80" };
    let same = relay == contacted
        || format!("{relay}{default_port}") == contacted
        || relay == contacted.strip_suffix(default_port).unwrap_or(contacted);
    ensure!(same, "the descriptor says relay {relay:?}, but the suite contacted {contacted:?} (DESC-3); run the suite with the relay's public URL");
    Ok(())
}

fn units(e: &Env<'_>) -> R {
    let d = descriptor(e)?;
    const UNIT: &[&str] = &[
        "_ms",
        "_s",
        "_bytes_max",
        "_per_min",
        "_per_hour",
        "_per_day",
    ];
    // Counts have no unit (DESC-1 names them); everything else that is a number is a duration
    // or a limit and carries its unit.
    const COUNTS: &[&str] = &[
        "batch_envelopes_max",
        "json_depth_max",
        "recipients_max",
        "inbox_page_max",
        "inbox_pending_max",
        "contact_requests_pending_max",
        "connections_max",
        "difficulty",
        "level",
        "min_acked",
        "min_vouches",
        "vouches_max",
        "reports_per_demotion",
        "report_min_tier",
        "vouch_min_tier",
        "remote_tier",
    ];
    let mut bad = Vec::new();
    let mut check = |path: String, k: &str, v: &Value| match v {
        Value::Int(_) => {
            // `*_max` is a limit: of a count (`recipients_max`) or, with a unit before it, of a
            // size or duration (`envelope_bytes_max`, `window_ms_max`).
            if !UNIT.iter().any(|u| k.ends_with(u)) && !k.ends_with("_max") && !COUNTS.contains(&k)
            {
                bad.push(format!("{path}: a number without a unit suffix"));
            }
        }
        Value::String(_) | Value::Bool(_) | Value::Array(_) | Value::Object(_) | Value::Null => {}
    };
    for sect in [
        "limits",
        "time",
        "pow",
        "ack",
        "trust",
        "federation",
        "retention",
        "directory",
        "presence",
    ] {
        if let Some(o) = at(&d, &[sect]).and_then(Value::as_object) {
            for (k, v) in o.iter() {
                check(format!("{sect}.{k}"), k, v);
            }
        }
    }
    for (i, t) in at(&d, &["tiers"])
        .and_then(Value::as_array)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        for (k, v) in t
            .as_object()
            .map(|o| o.iter().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            check(format!("tiers[{i}].{k}"), k, v);
        }
        for (k, v) in at(t, &["thresholds"])
            .and_then(Value::as_object)
            .map(|o| o.iter().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            check(format!("tiers[{i}].thresholds.{k}"), k, v);
        }
    }
    ensure!(
        bad.is_empty(),
        "descriptor numbers must carry their unit as a suffix (ENC-4): {}",
        bad.join("; ")
    );
    Ok(())
}

fn tiers(e: &Env<'_>) -> R {
    let d = descriptor(e)?;
    let tiers = at(&d, &["tiers"])
        .and_then(Value::as_array)
        .unwrap_or(&[])
        .to_vec();
    ensure!(!tiers.is_empty(), "no tiers published (TRUST-1)");
    for (i, t) in tiers.iter().enumerate() {
        ensure!(
            at(t, &["level"]) == Some(&Value::Int(i as i64)),
            "tiers[{i}].level is {:?}, not its position {i} (TRUST-1)",
            at(t, &["level"])
        );
    }
    let a = e.t.register("tier")?;
    let r = e.t.http.get(&format!("/v1/keys/{}", a.handle))?;
    r.expect_json(200)?;
    let name = at(&tiers[0], &["name"])
        .and_then(Value::as_str)
        .unwrap_or("");
    ensure!(
        r.str_member("tier")? == name,
        "a newly registered agent is at tier {:?}, not at level 0 ({name:?}) (TRUST-1)",
        r.str_member("tier")?
    );
    Ok(())
}

fn peering(e: &Env<'_>) -> R {
    let d = descriptor(e)?;
    let p = req_str(&d, &["federation", "peering"])?;
    let enabled = at(&d, &["federation", "enabled"])
        .and_then(Value::as_bool)
        .unwrap_or(false);
    ensure!(
        ["allowlist", "open", "manual", "none"].contains(&p),
        "federation.peering is {p:?}, not allowlist, open, manual or none (FED-2)"
    );
    ensure!((p == "none") != enabled, "federation.peering is {p:?} while federation.enabled is {enabled} (FED-2: none means federation disabled)");
    if enabled {
        for k in ["remote_tier", "dead_letter_ms", "attempts_max"] {
            ensure!(matches!(at(&d, &["federation", k]), Some(Value::Int(n)) if *n >= 0), "federation.{k} is missing or not a non-negative integer although federation is enabled (FED-2)");
        }
    }
    Ok(())
}

fn ops(e: &Env<'_>) -> R {
    let h = e.t.http.get("/health")?;
    ensure!(
        h.expect_json(200)? == &obj(vec![("status", s("ok"))]),
        "GET /health answered {} (API-2)",
        h.brief()
    );
    let r = e.t.http.get("/ready")?;
    ensure!(
        r.expect_json(200)? == &obj(vec![("status", s("ready"))]),
        "GET /ready answered {} (API-2)",
        r.brief()
    );
    let m = e.t.http.get("/metrics")?;
    m.expect_status(200)?;
    let ct = m.header("content-type").unwrap_or("");
    ensure!(
        ct.starts_with("text/plain"),
        "GET /metrics has Content-Type {ct:?}; Prometheus text format 0.0.4 is text/plain (API-2)"
    );
    let text = String::from_utf8_lossy(&m.raw);
    let ok = text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l.split_whitespace().count() >= 2
    });
    ensure!(
        ok && !text.trim().is_empty(),
        "GET /metrics is not Prometheus text exposition format: {} (API-2)",
        crate::http::quote(&m.raw)
    );
    let o = e.t.http.get("/v1/openapi.json")?;
    let v = o.expect_json(200)?;
    let ver = at(v, &["openapi"]).and_then(Value::as_str).unwrap_or("");
    ensure!(
        ver.starts_with("3.1"),
        "GET /v1/openapi.json: `openapi` is {ver:?}, not an OpenAPI 3.1 document (API-2)"
    );
    ensure!(
        at(v, &["paths"]).and_then(Value::as_object).is_some(),
        "GET /v1/openapi.json has no `paths` (API-2)"
    );
    Ok(())
}

fn answers_strict(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("strict")?;
    let mut answers = vec![
        t.http.get("/.well-known/formica")?,
        t.http.get("/health")?,
        t.http.get("/v1/openapi.json")?,
        t.http.get(&format!("/v1/keys/{}", a.handle))?,
        t.authed(&a, "GET", "/v1/inbox", b"")?,
        t.authed(&a, "GET", "/v1/contacts", b"")?,
        t.authed(&a, "GET", "/v1/contact-requests", b"")?,
        t.http.post("/v1/envelopes", b"{")?,
        t.http.get("/v1/keys/@nobody-at-all")?,
    ];
    answers.push(t.http.get("/v1/inbox")?);
    for r in &answers {
        r.body()?;
        r.check_json_type()?;
    }
    Ok(())
}

fn ws_without_upgrade(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("wsplain")?;
    let path = "/v1/inbox/ws?after=0";
    let h = t.auth_header(&a, "GET", path, b"");
    let r = t.http.send(
        "GET",
        path,
        &[("authorization", h)],
        crate::http::Body::None,
    )?;
    ensure!(
        !(200..300).contains(&r.status),
        "{}: a plain GET (no upgrade) was answered {}",
        r.what,
        r.brief()
    );
    r.check_error_body()?;
    Ok(())
}

fn refusal_changes_nothing(e: &Env<'_>) -> R {
    let t = e.t;
    // A registration refused for its signature registers nothing: the handle stays unknown
    // and can then be registered.
    let handle = t.fresh_handle("conv");
    let key = random_key();
    let body = t.register_body(&handle, &key, None)?;
    let mut bad = body.clone();
    if let Value::Object(b) = &mut bad {
        if let Some(Value::Object(mut entry)) = b.get("entry").cloned() {
            let sig = entry
                .get("sig")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            entry.insert("sig", s(&flip_hex(&sig)));
            b.insert("entry", Value::Object(entry));
        }
    }
    t.post_ip_limited("/v1/register", &canon::canonicalize(&bad))?
        .expect_error(ErrorCode::BadSignature)?;
    t.http
        .get(&format!("/v1/keys/{handle}"))?
        .expect_error(ErrorCode::NotFound)?;
    t.post_ip_limited("/v1/register", &canon::canonicalize(&body))?
        .expect_status(201)?;
    // An envelope refused by policy reaches nobody.
    let a = t.register("conva")?;
    let b = t.register("convb")?;
    let m = msg(t, &a, &[&b.handle]);
    refuse(t, &m.wire, ErrorCode::NotContact)?;
    let items = t.inbox(&b)?;
    ensure!(
        items.is_empty(),
        "{} holds {} items after a refused envelope (CONV-2)",
        b.handle,
        items.len()
    );
    let st = t.status(&a, &m.id)?;
    st.expect_error(ErrorCode::NotFound)?;
    // A key log entry refused for its signer leaves the log as it was.
    let before = t.http.get(&format!("/v1/keys/{}", a.handle))?;
    before.expect_json(200)?;
    let (stranger, new) = (random_key(), random_key());
    let entry = sign_entry(
        &formica_protocol::keylog::KeyLogEntry {
            handle: a.handle.clone(),
            seq: 1,
            prev: formica_protocol::keylog::EntryHash::parse_hex(&a.head),
            ts: t.now(),
            op: formica_protocol::keylog::KeyOp::Rotate { key: new.public() },
            signer: stranger.public().key_id(),
        },
        &stranger,
        &[&new],
    )?;
    t.http
        .post(&format!("/v1/keys/{}", a.handle), &entry.wire_bytes())?
        .expect_error(ErrorCode::KeylogUnauthorizedSigner)?;
    let after = t.http.get(&format!("/v1/keys/{}", a.handle))?;
    ensure!(
        after.body()? == before.body()?,
        "GET /v1/keys/{} changed after a refused entry: {} -> {} (CONV-2)",
        a.handle,
        before.brief(),
        after.brief()
    );
    Ok(())
}

fn admin_closed(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("adm")?;
    for (method, path) in [("GET", "/admin/v1/peers"), ("POST", "/admin/v1/peers")] {
        let body: &[u8] = if method == "POST" {
            b"{\"url\":\"http://127.0.0.1:1\"}"
        } else {
            b""
        };
        let agent_auth = t.auth_header(&a, method, path, body);
        for headers in [
            vec![],
            vec![("authorization", "Bearer 00".to_owned())],
            vec![("authorization", agent_auth)],
        ] {
            let b = if body.is_empty() {
                crate::http::Body::None
            } else {
                crate::http::Body::Bytes(body)
            };
            let r = t.http.send(method, path, &headers, b)?;
            if r.status == 404 {
                r.expect_error(ErrorCode::NotFound)?;
                continue;
            }
            r.expect_error(ErrorCode::Forbidden)
                .map_err(|err| match err {
                    Stop::Fail(m) => Stop::Fail(format!(
                        "{m} (ADMIN-1: administration is not part of the agent API)"
                    )),
                    other => other,
                })?;
        }
    }
    Ok(())
}

/// Writes `request` on a raw socket to the relay and reads the answer (headers plus
/// Content-Length bytes, or until the relay closes), waiting at most `wait`. Plain HTTP only.
/// The answer and the milliseconds from the write to its end.
fn raw_exchange(
    t: &crate::target::Target,
    what: &str,
    request: &[u8],
    wait: std::time::Duration,
) -> R<(crate::http::Resp, i64)> {
    use std::io::{Read, Write};
    let fail = |why: String| Stop::Fail(why);
    let mut sock = std::net::TcpStream::connect(t.http.authority())
        .map_err(|err| fail(format!("connect: {err}")))?;
    sock.set_read_timeout(Some(wait))
        .map_err(|err| fail(err.to_string()))?;
    let started = std::time::Instant::now();
    sock.write_all(request)
        .map_err(|err| fail(format!("write: {err}")))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the answer is complete (headers plus Content-Length bytes), the relay closes,
    // or the wait is over.
    loop {
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(err) => {
                if raw.is_empty() {
                    return Err(fail(format!(
                        "{what}: no answer within {} ms: {err}",
                        started.elapsed().as_millis()
                    )));
                }
                break;
            }
        }
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|n| raw.len() >= end + 4 + n) {
                break;
            }
        }
    }
    let elapsed = started.elapsed().as_millis() as i64;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| fail(format!("{what}: the answer has no complete header")))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| fail(format!("{what}: no status line in {head:?}")))?;
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = raw[end + 4..].to_vec();
    let resp = crate::http::Resp {
        what: what.into(),
        status,
        headers,
        json: crate::http::strict_parse(&body),
        raw: body,
    };
    Ok((resp, elapsed))
}

/// Runs last: it uses up the suite's per-IP budget of the unauthenticated endpoints.
/// HTTP-14: headers and the start of a body, then silence. The relay must answer 408
/// `request_timeout` once `limits.body_read_timeout_ms` has passed (plain HTTP targets only:
/// the case writes the request on a raw socket).
fn body_timeout(e: &Env<'_>) -> R {
    let t = e.t;
    let d = t.descriptor.clone().map_err(Stop::Fail)?;
    let limit = req_int(&d, &["limits", "body_read_timeout_ms"])?;
    if t.http.is_tls() {
        skip!("the case writes a slow body on a raw socket, which needs a plain-HTTP relay");
    }
    if limit > 30_000 {
        skip!("limits.body_read_timeout_ms is {limit}; the case waits at most 30 s");
    }
    let wait = std::time::Duration::from_millis(u64::try_from(limit).unwrap_or(0) + 5_000);
    let head = format!(
        "POST /v1/envelopes HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{{\"v\":",
        t.http.authority()
    );
    let (resp, elapsed) = raw_exchange(t, "POST /v1/envelopes (slow body)", head.as_bytes(), wait)
        .map_err(|err| match err {
            Stop::Fail(m) => Stop::Fail(format!(
                "{m} (limits.body_read_timeout_ms {limit}, HTTP-14)"
            )),
            other => other,
        })?;
    resp.expect_error(ErrorCode::RequestTimeout)?;
    ensure!(
        elapsed + 500 >= limit,
        "request_timeout after {elapsed} ms, before limits.body_read_timeout_ms {limit} (HTTP-14)"
    );
    Ok(())
}

/// HTTP-2: a body declared (Content-Length) larger than the limit is refused `too_large` without
/// waiting for it: the relay must answer before its body read time would end the request.
fn declared_too_large(e: &Env<'_>) -> R {
    let t = e.t;
    let d = t.descriptor.clone().map_err(Stop::Fail)?;
    let limit = req_int(&d, &["limits", "body_read_timeout_ms"])?;
    if t.http.is_tls() {
        skip!("the case writes a request on a raw socket, which needs a plain-HTTP relay");
    }
    let declared = (t.published.envelope_bytes_max as u64).saturating_mul(1000);
    let head = format!(
        "POST /v1/envelopes HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n{{}}",
        t.http.authority()
    );
    // Well before the body read time: an answer only at its end is the 408 of HTTP-14.
    let wait = std::time::Duration::from_millis(u64::try_from(limit / 2).unwrap_or(0).max(500));
    let (resp, _) = raw_exchange(
        t,
        "POST /v1/envelopes (declared too large)",
        head.as_bytes(),
        wait,
    )
    .map_err(|err| match err {
        Stop::Fail(m) => Stop::Fail(format!(
            "{m}; a body declared as {declared} bytes must be refused too_large at once (HTTP-2)"
        )),
        other => other,
    })?;
    resp.expect_error(ErrorCode::TooLarge)?;
    Ok(())
}

fn ip_rate_limit(e: &Env<'_>) -> R {
    let t = e.t;
    let per_min = t.published.ip_requests_per_min.unwrap_or(60);
    if per_min > 1000 {
        skip!("limits.ip_requests_per_min is {per_min}; the case sends at most 2000 requests");
    }
    let budget = (per_min * 2 + 20).min(2000);
    for n in 0..budget {
        let r = t.http.post("/v1/challenges", b"{}")?;
        if r.status == 201 {
            continue;
        }
        r.expect_error(ErrorCode::RateLimited)
            .map_err(|err| match err {
                Stop::Fail(m) => Stop::Fail(format!("challenge request {}: {m}", n + 1)),
                other => other,
            })?;
        // Registration shares the per-IP limit and checks it first (REG-1 step 1). The refused
        // challenge may have met the relay's cap on open challenges per address (API-3) before
        // the address's request budget was spent, so registration requests go on until the
        // budget is (each is answered before its body is looked at once it is).
        for m in 0..budget {
            let r = t.http.post("/v1/register", b"{}")?;
            if r.code() == Some(ErrorCode::RateLimited.as_str()) {
                return r.expect_error(ErrorCode::RateLimited).map(|_| ());
            }
            ensure!(
                r.status == 400,
                "registration request {}: expected rate_limited or the missing_field of an empty body, got {} (HTTP-10, REG-1)",
                m + 1,
                r.brief()
            );
        }
        fail!("{budget} registration requests from one address were all answered after its challenges were rate limited; the relay publishes ip_requests_per_min {per_min} (HTTP-10, REG-1)")
    }
    fail!("{budget} challenge requests from one address within a minute were all answered; the relay publishes ip_requests_per_min {per_min} (HTTP-10)")
}

/// Flips the lowest bit of the first hex digit.
pub fn flip_hex(h: &str) -> String {
    let mut c: Vec<char> = h.chars().collect();
    if let Some(first) = c.first_mut() {
        let d = first.to_digit(16).unwrap_or(0) ^ 1;
        *first = std::char::from_digit(d, 16).unwrap_or('0');
    }
    c.into_iter().collect()
}

fn retention(e: &Env<'_>) -> R {
    let d = descriptor(e)?;
    let delivered = req_int(&d, &["retention", "delivered_ms"])?;
    let max = req_int(&d, &["retention", "max_ms"])?;
    let dedup = req_int(&d, &["retention", "dedup_ms"])?;
    ensure!(
        delivered > 0 && max >= delivered,
        "retention.max_ms {max} is less than retention.delivered_ms {delivered}, or that is not positive (RET-1)"
    );
    let ret = req_int(&d, &["time", "retention_ms"])?;
    let skew = req_int(&d, &["time", "skew_ms"])?;
    ensure!(
        dedup >= ret + skew,
        "retention.dedup_ms {dedup} does not cover the freshness window time.retention_ms + time.skew_ms = {} (RET-3)",
        ret + skew
    );
    if let Some(dl) = at(&d, &["federation", "dead_letter_ms"]).and_then(Value::as_i64) {
        ensure!(
            dedup >= dl + skew,
            "retention.dedup_ms {dedup} is less than federation.dead_letter_ms + time.skew_ms = {} (RET-3)",
            dl + skew
        );
    }
    Ok(())
}
