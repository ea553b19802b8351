//! A small tampering HTTP/1.1 proxy for the suite's own tests: it forwards each request to a
//! real relay and lets a rewrite function change the answer, which is how the tests simulate a
//! relay that accepts what it must refuse or answers with the wrong code. Streams (SSE,
//! WebSocket) are tunnelled untouched. Every socket has a time limit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One request and the relay's answer to it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    pub path: String,
    pub req_body: Vec<u8>,
    pub status: u16,
    pub resp_headers: Vec<(String, String)>,
    pub resp_body: Vec<u8>,
}

/// A replacement answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

pub type Rewrite = Arc<dyn Fn(&Exchange) -> Option<Answer> + Send + Sync>;

/// A running proxy; stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Serves on `listener`, forwarding to `upstream`.
    pub fn start(listener: TcpListener, upstream: SocketAddr, rewrite: Rewrite) -> Proxy {
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let rw = rewrite.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, upstream, rw);
                });
            }
        });
        Proxy { addr, stop }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let t = l.trim_end_matches(['\r', '\n']).to_owned();
        if t.is_empty() {
            return Ok(lines);
        }
        lines.push(t);
    }
}

fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines.iter().skip(1).find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    })
}

/// Reads a body framed by Content-Length or chunked encoding; returns (raw bytes as framed,
/// decoded bytes).
fn read_body(
    r: &mut BufReader<TcpStream>,
    lines: &[String],
) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    if header(lines, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let (mut raw, mut body) = (Vec::new(), Vec::new());
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            raw.extend_from_slice(size.as_bytes());
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)?;
            raw.extend_from_slice(&chunk);
            body.extend_from_slice(&chunk[..n]);
            if n == 0 {
                return Ok((raw, body));
            }
        }
    }
    let n: usize = header(lines, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    Ok((body.clone(), body))
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

fn handle(client: TcpStream, upstream: SocketAddr, rewrite: Rewrite) -> std::io::Result<()> {
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let lines = read_head(&mut reader)?;
    let request_line = lines.first().cloned().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let upgrade = header(&lines, "upgrade").is_some();
    let streaming = path.starts_with("/v1/inbox/stream") || upgrade;
    let (raw_body, body) = read_body(&mut reader, &lines)?;
    let up = TcpStream::connect(upstream)?;
    up.set_read_timeout(Some(IO_TIMEOUT))?;
    up.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = String::new();
    head.push_str(&request_line);
    head.push_str("\r\n");
    for l in lines.iter().skip(1) {
        if !streaming && l.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        head.push_str(l);
        head.push_str("\r\n");
    }
    if !streaming {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut upw = up.try_clone()?;
    upw.write_all(head.as_bytes())?;
    upw.write_all(&raw_body)?;
    if streaming {
        // Tunnel both ways, untouched (anything the client sent after the head is in the reader).
        let pending = reader.buffer().to_vec();
        if !pending.is_empty() {
            upw.write_all(&pending)?;
        }
        let (c2, u2) = (client.try_clone()?, up.try_clone()?);
        c2.set_read_timeout(None)?;
        u2.set_read_timeout(None)?;
        let t = std::thread::spawn(move || pipe(c2, upw));
        pipe(u2, client);
        let _ = t.join();
        return Ok(());
    }
    let mut ur = BufReader::new(up);
    let resp_lines = read_head(&mut ur)?;
    let status: u16 = resp_lines
        .first()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    let resp_headers: Vec<(String, String)> = resp_lines
        .iter()
        .skip(1)
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    let resp_body = if header(&resp_lines, "transfer-encoding").is_some()
        || header(&resp_lines, "content-length").is_some()
    {
        read_body(&mut ur, &resp_lines)?.1
    } else {
        let mut b = Vec::new();
        ur.read_to_end(&mut b)?;
        b
    };
    let ex = Exchange {
        method,
        path,
        req_body: body,
        status,
        resp_headers: resp_headers.clone(),
        resp_body,
    };
    let (status, out_body, headers) = match rewrite(&ex) {
        Some(a) => (
            a.status,
            a.body,
            vec![("content-type".to_owned(), "application/json".to_owned())],
        ),
        None => (
            ex.status,
            ex.resp_body.clone(),
            resp_headers
                .into_iter()
                .filter(|(k, _)| {
                    !["content-length", "transfer-encoding", "connection"].contains(&k.as_str())
                })
                .collect(),
        ),
    };
    let mut out = format!("HTTP/1.1 {status} X\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        out_body.len()
    ));
    let mut cw = client;
    cw.write_all(out.as_bytes())?;
    cw.write_all(&out_body)?;
    cw.flush()?;
    Ok(())
}
