//! The README's command lines, run: every line of every ```sh block is either run against a
//! real relay started the README's way (and must succeed), or, when it names a host that
//! cannot be reached from a test (`*.example`, RFC 2606), run where it cannot reach anything
//! (no relay, a closed loopback port) and must fail for that reason, not as a usage error; or
//! it is one of the few lines that build or test this repository, which are checked to name
//! what exists. A line that fits none of these fails the test, so the docs and the command
//! lines cannot drift apart.
//!
//! Local differences from a user's terminal, all through documented settings: the relay
//! listens on a port chosen at run time (`FORMICA_LISTEN=127.0.0.1:0`), mines a small proof
//! of work (`FORMICA_POW_DIFFICULTY=8`), and keytool is pointed at it with `FORMICA_RELAY`;
//! `HOME` is a temporary directory; `<request id>`, `<message id>` and `<conversation id>` are
//! taken from the output of the command that prints them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{first_line, relay_bin, url_of};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const README: &str = include_str!("../../README.md");

/// Longest a README command may take here (`watch --count 2` returns as soon as it has both).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Lines that build or test this repository: not run here (the suite runs inside one of them),
/// but what they name must exist.
const BUILD_LINES: &[&str] = &[
    "cargo test --workspace",
    "bash .ci/run",
    "cargo install --path keytool",
    "cargo install --path relay",
];

/// The ```sh blocks' lines, without comments and blank lines.
fn sh_lines(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in md.lines() {
        let t = line.trim_start();
        if t.starts_with("```") {
            in_sh = !in_sh && t.trim() == "```sh";
            continue;
        }
        if in_sh {
            let words = split_words(line);
            if !words.is_empty() {
                out.push(words.join("\u{1f}"));
            }
        }
    }
    out
}

