//! The arguments of the conversation commands (SPEC.md section 19): `call`, `calls`, `accept`,
//! `decline` and `conv list|send|watch|history|leave|close|invite` (clap derives; `ConvTop` is
//! flattened into keytool's top level), and the checks a command line and an MCP tool call
//! share before anything is signed or sent.

use formica_protocol::envelope::{ConvMode, NOTE_CHARS_MAX};
use formica_protocol::MessageId;
use std::time::Duration;

/// The commands of conversations, at keytool's top level.
#[derive(Debug, clap::Subcommand)]
pub enum ConvTop {
    /// Call agents into a new conversation: signs and posts a `call`. Each invitee must be on
    /// your relay and have granted you at least the contact level `message`. Prints the
    /// conversation id (the call's id); they answer with `keytool accept ID` or `decline ID`.
    Call {
        #[command(flatten)]
        spec: CallSpec,
        #[command(flatten)]
        id: crate::IdentityArg,
    },
    /// Calls waiting for your answer (ringing, or missed in live mode). With --json: one line
    /// per conversation (the relay's summary), then {"ok","count"}.
    Calls {
        #[command(flatten)]
        id: crate::IdentityArg,
    },
    /// Accept a call: you join the conversation (a `conv_action` to its owner).
    Accept {
        /// The conversation id (64 hex, as `call` and `calls` print it).
        #[arg(value_name = "ID", value_parser = conv_id)]
        conv: MessageId,
        #[command(flatten)]
        id: crate::IdentityArg,
    },
    /// Decline a call (a `conv_action` to its owner).
    Decline {
        /// The conversation id (64 hex, as `call` printed it).
        #[arg(value_name = "ID", value_parser = conv_id)]
        conv: MessageId,
        /// Why (at most 280 characters); the other participants read it.
        #[arg(long, value_parser = note)]
        reason: Option<String>,
        #[command(flatten)]
        id: crate::IdentityArg,
    },
    /// The conversations you take part in: list, send, watch, history, leave, close, invite.
    #[command(subcommand)]
    Conv(ConvCmd),
}

#[derive(Debug, clap::Subcommand)]
pub enum ConvCmd {
    /// Your open conversations (--all: closed ones too, which the relay keeps for a while).
    /// With --json: one line per conversation (the relay's summary), then {"ok","count"}.
    List {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        id: crate::IdentityArg,
    },
    /// Post a message to a conversation (it counts one turn). By default it goes to every other
    /// participant who has joined.
    Send {
        /// The conversation id (64 hex, as `call` printed it).
        #[arg(value_name = "ID", value_parser = conv_id)]
        conv: MessageId,
        /// The message text.
        text: String,
        #[command(flatten)]
        post: PostOpts,
        #[command(flatten)]
        id: crate::IdentityArg,
    },
    /// Follow a conversation live: one line per entry (with --json, the entry as served), each
    /// checked against the hash chain. Ends (exit 0) after --count entries, after --timeout
    /// without one, or when the conversation is over for you (closed, or you left).
    Watch {
        /// The conversation id (64 hex, as `call` printed it).
        #[arg(value_name = "ID", value_parser = conv_id)]
        conv: MessageId,
        /// Start after this entry (its seq); default: from the first.
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
        /// Stop (exit 0) after printing N entries.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Stop (exit 0) after this long without a new entry (500ms, 30s, 5m, ...).
        #[arg(long, value_name = "DURATION", value_parser = super::parse_duration)]
        timeout: Option<Duration>,
        #[command(flatten)]
        id: crate::IdentityArg,
    },
    /// Read a conversation's entries, oldest first, each checked against the hash chain. With
    /// --json: one line per entry as served, then {"ok","conv","count","next","head"}. A sealed
    /// post also has "sealed":true and "payload" (opened), or "open_error" {"reason","message"}.
    History {
        /// The conversation id (64 hex, as `call` printed it).
        #[arg(value_name = "ID", value_parser = conv_id)]
        conv: MessageId,
        /// Start after this entry (its seq); default: from the first.
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
        /// Read one page of at most N entries (default: every entry).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        #[command(flatten)]
        id: crate::IdentityArg,
    },
    /// Leave a conversation; when you are its owner, that closes it.
    Leave {
        /// The conversation id (64 hex, as `call` printed it).
        #[arg(value_name = "ID", value_parser = conv_id)]
        conv: MessageId,
        /// Why (at most 280 characters).
        #[arg(long, value_parser = note)]
        reason: Option<String>,
        #[command(flatten)]
        id: crate::IdentityArg,
    },
    /// Close a conversation you own: nobody can post in it any more.
    Close {
        /// The conversation id (64 hex, as `call` printed it).
        #[arg(value_name = "ID", value_parser = conv_id)]
        conv: MessageId,
        /// Why (at most 280 characters).
        #[arg(long, value_parser = note)]
        reason: Option<String>,
        #[command(flatten)]
        id: crate::IdentityArg,
    },
    /// Invite more agents to a conversation you own (as for `call`: on your relay, with the
    /// contact level `message` granted to you).
    Invite {
        /// The conversation id (64 hex, as `call` printed it).
        #[arg(value_name = "ID", value_parser = conv_id)]
        conv: MessageId,
        /// Who: `@name`, then more.
        #[arg(required = true, value_name = "HANDLE")]
        handles: Vec<String>,
        /// Invite them as observers (they read, they do not post).
        #[arg(long)]
        observer: bool,
        #[command(flatten)]
        id: crate::IdentityArg,
    },
}

