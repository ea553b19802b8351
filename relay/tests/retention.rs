//! Retention (SPEC.md RET-1..RET-4): settled inbox items and message records go after
//! `retention.delivered_ms`, everything after `retention.max_ms`; a cursor before the oldest
//! kept item is 410 `cursor_too_old` on the page, SSE and WebSocket alike; the status of a
//! removed message is `not_found`; a replay of a removed envelope is `duplicate` while its id
//! is kept and `stale` after, never delivered again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use formica_relay::engine::decide::{Command, Outcome};
use std::sync::Arc;

fn short_retention() -> formica_relay::config::RelayConfig {
    let mut cfg = config(4);
    cfg.policy.time.window_ms = 3_000;
    cfg.policy.time.skew_ms = 1_000;
    cfg.policy.federation.dead_letter_ms = 3_000;
    cfg.policy.retention.delivered_ms = 10_000;
    cfg.policy.retention.max_ms = 60_000;
    cfg.policy.retention.dedup_ms = 20_000;
    cfg.policy.validate().unwrap();
    cfg
}

async fn sweep(r: &TestRelay) -> usize {
    match r
        .relay
        .app
        .engine
        .writer
        .submit(Command::Retain)
        .await
        .unwrap()
    {
        Outcome::Retained { removed } => removed,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_items_go_after_delivered_ms_and_old_cursors_get_cursor_too_old() {
    let r = TestRelay::with(
        short_retention(),
        Arc::new(formica_relay::store::MemStore::default()),
    );
    let (a, b) = r.pair().await;
    let first = a.text(&r, &b.handle, "one");
    a.send(&r, &first).await.expect(201, "");
    let second = a.text(&r, &b.handle, "two");
    a.send(&r, &second).await.expect(201, "");
    // Nothing is old yet: a sweep removes nothing and logs nothing.
    let events = r.state(|s| s.events).await;
    assert_eq!(sweep(&r).await, 0);
    assert_eq!(r.state(|s| s.events).await, events);
    // Read: both settled (no ack asked). Past delivered_ms they go.
    assert_eq!(b.inbox(&r, 0).await.len(), 2);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    r.advance(10_001);
    let third = a.text(&r, &b.handle, "three");
    a.send(&r, &third).await.expect(201, "");
    assert!(sweep(&r).await >= 2);
    // The page: only the third is kept; `oldest` says so.
    let page = b.authed(&r, "GET", "/v1/inbox", b"").await;
    page.expect(200, "");
    assert_eq!(page.get("items").as_array().unwrap().len(), 1);
    assert_eq!(page.str_("oldest"), "3");
    // A cursor before it: 410 cursor_too_old with `oldest`, on every way of reading.
    for path in [
        "/v1/inbox?after=0",
        "/v1/inbox/stream?after=1",
        "/v1/inbox/ws?after=0",
    ] {
        let resp = b.authed(&r, "GET", path, b"").await;
        resp.expect(410, "cursor_too_old");
        assert_eq!(
            resp.get("error")
                .as_object()
                .unwrap()
                .get("oldest")
                .and_then(|v| v.as_str()),
            Some("3"),
            "{path}"
        );
    }
    let h = b.auth(&r, "GET", "/v1/inbox/stream", b"");
    let resp = r
        .call(
            "GET",
            "/v1/inbox/stream",
            b"",
            &[(h.0, h.1), ("last-event-id", "1".into())],
        )
        .await;
    resp.expect(410, "cursor_too_old");
    // Resuming at the cursor of the newest removed item loses nothing: it is not too old.
    b.authed(&r, "GET", "/v1/inbox?after=2", b"")
        .await
        .expect(200, "");
    // The removed messages' status: not_found (API-13).
    a.status(&r, &first.id()).await.expect(404, "not_found");
    a.status(&r, &third.id()).await.expect(200, "");
    // A replay is past the freshness window by now: stale, not delivered again.
    a.send(&r, &first).await.expect(400, "stale");
    assert_eq!(b.inbox(&r, 2).await.len(), 1);
}

/// With `delivered_ms` shorter than the freshness window, a removed item's envelope can come
/// back while still fresh: its id is kept, so it is a duplicate, not a new delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_a_removed_item_is_a_duplicate_while_fresh_then_stale() {
    let mut cfg = config(4);
    cfg.policy.time.window_ms = 30_000;
    cfg.policy.time.skew_ms = 1_000;
    cfg.policy.retention.delivered_ms = 2_000;
    cfg.policy.retention.max_ms = 5_000;
    cfg.policy.federation.dead_letter_ms = 3_000;
    cfg.policy.retention.dedup_ms = 40_000;
    cfg.policy.validate().unwrap();
    let r = TestRelay::with(cfg, Arc::new(formica_relay::store::MemStore::default()));
    let (a, b) = r.pair().await;
    let m = a.text(&r, &b.handle, "once only");
    a.send(&r, &m).await.expect(201, "");
    assert_eq!(b.inbox(&r, 0).await.len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    r.advance(2_500);
    assert!(sweep(&r).await >= 1);
    assert!(b.inbox(&r, 1).await.is_empty());
    b.authed(&r, "GET", "/v1/inbox?after=0", b"")
        .await
        .expect(410, "cursor_too_old");
    let again = a.send(&r, &m).await;
    again.expect(200, "");
    assert_eq!(again.str_("result"), "duplicate");
    assert!(
        b.inbox(&r, 1).await.is_empty(),
        "a replay was delivered again"
    );
    r.advance(30_000);
    a.send(&r, &m).await.expect(400, "stale");
    assert!(b.inbox(&r, 1).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_and_unacked_items_wait_for_max_ms_and_ids_for_dedup_ms() {
    let r = TestRelay::with(
        short_retention(),
        Arc::new(formica_relay::store::MemStore::default()),
    );
    let (a, b) = r.pair().await;
    let unread = a.text(&r, &b.handle, "never read");
    a.send(&r, &unread).await.expect(201, "");
    r.advance(30_000);
    // Past delivered_ms and dedup_ms: the item stays (not read), its id goes.
    assert!(sweep(&r).await >= 1);
    let ts = unread.envelope().ts;
    assert!(
        !{
            let id = unread.id();
            r.state(move |s| s.seen(&id, ts))
        }
        .await
    );
    assert_eq!(b.inbox(&r, 0).await.len(), 1);
    // A replay now is refused stale (its ts is long out of the window), never delivered again.
    a.send(&r, &unread).await.expect(400, "stale");
    // Past max_ms it goes, read or not.
    r.advance(30_001);
    assert!(sweep(&r).await >= 1);
    let page = b.authed(&r, "GET", "/v1/inbox", b"").await;
    page.expect(200, "");
    assert!(page.get("items").as_array().unwrap().is_empty());
    assert_eq!(page.str_("oldest"), "2");
    b.authed(&r, "GET", "/v1/inbox?after=0", b"")
        .await
        .expect(410, "cursor_too_old");
    a.status(&r, &unread.id()).await.expect(404, "not_found");
}
