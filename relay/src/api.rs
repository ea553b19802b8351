//! The client HTTP API (SPEC.md section 15): routing, request parsing at the edge, and answers.
//!
//! Handlers turn bytes into typed, verified values and hand them to the single writer; they
//! never change state themselves. Every error answer goes through [`ApiError`].

use crate::decide::{Command, Outcome};
use crate::error::{json_response, ApiError};
use crate::limits::{Buckets, ChallengeState, Challenges, Nonces};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::state::State;
use crate::writer::{Clock, Notifier, Writer};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State as AxState};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use formica_protocol::auth::{RequestAuth, RequestTarget};
use formica_protocol::envelope::{ContactLevel, EnvelopeLimits, MessageId, SignedEnvelope};
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::keylog::{KeyLog, KeyOp, SignedKeyLogEntry};
use formica_protocol::pow::{self, Challenge, PowProof};
use formica_protocol::schema::Fields;
use formica_protocol::{canon, ErrorCode, Handle, KeyId, Object, RelayHost, SecretKey, Value};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Everything the handlers share.
pub struct App {
    pub host: RelayHost,
    pub policy: Arc<Policy>,
    pub state: Arc<crate::writer::StateCell>,
    pub writer: Writer,
    pub notifier: Arc<Notifier>,
    pub relay_key: SecretKey,
    pub clock: Clock,
    pub challenges: Mutex<Challenges>,
    pub nonces: Mutex<Nonces>,
    pub key_buckets: Mutex<Buckets<KeyId>>,
    pub ip_buckets: Mutex<Buckets<IpAddr>>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    pub metrics: Metrics,
    pub ready: AtomicBool,
    /// Becomes true when shutdown starts; open streams end so the drain can finish.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Bearer token of the admin endpoints (set when the relay runs on a data directory).
    pub admin_token: std::sync::OnceLock<String>,
    /// The relay-to-relay HTTP client.
    pub peer_client: crate::federation::PeerClient,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "App({})", self.host)
    }
}

pub type Shared = Arc<App>;

impl App {
    pub fn now(&self) -> i64 {
        (self.clock)()
    }
    /// The durable state (see [`crate::writer::StateCell`]).
    fn read(&self) -> crate::writer::Durable<'_> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
    fn json_limits(&self, bytes_max: usize) -> JsonLimits {
        JsonLimits {
            bytes_max,
            depth_max: self.policy.limits.json_depth_max,
        }
    }
    fn envelope_limits(&self) -> EnvelopeLimits {
        EnvelopeLimits {
            json: self.json_limits(self.policy.limits.envelope_bytes_max),
            recipients_max: self.policy.limits.recipients_max,
            // An envelope over every tier's payload cap is refused at parse time (INGEST-1
            // step 4); the sender's own tier cap is applied at step 10.
            payload_bytes_max: self
                .policy
                .tiers
                .iter()
                .map(|t| t.payload_bytes_max)
                .max()
                .unwrap_or(0),
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
        .route("/.well-known/formica", get(descriptor))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/challenges", post(challenge))
        .route("/v1/register", post(register))
        .route("/v1/keys/{handle}", get(get_keys).post(post_key_entry))
        .route("/v1/envelopes", post(post_envelope))
        .route("/v1/envelopes/batch", post(post_batch))
        .route("/v1/inbox", get(crate::stream::inbox))
        .route("/v1/inbox/stream", get(crate::stream::sse))
        .route("/v1/inbox/ws", get(crate::stream::ws))
        .route("/v1/messages/{id}", get(message_status))
        .route("/v1/contacts", get(list_contacts))
        .route(
            "/v1/contacts/{handle}",
            axum::routing::put(put_contact).delete(delete_contact),
        )
        .route("/v1/contact-requests", get(list_requests))
        .route("/v1/contact-requests/{id}/accept", post(accept_request))
        .route("/v1/contact-requests/{id}/reject", post(reject_request))
        .route("/v1/federation/peers", post(crate::federation::handshake))
        .route("/v1/federation/transfer", post(crate::federation::transfer))
        .route(
            "/v1/federation/keylog",
            post(crate::federation::keylog_push),
        )
        .route(
            "/admin/v1/peers",
            get(crate::federation::admin_list).post(crate::federation::admin_add),
        )
        .route(
            "/admin/v1/peers/{host}",
            axum::routing::delete(crate::federation::admin_remove),
        )
        .route(
            "/admin/v1/peers/{host}/approve",
            post(crate::federation::admin_approve),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// `routes` serving `app`, with the request body deadline around every endpoint.
pub fn bind(routes: Router<Shared>, app: Shared) -> Router {
    routes
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::deadline::body_deadline,
        ))
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not accept that method",
    )
}

pub fn ok(status: u16, v: Value) -> Response {
    json_response(status, &v)
}

fn obj(members: Vec<(&str, Value)>) -> Value {
    let mut o = Object::new();
    for (k, v) in members {
        o.insert(k, v);
    }
    Value::Object(o)
}

/// Reads a body of at most `max` bytes; a larger one is `too_large` (also when chunked), one
/// that is not complete by the body read deadline is `request_timeout` (`crate::deadline`).
pub async fn read_body(body: Body, max: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, max).await.map_err(|e| {
        if crate::deadline::is_timeout(&e) {
            ApiError::new(ErrorCode::RequestTimeout, e.to_string())
        } else {
            ApiError::new(
                ErrorCode::TooLarge,
                format!("the body is larger than {max} bytes"),
            )
        }
    })
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the address
/// that the nearest untrusted hop was seen from (see `forwarded_client`). A header from an
/// untrusted peer is ignored.
pub fn client_ip(app: &App, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
    Some(forwarded_client(peer?.ip(), &app.trusted_proxies, headers))
}

/// Reads `X-Forwarded-For` the way only trusted proxies can have written it. All its lines are
/// taken together, in order, as one comma-separated list (RFC 9110 section 5.3: a proxy may
/// append a line instead of extending the last one), and read from the right: each trusted
/// proxy appends the address it was connected from, so the rightmost address that is not a
/// trusted proxy is the client. Anything left of it was written by the client and is not
/// believed. Each hop is decoded on its own (bytes that are not UTF-8 in the client's part
/// cannot spoil the proxy's), may carry a port (`192.0.2.7:5000`, `[2001:db8::1]:443`) or
/// brackets, and IPv4-mapped IPv6 addresses count as their IPv4 address, in the peer, the hops
/// and the trusted list alike. A hop that does not parse before an untrusted address is found
/// gives the peer itself, so that garbage never makes up an address.
pub fn forwarded_client(peer: IpAddr, trusted: &[IpAddr], headers: &HeaderMap) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|t| t.to_canonical() == ip);
    if !is_trusted(peer) {
        return peer;
    }
    let lines: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    for hop in lines.iter().rev().flat_map(|l| l.rsplit(|b| *b == b',')) {
        match parse_hop(hop) {
            Some(ip) if is_trusted(ip) => continue,
            Some(ip) => return ip,
            None => return peer,
        }
    }
    peer
}

