//! Proof-of-work mining for registration on every core, with a progress line on a terminal.
//!
//! The search itself is `formica_protocol::pow::mine`; this module only splits the nonce space
//! between threads (thread `t` of `n` tries `t, t + n, t + 2n, ...` in chunks) and stops them all
//! when one finds a nonce or the deadline passes.

use formica_protocol::pow;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most nonces a thread tries between looks at the stop flag: a few milliseconds of work.
/// Easy targets use smaller chunks (2^difficulty, at least 256) so the hash count stays close.
const CHUNK_TRIES_MAX: u64 = 1 << 15;
/// How often the main thread looks for a result and checks the deadline.
const POLL_INTERVAL_MS: u64 = 10;
/// How often the progress line is redrawn.
const PROGRESS_INTERVAL_MS: u64 = 200;

/// A found proof.
#[derive(Debug, Clone, Copy)]
pub struct Mined {
    pub nonce: u64,
    /// Hashes computed by all threads (approximate: whole chunks are counted).
    pub hashes: u64,
    pub elapsed: Duration,
}

/// Mines `prefix` at `difficulty` until a nonce is found or `deadline` passes (`None`).
/// With `progress`, a line on stderr shows the hash rate and the expected time, 2^d / rate.
pub fn solve(prefix: &[u8], difficulty: u32, deadline: Instant, progress: bool) -> Option<Mined> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as u64;
    let stop = AtomicBool::new(false);
    let hashes = AtomicU64::new(0);
    let found: Mutex<Option<u64>> = Mutex::new(None);
    let start = Instant::now();
    let chunk_tries = (1u64 << difficulty.min(15)).clamp(256, CHUNK_TRIES_MAX);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, hashes, found) = (&stop, &hashes, &found);
            s.spawn(move || {
                for chunk in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    // First nonce of this chunk: t + chunk * chunk_tries * threads.
                    let first = chunk
                        .checked_mul(chunk_tries * threads)
                        .and_then(|x| x.checked_add(t));
                    let Some(first) = first.filter(|f| *f <= pow::NONCE_MAX) else {
                        return; // nonce space exhausted (never in practice: 2^53 nonces)
                    };
                    let hit = pow::mine(prefix, difficulty, first, threads, chunk_tries);
                    // The winner counts exactly the nonces it tried; the others whole chunks.
                    let tried = hit.map_or(chunk_tries, |n| (n - first) / threads + 1);
                    hashes.fetch_add(tried, Ordering::Relaxed);
                    if let Some(n) = hit {
                        let mut f = found.lock().unwrap_or_else(|p| p.into_inner());
                        f.get_or_insert(n);
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
        let mut stderr = std::io::stderr();
        let mut drawn = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
            if Instant::now() >= deadline {
                stop.store(true, Ordering::Relaxed);
            }
            if progress && drawn.elapsed() >= Duration::from_millis(PROGRESS_INTERVAL_MS) {
                drawn = Instant::now();
                let secs = start.elapsed().as_secs_f64().max(1e-3);
                let rate = hashes.load(Ordering::Relaxed) as f64 / secs;
                let expected = 2f64.powi(difficulty as i32) / rate.max(1.0);
                let _ = write!(
                    stderr,
                    "\r\x1b[2Kmining proof-of-work: difficulty {difficulty}, {} hash/s on {threads} threads, expected {}, elapsed {:.0} s",
                    si(rate),
                    human_secs(expected),
                    secs
                );
                let _ = stderr.flush();
            }
        }
        if progress {
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
        }
    });
    let nonce = (*found.lock().unwrap_or_else(|p| p.into_inner()))?;
    Some(Mined {
        nonce,
        hashes: hashes.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    })
}

fn si(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.1} G", x / 1e9),
        x if x >= 1e6 => format!("{:.1} M", x / 1e6),
        x if x >= 1e3 => format!("{:.1} k", x / 1e3),
        x => format!("{x:.0} "),
    }
}

fn human_secs(s: f64) -> String {
    match s {
        s if s < 90.0 => format!("~{s:.0} s"),
        s if s < 5400.0 => format!("~{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("~{:.1} h", s / 3600.0),
        s => format!("~{:.0} days", s / 86_400.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_nonce_that_checks() {
        let prefix = b"formica/v1/pow\0test-prefix".to_vec();
        let Some(m) = solve(&prefix, 10, Instant::now() + Duration::from_secs(30), false) else {
            panic!("no nonce found at difficulty 10 in 30 s");
        };
        let proof = pow::PowProof {
            challenge: pow::Challenge([0; 16]),
            difficulty: 10,
            nonce: m.nonce,
        };
        assert!(pow::check(&prefix, &proof, 10).is_ok());
    }

    #[test]
    fn gives_up_at_the_deadline() {
        let prefix = b"formica/v1/pow\0test-prefix".to_vec();
        assert!(solve(
            &prefix,
            200,
            Instant::now() + Duration::from_millis(300),
            false
        )
        .is_none());
    }
}
