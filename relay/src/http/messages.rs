//! Message status (SPEC.md 15.13): a sender's view of each recipient's delivery state.

use super::answer::{obj, ok};
use super::request::{auth_request, IdParam};
use super::Shared;
use crate::engine::error::ApiError;
use axum::extract::{Request, State as AxState};
use axum::response::{IntoResponse, Response};
use formica_protocol::{ErrorCode, Value};

use formica_protocol::envelope::MessageId;
use formica_protocol::Object;

pub(crate) async fn message_status(
    AxState(app): AxState<Shared>,
    IdParam(id): IdParam,
    req: Request,
) -> Response {
    let res = async {
        let (me, _) = auth_request(&app, req, 0).await?;
        let nf = || ApiError::new(ErrorCode::NotFound, format!("no message {id} sent by you"));
        let mid = MessageId::parse_hex(&id).ok_or_else(nf)?;
        let st = app.engine.read();
        let m = st.message(&mid).filter(|m| m.sender == me).ok_or_else(nf)?;
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
                if let Some(reason) = &r.reason {
                    o.insert("reason", reason.as_str().into());
                }
                Value::Object(o)
            })
            .collect();
        let mut members = vec![
            ("id", mid.to_hex().into()),
            ("type", m.msg_type.as_str().into()),
            ("ts", Value::Int(m.ts)),
            ("ack_by", m.ack_by.map(Value::Int).unwrap_or(Value::Null)),
            ("recipients", Value::Array(recipients)),
        ];
        // A conversation envelope: its conversation and entry (null until its home relay
        // numbered it, SPEC.md CONVO-16).
        if let Some((c, seq)) = m.conv {
            members.push(("conv", c.to_hex().into()));
            members.push((
                "seq",
                seq.map(|n| Value::Int(n as i64)).unwrap_or(Value::Null),
            ));
        }
        Ok(ok(200, obj(members)))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}
