//! Key log operations through `POST /v1/keys/{handle}` (API-6) and reads through
//! `GET /v1/keys/{handle}` (API-5): rotate, revoke, recover and move (LOG-5..9), key reuse
//! (LOG-13), forks kept as evidence (LOG-15), key validity at a time as the relay applies it to
//! envelopes and requests (LOG-12, AUTH-7), and keylogs.json re-created against the relay.

use super::*;
use crate::case::{case, Env};
use crate::target::random_key;
use formica_protocol::keylog::{EntryHash, KeyLogEntry, KeyOp};
use formica_protocol::{KeyLog, SecretKey, SignedKeyLogEntry};

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("keylog.rotate", &["API-6", "LOG-6", "LOG-2", "LOG-4", "LOG-10", "LOG-12", "API-5"], "a rotate signed by the current key is appended; the served log verifies; only the new key signs from its ts", rotate).codes(&[E::KeyNotValid]),
        case("keylog.validity-at-ts", &["LOG-12", "ENV-4", "TIME-4", "INGEST-1"], "each key signs exactly within its period: the old key before the rotation's ts, the new one from it", validity_at_ts).codes(&[E::KeyNotValid]),
        case("keylog.revoke-recover", &["LOG-7", "LOG-8", "LOG-12", "AUTH-7"], "after a revoke no key signs; a recover by the recovery key installs a new key", revoke_recover).codes(&[E::KeyNotValid, E::Unauthorized]),
        case("keylog.revoke-by-recovery", &["LOG-7"], "a revoke may be signed by the recovery key", revoke_by_recovery),
        case("keylog.move", &["LOG-9", "API-5", "LOG-12"], "a move closes the log: moved_to is set, no key is current, further entries are keylog_closed", move_closes).codes(&[E::KeylogClosed, E::KeyNotValid]),
        case("keylog.fork", &["LOG-15", "API-6", "ERR-3", "HTTP-7"], "a second valid entry at a taken position is kept as evidence and answered keylog_fork; the log is unchanged; a re-post of the accepted entry is duplicate", fork).codes(&[E::KeylogFork]),
        case("keylog.stale", &["TIME-1", "TIME-4", "API-6"], "a key log entry older than the window is stale", |e| entry_time(e, true)).codes(&[E::Stale]),
        case("keylog.future", &["TIME-2", "TIME-4", "API-6"], "a key log entry ahead of the skew is future", |e| entry_time(e, false)).codes(&[E::Future]),
        case("keylog.not-found", &["API-6"], "an entry for a handle not registered here is not_found", not_found).codes(&[E::NotFound]),
        case("keylog.path-handle", &["API-6", "HTTP-9"], "an invalid handle in the path is invalid_handle", |e| {
            let t = e.t;
            let a = t.register("kph")?;
            let entry = rotate_fresh(&a, 1, &a.head, a.reg_ts + 1, &a.key)?;
            t.http.post("/v1/keys/@Not-Valid@x", &entry.wire_bytes())?.expect_error(ErrorCode::InvalidHandle)?;
            Ok(())
        })
        .codes(&[E::InvalidHandle]),
        case("keylog.limit", &["LOG-11"], "a key log holds at most 4096 entries; the 4097th is too_large", limit).codes(&[E::TooLarge]),
    ]
}

/// An entry extending `a`'s log at `seq` after `prev`, signed by `signer`, with the proofs of
/// possession made by `holders`: the secret keys of the keys `op` introduces (LOG-2).
pub fn next(
    a: &Agent,
    seq: i64,
    prev: &str,
    ts: i64,
    op: KeyOp,
    signer: &SecretKey,
    holders: &[&SecretKey],
) -> R<SignedKeyLogEntry> {
    let entry = KeyLogEntry {
        handle: a.handle.clone(),
        seq,
        prev: EntryHash::parse_hex(prev),
        ts,
        op,
        signer: signer.public().key_id(),
    };
    sign_entry(&entry, signer, holders)
}

/// A rotate of `a`'s log at `seq` after `prev` to a fresh key (with its proof), signed by
/// `signer`.
pub fn rotate_fresh(
    a: &Agent,
    seq: i64,
    prev: &str,
    ts: i64,
    signer: &SecretKey,
) -> R<SignedKeyLogEntry> {
    let k = random_key();
    next(
        a,
        seq,
        prev,
        ts,
        KeyOp::Rotate { key: k.public() },
        signer,
        &[&k],
    )
}

pub fn post_entry(t: &Target, a: &Agent, entry: &SignedKeyLogEntry) -> R<Resp> {
    t.http
        .post(&format!("/v1/keys/{}", a.handle), &entry.wire_bytes())
}

