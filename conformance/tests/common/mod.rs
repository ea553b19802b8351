//! Test fixtures: the reference relay started in-process on 127.0.0.1 with an OS-chosen port
//! (the same wiring as `relay/src/main.rs`: `Relay::open`, `Relay::spawn_background`,
//! `http::router`, `http::server::serve`), and a tampering HTTP proxy that simulates a wrong relay by rewriting the
//! answers of a real one; and a relay of several nodes on one shared store behind a round-robin
//! front (`nodes`, `front`). Nothing here switches a check off inside the relay.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod front;
pub mod nodes;
pub mod proxy;

use formica_relay::config::{Overrides, RelayConfig};
use formica_relay::engine::system_clock;
use formica_relay::http::{router, server};
use formica_relay::Relay;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The reference relay, in this process.
pub struct InProcessRelay {
    pub addr: SocketAddr,
    pub host: String,
    pub url: String,
    pub dir: PathBuf,
    rt: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The policy the suite is run with: the reference defaults, except a low proof-of-work
/// difficulty (the suite registers many agents), a per-IP budget for the unauthenticated
/// endpoints that a whole run fits in (the last case still exhausts it), a challenge
/// lifetime short enough for the expiry case to wait for, a pending contact request cap
/// small enough to reach, and a ring time of live calls short enough for the ring-out case to
/// wait for. `results/relay.toml` holds the same values for a relay binary.
pub fn suite_config(dir: &std::path::Path, host: &str) -> RelayConfig {
    let mut cfg = RelayConfig::load(
        None,
        Overrides {
            data_dir: Some(dir.to_owned()),
            public_host: Some(host.to_owned()),
            pow_difficulty: Some(8),
            ..Default::default()
        },
    )
    .expect("config");
    cfg.policy.limits.ip_requests_per_min = 600;
    cfg.policy.limits.challenge_ttl_ms = 3000;
    cfg.policy.limits.contact_requests_pending_max = 3;
    cfg.policy.limits.body_read_timeout_ms = 2000;
    cfg.policy.conversations.ring_ms = 2000;
    cfg
}

impl InProcessRelay {
    /// Starts a relay on a fresh port. `public_host` is the host it puts in handles and its
    /// descriptor (default: its own address); a proxy in front passes its own address.
    pub fn start(public_host: Option<&str>) -> InProcessRelay {
        InProcessRelay::start_with(public_host, |_| {})
    }

    /// Like [`start`](Self::start), with the configuration adjusted by `tweak`.
    pub fn start_with(
        public_host: Option<&str>,
        tweak: impl FnOnce(&mut RelayConfig),
    ) -> InProcessRelay {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let host = public_host
            .map(str::to_owned)
            .unwrap_or_else(|| addr.to_string());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "formica-conformance-{}-{nanos}",
            std::process::id()
        ));
        let mut cfg = suite_config(&dir, &host);
        tweak(&mut cfg);
        let relay_host = formica_protocol::RelayHost::parse(&host).expect("host");
        let relay = Relay::open(&cfg, &relay_host, system_clock()).expect("open relay");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = relay.app.clone();
        {
            let _in_runtime = rt.enter();
            relay.spawn_background();
        }
        let router = router(app.clone());
        rt.spawn(async move {
            server::serve(app, router, listener, async {
                let _ = rx.await;
            })
            .await;
        });
        drop(relay);
        InProcessRelay {
            addr,
            url: format!("http://{addr}"),
            host,
            dir,
            rt: Some(rt),
            stop: Some(tx),
        }
    }
}

impl Drop for InProcessRelay {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(3));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Binds a listener on a fresh loopback port (for a proxy whose address the relay must know
/// before it starts).
pub fn reserve_listener() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind")
}
