//! The word types of envelopes and payloads (contact levels, ack and delivery states, task
//! outcomes, vouch actions, report reasons) and the open [`MessageType`] enum (SPEC.md section 7).

use super::NAME_BYTES_MAX;
use std::fmt;

macro_rules! words {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $word:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),* }
        impl $name {
            pub const WORDS: &'static [(&'static str, $name)] = &[$(($word, $name::$variant)),*];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word),* }
            }
            pub fn parse(s: &str) -> Option<$name> {
                Self::WORDS.iter().find(|(w, _)| *w == s).map(|(_, v)| *v)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

words! {
    /// A contact grant's level (CONTACT-2). Levels are ordered: `read < message < task`.
    ContactLevel { Read = "read", Message = "message", Task = "task" }
}
words! {
    /// What an ack says about a message (ACK-2).
    AckStatus { Received = "received", Processed = "processed", Rejected = "rejected" }
}
words! {
    /// The delivery state of a message for one recipient (DELIV-1).
    DeliveryState {
        Accepted = "accepted",
        Forwarded = "forwarded",
        Delivered = "delivered",
        Acked = "acked",
        TimedOut = "timed_out",
        DeadLettered = "dead_lettered",
    }
}
words! {
    /// The outcome a `task_result` reports.
    TaskStatus { Ok = "ok", Error = "error" }
}
words! {
    /// Whether a vouch is given or taken back.
    VouchAction { Grant = "grant", Revoke = "revoke" }
}
words! {
    /// How a conversation's invitations wait (CONVO-1): `live` ones ring out, `async` ones wait.
    ConvMode { Live = "live", Async = "async" }
}
words! {
    /// What an invitee may do in a conversation (CONVO-1); the caller is its `owner`.
    ConvRole { Owner = "owner", Member = "member", Observer = "observer" }
}
words! {
    /// A participant's action on a conversation (CONVO-6).
    ConvActionKind { Accept = "accept", Decline = "decline", Leave = "leave", Close = "close", Invite = "invite" }
}
words! {
    /// Why an agent is reported.
    ReportReason { Spam = "spam", Abuse = "abuse", Impersonation = "impersonation", Malware = "malware", Other = "other" }
}

impl DeliveryState {
    /// Terminal states never change again (DELIV-2).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeliveryState::Acked | DeliveryState::TimedOut | DeliveryState::DeadLettered
        )
    }
}

/// The message type, an open enum on purpose (TYPE-1): registered types are variants, `x-`
/// extension types are carried by name, and anything else is refused at parse time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MessageType {
    Message,
    TaskRequest,
    TaskResult,
    Ack,
    Receipt,
    ContactRequest,
    Vouch,
    Report,
    /// Invites agents to a new conversation (CONVO-5).
    Call,
    /// A participant's action on a conversation (CONVO-6).
    ConvAction,
    /// An extension type `x-...`, opaque to relays.
    Extension(String),
}

impl MessageType {
    pub const REGISTERED: &'static [MessageType] = &[
        MessageType::Message,
        MessageType::TaskRequest,
        MessageType::TaskResult,
        MessageType::Ack,
        MessageType::Receipt,
        MessageType::ContactRequest,
        MessageType::Vouch,
        MessageType::Report,
        MessageType::Call,
        MessageType::ConvAction,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            MessageType::Message => "message",
            MessageType::TaskRequest => "task_request",
            MessageType::TaskResult => "task_result",
            MessageType::Ack => "ack",
            MessageType::Receipt => "receipt",
            MessageType::ContactRequest => "contact_request",
            MessageType::Vouch => "vouch",
            MessageType::Report => "report",
            MessageType::Call => "call",
            MessageType::ConvAction => "conv_action",
            MessageType::Extension(s) => s,
        }
    }

    /// TYPE-1/TYPE-2: a registered name, or `x-` followed by `[a-z0-9][a-z0-9._-]*` (64 bytes in all).
    pub fn parse(s: &str) -> Option<MessageType> {
        if let Some(t) = MessageType::REGISTERED.iter().find(|t| t.as_str() == s) {
            return Some(t.clone());
        }
        let rest = s.strip_prefix("x-")?;
        let b = rest.as_bytes();
        let ok = s.len() <= NAME_BYTES_MAX
            && !b.is_empty()
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|&c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
            });
        ok.then(|| MessageType::Extension(s.to_owned()))
    }

    /// The highest `type_version` this crate understands for a registered type (TYPE-3).
    /// Extension types accept any version from 1.
    pub fn max_version(&self) -> Option<i64> {
        match self {
            MessageType::Extension(_) => None,
            _ => Some(1),
        }
    }

    /// The contact level a sender needs to send this type (CONTACT-4). `None`: no contact grant
    /// is involved and other rules apply (acks: ACK-3; contact requests: CONTACT-5; vouches and
    /// reports: TRUST-3; receipts: relays only). A `task_result` that answers a `task_request`
    /// the recipient sent is a reply and needs no grant (CONTACT-6).
    pub fn required_level(&self) -> Option<ContactLevel> {
        match self {
            MessageType::Message | MessageType::Extension(_) | MessageType::TaskResult => {
                Some(ContactLevel::Message)
            }
            MessageType::TaskRequest => Some(ContactLevel::Task),
            // Calling needs `message` from every invitee (CONVO-5); an action needs none (the
            // invite's own rule is the call's, checked by the conversation rules).
            MessageType::Call => Some(ContactLevel::Message),
            MessageType::ConvAction
            | MessageType::Ack
            | MessageType::ContactRequest
            | MessageType::Vouch
            | MessageType::Report
            | MessageType::Receipt => None,
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
