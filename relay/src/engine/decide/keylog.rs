//! Registration and key logs (LOG-*): a register entry starts a log; later entries extend it or,
//! valid at a position already taken, are kept as fork evidence (LOG-15); a remote agent's log
//! pulled or pushed from its home relay is cached the same way (FED-8).

use super::{agent, Ctx, Decision, Outcome};
use crate::engine::error::ApiError;
use crate::engine::events::Event;
use crate::engine::state::State;
use formica_protocol::keylog::{KeyLog, SignedKeyLogEntry};
use formica_protocol::pow::Challenge;
use formica_protocol::{ErrorCode, Value};

/// Most conflicting entries kept as evidence per key log (LOG-15): one proves a fork; a few
/// show its extent; more would let whoever holds an old key grow the log without bound.
pub const KEYLOG_CONFLICTS_MAX: usize = 8;

pub(super) fn register(
    st: &State,
    ctx: &Ctx<'_>,
    entry: SignedKeyLogEntry,
    challenge: Challenge,
) -> Decision {
    let handle = entry.entry().handle.clone();
    if st.agents.contains_key(&handle) {
        return Err(ApiError::new(
            ErrorCode::HandleTaken,
            format!("{handle} is already registered"),
        ));
    }
    if st.challenge_used(&challenge) {
        return Err(ApiError::new(
            ErrorCode::ChallengeUsed,
            "this challenge was already used; fetch a new one",
        ));
    }
    let log = KeyLog::start(entry.clone())?;
    let key_id = log
        .current_key()
        .map(|k| k.key_id().to_hex())
        .unwrap_or_default();
    let head = entry.hash().to_hex();
    Ok((
        vec![Event::Registered {
            at: ctx.now,
            entry,
            challenge,
        }],
        Outcome::Registered {
            handle,
            key_id,
            head,
        },
    ))
}

pub(super) fn append(st: &State, ctx: &Ctx<'_>, entry: SignedKeyLogEntry) -> Decision {
    let handle = entry.entry().handle.clone();
    let a = agent(st, &handle)?;
    let seq = entry.entry().seq;
    let entries = a.keylog.entries();
    if let Some(existing) = usize::try_from(seq).ok().and_then(|s| entries.get(s)) {
        if existing.hash() == entry.hash() {
            return Ok((vec![], Outcome::KeyLogDuplicate));
        }
        // A different entry at a taken position: if it is valid against the log before it, it
        // is evidence of a fork (two valid histories), kept and reported.
        if a.conflicts.iter().any(|c| c.hash() == entry.hash()) {
            return Ok((vec![], Outcome::KeyLogForked));
        }
        if a.conflicts.len() >= KEYLOG_CONFLICTS_MAX {
            // Enough evidence of a fork is kept; more would only let a stolen old key grow the
            // log without bound. The answer is the same.
            return Ok((vec![], Outcome::KeyLogForked));
        }
        // Only a key the log has named can make an entry here valid: one signature check
        // first, then the entry against the log as it stood before `seq` (rebuilt without
        // verifying its already verified entries again).
        // At seq 0 only the key that registered the handle can fork it (LOG-15).
        let valid = a.keylog.signed_by_one_of_its_keys(&entry)
            && if seq == 0 {
                a.keylog.registered_with(&entry.entry().signer)
                    && KeyLog::start(entry.clone()).is_ok()
            } else {
                a.keylog
                    .prefix(seq as usize)
                    .is_some_and(|mut l| l.append(entry.clone()).is_ok())
            };
        if valid {
            return Ok((
                vec![Event::KeyLogConflict { at: ctx.now, entry }],
                Outcome::KeyLogForked,
            ));
        }
    }
    // Checked without copying the log; `State::apply` appends it.
    a.keylog.check_next(&entry)?;
    Ok((
        vec![Event::KeyLogAppended {
            at: ctx.now,
            entry: entry.clone(),
        }],
        Outcome::KeyLogAppended {
            seq,
            head: entry.hash().to_hex(),
        },
    ))
}

/// FED-8: caches a verified remote key log. Entries beyond the cached ones are appended; an
/// entry that differs from the cached one at the same position is kept as evidence of a fork.
pub(super) fn remote(st: &State, ctx: &Ctx<'_>, entries: Vec<SignedKeyLogEntry>) -> Decision {
    let Some(first) = entries.first() else {
        return Err(ApiError::new(ErrorCode::InvalidField, "an empty key log"));
    };
    let handle = first.entry().handle.clone();
    let cached = st.remote_logs.get(&handle);
    let fed = &ctx.policy.federation;
    // What peers can make this relay store is bounded (FED-8): new logs per peer and in all,
    // and entries in all. Past a bound nothing is stored and nothing cached is evicted.
    if cached.is_none() {
        if st.remote_logs.len() >= fed.remote_keylogs_max {
            return Err(cache_full(
                "key logs of remote agents",
                "remote_keylogs_max",
                fed.remote_keylogs_max,
            ));
        }
        let of_peer = st
            .remote_logs_per_host
            .get(handle.host())
            .copied()
            .unwrap_or(0);
        if of_peer >= fed.remote_keylogs_per_peer_max {
            return Err(cache_full(
                &format!("key logs of agents homed on {}", handle.host()),
                "remote_keylogs_per_peer_max",
                fed.remote_keylogs_per_peer_max,
            ));
        }
    }
    let room =
        |events: &[Event]| st.remote_keylog_entries + events.len() < fed.remote_keylog_entries_max;
    let have = cached.map(|c| c.log.entries()).unwrap_or(&[]);
    let mut events = Vec::new();
    let mut log: Option<KeyLog> = cached.map(|c| c.log.clone());
    for (i, e) in entries.into_iter().enumerate() {
        if let Some(old) = have.get(i) {
            if old.hash() == e.hash() {
                continue;
            }
            let known = cached.is_some_and(|c| c.conflicts.iter().any(|x| x.hash() == e.hash()));
            let kept = cached.map_or(0, |c| c.conflicts.len()) < KEYLOG_CONFLICTS_MAX;
            if !known && kept && room(&events) {
                events.push(Event::RemoteKeyLogConflict {
                    at: ctx.now,
                    entry: e,
                });
            }
            return Ok((events, Outcome::KeyLogForked));
        }
        match log.as_mut() {
            None => log = Some(KeyLog::start(e.clone())?),
            Some(l) => l.append(e.clone())?,
        }
        if !room(&events) {
            return Err(cache_full(
                "entries of remote agents' key logs",
                "remote_keylog_entries_max",
                fed.remote_keylog_entries_max,
            ));
        }
        events.push(Event::RemoteKeyLog {
            at: ctx.now,
            entry: e,
        });
    }
    let head = log.map(|l| l.head().hash().to_hex()).unwrap_or_default();
    Ok((events, Outcome::KeyLogAppended { seq: 0, head }))
}

/// The refusal when a bound on cached remote key logs is reached: `storage_full`, retried later
/// by the peer (an operator may raise the bound); nothing cached is evicted.
fn cache_full(what: &str, key: &str, max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::StorageFull,
        format!("this relay caches at most {max} {what} (federation.{key}); nothing was stored"),
    )
    .with("retry_after_s", Value::Int(3600))
}
