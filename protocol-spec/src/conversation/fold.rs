//! The fold of a conversation's entries (CONVO-1, CONVO-2, CONVO-6, CONVO-9): participant and
//! conversation states, what the home relay accepts next, and the events it appends itself.

use super::{CloseReason, ConvError, ConvEvent, Entry, EntryBody, FIRST_PREV};
use crate::envelope::{
    ConvActionKind, ConvMode, ConvRole, Envelope, Invitee, MessageId, Payload, SignedEnvelope,
};
use crate::error::ErrorCode;
use crate::handle::Handle;

/// A participant's state (CONVO-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartState {
    Ringing,
    Missed,
    Joined,
    Declined,
    Left,
}

impl PartState {
    pub fn as_str(self) -> &'static str {
        match self {
            PartState::Ringing => "ringing",
            PartState::Missed => "missed",
            PartState::Joined => "joined",
            PartState::Declined => "declined",
            PartState::Left => "left",
        }
    }
    /// Still in the conversation or may still join it.
    fn counts(self) -> bool {
        matches!(
            self,
            PartState::Ringing | PartState::Missed | PartState::Joined
        )
    }
}

/// One participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    pub handle: Handle,
    pub role: ConvRole,
    pub state: PartState,
    pub reason: Option<String>,
    /// The seq of the entry that invited it (1 for the call); ring timers count from its `at`.
    pub invited_seq: u64,
    pub invited_at: i64,
    /// For a participant that declined or left: the last entry it may read (CONVO-10).
    pub end: Option<u64>,
    /// Declined by a relay (an event entry: `busy`, or `unavailable` from its own relay,
    /// CONVO-7, CONVO-14), not by its own `decline`.
    pub declined_by_relay: bool,
}

/// The conversation's state (CONVO-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvState {
    Ringing,
    Active,
    Closed(CloseReason),
}

/// The fold of a conversation's entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub id: MessageId,
    pub topic: String,
    pub mode: ConvMode,
    pub created: i64,
    /// The call's turn limit and expiry; without them the relay's maxima apply
    /// ([`Conversation::turn_limit`], [`Conversation::expiry`]).
    pub turns: Option<i64>,
    pub expires: Option<i64>,
    pub state: ConvState,
    pub participants: Vec<Participant>,
    pub posts: i64,
    /// The last entry's seq and hash.
    pub seq: u64,
    pub head: [u8; 32],
}

/// The relay's limits a conversation is judged under (CONVO-11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvLimits {
    pub participants_max: usize,
    pub turns_max: i64,
    pub ttl_max_ms: i64,
}

impl Conversation {
    /// CONVO-5's rules of a call against the relay's limits (the caller's other checks, the
    /// contact levels and the open-conversation count, are the relay's).
    pub fn check_call(call: &Envelope, limits: &ConvLimits) -> Result<(), ConvError> {
        let Payload::Call {
            participants,
            turns,
            expires,
            ..
        } = &call.payload
        else {
            return Err(ConvError::new(ErrorCode::InvalidField, "not a call").field("type"));
        };
        if participants.len() + 1 > limits.participants_max {
            return Err(ConvError::new(
                ErrorCode::InvalidField,
                format!(
                    "{} participants with the caller; at most {}",
                    participants.len() + 1,
                    limits.participants_max
                ),
            )
            .field("payload.participants"));
        }
        if turns.is_some_and(|t| t > limits.turns_max) {
            return Err(ConvError::new(
                ErrorCode::InvalidField,
                format!("turns is at most {}", limits.turns_max),
            )
            .field("payload.turns"));
        }
        if expires.is_some_and(|e| e <= call.ts || e - call.ts > limits.ttl_max_ms) {
            return Err(ConvError::new(
                ErrorCode::InvalidField,
                format!(
                    "expires is after ts and at most {} ms after it",
                    limits.ttl_max_ms
                ),
            )
            .field("payload.expires"));
        }
        Ok(())
    }

