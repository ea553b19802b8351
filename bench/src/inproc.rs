//! In-process figures: the verification bound (item 1) and proof-of-work (item 7). Each runs
//! on one thread pinned to one of the relay's cores, on envelopes signed beforehand.

use crate::report::J;
use anyhow::{Context, Result};
use formica_protocol::envelope::{EnvelopeLimits, SignedEnvelope};
use formica_protocol::json::JsonLimits;
use formica_protocol::{pow, PublicKey};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The limits a relay with default policy parses envelopes under (relay/src/http/request.rs
/// `envelope_limits`: 64 KiB, depth 32, 16 recipients).
pub fn relay_envelope_limits() -> EnvelopeLimits {
    EnvelopeLimits {
        json: JsonLimits {
            bytes_max: 64 * 1024,
            depth_max: 32,
        },
        recipients_max: 16,
        payload_bytes_max: 64 * 1024,
    }
}

/// Time the calling thread has spent on a CPU (`/proc/thread-self/schedstat`), so that a rate
/// is per second of one core even when other processes share the machine.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace()
        .next()?
        .parse()
        .ok()
        .map(Duration::from_nanos)
}

/// Runs `f` over and over for at least `min` of wall time (and at least once); returns
/// operations per second of the thread's CPU time (wall time where that is unavailable).
fn per_second(min: Duration, mut f: impl FnMut() -> Result<u64>) -> Result<f64> {
    let (t0, c0) = (Instant::now(), thread_cpu());
    let mut ops = 0u64;
    while t0.elapsed() < min || ops == 0 {
        ops += f()?;
    }
    let secs = match (c0, thread_cpu()) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => t0.elapsed().as_secs_f64(),
    };
    Ok(ops as f64 / secs)
}

/// Item 1: the pipeline a relay runs on each envelope (strict parse, closed schema, RFC 8785
/// canonical signing input, BLAKE3 id, Ed25519 verify_strict), the same without the
/// signature check, and the raw verify_strict alone.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub pipeline_per_s: f64,
    pub parse_only_per_s: f64,
    pub verify_only_per_s: f64,
}

pub fn bound(wires: &[Vec<u8>], keys: &[PublicKey], min: Duration) -> Result<Bound> {
    let limits = relay_envelope_limits();
    // Warm caches and check every envelope verifies, so the loop measures the success path.
    let parsed: Vec<SignedEnvelope> = wires
        .iter()
        .map(|w| SignedEnvelope::parse(w, &limits))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (se, k) in parsed.iter().zip(keys) {
        se.clone()
            .verify(k)
            .map_err(|e| anyhow::anyhow!("pre-signed envelope does not verify: {e}"))?;
    }
    let n = wires.len() as u64;
    let pipeline_per_s = per_second(min, || {
        for (w, k) in wires.iter().zip(keys) {
            let se =
                SignedEnvelope::parse(black_box(w), &limits).map_err(|e| anyhow::anyhow!("{e}"))?;
            black_box(se.verify(k).map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        Ok(n)
    })?;
    let parse_only_per_s = per_second(min, || {
        for w in wires {
            black_box(
                SignedEnvelope::parse(black_box(w), &limits).map_err(|e| anyhow::anyhow!("{e}"))?,
            );
        }
        Ok(n)
    })?;
    let verify_only_per_s = per_second(min, || {
        for (se, k) in parsed.iter().zip(keys) {
            k.verify_input(black_box(se.signing_input()), se.signature())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(n)
    })?;
    Ok(Bound {
        pipeline_per_s,
        parse_only_per_s,
        verify_only_per_s,
    })
}

impl Bound {
    pub fn to_json(self, cpu: &str, envelope_bytes: usize) -> J {
        J::obj()
            .with("pipeline_per_s", self.pipeline_per_s)
            .with("pipeline_us_per_envelope", 1e6 / self.pipeline_per_s)
            .with("parse_canonicalize_hash_per_s", self.parse_only_per_s)
            .with("verify_strict_per_s", self.verify_only_per_s)
            .with("verify_strict_us", 1e6 / self.verify_only_per_s)
            .with("envelope_bytes", envelope_bytes)
            .with("threads", 1u64)
            .with("cpu", cpu)
    }
}

/// Item 7: mining rate on one core, and the cost of checking one proof.
#[derive(Debug, Clone, Copy)]
pub struct PowFigures {
    pub hashes_per_s: f64,
    pub check_ns: f64,
    pub prefix_and_check_ns: f64,
    pub difficulty_default: u32,
}

pub fn pow_figures(min: Duration) -> Result<PowFigures> {
    let host = crate::relay_proc::host();
    let agent = crate::agents::Agent::new(0, &host)?;
    let challenge = pow::Challenge([7u8; 16]);
    let d = 8;
    let prefix = pow::preimage_prefix(&host, &agent.handle, &agent.key.public(), &challenge, d);
    // Difficulty 256 is never met, so `mine` runs all its tries: pure mining rate.
    const TRIES: u64 = 1 << 16;
    let mut start = 0u64;
    let hashes_per_s = per_second(min, || {
        black_box(pow::mine(black_box(&prefix), 256, start, 1, TRIES));
        start += TRIES;
        Ok(TRIES)
    })?;
    let nonce = pow::mine(&prefix, d, 0, 1, u64::MAX).context("no nonce")?;
    let proof = pow::PowProof {
        challenge,
        difficulty: d,
        nonce,
    };
    let checks = per_second(min, || {
        for _ in 0..1000 {
            pow::check(black_box(&prefix), black_box(&proof), d)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(1000)
    })?;
    let key = agent.key.public();
    let full = per_second(min, || {
        for _ in 0..1000 {
            let p = pow::preimage_prefix(&host, &agent.handle, &key, &challenge, d);
            pow::check(black_box(&p), black_box(&proof), d).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(1000)
    })?;
    Ok(PowFigures {
        hashes_per_s,
        check_ns: 1e9 / checks,
        prefix_and_check_ns: 1e9 / full,
        difficulty_default: 20,
    })
}

impl PowFigures {
    pub fn to_json(self, cpu: &str) -> J {
        let expected = 2f64.powi(self.difficulty_default as i32);
        J::obj()
            .with("hashes_per_s_per_core", self.hashes_per_s)
            .with("check_ns", self.check_ns)
            .with("preimage_and_check_ns", self.prefix_and_check_ns)
            .with("default_difficulty_bits", self.difficulty_default)
            .with(
                "expected_mining_s_at_default_one_core",
                expected / self.hashes_per_s,
            )
            .with("cpu", cpu)
    }
}
