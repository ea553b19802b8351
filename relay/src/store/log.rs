//! The hash chain over the records of a [`Store`]: [`EventLog`] checks every record when it
//! opens a store and extends the chain on every append (see the layer's documentation for the
//! record format).

use super::{Changes, LogBase, Store, StoreError, Table, Visit};
use std::sync::Arc;

/// The row of [`Table::Meta`] that says which log position the projection tables are the
/// replay of: the last record's number (u64 BE) and its chain hash. Every commit of records
/// through [`EventLog::append_with`] writes it in the same transaction. Named `projected-2`
/// since the tables' format 2 (dedup ids by `ts` only): a binary of the previous release looks
/// for `projected`, finds none and rebuilds its tables from the log (or refuses a log whose
/// first records were dropped), instead of loading tables it would misread.
pub const PROJECTED: &[u8] = b"projected-2";

const CHAIN_TAG: &[u8] = b"formica/relay-log/v1\0";

/// Records read per read transaction when a log is opened and checked in full.
const OPEN_CHUNK: u64 = 10_000;

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
    fn encode(&self) -> Vec<u8> {
        let mut v = self.len.to_be_bytes().to_vec();
        v.extend_from_slice(&self.head);
        v
    }

    /// The position the store's projection tables say they are the replay of (`None`: no
    /// projections, a store written before they existed or whose rebuild did not finish).
    pub fn projected(store: &dyn Store) -> Result<Option<LogPosition>, StoreError> {
        match store.get(Table::Meta, PROJECTED)? {
            Some(v) => Self::decode(&v).map(Some),
            None => Ok(None),
        }
    }

    /// A position as the [`PROJECTED`] row holds it.
    pub fn decode(v: &[u8]) -> Result<LogPosition, StoreError> {
        if v.len() != 40 {
            return Err(StoreError::Corrupt {
                seq: 0,
                reason: "projection table meta: the projected position is not 40 bytes".into(),
            });
        }
        let mut head = [0u8; 32];
        head.copy_from_slice(&v[8..]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&v[..8]);
        Ok(LogPosition {
            len: u64::from_be_bytes(len),
            head,
        })
    }

    /// The change that records this position as the projections' (written by a rebuild).
    pub fn projected_change(&self) -> Changes {
        let mut c = Changes::new();
        c.insert((Table::Meta, PROJECTED.to_vec()), Some(self.encode()));
        c
    }

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

