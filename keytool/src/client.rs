//! The HTTP client for a relay's client API (SPEC.md section 15): blocking requests with
//! `ureq`, signed `Authorization: Formica ...` headers, the verified relay descriptor, relay
//! error bodies turned into [`Fail`]s with a hint, and a Server-Sent Events reader.
//!
//! Every answer is read under a size limit and parsed with the protocol crate's strict parser;
//! nothing from the network is unwrapped.

use crate::offline::now_ms;
use crate::output::{Exit, Fail};
use formica_protocol::auth::{Nonce, RequestAuth, RequestTarget};
use formica_protocol::json::{self, JsonLimits, JSON_DEPTH_MAX_DEFAULT};
use formica_protocol::{
    canon, envelope, Domain, ErrorCode, Handle, PublicKey, RelayHost, SecretKey, Signature, Value,
};
use rand::RngCore;
use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

/// The relay used when neither `--relay`, `FORMICA_RELAY` nor the identity names one.
pub const RELAY_URL_DEFAULT: &str = "http://127.0.0.1:7070";
/// Largest answer body read (8 MiB): an inbox page of `inbox_page_max` (100) envelopes of the
/// default 64 KiB limit fits, with room for a relay that publishes larger pages.
pub const RESPONSE_BYTES_MAX: usize = 8 << 20;
/// Nesting allowed in answers: an envelope's own depth limit plus the page around it
/// (`{"items":[{"envelope": ...}]}`).
pub const RESPONSE_DEPTH_MAX: usize = JSON_DEPTH_MAX_DEFAULT + 4;
/// Time to open a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Time a plain request may take from start to the end of its answer.
pub const REQUEST_TIMEOUT_MS: u64 = 60_000;
/// The relay sends an SSE keep-alive comment every 15 s; three missed ones mean the connection
/// is dead and `watch` reconnects.
pub const STREAM_READ_TIMEOUT_MS: u64 = 45_000;
/// Longest SSE line read (1 MiB): an event's `data:` line holds one envelope, which relays
/// limit to `envelope_bytes_max` (64 KiB by default).
pub const SSE_LINE_BYTES_MAX: usize = 1 << 20;

/// What an authenticated request is signed as: the agent's key and handle, and the relay
/// (audience) it is meant for.
#[derive(Debug, Clone)]
pub struct Auth {
    pub key: SecretKey,
    pub handle: Handle,
    pub aud: RelayHost,
}

impl Auth {
    /// A fresh header for one request: current time, new random nonce (AUTH-1..6).
    fn header(&self, method: &str, path: &str, body: &[u8]) -> String {
        let mut n = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut n);
        let target = RequestTarget { method, path, body };
        RequestAuth::sign(
            &self.key,
            &self.handle,
            now_ms(),
            Nonce(n),
            &target,
            &self.aud,
        )
    }
}

/// A relay's descriptor, its signature checked against the key it names.
#[derive(Debug, Clone)]
pub struct Descriptor {
    /// The host agents put in their handles (`relay`).
    pub host: RelayHost,
    pub key: PublicKey,
    /// The whole signed document.
    pub value: Value,
}

