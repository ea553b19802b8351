//! Generates the language-neutral vector files under `protocol-spec/vectors/` and checks that the
//! committed files are current.
//!
//! The case lists below are the source: each invalid case names the error code the spec requires
//! and the generator refuses to write a file if the crate disagrees. Valid signing vectors use
//! fixed seeds so every output is deterministic.
//!
//! Regenerate after changing a case: `UPDATE_VECTORS=1 cargo test -p formica-protocol --test gen_vectors`,
//! then `python3 protocol-spec/fuzz/make_seeds.py` (the fuzz seeds are made from the vectors and
//! CI checks they match).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{arr, i, obj, s};
use formica_protocol::auth::{Nonce, RelayAuth, RequestAuth, RequestTarget};
use formica_protocol::canon::{canonicalize, to_pretty};
use formica_protocol::envelope::*;
use formica_protocol::hex;
use formica_protocol::json::{self, JsonLimits, Object, Value};
use formica_protocol::keylog::{KeyLog, SignedKeyLogEntry};
use formica_protocol::keys::{Domain, PublicKey, SecretKey};
use formica_protocol::pow;
use formica_protocol::presence::{Availability, SignedStatus, Status, StatusError, NOTE_CHARS_MAX};
use formica_protocol::profile::{
    Capability, Profile, ProfileError, SignedProfile, ACCEPTS_MAX, CAPABILITIES_MAX,
    DESCRIPTION_CHARS_MAX, NAME_CHARS_MAX, VERSION_CHARS_MAX, WORD_BYTES_MAX,
};
use formica_protocol::schema::SchemaError;
use formica_protocol::{ErrorCode, Handle, RelayHost};
use std::collections::BTreeMap;

const T0: i64 = 1_764_000_000_000;

fn seed(start: u8) -> [u8; 32] {
    std::array::from_fn(|k| start.wrapping_add(k as u8))
}
fn sk(start: u8) -> SecretKey {
    SecretKey::from_seed(&seed(start))
}
fn h(x: &str) -> Handle {
    Handle::parse(x).unwrap()
}

/// Signs an arbitrary object (valid or not) under `domain`, adding `sig`.
fn sign_raw(domain: Domain, mut v: Value, key: &SecretKey) -> Value {
    let sig = key.sign(domain, &canonicalize(&v));
    if let Value::Object(o) = &mut v {
        o.insert("sig", sig.to_hex().into());
    }
    v
}

fn with(v: &Value, k: &str, x: Value) -> Value {
    let mut v = v.clone();
    if let Value::Object(o) = &mut v {
        o.insert(k, x);
    }
    v
}
fn without(v: &Value, k: &str) -> Value {
    let mut v = v.clone();
    if let Value::Object(o) = &mut v {
        o.remove(k);
    }
    v
}
fn text(v: &Value) -> String {
    String::from_utf8(canonicalize(v)).unwrap()
}

// ---------------------------------------------------------------- canon.json

