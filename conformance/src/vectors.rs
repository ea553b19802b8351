//! The language-neutral vector files of `protocol-spec/vectors/`, embedded at build time so the
//! binary works anywhere. Cases are generated from them (`vec.<file>.<index>`).

use formica_protocol::json::{self, JsonLimits};
use formica_protocol::Value;
use std::sync::OnceLock;

pub const CANON: &str = include_str!("../../protocol-spec/vectors/canon.json");
pub const HANDLES: &str = include_str!("../../protocol-spec/vectors/handles.json");
pub const ENVELOPES_VALID: &str = include_str!("../../protocol-spec/vectors/envelopes_valid.json");
pub const ENVELOPES_INVALID: &str =
    include_str!("../../protocol-spec/vectors/envelopes_invalid.json");
pub const KEYLOGS: &str = include_str!("../../protocol-spec/vectors/keylogs.json");
pub const POW: &str = include_str!("../../protocol-spec/vectors/pow.json");
pub const AUTH: &str = include_str!("../../protocol-spec/vectors/auth.json");
pub const ED25519: &str = include_str!("../../protocol-spec/vectors/ed25519.json");
pub const PROFILES: &str = include_str!("../../protocol-spec/vectors/profiles.json");
pub const PRESENCE: &str = include_str!("../../protocol-spec/vectors/presence.json");
pub const CONVERSATIONS: &str = include_str!("../../protocol-spec/vectors/conversations.json");
pub const SEALED: &str = include_str!("../../protocol-spec/vectors/sealed.json");

fn parse(text: &str) -> Value {
    // The vector files are strict-JSON documents (JSON-12); a file that is not is a bug in the
    // spec's vectors, reported by the cases as an empty file.
    json::parse(
        text.as_bytes(),
        JsonLimits {
            bytes_max: 1 << 24,
            depth_max: 128,
        },
    )
    .unwrap_or(Value::Null)
}

macro_rules! file {
    ($fn:ident, $c:ident) => {
        pub fn $fn() -> &'static Value {
            static V: OnceLock<Value> = OnceLock::new();
            V.get_or_init(|| parse($c))
        }
    };
}

file!(canon, CANON);
file!(handles, HANDLES);
file!(envelopes_valid, ENVELOPES_VALID);
file!(envelopes_invalid, ENVELOPES_INVALID);
file!(keylogs, KEYLOGS);
file!(pow, POW);
file!(auth, AUTH);
file!(ed25519, ED25519);
file!(profiles, PROFILES);
file!(presence, PRESENCE);
file!(conversations, CONVERSATIONS);
file!(sealed, SEALED);

/// The array `key` of a vector file.
pub fn list(file: &'static Value, key: &str) -> &'static [Value] {
    file.as_object()
        .and_then(|o| o.get(key))
        .and_then(Value::as_array)
        .unwrap_or(&[])
}

/// A string member of a vector case.
pub fn field<'a>(case: &'a Value, key: &str) -> Option<&'a str> {
    case.as_object()?.get(key)?.as_str()
}

/// The input bytes of a canon case (`input` text or `input_hex`).
pub fn input_bytes(case: &Value) -> Vec<u8> {
    if let Some(t) = field(case, "input") {
        return t.as_bytes().to_vec();
    }
    field(case, "input_hex")
        .and_then(formica_protocol::hex::decode)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vector_file_parses() {
        for (name, v) in [
            ("canon", canon()),
            ("handles", handles()),
            ("envelopes_valid", envelopes_valid()),
            ("envelopes_invalid", envelopes_invalid()),
            ("keylogs", keylogs()),
            ("pow", pow()),
            ("auth", auth()),
            ("ed25519", ed25519()),
            ("profiles", profiles()),
            ("presence", presence()),
            ("conversations", conversations()),
        ] {
            assert!(v.as_object().is_some(), "{name}.json did not parse");
        }
    }
}
