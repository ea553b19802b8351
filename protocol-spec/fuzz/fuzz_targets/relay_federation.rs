//! Fuzz target for the bodies of the endpoints other relays call (SPEC.md section 16): the
//! transfer (`/v1/federation/transfer`), the key log push (`/v1/federation/keylog`) and the
//! peering handshake (`/v1/federation/peers`), on an in-process relay with federation enabled,
//! over an in-memory store, through the same router that serves real requests. Every request
//! carries a valid `Formica-Relay` signature of the relay's one peer, so that the input reaches
//! the body. Besides "never panics", every answer must be a 2xx or a JSON error body whose code
//! is in the registry and whose status is the registry's status for it, and every per-envelope
//! error of a transfer answer must carry a registered code.
//!
//! **One input, one relay**, as in `relay_http`: every input starts from the same fixed state,
//! built once per process, with a clock only the input moves. The fixed state: the relay
//! `relay-a.example` with federation on; one active peer, `192.0.2.1` (a documentation address; its key
//! is the vectors' `sk(0x51)`), off the allowlist and without `allow_private_peers`, so that
//! whatever the relay would fetch from it (a sender's key log, a descriptor) is refused by the
//! public-address guard before any lookup or connection: no input leaves the process; `@bob` registered here;
//! the key log of `@rem@192.0.2.1` (key `sk(0x21)`) cached as if pulled earlier; and bob has
//! granted `@rem@192.0.2.1` the `task` level. Forwarding workers do not run, so what bob sends
//! to the peer stays queued.
//!
//! **Input layout.** Up to `RECORDS_MAX` records separated by the 4 bytes `SEP`. A record's
//! first byte modulo 7 picks the mode, the rest is its body:
//! - modes 0, 1 and 2 post the body to the transfer, key log push and handshake endpoints;
//! - mode 3 reads the body as an envelope's fields, signs it as `@rem@192.0.2.1` (`from`,
//!   `key`, `ts` set, `id` and `sig` replaced, `ack_by` as in `relay_http`) and posts it in a
//!   transfer of one;
//! - mode 4 does the same as the peer relay itself (`from` = `@relay@192.0.2.1`, signed with
//!   the peer's key): a delivery notice (FED-11) when its fields make one;
//! - mode 5 reads the body as an envelope's fields and posts it to `/v1/envelopes` signed as
//!   `@bob`, so that there are messages to bob's contacts on the peer (queued) for notices and
//!   acks to name; a string `"$k"` at the first level of a payload in modes 3 to 5 becomes the
//!   id in the k-th 2xx answer of this input that named one (accepted or duplicate);
//! - mode 6 moves the clock by the body's first 4 bytes (little-endian, modulo 8 days) and asks
//!   the writer to settle what is due (deadlines, and dead letters of the peer's queue).
#![no_main]

use axum::body::Body;
use axum::http::Request;
use formica_protocol::auth::{Nonce, RelayAuth, RequestAuth, RequestTarget};
use formica_protocol::envelope::{EnvelopeLimits, SignedEnvelope};
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::keylog::{KeyLogEntry, KeyOp};
use formica_protocol::{canon, pow, ErrorCode, Handle, Object, RelayHost, SecretKey, Value};
use formica_relay::config::{Overrides, RelayConfig};
use formica_relay::engine::decide::Command;
use formica_relay::engine::events::PeerStatus;
use formica_relay::engine::Clock;
use formica_relay::store::{EventLog, MemStore, Store};
use formica_relay::Relay;
use libfuzzer_sys::fuzz_target;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

const HOST: &str = "relay-a.example";
/// A documentation address (RFC 5737): an address literal, so that nothing is ever looked up,
/// and not public, so that the guard refuses it before any connection.
const PEER: &str = "192.0.2.1";
/// The vectors' time origin (`tests/gen_vectors.rs`).
const T0: i64 = 1_764_000_000_000;
/// The clock while the fixed state is built.
const BASE_NOW: i64 = T0 + 1_000;
/// Each input's clock at its start.
const INPUT_NOW: i64 = T0 + 90_000;
/// Separates the records of one input (the same as `relay_http`'s).
const SEP: [u8; 4] = *b"\xffNXT";
const RECORDS_MAX: usize = 16;
/// One clock step moves the clock by less than this.
const ADVANCE_MAX_MS: u32 = 8 * 86_400_000;

const PATHS: [&str; 3] = [
    "/v1/federation/transfer",
    "/v1/federation/keylog",
    "/v1/federation/peers",
];
const MODES: usize = PATHS.len() + 4;

