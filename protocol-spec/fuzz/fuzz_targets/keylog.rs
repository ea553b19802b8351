//! Fuzz target for key log verification: the input is split into entries (one per line), each
//! parsed and the whole list verified from its first entry. Besides "never panics", a log that
//! verifies must verify again from its served (canonical) form, with the same head.
#![no_main]

use formica_protocol::json::JsonLimits;
use formica_protocol::keylog::{KeyLog, SignedKeyLogEntry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let entries: Vec<SignedKeyLogEntry> = data
        .split(|b| *b == b'\n')
        .filter_map(|line| SignedKeyLogEntry::parse(line, JsonLimits::default()).ok())
        .collect();
    if let Ok(log) = KeyLog::verify(entries.clone()) {
        let again: Vec<SignedKeyLogEntry> = log
            .entries()
            .iter()
            .map(|e| SignedKeyLogEntry::parse(&e.wire_bytes(), JsonLimits::default()).expect("served entry parses"))
            .collect();
        let log2 = KeyLog::verify(again).expect("a verified log verifies again from its wire form");
        assert_eq!(log2.head().hash(), log.head().hash());
    }
});
