//! Building, signing, publishing and reading profiles for the profile cases (`profiles`,
//! `profile_access`, `directory`, `profile_vectors`), and what the descriptor publishes for them.

use super::*;
use formica_protocol::SecretKey;

/// What the descriptor publishes for profiles and the directory (DESC-1), with the reference
/// defaults of SPEC.md for members that are missing (`desc.members` reports those).
#[derive(Debug, Clone)]
pub struct Dir {
    pub public: bool,
    pub bytes_max: i64,
    pub caps_max: i64,
    pub ttl_max: i64,
    pub page_max: i64,
    /// Tier 0's `searches_per_min`.
    pub searches_per_min: i64,
    /// The number of published tiers.
    pub tiers: i64,
}

pub fn dir(t: &Target) -> Dir {
    let d = t.descriptor.as_ref().ok();
    let n = |k: &str, def: i64| {
        d.and_then(|d| at(d, &["directory", k]))
            .and_then(Value::as_i64)
            .unwrap_or(def)
    };
    let tiers = d
        .and_then(|d| at(d, &["tiers"]))
        .and_then(Value::as_array)
        .map_or(0, |a| a.len() as i64);
    Dir {
        public: d
            .and_then(|d| at(d, &["directory", "public"]))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        bytes_max: n("profile_bytes_max", 4096),
        caps_max: n("profile_capabilities_max", 16),
        ttl_max: n("profile_ttl_ms_max", 2_592_000_000),
        page_max: n("page_max", 50),
        searches_per_min: d
            .and_then(|d| at(d, &["tiers"]))
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(|t0| at(t0, &["searches_per_min"]))
            .and_then(Value::as_i64)
            .unwrap_or(30),
        tiers,
    }
}

/// A signed profile: its value (with `sig`) and its canonical bytes.
#[derive(Debug, Clone)]
pub struct Prof {
    pub value: Value,
    pub wire: Vec<u8>,
}

impl Prof {
    pub fn int(&self, k: &str) -> i64 {
        at(&self.value, &[k]).and_then(Value::as_i64).unwrap_or(0)
    }
}

/// A word unique to this run (capability ids, tags: `[a-z0-9][a-z0-9._-]*`).
pub fn word(t: &Target, what: &str) -> String {
    format!("{what}-{}{}", t.run_id, t.next())
}

/// The required members of a profile of `a` (PROF-1), named for `a`'s key, stamped with the
/// relay's now and valid for an hour (or the relay's longest lifetime, if shorter).
pub fn profile(t: &Target, a: &Agent, seq: i64) -> Object {
    let ts = t.now();
    let mut o = Object::new();
    o.insert("v", int(1));
    o.insert("handle", s(a.handle.as_str()));
    o.insert("key", s(&a.key.public().key_id().to_hex()));
    o.insert("seq", int(seq));
    o.insert("ts", int(ts));
    o.insert("expires", int(ts + dir(t).ttl_max.clamp(1, 3_600_000)));
    o.insert("name", s(&t.uniq("conformance agent")));
    o
}

/// Signs `o` (without its `sig`, if any) under `domain` with `sk`.
pub fn sign_under(o: &Object, sk: &SecretKey, domain: Domain) -> Prof {
    let mut input = domain.tag().to_vec();
    canon::write_object(o, Some(&["sig"]), &mut input);
    let mut full = o.clone();
    full.insert("sig", s(&sk.sign_input(&input).to_hex()));
    let value = Value::Object(full);
    let wire = canon::canonicalize(&value);
    Prof { value, wire }
}

/// Signs a profile as PROF-2 says.
pub fn sign_profile(o: &Object, sk: &SecretKey) -> Prof {
    sign_under(o, sk, Domain::Profile)
}

/// The profile with one bit of its signature flipped.
pub fn flipped(p: &Prof) -> Vec<u8> {
    let mut v = p.value.clone();
    let sig = at(&v, &["sig"]).and_then(Value::as_str).unwrap_or("");
    let flipped = super::descriptor::flip_hex(sig);
    if let Value::Object(o) = &mut v {
        o.insert("sig", s(&flipped));
    }
    canon::canonicalize(&v)
}

/// `PUT /v1/profile` with exactly `body`, as `a`.
pub fn put(t: &Target, a: &Agent, body: &[u8]) -> R<Resp> {
    t.authed(a, "PUT", "/v1/profile", body)
}

