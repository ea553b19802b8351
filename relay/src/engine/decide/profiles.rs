//! Profiles (SPEC.md PROF-4, PROF-5): the checks that need the state, decided by the writer so
//! that two profiles of one agent are ordered by their seq whatever order they arrive in.

use super::{agent, Ctx, Decision, Outcome};
use crate::engine::error::ApiError;
use crate::engine::events::Event;
use formica_protocol::{ErrorCode, Object, SignedProfile, Value};

/// `PUT /v1/profile`: the handler checked the schema, the handle, freshness and the signature
/// against the key valid at `ts`; the key is checked again here (a key log entry may have been
/// committed since), then the relay's limits and the seq.
pub(super) fn set(
    st: &crate::engine::state::State,
    ctx: &Ctx<'_>,
    profile: SignedProfile,
) -> Decision {
    let p = profile.profile();
    let a = agent(st, &p.handle)?;
    a.keylog
        .key_at(&p.key, p.ts)
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    let dir = &ctx.policy.directory;
    if p.capabilities.len() > dir.profile_capabilities_max {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!(
                "{} capabilities, more than this relay's directory.profile_capabilities_max {}",
                p.capabilities.len(),
                dir.profile_capabilities_max
            ),
        )
        .with("field", "capabilities".into()));
    }
    if p.expires - p.ts > dir.profile_ttl_ms_max {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!(
                "expires is {} ms after ts, more than this relay's directory.profile_ttl_ms_max {}",
                p.expires - p.ts,
                dir.profile_ttl_ms_max
            ),
        )
        .with("field", "expires".into()));
    }
    let answer = |result: &str| {
        let mut o = Object::new();
        o.insert("handle", p.handle.as_str().into());
        o.insert("seq", Value::Int(p.seq));
        o.insert("listed", Value::Bool(p.listed));
        o.insert("expires", Value::Int(p.expires));
        o.insert("result", result.into());
        Value::Object(o)
    };
    if let Some(held) = st.profiles.get(&p.handle) {
        if held.wire() == profile.wire() {
            return Ok((Vec::new(), Outcome::Done(answer("duplicate"))));
        }
        let held_seq = held.seq();
        if p.seq <= held_seq {
            return Err(ApiError::new(
                ErrorCode::ProfileOutdated,
                format!(
                    "seq {} is not above {held_seq}, the seq of the profile held",
                    p.seq
                ),
            ));
        }
    }
    let done = answer("stored");
    Ok((
        vec![Event::ProfileSet {
            at: ctx.now,
            profile,
        }],
        Outcome::Done(done),
    ))
}
