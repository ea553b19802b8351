//! Federated search (PROF-11) and the directory endpoint for peers (FED-18). On any relay: a
//! federated search answers this relay's page first, `relays` naming this relay first (and only
//! this relay when federation is disabled), `next` null and `partial` as its peers' statuses say;
//! it takes no cursor, no other value of `federated`, and no caller without authentication; the
//! peers' endpoint refuses a stranger (`peer_unknown`, or `unauthorized` for a request that is not
//! a relay request at all, when federation is enabled). With `--peer`: the peer's listed profiles
//! come back in the peer's block, with the peer named `ok` in `relays`.

use super::directory::q;
use super::profile_kit::{at_step, check_entry, profile, publish_obj, word, Prof};
use super::*;
use crate::case::{case, Env};
use crate::target::{random_key, random_nonce};
use formica_protocol::auth::{RelayAuth, RequestTarget};
use formica_protocol::RelayHost;
use std::sync::Arc;

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("dir.federated", &["PROF-11", "PROF-9"], "federated=1 answers this relay's matches first, next null, relays naming this relay first (status ok, its count; only this relay when federation is disabled) and partial true exactly when a relay is not ok; limit bounds each relay's block; federated=0 is an ordinary search", federated),
        case("dir.federated-params", &["PROF-11", "PROF-7", "HTTP-8"], "a federated search with a cursor is invalid_field (field cursor), another value of federated is invalid_field (field federated), and without Authorization it is unauthorized whatever directory.public says", federated_params)
            .codes(&[E::InvalidField, E::Unauthorized]),
        case("fed.directory-stranger", &["FED-18", "RELAY-REQ-1", "RELAY-REQ-3"], "GET /v1/federation/directory from a relay that is not a peer is peer_unknown; without a relay header (none, or an agent's) it is unauthorized, misdirected and stale headers are refused first; with federation disabled everything is peer_unknown", directory_stranger)
            .codes(&[E::PeerUnknown, E::Unauthorized, E::WrongRelay, E::Stale]),
        case("fed.directory-search", &["PROF-11", "FED-18"], "a federated search finds the peer's listed profile (not its unlisted one) in the peer's block, with the peer ok in relays and partial false", federated_peer).peer(),
    ]
}

/// Two listed agents with a capability of their own, in ascending order of their handles.
#[derive(Debug)]
struct Fix {
    cap: String,
    listed: Vec<(Agent, Prof)>,
}

fn fix(e: &Env<'_>) -> R<Arc<Fix>> {
    e.fixture("federated", |t| {
        let cap = word(t, "fedcap");
        let mut listed = Vec::new();
        for _ in 0..2 {
            let a = t.register("fedl")?;
            listed.push(publish_listed(t, a, &cap)?);
        }
        listed.sort_by(|x, y| {
            x.0.handle
                .as_str()
                .as_bytes()
                .cmp(y.0.handle.as_str().as_bytes())
        });
        Ok(Fix { cap, listed })
    })
}

/// Publishes a listed profile of `a` (on `t`) with capability `cap`.
fn publish_listed(t: &Target, a: Agent, cap: &str) -> R<(Agent, Prof)> {
    let o = with(
        with(profile(t, &a, 1), "listed", Value::Bool(true)),
        "capabilities",
        Value::Array(vec![obj(vec![("id", s(cap))])]),
    );
    let p = publish_obj(t, &a, &o)?;
    Ok((a, p))
}

