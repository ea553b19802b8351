//! Federation (SPEC.md section 16): the relay-to-relay HTTP client, signed relay requests, the
//! peering handshake, the transfer endpoint, remote key logs, the operator's admin endpoints and
//! the per-peer forwarding workers.
//!
//! Like the client API, everything here only reads state and submits commands to the writer:
//! peers, the outbound queue, transfer outcomes, dead-letters and cached remote key logs are
//! projections of log events, so a restart resumes forwarding where it stopped.

use crate::api::{descriptor_value, ok, read_body, App, Shared};
use crate::decide::{Command, Outcome};
use crate::error::ApiError;
use crate::events::PeerStatus;
use axum::extract::{ConnectInfo, Path, Request, State as AxState};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use formica_protocol::auth::{Nonce, RelayAuth, RequestTarget};
use formica_protocol::envelope::{MessageId, SignedEnvelope};
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::keylog::{KeyLog, SignedKeyLogEntry};
use formica_protocol::schema::Fields;
use formica_protocol::{
    canon, Domain, ErrorCode, Handle, Object, PublicKey, RelayHost, Signature, Value,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Largest answer body read from a peer: a transfer answer or a key log fits easily.
pub const PEER_RESPONSE_BYTES_MAX: usize = 4 << 20;
/// How often an idle forwarding worker looks at its queue when nothing wakes it (the writer wakes
/// the workers after every batch that stored an envelope).
pub const WORKER_IDLE_MS: u64 = 50;
/// How often the supervisor looks for peers without a worker.
pub const SUPERVISOR_MS: u64 = 200;
/// Name of the admin token file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Name of the file holding the address the running relay listens on (for `relay peer`).
pub const ADMIN_ADDR_FILE: &str = "admin.addr";

/// The relay-to-relay HTTP client: ureq (blocking, run on tokio's blocking pool) with rustls
/// and the webpki roots, so `https` peers work without OpenSSL; `http` only for loopback tests.
///
/// `guarded` is the client for requests a stranger causes (the handshake's descriptor fetch):
/// it connects only to public addresses ([`crate::peer_addr::PublicOnly`]) and follows no
/// redirects.
#[derive(Clone, Debug)]
pub struct PeerClient {
    agent: ureq::Agent,
    guarded: ureq::Agent,
}

impl Default for PeerClient {
    fn default() -> Self {
        PeerClient {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .max_idle_connections_per_host(4)
                .build(),
            guarded: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .redirects(0)
                .max_idle_connections(0)
                .resolver(crate::peer_addr::PublicOnly)
                .build(),
        }
    }
}

/// A transport failure (no answer), as opposed to an answer with an error code.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl From<Unreachable> for ApiError {
    fn from(u: Unreachable) -> ApiError {
        ApiError::new(ErrorCode::PeerUnavailable, u.0)
    }
}

/// Sends one request to `host` (signed with the relay key when `sign`), bounded by the
/// federation request timeout; returns the status and the parsed body.
pub async fn call(
    app: &App,
    method: &str,
    host: &RelayHost,
    path: &str,
    body: Vec<u8>,
    sign: bool,
) -> Result<(u16, Value), Unreachable> {
    call_via(app, client_for(app, host), method, host, path, body, sign).await
}

/// The HTTP client for requests to `host`: one that connects only to public addresses unless
/// the host is on the allowlist or `allow_private_peers` is set (FED-15). This holds for all
/// traffic to a peer, not only the handshake: a peer that completed a handshake from a public
/// address could otherwise point its name at an internal address later (DNS rebinding).
fn client_for<'a>(app: &'a App, host: &RelayHost) -> &'a ureq::Agent {
    let fed = &app.policy.federation;
    if fed.allow_private_peers || fed.allowlist.iter().any(|h| h == host.as_str()) {
        &app.peer_client.agent
    } else {
        &app.peer_client.guarded
    }
}

/// [`call`] with a given HTTP client.
async fn call_via(
    app: &App,
    agent: &ureq::Agent,
    method: &str,
    host: &RelayHost,
    path: &str,
    body: Vec<u8>,
    sign: bool,
) -> Result<(u16, Value), Unreachable> {
    let url = format!("{}://{}{}", app.policy.federation.scheme, host, path);
    let auth = sign.then(|| {
        let mut n = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut n);
        RelayAuth::sign(
            &app.relay_key,
            &app.host,
            host,
            app.now(),
            Nonce(n),
            &RequestTarget {
                method,
                path,
                body: &body,
            },
        )
    });
    let timeout = Duration::from_millis(app.policy.federation.request_timeout_ms);
    let agent = agent.clone();
    let (m, u) = (method.to_owned(), url.clone());
    let sent = tokio::task::spawn_blocking(move || -> Result<(u16, Vec<u8>), Unreachable> {
        use std::io::Read;
        let mut req = agent
            .request(&m, &u)
            .timeout(timeout)
            .set("content-type", "application/json");
        if let Some(h) = &auth {
            req = req.set("authorization", h);
        }
        let resp = match req.send_bytes(&body) {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(Unreachable(format!("{u}: {e}"))),
        };
        let status = resp.status();
        let mut buf = Vec::new();
        resp.into_reader()
            .take(PEER_RESPONSE_BYTES_MAX as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Unreachable(format!("{u}: {e}")))?;
        if buf.len() > PEER_RESPONSE_BYTES_MAX {
            return Err(Unreachable(format!(
                "{u}: the answer is larger than {PEER_RESPONSE_BYTES_MAX} bytes"
            )));
        }
        Ok((status, buf))
    })
    .await
    .map_err(|e| Unreachable(format!("{url}: {e}")))??;
    let (status, bytes) = sent;
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        json::parse(
            &bytes,
            JsonLimits {
                bytes_max: PEER_RESPONSE_BYTES_MAX,
                depth_max: app.policy.limits.json_depth_max + 4,
            },
        )
        .map_err(|e| Unreachable(format!("{url}: the answer is not strict JSON: {e}")))?
    };
    Ok((status, v))
}

