//! Real relay processes on loopback for restart and crash tests: start one on a port chosen by
//! the OS, talk to it with a minimal blocking HTTP/1.1 client, stop it with SIGTERM or SIGKILL.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use formica_protocol::auth::{Nonce, RequestAuth, RequestTarget};
use formica_protocol::envelope::{Envelope, MessageType, Payload, SignedEnvelope};
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::keylog::{KeyLogEntry, KeyOp};
use formica_protocol::{canon, pow, Handle, Object, RelayHost, SecretKey, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a relay may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Socket timeout of the test client.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub struct RelayProc {
    pub child: Option<Child>,
    pub addr: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// The host in handles (`relay.test`, or `127.0.0.1:<port>` for federation tests).
    pub public: String,
}

/// A config with one generous tier, so that load tests measure durability, not rate limits.
pub fn write_config(dir: &Path) -> PathBuf {
    write_config_with(dir, "")
}

/// Like `write_config`, with extra `[limits]` lines.
pub fn write_config_with(dir: &Path, extra_limits: &str) -> PathBuf {
    let p = dir.join("relay.toml");
    std::fs::write(
        &p,
        format!(
            r#"pow_difficulty = 4
[limits]
inbox_pending_max = 10000000
{extra_limits}
[[tiers]]
name = "test"
min_age_ms = 0
min_acked = 0
min_vouches = 0
rate_per_min = 1000000
payload_bytes_max = 32768
recipients_max = 16
contact_requests_per_hour = 1000
vouches_max = 10
reports_per_day = 100
may_send = ["message", "task_request", "task_result", "ack", "contact_request", "vouch", "report", "call", "conv_action", "x-*"]
"#
        ),
    )
    .unwrap();
    p
}

impl RelayProc {
    /// Starts `relay serve` on 127.0.0.1 with an OS-chosen port; `public_host` is fixed per
    /// data directory so that handles stay valid across restarts.
    pub fn start(dir: &Path, config: &Path) -> RelayProc {
        RelayProc::start_on(dir, config, "127.0.0.1:0", "relay.test")
    }

    /// Starts `relay serve` listening on `listen` with handles `@name@<public>`.
    pub fn start_on(dir: &Path, config: &Path, listen: &str, public: &str) -> RelayProc {
        RelayProc::start_logging(dir, config, listen, public, None)
    }

    /// [`start_on`](Self::start_on), with the log (at `info`) in the file `log` if given.
    pub fn start_logging(
        dir: &Path,
        config: &Path,
        listen: &str,
        public: &str,
        log: Option<&Path>,
    ) -> RelayProc {
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
            .args([
                "serve",
                "--listen",
                listen,
                "--public-host",
                public,
                "--data-dir",
            ])
            .arg(dir)
            .arg("--config")
            .arg(config)
            .env("FORMICA_LOG", if log.is_some() { "info" } else { "warn" })
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start relay");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("relay did not start within {START_TIMEOUT:?}")
        });
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("address in start line")
            .to_owned();
        RelayProc {
            child: Some(child),
            addr,
            dir: dir.to_owned(),
            config: config.to_owned(),
            public: public.to_owned(),
        }
    }

    pub fn host(&self) -> RelayHost {
        RelayHost::parse(&self.public).unwrap()
    }

    /// SIGTERM, then wait; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("relay did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<(u16, Value), String> {
        http(&self.addr, method, path, headers, body)
    }

    /// A body-less request whose answer is text (such as `/metrics`).
    pub fn request_text(&self, method: &str, path: &str) -> Result<(u16, String), String> {
        let (status, body) = http_raw(&self.addr, method, path, &[], b"")?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP/1.1 request with `Connection: close`; the answer's body as strict JSON.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<(u16, Value), String> {
    let (status, body) = http_raw(addr, method, path, headers, body)?;
    let v = if body.is_empty() {
        Value::Null
    } else {
        json::parse(
            &body,
            JsonLimits {
                bytes_max: 64 << 20,
                depth_max: 64,
            },
        )
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&body)))?
    };
    Ok((status, v))
}

/// One HTTP/1.1 request with `Connection: close`; the answer's body as bytes (de-chunked).
pub fn http_raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no header end")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn obj(members: Vec<(&str, Value)>) -> Value {
    let mut o = Object::new();
    for (k, v) in members {
        o.insert(k, v);
    }
    Value::Object(o)
}

/// An agent that talks to a relay process.
pub struct Peer {
    pub handle: Handle,
    pub key: SecretKey,
    pub host: RelayHost,
    nonce: std::sync::atomic::AtomicU64,
}

