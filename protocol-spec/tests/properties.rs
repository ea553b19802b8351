//! Property tests: canonicalization is a fixed point, parse and serialize round-trip, typed
//! envelopes round-trip, and any single-bit change to a signed envelope fails verification.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use formica_protocol::canon::canonicalize;
use formica_protocol::envelope::*;
use formica_protocol::json::{self, JsonLimits, Object, Value, INT_ABS_MAX};
use formica_protocol::{Handle, SecretKey};
use proptest::prelude::*;

/// Arbitrary strict-profile values of bounded depth and size.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-INT_ABS_MAX..=INT_ABS_MAX).prop_map(Value::Int),
        prop_oneof![Just(INT_ABS_MAX), Just(-INT_ABS_MAX), Just(0i64)].prop_map(Value::Int),
        any::<String>().prop_map(Value::String),
        "[\\x00-\\x1f\"\\\\\u{7f}\u{2028}\u{e000}-\u{e0ff}\u{1f600}-\u{1f60f}a-c]{0,6}"
            .prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                ("[a-c\u{e000}\u{1f600}\u{7f}\\x00-\\x02]{0,3}", inner),
                0..6
            )
            .prop_map(|members| Value::Object(members.into_iter().collect::<Object>())),
        ]
    })
}

fn limits() -> JsonLimits {
    JsonLimits {
        bytes_max: 1 << 20,
        depth_max: 32,
    }
}

fn handle() -> impl Strategy<Value = Handle> {
    (
        "[a-z0-9]{1,8}",
        prop_oneof![
            Just("relay-a.example"),
            Just("127.0.0.1:7070"),
            Just("b.example")
        ],
    )
        .prop_map(|(n, h)| Handle::parse(&format!("@{n}@{h}")).unwrap())
        .prop_filter("not the relay address", |h| !h.is_relay())
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        handle(),
        prop::collection::btree_set(handle(), 1..4),
        0i64..=4_000_000_000_000,
        prop::option::of("[!-~]{1,20}"),
        prop::option::of(1i64..=ACK_WINDOW_MS_MAX),
        any::<String>(),
        prop::option::of(value()),
    )
        .prop_map(|(from, to, ts, corr, ack, text, data)| {
            let key = SecretKey::from_seed(&[7; 32]).public().key_id();
            Envelope {
                msg_type: MessageType::Message,
                type_version: 1,
                from,
                key,
                to: to.into_iter().collect(),
                ts,
                corr,
                ack_by: ack.map(|a| ts + a),
                conv: None,
                payload: Payload::Message { text, data },
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// CANON-4: canonicalizing the canonical form changes nothing.
    #[test]
    fn canonicalizing_twice_changes_nothing(v in value()) {
        let once = canonicalize(&v);
        let reparsed = json::parse(&once, limits()).unwrap();
        prop_assert_eq!(canonicalize(&reparsed), once);
    }

    /// Parse and serialize round-trip: the canonical bytes parse back to an equal value.
    #[test]
    fn parse_serialize_round_trip(v in value()) {
        let bytes = canonicalize(&v);
        prop_assert_eq!(json::parse(&bytes, limits()).unwrap(), v.clone());
        let pretty = formica_protocol::canon::to_pretty(&v);
        prop_assert_eq!(json::parse(pretty.as_bytes(), limits()).unwrap(), v);
    }

    /// `canonical_len` is the length of the canonical bytes, without writing them.
    #[test]
    fn canonical_len_is_the_length(v in value()) {
        prop_assert_eq!(formica_protocol::canon::canonical_len(&v), canonicalize(&v).len());
    }

    /// The one-pass writer gives the full canonical form and the form without the skipped
    /// members, exactly as two separate passes do.
    #[test]
    fn split_writer_equals_two_passes(v in value(), skip in prop::collection::vec("[a-c]{0,2}", 0..3)) {
        if let Value::Object(o) = &v {
            let skip: Vec<&str> = skip.iter().map(String::as_str).collect();
            let (mut full, mut partial) = (Vec::new(), Vec::new());
            formica_protocol::canon::write_object_split(o, &skip, &mut full, &mut partial);
            prop_assert_eq!(&full, &canonicalize(&v));
            let mut two = Vec::new();
            formica_protocol::canon::write_object(o, Some(&skip), &mut two);
            prop_assert_eq!(partial, two);
        }
    }

    /// The wire form kept at parse time is the canonical form of the envelope, whether or not
    /// the received object carried its id.
    #[test]
    fn kept_wire_form_is_canonical(env in envelope()) {
        let sk = SecretKey::from_seed(&[7; 32]);
        let signed = env.sign(&sk).unwrap();
        prop_assert_eq!(signed.wire_bytes(), canonicalize(signed.value()));
        let parsed = SignedEnvelope::parse(&signed.wire_bytes(), &EnvelopeLimits::default()).unwrap();
        prop_assert_eq!(parsed.wire_bytes(), signed.wire_bytes());
        let mut without_id = signed.value().clone();
        if let Value::Object(o) = &mut without_id {
            o.remove("id");
        }
        let reparsed = SignedEnvelope::parse(&canonicalize(&without_id), &EnvelopeLimits::default()).unwrap();
        prop_assert_eq!(reparsed.wire_bytes(), signed.wire_bytes());
        let stored = SignedEnvelope::parse_stored_canonical(&signed.wire_bytes(), &EnvelopeLimits::default()).unwrap();
        prop_assert_eq!(&stored, &parsed);
        let payload = signed.value().as_object().unwrap().get("payload").unwrap();
        prop_assert_eq!(parsed.payload_len(), canonicalize(payload).len());
        prop_assert_eq!(signed.payload_len(), parsed.payload_len());
    }

    /// A typed envelope survives signing, the wire, and parsing unchanged.
    #[test]
    fn envelope_round_trip(env in envelope()) {
        let sk = SecretKey::from_seed(&[7; 32]);
        let signed = env.sign(&sk).unwrap();
        let parsed = SignedEnvelope::parse(&signed.wire_bytes(), &EnvelopeLimits::default()).unwrap();
        prop_assert_eq!(parsed.envelope(), &env);
        prop_assert_eq!(parsed.id(), signed.id());
        parsed.verify(&sk.public()).unwrap();
    }

    /// Any single-bit change to a signed envelope's wire bytes fails parsing or verification.
    #[test]
    fn any_bit_flip_fails_verification(env in envelope(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let sk = SecretKey::from_seed(&[7; 32]);
        let mut wire = env.sign(&sk).unwrap().wire_bytes();
        let i = pos.index(wire.len());
        wire[i] ^= 1 << bit;
        let res = SignedEnvelope::parse(&wire, &EnvelopeLimits::default()).and_then(|se| se.verify(&sk.public()));
        prop_assert!(res.is_err(), "flipping bit {} of byte {} was accepted", bit, i);
    }
}

/// SIG-1: no purpose's tag is a prefix of another's, so no signing input of one purpose can be
/// read as a signing input of another.
#[test]
fn domain_tags_are_distinct_and_prefix_free() {
    use formica_protocol::keys::Domain;
    for a in Domain::ALL {
        for b in Domain::ALL {
            if a != b {
                assert!(
                    !b.tag().starts_with(a.tag()),
                    "{:?} is a prefix of {:?}",
                    String::from_utf8_lossy(a.tag()),
                    String::from_utf8_lossy(b.tag())
                );
            }
        }
    }
}
