//! Contacts and contact requests (CONTACT-1..8, TYPE-14, API-14, API-15): private by default,
//! levels per type, one-directional grants, the reply rule, sending to oneself, the contact API,
//! and the contact request flow with its limits.

use super::*;
use crate::case::{case, Env};
use crate::target::{env_str, payload_str};

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("contact.private-by-default", &["CONTACT-1", "CONTACT-4"], "a stranger's message is not_contact", private).codes(&[E::NotContact]),
        case("contact.levels", &["CONTACT-2", "CONTACT-4", "TYPE-14", "TYPE-12"], "read allows nothing, message allows message, task_result and x-, task allows task_request too", levels).codes(&[E::LevelInsufficient]),
        case("contact.one-directional", &["CONTACT-2"], "a grant lets only the grantee send to the owner", one_directional).codes(&[E::NotContact]),
        case("contact.no-grant-types", &["CONTACT-1", "TYPE-14", "ACK-1"], "ack, contact_request and report need no grant", no_grant_types),
        case("contact.self", &["CONTACT-7"], "an agent may send to itself without a grant", |e| {
            let t = e.t;
            let a = t.register("cself")?;
            let m = msg(t, &a, &[&a.handle]);
            t.send_ok(&m)?;
            expect_delivered_as_sent(&t.inbox(&a)?, &m, &a.handle)?;
            Ok(())
        }),
        case("contact.reply-rule", &["CONTACT-6", "TYPE-6"], "a task_result whose corr is a task_request the recipient sent to the sender needs no grant; others do", reply_rule).codes(&[E::NotContact]),
        case("contact.api", &["API-14", "CONTACT-3", "HTTP-2", "HTTP-9"], "grants are listed, set (keeping since), changed and removed through the contact API", api)
            .codes(&[E::NotFound, E::InvalidHandle, E::MissingField, E::UnknownField, E::InvalidField]),
        case("contact.remove-affects-later", &["CONTACT-3"], "removing a grant refuses later envelopes and keeps earlier ones", remove_later).codes(&[E::NotContact]),
        case("contact.request-flow", &["CONTACT-5", "CONTACT-8", "API-15", "TYPE-9", "ERR-3"], "a contact request is listed and delivered; a second one while pending is rate_limited; accepting grants at most the asked level", request_flow)
            .codes(&[E::RateLimited, E::InvalidField, E::LevelInsufficient]),
        case("contact.request-reject", &["CONTACT-8", "API-15"], "rejecting removes the request without telling the requester, who may ask again", request_reject),
        case("contact.request-answered-by-grant", &["CONTACT-3", "CONTACT-5"], "granting the requester directly answers its pending request", request_by_grant),
        case("contact.request-unknown", &["API-15"], "accepting or rejecting an id that is not a pending request is not_found", request_unknown).codes(&[E::NotFound]),
        case("contact.request-rate", &["CONTACT-5", "TRUST-7", "TRUST-8"], "contact requests beyond the tier's contact_requests_per_hour are rate_limited", request_rate).codes(&[E::RateLimited]),
        case("contact.request-pending-cap", &["CONTACT-5"], "a recipient with contact_requests_pending_max pending requests refuses more with inbox_full", pending_cap).codes(&[E::InboxFull]),
    ]
}

fn two(t: &Target, tag: &str) -> R<(Agent, Agent)> {
    Ok((
        t.register(&format!("{tag}a"))?,
        t.register(&format!("{tag}b"))?,
    ))
}

fn private(e: &Env<'_>) -> R {
    let t = e.t;
    let (a, b) = two(t, "cpd")?;
    refuse(t, &msg(t, &a, &[&b.handle]).wire, ErrorCode::NotContact)?;
    Ok(())
}

fn typed(t: &Target, a: &Agent, to: &Handle, ty: &str) -> Signed {
    let payload = match ty {
        "task_request" => obj(vec![("task", s("summarize")), ("input", s(&t.uniq("in")))]),
        "task_result" => obj(vec![("status", s("ok")), ("output", s(&t.uniq("out")))]),
        "message" => text(t),
        _ => obj(vec![("n", s(&t.uniq("x")))]),
    };
    let mut o = t.envelope(a, ty, &[to], payload);
    if ty == "task_result" {
        o.insert(
            "corr",
            s(&t.uniq("corr")
                .replace(' ', "-")
                .replace(['#', '(', ')'], "")),
        );
    }
    t.sign(&o, &a.key)
}

