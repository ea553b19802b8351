//! The inbox (SPEC.md 15.10-15.12): a page with a cursor (`GET /v1/inbox`), Server-Sent Events with
//! `Last-Event-ID` resume, and WebSocket. All three read from the inbox projection after a
//! cursor, so a reconnect resumes exactly where the client's last cursor points.
//!
//! Streams are pull-based: a consumer is sent at most one page at a time and the next page is
//! read only when the previous one has been written to the socket, so a slow consumer holds at
//! most one page (`inbox_page_max` items) in memory and its items simply stay in its inbox. A
//! consumer whose socket takes no write for `write_stall_timeout_ms` (it stopped reading and the
//! buffers are full) is disconnected by the server loop (`super::server::StallGuard`) and resumes from
//! its cursor on its next connection.
//!
//! A stream lives only as long as the key that opened it is the agent's current key (API-16):
//! the key is checked before every page and every `KEY_CHECK_MS` while idle, and a rotated,
//! revoked or moved key ends the stream with an `unauthorized` error event or frame.

use super::answer::ok;
use super::request::{auth_request, authenticate};
use super::server::{ClientHold, ConnHold, ReadMeter};
use super::stream::{close_policy, presence_param, ClientFrames, StreamPresence};
use super::Shared;
use crate::engine::decide::Command;
use crate::engine::error::ApiError;
use crate::engine::state::InboxItem;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use formica_protocol::{ErrorCode, Handle, KeyId, Object, Value};
use std::collections::VecDeque;
use std::time::Duration;

use super::stream::{auth_key, error_json, key_check, query_param, StreamGuard};
pub use super::stream::{
    KEEPALIVE_MS, KEY_CHECK_MS, WS_CLIENT_FRAME_BYTES_MAX, WS_READ_BUFFER_BYTES,
};

fn parse_cursor(s: &str) -> Result<u64, ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 16
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !ok {
        return Err(ApiError::new(
            ErrorCode::InvalidCursor,
            format!("{s:?} is not a cursor this relay issued"),
        ));
    }
    s.parse()
        .map_err(|_| ApiError::new(ErrorCode::InvalidCursor, "cursor out of range"))
}

/// Checks a resume cursor against the inbox: beyond the newest item is invalid; before the
/// oldest retained item is `cursor_too_old` (this relay retains every item, so that cannot
/// happen yet, but the check is where retention will need it).
fn check_cursor(app: &Shared, me: &Handle, after: u64) -> Result<(), ApiError> {
    let st = app.engine.read();
    let a = st
        .agents
        .get(me)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "not registered"))?;
    let newest = a.newest();
    if after > newest {
        return Err(ApiError::new(
            ErrorCode::InvalidCursor,
            format!("cursor {after} is beyond the newest item {newest}"),
        ));
    }
    let oldest = st.inbox_oldest_kept(a);
    if after + 1 < oldest {
        return Err(ApiError::new(
            ErrorCode::CursorTooOld,
            format!("items before {oldest} are no longer kept"),
        )
        .with("oldest", Value::String(oldest.to_string())));
    }
    Ok(())
}

/// Where reading starts when the client gives no cursor: before the oldest retained item.
fn start_of(app: &Shared, me: &Handle) -> u64 {
    let st = app.engine.read();
    st.agents
        .get(me)
        .map(|a| st.inbox_oldest_kept(a) - 1)
        .unwrap_or(0)
}

fn page(app: &Shared, me: &Handle, after: u64, max: usize) -> Vec<InboxItem> {
    let st = app.engine.read();
    st.inbox_after(me, after, max)
}

/// Records that items up to `upto` were handed out (they become `delivered`). Not awaited: if
/// the relay stops first, the next read records it.
fn mark_read(app: &Shared, me: &Handle, upto: u64) {
    let app = app.clone();
    let me = me.clone();
    tokio::spawn(async move {
        if let Err(e) = app
            .engine
            .writer
            .submit(Command::Read { handle: me, upto })
            .await
        {
            // A store that refuses writes is reported already; the next read records it.
            if matches!(e.code, ErrorCode::StorageFull | ErrorCode::Unavailable) {
                tracing::debug!(code = %e.code, "could not record a read: {}", e.message);
            } else {
                tracing::warn!(code = %e.code, "could not record a read: {}", e.message);
            }
        }
    });
}

