//! Relay processes that federate, on loopback ports chosen at run time, for the tests that need
//! several relays (`federation.rs`, `federated_search.rs`): a temporary root removed when the test
//! ends, a configuration with federation on, and nodes that keep their host across restarts.
#![allow(dead_code)]

use crate::process::*;
use std::path::{Path, PathBuf};

/// A test's directory under the system temp dir, removed when the test ends, passed or failed
/// (declared first in a test, it is dropped after the relays, which are killed on drop).
pub struct TempRoot(pub PathBuf);

impl std::ops::Deref for TempRoot {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tempdir(name: &str) -> TempRoot {
    let d = std::env::temp_dir().join(format!(
        "formica-fed-{name}-{}-{}",
        std::process::id(),
        now_ms()
    ));
    std::fs::create_dir_all(&d).unwrap();
    TempRoot(d)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn fed_config(dir: &Path, dead_letter_ms: i64, extra_federation: &str) -> PathBuf {
    let base = write_config(dir);
    let mut text = std::fs::read_to_string(&base).unwrap();
    text = text.replace("[limits]\n", "[limits]\ndeadline_check_ms = 100\n");
    text.push_str(&format!(
        r#"
[federation]
enabled = true
scheme = "http"
peering = "open"
allow_private_peers = true
dead_letter_ms = {dead_letter_ms}
retry_base_ms = 50
retry_max_ms = 400
breaker_failures = 4
breaker_cooldown_ms = 400
request_timeout_ms = 2000
{extra_federation}"#
    ));
    std::fs::write(&base, text).unwrap();
    base
}

/// A relay on a fixed loopback port, so that it keeps its host across restarts.
pub struct Node {
    pub proc_: RelayProc,
    pub port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl Node {
    pub fn start(root: &Path, name: &str, dead_letter_ms: i64) -> Node {
        Node::start_with(root, name, dead_letter_ms, "")
    }
    /// Like `start`, with extra lines in the `[federation]` table.
    pub fn start_with(
        root: &Path,
        name: &str,
        dead_letter_ms: i64,
        extra_federation: &str,
    ) -> Node {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = fed_config(&dir, dead_letter_ms, extra_federation);
        let port = free_port();
        let proc_ = RelayProc::start_on(
            &dir.join("data"),
            &config,
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{port}"),
        );
        Node {
            proc_,
            port,
            dir,
            config,
        }
    }
    pub fn restart(&mut self) {
        let hp = format!("127.0.0.1:{}", self.port);
        self.proc_ = RelayProc::start_on(&self.dir.join("data"), &self.config, &hp, &hp);
    }
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// `relay peer ...` against this relay (the operator's command).
    pub fn peer_cmd(&self, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
            .arg("peer")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
    pub fn peer_with(&self, other: &Node) {
        let (ok, out) = self.peer_cmd(&["add", &format!("http://{}", other.host())]);
        assert!(ok, "peer add: {out}");
        assert!(out.contains("\"active\""), "{out}");
    }
}
