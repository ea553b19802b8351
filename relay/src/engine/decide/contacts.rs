//! Contacts (CONTACT-*): grants set and removed by their owner, contact requests answered, and
//! the two checks ingest makes: a contact request within its limits, and a grant at the level
//! the envelope's type needs.

use super::{agent, Ctx, Decision, Outcome};
use crate::engine::error::ApiError;
use crate::engine::events::Event;
use crate::engine::policy::Tier;
use crate::engine::state::{Agent, State};
use formica_protocol::envelope::{ContactLevel, Envelope, MessageId, MessageType};
use formica_protocol::{ErrorCode, Handle, Object, Value};

/// `PUT /v1/contacts/{handle}`: `owner` grants `contact` `level`.
pub(super) fn set(
    st: &State,
    ctx: &Ctx<'_>,
    owner: Handle,
    contact: Handle,
    level: ContactLevel,
) -> Decision {
    agent(st, &owner)?;
    let mut o = Object::new();
    o.insert("handle", contact.as_str().into());
    o.insert("level", level.as_str().into());
    Ok((
        vec![Event::ContactSet {
            at: ctx.now,
            owner,
            contact,
            level,
        }],
        Outcome::Done(Value::Object(o)),
    ))
}

/// `DELETE /v1/contacts/{handle}`.
pub(super) fn remove(st: &State, ctx: &Ctx<'_>, owner: Handle, contact: Handle) -> Decision {
    let a = agent(st, &owner)?;
    if !a.contacts.contains_key(&contact) {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("{contact} is not a contact"),
        ));
    }
    let mut o = Object::new();
    o.insert("handle", contact.as_str().into());
    o.insert("removed", Value::Bool(true));
    Ok((
        vec![Event::ContactRemoved {
            at: ctx.now,
            owner,
            contact,
        }],
        Outcome::Done(Value::Object(o)),
    ))
}

/// A pending contact request answered: `accept` `None` rejects it; `Some(level)` accepts at
/// `level`, or at the requested level, never above it.
pub(super) fn answer_request(
    st: &State,
    ctx: &Ctx<'_>,
    owner: Handle,
    request: MessageId,
    accept: Option<Option<ContactLevel>>,
) -> Decision {
    let a = agent(st, &owner)?;
    let req = a.requests.get(&request).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("no pending contact request {request}"),
        )
    })?;
    let mut o = Object::new();
    let level = match accept {
        None => {
            o.insert("id", request.to_hex().into());
            o.insert("rejected", Value::Bool(true));
            None
        }
        Some(l) => {
            let level = l.unwrap_or(req.level);
            if level > req.level {
                return Err(ApiError::new(
                    ErrorCode::InvalidField,
                    format!("the request asked for {}, accept at most that", req.level),
                )
                .with("field", "level".into()));
            }
            o.insert("handle", req.from.as_str().into());
            o.insert("level", level.as_str().into());
            Some(level)
        }
    };
    Ok((
        vec![Event::RequestAnswered {
            at: ctx.now,
            owner,
            request,
            level,
        }],
        Outcome::Done(Value::Object(o)),
    ))
}

/// CONTACT-5: a sender's contact requests are limited per hour by its tier, one may be pending
/// per recipient, and a recipient holds at most `contact_requests_pending_max`.
pub(super) fn request_allowed(
    st: &State,
    ctx: &Ctx<'_>,
    env: &Envelope,
    sender: Option<&Agent>,
    tier: &Tier,
) -> Result<(), ApiError> {
    let hour_ago = ctx.now - 3600 * 1000;
    let sent = sender
        .map(|s| s.requests_sent.iter().filter(|t| **t > hour_ago).count())
        .unwrap_or(0);
    if sent >= tier.contact_requests_per_hour as usize {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "tier {} allows {} contact requests per hour",
                tier.name, tier.contact_requests_per_hour
            ),
        )
        .with("retry_after_s", Value::Int(60)));
    }
    for to in &env.to {
        let Some(r) = st.agents.get(to) else { continue };
        if r.requests.values().any(|p| p.from == env.from) {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!("a contact request to {to} is already pending"),
            )
            .with("retry_after_s", Value::Int(3600)));
        }
        if r.requests.len() >= ctx.policy.limits.contact_requests_pending_max {
            return Err(ApiError::new(
                ErrorCode::InboxFull,
                format!("{to} has too many pending contact requests"),
            )
            .with("retry_after_s", Value::Int(3600)));
        }
    }
    Ok(())
}

/// CONTACT-4/6: every recipient homed here has granted the sender the level the envelope's type
/// needs, unless the envelope is a `task_result` answering a task that recipient sent it.
pub(super) fn grant_allows(st: &State, env: &Envelope) -> Result<(), ApiError> {
    grant_at(st, env, env.msg_type.required_level())
}

/// [`grant_allows`] with the level `needed` given (a conversation's invite needs `message`,
/// as a call does, CONVO-6).
pub(super) fn grant_at(
    st: &State,
    env: &Envelope,
    needed: Option<formica_protocol::ContactLevel>,
) -> Result<(), ApiError> {
    for to in &env.to {
        if to == &env.from {
            continue;
        }
        let Some(r) = st.agents.get(to) else { continue };
        let is_reply = env.msg_type == MessageType::TaskResult
            && env
                .corr
                .as_deref()
                .and_then(MessageId::parse_hex)
                .and_then(|c| st.message(&c))
                .is_some_and(|m| {
                    m.sender == *to
                        && m.msg_type == MessageType::TaskRequest
                        && m.recipients.iter().any(|x| x.handle == env.from)
                });
        if let (Some(needed), false) = (needed, is_reply) {
            match r.contacts.get(&env.from) {
                None => {
                    return Err(ApiError::new(
                        ErrorCode::NotContact,
                        format!(
                            "{to} does not accept messages from {}; send a contact_request first",
                            env.from
                        ),
                    ))
                }
                Some((level, _)) if *level < needed => {
                    return Err(ApiError::new(
                        ErrorCode::LevelInsufficient,
                        format!(
                            "{to} granted {} level {level}; {} needs {needed}",
                            env.from, env.msg_type
                        ),
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(())
}
