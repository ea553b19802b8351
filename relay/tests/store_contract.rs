//! The `Store` contract (relay/src/store/mod.rs), one suite over `Arc<dyn Store>` run against
//! every store: `MemStore` and `RedbStore` here, `PgStore` in the `pg_` tests, which need a
//! PostgreSQL server (`FORMICA_TEST_PG_URL`; `.ci/run` starts one with `.ci/pg.sh` and runs them
//! with `--ignored`). Each `pg_` test makes a database of its own, so they run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pgdb;

use formica_relay::store::{
    Changes, LogBase, MemStore, PgConfig, PgStore, RedbStore, Store, StoreError, Table,
};
use pgdb::TestDb;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NEEDS_PG: &str = "needs PostgreSQL: .ci/run starts one and runs them with --ignored";

fn rec(i: u64) -> Vec<u8> {
    let mut v = vec![0xabu8; 32];
    v.extend_from_slice(format!("record {i}").as_bytes());
    v
}

/// A row to put (`Some`) or remove (`None`).
type Change<'a> = (Table, &'a [u8], Option<&'a [u8]>);

fn changes(rows: &[Change<'_>]) -> Changes {
    rows.iter()
        .map(|(t, k, v)| ((*t, k.to_vec()), v.map(<[u8]>::to_vec)))
        .collect()
}

fn scan_all(s: &dyn Store, from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    s.scan(from, to, &mut |n, v| {
        out.push((n, v.to_vec()));
        Ok(())
    })
    .unwrap();
    out
}

fn range_all(s: &dyn Store, t: Table, from: &[u8], to: Option<&[u8]>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    s.range(t, from, to, &mut |k, _| {
        out.push(k.to_vec());
        true
    })
    .unwrap();
    out
}

fn append(s: &dyn Store, from: u64, n: u64) {
    let recs: Vec<Vec<u8>> = (from..from + n).map(rec).collect();
    s.append(from, &recs).unwrap();
}

/// Where stores differ within the contract.
#[derive(Debug, Clone, Copy)]
struct Traits {
    /// The store refuses records that do not follow the last one (`RedbStore` writes them where
    /// it is told: the engine never asks for a gap).
    checks_seq: bool,
    /// The read-only view refuses writes (`MemStore`'s is a copy, which takes them and leaves
    /// the store as it was).
    view_refuses: bool,
}

/// Every case on a fresh store from `fresh`.
fn suite(fresh: &mut dyn FnMut() -> Arc<dyn Store>, traits: Traits) {
    commit_is_all_or_nothing(&*fresh(), traits.checks_seq);
    rows_in_key_order(&*fresh());
    scans(&*fresh());
    base_drop_and_truncate(&*fresh());
    clear_and_projections(&*fresh());
    read_only_view(&*fresh(), traits.view_refuses);
}

fn commit_is_all_or_nothing(s: &dyn Store, checks_seq: bool) {
    assert_eq!(s.len().unwrap(), 0);
    assert!(s.is_empty().unwrap());
    // Later sets win over earlier ones, in order.
    let c1 = changes(&[
        (Table::Agents, b"a", Some(b"1")),
        (Table::Agents, b"b", Some(b"2")),
        (Table::Admission, b"n1", Some(b"x")),
    ]);
    let c2 = changes(&[
        (Table::Agents, b"a", Some(b"3")),
        (Table::Agents, b"b", None),
        (Table::Inbox, b"a", Some(b"i")),
    ]);
    s.commit(1, &[rec(1), rec(2)], &[&c1, &c2]).unwrap();
    assert_eq!(s.len().unwrap(), 2);
    assert_eq!(scan_all(s, 1, u64::MAX), vec![(1, rec(1)), (2, rec(2))]);
    assert_eq!(s.get(Table::Agents, b"a").unwrap(), Some(b"3".to_vec()));
    assert_eq!(s.get(Table::Agents, b"b").unwrap(), None);
    assert_eq!(s.get(Table::Inbox, b"a").unwrap(), Some(b"i".to_vec()));
    assert_eq!(s.get(Table::Admission, b"n1").unwrap(), Some(b"x".to_vec()));
    // The same key in two tables is two rows.
    assert_eq!(s.get(Table::Small, b"a").unwrap(), None);
    // Projections only (a rebuild's commit).
    s.commit(3, &[], &[&changes(&[(Table::Small, b"s", Some(b"v"))])])
        .unwrap();
    assert_eq!(s.len().unwrap(), 2);
    assert_eq!(s.get(Table::Small, b"s").unwrap(), Some(b"v".to_vec()));
    if checks_seq {
        let c = changes(&[(Table::Agents, b"z", Some(b"z"))]);
        // A gap, and a record number taken twice: refused, and nothing of the commit is kept.
        for first in [4, 2, 1] {
            let e = s.commit(first, &[rec(first)], &[&c]).unwrap_err();
            assert!(
                matches!(e, StoreError::Io(_) | StoreError::Corrupt { .. }),
                "{e:?}"
            );
            assert_eq!(s.len().unwrap(), 2);
            assert_eq!(s.get(Table::Agents, b"z").unwrap(), None);
            assert_eq!(scan_all(s, 1, u64::MAX).len(), 2);
        }
    }
    s.commit(3, &[rec(3)], &[]).unwrap();
    assert_eq!(s.len().unwrap(), 3);
}

fn rows_in_key_order(s: &dyn Store) {
    let keys: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 0],
        b"a".to_vec(),
        b"a\0".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        vec![0x7f],
        vec![0x80],
        vec![0xff],
        vec![0xff, 0xff],
    ];
    let mut c = Changes::new();
    for k in &keys {
        for t in [
            Table::Inbox,
            Table::InboxByTime,
            Table::Messages,
            Table::Admission,
        ] {
            c.insert((t, k.clone()), Some([b"v:".as_slice(), k].concat()));
        }
    }
    s.commit(1, &[rec(1)], &[&c]).unwrap();
    let mut sorted = keys.clone();
    sorted.sort();
    for t in [Table::InboxByTime, Table::Admission] {
        // Whole table: its own rows only, bytewise order.
        assert_eq!(range_all(s, t, &[], None), sorted, "{t:?}");
        // [from, to)
        assert_eq!(
            range_all(s, t, b"a", Some(b"b")),
            vec![b"a".to_vec(), b"a\0".to_vec(), b"ab".to_vec()]
        );
        assert_eq!(
            range_all(s, t, &[0x7f], None),
            vec![vec![0x7f], vec![0x80], vec![0xff], vec![0xff, 0xff]]
        );
        assert!(range_all(s, t, b"b", Some(b"b")).is_empty());
        // Early stop.
        let mut seen = Vec::new();
        s.range(t, &[], None, &mut |k, v| {
            assert_eq!(v, [b"v:".as_slice(), k].concat());
            seen.push(k.to_vec());
            seen.len() < 3
        })
        .unwrap();
        assert_eq!(seen, sorted[..3].to_vec());
    }
    assert!(range_all(s, Table::Deadlines, &[], None).is_empty());
    // More rows than a page of any store.
    let mut c = Changes::new();
    for i in 0u32..2500 {
        c.insert((Table::Seen, i.to_be_bytes().to_vec()), Some(vec![1]));
    }
    s.commit(2, &[], &[&c]).unwrap();
    let all = range_all(s, Table::Seen, &[], None);
    assert_eq!(all.len(), 2500);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    let mut n = 0;
    s.range(Table::Seen, &1000u32.to_be_bytes(), None, &mut |_, _| {
        n += 1;
        n < 1200
    })
    .unwrap();
    assert_eq!(n, 1200);
}

