//! Item 12 (only when named, `--only seal`): sealed payloads (issue 27, SPEC.md section 20).
//!
//! 1. **Cost per message**, in-process on one thread pinned to the relay's core (no relay
//!    running): for 1 and 16 recipients, sealing a `message` with a ~1 KiB text
//!    (`seal::seal`: the routing header's hash, JCS of the payload, padding, ChaCha20-Poly1305
//!    of the content, one HPKE SealBase per recipient), signing the sealed envelope
//!    (`Envelope::sign`: JCS, BLAKE3 id, Ed25519), and opening it as one of its recipients
//!    (`seal::open`: key log look-up, HPKE OpenBase, decryption, unpadding, the payload's
//!    schema). Each operation is timed on its own; one iteration runs all of them one after the
//!    other (so a slow spell hits every operation alike), with fresh random inputs (content key,
//!    HPKE ephemeral seeds) made before the clock starts. Also timed: Ed25519 alone on the same
//!    signing input, signing the unsealed envelope, and the relay's parse + verify of the sealed
//!    envelope and of a plain one of the same size.
//! 2. **Ingest**: sealed envelopes (one recipient) and plain ones of the same size (a text
//!    padded so that the plain payload's canonical length equals the sealed payload's), all
//!    signed before any relay starts, posted to relay processes started like item 2's (fresh,
//!    durable, pinned). Each round starts one relay per kind, plain and sealed one after the
//!    other, alternating which goes first; on each relay: POST -> 201 latency at a fixed
//!    offered load (open loop), then the single and the batch endpoint, closed loop (item 2's
//!    runner). The median round of each figure counts, and the ratio sealed / plain is taken
//!    of those medians (the ratio of each round is also reported).

use crate::agents::{now_ms, registration_ts, Agent};
use crate::http::{self, Conn};
use crate::ingest::{self, Endpoint, IngestResult};
use crate::relay_proc::{Launcher, RelayProc};
use crate::report::{percentile, J};
use crate::sys::{CpuMeter, CpuUse};
use anyhow::{anyhow, bail, Context, Result};
use formica_protocol::envelope::{Envelope, MessageType, Payload, SignedEnvelope};
use formica_protocol::seal::{self, EncSecretKey, Recipient};
use formica_protocol::{Handle, KeyId, KeyLog, KeyLogEntry, KeyOp, RelayHost};
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The issue's target: sealed ingest within 10 % of plain ingest of the same size.
pub const TARGET_RATIO: f64 = 0.9;
/// The same for latency: sealed at most 10 % above plain.
pub const TARGET_LATENCY_RATIO: f64 = 1.1;

/// What to run.
#[derive(Debug, Clone)]
pub struct SealPlan {
    /// Timed iterations per recipient count (after [`WARMUP_ITERATIONS`]).
    pub iterations: usize,
    /// Bytes of message text before sealing.
    pub text_bytes: usize,
    pub senders: usize,
    /// Envelopes per closed-loop run (each endpoint gets a set of its own).
    pub envelopes: usize,
    pub rounds: usize,
    pub single_conns: usize,
    pub batch_conns: usize,
    pub batch_size: usize,
    pub latency_rate: f64,
    pub latency_seconds: f64,
    pub latency_warmup_seconds: f64,
    pub latency_conns: usize,
    pub sign_threads: usize,
    pub sign_cpus: Option<String>,
    /// The CPU the in-process part runs on (one of the relay's), if pinning.
    pub bench_cpu: Option<String>,
}

const WARMUP_ITERATIONS: usize = 50;
/// Recipient counts of part 1.
pub const RECIPIENT_COUNTS: [usize; 2] = [1, 16];

