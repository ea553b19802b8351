//! Contacts and contact requests (SPEC.md 15.14, 15.15): listing, granting and removing
//! contacts, and answering the requests strangers sent.

use super::answer::{obj, ok};
use super::request::{auth_request, parse_handle, HandleParam, IdParam};
use super::Shared;
use crate::engine::decide::{Command, Outcome};
use crate::engine::error::ApiError;
use axum::extract::{Request, State as AxState};
use axum::response::{IntoResponse, Response};
use formica_protocol::{ErrorCode, Value};

use super::App;
use formica_protocol::envelope::{ContactLevel, MessageId};
use formica_protocol::json;
use formica_protocol::schema::Fields;
use formica_protocol::Object;

/// Submits a command whose outcome is a ready answer body (contacts, contact requests).
async fn submit_done(app: &App, cmd: Command) -> Result<Response, ApiError> {
    match app.engine.writer.submit(cmd).await? {
        Outcome::Done(v) => Ok(ok(200, v)),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

pub(crate) async fn list_contacts(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let (me, _) = auth_request(&app, req, 0).await?;
        let st = app.engine.read();
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
    let v = json::parse(
        body,
        app.json_limits(app.engine.policy.limits.body_bytes_max),
    )?;
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

pub(crate) async fn put_contact(
    AxState(app): AxState<Shared>,
    HandleParam(handle): HandleParam,
    req: Request,
) -> Response {
    let res = async {
        let (me, body) = auth_request(&app, req, app.engine.policy.limits.body_bytes_max).await?;
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

pub(crate) async fn delete_contact(
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

pub(crate) async fn list_requests(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let (me, _) = auth_request(&app, req, 0).await?;
        let st = app.engine.read();
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
        let (me, body) = auth_request(&app, req, app.engine.policy.limits.body_bytes_max).await?;
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

pub(crate) async fn accept_request(
    AxState(app): AxState<Shared>,
    IdParam(id): IdParam,
    req: Request,
) -> Response {
    answer_request(app, id, req, true).await
}

pub(crate) async fn reject_request(
    AxState(app): AxState<Shared>,
    IdParam(id): IdParam,
    req: Request,
) -> Response {
    answer_request(app, id, req, false).await
}
