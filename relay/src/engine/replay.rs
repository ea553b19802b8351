//! Start-up: replays the event log into a fresh state, checking every record's chain hash
//! first (also what `relay check` runs).

use super::events::Event;
use super::state::State;
use crate::store::{EventLog, Store, StoreError};
use std::sync::Arc;

/// Records handed from one replay stage to the next at a time.
const REPLAY_CHUNK: usize = 1024;
/// Chunks in flight between the two replay stages (bounds the memory the pipeline holds).
const REPLAY_CHUNKS_IN_FLIGHT: usize = 16;

/// Record payloads read by the scan stage, in one buffer that travels back to be reused.
#[derive(Default)]
struct RawChunk {
    seqs: Vec<u64>,
    ends: Vec<usize>,
    bytes: Vec<u8>,
}

impl RawChunk {
    fn records(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        self.seqs
            .iter()
            .zip(starts.zip(self.ends.iter().copied()))
            .map(|(seq, (a, b))| (*seq, &self.bytes[a..b]))
    }
    fn clear(&mut self) {
        self.seqs.clear();
        self.ends.clear();
        self.bytes.clear();
    }
}

/// Replays a log into a fresh state (the start-up path and `relay check`).
///
/// Two stages overlap on a machine with more than one core: this thread reads records and
/// checks their chain hashes, a second thread decodes and applies them in order; read buffers
/// travel back to be reused. The result is the same as applying each record as it is read; the
/// first error (a broken chain or an undecodable record, with its record number) is the one
/// returned. (Decoding and applying stay on one thread: with a third stage the allocator,
/// freeing across threads, cost more than the overlap gained.)
pub fn replay(
    store: Arc<dyn Store>,
    host: &formica_protocol::RelayHost,
) -> Result<(EventLog, State), StoreError> {
    replay_prefix(store, host, None)
}

/// [`replay`] of only the first `len` records, when `len` is given: after a failed write, the
/// state is rebuilt from what was durable before it.
pub fn replay_prefix(
    store: Arc<dyn Store>,
    host: &formica_protocol::RelayHost,
    len: Option<u64>,
) -> Result<(EventLog, State), StoreError> {
    use std::sync::mpsc::{channel, sync_channel};
    std::thread::scope(|s| {
        let (raw_tx, raw_rx) = sync_channel::<RawChunk>(REPLAY_CHUNKS_IN_FLIGHT);
        let (reuse_tx, reuse_rx) = channel::<RawChunk>();
        let host = host.clone();
        let applier = std::thread::Builder::new()
            .name("formica-replay".into())
            .spawn_scoped(s, move || -> Result<State, StoreError> {
                let mut st = State::new(host);
                for mut chunk in raw_rx {
                    for (seq, payload) in chunk.records() {
                        let ev = Event::decode(payload)
                            .map_err(|reason| StoreError::Corrupt { seq, reason })?;
                        st.apply(&ev);
                    }
                    chunk.clear();
                    let _ = reuse_tx.send(chunk);
                }
                Ok(st)
            })
            .map_err(|e| StoreError::Io(format!("cannot start the replay thread: {e}")))?;
        let mut chunk = RawChunk::default();
        let stopped = || StoreError::Io("replay stopped".into());
        let opened = EventLog::open_prefix(store, len, &mut |seq, payload| {
            chunk.seqs.push(seq);
            chunk.bytes.extend_from_slice(payload);
            chunk.ends.push(chunk.bytes.len());
            if chunk.seqs.len() == REPLAY_CHUNK {
                let next = reuse_rx.try_recv().unwrap_or_default();
                raw_tx
                    .send(std::mem::replace(&mut chunk, next))
                    .map_err(|_| stopped())?;
            }
            Ok(())
        });
        // Also after a broken chain: the records before the break are decoded, so that an
        // earlier undecodable record is the error reported. A failed send means the applier
        // stopped; its error is reported below.
        if !chunk.seqs.is_empty() {
            let _ = raw_tx.send(std::mem::take(&mut chunk));
        }
        drop(raw_tx);
        let applied = applier
            .join()
            .unwrap_or_else(|_| Err(StoreError::Io("the replay thread panicked".into())));
        // A decoding error stops the scan (its sends fail), so it comes first; then the scan's.
        let st = applied?;
        let log = opened?;
        Ok((log, st))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{MemStore, Store};
    use formica_protocol::envelope::ContactLevel;
    use formica_protocol::Handle;
    use formica_protocol::RelayHost;

    /// The staged replay gives the state of applying each record in turn, across many chunks,
    /// and reports a record that does not decode by its number.
    #[test]
    fn staged_replay_equals_applying_in_turn() {
        let host = RelayHost::parse("relay.test").unwrap();
        let store: Arc<dyn Store> = Arc::new(MemStore::default());
        let (mut log, _) = replay(store.clone(), &host).unwrap();
        let owner = Handle::parse("@a@relay.test").unwrap();
        let n = REPLAY_CHUNK * 2 + 7;
        let events: Vec<Event> = (0..n)
            .map(|i| Event::ContactSet {
                at: i as i64,
                owner: owner.clone(),
                contact: Handle::parse(&format!("@b{i}@relay.test")).unwrap(),
                level: ContactLevel::Message,
            })
            .collect();
        let records: Vec<Vec<u8>> = events.iter().map(Event::encode).collect();
        log.append(&records).unwrap();
        let mut expect = State::new(host.clone());
        for e in &events {
            expect.apply(e);
        }
        let (_, got) = replay(store.clone(), &host).unwrap();
        assert_eq!(got, expect);
        assert_eq!(got.events, n as u64);
        // A record that is chained correctly but does not decode is named by its number.
        let (mut log, _) = replay(store.clone(), &host).unwrap();
        log.append(&[b"{\"t\":\"nonsense\"}".to_vec()]).unwrap();
        match replay(store, &host) {
            Err(StoreError::Corrupt { seq, .. }) => assert_eq!(seq, n as u64 + 1),
            other => panic!("expected a corrupt record, got {:?}", other.map(|_| ())),
        }
    }
}
