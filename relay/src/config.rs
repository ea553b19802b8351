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
    pub store: Option<StoreFile>,
}

/// `[store]`: where the log and the tables live.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// `redb` (the embedded file in the data directory, the default) or `postgres`.
    pub kind: Option<String>,
    /// PostgreSQL only: the connection URL (`postgres://user@host:port/db?sslmode=require`).
    pub url: Option<String>,
    /// PostgreSQL only: connections for reads and claims [default: 4].
    pub pool: Option<usize>,
    /// PostgreSQL only: serve although `synchronous_commit` or `fsync` allow answered commits
    /// to be lost (warned at start instead of refused) [default: false].
    pub allow_weak_durability: Option<bool>,
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
    pub store_kind: Option<String>,
    pub store_url: Option<String>,
}

/// Where the relay keeps its log and tables.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreConfig {
    /// `log.redb` in the data directory: one relay process.
    #[default]
    Redb,
    /// A PostgreSQL database that several relay processes (nodes) may share; each node still
    /// has its own data directory (relay key, host, admin token, lock).
    Postgres(crate::store::PgConfig),
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
    /// `[store]`, `--store-kind`, `--store-url`.
    pub store: StoreConfig,
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
        let store = store_config(fc.store.unwrap_or_default(), o.store_kind, o.store_url)?;
        Ok(RelayConfig {
            listen,
            data_dir,
            public_host,
            log_format,
            trusted_proxies: fc.trusted_proxies.unwrap_or_default(),
            policy,
            unsafe_relaxed_fsync_benchmark_only: false,
            store,
        })
    }
}

/// `[store]` with the flags' (or environment's) kind and URL over the file's. The PostgreSQL
/// settings are refused with a redb store, and a PostgreSQL store without a URL, naming the
/// setting: a half-configured store is a mistake, not a default.
fn store_config(
    f: StoreFile,
    kind: Option<String>,
    url: Option<String>,
) -> Result<StoreConfig, String> {
    let url = url.or(f.url);
    match kind.or(f.kind).as_deref() {
        None | Some("redb") => {
            let set: Vec<&str> = [
                ("store.url", url.is_some()),
                ("store.pool", f.pool.is_some()),
                (
                    "store.allow_weak_durability",
                    f.allow_weak_durability.is_some(),
                ),
            ]
            .iter()
            .filter(|(_, s)| *s)
            .map(|(n, _)| *n)
            .collect();
            if !set.is_empty() {
                return Err(format!(
                    "{} set but store.kind is redb: set store.kind = \"postgres\" (or remove them)",
                    set.join(", ")
                ));
            }
            Ok(StoreConfig::Redb)
        }
        Some("postgres") => {
            let url = url.filter(|u| !u.trim().is_empty()).ok_or(
                "store.kind is postgres but store.url is not set (--store-url, FORMICA_STORE_URL)",
            )?;
            let pool = f.pool.unwrap_or(crate::store::PgConfig::POOL_DEFAULT);
            if pool == 0 {
                return Err("store.pool must be at least 1".into());
            }
            Ok(StoreConfig::Postgres(crate::store::PgConfig {
                url,
                pool,
                allow_weak_durability: f.allow_weak_durability.unwrap_or(false),
            }))
        }
        Some(other) => Err(format!("store.kind {other:?}: expected redb or postgres")),
    }
}
