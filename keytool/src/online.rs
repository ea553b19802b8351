//! The commands that talk to a relay: registration, key look-up, sending, the inbox, acks,
//! delivery status, contacts, contact requests, vouches and reports. Key changes are in
//! `keyops`, the live stream in `watch`.
//!
//! Each command loads the identity, checks the relay's signed descriptor (its `relay` host must
//! be the identity's handle host), builds and signs what it sends with the protocol crate, and
//! prints readable text or, with `--json`, JSON Lines.

use crate::client::{Answer, Auth, Client, Descriptor, RELAY_URL_DEFAULT};
use crate::identity::{self, Identity};
use crate::mine;
use crate::offline::{now_ms, parse_doc, read_input};
use crate::output::{fmt_ms, Exit, Fail, Out};
use formica_protocol::envelope::{ReportReason, VouchAction, ACK_WINDOW_MS_MAX};
use formica_protocol::handle::LocalName;
use formica_protocol::keylog::{KeyLogEntry, KeyOp, SignedKeyLogEntry};
use formica_protocol::pow::{self, Challenge, PowProof};
use formica_protocol::{
    canon, AckStatus, ContactLevel, Envelope, ErrorCode, Handle, KeyLog, MessageId, MessageType,
    Object, Payload, SecretKey, SignedEnvelope, Value,
};
use rand::RngCore;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

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

// ---------------------------------------------------------------- registration