fn levels(e: &Env<'_>) -> R {
    let t = e.t;
    let (a, b) = two(t, "clv")?;
    let types = [
        "message",
        "task_result",
        "x-conformance.ping",
        "task_request",
    ];
    let needs = |ty: &str| if ty == "task_request" { 2 } else { 1 };
    for (lv, n) in [("read", 0), ("message", 1), ("task", 2)] {
        t.grant(&b, &a.handle, lv)?;
        for ty in types {
            let sg = typed(t, &a, &b.handle, ty);
            if needs(ty) <= n {
                t.send_ok(&sg).map_err(|err| match err {
                    Stop::Fail(m) => {
                        Stop::Fail(format!("{ty} with a {lv} grant: {m} (CONTACT-2, TYPE-14)"))
                    }
                    other => other,
                })?;
            } else {
                refuse(t, &sg.wire, ErrorCode::LevelInsufficient).map_err(|err| match err {
                    Stop::Fail(m) => Stop::Fail(format!("{ty} with a {lv} grant: {m} (CONTACT-4)")),
                    other => other,
                })?;
            }
        }
    }
    Ok(())
}

fn one_directional(e: &Env<'_>) -> R {
    let t = e.t;
    let (a, b) = two(t, "cod")?;
    t.grant(&b, &a.handle, "task")?;
    t.send_ok(&msg(t, &a, &[&b.handle]))?;
    refuse(t, &msg(t, &b, &[&a.handle]).wire, ErrorCode::NotContact)?;
    Ok(())
}

fn no_grant_types(e: &Env<'_>) -> R {
    let t = e.t;
    let (a, b) = two(t, "cng")?;
    let c = t.register("cngc")?;
    // a -> b contact request without any grant.
    let cr = t.envelope(
        &a,
        "contact_request",
        &[&b.handle],
        obj(vec![("level", s("message"))]),
    );
    t.send_ok(&t.sign(&cr, &a.key))?;
    // An ack needs a message to ack: c lets a send, a sends to c, c acks without a grant
    // from a.
    t.grant(&c, &a.handle, "message")?;
    let m = msg(t, &a, &[&c.handle]);
    t.send_ok(&m)?;
    t.send_ok(&ack(t, &c, &a.handle, &m.id, "received"))?;
    // A report on b, to b's relay.
    if t.published.tier0().may_send("report") {
        let rp = t.envelope(
            &a,
            "report",
            &[&Handle::relay(&t.host)],
            obj(vec![
                ("subject", s(b.handle.as_str())),
                ("reason", s("other")),
                ("note", s(&t.uniq("r"))),
            ]),
        );
        t.send_ok(&t.sign(&rp, &a.key))?;
    }
    Ok(())
}

fn reply_rule(e: &Env<'_>) -> R {
    let t = e.t;
    let (a, b) = two(t, "crr")?;
    let c = t.register("crrc")?;
    // b may send tasks to a; a has granted nothing to b.
    t.grant(&a, &b.handle, "task")?;
    let req = t.sign(
        &t.envelope(
            &b,
            "task_request",
            &[&a.handle],
            obj(vec![("task", s("echo")), ("input", s(&t.uniq("i")))]),
        ),
        &b.key,
    );
    t.send_ok(&req)?;
    let reply = |from: &Agent, corr: &str| {
        let o = with(
            t.envelope(
                from,
                "task_result",
                &[&b.handle],
                obj(vec![("status", s("ok")), ("output", s(&t.uniq("o")))]),
            ),
            "corr",
            s(corr),
        );
        t.sign(&o, &from.key)
    };
    t.send_ok(&reply(&a, &req.id)).map_err(|err| match err {
        Stop::Fail(m) => Stop::Fail(format!(
            "a task_result answering b's task_request: {m} (CONTACT-6)"
        )),
        other => other,
    })?;
    refuse(t, &reply(&a, &"ef".repeat(32)).wire, ErrorCode::NotContact)?;
    // c was not a recipient of the request: no reply rule for c.
    refuse(t, &reply(&c, &req.id).wire, ErrorCode::NotContact)?;
    Ok(())
}

