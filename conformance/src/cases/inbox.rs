//! Reading the inbox: pages with cursors (API-9), Server-Sent Events with resume (API-10) and
//! WebSocket (API-11), the cursor errors, and "handed out means delivered" (DELIV-4).

use super::*;
use crate::case::{case, Env};
use crate::stream::{open_sse, open_ws, parse_line};
use std::sync::Arc;

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("inbox.page", &["API-9", "ENV-15", "HTTP-3"], "pages hold the items after `after`, oldest first, at most `limit`, with `next` and `oldest`", page),
        case("inbox.limit", &["API-9"], "limit is 1..=inbox_page_max; anything else is invalid_field (limit)", limit).codes(&[E::InvalidField]),
        case("inbox.invalid-cursor", &["API-9"], "a cursor the relay did not issue, or beyond the newest item, is invalid_cursor", invalid_cursor).codes(&[E::InvalidCursor]),
        case("inbox.cursor-too-old", &["API-9", "RET-2"], "a cursor before the oldest retained item is 410 cursor_too_old with `oldest`", cursor_too_old).codes(&[E::CursorTooOld]),
        case("inbox.delivered-on-read", &["DELIV-1", "DELIV-4", "API-9", "API-13"], "a message is accepted until its recipient reads it, then delivered", delivered_on_read),
        case("sse.stream", &["API-10", "INGEST-1", "ENV-15"], "the event stream sends each item as event envelope, id cursor, data canonical, then new items live", sse_stream),
        case("sse.resume", &["API-10"], "Last-Event-ID (or after) resumes exactly after that cursor, without gaps or repeats; Last-Event-ID wins", sse_resume),
        case("sse.cursor-errors", &["API-10"], "cursor errors are JSON errors before the stream starts", sse_errors).codes(&[E::InvalidCursor, E::Unauthorized]),
        case("sse.delivered", &["API-10", "DELIV-4"], "items sent on the event stream become delivered", sse_delivered),
        case("ws.stream", &["API-11", "ENV-15"], "WebSocket frames are canonical {cursor, envelope}; new items arrive live; a client ping changes nothing", ws_stream),
        case("ws.data-frame", &["API-11"], "a client text frame ends the stream with close status 1008", ws_data_frame),
        case("ws.large-frame", &["API-11"], "a client frame announced larger than a control frame ends the connection before its payload is read", ws_large_frame),
        case("ws.resume", &["API-11"], "?after= resumes after that cursor", ws_resume),
        case("stream.key-rotated", &["API-16", "API-10", "API-11"], "open SSE and WebSocket streams end with an unauthorized error once the key that opened them is rotated", stream_key_rotated).codes(&[E::Unauthorized]),
        case("ws.errors", &["API-11"], "an unauthenticated upgrade and a bad cursor are answered as HTTP errors", ws_errors).codes(&[E::InvalidCursor, E::Unauthorized]),
    ]
}

struct Fed {
    a: Agent,
    b: Agent,
    sent: Vec<Signed>,
}

/// `a` sends `n` messages to `b` (who granted `a`).
fn fed(t: &Target, tag: &str, n: usize) -> R<Fed> {
    let a = t.register(&format!("{tag}a"))?;
    let b = t.register(&format!("{tag}b"))?;
    t.grant(&b, &a.handle, "message")?;
    let mut sent = Vec::new();
    for _ in 0..n {
        let m = msg(t, &a, &[&b.handle]);
        t.send_ok(&m)?;
        sent.push(m);
    }
    Ok(Fed { a, b, sent })
}

fn items_of(r: &Resp) -> R<Vec<(String, Value)>> {
    let items = r
        .member("items")?
        .as_array()
        .ok_or_else(|| Stop::Fail(format!("{}: items is not an array (API-9)", r.what)))?;
    items
        .iter()
        .map(|it| {
            let c = at(it, &["cursor"]).and_then(Value::as_str).ok_or_else(|| {
                Stop::Fail(format!(
                    "{}: an item without a string cursor (API-9)",
                    r.what
                ))
            })?;
            let e = at(it, &["envelope"]).cloned().ok_or_else(|| {
                Stop::Fail(format!("{}: an item without envelope (API-9)", r.what))
            })?;
            Ok((c.to_owned(), e))
        })
        .collect()
}

