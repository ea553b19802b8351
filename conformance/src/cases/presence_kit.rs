//! Building, signing, setting and reading presence for the presence cases (`presence`,
//! `presence_access`, `presence_push`, `presence_vectors`), and what the descriptor publishes
//! for it (PRES-6).

use super::profile_kit::{sign_under, Prof};
use super::*;
use formica_protocol::SecretKey;

/// What the descriptor publishes for presence (PRES-6), with the reference defaults of SPEC.md
/// for members that are missing (`desc.members` reports those).
#[derive(Debug, Clone)]
pub struct Pres {
    pub ttl_ms: i64,
    pub status_ttl_ms_max: i64,
    pub updates_per_min: i64,
    pub push_interval_ms: i64,
}

pub fn pres(t: &Target) -> Pres {
    let d = t.descriptor.as_ref().ok();
    let n = |k: &str, def: i64| {
        d.and_then(|d| at(d, &["presence", k]))
            .and_then(Value::as_i64)
            .unwrap_or(def)
    };
    Pres {
        ttl_ms: n("ttl_ms", 60_000),
        status_ttl_ms_max: n("status_ttl_ms_max", 86_400_000),
        updates_per_min: n("updates_per_min", 60),
        push_interval_ms: n("push_interval_ms", 1000),
    }
}

/// A status of `a` (PRES-2) saying `word`, named for `a`'s key, stamped with the relay's now and
/// valid for ten minutes (or the relay's longest lifetime, if shorter).
pub fn status(t: &Target, a: &Agent, word: &str) -> Object {
    let ts = t.now();
    let mut o = Object::new();
    o.insert("v", int(1));
    o.insert("handle", s(a.handle.as_str()));
    o.insert("key", s(&a.key.public().key_id().to_hex()));
    o.insert("ts", int(ts));
    o.insert(
        "expires",
        int(ts + pres(t).status_ttl_ms_max.clamp(1, 600_000)),
    );
    o.insert("status", s(word));
    o
}

/// `o` stamped with `ts`, keeping its lifetime.
pub fn at_ts(o: &Object, ts: i64) -> Object {
    let life = o.get("expires").and_then(Value::as_i64).unwrap_or(0)
        - o.get("ts").and_then(Value::as_i64).unwrap_or(0);
    with(with(o.clone(), "ts", int(ts)), "expires", int(ts + life))
}

/// Signs a status as PRES-2 says.
pub fn sign_status(o: &Object, sk: &SecretKey) -> Prof {
    sign_under(o, sk, Domain::Presence)
}

/// `PUT /v1/presence` with exactly `body`, as `a`.
pub fn put_status(t: &Target, a: &Agent, body: &[u8]) -> R<Resp> {
    t.authed(a, "PUT", "/v1/presence", body)
}

/// Sets `p` as `a` and requires 200 with `result` `want` and the members of PRES-3.
pub fn set_status_as(t: &Target, a: &Agent, p: &Prof, want: &str) -> R<()> {
    let r = put_status(t, a, &p.wire)?;
    r.expect_json(200)?;
    ensure!(
        r.str_member("result")? == want,
        "{}: result {:?}, expected {want:?} (PRES-3): {}",
        r.what,
        r.str_member("result")?,
        r.brief()
    );
    ensure!(
        r.str_member("handle")? == a.handle.as_str(),
        "{}: handle {:?}, expected {} (PRES-3)",
        r.what,
        r.str_member("handle")?,
        a.handle
    );
    let word = at(&p.value, &["status"])
        .and_then(Value::as_str)
        .unwrap_or("");
    ensure!(
        r.str_member("status")? == word,
        "{}: status {:?}, the status says {word:?} (PRES-3)",
        r.what,
        r.str_member("status")?
    );
    ensure!(
        r.int_member("expires")? == p.int("expires"),
        "{}: expires {} is not the status's {} (PRES-3)",
        r.what,
        r.int_member("expires")?,
        p.int("expires")
    );
    Ok(())
}

/// Sets `p` as `a`: 200 `stored`.
pub fn set_status(t: &Target, a: &Agent, p: &Prof) -> R<()> {
    set_status_as(t, a, p, "stored")
}

/// Signs and sets `o` as `a`.
pub fn set_obj(t: &Target, a: &Agent, o: &Object) -> R<Prof> {
    let p = sign_status(o, &a.key);
    set_status(t, a, &p)?;
    Ok(p)
}

/// A refusal of `body` set as `a` with `code` (and `field`, when given).
pub fn refuse_status(
    t: &Target,
    a: &Agent,
    body: &[u8],
    code: ErrorCode,
    field: Option<&str>,
) -> R {
    let r = put_status(t, a, body)?;
    match field {
        Some(f) => r.expect_error_field(code, f)?,
        None => r.expect_error(code)?,
    };
    Ok(())
}

/// `POST /v1/presence/heartbeat` as `a`: 200 with its handle and an integer `connected_until`,
/// which it returns (API-20).
pub fn heartbeat(t: &Target, a: &Agent) -> R<i64> {
    let r = t.authed(a, "POST", "/v1/presence/heartbeat", b"")?;
    r.expect_json(200)?;
    ensure!(
        r.str_member("handle")? == a.handle.as_str(),
        "{}: handle {:?}, expected {} (API-20)",
        r.what,
        r.str_member("handle")?,
        a.handle
    );
    r.int_member("connected_until")
}

