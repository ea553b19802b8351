//! Sealed payloads (SPEC.md section 20) and encryption keys in key logs (LOG-16):
//! - RFC 9180's published vector for the suite, through the `hpke` crate and this crate's key
//!   derivation;
//! - the project's vectors, `vectors/sealed.json`: generated here (the case list is the source,
//!   `UPDATE_VECTORS=1 cargo test -p formica-protocol --test seal` rewrites the file) and then
//!   checked from the file, as a third-party implementation would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{arr, i, load, obj, s, Get};
use formica_protocol::canon::{canonicalize, to_pretty};
use formica_protocol::envelope::{
    EnvelopeError, EnvelopeLimits, MessageId, MessageType, Payload, SignedEnvelope,
};
use formica_protocol::hex;
use formica_protocol::json::{Object, Value};
use formica_protocol::keylog::{KeyLog, KeyLogEntry, KeyOp, SignedKeyLogEntry};
use formica_protocol::keys::{Domain, KeyId, SecretKey};
use formica_protocol::seal::{self, EncPublicKey, EncSecretKey, Recipient};
use formica_protocol::{Envelope, Handle};
use hpke::rand_core::{CryptoRng, RngCore};
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use std::collections::BTreeMap;

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;

const T0: i64 = 1_764_000_000_000;
const DAY: i64 = 86_400_000;

fn b(v: &Value, k: &str) -> Vec<u8> {
    hex::decode(v.str_(k)).unwrap()
}

/// Hands HPKE exactly the bytes given, as RFC 9180's vectors fix `ikmE`.
struct Fixed(Vec<u8>);
impl RngCore for Fixed {
    fn next_u32(&mut self) -> u32 {
        unimplemented!()
    }
    fn next_u64(&mut self) -> u64 {
        unimplemented!()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        assert!(
            dest.len() <= self.0.len(),
            "asked for more than the vector's ikm"
        );
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
    }
}
impl CryptoRng for Fixed {}

#[test]
fn rfc9180_vector_through_hpke() {
    let v = load("external/rfc9180/x25519-sha256-chacha20poly1305-base.json");
    // DeriveKeyPair, through the crate and through EncSecretKey.
    let (ske, pke) = Kem::derive_keypair(&b(&v, "ikmE"));
    assert_eq!(ske.to_bytes().to_vec(), b(&v, "skEm"));
    assert_eq!(pke.to_bytes().to_vec(), b(&v, "pkEm"));
    let ikm_r: [u8; 32] = b(&v, "ikmR").try_into().unwrap();
    let sk_r = EncSecretKey::derive(&ikm_r);
    assert_eq!(sk_r.to_bytes().to_vec(), b(&v, "skRm"));
    assert_eq!(sk_r.public().unwrap().to_bytes().to_vec(), b(&v, "pkRm"));

    let pk_r = <Kem as hpke::Kem>::PublicKey::from_bytes(&b(&v, "pkRm")).unwrap();
    let info = b(&v, "info");
    let (enc, mut sender) = hpke::setup_sender::<Aead, Kdf, Kem, _>(
        &OpModeS::Base,
        &pk_r,
        &info,
        &mut Fixed(b(&v, "ikmE")),
    )
    .unwrap();
    assert_eq!(enc.to_bytes().to_vec(), b(&v, "enc"));
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(&b(&v, "skRm")).unwrap();
    let mut receiver =
        hpke::setup_receiver::<Aead, Kdf, Kem>(&OpModeR::Base, &sk, &enc, &info).unwrap();
    let cases = v.list("encryptions");
    let mut seq = 0;
    for c in cases {
        let want_seq = c.get("seq").as_i64().unwrap();
        // Advance both contexts to the case's sequence number.
        while seq < want_seq {
            let ct = sender.seal(b"skip", b"").unwrap();
            receiver.open(&ct, b"").unwrap();
            seq += 1;
        }
        let ct = sender.seal(&b(c, "pt"), &b(c, "aad")).unwrap();
        assert_eq!(ct, b(c, "ct"), "encryption {want_seq}");
        assert_eq!(receiver.open(&ct, &b(c, "aad")).unwrap(), b(c, "pt"));
        seq += 1;
    }
    for e in v.list("exports") {
        let mut out = vec![0u8; e.get("L").as_i64().unwrap() as usize];
        sender.export(&b(e, "exporter_context"), &mut out).unwrap();
        assert_eq!(out, b(e, "exported_value"));
        receiver
            .export(&b(e, "exporter_context"), &mut out)
            .unwrap();
        assert_eq!(out, b(e, "exported_value"));
    }
}

// ---------------------------------------------------------------- the agents of sealed.json

fn seed(start: u8) -> [u8; 32] {
    std::array::from_fn(|k| start.wrapping_add(k as u8))
}
fn h(x: &str) -> Handle {
    Handle::parse(x).unwrap()
}

struct Agent {
    handle: Handle,
    sk: SecretKey,
    /// Encryption secret keys, in the order the log publishes them.
    enc: Vec<EncSecretKey>,
    entries: Vec<SignedKeyLogEntry>,
}