/// The error code of an error answer, if it has one this relay knows.
fn answer_code(v: &Value) -> Option<ErrorCode> {
    v.as_object()?
        .get("error")?
        .as_object()?
        .get("code")?
        .as_str()
        .and_then(ErrorCode::from_wire)
}

/// DESC-2: a descriptor's signature checked against the key it names; returns host and key.
pub fn verify_descriptor(v: &Value) -> Result<(RelayHost, PublicKey), ApiError> {
    let bad = |why: &str| {
        ApiError::new(
            ErrorCode::Unauthorized,
            format!("the relay descriptor is not valid: {why}"),
        )
    };
    let o = v.as_object().ok_or_else(|| bad("not an object"))?;
    let s = |k: &str| o.get(k).and_then(Value::as_str).ok_or_else(|| bad(k));
    let key = PublicKey::parse_hex(s("key")?).map_err(|_| bad("key"))?;
    let sig = Signature::parse_hex(s("sig")?).map_err(|_| bad("sig"))?;
    let mut input = Domain::Descriptor.tag().to_vec();
    canon::write_object(o, Some(&["sig"]), &mut input);
    key.verify_input(&input, &sig)
        .map_err(|_| bad("its signature does not verify"))?;
    let host = RelayHost::parse(s("relay")?).map_err(|_| bad("relay"))?;
    Ok((host, key))
}

/// RELAY-REQ-1..3: checks an `Authorization: Formica-Relay` header. For the handshake
/// (`peer_key` given) the origin need not be a peer yet and the key is the one from its
/// descriptor; otherwise the origin must be an active peer and the key the one learned at
/// peering. Returns the origin.
pub fn authenticate_relay(
    app: &App,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    peer_key: Option<&PublicKey>,
) -> Result<RelayHost, ApiError> {
    let value = headers
        .get("authorization")
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "this endpoint needs an Authorization: Formica-Relay header",
            )
        })?
        .to_str()
        .map_err(|_| ApiError::new(ErrorCode::Unauthorized, "Authorization header is not ASCII"))?;
    let auth = RelayAuth::parse(value).map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    if auth.dest != app.host {
        return Err(ApiError::new(
            ErrorCode::WrongRelay,
            format!(
                "the request is signed for {}, this relay is {}",
                auth.dest, app.host
            ),
        ));
    }
    let now = app.now();
    app.policy.time.check(auth.ts, now)?;
    let key = match peer_key {
        Some(k) => *k,
        None => {
            let st = app.state.read().unwrap_or_else(|p| p.into_inner());
            st.active_peer(&auth.origin).map(|p| p.key).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::PeerUnknown,
                    format!("{} is not a peer of this relay", auth.origin),
                )
            })?
        }
    };
    let target = RequestTarget {
        method: method.as_str(),
        path,
        body,
    };
    auth.verify(&key, &target, &app.host)
        .map_err(|e| ApiError::new(ErrorCode::Unauthorized, e.to_string()))?;
    app.nonces
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            &Handle::relay(&auth.origin),
            auth.nonce,
            now,
            app.policy.time.retention_ms(),
        )
        .map_err(|r| r.to_error("relay request"))?;
    Ok(auth.origin)
}

fn enabled(app: &App) -> Result<(), ApiError> {
    if app.policy.federation.enabled {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::PeerUnknown,
            "this relay does not federate",
        ))
    }
}

fn path_of(req: &Request) -> String {
    req.uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned())
}

fn obj(members: Vec<(&str, Value)>) -> Value {
    let mut o = Object::new();
    for (k, v) in members {
        o.insert(k, v);
    }
    Value::Object(o)
}

// ---------------------------------------------------------------- handshake (FED-3)