/// One `X-Forwarded-For` hop: an address, optionally with a port or in brackets.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(hop).ok()?.trim();
    let ip = text
        .parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            text.strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<IpAddr>().ok())
        })?;
    Some(ip.to_canonical())
}

pub(crate) fn ip_limit(
    app: &App,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let Some(ip) = client_ip(app, peer, headers) else {
        return Ok(());
    };
    let per_min = app.policy.limits.ip_requests_per_min;
    let mut b = app.ip_buckets.lock().unwrap_or_else(|p| p.into_inner());
    b.take(&ip, per_min, per_min.max(1), app.now())
        .map_err(|wait| {
            ApiError::new(
                ErrorCode::RateLimited,
                format!("{per_min} requests per minute from one address"),
            )
            .with("retry_after_s", Value::Int(wait))
        })
}

/// AUTH-1..6: checks an `Authorization: Formica` header and returns the agent it proves.
pub fn authenticate(
    app: &App,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Handle, ApiError> {
    if headers.get_all("authorization").iter().count() > 1 {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "exactly one Authorization header is allowed",
        ));
    }
    let value = headers
        .get("authorization")
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "this endpoint needs an Authorization: Formica header",
            )
        })?
        .to_str()
        .map_err(|_| ApiError::new(ErrorCode::Unauthorized, "Authorization header is not ASCII"))?;
    let auth = RequestAuth::parse(value).map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    if auth.handle.host() != &app.host {
        return Err(ApiError::new(
            ErrorCode::WrongRelay,
            format!(
                "the request is signed for {}, this relay is {}",
                auth.handle.host(),
                app.host
            ),
        ));
    }
    let now = app.now();
    app.policy.time.check(auth.ts, now)?;
    let key = {
        let st = app.read();
        let agent = st.agents.get(&auth.handle).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                format!("{} is not registered here", auth.handle),
            )
        })?;
        *agent
            .keylog
            .key_at(&auth.key, auth.ts)
            .map_err(|e| ApiError::new(ErrorCode::Unauthorized, e.to_string()))?
    };
    let target = RequestTarget {
        method: method.as_str(),
        path,
        body,
    };
    auth.verify(&key, &target, &app.host)
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    app.nonces
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            &auth.handle,
            auth.nonce,
            now,
            app.policy.time.retention_ms(),
        )
        .map_err(|r| r.to_error("request"))?;
    Ok(auth.handle)
}

