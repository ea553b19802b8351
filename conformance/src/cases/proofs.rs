//! Proofs of possession in key log entries (LOG-2): every key an entry introduces comes with a
//! signature by that key (`key_sig` on a rotate or recover, `recovery_sig` with a `recovery`), so
//! no agent can name a key it does not hold. The attack this stops (`keylog.adopt-key`: a rotate
//! that adopts another agent's public key), a registration naming a recovery key without its
//! proof (`reg.recovery-proof`), and the proof cases of keylogs.json re-created against the relay.

use super::keylog::{base, next, post_entry, reg, rotate_fresh, with_member};
use super::*;
use crate::case::{case, Env};
use crate::target::random_key;
use formica_protocol::keylog::{EntryHash, EntryProofs, KeyLogEntry, KeyOp};
use formica_protocol::{PublicKey, SecretKey, Signature};

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("keylog.adopt-key", &["LOG-2", "LOG-6", "LOG-10", "API-6", "HTTP-4"], "a rotate naming another registered agent's public key is refused: without key_sig missing_field, with a key_sig made by the author's own key bad_signature; both logs are unchanged", adopt_key).codes(&[E::MissingField, E::BadSignature]),
        case("reg.recovery-proof", &["REG-1", "LOG-2", "LOG-5", "LOG-10", "HTTP-4"], "a register entry naming a recovery key is refused without the recovery key's proof: recovery_sig made by the registered key bad_signature, recovery_sig absent missing_field (entry.recovery_sig)", recovery_proof).codes(&[E::BadSignature, E::MissingField]),
    ]
}

/// The entry at `seq` 1 of `a`'s log (after its register entry) doing `op`, signed by `signer`.
fn second(t: &Target, a: &Agent, op: KeyOp, signer: &SecretKey) -> KeyLogEntry {
    KeyLogEntry {
        handle: a.handle.clone(),
        seq: 1,
        prev: EntryHash::parse_hex(&a.head),
        ts: t.now().max(a.reg_ts + 1),
        op,
        signer: signer.public().key_id(),
    }
}

fn proofs(key_sig: Option<Signature>, recovery_sig: Option<Signature>) -> EntryProofs {
    EntryProofs {
        key_sig,
        recovery_sig,
    }
}

/// A register entry of a fresh handle for `k`, naming `recovery`.
fn register_entry(t: &Target, k: &SecretKey, recovery: Option<PublicKey>) -> KeyLogEntry {
    KeyLogEntry {
        handle: t.fresh_handle("kpop"),
        seq: 0,
        prev: None,
        ts: t.now(),
        op: KeyOp::Register {
            key: k.public(),
            recovery,
        },
        signer: k.public().key_id(),
    }
}

/// That entry signed by `k` with exactly the proofs `p`.
fn register_with(t: &Target, k: &SecretKey, recovery: Option<PublicKey>, p: EntryProofs) -> Value {
    register_entry(t, k, recovery)
        .sign_unchecked(k, p)
        .value()
        .clone()
}

/// The key log of `a` as the relay serves it.
fn served(t: &Target, a: &Agent) -> R<Value> {
    let r = t.http.get(&format!("/v1/keys/{}", a.handle))?;
    Ok(r.expect_json(200)?.clone())
}

/// The finding of an outside attack run: an agent rotates to another agent's public key.
fn adopt_key(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("kadopt")?;
    let victim = t.register("kvictim")?;
    let (before_a, before_v) = (served(t, &a)?, served(t, &victim)?);
    let adopt = second(
        t,
        &a,
        KeyOp::Rotate {
            key: victim.key.public(),
        },
        &a.key,
    );
    post_entry(t, &a, &adopt.sign_unchecked(&a.key, EntryProofs::default()))?
        .expect_error_field(ErrorCode::MissingField, "key_sig")?;
    let own = a.key.sign_input(&adopt.proof_input());
    post_entry(
        t,
        &a,
        &adopt.sign_unchecked(&a.key, proofs(Some(own), None)),
    )?
    .expect_error_field(ErrorCode::BadSignature, "key_sig")?;
    ensure!(
        served(t, &a)? == before_a && served(t, &victim)? == before_v,
        "a refused rotate changed a served key log (LOG-10, HTTP-7)"
    );
    Ok(())
}

