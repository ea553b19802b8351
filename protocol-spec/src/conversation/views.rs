//! What a conversation's state says besides the fold itself: the timers the home relay runs
//! (CONVO-7, CONVO-9) and the summary readers see (API-23).

use super::{
    CloseReason, ConvError, ConvEvent, ConvLimits, ConvState, Conversation, Entry, EntryBody,
    PartState,
};
use crate::envelope::ConvMode;
use crate::error::ErrorCode;
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

    /// What a replica checks of entry `e` that the conversation's home relay sent to follow
    /// this state (SPEC.md CONVO-13 step 6): the conversation is not closed yet; an envelope
    /// is one the home relay could have accepted at the entry's `at` (`judge` under `limits`,
    /// the terms in force there and the replica relay's `participants_max`; a call only as
    /// entry 1); a `missed` or `declined` event names an invitee that is ringing (or, declined,
    /// missed). So a replica holds at most what the rules allow: its turn limit in posts and a
    /// few entries per participant. Links and hashes are the caller's (`Entry::from_value`).
    pub fn check_next(&self, e: &Entry, limits: &ConvLimits) -> Result<(), ConvError> {
        if let Some(err) = self.closed_error(false) {
            return Err(ConvError::new(
                ErrorCode::InvalidField,
                format!("an entry after the close: {}", err.message),
            )
            .field("seq"));
        }
        match &e.body {
            EntryBody::Envelope(se) => {
                let env = se.envelope();
                if env.msg_type == crate::envelope::MessageType::Call {
                    return Err(
                        ConvError::new(ErrorCode::InvalidField, "a call after entry 1")
                            .field("envelope"),
                    );
                }
                self.judge(env, e.at, limits).map_err(|x| {
                    ConvError::new(
                        ErrorCode::InvalidField,
                        format!("not an envelope the home relay could accept here: {x}"),
                    )
                    .field("envelope")
                })
            }
            EntryBody::Event(ConvEvent::Missed { handle }) => self
                .participant(handle)
                .filter(|p| p.state == PartState::Ringing)
                .map(|_| ())
                .ok_or_else(|| {
                    ConvError::new(
                        ErrorCode::InvalidField,
                        format!("{handle} is not ringing: it cannot miss the call"),
                    )
                    .field("event.handle")
                }),
            EntryBody::Event(ConvEvent::Declined { handle, .. }) => self
                .participant(handle)
                .filter(|p| matches!(p.state, PartState::Ringing | PartState::Missed))
                .map(|_| ())
                .ok_or_else(|| {
                    ConvError::new(
                        ErrorCode::InvalidField,
                        format!("{handle} has no invitation to decline"),
                    )
                    .field("event.handle")
                }),
            EntryBody::Event(ConvEvent::Closed { .. }) => Ok(()),
        }
    }
}