    /// The conversation a call starts, with the call as entry 1 appended at `at`. `None` for
    /// an envelope that is not a call.
    pub fn open(call: &SignedEnvelope, at: i64) -> Option<Conversation> {
        let env = call.envelope();
        let Payload::Call {
            topic,
            mode,
            participants,
            turns,
            expires,
        } = &env.payload
        else {
            return None;
        };
        let mut ps = vec![Participant {
            handle: env.from.clone(),
            role: ConvRole::Owner,
            state: PartState::Joined,
            reason: None,
            invited_seq: 1,
            invited_at: at,
            end: None,
            declined_by_relay: false,
        }];
        ps.extend(participants.iter().map(|p| invited(p, 1, at)));
        let mut c = Conversation {
            id: call.id(),
            topic: topic.clone(),
            mode: *mode,
            created: at,
            turns: *turns,
            expires: *expires,
            state: ConvState::Ringing,
            participants: ps,
            posts: 0,
            seq: 0,
            head: FIRST_PREV,
        };
        c.link(&Entry {
            conv: c.id,
            seq: 1,
            at,
            prev: FIRST_PREV,
            body: EntryBody::Envelope(call.clone()),
        });
        Some(c)
    }

    /// [`check_call`](Self::check_call), then [`open`](Self::open).
    pub fn start(
        call: &SignedEnvelope,
        at: i64,
        limits: &ConvLimits,
    ) -> Result<Conversation, ConvError> {
        Self::check_call(call.envelope(), limits)?;
        Self::open(call, at)
            .ok_or_else(|| ConvError::new(ErrorCode::InvalidField, "not a call").field("type"))
    }

    /// The turn limit in force: the call's, or the relay's maximum.
    pub fn turn_limit(&self, limits: &ConvLimits) -> i64 {
        self.turns.unwrap_or(limits.turns_max)
    }

    /// The expiry in force: the call's, or `ttl_max_ms` after the conversation was created.
    pub fn expiry(&self, limits: &ConvLimits) -> i64 {
        self.expires
            .unwrap_or(self.created.saturating_add(limits.ttl_max_ms))
    }

    pub fn owner(&self) -> &Handle {
        &self.participants[0].handle
    }

    pub fn participant(&self, h: &Handle) -> Option<&Participant> {
        self.participants.iter().find(|p| &p.handle == h)
    }

