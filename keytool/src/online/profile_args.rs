//! The arguments of `profile set`, `profile show` and `find` (clap derives, shared with the MCP
//! tools `profile_set` and `find`), and their checks: PROF-1 and PROF-3 for what a command line
//! or a tool call gives, before anything is signed or sent.

use formica_protocol::profile::{self, is_word, CAPABILITIES_MAX, TAGS_MAX};
use formica_protocol::{Capability, MessageType};
use std::time::Duration;

/// `profile set` without `--ttl`: 30 days, the reference relay's `directory.profile_ttl_ms_max`.
pub const TTL_DEFAULT: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug, clap::Subcommand)]
pub enum ProfileCmd {
    /// Sign and publish your profile (it replaces the one your relay holds). Only you and your
    /// contacts see it, and with --listed every agent of the relay (`find`).
    Set {
        #[command(flatten)]
        spec: ProfileSpec,
        #[command(flatten)]
        id: crate::IdentityArg,
    },
    /// Show a profile (default: yours), verified: key valid at its time, signature, handle.
    Show {
        /// `@name` (on your relay) or `@name@host`.
        handle: Option<String>,
        #[command(flatten)]
        id: crate::IdentityArg,
    },
}

/// `find`'s command line.
#[derive(Debug, clap::Args)]
pub struct FindArgs {
    #[command(flatten)]
    pub query: FindQuery,
    #[command(flatten)]
    pub id: crate::IdentityArg,
}

/// What `profile set` publishes (also the MCP tool `profile_set`).
#[derive(Debug, Clone, clap::Args)]
pub struct ProfileSpec {
    /// Display name: 1 to 64 characters, no control characters.
    #[arg(long, value_parser = label)]
    pub name: String,
    /// What the agent does: at most 280 characters.
    #[arg(long, value_name = "TEXT", value_parser = note)]
    pub description: Option<String>,
    /// A capability, repeatable (at most 32; the relay may publish a lower limit):
    /// ID[@VERSION][:TAG,TAG...]. ID and each TAG are words: a lower-case letter or digit, then
    /// lower-case letters, digits, `.`, `_`, `-` (64 bytes at most); VERSION is 1 to 32 of
    /// A-Z a-z 0-9 . _ + -; at most 8 tags. Examples: `code-review`, `code-review@2:rust,sql`,
    /// `translate@1.4.0-beta`.
    #[arg(long = "capability", value_name = "ID[@VERSION][:TAGS]", value_parser = parse_capability)]
    pub capabilities: Vec<Capability>,
    /// A message type the agent handles, repeatable (message, task_request, x-...).
    #[arg(long, value_name = "TYPE", value_parser = message_type)]
    pub accepts: Vec<MessageType>,
    /// The agent framework, for example (1 to 64 characters).
    #[arg(long, value_name = "P", value_parser = label)]
    pub platform: Option<String>,
    /// The model behind the agent, for example (1 to 64 characters).
    #[arg(long, value_name = "M", value_parser = label)]
    pub model: Option<String>,
    /// List the profile in the relay's directory: every agent of the relay can then read it
    /// and `find` it. Without it, only you and the agents you granted a contact level see it.
    #[arg(long)]
    pub listed: bool,
    /// How long the profile stays valid (30s, 12h, 30d, ...): at most the relay's
    /// `directory.profile_ttl_ms_max` (30d on the reference relay). Set it again before then.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_ttl)]
    pub ttl: Duration,
}

/// What `find` asks the directory (also the MCP tool `find`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FindQuery {
    /// Profiles with a capability of this id (a word, e.g. code-review).
    #[arg(long, value_name = "ID", value_parser = word)]
    pub capability: Option<String>,
    /// Profiles whose name, description, a capability id or a tag contains this text (1 to 64
    /// characters, case-insensitive).
    #[arg(long, value_name = "T", value_parser = search_text)]
    pub text: Option<String>,
    /// Profiles of agents at this trust tier level or above (0 new, 1 member, 2 trusted on the
    /// reference relay).
    #[arg(long, value_name = "N")]
    pub min_tier: Option<u32>,
    /// Only agents whose presence is this (available, busy, away, offline).
    #[arg(long, value_name = "S", value_parser = ["available", "busy", "away", "offline"])]
    pub status: Option<String>,
    /// Results per page (1 to the relay's directory.page_max; default: that maximum).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Start after this cursor (the `next` an earlier find printed).
    #[arg(long, value_name = "C", conflicts_with = "federated")]
    pub cursor: Option<String>,
    /// Follow `next` to the end (at most 20 pages).
    #[arg(long, conflicts_with = "federated")]
    pub all: bool,
    /// Also search the directories of your relay's peers: one page from each relay, within
    /// the relay's deadline; says which relays answered (a relay that did not makes the answer
    /// partial). Remote profiles are verified against the key logs your relay fetches.
    #[arg(long)]
    pub federated: bool,
}

