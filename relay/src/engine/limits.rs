//! Admission limiters: token buckets per agent key and per client IP, request nonces seen within
//! the freshness window, and outstanding proof-of-work challenges. Buckets are in memory only
//! (after a restart they start full). Nonces and challenges survive a restart: each change is
//! written to their [`Journal`], which the writer commits with its next batch (a deadline tick
//! makes one when nothing else writes), and a start loads them back ([`Nonces::restore`],
//! [`Challenges::restore`]), so that a request captured before a restart cannot be replayed
//! after it (SPEC.md AUTH-6).
//!
//! Every table has a hard cap on its entries. When a table is full, entries that no longer
//! carry information are dropped first (a bucket that has refilled completely, a nonce older
//! than the retention); if it is still full, the new request is refused rather than an entry
//! being dropped early: dropping a live nonce would allow a replay, and dropping a live bucket
//! would hand its owner a fresh burst.

use formica_protocol::auth::Nonce;
use formica_protocol::pow::Challenge;
use formica_protocol::Handle;
use std::collections::{HashMap, VecDeque};

/// Rows of the store's `admission` table changed and not yet committed: key -> value, or
/// `None` to remove it. Keys are unique, so it holds at most one row per live nonce or
/// challenge (bounded by `limits.nonces_max` and `limits.challenges_max`) plus the removals
/// of expired ones.
pub type Journal = std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The `admission` row of a nonce: `n NUL handle NUL nonce(hex)`; its value is the time seen.
pub fn nonce_key(h: &Handle, n: &Nonce) -> Vec<u8> {
    format!("n\0{h}\0{}", n.to_hex()).into_bytes()
}

/// The `admission` row of a challenge: `c NUL challenge(hex)`; its value is
/// `expires difficulty address` as text.
pub fn challenge_key(c: &Challenge) -> Vec<u8> {
    format!("c\0{}", c.to_hex()).into_bytes()
}
use std::hash::Hash;
use std::net::IpAddr;

/// Token buckets keyed by `K`, at most `max` of them.
#[derive(Debug)]
pub struct Buckets<K> {
    /// key -> (tokens, last refill, time at which the bucket is full again).
    buckets: HashMap<K, (f64, i64, i64)>,
    max: usize,
}

impl<K: Hash + Eq + Clone> Default for Buckets<K> {
    fn default() -> Self {
        Buckets::new(crate::engine::policy::Limits::default().rate_limit_keys_max)
    }
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// An empty table holding at most `max` buckets (`limits.rate_limit_keys_max`).
    pub fn new(max: usize) -> Self {
        Buckets {
            buckets: HashMap::new(),
            max: max.max(1),
        }
    }

    /// Number of tracked buckets.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no bucket is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Takes one token from `key`'s bucket (capacity `burst`, refilled at `per_min` per minute).
    /// On refusal returns the seconds until a token is available. A key that is not tracked
    /// while the table is full is refused (with the seconds until the first bucket refills)
    /// once the buckets that have refilled completely are dropped.
    pub fn take(&mut self, key: &K, per_min: u32, burst: u32, now: i64) -> Result<(), i64> {
        if self.buckets.len() >= self.max && !self.buckets.contains_key(key) {
            // A full bucket is what a new key gets anyway: forgetting it changes nothing.
            self.buckets.retain(|_, (_, _, full_at)| *full_at > now);
            if self.buckets.len() >= self.max {
                let soonest = self
                    .buckets
                    .values()
                    .map(|(_, _, f)| *f)
                    .min()
                    .unwrap_or(now);
                return Err(((soonest - now).max(1) + 999) / 1000);
            }
        }
        let rate_per_ms = f64::from(per_min) / 60_000.0;
        let cap = f64::from(burst.max(1));
        let (tokens, last, full_at) = self.buckets.entry(key.clone()).or_insert((cap, now, now));
        *tokens = (*tokens + (now - *last).max(0) as f64 * rate_per_ms).min(cap);
        *last = now;
        let res = if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else if rate_per_ms > 0.0 {
            Err((((1.0 - *tokens) / rate_per_ms) / 1000.0).ceil() as i64)
        } else {
            Err(60)
        };
        *full_at = if rate_per_ms > 0.0 {
            now + ((cap - *tokens) / rate_per_ms).ceil() as i64
        } else if *tokens >= cap {
            now
        } else {
            i64::MAX
        };
        res
    }
}

/// Why [`Nonces::insert`] did not record a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceRefused {
    /// The (handle, nonce) pair was seen within the retention: a replay (`nonce_reused`).
    Reused,
    /// The table holds `limits.nonces_max` live nonces; the request is refused and can be
    /// retried after this many seconds, when the oldest one expires (`unavailable`).
    Full { retry_after_s: i64 },
    /// This handle (agent, or `@relay@host` for a peer) already has
    /// `limits.nonces_per_handle_max` live nonces: it may not fill the table for everyone
    /// (`rate_limited`, retry within the retention).
    HandleFull { retry_after_s: i64 },
}

