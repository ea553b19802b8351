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

/// Where a checked log ends: its length and the chain hash of its last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    pub len: u64,
    pub head: [u8; 32],
}

impl LogPosition {
    /// The log checked earlier, on `store` (another handle of the same records: the store
    /// opened for writing after the log was checked on a read-only view). It must hold exactly
    /// the checked records: the same count, and the last record's stored chain hash the checked
    /// head (the data directory's lock keeps other processes from writing in between).
    pub fn resume(self, store: Arc<dyn Store>) -> Result<EventLog, StoreError> {
        let mut log = self.resume_unchecked(store);
        log.resync()?;
        Ok(log)
    }

    /// [`resume`](Self::resume) without looking at the store: for one that cannot be read or
    /// written yet (opened after a full disk). The writer resyncs it once it can be reopened,
    /// before anything is written.
    pub fn resume_unchecked(self, store: Arc<dyn Store>) -> EventLog {
        EventLog {
            store,
            len: self.len,
            head: self.head,
            attempted: self.len,
        }
    }
}

/// The hash-chained log over a [`Store`]. Not thread-safe by itself: the relay's single writer
/// owns it.
pub struct EventLog {
    store: Arc<dyn Store>,
    len: u64,
    head: [u8; 32],
    /// The last record number an append was tried for: a failed append may leave records up
    /// to it in the file, and [`resync`](Self::resync) removes those, but no others.
    attempted: u64,
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
        Self::open_prefix(store, None, f)
    }

    /// Like [`open`](Self::open), reading only the first `len` records when `len` is given:
    /// after a failed write, what the store holds beyond the durable log is not the log's.
    pub fn open_prefix(
        store: Arc<dyn Store>,
        len: Option<u64>,
        f: &mut Visit<'_>,
    ) -> Result<EventLog, StoreError> {
        let mut expect = 1u64;
        let mut head = [0u8; 32];
        store.scan(1, len.unwrap_or(u64::MAX), &mut |seq, value| {
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
        let checked = expect - 1;
        let stored_len = store.len()?;
        let want = len.unwrap_or(stored_len);
        if checked != want || stored_len < want {
            return Err(StoreError::Corrupt {
                seq: checked + 1,
                reason: format!("the store holds {stored_len} records but only {checked} form a chain from record 1"),
            });
        }
        Ok(EventLog {
            store,
            len: checked,
            head,
            attempted: checked,
        })
    }

    /// Lets go of the store this log was checked on (a read-only view holds a lock on the file
    /// that would keep the store from being opened for writing), keeping what was checked: the
    /// length and the chain head.
    pub fn release(self) -> LogPosition {
        LogPosition {
            len: self.len,
            head: self.head,
        }
    }

    /// Makes the store hold exactly this log again after its handle was reopened: records a
    /// failed append of this log left beyond its length go, and the last record's stored chain
    /// hash must be the head. More records than this log ever tried to write are damage (not
    /// removed): something else wrote to the file.
    pub fn resync(&mut self) -> Result<(), StoreError> {
        let stored = self.store.len()?;
        if stored > self.attempted {
            return Err(StoreError::Corrupt {
                seq: self.attempted + 1,
                reason: format!(
                    "the store holds {stored} records, more than the {} this relay wrote: another process wrote to it",
                    self.attempted
                ),
            });
        }
        if stored > self.len {
            self.store.truncate(self.len)?;
        }
        let stored = self.store.len()?;
        if stored != self.len {
            return Err(StoreError::Corrupt {
                seq: stored.min(self.len) + 1,
                reason: format!(
                    "the store holds {stored} records where {} were checked",
                    self.len
                ),
            });
        }
        if self.len > 0 {
            let mut tail = None;
            let len = self.len;
            self.store.scan(len, len, &mut |seq, value| {
                if seq == len {
                    tail = value.get(..32).map(|h| h.to_vec());
                }
                Ok(())
            })?;
            if tail.as_deref() != Some(&self.head[..]) {
                return Err(StoreError::Corrupt {
                    seq: len,
                    reason: "the record differs from the one checked".into(),
                });
            }
        }
        Ok(())
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
        self.attempted = self.attempted.max(self.len + payloads.len() as u64);
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
