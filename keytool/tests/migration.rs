//! A data directory written by the previous release (its store holds the log only, no
//! projection tables) is served by this one: the first start builds the tables once from the
//! log, later starts load them, and agents see what they saw before. The fixture
//! (`fixtures/v1-datadir.tar.gz`) was made with the relay and keytool of commit bd80bc3: alice
//! and bob registered, bob let alice send, alice sent four messages (the last with an ack
//! deadline), bob read his inbox (`bob-inbox-v1.json` is what that release answered).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{lines, relay_bin, url_of};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

/// The host the fixture's relay recorded at its first start.
const V1_HOST: &str = "127.0.0.1:45119";

struct Started {
    child: std::process::Child,
    url: String,
    stderr: std::path::PathBuf,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, n: u32) -> Started {
    let stderr = dir.join(format!("relay-{n}.err"));
    let mut child = Command::new(relay_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--public-host",
            V1_HOST,
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .env("FORMICA_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = url_of(&line).unwrap_or_else(|| {
        panic!(
            "no start line: {line:?} {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        )
    });
    Started { child, url, stderr }
}

fn stop(mut s: Started) -> String {
    let pid = s.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(s.child.wait().unwrap().success());
    std::fs::read_to_string(&s.stderr).unwrap()
}

fn ids(v: &[formica_protocol::Value]) -> Vec<String> {
    v.iter()
        .map(|l| {
            let o = l.as_object().unwrap();
            let e = o.get("envelope").and_then(|e| e.as_object()).unwrap();
            e.get("id").and_then(|i| i.as_str()).unwrap().to_owned()
        })
        .collect()
}

#[test]
fn a_data_directory_of_the_previous_release_is_served_after_one_rebuild() {
    let dir = std::env::temp_dir().join(format!("formica-migration-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-datadir.tar.gz");
    let untar = Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(untar.success());
    // tar keeps the modes: the data directory is private, as a relay requires.
    let before = ids(&lines(
        &std::fs::read(dir.join("bob-inbox-v1.json")).unwrap(),
    ));
    assert_eq!(before.len(), 4);
    let kt = |relay: &Started, home: &str, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_keytool"))
            .arg("--home")
            .arg(dir.join(home))
            .args(["--relay", &relay.url, "--json"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "keytool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&out.stdout)
    };

    // First start: the tables are built once, and bob's inbox is what the old release served.
    let r = serve(&dir, 1);
    assert_eq!(ids(&kt(&r, "bob", &["inbox"])), before);
    // The old relay's state goes on: alice may still send, and bob gets it after the others.
    kt(&r, "alice", &["send", "@bob", "after the upgrade"]);
    let err = stop(r);
    assert!(
        err.contains("rebuilding the projection tables"),
        "the first start did not build the tables: {err}"
    );

    // Second start: loaded, nothing rebuilt; the store checks sound.
    let r = serve(&dir, 2);
    let now = ids(&kt(&r, "bob", &["inbox"]));
    assert_eq!(&now[..4], &before[..]);
    assert_eq!(now.len(), 5);
    let err = stop(r);
    assert!(
        !err.contains("rebuilding"),
        "the second start rebuilt the tables again: {err}"
    );
    let check = Command::new(relay_bin())
        .args(["check", "--data-dir"])
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
