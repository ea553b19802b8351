//! Fuzz target for the relay's HTTP body handling: arbitrary bytes are posted to five endpoints
//! that read a body (envelope, batch, registration, key log entry, challenge; not the contacts
//! endpoint, not the federation endpoints) on an in-process relay over an in-memory store, through the same router that serves real requests. Besides
//! "never panics", every answer must be a 2xx or a JSON error body whose code is in the registry
//! and whose status is the registry's status for it.
//!
//! Raw bytes almost never carry a valid signature, so they stop at the parser and the signature
//! check. To reach what lies behind them (policy, contacts, tiers, acks, receipts, the writer),
//! two more modes take the body as an envelope's fields and sign it as one of two agents
//! registered on the relay when the fixture starts (`@alice` and `@bob`, contacts of each other
//! at the `task` level): `from`, `key` and `ts` are set to the agent's and the current time, `id`
//! and `sig` are replaced, and an integer `ack_by` is taken as milliseconds from now (modulo a
//! day) so that deadlines are neither always past nor always far. The signed envelope is then
//! posted like any other.
//!
//! Input layout: the first byte picks the mode (`PATHS` then the two signing modes), the rest is
//! the body.
//!
//! The relay lives for the whole run and uses the system clock, so an answer can depend on what
//! earlier inputs stored and on the time: a crash found here may need the inputs before it (the
//! corpus, in order) to reproduce, and the signing modes re-sign with the current time.
#![no_main]

use axum::body::Body;
use axum::http::Request;
use formica_protocol::auth::{Nonce, RequestAuth, RequestTarget};
use formica_protocol::envelope::{EnvelopeLimits, SignedEnvelope};
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::keylog::{KeyLogEntry, KeyOp};
use formica_protocol::{canon, pow, ErrorCode, Handle, Object, RelayHost, SecretKey, Value};
use formica_relay::config::{Overrides, RelayConfig};
use formica_relay::store::{MemStore, Store};
use formica_relay::Relay;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

const HOST: &str = "relay-a.example";

struct Agent {
    handle: Handle,
    key: SecretKey,
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    alice: Agent,
    bob: Agent,
    _relay: Relay,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Sends one request through the router and returns the status and the body.
async fn call(router: &axum::Router, method: &str, path: &str, body: Vec<u8>, auth: Option<String>) -> (u16, Vec<u8>) {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(h) = auth {
        b = b.header("authorization", h);
    }
    let resp = router.clone().oneshot(b.body(Body::from(body)).expect("request")).await.expect("infallible");
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await.expect("body");
    (status, bytes.to_vec())
}

fn parse_answer(bytes: &[u8]) -> Value {
    json::parse(bytes, JsonLimits { bytes_max: 16 << 20, depth_max: 64 }).expect("an answer is strict JSON")
}

/// Registers `name` the way a client does: a challenge, proof-of-work, a signed register entry.
async fn register(router: &axum::Router, name: &str, seed: u8) -> Agent {
    let key = SecretKey::from_seed(&[seed; 32]);
    let handle = Handle::parse(&format!("@{name}@{HOST}")).expect("handle");
    let host = RelayHost::parse(HOST).expect("host");
    let (status, body) = call(router, "POST", "/v1/challenges", b"{}".to_vec(), None).await;
    assert_eq!(status, 201, "challenge: {}", String::from_utf8_lossy(&body));
    let v = parse_answer(&body);
    let o = v.as_object().expect("object");
    let challenge = pow::Challenge::parse_hex(o.get("challenge").and_then(Value::as_str).expect("challenge"))
        .expect("challenge hex");
    let difficulty = o.get("difficulty").and_then(Value::as_i64).expect("difficulty") as u32;
    let entry = KeyLogEntry {
        handle: handle.clone(),
        seq: 0,
        prev: None,
        ts: now_ms(),
        op: KeyOp::Register { key: key.public(), recovery: None },
        signer: key.public().key_id(),
    }
    .sign(&key);
    let prefix = pow::preimage_prefix(&host, &handle, &key.public(), &challenge, difficulty);
    let nonce = pow::mine(&prefix, difficulty, 0, 1, 1 << 24).expect("proof-of-work");
    let proof = pow::PowProof { challenge, difficulty, nonce };
    let mut reg = Object::new();
    reg.insert("entry", entry.value().clone());
    reg.insert("pow", proof.to_value());
    let (status, body) = call(router, "POST", "/v1/register", canon::canonicalize(&Value::Object(reg)), None).await;
    assert_eq!(status, 201, "register: {}", String::from_utf8_lossy(&body));
    Agent { handle, key }
}

/// `who` grants `other` the `task` level.
async fn grant(router: &axum::Router, who: &Agent, other: &Agent, nonce: u8) {
    let host = RelayHost::parse(HOST).expect("host");
    let path = format!("/v1/contacts/{}", other.handle);
    let body = br#"{"level":"task"}"#.to_vec();
    let header = RequestAuth::sign(
        &who.key,
        &who.handle,
        now_ms(),
        Nonce([nonce; 16]),
        &RequestTarget { method: "PUT", path: &path, body: &body },
        &host,
    );
    let (status, answer) = call(router, "PUT", &path, body, Some(header)).await;
    assert_eq!(status, 200, "contact: {}", String::from_utf8_lossy(&answer));
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let mut cfg = RelayConfig::load(
            None,
            Overrides { public_host: Some(HOST.into()), pow_difficulty: Some(1), ..Default::default() },
        )
        .expect("config");
        // The two agents send far more than a real agent may; without this almost every signed
        // input would stop at the rate limiter after the first seconds.
        for t in &mut cfg.policy.tiers {
            t.rate_per_min = 1_000_000_000;
            t.contact_requests_per_hour = 1_000_000_000;
        }
        // Nobody reads the two inboxes: with the default cap (10,000 unread items) every
        // signed input would stop at inbox_full a few minutes into a run. Memory grows with
        // what is accepted instead (run with -rss_limit_mb=4096, FUZZING.md).
        cfg.policy.limits.inbox_pending_max = 100_000_000;
        let host = RelayHost::parse(HOST).expect("host");
        let relay = rt.block_on(async {
            Relay::with_store(
                &cfg,
                &host,
                Arc::new(MemStore::default()) as Arc<dyn Store>,
                SecretKey::from_seed(&[9; 32]),
                formica_relay::writer::system_clock(),
            )
            .expect("relay")
        });
        let router = formica_relay::api::router(relay.app.clone());
        let (alice, bob) = rt.block_on(async {
            let alice = register(&router, "alice", 1).await;
            let bob = register(&router, "bob", 2).await;
            grant(&router, &alice, &bob, 1).await;
            grant(&router, &bob, &alice, 2).await;
            (alice, bob)
        });
        Fixture { rt, router, alice, bob, _relay: relay }
    })
}

