//! Reading conversations (CONVO-10, API-23 to API-26): entry pages with `after`, `limit` and
//! `next`; the cursor and parameter errors; the 404 a non-participant gets, the same as for an
//! unknown id; what a participant that declined or left still reads; the list of an agent's
//! conversations with its filters and pages; the entry stream over Server-Sent Events and
//! WebSocket, resumed by `Last-Event-ID` or `after` without gaps or repeats, and its end.

use super::conv_kit::*;
use super::*;
use crate::case::{case, Env};
use crate::stream::{open_sse, open_ws, parse_line, Sse};

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("conv.entries-pages", &["API-25", "CONVO-10", "CONVO-4"], "entries come oldest first in pages of at most limit, next is the seq of the page's last entry (or after, on an empty page), and following next reads each entry once; after beyond the last readable entry is invalid_cursor, after or limit outside their forms invalid_field with the parameter's name", entries_pages).codes(&[E::InvalidCursor, E::InvalidField]),
        case("conv.privacy", &["CONVO-10", "API-24", "API-25", "API-26"], "a registered non-participant gets for a conversation's summary, entries, stream and WebSocket exactly the 404 not_found of an id nobody called; without Authorization the answer is unauthorized", privacy).codes(&[E::NotFound, E::Unauthorized]),
        case("conv.read-until-end", &["CONVO-10", "API-25"], "a participant that declined reads the entries up to its decline and one that left up to its leave (later ones are invalid_cursor); the others read everything", read_until_end).codes(&[E::InvalidCursor]),
        case("conv.list", &["API-23", "API-24"], "GET /v1/conversations lists the agent's conversations newest first, each as GET /v1/conversations/{id} shows it, in pages of limit following next (before); state=open leaves out closed ones, mine=ringing keeps those the agent has not answered; other values of state, mine, limit and before are invalid_field with the parameter's name", list).codes(&[E::InvalidField]),
        case("conv.sse", &["API-26", "CONVO-10", "CONVO-4"], "GET /v1/conversations/{id}/stream sends each entry as `event: entry`, `id: <seq>` and the canonical entry on one data line, pushes new entries, and resumes after Last-Event-ID, else after, without gaps or repeats; a cursor past the end is invalid_cursor before the stream", sse).codes(&[E::InvalidCursor]),
        case("conv.ws", &["API-26", "CONVO-10"], "GET /v1/conversations/{id}/ws sends each entry after ?after= as a canonical text frame and pushes new ones", ws),
        case("conv.stream-end", &["API-26", "CONVO-10"], "the stream of a participant that declined ends after its decline; the stream and the WebSocket of a closed conversation end after its last entry", stream_end),
    ]
}

fn entries_pages(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let x = trio(t, "cvg")?;
    let (id, _) = started(t, &x, "async")?;
    for k in 0..3 {
        let (from, to) = if k % 2 == 0 {
            (&x.a, &x.b)
        } else {
            (&x.b, &x.a)
        };
        send_at(t, &post(t, from, &id, &[&to.handle]), &id, 3 + k)?;
    }
    let all = entries(t, &x.a, &id)?;
    ensure!(all.len() == 5, "{} entries, expected 5", all.len());
    // Without parameters: from the start, the default limit.
    let (items, next) = page_items(&page(t, &x.a, &id, "")?)?;
    ensure!(items.len() == 5 && next == 5, "GET entries without parameters: {} entries, next {next}; expected all 5 and next 5 (API-25)", items.len());
    // Pages of two.
    let mut seen = Vec::new();
    let mut after = 0;
    let mut prev: Option<(String, i64)> = None;
    for want in [vec![1, 2], vec![3, 4], vec![5], vec![]] {
        let r = page(t, &x.a, &id, &format!("after={after}&limit=2"))?;
        let (items, next) = page_items(&r)?;
        let seqs: Vec<i64> = items.iter().map(entry_seq).collect();
        ensure!(
            seqs == want,
            "{}: seqs {seqs:?}, expected {want:?} (API-25)",
            r.what
        );
        let want_next = *want.last().unwrap_or(&after);
        ensure!(
            next == want_next,
            "{}: next {next}, expected {want_next} (API-25)",
            r.what
        );
        check_chain(&items, &id, prev.as_ref().map(|(h, s)| (h.as_str(), *s)))?;
        if let Some(l) = items.last() {
            prev = Some((
                at(l, &["hash"])
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                entry_seq(l),
            ));
        }
        seen.extend(items);
        after = next;
    }
    ensure!(
        seen.iter()
            .map(canon::canonicalize)
            .eq(all.iter().map(canon::canonicalize)),
        "the pages of two differ from the whole list of entries (API-25)"
    );
    page(t, &x.a, &id, "after=6")?.expect_error(ErrorCode::InvalidCursor)?;
    for (q, field) in [
        ("after=abc", "after"),
        ("after=1.5", "after"),
        ("limit=0", "limit"),
        ("limit=x", "limit"),
    ] {
        page(t, &x.a, &id, q)?.expect_error_field(ErrorCode::InvalidField, field)?;
    }
    let over = t.published.inbox_page_max + 1;
    page(t, &x.a, &id, &format!("limit={over}"))?
        .expect_error_field(ErrorCode::InvalidField, "limit")?;
    let (items, _) = page_items(&page(t, &x.a, &id, &format!("limit={}", over - 1))?)?;
    ensure!(
        items.len() == 5,
        "limit=limits.inbox_page_max gave {} entries, expected 5",
        items.len()
    );
    Ok(())
}

