//! Review findings fixed after the fact, each checked here without sockets (`Router::oneshot`)
//! unless it needs one: hard caps on the nonce and rate-limit tables, the admin token file's
//! checks, the body read timeout, streams ended by a key change, the handshake's guard against
//! requests to private addresses, and the per-peer outbound queue depth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use formica_protocol::{Object, Value};
use std::net::SocketAddr;
use std::sync::Arc;

fn relay_with(f: impl FnOnce(&mut formica_relay::config::RelayConfig)) -> TestRelay {
    let mut cfg = config(4);
    f(&mut cfg);
    cfg.policy.validate().unwrap();
    TestRelay::with(cfg, Arc::new(formica_relay::store::MemStore::default()))
}

// ------------------------------------------------------------------ nonce and bucket tables

#[tokio::test]
async fn a_full_nonce_table_refuses_new_requests_and_never_forgets_a_live_nonce() {
    let r = relay_with(|c| c.policy.limits.nonces_max = 3);
    // Registration is unauthenticated: no nonces yet.
    let a = r.agent("alice").await;
    let mut replay = None;
    for i in 0..3 {
        let h = a.auth(&r, "GET", "/v1/contacts", b"");
        if i == 0 {
            replay = Some(h.clone());
        }
        r.call("GET", "/v1/contacts", b"", &[h])
            .await
            .expect(200, "");
    }
    // Full of live nonces: a new request is refused, with a retry hint.
    let full = a.authed(&r, "GET", "/v1/contacts", b"").await;
    full.expect(503, "unavailable");
    assert!(full
        .get("error")
        .as_object()
        .unwrap()
        .get("retry_after_s")
        .is_some());
    // The first nonce was not dropped to make room: its replay is still refused as a replay.
    r.call("GET", "/v1/contacts", b"", &[replay.clone().unwrap()])
        .await
        .expect(401, "nonce_reused");
    assert_eq!(r.relay.app.nonces.lock().unwrap().len(), 3);
    // Once the nonces are past the retention (and the request timestamps stale), room is made.
    r.advance(r.relay.app.engine.policy.time.retention_ms() + 1);
    a.authed(&r, "GET", "/v1/contacts", b"")
        .await
        .expect(200, "");
    r.call("GET", "/v1/contacts", b"", &[replay.unwrap()])
        .await
        .expect(400, "stale");
    assert_eq!(r.relay.app.nonces.lock().unwrap().len(), 1);
}

/// One agent cannot fill the nonce table for everyone: past its share it gets `rate_limited`,
/// while another agent's requests still pass.
#[tokio::test]
async fn one_agent_cannot_take_every_nonce() {
    let r = relay_with(|c| {
        c.policy.limits.nonces_max = 10;
        c.policy.limits.nonces_per_handle_max = 2;
    });
    let a = r.agent("alice").await;
    let b = r.agent("bob").await;
    for _ in 0..2 {
        a.authed(&r, "GET", "/v1/contacts", b"")
            .await
            .expect(200, "");
    }
    let refused = a.authed(&r, "GET", "/v1/contacts", b"").await;
    refused.expect(429, "rate_limited");
    assert!(refused
        .get("error")
        .as_object()
        .unwrap()
        .get("retry_after_s")
        .is_some());
    b.authed(&r, "GET", "/v1/contacts", b"")
        .await
        .expect(200, "");
    // Her nonces expire with the retention, and then she may go on.
    r.advance(r.relay.app.engine.policy.time.retention_ms() + 1);
    a.authed(&r, "GET", "/v1/contacts", b"")
        .await
        .expect(200, "");
}

