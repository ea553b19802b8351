//! Item 4: time from POST to delivery on an open Server-Sent Events stream, at a fixed offered
//! load. Messages are signed beforehand; each is sent at its scheduled moment (open loop: a
//! slow answer does not delay the schedule of other connections), and the receiver stamps
//! the moment the event arrives. Sender and receiver are the same process, so one clock.

use crate::agents::Agent;
use crate::http::{self, Conn};
use crate::report::{percentile, J};
use crate::sys::{CpuMeter, CpuUse};
use anyhow::{bail, Context, Result};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct LatencyResult {
    pub rate_per_s: f64,
    pub measured: usize,
    pub warmup: usize,
    pub lost: usize,
    /// POST written -> event read from the stream, milliseconds, sorted.
    pub delivery_ms: Vec<f64>,
    /// POST written -> 201 read, milliseconds, sorted.
    pub ack_ms: Vec<f64>,
    /// Actual send moment minus scheduled moment, milliseconds, sorted.
    pub send_lag_ms: Vec<f64>,
    pub streams: usize,
    pub connections: usize,
    pub cpu: CpuUse,
}

fn summary(sorted: &[f64]) -> J {
    J::obj()
        .with("p50_ms", percentile(sorted, 50.0))
        .with("p90_ms", percentile(sorted, 90.0))
        .with("p99_ms", percentile(sorted, 99.0))
        .with("p999_ms", percentile(sorted, 99.9))
        .with("max_ms", sorted.last().copied().unwrap_or(f64::NAN))
}

impl LatencyResult {
    pub fn p(&self, q: f64) -> f64 {
        percentile(&self.delivery_ms, q)
    }
    pub fn max(&self) -> f64 {
        self.delivery_ms.last().copied().unwrap_or(f64::NAN)
    }
    pub fn to_json(&self) -> J {
        J::obj()
            .with("offered_per_s", self.rate_per_s)
            .with("stream", "SSE GET /v1/inbox/stream")
            .with("streams", self.streams)
            .with("sender_connections", self.connections)
            .with("messages_measured", self.measured)
            .with("messages_warmup_excluded", self.warmup)
            .with("messages_lost", self.lost)
            .with("post_to_delivery", summary(&self.delivery_ms))
            .with("post_to_201", summary(&self.ack_ms))
            .with("send_lag_behind_schedule", summary(&self.send_lag_ms))
            .with("cpu", self.cpu.to_json())
    }
}

/// Finds the sequence number in an envelope whose text starts with `lat<8 digits>`.
fn seq_of(data: &str) -> Option<usize> {
    let i = data.find("\"text\":\"lat")? + "\"text\":\"lat".len();
    data.get(i..i + 8)?.parse().ok()
}

