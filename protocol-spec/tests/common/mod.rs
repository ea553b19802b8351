//! Helpers shared by the protocol crate's integration tests: building values and reading the
//! vector files under `protocol-spec/vectors/`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use formica_protocol::json::{self, JsonLimits, Object, Value};
use std::path::PathBuf;

pub fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

/// Reads and strictly parses a vector file (vector files are themselves strict JSON).
pub fn load(name: &str) -> Value {
    let path = vectors_dir().join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    json::parse(
        &bytes,
        JsonLimits {
            bytes_max: 64 << 20,
            depth_max: 64,
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The path an envelope's schema error names (the `field` of its HTTP-4 answer).
pub fn envelope_error_field(e: &formica_protocol::envelope::EnvelopeError) -> Option<&str> {
    match e {
        formica_protocol::envelope::EnvelopeError::Schema(s) => Some(s.path()),
        _ => None,
    }
}

pub fn s(x: &str) -> Value {
    Value::String(x.to_owned())
}
pub fn i(x: i64) -> Value {
    Value::Int(x)
}
pub fn arr(items: Vec<Value>) -> Value {
    Value::Array(items)
}
pub fn obj(members: &[(&str, Value)]) -> Value {
    let mut o = Object::new();
    for (k, v) in members {
        o.insert(*k, v.clone());
    }
    Value::Object(o)
}

/// Field access for test code, panicking with the path on a shape error.
pub trait Get {
    fn get(&self, k: &str) -> &Value;
    fn str_(&self, k: &str) -> &str;
    fn opt(&self, k: &str) -> Option<&Value>;
    fn list(&self, k: &str) -> &[Value];
}

impl Get for Value {
    fn get(&self, k: &str) -> &Value {
        self.as_object()
            .and_then(|o| o.get(k))
            .unwrap_or_else(|| panic!("missing {k} in {self:?}"))
    }
    fn str_(&self, k: &str) -> &str {
        self.get(k)
            .as_str()
            .unwrap_or_else(|| panic!("{k} is not a string"))
    }
    fn opt(&self, k: &str) -> Option<&Value> {
        self.as_object().and_then(|o| o.get(k))
    }
    fn list(&self, k: &str) -> &[Value] {
        self.get(k)
            .as_array()
            .unwrap_or_else(|| panic!("{k} is not an array"))
    }
}
