//! The suite's HTTP side: plain requests over `ureq`, answers kept as raw bytes next to their
//! strict-JSON parse (JSON-12), and the checks every answer of the relay is held to: the status
//! and body of an error (HTTP-4, HTTP-5, ERR-1, ERR-2), the content type (HTTP-3).
//!
//! Every request has a time limit, so no case can hang on a silent relay.

use crate::verdict::{Stop, R};
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::{ErrorCode, Value};
use std::io::Read;
use std::time::Duration;

/// Longest time to connect to the relay.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Longest time for one plain request, answer included.
pub const REQUEST_TIMEOUT_MS: u64 = 20_000;
/// Longest time a streaming read may wait for the next bytes.
pub const STREAM_READ_TIMEOUT_MS: u64 = 1_000;
/// Largest answer body read.
pub const RESPONSE_BYTES_MAX: u64 = 32 << 20;
/// How much of a body is quoted in a failure reason.
pub const QUOTE_BYTES_MAX: usize = 300;

/// A request body.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    None,
    /// Sent with `Content-Length`.
    Bytes(&'a [u8]),
    /// Sent with `Transfer-Encoding: chunked` (HTTP-2: the size limit holds for chunked bodies).
    Chunked(&'a [u8]),
}

/// One relay, by base URL.
#[derive(Debug, Clone)]
pub struct Http {
    base: String,
    authority: String,
    tls: bool,
    agent: ureq::Agent,
    stream_agent: ureq::Agent,
}

/// A relay's answer.
#[derive(Debug, Clone)]
pub struct Resp {
    /// `METHOD path`, for failure reasons.
    pub what: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub raw: Vec<u8>,
    /// The body under the strict profile, or why it is not a strict-JSON document.
    pub json: Result<Value, String>,
}

fn build_agent(read_timeout_ms: Option<u64>) -> ureq::Agent {
    let mut b = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .redirects(0)
        // No connection reuse: a relay may close an idle keep-alive connection at any time
        // (for example after header_read_timeout_ms), and a POST on such a connection would
        // fail in a way the suite cannot tell from a relay fault.
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .user_agent(concat!("formica-conformance/", env!("CARGO_PKG_VERSION")));
    b = match read_timeout_ms {
        Some(ms) => b.timeout_read(Duration::from_millis(ms)),
        None => b.timeout(Duration::from_millis(REQUEST_TIMEOUT_MS)),
    };
    b.build()
}

/// Parses a body under the strict profile with generous limits (answers are not bounded by
/// the request limits, only by [`RESPONSE_BYTES_MAX`]).
pub fn strict_parse(bytes: &[u8]) -> Result<Value, String> {
    json::parse(
        bytes,
        JsonLimits {
            bytes_max: RESPONSE_BYTES_MAX as usize,
            depth_max: 128,
        },
    )
    .map_err(|e| format!("{} ({e})", e.code()))
}

/// A short printable excerpt of a body.
pub fn quote(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.len() <= QUOTE_BYTES_MAX {
        return s.into_owned();
    }
    let mut end = QUOTE_BYTES_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], bytes.len())
}

impl Http {
    /// A client for `http://host[:port]` or `https://host[:port]` (no path).
    pub fn new(url: &str) -> Result<Http, String> {
        let base = url.trim_end_matches('/');
        let (tls, rest) = if let Some(r) = base.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = base.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!(
                "relay URL {url:?} must start with http:// or https://"
            ));
        };
        if rest.is_empty() || rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(format!(
                "relay URL {url:?} must be scheme://host[:port] with no path"
            ));
        }
        Ok(Http {
            base: base.to_owned(),
            authority: rest.to_owned(),
            tls,
            agent: build_agent(None),
            stream_agent: build_agent(Some(STREAM_READ_TIMEOUT_MS)),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }
    /// `host[:port]` as contacted.
    pub fn authority(&self) -> &str {
        &self.authority
    }
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Sends one request. `path` is sent exactly as given (it is what a signature covers).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Body<'_>,
    ) -> R<Resp> {
        let resp = self.start(&self.agent, method, path, headers, body)?;
        let what = format!("{method} {path}");
        Resp::read(what, resp)
    }

    pub fn get(&self, path: &str) -> R<Resp> {
        self.send("GET", path, &[], Body::None)
    }

    pub fn post(&self, path: &str, body: &[u8]) -> R<Resp> {
        self.send(
            "POST",
            path,
            &[("content-type", "application/json".into())],
            Body::Bytes(body),
        )
    }

    /// Starts a request whose body is read incrementally (SSE): each read waits at most
    /// [`STREAM_READ_TIMEOUT_MS`].
    pub fn open_stream(&self, path: &str, headers: &[(&str, String)]) -> R<ureq::Response> {
        self.start(&self.stream_agent, "GET", path, headers, Body::None)
    }

    fn start(
        &self,
        agent: &ureq::Agent,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Body<'_>,
    ) -> R<ureq::Response> {
        let url = format!("{}{}", self.base, path);
        let mut req = agent.request(method, &url);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let res = match body {
            Body::None => req.call(),
            Body::Bytes(b) => req.send_bytes(b),
            Body::Chunked(b) => req.send(std::io::Cursor::new(b.to_vec())),
        };
        match res {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(_, r)) => Ok(r),
            Err(ureq::Error::Transport(t)) => {
                Err(Stop::Fail(format!("{method} {path}: transport error: {t}")))
            }
        }
    }
}

