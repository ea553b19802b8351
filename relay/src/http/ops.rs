//! Operational endpoints (SPEC.md 15.1, 15.2): the signed descriptor, `/health`, `/ready`,
//! `/metrics` (Prometheus), the OpenAPI document, and the answers for unknown paths and methods.

use super::answer::{obj, ok};
use super::Shared;
use crate::engine::error::ApiError;
use axum::extract::State as AxState;
use axum::response::{IntoResponse, Response};
use formica_protocol::ErrorCode;
use std::sync::atomic::Ordering;

/// The OpenAPI 3.1 document of the client API, served at `/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

pub(crate) async fn descriptor(AxState(app): AxState<Shared>) -> Response {
    ok(200, app.engine.descriptor())
}

pub(crate) async fn health() -> Response {
    ok(200, obj(vec![("status", "ok".into())]))
}

/// Ready: started, not shutting down, and it takes writes (after a failed write, or while free
/// space is below `limits.store_free_bytes_min`, the relay keeps serving reads and answers
/// `/ready` with 503 until writes are accepted again).
pub(crate) async fn ready(AxState(app): AxState<Shared>) -> Response {
    let health = &app.engine.store_health;
    let why = if !app.engine.ready.load(Ordering::Relaxed) {
        Some("the relay is starting or shutting down")
    } else if health.db_down() {
        Some("the relay cannot reach its database (PostgreSQL), or is loading its state again from it; it answers unavailable until then")
    } else if !health.writable() {
        Some("the relay's store refuses writes (disk full?); reads are served, writes resume once it can be written")
    } else if health.low_space() {
        Some("free space is below limits.store_free_bytes_min, so writes are refused; reads are served, writes resume once there is more")
    } else {
        None
    };
    match why {
        None => ok(200, obj(vec![("status", "ready".into())])),
        Some(why) => ApiError::new(ErrorCode::Unavailable, why).into_response(),
    }
}

pub(crate) async fn metrics(AxState(app): AxState<Shared>) -> Response {
    let mut text = crate::engine::metrics::Metrics::render(&app.engine);
    text.push_str(&app.http_metrics.render());
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

pub(crate) async fn openapi() -> Response {
    ([("content-type", "application/json")], OPENAPI_JSON).into_response()
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not accept that method",
    )
}
