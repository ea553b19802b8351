//! Who sees a profile (PROF-6 to PROF-8, PROF-10, API-18): the agent itself, agents it granted a
//! contact level, every registered agent when the profile is listed, unauthenticated callers only
//! when the relay publishes `directory.public`; everyone else gets the 404 of a handle without a
//! profile, byte for byte; an expired profile is not shown; and the A2A agent card (PROF-10)
//! carries the signed profile, which verifies.

use super::profile_kit::{
    check_entry, dir, expect_hidden, expect_shown, get_as, get_profile, profile, publish_obj,
    sign_profile, word, Prof,
};
use super::*;
use crate::case::{case, Env};
use crate::target::random_nonce;

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("prof.hidden", &["PROF-7", "PROF-8", "API-18", "PROF-10"], "an unlisted profile is 404 not_found to a registered non-contact, with the body of an unregistered handle, of a handle without a profile and of another host's handle, byte for byte (a grant in the other direction changes nothing)", hidden).codes(&[E::NotFound]),
        case("prof.contact", &["PROF-7", "API-14", "PROF-8"], "an unlisted profile is shown to an agent its owner granted read, and hidden again when the grant is removed", contact).codes(&[E::NotFound]),
        case("prof.listed", &["PROF-7", "PROF-8"], "a listed profile is shown to every registered agent; listed no more, it is hidden again", listed).codes(&[E::NotFound]),
        case("prof.unauthenticated", &["PROF-7", "AUTH-1"], "without Authorization the profile endpoints and the directory are unauthorized unless directory.public is true (then listed profiles only); a header that fails section 11 is unauthorized either way", unauthenticated).codes(&[E::Unauthorized, E::NotFound]),
        case("prof.expired", &["PROF-6", "PROF-8", "PROF-9", "PROF-5"], "a profile is not shown once its expires has passed, exactly as if the agent had none, yet still counts for seq; a newer one is shown again", expired).codes(&[E::NotFound, E::ProfileOutdated]),
        case("prof.agent-card", &["PROF-10"], "the agent card has the A2A members PROF-10 lists and carries the signed profile, which verifies with the agent's key", agent_card),
        case("prof.invalid-handle", &["API-18", "HTTP-9"], "an invalid handle in the path of the profile endpoints is invalid_handle", |e| {
            let t = e.t;
            let a = t.register("pinv")?;
            for path in ["/v1/profiles/@Bad%21", "/v1/profiles/@Bad%21/agent-card"] {
                get_as(t, Some(&a), path)?.expect_error_field(ErrorCode::InvalidHandle, "handle")?;
            }
            Ok(())
        })
        .codes(&[E::InvalidHandle]),
    ]
}

/// The card path of `handle`.
fn card_path(handle: &str) -> String {
    format!("/v1/profiles/{handle}/agent-card")
}

/// A handle on this relay that nobody registered.
fn unregistered(t: &Target) -> Handle {
    t.fresh_handle("nobody")
}

/// What a registered non-contact `s` is answered for a handle that is not registered, for the
/// profile and the card endpoints (PROF-8's reference answers).
fn references(t: &Target, s: &Agent) -> R<(Resp, Resp)> {
    let u = unregistered(t);
    let r = get_profile(t, Some(s), u.as_str())?;
    r.expect_error(ErrorCode::NotFound)?;
    let c = get_as(t, Some(s), &card_path(u.as_str()))?;
    c.expect_error(ErrorCode::NotFound)?;
    Ok((r, c))
}

/// Fails unless `viewer` sees neither the profile nor the card of `h`, answered as `refs`.
fn hidden_to(t: &Target, viewer: Option<&Agent>, h: &str, refs: &(Resp, Resp)) -> R {
    expect_hidden(&get_profile(t, viewer, h)?, &refs.0)?;
    expect_hidden(&get_as(t, viewer, &card_path(h))?, &refs.1)?;
    Ok(())
}

/// Fails unless `viewer` sees `p` (API-18) and its card (PROF-10).
fn shown_to(t: &Target, viewer: Option<&Agent>, owner: &Agent, p: &Prof) -> R {
    expect_shown(t, &get_profile(t, viewer, owner.handle.as_str())?, p)?;
    let c = get_as(t, viewer, &card_path(owner.handle.as_str()))?;
    c.expect_json(200)?;
    check_card(t, &c, owner, p)
}

