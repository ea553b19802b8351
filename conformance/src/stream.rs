//! Client ends of the inbox streams: a Server-Sent Events reader over the HTTP body (API-10)
//! and a WebSocket client over `tungstenite` (API-11). Every read waits a bounded time.

use crate::fail;
use crate::http::{quote, strict_parse, Http, Resp};
use crate::verdict::{Stop, R};
use formica_protocol::Value;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One SSE event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Vec<String>,
}

/// An open event stream.
pub struct Sse {
    reader: BufReader<Box<dyn Read + Send + Sync>>,
    pub content_type: String,
    /// Comment lines seen (`: keep-alive`).
    pub comments: usize,
}

impl std::fmt::Debug for Sse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sse({})", self.content_type)
    }
}

/// Opens `GET path` as an event stream. A non-200 answer is returned as `Err(resp)` so the case
/// can check the JSON error that must come before the stream (API-10).
pub fn open_sse(http: &Http, path: &str, headers: &[(&str, String)]) -> R<Result<Sse, Resp>> {
    let resp = http.open_stream(path, headers)?;
    let status = resp.status();
    if status != 200 {
        let headers = resp
            .headers_names()
            .into_iter()
            .filter_map(|n| {
                resp.header(&n)
                    .map(|v| (n.to_ascii_lowercase(), v.to_owned()))
            })
            .collect();
        let mut raw = Vec::new();
        let _ = resp.into_reader().take(1 << 20).read_to_end(&mut raw);
        let json = strict_parse(&raw);
        return Ok(Err(Resp {
            what: format!("GET {path}"),
            status,
            headers,
            raw,
            json,
        }));
    }
    let content_type = resp.header("content-type").unwrap_or("").to_owned();
    Ok(Ok(Sse {
        reader: BufReader::new(resp.into_reader()),
        content_type,
        comments: 0,
    }))
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

impl Sse {
    /// The next event, or `None` if none completes before `deadline`.
    pub fn next_event(&mut self, deadline: Instant) -> R<Option<SseEvent>> {
        let mut ev = SseEvent::default();
        let mut any = false;
        loop {
            if Instant::now() >= deadline {
                return Ok(None);
            }
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => {
                    if any {
                        return Ok(Some(ev));
                    }
                    fail!("GET /v1/inbox/stream: the relay closed the event stream");
                }
                Ok(_) => {}
                Err(e) if timed_out(&e) => continue,
                Err(e) => fail!("GET /v1/inbox/stream: reading the stream: {e}"),
            }
            let l = line.trim_end_matches('\n').trim_end_matches('\r');
            if l.is_empty() {
                if any {
                    return Ok(Some(ev));
                }
                continue;
            }
            if l.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = match l.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (l, ""),
            };
            any = true;
            match field {
                "event" => ev.event = Some(value.to_owned()),
                "id" => ev.id = Some(value.to_owned()),
                "data" => ev.data.push(value.to_owned()),
                _ => {}
            }
        }
    }

    /// The next `n` envelope events (cursor, data line), waiting at most `within_ms` in all.
    pub fn envelopes(&mut self, n: usize, within_ms: u64) -> R<Vec<(String, String)>> {
        let deadline = Instant::now() + Duration::from_millis(within_ms);
        let mut out = Vec::new();
        while out.len() < n {
            let Some(ev) = self.next_event(deadline)? else {
                fail!(
                    "GET /v1/inbox/stream: {} of {n} envelope events within {within_ms} ms",
                    out.len()
                );
            };
            if ev.event.as_deref() != Some("envelope") {
                fail!(
                    "GET /v1/inbox/stream: an event of type {:?}, expected `envelope` (API-10)",
                    ev.event
                );
            }
            let Some(id) = ev.id else {
                fail!("GET /v1/inbox/stream: an envelope event without `id` (API-10)")
            };
            if ev.data.len() != 1 {
                fail!("GET /v1/inbox/stream: an envelope event with {} data lines; canonical JSON is one line (API-10)", ev.data.len());
            }
            out.push((id, ev.data.into_iter().next().unwrap_or_default()));
        }
        Ok(out)
    }

    /// Fails if an envelope event arrives within `ms`.
    pub fn expect_quiet(&mut self, ms: u64) -> R<()> {
        let deadline = Instant::now() + Duration::from_millis(ms);
        if let Some(ev) = self.next_event(deadline)? {
            fail!(
                "GET /v1/inbox/stream: unexpected event id {:?} data {}",
                ev.id,
                quote(ev.data.join("\n").as_bytes())
            );
        }
        Ok(())
    }
}

/// A WebSocket client.
pub struct Ws {
    sock: tungstenite::WebSocket<TcpStream>,
}

impl std::fmt::Debug for Ws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ws")
    }
}

