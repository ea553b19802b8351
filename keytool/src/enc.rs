//! Encryption keys in the key log (SPEC.md LOG-16): `keytool enc-key rotate` publishes a new one
//! (an `enc` entry, signed by the current signing key, as `rotate` posts its entries; `register`
//! publishes the first), `keytool enc-key list` shows them, verified from the log's first entry.
//!
//! The private key is written (`enckeys`) before the entry is posted, so no key is ever published
//! that this identity cannot open with; a refused entry's file is removed again.

use crate::client::Client;
use crate::enckeys;
use crate::keyops::{check_extends, next_entry, not_current, post_entry};
use crate::offline::now_ms;
use crate::online::{fetch_log, obj, session, Ctx};
use crate::output::{fmt_ms, Exit, Fail};
use formica_protocol::keylog::{KeyOp, SignedKeyLogEntry};
use formica_protocol::seal::{EncPublicKey, ENC_KEY_LIFETIME_MAX_MS};
use formica_protocol::{Handle, KeyLog, SecretKey, Value};
use std::path::Path;

/// Days an encryption key is published for when `--days` is not given: long enough that agents
/// rarely rotate by hand, short enough that a lost key stops being used within a season.
pub const ENC_DAYS_DEFAULT: u32 = 90;
/// The longest lifetime the protocol allows (LOG-16: 366 days).
pub const ENC_DAYS_MAX: u32 = (ENC_KEY_LIFETIME_MAX_MS / 86_400_000) as u32;

/// `keytool enc-key ...`.
#[derive(Debug, clap::Subcommand)]
pub enum EncKeyCmd {
    /// Publish a new encryption key (an `enc` entry in your key log, signed by your current
    /// key). Senders seal to it from now on; it replaces the previous one, whose private key
    /// stays in its file (`<identity>.enc-<key id>.json`, 0600, encrypted with
    /// FORMICA_PASSPHRASE when set) so that messages sealed to it still open.
    Rotate {
        /// How long the key is valid, in days (1 to 366).
        #[arg(long, default_value_t = ENC_DAYS_DEFAULT,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(ENC_DAYS_MAX)))]
        days: u32,
        #[command(flatten)]
        id: crate::IdentityArg,
    },
    /// List your encryption keys from your key log (verified from its first entry): key id,
    /// validity, whether it is current and whether this identity holds its private key. With
    /// --json: one line per key, then {"ok","count","current"}.
    List {
        #[command(flatten)]
        id: crate::IdentityArg,
    },
}

/// Runs `keytool enc-key ...`.
pub fn enc_key(ctx: &Ctx<'_>, cmd: EncKeyCmd) -> Result<(), Fail> {
    match cmd {
        EncKeyCmd::Rotate { days, id } => rotate(ctx, &id.identity, days),
        EncKeyCmd::List { id } => list(ctx, &id.identity),
    }
}

/// An encryption key that was just published.
#[derive(Debug)]
pub struct Published {
    pub key: EncPublicKey,
    pub expires: i64,
    pub entry: SignedKeyLogEntry,
}

/// Makes a new encryption key of identity `name`, stores its private key, and posts the `enc`
/// entry that publishes it for `days` after `log`'s head, signed by `signer` (the current key).
pub fn publish(
    home: &Path,
    name: &str,
    client: &Client,
    log: &KeyLog,
    signer: &SecretKey,
    days: u32,
) -> Result<Published, Fail> {
    let (sk, key) = enckeys::generate()?;
    // The entry's time is now, or just after the head's (as next_entry sets it); the key is
    // valid for `days` from then.
    let ts = now_ms().max(log.head().entry().ts + 1);
    let expires = ts + i64::from(days.clamp(1, ENC_DAYS_MAX)) * 86_400_000;
    let entry = next_entry(log, KeyOp::Enc { enc: key, expires }, signer, &[])?;
    check_extends(log, &entry)?;
    let file = enckeys::store(home, name, &sk, &key, expires)?;
    match post_entry(client, log.handle(), &entry) {
        Ok(_) => Ok(Published {
            key,
            expires,
            entry,
        }),
        // The relay may have appended it before the answer was lost: keep the private key.
        Err(f) if f.exit == Exit::Network => Err(f.hint(format!(
            "the relay may have published the key; keytool enc-key list shows it. Its private key is kept in {}",
            file.display()
        ))),
        Err(f) => {
            enckeys::discard(&file);
            Err(f)
        }
    }
}

