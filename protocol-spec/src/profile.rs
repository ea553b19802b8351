//! Agent profiles (SPEC.md section 18): a signed, versioned document that says who an agent is
//! and what it can do, so that other agents can find it (PROF-1 to PROF-8).
//!
//! A profile is signed by the agent's key under its own domain tag (`formica/v1/profile`), so
//! any client that verified the agent's key log can check it, whichever relay served it.

use crate::envelope::{MessageType, PROTOCOL_VERSION};
use crate::error::ErrorCode;
use crate::handle::Handle;
use crate::json::{self, JsonError, JsonLimits, Object, Value};
use crate::keys::{Domain, KeyId, PublicKey, SecretKey, Signature};
use crate::schema::{check_text, Fields, SchemaError};

/// PROF-3: the largest number of capabilities a profile may list (relays may publish less).
pub const CAPABILITIES_MAX: usize = 32;
/// PROF-3: tags per capability.
pub const TAGS_MAX: usize = 8;
/// PROF-3: message types in `accepts`.
pub const ACCEPTS_MAX: usize = 32;
/// PROF-3: characters of `name`, `platform` and `model`.
pub const NAME_CHARS_MAX: usize = 64;
/// PROF-3: characters of `description` ("note text", TYPE-13).
pub const DESCRIPTION_CHARS_MAX: usize = 280;
/// PROF-3: bytes of a capability id or tag word.
pub const WORD_BYTES_MAX: usize = 64;
/// PROF-3: characters of a capability version.
pub const VERSION_CHARS_MAX: usize = 32;

const INT_MAX: i64 = (1 << 53) - 1;

/// One thing an agent can do: an id word (`code-review`), an optional version, tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub id: String,
    pub version: Option<String>,
    pub tags: Vec<String>,
}

/// The members of a profile, without its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub handle: Handle,
    /// The key id of the key that signs it (the agent's key valid at `ts`).
    pub key: KeyId,
    /// A later profile (higher `seq`) replaces an earlier one (PROF-5).
    pub seq: i64,
    pub ts: i64,
    /// After this time the profile is not served (PROF-6).
    pub expires: i64,
    pub name: String,
    pub description: Option<String>,
    pub capabilities: Vec<Capability>,
    pub accepts: Vec<MessageType>,
    pub platform: Option<String>,
    pub model: Option<String>,
    /// Whether the agent is in its relay's directory (PROF-9); absent means false.
    pub listed: bool,
}

/// Why a profile was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("unsupported protocol version {got}; this crate speaks version {PROTOCOL_VERSION}")]
    UnsupportedVersion { got: i64 },
    #[error("the key given is {given}, the profile names {named}")]
    KeyMismatch { given: KeyId, named: KeyId },
    #[error("signature does not verify")]
    BadSignature,
}

impl ProfileError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ProfileError::Json(e) => e.code(),
            ProfileError::Schema(e) => e.code(),
            ProfileError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            ProfileError::KeyMismatch { .. } => ErrorCode::UnknownKey,
            ProfileError::BadSignature => ErrorCode::BadSignature,
        }
    }
}

/// PROF-3: a capability id or tag: `[a-z0-9]` then `[a-z0-9._-]*`, at most 64 bytes.
pub fn is_word(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= WORD_BYTES_MAX
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

fn is_version(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= VERSION_CHARS_MAX
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'+'))
}

/// A display text: 1..=`max` characters, no control characters.
fn check_label(path: &str, s: &str, max: usize) -> Result<(), SchemaError> {
    if s.is_empty() {
        return Err(SchemaError::invalid(path, "empty"));
    }
    check_text(path, s, max)?;
    if s.chars().any(char::is_control) {
        return Err(SchemaError::invalid(path, "contains a control character"));
    }
    Ok(())
}

fn array<'a>(path: &str, v: &'a Value, max: usize) -> Result<&'a [Value], SchemaError> {
    let a = v.as_array().ok_or_else(|| {
        SchemaError::invalid(path, format!("expected an array, found {}", v.kind()))
    })?;
    if a.len() > max {
        return Err(SchemaError::invalid(
            path,
            format!("{} entries, more than {max}", a.len()),
        ));
    }
    Ok(a)
}