fn label(s: &str) -> Result<String, String> {
    let n = s.chars().count();
    if n == 0 || n > profile::NAME_CHARS_MAX {
        return Err(format!("1 to {} characters", profile::NAME_CHARS_MAX));
    }
    if s.chars().any(char::is_control) {
        return Err("no control characters".into());
    }
    Ok(s.to_owned())
}

fn note(s: &str) -> Result<String, String> {
    if s.chars().count() > profile::DESCRIPTION_CHARS_MAX {
        return Err(format!(
            "at most {} characters",
            profile::DESCRIPTION_CHARS_MAX
        ));
    }
    Ok(s.to_owned())
}

fn word(s: &str) -> Result<String, String> {
    if is_word(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a word: a lower-case letter or digit, then lower-case letters, digits, '.', '_', '-' (64 bytes at most)"
        ))
    }
}

fn search_text(s: &str) -> Result<String, String> {
    match s.chars().count() {
        1..=64 => Ok(s.to_owned()),
        _ => Err("1 to 64 characters".into()),
    }
}

fn message_type(s: &str) -> Result<MessageType, String> {
    MessageType::parse(s)
        .ok_or_else(|| format!("{s:?} is not a message type (message, task_request, x-...)"))
}

/// A `--ttl`/`ttl`: a duration (`parse_duration`) longer than zero.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = super::parse_duration(s)?;
    if d.is_zero() {
        return Err("a profile must stay valid for some time".into());
    }
    Ok(d)
}

/// Checks one capability against PROF-3 (id and tag words, version, tag count and repeats).
pub fn check_capability(c: &Capability) -> Result<(), String> {
    word(&c.id).map_err(|e| format!("capability id: {e}"))?;
    if let Some(v) = &c.version {
        let ok = (1..=profile::VERSION_CHARS_MAX).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
        if !ok {
            return Err(format!(
                "capability {}: version {v:?} is not 1 to 32 of A-Z a-z 0-9 . _ + -",
                c.id
            ));
        }
    }
    if c.tags.len() > TAGS_MAX {
        return Err(format!("capability {}: at most {TAGS_MAX} tags", c.id));
    }
    for (i, t) in c.tags.iter().enumerate() {
        word(t).map_err(|e| format!("capability {}: tag {e}", c.id))?;
        if c.tags[..i].contains(t) {
            return Err(format!("capability {}: tag {t} given twice", c.id));
        }
    }
    Ok(())
}

/// `ID[@VERSION][:TAG,TAG...]`.
pub fn parse_capability(s: &str) -> Result<Capability, String> {
    let (head, tags) = match s.split_once(':') {
        Some((h, t)) => (h, t.split(',').map(str::to_owned).collect()),
        None => (s, Vec::new()),
    };
    let (id, version) = match head.split_once('@') {
        Some((i, v)) => (i, Some(v.to_owned())),
        None => (head, None),
    };
    let c = Capability {
        id: id.to_owned(),
        version,
        tags,
    };
    check_capability(&c).map_err(|e| format!("{e} (expected ID[@VERSION][:TAG,TAG...])"))?;
    Ok(c)
}

/// PROF-1/PROF-3 for what the command line or a tool call gives: labels, counts, capabilities,
/// repeated capability ids and message types.
pub fn check_spec(spec: &ProfileSpec) -> Result<(), String> {
    label(&spec.name).map_err(|e| format!("name: {e}"))?;
    for (k, v) in [("platform", &spec.platform), ("model", &spec.model)] {
        if let Some(v) = v {
            label(v).map_err(|e| format!("{k}: {e}"))?;
        }
    }
    if let Some(d) = &spec.description {
        note(d).map_err(|e| format!("description: {e}"))?;
    }
    if spec.capabilities.len() > CAPABILITIES_MAX {
        return Err(format!("at most {CAPABILITIES_MAX} capabilities"));
    }
    if spec.accepts.len() > profile::ACCEPTS_MAX {
        return Err(format!(
            "at most {} accepted message types",
            profile::ACCEPTS_MAX
        ));
    }
    for (i, c) in spec.capabilities.iter().enumerate() {
        check_capability(c)?;
        if spec.capabilities[..i].iter().any(|x| x.id == c.id) {
            return Err(format!("capability {} given twice", c.id));
        }
    }
    for (i, t) in spec.accepts.iter().enumerate() {
        if spec.accepts[..i].contains(t) {
            return Err(format!("message type {} given twice", t.as_str()));
        }
    }
    Ok(())
}