/// `r` with `id` replaced, so that answers that echo the id they were asked for compare equal.
fn masked(r: &Resp, id: &str) -> Vec<u8> {
    String::from_utf8_lossy(&r.raw)
        .replace(id, "<id>")
        .into_bytes()
}

fn same_404(r: &Resp, id: &str, like: &Resp, unknown: &str) -> R {
    r.expect_error(ErrorCode::NotFound)?;
    ensure!(
        masked(r, id) == masked(like, unknown) && r.header("content-type") == like.header("content-type"),
        "{}: answered {}, but for a conversation id nobody called {} answered {}: CONVO-10 requires the same answer",
        r.what,
        r.brief(),
        like.what,
        like.brief()
    );
    Ok(())
}

fn privacy(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let x = trio(t, "cvy")?;
    let s = t.register("cvys")?;
    let (id, _) = started(t, &x, "async")?;
    let unknown = unknown_conv(t);
    for tail in [
        "",
        "/entries",
        "/entries?after=0",
        "/entries?after=1&limit=1",
    ] {
        let r = get(t, &s, &format!("/v1/conversations/{id}{tail}"))?;
        let like = get(t, &s, &format!("/v1/conversations/{unknown}{tail}"))?;
        like.expect_error(ErrorCode::NotFound)?;
        same_404(&r, &id, &like, &unknown)?;
    }
    for (kind, tail) in [("stream", "/stream"), ("ws", "/ws")] {
        let mut answers = Vec::new();
        for conv in [&id, &unknown] {
            let path = format!("/v1/conversations/{conv}{tail}");
            let h = t.auth_header(&s, "GET", &path, b"");
            let r = if kind == "stream" {
                open_sse(&t.http, &path, &[("authorization", h)])?.err()
            } else {
                open_ws(&t.http, &path, &[("authorization", h)])?.err()
            };
            let Some(r) = r else {
                fail!("GET {path}: a non-participant's {kind} opened (CONVO-10: 404 not_found)");
            };
            answers.push(r);
        }
        same_404(&answers[0], &id, &answers[1], &unknown)?;
    }
    // The summary a participant gets stays its own; the list of a non-participant is empty.
    let r = get(t, &s, "/v1/conversations")?;
    let list = r
        .member("conversations")?
        .as_array()
        .map(<[Value]>::to_vec)
        .unwrap_or_default();
    ensure!(
        list.is_empty(),
        "{}: a non-participant's list holds {} conversations (API-23)",
        r.what,
        list.len()
    );
    let r = t.http.get(&format!("/v1/conversations/{id}"))?;
    r.expect_error(ErrorCode::Unauthorized)?;
    Ok(())
}

fn read_until_end(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let x = trio(t, "cvu")?;
    let d = t.register("cvud")?;
    t.grant(&d, &x.a.handle, "message")?;
    let c = call(t, &x.a, &[&x.b.handle, &x.c.handle, &d.handle], "async");
    send_at(t, &c, &c.id, 1)?;
    let id = c.id.as_str();
    send_at(t, &act(t, &x.b, id, &x.a.handle, "accept"), id, 2)?;
    send_at(t, &act(t, &x.c, id, &x.a.handle, "decline"), id, 3)?;
    send_at(t, &post(t, &x.a, id, &[&x.b.handle]), id, 4)?;
    send_at(t, &act(t, &x.b, id, &x.a.handle, "leave"), id, 5)?;
    send_at(t, &act(t, &d, id, &x.a.handle, "accept"), id, 6)?;
    send_at(t, &post(t, &x.a, id, &[&d.handle]), id, 7)?;
    for (who, end) in [(&x.c, 3), (&x.b, 5), (&d, 7), (&x.a, 7)] {
        let es = entries(t, who, id)?;
        ensure!(es.len() == end, "{} reads {} entries, expected {end}: a participant that declined or left reads up to its decline or leave, the others all (CONVO-10)", who.handle, es.len());
        if end < 7 {
            page(t, who, id, &format!("after={}", end + 1))?
                .expect_error(ErrorCode::InvalidCursor)?;
        }
    }
    Ok(())
}

