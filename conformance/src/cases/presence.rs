//! Signed statuses and heartbeats (PRES-1 to PRES-3, API-19, API-20): a status is stored and
//! served as signed, duplicates and older statuses (`status_outdated`), the checks of PRES-3 in
//! their order, the relay's `presence.status_ttl_ms_max`, the key a status names, the shared
//! budget of statuses and heartbeats (`presence.updates_per_min`), and what a heartbeat and an
//! expiring status make of an agent's presence.

use super::presence_kit::*;
use super::profile_kit::{at_step, flipped};
use super::*;
use crate::case::{case, Env};
use crate::target::random_key;
use formica_protocol::keylog::KeyOp;

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("pres.set", &["API-19", "PRES-2", "PRES-3", "PRES-4", "HTTP-3"], "a status is stored (200 stored with its handle, status and expires) and served to its agent as signed; the same bytes again are a duplicate; a status whose ts is not after the held one's is status_outdated and the newest stays in force", set_read).codes(&[E::StatusOutdated]),
        case("pres.forbidden", &["PRES-3"], "a status of another agent, validly signed by that agent, is forbidden and changes nothing", forbidden).codes(&[E::Forbidden]),
        case("pres.check-order", &["PRES-3", "TIME-1", "TIME-2", "HTTP-2"], "PRES-3's checks answer in order: the body limit first, schema before handle, handle before freshness, freshness before signature, signature before presence.status_ttl_ms_max, that limit before the order of statuses", check_order)
            .codes(&[E::TooLarge, E::UnknownField, E::InvalidField, E::Forbidden, E::Stale, E::Future, E::BadSignature, E::UnknownKey, E::StatusOutdated]),
        case("pres.ttl-limit", &["PRES-3", "PRES-6"], "an expires - ts of presence.status_ttl_ms_max is accepted; one more is invalid_field at expires", ttl_limit).codes(&[E::InvalidField]),
        case("pres.key-validity", &["PRES-2", "LOG-12"], "the key a status names must be the agent's key at the status's ts: a rotated-out key, a key before it became current, a key the log never had and the recovery key are refused", key_validity)
            .codes(&[E::KeyNotValid, E::UnknownKey]),
        case("pres.rate", &["PRES-3", "API-20"], "statuses and heartbeats share one budget of presence.updates_per_min: beyond it both are rate_limited with retry_after_s, the budget comes after the signature and before the duplicate check", rate)
            .codes(&[E::RateLimited, E::BadSignature]),
        case("pres.heartbeat", &["API-20", "PRES-1", "PRES-4"], "an agent never seen connected is offline with last_seen null; a heartbeat answers connected_until = now + presence.ttl_ms and makes it available (last_seen now) to a contact, then its status in force", heartbeat_case),
        case("pres.status-expiry", &["PRES-1", "PRES-4"], "a connected agent's status applies until its expires; then the agent is available and `signed` is null", status_expiry),
    ]
}

// ------------------------------------------------------------------ cases

fn set_read(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("pset")?;
    // Statuses a few ms apart, all after the registration (the key's start, LOG-12).
    let base = t.now().max(a.reg_ts) + 10;
    let mut o = at_ts(&status(t, &a, "busy"), base + 2);
    o.insert("note", s("In a review, back at three."));
    let first = set_obj(t, &a, &o)?;
    at_step(
        "the agent reads its own presence",
        seen_by(t, &a, &a, Seen::Full("offline", Some(&first))).map(|_| ()),
    )?;
    at_step(
        "the same bytes again",
        set_status_as(t, &a, &first, "duplicate"),
    )?;
    let same_ts = with(o.clone(), "note", s("Other bytes, the same ts."));
    at_step(
        "another status with the same ts",
        refuse_status(
            t,
            &a,
            &sign_status(&same_ts, &a.key).wire,
            ErrorCode::StatusOutdated,
            None,
        ),
    )?;
    let older = at_ts(&status(t, &a, "away"), base + 1);
    at_step(
        "an older status",
        refuse_status(
            t,
            &a,
            &sign_status(&older, &a.key).wire,
            ErrorCode::StatusOutdated,
            None,
        ),
    )?;
    let second = set_obj(t, &a, &at_ts(&status(t, &a, "away"), base + 3))?;
    at_step(
        "the replaced status again",
        refuse_status(t, &a, &first.wire, ErrorCode::StatusOutdated, None),
    )?;
    at_step(
        "after the refusals, the newest status is in force",
        seen_by(t, &a, &a, Seen::Full("offline", Some(&second))).map(|_| ()),
    )?;
    // `available` ends a busy or away status early (PRES-3).
    let third = set_obj(t, &a, &at_ts(&status(t, &a, "available"), base + 4))?;
    seen_by(t, &a, &a, Seen::Full("offline", Some(&third)))?;
    Ok(())
}