/// Deterministic "random" bytes for the benchmark (content keys, ephemeral seeds, encryption
/// keys): a real sender draws them from the OS, which is not what is measured here.
fn rand32(what: &str, i: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"formica-bench/seal\0");
    h.update(what.as_bytes());
    h.update(&[0]);
    h.update(&i.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Agent `i`'s encryption secret key.
fn enc_secret(i: usize) -> EncSecretKey {
    EncSecretKey::derive(&rand32("enc-key", i as u64))
}

/// Agent `i`'s key log: its register entry and one `enc` entry publishing [`enc_secret`]`(i)`,
/// valid from [`registration_ts`] for 30 days.
fn key_log(a: &Agent, i: usize) -> Result<KeyLog> {
    let ts = registration_ts();
    let reg = KeyLogEntry {
        handle: a.handle.clone(),
        seq: 0,
        prev: None,
        ts: ts - 1,
        op: KeyOp::Register {
            key: a.key.public(),
            recovery: None,
        },
        signer: a.key.public().key_id(),
    }
    .sign(&a.key, &[])
    .map_err(|e| anyhow!("register entry: {e}"))?;
    let enc = enc_secret(i)
        .public()
        .context("a derived encryption key is never weak")?;
    let e = KeyLogEntry {
        handle: a.handle.clone(),
        seq: 1,
        prev: Some(reg.hash()),
        ts,
        op: KeyOp::Enc {
            enc,
            expires: ts + 30 * 24 * 3_600_000,
        },
        signer: a.key.public().key_id(),
    }
    .sign(&a.key, &[])
    .map_err(|e| anyhow!("enc entry: {e}"))?;
    KeyLog::verify([reg, e]).map_err(|e| anyhow!("key log: {e}"))
}

/// A text of exactly `len` bytes (ASCII, nothing JSON escapes) that starts with `tag`.
fn text_of(tag: &str, len: usize) -> String {
    let mut t = String::with_capacity(len.max(tag.len()) + 32);
    t.push_str(tag);
    while t.len() < len {
        t.push_str(" lorem ipsum dolor sit amet");
    }
    t.truncate(len.max(tag.len()));
    t
}

/// An unsigned `message` from `from` to `to` with a text of `text_len` bytes.
fn message(from: &Agent, to: &[&Handle], tag: &str, text_len: usize) -> Envelope {
    Envelope {
        msg_type: MessageType::Message,
        type_version: 1,
        from: from.handle.clone(),
        key: from.key.public().key_id(),
        to: to.iter().map(|h| (*h).clone()).collect(),
        ts: now_ms(),
        corr: None,
        ack_by: None,
        conv: None,
        payload: Payload::Message {
            text: text_of(tag, text_len),
            data: None,
        },
    }
}

/// `env` sealed to its recipients (`keys[i]` is `env.to[i]`'s encryption key), with the random
/// inputs of iteration `n`. Not signed.
fn sealed(env: &Envelope, keys: &[seal::EncPublicKey], n: u64) -> Result<Envelope> {
    let rs: Vec<Recipient> = env
        .to
        .iter()
        .zip(keys)
        .enumerate()
        .map(|(j, (h, k))| Recipient {
            handle: h.clone(),
            key: *k,
            ephemeral: rand32("ephemeral", n * 64 + j as u64),
        })
        .collect();
    let s = seal::seal(env, &rs, rand32("content-key", n)).map_err(|e| anyhow!("seal: {e}"))?;
    let mut out = env.clone();
    out.payload = Payload::Sealed(s);
    Ok(out)
}

/// The canonical length of a payload (what `payload_bytes_max` counts).
fn payload_len(env: &Envelope) -> usize {
    formica_protocol::canon::canonical_len(&env.payload.to_value())
}

/// The length of a plain text whose `{"text":"..."}` payload has canonical length `n`.
fn text_len_for_payload(n: usize) -> usize {
    n.saturating_sub(r#"{"text":""}"#.len())
}

fn summary_us(sorted: &[f64]) -> J {
    J::obj()
        .with("median_us", percentile(sorted, 50.0))
        .with("p90_us", percentile(sorted, 90.0))
        .with("p99_us", percentile(sorted, 99.0))
        .with("max_us", sorted.last().copied().unwrap_or(f64::NAN))
        .with("samples", sorted.len())
}

/// Part 1 for one recipient count: every operation's times in microseconds, sorted.
#[derive(Debug, Clone, Default)]
pub struct CryptoCost {
    pub recipients: usize,
    pub seal_us: Vec<f64>,
    pub sign_us: Vec<f64>,
    pub open_us: Vec<f64>,
    pub ed25519_us: Vec<f64>,
    pub sign_unsealed_us: Vec<f64>,
    pub verify_sealed_us: Vec<f64>,
    pub verify_plain_us: Vec<f64>,
    pub unsealed_payload_bytes: usize,
    pub sealed_payload_bytes: usize,
    pub sealed_wire_bytes: usize,
    pub unsealed_wire_bytes: usize,
    /// This process and the other tasks on the core during the measurement.
    pub cpu: Option<CpuUse>,
}

impl CryptoCost {
    pub fn med(v: &[f64]) -> f64 {
        percentile(v, 50.0)
    }
    pub fn p99(v: &[f64]) -> f64 {
        percentile(v, 99.0)
    }
    pub fn to_json(&self) -> J {
        let m = Self::med;
        J::obj()
            .with("recipients", self.recipients)
            .with("seal", summary_us(&self.seal_us))
            .with("sign_sealed_envelope", summary_us(&self.sign_us))
            .with("open", summary_us(&self.open_us))
            .with("ed25519_sign_only", summary_us(&self.ed25519_us))
            .with("sign_unsealed_envelope", summary_us(&self.sign_unsealed_us))
            .with(
                "relay_parse_verify_sealed",
                summary_us(&self.verify_sealed_us),
            )
            .with(
                "relay_parse_verify_plain_same_size",
                summary_us(&self.verify_plain_us),
            )
            .with("seal_over_sign_median", m(&self.seal_us) / m(&self.sign_us))
            .with("open_over_sign_median", m(&self.open_us) / m(&self.sign_us))
            .with(
                "seal_over_sign_p99",
                Self::p99(&self.seal_us) / Self::p99(&self.sign_us),
            )
            .with(
                "open_over_sign_p99",
                Self::p99(&self.open_us) / Self::p99(&self.sign_us),
            )
            .with(
                "seal_over_ed25519_median",
                m(&self.seal_us) / m(&self.ed25519_us),
            )
            .with(
                "open_over_ed25519_median",
                m(&self.open_us) / m(&self.ed25519_us),
            )
            .with("unsealed_payload_bytes", self.unsealed_payload_bytes)
            .with("sealed_payload_bytes", self.sealed_payload_bytes)
            .with("unsealed_envelope_bytes", self.unsealed_wire_bytes)
            .with("sealed_envelope_bytes", self.sealed_wire_bytes)
            .with(
                "other_tasks_on_its_core",
                self.cpu.map(|c| c.others_on_relay_cores),
            )
            .with(
                "steal_on_its_core",
                self.cpu.map(|c| c.steal_on_relay_cores),
            )
            .with("cpu", self.cpu.map(CpuUse::to_json))
    }
}

/// Part 1 for `n` recipients (agents `1..=n`, sender agent 0).
fn crypto_cost(
    agents: &[Agent],
    n: usize,
    iterations: usize,
    text_bytes: usize,
) -> Result<CryptoCost> {
    let limits = crate::inproc::relay_envelope_limits();
    let sender = &agents[0];
    let rcpt: Vec<&Agent> = agents[1..=n].iter().collect();
    let logs: Vec<KeyLog> = (1..=n)
        .map(|i| key_log(&agents[i], i))
        .collect::<Result<_>>()?;
    let secrets: Vec<EncSecretKey> = (1..=n).map(enc_secret).collect();
    let keys: Vec<seal::EncPublicKey> = secrets
        .iter()
        .map(|s| s.public().context("weak key"))
        .collect::<Result<_>>()?;
    let kids: Vec<KeyId> = keys.iter().map(|k| k.key_id()).collect();
    let to: Vec<&Handle> = rcpt.iter().map(|a| &a.handle).collect();
    let env = message(sender, &to, "seal-cost", text_bytes);
    let sk = &sender.key;
    let pk = sk.public();
    // A plain envelope of the sealed one's size, for the relay's parse + verify.
    let sample = sealed(&env, &keys, u64::MAX)?;
    let sealed_payload_bytes = payload_len(&sample);
    let sealed_wire_bytes = sample.sign(sk)?.wire_bytes().len();
    let padded = message(
        sender,
        &to,
        "seal-cost",
        text_len_for_payload(sealed_payload_bytes),
    );
    let padded_wire = padded.sign(sk)?.wire_bytes();
    let mut c = CryptoCost {
        recipients: n,
        unsealed_payload_bytes: payload_len(&env),
        sealed_payload_bytes,
        sealed_wire_bytes,
        unsealed_wire_bytes: env.sign(sk)?.wire_bytes().len(),
        ..CryptoCost::default()
    };
    let us = |t: Instant| t.elapsed().as_secs_f64() * 1e6;
    for i in 0..WARMUP_ITERATIONS + iterations {
        let timed = i >= WARMUP_ITERATIONS;
        // The random inputs, before the clock starts.
        let rs: Vec<Recipient> = to
            .iter()
            .zip(&keys)
            .enumerate()
            .map(|(j, (h, k))| Recipient {
                handle: (*h).clone(),
                key: *k,
                ephemeral: rand32("ephemeral", i as u64 * 64 + j as u64),
            })
            .collect();
        let ck = rand32("content-key", i as u64);

        let t = Instant::now();
        let s =
            seal::seal(black_box(&env), black_box(&rs), ck).map_err(|e| anyhow!("seal: {e}"))?;
        let seal_t = us(t);
        let mut se = env.clone();
        se.payload = Payload::Sealed(s);

        let t = Instant::now();
        let signed = black_box(&se).sign(sk)?;
        let sign_t = us(t);

        let t = Instant::now();
        black_box(sk.sign_input(black_box(signed.signing_input())));
        let ed_t = us(t);

        // Each recipient in turn opens (its sealed key's position varies).
        let j = i % n;
        let t = Instant::now();
        let opened = seal::open(black_box(&se), &rcpt[j].handle, &logs[j], |kid| {
            (*kid == kids[j]).then(|| secrets[j].clone())
        })
        .map_err(|e| anyhow!("open: {} ({e})", e.reason()))?;
        let open_t = us(t);
        if opened != env.payload {
            bail!("the opened payload differs from the one sealed");
        }

        let t = Instant::now();
        black_box(black_box(&env).sign(sk)?);
        let sign_plain_t = us(t);

        let wire = signed.wire_bytes();
        let t = Instant::now();
        black_box(
            SignedEnvelope::parse(black_box(&wire), &limits)
                .map_err(|e| anyhow!("parse sealed: {e}"))?
                .verify(&pk)
                .map_err(|e| anyhow!("verify sealed: {e}"))?,
        );
        let vs_t = us(t);
        let t = Instant::now();
        black_box(
            SignedEnvelope::parse(black_box(&padded_wire), &limits)
                .map_err(|e| anyhow!("parse plain: {e}"))?
                .verify(&pk)
                .map_err(|e| anyhow!("verify plain: {e}"))?,
        );
        let vp_t = us(t);

        if timed {
            c.seal_us.push(seal_t);
            c.sign_us.push(sign_t);
            c.ed25519_us.push(ed_t);
            c.open_us.push(open_t);
            c.sign_unsealed_us.push(sign_plain_t);
            c.verify_sealed_us.push(vs_t);
            c.verify_plain_us.push(vp_t);
        }
    }
    for v in [
        &mut c.seal_us,
        &mut c.sign_us,
        &mut c.ed25519_us,
        &mut c.open_us,
        &mut c.sign_unsealed_us,
        &mut c.verify_sealed_us,
        &mut c.verify_plain_us,
    ] {
        v.sort_by(f64::total_cmp);
    }
    Ok(c)
}

/// Runs `f(k)` for `0..count` on `threads` threads (each pinned to `cpus` when given), in order.
fn par_map<T: Send>(
    count: usize,
    threads: usize,
    cpus: Option<&str>,
    f: &(dyn Fn(usize) -> Result<T> + Sync),
) -> Result<Vec<T>> {
    let threads = threads.max(1);
    let per = count.div_ceil(threads);
    let parts: Vec<Result<Vec<T>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<Vec<T>> {
                    if let Some(c) = cpus {
                        crate::sys::pin_current_thread(c)?;
                    }
                    ((t * per).min(count)..((t + 1) * per).min(count))
                        .map(f)
                        .collect()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("thread panicked"))))
            .collect()
    });
    let mut out = Vec::with_capacity(count);
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// The envelopes of part 2, as wire bytes: per kind, the latency set, the single-endpoint set
/// and the batch set.
#[derive(Debug)]
struct Sets {
    latency: Vec<Vec<u8>>,
    single: Vec<Vec<u8>>,
    batch: Vec<Vec<u8>>,
}