fn recovery_proof(e: &Env<'_>) -> R {
    let t = e.t;
    let (k, r) = (random_key(), random_key());
    let entry = register_entry(t, &k, Some(r.public()));
    let by_key = k.sign_input(&entry.proof_input());
    reg(
        t,
        entry.sign_unchecked(&k, proofs(None, Some(by_key))).value(),
    )?
    .expect_error_field(ErrorCode::BadSignature, "entry.recovery_sig")?;
    reg(t, entry.sign_unchecked(&k, EntryProofs::default()).value())?
        .expect_error_field(ErrorCode::MissingField, "entry.recovery_sig")?;
    Ok(())
}

/// Posts a rotate of the shared agent's log to `key`, signed by the agent, whose `key_sig` is
/// what `forge` makes of the agent and the entry, and requires bad_signature on `key_sig`.
fn refuse_key_sig(
    e: &Env<'_>,
    key: PublicKey,
    forge: impl FnOnce(&Agent, &KeyLogEntry) -> Signature,
) -> R {
    let (t, a) = (e.t, base(e)?);
    let rot = second(t, &a, KeyOp::Rotate { key }, &a.key);
    let key_sig = forge(&a, &rot);
    post_entry(
        t,
        &a,
        &rot.sign_unchecked(&a.key, proofs(Some(key_sig), None)),
    )?
    .expect_error_field(ErrorCode::BadSignature, "key_sig")?;
    Ok(())
}

