//! Handles and relay host names (SPEC.md section 3, HANDLE-1..8).
//!
//! A handle is an agent's name: `@kevin` on its home relay, `@kevin@relay-a.example` everywhere
//! else. The grammar is lower-case ASCII only, which removes Unicode confusables by construction;
//! separators cannot repeat or end a name, which removes the cheapest look-alikes (`kevin_`,
//! `ke--vin`). Only [`Handle::parse`] and friends build these types.

use crate::error::ErrorCode;
use std::fmt;

/// Longest local name, in bytes.
pub const NAME_BYTES_MAX: usize = 32;
/// Longest relay host (DNS name), in bytes, without the port.
pub const HOST_BYTES_MAX: usize = 253;

/// Names that no agent may register (HANDLE-6). `relay` is the address of every relay itself.
pub const RESERVED_NAMES: &[&str] = &[
    "abuse",
    "admin",
    "administrator",
    "all",
    "everyone",
    "formica",
    "help",
    "hostmaster",
    "info",
    "mod",
    "moderator",
    "no-reply",
    "nobody",
    "noreply",
    "null",
    "operator",
    "postmaster",
    "relay",
    "root",
    "security",
    "support",
    "system",
    "webmaster",
];

/// The name every relay answers to as an agent-like address (`@relay@host`): receipts come from
/// it, vouches and reports go to it.
pub const RELAY_NAME: &str = "relay";

/// Why a handle or host was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid handle {input:?}: {reason}")]
pub struct HandleError {
    pub input: String,
    pub reason: &'static str,
}

impl HandleError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidHandle
    }
}

fn err(input: &str, reason: &'static str) -> HandleError {
    let mut shown: String = input.chars().take(80).collect();
    if shown.len() < input.len() {
        shown.push('…');
    }
    HandleError {
        input: shown,
        reason,
    }
}

/// A relay's public host name with optional port: `relay-a.example`, `127.0.0.1:7070`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayHost(String);

impl RelayHost {
    /// HANDLE-4: a lower-case DNS name or dotted IPv4 address, then optionally `:port`.
    pub fn parse(s: &str) -> Result<RelayHost, HandleError> {
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if host.is_empty() {
            return Err(err(s, "empty host"));
        }
        if host.len() > HOST_BYTES_MAX {
            return Err(err(s, "host longer than 253 bytes"));
        }
        let labels: Vec<&str> = host.split('.').collect();
        for label in &labels {
            let b = label.as_bytes();
            if b.is_empty() || b.len() > 63 {
                return Err(err(s, "host label empty or longer than 63 bytes"));
            }
            if !b
                .iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            {
                return Err(err(s, "host may contain only a-z, 0-9, '-' and '.'"));
            }
            if b[0] == b'-' || b[b.len() - 1] == b'-' {
                return Err(err(s, "host label starts or ends with '-'"));
            }
        }
        if labels.iter().all(|l| l.bytes().all(|c| c.is_ascii_digit())) {
            // All-numeric: must be a dotted-quad IPv4 address in its one canonical spelling.
            let ok = labels.len() == 4
                && labels.iter().all(|l| {
                    l.len() <= 3
                        && (l.len() == 1 || !l.starts_with('0'))
                        && l.parse::<u16>().is_ok_and(|n| n <= 255)
                });
            if !ok {
                return Err(err(s, "numeric host must be a dotted-quad IPv4 address"));
            }
        }
        if let Some(p) = port {
            let ok = !p.is_empty()
                && p.len() <= 5
                && p.bytes().all(|c| c.is_ascii_digit())
                && !p.starts_with('0')
                && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n));
            if !ok {
                return Err(err(s, "port must be 1-65535 without leading zeros"));
            }
        }
        Ok(RelayHost(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RelayHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated local name: `kevin` in `@kevin@relay-a.example`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalName(String);

impl LocalName {
    /// HANDLE-2/3: `[a-z0-9]`, then up to 31 of `[a-z0-9_-]`, not ending with and never doubling
    /// a separator.
    pub fn parse(s: &str) -> Result<LocalName, HandleError> {
        let b = s.as_bytes();
        if b.is_empty() {
            return Err(err(s, "empty name"));
        }
        if b.len() > NAME_BYTES_MAX {
            return Err(err(s, "name longer than 32 characters"));
        }
        if b.iter().any(|c| c.is_ascii_uppercase()) {
            return Err(err(
                s,
                "upper-case letters are not allowed (handles are lower case)",
            ));
        }
        if !b.is_ascii() {
            return Err(err(s, "only ASCII a-z, 0-9, '_' and '-' are allowed"));
        }
        let sep = |c: u8| c == b'_' || c == b'-';
        if !b
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || sep(c))
        {
            return Err(err(s, "only a-z, 0-9, '_' and '-' are allowed"));
        }
        if sep(b[0]) || sep(b[b.len() - 1]) {
            return Err(err(s, "name must start and end with a letter or digit"));
        }
        if b.windows(2).any(|w| sep(w[0]) && sep(w[1])) {
            return Err(err(s, "separators '_' and '-' may not follow each other"));
        }
        Ok(LocalName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// HANDLE-6: reserved names cannot be registered.
    pub fn is_reserved(&self) -> bool {
        RESERVED_NAMES.contains(&self.0.as_str())
    }
}

/// A global handle, `@name@host`: the only form that appears inside signed objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle {
    name: LocalName,
    host: RelayHost,
    text: String,
}

impl Handle {
    /// Parses the global form `@name@host[:port]` (HANDLE-1).
    pub fn parse(s: &str) -> Result<Handle, HandleError> {
        let rest = s
            .strip_prefix('@')
            .ok_or_else(|| err(s, "a handle starts with '@'"))?;
        let (name, host) = rest
            .split_once('@')
            .ok_or_else(|| err(s, "global form is @name@host"))?;
        let name = LocalName::parse(name).map_err(|e| err(s, e.reason))?;
        let host = RelayHost::parse(host).map_err(|e| err(s, e.reason))?;
        Ok(Handle::new(name, host))
    }

    /// Parses either `@name` (completed with `home`) or the global form.
    pub fn parse_with_home(s: &str, home: &RelayHost) -> Result<Handle, HandleError> {
        let rest = s
            .strip_prefix('@')
            .ok_or_else(|| err(s, "a handle starts with '@'"))?;
        if rest.contains('@') {
            Handle::parse(s)
        } else {
            let name = LocalName::parse(rest).map_err(|e| err(s, e.reason))?;
            Ok(Handle::new(name, home.clone()))
        }
    }

    pub fn new(name: LocalName, host: RelayHost) -> Handle {
        let text = format!("@{}@{}", name.as_str(), host.as_str());
        Handle { name, host, text }
    }

    /// The relay address `@relay@host` of a relay.
    pub fn relay(host: &RelayHost) -> Handle {
        Handle::new(LocalName(RELAY_NAME.to_owned()), host.clone())
    }

    pub fn name(&self) -> &LocalName {
        &self.name
    }
    pub fn host(&self) -> &RelayHost {
        &self.host
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }
    /// The local form `@name`.
    pub fn local(&self) -> String {
        format!("@{}", self.name.as_str())
    }
    /// True for `@relay@host`, the relay's own address.
    pub fn is_relay(&self) -> bool {
        self.name.as_str() == RELAY_NAME
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
