//! Presence (SPEC.md section 18.4): `presence set|show|heartbeat` and `who`.
//!
//! Whether an agent is connected, and when it was last seen, is its relay's observation and is
//! printed as such. What an agent says of itself (busy, away, a note) is a signed status, printed
//! only once it verifies (PRES-2, read as PROF-2): parsed under the status schema, its `key` the
//! key valid at its `ts` in the agent's key log verified from its first entry, its signature
//! checked, its handle the one the relay answered for. A full presence must also agree with it:
//! a connected agent shows the status of its signed status, or `available` without one (PRES-1),
//! so a relay cannot show an agent busy or away without the agent's signature. The bare status
//! a listed agent shows to everyone (PRES-4's coarse presence) carries no signature and is
//! printed as the relay's statement.
//!
//! The arguments and their checks are in `presence_args`.

use super::presence_args::{PresenceCmd, StatusSpec};
use super::{clean, obj, ok_obj, opt, parse_handle, session, Ctx, Logs, Session};
use crate::client::{Answer, Client};
use crate::offline::now_ms;
use crate::output::{fmt_ms, Exit, Fail};
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::{Availability, ErrorCode, Handle, SignedStatus, Status, Value};

/// What a relay may show of an agent (PRES-1).
const SHOWN: &[&str] = &["available", "busy", "away", "offline"];

/// `keytool presence set|show|heartbeat`.
pub fn presence(ctx: &Ctx<'_>, cmd: PresenceCmd) -> Result<(), Fail> {
    match cmd {
        PresenceCmd::Set {
            spec,
            heartbeat: beat,
            id,
        } => presence_set(ctx, &id.identity, &spec, beat),
        PresenceCmd::Show { handle, id } => presence_show(ctx, &id.identity, handle.as_deref()),
        PresenceCmd::Heartbeat { id } => heartbeat(ctx, &id.identity),
    }
}

// ---------------------------------------------------------------- verification

/// One agent's presence as its relay served it, checked.
#[derive(Debug)]
pub struct Entry {
    pub handle: Handle,
    /// available, busy, away or offline.
    pub status: String,
    /// The full presence (the agent granted you a contact level, or it is you), else the
    /// coarse one (a listed profile): the status alone.
    pub full: bool,
    pub last_seen: Option<i64>,
    /// The status in force, verified, and as served.
    pub signed: Option<(SignedStatus, Value)>,
}

/// A served status that does not verify: exit 4, with the protocol's code where there is one.
fn refuse(h: &Handle, code: Option<ErrorCode>, why: String) -> Fail {
    let message = format!("the relay served a presence for {h} that does not verify: {why}");
    let mut f = match code {
        Some(c) => Fail::code(c, message),
        None => Fail::new(Exit::Auth, message),
    };
    f.exit = Exit::Auth;
    f.hint("do not trust this presence; the relay (or something between you) altered it")
}

/// PRES-2 for a served signed status of `h`: the key valid at its `ts`, the signature, the
/// handle. A key log fetched a while ago (a long `watch`) may predate a key change: a status
/// whose key it does not know is checked once more against a log fetched again.
fn verify_status(
    client: &Client,
    logs: &mut Logs,
    v: &Value,
    h: &Handle,
) -> Result<SignedStatus, Fail> {
    let signed = SignedStatus::from_value(v.clone())
        .map_err(|e| refuse(h, Some(e.code()), e.to_string()))?;
    let st = signed.status();
    if &st.handle != h {
        return Err(refuse(
            h,
            None,
            format!("it is the status of {}", st.handle),
        ));
    }
    let first = logs.get(client, h)?.key_at(&st.key, st.ts).copied();
    let key = match first {
        Ok(k) => k,
        Err(e) if !logs.forget_old(h) => return Err(refuse(h, Some(e.code()), e.to_string())),
        Err(_) => *logs
            .get(client, h)?
            .key_at(&st.key, st.ts)
            .map_err(|e| refuse(h, Some(e.code()), e.to_string()))?,
    };
    signed
        .verify(&key)
        .map_err(|e| refuse(h, Some(e.code()), e.to_string()))?;
    Ok(signed)
}

