//! Pushed presence (PRES-5, PRES-1): an inbox stream opened with `presence=1` carries the full
//! presence of the agents that granted its agent a contact level whenever it changes: on SSE an
//! event `presence` without `id` (inbox items keep theirs), on WebSocket a text frame
//! `{"presence": ...}`; changes are coalesced (`presence.push_interval_ms`); streams without the
//! parameter, and streams of agents that were not granted, carry none; another value of the
//! parameter is `invalid_field`.

use super::presence_kit::*;
use super::profile_kit::{at_step, Prof};
use super::*;
use crate::case::{case, Env};
use crate::stream::{open_sse, open_ws, parse_line, Sse, SseEvent, Ws};
use std::time::{Duration, Instant};

/// How long a pushed presence may take to arrive: the coalescing interval and some seconds.
fn push_wait_ms(t: &Target) -> u64 {
    u64::try_from(pres(t).push_interval_ms.clamp(0, 60_000)).unwrap_or(1000) + 4000
}

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("pres.push", &["PRES-5", "PRES-1", "PRES-4", "API-10", "HTTP-3"], "an SSE stream with presence=1 gets a `presence` event without id, the full presence, when an agent that granted its agent connects (an inbox stream) and when its status changes, coalesced to one per presence.push_interval_ms carrying the latest; a stream without the parameter and a stranger's stream get none; inbox items still come with their id", push_sse),
        case("pres.push-ws", &["PRES-5", "API-11", "API-20"], "a WebSocket with presence=1 gets a text frame {\"presence\": <full presence>} when an agent that granted its agent sends a heartbeat", push_ws),
        case("pres.stream-param", &["PRES-5", "API-10", "API-11"], "presence=0 opens an ordinary stream; presence=2, presence=yes and an empty value are invalid_field (field presence) before the stream, on SSE and on the WebSocket upgrade", stream_param)
            .codes(&[E::InvalidField]),
    ]
}

/// Opens an SSE inbox stream of `a` at `path` (signed with its query, AUTH-2).
fn sse(t: &Target, a: &Agent, path: &str) -> R<Sse> {
    let headers = vec![
        ("authorization", t.auth_header(a, "GET", path, b"")),
        ("accept", "text/event-stream".to_owned()),
    ];
    match open_sse(&t.http, path, &headers)? {
        Ok(s) => Ok(s),
        Err(r) => fail!(
            "GET {path}: the stream did not open: {} (API-10)",
            r.brief()
        ),
    }
}

/// The next event of `s` within `ms`, or None.
fn next(s: &mut Sse, ms: u64) -> R<Option<SseEvent>> {
    s.next_event(Instant::now() + Duration::from_millis(ms))
}

/// Fails unless `ev` is a presence event (no id, one data line) of `subject` as `want`; returns
/// its data.
fn presence_event(ev: &SseEvent, subject: &Handle, want: Seen<'_>) -> R<Value> {
    let what = "GET /v1/inbox/stream?presence=1";
    ensure!(
        ev.event.as_deref() == Some("presence"),
        "{what}: an event of type {:?}, expected `presence` (PRES-5)",
        ev.event
    );
    ensure!(
        ev.id.is_none(),
        "{what}: a presence event with id {:?}; presence events have no id, so Last-Event-ID keeps naming the last inbox item (PRES-5)",
        ev.id
    );
    ensure!(
        ev.data.len() == 1,
        "{what}: a presence event with {} data lines (PRES-5, API-10)",
        ev.data.len()
    );
    let v = parse_line(what, &ev.data[0])?;
    check_presence(&format!("{what}: the presence event"), &v, subject, want)?;
    if let Seen::Full(_, Some(p)) = want {
        ensure!(
            ev.data[0].as_bytes().windows(p.wire.len()).any(|w| w == p.wire),
            "{what}: the signed status in a presence event is not in canonical form (HTTP-3); expected the bytes {}",
            crate::http::quote(&p.wire)
        );
    }
    Ok(v)
}

/// The next event of `s` within `ms`, which must be `subject`'s presence as `want`.
fn expect_push(s: &mut Sse, ms: u64, subject: &Handle, want: Seen<'_>, step: &str) -> R<Value> {
    let Some(ev) = next(s, ms)? else {
        fail!("{step}: no presence event within {ms} ms (PRES-5)");
    };
    at_step(step, presence_event(&ev, subject, want))
}

