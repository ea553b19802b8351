//! Conversations (SPEC.md section 19) in the projections: each conversation's fold in memory
//! (its states, roster and head; bounded by `conversations.open_max` per agent and by the
//! removal of closed ones after `closed_keep_ms`), and each entry's bytes as a row of `small`
//! (`conve NUL <id> NUL <seq, 10 digits>`), written with the record that made it. Memory holds
//! no entry bytes: pages and streams read the rows. Start-up reads every kept entry once to
//! rebuild the folds: bounded by `turns_max` posts per conversation, `KEPT_PER_OPEN` x
//! `open_max` conversations per caller and `closed_keep_ms`.

use super::replicas::{replica_key, replica_meta};
use super::{codec, State};
use crate::engine::conversations::POSTS_PER_MIN_MAX;
use crate::store::Table;
use formica_protocol::conversation::{
    ConvLimits, Conversation, Entry, EntryBody, PartState, FIRST_PREV,
};
use formica_protocol::envelope::{EnvelopeLimits, MessageId, MessageType, Payload};
use formica_protocol::{Handle, JsonLimits, RelayHost, SignedEnvelope};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The conversations this relay is home to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Convs {
    pub map: BTreeMap<MessageId, ConvRecord>,
    /// Each participant's conversations, by creation time.
    pub by_agent: BTreeMap<Handle, BTreeSet<(i64, MessageId)>>,
    /// The conversations that are not closed.
    pub open: BTreeSet<MessageId>,
    /// Timers, so that a tick looks only at what is due: live invitations ringing, by the time
    /// they were made (`ring_ms` is added when asked), ...
    pub ringing: BTreeSet<(i64, MessageId, Handle)>,
    /// ... open conversations with an `expires`, by it, ...
    pub expiring: BTreeSet<(i64, MessageId)>,
    /// ... and open conversations without one, by their creation (`ttl_max_ms` is added).
    pub aging: BTreeSet<(i64, MessageId)>,
}

/// One conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvRecord {
    pub conv: Conversation,
    /// When its latest posts were appended (at most `POSTS_PER_MIN_MAX`), for
    /// `conversations.posts_per_min`.
    pub post_times: VecDeque<i64>,
    /// When it closed.
    pub closed_at: Option<i64>,
    /// A replica (SPEC.md CONVO-12): the conversation's home relay, and the turn limit and
    /// expiry in force there. `None`: homed here.
    pub home: Option<RelayHost>,
    pub terms: Option<(i64, i64)>,
    /// For a replica: when this relay started it (its own clock, CONVO-17), and the invitees
    /// homed here it declined for (CONVO-14: repeated in every answer while they still ring
    /// in the replica, so that a lost answer loses no decline).
    pub replica_since: i64,
    pub declined_here: BTreeMap<Handle, String>,
}

impl ConvRecord {
    /// Records a post appended at `at` (the latest `POSTS_PER_MIN_MAX` are kept).
    fn posted(&mut self, at: i64) {
        self.post_times.push_back(at);
        while self.post_times.len() > POSTS_PER_MIN_MAX {
            self.post_times.pop_front();
        }
    }

    /// The limits the conversation is judged under: this relay's, or for a replica the terms
    /// in force at its home relay.
    pub fn limits(&self, here: ConvLimits) -> ConvLimits {
        match self.terms {
            Some((turns, expires)) => ConvLimits {
                participants_max: here.participants_max.max(self.conv.participants.len()),
                turns_max: turns,
                ttl_max_ms: expires.saturating_sub(self.conv.created),
            },
            None => here,
        }
    }

    /// Posts appended after `since`.
    pub fn posts_since(&self, since: i64) -> usize {
        self.post_times
            .iter()
            .rev()
            .take_while(|t| **t > since)
            .count()
    }
}

pub(super) fn entry_key(id: &MessageId, seq: u64) -> Vec<u8> {
    codec::small_key("conve", &id.to_hex(), Some(&format!("{seq:010}")))
}

/// What entries read back from the store may hold: the relay wrote them after checking them.
pub fn stored_limits() -> EnvelopeLimits {
    EnvelopeLimits {
        json: JsonLimits {
            bytes_max: 16 << 20,
            depth_max: 64,
        },
        recipients_max: usize::MAX,
        payload_bytes_max: usize::MAX,
    }
}