#[tokio::test]
async fn a_full_rate_limit_table_refuses_new_addresses_until_buckets_refill() {
    let r = relay_with(|c| {
        c.policy.limits.rate_limit_keys_max = 2;
        c.policy.limits.ip_requests_per_min = 60;
    });
    let from = |i: u8| Some(SocketAddr::from(([192, 0, 2, i], 4000)));
    let empty = Value::Object(Object::new());
    let body = formica_protocol::canon::canonicalize(&empty);
    for i in 1..=2 {
        r.call_from(from(i), "POST", "/v1/challenges", &body, &[])
            .await
            .expect(201, "");
    }
    // A third address while both buckets are still refilling: refused, not tracked.
    let third = r
        .call_from(from(3), "POST", "/v1/challenges", &body, &[])
        .await;
    third.expect(429, "rate_limited");
    assert!(third
        .get("error")
        .as_object()
        .unwrap()
        .get("retry_after_s")
        .is_some());
    assert_eq!(r.relay.app.ip_buckets.lock().unwrap().len(), 2);
    // The tracked addresses keep their buckets.
    r.call_from(from(1), "POST", "/v1/challenges", &body, &[])
        .await
        .expect(201, "");
    // Once the buckets have refilled they carry no information and make room.
    r.advance(120_000);
    r.call_from(from(3), "POST", "/v1/challenges", &body, &[])
        .await
        .expect(201, "");
    assert!(r.relay.app.ip_buckets.lock().unwrap().len() <= 2);
}

// ------------------------------------------------------------------ admin token file

fn open_in(dir: &std::path::Path) -> Result<formica_relay::Relay, formica_relay::OpenError> {
    let mut cfg = config(4);
    cfg.data_dir = dir.to_path_buf();
    formica_relay::Relay::open(
        &cfg,
        &formica_protocol::RelayHost::parse(HOST).unwrap(),
        formica_relay::engine::system_clock(),
    )
}

