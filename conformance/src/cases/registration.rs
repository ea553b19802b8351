//! Registration and proof-of-work: challenges (API-3, POW-1, POW-6), the register endpoint and
//! its order of checks (API-4, REG-1), the proof rules (POW-2..5, POW-7) including the
//! pow.json cases re-created against the relay, reserved names (HANDLE-6, HANDLE-7), key
//! validation (KEY-2, the ed25519.json key cases), and hex formats (ENC-1, ENC-2).
//!
//! Proofs that must fail are chosen deterministically: the suite searches for a nonce that
//! meets the difficulty under the wrong rule but not under the right one, so a relay that
//! implements the wrong rule accepts it and a conforming relay refuses it every time.

use super::*;
use crate::case::{case, Env};
use crate::target::{random_key, Issued};
use formica_protocol::keylog::KeyOp;
use formica_protocol::pow::{self, Challenge, PowProof};
use formica_protocol::{RelayHost, SecretKey};

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("reg.ok", &["API-3", "API-4", "API-5", "POW-1", "POW-3", "POW-4", "POW-7", "KEY-3", "LOG-4", "LOG-10", "HANDLE-8"], "a challenge, a mined proof and a register entry register the handle; its key log is the one entry", register_ok),
        case("reg.challenge-used", &["POW-6"], "a challenge that registered a handle is refused afterwards with challenge_used", challenge_used).codes(&[E::ChallengeUsed]),
        case("reg.challenge-unknown", &["POW-6"], "a challenge the relay did not issue is challenge_unknown", challenge_unknown).codes(&[E::ChallengeUnknown]),
        case("reg.challenge-survives-failure", &["POW-6"], "a failed registration leaves its challenge usable", challenge_survives).codes(&[E::PowInsufficient]),
        case("reg.challenge-expired", &["POW-6", "POW-1"], "a challenge used after its expiry is challenge_expired", challenge_expired).codes(&[E::ChallengeExpired]),
        case("reg.pow-missing", &["REG-1", "API-4"], "a registration without `pow` is pow_missing", pow_missing).codes(&[E::PowMissing]),
        case("reg.pow-schema", &["POW-2", "REG-1"], "a malformed proof object is refused with the schema codes", pow_schema).codes(&[E::UnknownField, E::InvalidField, E::MissingField]),
        case("reg.pow-commit-above", &["POW-5"], "a proof that commits to more than required and meets it is accepted", |e| commit_above(e, 2)),
        case("reg.pow-bound-to-handle", &["POW-3", "POW-5"], "a proof made for another handle is pow_insufficient", |e| bound(e, Bind::Handle)).codes(&[E::PowInsufficient]),
        case("reg.pow-bound-to-key", &["POW-3", "POW-5"], "a proof made for another key is pow_insufficient", |e| bound(e, Bind::Key)).codes(&[E::PowInsufficient]),
        case("reg.pow-bound-to-relay", &["POW-3", "POW-5"], "a proof made for another relay host is pow_insufficient", |e| bound(e, Bind::Relay)).codes(&[E::PowInsufficient]),
        case("reg.pow-bound-to-challenge", &["POW-3", "POW-5"], "a proof made for another challenge is pow_insufficient", |e| bound(e, Bind::Challenge)).codes(&[E::PowInsufficient]),
        case("reg.pow-nonce-little-endian", &["POW-4", "POW-5"], "a nonce that meets the difficulty only when encoded big-endian is pow_insufficient", |e| bound(e, Bind::BigEndian)).codes(&[E::PowInsufficient]),
        case("reg.pow-bits-from-msb", &["POW-7", "POW-5"], "a nonce whose hash meets the difficulty only counting bits from the end is pow_insufficient", |e| bound(e, Bind::BitsFromEnd)).codes(&[E::PowInsufficient]),
        case("reg.wrong-relay", &["REG-1", "AUTH-4"], "a register entry for a handle on another host is wrong_relay", wrong_relay).codes(&[E::WrongRelay]),
        case("reg.reserved", &["HANDLE-6", "HANDLE-7", "REG-1"], "every reserved name, @relay included, is refused with handle_reserved", reserved).codes(&[E::HandleReserved]),
        case("reg.not-register-op", &["REG-1", "LOG-5"], "a registration whose entry is not a register at seq 0 is invalid_field (entry.op)", not_register).codes(&[E::InvalidField]),
        case("reg.stale", &["REG-1", "TIME-1", "TIME-4", "TIME-5"], "a register entry older than the window is stale", |e| entry_time(e, true)).codes(&[E::Stale]),
        case("reg.future", &["REG-1", "TIME-2", "TIME-4", "TIME-5"], "a register entry ahead of the skew is future", |e| entry_time(e, false)).codes(&[E::Future]),
        case("reg.bad-signature", &["REG-1", "LOG-10", "SIG-3"], "a register entry whose signature does not verify is bad_signature", bad_signature).codes(&[E::BadSignature]),
        case("reg.handle-taken", &["REG-1"], "registering a taken handle is handle_taken", handle_taken).codes(&[E::HandleTaken]),
        case("reg.invalid-key", &["KEY-2", "ENC-1", "ENC-2", "REG-1"], "a register key that is not 64 lower-case hex of a curve point is invalid_key", invalid_key).codes(&[E::InvalidKey]),
        case("reg.body-schema", &["REG-1", "HTTP-2", "JSON-1"], "a registration body that is not {entry, pow} is refused with the schema codes", body_schema)
            .codes(&[E::MissingField, E::UnknownField, E::InvalidField, E::TooLarge, E::MalformedJson]),
        case("reg.order", &["REG-1", "CONV-3"], "with several faults, the first check of REG-1's order decides the code", reg_order)
            .codes(&[E::WrongRelay, E::HandleReserved, E::Stale, E::BadSignature, E::PowMissing, E::ChallengeUnknown]),
        case("enc.hex-case-and-length", &["ENC-1", "ENC-2", "KEY-5", "LOG-1"], "upper-case or wrong-length hex is refused with the code of its field", hex_rules)
            .codes(&[E::InvalidField, E::InvalidKey]),
    ]
}