/// Posts an entry that must be appended: 201 with its seq and hash (API-6).
pub fn append(t: &Target, a: &Agent, entry: &SignedKeyLogEntry) -> R<()> {
    let r = post_entry(t, a, entry)?;
    r.expect_json(201)?;
    ensure!(
        r.int_member("seq")? == entry.entry().seq,
        "{}: seq {} (API-6)",
        r.what,
        r.int_member("seq")?
    );
    ensure!(
        r.str_member("head")? == entry.hash().to_hex(),
        "{}: head {} is not the entry hash {} (LOG-4)",
        r.what,
        r.str_member("head")?,
        entry.hash().to_hex()
    );
    Ok(())
}

/// The served log of `a`, verified from its first entry (LOG-10) and compared with the relay's
/// conveniences (API-5).
pub fn served_log(t: &Target, a: &Agent) -> R<(KeyLog, Value)> {
    let g = t.http.get(&format!("/v1/keys/{}", a.handle))?;
    let v = g.expect_json(200)?.clone();
    let entries = at(&v, &["entries"])
        .and_then(Value::as_array)
        .unwrap_or(&[])
        .to_vec();
    for en in &entries {
        expect_raw_contains(&g, &canon::canonicalize(en), "a key log entry")?;
    }
    let parsed: Vec<_> = entries
        .into_iter()
        .map(SignedKeyLogEntry::from_value)
        .collect::<Result<_, _>>()
        .map_err(|err| Stop::Fail(format!("{}: an entry does not parse: {err}", g.what)))?;
    let log = KeyLog::verify(parsed).map_err(|err| {
        Stop::Fail(format!(
            "{}: the served log does not verify from its first entry: {err} (LOG-10)",
            g.what
        ))
    })?;
    ensure!(
        at(&v, &["head"]) == Some(&s(&log.head().hash().to_hex())),
        "{}: head is not the last entry's hash (API-5)",
        g.what
    );
    let cur = log
        .current_key()
        .map(|k| s(&k.to_hex()))
        .unwrap_or(Value::Null);
    ensure!(
        at(&v, &["current_key"]) == Some(&cur),
        "{}: current_key {:?}, the log says {:?} (API-5)",
        g.what,
        at(&v, &["current_key"]),
        cur
    );
    let moved = log.moved_to().map(|h| s(h.as_str())).unwrap_or(Value::Null);
    ensure!(
        at(&v, &["moved_to"]) == Some(&moved),
        "{}: moved_to {:?}, the log says {:?} (API-5)",
        g.what,
        at(&v, &["moved_to"]),
        moved
    );
    Ok((log, v))
}

/// A message from `a` to itself signed by `sk` (named as the key) at `ts`.
fn signed_at(t: &Target, a: &Agent, sk: &SecretKey, ts: i64) -> Signed {
    let o = with(
        t.envelope_at(a, "message", &[&a.handle], text(t), ts),
        "key",
        s(&sk.public().key_id().to_hex()),
    );
    sign_as(&o, sk, Domain::Envelope)
}

fn rotate(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("krot")?;
    let k2 = random_key();
    let ts = t.now().max(a.reg_ts + 1);
    let entry = next(
        &a,
        1,
        &a.head,
        ts,
        KeyOp::Rotate { key: k2.public() },
        &a.key,
        &[&k2],
    )?;
    append(t, &a, &entry)?;
    let (log, _) = served_log(t, &a)?;
    ensure!(
        log.entries().len() == 2,
        "the served log has {} entries after a rotate (API-5)",
        log.entries().len()
    );
    ensure!(
        log.current_key() == Some(&k2.public()),
        "the served log's current key is not the rotated-to key (LOG-6)"
    );
    let now = t.now().max(ts);
    refuse(
        t,
        &signed_at(t, &a, &a.key, now).wire,
        ErrorCode::KeyNotValid,
    )?;
    t.send_ok(&signed_at(t, &a, &k2, now))?;
    Ok(())
}

fn validity_at_ts(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("kval")?;
    let k2 = random_key();
    // The rotation takes effect a little in the future (within the skew), so both sides of
    // its ts are fresh now.
    let t1 = t.now() + (t.published.skew_ms / 2).min(5000);
    append(
        t,
        &a,
        &next(
            &a,
            1,
            &a.head,
            t1,
            KeyOp::Rotate { key: k2.public() },
            &a.key,
            &[&k2],
        )?,
    )?;
    let before = t.now().max(a.reg_ts);
    t.send_ok(&signed_at(t, &a, &a.key, before))
        .map_err(|err| match err {
            Stop::Fail(m) => Stop::Fail(format!(
                "the old key at ts {before}, before the rotation at {t1}: {m} (LOG-12)"
            )),
            other => other,
        })?;
    refuse(
        t,
        &signed_at(t, &a, &k2, before).wire,
        ErrorCode::KeyNotValid,
    )?;
    refuse(
        t,
        &signed_at(t, &a, &a.key, t1).wire,
        ErrorCode::KeyNotValid,
    )?;
    t.send_ok(&signed_at(t, &a, &k2, t1))?;
    Ok(())
}

