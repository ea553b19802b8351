//! Items 2 and 3: pre-signed envelopes posted over keep-alive connections, closed loop (each
//! connection sends its next request when the previous answer arrived), to the single and the
//! batch endpoint, counting only envelopes the relay answered `accepted`.

use crate::http::{self, Conn};
use crate::report::J;
use crate::sys::{CpuMeter, CpuUse};
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Single,
    Batch,
}

impl Endpoint {
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Single => "single",
            Endpoint::Batch => "batch",
        }
    }
}

/// Builds every request of a run up front: one envelope per request (single) or `batch` per
/// request (`{"envelopes":[...]}`).
pub fn build_requests(
    addr: &str,
    wires: &[Vec<u8>],
    endpoint: Endpoint,
    batch: usize,
) -> Vec<Vec<u8>> {
    let ct = [("content-type", "application/json")];
    match endpoint {
        Endpoint::Single => wires
            .iter()
            .map(|w| http::request("POST", "/v1/envelopes", addr, &ct, w))
            .collect(),
        Endpoint::Batch => wires
            .chunks(batch)
            .map(|c| {
                let mut body = b"{\"envelopes\":[".to_vec();
                for (i, w) in c.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(w);
                }
                body.extend_from_slice(b"]}");
                http::request("POST", "/v1/envelopes/batch", addr, &ct, &body)
            })
            .collect(),
    }
}

#[derive(Debug, Clone)]
pub struct IngestResult {
    pub endpoint: Endpoint,
    pub relaxed_fsync: bool,
    pub envelopes: usize,
    pub accepted: u64,
    pub rejected: u64,
    pub first_rejection: Option<String>,
    pub elapsed: Duration,
    pub connections: usize,
    pub cpu: CpuUse,
    /// Syncs to disk the relay's store made during the phase, and its log commits
    /// (`formica_store_syncs_total`, `formica_log_commits_total`): the check that the relaxed
    /// mode does not sync and the durable one syncs each commit.
    /// `None` for a relay that does not publish the counter (an older build).
    pub syncs: Option<u64>,
    pub commits: Option<u64>,
}

impl IngestResult {
    pub fn accepted_per_s(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64()
    }

    pub fn to_json(&self, bound_per_s: f64, relay_cores: usize) -> J {
        J::obj()
            .with("endpoint", self.endpoint.name())
            .with(
                "fsync",
                if self.relaxed_fsync {
                    "relaxed (--unsafe-relaxed-fsync-benchmark-only)"
                } else {
                    "per acknowledgement (group commit)"
                },
            )
            .with("envelopes_sent", self.envelopes)
            .with("accepted", self.accepted)
            .with("rejected", self.rejected)
            .with("first_rejection", self.first_rejection.clone())
            .with("seconds", self.elapsed.as_secs_f64())
            .with("connections", self.connections)
            .with("accepted_per_s", self.accepted_per_s())
            .with(
                "ratio_to_bound_x_cores",
                self.accepted_per_s() / (bound_per_s * relay_cores as f64),
            )
            .with("cpu", self.cpu.to_json())
            .with("store_syncs", self.syncs)
            .with("log_commits", self.commits)
    }

    /// True when the phase synced as its mode says: none relaxed, at least one per commit
    /// durable.
    pub fn syncs_as_promised(&self) -> bool {
        match (self.syncs, self.commits) {
            (Some(s), _) if self.relaxed_fsync => s == 0,
            (Some(s), Some(c)) => s >= c && c > 0,
            _ => false,
        }
    }
}

/// A counter of the relay's `/metrics`, read on a connection of its own.
pub async fn relay_metric(addr: &str, name: &str) -> Result<u64> {
    let mut c = Conn::connect(addr).await?;
    let r = c
        .send(&crate::http::request("GET", "/metrics", addr, &[], b""))
        .await?;
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {name} in the relay's /metrics"))
}

/// Counts `"result":"accepted"` in an answer (a batch answer has one per envelope).
pub fn count_accepted(body: &[u8]) -> u64 {
    let pat = b"\"result\":\"accepted\"";
    body.windows(pat.len()).filter(|w| *w == pat).count() as u64
}

/// Sends `requests` (each carrying `per_request` envelopes) on `conns` connections.
pub async fn run(
    relay: &crate::relay_proc::RelayProc,
    requests: Arc<Vec<Vec<u8>>>,
    per_request: usize,
    envelopes: usize,
    conns: usize,
    endpoint: Endpoint,
    relaxed_fsync: bool,
) -> Result<IngestResult> {
    let addr = relay.addr.as_str();
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let first_rej: Arc<Mutex<Option<String>>> = Arc::default();
    // Connect everything before the clock starts.
    let mut cs = Vec::with_capacity(conns);
    for _ in 0..conns {
        cs.push(Conn::connect(addr).await?);
    }
    let syncs0 = relay_metric(addr, "formica_store_syncs_total").await.ok();
    let commits0 = relay_metric(addr, "formica_log_commits_total").await.ok();
    let meter = CpuMeter::start(relay.pid, &relay.cpus);
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in cs {
        let (next, accepted, rejected, first_rej, requests) = (
            next.clone(),
            accepted.clone(),
            rejected.clone(),
            first_rej.clone(),
            requests.clone(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(req) = requests.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                let r = c.send(req).await?;
                let ok = if r.status == 201 || r.status == 200 {
                    count_accepted(&r.body)
                } else {
                    0
                };
                accepted.fetch_add(ok, Ordering::Relaxed);
                // Envelopes in request i (the last batch may be short).
                let expected = per_request.min(envelopes.saturating_sub(i * per_request)) as u64;
                let bad = expected.saturating_sub(ok);
                if bad > 0 {
                    rejected.fetch_add(bad, Ordering::Relaxed);
                    let mut f = first_rej.lock().unwrap_or_else(|p| p.into_inner());
                    if f.is_none() {
                        *f = Some(format!(
                            "{} {}",
                            r.status,
                            r.text().chars().take(400).collect::<String>()
                        ));
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("ingest task")??;
    }
    let elapsed = t0.elapsed();
    let cpu = meter.stop();
    let syncs = match (
        syncs0,
        relay_metric(addr, "formica_store_syncs_total").await.ok(),
    ) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let commits = match (
        commits0,
        relay_metric(addr, "formica_log_commits_total").await.ok(),
    ) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let first_rejection = first_rej.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(IngestResult {
        endpoint,
        relaxed_fsync,
        envelopes,
        accepted: accepted.load(Ordering::Relaxed),
        rejected: rejected.load(Ordering::Relaxed),
        first_rejection,
        elapsed,
        connections: conns,
        cpu,
        syncs,
        commits,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_results() {
        assert_eq!(super::count_accepted(br#"{"results":[{"id":"x","index":0,"result":"accepted"},{"index":1,"result":"accepted"}]}"#), 2);
        assert_eq!(
            super::count_accepted(br#"{"id":"x","result":"duplicate"}"#),
            0
        );
    }
}