/// Request nonces seen in the last `retention_ms`, at most `max` of them.
#[derive(Debug)]
pub struct Nonces {
    seen: HashMap<(Handle, Nonce), i64>,
    order: VecDeque<(i64, Handle, Nonce)>,
    /// Live nonces per handle.
    per: HashMap<Handle, usize>,
    max: usize,
    per_max: usize,
    /// Changes for the store.
    pub journal: Journal,
}

impl Default for Nonces {
    fn default() -> Self {
        let l = crate::engine::policy::Limits::default();
        Nonces::new(l.nonces_max, l.nonces_per_handle_max)
    }
}

impl Nonces {
    /// An empty table holding at most `max` nonces (`limits.nonces_max`), at most `per_max` of
    /// them for one handle (`limits.nonces_per_handle_max`).
    pub fn new(max: usize, per_max: usize) -> Self {
        Nonces {
            seen: HashMap::new(),
            order: VecDeque::new(),
            per: HashMap::new(),
            max: max.max(1),
            per_max: per_max.max(1),
            journal: Journal::new(),
        }
    }

    /// A nonce seen at `at`, loaded from the store at start-up (in the order they were
    /// seen). One that has expired by `now` is removed from the store instead.
    pub fn restore(&mut self, h: Handle, n: Nonce, at: i64, now: i64, retention_ms: i64) {
        let key = (h.clone(), n);
        if at <= now - retention_ms || self.seen.contains_key(&key) {
            self.journal.insert(nonce_key(&h, &n), None);
            return;
        }
        *self.per.entry(h.clone()).or_insert(0) += 1;
        self.seen.insert(key, at);
        self.order.push_back((at, h, n));
    }

    /// Sorts what [`restore`](Self::restore) loaded into the order nonces expire in.
    pub fn restored(&mut self) {
        self.order.make_contiguous().sort_by_key(|(t, _, _)| *t);
    }

    /// Number of remembered nonces.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Records a nonce. Refused if it was already seen and has not expired, or if the table
    /// is full of nonces that have not expired (none is forgotten early: that would let a
    /// captured request be replayed).
    pub fn insert(
        &mut self,
        h: &Handle,
        n: Nonce,
        now: i64,
        retention_ms: i64,
    ) -> Result<(), NonceRefused> {
        while let Some((t, _, _)) = self.order.front() {
            if *t > now - retention_ms {
                break;
            }
            if let Some((_, hh, nn)) = self.order.pop_front() {
                if let Some(c) = self.per.get_mut(&hh) {
                    *c -= 1;
                    if *c == 0 {
                        self.per.remove(&hh);
                    }
                }
                self.journal.insert(nonce_key(&hh, &nn), None);
                self.seen.remove(&(hh, nn));
            }
        }
        let key = (h.clone(), n);
        if self.seen.contains_key(&key) {
            return Err(NonceRefused::Reused);
        }
        if self.seen.len() >= self.max {
            let oldest = self.order.front().map(|(t, _, _)| *t).unwrap_or(now);
            let wait_ms = (oldest + retention_ms - now).max(1);
            return Err(NonceRefused::Full {
                retry_after_s: (wait_ms + 999) / 1000,
            });
        }
        if self.per.get(h).copied().unwrap_or(0) >= self.per_max {
            return Err(NonceRefused::HandleFull {
                retry_after_s: (retention_ms + 999) / 1000,
            });
        }
        *self.per.entry(h.clone()).or_insert(0) += 1;
        self.seen.insert(key, now);
        self.order.push_back((now, h.clone(), n));
        self.journal
            .insert(nonce_key(h, &n), Some(now.to_be_bytes().to_vec()));
        Ok(())
    }
}

/// Challenges issued and not yet used or expired, at most `max` of them and at most `per_max`
/// for one client address. A full table refuses new challenges rather than evicting live
/// ones: evicting would let a client with many addresses cancel other users' registrations
/// in progress.
#[derive(Debug)]
pub struct Challenges {
    /// challenge -> (expiry, difficulty, the address it was issued to).
    open: HashMap<Challenge, (i64, u32, Option<IpAddr>)>,
    /// (expiry, challenge) in issue order; the lifetime is the same for all, so also expiry
    /// order. Used challenges stay here until they would have expired.
    order: VecDeque<(i64, Challenge)>,
    /// Live challenges per client address.
    per: HashMap<IpAddr, usize>,
    max: usize,
    per_max: usize,
    /// Challenges swept because they expired, for [`EXPIRED_KEPT_MS`] after their expiry (at
    /// most `max`, oldest first): a registration that comes late is told `challenge_expired`,
    /// not `challenge_unknown` (API-4 step 12), whatever other clients' challenges swept the
    /// table meanwhile. They hold no place in the table or an address's count.
    recent: HashMap<Challenge, i64>,
    recent_order: VecDeque<(i64, Challenge)>,
    /// Changes for the store.
    pub journal: Journal,
}

