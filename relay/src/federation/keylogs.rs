//! Remote key logs (FED-8): the key of a remote sender, from the cached log or pulled from its
//! home relay and verified from its first entry; and this relay's pushes of its agents' new
//! key log entries to its peers.

use super::Federation;
use crate::engine::decide::{Command, Outcome};
use crate::engine::error::ApiError;
use crate::engine::events::PeerStatus;
use formica_protocol::keylog::{KeyLog, SignedKeyLogEntry};
use formica_protocol::{canon, ErrorCode, Handle, KeyId, Object, PublicKey, RelayHost, Value};

impl Federation {
    /// The key `kid` of remote agent `h` valid at `ts`: from the cached log, else after pulling
    /// the log from `h`'s home relay and verifying it from its first entry (FED-8).
    pub(crate) async fn remote_key(
        &self,
        h: &Handle,
        kid: &KeyId,
        ts: i64,
    ) -> Result<PublicKey, ApiError> {
        let cached = || {
            let st = self.engine.read();
            st.remote_logs.get(h).map(|r| {
                r.log
                    .key_at(kid, ts)
                    .copied()
                    .map_err(|e| ApiError::new(e.code(), e.to_string()))
            })
        };
        if let Some(Ok(k)) = cached() {
            return Ok(k);
        }
        self.pull_keylog(h).await?;
        cached().unwrap_or_else(|| {
            Err(ApiError::new(
                ErrorCode::UnknownKey,
                format!("no key log for {h}"),
            ))
        })
    }

    /// Fetches `h`'s key log from its home relay, verifies it (LOG-10) and caches it.
    pub(crate) async fn pull_keylog(&self, h: &Handle) -> Result<(), ApiError> {
        let path = format!("/v1/keys/{h}");
        let (st, v) = self.call("GET", h.host(), &path, vec![], false).await?;
        if st == 404 {
            return Err(ApiError::new(
                ErrorCode::UnknownSender,
                format!("{h} is not registered on its home relay"),
            ));
        }
        if st != 200 {
            return Err(ApiError::new(
                ErrorCode::PeerUnavailable,
                format!("{} answered {st} for {path}", h.host()),
            ));
        }
        let entries = v
            .as_object()
            .and_then(|o| o.get("entries"))
            .and_then(Value::as_array)
            .ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidField, "the key log has no entries")
                    .with("field", "entries".into())
            })?;
        let mut log = Vec::with_capacity(entries.len());
        for e in entries {
            let e = SignedKeyLogEntry::from_value(e.clone())?;
            if &e.entry().handle != h {
                return Err(ApiError::new(
                    ErrorCode::KeylogHandleMismatch,
                    format!("the key log of {h} holds an entry for {}", e.entry().handle),
                ));
            }
            log.push(e);
        }
        KeyLog::verify(log.clone())?;
        match self.engine.writer.submit(Command::RemoteKeyLog { entries: log }).await? {
            Outcome::KeyLogForked => Err(ApiError::new(
                ErrorCode::KeylogFork,
                format!("{}'s home relay served a key log that conflicts with the one cached here; both are kept", h),
            )),
            _ => Ok(()),
        }
    }

    /// Pushes a new entry of a local agent's key log to every active peer (FED-8), best effort:
    /// a peer that misses it pulls the log when an envelope names a key it does not know.
    pub(crate) async fn push_keylog(self, entry: Value) {
        if !self.engine.policy.federation.enabled {
            return;
        }
        let peers: Vec<RelayHost> = {
            let st = self.engine.read();
            st.peers
                .iter()
                .filter(|(_, p)| p.status == PeerStatus::Active)
                .map(|(h, _)| h.clone())
                .collect()
        };
        let mut o = Object::new();
        o.insert("entries", Value::Array(vec![entry]));
        let body = canon::canonicalize(&Value::Object(o));
        for p in peers {
            if let Err(u) = self
                .call("POST", &p, "/v1/federation/keylog", body.clone(), true)
                .await
            {
                tracing::debug!(peer = %p, "key log push failed: {}", u.0);
            }
        }
    }
}