/// `POST /v1/federation/peers`: another relay asks to peer.
pub async fn handshake(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        enabled(&app)?;
        // A stranger may call this endpoint, and it makes this relay fetch a descriptor:
        // limited per client address like the other unauthenticated endpoints (HTTP-10).
        crate::api::ip_limit(&app, peer_addr_of(&req), req.headers())?;
        let path = path_of(&req);
        let (parts, body) = req.into_parts();
        let body = read_body(body, app.policy.limits.body_bytes_max).await?;
        let v = json::parse(&body, app_limits(&app))?;
        let mut f = Fields::new(&v, "")?;
        let desc = f.req("descriptor")?.clone();
        f.finish()?;
        let (origin, key) = verify_descriptor(&desc)?;
        let who = authenticate_relay(
            &app,
            &parts.method,
            &path,
            &parts.headers,
            &body,
            Some(&key),
        )?;
        if who != origin {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "the descriptor names another relay than the request's origin",
            ));
        }
        // Under an allowlist, a host that is not listed (and that this relay did not ask) is
        // refused before this relay makes any request on its behalf; under manual or open
        // peering, so is a new stranger past `pending_peers_max` or `open_peers_max` (the
        // writer applies the same caps again when it records the peer).
        let fed = &app.policy.federation;
        let listed = fed.allowlist.iter().any(|h| h == origin.as_str());
        let asked = {
            let st = app.state.read().unwrap_or_else(|p| p.into_inner());
            let p = st.peers.get(&origin);
            let asked =
                p.is_some_and(|p| matches!(p.status, PeerStatus::Requested | PeerStatus::Active));
            if fed.peering == "allowlist" && !listed && !asked {
                return Err(ApiError::new(
                    ErrorCode::PeerUnknown,
                    format!("{origin} is not on this relay's allowlist"),
                ));
            }
            // A new stranger past a cap is refused before anything is fetched for it.
            if p.is_none() && !listed {
                let would_be = if fed.peering == "manual" {
                    PeerStatus::Pending
                } else {
                    PeerStatus::Active
                };
                crate::decide::peer_caps(&st, fed, would_be)?;
            }
            asked
        };
        // The key must also be the one the origin publishes itself. A host that is not on the
        // allowlist is fetched only from public addresses unless `allow_private_peers`
        // (`client_for`); whatever goes wrong with the fetch is answered with one generic
        // error, so the answer tells the caller nothing about what this relay reached.
        let fetched = match call_via(
            &app,
            client_for(&app, &origin),
            "GET",
            &origin,
            "/.well-known/formica",
            vec![],
            false,
        )
        .await
        {
            Ok((200, v)) => verify_descriptor(&v).map_err(|e| e.message),
            Ok((st, _)) => Err(format!("answered {st}")),
            Err(u) => Err(u.0),
        };
        let (h2, k2) = fetched.map_err(|why| {
            tracing::info!(origin = %origin, "handshake: no valid descriptor fetched: {why}");
            ApiError::new(
                ErrorCode::PeerUnavailable,
                format!("could not fetch a valid relay descriptor from {origin}"),
            )
        })?;
        if h2 != origin || k2 != key {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "the key in the request differs from the one the origin publishes",
            ));
        }
        let existing = {
            let st = app.state.read().unwrap_or_else(|p| p.into_inner());
            st.peers.get(&origin).cloned()
        };
        let status = match existing {
            Some(p) if p.key != key => {
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    format!("{origin} peered with another key; the operator must remove it first"),
                ))
            }
            // This relay's operator asked for the peering, which is the approval.
            Some(p) if matches!(p.status, PeerStatus::Requested | PeerStatus::Active) => {
                PeerStatus::Active
            }
            _ if listed || fed.peering == "open" => PeerStatus::Active,
            _ if fed.peering == "manual" => PeerStatus::Pending,
            _ => {
                return Err(ApiError::new(
                    ErrorCode::PeerUnknown,
                    format!("{origin} is not on this relay's allowlist"),
                ))
            }
        };
        app.writer
            .submit(Command::PeerSet {
                host: origin,
                key,
                status,
                // The writer applies the caps again, where concurrent handshakes cannot race.
                stranger: !listed && !asked,
            })
            .await?;
        Ok(match status {
            PeerStatus::Active => ok(
                201,
                obj(vec![
                    ("descriptor", descriptor_value(&app)),
                    ("status", "active".into()),
                ]),
            ),
            _ => ok(202, obj(vec![("status", "pending".into())])),
        })
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