/// The ids of a list answer.
fn ids(r: &Resp) -> R<(Vec<String>, Option<String>)> {
    r.expect_json(200)?;
    let list = r
        .member("conversations")?
        .as_array()
        .map(<[Value]>::to_vec)
        .unwrap_or_default();
    let ids = list.iter().map(|c| sum_str(c, "id").to_owned()).collect();
    let next = match r.member("next")? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => fail!(
            "{}: next is {}, not an id or null (API-23)",
            r.what,
            other.kind()
        ),
    };
    Ok((ids, next))
}

fn list(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let x = trio(t, "cvn")?;
    let c1 = call(t, &x.a, &[&x.b.handle], "async");
    send_at(t, &c1, &c1.id, 1)?;
    let c2 = call(t, &x.a, &[&x.c.handle], "async");
    send_at(t, &c2, &c2.id, 1)?;
    let c3 = call(t, &x.a, &[&x.b.handle], "async");
    send_at(t, &c3, &c3.id, 1)?;
    send_at(t, &act(t, &x.a, &c1.id, &x.a.handle, "close"), &c1.id, 2)?;
    let newest_first = vec![c3.id.clone(), c2.id.clone(), c1.id.clone()];
    let r = get(t, &x.a, "/v1/conversations")?;
    let (all, _) = ids(&r)?;
    ensure!(
        all == newest_first,
        "{}: ids {all:?}, expected newest first {newest_first:?} (API-23)",
        r.what
    );
    // Each summary is the conversation's own.
    for c in r
        .member("conversations")?
        .as_array()
        .map(<[Value]>::to_vec)
        .unwrap_or_default()
    {
        let one = summary(t, &x.a, sum_str(&c, "id"))?;
        ensure!(
            canon::canonicalize(&one) == canon::canonicalize(&c),
            "the list's summary of {} differs from GET /v1/conversations/{{id}} (API-23, API-24)",
            sum_str(&c, "id")
        );
    }
    // Pages of one, following next.
    let mut got = Vec::new();
    let mut path = "/v1/conversations?limit=1".to_owned();
    for _ in 0..5 {
        let (page, next) = ids(&get(t, &x.a, &path)?)?;
        ensure!(
            page.len() <= 1,
            "GET {path}: {} summaries for limit=1 (API-23)",
            page.len()
        );
        got.extend(page.iter().cloned());
        match next {
            Some(n) if !page.is_empty() => {
                ensure!(
                    Some(&n) == page.last(),
                    "GET {path}: next {n} is not the id of the page's last summary (API-23)"
                );
                path = format!("/v1/conversations?limit=1&before={n}");
            }
            _ => break,
        }
    }
    ensure!(
        got == newest_first,
        "pages of limit=1 gave {got:?}, expected {newest_first:?} (API-23)"
    );
    let (open, _) = ids(&get(t, &x.a, "/v1/conversations?state=open")?)?;
    ensure!(
        open == newest_first[..2],
        "state=open gave {open:?}, expected the two open ones {:?} (API-23)",
        &newest_first[..2]
    );
    let (every, _) = ids(&get(t, &x.a, "/v1/conversations?state=all")?)?;
    ensure!(every == newest_first, "state=all gave {every:?} (API-23)");
    let (ringing, _) = ids(&get(t, &x.b, "/v1/conversations?state=open&mine=ringing")?)?;
    ensure!(
        ringing == [c3.id.clone()],
        "b's state=open&mine=ringing gave {ringing:?}, expected [{}] (API-23)",
        c3.id
    );
    send_at(t, &act(t, &x.b, &c3.id, &x.a.handle, "accept"), &c3.id, 2)?;
    let (ringing, _) = ids(&get(t, &x.b, "/v1/conversations?state=open&mine=ringing")?)?;
    ensure!(
        ringing.is_empty(),
        "after b accepted, its mine=ringing list is {ringing:?} (API-23)"
    );
    let (b_all, _) = ids(&get(t, &x.b, "/v1/conversations")?)?;
    ensure!(
        b_all == [c3.id.clone(), c1.id.clone()],
        "b's list is {b_all:?}, expected only the conversations it takes part in (API-23)"
    );
    for (q, field) in [
        ("state=closed", "state"),
        ("mine=joined", "mine"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("before=xyz", "before"),
    ] {
        get(t, &x.a, &format!("/v1/conversations?{q}"))?
            .expect_error_field(ErrorCode::InvalidField, field)?;
    }
    Ok(())
}

fn stream_path(id: &str, after: Option<i64>) -> String {
    match after {
        Some(a) => format!("/v1/conversations/{id}/stream?after={a}"),
        None => format!("/v1/conversations/{id}/stream"),
    }
}

fn sse_open(t: &Target, a: &Agent, id: &str, after: Option<i64>, last: Option<i64>) -> R<Sse> {
    let path = stream_path(id, after);
    let mut headers = vec![("authorization", t.auth_header(a, "GET", &path, b""))];
    if let Some(l) = last {
        headers.push(("last-event-id", l.to_string()));
    }
    match open_sse(&t.http, &path, &headers)? {
        Ok(s) => {
            ensure!(
                s.content_type.starts_with("text/event-stream"),
                "GET {path}: Content-Type {:?} (API-26, API-10)",
                s.content_type
            );
            Ok(s)
        }
        Err(r) => fail!(
            "GET {path}: the stream did not open: {} (API-26)",
            r.brief()
        ),
    }
}

/// The next `n` entry events, checked (API-26): `event: entry`, `id` the entry's seq, one data
/// line in canonical form. With `until_end`, reads until the relay ends the stream instead.
fn read_entries(s: &mut Sse, n: usize, until_end: bool) -> R<Vec<Value>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(5000);
    let mut out = Vec::new();
    while until_end || out.len() < n {
        let ev = match s.next_event(deadline) {
            Ok(Some(ev)) => ev,
            Ok(None) if until_end => fail!(
                "the entry stream did not end within 5 s after {} entries (API-26)",
                out.len()
            ),
            Ok(None) => fail!("{} of {n} entry events within 5 s (API-26)", out.len()),
            Err(Stop::Fail(m)) if until_end && m.contains("closed the event stream") => {
                return Ok(out)
            }
            Err(err) => return Err(err),
        };
        ensure!(
            ev.event.as_deref() == Some("entry"),
            "an event of type {:?} on an entry stream, expected `entry` (API-26)",
            ev.event
        );
        ensure!(
            ev.data.len() == 1,
            "an entry event with {} data lines (API-26: canonical JSON on one line)",
            ev.data.len()
        );
        let line = &ev.data[0];
        let v = parse_line("an entry event", line)?;
        ensure!(
            canon::canonicalize(&v) == line.as_bytes(),
            "an entry event's data is not canonical (API-26)"
        );
        let seq = entry_seq(&v);
        ensure!(
            ev.id.as_deref() == Some(seq.to_string().as_str()),
            "an entry event's id is {:?}, not its seq {seq} (API-26)",
            ev.id
        );
        out.push(v);
    }
    Ok(out)
}