fn ids(items: &[(String, Value)]) -> Vec<String> {
    items
        .iter()
        .map(|(_, e)| crate::target::env_str(e, "id").unwrap_or("").to_owned())
        .collect()
}

fn page(e: &Env<'_>) -> R {
    let t = e.t;
    let f = fed(t, "pg", 3)?;
    let want: Vec<String> = f.sent.iter().map(|m| m.id.clone()).collect();
    let r = t.authed(&f.b, "GET", "/v1/inbox", b"")?;
    r.expect_json(200)?;
    let all = items_of(&r)?;
    ensure!(
        ids(&all) == want,
        "{}: items {:?}, expected the 3 messages oldest first {:?} (API-9)",
        r.what,
        ids(&all),
        want
    );
    for m in &f.sent {
        expect_raw_contains(&r, &m.wire, "an inbox envelope")?;
    }
    let last = all[2].0.clone();
    ensure!(
        r.str_member("next")? == last,
        "{}: next {:?} is not the last item's cursor {last:?} (API-9)",
        r.what,
        r.str_member("next")?
    );
    ensure!(
        r.str_member("oldest")? == all[0].0,
        "{}: oldest {:?} is not the first item's cursor {:?} (API-9)",
        r.what,
        r.str_member("oldest")?,
        all[0].0
    );
    let r2 = t.authed(&f.b, "GET", "/v1/inbox?limit=2", b"")?;
    r2.expect_json(200)?;
    let p1 = items_of(&r2)?;
    ensure!(
        ids(&p1) == want[..2],
        "{}: {:?}, expected the first 2 (API-9)",
        r2.what,
        ids(&p1)
    );
    let next = r2.str_member("next")?.to_owned();
    ensure!(
        next == p1[1].0,
        "{}: next is not the last item's cursor (API-9)",
        r2.what
    );
    let r3 = t.authed(&f.b, "GET", &format!("/v1/inbox?after={next}&limit=2"), b"")?;
    r3.expect_json(200)?;
    ensure!(
        ids(&items_of(&r3)?) == want[2..],
        "{}: {:?}, expected the third message (API-9)",
        r3.what,
        ids(&items_of(&r3)?)
    );
    let r4 = t.authed(&f.b, "GET", &format!("/v1/inbox?after={last}"), b"")?;
    r4.expect_json(200)?;
    ensure!(
        items_of(&r4)?.is_empty(),
        "{}: items after the last cursor (API-9)",
        r4.what
    );
    ensure!(
        r4.str_member("next")? == last,
        "{}: an empty page's next is {:?}, not where it started, {last:?} (API-9)",
        r4.what,
        r4.str_member("next")?
    );
    Ok(())
}

fn limit(e: &Env<'_>) -> R {
    let t = e.t;
    let f = fed(t, "lim", 1)?;
    let max = t.published.inbox_page_max;
    for bad in [
        "0".to_owned(),
        (max + 1).to_string(),
        "-1".into(),
        "x".into(),
    ] {
        t.authed(&f.b, "GET", &format!("/v1/inbox?limit={bad}"), b"")?
            .expect_error_field(ErrorCode::InvalidField, "limit")
            .map_err(|err| match err {
                Stop::Fail(m) => Stop::Fail(format!("limit={bad}: {m}")),
                other => other,
            })?;
    }
    t.authed(&f.b, "GET", &format!("/v1/inbox?limit={max}"), b"")?
        .expect_json(200)?;
    t.authed(&f.b, "GET", "/v1/inbox?limit=1", b"")?
        .expect_json(200)?;
    Ok(())
}

