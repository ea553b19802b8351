//! Streaming the inbox from a relay process: SSE resumes with `Last-Event-ID` without gaps or
//! repeats, refuses a cursor it never issued, and WebSocket delivers the same items.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/process.rs"]
mod process;

use process::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Reads SSE events (id, data) from a chunked HTTP response until `n` envelopes arrived.
struct Sse {
    reader: BufReader<TcpStream>,
    buf: String,
}

impl Sse {
    fn open(r: &RelayProc, peer: &Peer, last_event_id: Option<&str>) -> Result<Sse, (u16, String)> {
        Sse::open_path(r, peer, "/v1/inbox/stream", last_event_id)
    }

    fn open_path(
        r: &RelayProc,
        peer: &Peer,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<Sse, (u16, String)> {
        let (k, v) = peer.auth("GET", path, b"");
        let mut s = TcpStream::connect(&r.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n{k}: {v}\r\nAccept: text/event-stream\r\nConnection: close\r\n", r.addr);
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut reader = BufReader::new(s);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let mut chunked = false;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line
                .to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
            {
                chunked = true;
            }
            if line == "\r\n" {
                break;
            }
        }
        if status != 200 {
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
            return Err((status, String::from_utf8_lossy(&rest).into_owned()));
        }
        assert!(chunked, "an event stream is chunked");
        Ok(Sse {
            reader,
            buf: String::new(),
        })
    }

    /// Reads until the server ends the chunked body; true if it ended with the terminating
    /// zero-length chunk (a clean end), false if the connection was cut.
    fn ends_cleanly(&mut self) -> bool {
        loop {
            let mut size = String::new();
            match self.reader.read_line(&mut size) {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
            let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
                return false;
            };
            if n == 0 {
                return true;
            }
            let mut data = vec![0u8; n + 2];
            if self.reader.read_exact(&mut data).is_err() {
                return false;
            }
        }
    }

    /// Reads one chunk into the buffer; false if the connection ended or was cut first (a
    /// chunk cut in the middle is dropped, as a client drops an incomplete event).
    fn try_next_chunk(&mut self) -> bool {
        let mut size = String::new();
        match self.reader.read_line(&mut size) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return false;
        };
        if n == 0 {
            return false;
        }
        let mut data = vec![0u8; n + 2];
        if self.reader.read_exact(&mut data).is_err() {
            return false;
        }
        self.buf.push_str(&String::from_utf8_lossy(&data[..n]));
        true
    }

    /// The next `envelope` event: (id, data).
    fn next_event(&mut self) -> (String, String) {
        self.try_next_event().expect("the stream ended")
    }

    /// The next `envelope` event, or `None` once the connection has ended.
    fn try_next_event(&mut self) -> Option<(String, String)> {
        self.try_next_of("envelope")
            .map(|(id, data)| (id.unwrap(), data))
    }

    /// The next event named `kind` (its id, if any, and data), or `None` once the connection
    /// has ended.
    fn try_next_of(&mut self, kind: &str) -> Option<(Option<String>, String)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                let mut event = None;
                for line in block.lines() {
                    if let Some(x) = line
                        .strip_prefix("id: ")
                        .or_else(|| line.strip_prefix("id:"))
                    {
                        id = Some(x.to_owned());
                    } else if let Some(x) = line
                        .strip_prefix("data: ")
                        .or_else(|| line.strip_prefix("data:"))
                    {
                        data = Some(x.to_owned());
                    } else if let Some(x) = line
                        .strip_prefix("event: ")
                        .or_else(|| line.strip_prefix("event:"))
                    {
                        event = Some(x.to_owned());
                    }
                }
                if event.as_deref() == Some(kind) {
                    return Some((id, data.unwrap()));
                }
                continue; // keep-alive comment
            }
            if !self.try_next_chunk() {
                return None;
            }
        }
    }
}

fn setup(name: &str) -> (std::path::PathBuf, RelayProc, Peer, Peer) {
    setup_with(name, "")
}

