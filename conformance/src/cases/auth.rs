//! Authenticated requests (AUTH-1..9): the header grammar, what the signature covers (method,
//! exact path and query, body digest, audience), freshness, registration and key validity,
//! nonce memory, the order of checks, and auth.json re-created with the suite's agents.

use super::*;
use crate::case::{case, Env};
use crate::http::Body;
use crate::target::{random_key, random_nonce};
use formica_protocol::auth::Nonce;
use formica_protocol::RelayHost;

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case(
            "auth.ok",
            &["AUTH-1", "AUTH-2", "AUTH-3", "AUTH-4", "AUTH-7"],
            "a correctly signed request is served; the five parameters may come in any order",
            ok,
        ),
        case(
            "auth.missing",
            &["AUTH-1", "AUTH-8"],
            "an authenticated endpoint without Authorization is unauthorized",
            |e| {
                e.t.http
                    .get("/v1/inbox")?
                    .expect_error(ErrorCode::Unauthorized)?;
                e.t.http
                    .get("/v1/contacts")?
                    .expect_error(ErrorCode::Unauthorized)?;
                Ok(())
            },
        )
        .codes(&[E::Unauthorized]),
        case(
            "auth.malformed",
            &["AUTH-1", "ENC-1", "ENC-2", "KEY-5"],
            "headers that break the grammar are unauthorized",
            malformed,
        )
        .codes(&[E::Unauthorized]),
        case(
            "auth.body-digest",
            &["AUTH-3", "AUTH-4"],
            "a body other than the one signed is unauthorized",
            body_digest,
        )
        .codes(&[E::Unauthorized]),
        case(
            "auth.audience",
            &["AUTH-2", "AUTH-4"],
            "a request signed for another audience is unauthorized",
            audience,
        )
        .codes(&[E::Unauthorized]),
        case(
            "auth.wrong-relay",
            &["AUTH-4", "AUTH-8"],
            "a handle homed on another relay is wrong_relay",
            wrong_relay,
        )
        .codes(&[E::WrongRelay]),
        case(
            "auth.stale",
            &["AUTH-5", "TIME-1", "TIME-5"],
            "a header ts older than the window is stale with server_time",
            |e| header_time(e, true),
        )
        .codes(&[E::Stale]),
        case(
            "auth.future",
            &["AUTH-5", "TIME-2", "TIME-5"],
            "a header ts ahead of the skew is future with server_time",
            |e| header_time(e, false),
        )
        .codes(&[E::Future]),
        case(
            "auth.unregistered",
            &["AUTH-7"],
            "a handle that is not registered is unauthorized",
            unregistered,
        )
        .codes(&[E::Unauthorized]),
        case(
            "auth.old-key",
            &["AUTH-7", "LOG-12"],
            "after a rotation the old key no longer authenticates, the new one does",
            old_key,
        )
        .codes(&[E::Unauthorized]),
        case(
            "auth.recovery-key",
            &["AUTH-7", "LOG-12"],
            "the recovery key does not authenticate requests",
            recovery_key,
        )
        .codes(&[E::Unauthorized]),
        case(
            "auth.nonce-reused",
            &["AUTH-6", "AUTH-9"],
            "the same header sent twice is nonce_reused the second time",
            nonce_reused,
        )
        .codes(&[E::NonceReused]),
        case(
            "auth.forgery-burns-no-nonce",
            &["AUTH-6"],
            "a request whose signature fails does not use up its nonce",
            forgery,
        )
        .codes(&[E::Unauthorized]),
        case(
            "auth.nonce-within-window",
            &["AUTH-6", "TIME-3"],
            "a nonce is still remembered after a wait while its ts is fresh",
            nonce_window,
        )
        .codes(&[E::NonceReused]),
        case(
            "auth.order",
            &["AUTH-8", "CONV-3"],
            "with several faults, the first check of AUTH-8's order decides the code",
            order,
        )
        .codes(&[E::WrongRelay, E::Stale, E::Unauthorized, E::TooLarge]),
    ]
}

fn agent(e: &Env<'_>) -> R<std::sync::Arc<Agent>> {
    e.fixture("auth-agent", |t| t.register("auth"))
}

