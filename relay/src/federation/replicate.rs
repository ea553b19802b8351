//! Conversations across relays, sending side (SPEC.md CONVO-15): one worker per active peer
//! sends the entries of each conversation homed here to the peer when one of its participants
//! is homed there and may read them (CONVO-10), in seq order, from the entry after the one the
//! peer said it holds. Entries are read from the store (a conversation keeps them until it is
//! removed), never dead-lettered, and retried with the forwarding backoff; the peer's answers
//! go to the writer (declines, deliveries `forwarded`).
//!
//! Where each peer stands is kept in memory only: after a restart the first batch of each
//! conversation is empty and asks the peer for its head.

use super::client::answer_code;
use super::Federation;
use crate::engine::decide::Command;
use formica_protocol::conversation::replica::Answer;
use formica_protocol::conversation::{Conversation, EntryBody, PartState};
use formica_protocol::envelope::MessageId;
use formica_protocol::{ErrorCode, RelayHost};
use std::collections::HashMap;
use std::time::Duration;

/// Conversations one round of a worker sends batches for, at most (the rest wait a round).
const ROUND_MAX: usize = 64;

/// Where a peer stands for one conversation.
#[derive(Debug, Clone, Copy)]
enum Sent {
    /// The peer holds the entries up to this seq.
    Holds(u64),
    /// The peer refused the conversation with an error that does not change: nothing more is
    /// sent to it (until a restart asks again).
    Refused,
}

/// The last entry of `c` a participant homed on `peer` may read (CONVO-10), or `None` when none
/// may read any (none is homed there, or all were declined as `unavailable` there).
fn readable_on(c: &Conversation, peer: &RelayHost) -> Option<(u64, Vec<formica_protocol::Handle>)> {
    let mut upto = None;
    let mut to = Vec::new();
    for p in c.participants.iter().filter(|p| p.handle.host() == peer) {
        if p.state == PartState::Declined
            && p.declined_by_relay
            && p.reason.as_deref() == Some(crate::engine::decide::UNAVAILABLE)
        {
            continue;
        }
        let u = c.readable_upto(&p.handle).unwrap_or(c.seq);
        upto = Some(upto.map_or(u, |x: u64| x.max(u)));
        to.push(p.handle.clone());
    }
    upto.map(|u| (u, to))
}

/// Why a batch did not go through.
enum Failure {
    /// The peer could not be reached (or answered no JSON): the whole worker backs off.
    Transport(String),
    /// The peer answered this conversation's batch with a refusal that may pass (or the
    /// answer could not be recorded): this conversation backs off, the others go on.
    Conv(String),
}

/// Per conversation: when to try again after a `Conv` failure, and how many in a row.
type Waits = HashMap<MessageId, (std::time::Instant, u32)>;

