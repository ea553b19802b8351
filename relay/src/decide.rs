//! Decisions that depend on relay state: the pure half of the single writer.
//!
//! Handlers do the stateless work (size, strict parse, schema, freshness, signature) in
//! parallel. The writer then calls [`decide`] for each command in a batch, against the state
//! as it stands after the commands before it, applies the resulting events and appends them
//! with one fsync. `decide` reads no clock and does no I/O: the time and the relay key come in
//! through [`Ctx`], so the same inputs always give the same events.

use crate::error::ApiError;
use crate::events::{Event, PeerStatus};
use crate::policy::Policy;
use crate::state::State;
use formica_protocol::envelope::{
    AckStatus, ContactLevel, DeliveryState, Envelope, MessageId, MessageType, Payload,
    SignedEnvelope, VerifiedEnvelope, VouchAction,
};
use formica_protocol::keylog::{KeyLog, SignedKeyLogEntry};
use formica_protocol::pow::Challenge;
use formica_protocol::{ErrorCode, Handle, Object, PublicKey, RelayHost, SecretKey, Value};

/// What a command may change.
#[derive(Debug)]
pub enum Command {
    /// A registration whose entry, proof-of-work and challenge freshness were checked.
    Register {
        entry: SignedKeyLogEntry,
        challenge: Challenge,
    },
    /// A key log entry for an existing handle (signature checked here, against the log).
    KeyLog {
        entry: SignedKeyLogEntry,
    },
    /// An agent's envelope whose signature was verified.
    Envelope {
        env: VerifiedEnvelope,
    },
    /// The agent was handed its inbox up to `upto`.
    Read {
        handle: Handle,
        upto: u64,
    },
    ContactSet {
        owner: Handle,
        contact: Handle,
        level: ContactLevel,
    },
    ContactRemove {
        owner: Handle,
        contact: Handle,
    },
    /// `accept`: `None` rejects; `Some(level)` accepts at `level` (or at the requested level).
    AnswerRequest {
        owner: Handle,
        request: MessageId,
        accept: Option<Option<ContactLevel>>,
    },
    /// Time passed: produce timed_out receipts for deadlines before `ctx.now`, and dead-letter
    /// queued deliveries older than `federation.dead_letter_ms`.
    Tick,
    /// An envelope a peer forwarded (FED-6), its agent signature verified again here.
    RemoteEnvelope {
        env: VerifiedEnvelope,
        origin: RelayHost,
    },
    /// The envelopes of one transfer that passed the handler's checks, in transfer order. The
    /// writer decides them one after another as a single job (see [`transfer_item`]), so that
    /// order per sender (FED-9) holds whatever else is queued: the answer is
    /// [`Outcome::Transfer`], one result per envelope.
    Transfer {
        envs: Vec<VerifiedEnvelope>,
        origin: RelayHost,
    },
    /// Record a peer (handshake, approval).
    PeerSet {
        host: RelayHost,
        key: PublicKey,
        status: PeerStatus,
        /// Set when a stranger's handshake asks for it (not the operator, not a listed host):
        /// a new peer is then refused here, where no other handshake can race it, when
        /// `pending_peers_max` (manual) or `open_peers_max` (open) is reached (FED-15).
        stranger: bool,
    },
    PeerRemove {
        host: RelayHost,
    },
    /// A remote agent's key log, verified from its first entry by the caller (FED-8).
    RemoteKeyLog {
        entries: Vec<SignedKeyLogEntry>,
    },
    /// What a peer answered for each envelope of a transfer.
    TransferResults {
        peer: RelayHost,
        results: Vec<(MessageId, Result<(), ErrorCode>)>,
    },
    /// The forwarding worker gave up on a queued envelope (too many attempts).
    DeadLetter {
        peer: RelayHost,
        id: MessageId,
        reason: String,
    },
}

/// One envelope of a transfer (FED-9), decided against the state that includes the events of
/// the envelopes before it: once an envelope from a sender is refused with a retryable error,
/// the later envelopes from that sender in the same transfer (`held`) are refused with
/// `unavailable` instead of being stored ahead of it.
pub fn transfer_item(
    st: &State,
    ctx: &Ctx<'_>,
    held: &mut std::collections::HashSet<Handle>,
    env: VerifiedEnvelope,
    origin: &RelayHost,
) -> Decision {
    let from = env.envelope().from.clone();
    if held.contains(&from) {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("an earlier envelope from {from} in this transfer must be retried first"),
        )
        .with("retry_after_s", Value::Int(1)));
    }
    let d = envelope(st, ctx, env, Some(origin));
    if let Err(e) = &d {
        if e.code.retry() != formica_protocol::error::Retry::No {
            held.insert(from);
        }
    }
    d
}

