//! Reading conversations (SPEC.md 19.4, API-23..26): the agent's conversations, one summary,
//! a page of entries, and the entries as Server-Sent Events or WebSocket frames, resumed by
//! seq. Posting goes through `POST /v1/envelopes` like every envelope.

use super::answer::ok;
use super::request::{auth_request, authenticate, IdParam};
use super::server::{ClientHold, ConnHold, ReadMeter};
use super::stream::{
    auth_key, error_json, key_check, query_param, ClientFrames, StreamGuard, KEEPALIVE_MS,
    KEY_CHECK_MS, WS_CLIENT_FRAME_BYTES_MAX, WS_READ_BUFFER_BYTES,
};
use super::Shared;
use crate::engine::error::ApiError;
use crate::engine::state::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use formica_protocol::envelope::MessageId;
use formica_protocol::{ErrorCode, Handle, Value};
use std::time::Duration;

/// Most summaries one `GET /v1/conversations` answers.
pub const LIST_MAX: usize = 100;

/// The one answer for a conversation the caller may not read and for one that does not
/// exist (CONVO-10): the same code and message.
fn not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no conversation {id} that you take part in"),
    )
}

/// The summary `me` may see: as it stands, or, for a participant that declined or left, as
/// it stood at its decline or leave (CONVO-10: nothing after its end).
fn summary(app: &Shared, st: &State, id: &MessageId, me: &Handle) -> Option<Value> {
    let r = st.conv(id)?;
    let end = r.conv.participant(me)?.end.filter(|e| *e < r.conv.seq);
    let past;
    let c = match end {
        None => &r.conv,
        Some(e) => {
            past = st.conv_as_of(id, e)?;
            &past
        }
    };
    let mut v = c.summary(&r.limits(app.engine.policy.conversations.limits()));
    if let Value::Object(o) = &mut v {
        let home = r.home.as_ref().unwrap_or(&app.engine.host);
        o.insert("home", home.as_str().into());
        o.insert("head", formica_protocol::hex::encode(&c.head).into());
    }
    Some(v)
}

fn invalid(field: &str, why: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidField, why.to_owned()).with("field", field.to_owned().into())
}

fn parse_limit(uri: &Uri, max: usize) -> Result<usize, ApiError> {
    match query_param(uri, "limit") {
        None => Ok(max),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n) && !s.starts_with('0'))
            .ok_or_else(|| invalid("limit", &format!("limit is 1..={max}"))),
    }
}

/// A seq: a decimal integer without leading zeros.
fn parse_seq(s: &str, field: &str) -> Result<u64, ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 16
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    ok.then(|| s.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| invalid(field, &format!("{field} is a seq, a decimal integer")))
}

/// The conversation `id` as `me` may read it: its id and the last seq `me` may read.
fn readable(app: &Shared, me: &Handle, id: &str) -> Result<(MessageId, u64), ApiError> {
    let mid = MessageId::parse_hex(id).ok_or_else(|| not_found(id))?;
    let st = app.engine.read();
    let upto = st
        .conv(&mid)
        .and_then(|r| r.conv.readable_upto(me))
        .ok_or_else(|| not_found(id))?;
    Ok((mid, upto))
}