/// Upgrades `GET path` to a WebSocket (plain `ws://` only). A refused upgrade comes back as
/// `Err(resp)` with the relay's HTTP answer (API-11: cursor errors are HTTP errors).
pub fn open_ws(http: &Http, path: &str, headers: &[(&str, String)]) -> R<Result<Ws, Resp>> {
    use tungstenite::client::IntoClientRequest;
    if http.is_tls() {
        return Err(Stop::Skip("WebSocket over TLS (wss) is not built into the suite; run against http:// for the WebSocket cases".into()));
    }
    let url = format!("ws://{}{}", http.authority(), path);
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| Stop::Fail(format!("bad WebSocket URL {url}: {e}")))?;
    for (k, v) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| Stop::Fail(format!("header {k}: {e}")))?;
        let value = tungstenite::http::HeaderValue::from_str(v)
            .map_err(|e| Stop::Fail(format!("header {k}: {e}")))?;
        req.headers_mut().insert(name, value);
    }
    let stream = TcpStream::connect(http.authority())
        .map_err(|e| Stop::Fail(format!("GET {path}: connect: {e}")))?;
    stream
        .set_read_timeout(Some(Duration::from_millis(5000)))
        .map_err(|e| Stop::Fail(e.to_string()))?;
    stream
        .set_write_timeout(Some(Duration::from_millis(5000)))
        .map_err(|e| Stop::Fail(e.to_string()))?;
    match tungstenite::client::client(req, stream) {
        Ok((sock, _resp)) => {
            sock.get_ref()
                .set_read_timeout(Some(Duration::from_millis(250)))
                .map_err(|e| Stop::Fail(e.to_string()))?;
            Ok(Ok(Ws { sock }))
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_ascii_lowercase(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let raw = resp.body().clone().unwrap_or_default();
            let json = strict_parse(&raw);
            Ok(Err(Resp {
                what: format!("GET {path} (WebSocket upgrade)"),
                status,
                headers,
                raw,
                json,
            }))
        }
        Err(e) => fail!("GET {path}: WebSocket handshake failed: {e}"),
    }
}

impl Ws {
    /// The next `n` item frames (raw text), waiting at most `within_ms` in all. Pings are
    /// answered by the library.
    pub fn frames(&mut self, n: usize, within_ms: u64) -> R<Vec<String>> {
        let deadline = Instant::now() + Duration::from_millis(within_ms);
        let mut out = Vec::new();
        while out.len() < n {
            if Instant::now() >= deadline {
                fail!(
                    "GET /v1/inbox/ws: {} of {n} frames within {within_ms} ms",
                    out.len()
                );
            }
            match self.sock.read() {
                Ok(tungstenite::Message::Text(t)) => out.push(t.as_str().to_owned()),
                Ok(tungstenite::Message::Close(c)) => {
                    fail!("GET /v1/inbox/ws: the relay closed the connection ({c:?})")
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if timed_out(&e) => {}
                Err(e) => fail!("GET /v1/inbox/ws: {e}"),
            }
        }
        Ok(out)
    }

    /// The text frames until the relay closes the connection, waiting at most `within_ms`.
    pub fn frames_until_close(&mut self, within_ms: u64) -> R<Vec<String>> {
        let deadline = Instant::now() + Duration::from_millis(within_ms);
        let mut out = Vec::new();
        loop {
            if Instant::now() >= deadline {
                fail!("GET /v1/inbox/ws: not closed within {within_ms} ms");
            }
            match self.sock.read() {
                Ok(tungstenite::Message::Text(t)) => out.push(t.as_str().to_owned()),
                Ok(tungstenite::Message::Close(_)) => return Ok(out),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if timed_out(&e) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(out)
                }
                Err(e) => fail!("GET /v1/inbox/ws: {e}"),
            }
        }
    }

    /// Sends a client text frame (API-11: the relay ends the stream with 1008).
    pub fn send_text(&mut self, text: &str) -> R<()> {
        self.sock
            .send(tungstenite::Message::Text(text.into()))
            .map_err(|e| Stop::Fail(format!("GET /v1/inbox/ws: sending a frame: {e}")))
    }

    /// Sends a client ping (API-11: answered with a pong, the stream goes on).
    pub fn send_ping(&mut self, payload: &[u8]) -> R<()> {
        self.sock
            .send(tungstenite::Message::Ping(payload.to_vec().into()))
            .map_err(|e| Stop::Fail(format!("GET /v1/inbox/ws: sending a ping: {e}")))
    }

    /// Writes raw bytes on the connection (a hand-made frame), bypassing the library. A write
    /// the relay refuses (it closed the connection) is not an error: the caller checks the end.
    pub fn send_raw(&mut self, bytes: &[u8]) -> R<bool> {
        use std::io::Write;
        let sock = self.sock.get_mut();
        Ok(sock.write_all(bytes).and_then(|_| sock.flush()).is_ok())
    }

    /// Waits at most `within_ms` for the relay to end the connection; the close status it sent,
    /// if any (`None`: the connection ended without a close frame). Item frames are skipped.
    pub fn ended(&mut self, within_ms: u64) -> R<Option<u16>> {
        let deadline = Instant::now() + Duration::from_millis(within_ms);
        loop {
            if Instant::now() >= deadline {
                fail!("GET /v1/inbox/ws: not ended within {within_ms} ms");
            }
            match self.sock.read() {
                Ok(tungstenite::Message::Close(c)) => return Ok(c.map(|c| u16::from(c.code))),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if timed_out(&e) => {}
                Err(_) => return Ok(None),
            }
        }
    }

    pub fn close(mut self) {
        let _ = self.sock.close(None);
        let _ = self.sock.flush();
    }
}

/// Parses a frame or data line as strict JSON.
pub fn parse_line(what: &str, s: &str) -> R<Value> {
    strict_parse(s.as_bytes()).map_err(|e| {
        Stop::Fail(format!(
            "{what}: not a strict-JSON document (JSON-12): {e}: {}",
            quote(s.as_bytes())
        ))
    })
}