/// Splits a request into what authentication needs.
pub async fn auth_request(
    app: &App,
    req: Request,
    body_max: usize,
) -> Result<(Handle, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| parts.uri.path().to_owned());
    let body = read_body(body, body_max).await?;
    let h = authenticate(app, &parts.method, &path, &parts.headers, &body)?;
    Ok((h, body))
}

/// A `{handle}` path parameter. A segment that does not percent-decode to UTF-8 is refused with
/// the spec's error body (`invalid_handle`, HTTP-9) rather than the framework's plain-text answer.
#[derive(Debug)]
pub struct HandleParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for HandleParam {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(s)) => Ok(HandleParam(s)),
            Err(e) => Err(ApiError::new(
                ErrorCode::InvalidHandle,
                format!("the handle in the path: {e}"),
            )
            .with("field", "handle".into())),
        }
    }
}

/// An `{id}` path parameter; an undecodable one names nothing (`not_found`).
#[derive(Debug)]
pub struct IdParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IdParam {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(s)) => Ok(IdParam(s)),
            Err(_) => Err(ApiError::new(ErrorCode::NotFound, "no such resource")),
        }
    }
}

fn parse_handle(app: &App, s: &str) -> Result<Handle, ApiError> {
    Handle::parse_with_home(s, &app.host)
        .map_err(|e| ApiError::new(e.code(), e.to_string()).with("field", "handle".into()))
}

// ---------------------------------------------------------------- descriptor and health

/// The signed relay descriptor (SPEC.md 15.1).
pub fn descriptor_value(app: &App) -> Value {
    let mut o = Object::new();
    o.insert("v", Value::Int(1));
    o.insert("relay", app.host.as_str().into());
    o.insert("key", app.relay_key.public().to_hex().into());
    o.insert("key_id", app.relay_key.public().key_id().to_hex().into());
    o.insert("versions", Value::Array(vec![Value::Int(1)]));
    o.insert(
        "software",
        concat!("formica-relay/", env!("CARGO_PKG_VERSION")).into(),
    );
    o.insert("ts", Value::Int(app.now()));
    app.policy.descriptor_members(&mut o);
    let sig = app.relay_key.sign(
        formica_protocol::Domain::Descriptor,
        &canon::canonicalize(&Value::Object(o.clone())),
    );
    o.insert("sig", sig.to_hex().into());
    Value::Object(o)
}

async fn descriptor(AxState(app): AxState<Shared>) -> Response {
    ok(200, descriptor_value(&app))
}

async fn health() -> Response {
    ok(200, obj(vec![("status", "ok".into())]))
}

async fn ready(AxState(app): AxState<Shared>) -> Response {
    if app.ready.load(Ordering::Relaxed) {
        ok(200, obj(vec![("status", "ready".into())]))
    } else {
        ApiError::new(
            ErrorCode::Unavailable,
            "the relay is starting or shutting down",
        )
        .into_response()
    }
}

