//! Runs every vector file under `protocol-spec/vectors/` against this crate, the way a
//! third-party implementation would: only the files' contents decide what is expected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{envelope_error_field, load, Get};
use formica_protocol::auth::{body_digest, RelayAuth, RequestAuth, RequestTarget};
use formica_protocol::canon::canonicalize;
use formica_protocol::envelope::{EnvelopeLimits, SignedEnvelope};
use formica_protocol::hex;
use formica_protocol::json::{self, JsonLimits, Value};
use formica_protocol::keylog::{KeyLog, SignedKeyLogEntry};
use formica_protocol::keys::{PublicKey, SecretKey, Signature};
use formica_protocol::pow;
use formica_protocol::presence::{SignedStatus, StatusError};
use formica_protocol::profile::{ProfileError, SignedProfile};
use formica_protocol::schema::SchemaError;
use formica_protocol::{Handle, KeyId, RelayHost};

fn input_bytes(case: &Value) -> Vec<u8> {
    match case.opt("input") {
        Some(Value::String(t)) => t.as_bytes().to_vec(),
        _ => hex::decode(case.str_("input_hex")).unwrap(),
    }
}

#[test]
fn canon_vectors() {
    let file = load("canon.json");
    let cases = file.list("cases");
    assert!(cases.len() >= 50);
    for case in cases {
        let comment = case.str_("comment");
        let got = json::parse(&input_bytes(case), JsonLimits::default());
        match (case.opt("canonical"), got) {
            (Some(want), Ok(v)) => {
                let bytes = canonicalize(&v);
                assert_eq!(
                    std::str::from_utf8(&bytes).unwrap(),
                    want.as_str().unwrap(),
                    "{comment}"
                );
                // CANON-4: the canonical form is a fixed point.
                let again = canonicalize(&json::parse(&bytes, JsonLimits::default()).unwrap());
                assert_eq!(again, bytes, "{comment}: not idempotent");
            }
            (None, Err(e)) => assert_eq!(e.code().as_str(), case.str_("error"), "{comment}: {e}"),
            (want, got) => panic!("{comment}: want {want:?}, got {got:?}"),
        }
    }
}

/// The RFC 8785 reference inputs: everything our profile admits must match the reference
/// output byte for byte; inputs with fractions must be refused with float_not_allowed, never
/// altered.
#[test]
fn external_jcs_vectors() {
    let dir = common::vectors_dir().join("external/jcs");
    let mut matched = 0;
    let mut refused = 0;
    for entry in std::fs::read_dir(dir.join("input")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        let input = std::fs::read(&path).unwrap();
        let want = std::fs::read(dir.join("output").join(&name)).unwrap();
        match json::parse(&input, JsonLimits::default()) {
            Ok(v) => {
                assert_eq!(canonicalize(&v), want, "{name:?}");
                matched += 1;
            }
            Err(e) => {
                assert_eq!(e.code().as_str(), "float_not_allowed", "{name:?}: {e}");
                refused += 1;
            }
        }
    }
    assert_eq!(
        (matched, refused),
        (4, 2),
        "expected 4 matching inputs and 2 with floats"
    );
}

#[test]
fn handle_vectors() {
    let file = load("handles.json");
    for case in file.list("valid") {
        let h = Handle::parse(case.str_("handle")).unwrap_or_else(|e| panic!("{case:?}: {e}"));
        assert_eq!(h.as_str(), case.str_("handle"));
        assert_eq!(
            h.name().is_reserved(),
            case.get("reserved").as_bool().unwrap(),
            "{case:?}"
        );
    }
    for case in file.list("invalid") {
        let e = Handle::parse(case.str_("handle")).expect_err(case.str_("comment"));
        assert_eq!(e.code().as_str(), case.str_("error"));
    }
}

