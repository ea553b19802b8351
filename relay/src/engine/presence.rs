//! Presence (SPEC.md section 18.4): whether an agent is connected (an inbox stream open, or a
//! heartbeat within `presence.ttl_ms`) is observed here, in memory; what it says of itself
//! (`busy`, `away`) is a signed status, logged and held in the state like profiles. A change of
//! what an agent's contacts see is pushed to their streams that asked for presence, coalesced
//! per stream (`presence.push_interval_ms`).
//!
//! Memory: one entry per local agent connected or with a status since the relay started, one
//! feed per open stream that asked for presence, and at most two timers per agent (the end of
//! its grace, the expiry of its status): bounded by agents and streams.

use super::state::State;
use formica_protocol::presence::Availability;
use formica_protocol::{Handle, Object, Value};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

/// Presence limits. Published in the descriptor (`presence`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresencePolicy {
    /// An agent is shown `offline` at most this long after its last stream closed or its last
    /// heartbeat: 60 s. Long enough to ride over a reconnect (a stream resumes within seconds)
    /// without flapping; an agent that keeps no stream sends a heartbeat about every 30 s.
    pub ttl_ms: i64,
    /// Longest `expires - ts` of a signed status: 24 hours. `busy` and `away` are short-lived
    /// by design: an agent that stopped renewing them is `available` again within a day.
    pub status_ttl_ms_max: i64,
    /// Signed statuses and heartbeats per minute per agent (token bucket, burst of 10): 60.
    /// A heartbeat every 30 s and a status change every few seconds fit; a flapping agent is
    /// refused `rate_limited` rather than relayed to its contacts.
    pub updates_per_min: u32,
    /// A stream that asked for presence gets at most one event per agent it watches in this
    /// time: 1 s. Changes in between are coalesced (the state when the event is sent).
    pub push_interval_ms: u64,
}

impl Default for PresencePolicy {
    fn default() -> Self {
        PresencePolicy {
            ttl_ms: 60_000,
            status_ttl_ms_max: 24 * 3600 * 1000,
            updates_per_min: 60,
            push_interval_ms: 1000,
        }
    }
}

impl PresencePolicy {
    pub(super) fn validate(&self) -> Result<(), String> {
        if !(1000..=3_600_000).contains(&self.ttl_ms) {
            return Err(format!(
                "presence.ttl_ms {} is not in 1000..=3600000",
                self.ttl_ms
            ));
        }
        if self.status_ttl_ms_max < 60_000 {
            return Err("presence.status_ttl_ms_max is below one minute".into());
        }
        if self.updates_per_min == 0 || !(10..=60_000).contains(&self.push_interval_ms) {
            return Err("presence.updates_per_min must be positive and presence.push_interval_ms within 10..=60000".into());
        }
        Ok(())
    }

    /// The descriptor's `presence` member.
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        o.insert("ttl_ms", Value::Int(self.ttl_ms));
        o.insert("status_ttl_ms_max", Value::Int(self.status_ttl_ms_max));
        o.insert(
            "updates_per_min",
            Value::Int(i64::from(self.updates_per_min)),
        );
        o.insert("push_interval_ms", Value::Int(self.push_interval_ms as i64));
        Value::Object(o)
    }
}

/// What others see of an agent (PRES-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    Offline,
    On(Availability),
}

impl Shown {
    pub fn as_str(self) -> &'static str {
        match self {
            Shown::Offline => "offline",
            Shown::On(a) => a.as_str(),
        }
    }
}

#[derive(Debug, Default)]
struct Live {
    streams: u32,
    /// Connected until this time once no stream is open (heartbeat or last close + ttl).
    until: i64,
    /// The last time it was seen connected (a stream open or closing, a heartbeat).
    last_seen: i64,
    /// What its contacts were last told (None: nothing yet, which means offline).
    announced: Option<Shown>,
    /// Its timers in `Inner::timers` (at most one of each kind): the end of the grace after
    /// its last stream or heartbeat, and the expiry of its status.
    grace_at: Option<i64>,
    status_at: Option<i64>,
}

/// Which of an agent's two timers.
#[derive(Debug, Clone, Copy)]
enum Timer {
    Grace,
    Status,
}

impl Inner {
    /// Sets `who`'s timer of kind `kind` to `at`, replacing the one it had: an agent holds at
    /// most two entries in `timers`, whatever it does.
    fn set_timer(&mut self, who: &Handle, kind: Timer, at: i64) {
        let l = self.live.entry(who.clone()).or_default();
        let slot = match kind {
            Timer::Grace => &mut l.grace_at,
            Timer::Status => &mut l.status_at,
        };
        let old = slot.replace(at);
        let other = match kind {
            Timer::Grace => l.status_at,
            Timer::Status => l.grace_at,
        };
        if let Some(o) = old {
            if other != Some(o) {
                self.timers.remove(&(o, who.clone()));
            }
        }
        self.timers.insert((at, who.clone()));
    }

