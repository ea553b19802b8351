//! Fuzz target for the relay's HTTP body handling: arbitrary bytes are posted to five endpoints
//! that read a body (envelope, batch, registration, key log entry, challenge; not the contacts
//! endpoint, not the federation endpoints) on an in-process relay over an in-memory store,
//! through the same router that serves real requests. Besides "never panics", every answer must
//! be a 2xx or a JSON error body whose code is in the registry and whose status is the
//! registry's status for it.
//!
//! **One input, one relay.** Every input starts from the same relay state, on a fresh relay,
//! with a clock that only the input moves, so what an input reaches depends on the input: a
//! crash reproduces from its one input, and replaying the corpus reaches what the corpus
//! reached. The state is built once per process (each input's relay gets a copy of its log in a
//! new in-memory store and a copy of the state replayed from it): three agents registered at the
//! vectors' time origin `T0` = `1764000000000`, namely `@alice` with the vectors' key for alice
//! (so the vectors' envelopes from alice carry valid signatures), `@kevin` with the first entry
//! of the longest valid key log of the vectors (so the later entries of the logs that start with
//! it can be posted to `/v1/keys/@kevin`) and `@bob` with a key of its own; alice and bob are
//! contacts of each other at the `task` level. Each input's clock starts at `T0 + 90 s`, inside
//! the freshness window of the vectors' timestamps. What still varies between two executions of
//! one input: hash table probing (the standard library seeds each map's hasher at random), the
//! writer's batching (it lingers by wall-clock time) and the bytes of the challenges the relay
//! issues (from the OS's random source, in the fixed state as well). None of these changes an
//! answer; but since no input can know a challenge, no input can complete a registration.
//!
//! **Input layout.** Up to `RECORDS_MAX` records separated by the 4 bytes `SEP`, run in order on
//! the input's relay (records after the 16th are ignored, empty records skipped). A record's
//! first byte modulo 8 picks the mode, the rest is its body:
//! - modes 0 to 4 post the body to `PATHS[mode]`;
//! - modes 5 and 6 read the body as an envelope's fields and sign it as `@alice` (5) or `@bob`
//!   (6), so that it passes the signature check and reaches policy, contacts, acks, receipts and
//!   the writer: `from`, `key` and `ts` are set to the agent's and the clock's, `id` and `sig`
//!   are replaced, an integer `ack_by` is taken as milliseconds after `ts` (modulo a day), and a
//!   string `"$k"` (k a digit) at the first level of `payload` becomes the id in the k-th (from
//!   0) 2xx answer of `/v1/envelopes` in this input (accepted or duplicate; envelopes accepted
//!   through the batch endpoint are not counted), so an ack can name a message sent before it;
//! - mode 7 moves the clock forward by the body's first 4 bytes (little-endian, modulo 8 days)
//!   and asks the writer to settle what is due, as the relay's deadline task does: deadlines
//!   that passed time out (dead letters are not reached: federation is off and has no peers).
#![no_main]

use axum::body::Body;
use axum::http::Request;
use formica_protocol::auth::{Nonce, RequestAuth, RequestTarget};
use formica_protocol::envelope::{EnvelopeLimits, SignedEnvelope};
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::keylog::{KeyLogEntry, KeyOp, SignedKeyLogEntry};
use formica_protocol::{canon, pow, ErrorCode, Handle, Object, RelayHost, SecretKey, Value};
use formica_relay::config::{Overrides, RelayConfig};
use formica_relay::store::{EventLog, MemStore, Store};
use formica_relay::engine::Clock;
use formica_relay::Relay;
use libfuzzer_sys::fuzz_target;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

const HOST: &str = "relay-a.example";
/// The vectors' time origin (`tests/gen_vectors.rs`).
const T0: i64 = 1_764_000_000_000;
/// The clock while the fixed state is built.
const BASE_NOW: i64 = T0 + 1_000;
/// Each input's clock at its start.
const INPUT_NOW: i64 = T0 + 90_000;
/// Separates the records of one input.
const SEP: [u8; 4] = *b"\xffNXT";
const RECORDS_MAX: usize = 16;
/// One mode 7 record moves the clock by less than this.
const ADVANCE_MAX_MS: u32 = 8 * 86_400_000;

const PATHS: [&str; 5] = [
    "/v1/envelopes",
    "/v1/envelopes/batch",
    "/v1/register",
    "/v1/keys/@kevin",
    "/v1/challenges",
];
const MODES: usize = PATHS.len() + 3;

struct Agent {
    handle: Handle,
    key: SecretKey,
}