pub(super) fn is_post(se: &SignedEnvelope) -> bool {
    !matches!(
        se.envelope().payload,
        Payload::Call { .. } | Payload::ConvAction { .. }
    )
}

impl Convs {
    /// Indexes the participants of `c` from the `from`th, and its timers (a replica has none:
    /// they run at its home relay, CONVO-15).
    pub(super) fn index(&mut self, c: &Conversation, from: usize, replica: bool) {
        for p in &c.participants[from..] {
            self.by_agent
                .entry(p.handle.clone())
                .or_default()
                .insert((c.created, c.id));
        }
        if !replica {
            self.timers(c);
        }
    }

    /// Forgets conversation `id` and every index entry of it (before it is read again from
    /// its rows: `State::refresh`).
    pub(super) fn forget(&mut self, id: &MessageId) {
        if let Some(r) = self.map.remove(id) {
            for p in &r.conv.participants {
                if let Some(s) = self.by_agent.get_mut(&p.handle) {
                    s.remove(&(r.conv.created, *id));
                    if s.is_empty() {
                        self.by_agent.remove(&p.handle);
                    }
                }
            }
        }
        self.open.remove(id);
        self.ringing.retain(|(_, i, _)| i != id);
        self.expiring.retain(|(_, i)| i != id);
        self.aging.retain(|(_, i)| i != id);
    }

    /// Puts `c`'s timers in the indexes as its state now says.
    fn timers(&mut self, c: &Conversation) {
        let live = c.mode == formica_protocol::envelope::ConvMode::Live && !c.is_closed();
        for p in &c.participants {
            let k = (p.invited_at, c.id, p.handle.clone());
            if live && p.state == PartState::Ringing {
                self.ringing.insert(k);
            } else {
                self.ringing.remove(&k);
            }
        }
        let (set, k) = match c.expires {
            Some(e) => (&mut self.expiring, (e, c.id)),
            None => (&mut self.aging, (c.created, c.id)),
        };
        if c.is_closed() {
            set.remove(&k);
        } else {
            set.insert(k);
        }
    }

    pub(super) fn insert(&mut self, c: Conversation, home: Option<(RelayHost, (i64, i64))>) {
        self.index(&c, 0, home.is_some());
        if !c.is_closed() {
            self.open.insert(c.id);
        }
        let (home, terms) = match home {
            Some((h, t)) => (Some(h), Some(t)),
            None => (None, None),
        };
        self.map.insert(
            c.id,
            ConvRecord {
                conv: c,
                post_times: VecDeque::new(),
                closed_at: None,
                home,
                terms,
                replica_since: 0,
                declined_here: BTreeMap::new(),
            },
        );
    }
}

impl State {
    /// The conversation effect of an accepted envelope: a call opens a conversation (entry 1),
    /// an action or a post is the next entry of its conversation.
    pub(super) fn apply_conv_envelope(&mut self, at: i64, se: &SignedEnvelope) {
        let env = se.envelope();
        if env.msg_type == MessageType::Call {
            let Some(c) = Conversation::open(se, at) else {
                return;
            };
            let first = Entry {
                conv: c.id,
                seq: 1,
                at,
                prev: FIRST_PREV,
                body: EntryBody::Envelope(se.clone()),
            };
            self.db.put(Table::Small, entry_key(&c.id, 1), first.wire());
            self.convs.insert(c, None);
            return;
        }
        // A replica's entries come only from its home relay (Event::ConvReplica).
        if let Some(id) = env
            .conv
            .filter(|id| self.conv(id).is_some_and(|r| r.home.is_none()))
        {
            self.append_entry(id, at, EntryBody::Envelope(se.clone()));
        }
    }

    /// An [`Event::Conv`](crate::engine::events::Event::Conv).
    pub(super) fn apply_conv(
        &mut self,
        at: i64,
        id: &MessageId,
        change: &crate::engine::events::ConvChange,
    ) {
        use crate::engine::events::ConvChange;
        match change {
            ConvChange::Entry(ev) => self.append_entry(*id, at, EntryBody::Event(ev.clone())),
            ConvChange::Removed => {
                let Some(r) = self.convs.map.remove(id) else {
                    return;
                };
                for seq in 1..=r.conv.seq {
                    self.db.del(Table::Small, entry_key(id, seq));
                }
                if r.home.is_some() {
                    self.db.del(Table::Small, replica_key(id));
                }
                for p in &r.conv.participants {
                    if let Some(set) = self.convs.by_agent.get_mut(&p.handle) {
                        set.remove(&(r.conv.created, *id));
                        if set.is_empty() {
                            self.convs.by_agent.remove(&p.handle);
                        }
                    }
                }
                self.convs.open.remove(id);
            }
        }
    }

