//! Presence (SPEC.md 18.4): signed statuses, heartbeats, and reads of what an agent may see of
//! others. Whether an agent is connected is observed by its inbox streams (`http::inbox`).

use super::answer::ok;
use super::request::{auth_request, own_document_key, parse_handle, HandleParam};
use super::{App, Shared};
use crate::engine::decide::{Command, Outcome};
use crate::engine::error::ApiError;
use crate::engine::presence;
use axum::extract::{Request, State as AxState};
use axum::response::{IntoResponse, Response};
use formica_protocol::{json, ErrorCode, Handle, Object, SignedStatus, Value};

/// PRES-3, API-20: an agent's budget of statuses and heartbeats.
fn update_limit(app: &App, me: &Handle) -> Result<(), ApiError> {
    let per_min = app.engine.policy.presence.updates_per_min;
    let mut b = app
        .presence_buckets
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    b.take(me, per_min, per_min.min(10), app.engine.now())
        .map_err(|wait| {
            ApiError::new(
                ErrorCode::RateLimited,
                format!("{per_min} presence updates per minute"),
            )
            .with("retry_after_s", Value::Int(wait))
        })
}

/// `PUT /v1/presence` (PRES-3).
pub(crate) async fn put_status(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let max = app.engine.policy.limits.body_bytes_max;
        let (me, body) = auth_request(&app, req, max).await?;
        let v = json::parse(&body, app.json_limits(max))?;
        let signed = SignedStatus::from_value(v)?;
        let s = signed.status();
        let key = own_document_key(&app, &me, "status", (&s.handle, &s.key, s.ts))?;
        signed.verify(&key)?;
        let ttl_max = app.engine.policy.presence.status_ttl_ms_max;
        if s.expires - s.ts > ttl_max {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                format!("expires is more than presence.status_ttl_ms_max ({ttl_max} ms) after ts"),
            )
            .with("field", "expires".into()));
        }
        update_limit(&app, &me)?;
        let v = match app
            .engine
            .writer
            .submit(Command::StatusSet { status: signed })
            .await?
        {
            Outcome::Done(v) => v,
            other => return Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
        };
        // Durable: contacts see the change now, and again when it expires (refresh sets the
        // status's timer).
        let now = app.engine.now();
        app.engine.presence.refresh(&app.engine.read(), &me, now);
        Ok(ok(200, v))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// `POST /v1/presence/heartbeat` (API-20).
pub(crate) async fn heartbeat(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let (me, _) = auth_request(&app, req, 0).await?;
        update_limit(&app, &me)?;
        let now = app.engine.now();
        let until = app
            .engine
            .presence
            .heartbeat(&me, now, app.engine.policy.presence.ttl_ms);
        app.engine.presence.refresh(&app.engine.read(), &me, now);
        let mut o = Object::new();
        o.insert("handle", me.as_str().into());
        o.insert("connected_until", Value::Int(until));
        Ok(ok(200, Value::Object(o)))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// `GET /v1/presence/{handle}` (API-21).
pub(crate) async fn get_presence(
    AxState(app): AxState<Shared>,
    HandleParam(handle): HandleParam,
    req: Request,
) -> Response {
    let res = async {
        let (me, _) = auth_request(&app, req, 0).await?;
        let subject = parse_handle(&app, &handle)?;
        let now = app.engine.now();
        let st = app.engine.read();
        // PROF-8's answer for everything that is not shown.
        let v = presence::view(&st, &app.engine.presence, &me, &subject, now)
            .ok_or_else(crate::engine::directory::not_shown)?;
        Ok(ok(200, v))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// `GET /v1/presence` (API-22): the caller's contacts whose presence it may see.
pub(crate) async fn list_presence(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let (me, _) = auth_request(&app, req, 0).await?;
        let now = app.engine.now();
        let st = app.engine.read();
        let a = st
            .agents
            .get(&me)
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "not registered"))?;
        let list = a
            .contacts
            .keys()
            .filter_map(|h| presence::view(&st, &app.engine.presence, &me, h, now))
            .collect();
        let mut o = Object::new();
        o.insert("presence", Value::Array(list));
        Ok(ok(200, Value::Object(o)))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}
