//! `keytool mcp`: Formica as an MCP server over stdio, for LLM agents in MCP clients.
//!
//! Built on the official Rust SDK (`rmcp`), which negotiates the protocol revision with the
//! client (2024-11-05 up to 2026-07-28). Every tool is one of keytool's commands (`tools.rs`;
//! `profile.rs` reads `profile_set`'s arguments, `presence.rs` and `conv.rs` run the presence
//! and conversation tools) run
//! as the identity the server was started with: no tool argument names an identity, so one
//! agent's server cannot read another's inbox.
//! A key or relay problem is a tool error carrying the protocol's error code (or keytool's own)
//! and keytool's hint, never an empty result.
//!
//! Push: the inbox is the resource `formica://inbox`. A client that subscribes to it gets
//! `notifications/resources/updated` when a new item arrives: the server follows the relay's
//! inbox stream (resuming after its last cursor across reconnects) and coalesces bursts into
//! one notification. Reading the resource returns the items after what this session last read,
//! so reads neither skip nor repeat items. Each conversation is a resource too,
//! `formica://conversations/{id}` (`conv_res.rs`), read and followed the same way.
//!
//! Standard output carries only MCP messages; anything else goes to standard error. No secret
//! is printed: the key stays in the identity file (encrypted with `FORMICA_PASSPHRASE` if it
//! was written so).

mod conv;
mod conv_res;
mod inbox_res;
mod presence;
mod profile;
mod tools;

use crate::output::{Fail, Out};
use crate::{identity, online};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig,
    SubscribeRequestParams, SubscriptionFilter, Tool, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde_json::Value as Json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The one resource: the identity's inbox.
pub const INBOX_URI: &str = "formica://inbox";

/// What the server acts as, fixed at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub home: PathBuf,
    pub relay: Option<String>,
    pub identity: String,
}

/// Most tool calls that run at once (each is a blocking relay conversation on its own
/// thread; more wait their turn).
const TOOL_CALLS_MAX: usize = 8;

/// The one follower of the relay's inbox stream, shared by every subscription of this session
/// (legacy `resources/subscribe` and 2026-07-28 `subscriptions/listen` alike): it runs while
/// at least one subscription does, and wakes them all through `tx`.
#[derive(Debug)]
struct Hub {
    stop: Arc<AtomicBool>,
    subscribers: usize,
    tx: tokio::sync::broadcast::Sender<()>,
}

#[derive(Debug)]
struct State {
    /// The cursor after the last item a read of the inbox resource returned; reads hold it
    /// for their whole duration, so concurrent reads neither repeat nor skip.
    read_cursor: tokio::sync::Mutex<Option<String>>,
    hub: Mutex<Option<Hub>>,
    /// The legacy subscription's forwarder, stopped by `resources/unsubscribe`.
    legacy: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    /// Per conversation resource: the seq after the last entry a read returned (held for the
    /// whole read, as `read_cursor`), and the legacy subscription's stop.
    conv_cursors: tokio::sync::Mutex<std::collections::HashMap<formica_protocol::MessageId, u64>>,
    conv_legacy: Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    tool_calls: tokio::sync::Semaphore,
}

impl Default for State {
    fn default() -> Self {
        State {
            read_cursor: tokio::sync::Mutex::new(None),
            hub: Mutex::new(None),
            legacy: Mutex::new(None),
            conv_cursors: tokio::sync::Mutex::new(std::collections::HashMap::new()),
            conv_legacy: Mutex::new(std::collections::HashMap::new()),
            tool_calls: tokio::sync::Semaphore::new(TOOL_CALLS_MAX),
        }
    }
}

#[derive(Debug, Clone)]
struct Server {
    cfg: Config,
    state: Arc<State>,
}

