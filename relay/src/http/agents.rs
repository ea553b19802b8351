//! Agents and key logs (SPEC.md 15.3-15.5): proof-of-work challenges, registration, key log
//! reads (local, or cached remote ones) and key log changes (rotate, revoke, recover, move).

use super::answer::{obj, ok};
use super::request::{client_ip, ip_limit, parse_handle, peer, read_body, HandleParam};
use super::Shared;
use crate::engine::decide::{Command, Outcome};
use crate::engine::error::ApiError;
use axum::extract::{Request, State as AxState};
use axum::response::{IntoResponse, Response};
use formica_protocol::{ErrorCode, Value};
use std::sync::atomic::Ordering;

use super::App;
use crate::engine::limits::{challenge_key, ChallengeState};
use crate::engine::state::{Agent, RemoteLog, State};
use formica_protocol::json;
use formica_protocol::keylog::{KeyLog, KeyOp, SignedKeyLogEntry};
use formica_protocol::pow::{self, Challenge, PowProof};
use formica_protocol::schema::Fields;
use formica_protocol::Handle;

pub(crate) async fn challenge(AxState(app): AxState<Shared>, req: Request) -> Response {
    if let Err(e) = ip_limit(&app, peer(&req), req.headers()) {
        return e.into_response();
    }
    let mut c = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut c);
    let c = Challenge(c);
    let expires = app.engine.now() + app.engine.policy.limits.challenge_ttl_ms;
    let difficulty = app.engine.policy.pow_difficulty;
    let client = client_ip(&app, peer(&req), req.headers());
    // Any body is ignored (API-3), but read, within the usual limit, so that the connection
    // stays in step and can serve the client's next request.
    if let Err(e) = read_body(req.into_body(), app.engine.policy.limits.body_bytes_max).await {
        return e.into_response();
    }
    let issued = {
        let mut t = app.challenges.lock().unwrap_or_else(|p| p.into_inner());
        let r = t.issue(c, expires, difficulty, client, app.engine.now());
        // Several nodes: the row goes to the shared store, so a registration sent to another
        // node finds it.
        let row = t.journal.get(&challenge_key(&c)).cloned().flatten();
        app.engine.journal(&mut t.journal);
        r.map(|()| row)
    };
    let row = match issued {
        Ok(row) => row,
        Err(r) => return r.to_error().into_response(),
    };
    if let (true, Some(row)) = (app.engine.shared(), row) {
        // Kept as long as an expired challenge is remembered as expired, so that another node
        // answers challenge_expired for it, not challenge_unknown, as this one does.
        let keep_until = expires + crate::engine::limits::EXPIRED_KEPT_MS;
        if let Err(e) = app.engine.claim(&challenge_key(&c), &row, keep_until) {
            return e.into_response();
        }
    }
    ok(
        201,
        obj(vec![
            ("challenge", c.to_hex().into()),
            ("difficulty", Value::Int(i64::from(difficulty))),
            ("expires", Value::Int(expires)),
            ("relay", app.engine.host.as_str().into()),
        ]),
    )
}

