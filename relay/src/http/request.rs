//! Shared request helpers of the edge: body reading with limits and a deadline, the client's
//! address (`X-Forwarded-For` from trusted proxies only) and the per-address limit, request
//! authentication for agents (`Formica`, AUTH-*) and relays (`Formica-Relay`, RELAY-REQ-*), and
//! typed path parameters. Handlers use these; this module imports no handler.

use super::App;
use crate::engine::error::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request};
use axum::http::{HeaderMap, Method};
use formica_protocol::auth::{RelayAuth, RequestAuth, RequestTarget};
use formica_protocol::envelope::EnvelopeLimits;
use formica_protocol::json::JsonLimits;
use formica_protocol::{ErrorCode, Handle, PublicKey, RelayHost, Value};
use std::net::{IpAddr, SocketAddr};

impl App {
    /// The strict JSON limits for a body of at most `bytes_max`.
    pub(crate) fn json_limits(&self, bytes_max: usize) -> JsonLimits {
        JsonLimits {
            bytes_max,
            depth_max: self.engine.policy.limits.json_depth_max,
        }
    }

    /// The limits envelopes another relay sends are parsed under (a forwarded envelope, one in
    /// a conversation entry): the size limit, without a tier's payload cap, which is the
    /// sender's relay's to apply (FED-6).
    pub(crate) fn peer_envelope_limits(&self) -> EnvelopeLimits {
        let l = &self.engine.policy.limits;
        EnvelopeLimits {
            json: self.json_limits(l.envelope_bytes_max),
            recipients_max: l.recipients_max,
            payload_bytes_max: l.envelope_bytes_max,
        }
    }

    /// The limits envelopes from this relay's agents are parsed under.
    pub(crate) fn envelope_limits(&self) -> EnvelopeLimits {
        let policy = &self.engine.policy;
        EnvelopeLimits {
            json: self.json_limits(policy.limits.envelope_bytes_max),
            recipients_max: policy.limits.recipients_max,
            // An envelope over every tier's payload cap is refused at parse time (INGEST-1
            // step 4); the sender's own tier cap is applied at step 10.
            payload_bytes_max: policy
                .tiers
                .iter()
                .map(|t| t.payload_bytes_max)
                .max()
                .unwrap_or(0),
        }
    }
}

/// Reads a body of at most `max` bytes; a larger one is `too_large` (also when chunked), one
/// that is not complete by the body read deadline is `request_timeout` (`super::deadline`).
/// A body whose declared length (`Content-Length`) is over `max` is refused at once, before
/// any of it is read (HTTP-2): the client is not waited for.
pub(crate) async fn read_body(body: Body, max: usize) -> Result<Bytes, ApiError> {
    let declared = hyper::body::Body::size_hint(&body).lower();
    if declared > max as u64 {
        // Answered at once; the body is read and dropped meanwhile, when it is not much larger,
        // so that a client still sending it reads the answer instead of meeting a closed
        // connection (and the connection can serve its next request).
        if declared <= DISCARD_BYTES_MAX {
            tokio::spawn(discard(body));
        }
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("the body is declared as {declared} bytes, more than {max}"),
        ));
    }
    axum::body::to_bytes(body, max).await.map_err(|e| {
        if super::deadline::is_timeout(&e) {
            ApiError::new(ErrorCode::RequestTimeout, e.to_string())
        } else {
            ApiError::new(
                ErrorCode::TooLarge,
                format!("the body is larger than {max} bytes"),
            )
        }
    })
}

/// Largest body the relay reads only to drop it, after answering a request whose declared body
/// is over its endpoint's limit (or that takes no body): 1 MiB. Beyond it the connection is
/// closed instead, and a client still sending may see the close before the answer.
pub const DISCARD_BYTES_MAX: u64 = 1 << 20;

/// Reads `body` to its end and drops it (bounded by the body read deadline, HTTP-14, and by
/// [`DISCARD_BYTES_MAX`]).
pub(crate) async fn discard(body: Body) {
    let _ = axum::body::to_bytes(body, DISCARD_BYTES_MAX as usize).await;
}

