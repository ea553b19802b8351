//! `register` (challenge, proof-of-work, registration) and `resolve` (a key log fetched and
//! verified from its first entry).

use super::{new_key, obj, ok_obj, opt, Ctx, CHALLENGE_MARGIN_MS, POW_DIFFICULTY_MAX};
use crate::client::{Answer, Client};
use crate::identity::{self};
use crate::mine;
use crate::offline::now_ms;
use crate::output::{Exit, Fail};
use formica_protocol::handle::LocalName;
use formica_protocol::keylog::{KeyLogEntry, KeyOp, SignedKeyLogEntry};
use formica_protocol::pow::{self, Challenge, PowProof};
use formica_protocol::{canon, ErrorCode, Handle, KeyLog, SecretKey, Value};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// `keytool register @name`.
pub fn register(
    ctx: &Ctx<'_>,
    name_arg: &str,
    identity_name: &str,
    want_recovery: bool,
    publish_enc: bool,
) -> Result<(), Fail> {
    let out = ctx.out;
    // 1. The name is checked before anything touches the network or the disk.
    let local = name_arg.strip_prefix('@').ok_or_else(|| {
        Fail::code(
            ErrorCode::InvalidHandle,
            format!("{name_arg:?}: a handle starts with '@'"),
        )
    })?;
    let local = local.split('@').next().unwrap_or(local);
    let local = LocalName::parse(local).map_err(|e| Fail::code(e.code(), e.to_string()))?;
    if local.is_reserved() {
        return Err(Fail::code(
            ErrorCode::HandleReserved,
            format!("@{} is a reserved name", local.as_str()),
        )
        .hint("choose another name"));
    }
    // 2. An existing identity must not be registered yet.
    let existing = if identity::exists(ctx.home, identity_name) {
        Some(identity::load(ctx.home, identity_name)?)
    } else {
        None
    };
    if let Some(h) = existing.as_ref().and_then(|i| i.handle.as_deref()) {
        return Err(Fail::new(
            Exit::Conflict,
            format!("identity {identity_name:?} is already registered as {h}"),
        )
        .hint("use another --identity NAME for a second handle"));
    }
    // 3. The relay, its descriptor, and the handle's global form.
    let client = Client::new(ctx.relay_url(existing.as_ref().and_then(|i| i.relay.as_deref())))?;
    let relay_url = client.base().to_owned();
    let desc = client.descriptor()?;
    let handle = Handle::parse_with_home(name_arg, &desc.host)
        .map_err(|e| Fail::code(e.code(), e.to_string()))?;
    if handle.host() != &desc.host {
        return Err(Fail::code(
            ErrorCode::WrongRelay,
            format!(
                "{handle} would be homed on {}, but the relay at {relay_url} is {}",
                handle.host(),
                desc.host
            ),
        )
        .hint(format!(
            "register @{} here, or pass --relay with the URL of {}",
            local.as_str(),
            handle.host()
        )));
    }
    // 4. A taken handle is refused before any mining.
    match client.get(&format!("/v1/keys/{handle}"), None) {
        Ok(_) => {
            return Err(Fail::code(
                ErrorCode::HandleTaken,
                format!("{handle} is already registered"),
            )
            .hint("choose another name"))
        }
        Err(f) if f.code == Some(ErrorCode::NotFound) => {}
        Err(f) => return Err(f),
    }
    // 5. A challenge.
    let ch = client.call("POST", "/v1/challenges", None, None)?;
    let bad = |why: &str| {
        Fail::new(
            Exit::Failure,
            format!("the relay's challenge answer is not valid: {why}"),
        )
    };
    let challenge = ch
        .str("challenge")
        .and_then(Challenge::parse_hex)
        .ok_or_else(|| bad("challenge"))?;
    let difficulty = ch
        .body
        .as_object()
        .and_then(|o| o.get("difficulty"))
        .and_then(Value::as_i64)
        .and_then(|d| u32::try_from(d).ok())
        .ok_or_else(|| bad("difficulty"))?;
    let expires = ch
        .body
        .as_object()
        .and_then(|o| o.get("expires"))
        .and_then(Value::as_i64)
        .ok_or_else(|| bad("expires"))?;
    if ch.str("relay") != Some(desc.host.as_str()) {
        return Err(bad("it names another relay"));
    }
    if difficulty > POW_DIFFICULTY_MAX {
        return Err(Fail::code(
            ErrorCode::PowInsufficient,
            format!("the relay asks for difficulty {difficulty}; keytool mines at most {POW_DIFFICULTY_MAX}"),
        ));
    }
    // 6. The key (and recovery key): the identity's, or new ones stored now.
    let (key, recovery) = match &existing {
        Some(id) => {
            let rec = match identity::load_recovery(ctx.home, identity_name)? {
                Some(r) => Some(r.key),
                None if want_recovery => {
                    let r = new_key();
                    identity::create_recovery(ctx.home, identity_name, &r)?;
                    Some(r)
                }
                None => None,
            };
            (id.key.clone(), rec)
        }
        None => {
            let k = new_key();
            let r = want_recovery.then(new_key);
            identity::create(ctx.home, identity_name, &k, r.as_ref(), false)?;
            (k, r)
        }
    };
    // 7. Proof-of-work on all cores, before the challenge expires.
    let prefix = pow::preimage_prefix(&desc.host, &handle, &key.public(), &challenge, difficulty);
    let left_ms = (expires - now_ms() - CHALLENGE_MARGIN_MS).max(0) as u64;
    let progress = !out.json && std::io::stderr().is_terminal();
    let mined = mine::solve(
        &prefix,
        difficulty,
        Instant::now() + Duration::from_millis(left_ms),
        progress,
    )
    .ok_or_else(|| {
        Fail::code(
            ErrorCode::ChallengeExpired,
            format!("no proof-of-work at difficulty {difficulty} before the challenge expired"),
        )
        .hint("retry register (it fetches a new challenge)")
    })?;
    // 8. The register entry, signed now so that its time is fresh; the recovery key, if any,
    // proves its possession (LOG-2).
    let holders: Vec<&SecretKey> = recovery.iter().collect();
    let entry = KeyLogEntry {
        handle: handle.clone(),
        seq: 0,
        prev: None,
        ts: now_ms(),
        op: KeyOp::Register {
            key: key.public(),
            recovery: recovery.as_ref().map(SecretKey::public),
        },
        signer: key.public().key_id(),
    }
    .sign(&key, &holders)
    .map_err(|e| {
        Fail::new(
            Exit::Failure,
            format!("cannot make the register entry: {e}"),
        )
    })?;
    let proof = PowProof {
        challenge,
        difficulty,
        nonce: mined.nonce,
    };
    let body = canon::canonicalize(&obj(vec![
        ("entry", entry.value().clone()),
        ("pow", proof.to_value()),
    ]));
    let a = client.call("POST", "/v1/register", Some(&body), None)?;
    // 9. Remember where we live.
    identity::update(ctx.home, identity_name, handle.as_str(), &relay_url)?;
    let mut head = a.str("head").unwrap_or("").to_owned();
    // 10. The first encryption key (LOG-16), so that others can seal to this handle. The
    // handle is registered either way: a failure here is reported, not returned.
    let enc = publish_enc
        .then(|| crate::enc::publish_first(ctx.home, identity_name, &client, &handle, &key));
    let kid = key.public().key_id().to_hex();
    let mut text = format!(
        "registered {handle}\n  identity   {identity_name}\n  key id     {kid}\n  relay      {relay_url} (relay key id {})\n  proof      difficulty {difficulty}, about {} hashes in {:.2} s",
        desc.key.key_id(),
        mined.hashes,
        mined.elapsed.as_secs_f64()
    );
    if let Some(r) = &recovery {
        text.push_str(&format!(
            "\n  recovery   {} (in {}; keep it offline)",
            r.public().key_id(),
            identity::recovery_path(ctx.home, identity_name).display()
        ));
    }
    let (enc_kid, enc_error) = match &enc {
        None => {
            text.push_str("\n  enc key    none (--no-enc: messages to you are sent unsealed until keytool enc-key rotate)");
            (Value::Null, Value::Null)
        }
        Some(Ok(p)) => {
            head = p.entry.hash().to_hex();
            text.push_str(&format!(
                "\n  enc key    {} (others seal messages to you with it; keytool enc-key list)",
                p.key.key_id()
            ));
            (p.key.key_id().to_hex().into(), Value::Null)
        }
        Some(Err(f)) => {
            text.push_str(&format!(
                "\n  enc key    not published: {} (publish one with keytool enc-key rotate)",
                f.message
            ));
            let err = f.to_value();
            let err = err.as_object().and_then(|o| o.get("error")).cloned();
            (Value::Null, err.unwrap_or(Value::Null))
        }
    };
    out.emit(
        &text,
        ok_obj(vec![
            ("handle", handle.as_str().into()),
            ("identity", identity_name.into()),
            ("enc_key_id", enc_kid),
            ("enc_error", enc_error),
            ("key_id", kid.into()),
            (
                "recovery_key_id",
                opt(recovery.as_ref().map(|r| r.public().key_id().to_hex())),
            ),
            ("relay", relay_url.into()),
            ("relay_key", desc.key.to_hex().into()),
            ("head", head.into()),
            ("difficulty", Value::Int(i64::from(difficulty))),
            ("nonce", Value::Int(mined.nonce as i64)),
            ("mining_ms", Value::Int(mined.elapsed.as_millis() as i64)),
        ]),
    );
    Ok(())
}