/// Like `setup`, with extra `[limits]` lines.
fn setup_with(name: &str, extra_limits: &str) -> (std::path::PathBuf, RelayProc, Peer, Peer) {
    let dir = std::env::temp_dir().join(format!(
        "formica-{name}-{}-{}",
        std::process::id(),
        now_ms()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config_with(&dir, extra_limits);
    let r = RelayProc::start(&dir.join("data"), &config);
    let a = Peer::register(&r, "alice", 1);
    let b = Peer::register(&r, "bob", 2);
    b.allow(&r, &a.handle);
    (dir, r, a, b)
}

fn send(r: &RelayProc, a: &Peer, b: &Peer, text: &str) -> String {
    let m = a.message(&b.handle, text);
    let (st, v) = post_envelope(r, &m).unwrap();
    assert_eq!(st, 201, "{v:?}");
    m.id().to_hex()
}

fn id_of(data: &str) -> String {
    let v = formica_protocol::json::parse(data.as_bytes(), formica_protocol::JsonLimits::default())
        .unwrap();
    v.as_object()
        .unwrap()
        .get("id")
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// The `status` of a presence event's data.
fn status_of(data: &str) -> (String, String) {
    let v = formica_protocol::json::parse(data.as_bytes(), formica_protocol::JsonLimits::default())
        .unwrap();
    let o = v.as_object().unwrap();
    let s = |k: &str| o.get(k).unwrap().as_str().unwrap().to_owned();
    (s("handle"), s("status"))
}

/// PRES-1, PRES-4, PRES-5: a contact's stream with `presence=1` sees the agent come online when
/// its stream opens, `busy` once it says so, and `offline` once `presence.ttl_ms` has passed
/// after its stream closed (not before); a stranger sees nothing; presence events carry no id,
/// so Last-Event-ID still names the last inbox item.
#[test]
fn presence_is_pushed_to_contacts_and_goes_offline_after_the_ttl() {
    let ttl = 1500;
    let (dir, r, a, b) = setup_with(
        "presence",
        &format!("[presence]\nttl_ms = {ttl}\npush_interval_ms = 50"),
    );
    // b granted a: a watches b.
    let carol = Peer::register(&r, "carol", 3);
    let mut watch = Sse::open_path(&r, &a, "/v1/inbox/stream?presence=1", None).unwrap();
    let b_stream = Sse::open(&r, &b, None).unwrap();
    let (id, data) = watch.try_next_of("presence").unwrap();
    assert_eq!(id, None, "a presence event has no id");
    assert_eq!(status_of(&data), (b.handle.to_string(), "available".into()));
    let status = formica_protocol::Status {
        handle: b.handle.clone(),
        key: b.key.public().key_id(),
        ts: now_ms(),
        expires: now_ms() + 600_000,
        status: formica_protocol::Availability::Busy,
        note: Some("in a review".into()),
    }
    .sign(&b.key)
    .unwrap();
    let (st, v) = b.authed(&r, "PUT", "/v1/presence", status.wire());
    assert_eq!(st, 200, "{v:?}");
    let (_, data) = watch.try_next_of("presence").unwrap();
    assert_eq!(status_of(&data), (b.handle.to_string(), "busy".into()));
    // A contact reads the full presence; a stranger gets not_found.
    let path = format!("/v1/presence/{}", b.handle);
    let (st, v) = a.authed(&r, "GET", &path, b"");
    assert_eq!(st, 200);
    let o = v.as_object().unwrap();
    assert_eq!(o.get("status").unwrap().as_str(), Some("busy"));
    assert!(o.get("signed").unwrap().as_object().is_some());
    let (st, _) = carol.authed(&r, "GET", &path, b"");
    assert_eq!(st, 404);
    // b's stream closes: offline, but only once the ttl has passed.
    let closed = std::time::Instant::now();
    drop(b_stream);
    let (_, data) = watch.try_next_of("presence").unwrap();
    assert_eq!(status_of(&data), (b.handle.to_string(), "offline".into()));
    let after = closed.elapsed();
    assert!(
        after >= Duration::from_millis(ttl - 100),
        "offline after {after:?}, before the ttl of {ttl} ms"
    );
    // An inbox item still comes with its id.
    a.allow(&r, &b.handle);
    send(&r, &b, &a, "hello");
    let (id, _) = watch.next_event();
    assert_eq!(id, "1");
    drop(r);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sse_streams_live_and_resumes_from_last_event_id_without_gaps_or_repeats() {
    let (dir, r, a, b) = setup("sse");
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(send(&r, &a, &b, &format!("before {n}")));
    }
    let mut s = Sse::open(&r, &b, None).unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(s.next_event());
    }
    for n in 0..2 {
        sent.push(send(&r, &a, &b, &format!("live {n}")));
    }
    for _ in 0..2 {
        got.push(s.next_event());
    }
    drop(s); // disconnect
    sent.push(send(&r, &a, &b, "while away"));
    let last = got.last().unwrap().0.clone();
    assert_eq!(last, "5");
    let mut s2 = Sse::open(&r, &b, Some(&last)).unwrap();
    got.push(s2.next_event());
    let ids: Vec<String> = got.iter().map(|(_, d)| id_of(d)).collect();
    assert_eq!(ids, sent, "every envelope once, in order");
    let cursors: Vec<&str> = got.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(cursors, vec!["1", "2", "3", "4", "5", "6"]);
    // A cursor the relay never issued is an explicit error, not an empty stream.
    let err = Sse::open(&r, &b, Some("99")).err().unwrap();
    assert_eq!(err.0, 400);
    assert!(err.1.contains("invalid_cursor"), "{}", err.1);
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a stream handed out becomes `delivered` in the sender's status, and nothing the
/// stream has not reached yet does.
#[test]
fn streamed_items_become_delivered() {
    let (dir, r, a, b) = setup("sse-delivered");
    let first = send(&r, &a, &b, "one");
    let state_of = |id: &str| -> String {
        let (st, v) = a.authed(&r, "GET", &format!("/v1/messages/{id}"), b"");
        assert_eq!(st, 200, "{v:?}");
        let recipients = v.as_object().unwrap().get("recipients").unwrap();
        recipients.as_array().unwrap()[0]
            .as_object()
            .unwrap()
            .get("status")
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(state_of(&first), "accepted");
    let mut s = Sse::open(&r, &b, None).unwrap();
    let (_, data) = s.next_event();
    assert_eq!(id_of(&data), first);
    // The read is recorded right after the page went out; give the writer a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while state_of(&first) != "delivered" {
        assert!(
            std::time::Instant::now() < deadline,
            "never became delivered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(s);
    let second = send(&r, &a, &b, "two, after the stream closed");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(state_of(&second), "accepted");
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Opens `/v1/inbox/ws?after=0` as `peer` with the test's WebSocket client.
fn open_ws(r: &RelayProc, peer: &Peer) -> tungstenite::WebSocket<TcpStream> {
    let path = "/v1/inbox/ws?after=0";
    let (k, v) = peer.auth("GET", path, b"");
    let req = tungstenite::http::Request::builder()
        .uri(format!("ws://{}{path}", r.addr))
        .header("Host", r.addr.clone())
        .header(k, v)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    let stream = TcpStream::connect(&r.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (ws, resp) = tungstenite::client::client(req, stream).unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// A masked client frame header: FIN (or not), `opcode`, and a payload of `len` bytes.
fn frame_header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let mut h = vec![if fin { 0x80 } else { 0 } | opcode];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if len <= 0xffff {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&len.to_be_bytes());
    }
    h.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    h
}

/// Reads until the relay ends the WebSocket; its close frame, if it sent one before ending.
fn read_until_closed(ws: &mut tungstenite::WebSocket<TcpStream>) -> Option<(u16, String)> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(c)) => {
                return c.map(|c| (u16::from(c.code), c.reason.to_string()))
            }
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the relay did not end the WebSocket within the read timeout")
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn websocket_delivers_backlog_and_live_items() {
    let (dir, r, a, b) = setup("ws");
    let first = send(&r, &a, &b, "backlog");
    let mut ws = open_ws(&r, &b);
    let mut frames = Vec::new();
    let mut live_sent = None;
    while frames.len() < 2 {
        match ws.read().unwrap() {
            tungstenite::Message::Text(t) => {
                frames.push(t.to_string());
                if live_sent.is_none() {
                    live_sent = Some(send(&r, &a, &b, "live"));
                }
            }
            _ => continue,
        }
    }
    let ids: Vec<String> = frames
        .iter()
        .map(|f| {
            let v = formica_protocol::json::parse(
                f.as_bytes(),
                formica_protocol::JsonLimits::default(),
            )
            .unwrap();
            let env = v.as_object().unwrap().get("envelope").unwrap().clone();
            env.as_object()
                .unwrap()
                .get("id")
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids, vec![first, live_sent.unwrap()]);
    let _ = ws.close(None);
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shutdown_ends_open_streams_cleanly() {
    let (dir, mut r, a, b) = setup("sse-stop");
    send(&r, &a, &b, "one");
    let mut s = Sse::open(&r, &b, None).unwrap();
    s.next_event();
    let pid = r.child.as_ref().unwrap().id();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert!(s.ends_cleanly(), "the stream was cut instead of ended");
    assert_eq!(r.terminate(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_slow_stream_consumer_loses_nothing_and_the_relay_keeps_serving() {
    // A pause, not a stall: the write stall limit is far longer than the pause (the test below
    // covers a consumer that stops for good).
    let (dir, r, a, b) = setup_with("slow", "write_stall_timeout_ms = 600000");
    let mut s = Sse::open(&r, &b, None).unwrap();
    let first = send(&r, &a, &b, "first");
    assert_eq!(id_of(&s.next_event().1), first);
    // The consumer stops reading while 2,000 envelopes (about 1 MB) arrive.
    let mut sent = vec![first];
    for batch in 0..20 {
        let items: Vec<formica_protocol::Value> = (0..100)
            .map(|n| {
                let m = a.message(
                    &b.handle,
                    &format!("batch {batch} item {n} {}", "x".repeat(400)),
                );
                sent.push(m.id().to_hex());
                m.value().clone()
            })
            .collect();
        let body = formica_protocol::canon::canonicalize(&obj(vec![(
            "envelopes",
            formica_protocol::Value::Array(items),
        )]));
        let (st, v) = r
            .request("POST", "/v1/envelopes/batch", &[], &body)
            .unwrap();
        assert_eq!(st, 200, "{v:?}");
    }
    // Meanwhile the relay answers others.
    assert_eq!(r.request("GET", "/health", &[], b"").unwrap().0, 200);
    // The consumer resumes reading and gets every envelope once, in order.
    let mut got = vec![first_id(&sent)];
    while got.len() < sent.len() {
        got.push(id_of(&s.next_event().1));
    }
    assert_eq!(got, sent);
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

fn first_id(sent: &[String]) -> String {
    sent[0].clone()
}

/// The value of a Prometheus counter or gauge in the relay's `/metrics`.
fn metric(r: &RelayProc, name: &str) -> i64 {
    let (st, text) = r.request_text("GET", "/metrics").unwrap();
    assert_eq!(st, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[test]
fn a_stream_consumer_that_stops_reading_is_disconnected_and_loses_nothing() {
    let (dir, r, a, b) = setup_with("stall", "write_stall_timeout_ms = 1000");
    let mut s = Sse::open(&r, &b, None).unwrap();
    let first = send(&r, &a, &b, "first");
    let (mut last_event_id, data) = s.next_event();
    assert_eq!(id_of(&data), first);
    assert_eq!(metric(&r, "formica_streams_open"), 1);
    // The consumer stops reading while about 16 MB arrive, far more than the two sockets'
    // buffers hold, so the relay's writes to it stall.
    let mut sent = vec![first];
    for batch in 0..50 {
        let items: Vec<formica_protocol::Value> = (0..100)
            .map(|n| {
                let m = a.message(
                    &b.handle,
                    &format!("batch {batch} item {n} {}", "x".repeat(3000)),
                );
                sent.push(m.id().to_hex());
                m.value().clone()
            })
            .collect();
        let body = formica_protocol::canon::canonicalize(&obj(vec![(
            "envelopes",
            formica_protocol::Value::Array(items),
        )]));
        let (st, v) = r
            .request("POST", "/v1/envelopes/batch", &[], &body)
            .unwrap();
        assert_eq!(st, 200, "{v:?}");
    }
    // The relay closes the stalled stream (bounded wait: 30 s, against a 1 s limit) and
    // counts it, and keeps answering others meanwhile.
    let mut waited = 0;
    while metric(&r, "formica_streams_open") != 0 {
        assert!(waited < 300, "the stalled stream is still open after 30 s");
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    assert!(metric(&r, "formica_connections_write_stalled_total") >= 1);
    assert_eq!(r.request("GET", "/health", &[], b"").unwrap().0, 200);
    // The consumer reads what had reached it before the close, then the connection ends: it
    // did not get everything on that connection.
    let mut got = vec![sent[0].clone()];
    while let Some((id, data)) = s.try_next_event() {
        got.push(id_of(&data));
        last_event_id = id;
    }
    assert!(
        got.len() < sent.len(),
        "the stalled connection delivered everything, so it was never cut"
    );
    // It reconnects from its last event and gets the rest: every envelope once, in order.
    let mut s = Sse::open(&r, &b, Some(&last_event_id)).unwrap();
    while got.len() < sent.len() {
        got.push(id_of(&s.next_event().1));
    }
    assert_eq!(got, sent);
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression: a client could make the relay buffer an unfinished WebSocket message of up to
/// 64 MiB (the library's default), more than 100 MiB of RSS per connection, kept alive by pings.
/// Now a frame announced larger than a control frame ends the connection before its payload is
/// read, and the relay's memory does not grow with what the client sends.
#[test]
fn a_websocket_client_sending_a_large_unfinished_message_is_closed_at_once_and_rss_stays_flat() {
    let (dir, r, _a, b) = setup("ws-big");
    let pid = r.child.as_ref().unwrap().id();
    let mut ws = open_ws(&r, &b);
    let before = rss_kib(pid);
    // A binary frame without FIN announcing 15 MiB, then as much of its payload as the relay
    // takes, up to 12 MiB: the relay must close first.
    let sock = ws.get_mut();
    sock.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sent = 0usize;
    let mut refused = sock.write_all(&frame_header(false, 0x2, 15 << 20)).is_err();
    let chunk = vec![0x5au8; 64 << 10];
    while !refused && sent < (12 << 20) {
        match sock.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => refused = true,
        }
    }
    assert!(
        refused,
        "the relay read all 12 MiB of an unfinished 15 MiB frame instead of closing"
    );
    let after = rss_kib(pid);
    assert!(
        after < before + 4096,
        "the relay's RSS grew from {before} KiB to {after} KiB while the client sent {sent} bytes"
    );
    // The relay still serves.
    assert_eq!(r.request("GET", "/health", &[], b"").unwrap().0, 200);
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

/// API-11: the inbox WebSocket is one way; a data frame from the client ends it with 1008.
#[test]
fn a_websocket_data_frame_from_the_client_closes_the_stream_with_a_policy_status() {
    let (dir, r, _a, b) = setup("ws-data");
    let mut ws = open_ws(&r, &b);
    ws.send(tungstenite::Message::Text("{\"hello\":\"relay\"}".into()))
        .unwrap();
    let close = read_until_closed(&mut ws).expect("a close frame");
    assert_eq!(close.0, 1008, "{close:?}");
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A frame the client begins must be complete within `limits.body_read_timeout_ms`, like a
/// request body; a complete ping keeps the stream open.
#[test]
fn a_websocket_frame_left_unfinished_is_closed_after_the_body_read_deadline() {
    let (dir, r, _a, b) = setup_with("ws-partial", "body_read_timeout_ms = 1000");
    let mut ws = open_ws(&r, &b);
    // A whole ping is answered and changes nothing.
    ws.send(tungstenite::Message::Ping(vec![1, 2, 3].into()))
        .unwrap();
    let started = std::time::Instant::now();
    // Ten bytes of a 100-byte ping, then nothing.
    let sock = ws.get_mut();
    sock.write_all(&frame_header(true, 0x9, 100)).unwrap();
    sock.write_all(&[0u8; 10]).unwrap();
    let close = read_until_closed(&mut ws).expect("a close frame");
    assert_eq!(close.0, 1008, "{close:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "closed before the deadline: {:?}",
        started.elapsed()
    );
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}