const PATHS: [&str; 5] = [
    "/v1/envelopes",
    "/v1/envelopes/batch",
    "/v1/register",
    "/v1/keys/@alice",
    "/v1/challenges",
];

/// The body as an envelope signed by `agent` now, or `None` if it does not read as one.
fn sign_as(agent: &Agent, body: &[u8]) -> Option<Vec<u8>> {
    let Ok(Value::Object(mut o)) = json::parse(body, JsonLimits::default()) else { return None };
    let now = now_ms();
    o.remove("id");
    o.insert("from", Value::from(agent.handle.to_string()));
    o.insert("key", Value::from(agent.key.public().key_id().to_string()));
    o.insert("ts", Value::Int(now));
    o.insert("sig", Value::from("00".repeat(64)));
    if let Some(n) = o.get("ack_by").and_then(Value::as_i64) {
        o.insert("ack_by", Value::Int(now + n.rem_euclid(86_400_000)));
    }
    let se = SignedEnvelope::from_value(Value::Object(o), &EnvelopeLimits::default()).ok()?;
    let signed = se.envelope().sign(&agent.key).ok()?;
    Some(signed.wire_bytes())
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let f = fixture();
    let mode = usize::from(selector) % (PATHS.len() + 2);
    let (path, body) = match mode {
        m if m < PATHS.len() => (PATHS[m], body.to_vec()),
        m => {
            let agent = if m == PATHS.len() { &f.alice } else { &f.bob };
            match sign_as(agent, body) {
                Some(wire) => ("/v1/envelopes", wire),
                None => return,
            }
        }
    };
    let (status, bytes) = f.rt.block_on(call(&f.router, "POST", path, body, None));
    if (200..300).contains(&status) {
        return;
    }
    let v = parse_answer(&bytes);
    let code = v
        .as_object()
        .and_then(|o| o.get("error"))
        .and_then(Value::as_object)
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .and_then(ErrorCode::from_wire)
        .expect("an error answer carries a registered code");
    assert_eq!(code.http_status(), status, "status of {code} on {path} (mode {mode})");
});