/// PRES-4's presence `v` (of `asked`, when given), checked as the module documentation says.
/// A malformed answer is exit 1; a status that does not verify, exit 4.
pub fn verify_entry(
    client: &Client,
    logs: &mut Logs,
    v: &Value,
    asked: Option<&Handle>,
) -> Result<Entry, Fail> {
    let bad = |why: String| {
        Fail::new(
            Exit::Failure,
            format!("the relay answered with a presence that is not SPEC.md PRES-4's: {why}"),
        )
    };
    let o = v.as_object().ok_or_else(|| bad("not an object".into()))?;
    let handle = o
        .get("handle")
        .and_then(Value::as_str)
        .and_then(|h| Handle::parse(h).ok())
        .ok_or_else(|| bad("no valid `handle`".into()))?;
    if let Some(a) = asked {
        if &handle != a {
            return Err(bad(format!("it is the presence of {handle}, not of {a}")));
        }
    }
    let status = o
        .get("status")
        .and_then(Value::as_str)
        .filter(|st| SHOWN.contains(st))
        .ok_or_else(|| {
            bad(format!(
                "the status of {handle} is not one of {}",
                SHOWN.join(", ")
            ))
        })?
        .to_owned();
    let full = o.get("signed").is_some() || o.get("last_seen").is_some();
    let last_seen = match o.get("last_seen") {
        None | Some(Value::Null) => None,
        Some(t) => Some(
            t.as_i64()
                .ok_or_else(|| bad(format!("the last_seen of {handle} is not a time")))?,
        ),
    };
    let signed = match o.get("signed") {
        None | Some(Value::Null) => None,
        Some(x) => Some((verify_status(client, logs, x, &handle)?, x.clone())),
    };
    if full {
        let says = signed
            .as_ref()
            .map_or(Availability::Available, |(st, _)| st.status().status);
        if status != "offline" && status != says.as_str() {
            let why = match &signed {
                Some(_) => format!("it shows {status}, but the agent signed {}", says.as_str()),
                None => format!("it shows {status} without a status the agent signed"),
            };
            return Err(refuse(&handle, None, why));
        }
    }
    Ok(Entry {
        handle,
        status,
        full,
        last_seen,
        signed,
    })
}

// ---------------------------------------------------------------- output

/// `t` for people, with how long ago it was (by this machine's clock).
fn ago(t: i64, now: i64) -> String {
    let s = (now - t).max(0) / 1000;
    let rel = match s {
        0 => "just now".to_owned(),
        1..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    };
    format!("{} ({rel})", fmt_ms(t))
}

impl Entry {
    fn status_doc(&self) -> Option<&Status> {
        self.signed.as_ref().map(|(st, _)| st.status())
    }

    /// `{"handle","status","view","last_seen","note","expires","verified","signed"}`:
    /// `view` is `full` or `coarse`; `note` and `expires` are the verified status's (`verified`
    /// true), else null.
    pub fn to_value(&self) -> Value {
        obj(self.members())
    }

    fn members(&self) -> Vec<(&'static str, Value)> {
        let st = self.status_doc();
        vec![
            ("handle", self.handle.as_str().into()),
            ("status", self.status.as_str().into()),
            ("view", if self.full { "full" } else { "coarse" }.into()),
            ("last_seen", self.last_seen.map_or(Value::Null, Value::Int)),
            ("note", opt(st.and_then(|s| s.note.clone()))),
            ("expires", st.map_or(Value::Null, |s| Value::Int(s.expires))),
            ("verified", Value::Bool(st.is_some())),
            (
                "signed",
                self.signed.as_ref().map_or(Value::Null, |(_, v)| v.clone()),
            ),
        ]
    }

    fn seen_text(&self, now: i64) -> String {
        self.last_seen
            .map_or_else(|| "never since the relay started".into(), |t| ago(t, now))
    }

    fn signed_text(&self) -> Option<String> {
        let st = self.status_doc()?;
        Some(format!(
            "{} until {} (signed, verified)",
            st.status.as_str(),
            fmt_ms(st.expires)
        ))
    }

    /// One line, for `who`.
    pub fn line(&self, now: i64) -> String {
        let mut t = format!("{:<40} {:<9}", self.handle.as_str(), self.status);
        if !self.full {
            t.push_str(" (listed agent: its status as the relay reports it)");
            return t;
        }
        t.push_str(&format!(" last seen {}", self.seen_text(now)));
        if let Some(x) = self.signed_text() {
            t.push_str(&format!("; {x}"));
        }
        if let Some(n) = self.status_doc().and_then(|s| s.note.as_deref()) {
            t.push_str(&format!("; {:?}", clean(n, 280)));
        }
        t
    }

