//! What the edge tells an operator: per-request metrics (requests by route, method and status;
//! refusals by error code; latency histograms by route), a debug log line per refused request,
//! and the process metrics of `/metrics`.
//!
//! Every label set is bounded: routes are the router's templates (or `unmatched`), methods a
//! fixed list (or `OTHER`), statuses three digits, codes the error registry.

use super::Shared;
use crate::engine::error::ApiError;
use axum::extract::{MatchedPath, Request, State as AxState};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use formica_protocol::ErrorCode;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

/// Upper bounds (seconds) of the request latency histogram's buckets: from a cached read
/// (about a millisecond) to a request that waited for the body timeout (10 s).
const LATENCY_BUCKETS_S: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Counts per bucket of [`LATENCY_BUCKETS_S`] (not cumulative), then the overflow.
    buckets: [u64; LATENCY_BUCKETS_S.len() + 1],
    sum_s: f64,
    count: u64,
}

/// What is counted of one route (looked up by the route's text without allocating; a
/// route's entry is made once).
#[derive(Debug, Default)]
struct RouteStats {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: Histogram,
}

#[derive(Debug, Default)]
struct Inner {
    routes: BTreeMap<String, RouteStats>,
    refusals: BTreeMap<&'static str, u64>,
}

/// The request metrics of one relay.
#[derive(Debug)]
pub struct HttpMetrics {
    inner: Mutex<Inner>,
    started: SystemTime,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            inner: Mutex::default(),
            started: SystemTime::now(),
        }
    }
}

fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method as M;
    match *m {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::PATCH => "PATCH",
        _ => "OTHER",
    }
}

impl HttpMetrics {
    fn record(
        &self,
        route: &str,
        method: &'static str,
        status: u16,
        code: Option<ErrorCode>,
        secs: f64,
    ) {
        let b = LATENCY_BUCKETS_S
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = code {
            *i.refusals.entry(c.as_str()).or_default() += 1;
        }
        if !i.routes.contains_key(route) {
            i.routes.insert(route.to_owned(), RouteStats::default());
        }
        let Some(r) = i.routes.get_mut(route) else {
            return;
        };
        *r.requests.entry((method, status)).or_default() += 1;
        let h = &mut r.latency;
        h.buckets[b] += 1;
        h.sum_s += secs;
        h.count += 1;
    }

    /// The request and process metrics, in the Prometheus text format.
    pub fn render(&self) -> String {
        let i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = String::new();
        s.push_str("# HELP formica_http_requests_total Requests answered, by route template, method and status.\n# TYPE formica_http_requests_total counter\n");
        for (route, r) in &i.routes {
            for ((method, status), n) in &r.requests {
                let _ = writeln!(
                    s,
                    "formica_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
                );
            }
        }
        s.push_str("# HELP formica_http_refusals_total Requests refused, by error code.\n# TYPE formica_http_refusals_total counter\n");
        for (code, n) in &i.refusals {
            let _ = writeln!(s, "formica_http_refusals_total{{code=\"{code}\"}} {n}");
        }
        s.push_str("# HELP formica_http_request_duration_seconds Time from the request to the answer's head (a stream: to its start), by route template.\n# TYPE formica_http_request_duration_seconds histogram\n");
        for (route, h) in i.routes.iter().map(|(k, r)| (k, &r.latency)) {
            let mut cum = 0u64;
            for (le, n) in LATENCY_BUCKETS_S.iter().zip(h.buckets.iter()) {
                cum += n;
                let _ = writeln!(
                    s,
                    "formica_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cum}"
                );
            }
            let _ = writeln!(
                s,
                "formica_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\nformica_http_request_duration_seconds_sum{{route=\"{route}\"}} {}\nformica_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count, h.sum_s, h.count
            );
        }
        drop(i);
        s.push_str(&self.process());
        s
    }

    /// The standard process metrics (Linux `/proc`; a value that cannot be read is left out).
    fn process(&self) -> String {
        let mut s = String::new();
        let mut line = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        if let Ok(d) = self.started.duration_since(SystemTime::UNIX_EPOCH) {
            line(
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
                d.as_secs_f64(),
            );
        }
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // The fields after the command name (which is in parentheses and may hold spaces).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        if let (Some(u), Some(k)) = (field(14), field(15)) {
            let ticks = rustix::param::clock_ticks_per_second() as f64;
            line(
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time, in seconds.",
                (u + k) / ticks,
            );
        }
        if let Some(t) = field(20) {
            line("process_threads", "gauge", "Threads of the process.", t);
        }
        if let Some(rss) = field(24) {
            line(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory, in bytes.",
                rss * rustix::param::page_size() as f64,
            );
        }
        if let Some(vsz) = field(23) {
            line(
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory, in bytes.",
                vsz,
            );
        }
        if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
            line(
                "process_open_fds",
                "gauge",
                "Open file descriptors.",
                d.count() as f64,
            );
        }
        let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if let Some(max) = lim.current {
            line(
                "process_max_fds",
                "gauge",
                "Most file descriptors the process may open.",
                max as f64,
            );
        }
        s
    }
}

/// The endpoints answered while the database is out of reach: they read no table.
fn operational(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/ready" | "/metrics" | "/v1/openapi.json" | "/.well-known/formica"
    )
}

/// Middleware: counts every request by route, method and status, its error code if refused,
/// and its latency; logs a refusal at debug with its code. Several nodes on one store: answers
/// `unavailable` while the database is out of reach, and first catches up with what other
/// nodes acknowledged (`Engine::sync_with_nodes`), except for the operational endpoints.
pub(crate) async fn observe(AxState(app): AxState<Shared>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    // An Arc inside: cloning it does not copy the text.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let method = method_label(req.method());
    let operational = operational(req.uri().path());
    let resp = if app.engine.store_health.db_down() && !operational {
        // Several nodes on PostgreSQL, the database out of reach (or this node's state to be
        // loaded again): nothing is answered from a state that may not be what is durable.
        ApiError::new(
            ErrorCode::Unavailable,
            "the relay cannot reach its database now; nothing was accepted",
        )
        .with("retry_after_s", formica_protocol::Value::Int(5))
        .into_response()
    } else if operational {
        next.run(req).await
    } else {
        // Several nodes: first what other nodes acknowledged before this request arrived.
        match app.engine.sync_with_nodes().await {
            Ok(()) => next.run(req).await,
            Err(e) => e.into_response(),
        }
    };
    let route = matched
        .as_ref()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    let status = resp.status().as_u16();
    let code = resp.extensions().get::<ErrorCode>().copied();
    if let Some(c) = code {
        tracing::debug!(route = %route, method, status, code = c.as_str(), "request refused");
    }
    app.http_metrics
        .record(route, method, status, code, t0.elapsed().as_secs_f64());
    resp
}