impl Resp {
    fn read(what: String, resp: ureq::Response) -> R<Resp> {
        let status = resp.status();
        let headers = resp
            .headers_names()
            .into_iter()
            .filter_map(|n| {
                resp.header(&n)
                    .map(|v| (n.to_ascii_lowercase(), v.to_owned()))
            })
            .collect();
        let mut raw = Vec::new();
        resp.into_reader()
            .take(RESPONSE_BYTES_MAX)
            .read_to_end(&mut raw)
            .map_err(|e| Stop::Fail(format!("{what}: reading the answer: {e}")))?;
        let json = strict_parse(&raw);
        Ok(Resp {
            what,
            status,
            headers,
            raw,
            json,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let n = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.as_str())
    }

    /// `STATUS body-excerpt`, for failure reasons.
    pub fn brief(&self) -> String {
        format!("{} {}", self.status, quote(&self.raw))
    }

    /// The body as strict JSON; a body that is not is a failure of JSON-12.
    pub fn body(&self) -> R<&Value> {
        self.json.as_ref().map_err(|e| {
            Stop::Fail(format!(
                "{}: the answer is not a strict-JSON document (JSON-12): {e}: {}",
                self.what,
                self.brief()
            ))
        })
    }

    /// A member of the body object.
    pub fn member(&self, key: &str) -> R<&Value> {
        self.body()?
            .as_object()
            .and_then(|o| o.get(key))
            .ok_or_else(|| {
                Stop::Fail(format!(
                    "{}: the answer has no `{key}`: {}",
                    self.what,
                    self.brief()
                ))
            })
    }

    pub fn str_member(&self, key: &str) -> R<&str> {
        self.member(key)?.as_str().ok_or_else(|| {
            Stop::Fail(format!(
                "{}: `{key}` is not a string: {}",
                self.what,
                self.brief()
            ))
        })
    }

    pub fn int_member(&self, key: &str) -> R<i64> {
        self.member(key)?.as_i64().ok_or_else(|| {
            Stop::Fail(format!(
                "{}: `{key}` is not an integer: {}",
                self.what,
                self.brief()
            ))
        })
    }

    /// The error code of an HTTP-4 body, if it has one.
    pub fn code(&self) -> Option<&str> {
        self.json
            .as_ref()
            .ok()?
            .as_object()?
            .get("error")?
            .as_object()?
            .get("code")?
            .as_str()
    }

    /// Fails unless the status is `status`.
    pub fn expect_status(&self, status: u16) -> R<&Resp> {
        if self.status != status {
            return Err(Stop::Fail(format!(
                "{}: expected status {status}, got {}",
                self.what,
                self.brief()
            )));
        }
        Ok(self)
    }

    /// Fails unless this is a success with `status` and a JSON body (HTTP-3).
    pub fn expect_json(&self, status: u16) -> R<&Value> {
        self.expect_status(status)?;
        self.check_json_type()?;
        self.body()
    }

    /// HTTP-3: JSON answers say `Content-Type: application/json`.
    pub fn check_json_type(&self) -> R<()> {
        let ct = self.header("content-type").unwrap_or("");
        let main = ct.split(';').next().unwrap_or("").trim();
        if !main.eq_ignore_ascii_case("application/json") {
            return Err(Stop::Fail(format!(
                "{}: Content-Type is {ct:?}, not application/json (HTTP-3)",
                self.what
            )));
        }
        Ok(())
    }

    /// Fails unless this is the error answer of `code`: the status that section 14 assigns to
    /// it (HTTP-5, ERR-1), the HTTP-4 body with that code, its retry class (ERR-2), the extra
    /// members its code requires (HTTP-4 table) and a `Retry-After` header equal to
    /// `retry_after_s` (HTTP-5).
    pub fn expect_error(&self, code: ErrorCode) -> R<&Resp> {
        let want = format!("{} {}", code.http_status(), code.as_str());
        let got_code = self.code().unwrap_or("");
        if self.status != code.http_status() || got_code != code.as_str() {
            return Err(Stop::Fail(format!(
                "{}: expected {want}, got {}",
                self.what,
                self.brief()
            )));
        }
        self.check_error_body()?;
        Ok(self)
    }

    /// Like [`expect_error`](Self::expect_error), and the `field` member equals `field`.
    pub fn expect_error_field(&self, code: ErrorCode, field: &str) -> R<&Resp> {
        self.expect_error(code)?;
        let got = self
            .error_member("field")
            .and_then(Value::as_str)
            .unwrap_or("");
        if got != field {
            return Err(Stop::Fail(format!(
                "{}: {} with field {got:?}, expected field {field:?} (HTTP-4)",
                self.what,
                code.as_str()
            )));
        }
        Ok(self)
    }

    /// A member of the `error` object.
    pub fn error_member(&self, key: &str) -> Option<&Value> {
        self.json
            .as_ref()
            .ok()?
            .as_object()?
            .get("error")?
            .as_object()?
            .get(key)
    }

    /// Checks the error body's shape against its own code (HTTP-4, ERR-1, ERR-2, HTTP-5).
    pub fn check_error_body(&self) -> R<()> {
        let fail = |why: String| {
            Err(Stop::Fail(format!(
                "{}: error answer {}: {why}",
                self.what,
                self.brief()
            )))
        };
        self.check_json_type()?;
        let body = self.body()?;
        let Some(top) = body.as_object() else {
            return fail("the body is not an object (HTTP-4)".into());
        };
        let Some(err) = top.get("error").and_then(Value::as_object) else {
            return fail("no `error` object (HTTP-4)".into());
        };
        let Some(code_s) = err.get("code").and_then(Value::as_str) else {
            return fail("no `error.code` string (HTTP-4)".into());
        };
        let Some(code) = ErrorCode::from_wire(code_s) else {
            return fail(format!("`{code_s}` is not a code of the registry (ERR-1)"));
        };
        if self.status != code.http_status() {
            return fail(format!(
                "{code_s} must be answered with status {} (HTTP-5, ERR-1)",
                code.http_status()
            ));
        }
        if err.get("message").and_then(Value::as_str).is_none() {
            return fail("no `error.message` string (HTTP-4)".into());
        }
        match err.get("retry").and_then(Value::as_str) {
            Some(r) if r == code.retry().as_str() => {}
            other => {
                return fail(format!(
                    "retry is {other:?}, the registry says {:?} for {code_s} (ERR-2)",
                    code.retry().as_str()
                ))
            }
        }
        use ErrorCode as E;
        let needs: &[&str] = match code {
            E::Stale | E::Future => &["server_time"],
            E::RateLimited | E::InboxFull | E::Unavailable | E::StorageFull => &["retry_after_s"],
            E::CursorTooOld => &["oldest"],
            E::MissingField | E::UnknownField | E::InvalidField | E::InvalidHandle => &["field"],
            _ => &[],
        };
        for m in needs {
            let ok = match *m {
                "server_time" | "retry_after_s" => {
                    err.get(m).and_then(Value::as_i64).is_some_and(|n| n >= 0)
                }
                _ => err.get(m).and_then(Value::as_str).is_some(),
            };
            if !ok {
                return fail(format!("{code_s} must carry `{m}` (HTTP-4)"));
            }
        }
        if let Some(n) = err.get("retry_after_s").and_then(Value::as_i64) {
            match self.header("retry-after").map(str::trim) {
                Some(h) if h == n.to_string() => {}
                other => {
                    return fail(format!(
                        "Retry-After header is {other:?}, retry_after_s is {n} (HTTP-5)"
                    ))
                }
            }
        }
        Ok(())
    }
}
