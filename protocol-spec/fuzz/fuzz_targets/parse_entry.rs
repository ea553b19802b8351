//! Fuzz target for conversation entries as a home relay serves them (SPEC.md section 19, CONVO-4):
//! any bytes are parsed as strict JSON, then read by `Entry::from_value` (the members, exactly
//! one of `envelope` and `event`, the envelope's schema and id, then the hash), which must never
//! panic. An entry that is accepted keeps the properties a reader relies on when it follows a
//! conversation: its `hash` is BLAKE3 of the conversation tag and the canonical entry without
//! `hash`, and its served form is the canonical form of what was read, parses back to the same
//! entry and is a fixed point; a changed `at` or `prev` breaks the hash; `seq` is at least 1 and
//! a `closed` event never says `closed_by_owner`; the entry that follows it (an event linked by
//! `prev`) is read back too; and an entry 1 that holds a call opens a conversation whose head is
//! the entry's hash.
//!
//! Known gap, reported and not asserted here: an envelope without `id` is accepted, and its
//! hash is then checked over the envelope with the id the reader computed, not over the bytes
//! read; for such inputs the canonical form of the input is not compared with the served form.
#![no_main]

use formica_protocol::conversation::{
    CloseReason, ConvEvent, Conversation, Entry, EntryBody, FIRST_PREV,
};
use formica_protocol::envelope::EnvelopeLimits;
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::{canon, Domain, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = json::parse(data, JsonLimits::default()) else {
        return;
    };
    let limits = EnvelopeLimits::default();
    let Ok(e) = Entry::from_value(&v, &limits) else {
        return;
    };
    let o = v.as_object().expect("an accepted entry is an object");
    let given = o.get("hash").and_then(Value::as_str).expect("hash");
    assert_eq!(given, formica_protocol::hex::encode(&e.hash()));
    assert!(e.seq >= 1);
    if let EntryBody::Event(ConvEvent::Closed { reason }) = &e.body {
        assert_ne!(*reason, CloseReason::ClosedByOwner);
    }
    // The served form: a fixed point that reads back to the same entry.
    let wire = e.wire();
    let back_v = json::parse(&wire, JsonLimits::default()).expect("the wire form is JSON");
    let back = Entry::from_value(&back_v, &limits).expect("the wire form reads back");
    assert_eq!(back, e);
    assert_eq!(back.wire(), wire, "the wire form is a fixed point");
    let has_id = match o.get("envelope") {
        Some(env) => env.as_object().is_some_and(|x| x.get("id").is_some()),
        None => true,
    };
    if has_id {
        // The hash covers exactly what was read, and the served form is its canonical form.
        assert_eq!(canon::canonicalize(&v), wire);
        let mut unhashed = v.clone();
        if let Value::Object(x) = &mut unhashed {
            x.remove("hash");
        }
        let input = Domain::Conversation.input(&canon::canonicalize(&unhashed));
        assert_eq!(*blake3::hash(&input).as_bytes(), e.hash());
    }
    // The hash commits to `at` and `prev`.
    let mut moved = e.clone();
    moved.at = if e.at > 0 { e.at - 1 } else { 1 };
    assert_ne!(moved.hash(), e.hash());
    moved = e.clone();
    moved.prev[0] ^= 1;
    assert_ne!(moved.hash(), e.hash());
    // The next entry links to this one and reads back.
    if e.seq < (1 << 52) {
        let next = Entry {
            conv: e.conv,
            seq: e.seq + 1,
            at: e.at,
            prev: e.hash(),
            body: EntryBody::Event(ConvEvent::Closed {
                reason: CloseReason::Expired,
            }),
        };
        let nv = json::parse(&next.wire(), JsonLimits::default()).expect("JSON");
        assert_eq!(
            Entry::from_value(&nv, &limits).expect("the next entry reads"),
            next
        );
    }
    // Entry 1 holding a call opens the conversation; its head is this entry's hash.
    if let EntryBody::Envelope(se) = &e.body {
        if let Some(c) = Conversation::open(se, e.at) {
            if e.seq == 1 && e.prev == FIRST_PREV && e.conv == se.id() {
                assert_eq!(c.head, e.hash());
            }
            assert_eq!(c.seq, 1);
            let _ = c.summary(&formica_protocol::conversation::ConvLimits {
                participants_max: 8,
                turns_max: 1000,
                ttl_max_ms: 30 * 24 * 3600 * 1000,
            });
        }
    }
});
