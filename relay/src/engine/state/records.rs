//! The records the projections are made of: agents (key log, contacts, requests, inbox),
//! messages with per-recipient delivery status, peers, cached remote key logs and queued
//! transfers.

use crate::engine::events::PeerStatus;
use formica_protocol::envelope::{AckStatus, ContactLevel, DeliveryState, MessageId, MessageType};
use formica_protocol::keylog::{KeyLog, SignedKeyLogEntry};
use formica_protocol::{Handle, PublicKey, RelayHost};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// One inbox item: the canonical wire bytes of an envelope or receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxItem {
    pub cursor: u64,
    pub id: MessageId,
    /// When it was stored (retention counts from here).
    pub at: i64,
    /// The log record that holds its bytes (the row does not copy them).
    pub seq: u64,
    /// The bytes, when read with them (`State::inbox_after`), else empty.
    pub wire: Arc<Vec<u8>>,
}

/// A contact request waiting for an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRequest {
    pub from: Handle,
    pub level: ContactLevel,
    pub note: Option<String>,
    pub ts: i64,
}

/// An agent homed on this relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub handle: Handle,
    pub keylog: KeyLog,
    pub registered_at: i64,
    /// Valid entries that conflicted with the log (evidence of a fork).
    pub conflicts: Vec<SignedKeyLogEntry>,
    /// Who may send to this agent, at which level, since when.
    pub contacts: BTreeMap<Handle, (ContactLevel, i64)>,
    pub requests: BTreeMap<MessageId, PendingRequest>,
    /// The cursor the next inbox item gets (items are rows of the `inbox` table).
    pub next_cursor: u64,
    /// Highest cursor handed to the agent.
    pub read_upto: u64,
    /// Messages this agent sent that a recipient acked with received or processed.
    pub acked_sent: u64,
    /// Times of the contact requests this agent sent (the last hour matters).
    pub requests_sent: VecDeque<i64>,
    /// Times of the reports this agent filed (the last day matters).
    pub reports_sent: VecDeque<i64>,
}

impl Agent {
    /// The newest cursor given out (0: none yet).
    pub fn newest(&self) -> u64 {
        self.next_cursor - 1
    }
    /// Items not yet handed out. Cursors are consecutive, so this is a subtraction.
    pub fn unread(&self) -> usize {
        self.newest().saturating_sub(self.read_upto) as usize
    }
}

/// Delivery of one message to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    pub handle: Handle,
    pub state: DeliveryState,
    pub updated: i64,
    pub ack: Option<(MessageId, AckStatus)>,
    /// Why a `dead_lettered` or `timed_out` delivery ended, from its receipt (a refusing
    /// relay's error code, for example `not_contact`).
    pub reason: Option<String>,
}

/// What the relay keeps about a message it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub sender: Handle,
    pub msg_type: MessageType,
    pub ts: i64,
    /// When this relay accepted it (retention counts from here).
    pub at: i64,
    pub ack_by: Option<i64>,
    pub recipients: Vec<RecipientStatus>,
    /// A conversation post or action of an agent homed here, in a conversation homed on this
    /// peer: it went to that relay for all its recipients (SPEC.md CONVO-16).
    pub via: Option<RelayHost>,
    /// For a conversation envelope (a call, an action, a post): its conversation and its
    /// entry's seq (`None` until the home relay numbered it and the entry came back; API-13).
    pub conv: Option<(MessageId, Option<u64>)>,
}

/// A peer relay (SPEC.md 16.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    pub key: PublicKey,
    pub status: PeerStatus,
    pub since: i64,
}

/// The cached key log of an agent homed on another relay (FED-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLog {
    pub log: KeyLog,
    /// Valid entries that conflicted with the cached log (evidence of a fork).
    pub conflicts: Vec<SignedKeyLogEntry>,
}

/// An envelope waiting to be forwarded to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: MessageId,
    /// The log record that holds its bytes.
    pub seq: u64,
    /// The bytes, when read with them (`State::queued_with_wire`), else empty.
    pub wire: Arc<Vec<u8>>,
    /// When this relay accepted it (the dead-letter age counts from here).
    pub at: i64,
}
