//! Profiles and the directory (SPEC.md section 18): the limits the relay publishes for them
//! (`directory` in the descriptor) and the search over listed profiles.

use super::error::ApiError;
use super::policy::Policy;
use super::state::{State, StoredProfile};
use formica_protocol::{ErrorCode, Handle, Object, RelayHost, Value};
use serde::Deserialize;

/// Limits of profiles and the directory. Published in the descriptor (`directory`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectoryPolicy {
    /// Whether callers without an `Authorization` header may read listed profiles, search the
    /// directory and read agent cards (PROF-7): off. A public directory lets anyone enumerate
    /// the listed agents, which an operator should choose knowingly; the per-address limit
    /// (`limits.ip_requests_per_min`) bounds what one address can read.
    pub public: bool,
    /// The largest profile body: 4 KiB. A full profile (64-character labels, 280-character
    /// description, 16 capabilities with a few tags) fits in about 3 KiB; every profile is held
    /// in memory for search, so this bounds memory per agent.
    pub profile_bytes_max: usize,
    /// Most capabilities in one profile: 16 (the protocol allows 32). Enough to describe an
    /// agent; more would be keyword stuffing for search.
    pub profile_capabilities_max: usize,
    /// Longest `expires - ts`: 30 days. A profile of an agent that stopped running leaves the
    /// directory within a month; a running agent signs a new one (keytool's default is this).
    pub profile_ttl_ms_max: i64,
    /// Largest directory page: 50 profiles, at most about 200 KiB of answer.
    pub page_max: usize,
    /// Most profiles one search request examines: 5,000. A search holds the state's read lock
    /// (which the writer waits for) while it runs, so a query that matches little returns a
    /// shorter page, even an empty one, with a `next` cursor rather than scan every listed
    /// profile at once (PROF-9). At about 0.3 us a profile that is a couple of milliseconds.
    /// Not published: it refuses nothing, it only shortens pages.
    pub scan_max: usize,
    /// Most peers a federated search asks (PROF-11): 16, the first in host order. Each is one
    /// request on the blocking pool; more would let one search hold many threads.
    pub federated_peers_max: usize,
    /// How long a federated search waits for its peers: 2 s. A peer that has not answered by
    /// then is marked `timeout` and the answer is partial; an agent waiting on a search should
    /// not wait for the slowest relay of the federation.
    pub federated_timeout_ms: u64,
    /// Federated searches in progress at once: 8. Each holds up to `federated_peers_max`
    /// requests (threads of the blocking pool) for up to `federated_timeout_ms`; beyond this a
    /// federated search is refused `unavailable` (with `retry_after_s`). Not published: it is
    /// a capacity of this relay, like the connection caps.
    pub federated_searches_max: usize,
    /// Directory searches per minute that one peer relay may make here (FED-18; token bucket,
    /// burst of a quarter minute): 600, enough for its agents' federated searches.
    pub peer_searches_per_min: u32,
}

impl Default for DirectoryPolicy {
    fn default() -> Self {
        DirectoryPolicy {
            public: false,
            profile_bytes_max: 4096,
            profile_capabilities_max: 16,
            profile_ttl_ms_max: 30 * 24 * 3600 * 1000,
            page_max: 50,
            scan_max: 5_000,
            federated_peers_max: 16,
            federated_timeout_ms: 2_000,
            federated_searches_max: 8,
            peer_searches_per_min: 600,
        }
    }
}