enum Input {
    Text(String),
    Hex(&'static str),
}

fn canon_cases() -> Vec<(&'static str, Input, Result<&'static str, ErrorCode>)> {
    use ErrorCode::*;
    use Input::{Hex, Text};
    let t = |x: &str| Text(x.to_owned());
    let deep = |n: usize| Text(format!("{}{}", "[".repeat(n), "]".repeat(n)));
    vec![
        ("members are sorted by key", t(r#"{"b":1,"a":2}"#), Ok(r#"{"a":2,"b":1}"#)),
        ("insignificant whitespace is removed", t(" {\n\t\"a\" : [ 1 , 2 ] ,\r\n\"b\":{ } } "), Ok(r#"{"a":[1,2],"b":{}}"#)),
        ("nested objects are sorted too; arrays keep their order", t(r#"{"z":{"y":1,"x":[3,1,2]},"a":null}"#), Ok(r#"{"a":null,"z":{"x":[3,1,2],"y":1}}"#)),
        ("keys sort by UTF-16 code units: U+1F600 (D83D DE00) sorts before U+E000, unlike UTF-8 byte order", t("{\"\u{e000}\":1,\"\u{1f600}\":2}"), Ok("{\"\u{1f600}\":2,\"\u{e000}\":1}")),
        ("keys sort by code units, so upper case sorts before lower case and shorter prefixes first", t(r#"{"b":1,"a":1,"B":1,"aa":1,"":1}"#), Ok(r#"{"":1,"B":1,"a":1,"aa":1,"b":1}"#)),
        ("escaped ASCII is written literally", t(r#""\u0041\/\u0062""#), Ok(r#""A/b""#)),
        ("the five short escapes are used for their control characters", t(r#""\u0008\u0009\u000a\u000c\u000d""#), Ok(r#""\b\t\n\f\r""#)),
        ("other control characters use lower-case \\u00xx", t(r#""\u0000\u001F\u000B""#), Ok(r#""\u0000\u001f\u000b""#)),
        ("quote and backslash are escaped", t(r#""a\"b\\c""#), Ok(r#""a\"b\\c""#)),
        ("DEL, U+2028 and non-ASCII are written as UTF-8, not escaped", t(r#""\u007f\u2028\u00e9""#), Ok("\"\u{7f}\u{2028}\u{e9}\"")),
        ("an escaped surrogate pair becomes the UTF-8 of one character", t(r#""\ud83d\ude00""#), Ok("\"\u{1f600}\"")),
        ("no Unicode normalization: A + combining ring stays two characters", t("\"A\u{30a}\""), Ok("\"A\u{30a}\"")),
        ("integers at the edge of the safe range", t("[0,-1,9007199254740991,-9007199254740991]"), Ok("[0,-1,9007199254740991,-9007199254740991]")),
        ("literals", t("[true,false,null]"), Ok("[true,false,null]")),
        ("a bare scalar is a document", t(" 42 "), Ok("42")),
        ("32 levels of nesting is the default limit and is accepted", deep(32), Ok(Box::leak(format!("{}{}", "[".repeat(32), "]".repeat(32)).into_boxed_str()))),
        ("duplicate key", t(r#"{"a":1,"a":2}"#), Err(DuplicateKey)),
        ("duplicate key after unescaping", t(r#"{"a":1,"\u0061":2}"#), Err(DuplicateKey)),
        ("duplicate key in a nested object", t(r#"{"x":{"k":1,"k":1}}"#), Err(DuplicateKey)),
        ("fraction, even when integral", t("1.0"), Err(FloatNotAllowed)),
        ("fraction", t(r#"{"a":0.5}"#), Err(FloatNotAllowed)),
        ("exponent", t("1e2"), Err(FloatNotAllowed)),
        ("upper-case exponent", t("1E2"), Err(FloatNotAllowed)),
        ("negative fraction", t("-1.5"), Err(FloatNotAllowed)),
        ("2^53 is beyond the safe range", t("9007199254740992"), Err(IntegerOutOfRange)),
        ("-2^53 is beyond the safe range", t("-9007199254740992"), Err(IntegerOutOfRange)),
        ("a 30-digit integer", t("123456789012345678901234567890"), Err(IntegerOutOfRange)),
        ("negative zero", t("-0"), Err(MalformedJson)),
        ("leading zero", t("01"), Err(MalformedJson)),
        ("plus sign", t("+1"), Err(MalformedJson)),
        ("NaN", t("NaN"), Err(MalformedJson)),
        ("Infinity", t("[Infinity]"), Err(MalformedJson)),
        ("-Infinity", t("-Infinity"), Err(MalformedJson)),
        ("trailing comma in an object", t(r#"{"a":1,}"#), Err(MalformedJson)),
        ("trailing comma in an array", t("[1,]"), Err(MalformedJson)),
        ("line comment", t("// c\n{}"), Err(MalformedJson)),
        ("block comment", t("{/* c */}"), Err(MalformedJson)),
        ("trailing garbage", t(r#"{"a":1} x"#), Err(MalformedJson)),
        ("two documents", t("{}{}"), Err(MalformedJson)),
        ("single quotes", t("'a'"), Err(MalformedJson)),
        ("unquoted key", t("{a:1}"), Err(MalformedJson)),
        ("empty input", t(""), Err(MalformedJson)),
        ("only whitespace", t("  "), Err(MalformedJson)),
        ("invalid escape", t(r#""\x41""#), Err(MalformedJson)),
        ("unterminated string", t(r#""abc"#), Err(MalformedJson)),
        ("raw tab inside a string", Hex("2261096222"), Err(MalformedJson)),
        ("byte-order mark", Hex("efbbbf7b7d"), Err(MalformedJson)),
        ("lone high surrogate", t(r#""\ud800""#), Err(LoneSurrogate)),
        ("lone low surrogate", t(r#""\udc00""#), Err(LoneSurrogate)),
        ("high surrogate followed by a non-surrogate escape", t(r#""\ud800\u0041""#), Err(LoneSurrogate)),
        ("high surrogate followed by a plain character", t(r#""\ud83dx""#), Err(LoneSurrogate)),
        ("reversed surrogate pair", t(r#""\ude00\ud83d""#), Err(LoneSurrogate)),
        ("lone surrogate in a key", t(r#"{"\ud800":1}"#), Err(LoneSurrogate)),
        ("invalid UTF-8 byte 0xFF in a string", Hex("22ff22"), Err(InvalidUtf8)),
        ("overlong UTF-8 encoding of '/'", Hex("22c0af22"), Err(InvalidUtf8)),
        ("UTF-8-encoded surrogate U+D800 (CESU-8)", Hex("22eda08022"), Err(InvalidUtf8)),
        ("truncated UTF-8 sequence", Hex("22e282"), Err(InvalidUtf8)),
        ("33 levels of nesting exceed the default limit of 32", deep(33), Err(TooDeep)),
        ("10,000 levels of nesting", deep(10_000), Err(TooDeep)),
    ]
}

fn gen_canon() -> Value {
    let mut cases = Vec::new();
    for (comment, input, expected) in canon_cases() {
        let bytes: Vec<u8> = match &input {
            Input::Text(t) => t.as_bytes().to_vec(),
            Input::Hex(x) => hex::decode(x).unwrap(),
        };
        let got = json::parse(&bytes, JsonLimits::default()).map(|v| canonicalize(&v));
        let mut case = obj(&[("comment", s(comment))]);
        case = match &input {
            Input::Text(t) => with(&case, "input", s(t)),
            Input::Hex(x) => with(&case, "input_hex", s(x)),
        };
        match (expected, got) {
            (Ok(want), Ok(got)) => {
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    want,
                    "canon case {comment:?}"
                );
                case = with(&case, "canonical", s(want));
            }
            (Err(code), Err(e)) => {
                assert_eq!(e.code(), code, "canon case {comment:?}: {e}");
                case = with(&case, "error", s(code.as_str()));
            }
            (want, got) => panic!("canon case {comment:?}: want {want:?}, got {got:?}"),
        }
        cases.push(case);
    }
    obj(&[
        ("comment", s("Strict JSON profile and RFC 8785 canonical form (SPEC.md section 4). Parse `input` (UTF-8 text) or `input_hex` (raw bytes) with the default limits (65536 bytes, depth 32); expect `canonical` (UTF-8 text) or a rejection with `error`.")),
        ("cases", arr(cases)),
    ])
}

// ---------------------------------------------------------------- handles.json

fn gen_handles() -> Value {
    let valid = [
        ("@kevin@relay-a.example", "local name and DNS host"),
        ("@a@b", "one-character name and host"),
        ("@0@x.example", "a name may start with a digit"),
        ("@kevin-2@127.0.0.1:7070", "IPv4 host with port"),
        ("@k_v@localhost:1", "underscore separator, lowest port"),
        ("@nova@relay-b.example:65535", "highest port"),
        (
            "@abcdefghijklmnopqrstuvwxyz012345@h",
            "32-character name, the longest",
        ),
        (
            "@relay@relay-a.example",
            "reserved: the relay's own address",
        ),
        ("@admin@relay-a.example", "reserved"),
        ("@postmaster@relay-a.example", "reserved"),
    ];
    let invalid = [
        ("@Kevin@relay-a.example", "upper case in the name"),
        ("@k\u{e9}vin@relay-a.example", "non-ASCII letter"),
        ("@k\u{435}vin@relay-a.example", "Cyrillic look-alike letter"),
        ("@\u{ff4b}evin@relay-a.example", "fullwidth letter"),
        ("@kevin", "local form where the global form is required"),
        ("kevin@relay-a.example", "missing leading @"),
        ("@-kevin@relay-a.example", "starts with a separator"),
        ("@kevin-@relay-a.example", "ends with a separator"),
        ("@ke--vin@relay-a.example", "doubled separator"),
        ("@ke_-vin@relay-a.example", "adjacent separators"),
        ("@ke.vin@relay-a.example", "dot in the name"),
        ("@abcdefghijklmnopqrstuvwxyz0123456@h", "33-character name"),
        ("@@relay-a.example", "empty name"),
        ("@kevin@", "empty host"),
        ("@kevin@Relay-a.example", "upper case in the host"),
        ("@kevin@relay_a.example", "underscore in the host"),
        ("@kevin@-relay.example", "host label starts with '-'"),
        ("@kevin@relay..example", "empty host label"),
        ("@kevin@relay.example.", "trailing dot"),
        ("@kevin@relay.example:0", "port 0"),
        ("@kevin@relay.example:65536", "port above 65535"),
        ("@kevin@relay.example:080", "port with a leading zero"),
        ("@kevin@relay.example:", "empty port"),
        ("@kevin@1.2.3", "numeric host that is not a dotted quad"),
        ("@kevin@256.1.1.1", "IPv4 octet above 255"),
        ("@kevin@01.2.3.4", "IPv4 octet with a leading zero"),
        ("@kevin@a@b", "two hosts"),
        ("@kevin @relay-a.example", "space"),
        ("", "empty string"),
    ];
    let mut v = Vec::new();
    for (x, comment) in valid {
        let hd = Handle::parse(x).unwrap_or_else(|e| panic!("{x}: {e}"));
        v.push(obj(&[
            ("handle", s(x)),
            ("reserved", Value::Bool(hd.name().is_reserved())),
            ("comment", s(comment)),
        ]));
    }
    let mut bad = Vec::new();
    for (x, comment) in invalid {
        let e = Handle::parse(x).expect_err(x);
        bad.push(obj(&[
            ("handle", s(x)),
            ("error", s(e.code().as_str())),
            ("comment", s(&format!("{comment} ({})", e.reason))),
        ]));
    }
    obj(&[
        ("comment", s("Handles in global form (SPEC.md section 3). `valid` must parse; `reserved` says whether registration must refuse the name with handle_reserved. `invalid` must be refused with `error`.")),
        ("valid", arr(v)),
        ("invalid", arr(bad)),
    ])
}

// ---------------------------------------------------------------- envelopes

fn alice() -> Handle {
    h("@alice@relay-a.example")
}
fn bob() -> Handle {
    h("@bob@relay-b.example")
}

fn base_env(from: &Handle, key: &SecretKey, ty: MessageType, payload: Payload) -> Envelope {
    Envelope {
        msg_type: ty,
        type_version: 1,
        from: from.clone(),
        key: key.public().key_id(),
        to: vec![bob()],
        ts: T0,
        corr: None,
        ack_by: None,
        conv: None,
        payload,
    }
}

fn valid_envelopes() -> Vec<(&'static str, u8, Envelope)> {
    let a = sk(1);
    let relay = sk(0x41);
    let id_x = MessageId([0xab; 32]);
    let mut v = Vec::new();
    let msg = |t: &str| Payload::Message {
        text: t.to_owned(),
        data: None,
    };
    v.push((
        "a plain message",
        1,
        base_env(&alice(), &a, MessageType::Message, msg("hello, bob")),
    ));
    let mut e = base_env(
        &alice(),
        &a,
        MessageType::Message,
        Payload::Message {
            text: "caf\u{e9} \u{1f600} \"quoted\" \\ tab\there".into(),
            data: Some(obj(&[
                ("z", i(-5)),
                ("\u{e000}", s("pua")),
                ("\u{1f600}", arr(vec![Value::Null, Value::Bool(true)])),
                ("a", obj(&[])),
            ])),
        },
    );
    e.corr = Some("conv-42".into());
    e.ack_by = Some(T0 + 30_000);
    e.to = vec![bob(), h("@carol@relay-a.example")];
    v.push(("message with structured data whose keys need UTF-16 ordering, escapes, a correlation id, an ack deadline and two recipients", 1, e));
    let mut e = base_env(
        &alice(),
        &a,
        MessageType::TaskRequest,
        Payload::TaskRequest {
            task: "summarize".into(),
            input: Some(obj(&[
                ("url", s("https://example.org/a")),
                ("max_words", i(100)),
            ])),
        },
    );
    e.ack_by = Some(T0 + 600_000);
    v.push(("task_request with an ack deadline", 1, e));
    let mut e = base_env(
        &bob(),
        &sk(0x21),
        MessageType::TaskResult,
        Payload::TaskResult {
            status: TaskStatus::Ok,
            output: Some(obj(&[("summary", s("short"))])),
            error: None,
        },
    );
    e.to = vec![alice()];
    e.corr = Some(id_x.to_hex());
    v.push((
        "task_result answering a task_request (corr is its id)",
        0x21,
        e,
    ));
    let mut e = base_env(
        &bob(),
        &sk(0x21),
        MessageType::TaskResult,
        Payload::TaskResult {
            status: TaskStatus::Error,
            output: None,
            error: Some("input too long".into()),
        },
    );
    e.to = vec![alice()];
    e.corr = Some(id_x.to_hex());
    v.push(("task_result reporting an error", 0x21, e));
    let mut e = base_env(
        &bob(),
        &sk(0x21),
        MessageType::Ack,
        Payload::Ack {
            msg: id_x,
            status: AckStatus::Processed,
            reason: None,
        },
    );
    e.to = vec![alice()];
    v.push(("ack (processed) of a message", 0x21, e));
    v.push((
        "contact_request asking for the task level",
        1,
        base_env(
            &alice(),
            &a,
            MessageType::ContactRequest,
            Payload::ContactRequest {
                level: ContactLevel::Task,
                note: Some("hi, I'm alice's scheduler".into()),
            },
        ),
    ));
    let mut e = base_env(
        &alice(),
        &a,
        MessageType::Vouch,
        Payload::Vouch {
            subject: bob(),
            action: VouchAction::Grant,
        },
    );
    e.to = vec![h("@relay@relay-b.example")];
    v.push(("vouch, addressed to the subject's relay", 1, e));
    let mut e = base_env(
        &alice(),
        &a,
        MessageType::Report,
        Payload::Report {
            subject: bob(),
            reason: ReportReason::Spam,
            msg: Some(id_x),
            note: None,
        },
    );
    e.to = vec![h("@relay@relay-b.example")];
    v.push(("report, addressed to the subject's relay", 1, e));
    let mut ext = Object::new();
    ext.insert("anything", arr(vec![i(1), s("two")]));
    v.push((
        "extension type x-demo.ping with type_version 3 and an opaque payload",
        1,
        Envelope {
            type_version: 3,
            ..base_env(
                &alice(),
                &a,
                MessageType::Extension("x-demo.ping".into()),
                Payload::Extension(ext),
            )
        },
    ));
    let mut e = base_env(
        &h("@relay@relay-a.example"),
        &relay,
        MessageType::Receipt,
        Payload::Receipt {
            msg: id_x,
            recipient: bob(),
            status: DeliveryState::Acked,
            ack: Some(MessageId([0xcd; 32])),
            ack_status: Some(AckStatus::Processed),
            reason: None,
        },
    );
    e.to = vec![alice()];
    v.push((
        "receipt from relay-a to alice, signed by the relay key under the receipt tag",
        0x41,
        e,
    ));
    let mut e = base_env(
        &h("@relay@relay-a.example"),
        &relay,
        MessageType::Receipt,
        Payload::Receipt {
            msg: id_x,
            recipient: bob(),
            status: DeliveryState::TimedOut,
            ack: None,
            ack_status: None,
            reason: None,
        },
    );
    e.to = vec![alice()];
    e.ts = T0 + 30_001;
    v.push(("timed_out receipt", 0x41, e));
    v
}

fn gen_envelopes_valid() -> Value {
    let mut cases = Vec::new();
    for (comment, seed_start, env) in valid_envelopes() {
        let key = sk(seed_start);
        let signed = env.sign(&key).unwrap();
        // The vector must survive the same path a relay takes.
        let reparsed =
            SignedEnvelope::parse(&signed.wire_bytes(), &EnvelopeLimits::default()).unwrap();
        let verified = reparsed.verify(&key.public()).unwrap();
        assert_eq!(verified.id(), signed.id());
        cases.push(obj(&[
            ("comment", s(comment)),
            ("seed_hex", s(&hex::encode(&seed(seed_start)))),
            ("public_key", s(&key.public().to_hex())),
            ("key_id", s(&key.public().key_id().to_hex())),
            (
                "domain",
                s(std::str::from_utf8(env.domain().tag())
                    .unwrap()
                    .trim_end_matches('\0')),
            ),
            ("envelope", env.to_value()),
            ("signing_input_hex", s(&hex::encode(signed.signing_input()))),
            ("id", s(&signed.id().to_hex())),
            ("sig", s(&signed.signature().to_hex())),
            ("wire", s(&String::from_utf8(signed.wire_bytes()).unwrap())),
        ]));
    }
    obj(&[
        ("comment", s("Valid envelopes (SPEC.md sections 6-7). For each case: the public key and key id follow from seed_hex (RFC 8032); signing_input = domain tag bytes, one 0x00 byte, then the RFC 8785 form of `envelope`; id = BLAKE3(signing_input); sig = Ed25519(seed, signing_input); `wire` is the canonical form of the envelope with `id` and `sig` added, which must parse and verify with public_key.")),
        ("cases", arr(cases)),
    ])
}

fn gen_envelopes_invalid() -> Value {
    use ErrorCode::*;
    let a = sk(1);
    let b = sk(0x21);
    let good = base_env(
        &alice(),
        &a,
        MessageType::Message,
        Payload::Message {
            text: "hi".into(),
            data: None,
        },
    );
    let good_v = good.to_value(); // without id and sig
    let signed = |v: &Value| sign_raw(Domain::Envelope, v.clone(), &a);
    let sgood = signed(&good_v);
    let mut cases: Vec<(String, Value, ErrorCode, Option<PublicKey>)> = Vec::new();
    let mut add = |c: &str, v: Value, code: ErrorCode, k: Option<PublicKey>| {
        cases.push((c.to_owned(), v, code, k))
    };
    let payload = |p: Value| with(&good_v, "payload", p);

    add("not an object", arr(vec![]), InvalidField, None);
    add(
        "protocol version 2",
        signed(&with(&good_v, "v", i(2))),
        UnsupportedVersion,
        None,
    );
    add(
        "protocol version missing",
        signed(&without(&good_v, "v")),
        MissingField,
        None,
    );
    add(
        "unregistered type without the x- prefix",
        signed(&with(&good_v, "type", s("chat"))),
        UnknownType,
        None,
    );
    add(
        "type names are case-sensitive",
        signed(&with(&good_v, "type", s("Message"))),
        UnknownType,
        None,
    );
    add(
        "x- alone is not an extension name",
        signed(&with(&good_v, "type", s("x-"))),
        UnknownType,
        None,
    );
    add(
        "type_version 2 of message is not defined in v1",
        signed(&with(&good_v, "type_version", i(2))),
        UnsupportedTypeVersion,
        None,
    );
    add(
        "type_version 0",
        signed(&with(&good_v, "type_version", i(0))),
        InvalidField,
        None,
    );
    add(
        "unknown top-level field",
        signed(&with(&good_v, "priority", i(1))),
        UnknownField,
        None,
    );
    add(
        "unknown payload field",
        signed(&payload(obj(&[("text", s("hi")), ("font", s("serif"))]))),
        UnknownField,
        None,
    );
    add(
        "missing payload.text",
        signed(&payload(obj(&[]))),
        MissingField,
        None,
    );
    add(
        "payload.text is not a string",
        signed(&payload(obj(&[("text", i(5))]))),
        InvalidField,
        None,
    );
    add(
        "payload is not an object",
        signed(&payload(s("hi"))),
        InvalidField,
        None,
    );
    add(
        "sender in local form",
        signed(&with(&good_v, "from", s("@alice"))),
        InvalidHandle,
        None,
    );
    add(
        "sender with upper case",
        signed(&with(&good_v, "from", s("@Alice@relay-a.example"))),
        InvalidHandle,
        None,
    );
    add(
        "no recipients",
        signed(&with(&good_v, "to", arr(vec![]))),
        InvalidField,
        None,
    );
    add(
        "recipient listed twice",
        signed(&with(
            &good_v,
            "to",
            arr(vec![s(bob().as_str()), s(bob().as_str())]),
        )),
        InvalidField,
        None,
    );
    let many: Vec<Value> = (0..17)
        .map(|n| s(&format!("@r{n}@relay-b.example")))
        .collect();
    add(
        "17 recipients, more than the default limit of 16",
        signed(&with(&good_v, "to", arr(many))),
        TooManyRecipients,
        None,
    );
    add(
        "recipients not an array",
        signed(&with(&good_v, "to", s(bob().as_str()))),
        InvalidField,
        None,
    );
    add("timestamp as a float", Value::Null, FloatNotAllowed, None); // replaced below by raw text
    add(
        "negative timestamp",
        signed(&with(&good_v, "ts", i(-1))),
        InvalidField,
        None,
    );
    add(
        "timestamp as a string",
        signed(&with(&good_v, "ts", s("1764000000000"))),
        InvalidField,
        None,
    );
    add(
        "ack_by equal to ts",
        signed(&with(&good_v, "ack_by", i(T0))),
        InvalidField,
        None,
    );
    add(
        "ack_by more than 7 days after ts",
        signed(&with(&good_v, "ack_by", i(T0 + 7 * 24 * 3600 * 1000 + 1))),
        InvalidField,
        None,
    );
    add(
        "corr with a space",
        signed(&with(&good_v, "corr", s("a b"))),
        InvalidField,
        None,
    );
    add(
        "empty corr",
        signed(&with(&good_v, "corr", s(""))),
        InvalidField,
        None,
    );
    add(
        "corr of 129 bytes",
        signed(&with(&good_v, "corr", s(&"c".repeat(129)))),
        InvalidField,
        None,
    );
    add(
        "payload of 32769 canonical bytes, over the default limit of 32768",
        signed(&payload(obj(&[("text", s(&"x".repeat(32769 - 11)))]))),
        PayloadTooLarge,
        None,
    );
    add(
        "key id in upper case",
        signed(&with(&good_v, "key", s(&good.key.to_hex().to_uppercase()))),
        InvalidField,
        None,
    );
    add("signature missing", good_v.clone(), MissingField, None);
    add(
        "signature too short",
        with(&sgood, "sig", s("abcd")),
        InvalidField,
        None,
    );
    add(
        "signature in upper case hex",
        with(
            &sgood,
            "sig",
            s(&sgood
                .as_object()
                .unwrap()
                .get("sig")
                .unwrap()
                .as_str()
                .unwrap()
                .to_uppercase()),
        ),
        InvalidField,
        None,
    );
    add(
        "id that is not the id of the signing input",
        with(&sgood, "id", s(&"0".repeat(64))),
        IdMismatch,
        None,
    );
    // Signature failures: structurally valid, checked with the named key.
    let mut flipped = hex::decode(
        sgood
            .as_object()
            .unwrap()
            .get("sig")
            .unwrap()
            .as_str()
            .unwrap(),
    )
    .unwrap();
    flipped[0] ^= 0x01;
    add(
        "one bit of the signature flipped",
        with(&sgood, "sig", s(&hex::encode(&flipped))),
        BadSignature,
        Some(a.public()),
    );
    add(
        "payload changed after signing (no id given, so the id is recomputed)",
        with(&sgood, "payload", obj(&[("text", s("hI"))])),
        BadSignature,
        Some(a.public()),
    );
    add(
        "signed by a different key than the one named",
        sign_raw(Domain::Envelope, good_v.clone(), &b),
        BadSignature,
        Some(a.public()),
    );
    add(
        "verified with a key other than the one the envelope names",
        sgood.clone(),
        UnknownKey,
        Some(b.public()),
    );
    add(
        "signed under the receipt tag instead of the envelope tag",
        sign_raw(Domain::Receipt, good_v.clone(), &a),
        BadSignature,
        Some(a.public()),
    );
    add(
        "signed under the key-log tag instead of the envelope tag",
        sign_raw(Domain::KeyLog, good_v.clone(), &a),
        BadSignature,
        Some(a.public()),
    );
    // Non-canonical S: S + l verifies under lax rules but not under verify_strict.
    let sig_hex = sgood
        .as_object()
        .unwrap()
        .get("sig")
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let mut sig_b = hex::decode(&sig_hex).unwrap();
    add_scalar_l(&mut sig_b[32..]);
    add(
        "signature with S + l (non-canonical scalar)",
        with(&sgood, "sig", s(&hex::encode(&sig_b))),
        BadSignature,
        Some(a.public()),
    );
    // Type rules.
    let receipt_payload = obj(&[
        ("msg", s(&"ab".repeat(32))),
        ("recipient", s(bob().as_str())),
        ("status", s("delivered")),
    ]);
    add(
        "receipt from an agent",
        signed(&with(
            &with(&good_v, "type", s("receipt")),
            "payload",
            receipt_payload,
        )),
        TypeReserved,
        None,
    );
    add(
        "message from a relay address",
        signed(&with(&good_v, "from", s("@relay@relay-a.example"))),
        TypeReserved,
        None,
    );
    let ack_v = with(
        &with(&good_v, "type", s("ack")),
        "payload",
        obj(&[("msg", s(&"ab".repeat(32))), ("status", s("received"))]),
    );
    add(
        "ack with two recipients",
        signed(&with(
            &ack_v,
            "to",
            arr(vec![s(bob().as_str()), s("@carol@relay-a.example")]),
        )),
        InvalidField,
        None,
    );
    add(
        "ack that asks for an ack",
        signed(&with(&ack_v, "ack_by", i(T0 + 1000))),
        InvalidField,
        None,
    );
    add(
        "ack with an unknown status",
        signed(&with(
            &ack_v,
            "payload",
            obj(&[("msg", s(&"ab".repeat(32))), ("status", s("done"))]),
        )),
        InvalidField,
        None,
    );
    let tr_v = with(
        &with(&good_v, "type", s("task_result")),
        "payload",
        obj(&[("status", s("ok"))]),
    );
    add(
        "task_result without corr",
        signed(&tr_v),
        MissingField,
        None,
    );
    add(
        "task_result with status ok and an error text",
        signed(&with(
            &with(&tr_v, "corr", s("x")),
            "payload",
            obj(&[("status", s("ok")), ("error", s("e"))]),
        )),
        InvalidField,
        None,
    );
    let vouch_v = with(
        &with(&good_v, "type", s("vouch")),
        "payload",
        obj(&[("subject", s(bob().as_str())), ("action", s("grant"))]),
    );
    add(
        "vouch addressed to the subject instead of the subject's relay",
        signed(&vouch_v),
        InvalidField,
        None,
    );
    add(
        "vouch that asks for an ack",
        signed(&with(
            &with(&vouch_v, "to", arr(vec![s("@relay@relay-b.example")])),
            "ack_by",
            i(T0 + 1000),
        )),
        InvalidField,
        None,
    );
    add(
        "vouch addressed to the wrong relay",
        signed(&with(
            &vouch_v,
            "to",
            arr(vec![s("@relay@relay-a.example")]),
        )),
        InvalidField,
        None,
    );
    add(
        "contact_request with an unknown level",
        signed(&with(
            &with(&good_v, "type", s("contact_request")),
            "payload",
            obj(&[("level", s("admin"))]),
        )),
        InvalidField,
        None,
    );
    add(
        "note longer than 280 characters",
        signed(&with(
            &with(&good_v, "type", s("contact_request")),
            "payload",
            obj(&[("level", s("message")), ("note", s(&"\u{e9}".repeat(281)))]),
        )),
        InvalidField,
        None,
    );
    add(
        "task name with upper case",
        signed(&with(
            &with(&good_v, "type", s("task_request")),
            "payload",
            obj(&[("task", s("Summarize"))]),
        )),
        InvalidField,
        None,
    );
    // A signature the sender made for another purpose never verifies as an envelope's
    // (SIG-1): the request, descriptor and relay-request tags, besides receipt and key log above.
    for (purpose, domain) in [
        ("request", Domain::Request),
        ("descriptor", Domain::Descriptor),
        ("relay-request", Domain::RelayRequest),
    ] {
        add(
            &format!("signed under the {purpose} tag instead of the envelope tag"),
            sign_raw(domain, good_v.clone(), &a),
            BadSignature,
            Some(a.public()),
        );
    }

    let mut out = Vec::new();
    for (comment, v, code, key) in cases {
        let input = if comment == "timestamp as a float" {
            text(&sgood).replace(&format!("\"ts\":{T0}"), &format!("\"ts\":{T0}.0"))
        } else {
            text(&v)
        };
        let res =
            SignedEnvelope::parse(input.as_bytes(), &EnvelopeLimits::default()).and_then(|se| {
                match &key {
                    Some(k) => se.verify(k).map(|_| ()),
                    None => Ok(()),
                }
            });
        match res {
            Err(e) => assert_eq!(e.code(), code, "envelope case {comment:?}: {e}"),
            Ok(()) => panic!("envelope case {comment:?} was accepted"),
        }
        let mut case = obj(&[
            ("comment", s(&comment)),
            ("input", s(&input)),
            ("error", s(code.as_str())),
        ]);
        if let Some(k) = key {
            case = with(&case, "public_key", s(&k.to_hex()));
        }
        out.push(case);
    }
    // Raw byte cases.
    obj(&[
        ("comment", s("Envelopes that must be refused (SPEC.md sections 4-7) with `error`, parsing with the default limits (16 recipients, 32768 payload bytes). Where `public_key` is present the envelope is structurally valid and the error comes from verifying it with that key; without it the error comes before verification. Unsigned fields other than the one under test are valid.")),
        ("cases", arr(out)),
    ])
}

/// Adds the group order l to a little-endian 32-byte scalar in place (wrapping at 2^256).
fn add_scalar_l(s: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for k in 0..32 {
        let t = u16::from(s[k]) + u16::from(L[k]) + carry;
        s[k] = t as u8;
        carry = t >> 8;
    }
}

// ---------------------------------------------------------------- keylogs.json

struct LogBuilder {
    handle: Handle,
    entries: Vec<Value>,
    head: Option<String>,
    ts: i64,
    /// Secret keys the builder may prove possession of (LOG-2), found by their public key.
    holders: Vec<SecretKey>,
}

impl LogBuilder {
    fn new(handle: &Handle, holders: &[&SecretKey]) -> LogBuilder {
        LogBuilder {
            handle: handle.clone(),
            entries: vec![],
            head: None,
            ts: T0,
            holders: holders.iter().map(|k| (*k).clone()).collect(),
        }
    }
    /// Appends an entry built from `op` fields, with the proofs of possession its keys need
    /// (`key` of a rotate or recover, any `recovery`) when the builder holds their secret keys,
    /// signed by `signer`; returns its value.
    fn push(&mut self, op: &str, fields: &[(&str, Value)], signer: &SecretKey) -> Value {
        let holder = |v: &Value| {
            self.holders
                .iter()
                .find(|k| Some(k.public().to_hex().as_str()) == v.as_str())
                .cloned()
        };
        let mut proofs = Vec::new();
        for (name, v) in fields {
            let proof = match (*name, op) {
                ("key", "rotate" | "recover") => "key_sig",
                ("recovery", _) => "recovery_sig",
                _ => continue,
            };
            if let Some(k) = holder(v) {
                proofs.push((proof, k));
            }
        }
        let proofs: Vec<(&str, &SecretKey, Domain)> = proofs
            .iter()
            .map(|(p, k)| (*p, k, Domain::KeyLogPop))
            .collect();
        self.push_proved(op, fields, &proofs, signer)
    }
    /// Appends an entry with exactly the given proofs: each member `(name, key, domain)` is
    /// `key`'s signature under `domain` over the entry without `sig` and proofs.
    fn push_proved(
        &mut self,
        op: &str,
        fields: &[(&str, Value)],
        proofs: &[(&str, &SecretKey, Domain)],
        signer: &SecretKey,
    ) -> Value {
        let mut o = vec![
            ("v", i(1)),
            ("handle", s(self.handle.as_str())),
            ("seq", i(self.entries.len() as i64)),
        ];
        if let Some(p) = &self.head {
            o.push(("prev", s(p)));
        }
        o.push(("ts", i(self.ts)));
        o.push(("op", s(op)));
        o.extend(fields.iter().cloned());
        o.push(("signer", s(&signer.public().key_id().to_hex())));
        let mut unsigned = obj(&o);
        let proof_content = canonicalize(&unsigned);
        for (name, key, domain) in proofs {
            let sig = key.sign(*domain, &proof_content);
            unsigned = with(&unsigned, name, s(&sig.to_hex()));
        }
        let hash = blake3::hash(&Domain::KeyLog.input(&canonicalize(&unsigned)));
        let v = sign_raw(Domain::KeyLog, unsigned, signer);
        self.head = Some(hex::encode(hash.as_bytes()));
        self.entries.push(v.clone());
        self.ts += 60_000;
        v
    }
}

fn kh(k: &SecretKey) -> Value {
    s(&k.public().to_hex())
}

fn check_log(entries: &[Value]) -> Result<KeyLog, ErrorCode> {
    let parsed: Result<Vec<_>, _> = entries
        .iter()
        .map(|e| SignedKeyLogEntry::from_value(e.clone()))
        .collect();
    let parsed = parsed.map_err(|e| e.code())?;
    KeyLog::verify(parsed).map_err(|e| e.code())
}

fn gen_keylogs() -> Value {
    use ErrorCode::*;
    let kev = h("@kevin@relay-a.example");
    let (k1, k2, k3, k4, r1, r2) = (sk(1), sk(0x21), sk(0x31), sk(0x51), sk(0x61), sk(0x71));
    let all = [&k1, &k2, &k3, &k4, &r1, &r2];
    let kid = |k: &SecretKey| k.public().key_id().to_hex();
    let mut valid = Vec::new();
    let mut push_valid = |comment: &str, lb: &LogBuilder, queries: Vec<(String, i64, &str)>| {
        let log = check_log(&lb.entries).unwrap_or_else(|c| panic!("{comment}: {c}"));
        let mut qs = Vec::new();
        for (kid_hex, ts, want) in queries {
            let got = match log.key_at(&formica_protocol::KeyId::parse_hex(&kid_hex).unwrap(), ts) {
                Ok(k) => k.to_hex(),
                Err(e) => e.code().as_str().to_owned(),
            };
            if want == "key" {
                assert_eq!(got.len(), 64, "{comment}: query {kid_hex}@{ts} gave {got}");
            } else {
                assert_eq!(got, want, "{comment}: query {kid_hex}@{ts}");
            }
            qs.push(obj(&[
                ("key_id", s(&kid_hex)),
                ("ts", i(ts)),
                ("result", s(&got)),
            ]));
        }
        valid.push(obj(&[
            ("comment", s(comment)),
            ("entries", arr(lb.entries.clone())),
            ("head", s(lb.head.as_deref().unwrap())),
            (
                "current_key",
                log.current_key()
                    .map(|k| s(&k.to_hex()))
                    .unwrap_or(Value::Null),
            ),
            ("queries", arr(qs)),
        ]));
    };

    let mut lb = LogBuilder::new(&kev, &all);
    lb.push("register", &[("key", kh(&k1)), ("recovery", kh(&r1))], &k1);
    push_valid(
        "register with a recovery key",
        &lb,
        vec![
            (kid(&k1), T0, "key"),
            (kid(&k1), T0 - 1, "key_not_valid"),
            (kid(&r1), T0 + 1, "unknown_key"),
        ],
    );

    let mut lb = LogBuilder::new(&kev, &all);
    lb.push("register", &[("key", kh(&k1))], &k1);
    lb.push("rotate", &[("key", kh(&k2))], &k1);
    lb.push("rotate", &[("key", kh(&k3))], &k2);
    push_valid(
        "two rotations: each key is valid from its entry until the next",
        &lb,
        vec![
            (kid(&k1), T0 + 59_999, "key"),
            (kid(&k1), T0 + 60_000, "key_not_valid"),
            (kid(&k2), T0 + 60_000, "key"),
            (kid(&k2), T0 + 120_000, "key_not_valid"),
            (kid(&k3), T0 + 120_000, "key"),
            (kid(&k3), T0 + 10_000_000, "key"),
            (kid(&k4), T0 + 120_000, "unknown_key"),
        ],
    );

    let mut lb = LogBuilder::new(&kev, &all);
    lb.push("register", &[("key", kh(&k1)), ("recovery", kh(&r1))], &k1);
    lb.push("revoke", &[], &r1);
    lb.push("recover", &[("key", kh(&k2)), ("recovery", kh(&r2))], &r1);
    lb.push("rotate", &[("key", kh(&k3))], &k2);
    lb.push("revoke", &[], &k3);
    lb.push("recover", &[("key", kh(&k4))], &r2);
    push_valid("revoke by the recovery key, recover with a new recovery key, rotate, revoke by the current key, recover again", &lb, vec![
        (kid(&k1), T0 + 30_000, "key"),
        (kid(&k1), T0 + 60_000, "key_not_valid"),
        (kid(&k2), T0 + 90_000, "key_not_valid"),
        (kid(&k2), T0 + 120_000, "key"),
        (kid(&k3), T0 + 240_000, "key_not_valid"),
        (kid(&k4), T0 + 300_000, "key"),
    ]);

    let mut lb = LogBuilder::new(&kev, &all);
    lb.push("register", &[("key", kh(&k1))], &k1);
    lb.push("move", &[("to", s("@kevin@relay-b.example"))], &k1);
    push_valid(
        "move closes the log; the key is valid until the move",
        &lb,
        vec![
            (kid(&k1), T0, "key"),
            (kid(&k1), T0 + 60_000, "key_not_valid"),
        ],
    );

    // Invalid logs: each built on a valid prefix.
    let mut invalid = Vec::new();
    let mut push_invalid = |comment: &str, entries: Vec<Value>, code: ErrorCode| {
        match check_log(&entries) {
            Err(c) => assert_eq!(c, code, "keylog case {comment:?}"),
            Ok(_) => panic!("keylog case {comment:?} was accepted"),
        }
        invalid.push(obj(&[
            ("comment", s(comment)),
            ("entries", arr(entries)),
            ("error", s(code.as_str())),
        ]));
    };
    let reg =
        |lb: &mut LogBuilder| lb.push("register", &[("key", kh(&k1)), ("recovery", kh(&r1))], &k1);

    let mut lb = LogBuilder::new(&kev, &all);
    lb.push("rotate", &[("key", kh(&k1))], &k1);
    push_invalid(
        "first entry is not a register",
        lb.entries.clone(),
        KeylogBrokenChain,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    let mut e = lb.entries[0].clone();
    e = with(&e, "prev", s(&"00".repeat(32)));
    e = sign_raw(Domain::KeyLog, without(&e, "sig"), &k1);
    push_invalid("first entry with a prev", vec![e], KeylogBrokenChain);

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.entries.push(Value::Null);
    lb.push("rotate", &[("key", kh(&k2))], &k1);
    lb.entries.remove(1);
    push_invalid("seq skips a number", lb.entries.clone(), KeylogBrokenChain);

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.head = Some("11".repeat(32));
    lb.push("rotate", &[("key", kh(&k2))], &k1);
    push_invalid(
        "prev is not the hash of the previous entry",
        lb.entries.clone(),
        KeylogBrokenChain,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.ts = T0;
    lb.push("rotate", &[("key", kh(&k2))], &k1);
    push_invalid(
        "timestamp equal to the previous entry's",
        lb.entries.clone(),
        KeylogTimeOrder,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.push("rotate", &[("key", kh(&k2))], &r1);
    push_invalid(
        "rotate signed by the recovery key",
        lb.entries.clone(),
        KeylogUnauthorizedSigner,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.push("recover", &[("key", kh(&k2))], &k1);
    push_invalid(
        "recover signed by the current key",
        lb.entries.clone(),
        KeylogUnauthorizedSigner,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    lb.push("register", &[("key", kh(&k1))], &k1);
    lb.push("revoke", &[], &k1);
    lb.push("recover", &[("key", kh(&k2))], &k1);
    push_invalid(
        "recover in a log without a recovery key",
        lb.entries.clone(),
        KeylogUnauthorizedSigner,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.push("revoke", &[], &k1);
    lb.push("revoke", &[], &r1);
    push_invalid(
        "revoke when no key is current",
        lb.entries.clone(),
        KeylogUnauthorizedSigner,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    lb.push("register", &[("key", kh(&k1))], &k2);
    push_invalid(
        "register signed by a key other than the one it registers",
        lb.entries.clone(),
        KeylogUnauthorizedSigner,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    let rot = lb.push("rotate", &[("key", kh(&k2))], &k1);
    let sig = rot
        .as_object()
        .unwrap()
        .get("sig")
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let mut sb = hex::decode(&sig).unwrap();
    sb[10] ^= 0x80;
    lb.entries[1] = with(&rot, "sig", s(&hex::encode(&sb)));
    push_invalid(
        "rotate with a corrupted signature",
        lb.entries.clone(),
        BadSignature,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.push("rotate", &[("key", kh(&k2))], &k1);
    lb.push("rotate", &[("key", kh(&k1))], &k2);
    push_invalid(
        "rotate back to a key used before",
        lb.entries.clone(),
        KeylogKeyReused,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    lb.push("register", &[("key", kh(&k1)), ("recovery", kh(&k1))], &k1);
    push_invalid(
        "recovery key equal to the signing key",
        lb.entries.clone(),
        KeylogKeyReused,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.push("move", &[("to", s("@kevin@relay-b.example"))], &k1);
    lb.push("rotate", &[("key", kh(&k2))], &k1);
    push_invalid("entry after a move", lb.entries.clone(), KeylogClosed);

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.handle = h("@kevin@relay-b.example");
    lb.push("rotate", &[("key", kh(&k2))], &k1);
    push_invalid(
        "entry for another handle",
        lb.entries.clone(),
        KeylogHandleMismatch,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    // The identity point (small order): a weak key.
    let weak = format!("01{}", "00".repeat(31));
    lb.push("rotate", &[("key", s(&weak))], &k1);
    push_invalid(
        "rotate to a small-order (weak) key",
        lb.entries.clone(),
        WeakKey,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.push("rotate", &[("key", kh(&k2)), ("recovery", kh(&r2))], &k1);
    push_invalid(
        "rotate may not change the recovery key (unknown field)",
        lb.entries.clone(),
        UnknownField,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.push("register", &[("key", kh(&k2))], &k1);
    push_invalid(
        "a second register entry",
        lb.entries.clone(),
        KeylogBrokenChain,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.push("move", &[("to", s(kev.as_str()))], &k1);
    push_invalid(
        "move to the log's own handle",
        lb.entries.clone(),
        InvalidField,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    lb.push("register", &[("key", kh(&k1))], &k1);
    let e0 = lb.entries[0].clone();
    push_invalid("an empty log", vec![], KeylogBrokenChain);
    push_invalid(
        "register entry without a key",
        vec![sign_raw(
            Domain::KeyLog,
            without(&without(&e0, "sig"), "key"),
            &k1,
        )],
        MissingField,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    let rot = lb.push("rotate", &[("key", kh(&k2))], &k1);
    lb.entries[1] = sign_raw(Domain::Envelope, without(&rot, "sig"), &k1);
    push_invalid(
        "rotate signed under the envelope tag instead of the key-log tag",
        lb.entries.clone(),
        BadSignature,
    );

    // LOG-2, LOG-10 steps 2.5 and 3.10: every key an entry introduces is proven by its holder.
    let pop = Domain::KeyLogPop;
    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.push_proved("rotate", &[("key", kh(&k2))], &[], &k1);
    push_invalid("rotate without key_sig", lb.entries.clone(), MissingField);

    // The attack this rule stops: kevin's rotate names a public key that another agent (here
    // k2's holder) registered, and kevin, who does not hold it, proves it with his own key.
    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.push_proved("rotate", &[("key", kh(&k2))], &[("key_sig", &k1, pop)], &k1);
    push_invalid(
        "rotate adopting another agent's public key: key_sig is made by the signer's key, not by `key`",
        lb.entries.clone(),
        BadSignature,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.push_proved(
        "rotate",
        &[("key", kh(&k2))],
        &[("key_sig", &k2, Domain::KeyLog)],
        &k1,
    );
    push_invalid(
        "rotate whose key_sig is made by `key` under the key-log tag instead of the keylog-pop tag",
        lb.entries.clone(),
        BadSignature,
    );

    // A proof made for another entry (kevin's own rotate to k2 at seq 1 of another log) does
    // not carry over: it signs that entry's handle, seq, prev and time.
    let mut other = LogBuilder::new(&h("@nova@relay-a.example"), &all);
    other.push("register", &[("key", kh(&k3))], &k3);
    let nova_rot = other.push("rotate", &[("key", kh(&k2))], &k3);
    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    let rot = lb.push("rotate", &[("key", kh(&k2))], &k1);
    let copied = with(
        &without(&rot, "sig"),
        "key_sig",
        nova_rot
            .as_object()
            .unwrap()
            .get("key_sig")
            .unwrap()
            .clone(),
    );
    lb.entries[1] = sign_raw(Domain::KeyLog, copied, &k1);
    push_invalid(
        "rotate whose key_sig is copied from another handle's entry for the same key",
        lb.entries.clone(),
        BadSignature,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.push_proved("rotate", &[("key", kh(&k2))], &[("key_sig", &k2, pop)], &r1);
    push_invalid(
        "rotate with a valid key_sig signed by the recovery key: the signer is checked first",
        lb.entries.clone(),
        KeylogUnauthorizedSigner,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.push("rotate", &[("key", kh(&k2))], &k1);
    lb.push_proved("rotate", &[("key", kh(&k1))], &[("key_sig", &k3, pop)], &k2);
    push_invalid(
        "rotate back to a used key with a key_sig by another key: the proof is checked before key reuse",
        lb.entries.clone(),
        BadSignature,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    let rot = lb.push("rotate", &[("key", kh(&k2))], &k1);
    let upper = rot
        .as_object()
        .unwrap()
        .get("key_sig")
        .unwrap()
        .as_str()
        .unwrap()
        .to_uppercase();
    lb.entries[1] = sign_raw(
        Domain::KeyLog,
        with(&without(&rot, "sig"), "key_sig", s(&upper)),
        &k1,
    );
    push_invalid(
        "rotate whose key_sig is upper-case hex",
        lb.entries.clone(),
        InvalidField,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    let rot = lb.push("rotate", &[("key", kh(&k2))], &k1);
    let key_sig = rot
        .as_object()
        .unwrap()
        .get("key_sig")
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let mut ks = hex::decode(&key_sig).unwrap();
    add_scalar_l(&mut ks[32..]);
    lb.entries[1] = sign_raw(
        Domain::KeyLog,
        with(&without(&rot, "sig"), "key_sig", s(&hex::encode(&ks))),
        &k1,
    );
    push_invalid(
        "rotate whose key_sig has the non-canonical scalar S + l: proofs are verified strictly (SIG-3)",
        lb.entries.clone(),
        BadSignature,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.push("revoke", &[], &r1);
    lb.push_proved("recover", &[("key", kh(&k2))], &[], &r1);
    push_invalid("recover without key_sig", lb.entries.clone(), MissingField);

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.push_proved(
        "recover",
        &[("key", kh(&k2)), ("recovery", kh(&r2))],
        &[("key_sig", &k2, pop), ("recovery_sig", &k2, pop)],
        &r1,
    );
    push_invalid(
        "recover naming a new recovery key whose recovery_sig is made by the new `key`",
        lb.entries.clone(),
        BadSignature,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    lb.push_proved(
        "register",
        &[("key", kh(&k1)), ("recovery", kh(&r1))],
        &[("recovery_sig", &k1, pop)],
        &k1,
    );
    push_invalid(
        "register with a recovery key whose recovery_sig is made by the registered key",
        lb.entries.clone(),
        BadSignature,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    lb.push_proved(
        "register",
        &[("key", kh(&k1)), ("recovery", kh(&r1))],
        &[],
        &k1,
    );
    push_invalid(
        "register with a recovery key but without recovery_sig",
        lb.entries.clone(),
        MissingField,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    lb.push_proved(
        "register",
        &[("key", kh(&k1))],
        &[("recovery_sig", &k1, pop)],
        &k1,
    );
    push_invalid(
        "register without a recovery key but with a recovery_sig",
        lb.entries.clone(),
        UnknownField,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    lb.push_proved(
        "register",
        &[("key", kh(&k1))],
        &[("key_sig", &k1, pop)],
        &k1,
    );
    push_invalid(
        "register with a key_sig (its signature already proves its key)",
        lb.entries.clone(),
        UnknownField,
    );

    let mut lb = LogBuilder::new(&kev, &all);
    reg(&mut lb);
    lb.push_proved("revoke", &[], &[("key_sig", &k1, pop)], &k1);
    push_invalid("key_sig on a revoke", lb.entries.clone(), UnknownField);

    // LOG-1: a member of the wrong JSON type is invalid_field, whatever code the rule names
    // for a value of the right type (unsupported_version, invalid_handle). Each case is a
    // register entry signed by its key, wrong in exactly one member.
    for (comment, member, bad) in [
        ("`v` is a string, not an integer", "v", s("1")),
        ("`v` is a negative integer", "v", i(-1)),
        ("`handle` is a number, not a string", "handle", i(1)),
        ("`ts` is a string, not an integer", "ts", s(&T0.to_string())),
        ("`ts` is a negative integer", "ts", i(-1)),
        ("`op` is a number, not a string", "op", i(0)),
    ] {
        let bad_entry = with(&without(&e0, "sig"), member, bad);
        push_invalid(
            &format!("register entry whose {comment}"),
            vec![sign_raw(Domain::KeyLog, bad_entry, &k1)],
            InvalidField,
        );
    }

    obj(&[
        ("comment", s("Key logs (SPEC.md section 8). Entries carry the proofs of possession of the keys they introduce (`key_sig`, `recovery_sig`; LOG-2). `valid` logs verify from the first entry; each query asks which key was valid for `key_id` at `ts` and gives the public key or the error code. `invalid` logs must be refused with `error`, reported for the first entry that breaks a rule.")),
        ("valid", arr(valid)),
        ("invalid", arr(invalid)),
    ])
}

// ---------------------------------------------------------------- pow.json

fn gen_pow() -> Value {
    let relay = RelayHost::parse("relay-a.example").unwrap();
    let handle = h("@kevin@relay-a.example");
    let key = sk(1).public();
    let ch = pow::Challenge(std::array::from_fn(|k| k as u8));
    let mut cases = Vec::new();
    let mut add = |comment: &str, committed: u32, nonce: u64, required: u32| {
        let prefix = pow::preimage_prefix(&relay, &handle, &key, &ch, committed);
        let hash = pow::pow_hash(&prefix, nonce);
        let proof = pow::PowProof {
            challenge: ch,
            difficulty: committed,
            nonce,
        };
        let result = match pow::check(&prefix, &proof, required) {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.code().as_str().to_owned(),
        };
        cases.push(obj(&[
            ("comment", s(comment)),
            ("relay", s(relay.as_str())),
            ("handle", s(handle.as_str())),
            ("key", s(&key.to_hex())),
            ("challenge", s(&ch.to_hex())),
            ("difficulty", i(i64::from(committed))),
            ("prefix_hex", s(&hex::encode(&prefix))),
            ("nonce", i(nonce as i64)),
            ("hash_hex", s(&hex::encode(&hash))),
            ("zero_bits", i(i64::from(pow::leading_zero_bits(&hash)))),
            ("required", i(i64::from(required))),
            ("result", s(&result)),
        ]));
    };
    let mine = |d: u32| {
        let prefix = pow::preimage_prefix(&relay, &handle, &key, &ch, d);
        pow::mine(&prefix, d, 0, 1, 1 << 30).unwrap()
    };
    let n8 = mine(8);
    let n16 = mine(16);
    add("difficulty 0 is met by any nonce", 0, 0, 0);
    add("the first nonce from 0 that meets difficulty 8", 8, n8, 8);
    add(
        "the first nonce from 0 that meets difficulty 16",
        16,
        n16,
        16,
    );
    add("a proof may commit to more than required", 16, n16, 12);
    add("committed difficulty below the required one", 8, n8, 12);
    let mut bad = n16 + 1;
    while pow::leading_zero_bits(&pow::pow_hash(
        &pow::preimage_prefix(&relay, &handle, &key, &ch, 16),
        bad,
    )) >= 16
    {
        bad += 1;
    }
    add(
        "a nonce whose hash does not meet the committed difficulty",
        16,
        bad,
        16,
    );
    // The committed difficulty is inside the preimage, so re-labelling a proof changes its hash.
    add("the difficulty-8 nonce relabelled as difficulty 4: the hash changes and the check is redone", 4, n8, 4);
    obj(&[
        ("comment", s("Proof-of-work (SPEC.md section 9). prefix = tag `formica/v1/pow` + 0x00 + RFC 8785 form of {challenge, difficulty, handle, key, relay}; hash = BLAKE3(prefix || nonce as 8 bytes little-endian); zero_bits counts leading zero bits from the most significant bit of the first byte. `result` is ok or the error code for a relay that requires `required`.")),
        ("cases", arr(cases)),
    ])
}

// ---------------------------------------------------------------- auth.json

fn gen_auth() -> Value {
    let k = sk(1);
    let other = sk(0x21);
    let handle = h("@alice@relay-a.example");
    let aud = RelayHost::parse("relay-a.example").unwrap();
    let nonce = Nonce(std::array::from_fn(|n| 0xa0 + n as u8));
    let ts = T0;
    let mut valid = Vec::new();
    let reqs: [(&str, &str, &str, &[u8]); 3] = [
        (
            "read the inbox after cursor 17",
            "GET",
            "/v1/inbox?after=17&limit=50",
            b"",
        ),
        (
            "add a contact (body is covered by its BLAKE3 digest)",
            "PUT",
            "/v1/contacts/@bob@relay-b.example",
            br#"{"level":"message"}"#,
        ),
        (
            "query a message's status",
            "GET",
            "/v1/messages/abababababababababababababababababababababababababababababababab",
            b"",
        ),
    ];
    for (comment, method, path, body) in reqs {
        let target = RequestTarget { method, path, body };
        let header = RequestAuth::sign(&k, &handle, ts, nonce, &target, &aud);
        let parsed = RequestAuth::parse(&header).unwrap();
        parsed.verify(&k.public(), &target, &aud).unwrap();
        valid.push(obj(&[
            ("comment", s(comment)),
            ("seed_hex", s(&hex::encode(&seed(1)))),
            ("public_key", s(&k.public().to_hex())),
            ("handle", s(handle.as_str())),
            ("aud", s(aud.as_str())),
            ("method", s(method)),
            ("path", s(path)),
            ("body", s(std::str::from_utf8(body).unwrap())),
            ("body_digest", s(&formica_protocol::auth::body_digest(body))),
            ("ts", i(ts)),
            ("nonce", s(&nonce.to_hex())),
            (
                "signing_input_hex",
                s(&hex::encode(&parsed.signing_input(&target, &aud))),
            ),
            ("header", s(&header)),
        ]));
    }
    let target = RequestTarget {
        method: "GET",
        path: "/v1/inbox",
        body: b"",
    };
    let good = RequestAuth::sign(&k, &handle, ts, nonce, &target, &aud);
    let mut invalid = Vec::new();
    let mut add =
        |comment: &str, header: String, method: &str, path: &str, aud_s: &str, code: ErrorCode| {
            let t = RequestTarget {
                method,
                path,
                body: b"",
            };
            let aud_h = RelayHost::parse(aud_s).unwrap();
            let got = RequestAuth::parse(&header).and_then(|p| p.verify(&k.public(), &t, &aud_h));
            match got {
                Err(e) => assert_eq!(e.code(), code, "auth case {comment:?}: {e}"),
                Ok(()) => panic!("auth case {comment:?} accepted"),
            }
            invalid.push(obj(&[
                ("comment", s(comment)),
                ("header", s(&header)),
                ("public_key", s(&k.public().to_hex())),
                ("method", s(method)),
                ("path", s(path)),
                ("body", s("")),
                ("aud", s(aud_s)),
                ("error", s(code.as_str())),
            ]));
        };
    use ErrorCode::*;
    add(
        "wrong scheme",
        good.replacen("Formica ", "Bearer ", 1),
        "GET",
        "/v1/inbox",
        "relay-a.example",
        Unauthorized,
    );
    add(
        "missing nonce",
        good.split(",nonce=").next().unwrap().to_owned()
            + &format!(",sig={}", good.split(",sig=").nth(1).unwrap()),
        "GET",
        "/v1/inbox",
        "relay-a.example",
        Unauthorized,
    );
    add(
        "repeated parameter",
        format!("{good},ts={ts}"),
        "GET",
        "/v1/inbox",
        "relay-a.example",
        Unauthorized,
    );
    add(
        "unknown parameter",
        format!("{good},x=1"),
        "GET",
        "/v1/inbox",
        "relay-a.example",
        Unauthorized,
    );
    add(
        "space after a comma",
        good.replacen(",key=", ", key=", 1),
        "GET",
        "/v1/inbox",
        "relay-a.example",
        Unauthorized,
    );
    add(
        "ts with a leading zero",
        good.replacen(&format!("ts={ts}"), &format!("ts=0{ts}"), 1),
        "GET",
        "/v1/inbox",
        "relay-a.example",
        Unauthorized,
    );
    add(
        "upper-case hex in the signature",
        {
            let (head, sig) = good.split_once(",sig=").unwrap();
            format!("{head},sig={}", sig.to_uppercase())
        },
        "GET",
        "/v1/inbox",
        "relay-a.example",
        Unauthorized,
    );
    add(
        "signed for GET, sent as POST",
        good.clone(),
        "POST",
        "/v1/inbox",
        "relay-a.example",
        Unauthorized,
    );
    add(
        "signed for /v1/inbox, sent to /v1/inbox?after=1",
        good.clone(),
        "GET",
        "/v1/inbox?after=1",
        "relay-a.example",
        Unauthorized,
    );
    add(
        "signed by another key than the one named",
        RequestAuth::sign(&other, &handle, ts, nonce, &target, &aud).replacen(
            &other.public().key_id().to_hex(),
            &k.public().key_id().to_hex(),
            1,
        ),
        "GET",
        "/v1/inbox",
        "relay-a.example",
        Unauthorized,
    );
    add(
        "handle homed on another relay than the one receiving the request",
        good.clone(),
        "GET",
        "/v1/inbox",
        "relay-b.example",
        WrongRelay,
    );
    add(
        "the same fields signed under the envelope tag instead of the request tag",
        {
            let input = formica_protocol::auth::request_signing_input(
                &handle,
                &k.public().key_id(),
                ts,
                &nonce,
                &target,
                &aud,
            );
            let sig = k.sign(Domain::Envelope, &input[Domain::Request.tag().len()..]);
            let (head, _) = good.split_once(",sig=").unwrap();
            format!("{head},sig={}", sig.to_hex())
        },
        "GET",
        "/v1/inbox",
        "relay-a.example",
        Unauthorized,
    );

    // Relay-to-relay requests (SPEC.md section 16.2).
    let relay_key = sk(0x41);
    let origin = RelayHost::parse("relay-a.example").unwrap();
    let dest = RelayHost::parse("relay-b.example").unwrap();
    let body = br#"{"envelopes":[],"txn":"t1"}"#;
    let t = RequestTarget {
        method: "POST",
        path: "/v1/federation/transfer",
        body,
    };
    let header = RelayAuth::sign(&relay_key, &origin, &dest, ts, nonce, &t);
    let parsed = RelayAuth::parse(&header).unwrap();
    parsed.verify(&relay_key.public(), &t, &dest).unwrap();
    let relay_valid = vec![obj(&[
        ("comment", s("relay-a forwards a transfer to relay-b")),
        ("seed_hex", s(&hex::encode(&seed(0x41)))),
        ("public_key", s(&relay_key.public().to_hex())),
        ("origin", s(origin.as_str())),
        ("dest", s(dest.as_str())),
        ("method", s("POST")),
        ("path", s("/v1/federation/transfer")),
        ("body", s(std::str::from_utf8(body).unwrap())),
        ("ts", i(ts)),
        ("nonce", s(&nonce.to_hex())),
        (
            "signing_input_hex",
            s(&hex::encode(&parsed.signing_input(&t))),
        ),
        ("header", s(&header)),
    ])];
    let mut relay_valid = relay_valid;
    {
        let body = br#"{"descriptor":{}}"#;
        let t = RequestTarget {
            method: "POST",
            path: "/v1/federation/peers",
            body,
        };
        let header = RelayAuth::sign(&relay_key, &origin, &dest, ts, nonce, &t);
        let parsed = RelayAuth::parse(&header).unwrap();
        parsed.verify(&relay_key.public(), &t, &dest).unwrap();
        relay_valid.push(obj(&[
            (
                "comment",
                s("relay-a asks relay-b to peer (the descriptor is abbreviated; only the bytes matter here)"),
            ),
            ("seed_hex", s(&hex::encode(&seed(0x41)))),
            ("public_key", s(&relay_key.public().to_hex())),
            ("origin", s(origin.as_str())),
            ("dest", s(dest.as_str())),
            ("method", s("POST")),
            ("path", s("/v1/federation/peers")),
            ("body", s(std::str::from_utf8(body).unwrap())),
            ("ts", i(ts)),
            ("nonce", s(&nonce.to_hex())),
            (
                "signing_input_hex",
                s(&hex::encode(&parsed.signing_input(&t))),
            ),
            ("header", s(&header)),
        ]));
    }
    // Relay requests refused: each presented to `dest` with method, path and body, checked
    // with public_key (freshness, peer membership and nonce memory are not part of these).
    let rbody = std::str::from_utf8(body).unwrap();
    let rgood = header.clone();
    let mut relay_invalid = Vec::new();
    let mut radd = |comment: &str,
                    header: String,
                    method: &str,
                    path: &str,
                    body: &str,
                    dest: &str,
                    code: ErrorCode| {
        let key = relay_key.public();
        let d = RelayHost::parse(dest).unwrap();
        let got = RelayAuth::parse(&header)
            .and_then(|p| {
                p.verify(
                    &key,
                    &RequestTarget {
                        method,
                        path,
                        body: body.as_bytes(),
                    },
                    &d,
                )
            })
            .expect_err(comment);
        assert_eq!(got.code(), code, "{comment}");
        relay_invalid.push(obj(&[
            ("comment", s(comment)),
            ("public_key", s(&key.to_hex())),
            ("dest", s(dest)),
            ("method", s(method)),
            ("path", s(path)),
            ("body", s(body)),
            ("header", s(&header)),
            ("error", s(code.as_str())),
        ]));
    };
    radd(
        "signed for relay-b, presented to relay-c",
        rgood.clone(),
        "POST",
        "/v1/federation/transfer",
        rbody,
        "relay-c.example",
        WrongRelay,
    );
    radd(
        "body changed after signing",
        rgood.clone(),
        "POST",
        "/v1/federation/transfer",
        r#"{"envelopes":[],"txn":"t2"}"#,
        "relay-b.example",
        Unauthorized,
    );
    radd(
        "signed for /v1/federation/transfer, sent to /v1/federation/peers",
        rgood.clone(),
        "POST",
        "/v1/federation/peers",
        rbody,
        "relay-b.example",
        Unauthorized,
    );
    radd(
        "signed for POST, sent as PUT",
        rgood.clone(),
        "PUT",
        "/v1/federation/transfer",
        rbody,
        "relay-b.example",
        Unauthorized,
    );
    radd(
        "origin changed after signing",
        rgood.replacen("origin=relay-a.example", "origin=relay-c.example", 1),
        "POST",
        "/v1/federation/transfer",
        rbody,
        "relay-b.example",
        Unauthorized,
    );
    radd(
        "signed by another key than the one named",
        RelayAuth::sign(&other, &origin, &dest, ts, nonce, &t).replacen(
            &other.public().key_id().to_hex(),
            &relay_key.public().key_id().to_hex(),
            1,
        ),
        "POST",
        "/v1/federation/transfer",
        rbody,
        "relay-b.example",
        Unauthorized,
    );
    radd(
        "agent scheme instead of Formica-Relay",
        rgood.replacen("Formica-Relay ", "Formica ", 1),
        "POST",
        "/v1/federation/transfer",
        rbody,
        "relay-b.example",
        Unauthorized,
    );
    radd(
        "space after a comma",
        rgood.replacen(",dest=", ", dest=", 1),
        "POST",
        "/v1/federation/transfer",
        rbody,
        "relay-b.example",
        Unauthorized,
    );
    radd(
        "a seventh parameter",
        format!("{rgood},handle=@alice@relay-a.example"),
        "POST",
        "/v1/federation/transfer",
        rbody,
        "relay-b.example",
        Unauthorized,
    );
    radd(
        "dest missing",
        rgood.replacen(",dest=relay-b.example", "", 1),
        "POST",
        "/v1/federation/transfer",
        rbody,
        "relay-b.example",
        Unauthorized,
    );
    radd(
        "the same fields signed under the agent request tag instead of the relay request tag",
        {
            let input = parsed.signing_input(&t);
            let sig = relay_key.sign(Domain::Request, &input[Domain::RelayRequest.tag().len()..]);
            let (head, _) = rgood.split_once(",sig=").unwrap();
            format!("{head},sig={}", sig.to_hex())
        },
        "POST",
        "/v1/federation/transfer",
        rbody,
        "relay-b.example",
        Unauthorized,
    );
    obj(&[
        ("comment", s("Authenticated requests (SPEC.md section 11; relay requests: section 16.2). `valid`: the header made from the inputs, and the exact signing input. `invalid`: a header presented with the given method, path, empty body and receiving relay `aud`, checked with public_key; freshness and nonce memory are not part of these cases. `relay_valid`: relay request headers with their exact signing input. `relay_invalid`: a relay header presented to `dest` with the given method, path and body, checked with public_key; freshness, peer membership and nonce memory are not part of these cases.")),
        ("valid", arr(valid)),
        ("invalid", arr(invalid)),
        ("relay_valid", arr(relay_valid)),
        ("relay_invalid", arr(relay_invalid)),
    ])
}

// ---------------------------------------------------------------- ed25519.json

fn gen_ed25519() -> Value {
    let ext = std::fs::read_to_string(
        common::vectors_dir().join("external/ed25519-speccheck/cases.json"),
    )
    .unwrap();
    let cases = json::parse(
        ext.as_bytes(),
        JsonLimits {
            bytes_max: 1 << 20,
            depth_max: 8,
        },
    )
    .unwrap();
    let mut out = Vec::new();
    for (n, c) in cases.as_array().unwrap().iter().enumerate() {
        let o = c.as_object().unwrap();
        let msg = hex::decode(o.get("message").unwrap().as_str().unwrap()).unwrap();
        let pk_hex = o.get("pub_key").unwrap().as_str().unwrap();
        let sig_hex = o.get("signature").unwrap().as_str().unwrap();
        let key = PublicKey::parse_hex(pk_hex);
        let sig = formica_protocol::Signature::parse_hex(sig_hex);
        let accept = match (&key, &sig) {
            (Ok(k), Ok(sg)) => k.verify_input(&msg, sg).is_ok(),
            _ => false,
        };
        let key_result = match &key {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.code().as_str().to_owned(),
        };
        // The accept set of the bare strict verifier, without refusing weak keys at parse time.
        let dalek_strict = {
            let pkb: [u8; 32] = hex::decode_array(pk_hex).unwrap();
            let sgb: [u8; 64] = hex::decode_array(sig_hex).unwrap();
            ed25519_dalek::VerifyingKey::from_bytes(&pkb)
                .map(|vk| {
                    vk.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&sgb))
                        .is_ok()
                })
                .unwrap_or(false)
        };
        assert_eq!(accept, dalek_strict && key.is_ok(), "case {n}");
        out.push(obj(&[
            ("index", i(n as i64)),
            ("message", s(o.get("message").unwrap().as_str().unwrap())),
            ("pub_key", s(pk_hex)),
            ("signature", s(sig_hex)),
            ("key_result", s(&key_result)),
            ("strict_accept", Value::Bool(dalek_strict)),
            ("accept", Value::Bool(accept)),
        ]));
    }
    obj(&[
        ("comment", s("Ed25519 edge cases from 'Taming the many EdDSAs' (ed25519-speccheck, cases 0-11; see external/ed25519-speccheck). `key_result`: parsing pub_key as a Formica public key (ok, invalid_key or weak_key). `strict_accept` is informational: ed25519-dalek's verify_strict applied to the raw key bytes, without the key checks of KEY-2 (it can differ from other libraries for keys KEY-2 refuses). `accept`: the full Formica rule, key parse and strict verification; it is the set a conforming implementation accepts.")),
        ("cases", arr(out)),
    ])
}

// ---------------------------------------------------------------- profiles.json

/// The profile of `who` signed by `key`, as of `T0`, valid for 30 days: only the required
/// members.
fn base_profile(who: &Handle, key: &SecretKey, name: &str) -> Profile {
    Profile {
        handle: who.clone(),
        key: key.public().key_id(),
        seq: 1,
        ts: T0,
        expires: T0 + 30 * 24 * 3600 * 1000,
        name: name.to_owned(),
        description: None,
        capabilities: Vec::new(),
        accepts: Vec::new(),
        platform: None,
        model: None,
        listed: false,
    }
}

fn cap(id: &str, version: Option<&str>, tags: &[&str]) -> Capability {
    Capability {
        id: id.to_owned(),
        version: version.map(str::to_owned),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
    }
}

/// The valid profiles: (comment, seed start, profile without `sig`).
fn valid_profiles() -> Vec<(&'static str, u8, Value)> {
    let a = sk(1);
    let b = sk(0x21);
    let mut v = Vec::new();
    v.push((
        "minimal profile: only the required members (listed is false when absent)",
        1,
        base_profile(&alice(), &a, "Alice").to_value(),
    ));
    let mut full = base_profile(&alice(), &a, "Alice's scheduler");
    full.seq = 42;
    full.ts = T0 + 60_000;
    full.expires = T0 + 7 * 24 * 3600 * 1000;
    full.description = Some("Reviews Rust and SQL, summarizes long threads.".into());
    full.capabilities = vec![
        cap("code-review", Some("1.4.0-beta"), &["rust", "sql.postgres"]),
        cap("summarize", None, &[]),
        cap("translate", Some("2"), &["de", "fr_ch", "ja"]),
    ];
    full.accepts = vec![
        MessageType::Message,
        MessageType::TaskRequest,
        MessageType::Extension("x-demo.ping".into()),
    ];
    full.platform = Some("formica-keytool 0.1".into());
    full.model = Some("example-model-2".into());
    full.listed = true;
    v.push((
        "full profile: description, capabilities with versions and tags, accepts with an extension type, platform, model, listed",
        1,
        full.to_value(),
    ));
    let mut intl = base_profile(
        &bob(),
        &b,
        "Zo\u{eb} \u{1f41c} \u{30a8}\u{30fc}\u{30b8}\u{30a7}\u{30f3}\u{30c8}",
    );
    intl.description = Some("caf\u{e9} \"quoted\" \\ tab\there \u{2028} \u{e000}".into());
    intl.capabilities = vec![cap("0day.triage", Some("1+build.7"), &["a", "b_c"])];
    intl.listed = true;
    v.push((
        "non-ASCII name (Latin-1, an astral emoji, CJK) and a description with escapes, U+2028 and private use",
        0x21,
        intl.to_value(),
    ));
    let mut limits = base_profile(&alice(), &a, &"\u{e9}".repeat(NAME_CHARS_MAX));
    limits.seq = (1 << 53) - 1;
    limits.description = Some("\u{1f41c}".repeat(DESCRIPTION_CHARS_MAX));
    limits.capabilities = (0..CAPABILITIES_MAX)
        .map(|n| cap(&format!("c{n}"), None, &[]))
        .collect();
    limits.capabilities[0] = cap(
        &"w".repeat(WORD_BYTES_MAX),
        Some(&"V".repeat(VERSION_CHARS_MAX)),
        &["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"],
    );
    v.push((
        "every limit reached: 64-character name (128 bytes), 280-character description (astral characters), 32 capabilities, 8 tags, a 64-byte id, a 32-character version, seq 2^53-1",
        1,
        limits.to_value(),
    ));
    v.push((
        "listed false given explicitly: a valid member, kept in the signed bytes (a relay stores and serves the profile as signed)",
        1,
        with(&base_profile(&alice(), &a, "Alice").to_value(), "listed", Value::Bool(false)),
    ));
    v
}

fn gen_profiles() -> Value {
    let mut valid = Vec::new();
    for (comment, seed_start, profile) in valid_profiles() {
        let key = sk(seed_start);
        let signed = sign_raw(Domain::Profile, profile.clone(), &key);
        let wire = canonicalize(&signed);
        // The vector must survive the path a relay and a reader take: parse, then verify.
        let sp = SignedProfile::parse(&wire, JsonLimits::default())
            .unwrap_or_else(|e| panic!("profile case {comment:?}: {e}"));
        sp.verify(&key.public())
            .unwrap_or_else(|e| panic!("profile case {comment:?}: {e}"));
        assert_eq!(sp.wire(), wire.as_slice(), "profile case {comment:?}");
        // Profile::sign gives the same bytes, unless the case spells out a default.
        if sp.profile().to_value() == profile {
            assert_eq!(sp.profile().sign(&key).unwrap().wire(), wire.as_slice());
        }
        valid.push(obj(&[
            ("comment", s(comment)),
            ("seed_hex", s(&hex::encode(&seed(seed_start)))),
            ("public_key", s(&key.public().to_hex())),
            ("key_id", s(&key.public().key_id().to_hex())),
            ("profile", profile),
            ("signing_input_hex", s(&hex::encode(sp.signing_input()))),
            ("sig", s(&sp.signature().to_hex())),
            ("wire", s(&String::from_utf8(wire).unwrap())),
        ]));
    }
    obj(&[
        ("comment", s("Agent profiles (SPEC.md section 18, PROF-1 to PROF-3). `valid`: the public key and key id follow from seed_hex; `profile` is the profile without `sig`; signing_input = the tag \"formica/v1/profile\", one 0x00 byte, then the RFC 8785 form of `profile`; sig = Ed25519(seed, signing_input); `wire` is the canonical form with `sig`, which must parse and verify with public_key. `invalid`: `input` must be refused with `error`, parsing with the default limits (65536 bytes, depth 32); with `public_key` the profile parses and the error comes from verifying it with that key; `field`, when present, is the path of the member the error names (HTTP-4).")),
        ("valid", arr(valid)),
        ("invalid", arr(invalid_profiles())),
    ])
}

/// The path a schema error names (the `field` of its HTTP-4 answer).
fn profile_error_field(e: &ProfileError) -> Option<String> {
    match e {
        ProfileError::Schema(
            SchemaError::UnknownField { path }
            | SchemaError::MissingField { path }
            | SchemaError::InvalidField { path, .. }
            | SchemaError::InvalidHandle { path, .. }
            | SchemaError::InvalidKey { path, .. },
        ) => Some(path.clone()),
        _ => None,
    }
}

/// An invalid profile case: comment, input value, expected code, field, key to verify with.
type ProfileCase = (
    String,
    Value,
    ErrorCode,
    Option<&'static str>,
    Option<PublicKey>,
);

fn invalid_profiles() -> Vec<Value> {
    use ErrorCode::*;
    let a = sk(1);
    let b = sk(0x21);
    let mut good = base_profile(&alice(), &a, "Alice");
    good.capabilities = vec![cap("code-review", Some("1.4.0"), &["rust"])];
    good.accepts = vec![MessageType::Message];
    good.listed = true;
    let good_v = good.to_value();
    let signed = |v: &Value| sign_raw(Domain::Profile, v.clone(), &a);
    let sgood = signed(&good_v);
    let sig_of = |v: &Value| {
        v.as_object()
            .unwrap()
            .get("sig")
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    };
    let capv = |members: &[(&str, Value)]| with(&good_v, "capabilities", arr(vec![obj(members)]));
    let words = |ws: &[&str]| arr(ws.iter().map(|w| s(w)).collect());
    // (comment, input value, expected code, field, key to verify with)
    let mut cases: Vec<ProfileCase> = Vec::new();
    let mut add =
        |c: &str, v: Value, code: ErrorCode, f: Option<&'static str>, k: Option<PublicKey>| {
            cases.push((c.to_owned(), v, code, f, k))
        };

    // Signatures (PROF-2): the profile parses; verifying it with `public_key` fails.
    let mut flipped = hex::decode(&sig_of(&sgood)).unwrap();
    flipped[0] ^= 0x01;
    add(
        "one bit of the signature flipped",
        with(&sgood, "sig", s(&hex::encode(&flipped))),
        BadSignature,
        None,
        Some(a.public()),
    );
    add(
        "name changed after signing",
        with(&sgood, "name", s("Mallory")),
        BadSignature,
        None,
        Some(a.public()),
    );
    add(
        "listed set to true after signing a profile that was not listed",
        with(
            &signed(&without(&good_v, "listed")),
            "listed",
            Value::Bool(true),
        ),
        BadSignature,
        None,
        Some(a.public()),
    );
    add(
        "signed under the envelope tag instead of the profile tag",
        sign_raw(Domain::Envelope, good_v.clone(), &a),
        BadSignature,
        None,
        Some(a.public()),
    );
    add(
        "signed under the descriptor tag instead of the profile tag",
        sign_raw(Domain::Descriptor, good_v.clone(), &a),
        BadSignature,
        None,
        Some(a.public()),
    );
    add(
        "signed by a different key than the one named",
        sign_raw(Domain::Profile, good_v.clone(), &b),
        BadSignature,
        None,
        Some(a.public()),
    );
    let mut sig_b = hex::decode(&sig_of(&sgood)).unwrap();
    add_scalar_l(&mut sig_b[32..]);
    add(
        "signature with S + l (non-canonical scalar)",
        with(&sgood, "sig", s(&hex::encode(&sig_b))),
        BadSignature,
        None,
        Some(a.public()),
    );
    add(
        "verified with a key other than the one the profile names (unknown_key)",
        sgood.clone(),
        UnknownKey,
        None,
        Some(b.public()),
    );

    // The document (PROF-1, PROF-3): refused by parsing alone.
    add(
        "not an object",
        arr(vec![]),
        InvalidField,
        Some("(root)"),
        None,
    );
    add(
        "protocol version 2",
        signed(&with(&good_v, "v", i(2))),
        UnsupportedVersion,
        None,
        None,
    );
    add(
        "protocol version missing",
        signed(&without(&good_v, "v")),
        MissingField,
        Some("v"),
        None,
    );
    add(
        "unknown top-level member",
        signed(&with(&good_v, "avatar", s("https://example.org/a.png"))),
        UnknownField,
        Some("avatar"),
        None,
    );
    add(
        "unknown member inside a capability",
        signed(&capv(&[("id", s("code-review")), ("level", s("expert"))])),
        UnknownField,
        Some("capabilities[0].level"),
        None,
    );
    add(
        "name missing",
        signed(&without(&good_v, "name")),
        MissingField,
        Some("name"),
        None,
    );
    add(
        "signature missing",
        good_v.clone(),
        MissingField,
        Some("sig"),
        None,
    );
    add(
        "capability without id",
        signed(&capv(&[("version", s("1"))])),
        MissingField,
        Some("capabilities[0].id"),
        None,
    );
    add(
        "handle in local form",
        signed(&with(&good_v, "handle", s("@alice"))),
        InvalidHandle,
        Some("handle"),
        None,
    );
    add(
        "key id in upper case",
        signed(&with(&good_v, "key", s(&good.key.to_hex().to_uppercase()))),
        InvalidField,
        Some("key"),
        None,
    );
    add(
        "signature too short",
        with(&sgood, "sig", s("abcd")),
        InvalidField,
        Some("sig"),
        None,
    );
    add(
        "seq 0",
        signed(&with(&good_v, "seq", i(0))),
        InvalidField,
        Some("seq"),
        None,
    );
    add(
        "seq as a string",
        signed(&with(&good_v, "seq", s("1"))),
        InvalidField,
        Some("seq"),
        None,
    );
    add(
        "negative ts",
        signed(&with(&good_v, "ts", i(-1))),
        InvalidField,
        Some("ts"),
        None,
    );
    add(
        "expires equal to ts",
        signed(&with(&good_v, "expires", i(T0))),
        InvalidField,
        Some("expires"),
        None,
    );
    add(
        "expires before ts",
        signed(&with(&good_v, "expires", i(T0 - 1))),
        InvalidField,
        Some("expires"),
        None,
    );
    add(
        "empty name",
        signed(&with(&good_v, "name", s(""))),
        InvalidField,
        Some("name"),
        None,
    );
    add(
        "name of 65 characters",
        signed(&with(
            &good_v,
            "name",
            s(&"\u{e9}".repeat(NAME_CHARS_MAX + 1)),
        )),
        InvalidField,
        Some("name"),
        None,
    );
    add(
        "control character (BEL) in the name",
        signed(&with(&good_v, "name", s("Al\u{7}ice"))),
        InvalidField,
        Some("name"),
        None,
    );
    add(
        "line feed in the name",
        signed(&with(&good_v, "name", s("Alice\n"))),
        InvalidField,
        Some("name"),
        None,
    );
    add(
        "C1 control character (U+0085) in the platform",
        signed(&with(&good_v, "platform", s("rt\u{85}"))),
        InvalidField,
        Some("platform"),
        None,
    );
    add(
        "empty model",
        signed(&with(&good_v, "model", s(""))),
        InvalidField,
        Some("model"),
        None,
    );
    add(
        "description of 281 characters",
        signed(&with(
            &good_v,
            "description",
            s(&"\u{e9}".repeat(DESCRIPTION_CHARS_MAX + 1)),
        )),
        InvalidField,
        Some("description"),
        None,
    );
    add(
        "description not a string",
        signed(&with(&good_v, "description", i(5))),
        InvalidField,
        Some("description"),
        None,
    );
    add(
        "listed not a boolean (the string \"true\")",
        signed(&with(&good_v, "listed", s("true"))),
        InvalidField,
        Some("listed"),
        None,
    );
    add(
        "listed not a boolean (1)",
        signed(&with(&good_v, "listed", i(1))),
        InvalidField,
        Some("listed"),
        None,
    );
    add(
        "capabilities not an array",
        signed(&with(
            &good_v,
            "capabilities",
            obj(&[("id", s("code-review"))]),
        )),
        InvalidField,
        Some("capabilities"),
        None,
    );
    add(
        "a capability that is not an object",
        signed(&with(&good_v, "capabilities", words(&["code-review"]))),
        InvalidField,
        Some("capabilities[0]"),
        None,
    );
    let many: Vec<Value> = (0..=CAPABILITIES_MAX)
        .map(|n| obj(&[("id", s(&format!("c{n}")))]))
        .collect();
    add(
        "33 capabilities, more than 32",
        signed(&with(&good_v, "capabilities", arr(many))),
        InvalidField,
        Some("capabilities"),
        None,
    );
    add(
        "9 tags in a capability, more than 8",
        signed(&capv(&[
            ("id", s("code-review")),
            (
                "tags",
                words(&["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8"]),
            ),
        ])),
        InvalidField,
        Some("capabilities[0].tags"),
        None,
    );
    add(
        "capability id listed twice",
        signed(&with(
            &good_v,
            "capabilities",
            arr(vec![
                obj(&[("id", s("code-review"))]),
                obj(&[("id", s("code-review")), ("version", s("2"))]),
            ]),
        )),
        InvalidField,
        Some("capabilities[1].id"),
        None,
    );
    add(
        "tag listed twice in one capability",
        signed(&capv(&[
            ("id", s("code-review")),
            ("tags", words(&["rust", "rust"])),
        ])),
        InvalidField,
        Some("capabilities[0].tags[1]"),
        None,
    );
    add(
        "capability id with upper case",
        signed(&capv(&[("id", s("Code-review"))])),
        InvalidField,
        Some("capabilities[0].id"),
        None,
    );
    add(
        "tag starting with '-'",
        signed(&capv(&[
            ("id", s("code-review")),
            ("tags", words(&["-rust"])),
        ])),
        InvalidField,
        Some("capabilities[0].tags[0]"),
        None,
    );
    add(
        "capability id of 65 bytes",
        signed(&capv(&[("id", s(&"w".repeat(WORD_BYTES_MAX + 1)))])),
        InvalidField,
        Some("capabilities[0].id"),
        None,
    );
    add(
        "empty tag",
        signed(&capv(&[("id", s("code-review")), ("tags", words(&[""]))])),
        InvalidField,
        Some("capabilities[0].tags[0]"),
        None,
    );
    add(
        "capability id with a space",
        signed(&capv(&[("id", s("code review"))])),
        InvalidField,
        Some("capabilities[0].id"),
        None,
    );
    add(
        "version with a space",
        signed(&capv(&[
            ("id", s("code-review")),
            ("version", s("1.0 beta")),
        ])),
        InvalidField,
        Some("capabilities[0].version"),
        None,
    );
    add(
        "empty version",
        signed(&capv(&[("id", s("code-review")), ("version", s(""))])),
        InvalidField,
        Some("capabilities[0].version"),
        None,
    );
    add(
        "version of 33 characters",
        signed(&capv(&[
            ("id", s("code-review")),
            ("version", s(&"1".repeat(VERSION_CHARS_MAX + 1))),
        ])),
        InvalidField,
        Some("capabilities[0].version"),
        None,
    );
    add(
        "accepts with an unregistered type without the x- prefix",
        signed(&with(&good_v, "accepts", words(&["message", "chat"]))),
        InvalidField,
        Some("accepts[1]"),
        None,
    );
    add(
        "accepts with a type in upper case",
        signed(&with(&good_v, "accepts", words(&["Message"]))),
        InvalidField,
        Some("accepts[0]"),
        None,
    );
    add(
        "accepts with x- alone",
        signed(&with(&good_v, "accepts", words(&["x-"]))),
        InvalidField,
        Some("accepts[0]"),
        None,
    );
    add(
        "accepts with a type listed twice",
        signed(&with(
            &good_v,
            "accepts",
            words(&["message", "x-demo.ping", "message"]),
        )),
        InvalidField,
        Some("accepts[2]"),
        None,
    );
    let types: Vec<String> = (0..=ACCEPTS_MAX).map(|n| format!("x-t{n}")).collect();
    let types: Vec<&str> = types.iter().map(String::as_str).collect();
    add(
        "33 accepted types, more than 32",
        signed(&with(&good_v, "accepts", words(&types))),
        InvalidField,
        Some("accepts"),
        None,
    );
    add(
        "duplicate member name",
        Value::Null,
        DuplicateKey,
        None,
        None,
    ); // raw text below
    add("ts as a float", Value::Null, FloatNotAllowed, None, None); // raw text below

    let mut out = Vec::new();
    for (comment, v, code, field, key) in cases {
        let input = match comment.as_str() {
            "duplicate member name" => text(&sgood).replacen("{", "{\"name\":\"Eve\",", 1),
            "ts as a float" => {
                text(&sgood).replace(&format!("\"ts\":{T0}"), &format!("\"ts\":{T0}.0"))
            }
            _ => text(&v),
        };
        if key.as_ref() == Some(&a.public()) || key.is_none() {
            assert_ne!(
                input,
                text(&sgood),
                "profile case {comment:?} changed nothing"
            );
        }
        let res =
            SignedProfile::parse(input.as_bytes(), JsonLimits::default()).and_then(
                |sp| match &key {
                    Some(k) => sp.verify(k),
                    None => Ok(()),
                },
            );
        match res {
            Err(e) => {
                assert_eq!(e.code(), code, "profile case {comment:?}: {e}");
                assert_eq!(
                    profile_error_field(&e).as_deref(),
                    field,
                    "profile case {comment:?}: {e}"
                );
            }
            Ok(()) => panic!("profile case {comment:?} was accepted"),
        }
        let mut case = obj(&[
            ("comment", s(&comment)),
            ("input", s(&input)),
            ("error", s(code.as_str())),
        ]);
        if let Some(f) = field {
            case = with(&case, "field", s(f));
        }
        if let Some(k) = key {
            case = with(&case, "public_key", s(&k.to_hex()));
        }
        out.push(case);
    }
    out
}

// ---------------------------------------------------------------- presence.json

/// The status of `who` signed by `key`, as of `T0`, valid for an hour: `available`, no note.
fn base_status(who: &Handle, key: &SecretKey) -> Status {
    Status {
        handle: who.clone(),
        key: key.public().key_id(),
        ts: T0,
        expires: T0 + 3_600_000,
        status: Availability::Available,
        note: None,
    }
}

/// The valid statuses: (comment, seed start, status without `sig`).
fn valid_statuses() -> Vec<(&'static str, u8, Value)> {
    let a = sk(1);
    let b = sk(0x21);
    let mut v = Vec::new();
    v.push((
        "minimal status: available, no note",
        1,
        base_status(&alice(), &a).to_value(),
    ));
    let mut busy = base_status(&alice(), &a);
    busy.ts = T0 + 60_000;
    busy.expires = busy.ts + 1_800_000;
    busy.status = Availability::Busy;
    busy.note = Some("In a code review until 15:00 UTC.".into());
    v.push(("busy with a note", 1, busy.to_value()));
    let mut away = base_status(&bob(), &b);
    away.status = Availability::Away;
    away.expires = T0 + 86_400_000;
    v.push((
        "away, for a day (the reference relay's presence.status_ttl_ms_max), another agent's key",
        0x21,
        away.to_value(),
    ));
    let mut intl = base_status(&alice(), &a);
    intl.status = Availability::Busy;
    intl.note = Some(
        "caf\u{e9} \u{1f41c} \u{30a8}\u{30fc}\u{30b8}\u{30a7}\u{30f3}\u{30c8} \"quoted\" \\ \u{2028} \u{e000}"
            .into(),
    );
    v.push((
        "non-ASCII note: Latin-1, an astral emoji, CJK, escapes, U+2028 and private use",
        1,
        intl.to_value(),
    ));
    let mut long = base_status(&alice(), &a);
    long.status = Availability::Away;
    long.note = Some("\u{1f41c}".repeat(NOTE_CHARS_MAX));
    v.push((
        "note of 280 characters (astral, 1120 bytes): the longest note text",
        1,
        long.to_value(),
    ));
    let mut short = base_status(&alice(), &a);
    short.expires = T0 + 1;
    short.note = Some(String::new());
    v.push((
        "empty note and the shortest lifetime: expires one millisecond after ts",
        1,
        short.to_value(),
    ));
    let mut ctl = base_status(&alice(), &a);
    ctl.status = Availability::Busy;
    ctl.note = Some("line one\nline two\twith a tab".into());
    v.push((
        "note with a line feed and a tab (note text allows control characters, TYPE-13)",
        1,
        ctl.to_value(),
    ));
    v
}

fn gen_presence() -> Value {
    let mut valid = Vec::new();
    for (comment, seed_start, status) in valid_statuses() {
        let key = sk(seed_start);
        let signed = sign_raw(Domain::Presence, status.clone(), &key);
        let wire = canonicalize(&signed);
        // The vector must survive the path a relay and a reader take: parse, then verify.
        let ss = SignedStatus::parse(&wire, JsonLimits::default())
            .unwrap_or_else(|e| panic!("status case {comment:?}: {e}"));
        ss.verify(&key.public())
            .unwrap_or_else(|e| panic!("status case {comment:?}: {e}"));
        assert_eq!(ss.wire(), wire.as_slice(), "status case {comment:?}");
        assert_eq!(ss.status().to_value(), status, "status case {comment:?}");
        assert_eq!(
            ss.status().sign(&key).unwrap().wire(),
            wire.as_slice(),
            "status case {comment:?}"
        );
        valid.push(obj(&[
            ("comment", s(comment)),
            ("seed_hex", s(&hex::encode(&seed(seed_start)))),
            ("public_key", s(&key.public().to_hex())),
            ("key_id", s(&key.public().key_id().to_hex())),
            ("status", status),
            ("signing_input_hex", s(&hex::encode(ss.signing_input()))),
            ("sig", s(&ss.signature().to_hex())),
            ("wire", s(&String::from_utf8(wire).unwrap())),
        ]));
    }
    obj(&[
        ("comment", s("Presence statuses (SPEC.md section 18.4, PRES-2). `valid`: the public key and key id follow from seed_hex; `status` is the status without `sig`; signing_input = the tag \"formica/v1/presence\", one 0x00 byte, then the RFC 8785 form of `status`; sig = Ed25519(seed, signing_input); `wire` is the canonical form with `sig`, which must parse and verify with public_key. `invalid`: `input` must be refused with `error`, parsing with the default limits (65536 bytes, depth 32); with `public_key` the status parses and the error comes from verifying it with that key; `field`, when present, is the path of the member the error names (HTTP-4).")),
        ("valid", arr(valid)),
        ("invalid", arr(invalid_statuses())),
    ])
}

/// The path a status's schema error names (the `field` of its HTTP-4 answer).
fn status_error_field(e: &StatusError) -> Option<String> {
    match e {
        StatusError::Schema(
            SchemaError::UnknownField { path }
            | SchemaError::MissingField { path }
            | SchemaError::InvalidField { path, .. }
            | SchemaError::InvalidHandle { path, .. }
            | SchemaError::InvalidKey { path, .. },
        ) => Some(path.clone()),
        _ => None,
    }
}

fn invalid_statuses() -> Vec<Value> {
    use ErrorCode::*;
    let a = sk(1);
    let b = sk(0x21);
    let mut good = base_status(&alice(), &a);
    good.status = Availability::Busy;
    good.note = Some("In a meeting".into());
    let good_v = good.to_value();
    let signed = |v: &Value| sign_raw(Domain::Presence, v.clone(), &a);
    let sgood = signed(&good_v);
    let sig_of = |v: &Value| {
        v.as_object()
            .unwrap()
            .get("sig")
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    };
    // (comment, input value, expected code, field, key to verify with)
    let mut cases: Vec<ProfileCase> = Vec::new();
    let mut add =
        |c: &str, v: Value, code: ErrorCode, f: Option<&'static str>, k: Option<PublicKey>| {
            cases.push((c.to_owned(), v, code, f, k))
        };

    // Signatures (PRES-2): the status parses; verifying it with `public_key` fails.
    let mut flipped = hex::decode(&sig_of(&sgood)).unwrap();
    flipped[0] ^= 0x01;
    add(
        "one bit of the signature flipped",
        with(&sgood, "sig", s(&hex::encode(&flipped))),
        BadSignature,
        None,
        Some(a.public()),
    );
    add(
        "status changed from busy to away after signing",
        with(&sgood, "status", s("away")),
        BadSignature,
        None,
        Some(a.public()),
    );
    add(
        "note added after signing a status that had none",
        with(
            &signed(&without(&good_v, "note")),
            "note",
            s("In a meeting"),
        ),
        BadSignature,
        None,
        Some(a.public()),
    );
    add(
        "signed under the profile tag instead of the presence tag",
        sign_raw(Domain::Profile, good_v.clone(), &a),
        BadSignature,
        None,
        Some(a.public()),
    );
    add(
        "signed under the envelope tag instead of the presence tag",
        sign_raw(Domain::Envelope, good_v.clone(), &a),
        BadSignature,
        None,
        Some(a.public()),
    );
    add(
        "signed by a different key than the one named",
        sign_raw(Domain::Presence, good_v.clone(), &b),
        BadSignature,
        None,
        Some(a.public()),
    );
    let mut sig_b = hex::decode(&sig_of(&sgood)).unwrap();
    add_scalar_l(&mut sig_b[32..]);
    add(
        "signature with S + l (non-canonical scalar)",
        with(&sgood, "sig", s(&hex::encode(&sig_b))),
        BadSignature,
        None,
        Some(a.public()),
    );
    add(
        "verified with a key other than the one the status names (unknown_key)",
        sgood.clone(),
        UnknownKey,
        None,
        Some(b.public()),
    );

    // The document (PRES-2): refused by parsing alone.
    add(
        "not an object",
        arr(vec![]),
        InvalidField,
        Some("(root)"),
        None,
    );
    add(
        "protocol version 2",
        signed(&with(&good_v, "v", i(2))),
        UnsupportedVersion,
        None,
        None,
    );
    add(
        "protocol version missing",
        signed(&without(&good_v, "v")),
        MissingField,
        Some("v"),
        None,
    );
    add(
        "unknown member",
        signed(&with(&good_v, "mood", s("cheerful"))),
        UnknownField,
        Some("mood"),
        None,
    );
    add(
        "handle missing",
        signed(&without(&good_v, "handle")),
        MissingField,
        Some("handle"),
        None,
    );
    add(
        "handle in local form",
        signed(&with(&good_v, "handle", s("@alice"))),
        InvalidHandle,
        Some("handle"),
        None,
    );
    add(
        "key missing",
        signed(&without(&good_v, "key")),
        MissingField,
        Some("key"),
        None,
    );
    add(
        "key id in upper case",
        signed(&with(&good_v, "key", s(&good.key.to_hex().to_uppercase()))),
        InvalidField,
        Some("key"),
        None,
    );
    add(
        "ts missing",
        signed(&without(&good_v, "ts")),
        MissingField,
        Some("ts"),
        None,
    );
    add(
        "negative ts",
        signed(&with(&good_v, "ts", i(-1))),
        InvalidField,
        Some("ts"),
        None,
    );
    add(
        "ts as a string",
        signed(&with(&good_v, "ts", s(&T0.to_string()))),
        InvalidField,
        Some("ts"),
        None,
    );
    add(
        "ts of 2^53, outside the strict profile's integers (JSON-6)",
        signed(&with(
            &with(&good_v, "ts", i(1 << 53)),
            "expires",
            i((1 << 53) + 1),
        )),
        IntegerOutOfRange,
        None,
        None,
    );
    add(
        "expires missing",
        signed(&without(&good_v, "expires")),
        MissingField,
        Some("expires"),
        None,
    );
    add(
        "expires equal to ts",
        signed(&with(&good_v, "expires", i(T0))),
        InvalidField,
        Some("expires"),
        None,
    );
    add(
        "expires before ts",
        signed(&with(&good_v, "expires", i(T0 - 1))),
        InvalidField,
        Some("expires"),
        None,
    );
    add(
        "status missing",
        signed(&without(&good_v, "status")),
        MissingField,
        Some("status"),
        None,
    );
    add(
        "status offline: never an agent's own word (the relay observes it)",
        signed(&with(&good_v, "status", s("offline"))),
        InvalidField,
        Some("status"),
        None,
    );
    add(
        "status in upper case",
        signed(&with(&good_v, "status", s("Busy"))),
        InvalidField,
        Some("status"),
        None,
    );
    add(
        "status not a string",
        signed(&with(&good_v, "status", i(1))),
        InvalidField,
        Some("status"),
        None,
    );
    add(
        "note of 281 characters",
        signed(&with(
            &good_v,
            "note",
            s(&"\u{e9}".repeat(NOTE_CHARS_MAX + 1)),
        )),
        InvalidField,
        Some("note"),
        None,
    );
    add(
        "note not a string",
        signed(&with(&good_v, "note", i(5))),
        InvalidField,
        Some("note"),
        None,
    );
    add(
        "note null",
        signed(&with(&good_v, "note", Value::Null)),
        InvalidField,
        Some("note"),
        None,
    );
    add(
        "signature missing",
        good_v.clone(),
        MissingField,
        Some("sig"),
        None,
    );
    add(
        "signature too short",
        with(&sgood, "sig", s("abcd")),
        InvalidField,
        Some("sig"),
        None,
    );
    add(
        "duplicate member name",
        Value::Null,
        DuplicateKey,
        None,
        None,
    ); // raw text below
    add("ts as a float", Value::Null, FloatNotAllowed, None, None); // raw text below

    let mut out = Vec::new();
    for (comment, v, code, field, key) in cases {
        let input = match comment.as_str() {
            "duplicate member name" => text(&sgood).replacen("{", "{\"status\":\"away\",", 1),
            "ts as a float" => {
                text(&sgood).replace(&format!("\"ts\":{T0}"), &format!("\"ts\":{T0}.0"))
            }
            _ => text(&v),
        };
        if key.as_ref() == Some(&a.public()) || key.is_none() {
            assert_ne!(
                input,
                text(&sgood),
                "status case {comment:?} changed nothing"
            );
        }
        let res =
            SignedStatus::parse(input.as_bytes(), JsonLimits::default()).and_then(
                |ss| match &key {
                    Some(k) => ss.verify(k),
                    None => Ok(()),
                },
            );
        match res {
            Err(e) => {
                assert_eq!(e.code(), code, "status case {comment:?}: {e}");
                assert_eq!(
                    status_error_field(&e).as_deref(),
                    field,
                    "status case {comment:?}: {e}"
                );
            }
            Ok(()) => panic!("status case {comment:?} was accepted"),
        }
        let mut case = obj(&[
            ("comment", s(&comment)),
            ("input", s(&input)),
            ("error", s(code.as_str())),
        ]);
        if let Some(f) = field {
            case = with(&case, "field", s(f));
        }
        if let Some(k) = key {
            case = with(&case, "public_key", s(&k.to_hex()));
        }
        out.push(case);
    }
    out
}

fn generate() -> BTreeMap<&'static str, String> {
    let mut files = BTreeMap::new();
    let mut put = |name: &'static str, v: Value| {
        files.insert(name, to_pretty(&v) + "\n");
    };
    put("canon.json", gen_canon());
    put("handles.json", gen_handles());
    put("envelopes_valid.json", gen_envelopes_valid());
    put("envelopes_invalid.json", gen_envelopes_invalid());
    put("keylogs.json", gen_keylogs());
    put("pow.json", gen_pow());
    put("auth.json", gen_auth());
    put("ed25519.json", gen_ed25519());
    put("profiles.json", gen_profiles());
    put("presence.json", gen_presence());
    put("conversations.json", gen_conversations());
    files
}

#[test]
fn vector_files_are_current() {
    let update = std::env::var_os("UPDATE_VECTORS").is_some();
    let mut stale = Vec::new();
    for (name, content) in generate() {
        let path = common::vectors_dir().join(name);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk != content {
            if update {
                std::fs::write(&path, content).unwrap();
            } else {
                stale.push(name);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "vector files differ from the generator: {stale:?}; run UPDATE_VECTORS=1 cargo test -p formica-protocol --test gen_vectors and review the diff"
    );
}

// ---------------------------------------------------------------- conversations.json

/// The agents of the conversation vectors, all homed on relay-a (CONVO-3): (handle, seed start).
const CONV_OWNER: (&str, u8) = ("@alice@relay-a.example", 1);
const CONV_CAROL: (&str, u8) = ("@carol@relay-a.example", 0x61);
const CONV_DAVE: (&str, u8) = ("@dave@relay-a.example", 0x81);
const CONV_ERIN: (&str, u8) = ("@erin@relay-a.example", 0xa1);

/// The limits the vectors' conversation is judged under: the reference relay's defaults.
const CONV_VEC_LIMITS: formica_protocol::conversation::ConvLimits =
    formica_protocol::conversation::ConvLimits {
        participants_max: 8,
        turns_max: 1000,
        ttl_max_ms: 30 * 24 * 3600 * 1000,
    };
/// The reference relay's `conversations.ring_ms`.
const CONV_VEC_RING_MS: i64 = 60_000;

fn conv_env(
    who: (&str, u8),
    ty: MessageType,
    to: &[(&str, u8)],
    ts: i64,
    conv: Option<MessageId>,
    payload: Payload,
) -> Envelope {
    Envelope {
        msg_type: ty,
        type_version: 1,
        from: h(who.0),
        key: sk(who.1).public().key_id(),
        to: to.iter().map(|t| h(t.0)).collect(),
        ts,
        corr: None,
        ack_by: None,
        conv,
        payload,
    }
}

fn invitee(who: (&str, u8), role: ConvRole) -> Invitee {
    Invitee {
        handle: h(who.0),
        role,
    }
}

/// The call that starts the vectors' conversation: alice calls carol (member), dave (observer)
/// and erin (member), live, with a turn limit of 3 and an expiry an hour after `ts`.
fn conv_call() -> Envelope {
    let ts = T0 + 1_000;
    conv_env(
        CONV_OWNER,
        MessageType::Call,
        &[CONV_CAROL, CONV_DAVE, CONV_ERIN],
        ts,
        None,
        Payload::Call {
            topic: "Review PR 7: the retry loop".into(),
            mode: ConvMode::Live,
            participants: vec![
                invitee(CONV_CAROL, ConvRole::Member),
                invitee(CONV_DAVE, ConvRole::Observer),
                invitee(CONV_ERIN, ConvRole::Member),
            ],
            turns: Some(3),
            expires: Some(ts + 3_600_000),
        },
    )
}

fn conv_action(
    who: (&str, u8),
    to: &[(&str, u8)],
    ts: i64,
    conv: MessageId,
    action: ConvActionKind,
    reason: Option<&str>,
    participants: Option<Vec<Invitee>>,
) -> Envelope {
    conv_env(
        who,
        MessageType::ConvAction,
        to,
        ts,
        Some(conv),
        Payload::ConvAction {
            action,
            reason: reason.map(str::to_owned),
            participants,
        },
    )
}

fn conv_post(who: (&str, u8), to: &[(&str, u8)], ts: i64, conv: MessageId, text: &str) -> Envelope {
    conv_env(
        who,
        MessageType::Message,
        to,
        ts,
        Some(conv),
        Payload::Message {
            text: text.into(),
            data: None,
        },
    )
}

fn conv_sign(e: &Envelope, seed_start: u8) -> SignedEnvelope {
    e.sign(&sk(seed_start)).unwrap()
}

/// The valid conversation envelopes: (comment, seed start, envelope).
fn valid_conv_envelopes() -> Vec<(&'static str, u8, Envelope)> {
    let call = conv_call();
    let id = conv_sign(&call, CONV_OWNER.1).id();
    let o = CONV_OWNER;
    let mut v = vec![("a live call with a turn limit and an expiry, inviting two members and an observer (CONVO-5): entry 1 of the conversation whose id is its id", o.1, call)];
    let mut async_call = conv_env(
        o,
        MessageType::Call,
        &[CONV_DAVE],
        T0 + 500,
        None,
        Payload::Call {
            topic: "Nightly build report".into(),
            mode: ConvMode::Async,
            participants: vec![invitee(CONV_DAVE, ConvRole::Observer)],
            turns: None,
            expires: None,
        },
    );
    async_call.corr = Some("build-2026-12-06".into());
    v.push((
        "an async call with only the required members and a correlation id",
        o.1,
        async_call,
    ));
    let c = CONV_CAROL;
    v.push((
        "accept (CONVO-6), addressed to the owner",
        c.1,
        conv_action(c, &[o], T0 + 2_000, id, ConvActionKind::Accept, None, None),
    ));
    v.push((
        "decline with a reason",
        CONV_ERIN.1,
        conv_action(
            CONV_ERIN,
            &[o],
            T0 + 2_100,
            id,
            ConvActionKind::Decline,
            Some("On another review until 5 pm"),
            None,
        ),
    ));
    v.push((
        "decline without a reason",
        CONV_ERIN.1,
        conv_action(
            CONV_ERIN,
            &[o],
            T0 + 2_150,
            id,
            ConvActionKind::Decline,
            None,
            None,
        ),
    ));
    v.push((
        "leave with a reason",
        c.1,
        conv_action(
            c,
            &[o],
            T0 + 2_200,
            id,
            ConvActionKind::Leave,
            Some("done here"),
            None,
        ),
    ));
    v.push((
        "close by the owner, addressed to itself, with a reason",
        o.1,
        conv_action(
            o,
            &[o],
            T0 + 2_300,
            id,
            ConvActionKind::Close,
            Some("merged"),
            None,
        ),
    ));
    v.push((
        "invite of two new participants, addressed to exactly them in their order",
        o.1,
        conv_action(
            o,
            &[("@frank@relay-a.example", 0), ("@gina@relay-a.example", 0)],
            T0 + 2_400,
            id,
            ConvActionKind::Invite,
            None,
            Some(vec![
                invitee(("@frank@relay-a.example", 0), ConvRole::Member),
                invitee(("@gina@relay-a.example", 0), ConvRole::Observer),
            ]),
        ),
    ));
    let mut post = conv_post(
        o,
        &[c],
        T0 + 3_000,
        id,
        "The retry loop never backs off; see line 42.",
    );
    post.ack_by = Some(T0 + 63_000);
    v.push((
        "a post (a message with conv, CONVO-8) asking for an ack",
        o.1,
        post,
    ));
    let mut task = conv_env(
        c,
        MessageType::TaskRequest,
        &[o],
        T0 + 3_100,
        Some(id),
        Payload::TaskRequest {
            task: "run_tests".into(),
            input: Some(obj(&[("pr", i(7))])),
        },
    );
    task.corr = Some("pr-7".into());
    v.push(("a task_request posted in the conversation", c.1, task));
    v.push((
        "an extension type posted in the conversation",
        c.1,
        conv_env(
            c,
            MessageType::Extension("x-demo.vote".into()),
            &[o],
            T0 + 3_200,
            Some(id),
            Payload::Extension(match obj(&[("choice", s("approve"))]) {
                Value::Object(o) => o,
                _ => unreachable!(),
            }),
        ),
    ));
    v
}

/// Conversation envelopes that parsing alone (ENV-16) refuses: (comment, value, code, field).
fn invalid_conv_envelopes() -> Vec<Value> {
    use ErrorCode::*;
    let call = conv_call();
    let id = conv_sign(&call, CONV_OWNER.1).id();
    let o = CONV_OWNER;
    let c = CONV_CAROL;
    let a = sk(o.1);
    let kc = sk(c.1);
    let call_v = call.to_value();
    let accept_v =
        conv_action(c, &[o], T0 + 2_000, id, ConvActionKind::Accept, None, None).to_value();
    let post_v = conv_post(o, &[c], T0 + 3_000, id, "hi").to_value();
    let ack_v = conv_env(
        c,
        MessageType::Ack,
        &[o],
        T0 + 3_500,
        None,
        Payload::Ack {
            msg: MessageId([0xab; 32]),
            status: AckStatus::Processed,
            reason: None,
        },
    )
    .to_value();
    let signed_a = |v: &Value| sign_raw(Domain::Envelope, v.clone(), &a);
    let signed_c = |v: &Value| sign_raw(Domain::Envelope, v.clone(), &kc);
    let payload_of = |v: &Value| v.as_object().unwrap().get("payload").unwrap().clone();
    let with_payload =
        |v: &Value, k: &str, x: Value| with(v, "payload", with(&payload_of(v), k, x));
    let without_payload = |v: &Value, k: &str| with(v, "payload", without(&payload_of(v), k));
    let part = |who: &str, role: &str| obj(&[("handle", s(who)), ("role", s(role))]);
    let to_of = |hs: &[&str]| arr(hs.iter().map(|x| s(x)).collect());
    let conv_hex = s(&id.to_hex());
    let mut cases: Vec<(&str, Value, ErrorCode, Option<&str>)> = Vec::new();
    let mut add =
        |cm: &'static str, v: Value, code, f: Option<&'static str>| cases.push((cm, v, code, f));

    add(
        "a call carrying conv",
        signed_a(&with(&call_v, "conv", conv_hex.clone())),
        InvalidField,
        Some("conv"),
    );
    add(
        "a call asking for an ack (ack_by)",
        signed_a(&with(&call_v, "ack_by", i(T0 + 60_000))),
        InvalidField,
        Some("ack_by"),
    );
    add(
        "a conv_action asking for an ack (ack_by)",
        signed_c(&with(&accept_v, "ack_by", i(T0 + 60_000))),
        InvalidField,
        Some("ack_by"),
    );
    add(
        "a conv_action without conv",
        signed_c(&without(&accept_v, "conv")),
        MissingField,
        Some("conv"),
    );
    add(
        "conv on an ack",
        signed_c(&with(&ack_v, "conv", conv_hex.clone())),
        InvalidField,
        Some("conv"),
    );
    add(
        "conv on a contact_request",
        signed_a(&with(
            &with(
                &with(&post_v, "type", s("contact_request")),
                "payload",
                obj(&[("level", s("message"))]),
            ),
            "conv",
            conv_hex.clone(),
        )),
        InvalidField,
        Some("conv"),
    );
    add(
        "conv in upper-case hex",
        signed_a(&with(&post_v, "conv", s(&id.to_hex().to_uppercase()))),
        InvalidField,
        Some("conv"),
    );
    add(
        "conv of 63 hex characters",
        signed_a(&with(&post_v, "conv", s(&id.to_hex()[..63]))),
        InvalidField,
        Some("conv"),
    );
    add(
        "conv not a string",
        signed_a(&with(&post_v, "conv", i(7))),
        InvalidField,
        Some("conv"),
    );
    add(
        "a call whose to is not its participants (one missing)",
        signed_a(&with(&call_v, "to", to_of(&[CONV_CAROL.0, CONV_DAVE.0]))),
        InvalidField,
        Some("to"),
    );
    add(
        "a call whose to lists its participants in another order",
        signed_a(&with(
            &call_v,
            "to",
            to_of(&[CONV_DAVE.0, CONV_CAROL.0, CONV_ERIN.0]),
        )),
        InvalidField,
        Some("to"),
    );
    add(
        "a call naming the caller as a participant",
        signed_a(&with(
            &with_payload(
                &call_v,
                "participants",
                arr(vec![part(CONV_CAROL.0, "member"), part(o.0, "member")]),
            ),
            "to",
            to_of(&[CONV_CAROL.0, o.0]),
        )),
        InvalidField,
        Some("payload.participants"),
    );
    add(
        "a call naming a participant twice",
        signed_a(&with(
            &with_payload(
                &call_v,
                "participants",
                arr(vec![
                    part(CONV_CAROL.0, "member"),
                    part(CONV_CAROL.0, "observer"),
                ]),
            ),
            "to",
            to_of(&[CONV_CAROL.0]),
        )),
        InvalidField,
        Some("payload.participants[1].handle"),
    );
    add(
        "a call inviting a participant with role owner",
        signed_a(&with(
            &with_payload(
                &call_v,
                "participants",
                arr(vec![part(CONV_CAROL.0, "owner")]),
            ),
            "to",
            to_of(&[CONV_CAROL.0]),
        )),
        InvalidField,
        Some("payload.participants[0].role"),
    );
    add(
        "a call with no participants",
        signed_a(&with_payload(&call_v, "participants", arr(vec![]))),
        InvalidField,
        Some("payload.participants"),
    );
    add(
        "a participant with an unknown member",
        signed_a(&with(
            &with_payload(
                &call_v,
                "participants",
                arr(vec![with(
                    &part(CONV_CAROL.0, "member"),
                    "mute",
                    Value::Bool(true),
                )]),
            ),
            "to",
            to_of(&[CONV_CAROL.0]),
        )),
        UnknownField,
        Some("payload.participants[0].mute"),
    );
    add(
        "a participant handle in local form",
        signed_a(&with_payload(
            &call_v,
            "participants",
            arr(vec![part("@carol", "member")]),
        )),
        InvalidHandle,
        Some("payload.participants[0].handle"),
    );
    add(
        "a call without a topic",
        signed_a(&without_payload(&call_v, "topic")),
        MissingField,
        Some("payload.topic"),
    );
    add(
        "a call with a topic of 281 characters",
        signed_a(&with_payload(&call_v, "topic", s(&"\u{e9}".repeat(281)))),
        InvalidField,
        Some("payload.topic"),
    );
    add(
        "a call with mode sync",
        signed_a(&with_payload(&call_v, "mode", s("sync"))),
        InvalidField,
        Some("payload.mode"),
    );
    add(
        "a call with turns 0",
        signed_a(&with_payload(&call_v, "turns", i(0))),
        InvalidField,
        Some("payload.turns"),
    );
    add(
        "a call with an unknown payload member",
        signed_a(&with_payload(&call_v, "priority", i(1))),
        UnknownField,
        Some("payload.priority"),
    );
    let invite_v = conv_action(
        o,
        &[CONV_DAVE],
        T0 + 2_400,
        id,
        ConvActionKind::Invite,
        None,
        Some(vec![invitee(CONV_DAVE, ConvRole::Member)]),
    )
    .to_value();
    add(
        "an invite without participants",
        signed_a(&without_payload(&invite_v, "participants")),
        MissingField,
        Some("payload.participants"),
    );
    add(
        "an accept with participants",
        signed_c(&with_payload(
            &accept_v,
            "participants",
            arr(vec![part(CONV_DAVE.0, "member")]),
        )),
        InvalidField,
        Some("payload.participants"),
    );
    add(
        "an accept with a reason",
        signed_c(&with_payload(&accept_v, "reason", s("glad to"))),
        InvalidField,
        Some("payload.reason"),
    );
    add(
        "an invite with a reason",
        signed_a(&with_payload(&invite_v, "reason", s("you know the code"))),
        InvalidField,
        Some("payload.reason"),
    );
    add(
        "an invite with an empty participants array",
        signed_a(&with_payload(&invite_v, "participants", arr(vec![]))),
        InvalidField,
        Some("payload.participants"),
    );
    add(
        "an unknown action",
        signed_c(&with_payload(&accept_v, "action", s("snooze"))),
        InvalidField,
        Some("payload.action"),
    );
    add(
        "a decline with a reason of 281 characters",
        signed_c(&with_payload(
            &with_payload(&accept_v, "action", s("decline")),
            "reason",
            s(&"x".repeat(281)),
        )),
        InvalidField,
        Some("payload.reason"),
    );
    add(
        "conv_action type_version 2",
        signed_c(&with(&accept_v, "type_version", i(2))),
        UnsupportedTypeVersion,
        None,
    );
    add(
        "call type_version 2",
        signed_a(&with(&call_v, "type_version", i(2))),
        UnsupportedTypeVersion,
        None,
    );

    let mut out = Vec::new();
    for (comment, v, code, field) in cases {
        let input = text(&v);
        match SignedEnvelope::parse(input.as_bytes(), &EnvelopeLimits::default()) {
            Err(e) => {
                assert_eq!(e.code(), code, "conversation case {comment:?}: {e}");
                assert_eq!(
                    common::envelope_error_field(&e),
                    field,
                    "conversation case {comment:?}: {e}"
                );
            }
            Ok(_) => panic!("conversation case {comment:?} was accepted"),
        }
        let mut case = obj(&[
            ("comment", s(comment)),
            ("input", s(&input)),
            ("error", s(code.as_str())),
        ]);
        if let Some(f) = field {
            case = with(&case, "field", s(f));
        }
        out.push(case);
    }
    out
}

/// The vectors' conversation as its home relay sequences it, with the sender's seed start of
/// each envelope entry (0 for events).
fn conv_chain() -> (
    Vec<(&'static str, u8, formica_protocol::conversation::Entry)>,
    formica_protocol::conversation::Conversation,
) {
    use formica_protocol::conversation::*;
    let lim = &CONV_VEC_LIMITS;
    let o = CONV_OWNER;
    let c = CONV_CAROL;
    let call = conv_sign(&conv_call(), o.1);
    let at0 = T0 + 1_010;
    let mut conv = Conversation::start(&call, at0, lim).unwrap();
    let id = conv.id;
    let mut out = vec![(
        "entry 1: the call (prev is 64 zeros)",
        o.1,
        Entry {
            conv: id,
            seq: 1,
            at: at0,
            prev: FIRST_PREV,
            body: EntryBody::Envelope(call),
        },
    )];
    assert_eq!(out[0].2.hash(), conv.head);
    let mut push =
        |conv: &mut Conversation, cm: &'static str, seed: u8, body: EntryBody, at: i64| {
            if let EntryBody::Envelope(se) = &body {
                conv.judge(se.envelope(), at, lim)
                    .unwrap_or_else(|e| panic!("{cm}: {e}"));
            }
            let e = conv.next_entry(body, at);
            conv.apply(&e);
            out.push((cm, seed, e));
        };
    // Erin's presence status is busy: the relay declines for it in the call's append (CONVO-7).
    push(
        &mut conv,
        "entry 2: the relay declines for erin, whose status is busy (event `declined`, reason busy)",
        0,
        EntryBody::Event(ConvEvent::Declined { handle: h(CONV_ERIN.0), reason: "busy".into() }),
        at0,
    );
    push(
        &mut conv,
        "entry 3: carol accepts",
        c.1,
        EntryBody::Envelope(conv_sign(
            &conv_action(c, &[o], T0 + 2_000, id, ConvActionKind::Accept, None, None),
            c.1,
        )),
        T0 + 2_004,
    );
    let mut p1 = conv_post(
        o,
        &[c],
        T0 + 3_000,
        id,
        "The retry loop never backs off; see line 42.",
    );
    p1.ack_by = Some(T0 + 63_000);
    push(
        &mut conv,
        "entry 4: alice posts to carol, asking for an ack",
        o.1,
        EntryBody::Envelope(conv_sign(&p1, o.1)),
        T0 + 3_003,
    );
    // Dave's live invitation rings out ring_ms after the call's entry.
    let due = conv.due_events(at0 + CONV_VEC_RING_MS + 1, CONV_VEC_RING_MS, lim);
    assert_eq!(
        due,
        vec![ConvEvent::Missed {
            handle: h(CONV_DAVE.0)
        }]
    );
    for ev in due {
        push(
            &mut conv,
            "entry 5: dave's invitation rang out (event `missed`)",
            0,
            EntryBody::Event(ev),
            at0 + CONV_VEC_RING_MS + 1,
        );
    }
    push(
        &mut conv,
        "entry 6: carol posts to alice",
        c.1,
        EntryBody::Envelope(conv_sign(
            &conv_post(c, &[o], T0 + 62_000, id, "Agreed; I will add jitter too."),
            c.1,
        )),
        T0 + 62_002,
    );
    push(
        &mut conv,
        "entry 7: alice's post reaches the turn limit of 3",
        o.1,
        EntryBody::Envelope(conv_sign(
            &conv_post(o, &[c], T0 + 63_000, id, "Thanks, merging."),
            o.1,
        )),
        T0 + 63_001,
    );
    let follow = conv.follow_ups(lim);
    assert_eq!(
        follow,
        vec![ConvEvent::Closed {
            reason: CloseReason::TurnLimit
        }]
    );
    for ev in follow {
        push(&mut conv, "entry 8: the relay closes the conversation on its turn limit in the same append (event `closed`)", 0, EntryBody::Event(ev), T0 + 63_001);
    }
    (out, conv)
}

/// Served entries that a reader must refuse (`Entry::from_value`): (comment, input text, code).
fn invalid_conv_entries(
    chain: &[(&'static str, u8, formica_protocol::conversation::Entry)],
) -> Vec<Value> {
    use formica_protocol::conversation::Entry;
    use ErrorCode::*;
    let wire_v = |k: usize| json::parse_default(&chain[k].2.wire()).unwrap();
    let rehash = |v: &Value| -> Value {
        let body = without(v, "hash");
        let mut input = Domain::Conversation.tag().to_vec();
        input.extend(canonicalize(&body));
        with(
            &body,
            "hash",
            s(&hex::encode(blake3::hash(&input).as_bytes())),
        )
    };
    let call_e = wire_v(0);
    let post_e = wire_v(3);
    let missed_e = wire_v(4);
    let closed_e = wire_v(7);
    let event_of = |v: &Value| v.as_object().unwrap().get("event").unwrap().clone();
    let env_of = |v: &Value| v.as_object().unwrap().get("envelope").unwrap().clone();
    let mut cases: Vec<(&str, Value, ErrorCode)> = Vec::new();
    let mut add = |cm: &'static str, v: Value, code| cases.push((cm, v, code));
    add(
        "hash of another entry (entry 4 carrying entry 3's hash)",
        with(&post_e, "hash", s(&hex::encode(&chain[2].2.hash()))),
        InvalidField,
    );
    add(
        "at changed after hashing",
        with(&missed_e, "at", i(T0 + 61_012)),
        InvalidField,
    );
    add(
        "prev changed after hashing",
        with(&post_e, "prev", s(&"00".repeat(32))),
        InvalidField,
    );
    add("the envelope's text changed after hashing, id left as signed, hash recomputed: id_mismatch", rehash(&with(&post_e, "envelope", with(&env_of(&post_e), "payload", obj(&[("text", s("Nothing to see."))])))), IdMismatch);
    add(
        "hash in upper-case hex",
        with(
            &post_e,
            "hash",
            s(&hex::encode(&chain[3].2.hash()).to_uppercase()),
        ),
        InvalidField,
    );
    add("hash missing", without(&post_e, "hash"), MissingField);
    add(
        "both an envelope and an event",
        rehash(&with(&missed_e, "envelope", env_of(&post_e))),
        InvalidField,
    );
    add(
        "neither an envelope nor an event",
        rehash(&without(&missed_e, "event")),
        InvalidField,
    );
    add(
        "an event of an unknown kind",
        rehash(&with(
            &missed_e,
            "event",
            with(&event_of(&missed_e), "kind", s("rang")),
        )),
        InvalidField,
    );
    add(
        "an event `closed` with reason closed_by_owner (the owner's close is its own envelope)",
        rehash(&with(
            &closed_e,
            "event",
            obj(&[("kind", s("closed")), ("reason", s("closed_by_owner"))]),
        )),
        InvalidField,
    );
    add(
        "an event `closed` with an unknown reason",
        rehash(&with(
            &closed_e,
            "event",
            obj(&[("kind", s("closed")), ("reason", s("bored"))]),
        )),
        InvalidField,
    );
    add(
        "an event `missed` without its handle",
        rehash(&with(&missed_e, "event", obj(&[("kind", s("missed"))]))),
        MissingField,
    );
    add(
        "an event with an unknown member",
        rehash(&with(
            &missed_e,
            "event",
            with(&event_of(&missed_e), "note", s("x")),
        )),
        UnknownField,
    );
    add(
        "an entry with an unknown member",
        rehash(&with(&missed_e, "relay", s("relay-a.example"))),
        UnknownField,
    );
    add("seq 0", rehash(&with(&call_e, "seq", i(0))), InvalidField);
    add(
        "seq as a string",
        rehash(&with(&call_e, "seq", s("1"))),
        InvalidField,
    );
    add(
        "conv not 64 hex characters",
        rehash(&with(&missed_e, "conv", s("abc"))),
        InvalidField,
    );
    add("not an object", arr(vec![]), InvalidField);

    let mut out = Vec::new();
    for (comment, v, code) in cases {
        let input = text(&v);
        let parsed = json::parse_default(input.as_bytes()).unwrap();
        match Entry::from_value(&parsed, &EnvelopeLimits::default()) {
            Err(e) => assert_eq!(e.code, code, "entry case {comment:?}: {e}"),
            Ok(_) => panic!("entry case {comment:?} was accepted"),
        }
        out.push(obj(&[
            ("comment", s(comment)),
            ("input", s(&input)),
            ("error", s(code.as_str())),
        ]));
    }
    out
}

/// CONVO-13 batches: what a home relay sends a participant relay. Valid ones must read;
/// invalid ones must be refused with `error` at `field`.
fn conv_batches(
    chain: &[(&'static str, u8, formica_protocol::conversation::Entry)],
) -> (Vec<Value>, Vec<Value>) {
    use formica_protocol::conversation::replica::Batch;
    use formica_protocol::conversation::{ConvEvent, Entry, EntryBody};
    use ErrorCode::*;
    let conv = chain[0].2.conv;
    let EntryBody::Envelope(call) = &chain[0].2.body else {
        unreachable!()
    };
    let to: Vec<formica_protocol::Handle> = call.envelope().to.clone();
    let batch = |from: usize, upto: usize| Batch {
        conv,
        to: to.clone(),
        turns: 20,
        expires: T0 + 3_600_000,
        entries: chain[from..upto]
            .iter()
            .map(|(_, _, e)| e.clone())
            .collect(),
    };
    let mut valid = Vec::new();
    for (cm, b) in [
        (
            "the whole conversation in one batch, entries 1 to n",
            batch(0, chain.len()),
        ),
        ("entries 3 to 5: a batch need not start at 1", batch(2, 5)),
        (
            "no entries: the home relay asks where the receiver stands",
            batch(0, 0),
        ),
    ] {
        let v = b.to_value();
        let back = Batch::from_value(&v, &EnvelopeLimits::default())
            .unwrap_or_else(|e| panic!("batch {cm:?}: {e}"));
        assert_eq!(back, b, "{cm}");
        valid.push(obj(&[("comment", s(cm)), ("input", s(&text(&v)))]));
    }
    let base = batch(0, 4).to_value();
    let entries_of = |v: &Value| {
        v.as_object()
            .unwrap()
            .get("entries")
            .unwrap()
            .as_array()
            .unwrap()
            .to_vec()
    };
    let mut cases: Vec<(&str, Value, ErrorCode, &str)> = Vec::new();
    let es = entries_of(&base);
    cases.push((
        "entries not consecutive (entry 3 missing)",
        with(
            &base,
            "entries",
            arr(vec![es[0].clone(), es[1].clone(), es[3].clone()]),
        ),
        InvalidField,
        "entries[2].seq",
    ));
    cases.push((
        "entries out of order",
        with(&base, "entries", arr(vec![es[1].clone(), es[0].clone()])),
        InvalidField,
        "entries[1].seq",
    ));
    // Entry 2 of another chain: consecutive, but its prev is not entry 1's hash.
    let stranger = Entry {
        conv,
        seq: 2,
        at: T0 + 1_011,
        prev: [7; 32],
        body: EntryBody::Event(ConvEvent::Missed {
            handle: to[0].clone(),
        }),
    };
    cases.push((
        "entry 2 does not link to entry 1 (its prev is another hash)",
        with(
            &base,
            "entries",
            arr(vec![es[0].clone(), stranger.wire_value()]),
        ),
        InvalidField,
        "entries[1].prev",
    ));
    let other = Entry {
        conv: formica_protocol::envelope::MessageId([9; 32]),
        seq: 2,
        at: T0 + 1_011,
        prev: chain[0].2.hash(),
        body: EntryBody::Event(ConvEvent::Missed {
            handle: to[0].clone(),
        }),
    };
    cases.push((
        "an entry of another conversation",
        with(
            &base,
            "entries",
            arr(vec![es[0].clone(), other.wire_value()]),
        ),
        InvalidField,
        "entries[1].conv",
    ));
    cases.push((
        "an entry whose hash is not its own",
        with(
            &base,
            "entries",
            arr(vec![with(&es[0], "hash", s(&"ab".repeat(32)))]),
        ),
        InvalidField,
        "entries[0].hash",
    ));
    cases.push((
        "no participant in to",
        with(&base, "to", arr(vec![])),
        InvalidField,
        "to",
    ));
    cases.push((
        "a relay address in to",
        with(&base, "to", arr(vec![s("@relay@relay-b.example")])),
        InvalidField,
        "to[0]",
    ));
    cases.push(("turns 0", with(&base, "turns", i(0)), InvalidField, "turns"));
    cases.push((
        "expires missing",
        without(&base, "expires"),
        MissingField,
        "expires",
    ));
    cases.push((
        "entries not an array",
        with(&base, "entries", obj(&[])),
        InvalidField,
        "entries",
    ));
    cases.push((
        "an unknown member",
        with(&base, "home", s("relay-a.example")),
        UnknownField,
        "home",
    ));
    cases.push((
        "conv not 64 hex characters",
        with(&base, "conv", s("abc")),
        InvalidField,
        "conv",
    ));
    let mut invalid = Vec::new();
    for (cm, v, code, field) in cases {
        let input = text(&v);
        let parsed = json::parse_default(input.as_bytes()).unwrap();
        match Batch::from_value(&parsed, &EnvelopeLimits::default()) {
            Err(e) => {
                assert_eq!(e.code, code, "batch case {cm:?}: {e}");
                assert_eq!(e.field.as_deref(), Some(field), "batch case {cm:?}: {e}");
            }
            Ok(_) => panic!("batch case {cm:?} was accepted"),
        }
        invalid.push(obj(&[
            ("comment", s(cm)),
            ("input", s(&input)),
            ("error", s(code.as_str())),
            ("field", s(field)),
        ]));
    }
    (valid, invalid)
}

fn gen_conversations() -> Value {
    let mut valid = Vec::new();
    for (comment, seed_start, env) in valid_conv_envelopes() {
        let key = sk(seed_start);
        let signed = env.sign(&key).unwrap();
        let reparsed = SignedEnvelope::parse(&signed.wire_bytes(), &EnvelopeLimits::default())
            .unwrap_or_else(|e| panic!("conversation envelope {comment:?}: {e}"));
        assert_eq!(reparsed.verify(&key.public()).unwrap().id(), signed.id());
        valid.push(obj(&[
            ("comment", s(comment)),
            ("seed_hex", s(&hex::encode(&seed(seed_start)))),
            ("public_key", s(&key.public().to_hex())),
            ("key_id", s(&key.public().key_id().to_hex())),
            ("domain", s("formica/v1/envelope")),
            ("envelope", env.to_value()),
            ("signing_input_hex", s(&hex::encode(signed.signing_input()))),
            ("id", s(&signed.id().to_hex())),
            ("sig", s(&signed.signature().to_hex())),
            ("wire", s(&String::from_utf8(signed.wire_bytes()).unwrap())),
        ]));
    }
    let (chain, conv) = conv_chain();
    let mut entries = Vec::new();
    for (comment, seed_start, e) in &chain {
        let hash_input = Domain::Conversation.input(&canonicalize(&e.to_value()));
        assert_eq!(*blake3::hash(&hash_input).as_bytes(), e.hash());
        let wire = e.wire();
        let back = formica_protocol::conversation::Entry::from_value(
            &json::parse_default(&wire).unwrap(),
            &EnvelopeLimits::default(),
        )
        .unwrap_or_else(|err| panic!("{comment}: {err}"));
        assert_eq!(&back, e, "{comment}");
        let mut case = obj(&[
            ("comment", s(comment)),
            ("entry", e.to_value()),
            ("hash_input_hex", s(&hex::encode(&hash_input))),
            ("hash", s(&hex::encode(&e.hash()))),
            ("wire", s(&String::from_utf8(wire).unwrap())),
        ]);
        if *seed_start != 0 {
            case = with(&case, "public_key", s(&sk(*seed_start).public().to_hex()));
        }
        entries.push(case);
    }
    let (batches, batches_invalid) = conv_batches(&chain);
    let mut summary = conv.summary(&CONV_VEC_LIMITS);
    summary = with(&summary, "head", s(&hex::encode(&conv.head)));
    obj(&[
        ("comment", s("Conversations (SPEC.md section 19). `valid`: conversation envelopes (calls, every conv_action, posts with conv) as in envelopes_valid.json: the public key and key id follow from seed_hex; signing_input = the tag \"formica/v1/envelope\", one 0x00 byte, then the RFC 8785 form of `envelope`; id = BLAKE3(signing_input); sig = Ed25519(seed, signing_input); `wire` must parse and verify with public_key. `invalid`: `input` must be refused by parsing alone (ENV-16) with `error`, and `field`, when present, is the path the refusal names (HTTP-4). `entries`: one conversation as its home relay served it, entries 1 to n in order (CONVO-4): `entry` is the entry without `hash`; hash_input = the tag \"formica/v1/conversation\", one 0x00 byte, then the RFC 8785 form of `entry`; hash = BLAKE3(hash_input); `wire` is the canonical form of the entry with `hash`; each entry's `prev` is the hash of the one before (64 zeros for seq 1); `public_key` is the key of an envelope entry's sender. `state` is what the entries fold to (CONVO-1, CONVO-2, CONVO-9): the summary of API-23 without `home`, with `head` the last entry's hash. `entries_invalid`: served entries a reader must refuse with `error` (the hash is checked last, after the members, the body and the envelope's id). `batches`: bodies of POST /v1/federation/conversation (CONVO-13) that must read: members conv, to (1 to 256 global handles), turns (>= 1), expires (>= 0), entries (each read as an entry, naming conv, consecutive seqs, each prev the hash of the entry before). `batches_invalid`: bodies a reader must refuse with `error` at `field` (the members in the order conv, to, turns, expires, entries, then unknown members, then each entry in order).")),
        ("valid", arr(valid)),
        ("invalid", arr(invalid_conv_envelopes())),
        ("entries", arr(entries)),
        ("state", summary),
        ("entries_invalid", arr(invalid_conv_entries(&chain))),
        ("batches", arr(batches)),
        ("batches_invalid", arr(batches_invalid)),
    ])
}