impl Sets {
    fn split(mut all: Vec<Vec<u8>>, lat: usize, n: usize) -> Sets {
        let batch = all.split_off(lat + n);
        let single = all.split_off(lat);
        Sets {
            latency: all,
            single,
            batch,
        }
    }
}

/// Open loop: envelope k is posted at t0 + k / rate on connection k mod `conns`; POST -> 201
/// per envelope after the first `warmup`.
#[derive(Debug, Clone)]
pub struct PostLatency {
    pub rate_per_s: f64,
    pub measured: usize,
    pub refused: usize,
    pub first_refusal: Option<String>,
    /// Milliseconds, sorted.
    pub ack_ms: Vec<f64>,
    pub send_lag_ms: Vec<f64>,
    pub cpu: CpuUse,
}

impl PostLatency {
    pub fn p(&self, q: f64) -> f64 {
        percentile(&self.ack_ms, q)
    }
    fn to_json(&self) -> J {
        J::obj()
            .with("offered_per_s", self.rate_per_s)
            .with("measured", self.measured)
            .with("refused", self.refused)
            .with("first_refusal", self.first_refusal.clone())
            .with("post_to_201_p50_ms", self.p(50.0))
            .with("post_to_201_p90_ms", self.p(90.0))
            .with("post_to_201_p99_ms", self.p(99.0))
            .with(
                "post_to_201_max_ms",
                self.ack_ms.last().copied().unwrap_or(f64::NAN),
            )
            .with(
                "send_lag_behind_schedule_p99_ms",
                percentile(&self.send_lag_ms, 99.0),
            )
            .with("cpu", self.cpu.to_json())
    }
}

