//! Strict signature verification (SIG-3), class by class after the edge cases of
//! ed25519-speccheck ("Taming the many EdDSAs", `vectors/external/ed25519-speccheck/`, the
//! cases of `ed25519.json`). Each signature class that strict verification refuses, but that a
//! laxer rule (S reduced mod l, R compared as a point, the cofactored equation) accepts, is
//! forged with the suite's own key and tried where a relay verifies an agent's signature: on an
//! envelope (ENV-17, INGEST step 9: `bad_signature`), on key log entries (a registration, REG-1
//! step 10, and a rotate, API-6 step 10: `bad_signature`) and on an authenticated request
//! (AUTH-4: `unauthorized`). The key classes (small-order, non-canonical and mixed-order A) can
//! only be reached where the sender chooses the key, in key log entries: a small-order key is
//! `weak_key`, a non-canonical encoding `invalid_key` (KEY-2), and a mixed-order key is a valid
//! key whose signatures must satisfy the cofactorless equation.

use super::*;
use crate::case::{case, Env};
use crate::http::Body;
use crate::target::{random_key, random_nonce};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use formica_protocol::auth::{request_signing_input, RequestTarget};
use formica_protocol::{PublicKey, SecretKey};
use rand::RngCore;
use sha2::{Digest, Sha512};

/// The group order l, little-endian.
pub const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// A point of order 8: the public key of ed25519-speccheck cases 0 and 1.
const TORSION_8: &str = "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa";

/// The signature classes that strict verification refuses (SIG-3 items 1, 2 and 4).
#[derive(Debug, Clone, Copy)]
enum Class {
    /// S + l: a non-canonical scalar, S >= l (speccheck case 6).
    SPlusL,
    /// S + 8l: far above l, the top bit set (speccheck case 7).
    SFarAboveL,
    /// R the identity and S = k·a: the cofactorless equation holds (speccheck cases 0-2).
    SmallOrderR,
    /// R a non-canonical encoding of the identity (x = 0 with the sign bit set) and S = k·a:
    /// [S]B - [k]A equals the decoded R (speccheck cases 8, 9).
    NonCanonicalR,
    /// R = rB + T with T of order 8 and S = r + k·a: only the cofactored equation holds
    /// (speccheck cases 4, 5).
    MixedOrderR,
}

const CLASSES: [Class; 5] = [
    Class::SPlusL,
    Class::SFarAboveL,
    Class::SmallOrderR,
    Class::NonCanonicalR,
    Class::MixedOrderR,
];

