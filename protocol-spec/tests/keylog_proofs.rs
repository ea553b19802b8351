//! Proofs of possession in key log entries (SPEC.md LOG-2, LOG-10 steps 2.5 and 3.10): the
//! signing API refuses to make an entry without the proofs it needs, entries it makes verify and
//! parse back, and an entry that names a key its author does not hold is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use formica_protocol::json::JsonLimits;
use formica_protocol::keylog::{
    EntryProofs, KeyLog, KeyLogEntry, KeyLogError, KeyOp, SignError, SignedKeyLogEntry,
};
use formica_protocol::keys::{Domain, SecretKey};
use formica_protocol::{ErrorCode, Handle};

const T0: i64 = 1_764_000_000_000;

fn sk(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

fn register(key: &SecretKey, recovery: Option<&SecretKey>) -> KeyLogEntry {
    KeyLogEntry {
        handle: Handle::parse("@kevin@relay-a.example").unwrap(),
        seq: 0,
        prev: None,
        ts: T0,
        op: KeyOp::Register {
            key: key.public(),
            recovery: recovery.map(SecretKey::public),
        },
        signer: key.public().key_id(),
    }
}

/// The entry after the head of `log`, one second later.
fn next(log: &KeyLog, op: KeyOp, signer: &SecretKey) -> KeyLogEntry {
    let (seq, prev) = log.next_position();
    KeyLogEntry {
        handle: log.handle().clone(),
        seq,
        prev: Some(prev),
        ts: log.head().entry().ts + 1000,
        op,
        signer: signer.public().key_id(),
    }
}

#[test]
fn sign_refuses_an_entry_without_the_proof_it_needs() {
    let (k1, k2, r1) = (sk(1), sk(2), sk(3));
    let reg = register(&k1, Some(&r1));
    assert_eq!(
        reg.sign(&k1, &[]),
        Err(SignError::MissingProof {
            field: "recovery_sig",
            key: r1.public().key_id()
        })
    );
    let log = KeyLog::start(reg.sign(&k1, &[&r1]).unwrap()).unwrap();
    let rot = next(&log, KeyOp::Rotate { key: k2.public() }, &k1);
    assert_eq!(
        rot.sign(&k1, &[]),
        Err(SignError::MissingProof {
            field: "key_sig",
            key: k2.public().key_id()
        })
    );
    let rec = next(
        &log,
        KeyOp::Recover {
            key: k2.public(),
            recovery: Some(sk(4).public()),
        },
        &r1,
    );
    assert_eq!(
        rec.sign(&r1, &[&k2]),
        Err(SignError::MissingProof {
            field: "recovery_sig",
            key: sk(4).public().key_id()
        })
    );
}

#[test]
fn sign_refuses_a_secret_key_that_the_entry_does_not_introduce() {
    let (k1, k2, other) = (sk(1), sk(2), sk(9));
    // A register's own key is proven by the entry's signature: it is not a proof holder.
    assert_eq!(
        register(&k1, None).sign(&k1, &[&k1]),
        Err(SignError::NotIntroduced(k1.public().key_id()))
    );
    let log = KeyLog::start(register(&k1, None).sign(&k1, &[]).unwrap()).unwrap();
    let rot = next(&log, KeyOp::Rotate { key: k2.public() }, &k1);
    assert_eq!(
        rot.sign(&k1, &[&other]),
        Err(SignError::NotIntroduced(other.public().key_id()))
    );
    assert_eq!(
        next(&log, KeyOp::Revoke, &k1).sign(&k1, &[&k2]),
        Err(SignError::NotIntroduced(k2.public().key_id()))
    );
}

#[test]
fn signed_entries_carry_proofs_that_verify_and_parse_back() {
    let (k1, k2, k3, r1, r2) = (sk(1), sk(2), sk(3), sk(4), sk(5));
    let mut log = KeyLog::start(register(&k1, Some(&r1)).sign(&k1, &[&r1]).unwrap()).unwrap();
    let steps = [
        (KeyOp::Rotate { key: k2.public() }, k1.clone(), vec![&k2]),
        (KeyOp::Revoke, k2.clone(), vec![]),
        (
            KeyOp::Recover {
                key: k3.public(),
                recovery: Some(r2.public()),
            },
            r1.clone(),
            // Any order.
            vec![&r2, &k3],
        ),
    ];
    for (op, signer, holders) in steps {
        let e = next(&log, op, &signer).sign(&signer, &holders).unwrap();
        log.append(e).unwrap();
    }
    assert_eq!(log.current_key(), Some(&k3.public()));
    assert_eq!(log.recovery_key(), Some(&r2.public()));
    for e in log.entries() {
        let back = SignedKeyLogEntry::parse(&e.wire_bytes(), JsonLimits::default()).unwrap();
        assert_eq!(&back, e);
        // The proofs sign the entry without them, the entry's signature covers them.
        assert_eq!(back.proof_input(), e.entry().proof_input());
        for (which, key) in e.entry().proved_keys() {
            let sig = e
                .proofs()
                .get(which)
                .expect("a proof for each introduced key");
            key.verify(
                Domain::KeyLogPop,
                &e.proof_input()[Domain::KeyLogPop.tag().len()..],
                sig,
            )
            .unwrap();
            let field = format!("\"{}\":\"{}\"", which.field(), sig.to_hex());
            let signed = String::from_utf8(e.signing_input().to_vec()).unwrap();
            assert!(signed.contains(&field), "{signed}");
        }
    }
    let kinds: Vec<usize> = log
        .entries()
        .iter()
        .map(|e| e.entry().proved_keys().len())
        .collect();
    assert_eq!(kinds, [1, 1, 0, 2]);
}

/// The finding of the outside attack run: an agent's rotate names another agent's public key.
#[test]
fn rotate_adopting_another_agents_key_is_refused() {
    let (kevin, nova) = (sk(1), sk(2));
    let log = KeyLog::start(register(&kevin, None).sign(&kevin, &[]).unwrap()).unwrap();
    let adopt = next(&log, KeyOp::Rotate { key: nova.public() }, &kevin);

    // Proven with the author's own key: bad_signature on `key_sig`.
    let own_proof = EntryProofs {
        key_sig: Some(kevin.sign_input(&adopt.proof_input())),
        recovery_sig: None,
    };
    let forged = adopt.sign_unchecked(&kevin, own_proof);
    let mut l = log.clone();
    let err = l.append(forged.clone()).unwrap_err();
    assert_eq!(
        err,
        KeyLogError::BadProof {
            seq: 1,
            field: "key_sig"
        }
    );
    assert_eq!(err.code(), ErrorCode::BadSignature);
    assert_eq!(l, log, "a refused entry leaves the log unchanged");
    // The same once it went over the wire.
    let wire = SignedKeyLogEntry::parse(&forged.wire_bytes(), JsonLimits::default()).unwrap();
    assert_eq!(
        log.check_next(&wire).unwrap_err().code(),
        ErrorCode::BadSignature
    );

    // Without any proof: missing_field, when parsed and when checked.
    let bare = adopt.sign_unchecked(&kevin, EntryProofs::default());
    assert_eq!(
        log.check_next(&bare).unwrap_err().code(),
        ErrorCode::MissingField
    );
    assert_eq!(
        SignedKeyLogEntry::parse(&bare.wire_bytes(), JsonLimits::default())
            .unwrap_err()
            .code(),
        ErrorCode::MissingField
    );

    // A proof by the named key under another domain does not count either.
    let wrong_domain = EntryProofs {
        key_sig: Some(nova.sign_input(
            &Domain::KeyLog.input(&adopt.proof_input()[Domain::KeyLogPop.tag().len()..]),
        )),
        recovery_sig: None,
    };
    assert_eq!(
        log.check_next(&adopt.sign_unchecked(&kevin, wrong_domain))
            .unwrap_err(),
        KeyLogError::BadProof {
            seq: 1,
            field: "key_sig"
        }
    );
}

#[test]
fn register_with_a_recovery_key_it_does_not_hold_is_refused() {
    let (k1, other_agents) = (sk(1), sk(2));
    let reg = register(&k1, Some(&other_agents));
    let forged = reg.sign_unchecked(
        &k1,
        EntryProofs {
            key_sig: None,
            recovery_sig: Some(k1.sign_input(&reg.proof_input())),
        },
    );
    assert_eq!(
        KeyLog::start(forged).unwrap_err(),
        KeyLogError::BadProof {
            seq: 0,
            field: "recovery_sig"
        }
    );
}