/// The payload of a stored record (what follows its chain hash).
pub fn payload(value: &[u8]) -> Option<&[u8]> {
    value.get(32..)
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
        let base = store.base()?;
        let mut expect = base.first;
        let mut head = base.prev;
        let end = match len {
            Some(l) => l,
            None => store.len()?,
        };
        // In ranges, each read in its own read transaction: a rebuild writes the tables while
        // this reads, and a read transaction held for the whole log would keep the store from
        // reusing any page those writes free (the file grew eightfold in a 1M-record rebuild).
        let mut from = base.first;
        while from <= end {
            let to = end.min(from + OPEN_CHUNK - 1);
            Self::check_range(&*store, from, to, &mut expect, &mut head, f)?;
            if expect <= to {
                break;
            }
            from = to + 1;
        }
        let checked = expect - 1;
        let stored_len = store.len()?;
        let want = len.unwrap_or(stored_len);
        if checked != want || stored_len < want {
            return Err(StoreError::Corrupt {
                seq: checked + 1,
                reason: format!(
                    "the store holds records up to {stored_len} but only those up to {checked} form a chain from record {}",
                    base.first
                ),
            });
        }
        Ok(EventLog {
            store,
            len: checked,
            head,
            attempted: checked,
        })
    }

    /// Checks records `from..=to` against the chain, continuing `expect` and `head`.
    fn check_range(
        store: &dyn Store,
        from: u64,
        to: u64,
        expect: &mut u64,
        head: &mut [u8; 32],
        f: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        store.scan(from, to, &mut |seq, value| {
            let expect_now = *expect;
            if seq != expect_now {
                let expect = expect_now;
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
            let h = chain(head, seq, payload);
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
            *head = h;
            *expect += 1;
            Ok(())
        })
    }

    /// Opens the log checking only its head: the last record's chain hash against the one
    /// before it, and the record count against the numbering. This is the start-up path when the
    /// projection tables say they are the replay of exactly this head (the whole chain is
    /// checked by `relay check`).
    pub fn open_head(store: Arc<dyn Store>) -> Result<EventLog, StoreError> {
        let len = store.len()?;
        let base = store.base()?;
        let mut prev = base.prev;
        let mut head = base.prev;
        let mut seen = 0u64;
        if len >= base.first {
            store.scan(
                len.saturating_sub(1).max(base.first),
                len,
                &mut |seq, value| {
                    if value.len() < 32 {
                        return Err(StoreError::Corrupt {
                            seq,
                            reason: "record shorter than its chain hash".into(),
                        });
                    }
                    let (stored, payload) = value.split_at(32);
                    if seq < len {
                        prev.copy_from_slice(stored);
                    } else {
                        let h = chain(&prev, seq, payload);
                        if stored != h {
                            return Err(StoreError::Corrupt {
                                seq,
                                reason:
                                    "chain hash mismatch (the record or one before it was altered)"
                                        .into(),
                            });
                        }
                        head = h;
                    }
                    seen += 1;
                    Ok(())
                },
            )?;
            if seen != (len - base.first + 1).min(2) {
                return Err(StoreError::Corrupt {
                    seq: len,
                    reason: format!("the store says its last record is {len}, but its last ones are not numbered so"),
                });
            }
        }
        Ok(EventLog {
            store,
            len,
            head,
            attempted: len,
        })
    }

    /// The chain hash of record `seq` as stored (`base.prev` for the record just before the
    /// kept log): what a checkpoint record's `head` must equal. `None` when the record is not
    /// kept. Checks nothing: the caller checked the chain.
    pub fn chain_hash_at(store: &dyn Store, seq: u64) -> Result<Option<[u8; 32]>, StoreError> {
        let base = store.base()?;
        if seq + 1 == base.first {
            return Ok(Some(base.prev));
        }
        let mut out = None;
        store.scan(seq, seq, &mut |s, value| {
            if s == seq && value.len() >= 32 {
                let mut h = [0u8; 32];
                h.copy_from_slice(&value[..32]);
                out = Some(h);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Where the kept log starts.
    pub fn base(&self) -> Result<LogBase, StoreError> {
        self.store.base()
    }

    /// Drops the records before `first` (at most up to this log's last record, which stays),
    /// durably: the chain hash of record `first - 1` becomes the base the kept chain continues.
    /// Only behind a checkpoint whose snapshot holds what they made (`engine::checkpoint`).
    pub fn drop_before(&mut self, first: u64) -> Result<(), StoreError> {
        let base = self.store.base()?;
        if first <= base.first {
            return Ok(());
        }
        if first > self.len {
            return Err(StoreError::Io(format!(
                "cannot drop records up to {}: the log's last record is {}",
                first - 1,
                self.len
            )));
        }
        let prev =
            Self::chain_hash_at(&*self.store, first - 1)?.ok_or_else(|| StoreError::Corrupt {
                seq: first - 1,
                reason: "the record is missing".into(),
            })?;
        self.store.drop_before(LogBase { first, prev })
    }

    /// Checks the chain hash of every kept record up to `len`, reading `chunk`
    /// records per read transaction (a long read would keep the store from reusing pages
    /// while a relay serves). What start-up leaves out when it checks only the head; a
    /// running relay does it in the background.
    pub fn verify_chain(store: &dyn Store, len: u64, chunk: u64) -> Result<(), StoreError> {
        Self::verify_chain_until(store, len, chunk, &|| false).map(|_| ())
    }

    /// [`verify_chain`](Self::verify_chain), giving up between two reads once `stop` says so:
    /// `Ok(false)` then, `Ok(true)` when every record was checked.
    pub fn verify_chain_until(
        store: &dyn Store,
        len: u64,
        chunk: u64,
        stop: &dyn Fn() -> bool,
    ) -> Result<bool, StoreError> {
        let base = store.base()?;
        let mut head = base.prev;
        let mut expect = base.first;
        while expect <= len {
            if stop() {
                return Ok(false);
            }
            let last = len.min(expect + chunk.max(1) - 1);
            Self::check_range(store, expect, last, &mut expect, &mut head, &mut |_, _| {
                Ok(())
            })?;
            if expect <= last {
                return Err(StoreError::Corrupt {
                    seq: expect,
                    reason: format!("record {expect} is missing"),
                });
            }
        }
        Ok(true)
    }

    /// Where this log stands.
    pub fn position(&self) -> LogPosition {
        LogPosition {
            len: self.len,
            head: self.head,
        }
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

    /// Moves this log to the store's last record, `stored`, after other nodes of the relay
    /// appended to a shared store (the writer's turn: nothing else appends meanwhile). The
    /// records after this log's head are read and their chain checked from it, so a gap, a
    /// changed record or a fork between nodes stops here with the record's number.
    pub fn follow(&mut self, stored: u64) -> Result<(), StoreError> {
        if stored < self.len {
            return Err(StoreError::Corrupt {
                seq: stored + 1,
                reason: format!(
                    "the store holds {stored} records, fewer than the {} this node saw",
                    self.len
                ),
            });
        }
        if stored == self.len {
            return Ok(());
        }
        let mut head = self.head;
        let mut next = self.len + 1;
        self.store.scan(next, stored, &mut |seq, value| {
            let bad = |reason: &str| StoreError::Corrupt {
                seq,
                reason: reason.into(),
            };
            if seq != next {
                return Err(bad("a record is missing"));
            }
            let (stored_hash, payload) = (value.get(..32), value.get(32..));
            let (Some(h), Some(p)) = (stored_hash, payload) else {
                return Err(bad("the record is shorter than its chain hash"));
            };
            let want = chain(&head, seq, p);
            if h != want {
                return Err(bad("the record's chain hash does not continue the log"));
            }
            head = want;
            next += 1;
            Ok(())
        })?;
        if next != stored + 1 {
            return Err(StoreError::Corrupt {
                seq: next,
                reason: "a record is missing".into(),
            });
        }
        self.len = stored;
        self.attempted = self.attempted.max(stored);
        self.head = head;
        Ok(())
    }

    /// Appends payloads durably; returns the number of the first.
    pub fn append(&mut self, payloads: &[Vec<u8>]) -> Result<u64, StoreError> {
        self.append_inner(payloads, None)
    }

    /// Appends payloads and applies `changes` to the projection tables in one durable commit,
    /// recording the new head as the projections' position ([`PROJECTED`]).
    pub fn append_with(
        &mut self,
        payloads: &[Vec<u8>],
        changes: &[&Changes],
    ) -> Result<u64, StoreError> {
        self.append_inner(payloads, Some(changes))
    }

    fn append_inner(
        &mut self,
        payloads: &[Vec<u8>],
        changes: Option<&[&Changes]>,
    ) -> Result<u64, StoreError> {
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
        match changes {
            Some(c) => {
                let at = LogPosition {
                    len: self.len + payloads.len() as u64,
                    head,
                };
                let meta = at.projected_change();
                let mut sets = c.to_vec();
                sets.push(&meta);
                self.store.commit(first, &records, &sets)?;
            }
            None => self.store.append(first, &records)?,
        }
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