fn scans(s: &dyn Store) {
    append(s, 1, 600);
    assert_eq!(scan_all(s, 1, u64::MAX).len(), 600);
    let w = scan_all(s, 250, 520);
    assert_eq!(w.first().unwrap().0, 250);
    assert_eq!(w.last().unwrap().0, 520);
    assert_eq!(w.len(), 271);
    assert_eq!(w[10], (260, rec(260)));
    assert!(scan_all(s, 601, u64::MAX).is_empty());
    assert!(scan_all(s, 5, 4).is_empty());
    assert_eq!(scan_all(s, 600, 600), vec![(600, rec(600))]);
    // An error from the visitor stops the scan and comes back.
    let mut n = 0;
    let e = s
        .scan(1, u64::MAX, &mut |_, _| {
            n += 1;
            if n == 300 {
                Err(StoreError::Io("stop".into()))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert_eq!(e, StoreError::Io("stop".into()));
    assert_eq!(n, 300);
}

fn base_drop_and_truncate(s: &dyn Store) {
    assert_eq!(s.base().unwrap(), LogBase::default());
    append(s, 1, 10);
    let base = LogBase {
        first: 5,
        prev: [7; 32],
    };
    s.drop_before(base).unwrap();
    assert_eq!(s.base().unwrap(), base);
    assert_eq!(s.len().unwrap(), 10);
    let kept = scan_all(s, 1, u64::MAX);
    assert_eq!(kept.first().unwrap().0, 5);
    assert_eq!(kept.len(), 6);
    // Past the end + 1: refused, nothing changed.
    assert!(s
        .drop_before(LogBase {
            first: 12,
            prev: [1; 32]
        })
        .is_err());
    // (RedbStore closes after a failed write until it is reopened.)
    s.reopen().unwrap();
    assert_eq!(s.base().unwrap(), base);
    s.truncate(7).unwrap();
    assert_eq!(s.len().unwrap(), 7);
    assert_eq!(scan_all(s, 1, u64::MAX).last().unwrap().0, 7);
    // Every record dropped: the log ends just before its base.
    let all = LogBase {
        first: 8,
        prev: [9; 32],
    };
    s.drop_before(all).unwrap();
    assert_eq!(s.len().unwrap(), 7);
    assert!(scan_all(s, 1, u64::MAX).is_empty());
    append(s, 8, 2);
    assert_eq!(s.len().unwrap(), 9);
    assert_eq!(scan_all(s, 1, u64::MAX), vec![(8, rec(8)), (9, rec(9))]);
    assert_eq!(s.base().unwrap(), all);
}

fn clear_and_projections(s: &dyn Store) {
    let c = changes(&[
        (Table::UsedChallenges, b"u", Some(b"1")),
        (Table::Meta, b"m2", Some(b"2")),
        (Table::Meta, b"m1", Some(b"1")),
        (Table::Agents, b"x", Some(b"3")),
        (Table::Admission, b"n", Some(b"4")),
        (Table::Inbox, b"", Some(b"5")),
    ]);
    s.commit(1, &[rec(1)], &[&c]).unwrap();
    let mut rows = Vec::new();
    s.projections(&mut |t, k, v| {
        rows.push((t, k.to_vec(), v.to_vec()));
        Ok(())
    })
    .unwrap();
    let want: Vec<(Table, Vec<u8>, Vec<u8>)> = vec![
        (Table::Meta, b"m1".to_vec(), b"1".to_vec()),
        (Table::Meta, b"m2".to_vec(), b"2".to_vec()),
        (Table::Agents, b"x".to_vec(), b"3".to_vec()),
        (Table::Inbox, b"".to_vec(), b"5".to_vec()),
        (Table::UsedChallenges, b"u".to_vec(), b"1".to_vec()),
    ];
    assert_eq!(rows, want);
    // An error from the visitor comes back.
    let e = s
        .projections(&mut |_, _, _| Err(StoreError::Io("stop".into())))
        .unwrap_err();
    assert_eq!(e, StoreError::Io("stop".into()));
    // Many rows, in order, across pages.
    let mut c = Changes::new();
    for i in 0u32..2100 {
        c.insert((Table::Seen, i.to_be_bytes().to_vec()), Some(vec![1]));
    }
    s.commit(2, &[], &[&c]).unwrap();
    let mut n = 0;
    let mut last: Option<(Table, Vec<u8>)> = None;
    s.projections(&mut |t, k, _| {
        let here = (t, k.to_vec());
        assert!(last.as_ref().is_none_or(|l| *l < here));
        last = Some(here);
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 2105);
    // Clearing keeps the records and the admission rows.
    s.clear_projections().unwrap();
    assert_eq!(s.get(Table::Meta, b"m1").unwrap(), None);
    assert_eq!(s.get(Table::Admission, b"n").unwrap(), Some(b"4".to_vec()));
    assert_eq!(s.len().unwrap(), 1);
    let mut n = 0;
    s.projections(&mut |_, _, _| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 0);
}

fn read_only_view(s: &dyn Store, refuses: bool) {
    s.commit(
        1,
        &[rec(1), rec(2)],
        &[&changes(&[(Table::Agents, b"a", Some(b"1"))])],
    )
    .unwrap();
    // The writer asks for the view after a failed write (RedbStore is then closed, and its view
    // opens the file only to read it).
    assert!(s
        .drop_before(LogBase {
            first: 100,
            prev: [0; 32]
        })
        .is_err());
    let v = s.read_only().unwrap();
    assert_eq!(v.len().unwrap(), 2);
    assert_eq!(v.get(Table::Agents, b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(scan_all(&*v, 1, u64::MAX).len(), 2);
    if refuses {
        assert!(v.append(3, &[rec(3)]).is_err());
        assert!(v.truncate(1).is_err());
        assert!(v.clear_projections().is_err());
        assert!(v
            .drop_before(LogBase {
                first: 2,
                prev: [0; 32]
            })
            .is_err());
        assert_eq!(v.len().unwrap(), 2);
    }
    drop(v);
    // The store itself still writes, once reopened.
    s.reopen().unwrap();
    append(s, 3, 1);
    assert_eq!(s.len().unwrap(), 3);
    assert_eq!(s.get(Table::Agents, b"a").unwrap(), Some(b"1".to_vec()));
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "formica-contract-{name}-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn memstore_keeps_the_contract() {
    suite(
        &mut || Arc::new(MemStore::default()),
        Traits {
            checks_seq: true,
            view_refuses: false,
        },
    );
}

#[test]
fn redbstore_keeps_the_contract() {
    let mut dirs = Vec::new();
    suite(
        &mut || {
            let d = tempdir("redb");
            let s = Arc::new(RedbStore::open(&d.join("log.redb")).unwrap());
            dirs.push(d);
            s
        },
        Traits {
            checks_seq: false,
            view_refuses: true,
        },
    );
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn an_unreachable_database_is_unavailable() {
    // Nothing listens on port 1 of the loopback: refused at once.
    let e = PgStore::open(&PgConfig::new("postgres://formica@127.0.0.1:1/none")).unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    let e = PgStore::open(&PgConfig::new("not a url ://")).unwrap_err();
    assert!(e.to_string().contains("store.url"), "{e}");
}

fn pg_open(db: &TestDb) -> PgStore {
    PgStore::open(&db.config()).unwrap()
}

#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one and runs them with --ignored"]
fn pg_store_keeps_the_contract() {
    let _ = NEEDS_PG;
    let t0 = Instant::now();
    let mut dbs = Vec::new();
    suite(
        &mut || {
            let db = TestDb::new();
            let s: Arc<dyn Store> = Arc::new(pg_open(&db));
            dbs.push(db);
            s
        },
        Traits {
            checks_seq: true,
            view_refuses: true,
        },
    );
    eprintln!(
        "pg contract suite: {:.2} s (6 cases, a database each)",
        t0.elapsed().as_secs_f64()
    );
    // Opening again finds what was committed (and the schema already there).
    let db = TestDb::new();
    {
        let s = pg_open(&db);
        append(&s, 1, 3);
        assert!(s.shared());
        assert_eq!(s.syncs(), Some(1));
    }
    let s = pg_open(&db);
    assert_eq!(s.len().unwrap(), 3);
}

#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one and runs them with --ignored"]
fn pg_turns_exclude_each_other() {
    let db = TestDb::new();
    let a = Arc::new(pg_open(&db));
    let b = Arc::new(pg_open(&db));
    assert_eq!(a.begin_turn().unwrap(), 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let b2 = b.clone();
    let waiter = std::thread::spawn(move || {
        let r = b2.begin_turn();
        tx.send(r).unwrap();
    });
    // B waits while A holds the turn.
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
    a.commit(1, &[rec(1), rec(2)], &[]).unwrap();
    // A's commit ended its turn: B's turn begins and sees A's records.
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap(), 2);
    waiter.join().unwrap();
    // B's turn ended without a commit: A may write.
    b.end_turn();
    assert_eq!(a.begin_turn().unwrap(), 2);
    // A commit that does not follow the last record is refused and ends the turn.
    assert!(a.commit(5, &[rec(5)], &[]).is_err());
    assert_eq!(b.begin_turn().unwrap(), 2);
    // A commit outside a turn takes the write lock too: it waits for B's turn.
    let a2 = a.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let outside = std::thread::spawn(move || {
        tx.send(a2.commit(4, &[rec(4)], &[])).unwrap();
    });
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
    b.commit(3, &[rec(3)], &[]).unwrap();
    rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    outside.join().unwrap();
    assert_eq!(a.len().unwrap(), 4);
}

/// A node frozen in its turn (stopped, cut off) loses it when the server ends its idle session
/// (`IDLE_IN_TURN_TIMEOUT`): the other node's turn begins, and the frozen node's late commit
/// is unavailable, never written.
#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one and runs them with --ignored"]
fn pg_a_frozen_turn_is_ended_by_the_server() {
    let db = TestDb::new();
    let a = pg_open(&db);
    let b = pg_open(&db);
    assert_eq!(a.begin_turn().unwrap(), 0);
    let t0 = Instant::now();
    assert_eq!(b.begin_turn().unwrap(), 0);
    let waited = t0.elapsed();
    assert!(
        waited >= formica_relay::store::postgres::IDLE_IN_TURN_TIMEOUT - Duration::from_millis(100)
            && waited < formica_relay::store::postgres::LOCK_TIMEOUT,
        "{waited:?}"
    );
    b.commit(1, &[rec(1)], &[]).unwrap();
    let e = a.commit(1, &[rec(1)], &[]).unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert_eq!(a.len().unwrap(), 1);
    eprintln!(
        "pg frozen turn: the other node's turn began after {:.2} s",
        waited.as_secs_f64()
    );
}

#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one and runs them with --ignored"]
fn pg_claims_are_once_across_nodes() {
    let db = TestDb::new();
    let a = pg_open(&db);
    let b = pg_open(&db);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(a.claim(b"nonce-1", b"v", now + 60_000).unwrap());
    assert!(!b.claim(b"nonce-1", b"w", now + 60_000).unwrap());
    assert!(!a.claim(b"nonce-1", b"w", now + 60_000).unwrap());
    assert_eq!(
        b.get(Table::Admission, b"nonce-1").unwrap(),
        Some(b"v".to_vec())
    );
    // An expired row is taken over, whether or not the sweep removed it yet.
    assert!(a.claim(b"nonce-2", b"old", now - 1).unwrap());
    assert!(b.claim(b"nonce-2", b"new", now + 60_000).unwrap());
    // A row the writer committed (no expiry) is never taken over.
    a.commit(
        1,
        &[rec(1)],
        &[&changes(&[(Table::Admission, b"nonce-3", Some(b"c"))])],
    )
    .unwrap();
    assert!(!b.claim(b"nonce-3", b"x", now + 60_000).unwrap());
    // A read-only view claims nothing.
    assert!(a.read_only().unwrap().claim(b"nonce-4", b"v", now).is_err());
}

#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one and runs them with --ignored"]
fn pg_lead_is_held_by_one_and_moves_when_it_goes() {
    let db = TestDb::new();
    let a = pg_open(&db);
    let b = pg_open(&db);
    assert!(a.lead().unwrap());
    assert!(!b.lead().unwrap());
    assert!(a.lead().unwrap(), "the lead is kept");
    assert!(!b.lead().unwrap());
    let t0 = Instant::now();
    drop(a);
    // The server releases the lock when A's session ends; B takes it on its next ask.
    let bound = Duration::from_secs(5);
    while !b.lead().unwrap() {
        assert!(
            t0.elapsed() < bound,
            "the lead did not move within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "pg lead moved {:.0} ms after the leader's store was dropped",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    assert!(b.lead().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: .ci/run starts one and runs them with --ignored"]
async fn pg_reads_from_inside_a_tokio_runtime() {
    let db = TestDb::new();
    let s = pg_open(&db);
    s.commit(
        1,
        &[rec(1)],
        &[&changes(&[(Table::Agents, b"k", Some(b"v"))])],
    )
    .unwrap();
    // Synchronous calls on a worker thread of this runtime: no block_on inside a runtime.
    assert_eq!(s.get(Table::Agents, b"k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(range_all(&s, Table::Agents, &[], None).len(), 1);
    let h = tokio::spawn(async move {
        let v = s.get(Table::Agents, b"k").unwrap();
        drop(s); // the store's runtime is shut down from inside this one: no panic
        v
    });
    assert_eq!(h.await.unwrap(), Some(b"v".to_vec()));
}

#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one and runs them with --ignored"]
fn pg_weak_durability_is_refused_unless_allowed() {
    let db = TestDb::new();
    db.admin(&format!(
        "ALTER DATABASE {} SET synchronous_commit = off",
        db.name
    ));
    let e = PgStore::open(&db.config()).unwrap_err();
    assert!(e.to_string().contains("synchronous_commit"), "{e}");
    assert!(e.to_string().contains("allow_weak_durability"), "{e}");
    db.admin(&format!(
        "ALTER DATABASE {} SET synchronous_commit = local",
        db.name
    ));
    assert!(PgStore::open(&db.config()).is_err());
    let s = PgStore::open(&PgConfig {
        allow_weak_durability: true,
        ..db.config()
    })
    .unwrap();
    assert_eq!(s.warnings().len(), 1, "{:?}", s.warnings());
    db.admin(&format!(
        "ALTER DATABASE {} SET synchronous_commit = remote_apply",
        db.name
    ));
    assert!(PgStore::open(&db.config()).unwrap().warnings().is_empty());
}

/// A first figure for what a commit costs: 1,000 commits of 10 records of 500 bytes, one run
/// each on PostgreSQL and redb (both durable). Printed, not asserted.
#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one and runs them with --ignored"]
fn pg_commit_cost_against_redb() {
    const COMMITS: u64 = 1000;
    const PER: u64 = 10;
    let batch =
        |from: u64| -> Vec<Vec<u8>> { (from..from + PER).map(|_| vec![0x5a; 500]).collect() };
    let run = |s: &dyn Store| {
        let t0 = Instant::now();
        for i in 0..COMMITS {
            let c = changes(&[(Table::Meta, b"position", Some(&i.to_be_bytes()))]);
            s.commit(1 + i * PER, &batch(1 + i * PER), &[&c]).unwrap();
        }
        t0.elapsed()
    };
    let db = TestDb::new();
    let pg = pg_open(&db);
    let pg_t = run(&pg);
    assert_eq!(pg.len().unwrap(), COMMITS * PER);
    let dir = tempdir("cost");
    let redb = RedbStore::open(&dir.join("log.redb")).unwrap();
    let redb_t = run(&redb);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "commit cost, {COMMITS} commits of {PER} records of 500 bytes: PgStore {:.2} s ({:.2} ms each), RedbStore {:.2} s ({:.2} ms each)",
        pg_t.as_secs_f64(),
        pg_t.as_secs_f64() * 1000.0 / COMMITS as f64,
        redb_t.as_secs_f64(),
        redb_t.as_secs_f64() * 1000.0 / COMMITS as f64
    );
}

#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one and runs them with --ignored"]
fn pg_a_lost_connection_is_made_again() {
    let db = TestDb::new();
    let s = pg_open(&db);
    append(&s, 1, 2);
    let kill = || {
        db.admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{}' AND pid <> pg_backend_pid()",
            db.name
        ))
    };
    // Every session of the store ended by the server (as in a restart): the first use of each
    // connection may fail as unavailable, the next one connects again.
    kill();
    let mut answers = Vec::new();
    // (At most one failure per connection of the read pool.)
    for _ in 0..PgConfig::POOL_DEFAULT {
        answers.push(s.len());
    }
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok(2) | Err(StoreError::Unavailable(_)))),
        "{answers:?}"
    );
    assert_eq!(s.len().unwrap(), 2);
    // A turn whose connection is lost: its commit is unavailable, never written outside it.
    assert_eq!(s.begin_turn().unwrap(), 2);
    kill();
    let e = s.commit(3, &[rec(3)], &[]).unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert_eq!(s.len().unwrap(), 2);
    // The next turn connects again and commits.
    assert_eq!(s.begin_turn().unwrap(), 2);
    s.commit(3, &[rec(3)], &[]).unwrap();
    assert_eq!(s.len().unwrap(), 3);
    // The lead is lost with its session, and taken again.
    assert!(s.lead().unwrap());
    kill();
    let mut led = false;
    for _ in 0..3 {
        led = s.lead().unwrap();
        if led {
            break;
        }
    }
    assert!(led);
    // reopen() makes the connections again.
    kill();
    s.reopen().unwrap();
    append(&s, 4, 1);
}
