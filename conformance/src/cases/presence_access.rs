//! Who sees what of an agent's presence (PRES-4, API-21, API-22): the agent itself and the agents
//! it granted a contact level see the full presence; other registered agents the coarse one while
//! the agent's profile is listed; anyone else PROF-8's `not_found`, byte for byte; nobody without
//! authentication; and the caller's list of its contacts' presence.

use super::presence_kit::*;
use super::profile_kit::{at_step, profile, publish_obj};
use super::*;
use crate::case::{case, Env};
use crate::target::random_nonce;

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("pres.visibility", &["PRES-4", "API-21", "PROF-8", "HTTP-9"], "the agent and its contacts see the full presence, other registered agents the coarse one while the profile is listed; otherwise the answer is PROF-8's not_found byte for byte (unregistered, other host, never connected, unlisted; a grant in the other direction changes nothing)", visibility)
            .codes(&[E::NotFound, E::InvalidHandle]),
        case("pres.list", &["API-22", "PRES-4"], "GET /v1/presence lists, in ascending order of handle names, the caller's contacts homed here whose presence it may see, full or coarse; the others and other relays' agents are left out", list),
        case("pres.unauthenticated", &["PRES-4", "API-19", "API-20", "API-21", "API-22", "AUTH-1"], "every presence endpoint without Authorization is unauthorized, whatever directory.public says, and so is a header that fails section 11", unauthenticated)
            .codes(&[E::Unauthorized]),
    ]
}

fn visibility(e: &Env<'_>) -> R {
    let t = e.t;
    let o = t.register("pviso")?;
    let c = t.register("pvisc")?;
    let v = t.register("pvisv")?;
    let x = t.register("pvisx")?;
    t.grant(&o, &c.handle, "read")?;
    heartbeat(t, &o)?;
    let p = set_obj(t, &o, &status(t, &o, "busy"))?;
    let refs = not_found_reference(t, &v)?;
    let nobody = t.fresh_handle("nobody");
    let other_host = format!("@{}@other-relay.example", o.handle.name().as_str());
    let hidden: [(&str, &str); 4] = [
        ("a handle nobody registered", nobody.as_str()),
        ("another host's handle", other_host.as_str()),
        (
            "a registered agent never connected, without a profile",
            x.handle.as_str(),
        ),
        (
            "a connected agent that did not grant the viewer",
            o.handle.as_str(),
        ),
    ];
    for (what, h) in hidden {
        at_step(what, hidden_from(t, &v, h, &refs))?;
    }
    at_step(
        "a contact",
        seen_by(t, &c, &o, Seen::Full("busy", Some(&p))).map(|_| ()),
    )?;
    at_step(
        "the agent itself",
        seen_by(t, &o, &o, Seen::Full("busy", Some(&p))).map(|_| ()),
    )?;
    let local = format!("@{}", o.handle.name().as_str());
    at_step(
        "a contact, with the handle in local form",
        expect_seen(
            &get_presence(t, Some(&c), &local)?,
            &o.handle,
            Seen::Full("busy", Some(&p)),
        )
        .map(|_| ()),
    )?;
    t.grant(&v, &o.handle, "read")?;
    at_step(
        "after the viewer granted the agent (not the other way)",
        hidden_from(t, &v, o.handle.as_str(), &refs),
    )?;
    publish_obj(t, &o, &with(profile(t, &o, 1), "listed", Value::Bool(true)))?;
    at_step(
        "a registered agent, the profile listed",
        seen_by(t, &v, &o, Seen::Coarse("busy")).map(|_| ()),
    )?;
    at_step(
        "a contact, the profile listed",
        seen_by(t, &c, &o, Seen::Full("busy", Some(&p))).map(|_| ()),
    )?;
    publish_obj(t, &o, &profile(t, &o, 2))?;
    at_step(
        "a registered agent, the profile listed no more",
        hidden_from(t, &v, o.handle.as_str(), &refs),
    )?;
    get_presence(t, Some(&v), "@Bad%21")?.expect_error_field(ErrorCode::InvalidHandle, "handle")?;
    Ok(())
}