fn item_value(item: &InboxItem) -> Result<Value, ApiError> {
    let env = formica_protocol::json::parse(
        &item.wire,
        formica_protocol::JsonLimits {
            bytes_max: usize::MAX,
            depth_max: 64,
        },
    )
    .map_err(ApiError::internal)?;
    let mut o = Object::new();
    o.insert("cursor", Value::String(item.cursor.to_string()));
    o.insert("envelope", env);
    Ok(Value::Object(o))
}

/// API-9's `ack` member: for an item that asked its reader for an ack (`ack_by`), whether the
/// reader still owes it (`pending`), has sent it (`acked`), or the deadline has passed without
/// one (`timed_out`, by the relay's clock, also before the sender's home relay has settled it).
fn ack_state(
    st: &crate::engine::state::State,
    me: &Handle,
    item: &InboxItem,
    now: i64,
) -> Option<&'static str> {
    let m = st.message(&item.id)?;
    let by = m.ack_by?;
    let r = m.recipients.iter().find(|r| &r.handle == me)?;
    Some(match r.state {
        formica_protocol::DeliveryState::Acked => "acked",
        formica_protocol::DeliveryState::TimedOut => "timed_out",
        _ if now > by => "timed_out",
        _ => "pending",
    })
}

/// `GET /v1/inbox?after=CURSOR&limit=N`.
pub(crate) async fn inbox(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let uri = req.uri().clone();
        let (me, _) = auth_request(&app, req, 0).await?;
        let after = match query_param(&uri, "after") {
            Some(c) => parse_cursor(c)?,
            None => start_of(&app, &me),
        };
        let max = app.engine.policy.limits.inbox_page_max;
        let limit = match query_param(&uri, "limit") {
            None => max,
            Some(s) => match s.parse::<usize>() {
                // Decimal without leading zeros, like cursors.
                Ok(n)
                    if (1..=max).contains(&n)
                        && !s.starts_with('0')
                        && s.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    n
                }
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidField,
                        format!("limit is 1..={max}"),
                    )
                    .with("field", "limit".into()))
                }
            },
        };
        check_cursor(&app, &me, after)?;
        let items = page(&app, &me, after, limit);
        let next = items.last().map(|i| i.cursor).unwrap_or(after);
        if let Some(last) = items.last() {
            mark_read(&app, &me, last.cursor);
        }
        let oldest = {
            let st = app.engine.read();
            st.agents
                .get(&me)
                .map(|a| st.inbox_oldest_kept(a))
                .unwrap_or(1)
        };
        // The ack states under the read lock, the parsing after it.
        let acks: Vec<Option<&'static str>> = {
            let st = app.engine.read();
            let now = app.engine.now();
            items.iter().map(|i| ack_state(&st, &me, i, now)).collect()
        };
        let list = items
            .iter()
            .zip(acks)
            .map(|(i, ack)| {
                let mut v = item_value(i)?;
                if let (Value::Object(o), Some(a)) = (&mut v, ack) {
                    o.insert("ack", a.into());
                }
                Ok(v)
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let mut o = Object::new();
        o.insert("items", Value::Array(list));
        o.insert("next", Value::String(next.to_string()));
        o.insert("oldest", Value::String(oldest.to_string()));
        Ok(ok(200, Value::Object(o)))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// The resume point of a stream: `Last-Event-ID`, else `?after=`, else the oldest item.
fn resume_cursor(
    app: &Shared,
    me: &Handle,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<u64, ApiError> {
    if let Some(v) = headers.get("last-event-id") {
        let s = v
            .to_str()
            .map_err(|_| ApiError::new(ErrorCode::InvalidCursor, "Last-Event-ID is not ASCII"))?;
        return parse_cursor(s);
    }
    match query_param(uri, "after") {
        Some(c) => parse_cursor(c),
        None => Ok(start_of(app, me)),
    }
}

/// `GET /v1/inbox/stream`: Server-Sent Events.
pub(crate) async fn sse(
    AxState(app): AxState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let me = match authenticate(&app, &method, &path, &headers, b"") {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    let Some(kid) = auth_key(&headers) else {
        return ApiError::internal("the accepted Authorization header does not parse")
            .into_response();
    };
    let (cursor, want) = match resume_cursor(&app, &me, &headers, &uri)
        .and_then(|c| check_cursor(&app, &me, c).map(|_| c))
        .and_then(|c| Ok((c, presence_param(&uri)?)))
    {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let rx = app.engine.notifier.subscribe(&me);
    let pres = StreamPresence::open(&app, &me, want);
    app.engine
        .metrics
        .streams
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let guard = StreamGuard(app.clone());
    let stop = app.engine.stopping.subscribe();
    // (who, key, ended, highest cursor recorded as read)
    let init = (
        app,
        (me, kid, false, cursor),
        cursor,
        rx,
        (VecDeque::<InboxItem>::new(), pres),
        guard,
        stop,
    );
    let stream = futures_util::stream::unfold(
        init,
        |(app, (me, kid, ended, mut marked), mut cursor, mut rx, mut buf, guard, mut stop)| async move {
            if ended {
                return None;
            }
            loop {
                // PRES-5: presence events carry no id, so Last-Event-ID still names an item.
                if let Some(v) = buf.1.pop() {
                    // API-16 holds for presence too: nothing under a key that is no longer
                    // current.
                    if let Some(e) = key_check(&app, &me, &kid) {
                        let ev = SseEvent::default().event("error").data(error_json(&e));
                        return Some((
                            Ok(ev),
                            (app, (me, kid, true, marked), cursor, rx, buf, guard, stop),
                        ));
                    }
                    let data = String::from_utf8_lossy(&formica_protocol::canon::canonicalize(&v))
                        .into_owned();
                    let ev = SseEvent::default().event("presence").data(data);
                    return Some((
                        Ok::<_, std::convert::Infallible>(ev),
                        (app, (me, kid, false, marked), cursor, rx, buf, guard, stop),
                    ));
                }
                if let Some(item) = buf.0.pop_front() {
                    let data = String::from_utf8_lossy(&item.wire).into_owned();
                    let ev = SseEvent::default()
                        .event("envelope")
                        .id(item.cursor.to_string())
                        .data(data);
                    return Some((
                        Ok::<_, std::convert::Infallible>(ev),
                        (app, (me, kid, false, marked), cursor, rx, buf, guard, stop),
                    ));
                }
                // The page went to the connection (the stream is polled again only once the
                // body took the last event): its items become `delivered`.
                if cursor > marked {
                    mark_read(&app, &me, cursor);
                    marked = cursor;
                }
                // API-16: no page is read, and nothing more is sent, under a key that is no
                // longer current; the stream ends with an `error` event.
                if let Some(e) = key_check(&app, &me, &kid) {
                    let ev = SseEvent::default().event("error").data(error_json(&e));
                    return Some((
                        Ok(ev),
                        (app, (me, kid, true, marked), cursor, rx, buf, guard, stop),
                    ));
                }
                let items = page(&app, &me, cursor, app.engine.policy.limits.inbox_page_max);
                if let Some(last) = items.last() {
                    cursor = last.cursor;
                    buf.0.extend(items);
                    continue;
                }
                // Shutdown ends the stream cleanly; the client resumes from its last event id.
                if *stop.borrow_and_update() {
                    return None;
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return None },
                    _ = stop.changed() => return None,
                    _ = buf.1.wait() => buf.1.collect(&app, &me),
                    _ = tokio::time::sleep(Duration::from_millis(KEY_CHECK_MS)) => {}
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_millis(KEEPALIVE_MS))
                .text("keep-alive"),
        )
        .into_response()
}

/// `GET /v1/inbox/ws?after=CURSOR`: WebSocket.
// One extractor per argument is how axum hands a handler what it needs.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn ws(
    AxState(app): AxState<Shared>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    hold: Option<axum::Extension<ConnHold>>,
    client_hold: Option<axum::Extension<ClientHold>>,
    meter: Option<axum::Extension<ReadMeter>>,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let me = match authenticate(&app, &method, &path, &headers, b"") {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    let Some(kid) = auth_key(&headers) else {
        return ApiError::internal("the accepted Authorization header does not parse")
            .into_response();
    };
    let (cursor, want) = match resume_cursor(&app, &me, &headers, &uri)
        .and_then(|c| check_cursor(&app, &me, c).map(|_| c))
        .and_then(|c| Ok((c, presence_param(&uri)?)))
    {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    match upgrade {
        Ok(u) => {
            // Open the presence feed before the 101 goes out, so a change that follows the
            // upgrade (as the client sees it) is never missed (PRES-5).
            let pres = StreamPresence::open(&app, &me, want);
            u.max_frame_size(WS_CLIENT_FRAME_BYTES_MAX)
                .max_message_size(WS_CLIENT_FRAME_BYTES_MAX)
                .read_buffer_size(WS_READ_BUFFER_BYTES)
                .on_upgrade(move |socket| async move {
                    // Keep the connection's places under the connection limits while the socket lives.
                    let _hold = (hold, client_hold);
                    let frames = ClientFrames::new(meter.map(|m| m.0));
                    ws_loop(app, me, kid, (cursor, pres), socket, frames).await
                })
        }
        Err(e) => ApiError::new(
            ErrorCode::InvalidField,
            format!("this endpoint needs a WebSocket upgrade request: {e}"),
        )
        .with("field", "upgrade".into())
        .into_response(),
    }
}

async fn ws_loop(
    app: Shared,
    me: Handle,
    kid: KeyId,
    (mut cursor, mut pres): (u64, StreamPresence),
    mut socket: WebSocket,
    mut frames: ClientFrames,
) {
    app.engine
        .metrics
        .streams
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _guard = StreamGuard(app.clone());
    let mut rx = app.engine.notifier.subscribe(&me);
    let mut stop = app.engine.stopping.subscribe();
    let mut ping = tokio::time::interval(Duration::from_millis(KEEPALIVE_MS));
    let mut recheck = tokio::time::interval(Duration::from_millis(KEY_CHECK_MS));
    loop {
        // API-16: the stream ends, with an error frame, once its key is no longer current.
        if let Some(e) = key_check(&app, &me, &kid) {
            let _ = socket.send(Message::Text(error_json(&e).into())).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
        let items = page(&app, &me, cursor, app.engine.policy.limits.inbox_page_max);
        if let Some(last) = items.last() {
            for item in &items {
                let frame = match item_value(item) {
                    Ok(v) => String::from_utf8_lossy(&formica_protocol::canon::canonicalize(&v))
                        .into_owned(),
                    Err(_) => return,
                };
                if socket.send(Message::Text(frame.into())).await.is_err() {
                    return;
                }
            }
            cursor = last.cursor;
            mark_read(&app, &me, cursor);
            continue;
        }
        if *stop.borrow_and_update() {
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = stop.changed() => {},
            // PRES-5: presence frames, coalesced.
            _ = pres.wait() => {
                pres.collect(&app, &me);
                if let Some(e) = key_check(&app, &me, &kid) {
                    let _ = socket.send(Message::Text(error_json(&e).into())).await;
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
                while let Some(v) = pres.pop() {
                    let mut o = Object::new();
                    o.insert("presence", v);
                    let frame = formica_protocol::canon::canonicalize(&Value::Object(o));
                    let text = String::from_utf8_lossy(&frame).into_owned();
                    if socket.send(Message::Text(text.into())).await.is_err() { return }
                }
            },
            // API-11: a client sends only control frames. A frame over
            // WS_CLIENT_FRAME_BYTES_MAX fails in the library and ends the connection at once.
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Ping(p) | Message::Pong(p))) => frames.received(p.len()),
                Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                    close_policy(&mut socket, "the inbox WebSocket takes no data frames").await;
                    return;
                }
            },
            _ = ping.tick() => if socket.send(Message::Ping(Vec::new().into())).await.is_err() { return },
            _ = recheck.tick() => {
                // A frame the client began must be complete within the body read deadline.
                let limit = Duration::from_millis(app.engine.policy.limits.body_read_timeout_ms);
                if frames.unfinished_for(std::time::Instant::now()).is_some_and(|d| d >= limit) {
                    close_policy(&mut socket, "a frame was not completed within limits.body_read_timeout_ms").await;
                    return;
                }
            },
        }
    }
}
