//! Profiles and the directory (SPEC.md section 18): publishing a profile, reading one, searching
//! the listed ones, and a profile as an A2A agent card.

use super::answer::ok;
use super::request::{auth_request, ip_limit, own_document_key, parse_handle, peer, HandleParam};
use super::{App, Shared};
use crate::engine::decide::{Command, Outcome};
use crate::engine::directory;
use crate::engine::error::ApiError;
use crate::engine::state::StoredProfile;
use axum::extract::{Request, State as AxState};
use axum::response::{IntoResponse, Response};
use formica_protocol::{json, ErrorCode, Handle, Object, SignedProfile, Value};

/// Who is reading: an authenticated agent, or (with a public directory) anybody.
enum Viewer {
    Agent(Handle),
    Anonymous,
}

/// PROF-7: an `Authorization` header is checked as section 11 says; without one, the request
/// is refused unless the directory is public, and then counted against its address (HTTP-10).
async fn viewer(app: &App, req: Request) -> Result<Viewer, ApiError> {
    if req.headers().contains_key("authorization") || !app.engine.policy.directory.public {
        let (me, _) = auth_request(app, req, 0).await?;
        return Ok(Viewer::Agent(me));
    }
    ip_limit(app, peer(&req), req.headers())?;
    Ok(Viewer::Anonymous)
}

/// The profile of `owner` if `viewer` may see it now (PROF-6, PROF-7), with the owner's tier.
fn visible(app: &App, viewer: &Viewer, owner: &Handle) -> Option<(StoredProfile, usize)> {
    let now = app.engine.now();
    let st = app.engine.read();
    if !st.is_local(owner) {
        return None;
    }
    let p = st.profiles.get(owner)?;
    if p.expired(now) {
        return None;
    }
    let shown = p.listed()
        || match viewer {
            Viewer::Anonymous => false,
            Viewer::Agent(me) => {
                me == owner
                    || st
                        .agents
                        .get(owner)
                        .is_some_and(|a| a.contacts.contains_key(me))
            }
        };
    shown.then(|| (p.clone(), st.tier_of(owner, now, &app.engine.policy)))
}