#[test]
fn envelope_valid_vectors() {
    let file = load("envelopes_valid.json");
    for case in file.list("cases") {
        let comment = case.str_("comment");
        let seed: [u8; 32] = hex::decode_array(case.str_("seed_hex")).unwrap();
        let sk = SecretKey::from_seed(&seed);
        assert_eq!(sk.public().to_hex(), case.str_("public_key"), "{comment}");
        assert_eq!(
            sk.public().key_id().to_hex(),
            case.str_("key_id"),
            "{comment}"
        );
        // The signing input is the tag and the canonical form of `envelope`.
        let mut want_input = case.str_("domain").as_bytes().to_vec();
        want_input.push(0);
        want_input.extend(canonicalize(case.get("envelope")));
        assert_eq!(
            hex::encode(&want_input),
            case.str_("signing_input_hex"),
            "{comment}"
        );
        assert_eq!(
            hex::encode(blake3::hash(&want_input).as_bytes()),
            case.str_("id"),
            "{comment}"
        );
        // Ed25519 is deterministic: signing again gives the vector's signature.
        assert_eq!(
            sk.sign_input(&want_input).to_hex(),
            case.str_("sig"),
            "{comment}"
        );
        // The wire form parses, has that id and verifies.
        let se = SignedEnvelope::parse(case.str_("wire").as_bytes(), &EnvelopeLimits::default())
            .unwrap_or_else(|e| panic!("{comment}: {e}"));
        assert_eq!(se.id().to_hex(), case.str_("id"));
        assert_eq!(se.signing_input(), want_input.as_slice());
        assert_eq!(
            se.envelope().to_value(),
            *case.get("envelope"),
            "{comment}: typed round trip"
        );
        let key = PublicKey::parse_hex(case.str_("public_key")).unwrap();
        let v = se.verify(&key).unwrap_or_else(|e| panic!("{comment}: {e}"));
        assert_eq!(v.wire_bytes(), case.str_("wire").as_bytes());
        // Submitting without `id` gives the same envelope.
        let mut no_id = json::parse(case.str_("wire").as_bytes(), JsonLimits::default()).unwrap();
        if let Value::Object(o) = &mut no_id {
            o.remove("id");
        }
        let se2 = SignedEnvelope::from_value(no_id, &EnvelopeLimits::default()).unwrap();
        assert_eq!(se2.id().to_hex(), case.str_("id"));
    }
}

#[test]
fn envelope_invalid_vectors() {
    let file = load("envelopes_invalid.json");
    for case in file.list("cases") {
        let comment = case.str_("comment");
        let res = SignedEnvelope::parse(case.str_("input").as_bytes(), &EnvelopeLimits::default());
        let err = match (res, case.opt("public_key")) {
            (Err(e), None) => e,
            (Ok(_), None) => panic!("{comment}: accepted"),
            (Err(e), Some(_)) => panic!("{comment}: refused before verification: {e}"),
            (Ok(se), Some(k)) => {
                let key = PublicKey::parse_hex(k.as_str().unwrap()).unwrap();
                se.verify(&key).expect_err(comment)
            }
        };
        assert_eq!(err.code().as_str(), case.str_("error"), "{comment}: {err}");
    }
}

fn parse_entries(entries: &[Value]) -> Result<Vec<SignedKeyLogEntry>, String> {
    entries
        .iter()
        .map(|e| SignedKeyLogEntry::from_value(e.clone()).map_err(|e| e.code().as_str().to_owned()))
        .collect()
}

