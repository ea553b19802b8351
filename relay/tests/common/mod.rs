//! Test harness for the relay without sockets: a relay over an in-memory store with a clock the
//! test controls, called through `Router::oneshot`, and agents that register, sign and
//! authenticate the way a real client does (through the protocol crate only).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::Request;
use formica_protocol::auth::{Nonce, RequestAuth, RequestTarget};
use formica_protocol::envelope::*;
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::keylog::{KeyLogEntry, KeyOp, SignedKeyLogEntry};
use formica_protocol::{canon, pow, Handle, Object, RelayHost, SecretKey, Value};
use formica_relay::config::{Overrides, RelayConfig};
use formica_relay::store::{MemStore, Store};
use formica_relay::Relay;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use tower::ServiceExt;

pub const HOST: &str = "relay-a.test";
pub const T0: i64 = 1_800_000_000_000;

pub struct TestRelay {
    pub relay: Relay,
    pub router: axum::Router,
    pub now: Arc<AtomicI64>,
    pub store: Arc<MemStore>,
    seeds: AtomicU64,
}

pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body
            .as_object()
            .and_then(|o| o.get("error"))
            .and_then(|e| e.as_object())
            .and_then(|e| e.get("code"))
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub fn get(&self, k: &str) -> &Value {
        self.body
            .as_object()
            .and_then(|o| o.get(k))
            .unwrap_or_else(|| panic!("no {k} in {}", String::from_utf8_lossy(&self.raw)))
    }
    pub fn str_(&self, k: &str) -> &str {
        self.get(k).as_str().unwrap()
    }
    /// The `field` member of an error answer ("" when absent).
    pub fn field_of_error(&self) -> &str {
        field(&self.body, &["error", "field"])
            .as_str()
            .unwrap_or("")
    }
    #[track_caller]
    pub fn expect(&self, status: u16, code: &str) -> &Self {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "body: {}",
            String::from_utf8_lossy(&self.raw)
        );
        self
    }
}

pub fn config(pow_difficulty: u32) -> RelayConfig {
    let mut cfg = RelayConfig::load(
        None,
        Overrides {
            public_host: Some(HOST.into()),
            pow_difficulty: Some(pow_difficulty),
            ..Default::default()
        },
    )
    .unwrap();
    cfg.policy.limits.ip_requests_per_min = 1_000_000;
    cfg
}

impl TestRelay {
    pub fn new() -> TestRelay {
        TestRelay::with(config(4), Arc::new(MemStore::default()))
    }

    pub fn with(cfg: RelayConfig, store: Arc<MemStore>) -> TestRelay {
        TestRelay::on(cfg, store.clone() as Arc<dyn Store>, store)
    }

    /// A relay on any store (a file store with faults, say); `store` in the result is then an
    /// unused memory store.
    pub fn on_store(cfg: RelayConfig, store: Arc<dyn Store>) -> TestRelay {
        TestRelay::on(cfg, store, Arc::new(MemStore::default()))
    }

    fn on(cfg: RelayConfig, store: Arc<dyn Store>, mem: Arc<MemStore>) -> TestRelay {
        let now = Arc::new(AtomicI64::new(T0));
        let n = now.clone();
        let clock: formica_relay::engine::Clock = Arc::new(move || n.load(Ordering::SeqCst));
        let relay = Relay::with_store(
            &cfg,
            &RelayHost::parse(HOST).unwrap(),
            store,
            SecretKey::from_seed(&[0x99; 32]),
            clock,
        )
        .unwrap();
        let store = mem;
        let router = formica_relay::http::router(relay.app.clone());
        TestRelay {
            relay,
            router,
            now,
            store,
            seeds: AtomicU64::new(1),
        }
    }

    pub fn host(&self) -> RelayHost {
        RelayHost::parse(HOST).unwrap()
    }

