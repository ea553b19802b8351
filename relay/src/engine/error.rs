//! The relay's one error type: a stable code, a message safe to show the client, and extra
//! members. Its HTTP rendering is in `http::answer`; the status of every answer comes from
//! `ErrorCode::http_status` in the protocol crate, and nothing in the relay picks a status for
//! an error.

use crate::store::StoreError;
use formica_protocol::{ErrorCode, Object, Value};

/// An error answer: a stable code, a message safe to show the client, and extra members
/// (`server_time`, `oldest`, `field`, `retry_after_s`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub extra: Vec<(&'static str, Value)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            extra: Vec::new(),
        }
    }

    pub fn with(mut self, k: &'static str, v: Value) -> ApiError {
        self.extra.push((k, v));
        self
    }

    /// Prefixes `field` with the path of the member the failing object sits in (`entry`).
    pub fn under(mut self, prefix: &str) -> ApiError {
        for (k, v) in self.extra.iter_mut() {
            if *k == "field" {
                if let Value::String(f) = v {
                    *f = if f == "(root)" {
                        prefix.to_owned()
                    } else {
                        format!("{prefix}.{f}")
                    };
                }
            }
        }
        self
    }

    /// The `{"error": {...}}` body.
    pub fn body(&self) -> Value {
        let mut e = Object::new();
        e.insert("code", self.code.as_str().into());
        e.insert("message", self.message.clone().into());
        e.insert("retry", self.code.retry().as_str().into());
        for (k, v) in &self.extra {
            e.insert(*k, v.clone());
        }
        let mut o = Object::new();
        o.insert("error", Value::Object(e));
        Value::Object(o)
    }

    pub fn internal(what: impl std::fmt::Display) -> ApiError {
        // The detail goes to the log, not to the client.
        tracing::error!(error = %what, "internal error");
        ApiError::new(ErrorCode::Internal, "internal error; nothing was accepted")
    }
}

impl From<formica_protocol::EnvelopeError> for ApiError {
    fn from(e: formica_protocol::EnvelopeError) -> Self {
        let mut a = ApiError::new(e.code(), e.to_string());
        if let formica_protocol::EnvelopeError::Schema(s) = &e {
            a = a.with("field", schema_field(s).into());
        }
        a
    }
}

impl From<formica_protocol::ProfileError> for ApiError {
    fn from(e: formica_protocol::ProfileError) -> Self {
        let mut a = ApiError::new(e.code(), e.to_string());
        if let formica_protocol::ProfileError::Schema(s) = &e {
            a = a.with("field", schema_field(s).into());
        }
        a
    }
}

impl From<formica_protocol::StatusError> for ApiError {
    fn from(e: formica_protocol::StatusError) -> Self {
        let mut a = ApiError::new(e.code(), e.to_string());
        if let formica_protocol::StatusError::Schema(s) = &e {
            a = a.with("field", schema_field(s).into());
        }
        a
    }
}

impl From<formica_protocol::KeyLogError> for ApiError {
    fn from(e: formica_protocol::KeyLogError) -> Self {
        use formica_protocol::KeyLogError::{BadProof, Schema};
        let a = ApiError::new(e.code(), e.to_string());
        match &e {
            Schema(s) => a.with("field", schema_field(s).into()),
            // A proof of possession that does not verify names its member (LOG-2).
            BadProof { field, .. } => a.with("field", (*field).into()),
            _ => a,
        }
    }
}

impl From<formica_protocol::JsonError> for ApiError {
    fn from(e: formica_protocol::JsonError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<formica_protocol::schema::SchemaError> for ApiError {
    fn from(e: formica_protocol::schema::SchemaError) -> Self {
        ApiError::new(e.code(), e.to_string()).with("field", schema_field(&e).into())
    }
}

impl From<formica_protocol::time::TimeError> for ApiError {
    fn from(e: formica_protocol::time::TimeError) -> Self {
        ApiError::new(e.code(), e.to_string()).with("server_time", Value::Int(e.server_time()))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Full(_) => {
                tracing::error!(error = %e, "storage full");
                ApiError::new(
                    ErrorCode::StorageFull,
                    "the relay cannot store more data; nothing was accepted",
                )
                .with("retry_after_s", Value::Int(60))
            }
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "the database cannot be reached");
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the relay cannot reach its database now; nothing was accepted",
                )
                .with("retry_after_s", Value::Int(5))
            }
            other => ApiError::internal(other),
        }
    }
}

fn schema_field(e: &formica_protocol::schema::SchemaError) -> String {
    e.path().to_owned()
}
