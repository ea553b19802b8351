//! Publishing profiles (PROF-1 to PROF-6, API-17, API-18): a profile is stored and served as
//! signed, `seq` orders them (duplicates, replacements, outdated ones), the checks of PROF-4
//! answer in their order, the relay's published limits (size, capabilities, lifetime), and the
//! key a profile names is the agent's key at its `ts`.

use super::profile_kit::*;
use super::*;
use crate::case::{case, Env};
use crate::target::random_key;
use formica_protocol::keylog::KeyOp;

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("prof.publish", &["API-17", "API-18", "PROF-1", "PROF-2", "PROF-4", "HTTP-3", "HTTP-9"], "a profile is stored (200 stored with its handle, seq, listed and expires) and served to its agent as signed, with the agent's tier, under the local and global form of the handle", publish_read),
        case("prof.seq", &["PROF-5", "PROF-4"], "the same bytes again are a duplicate; a higher seq replaces; a lower or equal seq with other bytes is profile_outdated and the newest stays served", seq_rules).codes(&[E::ProfileOutdated]),
        case("prof.forbidden", &["PROF-4"], "a profile for another agent, validly signed by that agent, is forbidden", forbidden).codes(&[E::Forbidden]),
        case("prof.check-order", &["PROF-4", "TIME-1", "TIME-2"], "PROF-4's checks answer in order: schema before handle, handle before freshness, freshness before signature, signature before the relay's limits, limits before seq", check_order)
            .codes(&[E::UnknownField, E::Forbidden, E::Stale, E::Future, E::BadSignature, E::UnknownKey, E::InvalidField, E::ProfileOutdated]),
        case("prof.too-large", &["PROF-4", "HTTP-2"], "a body of directory.profile_bytes_max bytes is read; one byte more is too_large, before any other check", too_large).codes(&[E::TooLarge]),
        case("prof.relay-limits", &["PROF-4", "PROF-3"], "directory.profile_capabilities_max capabilities and an expires - ts of directory.profile_ttl_ms_max are accepted; one more is invalid_field at capabilities or expires", relay_limits).codes(&[E::InvalidField]),
        case("prof.key-validity", &["PROF-2", "LOG-12"], "the key a profile names must be the agent's key at the profile's ts: a rotated-out key, a key before it became current, a key the log never had and the recovery key are refused", key_validity)
            .codes(&[E::KeyNotValid, E::UnknownKey]),
    ]
}

// ------------------------------------------------------------------ cases

fn publish_read(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("ppub")?;
    let mut o = profile(t, &a, 7);
    o.insert("description", s("Checks relays against SPEC.md."));
    o.insert(
        "capabilities",
        Value::Array(vec![obj(vec![
            ("id", s(&word(t, "conformance"))),
            ("version", s("1.0.0")),
            ("tags", Value::Array(vec![s("spec"), s("relay")])),
        ])]),
    );
    o.insert(
        "accepts",
        Value::Array(vec![s("message"), s("x-conformance.ping")]),
    );
    o.insert("platform", s("formica-conformance"));
    let p = publish_obj(t, &a, &o)?;
    let local = format!("@{}", a.handle.name().as_str());
    let encoded = a.handle.as_str().replace('@', "%40").replace(':', "%3A");
    for h in [a.handle.as_str(), local.as_str(), encoded.as_str()] {
        let r = get_profile(t, Some(&a), h)?;
        at_step(
            &format!("the agent reads its own unlisted profile as {h}"),
            expect_shown(t, &r, &p),
        )?;
    }
    Ok(())
}

fn seq_rules(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("pseq")?;
    let first = publish_obj(t, &a, &profile(t, &a, 5))?;
    at_step(
        "the same bytes again",
        publish_as(t, &a, &first, "duplicate"),
    )?;
    let mut lower = profile(t, &a, 4);
    lower.insert("name", s("lower seq"));
    refuse_put(
        t,
        &a,
        &sign_profile(&lower, &a.key).wire,
        ErrorCode::ProfileOutdated,
        None,
    )?;
    let mut equal = profile(t, &a, 5);
    equal.insert("name", s("same seq, other bytes"));
    refuse_put(
        t,
        &a,
        &sign_profile(&equal, &a.key).wire,
        ErrorCode::ProfileOutdated,
        None,
    )?;
    let second = publish_obj(t, &a, &profile(t, &a, 6))?;
    at_step(
        "the replaced profile again",
        refuse_put(t, &a, &first.wire, ErrorCode::ProfileOutdated, None),
    )?;
    let r = get_profile(t, Some(&a), a.handle.as_str())?;
    at_step(
        "after the refusals, the newest profile is served",
        expect_shown(t, &r, &second),
    )?;
    Ok(())
}

