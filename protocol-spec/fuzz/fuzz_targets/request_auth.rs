//! Fuzz target for request authentication: arbitrary header values are parsed; a header that
//! parses is checked against a fixed key and request, which must never panic, and a header made
//! by `RequestAuth::sign` from fuzzed request parts must verify for exactly those parts.
#![no_main]

use formica_protocol::auth::{Nonce, RequestAuth, RequestTarget};
use formica_protocol::{Handle, RelayHost, SecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SecretKey::from_seed(&[7; 32]);
    let aud = RelayHost::parse("relay-a.example").expect("valid host");
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(auth) = RequestAuth::parse(text) {
            let target = RequestTarget { method: "GET", path: "/v1/inbox", body: b"" };
            let _ = auth.verify(&key.public(), &target, &aud);
        }
    }
    // Sign over fuzzed parts and check the round trip.
    let (path_bytes, body) = data.split_at(data.len() / 2);
    let path = String::from_utf8_lossy(path_bytes);
    let handle = Handle::parse("@alice@relay-a.example").expect("valid handle");
    let target = RequestTarget { method: "POST", path: &path, body };
    let header = RequestAuth::sign(&key, &handle, 1_764_000_000_000, Nonce([3; 16]), &target, &aud);
    let parsed = RequestAuth::parse(&header).expect("own header parses");
    parsed.verify(&key.public(), &target, &aud).expect("own header verifies");
    let other = RequestTarget { method: "PUT", path: &path, body };
    assert!(parsed.verify(&key.public(), &other, &aud).is_err(), "a header must not verify for another method");
});