impl Agent {
    fn new(name: &str, start: u8) -> Agent {
        let handle = h(name);
        let sk = SecretKey::from_seed(&seed(start));
        let reg = KeyLogEntry {
            handle: handle.clone(),
            seq: 0,
            prev: None,
            ts: T0 - 10 * DAY,
            op: KeyOp::Register {
                key: sk.public(),
                recovery: None,
            },
            signer: sk.public().key_id(),
        }
        .sign(&sk, &[])
        .unwrap();
        Agent {
            handle,
            sk,
            enc: Vec::new(),
            entries: vec![reg],
        }
    }
    /// Appends an entry signed by the current key.
    fn push(&mut self, ts: i64, op: KeyOp) {
        let head = self.entries.last().unwrap();
        let e = KeyLogEntry {
            handle: self.handle.clone(),
            seq: head.entry().seq + 1,
            prev: Some(head.hash()),
            ts,
            op,
            signer: self.sk.public().key_id(),
        }
        .sign(&self.sk, &[])
        .unwrap();
        self.entries.push(e);
    }
    fn publish(&mut self, start: u8, ts: i64, expires: i64) {
        let k = EncSecretKey::derive(&seed(start));
        let enc = k.public().unwrap();
        self.enc.push(k);
        self.push(ts, KeyOp::Enc { enc, expires });
    }
    /// The entries as values, as a log is served.
    fn values(&self) -> Vec<Value> {
        self.entries.iter().map(|e| e.value().clone()).collect()
    }
    fn log(&self) -> KeyLog {
        KeyLog::verify(self.entries.clone()).unwrap()
    }
    fn secret(&self, kid: &KeyId) -> Option<EncSecretKey> {
        self.enc
            .iter()
            .find(|k| k.public().unwrap().key_id() == *kid)
            .cloned()
    }
    fn to_value(&self) -> Value {
        obj(&[
            ("handle", s(self.handle.as_str())),
            (
                "log",
                arr(self.entries.iter().map(|e| e.value().clone()).collect()),
            ),
            (
                "enc_secrets",
                arr(self
                    .enc
                    .iter()
                    .map(|k| {
                        obj(&[
                            ("kid", s(&k.public().unwrap().key_id().to_hex())),
                            ("public", s(&k.public().unwrap().to_hex())),
                            ("secret", s(&hex::encode(&k.to_bytes()))),
                        ])
                    })
                    .collect()),
            ),
        ])
    }
}

struct World {
    alice: Agent,
    nova: Agent,
    bob: Agent,
    carol: Agent,
}

fn world() -> World {
    let mut alice = Agent::new("@alice@relay-a.example", 1);
    let mut nova = Agent::new("@nova@relay-b.example", 0x21);
    let mut bob = Agent::new("@bob@relay-b.example", 0x41);
    let mut carol = Agent::new("@carol@relay-c.example", 0x61);
    alice.publish(0x81, T0 - 9 * DAY, T0 + 90 * DAY);
    nova.publish(0x91, T0 - 9 * DAY, T0 + 90 * DAY);
    bob.publish(0xa1, T0 - 9 * DAY, T0 + 90 * DAY);
    // Carol's first key expires before T0 and a second one replaced nothing until T0 - DAY;
    // her third key is current at T0.
    carol.publish(0xb1, T0 - 9 * DAY, T0 - 5 * DAY);
    carol.publish(0xc1, T0 - 4 * DAY, T0 + 90 * DAY);
    carol.publish(0xd1, T0 - DAY, T0 + 90 * DAY);
    World {
        alice,
        nova,
        bob,
        carol,
    }
}

impl World {
    fn agent(&self, who: &Handle) -> &Agent {
        [&self.alice, &self.nova, &self.bob, &self.carol]
            .into_iter()
            .find(|a| a.handle == *who)
            .unwrap()
    }
}

fn header(w: &World, ty: MessageType, to: &[&Agent], payload: Payload) -> Envelope {
    Envelope {
        msg_type: ty,
        type_version: 1,
        from: w.alice.handle.clone(),
        key: w.alice.sk.public().key_id(),
        to: to.iter().map(|a| a.handle.clone()).collect(),
        ts: T0,
        corr: None,
        ack_by: None,
        conv: None,
        payload,
    }
}

fn text(t: &str) -> Payload {
    Payload::Message {
        text: t.into(),
        data: None,
    }
}

/// Seals `env` to its recipients' keys current at its `ts` (and to the sender when `self_copy`),
/// with ephemeral seeds and content key derived from `n`.
fn sealed(w: &World, env: &Envelope, self_copy: bool, n: u8) -> Envelope {
    let mut who: Vec<&Handle> = env.to.iter().collect();
    if self_copy {
        who.push(&env.from);
    }
    let rs: Vec<Recipient> = who
        .iter()
        .enumerate()
        .map(|(k, hd)| Recipient {
            handle: (*hd).clone(),
            key: w.agent(hd).log().enc_key_current(env.ts).unwrap().key,
            ephemeral: seed(n.wrapping_mul(16).wrapping_add(k as u8)),
        })
        .collect();
    let s = seal::seal(env, &rs, seed(n.wrapping_add(0x70))).unwrap();
    let mut out = env.clone();
    out.payload = Payload::Sealed(s);
    out
}

fn wire(w: &World, env: &Envelope) -> String {
    String::from_utf8(env.sign(&w.alice.sk).unwrap().wire_bytes()).unwrap()
}

/// Signs an arbitrary envelope value (valid or not) as alice.
fn sign_raw(w: &World, mut v: Value) -> String {
    if let Value::Object(o) = &mut v {
        o.remove("id");
        o.remove("sig");
    }
    let sig = w.alice.sk.sign(Domain::Envelope, &canonicalize(&v));
    if let Value::Object(o) = &mut v {
        o.insert("sig", sig.to_hex().into());
    }
    String::from_utf8(canonicalize(&v)).unwrap()
}

/// Edits the `sealed` object of an envelope value.
fn edit_sealed(env: &Envelope, f: impl FnOnce(&mut Object)) -> Value {
    let mut v = env.to_value();
    let Value::Object(o) = &mut v else { panic!() };
    let Some(Value::Object(p)) = o.get_mut("payload") else {
        panic!()
    };
    let Some(Value::Object(sd)) = p.get_mut("sealed") else {
        panic!()
    };
    f(sd);
    v
}

fn keys_mut(sd: &mut Object) -> &mut Vec<Value> {
    match sd.get_mut("keys") {
        Some(Value::Array(a)) => a,
        _ => panic!(),
    }
}