fn seqs(es: &[Value]) -> Vec<i64> {
    es.iter().map(entry_seq).collect()
}

fn sse(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let x = trio(t, "cvs")?;
    let (id, _) = started(t, &x, "async")?;
    let mut s = sse_open(t, &x.b, &id, None, None)?;
    let first = read_entries(&mut s, 2, false)?;
    ensure!(
        seqs(&first) == [1, 2],
        "the stream from the start sent seqs {:?}, expected [1, 2] (API-26)",
        seqs(&first)
    );
    check_chain(&first, &id, None)?;
    let p = post(t, &x.a, &id, &[&x.b.handle]);
    send_at(t, &p, &id, 3)?;
    let pushed = read_entries(&mut s, 1, false)?;
    expect_env_at(&pushed, 3, &p)?;
    let h2 = at(&first[1], &["hash"])
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    check_chain(&pushed, &id, Some((&h2, 2)))?;
    s.expect_quiet(300)?;
    let all = entries(t, &x.b, &id)?;
    for (after, last, want) in [
        (Some(1), None, vec![2, 3]),
        (None, Some(2), vec![3]),
        (Some(0), Some(1), vec![2, 3]),
    ] {
        let mut s = sse_open(t, &x.b, &id, after, last)?;
        let got = read_entries(&mut s, want.len(), false)?;
        ensure!(seqs(&got) == want, "resuming with after {after:?} and Last-Event-ID {last:?} sent seqs {:?}, expected {want:?} (API-26: Last-Event-ID, else after)", seqs(&got));
        for g in &got {
            ensure!(
                all.iter()
                    .any(|a| canon::canonicalize(a) == canon::canonicalize(g)),
                "the stream sent an entry that the entries page does not hold: {}",
                crate::http::quote(&canon::canonicalize(g))
            );
        }
        s.expect_quiet(200)?;
    }
    let path = stream_path(&id, Some(4));
    match open_sse(&t.http, &path, &[("authorization", t.auth_header(&x.b, "GET", &path, b""))])? {
        Ok(_) => fail!("GET {path}: the stream opened for an after past the last entry (API-26: invalid_cursor before the stream)"),
        Err(r) => {
            r.expect_error(ErrorCode::InvalidCursor)?;
        }
    }
    Ok(())
}