fn word_list(path: &str, v: &Value, max: usize) -> Result<Vec<String>, SchemaError> {
    let mut out: Vec<String> = Vec::new();
    for (i, w) in array(path, v, max)?.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let s = w
            .as_str()
            .ok_or_else(|| SchemaError::invalid(&p, "expected a string"))?;
        if !is_word(s) {
            return Err(SchemaError::invalid(
                &p,
                "expected [a-z0-9] then [a-z0-9._-]*, at most 64 bytes",
            ));
        }
        if out.iter().any(|x| x == s) {
            return Err(SchemaError::invalid(&p, "listed twice"));
        }
        out.push(s.to_owned());
    }
    Ok(out)
}

impl Profile {
    /// Reads a profile from a strict-JSON value; returns it with its signature.
    fn from_value(v: &Value) -> Result<(Profile, Signature), ProfileError> {
        let mut f = Fields::new(v, "")?;
        let version = f.req_int("v", 0, INT_MAX)?;
        if version != PROTOCOL_VERSION {
            return Err(ProfileError::UnsupportedVersion { got: version });
        }
        let handle = f.req_handle("handle")?;
        let key = f.req_key_id("key")?;
        let seq = f.req_int("seq", 1, INT_MAX)?;
        let ts = f.req_int("ts", 0, INT_MAX)?;
        let expires = f.req_int("expires", 0, INT_MAX)?;
        if expires <= ts {
            return Err(SchemaError::invalid("expires", "not after ts").into());
        }
        let name = f.req_str("name")?;
        check_label("name", name, NAME_CHARS_MAX)?;
        let description = f.opt_str("description")?;
        if let Some(d) = description {
            check_text("description", d, DESCRIPTION_CHARS_MAX)?;
        }
        let mut capabilities: Vec<Capability> = Vec::new();
        if let Some(caps) = f.opt("capabilities") {
            for (i, c) in array("capabilities", caps, CAPABILITIES_MAX)?
                .iter()
                .enumerate()
            {
                let p = format!("capabilities[{i}]");
                let mut cf = Fields::new(c, &p)?;
                let id = cf.req_str("id")?;
                if !is_word(id) {
                    return Err(SchemaError::invalid(
                        &cf.path("id"),
                        "expected [a-z0-9] then [a-z0-9._-]*, at most 64 bytes",
                    )
                    .into());
                }
                if capabilities.iter().any(|x| x.id == id) {
                    return Err(SchemaError::invalid(&cf.path("id"), "listed twice").into());
                }
                let version = cf.opt_str("version")?;
                if let Some(ver) = version {
                    if !is_version(ver) {
                        return Err(SchemaError::invalid(
                            &cf.path("version"),
                            "expected 1 to 32 of [A-Za-z0-9._+-]",
                        )
                        .into());
                    }
                }
                let tags = match cf.opt("tags") {
                    None => Vec::new(),
                    Some(t) => word_list(&cf.path("tags"), t, TAGS_MAX)?,
                };
                cf.finish()?;
                capabilities.push(Capability {
                    id: id.to_owned(),
                    version: version.map(str::to_owned),
                    tags,
                });
            }
        }
        let mut accepts: Vec<MessageType> = Vec::new();
        if let Some(a) = f.opt("accepts") {
            for (i, t) in array("accepts", a, ACCEPTS_MAX)?.iter().enumerate() {
                let p = format!("accepts[{i}]");
                let t = t
                    .as_str()
                    .and_then(MessageType::parse)
                    .ok_or_else(|| SchemaError::invalid(&p, "expected a message type name"))?;
                if accepts.contains(&t) {
                    return Err(SchemaError::invalid(&p, "listed twice").into());
                }
                accepts.push(t);
            }
        }
        let platform = f.opt_str("platform")?;
        if let Some(s) = platform {
            check_label("platform", s, NAME_CHARS_MAX)?;
        }
        let model = f.opt_str("model")?;
        if let Some(s) = model {
            check_label("model", s, NAME_CHARS_MAX)?;
        }
        let listed = match f.opt("listed") {
            None => false,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| SchemaError::invalid("listed", "expected a boolean"))?,
        };
        let sig = f.req_sig("sig")?;
        f.finish()?;
        Ok((
            Profile {
                handle,
                key,
                seq,
                ts,
                expires,
                name: name.to_owned(),
                description: description.map(str::to_owned),
                capabilities,
                accepts,
                platform: platform.map(str::to_owned),
                model: model.map(str::to_owned),
                listed,
            },
            sig,
        ))
    }

    /// The profile as a value, without `sig`. Optional members are left out when empty
    /// (`listed` when false), so a profile has one canonical form.
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        o.insert("v", Value::Int(PROTOCOL_VERSION));
        o.insert("handle", self.handle.as_str().into());
        o.insert("key", self.key.to_hex().into());
        o.insert("seq", Value::Int(self.seq));
        o.insert("ts", Value::Int(self.ts));
        o.insert("expires", Value::Int(self.expires));
        o.insert("name", self.name.as_str().into());
        if let Some(d) = &self.description {
            o.insert("description", d.as_str().into());
        }
        if !self.capabilities.is_empty() {
            let caps = self
                .capabilities
                .iter()
                .map(|c| {
                    let mut co = Object::new();
                    co.insert("id", c.id.as_str().into());
                    if let Some(v) = &c.version {
                        co.insert("version", v.as_str().into());
                    }
                    if !c.tags.is_empty() {
                        co.insert(
                            "tags",
                            Value::Array(c.tags.iter().map(|t| t.as_str().into()).collect()),
                        );
                    }
                    Value::Object(co)
                })
                .collect();
            o.insert("capabilities", Value::Array(caps));
        }
        if !self.accepts.is_empty() {
            o.insert(
                "accepts",
                Value::Array(self.accepts.iter().map(|t| t.as_str().into()).collect()),
            );
        }
        if let Some(p) = &self.platform {
            o.insert("platform", p.as_str().into());
        }
        if let Some(m) = &self.model {
            o.insert("model", m.as_str().into());
        }
        if self.listed {
            o.insert("listed", Value::Bool(true));
        }
        Value::Object(o)
    }

    /// Signs the profile (PROF-2). The key must be the one `self.key` names. The result is
    /// checked by the same parser as a received profile, so a profile this makes is one a
    /// relay accepts (as far as the document goes).
    pub fn sign(&self, sk: &SecretKey) -> Result<SignedProfile, ProfileError> {
        let v = crate::keys::sign_document(Domain::Profile, self.to_value(), sk, &self.key)
            .map_err(|given| ProfileError::KeyMismatch {
                given,
                named: self.key,
            })?;
        SignedProfile::from_value(v)
    }

    /// Whether the profile has expired at `now` (PROF-6).
    pub fn expired(&self, now: i64) -> bool {
        now >= self.expires
    }
}