fn forbidden(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("pfba")?;
    let b = t.register("pfbb")?;
    let p = sign_status(&status(t, &b, "busy"), &b.key);
    refuse_status(t, &a, &p.wire, ErrorCode::Forbidden, None)?;
    at_step(
        "the other agent's presence after the refusal",
        seen_by(t, &b, &b, Seen::Full("offline", None)).map(|_| ()),
    )?;
    Ok(())
}

/// `p`'s canonical bytes padded with spaces before the closing brace to `n` bytes.
fn padded(p: &super::profile_kit::Prof, n: usize) -> Vec<u8> {
    let mut b = p.wire.clone();
    let close = b.pop().unwrap_or(b'}');
    b.resize(n.saturating_sub(1).max(b.len()), b' ');
    b.push(close);
    b
}

fn check_order(e: &Env<'_>) -> R {
    let t = e.t;
    let lim = pres(t);
    let a = t.register("psord")?;
    let b = t.register("psordb")?;
    let stale = t.now() - t.published.window_ms - 60_000;
    // The body limit (limits.body_bytes_max) before anything else.
    let max = t.published.body_bytes_max;
    if (1024..=1 << 20).contains(&max) {
        let o = with(at_ts(&status(t, &b, "busy"), stale), "mood", s("x"));
        let bad = sign_status(&o, &a.key);
        at_step(
            "one byte over limits.body_bytes_max",
            refuse_status(
                t,
                &a,
                &padded(&bad, max as usize + 1),
                ErrorCode::TooLarge,
                None,
            ),
        )?;
    }
    // Schema before handle: another agent's status with an unknown member, or expires <= ts.
    let o = with(status(t, &b, "busy"), "mood", s("x"));
    at_step(
        "schema (unknown member) before handle",
        refuse_status(
            t,
            &a,
            &sign_status(&o, &b.key).wire,
            ErrorCode::UnknownField,
            Some("mood"),
        ),
    )?;
    let o = status(t, &b, "busy");
    let o = with(o.clone(), "expires", o.get("ts").cloned().unwrap_or(int(0)));
    at_step(
        "schema (expires not after ts) before handle",
        refuse_status(
            t,
            &a,
            &sign_status(&o, &b.key).wire,
            ErrorCode::InvalidField,
            Some("expires"),
        ),
    )?;
    at_step(
        "schema (status offline, never signed) before handle",
        refuse_status(
            t,
            &a,
            &sign_status(&status(t, &b, "offline"), &b.key).wire,
            ErrorCode::InvalidField,
            Some("status"),
        ),
    )?;
    // Handle before freshness.
    at_step(
        "handle before freshness",
        refuse_status(
            t,
            &a,
            &sign_status(&at_ts(&status(t, &b, "busy"), stale), &b.key).wire,
            ErrorCode::Forbidden,
            None,
        ),
    )?;
    // Freshness before signature.
    at_step(
        "staleness before signature",
        refuse_status(
            t,
            &a,
            &flipped(&sign_status(&at_ts(&status(t, &a, "busy"), stale), &a.key)),
            ErrorCode::Stale,
            None,
        ),
    )?;
    let future = t.now() + t.published.skew_ms + 60_000;
    at_step(
        "future before signature",
        refuse_status(
            t,
            &a,
            &flipped(&sign_status(&at_ts(&status(t, &a, "busy"), future), &a.key)),
            ErrorCode::Future,
            None,
        ),
    )?;
    // A status in force, then: signature and key before the lifetime limit, the limit before
    // the order of statuses (every status below has an older ts than the held one).
    let base = t.now().max(a.reg_ts) + 10;
    set_obj(t, &a, &at_ts(&status(t, &a, "busy"), base + 2))?;
    let older = at_ts(&status(t, &a, "away"), base + 1);
    if lim.status_ttl_ms_max < 1 << 50 {
        let ts = base + 1;
        let over = with(
            older.clone(),
            "expires",
            int(ts + lim.status_ttl_ms_max + 1),
        );
        at_step(
            "signature before the lifetime limit",
            refuse_status(
                t,
                &a,
                &flipped(&sign_status(&over, &a.key)),
                ErrorCode::BadSignature,
                None,
            ),
        )?;
        let unknown = random_key();
        let named = with(over.clone(), "key", s(&unknown.public().key_id().to_hex()));
        at_step(
            "unknown key before the lifetime limit",
            refuse_status(
                t,
                &a,
                &sign_status(&named, &unknown).wire,
                ErrorCode::UnknownKey,
                None,
            ),
        )?;
        at_step(
            "the lifetime limit before the order of statuses",
            refuse_status(
                t,
                &a,
                &sign_status(&over, &a.key).wire,
                ErrorCode::InvalidField,
                Some("expires"),
            ),
        )?;
    }
    at_step(
        "signature before the order of statuses",
        refuse_status(
            t,
            &a,
            &flipped(&sign_status(&older, &a.key)),
            ErrorCode::BadSignature,
            None,
        ),
    )?;
    at_step(
        "the order of statuses",
        refuse_status(
            t,
            &a,
            &sign_status(&older, &a.key).wire,
            ErrorCode::StatusOutdated,
            None,
        ),
    )?;
    Ok(())
}

