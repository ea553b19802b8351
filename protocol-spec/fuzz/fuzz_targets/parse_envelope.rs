//! Fuzz target for everything that reads network bytes in the protocol crate: the strict JSON
//! parser, the canonicalizer and the envelope parser. Besides "never panics", it checks the
//! properties a parser must keep on any input it accepts: the canonical form is a fixed point
//! and parses back to the same value.
#![no_main]

use formica_protocol::canon::canonicalize;
use formica_protocol::envelope::{EnvelopeLimits, SignedEnvelope};
use formica_protocol::json::{self, JsonLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = json::parse(data, JsonLimits::default()) {
        let c = canonicalize(&v);
        let again = json::parse(&c, JsonLimits::default()).expect("canonical form must parse");
        assert_eq!(again, v, "canonical form must parse to the same value");
        assert_eq!(canonicalize(&again), c, "canonicalization must be idempotent");
    }
    if let Ok(se) = SignedEnvelope::parse(data, &EnvelopeLimits::default()) {
        // The served form must parse to the same envelope and id. It may be longer than the
        // input by the `id` member when the input had none.
        let wire = se.wire_bytes();
        let mut limits = EnvelopeLimits::default();
        limits.json.bytes_max += 128;
        let back = SignedEnvelope::parse(&wire, &limits).expect("wire form must parse");
        assert_eq!(back.id(), se.id());
        assert_eq!(back.envelope(), se.envelope());
    }
});
