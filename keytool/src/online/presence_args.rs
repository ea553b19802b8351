//! The arguments of `presence set|show|heartbeat` and `who` (clap derives; `StatusSpec` is
//! shared with the MCP tool `presence_set`), and their checks: PRES-2 for what a command line or
//! a tool call gives, before anything is signed or sent.

use formica_protocol::presence::{Availability, NOTE_CHARS_MAX};
use std::time::Duration;

/// `presence set busy|away` without `--for`: one hour.
pub const BUSY_DEFAULT: Duration = Duration::from_secs(3600);
/// `presence set available` without `--for`: five minutes. An `available` status only ends a
/// `busy` or `away` early (an agent without a status is `available` while connected anyway), or
/// carries a note; it need not last.
pub const AVAILABLE_DEFAULT: Duration = Duration::from_secs(300);

#[derive(Debug, clap::Subcommand)]
pub enum PresenceCmd {
    /// Sign and publish your status: busy or away (for 1h unless --for says otherwise), or
    /// available (ends a busy or away early; 5m by default). Your contacts see it while you are
    /// connected: an inbox stream open (`keytool watch`), or a heartbeat within the relay's
    /// presence.ttl_ms (60 s on the reference relay); otherwise you are offline, whatever your
    /// status says.
    /// Prints the relay's answer and what your contacts see now (`shown`).
    Set {
        #[command(flatten)]
        spec: StatusSpec,
        /// Also send a heartbeat (`presence heartbeat`): connected for presence.ttl_ms without
        /// a stream.
        #[arg(long)]
        heartbeat: bool,
        #[command(flatten)]
        id: crate::IdentityArg,
    },
    /// Show an agent's presence (default: yours): status, last seen, note. A busy or away
    /// status is shown only once its signature verifies against the agent's key log. You see
    /// the full presence of agents that granted you a contact level, the bare status of agents
    /// with a listed profile, and nothing of others (exit 7, not_found).
    Show {
        /// `@name` (on your relay) or `@name@host` (only your relay's agents are answered).
        handle: Option<String>,
        #[command(flatten)]
        id: crate::IdentityArg,
    },
    /// Tell your relay you are connected, for agents that keep no inbox stream open: you show
    /// as connected for presence.ttl_ms (60 s on the reference relay), so send one about every
    /// half of that. An open stream (`keytool watch`) keeps you connected by itself.
    Heartbeat {
        #[command(flatten)]
        id: crate::IdentityArg,
    },
}

/// `who`'s command line.
#[derive(Debug, clap::Args)]
pub struct WhoArgs {
    #[command(flatten)]
    pub id: crate::IdentityArg,
}

/// What `presence set` signs (also the MCP tool `presence_set`).
#[derive(Debug, Clone, clap::Args)]
pub struct StatusSpec {
    /// available, busy or away (offline is never said by an agent: its relay observes it).
    #[arg(value_name = "STATUS", value_parser = availability)]
    pub status: Availability,
    /// How long the status holds (30s, 30m, 2h, ...; default 1h for busy and away, 5m for
    /// available): at most the relay's presence.status_ttl_ms_max (24h on the reference
    /// relay). After it you are available again while connected.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_for)]
    pub duration: Option<Duration>,
    /// A short note for your contacts (at most 280 characters).
    #[arg(long, value_name = "TEXT", value_parser = note)]
    pub note: Option<String>,
}

impl StatusSpec {
    /// `--for`, or the default for the status.
    pub fn ttl(&self) -> Duration {
        self.duration.unwrap_or(match self.status {
            Availability::Available => AVAILABLE_DEFAULT,
            Availability::Busy | Availability::Away => BUSY_DEFAULT,
        })
    }
}

fn availability(s: &str) -> Result<Availability, String> {
    Availability::parse(s).ok_or_else(|| {
        let hint = if s == "offline" {
            " (offline is what your relay shows when you are not connected; nobody sets it)"
        } else {
            ""
        };
        format!("{s:?} is not available, busy or away{hint}")
    })
}

fn note(s: &str) -> Result<String, String> {
    if s.chars().count() > NOTE_CHARS_MAX {
        return Err(format!("at most {NOTE_CHARS_MAX} characters"));
    }
    Ok(s.to_owned())
}

/// A `--for`: a duration (`parse_duration`) longer than zero.
pub fn parse_for(s: &str) -> Result<Duration, String> {
    let d = super::parse_duration(s)?;
    if d.is_zero() {
        return Err("a status must hold for some time".into());
    }
    Ok(d)
}

/// PRES-2 for what a tool call gives: the status word and the note.
pub fn check_status(status: &str, note_text: Option<&str>) -> Result<Availability, String> {
    let a = availability(status).map_err(|e| format!("`status`: {e}"))?;
    if let Some(n) = note_text {
        note(n).map_err(|e| format!("`note`: {e}"))?;
    }
    Ok(a)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let mut spec = StatusSpec {
            status: Availability::Busy,
            duration: None,
            note: None,
        };
        assert_eq!(spec.ttl(), Duration::from_secs(3600));
        spec.status = Availability::Away;
        assert_eq!(spec.ttl(), Duration::from_secs(3600));
        spec.status = Availability::Available;
        assert_eq!(spec.ttl(), Duration::from_secs(300));
        spec.duration = Some(parse_for("30m").unwrap());
        assert_eq!(spec.ttl(), Duration::from_secs(1800));
        assert!(parse_for("0s").is_err());
        assert!(parse_for("30").is_err());
    }

    #[test]
    fn only_what_an_agent_may_say_is_taken() {
        assert_eq!(check_status("busy", Some("x")), Ok(Availability::Busy));
        assert!(check_status("offline", None)
            .unwrap_err()
            .contains("nobody sets it"));
        assert!(check_status("Busy", None).is_err());
        assert!(check_status("away", Some(&"é".repeat(280))).is_ok());
        assert!(check_status("away", Some(&"é".repeat(281))).is_err());
    }
}