fn revoke_recover(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("krev")?;
    let rec = a
        .recovery
        .clone()
        .ok_or_else(|| Stop::Fail("no recovery key".into()))?;
    let t1 = t.now().max(a.reg_ts + 1);
    let revoke = next(&a, 1, &a.head, t1, KeyOp::Revoke, &a.key, &[])?;
    append(t, &a, &revoke)?;
    let (log, _) = served_log(t, &a)?;
    ensure!(
        log.current_key().is_none(),
        "after a revoke the served log still has a current key (LOG-7)"
    );
    refuse(
        t,
        &signed_at(t, &a, &a.key, t1 + 1).wire,
        ErrorCode::KeyNotValid,
    )?;
    let path = "/v1/inbox";
    let h = t.auth_header_with(
        &a.key,
        &a.handle,
        "GET",
        path,
        b"",
        t1 + 1,
        crate::target::random_nonce(),
        &t.host,
    );
    t.http
        .send(
            "GET",
            path,
            &[("authorization", h)],
            crate::http::Body::None,
        )?
        .expect_error(ErrorCode::Unauthorized)?;
    let k3 = random_key();
    let rec2 = random_key();
    let recover = next(
        &a,
        2,
        &revoke.hash().to_hex(),
        t1 + 2,
        KeyOp::Recover {
            key: k3.public(),
            recovery: Some(rec2.public()),
        },
        &rec,
        &[&k3, &rec2],
    )?;
    append(t, &a, &recover)?;
    let (log, v) = served_log(t, &a)?;
    ensure!(
        log.current_key() == Some(&k3.public()),
        "after recover the current key is not the recovered key (LOG-8)"
    );
    ensure!(
        at(&v, &["recovery_key"]) == Some(&s(&rec2.public().to_hex())),
        "after recover with a new recovery key, recovery_key is {:?} (LOG-8, API-5)",
        at(&v, &["recovery_key"])
    );
    let ts = (t1 + 2).max(t.now());
    t.send_ok(&signed_at(t, &a, &k3, ts))?;
    Ok(())
}

fn revoke_by_recovery(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("krr")?;
    let rec = a
        .recovery
        .clone()
        .ok_or_else(|| Stop::Fail("no recovery key".into()))?;
    append(
        t,
        &a,
        &next(
            &a,
            1,
            &a.head,
            t.now().max(a.reg_ts + 1),
            KeyOp::Revoke,
            &rec,
            &[],
        )?,
    )?;
    let (log, _) = served_log(t, &a)?;
    ensure!(
        log.current_key().is_none(),
        "after a revoke the served log still has a current key (LOG-7)"
    );
    Ok(())
}

fn move_closes(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("kmov")?;
    let to = Handle::parse(&format!("@{}@elsewhere.example", a.handle.name().as_str()))
        .map_err(|err| Stop::Fail(err.to_string()))?;
    let t1 = t.now().max(a.reg_ts + 1);
    let mv = next(
        &a,
        1,
        &a.head,
        t1,
        KeyOp::Move { to: to.clone() },
        &a.key,
        &[],
    )?;
    append(t, &a, &mv)?;
    let (log, v) = served_log(t, &a)?;
    ensure!(
        log.moved_to() == Some(&to) && at(&v, &["moved_to"]) == Some(&s(to.as_str())),
        "after a move, moved_to is {:?} (LOG-9, API-5)",
        at(&v, &["moved_to"])
    );
    ensure!(
        at(&v, &["current_key"]) == Some(&Value::Null),
        "after a move, current_key is {:?} (LOG-9)",
        at(&v, &["current_key"])
    );
    let after = rotate_fresh(&a, 2, &mv.hash().to_hex(), t1 + 1, &a.key)?;
    post_entry(t, &a, &after)?.expect_error(ErrorCode::KeylogClosed)?;
    refuse(
        t,
        &signed_at(t, &a, &a.key, t1 + 1).wire,
        ErrorCode::KeyNotValid,
    )?;
    Ok(())
}

fn fork(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("kfrk")?;
    let ts = t.now().max(a.reg_ts + 1);
    let r1 = rotate_fresh(&a, 1, &a.head, ts, &a.key)?;
    append(t, &a, &r1)?;
    let r2 = rotate_fresh(&a, 1, &a.head, ts + 1, &a.key)?;
    post_entry(t, &a, &r2)?.expect_error(ErrorCode::KeylogFork)?;
    let (log, v) = served_log(t, &a)?;
    ensure!(
        log.head().hash() == r1.hash(),
        "after a fork attempt the head is not the accepted entry (LOG-15: never replace)"
    );
    let conflicts = at(&v, &["conflicts"])
        .and_then(Value::as_array)
        .unwrap_or(&[])
        .to_vec();
    ensure!(
        conflicts.contains(r2.value()),
        "the conflicting entry is not served under `conflicts`: {:?} (LOG-15, API-5)",
        conflicts.len()
    );
    post_entry(t, &a, &r2)?.expect_error(ErrorCode::KeylogFork)?;
    let d = post_entry(t, &a, &r1)?;
    d.expect_json(200)?;
    ensure!(
        d.str_member("result")? == "duplicate",
        "{}: re-posting the accepted entry answered {} (API-6 step 8)",
        d.what,
        d.brief()
    );
    Ok(())
}