/// Fails unless `r` is PROF-11's answer: 200, `next` null, `relays` naming this relay first
/// with status `ok`, then peers in ascending order of host, each with a status of PROF-11 and
/// `code` exactly with `refused`, counts that add up to `results`, and `partial` true exactly
/// when a relay is not `ok`. Returns the results and the relays.
fn check_federated(t: &Target, r: &Resp) -> R<(Vec<Value>, Vec<Value>)> {
    let w = &r.what;
    r.expect_json(200)?;
    let results = r
        .member("results")?
        .as_array()
        .ok_or_else(|| Stop::Fail(format!("{w}: `results` is not an array (PROF-11)")))?
        .to_vec();
    ensure!(
        r.member("next")? == &Value::Null,
        "{w}: next is {}, not null: a federated search has no next page (PROF-11)",
        r.brief()
    );
    let relays = r
        .member("relays")?
        .as_array()
        .ok_or_else(|| Stop::Fail(format!("{w}: `relays` is not an array (PROF-11)")))?
        .to_vec();
    ensure!(!relays.is_empty(), "{w}: `relays` is empty (PROF-11)");
    let mut total = 0;
    let mut any_not_ok = false;
    let mut prev_peer: Option<String> = None;
    for (i, x) in relays.iter().enumerate() {
        let host = at(x, &["relay"]).and_then(Value::as_str).unwrap_or("");
        let status = at(x, &["status"]).and_then(Value::as_str).unwrap_or("");
        let n = at(x, &["results"]).and_then(Value::as_i64);
        let code = at(x, &["code"]);
        ensure!(
            ["ok", "timeout", "unavailable", "refused", "invalid"].contains(&status),
            "{w}: relays[{i}].status is {status:?} (PROF-11)"
        );
        ensure!(
            code.is_some() == (status == "refused")
                && code.is_none_or(|c| c.as_str().is_some()),
            "{w}: relays[{i}] is {status} with code {code:?}: a code comes exactly with refused (PROF-11)"
        );
        let Some(n) = n.filter(|n| *n >= 0) else {
            fail!("{w}: relays[{i}].results is not a count (PROF-11)");
        };
        total += n;
        any_not_ok |= status != "ok";
        if i == 0 {
            ensure!(
                host == t.host.as_str() && status == "ok",
                "{w}: relays[0] is {host:?} {status:?}, expected this relay, {}, ok (PROF-11: this relay first)",
                t.host
            );
            continue;
        }
        ensure!(
            host != t.host.as_str(),
            "{w}: relays[{i}] names this relay again (PROF-11)"
        );
        if let Some(p) = &prev_peer {
            ensure!(
                p.as_str() < host,
                "{w}: peer {host} follows {p}: peers are in ascending order of host (PROF-11)"
            );
        }
        prev_peer = Some(host.to_owned());
    }
    if !t.published.federation_enabled {
        ensure!(
            relays.len() == 1,
            "{w}: relays names {} relays, but the relay publishes federation.enabled = false: only itself (PROF-11)",
            relays.len()
        );
    }
    ensure!(
        total == results.len() as i64,
        "{w}: the relays' counts add up to {total}, but there are {} results (PROF-11)",
        results.len()
    );
    ensure!(
        r.member("partial")? == &Value::Bool(any_not_ok),
        "{w}: partial is {}, but {} (PROF-11)",
        crate::http::quote(&canon::canonicalize(r.member("partial")?)),
        if any_not_ok {
            "a relay is not ok"
        } else {
            "every relay is ok"
        }
    );
    Ok((results, relays))
}

