//! The `relay` binary: command-line parsing, logging and signal handling around the
//! `formica_relay` library.

use clap::{Args, Parser, Subcommand};
use formica_relay::config::{LogFormat, Overrides, RelayConfig};
use formica_relay::{api, server, writer, Relay};
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
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("relay: cannot listen on {}: {e}", cfg.listen);
                return ExitCode::FAILURE;
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
                return ExitCode::from(2);
            }
        };
        let relay = match Relay::open(&cfg, &host, writer::system_clock()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("relay: refusing to start: {e}");
                eprintln!(
                    "relay: run `relay check --data-dir {}` for details; nothing was changed",
                    cfg.data_dir.display()
                );
                return ExitCode::FAILURE;
            }
        };
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| cfg.listen.to_string());
        let events = relay.app.state.read().map(|s| s.events).unwrap_or(0);
        tracing::info!(listen = %addr, host = %host, events, "relay ready");
        println!(
            "formica relay listening on http://{addr} as {host} (data in {})",
            cfg.data_dir.display()
        );
        tokio::spawn(formica_relay::run_deadlines(relay.app.clone()));
        let router = api::router(relay.app.clone());
        server::serve(relay.app.clone(), router, listener, shutdown_signal()).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
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

fn check(cfg: &RelayConfig) -> ExitCode {
    let path = cfg.data_dir.join(formica_relay::LOG_FILE);
    if !path.exists() {
        eprintln!("relay check: no store at {}", path.display());
        return ExitCode::FAILURE;
    }
    let store = match formica_relay::store::RedbStore::open(&path) {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => {
            eprintln!("relay check: DAMAGED: {e}");
            return ExitCode::FAILURE;
        }
    };
    let host = match formica_relay::resolve_host(&cfg.data_dir, cfg.public_host.as_ref(), None) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("relay check: {e}");
            return ExitCode::from(2);
        }
    };
    match writer::replay(store, &host) {
        Ok((log, st)) => {
            println!(
                "relay check: ok: {} records, chain head {}, {} agents, {} messages",
                log.len(),
                formica_protocol::hex::encode(&log.head()),
                st.agents.len(),
                st.messages.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relay check: DAMAGED: {e}");
            ExitCode::FAILURE
        }
    }
}