fn contacts_list(t: &Target, a: &Agent) -> R<Vec<Value>> {
    let r = t.authed(a, "GET", "/v1/contacts", b"")?;
    r.expect_json(200)?;
    Ok(r.member("contacts")?.as_array().unwrap_or(&[]).to_vec())
}

fn api(e: &Env<'_>) -> R {
    let t = e.t;
    let (a, b) = two(t, "cap")?;
    let lv = |l: &str| canon::canonicalize(&obj(vec![("level", s(l))]));
    let p = format!("/v1/contacts/{}", b.handle);
    let r = t.authed(&a, "PUT", &p, &lv("message"))?;
    ensure!(
        r.expect_json(200)?
            == &obj(vec![
                ("handle", s(b.handle.as_str())),
                ("level", s("message"))
            ]),
        "{}: {} (API-14)",
        r.what,
        r.brief()
    );
    let l1 = contacts_list(t, &a)?;
    let entry = l1
        .iter()
        .find(|c| at(c, &["handle"]) == Some(&s(b.handle.as_str())))
        .cloned()
        .ok_or_else(|| Stop::Fail("GET /v1/contacts does not list the grant (API-14)".into()))?;
    ensure!(
        at(&entry, &["level"]) == Some(&s("message")),
        "listed level {:?} (API-14)",
        at(&entry, &["level"])
    );
    let since = at(&entry, &["since"])
        .and_then(Value::as_i64)
        .ok_or_else(|| Stop::Fail("a contact without integer since (API-14)".into()))?;
    sleep_ms(20);
    t.authed(&a, "PUT", &p, &lv("task"))?.expect_json(200)?;
    let l2 = contacts_list(t, &a)?;
    let e2 = l2
        .iter()
        .find(|c| at(c, &["handle"]) == Some(&s(b.handle.as_str())))
        .cloned()
        .unwrap_or(Value::Null);
    ensure!(
        at(&e2, &["level"]) == Some(&s("task")),
        "after a change the level is {:?} (CONTACT-3)",
        at(&e2, &["level"])
    );
    ensure!(
        at(&e2, &["since"]).and_then(Value::as_i64) == Some(since),
        "changing the level changed since from {since} to {:?} (CONTACT-3)",
        at(&e2, &["since"])
    );
    // Local form in the path means this relay's handle (HTTP-9).
    let local = format!("/v1/contacts/@{}", b.handle.name().as_str());
    let r = t.authed(&a, "PUT", &local, &lv("task"))?;
    ensure!(
        r.expect_json(200)?
            .as_object()
            .and_then(|o| o.get("handle"))
            == Some(&s(b.handle.as_str())),
        "{}: the local form did not mean {} (HTTP-9)",
        r.what,
        b.handle
    );
    let d = t.authed(&a, "DELETE", &p, b"")?;
    ensure!(
        d.expect_json(200)?
            == &obj(vec![
                ("handle", s(b.handle.as_str())),
                ("removed", Value::Bool(true))
            ]),
        "{}: {} (API-14)",
        d.what,
        d.brief()
    );
    t.authed(&a, "DELETE", &p, b"")?
        .expect_error(ErrorCode::NotFound)?;
    ensure!(
        !contacts_list(t, &a)?
            .iter()
            .any(|c| at(c, &["handle"]) == Some(&s(b.handle.as_str()))),
        "a removed grant is still listed (API-14)"
    );
    // An unregistered handle may be granted.
    t.authed(
        &a,
        "PUT",
        &format!("/v1/contacts/@later{}@elsewhere.example", t.run_id),
        &lv("read"),
    )?
    .expect_json(200)?;
    t.authed(
        &a,
        "PUT",
        "/v1/contacts/@Bad@elsewhere.example",
        &lv("read"),
    )?
    .expect_error(ErrorCode::InvalidHandle)?;
    t.authed(&a, "PUT", &p, b"{}")?
        .expect_error_field(ErrorCode::MissingField, "level")?;
    t.authed(&a, "PUT", &p, b"{\"level\":\"read\",\"x\":1}")?
        .expect_error(ErrorCode::UnknownField)?;
    t.authed(&a, "PUT", &p, b"{\"level\":\"admin\"}")?
        .expect_error_field(ErrorCode::InvalidField, "level")?;
    t.authed(&a, "PUT", &p, b"{\"level\":3}")?
        .expect_error_field(ErrorCode::InvalidField, "level")?;
    Ok(())
}