/// The socket peer of a request, if the server recorded it.
pub(crate) fn peer(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// The request's path with its query, as signed requests cover it.
pub(crate) fn path_of(req: &Request) -> String {
    req.uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned())
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the address
/// that the nearest untrusted hop was seen from (see `forwarded_client`). A header from an
/// untrusted peer is ignored.
pub(crate) fn client_ip(
    app: &App,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Option<IpAddr> {
    Some(forwarded_client(peer?.ip(), &app.trusted_proxies, headers))
}

/// Reads `X-Forwarded-For` the way only trusted proxies can have written it. All its lines are
/// taken together, in order, as one comma-separated list (RFC 9110 section 5.3: a proxy may
/// append a line instead of extending the last one), and read from the right: each trusted
/// proxy appends the address it was connected from, so the rightmost address that is not a
/// trusted proxy is the client. Anything left of it was written by the client and is not
/// believed. Each hop is decoded on its own (bytes that are not UTF-8 in the client's part
/// cannot spoil the proxy's), may carry a port (`192.0.2.7:5000`, `[2001:db8::1]:443`) or
/// brackets, and IPv4-mapped IPv6 addresses count as their IPv4 address, in the peer, the hops
/// and the trusted list alike. A hop that does not parse before an untrusted address is found
/// gives the peer itself, so that garbage never makes up an address.
pub(crate) fn forwarded_client(peer: IpAddr, trusted: &[IpAddr], headers: &HeaderMap) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|t| t.to_canonical() == ip);
    if !is_trusted(peer) {
        return peer;
    }
    let lines: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    for hop in lines.iter().rev().flat_map(|l| l.rsplit(|b| *b == b',')) {
        match parse_hop(hop) {
            Some(ip) if is_trusted(ip) => continue,
            Some(ip) => return ip,
            None => return peer,
        }
    }
    peer
}

/// One `X-Forwarded-For` hop: an address, optionally with a port or in brackets.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(hop).ok()?.trim();
    let ip = text
        .parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            text.strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<IpAddr>().ok())
        })?;
    Some(ip.to_canonical())
}

/// HTTP-10: the per-address budget of requests that carry no agent signature.
pub(crate) fn ip_limit(
    app: &App,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let Some(ip) = client_ip(app, peer, headers) else {
        return Ok(());
    };
    let per_min = app.engine.policy.limits.ip_requests_per_min;
    let mut b = app.ip_buckets.lock().unwrap_or_else(|p| p.into_inner());
    b.take(&ip, per_min, per_min.max(1), app.engine.now())
        .map_err(|wait| {
            ApiError::new(
                ErrorCode::RateLimited,
                format!("{per_min} requests per minute from one address"),
            )
            .with("retry_after_s", Value::Int(wait))
        })
}

/// AUTH-1..6: checks an `Authorization: Formica` header and returns the agent it proves.
pub(crate) fn authenticate(
    app: &App,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Handle, ApiError> {
    if headers.get_all("authorization").iter().count() > 1 {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "exactly one Authorization header is allowed",
        ));
    }
    let value = headers
        .get("authorization")
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "this endpoint needs an Authorization: Formica header",
            )
        })?
        .to_str()
        .map_err(|_| ApiError::new(ErrorCode::Unauthorized, "Authorization header is not ASCII"))?;
    let auth = RequestAuth::parse(value).map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    if auth.handle.host() != &app.engine.host {
        return Err(ApiError::new(
            ErrorCode::WrongRelay,
            format!(
                "the request is signed for {}, this relay is {}",
                auth.handle.host(),
                app.engine.host
            ),
        ));
    }
    let now = app.engine.now();
    app.engine.policy.time.check(auth.ts, now)?;
    let key = {
        let st = app.engine.read();
        let agent = st.agents.get(&auth.handle).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                format!("{} is not registered here", auth.handle),
            )
        })?;
        *agent
            .keylog
            .key_at(&auth.key, auth.ts)
            .map_err(|e| ApiError::new(ErrorCode::Unauthorized, e.to_string()))?
    };
    let target = RequestTarget {
        method: method.as_str(),
        path,
        body,
    };
    auth.verify(&key, &target, &app.engine.host)
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    remember_nonce(app, &auth.handle, auth.nonce, now, "request")?;
    Ok(auth.handle)
}

