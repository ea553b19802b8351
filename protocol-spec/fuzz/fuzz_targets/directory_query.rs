//! Fuzz target for the directory's query string (SPEC.md PROF-9, PROF-11, FED-18): any bytes
//! are read as the query of `GET /v1/directory` by the relay's own parser, which must never
//! panic and must refuse with `invalid_field` or `invalid_cursor` only. A query that parses
//! keeps what the relay relies on: a page size within 1..=`directory.page_max`, a capability
//! that is a word, a text of 1 to 64 characters without control characters, already
//! lower-cased; and the query a home relay sends its peers for it (`query_string`) parses, at
//! a peer, to the same search.
#![no_main]

use formica_protocol::{ErrorCode, RelayHost};
use formica_relay::engine::directory::parse_query;
use formica_relay::engine::policy::Policy;
use formica_relay::federation::directory::query_string;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = Policy::default();
    let host = RelayHost::parse("relay-a.test").expect("a host");
    let q = match parse_query(Some(text), &policy, &host) {
        Ok(q) => q,
        Err(e) => {
            assert!(
                matches!(e.code, ErrorCode::InvalidField | ErrorCode::InvalidCursor),
                "{:?}",
                e.code
            );
            return;
        }
    };
    assert!((1..=policy.directory.page_max).contains(&q.limit));
    assert!(q.min_tier < policy.tiers.len());
    if let Some(c) = &q.capability {
        assert!(formica_protocol::profile::is_word(c));
    }
    if let Some(t) = &q.text {
        assert!((1..=64).contains(&t.chars().count()));
        assert!(!t.chars().any(char::is_control));
        assert_eq!(&t.to_lowercase(), t, "the text is lower-cased");
    }
    assert!(!(q.federated && q.after.is_some()), "a federated search has no cursor");
    let sent = query_string(&q);
    let again = parse_query(Some(&sent), &policy, &host).expect("a peer parses what is sent");
    assert_eq!(again.capability, q.capability, "{sent}");
    assert_eq!(again.text, q.text, "{sent}");
    assert_eq!(again.min_tier, q.min_tier, "{sent}");
    assert_eq!(again.limit, q.limit, "{sent}");
    assert_eq!(again.status, q.status, "{sent}");
    assert!(!again.federated && again.after.is_none(), "{sent}");
});
