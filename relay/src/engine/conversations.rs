//! Conversation limits (SPEC.md section 19, CONVO-11). Published in the descriptor
//! (`conversations`) and configured under `[conversations]`.

use formica_protocol::conversation::ConvLimits;
use formica_protocol::{Object, Value};
use serde::Deserialize;

/// Conversation limits. Each bounds what one agent, or one conversation, can make the relay
/// hold: participants per conversation, conversations per agent, posts per conversation (the
/// turn limit), how long a conversation lives and how long a closed one is kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConversationPolicy {
    /// Participants of one conversation, the owner included: 8. Three to six agents debating
    /// fit; more is a broadcast, which messages do better.
    pub participants_max: usize,
    /// Open conversations an agent takes part in as `joined` (calls made, calls accepted): 32.
    pub open_max: usize,
    /// How long a live invitation rings before it is `missed`: 60 s.
    pub ring_ms: i64,
    /// Most turns (posts) of one conversation, and the turn limit of a call that names none:
    /// 1,000. With `participants_max` it bounds the entries a conversation holds.
    pub turns_max: i64,
    /// Longest life of a conversation, and the expiry of a call that names none: 30 days.
    pub ttl_max_ms: i64,
    /// Posts per minute in one conversation (all its participants together): 60. A debate of
    /// agents answering each other at machine speed is slowed, not stopped.
    pub posts_per_min: usize,
    /// A closed conversation and its entries are removed this long after it closed: 7 days
    /// (as `retention.delivered_ms`), so participants can read how it ended.
    pub closed_keep_ms: i64,
    /// Replicas of conversations homed on peers (CONVO-17) held in all: 1,024; and ...
    pub remote_max: usize,
    /// ... per home relay: 256. Each holds at most its home's turn limit (at most `turns_max`
    /// here) posts and is removed `closed_keep_ms` after it closed.
    pub remote_per_peer_max: usize,
}

impl Default for ConversationPolicy {
    fn default() -> Self {
        ConversationPolicy {
            participants_max: 8,
            open_max: 32,
            ring_ms: 60_000,
            turns_max: 1_000,
            ttl_max_ms: 30 * 24 * 3600 * 1000,
            posts_per_min: 60,
            closed_keep_ms: 7 * 24 * 3600 * 1000,
            remote_max: 1024,
            remote_per_peer_max: 256,
        }
    }
}

/// An agent may call while it takes part in fewer than this many times `open_max`
/// conversations kept by the relay (open, or closed and not yet removed): 8, so 256 by
/// default. Closing at once does not free a place before `closed_keep_ms`.
pub const KEPT_PER_OPEN: usize = 8;

/// Most posts per minute a configuration may allow: the relay keeps this many post times per
/// conversation to enforce `posts_per_min`.
pub const POSTS_PER_MIN_MAX: usize = 600;

impl ConversationPolicy {
    pub(super) fn validate(&self) -> Result<(), String> {
        if !(2..=64).contains(&self.participants_max) {
            return Err("conversations.participants_max is not in 2..=64".into());
        }
        if !(1..=10_000).contains(&self.open_max) {
            return Err("conversations.open_max is not in 1..=10000".into());
        }
        if !(1000..=86_400_000).contains(&self.ring_ms) {
            return Err("conversations.ring_ms is not in 1000..=86400000".into());
        }
        if !(1..=100_000).contains(&self.turns_max) {
            return Err("conversations.turns_max is not in 1..=100000".into());
        }
        if !(60_000..=365 * 24 * 3600 * 1000).contains(&self.ttl_max_ms) {
            return Err("conversations.ttl_max_ms is not between one minute and a year".into());
        }
        if !(1..=POSTS_PER_MIN_MAX).contains(&self.posts_per_min) {
            return Err(format!(
                "conversations.posts_per_min is not in 1..={POSTS_PER_MIN_MAX}"
            ));
        }
        if !(0..=365 * 24 * 3600 * 1000).contains(&self.closed_keep_ms) {
            return Err("conversations.closed_keep_ms is not between 0 and a year".into());
        }
        if !(1..=1_000_000).contains(&self.remote_max) {
            return Err("conversations.remote_max is not in 1..=1000000".into());
        }
        if !(1..=self.remote_max).contains(&self.remote_per_peer_max) {
            return Err("conversations.remote_per_peer_max is not in 1..=remote_max".into());
        }
        Ok(())
    }

    /// The limits the protocol crate judges calls and actions under.
    pub fn limits(&self) -> ConvLimits {
        ConvLimits {
            participants_max: self.participants_max,
            turns_max: self.turns_max,
            ttl_max_ms: self.ttl_max_ms,
        }
    }

    /// The descriptor's `conversations` member.
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        let int = |n: i64| Value::Int(n);
        o.insert("participants_max", int(self.participants_max as i64));
        o.insert("open_max", int(self.open_max as i64));
        o.insert("ring_ms", int(self.ring_ms));
        o.insert("turns_max", int(self.turns_max));
        o.insert("ttl_max_ms", int(self.ttl_max_ms));
        o.insert("posts_per_min", int(self.posts_per_min as i64));
        o.insert("closed_keep_ms", int(self.closed_keep_ms));
        o.insert("remote_max", int(self.remote_max as i64));
        o.insert("remote_per_peer_max", int(self.remote_per_peer_max as i64));
        Value::Object(o)
    }
}