impl Descriptor {
    /// Checks a descriptor document fetched from `url`: signature, host, protocol version.
    pub fn verify(url: &str, value: Value) -> Result<Descriptor, Fail> {
        let bad = |why: String| {
            Fail::new(
                Exit::Auth,
                format!("the descriptor at {url} is not valid: {why}"),
            )
        };
        let o = value
            .as_object()
            .ok_or_else(|| bad("not an object".into()))?;
        let s = |k: &str| {
            o.get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("no `{k}`")))
        };
        let key = PublicKey::parse_hex(s("key")?).map_err(|e| bad(format!("key: {e}")))?;
        let sig = Signature::parse_hex(s("sig")?).map_err(|e| bad(format!("sig: {e}")))?;
        let mut input = Domain::Descriptor.tag().to_vec();
        canon::write_object(o, Some(&["sig"]), &mut input);
        key.verify_input(&input, &sig)
            .map_err(|_| bad("its signature does not verify".into()))?;
        let host = RelayHost::parse(s("relay")?).map_err(|e| bad(e.to_string()))?;
        let speaks_v1 = o
            .get("versions")
            .and_then(Value::as_array)
            .is_some_and(|v| {
                v.iter()
                    .any(|x| x.as_i64() == Some(envelope::PROTOCOL_VERSION))
            });
        if !speaks_v1 {
            return Err(Fail::code(
                ErrorCode::UnsupportedVersion,
                format!(
                    "the relay at {url} does not list protocol version {}",
                    envelope::PROTOCOL_VERSION
                ),
            ));
        }
        Ok(Descriptor { host, key, value })
    }

    /// An integer member at `path` (e.g. `["limits", "recipients_max"]`).
    pub fn int(&self, path: &[&str]) -> Option<i64> {
        let mut v = &self.value;
        for k in path {
            v = v.as_object()?.get(k)?;
        }
        v.as_i64()
    }

    /// Limits for checking our own envelopes before they are sent: the relay's published
    /// ones where it gives them, else the protocol defaults.
    pub fn envelope_limits(&self) -> envelope::EnvelopeLimits {
        let mut l = envelope::EnvelopeLimits::default();
        if let Some(n) = self
            .int(&["limits", "recipients_max"])
            .and_then(|n| usize::try_from(n).ok())
        {
            l.recipients_max = n;
        }
        if let Some(n) = self
            .int(&["limits", "envelope_bytes_max"])
            .and_then(|n| usize::try_from(n).ok())
        {
            l.json.bytes_max = n;
            l.payload_bytes_max = n;
        }
        l
    }
}

/// A successful answer.
#[derive(Debug)]
pub struct Answer {
    pub body: Value,
}

impl Answer {
    /// A string member of the answer object.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.body.as_object()?.get(key)?.as_str()
    }
    /// An array member of the answer object (missing means empty).
    pub fn list(&self, key: &str) -> &[Value] {
        self.body
            .as_object()
            .and_then(|o| o.get(key))
            .and_then(Value::as_array)
            .unwrap_or(&[])
    }
}

/// One relay, by base URL.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    stream_agent: ureq::Agent,
}

fn agent(read_timeout_ms: Option<u64>) -> ureq::Agent {
    let mut b = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_millis(CONNECT_TIMEOUT_MS))
        // The signature covers the path: a redirect would be refused anyway, so say so.
        .redirects(0)
        .user_agent(concat!("formica-keytool/", env!("CARGO_PKG_VERSION")));
    b = match read_timeout_ms {
        Some(ms) => b.timeout_read(Duration::from_millis(ms)),
        None => b.timeout(Duration::from_millis(REQUEST_TIMEOUT_MS)),
    };
    b.build()
}