/// What a command did, for the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Registered {
        handle: Handle,
        key_id: String,
        head: String,
    },
    KeyLogAppended {
        seq: i64,
        head: String,
    },
    KeyLogDuplicate,
    /// A valid conflicting entry was stored as evidence; the answer is keylog_fork.
    KeyLogForked,
    Accepted {
        id: MessageId,
    },
    Duplicate {
        id: MessageId,
    },
    Done(Value),
    Ticked {
        timed_out: usize,
    },
    /// One result per envelope of a [`Command::Transfer`], in order.
    Transfer(Vec<Result<Outcome, ApiError>>),
}

/// Inputs besides state and command.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub now: i64,
    pub relay_key: &'a SecretKey,
    pub policy: &'a Policy,
}

/// Most conflicting entries kept as evidence per key log (LOG-15): one proves a fork; a few
/// show its extent; more would let whoever holds an old key grow the log without bound.
pub const KEYLOG_CONFLICTS_MAX: usize = 8;

/// Most timed_out receipts one tick produces; the rest follow in the next tick.
pub const TICK_RECEIPTS_MAX: usize = 1000;

pub type Decision = Result<(Vec<Event>, Outcome), ApiError>;

pub fn decide(st: &State, ctx: &Ctx<'_>, cmd: Command) -> Decision {
    match cmd {
        Command::Register { entry, challenge } => register(st, ctx, entry, challenge),
        Command::KeyLog { entry } => keylog(st, ctx, entry),
        Command::Envelope { env } => envelope(st, ctx, env, None),
        Command::RemoteEnvelope { env, origin } => envelope(st, ctx, env, Some(&origin)),
        Command::Transfer { .. } => Err(ApiError::internal(
            "a transfer is decided envelope by envelope by the writer",
        )),
        Command::PeerSet {
            host,
            key,
            status,
            stranger,
        } => {
            if stranger && !st.peers.contains_key(&host) {
                peer_caps(st, &ctx.policy.federation, status)?;
            }
            Ok((
                vec![Event::PeerSet {
                    at: ctx.now,
                    host: host.clone(),
                    key,
                    status,
                }],
                Outcome::Done(peer_value(&host, &key, status)),
            ))
        }
        Command::PeerRemove { host } => {
            if !st.peers.contains_key(&host) {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("{host} is not a peer"),
                ));
            }
            Ok((
                vec![Event::PeerRemoved { at: ctx.now, host }],
                Outcome::Done(Value::Null),
            ))
        }
        Command::RemoteKeyLog { entries } => remote_keylog(st, ctx, entries),
        Command::TransferResults { peer, results } => {
            let mut events = Vec::new();
            for (id, r) in results {
                if !queued(st, &peer, &id) {
                    continue;
                }
                match r {
                    Ok(()) => events.push(Event::Transferred {
                        at: ctx.now,
                        peer: peer.clone(),
                        id,
                    }),
                    // FED-10: a refusal that cannot change dead-letters at once.
                    Err(code) if code.retry() == formica_protocol::error::Retry::No => {
                        dead_letter(st, ctx, &peer, id, code.as_str(), &mut events)?
                    }
                    Err(_) => {}
                }
            }
            Ok((events, Outcome::Done(Value::Null)))
        }
        Command::DeadLetter { peer, id, reason } => {
            let mut events = Vec::new();
            if queued(st, &peer, &id) {
                dead_letter(st, ctx, &peer, id, &reason, &mut events)?;
            }
            Ok((events, Outcome::Done(Value::Null)))
        }
        Command::Read { handle, upto } => read(st, ctx, handle, upto),
        Command::ContactSet {
            owner,
            contact,
            level,
        } => {
            agent(st, &owner)?;
            let mut o = Object::new();
            o.insert("handle", contact.as_str().into());
            o.insert("level", level.as_str().into());
            Ok((
                vec![Event::ContactSet {
                    at: ctx.now,
                    owner,
                    contact,
                    level,
                }],
                Outcome::Done(Value::Object(o)),
            ))
        }
        Command::ContactRemove { owner, contact } => {
            let a = agent(st, &owner)?;
            if !a.contacts.contains_key(&contact) {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("{contact} is not a contact"),
                ));
            }
            let mut o = Object::new();
            o.insert("handle", contact.as_str().into());
            o.insert("removed", Value::Bool(true));
            Ok((
                vec![Event::ContactRemoved {
                    at: ctx.now,
                    owner,
                    contact,
                }],
                Outcome::Done(Value::Object(o)),
            ))
        }
        Command::AnswerRequest {
            owner,
            request,
            accept,
        } => {
            let a = agent(st, &owner)?;
            let req = a.requests.get(&request).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    format!("no pending contact request {request}"),
                )
            })?;
            let mut o = Object::new();
            let level = match accept {
                None => {
                    o.insert("id", request.to_hex().into());
                    o.insert("rejected", Value::Bool(true));
                    None
                }
                Some(l) => {
                    let level = l.unwrap_or(req.level);
                    if level > req.level {
                        return Err(ApiError::new(
                            ErrorCode::InvalidField,
                            format!("the request asked for {}, accept at most that", req.level),
                        )
                        .with("field", "level".into()));
                    }
                    o.insert("handle", req.from.as_str().into());
                    o.insert("level", level.as_str().into());
                    Some(level)
                }
            };
            Ok((
                vec![Event::RequestAnswered {
                    at: ctx.now,
                    owner,
                    request,
                    level,
                }],
                Outcome::Done(Value::Object(o)),
            ))
        }
        Command::Tick => tick(st, ctx),
    }
}

