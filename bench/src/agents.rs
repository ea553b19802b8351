//! Benchmark agents: deterministic keys and handles, registration with proof-of-work, contact
//! grants, signed requests, and envelopes signed ahead of time (in parallel, before any timed
//! phase) so the load generator never signs while it measures.

use crate::http::{self, Conn};
use anyhow::{bail, Context, Result};
use formica_protocol::auth::{Nonce, RequestAuth, RequestTarget};
use formica_protocol::envelope::{Envelope, MessageType, Payload, SignedEnvelope};
use formica_protocol::keylog::{KeyLogEntry, KeyOp};
use formica_protocol::{canon, pow, Handle, Object, RelayHost, SecretKey, Value};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The time every benchmark registration claims (a minute before the program started), so
/// that envelopes signed at any point of the run fall inside their sender's key validity, on
/// every relay, whenever that relay registered the sender. The relays' one-hour freshness
/// window accepts it.
pub fn registration_ts() -> i64 {
    static TS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *TS.get_or_init(|| now_ms() - 60_000)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An agent of the benchmark. Keys come from the index, so every relay of a run knows the same
/// agents and one set of pre-signed envelopes is valid on all of them.
#[derive(Debug)]
pub struct Agent {
    pub handle: Handle,
    pub key: SecretKey,
    nonce: AtomicU64,
}

impl Agent {
    pub fn new(i: usize, host: &RelayHost) -> Result<Agent> {
        let mut h = blake3::Hasher::new();
        h.update(b"formica-bench/agent-seed\0");
        h.update(&(i as u64).to_le_bytes());
        let seed = *h.finalize().as_bytes();
        let handle = Handle::parse(&format!("@a{i:05}@{host}"))
            .map_err(|e| anyhow::anyhow!("handle: {e}"))?;
        Ok(Agent {
            handle,
            key: SecretKey::from_seed(&seed),
            nonce: AtomicU64::new(1),
        })
    }

    /// An `Authorization: Formica` header value for one request.
    pub fn auth(&self, method: &str, path: &str, body: &[u8]) -> String {
        let n = self.nonce.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&n.to_le_bytes());
        nonce[8..].copy_from_slice(&now_ms().to_le_bytes());
        RequestAuth::sign(
            &self.key,
            &self.handle,
            now_ms(),
            Nonce(nonce),
            &RequestTarget { method, path, body },
            self.handle.host(),
        )
    }

    /// A signed `message` envelope to `to`, with a text of about `text_len` bytes that starts
    /// with `tag` (the latency run finds its sequence number there).
    pub fn message(&self, to: &Handle, tag: &str, text_len: usize) -> Result<SignedEnvelope> {
        let mut text = String::with_capacity(text_len.max(tag.len()));
        text.push_str(tag);
        while text.len() < text_len {
            text.push_str(" lorem ipsum dolor sit amet");
        }
        text.truncate(text_len.max(tag.len()));
        Envelope {
            msg_type: MessageType::Message,
            type_version: 1,
            from: self.handle.clone(),
            key: self.key.public().key_id(),
            to: vec![to.clone()],
            ts: now_ms(),
            corr: None,
            ack_by: None,
            conv: None,
            payload: Payload::Message { text, data: None },
        }
        .sign(&self.key)
        .map_err(|e| anyhow::anyhow!("signing: {e}"))
    }
}

fn obj(members: Vec<(&str, Value)>) -> Value {
    let mut o = Object::new();
    for (k, v) in members {
        o.insert(k, v);
    }
    Value::Object(o)
}

/// Registers one agent: challenge, proof-of-work, signed register entry claiming time `ts`.
async fn register_one(conn: &mut Conn, addr: &str, a: &Agent, ts: i64) -> Result<()> {
    let r = conn
        .send(&http::request("POST", "/v1/challenges", addr, &[], b"{}"))
        .await?;
    if r.status != 201 {
        bail!("challenge: {} {}", r.status, r.text());
    }
    let v = r.json()?;
    let o = v.as_object().context("challenge answer")?;
    let challenge = o
        .get("challenge")
        .and_then(Value::as_str)
        .and_then(pow::Challenge::parse_hex)
        .context("challenge")?;
    let d = o
        .get("difficulty")
        .and_then(Value::as_i64)
        .context("difficulty")? as u32;
    let host = a.handle.host();
    let prefix = pow::preimage_prefix(host, &a.handle, &a.key.public(), &challenge, d);
    let nonce = pow::mine(&prefix, d, 0, 1, u64::MAX).context("no proof-of-work found")?;
    let entry = KeyLogEntry {
        handle: a.handle.clone(),
        seq: 0,
        prev: None,
        ts,
        op: KeyOp::Register {
            key: a.key.public(),
            recovery: None,
        },
        signer: a.key.public().key_id(),
    }
    .sign(&a.key, &[])
    .context("signing the register entry")?;
    let body = canon::canonicalize(&obj(vec![
        ("entry", entry.value().clone()),
        (
            "pow",
            pow::PowProof {
                challenge,
                difficulty: d,
                nonce,
            }
            .to_value(),
        ),
    ]));
    let r = conn
        .send(&http::request(
            "POST",
            "/v1/register",
            addr,
            &[("content-type", "application/json")],
            &body,
        ))
        .await?;
    if r.status != 201 {
        bail!("register {}: {} {}", a.handle, r.status, r.text());
    }
    Ok(())
}