fn entry_time(e: &Env<'_>, stale: bool) -> R {
    let t = e.t;
    let a = e.fixture("keylog-base", |t| t.register("kbase"))?;
    let ts = if stale {
        t.now() - t.published.window_ms - 30_000
    } else {
        t.now() + t.published.skew_ms + 30_000
    };
    let entry = rotate_fresh(&a, 1, &a.head, ts, &a.key)?;
    let r = post_entry(t, &a, &entry)?;
    r.expect_error(if stale {
        ErrorCode::Stale
    } else {
        ErrorCode::Future
    })?;
    Ok(())
}

fn not_found(e: &Env<'_>) -> R {
    let t = e.t;
    let k = random_key();
    let ghost = Agent {
        handle: t.fresh_handle("kghost"),
        key: k.clone(),
        recovery: None,
        reg_ts: 0,
        head: "00".repeat(32),
    };
    let entry = rotate_fresh(&ghost, 1, &ghost.head, t.now(), &k)?;
    post_entry(t, &ghost, &entry)?.expect_error(ErrorCode::NotFound)?;
    Ok(())
}

/// LOG-11: 4095 rotations, then one more. Bounded: stops at the first refusal.
fn limit(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("klim")?;
    let mut prev = a.head.clone();
    let mut cur = a.key.clone();
    let t0 = t.now().max(a.reg_ts + 1);
    let started = std::time::Instant::now();
    for seq in 1..=4096i64 {
        let k = random_key();
        let entry = next(
            &a,
            seq,
            &prev,
            t0 + seq,
            KeyOp::Rotate { key: k.public() },
            &cur,
            &[&k],
        )?;
        let r = post_entry(t, &a, &entry)?;
        if seq == 4096 {
            r.expect_error(ErrorCode::TooLarge)?;
            return Ok(());
        }
        if r.status != 201 {
            fail!(
                "rotation {seq} of a 4096-entry log was refused: {} (LOG-11 allows seq 0..=4095)",
                r.brief()
            );
        }
        if started.elapsed() > std::time::Duration::from_secs(240) {
            fail!("4096 key log entries took more than 240 s; stopped at seq {seq}");
        }
        prev = entry.hash().to_hex();
        cur = k;
    }
    Ok(())
}

// ------------------------------------------------------------------ keylogs.json

/// keylogs.json `valid`: the same sequence of operations, made by a fresh agent, is accepted
/// entry by entry and served as a log that verifies.
pub fn vector_valid(i: usize, c: &Value) -> Case {
    let cm = crate::vectors::field(c, "comment").unwrap_or("").to_owned();
    let ops: Vec<(String, bool)> = at(c, &["entries"])
        .and_then(Value::as_array)
        .unwrap_or(&[])
        .iter()
        .map(|en| {
            (
                at(en, &["op"])
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                at(en, &["recovery"]).is_some(),
            )
        })
        .collect();
    let comment_l = cm.to_ascii_lowercase();
    case(format!("vec.keylogs.valid.{i}"), &["LOG-1", "LOG-5", "LOG-6", "LOG-7", "LOG-8", "LOG-9", "LOG-10", "API-6", "VEC-2"], format!("keylogs.json: {cm}: the same operations are accepted and served as a log that verifies"), move |e| {
        let t = e.t;
        let a = t.register("kvv")?;
        let mut cur = Some(a.key.clone());
        let mut rec = a.recovery.clone();
        let mut prev = a.head.clone();
        let ts0 = t.now().max(a.reg_ts + 1);
        // The recovery-signed revoke is the first revoke when the comment says so.
        let mut revokes = 0;
        for (seq, (op, has_rec)) in ops.iter().enumerate().skip(1) {
            let seq = seq as i64;
            let ts = ts0 + seq;
            // The entry, its signer and the holders of the keys it introduces (LOG-2).
            let (kop, signer, holders): (KeyOp, SecretKey, Vec<SecretKey>) = match op.as_str() {
                "rotate" => {
                    let k = random_key();
                    let s = cur.clone().ok_or_else(|| Stop::Fail("rotate without a current key".into()))?;
                    cur = Some(k.clone());
                    (KeyOp::Rotate { key: k.public() }, s, vec![k])
                }
                "revoke" => {
                    revokes += 1;
                    let by_rec = comment_l.contains("revoke by the recovery key") && revokes == 1;
                    let s = if by_rec { rec.clone() } else { cur.clone() }.ok_or_else(|| Stop::Fail("revoke without a signer".into()))?;
                    cur = None;
                    (KeyOp::Revoke, s, vec![])
                }
                "recover" => {
                    let k = random_key();
                    let new_rec = has_rec.then(random_key);
                    let s = rec.clone().ok_or_else(|| Stop::Fail("recover without a recovery key".into()))?;
                    cur = Some(k.clone());
                    if let Some(r) = &new_rec {
                        rec = Some(r.clone());
                    }
                    let op = KeyOp::Recover { key: k.public(), recovery: new_rec.as_ref().map(SecretKey::public) };
                    (op, s, std::iter::once(k).chain(new_rec).collect())
                }
                "move" => {
                    let to = Handle::parse(&format!("@{}@elsewhere.example", a.handle.name().as_str())).map_err(|err| Stop::Fail(err.to_string()))?;
                    let s = cur.clone().ok_or_else(|| Stop::Fail("move without a current key".into()))?;
                    cur = None;
                    (KeyOp::Move { to }, s, vec![])
                }
                other => skip!("no re-creation for op {other:?}"),
            };
            let entry = next(&a, seq, &prev, ts, kop, &signer, &holders.iter().collect::<Vec<_>>())?;
            append(t, &a, &entry)?;
            prev = entry.hash().to_hex();
        }
        let (log, _) = served_log(t, &a)?;
        ensure!(log.entries().len() == ops.len().max(1), "the served log has {} entries, expected {} (API-5)", log.entries().len(), ops.len());
        Ok(())
    })
}