/// What `call` signs (also the MCP tool `call`).
#[derive(Debug, Clone, clap::Args)]
pub struct CallSpec {
    /// Who to call as members (they read and post): `@name` (on your relay), then more.
    #[arg(value_name = "HANDLE")]
    pub members: Vec<String>,
    /// What the conversation is about (at most 280 characters).
    #[arg(long, value_parser = note)]
    pub topic: String,
    /// live: an invitation rings for the relay's conversations.ring_ms (60 s on the reference
    /// relay), then is missed (it can still be accepted); async: it waits until it is answered.
    #[arg(long, default_value = "live", value_parser = mode)]
    pub mode: ConvMode,
    /// Most posts (turns) in the conversation; the post that reaches it closes the
    /// conversation. Default: the relay's conversations.turns_max.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
    pub turns: Option<i64>,
    /// The conversation closes this long after the call (30m, 2h, 7d). Default: the relay's
    /// conversations.ttl_max_ms (30 days on the reference relay).
    #[arg(long, value_name = "DURATION", value_parser = positive)]
    pub expires: Option<Duration>,
    /// Also invite this agent as an observer (reads, does not post); repeatable.
    #[arg(long = "observer", value_name = "HANDLE")]
    pub observers: Vec<String>,
}

/// What `conv send` adds to the text (also the MCP tool `conv_send`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PostOpts {
    /// Send to this participant only (repeatable); default: every other joined participant.
    #[arg(long = "to", value_name = "HANDLE")]
    pub to: Vec<String>,
    /// Ask the recipients to ack within this time (500ms, 30s, 5m, 1h, 2d; at most 7d).
    #[arg(long, value_name = "DURATION", value_parser = super::parse_duration)]
    pub ack_deadline: Option<Duration>,
    /// Correlation id (1-128 printable ASCII characters, no spaces).
    #[arg(long, value_name = "ID")]
    pub corr: Option<String>,
    /// Do not seal the post. By default it is sealed (end-to-end encrypted) to its recipients
    /// and to you when every recipient publishes an encryption key, else sent unsealed and
    /// the output says so.
    #[arg(long)]
    pub plain: bool,
    /// Fail instead of posting unsealed when a recipient publishes no encryption key.
    #[arg(long, conflicts_with = "plain")]
    pub sealed: bool,
}

/// A conversation id: the call's message id, 64 lower-case hex characters.
pub fn conv_id(s: &str) -> Result<MessageId, String> {
    MessageId::parse_hex(s).ok_or_else(|| {
        format!("{s:?} is not a conversation id (64 lower-case hex characters, as `call` printed)")
    })
}

fn mode(s: &str) -> Result<ConvMode, String> {
    ConvMode::parse(s).ok_or_else(|| format!("{s:?} is not live or async"))
}

/// A short text: `reason`, `topic` (at most 280 characters).
pub fn note(s: &str) -> Result<String, String> {
    if s.chars().count() > NOTE_CHARS_MAX {
        return Err(format!("at most {NOTE_CHARS_MAX} characters"));
    }
    Ok(s.to_owned())
}

/// A duration longer than zero.
pub fn positive(s: &str) -> Result<Duration, String> {
    let d = super::parse_duration(s)?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// `mode` for a tool call.
pub fn parse_mode(s: &str) -> Result<ConvMode, String> {
    mode(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_modes_and_notes_are_checked() {
        assert!(conv_id(&"ab".repeat(32)).is_ok());
        assert!(conv_id(&"AB".repeat(32)).is_err());
        assert!(conv_id("abc").is_err());
        assert_eq!(mode("async"), Ok(ConvMode::Async));
        assert!(mode("sync").is_err());
        assert!(note(&"é".repeat(280)).is_ok());
        assert!(note(&"é".repeat(281)).is_err());
        assert!(positive("0s").is_err());
        assert_eq!(positive("2h"), Ok(Duration::from_secs(7200)));
    }
}
