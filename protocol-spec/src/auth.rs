//! Signed HTTP requests (SPEC.md section 11, AUTH-1..9, and the draft RELAY-REQ-* of section 16).
//!
//! An agent proves who sends a request with one header:
//!
//! ```text
//! Authorization: Formica handle=@kevin@relay-a.example,key=<32 hex>,ts=<ms>,nonce=<32 hex>,sig=<128 hex>
//! ```
//!
//! The signature covers the method, the request target (path and query exactly as sent), the
//! BLAKE3 digest of the body, the audience relay, the handle, key id, time and nonce. A relay
//! talks to a peer the same way with `Authorization: Formica-Relay origin=..,dest=..,key=..,
//! ts=..,nonce=..,sig=..`, signed with the relay key under its own domain tag.

use crate::canon;
use crate::error::ErrorCode;
use crate::handle::{Handle, RelayHost};
use crate::hex;
use crate::json::{Object, Value, INT_ABS_MAX};
use crate::keys::{Domain, KeyId, PublicKey, SecretKey, Signature};

/// The `Authorization` scheme of agent requests.
pub const SCHEME: &str = "Formica";
/// The `Authorization` scheme of relay-to-relay requests.
pub const RELAY_SCHEME: &str = "Formica-Relay";
/// Longest header value accepted, in bytes.
pub const HEADER_BYTES_MAX: usize = 1024;

/// A request nonce: 16 random bytes, 32 lower-case hex characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(pub [u8; 16]);

impl Nonce {
    pub fn parse_hex(s: &str) -> Option<Nonce> {
        hex::decode_array::<16>(s).map(Nonce)
    }
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

/// The BLAKE3 digest of a body, as 64 lower-case hex characters (AUTH-3).
pub fn body_digest(body: &[u8]) -> String {
    hex::encode(blake3::hash(body).as_bytes())
}

/// Why an `Authorization` header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header")]
    Missing,
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    #[error("the request is signed for relay {got}, this is {want}")]
    WrongAudience { got: String, want: String },
    #[error("signature does not verify")]
    BadSignature,
}

impl AuthError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing | AuthError::Malformed(_) | AuthError::BadSignature => {
                ErrorCode::Unauthorized
            }
            AuthError::WrongAudience { .. } => ErrorCode::WrongRelay,
        }
    }
}

/// What is signed, besides the identity fields.
#[derive(Debug, Clone, Copy)]
pub struct RequestTarget<'a> {
    /// Upper-case HTTP method, e.g. `GET`.
    pub method: &'a str,
    /// The request target as sent: path and query, e.g. `/v1/inbox?after=12`.
    pub path: &'a str,
    /// The body bytes (empty for GET).
    pub body: &'a [u8],
}

/// Parses `k=v,k=v` pairs after the scheme; each of `keys` exactly once, nothing else.
fn parse_params<'a, const N: usize>(
    value: &'a str,
    scheme: &str,
    keys: [&str; N],
) -> Result<[&'a str; N], AuthError> {
    if value.len() > HEADER_BYTES_MAX {
        return Err(AuthError::Malformed("header too long"));
    }
    let rest = value
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(AuthError::Malformed("wrong scheme"))?;
    let mut out: [Option<&str>; N] = [None; N];
    for part in rest.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or(AuthError::Malformed("expected key=value"))?;
        let i = keys
            .iter()
            .position(|x| *x == k)
            .ok_or(AuthError::Malformed("unknown parameter"))?;
        if out[i].replace(v).is_some() {
            return Err(AuthError::Malformed("repeated parameter"));
        }
    }
    let mut res = [""; N];
    for (i, v) in out.iter().enumerate() {
        res[i] = v.ok_or(AuthError::Malformed("missing parameter"))?;
    }
    Ok(res)
}

fn parse_ts(s: &str) -> Result<i64, AuthError> {
    let ok = !s.is_empty()
        && s.len() <= 16
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    let n: i64 = if ok {
        s.parse().map_err(|_| AuthError::Malformed("ts"))?
    } else {
        return Err(AuthError::Malformed("ts must be decimal milliseconds"));
    };
    if n > INT_ABS_MAX {
        return Err(AuthError::Malformed("ts out of range"));
    }
    Ok(n)
}

/// An agent's parsed `Authorization: Formica ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuth {
    pub handle: Handle,
    pub key: KeyId,
    pub ts: i64,
    pub nonce: Nonce,
    pub sig: Signature,
}

impl RequestAuth {
    /// AUTH-1: parses the header value.
    pub fn parse(value: &str) -> Result<RequestAuth, AuthError> {
        let [handle, key, ts, nonce, sig] =
            parse_params(value, SCHEME, ["handle", "key", "ts", "nonce", "sig"])?;
        Ok(RequestAuth {
            handle: Handle::parse(handle).map_err(|_| AuthError::Malformed("handle"))?,
            key: KeyId::parse_hex(key).ok_or(AuthError::Malformed("key"))?,
            ts: parse_ts(ts)?,
            nonce: Nonce::parse_hex(nonce).ok_or(AuthError::Malformed("nonce"))?,
            sig: Signature::parse_hex(sig).map_err(|_| AuthError::Malformed("sig"))?,
        })
    }

    /// AUTH-2: the signing input for this header on `target` sent to `aud`.
    pub fn signing_input(&self, target: &RequestTarget<'_>, aud: &RelayHost) -> Vec<u8> {
        request_signing_input(&self.handle, &self.key, self.ts, &self.nonce, target, aud)
    }

