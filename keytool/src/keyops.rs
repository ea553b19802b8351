//! Key changes on a registered handle: `rotate`, `revoke` and `recover` (SPEC.md LOG-5..9).
//!
//! Each starts from the handle's log as the relay serves it, checked from the first entry, takes
//! `seq` and `prev` from its head, proves possession of the keys the entry introduces (LOG-2),
//! signs the new entry with the key the log says may sign it, checks locally that the entry
//! extends the log, and posts it to `POST /v1/keys/{handle}`.
//! New keys are staged beside the identity files before the post and put in force only after the
//! relay has accepted the entry (see `identity`).

use crate::client::Client;
use crate::identity::{self, Slot, Staged};
use crate::offline::now_ms;
use crate::online::{check_home, fetch_log, new_key, obj, stored_handle, Ctx};
use crate::output::{Exit, Fail};
use formica_protocol::keylog::{KeyLogEntry, KeyOp, SignedKeyLogEntry};
use formica_protocol::{ErrorCode, Handle, KeyLog, SecretKey, Value};

/// The next entry of `log`: its seq and prev follow the head, and its time is now (or just after
/// the head's, should this clock be behind it; LOG time order). `holders` are the secret keys of
/// the keys `op` introduces, for their proofs of possession.
pub(crate) fn next_entry(
    log: &KeyLog,
    op: KeyOp,
    signer: &SecretKey,
    holders: &[&SecretKey],
) -> Result<SignedKeyLogEntry, Fail> {
    let (seq, prev) = log.next_position();
    let ts = now_ms().max(log.head().entry().ts + 1);
    KeyLogEntry {
        handle: log.handle().clone(),
        seq,
        prev: Some(prev),
        ts,
        op,
        signer: signer.public().key_id(),
    }
    .sign(signer, holders)
    .map_err(|e| Fail::new(Exit::Failure, format!("cannot make the entry: {e}")))
}

/// Checks that `entry` extends `log`, as the relay will.
pub(crate) fn check_extends(log: &KeyLog, entry: &SignedKeyLogEntry) -> Result<(), Fail> {
    log.clone().append(entry.clone()).map_err(|e| {
        Fail::code(
            e.code(),
            format!("the new entry does not extend the log: {e}"),
        )
    })
}

/// Posts an entry; `Ok(true)` if appended, `Ok(false)` if the relay already had it.
pub(crate) fn post_entry(
    client: &Client,
    handle: &Handle,
    entry: &SignedKeyLogEntry,
) -> Result<bool, Fail> {
    let a = client.call(
        "POST",
        &format!("/v1/keys/{handle}"),
        Some(&entry.wire_bytes()),
        None,
    )?;
    Ok(a.str("result") != Some("duplicate"))
}

/// Posts `entry`, then commits the staged keys; on a refusal the staged keys are dropped. On a
/// network error they are kept: the relay may have appended the entry before the answer was lost.
fn post_and_commit(
    client: &Client,
    handle: &Handle,
    entry: &SignedKeyLogEntry,
    staged: Vec<(Staged, Option<formica_protocol::KeyId>)>,
) -> Result<Vec<String>, Fail> {
    match post_entry(client, handle, entry) {
        Ok(_) => {
            let mut kept = Vec::new();
            for (s, old) in staged {
                if let Some(p) = s.commit(old)? {
                    kept.push(p.display().to_string());
                }
            }
            Ok(kept)
        }
        Err(f) if f.exit == Exit::Network => {
            let files: Vec<String> = staged
                .iter()
                .map(|(s, _)| s.pending().display().to_string())
                .collect();
            Err(Fail { hint: Some(format!(
                "the relay may have accepted the entry; check with keytool resolve {handle}. The new key is kept in {}: if the log shows it, rename it over the identity file",
                files.join(" and ")
            )), ..f })
        }
        Err(f) => {
            for (s, _) in staged {
                s.discard();
            }
            Err(f)
        }
    }
}