async fn metrics(AxState(app): AxState<Shared>) -> Response {
    let text = app.metrics.render(&app);
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

async fn openapi() -> Response {
    ([("content-type", "application/json")], crate::OPENAPI_JSON).into_response()
}

// ---------------------------------------------------------------- registration

fn peer(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

async fn challenge(AxState(app): AxState<Shared>, req: Request) -> Response {
    if let Err(e) = ip_limit(&app, peer(&req), req.headers()) {
        return e.into_response();
    }
    let mut c = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut c);
    let c = Challenge(c);
    let expires = app.now() + app.policy.limits.challenge_ttl_ms;
    let difficulty = app.policy.pow_difficulty;
    app.challenges
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .issue(c, expires, difficulty);
    ok(
        201,
        obj(vec![
            ("challenge", c.to_hex().into()),
            ("difficulty", Value::Int(i64::from(difficulty))),
            ("expires", Value::Int(expires)),
            ("relay", app.host.as_str().into()),
        ]),
    )
}

async fn register(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        ip_limit(&app, peer(&req), req.headers())?;
        let body = read_body(req.into_body(), app.policy.limits.body_bytes_max).await?;
        let v = json::parse(&body, app.json_limits(app.policy.limits.body_bytes_max))?;
        let mut f = Fields::new(&v, "")?;
        let entry_v = f.req("entry")?.clone();
        let pow_v = f.opt("pow").cloned();
        f.finish()?;
        let entry = SignedKeyLogEntry::from_value(entry_v).map_err(|e| ApiError::from(e).under("entry"))?;
        let e = entry.entry();
        if e.handle.host() != &app.host {
            return Err(ApiError::new(
                ErrorCode::WrongRelay,
                format!("{} is homed on {}, this relay is {}", e.handle, e.handle.host(), app.host),
            ));
        }
        if e.handle.name().is_reserved() {
            return Err(ApiError::new(ErrorCode::HandleReserved, format!("{} is a reserved name", e.handle.local())));
        }
        if !matches!(e.op, KeyOp::Register { .. }) || e.seq != 0 {
            return Err(ApiError::new(ErrorCode::InvalidField, "registration takes a register entry with seq 0").with("field", "entry.op".into()));
        }
        let now = app.now();
        app.policy.time.check(e.ts, now)?;
        // Signature and key checks: the entry must start a valid log.
        let log = KeyLog::start(entry.clone())?;
        let key = *log.current_key().ok_or_else(|| ApiError::internal("register without key"))?;
        let pow_v = pow_v.ok_or_else(|| ApiError::new(ErrorCode::PowMissing, "registration needs a proof-of-work (`pow`)"))?;
        let proof = PowProof::from_value(&pow_v, "pow")?;
        let difficulty = match app.challenges.lock().unwrap_or_else(|p| p.into_inner()).check(&proof.challenge, now) {
            ChallengeState::Open { difficulty } => difficulty,
            ChallengeState::Expired => return Err(ApiError::new(ErrorCode::ChallengeExpired, "the challenge expired; fetch a new one")),
            ChallengeState::Unknown => {
                let used = app.read().challenges_used.contains(&proof.challenge);
                return Err(if used {
                    ApiError::new(ErrorCode::ChallengeUsed, "this challenge was already used; fetch a new one")
                } else {
                    ApiError::new(ErrorCode::ChallengeUnknown, "this relay did not issue that challenge (or has restarted); fetch a new one")
                });
            }
        };
        let prefix = pow::preimage_prefix(&app.host, &e.handle, &key, &proof.challenge, proof.difficulty);
        pow::check(&prefix, &proof, difficulty).map_err(|err| ApiError::new(err.code(), err.to_string()))?;
        let out = app.writer.submit(Command::Register { entry, challenge: proof.challenge }).await?;
        app.challenges.lock().unwrap_or_else(|p| p.into_inner()).consume(&proof.challenge);
        match out {
            Outcome::Registered { handle, key_id, head } => {
                app.metrics.registrations.fetch_add(1, Ordering::Relaxed);
                Ok(ok(201, obj(vec![("handle", handle.as_str().into()), ("key_id", key_id.into()), ("head", head.into())])))
            }
            other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
        }
    }
    .await;
    res.unwrap_or_else(IntoResponse::into_response)
}

// ---------------------------------------------------------------- key logs

/// The key log answer (API-5): what every log has, plus the members that differ between a log
/// this relay homes (`tier`, `registered`) and a cached remote one (`cached`).
fn log_value(
    h: &Handle,
    log: &KeyLog,
    conflicts: &[SignedKeyLogEntry],
    extra: Vec<(&str, Value)>,
) -> Value {
    let hex_or_null = |k: Option<&formica_protocol::PublicKey>| {
        k.map(|k| Value::from(k.to_hex())).unwrap_or(Value::Null)
    };
    let entries =
        |es: &[SignedKeyLogEntry]| Value::Array(es.iter().map(|e| e.value().clone()).collect());
    let mut members = vec![
        ("handle", h.as_str().into()),
        ("entries", entries(log.entries())),
        ("head", log.head().hash().to_hex().into()),
        ("current_key", hex_or_null(log.current_key())),
        ("recovery_key", hex_or_null(log.recovery_key())),
        (
            "moved_to",
            log.moved_to()
                .map(|h| Value::from(h.as_str()))
                .unwrap_or(Value::Null),
        ),
        ("conflicts", entries(conflicts)),
    ];
    members.extend(extra);
    obj(members)
}

fn keylog_value(app: &App, st: &State, a: &crate::state::Agent) -> Value {
    let tier = st.tier_of(&a.handle, app.now(), &app.policy);
    let tier_name = app
        .policy
        .tiers
        .get(tier)
        .map(|t| Value::from(t.name.as_str()))
        .unwrap_or(Value::Null);
    log_value(
        &a.handle,
        &a.keylog,
        &a.conflicts,
        vec![
            ("tier", tier_name),
            ("registered", Value::Int(a.registered_at)),
        ],
    )
}