/// The peer as shown to the operator.
pub fn peer_value(host: &RelayHost, key: &PublicKey, status: PeerStatus) -> Value {
    let mut o = Object::new();
    o.insert("host", host.as_str().into());
    o.insert("key", key.to_hex().into());
    o.insert("status", status.as_str().into());
    Value::Object(o)
}

fn queued(st: &State, peer: &RelayHost, id: &MessageId) -> bool {
    st.outbound
        .get(peer)
        .is_some_and(|q| q.values().any(|x| &x.id == id))
}

/// FED-10: gives up forwarding `id` to `peer`; the sender gets a dead_lettered receipt for
/// each recipient homed there whose delivery is not settled.
/// True if `events` already hold a terminal receipt for (`id`, `recipient`).
fn settled_in(events: &[Event], id: &MessageId, recipient: &Handle) -> bool {
    events.iter().any(|e| match e {
        Event::Envelope { envelope, .. } => matches!(
            &envelope.envelope().payload,
            Payload::Receipt { msg, recipient: r, status, .. } if msg == id && r == recipient && status.is_terminal()
        ),
        _ => false,
    })
}

fn dead_letter(
    st: &State,
    ctx: &Ctx<'_>,
    peer: &RelayHost,
    id: MessageId,
    reason: &str,
    events: &mut Vec<Event>,
) -> Result<(), ApiError> {
    events.push(Event::DeadLettered {
        at: ctx.now,
        peer: peer.clone(),
        id,
        reason: reason.to_owned(),
    });
    if let Some(m) = st.messages.get(&id) {
        if st.agents.contains_key(&m.sender) {
            for r in m
                .recipients
                .iter()
                .filter(|r| r.handle.host() == peer && !r.state.is_terminal())
                // The same decision may already have settled it (a deadline in the same tick):
                // one delivery gets one terminal receipt (DELIV-2, RCPT-2).
                .filter(|r| !settled_in(events, &id, &r.handle))
                .collect::<Vec<_>>()
            {
                let rc = receipt_with(
                    st,
                    ctx,
                    id,
                    &m.sender,
                    &r.handle,
                    DeliveryState::DeadLettered,
                    None,
                    Some(reason.to_owned()),
                )?;
                events.push(Event::Envelope {
                    at: ctx.now,
                    envelope: rc,
                });
            }
        }
    }
    Ok(())
}

/// FED-8: caches a verified remote key log. Entries beyond the cached ones are appended; an
/// entry that differs from the cached one at the same position is kept as evidence of a fork.
fn remote_keylog(st: &State, ctx: &Ctx<'_>, entries: Vec<SignedKeyLogEntry>) -> Decision {
    let Some(first) = entries.first() else {
        return Err(ApiError::new(ErrorCode::InvalidField, "an empty key log"));
    };
    let handle = first.entry().handle.clone();
    let cached = st.remote_logs.get(&handle);
    let have = cached.map(|c| c.log.entries()).unwrap_or(&[]);
    let mut events = Vec::new();
    let mut log: Option<KeyLog> = cached.map(|c| c.log.clone());
    for (i, e) in entries.into_iter().enumerate() {
        if let Some(old) = have.get(i) {
            if old.hash() == e.hash() {
                continue;
            }
            let known = cached.is_some_and(|c| c.conflicts.iter().any(|x| x.hash() == e.hash()));
            let room = cached.map_or(0, |c| c.conflicts.len()) < KEYLOG_CONFLICTS_MAX;
            if !known && room {
                events.push(Event::RemoteKeyLogConflict {
                    at: ctx.now,
                    entry: e,
                });
            }
            return Ok((events, Outcome::KeyLogForked));
        }
        match log.as_mut() {
            None => log = Some(KeyLog::start(e.clone())?),
            Some(l) => l.append(e.clone())?,
        }
        events.push(Event::RemoteKeyLog {
            at: ctx.now,
            entry: e,
        });
    }
    let head = log.map(|l| l.head().hash().to_hex()).unwrap_or_default();
    Ok((events, Outcome::KeyLogAppended { seq: 0, head }))
}