fn ttl_limit(e: &Env<'_>) -> R {
    let t = e.t;
    let max = pres(t).status_ttl_ms_max;
    if max >= 1 << 50 {
        skip!("presence.status_ttl_ms_max {max} leaves no lifetime of an integer status over it");
    }
    let a = t.register("psttl")?;
    let o = status(t, &a, "away");
    let ts = o.get("ts").and_then(Value::as_i64).unwrap_or(0);
    refuse_status(
        t,
        &a,
        &sign_status(&with(o.clone(), "expires", int(ts + max + 1)), &a.key).wire,
        ErrorCode::InvalidField,
        Some("expires"),
    )?;
    let p = set_obj(t, &a, &with(o, "expires", int(ts + max)))?;
    seen_by(t, &a, &a, Seen::Full("offline", Some(&p)))?;
    Ok(())
}

fn key_validity(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("pskey")?;
    let k2 = random_key();
    let ts_r = t.now().max(a.reg_ts + 1);
    let entry = super::keylog::next(
        &a,
        1,
        &a.head,
        ts_r,
        KeyOp::Rotate { key: k2.public() },
        &a.key,
        &[&k2],
    )?;
    super::keylog::append(t, &a, &entry)?;
    sleep_ms(20);
    // From here the agent authenticates with its new key.
    let a2 = Agent {
        key: k2.clone(),
        ..a.clone()
    };
    at_step(
        "the rotated-out key at a ts after the rotation",
        refuse_status(
            t,
            &a2,
            &sign_status(&status(t, &a, "busy"), &a.key).wire,
            ErrorCode::KeyNotValid,
            None,
        ),
    )?;
    at_step(
        "the new key at a ts before the rotation",
        refuse_status(
            t,
            &a2,
            &sign_status(&at_ts(&status(t, &a2, "busy"), ts_r - 1), &k2).wire,
            ErrorCode::KeyNotValid,
            None,
        ),
    )?;
    let stranger = random_key();
    let o = with(
        status(t, &a2, "busy"),
        "key",
        s(&stranger.public().key_id().to_hex()),
    );
    at_step(
        "a key the log never had",
        refuse_status(
            t,
            &a2,
            &sign_status(&o, &stranger).wire,
            ErrorCode::UnknownKey,
            None,
        ),
    )?;
    if let Some(rk) = &a.recovery {
        let o = with(
            status(t, &a2, "busy"),
            "key",
            s(&rk.public().key_id().to_hex()),
        );
        at_step(
            "the recovery key (never a signing key, LOG-12)",
            refuse_status(
                t,
                &a2,
                &sign_status(&o, rk).wire,
                ErrorCode::UnknownKey,
                None,
            ),
        )?;
    }
    let p = set_obj(t, &a2, &status(t, &a2, "busy"))?;
    seen_by(t, &a2, &a2, Seen::Full("offline", Some(&p)))?;
    Ok(())
}

/// Heartbeats as `a` until one is refused; that refusal must be `rate_limited` with a wait of
/// 1..60 s. At most `limit + 1` heartbeats.
fn exhaust(t: &Target, a: &Agent, limit: i64) -> R {
    for n in 0..=limit {
        let r = t.authed(a, "POST", "/v1/presence/heartbeat", b"")?;
        if r.status == 200 {
            continue;
        }
        at_step(
            &format!("heartbeat {} of a burst", n + 1),
            r.expect_error(ErrorCode::RateLimited).map(|_| ()),
        )?;
        let wait = r
            .error_member("retry_after_s")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        ensure!(
            (1..=60).contains(&wait),
            "retry_after_s {wait} is not a wait of 1..60 s for a per-minute budget (PRES-3, API-20)"
        );
        return Ok(());
    }
    fail!(
        "{} heartbeats by one agent in a burst were all answered; the relay publishes presence.updates_per_min {limit} (API-20)",
        limit + 1
    )
}