fn invalid_cursor(e: &Env<'_>) -> R {
    let t = e.t;
    let f = fed(t, "icur", 1)?;
    let r = t.authed(&f.b, "GET", "/v1/inbox", b"")?;
    r.expect_json(200)?;
    let last = items_of(&r)?
        .last()
        .map(|x| x.0.clone())
        .unwrap_or_default();
    for bad in [
        "zz-not-a-cursor".to_owned(),
        "99999999999".into(),
        format!("{last}0000"),
    ] {
        t.authed(&f.b, "GET", &format!("/v1/inbox?after={bad}"), b"")?
            .expect_error(ErrorCode::InvalidCursor)
            .map_err(|err| match err {
                Stop::Fail(m) => Stop::Fail(format!("after={bad}: {m} (API-9)")),
                other => other,
            })?;
    }
    Ok(())
}

fn cursor_too_old(e: &Env<'_>) -> R {
    let t = e.t;
    let f = fed(t, "old", 2)?;
    let r = t.authed(&f.b, "GET", "/v1/inbox", b"")?;
    r.expect_json(200)?;
    let items = items_of(&r)?;
    let oldest = r.str_member("oldest")?.to_owned();
    if items.first().map(|x| x.0.as_str()) == Some(oldest.as_str()) {
        skip!("the relay retains every item of a fresh agent (oldest is its first cursor), so no cursor before the oldest retained item can be presented");
    }
    // Items were dropped: a cursor before `oldest` must be refused, never skipped silently.
    let r = t.authed(&f.b, "GET", "/v1/inbox?after=0", b"")?;
    r.expect_error(ErrorCode::CursorTooOld)?;
    ensure!(
        r.error_member("oldest").and_then(Value::as_str) == Some(oldest.as_str()),
        "cursor_too_old carries oldest {:?}, the page says {oldest:?} (API-9)",
        r.error_member("oldest")
    );
    Ok(())
}

fn delivered_on_read(e: &Env<'_>) -> R {
    let t = e.t;
    let f = fed(t, "dlv", 1)?;
    let m = &f.sent[0];
    let (st, v) = t.delivery(&f.a, &m.id, &f.b.handle)?;
    ensure!(
        st == "accepted",
        "before the recipient reads, the delivery is {st:?}, not accepted (DELIV-1, DELIV-3)"
    );
    ensure!(
        at(&v, &["updated"]).and_then(Value::as_i64).is_some(),
        "the delivery has no integer `updated` (API-13)"
    );
    t.inbox(&f.b)?;
    t.wait_delivery(&f.a, &m.id, &f.b.handle, "delivered", 3000)?;
    Ok(())
}

fn sse_path(after: Option<&str>) -> String {
    match after {
        Some(a) => format!("/v1/inbox/stream?after={a}"),
        None => "/v1/inbox/stream".into(),
    }
}

fn sse_open(
    t: &Target,
    a: &Agent,
    after: Option<&str>,
    last_event_id: Option<&str>,
) -> R<crate::stream::Sse> {
    let path = sse_path(after);
    let mut headers = vec![
        ("authorization", t.auth_header(a, "GET", &path, b"")),
        ("accept", "text/event-stream".to_owned()),
    ];
    if let Some(id) = last_event_id {
        headers.push(("last-event-id", id.to_owned()));
    }
    match open_sse(&t.http, &path, &headers)? {
        Ok(s) => {
            ensure!(
                s.content_type.starts_with("text/event-stream"),
                "GET {path}: Content-Type {:?}, not text/event-stream (API-10)",
                s.content_type
            );
            Ok(s)
        }
        Err(r) => fail!(
            "GET {path}: the stream did not open: {} (API-10)",
            r.brief()
        ),
    }
}