fn forbidden(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("pfba")?;
    let b = t.register("pfbb")?;
    let p = sign_profile(&profile(t, &b, 1), &b.key);
    refuse_put(t, &a, &p.wire, ErrorCode::Forbidden, None)?;
    let r = get_profile(t, Some(&b), b.handle.as_str())?;
    r.expect_error(ErrorCode::NotFound)?;
    Ok(())
}

fn check_order(e: &Env<'_>) -> R {
    let t = e.t;
    let d = dir(t);
    let a = t.register("pord")?;
    let b = t.register("pordb")?;
    // Schema (2) before handle (3): another agent's profile with an unknown member.
    let mut o = profile(t, &b, 1);
    o.insert("avatar", s("x"));
    at_step(
        "schema before handle",
        refuse_put(
            t,
            &a,
            &sign_profile(&o, &b.key).wire,
            ErrorCode::UnknownField,
            Some("avatar"),
        ),
    )?;
    // Handle (3) before freshness (4).
    let mut o = profile(t, &b, 1);
    let stale = t.now() - t.published.window_ms - 60_000;
    o.insert("ts", int(stale));
    at_step(
        "handle before freshness",
        refuse_put(
            t,
            &a,
            &sign_profile(&o, &b.key).wire,
            ErrorCode::Forbidden,
            None,
        ),
    )?;
    // Freshness (4) before signature (5).
    at_step(
        "staleness before signature",
        refuse_put(
            t,
            &a,
            &flipped(&sign_profile(
                &with(profile(t, &a, 1), "ts", int(stale)),
                &a.key,
            )),
            ErrorCode::Stale,
            None,
        ),
    )?;
    let future = t.now() + t.published.skew_ms + 60_000;
    let o = with(
        with(profile(t, &a, 1), "ts", int(future)),
        "expires",
        int(future + 60_000),
    );
    at_step(
        "future before signature",
        refuse_put(
            t,
            &a,
            &flipped(&sign_profile(&o, &a.key)),
            ErrorCode::Future,
            None,
        ),
    )?;
    // Signature (5) before the relay's limits (6) and seq (7); limits before seq.
    publish_obj(t, &a, &profile(t, &a, 10))?;
    let over_caps = (d.caps_max < 32).then(|| {
        let caps = (0..=d.caps_max)
            .map(|n| obj(vec![("id", s(&format!("c{n}")))]))
            .collect();
        with(profile(t, &a, 1), "capabilities", Value::Array(caps))
    });
    let over_ttl = (d.ttl_max < 1 << 50).then(|| {
        let o = profile(t, &a, 1);
        let ts = o.get("ts").and_then(Value::as_i64).unwrap_or(0);
        with(o, "expires", int(ts + d.ttl_max + 1))
    });
    let unknown = random_key();
    for (what, over, field) in [
        ("capabilities", over_caps, "capabilities"),
        ("lifetime", over_ttl, "expires"),
    ] {
        let Some(o) = over else { continue };
        at_step(
            &format!("signature before the {what} limit"),
            refuse_put(
                t,
                &a,
                &flipped(&sign_profile(&o, &a.key)),
                ErrorCode::BadSignature,
                None,
            ),
        )?;
        let named = with(o.clone(), "key", s(&unknown.public().key_id().to_hex()));
        at_step(
            &format!("unknown key before the {what} limit"),
            refuse_put(
                t,
                &a,
                &sign_profile(&named, &unknown).wire,
                ErrorCode::UnknownKey,
                None,
            ),
        )?;
        at_step(
            &format!("the {what} limit before seq"),
            refuse_put(
                t,
                &a,
                &sign_profile(&o, &a.key).wire,
                ErrorCode::InvalidField,
                Some(field),
            ),
        )?;
    }
    at_step(
        "signature before seq",
        refuse_put(
            t,
            &a,
            &flipped(&sign_profile(&profile(t, &a, 1), &a.key)),
            ErrorCode::BadSignature,
            None,
        ),
    )?;
    at_step(
        "seq",
        refuse_put(
            t,
            &a,
            &sign_profile(&profile(t, &a, 1), &a.key).wire,
            ErrorCode::ProfileOutdated,
            None,
        ),
    )?;
    Ok(())
}

/// `p`'s canonical bytes padded with spaces before the closing brace to `n` bytes (strict JSON
/// allows insignificant whitespace; the signature covers the canonical form).
fn padded(p: &Prof, n: usize) -> Vec<u8> {
    let mut b = p.wire.clone();
    let close = b.pop().unwrap_or(b'}');
    b.resize(n.saturating_sub(1).max(b.len()), b' ');
    b.push(close);
    b
}