/// Built once per process: the configuration, the log records of the fixed state and the agents
/// the signing modes sign as.
struct Base {
    rt: tokio::runtime::Runtime,
    /// The relay's routes, built once and bound to each input's relay (building them was a fifth
    /// of an input's time).
    routes: axum::Router<formica_relay::http::Shared>,
    cfg: RelayConfig,
    host: RelayHost,
    relay_key: SecretKey,
    records: Vec<Vec<u8>>,
    /// The state replayed from `records`, copied into each input's relay.
    state: formica_relay::engine::state::State,
    alice: Agent,
    bob: Agent,
    /// `RELAY_HTTP_TRACE` set: print each record's request and answer (to read what a crash or
    /// a seed does).
    trace: bool,
}

fn fixed_clock(at: &Arc<AtomicI64>) -> Clock {
    let at = at.clone();
    Arc::new(move || at.load(Ordering::SeqCst))
}

/// The vectors' key `sk(start)`: seed bytes `start, start+1, ...`.
fn vector_key(start: u8) -> SecretKey {
    SecretKey::from_seed(&std::array::from_fn(|k| start.wrapping_add(k as u8)))
}

/// Sends one request through the router and returns the status and the body.
async fn call(
    router: &axum::Router,
    method: &str,
    path: &str,
    body: Vec<u8>,
    auth: Option<String>,
) -> (u16, Vec<u8>) {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(h) = auth {
        b = b.header("authorization", h);
    }
    let resp = router
        .clone()
        .oneshot(b.body(Body::from(body)).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .expect("body");
    (status, bytes.to_vec())
}

fn parse_answer(bytes: &[u8]) -> Value {
    json::parse(
        bytes,
        JsonLimits {
            bytes_max: 16 << 20,
            depth_max: 64,
        },
    )
    .expect("an answer is strict JSON")
}

/// Registers the log that `entry` starts, the way a client does: a challenge, proof-of-work,
/// the signed register entry.
async fn register(router: &axum::Router, host: &RelayHost, entry: SignedKeyLogEntry) {
    let (status, body) = call(router, "POST", "/v1/challenges", b"{}".to_vec(), None).await;
    assert_eq!(status, 201, "challenge: {}", String::from_utf8_lossy(&body));
    let v = parse_answer(&body);
    let o = v.as_object().expect("object");
    let challenge = pow::Challenge::parse_hex(
        o.get("challenge")
            .and_then(Value::as_str)
            .expect("challenge"),
    )
    .expect("challenge hex");
    let difficulty = o
        .get("difficulty")
        .and_then(Value::as_i64)
        .expect("difficulty") as u32;
    let KeyOp::Register { key, .. } = &entry.entry().op else {
        panic!("not a register entry")
    };
    let prefix = pow::preimage_prefix(host, &entry.entry().handle, key, &challenge, difficulty);
    let nonce = pow::mine(&prefix, difficulty, 0, 1, 1 << 24).expect("proof-of-work");
    let proof = pow::PowProof {
        challenge,
        difficulty,
        nonce,
    };
    let mut reg = Object::new();
    reg.insert("entry", entry.value().clone());
    reg.insert("pow", proof.to_value());
    let (status, body) = call(
        router,
        "POST",
        "/v1/register",
        canon::canonicalize(&Value::Object(reg)),
        None,
    )
    .await;
    assert_eq!(
        status,
        201,
        "register {}: {}",
        entry.entry().handle,
        String::from_utf8_lossy(&body)
    );
}

async fn register_agent(
    router: &axum::Router,
    host: &RelayHost,
    name: &str,
    key: SecretKey,
) -> Agent {
    let handle = Handle::parse(&format!("@{name}@{HOST}")).expect("handle");
    let entry = KeyLogEntry {
        handle: handle.clone(),
        seq: 0,
        prev: None,
        ts: T0,
        op: KeyOp::Register {
            key: key.public(),
            recovery: None,
        },
        signer: key.public().key_id(),
    }
    .sign(&key, &[])
    .expect("a register entry without a recovery key needs no proof but its signature");
    register(router, host, entry).await;
    Agent { handle, key }
}

/// `who` grants `other` the `task` level.
async fn grant(router: &axum::Router, host: &RelayHost, who: &Agent, other: &Agent, nonce: u8) {
    let path = format!("/v1/contacts/{}", other.handle);
    let body = br#"{"level":"task"}"#.to_vec();
    let header = RequestAuth::sign(
        &who.key,
        &who.handle,
        BASE_NOW,
        Nonce([nonce; 16]),
        &RequestTarget {
            method: "PUT",
            path: &path,
            body: &body,
        },
        host,
    );
    let (status, answer) = call(router, "PUT", &path, body, Some(header)).await;
    assert_eq!(status, 200, "contact: {}", String::from_utf8_lossy(&answer));
}

/// The first entry of the longest valid key log of the vectors (kevin's, with a recovery key).
fn kevin_register_entry() -> SignedKeyLogEntry {
    let text = include_bytes!("../../vectors/keylogs.json");
    let v = json::parse(
        text,
        JsonLimits {
            bytes_max: 1 << 20,
            depth_max: 64,
        },
    )
    .expect("keylogs.json");
    let valid = v
        .as_object()
        .and_then(|o| o.get("valid"))
        .and_then(Value::as_array)
        .expect("valid cases");
    let entries = valid
        .iter()
        .filter_map(|c| {
            c.as_object()
                .and_then(|o| o.get("entries"))
                .and_then(Value::as_array)
        })
        .max_by_key(|e| e.len())
        .expect("a valid case");
    SignedKeyLogEntry::from_value(entries[0].clone()).expect("a valid register entry")
}

fn base() -> &'static Base {
    static B: OnceLock<Base> = OnceLock::new();
    B.get_or_init(|| {
        // Timers only (the body read deadline): without the I/O driver, the runtime parks on a
        // condition variable while it waits for the writer thread, not in `epoll_wait`, whose
        // interruption by libFuzzer's alarm signal was a code path that timing, not the input,
        // chose.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let mut cfg = RelayConfig::load(
            None,
            Overrides {
                public_host: Some(HOST.into()),
                pow_difficulty: Some(1),
                ..Default::default()
            },
        )
        .expect("config");
        // Sixteen records can exceed what a new agent may send in a minute; the rate limiter has
        // its own tests, and here it would stop most of a multi-record input.
        for t in &mut cfg.policy.tiers {
            t.rate_per_min = 1_000_000_000;
            t.contact_requests_per_hour = 1_000_000_000;
        }
        let host = RelayHost::parse(HOST).expect("host");
        let relay_key = vector_key(0x41);
        let store = Arc::new(MemStore::default());
        let now = Arc::new(AtomicI64::new(BASE_NOW));
        let relay = Relay::with_store(
            &cfg,
            &host,
            store.clone() as Arc<dyn Store>,
            relay_key.clone(),
            fixed_clock(&now),
        )
        .expect("relay");
        let router = formica_relay::http::router(relay.app.clone());
        let (alice, bob) = rt.block_on(async {
            let alice = register_agent(&router, &host, "alice", vector_key(1)).await;
            // A key no vector uses (kevin's recovery key is sk(0x61)).
            let bob = register_agent(&router, &host, "bob", vector_key(0x81)).await;
            register(&router, &host, kevin_register_entry()).await;
            grant(&router, &host, &alice, &bob, 1).await;
            grant(&router, &host, &bob, &alice, 2).await;
            (alice, bob)
        });
        drop(router);
        shut_down(&rt, relay);
        let mut records = Vec::new();
        store
            .scan(1, u64::MAX, &mut |_, r| {
                records.push(r.to_vec());
                Ok(())
            })
            .expect("scan");
        let (_, state) = formica_relay::engine::replay::replay(store, &host).expect("replay");
        let trace = std::env::var_os("RELAY_HTTP_TRACE").is_some();
        Base {
            rt,
            routes: formica_relay::http::routes(),
            cfg,
            host,
            relay_key,
            records,
            state,
            alice,
            bob,
            trace,
        }
    })
}