// ------------------------------------------------------------------ helpers

fn reg_body(entry: &Value, proof: Option<Value>) -> Vec<u8> {
    let mut m = vec![("entry", entry.clone())];
    if let Some(p) = proof {
        m.push(("pow", p));
    }
    canon::canonicalize(&obj(m))
}

fn post_reg(t: &Target, body: &[u8]) -> R<Resp> {
    t.post_ip_limited("/v1/register", body)
}

fn bogus_proof() -> Value {
    obj(vec![
        ("challenge", s(&"0".repeat(32))),
        ("difficulty", int(0)),
        ("nonce", int(0)),
    ])
}

/// A fresh handle and key with a signed register entry stamped now.
fn fresh(t: &Target, tag: &str) -> R<(Handle, SecretKey, Value)> {
    let h = t.fresh_handle(tag);
    let k = random_key();
    let entry = t.register_entry(&h, &k, None, t.now(), &k)?.value().clone();
    Ok((h, k, entry))
}

/// The difficulty the binding cases commit to: what the relay requires, but at least 8 so a
/// wrong proof fails with certainty for a relay that requires less.
fn committed(ch: &Issued) -> u32 {
    ch.difficulty.max(8)
}

fn proof(ch: &Issued, d: u32, nonce: u64) -> Value {
    PowProof {
        challenge: ch.challenge,
        difficulty: d,
        nonce,
    }
    .to_value()
}

/// Registers `h` with `k` and a fresh challenge, checking the answer (API-4).
fn register_checked(
    t: &Target,
    h: &Handle,
    k: &SecretKey,
    recovery: Option<&SecretKey>,
) -> R<(Issued, Value)> {
    let ch = t.challenge()?;
    let entry = t.register_entry(h, k, recovery, t.now(), k)?;
    let nonce = Target::mine(
        &t.pow_prefix(h, &k.public(), &ch.challenge, ch.difficulty),
        ch.difficulty,
    )?;
    let r = post_reg(
        t,
        &reg_body(entry.value(), Some(proof(&ch, ch.difficulty, nonce))),
    )?;
    r.expect_json(201)?;
    ensure!(
        r.str_member("handle")? == h.as_str(),
        "{}: handle {:?}, expected {h} (API-4)",
        r.what,
        r.str_member("handle")?
    );
    ensure!(
        r.str_member("key_id")? == k.public().key_id().to_hex(),
        "{}: key_id {:?} is not the key id of the registered key, {} (KEY-3)",
        r.what,
        r.str_member("key_id")?,
        k.public().key_id().to_hex()
    );
    ensure!(
        r.str_member("head")? == entry.hash().to_hex(),
        "{}: head {:?} is not BLAKE3 of the entry's signing input, {} (LOG-4)",
        r.what,
        r.str_member("head")?,
        entry.hash().to_hex()
    );
    Ok((ch, entry.value().clone()))
}

// ------------------------------------------------------------------ cases