fn peer_addr_of(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

fn app_limits(app: &App) -> JsonLimits {
    JsonLimits {
        bytes_max: app.policy.limits.body_bytes_max,
        depth_max: app.policy.limits.json_depth_max,
    }
}

/// This relay asks `host` to peer (operator `peer add`, or `peer approve` answering back).
async fn ask_to_peer(app: &App, host: &RelayHost) -> Result<Value, ApiError> {
    let (st, desc) = call(app, "GET", host, "/.well-known/formica", vec![], false).await?;
    if st != 200 {
        return Err(ApiError::new(
            ErrorCode::PeerUnavailable,
            format!("{host} did not serve its descriptor ({st})"),
        ));
    }
    let (h, key) = verify_descriptor(&desc)?;
    if &h != host {
        return Err(ApiError::new(
            ErrorCode::WrongRelay,
            format!("the relay at {host} calls itself {h}"),
        ));
    }
    let body = canon::canonicalize(&obj(vec![("descriptor", descriptor_value(app))]));
    let (st, ans) = call(app, "POST", host, "/v1/federation/peers", body, true).await?;
    let status = match st {
        201 => {
            let d = ans
                .as_object()
                .and_then(|o| o.get("descriptor"))
                .ok_or_else(|| ApiError::new(ErrorCode::PeerUnavailable, "no descriptor"))?;
            let (h2, k2) = verify_descriptor(d)?;
            if h2 != h || k2 != key {
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    "the peer answered with another descriptor than it publishes",
                ));
            }
            PeerStatus::Active
        }
        202 => PeerStatus::Requested,
        _ => {
            let code = answer_code(&ans).unwrap_or(ErrorCode::PeerUnavailable);
            return Err(ApiError::new(
                code,
                format!("{host} refused to peer ({st})"),
            ));
        }
    };
    match app
        .writer
        .submit(Command::PeerSet {
            host: h,
            key,
            status,
            // The operator asked for this peering.
            stranger: false,
        })
        .await?
    {
        Outcome::Done(v) => Ok(v),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

// ---------------------------------------------------------------- transfer (FED-5, FED-6)

/// `POST /v1/federation/transfer`: a peer forwards envelopes from its agents.
pub async fn transfer(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        enabled(&app)?;
        let l = &app.policy.limits;
        let path = path_of(&req);
        let (parts, body) = req.into_parts();
        let body = read_body(body, l.batch_bytes_max).await?;
        let origin = authenticate_relay(&app, &parts.method, &path, &parts.headers, &body, None)?;
        let v = json::parse(
            &body,
            JsonLimits {
                bytes_max: l.batch_bytes_max,
                depth_max: l.json_depth_max + 2,
            },
        )?;
        let mut f = Fields::new(&v, "")?;
        let txn = f.req_str("txn")?.to_owned();
        if f.req("envelopes")?.as_array().is_none() {
            return Err(
                ApiError::new(ErrorCode::InvalidField, "`envelopes` is an array")
                    .with("field", "envelopes".into()),
            );
        }
        f.finish()?;
        let items = crate::api::take_envelopes(v);
        if txn.is_empty() || txn.len() > 128 || !txn.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "txn is 1 to 128 visible ASCII bytes",
            )
            .with("field", "txn".into()));
        }
        if items.len() > l.batch_envelopes_max {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "{} envelopes; a transfer holds at most {}",
                    items.len(),
                    l.batch_envelopes_max
                ),
            ));
        }
        // FED-9: order per sender. An envelope refused with a retryable error holds back the
        // later ones from the same sender (they stay queued at the origin, in order).
        let mut held = std::collections::HashSet::new();
        let mut pending = Vec::with_capacity(items.len());
        for item in items {
            let from = item
                .as_object()
                .and_then(|o| o.get("from"))
                .and_then(Value::as_str)
                .and_then(|s| Handle::parse(s).ok());
            if let Some(f) = from.as_ref().filter(|f| held.contains(*f)) {
                pending.push(Err(ApiError::new(
                    ErrorCode::Unavailable,
                    format!("an earlier envelope from {f} in this transfer must be retried first"),
                )
                .with("retry_after_s", Value::Int(1))));
                continue;
            }
            let r = judge_remote(&app, &origin, item).await;
            if let (Err(e), Some(f)) = (&r, from) {
                if e.code.retry() != formica_protocol::error::Retry::No {
                    held.insert(f);
                }
            }
            pending.push(r);
        }
        // Everything that passed the checks goes to the writer as one job, in order (FED-9);
        // `None` marks the places its answers go.
        let mut envs = Vec::new();
        let answered: Vec<Option<Result<Outcome, ApiError>>> = pending
            .into_iter()
            .map(|r| match r {
                Ok(Ok(env)) => {
                    envs.push(env);
                    None
                }
                Ok(Err(id)) => Some(Ok(Outcome::Duplicate { id })),
                Err(e) => Some(Err(e)),
            })
            .collect();
        let sent = envs.len();
        let mut written = if envs.is_empty() {
            Vec::new()
        } else {
            match app.writer.submit(Command::Transfer { envs, origin }).await {
                Ok(Outcome::Transfer(r)) => r,
                Ok(other) => {
                    vec![Err(ApiError::internal(format!("unexpected outcome {other:?}"))); sent]
                }
                // A full queue or a failed write: every envelope of the job gets the error.
                Err(e) => vec![Err(e); sent],
            }
        }
        .into_iter();
        let results: Vec<Result<Outcome, ApiError>> = answered
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    written.next().unwrap_or_else(|| {
                        Err(ApiError::internal("the writer answered fewer envelopes"))
                    })
                })
            })
            .collect();
        let mut out = Vec::with_capacity(results.len());
        for (i, r) in results.into_iter().enumerate() {
            let mut item = Object::new();
            item.insert("index", Value::Int(i as i64));
            match r {
                Ok(Outcome::Accepted { id }) => {
                    item.insert("id", id.to_hex().into());
                    item.insert("result", "accepted".into());
                }
                Ok(Outcome::Duplicate { id }) => {
                    item.insert("id", id.to_hex().into());
                    item.insert("result", "duplicate".into());
                }
                Ok(other) => {
                    let e = ApiError::internal(format!("unexpected outcome {other:?}"));
                    if let Value::Object(b) = e.body() {
                        if let Some(err) = b.get("error") {
                            item.insert("error", err.clone());
                        }
                    }
                }
                Err(e) => {
                    if let Value::Object(b) = e.body() {
                        if let Some(err) = b.get("error") {
                            item.insert("error", err.clone());
                        }
                    }
                }
            }
            out.push(Value::Object(item));
        }
        Ok(ok(
            200,
            obj(vec![("txn", txn.into()), ("results", Value::Array(out))]),
        ))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// FED-6 up to the signature: strict parse, origin, dedup, sender key from its verified key log
