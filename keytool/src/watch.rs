//! `keytool watch`: follows the inbox over Server-Sent Events and prints one JSON line
//! `{"cursor","envelope"}` per item; with `--presence`, also one line `{"presence"}` per
//! presence event (SPEC.md PRES-5), its signed status verified as `presence show` does.
//!
//! A connection lives in its own thread and hands items to the main thread over a bounded
//! channel, so the main thread can stop on `--count` or `--timeout` while a read is blocked.
//! When a connection ends, the next one starts after the last *printed* cursor
//! (`Last-Event-ID`), with a freshly signed `Authorization` header: items are never skipped
//! (everything the old connection queued is printed before it reports its end) and never
//! repeated (the relay resumes strictly after the cursor). Presence events carry no id: they
//! never move the cursor, so a resumed stream still starts after the last printed item; changes
//! of presence while no stream was open are not replayed (the relay keeps none).

use crate::client::{Auth, Client};
use crate::online::{self, Ctx};
use crate::output::{Exit, Fail};
use formica_protocol::error::Retry;
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::{canon, Value};
use rand::Rng;
use std::io::Write;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Items a connection may queue before it waits for the printer.
const WATCH_QUEUE_MAX: usize = 64;
/// First wait before a reconnect; doubled after each failed attempt.
const BACKOFF_MS_MIN: u64 = 250;
/// Longest wait between reconnects.
const BACKOFF_MS_MAX: u64 = 30_000;
/// Largest envelope accepted from the stream (1 MiB; relays publish 64 KiB by default).
const EVENT_BYTES_MAX: usize = 1 << 20;

/// `watch`'s command line.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Start after this cursor; default: the oldest item.
    #[arg(long)]
    pub after: Option<String>,
    /// Stop (exit 0) after printing N items.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop (exit 0) after this long without a new item (500ms, 30s, 5m, ...).
    #[arg(long, value_name = "DURATION", value_parser = online::parse_duration)]
    pub timeout: Option<Duration>,
    /// Also print the presence of the agents that granted you a contact level whenever it
    /// changes: one line {"presence":{...}} each, as `presence show --json` prints it (a signed
    /// status verified against the agent's key log). Presence lines have no cursor and count
    /// neither for --count nor for --timeout; changes while the stream was down are not
    /// replayed (`keytool who` shows the current state).
    #[arg(long)]
    pub presence: bool,
    #[command(flatten)]
    pub id: crate::IdentityArg,
}

/// What a follower hands over: an inbox item, or (on a stream that asked for them) a presence
/// event as the relay sent it.
pub enum Event {
    Item { cursor: String, envelope: Value },
    Presence(Value),
}

enum Msg {
    Open,
    /// A keep-alive: nothing to hand over, but sending it tells the connection whether
    /// anyone still listens (a follower that returned has dropped the receiver), so an idle
    /// connection ends within one keep-alive period (15 s) instead of at the next item.
    Tick,
    Item {
        cursor: String,
        envelope: Value,
    },
    Presence(Value),
    /// The connection ended: `Ok` when the relay closed the stream, else why.
    End(Result<(), Fail>),
}

/// One connection: open, then forward events until it ends or the receiver is gone.
fn connection(
    client: Client,
    auth: Auth,
    after: Option<String>,
    presence: bool,
    tx: mpsc::SyncSender<Msg>,
) {
    // The query is part of the signed request target.
    let path = if presence {
        "/v1/inbox/stream?presence=1"
    } else {
        "/v1/inbox/stream"
    };
    let limits = JsonLimits {
        bytes_max: EVENT_BYTES_MAX,
        ..JsonLimits::default()
    };
    let mut stream = match client.open_stream(path, after.as_deref(), &auth) {
        Ok(s) => s,
        Err(f) => {
            let _ = tx.send(Msg::End(Err(f)));
            return;
        }
    };
    stream.report_comments = true;
    if tx.send(Msg::Open).is_err() {
        return;
    }
    loop {
        let msg = match stream.next_event() {
            Ok(None) => Msg::End(Ok(())),
            Err(f) => Msg::End(Err(f)),
            Ok(Some(ev)) if ev.event == ":" => Msg::Tick,
            Ok(Some(ev)) if presence && ev.event == "presence" => {
                match json::parse(ev.data.as_bytes(), limits) {
                    Ok(v) => Msg::Presence(v),
                    Err(e) => Msg::End(Err(Fail::code(
                        e.code(),
                        format!("the relay sent a presence event that is not strict JSON: {e}"),
                    ))),
                }
            }
            Ok(Some(ev)) if !(ev.event.is_empty() || ev.event == "envelope") => continue,
            Ok(Some(ev)) => match (ev.id, json::parse(ev.data.as_bytes(), limits)) {
                (Some(cursor), Ok(envelope)) => Msg::Item { cursor, envelope },
                (None, _) => Msg::End(Err(Fail::new(
                    Exit::Failure,
                    "the relay sent an event without an id (cursor)",
                ))),
                (_, Err(e)) => Msg::End(Err(Fail::code(
                    e.code(),
                    format!("the relay sent an event that is not a strict-JSON envelope: {e}"),
                ))),
            },
        };
        let end = matches!(msg, Msg::End(_));
        if tx.send(msg).is_err() || end {
            return;
        }
    }
}