/// `keytool enc-key rotate [--days N]`.
pub fn rotate(ctx: &Ctx<'_>, identity_name: &str, days: u32) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let (log, _) = fetch_log(&s.client, &s.me)?;
    if log.current_key() != Some(&s.id.key.public()) {
        return Err(not_current(&s.me, &log, "current key"));
    }
    let old = log.enc_key_current(now_ms()).map(|p| p.key.key_id());
    let p = publish(ctx.home, identity_name, &s.client, &log, &s.id.key, days)?;
    let kid = p.key.key_id().to_hex();
    let mut text = format!(
        "published a new encryption key for {}\n  key id     {kid}\n  expires    {}\n  log entry  {}",
        s.me,
        fmt_ms(p.expires),
        p.entry.entry().seq
    );
    if let Some(o) = &old {
        text.push_str(&format!(
            "\n  replaces   {o} (its private key is kept: messages sealed to it still open)"
        ));
    }
    ctx.out.emit(
        &text,
        obj(vec![
            ("ok", Value::Bool(true)),
            ("handle", s.me.as_str().into()),
            ("enc_key_id", kid.into()),
            ("enc_key", p.key.to_hex().into()),
            ("expires", Value::Int(p.expires)),
            (
                "replaced",
                old.map(|k| Value::from(k.to_hex())).unwrap_or(Value::Null),
            ),
            ("seq", Value::Int(p.entry.entry().seq)),
            ("head", p.entry.hash().to_hex().into()),
        ]),
    );
    Ok(())
}

/// `keytool enc-key list`.
pub fn list(ctx: &Ctx<'_>, identity_name: &str) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let (log, _) = fetch_log(&s.client, &s.me)?;
    let now = now_ms();
    let current = log.enc_key_current(now).map(|p| p.key.key_id());
    let periods = log.enc_periods();
    for p in periods {
        let kid = p.key.key_id();
        let held = enckeys::held(ctx.home, identity_name, &kid);
        let is_current = current == Some(kid);
        let end = match p.until {
            Some(u) if u < p.expires => format!("ended {}", fmt_ms(u)),
            _ if p.expires <= now => format!("expired {}", fmt_ms(p.expires)),
            _ => format!("expires {}", fmt_ms(p.expires)),
        };
        let text = format!(
            "{kid}  {}  from {}  {end}{}",
            if is_current { "current " } else { "inactive" },
            fmt_ms(p.from),
            if held {
                ""
            } else {
                "  (private key not held here)"
            }
        );
        ctx.out.emit(
            &text,
            obj(vec![
                ("enc_key_id", kid.to_hex().into()),
                ("enc_key", p.key.to_hex().into()),
                ("from", Value::Int(p.from)),
                ("expires", Value::Int(p.expires)),
                ("until", p.until.map(Value::Int).unwrap_or(Value::Null)),
                ("current", Value::Bool(is_current)),
                ("held", Value::Bool(held)),
            ]),
        );
    }
    let text = match (periods.len(), current) {
        (0, _) => format!(
            "{} has published no encryption key: messages to it are sent unsealed; publish one with keytool enc-key rotate",
            s.me
        ),
        (n, None) => format!(
            "({n} keys; none is current: messages to {} are sent unsealed until keytool enc-key rotate)",
            s.me
        ),
        (n, Some(_)) => format!("({n} keys)"),
    };
    ctx.out.emit(
        &text,
        obj(vec![
            ("ok", Value::Bool(true)),
            ("count", Value::Int(periods.len() as i64)),
            (
                "current",
                current
                    .map(|k| Value::from(k.to_hex()))
                    .unwrap_or(Value::Null),
            ),
        ]),
    );
    Ok(())
}

/// Publishes the first encryption key right after registration (`register` without `--no-enc`):
/// the key id, or why it could not be published (registration has succeeded either way).
pub fn publish_first(
    home: &Path,
    name: &str,
    client: &Client,
    handle: &Handle,
    signer: &SecretKey,
) -> Result<Published, Fail> {
    let (log, _) = fetch_log(client, handle)?;
    publish(home, name, client, &log, signer, ENC_DAYS_DEFAULT)
}
