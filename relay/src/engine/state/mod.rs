//! Projections of the event log: agents and their key logs, inboxes, contacts, pending contact
//! requests, message delivery status, deadlines, vouches and reports.
//!
//! [`State::apply`] is the only function that changes a `State`, and it is pure: the same events
//! in the same order give the same state, which is how the relay starts (replaying its log) and
//! what the rebuild test checks. Nothing here does I/O or reads a clock.

use super::events::{Event, PeerStatus};
use super::policy::Policy;
use formica_protocol::envelope::{AckStatus, DeliveryState, MessageId, Payload, SignedEnvelope};
use formica_protocol::keylog::KeyLog;
use formica_protocol::pow::Challenge;
use formica_protocol::{Handle, RelayHost};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

mod records;

pub use records::{
    Agent, InboxItem, MessageRecord, PeerRecord, PendingRequest, Queued, RecipientStatus, RemoteLog,
};

/// All projections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub host: RelayHost,
    pub agents: BTreeMap<Handle, Agent>,
    pub messages: HashMap<MessageId, MessageRecord>,
    /// Ids of every envelope in the log (dedup).
    pub seen: HashSet<MessageId>,
    /// (ack_by, message) for messages with a deadline and a recipient not yet settled.
    pub deadlines: BTreeSet<(i64, MessageId)>,
    pub challenges_used: HashSet<Challenge>,
    /// (voucher, subject) -> time of the vouch.
    pub vouches: BTreeMap<(Handle, Handle), i64>,
    /// (subject, reporter) -> time of the latest report.
    pub reports: BTreeMap<(Handle, Handle), i64>,
    pub peers: BTreeMap<RelayHost, PeerRecord>,
    pub remote_logs: BTreeMap<Handle, RemoteLog>,
    /// Cached remote key logs per home relay (`federation.remote_keylogs_per_peer_max`).
    pub remote_logs_per_host: BTreeMap<RelayHost, usize>,
    /// Entries held by cached remote key logs, conflicts included
    /// (`federation.remote_keylog_entries_max`).
    pub remote_keylog_entries: usize,
    /// Per peer, envelopes still to forward, in the order they were accepted (keyed by the
    /// event number that queued them), so order per (sender, recipient) survives restarts.
    pub outbound: BTreeMap<RelayHost, BTreeMap<u64, Queued>>,
    /// Deliveries dead-lettered so far.
    pub dead_letters: u64,
    pub events: u64,
}

impl State {
    pub fn new(host: RelayHost) -> State {
        State {
            host,
            agents: BTreeMap::new(),
            messages: HashMap::new(),
            seen: HashSet::new(),
            deadlines: BTreeSet::new(),
            challenges_used: HashSet::new(),
            vouches: BTreeMap::new(),
            reports: BTreeMap::new(),
            peers: BTreeMap::new(),
            remote_logs: BTreeMap::new(),
            remote_logs_per_host: BTreeMap::new(),
            remote_keylog_entries: 0,
            outbound: BTreeMap::new(),
            dead_letters: 0,
            events: 0,
        }
    }

    pub fn is_local(&self, h: &Handle) -> bool {
        h.host() == &self.host && !h.is_relay()
    }

    /// An active peer's key, if `host` is one.
    pub fn active_peer(&self, host: &RelayHost) -> Option<&PeerRecord> {
        self.peers
            .get(host)
            .filter(|p| p.status == PeerStatus::Active)
    }

    fn dequeue(&mut self, peer: &RelayHost, id: &MessageId) -> bool {
        let Some(q) = self.outbound.get_mut(peer) else {
            return false;
        };
        let Some(k) = q.iter().find(|(_, x)| &x.id == id).map(|(k, _)| *k) else {
            return false;
        };
        q.remove(&k);
        if q.is_empty() {
            self.outbound.remove(peer);
        }
        true
    }

    fn push_inbox(&mut self, to: &Handle, id: MessageId, wire: &Arc<Vec<u8>>) {
        if let Some(a) = self.agents.get_mut(to) {
            let cursor = a.next_cursor();
            a.inbox.push(InboxItem {
                cursor,
                id,
                wire: wire.clone(),
            });
        }
    }

    fn settle_deadline(&mut self, id: &MessageId) {
        if let Some(m) = self.messages.get(id) {
            if let Some(by) = m.ack_by {
                if m.recipients.iter().all(|r| r.state.is_terminal()) {
                    self.deadlines.remove(&(by, *id));
                }
            }
        }
    }