/// Drops the relay and waits for its writer thread. Tasks a handler spawned (a key log push to
/// the peers, of which there are none) hold the relay until they have run, so the runtime is
/// driven until they have.
fn shut_down(rt: &tokio::runtime::Runtime, relay: Relay) {
    let Relay { app, writer_thread, .. } = relay;
    for _ in 0..1000 {
        if Arc::strong_count(&app) == 1 {
            break;
        }
        rt.block_on(tokio::task::yield_now());
    }
    assert_eq!(Arc::strong_count(&app), 1, "a task still holds the relay");
    drop(app);
    writer_thread
        .join()
        .expect("the writer thread ended cleanly");
}

/// The body as an envelope signed by `agent` at `now`, or `None` if it does not read as one.
fn sign_as(agent: &Agent, body: &[u8], now: i64, ids: &[String]) -> Option<Vec<u8>> {
    let Ok(Value::Object(mut o)) = json::parse(body, JsonLimits::default()) else {
        return None;
    };
    o.remove("id");
    o.insert("from", Value::from(agent.handle.to_string()));
    o.insert("key", Value::from(agent.key.public().key_id().to_string()));
    o.insert("ts", Value::Int(now));
    o.insert("sig", Value::from("00".repeat(64)));
    if let Some(n) = o.get("ack_by").and_then(Value::as_i64) {
        o.insert("ack_by", Value::Int(now + n.rem_euclid(86_400_000)));
    }
    if let Some(Value::Object(p)) = o.get("payload") {
        let mut p = p.clone();
        let refs: Vec<(String, String)> = p
            .iter()
            .filter_map(|(k, v)| {
                let s = v.as_str()?.strip_prefix('$')?;
                let i: usize = s.parse().ok().filter(|_| s.len() == 1)?;
                Some((k.to_string(), ids.get(i)?.clone()))
            })
            .collect();
        for (k, id) in refs {
            p.insert(k, Value::from(id));
        }
        o.insert("payload", Value::Object(p));
    }
    let se = SignedEnvelope::from_value(Value::Object(o), &EnvelopeLimits::default()).ok()?;
    let signed = se.envelope().sign(&agent.key).ok()?;
    Some(signed.wire_bytes())
}

