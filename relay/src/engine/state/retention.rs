//! Retention (SPEC.md RET-1..RET-3): which inbox items, message records and dedup ids a sweep
//! removes. [`State::retention_candidates`] is read-only: the writer asks it whether a sweep
//! would remove anything (and logs a `retained` event only then), and applying that event
//! removes exactly what it names, so a replay removes what the live relay removed.

use super::{codec, State};
use crate::engine::events::Retention;
use crate::store::tables::sortable_i64;
use crate::store::Table;
use formica_protocol::envelope::{DeliveryState, MessageId};
use formica_protocol::Handle;

/// What one sweep removes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removals {
    /// Inbox items: (time stored, handle, cursor, id).
    pub inbox: Vec<(i64, Handle, u64)>,
    /// Message records: (time accepted, id).
    pub messages: Vec<(i64, MessageId)>,
    /// Dedup ids: (`ts`, id).
    pub seen: Vec<(i64, MessageId)>,
}

impl Removals {
    pub fn is_empty(&self) -> bool {
        self.inbox.is_empty() && self.messages.is_empty() && self.seen.is_empty()
    }
}

impl State {
    /// Whether `h`'s inbox item `id` at `cursor` is settled: handed to its reader and, when its
    /// sender asked for an ack, acked or otherwise ended for this reader (items without a
    /// message record, acks and receipts, are settled once read).
    fn item_settled(&self, h: &Handle, cursor: u64, id: &MessageId) -> bool {
        let Some(a) = self.agents.get(h) else {
            return true;
        };
        if cursor > a.read_upto {
            return false;
        }
        let Some(m) = self.message(id) else {
            return true;
        };
        match m.recipients.iter().find(|r| &r.handle == h) {
            None => true,
            Some(r) => {
                r.state.is_terminal() || (m.ack_by.is_none() && r.state == DeliveryState::Delivered)
            }
        }
    }

    /// What a sweep with `b` removes: among the oldest `b.max` inbox items stored before
    /// `delivered_before`, those stored before `any_before` or settled; among the oldest
    /// `b.max` message records made before `delivered_before`, those made before `any_before`
    /// or whose deliveries are all settled; and the oldest `b.max` dedup ids whose `ts` is
    /// before `seen_before`.
    pub fn retention_candidates(&self, b: &Retention) -> Removals {
        let max = usize::try_from(b.max).unwrap_or(usize::MAX);
        let mut out = Removals::default();
        let before = |t: i64| sortable_i64(t);
        for (k, _) in self.db.scan(
            Table::InboxByTime,
            &[],
            Some(&before(b.delivered_before)),
            max,
        ) {
            let Some((at, h, cursor)) = codec::split_inbox_time_key(&k) else {
                continue;
            };
            let removable = at < b.any_before || {
                let v = self.db.get(Table::Inbox, &codec::inbox_key(&h, cursor));
                let id = v
                    .as_deref()
                    .and_then(|v| v.get(..32))
                    .and_then(|x| x.try_into().ok())
                    .map(MessageId);
                id.is_none_or(|id| self.item_settled(&h, cursor, &id))
            };
            if removable {
                out.inbox.push((at, h, cursor));
            }
        }
        for (k, _) in self.db.scan(
            Table::MessagesByTime,
            &[],
            Some(&before(b.delivered_before)),
            max,
        ) {
            let Some((at, id)) = codec::split_time_id_key(&k) else {
                continue;
            };
            let m = self.message(&id);
            // A record whose deadline is still pending stays whatever its age (ACK-4: its
            // sender gets `timed_out`, a late ack is judged against it).
            let pending_deadline = m.as_ref().and_then(|m| m.ack_by).is_some_and(|by| {
                self.db
                    .get(Table::Deadlines, &codec::time_id_key(by, &id))
                    .is_some()
            });
            let removable = !pending_deadline
                && (at < b.any_before
                    || m.is_none_or(|m| {
                        m.recipients.iter().all(|r| {
                            r.state.is_terminal()
                                || (m.ack_by.is_none() && r.state == DeliveryState::Delivered)
                        })
                    }));
            if removable {
                out.messages.push((at, id));
            }
        }
        for (k, _) in self
            .db
            .scan(Table::SeenByTs, &[], Some(&before(b.seen_before)), max)
        {
            if let Some(x) = codec::split_time_id_key(&k) {
                out.seen.push(x);
            }
        }
        out
    }

    /// Applies a `retained` event.
    pub(super) fn apply_retention(&mut self, b: &Retention) {
        let r = self.retention_candidates(b);
        let mut touched = std::collections::BTreeSet::new();
        for (at, h, cursor) in r.inbox {
            self.db.del(Table::Inbox, codec::inbox_key(&h, cursor));
            self.db
                .del(Table::InboxByTime, codec::inbox_time_key(at, &h, cursor));
            touched.insert(h);
        }
        // Unread items go only by age, oldest first: they are the items between the read mark
        // and the oldest item kept. They count as handed out from now on, so that the inbox
        // cap (`unread`) does not count what is gone (an agent back after `max_ms` would
        // otherwise stay `inbox_full`).
        for h in touched {
            let oldest = match self.agents.get(&h) {
                Some(a) => self.inbox_oldest_kept(a),
                None => continue,
            };
            if let Some(a) = self.agents.get_mut_hot(&h) {
                if oldest.saturating_sub(1) > a.read_upto {
                    a.read_upto = oldest - 1;
                }
            }
        }
        for (at, id) in r.messages {
            if let Some(m) = self.message(&id) {
                if let Some(by) = m.ack_by {
                    let k = codec::time_id_key(by, &id);
                    if self.db.get(Table::Deadlines, &k).is_some() {
                        self.db.del(Table::Deadlines, k);
                        self.deadlines_len = self.deadlines_len.saturating_sub(1);
                    }
                }
                self.db.del(Table::Messages, id.0.to_vec());
                self.messages_len = self.messages_len.saturating_sub(1);
            }
            self.db
                .del(Table::MessagesByTime, codec::time_id_key(at, &id));
        }
        for (ts, id) in r.seen {
            self.db.del(Table::Seen, id.0.to_vec());
            self.db.del(Table::SeenByTs, codec::time_id_key(ts, &id));
        }
    }
}
