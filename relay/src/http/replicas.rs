//! `POST /v1/federation/conversation` (SPEC.md CONVO-13): a peer that is home to a conversation
//! sends entries for this relay's replica. The handler checks the relay request, reads the
//! batch (each entry's hash and link, CONVO-4) and verifies the agent signature of every
//! envelope in it with its sender's key (the sender's key log fetched from its home relay when
//! it is not cached, FED-8); the writer decides the rest.

use super::answer::ok;
use super::request::relay_request;
use super::{App, Shared};
use crate::engine::decide::{local_sender, Command, Outcome};
use crate::engine::error::ApiError;
use crate::federation::keylogs::TransferFetches;
use axum::extract::{Request, State as AxState};
use axum::response::{IntoResponse, Response};
use formica_protocol::conversation::replica::Batch;
use formica_protocol::conversation::EntryBody;
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::keylog::KeyLog;
use formica_protocol::ErrorCode;

/// Nesting a batch adds around an envelope: the batch, `entries`, the entry.
const BATCH_DEPTH: usize = 3;

pub(crate) async fn conversation(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let l = &app.engine.policy.limits;
        let (origin, _, body) = relay_request(&app, req, l.batch_bytes_max).await?;
        let v = json::parse(
            &body,
            JsonLimits {
                bytes_max: l.batch_bytes_max,
                depth_max: l.json_depth_max + BATCH_DEPTH,
            },
        )?;
        let batch = Batch::from_value(&v, &app.peer_envelope_limits()).map_err(|e| {
            let mut a = ApiError::new(e.code, e.message);
            if let Some(f) = e.field {
                a = a.with("field", f.into());
            }
            a
        })?;
        let fetched = verify(&app, &batch).await?;
        match app
            .engine
            .writer
            .submit(Command::ConvReplica {
                origin,
                batch,
                fetched,
            })
            .await?
        {
            Outcome::Done(v) => Ok(ok(200, v)),
            other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
        }
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// Verifies every envelope of the batch (FED-6, FED-8): the sender's key valid at its `ts`,
/// from this relay's own log for its agents and from the cached or fetched log for others.
/// Returns the logs fetched (stored only if the writer accepts the batch).
async fn verify(app: &App, batch: &Batch) -> Result<Vec<KeyLog>, ApiError> {
    let mut fetches =
        TransferFetches::new(app.engine.policy.federation.keylog_fetches_per_transfer_max);
    let mut fetched: Vec<KeyLog> = Vec::new();
    // Entries the replica holds were verified when they came; the writer compares them byte
    // for byte (an author's key that changed since must not cut the replica off).
    let held = app
        .engine
        .read()
        .conv(&batch.conv)
        .filter(|r| r.home.is_some())
        .map_or(0, |r| r.conv.seq);
    for (i, e) in batch.entries.iter().enumerate() {
        let EntryBody::Envelope(se) = &e.body else {
            continue;
        };
        if e.seq <= held {
            continue;
        }
        let env = se.envelope();
        let at = |err: ApiError| err.with("field", format!("entries[{i}].envelope").into());
        if env.from.is_relay() {
            return Err(at(ApiError::new(
                ErrorCode::InvalidField,
                "a conversation entry holds an agent's envelope",
            )));
        }
        let key = if env.from.host() == &app.engine.host {
            let st = app.engine.read();
            *local_sender(&st, env).map_err(at)?.1
        } else {
            let (key, log) = app
                .fed
                .remote_key(&env.from, &env.key, env.ts, &mut fetches)
                .await
                .map_err(at)?;
            if let Some(log) = log {
                if !fetched.iter().any(|f| f.handle() == log.handle()) {
                    fetched.push(log);
                }
            }
            key
        };
        se.clone().verify(&key).map_err(|e| at(e.into()))?;
    }
    Ok(fetched)
}