/// Sends `GET path` with an Authorization header value made by `header`.
fn get_with(t: &Target, path: &str, header: String) -> R<Resp> {
    t.http
        .send("GET", path, &[("authorization", header)], Body::None)
}

/// The header params of a valid header, in order.
fn params(h: &str) -> Vec<(String, String)> {
    header_params(h, formica_protocol::auth::SCHEME)
}

fn join(ps: &[(String, String)]) -> String {
    header_join(formica_protocol::auth::SCHEME, ps)
}

fn ok(e: &Env<'_>) -> R {
    let t = e.t;
    let a = agent(e)?;
    let path = "/v1/inbox?after=0&limit=5";
    t.authed(&a, "GET", path, b"")?.expect_json(200)?;
    let mut ps = params(&t.auth_header(&a, "GET", path, b""));
    ps.reverse();
    get_with(t, path, join(&ps))?
        .expect_json(200)
        .map_err(|err| match err {
            Stop::Fail(m) => Stop::Fail(format!(
                "parameters in reverse order: {m} (AUTH-1: any order)"
            )),
            other => other,
        })?;
    let body = canon::canonicalize(&obj(vec![("level", s("read"))]));
    t.authed(
        &a,
        "PUT",
        &format!("/v1/contacts/@okpeer{}@elsewhere.example", t.run_id),
        &body,
    )?
    .expect_json(200)?;
    Ok(())
}