/// Runs the server on stdin/stdout until the client closes it.
pub fn serve(cfg: Config) -> Result<(), Fail> {
    // The identity must be usable before anything is served (a wrong passphrase, a missing
    // file): the failure is keytool's, on standard error, with its exit code.
    let id = identity::load(&cfg.home, &cfg.identity)?;
    online::stored_handle(&id)?;
    drop(id);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Fail::new(crate::output::Exit::Failure, format!("runtime: {e}")))?;
    let res = rt.block_on(async move {
        let server = Server {
            cfg,
            state: Arc::default(),
        };
        let running = server
            .serve((tokio::io::stdin(), tokio::io::stdout()))
            .await
            .map_err(|e| Fail::new(crate::output::Exit::Failure, format!("mcp: {e}")))?;
        let _ = running.waiting().await;
        Ok(())
    });
    // The client has gone: calls still running (a wait, a send waiting for a remote relay)
    // have no one to answer, so they are not waited for.
    rt.shutdown_timeout(Duration::from_millis(500));
    res
}

/// A tool's failure as MCP sees it: a tool error whose text says the code, the message and
/// the hint, with keytool's JSON failure as structured content.
fn tool_error(f: &Fail) -> CallToolResult {
    let mut v = tools::to_json(&f.to_value());
    let code = v["error"]["code"].as_str().unwrap_or("").to_owned();
    // keytool's words are for its command line; a model calls tools and passes arguments.
    let message = for_tools(&f.message);
    let hint = f.hint.as_deref().map(for_tools);
    v["error"]["message"] = Json::String(message.clone());
    if let Some(h) = &hint {
        v["error"]["hint"] = Json::String(h.clone());
    }
    let mut text = format!("error [{code}]: {message}");
    if let Some(h) = &hint {
        text.push_str(&format!("\nhint: {h}"));
    }
    let mut r = CallToolResult::structured_error(v);
    r.content = vec![ContentBlock::text(text)];
    r
}

/// keytool's command lines and flags in a message, as the tools and arguments that do the same.
fn for_tools(text: &str) -> String {
    const WORDS: &[(&str, &str)] = &[
        (
            "pass --from @sender if you know it",
            "pass `from` (the sender's handle) if you know it",
        ),
        ("`--ack-deadline`", "`ack_deadline`"),
        ("--ack-deadline", "`ack_deadline`"),
        ("--plain sends", "`plain`: true sends"),
        ("--type T --payload FILE", "`type` and `payload`"),
        (
            "keytool conv list --all",
            "the conversation_list tool (`all`: true)",
        ),
        ("--after is beyond", "`after` is beyond"),
        ("(without --after)", "(`after` 0)"),
        ("keytool conv list", "the conversation_list tool"),
        (
            "keytool conv watch",
            "the conversation_history tool (`wait`) on",
        ),
        ("keytool conv send", "the conversation_send tool:"),
        ("keytool accept|decline", "the accept or decline tool:"),
        ("keytool accept", "the accept tool for"),
        ("keytool calls", "the calls tool"),
        ("(--turns sets the limit)", "(`turns` sets the limit)"),
        ("keytool call", "the call tool"),
        ("keytool contact-request", "the contact_request tool:"),
        ("keytool profile set --name NAME", "the profile_set tool"),
        ("keytool requests list", "the requests_list tool"),
        ("keytool contacts add", "the contacts_add tool:"),
        ("keytool inbox", "the inbox tool"),
        ("keytool status", "the status tool"),
        ("keytool resolve", "the resolve tool"),
        ("keytool send printed it", "send returned it"),
        ("keytool send", "the send tool"),
    ];
    let mut s = text.to_owned();
    for (cli, tool) in WORDS {
        s = s.replace(cli, tool);
    }
    s
}

fn tool_ok(v: Json) -> CallToolResult {
    let text = serde_json::to_string(&v).unwrap_or_default();
    let mut r = CallToolResult::structured(v);
    r.content = vec![ContentBlock::text(text)];
    r
}

