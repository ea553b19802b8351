//! Projections of the event log: agents and their key logs, inboxes, contacts, pending contact
//! requests, message delivery status, deadlines, peers and their queues, vouches and reports.
//!
//! [`State::apply`] is the only function that changes a `State`, and it is pure: the same events
//! in the same order give the same projections, which is what the rebuild test checks. Nothing
//! here reads a clock.
//!
//! Where they live: what grows with the number of messages (inbox items and their bytes,
//! message records, seen ids, deadlines, outbound queues) is only in the store's tables, read
//! through [`Db`] (the committed rows under the writer's uncommitted changes); what grows with
//! the number of agents and peers (agents with their key logs, contacts and requests,
//! profiles, peers, cached remote key logs, vouches, reports, counters) is held in memory in
//! full, in [`Tracked`] maps whose changed rows the writer commits with the batch's records.
//! Start-up loads the second kind ([`State::load`]); nothing is replayed unless the tables are
//! missing or damaged.

use super::events::{Event, PeerStatus};
use crate::store::{Store, Table};
use formica_protocol::envelope::{DeliveryState, MessageId};
use formica_protocol::keylog::KeyLog;
use formica_protocol::{Handle, RelayHost};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

mod checkpoints;
pub mod codec;
mod conversations;
mod envelopes;
mod replicas;
pub use conversations::stored_limits as stored_entry_limits;
pub use conversations::ConvRecord;
mod db;
mod persist;
mod profiles;
mod reads;
mod records;
pub mod refresh;
pub mod retention;
mod tracked;
mod trust;

pub use checkpoints::Logged;
pub use db::Db;
pub use persist::{format_change, FORMAT, FORMAT_VERSION};
pub use profiles::{ProfileIndex, StoredProfile};
pub use records::{
    Agent, InboxItem, MessageRecord, PeerRecord, PendingRequest, Queued, RecipientStatus, RemoteLog,
};
pub use tracked::Tracked;

/// All projections.
#[derive(Debug)]
pub struct State {
    pub host: RelayHost,
    pub agents: Tracked<Handle, Agent>,
    /// (voucher, subject) -> time of the vouch.
    pub vouches: Tracked<(Handle, Handle), i64>,
    /// (subject, reporter) -> time of the latest report.
    pub reports: Tracked<(Handle, Handle), i64>,
    pub peers: Tracked<RelayHost, PeerRecord>,
    pub remote_logs: Tracked<Handle, RemoteLog>,
    /// The latest profile of each agent homed here (SPEC.md section 18).
    pub profiles: Tracked<Handle, StoredProfile>,
    /// Listed profiles by capability (derived from `profiles`).
    pub profile_index: ProfileIndex,
    /// The latest signed presence status of each agent homed here (SPEC.md PRES-3).
    pub statuses: Tracked<Handle, formica_protocol::SignedStatus>,
    /// Cached remote key logs per home relay (`federation.remote_keylogs_per_peer_max`).
    pub remote_logs_per_host: BTreeMap<RelayHost, usize>,
    /// Entries held by cached remote key logs, conflicts included
    /// (`federation.remote_keylog_entries_max`).
    pub remote_keylog_entries: usize,
    /// Per peer, envelopes queued (the rows are in the `outbound` table).
    pub outbound_len: BTreeMap<RelayHost, usize>,
    /// Message records kept.
    pub messages_len: u64,
    /// Messages with a deadline and a recipient not yet settled.
    pub deadlines_len: u64,
    /// Deliveries dead-lettered so far.
    pub dead_letters: u64,
    /// Events applied (the log's length, once committed).
    pub events: u64,
    /// The last two checkpoints logged, oldest first (`engine::checkpoint`).
    pub checkpoints: Vec<Logged>,
    /// The conversations this relay is home to (SPEC.md section 19).
    pub convs: conversations::Convs,
    counters_dirty: bool,
    pub db: Db,
}

impl State {
    /// Empty projections over `store`'s tables (which must hold none: a rebuild clears them).
    pub fn new(host: RelayHost, store: Arc<dyn Store>) -> State {
        Self::with_db(host, Db::new(store))
    }

    /// Empty projections in `tables` for the log in `log` (a replay into another store).
    pub fn new_for_log(host: RelayHost, tables: Arc<dyn Store>, log: Arc<dyn Store>) -> State {
        Self::with_db(host, Db::with_log(tables, log))
    }