fn remove_later(e: &Env<'_>) -> R {
    let t = e.t;
    let (a, b) = two(t, "crl")?;
    t.grant(&b, &a.handle, "message")?;
    let m = msg(t, &a, &[&b.handle]);
    t.send_ok(&m)?;
    t.authed(&b, "DELETE", &format!("/v1/contacts/{}", a.handle), b"")?
        .expect_json(200)?;
    refuse(t, &msg(t, &a, &[&b.handle]).wire, ErrorCode::NotContact)?;
    expect_delivered_as_sent(&t.inbox(&b)?, &m, &b.handle)?;
    Ok(())
}

fn requests(t: &Target, a: &Agent) -> R<Vec<Value>> {
    let r = t.authed(a, "GET", "/v1/contact-requests", b"")?;
    r.expect_json(200)?;
    Ok(r.member("requests")?.as_array().unwrap_or(&[]).to_vec())
}

fn contact_request(t: &Target, a: &Agent, to: &Handle, level: &str, note: Option<&str>) -> Signed {
    let mut p = vec![("level", s(level))];
    if let Some(n) = note {
        p.push(("note", s(n)));
    }
    t.sign(&t.envelope(a, "contact_request", &[to], obj(p)), &a.key)
}

fn request_flow(e: &Env<'_>) -> R {
    let t = e.t;
    let (a, b) = two(t, "crf")?;
    let note = t.uniq("hello from a");
    let cr = contact_request(t, &a, &b.handle, "message", Some(&note));
    t.send_ok(&cr)?;
    let list = requests(t, &b)?;
    ensure!(
        list.len() == 1,
        "GET /v1/contact-requests lists {} requests (API-15)",
        list.len()
    );
    let want = obj(vec![
        ("id", s(&cr.id)),
        ("from", s(a.handle.as_str())),
        ("level", s("message")),
        ("note", s(&note)),
        (
            "ts",
            cr.value
                .as_object()
                .and_then(|o| o.get("ts"))
                .cloned()
                .unwrap_or(Value::Null),
        ),
    ]);
    ensure!(
        list[0] == want,
        "the pending request is listed as {:?}, expected {:?} (API-15)",
        crate::http::quote(&canon::canonicalize(&list[0])),
        crate::http::quote(&canon::canonicalize(&want))
    );
    expect_delivered_as_sent(&t.inbox(&b)?, &cr, &b.handle)?;
    // Exact replay: duplicate. Another request while pending: rate_limited.
    let d = t.post_envelope(&cr.wire)?;
    d.expect_json(200)?;
    ensure!(
        d.str_member("result")? == "duplicate",
        "{}: a replay of the pending request answered {} (CONTACT-5, ERR-3)",
        d.what,
        d.brief()
    );
    refuse(
        t,
        &contact_request(t, &a, &b.handle, "task", None).wire,
        ErrorCode::RateLimited,
    )?;
    ensure!(
        requests(t, &b)?.len() == 1,
        "a refused second request replaced or joined the pending one (CONTACT-5)"
    );
    // Accepting at a higher level than asked is invalid_field (level); lower is fine.
    let acc = format!("/v1/contact-requests/{}/accept", cr.id);
    t.authed(&b, "POST", &acc, b"{\"level\":\"task\"}")?
        .expect_error_field(ErrorCode::InvalidField, "level")?;
    let r = t.authed(&b, "POST", &acc, b"{\"level\":\"read\"}")?;
    ensure!(
        r.expect_json(200)? == &obj(vec![("handle", s(a.handle.as_str())), ("level", s("read"))]),
        "{}: {} (API-15)",
        r.what,
        r.brief()
    );
    ensure!(
        requests(t, &b)?.is_empty(),
        "an accepted request is still pending (CONTACT-8)"
    );
    refuse(
        t,
        &msg(t, &a, &[&b.handle]).wire,
        ErrorCode::LevelInsufficient,
    )?;
    Ok(())
}