/// How long an expired challenge is still known as expired once swept from the table: 60 s.
pub const EXPIRED_KEPT_MS: i64 = 60_000;

/// What [`Challenges::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeState {
    Open { difficulty: u32 },
    Expired,
    Unknown,
}

/// Why [`Challenges::issue`] made no challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeRefused {
    /// `limits.challenges_max` live challenges: `unavailable` until the oldest expires.
    Full { retry_after_s: i64 },
    /// This address holds `limits.challenges_per_ip_max` live challenges: `rate_limited`.
    AddressFull { retry_after_s: i64 },
}

impl Default for Challenges {
    fn default() -> Self {
        let l = crate::engine::policy::Limits::default();
        Challenges::new(l.challenges_max, l.challenges_per_ip_max)
    }
}

impl Challenges {
    /// An empty table (`limits.challenges_max`, `limits.challenges_per_ip_max`).
    pub fn new(max: usize, per_max: usize) -> Challenges {
        Challenges {
            open: HashMap::new(),
            order: VecDeque::new(),
            per: HashMap::new(),
            max: max.max(1),
            per_max: per_max.max(1),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            journal: Journal::new(),
        }
    }

    /// The value of a challenge's `admission` row.
    fn row(expires: i64, difficulty: u32, client: Option<IpAddr>) -> Vec<u8> {
        let ip = client.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        format!("{expires} {difficulty} {ip}").into_bytes()
    }

    /// A challenge loaded from the store at start-up (`row` as [`issue`](Self::issue) wrote
    /// it). One that has expired by `now`, or does not read back, is removed instead.
    pub fn restore(&mut self, c: Challenge, row: &[u8], now: i64) {
        match Self::parse_row(row) {
            Some((expires, difficulty, ip)) if expires > now && !self.open.contains_key(&c) => {
                if let Some(ip) = ip {
                    *self.per.entry(ip).or_insert(0) += 1;
                }
                self.open.insert(c, (expires, difficulty, ip));
                self.order.push_back((expires, c));
            }
            _ => {
                self.journal.insert(challenge_key(&c), None);
            }
        }
    }

    /// A challenge's row: expiry, difficulty, client address.
    fn parse_row(row: &[u8]) -> Option<(i64, u32, Option<IpAddr>)> {
        let s = std::str::from_utf8(row).ok()?;
        let mut it = s.split(' ');
        let expires: i64 = it.next()?.parse().ok()?;
        let difficulty: u32 = it.next()?.parse().ok()?;
        let ip = match it.next()? {
            "-" => None,
            a => Some(a.parse::<IpAddr>().ok()?),
        };
        Some((expires, difficulty, ip))
    }

    /// Several nodes: a challenge another node issued, read from the shared store (`row` as
    /// [`issue`](Self::issue) wrote it): open here until it expires, then expired for as long
    /// as one of this node's own would be. Nothing is journalled (the row is the other
    /// node's).
    pub fn learn(&mut self, c: Challenge, row: &[u8], now: i64) {
        self.restore(c, row, now);
        self.journal.remove(&challenge_key(&c));
        self.restored();
        if let Some((exp, _, _)) = Self::parse_row(row) {
            if !self.open.contains_key(&c) && exp + EXPIRED_KEPT_MS > now {
                self.recent.insert(c, exp);
                self.recent_order.push_back((exp, c));
            }
        }
    }

    /// Sorts what [`restore`](Self::restore) loaded into expiry order.
    pub fn restored(&mut self) {
        self.order.make_contiguous().sort_by_key(|(e, _)| *e);
    }

    /// Number of live (issued, unused) challenges, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// True when no challenge is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Forgets challenges that expired by `now` (remembering them as expired for a while).
    fn sweep(&mut self, now: i64) {
        while let Some((exp, c)) = self.order.front().copied() {
            if exp > now {
                break;
            }
            self.order.pop_front();
            if let Some((e, _, _)) = self.open.get(&c) {
                if *e == exp {
                    self.forget(&c);
                    self.recent.insert(c, exp);
                    self.recent_order.push_back((exp, c));
                }
            }
        }
        while let Some((exp, c)) = self.recent_order.front().copied() {
            if exp + EXPIRED_KEPT_MS > now && self.recent_order.len() <= self.max {
                break;
            }
            self.recent_order.pop_front();
            self.recent.remove(&c);
        }
    }