    /// AUTH-4: checks the audience and the signature. Freshness (AUTH-5) and nonce reuse
    /// (AUTH-6) need the relay's clock and memory and are the caller's job.
    pub fn verify(
        &self,
        key: &PublicKey,
        target: &RequestTarget<'_>,
        aud: &RelayHost,
    ) -> Result<(), AuthError> {
        if self.handle.host() != aud {
            return Err(AuthError::WrongAudience {
                got: self.handle.host().to_string(),
                want: aud.to_string(),
            });
        }
        if key.key_id() != self.key {
            return Err(AuthError::BadSignature);
        }
        key.verify_input(&self.signing_input(target, aud), &self.sig)
            .map_err(|_| AuthError::BadSignature)
    }

    /// Makes the header value for a request.
    pub fn sign(
        sk: &SecretKey,
        handle: &Handle,
        ts: i64,
        nonce: Nonce,
        target: &RequestTarget<'_>,
        aud: &RelayHost,
    ) -> String {
        let key = sk.public().key_id();
        let sig = sk.sign_input(&request_signing_input(
            handle, &key, ts, &nonce, target, aud,
        ));
        format!(
            "{SCHEME} handle={},key={},ts={},nonce={},sig={}",
            handle,
            key.to_hex(),
            ts,
            nonce.to_hex(),
            sig.to_hex()
        )
    }
}

/// `tag || JCS({"aud","body","handle","key","method","nonce","path","ts"})`.
pub fn request_signing_input(
    handle: &Handle,
    key: &KeyId,
    ts: i64,
    nonce: &Nonce,
    target: &RequestTarget<'_>,
    aud: &RelayHost,
) -> Vec<u8> {
    let mut o = Object::new();
    o.insert("aud", aud.as_str().into());
    o.insert("body", body_digest(target.body).into());
    o.insert("handle", handle.as_str().into());
    o.insert("key", key.to_hex().into());
    o.insert("method", target.method.into());
    o.insert("nonce", nonce.to_hex().into());
    o.insert("path", target.path.into());
    o.insert("ts", Value::Int(ts));
    Domain::Request.input(&canon::canonicalize(&Value::Object(o)))
}

/// A relay's parsed `Authorization: Formica-Relay ...` header (draft, SPEC.md section 16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAuth {
    pub origin: RelayHost,
    pub dest: RelayHost,
    pub key: KeyId,
    pub ts: i64,
    pub nonce: Nonce,
    pub sig: Signature,
}

impl RelayAuth {
    pub fn parse(value: &str) -> Result<RelayAuth, AuthError> {
        let [origin, dest, key, ts, nonce, sig] = parse_params(
            value,
            RELAY_SCHEME,
            ["origin", "dest", "key", "ts", "nonce", "sig"],
        )?;
        Ok(RelayAuth {
            origin: RelayHost::parse(origin).map_err(|_| AuthError::Malformed("origin"))?,
            dest: RelayHost::parse(dest).map_err(|_| AuthError::Malformed("dest"))?,
            key: KeyId::parse_hex(key).ok_or(AuthError::Malformed("key"))?,
            ts: parse_ts(ts)?,
            nonce: Nonce::parse_hex(nonce).ok_or(AuthError::Malformed("nonce"))?,
            sig: Signature::parse_hex(sig).map_err(|_| AuthError::Malformed("sig"))?,
        })
    }

    pub fn signing_input(&self, target: &RequestTarget<'_>) -> Vec<u8> {
        relay_signing_input(
            &self.origin,
            &self.dest,
            &self.key,
            self.ts,
            &self.nonce,
            target,
        )
    }

    /// Checks the destination and the signature with the origin relay's key.
    pub fn verify(
        &self,
        origin_key: &PublicKey,
        target: &RequestTarget<'_>,
        me: &RelayHost,
    ) -> Result<(), AuthError> {
        if &self.dest != me {
            return Err(AuthError::WrongAudience {
                got: self.dest.to_string(),
                want: me.to_string(),
            });
        }
        if origin_key.key_id() != self.key {
            return Err(AuthError::BadSignature);
        }
        origin_key
            .verify_input(&self.signing_input(target), &self.sig)
            .map_err(|_| AuthError::BadSignature)
    }

    pub fn sign(
        sk: &SecretKey,
        origin: &RelayHost,
        dest: &RelayHost,
        ts: i64,
        nonce: Nonce,
        target: &RequestTarget<'_>,
    ) -> String {
        let key = sk.public().key_id();
        let sig = sk.sign_input(&relay_signing_input(origin, dest, &key, ts, &nonce, target));
        format!(
            "{RELAY_SCHEME} origin={},dest={},key={},ts={},nonce={},sig={}",
            origin,
            dest,
            key.to_hex(),
            ts,
            nonce.to_hex(),
            sig.to_hex()
        )
    }
}

/// `tag || JCS({"body","dest","key","method","nonce","origin","path","ts"})`.
pub fn relay_signing_input(
    origin: &RelayHost,
    dest: &RelayHost,
    key: &KeyId,
    ts: i64,
    nonce: &Nonce,
    target: &RequestTarget<'_>,
) -> Vec<u8> {
    let mut o = Object::new();
    o.insert("body", body_digest(target.body).into());
    o.insert("dest", dest.as_str().into());
    o.insert("key", key.to_hex().into());
    o.insert("method", target.method.into());
    o.insert("nonce", nonce.to_hex().into());
    o.insert("origin", origin.as_str().into());
    o.insert("path", target.path.into());
    o.insert("ts", Value::Int(ts));
    Domain::RelayRequest.input(&canon::canonicalize(&Value::Object(o)))
}