fn gen_sealed() -> Value {
    let w = world();
    let (alice, nova, bob, carol) = (&w.alice, &w.nova, &w.bob, &w.carol);
    let mut valid = Vec::new();
    let mut add_valid = |comment: &str, env: Envelope| {
        let input = wire(&w, &env);
        let se = SignedEnvelope::parse(input.as_bytes(), &EnvelopeLimits::default())
            .unwrap_or_else(|e| panic!("{comment}: {e}"));
        let Payload::Sealed(sd) = &se.envelope().payload else {
            panic!()
        };
        let mut opens = Vec::new();
        for k in &sd.keys {
            let a = w.agent(&k.to);
            let p = seal::open(se.envelope(), &k.to, &a.log(), |kid| a.secret(kid))
                .unwrap_or_else(|e| panic!("{comment}: {} cannot open: {e}", k.to));
            opens.push(obj(&[
                ("recipient", s(k.to.as_str())),
                ("payload", p.to_value()),
            ]));
        }
        let padded = sd.ct.len() - 16;
        valid.push(obj(&[
            ("comment", s(comment)),
            ("input", s(&input)),
            ("aad", s(&hex::encode(&seal::routing_aad(se.envelope())))),
            ("padded_bytes", i(padded as i64)),
            ("opens", arr(opens)),
        ]));
    };

    add_valid(
        "a message to one recipient, with the sender's own copy",
        sealed(
            &w,
            &header(&w, MessageType::Message, &[nova], text("Hello, Nova! é")),
            true,
            1,
        ),
    );
    let mut tr = header(
        &w,
        MessageType::TaskRequest,
        &[nova, bob, carol],
        Payload::TaskRequest {
            task: "summarize".into(),
            input: Some(obj(&[("url", s("https://example.org/a"))])),
        },
    );
    tr.corr = Some("job-7".into());
    tr.ack_by = Some(T0 + 60_000);
    add_valid(
        "a task request to three recipients on two relays, with corr and ack_by",
        sealed(&w, &tr, false, 2),
    );
    let mut tres = header(
        &w,
        MessageType::TaskResult,
        &[bob],
        Payload::TaskResult {
            status: formica_protocol::envelope::TaskStatus::Ok,
            output: Some(s("done")),
            error: None,
        },
    );
    tres.corr = Some(MessageId([7; 32]).to_hex());
    add_valid(
        "a task result (corr stays outside)",
        sealed(&w, &tres, false, 3),
    );
    let mut post = header(&w, MessageType::Message, &[nova, bob], text("a post"));
    post.conv = Some(MessageId([0x33; 32]));
    add_valid(
        "a conversation post: conv is part of the routing header",
        sealed(&w, &post, true, 4),
    );
    let mut ext = Object::new();
    ext.insert("n", Value::Int(42));
    add_valid(
        "an extension type",
        sealed(
            &w,
            &header(
                &w,
                MessageType::Extension("x-demo.ping".into()),
                &[nova],
                Payload::Extension(ext),
            ),
            false,
            5,
        ),
    );
    add_valid(
        "a 300-byte plaintext and its 0x80 marker pad to the 304-byte bucket",
        sealed(
            &w,
            &header(
                &w,
                MessageType::Message,
                &[nova],
                text(&"x".repeat(300 - 11)),
            ),
            false,
            6,
        ),
    );

    // Envelopes every relay accepts whose payload a recipient cannot open (SEAL-11).
    let mut unopenable = Vec::new();
    let mut add_unopenable = |comment: &str, input: String, recipient: &Agent, reason: &str| {
        let se = SignedEnvelope::parse(input.as_bytes(), &EnvelopeLimits::default())
            .unwrap_or_else(|e| panic!("{comment}: refused: {e}"));
        let got = seal::open(se.envelope(), &recipient.handle, &recipient.log(), |kid| {
            recipient.secret(kid)
        })
        .expect_err(comment);
        assert_eq!(got.reason(), reason, "{comment}: {got}");
        unopenable.push(obj(&[
            ("comment", s(comment)),
            ("input", s(&input)),
            ("recipient", s(recipient.handle.as_str())),
            ("reason", s(reason)),
        ]));
    };
    let base = sealed(
        &w,
        &header(&w, MessageType::Message, &[nova], text("hi")),
        false,
        9,
    );
    let Payload::Sealed(base_sd) = &base.payload else {
        panic!()
    };
    let mut moved = base.clone();
    moved.ts = T0 + 1;
    add_unopenable(
        "wrong AAD: the sealed payload moved into another envelope (a different ts)",
        wire(&w, &moved),
        nova,
        "bad_tag",
    );
    let mut other_to = base.clone();
    other_to.corr = Some("added".into());
    add_unopenable(
        "wrong AAD: a corr added to the routing header",
        wire(&w, &other_to),
        nova,
        "bad_tag",
    );
    add_unopenable(
        "wrong recipient: bob is not among the sealed keys",
        wire(&w, &base),
        bob,
        "not_a_recipient",
    );
    let to_bob = sealed(
        &w,
        &header(&w, MessageType::Message, &[bob], text("hi")),
        false,
        10,
    );
    let Payload::Sealed(bob_sd) = &to_bob.payload else {
        panic!()
    };
    let mut swapped = base.clone();
    let mut sd = base_sd.clone();
    sd.keys[0].enc = bob_sd.keys[0].enc;
    sd.keys[0].wrapped = bob_sd.keys[0].wrapped;
    swapped.payload = Payload::Sealed(sd);
    add_unopenable(
        "wrong recipient: the key sealed for bob, under nova's name and key id",
        wire(&w, &swapped),
        nova,
        "bad_tag",
    );
    let mut flipped = base.clone();
    let mut sd = base_sd.clone();
    sd.ct[0] ^= 1;
    flipped.payload = Payload::Sealed(sd);
    add_unopenable(
        "one bit of the content ciphertext flipped",
        wire(&w, &flipped),
        nova,
        "bad_tag",
    );
    let mut unknown = base.clone();
    let mut sd = base_sd.clone();
    sd.keys[0].kid = KeyId([0x5a; 16]);
    unknown.payload = Payload::Sealed(sd);
    add_unopenable(
        "unknown key id: not an encryption key of nova's log",
        wire(&w, &unknown),
        nova,
        "unknown_key_id",
    );
    // Sealed to carol's first key, which expired at T0 - 5 days, at T0 - 4.5 days (before her
    // second key was published, so the first was not replaced: it had expired).
    let mut exp = header(&w, MessageType::Message, &[carol], text("late"));
    exp.ts = T0 - 9 * DAY / 2;
    let first = carol.enc[0].public().unwrap();
    let rs = [Recipient {
        handle: carol.handle.clone(),
        key: first,
        ephemeral: seed(0xe1),
    }];
    exp.payload = Payload::Sealed(seal::seal(&exp, &rs, seed(0xe2)).unwrap());
    add_unopenable(
        "expired key: sealed to carol's first key after it expired",
        wire(&w, &exp),
        carol,
        "key_expired",
    );
    let second = carol.enc[1].public().unwrap();
    let mut old = header(&w, MessageType::Message, &[carol], text("stale"));
    let rs = [Recipient {
        handle: carol.handle.clone(),
        key: second,
        ephemeral: seed(0xe3),
    }];
    old.payload = Payload::Sealed(seal::seal(&old, &rs, seed(0xe4)).unwrap());
    add_unopenable(
        "replaced key: sealed at T0 to carol's second key, which her third replaced a day before",
        wire(&w, &old),
        carol,
        "key_not_valid",
    );
    // Hand-made content ciphertexts (the same HPKE sealing of the content key, SEAL-7).
    let hand = |plain: &[u8], padded_to: usize, n: u8| -> Envelope {
        let mut e = header(&w, MessageType::Message, &[nova], text("placeholder"));
        let rs = [Recipient {
            handle: nova.handle.clone(),
            key: nova.enc[0].public().unwrap(),
            ephemeral: seed(n),
        }];
        let ck = seed(n.wrapping_add(1));
        let mut sd = seal::seal(&e, &rs, ck).unwrap();
        let mut padded = plain.to_vec();
        padded.resize(padded_to, 0);
        use chacha20poly1305::aead::{Aead as _, KeyInit as _};
        let aad = seal::routing_aad(&e);
        sd.ct = chacha20poly1305::ChaCha20Poly1305::new((&ck).into())
            .encrypt(
                &[0u8; 12].into(),
                chacha20poly1305::aead::Payload {
                    msg: &padded,
                    aad: &aad,
                },
            )
            .unwrap();
        e.payload = Payload::Sealed(sd);
        e
    };
    add_unopenable(
        "bad padding: no 0x80 marker after the plaintext",
        wire(&w, &hand(br#"{"text":"hi"}"#, 256, 0xe5)),
        nova,
        "bad_padding",
    );
    add_unopenable(
        "bad padding: a 20-byte plaintext padded to 288 bytes instead of 256",
        wire(&w, &hand(b"{\"text\":\"abcdefghi\"}\x80", 288, 0xe7)),
        nova,
        "bad_padding",
    );
    add_unopenable(
        "bad plaintext: not valid for the type (a message without text)",
        wire(&w, &hand(b"{\"txt\":\"hi\"}\x80", 256, 0xe9)),
        nova,
        "bad_plaintext",
    );
    add_unopenable(
        "bad plaintext: not canonical (a space)",
        wire(&w, &hand(b"{\"text\": \"hi\"}\x80", 256, 0xeb)),
        nova,
        "bad_plaintext",
    );

    // Envelopes relays refuse (SEAL-1, SEAL-2, SEAL-4, ENC-6, SEAL-6).
    let mut invalid = Vec::new();
    let mut add_invalid = |comment: &str, input: String, code: &str, field: &str| {
        let err =
            SignedEnvelope::parse(input.as_bytes(), &EnvelopeLimits::default()).expect_err(comment);
        assert_eq!(err.code().as_str(), code, "{comment}: {err}");
        assert_eq!(
            common::envelope_error_field(&err),
            Some(field),
            "{comment}: {err}"
        );
        invalid.push(obj(&[
            ("comment", s(comment)),
            ("input", s(&input)),
            ("error", s(code)),
            ("field", s(field)),
        ]));
    };
    let two = sealed(
        &w,
        &header(&w, MessageType::Message, &[nova, bob], text("hi")),
        false,
        11,
    );
    add_invalid(
        "truncated content ciphertext: one byte short of a size bucket and its tag",
        sign_raw(
            &w,
            edit_sealed(&base, |sd| {
                let ct = seal::decode_b64(sd.get("ct").unwrap().as_str().unwrap()).unwrap();
                sd.insert("ct", seal::encode_b64(&ct[..ct.len() - 1]).into());
            }),
        ),
        "invalid_field",
        "payload.sealed.ct",
    );
    add_invalid(
        "content ciphertext shorter than the smallest bucket",
        sign_raw(
            &w,
            edit_sealed(&base, |sd| {
                sd.insert("ct", seal::encode_b64(&[0u8; 100]).into());
            }),
        ),
        "invalid_field",
        "payload.sealed.ct",
    );
    add_invalid(
        "content ciphertext with base64 padding",
        sign_raw(
            &w,
            edit_sealed(&base, |sd| {
                let ct = sd.get("ct").unwrap().as_str().unwrap().to_owned();
                sd.insert("ct", format!("{ct}==").into());
            }),
        ),
        "invalid_field",
        "payload.sealed.ct",
    );
    add_invalid(
        "content ciphertext in the standard (not url) alphabet",
        sign_raw(
            &w,
            edit_sealed(&base, |sd| {
                let ct = sd.get("ct").unwrap().as_str().unwrap();
                let std = format!("+{}", &ct[1..]);
                sd.insert("ct", std.into());
            }),
        ),
        "invalid_field",
        "payload.sealed.ct",
    );
    add_invalid(
        "content ciphertext with non-zero bits after the last byte (not canonical base64url)",
        sign_raw(
            &w,
            edit_sealed(&base, |sd| {
                // 272 bytes encode to 363 characters, whose last carries 4 unused bits.
                let enc = seal::encode_b64(&[0u8; 272]);
                let mut c: Vec<char> = enc.chars().collect();
                *c.last_mut().unwrap() = 'B';
                sd.insert("ct", c.into_iter().collect::<String>().into());
            }),
        ),
        "invalid_field",
        "payload.sealed.ct",
    );
    add_invalid(
        "one sealed key for two recipients",
        sign_raw(
            &w,
            edit_sealed(&two, |sd| {
                keys_mut(sd).truncate(1);
            }),
        ),
        "invalid_field",
        "payload.sealed.keys",
    );
    add_invalid(
        "sealed keys not in the order of to",
        sign_raw(
            &w,
            edit_sealed(&two, |sd| {
                keys_mut(sd).swap(0, 1);
            }),
        ),
        "invalid_field",
        "payload.sealed.keys[0].to",
    );
    add_invalid(
        "an extra sealed key for someone other than the sender",
        sign_raw(
            &w,
            edit_sealed(&base, |sd| {
                let mut extra = keys_mut(sd)[0].clone();
                if let Value::Object(o) = &mut extra {
                    o.insert("to", s(carol.handle.as_str()));
                }
                keys_mut(sd).push(extra);
            }),
        ),
        "invalid_field",
        "payload.sealed.keys[1].to",
    );
    add_invalid(
        "an unknown suite",
        sign_raw(
            &w,
            edit_sealed(&base, |sd| {
                sd.insert("suite", s("x25519-hkdf-sha256-aes128gcm"));
            }),
        ),
        "invalid_field",
        "payload.sealed.suite",
    );
    add_invalid(
        "no keys member",
        sign_raw(
            &w,
            edit_sealed(&base, |sd| {
                sd.remove("keys");
            }),
        ),
        "missing_field",
        "payload.sealed.keys",
    );
    add_invalid(
        "a sealed key 47 bytes long",
        sign_raw(
            &w,
            edit_sealed(&base, |sd| {
                if let Value::Object(o) = &mut keys_mut(sd)[0] {
                    let x = o.get("wrapped").unwrap().as_str().unwrap()[2..].to_owned();
                    o.insert("wrapped", x.into());
                }
            }),
        ),
        "invalid_field",
        "payload.sealed.keys[0].wrapped",
    );
    add_invalid(
        "an encapsulated key in upper-case hex",
        sign_raw(
            &w,
            edit_sealed(&base, |sd| {
                if let Value::Object(o) = &mut keys_mut(sd)[0] {
                    let x = o.get("enc").unwrap().as_str().unwrap().to_uppercase();
                    o.insert("enc", x.into());
                }
            }),
        ),
        "invalid_field",
        "payload.sealed.keys[0].enc",
    );
    add_invalid(
        "a key id of 30 hex characters",
        sign_raw(
            &w,
            edit_sealed(&base, |sd| {
                if let Value::Object(o) = &mut keys_mut(sd)[0] {
                    o.insert("kid", s(&"ab".repeat(15)));
                }
            }),
        ),
        "invalid_field",
        "payload.sealed.keys[0].kid",
    );
    add_invalid(
        "an unknown member in a sealed key",
        sign_raw(
            &w,
            edit_sealed(&base, |sd| {
                if let Value::Object(o) = &mut keys_mut(sd)[0] {
                    o.insert("note", s("x"));
                }
            }),
        ),
        "unknown_field",
        "payload.sealed.keys[0].note",
    );
    add_invalid(
        "an unknown member in the sealed object",
        sign_raw(
            &w,
            edit_sealed(&base, |sd| {
                sd.insert("hint", s("x"));
            }),
        ),
        "unknown_field",
        "payload.sealed.hint",
    );
    let mut v = base.to_value();
    if let Value::Object(o) = &mut v {
        if let Some(Value::Object(p)) = o.get_mut("payload") {
            p.insert("text", s("in the clear"));
        }
    }
    add_invalid(
        "a plaintext member next to sealed",
        sign_raw(&w, v),
        "unknown_field",
        "payload.text",
    );
    let mut ack = header(
        &w,
        MessageType::Ack,
        &[nova],
        Payload::Ack {
            msg: MessageId([1; 32]),
            status: formica_protocol::AckStatus::Received,
            reason: None,
        },
    )
    .to_value();
    if let Value::Object(o) = &mut ack {
        o.insert("payload", base_sd.to_payload_value());
    }
    add_invalid(
        "an ack cannot be sealed: relays read it",
        sign_raw(&w, ack),
        "invalid_field",
        "payload.sealed",
    );
    let mut cr = header(&w, MessageType::ContactRequest, &[nova], text("x")).to_value();
    if let Value::Object(o) = &mut cr {
        o.insert("payload", base_sd.to_payload_value());
    }
    add_invalid(
        "a contact request cannot be sealed",
        sign_raw(&w, cr),
        "invalid_field",
        "payload.sealed",
    );
    let mut unsealed_tr = tr.clone();
    unsealed_tr.corr = None;
    unsealed_tr.msg_type = MessageType::TaskResult;
    let tr_sealed = sealed(&w, &tr, false, 12);
    let mut v = tr_sealed.to_value();
    if let Value::Object(o) = &mut v {
        o.insert("type", s("task_result"));
        o.remove("corr");
        o.remove("ack_by");
    }
    add_invalid(
        "a sealed task result still needs corr",
        sign_raw(&w, v),
        "missing_field",
        "corr",
    );

    obj(&[
        (
            "comment",
            s("Sealed payloads (SPEC.md section 20) and encryption keys in key logs (LOG-16). `agents`: each agent's key log (with its enc entries) and its encryption secret keys. `valid`: envelopes relays accept and each listed recipient opens to `payload` (`aad` is the SEAL-5 routing hash, `padded_bytes` the SEAL-6 bucket). `unopenable`: envelopes relays accept (the structure is valid) that `recipient` cannot open, with the SEAL-11 reason. `invalid`: envelopes relays refuse, with the code and field. `keylogs_valid` / `keylogs_invalid`: logs with enc entries, their encryption keys' validity, and the refusals."),
        ),
        ("suite", s(seal::SUITE)),
        ("hpke_info_hex", s(&hex::encode(seal::HPKE_INFO))),
        (
            "agents",
            arr([alice, nova, bob, carol].iter().map(|a| a.to_value()).collect()),
        ),
        ("padding", padding_cases()),
        ("valid", arr(valid)),
        ("unopenable", arr(unopenable)),
        ("invalid", arr(invalid)),
        ("keylogs_valid", keylogs_valid(&w)),
        ("keylogs_invalid", keylogs_invalid()),
    ])
}

fn padding_cases() -> Value {
    let ns = [
        1usize, 13, 255, 256, 257, 300, 511, 512, 513, 1000, 1025, 4097, 9999, 16385, 24000, 32769,
    ];
    arr(ns
        .iter()
        .map(|n| arr(vec![i(*n as i64), i(seal::padded_len(*n) as i64)]))
        .collect())
}

/// Which key is valid at which time, for each enc key of a log.
fn enc_queries(log: &KeyLog, times: &[i64]) -> Value {
    let mut qs = Vec::new();
    for p in log.enc_periods() {
        for t in times {
            let got = log
                .enc_key_at(&p.key.key_id(), *t)
                .map_or_else(|e| e.word(), |_| "valid");
            qs.push(obj(&[
                ("kid", s(&p.key.key_id().to_hex())),
                ("ts", i(*t)),
                ("result", s(got)),
            ]));
        }
    }
    let current: Vec<Value> = times
        .iter()
        .map(|t| {
            obj(&[
                ("ts", i(*t)),
                (
                    "kid",
                    log.enc_key_current(*t)
                        .map(|p| s(&p.key.key_id().to_hex()))
                        .unwrap_or(Value::Null),
                ),
            ])
        })
        .collect();
    obj(&[("queries", arr(qs)), ("current", arr(current))])
}

fn keylogs_valid(w: &World) -> Value {
    let times = [
        T0 - 9 * DAY - 1,
        T0 - 9 * DAY,
        T0 - 5 * DAY,
        T0 - 2 * DAY,
        T0,
        T0 + 90 * DAY,
    ];
    let mut out = Vec::new();
    let mut add = |comment: &str, a: &Agent| {
        let log = a.log();
        out.push(obj(&[
            ("comment", s(comment)),
            (
                "entries",
                arr(a.entries.iter().map(|e| e.value().clone()).collect()),
            ),
            ("head", s(&log.head().hash().to_hex())),
            ("enc", enc_queries(&log, &times)),
        ]));
    };
    add("register, then one encryption key for 99 days", &w.nova);
    add(
        "three encryption keys: the first expires, the second is replaced by the third",
        &w.carol,
    );
    // A rotation keeps the encryption key; a revoke ends it.
    let mut dan = Agent::new("@dan@relay-a.example", 0x11);
    dan.publish(0x12, T0 - 9 * DAY, T0 + 90 * DAY);
    let k2 = SecretKey::from_seed(&seed(0x13));
    let head = dan.entries.last().unwrap();
    let rot = KeyLogEntry {
        handle: dan.handle.clone(),
        seq: 2,
        prev: Some(head.hash()),
        ts: T0 - 3 * DAY,
        op: KeyOp::Rotate { key: k2.public() },
        signer: dan.sk.public().key_id(),
    }
    .sign(&dan.sk, &[&k2])
    .unwrap();
    dan.entries.push(rot);
    dan.sk = k2;
    dan.push(T0 - DAY, KeyOp::Revoke);
    add("a rotate keeps the encryption key, a revoke ends it", &dan);
    // A recover ends the encryption key; the recovered key publishes the next one. A key that a
    // later entry ends exactly at its `expires` still expired (LOG-16); a move ends the last.
    let mut fay = Agent::new("@fay@relay-a.example", 0x18);
    let rec = SecretKey::from_seed(&seed(0x19));
    let reg = KeyLogEntry {
        handle: fay.handle.clone(),
        seq: 0,
        prev: None,
        ts: T0 - 10 * DAY,
        op: KeyOp::Register {
            key: fay.sk.public(),
            recovery: Some(rec.public()),
        },
        signer: fay.sk.public().key_id(),
    }
    .sign(&fay.sk, &[&rec])
    .unwrap();
    fay.entries = vec![reg];
    fay.publish(0x1a, T0 - 9 * DAY, T0 + 90 * DAY);
    let new_key = SecretKey::from_seed(&seed(0x1b));
    let head = fay.entries.last().unwrap();
    let recover = KeyLogEntry {
        handle: fay.handle.clone(),
        seq: 2,
        prev: Some(head.hash()),
        ts: T0 - 5 * DAY,
        op: KeyOp::Recover {
            key: new_key.public(),
            recovery: None,
        },
        signer: rec.public().key_id(),
    }
    .sign(&rec, &[&new_key])
    .unwrap();
    fay.entries.push(recover);
    fay.sk = new_key;
    fay.publish(0x1c, T0 - 2 * DAY, T0);
    fay.publish(0x1d, T0, T0 + 90 * DAY);
    fay.push(
        T0 + 5 * DAY,
        KeyOp::Move {
            to: h("@fay@relay-b.example"),
        },
    );
    add(
        "a recover ends the encryption key, the next ends at the very expires of its key (still key_expired), a move ends the last",
        &fay,
    );
    arr(out)
}

fn keylogs_invalid() -> Value {
    let mut out = Vec::new();
    let mut add = |comment: &str, entries: Vec<Value>, code: &str| {
        let parsed: Result<Vec<_>, _> = entries
            .iter()
            .map(|e| SignedKeyLogEntry::from_value(e.clone()))
            .collect();
        let got = parsed
            .and_then(KeyLog::verify)
            .map(|_| ())
            .expect_err(comment);
        assert_eq!(got.code().as_str(), code, "{comment}: {got}");
        out.push(obj(&[
            ("comment", s(comment)),
            ("entries", arr(entries)),
            ("error", s(code)),
        ]));
    };
    let a = Agent::new("@erin@relay-a.example", 0x15);
    let enc_ok = EncSecretKey::derive(&seed(0x16)).public().unwrap();
    // An enc entry as a value, signed by `signer`, with `edit` applied before signing.
    let raw = |signer: &SecretKey, edit: &dyn Fn(&mut Object)| -> Vec<Value> {
        let head = a.entries.last().unwrap();
        let e = KeyLogEntry {
            handle: a.handle.clone(),
            seq: 1,
            prev: Some(head.hash()),
            ts: T0,
            op: KeyOp::Enc {
                enc: enc_ok,
                expires: T0 + DAY,
            },
            signer: signer.public().key_id(),
        };
        let mut v = e.to_value();
        if let Value::Object(o) = &mut v {
            edit(o);
        }
        let sig = signer.sign(Domain::KeyLog, &canonicalize(&v));
        if let Value::Object(o) = &mut v {
            o.insert("sig", sig.to_hex().into());
        }
        vec![head.value().clone(), v]
    };
    let sk = a.sk.clone();
    add(
        "an all-zero encryption key (small order)",
        raw(&sk, &|o| {
            o.insert("enc", s(&"00".repeat(32)));
        }),
        "weak_key",
    );
    let mut one = [0u8; 32];
    one[0] = 1;
    add(
        "the encryption key u = 1 (small order)",
        raw(&sk, &|o| {
            o.insert("enc", s(&hex::encode(&one)));
        }),
        "weak_key",
    );
    let mut top = [0u8; 32];
    top[31] = 0x80;
    add(
        "the all-zero key with the top bit set (X25519 ignores that bit: small order)",
        raw(&sk, &|o| {
            o.insert("enc", s(&hex::encode(&top)));
        }),
        "weak_key",
    );
    add(
        "an encryption key of 62 hex characters",
        raw(&sk, &|o| {
            o.insert("enc", s(&"ab".repeat(31)));
        }),
        "invalid_key",
    );
    add(
        "expires at the entry's ts",
        raw(&sk, &|o| {
            o.insert("expires", i(T0));
        }),
        "invalid_field",
    );
    add(
        "expires more than 366 days after the entry's ts",
        raw(&sk, &|o| {
            o.insert("expires", i(T0 + seal::ENC_KEY_LIFETIME_MAX_MS + 1));
        }),
        "invalid_field",
    );
    add(
        "no expires",
        raw(&sk, &|o| {
            o.remove("expires");
        }),
        "missing_field",
    );
    add(
        "a proof of possession on an enc entry",
        raw(&sk, &|o| {
            o.insert("key_sig", s(&"00".repeat(64)));
        }),
        "unknown_field",
    );
    let stranger = SecretKey::from_seed(&seed(0x17));
    add(
        "an enc entry signed by a key that is not the current key",
        raw(&stranger, &|_| {}),
        "keylog_unauthorized_signer",
    );
    // The same encryption key published twice.
    // Entries appended with `Agent::push` (signed by the agent's key, checked by nothing) that
    // a verifier refuses: the same key twice, an enc entry after a revoke and after a move.
    let enc_op = |expires: i64| KeyOp::Enc {
        enc: enc_ok,
        expires,
    };
    let mut twice = Agent::new("@erin@relay-a.example", 0x15);
    twice.publish(0x16, T0, T0 + DAY);
    twice.push(T0 + 1, enc_op(T0 + 2 * DAY));
    add(
        "the same encryption key published twice",
        twice.values(),
        "keylog_key_reused",
    );
    let mut revoked = Agent::new("@erin@relay-a.example", 0x15);
    revoked.push(T0, KeyOp::Revoke);
    revoked.push(T0 + 1, enc_op(T0 + DAY));
    add(
        "an enc entry after a revoke (no current key)",
        revoked.values(),
        "keylog_unauthorized_signer",
    );
    let mut moved = Agent::new("@erin@relay-a.example", 0x15);
    moved.push(
        T0,
        KeyOp::Move {
            to: h("@erin@relay-b.example"),
        },
    );
    moved.push(T0 + 1, enc_op(T0 + DAY));
    add("an enc entry after a move", moved.values(), "keylog_closed");
    arr(out)
}

#[test]
fn sealed_vector_file_is_current() {
    let content = to_pretty(&gen_sealed()) + "\n";
    let path = common::vectors_dir().join("sealed.json");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    if on_disk != content {
        if std::env::var_os("UPDATE_VECTORS").is_some() {
            std::fs::write(&path, content).unwrap();
        } else {
            panic!("vectors/sealed.json differs from the generator; run UPDATE_VECTORS=1 cargo test -p formica-protocol --test seal and review the diff");
        }
    }
}

// ---------------------------------------------------------------- checking the file

struct FileAgent {
    log: KeyLog,
    secrets: BTreeMap<KeyId, EncSecretKey>,
}

fn file_agents(file: &Value) -> BTreeMap<String, FileAgent> {
    let mut out = BTreeMap::new();
    for a in file.list("agents") {
        let entries: Vec<SignedKeyLogEntry> = a
            .list("log")
            .iter()
            .map(|e| SignedKeyLogEntry::from_value(e.clone()).unwrap())
            .collect();
        let log = KeyLog::verify(entries).unwrap();
        let mut secrets = BTreeMap::new();
        for k in a.list("enc_secrets") {
            let sk = EncSecretKey::from_bytes(&hex::decode_array(k.str_("secret")).unwrap());
            let pk = sk.public().unwrap();
            assert_eq!(pk.to_hex(), k.str_("public"));
            assert_eq!(pk.key_id().to_hex(), k.str_("kid"));
            secrets.insert(pk.key_id(), sk);
        }
        out.insert(a.str_("handle").to_owned(), FileAgent { log, secrets });
    }
    out
}

fn parse(input: &str) -> Result<SignedEnvelope, EnvelopeError> {
    SignedEnvelope::parse(input.as_bytes(), &EnvelopeLimits::default())
}

#[test]
fn sealed_vectors_from_the_file() {
    let file = load("sealed.json");
    let agents = file_agents(&file);
    for p in file.list("padding") {
        let p = p.as_array().unwrap();
        let n = p[0].as_i64().unwrap() as usize;
        assert_eq!(seal::padded_len(n), p[1].as_i64().unwrap() as usize, "{n}");
    }
    for case in file.list("valid") {
        let comment = case.str_("comment");
        let se = parse(case.str_("input")).unwrap_or_else(|e| panic!("{comment}: {e}"));
        let env = se.envelope();
        assert_eq!(
            hex::encode(&seal::routing_aad(env)),
            case.str_("aad"),
            "{comment}"
        );
        let Payload::Sealed(sd) = &env.payload else {
            panic!("{comment}: not sealed")
        };
        assert_eq!(
            (sd.ct.len() - 16) as i64,
            case.get("padded_bytes").as_i64().unwrap()
        );
        for o in case.list("opens") {
            let who = o.str_("recipient");
            let a = &agents[who];
            let p = seal::open(env, &h(who), &a.log, |kid| a.secrets.get(kid).cloned())
                .unwrap_or_else(|e| panic!("{comment}: {who}: {e}"));
            assert_eq!(
                canonicalize(&p.to_value()),
                canonicalize(o.get("payload")),
                "{comment}"
            );
        }
    }
    for case in file.list("unopenable") {
        let comment = case.str_("comment");
        let se = parse(case.str_("input")).unwrap_or_else(|e| panic!("{comment}: {e}"));
        let who = case.str_("recipient");
        let a = &agents[who];
        let err = seal::open(se.envelope(), &h(who), &a.log, |kid| {
            a.secrets.get(kid).cloned()
        })
        .expect_err(comment);
        assert_eq!(err.reason(), case.str_("reason"), "{comment}: {err}");
    }
    for case in file.list("invalid") {
        let comment = case.str_("comment");
        let err = parse(case.str_("input")).expect_err(comment);
        assert_eq!(err.code().as_str(), case.str_("error"), "{comment}: {err}");
        assert_eq!(
            common::envelope_error_field(&err),
            Some(case.str_("field")),
            "{comment}"
        );
    }
    for case in file.list("keylogs_valid") {
        let comment = case.str_("comment");
        let entries: Vec<SignedKeyLogEntry> = case
            .list("entries")
            .iter()
            .map(|e| SignedKeyLogEntry::from_value(e.clone()).unwrap())
            .collect();
        let log = KeyLog::verify(entries).unwrap_or_else(|e| panic!("{comment}: {e}"));
        assert_eq!(log.head().hash().to_hex(), case.str_("head"));
        let want = case.get("enc");
        for q in want.list("queries") {
            let kid = KeyId::parse_hex(q.str_("kid")).unwrap();
            let ts = q.get("ts").as_i64().unwrap();
            let got = log
                .enc_key_at(&kid, ts)
                .map_or_else(|e| e.word(), |_| "valid");
            assert_eq!(got, q.str_("result"), "{comment}: {kid} at {ts}");
        }
        for c in want.list("current") {
            let ts = c.get("ts").as_i64().unwrap();
            let got = log.enc_key_current(ts).map(|p| p.key.key_id().to_hex());
            assert_eq!(
                got.as_deref(),
                c.get("kid").as_str(),
                "{comment}: current at {ts}"
            );
        }
    }
    for case in file.list("keylogs_invalid") {
        let comment = case.str_("comment");
        let parsed: Result<Vec<_>, _> = case
            .list("entries")
            .iter()
            .map(|e| SignedKeyLogEntry::from_value(e.clone()))
            .collect();
        let err = parsed
            .and_then(KeyLog::verify)
            .map(|_| ())
            .expect_err(comment);
        assert_eq!(err.code().as_str(), case.str_("error"), "{comment}: {err}");
    }
}

#[test]
fn seal_refuses_what_it_cannot_seal() {
    let w = world();
    let ack = header(
        &w,
        MessageType::Ack,
        &[&w.nova],
        Payload::Ack {
            msg: MessageId([1; 32]),
            status: formica_protocol::AckStatus::Received,
            reason: None,
        },
    );
    let r = [Recipient {
        handle: w.nova.handle.clone(),
        key: w.nova.enc[0].public().unwrap(),
        ephemeral: seed(1),
    }];
    assert!(matches!(
        seal::seal(&ack, &r, seed(2)),
        Err(seal::SealError::NotSealable(_))
    ));
    // Recipients not in the order of `to` are refused before anything is returned.
    let two = header(&w, MessageType::Message, &[&w.nova, &w.bob], text("x"));
    let wrong = [
        Recipient {
            handle: w.bob.handle.clone(),
            key: w.bob.enc[0].public().unwrap(),
            ephemeral: seed(3),
        },
        r[0].clone(),
    ];
    assert!(matches!(
        seal::seal(&two, &wrong, seed(4)),
        Err(seal::SealError::Addressing(_))
    ));
    // Weak keys never parse.
    assert!(EncPublicKey::parse_hex(&"00".repeat(32)).is_err());
}