/// (fetched from its home relay on a miss), strict signature. `Ok(Err(id))` is a duplicate.
async fn judge_remote(
    app: &App,
    origin: &RelayHost,
    item: Value,
) -> Result<Result<formica_protocol::VerifiedEnvelope, MessageId>, ApiError> {
    let l = &app.policy.limits;
    let size = canon::canonical_len(&item);
    if size > l.envelope_bytes_max {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "envelope is {size} bytes, more than {}",
                l.envelope_bytes_max
            ),
        ));
    }
    let limits = formica_protocol::envelope::EnvelopeLimits {
        json: JsonLimits {
            bytes_max: l.envelope_bytes_max,
            depth_max: l.json_depth_max,
        },
        recipients_max: l.recipients_max,
        payload_bytes_max: l.envelope_bytes_max,
    };
    let se = SignedEnvelope::from_value(item, &limits)?;
    let env = se.envelope();
    if env.from.is_relay() {
        // A delivery notice from the origin relay itself, signed with its peer key (FED-11).
        if env.from != Handle::relay(origin) {
            return Err(ApiError::new(
                ErrorCode::OriginMismatch,
                format!("{} is not the relay address of {origin}", env.from),
            ));
        }
        if app
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .contains(&se.id())
        {
            return Ok(Err(se.id()));
        }
        let key = app
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .active_peer(origin)
            .map(|p| p.key)
            .ok_or_else(|| {
                ApiError::new(ErrorCode::PeerUnknown, format!("{origin} is not a peer"))
            })?;
        return Ok(Ok(se.verify(&key)?));
    }
    if env.from.host() != origin {
        return Err(ApiError::new(
            ErrorCode::OriginMismatch,
            format!("{} is not homed on {origin}", env.from),
        ));
    }
    // FED-7: no staleness check (queues delay), but nothing from the future.
    let now = app.now();
    if env.ts > now + app.policy.time.skew_ms {
        app.policy.time.check(env.ts, now)?;
    }
    if app
        .state
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .seen
        .contains(&se.id())
    {
        return Ok(Err(se.id()));
    }
    let key = remote_key(app, &env.from, &env.key, env.ts).await?;
    Ok(Ok(se.verify(&key)?))
}

/// The key `kid` of remote agent `h` valid at `ts`: from the cached log, else after pulling
/// the log from `h`'s home relay and verifying it from its first entry (FED-8).
pub async fn remote_key(
    app: &App,
    h: &Handle,
    kid: &formica_protocol::KeyId,
    ts: i64,
) -> Result<PublicKey, ApiError> {
    let cached = |app: &App| {
        let st = app.state.read().unwrap_or_else(|p| p.into_inner());
        st.remote_logs.get(h).map(|r| {
            r.log
                .key_at(kid, ts)
                .copied()
                .map_err(|e| ApiError::new(e.code(), e.to_string()))
        })
    };
    if let Some(Ok(k)) = cached(app) {
        return Ok(k);
    }
    pull_keylog(app, h).await?;
    cached(app).unwrap_or_else(|| {
        Err(ApiError::new(
            ErrorCode::UnknownKey,
            format!("no key log for {h}"),
        ))
    })
}

/// Fetches `h`'s key log from its home relay, verifies it (LOG-10) and caches it.
pub async fn pull_keylog(app: &App, h: &Handle) -> Result<(), ApiError> {
    let path = format!("/v1/keys/{h}");
    let (st, v) = call(app, "GET", h.host(), &path, vec![], false).await?;
    if st == 404 {
        return Err(ApiError::new(
            ErrorCode::UnknownSender,
            format!("{h} is not registered on its home relay"),
        ));
    }
    if st != 200 {
        return Err(ApiError::new(
            ErrorCode::PeerUnavailable,
            format!("{} answered {st} for {path}", h.host()),
        ));
    }
    let entries = v
        .as_object()
        .and_then(|o| o.get("entries"))
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidField, "the key log has no entries")
                .with("field", "entries".into())
        })?;
    let mut log = Vec::with_capacity(entries.len());
    for e in entries {
        let e = SignedKeyLogEntry::from_value(e.clone())?;
        if &e.entry().handle != h {
            return Err(ApiError::new(
                ErrorCode::KeylogHandleMismatch,
                format!("the key log of {h} holds an entry for {}", e.entry().handle),
            ));
        }
        log.push(e);
    }
    KeyLog::verify(log.clone())?;
    match app.writer.submit(Command::RemoteKeyLog { entries: log }).await? {
        Outcome::KeyLogForked => Err(ApiError::new(
            ErrorCode::KeylogFork,
            format!("{}'s home relay served a key log that conflicts with the one cached here; both are kept", h),
        )),
        _ => Ok(()),
    }
}

/// Pushes a new entry of a local agent's key log to every active peer (FED-8), best effort:
/// a peer that misses it pulls the log when an envelope names a key it does not know.
pub async fn push_keylog(app: Shared, entry: Value) {
    if !app.policy.federation.enabled {
        return;
    }
    let peers: Vec<RelayHost> = {
        let st = app.state.read().unwrap_or_else(|p| p.into_inner());
        st.peers
            .iter()
            .filter(|(_, p)| p.status == PeerStatus::Active)
            .map(|(h, _)| h.clone())
            .collect()
    };
    let body = canon::canonicalize(&obj(vec![("entries", Value::Array(vec![entry]))]));
    for p in peers {
        if let Err(u) = call(
            &app,
            "POST",
            &p,
            "/v1/federation/keylog",
            body.clone(),
            true,
        )
        .await
        {
            tracing::debug!(peer = %p, "key log push failed: {}", u.0);
        }
    }
}

