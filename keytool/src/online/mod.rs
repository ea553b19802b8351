//! The commands that talk to a relay, one file per group: `register` (registration and key
//! look-up), `send` (messages, contact requests, vouches and reports), `inbox` (the inbox, acks
//! and delivery status), `contacts` (contacts and contact requests), `profile` (profiles and
//! the directory: `profile set|show`, `find`; their arguments in `profile_args`) and `presence`
//! (`presence set|show|heartbeat`, `who`; their arguments in `presence_args`) and `conv`
//! (conversations: `call`, `calls`, `accept`, `decline`, `conv ...`; reading entries in
//! `conv_read`, summaries in `conv_list`, the arguments in `conv_args`). Key changes
//! are in `keyops`, the live stream in `watch`. This file holds what they share: the session
//! with the home relay and small helpers.
//!
//! Each command loads the identity, checks the relay's signed descriptor (its `relay` host must
//! be the identity's handle host), builds and signs what it sends with the protocol crate, and
//! prints readable text or, with `--json`, JSON Lines.

use crate::client::{Auth, Client, Descriptor, RELAY_URL_DEFAULT};
use crate::identity::{self, Identity};
use crate::output::{Exit, Fail, Out};
use formica_protocol::{ErrorCode, Handle, KeyLog, Object, SecretKey, Value};
use rand::RngCore;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

mod contacts;
mod conv;
mod conv_args;
mod conv_list;
mod conv_read;
mod inbox;
mod presence;
mod presence_args;
mod profile;
mod profile_args;
mod register;
mod sealing;
mod send;

pub use contacts::{contacts_add, contacts_list, contacts_remove, requests_answer, requests_list};
pub use conv::{act, call, conv_send, conversations};
pub use conv_args::{conv_id, note, parse_mode, positive, CallSpec, ConvTop, PostOpts};
pub use conv_list::{calls, conv_list};
pub use conv_read::read_for_tool;
pub use inbox::{ack, check_cursor, inbox, status};
pub use presence::{presence, presence_set, presence_show, verify_entry, who};
pub use presence_args::{check_status, PresenceCmd, StatusSpec, WhoArgs};
pub use profile::{find, profile, profile_set, profile_show};
pub use profile_args::{
    check_capability, check_spec, parse_ttl, FindArgs, FindQuery, ProfileCmd, ProfileSpec,
    TTL_DEFAULT,
};
pub use register::{fetch_log, register, resolve};
pub use sealing::{opened_members, Opener};
pub use send::{contact_request, report, send, vouch, SendArgs};

/// Highest proof-of-work difficulty keytool will mine: 2^40 hashes is days on a laptop, so a
/// relay asking for more is misconfigured or hostile.
pub const POW_DIFFICULTY_MAX: u32 = 40;
/// Time kept in hand between the end of mining and the challenge's expiry, to sign and post.
const CHALLENGE_MARGIN_MS: i64 = 5_000;
/// Inbox pages `ack` reads to find a message's sender (100 items each by default).
const ACK_LOOKUP_PAGES_MAX: usize = 100;
/// Characters of message text shown per inbox line.
const SUMMARY_CHARS_MAX: usize = 120;

/// What every online command needs from the command line.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub out: &'a Out,
    pub home: &'a Path,
    /// `--relay` or `FORMICA_RELAY`.
    pub relay: Option<&'a str>,
}

impl Ctx<'_> {
    /// `--relay`/`FORMICA_RELAY`, else the relay stored with the identity, else the default.
    pub fn relay_url<'s>(&'s self, stored: Option<&'s str>) -> &'s str {
        self.relay.or(stored).unwrap_or(RELAY_URL_DEFAULT)
    }
}

/// A registered identity talking to its home relay.
#[derive(Debug)]
pub struct Session {
    pub client: Client,
    pub desc: Descriptor,
    pub id: Identity,
    pub me: Handle,
    pub auth: Auth,
}

/// The handle stored in an identity, or a failure saying how to register.
pub fn stored_handle(id: &Identity) -> Result<Handle, Fail> {
    let Some(h) = id.handle.as_deref() else {
        return Err(Fail::new(
            Exit::Storage,
            format!("identity {:?} is not registered", id.name),
        )
        .hint(format!(
            "register it first: keytool register @name --identity {}",
            id.name
        )));
    };
    Handle::parse(h).map_err(|e| {
        Fail::new(
            Exit::Storage,
            format!("identity {:?} stores an invalid handle: {e}", id.name),
        )
    })
}

