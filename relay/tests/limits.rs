//! Limits of a relay process: thousands of idle and slow-header connections from one address are capped and
//! closed after the header read timeout, while `/health` keeps answering other clients; a
//! request body over the limit is refused even when it is chunked with no length; offered load
//! far above an agent's rate gets 429s, never 5xx, with resident memory staying flat.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/process.rs"]
mod process;

use process::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Idle connections the test holds: two thousand, or fewer if this process may not open that
/// many files (the relay, started from it, inherits the same limit).
fn idle_count() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1024);
    (soft / 4).clamp(16, 2000)
}

fn setup(name: &str, extra: &str) -> (std::path::PathBuf, RelayProc) {
    let dir = std::env::temp_dir().join(format!(
        "formica-{name}-{}-{}",
        std::process::id(),
        now_ms()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config_with(&dir, extra);
    let r = RelayProc::start(&dir.join("data"), &config);
    (dir, r)
}

/// GET /health from a given local address; the status, or None if the connection was refused
/// or closed without an answer.
async fn health_from(local: &str, addr: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind(format!("{local}:0").parse().ok()?).ok()?;
    let mut s = sock.connect(addr.parse().ok()?).await.ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_capped_per_address_and_closed_while_health_answers() {
    let per_ip = idle_count();
    let (dir, r) = setup(
        "conns",
        &format!("connections_per_ip_max = {per_ip}\nheader_read_timeout_ms = 8000"),
    );
    // One client holds every slot of its address with connections that never send a header.
    let mut idle: Vec<TcpStream> = (0..per_ip)
        .map(|_| TcpStream::connect(&r.addr).unwrap())
        .collect();
    eprintln!("holding {per_ip} idle connections");
    std::thread::sleep(Duration::from_millis(500));
    // Another connection from that address is closed without an answer.
    assert_eq!(
        health_from("127.0.0.1", &r.addr).await,
        None,
        "the per-address cap did not hold"
    );
    // A different client address is served.
    assert_eq!(health_from("127.0.0.2", &r.addr).await, Some(200));
    // The idle connections are closed once the header read timeout passes.
    let deadline = Instant::now() + Duration::from_secs(40);
    for c in idle.iter_mut() {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut b = [0u8; 1];
        let n = c.read(&mut b).unwrap_or(0);
        assert_eq!(n, 0, "an idle connection got data instead of being closed");
        assert!(Instant::now() < deadline);
    }
    // And the address is served again.
    assert_eq!(health_from("127.0.0.1", &r.addr).await, Some(200));
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_chunked_body_over_the_limit_is_refused_with_too_large() {
    let (dir, r) = setup("chunked", "");
    let mut s = TcpStream::connect(&r.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"POST /v1/envelopes HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").unwrap();
    // 70 KiB in 1 KiB chunks, more than envelope_bytes_max (64 KiB), with no Content-Length.
    let chunk = vec![b' '; 1024];
    for _ in 0..70 {
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break; // the relay may close early once the limit is passed
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"too_large\""), "{text}");
    // The relay still serves.
    assert_eq!(r.request("GET", "/health", &[], b"").unwrap().0, 200);
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn overload_gets_429s_not_5xx_and_memory_stays_flat() {
    // One sender at 600 envelopes per minute (burst 150); four threads offer far more.
    let dir = std::env::temp_dir().join(format!(
        "formica-overload-{}-{}",
        std::process::id(),
        now_ms()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(&dir);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("rate_per_min = 1000000", "rate_per_min = 600");
    std::fs::write(&config, text).unwrap();
    let r = RelayProc::start(&dir.join("data"), &config);
    let a = std::sync::Arc::new(Peer::register(&r, "alice", 1));
    let b = Peer::register(&r, "bob", 2);
    b.allow(&r, &a.handle);
    let pid = r.child.as_ref().unwrap().id();
    // Warm up, then measure resident memory before and after a bounded burst.
    for n in 0..20 {
        let _ = post_envelope(&r, &a.message(&b.handle, &format!("warm {n}")));
    }
    let before = rss_kib(pid);
    let stop = Instant::now() + Duration::from_secs(3);
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let (a, addr, bh) = (a.clone(), r.addr.clone(), b.handle.clone());
            std::thread::spawn(move || {
                let mut counts = std::collections::BTreeMap::new();
                let mut n = 0;
                while Instant::now() < stop {
                    let m = a.message(&bh, &format!("w{w} n{n}"));
                    n += 1;
                    let st = http(&addr, "POST", "/v1/envelopes", &[], &m.wire_bytes())
                        .map(|(s, _)| s)
                        .unwrap_or(0);
                    *counts.entry(st).or_insert(0u32) += 1;
                }
                counts
            })
        })
        .collect();
    let mut total = std::collections::BTreeMap::new();
    for t in threads {
        for (k, v) in t.join().unwrap() {
            *total.entry(k).or_insert(0) += v;
        }
    }
    let after = rss_kib(pid);
    eprintln!("overload: answers by status {total:?}; RSS {before} KiB -> {after} KiB");
    assert!(
        total.keys().all(|s| *s == 201 || *s == 429),
        "only 201 and 429 expected: {total:?}"
    );
    assert!(
        total.get(&429).copied().unwrap_or(0) > total.get(&201).copied().unwrap_or(0),
        "most of the excess must be refused: {total:?}"
    );
    // Flat memory: refused requests leave nothing behind (a generous bound for allocator noise).
    assert!(
        after < before + 64 * 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );
    assert_eq!(r.request("GET", "/health", &[], b"").unwrap().0, 200);
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}
