//! Item 5: resident memory of a relay holding many idle streaming subscribers. Each
//! subscriber is a distinct registered agent with one authenticated SSE stream that receives
//! nothing; the relay's `VmRSS` is read before and after the streams are opened.

use crate::agents::Agent;
use crate::http::{self, Conn, SseStream};
use crate::report::J;
use anyhow::{bail, Context, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct MemoryResult {
    pub subscribers: usize,
    pub rss_registered: u64,
    pub rss_with_streams: u64,
    pub hwm: u64,
    pub open_seconds: f64,
}

impl MemoryResult {
    pub fn per_subscriber(&self) -> f64 {
        self.rss_with_streams.saturating_sub(self.rss_registered) as f64 / self.subscribers as f64
    }
    pub fn to_json(&self) -> J {
        J::obj()
            .with("subscribers", self.subscribers)
            .with(
                "stream",
                "SSE GET /v1/inbox/stream, one per registered agent, idle",
            )
            .with(
                "rss_bytes_agents_registered_no_streams",
                self.rss_registered,
            )
            .with("rss_bytes_with_streams", self.rss_with_streams)
            .with("rss_bytes_peak", self.hwm)
            .with("bytes_per_subscriber", self.per_subscriber())
            .with("rss_mb_with_streams", self.rss_with_streams as f64 / 1e6)
            .with("seconds_to_open_all", self.open_seconds)
    }
}

/// Opens one stream per agent in `agents` (all registered) and measures the relay's memory.
pub async fn run(
    addr: &str,
    relay_pid: u32,
    agents: Arc<Vec<Agent>>,
) -> Result<(MemoryResult, Vec<SseStream>)> {
    // Let the registrations' allocations settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_registered, _) = crate::sys::rss(relay_pid)?;
    let n = agents.len();
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (agents, next, addr) = (agents.clone(), next.clone(), addr.to_owned());
        tasks.spawn(async move {
            let mut held = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= agents.len() {
                    return Ok::<_, anyhow::Error>(held);
                }
                let path = "/v1/inbox/stream";
                let auth = agents[i].auth("GET", path, b"");
                let req = http::request(
                    "GET",
                    path,
                    &addr,
                    &[("authorization", &auth), ("accept", "text/event-stream")],
                    b"",
                );
                match Conn::connect(&addr).await?.open_stream(&req).await? {
                    Ok(s) => held.push(s),
                    Err(r) => bail!("stream {i}: {} {}", r.status, r.text()),
                }
            }
        });
    }
    let mut streams = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        streams.extend(r.context("stream task")??);
    }
    let open_seconds = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_with_streams, hwm) = crate::sys::rss(relay_pid)?;
    Ok((
        MemoryResult {
            subscribers: streams.len(),
            rss_registered,
            rss_with_streams,
            hwm,
            open_seconds,
        },
        streams,
    ))
}