    /// Several lines, for `presence show`.
    fn text(&self, now: i64) -> String {
        let mut t = format!("{}  {}", self.handle, self.status);
        let mut line = |k: &str, v: String| t.push_str(&format!("\n  {k:<11} {v}"));
        if !self.full {
            line(
                "view",
                "the status alone, as the relay shows it for a listed profile (you are not a contact of this agent: no last seen, no note)".into(),
            );
            return t;
        }
        line("last seen", self.seen_text(now));
        match self.status_doc() {
            Some(st) => {
                line(
                    "status",
                    format!(
                        "{} until {}, signed by key {} (verified against the agent's key log)",
                        st.status.as_str(),
                        fmt_ms(st.expires),
                        st.key
                    ),
                );
                if let Some(n) = &st.note {
                    line("note", clean(n, 280));
                }
            }
            None => line("status", "none signed (available while connected)".into()),
        }
        if self.status == "offline" {
            line(
                "connected",
                "no: no inbox stream open and no recent heartbeat".into(),
            );
        }
        t
    }
}

// ---------------------------------------------------------------- commands

/// Whether the relay's descriptor publishes `presence` (SPEC.md PRES-6).
fn serves_presence(s: &Session) -> bool {
    s.desc
        .value
        .as_object()
        .is_some_and(|o| o.get("presence").is_some())
}

/// A 404 from a relay whose descriptor has no `presence`: it does not serve SPEC.md 18.4.
fn without_presence(s: &Session, f: Fail) -> Fail {
    if f.code == Some(ErrorCode::NotFound) && !serves_presence(s) {
        return f.hint(format!(
            "{} does not serve presence (its descriptor has no `presence`, SPEC.md 18.4)",
            s.desc.host
        ));
    }
    f
}

fn answer_int(a: &Answer, k: &str) -> Option<i64> {
    a.body.as_object()?.get(k)?.as_i64()
}

/// `POST /v1/presence/heartbeat`: connected until the time returned.
fn send_heartbeat(s: &Session) -> Result<i64, Fail> {
    let a = s
        .client
        .call("POST", "/v1/presence/heartbeat", None, Some(&s.auth))
        .map_err(|f| without_presence(s, f))?;
    match (a.str("handle"), answer_int(&a, "connected_until")) {
        (Some(h), Some(t)) if h == s.me.as_str() => Ok(t),
        _ => Err(Fail::new(
            Exit::Failure,
            format!(
                "the relay's heartbeat answer is not for {} with a connected_until",
                s.me
            ),
        )),
    }
}

