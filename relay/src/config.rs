//! Relay configuration: built-in defaults, then a TOML file (`--config`), then environment
//! variables, then flags; each later source overrides the earlier ones.

use crate::engine::policy::{FederationPolicy, Limits, Policy, RetentionPolicy, Tier, TrustPolicy};
use formica_protocol::time::TimeWindow;
use formica_protocol::RelayHost;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub const LISTEN_DEFAULT: &str = "127.0.0.1:7070";
pub const DATA_DIR_DEFAULT: &str = "formica-data";

/// The configuration file, every member optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub public_host: Option<String>,
    pub pow_difficulty: Option<u32>,
    pub log_format: Option<String>,
    pub trusted_proxies: Option<Vec<IpAddr>>,
    pub limits: Option<Limits>,
    pub time: Option<TimeFile>,
    pub tiers: Option<Vec<Tier>>,
    pub trust: Option<TrustPolicy>,
    pub federation: Option<FederationPolicy>,
    pub retention: Option<RetentionPolicy>,
    pub directory: Option<crate::engine::directory::DirectoryPolicy>,
    pub presence: Option<crate::engine::presence::PresencePolicy>,
    pub conversations: Option<crate::engine::conversations::ConversationPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeFile {
    pub window_ms: i64,
    pub skew_ms: i64,
}

/// Values from flags or the environment (clap fills both, flags first).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub public_host: Option<String>,
    pub pow_difficulty: Option<u32>,
    pub log_format: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The host name agents use in handles (`@kevin@<public_host>`); when not configured, the
    /// one recorded in the data directory, else the address the relay is bound to.
    pub public_host: Option<RelayHost>,
    pub log_format: LogFormat,
    pub trusted_proxies: Vec<IpAddr>,
    pub policy: Policy,
    /// Benchmarks only: commit without waiting for fsync. Breaks "2xx means on disk".
    pub unsafe_relaxed_fsync_benchmark_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl RelayConfig {
    pub fn load(file: Option<&Path>, o: Overrides) -> Result<RelayConfig, String> {
        let fc: FileConfig = match file {
            None => FileConfig::default(),
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
            }
        };
        let listen = match o.listen.or(fc.listen) {
            Some(l) => l,
            None => LISTEN_DEFAULT.parse().map_err(|e| format!("{e}"))?,
        };
        let data_dir = o
            .data_dir
            .or(fc.data_dir)
            .unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT));
        let public_host = match o.public_host.or(fc.public_host) {
            None => None,
            Some(h) => Some(RelayHost::parse(&h).map_err(|e| {
                format!("public host {h:?} is not a valid relay host ({})", e.reason)
            })?),
        };
        let log_format = match o.log_format.or(fc.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(format!("log format {other:?}: expected text or json")),
        };
        let mut policy = Policy::default();
        if let Some(d) = o.pow_difficulty.or(fc.pow_difficulty) {
            policy.pow_difficulty = d;
        }
        if let Some(l) = fc.limits {
            policy.limits = l;
        }
        if let Some(t) = fc.time {
            if t.window_ms <= 0 || t.skew_ms < 0 {
                return Err("time.window_ms must be positive and time.skew_ms not negative".into());
            }
            policy.time = TimeWindow {
                window_ms: t.window_ms,
                skew_ms: t.skew_ms,
            };
        }
        if let Some(t) = fc.tiers {
            policy.tiers = t;
        }
        if let Some(t) = fc.trust {
            policy.trust = t;
        }
        if let Some(f) = fc.federation {
            policy.federation = f;
        }
        if let Some(r) = fc.retention {
            policy.retention = r;
        }
        if let Some(d) = fc.directory {
            policy.directory = d;
        }
        if let Some(c) = fc.conversations {
            policy.conversations = c;
        }
        if let Some(p) = fc.presence {
            policy.presence = p;
        }
        policy.validate()?;
        Ok(RelayConfig {
            listen,
            data_dir,
            public_host,
            log_format,
            trusted_proxies: fc.trusted_proxies.unwrap_or_default(),
            policy,
            unsafe_relaxed_fsync_benchmark_only: false,
        })
    }
}