impl Client {
    /// A client for the relay at `url` (`http://host:port` or `https://host`).
    pub fn new(url: &str) -> Result<Client, Fail> {
        let base = url.trim_end_matches('/');
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.contains('/') || r.contains('?')) {
            return Err(Fail::new(
                Exit::Input,
                format!("relay URL {url:?} is not http(s)://host[:port]"),
            )
            .hint("for example --relay http://127.0.0.1:7070"));
        }
        Ok(Client {
            base: base.to_owned(),
            agent: agent(None),
            stream_agent: agent(Some(STREAM_READ_TIMEOUT_MS)),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends one request and reads its JSON answer. `path` is sent exactly as given (and
    /// signed as given when `auth` is set), so it must not need percent-encoding.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        auth: Option<&Auth>,
    ) -> Result<Answer, Fail> {
        let url = self.url(path);
        let mut req = self.agent.request(method, &url);
        if let Some(a) = auth {
            req = req.set(
                "Authorization",
                &a.header(method, path, body.unwrap_or(b"")),
            );
        }
        let res = match body {
            Some(b) => req.set("Content-Type", "application/json").send_bytes(b),
            None => req.call(),
        };
        let resp = self.check(&url, res)?;
        let bytes =
            read_limited(resp.into_reader(), RESPONSE_BYTES_MAX).map_err(|e| network(&url, &e))?;
        let body = parse_answer(&url, &bytes)?;
        Ok(Answer { body })
    }

    pub fn get(&self, path: &str, auth: Option<&Auth>) -> Result<Answer, Fail> {
        self.call("GET", path, None, auth)
    }

    /// `GET /.well-known/formica`, with the signature checked (Domain::Descriptor over the
    /// canonical form without `sig`, with the key the descriptor names). This proves the
    /// document is whole, not who runs the relay: nothing pins the key yet.
    pub fn descriptor(&self) -> Result<Descriptor, Fail> {
        let a = self.get("/.well-known/formica", None)?;
        Descriptor::verify(&self.url("/.well-known/formica"), a.body)
    }

    /// Opens `GET path` as a Server-Sent Events stream, resuming after `last_event_id`.
    pub fn open_stream(
        &self,
        path: &str,
        last_event_id: Option<&str>,
        auth: &Auth,
    ) -> Result<SseReader, Fail> {
        let url = self.url(path);
        let mut req = self
            .stream_agent
            .get(&url)
            .set("Accept", "text/event-stream")
            .set("Authorization", &auth.header("GET", path, b""));
        if let Some(id) = last_event_id {
            req = req.set("Last-Event-ID", id);
        }
        let resp = self.check(&url, req.call())?;
        Ok(SseReader {
            url,
            reader: BufReader::new(resp.into_reader()),
            report_comments: false,
        })
    }

    /// Turns a transport error or a non-2xx answer into a [`Fail`].
    fn check(
        &self,
        url: &str,
        res: Result<ureq::Response, ureq::Error>,
    ) -> Result<ureq::Response, Fail> {
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(network(url, &transport_text(&t))),
        };
        let status = resp.status();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let retry_after = resp
            .header("retry-after")
            .and_then(|s| s.trim().parse::<u64>().ok());
        let location = resp.header("location").map(str::to_owned);
        let bytes = read_limited(resp.into_reader(), RESPONSE_BYTES_MAX).unwrap_or_default();
        let mut f = relay_error(url, status, &bytes);
        if f.retry_after_s.is_none() {
            f.retry_after_s = retry_after;
        }
        if let (true, Some(loc)) = ((300..400).contains(&status), location) {
            f = f.hint(format!(
                "the relay redirects to {loc}; pass that as --relay"
            ));
        }
        Err(f)
    }
}

fn network(url: &str, e: &dyn std::fmt::Display) -> Fail {
    Fail::new(Exit::Network, format!("cannot reach {url}: {e}"))
        .hint("is the relay running, and is --relay (or FORMICA_RELAY) right?")
}

/// A transport error without the URL (which [`network`] already names).
fn transport_text(t: &ureq::Transport) -> String {
    let mut s = t.kind().to_string();
    if let Some(m) = t.message() {
        s.push_str(": ");
        s.push_str(m);
    }
    if let Some(src) = std::error::Error::source(t) {
        s.push_str(": ");
        s.push_str(&src.to_string());
    }
    s
}

fn read_limited(r: impl Read, max: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(max as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > max {
        return Err(std::io::Error::other(format!(
            "the answer is larger than {max} bytes"
        )));
    }
    Ok(buf)
}

fn parse_answer(url: &str, bytes: &[u8]) -> Result<Value, Fail> {
    json::parse(
        bytes,
        JsonLimits {
            bytes_max: RESPONSE_BYTES_MAX,
            depth_max: RESPONSE_DEPTH_MAX,
        },
    )
    .map_err(|e| {
        Fail::new(
            Exit::Failure,
            format!("{url} answered with something that is not strict JSON: {e}"),
        )
    })
}

/// Maps a relay's `{"error":{"code","message","retry",...}}` body to a failure with the
/// protocol error code (which picks the exit code) and a hint saying what to do about it.
pub fn relay_error(url: &str, status: u16, bytes: &[u8]) -> Fail {
    let parsed = json::parse(bytes, JsonLimits::default()).ok();
    let err = parsed
        .as_ref()
        .and_then(|v| v.as_object()?.get("error")?.as_object().cloned());
    let Some(err) = err else {
        let exit = match status {
            401 | 403 => Exit::Auth,
            404 => Exit::NotFound,
            409 => Exit::Conflict,
            429 => Exit::Limited,
            500..=599 => Exit::Network,
            _ => Exit::Failure,
        };
        return Fail::new(
            exit,
            format!("{url} answered HTTP {status} without a Formica error body"),
        );
    };
    let s = |k: &str| err.get(k).and_then(Value::as_str);
    let i = |k: &str| err.get(k).and_then(Value::as_i64);
    let wire = s("code").unwrap_or("");
    let mut message = s("message").unwrap_or("(no message)").to_owned();
    if let Some(field) = s("field") {
        message.push_str(&format!(" (field `{field}`)"));
    }
    let retry_after = i("retry_after_s").and_then(|n| u64::try_from(n).ok());
    let Some(code) = ErrorCode::from_wire(wire) else {
        let exit = if status >= 500 {
            Exit::Network
        } else {
            Exit::Failure
        };
        let mut f = Fail::new(
            exit,
            format!("relay error {wire:?} (HTTP {status}): {message}"),
        );
        f.retry_after_s = retry_after;
        return f;
    };
    use ErrorCode::*;
    let hint: Option<String> = match code {
        Stale | Future => Some(match i("server_time") {
            Some(t) => format!(
                "check this machine's clock; the relay's time is {t} ({}), this machine's is {} ms {}",
                crate::output::fmt_ms(t),
                (now_ms() - t).abs(),
                if now_ms() > t { "ahead" } else { "behind" }
            ),
            None => "check this machine's clock".into(),
        }),
        NotContact => Some("ask them to add you (keytool contacts add), or send a request: keytool contact-request @them --level message".into()),
        LevelInsufficient => Some("your contact grant is too low for this type; ask them for a higher level (a task_request needs `task`)".into()),
        PowMissing | PowInsufficient | ChallengeUnknown | ChallengeExpired | ChallengeUsed => Some("retry register (it fetches a new challenge)".into()),
        RateLimited | InboxFull | Unavailable | StorageFull => {
            Some(retry_after.map(|n| format!("wait {n} s, then retry")).unwrap_or_else(|| "wait a little, then retry".into()))
        }
        HandleTaken => Some("choose another name".into()),
        HandleReserved => Some("choose another name; reserved names such as @admin or @relay cannot be registered".into()),
        WrongRelay => Some("the handle's host must be the relay's host: check --relay (or FORMICA_RELAY) and the handle".into()),
        Unauthorized => Some("is this identity registered on this relay with its current key? see keytool whoami and keytool resolve".into()),
        NonceReused => Some("retry; every request gets a new nonce".into()),
        UnknownKey | KeyNotValid => Some("this identity's key is not the handle's valid key (rotated or revoked?); see keytool resolve".into()),
        UnknownRecipient | NotFound => Some("check the handle or id (keytool resolve @handle)".into()),
        CursorTooOld => Some(match s("oldest") {
            Some(o) => format!("items before cursor {o} are gone; start again without --after"),
            None => "start again without --after".into(),
        }),
        InvalidCursor => Some("use a cursor this relay printed (from inbox or watch), or none".into()),
        AckSettled => Some("this delivery is already settled (acked or timed out); keytool status shows it".into()),
        AckForbidden => Some("only a recipient of the message can ack it".into()),
        TierForbidden | VouchLimit => Some("new agents start on the lowest trust tier; tiers rise with age, acked traffic and vouches".into()),
        KeylogFork => Some("another entry already holds this position in the log; keytool resolve shows the conflict".into()),
        DeadlineAfterParent => Some(match i("ack_by_max") {
            Some(t) => format!("the request this one answers must be acked by {}; ask for that or earlier (send shortens it unless --no-shorten)", crate::output::fmt_ms(t)),
            None => "ask for the deadline of the request this one answers, or earlier".into(),
        }),
        NotParticipant => Some("you (or someone in `to`) are not a participant of this conversation in a state that allows it; keytool conv list --all shows each participant's state".into()),
        ConversationClosed => Some(format!("the conversation is closed ({}); start a new one with keytool call", s("reason").unwrap_or("see keytool conv list --all"))),
        TurnLimitReached => Some("the conversation used all its turns and closed; start a new one with keytool call (--turns sets the limit)".into()),
        ActionNotAllowed => Some("accept and decline answer a ringing or missed call, leave needs you joined, close and invite are the owner's; keytool conv list --all shows your state".into()),
        TooManyConversations => Some("leave or close one of your open conversations first (keytool conv list shows them)".into()),
        _ => None,
    };
    let mut f = Fail::code(code, message);
    if let Some(t) = i("ack_by_max") {
        f.details.push(("ack_by_max", Value::Int(t)));
    }
    if let (ConversationClosed | TurnLimitReached, Some(r)) = (code, s("reason")) {
        f.details.push(("reason", r.into()));
    }
    if let Some(h) = hint {
        f = f.hint(h);
    }
    f.retry_after_s = retry_after;
    f
}

/// One Server-Sent Event.
#[derive(Debug, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Reads events from an open stream, one at a time.
pub struct SseReader {
    url: String,
    reader: BufReader<Box<dyn Read + Send + Sync + 'static>>,
    /// Return comments (the relay's keep-alives) as events named `:` instead of skipping them.
    pub report_comments: bool,
}

impl std::fmt::Debug for SseReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SseReader({})", self.url)
    }
}

