//! Cases driven by `profiles.json` (`vec.profiles.*`, VEC-2):
//! - `valid`: the same profile content, published by the suite's own agent (its handle and key,
//!   a fresh `ts` and the vector's lifetime within the relay's), is stored and served as signed;
//!   a profile over the relay's published limits is refused as PROF-4 says.
//! - `invalid` without `public_key`: sent as is (the relay must refuse it at step 2 of PROF-4,
//!   before it looks at the vector's handle, which is not the sender's) with the vector's code
//!   and `field`.
//! - `invalid` with `public_key`: re-created with the suite's agent, with the same defect.

use super::profile_kit::{dir, flipped, publish, put, refuse_put, sign_profile, sign_under, Prof};
use super::*;
use crate::case::{case, Env};
use crate::target::random_key;
use crate::vectors as V;

pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (i, c) in V::list(V::profiles(), "valid").iter().enumerate() {
        v.push(valid(i, c));
    }
    for (i, c) in V::list(V::profiles(), "invalid").iter().enumerate() {
        v.push(invalid(i, c));
    }
    v
}

fn comment(c: &Value) -> String {
    V::field(c, "comment").unwrap_or("").to_owned()
}

/// The agent that sends the refused vectors (nothing it sends is stored).
fn sender(e: &Env<'_>) -> R<std::sync::Arc<Agent>> {
    e.fixture("profile-vectors", |t| t.register("pvec"))
}

fn valid(i: usize, c: &Value) -> Case {
    let cm = comment(c);
    let profile = at(c, &["profile"]).cloned().unwrap_or(Value::Null);
    case(
        format!("vec.profiles.valid.{i}"),
        &["PROF-1", "PROF-2", "PROF-3", "PROF-4", "API-17", "VEC-2"],
        format!("profiles.json valid: {cm}: the same profile, published by the suite's agent, is stored and served as signed (or refused by the relay's published limits)"),
        move |e| {
            let t = e.t;
            let d = dir(t);
            let Some(mut o) = profile.as_object().cloned() else {
                fail!("profiles.json: the vector's profile is not an object");
            };
            let a = t.register("pvecv")?;
            let life = o.get("expires").and_then(Value::as_i64).unwrap_or(0)
                - o.get("ts").and_then(Value::as_i64).unwrap_or(0);
            let ts = t.now();
            o.insert("handle", s(a.handle.as_str()));
            o.insert("key", s(&a.key.public().key_id().to_hex()));
            o.insert("ts", int(ts));
            o.insert("expires", int(ts + life.clamp(1, d.ttl_max.max(1))));
            let p = sign_profile(&o, &a.key);
            let caps = o.get("capabilities").and_then(Value::as_array).map_or(0, |c| c.len() as i64);
            if p.wire.len() as i64 > d.bytes_max {
                refuse_put(t, &a, &p.wire, ErrorCode::TooLarge, None)?;
            } else if caps > d.caps_max {
                refuse_put(t, &a, &p.wire, ErrorCode::InvalidField, Some("capabilities"))?;
            } else {
                publish(t, &a, &p)?;
                let r = super::profile_kit::get_profile(t, Some(&a), a.handle.as_str())?;
                super::profile_kit::expect_shown(t, &r, &p)?;
            }
            Ok(())
        },
    )
}

fn invalid(i: usize, c: &Value) -> Case {
    let cm = comment(c);
    let input = V::field(c, "input").unwrap_or("").to_owned();
    let code = V::field(c, "error")
        .and_then(ErrorCode::from_wire)
        .unwrap_or(ErrorCode::Internal);
    let field = V::field(c, "field").map(str::to_owned);
    let id = format!("vec.profiles.invalid.{i}");
    if at(c, &["public_key"]).is_some() {
        return recreation(id, &cm, code);
    }
    let reqs: &'static [&'static str] = if super::vectors::is_json_code(code.as_str()) {
        &["PROF-4", "HTTP-2", "VEC-2"]
    } else if code == ErrorCode::UnsupportedVersion {
        &["PROF-1", "PROF-4", "TYPE-15", "VEC-2"]
    } else {
        &["PROF-1", "PROF-3", "PROF-4", "VEC-2"]
    };
    case(
        id,
        reqs,
        format!(
            "profiles.json invalid: {cm}: refused with {}",
            code.as_str()
        ),
        move |e| {
            let t = e.t;
            if input.len() as i64 > dir(t).bytes_max {
                skip!(
                    "the vector is {} bytes, over the relay's directory.profile_bytes_max",
                    input.len()
                );
            }
            let a = sender(e)?;
            refuse_put(t, &a, input.as_bytes(), code, field.as_deref())
        },
    )
    .codes(&[code])
}