fn malformed(e: &Env<'_>) -> R {
    let t = e.t;
    let a = agent(e)?;
    let path = "/v1/inbox";
    let good = t.auth_header(&a, "GET", path, b"");
    let ps = params(&good);
    let set = |k: &str, v: &str| {
        join(
            &ps.iter()
                .map(|(kk, vv)| (kk.clone(), if kk == k { v.to_owned() } else { vv.clone() }))
                .collect::<Vec<_>>(),
        )
    };
    let get = |k: &str| {
        ps.iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut variants: Vec<(&str, String)> = vec![
        ("another scheme", good.replacen("Formica ", "Bearer ", 1)),
        (
            "scheme in lower case",
            good.replacen("Formica ", "formica ", 1),
        ),
        (
            "two spaces after the scheme",
            good.replacen("Formica ", "Formica  ", 1),
        ),
        (
            "a missing parameter",
            join(
                &ps.iter()
                    .filter(|(k, _)| k != "nonce")
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
        ),
        ("a repeated parameter", format!("{good},ts={}", get("ts"))),
        ("an unknown parameter", format!("{good},extra=1")),
        ("a space after a comma", good.replacen(",", ", ", 1)),
        (
            "a quoted value",
            set("nonce", &format!("\"{}\"", get("nonce"))),
        ),
        (
            "ts with a leading zero",
            set("ts", &format!("0{}", get("ts"))),
        ),
        ("ts above 2^53-1", set("ts", "9007199254740992")),
        (
            "upper-case hex in the signature",
            set("sig", &get("sig").to_ascii_uppercase()),
        ),
        (
            "upper-case hex in the key id",
            set("key", &get("key").to_ascii_uppercase()),
        ),
        (
            "a key id of 30 hex characters",
            set("key", &get("key")[..30]),
        ),
        (
            "a nonce of 30 hex characters",
            set("nonce", &get("nonce")[..30]),
        ),
        (
            "a signature of 126 hex characters",
            set("sig", &get("sig")[..126]),
        ),
        (
            "a handle in local form",
            set("handle", &format!("@{}", a.handle.name().as_str())),
        ),
        (
            "a handle with upper case",
            set("handle", &a.handle.as_str().to_ascii_uppercase()),
        ),
        (
            "a header longer than 1024 bytes",
            format!("{good},{}", "x".repeat(1100)),
        ),
        ("an empty header", String::new()),
    ];
    variants.push(("only the scheme", "Formica".into()));
    for (what, h) in variants {
        get_with(t, path, h)?
            .expect_error(ErrorCode::Unauthorized)
            .map_err(|err| match err {
                Stop::Fail(m) => Stop::Fail(format!("{what}: {m} (AUTH-1)")),
                other => other,
            })?;
    }
    Ok(())
}

fn body_digest(e: &Env<'_>) -> R {
    let t = e.t;
    let a = agent(e)?;
    let path = format!("/v1/contacts/@bd{}@elsewhere.example", t.run_id);
    let signed = canon::canonicalize(&obj(vec![("level", s("read"))]));
    let sent = canon::canonicalize(&obj(vec![("level", s("task"))]));
    let h = t.auth_header(&a, "PUT", &path, &signed);
    t.http
        .send(
            "PUT",
            &path,
            &[
                ("authorization", h),
                ("content-type", "application/json".into()),
            ],
            Body::Bytes(&sent),
        )?
        .expect_error(ErrorCode::Unauthorized)?;
    // The digest is over the bytes as sent: the same object with other whitespace is another body.
    let spaced = b"{ \"level\": \"read\" }".to_vec();
    let h = t.auth_header(&a, "PUT", &path, &signed);
    t.http
        .send(
            "PUT",
            &path,
            &[
                ("authorization", h),
                ("content-type", "application/json".into()),
            ],
            Body::Bytes(&spaced),
        )?
        .expect_error(ErrorCode::Unauthorized)?;
    let h = t.auth_header(&a, "PUT", &path, &spaced);
    t.http
        .send(
            "PUT",
            &path,
            &[
                ("authorization", h),
                ("content-type", "application/json".into()),
            ],
            Body::Bytes(&spaced),
        )?
        .expect_json(200)?;
    Ok(())
}

fn audience(e: &Env<'_>) -> R {
    let t = e.t;
    let a = agent(e)?;
    let other = RelayHost::parse("elsewhere.example").map_err(|err| Stop::Fail(err.to_string()))?;
    let h = t.auth_header_with(
        &a.key,
        &a.handle,
        "GET",
        "/v1/inbox",
        b"",
        t.now(),
        random_nonce(),
        &other,
    );
    get_with(t, "/v1/inbox", h)?.expect_error(ErrorCode::Unauthorized)?;
    Ok(())
}

fn wrong_relay(e: &Env<'_>) -> R {
    let t = e.t;
    let k = random_key();
    let h = Handle::parse("@alice@elsewhere.example").map_err(|err| Stop::Fail(err.to_string()))?;
    let header = t.auth_header_with(
        &k,
        &h,
        "GET",
        "/v1/inbox",
        b"",
        t.now(),
        random_nonce(),
        &t.host,
    );
    get_with(t, "/v1/inbox", header)?.expect_error(ErrorCode::WrongRelay)?;
    Ok(())
}

fn header_time(e: &Env<'_>, stale: bool) -> R {
    let t = e.t;
    let a = agent(e)?;
    let ts = if stale {
        t.now() - t.published.window_ms - 20_000
    } else {
        t.now() + t.published.skew_ms + 20_000
    };
    let h = t.auth_header_with(
        &a.key,
        &a.handle,
        "GET",
        "/v1/inbox",
        b"",
        ts,
        random_nonce(),
        &t.host,
    );
    let r = get_with(t, "/v1/inbox", h)?;
    r.expect_error(if stale {
        ErrorCode::Stale
    } else {
        ErrorCode::Future
    })?;
    let st = r
        .error_member("server_time")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    ensure!(
        (st - t.now()).abs() < 10_000,
        "server_time {st} is not the relay's clock (TIME-5)"
    );
    Ok(())
}

fn unregistered(e: &Env<'_>) -> R {
    let t = e.t;
    let k = random_key();
    let h = t.fresh_handle("noone");
    let header = t.auth_header_with(
        &k,
        &h,
        "GET",
        "/v1/inbox",
        b"",
        t.now(),
        random_nonce(),
        &t.host,
    );
    get_with(t, "/v1/inbox", header)?.expect_error(ErrorCode::Unauthorized)?;
    Ok(())
}

fn old_key(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("aold")?;
    let k2 = random_key();
    super::envelopes::rotate(t, &a, 1, &a.head, &k2, t.now().max(a.reg_ts + 1))?;
    sleep_ms(5);
    t.authed(&a, "GET", "/v1/inbox", b"")?
        .expect_error(ErrorCode::Unauthorized)?;
    let b = Agent {
        key: k2,
        ..a.clone()
    };
    t.authed(&b, "GET", "/v1/inbox", b"")?.expect_json(200)?;
    Ok(())
}

fn recovery_key(e: &Env<'_>) -> R {
    let t = e.t;
    let a = agent(e)?;
    let rk = a
        .recovery
        .clone()
        .ok_or_else(|| Stop::Fail("no recovery key".into()))?;
    let b = Agent {
        key: rk,
        ..(*a).clone()
    };
    t.authed(&b, "GET", "/v1/inbox", b"")?
        .expect_error(ErrorCode::Unauthorized)?;
    Ok(())
}

fn nonce_reused(e: &Env<'_>) -> R {
    let t = e.t;
    let a = agent(e)?;
    let h = t.auth_header(&a, "GET", "/v1/inbox", b"");
    get_with(t, "/v1/inbox", h.clone())?.expect_json(200)?;
    get_with(t, "/v1/inbox", h)?.expect_error(ErrorCode::NonceReused)?;
    Ok(())
}

fn forgery(e: &Env<'_>) -> R {
    let t = e.t;
    let a = agent(e)?;
    let n = random_nonce();
    let ts = t.now();
    let forged = t.auth_header_with(
        &random_key(),
        &a.handle,
        "GET",
        "/v1/inbox",
        b"",
        ts,
        n,
        &t.host,
    );
    // The forger names the agent's key id but signs with another key.
    let mut ps = params(&forged);
    for (k, v) in &mut ps {
        if k == "key" {
            *v = a.key.public().key_id().to_hex();
        }
    }
    get_with(t, "/v1/inbox", join(&ps))?.expect_error(ErrorCode::Unauthorized)?;
    let real = t.auth_header_with(&a.key, &a.handle, "GET", "/v1/inbox", b"", ts, n, &t.host);
    get_with(t, "/v1/inbox", real)?.expect_json(200).map_err(|err| match err {
        Stop::Fail(m) => Stop::Fail(format!("the agent's own request with the nonce a forged request used first: {m} (AUTH-6: a forged request cannot burn a nonce)")),
        other => other,
    })?;
    Ok(())
}

fn nonce_window(e: &Env<'_>) -> R {
    let t = e.t;
    // Registered early enough that its key is valid at the old header ts (AUTH-7, LOG-12).
    let a = t.register_at("anw", true, t.published.window_ms - 10_000)?;
    let ts = t.now() - t.published.window_ms + 12_000;
    let h = t.auth_header_with(
        &a.key,
        &a.handle,
        "GET",
        "/v1/inbox",
        b"",
        ts,
        random_nonce(),
        &t.host,
    );
    get_with(t, "/v1/inbox", h.clone())?.expect_json(200)?;
    sleep_ms(2000);
    get_with(t, "/v1/inbox", h)?.expect_error(ErrorCode::NonceReused)?;
    Ok(())
}

fn order(e: &Env<'_>) -> R {
    let t = e.t;
    let a = agent(e)?;
    let old = t.now() - t.published.window_ms - 60_000;
    // Audience (wrong_relay) before freshness.
    let h = Handle::parse("@alice@elsewhere.example").map_err(|err| Stop::Fail(err.to_string()))?;
    let header = t.auth_header_with(
        &random_key(),
        &h,
        "GET",
        "/v1/inbox",
        b"",
        old,
        random_nonce(),
        &t.host,
    );
    get_with(t, "/v1/inbox", header)?.expect_error(ErrorCode::WrongRelay)?;
    // Freshness before registration and signature.
    let header = t.auth_header_with(
        &random_key(),
        &t.fresh_handle("noone"),
        "GET",
        "/v1/inbox",
        b"",
        old,
        random_nonce(),
        &t.host,
    );
    get_with(t, "/v1/inbox", header)?.expect_error(ErrorCode::Stale)?;
    let header = t.auth_header_with(
        &random_key(),
        &a.handle,
        "GET",
        "/v1/inbox",
        b"",
        old,
        random_nonce(),
        &t.host,
    );
    get_with(t, "/v1/inbox", header)?.expect_error(ErrorCode::Stale)?;
    // Signature before the nonce: a forged replay of a used nonce is unauthorized.
    let n = Nonce([7; 16]);
    let ts = t.now();
    let real = t.auth_header_with(&a.key, &a.handle, "GET", "/v1/inbox", b"", ts, n, &t.host);
    get_with(t, "/v1/inbox", real)?.expect_json(200)?;
    let mut ps = params(&t.auth_header_with(
        &random_key(),
        &a.handle,
        "GET",
        "/v1/inbox",
        b"",
        ts,
        n,
        &t.host,
    ));
    for (k, v) in &mut ps {
        if k == "key" {
            *v = a.key.public().key_id().to_hex();
        }
    }
    get_with(t, "/v1/inbox", join(&ps))?.expect_error(ErrorCode::Unauthorized)?;
    // The body is read within the size limit before authentication.
    let big = vec![b'x'; t.published.body_bytes_max as usize + 1];
    let r = t.http.send(
        "PUT",
        &format!("/v1/contacts/@big{}@elsewhere.example", t.run_id),
        &[("content-type", "application/json".into())],
        Body::Bytes(&big),
    )?;
    r.expect_error(ErrorCode::TooLarge)?;
    Ok(())
}

// ------------------------------------------------------------------ auth.json

/// auth.json `valid`: the same kind of request, signed by the suite's agent, is served.
pub fn vector_valid(i: usize, c: &Value) -> Case {
    let cm = crate::vectors::field(c, "comment").unwrap_or("").to_owned();
    let method = crate::vectors::field(c, "method")
        .unwrap_or("GET")
        .to_owned();
    let path = crate::vectors::field(c, "path").unwrap_or("/").to_owned();
    case(
        format!("vec.auth.valid.{i}"),
        &["AUTH-1", "AUTH-2", "AUTH-3", "VEC-2"],
        format!("auth.json: {cm}: the same request by the suite's agent is served"),
        move |e| {
            let t = e.t;
            let a = t.register("avv")?;
            let (p, body): (String, Vec<u8>) = if path.starts_with("/v1/inbox") {
                ("/v1/inbox?after=0&limit=50".into(), vec![])
            } else if path.starts_with("/v1/contacts/") {
                (
                    format!("/v1/contacts/@bob{}@elsewhere.example", t.run_id),
                    canon::canonicalize(&obj(vec![("level", s("message"))])),
                )
            } else if path.starts_with("/v1/messages/") {
                let m = msg(t, &a, &[&a.handle]);
                t.send_ok(&m)?;
                (format!("/v1/messages/{}", m.id), vec![])
            } else {
                skip!("no re-creation for path {path}");
            };
            t.authed(&a, &method, &p, &body)?.expect_json(200)?;
            Ok(())
        },
    )
}

/// auth.json `invalid`, re-created with the suite's agent (the vector's own headers name
/// handles on other hosts, which the relay must refuse with wrong_relay first).
pub fn vector_invalid(i: usize, c: &Value) -> Case {
    let cm = crate::vectors::field(c, "comment").unwrap_or("").to_owned();
    let l = cm.to_ascii_lowercase();
    let code = crate::vectors::field(c, "error")
        .and_then(ErrorCode::from_wire)
        .unwrap_or(ErrorCode::Unauthorized);
    let reqs: &'static [&'static str] = if l.contains("homed on another relay") {
        &["AUTH-4", "VEC-2"]
    } else if l.contains("signed for") || l.contains("another key") {
        &["AUTH-2", "AUTH-4", "VEC-2"]
    } else if l.contains(" tag ") {
        &["SIG-1", "AUTH-4", "VEC-2"]
    } else {
        &["AUTH-1", "VEC-2"]
    };
    case(
        format!("vec.auth.invalid.{i}"),
        reqs,
        format!(
            "auth.json: {cm}: re-created with the suite's agent, refused with {}",
            code.as_str()
        ),
        move |e| {
            let t = e.t;
            let a = agent(e)?;
            let path = "/v1/inbox";
            let good = t.auth_header(&a, "GET", path, b"");
            let ps = params(&good);
            let get = |k: &str| {
                ps.iter()
                    .find(|(kk, _)| kk == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let set = |k: &str, v: &str| {
                join(
                    &ps.iter()
                        .map(|(kk, vv)| {
                            (kk.clone(), if kk == k { v.to_owned() } else { vv.clone() })
                        })
                        .collect::<Vec<_>>(),
                )
            };
            let r = if l.contains("wrong scheme") {
                get_with(t, path, good.replacen("Formica ", "Bearer ", 1))?
            } else if l.contains("missing nonce") {
                get_with(
                    t,
                    path,
                    join(
                        &ps.iter()
                            .filter(|(k, _)| k != "nonce")
                            .cloned()
                            .collect::<Vec<_>>(),
                    ),
                )?
            } else if l.contains("repeated parameter") {
                get_with(t, path, format!("{good},ts={}", get("ts")))?
            } else if l.contains("unknown parameter") {
                get_with(t, path, format!("{good},extra=1"))?
            } else if l.contains("space after a comma") {
                get_with(t, path, good.replacen(",", ", ", 1))?
            } else if l.contains("leading zero") {
                get_with(t, path, set("ts", &format!("0{}", get("ts"))))?
            } else if l.contains("upper-case hex") {
                get_with(t, path, set("sig", &get("sig").to_ascii_uppercase()))?
            } else if l.contains("sent as post") {
                // POST /v1/inbox is not routed; DELETE and PUT share /v1/contacts/{handle}.
                let p = format!("/v1/contacts/@m{}@elsewhere.example", t.run_id);
                let body = canon::canonicalize(&obj(vec![("level", s("read"))]));
                let h = t.auth_header(&a, "DELETE", &p, &body);
                t.http.send(
                    "PUT",
                    &p,
                    &[
                        ("authorization", h),
                        ("content-type", "application/json".into()),
                    ],
                    Body::Bytes(&body),
                )?
            } else if l.contains("sent to /v1/inbox?after=1") {
                let h = t.auth_header(&a, "GET", "/v1/inbox", b"");
                get_with(t, "/v1/inbox?after=0", h)?
            } else if l.contains("another key than the one named") {
                let mut ps2 = params(&t.auth_header_with(
                    &random_key(),
                    &a.handle,
                    "GET",
                    path,
                    b"",
                    t.now(),
                    random_nonce(),
                    &t.host,
                ));
                for (k, v) in &mut ps2 {
                    if k == "key" {
                        *v = a.key.public().key_id().to_hex();
                    }
                }
                get_with(t, path, join(&ps2))?
            } else if l.contains("envelope tag instead of the request tag") {
                // The agent's own key signs the request's fields under another purpose's tag.
                let parsed = formica_protocol::auth::RequestAuth::parse(&good)
                    .map_err(|err| Stop::Fail(err.to_string()))?;
                let target = formica_protocol::auth::RequestTarget {
                    method: "GET",
                    path,
                    body: b"",
                };
                let input = parsed.signing_input(&target, &t.host);
                let body = input
                    .strip_prefix(Domain::Request.tag())
                    .ok_or_else(|| Stop::Fail("request signing input without its tag".into()))?;
                let sig = a.key.sign(Domain::Envelope, body);
                get_with(t, path, set("sig", &sig.to_hex()))?
            } else if l.contains("homed on another relay") {
                let h = Handle::parse("@alice@elsewhere.example")
                    .map_err(|err| Stop::Fail(err.to_string()))?;
                get_with(
                    t,
                    path,
                    t.auth_header_with(
                        &random_key(),
                        &h,
                        "GET",
                        path,
                        b"",
                        t.now(),
                        random_nonce(),
                        &t.host,
                    ),
                )?
            } else {
                skip!("no re-creation of this auth vector is known to this version of the suite");
            };
            r.expect_error(code)?;
            Ok(())
        },
    )
    .codes(&[code])
}