#[test]
fn keylog_vectors() {
    let file = load("keylogs.json");
    for case in file.list("valid") {
        let comment = case.str_("comment");
        let log = KeyLog::verify(parse_entries(case.list("entries")).unwrap())
            .unwrap_or_else(|e| panic!("{comment}: {e}"));
        assert_eq!(log.head().hash().to_hex(), case.str_("head"), "{comment}");
        // Every prefix rebuilt without re-checking signatures equals the prefix verified anew,
        // and every entry is signed by a key the log named.
        let entries = log.entries().to_vec();
        for n in 1..=entries.len() {
            assert_eq!(
                log.prefix(n),
                Some(KeyLog::verify(entries[..n].to_vec()).unwrap()),
                "{comment}: prefix {n}"
            );
        }
        assert_eq!(log.prefix(0), None);
        assert_eq!(log.prefix(entries.len() + 1), None);
        assert!(
            entries.iter().all(|e| log.signed_by_one_of_its_keys(e)),
            "{comment}"
        );
        assert_eq!(
            log.current_key().map(|k| k.to_hex()),
            case.get("current_key").as_str().map(str::to_owned),
            "{comment}"
        );
        for q in case.list("queries") {
            let kid = KeyId::parse_hex(q.str_("key_id")).unwrap();
            let ts = q.get("ts").as_i64().unwrap();
            let got = match log.key_at(&kid, ts) {
                Ok(k) => k.to_hex(),
                Err(e) => e.code().as_str().to_owned(),
            };
            assert_eq!(got, q.str_("result"), "{comment}: {q:?}");
        }
        // Appending entry by entry reaches the same state as verifying the whole log.
        let entries = parse_entries(case.list("entries")).unwrap();
        let mut inc = KeyLog::start(entries[0].clone()).unwrap();
        for e in &entries[1..] {
            inc.append(e.clone()).unwrap();
        }
        assert_eq!(inc, log);
    }
    for case in file.list("invalid") {
        let comment = case.str_("comment");
        let got = parse_entries(case.list("entries"))
            .and_then(|es| KeyLog::verify(es).map_err(|e| e.code().as_str().to_owned()));
        match got {
            Err(code) => assert_eq!(code, case.str_("error"), "{comment}"),
            Ok(_) => panic!("{comment}: accepted"),
        }
    }
}

#[test]
fn pow_vectors() {
    let file = load("pow.json");
    for case in file.list("cases") {
        let comment = case.str_("comment");
        let relay = RelayHost::parse(case.str_("relay")).unwrap();
        let handle = Handle::parse(case.str_("handle")).unwrap();
        let key = PublicKey::parse_hex(case.str_("key")).unwrap();
        let ch = pow::Challenge::parse_hex(case.str_("challenge")).unwrap();
        let d = case.get("difficulty").as_i64().unwrap() as u32;
        let prefix = pow::preimage_prefix(&relay, &handle, &key, &ch, d);
        assert_eq!(hex::encode(&prefix), case.str_("prefix_hex"), "{comment}");
        let nonce = case.get("nonce").as_i64().unwrap() as u64;
        let hash = pow::pow_hash(&prefix, nonce);
        assert_eq!(hex::encode(&hash), case.str_("hash_hex"), "{comment}");
        assert_eq!(
            i64::from(pow::leading_zero_bits(&hash)),
            case.get("zero_bits").as_i64().unwrap()
        );
        let proof = pow::PowProof {
            challenge: ch,
            difficulty: d,
            nonce,
        };
        let required = case.get("required").as_i64().unwrap() as u32;
        let got = match pow::check(&prefix, &proof, required) {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.code().as_str().to_owned(),
        };
        assert_eq!(got, case.str_("result"), "{comment}");
    }
}