/// Checks an error answer: strict JSON, a registered code, that code's status.
fn check_error(status: u16, bytes: &[u8], what: &str) {
    let v = parse_answer(bytes);
    let code = v
        .as_object()
        .and_then(|o| o.get("error"))
        .and_then(Value::as_object)
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .and_then(ErrorCode::from_wire)
        .expect("an error answer carries a registered code");
    assert_eq!(code.http_status(), status, "status of {code} on {what}");
}

/// Splits the input into its records (at most `RECORDS_MAX`; the rest of the input is ignored).
fn records(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() < RECORDS_MAX {
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + SEP.len()..];
            }
            None => {
                out.push(rest);
                break;
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let b = base();
    let store = MemStore::default();
    store.append(1, &b.records).expect("the fixed state");
    // The log is opened (its chain checked) but not decoded again: the relay starts from a copy
    // of the state replayed once in `base`.
    let log = EventLog::open(Arc::new(store), &mut |_, _| Ok(())).expect("the fixed log");
    let now = Arc::new(AtomicI64::new(INPUT_NOW));
    let relay = Relay::from_replayed(
        &b.cfg,
        &b.host,
        log,
        b.state.clone(),
        b.relay_key.clone(),
        fixed_clock(&now),
    );
    let router = formica_relay::http::bind(b.routes.clone(), relay.app.clone());
    let mut ids: Vec<String> = Vec::new();
    for record in records(data) {
        let Some((&selector, body)) = record.split_first() else {
            continue;
        };
        let mode = usize::from(selector) % MODES;
        let at = now.load(Ordering::SeqCst);
        let (path, body) = match mode {
            m if m < PATHS.len() => (PATHS[m], body.to_vec()),
            m if m < PATHS.len() + 2 => {
                let agent = if m == PATHS.len() { &b.alice } else { &b.bob };
                match sign_as(agent, body, at, &ids) {
                    Some(wire) => ("/v1/envelopes", wire),
                    None => continue,
                }
            }
            _ => {
                let mut n = [0u8; 4];
                for (d, s) in n.iter_mut().zip(body) {
                    *d = *s;
                }
                now.store(
                    at + i64::from(u32::from_le_bytes(n) % ADVANCE_MAX_MS),
                    Ordering::SeqCst,
                );
                let app = relay.app.clone();
                match b
                    .rt
                    .block_on(app.engine.writer.submit(formica_relay::engine::decide::Command::Tick))
                {
                    Ok(outcome) if b.trace => {
                        eprintln!("tick to {}: {outcome:?}", now.load(Ordering::SeqCst))
                    }
                    Ok(_) => {}
                    Err(e) => panic!("tick: {} {}", e.code, e.message),
                }
                continue;
            }
        };
        if b.trace {
            eprintln!(
                "mode {mode} at {at}: POST {path} {}",
                String::from_utf8_lossy(&body)
            );
        }
        let (status, answer) = b.rt.block_on(call(&router, "POST", path, body, None));
        if b.trace {
            eprintln!("  -> {status} {}", String::from_utf8_lossy(&answer));
        }
        if (200..300).contains(&status) {
            if path == "/v1/envelopes" {
                if let Some(id) = parse_answer(&answer)
                    .as_object()
                    .and_then(|o| o.get("id"))
                    .and_then(Value::as_str)
                {
                    ids.push(id.to_string());
                }
            }
            continue;
        }
        check_error(status, &answer, &format!("{path} (mode {mode})"));
    }
    drop(router);
    shut_down(&b.rt, relay);
});