fn hidden(e: &Env<'_>) -> R {
    let t = e.t;
    let o = t.register("phido")?;
    let s = t.register("phids")?;
    let x = t.register("phidx")?;
    publish_obj(t, &o, &profile(t, &o, 1))?;
    let refs = references(t, &s)?;
    let steps: [(&str, String); 3] = [
        (
            "a registered handle without a profile",
            x.handle.as_str().to_owned(),
        ),
        (
            "another host's handle",
            format!("@{}@other-relay.example", o.handle.name().as_str()),
        ),
        ("an unlisted profile", o.handle.as_str().to_owned()),
    ];
    for (what, h) in &steps {
        super::profile_kit::at_step(what, hidden_to(t, Some(&s), h, &refs))?;
    }
    t.grant(&s, &o.handle, "task")?;
    super::profile_kit::at_step(
        "after the viewer granted the owner (not the other way)",
        hidden_to(t, Some(&s), o.handle.as_str(), &refs),
    )?;
    Ok(())
}

fn contact(e: &Env<'_>) -> R {
    let t = e.t;
    let o = t.register("pcto")?;
    let s = t.register("pcts")?;
    let p = publish_obj(t, &o, &profile(t, &o, 1))?;
    let refs = references(t, &s)?;
    t.grant(&o, &s.handle, "read")?;
    super::profile_kit::at_step("after a read grant", shown_to(t, Some(&s), &o, &p))?;
    let r = t.authed(&o, "DELETE", &format!("/v1/contacts/{}", s.handle), b"")?;
    r.expect_json(200)?;
    super::profile_kit::at_step(
        "after the grant was removed",
        hidden_to(t, Some(&s), o.handle.as_str(), &refs),
    )?;
    Ok(())
}

fn listed(e: &Env<'_>) -> R {
    let t = e.t;
    let o = t.register("plsto")?;
    let s = t.register("plsts")?;
    let refs = references(t, &s)?;
    let p = publish_obj(t, &o, &with(profile(t, &o, 1), "listed", Value::Bool(true)))?;
    super::profile_kit::at_step("a listed profile", shown_to(t, Some(&s), &o, &p))?;
    publish_obj(t, &o, &profile(t, &o, 2))?;
    super::profile_kit::at_step(
        "listed no more",
        hidden_to(t, Some(&s), o.handle.as_str(), &refs),
    )?;
    Ok(())
}

fn unauthenticated(e: &Env<'_>) -> R {
    let t = e.t;
    let d = dir(t);
    let o = t.register("punao")?;
    let q = t.register("punaq")?;
    let cap = word(t, "unauth");
    let caps = Value::Array(vec![obj(vec![("id", s(&cap))])]);
    let mut listed = with(profile(t, &o, 1), "listed", Value::Bool(true));
    listed.insert("capabilities", caps);
    let p = publish_obj(t, &o, &listed)?;
    publish_obj(t, &q, &profile(t, &q, 1))?;
    let search = format!("/v1/directory?capability={cap}");
    if d.public {
        super::profile_kit::at_step(
            "directory.public: a listed profile without Authorization",
            shown_to(t, None, &o, &p),
        )?;
        let u = unregistered(t);
        let refs = (
            get_profile(t, None, u.as_str())?,
            get_as(t, None, &card_path(u.as_str()))?,
        );
        super::profile_kit::at_step(
            "directory.public: an unlisted profile without Authorization",
            hidden_to(t, None, q.handle.as_str(), &refs),
        )?;
        let r = t.http.get(&search)?;
        r.expect_json(200)?;
        let results = r.member("results")?.as_array().unwrap_or(&[]).to_vec();
        ensure!(
            results.len() == 1,
            "{}: {} results, expected the one listed profile (PROF-9)",
            r.what,
            results.len()
        );
        check_entry(t, &r.what, &results[0], &p)?;
    } else {
        for path in [
            format!("/v1/profiles/{}", o.handle),
            card_path(o.handle.as_str()),
            search.clone(),
        ] {
            t.http.get(&path)?.expect_error(ErrorCode::Unauthorized)?;
        }
    }
    // A header that is present but fails section 11: the signature of another request.
    for path in [
        format!("/v1/profiles/{}", o.handle),
        card_path(o.handle.as_str()),
        search,
    ] {
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
        let r = t.http.send(
            "GET",
            &path,
            &[("authorization", h)],
            crate::http::Body::None,
        )?;
        r.expect_error(ErrorCode::Unauthorized)?;
    }
    Ok(())
}

