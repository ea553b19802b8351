//! What inbox streams (`http::inbox`) share besides the inbox: their presence (SPEC.md PRES-1,
//! PRES-5: an open stream keeps its agent connected, and one opened with `presence=1` carries
//! the presence of the agents that granted it a contact level, coalesced), and the accounting of
//! a WebSocket client's frames, and what every stream checks (its key, API-16). Imports no
//! handler; conversation streams (`http::conversations`) use it too.

use super::Shared;
use crate::engine::error::ApiError;
use crate::engine::presence::{self, Connection, Feed};
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};
use axum::http::{HeaderMap, Uri};
use formica_protocol::auth::RequestAuth;
use formica_protocol::{ErrorCode, Handle, KeyId, Value};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// The header of a masked client frame with a payload of at most 125 bytes.
const WS_CLIENT_FRAME_HEADER_BYTES: u64 = 6;

/// PRES-5: whether a stream asked for presence events (`presence=1`).
pub(crate) fn presence_param(uri: &Uri) -> Result<bool, ApiError> {
    let v = uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == "presence"))
            .map(|(_, v)| v)
    });
    match v {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(_) => Err(ApiError::new(ErrorCode::InvalidField, "presence is 0 or 1")
            .with("field", "presence".into())),
    }
}

/// The presence side of one open stream.
pub(crate) struct StreamPresence {
    _connection: Connection,
    app: Shared,
    me: Handle,
    feed: Option<Arc<Feed>>,
    /// Presence events ready to send.
    ready: VecDeque<Value>,
    /// No presence event is sent before this (coalescing, `presence.push_interval_ms`).
    next_push: tokio::time::Instant,
}

impl StreamPresence {
    /// `me` is connected while this lives; with `want`, presence events are collected.
    pub(crate) fn open(app: &Shared, me: &Handle, want: bool) -> StreamPresence {
        let e = &app.engine;
        let now = e.now();
        let connection = e
            .presence
            .connect(me, now, e.clock.clone(), e.policy.presence.ttl_ms);
        e.presence.refresh(&e.read(), me, now);
        StreamPresence {
            _connection: connection,
            app: app.clone(),
            me: me.clone(),
            feed: want.then(|| e.presence.subscribe(me)),
            ready: VecDeque::new(),
            next_push: tokio::time::Instant::now(),
        }
    }

    /// Resolves when presence events may be collected: a watched agent changed and the
    /// coalescing interval has passed. Never, for a stream that did not ask for presence.
    pub(crate) async fn wait(&self) {
        let Some(feed) = &self.feed else {
            return std::future::pending().await;
        };
        if !feed.has_pending() {
            feed.changed().await;
        }
        tokio::time::sleep_until(self.next_push).await;
    }

    /// Collects the presence of every watched agent that changed, as `me` may see it now.
    pub(crate) fn collect(&mut self, app: &Shared, me: &Handle) {
        let Some(feed) = &self.feed else { return };
        let changed = feed.take();
        if changed.is_empty() {
            return;
        }
        let now = app.engine.now();
        let st = app.engine.read();
        for h in changed {
            if let Some(v) = presence::view(&st, &app.engine.presence, me, &h, now) {
                self.ready.push_back(v);
            }
        }
        self.next_push = tokio::time::Instant::now()
            + Duration::from_millis(app.engine.policy.presence.push_interval_ms);
    }

    /// The next presence event to send.
    pub(crate) fn pop(&mut self) -> Option<Value> {
        self.ready.pop_front()
    }
}

impl Drop for StreamPresence {
    fn drop(&mut self) {
        if self.feed.take().is_some() {
            self.app.engine.presence.prune(&self.me);
        }
    }
}

/// What the client of an inbox WebSocket has sent, against the bytes read from its connection:
/// bytes beyond the frames received are a frame the client began and has not finished.
pub(crate) struct ClientFrames {
    /// Absent only when the connection was not made by `server::serve` (tests without sockets).
    meter: Option<super::server::ReadMeter>,
    /// Bytes of the connection accounted for: everything before the upgrade, then each frame.
    accounted: u64,
    /// Since when bytes beyond `accounted` have been seen.
    partial_since: Option<std::time::Instant>,
}

