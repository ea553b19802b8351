//! App-level tests without sockets (`Router::oneshot`): presence statuses, heartbeats and who
//! sees what (SPEC.md 18.4). Pushed presence on open streams is tested with a relay process
//! (`streams.rs`). Named after the behaviour they check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use formica_protocol::{Availability, Profile, Status};
use std::sync::Arc;

fn status(r: &TestRelay, a: &Agent, s: Availability, ttl: i64) -> Status {
    Status {
        handle: a.handle.clone(),
        key: a.key.public().key_id(),
        ts: r.now(),
        expires: r.now() + ttl,
        status: s,
        note: None,
    }
}

async fn put(r: &TestRelay, a: &Agent, s: &Status) -> Resp {
    let signed = s.sign(&a.key).unwrap();
    a.authed(r, "PUT", "/v1/presence", signed.wire()).await
}

async fn presence_of(r: &TestRelay, viewer: &Agent, subject: &Agent) -> Resp {
    viewer
        .authed(r, "GET", &format!("/v1/presence/{}", subject.handle), b"")
        .await
}

#[tokio::test]
async fn a_status_is_checked_in_the_order_of_pres_3_and_ordered_by_ts() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    let theirs = status(&r, &b, Availability::Busy, 60_000)
        .sign(&b.key)
        .unwrap();
    a.authed(&r, "PUT", "/v1/presence", theirs.wire())
        .await
        .expect(403, "forbidden");
    let mut old = status(&r, &a, Availability::Busy, 60_000);
    old.ts -= 3_600_000;
    old.expires = old.ts + 60_000;
    put(&r, &a, &old).await.expect(400, "stale");
    let long = status(&r, &a, Availability::Away, 25 * 3_600_000);
    let resp = put(&r, &a, &long).await;
    resp.expect(400, "invalid_field");
    assert_eq!(resp.field_of_error(), "expires");
    let busy = status(&r, &a, Availability::Busy, 60_000);
    let resp = put(&r, &a, &busy).await;
    resp.expect(200, "");
    assert_eq!(resp.str_("result"), "stored");
    assert_eq!(put(&r, &a, &busy).await.str_("result"), "duplicate");
    // Another status at the same time is not newer.
    put(&r, &a, &status(&r, &a, Availability::Away, 60_000))
        .await
        .expect(409, "status_outdated");
    r.advance(1);
    put(&r, &a, &status(&r, &a, Availability::Away, 60_000))
        .await
        .expect(200, "");
}

#[tokio::test]
async fn statuses_and_heartbeats_share_a_budget_per_agent() {
    let mut cfg = config(4);
    cfg.policy.presence.updates_per_min = 3;
    let r = TestRelay::with(cfg, Arc::new(formica_relay::store::MemStore::default()));
    let a = r.agent("alice").await;
    for _ in 0..3 {
        a.authed(&r, "POST", "/v1/presence/heartbeat", b"")
            .await
            .expect(200, "");
    }
    let resp = put(&r, &a, &status(&r, &a, Availability::Busy, 60_000)).await;
    resp.expect(429, "rate_limited");
    assert!(field(&resp.body, &["error", "retry_after_s"])
        .as_i64()
        .is_some());
}