/// `POST /v1/federation/keylog`: a peer pushes new entries of its agents' key logs. Entries
/// for logs not cached here are ignored (they are pulled when needed); others must extend the
/// cached log (LOG-10 step 3) or are kept as fork evidence (`keylog_fork`).
pub async fn keylog_push(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        enabled(&app)?;
        let path = path_of(&req);
        let (parts, body) = req.into_parts();
        let body = read_body(body, app.policy.limits.body_bytes_max).await?;
        let origin = authenticate_relay(&app, &parts.method, &path, &parts.headers, &body, None)?;
        let v = json::parse(&body, app_limits(&app))?;
        let mut f = Fields::new(&v, "")?;
        let items = f
            .req("entries")?
            .as_array()
            .ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidField, "`entries` is an array")
                    .with("field", "entries".into())
            })?
            .to_vec();
        f.finish()?;
        let mut heads = Vec::new();
        for item in items {
            let e = SignedKeyLogEntry::from_value(item)?;
            let h = e.entry().handle.clone();
            if h.host() != &origin {
                return Err(ApiError::new(
                    ErrorCode::OriginMismatch,
                    format!("{h} is not homed on {origin}"),
                ));
            }
            let cached: Option<Vec<SignedKeyLogEntry>> = app
                .state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .remote_logs
                .get(&h)
                .map(|r| r.log.entries().to_vec());
            let Some(mut entries) = cached else { continue };
            let seq = usize::try_from(e.entry().seq).unwrap_or(usize::MAX);
            if seq > entries.len() {
                // A gap: fetch the whole log instead.
                pull_keylog(&app, &h).await?;
                continue;
            }
            entries.truncate(seq);
            entries.push(e);
            // The candidate must be a valid log from its first entry, whatever it replaces.
            KeyLog::verify(entries.clone())?;
            match app.writer.submit(Command::RemoteKeyLog { entries }).await? {
                Outcome::KeyLogForked => {
                    return Err(ApiError::new(
                        ErrorCode::KeylogFork,
                        format!("the entry conflicts with the cached log of {h}; both are kept"),
                    ))
                }
                Outcome::KeyLogAppended { head, .. } => heads.push(Value::from(head)),
                _ => {}
            }
        }
        Ok(ok(200, obj(vec![("heads", Value::Array(heads))])))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

// ---------------------------------------------------------------- relay administration