fn expired(e: &Env<'_>) -> R {
    let t = e.t;
    let o = t.register("pexp")?;
    let viewer = t.register("pexps")?;
    let cap = word(t, "expiring");
    let mut first = with(profile(t, &o, 5), "listed", Value::Bool(true));
    first.insert(
        "capabilities",
        Value::Array(vec![obj(vec![("id", s(&cap))])]),
    );
    let ts = first.get("ts").and_then(Value::as_i64).unwrap_or(0);
    first.insert("expires", int(ts + 3000));
    let p = publish_obj(t, &o, &first)?;
    super::profile_kit::at_step(
        "before it expires",
        expect_shown(t, &get_profile(t, Some(&viewer), o.handle.as_str())?, &p),
    )?;
    while t.now() < ts + 3500 {
        sleep_ms(100);
    }
    let refs = references(t, &viewer)?;
    super::profile_kit::at_step(
        "expired, to another agent",
        hidden_to(t, Some(&viewer), o.handle.as_str(), &refs),
    )?;
    let own = (
        get_profile(t, Some(&o), unregistered(t).as_str())?,
        get_as(t, Some(&o), &card_path(unregistered(t).as_str()))?,
    );
    super::profile_kit::at_step(
        "expired, to its own agent",
        hidden_to(t, Some(&o), o.handle.as_str(), &own),
    )?;
    let r = t.authed(
        &viewer,
        "GET",
        &format!("/v1/directory?capability={cap}"),
        b"",
    )?;
    r.expect_json(200)?;
    ensure!(
        r.member("results")?
            .as_array()
            .is_some_and(|a| a.is_empty()),
        "{}: the expired profile is still listed (PROF-6, PROF-9): {}",
        r.what,
        r.brief()
    );
    let lower = sign_profile(&profile(t, &o, 4), &o.key);
    super::profile_kit::at_step(
        "a lower seq after expiry",
        super::profile_kit::refuse_put(t, &o, &lower.wire, ErrorCode::ProfileOutdated, None),
    )?;
    let mut again = with(profile(t, &o, 6), "listed", Value::Bool(true));
    again.insert(
        "capabilities",
        Value::Array(vec![obj(vec![("id", s(&cap))])]),
    );
    let p2 = publish_obj(t, &o, &again)?;
    super::profile_kit::at_step(
        "a newer profile",
        expect_shown(t, &get_profile(t, Some(&viewer), o.handle.as_str())?, &p2),
    )?;
    Ok(())
}

