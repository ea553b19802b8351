//! [`Db`]: the projection tables as the state sees them: the rows last committed to the store,
//! under the changes the writer has applied since (its batch, not yet committed).
//!
//! Reads inside [`State::apply`](super::State::apply) cannot fail: a store error there is kept
//! (and the read answers as if the row were absent), and the writer, which asks
//! [`Db::take_error`] before it commits, refuses the whole batch instead of committing
//! projections made from a failed read.

use crate::store::{Changes, Row, Store, StoreError, Table};
use std::sync::{Arc, Mutex};

pub struct Db {
    store: Arc<dyn Store>,
    /// Where the log records are (the same store, except when a replay builds tables in
    /// another one): inbox and queue rows point at them for the envelopes' bytes.
    log: Arc<dyn Store>,
    pending: Changes,
    /// The changes of the batch being committed: read like pending ones until the commit is
    /// done, so that the ingest pre-checks see the batch at the disk (as the writer will).
    committing: Mutex<Option<Arc<Changes>>>,
    error: Mutex<Option<StoreError>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Db {{ pending: {} }}", self.pending.len())
    }
}

impl Db {
    pub fn new(store: Arc<dyn Store>) -> Db {
        Db::with_log(store.clone(), store)
    }

    /// Tables in `store`, records in `log`.
    pub fn with_log(store: Arc<dyn Store>, log: Arc<dyn Store>) -> Db {
        Db {
            store,
            log,
            pending: Changes::new(),
            committing: Mutex::new(None),
            error: Mutex::new(None),
        }
    }