/// Percent-encodes a query parameter value: everything but RFC 3986's unreserved characters.
pub fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET /v1/directory` with the query's parameters, percent-encoded, after `cursor`.
pub fn directory_path(q: &FindQuery, cursor: Option<&str>) -> String {
    let mut parts = Vec::new();
    if let Some(c) = &q.capability {
        parts.push(format!("capability={}", pct(c)));
    }
    if let Some(t) = &q.text {
        parts.push(format!("text={}", pct(t)));
    }
    if let Some(n) = q.min_tier {
        parts.push(format!("min_tier={n}"));
    }
    if let Some(s) = &q.status {
        parts.push(format!("status={}", pct(s)));
    }
    if let Some(n) = q.limit {
        parts.push(format!("limit={n}"));
    }
    if let Some(c) = cursor {
        parts.push(format!("cursor={}", pct(c)));
    }
    if q.federated {
        parts.push("federated=1".into());
    }
    if parts.is_empty() {
        "/v1/directory".into()
    } else {
        format!("/v1/directory?{}", parts.join("&"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_parse_from_the_documented_syntax() {
        let c = parse_capability("code-review@2:rust,sql").unwrap();
        assert_eq!(
            (c.id.as_str(), c.version.as_deref(), c.tags.clone()),
            ("code-review", Some("2"), vec!["rust".into(), "sql".into()])
        );
        let c = parse_capability("translate@1.4.0-beta").unwrap();
        assert_eq!(c.version.as_deref(), Some("1.4.0-beta"));
        assert!(c.tags.is_empty());
        let c = parse_capability("sql.postgres:db").unwrap();
        assert_eq!((c.version, c.tags), (None, vec!["db".to_owned()]));
        for bad in [
            "",
            "Code",
            "-x",
            "x@",
            "x@a b",
            "x:",
            "x:a,,b",
            "x:a,a",
            "x:A",
            "x@1:a,b,c,d,e,f,g,h,i",
        ] {
            assert!(parse_capability(bad).is_err(), "{bad:?}");
        }
        assert!(parse_capability(&"a".repeat(65)).is_err());
    }

    #[test]
    fn the_default_ttl_is_the_documented_one() {
        assert_eq!(parse_ttl("30d"), Ok(TTL_DEFAULT));
        assert!(parse_ttl("0s").is_err());
    }

    #[test]
    fn repeated_capabilities_and_types_are_refused() {
        let mut spec = ProfileSpec {
            name: "A".into(),
            description: None,
            capabilities: vec![
                parse_capability("a").unwrap(),
                parse_capability("b").unwrap(),
            ],
            accepts: vec![MessageType::Message],
            platform: None,
            model: None,
            listed: false,
            ttl: TTL_DEFAULT,
        };
        assert!(check_spec(&spec).is_ok());
        spec.capabilities.push(parse_capability("a@2").unwrap());
        assert!(check_spec(&spec).unwrap_err().contains("twice"));
        spec.capabilities.pop();
        spec.accepts.push(MessageType::Message);
        assert!(check_spec(&spec).unwrap_err().contains("twice"));
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(pct("code-review_1.x~"), "code-review_1.x~");
        assert_eq!(pct("a b&c=d"), "a%20b%26c%3Dd");
        assert_eq!(pct("@bob@127.0.0.1:7070"), "%40bob%40127.0.0.1%3A7070");
        assert_eq!(pct("é"), "%C3%A9");
        let q = FindQuery {
            capability: Some("rust".into()),
            text: Some("code review".into()),
            min_tier: Some(1),
            limit: Some(5),
            ..FindQuery::default()
        };
        assert_eq!(
            directory_path(&q, Some("@b@h")),
            "/v1/directory?capability=rust&text=code%20review&min_tier=1&limit=5&cursor=%40b%40h"
        );
        assert_eq!(directory_path(&FindQuery::default(), None), "/v1/directory");
    }
}
