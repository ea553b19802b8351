//! A relay on the PostgreSQL store (`PgStore`): agents register, send and read their inbox, and
//! what was answered 2xx is still there after the relay is stopped and opened again on the same
//! database. Needs a PostgreSQL server (`FORMICA_TEST_PG_URL`; `.ci/run` starts one with
//! `.ci/pg.sh` and runs the `pg_` tests with `--ignored`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pgdb;

use common::*;
use formica_relay::store::{PgStore, Store};
use std::sync::Arc;
use std::time::Duration;

fn ids(items: &[formica_protocol::Value]) -> Vec<String> {
    items
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
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: .ci/run starts one and runs them with --ignored"]
async fn pg_relay_serves_and_keeps_messages_across_a_restart() {
    let db = pgdb::TestDb::new();
    let store: Arc<dyn Store> = Arc::new(PgStore::open(&db.config()).unwrap());
    let r = TestRelay::on_store(config(4), store);
    let (a, b) = r.pair().await;
    let sent = a.text(&r, &b.handle, "kept in PostgreSQL");
    a.send(&r, &sent).await.expect(201, "");
    assert_eq!(ids(&b.inbox(&r, 0).await), vec![sent.id().to_hex()]);
    let TestRelay { relay, router, .. } = r;
    drop(router);
    assert!(
        relay.stop(Duration::from_secs(10)),
        "the writer did not stop"
    );

    // The same database, a new store and relay: the log is replayed from PostgreSQL.
    let store: Arc<dyn Store> = Arc::new(PgStore::open(&db.config()).unwrap());
    assert!(store.len().unwrap() > 0);
    let r = TestRelay::on_store(config(4), store);
    assert_eq!(ids(&b.inbox(&r, 0).await), vec![sent.id().to_hex()]);
    // And it takes writes again.
    let more = a.text(&r, &b.handle, "after the restart");
    a.send(&r, &more).await.expect(201, "");
    assert_eq!(
        ids(&b.inbox(&r, 0).await),
        vec![sent.id().to_hex(), more.id().to_hex()]
    );
    let TestRelay { relay, router, .. } = r;
    drop(router);
    assert!(relay.stop(Duration::from_secs(10)));
}

fn tempdir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "formica-pg-relay-{name}-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ))
}

fn load(toml: &str) -> Result<formica_relay::config::RelayConfig, String> {
    let dir = tempdir("config");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("relay.toml");
    std::fs::write(&file, toml).unwrap();
    let r = formica_relay::config::RelayConfig::load(Some(&file), Default::default());
    let _ = std::fs::remove_dir_all(&dir);
    r
}

#[test]
fn store_settings_are_checked_at_start() {
    use formica_relay::config::StoreConfig;
    assert_eq!(load("").unwrap().store, StoreConfig::Redb);
    assert_eq!(
        load("[store]\nkind = \"redb\"\n").unwrap().store,
        StoreConfig::Redb
    );
    let e = load("[store]\nkind = \"postgres\"\n").unwrap_err();
    assert!(e.contains("store.url"), "{e}");
    let e = load("[store]\nurl = \"postgres://x@h/db\"\n").unwrap_err();
    assert!(e.contains("store.url") && e.contains("store.kind"), "{e}");
    let e = load("[store]\nkind = \"sqlite\"\n").unwrap_err();
    assert!(e.contains("store.kind"), "{e}");
    let e =
        load("[store]\nkind = \"postgres\"\nurl = \"postgres://x@h/db\"\npool = 0\n").unwrap_err();
    assert!(e.contains("store.pool"), "{e}");
    match load("[store]\nkind = \"postgres\"\nurl = \"postgres://x@h/db\"\npool = 2\nallow_weak_durability = true\n")
        .unwrap()
        .store
    {
        StoreConfig::Postgres(pg) => {
            assert_eq!(pg.url, "postgres://x@h/db");
            assert_eq!(pg.pool, 2);
            assert!(pg.allow_weak_durability);
        }
        other => panic!("{other:?}"),
    }
    // The flag (or environment) kind and URL override the file's.
    let dir = tempdir("flags");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("relay.toml");
    std::fs::write(
        &file,
        "[store]\npool = 3\nkind = \"postgres\"\nurl = \"postgres://file@h/db\"\n",
    )
    .unwrap();
    let cfg = formica_relay::config::RelayConfig::load(
        Some(&file),
        formica_relay::config::Overrides {
            store_url: Some("postgres://flag@h/db".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    match cfg.store {
        StoreConfig::Postgres(pg) => {
            assert_eq!(pg.url, "postgres://flag@h/db");
            assert_eq!(pg.pool, 3);
        }
        other => panic!("{other:?}"),
    }
}

/// `Relay::open` with `store.kind = "postgres"`: the data directory holds the key and the lock,
/// not a `log.redb`; a second open (a restart) finds the same relay key and the log.
#[test]
#[ignore = "needs PostgreSQL: .ci/run starts one and runs them with --ignored"]
fn pg_relay_open_uses_the_database_and_the_data_directory() {
    use formica_relay::config::StoreConfig;
    let db = pgdb::TestDb::new();
    let dir = tempdir("open");
    let mut cfg = config(4);
    cfg.data_dir = dir.clone();
    cfg.store = StoreConfig::Postgres(db.config());
    let host = formica_protocol::RelayHost::parse("relay.test").unwrap();
    let clock: formica_relay::engine::Clock = Arc::new(|| 1_700_000_000_000);
    let relay = formica_relay::Relay::open(&cfg, &host, clock.clone()).unwrap();
    let key = std::fs::read(dir.join(formica_relay::KEY_FILE)).unwrap();
    assert!(!dir.join(formica_relay::LOG_FILE).exists());
    assert!(relay.stop(Duration::from_secs(10)));
    let relay = formica_relay::Relay::open(&cfg, &host, clock).unwrap();
    assert_eq!(
        std::fs::read(dir.join(formica_relay::KEY_FILE)).unwrap(),
        key
    );
    assert!(relay.stop(Duration::from_secs(10)));
    let _ = std::fs::remove_dir_all(&dir);
}