fn agent<'s>(st: &'s State, h: &Handle) -> Result<&'s crate::state::Agent, ApiError> {
    st.agents
        .get(h)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("{h} is not registered here")))
}

fn register(st: &State, ctx: &Ctx<'_>, entry: SignedKeyLogEntry, challenge: Challenge) -> Decision {
    let handle = entry.entry().handle.clone();
    if st.agents.contains_key(&handle) {
        return Err(ApiError::new(
            ErrorCode::HandleTaken,
            format!("{handle} is already registered"),
        ));
    }
    if st.challenges_used.contains(&challenge) {
        return Err(ApiError::new(
            ErrorCode::ChallengeUsed,
            "this challenge was already used; fetch a new one",
        ));
    }
    let log = KeyLog::start(entry.clone())?;
    let key_id = log
        .current_key()
        .map(|k| k.key_id().to_hex())
        .unwrap_or_default();
    let head = entry.hash().to_hex();
    Ok((
        vec![Event::Registered {
            at: ctx.now,
            entry,
            challenge,
        }],
        Outcome::Registered {
            handle,
            key_id,
            head,
        },
    ))
}

fn keylog(st: &State, ctx: &Ctx<'_>, entry: SignedKeyLogEntry) -> Decision {
    let handle = entry.entry().handle.clone();
    let a = agent(st, &handle)?;
    let seq = entry.entry().seq;
    let entries = a.keylog.entries();
    if let Some(existing) = usize::try_from(seq).ok().and_then(|s| entries.get(s)) {
        if existing.hash() == entry.hash() {
            return Ok((vec![], Outcome::KeyLogDuplicate));
        }
        // A different entry at a taken position: if it is valid against the log before it, it
        // is evidence of a fork (two valid histories), kept and reported.
        if a.conflicts.iter().any(|c| c.hash() == entry.hash()) {
            return Ok((vec![], Outcome::KeyLogForked));
        }
        if a.conflicts.len() >= KEYLOG_CONFLICTS_MAX {
            // Enough evidence of a fork is kept; more would only let a stolen old key grow the
            // log without bound. The answer is the same.
            return Ok((vec![], Outcome::KeyLogForked));
        }
        // Only a key the log has named can make an entry here valid: one signature check
        // first, then the entry against the log as it stood before `seq` (rebuilt without
        // verifying its already verified entries again).
        // At seq 0 only the key that registered the handle can fork it (LOG-15).
        let valid = a.keylog.signed_by_one_of_its_keys(&entry)
            && if seq == 0 {
                a.keylog.registered_with(&entry.entry().signer)
                    && KeyLog::start(entry.clone()).is_ok()
            } else {
                a.keylog
                    .prefix(seq as usize)
                    .is_some_and(|mut l| l.append(entry.clone()).is_ok())
            };
        if valid {
            return Ok((
                vec![Event::KeyLogConflict { at: ctx.now, entry }],
                Outcome::KeyLogForked,
            ));
        }
    }
    // Checked without copying the log; `State::apply` appends it.
    a.keylog.check_next(&entry)?;
    Ok((
        vec![Event::KeyLogAppended {
            at: ctx.now,
            entry: entry.clone(),
        }],
        Outcome::KeyLogAppended {
            seq,
            head: entry.hash().to_hex(),
        },
    ))
}

/// FED-15: the caps on new peers that strangers' handshakes may add, for a peer that would get
/// `status`. The handshake handler asks before it fetches anything; the writer decides.
pub fn peer_caps(
    st: &State,
    fed: &crate::policy::FederationPolicy,
    status: PeerStatus,
) -> Result<(), ApiError> {
    let full = |what: String| Err(ApiError::new(ErrorCode::PeerUnknown, what));
    if status == PeerStatus::Pending {
        let pending = st
            .peers
            .values()
            .filter(|p| p.status == PeerStatus::Pending)
            .count();
        if pending >= fed.pending_peers_max {
            return full(format!(
                "this relay already has {} peering requests awaiting its operator's approval (federation.pending_peers_max); ask the operator",
                fed.pending_peers_max
            ));
        }
    } else if fed.peering == "open" {
        let unlisted = st
            .peers
            .keys()
            .filter(|h| !fed.allowlist.iter().any(|l| l == h.as_str()))
            .count();
        if unlisted >= fed.open_peers_max {
            return full(format!(
                "this relay already has {} peers (federation.open_peers_max); ask its operator",
                fed.open_peers_max
            ));
        }
    }
    Ok(())
}

