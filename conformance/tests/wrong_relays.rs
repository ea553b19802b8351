//! The suite can fail: each test puts a tampering proxy in front of a real in-process reference
//! relay so that it behaves like a specific wrong relay, runs the cases of the requirement the
//! wrong behaviour breaks, and asserts that exactly those requirements fail and that the run
//! exits non-zero. A pass-through proxy on the same cases shows that the failures come from the
//! tampering, not from the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::proxy::{Answer, Exchange, Proxy, Rewrite};
use formica_conformance::report::Status;
use formica_conformance::{runner, Report};
use formica_protocol::{
    canon, EnvelopeLimits, ErrorCode, Object, SignedEnvelope, SignedKeyLogEntry, Value,
};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Runs the cases selected by `only` against a relay seen through a proxy that applies
/// `rewrite`.
fn run_through(rewrite: Rewrite, only: &[&str]) -> Report {
    let listener = common::reserve_listener();
    let proxy_addr = listener.local_addr().unwrap();
    // The relay knows itself by the proxy's address, as a relay behind a reverse proxy does.
    let relay = common::InProcessRelay::start(Some(&proxy_addr.to_string()));
    let _proxy = Proxy::start(listener, relay.addr, rewrite);
    let mut opts = runner::Options::new(&format!("http://{proxy_addr}"));
    opts.only = only.iter().map(|s| (*s).to_owned()).collect();
    opts.jobs = 4;
    let rep = runner::run(&opts).expect("the suite runs");
    drop(relay);
    rep
}

fn code_of(ex: &Exchange) -> Option<String> {
    let v = formica_protocol::json::parse_default(&ex.resp_body).ok()?;
    Some(
        v.as_object()?
            .get("error")?
            .as_object()?
            .get("code")?
            .as_str()?
            .to_owned(),
    )
}

fn json(v: Value) -> Vec<u8> {
    canon::canonicalize(&v)
}

fn obj(members: Vec<(&str, Value)>) -> Value {
    let mut o = Object::new();
    for (k, v) in members {
        o.insert(k, v);
    }
    Value::Object(o)
}

/// `201 accepted` for the envelope in the request body.
fn accepted(ex: &Exchange) -> Answer {
    let id = SignedEnvelope::parse(&ex.req_body, &EnvelopeLimits::default())
        .map(|s| s.id().to_hex())
        .unwrap_or_else(|_| "00".repeat(32));
    Answer {
        status: 201,
        body: json(obj(vec![("id", id.into()), ("result", "accepted".into())])),
    }
}

fn failed(rep: &Report, req: &str) -> bool {
    rep.requirements()
        .iter()
        .any(|v| v.id == req && v.status == Status::Fail)
}

fn case_failed(rep: &Report, id: &str) -> bool {
    rep.results
        .iter()
        .any(|r| r.id == id && r.status == Status::Fail)
}