fn register_ok(e: &Env<'_>) -> R {
    let t = e.t;
    let h = t.fresh_handle("regok");
    let k = random_key();
    let rec = random_key();
    let before = t.now();
    let ch = t.challenge()?;
    ensure!(
        ch.difficulty == t.published.pow_difficulty,
        "the challenge requires difficulty {}, the descriptor publishes {} (POW-1)",
        ch.difficulty,
        t.published.pow_difficulty
    );
    ensure!(
        ch.relay == t.host.as_str(),
        "the challenge names relay {:?}, the descriptor {} (API-3)",
        ch.relay,
        t.host
    );
    let ttl = t.published.challenge_ttl_ms;
    ensure!(
        (ch.expires - (before + ttl)).abs() < 15_000,
        "the challenge expires at {}, not about now + challenge_ttl_ms = {} (POW-1)",
        ch.expires,
        before + ttl
    );
    let entry = t.register_entry(&h, &k, Some(&rec), t.now(), &k)?;
    let nonce = Target::mine(
        &t.pow_prefix(&h, &k.public(), &ch.challenge, ch.difficulty),
        ch.difficulty,
    )?;
    let r = post_reg(
        t,
        &reg_body(entry.value(), Some(proof(&ch, ch.difficulty, nonce))),
    )?;
    r.expect_json(201)?;
    ensure!(
        r.str_member("handle")? == h.as_str(),
        "{}: handle {:?} (API-4)",
        r.what,
        r.str_member("handle")?
    );
    ensure!(
        r.str_member("key_id")? == k.public().key_id().to_hex(),
        "{}: key_id is not KEY-3's (KEY-3)",
        r.what
    );
    ensure!(
        r.str_member("head")? == entry.hash().to_hex(),
        "{}: head is not the entry hash (LOG-4)",
        r.what
    );
    // API-5: the key log is the one entry, served canonical, and verifies from the first entry.
    for path in [
        format!("/v1/keys/{h}"),
        format!("/v1/keys/@{}", h.name().as_str()),
        format!(
            "/v1/keys/{}",
            h.as_str().replace('@', "%40").replace(':', "%3A")
        ),
    ] {
        let g = t.http.get(&path)?;
        let v = g.expect_json(200)?;
        ensure!(
            at(v, &["handle"]) == Some(&s(h.as_str())),
            "{}: handle {:?} (API-5, HANDLE-8)",
            g.what,
            at(v, &["handle"])
        );
        let entries = at(v, &["entries"])
            .and_then(Value::as_array)
            .unwrap_or(&[])
            .to_vec();
        ensure!(
            entries.len() == 1 && entries[0] == *entry.value(),
            "{}: entries are not exactly the register entry: {} (API-5)",
            g.what,
            g.brief()
        );
        expect_raw_contains(&g, &entry.wire_bytes(), "the register entry")?;
        let parsed: Vec<_> = entries
            .into_iter()
            .map(formica_protocol::SignedKeyLogEntry::from_value)
            .collect::<Result<_, _>>()
            .map_err(|err| Stop::Fail(format!("{}: an entry does not parse: {err}", g.what)))?;
        let log = formica_protocol::KeyLog::verify(parsed).map_err(|err| {
            Stop::Fail(format!(
                "{}: the served log does not verify: {err} (LOG-10)",
                g.what
            ))
        })?;
        ensure!(
            at(v, &["head"]) == Some(&s(&log.head().hash().to_hex())),
            "{}: head differs from the verified log's (API-5)",
            g.what
        );
        ensure!(
            at(v, &["current_key"]) == Some(&s(&k.public().to_hex())),
            "{}: current_key {:?} (API-5)",
            g.what,
            at(v, &["current_key"])
        );
        ensure!(
            at(v, &["recovery_key"]) == Some(&s(&rec.public().to_hex())),
            "{}: recovery_key {:?} (API-5)",
            g.what,
            at(v, &["recovery_key"])
        );
        ensure!(
            at(v, &["moved_to"]) == Some(&Value::Null),
            "{}: moved_to {:?} (API-5)",
            g.what,
            at(v, &["moved_to"])
        );
        ensure!(
            at(v, &["conflicts"]) == Some(&Value::Array(vec![])),
            "{}: conflicts {:?} (API-5)",
            g.what,
            at(v, &["conflicts"])
        );
        ensure!(
            at(v, &["tier"]).and_then(Value::as_str) == Some(t.published.tier0().name.as_str()),
            "{}: tier {:?} (API-5, TRUST-1)",
            g.what,
            at(v, &["tier"])
        );
    }
    t.http
        .get(&format!("/v1/keys/{}", t.fresh_handle("unregistered")))?
        .expect_error(ErrorCode::NotFound)?;
    t.http
        .get("/v1/keys/@Bad@x")?
        .expect_error(ErrorCode::InvalidHandle)?;
    Ok(())
}

fn challenge_used(e: &Env<'_>) -> R {
    let t = e.t;
    let h = t.fresh_handle("chu");
    let k = random_key();
    let (ch, _) = register_checked(t, &h, &k, None)?;
    let (h2, k2, entry2) = fresh(t, "chu")?;
    let nonce = Target::mine(
        &t.pow_prefix(&h2, &k2.public(), &ch.challenge, ch.difficulty),
        ch.difficulty,
    )?;
    post_reg(
        t,
        &reg_body(&entry2, Some(proof(&ch, ch.difficulty, nonce))),
    )?
    .expect_error(ErrorCode::ChallengeUsed)?;
    Ok(())
}