fn too_large(e: &Env<'_>) -> R {
    let t = e.t;
    let d = dir(t);
    if d.bytes_max > t.published.body_bytes_max.max(1 << 20) || d.bytes_max < 512 {
        skip!(
            "directory.profile_bytes_max {} is out of the range this case sends",
            d.bytes_max
        );
    }
    let n = usize::try_from(d.bytes_max).unwrap_or(4096);
    let a = t.register("plarge")?;
    let b = t.register("plargeb")?;
    // Over the limit with every other defect: another agent's profile, stale, badly signed.
    let mut o = with(profile(t, &b, 1), "avatar", s("x"));
    o.insert("ts", int(t.now() - t.published.window_ms - 60_000));
    let bad = sign_profile(&o, &a.key);
    at_step(
        "one byte over directory.profile_bytes_max",
        refuse_put(t, &a, &padded(&bad, n + 1), ErrorCode::TooLarge, None),
    )?;
    let good = sign_profile(&profile(t, &a, 1), &a.key);
    at_step("one byte over, chunked", {
        let body = padded(&good, n + 1);
        let h = t.auth_header(&a, "PUT", "/v1/profile", &body);
        let r = t.http.send(
            "PUT",
            "/v1/profile",
            &[
                ("authorization", h),
                ("content-type", "application/json".into()),
            ],
            crate::http::Body::Chunked(&body),
        )?;
        r.expect_error(ErrorCode::TooLarge).map(|_| ())
    })?;
    let r = put(t, &a, &padded(&good, n))?;
    at_step(
        "exactly directory.profile_bytes_max bytes",
        r.expect_json(200).map(|_| ()),
    )?;
    let g = get_profile(t, Some(&a), a.handle.as_str())?;
    at_step("served in canonical form", expect_shown(t, &g, &good))?;
    Ok(())
}

fn relay_limits(e: &Env<'_>) -> R {
    let t = e.t;
    let d = dir(t);
    let a = t.register("plim")?;
    let mut checked = 0;
    if (1..32).contains(&d.caps_max) {
        let caps = |n: i64| {
            Value::Array(
                (0..n)
                    .map(|k| obj(vec![("id", s(&format!("c{k}")))]))
                    .collect(),
            )
        };
        let over = with(profile(t, &a, 1), "capabilities", caps(d.caps_max + 1));
        refuse_put(
            t,
            &a,
            &sign_profile(&over, &a.key).wire,
            ErrorCode::InvalidField,
            Some("capabilities"),
        )?;
        publish_obj(
            t,
            &a,
            &with(profile(t, &a, 2), "capabilities", caps(d.caps_max)),
        )?;
        checked += 1;
    }
    if d.ttl_max < 1 << 50 {
        let o = profile(t, &a, 3);
        let ts = o.get("ts").and_then(Value::as_i64).unwrap_or(0);
        let over = with(o.clone(), "expires", int(ts + d.ttl_max + 1));
        refuse_put(
            t,
            &a,
            &sign_profile(&over, &a.key).wire,
            ErrorCode::InvalidField,
            Some("expires"),
        )?;
        publish_obj(t, &a, &with(o, "expires", int(ts + d.ttl_max)))?;
        checked += 1;
    }
    if checked == 0 {
        skip!("the relay publishes the document's own limits (32 capabilities, no lifetime bound below 2^50 ms)");
    }
    Ok(())
}

fn key_validity(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("pkey")?;
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
    let old = profile(t, &a, 1);
    at_step(
        "the rotated-out key at a ts after the rotation",
        refuse_put(
            t,
            &a2,
            &sign_profile(&old, &a.key).wire,
            ErrorCode::KeyNotValid,
            None,
        ),
    )?;
    let early = with(profile(t, &a2, 1), "ts", int(ts_r - 1));
    at_step(
        "the new key at a ts before the rotation",
        refuse_put(
            t,
            &a2,
            &sign_profile(&early, &k2).wire,
            ErrorCode::KeyNotValid,
            None,
        ),
    )?;
    let stranger = random_key();
    let o = with(
        profile(t, &a2, 1),
        "key",
        s(&stranger.public().key_id().to_hex()),
    );
    at_step(
        "a key the log never had",
        refuse_put(
            t,
            &a2,
            &sign_profile(&o, &stranger).wire,
            ErrorCode::UnknownKey,
            None,
        ),
    )?;
    if let Some(rk) = &a.recovery {
        let o = with(profile(t, &a2, 1), "key", s(&rk.public().key_id().to_hex()));
        at_step(
            "the recovery key (never a signing key, LOG-12)",
            refuse_put(
                t,
                &a2,
                &sign_profile(&o, rk).wire,
                ErrorCode::UnknownKey,
                None,
            ),
        )?;
    }
    let p = publish_obj(t, &a2, &profile(t, &a2, 1))?;
    let r = get_profile(t, Some(&a2), a.handle.as_str())?;
    expect_shown(t, &r, &p)?;
    Ok(())
}