/// Ingest step 8 for a sender homed here: its agent and the key the envelope names, which must
/// be valid at the envelope's time. Used by the handler before the signature check and by the
/// writer again when it decides.
pub fn local_sender<'s>(
    st: &'s State,
    env: &formica_protocol::envelope::Envelope,
) -> Result<(&'s crate::state::Agent, &'s formica_protocol::PublicKey), ApiError> {
    let a = st.agents.get(&env.from).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownSender,
            format!("{} is not registered here", env.from),
        )
    })?;
    let key = a
        .keylog
        .key_at(&env.key, env.ts)
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    Ok((a, key))
}

/// Makes a relay-signed receipt for `sender` about `msg` to `recipient`.
pub fn receipt(
    st: &State,
    ctx: &Ctx<'_>,
    msg: MessageId,
    sender: &Handle,
    recipient: &Handle,
    status: DeliveryState,
    ack: Option<(MessageId, AckStatus)>,
) -> Result<SignedEnvelope, ApiError> {
    receipt_with(st, ctx, msg, sender, recipient, status, ack, None)
}

/// [`receipt`] with a `reason` (dead_lettered receipts name the error code or "expired").
#[allow(clippy::too_many_arguments)]
pub fn receipt_with(
    st: &State,
    ctx: &Ctx<'_>,
    msg: MessageId,
    sender: &Handle,
    recipient: &Handle,
    status: DeliveryState,
    ack: Option<(MessageId, AckStatus)>,
    reason: Option<String>,
) -> Result<SignedEnvelope, ApiError> {
    let env = Envelope {
        msg_type: MessageType::Receipt,
        type_version: 1,
        from: Handle::relay(&st.host),
        key: ctx.relay_key.public().key_id(),
        to: vec![sender.clone()],
        ts: ctx.now,
        corr: None,
        ack_by: None,
        payload: Payload::Receipt {
            msg,
            recipient: recipient.clone(),
            status,
            ack: ack.map(|a| a.0),
            ack_status: ack.map(|a| a.1),
            reason,
        },
    };
    env.sign(ctx.relay_key).map_err(ApiError::internal)
}

