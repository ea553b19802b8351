//! Reading typed fields out of strict-JSON objects, with the unknown-field rule enforced.
//!
//! Every signed object in Formica has a closed schema (SPEC.md ENV-9, LOG-3): a member the schema
//! does not define is refused, never ignored, because it would be signed without being understood.
//! [`Fields`] hands members out by name and, at [`Fields::finish`], refuses whatever is left.

use crate::error::ErrorCode;
use crate::handle::{Handle, HandleError};
use crate::json::{Object, Value};
use crate::keys::{KeyId, PublicKey, Signature};

/// A schema violation at a named path such as `payload.text`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("unknown field `{path}`")]
    UnknownField { path: String },
    #[error("missing field `{path}`")]
    MissingField { path: String },
    #[error("invalid field `{path}`: {reason}")]
    InvalidField { path: String, reason: String },
    #[error("invalid handle in `{path}`: {source}")]
    InvalidHandle { path: String, source: HandleError },
    #[error("invalid key in `{path}`: {source}")]
    InvalidKey {
        path: String,
        source: crate::keys::KeyError,
    },
}

impl SchemaError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SchemaError::UnknownField { .. } => ErrorCode::UnknownField,
            SchemaError::MissingField { .. } => ErrorCode::MissingField,
            SchemaError::InvalidField { .. } => ErrorCode::InvalidField,
            SchemaError::InvalidHandle { .. } => ErrorCode::InvalidHandle,
            SchemaError::InvalidKey { source, .. } => source.code(),
        }
    }

    /// The path of the offending member (the `field` of an HTTP-4 answer).
    pub fn path(&self) -> &str {
        match self {
            SchemaError::UnknownField { path }
            | SchemaError::MissingField { path }
            | SchemaError::InvalidField { path, .. }
            | SchemaError::InvalidHandle { path, .. }
            | SchemaError::InvalidKey { path, .. } => path,
        }
    }

    pub fn invalid(path: &str, reason: impl Into<String>) -> SchemaError {
        SchemaError::InvalidField {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Hands out the members of one object and remembers which were taken.
#[derive(Debug)]
pub struct Fields<'a> {
    obj: &'a Object,
    prefix: String,
    taken: Vec<&'a str>,
}

impl<'a> Fields<'a> {
    /// Starts reading `v`, which must be an object; `prefix` is its path (`""` for the root).
    pub fn new(v: &'a Value, prefix: &str) -> Result<Fields<'a>, SchemaError> {
        match v {
            Value::Object(obj) => Ok(Fields {
                obj,
                prefix: prefix.to_owned(),
                taken: Vec::new(),
            }),
            other => Err(SchemaError::invalid(
                if prefix.is_empty() { "(root)" } else { prefix },
                format!("expected an object, found {}", other.kind()),
            )),
        }
    }

    /// The full path of a member.
    pub fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{}", self.prefix, key)
        }
    }

    /// An optional member.
    pub fn opt(&mut self, key: &str) -> Option<&'a Value> {
        let (k, v) = self.obj.iter().find(|(k, _)| *k == key)?;
        self.taken.push(k);
        Some(v)
    }

    /// A required member.
    pub fn req(&mut self, key: &str) -> Result<&'a Value, SchemaError> {
        self.opt(key).ok_or_else(|| SchemaError::MissingField {
            path: self.path(key),
        })
    }

    pub fn req_str(&mut self, key: &str) -> Result<&'a str, SchemaError> {
        let v = self.req(key)?;
        self.as_str(key, v)
    }

    pub fn opt_str(&mut self, key: &str) -> Result<Option<&'a str>, SchemaError> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => self.as_str(key, v).map(Some),
        }
    }

    fn as_str(&self, key: &str, v: &'a Value) -> Result<&'a str, SchemaError> {
        v.as_str().ok_or_else(|| {
            SchemaError::invalid(
                &self.path(key),
                format!("expected a string, found {}", v.kind()),
            )
        })
    }

    /// A required integer within `min..=max`.
    pub fn req_int(&mut self, key: &str, min: i64, max: i64) -> Result<i64, SchemaError> {
        let v = self.req(key)?;
        self.as_int(key, v, min, max)
    }

    pub fn opt_int(&mut self, key: &str, min: i64, max: i64) -> Result<Option<i64>, SchemaError> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => self.as_int(key, v, min, max).map(Some),
        }
    }

    fn as_int(&self, key: &str, v: &Value, min: i64, max: i64) -> Result<i64, SchemaError> {
        let n = v.as_i64().ok_or_else(|| {
            SchemaError::invalid(
                &self.path(key),
                format!("expected an integer, found {}", v.kind()),
            )
        })?;
        if n < min || n > max {
            return Err(SchemaError::invalid(
                &self.path(key),
                format!("{n} is outside {min}..={max}"),
            ));
        }
        Ok(n)
    }

    /// A required global handle.
    pub fn req_handle(&mut self, key: &str) -> Result<Handle, SchemaError> {
        let s = self.req_str(key)?;
        Handle::parse(s).map_err(|source| SchemaError::InvalidHandle {
            path: self.path(key),
            source,
        })
    }

    pub fn req_key(&mut self, key: &str) -> Result<PublicKey, SchemaError> {
        let s = self.req_str(key)?;
        self.key(key, s)
    }

    pub fn opt_key(&mut self, key: &str) -> Result<Option<PublicKey>, SchemaError> {
        match self.opt_str(key)? {
            None => Ok(None),
            Some(s) => self.key(key, s).map(Some),
        }
    }

    fn key(&self, key: &str, s: &str) -> Result<PublicKey, SchemaError> {
        PublicKey::parse_hex(s).map_err(|source| SchemaError::InvalidKey {
            path: self.path(key),
            source,
        })
    }

    pub fn req_key_id(&mut self, key: &str) -> Result<KeyId, SchemaError> {
        let s = self.req_str(key)?;
        KeyId::parse_hex(s).ok_or_else(|| {
            SchemaError::invalid(&self.path(key), "expected 32 lower-case hex characters")
        })
    }

    pub fn req_sig(&mut self, key: &str) -> Result<Signature, SchemaError> {
        let s = self.req_str(key)?;
        Signature::parse_hex(s).map_err(|_| {
            SchemaError::invalid(&self.path(key), "expected 128 lower-case hex characters")
        })
    }

    /// A required string from a closed set of words.
    pub fn req_word<T: Copy>(&mut self, key: &str, words: &[(&str, T)]) -> Result<T, SchemaError> {
        let s = self.req_str(key)?;
        self.word(key, s, words)
    }

    pub fn word<T: Copy>(&self, key: &str, s: &str, words: &[(&str, T)]) -> Result<T, SchemaError> {
        words
            .iter()
            .find(|(w, _)| *w == s)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let allowed: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
                SchemaError::invalid(
                    &self.path(key),
                    format!("expected one of {}", allowed.join(", ")),
                )
            })
    }

    /// Refuses any member that was not taken.
    pub fn finish(self) -> Result<(), SchemaError> {
        match self.obj.keys().find(|k| !self.taken.contains(k)) {
            Some(k) => Err(SchemaError::UnknownField { path: self.path(k) }),
            None => Ok(()),
        }
    }
}

/// Checks a free-text field: at most `chars_max` Unicode scalar values.
pub fn check_text(path: &str, s: &str, chars_max: usize) -> Result<(), SchemaError> {
    if s.chars().count() > chars_max {
        return Err(SchemaError::invalid(
            path,
            format!("longer than {chars_max} characters"),
        ));
    }
    Ok(())
}