impl Class {
    fn slug(self) -> &'static str {
        match self {
            Class::SPlusL => "s-plus-l",
            Class::SFarAboveL => "s-far-above-l",
            Class::SmallOrderR => "small-order-r",
            Class::NonCanonicalR => "noncanonical-r",
            Class::MixedOrderR => "mixed-order-r",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Class::SPlusL => "a signature with S + l (a non-canonical scalar, S >= l)",
            Class::SFarAboveL => "a signature with S + 8l (far above l, the top bit set)",
            Class::SmallOrderR => "a signature whose R is the identity (valid for cofactorless non-strict verification)",
            Class::NonCanonicalR => "a signature whose R is a non-canonical encoding of the identity (valid for a verifier that compares R as a point)",
            Class::MixedOrderR => "a signature whose R has a small-order component (valid only for the cofactored equation)",
        }
    }

    /// A signature of this class by `sk` over `input`, checked to be one that only strict
    /// verification refuses (else the case would prove nothing).
    fn forge(self, sk: &SecretKey, input: &[u8]) -> R<[u8; 64]> {
        let a = secret_scalar(sk);
        let pk = sk.public().to_bytes();
        let big_a = a * curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
        let sig = match self {
            Class::SPlusL | Class::SFarAboveL => {
                let mut sig = sk.sign_input(input).0;
                let times = if matches!(self, Class::SPlusL) { 1 } else { 8 };
                for _ in 0..times {
                    add_l(&mut sig[32..]);
                }
                ensure!(
                    matches!(self, Class::SPlusL) || sig[63] & 0x80 != 0,
                    "suite bug: S + 8l does not set the top bit"
                );
                sig
            }
            Class::SmallOrderR | Class::NonCanonicalR => {
                let mut r = [0u8; 32];
                r[0] = 1;
                if matches!(self, Class::NonCanonicalR) {
                    r[31] = 0x80;
                }
                let k = challenge(&r, &pk, input);
                let sig = join(&r, &(k * a));
                let decoded = CompressedEdwardsY(r)
                    .decompress()
                    .ok_or_else(|| Stop::Fail("suite bug: R does not decode".into()))?;
                ensure!(
                    decoded.is_identity()
                        && EdwardsPoint::vartime_double_scalar_mul_basepoint(&-k, &big_a, &(k * a))
                            == decoded,
                    "suite bug: [S]B - [k]A is not the decoded R"
                );
                sig
            }
            Class::MixedOrderR => {
                let r = random_scalar();
                let big_r = EdwardsPoint::mul_base(&r) + torsion_8()?;
                let r_enc = big_r.compress().to_bytes();
                let k = challenge(&r_enc, &pk, input);
                let s = r + k * a;
                let lhs = EdwardsPoint::vartime_double_scalar_mul_basepoint(&-k, &big_a, &s);
                ensure!(
                    (lhs - big_r).mul_by_cofactor().is_identity() && lhs != big_r,
                    "suite bug: the mixed-order R does not satisfy only the cofactored equation"
                );
                join(&r_enc, &s)
            }
        };
        ensure!(
            !strict_accepts(&pk, input, &sig),
            "suite bug: the {} forgery passes strict verification",
            self.slug()
        );
        Ok(sig)
    }
}

/// Adds l to the little-endian 32-byte number `s` (the carry out of the top byte is dropped;
/// callers keep the sum below 2^256).
pub fn add_l(s: &mut [u8]) {
    let mut carry = 0u16;
    for (x, l) in s.iter_mut().zip(L) {
        let v = u16::from(*x) + u16::from(l) + carry;
        *x = (v & 0xff) as u8;
        carry = v >> 8;
    }
}

/// The secret scalar a of RFC 8032 5.1.5: the clamped first half of SHA-512(seed).
fn secret_scalar(sk: &SecretKey) -> Scalar {
    let h = Sha512::digest(sk.seed());
    let mut a = [0u8; 32];
    a.copy_from_slice(&h[..32]);
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    Scalar::from_bytes_mod_order(a)
}

/// k = SHA-512(R || A || M) mod l.
fn challenge(r: &[u8; 32], a: &[u8; 32], m: &[u8]) -> Scalar {
    let mut h = Sha512::new();
    h.update(r);
    h.update(a);
    h.update(m);
    Scalar::from_hash(h)
}

fn random_scalar() -> Scalar {
    let mut w = [0u8; 64];
    rand::rngs::OsRng.fill_bytes(&mut w);
    Scalar::from_bytes_mod_order_wide(&w)
}

fn join(r: &[u8; 32], s: &Scalar) -> [u8; 64] {
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(r);
    sig[32..].copy_from_slice(&s.to_bytes());
    sig
}

fn torsion_8() -> R<EdwardsPoint> {
    let t = formica_protocol::hex::decode_array::<32>(TORSION_8)
        .and_then(|b| CompressedEdwardsY(b).decompress())
        .ok_or_else(|| Stop::Fail("suite bug: the torsion point does not decode".into()))?;
    ensure!(
        t.is_small_order() && !(Scalar::from(4u8) * t).is_identity(),
        "suite bug: the torsion point is not of order 8"
    );
    Ok(t)
}