#[test]
fn auth_vectors() {
    let file = load("auth.json");
    for case in file.list("valid") {
        let comment = case.str_("comment");
        let seed: [u8; 32] = hex::decode_array(case.str_("seed_hex")).unwrap();
        let sk = SecretKey::from_seed(&seed);
        let aud = RelayHost::parse(case.str_("aud")).unwrap();
        let target = RequestTarget {
            method: case.str_("method"),
            path: case.str_("path"),
            body: case.str_("body").as_bytes(),
        };
        assert_eq!(body_digest(target.body), case.str_("body_digest"));
        let parsed =
            RequestAuth::parse(case.str_("header")).unwrap_or_else(|e| panic!("{comment}: {e}"));
        assert_eq!(parsed.handle.as_str(), case.str_("handle"));
        assert_eq!(
            hex::encode(&parsed.signing_input(&target, &aud)),
            case.str_("signing_input_hex"),
            "{comment}"
        );
        parsed.verify(&sk.public(), &target, &aud).unwrap();
        let remade = RequestAuth::sign(&sk, &parsed.handle, parsed.ts, parsed.nonce, &target, &aud);
        assert_eq!(remade, case.str_("header"));
    }
    for case in file.list("invalid") {
        let comment = case.str_("comment");
        let key = PublicKey::parse_hex(case.str_("public_key")).unwrap();
        let aud = RelayHost::parse(case.str_("aud")).unwrap();
        let target = RequestTarget {
            method: case.str_("method"),
            path: case.str_("path"),
            body: case.str_("body").as_bytes(),
        };
        let e = RequestAuth::parse(case.str_("header"))
            .and_then(|p| p.verify(&key, &target, &aud))
            .expect_err(comment);
        assert_eq!(e.code().as_str(), case.str_("error"), "{comment}: {e}");
    }
    for case in file.list("relay_valid") {
        let key = PublicKey::parse_hex(case.str_("public_key")).unwrap();
        let dest = RelayHost::parse(case.str_("dest")).unwrap();
        let target = RequestTarget {
            method: case.str_("method"),
            path: case.str_("path"),
            body: case.str_("body").as_bytes(),
        };
        let parsed = RelayAuth::parse(case.str_("header")).unwrap();
        assert_eq!(
            hex::encode(&parsed.signing_input(&target)),
            case.str_("signing_input_hex")
        );
        parsed.verify(&key, &target, &dest).unwrap();
        // The same header presented to another relay is refused.
        let other = RelayHost::parse("relay-c.example").unwrap();
        assert_eq!(
            parsed
                .verify(&key, &target, &other)
                .unwrap_err()
                .code()
                .as_str(),
            "wrong_relay"
        );
    }
    for case in file.list("relay_invalid") {
        let comment = case.str_("comment");
        let key = PublicKey::parse_hex(case.str_("public_key")).unwrap();
        let dest = RelayHost::parse(case.str_("dest")).unwrap();
        let target = RequestTarget {
            method: case.str_("method"),
            path: case.str_("path"),
            body: case.str_("body").as_bytes(),
        };
        let e = RelayAuth::parse(case.str_("header"))
            .and_then(|p| p.verify(&key, &target, &dest))
            .expect_err(comment);
        assert_eq!(e.code().as_str(), case.str_("error"), "{comment}: {e}");
    }
}

#[test]
fn ed25519_vectors() {
    let file = load("ed25519.json");
    let mut accepted = Vec::new();
    for case in file.list("cases") {
        let n = case.get("index").as_i64().unwrap();
        let msg = hex::decode(case.str_("message")).unwrap();
        let key = PublicKey::parse_hex(case.str_("pub_key"));
        let key_result = match &key {
            Ok(_) => "ok",
            Err(e) => e.code().as_str(),
        };
        assert_eq!(key_result, case.str_("key_result"), "case {n}");
        let accept = match (key, Signature::parse_hex(case.str_("signature"))) {
            (Ok(k), Ok(sig)) => k.verify_input(&msg, &sig).is_ok(),
            _ => false,
        };
        assert_eq!(accept, case.get("accept").as_bool().unwrap(), "case {n}");
        if accept {
            accepted.push(n);
        }
    }
    // Of the paper's cases 0-11, strict verification accepts only case 3.
    assert_eq!(accepted, vec![3]);
}