    /// Whether `who` is connected at `now`, and when it was last seen.
    fn connected(&self, who: &Handle, now: i64) -> (bool, Option<i64>) {
        match self.live.get(who) {
            None => (false, None),
            Some(l) if l.streams > 0 => (true, Some(now)),
            Some(l) => (now < l.until, Some(l.last_seen)),
        }
    }
}

/// One stream's presence events: the agents whose presence changed since it last took them.
#[derive(Debug, Default)]
pub struct Feed {
    pending: Mutex<BTreeSet<Handle>>,
    notify: tokio::sync::Notify,
}

impl Feed {
    /// Waits until an agent this stream watches changed.
    pub async fn changed(&self) {
        self.notify.notified().await
    }
    /// Whether agents changed since the last [`take`](Self::take).
    pub fn has_pending(&self) -> bool {
        !self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
    /// The agents that changed since the last call.
    pub fn take(&self) -> BTreeSet<Handle> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<Handle, Live>,
    feeds: HashMap<Handle, Vec<Weak<Feed>>>,
    /// (time, agent): when what an agent's contacts see may change by itself (the end of the
    /// grace after its last stream, a status that expires).
    timers: BTreeSet<(i64, Handle)>,
}

/// Presence as observed by this relay.
#[derive(Debug, Default)]
pub struct Hub {
    inner: Mutex<Inner>,
}

/// An open inbox stream of an agent: connected while it lives.
pub struct Connection {
    hub: Arc<Hub>,
    who: Handle,
    clock: super::Clock,
    ttl_ms: i64,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection({})", self.who)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let now = (self.clock)();
        let mut g = self.hub.lock();
        if let Some(l) = g.live.get_mut(&self.who) {
            l.streams = l.streams.saturating_sub(1);
            l.last_seen = now;
            if l.streams == 0 {
                l.until = l.until.max(now + self.ttl_ms);
                let until = l.until;
                g.set_timer(&self.who, Timer::Grace, until);
            }
        }
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An inbox stream of `who` opened at `now`.
    pub fn connect(
        self: &Arc<Self>,
        who: &Handle,
        now: i64,
        clock: super::Clock,
        ttl_ms: i64,
    ) -> Connection {
        let mut g = self.lock();
        let l = g.live.entry(who.clone()).or_default();
        l.streams += 1;
        l.last_seen = now;
        Connection {
            hub: self.clone(),
            who: who.clone(),
            clock,
            ttl_ms,
        }
    }

    /// A heartbeat of `who`: connected until `now + ttl_ms` at least. Returns that time.
    pub fn heartbeat(&self, who: &Handle, now: i64, ttl_ms: i64) -> i64 {
        let mut g = self.lock();
        let l = g.live.entry(who.clone()).or_default();
        l.until = l.until.max(now + ttl_ms);
        l.last_seen = now;
        let until = l.until;
        g.set_timer(who, Timer::Grace, until);
        until
    }

    /// Whether `who` is connected at `now`, and when it was last seen (None: not since start).
    pub fn connected(&self, who: &Handle, now: i64) -> (bool, Option<i64>) {
        self.lock().connected(who, now)
    }

    /// Presence events for the streams of `watcher` that asked for them.
    pub fn subscribe(&self, watcher: &Handle) -> Arc<Feed> {
        let feed = Arc::new(Feed::default());
        let mut g = self.lock();
        let v = g.feeds.entry(watcher.clone()).or_default();
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(&feed));
        feed
    }

    /// Streams that watch for presence.
    pub fn feeds(&self) -> usize {
        self.lock()
            .feeds
            .values()
            .map(|v| v.iter().filter(|w| w.strong_count() > 0).count())
            .sum()
    }

    /// Tells the contacts of `subject` (the agents it granted a level, PRES-5) if what they see
    /// of it changed.
    pub fn refresh(&self, st: &State, subject: &Handle, now: i64) {
        let Some(agent) = st.agents.get(subject) else {
            return;
        };
        // One lock for what is seen and what was told, so two refreshes cannot cross.
        let mut g = self.lock();
        let status = in_force(st, subject, now);
        // A status in force gets its expiry timer (also one loaded at start, PRES-5).
        if let Some(s) = status {
            let at = s.status().expires;
            if g.live.get(subject).and_then(|l| l.status_at) != Some(at) {
                g.set_timer(subject, Timer::Status, at);
            }
        }
        let shown = word(g.connected(subject, now).0, status);
        let announced = g
            .live
            .get(subject)
            .and_then(|l| l.announced)
            .unwrap_or(Shown::Offline);
        if announced == shown {
            return;
        }
        if let Some(l) = g.live.get_mut(subject) {
            l.announced = Some(shown);
        }
        for watcher in agent.contacts.keys() {
            let Some(v) = g.feeds.get(watcher) else {
                continue;
            };
            for feed in v.iter().filter_map(Weak::upgrade) {
                feed.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(subject.clone());
                feed.notify.notify_one();
            }
        }
    }