impl SseReader {
    /// The next event with data, or `None` when the relay ends the stream. Comments (the
    /// keep-alives) are skipped; a read error (including the read timeout) is a network error.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, Fail> {
        let mut ev = SseEvent::default();
        let mut has_data = false;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut self.reader)
                .take(SSE_LINE_BYTES_MAX as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(|e| network(&self.url, &e))?;
            if n == 0 {
                return Ok(None);
            }
            if line.len() > SSE_LINE_BYTES_MAX {
                return Err(Fail::new(
                    Exit::Failure,
                    format!(
                        "{}: an event line is longer than {SSE_LINE_BYTES_MAX} bytes",
                        self.url
                    ),
                ));
            }
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            if line.is_empty() {
                if has_data {
                    return Ok(Some(ev));
                }
                ev = SseEvent::default();
                continue;
            }
            let text = std::str::from_utf8(&line).map_err(|_| {
                Fail::code(
                    ErrorCode::InvalidUtf8,
                    format!("{}: an event line is not UTF-8", self.url),
                )
            })?;
            if text.starts_with(':') {
                if self.report_comments && !has_data {
                    return Ok(Some(SseEvent {
                        event: ":".into(),
                        ..SseEvent::default()
                    }));
                }
                continue;
            }
            let (field, value) = match text.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (text, ""),
            };
            match field {
                "event" => ev.event = value.to_owned(),
                "id" => ev.id = Some(value.to_owned()),
                "data" => {
                    if has_data {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(value);
                    has_data = true;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_become_codes_exits_and_hints() {
        let f = relay_error("u", 400, br#"{"error":{"code":"stale","message":"old","retry":"after-fix","server_time":1700000000000}}"#);
        assert_eq!(f.code, Some(ErrorCode::Stale));
        assert_eq!(f.exit, Exit::Input);
        assert!(f
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("the relay's time is 1700000000000")));

        let f = relay_error("u", 429, br#"{"error":{"code":"rate_limited","message":"slow down","retry":"later","retry_after_s":7}}"#);
        assert_eq!((f.exit, f.retry_after_s), (Exit::Limited, Some(7)));
        assert_eq!(f.hint.as_deref(), Some("wait 7 s, then retry"));

        let f = relay_error("u", 400, br#"{"error":{"code":"missing_field","message":"missing","retry":"no","field":"payload.text"}}"#);
        assert!(f.message.contains("payload.text"));

        let f = relay_error(
            "u",
            403,
            br#"{"error":{"code":"not_contact","message":"no","retry":"no"}}"#,
        );
        assert!(f
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("contact-request")));

        let f = relay_error(
            "u",
            409,
            br#"{"error":{"code":"handle_taken","message":"taken","retry":"no"}}"#,
        );
        assert_eq!(
            (f.exit, f.hint.as_deref()),
            (Exit::Conflict, Some("choose another name"))
        );

        let f = relay_error(
            "u",
            409,
            br#"{"error":{"code":"conversation_closed","message":"closed","retry":"no","reason":"everyone_left"}}"#,
        );
        assert_eq!(f.exit, Exit::Conflict);
        assert!(f
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("(everyone_left)")));
        let v = f.to_value();
        let reason = v
            .as_object()
            .and_then(|o| o.get("error")?.as_object()?.get("reason")?.as_str());
        assert_eq!(reason, Some("everyone_left"));
        let f = relay_error(
            "u",
            403,
            br#"{"error":{"code":"not_participant","message":"no","retry":"no","field":"to"}}"#,
        );
        assert_eq!(f.exit, Exit::NotFound);
        assert!(f.message.contains("field `to`"));
    }

    fn signed_descriptor(sk: &SecretKey, versions: Vec<Value>) -> Value {
        let mut o = formica_protocol::Object::new();
        o.insert("v", Value::Int(1));
        o.insert("relay", "relay-a.example".into());
        o.insert("key", sk.public().to_hex().into());
        o.insert("versions", Value::Array(versions));
        let sig = sk.sign(
            Domain::Descriptor,
            &canon::canonicalize(&Value::Object(o.clone())),
        );
        o.insert("sig", sig.to_hex().into());
        Value::Object(o)
    }

    #[test]
    fn descriptors_are_checked_against_the_key_they_name() {
        let sk = SecretKey::from_seed(&[7; 32]);
        let good = signed_descriptor(&sk, vec![Value::Int(1)]);
        let Ok(d) = Descriptor::verify("u", good.clone()) else {
            panic!("a well-signed descriptor")
        };
        assert_eq!(d.host.as_str(), "relay-a.example");

        let mut tampered = good;
        if let Value::Object(o) = &mut tampered {
            o.insert("relay", "relay-b.example".into());
        }
        let Err(f) = Descriptor::verify("u", tampered) else {
            panic!("a tampered descriptor")
        };
        assert_eq!(f.exit, Exit::Auth);

        let Err(f) = Descriptor::verify("u", signed_descriptor(&sk, vec![Value::Int(2)])) else {
            panic!("v2 only")
        };
        assert_eq!(f.code, Some(ErrorCode::UnsupportedVersion));
    }

    #[test]
    fn unknown_codes_and_foreign_bodies_still_fail_cleanly() {
        let f = relay_error(
            "u",
            418,
            br#"{"error":{"code":"teapot","message":"short and stout"}}"#,
        );
        assert_eq!((f.code, f.exit), (None, Exit::Failure));
        assert!(f.message.contains("teapot"));
        let f = relay_error("http://x/v1/inbox", 502, b"<html>Bad Gateway</html>");
        assert_eq!(f.exit, Exit::Network);
        assert!(f.message.contains("HTTP 502"));
    }

    #[test]
    fn sse_events_are_split_on_blank_lines_and_comments_skipped() {
        let text = b": keep-alive\n\nevent: envelope\nid: 7\ndata: {\"a\":1}\n\n: keep-alive\r\n\r\nevent: envelope\r\nid: 8\r\ndata: x\r\ndata: y\r\n\r\n";
        let reader: Box<dyn Read + Send + Sync> = Box::new(std::io::Cursor::new(text.to_vec()));
        let mut r = SseReader {
            url: "u".into(),
            reader: BufReader::new(reader),
            report_comments: false,
        };
        let Ok(Some(a)) = r.next_event() else {
            panic!("first event")
        };
        assert_eq!(
            (a.event.as_str(), a.id.as_deref(), a.data.as_str()),
            ("envelope", Some("7"), "{\"a\":1}")
        );
        let Ok(Some(b)) = r.next_event() else {
            panic!("second event")
        };
        assert_eq!((b.id.as_deref(), b.data.as_str()), (Some("8"), "x\ny"));
        assert!(matches!(r.next_event(), Ok(None)));
    }
}
