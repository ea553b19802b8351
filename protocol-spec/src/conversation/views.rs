//! What a conversation's state says besides the fold itself: the timers the home relay runs
//! (CONVO-7, CONVO-9) and the summary readers see (API-23).

use super::{CloseReason, ConvEvent, ConvLimits, ConvState, Conversation, PartState};
use crate::envelope::ConvMode;
use crate::json::{Object, Value};

impl Conversation {
    /// The events due by `now` (CONVO-7, CONVO-9): live invitations that rang out, then the
    /// expiry.
    pub fn due_events(&self, now: i64, ring_ms: i64, limits: &ConvLimits) -> Vec<ConvEvent> {
        if self.is_closed() {
            return Vec::new();
        }
        let mut out = self.rung_out(now, ring_ms);
        // Posts at a turn limit lowered since the last post: closed, as after that post.
        if self.posts >= self.turn_limit(limits) {
            out.push(ConvEvent::Closed {
                reason: CloseReason::TurnLimit,
            });
            return out;
        }
        if now > self.expiry(limits) {
            out.push(ConvEvent::Closed {
                reason: CloseReason::Expired,
            });
        }
        out
    }

    /// When the next event of [`due_events`](Self::due_events) falls due, if any.
    pub fn next_due(&self, ring_ms: i64, limits: &ConvLimits) -> Option<i64> {
        if self.is_closed() {
            return None;
        }
        let ring = (self.mode == ConvMode::Live)
            .then(|| {
                self.participants
                    .iter()
                    .filter(|p| p.state == PartState::Ringing)
                    .map(|p| p.invited_at.saturating_add(ring_ms).saturating_add(1))
                    .min()
            })
            .flatten();
        if self.posts >= self.turn_limit(limits) {
            return Some(self.created);
        }
        let exp = self.expiry(limits).saturating_add(1);
        Some(ring.map_or(exp, |r| r.min(exp)))
    }

    /// Live invitations that rang out by `now` (CONVO-7): the `missed` events to append.
    pub fn rung_out(&self, now: i64, ring_ms: i64) -> Vec<ConvEvent> {
        if self.mode != ConvMode::Live || self.is_closed() {
            return Vec::new();
        }
        self.participants
            .iter()
            .filter(|p| p.state == PartState::Ringing && now > p.invited_at.saturating_add(ring_ms))
            .map(|p| ConvEvent::Missed {
                handle: p.handle.clone(),
            })
            .collect()
    }

    /// The summary of API-23 (without `home`, which is the relay's).
    pub fn summary(&self, limits: &ConvLimits) -> Value {
        let mut o = Object::new();
        o.insert("id", self.id.to_hex().into());
        o.insert("topic", self.topic.as_str().into());
        o.insert("mode", self.mode.as_str().into());
        let (state, reason) = match self.state {
            ConvState::Ringing => ("ringing", None),
            ConvState::Active => ("active", None),
            ConvState::Closed(r) => ("closed", Some(r.as_str())),
        };
        o.insert("state", state.into());
        if let Some(r) = reason {
            o.insert("reason", r.into());
        }
        o.insert("created", Value::Int(self.created));
        o.insert("expires", Value::Int(self.expiry(limits)));
        o.insert("turns", Value::Int(self.turn_limit(limits)));
        o.insert("posts", Value::Int(self.posts));
        o.insert("seq", Value::Int(self.seq as i64));
        o.insert(
            "participants",
            Value::Array(
                self.participants
                    .iter()
                    .map(|p| {
                        let mut x = Object::new();
                        x.insert("handle", p.handle.as_str().into());
                        x.insert("role", p.role.as_str().into());
                        x.insert("state", p.state.as_str().into());
                        if let Some(r) = &p.reason {
                            x.insert("reason", r.as_str().into());
                        }
                        Value::Object(x)
                    })
                    .collect(),
            ),
        );
        Value::Object(o)
    }
}
