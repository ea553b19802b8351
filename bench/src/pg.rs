//! A throw-away PostgreSQL cluster for the `nodes` item: `initdb` into the bench's work
//! directory (as the `postgres` user when the bench runs as root, since PostgreSQL refuses
//! root), a free loopback port, a socket directory of its own, `fsync` and `synchronous_commit`
//! on (the relay refuses a server that may lose an answered commit), started with
//! `pg_ctl -w start`. Stopped (`-m immediate`) and removed when dropped, so also on an error.
//!
//! PostgreSQL is started on every core (`taskset -c <all>`): the bench pins itself to the load
//! generator's cores before it starts anything, and a child would inherit that.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where PostgreSQL's programs are: `FORMICA_PG_BIN`, or Debian's PostgreSQL 15.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("FORMICA_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A running cluster; stopped and removed on drop.
#[derive(Debug)]
pub struct Cluster {
    /// The cluster's directory: `data/`, the server log `log`, and its Unix socket.
    pub dir: PathBuf,
    pub port: u16,
    /// `taskset -c` list PostgreSQL is started on (none: whatever this process may use).
    cpus: Option<String>,
    as_postgres: bool,
}

impl Cluster {
    /// `initdb` into `dir` (created; it must not exist yet) and start the server.
    pub fn start(dir: &Path, cpus: Option<String>) -> Result<Cluster> {
        if dir.exists() {
            bail!("{} exists already", dir.display());
        }
        std::fs::create_dir_all(dir)?;
        let as_postgres = is_root();
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status()
                .context("chown")?
                .success();
            if !ok {
                bail!("chown postgres of {} failed", dir.display());
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // From here on, dropping `c` stops and removes whatever was made.
        let c = Cluster {
            dir: dir.to_owned(),
            port,
            cpus,
            as_postgres,
        };
        let data = c.data();
        c.checked(
            "initdb",
            &[
                "-D",
                &data,
                "--auth=trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} \
             -c fsync=on -c synchronous_commit=on -c max_connections=200",
            c.dir.display()
        );
        let log = c.dir.join("log").display().to_string();
        c.checked(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "60", "start",
            ],
        )?;
        Ok(c)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Runs one of PostgreSQL's programs (as `postgres` when we are root, on `cpus`).
    fn program(&self, prog: &str, args: &[&str]) -> Result<Output> {
        let path = bin_dir().join(prog);
        let mut argv: Vec<String> = Vec::new();
        if let Some(c) = &self.cpus {
            argv.extend(["taskset".into(), "-c".into(), c.clone()]);
        }
        if self.as_postgres {
            argv.extend([
                "runuser".into(),
                "-u".into(),
                "postgres".into(),
                "--".into(),
            ]);
        }
        argv.push(path.display().to_string());
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(&self.dir)
            .output()
            .with_context(|| {
                format!(
                    "cannot run {} (PostgreSQL 15 installed? FORMICA_PG_BIN?)",
                    path.display()
                )
            })
    }

    fn checked(&self, prog: &str, args: &[&str]) -> Result<Output> {
        let out = self.program(prog, args)?;
        if !out.status.success() {
            bail!(
                "{prog} {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// Runs one SQL statement on database `postgres` with `psql`.
    pub fn sql(&self, statement: &str) -> Result<String> {
        let port = self.port.to_string();
        let out = self.checked(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                statement,
            ],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A new, empty database `name` (a bare identifier), and its connection URL.
    pub fn create_database(&self, name: &str) -> Result<String> {
        self.sql(&format!("CREATE DATABASE {name}"))?;
        Ok(format!(
            "postgres://postgres@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        ))
    }

    pub fn drop_database(&self, name: &str) -> Result<()> {
        self.sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .map(drop)
    }

    /// The server's pid (the postmaster's, first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("data").join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Settings that matter for the figures, as the server reports them.
    pub fn settings(&self) -> Result<String> {
        self.sql(
            "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings \
             WHERE name IN ('fsync','synchronous_commit','wal_sync_method','shared_buffers', \
             'server_version','full_page_writes','commit_delay')",
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.program("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU time (seconds) of the cluster: the postmaster and its live children, plus the children
/// it has already reaped (a backend's time moves to the postmaster's `cutime` when it exits).
pub fn cluster_cpu_seconds(postmaster: u32, ticks_per_s: f64) -> f64 {
    let mut ticks = 0u64;
    if let Some(s) = read_stat(postmaster) {
        ticks += s.utime + s.stime + s.cutime + s.cstime;
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(s) = read_stat(pid) {
                if s.ppid == postmaster {
                    ticks += s.utime + s.stime;
                }
            }
        }
    }
    ticks as f64 / ticks_per_s
}

/// Clock ticks per second of `/proc/*/stat` (`getconf CLK_TCK`, 100 when that fails).
pub fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The fields of `/proc/<pid>/stat` the meter uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    pub utime: u64,
    pub stime: u64,
    pub cutime: u64,
    pub cstime: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses a `/proc/<pid>/stat` line; the command name may hold spaces and parentheses, so the
/// fields are counted from its last `)`.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17.
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        ppid: u32::try_from(n(1)?).ok()?,
        utime: n(11)?,
        stime: n(12)?,
        cutime: n(13)?,
        cstime: n(14)?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_stat_with_odd_names() {
        let line = "4242 (postgres: x) y) S 4000 4242 4242 0 -1 4194560 100 0 0 0 17 5 3 2 20 0 1 0 123 0 0";
        let s = super::parse_stat(line);
        assert_eq!(
            s,
            Some(super::Stat {
                ppid: 4000,
                utime: 17,
                stime: 5,
                cutime: 3,
                cstime: 2
            })
        );
        assert_eq!(super::parse_stat("garbage"), None);
    }
}
