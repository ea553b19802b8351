//! The `relay` binary: command-line parsing, logging and signal handling around the
//! `formica_relay` library.

use clap::{Args, Parser, Subcommand};
use formica_relay::config::{LogFormat, Overrides, RelayConfig};
use formica_relay::engine::system_clock;
use formica_relay::http::{router, server};
use formica_relay::Relay;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Formica relay: registers agents, keeps their key logs, stores and delivers signed envelopes.
///
/// Every setting comes from built-in defaults, then the TOML file given with --config, then
/// environment variables, then flags (later sources win).
#[derive(Debug, Parser)]
#[command(name = "relay", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Args)]
struct Common {
    /// TOML configuration file (see README for its keys).
    #[arg(long, env = "FORMICA_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the event log and the relay key [default: ./formica-data].
    #[arg(long, env = "FORMICA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Host name (and port) agents put in their handles [default: the listen address].
    #[arg(long, env = "FORMICA_PUBLIC_HOST")]
    public_host: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the relay and serve until SIGTERM or Ctrl-C (then drain and exit 0).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on [default: 127.0.0.1:7070].
        #[arg(long, env = "FORMICA_LISTEN")]
        listen: Option<SocketAddr>,
        /// Proof-of-work difficulty for registration, in bits [default: 20].
        #[arg(long, env = "FORMICA_POW_DIFFICULTY")]
        pow_difficulty: Option<u32>,
        /// Log format: text or json [default: text].
        #[arg(long, env = "FORMICA_LOG_FORMAT")]
        log_format: Option<String>,
        /// Where the log and tables live: redb (a file in the data directory) or postgres
        /// [default: redb].
        #[arg(long, env = "FORMICA_STORE_KIND")]
        store_kind: Option<String>,
        /// PostgreSQL connection URL (store kind postgres); the environment keeps a password
        /// out of the process list.
        #[arg(long, env = "FORMICA_STORE_URL", hide_env_values = true)]
        store_url: Option<String>,
        /// BENCHMARKS ONLY: do not wait for fsync before answering. A 2xx then no longer means
        /// the data is on disk. Used to measure the price of durability.
        #[arg(long, hide = true)]
        unsafe_relaxed_fsync_benchmark_only: bool,
    },
    /// Check the store: every record's chain hash and event, then the projection tables
    /// against the replay of the log, without changing it (asks the relay serving the
    /// directory if one does; it checks the log only). Exits 0 if the store is sound, 1 naming
    /// the damage if not, 3 if a relay serves the directory and did not answer.
    Check {
        #[command(flatten)]
        common: Common,
        /// Rebuild the projection tables from the log (after `relay check` named damage in
        /// them). The relay must be stopped.
        #[arg(long)]
        rebuild: bool,
    },
    /// Copy the data directory consistently into a new directory (every durable record, the
    /// relay key, the host), checked after it is written; works while the relay serves (it
    /// then makes the copy). `relay serve --data-dir DIR` serves the copy.
    Backup {
        /// The new (or empty) directory to copy into.
        #[arg(long)]
        to: PathBuf,
        /// Directory to copy [default: ./formica-data].
        #[arg(long, env = "FORMICA_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Manage federation peers of the relay running on this data directory (talks to it over
    /// loopback with the admin token in <data-dir>/admin.token).
    Peer {
        /// Directory of the running relay [default: ./formica-data]; before or after the
        /// peer command.
        #[arg(long, env = "FORMICA_DATA_DIR", global = true)]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        op: PeerOp,
    },
}