async fn post_latency(
    relay: &RelayProc,
    wires: &[Vec<u8>],
    rate_per_s: f64,
    warmup: usize,
    conns: usize,
) -> Result<PostLatency> {
    let addr = relay.addr.as_str();
    let n = wires.len();
    let reqs: Arc<Vec<Vec<u8>>> = Arc::new(
        wires
            .iter()
            .map(|w| {
                http::request(
                    "POST",
                    "/v1/envelopes",
                    addr,
                    &[("content-type", "application/json")],
                    w,
                )
            })
            .collect(),
    );
    // (lag behind schedule, POST -> answer, refusal) per envelope.
    type Slot = Option<(f64, f64, Option<String>)>;
    let out: Arc<Mutex<Vec<Slot>>> = Arc::new(Mutex::new(vec![None; n]));
    let mut cs = Vec::with_capacity(conns);
    for _ in 0..conns {
        cs.push(Conn::connect(addr).await?);
    }
    let meter = CpuMeter::start(relay.pid, &relay.cpus);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(50);
    let period = Duration::from_secs_f64(1.0 / rate_per_s);
    let mut tasks = tokio::task::JoinSet::new();
    for (c, mut conn) in cs.into_iter().enumerate() {
        let (reqs, out) = (reqs.clone(), out.clone());
        tasks.spawn(async move {
            let mut k = c;
            while k < reqs.len() {
                let due = t0 + period * k as u32;
                tokio::time::sleep_until(due).await;
                let at = Instant::now();
                let r = conn.send(&reqs[k]).await?;
                let ack = at.elapsed().as_secs_f64() * 1e3;
                let lag = at.saturating_duration_since(due.into_std()).as_secs_f64() * 1e3;
                let refusal = (r.status != 201).then(|| {
                    format!(
                        "{} {}",
                        r.status,
                        r.text().chars().take(300).collect::<String>()
                    )
                });
                out.lock().unwrap_or_else(|p| p.into_inner())[k] = Some((lag, ack, refusal));
                k += conns;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("latency sender")??;
    }
    let cpu = meter.stop();
    let slots = out.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (mut ack, mut lag, mut refused, mut first) = (Vec::new(), Vec::new(), 0, None);
    for s in slots.into_iter().skip(warmup).flatten() {
        let (l, a, r) = s;
        lag.push(l);
        match r {
            None => ack.push(a),
            Some(why) => {
                refused += 1;
                first.get_or_insert(why);
            }
        }
    }
    ack.sort_by(f64::total_cmp);
    lag.sort_by(f64::total_cmp);
    Ok(PostLatency {
        rate_per_s,
        measured: n - warmup.min(n),
        refused,
        first_refusal: first,
        ack_ms: ack,
        send_lag_ms: lag,
        cpu,
    })
}

/// One relay's runs in part 2.
#[derive(Debug, Clone)]
struct KindRun {
    sealed: bool,
    round: usize,
    latency: PostLatency,
    single: IngestResult,
    batch: IngestResult,
}

/// A figure of a relay's runs, by name.
type Figure<'a> = (&'a str, &'a dyn Fn(&KindRun) -> f64);

fn kind_name(sealed: bool) -> &'static str {
    if sealed {
        "sealed"
    } else {
        "plain"
    }
}

/// Relay CPU time per accepted envelope, microseconds.
fn cpu_us_per_envelope(r: &IngestResult) -> f64 {
    r.cpu.relay_cores_busy * r.elapsed.as_secs_f64() / (r.accepted.max(1) as f64) * 1e6
}

fn ingest_json(r: &IngestResult) -> J {
    J::obj()
        .with("endpoint", r.endpoint.name())
        .with("envelopes_sent", r.envelopes)
        .with("accepted", r.accepted)
        .with("rejected", r.rejected)
        .with("first_rejection", r.first_rejection.clone())
        .with("seconds", r.elapsed.as_secs_f64())
        .with("connections", r.connections)
        .with("accepted_per_s", r.accepted_per_s())
        .with("relay_cpu_us_per_envelope", cpu_us_per_envelope(r))
        .with("cpu", r.cpu.to_json())
        .with("store_syncs", r.syncs)
        .with("log_commits", r.commits)
}

/// The median of `xs` (the lower middle for an even count, like the other items' median round).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(f64::NAN)
}

/// The whole item. Returns the JSON; the caller prints the table from it.
pub fn run(launcher: &Launcher, host: &RelayHost, p: &SealPlan) -> Result<J> {
    let n_agents = p.senders.max(RECIPIENT_COUNTS[1] + 1);
    let agents: Arc<Vec<Agent>> = Arc::new(
        (0..n_agents)
            .map(|i| Agent::new(i, host))
            .collect::<Result<_>>()?,
    );

    // 1. Cost per message, on one of the relay's cores, with no relay running.
    crate::progress(&format!(
        "seal 1: seal / sign / open, {} iterations each for {:?} recipients, {}-byte text",
        p.iterations, RECIPIENT_COUNTS, p.text_bytes
    ));
    let costs: Vec<CryptoCost> = {
        let (agents, cpu, iters, text) = (
            agents.clone(),
            p.bench_cpu.clone(),
            p.iterations.max(1),
            p.text_bytes,
        );
        std::thread::spawn(move || -> Result<Vec<CryptoCost>> {
            if let Some(c) = &cpu {
                crate::sys::pin_current_thread(c)?;
            }
            let cpus = match &cpu {
                Some(c) => crate::sys::cpu_list(c)?,
                None => Vec::new(),
            };
            RECIPIENT_COUNTS
                .iter()
                .map(|&n| {
                    // What else ran on this core meanwhile (this process is the "relay" here).
                    let meter = CpuMeter::start(std::process::id(), &cpus);
                    let mut c = crypto_cost(&agents, n, iters, text)?;
                    c.cpu = Some(meter.stop());
                    Ok(c)
                })
                .collect()
        })
        .join()
        .map_err(|_| anyhow!("cost thread panicked"))??
    };
    for c in &costs {
        let m = CryptoCost::med;
        crate::progress(&format!(
            "seal 1: {} recipient(s): seal {:.1} us, sign {:.1} us, open {:.1} us (medians); seal/sign {:.2}, open/sign {:.2}",
            c.recipients,
            m(&c.seal_us),
            m(&c.sign_us),
            m(&c.open_us),
            m(&c.seal_us) / m(&c.sign_us),
            m(&c.open_us) / m(&c.sign_us)
        ));
    }

    // 2. Ingest. Sender k % S writes to agent (k + 1) % S, which granted it a contact.
    let s = p.senders.max(2);
    let warm = (p.latency_rate * p.latency_warmup_seconds) as usize;
    let lat = warm + (p.latency_rate * p.latency_seconds) as usize;
    let total = lat + 2 * p.envelopes;
    let keys: Vec<seal::EncPublicKey> = (0..s)
        .map(|i| enc_secret(i).public().context("weak key"))
        .collect::<Result<_>>()?;
    crate::progress(&format!(
        "seal 2: sealing and signing {total} envelopes, signing {total} plain ones of the same size, on {} threads",
        p.sign_threads
    ));
    let t = Instant::now();
    let cpus = p.sign_cpus.as_deref();
    let sealed_signed: Vec<SignedEnvelope> = par_map(total, p.sign_threads, cpus, &|k| {
        let (from, to) = (k % s, (k + 1) % s);
        let env = message(
            &agents[from],
            &[&agents[to].handle],
            &format!("seal{k:09}"),
            p.text_bytes,
        );
        Ok(sealed(&env, &keys[to..=to], k as u64)?.sign(&agents[from].key)?)
    })?;
    let target_payload = sealed_signed
        .first()
        .map(|e| e.payload_len())
        .context("no envelopes")?;
    if let Some(e) = sealed_signed
        .iter()
        .find(|e| e.payload_len() != target_payload)
    {
        bail!(
            "sealed payloads differ in size ({} and {target_payload} bytes)",
            e.payload_len()
        );
    }
    let plain_signed: Vec<SignedEnvelope> = par_map(total, p.sign_threads, cpus, &|k| {
        let (from, to) = (k % s, (k + 1) % s);
        Ok(message(
            &agents[from],
            &[&agents[to].handle],
            &format!("seal{k:09}"),
            text_len_for_payload(target_payload),
        )
        .sign(&agents[from].key)?)
    })?;
    let size_range = |v: &[SignedEnvelope]| {
        let it = v.iter().map(|e| e.wire().len());
        (it.clone().min().unwrap_or(0), it.max().unwrap_or(0))
    };
    let (sealed_min, sealed_max) = size_range(&sealed_signed);
    let (plain_min, plain_max) = size_range(&plain_signed);
    if let Some(e) = plain_signed
        .iter()
        .find(|e| e.payload_len() != target_payload)
    {
        bail!(
            "a padded plain payload has {} bytes, the sealed ones {target_payload}",
            e.payload_len()
        );
    }
    crate::progress(&format!(
        "seal 2: prepared in {:.1} s; payload {target_payload} bytes both; envelopes {sealed_min}-{sealed_max} bytes sealed, {plain_min}-{plain_max} plain",
        t.elapsed().as_secs_f64()
    ));
    let wires =
        |v: Vec<SignedEnvelope>| -> Vec<Vec<u8>> { v.iter().map(|e| e.wire_bytes()).collect() };
    let sets = [
        Sets::split(wires(plain_signed), lat, p.envelopes),
        Sets::split(wires(sealed_signed), lat, p.envelopes),
    ];

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut runs: Vec<KindRun> = Vec::new();
    for round in 1..=p.rounds {
        // Alternate which kind goes first, so a drift over the run favours neither.
        let order = if round % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        };
        for sealed_kind in order {
            let name = format!("seal-ingest-{}-r{round}", kind_name(sealed_kind));
            let set = &sets[usize::from(sealed_kind)];
            crate::progress(&format!(
                "seal 2: round {round}/{}: {name}: starting relay, registering {s} senders",
                p.rounds
            ));
            let mut relay = launcher.start(&name, false)?;
            let addr = relay.addr.clone();
            rt.block_on(crate::agents::register_all(&addr, agents.clone(), 0..s))?;
            rt.block_on(crate::agents::allow_all(
                &addr,
                agents.clone(),
                (0..s).map(|i| ((i + 1) % s, i)).collect(),
            ))?;
            let latency = rt.block_on(post_latency(
                &relay,
                &set.latency,
                p.latency_rate,
                warm,
                p.latency_conns,
            ))?;
            let mut through = Vec::new();
            for (endpoint, per, conns, w) in [
                (Endpoint::Single, 1, p.single_conns, &set.single),
                (Endpoint::Batch, p.batch_size, p.batch_conns, &set.batch),
            ] {
                let reqs = Arc::new(ingest::build_requests(&addr, w, endpoint, per));
                through.push(rt.block_on(ingest::run(
                    &relay,
                    reqs,
                    per,
                    w.len(),
                    conns,
                    endpoint,
                    false,
                ))?);
            }
            relay.stop()?;
            let _ = std::fs::remove_dir_all(relay.dir.clone());
            let (batch, single) = (through.remove(1), through.remove(0));
            crate::progress(&format!(
                "{name}: POST->201 @ {}/s p50 {:.2} ms p99 {:.2} ms ({} refused); single {:.0}/s ({} rejected), batch {:.0}/s ({} rejected); relay core {:.2}/{:.2}, other tasks {:.2}/{:.2}, steal {:.2}/{:.2}",
                p.latency_rate,
                latency.p(50.0),
                latency.p(99.0),
                latency.refused,
                single.accepted_per_s(),
                single.rejected,
                batch.accepted_per_s(),
                batch.rejected,
                single.cpu.relay_cores_busy,
                batch.cpu.relay_cores_busy,
                single.cpu.others_on_relay_cores,
                batch.cpu.others_on_relay_cores,
                single.cpu.steal_on_relay_cores,
                batch.cpu.steal_on_relay_cores,
            ));
            for (what, r) in [("single", &single), ("batch", &batch)] {
                if let Some(f) = &r.first_rejection {
                    crate::progress(&format!("{name}: {what}: first rejection: {f}"));
                }
            }
            if let Some(f) = &latency.first_refusal {
                crate::progress(&format!("{name}: latency: first refusal: {f}"));
            }
            runs.push(KindRun {
                sealed: sealed_kind,
                round,
                latency,
                single,
                batch,
            });
        }
    }

    // Medians over rounds, per kind, and the ratios sealed / plain.
    let med = |sealed_kind: bool, f: &dyn Fn(&KindRun) -> f64| {
        median(
            runs.iter()
                .filter(|r| r.sealed == sealed_kind)
                .map(f)
                .collect(),
        )
    };
    let phases = || {
        runs.iter()
            .flat_map(|r| [r.latency.cpu, r.single.cpu, r.batch.cpu])
    };
    let worst = |f: &dyn Fn(&CpuUse) -> f64| phases().map(|c| f(&c)).fold(0.0, f64::max);
    let interference = J::obj()
        .with(
            "other_tasks_on_relay_cores",
            worst(&|c| c.others_on_relay_cores),
        )
        .with(
            "other_tasks_on_loadgen_cores",
            worst(&|c| c.others_on_loadgen_cores),
        )
        .with("steal_on_relay_cores", worst(&|c| c.steal_on_relay_cores));
    let refused_all: u64 = runs
        .iter()
        .map(|r| r.latency.refused as u64 + r.single.rejected + r.batch.rejected)
        .sum();
    let figures: [Figure<'_>; 6] = [
        ("single_accepted_per_s", &|r| r.single.accepted_per_s()),
        ("batch_accepted_per_s", &|r| r.batch.accepted_per_s()),
        ("post_to_201_p50_ms", &|r| r.latency.p(50.0)),
        ("post_to_201_p99_ms", &|r| r.latency.p(99.0)),
        ("single_relay_cpu_us_per_envelope", &|r| {
            cpu_us_per_envelope(&r.single)
        }),
        ("batch_relay_cpu_us_per_envelope", &|r| {
            cpu_us_per_envelope(&r.batch)
        }),
    ];
    let mut medians = J::obj();
    let mut ratios = J::obj();
    for (k, f) in figures {
        let (pl, se) = (med(false, f), med(true, f));
        medians.set(k, J::obj().with("plain", pl).with("sealed", se));
        ratios.set(&format!("{k}_sealed_over_plain"), se / pl);
    }
    // The ratio of each round (the plain and sealed relays of the same round).
    let mut per_round = Vec::new();
    for round in 1..=p.rounds {
        let get = |sk: bool| runs.iter().find(|r| r.round == round && r.sealed == sk);
        if let (Some(a), Some(b)) = (get(false), get(true)) {
            per_round.push(
                J::obj()
                    .with("round", round)
                    .with("first", if round % 2 == 1 { "plain" } else { "sealed" })
                    .with(
                        "single_sealed_over_plain",
                        b.single.accepted_per_s() / a.single.accepted_per_s(),
                    )
                    .with(
                        "batch_sealed_over_plain",
                        b.batch.accepted_per_s() / a.batch.accepted_per_s(),
                    )
                    .with(
                        "post_to_201_p50_sealed_over_plain",
                        b.latency.p(50.0) / a.latency.p(50.0),
                    )
                    .with(
                        "post_to_201_p99_sealed_over_plain",
                        b.latency.p(99.0) / a.latency.p(99.0),
                    ),
            );
        }
    }
    let runs_json: Vec<J> = runs
        .iter()
        .map(|r| {
            J::obj()
                .with("round", r.round)
                .with("kind", kind_name(r.sealed))
                .with("post_to_201", r.latency.to_json())
                .with("single", ingest_json(&r.single))
                .with("batch", ingest_json(&r.batch))
        })
        .collect();

    Ok(J::obj()
        .with(
            "cost",
            J::obj()
                .with("what", "per message, in-process on one thread pinned to a relay core, no relay running; each operation timed on its own, all of them in every iteration; random inputs made before the clock starts")
                .with("cpu", p.bench_cpu.clone())
                .with("text_bytes", p.text_bytes)
                .with("iterations", p.iterations)
                .with("warmup_iterations", WARMUP_ITERATIONS)
                .with(
                    "by_recipients",
                    J::Arr(costs.iter().map(CryptoCost::to_json).collect()),
                ),
        )
        .with(
            "ingest",
            J::obj()
                .with("what", "sealed (one recipient, no sender copy) and plain envelopes of the same canonical payload size; per round one fresh durable relay per kind, alternating which goes first; on each: POST->201 at a fixed rate (open loop), then the single and the batch endpoint, closed loop")
                .with("senders", s)
                .with("topology", "sender i posts to agent i+1, which granted i a contact; nobody reads")
                .with("text_bytes_before_sealing", p.text_bytes)
                .with("payload_bytes_both", target_payload)
                .with("envelope_bytes_sealed_min", sealed_min)
                .with("envelope_bytes_sealed_max", sealed_max)
                .with("envelope_bytes_plain_min", plain_min)
                .with("envelope_bytes_plain_max", plain_max)
                .with("envelopes_per_throughput_run", p.envelopes)
                .with("single_connections", p.single_conns)
                .with("batch_connections", p.batch_conns)
                .with("batch_size", p.batch_size)
                .with("latency_offered_per_s", p.latency_rate)
                .with("latency_seconds", p.latency_seconds)
                .with("latency_warmup_envelopes_excluded", warm)
                .with("latency_connections", p.latency_conns)
                .with("rounds", p.rounds)
                .with("figures", "median over rounds of each figure, per kind; ratios of those medians")
                .with("medians", medians)
                .with("ratios", ratios)
                .with("target_ratio_throughput_at_least", TARGET_RATIO)
                .with("target_ratio_latency_at_most", TARGET_LATENCY_RATIO)
                .with("refused_or_rejected_all_runs", refused_all)
                .with("interference_worst_phase", interference)
                .with("per_round_ratios", J::Arr(per_round))
                .with("runs", J::Arr(runs_json)),
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The padded plain envelope has the sealed one's payload size, and what is sealed opens.
    #[test]
    fn same_size_and_opens() -> Result<()> {
        let host = crate::relay_proc::host();
        let a: Vec<Agent> = (0..3)
            .map(|i| Agent::new(i, &host))
            .collect::<Result<_>>()?;
        for text in [10, 1024, 3000] {
            let env = message(&a[0], &[&a[1].handle, &a[2].handle], "t", text);
            let keys = [
                enc_secret(1).public().context("key")?,
                enc_secret(2).public().context("key")?,
            ];
            let se = sealed(&env, &keys, 7)?;
            let plain = message(
                &a[0],
                &[&a[1].handle],
                "t",
                text_len_for_payload(payload_len(&se)),
            );
            assert_eq!(payload_len(&plain), payload_len(&se));
            let log = key_log(&a[2], 2)?;
            let opened = seal::open(&se, &a[2].handle, &log, |_| Some(enc_secret(2)))
                .map_err(|e| anyhow!("{e}"))?;
            assert_eq!(opened, env.payload);
        }
        Ok(())
    }
}