pub(crate) fn not_current(handle: &Handle, log: &KeyLog, what: &str) -> Fail {
    Fail::code(
        ErrorCode::KeylogUnauthorizedSigner,
        format!(
            "the log of {handle} says the {what} is {}, but this identity holds another key",
            match what {
                "recovery key" => log.recovery_key().map(|k| k.key_id().to_hex()),
                _ => log.current_key().map(|k| k.key_id().to_hex()),
            }
            .unwrap_or_else(|| "none".into())
        ),
    )
    .hint("keytool resolve shows the log; a revoked handle needs keytool recover")
}

/// `keytool rotate`: a new signing key, signed by the current one.
pub fn rotate(ctx: &Ctx<'_>, identity_name: &str) -> Result<(), Fail> {
    let s = crate::online::session(ctx, identity_name)?;
    let (log, _) = fetch_log(&s.client, &s.me)?;
    let old = &s.id.key;
    if log.current_key() != Some(&old.public()) {
        return Err(not_current(&s.me, &log, "current key"));
    }
    let new = new_key();
    let entry = next_entry(&log, KeyOp::Rotate { key: new.public() }, old, &[&new])?;
    check_extends(&log, &entry)?;
    let staged = identity::stage(
        ctx.home,
        identity_name,
        Slot::Signing,
        &new,
        s.me.as_str(),
        s.client.base(),
    )?;
    let kept = post_and_commit(
        &s.client,
        &s.me,
        &entry,
        vec![(staged, Some(old.public().key_id()))],
    )?;
    let (old_id, new_id) = (
        old.public().key_id().to_hex(),
        new.public().key_id().to_hex(),
    );
    ctx.out.emit(
        &format!(
            "rotated the key of {}\n  old key id {old_id} (kept in {})\n  new key id {new_id}\n  log entry  {}",
            s.me,
            kept.join(", "),
            entry.entry().seq
        ),
        obj(vec![
            ("ok", Value::Bool(true)),
            ("handle", s.me.as_str().into()),
            ("old_key_id", old_id.into()),
            ("key_id", new_id.into()),
            ("seq", Value::Int(entry.entry().seq)),
            ("head", entry.hash().to_hex().into()),
        ]),
    );
    Ok(())
}

/// `keytool revoke`: ends the current key, signed by it or (`--with-recovery`) by the recovery key.
pub fn revoke(ctx: &Ctx<'_>, identity_name: &str, with_recovery: bool) -> Result<(), Fail> {
    let s = crate::online::session(ctx, identity_name)?;
    let (log, _) = fetch_log(&s.client, &s.me)?;
    if log.current_key().is_none() {
        return Err(Fail::new(
            Exit::Conflict,
            format!("{} has no valid key to revoke", s.me),
        )
        .hint("install one with keytool recover"));
    }
    let signer = if with_recovery {
        let rec = identity::load_recovery(ctx.home, identity_name)?
            .ok_or_else(|| no_recovery(ctx, identity_name))?;
        if log.recovery_key() != Some(&rec.key.public()) {
            return Err(not_current(&s.me, &log, "recovery key"));
        }
        rec.key
    } else {
        if log.current_key() != Some(&s.id.key.public()) {
            return Err(not_current(&s.me, &log, "current key"));
        }
        s.id.key.clone()
    };
    let entry = next_entry(&log, KeyOp::Revoke, &signer, &[])?;
    check_extends(&log, &entry)?;
    post_entry(&s.client, &s.me, &entry)?;
    let next = if log.recovery_key().is_some() {
        "install a new key with keytool recover"
    } else {
        "this handle has no recovery key: it can never send again"
    };
    ctx.out.emit(
        &format!(
            "revoked the key of {}; it has no valid key now ({next})",
            s.me
        ),
        obj(vec![
            ("ok", Value::Bool(true)),
            ("handle", s.me.as_str().into()),
            ("seq", Value::Int(entry.entry().seq)),
            ("head", entry.hash().to_hex().into()),
        ]),
    );
    Ok(())
}

fn no_recovery(ctx: &Ctx<'_>, name: &str) -> Fail {
    Fail::new(
        Exit::Storage,
        format!(
            "identity {name:?} has no recovery key ({} does not exist)",
            identity::recovery_path(ctx.home, name).display()
        ),
    )
    .hint("a recovery key is named at registration: keytool register --recovery")
}

