//! Presence statuses (SPEC.md PRES-3): the checks that need the state, decided by the writer so
//! that two statuses of one agent are ordered by their `ts` whatever order they arrive in.

use super::{agent, Ctx, Decision, Outcome};
use crate::engine::error::ApiError;
use crate::engine::events::Event;
use crate::engine::state::State;
use formica_protocol::{ErrorCode, Object, SignedStatus, Value};

/// `PUT /v1/presence`: the handler checked the schema, the handle, freshness and the signature;
/// the key is checked again here, then the relay's limit and the order of statuses.
pub(super) fn set(st: &State, ctx: &Ctx<'_>, status: SignedStatus) -> Decision {
    let s = status.status();
    let a = agent(st, &s.handle)?;
    a.keylog
        .key_at(&s.key, s.ts)
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    let max = ctx.policy.presence.status_ttl_ms_max;
    if s.expires - s.ts > max {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!(
                "expires is {} ms after ts, more than this relay's presence.status_ttl_ms_max {max}",
                s.expires - s.ts
            ),
        )
        .with("field", "expires".into()));
    }
    let answer = |result: &str| {
        let mut o = Object::new();
        o.insert("handle", s.handle.as_str().into());
        o.insert("status", s.status.as_str().into());
        o.insert("expires", Value::Int(s.expires));
        o.insert("result", result.into());
        Value::Object(o)
    };
    if let Some(held) = st.statuses.get(&s.handle) {
        if held.wire() == status.wire() {
            return Ok((Vec::new(), Outcome::Done(answer("duplicate"))));
        }
        if s.ts <= held.status().ts {
            return Err(ApiError::new(
                ErrorCode::StatusOutdated,
                format!(
                    "ts {} is not after {}, the ts of the status held",
                    s.ts,
                    held.status().ts
                ),
            ));
        }
    }
    let done = answer("stored");
    Ok((
        vec![Event::StatusSet {
            at: ctx.now,
            status,
        }],
        Outcome::Done(done),
    ))
}
