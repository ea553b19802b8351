//! Forwarding (FED-9, FED-10): one worker per active peer sends the head of its durable queue in
//! signed, idempotent transfers, in order, retried with exponential backoff and jitter behind
//! a circuit breaker; every outcome goes to the writer (forwarded, dead-lettered).

use super::client::answer_code;
use super::Federation;
use crate::engine::decide::Command;
use crate::engine::events::PeerStatus;
use crate::engine::policy::FederationPolicy;
use formica_protocol::envelope::MessageId;
use formica_protocol::{ErrorCode, RelayHost, Value};
use std::collections::HashMap;
use std::time::Duration;

/// How often an idle forwarding worker looks at its queue when nothing wakes it (the writer wakes
/// the workers after every batch that stored an envelope).
pub const WORKER_IDLE_MS: u64 = 50;
/// How often the supervisor looks for peers without a worker.
pub const SUPERVISOR_MS: u64 = 200;

impl Federation {
    /// Starts one forwarding worker per active peer, and new ones as peers become active.
    /// Runs until the relay stops.
    pub async fn run_forwarding(self) {
        if !self.engine.policy.federation.enabled {
            return;
        }
        let mut workers: HashMap<(RelayHost, bool), tokio::task::JoinHandle<()>> = HashMap::new();
        let mut stopping = self.engine.stopping.subscribe();
        loop {
            if *stopping.borrow() {
                return;
            }
            let active: Vec<RelayHost> = {
                let st = self.engine.read();
                st.peers
                    .iter()
                    .filter(|(_, p)| p.status == PeerStatus::Active)
                    .map(|(h, _)| h.clone())
                    .collect()
            };
            workers.retain(|_, j| !j.is_finished());
            if !self.engine.store_health.leading() {
                // Several nodes on one store: the node that leads forwards (`engine::nodes`).
                // A transfer cut here is sent again by the node that leads next; peers take
                // it once (their dedup by id).
                for (_, j) in workers.drain() {
                    j.abort();
                }
            }
            let active = if self.engine.store_health.leading() {
                active
            } else {
                Vec::new()
            };
            for h in active {
                // Two workers per peer: its envelope queue, and the conversations homed here
                // that it holds replicas of (CONVO-15).
                if let std::collections::hash_map::Entry::Vacant(v) =
                    workers.entry((h.clone(), false))
                {
                    let j = tokio::spawn(self.clone().forward_to(h.clone()));
                    v.insert(j);
                }
                if let std::collections::hash_map::Entry::Vacant(v) =
                    workers.entry((h.clone(), true))
                {
                    let j = tokio::spawn(self.clone().replicate_to(h));
                    v.insert(j);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(SUPERVISOR_MS)) => {}
                _ = stopping.changed() => {}
            }
        }
    }

