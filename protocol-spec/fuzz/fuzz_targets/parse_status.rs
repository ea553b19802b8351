//! Fuzz target for presence statuses (SPEC.md section 18.4): any bytes are parsed as a signed
//! status (strict JSON, then PRES-2) and checked against a fixed key, which must never panic. A
//! status that parses keeps the properties a relay relies on when it stores one and serves it to
//! contacts (`signed` in a full presence): its served (canonical) form parses to the same status,
//! signature and signing input and is a fixed point; it is never `offline` and never expires at
//! or before its `ts`; the typed status, written out again, parses to the same status; and the
//! same status, named for the fixed key and signed with it, verifies with that key and with no
//! other.
#![no_main]

use formica_protocol::json::{self, JsonLimits};
use formica_protocol::presence::{SignedStatus, NOTE_CHARS_MAX};
use formica_protocol::{canon, SecretKey, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SecretKey::from_seed(&[7; 32]);
    let other = SecretKey::from_seed(&[8; 32]);
    let Ok(ss) = SignedStatus::parse(data, JsonLimits::default()) else {
        return;
    };
    let _ = ss.verify(&key.public());
    let st = ss.status();
    assert!(st.expires > st.ts, "a status expires after its ts");
    assert_ne!(st.status.as_str(), "offline", "offline is never signed");
    assert!(st
        .note
        .as_ref()
        .is_none_or(|n| n.chars().count() <= NOTE_CHARS_MAX));
    // The served form: canonical, a fixed point, the same status and signing input. It is no
    // longer than a canonical input and may be shorter (whitespace, escapes).
    let wire = ss.wire().to_vec();
    let value = json::parse(data, JsonLimits::default()).expect("a parsed status is JSON");
    assert_eq!(canon::canonicalize(&value), wire);
    let back = SignedStatus::parse(&wire, JsonLimits::default()).expect("the wire form parses");
    assert_eq!(
        back.wire(),
        wire.as_slice(),
        "the wire form is a fixed point"
    );
    assert_eq!(back.status(), ss.status());
    assert_eq!(back.signing_input(), ss.signing_input());
    assert_eq!(back.signature(), ss.signature());
    // The signing input is the tag and the canonical form without `sig`.
    let mut unsigned = value;
    if let Value::Object(o) = &mut unsigned {
        o.remove("sig");
    }
    let mut input = b"formica/v1/presence\0".to_vec();
    input.extend(canon::canonicalize(&unsigned));
    assert_eq!(ss.signing_input(), input.as_slice());
    // The typed status, written out, is the value without `sig` (PRES-2 has no defaults).
    assert_eq!(
        canon::canonicalize(&st.to_value()),
        canon::canonicalize(&unsigned),
        "the typed status, written out, is the status without `sig`"
    );
    // Re-signed with the fixed key: the typed status is written out, parsed and verified.
    let mut s = st.clone();
    s.key = key.public().key_id();
    let signed = s.sign(&key).expect("a parsed status signs");
    assert_eq!(signed.status(), &s, "the typed status round-trips");
    signed
        .verify(&key.public())
        .expect("a status signed with the key it names verifies");
    assert!(signed.verify(&other.public()).is_err());
    assert!(
        s.sign(&other).is_err(),
        "signing with a key the status does not name"
    );
});
