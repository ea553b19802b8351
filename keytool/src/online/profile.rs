//! Profiles and the directory (SPEC.md section 18): `profile set`, `profile show` and `find`.
//!
//! Nothing a relay serves is printed as a profile before it is verified here (PROF-2): parsed
//! under the profile schema, its `key` looked up in the agent's key log (verified from its first
//! entry) as the key valid at the profile's `ts`, its signature checked, and its `handle` the one
//! asked about. The relay is trusted to show profiles, not to vouch for them; the `tier` next to a
//! profile is the relay's statement, printed as such.
//!
//! The arguments and their checks are in `profile_args`.
//!
//! `seq` of a new profile: the current time in milliseconds, or one more than the seq of the
//! profile the relay shows if that is higher. Time needs no state on disk and works across
//! machines that share the key; the relay's copy covers a clock that went back. The relay keeps
//! an expired profile for PROF-5 without showing it: if keytool signed it, its seq is at most its
//! signing time (unless the clock had gone back), so the current time is above it; if not (a
//! profile of another client with a higher seq), the relay answers `profile_outdated`, with a hint.

use super::profile_args::{check_spec, directory_path, FindQuery, ProfileCmd, ProfileSpec};
use super::{clean, ok_obj, opt, parse_handle, session, Ctx, Logs, Session};
use crate::client::Descriptor;
use crate::offline::now_ms;
use crate::output::{fmt_ms, Exit, Fail};
use formica_protocol::{
    Capability, ErrorCode, Handle, KeyLog, MessageType, Profile, SignedProfile, Value,
};

/// Pages `find --all` reads at most (50 profiles each on the reference relay): a bound on what
/// one command fetches and verifies; the last `next` is printed so the search can go on.
pub const FIND_PAGES_MAX: usize = 20;

/// `keytool profile set|show`.
pub fn profile(ctx: &Ctx<'_>, cmd: ProfileCmd) -> Result<(), Fail> {
    match cmd {
        ProfileCmd::Set { spec, id } => profile_set(ctx, &id.identity, &spec),
        ProfileCmd::Show { handle, id } => profile_show(ctx, &id.identity, handle.as_deref()),
    }
}

// ---------------------------------------------------------------- verification

/// A served profile, verified, with the tier the relay reports for its agent.
#[derive(Debug)]
struct Shown {
    signed: SignedProfile,
    tier: Option<i64>,
}

/// PROF-2 for one served `{"profile", "tier"}` item: the profile of `asked`, signed by the key
/// of `log` valid at its `ts`. A failure is exit 4, with the protocol's code where there is one.
fn verify_item(item: &Value, asked: &Handle, log: &KeyLog) -> Result<Shown, Fail> {
    let refuse = |code: Option<ErrorCode>, why: String| {
        let message = format!("the relay served a profile for {asked} that does not verify: {why}");
        let mut f = match code {
            Some(c) => Fail::code(c, message),
            None => Fail::new(Exit::Auth, message),
        };
        f.exit = Exit::Auth;
        f.hint("do not use this profile; the relay (or something between you) altered it")
    };
    let o = item.as_object();
    let v = o
        .and_then(|o| o.get("profile"))
        .ok_or_else(|| refuse(Some(ErrorCode::MissingField), "no `profile` member".into()))?;
    let signed =
        SignedProfile::from_value(v.clone()).map_err(|e| refuse(Some(e.code()), e.to_string()))?;
    let p = signed.profile();
    if &p.handle != asked {
        return Err(refuse(None, format!("it is the profile of {}", p.handle)));
    }
    let key = log
        .key_at(&p.key, p.ts)
        .map_err(|e| refuse(Some(e.code()), e.to_string()))?;
    signed
        .verify(key)
        .map_err(|e| refuse(Some(e.code()), e.to_string()))?;
    let tier = o.and_then(|o| o.get("tier")).and_then(Value::as_i64);
    Ok(Shown { signed, tier })
}

