//! The checkpoints the log holds (`engine::checkpoint`): the last two, in memory and in the
//! `meta` table's `checkpoints` row, so that the writer knows which records it may drop and a
//! snapshot knows the checkpoints before it.

use super::State;
use crate::engine::events::CheckpointMark;
use crate::store::{Store, StoreError, Table};

pub(super) const ROW: &[u8] = b"checkpoints";
/// Checkpoints remembered: the newest, and the one before, behind which records are dropped
/// (so that a damaged newest snapshot still leaves one to rebuild from).
const KEPT: usize = 2;
const ENTRY: usize = 8 + 8 + 32 + 8 + 32 + 8;

/// A checkpoint record in the log: its record number and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    pub seq: u64,
    pub mark: CheckpointMark,
}

fn encode(v: &[Logged]) -> Vec<u8> {
    let mut o = Vec::with_capacity(v.len() * ENTRY);
    for c in v {
        o.extend_from_slice(&c.seq.to_be_bytes());
        o.extend_from_slice(&c.mark.len.to_be_bytes());
        o.extend_from_slice(&c.mark.head);
        o.extend_from_slice(&c.mark.rows.to_be_bytes());
        o.extend_from_slice(&c.mark.hash);
        o.extend_from_slice(&c.mark.keep_from.to_be_bytes());
    }
    o
}

fn decode(v: &[u8]) -> Option<Vec<Logged>> {
    if !v.len().is_multiple_of(ENTRY) || v.len() > KEPT * ENTRY {
        return None;
    }
    let n = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
    let h = |b: &[u8]| -> [u8; 32] { b.try_into().unwrap_or([0; 32]) };
    Some(
        v.chunks(ENTRY)
            .map(|c| Logged {
                seq: n(&c[0..8]),
                mark: CheckpointMark {
                    len: n(&c[8..16]),
                    head: h(&c[16..48]),
                    rows: n(&c[48..56]),
                    hash: h(&c[56..88]),
                    keep_from: n(&c[88..96]),
                },
            })
            .collect(),
    )
}

/// The checkpoints row of `store`'s tables.
pub fn load(store: &dyn Store) -> Result<Vec<Logged>, StoreError> {
    match store.get(Table::Meta, ROW)? {
        None => Ok(Vec::new()),
        Some(v) => decode(&v).ok_or_else(|| StoreError::Corrupt {
            seq: 0,
            reason: "projection table meta: the checkpoints row does not decode".into(),
        }),
    }
}

impl State {
    pub(super) fn apply_checkpoint(&mut self, mark: &CheckpointMark) {
        self.checkpoints.push(Logged {
            seq: self.events,
            mark: *mark,
        });
        if self.checkpoints.len() > KEPT {
            self.checkpoints.remove(0);
        }
        let row = encode(&self.checkpoints);
        self.db.put(Table::Meta, ROW.to_vec(), row);
    }

    /// The newest checkpoint logged.
    pub fn last_checkpoint(&self) -> Option<&Logged> {
        self.checkpoints.last()
    }

    /// The first record the log must keep: the oldest record the older of the last two
    /// checkpoints needs (1 while fewer than two were logged). Records before it are in that
    /// checkpoint's snapshot, or their effects are gone.
    pub fn keep_from(&self) -> u64 {
        if self.checkpoints.len() < KEPT {
            return 1;
        }
        self.checkpoints
            .first()
            .map(|c| c.mark.keep_from)
            .unwrap_or(1)
    }
}
