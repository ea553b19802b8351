//! Wake-ups after a durable batch: per-agent watch channels for inbox streams, and one notify
//! for the federation workers whose queues may have grown.

use formica_protocol::Handle;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use tokio::sync::watch;

/// Wakes streaming consumers when their inbox grows.
#[derive(Debug, Default)]
pub struct Notifier {
    senders: Mutex<HashMap<Handle, watch::Sender<u64>>>,
    /// Wakes the federation workers when a batch stored envelopes (their queues may have grown).
    outbound: tokio::sync::Notify,
}

impl Notifier {
    /// Completes after the next batch that stored an envelope is durable.
    pub fn outbound_grew(&self) -> tokio::sync::futures::Notified<'_> {
        self.outbound.notified()
    }

    /// A receiver that changes whenever `h`'s inbox grows.
    pub fn subscribe(&self, h: &Handle) -> watch::Receiver<u64> {
        let mut m = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(h.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the streams of `handles` (after a durable batch that stored items for them).
    pub(super) fn notify(&self, handles: &BTreeSet<Handle>) {
        let mut m = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        for h in handles {
            if let Some(s) = m.get(h) {
                s.send_modify(|v| *v += 1);
                if s.receiver_count() == 0 {
                    m.remove(h);
                }
            }
        }
    }

    /// Wakes every stream (after this node loaded what other nodes of the relay committed:
    /// which inboxes grew is not known).
    pub(super) fn notify_all(&self) {
        let mut m = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, s| {
            s.send_modify(|v| *v += 1);
            s.receiver_count() > 0
        });
    }

    /// Wakes the federation workers (after a durable batch that stored envelopes).
    pub(super) fn wake_outbound(&self) {
        self.outbound.notify_waiters();
    }

    /// Number of agents with at least one open stream.
    pub fn watched(&self) -> usize {
        self.senders.lock().map(|m| m.len()).unwrap_or(0)
    }
}
