//! Fuzz target for sealed payloads (SPEC.md section 20, SEAL-*): what relays read of them and what
//! recipients do with them. The input is read three ways:
//! 1. as a JSON document, then as a payload object (`Sealed::from_payload`) and as the `sealed`
//!    object itself (`Sealed::from_value`): a sealed payload that reads writes back to a value
//!    that reads to the same sealed payload, and its content ciphertext is a size bucket (SEAL-6)
//!    and a 16-byte tag;
//! 2. as an envelope (`SignedEnvelope::parse`, default limits; the signature is not checked): a
//!    sealed envelope that parses is opened (`seal::open`) by each agent of
//!    `vectors/sealed.json`, with that agent's verified key log and encryption secrets (read once
//!    from the vectors at start), and by a handle that no sealed key names. Opening must never
//!    panic; its refusal is one of the stable words of SEAL-11, a handle with no sealed key gets
//!    `not_a_recipient`, and what opens is a payload of the envelope's type, not sealed;
//! 3. an envelope that parses with a plain payload of a sealable type (at most 4 recipients) is
//!    sealed (`seal::seal`, fixed randomness) to nova's encryption key of the vectors under each
//!    recipient's handle, plus the sender's copy, and opened again as its first recipient with
//!    nova's log: the payload comes back unchanged when nova's key was valid at the envelope's
//!    `ts` (LOG-16), and otherwise the refusal is `key_expired` or `key_not_valid`.
//!    A non-sealable type is refused by `seal` (SEAL-2).
#![no_main]

use formica_protocol::canon::canonicalize;
use formica_protocol::envelope::{EnvelopeLimits, Payload, SignedEnvelope};
use formica_protocol::json::{self, JsonLimits, Value};
use formica_protocol::keylog::{KeyLog, SignedKeyLogEntry};
use formica_protocol::seal::{self, EncSecretKey, Recipient, Sealed, PADDED_MIN};
use formica_protocol::{Handle, KeyId};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const REASONS: &[&str] = &[
    "not_a_recipient",
    "unknown_key_id",
    "key_expired",
    "key_not_valid",
    "bad_tag",
    "bad_padding",
    "bad_plaintext",
];

struct Agent {
    handle: Handle,
    log: KeyLog,
    secrets: Vec<(KeyId, EncSecretKey)>,
}

impl Agent {
    fn secret(&self, kid: &KeyId) -> Option<EncSecretKey> {
        self.secrets.iter().find(|(k, _)| k == kid).map(|(_, s)| s.clone())
    }
}

/// The agents of `vectors/sealed.json`: their key logs, verified, and encryption secrets.
fn agents() -> &'static [Agent] {
    static AGENTS: OnceLock<Vec<Agent>> = OnceLock::new();
    AGENTS.get_or_init(|| {
        let text = include_bytes!("../../vectors/sealed.json");
        let limits = JsonLimits {
            bytes_max: text.len(),
            ..JsonLimits::default()
        };
        let doc = json::parse(text, limits).expect("sealed.json parses");
        let obj = doc.as_object().expect("sealed.json is an object");
        obj.get("agents")
            .and_then(Value::as_array)
            .expect("sealed.json has agents")
            .iter()
            .map(|a| {
                let a = a.as_object().expect("an agent is an object");
                let handle = Handle::parse(a.get("handle").and_then(Value::as_str).expect("handle"))
                    .expect("the agent's handle parses");
                let entries = a
                    .get("log")
                    .and_then(Value::as_array)
                    .expect("log")
                    .iter()
                    .map(|e| {
                        SignedKeyLogEntry::parse(&canonicalize(e), JsonLimits::default())
                            .expect("the agent's log entry parses")
                    });
                let log = KeyLog::verify(entries).expect("the agent's log verifies");
                let secrets = a
                    .get("enc_secrets")
                    .and_then(Value::as_array)
                    .expect("enc_secrets")
                    .iter()
                    .map(|s| {
                        let s = s.as_object().expect("a secret is an object");
                        let hex = |k: &str| s.get(k).and_then(Value::as_str).expect("hex member");
                        let kid = KeyId::parse_hex(hex("kid")).expect("kid");
                        let mut b = [0u8; 32];
                        for (i, byte) in b.iter_mut().enumerate() {
                            *byte = u8::from_str_radix(&hex("secret")[2 * i..2 * i + 2], 16)
                                .expect("secret hex");
                        }
                        let sk = EncSecretKey::from_bytes(&b);
                        assert_eq!(
                            sk.public().expect("a usable secret").key_id(),
                            kid,
                            "the secret is the key id's"
                        );
                        (kid, sk)
                    })
                    .collect();
                Agent {
                    handle,
                    log,
                    secrets,
                }
            })
            .collect()
    })
}