pub(crate) async fn register(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        ip_limit(&app, peer(&req), req.headers())?;
        let body = read_body(req.into_body(), app.engine.policy.limits.body_bytes_max).await?;
        let v = json::parse(&body, app.json_limits(app.engine.policy.limits.body_bytes_max))?;
        let mut f = Fields::new(&v, "")?;
        let entry_v = f.req("entry")?.clone();
        let pow_v = f.opt("pow").cloned();
        f.finish()?;
        let entry = SignedKeyLogEntry::from_value(entry_v).map_err(|e| ApiError::from(e).under("entry"))?;
        let e = entry.entry();
        if e.handle.host() != &app.engine.host {
            return Err(ApiError::new(
                ErrorCode::WrongRelay,
                format!("{} is homed on {}, this relay is {}", e.handle, e.handle.host(), app.engine.host),
            ));
        }
        if e.handle.name().is_reserved() {
            return Err(ApiError::new(ErrorCode::HandleReserved, format!("{} is a reserved name", e.handle.local())));
        }
        if !matches!(e.op, KeyOp::Register { .. }) || e.seq != 0 {
            return Err(ApiError::new(ErrorCode::InvalidField, "registration takes a register entry with seq 0").with("field", "entry.op".into()));
        }
        let now = app.engine.now();
        app.engine.policy.time.check(e.ts, now)?;
        // Signature and key checks: the entry must start a valid log.
        let log = KeyLog::start(entry.clone()).map_err(|e| ApiError::from(e).under("entry"))?;
        let key = *log.current_key().ok_or_else(|| ApiError::internal("register without key"))?;
        let pow_v = pow_v.ok_or_else(|| ApiError::new(ErrorCode::PowMissing, "registration needs a proof-of-work (`pow`)"))?;
        let proof = PowProof::from_value(&pow_v, "pow")?;
        if app.engine.shared() {
            shared_challenge(&app, &proof.challenge, now)?;
        }
        let difficulty = match app.challenges.lock().unwrap_or_else(|p| p.into_inner()).check(&proof.challenge, now) {
            ChallengeState::Open { difficulty } => difficulty,
            ChallengeState::Expired => return Err(ApiError::new(ErrorCode::ChallengeExpired, "the challenge expired; fetch a new one")),
            ChallengeState::Unknown => {
                let used = app.engine.read().challenge_used(&proof.challenge);
                return Err(if used {
                    ApiError::new(ErrorCode::ChallengeUsed, "this challenge was already used; fetch a new one")
                } else {
                    ApiError::new(ErrorCode::ChallengeUnknown, "this relay did not issue that challenge (or has restarted); fetch a new one")
                });
            }
        };
        let prefix = pow::preimage_prefix(&app.engine.host, &e.handle, &key, &proof.challenge, proof.difficulty);
        pow::check(&prefix, &proof, difficulty).map_err(|err| ApiError::new(err.code(), err.to_string()))?;
        let out = app.engine.writer.submit(Command::Register { entry, challenge: proof.challenge }).await?;
        {
            let mut t = app.challenges.lock().unwrap_or_else(|p| p.into_inner());
            t.consume(&proof.challenge);
            app.engine.journal(&mut t.journal);
        }
        match out {
            Outcome::Registered { handle, key_id, head } => {
                app.engine.metrics.registrations.fetch_add(1, Ordering::Relaxed);
                Ok(ok(201, obj(vec![("handle", handle.as_str().into()), ("key_id", key_id.into()), ("head", head.into())])))
            }
            other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
        }
    }
    .await;
    res.unwrap_or_else(IntoResponse::into_response)
}

/// Several nodes: a challenge this node does not hold may have been issued by another one; its
/// row in the shared store is taken into this node's table (checked there like its own).
fn shared_challenge(app: &App, c: &Challenge, now: i64) -> Result<(), ApiError> {
    let known = !matches!(
        app.challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(c, now),
        ChallengeState::Unknown
    );
    if known {
        return Ok(());
    }
    if let Some(row) = app.engine.shared_admission(&challenge_key(c))? {
        let mut t = app.challenges.lock().unwrap_or_else(|p| p.into_inner());
        t.learn(*c, &row, now);
    }
    Ok(())
}

/// The key log answer (API-5): what every log has, plus the members that differ between a log
/// this relay homes (`tier`, `registered`) and a cached remote one (`cached`).
fn log_value(
    h: &Handle,
    log: &KeyLog,
    conflicts: &[SignedKeyLogEntry],
    extra: Vec<(&str, Value)>,
) -> Value {
    let hex_or_null = |k: Option<&formica_protocol::PublicKey>| {
        k.map(|k| Value::from(k.to_hex())).unwrap_or(Value::Null)
    };
    let entries =
        |es: &[SignedKeyLogEntry]| Value::Array(es.iter().map(|e| e.value().clone()).collect());
    let mut members = vec![
        ("handle", h.as_str().into()),
        ("entries", entries(log.entries())),
        ("head", log.head().hash().to_hex().into()),
        ("current_key", hex_or_null(log.current_key())),
        ("recovery_key", hex_or_null(log.recovery_key())),
        (
            "moved_to",
            log.moved_to()
                .map(|h| Value::from(h.as_str()))
                .unwrap_or(Value::Null),
        ),
        ("conflicts", entries(conflicts)),
    ];
    members.extend(extra);
    obj(members)
}

fn keylog_value(app: &App, st: &State, a: &Agent) -> Value {
    let tier = st.tier_of(&a.handle, app.engine.now(), &app.engine.policy);
    let tier_name = app
        .engine
        .policy
        .tiers
        .get(tier)
        .map(|t| Value::from(t.name.as_str()))
        .unwrap_or(Value::Null);
    log_value(
        &a.handle,
        &a.keylog,
        &a.conflicts,
        vec![
            ("tier", tier_name),
            ("registered", Value::Int(a.registered_at)),
        ],
    )
}

fn remote_keylog_value(h: &Handle, r: &RemoteLog) -> Value {
    log_value(
        h,
        &r.log,
        &r.conflicts,
        vec![
            ("tier", Value::Null),
            ("registered", Value::Null),
            ("cached", Value::Bool(true)),
        ],
    )
}

