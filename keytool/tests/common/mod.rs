//! Shared by keytool's end-to-end tests: the real `keytool` binary against real relay
//! processes on loopback (ports chosen by the kernel), killed when dropped.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use formica_protocol::json::{self, JsonLimits};
use formica_protocol::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The relay binary sits next to keytool's in the target directory (`cargo test --workspace`
/// builds it for the relay's own process tests).
pub fn relay_bin() -> PathBuf {
    let kt = PathBuf::from(env!("CARGO_BIN_EXE_keytool"));
    let p = kt.with_file_name("relay");
    assert!(
        p.exists(),
        "{} not found: build it with `cargo build -p relay` (cargo test --workspace does)",
        p.display()
    );
    p
}

pub struct Relay {
    pub child: Child,
    pub url: String,
    /// The relay's data directory.
    pub data: PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_relay(dir: &Path) -> Relay {
    start_relay_named(dir, "relay-data", None)
}

/// A relay on `dir/name`, with the configuration file `config` if given.
pub fn start_relay_named(dir: &Path, name: &str, config: Option<&Path>) -> Relay {
    let data = dir.join(name);
    let mut cmd = Command::new(relay_bin());
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--pow-difficulty",
        "8",
        "--data-dir",
    ])
    .arg(&data);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd
        .env("FORMICA_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let url = url_of(&first_line(&mut child)).expect("relay prints its URL");
    Relay { child, url, data }
}

/// The first line a relay prints on its (piped) standard output: its start line.
pub fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

/// The URL in a relay's start line.
pub fn url_of(line: &str) -> Option<String> {
    line.split_whitespace()
        .find(|w| w.starts_with("http://"))
        .map(str::to_owned)
}

pub struct Kt<'a> {
    pub home: PathBuf,
    pub relay: &'a Relay,
}

impl Kt<'_> {
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_keytool"))
            .arg("--home")
            .arg(&self.home)
            .args(["--relay", &self.relay.url])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs with --json and returns every line parsed; asserts exit 0.
    pub fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "keytool {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&out.stdout)
    }
}

pub fn lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            json::parse(
                l.as_bytes(),
                JsonLimits {
                    bytes_max: 1 << 20,
                    depth_max: 64,
                },
            )
            .unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))
        })
        .collect()
}

pub fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for k in path {
        cur = cur
            .as_object()
            .and_then(|o| o.get(k))
            .unwrap_or_else(|| panic!("no {k} in {v:?}"));
    }
    cur
}

pub fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string in {v:?}"))
}

/// The delivery status of `id` for its single recipient.
pub fn status_of(kt: &Kt<'_>, id: &str) -> String {
    let out = kt.json(&["status", id]);
    let recipients = get(&out[0], &["recipients"]).as_array().unwrap();
    s(&recipients[0], &["status"]).to_owned()
}