/// `PUT /v1/profile` (PROF-4).
pub(crate) async fn put_profile(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let dir = &app.engine.policy.directory;
        let (me, body) = auth_request(&app, req, dir.profile_bytes_max).await?;
        let v = json::parse(&body, app.json_limits(dir.profile_bytes_max))?;
        let signed = SignedProfile::from_value(v)?;
        let p = signed.profile();
        let key = own_document_key(&app, &me, "profile", (&p.handle, &p.key, p.ts))?;
        signed.verify(&key)?;
        match app
            .engine
            .writer
            .submit(Command::ProfileSet { profile: signed })
            .await?
        {
            Outcome::Done(v) => Ok(ok(200, v)),
            other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
        }
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// `GET /v1/profiles/{handle}` (API-18).
pub(crate) async fn get_profile(
    AxState(app): AxState<Shared>,
    HandleParam(handle): HandleParam,
    req: Request,
) -> Response {
    let res = async {
        let who = viewer(&app, req).await?;
        let owner = parse_handle(&app, &handle)?;
        let (p, tier) = visible(&app, &who, &owner).ok_or_else(directory::not_shown)?;
        Ok(ok(200, directory::entry(&p, tier)))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// `GET /v1/profiles/{handle}/agent-card` (PROF-10).
pub(crate) async fn agent_card(
    AxState(app): AxState<Shared>,
    HandleParam(handle): HandleParam,
    req: Request,
) -> Response {
    let res = async {
        let who = viewer(&app, req).await?;
        let owner = parse_handle(&app, &handle)?;
        let (p, _) = visible(&app, &who, &owner).ok_or_else(directory::not_shown)?;
        let signed = p
            .signed()
            .ok_or_else(|| ApiError::internal("a stored profile does not parse"))?;
        Ok(ok(200, card(&app.engine.host.to_string(), &signed)))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// PROF-10's mapping of a profile to an A2A agent card.
fn card(relay: &str, p: &SignedProfile) -> Value {
    let prof = p.profile();
    let s = |x: &str| Value::from(x);
    let base = format!("https://{relay}/");
    let here = format!("https://{relay}/v1/profiles/{}", prof.handle);
    let obj = |members: Vec<(&str, Value)>| {
        let mut o = Object::new();
        for (k, v) in members {
            o.insert(k, v);
        }
        Value::Object(o)
    };
    let json_mode = || Value::Array(vec![s("application/json")]);
    let skills = prof
        .capabilities
        .iter()
        .map(|c| {
            let description = match &c.version {
                Some(v) => format!("{} {v}", c.id),
                None => c.id.clone(),
            };
            obj(vec![
                ("id", s(&c.id)),
                ("name", s(&c.id)),
                ("description", description.into()),
                ("tags", Value::Array(c.tags.iter().map(|t| s(t)).collect())),
            ])
        })
        .collect();
    let extension = obj(vec![
        ("uri", here.clone().into()),
        ("description", s("Formica signed profile")),
        ("required", Value::Bool(false)),
        (
            "params",
            obj(vec![
                ("handle", s(prof.handle.as_str())),
                ("profile", p.value().clone()),
            ]),
        ),
    ]);
    obj(vec![
        ("name", s(&prof.name)),
        (
            "description",
            s(prof.description.as_deref().unwrap_or(&prof.name)),
        ),
        ("version", prof.seq.to_string().into()),
        ("protocolVersion", s("0.3.0")),
        ("url", here.into()),
        ("preferredTransport", s("formica/1")),
        (
            "supportedInterfaces",
            Value::Array(vec![obj(vec![
                ("url", base.clone().into()),
                ("protocolBinding", s("formica/1")),
                ("protocolVersion", s("1")),
            ])]),
        ),
        (
            "provider",
            obj(vec![("organization", s(relay)), ("url", base.into())]),
        ),
        ("defaultInputModes", json_mode()),
        ("defaultOutputModes", json_mode()),
        (
            "capabilities",
            obj(vec![
                ("streaming", Value::Bool(true)),
                ("pushNotifications", Value::Bool(false)),
                ("extensions", Value::Array(vec![extension])),
            ]),
        ),
        ("skills", Value::Array(skills)),
    ])
}

/// PROF-9: an agent's search budget, at its tier's `searches_per_min`.
fn search_limit(app: &App, me: &Handle) -> Result<(), ApiError> {
    let now = app.engine.now();
    let per_min = {
        let st = app.engine.read();
        let tier = st.tier_of(me, now, &app.engine.policy);
        app.engine.policy.tiers[tier].searches_per_min
    };
    let mut b = app.search_buckets.lock().unwrap_or_else(|p| p.into_inner());
    b.take(me, per_min, (per_min / 4).max(10), now)
        .map_err(|wait| {
            ApiError::new(
                ErrorCode::RateLimited,
                format!("{per_min} directory searches per minute at your tier"),
            )
            .with("retry_after_s", Value::Int(wait))
        })
}

/// `GET /v1/directory` (PROF-9).
pub(crate) async fn directory(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let uri = req.uri().clone();
        let who = viewer(&app, req).await?;
        let q = directory::parse_query(uri.query(), &app.engine.policy, &app.engine.host)?;
        match &who {
            Viewer::Agent(me) => search_limit(&app, me)?,
            // PRES-4: presence is never shown without authentication, not even as a filter.
            Viewer::Anonymous if q.federated || q.status.is_some() => {
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    "a federated search, and a search by presence, need an Authorization: Formica header",
                ))
            }
            Viewer::Anonymous => {}
        }
        let now = app.engine.now();
        let (found, next) = {
            let st = app.engine.read();
            directory::search(&st, &q, now, &app.engine.policy, &app.engine.presence)
        };
        if !q.federated {
            return Ok(ok(
                200,
                Value::Object(directory::page_value(&found, next.as_ref())),
            ));
        }
        // PROF-11: this relay's page, then each peer's, in host order; no cursor.
        let mut peers = if app.engine.policy.federation.enabled {
            let _permit = app.federated_searches.try_acquire().map_err(|_| {
                ApiError::new(
                    ErrorCode::Unavailable,
                    "too many federated searches in progress; try again in a second",
                )
                .with("retry_after_s", Value::Int(1))
            })?;
            app.fed.search_peers(&q).await
        } else {
            Vec::new()
        };
        peers.sort_by(|a, b| a.relay.cmp(&b.relay));
        let mut o = directory::page_value(&found, None);
        let mut relays = vec![relay_entry(
            app.engine.host.as_str(),
            "ok",
            None,
            found.len(),
        )];
        let mut results = match o.remove("results") {
            Some(Value::Array(r)) => r,
            _ => Vec::new(),
        };
        for p in &peers {
            relays.push(relay_entry(
                p.relay.as_str(),
                p.status,
                p.code.as_deref(),
                p.results.len(),
            ));
            results.extend(p.results.iter().cloned());
        }
        o.insert("results", Value::Array(results));
        o.insert(
            "partial",
            Value::Bool(peers.iter().any(|p| p.status != "ok")),
        );
        o.insert("relays", Value::Array(relays));
        Ok(ok(200, Value::Object(o)))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// One relay's part of a federated search (PROF-11).
fn relay_entry(relay: &str, status: &str, code: Option<&str>, n: usize) -> Value {
    let mut o = Object::new();
    o.insert("relay", relay.into());
    o.insert("status", status.into());
    if let Some(c) = code {
        o.insert("code", c.into());
    }
    o.insert("results", Value::Int(n as i64));
    Value::Object(o)
}