fn check_events(evs: &[(String, String)], want: &[&Signed], what: &str) -> R {
    ensure!(
        evs.len() == want.len(),
        "{what}: {} events, expected {}",
        evs.len(),
        want.len()
    );
    for ((id, data), m) in evs.iter().zip(want) {
        ensure!(
            !id.is_empty(),
            "{what}: an event without a cursor id (API-10)"
        );
        ensure!(
            data.as_bytes() == m.wire.as_slice(),
            "{what}: event data {} is not the canonical envelope {} (API-10, ENV-15)",
            crate::http::quote(data.as_bytes()),
            crate::http::quote(&m.wire)
        );
    }
    Ok(())
}

fn sse_stream(e: &Env<'_>) -> R {
    let t = e.t;
    let f = fed(t, "sse", 2)?;
    let inbox = t.inbox(&f.b)?;
    let mut s = sse_open(t, &f.b, None, None)?;
    let evs = s.envelopes(2, 5000)?;
    check_events(&evs, &[&f.sent[0], &f.sent[1]], "GET /v1/inbox/stream")?;
    for ((id, _), (c, _)) in evs.iter().zip(&inbox) {
        ensure!(
            id == c,
            "event id {id:?} is not the inbox cursor {c:?} of the item (API-10)"
        );
    }
    let m = msg(t, &f.a, &[&f.b.handle]);
    t.send_ok(&m)?;
    let live = s.envelopes(1, 5000)?;
    check_events(&live, &[&m], "GET /v1/inbox/stream (live)")?;
    Ok(())
}

fn sse_resume(e: &Env<'_>) -> R {
    let t = e.t;
    let f = fed(t, "ssr", 4)?;
    let inbox = t.inbox(&f.b)?;
    let c2 = inbox[1].0.clone();
    let mut s = sse_open(t, &f.b, None, Some(&c2))?;
    check_events(
        &s.envelopes(2, 5000)?,
        &[&f.sent[2], &f.sent[3]],
        "Last-Event-ID resume",
    )?;
    s.expect_quiet(500)?;
    let mut s = sse_open(t, &f.b, Some(&c2), None)?;
    check_events(
        &s.envelopes(2, 5000)?,
        &[&f.sent[2], &f.sent[3]],
        "?after= resume",
    )?;
    let c3 = inbox[2].0.clone();
    let mut s = sse_open(t, &f.b, Some(&c3), Some(&inbox[0].0))?;
    check_events(
        &s.envelopes(3, 5000)?,
        &[&f.sent[1], &f.sent[2], &f.sent[3]],
        "Last-Event-ID with a different ?after=",
    )?;
    Ok(())
}

fn sse_errors(e: &Env<'_>) -> R {
    let t = e.t;
    let f = fed(t, "sse", 1)?;
    for (after, lei) in [(None, Some("zz-not-a-cursor")), (Some("99999999999"), None)] {
        let path = sse_path(after);
        let mut headers = vec![("authorization", t.auth_header(&f.b, "GET", &path, b""))];
        if let Some(l) = lei {
            headers.push(("last-event-id", l.to_owned()));
        }
        match open_sse(&t.http, &path, &headers)? {
            Ok(_) => fail!("GET {path} with cursor {:?}: the stream opened (API-10: cursor errors come before the stream)", lei.or(after)),
            Err(r) => {
                r.expect_error(ErrorCode::InvalidCursor)?;
            }
        }
    }
    match open_sse(&t.http, "/v1/inbox/stream", &[])? {
        Ok(_) => fail!(
            "GET /v1/inbox/stream without Authorization opened a stream (API-10 is authenticated)"
        ),
        Err(r) => {
            r.expect_error(ErrorCode::Unauthorized)?;
        }
    }
    Ok(())
}

fn sse_delivered(e: &Env<'_>) -> R {
    let t = e.t;
    let f = fed(t, "ssd", 1)?;
    let mut s = sse_open(t, &f.b, None, None)?;
    s.envelopes(1, 5000)?;
    t.wait_delivery(&f.a, &f.sent[0].id, &f.b.handle, "delivered", 3000)?;
    Ok(())
}

