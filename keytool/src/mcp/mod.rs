//! `keytool mcp`: Formica as an MCP server over stdio, for LLM agents in MCP clients.
//!
//! Built on the official Rust SDK (`rmcp`), which negotiates the protocol revision with the
//! client (2024-11-05 up to 2026-07-28). Every tool is one of keytool's commands (`tools.rs`)
//! run as the identity the server was started with: no tool argument names an identity, so one
//! agent's server cannot read another's inbox. A key or relay problem is a tool error carrying
//! the protocol's error code (or keytool's own) and keytool's hint, never an empty result.
//!
//! Push: the inbox is the resource `formica://inbox`. A client that subscribes to it gets
//! `notifications/resources/updated` when a new item arrives: the server follows the relay's
//! inbox stream (resuming after its last cursor across reconnects) and coalesces bursts into
//! one notification. Reading the resource returns the items after what this session last read,
//! so reads neither skip nor repeat items.
//!
//! Standard output carries only MCP messages; anything else goes to standard error. No secret
//! is printed: the key stays in the identity file (encrypted with `FORMICA_PASSPHRASE` if it
//! was written so).

mod tools;

use crate::output::{Fail, Out};
use crate::{identity, online, watch};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents,
    ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig, SubscribeRequestParams,
    SubscriptionFilter, Tool, UnsubscribeRequestParams,
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

#[derive(Debug, Default)]
struct State {
    /// The cursor after the last item a read of the inbox resource returned.
    read_cursor: Mutex<Option<String>>,
    /// Set while the inbox is followed for a subscription; raising it stops the follower.
    watching: Mutex<Option<Arc<AtomicBool>>>,
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
    rt.block_on(async move {
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
    })
}

/// A tool's failure as MCP sees it: a tool error whose text says the code, the message and
/// the hint, with keytool's JSON failure as structured content.
fn tool_error(f: &Fail) -> CallToolResult {
    let v = tools::to_json(&f.to_value());
    let code = v["error"]["code"].as_str().unwrap_or("").to_owned();
    let mut text = format!("error [{code}]: {}", f.message);
    if let Some(h) = &f.hint {
        text.push_str(&format!("\nhint: {h}"));
    }
    let mut r = CallToolResult::structured_error(v);
    r.content = vec![ContentBlock::text(text)];
    r
}

fn tool_ok(v: Json) -> CallToolResult {
    let text = serde_json::to_string(&v).unwrap_or_default();
    let mut r = CallToolResult::structured(v);
    r.content = vec![ContentBlock::text(text)];
    r
}

impl Server {
    /// Runs `f` (keytool's blocking client) off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Config) -> T + Send + 'static,
    ) -> Result<T, McpError> {
        let cfg = self.cfg.clone();
        tokio::task::spawn_blocking(move || f(cfg))
            .await
            .map_err(|e| McpError::internal_error(format!("the tool stopped: {e}"), None))
    }

    /// Starts following the inbox for a subscription, unless it is followed already.
    fn start_watch(&self, peer: rmcp::Peer<RoleServer>) {
        let mut w = self
            .state
            .watching
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if w.is_some() {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        *w = Some(stop.clone());
        // A new item wakes the notifier; a burst while one is pending adds nothing (the
        // client reads the resource, which returns everything new).
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                let _ = peer
                    .notify_resource_updated(ResourceUpdatedNotificationParam::new(INBOX_URI))
                    .await;
            }
        });
        let cfg = self.cfg.clone();
        std::thread::spawn(move || follow_inbox(&cfg, &stop, &tx));
    }
}

/// The newest cursor of the inbox (pages through it), so that a subscription announces only
/// what arrives after it.
fn newest_cursor(ctx: &online::Ctx<'_>, identity: &str) -> Result<Option<String>, Fail> {
    let mut after: Option<String> = None;
    for _ in 0..10_000 {
        let next = online::inbox(ctx, identity, after.as_deref(), None)?;
        let got = ctx.out.take().len();
        if got == 0 || Some(next.as_str()) == after.as_deref() {
            return Ok(after);
        }
        after = Some(next);
    }
    Ok(after)
}

