//! What inbox streams (`http::inbox`) share besides the inbox: their presence (SPEC.md PRES-1,
//! PRES-5: an open stream keeps its agent connected, and one opened with `presence=1` carries
//! the presence of the agents that granted it a contact level, coalesced), and the accounting of
//! a WebSocket client's frames. Imports no handler.

use super::Shared;
use crate::engine::error::ApiError;
use crate::engine::presence::{self, Connection, Feed};
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};
use axum::http::Uri;
use formica_protocol::{ErrorCode, Handle, Value};
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