/// PROF-4 steps 3-5, PRES-3: a document the authenticated agent `me` signed itself (a profile,
/// a presence status) names `me` (`forbidden` otherwise), is fresh, and names a key of `me`
/// valid at its `ts`: that key, which the caller verifies the signature with.
pub(crate) fn own_document_key(
    app: &App,
    me: &Handle,
    what: &str,
    (handle, key, ts): (&Handle, &formica_protocol::KeyId, i64),
) -> Result<PublicKey, ApiError> {
    if handle != me {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("the {what} is {handle}'s; the request is signed by {me}"),
        ));
    }
    app.engine.policy.time.check(ts, app.engine.now())?;
    let st = app.engine.read();
    let a = st
        .agents
        .get(me)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "not registered"))?;
    a.keylog
        .key_at(key, ts)
        .copied()
        .map_err(|e| ApiError::new(e.code(), e.to_string()))
}

/// Splits a request into what authentication needs.
pub(crate) async fn auth_request(
    app: &App,
    req: Request,
    body_max: usize,
) -> Result<(Handle, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| parts.uri.path().to_owned());
    let body = read_body(body, body_max).await?;
    let h = authenticate(app, &parts.method, &path, &parts.headers, &body)?;
    Ok((h, body))
}

/// RELAY-REQ-1..3: checks an `Authorization: Formica-Relay` header. For the handshake
/// (`peer_key` given) the origin need not be a peer yet and the key is the one from its
/// descriptor; otherwise the origin must be an active peer and the key the one learned at
/// peering. Returns the origin.
pub(crate) fn authenticate_relay(
    app: &App,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    peer_key: Option<&PublicKey>,
) -> Result<RelayHost, ApiError> {
    let value = headers
        .get("authorization")
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "this endpoint needs an Authorization: Formica-Relay header",
            )
        })?
        .to_str()
        .map_err(|_| ApiError::new(ErrorCode::Unauthorized, "Authorization header is not ASCII"))?;
    let auth = RelayAuth::parse(value).map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    if auth.dest != app.engine.host {
        return Err(ApiError::new(
            ErrorCode::WrongRelay,
            format!(
                "the request is signed for {}, this relay is {}",
                auth.dest, app.engine.host
            ),
        ));
    }
    let now = app.engine.now();
    app.engine.policy.time.check(auth.ts, now)?;
    let key = match peer_key {
        Some(k) => *k,
        None => {
            let st = app.engine.read();
            st.active_peer(&auth.origin).map(|p| p.key).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::PeerUnknown,
                    format!("{} is not a peer of this relay", auth.origin),
                )
            })?
        }
    };
    let target = RequestTarget {
        method: method.as_str(),
        path,
        body,
    };
    auth.verify(&key, &target, &app.engine.host)
        .map_err(|e| ApiError::new(ErrorCode::Unauthorized, e.to_string()))?;
    remember_nonce(
        app,
        &Handle::relay(&auth.origin),
        auth.nonce,
        now,
        "relay request",
    )?;
    Ok(auth.origin)
}

/// A relay request to a federation endpoint (RELAY-REQ-1..3): federation on, the body (at
/// most `max` bytes), and its `Formica-Relay` signature by an active peer. Returns the origin,
/// the request's parts and the body.
pub(crate) async fn relay_request(
    app: &App,
    req: Request,
    max: usize,
) -> Result<(RelayHost, axum::http::request::Parts, Bytes), ApiError> {
    federation_enabled(app)?;
    let path = path_of(&req);
    let (parts, body) = req.into_parts();
    let body = read_body(body, max).await?;
    let origin = authenticate_relay(app, &parts.method, &path, &parts.headers, &body, None)?;
    Ok((origin, parts, body))
}

/// Federation endpoints answer `peer_unknown` on a relay that does not federate.
pub(crate) fn federation_enabled(app: &App) -> Result<(), ApiError> {
    if app.engine.policy.federation.enabled {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::PeerUnknown,
            "this relay does not federate",
        ))
    }
}

/// A `{handle}` path parameter. A segment that does not percent-decode to UTF-8 is refused with
/// the spec's error body (`invalid_handle`, HTTP-9) rather than the framework's plain-text answer.
#[derive(Debug)]
pub(crate) struct HandleParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for HandleParam {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(s)) => Ok(HandleParam(s)),
            Err(e) => Err(ApiError::new(
                ErrorCode::InvalidHandle,
                format!("the handle in the path: {e}"),
            )
            .with("field", "handle".into())),
        }
    }
}

/// An `{id}` path parameter; an undecodable one names nothing (`not_found`).
#[derive(Debug)]
pub(crate) struct IdParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IdParam {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(s)) => Ok(IdParam(s)),
            Err(_) => Err(ApiError::new(ErrorCode::NotFound, "no such resource")),
        }
    }
}