fn summary(rep: &Report) -> String {
    rep.results
        .iter()
        .filter(|r| r.status != Status::Pass)
        .map(|r| format!("{} {}: {}", r.status.as_str(), r.id, r.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Requirements other than `allowed` must not fail: the tampering is caught where it belongs.
fn only_failing(rep: &Report, allowed: &[&str]) {
    let unexpected: Vec<String> = rep
        .requirements()
        .into_iter()
        .filter(|v| {
            v.status == Status::Fail
                && !allowed.contains(&v.id.as_str())
                && !["ERR-1", "ERR-2", "HTTP-4", "HTTP-5", "VEC-2"].contains(&v.id.as_str())
        })
        .map(|v| v.id)
        .collect();
    assert!(
        unexpected.is_empty(),
        "requirements failed that the tampering does not break: {unexpected:?}\n{}",
        summary(rep)
    );
}

const SELECTIONS: &[&str] = &[
    "SIG-3",
    "TIME-1",
    "INGEST-2",
    "ERR-3",
    "POW-5",
    "CONTACT-4",
    "JSON-4",
    "PROF-5",
    "PROF-8",
    "PRES-3",
    "PRES-4",
    "ACK-5",
    "CONVO-8",
];

#[test]
fn a_pass_through_proxy_fails_nothing() {
    let rep = run_through(Arc::new(|_| None), SELECTIONS);
    assert!(rep.must_failures().is_empty(), "{}", summary(&rep));
    assert_eq!(rep.exit_code(), 0);
}

#[test]
fn a_relay_that_accepts_a_bad_signature_fails_sig_3() {
    let rep = run_through(
        Arc::new(|ex: &Exchange| {
            (ex.path == "/v1/envelopes" && code_of(ex).as_deref() == Some("bad_signature"))
                .then(|| accepted(ex))
        }),
        &["SIG-3"],
    );
    assert!(failed(&rep, "SIG-3"), "{}", summary(&rep));
    assert!(case_failed(&rep, "sig.small-order-r"), "{}", summary(&rep));
    assert!(failed(&rep, "ENV-17"), "{}", summary(&rep));
    only_failing(
        &rep,
        &[
            "SIG-3", "ENV-17", "ENV-13", "INGEST-1", "SIG-1", "SIG-2", "ENV-10", "KEY-4", "ENV-11",
        ],
    );
    assert_eq!(rep.exit_code(), 1);
}

#[test]
fn a_relay_that_accepts_a_stale_envelope_fails_time_1() {
    let rep = run_through(
        Arc::new(|ex: &Exchange| {
            (ex.path == "/v1/envelopes" && code_of(ex).as_deref() == Some("stale"))
                .then(|| accepted(ex))
        }),
        &["TIME-1"],
    );
    assert!(failed(&rep, "TIME-1"), "{}", summary(&rep));
    assert!(case_failed(&rep, "env.stale"), "{}", summary(&rep));
    only_failing(&rep, &["TIME-1", "TIME-4", "TIME-5", "ENV-12"]);
    assert_eq!(rep.exit_code(), 1);
}

#[test]
fn a_relay_that_stores_a_replay_twice_fails_dedup() {
    // A duplicate is answered as a new acceptance, and the inbox then holds a second copy.
    let replayed: Arc<Mutex<HashSet<String>>> = Arc::default();
    let r2 = replayed.clone();
    let rewrite: Rewrite = Arc::new(move |ex: &Exchange| {
        if ex.path == "/v1/envelopes" && ex.status == 200 {
            let v = formica_protocol::json::parse_default(&ex.resp_body).ok()?;
            let o = v.as_object()?;
            if o.get("result")?.as_str()? == "duplicate" {
                let id = o.get("id")?.as_str()?.to_owned();
                r2.lock().unwrap().insert(id.clone());
                return Some(Answer {
                    status: 201,
                    body: json(obj(vec![("id", id.into()), ("result", "accepted".into())])),
                });
            }
        }
        if ex.method == "GET"
            && (ex.path == "/v1/inbox" || ex.path.starts_with("/v1/inbox?"))
            && ex.status == 200
        {
            let v = formica_protocol::json::parse(
                &ex.resp_body,
                formica_protocol::JsonLimits {
                    bytes_max: 1 << 26,
                    depth_max: 128,
                },
            )
            .ok()?;
            let mut o = v.as_object()?.clone();
            let items = o.get("items")?.as_array()?.to_vec();
            let seen = r2.lock().unwrap().clone();
            let mut out = Vec::new();
            for it in items {
                let id = it
                    .as_object()
                    .and_then(|x| x.get("envelope"))
                    .and_then(|e| e.as_object())
                    .and_then(|e| e.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                out.push(it.clone());
                if id.is_some_and(|i| seen.contains(&i)) {
                    out.push(it);
                }
            }
            o.insert("items", Value::Array(out));
            return Some(Answer {
                status: 200,
                body: json(Value::Object(o)),
            });
        }
        None
    });
    let rep = run_through(rewrite, &["INGEST-2", "ERR-3"]);
    assert!(
        !replayed.lock().unwrap().is_empty(),
        "the suite never replayed an envelope"
    );
    assert!(failed(&rep, "ERR-3"), "{}", summary(&rep));
    assert!(failed(&rep, "INGEST-2"), "{}", summary(&rep));
    assert!(case_failed(&rep, "env.duplicate"), "{}", summary(&rep));
    only_failing(
        &rep,
        &[
            "ERR-3",
            "INGEST-2",
            "API-7",
            "TIME-3",
            "INGEST-1",
            "CONTACT-5",
            "CONTACT-8",
            "API-15",
            "TYPE-9",
            "LOG-15",
            "API-6",
            "HTTP-7",
        ],
    );
    assert_eq!(rep.exit_code(), 1);
}

#[test]
fn a_relay_that_skips_the_proof_of_work_check_fails_pow_5() {
    let rewrite: Rewrite = Arc::new(|ex: &Exchange| {
        if ex.path != "/v1/register" || code_of(ex).as_deref() != Some("pow_insufficient") {
            return None;
        }
        let body = formica_protocol::json::parse_default(&ex.req_body).ok()?;
        let entry = SignedKeyLogEntry::from_value(body.as_object()?.get("entry")?.clone()).ok()?;
        let key_id = match &entry.entry().op {
            formica_protocol::KeyOp::Register { key, .. } => key.key_id().to_hex(),
            _ => return None,
        };
        Some(Answer {
            status: 201,
            body: json(obj(vec![
                ("handle", entry.entry().handle.as_str().into()),
                ("key_id", key_id.into()),
                ("head", entry.hash().to_hex().into()),
            ])),
        })
    });
    let rep = run_through(rewrite, &["POW-5"]);
    for req in ["POW-5", "POW-3", "POW-4", "POW-7"] {
        assert!(failed(&rep, req), "{req} did not fail:\n{}", summary(&rep));
    }
    only_failing(&rep, &["POW-3", "POW-4", "POW-5", "POW-7", "POW-6"]);
    assert_eq!(rep.exit_code(), 1);
}

#[test]
fn a_relay_that_answers_with_the_wrong_error_code_or_status_fails() {
    // not_contact answered as forbidden (same status), duplicate_key with status 422.
    let rewrite: Rewrite = Arc::new(|ex: &Exchange| {
        let code = code_of(ex)?;
        let v = formica_protocol::json::parse_default(&ex.resp_body).ok()?;
        let mut err = v.as_object()?.get("error")?.as_object()?.clone();
        let status = if code == ErrorCode::NotContact.as_str() {
            err.insert("code", ErrorCode::Forbidden.as_str().into());
            ex.status
        } else if code == ErrorCode::DuplicateKey.as_str() {
            422
        } else {
            return None;
        };
        Some(Answer {
            status,
            body: json(obj(vec![("error", Value::Object(err))])),
        })
    });
    let rep = run_through(rewrite, &["CONTACT-4", "JSON-4"]);
    assert!(failed(&rep, "CONTACT-4"), "{}", summary(&rep));
    assert!(failed(&rep, "JSON-4"), "{}", summary(&rep));
    assert!(
        failed(&rep, "HTTP-5") && failed(&rep, "ERR-1"),
        "{}",
        summary(&rep)
    );
    only_failing(
        &rep,
        &[
            "CONTACT-4",
            "CONTACT-1",
            "JSON-4",
            "JSON-9",
            "JSON-11",
            "INGEST-1",
            "INGEST-3",
            // conv.call-contact: a call needs the level message (CONTACT-4 through TYPE-14).
            "TYPE-14",
            "CONVO-5",
            // seal.contacts: the contact rules apply to a sealed envelope by its type.
            "SEAL-2",
        ],
    );
    assert_eq!(rep.exit_code(), 1);
}

#[test]
fn a_relay_that_accepts_an_outdated_profile_fails_prof_5() {
    // profile_outdated answered as a stored profile (the relay behind still keeps the newer one).
    let rewrite: Rewrite = Arc::new(|ex: &Exchange| {
        if ex.path != "/v1/profile" || code_of(ex).as_deref() != Some("profile_outdated") {
            return None;
        }
        let p = formica_protocol::SignedProfile::parse(
            &ex.req_body,
            formica_protocol::JsonLimits::default(),
        )
        .ok()?;
        let p = p.profile();
        Some(Answer {
            status: 200,
            body: json(obj(vec![
                ("handle", p.handle.as_str().into()),
                ("seq", Value::Int(p.seq)),
                ("listed", Value::Bool(p.listed)),
                ("expires", Value::Int(p.expires)),
                ("result", "stored".into()),
            ])),
        })
    });
    let rep = run_through(rewrite, &["PROF-5"]);
    assert!(failed(&rep, "PROF-5"), "{}", summary(&rep));
    assert!(case_failed(&rep, "prof.seq"), "{}", summary(&rep));
    only_failing(&rep, &["PROF-4", "PROF-5", "PROF-6", "PROF-8", "PROF-9"]);
    assert_eq!(rep.exit_code(), 1);
}

#[test]
fn a_relay_whose_hidden_profile_answers_differ_fails_prof_8() {
    // A 404 of the profile endpoints that names the handle asked for: an unlisted agent's answer
    // then differs from an unregistered handle's, which tells a stranger what PROF-8 hides.
    let rewrite: Rewrite = Arc::new(|ex: &Exchange| {
        if !ex.path.starts_with("/v1/profiles/") || code_of(ex).as_deref() != Some("not_found") {
            return None;
        }
        let v = formica_protocol::json::parse_default(&ex.resp_body).ok()?;
        let mut err = v.as_object()?.get("error")?.as_object()?.clone();
        err.insert(
            "message",
            format!("no profile shown for {}", ex.path).into(),
        );
        Some(Answer {
            status: ex.status,
            body: json(obj(vec![("error", Value::Object(err))])),
        })
    });
    let rep = run_through(rewrite, &["PROF-8"]);
    assert!(failed(&rep, "PROF-8"), "{}", summary(&rep));
    assert!(case_failed(&rep, "prof.hidden"), "{}", summary(&rep));
    // A hidden presence is answered as PROF-8's 404 (PRES-4), which the tampering changed too.
    only_failing(
        &rep,
        &[
            "PROF-5", "PROF-6", "PROF-7", "PROF-8", "PROF-9", "PROF-10", "API-14", "API-18",
            "PRES-4", "API-21", "HTTP-9",
        ],
    );
    assert_eq!(rep.exit_code(), 1);
}

#[test]
fn a_relay_that_accepts_an_outdated_status_fails_pres_3() {
    // status_outdated answered as a stored status (the relay behind still holds the newer one).
    let rewrite: Rewrite = Arc::new(|ex: &Exchange| {
        if ex.path != "/v1/presence" || code_of(ex).as_deref() != Some("status_outdated") {
            return None;
        }
        let s = formica_protocol::SignedStatus::parse(
            &ex.req_body,
            formica_protocol::JsonLimits::default(),
        )
        .ok()?;
        let s = s.status();
        Some(Answer {
            status: 200,
            body: json(obj(vec![
                ("handle", s.handle.as_str().into()),
                ("status", s.status.as_str().into()),
                ("expires", Value::Int(s.expires)),
                ("result", "stored".into()),
            ])),
        })
    });
    let rep = run_through(rewrite, &["PRES-3"]);
    assert!(failed(&rep, "PRES-3"), "{}", summary(&rep));
    assert!(case_failed(&rep, "pres.set"), "{}", summary(&rep));
    assert!(case_failed(&rep, "pres.check-order"), "{}", summary(&rep));
    only_failing(
        &rep,
        &[
            "PRES-2", "PRES-3", "PRES-4", "API-19", "HTTP-2", "HTTP-3", "TIME-1", "TIME-2",
        ],
    );
    assert_eq!(rep.exit_code(), 1);
}

#[test]
fn a_relay_whose_hidden_presence_answers_differ_fails_pres_4() {
    // A 404 of the presence endpoint that names the handle asked for: a hidden agent's answer
    // then differs from PROF-8's, which tells a stranger what PRES-4 hides.
    let rewrite: Rewrite = Arc::new(|ex: &Exchange| {
        if !ex.path.starts_with("/v1/presence/") || code_of(ex).as_deref() != Some("not_found") {
            return None;
        }
        let v = formica_protocol::json::parse_default(&ex.resp_body).ok()?;
        let mut err = v.as_object()?.get("error")?.as_object()?.clone();
        err.insert(
            "message",
            format!("no presence shown for {}", ex.path).into(),
        );
        Some(Answer {
            status: ex.status,
            body: json(obj(vec![("error", Value::Object(err))])),
        })
    });
    let rep = run_through(rewrite, &["PRES-4"]);
    assert!(failed(&rep, "PRES-4"), "{}", summary(&rep));
    assert!(case_failed(&rep, "pres.visibility"), "{}", summary(&rep));
    only_failing(&rep, &["PRES-4", "API-21", "PROF-8", "HTTP-9"]);
    assert_eq!(rep.exit_code(), 1);
}

#[test]
fn a_relay_that_lets_a_child_request_outlive_its_parent_fails_ack_5() {
    // deadline_after_parent answered as accepted (the relay behind stored nothing).
    let rewrite: Rewrite = Arc::new(|ex: &Exchange| {
        if ex.path != "/v1/envelopes" || code_of(ex).as_deref() != Some("deadline_after_parent") {
            return None;
        }
        Some(accepted(ex))
    });
    let rep = run_through(rewrite, &["ACK-5"]);
    assert!(failed(&rep, "ACK-5"), "{}", summary(&rep));
    assert!(case_failed(&rep, "ack.cascade"), "{}", summary(&rep));
    only_failing(&rep, &["ACK-5", "INGEST-1"]);
    assert_eq!(rep.exit_code(), 1);
}

#[test]
fn a_relay_that_lets_a_non_participant_post_fails_convo_8() {
    // not_participant answered as accepted (the relay behind stored nothing).
    let rewrite: Rewrite = Arc::new(|ex: &Exchange| {
        if ex.path != "/v1/envelopes" || code_of(ex).as_deref() != Some("not_participant") {
            return None;
        }
        Some(accepted(ex))
    });
    let rep = run_through(rewrite, &["CONVO-8"]);
    assert!(failed(&rep, "CONVO-8"), "{}", summary(&rep));
    assert!(case_failed(&rep, "conv.posts"), "{}", summary(&rep));
    // The cases that run under CONVO-8 also check the rules of the actions and the entries
    // they make; a post accepted against the rules breaks those too.
    only_failing(
        &rep,
        &[
            "CONVO-2",
            "CONVO-4",
            "CONVO-5",
            "CONVO-6",
            "CONVO-8",
            "ENV-16",
            "CONTACT-1",
        ],
    );
    assert_eq!(rep.exit_code(), 1);
}