/// `keytool presence set STATUS [--for D] [--note T] [--heartbeat]`.
pub fn presence_set(
    ctx: &Ctx<'_>,
    identity_name: &str,
    spec: &StatusSpec,
    also_heartbeat: bool,
) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let ttl_ms = i64::try_from(spec.ttl().as_millis()).unwrap_or(i64::MAX);
    if let Some(max) = s.desc.int(&["presence", "status_ttl_ms_max"]) {
        if ttl_ms > max {
            return Err(Fail::code(
                ErrorCode::InvalidField,
                format!(
                    "a status for {ttl_ms} ms is longer than {} allows: at most {max} ms ({:.1} h, its presence.status_ttl_ms_max)",
                    s.desc.host,
                    max as f64 / 3_600_000.0
                ),
            )
            .detail("field", "expires".into()));
        }
    }
    let now = now_ms();
    let status = Status {
        handle: s.me.clone(),
        key: s.id.key.public().key_id(),
        ts: now,
        expires: now.saturating_add(ttl_ms),
        status: spec.status,
        note: spec.note.clone(),
    };
    let signed = status
        .sign(&s.id.key)
        .map_err(|e| Fail::code(e.code(), e.to_string()))?;
    let a = s
        .client
        .call("PUT", "/v1/presence", Some(signed.wire()), Some(&s.auth))
        .map_err(|f| match f.code {
            Some(ErrorCode::StatusOutdated) => f.hint(
                "the relay holds a status of yours signed at a later time (by another client, or before this machine's clock went back): check the clock, then set it again",
            ),
            _ => without_presence(&s, f),
        })?;
    if a.str("handle") != Some(s.me.as_str()) || a.str("status") != Some(spec.status.as_str()) {
        return Err(Fail::new(
            Exit::Failure,
            format!(
                "the relay answered for {:?} {:?}, not for {} {}",
                a.str("handle"),
                a.str("status"),
                s.me,
                spec.status.as_str()
            ),
        ));
    }
    let result = a.str("result").unwrap_or("stored").to_owned();
    let expires = answer_int(&a, "expires").unwrap_or(status.expires);
    let until = if also_heartbeat {
        Some(send_heartbeat(&s)?)
    } else {
        None
    };
    // What the contacts see now: the status is stored whatever this read says.
    let shown = s
        .client
        .get(&format!("/v1/presence/{}", s.me), Some(&s.auth))
        .ok()
        .and_then(|a| a.str("status").map(str::to_owned));
    let mut text = format!(
        "status of {}: {} until {} ({})",
        s.me,
        spec.status.as_str(),
        fmt_ms(expires),
        if result == "duplicate" {
            "unchanged: the relay already had it"
        } else {
            "stored"
        }
    );
    if let Some(n) = &spec.note {
        text.push_str(&format!(", note {:?}", clean(n, 280)));
    }
    if let Some(t) = until {
        text.push_str(&format!("\nconnected until {} (heartbeat)", fmt_ms(t)));
    }
    text.push_str(&match shown.as_deref() {
        Some("offline") => "\nyour contacts see: offline, because you are not connected (no inbox stream open, no heartbeat within the relay's presence.ttl_ms); keep `keytool watch` running, or send `keytool presence heartbeat` (or pass --heartbeat) about every 30 s".to_owned(),
        Some(x) => format!("\nyour contacts see: {x}"),
        None => "\n(could not read back what your contacts see)".to_owned(),
    });
    ctx.out.emit(
        &text,
        ok_obj(vec![
            ("handle", s.me.as_str().into()),
            ("status", spec.status.as_str().into()),
            ("expires", Value::Int(expires)),
            ("note", opt(spec.note.clone())),
            ("result", result.into()),
            ("connected_until", until.map_or(Value::Null, Value::Int)),
            ("shown", opt(shown)),
            (
                "signed",
                json::parse(signed.wire(), JsonLimits::default()).unwrap_or(Value::Null),
            ),
        ]),
    );
    Ok(())
}

/// `keytool presence heartbeat`.
fn heartbeat(ctx: &Ctx<'_>, identity_name: &str) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let until = send_heartbeat(&s)?;
    let every = s
        .desc
        .int(&["presence", "ttl_ms"])
        .map_or_else(String::new, |t| {
            format!("; send the next one within about {} s", t / 2000)
        });
    ctx.out.emit(
        &format!(
            "{} connected until {}{every}, or keep an inbox stream open (keytool watch)",
            s.me,
            fmt_ms(until)
        ),
        ok_obj(vec![
            ("handle", s.me.as_str().into()),
            ("connected_until", Value::Int(until)),
        ]),
    );
    Ok(())
}

/// A 404 for `h`'s presence, said as such (the relay answers it as PROF-8's missing profile).
fn not_found(h: &Handle, f: Fail) -> Fail {
    Fail {
        message: format!("no presence of {h} that you may see"),
        ..f
    }
}

/// `keytool presence show [@handle]`.
pub fn presence_show(ctx: &Ctx<'_>, identity_name: &str, who: Option<&str>) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let h = match who {
        Some(w) => parse_handle(w, &s.me)?,
        None => s.me.clone(),
    };
    let a = match s.client.get(&format!("/v1/presence/{h}"), Some(&s.auth)) {
        Ok(a) => a,
        Err(f) if f.code == Some(ErrorCode::NotFound) && h.host() != s.me.host() => {
            return Err(not_found(&h, f).hint(format!(
                "a relay shows only its own agents' presence, and keytool asks only your relay ({}); presence across relays is not supported yet",
                s.me.host()
            )))
        }
        Err(f) if f.code == Some(ErrorCode::NotFound) && serves_presence(&s) => {
            return Err(not_found(&h, f).hint(
                "you see the presence of agents that granted you a contact level, and the status of agents whose profile is listed; this one did neither, or is not registered",
            ))
        }
        Err(f) => return Err(without_presence(&s, f)),
    };
    let e = verify_entry(&s.client, &mut Logs::default(), &a.body, Some(&h))?;
    ctx.out.emit(&e.text(now_ms()), ok_obj(e.members()));
    Ok(())
}

