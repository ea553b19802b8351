//! Fuzz target for agent profiles (SPEC.md section 18): any bytes are parsed as a signed profile
//! (strict JSON, then PROF-1 and PROF-3) and checked against a fixed key, which must never
//! panic. A profile that parses keeps the properties a relay relies on when it stores and serves
//! one: its served (canonical) form parses to the same profile, value and signing input and is a
//! fixed point; the typed profile, written out again, parses to the same profile; and the same
//! profile, named for the fixed key and signed with it, verifies with that key and with no other.
#![no_main]

use formica_protocol::json::JsonLimits;
use formica_protocol::profile::SignedProfile;
use formica_protocol::{canon, SecretKey, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SecretKey::from_seed(&[7; 32]);
    let other = SecretKey::from_seed(&[8; 32]);
    let Ok(sp) = SignedProfile::parse(data, JsonLimits::default()) else {
        return;
    };
    let _ = sp.verify(&key.public());
    // The served form: canonical, a fixed point, the same profile and signing input. It is no
    // longer than a canonical input and may be shorter (whitespace, escapes).
    let wire = sp.wire().to_vec();
    assert_eq!(canon::canonicalize(sp.value()), wire);
    let back = SignedProfile::parse(&wire, JsonLimits::default()).expect("the wire form parses");
    assert_eq!(
        back.wire(),
        wire.as_slice(),
        "the wire form is a fixed point"
    );
    assert_eq!(back.profile(), sp.profile());
    assert_eq!(back.value(), sp.value());
    assert_eq!(back.signing_input(), sp.signing_input());
    assert_eq!(back.signature(), sp.signature());
    // The signing input is the tag and the canonical form without `sig`.
    let mut unsigned = sp.value().clone();
    if let Value::Object(o) = &mut unsigned {
        o.remove("sig");
    }
    let mut input = b"formica/v1/profile\0".to_vec();
    input.extend(canon::canonicalize(&unsigned));
    assert_eq!(sp.signing_input(), input.as_slice());
    // Re-signed with the fixed key: the typed profile is written out, parsed and verified.
    let mut p = sp.profile().clone();
    p.key = key.public().key_id();
    let signed = p.sign(&key).expect("a parsed profile signs");
    assert_eq!(signed.profile(), &p, "the typed profile round-trips");
    signed
        .verify(&key.public())
        .expect("a profile signed with the key it names verifies");
    assert!(signed.verify(&other.public()).is_err());
    assert!(
        p.sign(&other).is_err(),
        "signing with a key the profile does not name"
    );
});