    fn append_entry(&mut self, id: MessageId, at: i64, body: EntryBody) {
        let Some(r) = self.convs.map.get_mut(&id) else {
            return;
        };
        let post = matches!(&body, EntryBody::Envelope(se) if is_post(se));
        let before = r.conv.participants.len();
        let e = r.conv.next_entry(body, at);
        r.conv.apply(&e);
        if post {
            r.posted(at);
        }
        let closed = r.conv.is_closed() && r.closed_at.is_none();
        if closed {
            r.closed_at = Some(at);
        }
        if r.conv.is_closed() {
            // Only posts while open are counted.
            r.post_times.clear();
        }
        let c = r.conv.clone();
        self.db.put(Table::Small, entry_key(&id, e.seq), e.wire());
        self.convs.index(&c, before, false);
        if closed {
            self.convs.open.remove(&id);
        }
    }

    /// Rebuilds the conversations from their entry rows (`rows`: conversation id, then seq,
    /// then the entry's bytes). `Err` names a row that does not decode or does not follow.
    pub(super) fn load_convs(
        &mut self,
        rows: BTreeMap<(String, u64), Vec<u8>>,
        replicas: BTreeMap<String, Vec<u8>>,
    ) -> Result<(), String> {
        let mut cur: Option<ConvRecord> = None;
        for ((id, seq), v) in rows {
            let bad = |why: &str| format!("the entry {id}/{seq} {why}");
            let value = formica_protocol::json::parse(&v, stored_limits().json)
                .map_err(|_| bad("is not JSON"))?;
            let e = Entry::from_value(&value, &stored_limits()).map_err(|x| bad(&x.message))?;
            if e.conv.to_hex() != id || e.seq != seq {
                return Err(bad("is stored under another key"));
            }
            if seq == 1 {
                if let Some(r) = cur.take() {
                    self.finish_load(r);
                }
                let EntryBody::Envelope(se) = &e.body else {
                    return Err(bad("is not a call"));
                };
                let c = Conversation::open(se, e.at).ok_or_else(|| bad("is not a call"))?;
                let (home, terms, since, declined) = match replicas.get(&id) {
                    Some(v) => {
                        let m = replica_meta(v)
                            .ok_or_else(|| bad("has a replica row that does not decode"))?;
                        (Some(m.home), Some(m.terms), m.since, m.declined)
                    }
                    None => (None, None, 0, BTreeMap::new()),
                };
                cur = Some(ConvRecord {
                    conv: c,
                    post_times: VecDeque::new(),
                    closed_at: None,
                    home,
                    terms,
                    replica_since: since,
                    declined_here: declined,
                });
                // A replica's close is timed by this relay's clock (CONVO-17).
                if let Some(t) = replicas.get(&id).and_then(|v| replica_meta(v)?.closed) {
                    if let Some(r) = cur.as_mut() {
                        r.closed_at = Some(t);
                    }
                }
                continue;
            }
            let r = cur
                .as_mut()
                .filter(|r| r.conv.id == e.conv && r.conv.seq + 1 == seq && r.conv.head == e.prev)
                .ok_or_else(|| bad("does not follow the entry before it"))?;
            if matches!(&e.body, EntryBody::Envelope(se) if is_post(se)) {
                r.posted(e.at);
            }
            r.conv.apply(&e);
            if r.conv.is_closed() && r.closed_at.is_none() {
                r.closed_at = Some(e.at);
            }
        }
        if let Some(r) = cur {
            self.finish_load(r);
        }
        Ok(())
    }

    fn finish_load(&mut self, mut r: ConvRecord) {
        let id = r.conv.id;
        if r.conv.is_closed() {
            r.post_times.clear();
        }
        self.convs.index(&r.conv, 0, r.home.is_some());
        if !r.conv.is_closed() {
            self.convs.open.insert(id);
        }
        self.convs.map.insert(id, r);
    }