/// PROF-10's card for `owner`'s profile `p` on this relay.
fn expected_card(t: &Target, owner: &Agent, p: &Prof) -> Value {
    let host = t.host.as_str();
    let h = owner.handle.as_str();
    let m = |k: &str| at(&p.value, &[k]).cloned();
    let name = m("name").unwrap_or(Value::Null);
    let url = format!("https://{host}/v1/profiles/{h}");
    let skills: Vec<Value> = m("capabilities")
        .and_then(|c| c.as_array().map(<[Value]>::to_vec))
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let id = at(c, &["id"]).and_then(Value::as_str).unwrap_or("");
            let desc = match at(c, &["version"]).and_then(Value::as_str) {
                Some(v) => format!("{id} {v}"),
                None => id.to_owned(),
            };
            obj(vec![
                ("id", s(id)),
                ("name", s(id)),
                ("description", s(&desc)),
                (
                    "tags",
                    at(c, &["tags"]).cloned().unwrap_or(Value::Array(vec![])),
                ),
            ])
        })
        .collect();
    obj(vec![
        ("name", name.clone()),
        ("description", m("description").unwrap_or(name)),
        ("version", s(&p.int("seq").to_string())),
        ("protocolVersion", s("0.3.0")),
        ("url", s(&url)),
        ("preferredTransport", s("formica/1")),
        (
            "supportedInterfaces",
            Value::Array(vec![obj(vec![
                ("url", s(&format!("https://{host}/"))),
                ("protocolBinding", s("formica/1")),
                ("protocolVersion", s("1")),
            ])]),
        ),
        (
            "provider",
            obj(vec![
                ("organization", s(host)),
                ("url", s(&format!("https://{host}/"))),
            ]),
        ),
        (
            "defaultInputModes",
            Value::Array(vec![s("application/json")]),
        ),
        (
            "defaultOutputModes",
            Value::Array(vec![s("application/json")]),
        ),
        (
            "capabilities",
            obj(vec![
                ("streaming", Value::Bool(true)),
                ("pushNotifications", Value::Bool(false)),
                (
                    "extensions",
                    Value::Array(vec![obj(vec![
                        ("uri", s(&url)),
                        ("description", s("Formica signed profile")),
                        ("required", Value::Bool(false)),
                        (
                            "params",
                            obj(vec![("handle", s(h)), ("profile", p.value.clone())]),
                        ),
                    ])]),
                ),
            ]),
        ),
        ("skills", Value::Array(skills)),
    ])
}

/// Fails unless `r` is the card of `p` (PROF-10): every member the card defines has its value
/// (relays may add members, HTTP-6), and the profile it carries verifies with the agent's key.
fn check_card(t: &Target, r: &Resp, owner: &Agent, p: &Prof) -> R {
    let got = r.body()?;
    let want = expected_card(t, owner, p);
    for (k, v) in want
        .as_object()
        .map(|o| o.iter().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let g = at(got, &[k]);
        ensure!(
            g == Some(v),
            "{}: card member `{k}` is {}, expected {} (PROF-10)",
            r.what,
            g.map_or("absent".into(), |g| crate::http::quote(
                &canon::canonicalize(g)
            )),
            crate::http::quote(&canon::canonicalize(v))
        );
    }
    let carried = at(got, &["capabilities", "extensions"])
        .and_then(Value::as_array)
        .and_then(|x| x.first())
        .and_then(|x| at(x, &["params", "profile"]))
        .and_then(Value::as_object)
        .ok_or_else(|| {
            Stop::Fail(format!(
                "{}: no capabilities.extensions[0].params.profile (PROF-10)",
                r.what
            ))
        })?;
    let sig = carried
        .get("sig")
        .and_then(Value::as_str)
        .and_then(|x| formica_protocol::Signature::parse_hex(x).ok())
        .ok_or_else(|| {
            Stop::Fail(format!(
                "{}: the carried profile has no valid sig (PROF-10)",
                r.what
            ))
        })?;
    let mut input = Domain::Profile.tag().to_vec();
    canon::write_object(carried, Some(&["sig"]), &mut input);
    ensure!(
        owner.key.public().verify_input(&input, &sig).is_ok(),
        "{}: the profile the card carries does not verify with the agent's key (PROF-10, PROF-2)",
        r.what
    );
    Ok(())
}

fn agent_card(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("pcard")?;
    let mut o = profile(t, &a, 3);
    o.insert(
        "capabilities",
        Value::Array(vec![
            obj(vec![
                ("id", s(&word(t, "card"))),
                ("version", s("2.1")),
                ("tags", Value::Array(vec![s("a2a"), s("test")])),
            ]),
            obj(vec![("id", s("plain"))]),
        ]),
    );
    o.insert("accepts", Value::Array(vec![s("task_request")]));
    o.insert("model", s("example-model"));
    let p = publish_obj(t, &a, &o)?;
    super::profile_kit::at_step("without a description", shown_to(t, Some(&a), &a, &p))?;
    let p2 = publish_obj(
        t,
        &a,
        &with(
            with(o, "seq", int(4)),
            "description",
            s("Cards for A2A tools."),
        ),
    )?;
    super::profile_kit::at_step("with a description", shown_to(t, Some(&a), &a, &p2))?;
    Ok(())
}