    fn set_status(
        &mut self,
        id: &MessageId,
        recipient: &Handle,
        at: i64,
        f: impl FnOnce(&mut RecipientStatus),
    ) {
        if let Some(m) = self.messages.get_mut(id) {
            if let Some(r) = m.recipients.iter_mut().find(|r| &r.handle == recipient) {
                f(r);
                r.updated = at;
            }
        }
        self.settle_deadline(id);
    }

    /// Applies one event. Events come from the writer (already decided valid) or from the log
    /// (already on disk); either way applying cannot fail: an event that refers to something
    /// unknown changes nothing.
    pub fn apply(&mut self, ev: &Event) {
        self.events += 1;
        match ev {
            Event::Registered {
                at,
                entry,
                challenge,
            } => {
                self.challenges_used.insert(*challenge);
                if let Ok(log) = KeyLog::start(entry.clone()) {
                    let handle = log.handle().clone();
                    self.agents.insert(
                        handle.clone(),
                        Agent {
                            handle,
                            keylog: log,
                            registered_at: *at,
                            conflicts: Vec::new(),
                            contacts: BTreeMap::new(),
                            requests: BTreeMap::new(),
                            inbox: Vec::new(),
                            read_upto: 0,
                            acked_sent: 0,
                            requests_sent: VecDeque::new(),
                            reports_sent: VecDeque::new(),
                        },
                    );
                }
            }
            Event::KeyLogAppended { entry, .. } => {
                if let Some(a) = self.agents.get_mut(&entry.entry().handle) {
                    let _ = a.keylog.append(entry.clone());
                }
            }
            Event::KeyLogConflict { entry, .. } => {
                if let Some(a) = self.agents.get_mut(&entry.entry().handle) {
                    a.conflicts.push(entry.clone());
                }
            }
            Event::Envelope { at, envelope } => self.apply_envelope(*at, envelope),
            Event::Read { at, handle, upto } => {
                let Some(a) = self.agents.get_mut(handle) else {
                    return;
                };
                let from = a.read_upto;
                if *upto <= from {
                    return;
                }
                a.read_upto = *upto;
                // Cursors are increasing: find the range instead of scanning the whole inbox.
                let lo = a.inbox.partition_point(|i| i.cursor <= from);
                let hi = a.inbox.partition_point(|i| i.cursor <= *upto);
                let ids: Vec<MessageId> = a.inbox[lo..hi].iter().map(|i| i.id).collect();
                for id in ids {
                    self.set_status(&id, handle, *at, |r| {
                        if matches!(r.state, DeliveryState::Accepted | DeliveryState::Forwarded) {
                            r.state = DeliveryState::Delivered;
                        }
                    });
                }
            }
            Event::ContactSet {
                at,
                owner,
                contact,
                level,
            } => {
                if let Some(a) = self.agents.get_mut(owner) {
                    let since = a.contacts.get(contact).map(|(_, s)| *s).unwrap_or(*at);
                    a.contacts.insert(contact.clone(), (*level, since));
                    // A grant answers any pending request from the same agent.
                    a.requests.retain(|_, r| &r.from != contact);
                }
            }
            Event::ContactRemoved { owner, contact, .. } => {
                if let Some(a) = self.agents.get_mut(owner) {
                    a.contacts.remove(contact);
                }
            }
            Event::PeerSet {
                at,
                host,
                key,
                status,
            } => {
                let since = self.peers.get(host).map(|p| p.since).unwrap_or(*at);
                self.peers.insert(
                    host.clone(),
                    PeerRecord {
                        key: *key,
                        status: *status,
                        since,
                    },
                );
            }
            Event::PeerRemoved { host, .. } => {
                self.peers.remove(host);
            }
            Event::RemoteKeyLog { entry, .. } => {
                let h = entry.entry().handle.clone();
                match self.remote_logs.get_mut(&h) {
                    Some(r) => {
                        if r.log.append(entry.clone()).is_ok() {
                            self.remote_keylog_entries += 1;
                        }
                    }
                    None => {
                        if let Ok(log) = KeyLog::start(entry.clone()) {
                            *self
                                .remote_logs_per_host
                                .entry(h.host().clone())
                                .or_default() += 1;
                            self.remote_keylog_entries += 1;
                            self.remote_logs.insert(
                                h,
                                RemoteLog {
                                    log,
                                    conflicts: Vec::new(),
                                },
                            );
                        }
                    }
                }
            }
            Event::RemoteKeyLogConflict { entry, .. } => {
                if let Some(r) = self.remote_logs.get_mut(&entry.entry().handle) {
                    r.conflicts.push(entry.clone());
                    self.remote_keylog_entries += 1;
                }
            }
            Event::Transferred { at, peer, id } => {
                self.dequeue(peer, id);
                let peer = peer.clone();
                if let Some(m) = self.messages.get_mut(id) {
                    for r in m.recipients.iter_mut() {
                        if r.handle.host() == &peer && r.state == DeliveryState::Accepted {
                            r.state = DeliveryState::Forwarded;
                            r.updated = *at;
                        }
                    }
                }
            }
            Event::RemoteDelivered {
                at,
                id,
                msg,
                recipient,
            } => {
                self.seen.insert(*id);
                self.set_status(msg, recipient, *at, |r| {
                    if matches!(r.state, DeliveryState::Accepted | DeliveryState::Forwarded) {
                        r.state = DeliveryState::Delivered;
                    }
                });
            }
            Event::DeadLettered { peer, id, .. } => {
                if self.dequeue(peer, id) {
                    self.dead_letters += 1;
                }
            }
            Event::RequestAnswered {
                at,
                owner,
                request,
                level,
            } => {
                if let Some(a) = self.agents.get_mut(owner) {
                    if let Some(r) = a.requests.remove(request) {
                        if let Some(l) = level {
                            let since = a.contacts.get(&r.from).map(|(_, s)| *s).unwrap_or(*at);
                            a.contacts.insert(r.from.clone(), (*l, since));
                            a.requests.retain(|_, x| x.from != r.from);
                        }
                    }
                }
            }
        }
    }

