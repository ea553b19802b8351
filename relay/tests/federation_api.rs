//! Federation endpoints without sockets (`Router::oneshot`): the order of the relay request
//! checks (RELAY-REQ-3), a relay without federation, and the admin endpoints' gate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use formica_protocol::auth::{Nonce, RelayAuth, RequestTarget};
use formica_protocol::{canon, RelayHost, SecretKey, Value};
use std::sync::Arc;

fn fed_relay() -> TestRelay {
    let mut cfg = config(4);
    cfg.policy.federation.enabled = true;
    cfg.policy.federation.peering = "allowlist".into();
    TestRelay::with(cfg, Arc::new(formica_relay::store::MemStore::default()))
}

fn transfer_body() -> Vec<u8> {
    canon::canonicalize(&obj(vec![
        ("envelopes", Value::Array(vec![])),
        ("txn", "t1".into()),
    ]))
}

fn header(key: &SecretKey, dest: &RelayHost, ts: i64, path: &str, body: &[u8]) -> String {
    RelayAuth::sign(
        key,
        &RelayHost::parse("relay-z.example").unwrap(),
        dest,
        ts,
        Nonce([7; 16]),
        &RequestTarget {
            method: "POST",
            path,
            body,
        },
    )
}

#[tokio::test]
async fn a_relay_without_federation_refuses_relay_requests() {
    let r = TestRelay::new();
    let body = transfer_body();
    let h = header(
        &SecretKey::from_seed(&[1; 32]),
        &r.host(),
        r.now(),
        "/v1/federation/transfer",
        &body,
    );
    r.call(
        "POST",
        "/v1/federation/transfer",
        &body,
        &[("authorization", h)],
    )
    .await
    .expect(403, "peer_unknown");
    let d = r.get("/.well-known/formica").await;
    assert_eq!(
        canon::canonicalize(field(&d.body, &["federation"])),
        br#"{"enabled":false,"peering":"none"}"#.to_vec()
    );
}

#[tokio::test]
async fn relay_request_checks_come_in_the_spec_order() {
    let r = fed_relay();
    let body = transfer_body();
    let key = SecretKey::from_seed(&[1; 32]);
    let p = "/v1/federation/transfer";
    r.call("POST", p, &body, &[])
        .await
        .expect(401, "unauthorized");
    r.call(
        "POST",
        p,
        &body,
        &[("authorization", "Formica-Relay origin=x".into())],
    )
    .await
    .expect(401, "unauthorized");
    let other = RelayHost::parse("relay-b.example").unwrap();
    r.call(
        "POST",
        p,
        &body,
        &[("authorization", header(&key, &other, r.now(), p, &body))],
    )
    .await
    .expect(421, "wrong_relay");
    r.call(
        "POST",
        p,
        &body,
        &[(
            "authorization",
            header(&key, &r.host(), r.now() - 3_600_000, p, &body),
        )],
    )
    .await
    .expect(400, "stale");
    r.call(
        "POST",
        p,
        &body,
        &[(
            "authorization",
            header(&key, &r.host(), r.now() + 3_600_000, p, &body),
        )],
    )
    .await
    .expect(400, "future");
    r.call(
        "POST",
        p,
        &body,
        &[("authorization", header(&key, &r.host(), r.now(), p, &body))],
    )
    .await
    .expect(403, "peer_unknown");
    // A handshake with an invalid descriptor is unauthorized; one from a host not on the
    // allowlist is refused before this relay makes any request (no peer_unavailable).
    let hp = "/v1/federation/peers";
    let hb = canon::canonicalize(&obj(vec![("descriptor", Value::Null)]));
    r.call(
        "POST",
        hp,
        &hb,
        &[("authorization", header(&key, &r.host(), r.now(), hp, &hb))],
    )
    .await
    .expect(401, "unauthorized");
    let mut d = formica_protocol::Object::new();
    d.insert("relay", "relay-z.example".into());
    d.insert("key", key.public().to_hex().into());
    d.insert("versions", Value::Array(vec![Value::Int(1)]));
    let sig = key.sign(
        formica_protocol::Domain::Descriptor,
        &canon::canonicalize(&Value::Object(d.clone())),
    );
    d.insert("sig", sig.to_hex().into());
    let hb = canon::canonicalize(&obj(vec![("descriptor", Value::Object(d))]));
    r.call(
        "POST",
        hp,
        &hb,
        &[("authorization", header(&key, &r.host(), r.now(), hp, &hb))],
    )
    .await
    .expect(403, "peer_unknown");
}

#[tokio::test]
async fn admin_endpoints_need_loopback_and_the_token() {
    let r = fed_relay();
    let _ = r.relay.app.admin_token.set("secret".into());
    let lo: std::net::SocketAddr = "127.0.0.1:5555".parse().unwrap();
    let far: std::net::SocketAddr = "192.0.2.7:5555".parse().unwrap();
    r.call("GET", "/admin/v1/peers", b"", &[])
        .await
        .expect(403, "forbidden");
    r.call_from(
        Some(lo),
        "GET",
        "/admin/v1/peers",
        b"",
        &[("authorization", "Bearer wrong".into())],
    )
    .await
    .expect(403, "forbidden");
    r.call_from(
        Some(far),
        "GET",
        "/admin/v1/peers",
        b"",
        &[("authorization", "Bearer secret".into())],
    )
    .await
    .expect(403, "forbidden");
    let ok = r
        .call_from(
            Some(lo),
            "GET",
            "/admin/v1/peers",
            b"",
            &[("authorization", "Bearer secret".into())],
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(canon::canonicalize(&ok.body), br#"{"peers":[]}"#.to_vec());
}