/// Splits a shell line into words: double and single quotes, and a `#` comment at the start
/// of a word. (Enough for the README; a construct it does not know fails the test below.)
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            // A `<placeholder with spaces>` is one word, brackets kept.
            (Some('>'), '>') => {
                cur.push('>');
                quote = None;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '<') if !in_word => {
                cur.push('<');
                quote = Some('>');
                in_word = true;
            }
            (None, '#') if !in_word => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                assert!(
                    !matches!(c, '|' | '&' | ';' | '>' | '<' | '$' | '`' | '\\'),
                    "README line uses shell syntax the harness does not run: {line}"
                );
                cur.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unclosed quote in README line: {line}");
    if in_word {
        words.push(cur);
    }
    words
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(mut cmd: Command) -> Run {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + COMMAND_TIMEOUT;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("{cmd:?} ran for more than {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first 64-hex word of `text`.
fn hex_id(text: &str) -> Option<String> {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 64)
        .map(str::to_owned)
}

#[test]
fn every_readme_command_line_runs_as_written() {
    let root = std::env::temp_dir().join(format!("formica-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let live = root.join("live");
    let offline = root.join("offline");
    for d in [
        &live,
        &offline,
        &root.join("home"),
        &root.join("offline-home"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    let keytool = PathBuf::from(env!("CARGO_BIN_EXE_keytool"));
    let relay = relay_bin();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut server: Option<Killed> = None;
    let mut url = String::new();
    let mut ids: HashMap<&str, String> = HashMap::new();
    let lines = sh_lines(README);
    assert!(
        lines.len() >= 20,
        "suspiciously few README lines: {lines:?}"
    );
    let (mut ran, mut parsed) = (0, 0);
    for joined in &lines {
        let words: Vec<String> = joined.split('\u{1f}').map(str::to_owned).collect();
        let line = words.join(" ");
        if BUILD_LINES.contains(&line.as_str()) {
            let target = words.last().unwrap();
            let what = if line.starts_with("cargo install") {
                repo.join(target).join("Cargo.toml")
            } else if line.starts_with("bash") {
                repo.join(target)
            } else {
                repo.join("Cargo.toml")
            };
            assert!(what.exists(), "{line}: {} does not exist", what.display());
            continue;
        }
        // `cargo run --release -p relay -- ARGS` is the relay binary with ARGS.
        let (bin, args): (&Path, Vec<String>) = match words[0].as_str() {
            "cargo"
                if words[1..].starts_with(&[
                    "run".into(),
                    "--release".into(),
                    "-p".into(),
                    "relay".into(),
                    "--".into(),
                ]) =>
            {
                (&relay, words[6..].to_vec())
            }
            "relay" => (&relay, words[1..].to_vec()),
            "keytool" => (&keytool, words[1..].to_vec()),
            _ => panic!("README line the harness does not know how to run: {line}"),
        };
        // Placeholders from earlier output.
        let args: Vec<String> = args
            .into_iter()
            .map(
                |a| match a.strip_prefix('<').and_then(|a| a.strip_suffix('>')) {
                    Some(name) => ids
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| panic!("{line}: nothing printed a <{name}> before")),
                    None => a,
                },
            )
            .collect();
        if args.first().map(String::as_str) == Some("serve") {
            assert!(server.is_none(), "a second `relay serve` line: {line}");
            let mut child = Command::new(bin)
                .args(&args)
                .current_dir(&live)
                .env("FORMICA_LISTEN", "127.0.0.1:0")
                .env("FORMICA_POW_DIFFICULTY", "8")
                .env("FORMICA_LOG", "warn")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let first = first_line(&mut child);
            url = url_of(&first).unwrap_or_else(|| panic!("{line}: no URL in {first:?}"));
            server = Some(Killed(child));
            ran += 1;
            continue;
        }
        // Nothing here may reach beyond loopback: every URL a line names is either a
        // documentation host (run where nothing can be reached, below) or a loopback one.
        for a in &args {
            if a.starts_with("http://") || a.starts_with("https://") {
                let host = a
                    .split("://")
                    .nth(1)
                    .unwrap_or("")
                    .split(['/', ':'])
                    .next()
                    .unwrap_or("");
                assert!(
                    host.ends_with(".example") || host == "127.0.0.1" || host == "localhost",
                    "{line}: names {a}, which a test must not reach"
                );
            }
        }
        let mut cmd = Command::new(bin);
        cmd.args(&args);
        if line.contains(".example") {
            // Cannot reach that host from a test: run where nothing can be reached, and check
            // that the command line itself is accepted.
            cmd.current_dir(&offline)
                .env("HOME", root.join("offline-home"))
                .env("XDG_CONFIG_HOME", root.join("offline-home"))
                .env("FORMICA_RELAY", "http://127.0.0.1:1")
                .env_remove("FORMICA_HOME")
                .env_remove("FORMICA_DATA_DIR");
            let r = run(cmd);
            assert!(
                r.code != Some(2)
                    && !r.stderr.contains("Usage:")
                    && !r.stderr.contains("unexpected argument"),
                "README line is not a valid command line: {line}\n{}{}",
                r.stdout,
                r.stderr
            );
            // And it failed for the reason expected here (nothing to reach), not another.
            let why = format!("{}{}", r.stdout, r.stderr);
            let expected = if bin == relay.as_path() {
                why.contains("no such data directory") || why.contains("no relay is serving")
            } else {
                // No identity in the empty home, or the closed relay port.
                r.code == Some(9) || r.code == Some(6)
            };
            assert!(expected, "{line}: failed for an unexpected reason:\n{why}");
            parsed += 1;
            continue;
        }
        assert!(
            server.is_some(),
            "{line}: runs before the README has started a relay"
        );
        cmd.current_dir(&live)
            .env("HOME", root.join("home"))
            .env("XDG_CONFIG_HOME", root.join("home"))
            .env("FORMICA_RELAY", &url)
            .env_remove("FORMICA_HOME")
            .env_remove("FORMICA_DATA_DIR");
        let r = run(cmd);
        assert_eq!(
            r.code,
            Some(0),
            "README line failed: {line}\n{}{}",
            r.stdout,
            r.stderr
        );
        if line == "keytool --version" {
            assert!(r.stdout.trim_end().ends_with("(formica)"), "{}", r.stdout);
        }
        if line.contains("requests list") {
            if let Some(id) = hex_id(&r.stdout) {
                ids.insert("request id", id);
            }
        }
        if words.get(3).map(String::as_str) == Some("call") {
            if let Some(id) = hex_id(&r.stdout) {
                ids.insert("conversation id", id);
            }
        }
        if words.get(3).map(String::as_str) == Some("send")
            || words.get(1).map(String::as_str) == Some("send")
        {
            if let Some(id) = hex_id(&r.stdout) {
                ids.insert("message id", id);
            }
        }
        if line.ends_with("status <message id>")
            || args.get(2).map(String::as_str) == Some("status")
        {
            assert!(r.stdout.contains("acked"), "{line}: {}", r.stdout);
        }
        ran += 1;
    }
    assert!(ran >= 10 && parsed >= 4, "ran {ran}, parsed {parsed}");
    drop(server);
    let _ = std::fs::remove_dir_all(&root);
}

/// The README's ```toml blocks are configurations `relay serve` starts with (an unknown key is
/// an error there, so a misspelled key in the docs fails here).
#[test]
fn every_readme_toml_block_is_a_configuration_the_relay_accepts() {
    let root = std::env::temp_dir().join(format!("formica-readme-toml-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in README.lines() {
        let t = line.trim();
        match (&mut cur, t) {
            (None, "```toml") => cur = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    assert!(!blocks.is_empty(), "no toml block in the README");
    for (i, text) in blocks.iter().enumerate() {
        let config = root.join(format!("block{i}.toml"));
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(relay_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(root.join(format!("data{i}")))
            .env("FORMICA_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let first = first_line(&mut child);
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        assert!(
            first.contains("listening on"),
            "README toml block {i} is refused:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}
