//! Checkpoints: how the log stops growing for ever.
//!
//! Once `retention.checkpoint_records` records were logged since the last checkpoint, a thread
//! of its own ([`snapshot`]) writes every row of the projection tables, from one read of the
//! store, to a snapshot file (`store::snapshot`): the tables as one commit left them, so they
//! are exactly the replay of the `projected` position they hold. The writer then logs a
//! `checkpoint` record ([`Event::Checkpoint`](super::events::Event::Checkpoint)) that commits
//! to that position's chain hash (checked against the log when it is decided) and to the
//! snapshot's hash; only once that record is durable is the file published under its name
//! ([`publish`]), so every published snapshot has its record in the log.
//!
//! Once a second checkpoint is logged, the writer drops the records before the first one's
//! `keep_from` ([`State::keep_from`]), [`DROP_CHUNK`] per batch, and then removes the snapshots
//! older than it. So the log always keeps:
//! - every record after the older of the last two checkpoints' positions, so that a damaged
//!   newest snapshot still leaves one to rebuild from;
//! - every record an inbox item or a queued transfer points at (their envelopes' bytes are
//!   there, not in the tables).
//!
//! A rebuild (`replay`) loads the newest published snapshot that reads whole, then replays the
//! records after its position, checking the snapshot against its checkpoint record. `relay check` checks the
//! kept chain from the log's base, each snapshot against its checkpoint record, and the tables
//! against the replay.

use super::cell::StateCell;
use super::events::CheckpointMark;
use super::health::StoreHealth;
use super::state::Db;
use super::state::{codec, State};
use crate::store::log::PROJECTED;
use crate::store::snapshot::{self, SnapshotInfo, SnapshotWriter};
use crate::store::{EventLog, LogPosition, Store, StoreError, Table};
use std::sync::Arc;

/// Records dropped per commit: bounds the time one drop holds the writer (tens of ms).
pub const DROP_CHUNK: u64 = 50_000;

/// Whether the state is far enough past its last checkpoint for a new one.
pub fn due(st: &State, every: u64) -> bool {
    let last = st.last_checkpoint().map(|c| c.mark.len).unwrap_or(0);
    st.events >= last.saturating_add(every)
}

/// Writes the snapshot of `store`'s tables as last committed into its snapshot folder and
/// returns what the checkpoint record is to say. Reads the tables once, in one read; gives up
/// (and leaves nothing) once `stop` says so.
pub fn snapshot(store: &dyn Store, stop: &dyn Fn() -> bool) -> Result<CheckpointMark, StoreError> {
    let dir = store
        .snapshot_dir()
        .ok_or_else(|| StoreError::Io("this store keeps no snapshots".into()))?;
    snapshot::remove_partials(&dir)?;
    // The `meta` table comes first: its rows wait until the `projected` row gives the position
    // the file's header names.
    let mut meta: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut at: Option<LogPosition> = None;
    let mut w: Option<SnapshotWriter> = None;
    let mut min_ref = u64::MAX;
    let mut seen = 0u64;
    // The writer, once the position is known, with the `meta` rows read before it.
    let start = |at: Option<LogPosition>, meta: &mut Vec<(Vec<u8>, Vec<u8>)>| {
        let p = at.ok_or_else(|| StoreError::Corrupt {
            seq: 0,
            reason: "projection table meta: no projected position".into(),
        })?;
        let mut w = SnapshotWriter::create(&dir, p.len, p.head)?;
        for (k, v) in meta.drain(..) {
            w.row(Table::Meta, &k, &v)?;
        }
        Ok::<_, StoreError>(w)
    };
    store.projections(&mut |t, k, v| {
        seen += 1;
        if seen.is_multiple_of(4096) && stop() {
            return Err(StoreError::Io("the relay is stopping".into()));
        }
        if matches!(t, Table::Inbox | Table::Outbound) {
            if let Some(seq) = codec::item_seq(v) {
                min_ref = min_ref.min(seq);
            }
        }
        if w.is_none() && t == Table::Meta {
            if k == PROJECTED {
                at = Some(LogPosition::decode(v)?);
            }
            meta.push((k.to_vec(), v.to_vec()));
            return Ok(());
        }
        match &mut w {
            Some(w) => w.row(t, k, v),
            None => {
                let mut nw = start(at, &mut meta)?;
                nw.row(t, k, v)?;
                w = Some(nw);
                Ok(())
            }
        }
    })?;
    let w = match w {
        Some(w) => w,
        None => start(at, &mut meta)?,
    };
    let info = w.finish()?;
    Ok(CheckpointMark {
        len: info.len,
        head: info.head,
        rows: info.rows,
        hash: info.hash,
        keep_from: min_ref.min(info.len + 1),
    })
}

