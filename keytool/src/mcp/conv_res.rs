//! Conversations as MCP resources: `formica://conversations/{id}` (a resource template). A read
//! returns the entries after what this session last read of that conversation (each checked
//! against the hash chain, as `conversation_history` does); a subscription (legacy
//! `resources/subscribe` or 2026-07-28 `subscriptions/listen`) follows the conversation on the
//! agent's relay and sends `notifications/resources/updated` when entries arrive, until the
//! subscription ends, the conversation closed and everything was announced, or the agent may no
//! longer read it.

use super::Config;
use crate::online;
use crate::output::Out;
use formica_protocol::MessageId;
use rmcp::model::ResourceTemplate;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const CONV_PREFIX: &str = "formica://conversations/";

/// How long one wait of a follower lasts before it looks at its stop flag again.
const FOLLOW_WAIT: Duration = Duration::from_secs(20);

/// The conversation a resource URI names, if it is one of this server's.
pub fn conv_of(uri: &str) -> Option<MessageId> {
    uri.strip_prefix(CONV_PREFIX).and_then(MessageId::parse_hex)
}

pub fn template() -> ResourceTemplate {
    ResourceTemplate::new(format!("{CONV_PREFIX}{{id}}"), "conversation")
        .with_description("A conversation you take part in (`id`: its 64-hex id, as call and calls return it): each read returns the entries after the previous read of it (JSON: entries, next, state, reason), each checked against the hash chain. Subscribe to be told when new entries arrive.")
        .with_mime_type("application/json")
}

/// Reads the entries of `conv` after `after`: what a read of the resource returns.
pub fn read(
    cfg: &Config,
    conv: &MessageId,
    after: u64,
) -> Result<serde_json::Value, crate::output::Fail> {
    let out = Out::capturing();
    let ctx = online::Ctx {
        out: &out,
        home: &cfg.home,
        relay: cfg.relay.as_deref(),
    };
    online::read_for_tool(&ctx, &cfg.identity, conv, after, None, None)
        .map(|v| super::tools::to_json(&v))
}

/// Follows `conv` after `after` until `stop`: sends `uri` on `tx` when entries arrive. Ends by
/// itself once the conversation is closed and its last entry announced, when the agent may not
/// read it (`not_found`), or when nobody listens; other failures are retried with backoff.
pub fn follow(
    cfg: &Config,
    conv: MessageId,
    uri: String,
    mut after: u64,
    stop: &AtomicBool,
    tx: &tokio::sync::mpsc::UnboundedSender<String>,
) {
    let out = Out::capturing();
    let ctx = online::Ctx {
        out: &out,
        home: &cfg.home,
        relay: cfg.relay.as_deref(),
    };
    let mut pause = Duration::from_secs(1);
    while !stop.load(Ordering::SeqCst) {
        match online::read_for_tool(&ctx, &cfg.identity, &conv, after, None, Some(FOLLOW_WAIT)) {
            Ok(v) => {
                pause = Duration::from_secs(1);
                let got = v
                    .as_object()
                    .and_then(|o| o.get("entries"))
                    .and_then(|e| e.as_array())
                    .is_some_and(|e| !e.is_empty());
                let closed = v
                    .as_object()
                    .and_then(|o| o.get("state"))
                    .and_then(|s| s.as_str())
                    == Some("closed");
                if got {
                    after = v
                        .as_object()
                        .and_then(|o| o.get("next"))
                        .and_then(|n| n.as_i64())
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(after);
                    if tx.send(uri.clone()).is_err() {
                        return;
                    }
                } else if closed {
                    return;
                }
            }
            Err(f) if f.code == Some(formica_protocol::ErrorCode::NotFound) => {
                eprintln!("keytool mcp: {uri}: {}; no longer followed", f.message);
                return;
            }
            Err(f) => {
                eprintln!(
                    "keytool mcp: following {uri}: {}; again in {} s",
                    f.message,
                    pause.as_secs()
                );
                let until = std::time::Instant::now() + pause;
                while std::time::Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(200));
                }
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        }
    }
}

impl super::Server {
    /// A read of `formica://conversations/{id}`: the entries after this session's last read.
    pub(super) async fn read_conv(
        &self,
        uri: &str,
        conv: MessageId,
    ) -> Result<rmcp::model::ReadResourceResponse, rmcp::ErrorData> {
        let mut cursors = self.state.conv_cursors.lock().await;
        let after = cursors.get(&conv).copied().unwrap_or(0);
        let v = self
            .blocking(move |cfg| read(&cfg, &conv, after))
            .await?
            .map_err(|f| {
                let e = super::tools::to_json(&f.to_value());
                rmcp::ErrorData::internal_error(
                    format!(
                        "reading {CONV_PREFIX}{conv}: error [{}]: {}",
                        e["error"]["code"].as_str().unwrap_or(""),
                        f.message
                    ),
                    Some(e),
                )
            })?;
        if let Some(next) = v["next"].as_u64() {
            cursors.insert(conv, next);
        }
        drop(cursors);
        Ok(rmcp::model::ReadResourceResult::new(vec![
            rmcp::model::ResourceContents::TextResourceContents {
                uri: uri.to_owned(),
                mime_type: Some("application/json".into()),
                text: serde_json::to_string(&v).unwrap_or_default(),
                meta: None,
            },
        ])
        .into())
    }

    /// Starts a follower of `conv` (from this session's read cursor, so that unread entries
    /// announce themselves at once) that sends `uri` on `tx`; returns its stop flag.
    pub(super) async fn follow_conv(
        &self,
        uri: &str,
        conv: MessageId,
        tx: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> std::sync::Arc<AtomicBool> {
        let after = self
            .state
            .conv_cursors
            .lock()
            .await
            .get(&conv)
            .copied()
            .unwrap_or(0);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (cfg, s2, uri) = (self.cfg.clone(), stop.clone(), uri.to_owned());
        std::thread::spawn(move || follow(&cfg, conv, uri, after, &s2, &tx));
        stop
    }

    /// A legacy `resources/subscribe` of a conversation: notifications until unsubscribed or
    /// until the follower ends.
    pub(super) async fn subscribe_conv(
        &self,
        uri: &str,
        conv: MessageId,
        peer: rmcp::Peer<rmcp::RoleServer>,
    ) {
        let (done_tx, mut done) = tokio::sync::oneshot::channel::<()>();
        {
            let mut subs = self
                .state
                .conv_legacy
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if subs.contains_key(uri) {
                return; // subscribed already: one subscription per resource
            }
            subs.insert(uri.to_owned(), done_tx);
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = self.follow_conv(uri, conv, tx).await;
        let (me, uri) = (self.clone(), uri.to_owned());
        tokio::spawn(async move {
            let mut unsubscribed = false;
            loop {
                tokio::select! {
                    _ = &mut done => {
                        unsubscribed = true;
                        break;
                    }
                    got = rx.recv() => match got {
                        Some(u) => {
                            let p = rmcp::model::ResourceUpdatedNotificationParam::new(u);
                            if peer.notify_resource_updated(p).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
            stop.store(true, Ordering::SeqCst);
            if !unsubscribed {
                // Ended by itself: a later subscribe starts a new one.
                me.state
                    .conv_legacy
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&uri);
            }
        });
    }

    /// `resources/unsubscribe` of a conversation.
    pub(super) fn unsubscribe_conv(&self, uri: &str) {
        if let Some(done) = self
            .state
            .conv_legacy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uri)
        {
            let _ = done.send(());
        }
    }
}