fn write_token(dir: &std::path::Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(formica_relay::ADMIN_TOKEN_FILE);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn private(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
}

fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Regression: the data directory was 0755 and `log.redb` (every message) 0644. A new data
/// directory is 0700 and every file in it 0600; a directory others may read is refused with
/// the `chmod` that fixes it, before anything in it is opened.
#[test]
fn the_data_directory_and_its_files_are_private() {
    let root = std::env::temp_dir().join(format!("formica-modes-{}-{}", std::process::id(), T0));
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("a").join("data");
    formica_relay::resolve_host(&dir, None, Some("127.0.0.1:7070".parse().unwrap())).unwrap();
    let r = open_in(&dir).unwrap();
    drop(r);
    assert_eq!(mode_of(&dir), 0o700);
    for f in [
        formica_relay::LOG_FILE,
        formica_relay::KEY_FILE,
        formica_relay::HOST_FILE,
        formica_relay::LOCK_FILE,
        formica_relay::ADMIN_TOKEN_FILE,
    ] {
        assert_eq!(mode_of(&dir.join(f)), 0o600, "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let e = open_in(&dir).unwrap_err().to_string();
    assert!(e.contains("chmod 700"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_admin_token_file_must_be_private_and_long_enough() {
    let dir = std::env::temp_dir().join(format!("formica-token-{}-{}", std::process::id(), T0));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    private(&dir);
    let good = "0123456789abcdef".repeat(4);
    // Readable by the group: refused before anything else is opened.
    write_token(&dir, &format!("{good}\n"), 0o640);
    let e = open_in(&dir).unwrap_err().to_string();
    assert!(e.contains("admin token") && e.contains("chmod 600"), "{e}");
    assert!(
        !dir.join(formica_relay::LOG_FILE).exists(),
        "the store was opened"
    );
    // Private but too short.
    write_token(&dir, "short-token\n", 0o600);
    let e = open_in(&dir).unwrap_err().to_string();
    assert!(e.contains("shorter than 32"), "{e}");
    // 31 bytes is still too short; 32 is enough.
    write_token(&dir, &good[..31], 0o600);
    assert!(open_in(&dir).is_err());
    write_token(&dir, &format!("{}\n", &good[..32]), 0o600);
    let r = open_in(&dir).unwrap();
    assert_eq!(
        r.app.admin_token.get().map(String::as_str),
        Some(&good[..32])
    );
    drop(r);
    // No file: a new 64-hex-character token is written with mode 0600.
    let dir2 = dir.join("fresh");
    let r = open_in(&dir2).unwrap();
    let t = r.app.admin_token.get().unwrap().clone();
    assert_eq!(t.len(), 64);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir2.join(formica_relay::ADMIN_TOKEN_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ body read timeout

/// A body that sends `first` and then nothing more (or `trickle` one byte every 50 ms).
fn slow_body(first: &'static [u8], trickle: bool) -> axum::body::Body {
    let s = futures_util::stream::unfold(0u32, move |i| async move {
        if i == 0 {
            return Some((
                Ok::<_, std::io::Error>(axum::body::Bytes::from_static(first)),
                1,
            ));
        }
        if trickle && i < 10_000 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            return Some((Ok(axum::body::Bytes::from_static(b" ")), i + 1));
        }
        std::future::pending::<()>().await;
        None
    });
    axum::body::Body::from_stream(s)
}

async fn post_slow(r: &TestRelay, path: &str, body: axum::body::Body) -> (u16, String) {
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .method("POST")
        .uri(path)
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        r.router.clone().oneshot(req),
    )
    .await
    .expect("the relay answers a stalled body within the test's bound")
    .unwrap();
    let status = resp.status().as_u16();
    let raw = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&raw).into_owned())
}

#[tokio::test]
async fn a_stalled_or_trickled_body_is_cut_off_with_request_timeout() {
    let r = relay_with(|c| c.policy.limits.body_read_timeout_ms = 300);
    let d = r.get("/.well-known/formica").await;
    assert_eq!(
        field(&d.body, &["limits", "body_read_timeout_ms"]).as_i64(),
        Some(300)
    );
    for (path, trickle) in [
        ("/v1/envelopes", false),
        ("/v1/envelopes", true),
        ("/v1/envelopes/batch", true),
        ("/v1/register", false),
    ] {
        let t0 = std::time::Instant::now();
        let (status, body) = post_slow(&r, path, slow_body(b"{\"v\":", trickle)).await;
        let took = t0.elapsed();
        assert_eq!(status, 408, "{path}: {body}");
        assert!(body.contains("\"code\":\"request_timeout\""), "{body}");
        assert!(body.contains("\"retry\":\"later\""), "{body}");
        assert!(
            took >= std::time::Duration::from_millis(280),
            "{path}: cut off after {took:?}"
        );
    }
    // A body that is complete in time is not affected.
    let a = r.agent("alice").await;
    a.authed(&r, "GET", "/v1/contacts", b"")
        .await
        .expect(200, "");
}

// ------------------------------------------------------------------ streams and key changes

/// Opens `GET /v1/inbox/stream` for `a` and returns the streaming body.
async fn open_sse(r: &TestRelay, a: &Agent) -> axum::body::Body {
    use tower::ServiceExt;
    let h = a.auth(r, "GET", "/v1/inbox/stream", b"");
    let req = axum::http::Request::builder()
        .method("GET")
        .uri("/v1/inbox/stream")
        .header(h.0, h.1)
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = r.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.into_body()
}

/// Reads the stream until it ends or `bound` passes; returns the text and whether it ended.
async fn read_sse(body: axum::body::Body, bound: std::time::Duration) -> (String, bool) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut text = String::new();
    let end = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(end, body.frame()).await {
            Err(_) => return (text, false),
            Ok(None) => return (text, true),
            Ok(Some(f)) => {
                if let Ok(d) = f.unwrap().into_data() {
                    text.push_str(&String::from_utf8_lossy(&d));
                }
            }
        }
    }
}

async fn post_entry(r: &TestRelay, a: &Agent, e: &formica_protocol::keylog::SignedKeyLogEntry) {
    r.call(
        "POST",
        &format!("/v1/keys/{}", a.handle),
        &e.wire_bytes(),
        &[],
    )
    .await
    .expect(201, "");
}

#[tokio::test]
async fn an_open_sse_stream_ends_when_its_key_is_rotated_and_sends_nothing_more() {
    use formica_protocol::keylog::KeyOp;
    let r = TestRelay::new();
    let (a, b) = r.pair().await;
    let first = a.text(&r, &b.handle, "before");
    a.send(&r, &first).await.expect(201, "");
    let body = open_sse(&r, &b).await;
    let k2 = r.fresh_key();
    let rotate = b
        .next_entry(&r, KeyOp::Rotate { key: k2.public() }, &b.key, &[&k2])
        .await;
    post_entry(&r, &b, &rotate).await;
    let after = a.text(&r, &b.handle, "after the rotation");
    a.send(&r, &after).await.expect(201, "");
    let (text, ended) = read_sse(body, std::time::Duration::from_secs(5)).await;
    assert!(ended, "the stream is still open: {text}");
    // What was read before the rotation was read under a valid key; nothing after it is sent.
    assert!(!text.contains(&after.id().to_hex()), "{text}");
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("\"code\":\"unauthorized\""), "{text}");
}

#[tokio::test]
async fn an_idle_sse_stream_ends_when_its_key_is_revoked() {
    use formica_protocol::keylog::KeyOp;
    let r = TestRelay::new();
    let a = r.agent("alice").await;
    let body = open_sse(&r, &a).await;
    let revoke = a.next_entry(&r, KeyOp::Revoke, &a.recovery, &[]).await;
    post_entry(&r, &a, &revoke).await;
    // Nothing wakes the stream but its periodic key check.
    let bound =
        std::time::Duration::from_millis(formica_relay::http::inbox::KEY_CHECK_MS * 3 + 2000);
    let (text, ended) = read_sse(body, bound).await;
    assert!(ended, "the stream is still open: {text}");
    assert!(
        text.contains("event: error") && text.contains("unauthorized"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stream_with_a_current_key_stays_open() {
    let r = TestRelay::new();
    let a = r.agent("alice").await;
    let body = open_sse(&r, &a).await;
    let bound =
        std::time::Duration::from_millis(formica_relay::http::inbox::KEY_CHECK_MS * 2 + 500);
    let (text, ended) = read_sse(body, bound).await;
    assert!(!ended, "the stream ended: {text}");
    assert!(!text.contains("error"), "{text}");
}

// ------------------------------------------------------------------ federation handshake guard

use formica_protocol::auth::{Nonce, RelayAuth, RequestTarget};
use formica_protocol::{canon, Domain, RelayHost, SecretKey};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A loopback HTTP server that answers every request with `answer` and counts connections;
/// it serves until the test process ends (threads are detached, accept has a bound).
fn fake_server(answer: Vec<u8>) -> (u16, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (port, serve_on(l, answer))
}

/// Serves `answer` on `l` to at most 8 connections; returns the connection count.
fn serve_on(l: std::net::TcpListener, answer: Vec<u8>) -> Arc<AtomicUsize> {
    use std::io::{Read, Write};
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming().take(8) {
            let Ok(mut s) = s else { return };
            h.fetch_add(1, Ordering::SeqCst);
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(&answer);
        }
    });
    hits
}

fn http_answer(status: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

fn descriptor_of(host: &RelayHost, key: &SecretKey, ts: i64) -> Value {
    let mut o = Object::new();
    o.insert("v", Value::Int(1));
    o.insert("relay", host.as_str().into());
    o.insert("key", key.public().to_hex().into());
    o.insert("versions", Value::Array(vec![Value::Int(1)]));
    o.insert("ts", Value::Int(ts));
    let sig = key.sign(
        Domain::Descriptor,
        &canon::canonicalize(&Value::Object(o.clone())),
    );
    o.insert("sig", sig.to_hex().into());
    Value::Object(o)
}

/// A stranger relay at `host` asks `r` to peer; returns the answer.
async fn handshake_from(
    r: &TestRelay,
    host: &RelayHost,
    key: &SecretKey,
    peer: Option<SocketAddr>,
) -> Resp {
    let path = "/v1/federation/peers";
    let body = canon::canonicalize(&obj(vec![(
        "descriptor",
        descriptor_of(host, key, r.now()),
    )]));
    let mut nonce = [0u8; 16];
    rand_fill(&mut nonce);
    let h = RelayAuth::sign(
        key,
        host,
        &r.host(),
        r.now(),
        Nonce(nonce),
        &RequestTarget {
            method: "POST",
            path,
            body: &body,
        },
    );
    r.call_from(peer, "POST", path, &body, &[("authorization", h)])
        .await
}

fn rand_fill(b: &mut [u8]) {
    static N: AtomicUsize = AtomicUsize::new(1);
    let n = N.fetch_add(1, Ordering::SeqCst);
    b[..8].copy_from_slice(&(n as u64).to_le_bytes());
}

fn fed_relay(
    peering: &str,
    f: impl FnOnce(&mut formica_relay::engine::policy::FederationPolicy),
) -> TestRelay {
    relay_with(|c| {
        c.policy.federation.enabled = true;
        c.policy.federation.scheme = "http".into();
        c.policy.federation.peering = peering.into();
        c.policy.federation.request_timeout_ms = 3000;
        f(&mut c.policy.federation);
    })
}

/// Every request to a peer that is not on the allowlist goes only to public addresses, not just
/// the handshake's fetch: a peer whose name later resolves to an internal address (DNS
/// rebinding) gets nothing sent there. A listed host is reached wherever it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_requests_to_an_unlisted_peer_go_only_to_public_addresses() {
    let k = SecretKey::from_seed(&[17; 32]);
    let (host, hits) = stranger_relay(&k);
    for listed in [false, true] {
        let r = fed_relay("open", |f| {
            if listed {
                f.allowlist = vec![host.as_str().to_owned()];
            }
        });
        let app = r.relay.app.clone();
        let h = host.clone();
        let before = hits.load(Ordering::SeqCst);
        let res = app
            .fed
            .call("GET", &h, "/.well-known/formica", vec![], false)
            .await;
        assert_eq!(res.is_ok(), listed, "listed {listed}");
        let after = hits.load(Ordering::SeqCst);
        assert_eq!(after - before, usize::from(listed), "listed {listed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_naming_a_private_host_makes_no_request_and_learns_nothing() {
    for peering in ["open", "manual"] {
        let r = fed_relay(peering, |_| {});
        let key = SecretKey::from_seed(&[3; 32]);
        let (port, hits) = fake_server(http_answer("200 OK", b"{}"));
        for name in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
            let host = RelayHost::parse(&name).unwrap();
            let resp = handshake_from(&r, &host, &key, None).await;
            resp.expect(502, "peer_unavailable");
            let text = String::from_utf8_lossy(&resp.raw).into_owned();
            assert!(
                !text.contains("public") && !text.contains("resolve"),
                "{text}"
            );
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "{peering}: the relay connected"
        );
        assert!(r.state(|s| s.peers.is_empty()).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_answer_does_not_reflect_what_the_fetch_saw() {
    // Allowed to reach loopback, the relay fetches, but the caller learns only that no valid
    // descriptor came back.
    let r = fed_relay("open", |f| f.allow_private_peers = true);
    let key = SecretKey::from_seed(&[4; 32]);
    let (port, hits) = fake_server(http_answer(
        "500 Internal Server Error",
        b"SECRET-BANNER internal service v1.2",
    ));
    let host = RelayHost::parse(&format!("127.0.0.1:{port}")).unwrap();
    let resp = handshake_from(&r, &host, &key, None).await;
    resp.expect(502, "peer_unavailable");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let text = String::from_utf8_lossy(&resp.raw).into_owned();
    // (Not a bare "500": the port in the message may contain those digits.)
    assert!(
        !text.contains("SECRET")
            && !text.contains("answered 500")
            && !text.contains("Internal Server Error"),
        "{text}"
    );
    // Not JSON and a refused connection look the same to the caller.
    let (port2, _) = fake_server(http_answer("200 OK", b"<html>SECRET</html>"));
    let host2 = RelayHost::parse(&format!("127.0.0.1:{port2}")).unwrap();
    let a = handshake_from(&r, &host2, &key, None).await;
    a.expect(502, "peer_unavailable");
    assert!(!String::from_utf8_lossy(&a.raw).contains("SECRET"));
}

/// A stranger relay on loopback serving its own signed descriptor, and how often it was asked.
fn stranger_relay(k: &SecretKey) -> (RelayHost, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let host = RelayHost::parse(&format!("127.0.0.1:{port}")).unwrap();
    let d = canon::canonicalize(&descriptor_of(&host, k, T0));
    (host, serve_on(l, http_answer("200 OK", &d)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_hosts_may_be_private_and_pending_requests_are_capped() {
    let k1 = SecretKey::from_seed(&[5; 32]);
    let k2 = SecretKey::from_seed(&[6; 32]);
    let k3 = SecretKey::from_seed(&[7; 32]);
    let (h1, hits1) = stranger_relay(&k1);
    let (h2, hits2) = stranger_relay(&k2);
    let (h3, hits3) = stranger_relay(&k3);
    let listed = h3.as_str().to_owned();
    let r = fed_relay("manual", |f| {
        f.pending_peers_max = 1;
        f.allowlist = vec![listed];
    });
    // A listed host is fetched even on loopback, and accepted at once under manual peering.
    handshake_from(&r, &h3, &k3, None).await.expect(201, "");
    assert_eq!(hits3.load(Ordering::SeqCst), 1);
    // With allow_private_peers on, a stranger on loopback may ask; it waits for approval.
    let r = fed_relay("manual", |f| {
        f.pending_peers_max = 1;
        f.allow_private_peers = true;
    });
    let p = handshake_from(&r, &h1, &k1, None).await;
    p.expect(202, "");
    assert_eq!(p.str_("status"), "pending");
    // Asking again is not a new request.
    handshake_from(&r, &h1, &k1, None).await.expect(202, "");
    // The cap is reached: a second stranger is refused before anything is fetched for it.
    let before = hits2.load(Ordering::SeqCst);
    handshake_from(&r, &h2, &k2, None)
        .await
        .expect(403, "peer_unknown");
    assert_eq!(hits2.load(Ordering::SeqCst), before);
    assert!(hits1.load(Ordering::SeqCst) >= 1);
    assert_eq!(r.state(|s| s.peers.len()).await, 1);
}

/// The peer caps are applied by the writer too, so handshakes that pass the early check at the
/// same time cannot together go over them; the operator's own peerings are not capped.
#[tokio::test]
async fn peer_caps_hold_in_the_writer() {
    use formica_relay::engine::decide::{Command, Outcome};
    use formica_relay::engine::events::PeerStatus;
    for (peering, status) in [
        ("manual", PeerStatus::Pending),
        ("open", PeerStatus::Active),
    ] {
        let r = fed_relay(peering, |f| {
            f.pending_peers_max = 1;
            f.open_peers_max = 1;
        });
        let set = |i: u8, stranger: bool| Command::PeerSet {
            host: RelayHost::parse(&format!("relay-{i}.example")).unwrap(),
            key: SecretKey::from_seed(&[i; 32]).public(),
            status,
            stranger,
        };
        let w = r.relay.app.engine.writer.clone();
        assert!(matches!(w.submit(set(1, true)).await, Ok(Outcome::Done(_))));
        let refused = w.submit(set(2, true)).await.unwrap_err();
        assert_eq!(refused.code.as_str(), "peer_unknown", "{peering}");
        // A known peer may be set again, and the operator is not capped.
        assert!(w.submit(set(1, true)).await.is_ok());
        assert!(w.submit(set(3, false)).await.is_ok());
        assert_eq!(r.state(|s| s.peers.len()).await, 2, "{peering}");
    }
}

/// Under open peering, strangers can add at most `open_peers_max` peers; a new one beyond it is
/// refused before anything is fetched for it, and a known peer may still shake hands again.
#[tokio::test]
async fn open_peering_is_capped() {
    let k1 = SecretKey::from_seed(&[15; 32]);
    let k2 = SecretKey::from_seed(&[16; 32]);
    let (h1, _hits1) = stranger_relay(&k1);
    let (h2, hits2) = stranger_relay(&k2);
    let r = fed_relay("open", |f| {
        f.open_peers_max = 1;
        f.allow_private_peers = true;
    });
    handshake_from(&r, &h1, &k1, None).await.expect(201, "");
    handshake_from(&r, &h2, &k2, None)
        .await
        .expect(403, "peer_unknown");
    assert_eq!(
        hits2.load(Ordering::SeqCst),
        0,
        "nothing fetched for a refused stranger"
    );
    handshake_from(&r, &h1, &k1, None).await.expect(201, "");
    assert_eq!(r.state(|s| s.peers.len()).await, 1);
}

#[tokio::test]
async fn the_handshake_is_rate_limited_per_address() {
    let from = Some(SocketAddr::from(([192, 0, 2, 9], 5000)));
    let r = relay_with(|c| {
        c.policy.federation.enabled = true;
        c.policy.federation.peering = "open".into();
        c.policy.limits.ip_requests_per_min = 2;
    });
    let key = SecretKey::from_seed(&[8; 32]);
    let host = RelayHost::parse("relay-z.example").unwrap();
    // The first two are judged (and fail for other reasons); the third is refused at once.
    for _ in 0..2 {
        let a = handshake_from(&r, &host, &key, from).await;
        assert_ne!(a.code(), "rate_limited");
    }
    handshake_from(&r, &host, &key, from)
        .await
        .expect(429, "rate_limited");
}

// ------------------------------------------------------------------ outbound queue depth

#[tokio::test]
async fn a_full_peer_queue_refuses_new_envelopes_for_that_peer_at_ingest() {
    use formica_protocol::envelope::Payload;
    use formica_protocol::Handle;
    let r = fed_relay("allowlist", |f| f.queue_depth_max = 2);
    let peer = RelayHost::parse("relay-b.example").unwrap();
    r.relay
        .app
        .engine
        .writer
        .submit(formica_relay::engine::decide::Command::PeerSet {
            host: peer.clone(),
            key: SecretKey::from_seed(&[9; 32]).public(),
            status: formica_relay::engine::events::PeerStatus::Active,
            stranger: false,
        })
        .await
        .unwrap();
    let (a, b) = r.pair().await;
    let remote = Handle::parse("@nova@relay-b.example").unwrap();
    let send_remote = |n: u32| {
        a.envelope(
            &r,
            &[&remote],
            Payload::Message {
                text: format!("queued {n}"),
                data: None,
            },
        )
        .sign(&a.key)
        .unwrap()
    };
    // No forwarding worker runs in this harness: the queue only grows.
    for n in 0..2 {
        a.send(&r, &send_remote(n)).await.expect(201, "");
    }
    let refused = send_remote(2);
    let resp = a.send(&r, &refused).await;
    resp.expect(502, "peer_unavailable");
    assert_eq!(r.state(|s| s.queue_len(&peer)).await, 2);
    // Nothing of the refused envelope was accepted, for any recipient.
    let both = a
        .envelope(
            &r,
            &[&b.handle, &remote],
            Payload::Message {
                text: "to both".into(),
                data: None,
            },
        )
        .sign(&a.key)
        .unwrap();
    a.send(&r, &both).await.expect(502, "peer_unavailable");
    assert!(b.inbox(&r, 0).await.is_empty());
    let ts = refused.envelope().ts;
    assert!(
        {
            let id = refused.id();
            r.state(move |s| !s.seen(&id, ts))
        }
        .await
    );
    // Local delivery is unaffected.
    a.send(&r, &a.text(&r, &b.handle, "local"))
        .await
        .expect(201, "");
}

/// Regression: the challenge table evicted its oldest challenges when full (100,000), so a
/// client with many addresses could cancel other users' registrations in progress. Now one
/// address holds at most `limits.challenges_per_ip_max` open challenges (`rate_limited`), the
/// table at most `limits.challenges_max` (`unavailable`), and nothing open is dropped early.
#[tokio::test]
async fn challenges_are_capped_per_address_and_in_all_and_never_evicted() {
    let mut cfg = config(4);
    cfg.policy.limits.ip_requests_per_min = 1000;
    cfg.policy.limits.challenges_per_ip_max = 2;
    cfg.policy.limits.challenges_max = 3;
    let r = TestRelay::with(
        cfg,
        std::sync::Arc::new(formica_relay::store::MemStore::default()),
    );
    let from = |ip: &str| -> std::net::SocketAddr { format!("{ip}:5000").parse().unwrap() };
    let first = r
        .call_from(Some(from("192.0.2.1")), "POST", "/v1/challenges", b"", &[])
        .await;
    first.expect(201, "");
    let first = (
        first.str_("challenge").to_owned(),
        first.get("difficulty").as_i64().unwrap() as u32,
    );
    r.call_from(Some(from("192.0.2.1")), "POST", "/v1/challenges", b"", &[])
        .await
        .expect(201, "");
    // The address's third open challenge.
    let refused = r
        .call_from(Some(from("192.0.2.1")), "POST", "/v1/challenges", b"", &[])
        .await;
    refused.expect(429, "rate_limited");
    assert!(refused.raw.windows(13).any(|w| w == b"retry_after_s"));
    // Another address gets one; then the table is full for everyone.
    r.call_from(Some(from("192.0.2.2")), "POST", "/v1/challenges", b"", &[])
        .await
        .expect(201, "");
    r.call_from(Some(from("192.0.2.3")), "POST", "/v1/challenges", b"", &[])
        .await
        .expect(503, "unavailable");
    // The first challenge was not evicted: a registration can still use it.
    let key = r.fresh_key();
    let entry = r.register_entry("ann", &key);
    let handle = formica_protocol::Handle::parse(&format!("@ann@{}", r.host())).unwrap();
    let challenge = formica_protocol::pow::Challenge::parse_hex(&first.0).unwrap();
    let prefix = formica_protocol::pow::preimage_prefix(
        &r.host(),
        &handle,
        &key.public(),
        &challenge,
        first.1,
    );
    let nonce = formica_protocol::pow::mine(&prefix, first.1, 0, 1, 1 << 24).unwrap();
    let proof = formica_protocol::pow::PowProof {
        challenge,
        difficulty: first.1,
        nonce,
    };
    let mut body = Object::new();
    body.insert("entry", entry);
    body.insert("pow", proof.to_value());
    r.post("/v1/register", &Value::Object(body))
        .await
        .expect(201, "");
    // Its use freed a place; challenges that expire free theirs.
    r.call_from(Some(from("192.0.2.3")), "POST", "/v1/challenges", b"", &[])
        .await
        .expect(201, "");
    r.advance(config(4).policy.limits.challenge_ttl_ms + 1);
    for ip in ["192.0.2.1", "192.0.2.1", "192.0.2.4"] {
        r.call_from(Some(from(ip)), "POST", "/v1/challenges", b"", &[])
            .await
            .expect(201, "");
    }
}