impl DirectoryPolicy {
    pub(super) fn validate(&self) -> Result<(), String> {
        if !(256..=65_536).contains(&self.profile_bytes_max) {
            return Err(format!(
                "directory.profile_bytes_max {} is not in 256..=65536",
                self.profile_bytes_max
            ));
        }
        if self.profile_capabilities_max > formica_protocol::profile::CAPABILITIES_MAX {
            return Err(format!(
                "directory.profile_capabilities_max {} is above the protocol's {}",
                self.profile_capabilities_max,
                formica_protocol::profile::CAPABILITIES_MAX
            ));
        }
        if self.profile_ttl_ms_max < 60_000 {
            return Err("directory.profile_ttl_ms_max is below one minute".into());
        }
        if !(1..=1_000_000).contains(&self.scan_max) || self.scan_max < self.page_max {
            return Err(format!(
                "directory.scan_max {} is not in directory.page_max..=1000000",
                self.scan_max
            ));
        }
        if !(1..=64).contains(&self.federated_peers_max)
            || !(100..=30_000).contains(&self.federated_timeout_ms)
            || self.peer_searches_per_min == 0
            || !(1..=1024).contains(&self.federated_searches_max)
        {
            return Err("directory.federated_peers_max must be in 1..=64, directory.federated_timeout_ms in 100..=30000 directory.peer_searches_per_min positive and directory.federated_searches_max in 1..=1024".into());
        }
        if !(1..=1000).contains(&self.page_max) {
            return Err(format!(
                "directory.page_max {} is not in 1..=1000",
                self.page_max
            ));
        }
        Ok(())
    }

    /// The descriptor's `directory` member.
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        let int = |n: i64| Value::Int(n);
        o.insert("public", Value::Bool(self.public));
        o.insert("profile_bytes_max", int(self.profile_bytes_max as i64));
        o.insert(
            "profile_capabilities_max",
            int(self.profile_capabilities_max as i64),
        );
        o.insert("profile_ttl_ms_max", int(self.profile_ttl_ms_max));
        o.insert("page_max", int(self.page_max as i64));
        o.insert("federated_peers_max", int(self.federated_peers_max as i64));
        o.insert(
            "federated_timeout_ms",
            int(self.federated_timeout_ms as i64),
        );
        o.insert(
            "peer_searches_per_min",
            int(i64::from(self.peer_searches_per_min)),
        );
        Value::Object(o)
    }
}

/// PROF-8: the one answer for every profile (or presence, PRES-4) that is not shown, whatever
/// the reason.
pub fn not_shown() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no profile of this handle is visible to you",
    )
}

/// A directory search (PROF-9), its parameters checked.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub capability: Option<String>,
    /// Already lower-cased.
    pub text: Option<String>,
    pub min_tier: usize,
    /// Results start after this handle.
    pub after: Option<Handle>,
    pub limit: usize,
    /// PROF-11: the home relay asks its peers too.
    pub federated: bool,
    /// Only agents whose presence is this (PRES-1: `available`, `busy`, `away`, `offline`).
    pub status: Option<String>,
}

/// Whether `p` matches the text of `q` (the capability is the index's, the tier needs the
/// state).
pub fn matches(p: &StoredProfile, q: &Query) -> bool {
    if let Some(t) = &q.text {
        if !p.text.contains(t.as_str()) {
            return false;
        }
    }
    true
}

/// One page of the directory at `now`: the matching listed, unexpired profiles after
/// `q.after`, in handle order, with each agent's effective tier; and the cursor of the next
/// page, if anything may follow. With a capability the search walks that capability's index;
/// otherwise every listed profile after the cursor, in order, until the page is full or
/// `directory.scan_max` profiles were examined (then the next page starts after the last one
/// examined, always a listed one, PROF-8, PROF-9).
pub fn search<'s>(
    st: &'s State,
    q: &Query,
    now: i64,
    policy: &super::policy::Policy,
    presence: &super::presence::Hub,
) -> (Vec<(StoredProfile, usize)>, Option<Handle>) {
    let mut out: Vec<(StoredProfile, usize)> = Vec::new();
    let mut next: Option<Handle> = None;
    let mut examined = 0usize;
    let scan_max = policy.directory.scan_max;
    let mut last: Option<&'s Handle> = None;
    let mut take = |h: &'s Handle| -> bool {
        // Everything up to `last` was examined and its matches are in `out`.
        if out.len() == q.limit || examined == scan_max {
            next = last.cloned();
            return false;
        }
        examined += 1;
        last = Some(h);
        let Some(p) = st.profiles.get(h) else {
            return true;
        };
        if !p.listed() || p.expired(now) || !matches(p, q) {
            return true;
        }
        if let Some(s) = &q.status {
            if super::presence::shown(st, presence, h, now).as_str() != s {
                return true;
            }
        }
        let tier = st.tier_of(h, now, policy);
        if tier >= q.min_tier {
            out.push((p.clone(), tier));
        }
        true
    };
    match &q.capability {
        Some(c) => {
            for h in st.profile_index.after(c, q.after.as_ref()) {
                if !take(h) {
                    break;
                }
            }
        }
        None => {
            for h in st.profile_index.listed_after(q.after.as_ref()) {
                if !take(h) {
                    break;
                }
            }
        }
    }
    (out, next)
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v)
    })
}

