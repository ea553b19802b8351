//! Answers: every JSON answer, and the rendering of [`ApiError`] into one. This is the only
//! place where an error becomes an HTTP status, and the status comes from
//! `ErrorCode::http_status` in the protocol crate.

use crate::engine::error::ApiError;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use formica_protocol::{canon, Object, Value};

/// A JSON answer with `status` and the canonical bytes of `v`.
pub fn ok(status: u16, v: Value) -> Response {
    json_response(status, &v)
}

/// A JSON object from its members, in any order (the answer is canonicalized).
pub fn obj(members: Vec<(&str, Value)>) -> Value {
    let mut o = Object::new();
    for (k, v) in members {
        o.insert(k, v);
    }
    Value::Object(o)
}

/// A JSON answer with a status.
pub fn json_response(status: u16, v: &Value) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        canon::canonicalize(v),
    )
        .into_response();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = json_response(self.code.http_status(), &self.body());
        // For the metrics and the debug log (observe.rs).
        r.extensions_mut().insert(self.code);
        if let Some((_, Value::Int(s))) = self.extra.iter().find(|(k, _)| *k == "retry_after_s") {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert("retry-after", v);
            }
        }
        r
    }
}