fn ws_open(t: &Target, a: &Agent, after: &str) -> R<crate::stream::Ws> {
    let path = format!("/v1/inbox/ws?after={after}");
    let h = t.auth_header(a, "GET", &path, b"");
    match open_ws(&t.http, &path, &[("authorization", h)])? {
        Ok(w) => Ok(w),
        Err(r) => fail!(
            "GET {path}: the upgrade was refused: {} (API-11)",
            r.brief()
        ),
    }
}

fn check_frames(frames: &[String], want: &[&Signed], what: &str) -> R<Vec<String>> {
    ensure!(
        frames.len() == want.len(),
        "{what}: {} frames, expected {}",
        frames.len(),
        want.len()
    );
    let mut cursors = Vec::new();
    for (f, m) in frames.iter().zip(want) {
        let v = parse_line(what, f)?;
        ensure!(
            canon::canonicalize(&v) == f.as_bytes(),
            "{what}: frame {} is not canonical JSON (API-11)",
            crate::http::quote(f.as_bytes())
        );
        let o = v
            .as_object()
            .ok_or_else(|| Stop::Fail(format!("{what}: a frame is not an object (API-11)")))?;
        let c = o.get("cursor").and_then(Value::as_str).ok_or_else(|| {
            Stop::Fail(format!("{what}: a frame without a string cursor (API-11)"))
        })?;
        let env = o
            .get("envelope")
            .ok_or_else(|| Stop::Fail(format!("{what}: a frame without envelope (API-11)")))?;
        ensure!(
            canon::canonicalize(env) == m.wire,
            "{what}: the frame's envelope is not the one sent (API-11, ENV-15)"
        );
        cursors.push(c.to_owned());
    }
    Ok(cursors)
}

fn ws_stream(e: &Env<'_>) -> R {
    let t = e.t;
    let f = fed(t, "ws", 2)?;
    let mut w = ws_open(t, &f.b, "0")?;
    check_frames(
        &w.frames(2, 5000)?,
        &[&f.sent[0], &f.sent[1]],
        "GET /v1/inbox/ws",
    )?;
    w.send_ping(b"hello")?;
    let m = msg(t, &f.a, &[&f.b.handle]);
    t.send_ok(&m)?;
    check_frames(
        &w.frames(1, 5000)?,
        &[&m],
        "GET /v1/inbox/ws (live, after a client ping)",
    )?;
    w.close();
    t.wait_delivery(&f.a, &m.id, &f.b.handle, "delivered", 3000)?;
    Ok(())
}

fn ws_data_frame(e: &Env<'_>) -> R {
    let t = e.t;
    let f: Arc<Agent> = e.fixture("ws-data", |t| t.register("wsd"))?;
    let mut w = ws_open(t, &f, "0")?;
    w.send_text("{\"hello\":\"relay\"}")?;
    match w.ended(5000)? {
        Some(1008) => Ok(()),
        other => fail!(
            "GET /v1/inbox/ws: after a client text frame the relay ended with {other:?}, expected close status 1008 (API-11)"
        ),
    }
}