/// ed25519-dalek's `verify_strict`, the reference semantics of SIG-3.
fn strict_accepts(pk: &[u8; 32], input: &[u8], sig: &[u8; 64]) -> bool {
    ed25519_dalek::VerifyingKey::from_bytes(pk).is_ok_and(|vk| {
        vk.verify_strict(input, &ed25519_dalek::Signature::from_bytes(sig))
            .is_ok()
    })
}

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    let mut v = Vec::new();
    for c in CLASSES {
        v.push(
            case(
                format!("sig.{}", c.slug()),
                &["SIG-3", "ENV-17"],
                format!("{} on an envelope is bad_signature", c.what()),
                move |e| on_envelope(e, c),
            )
            .codes(&[E::BadSignature]),
        );
    }
    for c in CLASSES {
        v.push(
            case(
                format!("sig.keylog.{}", c.slug()),
                &["SIG-3", "LOG-10", "REG-1", "API-6"],
                format!(
                    "{} on a register entry and on a rotate entry is bad_signature",
                    c.what()
                ),
                move |e| on_keylog(e, c),
            )
            .codes(&[E::BadSignature]),
        );
    }
    for c in CLASSES {
        v.push(
            case(
                format!("sig.auth.{}", c.slug()),
                &["SIG-3", "AUTH-4"],
                format!(
                    "{} in an Authorization: Formica header is unauthorized",
                    c.what()
                ),
                move |e| on_request(e, c),
            )
            .codes(&[E::Unauthorized]),
        );
    }
    v.push(case("sig.keylog.small-order-a", &["KEY-2", "SIG-3", "REG-1", "API-6"], "each of the eight small-order points, canonically encoded, is weak_key as a registered key and as a rotate's new key", small_order_a).codes(&[E::WeakKey]));
    v.push(case("sig.keylog.noncanonical-a", &["KEY-2", "ENC-1", "REG-1", "API-6"], "every non-canonical encoding of a curve point (y >= p, or x = 0 with the sign bit) is invalid_key as a registered key and as a rotate's new key", noncanonical_a).codes(&[E::InvalidKey]));
    v.push(case("sig.keylog.mixed-order-a", &["KEY-2", "SIG-3", "LOG-10", "REG-1"], "a key with a small-order component is a valid key: its register entry is bad_signature when only the cofactored equation holds, and passes the signature check when the cofactorless one does (speccheck case 3)", mixed_order_a).codes(&[E::BadSignature, E::ChallengeUnknown]));
    v
}

fn signer(e: &Env<'_>) -> R<std::sync::Arc<Agent>> {
    e.fixture("sig-agent", |t| t.register("sig"))
}

fn on_envelope(e: &Env<'_>, c: Class) -> R {
    let t = e.t;
    let a = signer(e)?;
    let sg = t.sign(&t.envelope(&a, "message", &[&a.handle], text(t)), &a.key);
    let sig = c.forge(&a.key, &sg.signing_input)?;
    refuse(
        t,
        &with_sig(&sg, &formica_protocol::hex::encode(&sig)),
        ErrorCode::BadSignature,
    )?;
    Ok(())
}

/// A signed key log entry's value with its `sig` replaced.
fn entry_with_sig(entry: &formica_protocol::SignedKeyLogEntry, sig: &[u8; 64]) -> Value {
    let mut v = entry.value().clone();
    if let Value::Object(o) = &mut v {
        o.insert("sig", s(&formica_protocol::hex::encode(sig)));
    }
    v
}

/// A rotate of `a`'s log to a fresh key, signed by `a`'s key: every one is refused, so the
/// shared agent's log stays at its register entry.
fn rotate(t: &Target, a: &Agent) -> R<formica_protocol::SignedKeyLogEntry> {
    super::keylog::rotate_fresh(a, 1, &a.head, t.now().max(a.reg_ts + 1), &a.key)
}

fn post_keys(t: &Target, a: &Agent, v: &Value) -> R<Resp> {
    t.http
        .post(&format!("/v1/keys/{}", a.handle), &canon::canonicalize(v))
}