fn challenge_unknown(e: &Env<'_>) -> R {
    let t = e.t;
    let (h, k, entry) = fresh(t, "chn")?;
    let mut c = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut c);
    let ch = Issued {
        challenge: Challenge(c),
        difficulty: t.published.pow_difficulty,
        expires: 0,
        relay: String::new(),
    };
    let nonce = Target::mine(
        &t.pow_prefix(&h, &k.public(), &ch.challenge, ch.difficulty),
        ch.difficulty,
    )?;
    post_reg(t, &reg_body(&entry, Some(proof(&ch, ch.difficulty, nonce))))?
        .expect_error(ErrorCode::ChallengeUnknown)?;
    Ok(())
}

/// A nonce under the preimage `prefix` whose hash has fewer than `d` leading zero bits.
fn weak_nonce(prefix: &[u8], d: u32) -> u64 {
    (0..u64::MAX)
        .find(|n| pow::leading_zero_bits(&pow::pow_hash(prefix, *n)) < d)
        .unwrap_or(0)
}

fn challenge_survives(e: &Env<'_>) -> R {
    let t = e.t;
    let (h, k, entry) = fresh(t, "chs")?;
    let ch = t.challenge()?;
    let d = committed(&ch);
    let prefix = t.pow_prefix(&h, &k.public(), &ch.challenge, d);
    post_reg(
        t,
        &reg_body(&entry, Some(proof(&ch, d, weak_nonce(&prefix, d)))),
    )?
    .expect_error(ErrorCode::PowInsufficient)?;
    let nonce = Target::mine(&prefix, d)?;
    post_reg(t, &reg_body(&entry, Some(proof(&ch, d, nonce))))?
        .expect_json(201)
        .map_err(|err| match err {
            Stop::Fail(m) => Stop::Fail(format!(
                "after a failed registration the same challenge must still work: {m} (POW-6)"
            )),
            other => other,
        })?;
    Ok(())
}

fn challenge_expired(e: &Env<'_>) -> R {
    let t = e.t;
    let ttl = t.published.challenge_ttl_ms;
    if ttl > 10_000 {
        skip!("pow.challenge_ttl_ms is {ttl}; the case waits for an expiry only up to 10000 ms");
    }
    let (h, k, _) = fresh(t, "che")?;
    let ch = t.challenge()?;
    let nonce = Target::mine(
        &t.pow_prefix(&h, &k.public(), &ch.challenge, ch.difficulty),
        ch.difficulty,
    )?;
    let wait = (ch.expires - t.now() + 300).max(0) as u64;
    if wait > 12_000 {
        fail!("the challenge expires in {wait} ms although challenge_ttl_ms is {ttl} (POW-1)");
    }
    sleep_ms(wait);
    let entry = t.register_entry(&h, &k, None, t.now(), &k)?;
    post_reg(
        t,
        &reg_body(entry.value(), Some(proof(&ch, ch.difficulty, nonce))),
    )?
    .expect_error(ErrorCode::ChallengeExpired)?;
    Ok(())
}

fn pow_missing(e: &Env<'_>) -> R {
    let t = e.t;
    let (_, _, entry) = fresh(t, "pwm")?;
    post_reg(t, &reg_body(&entry, None))?.expect_error(ErrorCode::PowMissing)?;
    Ok(())
}

fn pow_schema(e: &Env<'_>) -> R {
    let t = e.t;
    let (_, _, entry) = fresh(t, "pws")?;
    let c = s(&"0".repeat(32));
    let cases: Vec<(Value, ErrorCode, &str)> = vec![
        (
            obj(vec![
                ("challenge", c.clone()),
                ("difficulty", int(8)),
                ("nonce", int(1)),
                ("extra", int(1)),
            ]),
            ErrorCode::UnknownField,
            "pow.extra",
        ),
        (
            obj(vec![
                ("challenge", s(&"A".repeat(32))),
                ("difficulty", int(8)),
                ("nonce", int(1)),
            ]),
            ErrorCode::InvalidField,
            "pow.challenge",
        ),
        (
            obj(vec![
                ("challenge", c.clone()),
                ("difficulty", int(257)),
                ("nonce", int(1)),
            ]),
            ErrorCode::InvalidField,
            "pow.difficulty",
        ),
        (
            obj(vec![
                ("challenge", c.clone()),
                ("difficulty", int(8)),
                ("nonce", int(-1)),
            ]),
            ErrorCode::InvalidField,
            "pow.nonce",
        ),
        (
            obj(vec![("challenge", c.clone()), ("difficulty", int(8))]),
            ErrorCode::MissingField,
            "pow.nonce",
        ),
    ];
    for (p, code, field) in cases {
        post_reg(t, &reg_body(&entry, Some(p)))?.expect_error_field(code, field)?;
    }
    Ok(())
}