/// The `presence` array of `GET /v1/presence` as `a`.
fn presence_list(t: &Target, a: &Agent) -> R<(Resp, Vec<Value>)> {
    let r = t.authed(a, "GET", "/v1/presence", b"")?;
    r.expect_json(200)?;
    let list = r
        .member("presence")?
        .as_array()
        .ok_or_else(|| Stop::Fail(format!("{}: `presence` is not an array (API-22)", r.what)))?
        .to_vec();
    Ok((r, list))
}

fn list(e: &Env<'_>) -> R {
    let t = e.t;
    let b = t.register("plstb")?;
    let (r, empty) = presence_list(t, &b)?;
    ensure!(
        empty.is_empty(),
        "{}: an agent without contacts is answered {} (API-22)",
        r.what,
        r.brief()
    );
    let mutual = t.register("plstm")?;
    let listed = t.register("plstl")?;
    let hidden = t.register("plsth")?;
    let remote = Handle::parse(&format!(
        "@{}@other-relay.example",
        mutual.handle.name().as_str()
    ))
    .map_err(|err| Stop::Fail(err.to_string()))?;
    for h in [&mutual.handle, &listed.handle, &hidden.handle, &remote] {
        t.grant(&b, h, "message")?;
    }
    t.grant(&mutual, &b.handle, "read")?;
    heartbeat(t, &mutual)?;
    let p = set_obj(t, &mutual, &status(t, &mutual, "away"))?;
    publish_obj(
        t,
        &listed,
        &with(profile(t, &listed, 1), "listed", Value::Bool(true)),
    )?;
    publish_obj(t, &hidden, &profile(t, &hidden, 1))?;
    let mut want: Vec<(&Agent, Seen<'_>)> = vec![
        (&mutual, Seen::Full("away", Some(&p))),
        (&listed, Seen::Coarse("offline")),
    ];
    want.sort_by(|x, y| {
        x.0.handle
            .name()
            .as_str()
            .as_bytes()
            .cmp(y.0.handle.name().as_str().as_bytes())
    });
    let (r, got) = presence_list(t, &b)?;
    let names: Vec<&str> = got
        .iter()
        .map(|v| at(v, &["handle"]).and_then(Value::as_str).unwrap_or("?"))
        .collect();
    let expected: Vec<&str> = want.iter().map(|(a, _)| a.handle.as_str()).collect();
    ensure!(
        names == expected,
        "{}: presence of {names:?}, expected {expected:?}: the contacts whose presence the caller may see, in ascending order of handle names (API-22)",
        r.what
    );
    expect_raw_contains(&r, &p.wire, "the signed status")?;
    for (v, (a, seen)) in got.iter().zip(&want) {
        check_presence(&r.what, v, &a.handle, *seen)?;
    }
    Ok(())
}

fn unauthenticated(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("pauth")?;
    let q = t.register("pauthq")?;
    publish_obj(t, &a, &with(profile(t, &a, 1), "listed", Value::Bool(true)))?;
    heartbeat(t, &a)?;
    let body = sign_status(&status(t, &a, "busy"), &a.key).wire;
    let one = format!("/v1/presence/{}", a.handle);
    let requests: [(&str, &str, &[u8]); 4] = [
        ("PUT", "/v1/presence", &body),
        ("POST", "/v1/presence/heartbeat", b""),
        ("GET", &one, b""),
        ("GET", "/v1/presence", b""),
    ];
    for (method, path, b) in requests {
        let content = if b.is_empty() {
            vec![]
        } else {
            vec![("content-type", "application/json".to_owned())]
        };
        let send = |headers: &[(&str, String)]| {
            let body = if b.is_empty() && method == "GET" {
                crate::http::Body::None
            } else {
                crate::http::Body::Bytes(b)
            };
            t.http.send(method, path, headers, body)
        };
        at_step(
            &format!("{method} {path} without Authorization"),
            send(&content)?
                .expect_error(ErrorCode::Unauthorized)
                .map(|_| ()),
        )?;
        // A header that is present but fails section 11: the signature of another request.
        let h = t.auth_header_with(
            &q.key,
            &q.handle,
            "GET",
            "/v1/inbox",
            b"",
            t.now(),
            random_nonce(),
            &t.host,
        );
        let mut headers = content.clone();
        headers.push(("authorization", h));
        at_step(
            &format!("{method} {path} with another request's signature"),
            send(&headers)?
                .expect_error(ErrorCode::Unauthorized)
                .map(|_| ()),
        )?;
    }
    Ok(())
}