/// The path a profile's schema error names (the `field` of its HTTP-4 answer).
fn profile_error_field(e: &ProfileError) -> Option<&str> {
    match e {
        ProfileError::Schema(
            SchemaError::UnknownField { path }
            | SchemaError::MissingField { path }
            | SchemaError::InvalidField { path, .. }
            | SchemaError::InvalidHandle { path, .. }
            | SchemaError::InvalidKey { path, .. },
        ) => Some(path),
        _ => None,
    }
}

#[test]
fn profile_vectors() {
    let file = load("profiles.json");
    let valid = file.list("valid");
    assert!(valid.len() >= 4);
    for case in valid {
        let comment = case.str_("comment");
        let seed: [u8; 32] = hex::decode_array(case.str_("seed_hex")).unwrap();
        let sk = SecretKey::from_seed(&seed);
        assert_eq!(sk.public().to_hex(), case.str_("public_key"), "{comment}");
        assert_eq!(
            sk.public().key_id().to_hex(),
            case.str_("key_id"),
            "{comment}"
        );
        // PROF-2: the profile tag, then the canonical form of `profile`.
        let mut want_input = b"formica/v1/profile\0".to_vec();
        want_input.extend(canonicalize(case.get("profile")));
        assert_eq!(
            hex::encode(&want_input),
            case.str_("signing_input_hex"),
            "{comment}"
        );
        assert_eq!(
            sk.sign_input(&want_input).to_hex(),
            case.str_("sig"),
            "{comment}"
        );
        // The wire form is the canonical form of the profile with `sig`; it parses and verifies.
        let mut whole = case.get("profile").clone();
        if let Value::Object(o) = &mut whole {
            o.insert("sig", Value::String(case.str_("sig").to_owned()));
        }
        assert_eq!(
            canonicalize(&whole),
            case.str_("wire").as_bytes(),
            "{comment}"
        );
        let sp = SignedProfile::parse(case.str_("wire").as_bytes(), JsonLimits::default())
            .unwrap_or_else(|e| panic!("{comment}: {e}"));
        assert_eq!(sp.signing_input(), want_input.as_slice(), "{comment}");
        assert_eq!(sp.wire(), case.str_("wire").as_bytes(), "{comment}");
        assert_eq!(*sp.value(), whole, "{comment}");
        let key = PublicKey::parse_hex(case.str_("public_key")).unwrap();
        sp.verify(&key).unwrap_or_else(|e| panic!("{comment}: {e}"));
        assert_eq!(sp.profile().key.to_hex(), case.str_("key_id"), "{comment}");
        // Typed round trip: the members as read, optional ones left out when at their default.
        let mut typed = case.get("profile").clone();
        if let Value::Object(o) = &mut typed {
            if o.get("listed") == Some(&Value::Bool(false)) {
                o.remove("listed");
            }
        }
        assert_eq!(
            sp.profile().to_value(),
            typed,
            "{comment}: typed round trip"
        );
    }
    let invalid = file.list("invalid");
    assert!(invalid.len() >= 30);
    for case in invalid {
        let comment = case.str_("comment");
        let res = SignedProfile::parse(case.str_("input").as_bytes(), JsonLimits::default());
        let err = match (res, case.opt("public_key")) {
            (Err(e), None) => e,
            (Ok(_), None) => panic!("{comment}: accepted"),
            (Err(e), Some(_)) => panic!("{comment}: refused before verification: {e}"),
            (Ok(sp), Some(k)) => {
                let key = PublicKey::parse_hex(k.as_str().unwrap()).unwrap();
                sp.verify(&key).expect_err(comment)
            }
        };
        assert_eq!(err.code().as_str(), case.str_("error"), "{comment}: {err}");
        assert_eq!(
            profile_error_field(&err),
            case.opt("field").and_then(Value::as_str),
            "{comment}: {err}"
        );
    }
}

