//! A minimal HTTP/1.1 client over tokio: keep-alive connections that send requests whose bytes
//! were built beforehand (so the load generator only writes and reads), and a reader for
//! Server-Sent Events over a chunked response.

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response the client accepts (a batch answer is about 12 KB).
const RESPONSE_BYTES_MAX: usize = 16 << 20;

/// The complete bytes of one request.
pub fn request(
    method: &str,
    path: &str,
    addr: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(k);
        r.push_str(": ");
        r.push_str(v);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    let mut b = r.into_bytes();
    b.extend_from_slice(body);
    b
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Result<formica_protocol::Value> {
        formica_protocol::json::parse(
            &self.body,
            formica_protocol::JsonLimits {
                bytes_max: RESPONSE_BYTES_MAX,
                depth_max: 64,
            },
        )
        .with_context(|| format!("response is not JSON: {}", self.text()))
    }
}

/// One keep-alive connection; one request in flight at a time.
#[derive(Debug)]
pub struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Status, content length (None: chunked) and header length of a response head in `buf`.
fn parse_head(buf: &[u8]) -> Result<Option<(u16, Option<usize>, usize)>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let mut len = None;
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = Some(v.trim().parse::<usize>().context("content-length")?);
            } else if k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }
    if !chunked && len.is_none() {
        len = Some(0);
    }
    Ok(Some((status, if chunked { None } else { len }, end + 4)))
}

impl Conn {
    pub async fn connect(addr: &str) -> Result<Conn> {
        let s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            s,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    async fn fill(&mut self) -> Result<()> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self.s.read(&mut tmp).await?;
        if n == 0 {
            bail!("connection closed by the relay");
        }
        if self.buf.len() + n > RESPONSE_BYTES_MAX {
            bail!("response larger than {RESPONSE_BYTES_MAX} bytes");
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    /// Writes `req` and reads the whole response.
    pub async fn send(&mut self, req: &[u8]) -> Result<Response> {
        self.s.write_all(req).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> Result<Response> {
        let (status, len, head) = loop {
            if let Some(h) = parse_head(&self.buf)? {
                break h;
            }
            self.fill().await?;
        };
        let body = match len {
            Some(n) => {
                while self.buf.len() < head + n {
                    self.fill().await?;
                }
                let body = self.buf[head..head + n].to_vec();
                self.buf.drain(..head + n);
                body
            }
            None => {
                self.buf.drain(..head);
                let mut body = Vec::new();
                loop {
                    match take_chunk(&mut self.buf)? {
                        Some(c) if c.is_empty() => break,
                        Some(c) => body.extend_from_slice(&c),
                        None => self.fill().await?,
                    }
                }
                // The empty chunk is followed by an empty trailer line.
                while self.buf.len() < 2 {
                    self.fill().await?;
                }
                self.buf.drain(..2);
                body
            }
        };
        Ok(Response { status, body })
    }

    /// Sends a request whose response is an event stream and returns the open stream, or the
    /// error response.
    pub async fn open_stream(mut self, req: &[u8]) -> Result<Result<SseStream, Response>> {
        self.s.write_all(req).await?;
        let (status, len, head) = loop {
            if let Some(h) = parse_head(&self.buf)? {
                break h;
            }
            self.fill().await?;
        };
        if status != 200 || len.is_some() {
            // Not a stream: read it as an ordinary answer (its head is still in the buffer).
            let resp = self.read_response().await?;
            return Ok(Err(resp));
        }
        self.buf.drain(..head);
        Ok(Ok(SseStream {
            conn: self,
            text: String::new(),
        }))
    }
}

/// Takes one complete chunk off the front of `buf` (its data; empty for the last chunk), or
/// `None` if `buf` does not hold a whole chunk yet.
fn take_chunk(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>> {
    let Some(eol) = find(buf, b"\r\n") else {
        return Ok(None);
    };
    let size_s = std::str::from_utf8(&buf[..eol]).context("chunk size")?;
    let size = usize::from_str_radix(size_s.split(';').next().unwrap_or("").trim(), 16)
        .context("chunk size")?;
    if buf.len() < eol + 2 + size + 2 {
        return Ok(None);
    }
    let data = buf[eol + 2..eol + 2 + size].to_vec();
    if size == 0 {
        buf.drain(..eol + 2);
    } else {
        buf.drain(..eol + 2 + size + 2);
    }
    Ok(Some(data))
}

/// An open `text/event-stream` response.
#[derive(Debug)]
pub struct SseStream {
    conn: Conn,
    text: String,
}

/// One server-sent event.
#[derive(Debug)]
pub struct SseEvent {
    pub event: String,
    pub id: String,
    pub data: String,
}

impl SseStream {
    /// The next event (keep-alive comments are skipped).
    pub async fn next_event(&mut self) -> Result<SseEvent> {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut ev = SseEvent {
                    event: String::new(),
                    id: String::new(),
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    let field = |p: &str| {
                        line.strip_prefix(p)
                            .map(|x| x.strip_prefix(' ').unwrap_or(x).to_owned())
                    };
                    if let Some(x) = field("event:") {
                        ev.event = x;
                        any = true;
                    } else if let Some(x) = field("id:") {
                        ev.id = x;
                    } else if let Some(x) = field("data:") {
                        ev.data.push_str(&x);
                        any = true;
                    }
                }
                if any {
                    return Ok(ev);
                }
                continue;
            }
            match take_chunk(&mut self.conn.buf)? {
                Some(c) if c.is_empty() => bail!("event stream ended"),
                Some(c) => self.text.push_str(&String::from_utf8_lossy(&c)),
                None => self.conn.fill().await?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_and_heads() {
        let mut b = b"5\r\nhello\r\n0\r\n\r\n".to_vec();
        assert_eq!(take_chunk(&mut b).ok().flatten(), Some(b"hello".to_vec()));
        assert_eq!(take_chunk(&mut b).ok().flatten(), Some(Vec::new()));
        let h = parse_head(b"HTTP/1.1 201 Created\r\ncontent-length: 12\r\n\r\n")
            .ok()
            .flatten();
        assert_eq!(h, Some((201, Some(12), 44)));
        let h = parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .ok()
            .flatten();
        assert_eq!(h.map(|x| x.1), Some(None));
    }
}