/// Checks that the relay at the client's URL is the handle's home relay.
pub fn check_home(client: &Client, desc: &Descriptor, me: &Handle) -> Result<(), Fail> {
    if &desc.host != me.host() {
        return Err(Fail::code(
            ErrorCode::WrongRelay,
            format!(
                "{me} is homed on {}, but the relay at {} is {}",
                me.host(),
                client.base(),
                desc.host
            ),
        )
        .hint(format!("pass --relay with the URL of {}", me.host())));
    }
    Ok(())
}

/// Loads a registered identity, fetches and checks its relay's descriptor.
pub fn session(ctx: &Ctx<'_>, name: &str) -> Result<Session, Fail> {
    let id = identity::load(ctx.home, name)?;
    let me = stored_handle(&id)?;
    let client = Client::new(ctx.relay_url(id.relay.as_deref()))?;
    let desc = client.descriptor()?;
    check_home(&client, &desc, &me)?;
    let auth = Auth {
        key: id.key.clone(),
        handle: me.clone(),
        aud: desc.host.clone(),
    };
    Ok(Session {
        client,
        desc,
        id,
        me,
        auth,
    })
}

/// Key logs, each fetched and verified from its first entry once per handle (for one command,
/// or for the life of a `watch`), with the time each was fetched.
#[derive(Debug, Default)]
pub struct Logs(BTreeMap<Handle, (KeyLog, Instant)>);

/// A cached key log older than this is fetched again before a key it does not know is taken
/// as unknown (a long `watch` outlives key changes).
const LOG_FRESH: Duration = Duration::from_secs(10);

impl Logs {
    pub fn get(&mut self, client: &Client, h: &Handle) -> Result<&KeyLog, Fail> {
        if !self.0.contains_key(h) {
            let (log, _) = fetch_log(client, h)?;
            self.0.insert(h.clone(), (log, Instant::now()));
        }
        self.0
            .get(h)
            .map(|(log, _)| log)
            .ok_or_else(|| Fail::new(Exit::Failure, "a fetched key log went missing"))
    }

    /// Forgets `h`'s log if it was fetched more than [`LOG_FRESH`] ago, so that the next
    /// [`get`](Self::get) fetches it again; whether it did.
    pub fn forget_old(&mut self, h: &Handle) -> bool {
        let old = self
            .0
            .get(h)
            .is_some_and(|(_, at)| at.elapsed() > LOG_FRESH);
        if old {
            self.0.remove(h);
        }
        old
    }

    /// A log verified elsewhere (unit tests).
    #[cfg(test)]
    pub fn insert(&mut self, log: KeyLog) {
        self.0.insert(log.handle().clone(), (log, Instant::now()));
    }
}

pub fn obj(members: Vec<(&str, Value)>) -> Value {
    let mut o = Object::new();
    for (k, v) in members {
        o.insert(k, v);
    }
    Value::Object(o)
}

fn ok_obj(mut members: Vec<(&str, Value)>) -> Value {
    members.insert(0, ("ok", Value::Bool(true)));
    obj(members)
}

fn opt<T: Into<Value>>(v: Option<T>) -> Value {
    v.map(Into::into).unwrap_or(Value::Null)
}

/// A fresh random 32-byte seed from the OS.
pub fn new_key() -> SecretKey {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    SecretKey::from_seed(&seed)
}

fn parse_handle(s: &str, home: &Handle) -> Result<Handle, Fail> {
    Handle::parse_with_home(s, home.host()).map_err(|e| Fail::code(e.code(), e.to_string()))
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `2d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, like 500ms, 30s, 5m, 1h, 2d"))?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: the unit is one of ms, s, m, h, d")),
    };
    n.checked_mul(ms_per)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Makes text from the network safe to print on a terminal: control characters are escaped
/// (no escape sequences reach the terminal) and long text is cut with an ellipsis.
pub fn clean(s: &str, chars_max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == chars_max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn clean_escapes_control_characters() {
        assert_eq!(clean("a\x1b[2Jb\n", 100), "a\\u{1b}[2Jb\\n");
        assert_eq!(clean("abcdef", 3), "abc…");
    }

    #[test]
    fn cursors_that_cannot_go_in_a_path_are_refused() {
        assert!(check_cursor("17").is_ok());
        assert!(check_cursor("").is_err());
        assert!(check_cursor("1&limit=5").is_err());
        assert!(check_cursor("1 2").is_err());
    }
}
