//! The edge (SPEC.md section 15 and the relay endpoints of section 16): the router, one module
//! per resource group, the shared request helpers, the error rendering, the body deadline and
//! the accept loop with its connection guards.
//!
//! Handlers turn bytes into typed, verified values once, here, and hand them to the single
//! writer as commands; they read the durable state but never change it (only the engine's
//! writer can). May import: `federation`, `engine`, `store`. A handler module imports the
//! helpers (`answer`, `request`, `server`'s connection extensions) and this module, never
//! another handler module; `request` imports no handler.

pub mod admin;
pub mod agents;
pub mod answer;
pub mod contacts;
pub mod conversations;
pub mod deadline;
pub mod envelopes;
pub mod federation;
pub mod inbox;
pub mod messages;
pub mod observe;
pub mod ops;
pub mod presence;
pub mod profiles;
pub mod replicas;
pub mod request;
pub mod server;
pub mod stream;

use crate::engine::limits::{Buckets, Challenges, Nonces};
use crate::engine::Engine;
use crate::federation::Federation;
use axum::routing::{get, post};
use axum::Router;
use formica_protocol::KeyId;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

/// Everything the handlers share: the engine, the federation client, and the edge's own
/// in-memory admission tables.
pub struct App {
    pub engine: Arc<Engine>,
    pub fed: Federation,
    pub challenges: Mutex<Challenges>,
    pub nonces: Mutex<Nonces>,
    pub key_buckets: Mutex<Buckets<KeyId>>,
    pub ip_buckets: Mutex<Buckets<IpAddr>>,
    /// Directory searches per agent (PROF-9).
    pub search_buckets: Mutex<Buckets<formica_protocol::Handle>>,
    /// Federated searches in progress (`directory.federated_searches_max`).
    pub federated_searches: Arc<tokio::sync::Semaphore>,
    /// Presence statuses and heartbeats per agent (PRES-3).
    pub presence_buckets: Mutex<Buckets<formica_protocol::Handle>>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Bearer token of the admin endpoints (set when the relay runs on a data directory).
    pub admin_token: OnceLock<String>,
    /// The data directory the relay serves (set when it runs on one): a backup copies its key
    /// and host files.
    pub data_dir: OnceLock<std::path::PathBuf>,
    /// True while an admin check or backup runs (one at a time: each is as costly as a start).
    pub admin_busy: std::sync::atomic::AtomicBool,
    /// Key log look-ups of remote handles in flight (`federation.keylog_lookups_max`).
    pub keylog_lookups: Arc<tokio::sync::Semaphore>,
    /// Requests by route and status, refusals by code, latencies (`/metrics`).
    pub http_metrics: observe::HttpMetrics,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "App({})", self.engine.host)
    }
}

pub type Shared = Arc<App>;

impl App {
    /// The edge of `engine`, with its tables sized by the engine's policy, and the nonces and
    /// challenges that were live when the relay last stopped.
    pub fn new(engine: Arc<Engine>, trusted_proxies: Vec<IpAddr>) -> App {
        let limits = &engine.policy.limits;
        let (nonces, challenges) = restore_admission(&engine);
        App {
            challenges: Mutex::new(challenges),
            nonces: Mutex::new(nonces),
            key_buckets: Mutex::new(Buckets::new(limits.rate_limit_keys_max)),
            ip_buckets: Mutex::new(Buckets::new(limits.rate_limit_keys_max)),
            search_buckets: Mutex::new(Buckets::new(limits.rate_limit_keys_max)),
            presence_buckets: Mutex::new(Buckets::new(limits.rate_limit_keys_max)),
            federated_searches: Arc::new(tokio::sync::Semaphore::new(
                engine.policy.directory.federated_searches_max,
            )),
            trusted_proxies,
            admin_token: OnceLock::new(),
            data_dir: OnceLock::new(),
            admin_busy: std::sync::atomic::AtomicBool::new(false),
            keylog_lookups: Arc::new(tokio::sync::Semaphore::new(
                engine.policy.federation.keylog_lookups_max,
            )),
            http_metrics: observe::HttpMetrics::default(),
            fed: Federation::new(engine.clone()),
            engine,
        }
    }
}

/// The router with every endpoint, serving `app`.
pub fn router(app: Shared) -> Router {
    bind(routes(), app)
}

