//! A relay process whose data directory fills up for real: a small tmpfs the test mounts when
//! it runs as root (skipped, with the reason printed, otherwise; the in-process fault injector
//! of `tests/storage.rs` covers the same paths everywhere). The write that meets the full disk
//! gets 507 and nothing of it is kept, the relay stays up and serves reads, `/ready` says 503,
//! a restart on the full disk starts and refuses writes, and once space is freed writes are
//! accepted again without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/process.rs"]
mod process;

use process::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A tmpfs mounted for the test, unmounted (and its mount point removed) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size_mib: u32) -> Result<Tmpfs, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not running as root, so no tmpfs can be mounted".into());
        }
        let dir =
            std::env::temp_dir().join(format!("formica-full-{}-{}", std::process::id(), now_ms()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).output();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn status_of(r: &RelayProc, path: &str) -> u16 {
    r.request("GET", path, &[], b"")
        .map(|(s, _)| s)
        .unwrap_or(0)
}

fn fill(path: &Path, mib: usize) {
    std::fs::write(path, vec![0x5au8; mib << 20]).unwrap();
}

#[test]
fn a_full_disk_refuses_writes_keeps_serving_reads_and_recovers_without_a_restart() {
    let fs = match Tmpfs::mount(24) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_refuses_writes...: {why}");
            return;
        }
    };
    // Space to give back later.
    let filler = fs.0.join("filler");
    fill(&filler, 6);
    // No reserve: the point is the write that meets ENOSPC in the middle of a commit.
    let config = write_config_with(&fs.0, "store_free_bytes_min = 0");
    let data = fs.0.join("data");
    let mut r = RelayProc::start(&data, &config);
    let a = Peer::register(&r, "alice", 1);
    let b = Peer::register(&r, "bob", 2);
    b.allow(&r, &a.handle);
    let big = "x".repeat(30_000);
    let mut acked = Vec::new();
    let mut refused = None;
    for n in 0..2000 {
        let m = a.message(&b.handle, &format!("{n} {big}"));
        let (st, v) = post_envelope(&r, &m).expect("an answer, also when the disk is full");
        match st {
            201 => acked.push(m.id().to_hex()),
            507 => {
                let code = v
                    .as_object()
                    .and_then(|o| o.get("error"))
                    .and_then(|e| e.as_object())
                    .and_then(|e| e.get("code"))
                    .and_then(|c| c.as_str())
                    .unwrap_or("");
                assert_eq!(code, "storage_full", "{v:?}");
                refused = Some(m);
                break;
            }
            other => panic!("write {n}: {other} {v:?}"),
        }
    }
    let refused = refused.expect("the disk never filled");
    assert!(!acked.is_empty());
    // Alive, serving reads from what is durable, not ready.
    assert_eq!(status_of(&r, "/health"), 200);
    assert_eq!(status_of(&r, "/ready"), 503);
    let inbox: Vec<String> = b.inbox(&r).into_iter().map(|(_, id)| id).collect();
    assert_eq!(inbox, acked, "the inbox is not what was acknowledged");

    // Restarted while full: it starts, serves reads and refuses writes.
    assert_eq!(r.terminate(), Some(0));
    let r = RelayProc::start(&data, &config);
    let inbox: Vec<String> = b.inbox(&r).into_iter().map(|(_, id)| id).collect();
    assert_eq!(inbox, acked);
    let (st, _) = post_envelope(&r, &refused).unwrap();
    assert_eq!(st, 507);
    assert_eq!(status_of(&r, "/ready"), 503);

    // Space comes back: writes are accepted again within seconds, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, v) = post_envelope(&r, &refused).unwrap();
        if st == 201 {
            break;
        }
        assert_eq!(st, 507, "{v:?}");
        assert!(Instant::now() < until, "writes did not resume within 10 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status_of(&r, "/ready"), 200);
    let inbox: Vec<String> = b.inbox(&r).into_iter().map(|(_, id)| id).collect();
    assert_eq!(inbox.len(), acked.len() + 1);
    assert_eq!(inbox.last(), Some(&refused.id().to_hex()));
    drop(r);
    drop(fs);
}