/// A verification vector, re-created with the suite's agent by the defect its comment names.
fn recreation(id: String, comment: &str, code: ErrorCode) -> Case {
    let c = comment.to_ascii_lowercase();
    type F = fn(&Env<'_>) -> R;
    let sig: &'static [&'static str] = &["PROF-2", "SIG-3", "PROF-4", "VEC-2"];
    let tag: &'static [&'static str] = &["PROF-2", "SIG-1", "SIG-2", "PROF-4", "VEC-2"];
    let (reqs, f): (&'static [&'static str], F) = if c.contains("bit of the signature") {
        (sig, |e| {
            bad(e, |t, a| {
                flipped(&sign_profile(&super::profile_kit::profile(t, a, 1), &a.key))
            })
        })
    } else if c.contains("name changed after signing") {
        (&["PROF-2", "SIG-2", "PROF-4", "VEC-2"], |e| {
            bad(e, |t, a| {
                let p = sign_profile(&super::profile_kit::profile(t, a, 1), &a.key);
                changed(&p, "name", s("Mallory"))
            })
        })
    } else if c.contains("listed set to true after signing") {
        (&["PROF-2", "SIG-2", "PROF-4", "VEC-2"], |e| {
            bad(e, |t, a| {
                let p = sign_profile(&super::profile_kit::profile(t, a, 1), &a.key);
                changed(&p, "listed", Value::Bool(true))
            })
        })
    } else if c.contains("envelope tag") {
        (tag, |e| {
            bad(e, |t, a| {
                sign_under(
                    &super::profile_kit::profile(t, a, 1),
                    &a.key,
                    Domain::Envelope,
                )
                .wire
            })
        })
    } else if c.contains("descriptor tag") {
        (tag, |e| {
            bad(e, |t, a| {
                sign_under(
                    &super::profile_kit::profile(t, a, 1),
                    &a.key,
                    Domain::Descriptor,
                )
                .wire
            })
        })
    } else if c.contains("different key than the one named") {
        (sig, |e| {
            bad(e, |t, a| {
                sign_profile(&super::profile_kit::profile(t, a, 1), &random_key()).wire
            })
        })
    } else if c.contains("s + l") {
        (sig, |e| {
            bad(e, |t, a| {
                let p = sign_profile(&super::profile_kit::profile(t, a, 1), &a.key);
                let mut sg = at(&p.value, &["sig"])
                    .and_then(Value::as_str)
                    .and_then(formica_protocol::hex::decode_array::<64>)
                    .unwrap_or([0; 64]);
                super::signatures::add_l(&mut sg[32..]);
                changed(&p, "sig", s(&formica_protocol::hex::encode(&sg)))
            })
        })
    } else if c.contains("key other than the one the profile names") {
        (&["PROF-2", "LOG-12", "PROF-4", "VEC-2"], |e| {
            let a = sender(e)?;
            let k = random_key();
            let o = with(
                super::profile_kit::profile(e.t, &a, 1),
                "key",
                s(&k.public().key_id().to_hex()),
            );
            refuse_put(
                e.t,
                &a,
                &sign_profile(&o, &k).wire,
                ErrorCode::UnknownKey,
                None,
            )
        })
    } else {
        (&["VEC-2"], |_| {
            Err(Stop::Skip(
                "no re-creation of this verification vector is known to this version of the suite"
                    .into(),
            ))
        })
    };
    case(
        id,
        reqs,
        format!(
            "profiles.json invalid: {comment}: re-created with the suite's agent, refused with {}",
            code.as_str()
        ),
        f,
    )
    .codes(&[code])
}

/// `p` with `k` set to `v` after signing.
fn changed(p: &Prof, k: &str, v: Value) -> Vec<u8> {
    let mut x = p.value.clone();
    if let Value::Object(o) = &mut x {
        o.insert(k, v);
    }
    canon::canonicalize(&x)
}

/// Sends the profile `make` builds for the sender and requires `bad_signature`.
fn bad(e: &Env<'_>, make: fn(&Target, &Agent) -> Vec<u8>) -> R {
    let a = sender(e)?;
    let body = make(e.t, &a);
    let r = put(e.t, &a, &body)?;
    r.expect_error(ErrorCode::BadSignature)?;
    Ok(())
}
