//! One relay made of several nodes on one shared store, in this process, behind a round-robin
//! front ([`Front`]): what a deployment of the relay on PostgreSQL behind a load balancer
//! looks like to an agent. Each node is a whole relay (`Relay::with_store`, its own writer,
//! background tasks and server on its own runtime and loopback port), with the relay key and
//! the public host of the others; the host is the front's address, which is all the suite sees.
//!
//! The harness is generic over the store: [`NodesRelay::start`] takes one handle per node on
//! whatever shared store the caller made (the in-memory double `SharedMem` here,
//! [`NodesRelay::shared_mem`]; PostgreSQL elsewhere).

use super::front::Front;
use super::{reserve_listener, suite_config};
use formica_protocol::{RelayHost, SecretKey};
use formica_relay::config::RelayConfig;
use formica_relay::engine::system_clock;
use formica_relay::http::{router, server};
use formica_relay::store::{SharedMem, Store};
use formica_relay::Relay;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long a node's runtime and writer get to end when the relay is dropped.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// A relay of several nodes; stops (front first, then every node) when dropped.
#[derive(Debug)]
pub struct NodesRelay {
    /// The front: the relay's public address. Dropped first, so that no request reaches a
    /// node that is stopping.
    pub front: Front,
    /// `http://` and the front's address: the URL the suite runs against.
    pub url: String,
    /// The relay's public host (the front's address).
    pub host: String,
    pub nodes: Vec<Node>,
    /// The configuration's data directory, which no node writes (their stores are given),
    /// removed in case something did.
    dir: PathBuf,
}

/// One node: a whole relay on its own runtime and port.
#[derive(Debug)]
pub struct Node {
    pub addr: SocketAddr,
    /// The node's relay, for tests that look inside (its engine, its store health).
    pub relay: Option<Relay>,
    rt: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl NodesRelay {
    /// Two nodes on a fresh in-memory shared store (`SharedMem::new` and `.node()`).
    pub fn shared_mem() -> NodesRelay {
        let first = SharedMem::new();
        let second = first.node();
        NodesRelay::start(vec![Arc::new(first), Arc::new(second)])
    }

    /// One node per store handle, each handle on the same shared store, with the suite's
    /// configuration ([`suite_config`]).
    pub fn start(stores: Vec<Arc<dyn Store>>) -> NodesRelay {
        NodesRelay::start_with(stores, |_| {})
    }

    /// Like [`start`](Self::start), with the configuration adjusted by `tweak` (the same for
    /// every node: nodes of one relay share one configuration).
    pub fn start_with(stores: Vec<Arc<dyn Store>>, tweak: impl Fn(&mut RelayConfig)) -> NodesRelay {
        assert!(!stores.is_empty(), "a relay needs at least one node");
        // The front's port first: it is the host every node puts in handles and descriptors.
        let listener = reserve_listener();
        let host = listener.local_addr().expect("front address").to_string();
        let relay_host = RelayHost::parse(&host).expect("host");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "formica-conformance-nodes-{}-{nanos}",
            std::process::id()
        ));
        let mut cfg = suite_config(&dir, &host);
        tweak(&mut cfg);
        // One relay key for all: the descriptor and receipts any node signs are the relay's.
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        let key = SecretKey::from_seed(&seed);
        // One after another: the first node writes the store's first records, the others
        // open what it wrote.
        let nodes: Vec<Node> = stores
            .into_iter()
            .map(|store| Node::start(&cfg, &relay_host, store, key.clone()))
            .collect();
        let front = Front::start(listener, nodes.iter().map(|n| n.addr).collect());
        NodesRelay {
            front,
            url: format!("http://{host}"),
            host,
            nodes,
            dir,
        }
    }
}

impl Drop for NodesRelay {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Node {
    /// Opens a relay on `store` and serves it on a fresh loopback port, with its background
    /// tasks (the follower among them, which makes streams on this node see what other nodes
    /// commit), as `relay serve` does.
    fn start(cfg: &RelayConfig, host: &RelayHost, store: Arc<dyn Store>, key: SecretKey) -> Node {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let relay = Relay::with_store(cfg, host, store, key, system_clock()).expect("open a node");
        let app = relay.app.clone();
        {
            let _in_runtime = rt.enter();
            relay.spawn_background();
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let router = router(app.clone());
        rt.spawn(async move {
            server::serve(app, router, listener, async {
                let _ = rx.await;
            })
            .await;
        });
        Node {
            addr,
            relay: Some(relay),
            rt: Some(rt),
            stop: Some(tx),
        }
    }
}

impl Drop for Node {
    /// Stops the server and the background tasks, then the writer, which lets go of the
    /// node's store handle (its turn and its lead, as a closed connection would).
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(relay) = &self.relay {
            relay.app.engine.stopping.send_replace(true);
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(STOP_WAIT);
        }
        if let Some(relay) = self.relay.take() {
            relay.stop(STOP_WAIT);
        }
    }
}
