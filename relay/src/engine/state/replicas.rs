//! Replicas of conversations homed on peers (SPEC.md CONVO-12..CONVO-17): the entries a home
//! relay sent, kept byte for byte as rows of `small` like this relay's own conversations, with
//! a `convr NUL <id>` row for the home relay and its terms; the envelopes inside are delivered
//! to their recipients homed here, and their inbox items point at the record that added them.

use super::conversations::{entry_key, is_post};
use super::records::{MessageRecord, RecipientStatus};
use super::{codec, State};
use crate::store::Table;
use formica_protocol::conversation::{Conversation, Entry, EntryBody};
use formica_protocol::envelope::{ConvActionKind, DeliveryState, MessageId, Payload};
use formica_protocol::{canon, Handle, Object, RelayHost, Value};

pub(super) fn replica_key(id: &MessageId) -> Vec<u8> {
    codec::small_key("convr", &id.to_hex(), None)
}

fn replica_value(home: &RelayHost, terms: (i64, i64)) -> Vec<u8> {
    let mut o = Object::new();
    o.insert("home", home.as_str().into());
    o.insert("turns", Value::Int(terms.0));
    o.insert("expires", Value::Int(terms.1));
    canon::canonicalize(&Value::Object(o))
}

/// The home relay and terms of a `convr` row.
pub(super) fn replica_meta(v: &[u8]) -> Option<(RelayHost, (i64, i64))> {
    let v = formica_protocol::json::parse(v, super::conversations::stored_limits().json).ok()?;
    let o = v.as_object()?;
    let home = RelayHost::parse(o.get("home")?.as_str()?).ok()?;
    Some((
        home,
        (o.get("turns")?.as_i64()?, o.get("expires")?.as_i64()?),
    ))
}

/// The handles of `env.to` homed here that an envelope entry is delivered to: a call's or an
/// invite's invitees (less those this relay declined for), a post's recipients; the other
/// actions go to the owner, who is homed on the home relay.
fn local_recipients(
    st: &State,
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
        self.db
            .put(Table::Small, replica_key(&id), replica_value(home, terms));
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
                }
                Some(r) => {
                    r.terms = Some(terms);
                    if e.seq != r.conv.seq + 1 || e.prev != r.conv.head {
                        return;
                    }
                    let before = r.conv.participants.len();
                    r.conv.apply(e);
                    if r.conv.is_closed() && r.closed_at.is_none() {
                        r.closed_at = Some(e.at);
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
        let to = local_recipients(self, se, declined);
        if to.is_empty() {
            return;
        }
        let env = se.envelope();
        let id = se.id();
        // An envelope of an agent homed here came back from the home relay: its record was
        // made when this relay accepted it.
        if !self.is_local(&env.from) && self.db.get(Table::Messages, &id.0).is_none() {
            self.mark_new(&id, env.ts);
            self.messages_len += 1;
            self.db.put(
                Table::MessagesByTime,
                codec::time_id_key(at, &id),
                Vec::new(),
            );
            let recipients = env
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
            self.put_message(
                &id,
                &MessageRecord {
                    sender: env.from.clone(),
                    msg_type: env.msg_type.clone(),
                    ts: env.ts,
                    at,
                    ack_by: env.ack_by,
                    recipients,
                    via: None,
                    // Only the sender reads API-13, at its own relay.
                    conv: None,
                },
            );
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