/// keylogs.json `invalid`, re-created against the relay where an HTTP request can carry the
/// fault: a register entry through `/v1/register`, a later entry through `/v1/keys/{handle}`.
pub fn vector_invalid(i: usize, c: &Value) -> Case {
    let cm = crate::vectors::field(c, "comment").unwrap_or("").to_owned();
    let l = cm.to_ascii_lowercase();
    let code = crate::vectors::field(c, "error")
        .and_then(ErrorCode::from_wire)
        .unwrap_or(ErrorCode::Internal);
    let id = format!("vec.keylogs.invalid.{i}");
    let title = format!("keylogs.json: {cm}: re-created against the relay");
    type F = fn(&Env<'_>) -> R;
    use ErrorCode as E;
    if let Some((reqs, codes, f)) = super::proofs::vector_recreation(&l) {
        return case(id, reqs, title, f).codes(codes);
    }
    let (reqs, codes, f): (&'static [&'static str], &'static [ErrorCode], F) =
        if l.contains("first entry is not a register") {
            (&["LOG-5", "REG-1", "VEC-2"], &[E::InvalidField], |e| {
                let t = e.t;
                let h = t.fresh_handle("kvi");
                let k = random_key();
                let entry = sign_entry(
                    &KeyLogEntry {
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
                reg(t, entry.value())?.expect_error_field(E::InvalidField, "entry.op")?;
                Ok(())
            })
        } else if l.contains("first entry with a prev") {
            (&["LOG-1", "REG-1", "VEC-2"], &[E::KeylogBrokenChain], |e| {
                let t = e.t;
                let (h, k) = (t.fresh_handle("kvi"), random_key());
                let entry = sign_entry(
                    &KeyLogEntry {
                        handle: h,
                        seq: 0,
                        prev: EntryHash::parse_hex(&"ab".repeat(32)),
                        ts: t.now(),
                        op: KeyOp::Register {
                            key: k.public(),
                            recovery: None,
                        },
                        signer: k.public().key_id(),
                    },
                    &k,
                    &[],
                )?;
                reg(t, entry.value())?.expect_error(E::KeylogBrokenChain)?;
                Ok(())
            })
        } else if l.contains("skips a number") {
            (
                &["LOG-10", "API-6", "VEC-2"],
                &[E::KeylogBrokenChain],
                |e| {
                    on_base(
                        e,
                        |t, a| rotate_fresh(a, 2, &a.head, t.now().max(a.reg_ts + 1), &a.key),
                        E::KeylogBrokenChain,
                    )
                },
            )
        } else if l.contains("prev is not the hash") {
            (
                &["LOG-10", "LOG-4", "API-6", "VEC-2"],
                &[E::KeylogBrokenChain],
                |e| {
                    on_base(
                        e,
                        |t, a| {
                            let ts = t.now().max(a.reg_ts + 1);
                            rotate_fresh(a, 1, &"cd".repeat(32), ts, &a.key)
                        },
                        E::KeylogBrokenChain,
                    )
                },
            )
        } else if l.contains("timestamp equal") {
            (&["LOG-10", "API-6", "VEC-2"], &[E::KeylogTimeOrder], |e| {
                on_base(
                    e,
                    |_, a| rotate_fresh(a, 1, &a.head, a.reg_ts, &a.key),
                    E::KeylogTimeOrder,
                )
            })
        } else if l.contains("rotate signed by the recovery key") {
            (
                &["LOG-6", "API-6", "VEC-2"],
                &[E::KeylogUnauthorizedSigner],
                |e| {
                    on_base(
                        e,
                        |t, a| {
                            rotate_fresh(
                                a,
                                1,
                                &a.head,
                                t.now().max(a.reg_ts + 1),
                                a.recovery.as_ref().unwrap_or(&a.key),
                            )
                        },
                        E::KeylogUnauthorizedSigner,
                    )
                },
            )
        } else if l.contains("recover signed by the current key") {
            (
                &["LOG-8", "API-6", "VEC-2"],
                &[E::KeylogUnauthorizedSigner],
                |e| {
                    on_base(
                        e,
                        |t, a| {
                            let k = random_key();
                            next(
                                a,
                                1,
                                &a.head,
                                t.now().max(a.reg_ts + 1),
                                KeyOp::Recover {
                                    key: k.public(),
                                    recovery: None,
                                },
                                &a.key,
                                &[&k],
                            )
                        },
                        E::KeylogUnauthorizedSigner,
                    )
                },
            )
        } else if l.contains("without a recovery key") {
            (
                &["LOG-8", "API-6", "VEC-2"],
                &[E::KeylogUnauthorizedSigner],
                |e| {
                    let t = e.t;
                    let a = t.register_opts("kvnr", false)?;
                    let stranger = random_key();
                    let k = random_key();
                    let entry = next(
                        &a,
                        1,
                        &a.head,
                        t.now().max(a.reg_ts + 1),
                        KeyOp::Recover {
                            key: k.public(),
                            recovery: None,
                        },
                        &stranger,
                        &[&k],
                    )?;
                    post_entry(t, &a, &entry)?.expect_error(E::KeylogUnauthorizedSigner)?;
                    Ok(())
                },
            )
        } else if l.contains("revoke when no key is current") {
            (
                &["LOG-7", "API-6", "VEC-2"],
                &[E::KeylogUnauthorizedSigner],
                |e| {
                    let t = e.t;
                    let a = t.register("kvrv")?;
                    let rec = a
                        .recovery
                        .clone()
                        .ok_or_else(|| Stop::Fail("no recovery key".into()))?;
                    let ts = t.now().max(a.reg_ts + 1);
                    let r1 = next(&a, 1, &a.head, ts, KeyOp::Revoke, &a.key, &[])?;
                    append(t, &a, &r1)?;
                    let r2 = next(&a, 2, &r1.hash().to_hex(), ts + 1, KeyOp::Revoke, &rec, &[])?;
                    post_entry(t, &a, &r2)?.expect_error(E::KeylogUnauthorizedSigner)?;
                    Ok(())
                },
            )
        } else if l.contains("register signed by a key other") {
            (
                &["LOG-5", "REG-1", "VEC-2"],
                &[E::KeylogUnauthorizedSigner],
                |e| {
                    let t = e.t;
                    let (h, k, other) = (t.fresh_handle("kvi"), random_key(), random_key());
                    reg(t, t.register_entry(&h, &k, None, t.now(), &other)?.value())?
                        .expect_error(E::KeylogUnauthorizedSigner)?;
                    Ok(())
                },
            )
        } else if l.contains("envelope tag instead of the key-log tag") {
            (
                &["LOG-10", "SIG-1", "SIG-3", "API-6", "VEC-2"],
                &[E::BadSignature],
                |e| {
                    let t = e.t;
                    let a = base(e)?;
                    let entry = rotate_fresh(&a, 1, &a.head, t.now().max(a.reg_ts + 1), &a.key)?;
                    // The same entry signed by the right key under the envelope tag.
                    let mut v = entry.value().clone();
                    if let Value::Object(o) = &mut v {
                        o.remove("sig");
                    }
                    let sig = a.key.sign(Domain::Envelope, &canon::canonicalize(&v));
                    if let Value::Object(o) = &mut v {
                        o.insert("sig", s(&sig.to_hex()));
                    }
                    t.http
                        .post(&format!("/v1/keys/{}", a.handle), &canon::canonicalize(&v))?
                        .expect_error(E::BadSignature)?;
                    Ok(())
                },
            )
        } else if l.contains("corrupted signature") {
            (
                &["LOG-10", "SIG-3", "API-6", "VEC-2"],
                &[E::BadSignature],
                |e| {
                    let t = e.t;
                    let a = base(e)?;
                    let entry = rotate_fresh(&a, 1, &a.head, t.now().max(a.reg_ts + 1), &a.key)?;
                    let mut v = entry.value().clone();
                    if let Value::Object(o) = &mut v {
                        let sig = o
                            .get("sig")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned();
                        o.insert("sig", s(&super::descriptor::flip_hex(&sig)));
                    }
                    t.http
                        .post(&format!("/v1/keys/{}", a.handle), &canon::canonicalize(&v))?
                        .expect_error(E::BadSignature)?;
                    Ok(())
                },
            )
        } else if l.contains("rotate back to a key used before") {
            (&["LOG-13", "API-6", "VEC-2"], &[E::KeylogKeyReused], |e| {
                let t = e.t;
                let a = t.register("kvku")?;
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
                append(t, &a, &r1)?;
                let r2 = next(
                    &a,
                    2,
                    &r1.hash().to_hex(),
                    ts + 1,
                    KeyOp::Rotate {
                        key: a.key.public(),
                    },
                    &k2,
                    &[&a.key],
                )?;
                post_entry(t, &a, &r2)?.expect_error(E::KeylogKeyReused)?;
                Ok(())
            })
        } else if l.contains("recovery key equal to the signing key") {
            (
                &["LOG-5", "LOG-13", "REG-1", "VEC-2"],
                &[E::KeylogKeyReused],
                |e| {
                    let t = e.t;
                    let (h, k) = (t.fresh_handle("kvi"), random_key());
                    reg(t, t.register_entry(&h, &k, Some(&k), t.now(), &k)?.value())?
                        .expect_error(E::KeylogKeyReused)?;
                    Ok(())
                },
            )
        } else if l.contains("after a move") {
            (&["LOG-9", "API-6", "VEC-2"], &[E::KeylogClosed], |e| {
                move_closes(e).map(|_| ())
            })
        } else if l.contains("another handle") {
            (
                &["LOG-10", "API-6", "VEC-2"],
                &[E::KeylogHandleMismatch],
                |e| {
                    let t = e.t;
                    let a = base(e)?;
                    let other = Agent {
                        handle: t.fresh_handle("kvother"),
                        ..(*a).clone()
                    };
                    let ts = t.now().max(a.reg_ts + 1);
                    let entry = rotate_fresh(&other, 1, &a.head, ts, &a.key)?;
                    post_entry(t, &a, &entry)?.expect_error(E::KeylogHandleMismatch)?;
                    Ok(())
                },
            )
        } else if l.contains("weak") {
            (&["KEY-2", "API-6", "VEC-2"], &[E::WeakKey], |e| {
                let t = e.t;
                let a = base(e)?;
                let entry = rotate_fresh(&a, 1, &a.head, t.now().max(a.reg_ts + 1), &a.key)?;
                let mut v = entry.value().clone();
                if let Value::Object(o) = &mut v {
                    // The identity point: canonical, small order.
                    o.insert("key", s(&format!("01{}", "00".repeat(31))));
                }
                t.http
                    .post(&format!("/v1/keys/{}", a.handle), &canon::canonicalize(&v))?
                    .expect_error(E::WeakKey)?;
                Ok(())
            })
        } else if l.contains("unknown field") {
            (
                &["LOG-3", "ENV-9", "API-6", "VEC-2"],
                &[E::UnknownField],
                |e| {
                    let t = e.t;
                    let a = base(e)?;
                    let ts = t.now().max(a.reg_ts + 1);
                    let mut o = match rotate_fresh(&a, 1, &a.head, ts, &a.key)?.value().clone() {
                        Value::Object(o) => o,
                        _ => fail!("unreachable"),
                    };
                    o.remove("sig");
                    o.insert("recovery", s(&random_key().public().to_hex()));
                    let sg = sign_as(&o, &a.key, Domain::KeyLog);
                    let mut v = sg.value.clone();
                    if let Value::Object(x) = &mut v {
                        x.remove("id");
                    }
                    t.http
                        .post(&format!("/v1/keys/{}", a.handle), &canon::canonicalize(&v))?
                        .expect_error_field(E::UnknownField, "recovery")?;
                    Ok(())
                },
            )
        } else if l.contains("second register") {
            (&["LOG-5", "API-6", "VEC-2"], &[E::InvalidField], |e| {
                let t = e.t;
                let a = base(e)?;
                let k = random_key();
                let entry = sign_entry(
                    &KeyLogEntry {
                        handle: a.handle.clone(),
                        seq: 1,
                        prev: EntryHash::parse_hex(&a.head),
                        ts: t.now().max(a.reg_ts + 1),
                        op: KeyOp::Register {
                            key: k.public(),
                            recovery: None,
                        },
                        signer: k.public().key_id(),
                    },
                    &k,
                    &[],
                )?;
                post_entry(t, &a, &entry)?.expect_error_field(E::InvalidField, "op")?;
                Ok(())
            })
        } else if l.contains("move to the log's own handle") {
            (
                &["LOG-10", "LOG-9", "API-6", "VEC-2"],
                &[E::InvalidField],
                |e| {
                    on_base(
                        e,
                        |t, a| {
                            next(
                                a,
                                1,
                                &a.head,
                                t.now().max(a.reg_ts + 1),
                                KeyOp::Move {
                                    to: a.handle.clone(),
                                },
                                &a.key,
                                &[],
                            )
                        },
                        E::InvalidField,
                    )
                },
            )
        } else if l.contains("empty log") {
            (&["LOG-10", "REG-1", "VEC-2"], &[E::MissingField], |e| {
                let t = e.t;
                t.post_ip_limited("/v1/register", b"{}")?
                    .expect_error_field(E::MissingField, "entry")?;
                Ok(())
            })
        } else if l.contains("without a key") {
            (&["LOG-1", "REG-1", "VEC-2"], &[E::MissingField], |e| {
                let t = e.t;
                let (h, k) = (t.fresh_handle("kvi"), random_key());
                let mut v = t.register_entry(&h, &k, None, t.now(), &k)?.value().clone();
                if let Value::Object(o) = &mut v {
                    o.remove("key");
                }
                reg(t, &v)?.expect_error_field(E::MissingField, "entry.key")?;
                Ok(())
            })
        } else if let Some(f) = wrong_type_recreation(&l) {
            (
                &["LOG-1", "LOG-3", "REG-1", "API-6", "VEC-2"],
                &[E::InvalidField],
                f,
            )
        } else {
            (&["VEC-2"], &[], |_| {
                Err(Stop::Skip(
                    "no re-creation of this key log vector is known to this version of the suite"
                        .into(),
                ))
            })
        };
    let _ = code;
    case(id, reqs, title, f).codes(codes)
}

/// The keylogs.json cases of a register entry with one member of the wrong JSON type or
/// range (LOG-1), by their comment.
fn wrong_type_recreation(comment: &str) -> Option<fn(&Env<'_>) -> R> {
    let f: fn(&Env<'_>) -> R = if comment.contains("whose `v` is a string") {
        |e| wrong_member(e, "v", s("1"))
    } else if comment.contains("whose `v` is a negative") {
        |e| wrong_member(e, "v", int(-1))
    } else if comment.contains("whose `handle` is a number") {
        |e| wrong_member(e, "handle", int(1))
    } else if comment.contains("whose `ts` is a string") {
        |e| wrong_member(e, "ts", s(&e.t.now().to_string()))
    } else if comment.contains("whose `ts` is a negative") {
        |e| wrong_member(e, "ts", int(-1))
    } else if comment.contains("whose `op` is a number") {
        |e| wrong_member(e, "op", int(0))
    } else {
        return None;
    };
    Some(f)
}

/// `entry` with `member` set to `bad`, signed again by `key` (so only the member is wrong).
pub(super) fn with_member(entry: &Value, member: &str, bad: &Value, key: &SecretKey) -> R<Value> {
    let mut o = match entry {
        Value::Object(o) => o.clone(),
        _ => fail!("suite bug: an entry that is not an object"),
    };
    o.remove("sig");
    o.insert(member, bad.clone());
    let mut v = sign_as(&o, key, Domain::KeyLog).value;
    if let Value::Object(x) = &mut v {
        x.remove("id");
    }
    Ok(v)
}

/// A wrongly typed member is invalid_field, with its path, both in an entry posted to the
/// shared agent's log (API-6) and in a registration (REG-1 step 5, path `entry.<member>`).
fn wrong_member(e: &Env<'_>, member: &str, bad: Value) -> R {
    let t = e.t;
    let a = base(e)?;
    let rotate = rotate_fresh(&a, 1, &a.head, t.now().max(a.reg_ts + 1), &a.key)?;
    let v = with_member(rotate.value(), member, &bad, &a.key)?;
    t.http
        .post(&format!("/v1/keys/{}", a.handle), &canon::canonicalize(&v))?
        .expect_error_field(ErrorCode::InvalidField, member)?;
    let (h, k) = (t.fresh_handle("kvt"), random_key());
    let register = t.register_entry(&h, &k, None, t.now(), &k)?;
    let v = with_member(register.value(), member, &bad, &k)?;
    reg(t, &v)?.expect_error_field(ErrorCode::InvalidField, &format!("entry.{member}"))?;
    Ok(())
}

/// Posts a registration of `entry` with a proof whose challenge was never issued: every check
/// before the challenge (REG-1 steps 1-11) is reached.
pub(super) fn reg(t: &Target, entry: &Value) -> R<Resp> {
    let body = obj(vec![
        ("entry", entry.clone()),
        (
            "pow",
            obj(vec![
                ("challenge", s(&"0".repeat(32))),
                ("difficulty", int(0)),
                ("nonce", int(0)),
            ]),
        ),
    ]);
    t.post_ip_limited("/v1/register", &canon::canonicalize(&body))
}

pub(super) fn base(e: &Env<'_>) -> R<std::sync::Arc<Agent>> {
    e.fixture("keylog-base", |t| t.register("kbase"))
}

/// Posts the entry `make` builds against the shared agent (whose log stays at its register
/// entry: every such entry is refused) and requires `code`.
fn on_base(
    e: &Env<'_>,
    make: impl Fn(&Target, &Agent) -> R<SignedKeyLogEntry>,
    code: ErrorCode,
) -> R {
    let t = e.t;
    let a = base(e)?;
    let entry = make(t, &a)?;
    post_entry(t, &a, &entry)?.expect_error(code)?;
    Ok(())
}