/// `GET /v1/profiles/{h}`, verified; `None` for 404 `not_found` (no profile this caller may see).
fn fetch_profile(s: &Session, h: &Handle, logs: &mut Logs) -> Result<Option<Shown>, Fail> {
    let a = match s.client.get(&format!("/v1/profiles/{h}"), Some(&s.auth)) {
        Ok(a) => a,
        Err(f) if f.code == Some(ErrorCode::NotFound) => return Ok(None),
        Err(f) => return Err(f),
    };
    let log = logs.get(&s.client, h)?;
    verify_item(&a.body, h, log).map(Some)
}

// ---------------------------------------------------------------- output

fn tier_text(desc: &Descriptor, tier: Option<i64>) -> String {
    let Some(t) = tier else {
        return "-".into();
    };
    let name = desc
        .value
        .as_object()
        .and_then(|o| o.get("tiers"))
        .and_then(Value::as_array)
        .and_then(|a| a.get(usize::try_from(t).ok()?))
        .and_then(|v| v.as_object()?.get("name")?.as_str());
    match name {
        Some(n) => format!("{t} ({})", clean(n, 32)),
        None => t.to_string(),
    }
}

fn capability_text(c: &Capability) -> String {
    let mut s = c.id.clone();
    if let Some(v) = &c.version {
        s.push('@');
        s.push_str(v);
    }
    if !c.tags.is_empty() {
        s.push(':');
        s.push_str(&c.tags.join(","));
    }
    s
}

/// The JSON of a verified profile: `{"handle","verified":true,"tier","profile"}`.
fn shown_value(sh: &Shown) -> Vec<(&'static str, Value)> {
    vec![
        ("handle", sh.signed.profile().handle.as_str().into()),
        ("verified", Value::Bool(true)),
        ("tier", sh.tier.map_or(Value::Null, Value::Int)),
        ("profile", sh.signed.value().clone()),
    ]
}

fn shown_text(desc: &Descriptor, sh: &Shown) -> String {
    let p = sh.signed.profile();
    let mut t = format!(
        "{}  (verified: signed by key {}, valid at its time)\n  name          {}",
        p.handle,
        p.key,
        clean(&p.name, 64)
    );
    let mut line = |k: &str, v: String| t.push_str(&format!("\n  {k:<13} {v}"));
    if let Some(d) = &p.description {
        line("description", clean(d, 280));
    }
    if !p.capabilities.is_empty() {
        let caps: Vec<String> = p.capabilities.iter().map(capability_text).collect();
        line("capabilities", caps.join("  "));
    }
    if !p.accepts.is_empty() {
        let acc: Vec<&str> = p.accepts.iter().map(MessageType::as_str).collect();
        line("accepts", acc.join(", "));
    }
    if let Some(pl) = &p.platform {
        line("platform", clean(pl, 64));
    }
    if let Some(m) = &p.model {
        line("model", clean(m, 64));
    }
    line(
        "listed",
        if p.listed {
            "yes (in the relay's directory)".into()
        } else {
            "no (shown to the agent's contacts only)".into()
        },
    );
    line(
        "seq",
        format!(
            "{}, signed {}, expires {}",
            p.seq,
            fmt_ms(p.ts),
            fmt_ms(p.expires)
        ),
    );
    line(
        "tier",
        format!("{} (as the relay reports it)", tier_text(desc, sh.tier)),
    );
    t
}

// ---------------------------------------------------------------- commands

