//! Replicas of conversations homed on peers (SPEC.md CONVO-12..CONVO-17): the entries a home
//! relay sent, kept byte for byte as rows of `small` like this relay's own conversations, with
//! a `convr NUL <id>` row for the home relay and its terms; the envelopes inside are delivered
//! to their recipients homed here, and their inbox items point at the record that added them.

use super::conversations::{entry_key, is_post};
use super::{codec, State};
use crate::store::Table;
use formica_protocol::conversation::{Conversation, Entry, EntryBody};
use formica_protocol::envelope::{ConvActionKind, MessageId, Payload};
use formica_protocol::{canon, Handle, Object, RelayHost, Value};
use std::collections::BTreeMap;

pub(super) fn replica_key(id: &MessageId) -> Vec<u8> {
    codec::small_key("convr", &id.to_hex(), None)
}

/// What the `convr` row of a replica holds.
pub(super) struct ReplicaMeta {
    pub home: RelayHost,
    /// The turn limit and expiry in force at the home relay, as its first batch said.
    pub terms: (i64, i64),
    /// When this relay started the replica, and when it saw it close (its own clock).
    pub since: i64,
    pub closed: Option<i64>,
    /// The invitees homed here that this relay declined for, and why (CONVO-14).
    pub declined: BTreeMap<Handle, String>,
}

fn replica_value(m: &ReplicaMeta) -> Vec<u8> {
    let mut o = Object::new();
    o.insert("home", m.home.as_str().into());
    o.insert("turns", Value::Int(m.terms.0));
    o.insert("expires", Value::Int(m.terms.1));
    o.insert("since", Value::Int(m.since));
    if let Some(t) = m.closed {
        o.insert("closed", Value::Int(t));
    }
    let mut d = Object::new();
    for (h, why) in &m.declined {
        d.insert(h.as_str(), why.as_str().into());
    }
    o.insert("declined", Value::Object(d));
    canon::canonicalize(&Value::Object(o))
}

/// A `convr` row.
pub(super) fn replica_meta(v: &[u8]) -> Option<ReplicaMeta> {
    let v = formica_protocol::json::parse(v, super::conversations::stored_limits().json).ok()?;
    let o = v.as_object()?;
    let int = |k: &str| o.get(k).and_then(Value::as_i64);
    Some(ReplicaMeta {
        home: RelayHost::parse(o.get("home")?.as_str()?).ok()?,
        terms: (int("turns")?, int("expires")?),
        since: int("since")?,
        closed: int("closed"),
        declined: o
            .get("declined")?
            .as_object()?
            .iter()
            .map(|(h, why)| Some((Handle::parse(h).ok()?, why.as_str()?.to_owned())))
            .collect::<Option<BTreeMap<Handle, String>>>()?,
    })
}

/// The handles of `env.to` homed here that an envelope entry is delivered to: a call's or an
/// invite's invitees (less those this relay declined for), a post's recipients that are joined
/// in the replica (a home relay cannot make a post reach anyone else here); the other actions
/// go to the owner, who is homed on the home relay.
fn local_recipients(
    st: &State,
    c: &Conversation,
    se: &formica_protocol::SignedEnvelope,
    declined: &[(Handle, String)],
) -> Vec<Handle> {
    let env = se.envelope();
    let invitation = matches!(
        env.payload,
        Payload::Call { .. }
            | Payload::ConvAction {
                action: ConvActionKind::Invite,
                ..
            }
    );
    if !invitation && !is_post(se) {
        return Vec::new();
    }
    env.to
        .iter()
        .filter(|h| st.agents.contains_key(*h))
        .filter(|h| !(invitation && declined.iter().any(|(d, _)| d == *h)))
        .filter(|h| {
            invitation
                || c.participant(h)
                    .is_some_and(|p| p.state == formica_protocol::conversation::PartState::Joined)
        })
        .cloned()
        .collect()
}

