//! Relay processes: a configuration that lifts rate limits (so the benchmark measures
//! throughput, not policy), start on 127.0.0.1 with an OS-chosen port, pinned with `taskset`,
//! and stop with SIGTERM (or, to time a start after a crash, kill with SIGKILL).

use anyhow::{bail, Context, Result};
use formica_protocol::RelayHost;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The host name in every benchmark handle (`@a00001@relay.bench`).
pub const PUBLIC_HOST: &str = "relay.bench";
/// Proof-of-work bits for registrations during set-up: the PoW figure is measured in-process
/// (item 7); here it only has to be cheap.
pub const SETUP_POW_DIFFICULTY: u32 = 8;
/// What relays log (`FORMICA_LOG`) unless an item asks for more.
const LOG_FILTER: &str = "warn";
/// Longest a relay may take to print its address (a 1,000,000-entry log included).
const START_TIMEOUT: Duration = Duration::from_secs(600);

pub fn host() -> RelayHost {
    // A constant that parses; checked by `config_parses` below.
    RelayHost::parse(PUBLIC_HOST).unwrap_or_else(|e| panic!("{PUBLIC_HOST}: {e:?}"))
}

/// The benchmark's relay configuration: one tier with limits far above anything the benchmark
/// sends (rate, recipients, inbox depth, connections in all and per address, since every
/// benchmark connection comes from 127.0.0.1, unauthenticated requests per IP), and a
/// one-hour freshness window so that envelopes signed before a run are still fresh when sent.
pub fn config_text() -> String {
    format!(
        r#"pow_difficulty = {SETUP_POW_DIFFICULTY}
[limits]
{}[time]
window_ms = 3600000
skew_ms = 30000
{}"#,
        LIMITS_TEXT,
        tier_text()
    )
}

/// The `[limits]` lines every benchmark relay has (see [`config_text`]), without the header.
pub const LIMITS_TEXT: &str = "inbox_pending_max = 100000000
ip_requests_per_min = 100000000
connections_max = 30000
connections_per_ip_max = 30000
";

/// The benchmark's one tier (see [`config_text`]): limits far above anything it sends.
pub fn tier_text() -> &'static str {
    r#"[[tiers]]
name = "bench"
min_age_ms = 0
min_acked = 0
min_vouches = 0
rate_per_min = 100000000
payload_bytes_max = 32768
recipients_max = 16
contact_requests_per_hour = 100000
vouches_max = 10
reports_per_day = 100
searches_per_min = 100000000
may_send = ["message", "task_request", "task_result", "ack", "contact_request", "vouch", "report", "x-*"]
"#
}

/// How to start relays.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub relay_bin: PathBuf,
    /// `taskset -c` CPU list for relays, or none (not pinned).
    pub relay_cpus: Option<String>,
    pub work_dir: PathBuf,
}

/// A running relay.
#[derive(Debug)]
pub struct RelayProc {
    child: Option<Child>,
    pub pid: u32,
    pub addr: String,
    pub dir: PathBuf,
    /// From spawn to the "listening" line on stdout.
    pub start_to_listening: Duration,
    pub spawned_at: Instant,
    /// The CPUs it is pinned to (empty: not pinned).
    pub cpus: Vec<usize>,
}

impl Launcher {
    /// Starts `relay serve` on a data directory (created if missing) and waits for its address.
    pub fn start(&self, name: &str, relaxed_fsync: bool) -> Result<RelayProc> {
        let dir = self.work_dir.join(name);
        self.start_in(&dir, relaxed_fsync)
    }

    pub fn start_in(&self, dir: &Path, relaxed_fsync: bool) -> Result<RelayProc> {
        self.spawn(
            dir,
            relaxed_fsync,
            "127.0.0.1:0",
            PUBLIC_HOST,
            &config_text(),
            LOG_FILTER,
        )
    }

    /// Starts a relay (durable fsync) on `work_dir/name` with a configuration of the caller's
    /// own (not [`config_text`]) and its own `FORMICA_LOG` filter (its stderr goes to
    /// `relay.stderr.log` in that directory).
    pub fn start_with_config(
        &self,
        name: &str,
        config: &str,
        log_filter: &str,
    ) -> Result<RelayProc> {
        self.spawn(
            &self.work_dir.join(name),
            false,
            "127.0.0.1:0",
            PUBLIC_HOST,
            config,
            log_filter,
        )
    }