fn on_keylog(e: &Env<'_>, c: Class) -> R {
    let t = e.t;
    // A registration: the register entry is signed by its own key (REG-1 step 10 comes before
    // the proof-of-work, so no proof is needed to reach it).
    let (h, k) = (t.fresh_handle("sigk"), random_key());
    let entry = t.register_entry(&h, &k, None, t.now(), &k)?;
    let sig = c.forge(&k, entry.signing_input())?;
    super::keylog::reg(t, &entry_with_sig(&entry, &sig))?.expect_error(ErrorCode::BadSignature)?;
    // A rotate posted to the key log endpoint (API-6 step 10).
    let a = signer(e)?;
    let entry = rotate(t, &a)?;
    let sig = c.forge(&a.key, entry.signing_input())?;
    post_keys(t, &a, &entry_with_sig(&entry, &sig))?.expect_error(ErrorCode::BadSignature)?;
    Ok(())
}

fn on_request(e: &Env<'_>, c: Class) -> R {
    let t = e.t;
    let a = signer(e)?;
    let path = "/v1/contacts";
    let (kid, ts, nonce) = (a.key.public().key_id(), t.now(), random_nonce());
    let input = request_signing_input(
        &a.handle,
        &kid,
        ts,
        &nonce,
        &RequestTarget {
            method: "GET",
            path,
            body: b"",
        },
        &t.host,
    );
    let sig = c.forge(&a.key, &input)?;
    let header = format!(
        "Formica handle={},key={},ts={ts},nonce={},sig={}",
        a.handle,
        kid.to_hex(),
        nonce.to_hex(),
        formica_protocol::hex::encode(&sig)
    );
    t.http
        .send("GET", path, &[("authorization", header)], Body::None)?
        .expect_error(ErrorCode::Unauthorized)?;
    Ok(())
}

/// Refuses `keys` with `code` in rotates of the shared agent's log, and the first `n_reg` of
/// them in registrations (which count against the per-IP limit).
fn refuse_keys(e: &Env<'_>, keys: &[[u8; 32]], n_reg: usize, code: ErrorCode) -> R {
    let t = e.t;
    let a = signer(e)?;
    for key in keys {
        let hex = formica_protocol::hex::encode(key);
        let v = super::keylog::with_member(rotate(t, &a)?.value(), "key", &s(&hex), &a.key)?;
        post_keys(t, &a, &v)?
            .expect_error(code)
            .map_err(|err| annotate(err, &hex))?;
    }
    for key in keys.iter().take(n_reg) {
        let hex = formica_protocol::hex::encode(key);
        let k = random_key();
        let entry = t.register_entry(&t.fresh_handle("sigw"), &k, None, t.now(), &k)?;
        let v = super::keylog::with_member(entry.value(), "key", &s(&hex), &k)?;
        super::keylog::reg(t, &v)?
            .expect_error(code)
            .map_err(|err| annotate(err, &hex))?;
    }
    Ok(())
}

fn annotate(err: Stop, key: &str) -> Stop {
    match err {
        Stop::Fail(m) => Stop::Fail(format!("key {key}: {m}")),
        other => other,
    }
}

fn small_order_a(e: &Env<'_>) -> R {
    let t8 = torsion_8()?;
    let mut p = EdwardsPoint::default();
    let mut keys = Vec::new();
    for _ in 0..8 {
        keys.push(p.compress().to_bytes());
        p += t8;
    }
    ensure!(
        keys.iter()
            .all(|k| PublicKey::parse_hex(&formica_protocol::hex::encode(k))
                .is_err_and(|err| err.code() == ErrorCode::WeakKey)),
        "suite bug: a torsion point is not a weak key to the protocol crate"
    );
    refuse_keys(e, &keys, 2, ErrorCode::WeakKey)
}

