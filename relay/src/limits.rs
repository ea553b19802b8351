//! In-memory limiters: token buckets per agent key and per client IP, request nonces seen within
//! the freshness window, and outstanding proof-of-work challenges. None of this is durable on
//! purpose: after a restart buckets start full, challenges must be fetched again, and nonces
//! are bounded by the freshness window (SPEC.md AUTH-6 notes what a restart allows).

use formica_protocol::auth::Nonce;
use formica_protocol::pow::Challenge;
use formica_protocol::Handle;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Most tracked keys in one limiter; the least recently refilled are dropped beyond it.
pub const TRACKED_MAX: usize = 100_000;
/// Most outstanding challenges; older ones are dropped (they would expire anyway).
pub const CHALLENGES_MAX: usize = 100_000;

/// Token buckets keyed by `K`.
#[derive(Debug)]
pub struct Buckets<K> {
    buckets: HashMap<K, (f64, i64)>,
}

impl<K: Hash + Eq + Clone> Default for Buckets<K> {
    fn default() -> Self {
        Buckets {
            buckets: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// Takes one token from `key`'s bucket (capacity `burst`, refilled at `per_min` per minute).
    /// On refusal returns the seconds until a token is available.
    pub fn take(&mut self, key: &K, per_min: u32, burst: u32, now: i64) -> Result<(), i64> {
        if self.buckets.len() >= TRACKED_MAX && !self.buckets.contains_key(key) {
            let cutoff = now - 60_000;
            self.buckets.retain(|_, (_, t)| *t > cutoff);
        }
        let rate_per_ms = f64::from(per_min) / 60_000.0;
        let cap = f64::from(burst.max(1));
        let (tokens, last) = self.buckets.entry(key.clone()).or_insert((cap, now));
        *tokens = (*tokens + (now - *last).max(0) as f64 * rate_per_ms).min(cap);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else if rate_per_ms > 0.0 {
            Err((((1.0 - *tokens) / rate_per_ms) / 1000.0).ceil() as i64)
        } else {
            Err(60)
        }
    }
}

/// Request nonces seen in the last `retention_ms`.
#[derive(Debug, Default)]
pub struct Nonces {
    seen: HashMap<(Handle, Nonce), i64>,
    order: VecDeque<(i64, Handle, Nonce)>,
}

impl Nonces {
    /// Records a nonce; false if it was already seen and has not expired.
    pub fn insert(&mut self, h: &Handle, n: Nonce, now: i64, retention_ms: i64) -> bool {
        while let Some((t, _, _)) = self.order.front() {
            if *t > now - retention_ms {
                break;
            }
            if let Some((_, hh, nn)) = self.order.pop_front() {
                self.seen.remove(&(hh, nn));
            }
        }
        let key = (h.clone(), n);
        if self.seen.contains_key(&key) {
            return false;
        }
        self.seen.insert(key, now);
        self.order.push_back((now, h.clone(), n));
        true
    }
}

/// Challenges issued and not yet used or expired.
#[derive(Debug, Default)]
pub struct Challenges {
    open: HashMap<Challenge, (i64, u32)>,
    order: VecDeque<Challenge>,
}

/// What [`Challenges::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeState {
    Open { difficulty: u32 },
    Expired,
    Unknown,
}

impl Challenges {
    pub fn issue(&mut self, c: Challenge, expires: i64, difficulty: u32) {
        while self.open.len() >= CHALLENGES_MAX {
            match self.order.pop_front() {
                Some(old) => {
                    self.open.remove(&old);
                }
                None => break,
            }
        }
        self.open.insert(c, (expires, difficulty));
        self.order.push_back(c);
    }

    pub fn check(&self, c: &Challenge, now: i64) -> ChallengeState {
        match self.open.get(c) {
            Some((exp, d)) if *exp > now => ChallengeState::Open { difficulty: *d },
            Some(_) => ChallengeState::Expired,
            None => ChallengeState::Unknown,
        }
    }

    /// Forgets a challenge once a registration used it.
    pub fn consume(&mut self, c: &Challenge) {
        self.open.remove(c);
    }
}
