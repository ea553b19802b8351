//! A round-robin HTTP/1.1 front for several nodes of one relay: each request a client sends
//! goes to the next node in turn, also the requests that follow one another on one keep-alive
//! connection, so that a case that registers, then sends, then reads, crosses nodes between
//! its steps the way a load balancer without affinity makes it. That is what tests the nodes'
//! catch-up (`Engine::sync_with_nodes`): a front that kept a connection on one node would not.
//!
//! Streams are the exception: a WebSocket upgrade (101) or an SSE answer is tunnelled whole to
//! the node that took the request, and the client connection ends with it.
//!
//! Nothing is buffered that need not be: the request body is copied to the node while the
//! node's answer is awaited, and the answer is copied back as it arrives, so that cases about
//! timing (a body that stops arriving, HTTP-14; a declared body refused before it is sent,
//! HTTP-2) see the node's behaviour, not the front's. Each request has a fresh connection to
//! its node (`Connection: close`), which keeps the node side simple and lets the node close
//! it whenever it wants; the client side keeps its own keep-alive semantics.
//!
//! Every read and write is bounded in time; the front and every connection it serves stop
//! soon after it is dropped.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a socket may stay silent (an idle keep-alive connection, a node that does not
/// answer, a client that stops sending) before the front gives up on it. Streams, which may
/// rightly stay silent between events, are bounded by [`STREAM_MAX`] instead.
const IDLE_MAX: Duration = Duration::from_secs(30);

/// The longest a tunnelled stream (SSE, WebSocket) is kept open: longer than any case of the
/// suite holds one.
const STREAM_MAX: Duration = Duration::from_secs(300);

/// The step of every blocking read: how soon a connection notices that the front stopped.
const POLL: Duration = Duration::from_millis(200);

/// The longest request or answer head the front reads (the relay's own limit is lower).
const HEAD_BYTES_MAX: usize = 64 * 1024;

/// A running front; stops when dropped.
#[derive(Debug)]
pub struct Front {
    pub addr: SocketAddr,
    /// Requests sent to each node, in the order of `nodes` (a test may check the spread).
    pub sent: Arc<Vec<AtomicUsize>>,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Front {
    /// Serves on `listener` (reserved before the nodes start, so that they can be told its
    /// address as their public host), sending requests to `nodes` in turn.
    pub fn start(listener: TcpListener, nodes: Vec<SocketAddr>) -> Front {
        assert!(!nodes.is_empty(), "a front needs at least one node");
        let addr = listener.local_addr().expect("front address");
        let stop = Arc::new(AtomicBool::new(false));
        let sent: Arc<Vec<AtomicUsize>> =
            Arc::new(nodes.iter().map(|_| AtomicUsize::new(0)).collect());
        let ctx = Arc::new(Ctx {
            nodes,
            next: AtomicUsize::new(0),
            sent: sent.clone(),
            stop: stop.clone(),
        });
        let accept = std::thread::Builder::new()
            .name("front-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if ctx.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let ctx = ctx.clone();
                    let _ =
                        std::thread::Builder::new()
                            .name("front-conn".into())
                            .spawn(move || {
                                let _ = serve(&ctx, conn);
                            });
                }
            })
            .expect("front thread");
        Front {
            addr,
            sent,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// What every connection of one front shares.
struct Ctx {
    nodes: Vec<SocketAddr>,
    /// The round robin: the next request goes to `nodes[next % len]`.
    next: AtomicUsize,
    sent: Arc<Vec<AtomicUsize>>,
    stop: Arc<AtomicBool>,
}

impl Ctx {
    fn pick(&self) -> (usize, SocketAddr) {
        let i = self.next.fetch_add(1, Ordering::SeqCst) % self.nodes.len();
        self.sent[i].fetch_add(1, Ordering::Relaxed);
        (i, self.nodes[i])
    }
}

/// A socket read in steps of [`POLL`], so that a blocked read notices the front stopping or
/// a peer that ended the exchange (`done`), and fails after `limit` of silence.
struct Patient {
    sock: TcpStream,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    limit: Duration,
}

impl Patient {
    fn new(
        sock: &TcpStream,
        ctx: &Ctx,
        done: &Arc<AtomicBool>,
        limit: Duration,
    ) -> io::Result<Patient> {
        let sock = sock.try_clone()?;
        sock.set_read_timeout(Some(POLL))?;
        Ok(Patient {
            sock,
            stop: ctx.stop.clone(),
            done: done.clone(),
            limit,
        })
    }
}

impl Read for Patient {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let since = Instant::now();
        loop {
            match self.sock.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.stop.load(Ordering::SeqCst) || self.done.load(Ordering::SeqCst) {
                        // Not `Interrupted`, which `io::copy` and `read_line` would retry.
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "exchange over",
                        ));
                    }
                    if since.elapsed() >= self.limit {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
                r => return r,
            }
        }
    }
}