    fn keep(&self, e: StoreError) {
        // Only the writer's own reads (deciding, applying, rebuilding) may fail its batch; a
        // reader's failed read (an inbox page, a status) answers that reader only.
        let writer = std::thread::current()
            .name()
            .is_some_and(|n| n == "formica-writer" || n == "formica-replay");
        if !writer {
            tracing::warn!(error = %e, "a projection table could not be read");
            return;
        }
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    /// A row that does not decode: damage, kept like a store error.
    pub fn keep_damage(&self, t: Table, what: &str) {
        self.keep(StoreError::Corrupt {
            seq: 0,
            reason: format!("projection table {}: {what}", t.name()),
        });
    }

    /// The first store error a read met since the last call.
    pub fn take_error(&self) -> Option<StoreError> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Changes not yet committed, moved aside for the commit (the writer commits them with the
    /// batch's records, then calls [`committed`](Self::committed)); reads still see them.
    pub fn take_changes(&mut self) -> Arc<Changes> {
        let c = Arc::new(std::mem::take(&mut self.pending));
        *self.committing.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        c
    }

    /// The changes taken last are in the store now (or were dropped with a failed commit, and
    /// the state is loaded again).
    pub fn committed(&self) {
        *self.committing.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Forgets every change not committed.
    pub fn discard(&mut self) {
        self.pending.clear();
        self.committed();
    }

    fn committing(&self) -> Option<Arc<Changes>> {
        self.committing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rows changed and not yet committed.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub fn put(&mut self, t: Table, k: Vec<u8>, v: Vec<u8>) {
        self.pending.insert((t, k), Some(v));
    }

    pub fn del(&mut self, t: Table, k: Vec<u8>) {
        self.pending.insert((t, k), None);
    }

    /// The bytes of the envelope stored by log record `seq`, or an error (a record that is
    /// not an envelope event is damage).
    ///
    /// A record that replicated entries of a conversation homed elsewhere holds the envelope
    /// `id` among them (SPEC.md CONVO-12).
    pub fn envelope_bytes(
        &self,
        seq: u64,
        id: &formica_protocol::envelope::MessageId,
    ) -> Result<Arc<Vec<u8>>, StoreError> {
        use crate::engine::events::Event;
        let mut out = None;
        self.log.scan(seq, seq, &mut |_, value| {
            let Some(p) = crate::store::log::payload(value) else {
                return Ok(());
            };
            out = match Event::envelope_bytes(p) {
                Some(b) => Some(Arc::new(b.to_vec())),
                None => match Event::decode(p) {
                    Ok(Event::ConvReplica { entries, .. }) => {
                        entries.iter().find_map(|e| match &e.body {
                            formica_protocol::conversation::EntryBody::Envelope(se)
                                if se.id() == *id =>
                            {
                                Some(Arc::new(se.wire().to_vec()))
                            }
                            _ => None,
                        })
                    }
                    _ => None,
                },
            };
            Ok(())
        })?;
        out.ok_or_else(|| StoreError::Corrupt {
            seq,
            reason: "an inbox or queue row points at a record that holds no envelope".into(),
        })
    }

    /// The chain hash of log record `seq` as the store holds it now (`None`: not there, or not
    /// readable): what a checkpoint record's `head` must be.
    pub fn chain_hash_at(&self, seq: u64) -> Option<[u8; 32]> {
        crate::store::EventLog::chain_hash_at(&*self.log, seq)
            .ok()
            .flatten()
    }

    /// One row, or an error from the store.
    pub fn try_get(&self, t: Table, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = (t, k.to_vec());
        if let Some(v) = self.pending.get(&key) {
            return Ok(v.clone());
        }
        if let Some(c) = self.committing() {
            if let Some(v) = c.get(&key) {
                return Ok(v.clone());
            }
        }
        self.store.get(t, k)
    }

    /// One row; a store error is kept for the writer and reads as absent.
    pub fn get(&self, t: Table, k: &[u8]) -> Option<Vec<u8>> {
        self.try_get(t, k).unwrap_or_else(|e| {
            self.keep(e);
            None
        })
    }

    /// Up to `max` rows with keys in `from..to` (to the table's end when `to` is `None`), in
    /// key order, the pending changes included.
    pub fn try_scan(
        &self,
        t: Table,
        from: &[u8],
        to: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<Row>, StoreError> {
        use std::ops::Bound;
        let lo = Bound::Included((t, from.to_vec()));
        let hi = match to {
            Some(to) => Bound::Excluded((t, to.to_vec())),
            None => Bound::Excluded((t, vec![0xff; 1024])),
        };
        let committing = self.committing();
        let mut merged: std::collections::BTreeMap<&Vec<u8>, &Option<Vec<u8>>> =
            std::collections::BTreeMap::new();
        for layer in committing.as_deref().into_iter().chain(Some(&self.pending)) {
            for ((_, k), v) in layer
                .range((lo.clone(), hi.clone()))
                .filter(|((tt, _), _)| *tt == t)
            {
                merged.insert(k, v);
            }
        }
        let over: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = merged.into_iter().collect();
        // Rows removed in the pending changes may hide as many stored ones.
        let want = max.saturating_add(over.len());
        let mut rows = std::collections::BTreeMap::new();
        self.store.range(t, from, to, &mut |k, v| {
            rows.insert(k.to_vec(), v.to_vec());
            rows.len() < want
        })?;
        // When the store's rows were cut short, a pending row past the last one read could sort
        // after stored rows that were not read: keep only what is known to be in order.
        let last = (rows.len() >= want)
            .then(|| rows.keys().next_back().cloned())
            .flatten();
        for (k, v) in over {
            if last.as_ref().is_some_and(|l| k > l) {
                continue;
            }
            match v {
                Some(v) => rows.insert(k.clone(), v.clone()),
                None => rows.remove(k),
            };
        }
        Ok(rows.into_iter().take(max).collect())
    }

    /// [`try_scan`](Self::try_scan); a store error is kept for the writer and reads as no rows.
    pub fn scan(&self, t: Table, from: &[u8], to: Option<&[u8]>, max: usize) -> Vec<Row> {
        self.try_scan(t, from, to, max).unwrap_or_else(|e| {
            self.keep(e);
            Vec::new()
        })
    }
}