/// A parsed profile with its signature, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedProfile {
    profile: Profile,
    sig: Signature,
    signing_input: Vec<u8>,
    value: Value,
    wire: Vec<u8>,
}

impl SignedProfile {
    /// Parses bytes under the strict profile (section 4) and the profile schema (PROF-1, PROF-3).
    pub fn parse(bytes: &[u8], limits: JsonLimits) -> Result<SignedProfile, ProfileError> {
        SignedProfile::from_value(json::parse(bytes, limits)?)
    }

    /// Like [`parse`](Self::parse) for a value that already passed the strict parser.
    pub fn from_value(v: Value) -> Result<SignedProfile, ProfileError> {
        let (profile, sig) = Profile::from_value(&v)?;
        let Value::Object(obj) = &v else {
            unreachable!("Profile::from_value accepted only an object")
        };
        let (input, wire) = crate::keys::document_bytes(Domain::Profile, obj);
        Ok(SignedProfile {
            profile,
            sig,
            signing_input: input,
            value: v,
            wire,
        })
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }
    pub fn signature(&self) -> &Signature {
        &self.sig
    }
    /// `tag || JCS(profile without sig)`: the bytes that were signed.
    pub fn signing_input(&self) -> &[u8] {
        &self.signing_input
    }
    /// The whole profile (with `sig`) as a value.
    pub fn value(&self) -> &Value {
        &self.value
    }
    /// The canonical bytes of the whole profile: what relays store and serve.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// PROF-2: strict verification (SIG-3) with the key the profile names. The caller finds
    /// that key in the agent's verified key log, valid at the profile's `ts` (LOG-12).
    pub fn verify(&self, key: &PublicKey) -> Result<(), ProfileError> {
        let named = self.profile.key;
        crate::keys::verify_document(key, &named, &self.signing_input, &self.sig).map_err(|e| {
            match e {
                Some(given) => ProfileError::KeyMismatch { given, named },
                None => ProfileError::BadSignature,
            }
        })
    }
}