/// Measures with `streams` receivers (agents `streams..2*streams`, each with one SSE stream)
/// and `streams` senders (agents `0..streams`, sender i writes to receiver streams + i).
///
/// Envelopes are posted to `relay` and streams are opened on `stream_relay` (the same relay, or
/// the recipients' home relay when the two are federated).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    relay: &crate::relay_proc::RelayProc,
    stream_relay: &crate::relay_proc::RelayProc,
    agents: Arc<Vec<Agent>>,
    streams: usize,
    wires: Vec<Vec<u8>>,
    rate_per_s: f64,
    warmup: usize,
    connections: usize,
) -> Result<LatencyResult> {
    let addr = relay.addr.as_str();
    let stream_addr = stream_relay.addr.as_str();
    let n = wires.len();
    let recv: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    // (scheduled moment, moment the request was written) per message.
    type Sent = Vec<Option<(Instant, Instant)>>;
    let sent: Arc<Mutex<Sent>> = Arc::new(Mutex::new(vec![None; n]));
    let acked: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    // 1. Open every stream and see it answer 200 before anything is sent.
    let mut readers = tokio::task::JoinSet::new();
    for r in streams..2 * streams {
        let path = "/v1/inbox/stream";
        let auth = agents[r].auth("GET", path, b"");
        let req = http::request(
            "GET",
            path,
            stream_addr,
            &[("authorization", &auth), ("accept", "text/event-stream")],
            b"",
        );
        let mut sse = match Conn::connect(stream_addr).await?.open_stream(&req).await? {
            Ok(s) => s,
            Err(resp) => bail!(
                "stream for {}: {} {}",
                agents[r].handle,
                resp.status,
                resp.text()
            ),
        };
        let recv = recv.clone();
        readers.spawn(async move {
            loop {
                let ev = sse.next_event().await?;
                let now = Instant::now();
                if let Some(k) = seq_of(&ev.data) {
                    if let Some(slot) = recv.lock().unwrap_or_else(|p| p.into_inner()).get_mut(k) {
                        slot.get_or_insert(now);
                    }
                }
            }
            #[allow(unreachable_code)]
            Ok::<_, anyhow::Error>(())
        });
    }
    let reqs: Arc<Vec<Vec<u8>>> = Arc::new(
        wires
            .iter()
            .map(|w| {
                http::request(
                    "POST",
                    "/v1/envelopes",
                    addr,
                    &[("content-type", "application/json")],
                    w,
                )
            })
            .collect(),
    );
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Conn::connect(addr).await?);
    }
    // 2. Send on schedule: message k at t0 + k / rate, on connection k mod C.
    let meter = CpuMeter::start(relay.pid, &relay.cpus);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(50);
    let period = Duration::from_secs_f64(1.0 / rate_per_s);
    let mut senders = tokio::task::JoinSet::new();
    for (c, mut conn) in conns.into_iter().enumerate() {
        let (reqs, sent, acked) = (reqs.clone(), sent.clone(), acked.clone());
        senders.spawn(async move {
            let mut k = c;
            while k < reqs.len() {
                let due = t0 + period * k as u32;
                tokio::time::sleep_until(due).await;
                let at = Instant::now();
                sent.lock().unwrap_or_else(|p| p.into_inner())[k] = Some((due.into_std(), at));
                let r = conn.send(&reqs[k]).await?;
                if r.status != 201 {
                    bail!("message {k}: {} {}", r.status, r.text());
                }
                acked.lock().unwrap_or_else(|p| p.into_inner())[k] = Some(Instant::now());
                k += connections;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = senders.join_next().await {
        r.context("sender task")??;
    }
    // 3. Wait for the last deliveries (at most 10 s after the last answer).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let missing = recv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|x| x.is_none())
            .count();
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        if let Some(Ok(Err(e))) = readers.try_join_next() {
            return Err(e.context("stream reader"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu = meter.stop();
    readers.abort_all();
    let (recv, sent, acked) = (
        recv.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        sent.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        acked.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (mut delivery, mut ack, mut lag, mut lost) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for k in warmup..n {
        let Some((due, at)) = sent[k] else { continue };
        lag.push(ms(at.saturating_duration_since(due)));
        if let Some(a) = acked[k] {
            ack.push(ms(a - at));
        }
        match recv[k] {
            Some(r) => delivery.push(ms(r.saturating_duration_since(at))),
            None => lost += 1,
        }
    }
    for v in [&mut delivery, &mut ack, &mut lag] {
        v.sort_by(f64::total_cmp);
    }
    Ok(LatencyResult {
        rate_per_s,
        measured: n - warmup,
        warmup,
        lost,
        delivery_ms: delivery,
        ack_ms: ack,
        send_lag_ms: lag,
        streams,
        connections,
        cpu,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_sequence() {
        assert_eq!(
            super::seq_of(r#"{"payload":{"text":"lat00001234 lorem"},"ts":1}"#),
            Some(1234)
        );
        assert_eq!(super::seq_of(r#"{"payload":{"text":"bench"}}"#), None);
    }
}