fn request_reject(e: &Env<'_>) -> R {
    let t = e.t;
    let (a, b) = two(t, "crj")?;
    let cr = contact_request(t, &a, &b.handle, "task", None);
    t.send_ok(&cr)?;
    let r = t.authed(
        &b,
        "POST",
        &format!("/v1/contact-requests/{}/reject", cr.id),
        b"",
    )?;
    ensure!(
        r.expect_json(200)? == &obj(vec![("id", s(&cr.id)), ("rejected", Value::Bool(true))]),
        "{}: {} (API-15)",
        r.what,
        r.brief()
    );
    ensure!(
        requests(t, &b)?.is_empty(),
        "a rejected request is still pending (CONTACT-8)"
    );
    sleep_ms(200);
    let told: Vec<_> = t
        .inbox(&a)?
        .into_iter()
        .filter(|(_, e)| {
            payload_str(e, "msg") == Some(cr.id.as_str()) || env_str(e, "type") == Some("receipt")
        })
        .collect();
    ensure!(
        told.is_empty(),
        "the requester received {} item(s) about its rejected request (CONTACT-8: not told)",
        told.len()
    );
    t.send_ok(&contact_request(t, &a, &b.handle, "message", Some("again")))?;
    Ok(())
}

fn request_by_grant(e: &Env<'_>) -> R {
    let t = e.t;
    let (a, b) = two(t, "crg")?;
    t.send_ok(&contact_request(t, &a, &b.handle, "message", None))?;
    t.grant(&b, &a.handle, "message")?;
    ensure!(
        requests(t, &b)?.is_empty(),
        "a request from an agent that was then granted directly is still pending (CONTACT-3)"
    );
    Ok(())
}

fn request_unknown(e: &Env<'_>) -> R {
    let t = e.t;
    let (a, b) = two(t, "cru")?;
    let cr = contact_request(t, &a, &b.handle, "message", None);
    t.send_ok(&cr)?;
    for id in ["ab".repeat(32), "nope".into()] {
        t.authed(
            &b,
            "POST",
            &format!("/v1/contact-requests/{id}/accept"),
            b"",
        )?
        .expect_error(ErrorCode::NotFound)?;
        t.authed(
            &b,
            "POST",
            &format!("/v1/contact-requests/{id}/reject"),
            b"",
        )?
        .expect_error(ErrorCode::NotFound)?;
    }
    // Another agent cannot answer b's request.
    t.authed(
        &a,
        "POST",
        &format!("/v1/contact-requests/{}/accept", cr.id),
        b"",
    )?
    .expect_error(ErrorCode::NotFound)?;
    Ok(())
}

fn request_rate(e: &Env<'_>) -> R {
    let t = e.t;
    let per_hour = t.published.tier0().contact_requests_per_hour;
    if per_hour > 12 {
        skip!(
            "tier {} allows {per_hour} contact requests per hour; the case sends at most 13",
            t.published.tier0().name
        );
    }
    let (a, b) = two(t, "crt")?;
    for n in 0..per_hour {
        let cr = contact_request(t, &a, &b.handle, "message", Some(&t.uniq("n")));
        t.send_ok(&cr).map_err(|err| match err {
            Stop::Fail(m) => Stop::Fail(format!(
                "contact request {} of {per_hour} allowed per hour: {m} (TRUST-8)",
                n + 1
            )),
            other => other,
        })?;
        t.authed(
            &b,
            "POST",
            &format!("/v1/contact-requests/{}/reject", cr.id),
            b"",
        )?
        .expect_json(200)?;
    }
    refuse(
        t,
        &contact_request(t, &a, &b.handle, "message", Some(&t.uniq("n"))).wire,
        ErrorCode::RateLimited,
    )?;
    Ok(())
}

fn pending_cap(e: &Env<'_>) -> R {
    let t = e.t;
    let cap = t.published.contact_requests_pending_max;
    if cap > 5 {
        skip!(
            "limits.contact_requests_pending_max is {cap}; the case registers at most 6 requesters"
        );
    }
    let b = t.register("cpcb")?;
    for _ in 0..cap {
        let a = t.register("cpca")?;
        t.send_ok(&contact_request(t, &a, &b.handle, "message", None))?;
    }
    let a = t.register("cpca")?;
    refuse(
        t,
        &contact_request(t, &a, &b.handle, "message", None).wire,
        ErrorCode::InboxFull,
    )?;
    Ok(())
}
