//! Rebuilding the projections: replays the event log into fresh tables, checking every
//! record's chain hash first (a store from before the tables, damaged tables, `relay check`).

use super::events::{CheckpointMark, Event};
use super::state::{Db, State};
use crate::store::{EventLog, LogPosition, MemStore, Rows, Store, StoreError, Table};
use std::sync::Arc;

/// How [`open`] found the projections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// They were the replay of the log's head: loaded, nothing replayed.
    Loaded,
    /// They had to be rebuilt from the log, for this reason.
    Rebuilt(String),
}

/// Why the projections of `store` cannot be loaded as they are (`None`: they can, and here
/// they are): they must be the replay of exactly the log's head.
fn loadable(
    store: &Arc<dyn Store>,
    host: &formica_protocol::RelayHost,
    at: LogPosition,
) -> Result<State, String> {
    match LogPosition::projected(&**store) {
        Ok(Some(p)) if p == at => {}
        Ok(Some(p)) => {
            return Err(format!(
                "the projection tables are the replay of {} records, the log holds {}",
                p.len, at.len
            ))
        }
        Ok(None) => {
            return Err("the store has no projection tables (written by an earlier release, or a rebuild was interrupted)".into())
        }
        Err(e) => return Err(e.to_string()),
    }
    match store.get(Table::Meta, crate::engine::state::FORMAT) {
        Ok(Some(v)) if v == crate::engine::state::FORMAT_VERSION => {}
        Ok(_) => {
            return Err(format!(
                "the projection tables are not of format {} (written by an earlier release)",
                String::from_utf8_lossy(crate::engine::state::FORMAT_VERSION)
            ))
        }
        Err(e) => return Err(e.to_string()),
    }
    match State::load(host.clone(), store.clone()) {
        Ok(st) if st.events == at.len => Ok(st),
        Ok(st) => Err(format!(
            "the projection tables count {} events, the log holds {}",
            st.events, at.len
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Start-up: checks the log at its head and loads the projections when they are its replay;
/// otherwise (none yet, another position, damage) rebuilds them from the whole log, which is
/// then checked from its first record.
pub fn open(
    store: Arc<dyn Store>,
    host: &formica_protocol::RelayHost,
) -> Result<(EventLog, State, Opened), StoreError> {
    if store.shared() {
        store.begin_turn()?;
        let r = open_shared(store.clone(), host);
        store.end_turn();
        return r;
    }
    let log = EventLog::open_head(store.clone())?;
    match loadable(&store, host, log.position()) {
        Ok(st) => Ok((log, st, Opened::Loaded)),
        Err(why) => {
            if !log.is_empty() {
                tracing::warn!(reason = %why, "rebuilding the projection tables from the log");
            }
            let (log, st) = rebuild(store, host)?;
            Ok((log, st, Opened::Rebuilt(why)))
        }
    }
}

/// Set to 1 to let a node rebuild the tables of a shared store whose log is not empty (after
/// an upgrade that changed their format): only while no other node of the relay runs.
pub const SHARED_REBUILD_ENV: &str = "FORMICA_STORE_REBUILD";

/// [`open`] on a store shared by several nodes, in a turn (no node appends between the reading
/// of the head and the loading of the tables). Tables that are not the replay of a log that
/// holds records are not rebuilt, since other nodes may be serving from them, unless the
/// operator says no other node runs ([`SHARED_REBUILD_ENV`]).
fn open_shared(
    store: Arc<dyn Store>,
    host: &formica_protocol::RelayHost,
) -> Result<(EventLog, State, Opened), StoreError> {
    let log = EventLog::open_head(store.clone())?;
    match loadable(&store, host, log.position()) {
        Ok(st) => Ok((log, st, Opened::Loaded)),
        Err(why)
            if log.is_empty() || std::env::var(SHARED_REBUILD_ENV).is_ok_and(|v| v == "1") =>
        {
            if !log.is_empty() {
                tracing::warn!(reason = %why, "rebuilding the projection tables of the shared store ({SHARED_REBUILD_ENV}=1): no other node may run meanwhile");
            }
            // The rebuild's commits each take the store's write lock.
            store.end_turn();
            let (log, st) = rebuild(store, host)?;
            Ok((log, st, Opened::Rebuilt(why)))
        }
        Err(why) => Err(StoreError::Corrupt {
            seq: 0,
            reason: format!(
                "the projection tables are not the replay of the log ({why}); other nodes may be serving from them, so this node does not rebuild them: stop every node of the relay, start one with {SHARED_REBUILD_ENV}=1, then the others"
            ),
        }),
    }
}

/// [`open`]'s first half on a store that must not be written (a read-only view): the log's
/// head position and the loaded state, or why the projections need a rebuild (and then the
/// whole chain is checked here, so that a damaged log is refused before anything writes).
pub fn open_checked(
    store: Arc<dyn Store>,
    host: &formica_protocol::RelayHost,
) -> Result<(LogPosition, Result<State, String>), StoreError> {
    let log = EventLog::open_head(store.clone())?;
    let at = log.position();
    match loadable(&store, host, at) {
        Ok(mut st) => {
            // Let go of the view (its lock keeps the store from being opened for writing);
            // the caller binds the state to the store it opens.
            st.rebind(Arc::new(MemStore::default()));
            Ok((at, Ok(st)))
        }
        Err(why) => {
            let full = EventLog::open(store, &mut |seq, payload| {
                Event::decode(payload)
                    .map(|_| ())
                    .map_err(|reason| StoreError::Corrupt { seq, reason })
            })?;
            Ok((full.release(), Err(why)))
        }
    }
}

/// What `relay check` found in a sound store.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The first record the log keeps (those before were dropped behind a checkpoint).
    pub first: u64,
    pub log: LogPosition,
    pub agents: u64,
    pub messages: u64,
    /// Whether the store's projection tables were compared with the replay.
    pub compared: bool,
}

/// `relay check`: replays the first `len` records (every record's chain hash and event) into
/// projections in memory, and, when `compare` is set, compares them row by row with the
/// store's own tables, naming the first table and key that differ. Memory: the projections of
/// the whole log.
pub fn check(
    store: Arc<dyn Store>,
    host: &formica_protocol::RelayHost,
    len: Option<u64>,
    compare: bool,
) -> Result<Checked, StoreError> {
    let mem: Arc<dyn Store> = Arc::new(MemStore::default());
    let (log, st) = replay_into(store.clone(), host, len, mem.clone())?;
    // Every inbox item and queued transfer points at a record the log keeps (the envelope's
    // bytes are there).
    let base = store.base()?;
    for t in [Table::Inbox, Table::Outbound] {
        let mut dangling = None;
        mem.range(
            t,
            &[],
            None,
            &mut |_, v| match super::state::codec::item_seq(v) {
                Some(seq) if seq >= base.first && seq <= log.len() => true,
                other => {
                    dangling = Some(other.unwrap_or(0));
                    false
                }
            },
        )?;
        if let Some(seq) = dangling {
            return Err(StoreError::Corrupt {
                seq,
                reason: format!(
                    "projection table {}: a row points at record {seq}, which the log does not keep (it starts at {})",
                    t.name(),
                    base.first
                ),
            });
        }
    }
    // Every snapshot the log may need must read whole and be the one its record names.
    let (good, damaged) = super::checkpoint::snapshots(&*store, base.first - 1, log.len())?;
    if let Some((_, e)) = damaged.into_iter().next() {
        return Err(e);
    }
    let marks: Vec<CheckpointMark> = st.checkpoints.iter().map(|c| c.mark).collect();
    for info in &good {
        // Snapshots of checkpoints before the last two go once their records are dropped.
        if marks.iter().any(|m| m.len == info.len) {
            super::checkpoint::vouch_for(&*store, info, &marks)?;
        }
    }
    if compare {
        if store
            .get(Table::Meta, crate::engine::state::FORMAT)?
            .as_deref()
            != Some(crate::engine::state::FORMAT_VERSION)
        {
            return Err(StoreError::Corrupt {
                seq: 0,
                reason: "the projection tables are of an earlier format (relay serve or relay check --rebuild rebuilds them)".into(),
            });
        }
        match LogPosition::projected(&*store)? {
            Some(p) if p == log.position() => {}
            Some(p) => {
                return Err(StoreError::Corrupt {
                    seq: 0,
                    reason: format!("the projection tables are the replay of {} records, the log holds {} (relay check --rebuild repairs them)", p.len, log.len()),
                })
            }
            None => {
                return Err(StoreError::Corrupt {
                    seq: 0,
                    reason: "the store has no projection tables (relay serve or relay check --rebuild builds them)".into(),
                })
            }
        }
        let want = Db::dump(&*mem)?;
        let got = Db::dump(&*store)?;
        if let Some(diff) = first_difference(&want, &got) {
            return Err(StoreError::Corrupt {
                seq: 0,
                reason: format!("{diff} (relay check --rebuild repairs it from the log)"),
            });
        }
    }
    Ok(Checked {
        first: base.first,
        log: log.position(),
        agents: st.agents.len() as u64,
        messages: st.messages_len,
        compared: compare,
    })
}

/// The first row where the store's tables (`got`) differ from the replay (`want`).
fn first_difference(want: &Rows, got: &Rows) -> Option<String> {
    let show = |k: &[u8]| {
        let s = String::from_utf8_lossy(k);
        if s.chars().all(|c| !c.is_control() || c == '\0') {
            s.replace('\0', " ")
        } else {
            formica_protocol::hex::encode(k)
        }
    };
    let mut a = want.iter();
    let mut b = got.iter();
    loop {
        match (a.next(), b.next()) {
            (None, None) => return None,
            (Some(((t, k), _)), None) => {
                return Some(format!(
                    "projection table {}: row {} is missing",
                    t.name(),
                    show(k)
                ))
            }
            (None, Some(((t, k), _))) => {
                return Some(format!(
                    "projection table {}: row {} should not be there",
                    t.name(),
                    show(k)
                ))
            }
            (Some(((t1, k1), v1)), Some(((t2, k2), v2))) => {
                if (t1, k1) != (t2, k2) {
                    let ((t, k), what) = if (t1, k1) < (t2, k2) {
                        ((t1, k1), "is missing")
                    } else {
                        ((t2, k2), "should not be there")
                    };
                    return Some(format!(
                        "projection table {}: row {} {what}",
                        t.name(),
                        show(k)
                    ));
                }
                if v1 != v2 {
                    return Some(format!(
                        "projection table {}: row {} differs from the replay of the log",
                        t1.name(),
                        show(k1)
                    ));
                }
            }
        }
    }
}

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

/// Rows a rebuild applies before it commits them: bounds the memory it holds (each row is at
/// most an envelope's bytes and a little more).
pub const REBUILD_FLUSH_ROWS: usize = 100_000;

/// Rebuilds the projection tables of `store` from its log: empties them, replays every record
/// (checking every record's chain hash, as `relay check` does) and commits the rows as it goes,
/// the position they are the replay of last. An interrupted rebuild leaves no position, so the
/// next start rebuilds again. This is the path of a store written before the tables existed, of
/// damaged tables and of `relay check --rebuild`.
pub fn rebuild(
    store: Arc<dyn Store>,
    host: &formica_protocol::RelayHost,
) -> Result<(EventLog, State), StoreError> {
    // A log that starts after record 1 can only be rebuilt from a sound snapshot: without one,
    // the tables are left as they are (they may be all that is left of the records dropped).
    let base = store.base()?;
    if base.first > 1
        && super::checkpoint::snapshots(&*store, base.first - 1, store.len()?)?
            .0
            .is_empty()
    {
        return Err(StoreError::Corrupt {
            seq: base.first,
            reason: format!(
                "the log starts at record {} and no sound checkpoint snapshot covers the records before it; the tables were left as they are",
                base.first
            ),
        });
    }
    store.clear_projections()?;
    let r = replay_into(store.clone(), host, None, store.clone())?;
    // Snapshots that do not read whole are set aside (renamed `*.damaged`): the tables were
    // rebuilt without them, and the writer never drops records behind a missing one.
    let (_, damaged) = super::checkpoint::snapshots(&*store, 0, u64::MAX)?;
    for (p, e) in damaged {
        let aside = p.with_extension("snap.damaged");
        tracing::error!(file = %p.display(), error = %e, "a damaged checkpoint snapshot is set aside");
        std::fs::rename(&p, &aside).map_err(|x| StoreError::Io(format!("{}: {x}", p.display())))?;
        if let Some(dir) = p.parent() {
            crate::store::sync_dir(dir)
                .map_err(|x| StoreError::Io(format!("{}: {x}", dir.display())))?;
        }
    }
    Ok(r)
}

/// Replays the first `len` records of `store`'s log (all when `None`) into projections kept in
/// `target` (another store, or the same one with its tables emptied), committing as it goes.
/// Returns the log checked from its first record and the state.
///
/// Two stages overlap on a machine with more than one core: this thread reads records and
/// checks their chain hashes, a second thread decodes and applies them in order; read buffers
/// travel back to be reused. The result is the same as applying each record as it is read; the
/// first error (a broken chain or an undecodable record, with its record number) is the one
/// returned.
pub fn replay_into(
    store: Arc<dyn Store>,
    host: &formica_protocol::RelayHost,
    len: Option<u64>,
    target: Arc<dyn Store>,
) -> Result<(EventLog, State), StoreError> {
    use std::sync::mpsc::{channel, sync_channel};
    // A log whose first records were dropped starts from a checkpoint's snapshot.
    let base = store.base()?;
    let from = if base.first > 1 {
        let end = match len {
            Some(l) => l,
            None => store.len()?,
        };
        Some(super::checkpoint::from_snapshot(
            &store,
            host,
            &target,
            base.first - 1,
            end,
        )?)
    } else {
        None
    };
    let skip_to = from.as_ref().map(|(info, _)| info.len).unwrap_or(0);
    std::thread::scope(|s| {
        let (raw_tx, raw_rx) = sync_channel::<RawChunk>(REPLAY_CHUNKS_IN_FLIGHT);
        let (reuse_tx, reuse_rx) = channel::<RawChunk>();
        let host = host.clone();
        let tgt = target.clone();
        let src = store.clone();
        let (info, start) = match from {
            Some((info, st)) => (Some(info), Some(st)),
            None => (None, None),
        };
        let applier = std::thread::Builder::new()
            .name("formica-replay".into())
            .spawn_scoped(
                s,
                move || -> Result<(State, Vec<CheckpointMark>), StoreError> {
                    let mut st = match start {
                        Some(st) => st,
                        None => State::new_for_log(host, tgt.clone(), src),
                    };
                    let mut marks = Vec::new();
                    for mut chunk in raw_rx {
                        for (seq, payload) in chunk.records() {
                            let ev = Event::decode(payload)
                                .map_err(|reason| StoreError::Corrupt { seq, reason })?;
                            if let Event::Checkpoint { cp, .. } = &ev {
                                marks.push(*cp);
                            }
                            st.apply(&ev);
                        }
                        chunk.clear();
                        let _ = reuse_tx.send(chunk);
                        if st.pending_rows() >= REBUILD_FLUSH_ROWS {
                            let c = st.take_changes()?;
                            tgt.commit(0, &[], &[&c])?;
                            st.committed();
                        }
                    }
                    Ok((st, marks))
                },
            )
            .map_err(|e| StoreError::Io(format!("cannot start the replay thread: {e}")))?;
        let mut chunk = RawChunk::default();
        let stopped = || StoreError::Io("replay stopped".into());
        let opened = EventLog::open_prefix(store.clone(), len, &mut |seq, payload| {
            // Records up to the snapshot's position are checked (their chain) but not applied:
            // the snapshot holds what they made.
            if seq <= skip_to {
                return Ok(());
            }
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
        let (mut st, marks) = applied?;
        let log = opened?;
        if let Some(info) = info {
            super::checkpoint::vouch_for(&*store, &info, &marks)?;
        }
        let c = st.take_changes()?;
        let format = crate::engine::state::format_change();
        target.commit(0, &[], &[&c, &format, &log.position().projected_change()])?;
        st.committed();
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

    /// The staged replay, committing in chunks, gives the tables of applying each record in
    /// turn, across many chunks, and reports a record that does not decode by its number.
    #[test]
    fn staged_replay_equals_applying_in_turn() {
        let host = RelayHost::parse("relay.test").unwrap();
        let store: Arc<dyn Store> = Arc::new(MemStore::default());
        let (mut log, _, _) = open(store.clone(), &host).unwrap();
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
        let expect_store: Arc<dyn Store> = Arc::new(MemStore::default());
        let mut expect = State::new(host.clone(), expect_store.clone());
        for e in &events {
            expect.apply(e);
        }
        let c = expect.take_changes().unwrap();
        log.append(&records).unwrap();
        expect_store
            .commit(
                0,
                &[],
                &[
                    &c,
                    &crate::engine::state::format_change(),
                    &log.position().projected_change(),
                ],
            )
            .unwrap();
        let (_, got) = rebuild(store.clone(), &host).unwrap();
        assert_eq!(got.events, n as u64);
        assert_eq!(
            Db::dump(&*store).unwrap(),
            Db::dump(&*expect_store).unwrap()
        );
        // Loaded again, nothing is replayed.
        let (_, _, how) = open(store.clone(), &host).unwrap();
        assert_eq!(how, Opened::Loaded);
        // Tables of an earlier format (no format row) are rebuilt once, then loaded.
        let mut c = crate::store::Changes::new();
        c.insert((Table::Meta, crate::engine::state::FORMAT.to_vec()), None);
        store.commit(0, &[], &[&c]).unwrap();
        match open(store.clone(), &host).unwrap().2 {
            Opened::Rebuilt(why) => assert!(why.contains("format"), "{why}"),
            Opened::Loaded => panic!("tables of format 1 were loaded"),
        }
        assert_eq!(open(store.clone(), &host).unwrap().2, Opened::Loaded);
        // A record that is chained correctly but does not decode is named by its number.
        let (mut log, _, _) = open(store.clone(), &host).unwrap();
        log.append(&[b"{\"t\":\"nonsense\"}".to_vec()]).unwrap();
        match open(store, &host) {
            Err(StoreError::Corrupt { seq, .. }) => assert_eq!(seq, n as u64 + 1),
            other => panic!("expected a corrupt record, got {:?}", other.map(|_| ())),
        }
    }
}
