//! The projection tables: key-value tables that live next to the log in the same store and
//! change in the same transaction as the records they derive from (see `engine::state`).
//!
//! The store only keeps bytes; what the keys and values mean is the engine's. A commit carries
//! the records to append and the [`Changes`] to the tables, all or none.

use std::collections::BTreeMap;

/// One projection table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Where the projections stand: the log position they are the replay of, and counters.
    Meta,
    /// Agents homed here (key log, contacts, pending requests, counters), by handle.
    Agents,
    /// Peers, cached remote key logs, vouches, reports and agents' profiles: small maps, one
    /// row each.
    Small,
    /// Inbox items by (handle, cursor): the message id, when it was stored, its wire bytes.
    Inbox,
    /// Inbox items by (time stored, handle, cursor), for retention.
    InboxByTime,
    /// Delivery status of accepted messages, by id.
    Messages,
    /// Message records by (time accepted, id), for retention.
    MessagesByTime,
    /// Ids of peers' delivery notices (dedup), by id: the time that stands for their `ts`
    /// (their event has no `ts`). Tables of format 1 kept every id here too.
    Seen,
    /// Ids of stored envelopes (dedup) by (`ts`, id): found by an envelope's `ts` and id, and
    /// removed once their `ts` is past `retention.dedup_ms`.
    SeenByTs,
    /// (ack_by, id) of messages with a deadline and a recipient not yet settled.
    Deadlines,
    /// Per peer, envelopes still to forward, by (peer, event number).
    Outbound,
    /// (peer, id) -> event number of its queue entry.
    OutboundIds,
    /// Proof-of-work challenges consumed by a registration, by challenge (hex): when.
    UsedChallenges,
    /// Admission state that is not in the log but must survive a restart: request nonces
    /// (AUTH-6) and proof-of-work challenges issued, with their expiry.
    Admission,
}

impl Table {
    pub const ALL: [Table; 14] = [
        Table::Meta,
        Table::Agents,
        Table::Small,
        Table::Inbox,
        Table::InboxByTime,
        Table::Messages,
        Table::MessagesByTime,
        Table::Seen,
        Table::SeenByTs,
        Table::Deadlines,
        Table::Outbound,
        Table::OutboundIds,
        Table::UsedChallenges,
        Table::Admission,
    ];

    /// The table's name in the store (and in `relay check`'s reports).
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Agents => "agents",
            Table::Small => "small",
            Table::Inbox => "inbox",
            Table::InboxByTime => "inbox_by_time",
            Table::Messages => "messages",
            Table::MessagesByTime => "messages_by_time",
            Table::Seen => "seen",
            Table::SeenByTs => "seen_by_ts",
            Table::Deadlines => "deadlines",
            Table::Outbound => "outbound",
            Table::OutboundIds => "outbound_ids",
            Table::UsedChallenges => "used_challenges",
            Table::Admission => "admission",
        }
    }

    /// The table's number in stored formats (the prefix of its rows in the redb file, its rows
    /// in a checkpoint's snapshot): part of those formats, never reused.
    pub fn code(self) -> u8 {
        match self {
            Table::Admission => 0,
            Table::Meta => 1,
            Table::Agents => 2,
            Table::Small => 3,
            Table::Inbox => 4,
            Table::InboxByTime => 5,
            Table::Messages => 6,
            Table::MessagesByTime => 7,
            Table::Seen => 8,
            Table::SeenByTs => 9,
            Table::Deadlines => 10,
            Table::Outbound => 11,
            Table::OutboundIds => 12,
            Table::UsedChallenges => 13,
        }
    }

    /// The table whose [`code`](Self::code) this is.
    pub fn from_code(c: u8) -> Option<Table> {
        Table::ALL.iter().copied().find(|t| t.code() == c)
    }

    /// Tables that are projections of the log (rebuilt by replay). `Admission` is kept only
    /// across restarts: it is not in the log, so a rebuild leaves it as it is and `relay check`
    /// does not compare it.
    pub fn is_projection(self) -> bool {
        self != Table::Admission
    }
}

/// Changes to the tables, applied in one commit: `None` removes the key.
pub type Changes = BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>;

/// One row of a table: key and value.
pub type Row = (Vec<u8>, Vec<u8>);

/// Rows of several tables (a dump, for comparisons).
pub type Rows = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// The key just past every key that starts with `prefix` (for ranges over a prefix), or `None`
/// when there is none (the prefix is all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// An `i64` as 8 bytes that sort like the numbers.
pub fn sortable_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`sortable_i64`].
pub fn from_sortable_i64(b: &[u8]) -> Option<i64> {
    let a: [u8; 8] = b.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(a) ^ (1 << 63)) as i64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sortable_numbers_and_prefix_ends() {
        let xs = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for w in xs.windows(2) {
            assert!(sortable_i64(w[0]) < sortable_i64(w[1]));
        }
        for x in xs {
            assert_eq!(from_sortable_i64(&sortable_i64(x)), Some(x));
        }
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
        for t in Table::ALL {
            assert_eq!(Table::from_code(t.code()), Some(t));
        }
        // Projection tables sort by code as they sort as values: a snapshot's row order.
        let mut by_code: Vec<Table> = Table::ALL
            .iter()
            .copied()
            .filter(|t| t.is_projection())
            .collect();
        by_code.sort_by_key(|t| t.code());
        let mut by_ord = by_code.clone();
        by_ord.sort();
        assert_eq!(by_code, by_ord);
    }
}