/// With the budget just exhausted, `body` set as `a` must be refused with `code`. A budget that
/// refilled in between (a token a second at 60 a minute) answers it otherwise; three tries.
fn when_exhausted(t: &Target, a: &Agent, limit: i64, body: &[u8], code: ErrorCode) -> R {
    let mut last = String::new();
    for _ in 0..3 {
        exhaust(t, a, limit)?;
        let r = put_status(t, a, body)?;
        if r.code() == Some(code.as_str()) {
            r.expect_error(code)?;
            return Ok(());
        }
        last = r.brief();
    }
    fail!(
        "PUT /v1/presence with the budget exhausted, three times: expected {}, last answered {last} (PRES-3)",
        code.as_str()
    )
}

fn rate(e: &Env<'_>) -> R {
    let t = e.t;
    let limit = pres(t).updates_per_min;
    if limit > 120 {
        skip!("presence.updates_per_min {limit}: the case sends at most 121 updates in a burst");
    }
    let a = t.register("psrate")?;
    let held = set_obj(t, &a, &status(t, &a, "busy"))?;
    exhaust(t, &a, limit)?;
    at_step(
        "signature before the budget",
        refuse_status(
            t,
            &a,
            &flipped(&sign_status(&status(t, &a, "away"), &a.key)),
            ErrorCode::BadSignature,
            None,
        ),
    )?;
    at_step(
        "a new status shares the heartbeats' budget",
        when_exhausted(
            t,
            &a,
            limit,
            &sign_status(&status(t, &a, "away"), &a.key).wire,
            ErrorCode::RateLimited,
        ),
    )?;
    at_step(
        "the budget before the duplicate check",
        when_exhausted(t, &a, limit, &held.wire, ErrorCode::RateLimited),
    )?;
    Ok(())
}

fn heartbeat_case(e: &Env<'_>) -> R {
    let t = e.t;
    let ttl = pres(t).ttl_ms;
    let a = t.register("phb")?;
    let c = t.register("phbc")?;
    t.grant(&a, &c.handle, "read")?;
    let last = at_step(
        "never seen connected",
        seen_by(t, &c, &a, Seen::Full("offline", None)),
    )?;
    ensure!(
        last.is_none(),
        "GET /v1/presence/{}: last_seen {last:?} for an agent the relay never saw connected, expected null (PRES-1)",
        a.handle
    );
    let before = t.now();
    let until = heartbeat(t, &a)?;
    near(
        "connected_until (API-20: now + presence.ttl_ms)",
        until,
        before + ttl,
        2000,
    )?;
    let last = at_step(
        "after a heartbeat",
        seen_by(t, &c, &a, Seen::Full("available", None)),
    )?;
    let Some(last) = last else {
        fail!(
            "GET /v1/presence/{}: last_seen null after a heartbeat (PRES-1)",
            a.handle
        );
    };
    near("last_seen after a heartbeat (PRES-1)", last, before, 2000)?;
    let p = set_obj(t, &a, &status(t, &a, "busy"))?;
    at_step(
        "a contact, after a busy status",
        seen_by(t, &c, &a, Seen::Full("busy", Some(&p))).map(|_| ()),
    )?;
    at_step(
        "the agent itself",
        seen_by(t, &a, &a, Seen::Full("busy", Some(&p))).map(|_| ()),
    )?;
    Ok(())
}

fn status_expiry(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("pexs")?;
    let c = t.register("pexsc")?;
    t.grant(&a, &c.handle, "read")?;
    heartbeat(t, &a)?;
    let o = status(t, &a, "away");
    let ts = o.get("ts").and_then(Value::as_i64).unwrap_or(0);
    let p = set_obj(t, &a, &with(o, "expires", int(ts + 3000)))?;
    at_step(
        "before the status expires",
        seen_by(t, &c, &a, Seen::Full("away", Some(&p))).map(|_| ()),
    )?;
    while t.now() < ts + 3500 {
        sleep_ms(100);
    }
    // Connected still (a heartbeat again, for relays with a short presence.ttl_ms).
    heartbeat(t, &a)?;
    at_step(
        "after the status expired",
        seen_by(t, &c, &a, Seen::Full("available", None)).map(|_| ()),
    )?;
    Ok(())
}