/// A handle in a path or body, local ones completed with this relay's host.
pub(crate) fn parse_handle(app: &App, s: &str) -> Result<Handle, ApiError> {
    Handle::parse_with_home(s, &app.engine.host)
        .map_err(|e| ApiError::new(e.code(), e.to_string()).with("field", "handle".into()))
}

/// The `envelopes` array of a batch or transfer body whose schema was checked, taken out of
/// the parsed value rather than copied.
pub(crate) fn take_envelopes(body: Value) -> Vec<Value> {
    match body {
        Value::Object(mut o) => match o.remove("envelopes") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Records a verified request's nonce (AUTH-6), refusing a replay; the writer stores it with
/// its next commit, so that it is still refused after a restart.
fn remember_nonce(
    app: &App,
    h: &Handle,
    n: formica_protocol::auth::Nonce,
    now: i64,
    what: &str,
) -> Result<(), ApiError> {
    let retention = app.engine.policy.time.retention_ms();
    {
        let mut nonces = app.nonces.lock().unwrap_or_else(|p| p.into_inner());
        let r = nonces.insert(h, n, now, retention);
        app.engine.journal(&mut nonces.journal);
        r.map_err(|r| r.to_error(what))?;
    }
    // Several nodes: the nonce is claimed in the shared store, which refuses it when another
    // node saw it first.
    if app.engine.shared() {
        let key = crate::engine::limits::nonce_key(h, &n);
        if !app
            .engine
            .claim(&key, &now.to_be_bytes(), now + retention)?
        {
            return Err(crate::engine::limits::NonceRefused::Reused.to_error(what));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::forwarded_client;
    use axum::http::{HeaderMap, HeaderValue};
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append("x-forwarded-for", HeaderValue::from_str(l).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies_and_read_from_the_right() {
        let proxy = ip("10.0.0.1");
        let inner = ip("10.0.0.2");
        let trusted = [proxy, inner];
        // An untrusted peer's header is ignored.
        assert_eq!(
            forwarded_client(ip("198.51.100.1"), &trusted, &xff(&["192.0.2.9"])),
            ip("198.51.100.1")
        );
        // What the client wrote is left of what the proxy appended.
        assert_eq!(
            forwarded_client(proxy, &trusted, &xff(&["203.0.113.9, 192.0.2.7"])),
            ip("192.0.2.7")
        );
        // A proxy that appends a second line rather than extending the first (regression: only
        // the first line used to be read, so the client's own line chose its address).
        assert_eq!(
            forwarded_client(proxy, &trusted, &xff(&["203.0.113.9", "192.0.2.7"])),
            ip("192.0.2.7")
        );
        // Two trusted proxies in a chain: the nearest untrusted hop is the client.
        assert_eq!(
            forwarded_client(proxy, &trusted, &xff(&["203.0.113.9, 192.0.2.7, 10.0.0.2"])),
            ip("192.0.2.7")
        );
        // Garbage where the proxies' part should be, or no header, gives the proxy itself.
        assert_eq!(
            forwarded_client(proxy, &trusted, &xff(&["192.0.2.7, not-an-address"])),
            proxy
        );
        assert_eq!(forwarded_client(proxy, &trusted, &xff(&[])), proxy);
        // Ports and brackets, as some proxies write them.
        assert_eq!(
            forwarded_client(proxy, &trusted, &xff(&["192.0.2.7:5000"])),
            ip("192.0.2.7")
        );
        assert_eq!(
            forwarded_client(proxy, &trusted, &xff(&["[2001:db8::1]:443"])),
            ip("2001:db8::1")
        );
        assert_eq!(
            forwarded_client(proxy, &trusted, &xff(&["[2001:db8::1]"])),
            ip("2001:db8::1")
        );
        // A dual-stack listener sees the proxy as ::ffff:10.0.0.1; it is still trusted, and a
        // mapped client address counts as its IPv4 address.
        assert_eq!(
            forwarded_client(ip("::ffff:10.0.0.1"), &trusted, &xff(&["::ffff:192.0.2.7"])),
            ip("192.0.2.7")
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_in_the_clients_part_do_not_spoil_the_proxys() {
        let proxy = ip("10.0.0.1");
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.9\xff, 192.0.2.7").unwrap(),
        );
        assert_eq!(forwarded_client(proxy, &[proxy], &h), ip("192.0.2.7"));
    }
}