/// `GET /v1/presence/{handle}` as `viewer`, or without `Authorization` when `viewer` is None.
pub fn get_presence(t: &Target, viewer: Option<&Agent>, handle: &str) -> R<Resp> {
    super::profile_kit::get_as(t, viewer, &format!("/v1/presence/{handle}"))
}

/// What a viewer is expected to see of an agent (PRES-4).
#[derive(Debug, Clone, Copy)]
pub enum Seen<'a> {
    /// The full presence: the status, and `signed` (the status in force, or None for null).
    Full(&'a str, Option<&'a Prof>),
    /// The coarse presence: the status only.
    Coarse(&'a str),
}

/// Fails unless `v` (a presence of API-21, API-22 or PRES-5) is `subject`'s as `want` says.
/// Returns `last_seen` of a full presence.
pub fn check_presence(what: &str, v: &Value, subject: &Handle, want: Seen<'_>) -> R<Option<i64>> {
    let o = v
        .as_object()
        .ok_or_else(|| Stop::Fail(format!("{what}: a presence that is not an object (PRES-4)")))?;
    let handle = o.get("handle").and_then(Value::as_str);
    ensure!(
        handle == Some(subject.as_str()),
        "{what}: handle {handle:?}, expected {subject} (PRES-4)"
    );
    let word = match want {
        Seen::Full(w, _) | Seen::Coarse(w) => w,
    };
    let got = o.get("status").and_then(Value::as_str);
    ensure!(
        got == Some(word),
        "{what}: {subject} is {got:?}, expected {word:?} (PRES-1, PRES-4)"
    );
    match want {
        Seen::Coarse(_) => {
            for k in ["last_seen", "signed"] {
                ensure!(
                    o.get(k).is_none(),
                    "{what}: the coarse presence of {subject} carries `{k}`, which only the agent and its contacts may see (PRES-4)"
                );
            }
            Ok(None)
        }
        Seen::Full(_, signed) => {
            let last_seen = match o.get("last_seen") {
                Some(Value::Null) => None,
                Some(Value::Int(n)) => Some(*n),
                other => fail!(
                    "{what}: last_seen of {subject} is {:?}, not an integer or null (PRES-4)",
                    other.map(Value::kind)
                ),
            };
            match (o.get("signed"), signed) {
                (Some(Value::Null), None) => {}
                (Some(got), Some(p)) if canon::canonicalize(got) == p.wire => {}
                (got, want) => fail!(
                    "{what}: signed of {subject} is {}, expected {} (PRES-4: the status in force, as signed, or null)",
                    got.map_or("absent".into(), |g| crate::http::quote(&canon::canonicalize(g))),
                    want.map_or("null".into(), |p| crate::http::quote(&p.wire))
                ),
            }
            Ok(last_seen)
        }
    }
}

/// Fails unless `r` is API-21's 200 answer with `subject`'s presence as `want` says (and a
/// signed status in canonical form, HTTP-3). Returns `last_seen` of a full presence.
pub fn expect_seen(r: &Resp, subject: &Handle, want: Seen<'_>) -> R<Option<i64>> {
    let b = r.expect_json(200)?.clone();
    if let Seen::Full(_, Some(p)) = want {
        expect_raw_contains(r, &p.wire, "the signed status")?;
    }
    check_presence(&r.what, &b, subject, want)
}

/// Fails unless `viewer` is shown `subject`'s presence as `want` says.
pub fn seen_by(t: &Target, viewer: &Agent, subject: &Agent, want: Seen<'_>) -> R<Option<i64>> {
    let r = get_presence(t, Some(viewer), subject.handle.as_str())?;
    expect_seen(&r, &subject.handle, want)
}

/// PROF-8's answer for `viewer`: its `GET /v1/profiles/{handle}` of a handle nobody registered.
pub fn not_found_reference(t: &Target, viewer: &Agent) -> R<Resp> {
    let u = t.fresh_handle("nobody");
    let r = super::profile_kit::get_profile(t, Some(viewer), u.as_str())?;
    r.expect_error(ErrorCode::NotFound)?;
    Ok(r)
}

/// Fails unless `viewer` is answered for `handle`'s presence exactly as `like` (PROF-8's 404).
pub fn hidden_from(t: &Target, viewer: &Agent, handle: &str, like: &Resp) -> R {
    super::profile_kit::expect_hidden(&get_presence(t, Some(viewer), handle)?, like)
}

/// Fails unless `at_ms` is within `slack_ms` of `want` (times the relay reports, against the
/// suite's estimate of the relay's clock).
pub fn near(what: &str, at_ms: i64, want: i64, slack_ms: i64) -> R {
    ensure!(
        (at_ms - want).abs() <= slack_ms,
        "{what} is {at_ms}, {} ms from the expected {want} (more than {slack_ms} ms)",
        at_ms - want
    );
    Ok(())
}
