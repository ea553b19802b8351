//! The `relay` binary: command-line parsing, logging and signal handling around the
//! `formica_relay` library.

use clap::{Args, Parser, Subcommand};
use formica_relay::config::{LogFormat, Overrides, RelayConfig};
use formica_relay::engine::{replay, system_clock};
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
        /// BENCHMARKS ONLY: do not wait for fsync before answering. A 2xx then no longer means
        /// the data is on disk. Used to measure the price of durability.
        #[arg(long, hide = true)]
        unsafe_relaxed_fsync_benchmark_only: bool,
    },
    /// Check the store: every record's chain hash and event, then the projections. Exits 0 if
    /// the store is sound, 1 with the damaged record's number if not.
    Check {
        #[command(flatten)]
        common: Common,
    },
    /// Manage federation peers of the relay running on this data directory (talks to it over
    /// loopback with the admin token in <data-dir>/admin.token).
    Peer {
        /// Directory of the running relay [default: ./formica-data].
        #[arg(long, env = "FORMICA_DATA_DIR")]
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
            unsafe_relaxed_fsync_benchmark_only,
        } => {
            let o = Overrides {
                listen,
                data_dir: common.data_dir,
                public_host: common.public_host,
                pow_difficulty,
                log_format,
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
        Cmd::Check { common } => {
            let o = Overrides {
                data_dir: common.data_dir,
                public_host: common.public_host,
                ..Overrides::default()
            };
            match RelayConfig::load(common.config.as_deref(), o) {
                Ok(cfg) => check(&cfg),
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
                if matches!(e, formica_relay::OpenError::Store(_)) {
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
        println!(
            "formica relay listening on http://{addr} as {host} (data in {})",
            cfg.data_dir.display()
        );
        let admin_addr = cfg.data_dir.join(formica_relay::ADMIN_ADDR_FILE);
        if let Err(e) = std::fs::write(&admin_addr, format!("{addr}\n")) {
            tracing::warn!(error = %e, "cannot write {}", admin_addr.display());
        }
        relay.spawn_background();
        let router = router(relay.app.clone());
        server::serve(relay.app.clone(), router, listener, shutdown_signal()).await;
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

/// `relay peer ...`: one HTTP/1.1 request to the admin endpoint of the running relay, on the
/// loopback address it recorded in the data directory.
fn peer_cmd(dir: &std::path::Path, op: PeerOp) -> ExitCode {
    use std::io::{Read, Write};
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map(|s| s.trim().to_owned())
            .map_err(|e| {
                format!(
                    "{}: {e} (is the relay running on this data directory?)",
                    dir.join(name).display()
                )
            })
    };
    let run = || -> Result<(u16, String), String> {
        let token = read(formica_relay::ADMIN_TOKEN_FILE)?;
        let addr: SocketAddr = read(formica_relay::ADMIN_ADDR_FILE)?
            .parse()
            .map_err(|e| format!("admin address: {e}"))?;
        let addr = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port());
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
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
            .map_err(|e| format!("{addr}: {e}"))?;
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(60)));
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())
            .and_then(|_| s.write_all(&body))
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    match run() {
        Ok((200..=299, body)) => {
            println!("{}", body.trim());
            ExitCode::SUCCESS
        }
        Ok((_, body)) => {
            eprintln!("relay peer: {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("relay peer: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `relay check`: reads the store without changing it (a read-only view: the file is left byte
/// for byte as it was, also when it is damaged or was not closed cleanly), checks every record's
/// chain hash and event, and says what it found. Exit 0 sound, 1 damaged or unreadable, 2 usage.
fn check(cfg: &RelayConfig) -> ExitCode {
    use formica_relay::store::StoreError;
    let path = cfg.data_dir.join(formica_relay::LOG_FILE);
    if !path.exists() {
        eprintln!("relay check: no store at {}", path.display());
        return ExitCode::FAILURE;
    }
    let host = match formica_relay::recorded_host(&cfg.data_dir) {
        Ok(Some(h)) => h,
        Ok(None) => match &cfg.public_host {
            Some(h) => h.clone(),
            None => {
                eprintln!(
                    "relay check: {} records no host; pass --public-host",
                    cfg.data_dir.display()
                );
                return ExitCode::from(2);
            }
        },
        Err(e) => {
            eprintln!("relay check: {e}");
            return ExitCode::from(2);
        }
    };
    let report = |e: StoreError| {
        match &e {
            StoreError::Corrupt { .. } => eprintln!("relay check: DAMAGED: {e}"),
            _ => eprintln!("relay check: cannot check the store: {e}"),
        }
        eprintln!("relay check: {} was not changed", path.display());
        ExitCode::FAILURE
    };
    let view = match formica_relay::store::RedbStore::open_read_only(&path) {
        Ok(s) => s,
        Err(e) => return report(e),
    };
    let recovered = view.recovered();
    match replay::replay(std::sync::Arc::new(view), &host) {
        Ok((log, st)) => {
            println!(
                "relay check: ok: {} records, chain head {}, {} agents, {} messages",
                log.len(),
                formica_protocol::hex::encode(&log.head()),
                st.agents.len(),
                st.messages.len()
            );
            if recovered {
                println!(
                    "relay check: the store was not closed cleanly (a crash or a kill) and was recovered in memory to check it; it is sound, and `relay serve` recovers it on disk"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => report(e),
    }
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