/// A query value percent-decoded (`+` is a space) as UTF-8.
fn decode_query(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidField, message).with("field", field.into())
}

/// PROF-9's query parameters (`query`: the request's query string), for a search on this
/// relay (`host`) under `policy`.
pub fn parse_query(
    query: Option<&str>,
    policy: &Policy,
    host: &RelayHost,
) -> Result<Query, ApiError> {
    let uri = query;
    let page_max = policy.directory.page_max;
    let mut q = Query {
        limit: page_max,
        ..Query::default()
    };
    if let Some(c) = query_param(uri, "capability") {
        let c = decode_query(c).filter(|c| formica_protocol::profile::is_word(c));
        q.capability = Some(c.ok_or_else(|| {
            invalid(
                "capability",
                "capability is [a-z0-9] then [a-z0-9._-]*, at most 64 bytes".into(),
            )
        })?);
    }
    if let Some(t) = query_param(uri, "text") {
        // Counted once lower-cased too (lower-casing can lengthen a text): what this relay
        // searches for is what it sends its peers (PROF-11), and they take it.
        let t = decode_query(t)
            .map(|t| t.to_lowercase())
            .filter(|t| (1..=64).contains(&t.chars().count()) && !t.chars().any(char::is_control));
        q.text = Some(t.ok_or_else(|| {
            invalid(
                "text",
                "text is 1 to 64 characters of UTF-8 (also once lower-cased), no control characters"
                    .into(),
            )
        })?);
    }
    let number = |s: &str| {
        (!s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<usize>().ok())
            .flatten()
            .filter(|_| s == "0" || !s.starts_with('0'))
    };
    if let Some(t) = query_param(uri, "min_tier") {
        let tiers = policy.tiers.len();
        q.min_tier = number(t).filter(|n| *n < tiers).ok_or_else(|| {
            invalid(
                "min_tier",
                format!("min_tier is a tier level, 0..={}", tiers - 1),
            )
        })?;
    }
    if let Some(l) = query_param(uri, "limit") {
        q.limit = number(l)
            .filter(|n| (1..=page_max).contains(n))
            .ok_or_else(|| invalid("limit", format!("limit is 1..={page_max}")))?;
    }
    if let Some(c) = query_param(uri, "cursor") {
        let h = decode_query(c)
            .and_then(|c| Handle::parse(&c).ok())
            .filter(|h| h.host() == host);
        q.after = Some(h.ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidCursor,
                "the cursor is not one this relay issued",
            )
        })?);
    }
    if let Some(s) = query_param(uri, "status") {
        if !matches!(s, "available" | "busy" | "away" | "offline") {
            return Err(invalid(
                "status",
                "status is available, busy, away or offline".into(),
            ));
        }
        q.status = Some(s.to_owned());
    }
    match query_param(uri, "federated") {
        None | Some("0") => {}
        Some("1") if q.after.is_none() => q.federated = true,
        Some("1") => {
            return Err(invalid(
                "cursor",
                "a federated search is one page per relay: it takes no cursor".into(),
            ))
        }
        Some(_) => return Err(invalid("federated", "federated is 0 or 1".into())),
    }
    Ok(q)
}

/// One result of PROF-9: the signed profile and the agent's tier on this relay.
pub fn entry(p: &StoredProfile, tier: usize) -> Value {
    let mut o = Object::new();
    o.insert("profile", p.value());
    o.insert("tier", Value::Int(tier as i64));
    Value::Object(o)
}

/// A page of PROF-9: `{"next", "results"}`.
pub fn page_value(found: &[(StoredProfile, usize)], next: Option<&Handle>) -> Object {
    let mut o = Object::new();
    o.insert(
        "results",
        Value::Array(found.iter().map(|(p, t)| entry(p, *t)).collect()),
    );
    o.insert(
        "next",
        next.map_or(Value::Null, |h| Value::from(h.as_str())),
    );
    o
}
