//! What an accepted envelope changes (SPEC.md 15.9 step 11): its queueing for peers (FED-4,
//! CONVO-16), acks and receipts settling deliveries, vouches and reports, and the message
//! record and inbox items of everything else.

use super::records::{MessageRecord, PendingRequest, RecipientStatus};
use super::{codec, State};
use crate::store::Table;
use formica_protocol::envelope::{
    AckStatus, DeliveryState, MessageId, MessageType, Payload, SignedEnvelope,
};
use formica_protocol::{Handle, RelayHost};
use std::collections::BTreeSet;

impl State {
    pub(super) fn apply_envelope(&mut self, at: i64, se: &SignedEnvelope) {
        let env = se.envelope();
        let id = se.id();
        self.mark_new(&id, env.ts);
        // FED-4: what a local agent sends to agents homed elsewhere is queued for their home
        // relays (never what arrived from another relay: no transit), and so are this relay's
        // delivery notices for remote senders (FED-11).
        let own_notice =
            env.from == Handle::relay(&self.host) && matches!(env.payload, Payload::Receipt { .. });
        // Conversation envelopes (CONVO-16): an agent's post or action in a conversation homed
        // on a peer goes to that relay only, and reaches its recipients homed here when the
        // entry comes back; those of conversations homed here travel as entries (CONVO-13).
        let conv_env = env.conv.is_some() || env.msg_type == MessageType::Call;
        let via = env
            .conv
            .and_then(|c| self.convs.map.get(&c))
            .and_then(|r| r.home.clone())
            .filter(|_| self.is_local(&env.from));
        if let Some(home) = &via {
            self.enqueue(home, self.events, &id, at);
        } else if (self.is_local(&env.from) && !conv_env) || own_notice {
            let hosts: BTreeSet<RelayHost> = env
                .to
                .iter()
                .filter(|h| h.host() != &self.host)
                .map(|h| h.host().clone())
                .collect();
            for h in hosts {
                self.enqueue(&h, self.events, &id, at);
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
                    let sender = self.message(msg).map(|m| m.sender).filter(|s| *s != acker);
                    if let Some(sender) = sender {
                        if let Some(a) = self.agents.get_mut_hot(&sender) {
                            a.acked_sent += 1;
                        }
                    }
                }
                for to in &env.to {
                    self.push_inbox(to, id, at);
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
                    self.push_inbox(to, id, at);
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
                // A new id (see `mark_new`): its record and deadline are new too.
                let conv = self.conv_place(&id, env, via.is_some());
                self.new_message(at, &id, env, via.clone(), conv);
                // Deadlines are the sender's home relay's to enforce (ACK-4, FED-11).
                if let (Some(by), true) = (env.ack_by, self.is_local(&env.from)) {
                    self.db
                        .put(Table::Deadlines, codec::time_id_key(by, &id), Vec::new());
                    self.deadlines_len += 1;
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
                if via.is_none() {
                    for to in &env.to {
                        self.push_inbox(to, id, at);
                    }
                }
            }
        }
    }

    /// The conversation of a conversation envelope and its entry's seq, as API-13 shows them:
    /// a call is entry 1; an action or a post in a conversation homed here is the entry
    /// appended right after this record; in a replica the seq comes with the entry.
    fn conv_place(
        &self,
        id: &MessageId,
        env: &formica_protocol::Envelope,
        replica: bool,
    ) -> Option<(MessageId, Option<u64>)> {
        if env.msg_type == MessageType::Call {
            return Some((*id, Some(1)));
        }
        let c = env.conv?;
        let next = self
            .convs
            .map
            .get(&c)
            .filter(|_| !replica)
            .map(|r| r.conv.seq + 1);
        Some((c, next))
    }

    /// The record of a message accepted at `at`, every recipient's delivery `accepted`
    /// (DELIV-1), and its place in the by-time index.
    pub(super) fn new_message(
        &mut self,
        at: i64,
        id: &MessageId,
        env: &formica_protocol::Envelope,
        via: Option<RelayHost>,
        conv: Option<(MessageId, Option<u64>)>,
    ) {
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
        self.messages_len += 1;
        self.db.put(
            Table::MessagesByTime,
            codec::time_id_key(at, id),
            Vec::new(),
        );
        self.put_message(
            id,
            &MessageRecord {
                sender: env.from.clone(),
                msg_type: env.msg_type.clone(),
                ts: env.ts,
                at,
                ack_by: env.ack_by,
                recipients,
                via,
                conv,
            },
        );
    }
}