    /// Forgets the feeds of `watcher`'s streams that have ended (called as one ends), so that
    /// the table holds a feed per open stream only.
    pub fn prune(&self, watcher: &Handle) {
        let mut g = self.lock();
        if let Some(v) = g.feeds.get_mut(watcher) {
            v.retain(|w| w.strong_count() > 0);
            if v.is_empty() {
                g.feeds.remove(watcher);
            }
        }
    }

    /// The agents whose timers are due at `now` (their presence may have changed by itself).
    pub fn due(&self, now: i64) -> Vec<Handle> {
        let mut g = self.lock();
        let mut out = Vec::new();
        while let Some((t, _)) = g.timers.first() {
            if *t > now {
                break;
            }
            if let Some((t, h)) = g.timers.pop_first() {
                if let Some(l) = g.live.get_mut(&h) {
                    if l.grace_at == Some(t) {
                        l.grace_at = None;
                    }
                    if l.status_at == Some(t) {
                        l.status_at = None;
                    }
                }
                out.push(h);
            }
        }
        out
    }
}

/// PRES-1: what `subject` looks like at `now`: offline unless connected; connected, the
/// status of its unexpired signed status, else available.
pub fn shown(st: &State, hub: &Hub, subject: &Handle, now: i64) -> Shown {
    word(hub.connected(subject, now).0, in_force(st, subject, now))
}

/// The signed status of `subject` in force at `now` (unexpired), if any.
pub(crate) fn in_force<'s>(
    st: &'s State,
    subject: &Handle,
    now: i64,
) -> Option<&'s formica_protocol::SignedStatus> {
    st.statuses
        .get(subject)
        .filter(|s| now < s.status().expires)
}

/// PRES-1's word for an agent connected or not, with the status in force.
fn word(connected: bool, status: Option<&formica_protocol::SignedStatus>) -> Shown {
    match (connected, status) {
        (false, _) => Shown::Offline,
        (true, Some(s)) => Shown::On(s.status().status),
        (true, None) => Shown::On(Availability::Available),
    }
}

/// Tells contacts when an agent's presence changes by itself (a grace that ends, a status that
/// expires): every quarter second, the due timers. Ends when the relay stops.
pub async fn run_presence(engine: Arc<super::Engine>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if *engine.stopping.borrow() {
            return;
        }
        let now = engine.now();
        let due = engine.presence.due(now);
        if !due.is_empty() {
            let st = engine.read();
            for h in due {
                engine.presence.refresh(&st, &h, now);
            }
        }
    }
}

/// PRES-4: the presence of `subject` that `viewer` may see at `now`, full or coarse, or None.
pub fn view(st: &State, hub: &Hub, viewer: &Handle, subject: &Handle, now: i64) -> Option<Value> {
    if !st.is_local(subject) {
        return None;
    }
    let agent = st.agents.get(subject)?;
    let full = viewer == subject || agent.contacts.contains_key(viewer);
    let listed = st
        .profiles
        .get(subject)
        .is_some_and(|p| p.listed() && !p.expired(now));
    if !full && !listed {
        return None;
    }
    let mut o = Object::new();
    o.insert("handle", subject.as_str().into());
    o.insert("status", shown(st, hub, subject, now).as_str().into());
    if full {
        let (_, last_seen) = hub.connected(subject, now);
        o.insert("last_seen", last_seen.map_or(Value::Null, Value::Int));
        let signed = in_force(st, subject, now).map(|s| s.value().clone());
        o.insert("signed", signed.unwrap_or(Value::Null));
    }
    Some(Value::Object(o))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_holds_at_most_two_timers_whatever_it_does() {
        let mut g = Inner::default();
        let a = Handle::parse("@a@relay.test").unwrap();
        let b = Handle::parse("@b@relay.test").unwrap();
        for t in 0..1000 {
            g.set_timer(&a, Timer::Status, 10_000 + t);
            g.set_timer(&a, Timer::Grace, 20_000 + t);
        }
        g.set_timer(&b, Timer::Grace, 5);
        assert_eq!(g.timers.len(), 3);
        // Both kinds at the same time share one entry, and replacing one keeps the other.
        g.set_timer(&a, Timer::Status, 7);
        g.set_timer(&a, Timer::Grace, 7);
        assert_eq!(g.timers.len(), 2);
        g.set_timer(&a, Timer::Grace, 8);
        assert!(g.timers.contains(&(7, a.clone())) && g.timers.contains(&(8, a.clone())));
        assert_eq!(g.timers.len(), 3);
    }
}