/// Steps 7-10 of the ingest pipeline (SPEC.md section 15.9) for a verified envelope; with an
/// `origin`, the same steps for an envelope that peer forwarded (FED-6).
fn envelope(
    st: &State,
    ctx: &Ctx<'_>,
    v: VerifiedEnvelope,
    origin: Option<&RelayHost>,
) -> Decision {
    let id = v.id();
    let env = v.envelope();
    // 7. Dedup: an exact replay is a success that says so, and stores nothing.
    if st.seen.contains(&id) {
        return Ok((vec![], Outcome::Duplicate { id }));
    }
    if let (Some(origin), true) = (origin, env.from.is_relay()) {
        return remote_delivered(st, ctx, &v, origin);
    }
    // 8. Sender homed here (or, forwarded, homed on the origin) with a key valid at the
    //    envelope's time (checked again here, since the log may have changed since the handler
    //    looked).
    let sender = match origin {
        None => Some(local_sender(st, env)?.0),
        Some(origin) => {
            if env.from.host() != origin {
                return Err(ApiError::new(
                    ErrorCode::OriginMismatch,
                    format!("{} is not homed on {origin}", env.from),
                ));
            }
            st.remote_logs
                .get(&env.from)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::UnknownKey,
                        format!("no key log for {}", env.from),
                    )
                })?
                .log
                .key_at(&env.key, env.ts)
                .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
            if !env.to.iter().any(|h| st.is_local(h)) {
                return Err(ApiError::new(
                    ErrorCode::WrongRelay,
                    "no recipient of this envelope is homed on this relay",
                ));
            }
            if matches!(env.payload, Payload::Vouch { .. } | Payload::Report { .. }) {
                return Err(ApiError::new(
                    ErrorCode::TierForbidden,
                    "vouches and reports are not accepted over federation",
                ));
            }
            None
        }
    };
    // 10. Policy. Remote senders get the tier the federation policy names.
    let tier_i = match origin {
        None => st.tier_of(&env.from, ctx.now, ctx.policy),
        Some(_) => ctx.policy.federation.remote_tier,
    };
    let tier = ctx
        .policy
        .tiers
        .get(tier_i)
        .ok_or_else(|| ApiError::internal("tier index out of range"))?;
    if !tier.may_send(&env.msg_type) {
        return Err(ApiError::new(
            ErrorCode::TierForbidden,
            format!("agents at tier {} may not send {}", tier.name, env.msg_type),
        ));
    }
    // The payload as received (its canonical form is what was signed).
    let payload_len = v.signed().payload_len();
    if payload_len > tier.payload_bytes_max {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "payload is {payload_len} bytes; tier {} allows {}",
                tier.name, tier.payload_bytes_max
            ),
        ));
    }
    if env.to.len() > tier.recipients_max {
        return Err(ApiError::new(
            ErrorCode::TooManyRecipients,
            format!(
                "{} recipients; tier {} allows {}",
                env.to.len(),
                tier.name,
                tier.recipients_max
            ),
        ));
    }
    for to in &env.to {
        if to.host() != &st.host {
            // Forwarded: recipients elsewhere are their home relays' business.
            if origin.is_some() {
                continue;
            }
            // FED-13: a recipient on an active peer is judged there.
            let federates = ctx.policy.federation.enabled
                && st.active_peer(to.host()).is_some()
                && !to.is_relay()
                && !matches!(env.payload, Payload::Vouch { .. } | Payload::Report { .. });
            if !federates {
                return Err(ApiError::new(
                    ErrorCode::UnknownRecipient,
                    format!(
                        "{to} is homed on {}, which is not a peer of this relay",
                        to.host()
                    ),
                ));
            }
            // FED-16: a peer's queue holds at most queue_depth_max envelopes.
            let depth = st.outbound.get(to.host()).map_or(0, |q| q.len());
            if depth >= ctx.policy.federation.queue_depth_max {
                return Err(ApiError::new(
                    ErrorCode::PeerUnavailable,
                    format!(
                        "{} envelopes already wait for {}; nothing was accepted",
                        depth,
                        to.host()
                    ),
                ));
            }
            continue;
        }
        if to.is_relay() {
            if !matches!(env.payload, Payload::Vouch { .. } | Payload::Report { .. }) {
                return Err(ApiError::new(
                    ErrorCode::UnknownRecipient,
                    "the relay address accepts only vouch and report",
                ));
            }
        } else if !st.agents.contains_key(to) {
            return Err(ApiError::new(
                ErrorCode::UnknownRecipient,
                format!("{to} is not registered"),
            ));
        }
    }
    let mut events = vec![Event::Envelope {
        at: ctx.now,
        envelope: v.signed().clone(),
    }];
    match &env.payload {
        Payload::Ack { msg, status, .. } => {
            // ACK-3: bound to a message the acker received, not yet settled, sent back to its sender.
            let rec = st.messages.get(msg).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::AckForbidden,
                    format!("no message {msg} was delivered to {}", env.from),
                )
            })?;
            let r = rec
                .recipients
                .iter()
                .find(|r| r.handle == env.from)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::AckForbidden,
                        format!("{} is not a recipient of {msg}", env.from),
                    )
                })?;
            if env.to[0] != rec.sender {
                return Err(ApiError::new(
                    ErrorCode::InvalidField,
                    "an ack goes to the message's sender",
                )
                .with("field", "to".into()));
            }
            if r.state.is_terminal() {
                return Err(ApiError::new(
                    ErrorCode::AckSettled,
                    format!("delivery of {msg} to {} is already {}", env.from, r.state),
                ));
            }
            if st.agents.contains_key(&rec.sender) {
                let rc = receipt(
                    st,
                    ctx,
                    *msg,
                    &rec.sender,
                    &env.from,
                    DeliveryState::Acked,
                    Some((id, *status)),
                )?;
                events.push(Event::Envelope {
                    at: ctx.now,
                    envelope: rc,
                });
            }
        }
        Payload::ContactRequest { .. } => {
            let hour_ago = ctx.now - 3600 * 1000;
            let sent = sender
                .map(|s| s.requests_sent.iter().filter(|t| **t > hour_ago).count())
                .unwrap_or(0);
            if sent >= tier.contact_requests_per_hour as usize {
                return Err(ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "tier {} allows {} contact requests per hour",
                        tier.name, tier.contact_requests_per_hour
                    ),
                )
                .with("retry_after_s", Value::Int(60)));
            }
            for to in &env.to {
                let Some(r) = st.agents.get(to) else { continue };
                if r.requests.values().any(|p| p.from == env.from) {
                    return Err(ApiError::new(
                        ErrorCode::RateLimited,
                        format!("a contact request to {to} is already pending"),
                    )
                    .with("retry_after_s", Value::Int(3600)));
                }
                if r.requests.len() >= ctx.policy.limits.contact_requests_pending_max {
                    return Err(ApiError::new(
                        ErrorCode::InboxFull,
                        format!("{to} has too many pending contact requests"),
                    )
                    .with("retry_after_s", Value::Int(3600)));
                }
            }
        }
        Payload::Vouch { subject, action } => {
            if !st.agents.contains_key(subject) {
                return Err(ApiError::new(
                    ErrorCode::UnknownRecipient,
                    format!("{subject} is not registered"),
                ));
            }
            let exists = st
                .vouches
                .contains_key(&(env.from.clone(), subject.clone()));
            match action {
                VouchAction::Grant
                    if !exists
                        && st.vouches_given(&env.from, ctx.now, ctx.policy)
                            >= tier.vouches_max as usize =>
                {
                    return Err(ApiError::new(
                        ErrorCode::VouchLimit,
                        format!(
                            "tier {} allows {} active vouches",
                            tier.name, tier.vouches_max
                        ),
                    ))
                }
                VouchAction::Revoke if !exists => {
                    return Err(ApiError::new(
                        ErrorCode::NotFound,
                        format!("no vouch for {subject} to revoke"),
                    ))
                }
                _ => {}
            }
        }
        Payload::Report { subject, .. } => {
            if !st.agents.contains_key(subject) {
                return Err(ApiError::new(
                    ErrorCode::UnknownRecipient,
                    format!("{subject} is not registered"),
                ));
            }
            let day_ago = ctx.now - 24 * 3600 * 1000;
            if sender
                .map(|s| s.reports_sent.iter().filter(|t| **t > day_ago).count())
                .unwrap_or(0)
                >= tier.reports_per_day as usize
            {
                return Err(ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "tier {} allows {} reports per day",
                        tier.name, tier.reports_per_day
                    ),
                )
                .with("retry_after_s", Value::Int(3600)));
            }
        }
        _ => {
            // CONTACT-4/6: the recipient must have granted the sender the level this type needs,
            // unless the envelope answers a task the recipient sent the sender.
            let needed = env.msg_type.required_level();
            for to in &env.to {
                if to == &env.from {
                    continue;
                }
                let Some(r) = st.agents.get(to) else { continue };
                let is_reply = matches!(env.payload, Payload::TaskResult { .. })
                    && env
                        .corr
                        .as_deref()
                        .and_then(MessageId::parse_hex)
                        .and_then(|c| st.messages.get(&c))
                        .is_some_and(|m| {
                            m.sender == *to
                                && m.msg_type == MessageType::TaskRequest
                                && m.recipients.iter().any(|x| x.handle == env.from)
                        });
                if let (Some(needed), false) = (needed, is_reply) {
                    match r.contacts.get(&env.from) {
                        None => {
                            return Err(ApiError::new(
                                ErrorCode::NotContact,
                                format!("{to} does not accept messages from {}; send a contact_request first", env.from),
                            ))
                        }
                        Some((level, _)) if *level < needed => {
                            return Err(ApiError::new(
                                ErrorCode::LevelInsufficient,
                                format!("{to} granted {} level {level}; {} needs {needed}", env.from, env.msg_type),
                            ))
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    // Per-recipient cap: unread items are never evicted, new ones are refused.
    for to in &env.to {
        if let Some(r) = st.agents.get(to) {
            if r.unread() >= ctx.policy.limits.inbox_pending_max {
                return Err(ApiError::new(
                    ErrorCode::InboxFull,
                    format!("{to} has {} unread items", r.unread()),
                )
                .with("retry_after_s", Value::Int(60)));
            }
        }
    }
    Ok((events, Outcome::Accepted { id }))
}

/// FED-11: a peer's delivery notice (a receipt signed by its relay key, verified by the caller)
/// moves the delivery to one of its agents to `delivered`, and the sender gets this relay's
/// `delivered` receipt if it asked for an ack.
fn remote_delivered(
    st: &State,
    ctx: &Ctx<'_>,
    v: &VerifiedEnvelope,
    origin: &RelayHost,
) -> Decision {
    let id = v.id();
    let env = v.envelope();
    let Payload::Receipt {
        msg,
        recipient,
        status: DeliveryState::Delivered,
        ..
    } = &env.payload
    else {
        return Err(ApiError::new(
            ErrorCode::TypeReserved,
            "a relay forwards only delivery notices (receipts with status delivered)",
        ));
    };
    if recipient.host() != origin {
        return Err(ApiError::new(
            ErrorCode::OriginMismatch,
            format!("{recipient} is not homed on {origin}"),
        ));
    }
    let m = st
        .messages
        .get(msg)
        .filter(|m| st.agents.contains_key(&m.sender))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("no message {msg} sent from here"),
            )
        })?;
    let r = m
        .recipients
        .iter()
        .find(|r| &r.handle == recipient)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("{recipient} is not a recipient of {msg}"),
            )
        })?;
    let mut events = vec![Event::RemoteDelivered {
        at: ctx.now,
        id,
        msg: *msg,
        recipient: recipient.clone(),
    }];
    if m.ack_by.is_some() && matches!(r.state, DeliveryState::Accepted | DeliveryState::Forwarded) {
        let rc = receipt(
            st,
            ctx,
            *msg,
            &m.sender,
            recipient,
            DeliveryState::Delivered,
            None,
        )?;
        events.push(Event::Envelope {
            at: ctx.now,
            envelope: rc,
        });
    }
    Ok((events, Outcome::Accepted { id }))
}

