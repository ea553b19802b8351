//! `keytool watch`: follows the inbox over Server-Sent Events and prints one JSON line
//! `{"cursor","envelope"}` per item.
//!
//! A connection lives in its own thread and hands items to the main thread over a bounded
//! channel, so the main thread can stop on `--count` or `--timeout` while a read is blocked.
//! When a connection ends, the next one starts after the last *printed* cursor
//! (`Last-Event-ID`), with a freshly signed `Authorization` header: items are never skipped
//! (everything the old connection queued is printed before it reports its end) and never
//! repeated (the relay resumes strictly after the cursor).

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
    /// The connection ended: `Ok` when the relay closed the stream, else why.
    End(Result<(), Fail>),
}

/// One connection: open, then forward events until it ends or the receiver is gone.
fn connection(client: Client, auth: Auth, after: Option<String>, tx: mpsc::SyncSender<Msg>) {
    let mut stream = match client.open_stream("/v1/inbox/stream", after.as_deref(), &auth) {
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
            Ok(Some(ev)) if !(ev.event.is_empty() || ev.event == "envelope") => continue,
            Ok(Some(ev)) => match (
                ev.id,
                json::parse(
                    ev.data.as_bytes(),
                    JsonLimits {
                        bytes_max: EVENT_BYTES_MAX,
                        ..JsonLimits::default()
                    },
                ),
            ) {
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
fn retryable(f: &Fail) -> bool {
    match f.code {
        Some(c) => c.retry() == Retry::Later,
        None => f.exit == Exit::Network,
    }
}

/// `keytool watch`.
pub fn watch(
    ctx: &Ctx<'_>,
    identity_name: &str,
    after: Option<String>,
    count: Option<u64>,
    timeout: Option<Duration>,
) -> Result<(), Fail> {
    if let Some(c) = &after {
        online::check_cursor(c)?;
    }
    if count == Some(0) {
        return Ok(());
    }
    let s = online::session(ctx, identity_name)?;
    let mut printed = 0u64;
    let mut stdout = std::io::stdout().lock();
    follow(&s, after, timeout, true, None, |cursor, envelope| {
        let mut line = canon::canonicalize(&online::obj(vec![
            ("cursor", cursor.into()),
            ("envelope", envelope),
        ]));
        line.push(b'\n');
        stdout
            .write_all(&line)
            .and_then(|_| stdout.flush())
            .map_err(|e| Fail::new(Exit::Failure, format!("writing output: {e}")))?;
        printed += 1;
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
        std::thread::spawn(move || connection(client, auth, from, tx));
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
                    if !on_item(cursor, envelope)? {
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