#[derive(Debug, Subcommand)]
enum PeerOp {
    /// Ask the relay at URL to peer (mutual signed handshake).
    Add { url: String },
    /// Approve a relay that asked to peer (manual policy).
    Approve { host: String },
    /// List peers with their status and queue length (JSON).
    List,
    /// Remove a peer.
    Remove { host: String },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FORMICA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal (and never with NO_COLOR set): a journal or a file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            common,
            listen,
            pow_difficulty,
            log_format,
            store_kind,
            store_url,
            unsafe_relaxed_fsync_benchmark_only,
        } => {
            let o = Overrides {
                listen,
                data_dir: common.data_dir,
                public_host: common.public_host,
                pow_difficulty,
                log_format,
                store_kind,
                store_url,
            };
            let cfg = match RelayConfig::load(common.config.as_deref(), o) {
                Ok(mut c) => {
                    c.unsafe_relaxed_fsync_benchmark_only = unsafe_relaxed_fsync_benchmark_only;
                    c
                }
                Err(e) => {
                    eprintln!("relay: configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(cfg.log_format);
            serve(cfg)
        }
        Cmd::Peer { data_dir, op } => peer_cmd(
            &data_dir.unwrap_or_else(|| PathBuf::from(formica_relay::config::DATA_DIR_DEFAULT)),
            op,
        ),
        Cmd::Backup { to, data_dir } => formica_relay::operator::backup(
            &data_dir.unwrap_or_else(|| PathBuf::from(formica_relay::config::DATA_DIR_DEFAULT)),
            &to,
        ),
        Cmd::Check { common, rebuild } => {
            let o = Overrides {
                data_dir: common.data_dir,
                public_host: common.public_host,
                ..Overrides::default()
            };
            match RelayConfig::load(common.config.as_deref(), o) {
                Ok(cfg) if cfg.store != formica_relay::config::StoreConfig::Redb => {
                    eprintln!(
                        "relay check: the store is PostgreSQL (store.kind = \"postgres\"); `relay \
                         check` reads only the redb store for now: use the database's own tools \
                         (pg_dump for a copy, amcheck for its indexes)"
                    );
                    ExitCode::from(2)
                }
                Ok(cfg) => {
                    formica_relay::operator::check(&cfg.data_dir, cfg.public_host.as_ref(), rebuild)
                }
                Err(e) => {
                    eprintln!("relay: configuration: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn serve(cfg: RelayConfig) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let data_dir = cfg.data_dir.clone();
    let served = rt.block_on(async move {
        let listener = match bind(cfg.listen) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("relay: cannot listen on {}: {e}", cfg.listen);
                return Err(ExitCode::FAILURE);
            }
        };
        let host = match formica_relay::resolve_host(
            &cfg.data_dir,
            cfg.public_host.as_ref(),
            listener.local_addr().ok(),
        ) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("relay: {e}");
                return Err(ExitCode::from(2));
            }
        };
        let relay = match Relay::open(&cfg, &host, system_clock()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("relay: refusing to start: {e}");
                if matches!(e, formica_relay::OpenError::Store(_))
                    && cfg.store == formica_relay::config::StoreConfig::Redb
                {
                    eprintln!(
                        "relay: the store was only read, not changed; `relay check --data-dir {}` names what is wrong",
                        cfg.data_dir.display()
                    );
                }
                return Err(ExitCode::FAILURE);
            }
        };
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| cfg.listen.to_string());
        let events = relay.engine().read().events;
        tracing::info!(listen = %addr, host = %host, events, "relay ready");
        // Written before the start line, so that `relay peer` and `relay check` work as soon
        // as it is printed.
        let admin_addr = cfg.data_dir.join(formica_relay::ADMIN_ADDR_FILE);
        let written = {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&admin_addr)
                .and_then(|mut f| f.write_all(format!("{addr}\n").as_bytes()))
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot write {}", admin_addr.display());
        }
        println!(
            "formica relay listening on http://{addr} as {host} (data in {})",
            cfg.data_dir.display()
        );
        // The host was taken from an earlier listen address and kept in the data directory:
        // handles embed it, so it does not follow a new --listen.
        if cfg.public_host.is_none()
            && host.as_str() != addr
            && host.as_str().parse::<SocketAddr>().is_ok()
        {
            let note = format!(
                "this data directory keeps host {host} (in {}, from its first start; handles are @name@{host}), not the listen address {addr}: pass --public-host {host}, or use a new --data-dir for a relay with another host (README: moving a relay)",
                cfg.data_dir.join(formica_relay::HOST_FILE).display()
            );
            tracing::warn!(kept = %host, listen = %addr, "{note}");
            println!("note: {note}");
        }
        relay.spawn_background();
        let router = router(relay.app.clone());
        server::serve(relay.app.clone(), router, listener, shutdown_signal()).await;
        // No longer served here: `relay peer`/`check` must not send the token to whatever
        // listens on this port next (the relay still holds the directory's lock).
        let _ = std::fs::remove_file(&admin_addr);
        Ok(relay)
    });
    let relay = match served {
        Ok(r) => r,
        Err(code) => return code,
    };
    // Whatever still runs on the runtime (streams, workers, the ticker) ends with it; then the
    // writer, once nothing holds the engine, and with it the store, closed cleanly.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    if relay.stop(std::time::Duration::from_secs(10)) {
        tracing::info!("stopped; the store is closed");
    } else {
        tracing::warn!(
            "stopped without closing the store cleanly; the next start recovers it ({})",
            data_dir.display()
        );
    }
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: draining"),
    }
}

/// `relay peer ...`: one request to the admin endpoint of the relay serving `dir`.
fn peer_cmd(dir: &std::path::Path, op: PeerOp) -> ExitCode {
    let (method, path, body) = match &op {
        PeerOp::Add { url } => {
            let mut o = formica_protocol::Object::new();
            o.insert("url", url.as_str().into());
            (
                "POST",
                "/admin/v1/peers".to_owned(),
                formica_protocol::canon::canonicalize(&formica_protocol::Value::Object(o)),
            )
        }
        PeerOp::Approve { host } => ("POST", format!("/admin/v1/peers/{host}/approve"), vec![]),
        PeerOp::List => ("GET", "/admin/v1/peers".to_owned(), vec![]),
        PeerOp::Remove { host } => ("DELETE", format!("/admin/v1/peers/{host}"), vec![]),
    };
    formica_relay::operator::peer(dir, method, &path, &body)
}

/// Pending connections the kernel may queue before the relay accepts them (capped by the
/// kernel's somaxconn): large enough that a burst of thousands of clients is queued, not dropped.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(LISTEN_BACKLOG)
}