    fn with_db(host: RelayHost, db: Db) -> State {
        State {
            host,
            agents: Tracked::default(),
            vouches: Tracked::default(),
            reports: Tracked::default(),
            peers: Tracked::default(),
            remote_logs: Tracked::default(),
            profiles: Tracked::default(),
            profile_index: ProfileIndex::default(),
            statuses: Tracked::default(),
            remote_logs_per_host: BTreeMap::new(),
            remote_keylog_entries: 0,
            outbound_len: BTreeMap::new(),
            messages_len: 0,
            deadlines_len: 0,
            dead_letters: 0,
            events: 0,
            checkpoints: Vec::new(),
            convs: Default::default(),
            counters_dirty: false,
            db,
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

    // ---- changes to the tables ----

    fn put_message(&mut self, id: &MessageId, m: &MessageRecord) {
        self.db
            .put(Table::Messages, id.0.to_vec(), codec::message_value(m));
    }

    fn dequeue(&mut self, peer: &RelayHost, id: &MessageId) -> bool {
        let idk = codec::outbound_id_key(peer, id);
        let Some(n) = self.db.get(Table::OutboundIds, &idk) else {
            return false;
        };
        let Some(n) = n
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            return false;
        };
        self.db.del(Table::OutboundIds, idk);
        self.db.del(Table::Outbound, codec::outbound_key(peer, n));
        if let Some(c) = self.outbound_len.get_mut(peer) {
            *c -= 1;
            if *c == 0 {
                self.outbound_len.remove(peer);
            }
        }
        true
    }

    fn enqueue(&mut self, peer: &RelayHost, n: u64, id: &MessageId, at: i64) {
        let idk = codec::outbound_id_key(peer, id);
        if self.db.get(Table::OutboundIds, &idk).is_some() {
            return;
        }
        self.db
            .put(Table::OutboundIds, idk, n.to_be_bytes().to_vec());
        self.db.put(
            Table::Outbound,
            codec::outbound_key(peer, n),
            // `n` is the number of the record being applied: it holds the bytes.
            codec::item_value(id, at, n),
        );
        *self.outbound_len.entry(peer.clone()).or_default() += 1;
    }

    /// Puts `id`, whose bytes are in the record being applied (number `self.events`), into
    /// `to`'s inbox.
    fn push_inbox(&mut self, to: &Handle, id: MessageId, at: i64) {
        let Some(a) = self.agents.get_mut_hot(to) else {
            return;
        };
        let cursor = a.next_cursor;
        a.next_cursor += 1;
        self.db.put(
            Table::Inbox,
            codec::inbox_key(to, cursor),
            codec::item_value(&id, at, self.events),
        );
        self.db.put(
            Table::InboxByTime,
            codec::inbox_time_key(at, to, cursor),
            Vec::new(),
        );
    }

    /// Keeps the id of a peer's delivery notice, whose event has only `at`, which stands for
    /// its `ts`: by id too, so that the notice's dedup finds it without its `ts`.
    fn mark_seen(&mut self, id: &MessageId, ts: i64) {
        if self.db.get(Table::Seen, &id.0).is_some() {
            return;
        }
        self.db
            .put(Table::Seen, id.0.to_vec(), ts.to_be_bytes().to_vec());
        self.mark_new(id, ts);
    }

    /// Keeps the id of an envelope known to be new (the writer decided it was not seen,
    /// INGEST-2, and ids are never accepted again after their row goes: RET-3), so the store
    /// is not asked: under its `ts` only (see [`State::seen`]).
    fn mark_new(&mut self, id: &MessageId, ts: i64) {
        self.db
            .put(Table::SeenByTs, codec::time_id_key(ts, id), Vec::new());
    }

    fn set_status(
        &mut self,
        id: &MessageId,
        recipient: &Handle,
        at: i64,
        f: impl FnOnce(&mut RecipientStatus),
    ) {
        let Some(mut m) = self.message(id) else {
            return;
        };
        if let Some(r) = m.recipients.iter_mut().find(|r| &r.handle == recipient) {
            f(r);
            r.updated = at;
        }
        if let Some(by) = m.ack_by {
            if m.recipients.iter().all(|r| r.state.is_terminal()) {
                let k = codec::time_id_key(by, id);
                if self.db.get(Table::Deadlines, &k).is_some() {
                    self.db.del(Table::Deadlines, k);
                    self.deadlines_len = self.deadlines_len.saturating_sub(1);
                    self.counters_dirty = true;
                }
            }
        }
        self.put_message(id, &m);
    }

    /// Applies one event. Events come from the writer (already decided valid) or from the log
    /// (already on disk); either way applying cannot fail: an event that refers to something
    /// unknown changes nothing.
    pub fn apply(&mut self, ev: &Event) {
        self.events += 1;
        self.counters_dirty = true;
        match ev {
            Event::Registered {
                at,
                entry,
                challenge,
            } => {
                self.db.put(
                    Table::UsedChallenges,
                    challenge.to_hex().into_bytes(),
                    at.to_be_bytes().to_vec(),
                );
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
                            next_cursor: 1,
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
            Event::Envelope { at, envelope } => {
                self.apply_envelope(*at, envelope);
                self.apply_conv_envelope(*at, envelope);
            }
            Event::Conv { at, conv, change } => self.apply_conv(*at, conv, change),
            Event::ConvReplica {
                at,
                home,
                conv,
                turns,
                expires,
                entries,
                declined,
            } => self.apply_conv_replica(*at, home, *conv, (*turns, *expires), entries, declined),
            Event::Read { at, handle, upto } => {
                let Some(a) = self.agents.get_mut_hot(handle) else {
                    return;
                };
                let from = a.read_upto;
                if *upto <= from {
                    return;
                }
                a.read_upto = *upto;
                let span = usize::try_from(*upto - from).unwrap_or(usize::MAX);
                let ids: Vec<MessageId> = self
                    .inbox_ids_after(handle, from, span)
                    .into_iter()
                    .filter(|i| i.cursor <= *upto)
                    .map(|i| i.id)
                    .collect();
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
            Event::ProfileSet { profile, .. } => self.set_profile(profile),
            Event::StatusSet { status, .. } => {
                self.statuses
                    .insert(status.status().handle.clone(), status.clone());
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
                if let Some(mut m) = self.message(id) {
                    let mut changed = false;
                    let all = m.via.as_ref() == Some(peer);
                    for r in m.recipients.iter_mut() {
                        if (all || r.handle.host() == peer) && r.state == DeliveryState::Accepted {
                            r.state = DeliveryState::Forwarded;
                            r.updated = *at;
                            changed = true;
                        }
                    }
                    if changed {
                        self.put_message(id, &m);
                    }
                }
            }
            Event::RemoteDelivered {
                at,
                id,
                msg,
                recipient,
            } => {
                self.mark_seen(id, *at);
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
            Event::Retained { bounds, .. } => self.apply_retention(bounds),
            Event::Checkpoint { cp, .. } => self.apply_checkpoint(cp),
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
}