pub(crate) async fn get_keys(
    AxState(app): AxState<Shared>,
    HandleParam(handle): HandleParam,
    req: Request,
) -> Response {
    let (addr, headers) = (peer(&req), req.headers().clone());
    drop(req);
    let res = async {
        let h = parse_handle(&app, &handle)?;
        {
            let st = app.engine.read();
            if let (None, Some(r)) = (st.agents.get(&h), st.remote_logs.get(&h)) {
                // A remote agent's log as cached here (FED-8), with any conflicting entries
                // kept as evidence; its home relay is the authority.
                return Ok(ok(200, remote_keylog_value(&h, r)));
            }
            if let Some(a) = st.agents.get(&h) {
                return Ok(ok(200, keylog_value(&app, &st, a)));
            }
            if h.host() == &app.engine.host {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("{h} is not registered here"),
                ));
            }
        }
        // A look-up makes this relay call a peer: it costs the caller's per-address budget
        // (HTTP-10), like the other requests that carry no signature and cause work.
        ip_limit(&app, addr, &headers)?;
        lookup_remote(&app, &h).await
    }
    .await;
    res.unwrap_or_else(IntoResponse::into_response)
}

/// API-5 for a handle homed on an active peer whose log is not cached here: the log fetched
/// from its home relay, verified from its first entry, answered with `"cached": false` and not
/// stored (FED-8 caches only logs of accepted envelopes). At most
/// `federation.keylog_lookups_max` run at once.
async fn lookup_remote(app: &Shared, h: &Handle) -> Result<Response, ApiError> {
    let fed = &app.engine.policy.federation;
    let active = fed.enabled && {
        let st = app.engine.read();
        st.peers
            .get(h.host())
            .is_some_and(|p| p.status == crate::engine::events::PeerStatus::Active)
    };
    if !active {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "{h} is not registered here, and {} is not a peer of this relay, so its key log cannot be fetched from there",
                h.host()
            ),
        ));
    }
    let Ok(_slot) = app.keylog_lookups.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "{} key log look-ups at peers are running (federation.keylog_lookups_max); retry",
                fed.keylog_lookups_max
            ),
        )
        .with("retry_after_s", Value::Int(1)));
    };
    // Whatever else goes wrong is the peer's doing (unreachable, or a log that does not
    // verify), not the caller's: it is answered peer_unavailable, with what was seen.
    let log = app.fed.fetch_keylog(h).await.map_err(|e| match e.code {
        ErrorCode::UnknownSender => ApiError::new(
            ErrorCode::NotFound,
            format!("{h} is not registered on its home relay {}", h.host()),
        ),
        ErrorCode::PeerUnavailable => e,
        other => ApiError::new(
            ErrorCode::PeerUnavailable,
            format!(
                "{} served a key log of {h} that does not verify ({}): {}",
                h.host(),
                other.as_str(),
                e.message
            ),
        ),
    })?;
    Ok(ok(
        200,
        log_value(
            h,
            &log,
            &[],
            vec![
                ("tier", Value::Null),
                ("registered", Value::Null),
                ("cached", Value::Bool(false)),
            ],
        ),
    ))
}

pub(crate) async fn post_key_entry(
    AxState(app): AxState<Shared>,
    HandleParam(handle): HandleParam,
    req: Request,
) -> Response {
    let res = async {
        let h = parse_handle(&app, &handle)?;
        let body = read_body(req.into_body(), app.engine.policy.limits.body_bytes_max).await?;
        let entry = SignedKeyLogEntry::parse(
            &body,
            app.json_limits(app.engine.policy.limits.body_bytes_max),
        )?;
        if entry.entry().handle != h {
            return Err(ApiError::new(
                ErrorCode::KeylogHandleMismatch,
                format!(
                    "the entry is for {}, the path names {h}",
                    entry.entry().handle
                ),
            ));
        }
        if matches!(entry.entry().op, KeyOp::Register { .. }) {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "register entries go to /v1/register",
            )
            .with("field", "op".into()));
        }
        app.engine
            .policy
            .time
            .check(entry.entry().ts, app.engine.now())?;
        let entry_wire = entry.value().clone();
        match app.engine.writer.submit(Command::KeyLog { entry }).await? {
            Outcome::KeyLogAppended { seq, head } => {
                // FED-8: peers that cached this log learn the change now, not at the next miss.
                tokio::spawn(app.fed.clone().push_keylog(entry_wire));
                Ok(ok(
                    201,
                    obj(vec![("seq", Value::Int(seq)), ("head", head.into())]),
                ))
            }
            Outcome::KeyLogDuplicate => Ok(ok(200, obj(vec![("result", "duplicate".into())]))),
            Outcome::KeyLogForked => Err(ApiError::new(
                ErrorCode::KeylogFork,
                "a different valid entry already holds this position; this one is kept as evidence",
            )),
            other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
        }
    }
    .await;
    res.unwrap_or_else(IntoResponse::into_response)
}