/// `GET /v1/conversations` (API-23).
pub(crate) async fn list(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let uri = req.uri().clone();
        let (me, _) = auth_request(&app, req, 0).await?;
        let open_only = match query_param(&uri, "state") {
            None | Some("all") => false,
            Some("open") => true,
            Some(_) => return Err(invalid("state", "state is open or all")),
        };
        let ringing = match query_param(&uri, "mine") {
            None => false,
            Some("ringing") => true,
            Some(_) => return Err(invalid("mine", "mine is ringing")),
        };
        let limit = parse_limit(&uri, LIST_MAX)?;
        let before = match query_param(&uri, "before") {
            None => None,
            Some(s) => Some(
                MessageId::parse_hex(s)
                    .ok_or_else(|| invalid("before", "before is a conversation id"))?,
            ),
        };
        let st = app.engine.read();
        let mut all = st.convs_of(&me);
        if let Some(b) = before {
            // Newest first: skip up to and including `before`.
            if !all.by_ref().any(|r| r.conv.id == b) {
                return Err(invalid("before", "before is not one of your conversations"));
            }
        }
        let mut page = Vec::new();
        let mut more = false;
        for r in all {
            // As `me` may see it (CONVO-10): a participant that declined or left before the
            // last entry sees the conversation as it stood then, and a closed conversation has
            // no entry after its close, so then it was open.
            let ended_before = r
                .conv
                .participant(&me)
                .and_then(|p| p.end)
                .is_some_and(|e| e < r.conv.seq);
            if open_only && r.conv.is_closed() && !ended_before {
                continue;
            }
            if ringing {
                let waiting = !r.conv.is_closed()
                    && r.conv.participant(&me).is_some_and(|p| {
                        matches!(
                            p.state,
                            formica_protocol::conversation::PartState::Ringing
                                | formica_protocol::conversation::PartState::Missed
                        )
                    });
                if !waiting {
                    continue;
                }
            }
            if page.len() == limit {
                more = true;
                break;
            }
            page.push(r.conv.id);
        }
        let next = match (more, page.last()) {
            (true, Some(id)) => Value::String(id.to_hex()),
            _ => Value::Null,
        };
        let list: Vec<Value> = page
            .iter()
            .filter_map(|id| summary(&app, &st, id, &me))
            .collect();
        Ok(ok(
            200,
            super::answer::obj(vec![("conversations", Value::Array(list)), ("next", next)]),
        ))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// `GET /v1/conversations/{id}` (API-24).
pub(crate) async fn get(
    AxState(app): AxState<Shared>,
    IdParam(id): IdParam,
    req: Request,
) -> Response {
    let res = async {
        let (me, _) = auth_request(&app, req, 0).await?;
        let (mid, _) = readable(&app, &me, &id)?;
        let st = app.engine.read();
        let v = summary(&app, &st, &mid, &me).ok_or_else(|| not_found(&id))?;
        Ok(ok(200, v))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// The entries of `id` after `after` up to `upto`, at most `max`, as stored.
fn entries_after(app: &Shared, id: &MessageId, after: u64, upto: u64, max: usize) -> Vec<Vec<u8>> {
    if after >= upto {
        return Vec::new();
    }
    let n = usize::try_from(upto - after).unwrap_or(usize::MAX).min(max);
    app.engine.read().conv_entries(id, after, n)
}

/// `GET /v1/conversations/{id}/entries?after=SEQ&limit=N` (API-25).
pub(crate) async fn entries(
    AxState(app): AxState<Shared>,
    IdParam(id): IdParam,
    req: Request,
) -> Response {
    let res = async {
        let uri = req.uri().clone();
        let (me, _) = auth_request(&app, req, 0).await?;
        let (mid, upto) = readable(&app, &me, &id)?;
        let after = match query_param(&uri, "after") {
            None => 0,
            Some(s) => parse_seq(s, "after")?,
        };
        let limit = parse_limit(&uri, app.engine.policy.limits.inbox_page_max)?;
        if after > upto {
            return Err(ApiError::new(
                ErrorCode::InvalidCursor,
                format!("after {after} is beyond the last entry you may read ({upto})"),
            ));
        }
        let list = entries_after(&app, &mid, after, upto, limit);
        let next = after + list.len() as u64;
        // The entries are canonical as stored, and the members sort as written.
        let mut body = b"{\"entries\":[".to_vec();
        for (i, e) in list.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(e);
        }
        body.extend_from_slice(format!("],\"next\":{next}}}").as_bytes());
        let mut r = (StatusCode::OK, body).into_response();
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        Ok(r)
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// What a stream needs before it starts: who reads, with which key, from where.
struct Opened {
    me: Handle,
    kid: formica_protocol::KeyId,
    id: MessageId,
    after: u64,
}

fn open_stream(
    app: &Shared,
    id: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Opened, ApiError> {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let me = authenticate(app, method, &path, headers, b"")?;
    let kid = auth_key(headers)
        .ok_or_else(|| ApiError::internal("the accepted Authorization header does not parse"))?;
    let (mid, upto) = readable(app, &me, id)?;
    let after = match headers.get("last-event-id") {
        Some(v) => parse_seq(
            v.to_str()
                .map_err(|_| invalid("last-event-id", "Last-Event-ID is a seq"))?,
            "last-event-id",
        )?,
        None => match query_param(uri, "after") {
            Some(s) => parse_seq(s, "after")?,
            None => 0,
        },
    };
    if after > upto {
        return Err(ApiError::new(
            ErrorCode::InvalidCursor,
            format!("{after} is beyond the last entry you may read ({upto})"),
        ));
    }
    Ok(Opened {
        me,
        kid,
        id: mid,
        after,
    })
}

/// What a stream does next: send these entries, wait, or end (after an error, if any).
enum Next {
    Send(Vec<Vec<u8>>),
    Wait,
    End(Option<ApiError>),
}

/// The next step of a stream of `o` that has sent everything up to `o.after`.
fn next_step(app: &Shared, o: &Opened) -> Next {
    if let Some(e) = key_check(app, &o.me, &o.kid) {
        return Next::End(Some(e));
    }
    let (upto, done) = {
        let st = app.engine.read();
        match st.conv(&o.id) {
            None => return Next::End(None),
            Some(r) => match r.conv.readable_upto(&o.me) {
                None => return Next::End(None),
                // Nothing more comes for a reader that left, or after the close.
                Some(u) => (
                    u,
                    r.conv.participant(&o.me).is_some_and(|p| p.end.is_some())
                        || r.conv.is_closed(),
                ),
            },
        }
    };
    let list = entries_after(
        app,
        &o.id,
        o.after,
        upto,
        app.engine.policy.limits.inbox_page_max,
    );
    if !list.is_empty() {
        Next::Send(list)
    } else if done {
        Next::End(None)
    } else {
        Next::Wait
    }
}

/// `GET /v1/conversations/{id}/stream` (API-26): Server-Sent Events, `event: entry`, `id: seq`.
pub(crate) async fn sse(
    AxState(app): AxState<Shared>,
    IdParam(id): IdParam,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let o = match open_stream(&app, &id, &method, &uri, &headers) {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let rx = app.engine.notifier.subscribe(&o.me);
    let stop = app.engine.stopping.subscribe();
    let guard = StreamGuard::counted(&app);
    let init = (
        (app, guard),
        o,
        rx,
        stop,
        std::collections::VecDeque::<Vec<u8>>::new(),
        false,
    );
    let stream = futures_util::stream::unfold(
        init,
        |((app, guard), mut o, mut rx, mut stop, mut buf, ended)| async move {
            if ended {
                return None;
            }
            loop {
                if let Some(e) = buf.pop_front() {
                    o.after += 1;
                    let ev = SseEvent::default()
                        .event("entry")
                        .id(o.after.to_string())
                        .data(String::from_utf8_lossy(&e));
                    return Some((
                        Ok::<_, std::convert::Infallible>(ev),
                        ((app, guard), o, rx, stop, buf, false),
                    ));
                }
                if *stop.borrow_and_update() {
                    return None;
                }
                match next_step(&app, &o) {
                    Next::Send(list) => buf.extend(list),
                    Next::End(Some(e)) => {
                        let ev = SseEvent::default().event("error").data(error_json(&e));
                        return Some((Ok(ev), ((app, guard), o, rx, stop, buf, true)));
                    }
                    Next::End(None) => return None,
                    Next::Wait => {
                        tokio::select! {
                            changed = rx.changed() => if changed.is_err() { return None },
                            _ = stop.changed() => return None,
                            _ = tokio::time::sleep(Duration::from_millis(KEY_CHECK_MS)) => {}
                        }
                    }
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

/// `GET /v1/conversations/{id}/ws` (API-26): the entries as WebSocket text frames, with the
/// rules of the inbox WebSocket (API-11): control frames only from the client, each finished
/// within the body read time, and the connection's place under the connection limits held
/// while the socket lives.
// One extractor per argument is how axum hands a handler what it needs.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn ws(
    AxState(app): AxState<Shared>,
    IdParam(id): IdParam,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    hold: Option<axum::Extension<ConnHold>>,
    client_hold: Option<axum::Extension<ClientHold>>,
    meter: Option<axum::Extension<ReadMeter>>,
) -> Response {
    let o = match open_stream(&app, &id, &method, &uri, &headers) {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    match upgrade {
        Ok(u) => {
            // Subscribed before the 101, so nothing appended after the upgrade is missed.
            let rx = app.engine.notifier.subscribe(&o.me);
            u.max_frame_size(WS_CLIENT_FRAME_BYTES_MAX)
                .max_message_size(WS_CLIENT_FRAME_BYTES_MAX)
                .read_buffer_size(WS_READ_BUFFER_BYTES)
                .on_upgrade(move |socket| async move {
                    let _hold = (hold, client_hold);
                    let frames = ClientFrames::new(meter.map(|m| m.0));
                    ws_loop(app, o, rx, socket, frames).await
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
    mut o: Opened,
    mut rx: tokio::sync::watch::Receiver<u64>,
    mut socket: WebSocket,
    mut frames: ClientFrames,
) {
    let _guard = StreamGuard::counted(&app);
    let mut stop = app.engine.stopping.subscribe();
    let mut ping = tokio::time::interval(Duration::from_millis(KEEPALIVE_MS));
    let mut recheck = tokio::time::interval(Duration::from_millis(KEY_CHECK_MS));
    loop {
        match next_step(&app, &o) {
            Next::Send(list) => {
                for e in list {
                    let text = String::from_utf8_lossy(&e).into_owned();
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                    o.after += 1;
                }
                continue;
            }
            Next::End(e) => {
                if let Some(e) = e {
                    let _ = socket.send(Message::Text(error_json(&e).into())).await;
                }
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            Next::Wait => {}
        }
        if *stop.borrow_and_update() {
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = stop.changed() => {},
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Ping(p) | Message::Pong(p))) => frames.received(p.len()),
                Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                    super::stream::close_policy(&mut socket, "the conversation WebSocket takes no data frames").await;
                    return;
                }
            },
            _ = ping.tick() => if socket.send(Message::Ping(Vec::new().into())).await.is_err() { return },
            _ = recheck.tick() => {
                let limit = Duration::from_millis(app.engine.policy.limits.body_read_timeout_ms);
                if frames.unfinished_for(std::time::Instant::now()).is_some_and(|d| d >= limit) {
                    super::stream::close_policy(&mut socket, "a frame was not completed within limits.body_read_timeout_ms").await;
                    return;
                }
            },
        }
    }
}
