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
    // The store itself is fine: still writable, so still ready.
    r.get("/ready").await.expect(200, "");
    faults.free_bytes.store(2 << 20, Ordering::SeqCst);
    a.send(&r, &refused).await.expect(201, "");
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}