type F = fn(&Env<'_>) -> R;

/// The re-creation of a keylogs.json `invalid` case about proofs of possession, by its comment
/// (lower case): the requirements it checks, its codes, and the check. Each is posted against
/// the shared agent of the key log cases (refused, so its log stays at its register entry) or
/// as a registration, unless it needs a log of its own.
pub fn vector_recreation(l: &str) -> Option<(&'static [&'static str], &'static [ErrorCode], F)> {
    use ErrorCode as E;
    let found: (&'static [&'static str], &'static [ErrorCode], F) = if l
        .contains("rotate without key_sig")
    {
        (
            &["LOG-1", "LOG-6", "API-6", "VEC-2"],
            &[E::MissingField],
            |e| {
                let (t, a) = (e.t, base(e)?);
                let rot = second(
                    t,
                    &a,
                    KeyOp::Rotate {
                        key: random_key().public(),
                    },
                    &a.key,
                );
                post_entry(t, &a, &rot.sign_unchecked(&a.key, EntryProofs::default()))?
                    .expect_error_field(E::MissingField, "key_sig")?;
                Ok(())
            },
        )
    } else if l.contains("adopting another agent's public key") {
        (
            &["LOG-2", "LOG-6", "LOG-10", "API-6", "VEC-2"],
            &[E::BadSignature],
            |e| {
                let victim = e.fixture("keylog-victim", |t| t.register("kvictim"))?;
                refuse_key_sig(e, victim.key.public(), |a, rot| {
                    a.key.sign_input(&rot.proof_input())
                })
            },
        )
    } else if l.contains("under the key-log tag instead of the keylog-pop tag") {
        (
            &["LOG-2", "SIG-1", "LOG-10", "API-6", "VEC-2"],
            &[E::BadSignature],
            |e| {
                let k = random_key();
                refuse_key_sig(e, k.public(), |_, rot| {
                    k.sign(Domain::KeyLog, &canon::canonicalize(&rot.to_value()))
                })
            },
        )
    } else if l.contains("copied from another handle's entry") {
        (
            &["LOG-2", "LOG-10", "API-6", "VEC-2"],
            &[E::BadSignature],
            |e| {
                let (k, elsewhere) = (random_key(), e.t.fresh_handle("kpop"));
                refuse_key_sig(e, k.public(), |_, rot| {
                    let copied_from = KeyLogEntry {
                        handle: elsewhere,
                        ..rot.clone()
                    };
                    k.sign_input(&copied_from.proof_input())
                })
            },
        )
    } else if l.contains("valid key_sig signed by the recovery key") {
        (
            &["LOG-6", "LOG-10", "API-6", "VEC-2"],
            &[E::KeylogUnauthorizedSigner],
            |e| {
                let (t, a) = (e.t, base(e)?);
                let rec = a
                    .recovery
                    .clone()
                    .ok_or_else(|| Stop::Fail("no recovery key".into()))?;
                let rot = rotate_fresh(&a, 1, &a.head, t.now().max(a.reg_ts + 1), &rec)?;
                post_entry(t, &a, &rot)?.expect_error(E::KeylogUnauthorizedSigner)?;
                Ok(())
            },
        )
    } else if l.contains("rotate back to a used key with a key_sig by another key") {
        (
            &["LOG-10", "LOG-13", "API-6", "VEC-2"],
            &[E::BadSignature],
            |e| {
                let t = e.t;
                let a = t.register("kvpr")?;
                let k2 = random_key();
                let ts = t.now().max(a.reg_ts + 1);
                let r1 = next(
                    &a,
                    1,
                    &a.head,
                    ts,
                    KeyOp::Rotate { key: k2.public() },
                    &a.key,
                    &[&k2],
                )?;
                super::keylog::append(t, &a, &r1)?;
                let back = KeyLogEntry {
                    handle: a.handle.clone(),
                    seq: 2,
                    prev: Some(r1.hash()),
                    ts: ts + 1,
                    op: KeyOp::Rotate {
                        key: a.key.public(),
                    },
                    signer: k2.public().key_id(),
                };
                let other = random_key().sign_input(&back.proof_input());
                post_entry(t, &a, &back.sign_unchecked(&k2, proofs(Some(other), None)))?
                    .expect_error_field(E::BadSignature, "key_sig")?;
                Ok(())
            },
        )
    } else if l.contains("key_sig is upper-case hex") {
        (
            &["LOG-1", "SIG-5", "ENC-1", "API-6", "VEC-2"],
            &[E::InvalidField],
            |e| {
                let (t, a) = (e.t, base(e)?);
                let rot = rotate_fresh(&a, 1, &a.head, t.now().max(a.reg_ts + 1), &a.key)?;
                let upper = rot
                    .proofs()
                    .key_sig
                    .map(|p| p.to_hex().to_ascii_uppercase())
                    .unwrap_or_default();
                let v = with_member(rot.value(), "key_sig", &s(&upper), &a.key)?;
                t.http
                    .post(&format!("/v1/keys/{}", a.handle), &canon::canonicalize(&v))?
                    .expect_error_field(E::InvalidField, "key_sig")?;
                Ok(())
            },
        )
    } else if l.contains("key_sig has the non-canonical scalar s + l") {
        (
            &["LOG-10", "SIG-3", "API-6", "VEC-2"],
            &[E::BadSignature],
            |e| {
                let k = random_key();
                refuse_key_sig(e, k.public(), |_, rot| {
                    let mut sig = k.sign_input(&rot.proof_input());
                    super::signatures::add_l(&mut sig.0[32..]);
                    sig
                })
            },
        )
    } else if l.contains("recover without key_sig") {
        (
            &["LOG-1", "LOG-8", "API-6", "VEC-2"],
            &[E::MissingField],
            |e| {
                let (t, a) = (e.t, base(e)?);
                let rec = a
                    .recovery
                    .clone()
                    .ok_or_else(|| Stop::Fail("no recovery key".into()))?;
                let op = KeyOp::Recover {
                    key: random_key().public(),
                    recovery: None,
                };
                post_entry(
                    t,
                    &a,
                    &second(t, &a, op, &rec).sign_unchecked(&rec, EntryProofs::default()),
                )?
                .expect_error_field(E::MissingField, "key_sig")?;
                Ok(())
            },
        )
    } else if l.contains("recover naming a new recovery key whose recovery_sig is made by the new")
    {
        (
            &["LOG-2", "LOG-8", "LOG-10", "API-6", "VEC-2"],
            &[E::BadSignature],
            |e| {
                let (t, a, k, r) = (e.t, base(e)?, random_key(), random_key());
                let rec = a
                    .recovery
                    .clone()
                    .ok_or_else(|| Stop::Fail("no recovery key".into()))?;
                let op = KeyOp::Recover {
                    key: k.public(),
                    recovery: Some(r.public()),
                };
                let entry = second(t, &a, op, &rec);
                let by_key = k.sign_input(&entry.proof_input());
                post_entry(
                    t,
                    &a,
                    &entry.sign_unchecked(&rec, proofs(Some(by_key), Some(by_key))),
                )?
                .expect_error_field(E::BadSignature, "recovery_sig")?;
                Ok(())
            },
        )
    } else if l
        .contains("register with a recovery key whose recovery_sig is made by the registered key")
    {
        (
            &["LOG-2", "LOG-5", "LOG-10", "REG-1", "VEC-2"],
            &[E::BadSignature],
            |e| {
                let (t, k) = (e.t, random_key());
                let entry = register_entry(t, &k, Some(random_key().public()));
                let by_key = k.sign_input(&entry.proof_input());
                reg(
                    t,
                    entry.sign_unchecked(&k, proofs(None, Some(by_key))).value(),
                )?
                .expect_error_field(E::BadSignature, "entry.recovery_sig")?;
                Ok(())
            },
        )
    } else if l.contains("register with a recovery key but without recovery_sig") {
        (&["LOG-1", "REG-1", "VEC-2"], &[E::MissingField], |e| {
            let (t, k) = (e.t, random_key());
            let v = register_with(t, &k, Some(random_key().public()), EntryProofs::default());
            reg(t, &v)?.expect_error_field(E::MissingField, "entry.recovery_sig")?;
            Ok(())
        })
    } else if l.contains("register without a recovery key but with a recovery_sig") {
        (
            &["LOG-1", "LOG-3", "REG-1", "VEC-2"],
            &[E::UnknownField],
            |e| {
                let (t, k) = (e.t, random_key());
                let v = register_with(
                    t,
                    &k,
                    None,
                    proofs(None, Some(k.sign(Domain::KeyLogPop, b"{}"))),
                );
                reg(t, &v)?.expect_error_field(E::UnknownField, "entry.recovery_sig")?;
                Ok(())
            },
        )
    } else if l.contains("register with a key_sig") {
        (
            &["LOG-1", "LOG-3", "REG-1", "VEC-2"],
            &[E::UnknownField],
            |e| {
                let (t, k) = (e.t, random_key());
                let v = register_with(
                    t,
                    &k,
                    None,
                    proofs(Some(k.sign(Domain::KeyLogPop, b"{}")), None),
                );
                reg(t, &v)?.expect_error_field(E::UnknownField, "entry.key_sig")?;
                Ok(())
            },
        )
    } else if l.contains("key_sig on a revoke") {
        (
            &["LOG-1", "LOG-3", "API-6", "VEC-2"],
            &[E::UnknownField],
            |e| {
                let (t, a) = (e.t, base(e)?);
                let revoke = second(t, &a, KeyOp::Revoke, &a.key);
                let stray = a.key.sign_input(&revoke.proof_input());
                post_entry(
                    t,
                    &a,
                    &revoke.sign_unchecked(&a.key, proofs(Some(stray), None)),
                )?
                .expect_error_field(E::UnknownField, "key_sig")?;
                Ok(())
            },
        )
    } else {
        return None;
    };
    Some(found)
}
