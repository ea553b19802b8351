//! Cases driven by `presence.json` (`vec.presence.*`, VEC-2):
//! - `valid`: the same status content, set by the suite's own agent (its handle and key, a fresh
//!   `ts` and the vector's lifetime within the relay's), is stored and served to the agent as
//!   signed while in force (`signed` null once expired).
//! - `invalid` without `public_key`: sent as is (the relay must refuse it at the schema step of
//!   PRES-3, before it looks at the vector's handle, which is not the sender's) with the vector's
//!   code and `field`.
//! - `invalid` with `public_key`: re-created with the suite's agent, with the same defect.

use super::presence_kit::{
    pres, put_status, refuse_status, seen_by, set_status, sign_status, status, Seen,
};
use super::profile_kit::{flipped, sign_under, Prof};
use super::*;
use crate::case::{case, Env};
use crate::target::random_key;
use crate::vectors as V;

pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (i, c) in V::list(V::presence(), "valid").iter().enumerate() {
        v.push(valid(i, c));
    }
    for (i, c) in V::list(V::presence(), "invalid").iter().enumerate() {
        v.push(invalid(i, c));
    }
    v
}

fn comment(c: &Value) -> String {
    V::field(c, "comment").unwrap_or("").to_owned()
}

/// The agent that sends the refused vectors (nothing it sends is stored).
fn sender(e: &Env<'_>) -> R<std::sync::Arc<Agent>> {
    e.fixture("presence-vectors", |t| t.register("psvec"))
}

fn valid(i: usize, c: &Value) -> Case {
    let cm = comment(c);
    let doc = at(c, &["status"]).cloned().unwrap_or(Value::Null);
    case(
        format!("vec.presence.valid.{i}"),
        &["PRES-2", "PRES-3", "API-19", "PRES-4", "VEC-2"],
        format!("presence.json valid: {cm}: the same status, set by the suite's agent, is stored and served to it as signed while in force"),
        move |e| {
            let t = e.t;
            let Some(mut o) = doc.as_object().cloned() else {
                fail!("presence.json: the vector's status is not an object");
            };
            let a = t.register("psvecv")?;
            let life = o.get("expires").and_then(Value::as_i64).unwrap_or(0)
                - o.get("ts").and_then(Value::as_i64).unwrap_or(0);
            let life = life.clamp(1, pres(t).status_ttl_ms_max.max(1));
            let ts = t.now();
            o.insert("handle", s(a.handle.as_str()));
            o.insert("key", s(&a.key.public().key_id().to_hex()));
            o.insert("ts", int(ts));
            o.insert("expires", int(ts + life));
            let p = sign_status(&o, &a.key);
            set_status(t, &a, &p)?;
            if life < 60_000 {
                // Read it once it has expired: `signed` is the status in force, or null.
                while t.now() < ts + life + 1000 {
                    sleep_ms(100);
                }
                seen_by(t, &a, &a, Seen::Full("offline", None))?;
            } else {
                seen_by(t, &a, &a, Seen::Full("offline", Some(&p)))?;
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
    let id = format!("vec.presence.invalid.{i}");
    if at(c, &["public_key"]).is_some() {
        return recreation(id, &cm, code);
    }
    let reqs: &'static [&'static str] = if super::vectors::is_json_code(code.as_str()) {
        &["PRES-3", "HTTP-2", "VEC-2"]
    } else if code == ErrorCode::UnsupportedVersion {
        &["PRES-2", "PRES-3", "TYPE-15", "VEC-2"]
    } else {
        &["PRES-2", "PRES-3", "VEC-2"]
    };
    case(
        id,
        reqs,
        format!(
            "presence.json invalid: {cm}: refused with {}",
            code.as_str()
        ),
        move |e| {
            let t = e.t;
            let a = sender(e)?;
            refuse_status(t, &a, input.as_bytes(), code, field.as_deref())
        },
    )
    .codes(&[code])
}

/// A verification vector, re-created with the suite's agent by the defect its comment names.
fn recreation(id: String, comment: &str, code: ErrorCode) -> Case {
    let c = comment.to_ascii_lowercase();
    type F = fn(&Env<'_>) -> R;
    let sig: &'static [&'static str] = &["PRES-2", "SIG-3", "PRES-3", "VEC-2"];
    let tag: &'static [&'static str] = &["PRES-2", "SIG-1", "SIG-2", "PRES-3", "VEC-2"];
    let changed_after: &'static [&'static str] = &["PRES-2", "SIG-2", "PRES-3", "VEC-2"];
    let (reqs, f): (&'static [&'static str], F) = if c.contains("bit of the signature") {
        (sig, |e| {
            bad(e, |t, a| {
                flipped(&sign_status(&status(t, a, "busy"), &a.key))
            })
        })
    } else if c.contains("status changed") && c.contains("after signing") {
        (changed_after, |e| {
            bad(e, |t, a| {
                changed(
                    &sign_status(&status(t, a, "busy"), &a.key),
                    "status",
                    s("away"),
                )
            })
        })
    } else if c.contains("note added after signing") {
        (changed_after, |e| {
            bad(e, |t, a| {
                changed(
                    &sign_status(&status(t, a, "busy"), &a.key),
                    "note",
                    s("In a meeting"),
                )
            })
        })
    } else if c.contains("profile tag") {
        (tag, |e| {
            bad(e, |t, a| {
                sign_under(&status(t, a, "busy"), &a.key, Domain::Profile).wire
            })
        })
    } else if c.contains("envelope tag") {
        (tag, |e| {
            bad(e, |t, a| {
                sign_under(&status(t, a, "busy"), &a.key, Domain::Envelope).wire
            })
        })
    } else if c.contains("different key than the one named") {
        (sig, |e| {
            bad(e, |t, a| {
                sign_status(&status(t, a, "busy"), &random_key()).wire
            })
        })
    } else if c.contains("s + l") {
        (sig, |e| {
            bad(e, |t, a| {
                let p = sign_status(&status(t, a, "busy"), &a.key);
                let mut sg = at(&p.value, &["sig"])
                    .and_then(Value::as_str)
                    .and_then(formica_protocol::hex::decode_array::<64>)
                    .unwrap_or([0; 64]);
                super::signatures::add_l(&mut sg[32..]);
                changed(&p, "sig", s(&formica_protocol::hex::encode(&sg)))
            })
        })
    } else if c.contains("key other than the one the status names") {
        (&["PRES-2", "LOG-12", "PRES-3", "VEC-2"], |e| {
            let a = sender(e)?;
            let k = random_key();
            let o = with(
                status(e.t, &a, "busy"),
                "key",
                s(&k.public().key_id().to_hex()),
            );
            refuse_status(
                e.t,
                &a,
                &sign_status(&o, &k).wire,
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
            "presence.json invalid: {comment}: re-created with the suite's agent, refused with {}",
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

/// Sends the status `make` builds for the sender and requires `bad_signature`.
fn bad(e: &Env<'_>, make: fn(&Target, &Agent) -> Vec<u8>) -> R {
    let a = sender(e)?;
    let body = make(e.t, &a);
    let r = put_status(e.t, &a, &body)?;
    r.expect_error(ErrorCode::BadSignature)?;
    Ok(())
}