    fn apply_envelope(&mut self, at: i64, se: &SignedEnvelope) {
        let env = se.envelope();
        let id = se.id();
        self.seen.insert(id);
        let wire = se.wire().clone();
        // FED-4: what a local agent sends to agents homed elsewhere is queued for their home
        // relays (never what arrived from another relay: no transit), and so are this relay's
        // delivery notices for remote senders (FED-11).
        let own_notice =
            env.from == Handle::relay(&self.host) && matches!(env.payload, Payload::Receipt { .. });
        if self.is_local(&env.from) || own_notice {
            let hosts: BTreeSet<RelayHost> = env
                .to
                .iter()
                .filter(|h| h.host() != &self.host)
                .map(|h| h.host().clone())
                .collect();
            for h in hosts {
                self.outbound.entry(h).or_default().insert(
                    self.events,
                    Queued {
                        id,
                        wire: wire.clone(),
                        at,
                    },
                );
            }
        }
        match &env.payload {
            Payload::Ack { msg, status, .. } => {
                let acker = env.from.clone();
                let mut sender_acked = false;
                self.set_status(msg, &acker, at, |r| {
                    if !r.state.is_terminal() {
                        r.state = DeliveryState::Acked;
                        r.ack = Some((id, *status));
                        sender_acked = *status != AckStatus::Rejected;
                    }
                });
                if sender_acked {
                    // TRUST-2 counts acks from others: an agent acking its own message to
                    // itself does not raise its own tier.
                    let sender = self
                        .messages
                        .get(msg)
                        .map(|m| m.sender.clone())
                        .filter(|s| *s != acker);
                    if let Some(sender) = sender {
                        if let Some(a) = self.agents.get_mut(&sender) {
                            a.acked_sent += 1;
                        }
                    }
                }
                for to in &env.to {
                    self.push_inbox(to, id, &wire);
                }
            }
            Payload::Receipt {
                msg,
                recipient,
                status,
                reason,
                ..
            } => {
                if *status == DeliveryState::TimedOut || *status == DeliveryState::DeadLettered {
                    let s = *status;
                    self.set_status(msg, recipient, at, |r| {
                        if !r.state.is_terminal() {
                            r.state = s;
                            r.reason = reason.clone();
                        }
                    });
                }
                for to in &env.to {
                    self.push_inbox(to, id, &wire);
                }
            }
            Payload::Vouch { subject, action } => {
                let key = (env.from.clone(), subject.clone());
                match action {
                    formica_protocol::envelope::VouchAction::Grant => {
                        self.vouches.insert(key, env.ts);
                    }
                    formica_protocol::envelope::VouchAction::Revoke => {
                        self.vouches.remove(&key);
                    }
                }
            }
            Payload::Report { subject, .. } => {
                self.reports
                    .insert((subject.clone(), env.from.clone()), env.ts);
                if let Some(a) = self.agents.get_mut(&env.from) {
                    a.reports_sent.push_back(env.ts);
                    while a.reports_sent.len() > 1024 {
                        a.reports_sent.pop_front();
                    }
                }
            }
            _ => {
                let recipients: Vec<RecipientStatus> = env
                    .to
                    .iter()
                    .map(|h| RecipientStatus {
                        handle: h.clone(),
                        state: DeliveryState::Accepted,
                        updated: at,
                        ack: None,
                        reason: None,
                    })
                    .collect();
                self.messages.insert(
                    id,
                    MessageRecord {
                        sender: env.from.clone(),
                        msg_type: env.msg_type.clone(),
                        ts: env.ts,
                        ack_by: env.ack_by,
                        recipients,
                    },
                );
                // Deadlines are the sender's home relay's to enforce (ACK-4, FED-11).
                if let (Some(by), true) = (env.ack_by, self.is_local(&env.from)) {
                    self.deadlines.insert((by, id));
                }
                if let Payload::ContactRequest { level, note } = &env.payload {
                    if let Some(a) = self.agents.get_mut(&env.from) {
                        a.requests_sent.push_back(env.ts);
                        while a.requests_sent.len() > 1024 {
                            a.requests_sent.pop_front();
                        }
                    }
                    for to in &env.to {
                        if let Some(a) = self.agents.get_mut(to) {
                            a.requests.insert(
                                id,
                                PendingRequest {
                                    from: env.from.clone(),
                                    level: *level,
                                    note: note.clone(),
                                    ts: env.ts,
                                },
                            );
                        }
                    }
                }
                for to in &env.to {
                    self.push_inbox(to, id, &wire);
                }
            }
        }
    }

