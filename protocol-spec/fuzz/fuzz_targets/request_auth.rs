//! Fuzz target for request authentication, agent (`Formica`) and relay-to-relay
//! (`Formica-Relay`): arbitrary header values are parsed; a header that parses is checked against
//! a fixed key and request, which must never panic, and a header made by `sign` from fuzzed
//! request parts must verify for those parts and not for another method; a relay header must
//! also be refused at another relay (by its `dest`, which is checked before the signature).
#![no_main]

use formica_protocol::auth::{Nonce, RelayAuth, RequestAuth, RequestTarget};
use formica_protocol::{Handle, RelayHost, SecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SecretKey::from_seed(&[7; 32]);
    let aud = RelayHost::parse("relay-a.example").expect("valid host");
    let origin = RelayHost::parse("relay-b.example").expect("valid host");
    if let Ok(text) = std::str::from_utf8(data) {
        let target = RequestTarget { method: "GET", path: "/v1/inbox", body: b"" };
        if let Ok(auth) = RequestAuth::parse(text) {
            let _ = auth.verify(&key.public(), &target, &aud);
        }
        if let Ok(auth) = RelayAuth::parse(text) {
            let _ = auth.verify(&key.public(), &target, &aud);
        }
    }
    // Sign over fuzzed parts and check the round trip.
    let (path_bytes, body) = data.split_at(data.len() / 2);
    let path = String::from_utf8_lossy(path_bytes);
    let handle = Handle::parse("@alice@relay-a.example").expect("valid handle");
    let target = RequestTarget { method: "POST", path: &path, body };
    let other = RequestTarget { method: "PUT", path: &path, body };

    let header = RequestAuth::sign(&key, &handle, 1_764_000_000_000, Nonce([3; 16]), &target, &aud);
    let parsed = RequestAuth::parse(&header).expect("own header parses");
    parsed.verify(&key.public(), &target, &aud).expect("own header verifies");
    assert!(parsed.verify(&key.public(), &other, &aud).is_err(), "a header must not verify for another method");

    let header = RelayAuth::sign(&key, &origin, &aud, 1_764_000_000_000, Nonce([4; 16]), &target);
    let parsed = RelayAuth::parse(&header).expect("own relay header parses");
    parsed.verify(&key.public(), &target, &aud).expect("own relay header verifies");
    assert!(parsed.verify(&key.public(), &other, &aud).is_err(), "a relay header must not verify for another method");
    assert!(parsed.verify(&key.public(), &target, &origin).is_err(), "a relay header must not verify at another relay");
});