    /// The conversation `id`, if this relay holds it.
    pub fn conv(&self, id: &MessageId) -> Option<&ConvRecord> {
        self.convs.map.get(id)
    }

    /// The entries of `id` after `after`, at most `max`, as stored (canonical bytes).
    pub fn conv_entries(&self, id: &MessageId, after: u64, max: usize) -> Vec<Vec<u8>> {
        let from = entry_key(id, after.saturating_add(1));
        let to = entry_key(id, u64::from(u32::MAX) * 1000);
        self.db
            .scan(Table::Small, &from, Some(&to), max)
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// The conversations `h` takes part in, newest first.
    pub fn convs_of<'a>(&'a self, h: &Handle) -> impl Iterator<Item = &'a ConvRecord> + 'a {
        self.convs
            .by_agent
            .get(h)
            .into_iter()
            .flat_map(|s| s.iter().rev())
            .filter_map(|(_, id)| self.convs.map.get(id))
    }

    /// Open conversations in which `h` is `joined` (`conversations.open_max`).
    pub fn open_joined(&self, h: &Handle) -> usize {
        self.convs_of(h)
            .filter(|r| {
                !r.conv.is_closed()
                    && r.conv
                        .participant(h)
                        .is_some_and(|p| p.state == PartState::Joined)
            })
            .count()
    }
}

impl State {
    /// Who should look at a conversation again after `e` was applied: its participants (their
    /// conversation streams wake up with their inbox streams).
    pub fn conv_audience(&self, e: &crate::engine::events::Event) -> Vec<Handle> {
        use crate::engine::events::Event;
        let id = match e {
            Event::Envelope { envelope, .. } => match envelope.envelope().msg_type {
                MessageType::Call => Some(envelope.id()),
                _ => envelope.envelope().conv,
            },
            Event::Conv { conv, .. } | Event::ConvReplica { conv, .. } => Some(*conv),
            _ => None,
        };
        id.and_then(|id| self.convs.map.get(&id))
            .map(|r| {
                r.conv
                    .participants
                    .iter()
                    .map(|p| p.handle.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl State {
    /// The open conversations with a timer (CONVO-7, CONVO-9) due by `now`, at most `max`,
    /// found through the timer indexes.
    pub fn convs_due(
        &self,
        now: i64,
        pol: &crate::engine::conversations::ConversationPolicy,
        max: usize,
    ) -> Vec<MessageId> {
        let mut out = BTreeSet::new();
        let rang = now.saturating_sub(pol.ring_ms);
        let aged = now.saturating_sub(pol.ttl_max_ms);
        let ids = (self.convs.ringing.iter())
            .take_while(|(t, ..)| *t < rang)
            .map(|(_, id, _)| *id)
            .chain(
                self.convs
                    .expiring
                    .iter()
                    .take_while(|(t, _)| *t < now)
                    .map(|(_, id)| *id),
            )
            .chain(
                self.convs
                    .aging
                    .iter()
                    .take_while(|(t, _)| *t < aged)
                    .map(|(_, id)| *id),
            );
        for id in ids {
            if out.len() >= max {
                break;
            }
            out.insert(id);
        }
        out.into_iter().collect()
    }

    /// Whether a conversation timer is due by `now`: the ticker then submits a tick.
    pub fn conv_due(
        &self,
        now: i64,
        pol: &crate::engine::conversations::ConversationPolicy,
    ) -> bool {
        !self.convs_due(now, pol, 1).is_empty()
    }
}

impl State {
    /// Conversation `id` as it stood after entry `upto`, folded again from its rows: what a
    /// participant that declined or left may see of it (CONVO-10).
    pub fn conv_as_of(&self, id: &MessageId, upto: u64) -> Option<Conversation> {
        let rows = self.conv_entries(id, 0, usize::try_from(upto).ok()?);
        let mut c: Option<Conversation> = None;
        for b in rows {
            let v = formica_protocol::json::parse(&b, stored_limits().json).ok()?;
            let e = Entry::from_value(&v, &stored_limits()).ok()?;
            match c.as_mut() {
                None => match &e.body {
                    EntryBody::Envelope(se) => c = Some(Conversation::open(se, e.at)?),
                    EntryBody::Event(_) => return None,
                },
                Some(conv) => conv.apply(&e),
            }
        }
        c
    }
}