    /// The agent's tier index at `now` (TRUST-1..5): the highest tier whose thresholds hold,
    /// lowered one step per `reports_per_demotion` active reports from reporters at
    /// `report_min_tier` or above (computed without demotion, so reports cannot cascade).
    pub fn tier_of(&self, handle: &Handle, now: i64, policy: &Policy) -> usize {
        let base = self.base_tier(handle, now, policy);
        let tr = &policy.trust;
        let reports = self
            .reports
            .iter()
            .filter(|((s, reporter), at)| {
                s == handle
                    && now - **at < tr.report_ttl_ms
                    && self.base_tier(reporter, now, policy) >= tr.report_min_tier
            })
            .count() as u64;
        let demotion = reports.checked_div(tr.reports_per_demotion).unwrap_or(0) as usize;
        base.saturating_sub(demotion)
    }

    fn base_tier(&self, handle: &Handle, now: i64, policy: &Policy) -> usize {
        let Some(a) = self.agents.get(handle) else {
            return 0;
        };
        let age = now - a.registered_at;
        let vouches = self
            .vouches
            .iter()
            .filter(|((voucher, subject), at)| {
                subject == handle
                    && now - **at < policy.trust.vouch_ttl_ms
                    // A voucher's own tier is judged by age and acks alone, so vouches cannot
                    // bootstrap each other in a cycle.
                    && self.tier_without_vouches(voucher, now, policy) >= policy.trust.vouch_min_tier
            })
            .count() as u64;
        policy
            .tiers
            .iter()
            .enumerate()
            .rev()
            .find(|(_, t)| {
                age >= t.min_age_ms && a.acked_sent >= t.min_acked && vouches >= t.min_vouches
            })
            .map(|(i, _)| i)
            .unwrap_or(0)
    }

    fn tier_without_vouches(&self, handle: &Handle, now: i64, policy: &Policy) -> usize {
        let Some(a) = self.agents.get(handle) else {
            return 0;
        };
        let age = now - a.registered_at;
        policy
            .tiers
            .iter()
            .enumerate()
            .rev()
            .find(|(_, t)| age >= t.min_age_ms && a.acked_sent >= t.min_acked && t.min_vouches == 0)
            .map(|(i, _)| i)
            .unwrap_or(0)
    }

    /// Active vouches given by `voucher`.
    pub fn vouches_given(&self, voucher: &Handle, now: i64, policy: &Policy) -> usize {
        self.vouches
            .iter()
            .filter(|((v, _), at)| v == voucher && now - **at < policy.trust.vouch_ttl_ms)
            .count()
    }
}