/// The path a status's schema error names (the `field` of its HTTP-4 answer).
fn status_error_field(e: &StatusError) -> Option<&str> {
    match e {
        StatusError::Schema(
            SchemaError::UnknownField { path }
            | SchemaError::MissingField { path }
            | SchemaError::InvalidField { path, .. }
            | SchemaError::InvalidHandle { path, .. }
            | SchemaError::InvalidKey { path, .. },
        ) => Some(path),
        _ => None,
    }
}

#[test]
fn presence_vectors() {
    let file = load("presence.json");
    let valid = file.list("valid");
    assert!(valid.len() >= 5);
    let mut seen = std::collections::BTreeSet::new();
    for case in valid {
        let comment = case.str_("comment");
        let seed: [u8; 32] = hex::decode_array(case.str_("seed_hex")).unwrap();
        let sk = SecretKey::from_seed(&seed);
        assert_eq!(sk.public().to_hex(), case.str_("public_key"), "{comment}");
        assert_eq!(
            sk.public().key_id().to_hex(),
            case.str_("key_id"),
            "{comment}"
        );
        // PRES-2: the presence tag, then the canonical form of `status`.
        let mut want_input = b"formica/v1/presence\0".to_vec();
        want_input.extend(canonicalize(case.get("status")));
        assert_eq!(
            hex::encode(&want_input),
            case.str_("signing_input_hex"),
            "{comment}"
        );
        assert_eq!(
            sk.sign_input(&want_input).to_hex(),
            case.str_("sig"),
            "{comment}"
        );
        // The wire form is the canonical form of the status with `sig`; it parses and verifies.
        let mut whole = case.get("status").clone();
        if let Value::Object(o) = &mut whole {
            o.insert("sig", Value::String(case.str_("sig").to_owned()));
        }
        assert_eq!(
            canonicalize(&whole),
            case.str_("wire").as_bytes(),
            "{comment}"
        );
        let ss = SignedStatus::parse(case.str_("wire").as_bytes(), JsonLimits::default())
            .unwrap_or_else(|e| panic!("{comment}: {e}"));
        assert_eq!(ss.signing_input(), want_input.as_slice(), "{comment}");
        assert_eq!(ss.wire(), case.str_("wire").as_bytes(), "{comment}");
        let key = PublicKey::parse_hex(case.str_("public_key")).unwrap();
        ss.verify(&key).unwrap_or_else(|e| panic!("{comment}: {e}"));
        assert_eq!(ss.status().key.to_hex(), case.str_("key_id"), "{comment}");
        // Typed round trip: the members as read.
        assert_eq!(
            &ss.status().to_value(),
            case.get("status"),
            "{comment}: typed round trip"
        );
        seen.insert(ss.status().status.as_str());
    }
    // Each status an agent may sign appears among the valid cases.
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec!["available", "away", "busy"]
    );
    let invalid = file.list("invalid");
    assert!(invalid.len() >= 25);
    for case in invalid {
        let comment = case.str_("comment");
        let res = SignedStatus::parse(case.str_("input").as_bytes(), JsonLimits::default());
        let err = match (res, case.opt("public_key")) {
            (Err(e), None) => e,
            (Ok(_), None) => panic!("{comment}: accepted"),
            (Err(e), Some(_)) => panic!("{comment}: refused before verification: {e}"),
            (Ok(ss), Some(k)) => {
                let key = PublicKey::parse_hex(k.as_str().unwrap()).unwrap();
                ss.verify(&key).expect_err(comment)
            }
        };
        assert_eq!(err.code().as_str(), case.str_("error"), "{comment}: {err}");
        assert_eq!(
            status_error_field(&err),
            case.opt("field").and_then(Value::as_str),
            "{comment}: {err}"
        );
    }
}