fn read(st: &State, ctx: &Ctx<'_>, handle: Handle, upto: u64) -> Decision {
    let a = agent(st, &handle)?;
    if upto <= a.read_upto {
        return Ok((vec![], Outcome::Done(Value::Null)));
    }
    let mut events = vec![Event::Read {
        at: ctx.now,
        handle: handle.clone(),
        upto,
    }];
    // A message that asked for an ack tells its sender when it is delivered.
    for item in a
        .inbox
        .iter()
        .filter(|i| i.cursor > a.read_upto && i.cursor <= upto)
    {
        let Some(m) = st.messages.get(&item.id) else {
            continue;
        };
        // A remote sender's home relay is told with a delivery notice it turns into its own
        // receipt (FED-11); the notice is queued for that relay like any forwarded envelope.
        let remote = !m.sender.is_relay()
            && m.sender.host() != &st.host
            && ctx.policy.federation.enabled
            && st.active_peer(m.sender.host()).is_some();
        if remote {
            let pending = m.recipients.iter().any(|r| {
                r.handle == handle
                    && matches!(r.state, DeliveryState::Accepted | DeliveryState::Forwarded)
            });
            if pending {
                let notice = receipt(
                    st,
                    ctx,
                    item.id,
                    &m.sender,
                    &handle,
                    DeliveryState::Delivered,
                    None,
                )?;
                events.push(Event::Envelope {
                    at: ctx.now,
                    envelope: notice,
                });
            }
            continue;
        }
        if m.ack_by.is_none() || !st.agents.contains_key(&m.sender) {
            continue;
        }
        let pending = m.recipients.iter().any(|r| {
            r.handle == handle
                && matches!(r.state, DeliveryState::Accepted | DeliveryState::Forwarded)
        });
        if pending {
            let rc = receipt(
                st,
                ctx,
                item.id,
                &m.sender,
                &handle,
                DeliveryState::Delivered,
                None,
            )?;
            events.push(Event::Envelope {
                at: ctx.now,
                envelope: rc,
            });
        }
    }
    Ok((events, Outcome::Done(Value::Null)))
}