/// Whether a failed connection is worth another try: network trouble and "later" errors are;
/// a refusal (bad auth, bad cursor, malformed event) would only repeat.
pub fn retryable(f: &Fail) -> bool {
    match f.code {
        Some(c) => c.retry() == Retry::Later,
        None => f.exit == Exit::Network,
    }
}

/// `keytool watch`.
pub fn watch(ctx: &Ctx<'_>, args: WatchArgs) -> Result<(), Fail> {
    let WatchArgs {
        after,
        count,
        timeout,
        presence,
        id,
    } = args;
    if let Some(c) = &after {
        online::check_cursor(c)?;
    }
    if count == Some(0) {
        return Ok(());
    }
    let s = online::session(ctx, &id.identity)?;
    let mut printed = 0u64;
    let mut logs = online::Logs::default();
    let mut opener = online::Opener::new(&s, ctx.home);
    let mut stdout = std::io::stdout().lock();
    follow_events(&s, after, timeout, true, None, presence, |ev| {
        let (v, item) = match ev {
            Event::Item { cursor, envelope } => {
                // A sealed payload is opened: `sealed`, and `payload` or `open_error`.
                let opened = opener.open_value(&s, &envelope)?;
                let mut m = vec![("cursor", cursor.into()), ("envelope", envelope)];
                m.extend(online::opened_members(&opened));
                (online::obj(m), true)
            }
            Event::Presence(p) => {
                let e = online::verify_entry(&s.client, &mut logs, &p, None)?;
                (online::obj(vec![("presence", e.to_value())]), false)
            }
        };
        let mut line = canon::canonicalize(&v);
        line.push(b'\n');
        stdout
            .write_all(&line)
            .and_then(|_| stdout.flush())
            .map_err(|e| Fail::new(Exit::Failure, format!("writing output: {e}")))?;
        printed += u64::from(item);
        Ok(count.is_none_or(|n| printed < n))
    })
}

/// How often a follower with a stop flag looks at it while the stream is quiet.
const STOP_CHECK: Duration = Duration::from_millis(500);

/// Follows `s`'s inbox after `after` over Server-Sent Events, handing each item to `on_item`
/// in order, never skipping or repeating one across reconnects (each resumes after the last
/// item handed over, with a freshly signed request). Ends with `Ok` when `on_item` returns
/// `false`, when `stop` is raised, or when `timeout` passes without an item while the stream
/// was open; with the failure when one cannot be retried, or when `timeout` passes while the
/// relay could not be reached (so a caller never mistakes an outage for an empty inbox).
/// Reconnects with backoff otherwise (said on standard error if `log`).
pub fn follow(
    s: &online::Session,
    after: Option<String>,
    timeout: Option<Duration>,
    log: bool,
    stop: Option<&std::sync::atomic::AtomicBool>,
    mut on_item: impl FnMut(String, Value) -> Result<bool, Fail>,
) -> Result<(), Fail> {
    follow_events(s, after, timeout, log, stop, false, |ev| match ev {
        Event::Item { cursor, envelope } => on_item(cursor, envelope),
        Event::Presence(_) => Ok(true),
    })
}

