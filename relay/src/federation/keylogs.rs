//! Remote key logs (FED-8): the key of a remote sender, from the cached log or fetched from its
//! home relay and verified from its first entry (stored only with an envelope it verified that
//! is accepted); and this relay's pushes of its agents' new key log entries to its peers.

use super::Federation;
use crate::engine::decide::{Command, Outcome};
use crate::engine::error::ApiError;
use crate::engine::events::PeerStatus;
use formica_protocol::keylog::{KeyLog, SignedKeyLogEntry};
use formica_protocol::{canon, ErrorCode, Handle, KeyId, Object, PublicKey, RelayHost, Value};
use std::collections::HashMap;

/// The key logs fetched while one transfer is judged: each sender's at most once, and at most
/// `federation.keylog_fetches_per_transfer_max` in all.
#[derive(Debug)]
pub struct TransferFetches {
    logs: HashMap<Handle, KeyLog>,
    left: usize,
}

impl TransferFetches {
    pub fn new(max: usize) -> TransferFetches {
        TransferFetches {
            logs: HashMap::new(),
            left: max,
        }
    }
}

impl Federation {
    /// The key `kid` of remote agent `h` valid at `ts`, for an envelope of a transfer (FED-8).
    ///
    /// From the log cached here if it names the key; a cached log that does not is brought up
    /// to date from `h`'s home relay first (it extends or forks what is cached, within the
    /// caps). A sender whose log is not cached here: its log is fetched (once per transfer, and
    /// at most `keylog_fetches_per_transfer_max` logs per transfer), verified from its first
    /// entry and returned with the key, *not stored*: the writer stores it only if the envelope
    /// it verified is accepted, so that envelopes refused anyway make this relay store nothing.
    pub(crate) async fn remote_key(
        &self,
        h: &Handle,
        kid: &KeyId,
        ts: i64,
        fetches: &mut TransferFetches,
    ) -> Result<(PublicKey, Option<KeyLog>), ApiError> {
        let lookup = |log: &KeyLog| {
            log.key_at(kid, ts)
                .copied()
                .map_err(|e| ApiError::new(e.code(), e.to_string()))
        };
        let cached = || {
            let st = self.engine.read();
            st.remote_logs.get(h).map(|r| lookup(&r.log))
        };
        match cached() {
            Some(Ok(k)) => return Ok((k, None)),
            Some(Err(_)) => {
                self.pull_keylog(h).await?;
                return cached()
                    .unwrap_or_else(|| {
                        Err(ApiError::new(
                            ErrorCode::UnknownKey,
                            format!("no key log for {h}"),
                        ))
                    })
                    .map(|k| (k, None));
            }
            None => {}
        }
        if let Some(log) = fetches.logs.get(h) {
            return Ok((lookup(log)?, Some(log.clone())));
        }
        if fetches.left == 0 {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "this transfer already made this relay fetch {} key logs (federation.keylog_fetches_per_transfer_max); send the rest in a later transfer",
                    self.engine.policy.federation.keylog_fetches_per_transfer_max
                ),
            )
            .with("retry_after_s", Value::Int(1)));
        }
        fetches.left -= 1;
        let log = self.fetch_keylog(h).await?;
        let k = lookup(&log)?;
        fetches.logs.insert(h.clone(), log.clone());
        Ok((k, Some(log)))
    }

    /// Fetches `h`'s key log from its home relay and verifies it from its first entry (LOG-10),
    /// without storing it.
    pub(crate) async fn fetch_keylog(&self, h: &Handle) -> Result<KeyLog, ApiError> {
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
        Ok(KeyLog::verify(log)?)
    }

    /// Fetches `h`'s key log, verifies it and stores what it adds to the log cached here (new
    /// entries, or a conflicting one as evidence), within the caps on cached logs.
    pub(crate) async fn pull_keylog(&self, h: &Handle) -> Result<(), ApiError> {
        let log = self.fetch_keylog(h).await?;
        let entries = log.entries().to_vec();
        match self.engine.writer.submit(Command::RemoteKeyLog { entries }).await? {
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