// ---------------------------------------------------------------- key logs

/// `GET /v1/keys/{handle}`, checked from the first entry (LOG-10). The relay's `current_key`
/// is never used; the answer is returned for the members the log cannot prove (tier).
pub fn fetch_log(client: &Client, handle: &Handle) -> Result<(KeyLog, Answer), Fail> {
    let a = client.get(&format!("/v1/keys/{handle}"), None)?;
    let refuse = |code: ErrorCode, why: String| {
        let mut f = Fail::code(
            code,
            format!("the relay served a key log for {handle} that does not verify: {why}"),
        );
        f.exit = Exit::Auth;
        f
    };
    let entries = a
        .list("entries")
        .iter()
        .map(|v| {
            SignedKeyLogEntry::from_value(v.clone()).map_err(|e| refuse(e.code(), e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let log = KeyLog::verify(entries).map_err(|e| refuse(e.code(), e.to_string()))?;
    if log.handle() != handle {
        return Err(refuse(
            ErrorCode::KeylogHandleMismatch,
            format!("it is the log of {}", log.handle()),
        ));
    }
    Ok((log, a))
}

/// `keytool resolve @handle`.
pub fn resolve(ctx: &Ctx<'_>, handle_arg: &str, identity_name: &str) -> Result<(), Fail> {
    let id = if identity::exists(ctx.home, identity_name) {
        Some(identity::load(ctx.home, identity_name)?)
    } else {
        None
    };
    let client = Client::new(ctx.relay_url(id.as_ref().and_then(|i| i.relay.as_deref())))?;
    let mine = id
        .as_ref()
        .and_then(|i| i.handle.as_deref())
        .and_then(|h| Handle::parse(h).ok());
    let home = match mine {
        Some(h) => h.host().clone(),
        None => client.descriptor()?.host,
    };
    let handle = Handle::parse_with_home(handle_arg, &home)
        .map_err(|e| Fail::code(e.code(), e.to_string()))?;
    let (log, a) = fetch_log(&client, &handle).map_err(|f| match f.code {
        Some(ErrorCode::NotFound) if handle.host() != &home => f.hint(format!(
            "your relay fetches the log of a handle on another relay from that relay, if it is a peer of yours (its operator sees them with `relay peer list`); check the handle and the host {}",
            handle.host()
        )),
        Some(ErrorCode::NotFound) => f.hint(format!("no agent {handle} is registered on {home}; check the name")),
        _ => f,
    })?;
    let current = log.current_key();
    let tier = a.str("tier").map(str::to_owned);
    let conflicts = a.list("conflicts").len();
    let served = a.str("current_key").map(str::to_owned);
    let mismatch = served.as_deref() != current.map(|k| k.to_hex()).as_deref();
    let enc = log.enc_key_current(now_ms());
    let mut text = format!(
        "{handle}\n  current key  {}\n  key id       {}\n  enc key      {}\n  recovery     {}\n  tier         {} (as the relay reports it)\n  moved to     {}\n  log          {} entries, verified from the first; head {}\n  conflicts    {conflicts}",
        current.map(|k| k.to_hex()).unwrap_or_else(|| "none (revoked or moved)".into()),
        current.map(|k| k.key_id().to_hex()).unwrap_or_else(|| "-".into()),
        enc.map(|p| format!("key id {} until {}", p.key.key_id(), crate::output::fmt_ms(p.expires)))
            .unwrap_or_else(|| "none (messages to it are sent unsealed)".into()),
        log.recovery_key().map(|k| format!("key id {}", k.key_id())).unwrap_or_else(|| "none".into()),
        tier.as_deref().unwrap_or("-"),
        log.moved_to().map(Handle::as_str).unwrap_or("-"),
        log.entries().len(),
        log.head().hash().to_hex(),
    );
    if mismatch {
        text.push_str("\n  warning      the relay's `current_key` differs from what its own log proves; the log wins");
    }
    if conflicts > 0 {
        text.push_str(
            "\n  warning      someone made conflicting entries in this log (a fork); see --json",
        );
    }
    ctx.out.emit(
        &text,
        ok_obj(vec![
            ("handle", handle.as_str().into()),
            ("current_key", opt(current.map(|k| k.to_hex()))),
            ("key_id", opt(current.map(|k| k.key_id().to_hex()))),
            ("enc_key", opt(enc.map(|p| p.key.to_hex()))),
            ("enc_key_id", opt(enc.map(|p| p.key.key_id().to_hex()))),
            ("enc_expires", opt(enc.map(|p| Value::Int(p.expires)))),
            ("recovery_key", opt(log.recovery_key().map(|k| k.to_hex()))),
            ("tier", opt(tier)),
            (
                "moved_to",
                opt(log.moved_to().map(|h| h.as_str().to_owned())),
            ),
            ("entries", Value::Int(log.entries().len() as i64)),
            ("head", log.head().hash().to_hex().into()),
            ("conflicts", Value::Int(conflicts as i64)),
            ("served_key_mismatch", Value::Bool(mismatch)),
        ]),
    );
    Ok(())
}