struct Base {
    rt: tokio::runtime::Runtime,
    routes: axum::Router<formica_relay::http::Shared>,
    cfg: RelayConfig,
    host: RelayHost,
    peer: RelayHost,
    relay_key: SecretKey,
    peer_key: SecretKey,
    rem: (Handle, SecretKey),
    bob: (Handle, SecretKey),
    records: Vec<Vec<u8>>,
    state: formica_relay::engine::state::State,
    /// `RELAY_HTTP_TRACE` set: print each record's request and answer.
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

/// Registers `@name` with `key` the way a client does (challenge, proof-of-work, entry).
async fn register(router: &axum::Router, host: &RelayHost, name: &str, key: &SecretKey) -> Handle {
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
    .sign(key, &[])
    .expect("a register entry without a recovery key");
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
    let prefix = pow::preimage_prefix(host, &handle, &key.public(), &challenge, difficulty);
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
    assert_eq!(status, 201, "register: {}", String::from_utf8_lossy(&body));
    handle
}

fn base() -> &'static Base {
    static B: OnceLock<Base> = OnceLock::new();
    B.get_or_init(|| {
        // Timers only, as in relay_http; the public-address guard refuses the peer's name
        // before anything would need a socket.
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
        for t in &mut cfg.policy.tiers {
            t.rate_per_min = 1_000_000_000;
            t.contact_requests_per_hour = 1_000_000_000;
        }
        cfg.policy.federation.enabled = true;
        cfg.policy.federation.peering = "open".into();
        let host = RelayHost::parse(HOST).expect("host");
        let peer = RelayHost::parse(PEER).expect("peer");
        let relay_key = vector_key(0x41);
        let peer_key = vector_key(0x51);
        let rem_key = vector_key(0x21);
        let rem = Handle::parse(&format!("@rem@{PEER}")).expect("rem");
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
        let bob_key = vector_key(0x81);
        let bob = rt.block_on(async {
            let w = relay.app.engine.writer.clone();
            w.submit(Command::PeerSet {
                host: peer.clone(),
                key: peer_key.public(),
                status: PeerStatus::Active,
                stranger: false,
            })
            .await
            .expect("peer");
            let reg = KeyLogEntry {
                handle: rem.clone(),
                seq: 0,
                prev: None,
                ts: T0,
                op: KeyOp::Register {
                    key: rem_key.public(),
                    recovery: None,
                },
                signer: rem_key.public().key_id(),
            }
            .sign(&rem_key, &[])
            .expect("a register entry without a recovery key");
            w.submit(Command::RemoteKeyLog { entries: vec![reg] })
                .await
                .expect("remote key log");
            let bob = register(&router, &host, "bob", &bob_key).await;
            let path = format!("/v1/contacts/{rem}");
            let body = br#"{"level":"task"}"#.to_vec();
            let header = RequestAuth::sign(
                &bob_key,
                &bob,
                BASE_NOW,
                Nonce([1; 16]),
                &RequestTarget {
                    method: "PUT",
                    path: &path,
                    body: &body,
                },
                &host,
            );
            let (status, answer) = call(&router, "PUT", &path, body, Some(header)).await;
            assert_eq!(status, 200, "contact: {}", String::from_utf8_lossy(&answer));
            bob
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
        Base {
            rt,
            routes: formica_relay::http::routes(),
            cfg,
            host,
            peer,
            relay_key,
            peer_key,
            rem: (rem, rem_key),
            bob: (bob, bob_key),
            records,
            state,
            trace: std::env::var_os("RELAY_HTTP_TRACE").is_some(),
        }
    })
}

/// Drops the relay and waits for its writer thread, driving the runtime until the tasks a
/// handler spawned (key log pushes, refused by the guard) have let go of it.
fn shut_down(rt: &tokio::runtime::Runtime, relay: Relay) {
    let Relay { app, writer_thread, .. } = relay;
    for _ in 0..10_000 {
        if Arc::strong_count(&app) == 1 {
            break;
        }
        rt.block_on(tokio::time::sleep(std::time::Duration::from_micros(100)));
    }
    assert_eq!(Arc::strong_count(&app), 1, "a task still holds the relay");
    drop(app);
    writer_thread
        .join()
        .expect("the writer thread ended cleanly");
}

/// The body as an envelope from `from`, signed with `key` at `now`, or `None`.
fn sign_as(
    from: &Handle,
    key: &SecretKey,
    body: &[u8],
    now: i64,
    ids: &[String],
) -> Option<SignedEnvelope> {
    let Ok(Value::Object(mut o)) = json::parse(body, JsonLimits::default()) else {
        return None;
    };
    o.remove("id");
    o.insert("from", Value::from(from.to_string()));
    o.insert("key", Value::from(key.public().key_id().to_string()));
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
    se.envelope().sign(key).ok()
}

/// A transfer body holding `envelope`.
fn transfer_of(envelope: &SignedEnvelope, txn: u64) -> Vec<u8> {
    let mut o = Object::new();
    o.insert("envelopes", Value::Array(vec![envelope.value().clone()]));
    o.insert("txn", Value::from(format!("t{txn}")));
    canon::canonicalize(&Value::Object(o))
}

/// Checks an error answer: strict JSON, a registered code, that code's status.
fn check_error(status: u16, bytes: &[u8], what: &str) {
    let v = parse_answer(bytes);
    let code = error_code(&v).expect("an error answer carries a registered code");
    assert_eq!(code.http_status(), status, "status of {code} on {what}");
}

fn error_code(v: &Value) -> Option<ErrorCode> {
    v.as_object()?
        .get("error")?
        .as_object()?
        .get("code")?
        .as_str()
        .and_then(ErrorCode::from_wire)
}

/// A transfer answer: every result is accepted, duplicate, or an error with a registered code.
fn check_results(bytes: &[u8]) -> Vec<String> {
    let v = parse_answer(bytes);
    let results = v
        .as_object()
        .and_then(|o| o.get("results"))
        .and_then(Value::as_array)
        .expect("a transfer answer has results");
    let mut ids = Vec::new();
    for r in results {
        let o = r.as_object().expect("a result is an object");
        match o.get("result").and_then(Value::as_str) {
            Some("accepted") | Some("duplicate") => {
                if let Some(id) = o.get("id").and_then(Value::as_str) {
                    ids.push(id.to_owned());
                }
            }
            _ => {
                error_code(r).expect("a refused envelope carries a registered code");
            }
        }
    }
    ids
}

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
    let nonces = AtomicU64::new(1);
    let mut ids: Vec<String> = Vec::new();
    for record in records(data) {
        let Some((&selector, body)) = record.split_first() else {
            continue;
        };
        let mode = usize::from(selector) % MODES;
        let at = now.load(Ordering::SeqCst);
        let n = nonces.fetch_add(1, Ordering::Relaxed);
        let (path, body, agent) = match mode {
            m if m < PATHS.len() => (PATHS[m], body.to_vec(), false),
            3 | 4 => {
                let (from, key) = if mode == 3 {
                    (b.rem.0.clone(), &b.rem.1)
                } else {
                    (Handle::relay(&b.peer), &b.peer_key)
                };
                match sign_as(&from, key, body, at, &ids) {
                    Some(se) => (PATHS[0], transfer_of(&se, n), false),
                    None => continue,
                }
            }
            5 => match sign_as(&b.bob.0, &b.bob.1, body, at, &ids) {
                Some(se) => ("/v1/envelopes", se.wire_bytes(), true),
                None => continue,
            },
            _ => {
                let mut d = [0u8; 4];
                for (x, y) in d.iter_mut().zip(body) {
                    *x = *y;
                }
                now.store(
                    at + i64::from(u32::from_le_bytes(d) % ADVANCE_MAX_MS),
                    Ordering::SeqCst,
                );
                let app = relay.app.clone();
                match b.rt.block_on(app.engine.writer.submit(Command::Tick)) {
                    Ok(outcome) if b.trace => eprintln!("tick: {outcome:?}"),
                    Ok(_) => {}
                    Err(e) => panic!("tick: {} {}", e.code, e.message),
                }
                continue;
            }
        };
        let auth = (!agent).then(|| {
            let mut nonce = [0u8; 16];
            nonce[..8].copy_from_slice(&n.to_le_bytes());
            RelayAuth::sign(
                &b.peer_key,
                &b.peer,
                &b.host,
                at,
                Nonce(nonce),
                &RequestTarget {
                    method: "POST",
                    path,
                    body: &body,
                },
            )
        });
        if b.trace {
            eprintln!(
                "mode {mode} at {at}: POST {path} {}",
                String::from_utf8_lossy(&body)
            );
        }
        let (status, answer) = b.rt.block_on(call(&router, "POST", path, body, auth));
        if b.trace {
            eprintln!("  -> {status} {}", String::from_utf8_lossy(&answer));
        }
        if (200..300).contains(&status) {
            if path == PATHS[0] {
                ids.extend(check_results(&answer));
            } else if path == "/v1/envelopes" {
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
