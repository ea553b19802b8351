//! Decisions that depend on relay state: the pure half of the single writer.
//!
//! Handlers do the stateless work (size, strict parse, schema, freshness, signature) in
//! parallel. The writer then calls [`decide`] for each command in a batch, against the state
//! as it stands after the commands before it, applies the resulting events and appends them
//! with one fsync. `decide` reads no clock and does no I/O: the time and the relay key come in
//! through [`Ctx`], so the same inputs always give the same events.
//!
//! One file per concern: [`ingest`] (steps 7-10 of envelope ingest), [`delivery`] (reads and
//! acks), [`contacts`], [`keylog`] (registration and key logs, local and cached remote),
//! [`federation`] (peers, transfers and their outcomes, dead letters) and [`tick`] (deadlines
//! and the dead-letter age). This file holds the commands, the outcomes and what several
//! concerns share: the dispatcher, agent look-up and receipts.

use super::error::ApiError;
use super::events::{Event, PeerStatus};
use super::policy::Policy;
use super::state::{Agent, State};
use formica_protocol::envelope::{
    AckStatus, ContactLevel, DeliveryState, Envelope, MessageId, MessageType, Payload,
    SignedEnvelope, VerifiedEnvelope,
};
use formica_protocol::keylog::{KeyLog, SignedKeyLogEntry};
use formica_protocol::pow::Challenge;
use formica_protocol::{ErrorCode, Handle, PublicKey, RelayHost, SecretKey, Value};

mod contacts;
mod conversations;
mod delivery;
mod federation;
mod ingest;
mod keylog;
mod presence;
mod profiles;
mod replicas;
pub use replicas::UNAVAILABLE;
mod tick;

pub use federation::{peer_caps, peer_value, transfer_item};
pub use keylog::KEYLOG_CONFLICTS_MAX;
pub use tick::TICK_RECEIPTS_MAX;

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
    /// An agent's profile, its signature verified by the handler (PROF-4).
    ProfileSet {
        profile: formica_protocol::SignedProfile,
    },
    /// An agent's presence status, its signature verified by the handler (PRES-3).
    StatusSet {
        status: formica_protocol::SignedStatus,
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
    /// A retention sweep (SPEC.md RET-1..RET-3), every `retention.sweep_ms`.
    Retain,
    /// Log a checkpoint whose snapshot is written (`engine::checkpoint`).
    Checkpoint(crate::engine::events::CheckpointMark),
    /// An envelope a peer forwarded (FED-6), its agent signature verified again here.
    RemoteEnvelope {
        env: VerifiedEnvelope,
        origin: RelayHost,
    },
    /// The envelopes of one transfer that passed the handler's checks, in transfer order. The
    /// writer decides them one after another as a single job (see [`transfer_item`]), so that
    /// order per sender (FED-9) holds whatever else is queued: the answer is
    /// [`Outcome::Transfer`], one result per envelope. An envelope whose sender's key log is
    /// not cached here comes with the log fetched for it, verified from its first entry; the
    /// log is stored only if the envelope is accepted (FED-8).
    Transfer {
        envs: Vec<(VerifiedEnvelope, Option<KeyLog>)>,
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
    /// A batch of entries for this relay's replica of a conversation homed on `origin`
    /// (CONVO-13), its envelopes' signatures verified by the handler; `fetched` as in
    /// [`Command::Transfer`].
    ConvReplica {
        origin: RelayHost,
        batch: formica_protocol::conversation::replica::Batch,
        fetched: Vec<KeyLog>,
    },
    /// What `peer` answered for a batch of conversation `conv` (CONVO-15): `sent` are the
    /// envelope entries of the batch (seq, envelope id).
    ConvReplicated {
        peer: RelayHost,
        conv: MessageId,
        sent: Vec<(u64, MessageId)>,
        answer: Result<formica_protocol::conversation::replica::Answer, ErrorCode>,
    },
    /// The forwarding worker gave up on a queued envelope (too many attempts).
    DeadLetter {
        peer: RelayHost,
        id: MessageId,
        reason: String,
    },
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
        /// For a conversation envelope: its conversation and the entry's seq (CONVO-4).
        conv: Option<(MessageId, Option<u64>)>,
    },
    Duplicate {
        id: MessageId,
    },
    Done(Value),
    /// Rows a retention sweep removed.
    Retained {
        removed: usize,
    },
    /// A checkpoint record was logged.
    Checkpointed,
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

pub type Decision = Result<(Vec<Event>, Outcome), ApiError>;

/// Decides one command against `st`. The writer applies the events of an `Ok` decision and
/// appends them; an `Err` changes nothing.
pub fn decide(st: &State, ctx: &Ctx<'_>, cmd: Command) -> Decision {
    match cmd {
        Command::Register { entry, challenge } => keylog::register(st, ctx, entry, challenge),
        Command::KeyLog { entry } => keylog::append(st, ctx, entry),
        Command::RemoteKeyLog { entries } => keylog::remote(st, ctx, entries),
        Command::Envelope { env } => ingest::envelope(st, ctx, env, None, None),
        Command::RemoteEnvelope { env, origin } => {
            ingest::envelope(st, ctx, env, Some(&origin), None)
        }
        Command::Transfer { .. } => Err(ApiError::internal(
            "a transfer is decided envelope by envelope by the writer",
        )),
        Command::PeerSet {
            host,
            key,
            status,
            stranger,
        } => federation::peer_set(st, ctx, host, key, status, stranger),
        Command::PeerRemove { host } => federation::peer_remove(st, ctx, host),
        Command::TransferResults { peer, results } => {
            federation::transfer_results(st, ctx, peer, results)
        }
        Command::ConvReplica {
            origin,
            batch,
            fetched,
        } => replicas::batch(st, ctx, origin, batch, fetched),
        Command::ConvReplicated {
            peer,
            conv,
            sent,
            answer,
        } => replicas::replicated(st, ctx, peer, conv, sent, answer),
        Command::DeadLetter { peer, id, reason } => {
            federation::dead_letter_command(st, ctx, peer, id, reason)
        }
        Command::Read { handle, upto } => delivery::read(st, ctx, handle, upto),
        Command::ContactSet {
            owner,
            contact,
            level,
        } => contacts::set(st, ctx, owner, contact, level),
        Command::ContactRemove { owner, contact } => contacts::remove(st, ctx, owner, contact),
        Command::AnswerRequest {
            owner,
            request,
            accept,
        } => contacts::answer_request(st, ctx, owner, request, accept),
        Command::ProfileSet { profile } => profiles::set(st, ctx, profile),
        Command::StatusSet { status } => presence::set(st, ctx, status),
        Command::Tick => tick::tick(st, ctx),
        Command::Retain => tick::retain(st, ctx),
        Command::Checkpoint(mark) => tick::checkpoint(st, ctx, mark),
    }
}

fn agent<'s>(st: &'s State, h: &Handle) -> Result<&'s Agent, ApiError> {
    st.agents
        .get(h)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("{h} is not registered here")))
}

/// Ingest step 8 for a sender homed here: its agent and the key the envelope names, which must
/// be valid at the envelope's time. Used by the handler before the signature check and by the
/// writer again when it decides.
pub fn local_sender<'s>(
    st: &'s State,
    env: &Envelope,
) -> Result<(&'s Agent, &'s PublicKey), ApiError> {
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
        conv: None,
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