#[tokio::test]
async fn contacts_see_full_presence_strangers_nothing_and_listed_agents_are_coarse() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    let c = r.agent("carol").await;
    // a grants b: b sees a's full presence.
    a.put_contact(&r, &b.handle, "read").await.expect(200, "");
    let hidden = presence_of(&r, &c, &a).await;
    hidden.expect(404, "not_found");
    let nobody = c.authed(&r, "GET", "/v1/presence/@nobody", b"").await;
    assert_eq!(hidden.raw, nobody.raw);
    let profile_hidden = c
        .authed(&r, "GET", &format!("/v1/profiles/{}", a.handle), b"")
        .await;
    assert_eq!(hidden.raw, profile_hidden.raw);
    // Never connected: offline, last_seen null.
    let full = presence_of(&r, &b, &a).await;
    full.expect(200, "");
    assert_eq!(full.str_("status"), "offline");
    assert_eq!(full.get("last_seen"), &formica_protocol::Value::Null);
    // A heartbeat connects a for the ttl; its busy status shows while connected.
    let hb = a.authed(&r, "POST", "/v1/presence/heartbeat", b"").await;
    hb.expect(200, "");
    assert_eq!(hb.get("connected_until").as_i64(), Some(r.now() + 60_000));
    put(&r, &a, &status(&r, &a, Availability::Busy, 30_000))
        .await
        .expect(200, "");
    let full = presence_of(&r, &b, &a).await;
    assert_eq!(full.str_("status"), "busy");
    assert_eq!(
        field(&full.body, &["signed", "status"]).as_str(),
        Some("busy")
    );
    // The status expires: available, still connected.
    r.advance(30_000);
    let full = presence_of(&r, &b, &a).await;
    assert_eq!(full.str_("status"), "available");
    assert_eq!(full.get("signed"), &formica_protocol::Value::Null);
    // The ttl passes: offline, last seen at the heartbeat.
    r.advance(30_000);
    let full = presence_of(&r, &b, &a).await;
    assert_eq!(full.str_("status"), "offline");
    assert_eq!(full.get("last_seen").as_i64(), Some(r.now() - 60_000));
    // Listed: c sees the coarse presence, without last_seen or the signed status.
    let p = Profile {
        handle: a.handle.clone(),
        key: a.key.public().key_id(),
        seq: 1,
        ts: r.now(),
        expires: r.now() + 3_600_000,
        name: "Alice".into(),
        description: None,
        capabilities: Vec::new(),
        accepts: Vec::new(),
        platform: None,
        model: None,
        listed: true,
    };
    let signed = p.sign(&a.key).unwrap();
    a.authed(&r, "PUT", "/v1/profile", signed.wire())
        .await
        .expect(200, "");
    let coarse = presence_of(&r, &c, &a).await;
    coarse.expect(200, "");
    let members: Vec<&str> = coarse
        .body
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(members, vec!["handle", "status"]);
}

#[tokio::test]
async fn the_presence_list_holds_the_contacts_whose_presence_the_caller_may_see() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    let c = r.agent("carol").await;
    // b lists a and c as contacts; only a granted b in return.
    b.put_contact(&r, &a.handle, "message")
        .await
        .expect(200, "");
    b.put_contact(&r, &c.handle, "message")
        .await
        .expect(200, "");
    b.put_contact(
        &r,
        &formica_protocol::Handle::parse("@dan@relay-b.test").unwrap(),
        "read",
    )
    .await
    .expect(200, "");
    a.put_contact(&r, &b.handle, "read").await.expect(200, "");
    let list = b.authed(&r, "GET", "/v1/presence", b"").await;
    list.expect(200, "");
    let got: Vec<&str> = list
        .get("presence")
        .as_array()
        .unwrap()
        .iter()
        .map(|p| field(p, &["handle"]).as_str().unwrap())
        .collect();
    assert_eq!(got, vec![a.handle.as_str()]);
}

#[tokio::test]
async fn a_stream_refuses_a_presence_parameter_other_than_0_or_1() {
    let r = TestRelay::new();
    let a = r.agent("alice").await;
    let resp = a
        .authed(&r, "GET", "/v1/inbox/stream?presence=yes", b"")
        .await;
    resp.expect(400, "invalid_field");
    assert_eq!(resp.field_of_error(), "presence");
}

#[tokio::test]
async fn the_directory_filters_by_presence() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    let viewer = r.agent("zed").await;
    for x in [&a, &b] {
        let p = Profile {
            handle: x.handle.clone(),
            key: x.key.public().key_id(),
            seq: 1,
            ts: r.now(),
            expires: r.now() + 3_600_000,
            name: "Listed".into(),
            description: None,
            capabilities: Vec::new(),
            accepts: Vec::new(),
            platform: None,
            model: None,
            listed: true,
        };
        let signed = p.sign(&x.key).unwrap();
        x.authed(&r, "PUT", "/v1/profile", signed.wire())
            .await
            .expect(200, "");
    }
    a.authed(&r, "POST", "/v1/presence/heartbeat", b"")
        .await
        .expect(200, "");
    let found = |resp: &Resp| -> Vec<String> {
        resp.get("results")
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                field(e, &["profile", "handle"])
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let on = viewer
        .authed(&r, "GET", "/v1/directory?status=available", b"")
        .await;
    on.expect(200, "");
    assert_eq!(found(&on), vec![a.handle.to_string()]);
    let off = viewer
        .authed(&r, "GET", "/v1/directory?status=offline", b"")
        .await;
    assert_eq!(found(&off), vec![b.handle.to_string()]);
    let resp = viewer
        .authed(&r, "GET", "/v1/directory?status=online", b"")
        .await;
    resp.expect(400, "invalid_field");
    assert_eq!(resp.field_of_error(), "status");
}
