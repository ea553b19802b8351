//! Relay administration (SPEC.md 16.5): the operator's peer endpoints (`/admin/v1/peers...`),
//! open only to loopback connections that carry the token from `<data-dir>/admin.token`, and
//! that token file itself.

use super::answer::{obj, ok};
use super::request::{federation_enabled, read_body};
use super::{App, Shared};
use crate::engine::decide::Command;
use crate::engine::error::ApiError;
use crate::engine::events::PeerStatus;
use axum::extract::{ConnectInfo, Path, Request, State as AxState};
use axum::response::{IntoResponse, Response};
use formica_protocol::json::{self};
use formica_protocol::schema::Fields;
use formica_protocol::{ErrorCode, RelayHost, Value};
use std::net::SocketAddr;

/// Name of the admin token file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Name of the file holding the address the running relay listens on (for `relay peer`).
pub const ADMIN_ADDR_FILE: &str = "admin.addr";

/// The admin endpoints need the token from `<data-dir>/admin.token` as a bearer token, and a
/// connection from a loopback address.
fn admin_auth(app: &App, req: &Request) -> Result<(), ApiError> {
    // A request through a reverse proxy on this machine also comes from loopback: one that
    // carries forwarding headers is from elsewhere, and is refused like any remote one.
    let proxied = ["x-forwarded-for", "forwarded", "x-real-ip"]
        .iter()
        .any(|h| req.headers().contains_key(*h));
    let from_loopback = !proxied
        && req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .is_some_and(|c| c.0.ip().is_loopback());
    let token = app.admin_token.get();
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let matches = match (token, given) {
        (Some(t), Some(g)) => constant_time_eq(t.as_bytes(), g.as_bytes()),
        _ => false,
    };
    if from_loopback && matches {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "relay administration needs the admin token, from a loopback address, not through a proxy",
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_host(s: &str) -> Result<RelayHost, ApiError> {
    let s = s.trim();
    let s = s.split_once("://").map(|(_, r)| r).unwrap_or(s);
    let s = s.trim_end_matches('/');
    RelayHost::parse(s).map_err(|e| {
        ApiError::new(ErrorCode::InvalidField, e.to_string()).with("field", "url".into())
    })
}

/// `GET /admin/v1/peers`.
pub(crate) async fn admin_list(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = (|| {
        admin_auth(&app, &req)?;
        let st = app.engine.read();
        let list = st
            .peers
            .iter()
            .map(|(h, p)| {
                let mut v = crate::engine::decide::peer_value(h, &p.key, p.status);
                if let Value::Object(o) = &mut v {
                    o.insert("since", Value::Int(p.since));
                    o.insert("queued", Value::Int(st.queue_len(h) as i64));
                }
                v
            })
            .collect();
        Ok::<_, ApiError>(ok(200, obj(vec![("peers", Value::Array(list))])))
    })();
    res.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /admin/v1/peers` with `{"url": "https://relay-b.example"}`: start a handshake.
pub(crate) async fn admin_add(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        admin_auth(&app, &req)?;
        federation_enabled(&app)?;
        let body = read_body(req.into_body(), app.engine.policy.limits.body_bytes_max).await?;
        let v = json::parse(
            &body,
            app.json_limits(app.engine.policy.limits.body_bytes_max),
        )?;
        let mut f = Fields::new(&v, "")?;
        let url = f.req_str("url")?.to_owned();
        f.finish()?;
        let host = parse_host(&url)?;
        if host == app.engine.host {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "a relay does not peer with itself",
            )
            .with("field", "url".into()));
        }
        let v = app.fed.ask_to_peer(&host).await?;
        Ok(ok(200, v))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// `POST /admin/v1/peers/{host}/approve`: approve a pending peering and answer back.
pub(crate) async fn admin_approve(
    AxState(app): AxState<Shared>,
    Path(host): Path<String>,
    req: Request,
) -> Response {
    let res = async move {
        admin_auth(&app, &req)?;
        federation_enabled(&app)?;
        let host = parse_host(&host)?;
        let p = app.engine.read().peers.get(&host).cloned().ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("{host} has not asked to peer"))
        })?;
        app.engine
            .writer
            .submit(Command::PeerSet {
                host: host.clone(),
                key: p.key,
                status: PeerStatus::Active,
                // The operator approves.
                stranger: false,
            })
            .await?;
        // Mutual: tell the other side, which asked, so it marks this relay active too.
        let v = app.fed.ask_to_peer(&host).await?;
        Ok(ok(200, v))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// `DELETE /admin/v1/peers/{host}`.
pub(crate) async fn admin_remove(
    AxState(app): AxState<Shared>,
    Path(host): Path<String>,
    req: Request,
) -> Response {
    let res = async move {
        admin_auth(&app, &req)?;
        let host = parse_host(&host)?;
        app.engine
            .writer
            .submit(Command::PeerRemove { host: host.clone() })
            .await?;
        Ok(ok(
            200,
            obj(vec![
                ("host", host.as_str().into()),
                ("removed", Value::Bool(true)),
            ]),
        ))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// Runs `f` on a blocking thread unless another check or backup runs (then 503 `unavailable`).
async fn one_at_a_time<T: Send + 'static>(
    app: &Shared,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    use std::sync::atomic::Ordering;
    if app.admin_busy.swap(true, Ordering::SeqCst) {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "a check or backup of this relay is already running; wait for it",
        )
        .with("retry_after_s", Value::Int(5)));
    }
    // The flag is cleared when the work ends, not when the request does: a caller that goes
    // away (a killed `relay check`) drops this future, but the blocking task runs on.
    struct Done(Shared);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.admin_busy.store(false, Ordering::SeqCst);
        }
    }
    let done = Done(app.clone());
    let r = tokio::task::spawn_blocking(move || {
        let _done = done;
        f()
    })
    .await;
    r.unwrap_or_else(|e| {
        Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("the check or backup stopped before it finished ({e}); nothing is known of the store from it"),
        ))
    })
}

/// A failed check or backup: damage (the store's records do not check) is `internal`, naming
/// it; anything else (a full disk, an I/O error, a store closed after a failed write) says
/// nothing about the records, and is `unavailable`, retried later.
fn store_failure(what: &str, e: crate::store::StoreError) -> ApiError {
    match e {
        crate::store::StoreError::Corrupt { .. } => {
            ApiError::new(ErrorCode::Internal, format!("DAMAGED: {e}"))
        }
        other => ApiError::new(
            ErrorCode::Unavailable,
            format!("{what} could not read the store now (not damage): {other}"),
        )
        .with("retry_after_s", Value::Int(5)),
    }
}

/// `POST /admin/v1/check`: `relay check` on a running relay. The durable log, as of the
/// request, is replayed beside the live state (every record's chain hash and event); 200 with
/// the counts when it is sound, 500 `internal` naming the damage when not.
pub(crate) async fn admin_check(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        admin_auth(&app, &req)?;
        drop(req);
        let engine = app.engine.clone();
        let report = one_at_a_time(&app, move || {
            engine
                .check_log()
                .map_err(|e| store_failure("the check", e))
        })
        .await?;
        Ok(ok(
            200,
            obj(vec![
                ("records", Value::Int(report.records as i64)),
                ("chain_head", report.chain_head.into()),
                ("agents", Value::Int(report.agents as i64)),
                ("messages", Value::Int(report.messages as i64)),
            ]),
        ))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// `POST /admin/v1/backup` with `{"to": "/absolute/new/dir"}`: a consistent copy of the data
/// directory as of the request (every durable record, the relay key, the host), made while the
/// relay goes on serving, and checked; `relay serve --data-dir <to>` serves it.
pub(crate) async fn admin_backup(AxState(app): AxState<Shared>, req: Request) -> Response {
    let res = async {
        admin_auth(&app, &req)?;
        let body = read_body(req.into_body(), app.engine.policy.limits.body_bytes_max).await?;
        let v = json::parse(
            &body,
            app.json_limits(app.engine.policy.limits.body_bytes_max),
        )?;
        let mut f = Fields::new(&v, "")?;
        let to = std::path::PathBuf::from(f.req_str("to")?);
        f.finish()?;
        if !to.is_absolute() {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "the backup directory must be an absolute path (the relay may run elsewhere than the caller)",
            )
            .with("field", "to".into()));
        }
        let not_empty = std::fs::read_dir(&to).is_ok_and(|mut d| d.next().is_some());
        if not_empty || to.is_file() {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                format!(
                    "{} is not empty: a backup goes into a new or empty directory",
                    to.display()
                ),
            )
            .with("field", "to".into()));
        }
        let from = app.data_dir.get().cloned().ok_or_else(|| {
            ApiError::new(ErrorCode::Unavailable, "this relay runs without a data directory")
        })?;
        let engine = app.engine.clone();
        let report = one_at_a_time(&app, move || {
            // The records and snapshots it copies stay until it is done.
            let _hold = engine.store_health.hold_drops();
            let len = engine.durable_len();
            let host = engine.host.clone();
            let project = move |s: std::sync::Arc<dyn crate::store::Store>| {
                crate::engine::replay::rebuild(s, &host).map(|_| ())
            };
            crate::store::datadir::copy_data_dir(
                engine.store().as_ref(),
                len,
                &from,
                &to,
                Some(&project),
            )
                .map_err(|e| match e {
                    // The target (not empty, a leftover partial copy, no space there).
                    crate::store::StoreError::Io(m) => {
                        ApiError::new(ErrorCode::Unavailable, format!("backup failed: {m}"))
                    }
                    other => store_failure("the backup", other),
                })
        })
        .await?;
        Ok(ok(
            200,
            obj(vec![
                ("records", Value::Int(report.records as i64)),
                ("chain_head", report.chain_head.into()),
            ]),
        ))
    }
    .await;
    res.unwrap_or_else(|e: ApiError| e.into_response())
}

/// Shortest admin token accepted from `admin.token`: 32 bytes of token text (the relay writes 64
/// hex characters, 32 random bytes). A shorter token could be guessed or was not made for this.
pub const ADMIN_TOKEN_BYTES_MIN: usize = 32;

/// Reads the admin token from `path`, or writes a new random one (0600) on first start. An
/// existing file is refused if group or others have any permission on it, or if its token (the
/// content without surrounding whitespace) is shorter than [`ADMIN_TOKEN_BYTES_MIN`] bytes or
/// holds anything but visible ASCII.
pub(crate) fn load_or_create_token(path: &std::path::Path) -> Result<String, String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(format!(
                    "{shown}: permissions {mode:04o} let others read or change the admin token; run chmod 600 {shown}"
                ));
            }
            let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
            let t = text.trim();
            if t.len() < ADMIN_TOKEN_BYTES_MIN {
                return Err(format!(
                    "{shown}: the admin token is {} bytes, shorter than {ADMIN_TOKEN_BYTES_MIN}; delete the file to have a new one made at start",
                    t.len()
                ));
            }
            if !t.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
                return Err(format!(
                    "{shown}: the admin token holds characters other than visible ASCII"
                ));
            }
            return Ok(t.to_owned());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{shown}: {e}")),
    }
    let mut b = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    let t = formica_protocol::hex::encode(&b);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{shown}: {e}"))?;
    f.write_all(format!("{t}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .and_then(|_| crate::store::sync_dir(path.parent().unwrap_or(std::path::Path::new("."))))
        .map_err(|e| format!("{shown}: {e}"))?;
    Ok(t)
}
