//! Storage faults with the real store (redb on a file) and a fault injector in front of its
//! file: a write that fails as on a full disk, free space below the reserve. The relay must
//! answer 507, keep nothing of the failed write, keep serving reads, report not-ready, and take
//! writes again by itself once the store can be written (no restart).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use formica_relay::store::{EventLog, RedbStore, Store, StoreFaults};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "formica-storage-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn metric(text: &str, name: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Waits (bounded) for the writer's once-a-second reopen: a write is retried until accepted.
async fn until_accepted(r: &TestRelay, a: &Agent, b: &Agent, text: &str) -> Resp {
    for _ in 0..50 {
        let resp = a.send(r, &a.text(r, &b.handle, text)).await;
        if resp.status == 201 {
            return resp;
        }
        assert_eq!(resp.status, 507, "{}", String::from_utf8_lossy(&resp.raw));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the store was not reopened within 5 s after space came back");
}

/// Regression: a full disk killed the relay (exit 70 after the failed append, since the store
/// refused all I/O and the state could not be rebuilt), and a relay started on a full disk
/// answered 500 to every write until restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_meets_a_full_disk_is_507_keeps_nothing_and_writes_resume_when_space_returns()
{
    let dir = tempdir("full");
    let faults = Arc::new(StoreFaults::default());
    let store =
        Arc::new(RedbStore::open_faulty(&dir.join("log.redb"), false, faults.clone()).unwrap());
    let r = TestRelay::on_store(config(4), store.clone() as Arc<dyn Store>);
    let (a, b) = r.pair().await;
    let kept = a.text(&r, &b.handle, "before the disk filled");
    a.send(&r, &kept).await.expect(201, "");
    r.get("/ready").await.expect(200, "");

    // The disk is full: the write that meets it gets 507 and nothing of it is kept.
    faults.full.store(true, Ordering::SeqCst);
    let lost = a.text(&r, &b.handle, "while the disk is full");
    a.send(&r, &lost).await.expect(507, "storage_full");
    // The relay stays up and serves reads, from what is durable only.
    let items = b.inbox(&r, 0).await;
    let ids: Vec<String> = items
        .iter()
        .map(|i| {
            i.as_object()
                .unwrap()
                .get("envelope")
                .unwrap()
                .as_object()
                .unwrap()
                .get("id")
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(ids.contains(&kept.id().to_hex()));
    assert!(
        !ids.contains(&lost.id().to_hex()),
        "the failed write is visible"
    );
    a.status(&r, &lost.id()).await.expect(404, "not_found");
    r.get(&format!("/v1/keys/{}", a.handle))
        .await
        .expect(200, "");
    // Not ready, and the metrics say why.
    r.get("/ready").await.expect(503, "unavailable");
    let m = String::from_utf8_lossy(&r.get("/metrics").await.raw).into_owned();
    assert_eq!(metric(&m, "formica_store_writable"), 0);
    assert_eq!(metric(&m, "formica_store_write_failures_total"), 1);
    // Still full: writes are refused at once, nothing decided.
    a.send(&r, &a.text(&r, &b.handle, "still full"))
        .await
        .expect(507, "storage_full");

    // Space comes back: within the retry period the store is reopened by itself.
    faults.full.store(false, Ordering::SeqCst);
    until_accepted(&r, &a, &b, "after space came back").await;
    r.get("/ready").await.expect(200, "");
    let m = String::from_utf8_lossy(&r.get("/metrics").await.raw).into_owned();
    assert_eq!(metric(&m, "formica_store_writable"), 1);
    assert!(metric(&m, "formica_store_reopens_total") >= 1);
    // The envelope refused while full can now be sent again: it was never stored.
    a.send(&r, &lost).await.expect(201, "");

    // And what the store holds on disk is exactly what was acknowledged: the log replays to
    // the state the relay serves.
    let live_events = r.state(|st| st.events).await;
    // The router holds the relay too; both go before the writer can end.
    let TestRelay { relay, router, .. } = r;
    drop((router, store));
    assert!(relay.stop(Duration::from_secs(5)), "the writer did not end");
    let view = RedbStore::open_read_only(&dir.join("log.redb")).unwrap();
    let len = EventLog::open(Arc::new(view), &mut |_, _| Ok(()))
        .unwrap()
        .len();
    assert_eq!(len, live_events);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A commit whose bytes reached the file but whose sync failed (delayed allocation reports a
/// full disk at fsync): 507, the state goes back to what is durable although the file holds the
/// failed batch, and when the store is reopened (here: when the relay stops) those records are
/// removed, so that the log on disk is exactly what was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_reached_the_file_but_failed_to_sync_is_removed_when_the_store_reopens() {
    let dir = tempdir("sync");
    let path = dir.join("log.redb");
    let faults = Arc::new(StoreFaults::default());
    let store = Arc::new(RedbStore::open_faulty(&path, false, faults.clone()).unwrap());
    let r = TestRelay::on_store(config(4), store.clone() as Arc<dyn Store>);
    let (a, b) = r.pair().await;
    let kept = a.text(&r, &b.handle, "kept");
    a.send(&r, &kept).await.expect(201, "");
    let durable = r.state(|st| st.events).await;

    faults.sync_full.store(true, Ordering::SeqCst);
    let lost = a.text(&r, &b.handle, "written, never synced");
    a.send(&r, &lost).await.expect(507, "storage_full");
    assert_eq!(
        r.state(|st| st.events).await,
        durable,
        "the state kept the failed batch"
    );
    a.status(&r, &lost.id()).await.expect(404, "not_found");
    // The file does hold the failed commit (this is the case under test).
    let on_file = RedbStore::open_read_only(&path).unwrap().len().unwrap();
    assert!(
        on_file > durable,
        "the failed commit did not reach the file ({on_file} records, {durable} durable)"
    );

    // Space is back; the relay is stopped before any write could make it reopen the store.
    // Stopping reopens it once more, and the failed records go (a later write at the same
    // numbers would only overwrite as many as it writes).
    faults.sync_full.store(false, Ordering::SeqCst);
    let live_events = r.state(|st| st.events).await;
    assert_eq!(live_events, durable);
    let TestRelay { relay, router, .. } = r;
    drop((router, store));
    assert!(relay.stop(Duration::from_secs(5)), "the writer did not end");
    // The log on disk chains from record 1 to exactly what the relay served, without the
    // failed envelope.
    let mut texts = Vec::new();
    let view = RedbStore::open_read_only(&path).unwrap();
    let len = EventLog::open(Arc::new(view), &mut |_, payload| {
        texts.push(String::from_utf8_lossy(payload).into_owned());
        Ok(())
    })
    .unwrap()
    .len();
    assert_eq!(len, live_events);
    let has = |needle: &str| texts.iter().any(|t| t.contains(needle));
    assert!(has("kept"), "the log's payloads do not hold message texts");
    assert!(
        !has("written, never synced"),
        "a failed envelope is in the log"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Below `limits.store_free_bytes_min` every write is refused with 507 before anything is
/// decided, so that a commit does not meet a full disk halfway; reads go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_reserve_writes_are_refused_early_and_resume_above_it() {
    let dir = tempdir("reserve");
    let faults = Arc::new(StoreFaults::default());
    let store =
        Arc::new(RedbStore::open_faulty(&dir.join("log.redb"), false, faults.clone()).unwrap());
    let mut cfg = config(4);
    cfg.policy.limits.store_free_bytes_min = 1 << 20;
    let r = TestRelay::on_store(cfg, store.clone() as Arc<dyn Store>);
    let (a, b) = r.pair().await;
    let events = r.state(|st| st.events).await;
    faults.free_bytes.store(1000, Ordering::SeqCst);
    let refused = a.text(&r, &b.handle, "low on space");
    a.send(&r, &refused).await.expect(507, "storage_full");
    assert_eq!(
        r.state(|st| st.events).await,
        events,
        "something was applied"
    );
    assert!(b.inbox(&r, 0).await.is_empty());
    let m = String::from_utf8_lossy(&r.get("/metrics").await.raw).into_owned();
    assert!(metric(&m, "formica_store_low_space_refusals_total") >= 1);
    assert_eq!(metric(&m, "formica_store_free_bytes"), 1000);
    // Writes are refused, so the relay is not ready (a load balancer sends writes elsewhere);
    // it goes on serving reads.
    r.get("/ready").await.expect(503, "unavailable");
    b.inbox(&r, 0).await;
    faults.free_bytes.store(2 << 20, Ordering::SeqCst);
    a.send(&r, &refused).await.expect(201, "");
    r.get("/ready").await.expect(200, "");
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Dropping records behind a checkpoint, on the file store: the kept log reopens and checks
/// from its base (the chain hash of the last dropped record), its last record's number stays
/// the length, a damaged base or kept record is named, and a backup copies the kept records
/// with the base.
#[test]
fn a_log_whose_first_records_were_dropped_reopens_checks_and_backs_up_from_its_base() {
    let dir = tempdir("dropped");
    let path = dir.join("log.redb");
    let head_at_6;
    {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
        let mut log = EventLog::open(store.clone(), &mut |_, _| Ok(())).unwrap();
        for i in 0..10u8 {
            log.append(&[vec![b'r', i]]).unwrap();
        }
        head_at_6 = EventLog::chain_hash_at(&*store, 6).unwrap().unwrap();
        // Not past the last record, which stays.
        assert!(log.drop_before(11).is_err());
        log.drop_before(7).unwrap();
        assert_eq!(store.base().unwrap().first, 7);
        assert_eq!(store.base().unwrap().prev, head_at_6);
        assert_eq!(store.len().unwrap(), 10);
        // Dropping less than what is already dropped changes nothing.
        log.drop_before(3).unwrap();
        assert_eq!(store.base().unwrap().first, 7);
        log.append(&[b"after".to_vec()]).unwrap();
    }
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
    let mut seen = Vec::new();
    let log = EventLog::open(store.clone(), &mut |seq, _| {
        seen.push(seq);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, vec![7, 8, 9, 10, 11]);
    assert_eq!(log.len(), 11);
    let head = EventLog::open_head(store.clone()).unwrap();
    assert_eq!(head.position(), log.position());
    EventLog::verify_chain(&*store, 11, 2).unwrap();
    let copy_dir = dir.join("copy");
    std::fs::write(dir.join(formica_relay::KEY_FILE), [0u8; 32]).unwrap();
    std::fs::write(dir.join(formica_relay::HOST_FILE), "relay.test\n").unwrap();
    let report =
        formica_relay::store::datadir::copy_data_dir(&*store, 11, &dir, &copy_dir, None).unwrap();
    assert_eq!(report.records, 11);
    drop((log, head, store));
    let copy: Arc<dyn Store> =
        Arc::new(RedbStore::open_read_only(&copy_dir.join("log.redb")).unwrap());
    assert_eq!(copy.base().unwrap().first, 7);
    assert_eq!(EventLog::open(copy, &mut |_, _| Ok(())).unwrap().len(), 11);
    // A kept record changed (here: one whose base says another chain) is named.
    {
        let store = RedbStore::open(&path).unwrap();
        store
            .drop_before(formica_relay::store::LogBase {
                first: 7,
                prev: [1; 32],
            })
            .unwrap();
    }
    let store: Arc<dyn Store> = Arc::new(RedbStore::open_read_only(&path).unwrap());
    match EventLog::open(store, &mut |_, _| Ok(())) {
        Err(formica_relay::store::StoreError::Corrupt { seq, .. }) => assert_eq!(seq, 7),
        other => panic!("a wrong base went unnoticed: {:?}", other.map(|l| l.len())),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A store written by a release on redb 2 (file format v2, which redb 3 and later cannot read):
/// `relay check` (read-only) reads it through an upgrade in its overlay and leaves the file as
/// it was; opening it for writing upgrades it in place, once, keeping every record and row.
#[test]
fn a_store_in_redb_file_format_v2_is_upgraded_in_the_overlay_to_check_and_in_place_to_serve() {
    let dir = tempdir("format-v2");
    let v3 = dir.join("v3.redb");
    let path = dir.join("log.redb");
    let records: Vec<(u64, Vec<u8>)> = {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&v3).unwrap());
        let mut log = EventLog::open(store.clone(), &mut |_, _| Ok(())).unwrap();
        for i in 0..5u8 {
            log.append(&[vec![b'r', i]]).unwrap();
        }
        let mut out = Vec::new();
        store
            .scan(1, 5, &mut |seq, r| {
                out.push((seq, r.to_vec()));
                Ok(())
            })
            .unwrap();
        out
    };
    // The same records and one meta row, written by redb 2.6 in its default format (v2), in the
    // tables the store keeps them in.
    {
        let db = redb2::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn
                .open_table(redb2::TableDefinition::<u64, &[u8]>::new("log"))
                .unwrap();
            for (seq, r) in &records {
                t.insert(*seq, r.as_slice()).unwrap();
            }
            let mut p = txn
                .open_table(redb2::TableDefinition::<&[u8], &[u8]>::new("projections"))
                .unwrap();
            let key = [&[formica_relay::store::Table::Meta.code()][..], b"x"].concat();
            p.insert(key.as_slice(), b"kept".as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    assert!(
        matches!(
            redb::Database::open(&path),
            Err(redb::DatabaseError::UpgradeRequired(2))
        ),
        "the fixture is not of format v2"
    );
    let before = std::fs::read(&path).unwrap();
    let same = |store: Arc<dyn Store>| {
        let mut got = Vec::new();
        store
            .scan(1, 5, &mut |seq, r| {
                got.push((seq, r.to_vec()));
                Ok(())
            })
            .unwrap();
        assert_eq!(got, records);
        assert_eq!(
            EventLog::open(store.clone(), &mut |_, _| Ok(()))
                .unwrap()
                .len(),
            5
        );
        assert_eq!(
            store
                .get(formica_relay::store::Table::Meta, b"x")
                .unwrap()
                .as_deref(),
            Some(&b"kept"[..])
        );
    };
    same(Arc::new(RedbStore::open_read_only(&path).unwrap()));
    assert!(
        std::fs::read(&path).unwrap() == before,
        "a read-only open changed the file"
    );
    same(Arc::new(RedbStore::open(&path).unwrap()));
    // Upgraded on disk: redb opens it as it is now, and it still holds everything.
    drop(redb::Database::open(&path).unwrap());
    same(Arc::new(RedbStore::open_read_only(&path).unwrap()));
    std::fs::remove_dir_all(&dir).unwrap();
}