impl Peer {
    /// An agent that is not registered through a relay process (for example one of a test
    /// double's agents): its handle and key only.
    pub fn offline(handle: Handle, key: SecretKey, host: RelayHost) -> Peer {
        Peer {
            handle,
            key,
            host,
            nonce: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn register(r: &RelayProc, name: &str, seed: u8) -> Peer {
        let key = SecretKey::from_seed(&[seed; 32]);
        let host = r.host();
        let handle = Handle::parse(&format!("@{name}@{host}")).unwrap();
        let (st, ch) = r.request("POST", "/v1/challenges", &[], b"{}").unwrap();
        assert_eq!(st, 201);
        let o = ch.as_object().unwrap();
        let challenge =
            pow::Challenge::parse_hex(o.get("challenge").unwrap().as_str().unwrap()).unwrap();
        let d = o.get("difficulty").unwrap().as_i64().unwrap() as u32;
        let prefix = pow::preimage_prefix(&host, &handle, &key.public(), &challenge, d);
        let nonce = pow::mine(&prefix, d, 0, 1, 1 << 26).unwrap();
        let entry = KeyLogEntry {
            handle: handle.clone(),
            seq: 0,
            prev: None,
            ts: now_ms(),
            op: KeyOp::Register {
                key: key.public(),
                recovery: None,
            },
            signer: key.public().key_id(),
        }
        .sign(&key, &[])
        .unwrap();
        let body = obj(vec![
            ("entry", entry.value().clone()),
            (
                "pow",
                pow::PowProof {
                    challenge,
                    difficulty: d,
                    nonce,
                }
                .to_value(),
            ),
        ]);
        let (st, resp) = r
            .request("POST", "/v1/register", &[], &canon::canonicalize(&body))
            .unwrap();
        assert_eq!(st, 201, "{resp:?}");
        Peer {
            handle,
            key,
            host,
            nonce: std::sync::atomic::AtomicU64::new(1),
        }
    }

    pub fn auth(&self, method: &str, path: &str, body: &[u8]) -> (&'static str, String) {
        let n = self.nonce.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&n.to_le_bytes());
        nonce[8..].copy_from_slice(&now_ms().to_le_bytes());
        (
            "authorization",
            RequestAuth::sign(
                &self.key,
                &self.handle,
                now_ms(),
                Nonce(nonce),
                &RequestTarget { method, path, body },
                &self.host,
            ),
        )
    }

    pub fn authed(&self, r: &RelayProc, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        let h = self.auth(method, path, body);
        r.request(method, path, &[(h.0, h.1)], body).unwrap()
    }

    pub fn allow(&self, r: &RelayProc, who: &Handle) {
        let body = canon::canonicalize(&obj(vec![("level", "task".into())]));
        let (st, v) = self.authed(r, "PUT", &format!("/v1/contacts/{who}"), &body);
        assert_eq!(st, 200, "{v:?}");
    }

    pub fn message(&self, to: &Handle, text: &str) -> SignedEnvelope {
        Envelope {
            msg_type: MessageType::Message,
            type_version: 1,
            from: self.handle.clone(),
            key: self.key.public().key_id(),
            to: vec![to.clone()],
            ts: now_ms(),
            corr: None,
            ack_by: None,
            conv: None,
            payload: Payload::Message {
                text: text.into(),
                data: None,
            },
        }
        .sign(&self.key)
        .unwrap()
    }

    /// All inbox items (cursor, envelope id).
    pub fn inbox(&self, r: &RelayProc) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut after = "0".to_owned();
        loop {
            let path = format!("/v1/inbox?after={after}");
            let (st, v) = self.authed(r, "GET", &path, b"");
            assert_eq!(st, 200, "{v:?}");
            let items = v
                .as_object()
                .unwrap()
                .get("items")
                .unwrap()
                .as_array()
                .unwrap()
                .to_vec();
            if items.is_empty() {
                return out;
            }
            for i in &items {
                let o = i.as_object().unwrap();
                let cursor = o.get("cursor").unwrap().as_str().unwrap().to_owned();
                let id = o
                    .get("envelope")
                    .unwrap()
                    .as_object()
                    .unwrap()
                    .get("id")
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned();
                after = cursor.clone();
                out.push((cursor, id));
            }
        }
    }
}

pub fn post_envelope(r: &RelayProc, se: &SignedEnvelope) -> Result<(u16, Value), String> {
    r.request(
        "POST",
        "/v1/envelopes",
        &[("content-type", "application/json".into())],
        &se.wire_bytes(),
    )
}

pub fn result_of(v: &Value) -> String {
    v.as_object()
        .and_then(|o| o.get("result"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// The resident set size of process `pid`, in KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