/// The handle of a result.
fn handle_of(v: &Value) -> &str {
    at(v, &["profile", "handle"])
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The count of relays[0] (this relay's block).
fn own_count(relays: &[Value]) -> usize {
    relays
        .first()
        .and_then(|x| at(x, &["results"]))
        .and_then(Value::as_i64)
        .unwrap_or(0) as usize
}

fn federated(e: &Env<'_>) -> R {
    let f = fix(e)?;
    let t = e.t;
    let v = t.register("fedv")?;
    let cap = q(&f.cap);
    let r = t.authed(
        &v,
        "GET",
        &format!("/v1/directory?capability={cap}&federated=1"),
        b"",
    )?;
    let (results, relays) = check_federated(t, &r)?;
    let own: Vec<&str> = results[..own_count(&relays)]
        .iter()
        .map(handle_of)
        .collect();
    let want: Vec<&str> = f.listed.iter().map(|(a, _)| a.handle.as_str()).collect();
    ensure!(
        own == want,
        "{}: this relay's block is {own:?}, expected {want:?} (PROF-11, PROF-9)",
        r.what
    );
    for (x, (_, p)) in results.iter().zip(&f.listed) {
        check_entry(t, &r.what, x, p)?;
    }
    let r = t.authed(
        &v,
        "GET",
        &format!("/v1/directory?capability={cap}&limit=1&federated=1"),
        b"",
    )?;
    let (results, relays) = at_step("limit=1", check_federated(t, &r))?;
    ensure!(
        own_count(&relays) == 1 && handle_of(&results[0]) == want[0],
        "{}: with limit=1 this relay's block is not its first match {} alone (PROF-11): {}",
        r.what,
        want[0],
        r.brief()
    );
    let r = t.authed(
        &v,
        "GET",
        &format!("/v1/directory?capability={cap}&federated=0"),
        b"",
    )?;
    r.expect_json(200)?;
    let got: Vec<&str> = r
        .member("results")?
        .as_array()
        .unwrap_or(&[])
        .iter()
        .map(handle_of)
        .collect();
    ensure!(
        got == want && r.member("next")? == &Value::Null,
        "{}: federated=0 answered {}, expected this relay's page of {want:?} (PROF-11, PROF-9)",
        r.what,
        r.brief()
    );
    Ok(())
}

fn federated_params(e: &Env<'_>) -> R {
    let f = fix(e)?;
    let t = e.t;
    let v = t.register("fedp")?;
    let cap = q(&f.cap);
    for bad in ["2", "yes", ""] {
        let r = t.authed(
            &v,
            "GET",
            &format!("/v1/directory?capability={cap}&federated={bad}"),
            b"",
        )?;
        at_step(
            &format!("federated={bad}"),
            r.expect_error_field(ErrorCode::InvalidField, "federated")
                .map(|_| ()),
        )?;
    }
    // A cursor of this relay's own, from a page of one of the two matches.
    let r = t.authed(
        &v,
        "GET",
        &format!("/v1/directory?capability={cap}&limit=1"),
        b"",
    )?;
    r.expect_json(200)?;
    let Some(cursor) = r.member("next")?.as_str().map(str::to_owned) else {
        fail!(
            "{}: next is null although a second match follows (PROF-9): {}",
            r.what,
            r.brief()
        );
    };
    let r = t.authed(
        &v,
        "GET",
        &format!(
            "/v1/directory?capability={cap}&limit=1&federated=1&cursor={}",
            q(&cursor)
        ),
        b"",
    )?;
    at_step(
        "federated=1 with a cursor",
        r.expect_error_field(ErrorCode::InvalidField, "cursor")
            .map(|_| ()),
    )?;
    let path = format!("/v1/directory?capability={cap}&federated=1");
    at_step(
        "without Authorization",
        t.http
            .get(&path)?
            .expect_error(ErrorCode::Unauthorized)
            .map(|_| ()),
    )?;
    let h = t.auth_header(&v, "GET", "/v1/directory", b"");
    let r = t.http.send(
        "GET",
        &path,
        &[("authorization", h)],
        crate::http::Body::None,
    )?;
    at_step(
        "with a header signed for another request",
        r.expect_error(ErrorCode::Unauthorized).map(|_| ()),
    )?;
    Ok(())
}

fn directory_stranger(e: &Env<'_>) -> R {
    let t = e.t;
    let path = "/v1/federation/directory?limit=1";
    let me = RelayHost::parse("127.0.0.1:1").map_err(|err| Stop::Fail(err.to_string()))?;
    let key = random_key();
    let target = RequestTarget {
        method: "GET",
        path,
        body: b"",
    };
    let send = |h: Option<String>| {
        let headers: Vec<(&str, String)> =
            h.map(|h| vec![("authorization", h)]).unwrap_or_default();
        t.send_ip_limited("GET", path, &headers, b"")
    };
    let a = t.register("fdirs")?;
    let agent = t.auth_header(&a, "GET", path, b"");
    let good = RelayAuth::sign(&key, &me, &t.host, t.now(), random_nonce(), &target);
    if t.published.federation_enabled {
        at_step(
            "without Authorization",
            send(None)?
                .expect_error(ErrorCode::Unauthorized)
                .map(|_| ()),
        )?;
        at_step(
            "with an agent's Formica header",
            send(Some(agent))?
                .expect_error(ErrorCode::Unauthorized)
                .map(|_| ()),
        )?;
        let other =
            RelayHost::parse("elsewhere.example").map_err(|err| Stop::Fail(err.to_string()))?;
        at_step(
            "signed for another relay",
            send(Some(RelayAuth::sign(
                &key,
                &me,
                &other,
                t.now(),
                random_nonce(),
                &target,
            )))?
            .expect_error(ErrorCode::WrongRelay)
            .map(|_| ()),
        )?;
        let old = t.now() - t.published.window_ms - 60_000;
        at_step(
            "stale",
            send(Some(RelayAuth::sign(
                &key,
                &me,
                &t.host,
                old,
                random_nonce(),
                &target,
            )))?
            .expect_error(ErrorCode::Stale)
            .map(|_| ()),
        )?;
    } else {
        for (what, h) in [
            ("without Authorization", None),
            ("with an agent's Formica header", Some(agent)),
        ] {
            at_step(
                &format!("{what}, federation disabled"),
                send(h)?.expect_error(ErrorCode::PeerUnknown).map(|_| ()),
            )?;
        }
    }
    at_step(
        "a relay that is not a peer",
        send(Some(good))?
            .expect_error(ErrorCode::PeerUnknown)
            .map(|_| ()),
    )?;
    Ok(())
}

fn federated_peer(e: &Env<'_>) -> R {
    let t = e.t;
    let Some(p) = e.peer else {
        skip!("federation: needs --peer");
    };
    if !t.published.federation_enabled || !p.published.federation_enabled {
        skip!("federation: the relay or its peer publishes federation.enabled = false");
    }
    let cap = word(t, "fedpeer");
    let (a, pa) = publish_listed(t, t.register("fedhome")?, &cap)?;
    let (b, pb) = publish_listed(p, p.register("fedaway")?, &cap)?;
    let u = p.register("fedhidden")?;
    publish_obj(
        p,
        &u,
        &with(
            profile(p, &u, 1),
            "capabilities",
            Value::Array(vec![obj(vec![("id", s(&cap))])]),
        ),
    )?;
    let v = t.register("fedpv")?;
    let r = t.authed(
        &v,
        "GET",
        &format!("/v1/directory?capability={}&federated=1", q(&cap)),
        b"",
    )?;
    let (results, relays) = check_federated(t, &r)?;
    ensure!(
        own_count(&relays) == 1 && handle_of(&results[0]) == a.handle.as_str(),
        "{}: this relay's block is not {} alone (PROF-11): {}",
        r.what,
        a.handle,
        r.brief()
    );
    check_entry(t, &r.what, &results[0], &pa)?;
    let mut offset = 0;
    for x in &relays {
        let n = at(x, &["results"]).and_then(Value::as_i64).unwrap_or(0) as usize;
        if at(x, &["relay"]).and_then(Value::as_str) == Some(p.host.as_str()) {
            let status = at(x, &["status"]).and_then(Value::as_str).unwrap_or("");
            ensure!(
                status == "ok" && n == 1,
                "{}: the peer {} is {status} with {n} results, expected ok with its one listed match (PROF-11, FED-18): {}",
                r.what,
                p.host,
                r.brief()
            );
            ensure!(
                handle_of(&results[offset]) == b.handle.as_str(),
                "{}: the peer's block holds {}, expected {} (PROF-11)",
                r.what,
                handle_of(&results[offset]),
                b.handle
            );
            check_entry(p, &r.what, &results[offset], &pb)?;
            return Ok(());
        }
        offset += n;
    }
    fail!(
        "{}: relays does not name the peer {} (PROF-11): {}",
        r.what,
        p.host,
        r.brief()
    )
}
