//! Envelopes (SPEC.md 15.6-15.8): one at a time or in batches. The steps of the ingest pipeline
//! (SPEC.md 15.9) that can run in parallel run here (1-10, with 7 and 8 as early answers); the
//! writer decides 7-10 again against the state (`engine::decide::ingest`).

use super::answer::{obj, ok};
use super::request::{read_body, take_envelopes};
use super::{App, Shared};
use crate::engine::decide::{Command, Outcome};
use crate::engine::error::ApiError;
use crate::engine::state::State;
use axum::extract::{Request, State as AxState};
use axum::response::{IntoResponse, Response};
use formica_protocol::{ErrorCode, Value};
use std::sync::atomic::Ordering;

use formica_protocol::envelope::{MessageId, SignedEnvelope, VerifiedEnvelope};
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::schema::Fields;
use formica_protocol::{canon, Handle, Object, PublicKey};

/// Steps 1-10 of the ingest pipeline (SPEC.md 15.9) at the edge; the writer decides 7-10 again
/// against the state.
///
/// 1. size limit (done by the caller when reading the body)
/// 2. to 5. strict parse, version and type, schema, canonical signing input and id (done by
///    `SignedEnvelope::parse` before this is called)
/// 6. freshness and skew
/// 7. dedup (a cheap early answer; the writer checks again)
/// 8. sender homed here, key valid at the envelope's time
/// 9. strict signature check
/// 10. per-key rate limit (the writer applies the rest of the policy)
pub(crate) fn verify_envelope(
    app: &App,
    se: SignedEnvelope,
) -> Result<Result<VerifiedEnvelope, MessageId>, ApiError> {
    let env = se.envelope();
    // 6. Freshness (the error carries the relay's time).
    app.engine.policy.time.check(env.ts, app.engine.now())?;
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
        let st = app.engine.state.read_unsettled();
        match sender_key(app, &st, &se) {
            Ok(Some(key)) => (key, tier_index(app, &st, &env.from)),
            _ => {
                drop(st);
                let st = app.engine.read();
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
    let tier = &app.engine.policy.tiers[tier];
    let (per_min, tier_name) = (tier.rate_per_min, &tier.name);
    let burst = (per_min / 4).max(10);
    app.key_buckets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take(&verified.envelope().key, per_min, burst, app.engine.now())
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
fn sender_key(app: &App, st: &State, se: &SignedEnvelope) -> Result<Option<PublicKey>, ApiError> {
    let env = se.envelope();
    // 7. Dedup before the key lookup, so a replay after a rotation is still `duplicate`.
    if st.seen(&se.id(), env.ts) {
        return Ok(None);
    }
    if env.from.host() != &app.engine.host {
        return Err(ApiError::new(
            ErrorCode::UnknownSender,
            format!("{} is not homed on this relay", env.from),
        ));
    }
    let (_, key) = crate::engine::decide::local_sender(st, env)?;
    Ok(Some(*key))
}

/// The sender's tier (an index into the policy's tiers).
fn tier_index(app: &App, st: &State, from: &Handle) -> usize {
    st.tier_of(from, app.engine.now(), &app.engine.policy)
        .min(app.engine.policy.tiers.len() - 1)
}

fn accepted_value(out: &Outcome) -> Result<(u16, Value), ApiError> {
    match out {
        Outcome::Accepted { id, conv } => {
            let mut members = vec![("id", id.to_hex().into()), ("result", "accepted".into())];
            if let Some((c, seq)) = conv {
                members.push(("conv", c.to_hex().into()));
                if let Some(seq) = seq {
                    members.push(("seq", Value::Int(*seq as i64)));
                }
            }
            Ok((201, obj(members)))
        }
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
        Ok(v) => app.engine.writer.submit(Command::Envelope { env: v }).await,
    }
}

pub(crate) async fn post_envelope(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let body = read_body(req.into_body(), app.engine.policy.limits.envelope_bytes_max).await?;
        let se = SignedEnvelope::parse(&body, &app.envelope_limits())?;
        let out = ingest(&app, se).await?;
        app.engine.metrics.count(&out);
        let (status, v) = accepted_value(&out)?;
        Ok(ok(status, v))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| {
        app.engine.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        e.into_response()
    })
}

pub(crate) async fn post_batch(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        let l = &app.engine.policy.limits;
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
                    Ok(Ok(v)) => app.engine.writer.submit(Command::Envelope { env: v }).await,
                }
            }
        });
        let results = futures_util::future::join_all(futs).await;
        let mut out = Vec::with_capacity(results.len());
        for (i, r) in results.into_iter().enumerate() {
            let mut item = Object::new();
            item.insert("index", Value::Int(i as i64));
            match r.and_then(|o| {
                app.engine.metrics.count(&o);
                accepted_value(&o)
            }) {
                Ok((_, Value::Object(o))) => {
                    for (k, v) in o.iter() {
                        item.insert(k, v.clone());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    app.engine.metrics.rejected.fetch_add(1, Ordering::Relaxed);
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
