//! Fuzz target for what one relay sends another about a conversation (SPEC.md 19.6): any bytes
//! are parsed as strict JSON, then read as a batch of `POST /v1/federation/conversation`
//! (`Batch::from_value`: conv, to, turns, expires, entries, then each entry as CONVO-4 reads it,
//! naming the batch's conversation, consecutive and linked; CONVO-13) and as the receiver's
//! answer (`Answer::from_value`); neither may panic. A batch that is accepted keeps what a
//! replica relies on: every entry names the batch's conversation, seqs follow each other and
//! each `prev` is the hash of the entry before; `to` is not empty and names no relay address;
//! the batch written back reads back to the same batch and is a fixed point. An accepted answer
//! also reads back to itself.
#![no_main]

use formica_protocol::conversation::replica::{Answer, Batch};
use formica_protocol::envelope::EnvelopeLimits;
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::canon;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = json::parse(data, JsonLimits::default()) else {
        return;
    };
    let limits = EnvelopeLimits::default();
    if let Ok(b) = Batch::from_value(&v, &limits) {
        assert!(!b.to.is_empty());
        assert!(b.to.iter().all(|h| !h.is_relay()));
        assert!(b.turns >= 1 && b.expires >= 0);
        for w in b.entries.windows(2) {
            assert_eq!(w[1].seq, w[0].seq + 1);
            assert_eq!(w[1].prev, w[0].hash());
        }
        assert!(b.entries.iter().all(|e| e.conv == b.conv));
        let wire = canon::canonicalize(&b.to_value());
        let back_v = json::parse(&wire, JsonLimits::default()).expect("the written batch is JSON");
        let back = Batch::from_value(&back_v, &limits).expect("the written batch reads back");
        assert_eq!(back, b);
        assert_eq!(canon::canonicalize(&back.to_value()), wire, "a fixed point");
    }
    if let Ok(a) = Answer::from_value(&v) {
        let wire = canon::canonicalize(&a.to_value());
        let back_v = json::parse(&wire, JsonLimits::default()).expect("the written answer is JSON");
        assert_eq!(Answer::from_value(&back_v).expect("the written answer reads back"), a);
    }
});