/// Fails if `s` delivers any event within `ms`.
fn expect_none(s: &mut Sse, ms: u64, what: &str) -> R {
    if let Some(ev) = next(s, ms)? {
        fail!(
            "{what}: received an event {:?} with data {} (PRES-5)",
            ev.event,
            crate::http::quote(ev.data.join("\n").as_bytes())
        );
    }
    Ok(())
}

fn push_sse(e: &Env<'_>) -> R {
    let t = e.t;
    let interval = pres(t).push_interval_ms;
    let wait = push_wait_ms(t);
    let subject = t.register("ppsub")?;
    let w = t.register("ppw")?;
    let plain = t.register("ppplain")?;
    let stranger = t.register("ppstr")?;
    t.grant(&subject, &w.handle, "read")?;
    t.grant(&subject, &plain.handle, "read")?;
    t.grant(&w, &subject.handle, "message")?;
    let mut watch = sse(t, &w, "/v1/inbox/stream?presence=1")?;
    let mut no_param = sse(t, &plain, "/v1/inbox/stream")?;
    let mut zero = sse(t, &plain, "/v1/inbox/stream?presence=0")?;
    let mut other = sse(t, &stranger, "/v1/inbox/stream?presence=1")?;
    // The subject connects: an inbox stream of its own (PRES-1).
    let own = sse(t, &subject, "/v1/inbox/stream")?;
    expect_push(
        &mut watch,
        wait,
        &subject.handle,
        Seen::Full("available", None),
        "the subject opened a stream",
    )?;
    let mut last_at = Instant::now();
    // Three changes in quick succession: coalesced, the latest pushed last.
    let now = t.now();
    set_obj(t, &subject, &at_ts(&status(t, &subject, "busy"), now))?;
    set_obj(t, &subject, &at_ts(&status(t, &subject, "away"), now + 1))?;
    let latest: Prof = set_obj(
        t,
        &subject,
        &with(
            at_ts(&status(t, &subject, "busy"), now + 2),
            "note",
            s("Deep in a review."),
        ),
    )?;
    let what = "GET /v1/inbox/stream?presence=1";
    let mut events = 0;
    let mut last: Option<Vec<u8>> = None;
    let deadline = Instant::now() + Duration::from_millis(wait);
    while let Some(ev) = watch.next_event(deadline)? {
        let gap = last_at.elapsed().as_millis() as i64;
        last_at = Instant::now();
        events += 1;
        ensure!(
            gap >= interval / 2,
            "{what}: two presence events of {} {gap} ms apart; presence.push_interval_ms is {interval} (PRES-5: at most one event per agent per interval)",
            subject.handle
        );
        ensure!(
            ev.event.as_deref() == Some("presence") && ev.id.is_none(),
            "{what}: an event {:?} with id {:?} after status changes, expected `presence` without id (PRES-5)",
            ev.event,
            ev.id
        );
        let v = parse_line(what, &ev.data.concat())?;
        let word = at(&v, &["status"]).and_then(Value::as_str).unwrap_or("");
        ensure!(
            word == "busy" || word == "away",
            "{what}: a presence event says {word:?} after busy and away statuses (PRES-5)"
        );
        let signed = at(&v, &["signed"]).map(canon::canonicalize);
        if signed.as_deref() == Some(latest.wire.as_slice()) {
            presence_event(&ev, &subject.handle, Seen::Full("busy", Some(&latest)))?;
            last = signed;
            break;
        }
        last = Some(signed.unwrap_or_default());
    }
    let Some(last) = last else {
        fail!("{what}: no presence event within {wait} ms of three status changes (PRES-5)");
    };
    ensure!(
        events <= 3,
        "{what}: {events} presence events for three status changes (PRES-5)"
    );
    ensure!(
        last == latest.wire,
        "{what}: the last presence event carries the signed status {}, not the latest one {} (PRES-5: the presence at the time it is sent)",
        crate::http::quote(&last),
        crate::http::quote(&latest.wire)
    );
    // Nothing for a stream without the parameter, with presence=0, or of a stranger.
    expect_none(
        &mut no_param,
        300,
        "GET /v1/inbox/stream (no presence parameter)",
    )?;
    expect_none(&mut zero, 300, "GET /v1/inbox/stream?presence=0")?;
    expect_none(
        &mut other,
        300,
        "GET /v1/inbox/stream?presence=1 of an agent the subject did not grant",
    )?;
    // An inbox item still comes with its id (the cursor).
    let m = msg(t, &subject, &[&w.handle]);
    t.send_ok(&m)?;
    let deadline = Instant::now() + Duration::from_millis(5000);
    loop {
        let Some(ev) = watch.next_event(deadline)? else {
            fail!("GET /v1/inbox/stream?presence=1: the message sent did not arrive within 5 s (API-10)");
        };
        if ev.event.as_deref() == Some("presence") {
            presence_event(&ev, &subject.handle, Seen::Full("busy", Some(&latest)))?;
            continue;
        }
        ensure!(
            ev.event.as_deref() == Some("envelope") && ev.id.as_deref().is_some_and(|i| !i.is_empty()),
            "GET /v1/inbox/stream?presence=1: an inbox item as event {:?} with id {:?}, expected `envelope` with its cursor (API-10, PRES-5)",
            ev.event,
            ev.id
        );
        ensure!(
            ev.data.concat().as_bytes() == m.wire.as_slice(),
            "GET /v1/inbox/stream?presence=1: the envelope event is not the message sent (API-10)"
        );
        break;
    }
    drop(own);
    Ok(())
}

