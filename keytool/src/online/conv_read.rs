//! Reading a conversation (SPEC.md CONVO-4, CONVO-10, API-25, API-26): `conv history` (pages of
//! entries) and `conv watch` (the entry stream, Server-Sent Events), both through [`Chain`],
//! which checks every entry before anything shows it:
//! - the entry's own `hash` (CONVO-4, `Entry::from_value`), and that it is of this conversation;
//! - its place: the first entry read is `after + 1`, each next one follows the one before
//!   (no gap, no repeat, no reordering), and its `prev` is the hash of the entry before it, when
//!   that entry was read (from the first entry, whose `prev` is 64 zeros, when reading from the
//!   start; a read that starts `--after` a later entry cannot check the first `prev`);
//! - entry 1 is the call whose id is the conversation's, later envelopes name the conversation.
//!
//! A check that fails is an error (exit 4), never a printed entry. Envelope signatures are not
//! checked here, as `inbox` and `watch` do not check them. Sealed posts are opened (`sealing`)
//! and shown with their mark, or with the reason they did not open.

use super::conv_list::{not_yours, summary, who};
use super::sealing::{mark, opened_members, with_members, Opened, Opener};
use super::{clean, ok_obj, session, Ctx, Session};
use crate::client::{Auth, Client, RESPONSE_DEPTH_MAX};
use crate::output::{fmt_ms, Exit, Fail};
use formica_protocol::conversation::{ConvEvent, Entry, EntryBody, FIRST_PREV};
use formica_protocol::envelope::{ConvActionKind, ConvRole, EnvelopeLimits};
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::{canon, ErrorCode, Handle, MessageId, MessageType, Payload, Value};
use std::io::Write;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Most pages `conv history` reads without `--limit` (a conversation holds at most the relay's
/// turn limit of posts, plus actions and events).
const HISTORY_PAGES_MAX: usize = 1_000;
/// Entries a stream connection may queue before it waits for the printer.
const QUEUE_MAX: usize = 64;
/// First and longest wait before reconnecting a stream.
const BACKOFF_MS_MIN: u64 = 250;
const BACKOFF_MS_MAX: u64 = 30_000;
/// Largest entry accepted from a stream: an envelope of the largest size a relay may allow
/// (`limits.envelope_bytes_max`, at most 8 MiB), and the entry around it.
const ENTRY_BYTES_MAX: usize = (8 << 20) + 4096;

/// The entries of one conversation read so far: where the next must follow.
#[derive(Debug)]
pub struct Chain {
    pub conv: MessageId,
    /// The seq of the last entry read (or the `after` the reading started at).
    pub after: u64,
    /// The hash of that entry, when it was read (64 zeros before entry 1).
    pub head: Option<[u8; 32]>,
    limits: EnvelopeLimits,
}

impl Chain {
    pub fn new(conv: MessageId, after: u64, limits: EnvelopeLimits) -> Chain {
        Chain {
            conv,
            after,
            head: (after == 0).then_some(FIRST_PREV),
            limits,
        }
    }

    fn refuse(&self, seq: Option<u64>, code: Option<ErrorCode>, why: String) -> Fail {
        let which = seq
            .map(|n| format!("entry #{n}"))
            .unwrap_or("an entry".into());
        let message = format!(
            "the relay served {which} of conversation {} that does not verify: {why}",
            self.conv
        );
        let mut f = match code {
            Some(c) => Fail::code(c, message),
            None => Fail::new(Exit::Auth, message),
        };
        f.exit = Exit::Auth;
        f.hint("do not trust what the relay served for this conversation: an entry was altered, dropped or reordered (by the relay, or something between you)")
    }

    /// Checks the next entry read, `v`, as the module documentation says; `None` for the last
    /// entry read again (a stream that resumed at it).
    pub fn check(&mut self, v: &Value) -> Result<Option<Entry>, Fail> {
        let seq = v
            .as_object()
            .and_then(|o| o.get("seq")?.as_i64())
            .and_then(|n| u64::try_from(n).ok());
        let e = Entry::from_value(v, &self.limits)
            .map_err(|e| self.refuse(seq, Some(e.code), e.message))?;
        let why = |s: String| self.refuse(Some(e.seq), None, s);
        if e.conv != self.conv {
            return Err(why(format!("it is an entry of conversation {}", e.conv)));
        }
        let hash = e.hash();
        if e.seq == self.after && self.head == Some(hash) {
            return Ok(None);
        }
        if e.seq != self.after + 1 {
            return Err(why(format!(
                "it comes after entry #{}, where #{} was due: an entry is missing or out of order",
                self.after,
                self.after + 1
            )));
        }
        if self.head.is_some_and(|h| h != e.prev) {
            return Err(why(format!(
                "its prev is not the hash of entry #{}: the hash chain is broken",
                self.after
            )));
        }
        match &e.body {
            EntryBody::Envelope(se) => {
                let env = se.envelope();
                let call = env.msg_type == MessageType::Call;
                if e.seq == 1 && !(call && se.id() == self.conv) {
                    return Err(why(
                        "entry #1 is not the call whose id is the conversation's".into(),
                    ));
                }
                if e.seq > 1 && (call || env.conv != Some(self.conv)) {
                    return Err(why(
                        "its envelope does not belong to this conversation".into()
                    ));
                }
            }
            EntryBody::Event(_) if e.seq == 1 => {
                return Err(why("entry #1 is an event, not the call".into()))
            }
            EntryBody::Event(_) => {}
        }
        self.after = e.seq;
        self.head = Some(hash);
        Ok(Some(e))
    }

    /// The last entry's hash, as hex, when one was read.
    pub fn head_hex(&self) -> Option<String> {
        self.head
            .filter(|_| self.after > 0)
            .map(|h| formica_protocol::hex::encode(&h))
    }
}

/// A new chain for `s`'s relay limits.
pub fn chain(s: &Session, conv: &MessageId, after: u64) -> Chain {
    Chain::new(*conv, after, s.desc.envelope_limits())
}

/// `GET .../entries?after=&limit=`: the entries after the chain's, checked.
pub fn read_page(
    s: &Session,
    chain: &mut Chain,
    limit: Option<u32>,
) -> Result<Vec<(Entry, Value)>, Fail> {
    let mut path = format!(
        "/v1/conversations/{}/entries?after={}",
        chain.conv, chain.after
    );
    if let Some(l) = limit {
        path.push_str(&format!("&limit={l}"));
    }
    let a = s.client.get(&path, Some(&s.auth)).map_err(not_yours)?;
    let mut out = Vec::new();
    for v in a.list("entries") {
        if let Some(e) = chain.check(v)? {
            out.push((e, v.clone()));
        }
    }
    Ok(out)
}

/// Opens the entry's envelope if its payload is sealed; with the entry as JSON, its sealed
/// payload shown (`sealed`, and `payload` or `open_error`).
fn opened(op: &mut Opener, s: &Session, e: &Entry, v: &Value) -> Result<(Opened, Value), Fail> {
    let o = match &e.body {
        EntryBody::Envelope(se) => op.open(s, se)?,
        EntryBody::Event(_) => None,
    };
    let shown = match &o {
        None => v.clone(),
        Some(_) => with_members(v, opened_members(&o)),
    };
    Ok((o, shown))
}

/// One readable line for an entry: `#3 @nova: text`, `#2 @sage accepted`,
/// `#4 (event) @sage missed the call`; a sealed post shows its opened payload and `[sealed]`, or
/// `[sealed: cannot open: reason]`.
pub fn line(e: &Entry, me: &Handle, opened: &Opened) -> String {
    let n = e.seq;
    let env = match &e.body {
        EntryBody::Event(ev) => {
            return match ev {
                ConvEvent::Missed { handle } => {
                    format!("#{n} (event) {} missed the call", who(handle, me))
                }
                ConvEvent::Declined { handle, reason } => format!(
                    "#{n} (event) {} declined: {} (said by the relay)",
                    who(handle, me),
                    clean(reason, 80)
                ),
                ConvEvent::Closed { reason } => {
                    format!("#{n} (event) the conversation closed: {}", reason.as_str())
                }
            }
        }
        EntryBody::Envelope(se) => se.envelope(),
    };
    let from = who(&env.from, me);
    let why = |r: &Option<String>| {
        r.as_deref()
            .map(|r| format!(": {}", clean(r, 120)))
            .unwrap_or_default()
    };
    let ps = |ps: &[formica_protocol::envelope::Invitee]| {
        ps.iter()
            .map(|p| match p.role {
                ConvRole::Observer => format!("{} (observer)", who(&p.handle, me)),
                _ => who(&p.handle, me),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let payload = match opened {
        Some(Ok(p)) => p,
        _ => &env.payload,
    };
    let body = match payload {
        _ if matches!(opened, Some(Err(_))) => format!(": {}", env.msg_type),
        Payload::Call {
            topic,
            mode,
            participants,
            ..
        } => format!(
            " called {}: {:?} [{mode}]",
            ps(participants),
            clean(topic, 120)
        ),
        Payload::ConvAction {
            action,
            reason,
            participants,
        } => match action {
            ConvActionKind::Accept => " accepted".into(),
            ConvActionKind::Decline => format!(" declined{}", why(reason)),
            ConvActionKind::Leave => format!(" left{}", why(reason)),
            ConvActionKind::Close => format!(" closed the conversation{}", why(reason)),
            ConvActionKind::Invite => {
                format!(" invited {}", ps(participants.as_deref().unwrap_or(&[])))
            }
        },
        Payload::Message { text, .. } => format!(": {}", clean(text, 2_000)),
        Payload::TaskRequest { task, .. } => format!(": task_request {}", clean(task, 64)),
        Payload::TaskResult { status, .. } => format!(": task_result {status}"),
        other => format!(
            ": {} {}",
            env.msg_type,
            clean(
                &String::from_utf8_lossy(&canon::canonicalize(&other.to_value())),
                200
            )
        ),
    };
    let ack = env
        .ack_by
        .map(|t| format!("  [ack by {}]", fmt_ms(t)))
        .unwrap_or_default();
    format!("#{n} {from}{body}{}{ack}", mark(opened))
}

/// `keytool conv history ID [--after SEQ] [--limit N]`.
pub fn history(
    ctx: &Ctx<'_>,
    identity: &str,
    conv: &MessageId,
    after: Option<u64>,
    limit: Option<u32>,
) -> Result<(), Fail> {
    let s = session(ctx, identity)?;
    let start = after.unwrap_or(0);
    let mut ch = chain(&s, conv, start);
    let mut count = 0usize;
    let mut op = Opener::new(&s, ctx.home);
    for _ in 0..HISTORY_PAGES_MAX {
        let page = read_page(&s, &mut ch, limit)?;
        for (e, v) in &page {
            let (o, shown) = opened(&mut op, &s, e, v)?;
            ctx.out.emit(&line(e, &s.me, &o), shown);
        }
        count += page.len();
        if page.is_empty() || limit.is_some() {
            break;
        }
    }
    let text = if count == 0 {
        format!("(no entries after #{start})")
    } else {
        let anchor = if start == 0 {
            "from entry #1".to_owned()
        } else {
            format!("from entry #{}", start + 1)
        };
        let more = if limit.is_some() {
            format!(
                "; next page: keytool conv history {conv} --after {}",
                ch.after
            )
        } else {
            String::new()
        };
        format!("({count} entries, hash chain checked {anchor}{more})")
    };
    ctx.out.emit(
        &text,
        ok_obj(vec![
            ("conv", conv.to_hex().into()),
            ("count", Value::Int(count as i64)),
            ("next", Value::Int(ch.after as i64)),
            (
                "head",
                ch.head_hex().map(Value::from).unwrap_or(Value::Null),
            ),
        ]),
    );
    Ok(())
}

/// `keytool conv watch ID [--after SEQ] [--count N] [--timeout D]`: prints as it goes.
pub fn watch(
    ctx: &Ctx<'_>,
    identity: &str,
    conv: &MessageId,
    after: Option<u64>,
    count: Option<u64>,
    timeout: Option<Duration>,
) -> Result<(), Fail> {
    if count == Some(0) {
        return Ok(());
    }
    let s = session(ctx, identity)?;
    let mut ch = chain(&s, conv, after.unwrap_or(0));
    let mut printed = 0u64;
    let mut stdout = std::io::stdout().lock();
    let json = ctx.out.json;
    let mut op = Opener::new(&s, ctx.home);
    follow(&s, &mut ch, timeout, |e, v| {
        let (o, shown) = opened(&mut op, &s, e, v)?;
        let mut text = if json {
            canon::canonicalize(&shown)
        } else {
            line(e, &s.me, &o).into_bytes()
        };
        text.push(b'\n');
        stdout
            .write_all(&text)
            .and_then(|_| stdout.flush())
            .map_err(|e| Fail::new(Exit::Failure, format!("writing output: {e}")))?;
        printed += 1;
        Ok(count.is_none_or(|n| printed < n))
    })?;
    Ok(())
}

/// Why [`follow`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The callback asked to stop.
    Stopped,
    /// `timeout` passed without an entry.
    TimedOut,
    /// The conversation is over for this reader (closed, or it declined or left), and every
    /// entry it may read was handed over.
    Over,
}

enum Msg {
    Open,
    Tick,
    Entry(Value),
    End(Result<(), Fail>),
}

/// One stream connection, handing its events to the follower until it ends.
fn connection(client: Client, auth: Auth, path: String, after: u64, tx: mpsc::SyncSender<Msg>) {
    let last = (after > 0).then(|| after.to_string());
    let mut stream = match client.open_stream(&path, last.as_deref(), &auth) {
        Ok(st) => st,
        Err(f) => {
            let _ = tx.send(Msg::End(Err(not_yours(f))));
            return;
        }
    };
    stream.report_comments = true;
    if tx.send(Msg::Open).is_err() {
        return;
    }
    let limits = JsonLimits {
        bytes_max: ENTRY_BYTES_MAX,
        depth_max: RESPONSE_DEPTH_MAX,
    };
    loop {
        let msg = match stream.next_event() {
            Ok(None) => Msg::End(Ok(())),
            Err(f) => Msg::End(Err(f)),
            Ok(Some(ev)) if ev.event == ":" => Msg::Tick,
            Ok(Some(ev)) if !(ev.event.is_empty() || ev.event == "entry") => continue,
            Ok(Some(ev)) => match json::parse(ev.data.as_bytes(), limits) {
                Ok(v) => Msg::Entry(v),
                Err(e) => Msg::End(Err(Fail::code(
                    e.code(),
                    format!("the relay sent an entry that is not strict JSON: {e}"),
                ))),
            },
        };
        let end = matches!(msg, Msg::End(_));
        if tx.send(msg).is_err() || end {
            return;
        }
    }
}

/// Follows the conversation's entry stream after the chain's last entry, handing each checked
/// entry to `on_entry` in order, never skipping or repeating one across reconnects (each
/// resumes after the last entry handed over, `Last-Event-ID`, with a freshly signed request).
/// When the relay ends the stream, the conversation's summary says whether it is over for this
/// reader; then the entries left are read as pages and handed over, else the stream reconnects.
/// A failure that cannot pass ends it; one that can is retried with backoff, and returned if
/// `timeout` passes meanwhile (an outage is never taken for a quiet conversation).
pub fn follow(
    s: &Session,
    ch: &mut Chain,
    timeout: Option<Duration>,
    mut on_entry: impl FnMut(&Entry, &Value) -> Result<bool, Fail>,
) -> Result<Ended, Fail> {
    let path = format!("/v1/conversations/{}/stream", ch.conv);
    let mut idle_since = Instant::now();
    let mut backoff_ms = BACKOFF_MS_MIN;
    let mut down: Option<Fail> = None;
    loop {
        let (tx, rx) = mpsc::sync_channel(QUEUE_MAX);
        let (client, auth) = (s.client.clone(), s.auth.clone());
        let (p2, after) = (path.clone(), ch.after);
        std::thread::spawn(move || connection(client, auth, p2, after, tx));
        let end = loop {
            let wait = timeout.map_or(Duration::MAX, |t| t.saturating_sub(idle_since.elapsed()));
            match rx.recv_timeout(wait) {
                Ok(Msg::Open) => {
                    down = None;
                    backoff_ms = BACKOFF_MS_MIN;
                }
                Ok(Msg::Tick) => {}
                Ok(Msg::Entry(v)) => {
                    if let Some(e) = ch.check(&v)? {
                        idle_since = Instant::now();
                        if !on_entry(&e, &v)? {
                            return Ok(Ended::Stopped);
                        }
                    }
                }
                Ok(Msg::End(r)) => break r,
                Err(RecvTimeoutError::Timeout) => {
                    return down.map_or(Ok(Ended::TimedOut), Err);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    break Err(Fail::new(Exit::Failure, "the stream reader stopped"))
                }
            }
        };
        match end {
            Ok(()) => {
                let sum = summary(s, &ch.conv)?;
                let gone = sum
                    .part(&s.me)
                    .is_some_and(|p| p.state == "left" || p.state == "declined");
                if sum.closed() || gone {
                    loop {
                        let page = read_page(s, ch, None)?;
                        if page.is_empty() {
                            return Ok(Ended::Over);
                        }
                        for (e, v) in &page {
                            if !on_entry(e, v)? {
                                return Ok(Ended::Stopped);
                            }
                        }
                    }
                }
            }
            Err(f) if crate::watch::retryable(&f) => {
                backoff_ms = backoff_ms.max(f.retry_after_s.unwrap_or(0).saturating_mul(1000));
                down = Some(f);
            }
            Err(f) => return Err(f),
        }
        let delay = Duration::from_millis(backoff_ms);
        if let Some(t) = timeout {
            let left = t.saturating_sub(idle_since.elapsed());
            if delay >= left {
                std::thread::sleep(left);
                return down.map_or(Ok(Ended::TimedOut), Err);
            }
        }
        std::thread::sleep(delay);
        backoff_ms = (backoff_ms * 2).min(BACKOFF_MS_MAX);
    }
}

/// The MCP tool `conversation_history`: the entries after `after` (at most `limit`), waiting up to
/// `wait` for one when there is none yet; with the conversation's state.
pub fn read_for_tool(
    ctx: &Ctx<'_>,
    identity: &str,
    conv: &MessageId,
    after: u64,
    limit: Option<u32>,
    wait: Option<Duration>,
) -> Result<Value, Fail> {
    let s = session(ctx, identity)?;
    let mut ch = chain(&s, conv, after);
    let mut got: Vec<(Entry, Value)> = read_page(&s, &mut ch, limit)?;
    let mut timed_out = false;
    if got.is_empty() && wait.is_some_and(|w| !w.is_zero()) {
        let ended = follow(&s, &mut ch, wait, |e, v| {
            got.push((e.clone(), v.clone()));
            Ok(false)
        })?;
        timed_out = ended == Ended::TimedOut;
        if !got.is_empty() {
            let room = limit.map(|l| l.saturating_sub(got.len() as u32));
            if room != Some(0) {
                got.extend(read_page(&s, &mut ch, room)?);
            }
        }
    }
    let mut op = Opener::new(&s, ctx.home);
    let got = got
        .iter()
        .map(|(e, v)| opened(&mut op, &s, e, v).map(|(_, shown)| shown))
        .collect::<Result<Vec<_>, _>>()?;
    let sum = summary(&s, conv)?;
    Ok(ok_obj(vec![
        ("conv", conv.to_hex().into()),
        ("entries", Value::Array(got)),
        ("next", Value::Int(ch.after as i64)),
        ("state", sum.state.as_str().into()),
        ("reason", sum.reason.map(Value::from).unwrap_or(Value::Null)),
        ("timed_out", Value::Bool(timed_out)),
    ]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use formica_protocol::conversation::CloseReason;
    use formica_protocol::envelope::{ConvMode, Invitee};
    use formica_protocol::{Envelope, SecretKey, SignedEnvelope};

    fn h(name: &str) -> Handle {
        Handle::parse(&format!("@{name}@relay.example")).unwrap()
    }

    fn signed(
        from: &str,
        to: &[&str],
        conv: Option<MessageId>,
        payload: Payload,
    ) -> SignedEnvelope {
        let msg_type = match &payload {
            Payload::Call { .. } => MessageType::Call,
            Payload::ConvAction { .. } => MessageType::ConvAction,
            _ => MessageType::Message,
        };
        let sk = SecretKey::from_seed(&[from.len() as u8; 32]);
        Envelope {
            msg_type,
            type_version: 1,
            from: h(from),
            key: sk.public().key_id(),
            to: to.iter().map(|t| h(t)).collect(),
            ts: 1_000,
            corr: None,
            ack_by: None,
            conv,
            payload,
        }
        .sign(&sk)
        .unwrap()
    }

    /// A conversation of five entries: the call, an accept, a post, a missed event, a close.
    fn entries() -> (MessageId, Vec<Entry>) {
        let call = signed(
            "nova",
            &["sage", "iris"],
            None,
            Payload::Call {
                topic: "review PR 7".into(),
                mode: ConvMode::Live,
                participants: vec![
                    Invitee {
                        handle: h("sage"),
                        role: ConvRole::Member,
                    },
                    Invitee {
                        handle: h("iris"),
                        role: ConvRole::Observer,
                    },
                ],
                turns: None,
                expires: None,
            },
        );
        let id = call.id();
        let bodies = vec![
            EntryBody::Envelope(signed(
                "sage",
                &["nova"],
                Some(id),
                Payload::ConvAction {
                    action: ConvActionKind::Accept,
                    reason: None,
                    participants: None,
                },
            )),
            EntryBody::Envelope(signed(
                "nova",
                &["sage"],
                Some(id),
                Payload::Message {
                    text: "hello".into(),
                    data: None,
                },
            )),
            EntryBody::Event(ConvEvent::Missed { handle: h("iris") }),
            EntryBody::Event(ConvEvent::Closed {
                reason: CloseReason::EveryoneLeft,
            }),
        ];
        let mut out = vec![Entry {
            conv: id,
            seq: 1,
            at: 5,
            prev: FIRST_PREV,
            body: EntryBody::Envelope(call),
        }];
        for b in bodies {
            let last = out.last().unwrap();
            let e = Entry {
                conv: id,
                seq: last.seq + 1,
                at: last.at + 1,
                prev: last.hash(),
                body: b,
            };
            out.push(e);
        }
        (id, out)
    }

    fn served(e: &Entry) -> Value {
        json::parse(&e.wire(), JsonLimits::default()).unwrap()
    }

    #[test]
    fn a_whole_chain_reads_and_a_resumed_repeat_is_skipped() {
        let (id, es) = entries();
        let mut ch = Chain::new(id, 0, EnvelopeLimits::default());
        for e in &es {
            assert_eq!(ch.check(&served(e)).unwrap().as_ref(), Some(e));
        }
        assert!(ch.check(&served(&es[4])).unwrap().is_none());
        assert_eq!(ch.after, 5);
        let lines: Vec<String> = es.iter().map(|e| line(e, &h("sage"), &None)).collect();
        assert_eq!(
            lines,
            [
                "#1 @nova called @sage, @iris (observer): \"review PR 7\" [live]",
                "#2 @sage accepted",
                "#3 @nova: hello",
                "#4 (event) @iris missed the call",
                "#5 (event) the conversation closed: everyone_left",
            ]
        );
        // Starting after entry 2, the chain links from the first entry read.
        let mut ch = Chain::new(id, 2, EnvelopeLimits::default());
        assert!(ch.check(&served(&es[2])).unwrap().is_some());
        assert!(ch.check(&served(&es[3])).unwrap().is_some());
    }

    #[test]
    fn gaps_reordering_forged_links_and_altered_entries_are_refused() {
        let (id, es) = entries();
        let fresh = || Chain::new(id, 0, EnvelopeLimits::default());
        // A gap: entry 3 after entry 1.
        let mut ch = fresh();
        ch.check(&served(&es[0])).unwrap();
        let f = ch.check(&served(&es[2])).unwrap_err();
        assert_eq!(f.exit, Exit::Auth);
        assert!(
            f.message.contains("missing or out of order"),
            "{}",
            f.message
        );
        // Not starting at entry 1.
        assert!(fresh().check(&served(&es[1])).is_err());
        // A link that is not the hash of the entry before (re-hashed, so its own hash holds).
        let mut forged = es[1].clone();
        forged.prev = [7; 32];
        let mut ch = fresh();
        ch.check(&served(&es[0])).unwrap();
        let f = ch.check(&served(&forged)).unwrap_err();
        assert!(f.message.contains("hash chain is broken"), "{}", f.message);
        // An entry whose content no longer matches its hash.
        let mut v = served(&es[0]);
        if let Value::Object(o) = &mut v {
            o.insert("at", Value::Int(6));
        }
        let f = fresh().check(&v).unwrap_err();
        assert_eq!(
            (f.exit, f.code),
            (Exit::Auth, Some(ErrorCode::InvalidField))
        );
        // An entry of another conversation.
        let mut other = es[0].clone();
        other.conv = MessageId([1; 32]);
        assert!(fresh().check(&served(&other)).is_err());
        // Entry 1 that is not the call.
        let mut first = es[3].clone();
        first.seq = 1;
        first.prev = FIRST_PREV;
        assert!(fresh().check(&served(&first)).is_err());
        // The same seq again with other content.
        let mut ch = fresh();
        ch.check(&served(&es[0])).unwrap();
        ch.check(&served(&es[1])).unwrap();
        let mut again = es[2].clone();
        again.seq = 2;
        again.prev = es[0].hash();
        assert!(ch.check(&served(&again)).is_err());
    }
}