/// Reads a message head (request or status line and header lines, up to the empty line);
/// `None` at a clean end of the connection before a head starts.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    let mut size = 0;
    loop {
        let mut l = String::new();
        let n = r.read_line(&mut l)?;
        if n == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        size += n;
        if size > HEAD_BYTES_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        let t = l.trim_end_matches(['\r', '\n']).to_owned();
        if t.is_empty() {
            if lines.is_empty() {
                continue; // RFC 9112 2.2: empty lines before a request line are ignored
            }
            return Ok(Some(lines));
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

fn has_token(lines: &[String], name: &str, token: &str) -> bool {
    header(lines, name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// How a message body is delimited.
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes (an answer only).
    Close,
}

/// The longest answer body the front reads whole before it passes it on with its head.
const SMALL_BODY_MAX: u64 = 1 << 20;

fn framing(lines: &[String], answer: bool) -> Framing {
    if has_token(lines, "transfer-encoding", "chunked") {
        Framing::Chunked
    } else if let Some(n) = header(lines, "content-length").and_then(|v| v.parse().ok()) {
        Framing::Length(n)
    } else if answer {
        Framing::Close
    } else {
        Framing::None
    }
}

/// Copies one body, framed as it is framed, from `r` to `w`, flushing as it goes (a node's
/// answer is passed on as it arrives).
fn copy_body(r: &mut impl BufRead, w: &mut impl Write, how: Framing) -> io::Result<()> {
    match how {
        Framing::None => Ok(()),
        Framing::Length(n) => {
            let copied = io::copy(&mut r.take(n), w)?;
            if copied < n {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            w.flush()
        }
        Framing::Close => {
            io::copy(r, w)?;
            w.flush()
        }
        Framing::Chunked => loop {
            let mut size = String::new();
            if r.read_line(&mut size)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            w.write_all(size.as_bytes())?;
            let n = u64::from_str_radix(size.trim().split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if n == 0 {
                // Trailers, then the empty line.
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l)? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    w.write_all(l.as_bytes())?;
                    if l.trim_end_matches(['\r', '\n']).is_empty() {
                        return w.flush();
                    }
                }
            }
            let copied = io::copy(&mut r.take(n + 2), w)?;
            if copied < n + 2 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            w.flush()?;
        },
    }
}

/// Writes a head, its `Connection` header replaced by `connection` (none when `None`).
fn write_head(w: &mut impl Write, lines: &[String], connection: Option<&str>) -> io::Result<()> {
    w.write_all(&head_bytes(lines, connection))?;
    w.flush()
}

/// A head's bytes, its `Connection` header replaced by `connection` (none when `None`).
fn head_bytes(lines: &[String], connection: Option<&str>) -> Vec<u8> {
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let is_conn = i > 0
            && l.split_once(':')
                .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"));
        if is_conn && connection.is_some() {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    if let Some(c) = connection {
        out.push_str(&format!("Connection: {c}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Serves one client connection: its requests, one after another, each to the next node.
fn serve(ctx: &Ctx, client: TcpStream) -> io::Result<()> {
    client.set_write_timeout(Some(IDLE_MAX))?;
    let _ = client.set_nodelay(true);
    let alive = Arc::new(AtomicBool::new(false));
    let mut reader = BufReader::new(Patient::new(&client, ctx, &alive, IDLE_MAX)?);
    let result = loop {
        match exchange(ctx, &client, &mut reader) {
            Ok(true) => continue,
            Ok(false) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let _ = client.shutdown(Shutdown::Both);
    result
}

/// One request and its answer. True when the client connection may carry another request.
fn exchange(ctx: &Ctx, client: &TcpStream, reader: &mut BufReader<Patient>) -> io::Result<bool> {
    let Some(req) = read_head(reader)? else {
        return Ok(false);
    };
    let method = req
        .first()
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("")
        .to_owned();
    let http10 = req.first().is_some_and(|l| l.ends_with("HTTP/1.0"));
    let upgrade = header(&req, "upgrade").is_some();
    // The client's wish for its own connection; the node's connection always closes.
    let client_keeps = !http10 && !has_token(&req, "connection", "close");
    let (_, node) = ctx.pick();
    let up = TcpStream::connect_timeout(&node, Duration::from_secs(5))?;
    up.set_write_timeout(Some(IDLE_MAX))?;
    let _ = up.set_nodelay(true);
    let mut up_w = up.try_clone()?;
    // An upgrade keeps its `Connection: Upgrade`; anything else closes after its answer.
    write_head(&mut up_w, &req, (!upgrade).then_some("close"))?;
    let req_framing = framing(&req, false);
    // Set when the answer is complete or failed: the body copy stops waiting for the client.
    let answered = Arc::new(AtomicBool::new(false));
    let mut up_r = BufReader::new(Patient::new(
        &up,
        ctx,
        &Arc::new(AtomicBool::new(false)),
        IDLE_MAX,
    )?);
    let (body_done, answer) = std::thread::scope(|s| {
        let body = s.spawn(|| {
            // The body goes to the node as it arrives; the node may answer before it is whole
            // (a declared size over the limit, a body that stops arriving).
            reader.get_mut().done = answered.clone();
            let r = copy_body(&mut *reader, &mut up_w, req_framing);
            reader.get_mut().done = Arc::new(AtomicBool::new(false));
            r.is_ok()
        });
        let answer = forward_answer(&mut up_r, client, &method, client_keeps && !upgrade);
        answered.store(true, Ordering::SeqCst);
        (body.join().unwrap_or(false), answer)
    });
    let kind = answer?;
    match kind {
        Answer::Done { keep } => {
            Ok(keep && body_done && client_keeps && !ctx.stop.load(Ordering::SeqCst))
        }
        Answer::Stream => {
            tunnel(ctx, client, reader, &mut up_r);
            Ok(false)
        }
    }
}

/// What was passed on to the client.
enum Answer {
    /// A whole answer; `keep` when the client connection may go on.
    Done { keep: bool },
    /// A stream's head (101 or an SSE answer): the rest is tunnelled.
    Stream,
}

/// Reads the node's answer (after any interim 1xx) and passes it on to the client.
fn forward_answer(
    up: &mut BufReader<Patient>,
    client: &TcpStream,
    method: &str,
    keep: bool,
) -> io::Result<Answer> {
    let mut cw = client.try_clone()?;
    loop {
        let head = read_head(up)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        let status: u16 = head
            .first()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status"))?;
        if status == 101 {
            write_head(&mut cw, &head, None)?;
            return Ok(Answer::Stream);
        }
        if (100..200).contains(&status) {
            write_head(&mut cw, &head, None)?;
            continue;
        }
        let sse = header(&head, "content-type")
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/event-stream"));
        if sse {
            write_head(&mut cw, &head, Some("close"))?;
            return Ok(Answer::Stream);
        }
        let how = if method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 {
            Framing::None
        } else {
            framing(&head, true)
        };
        // An answer delimited by the end of the connection ends the client's too.
        let keep = keep && !matches!(how, Framing::Close);
        let connection = Some(if keep { "keep-alive" } else { "close" });
        if let Framing::Length(n) = how {
            if n <= SMALL_BODY_MAX {
                // Head and body in one write, as the node wrote them: a client that takes the
                // body of a refused WebSocket upgrade only from the read that brought the head
                // (tungstenite) must find it there through the front too.
                let mut out = head_bytes(&head, connection);
                let start = out.len();
                out.resize(start + n as usize, 0);
                up.read_exact(&mut out[start..])?;
                cw.write_all(&out)?;
                cw.flush()?;
                return Ok(Answer::Done { keep });
            }
        }
        write_head(&mut cw, &head, connection)?;
        copy_body(up, &mut cw, how)?;
        return Ok(Answer::Done { keep });
    }
}

/// Passes bytes both ways between the client and the node until either side ends (or
/// [`STREAM_MAX`]), then closes both: a client that closes its stream closes the node's too,
/// which is what ends an agent's presence there.
fn tunnel(
    ctx: &Ctx,
    client: &TcpStream,
    reader: &mut BufReader<Patient>,
    up_r: &mut BufReader<Patient>,
) {
    let ended = Arc::new(AtomicBool::new(false));
    // What either side sent after its head and the front already read (a client's first
    // WebSocket frames, a node's first events) goes first.
    let pending = reader.buffer().to_vec();
    let pending_up = up_r.buffer().to_vec();
    let up = &up_r.get_ref().sock;
    let (Ok(mut up_w), Ok(mut cw)) = (up.try_clone(), client.try_clone()) else {
        return;
    };
    let (Ok(mut from_client), Ok(mut from_up)) = (
        Patient::new(client, ctx, &ended, STREAM_MAX),
        Patient::new(up, ctx, &ended, STREAM_MAX),
    ) else {
        return;
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            if up_w.write_all(&pending).is_ok() {
                let _ = io::copy(&mut from_client, &mut up_w);
            }
            ended.store(true, Ordering::SeqCst);
        });
        if cw.write_all(&pending_up).is_ok() {
            let _ = copy_flushing(&mut from_up, &mut cw);
        }
        ended.store(true, Ordering::SeqCst);
    });
    let _ = up.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
}

/// `io::copy` that flushes after every read (events must reach the client as they come).
fn copy_flushing(r: &mut impl Read, w: &mut impl Write) -> io::Result<()> {
    let mut buf = [0u8; 8192];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        w.write_all(&buf[..n])?;
        w.flush()?;
    }
}