/// Opens a WebSocket inbox stream of `a` at `path`.
fn ws(t: &Target, a: &Agent, path: &str) -> R<Ws> {
    let h = t.auth_header(a, "GET", path, b"");
    match open_ws(&t.http, path, &[("authorization", h)])? {
        Ok(w) => Ok(w),
        Err(r) => fail!(
            "GET {path}: the upgrade was refused: {} (API-11)",
            r.brief()
        ),
    }
}

fn push_ws(e: &Env<'_>) -> R {
    let t = e.t;
    let subject = t.register("pwsub")?;
    let w = t.register("pww")?;
    t.grant(&subject, &w.handle, "read")?;
    let path = "/v1/inbox/ws?presence=1";
    let mut sock = ws(t, &w, path)?;
    heartbeat(t, &subject)?;
    let frames = sock.frames(1, push_wait_ms(t))?;
    let v = parse_line(path, &frames[0])?;
    ensure!(
        canon::canonicalize(&v) == frames[0].as_bytes(),
        "GET {path}: frame {} is not canonical JSON (API-11)",
        crate::http::quote(frames[0].as_bytes())
    );
    let o = v.as_object().ok_or_else(|| {
        Stop::Fail(format!(
            "GET {path}: a frame that is not an object (PRES-5)"
        ))
    })?;
    ensure!(
        o.len() == 1 && o.get("presence").is_some(),
        "GET {path}: frame {}, expected {{\"presence\": <presence>}} (PRES-5)",
        crate::http::quote(frames[0].as_bytes())
    );
    check_presence(
        &format!("GET {path}: the presence frame"),
        o.get("presence").unwrap_or(&Value::Null),
        &subject.handle,
        Seen::Full("available", None),
    )?;
    sock.close();
    Ok(())
}

fn stream_param(e: &Env<'_>) -> R {
    let t = e.t;
    let a = t.register("ppar")?;
    for v in ["2", "yes", ""] {
        let path = format!("/v1/inbox/stream?presence={v}");
        let h = t.auth_header(&a, "GET", &path, b"");
        match open_sse(&t.http, &path, &[("authorization", h)])? {
            Ok(_) => {
                fail!("GET {path}: the stream opened (PRES-5: another value is invalid_field)")
            }
            Err(r) => at_step(
                &format!("GET {path}"),
                r.expect_error_field(ErrorCode::InvalidField, "presence")
                    .map(|_| ()),
            )?,
        }
        let path = format!("/v1/inbox/ws?presence={v}");
        let h = t.auth_header(&a, "GET", &path, b"");
        match open_ws(&t.http, &path, &[("authorization", h)])? {
            Ok(s) => {
                s.close();
                fail!("GET {path}: upgraded (PRES-5: another value is invalid_field)")
            }
            Err(r) => at_step(
                &format!("GET {path} (WebSocket upgrade)"),
                r.expect_error_field(ErrorCode::InvalidField, "presence")
                    .map(|_| ()),
            )?,
        }
    }
    let mut s = sse(t, &a, "/v1/inbox/stream?presence=0")?;
    expect_none(
        &mut s,
        200,
        "GET /v1/inbox/stream?presence=0 of an agent with an empty inbox",
    )?;
    ws(t, &a, "/v1/inbox/ws?presence=0")?.close();
    Ok(())
}