/// `keytool recover`: a new signing key (and optionally a new recovery key), signed by the
/// recovery key. Works from `<name>.recovery.json` alone if the key file was lost.
pub fn recover(ctx: &Ctx<'_>, identity_name: &str, new_recovery: bool) -> Result<(), Fail> {
    let rec = identity::load_recovery(ctx.home, identity_name)?
        .ok_or_else(|| no_recovery(ctx, identity_name))?;
    let id = if identity::exists(ctx.home, identity_name) {
        Some(identity::load(ctx.home, identity_name)?)
    } else {
        None
    };
    let me = match id.as_ref().filter(|i| i.handle.is_some()) {
        Some(i) => stored_handle(i)?,
        None => stored_handle(&rec)?,
    };
    let stored_relay = id
        .as_ref()
        .and_then(|i| i.relay.as_deref())
        .or(rec.relay.as_deref());
    let client = Client::new(ctx.relay_url(stored_relay))?;
    let desc = client.descriptor()?;
    check_home(&client, &desc, &me)?;
    let (log, _) = fetch_log(&client, &me)?;
    if log.recovery_key() != Some(&rec.key.public()) {
        return Err(not_current(&me, &log, "recovery key"));
    }
    let new = new_key();
    let new_rec = new_recovery.then(new_key);
    let op = KeyOp::Recover {
        key: new.public(),
        recovery: new_rec.as_ref().map(SecretKey::public),
    };
    let holders: Vec<&SecretKey> = std::iter::once(&new).chain(new_rec.as_ref()).collect();
    let entry = next_entry(&log, op, &rec.key, &holders)?;
    check_extends(&log, &entry)?;
    let mut staged = vec![(
        identity::stage(
            ctx.home,
            identity_name,
            Slot::Signing,
            &new,
            me.as_str(),
            client.base(),
        )?,
        id.as_ref().map(|i| i.key.public().key_id()),
    )];
    if let Some(r) = &new_rec {
        staged.push((
            identity::stage(
                ctx.home,
                identity_name,
                Slot::Recovery,
                r,
                me.as_str(),
                client.base(),
            )?,
            Some(rec.key.public().key_id()),
        ));
    }
    let kept = post_and_commit(&client, &me, &entry, staged)?;
    let new_id = new.public().key_id().to_hex();
    let mut text = format!("recovered {me}\n  new key id {new_id}");
    if let Some(r) = &new_rec {
        text.push_str(&format!(
            "\n  new recovery key id {} (in {}; keep it offline)",
            r.public().key_id(),
            identity::recovery_path(ctx.home, identity_name).display()
        ));
    }
    if !kept.is_empty() {
        text.push_str(&format!("\n  old files kept as {}", kept.join(", ")));
    }
    // LOG-16: the recover ended the encryption key; the recovered key publishes the next, so
    // that messages to this handle are sealed again. The recovery stands either way.
    let enc = crate::enc::publish_first(ctx.home, identity_name, &client, &me, &new);
    let (enc_kid, enc_error) = match &enc {
        Ok(p) => {
            text.push_str(&format!("\n  new enc key {}", p.key.key_id()));
            (Value::from(p.key.key_id().to_hex()), Value::Null)
        }
        Err(f) => {
            text.push_str(&format!(
                "\n  enc key not published: {} (publish one with keytool enc-key rotate; until then messages to you are sent unsealed)",
                f.message
            ));
            (Value::Null, Value::from(f.message.as_str()))
        }
    };
    ctx.out.emit(
        &text,
        obj(vec![
            ("ok", Value::Bool(true)),
            ("handle", me.as_str().into()),
            ("enc_key_id", enc_kid),
            ("enc_error", enc_error),
            ("key_id", new_id.into()),
            (
                "recovery_key_id",
                new_rec
                    .map(|r| Value::from(r.public().key_id().to_hex()))
                    .unwrap_or(Value::Null),
            ),
            ("seq", Value::Int(entry.entry().seq)),
            ("head", entry.hash().to_hex().into()),
        ]),
    );
    Ok(())
}