/// The agent of the vectors with this handle.
fn agent(handle: &str) -> &'static Agent {
    agents()
        .iter()
        .find(|a| a.handle.as_str() == handle)
        .expect("the vectors have this agent")
}

fn check_sealed(s: &Sealed) {
    assert!(!s.keys.is_empty(), "a sealed payload has a sealed key");
    let body = s.ct.len() - 16;
    assert!(body >= PADDED_MIN && seal::padded_len(body) == body, "ct is a bucket and a tag");
    let back = Sealed::from_payload(&s.to_payload_value()).expect("written back, it reads");
    assert_eq!(&back, s, "written back, it reads to the same sealed payload");
}

fuzz_target!(|data: &[u8]| {
    let agents = agents();

    // 1. The payload reader alone.
    if let Ok(v) = json::parse(data, JsonLimits::default()) {
        if let Ok(s) = Sealed::from_payload(&v) {
            check_sealed(&s);
        }
        if let Ok(s) = Sealed::from_value(&v, "payload.sealed") {
            check_sealed(&s);
            assert_eq!(canonicalize(&s.to_value()), canonicalize(&v), "a read sealed object is its own canonical form");
        }
    }

    // 2. Envelopes: what relays accept, then what recipients make of it.
    let Ok(se) = SignedEnvelope::parse(data, &EnvelopeLimits::default()) else {
        return;
    };
    let env = se.envelope();
    if let Payload::Sealed(s) = &env.payload {
        check_sealed(s);
        assert!(seal::sealable(&env.msg_type), "only sealable types parse sealed");
        s.check_addressing(&env.from, &env.to).expect("a parsed envelope's keys are addressed");
        for a in agents {
            match seal::open(env, &a.handle, &a.log, |kid| a.secret(kid)) {
                Ok(p) => assert!(!matches!(p, Payload::Sealed(_)), "opens to a plain payload"),
                Err(e) => assert!(REASONS.contains(&e.reason()), "reason {}", e.reason()),
            }
        }
        let stranger = Handle::parse("@nobody@relay-z.example").unwrap();
        if !s.keys.iter().any(|k| k.to == stranger) {
            let nova = agent("@nova@relay-b.example");
            let r = seal::open(env, &stranger, &nova.log, |kid| nova.secret(kid));
            assert_eq!(r.err().map(|e| e.reason()), Some("not_a_recipient"));
        }
        return;
    }

    // 3. Seal a plain payload to nova's key under each recipient's handle, then open it.
    if env.to.len() > 4 {
        return;
    }
    let nova = agent("@nova@relay-b.example");
    let key = nova.secrets[0].1.public().unwrap();
    let mut recipients: Vec<Recipient> = env
        .to
        .iter()
        .enumerate()
        .map(|(i, h)| Recipient {
            handle: h.clone(),
            key,
            ephemeral: [i as u8 + 1; 32],
        })
        .collect();
    recipients.push(Recipient {
        handle: env.from.clone(),
        key,
        ephemeral: [0xee; 32],
    });
    let sealed = match seal::seal(env, &recipients, [7u8; 32]) {
        Ok(s) => s,
        Err(e) => {
            assert!(!seal::sealable(&env.msg_type), "a sealable type seals: {e}");
            return;
        }
    };
    check_sealed(&sealed);
    let mut sealed_env = env.clone();
    sealed_env.payload = Payload::Sealed(sealed);
    let me = &env.to[0];
    let opened = seal::open(&sealed_env, me, &nova.log, |kid| nova.secret(kid));
    match nova.log.enc_key_at(&key.key_id(), env.ts) {
        Ok(_) => assert_eq!(opened.as_ref(), Ok(&env.payload), "sealed, then opened, it is the same payload"),
        Err(_) => {
            let reason = opened.expect_err("opens only while the key is valid").reason();
            assert!(reason == "key_expired" || reason == "key_not_valid", "reason {reason}");
        }
    }
});