#[test]
fn conversation_vectors() {
    use formica_protocol::conversation::{ConvLimits, Conversation, Entry, EntryBody, FIRST_PREV};
    let file = load("conversations.json");
    let valid = file.list("valid");
    let mut kinds = std::collections::BTreeSet::new();
    for case in valid {
        let comment = case.str_("comment");
        let seed: [u8; 32] = hex::decode_array(case.str_("seed_hex")).unwrap();
        let sk = SecretKey::from_seed(&seed);
        assert_eq!(sk.public().to_hex(), case.str_("public_key"), "{comment}");
        assert_eq!(
            sk.public().key_id().to_hex(),
            case.str_("key_id"),
            "{comment}"
        );
        let mut want_input = b"formica/v1/envelope\0".to_vec();
        want_input.extend(canonicalize(case.get("envelope")));
        assert_eq!(
            hex::encode(&want_input),
            case.str_("signing_input_hex"),
            "{comment}"
        );
        assert_eq!(
            hex::encode(blake3::hash(&want_input).as_bytes()),
            case.str_("id"),
            "{comment}"
        );
        assert_eq!(
            sk.sign_input(&want_input).to_hex(),
            case.str_("sig"),
            "{comment}"
        );
        let se = SignedEnvelope::parse(case.str_("wire").as_bytes(), &EnvelopeLimits::default())
            .unwrap_or_else(|e| panic!("{comment}: {e}"));
        assert_eq!(se.id().to_hex(), case.str_("id"), "{comment}");
        assert_eq!(
            &se.envelope().to_value(),
            case.get("envelope"),
            "{comment}: typed round trip"
        );
        let key = PublicKey::parse_hex(case.str_("public_key")).unwrap();
        let v = se.verify(&key).unwrap_or_else(|e| panic!("{comment}: {e}"));
        assert_eq!(v.wire_bytes(), case.str_("wire").as_bytes(), "{comment}");
        let env = case.get("envelope");
        let ty = env.str_("type");
        match ty {
            "call" => assert!(env.opt("conv").is_none(), "{comment}"),
            _ => assert!(env.opt("conv").is_some(), "{comment}: a {ty} without conv"),
        }
        kinds.insert(match ty {
            "conv_action" => env.get("payload").str_("action").to_owned(),
            "call" | "message" => ty.to_owned(),
            _ => "other post".to_owned(),
        });
    }
    // A call, every action and posts.
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "accept",
            "call",
            "close",
            "decline",
            "invite",
            "leave",
            "message",
            "other post"
        ]
    );

    let invalid = file.list("invalid");
    assert!(invalid.len() >= 11);
    for case in invalid {
        let comment = case.str_("comment");
        let err = SignedEnvelope::parse(case.str_("input").as_bytes(), &EnvelopeLimits::default())
            .map(|_| ())
            .expect_err(comment);
        assert_eq!(err.code().as_str(), case.str_("error"), "{comment}: {err}");
        assert_eq!(
            envelope_error_field(&err),
            case.opt("field").and_then(Value::as_str),
            "{comment}: {err}"
        );
    }

    // The served entries: each hash is BLAKE3 of the tag and the canonical entry without `hash`,
    // each `prev` the hash before it, and the entries fold to `state`.
    let entries = file.list("entries");
    assert!(entries.len() >= 4);
    let mut prev = hex::encode(&FIRST_PREV);
    let mut conv: Option<Conversation> = None;
    let mut conv_id = String::new();
    for (k, case) in entries.iter().enumerate() {
        let comment = case.str_("comment");
        let entry = case.get("entry");
        assert!(entry.opt("hash").is_none(), "{comment}");
        let mut input = b"formica/v1/conversation\0".to_vec();
        input.extend(canonicalize(entry));
        assert_eq!(
            hex::encode(&input),
            case.str_("hash_input_hex"),
            "{comment}"
        );
        let hash = hex::encode(blake3::hash(&input).as_bytes());
        assert_eq!(hash, case.str_("hash"), "{comment}");
        let mut whole = entry.clone();
        if let Value::Object(o) = &mut whole {
            o.insert("hash", Value::String(hash.clone()));
        }
        assert_eq!(
            canonicalize(&whole),
            case.str_("wire").as_bytes(),
            "{comment}"
        );
        assert_eq!(entry.str_("prev"), prev, "{comment}: prev");
        assert_eq!(
            entry.get("seq").as_i64(),
            Some(k as i64 + 1),
            "{comment}: seq"
        );
        let parsed = json::parse(case.str_("wire").as_bytes(), JsonLimits::default()).unwrap();
        let e = Entry::from_value(&parsed, &EnvelopeLimits::default())
            .unwrap_or_else(|err| panic!("{comment}: {err}"));
        assert_eq!(e.wire(), case.str_("wire").as_bytes(), "{comment}");
        assert_eq!(hex::encode(&e.hash()), hash, "{comment}");
        if k == 0 {
            let EntryBody::Envelope(call) = &e.body else {
                panic!("{comment}: entry 1 is not the call")
            };
            conv_id = call.id().to_hex();
            conv = Some(Conversation::open(call, e.at).expect("entry 1 is a call"));
        } else {
            conv.as_mut().unwrap().apply(&e);
        }
        assert_eq!(
            entry.str_("conv"),
            conv_id,
            "{comment}: conv is the call's id"
        );
        match (&e.body, case.opt("public_key")) {
            (EntryBody::Envelope(se), Some(k)) => {
                let key = PublicKey::parse_hex(k.as_str().unwrap()).unwrap();
                se.clone()
                    .verify(&key)
                    .unwrap_or_else(|err| panic!("{comment}: {err}"));
            }
            (EntryBody::Event(_), None) => {}
            _ => panic!("{comment}: public_key is given exactly for envelope entries"),
        }
        prev = hash;
    }
    let conv = conv.unwrap();
    assert_eq!(hex::encode(&conv.head), prev);
    // The call gives its turn limit and expiry, so the relay's maxima do not show here.
    let limits = ConvLimits {
        participants_max: 8,
        turns_max: 1000,
        ttl_max_ms: 30 * 24 * 3600 * 1000,
    };
    let mut summary = conv.summary(&limits);
    if let Value::Object(o) = &mut summary {
        o.insert("head", Value::String(prev.clone()));
    }
    assert_eq!(canonicalize(&summary), canonicalize(file.get("state")));

    let bad = file.list("entries_invalid");
    assert!(bad.len() >= 3);
    for case in bad {
        let comment = case.str_("comment");
        let parsed = json::parse(case.str_("input").as_bytes(), JsonLimits::default()).unwrap();
        let err = Entry::from_value(&parsed, &EnvelopeLimits::default())
            .map(|_| ())
            .expect_err(comment);
        assert_eq!(err.code.as_str(), case.str_("error"), "{comment}: {err}");
    }

    // CONVO-13 batches.
    use formica_protocol::conversation::replica::Batch;
    let good = file.list("batches");
    assert!(good.len() >= 3);
    for case in good {
        let comment = case.str_("comment");
        let parsed = json::parse(case.str_("input").as_bytes(), JsonLimits::default()).unwrap();
        let b = Batch::from_value(&parsed, &EnvelopeLimits::default())
            .unwrap_or_else(|e| panic!("{comment}: {e}"));
        assert_eq!(
            canonicalize(&b.to_value()),
            case.str_("input").as_bytes(),
            "{comment}"
        );
    }
    let bad = file.list("batches_invalid");
    assert!(bad.len() >= 5);
    for case in bad {
        let comment = case.str_("comment");
        let parsed = json::parse(case.str_("input").as_bytes(), JsonLimits::default()).unwrap();
        let err = Batch::from_value(&parsed, &EnvelopeLimits::default())
            .map(|_| ())
            .expect_err(comment);
        assert_eq!(err.code.as_str(), case.str_("error"), "{comment}: {err}");
        assert_eq!(
            err.field.as_deref(),
            Some(case.str_("field")),
            "{comment}: {err}"
        );
    }
}