    pub fn now(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    pub fn advance(&self, ms: i64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &[(&str, String)],
    ) -> Resp {
        self.call_from(None, method, path, body, headers).await
    }

    /// Like `call`, as if the TCP peer were `peer`.
    pub async fn call_from(
        &self,
        peer: Option<std::net::SocketAddr>,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &[(&str, String)],
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(p) = peer {
            b = b.extension(axum::extract::ConnectInfo(p));
        }
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let resp = self
            .router
            .clone()
            .oneshot(b.body(Body::from(body.to_vec())).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let raw = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .unwrap()
            .to_vec();
        let body = if raw.is_empty() {
            Value::Null
        } else {
            json::parse(
                &raw,
                JsonLimits {
                    bytes_max: 64 << 20,
                    depth_max: 64,
                },
            )
            .unwrap_or(Value::Null)
        };
        Resp { status, body, raw }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call("GET", path, b"", &[]).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.call("POST", path, &canon::canonicalize(body), &[])
            .await
    }

    pub fn fresh_key(&self) -> SecretKey {
        let n = self.seeds.fetch_add(1, Ordering::SeqCst);
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&n.to_le_bytes());
        seed[31] = 0x5a;
        SecretKey::from_seed(&seed)
    }

    /// The register body for `name` with a valid proof-of-work on a fresh challenge.
    pub async fn register_body(
        &self,
        name: &str,
        key: &SecretKey,
        recovery: Option<&SecretKey>,
    ) -> Value {
        let ch = self
            .post("/v1/challenges", &Value::Object(Object::new()))
            .await;
        assert_eq!(ch.status, 201);
        let challenge = pow::Challenge::parse_hex(ch.str_("challenge")).unwrap();
        let difficulty = ch.get("difficulty").as_i64().unwrap() as u32;
        let handle = Handle::parse(&format!("@{name}@{HOST}")).unwrap();
        let entry = KeyLogEntry {
            handle: handle.clone(),
            seq: 0,
            prev: None,
            ts: self.now(),
            op: KeyOp::Register {
                key: key.public(),
                recovery: recovery.map(|r| r.public()),
            },
            signer: key.public().key_id(),
        }
        .sign(key, recovery.as_slice())
        .unwrap();
        let prefix =
            pow::preimage_prefix(&self.host(), &handle, &key.public(), &challenge, difficulty);
        let nonce = pow::mine(&prefix, difficulty, 0, 1, 1 << 24).unwrap();
        let proof = pow::PowProof {
            challenge,
            difficulty,
            nonce,
        };
        obj(vec![
            ("entry", entry.value().clone()),
            ("pow", proof.to_value()),
        ])
    }

    /// A register entry for `name` signed now (the proof-of-work does not cover the timestamp).
    pub fn register_entry(&self, name: &str, key: &SecretKey) -> Value {
        let handle = Handle::parse(&format!("@{name}@{HOST}")).unwrap();
        KeyLogEntry {
            handle,
            seq: 0,
            prev: None,
            ts: self.now(),
            op: KeyOp::Register {
                key: key.public(),
                recovery: None,
            },
            signer: key.public().key_id(),
        }
        .sign(key, &[])
        .unwrap()
        .value()
        .clone()
    }

    pub async fn agent(&self, name: &str) -> Agent {
        let key = self.fresh_key();
        let recovery = self.fresh_key();
        let body = self.register_body(name, &key, Some(&recovery)).await;
        self.post("/v1/register", &body).await.expect(201, "");
        Agent {
            handle: Handle::parse(&format!("@{name}@{HOST}")).unwrap(),
            key,
            recovery,
            nonce: AtomicU64::new(1),
        }
    }

    /// Registers two agents where `b` accepts messages (and tasks) from `a`.
    pub async fn pair(&self) -> (Agent, Agent) {
        let a = self.agent("alice").await;
        let b = self.agent("bob").await;
        b.put_contact(self, &a.handle, "task").await.expect(200, "");
        (a, b)
    }

    pub async fn state<R>(&self, f: impl FnOnce(&formica_relay::engine::state::State) -> R) -> R {
        let st = self.relay.app.engine.read();
        f(&st)
    }
}

pub fn obj(members: Vec<(&str, Value)>) -> Value {
    let mut o = Object::new();
    for (k, v) in members {
        o.insert(k, v);
    }
    Value::Object(o)
}

pub struct Agent {
    pub handle: Handle,
    pub key: SecretKey,
    pub recovery: SecretKey,
    nonce: AtomicU64,
}

impl Agent {
    pub fn new(handle: Handle, key: SecretKey, recovery: SecretKey) -> Agent {
        Agent {
            handle,
            key,
            recovery,
            nonce: AtomicU64::new(1),
        }
    }