/// `keytool register @name`.
pub fn register(
    ctx: &Ctx<'_>,
    name_arg: &str,
    identity_name: &str,
    want_recovery: bool,
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
    // 8. The register entry, signed now so that its time is fresh.
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
    .sign(&key);
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
    let head = a.str("head").unwrap_or("").to_owned();
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
    out.emit(
        &text,
        ok_obj(vec![
            ("handle", handle.as_str().into()),
            ("identity", identity_name.into()),
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
    let (log, a) = fetch_log(&client, &handle)?;
    let current = log.current_key();
    let tier = a.str("tier").map(str::to_owned);
    let conflicts = a.list("conflicts").len();
    let served = a.str("current_key").map(str::to_owned);
    let mismatch = served.as_deref() != current.map(|k| k.to_hex()).as_deref();
    let mut text = format!(
        "{handle}\n  current key  {}\n  key id       {}\n  recovery     {}\n  tier         {} (as the relay reports it)\n  moved to     {}\n  log          {} entries, verified from the first; head {}\n  conflicts    {conflicts}",
        current.map(|k| k.to_hex()).unwrap_or_else(|| "none (revoked or moved)".into()),
        current.map(|k| k.key_id().to_hex()).unwrap_or_else(|| "-".into()),
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

// ---------------------------------------------------------------- envelopes

/// Signs an envelope from this session's identity, checks it as a relay would, and posts it.
/// Returns the id and `accepted` or `duplicate`.
pub fn post_envelope(
    s: &Session,
    to: Vec<Handle>,
    msg_type: MessageType,
    payload: Payload,
    corr: Option<String>,
    ack_by: Option<i64>,
) -> Result<(MessageId, String), Fail> {
    let env = Envelope {
        msg_type,
        type_version: 1,
        from: s.me.clone(),
        key: s.id.key.public().key_id(),
        to,
        ts: now_ms(),
        corr,
        ack_by,
        payload,
    };
    let local = |e: formica_protocol::EnvelopeError| Fail::code(e.code(), e.to_string());
    let signed = env.sign(&s.id.key).map_err(local)?;
    // Parse our own envelope under the relay's published limits: a mistake is reported here,
    // with its protocol code, instead of by the relay.
    let checked = SignedEnvelope::from_value(signed.value().clone(), &s.desc.envelope_limits())
        .map_err(local)?;
    let a = s
        .client
        .call("POST", "/v1/envelopes", Some(&checked.wire_bytes()), None)?;
    let result = a.str("result").unwrap_or("accepted").to_owned();
    if a.str("id") != Some(checked.id().to_hex().as_str()) {
        return Err(Fail::new(
            Exit::Failure,
            format!(
                "the relay answered with id {:?}, but the envelope's id is {}",
                a.str("id"),
                checked.id()
            ),
        ));
    }
    Ok((checked.id(), result))
}

fn emit_posted(
    out: &Out,
    what: &str,
    id: &MessageId,
    result: &str,
    extra: Vec<(&str, Value)>,
    note: &str,
) {
    let text = match result {
        "duplicate" => format!(
            "{what} {id}: duplicate (the relay already had it; nothing was sent twice){note}"
        ),
        r => format!("{what} {id}: {r}{note}"),
    };
    let mut m = vec![
        ("id", Value::from(id.to_hex())),
        ("result", result.into()),
        ("type", what.into()),
    ];
    m.extend(extra);
    out.emit(&text, ok_obj(m));
}

/// What `send` sends.
#[derive(Debug)]
pub struct SendArgs {
    pub to: String,
    /// Without `--payload`: the text, then more recipients. With it: more recipients.
    pub rest: Vec<String>,
    pub msg_type: Option<String>,
    pub payload: Option<std::path::PathBuf>,
    pub ack_deadline: Option<Duration>,
    pub corr: Option<String>,
}

/// `keytool send @nova "text" [@more...]`.
pub fn send(ctx: &Ctx<'_>, identity_name: &str, a: SendArgs) -> Result<(), Fail> {
    let mut to_args = vec![a.to];
    let type_name = a.msg_type.as_deref().unwrap_or("message");
    let msg_type = MessageType::parse(type_name).ok_or_else(|| {
        Fail::code(
            ErrorCode::UnknownType,
            format!("unknown message type {type_name:?}"),
        )
        .hint("a registered type (message, task_request, task_result, ...) or an x- extension type")
    })?;
    let payload_v = match a.payload {
        Some(file) => {
            to_args.extend(a.rest);
            parse_doc(&read_input(Some(&file))?)?
        }
        None if msg_type == MessageType::Message => {
            let mut rest = a.rest.into_iter();
            let text = rest.next().ok_or_else(|| {
                Fail::new(Exit::Input, "no text to send").hint("keytool send @them \"text\"")
            })?;
            to_args.extend(rest);
            obj(vec![("text", text.into())])
        }
        None => {
            return Err(Fail::new(
                Exit::Input,
                format!("--type {type_name} needs --payload FILE (or - for standard input)"),
            ))
        }
    };
    let payload = Payload::from_value(&msg_type, &payload_v)
        .map_err(|e| Fail::code(e.code(), e.to_string()))?;
    let s = session(ctx, identity_name)?;
    let to = to_args
        .iter()
        .map(|h| parse_handle(h, &s.me))
        .collect::<Result<Vec<_>, _>>()?;
    let ts_now = now_ms();
    let ack_by = match a.ack_deadline {
        None => None,
        Some(d) => {
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            if ms == 0 || ms > ACK_WINDOW_MS_MAX {
                return Err(Fail::code(
                    ErrorCode::InvalidField,
                    "--ack-deadline is more than 0 and at most 7 days",
                ));
            }
            Some(ts_now + ms)
        }
    };
    let (id, result) = post_envelope(&s, to.clone(), msg_type.clone(), payload, a.corr, ack_by)?;
    let note = ack_by
        .map(|t| format!("\n  ack requested by {}", fmt_ms(t)))
        .unwrap_or_default();
    let to_v = Value::Array(to.iter().map(|h| h.as_str().into()).collect());
    emit_posted(
        ctx.out,
        msg_type.as_str(),
        &id,
        &result,
        vec![("to", to_v), ("ack_by", opt(ack_by.map(Value::Int)))],
        &note,
    );
    Ok(())
}

/// `keytool contact-request @x --level L`.
pub fn contact_request(
    ctx: &Ctx<'_>,
    identity_name: &str,
    to: &str,
    level: ContactLevel,
    note: Option<String>,
) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let to = parse_handle(to, &s.me)?;
    let (id, result) = post_envelope(
        &s,
        vec![to.clone()],
        MessageType::ContactRequest,
        Payload::ContactRequest { level, note },
        None,
        None,
    )?;
    let note = format!("\n  asked {to} for level {level}; they see it in keytool requests list");
    emit_posted(
        ctx.out,
        "contact_request",
        &id,
        &result,
        vec![("to", to.as_str().into()), ("level", level.as_str().into())],
        &note,
    );
    Ok(())
}

/// `keytool vouch @x [--revoke]`: to `@relay@<subject host>`.
pub fn vouch(ctx: &Ctx<'_>, identity_name: &str, subject: &str, revoke: bool) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let subject = parse_handle(subject, &s.me)?;
    let action = if revoke {
        VouchAction::Revoke
    } else {
        VouchAction::Grant
    };
    let to = Handle::relay(subject.host());
    let (id, result) = post_envelope(
        &s,
        vec![to],
        MessageType::Vouch,
        Payload::Vouch {
            subject: subject.clone(),
            action,
        },
        None,
        None,
    )?;
    let note = format!("\n  {action} vouch for {subject}");
    emit_posted(
        ctx.out,
        "vouch",
        &id,
        &result,
        vec![
            ("subject", subject.as_str().into()),
            ("action", action.as_str().into()),
        ],
        &note,
    );
    Ok(())
}

/// `keytool report @x --reason R`: to `@relay@<subject host>`.
pub fn report(
    ctx: &Ctx<'_>,
    identity_name: &str,
    subject: &str,
    reason: ReportReason,
    msg: Option<&str>,
    note: Option<String>,
) -> Result<(), Fail> {
    let msg = msg
        .map(|m| {
            MessageId::parse_hex(m).ok_or_else(|| {
                Fail::code(
                    ErrorCode::InvalidField,
                    format!("--msg {m:?} is not a message id (64 hex)"),
                )
            })
        })
        .transpose()?;
    let s = session(ctx, identity_name)?;
    let subject = parse_handle(subject, &s.me)?;
    let to = Handle::relay(subject.host());
    let payload = Payload::Report {
        subject: subject.clone(),
        reason,
        msg,
        note,
    };
    let (id, result) = post_envelope(&s, vec![to], MessageType::Report, payload, None, None)?;
    let note = format!("\n  reported {subject} for {reason}");
    emit_posted(
        ctx.out,
        "report",
        &id,
        &result,
        vec![
            ("subject", subject.as_str().into()),
            ("reason", reason.as_str().into()),
        ],
        &note,
    );
    Ok(())
}

// ---------------------------------------------------------------- inbox and acks

fn inbox_path(after: Option<&str>, limit: Option<u32>) -> String {
    let mut q = Vec::new();
    if let Some(a) = after {
        q.push(format!("after={a}"));
    }
    if let Some(l) = limit {
        q.push(format!("limit={l}"));
    }
    if q.is_empty() {
        "/v1/inbox".into()
    } else {
        format!("/v1/inbox?{}", q.join("&"))
    }
}

/// Checks a cursor before it goes into a path: cursors are opaque, but only printable ASCII
/// without `&`, `#`, `%` or spaces can be sent (and signed) as is.
pub fn check_cursor(c: &str) -> Result<(), Fail> {
    let ok = !c.is_empty()
        && c.len() <= 64
        && c.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'&' | b'#' | b'%' | b'?'));
    if ok {
        Ok(())
    } else {
        Err(
            Fail::code(ErrorCode::InvalidCursor, format!("{c:?} is not a cursor"))
                .hint("use a cursor printed by inbox or watch"),
        )
    }
}

/// One readable line for an inbox item.
pub fn item_line(cursor: &str, env: &Value) -> String {
    let o = env.as_object();
    let s = |k: &str| {
        o.and_then(|o| o.get(k))
            .and_then(Value::as_str)
            .unwrap_or("?")
    };
    let ty = s("type");
    let p = o.and_then(|o| o.get("payload")).and_then(Value::as_object);
    let ps = |k: &str| p.and_then(|p| p.get(k)).and_then(Value::as_str);
    let short = |id: Option<&str>| clean(id.unwrap_or("?"), 12);
    let summary = match ty {
        "message" => ps("text")
            .map(|t| format!("{:?}", clean(t, SUMMARY_CHARS_MAX)))
            .unwrap_or_default(),
        "ack" => format!(
            "ack of {}: {}{}",
            short(ps("msg")),
            ps("status").unwrap_or("?"),
            ps("reason")
                .map(|r| format!(" ({})", clean(r, 80)))
                .unwrap_or_default()
        ),
        "receipt" => format!(
            "{} {} for {}{}",
            short(ps("msg")),
            ps("status").unwrap_or("?"),
            ps("recipient").unwrap_or("?"),
            ps("ack_status")
                .map(|a| format!(" ({a})"))
                .unwrap_or_default()
        ),
        "contact_request" => format!(
            "asks for level {}{}",
            ps("level").unwrap_or("?"),
            ps("note")
                .map(|n| format!(": {:?}", clean(n, 80)))
                .unwrap_or_default()
        ),
        "task_request" => format!("task {}", clean(ps("task").unwrap_or("?"), 64)),
        "task_result" => format!(
            "result {} for {}",
            ps("status").unwrap_or("?"),
            clean(s("corr"), 64)
        ),
        _ => p
            .map(|p| {
                clean(
                    &String::from_utf8_lossy(&canon::canonicalize(&Value::Object(p.clone()))),
                    SUMMARY_CHARS_MAX,
                )
            })
            .unwrap_or_default(),
    };
    let ack = o
        .and_then(|o| o.get("ack_by"))
        .and_then(Value::as_i64)
        .map(|t| format!("  [ack by {}]", fmt_ms(t)))
        .unwrap_or_default();
    format!(
        "{cursor:>6}  {ty:<15}  {}  {}  {summary}{ack}",
        clean(s("from"), 80),
        clean(s("id"), 64)
    )
}

/// The `{"cursor","envelope"}` of an inbox item, or a failure for a malformed page.
fn page_item(v: &Value) -> Result<(String, Value), Fail> {
    let o = v.as_object();
    let cursor = o.and_then(|o| o.get("cursor")).and_then(Value::as_str);
    let env = o.and_then(|o| o.get("envelope"));
    match (cursor, env) {
        (Some(c), Some(e)) => Ok((c.to_owned(), e.clone())),
        _ => Err(Fail::new(
            Exit::Failure,
            "the relay's inbox page has an item without cursor or envelope",
        )),
    }
}

/// `keytool inbox`.
pub fn inbox(
    ctx: &Ctx<'_>,
    identity_name: &str,
    after: Option<&str>,
    limit: Option<u32>,
) -> Result<(), Fail> {
    if let Some(c) = after {
        check_cursor(c)?;
    }
    let s = session(ctx, identity_name)?;
    let a = s.client.get(&inbox_path(after, limit), Some(&s.auth))?;
    let items = a
        .list("items")
        .iter()
        .map(page_item)
        .collect::<Result<Vec<_>, _>>()?;
    for (cursor, env) in &items {
        let line = obj(vec![
            ("cursor", cursor.clone().into()),
            ("envelope", env.clone()),
        ]);
        ctx.out.emit(&item_line(cursor, env), line);
    }
    if !ctx.out.json {
        let next = a.str("next").unwrap_or("");
        if items.is_empty() {
            println!(
                "(no items{})",
                after
                    .map(|c| format!(" after cursor {c}"))
                    .unwrap_or_default()
            );
        } else {
            println!(
                "({} items; next page: keytool inbox --after {next})",
                items.len()
            );
        }
    }
    Ok(())
}

/// Finds who sent message `id` to us by reading the inbox from the start.
fn find_sender(s: &Session, id: &MessageId) -> Result<(Handle, String), Fail> {
    let want = id.to_hex();
    let mut after: Option<String> = None;
    for _ in 0..ACK_LOOKUP_PAGES_MAX {
        let a = s
            .client
            .get(&inbox_path(after.as_deref(), None), Some(&s.auth))?;
        let items = a.list("items");
        for v in items {
            let (_, env) = page_item(v)?;
            let o = env.as_object();
            let get = |k: &str| o.and_then(|o| o.get(k)).and_then(Value::as_str);
            if get("id") == Some(want.as_str()) {
                let from = get("from")
                    .and_then(|f| Handle::parse(f).ok())
                    .ok_or_else(|| {
                        Fail::new(
                            Exit::Failure,
                            format!("message {want} in the inbox has no valid `from`"),
                        )
                    })?;
                return Ok((from, get("type").unwrap_or("").to_owned()));
            }
        }
        match a.str("next") {
            Some(n) if !items.is_empty() && Some(n) != after.as_deref() => {
                check_cursor(n)?;
                after = Some(n.to_owned());
            }
            _ => break,
        }
    }
    Err(Fail::code(ErrorCode::NotFound, format!("message {want} is not in the inbox of {}", s.me))
        .hint("ack takes the id of a message you received (keytool inbox shows ids); pass --from @sender if you know it"))
}

/// `keytool ack ID`.
pub fn ack(
    ctx: &Ctx<'_>,
    identity_name: &str,
    id: &str,
    status: AckStatus,
    reason: Option<String>,
    from: Option<&str>,
) -> Result<(), Fail> {
    let msg = MessageId::parse_hex(id).ok_or_else(|| {
        Fail::code(
            ErrorCode::InvalidField,
            format!("{id:?} is not a message id (64 hex)"),
        )
    })?;
    let s = session(ctx, identity_name)?;
    let sender = match from {
        Some(f) => parse_handle(f, &s.me)?,
        None => {
            let (sender, ty) = find_sender(&s, &msg)?;
            if ty == "ack" || ty == "receipt" {
                return Err(Fail::new(
                    Exit::Input,
                    format!(
                        "{id} is {ty} {}; acks and receipts are not acked",
                        if ty == "ack" { "an" } else { "a" }
                    ),
                ));
            }
            sender
        }
    };
    let (ack_id, result) = post_envelope(
        &s,
        vec![sender.clone()],
        MessageType::Ack,
        Payload::Ack {
            msg,
            status,
            reason,
        },
        None,
        None,
    )?;
    let note = format!("\n  acked {msg} from {sender}: {status}");
    emit_posted(
        ctx.out,
        "ack",
        &ack_id,
        &result,
        vec![
            ("msg", msg.to_hex().into()),
            ("to", sender.as_str().into()),
            ("status", status.as_str().into()),
        ],
        &note,
    );
    Ok(())
}

/// `keytool status ID`.
pub fn status(ctx: &Ctx<'_>, identity_name: &str, id: &str) -> Result<(), Fail> {
    let msg = MessageId::parse_hex(id).ok_or_else(|| {
        Fail::code(
            ErrorCode::InvalidField,
            format!("{id:?} is not a message id (64 hex)"),
        )
    })?;
    let s = session(ctx, identity_name)?;
    let a = s
        .client
        .get(&format!("/v1/messages/{msg}"), Some(&s.auth))?;
    let o = a.body.as_object();
    let int = |k: &str| o.and_then(|o| o.get(k)).and_then(Value::as_i64);
    let mut text = format!(
        "message {msg}\n  type    {}\n  sent    {}\n  ack by  {}",
        clean(a.str("type").unwrap_or("?"), 64),
        int("ts").map(fmt_ms).unwrap_or_else(|| "?".into()),
        int("ack_by")
            .map(fmt_ms)
            .unwrap_or_else(|| "(no ack requested)".into())
    );
    for r in a.list("recipients") {
        let ro = r.as_object();
        let rs = |k: &str| ro.and_then(|o| o.get(k)).and_then(Value::as_str);
        let updated = ro
            .and_then(|o| o.get("updated"))
            .and_then(Value::as_i64)
            .map(fmt_ms)
            .unwrap_or_default();
        let ack = match (rs("ack"), rs("ack_status")) {
            (Some(id), Some(st)) => format!("  ack {id} ({st})"),
            _ => String::new(),
        };
        text.push_str(&format!(
            "\n  {:<32} {:<13} {updated}{ack}",
            clean(rs("handle").unwrap_or("?"), 80),
            clean(rs("status").unwrap_or("?"), 20)
        ));
    }
    let mut v = a.body.clone();
    if let Value::Object(o) = &mut v {
        let mut with_ok = Object::new();
        with_ok.insert("ok", Value::Bool(true));
        for (k, x) in o.iter() {
            with_ok.insert(k, x.clone());
        }
        *o = with_ok;
    }
    ctx.out.emit(&text, v);
    Ok(())
}

// ---------------------------------------------------------------- contacts

fn level_body(level: Option<ContactLevel>) -> Vec<u8> {
    let v = match level {
        Some(l) => obj(vec![("level", l.as_str().into())]),
        None => obj(vec![]),
    };
    canon::canonicalize(&v)
}

/// `keytool contacts add @x --level L`.
pub fn contacts_add(
    ctx: &Ctx<'_>,
    identity_name: &str,
    who: &str,
    level: ContactLevel,
) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let h = parse_handle(who, &s.me)?;
    let a = s.client.call(
        "PUT",
        &format!("/v1/contacts/{h}"),
        Some(&level_body(Some(level))),
        Some(&s.auth),
    )?;
    let lv = a.str("level").unwrap_or(level.as_str()).to_owned();
    ctx.out.emit(
        &format!("{h} may now send you messages that need level {lv} or less"),
        ok_obj(vec![("handle", h.as_str().into()), ("level", lv.into())]),
    );
    Ok(())
}

/// `keytool contacts remove @x`.
pub fn contacts_remove(ctx: &Ctx<'_>, identity_name: &str, who: &str) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let h = parse_handle(who, &s.me)?;
    s.client
        .call("DELETE", &format!("/v1/contacts/{h}"), None, Some(&s.auth))?;
    ctx.out.emit(
        &format!("removed {h} from your contacts"),
        ok_obj(vec![
            ("handle", h.as_str().into()),
            ("removed", Value::Bool(true)),
        ]),
    );
    Ok(())
}

/// `keytool contacts list`: one JSON line per contact with `--json`.
pub fn contacts_list(ctx: &Ctx<'_>, identity_name: &str) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let a = s.client.get("/v1/contacts", Some(&s.auth))?;
    let list = a.list("contacts");
    for c in list {
        let co = c.as_object();
        let cs = |k: &str| {
            co.and_then(|o| o.get(k))
                .and_then(Value::as_str)
                .unwrap_or("?")
        };
        let since = co
            .and_then(|o| o.get("since"))
            .and_then(Value::as_i64)
            .map(fmt_ms)
            .unwrap_or_default();
        ctx.out.emit(
            &format!(
                "{:<40} {:<8} since {since}",
                clean(cs("handle"), 80),
                clean(cs("level"), 16)
            ),
            c.clone(),
        );
    }
    if list.is_empty() && !ctx.out.json {
        println!("(no contacts: nobody can send you messages yet; keytool contacts add @them --level message)");
    }
    Ok(())
}

/// `keytool requests list`: one JSON line per pending request with `--json`.
pub fn requests_list(ctx: &Ctx<'_>, identity_name: &str) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let a = s.client.get("/v1/contact-requests", Some(&s.auth))?;
    let list = a.list("requests");
    for r in list {
        let ro = r.as_object();
        let rs = |k: &str| ro.and_then(|o| o.get(k)).and_then(Value::as_str);
        let ts = ro
            .and_then(|o| o.get("ts"))
            .and_then(Value::as_i64)
            .map(fmt_ms)
            .unwrap_or_default();
        let note = rs("note")
            .map(|n| format!("  {:?}", clean(n, 80)))
            .unwrap_or_default();
        let line = format!(
            "{}  {:<32} {:<8} {ts}{note}",
            clean(rs("id").unwrap_or("?"), 64),
            clean(rs("from").unwrap_or("?"), 80),
            clean(rs("level").unwrap_or("?"), 16)
        );
        ctx.out.emit(&line, r.clone());
    }
    if list.is_empty() && !ctx.out.json {
        println!("(no pending contact requests)");
    }
    Ok(())
}

/// `keytool requests accept ID [--level L]` and `keytool requests reject ID`.
pub fn requests_answer(
    ctx: &Ctx<'_>,
    identity_name: &str,
    id: &str,
    accept: Option<Option<ContactLevel>>,
) -> Result<(), Fail> {
    let rid = MessageId::parse_hex(id).ok_or_else(|| {
        Fail::code(
            ErrorCode::InvalidField,
            format!("{id:?} is not a request id (64 hex)"),
        )
    })?;
    let s = session(ctx, identity_name)?;
    match accept {
        Some(level) => {
            let a = s.client.call(
                "POST",
                &format!("/v1/contact-requests/{rid}/accept"),
                Some(&level_body(level)),
                Some(&s.auth),
            )?;
            let h = a.str("handle").unwrap_or("?").to_owned();
            let lv = a.str("level").unwrap_or("?").to_owned();
            ctx.out.emit(
                &format!(
                    "accepted: {} may now send you messages at level {}",
                    clean(&h, 80),
                    clean(&lv, 16)
                ),
                ok_obj(vec![
                    ("id", rid.to_hex().into()),
                    ("handle", h.into()),
                    ("level", lv.into()),
                ]),
            );
        }
        None => {
            s.client.call(
                "POST",
                &format!("/v1/contact-requests/{rid}/reject"),
                None,
                Some(&s.auth),
            )?;
            ctx.out.emit(
                &format!("rejected request {rid} (the requester is not told)"),
                ok_obj(vec![
                    ("id", rid.to_hex().into()),
                    ("rejected", Value::Bool(true)),
                ]),
            );
        }
    }
    Ok(())
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