/// Follows the inbox until `stop`, sending a wake-up per new item; reconnects (with backoff)
/// after failures that can pass, resuming after the last item seen.
fn follow_inbox(cfg: &Config, stop: &AtomicBool, tx: &tokio::sync::mpsc::Sender<()>) {
    let out = Out::capturing();
    let ctx = online::Ctx {
        out: &out,
        home: &cfg.home,
        relay: cfg.relay.as_deref(),
    };
    let mut last: Option<Option<String>> = None;
    let mut pause = Duration::from_secs(1);
    while !stop.load(Ordering::SeqCst) {
        let res = (|| -> Result<(), Fail> {
            let s = online::session(&ctx, &cfg.identity)?;
            let from = match &last {
                Some(c) => c.clone(),
                None => {
                    let c = newest_cursor(&ctx, &cfg.identity)?;
                    last = Some(c.clone());
                    c
                }
            };
            watch::follow(&s, from, None, false, |cursor, _| {
                last = Some(Some(cursor));
                if stop.load(Ordering::SeqCst) {
                    return Ok(false);
                }
                let _ = tx.try_send(());
                Ok(true)
            })
        })();
        if let Err(f) = res {
            eprintln!(
                "keytool mcp: following the inbox: {}; again in {} s",
                f.message,
                pause.as_secs()
            );
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(60));
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
            "Formica messaging for this agent's identity. Use wait_for_messages (pass back `next`) or subscribe to formica://inbox to receive; send to reach other agents (a contact_request first for strangers); ack what asks for an ack.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let tools = tools::TOOLS
            .iter()
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
        if !tools::TOOLS.iter().any(|t| t.name == name) {
            return Err(McpError::invalid_params(
                format!("no tool named {name:?}"),
                None,
            ));
        }
        let args = request.arguments.unwrap_or_default();
        let res = self
            .blocking(move |cfg| tools::call(&cfg, &name, &args))
            .await?;
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

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        if request.uri != INBOX_URI {
            return Err(McpError::resource_not_found(
                format!("no resource {}; this server has {INBOX_URI}", request.uri),
                None,
            ));
        }
        let state = self.state.clone();
        let after = state
            .read_cursor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let res = self
            .blocking(move |cfg| {
                let out = Out::capturing();
                let ctx = online::Ctx {
                    out: &out,
                    home: &cfg.home,
                    relay: cfg.relay.as_deref(),
                };
                tools::page(&ctx, &cfg.identity, after, None, None)
            })
            .await?;
        let v = res.map_err(|f| {
            McpError::internal_error(
                format!(
                    "reading the inbox: {}",
                    tool_error(&f)
                        .content
                        .first()
                        .and_then(|c| c.as_text())
                        .map(|t| t.text.clone())
                        .unwrap_or_default()
                ),
                Some(tools::to_json(&f.to_value())),
            )
        })?;
        if let Some(next) = v["next"].as_str() {
            *state.read_cursor.lock().unwrap_or_else(|p| p.into_inner()) = Some(next.to_owned());
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

    /// 2026-07-28 subscriptions (`subscriptions/listen`): the inbox resource's updates.
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let wants = requested
            .resource_subscriptions
            .as_ref()?
            .iter()
            .any(|u| u == INBOX_URI);
        wants.then(|| {
            SubscriptionFilter::builder()
                .resource_subscriptions([INBOX_URI])
                .build()
        })
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let (cfg, s2) = (self.cfg.clone(), stop.clone());
        std::thread::spawn(move || follow_inbox(&cfg, &s2, &tx));
        loop {
            tokio::select! {
                _ = context.cancelled() => break,
                got = rx.recv() => match got {
                    Some(()) => {
                        if context.sink().notify_resource_updated(INBOX_URI).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
        stop.store(true, Ordering::SeqCst);
        Ok(())
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        if request.uri != INBOX_URI {
            return Err(McpError::resource_not_found(
                format!("no resource {}; this server has {INBOX_URI}", request.uri),
                None,
            ));
        }
        self.start_watch(context.peer.clone());
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        if request.uri == INBOX_URI {
            if let Some(stop) = self
                .state
                .watching
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                stop.store(true, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}