    fn forget(&mut self, c: &Challenge) {
        self.journal.insert(challenge_key(c), None);
        if let Some((_, _, Some(ip))) = self.open.remove(c) {
            if let Some(n) = self.per.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per.remove(&ip);
                }
            }
        }
    }

    /// Records a challenge issued at `now` to `client` (when the address is known), expiring at
    /// `expires`; refused when the table or the address has as many live challenges as it may.
    pub fn issue(
        &mut self,
        c: Challenge,
        expires: i64,
        difficulty: u32,
        client: Option<IpAddr>,
        now: i64,
    ) -> Result<(), ChallengeRefused> {
        self.sweep(now);
        let wait = |until: i64| ((until - now).max(1) + 999) / 1000;
        if self.open.len() >= self.max {
            let oldest = self.order.front().map_or(expires, |(e, _)| *e);
            return Err(ChallengeRefused::Full {
                retry_after_s: wait(oldest),
            });
        }
        if let Some(ip) = client {
            if self.per.get(&ip).copied().unwrap_or(0) >= self.per_max {
                // Its oldest live challenge expires within the lifetime at the latest.
                return Err(ChallengeRefused::AddressFull {
                    retry_after_s: wait(expires),
                });
            }
            *self.per.entry(ip).or_insert(0) += 1;
        }
        self.open.insert(c, (expires, difficulty, client));
        self.order.push_back((expires, c));
        self.journal.insert(
            challenge_key(&c),
            Some(Self::row(expires, difficulty, client)),
        );
        Ok(())
    }

    pub fn check(&self, c: &Challenge, now: i64) -> ChallengeState {
        match self.open.get(c) {
            Some((exp, d, _)) if *exp > now => ChallengeState::Open { difficulty: *d },
            Some(_) => ChallengeState::Expired,
            None if self.recent.contains_key(c) => ChallengeState::Expired,
            None => ChallengeState::Unknown,
        }
    }

    /// Forgets a challenge once a registration used it.
    pub fn consume(&mut self, c: &Challenge) {
        self.forget(c);
    }
}

impl ChallengeRefused {
    /// The error answer: `unavailable` when the table is full, `rate_limited` when the address
    /// is, both with `retry_after_s`.
    pub fn to_error(self) -> crate::engine::error::ApiError {
        use crate::engine::error::ApiError;
        use formica_protocol::{ErrorCode, Value};
        match self {
            ChallengeRefused::Full { retry_after_s } => ApiError::new(
                ErrorCode::Unavailable,
                "this relay has as many open challenges as it may (limits.challenges_max); try again later",
            )
            .with("retry_after_s", Value::Int(retry_after_s)),
            ChallengeRefused::AddressFull { retry_after_s } => ApiError::new(
                ErrorCode::RateLimited,
                "this address has as many open challenges as one may (limits.challenges_per_ip_max); use one or wait for it to expire",
            )
            .with("retry_after_s", Value::Int(retry_after_s)),
        }
    }
}

impl NonceRefused {
    /// The error answer: `nonce_reused` for a replay, `unavailable` with `retry_after_s` when
    /// the nonce table is full.
    pub fn to_error(self, what: &str) -> crate::engine::error::ApiError {
        use crate::engine::error::ApiError;
        use formica_protocol::{ErrorCode, Value};
        match self {
            NonceRefused::Reused => ApiError::new(
                ErrorCode::NonceReused,
                format!("this {what} nonce was already used"),
            ),
            NonceRefused::Full { retry_after_s } => ApiError::new(
                ErrorCode::Unavailable,
                "this relay remembers as many request nonces as it may (limits.nonces_max); try again later",
            )
            .with("retry_after_s", Value::Int(retry_after_s)),
            NonceRefused::HandleFull { retry_after_s } => ApiError::new(
                ErrorCode::RateLimited,
                "this handle has as many live request nonces as one may (limits.nonces_per_handle_max); slow down",
            )
            .with("retry_after_s", Value::Int(retry_after_s)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_swept_challenge_is_still_expired_for_a_while_then_unknown() {
        let mut t = Challenges::new(10, 10);
        let c1 = Challenge([1; 16]);
        t.issue(c1, 1_000, 8, None, 0).unwrap();
        assert_eq!(t.check(&c1, 500), ChallengeState::Open { difficulty: 8 });
        // Another client's challenge sweeps c1 from the table; a late registration is still
        // told it expired, and c1 holds no place.
        t.issue(Challenge([2; 16]), 3_000, 8, None, 2_000).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.check(&c1, 2_000), ChallengeState::Expired);
        t.issue(Challenge([3; 16]), 70_000, 8, None, 1_000 + EXPIRED_KEPT_MS)
            .unwrap();
        assert_eq!(
            t.check(&c1, 1_000 + EXPIRED_KEPT_MS),
            ChallengeState::Unknown
        );
        assert_eq!(t.check(&Challenge([9; 16]), 0), ChallengeState::Unknown);
    }
}
