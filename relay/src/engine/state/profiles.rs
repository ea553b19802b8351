//! Profiles (SPEC.md section 18): the latest signed profile of each agent homed here. They are
//! held in memory, like the agents themselves (one per agent, at most
//! `directory.profile_bytes_max` bytes each), with the lower-cased words a text search reads,
//! and an index of the listed ones by capability. Their rows are in the `small` table under
//! the kind `profile`, written with the batch that logged them.

use super::State;
use formica_protocol::json::JsonLimits;
use formica_protocol::{Handle, Profile, SignedProfile};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

/// A profile as the relay holds it: its canonical bytes (what it serves) and what a search
/// reads (listed, expiry, the lower-cased words of a text search), not the parsed document: the
/// parsed members cost several times the profile's size in memory, so the rare reader that
/// needs them (the agent card) parses the bytes again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredProfile {
    wire: Arc<[u8]>,
    seq: i64,
    expires: i64,
    listed: bool,
    /// The lower-cased name, description, capability ids and tags (PROF-9's `text`), joined by
    /// a control character, which a query never holds: a match lies within one of them.
    pub text: Arc<str>,
}

pub(super) fn limits() -> JsonLimits {
    JsonLimits {
        bytes_max: 1 << 20,
        depth_max: 64,
    }
}

impl StoredProfile {
    pub fn new(signed: &SignedProfile) -> StoredProfile {
        let p = signed.profile();
        let mut text = vec![p.name.to_lowercase()];
        text.extend(p.description.iter().map(|d| d.to_lowercase()));
        for c in &p.capabilities {
            text.push(c.id.clone());
            text.extend(c.tags.iter().cloned());
        }
        StoredProfile {
            wire: signed.wire().into(),
            seq: p.seq,
            expires: p.expires,
            listed: p.listed,
            text: text.join("\u{1f}").into(),
        }
    }

    /// The signed profile again, from its bytes (canonical bytes the relay wrote after checking
    /// them).
    pub fn signed(&self) -> Option<SignedProfile> {
        SignedProfile::parse(&self.wire, limits()).ok()
    }

    pub fn seq(&self) -> i64 {
        self.seq
    }

    pub fn listed(&self) -> bool {
        self.listed
    }

    /// Whether it has expired at `now` (PROF-6).
    pub fn expired(&self, now: i64) -> bool {
        now >= self.expires
    }

    /// The canonical bytes of the signed profile.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// The signed profile as a value, to serve (parsed again from its bytes).
    pub fn value(&self) -> formica_protocol::Value {
        formica_protocol::json::parse(&self.wire, limits()).unwrap_or(formica_protocol::Value::Null)
    }
}

/// The handles of listed profiles, by capability id (derived from the profiles: not stored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileIndex {
    by_capability: BTreeMap<String, BTreeSet<Handle>>,
    /// Every listed profile's handle: a search without a capability walks these, so that
    /// neither its work nor its cursor ever touches an unlisted profile (PROF-8).
    listed: BTreeSet<Handle>,
}

impl ProfileIndex {
    pub(super) fn add(&mut self, h: &Handle, p: &Profile) {
        if p.listed {
            self.listed.insert(h.clone());
            for c in &p.capabilities {
                self.by_capability
                    .entry(c.id.clone())
                    .or_default()
                    .insert(h.clone());
            }
        }
    }

    pub(super) fn remove(&mut self, h: &Handle, p: &Profile) {
        self.listed.remove(h);
        for c in &p.capabilities {
            if let Some(set) = self.by_capability.get_mut(&c.id) {
                set.remove(h);
                if set.is_empty() {
                    self.by_capability.remove(&c.id);
                }
            }
        }
    }

    /// The listed handles, in order, after `after`.
    pub fn listed_after<'a>(
        &'a self,
        after: Option<&Handle>,
    ) -> impl Iterator<Item = &'a Handle> + 'a {
        let from = match after {
            Some(a) => Bound::Excluded(a.clone()),
            None => Bound::Unbounded,
        };
        self.listed.range((from, Bound::Unbounded))
    }

    /// The listed handles with capability `id`, in order, after `after`.
    pub fn after<'a>(
        &'a self,
        id: &str,
        after: Option<&Handle>,
    ) -> impl Iterator<Item = &'a Handle> + 'a {
        let from = match after {
            Some(a) => Bound::Excluded(a.clone()),
            None => Bound::Unbounded,
        };
        self.by_capability
            .get(id)
            .into_iter()
            .flat_map(move |set| set.range((from.clone(), Bound::Unbounded)))
    }
}

impl State {
    /// PROF-5: `signed` becomes the agent's profile (the decision checked its seq).
    pub(super) fn set_profile(&mut self, signed: &SignedProfile) {
        let h = signed.profile().handle.clone();
        if let Some(old) = self.profiles.get(&h).and_then(StoredProfile::signed) {
            self.profile_index.remove(&h, old.profile());
        }
        self.profile_index.add(&h, signed.profile());
        self.profiles.insert(h, StoredProfile::new(signed));
    }
}