/// The writer's part after each batch: when the state's checkpoints allow records to go that
/// the log still holds, drops a chunk of them ([`compact`]) and says in `health` whether more
/// are due (the ticker then asks for a batch) and where the log now starts.
pub fn after_batch(
    log: &mut EventLog,
    state: &StateCell,
    health: &StoreHealth,
) -> Result<(), StoreError> {
    use std::sync::atomic::Ordering;
    let (keep_from, older) = {
        let st = state.read_unsettled();
        (st.keep_from(), st.checkpoints.first().map(|c| c.mark.len))
    };
    if keep_from <= health.log_first.load(Ordering::Relaxed) || !health.writable() {
        return Ok(());
    }
    // Held until the drop is done, so that no reader takes a hold in between.
    let Some(_free) = health.drops_free() else {
        // A check or a backup reads the records; the ticker asks again.
        health.drop_pending.store(true, Ordering::Relaxed);
        return Ok(());
    };
    let more = compact(log, keep_from, older)?;
    let first = log.base()?.first;
    health.log_first.store(first, Ordering::Relaxed);
    health.drop_pending.store(more, Ordering::Relaxed);
    Ok(())
}

/// Drops up to [`DROP_CHUNK`] records before `keep_from`;
/// once none is left to drop, removes the snapshots older than position `older` (the older
/// checkpoint's). Returns whether records are still to drop.
pub fn compact(log: &mut EventLog, keep_from: u64, older: Option<u64>) -> Result<bool, StoreError> {
    let first = log.base()?.first;
    if first >= keep_from {
        return Ok(false);
    }
    // Only behind a snapshot that is there (a damaged one is set aside by a rebuild).
    let dir = log.store().snapshot_dir();
    if let (Some(dir), Some(older)) = (&dir, older) {
        if !snapshot::path(dir, older).exists() {
            return Ok(false);
        }
    }
    let to = keep_from.min(first.saturating_add(DROP_CHUNK));
    log.drop_before(to)?;
    if to < keep_from {
        return Ok(true);
    }
    tracing::info!(
        first = to,
        "log records behind the older checkpoint dropped"
    );
    if let (Some(dir), Some(older)) = (dir, older) {
        // A snapshot that cannot be removed is only space: the store is sound.
        let old = snapshot::list(&dir).map(|l| l.into_iter().filter(|(n, _)| *n < older));
        match old {
            Ok(old) => {
                for (_, p) in old {
                    if let Err(e) = snapshot::remove(&p) {
                        tracing::warn!(file = %p.display(), error = %e, "an old snapshot could not be removed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "the snapshot folder could not be listed"),
        }
    }
    Ok(false)
}

/// At start: publishes a snapshot whose checkpoint record became durable just before a stop
/// (it reads whole and is the one the record names), and removes what no record names: an
/// unfinished or unlogged snapshot, a published one of a checkpoint no longer kept.
pub fn tidy(store: &dyn Store, st: &State) -> Result<(), StoreError> {
    let Some(dir) = store.snapshot_dir() else {
        return Ok(());
    };
    let named = |len: u64| st.checkpoints.iter().find(|c| c.mark.len == len);
    for len in snapshot::list_partial(&dir)? {
        let p = snapshot::partial_path(&dir, len);
        let ok = named(len).is_some_and(|c| {
            snapshot::check(&p).is_ok_and(|i| (i.hash, i.rows) == (c.mark.hash, c.mark.rows))
        });
        if ok {
            tracing::info!(file = %p.display(), "publishing the snapshot of a logged checkpoint");
            snapshot::publish(&dir, len)?;
        } else {
            snapshot::remove(&p)?;
        }
    }
    snapshot::remove_partials(&dir)?;
    for (len, p) in snapshot::list(&dir)? {
        if named(len).is_none() {
            tracing::info!(file = %p.display(), "removing a snapshot no checkpoint record names");
            snapshot::remove(&p)?;
        }
    }
    Ok(())
}

/// Publishes the snapshot of position `len` of `store` once its checkpoint record is durable.
pub fn publish(store: &dyn Store, len: u64) -> Result<(), StoreError> {
    match store.snapshot_dir() {
        Some(dir) => snapshot::publish(&dir, len),
        None => Ok(()),
    }
}

/// Makes a checkpoint on a thread of its own when one is due and none is being made: the
/// snapshot, then the record, through the writer. Called by the ticker.
pub fn start_if_due(engine: &std::sync::Arc<super::Engine>) {
    use std::sync::atomic::Ordering;
    let every = engine.policy.retention.checkpoint_records;
    if engine.store().snapshot_dir().is_none() || !due(&engine.read(), every) {
        return;
    }
    if engine.checkpointing.swap(true, Ordering::SeqCst) {
        return;
    }
    let e = engine.clone();
    tokio::spawn(async move {
        let store = e.store().clone();
        let stopping = e.stopping.subscribe();
        let t0 = std::time::Instant::now();
        let made =
            tokio::task::spawn_blocking(move || snapshot(&*store, &|| *stopping.borrow())).await;
        let r = match made {
            Ok(Ok(mark)) => {
                let logged = e
                    .writer
                    .submit(super::decide::Command::Checkpoint(mark))
                    .await;
                match logged {
                    // Its record is durable: the snapshot is published.
                    Ok(_) => publish(&**e.store(), mark.len)
                        .map(|()| mark)
                        .map_err(|x| x.to_string()),
                    Err(x) => {
                        // No record names it: it goes (a start would remove it too).
                        if let Some(dir) = e.store().snapshot_dir() {
                            let _ = snapshot::remove(&snapshot::partial_path(&dir, mark.len));
                        }
                        Err(x.message)
                    }
                }
            }
            Ok(Err(x)) => Err(x.to_string()),
            Err(x) => Err(x.to_string()),
        };
        match r {
            Ok(mark) => {
                e.store_health.checkpoints.fetch_add(1, Ordering::Relaxed);
                e.store_health
                    .checkpoint_len
                    .store(mark.len, Ordering::Relaxed);
                tracing::info!(
                    position = mark.len,
                    rows = mark.rows,
                    keep_from = mark.keep_from,
                    seconds = t0.elapsed().as_secs_f64(),
                    "checkpoint made"
                );
            }
            Err(why) => {
                if !*e.stopping.borrow() {
                    tracing::warn!(error = %why, "a checkpoint could not be made; trying again after retention.sweep_ms");
                    let wait = std::time::Duration::from_millis(e.policy.retention.sweep_ms);
                    let mut stop = e.stopping.subscribe();
                    let _ = tokio::time::timeout(wait, stop.wait_for(|s| *s)).await;
                }
            }
        }
        e.checkpointing.store(false, Ordering::SeqCst);
    });
}

/// Checks that the checkpoint record of snapshot `info` is in the replayed records (`marks`)
/// and says what the snapshot holds, and that its chain hash is the log's at that position.
pub(crate) fn vouch_for(
    store: &dyn Store,
    info: &SnapshotInfo,
    marks: &[CheckpointMark],
) -> Result<(), StoreError> {
    let bad = |why: String| StoreError::Corrupt {
        seq: info.len,
        reason: format!("checkpoint snapshot of record {}: {why}", info.len),
    };
    let Some(m) = marks.iter().find(|m| m.len == info.len) else {
        return Err(bad("no checkpoint record in the log names it".into()));
    };
    if (m.head, m.hash, m.rows) != (info.head, info.hash, info.rows) {
        return Err(bad(
            "it is not the snapshot its checkpoint record names".into()
        ));
    }
    if EventLog::chain_hash_at(store, info.len)? != Some(info.head) {
        return Err(bad("its chain hash is not the log's at that record".into()));
    }
    Ok(())
}

/// A snapshot file that does not read whole, and why.
pub type Damaged = (std::path::PathBuf, StoreError);

/// The snapshots of `store` a replay could start from (position at least `at_least`, at most
/// `end`), newest first, each checked whole, with the damaged ones apart.
pub fn snapshots(
    store: &dyn Store,
    at_least: u64,
    end: u64,
) -> Result<(Vec<SnapshotInfo>, Vec<Damaged>), StoreError> {
    let mut good = Vec::new();
    let mut damaged = Vec::new();
    if let Some(dir) = store.snapshot_dir() {
        for (n, p) in snapshot::list(&dir)?.into_iter().rev() {
            if n < at_least || n > end {
                continue;
            }
            match snapshot::check(&p) {
                Ok(info) if info.len == n => good.push(info),
                Ok(_) => damaged.push((
                    p.clone(),
                    StoreError::Corrupt {
                        seq: 0,
                        reason: format!(
                            "checkpoint snapshot {}: its header names another record",
                            p.display()
                        ),
                    },
                )),
                Err(e @ StoreError::Corrupt { .. }) => damaged.push((p, e)),
                Err(e) => return Err(e),
            }
        }
    }
    Ok((good, damaged))
}

/// Loads the newest sound snapshot at or after record `at_least` (the record before the kept
/// log) into `target`'s tables, in chunks, and returns it with the state it holds. Damaged
/// snapshots passed over are logged.
pub(crate) fn from_snapshot(
    store: &Arc<dyn Store>,
    host: &formica_protocol::RelayHost,
    target: &Arc<dyn Store>,
    at_least: u64,
    end: u64,
) -> Result<(SnapshotInfo, State), StoreError> {
    let (good, damaged) = snapshots(&**store, at_least, end)?;
    for (p, e) in &damaged {
        tracing::error!(file = %p.display(), error = %e, "a checkpoint snapshot is damaged; an older one is used");
    }
    let Some(info) = good.first().copied() else {
        return Err(StoreError::Corrupt {
            seq: at_least + 1,
            reason: format!(
                "the log starts at record {} and no sound checkpoint snapshot covers the records before it{}",
                at_least + 1,
                damaged
                    .first()
                    .map(|(_, e)| format!(" ({e})"))
                    .unwrap_or_default()
            ),
        });
    };
    let dir = store
        .snapshot_dir()
        .ok_or_else(|| StoreError::Io("this store keeps no snapshots".into()))?;
    let mut c = crate::store::Changes::new();
    snapshot::read(&snapshot::path(&dir, info.len), &mut |t, k, v| {
        // The position last, by the replay: an interrupted load leaves none.
        if t == Table::Meta && k == crate::store::log::PROJECTED {
            return Ok(());
        }
        c.insert((t, k.to_vec()), Some(v.to_vec()));
        if c.len() >= super::replay::REBUILD_FLUSH_ROWS {
            target.commit(0, &[], &[&std::mem::take(&mut c)])?;
        }
        Ok(())
    })?;
    target.commit(0, &[], &[&c])?;
    let mut st = State::load(host.clone(), target.clone())?;
    st.db = Db::with_log(target.clone(), store.clone());
    if st.events != info.len {
        return Err(StoreError::Corrupt {
            seq: 0,
            reason: format!(
                "checkpoint snapshot of record {}: its counters say {} records",
                info.len, st.events
            ),
        });
    }
    Ok((info, st))
}