/// `keytool profile set ...`.
pub fn profile_set(ctx: &Ctx<'_>, identity_name: &str, spec: &ProfileSpec) -> Result<(), Fail> {
    check_spec(spec).map_err(|e| Fail::new(Exit::Usage, e))?;
    let s = session(ctx, identity_name)?;
    let limit = |k: &str| s.desc.int(&["directory", k]);
    let ttl_ms = i64::try_from(spec.ttl.as_millis()).unwrap_or(i64::MAX);
    if let Some(max) = limit("profile_ttl_ms_max") {
        if ttl_ms > max {
            return Err(Fail::code(
                ErrorCode::InvalidField,
                format!(
                    "a ttl of {ttl_ms} ms is longer than {} allows: at most {max} ms ({:.1} days, its directory.profile_ttl_ms_max)",
                    s.desc.host,
                    max as f64 / 86_400_000.0
                ),
            )
            .detail("field", "expires".into()));
        }
    }
    if let Some(max) = limit("profile_capabilities_max") {
        if spec.capabilities.len() as i64 > max {
            return Err(Fail::code(
                ErrorCode::InvalidField,
                format!(
                    "{} capabilities, but {} takes at most {max} (its directory.profile_capabilities_max)",
                    spec.capabilities.len(),
                    s.desc.host
                ),
            )
            .detail("field", "capabilities".into()));
        }
    }
    // The seq: see the module documentation. A profile of ours the relay shows that does not
    // verify fails the command (exit 4), as in `profile show`.
    let prev = fetch_profile(&s, &s.me, &mut Logs::default())?;
    let now = now_ms();
    let seq = prev
        .as_ref()
        .map_or(now, |p| now.max(p.signed.profile().seq.saturating_add(1)));
    let profile = Profile {
        handle: s.me.clone(),
        key: s.id.key.public().key_id(),
        seq,
        ts: now,
        expires: now.saturating_add(ttl_ms),
        name: spec.name.clone(),
        description: spec.description.clone(),
        capabilities: spec.capabilities.clone(),
        accepts: spec.accepts.clone(),
        platform: spec.platform.clone(),
        model: spec.model.clone(),
        listed: spec.listed,
    };
    let signed = profile
        .sign(&s.id.key)
        .map_err(|e| Fail::code(e.code(), e.to_string()))?;
    if let Some(max) = limit("profile_bytes_max") {
        if signed.wire().len() as i64 > max {
            return Err(Fail::code(
                ErrorCode::TooLarge,
                format!(
                    "the signed profile is {} bytes; {} takes at most {max} (its directory.profile_bytes_max)",
                    signed.wire().len(),
                    s.desc.host
                ),
            )
            .hint("shorten the description or drop capabilities"));
        }
    }
    let a = s
        .client
        .call("PUT", "/v1/profile", Some(signed.wire()), Some(&s.auth))
        .map_err(|f| match f.code {
            Some(ErrorCode::ProfileOutdated) => f.hint(
                "the relay holds a profile of yours with a higher seq that it does not show (expired, made by another client) or that came in meanwhile; set it again, and if this repeats, wait until the time passes that seq (it is a time in ms when keytool made it)",
            ),
            Some(ErrorCode::NotFound) => f.hint(format!(
                "{} does not serve profiles (SPEC section 18)",
                s.desc.host
            )),
            _ => f,
        })?;
    let int = |k: &str| {
        a.body
            .as_object()
            .and_then(|o| o.get(k))
            .and_then(Value::as_i64)
    };
    if a.str("handle") != Some(s.me.as_str()) || int("seq") != Some(seq) {
        return Err(Fail::new(
            Exit::Failure,
            format!(
                "the relay answered for {:?} seq {:?}, not for {} seq {seq}",
                a.str("handle"),
                int("seq"),
                s.me
            ),
        ));
    }
    let result = a.str("result").unwrap_or("stored").to_owned();
    let listed = a
        .body
        .as_object()
        .and_then(|o| o.get("listed"))
        .and_then(Value::as_bool)
        .unwrap_or(spec.listed);
    let expires = int("expires").unwrap_or(profile.expires);
    let what = match result.as_str() {
        "duplicate" => "unchanged (the relay already had this profile)",
        _ => "stored",
    };
    ctx.out.emit(
        &format!(
            "profile of {} {what}: seq {seq}, {}, expires {}",
            s.me,
            if listed {
                "listed in the directory"
            } else {
                "not listed (you and your contacts see it)"
            },
            fmt_ms(expires)
        ),
        ok_obj(vec![
            ("handle", s.me.as_str().into()),
            ("seq", Value::Int(seq)),
            ("listed", Value::Bool(listed)),
            ("expires", Value::Int(expires)),
            ("result", result.into()),
            ("profile", signed.value().clone()),
        ]),
    );
    Ok(())
}