/// The admin endpoints need the token from `<data-dir>/admin.token` as a bearer token, and a
/// connection from a loopback address.
fn admin_auth(app: &App, req: &Request) -> Result<(), ApiError> {
    let from_loopback = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|c| c.0.ip().is_loopback());
    let token = app.admin_token.get();
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let matches = match (token, given) {
        (Some(t), Some(g)) => constant_time_eq(t.as_bytes(), g.as_bytes()),
        _ => false,
    };
    if from_loopback && matches {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "relay administration needs the admin token, from a loopback address",
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_host(s: &str) -> Result<RelayHost, ApiError> {
    let s = s.trim();
    let s = s.split_once("://").map(|(_, r)| r).unwrap_or(s);
    let s = s.trim_end_matches('/');
    RelayHost::parse(s).map_err(|e| {
        ApiError::new(ErrorCode::InvalidField, e.to_string()).with("field", "url".into())
    })
}

/// `GET /admin/v1/peers`.
pub async fn admin_list(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = (|| {
        admin_auth(&app, &req)?;
        let st = app.state.read().unwrap_or_else(|p| p.into_inner());
        let list = st
            .peers
            .iter()
            .map(|(h, p)| {
                let mut v = crate::decide::peer_value(h, &p.key, p.status);
                if let Value::Object(o) = &mut v {
                    o.insert("since", Value::Int(p.since));
                    o.insert(
                        "queued",
                        Value::Int(st.outbound.get(h).map(|q| q.len()).unwrap_or(0) as i64),
                    );
                }
                v
            })
            .collect();
        Ok::<_, ApiError>(ok(200, obj(vec![("peers", Value::Array(list))])))
    })();
    res.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /admin/v1/peers` with `{"url": "https://relay-b.example"}`: start a handshake.
pub async fn admin_add(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        admin_auth(&app, &req)?;
        enabled(&app)?;
        let body = read_body(req.into_body(), app.policy.limits.body_bytes_max).await?;
        let v = json::parse(&body, app_limits(&app))?;
        let mut f = Fields::new(&v, "")?;
        let url = f.req_str("url")?.to_owned();
        f.finish()?;
        let host = parse_host(&url)?;
        if host == app.host {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "a relay does not peer with itself",
            )
            .with("field", "url".into()));
        }
        let v = ask_to_peer(&app, &host).await?;
        Ok(ok(200, v))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// `POST /admin/v1/peers/{host}/approve`: approve a pending peering and answer back.
pub async fn admin_approve(
    AxState(app): AxState<Shared>,
    Path(host): Path<String>,
    req: Request,
) -> Response {
    let res = async move {
        admin_auth(&app, &req)?;
        enabled(&app)?;
        let host = parse_host(&host)?;
        let p = app
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .peers
            .get(&host)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(ErrorCode::NotFound, format!("{host} has not asked to peer"))
            })?;
        app.writer
            .submit(Command::PeerSet {
                host: host.clone(),
                key: p.key,
                status: PeerStatus::Active,
                // The operator approves.
                stranger: false,
            })
            .await?;
        // Mutual: tell the other side, which asked, so it marks this relay active too.
        let v = ask_to_peer(&app, &host).await?;
        Ok(ok(200, v))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// `DELETE /admin/v1/peers/{host}`.
pub async fn admin_remove(
    AxState(app): AxState<Shared>,
    Path(host): Path<String>,
    req: Request,
) -> Response {
    let res = async move {
        admin_auth(&app, &req)?;
        let host = parse_host(&host)?;
        app.writer
            .submit(Command::PeerRemove { host: host.clone() })
            .await?;
        Ok(ok(
            200,
            obj(vec![
                ("host", host.as_str().into()),
                ("removed", Value::Bool(true)),
            ]),
        ))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// Shortest admin token accepted from `admin.token`: 32 bytes of token text (the relay writes 64
/// hex characters, 32 random bytes). A shorter token could be guessed or was not made for this.
pub const ADMIN_TOKEN_BYTES_MIN: usize = 32;

/// Reads the admin token from `path`, or writes a new random one (0600) on first start. An
/// existing file is refused if group or others have any permission on it, or if its token (the
/// content without surrounding whitespace) is shorter than [`ADMIN_TOKEN_BYTES_MIN`] bytes or
/// holds anything but visible ASCII.
pub fn load_or_create_token(path: &std::path::Path) -> Result<String, String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(format!(
                    "{shown}: permissions {mode:04o} let others read or change the admin token; run chmod 600 {shown}"
                ));
            }
            let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
            let t = text.trim();
            if t.len() < ADMIN_TOKEN_BYTES_MIN {
                return Err(format!(
                    "{shown}: the admin token is {} bytes, shorter than {ADMIN_TOKEN_BYTES_MIN}; delete the file to have a new one made at start",
                    t.len()
                ));
            }
            if !t.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
                return Err(format!(
                    "{shown}: the admin token holds characters other than visible ASCII"
                ));
            }
            return Ok(t.to_owned());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{shown}: {e}")),
    }
    let mut b = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    let t = formica_protocol::hex::encode(&b);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{shown}: {e}"))?;
    f.write_all(format!("{t}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{shown}: {e}"))?;
    Ok(t)
}

// ---------------------------------------------------------------- forwarding workers (FED-9)

/// Starts one forwarding worker per active peer, and new ones as peers become active.
/// Runs until the relay stops.
pub async fn run_forwarding(app: Shared) {
    if !app.policy.federation.enabled {
        return;
    }
    let mut workers: HashMap<RelayHost, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut stopping = app.stopping.subscribe();
    loop {
        if *stopping.borrow() {
            return;
        }
        let active: Vec<RelayHost> = {
            let st = app.state.read().unwrap_or_else(|p| p.into_inner());
            st.peers
                .iter()
                .filter(|(_, p)| p.status == PeerStatus::Active)
                .map(|(h, _)| h.clone())
                .collect()
        };
        workers.retain(|_, j| !j.is_finished());
        for h in active {
            if let std::collections::hash_map::Entry::Vacant(v) = workers.entry(h) {
                let j = tokio::spawn(forward_to(app.clone(), v.key().clone()));
                v.insert(j);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(SUPERVISOR_MS)) => {}
            _ = stopping.changed() => {}
        }
    }
}

/// What one transfer attempt gave.
enum Attempt {
    /// The peer answered the transfer with per-envelope results.
    Answered(Vec<(MessageId, Result<(), ErrorCode>)>),
    Failed(String),
}

/// The worker for one peer: sends the head of its queue in order, retries with exponential
/// backoff and jitter behind a circuit breaker, and submits every outcome to the writer.
async fn forward_to(app: Shared, peer: RelayHost) {
    let fed = app.policy.federation.clone();
    let mut failures: u32 = 0;
    let mut attempts: HashMap<MessageId, u32> = HashMap::new();
    loop {
        if *app.stopping.borrow() {
            return;
        }
        // Registered before the queue is read, so an envelope queued in between still wakes us.
        let woken = app.notifier.outbound_grew();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let batch: Vec<(MessageId, std::sync::Arc<Vec<u8>>)> = {
            let st = app.state.read().unwrap_or_else(|p| p.into_inner());
            if st.active_peer(&peer).is_none() {
                return;
            }
            let mut bytes = 0usize;
            let budget = app.policy.limits.batch_bytes_max.saturating_sub(1024);
            st.outbound
                .get(&peer)
                .map(|q| {
                    q.values()
                        .take(app.policy.limits.batch_envelopes_max)
                        .take_while(|x| {
                            bytes += x.wire.len() + 1;
                            bytes <= budget
                        })
                        .map(|x| (x.id, x.wire.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        if batch.is_empty() {
            attempts.clear();
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep(Duration::from_millis(WORKER_IDLE_MS)) => {}
            }
            continue;
        }
        // The txn is a function of the batch, so a retry of the same batch reuses it.
        let mut hasher = blake3::Hasher::new();
        for (id, _) in &batch {
            hasher.update(id.to_hex().as_bytes());
        }
        let txn = format!("t{}", &hasher.finalize().to_hex()[..32]);
        let mut body = Vec::from(&b"{\"envelopes\":["[..]);
        for (i, (_, w)) in batch.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(w);
        }
        body.extend_from_slice(format!("],\"txn\":\"{txn}\"}}").as_bytes());
        let attempt = match call(&app, "POST", &peer, "/v1/federation/transfer", body, true).await {
            Ok((200, v)) => match parse_results(&v, &batch) {
                Some(r) => Attempt::Answered(r),
                None => Attempt::Failed("the transfer answer is malformed".into()),
            },
            Ok((st, v)) => Attempt::Failed(format!(
                "{peer} answered {st} {}",
                answer_code(&v).map(|c| c.as_str()).unwrap_or("")
            )),
            Err(u) => Attempt::Failed(u.0),
        };
        match attempt {
            Attempt::Answered(results) => {
                if let Err(e) = app
                    .writer
                    .submit(Command::TransferResults {
                        peer: peer.clone(),
                        results: results.clone(),
                    })
                    .await
                {
                    if e.code == ErrorCode::Unavailable {
                        return;
                    }
                }
                let progress = results.iter().any(|(_, r)| r.is_ok());
                let retryable: Vec<MessageId> = results
                    .iter()
                    .filter(|(_, r)| {
                        r.is_err_and(|c| c.retry() != formica_protocol::error::Retry::No)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                if progress {
                    failures = 0;
                    // A retryable refusal keeps that envelope (and its sender's later ones)
                    // queued; wait a little so a rate-limited peer is not hammered.
                    if !retryable.is_empty() {
                        tokio::time::sleep(Duration::from_millis(fed.retry_base_ms)).await;
                    }
                } else if !retryable.is_empty() {
                    // Nothing moved: back off as for a failed transfer.
                    failures = failures.saturating_add(1);
                    count_attempts(&app, &peer, &mut attempts, &retryable).await;
                    tokio::time::sleep(backoff(&fed, failures)).await;
                }
            }
            Attempt::Failed(why) => {
                failures = failures.saturating_add(1);
                tracing::debug!(peer = %peer, failures, "transfer failed: {why}");
                let ids: Vec<MessageId> = batch.iter().map(|(id, _)| *id).collect();
                count_attempts(&app, &peer, &mut attempts, &ids).await;
                tokio::time::sleep(backoff(&fed, failures)).await;
            }
        }
    }
}

/// Counts a failed attempt for each of `ids`; at `attempts_max` the delivery is dead-lettered.
async fn count_attempts(
    app: &App,
    peer: &RelayHost,
    attempts: &mut HashMap<MessageId, u32>,
    ids: &[MessageId],
) {
    let max = app.policy.federation.attempts_max;
    for id in ids {
        let n = attempts.entry(*id).or_insert(0);
        *n += 1;
        if *n >= max {
            let _ = app
                .writer
                .submit(Command::DeadLetter {
                    peer: peer.clone(),
                    id: *id,
                    reason: "attempts".into(),
                })
                .await;
        }
    }
}

/// Exponential backoff with jitter after `failures` failures in a row. Circuit breaker: after
/// `breaker_failures` in a row it is open for at least the cool-down; the next attempt is the
/// half-open trial, and a transfer that moves anything closes it.
fn backoff(fed: &crate::policy::FederationPolicy, failures: u32) -> Duration {
    let exp = fed
        .retry_base_ms
        .saturating_mul(1u64 << failures.min(20).saturating_sub(1));
    let mut delay = exp.min(fed.retry_max_ms);
    if failures >= fed.breaker_failures {
        delay = delay.max(fed.breaker_cooldown_ms);
    }
    let jitter = rand::Rng::gen_range(&mut rand::rngs::OsRng, 0..=delay / 2);
    Duration::from_millis(delay / 2 + jitter)
}

/// Maps a transfer answer to (id, result) per envelope sent; `None` if it does not match.
fn parse_results(
    v: &Value,
    batch: &[(MessageId, std::sync::Arc<Vec<u8>>)],
) -> Option<Vec<(MessageId, Result<(), ErrorCode>)>> {
    let results = v.as_object()?.get("results")?.as_array()?;
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        let o = r.as_object()?;
        let i = usize::try_from(o.get("index")?.as_i64()?).ok()?;
        let (id, _) = batch.get(i)?;
        match o.get("result").and_then(Value::as_str) {
            Some("accepted") | Some("duplicate") => out.push((*id, Ok(()))),
            _ => {
                let code = o
                    .get("error")
                    .and_then(Value::as_object)
                    .and_then(|e| e.get("code"))
                    .and_then(Value::as_str)
                    .and_then(ErrorCode::from_wire)
                    .unwrap_or(ErrorCode::Internal);
                out.push((*id, Err(code)));
            }
        }
    }
    Some(out)
}