fn ws_path(id: &str, after: i64) -> String {
    format!("/v1/conversations/{id}/ws?after={after}")
}

fn ws_open(t: &Target, a: &Agent, id: &str, after: i64) -> R<crate::stream::Ws> {
    let path = ws_path(id, after);
    let h = t.auth_header(a, "GET", &path, b"");
    match open_ws(&t.http, &path, &[("authorization", h)])? {
        Ok(w) => Ok(w),
        Err(r) => fail!(
            "GET {path}: the upgrade was refused: {} (API-26)",
            r.brief()
        ),
    }
}

fn frames_as_entries(frames: &[String]) -> R<Vec<Value>> {
    frames
        .iter()
        .map(|f| {
            let v = parse_line("an entry frame", f)?;
            ensure!(
                canon::canonicalize(&v) == f.as_bytes(),
                "an entry frame is not canonical JSON (API-26)"
            );
            Ok(v)
        })
        .collect()
}

fn ws(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let x = trio(t, "cvw")?;
    let (id, _) = started(t, &x, "async")?;
    let all = entries(t, &x.b, &id)?;
    let mut w = ws_open(t, &x.b, &id, 1)?;
    let got = frames_as_entries(&w.frames(1, 5000)?)?;
    ensure!(
        seqs(&got) == [2],
        "the WebSocket after=1 sent seqs {:?}, expected [2] (API-26)",
        seqs(&got)
    );
    ensure!(
        canon::canonicalize(&got[0]) == canon::canonicalize(&all[1]),
        "the WebSocket's entry 2 differs from the page's (API-26)"
    );
    let p = post(t, &x.a, &id, &[&x.b.handle]);
    send_at(t, &p, &id, 3)?;
    let pushed = frames_as_entries(&w.frames(1, 5000)?)?;
    expect_env_at(&pushed, 3, &p)?;
    let h2 = at(&all[1], &["hash"])
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    check_chain(&pushed, &id, Some((&h2, 2)))?;
    w.close();
    let mut w = ws_open(t, &x.b, &id, 0)?;
    let got = frames_as_entries(&w.frames(3, 5000)?)?;
    ensure!(
        seqs(&got) == [1, 2, 3],
        "the WebSocket after=0 sent seqs {:?}, expected [1, 2, 3] (API-26)",
        seqs(&got)
    );
    check_chain(&got, &id, None)?;
    w.close();
    Ok(())
}

fn stream_end(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let x = trio(t, "cvz")?;
    let (id, _) = started(t, &x, "async")?;
    send_at(t, &act(t, &x.c, &id, &x.a.handle, "decline"), &id, 3)?;
    send_at(t, &post(t, &x.a, &id, &[&x.b.handle]), &id, 4)?;
    let mut s = sse_open(t, &x.c, &id, Some(0), None)?;
    let got = read_entries(&mut s, 0, true)?;
    ensure!(seqs(&got) == [1, 2, 3], "the stream of a participant that declined at seq 3 sent {:?} and ended; expected [1, 2, 3] (API-26, CONVO-10)", seqs(&got));
    send_at(t, &act(t, &x.a, &id, &x.a.handle, "close"), &id, 5)?;
    let mut s = sse_open(t, &x.b, &id, Some(2), None)?;
    let got = read_entries(&mut s, 0, true)?;
    ensure!(seqs(&got) == [3, 4, 5], "the stream of a closed conversation after 2 sent {:?}; expected [3, 4, 5] and its end (API-26)", seqs(&got));
    let mut w = ws_open(t, &x.b, &id, 3)?;
    let frames = frames_as_entries(&w.frames_until_close(5000)?)?;
    ensure!(seqs(&frames) == [4, 5], "the WebSocket of a closed conversation after 3 sent {:?}; expected [4, 5] and its close (API-26)", seqs(&frames));
    Ok(())
}
