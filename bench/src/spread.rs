//! Closed-loop ingest spread over several nodes of one relay (the `nodes` item): the
//! pre-signed envelopes split request by request between the nodes, each node's share sent on
//! connections of its own, all at once; as item 2's runner (`ingest::run`) does for one relay.

use crate::http::Conn;
use crate::ingest;
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Splits pre-signed envelopes between `nodes` nodes, request by request (`per` envelopes a
/// request): request `j` goes to node `j % nodes`, so each node gets every `nodes`-th request.
pub fn split_wires(wires: &[Vec<u8>], per: usize, nodes: usize) -> Vec<Vec<Vec<u8>>> {
    let (per, nodes) = (per.max(1), nodes.max(1));
    let mut out = vec![Vec::new(); nodes];
    for (j, chunk) in wires.chunks(per).enumerate() {
        out[j % nodes].extend(chunk.iter().cloned());
    }
    out
}

/// One node's share of a run: its requests, sent on its own connections.
#[derive(Debug)]
pub struct Target {
    pub addr: String,
    pub requests: Arc<Vec<Vec<u8>>>,
    pub envelopes: usize,
    pub conns: usize,
}

/// What the closed loop counted.
#[derive(Debug, Default)]
pub struct Driven {
    pub accepted: u64,
    pub rejected: u64,
    pub first_rejection: Option<String>,
}

/// Closed-loop ingest on every target at once: each connection sends its node's next request
/// when the previous answer arrived; returns when every node's requests were answered. Every
/// connection is opened before the first request.
pub async fn drive(targets: Vec<Target>, per: usize) -> Result<Driven> {
    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let first: Arc<Mutex<Option<String>>> = Arc::default();
    let mut opened = Vec::new();
    for t in &targets {
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..t.conns {
            opened.push((Conn::connect(&t.addr).await?, t, next.clone()));
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (mut c, t, next) in opened {
        let (requests, envelopes) = (t.requests.clone(), t.envelopes);
        let (accepted, rejected, first) = (accepted.clone(), rejected.clone(), first.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(req) = requests.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                let r = c.send(req).await?;
                let ok = if r.status == 201 || r.status == 200 {
                    ingest::count_accepted(&r.body)
                } else {
                    0
                };
                accepted.fetch_add(ok, Ordering::Relaxed);
                let expected = per.min(envelopes.saturating_sub(i * per)) as u64;
                let bad = expected.saturating_sub(ok);
                if bad > 0 {
                    rejected.fetch_add(bad, Ordering::Relaxed);
                    let mut f = first.lock().unwrap_or_else(|p| p.into_inner());
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
    let first_rejection = first.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Driven {
        accepted: accepted.load(Ordering::Relaxed),
        rejected: rejected.load(Ordering::Relaxed),
        first_rejection,
    })
}

#[cfg(test)]
mod tests {
    use super::split_wires;

    fn wires(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i as u8]).collect()
    }

    #[test]
    fn split_is_even_and_keeps_every_envelope_once() {
        let w = wires(10);
        let s = split_wires(&w, 1, 2);
        assert_eq!(s[0], vec![vec![0], vec![2], vec![4], vec![6], vec![8]]);
        assert_eq!(s[1].len(), 5);
        // Batches of 3: requests [0..3) [3..6) [6..9) [9]; node 0 gets the first and third.
        let b = split_wires(&w, 3, 2);
        assert_eq!(
            b[0],
            vec![vec![0], vec![1], vec![2], vec![6], vec![7], vec![8]]
        );
        assert_eq!(b[1], vec![vec![3], vec![4], vec![5], vec![9]]);
        let one = split_wires(&w, 100, 1);
        assert_eq!(one, vec![w]);
    }
}
