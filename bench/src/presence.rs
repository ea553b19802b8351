//! Item 10 (only when named, `--only presence`): presence fan-out (SPEC.md PRES-5). One agent
//! has granted a contact level to N watchers, each of which holds an SSE stream opened with
//! `presence=1`. The agent then changes its status, round after round (a heartbeat to come
//! online, then `busy` and `away` in turn, each signed just before it is sent), and each
//! watcher's stream records when the event arrives. A round's latency is from the moment the
//! relay answered the change (durable) to the event on each stream; rounds are spaced by more
//! than `presence.push_interval_ms`, so coalescing does not merge them.

use crate::agents::{now_ms, Agent};
use crate::relay_proc::Launcher;
use crate::report::{percentile, J};
use anyhow::{bail, Result};
use formica_protocol::{Availability, ContactLevel, Status};
use formica_relay::engine::events::Event;
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Registrations of the subject (agent 0) and the watchers, and the subject's grants.
fn build_fixture(data_dir: &Path, agents: &[Agent]) -> Result<()> {
    let mut log = crate::startup::new_log(data_dir)?;
    let at = now_ms();
    let mut records = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        records.push(crate::startup::registration(
            a,
            i,
            at,
            crate::agents::registration_ts(),
        )?);
    }
    for w in &agents[1..] {
        records.push(
            Event::ContactSet {
                at,
                owner: agents[0].handle.clone(),
                contact: w.handle.clone(),
                level: ContactLevel::Read,
            }
            .encode(),
        );
    }
    for c in records.chunks(10_000) {
        log.append(c)?;
    }
    Ok(())
}

/// The whole item: `watchers` streams, `rounds` changes of the subject's presence.
pub fn run(
    launcher: &Launcher,
    host: &formica_protocol::RelayHost,
    watchers: usize,
    rounds: usize,
) -> Result<J> {
    let agents: Vec<Agent> = (0..=watchers)
        .map(|i| Agent::new(i, host))
        .collect::<Result<_>>()?;
    let dir = launcher.work_dir.join("presence");
    build_fixture(&dir.join("data"), &agents)?;
    let relay = launcher.start_in(&dir, false)?;
    let addr = relay.addr.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let subject = &agents[0];
    let subject_handle = subject.handle.to_string();
    local.block_on(&rt, async {
        // Every watcher's arrivals: (round, instant).
        let arrivals: Rc<RefCell<Vec<(usize, Instant)>>> = Rc::default();
        let round_of: Rc<RefCell<usize>> = Rc::default();
        let path = "/v1/inbox/stream?presence=1";
        let mut opened = 0;
        for w in &agents[1..] {
            let auth = w.auth("GET", path, b"");
            let req = crate::http::request(
                "GET",
                path,
                &addr,
                &[("Authorization", &auth), ("Accept", "text/event-stream")],
                b"",
            );
            let conn = crate::http::Conn::connect(&addr).await?;
            let mut stream = match conn.open_stream(&req).await? {
                Ok(s) => s,
                Err(r) => bail!("opening a stream: {} {}", r.status, r.text()),
            };
            opened += 1;
            let (arrivals, round_of, want) =
                (arrivals.clone(), round_of.clone(), subject_handle.clone());
            tokio::task::spawn_local(async move {
                while let Ok(ev) = stream.next_event().await {
                    if ev.event == "presence" && ev.data.contains(&want) {
                        let r = *round_of.borrow();
                        arrivals.borrow_mut().push((r, Instant::now()));
                    }
                }
            });
        }
        let mut conn = crate::http::Conn::connect(&addr).await?;
        let mut lat_ms: Vec<f64> = Vec::new();
        let mut complete = 0usize;
        let mut round_ms: Vec<f64> = Vec::new();
        for r in 0..rounds {
            *round_of.borrow_mut() = r;
            let req = if r == 0 {
                let auth = subject.auth("POST", "/v1/presence/heartbeat", b"");
                crate::http::request(
                    "POST",
                    "/v1/presence/heartbeat",
                    &addr,
                    &[("Authorization", &auth)],
                    b"",
                )
            } else {
                let s = Status {
                    handle: subject.handle.clone(),
                    key: subject.key.public().key_id(),
                    ts: now_ms(),
                    expires: now_ms() + 3_600_000,
                    status: if r % 2 == 1 {
                        Availability::Busy
                    } else {
                        Availability::Away
                    },
                    note: None,
                }
                .sign(&subject.key)?;
                let auth = subject.auth("PUT", "/v1/presence", s.wire());
                crate::http::request(
                    "PUT",
                    "/v1/presence",
                    &addr,
                    &[("Authorization", &auth)],
                    s.wire(),
                )
            };
            let resp = conn.send(&req).await?;
            let answered = Instant::now();
            if resp.status != 200 {
                bail!("presence change: {} {}", resp.status, resp.text());
            }
            // Wait (bounded) for every stream, then past the coalescing interval.
            let deadline = answered + Duration::from_secs(10);
            loop {
                let n = arrivals.borrow().iter().filter(|(x, _)| *x == r).count();
                if n >= opened || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let got: Vec<Instant> = arrivals
                .borrow()
                .iter()
                .filter(|(x, _)| *x == r)
                .map(|(_, t)| *t)
                .collect();
            if got.len() >= opened {
                complete += 1;
            }
            let last = got.iter().max().copied().unwrap_or(answered);
            round_ms.push(last.saturating_duration_since(answered).as_secs_f64() * 1000.0);
            lat_ms.extend(
                got.iter()
                    .map(|t| t.saturating_duration_since(answered).as_secs_f64() * 1000.0),
            );
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        lat_ms.sort_by(|a, b| a.total_cmp(b));
        round_ms.sort_by(|a, b| a.total_cmp(b));
        let (rss, _) = crate::sys::rss(relay.pid)?;
        Ok(J::obj()
            .with("watchers", opened)
            .with("rounds", rounds)
            .with("rounds_every_stream_got_its_event", complete)
            .with("events", lat_ms.len())
            .with("event_latency_p50_ms", percentile(&lat_ms, 50.0))
            .with("event_latency_p99_ms", percentile(&lat_ms, 99.0))
            .with("round_last_event_p50_ms", percentile(&round_ms, 50.0))
            .with(
                "round_last_event_max_ms",
                round_ms.last().copied().unwrap_or(0.0),
            )
            .with("relay_rss_bytes_with_streams", rss))
    })
}