fn commit_above(e: &Env<'_>, extra: u32) -> R {
    let t = e.t;
    let (h, k, entry) = fresh(t, "pwa")?;
    let ch = t.challenge()?;
    let d = ch.difficulty + extra;
    let nonce = Target::mine(&t.pow_prefix(&h, &k.public(), &ch.challenge, d), d)?;
    post_reg(t, &reg_body(&entry, Some(proof(&ch, d, nonce))))?.expect_json(201)?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bind {
    Handle,
    Key,
    Relay,
    Challenge,
    BigEndian,
    BitsFromEnd,
    /// Committed difficulty relabelled (pow.json's last case).
    Relabel,
}

fn zero_bits_from_end(h: &[u8; 32]) -> u32 {
    let mut r = *h;
    r.reverse();
    pow::leading_zero_bits(&r)
}

/// Finds a nonce that meets `d` under `wrong` (a preimage or hashing rule a wrong relay might
/// use) but not under `right`.
fn misleading_nonce(d: u32, right: impl Fn(u64) -> [u8; 32], wrong: impl Fn(u64) -> u32) -> R<u64> {
    let tries = 1u64 << (d + 10).min(40);
    for n in 0..tries {
        if wrong(n) >= d && pow::leading_zero_bits(&right(n)) < d {
            return Ok(n);
        }
    }
    fail!("no misleading nonce found for difficulty {d}")
}

fn bound(e: &Env<'_>, how: Bind) -> R {
    let t = e.t;
    let (h, k, entry) = fresh(t, "pwb")?;
    let ch = t.challenge()?;
    let d = committed(&ch);
    let right = t.pow_prefix(&h, &k.public(), &ch.challenge, d);
    let other_handle = t.fresh_handle("pwbother");
    let other_key = random_key().public();
    let other_relay =
        RelayHost::parse("elsewhere.example").map_err(|err| Stop::Fail(err.to_string()))?;
    let other_ch = Challenge([0x5a; 16]);
    let hash = |p: &[u8], n: u64| pow::pow_hash(p, n);
    let (d_sent, nonce) = match how {
        Bind::Handle => (
            d,
            misleading_nonce(
                d,
                |n| hash(&right, n),
                |n| {
                    pow::leading_zero_bits(&hash(
                        &t.pow_prefix(&other_handle, &k.public(), &ch.challenge, d),
                        n,
                    ))
                },
            )?,
        ),
        Bind::Key => (
            d,
            misleading_nonce(
                d,
                |n| hash(&right, n),
                |n| {
                    pow::leading_zero_bits(&hash(
                        &t.pow_prefix(&h, &other_key, &ch.challenge, d),
                        n,
                    ))
                },
            )?,
        ),
        Bind::Relay => {
            let wrong = pow::preimage_prefix(&other_relay, &h, &k.public(), &ch.challenge, d);
            (
                d,
                misleading_nonce(
                    d,
                    |n| hash(&right, n),
                    |n| pow::leading_zero_bits(&hash(&wrong, n)),
                )?,
            )
        }
        Bind::Challenge => {
            let wrong = t.pow_prefix(&h, &k.public(), &other_ch, d);
            (
                d,
                misleading_nonce(
                    d,
                    |n| hash(&right, n),
                    |n| pow::leading_zero_bits(&hash(&wrong, n)),
                )?,
            )
        }
        Bind::BigEndian => (
            d,
            misleading_nonce(
                d,
                |n| hash(&right, n),
                |n| {
                    let mut hh = blake3::Hasher::new();
                    hh.update(&right);
                    hh.update(&n.to_be_bytes());
                    pow::leading_zero_bits(hh.finalize().as_bytes())
                },
            )?,
        ),
        Bind::BitsFromEnd => (
            d,
            misleading_nonce(
                d,
                |n| hash(&right, n),
                |n| zero_bits_from_end(&hash(&right, n)),
            )?,
        ),
        Bind::Relabel => {
            // Mined for d + 4, sent as committing to d: the hash changes with the commitment.
            let higher = t.pow_prefix(&h, &k.public(), &ch.challenge, d + 4);
            (
                d,
                misleading_nonce(
                    d,
                    |n| hash(&right, n),
                    |n| pow::leading_zero_bits(&hash(&higher, n)),
                )?,
            )
        }
    };
    post_reg(t, &reg_body(&entry, Some(proof(&ch, d_sent, nonce))))?
        .expect_error(ErrorCode::PowInsufficient)?;
    Ok(())
}

/// pow.json, re-created against the relay (the vector's own challenges were not issued by it).
pub fn vector_pow(i: usize, c: &Value) -> Case {
    let cm = crate::vectors::field(c, "comment").unwrap_or("").to_owned();
    let l = cm.to_ascii_lowercase();
    let result = crate::vectors::field(c, "result").unwrap_or("").to_owned();
    let id = format!("vec.pow.{i}");
    let title = format!("pow.json: {cm}: re-created with a challenge of the relay");
    if l.contains("difficulty 0") {
        return case(id, &["POW-5", "POW-7", "VEC-2"], title, |e| {
            let t = e.t;
            if t.published.pow_difficulty != 0 {
                skip!("the relay requires difficulty {}; a proof for 0 only applies to relays requiring 0", t.published.pow_difficulty);
            }
            let (_, _, entry) = fresh(t, "pw0")?;
            let ch = t.challenge()?;
            post_reg(t, &reg_body(&entry, Some(proof(&ch, 0, 12345))))?.expect_json(201)?;
            Ok(())
        });
    }
    if l.contains("more than required") {
        return case(id, &["POW-5", "VEC-2"], title, |e| commit_above(e, 4));
    }
    if l.contains("below the required") {
        return case(id, &["POW-5", "VEC-2"], title, |e| {
            let t = e.t;
            let (h, k, entry) = fresh(t, "pwl")?;
            let ch = t.challenge()?;
            if ch.difficulty == 0 {
                skip!("the relay requires difficulty 0; nothing commits below it");
            }
            let d = ch.difficulty - 1;
            let nonce = Target::mine(&t.pow_prefix(&h, &k.public(), &ch.challenge, d), d)?;
            post_reg(t, &reg_body(&entry, Some(proof(&ch, d, nonce))))?
                .expect_error(ErrorCode::PowInsufficient)?;
            Ok(())
        })
        .codes(&[ErrorCode::PowInsufficient]);
    }
    if l.contains("does not meet") {
        return case(id, &["POW-5", "VEC-2"], title, |e| {
            let t = e.t;
            let (h, k, entry) = fresh(t, "pwn")?;
            let ch = t.challenge()?;
            let d = committed(&ch);
            let prefix = t.pow_prefix(&h, &k.public(), &ch.challenge, d);
            post_reg(
                t,
                &reg_body(&entry, Some(proof(&ch, d, weak_nonce(&prefix, d)))),
            )?
            .expect_error(ErrorCode::PowInsufficient)?;
            Ok(())
        })
        .codes(&[ErrorCode::PowInsufficient]);
    }
    if l.contains("relabelled") {
        return case(id, &["POW-3", "POW-5", "VEC-2"], title, |e| {
            bound(e, Bind::Relabel)
        })
        .codes(&[ErrorCode::PowInsufficient]);
    }
    // "the first nonce from 0 that meets difficulty d": a proof at the required difficulty,
    // mined from nonce 0 the same way, registers.
    let _ = result;
    case(
        id,
        &["POW-3", "POW-4", "POW-5", "POW-7", "VEC-2"],
        title,
        |e| {
            let t = e.t;
            let (h, k, entry) = fresh(t, "pwf")?;
            let ch = t.challenge()?;
            let nonce = pow::mine(
                &t.pow_prefix(&h, &k.public(), &ch.challenge, ch.difficulty),
                ch.difficulty,
                0,
                1,
                1u64 << (ch.difficulty + 8).min(40),
            )
            .ok_or_else(|| Stop::Fail("no nonce".into()))?;
            post_reg(t, &reg_body(&entry, Some(proof(&ch, ch.difficulty, nonce))))?
                .expect_json(201)?;
            Ok(())
        },
    )
}

/// ed25519.json: the public keys that are not valid Formica keys, as register keys.
pub fn vector_ed25519(i: usize, c: &Value) -> Option<Case> {
    let result = crate::vectors::field(c, "key_result")?.to_owned();
    let code = match result.as_str() {
        "weak_key" => ErrorCode::WeakKey,
        "invalid_key" => ErrorCode::InvalidKey,
        _ => return None,
    };
    let pk = crate::vectors::field(c, "pub_key")?.to_owned();
    Some(
        case(
            format!("vec.ed25519.{i}"),
            &["KEY-2", "SIG-3", "REG-1", "VEC-2"],
            format!(
                "ed25519.json case {i}: its public key is refused at registration with {result}"
            ),
            move |e| {
                let t = e.t;
                let h = t.fresh_handle("edk");
                let signer = random_key();
                let mut o = Object::new();
                o.insert("v", int(1));
                o.insert("handle", s(h.as_str()));
                o.insert("seq", int(0));
                o.insert("ts", int(t.now()));
                o.insert("op", s("register"));
                o.insert("key", s(&pk));
                o.insert("signer", s(&signer.public().key_id().to_hex()));
                let sg = sign_as(&o, &signer, Domain::KeyLog);
                let mut entry = sg.value.clone();
                if let Value::Object(x) = &mut entry {
                    x.remove("id");
                }
                post_reg(t, &reg_body(&entry, Some(bogus_proof())))?.expect_error(code)?;
                // The same key as a recovery key.
                let k = random_key();
                let mut o2 = Object::new();
                o2.insert("v", int(1));
                o2.insert("handle", s(h.as_str()));
                o2.insert("seq", int(0));
                o2.insert("ts", int(t.now()));
                o2.insert("op", s("register"));
                o2.insert("key", s(&k.public().to_hex()));
                o2.insert("recovery", s(&pk));
                o2.insert("signer", s(&k.public().key_id().to_hex()));
                let mut entry2 = sign_as(&o2, &k, Domain::KeyLog).value.clone();
                if let Value::Object(x) = &mut entry2 {
                    x.remove("id");
                }
                post_reg(t, &reg_body(&entry2, Some(bogus_proof())))?.expect_error(code)?;
                Ok(())
            },
        )
        .codes(&[code]),
    )
}

fn wrong_relay(e: &Env<'_>) -> R {
    let t = e.t;
    let h = Handle::parse(&format!("@x{}@elsewhere.example", t.run_id))
        .map_err(|err| Stop::Fail(err.to_string()))?;
    let k = random_key();
    let entry = t.register_entry(&h, &k, None, t.now(), &k)?;
    post_reg(t, &reg_body(entry.value(), Some(bogus_proof())))?
        .expect_error(ErrorCode::WrongRelay)?;
    Ok(())
}

fn reserved(e: &Env<'_>) -> R {
    let t = e.t;
    for name in formica_protocol::handle::RESERVED_NAMES {
        let h = Handle::parse(&format!("@{name}@{}", t.host))
            .map_err(|err| Stop::Fail(err.to_string()))?;
        let k = random_key();
        let entry = t.register_entry(&h, &k, None, t.now(), &k)?;
        post_reg(t, &reg_body(entry.value(), Some(bogus_proof())))?
            .expect_error(ErrorCode::HandleReserved)
            .map_err(|err| match err {
                Stop::Fail(m) => Stop::Fail(format!("@{name}: {m} (HANDLE-6)")),
                other => other,
            })?;
    }
    Ok(())
}

fn not_register(e: &Env<'_>) -> R {
    let t = e.t;
    let h = t.fresh_handle("nrg");
    let k = random_key();
    let entry = sign_entry(
        &formica_protocol::keylog::KeyLogEntry {
            handle: h,
            seq: 0,
            prev: None,
            ts: t.now(),
            op: KeyOp::Rotate { key: k.public() },
            signer: k.public().key_id(),
        },
        &k,
        &[&k],
    )?;
    post_reg(t, &reg_body(entry.value(), Some(bogus_proof())))?
        .expect_error_field(ErrorCode::InvalidField, "entry.op")?;
    Ok(())
}

fn entry_time(e: &Env<'_>, stale: bool) -> R {
    let t = e.t;
    let h = t.fresh_handle(if stale { "rst" } else { "rfu" });
    let k = random_key();
    let ts = if stale {
        t.now() - t.published.window_ms - 30_000
    } else {
        t.now() + t.published.skew_ms + 30_000
    };
    let entry = t.register_entry(&h, &k, None, ts, &k)?;
    let r = post_reg(t, &reg_body(entry.value(), Some(bogus_proof())))?;
    r.expect_error(if stale {
        ErrorCode::Stale
    } else {
        ErrorCode::Future
    })?;
    Ok(())
}

fn bad_signature(e: &Env<'_>) -> R {
    let t = e.t;
    let (_, _, mut entry) = fresh(t, "rbs")?;
    if let Value::Object(o) = &mut entry {
        let sig = o
            .get("sig")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        o.insert("sig", s(&super::descriptor::flip_hex(&sig)));
    }
    post_reg(t, &reg_body(&entry, Some(bogus_proof())))?.expect_error(ErrorCode::BadSignature)?;
    Ok(())
}

fn handle_taken(e: &Env<'_>) -> R {
    let t = e.t;
    let h = t.fresh_handle("tkn");
    register_checked(t, &h, &random_key(), None)?;
    let k2 = random_key();
    let ch = t.challenge()?;
    let entry = t.register_entry(&h, &k2, None, t.now(), &k2)?;
    let nonce = Target::mine(
        &t.pow_prefix(&h, &k2.public(), &ch.challenge, ch.difficulty),
        ch.difficulty,
    )?;
    post_reg(
        t,
        &reg_body(entry.value(), Some(proof(&ch, ch.difficulty, nonce))),
    )?
    .expect_error(ErrorCode::HandleTaken)?;
    Ok(())
}

/// A register entry object with `key` replaced by `key_hex` (signed by `k`, the signature is
/// irrelevant: the key is refused while parsing).
fn entry_with_key(t: &Target, k: &SecretKey, key_hex: &str) -> R<Value> {
    let h = t.fresh_handle("ikey");
    let mut entry = t.register_entry(&h, k, None, t.now(), k)?.value().clone();
    if let Value::Object(o) = &mut entry {
        o.insert("key", s(key_hex));
    }
    Ok(entry)
}

fn invalid_key(e: &Env<'_>) -> R {
    let t = e.t;
    let k = random_key();
    let good = k.public().to_hex();
    for bad in [
        good.to_ascii_uppercase(),
        good[..62].to_owned(),
        format!("{good}00"),
        "zz".repeat(32),
    ] {
        let entry = entry_with_key(t, &k, &bad)?;
        post_reg(t, &reg_body(&entry, Some(bogus_proof())))?
            .expect_error(ErrorCode::InvalidKey)
            .map_err(|err| match err {
                Stop::Fail(m) => Stop::Fail(format!("key {bad:?}: {m}")),
                other => other,
            })?;
    }
    Ok(())
}

fn body_schema(e: &Env<'_>) -> R {
    let t = e.t;
    let (_, _, entry) = fresh(t, "rbd")?;
    post_reg(t, b"{\"pow\":{}}")?.expect_error_field(ErrorCode::MissingField, "entry")?;
    post_reg(
        t,
        &canon::canonicalize(&obj(vec![
            ("entry", entry.clone()),
            ("pow", bogus_proof()),
            ("extra", int(1)),
        ])),
    )?
    .expect_error_field(ErrorCode::UnknownField, "extra")?;
    post_reg(t, b"[]")?.expect_error(ErrorCode::InvalidField)?;
    post_reg(t, b"{\"entry\":")?.expect_error(ErrorCode::MalformedJson)?;
    let big = vec![b' '; t.published.body_bytes_max as usize + 1];
    post_reg(t, &big)?.expect_error(ErrorCode::TooLarge)?;
    Ok(())
}

fn reg_order(e: &Env<'_>) -> R {
    let t = e.t;
    let old = t.now() - t.published.window_ms - 60_000;
    // 6 (wrong relay) before 7 (reserved) and 9 (freshness).
    let k = random_key();
    let h = Handle::parse("@admin@elsewhere.example").map_err(|err| Stop::Fail(err.to_string()))?;
    post_reg(
        t,
        &reg_body(t.register_entry(&h, &k, None, old, &k)?.value(), None),
    )?
    .expect_error(ErrorCode::WrongRelay)?;
    // 7 (reserved) before 9 (freshness).
    let h =
        Handle::parse(&format!("@admin@{}", t.host)).map_err(|err| Stop::Fail(err.to_string()))?;
    post_reg(
        t,
        &reg_body(t.register_entry(&h, &k, None, old, &k)?.value(), None),
    )?
    .expect_error(ErrorCode::HandleReserved)?;
    // 9 (freshness) before 10 (signature) and 11 (pow).
    let h = t.fresh_handle("ord");
    post_reg(
        t,
        &reg_body(
            t.register_entry(&h, &k, None, old, &random_key())?.value(),
            None,
        ),
    )?
    .expect_error(ErrorCode::Stale)?;
    // 10 (signature) before 11 (pow missing).
    let (_, _, mut entry) = fresh(t, "ord")?;
    if let Value::Object(o) = &mut entry {
        let sig = o
            .get("sig")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        o.insert("sig", s(&super::descriptor::flip_hex(&sig)));
    }
    post_reg(t, &reg_body(&entry, None))?.expect_error(ErrorCode::BadSignature)?;
    // 11 (pow present) before 12 (challenge).
    let (_, _, entry) = fresh(t, "ord")?;
    post_reg(t, &reg_body(&entry, None))?.expect_error(ErrorCode::PowMissing)?;
    post_reg(
        t,
        &reg_body(
            &entry,
            Some(obj(vec![
                ("challenge", s(&"1".repeat(32))),
                ("difficulty", int(256)),
                ("nonce", int(0)),
            ])),
        ),
    )?
    .expect_error(ErrorCode::ChallengeUnknown)?;
    Ok(())
}

fn hex_rules(e: &Env<'_>) -> R {
    let t = e.t;
    let k = random_key();
    let h = t.fresh_handle("hex");
    // Key id (signer) in upper case: invalid_field, not invalid_key (KEY-5).
    let mut entry = t.register_entry(&h, &k, None, t.now(), &k)?.value().clone();
    if let Value::Object(o) = &mut entry {
        o.insert(
            "signer",
            s(&k.public().key_id().to_hex().to_ascii_uppercase()),
        );
    }
    post_reg(t, &reg_body(&entry, Some(bogus_proof())))?
        .expect_error_field(ErrorCode::InvalidField, "entry.signer")?;
    // A signature of the wrong length.
    let mut entry = t.register_entry(&h, &k, None, t.now(), &k)?.value().clone();
    if let Value::Object(o) = &mut entry {
        o.insert("sig", s(&"ab".repeat(63)));
    }
    post_reg(t, &reg_body(&entry, Some(bogus_proof())))?
        .expect_error_field(ErrorCode::InvalidField, "entry.sig")?;
    // A challenge with upper-case hex and one of 30 characters.
    let entry = t.register_entry(&h, &k, None, t.now(), &k)?.value().clone();
    for c in ["0A".repeat(16), "0".repeat(30)] {
        let p = obj(vec![
            ("challenge", s(&c)),
            ("difficulty", int(8)),
            ("nonce", int(0)),
        ]);
        post_reg(t, &reg_body(&entry, Some(p)))?
            .expect_error_field(ErrorCode::InvalidField, "pow.challenge")?;
    }
    // A public key in upper case is invalid_key (KEY-2), checked in reg.invalid-key too.
    let up = entry_with_key(t, &k, &k.public().to_hex().to_ascii_uppercase())?;
    post_reg(t, &reg_body(&up, Some(bogus_proof())))?.expect_error(ErrorCode::InvalidKey)?;
    Ok(())
}