    /// Starts a relay that federates: it listens on `127.0.0.1:<port>` and that is also its
    /// public host (peers reach each other by their host), with open peering over plain HTTP on
    /// loopback. Returns the relay and its host.
    pub fn start_federated(&self, name: &str) -> Result<(RelayProc, RelayHost)> {
        self.start_federated_with(name, &config_text(), false)
    }

    /// [`Launcher::start_federated`] with a configuration of the caller's own (the federation
    /// section is appended to it), and relaxed fsync if asked.
    pub fn start_federated_with(
        &self,
        name: &str,
        config: &str,
        relaxed_fsync: bool,
    ) -> Result<(RelayProc, RelayHost)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let hp = format!("127.0.0.1:{port}");
        let host = RelayHost::parse(&hp).map_err(|e| anyhow::anyhow!("{hp}: {e:?}"))?;
        let fed = "\n[federation]\nenabled = true\nscheme = \"http\"\npeering = \"open\"\nallow_private_peers = true\n";
        let config = config.to_owned() + fed;
        let relay = self.spawn(
            &self.work_dir.join(name),
            relaxed_fsync,
            &hp,
            &hp,
            &config,
            LOG_FILTER,
        )?;
        Ok((relay, host))
    }

    /// `relay peer add` on `from`'s data directory: the handshake with `to` (open peering makes
    /// both sides active at once).
    pub fn peer(&self, from: &RelayProc, to: &RelayHost) -> Result<()> {
        let out = Command::new(&self.relay_bin)
            .arg("peer")
            .arg("--data-dir")
            .arg(from.dir.join("data"))
            .args(["add", &format!("http://{to}")])
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() || !text.contains("\"active\"") {
            bail!("relay peer add http://{to}: {text}");
        }
        Ok(())
    }

    fn spawn(
        &self,
        dir: &Path,
        relaxed_fsync: bool,
        listen: &str,
        public_host: &str,
        config_text: &str,
        log_filter: &str,
    ) -> Result<RelayProc> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("bench-relay.toml");
        std::fs::write(&config, config_text)?;
        let stderr = std::fs::File::create(dir.join("relay.stderr.log"))?;
        let mut cmd = match &self.relay_cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(&self.relay_bin);
                c
            }
            None => Command::new(&self.relay_bin),
        };
        cmd.args([
            "serve",
            "--listen",
            listen,
            "--public-host",
            public_host,
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&config)
        .env("FORMICA_LOG", log_filter)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
        if relaxed_fsync {
            cmd.arg("--unsafe-relaxed-fsync-benchmark-only");
        }
        let spawned_at = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.relay_bin.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().context("relay stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(dir.join("relay.stderr.log")).unwrap_or_default();
                bail!("relay in {} did not print its address within {START_TIMEOUT:?}; stderr:\n{log}", dir.display());
            }
        };
        let start_to_listening = spawned_at.elapsed();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .with_context(|| format!("no address in the relay's first line {line:?}"))?
            .to_owned();
        let cpus = match &self.relay_cpus {
            Some(c) => crate::sys::cpu_list(c)?,
            None => Vec::new(),
        };
        Ok(RelayProc {
            child: Some(child),
            pid,
            addr,
            dir: dir.to_owned(),
            start_to_listening,
            spawned_at,
            cpus,
        })
    }
}

impl RelayProc {
    /// SIGTERM (the relay drains and exits 0), then wait at most 30 s, then SIGKILL.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("relay {} did not exit within 30 s of SIGTERM", self.pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (`kill -9`: no drain, the store is not closed), and wait for the process to be
    /// gone, which also releases the data directory's lock. Under `taskset` the process is the
    /// relay itself (taskset execs it).
    pub fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        child
            .kill()
            .with_context(|| format!("SIGKILL to relay {}", self.pid))?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_parses() {
        let dir = std::env::temp_dir().join(format!("formica-bench-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let p = dir.join("c.toml");
        std::fs::write(&p, super::config_text()).unwrap_or_default();
        let c = formica_relay::config::RelayConfig::load(Some(&p), Default::default());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(c.is_ok(), "{c:?}");
        let _ = super::host();
    }
}