    fn participant_mut(&mut self, h: &Handle) -> Option<&mut Participant> {
        self.participants.iter_mut().find(|p| &p.handle == h)
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, ConvState::Closed(_))
    }

    /// The refusal for an envelope in a closed conversation: a post after the turn limit is
    /// `turn_limit_reached`, anything else `conversation_closed` with the reason.
    pub(super) fn closed_error(&self, post: bool) -> Option<ConvError> {
        let ConvState::Closed(reason) = self.state else {
            return None;
        };
        let code = if post && reason == CloseReason::TurnLimit {
            ErrorCode::TurnLimitReached
        } else {
            ErrorCode::ConversationClosed
        };
        let mut e = ConvError::new(
            code,
            format!("the conversation is closed ({})", reason.as_str()),
        );
        e.reason = Some(reason);
        Some(e)
    }

    /// The next entry holding `body`, appended at `at`.
    pub fn next_entry(&self, body: EntryBody, at: i64) -> Entry {
        Entry {
            conv: self.id,
            seq: self.seq + 1,
            at,
            prev: self.head,
            body,
        }
    }

    fn link(&mut self, e: &Entry) {
        self.seq = e.seq;
        self.head = e.hash();
    }

    /// Whether the home relay accepts `env` (a `conv_action` or a post naming this
    /// conversation) from its sender now: CONVO-6 and CONVO-8 without the relay's rate and
    /// open-conversation limits, which are the caller's.
    pub fn judge(&self, env: &Envelope, now: i64, limits: &ConvLimits) -> Result<(), ConvError> {
        let not_participant = || {
            ConvError::new(
                ErrorCode::NotParticipant,
                format!(
                    "{} is not a participant of conversation {}",
                    env.from, self.id
                ),
            )
            .field("conv")
        };
        let me = self.participant(&env.from).ok_or_else(not_participant)?;
        let post = !matches!(env.payload, Payload::ConvAction { .. });
        if let Some(e) = self.closed_error(post) {
            return Err(e);
        }
        // Due to close, even if the relay has not appended the event yet (CONVO-9).
        if now > self.expiry(limits) {
            let mut e = ConvError::new(ErrorCode::ConversationClosed, "the conversation expired");
            e.reason = Some(CloseReason::Expired);
            return Err(e);
        }
        if post && self.posts >= self.turn_limit(limits) {
            let mut e = ConvError::new(
                ErrorCode::TurnLimitReached,
                "the conversation reached its turn limit",
            );
            e.reason = Some(CloseReason::TurnLimit);
            return Err(e);
        }
        let to_owner = || -> Result<(), ConvError> {
            if env.to.len() == 1 && &env.to[0] == self.owner() {
                Ok(())
            } else {
                Err(ConvError::new(
                    ErrorCode::InvalidField,
                    format!("this action is addressed to the owner, {}", self.owner()),
                )
                .field("to"))
            }
        };
        let not_allowed = |what: &str| {
            ConvError::new(
                ErrorCode::ActionNotAllowed,
                format!("{what} (you are {} here)", me.state.as_str()),
            )
        };
        match &env.payload {
            Payload::ConvAction {
                action,
                participants,
                ..
            } => match action {
                ConvActionKind::Accept | ConvActionKind::Decline => {
                    if !matches!(me.state, PartState::Ringing | PartState::Missed) {
                        return Err(not_allowed(
                            "only an invitation that is ringing or missed can be answered",
                        ));
                    }
                    to_owner()
                }
                ConvActionKind::Leave => {
                    if me.state != PartState::Joined {
                        return Err(not_allowed("only a joined participant can leave"));
                    }
                    to_owner()
                }
                ConvActionKind::Close | ConvActionKind::Invite => {
                    if me.role != ConvRole::Owner || me.state != PartState::Joined {
                        return Err(not_allowed("only the owner, joined, can close or invite"));
                    }
                    if *action == ConvActionKind::Close {
                        return to_owner();
                    }
                    let new = participants.as_deref().unwrap_or(&[]);
                    if let Some(p) = new.iter().find(|p| self.participant(&p.handle).is_some()) {
                        return Err(ConvError::new(
                            ErrorCode::InvalidField,
                            format!("{} is already a participant", p.handle),
                        )
                        .field("payload.participants"));
                    }
                    if self.participants.len() + new.len() > limits.participants_max {
                        return Err(ConvError::new(
                            ErrorCode::InvalidField,
                            format!(
                                "a conversation has at most {} participants",
                                limits.participants_max
                            ),
                        )
                        .field("payload.participants"));
                    }
                    if !new.iter().map(|p| &p.handle).eq(env.to.iter()) {
                        return Err(ConvError::new(
                            ErrorCode::InvalidField,
                            "an invite is addressed to exactly its participants, in their order",
                        )
                        .field("to"));
                    }
                    Ok(())
                }
            },
            Payload::Message { .. }
            | Payload::TaskRequest { .. }
            | Payload::TaskResult { .. }
            | Payload::Extension(_)
            | Payload::Sealed(_) => {
                if me.state != PartState::Joined || me.role == ConvRole::Observer {
                    return Err(ConvError::new(
                        ErrorCode::NotParticipant,
                        format!(
                            "only joined owners and members post ({} is a {} {})",
                            env.from,
                            me.state.as_str(),
                            me.role.as_str()
                        ),
                    )
                    .field("conv"));
                }
                for h in &env.to {
                    let joined = h != &env.from
                        && self
                            .participant(h)
                            .is_some_and(|p| p.state == PartState::Joined);
                    if !joined {
                        return Err(ConvError::new(
                            ErrorCode::NotParticipant,
                            format!("{h} is not another joined participant"),
                        )
                        .field("to"));
                    }
                }
                Ok(())
            }
            _ => Err(ConvError::new(
                ErrorCode::InvalidField,
                format!("a {} does not belong to a conversation", env.msg_type),
            )
            .field("conv")),
        }
    }

    /// Appends an accepted entry: one `judge` allowed, or an event the relay decided. What
    /// follows from it at once is [`follow_ups`](Self::follow_ups), which the relay appends as
    /// event entries.
    pub fn apply(&mut self, e: &Entry) {
        match &e.body {
            EntryBody::Envelope(se) => {
                let env = se.envelope();
                match &env.payload {
                    Payload::ConvAction {
                        action,
                        reason,
                        participants,
                    } => match action {
                        ConvActionKind::Accept => {
                            if let Some(p) = self.participant_mut(&env.from) {
                                p.state = PartState::Joined;
                            }
                            if self.state == ConvState::Ringing {
                                self.state = ConvState::Active;
                            }
                        }
                        ConvActionKind::Decline | ConvActionKind::Leave => {
                            if let Some(p) = self.participant_mut(&env.from) {
                                p.state = if *action == ConvActionKind::Leave {
                                    PartState::Left
                                } else {
                                    PartState::Declined
                                };
                                p.reason = reason.clone();
                                p.end = Some(e.seq);
                            }
                            // The owner's leave ends the conversation: nobody else may invite
                            // or close it.
                            if *action == ConvActionKind::Leave && &env.from == self.owner() {
                                self.state = ConvState::Closed(CloseReason::ClosedByOwner);
                            }
                        }
                        ConvActionKind::Close => {
                            self.state = ConvState::Closed(CloseReason::ClosedByOwner)
                        }
                        ConvActionKind::Invite => {
                            for p in participants.as_deref().unwrap_or(&[]) {
                                self.participants.push(invited(p, e.seq, e.at));
                            }
                        }
                    },
                    Payload::Call { .. } => {}
                    _ => self.posts += 1,
                }
            }
            EntryBody::Event(ev) => match ev {
                ConvEvent::Missed { handle } => {
                    if let Some(p) = self.participant_mut(handle) {
                        p.state = PartState::Missed;
                    }
                }
                ConvEvent::Declined { handle, reason } => {
                    if let Some(p) = self.participant_mut(handle) {
                        p.state = PartState::Declined;
                        p.reason = Some(reason.clone());
                        p.end = Some(e.seq);
                        p.declined_by_relay = true;
                    }
                }
                ConvEvent::Closed { reason } => {
                    self.state = ConvState::Closed(*reason);
                    // A decline or leave that closed the conversation: whoever made it also
                    // reads the close (CONVO-10).
                    let last = self.seq;
                    for p in self.participants.iter_mut() {
                        if p.end == Some(last) {
                            p.end = Some(e.seq);
                        }
                    }
                }
            },
        }
        self.link(e);
    }

    /// The events that follow at once from the state (CONVO-2, CONVO-9): `closed` with
    /// `turn_limit` when the posts reached the limit, with `everyone_left` when fewer than two
    /// participants are joined, ringing or missed.
    pub fn follow_ups(&self, limits: &ConvLimits) -> Vec<ConvEvent> {
        if self.is_closed() {
            return Vec::new();
        }
        let reason = if self.posts >= self.turn_limit(limits) {
            CloseReason::TurnLimit
        } else if self
            .participants
            .iter()
            .filter(|p| p.state.counts())
            .count()
            < 2
        {
            CloseReason::EveryoneLeft
        } else {
            return Vec::new();
        };
        vec![ConvEvent::Closed { reason }]
    }

    /// The last entry `h` may read (CONVO-10), or `None` when `h` is no participant.
    pub fn readable_upto(&self, h: &Handle) -> Option<u64> {
        let p = self.participant(h)?;
        Some(p.end.unwrap_or(self.seq))
    }
}

fn invited(p: &Invitee, seq: u64, at: i64) -> Participant {
    Participant {
        handle: p.handle.clone(),
        role: p.role,
        state: PartState::Ringing,
        reason: None,
        invited_seq: seq,
        invited_at: at,
        end: None,
        declined_by_relay: false,
    }
}
