//! Federated directory search (SPEC.md PROF-11, FED-18): the home relay asks its active peers,
//! at most `directory.federated_peers_max` of them at once, and waits at most
//! `directory.federated_timeout_ms` for all of them. A peer's results are kept only when they
//! are profiles of its own agents, listed and unexpired, and at most the page size asked; the
//! profiles' signatures are for the client to check (it has the key logs).

use super::Federation;
use crate::engine::directory::Query;
use formica_protocol::{RelayHost, SignedProfile, Value};
use std::time::Duration;

/// What one peer gave.
#[derive(Debug)]
pub struct PeerAnswer {
    pub relay: RelayHost,
    /// `ok`, `timeout`, `unavailable` (no answer), `refused` (an error answer: its code is in
    /// `code`) or `invalid` (an answer that is not a directory page).
    pub status: &'static str,
    pub code: Option<String>,
    /// The results kept: `{"profile", "tier"}` objects.
    pub results: Vec<Value>,
}

/// A query's parameters as a query string (percent-encoded), for a peer.
pub fn query_string(q: &Query) -> String {
    let mut parts = Vec::new();
    if let Some(c) = &q.capability {
        parts.push(format!("capability={c}"));
    }
    if let Some(t) = &q.text {
        let mut e = String::new();
        for b in t.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                e.push(b as char);
            } else {
                e.push_str(&format!("%{b:02X}"));
            }
        }
        parts.push(format!("text={e}"));
    }
    if q.min_tier > 0 {
        parts.push(format!("min_tier={}", q.min_tier));
    }
    if let Some(s) = &q.status {
        parts.push(format!("status={s}"));
    }
    parts.push(format!("limit={}", q.limit));
    parts.join("&")
}

/// The results of `peer`'s answer, rebuilt from what was checked: each a profile of one of its
/// own agents, listed and unexpired, once, with its tier; `None` (the answer is `invalid`) for
/// anything else: another member, a repeated handle, more than `limit` results, a `next`.
fn keep(peer: &RelayHost, v: &Value, limit: usize, now: i64) -> Option<Vec<Value>> {
    let o = v.as_object()?;
    if o.keys().any(|k| k != "results" && k != "next") || o.get("next")? != &Value::Null {
        return None;
    }
    let results = o.get("results")?.as_array()?;
    if results.len() > limit {
        return None;
    }
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for r in results {
        let ro = r.as_object()?;
        if ro.keys().any(|k| k != "profile" && k != "tier") {
            return None;
        }
        let tier = ro.get("tier")?.as_i64()?;
        let p = SignedProfile::from_value(ro.get("profile")?.clone()).ok()?;
        let prof = p.profile();
        if prof.handle.host() != peer
            || !prof.listed
            || prof.expired(now)
            || tier < 0
            || !seen.insert(prof.handle.clone())
        {
            return None;
        }
        let mut e = formica_protocol::Object::new();
        e.insert("profile", p.value().clone());
        e.insert("tier", Value::Int(tier));
        out.push(Value::Object(e));
    }
    Some(out)
}

impl Federation {
    /// Asks the active peers (the first `directory.federated_peers_max` in host order) for
    /// `q`, all at once, each within `directory.federated_timeout_ms` of the start.
    pub async fn search_peers(&self, q: &Query) -> Vec<PeerAnswer> {
        let dir = &self.engine.policy.directory;
        let peers: Vec<RelayHost> = {
            let st = self.engine.read();
            st.peers
                .iter()
                .filter(|(h, _)| st.active_peer(h).is_some())
                .map(|(h, _)| h.clone())
                .take(dir.federated_peers_max)
                .collect()
        };
        let path = format!("/v1/federation/directory?{}", query_string(q));
        let deadline = Duration::from_millis(dir.federated_timeout_ms);
        let limit = q.limit;
        let mut tasks = Vec::new();
        for peer in peers {
            let fed = self.clone();
            let path = path.clone();
            tasks.push(tokio::spawn(async move {
                let call = fed.call_within("GET", &peer, &path, true, deadline);
                let (status, code, results) = match tokio::time::timeout(deadline, call).await {
                    Err(_) => ("timeout", None, Vec::new()),
                    Ok(Err(_)) => ("unavailable", None, Vec::new()),
                    Ok(Ok((200, v))) => match keep(&peer, &v, limit, fed.engine.now()) {
                        Some(r) => ("ok", None, r),
                        None => ("invalid", None, Vec::new()),
                    },
                    Ok(Ok((_, v))) => match super::client::answer_code(&v) {
                        Some(c) => ("refused", Some(c.as_str().to_owned()), Vec::new()),
                        None => ("invalid", None, Vec::new()),
                    },
                };
                PeerAnswer {
                    relay: peer,
                    status,
                    code,
                    results,
                }
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(a) = t.await {
                out.push(a);
            }
        }
        out
    }
}