fn remote_keylog_value(h: &Handle, r: &crate::state::RemoteLog) -> Value {
    log_value(
        h,
        &r.log,
        &r.conflicts,
        vec![
            ("tier", Value::Null),
            ("registered", Value::Null),
            ("cached", Value::Bool(true)),
        ],
    )
}

async fn get_keys(AxState(app): AxState<Shared>, HandleParam(handle): HandleParam) -> Response {
    let res = (|| {
        let h = parse_handle(&app, &handle)?;
        let st = app.read();
        if let (None, Some(r)) = (st.agents.get(&h), st.remote_logs.get(&h)) {
            // A remote agent's log as cached here (FED-8), with any conflicting entries kept
            // as evidence; its home relay is the authority.
            return Ok(ok(200, remote_keylog_value(&h, r)));
        }
        let a = st.agents.get(&h).ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("{h} is not registered here"))
        })?;
        Ok::<_, ApiError>(ok(200, keylog_value(&app, &st, a)))
    })();
    res.unwrap_or_else(IntoResponse::into_response)
}

async fn post_key_entry(
    AxState(app): AxState<Shared>,
    HandleParam(handle): HandleParam,
    req: Request,
) -> Response {
    let res = async {
        let h = parse_handle(&app, &handle)?;
        let body = read_body(req.into_body(), app.policy.limits.body_bytes_max).await?;
        let entry =
            SignedKeyLogEntry::parse(&body, app.json_limits(app.policy.limits.body_bytes_max))?;
        if entry.entry().handle != h {
            return Err(ApiError::new(
                ErrorCode::KeylogHandleMismatch,
                format!(
                    "the entry is for {}, the path names {h}",
                    entry.entry().handle
                ),
            ));
        }
        if matches!(entry.entry().op, KeyOp::Register { .. }) {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "register entries go to /v1/register",
            )
            .with("field", "op".into()));
        }
        app.policy.time.check(entry.entry().ts, app.now())?;
        let entry_wire = entry.value().clone();
        match app.writer.submit(Command::KeyLog { entry }).await? {
            Outcome::KeyLogAppended { seq, head } => {
                // FED-8: peers that cached this log learn the change now, not at the next miss.
                tokio::spawn(crate::federation::push_keylog(app.clone(), entry_wire));
                Ok(ok(
                    201,
                    obj(vec![("seq", Value::Int(seq)), ("head", head.into())]),
                ))
            }
            Outcome::KeyLogDuplicate => Ok(ok(200, obj(vec![("result", "duplicate".into())]))),
            Outcome::KeyLogForked => Err(ApiError::new(
                ErrorCode::KeylogFork,
                "a different valid entry already holds this position; this one is kept as evidence",
            )),
            other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
        }
    }
    .await;
    res.unwrap_or_else(IntoResponse::into_response)
}

// ---------------------------------------------------------------- envelopes

/// Steps 1-9 of the ingest pipeline (SPEC.md 15.9); the writer does 7-13 against the state.
///
/// 1. size limit (done by the caller when reading the body)
/// 2. to 5. strict parse, version and type, schema, canonical signing input and id (done by
///    `SignedEnvelope::parse` before this is called)
/// 6. freshness and skew
/// 7. dedup (a cheap early answer; the writer checks again)
/// 8. sender homed here, key valid at the envelope's time
/// 9. strict signature check
/// 10. per-key rate limit (the writer applies the rest of the policy)
pub fn verify_envelope(
    app: &App,
    se: SignedEnvelope,
) -> Result<Result<formica_protocol::VerifiedEnvelope, MessageId>, ApiError> {
    let env = se.envelope();
    // 6. Freshness (the error carries the relay's time).
    app.policy.time.check(env.ts, app.now())?;
    if env.from.is_relay() {
        return Err(ApiError::new(
            ErrorCode::TypeReserved,
            "only relays send as @relay, and not through this endpoint",
        ));
    }
    // 7 and 8 against the state including the batch the writer may be making durable, so that
    // signature checks are not held up by its fsync. Anything but "go on with this key" is
    // looked up again in the durable state before it is answered: a `duplicate` or a refusal of
    // the sender or key is never based on an event that could still be lost. (The tier for the
    // rate limit may be; a `rate_limited` answer is retried anyway.)
    let (key, tier) = {
        let st = app.state.read_unsettled();
        match sender_key(app, &st, &se) {
            Ok(Some(key)) => (key, tier_index(app, &st, &env.from)),
            _ => {
                drop(st);
                let st = app.read();
                match sender_key(app, &st, &se)? {
                    None => return Ok(Err(se.id())),
                    Some(key) => (key, tier_index(app, &st, &env.from)),
                }
            }
        }
    };
    // 9. Strict signature.
    let verified = se.verify(&key)?;
    // 10 (first part). Per-key rate limit by tier.
    let tier = &app.policy.tiers[tier];
    let (per_min, tier_name) = (tier.rate_per_min, &tier.name);
    let burst = (per_min / 4).max(10);
    app.key_buckets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take(&verified.envelope().key, per_min, burst, app.now())
        .map_err(|wait| {
            ApiError::new(
                ErrorCode::RateLimited,
                format!("tier {tier_name} allows {per_min} envelopes per minute"),
            )
            .with("retry_after_s", Value::Int(wait))
        })?;
    Ok(Ok(verified))
}