    /// The worker for one peer: sends the head of its queue in order, retries with exponential
    /// backoff and jitter behind a circuit breaker, and submits every outcome to the writer.
    async fn forward_to(self, peer: RelayHost) {
        let fed = self.engine.policy.federation.clone();
        let mut failures: u32 = 0;
        let mut attempts: HashMap<MessageId, u32> = HashMap::new();
        loop {
            if *self.engine.stopping.borrow() {
                return;
            }
            // Registered before the queue is read, so an envelope queued in between still wakes us.
            let woken = self.engine.notifier.outbound_grew();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let batch: Vec<(MessageId, std::sync::Arc<Vec<u8>>)> = {
                let st = self.engine.read();
                if st.active_peer(&peer).is_none() {
                    return;
                }
                let mut bytes = 0usize;
                let budget = self
                    .engine
                    .policy
                    .limits
                    .batch_bytes_max
                    .saturating_sub(1024);
                st.queued_with_wire(&peer, self.engine.policy.limits.batch_envelopes_max)
                    .into_iter()
                    .map(|(_, x)| x)
                    .take_while(|x| {
                        bytes += x.wire.len() + 1;
                        bytes <= budget
                    })
                    .map(|x| (x.id, x.wire))
                    .collect()
            };
            if batch.is_empty() {
                attempts.clear();
                tokio::select! {
                    _ = &mut woken => {}
                    _ = tokio::time::sleep(Duration::from_millis(WORKER_IDLE_MS)) => {}
                }
                continue;
            }
            // The txn is a function of the batch, so a retry of the same batch reuses it.
            let mut hasher = blake3::Hasher::new();
            for (id, _) in &batch {
                hasher.update(id.to_hex().as_bytes());
            }
            let txn = format!("t{}", &hasher.finalize().to_hex()[..32]);
            let mut body = Vec::from(&b"{\"envelopes\":["[..]);
            for (i, (_, w)) in batch.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(w);
            }
            body.extend_from_slice(format!("],\"txn\":\"{txn}\"}}").as_bytes());
            let attempt = match self
                .call("POST", &peer, "/v1/federation/transfer", body, true)
                .await
            {
                Ok((200, v)) => match parse_results(&v, &batch) {
                    Some(r) => Attempt::Answered(r),
                    None => Attempt::Failed("the transfer answer is malformed".into()),
                },
                Ok((st, v)) => Attempt::Failed(format!(
                    "{peer} answered {st} {}",
                    answer_code(&v).map(|c| c.as_str()).unwrap_or("")
                )),
                Err(u) => Attempt::Failed(u.0),
            };
            match attempt {
                Attempt::Answered(results) => {
                    if let Err(e) = self
                        .engine
                        .writer
                        .submit(Command::TransferResults {
                            peer: peer.clone(),
                            results: results.clone(),
                        })
                        .await
                    {
                        if e.code == ErrorCode::Unavailable {
                            return;
                        }
                    }
                    let progress = results.iter().any(|(_, r)| r.is_ok());
                    let retryable: Vec<MessageId> = results
                        .iter()
                        .filter(|(_, r)| {
                            r.is_err_and(|c| c.retry() != formica_protocol::error::Retry::No)
                        })
                        .map(|(id, _)| *id)
                        .collect();
                    if progress {
                        if failures > 0 {
                            tracing::info!(peer = %peer, failures, "peer reachable again; forwarding resumes");
                        }
                        failures = 0;
                        // A retryable refusal keeps that envelope (and its sender's later ones)
                        // queued; wait a little so a rate-limited peer is not hammered.
                        if !retryable.is_empty() {
                            tokio::time::sleep(Duration::from_millis(fed.retry_base_ms)).await;
                        }
                    } else if !retryable.is_empty() {
                        // Nothing moved: back off as for a failed transfer.
                        failures = failures.saturating_add(1);
                        self.count_attempts(&peer, &mut attempts, &retryable).await;
                        tokio::time::sleep(backoff(&fed, failures)).await;
                    }
                }
                Attempt::Failed(why) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        tracing::warn!(peer = %peer, "peer unreachable, retrying with backoff: {why}");
                    } else if failures == fed.breaker_failures {
                        tracing::warn!(peer = %peer, failures, "circuit breaker open: waiting at least breaker_cooldown_ms between tries: {why}");
                    } else {
                        tracing::debug!(peer = %peer, failures, "transfer failed: {why}");
                    }
                    let ids: Vec<MessageId> = batch.iter().map(|(id, _)| *id).collect();
                    self.count_attempts(&peer, &mut attempts, &ids).await;
                    tokio::time::sleep(backoff(&fed, failures)).await;
                }
            }
        }
    }

    /// Counts a failed attempt for each of `ids`; at `attempts_max` the delivery is dead-lettered.
    async fn count_attempts(
        &self,
        peer: &RelayHost,
        attempts: &mut HashMap<MessageId, u32>,
        ids: &[MessageId],
    ) {
        let max = self.engine.policy.federation.attempts_max;
        for id in ids {
            let n = attempts.entry(*id).or_insert(0);
            *n += 1;
            if *n >= max {
                let _ = self
                    .engine
                    .writer
                    .submit(Command::DeadLetter {
                        peer: peer.clone(),
                        id: *id,
                        reason: "attempts".into(),
                    })
                    .await;
            }
        }
    }
}

/// What one transfer attempt gave.
enum Attempt {
    /// The peer answered the transfer with per-envelope results.
    Answered(Vec<(MessageId, Result<(), ErrorCode>)>),
    Failed(String),
}

/// Exponential backoff with jitter after `failures` failures in a row. Circuit breaker: after
/// `breaker_failures` in a row it is open for at least the cool-down; the next attempt is the
/// half-open trial, and a transfer that moves anything closes it.
pub(super) fn backoff(fed: &FederationPolicy, failures: u32) -> Duration {
    let exp = fed
        .retry_base_ms
        .saturating_mul(1u64 << failures.min(20).saturating_sub(1));
    let mut delay = exp.min(fed.retry_max_ms);
    if failures >= fed.breaker_failures {
        delay = delay.max(fed.breaker_cooldown_ms);
    }
    let jitter = rand::Rng::gen_range(&mut rand::rngs::OsRng, 0..=delay / 2);
    Duration::from_millis(delay / 2 + jitter)
}

/// Maps a transfer answer to (id, result) per envelope sent; `None` if it does not match.
fn parse_results(
    v: &Value,
    batch: &[(MessageId, std::sync::Arc<Vec<u8>>)],
) -> Option<Vec<(MessageId, Result<(), ErrorCode>)>> {
    let results = v.as_object()?.get("results")?.as_array()?;
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        let o = r.as_object()?;
        let i = usize::try_from(o.get("index")?.as_i64()?).ok()?;
        let (id, _) = batch.get(i)?;
        match o.get("result").and_then(Value::as_str) {
            Some("accepted") | Some("duplicate") => out.push((*id, Ok(()))),
            _ => {
                let code = o
                    .get("error")
                    .and_then(Value::as_object)
                    .and_then(|e| e.get("code"))
                    .and_then(Value::as_str)
                    .and_then(ErrorCode::from_wire)
                    .unwrap_or(ErrorCode::Internal);
                out.push((*id, Err(code)));
            }
        }
    }
    Some(out)
}
