//! The relay-to-relay HTTP client: ureq (blocking, run on tokio's blocking pool) with rustls
//! and the webpki roots, so `https` peers work without OpenSSL; `http` only for loopback tests.
//! Every call is bounded in time (`federation.request_timeout_ms`) and answer size
//! ([`PEER_RESPONSE_BYTES_MAX`]), and reaches peers off the allowlist only at public addresses
//! (FED-15, [`super::peer_addr::PublicOnly`]).

use super::Federation;
use crate::engine::error::ApiError;
use formica_protocol::auth::{Nonce, RelayAuth, RequestTarget};
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::{ErrorCode, RelayHost, Value};
use std::time::Duration;

/// Largest answer body read from a peer: a transfer answer or a key log fits easily.
pub const PEER_RESPONSE_BYTES_MAX: usize = 4 << 20;

/// The relay-to-relay HTTP client: ureq (blocking, run on tokio's blocking pool) with rustls
/// and the webpki roots, so `https` peers work without OpenSSL; `http` only for loopback tests.
///
/// `guarded` is the client for requests a stranger causes (the handshake's descriptor fetch):
/// it connects only to public addresses ([`super::peer_addr::PublicOnly`]) and follows no
/// redirects.
#[derive(Clone, Debug)]
pub struct PeerClient {
    agent: ureq::Agent,
    guarded: ureq::Agent,
}

impl Default for PeerClient {
    fn default() -> Self {
        PeerClient {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .max_idle_connections_per_host(4)
                .build(),
            guarded: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .redirects(0)
                .max_idle_connections(0)
                .resolver(super::peer_addr::PublicOnly)
                .build(),
        }
    }
}

/// A transport failure (no answer), as opposed to an answer with an error code.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl From<Unreachable> for ApiError {
    fn from(u: Unreachable) -> ApiError {
        ApiError::new(ErrorCode::PeerUnavailable, u.0)
    }
}

impl Federation {
    /// Sends one request to `host` (signed with the relay key when `sign`), bounded by the
    /// federation request timeout; returns the status and the parsed body.
    pub async fn call(
        &self,
        method: &str,
        host: &RelayHost,
        path: &str,
        body: Vec<u8>,
        sign: bool,
    ) -> Result<(u16, Value), Unreachable> {
        let timeout = Duration::from_millis(self.engine.policy.federation.request_timeout_ms);
        self.call_via(
            self.client_for(host),
            method,
            host,
            path,
            body,
            sign,
            timeout,
        )
        .await
    }

    /// [`call`](Self::call) bounded by `timeout` instead of the federation request timeout (a
    /// federated search waits less than a transfer).
    pub async fn call_within(
        &self,
        method: &str,
        host: &RelayHost,
        path: &str,
        sign: bool,
        timeout: Duration,
    ) -> Result<(u16, Value), Unreachable> {
        self.call_via(
            self.client_for(host),
            method,
            host,
            path,
            Vec::new(),
            sign,
            timeout,
        )
        .await
    }

    /// The HTTP client for requests to `host`: one that connects only to public addresses unless
    /// the host is on the allowlist or `allow_private_peers` is set (FED-15). This holds for all
    /// traffic to a peer, not only the handshake: a peer that completed a handshake from a public
    /// address could otherwise point its name at an internal address later (DNS rebinding).
    fn client_for<'a>(&'a self, host: &RelayHost) -> &'a ureq::Agent {
        let fed = &self.engine.policy.federation;
        if fed.allow_private_peers || fed.allowlist.iter().any(|h| h == host.as_str()) {
            &self.client.agent
        } else {
            &self.client.guarded
        }
    }

    /// [`call`] with a given HTTP client and timeout.
    // The request's parts, each needed: grouping them would only move the list.
    #[allow(clippy::too_many_arguments)]
    async fn call_via(
        &self,
        agent: &ureq::Agent,
        method: &str,
        host: &RelayHost,
        path: &str,
        body: Vec<u8>,
        sign: bool,
        timeout: Duration,
    ) -> Result<(u16, Value), Unreachable> {
        let url = format!(
            "{}://{}{}",
            self.engine.policy.federation.scheme, host, path
        );
        let auth = sign.then(|| {
            let mut n = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut n);
            RelayAuth::sign(
                &self.engine.relay_key,
                &self.engine.host,
                host,
                self.engine.now(),
                Nonce(n),
                &RequestTarget {
                    method,
                    path,
                    body: &body,
                },
            )
        });
        let agent = agent.clone();
        let (m, u) = (method.to_owned(), url.clone());
        let sent = tokio::task::spawn_blocking(move || -> Result<(u16, Vec<u8>), Unreachable> {
            use std::io::Read;
            let mut req = agent
                .request(&m, &u)
                .timeout(timeout)
                .set("content-type", "application/json");
            if let Some(h) = &auth {
                req = req.set("authorization", h);
            }
            let resp = match req.send_bytes(&body) {
                Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                Err(e) if e.to_string().contains(super::peer_addr::NOT_PUBLIC) => {
                    return Err(Unreachable(format!(
                        "{u}: the host resolves only to loopback, private or other internal addresses; this relay connects to those only for hosts on [federation] allowlist, or for any host with allow_private_peers = true (see SECURITY.md)"
                    )))
                }
                Err(e) => return Err(Unreachable(format!("{u}: {e}"))),
            };
            let status = resp.status();
            let mut buf = Vec::new();
            resp.into_reader()
                .take(PEER_RESPONSE_BYTES_MAX as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(|e| Unreachable(format!("{u}: {e}")))?;
            if buf.len() > PEER_RESPONSE_BYTES_MAX {
                return Err(Unreachable(format!(
                    "{u}: the answer is larger than {PEER_RESPONSE_BYTES_MAX} bytes"
                )));
            }
            Ok((status, buf))
        })
        .await
        .map_err(|e| Unreachable(format!("{url}: {e}")))??;
        let (status, bytes) = sent;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            json::parse(
                &bytes,
                JsonLimits {
                    bytes_max: PEER_RESPONSE_BYTES_MAX,
                    depth_max: self.engine.policy.limits.json_depth_max + 4,
                },
            )
            .map_err(|e| Unreachable(format!("{url}: the answer is not strict JSON: {e}")))?
        };
        Ok((status, v))
    }
}

/// The error code of an error answer, if it has one this relay knows.
pub(crate) fn answer_code(v: &Value) -> Option<ErrorCode> {
    v.as_object()?
        .get("error")?
        .as_object()?
        .get("code")?
        .as_str()
        .and_then(ErrorCode::from_wire)
}