/// Steps 7 and 8 of ingest: `None` for a duplicate, else the key valid for the envelope.
fn sender_key(
    app: &App,
    st: &State,
    se: &SignedEnvelope,
) -> Result<Option<formica_protocol::PublicKey>, ApiError> {
    let env = se.envelope();
    // 7. Dedup before the key lookup, so a replay after a rotation is still `duplicate`.
    if st.seen.contains(&se.id()) {
        return Ok(None);
    }
    if env.from.host() != &app.host {
        return Err(ApiError::new(
            ErrorCode::UnknownSender,
            format!("{} is not homed on this relay", env.from),
        ));
    }
    let (_, key) = crate::decide::local_sender(st, env)?;
    Ok(Some(*key))
}

/// The sender's tier (an index into the policy's tiers).
fn tier_index(app: &App, st: &State, from: &Handle) -> usize {
    st.tier_of(from, app.now(), &app.policy)
        .min(app.policy.tiers.len() - 1)
}

fn accepted_value(out: &Outcome) -> Result<(u16, Value), ApiError> {
    match out {
        Outcome::Accepted { id } => Ok((
            201,
            obj(vec![
                ("id", id.to_hex().into()),
                ("result", "accepted".into()),
            ]),
        )),
        Outcome::Duplicate { id } => Ok((
            200,
            obj(vec![
                ("id", id.to_hex().into()),
                ("result", "duplicate".into()),
            ]),
        )),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

async fn ingest(app: &App, se: SignedEnvelope) -> Result<Outcome, ApiError> {
    match verify_envelope(app, se)? {
        Err(id) => Ok(Outcome::Duplicate { id }),
        Ok(v) => app.writer.submit(Command::Envelope { env: v }).await,
    }
}

async fn post_envelope(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let body = read_body(req.into_body(), app.policy.limits.envelope_bytes_max).await?;
        let se = SignedEnvelope::parse(&body, &app.envelope_limits())?;
        let out = ingest(&app, se).await?;
        app.metrics.count(&out);
        let (status, v) = accepted_value(&out)?;
        Ok(ok(status, v))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| {
        app.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        e.into_response()
    })
}

/// The `envelopes` array of a batch or transfer body whose schema was checked, taken out of
/// the parsed value rather than copied.
pub(crate) fn take_envelopes(body: Value) -> Vec<Value> {
    match body {
        Value::Object(mut o) => match o.remove("envelopes") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

async fn post_batch(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let l = &app.policy.limits;
        let body = read_body(req.into_body(), l.batch_bytes_max).await?;
        // The batch adds two levels (object, array) above each envelope.
        let v = json::parse(
            &body,
            JsonLimits {
                bytes_max: l.batch_bytes_max,
                depth_max: l.json_depth_max + 2,
            },
        )?;
        let mut f = Fields::new(&v, "")?;
        if f.req("envelopes")?.as_array().is_none() {
            return Err(
                ApiError::new(ErrorCode::InvalidField, "`envelopes` is an array")
                    .with("field", "envelopes".into()),
            );
        }
        f.finish()?;
        let items = take_envelopes(v);
        if items.len() > l.batch_envelopes_max {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "{} envelopes; a batch holds at most {}",
                    items.len(),
                    l.batch_envelopes_max
                ),
            ));
        }
        // Verify all, then submit all at once so they share the writer's batch.
        let mut pending = Vec::with_capacity(items.len());
        for item in items {
            let size = canon::canonical_len(&item);
            let r = if size > l.envelope_bytes_max {
                Err(ApiError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "envelope is {size} bytes, more than {}",
                        l.envelope_bytes_max
                    ),
                ))
            } else {
                SignedEnvelope::from_value(item, &app.envelope_limits())
                    .map_err(ApiError::from)
                    .and_then(|se| verify_envelope(&app, se))
            };
            pending.push(r);
        }
        let futs = pending.into_iter().map(|r| {
            let app = &app;
            async move {
                match r {
                    Err(e) => Err(e),
                    Ok(Err(id)) => Ok(Outcome::Duplicate { id }),
                    Ok(Ok(v)) => app.writer.submit(Command::Envelope { env: v }).await,
                }
            }
        });
        let results = futures_util::future::join_all(futs).await;
        let mut out = Vec::with_capacity(results.len());
        for (i, r) in results.into_iter().enumerate() {
            let mut item = Object::new();
            item.insert("index", Value::Int(i as i64));
            match r.and_then(|o| {
                app.metrics.count(&o);
                accepted_value(&o)
            }) {
                Ok((_, Value::Object(o))) => {
                    for (k, v) in o.iter() {
                        item.insert(k, v.clone());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    app.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                    if let Value::Object(b) = e.body() {
                        if let Some(err) = b.get("error") {
                            item.insert("error", err.clone());
                        }
                    }
                }
            }
            out.push(Value::Object(item));
        }
        Ok(ok(200, obj(vec![("results", Value::Array(out))])))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

// ---------------------------------------------------------------- status and contacts

async fn message_status(
    AxState(app): AxState<Shared>,
    IdParam(id): IdParam,
    req: Request,
) -> Response {
    let res = async {
        let (me, _) = auth_request(&app, req, 0).await?;
        let nf = || ApiError::new(ErrorCode::NotFound, format!("no message {id} sent by you"));
        let mid = MessageId::parse_hex(&id).ok_or_else(nf)?;
        let st = app.read();
        let m = st
            .messages
            .get(&mid)
            .filter(|m| m.sender == me)
            .ok_or_else(nf)?;
        let recipients = m
            .recipients
            .iter()
            .map(|r| {
                let mut o = Object::new();
                o.insert("handle", r.handle.as_str().into());
                o.insert("status", r.state.as_str().into());
                o.insert("updated", Value::Int(r.updated));
                if let Some((ack, s)) = r.ack {
                    o.insert("ack", ack.to_hex().into());
                    o.insert("ack_status", s.as_str().into());
                }
                Value::Object(o)
            })
            .collect();
        Ok(ok(
            200,
            obj(vec![
                ("id", mid.to_hex().into()),
                ("type", m.msg_type.as_str().into()),
                ("ts", Value::Int(m.ts)),
                ("ack_by", m.ack_by.map(Value::Int).unwrap_or(Value::Null)),
                ("recipients", Value::Array(recipients)),
            ]),
        ))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// Submits a command whose outcome is a ready answer body (contacts, contact requests).
async fn submit_done(app: &App, cmd: Command) -> Result<Response, ApiError> {
    match app.writer.submit(cmd).await? {
        Outcome::Done(v) => Ok(ok(200, v)),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

async fn list_contacts(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let (me, _) = auth_request(&app, req, 0).await?;
        let st = app.read();
        let a = st
            .agents
            .get(&me)
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "not registered"))?;
        let list = a
            .contacts
            .iter()
            .map(|(h, (l, since))| {
                obj(vec![
                    ("handle", h.as_str().into()),
                    ("level", l.as_str().into()),
                    ("since", Value::Int(*since)),
                ])
            })
            .collect();
        Ok(ok(200, obj(vec![("contacts", Value::Array(list))])))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

fn parse_level(body: &[u8], app: &App, required: bool) -> Result<Option<ContactLevel>, ApiError> {
    if body.is_empty() && !required {
        return Ok(None);
    }
    let v = json::parse(body, app.json_limits(app.policy.limits.body_bytes_max))?;
    let mut f = Fields::new(&v, "")?;
    let level = if required {
        Some(f.req_word("level", ContactLevel::WORDS)?)
    } else {
        match f.opt_str("level")? {
            None => None,
            Some(s) => Some(f.word("level", s, ContactLevel::WORDS)?),
        }
    };
    f.finish()?;
    Ok(level)
}

async fn put_contact(
    AxState(app): AxState<Shared>,
    HandleParam(handle): HandleParam,
    req: Request,
) -> Response {
    let res = async {
        let (me, body) = auth_request(&app, req, app.policy.limits.body_bytes_max).await?;
        let contact = parse_handle(&app, &handle)?;
        let level = parse_level(&body, &app, true)?
            .ok_or_else(|| ApiError::new(ErrorCode::MissingField, "level"))?;
        submit_done(
            &app,
            Command::ContactSet {
                owner: me,
                contact,
                level,
            },
        )
        .await
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

async fn delete_contact(
    AxState(app): AxState<Shared>,
    HandleParam(handle): HandleParam,
    req: Request,
) -> Response {
    let res = async {
        let (me, _) = auth_request(&app, req, 0).await?;
        let contact = parse_handle(&app, &handle)?;
        submit_done(&app, Command::ContactRemove { owner: me, contact }).await
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

async fn list_requests(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let (me, _) = auth_request(&app, req, 0).await?;
        let st = app.read();
        let a = st
            .agents
            .get(&me)
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "not registered"))?;
        let list = a
            .requests
            .iter()
            .map(|(id, r)| {
                let mut o = Object::new();
                o.insert("id", id.to_hex().into());
                o.insert("from", r.from.as_str().into());
                o.insert("level", r.level.as_str().into());
                o.insert(
                    "note",
                    r.note.clone().map(Value::from).unwrap_or(Value::Null),
                );
                o.insert("ts", Value::Int(r.ts));
                Value::Object(o)
            })
            .collect();
        Ok(ok(200, obj(vec![("requests", Value::Array(list))])))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

async fn answer_request(app: Shared, id: String, req: Request, accept: bool) -> Response {
    let res = async {
        let (me, body) = auth_request(&app, req, app.policy.limits.body_bytes_max).await?;
        let request = MessageId::parse_hex(&id).ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("no pending contact request {id}"),
            )
        })?;
        let accept = if accept {
            Some(parse_level(&body, &app, false)?)
        } else {
            None
        };
        submit_done(
            &app,
            Command::AnswerRequest {
                owner: me,
                request,
                accept,
            },
        )
        .await
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

async fn accept_request(
    AxState(app): AxState<Shared>,
    IdParam(id): IdParam,
    req: Request,
) -> Response {
    answer_request(app, id, req, true).await
}

async fn reject_request(
    AxState(app): AxState<Shared>,
    IdParam(id): IdParam,
    req: Request,
) -> Response {
    answer_request(app, id, req, false).await
}

/// Status code helper for tests.
pub fn status_of(r: &Response) -> StatusCode {
    r.status()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::forwarded_client;
    use axum::http::{HeaderMap, HeaderValue};
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append("x-forwarded-for", HeaderValue::from_str(l).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies_and_read_from_the_right() {
        let proxy = ip("10.0.0.1");
        let inner = ip("10.0.0.2");
        let trusted = [proxy, inner];
        // An untrusted peer's header is ignored.
        assert_eq!(
            forwarded_client(ip("198.51.100.1"), &trusted, &xff(&["192.0.2.9"])),
            ip("198.51.100.1")
        );
        // What the client wrote is left of what the proxy appended.
        assert_eq!(
            forwarded_client(proxy, &trusted, &xff(&["203.0.113.9, 192.0.2.7"])),
            ip("192.0.2.7")
        );
        // A proxy that appends a second line rather than extending the first (regression: only
        // the first line used to be read, so the client's own line chose its address).
        assert_eq!(
            forwarded_client(proxy, &trusted, &xff(&["203.0.113.9", "192.0.2.7"])),
            ip("192.0.2.7")
        );
        // Two trusted proxies in a chain: the nearest untrusted hop is the client.
        assert_eq!(
            forwarded_client(proxy, &trusted, &xff(&["203.0.113.9, 192.0.2.7, 10.0.0.2"])),
            ip("192.0.2.7")
        );
        // Garbage where the proxies' part should be, or no header, gives the proxy itself.
        assert_eq!(
            forwarded_client(proxy, &trusted, &xff(&["192.0.2.7, not-an-address"])),
            proxy
        );
        assert_eq!(forwarded_client(proxy, &trusted, &xff(&[])), proxy);
        // Ports and brackets, as some proxies write them.
        assert_eq!(
            forwarded_client(proxy, &trusted, &xff(&["192.0.2.7:5000"])),
            ip("192.0.2.7")
        );
        assert_eq!(
            forwarded_client(proxy, &trusted, &xff(&["[2001:db8::1]:443"])),
            ip("2001:db8::1")
        );
        assert_eq!(
            forwarded_client(proxy, &trusted, &xff(&["[2001:db8::1]"])),
            ip("2001:db8::1")
        );
        // A dual-stack listener sees the proxy as ::ffff:10.0.0.1; it is still trusted, and a
        // mapped client address counts as its IPv4 address.
        assert_eq!(
            forwarded_client(ip("::ffff:10.0.0.1"), &trusted, &xff(&["::ffff:192.0.2.7"])),
            ip("192.0.2.7")
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_in_the_clients_part_do_not_spoil_the_proxys() {
        let proxy = ip("10.0.0.1");
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.9\xff, 192.0.2.7").unwrap(),
        );
        assert_eq!(forwarded_client(proxy, &[proxy], &h), ip("192.0.2.7"));
    }
}