fn tick(st: &State, ctx: &Ctx<'_>) -> Decision {
    let mut events = Vec::new();
    for (by, id) in st.deadlines.iter() {
        if *by >= ctx.now || events.len() >= TICK_RECEIPTS_MAX {
            break;
        }
        let Some(m) = st.messages.get(id) else {
            continue;
        };
        for r in m.recipients.iter().filter(|r| !r.state.is_terminal()) {
            if st.agents.contains_key(&m.sender) {
                let rc = receipt(
                    st,
                    ctx,
                    *id,
                    &m.sender,
                    &r.handle,
                    DeliveryState::TimedOut,
                    None,
                )?;
                events.push(Event::Envelope {
                    at: ctx.now,
                    envelope: rc,
                });
            }
        }
    }
    let n = events.len();
    // FED-10: queued deliveries past the dead-letter age.
    let max_age = ctx.policy.federation.dead_letter_ms;
    let expired: Vec<(RelayHost, MessageId)> = st
        .outbound
        .iter()
        .flat_map(|(p, q)| {
            q.values()
                .filter(|x| ctx.now - x.at > max_age)
                .map(|x| (p.clone(), x.id))
        })
        .take(TICK_RECEIPTS_MAX)
        .collect();
    for (peer, id) in expired {
        dead_letter(st, ctx, &peer, id, "expired", &mut events)?;
    }
    Ok((events, Outcome::Ticked { timed_out: n }))
}
