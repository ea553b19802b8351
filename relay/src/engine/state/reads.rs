//! Reads of the projection tables: dedup, message records, inbox pages, deadlines, queues.

use super::{codec, Agent, InboxItem, MessageRecord, Queued, State};
use crate::store::Table;
use formica_protocol::envelope::MessageId;
use formica_protocol::{Handle, RelayHost};

impl State {
    /// Whether an envelope with this id and `ts` is stored (or its id still kept for dedup).
    /// An envelope's id is kept in `seen_by_ts` under its `ts` (an id hashes the envelope, so
    /// the same id always comes with the same `ts`): a key that grows with time, which a
    /// commit appends near the end instead of at a random place. `seen` by id alone holds
    /// only the ids of delivery notices from peers (their event has no `ts`: `at` stands for
    /// it) and the rows of tables written before format 2.
    pub fn seen(&self, id: &MessageId, ts: i64) -> bool {
        self.db
            .get(Table::SeenByTs, &codec::time_id_key(ts, id))
            .is_some()
            || self.db.get(Table::Seen, &id.0).is_some()
    }

    /// The record of an accepted message.
    pub fn message(&self, id: &MessageId) -> Option<MessageRecord> {
        let v = self.db.get(Table::Messages, &id.0)?;
        let m = codec::message_record(&v);
        if m.is_none() {
            self.db
                .keep_damage(Table::Messages, "a message record does not decode");
        }
        m
    }

    /// Inbox items of `h` with a cursor above `after`, at most `max`, with their bytes (read
    /// from the log records that stored them). An item whose bytes cannot be read ends the
    /// page there (the error is logged): the page never skips an item.
    pub fn inbox_after(&self, h: &Handle, after: u64, max: usize) -> Vec<InboxItem> {
        let mut items = self.inbox_ids_after(h, after, max);
        for (i, item) in items.iter_mut().enumerate() {
            match self.db.envelope_bytes(item.seq, &item.id) {
                Ok(w) => item.wire = w,
                Err(e) => {
                    tracing::error!(error = %e, handle = %h, cursor = item.cursor, "an inbox item's bytes cannot be read (run relay check)");
                    items.truncate(i);
                    break;
                }
            }
        }
        items
    }

    /// [`inbox_after`](Self::inbox_after) without the bytes.
    pub fn inbox_ids_after(&self, h: &Handle, after: u64, max: usize) -> Vec<InboxItem> {
        let from = codec::inbox_key(h, after.saturating_add(1));
        let to = crate::store::tables::prefix_end(&codec::inbox_prefix(h));
        self.db
            .scan(Table::Inbox, &from, to.as_deref(), max)
            .into_iter()
            .filter_map(|(k, v)| codec::inbox_item(&k, &v))
            .collect()
    }

    /// The cursor of the oldest item `h`'s inbox still holds.
    pub fn inbox_oldest(&self, h: &Handle) -> Option<u64> {
        self.inbox_ids_after(h, 0, 1).first().map(|i| i.cursor)
    }

    /// The cursor of the oldest item kept for `a`, or the next cursor when none is (every
    /// cursor before it is `cursor_too_old`).
    pub fn inbox_oldest_kept(&self, a: &Agent) -> u64 {
        self.inbox_oldest(&a.handle).unwrap_or(a.next_cursor)
    }

    /// Deadlines due before `now`, oldest first, at most `max`.
    pub fn deadlines_before(&self, now: i64, max: usize) -> Vec<(i64, MessageId)> {
        let to = crate::store::tables::sortable_i64(now);
        self.db
            .scan(Table::Deadlines, &[], Some(&to), max)
            .into_iter()
            .filter_map(|(k, _)| codec::split_time_id_key(&k))
            .collect()
    }

    /// The envelopes queued for `peer`, in order, at most `max`, with their queue numbers.
    pub fn queued(&self, peer: &RelayHost, max: usize) -> Vec<(u64, Queued)> {
        let p = codec::peer_prefix(peer);
        let to = crate::store::tables::prefix_end(&p);
        self.db
            .scan(Table::Outbound, &p, to.as_deref(), max)
            .into_iter()
            .filter_map(|(k, v)| Some((codec::inbox_key_cursor(&k)?, codec::queued(&v)?)))
            .collect()
    }

    /// [`queued`](Self::queued) with the envelopes' bytes; stops before one whose bytes
    /// cannot be read (the error is logged).
    pub fn queued_with_wire(&self, peer: &RelayHost, max: usize) -> Vec<(u64, Queued)> {
        let mut q = self.queued(peer, max);
        for (i, (_, x)) in q.iter_mut().enumerate() {
            match self.db.envelope_bytes(x.seq, &x.id) {
                Ok(w) => x.wire = w,
                Err(e) => {
                    tracing::error!(error = %e, peer = %peer, "a queued envelope's bytes cannot be read (run relay check)");
                    q.truncate(i);
                    break;
                }
            }
        }
        q
    }

    /// Envelopes queued for `peer`.
    pub fn queue_len(&self, peer: &RelayHost) -> usize {
        self.outbound_len.get(peer).copied().unwrap_or(0)
    }
}
