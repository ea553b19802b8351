//! The endpoints other relays call (SPEC.md 16.1-16.3): the peering handshake (the one a
//! stranger may call), transfers of envelopes from a peer's agents, and pushed key log entries.
//! Each checks the `Formica-Relay` signature (`request::authenticate_relay`) before it acts:
//! transfers and pushes first of all, the handshake once it has read the descriptor that holds
//! the key to check it with.

use super::answer::{obj, ok};
use super::request::{
    authenticate_relay, federation_enabled, ip_limit, path_of, peer, read_body, relay_request,
    take_envelopes,
};
use super::{App, Shared};
use crate::engine::decide::{Command, Outcome};
use crate::engine::error::ApiError;
use crate::engine::events::PeerStatus;
use crate::federation::keylogs::TransferFetches;
use crate::federation::verify_descriptor;
use axum::extract::{Request, State as AxState};
use axum::response::{IntoResponse, Response};
use formica_protocol::envelope::{MessageId, SignedEnvelope, VerifiedEnvelope};
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::keylog::{KeyLog, SignedKeyLogEntry};
use formica_protocol::schema::Fields;
use formica_protocol::{canon, ErrorCode, Handle, Object, RelayHost, Value};

/// `POST /v1/federation/peers`: another relay asks to peer.
pub(crate) async fn handshake(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        federation_enabled(&app)?;
        // A stranger may call this endpoint, and it makes this relay fetch a descriptor:
        // limited per client address like the other unauthenticated endpoints (HTTP-10).
        ip_limit(&app, peer(&req), req.headers())?;
        let path = path_of(&req);
        let (parts, body) = req.into_parts();
        let body = read_body(body, app.engine.policy.limits.body_bytes_max).await?;
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
        let fed = &app.engine.policy.federation;
        let listed = fed.allowlist.iter().any(|h| h == origin.as_str());
        let asked = {
            let st = app.engine.read();
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
                crate::engine::decide::peer_caps(&st, fed, would_be)?;
            }
            asked
        };
        // The key must also be the one the origin publishes itself. A host that is not on the
        // allowlist is fetched only from public addresses unless `allow_private_peers`
        // (`client_for`); whatever goes wrong with the fetch is answered with one generic
        // error, so the answer tells the caller nothing about what this relay reached.
        let fetched = match app
            .fed
            .call("GET", &origin, "/.well-known/formica", vec![], false)
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
            let st = app.engine.read();
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
        app.engine
            .writer
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
                    ("descriptor", app.engine.descriptor()),
                    ("status", "active".into()),
                ]),
            ),
            _ => ok(202, obj(vec![("status", "pending".into())])),
        })
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

fn app_limits(app: &App) -> JsonLimits {
    JsonLimits {
        bytes_max: app.engine.policy.limits.body_bytes_max,
        depth_max: app.engine.policy.limits.json_depth_max,
    }
}