impl ClientFrames {
    pub(crate) fn new(meter: Option<super::server::ReadMeter>) -> ClientFrames {
        let accounted = meter.as_ref().map_or(0, super::server::ReadMeter::bytes);
        ClientFrames {
            meter,
            accounted,
            partial_since: None,
        }
    }

    /// A control frame with `payload` bytes was received whole.
    pub(crate) fn received(&mut self, payload: usize) {
        self.accounted += WS_CLIENT_FRAME_HEADER_BYTES + payload as u64;
        self.partial_since = None;
    }

    /// How long a frame the client began has been unfinished, if one is.
    pub(crate) fn unfinished_for(&mut self, now: std::time::Instant) -> Option<Duration> {
        let read = self.meter.as_ref()?.bytes();
        if read > self.accounted {
            Some(now - *self.partial_since.get_or_insert(now))
        } else {
            self.partial_since = None;
            None
        }
    }
}

/// Closes an inbox WebSocket with a policy-violation status (1008) and `reason`.
pub(crate) async fn close_policy(socket: &mut WebSocket, reason: &'static str) {
    let frame = CloseFrame {
        code: close_code::POLICY,
        reason: reason.into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// Interval of SSE keep-alive comments and WebSocket pings.
pub const KEEPALIVE_MS: u64 = 15_000;

/// Largest client frame the inbox WebSocket reads, in payload bytes: a client sends only control
/// frames (API-11), whose payload is at most 125 bytes (RFC 6455 section 5.5). A frame announced
/// larger ends the connection before its payload is read, so a client cannot make the relay
/// buffer a message (the library's default was 64 MiB).
pub const WS_CLIENT_FRAME_BYTES_MAX: usize = 125;

/// Read buffer of one inbox WebSocket (the library's default is 128 KiB per connection; a
/// client's frames are at most 131 bytes).
pub const WS_READ_BUFFER_BYTES: usize = 4096;

/// Longest time an idle stream goes without checking that the key that opened it is still the
/// agent's current key (API-16). The check is also made before every page is read, so nothing
/// is sent under a rotated or revoked key; this bound is for idle streams.
pub const KEY_CHECK_MS: u64 = 1_000;

/// The key id of the `Authorization` header that [`authenticate`] accepted.
pub(crate) fn auth_key(headers: &HeaderMap) -> Option<KeyId> {
    let v = headers.get("authorization")?.to_str().ok()?;
    RequestAuth::parse(v).ok().map(|a| a.key)
}

/// API-16: `None` while `kid` is still `me`'s current key and valid now; otherwise the error
/// that ends the stream.
pub(crate) fn key_check(app: &Shared, me: &Handle, kid: &KeyId) -> Option<ApiError> {
    let st = app.engine.read();
    let current = st.agents.get(me).is_some_and(|a| {
        a.keylog.current_key().is_some_and(|k| k.key_id() == *kid)
            && a.keylog.key_at(kid, app.engine.now()).is_ok()
    });
    (!current).then(|| {
        ApiError::new(
            ErrorCode::Unauthorized,
            format!(
                "the key that opened this stream is no longer {me}'s current key (rotated, revoked or moved); open a new stream with the current key"
            ),
        )
    })
}

pub(crate) fn error_json(e: &ApiError) -> String {
    String::from_utf8_lossy(&formica_protocol::canon::canonicalize(&e.body())).into_owned()
}

pub(crate) fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v)
    })
}

/// Counts open streams for `/metrics` (inbox and conversation streams) while it lives.
pub(crate) struct StreamGuard(pub(crate) Shared);

impl StreamGuard {
    /// Counts one more open stream.
    pub(crate) fn counted(app: &Shared) -> StreamGuard {
        app.engine
            .metrics
            .streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        StreamGuard(app.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0
            .engine
            .metrics
            .streams
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