/// Every endpoint, not yet bound to a relay. Building it is most of the cost of [`router`]; a
/// caller that serves many short-lived relays (the `relay_http` fuzz target) builds it once and
/// binds a clone of it to each relay with [`bind`].
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/.well-known/formica", get(ops::descriptor))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/v1/openapi.json", get(ops::openapi))
        .route("/v1/challenges", post(agents::challenge))
        .route("/v1/register", post(agents::register))
        .route(
            "/v1/keys/{handle}",
            get(agents::get_keys).post(agents::post_key_entry),
        )
        .route("/v1/envelopes", post(envelopes::post_envelope))
        .route("/v1/envelopes/batch", post(envelopes::post_batch))
        .route("/v1/inbox", get(inbox::inbox))
        .route("/v1/inbox/stream", get(inbox::sse))
        .route("/v1/inbox/ws", get(inbox::ws))
        .route("/v1/messages/{id}", get(messages::message_status))
        .route("/v1/conversations", get(conversations::list))
        .route("/v1/conversations/{id}", get(conversations::get))
        .route(
            "/v1/conversations/{id}/entries",
            get(conversations::entries),
        )
        .route("/v1/conversations/{id}/stream", get(conversations::sse))
        .route("/v1/conversations/{id}/ws", get(conversations::ws))
        .route("/v1/contacts", get(contacts::list_contacts))
        .route(
            "/v1/contacts/{handle}",
            axum::routing::put(contacts::put_contact).delete(contacts::delete_contact),
        )
        .route("/v1/contact-requests", get(contacts::list_requests))
        .route(
            "/v1/contact-requests/{id}/accept",
            post(contacts::accept_request),
        )
        .route(
            "/v1/contact-requests/{id}/reject",
            post(contacts::reject_request),
        )
        .route("/v1/profile", axum::routing::put(profiles::put_profile))
        .route("/v1/profiles/{handle}", get(profiles::get_profile))
        .route(
            "/v1/profiles/{handle}/agent-card",
            get(profiles::agent_card),
        )
        .route("/v1/directory", get(profiles::directory))
        .route(
            "/v1/presence",
            get(presence::list_presence).put(presence::put_status),
        )
        .route("/v1/presence/heartbeat", post(presence::heartbeat))
        .route("/v1/presence/{handle}", get(presence::get_presence))
        .route("/v1/federation/peers", post(federation::handshake))
        .route("/v1/federation/transfer", post(federation::transfer))
        .route("/v1/federation/keylog", post(federation::keylog_push))
        .route("/v1/federation/conversation", post(replicas::conversation))
        .route("/v1/federation/directory", get(federation::directory))
        .route(
            "/admin/v1/peers",
            get(admin::admin_list).post(admin::admin_add),
        )
        .route(
            "/admin/v1/peers/{host}",
            axum::routing::delete(admin::admin_remove),
        )
        .route("/admin/v1/peers/{host}/approve", post(admin::admin_approve))
        .route("/admin/v1/check", post(admin::admin_check))
        .route("/admin/v1/backup", post(admin::admin_backup))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
}

/// `routes` serving `app`, with the request body deadline around every endpoint.
pub fn bind(routes: Router<Shared>, app: Shared) -> Router {
    routes
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            deadline::body_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            observe::observe,
        ))
        .with_state(app)
}

/// The nonce and challenge tables as the store kept them (`engine::limits`); expired rows are
/// removed with the writer's next commit. A row that does not read back is removed too (it
/// cannot be checked against anything).
fn restore_admission(engine: &Engine) -> (Nonces, Challenges) {
    use crate::engine::limits::Journal;
    let l = &engine.policy.limits;
    let mut nonces = Nonces::new(l.nonces_max, l.nonces_per_handle_max);
    let mut challenges = Challenges::new(l.challenges_max, l.challenges_per_ip_max);
    let now = engine.now();
    let retention = engine.policy.time.retention_ms();
    let mut bad = Journal::new();
    let read = engine
        .store()
        .range(crate::store::Table::Admission, &[], None, &mut |k, v| {
            let text = std::str::from_utf8(k).unwrap_or("");
            let mut parts = text.split('\0');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("n"), Some(h), Some(n)) => {
                    let h = formica_protocol::Handle::parse(h).ok();
                    let n = formica_protocol::auth::Nonce::parse_hex(n);
                    let at = v
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .map(i64::from_be_bytes);
                    match (h, n, at) {
                        (Some(h), Some(n), Some(at)) => nonces.restore(h, n, at, now, retention),
                        _ => {
                            bad.insert(k.to_vec(), None);
                        }
                    }
                }
                (Some("c"), Some(c), None) => {
                    match formica_protocol::pow::Challenge::parse_hex(c) {
                        Some(c) => challenges.restore(c, v, now),
                        None => {
                            bad.insert(k.to_vec(), None);
                        }
                    }
                }
                _ => {
                    bad.insert(k.to_vec(), None);
                }
            }
            true
        });
    if let Err(e) = read {
        tracing::warn!(error = %e, "the stored request nonces and challenges could not be read; they start empty");
    }
    nonces.restored();
    challenges.restored();
    engine.journal(&mut nonces.journal);
    engine.journal(&mut challenges.journal);
    engine.journal(&mut bad);
    (nonces, challenges)
}