impl State {
    /// An [`Event::ConvReplica`](crate::engine::events::Event::ConvReplica): the entries
    /// follow the replica's head (the writer checked), or start it at seq 1.
    pub(super) fn apply_conv_replica(
        &mut self,
        at: i64,
        home: &RelayHost,
        id: MessageId,
        terms: (i64, i64),
        entries: &[Entry],
        declined: &[(Handle, String)],
    ) {
        for e in entries {
            match self.convs.map.get_mut(&id) {
                None => {
                    let EntryBody::Envelope(se) = &e.body else {
                        return;
                    };
                    let Some(c) = Conversation::open(se, e.at) else {
                        return;
                    };
                    self.convs.insert(c, Some((home.clone(), terms)));
                    if let Some(r) = self.convs.map.get_mut(&id) {
                        r.replica_since = at;
                    }
                }
                Some(r) => {
                    if e.seq != r.conv.seq + 1 || e.prev != r.conv.head {
                        return;
                    }
                    let before = r.conv.participants.len();
                    r.conv.apply(e);
                    if r.conv.is_closed() && r.closed_at.is_none() {
                        // This relay's clock, not the home relay's `at` (CONVO-17).
                        r.closed_at = Some(at);
                        self.convs.open.remove(&id);
                    }
                    let c = r.conv.clone();
                    self.convs.index(&c, before, true);
                }
            }
            self.db.put(Table::Small, entry_key(&id, e.seq), e.wire());
            if let EntryBody::Envelope(se) = &e.body {
                if self.is_local(&se.envelope().from) {
                    self.numbered(&se.id(), e.seq);
                }
                self.deliver_entry(at, se, declined);
            }
        }
        let Some(r) = self.convs.map.get_mut(&id) else {
            return;
        };
        r.declined_here.extend(declined.iter().cloned());
        let meta = ReplicaMeta {
            home: home.clone(),
            terms: r.terms.unwrap_or(terms),
            since: r.replica_since,
            closed: r.closed_at,
            declined: r.declined_here.clone(),
        };
        self.db
            .put(Table::Small, replica_key(&id), replica_value(&meta));
    }

    /// Delivers an envelope entry to its recipients homed here, as a forwarded envelope is
    /// delivered (FED-6): a message record for a remote sender's envelope (for acks and
    /// delivery notices), an inbox item for each recipient.
    fn deliver_entry(
        &mut self,
        at: i64,
        se: &formica_protocol::SignedEnvelope,
        declined: &[(Handle, String)],
    ) {
        let Some(c) = se
            .envelope()
            .conv
            .or(Some(se.id()))
            .and_then(|c| self.convs.map.get(&c))
            .map(|r| r.conv.clone())
        else {
            return;
        };
        let to = local_recipients(self, &c, se, declined);
        if to.is_empty() {
            return;
        }
        let env = se.envelope();
        let id = se.id();
        // An envelope of an agent homed here came back from the home relay: its record was
        // made when this relay accepted it.
        if !self.is_local(&env.from) && self.db.get(Table::Messages, &id.0).is_none() {
            self.mark_new(&id, env.ts);
            // Only the sender reads API-13, at its own relay: no conversation place here.
            self.new_message(at, &id, env, None, None);
        }
        for h in &to {
            self.push_inbox(h, id, at);
        }
    }

    /// The home relay numbered `id`, an envelope of an agent homed here: its record shows the
    /// seq (API-13).
    fn numbered(&mut self, id: &MessageId, seq: u64) {
        if let Some(mut m) = self.message(id) {
            if let Some((c, None)) = m.conv {
                m.conv = Some((c, Some(seq)));
                self.put_message(id, &m);
            }
        }
    }

    /// Replicas held for conversations homed on `home`.
    pub fn replicas_of(&self, home: &RelayHost) -> usize {
        self.convs
            .map
            .values()
            .filter(|r| r.home.as_ref() == Some(home))
            .count()
    }

    /// Replicas held in all.
    pub fn replicas(&self) -> usize {
        self.convs.map.values().filter(|r| r.home.is_some()).count()
    }
}