fn ws_large_frame(e: &Env<'_>) -> R {
    let t = e.t;
    let f: Arc<Agent> = e.fixture("ws-large", |t| t.register("wsl"))?;
    let mut w = ws_open(t, &f, "0")?;
    // A masked binary frame without FIN announcing 16 MiB, then 64 KiB of it: a relay that
    // reads frames of that size would wait for the rest; one that keeps to control-frame sizes
    // has ended the connection.
    let mut frame = vec![0x02, 0x80 | 127];
    frame.extend_from_slice(&(16u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    frame.extend(std::iter::repeat_n(0x5a, 64 << 10));
    w.send_raw(&frame)?;
    w.ended(5000).map(|_| ()).map_err(|_| {
        Stop::Fail(
            "GET /v1/inbox/ws: a client frame announced as 16 MiB did not end the connection within 5 s; the relay buffers client frames beyond a control frame's 125 bytes (API-11)".into(),
        )
    })
}

fn ws_resume(e: &Env<'_>) -> R {
    let t = e.t;
    let f = fed(t, "wsr", 3)?;
    let inbox = t.inbox(&f.b)?;
    let mut w = ws_open(t, &f.b, &inbox[0].0)?;
    check_frames(
        &w.frames(2, 5000)?,
        &[&f.sent[1], &f.sent[2]],
        "GET /v1/inbox/ws?after=<first cursor>",
    )?;
    w.close();
    Ok(())
}

fn ws_errors(e: &Env<'_>) -> R {
    let t = e.t;
    let f: Arc<Agent> = e.fixture("ws-err", |t| t.register("wse"))?;
    let path = "/v1/inbox/ws?after=zz-not-a-cursor";
    let h = t.auth_header(&f, "GET", path, b"");
    match open_ws(&t.http, path, &[("authorization", h)])? {
        Ok(w) => {
            w.close();
            fail!("GET {path}: the upgrade succeeded with a cursor the relay never issued (API-11)")
        }
        Err(r) => {
            r.expect_error(ErrorCode::InvalidCursor)?;
        }
    }
    match open_ws(&t.http, "/v1/inbox/ws?after=0", &[])? {
        Ok(w) => {
            w.close();
            fail!("GET /v1/inbox/ws without Authorization was upgraded (API-11 is authenticated)")
        }
        Err(r) => {
            r.expect_error(ErrorCode::Unauthorized)?;
        }
    }
    Ok(())
}

/// How long the relay may take to end a stream after its key was rotated (API-16 asks for
/// "before any further page"; an idle stream is ended by the reference relay within a second).
const KEY_END_WAIT_MS: u64 = 10_000;

fn expect_unauthorized_json(what: &str, data: &str) -> R {
    let v = parse_line(what, data)?;
    let code = v
        .as_object()
        .and_then(|o| o.get("error"))
        .and_then(Value::as_object)
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str);
    ensure!(
        code == Some("unauthorized"),
        "{what}: expected an error body with code unauthorized, got {} (API-16)",
        crate::http::quote(data.as_bytes())
    );
    Ok(())
}

fn stream_key_rotated(e: &Env<'_>) -> R {
    let t = e.t;
    let f = fed(t, "skr", 1)?;
    let mut s = sse_open(t, &f.b, None, None)?;
    s.envelopes(1, 5000)?;
    let ws = if t.http.is_tls() {
        None
    } else {
        let mut w = ws_open(t, &f.b, "0")?;
        w.frames(1, 5000)?;
        Some(w)
    };
    let k2 = crate::target::random_key();
    let ts = t.now().max(f.b.reg_ts + 1);
    super::envelopes::rotate(t, &f.b, 1, &f.b.head, &k2, ts)?;
    // A new item after the rotation must not be sent on the old streams.
    let m = msg(t, &f.a, &[&f.b.handle]);
    t.send_ok(&m)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(KEY_END_WAIT_MS);
    let Some(ev) = s.next_event(deadline)? else {
        fail!("GET /v1/inbox/stream: still open {KEY_END_WAIT_MS} ms after its key was rotated (API-16)");
    };
    ensure!(
        ev.event.as_deref() == Some("error"),
        "GET /v1/inbox/stream: after the key was rotated, an event of type {:?} (API-16: the stream ends with an `error` event)",
        ev.event
    );
    expect_unauthorized_json("GET /v1/inbox/stream error event", &ev.data.join("\n"))?;
    if let Some(mut w) = ws {
        let frames = w.frames_until_close(KEY_END_WAIT_MS)?;
        let Some(last) = frames.last() else {
            fail!("GET /v1/inbox/ws: closed without an error frame after its key was rotated (API-16)");
        };
        ensure!(
            frames.len() == 1,
            "GET /v1/inbox/ws: {} frames after the key was rotated; only the error frame may follow (API-16)",
            frames.len()
        );
        expect_unauthorized_json("GET /v1/inbox/ws error frame", last)?;
    }
    Ok(())
}