impl Server {
    /// Runs `f` (keytool's blocking client) off the async threads, at most
    /// [`TOOL_CALLS_MAX`] at once.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Config) -> T + Send + 'static,
    ) -> Result<T, McpError> {
        let _turn = self
            .state
            .tool_calls
            .acquire()
            .await
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        let cfg = self.cfg.clone();
        tokio::task::spawn_blocking(move || f(cfg))
            .await
            .map_err(|e| McpError::internal_error(format!("the tool stopped: {e}"), None))
    }

    /// Joins the inbox follower (starting it from the resource's read cursor, so that unread
    /// items announce themselves at once) and returns its wake-ups.
    async fn join(&self) -> tokio::sync::broadcast::Receiver<()> {
        let from = self.state.read_cursor.lock().await.clone();
        let mut hub = self.state.hub.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = hub.as_mut() {
            h.subscribers += 1;
            return h.tx.subscribe();
        }
        let (tx, rx) = tokio::sync::broadcast::channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let (cfg, s2, t2) = (self.cfg.clone(), stop.clone(), tx.clone());
        std::thread::spawn(move || inbox_res::follow_inbox(&cfg, from, &s2, &t2));
        *hub = Some(Hub {
            stop,
            subscribers: 1,
            tx,
        });
        rx
    }

    /// Leaves the follower; the last subscriber stops it (within half a second).
    fn leave(&self) {
        let mut hub = self.state.hub.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = hub.as_mut() {
            h.subscribers = h.subscribers.saturating_sub(1);
            if h.subscribers == 0 {
                h.stop.store(true, Ordering::SeqCst);
                *hub = None;
            }
        }
    }
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
        .with_server_info(Implementation::new(
            "formica-keytool",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(
            "Formica messaging for this agent's identity. Use wait_for_messages (pass back `next`) or subscribe to formica://inbox to receive; send to reach other agents (a contact_request first for strangers); ack what asks for an ack. Conversations: call starts one, calls lists calls waiting for you, accept or decline answers, conversation_history (with `wait`) and conversation_send talk, conversation_leave ends your part.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let tools = tools::all()
            .map(|t| {
                let schema: serde_json::Map<String, Json> =
                    serde_json::from_str(t.schema).unwrap_or_default();
                Tool::new(t.name, t.description, Arc::new(schema))
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let name = request.name.to_string();
        if !tools::all().any(|t| t.name == name) {
            return Err(McpError::invalid_params(
                format!("no tool named {name:?}"),
                None,
            ));
        }
        let args = request.arguments.unwrap_or_default();
        // A tool that panics is a tool error too, not a protocol error the model cannot read.
        let res = self
            .blocking(move |cfg| tools::call(&cfg, &name, &args))
            .await
            .unwrap_or_else(|e| {
                Err(Fail::new(
                    crate::output::Exit::Failure,
                    format!("the tool stopped unexpectedly: {}", e.message),
                ))
            });
        Ok(match res {
            Ok(v) => tool_ok(v),
            Err(f) => tool_error(&f),
        }
        .into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let r = Resource::new(INBOX_URI, "inbox")
            .with_description("This agent's inbox: each read returns the items after the previous read (JSON: items, next). Subscribe to be told when new items arrive.");
        Ok(ListResourcesResult::with_all_items(vec![r]))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            conv_res::template(),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        if let Some(conv) = conv_res::conv_of(&request.uri) {
            return self.read_conv(&request.uri, conv).await;
        }
        if request.uri != INBOX_URI {
            return Err(no_resource(&request.uri));
        }
        // Held for the whole read: concurrent reads go one after the other, each after the
        // items the previous one returned, and the cursor only moves forward.
        let mut cursor = self.state.read_cursor.lock().await;
        let after = cursor.clone();
        let res = self
            .blocking(move |cfg| {
                let out = Out::capturing();
                let ctx = online::Ctx {
                    out: &out,
                    home: &cfg.home,
                    relay: cfg.relay.as_deref(),
                };
                match tools::page(&ctx, &cfg.identity, after, None, None) {
                    // The items after the cursor are gone (retention): start again from the
                    // oldest kept, which the answer says.
                    Err(f) if f.code == Some(formica_protocol::ErrorCode::CursorTooOld) => {
                        tools::page(&ctx, &cfg.identity, None, None, None).map(|mut v| {
                            v["restarted"] = Json::Bool(true);
                            v
                        })
                    }
                    other => other,
                }
            })
            .await?;
        let v = res.map_err(|f| {
            let e = tools::to_json(&f.to_value());
            McpError::internal_error(
                format!(
                    "reading the inbox: error [{}]: {}",
                    e["error"]["code"].as_str().unwrap_or(""),
                    f.message
                ),
                Some(e),
            )
        })?;
        if let Some(next) = v["next"].as_str() {
            *cursor = Some(next.to_owned());
        }
        drop(cursor);
        // A page may not be all there is: while reads return items, the subscribers are woken
        // to read again (the read that finds nothing ends it).
        if v["items"].as_array().is_some_and(|i| !i.is_empty()) {
            if let Some(h) = self
                .state
                .hub
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
            {
                let _ = h.tx.send(());
            }
        }
        Ok(
            ReadResourceResult::new(vec![ResourceContents::TextResourceContents {
                uri: INBOX_URI.into(),
                mime_type: Some("application/json".into()),
                text: serde_json::to_string(&v).unwrap_or_default(),
                meta: None,
            }])
            .into(),
        )
    }

    /// 2026-07-28 subscriptions (`subscriptions/listen`): the updates of the inbox resource
    /// and of conversation resources.
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let ours: Vec<String> = requested
            .resource_subscriptions
            .as_ref()?
            .iter()
            .filter(|u| *u == INBOX_URI || conv_res::conv_of(u).is_some())
            .cloned()
            .collect();
        (!ours.is_empty()).then(|| {
            SubscriptionFilter::builder()
                .resource_subscriptions(ours)
                .build()
        })
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let uris = context
            .accepted()
            .resource_subscriptions
            .clone()
            .unwrap_or_default();
        let mut inbox = if uris.iter().any(|u| u == INBOX_URI) {
            Some(self.join().await)
        } else {
            None
        };
        let (tx, mut convs) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut stops = Vec::new();
        for u in &uris {
            if let Some(c) = conv_res::conv_of(u) {
                stops.push(self.follow_conv(u, c, tx.clone()).await);
            }
        }
        drop(tx);
        loop {
            let from_inbox = async {
                match inbox.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = context.cancelled() => break,
                got = from_inbox => match got {
                    Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if context.sink().notify_resource_updated(INBOX_URI).await.is_err() {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                Some(u) = convs.recv() => {
                    if context.sink().notify_resource_updated(u).await.is_err() {
                        break;
                    }
                }
            }
        }
        for s in stops {
            s.store(true, Ordering::SeqCst);
        }
        if inbox.is_some() {
            self.leave();
        }
        Ok(())
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        if let Some(conv) = conv_res::conv_of(&request.uri) {
            self.subscribe_conv(&request.uri, conv, context.peer.clone())
                .await;
            return Ok(());
        }
        if request.uri != INBOX_URI {
            return Err(no_resource(&request.uri));
        }
        if self
            .state
            .legacy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return Ok(()); // subscribed already: one subscription per resource
        }
        let mut rx = self.join().await;
        let (done_tx, mut done) = tokio::sync::oneshot::channel::<()>();
        *self.state.legacy.lock().unwrap_or_else(|p| p.into_inner()) = Some(done_tx);
        let (peer, me) = (context.peer.clone(), self.clone());
        tokio::spawn(async move {
            let mut unsubscribed = false;
            loop {
                tokio::select! {
                    _ = &mut done => {
                        unsubscribed = true;
                        break;
                    }
                    got = rx.recv() => match got {
                        Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let p = ResourceUpdatedNotificationParam::new(INBOX_URI);
                            if peer.notify_resource_updated(p).await.is_err() {
                                break;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
            if !unsubscribed {
                // Ended by itself (the client is gone): a later subscribe starts a new one.
                me.state
                    .legacy
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
            }
            me.leave();
        });
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        if conv_res::conv_of(&request.uri).is_some() {
            self.unsubscribe_conv(&request.uri);
        }
        if request.uri == INBOX_URI {
            if let Some(done) = self
                .state
                .legacy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                let _ = done.send(());
            }
        }
        Ok(())
    }
}

/// The answer for a URI that names none of this server's resources.
fn no_resource(uri: &str) -> McpError {
    McpError::resource_not_found(
        format!(
            "no resource {uri}; this server has {INBOX_URI} and {}{{id}} (a conversation you take part in: its 64-hex id)",
            conv_res::CONV_PREFIX
        ),
        None,
    )
}