/// `keytool profile show [@handle]`: the profile, verified against the agent's key log.
pub fn profile_show(ctx: &Ctx<'_>, identity_name: &str, who: Option<&str>) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let h = match who {
        Some(w) => parse_handle(w, &s.me)?,
        None => s.me.clone(),
    };
    let Some(sh) = fetch_profile(&s, &h, &mut Logs::default())? else {
        let mut f = Fail::code(
            ErrorCode::NotFound,
            format!("no profile of {h} that you may see"),
        );
        f = if h.host() != s.me.host() {
            f.hint(format!(
                "a relay shows only the profiles of its own agents, and keytool reads profiles only from your relay ({}); reading other relays' profiles is not supported yet",
                s.me.host()
            ))
        } else if h == s.me {
            f.hint("you have none (or it expired): keytool profile set --name NAME")
        } else {
            f.hint(
                "the agent has none, it expired, or it is not listed and you are not its contact",
            )
        };
        return Err(f);
    };
    let text = shown_text(&s.desc, &sh);
    let mut v = vec![("ok", Value::Bool(true))];
    v.extend(shown_value(&sh));
    ctx.out.emit(&text, super::obj(v));
    Ok(())
}

/// `keytool find ...`: one line per verified result, then (with `--json`) `{"ok","count","next"}`.
/// A page is verified whole before any of it is printed; one profile that does not verify fails
/// the command.
pub fn find(ctx: &Ctx<'_>, identity_name: &str, q: &FindQuery) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let mut logs = Logs::default();
    let mut cursor = q.cursor.clone();
    let mut count = 0usize;
    for page in 0.. {
        let a = s
            .client
            .get(&directory_path(q, cursor.as_deref()), Some(&s.auth))
            .map_err(|f| match f.code {
                Some(ErrorCode::InvalidCursor) => {
                    f.hint("pass the `next` an earlier find printed, or no cursor")
                }
                _ => f,
            })?;
        let mut shown = Vec::new();
        for item in a.list("results") {
            let h = item
                .as_object()
                .and_then(|o| o.get("profile"))
                .and_then(|p| p.as_object()?.get("handle")?.as_str())
                .and_then(|h| Handle::parse(h).ok())
                .ok_or_else(|| {
                    Fail::new(
                        Exit::Auth,
                        "the relay's directory page has a result without a valid profile handle",
                    )
                })?;
            let log = logs.get(&s.client, &h)?;
            shown.push(verify_item(item, &h, log)?);
        }
        for sh in &shown {
            let p = sh.signed.profile();
            let caps: Vec<String> = p.capabilities.iter().map(capability_text).collect();
            let line = format!(
                "{:<40} tier {:<12} {:?}  {}",
                p.handle.as_str(),
                tier_text(&s.desc, sh.tier),
                clean(&p.name, 64),
                caps.join(" ")
            );
            ctx.out.emit(line.trim_end(), super::obj(shown_value(sh)));
        }
        count += shown.len();
        if q.federated {
            // PROF-11: which relays answered; the page is the whole answer.
            let mut relays = Vec::new();
            for r in a.list("relays") {
                let f = |k: &str| r.as_object().and_then(|o| o.get(k)).cloned();
                let name = f("relay").and_then(|v| v.as_str().map(str::to_owned));
                let status = f("status").and_then(|v| v.as_str().map(str::to_owned));
                let (Some(name), Some(status)) = (name, status) else {
                    return Err(Fail::new(
                        Exit::Failure,
                        "the relay's federated answer has a malformed `relays` entry",
                    ));
                };
                relays.push(format!("{} {}", clean(&name, 80), clean(&status, 16)));
            }
            let partial = a
                .body
                .as_object()
                .and_then(|o| o.get("partial"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            ctx.out.emit(
                &format!(
                    "({count} profile{}, each verified; relays: {}{})",
                    if count == 1 { "" } else { "s" },
                    relays.join(", "),
                    if partial {
                        "; PARTIAL: not every relay answered"
                    } else {
                        ""
                    }
                ),
                ok_obj(vec![
                    ("count", Value::Int(count as i64)),
                    ("next", Value::Null),
                    ("partial", Value::Bool(partial)),
                    (
                        "relays",
                        a.body
                            .as_object()
                            .and_then(|o| o.get("relays"))
                            .cloned()
                            .unwrap_or(Value::Array(Vec::new())),
                    ),
                ]),
            );
            return Ok(());
        }
        let next = a.str("next").map(str::to_owned);
        let stuck = next.is_some() && next == cursor;
        cursor = next;
        if !q.all || cursor.is_none() || stuck || page + 1 >= FIND_PAGES_MAX {
            break;
        }
    }
    let more = match &cursor {
        Some(c) => format!("; more: pass --cursor {}", clean(c, 80)),
        None => String::new(),
    };
    ctx.out.emit(
        &format!(
            "({count} profile{}, each verified against its agent's key log{more})",
            if count == 1 { "" } else { "s" }
        ),
        ok_obj(vec![
            ("count", Value::Int(count as i64)),
            ("next", opt(cursor)),
        ]),
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::profile_args::parse_capability;
    use super::*;
    use formica_protocol::keylog::{KeyLogEntry, KeyOp};
    use formica_protocol::SecretKey;

    fn fixture() -> (SecretKey, Handle, KeyLog, Profile) {
        let sk = SecretKey::from_seed(&[3; 32]);
        let h = Handle::parse("@kevin@relay-a.example").unwrap();
        let entry = KeyLogEntry {
            handle: h.clone(),
            seq: 0,
            prev: None,
            ts: 1_000,
            op: KeyOp::Register {
                key: sk.public(),
                recovery: None,
            },
            signer: sk.public().key_id(),
        }
        .sign(&sk, &[])
        .unwrap();
        let log = KeyLog::verify(vec![entry]).unwrap();
        let p = Profile {
            handle: h.clone(),
            key: sk.public().key_id(),
            seq: 1,
            ts: 2_000,
            expires: 3_000,
            name: "Kevin".into(),
            description: None,
            capabilities: vec![parse_capability("code-review@2:rust").unwrap()],
            accepts: vec![],
            platform: None,
            model: None,
            listed: true,
        };
        (sk, h, log, p)
    }

    fn item(v: Value) -> Value {
        super::super::obj(vec![("profile", v), ("tier", Value::Int(0))])
    }

    #[test]
    fn only_a_profile_signed_by_the_key_valid_at_its_time_verifies() {
        let (sk, h, log, p) = fixture();
        let good = p.sign(&sk).unwrap();
        let sh = verify_item(&item(good.value().clone()), &h, &log).unwrap();
        assert_eq!((sh.signed.profile().seq, sh.tier), (1, Some(0)));

        // A changed member: the signature no longer verifies.
        let mut v = good.value().clone();
        if let Value::Object(o) = &mut v {
            o.insert("name", "Mallory".into());
        }
        let f = verify_item(&item(v), &h, &log).unwrap_err();
        assert_eq!(
            (f.exit, f.code),
            (Exit::Auth, Some(ErrorCode::BadSignature))
        );

        // Signed before the key was registered: not the key valid at `ts`.
        let early = Profile {
            ts: 500,
            ..p.clone()
        }
        .sign(&sk)
        .unwrap();
        let f = verify_item(&item(early.value().clone()), &h, &log).unwrap_err();
        assert_eq!((f.exit, f.code), (Exit::Auth, Some(ErrorCode::KeyNotValid)));

        // Another key altogether.
        let other = SecretKey::from_seed(&[4; 32]);
        let forged = Profile {
            key: other.public().key_id(),
            ..p.clone()
        }
        .sign(&other)
        .unwrap();
        let f = verify_item(&item(forged.value().clone()), &h, &log).unwrap_err();
        assert_eq!((f.exit, f.code), (Exit::Auth, Some(ErrorCode::UnknownKey)));

        // A good profile of another handle, served for this one.
        let asked = Handle::parse("@nova@relay-a.example").unwrap();
        let f = verify_item(&item(good.value().clone()), &asked, &log).unwrap_err();
        assert_eq!((f.exit, f.code), (Exit::Auth, None));

        // Not a profile at all.
        let f = verify_item(&item(Value::Int(1)), &h, &log).unwrap_err();
        assert_eq!(f.exit, Exit::Auth);
        let f = verify_item(&Value::Null, &h, &log).unwrap_err();
        assert_eq!(f.exit, Exit::Auth);
    }
}