fn noncanonical_a(e: &Env<'_>) -> R {
    // p = 2^255 - 19; y = p + j for j in 0..=18 fits in 255 bits, with either sign bit; and
    // x = 0 (y = 1 or y = p - 1) with the sign bit set.
    let mut encodings = Vec::new();
    for j in 0u8..=18 {
        for sign in [0u8, 0x80] {
            let mut b = [0xffu8; 32];
            b[0] = 0xed + j;
            b[31] = 0x7f | sign;
            encodings.push(b);
        }
    }
    let mut one_neg = [0u8; 32];
    one_neg[0] = 1;
    one_neg[31] = 0x80;
    encodings.push(one_neg);
    let mut minus_one_neg = [0xffu8; 32];
    minus_one_neg[0] = 0xec;
    encodings.push(minus_one_neg);
    // Only the encodings that decode to a curve point are non-canonical encodings; the rest
    // are not points at all (also invalid_key, and covered elsewhere).
    let keys: Vec<[u8; 32]> = encodings
        .into_iter()
        .filter(|b| {
            CompressedEdwardsY(*b)
                .decompress()
                .is_some_and(|p| p.compress().to_bytes() != *b)
        })
        .collect();
    ensure!(
        keys.len() >= 2,
        "suite bug: fewer than two non-canonical point encodings found"
    );
    refuse_keys(e, &keys, 2, ErrorCode::InvalidKey)
}

/// A register entry for a fresh handle whose key is A = aB + T (T of order 8), signed with
/// S = r + k·a, R = rB, ground until `want(k)`: k a multiple of 8 makes [k]T vanish, so the
/// cofactorless equation holds; an odd k leaves [k]T, so only the cofactored one does.
fn mixed_register(t: &Target, want: fn(&Scalar) -> bool) -> R<Value> {
    let a = random_scalar();
    let big_a = EdwardsPoint::mul_base(&a) + torsion_8()?;
    let a_enc = big_a.compress().to_bytes();
    let key = PublicKey::parse_hex(&formica_protocol::hex::encode(&a_enc))
        .map_err(|err| Stop::Fail(format!("suite bug: a mixed-order key is refused: {err}")))?;
    let mut o = Object::new();
    o.insert("v", int(1));
    o.insert("handle", s(t.fresh_handle("sigm").as_str()));
    o.insert("seq", int(0));
    o.insert("ts", int(t.now()));
    o.insert("op", s("register"));
    o.insert("key", s(&key.to_hex()));
    o.insert("signer", s(&key.key_id().to_hex()));
    let mut input = Domain::KeyLog.tag().to_vec();
    canon::write_object(&o, None, &mut input);
    for _ in 0..256 {
        let r = random_scalar();
        let r_enc = EdwardsPoint::mul_base(&r).compress().to_bytes();
        let k = challenge(&r_enc, &a_enc, &input);
        if want(&k) {
            let sig = join(&r_enc, &(r + k * a));
            let lhs = EdwardsPoint::vartime_double_scalar_mul_basepoint(&-k, &big_a, &(r + k * a));
            ensure!(
                (lhs - EdwardsPoint::mul_base(&r))
                    .mul_by_cofactor()
                    .is_identity(),
                "suite bug: the mixed-order key's signature fails the cofactored equation"
            );
            ensure!(
                strict_accepts(&a_enc, &input, &sig) == (k.to_bytes()[0] & 7 == 0),
                "suite bug: strict verification of the mixed-order key's signature is not what [k]T predicts"
            );
            o.insert("sig", s(&formica_protocol::hex::encode(&sig)));
            return Ok(Value::Object(o));
        }
    }
    fail!("suite bug: no nonce gave the wanted k in 256 tries")
}

fn mixed_order_a(e: &Env<'_>) -> R {
    let t = e.t;
    let only_cofactored = mixed_register(t, |k| k.to_bytes()[0] & 1 == 1)?;
    super::keylog::reg(t, &only_cofactored)?.expect_error(ErrorCode::BadSignature)?;
    // The same kind of key with a signature that satisfies the cofactorless equation passes
    // the key and signature checks (REG-1 steps 5 and 10); the bogus proof's challenge is then
    // the first failure (step 12).
    let cofactorless = mixed_register(t, |k| k.to_bytes()[0] & 7 == 0)?;
    super::keylog::reg(t, &cofactorless)?.expect_error(ErrorCode::ChallengeUnknown)?;
    Ok(())
}
