//! The federation layer (SPEC.md section 16), outbound side: the relay-to-relay HTTP client,
//! peering with another relay, remote key logs (pulled, cached, pushed) and the per-peer
//! forwarding workers. The endpoints other relays call (handshake, transfer, key log push) and
//! the operator's admin endpoints are in `http/`, which uses this layer.
//!
//! May import: `engine`, `store`. Never imports `http`. Like the handlers, everything here only
//! reads the durable state and submits commands to the writer: peers, the outbound queues,
//! transfer outcomes, dead letters and cached remote key logs are projections of log events,
//! so a restart resumes forwarding where it stopped.

pub mod client;
pub mod directory;
pub mod forward;
pub mod keylogs;
pub mod peer_addr;
pub mod peering;
pub mod replicate;

use crate::engine::Engine;
use client::PeerClient;
use std::sync::Arc;

pub use client::{Unreachable, PEER_RESPONSE_BYTES_MAX};
pub use peering::verify_descriptor;

/// This relay's side of federation: the engine it acts for and the HTTP client it reaches
/// peers with. Cheap to clone (each forwarding worker holds one).
#[derive(Clone, Debug)]
pub struct Federation {
    pub engine: Arc<Engine>,
    client: PeerClient,
}

impl Federation {
    pub fn new(engine: Arc<Engine>) -> Federation {
        Federation {
            engine,
            client: PeerClient::default(),
        }
    }
}