    pub fn envelope(&self, r: &TestRelay, to: &[&Handle], payload: Payload) -> Envelope {
        let msg_type = match &payload {
            Payload::Message { .. } => MessageType::Message,
            Payload::TaskRequest { .. } => MessageType::TaskRequest,
            Payload::TaskResult { .. } => MessageType::TaskResult,
            Payload::Ack { .. } => MessageType::Ack,
            Payload::ContactRequest { .. } => MessageType::ContactRequest,
            Payload::Vouch { .. } => MessageType::Vouch,
            Payload::Report { .. } => MessageType::Report,
            Payload::Receipt { .. } => MessageType::Receipt,
            Payload::Call { .. } => MessageType::Call,
            Payload::ConvAction { .. } => MessageType::ConvAction,
            Payload::Extension(_) => MessageType::Extension("x-test".into()),
            Payload::Sealed(_) => panic!("build a sealed envelope with formica_protocol::seal"),
        };
        Envelope {
            msg_type,
            type_version: 1,
            from: self.handle.clone(),
            key: self.key.public().key_id(),
            to: to.iter().map(|h| (*h).clone()).collect(),
            ts: r.now(),
            corr: None,
            ack_by: None,
            conv: None,
            payload,
        }
    }

    pub fn text(&self, r: &TestRelay, to: &Handle, text: &str) -> SignedEnvelope {
        self.envelope(
            r,
            &[to],
            Payload::Message {
                text: text.into(),
                data: None,
            },
        )
        .sign(&self.key)
        .unwrap()
    }

    pub async fn send(&self, r: &TestRelay, se: &SignedEnvelope) -> Resp {
        r.call("POST", "/v1/envelopes", &se.wire_bytes(), &[]).await
    }

    pub fn auth(
        &self,
        r: &TestRelay,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> (&'static str, String) {
        let n = self.nonce.fetch_add(1, Ordering::SeqCst);
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&n.to_le_bytes());
        nonce[8..].copy_from_slice(&self.key.public().key_id().0[..8]);
        let h = RequestAuth::sign(
            &self.key,
            &self.handle,
            r.now(),
            Nonce(nonce),
            &RequestTarget { method, path, body },
            &r.host(),
        );
        ("authorization", h)
    }

    pub async fn authed(&self, r: &TestRelay, method: &str, path: &str, body: &[u8]) -> Resp {
        let h = self.auth(r, method, path, body);
        r.call(method, path, body, &[(h.0, h.1)]).await
    }

    pub async fn put_contact(&self, r: &TestRelay, who: &Handle, level: &str) -> Resp {
        let body = canon::canonicalize(&obj(vec![("level", level.into())]));
        self.authed(r, "PUT", &format!("/v1/contacts/{who}"), &body)
            .await
    }

    pub async fn inbox(&self, r: &TestRelay, after: u64) -> Vec<Value> {
        let resp = self
            .authed(r, "GET", &format!("/v1/inbox?after={after}"), b"")
            .await;
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
        resp.get("items").as_array().unwrap().to_vec()
    }

    pub async fn status(&self, r: &TestRelay, id: &MessageId) -> Resp {
        self.authed(r, "GET", &format!("/v1/messages/{id}"), b"")
            .await
    }

    /// A signed key log entry extending this agent's log at the relay, with the proofs of
    /// possession made by `holders`, the secret keys of the keys `op` introduces (LOG-2).
    pub async fn next_entry(
        &self,
        r: &TestRelay,
        op: KeyOp,
        signer: &SecretKey,
        holders: &[&SecretKey],
    ) -> SignedKeyLogEntry {
        // Key log timestamps must increase.
        r.advance(1);
        let st = r.relay.app.engine.read();
        let (seq, prev) = st.agents[&self.handle].keylog.next_position();
        drop(st);
        KeyLogEntry {
            handle: self.handle.clone(),
            seq,
            prev: Some(prev),
            ts: r.now(),
            op,
            signer: signer.public().key_id(),
        }
        .sign(signer, holders)
        .unwrap()
    }
}

/// The envelope inside an inbox item.
pub fn item_env(item: &Value) -> &Value {
    item.as_object().unwrap().get("envelope").unwrap()
}

pub fn field<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for k in path {
        cur = cur
            .as_object()
            .and_then(|o| o.get(k))
            .unwrap_or_else(|| panic!("no {k} in {v:?}"));
    }
    cur
}
