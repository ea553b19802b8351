//! The hash chain over the records of a [`Store`]: [`EventLog`] checks every record when it
//! opens a store and extends the chain on every append (see the layer's documentation for the
//! record format).

use super::{Store, StoreError, Visit};
use std::sync::Arc;

const CHAIN_TAG: &[u8] = b"formica/relay-log/v1\0";

fn chain(prev: &[u8; 32], seq: u64, payload: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(CHAIN_TAG);
    h.update(prev);
    h.update(&seq.to_be_bytes());
    h.update(payload);
    *h.finalize().as_bytes()
}

/// The hash-chained log over a [`Store`]. Not thread-safe by itself: the relay's single writer
/// owns it.
pub struct EventLog {
    store: Arc<dyn Store>,
    len: u64,
    head: [u8; 32],
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventLog {{ len: {} }}", self.len)
    }
}

impl EventLog {
    /// Opens the log, checking every record's number and chain hash, and hands each payload to
    /// `f` in order (this is how projections are rebuilt).
    pub fn open(store: Arc<dyn Store>, f: &mut Visit<'_>) -> Result<EventLog, StoreError> {
        let mut expect = 1u64;
        let mut head = [0u8; 32];
        store.scan(1, &mut |seq, value| {
            if seq != expect {
                return Err(StoreError::Corrupt {
                    seq: expect,
                    reason: format!("record {expect} is missing (next present is {seq})"),
                });
            }
            if value.len() < 32 {
                return Err(StoreError::Corrupt {
                    seq,
                    reason: "record shorter than its chain hash".into(),
                });
            }
            let (stored, payload) = value.split_at(32);
            let h = chain(&head, seq, payload);
            if stored != h {
                return Err(StoreError::Corrupt {
                    seq,
                    reason: "chain hash mismatch (the record or one before it was altered)".into(),
                });
            }
            f(seq, payload).map_err(|e| match e {
                StoreError::Corrupt { reason, .. } => StoreError::Corrupt { seq, reason },
                other => other,
            })?;
            head = h;
            expect += 1;
            Ok(())
        })?;
        let len = expect - 1;
        let stored_len = store.len()?;
        if stored_len != len {
            return Err(StoreError::Corrupt {
                seq: len + 1,
                reason: format!("the store holds {stored_len} records but only {len} form a chain from record 1"),
            });
        }
        Ok(EventLog { store, len, head })
    }

    /// Appends payloads durably; returns the number of the first.
    pub fn append(&mut self, payloads: &[Vec<u8>]) -> Result<u64, StoreError> {
        let first = self.len + 1;
        let mut head = self.head;
        let mut records = Vec::with_capacity(payloads.len());
        for (i, p) in payloads.iter().enumerate() {
            head = chain(&head, first + i as u64, p);
            let mut r = Vec::with_capacity(32 + p.len());
            r.extend_from_slice(&head);
            r.extend_from_slice(p);
            records.push(r);
        }
        self.store.append(first, &records)?;
        self.len += payloads.len() as u64;
        self.head = head;
        Ok(first)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chain hash of the last record (zeros for an empty log).
    pub fn head(&self) -> [u8; 32] {
        self.head
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