/// `POST /v1/federation/transfer`: a peer forwards envelopes from its agents.
pub(crate) async fn transfer(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let l = &app.engine.policy.limits;
        let (origin, _, body) = relay_request(&app, req, l.batch_bytes_max).await?;
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
        let items = take_envelopes(v);
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
        let mut fetches =
            TransferFetches::new(app.engine.policy.federation.keylog_fetches_per_transfer_max);
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
            let r = judge_remote(&app, &origin, item, &mut fetches).await;
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
            match app
                .engine
                .writer
                .submit(Command::Transfer { envs, origin })
                .await
            {
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
                Ok(Outcome::Accepted { id, .. }) => {
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
/// (fetched from its home relay on a miss, and then returned with the envelope rather than
/// stored: FED-8), strict signature. `Ok(Err(id))` is a duplicate.
async fn judge_remote(
    app: &App,
    origin: &RelayHost,
    item: Value,
    fetches: &mut TransferFetches,
) -> Result<Result<(VerifiedEnvelope, Option<KeyLog>), MessageId>, ApiError> {
    let l = &app.engine.policy.limits;
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
    let limits = app.peer_envelope_limits();
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
        if app.engine.read().seen(&se.id(), env.ts) {
            return Ok(Err(se.id()));
        }
        let key = app
            .engine
            .read()
            .active_peer(origin)
            .map(|p| p.key)
            .ok_or_else(|| {
                ApiError::new(ErrorCode::PeerUnknown, format!("{origin} is not a peer"))
            })?;
        return Ok(Ok((se.verify(&key)?, None)));
    }
    if env.from.host() != origin {
        return Err(ApiError::new(
            ErrorCode::OriginMismatch,
            format!("{} is not homed on {origin}", env.from),
        ));
    }
    // FED-7: no freshness-window check (queues delay), but nothing from the future, and
    // nothing older than the dedup window (RET-3): its id may be forgotten, so it could be
    // delivered twice.
    let now = app.engine.now();
    if env.ts > now + app.engine.policy.time.skew_ms {
        app.engine.policy.time.check(env.ts, now)?;
    }
    if env.ts < now - app.engine.policy.retention.dedup_ms {
        return Err(ApiError::new(
            ErrorCode::Stale,
            format!(
                "the envelope is older than this relay's dedup window (retention.dedup_ms = {} ms)",
                app.engine.policy.retention.dedup_ms
            ),
        ));
    }
    if app.engine.read().seen(&se.id(), env.ts) {
        return Ok(Err(se.id()));
    }
    let (key, fetched) = app
        .fed
        .remote_key(&env.from, &env.key, env.ts, fetches)
        .await?;
    Ok(Ok((se.verify(&key)?, fetched)))
}

/// `POST /v1/federation/keylog`: a peer pushes new entries of its agents' key logs. Entries
/// for logs not cached here are ignored (they are pulled when needed); others must extend the
/// cached log (LOG-10 step 3) or are kept as fork evidence (`keylog_fork`).
pub(crate) async fn keylog_push(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let (origin, _, body) =
            relay_request(&app, req, app.engine.policy.limits.body_bytes_max).await?;
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
                .engine
                .read()
                .remote_logs
                .get(&h)
                .map(|r| r.log.entries().to_vec());
            let Some(mut entries) = cached else { continue };
            let seq = usize::try_from(e.entry().seq).unwrap_or(usize::MAX);
            if seq > entries.len() {
                // A gap: fetch the whole log instead.
                app.fed.pull_keylog(&h).await?;
                continue;
            }
            entries.truncate(seq);
            entries.push(e);
            // The candidate must be a valid log from its first entry, whatever it replaces.
            KeyLog::verify(entries.clone())?;
            match app
                .engine
                .writer
                .submit(Command::RemoteKeyLog { entries })
                .await?
            {
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

/// `GET /v1/federation/directory` (FED-18): a peer searches this relay's listed profiles for
/// its agents' federated search (PROF-11). The query is PROF-9's, without a cursor or
/// `federated` (a relay never asks its own peers for another's search), and the answer a
/// PROF-9 page.
pub(crate) async fn directory(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let (origin, parts, _) = relay_request(&app, req, 0).await?;
        let policy = &app.engine.policy;
        // FED-18: a relay never forwards a peer's search, and a peer gets one page.
        for name in ["federated", "cursor"] {
            let given = parts
                .uri
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv.split('=').next() == Some(name)));
            if given {
                return Err(ApiError::new(
                    ErrorCode::InvalidField,
                    "a peer's search takes neither `federated` nor `cursor`",
                )
                .with("field", name.into()));
            }
        }
        let q = crate::engine::directory::parse_query(parts.uri.query(), policy, &app.engine.host)?;
        let per_min = policy.directory.peer_searches_per_min;
        let now = app.engine.now();
        app.search_buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(&Handle::relay(&origin), per_min, (per_min / 4).max(10), now)
            .map_err(|wait| {
                ApiError::new(
                    ErrorCode::RateLimited,
                    format!("{per_min} directory searches per minute from one peer"),
                )
                .with("retry_after_s", Value::Int(wait))
            })?;
        let (found, _) = {
            let st = app.engine.read();
            crate::engine::directory::search(&st, &q, now, policy, &app.engine.presence)
        };
        Ok(ok(
            200,
            Value::Object(crate::engine::directory::page_value(&found, None)),
        ))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}