/// Publishes `p` as `a` and requires 200 with `result` `want` and the members of PROF-4.
pub fn publish_as(t: &Target, a: &Agent, p: &Prof, want: &str) -> R<()> {
    let r = put(t, a, &p.wire)?;
    r.expect_json(200)?;
    ensure!(
        r.str_member("result")? == want,
        "{}: result {:?}, expected {want:?} (PROF-4, PROF-5): {}",
        r.what,
        r.str_member("result")?,
        r.brief()
    );
    ensure!(
        r.str_member("handle")? == a.handle.as_str(),
        "{}: handle {:?}, expected {} (PROF-4)",
        r.what,
        r.str_member("handle")?,
        a.handle
    );
    for k in ["seq", "expires"] {
        ensure!(
            r.int_member(k)? == p.int(k),
            "{}: {k} {} is not the profile's {} (PROF-4)",
            r.what,
            r.int_member(k)?,
            p.int(k)
        );
    }
    let listed = at(&p.value, &["listed"]) == Some(&Value::Bool(true));
    ensure!(
        r.member("listed")? == &Value::Bool(listed),
        "{}: listed is {:?}, the profile says {listed} (PROF-4)",
        r.what,
        r.member("listed")?
    );
    Ok(())
}

/// Publishes `p` as `a`: 200 `stored`.
pub fn publish(t: &Target, a: &Agent, p: &Prof) -> R<()> {
    publish_as(t, a, p, "stored")
}

/// Signs and publishes `o` as `a`.
pub fn publish_obj(t: &Target, a: &Agent, o: &Object) -> R<Prof> {
    let p = sign_profile(o, &a.key);
    publish(t, a, &p)?;
    Ok(p)
}

/// `GET path` as `viewer`, or without `Authorization` when `viewer` is None.
pub fn get_as(t: &Target, viewer: Option<&Agent>, path: &str) -> R<Resp> {
    match viewer {
        Some(v) => t.authed(v, "GET", path, b""),
        None => t.http.get(path),
    }
}

/// `GET /v1/profiles/{handle}`.
pub fn get_profile(t: &Target, viewer: Option<&Agent>, handle: &str) -> R<Resp> {
    get_as(t, viewer, &format!("/v1/profiles/{handle}"))
}

/// Fails unless `entry` (a `{"profile", "tier"}` object of API-18 or PROF-9) carries `p` as
/// signed, and a tier level the relay publishes. Returns the tier.
pub fn check_entry(t: &Target, what: &str, entry: &Value, p: &Prof) -> R<i64> {
    let served = at(entry, &["profile"])
        .ok_or_else(|| Stop::Fail(format!("{what}: no `profile` (API-18, PROF-9)")))?;
    let bytes = canon::canonicalize(served);
    ensure!(
        bytes == p.wire,
        "{what}: the profile is not served as signed (PROF-2, HTTP-3): served {}, published {}",
        crate::http::quote(&bytes),
        crate::http::quote(&p.wire)
    );
    let tier = at(entry, &["tier"]).and_then(Value::as_i64);
    let levels = dir(t).tiers;
    match tier {
        Some(l) if (0..levels.max(1)).contains(&l) => Ok(l),
        other => fail!(
            "{what}: `tier` is {other:?}, not a published tier level 0..{levels} (API-18, TRUST-1)"
        ),
    }
}

/// Fails unless `r` is API-18's 200 answer showing `p`. Returns the tier.
pub fn expect_shown(t: &Target, r: &Resp, p: &Prof) -> R<i64> {
    let b = r.expect_json(200)?.clone();
    expect_raw_contains(r, &p.wire, "the profile")?;
    check_entry(t, &r.what, &b, p)
}

/// Fails unless `r` is the 404 `not_found` answer, byte for byte the same as `like` (PROF-8).
pub fn expect_hidden(r: &Resp, like: &Resp) -> R<()> {
    r.expect_error(ErrorCode::NotFound)?;
    ensure!(
        r.raw == like.raw,
        "{}: answered {}, but {} answered {}: PROF-8 requires the same body, byte for byte",
        r.what,
        r.brief(),
        like.what,
        like.brief()
    );
    ensure!(
        r.header("content-type") == like.header("content-type"),
        "{}: Content-Type {:?} differs from {:?} for {} (PROF-8)",
        r.what,
        r.header("content-type"),
        like.header("content-type"),
        like.what
    );
    Ok(())
}

/// Wraps a failure with the step it happened at.
pub fn at_step<T>(step: &str, r: R<T>) -> R<T> {
    r.map_err(|err| match err {
        Stop::Fail(m) => Stop::Fail(format!("{step}: {m}")),
        other => other,
    })
}

/// A refusal of `body` published as `a` with `code` (and `field`, when given).
pub fn refuse_put(t: &Target, a: &Agent, body: &[u8], code: ErrorCode, field: Option<&str>) -> R {
    let r = put(t, a, body)?;
    match field {
        Some(f) => r.expect_error_field(code, f)?,
        None => r.expect_error(code)?,
    };
    Ok(())
}