/// `keytool who`: one line per contact whose presence you may see, then (with `--json`)
/// `{"ok","count"}`. The list is verified whole before any of it is printed.
pub fn who(ctx: &Ctx<'_>, identity_name: &str) -> Result<(), Fail> {
    let s = session(ctx, identity_name)?;
    let a = s
        .client
        .get("/v1/presence", Some(&s.auth))
        .map_err(|f| without_presence(&s, f))?;
    let mut logs = Logs::default();
    let entries = a
        .list("presence")
        .iter()
        .map(|v| verify_entry(&s.client, &mut logs, v, None))
        .collect::<Result<Vec<_>, _>>()?;
    let now = now_ms();
    for e in &entries {
        ctx.out.emit(&e.line(now), e.to_value());
    }
    let n = entries.len();
    let text = if n == 0 {
        "(no contact whose presence you may see: an agent shows its presence to the agents it granted a contact level, and its status alone when its profile is listed)".to_owned()
    } else {
        format!(
            "({n} contact{}; signed statuses verified against each agent's key log; contacts on other relays are not shown)",
            if n == 1 { "" } else { "s" }
        )
    };
    ctx.out
        .emit(&text, ok_obj(vec![("count", Value::Int(n as i64))]));
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use formica_protocol::keylog::{KeyLogEntry, KeyOp};
    use formica_protocol::{KeyLog, SecretKey};

    fn fixture() -> (SecretKey, Handle, Logs, Status) {
        let sk = SecretKey::from_seed(&[5; 32]);
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
        let mut logs = Logs::default();
        logs.insert(KeyLog::verify(vec![entry]).unwrap());
        let st = Status {
            handle: h.clone(),
            key: sk.public().key_id(),
            ts: 2_000,
            expires: 3_000,
            status: Availability::Busy,
            note: Some("in review".into()),
        };
        (sk, h, logs, st)
    }

    fn presence(h: &Handle, status: &str, signed: Option<Value>) -> Value {
        obj(vec![
            ("handle", h.as_str().into()),
            ("status", status.into()),
            ("last_seen", Value::Int(2_500)),
            ("signed", signed.unwrap_or(Value::Null)),
        ])
    }

    fn value(st: &Status, sk: &SecretKey) -> Value {
        json::parse(st.sign(sk).unwrap().wire(), JsonLimits::default()).unwrap()
    }

    /// No key log is fetched here: the logs are in hand, and a client that reaches nothing
    /// would make any fetch fail with exit 6.
    #[test]
    fn only_a_status_signed_by_the_agent_and_agreeing_with_the_relay_is_shown() {
        let (sk, h, mut logs, st) = fixture();
        let client = Client::new("http://127.0.0.1:1").unwrap();
        let good = value(&st, &sk);
        let e = verify_entry(
            &client,
            &mut logs,
            &presence(&h, "busy", Some(good.clone())),
            Some(&h),
        )
        .unwrap();
        assert!(e.full);
        let v = e.to_value();
        let o = v.as_object().unwrap();
        assert_eq!(o.get("status").and_then(Value::as_str), Some("busy"));
        assert_eq!(o.get("view").and_then(Value::as_str), Some("full"));
        assert_eq!(o.get("verified"), Some(&Value::Bool(true)));
        assert_eq!(o.get("note").and_then(Value::as_str), Some("in review"));
        assert_eq!(o.get("expires").and_then(Value::as_i64), Some(3_000));
        assert_eq!(o.get("last_seen").and_then(Value::as_i64), Some(2_500));
        assert!(e.line(2_500).contains("busy until"));

        // Offline whatever it signed: the relay's observation.
        let e = verify_entry(
            &client,
            &mut logs,
            &presence(&h, "offline", Some(good.clone())),
            None,
        )
        .unwrap();
        assert_eq!(e.status, "offline");

        // Without a signed status, a connected agent is available, never busy or away.
        assert!(verify_entry(&client, &mut logs, &presence(&h, "available", None), None).is_ok());
        let f = verify_entry(&client, &mut logs, &presence(&h, "busy", None), None).unwrap_err();
        assert_eq!((f.exit, f.code), (Exit::Auth, None));
        // Nor another status than the one it signed.
        let f = verify_entry(
            &client,
            &mut logs,
            &presence(&h, "away", Some(good.clone())),
            None,
        )
        .unwrap_err();
        assert_eq!((f.exit, f.code), (Exit::Auth, None));

        // A changed note: the signature no longer verifies.
        let mut altered = good.clone();
        if let Value::Object(o) = &mut altered {
            o.insert("note", "free".into());
        }
        let f = verify_entry(
            &client,
            &mut logs,
            &presence(&h, "busy", Some(altered)),
            None,
        )
        .unwrap_err();
        assert_eq!(
            (f.exit, f.code),
            (Exit::Auth, Some(ErrorCode::BadSignature))
        );

        // Signed by a key the agent's log does not have (the log is fresh: not fetched again).
        let other = SecretKey::from_seed(&[6; 32]);
        let forged = value(
            &Status {
                key: other.public().key_id(),
                ..st.clone()
            },
            &other,
        );
        let f = verify_entry(
            &client,
            &mut logs,
            &presence(&h, "busy", Some(forged)),
            None,
        )
        .unwrap_err();
        assert_eq!((f.exit, f.code), (Exit::Auth, Some(ErrorCode::UnknownKey)));

        // Signed before the key was registered.
        let early = value(
            &Status {
                ts: 500,
                ..st.clone()
            },
            &sk,
        );
        let f =
            verify_entry(&client, &mut logs, &presence(&h, "busy", Some(early)), None).unwrap_err();
        assert_eq!((f.exit, f.code), (Exit::Auth, Some(ErrorCode::KeyNotValid)));

        // A good status of another agent, served as this one's.
        let nova = Handle::parse("@nova@relay-a.example").unwrap();
        let f = verify_entry(
            &client,
            &mut logs,
            &presence(&nova, "busy", Some(good)),
            None,
        )
        .unwrap_err();
        assert_eq!((f.exit, f.code), (Exit::Auth, None));

        // The answer for another handle than asked, or not PRES-4's shape: exit 1.
        let f = verify_entry(
            &client,
            &mut logs,
            &presence(&h, "available", None),
            Some(&nova),
        )
        .unwrap_err();
        assert_eq!(f.exit, Exit::Failure);
        for bad in [
            presence(&h, "sleeping", None),
            Value::Int(1),
            obj(vec![("status", "available".into())]),
        ] {
            let f = verify_entry(&client, &mut logs, &bad, None).unwrap_err();
            assert_eq!(f.exit, Exit::Failure, "{bad:?}");
        }
    }

    #[test]
    fn a_coarse_presence_is_the_status_alone() {
        let (_, h, mut logs, _) = fixture();
        let client = Client::new("http://127.0.0.1:1").unwrap();
        let v = obj(vec![
            ("handle", h.as_str().into()),
            ("status", "away".into()),
        ]);
        let e = verify_entry(&client, &mut logs, &v, Some(&h)).unwrap();
        assert!(!e.full && e.signed.is_none() && e.last_seen.is_none());
        let v = e.to_value();
        let o = v.as_object().unwrap();
        assert_eq!(o.get("view").and_then(Value::as_str), Some("coarse"));
        assert_eq!(o.get("verified"), Some(&Value::Bool(false)));
        assert_eq!(o.get("note"), Some(&Value::Null));
        assert!(e.line(0).contains("as the relay reports it"));
    }

    #[test]
    fn times_read_as_how_long_ago() {
        assert_eq!(ago(0, 500), "1970-01-01 00:00:00.000Z (just now)");
        assert!(ago(0, 90_000).ends_with("(90 s ago)"));
        assert!(ago(0, 600_000).ends_with("(10 min ago)"));
        assert!(ago(0, 3 * 3_600_000).ends_with("(3 h ago)"));
        assert!(ago(0, 3 * 86_400_000).ends_with("(3 days ago)"));
        assert!(ago(1_000, 0).ends_with("(just now)"));
    }
}