/// [`follow`], with `presence`: the stream also carries presence events (`presence=1`), handed
/// to `on_event` as they come. They have no cursor: they neither move the resume point nor
/// count as activity for `timeout`.
pub fn follow_events(
    s: &online::Session,
    after: Option<String>,
    timeout: Option<Duration>,
    log: bool,
    stop: Option<&std::sync::atomic::AtomicBool>,
    presence: bool,
    mut on_event: impl FnMut(Event) -> Result<bool, Fail>,
) -> Result<(), Fail> {
    let mut last = after;
    let mut idle_since = Instant::now();
    let mut backoff_ms = BACKOFF_MS_MIN;
    let mut reconnecting = false;
    // The failure that ended the last connection, until a new one opens.
    let mut down: Option<Fail> = None;
    let stopped = || stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
    loop {
        let (tx, rx) = mpsc::sync_channel(WATCH_QUEUE_MAX);
        let (client, auth, from) = (s.client.clone(), s.auth.clone(), last.clone());
        std::thread::spawn(move || connection(client, auth, from, presence, tx));
        let end = loop {
            if stopped() {
                return Ok(());
            }
            let wait = match timeout {
                Some(t) => t.saturating_sub(idle_since.elapsed()),
                None => Duration::MAX,
            };
            let wait = if stop.is_some() {
                wait.min(STOP_CHECK)
            } else {
                wait
            };
            let msg = match rx.recv_timeout(wait) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    if timeout.is_some_and(|t| idle_since.elapsed() >= t) {
                        // Idle for the timeout: done, unless the relay was unreachable.
                        return down.map_or(Ok(()), Err);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    Msg::End(Err(Fail::new(Exit::Failure, "the stream reader stopped")))
                }
            };
            match msg {
                Msg::Tick => {}
                Msg::Open => {
                    down = None;
                    backoff_ms = BACKOFF_MS_MIN;
                    if reconnecting && log {
                        eprintln!(
                            "keytool: watch: reconnected, resuming after cursor {}",
                            last.as_deref().unwrap_or("(start)")
                        );
                    }
                    reconnecting = false;
                }
                Msg::Item { cursor, envelope } => {
                    if last.as_deref() == Some(cursor.as_str()) {
                        continue; // the relay resumed at the item handed over last
                    }
                    last = Some(cursor.clone());
                    idle_since = Instant::now();
                    if !on_event(Event::Item { cursor, envelope })? {
                        return Ok(());
                    }
                }
                Msg::Presence(v) => {
                    if !on_event(Event::Presence(v))? {
                        return Ok(());
                    }
                }
                Msg::End(r) => break r,
            }
        };
        let why = match end {
            Ok(()) => "the relay closed the stream".to_owned(),
            Err(f) if retryable(&f) => {
                backoff_ms = backoff_ms.max(f.retry_after_s.unwrap_or(0).saturating_mul(1000));
                let why = f.message.clone();
                down = Some(f);
                why
            }
            Err(f) => return Err(f),
        };
        let delay =
            Duration::from_millis(backoff_ms + rand::thread_rng().gen_range(0..=backoff_ms / 4));
        if let Some(t) = timeout {
            let left = t.saturating_sub(idle_since.elapsed());
            if delay >= left {
                std::thread::sleep(left);
                return down.map_or(Ok(()), Err);
            }
        }
        if log {
            eprintln!(
                "keytool: watch: {why}; reconnecting in {} ms",
                delay.as_millis()
            );
        }
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if stopped() {
                return Ok(());
            }
            std::thread::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .min(STOP_CHECK),
            );
        }
        backoff_ms = (backoff_ms * 2).min(BACKOFF_MS_MAX);
        reconnecting = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use formica_protocol::ErrorCode;

    #[test]
    fn only_network_and_later_errors_are_retried() {
        assert!(retryable(&Fail::new(Exit::Network, "x")));
        assert!(retryable(&Fail::code(ErrorCode::RateLimited, "x")));
        assert!(retryable(&Fail::code(ErrorCode::Unavailable, "x")));
        assert!(!retryable(&Fail::code(ErrorCode::Unauthorized, "x")));
        assert!(!retryable(&Fail::code(ErrorCode::CursorTooOld, "x")));
        assert!(!retryable(&Fail::new(Exit::Failure, "x")));
    }
}