impl Federation {
    /// The worker for one peer: runs while the peer is active.
    pub(super) async fn replicate_to(self, peer: RelayHost) {
        let fed = self.engine.policy.federation.clone();
        let mut sent: HashMap<MessageId, Sent> = HashMap::new();
        let mut waits: Waits = HashMap::new();
        // Entries per batch, halved for a conversation the peer found too large.
        let mut sizes: HashMap<MessageId, usize> = HashMap::new();
        let mut failures: u32 = 0;
        loop {
            if *self.engine.stopping.borrow() {
                return;
            }
            let woken = self.engine.notifier.outbound_grew();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let now = std::time::Instant::now();
            // What to send: (conversation, from seq, up to seq, `to`).
            let work: Vec<(MessageId, Option<u64>, u64, Vec<formica_protocol::Handle>)> = {
                let st = self.engine.read();
                if st.active_peer(&peer).is_none() {
                    return;
                }
                sent.retain(|id, _| st.conv(id).is_some());
                waits.retain(|id, _| st.conv(id).is_some());
                sizes.retain(|id, _| st.conv(id).is_some());
                st.convs
                    .map
                    .values()
                    .filter(|r| r.home.is_none())
                    .filter(|r| waits.get(&r.conv.id).is_none_or(|(t, _)| *t <= now))
                    .filter_map(|r| {
                        let (upto, to) = readable_on(&r.conv, &peer)?;
                        match sent.get(&r.conv.id) {
                            None => Some((r.conv.id, None, upto, to)),
                            Some(Sent::Holds(h)) if *h < upto => {
                                Some((r.conv.id, Some(*h), upto, to))
                            }
                            _ => None,
                        }
                    })
                    .take(ROUND_MAX)
                    .collect()
            };
            if work.is_empty() {
                tokio::select! {
                    _ = &mut woken => {}
                    _ = tokio::time::sleep(Duration::from_millis(super::forward::WORKER_IDLE_MS)) => {}
                }
                continue;
            }
            let mut unreachable = None;
            for (id, from, upto, to) in work {
                let size = sizes.get(&id).copied();
                match self.send_batch(&peer, id, from, upto, to, size).await {
                    Ok(Some(s)) => {
                        waits.remove(&id);
                        sent.insert(id, s);
                    }
                    Ok(None) => {
                        // Too large for the peer: fewer entries next time.
                        let n = size.unwrap_or(self.engine.policy.limits.batch_envelopes_max);
                        sizes.insert(id, (n / 2).max(1));
                    }
                    Err(Failure::Conv(why)) => {
                        let n = waits.get(&id).map_or(0, |(_, n)| *n).saturating_add(1);
                        if n == 1 {
                            tracing::warn!(peer = %peer, conv = %id, "a conversation's entries are refused by the peer for now, retrying with backoff: {why}");
                        }
                        waits.insert(
                            id,
                            (
                                std::time::Instant::now() + super::forward::backoff(&fed, n),
                                n,
                            ),
                        );
                    }
                    Err(Failure::Transport(why)) => {
                        unreachable = Some(why);
                        break;
                    }
                }
            }
            match unreachable {
                None => {
                    if failures > 0 {
                        tracing::info!(peer = %peer, "peer reachable again; conversation entries flow again");
                    }
                    failures = 0;
                }
                Some(why) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        tracing::warn!(peer = %peer, "conversation entries cannot reach the peer, retrying with backoff: {why}");
                    }
                    tokio::time::sleep(super::forward::backoff(&fed, failures)).await;
                }
            }
        }
    }

    /// Sends one batch of conversation `id` (entries after `from` up to `upto`, at most `size`
    /// of them; none when `from` is unknown) and submits the answer to the writer. `Ok(None)`:
    /// the peer found it too large (send fewer).
    async fn send_batch(
        &self,
        peer: &RelayHost,
        id: MessageId,
        from: Option<u64>,
        upto: u64,
        to: Vec<formica_protocol::Handle>,
        size: Option<usize>,
    ) -> Result<Option<Sent>, Failure> {
        let budget = self
            .engine
            .policy
            .limits
            .batch_bytes_max
            .saturating_sub(4096);
        let most = size
            .unwrap_or(self.engine.policy.limits.batch_envelopes_max)
            .max(1);
        let (rows, terms) = {
            let st = self.engine.read();
            let Some(r) = st.conv(&id) else {
                return Ok(Some(Sent::Refused));
            };
            let limits = self.engine.policy.conversations.limits();
            let terms = (r.conv.turn_limit(&limits), r.conv.expiry(&limits));
            let rows = match from {
                None => Vec::new(),
                Some(after) => {
                    let n = usize::try_from(upto - after).unwrap_or(usize::MAX);
                    let mut bytes = 0usize;
                    let mut rows: Vec<Vec<u8>> = st
                        .conv_entries(&id, after, n.min(most))
                        .into_iter()
                        .take_while(|w| {
                            bytes += w.len() + 1;
                            bytes <= budget
                        })
                        .collect();
                    if rows.is_empty() {
                        // One entry larger than the budget still goes alone (an entry is at
                        // most an envelope plus its framing).
                        rows = st.conv_entries(&id, after, 1);
                    }
                    rows
                }
            };
            (rows, terms)
        };
        let limits = crate::engine::state::stored_entry_limits();
        let mut entries = Vec::with_capacity(rows.len());
        let mut ids = Vec::new();
        for w in &rows {
            let v = formica_protocol::json::parse(w, limits.json)
                .map_err(|e| Failure::Conv(e.to_string()))?;
            let e = formica_protocol::conversation::Entry::from_value(&v, &limits)
                .map_err(|e| Failure::Conv(e.to_string()))?;
            if let EntryBody::Envelope(se) = &e.body {
                ids.push((e.seq, se.id()));
            }
            entries.push(e);
        }
        let batch = formica_protocol::conversation::replica::Batch {
            conv: id,
            to,
            turns: terms.0,
            expires: terms.1,
            entries,
        };
        let body = formica_protocol::canon::canonicalize(&batch.to_value());
        let answer = match self
            .call("POST", peer, "/v1/federation/conversation", body, true)
            .await
        {
            Ok((200, v)) => match Answer::from_value(&v) {
                Ok(a) if a.conv == id => Ok(a),
                _ => {
                    return Err(Failure::Transport(
                        "the answer to a conversation batch is malformed".into(),
                    ))
                }
            },
            Ok((status, v)) => match answer_code(&v) {
                Some(ErrorCode::TooLarge) if most > 1 && rows.len() > 1 => return Ok(None),
                // A refusal that will not change ends what this relay sends only to a relay
                // that holds nothing of the conversation: its invitees are then declined. A
                // relay that holds part of it keeps getting it, with backoff (CONVO-15).
                Some(code)
                    if code.retry() == formica_protocol::error::Retry::No
                        && from.unwrap_or(0) == 0 =>
                {
                    Err(code)
                }
                code => {
                    return Err(Failure::Conv(format!(
                        "{peer} answered {status} {}",
                        code.map(|c| c.as_str()).unwrap_or("")
                    )))
                }
            },
            Err(u) => return Err(Failure::Transport(u.0)),
        };
        let next = match &answer {
            Ok(a) => Sent::Holds(a.seq),
            Err(code) => {
                tracing::warn!(peer = %peer, conv = %id, code = %code, "the peer refused a conversation; its invitees there are declined and nothing more is sent");
                Sent::Refused
            }
        };
        let cmd = Command::ConvReplicated {
            peer: peer.clone(),
            conv: id,
            sent: ids,
            answer,
        };
        // An answer with declines or a refusal is recorded before the pointer moves. One
        // without is only deliveries moving to `forwarded`: recorded in the background, so that
        // the next batch does not wait for this relay's commit (a lost record leaves them
        // `accepted` until the delivery notices come).
        let must = matches!(&cmd, Command::ConvReplicated { answer: Ok(a), .. } if !a.declined.is_empty())
            || matches!(&cmd, Command::ConvReplicated { answer: Err(_), .. });
        if must {
            self.engine
                .writer
                .submit(cmd)
                .await
                .map_err(|e| Failure::Conv(format!("recording the answer: {}", e.message)))?;
        } else {
            let engine = self.engine.clone();
            tokio::spawn(async move {
                if let Err(e) = engine.writer.submit(cmd).await {
                    tracing::debug!("recording a conversation batch's deliveries: {}", e.message);
                }
            });
        }
        Ok(Some(next))
    }
}