/// `owner` grants `contact` the contact level `level` (`read`, `message` or `task`).
async fn allow_one(
    conn: &mut Conn,
    addr: &str,
    owner: &Agent,
    contact: &Handle,
    level: &str,
) -> Result<()> {
    let path = format!("/v1/contacts/{contact}");
    let body = canon::canonicalize(&obj(vec![("level", level.into())]));
    let auth = owner.auth("PUT", &path, &body);
    let r = conn
        .send(&http::request(
            "PUT",
            &path,
            addr,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            &body,
        ))
        .await?;
    if r.status != 200 {
        bail!(
            "contact {} -> {contact}: {} {}",
            owner.handle,
            r.status,
            r.text()
        );
    }
    Ok(())
}

/// Runs `f(i)` for `0..n` on `conns` keep-alive connections at once.
async fn on_connections<F, Fut>(addr: &str, n: usize, conns: usize, f: F) -> Result<()>
where
    F: Fn(Conn, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Conn>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns.min(n.max(1)) {
        let (next, f, addr) = (next.clone(), f.clone(), addr.to_owned());
        tasks.spawn(async move {
            let mut conn = Conn::connect(&addr).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                conn = f(conn, i).await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("set-up task")??;
    }
    Ok(())
}

/// Registers `agents[range]` on the relay at `addr`, 32 requests at a time (so that group
/// commit shares the fsyncs).
pub async fn register_all(
    addr: &str,
    agents: Arc<Vec<Agent>>,
    range: std::ops::Range<usize>,
) -> Result<()> {
    register_all_at(addr, agents, range, registration_ts()).await
}

/// [`register_all`] with register entries that claim time `ts`: for a relay whose freshness
/// window is shorter than the run, where [`registration_ts`] may already be stale.
pub async fn register_all_at(
    addr: &str,
    agents: Arc<Vec<Agent>>,
    range: std::ops::Range<usize>,
    ts: i64,
) -> Result<()> {
    let start = range.start;
    let n = range.len();
    let addr2 = addr.to_owned();
    on_connections(addr, n, 32, move |mut conn, i| {
        let (agents, addr) = (agents.clone(), addr2.clone());
        async move {
            register_one(&mut conn, &addr, &agents[start + i], ts).await?;
            Ok(conn)
        }
    })
    .await
}

/// Contact grants `(owner index, contact index)`, level `task` (the owner lets the contact
/// send it messages and tasks).
pub async fn allow_all(
    addr: &str,
    agents: Arc<Vec<Agent>>,
    pairs: Vec<(usize, usize)>,
) -> Result<()> {
    allow_all_level(addr, agents, pairs, "task").await
}

/// Contact grants `(owner index, contact index)` of the level `level`.
pub async fn allow_all_level(
    addr: &str,
    agents: Arc<Vec<Agent>>,
    pairs: Vec<(usize, usize)>,
    level: &'static str,
) -> Result<()> {
    let pairs = Arc::new(pairs);
    let addr2 = addr.to_owned();
    on_connections(addr, pairs.len(), 32, move |mut conn, i| {
        let (agents, pairs, addr) = (agents.clone(), pairs.clone(), addr2.clone());
        async move {
            let (owner, contact) = pairs[i];
            allow_one(
                &mut conn,
                &addr,
                &agents[owner],
                &agents[contact].handle,
                level,
            )
            .await?;
            Ok(conn)
        }
    })
    .await
}

/// Signs `count` envelopes on `threads` threads (each pinned to `cpus` when given): envelope
/// `k` comes from `pick(k)` = (sender, recipient, tag). Returns them in order.
pub fn presign(
    agents: &[Agent],
    count: usize,
    text_len: usize,
    threads: usize,
    cpus: Option<&str>,
    pick: &(dyn Fn(usize) -> (usize, usize, String) + Sync),
) -> Result<Vec<SignedEnvelope>> {
    let threads = threads.max(1);
    let per = count.div_ceil(threads);
    let parts: Vec<Result<Vec<SignedEnvelope>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<Vec<SignedEnvelope>> {
                    if let Some(c) = cpus {
                        crate::sys::pin_current_thread(c)?;
                    }
                    let lo = (t * per).min(count);
                    let hi = ((t + 1) * per).min(count);
                    (lo..hi)
                        .map(|k| {
                            let (from, to, tag) = pick(k);
                            agents[from].message(&agents[to].handle, &tag, text_len)
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("signing thread panicked")))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(count);
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}
