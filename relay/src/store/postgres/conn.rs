//! Connections to PostgreSQL and the bridge from the synchronous [`Store`](super::super::Store)
//! methods to the asynchronous client.
//!
//! The trait is called from any thread, tokio worker threads of the relay's runtime included,
//! where `block_on` panics. So the store owns a small runtime of its own ([`Bridge`]): a call
//! moves its connection into a future spawned there and waits for it on a std channel, which
//! blocks the calling thread the way a redb call does and never enters the relay's runtime.

use crate::store::StoreError;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio_postgres::{Client, Statement};

/// How long connecting (TCP, TLS, authentication) may take before the database counts as
/// unreachable: long enough for a server across a network, short enough that a request waits
/// no more than this for an answer (`unavailable`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest one statement may run (`statement_timeout` of every session). The store's
/// statements touch rows by key or a bounded page, so one that runs this long means the server
/// is stuck; the relay answers `unavailable` rather than hold the request.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a statement waits for a lock (`lock_timeout`), the write lock of a turn included:
/// another node holding the turn this long is frozen or cut off, and its turn ends when the
/// server notices ([`IDLE_IN_TURN_TIMEOUT`]).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the writer's session may sit in an open transaction without a statement
/// (`idle_in_transaction_session_timeout` of the writer's session): a node frozen in its turn
/// (stopped, swapped out, cut off) loses its connection and with it the write lock, so the
/// other nodes can write again. A turn of a live writer issues its statements back to back.
pub const IDLE_IN_TURN_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound on one call as the store sees it (connecting and every round trip of it): past
/// this the connection is dropped (it is replaced on next use) and the call is `Unavailable`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(45);

/// TCP keepalive idle time of every connection: a server that vanished without closing the
/// connection (a crash of its host, a cut network) is noticed by the operating system.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// Which connection a session is, for its settings and `application_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Writer,
    Reader,
    Lead,
}

/// How to reach the database: the parsed URL with the store's settings added.
#[derive(Clone)]
pub struct Settings {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// `synchronous_commit` as checked at open, set on every session opened after it.
    synchronous_commit: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        write!(
            f,
            "Settings(hosts {:?}, db {:?}, tls {})",
            self.config.get_hosts(),
            self.config.get_dbname(),
            self.tls.is_some()
        )
    }
}

impl Settings {
    /// Parses `url` (a `postgres://` URL or a `key=value` string). `sslmode=disable` connects
    /// without TLS; `prefer` (the default) and `require` use rustls with the webpki roots, and
    /// the server's certificate must verify against them and name the host.
    pub fn parse(url: &str) -> Result<Settings, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Io(format!("store.url is not a PostgreSQL connection URL: {e}"))
        })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives(true);
        config.keepalives_idle(KEEPALIVE_IDLE);
        let tls = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => None,
            _ => Some(tokio_postgres_rustls::MakeRustlsConnect::with_webpki_roots()),
        };
        Ok(Settings {
            config,
            tls,
            synchronous_commit: None,
        })
    }

    /// These settings, with every session opened from now on committing as `value` (`on` or
    /// `remote_apply`, what the open checked).
    pub fn pin_synchronous_commit(mut self, value: &str) -> Settings {
        if value == "on" || value == "remote_apply" {
            self.synchronous_commit = Some(value.to_owned());
        }
        self
    }

    /// A new session in `role`, its timeouts set through the startup options (no extra round
    /// trip). The connection's task runs on the current runtime (the store's).
    pub async fn connect(&self, role: Role) -> Result<Conn, StoreError> {
        let mut config = self.config.clone();
        let mut options = config.get_options().unwrap_or("").to_string();
        options.push_str(&format!(
            " -c statement_timeout={} -c lock_timeout={}",
            STATEMENT_TIMEOUT.as_millis(),
            LOCK_TIMEOUT.as_millis()
        ));
        if let Some(v) = &self.synchronous_commit {
            options.push_str(&format!(" -c synchronous_commit={v}"));
        }
        if role == Role::Writer {
            options.push_str(&format!(
                " -c idle_in_transaction_session_timeout={}",
                IDLE_IN_TURN_TIMEOUT.as_millis()
            ));
        }
        config.options(options.trim());
        config.application_name(match role {
            Role::Writer => "formica-relay writer",
            Role::Reader => "formica-relay reader",
            Role::Lead => "formica-relay lead",
        });
        let client = match &self.tls {
            None => {
                let (client, conn) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| unreachable_db(&e))?;
                tokio::spawn(conn);
                client
            }
            Some(tls) => {
                let (client, conn) = config
                    .connect(tls.clone())
                    .await
                    .map_err(|e| unreachable_db(&e))?;
                tokio::spawn(conn);
                client
            }
        };
        Ok(Conn {
            client,
            stmts: HashMap::new(),
            in_turn: false,
            leads: false,
        })
    }
}

/// `e` with its cause: the client's own text for a failed connect is only "error connecting
/// to server", and the cause says why (refused, timed out, a name not resolved, TLS).
fn with_cause(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(c) => format!("{e}: {c}"),
        None => e.to_string(),
    }
}

fn unreachable_db(e: &tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        // The server answered and refused (authentication, no such database): a setting to fix,
        // not an outage, but the relay cannot tell a restarting server's refusal apart.
        Some(db) => StoreError::Unavailable(format!(
            "connecting to PostgreSQL: {} ({})",
            db.message(),
            db.code().code()
        )),
        None => {
            let why = with_cause(e);
            let hint = if why.contains("certificate") {
                " (the server's certificate must verify against the public webpki roots and name \
                 the host; a self-signed one, such as Debian's default, does not: use a \
                 certificate from a public CA, or sslmode=disable on loopback or a network you \
                 trust)"
            } else {
                ""
            };
            StoreError::Unavailable(format!("connecting to PostgreSQL: {why}{hint}"))
        }
    }
}

/// One session, with its prepared statements.
pub struct Conn {
    pub client: Client,
    stmts: HashMap<&'static str, Statement>,
    /// The writer's session only: a turn's transaction is open (`BEGIN` and the write lock).
    pub in_turn: bool,
    /// The lead session only: it took the lead lock (held until the session ends).
    pub leads: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn(in_turn {})", self.in_turn)
    }
}

impl Conn {
    /// `sql` prepared once per session.
    pub async fn prep(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await.map_err(pg)?;
        self.stmts.insert(sql, s.clone());
        Ok(s)
    }
}

/// A client error as the store reports it. Whatever it is, the caller drops the connection
/// (a new one is made on next use): a session after an error may be in an aborted transaction,
/// and errors are rare enough that a reconnect is the simple, safe answer.
pub fn pg(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable(format!(
            "the connection to PostgreSQL was lost: {}",
            with_cause(&e)
        ));
    }
    let Some(db) = e.as_db_error() else {
        // No answer from the server: an I/O error or a timeout on the socket.
        return StoreError::Unavailable(format!("PostgreSQL: {}", with_cause(&e)));
    };
    let code = db.code().code();
    let text = format!("PostgreSQL: {} ({code})", db.message());
    match code {
        // Connection exceptions, shutdown and start-up, a lock or statement timeout, a turn
        // ended by the server, serialization failures and deadlocks: try again later.
        c if c.starts_with("08") => StoreError::Unavailable(text),
        "57P01" | "57P02" | "57P03" | "57014" | "55P03" | "25P03" | "40001" | "40P01" => {
            StoreError::Unavailable(text)
        }
        // Insufficient resources: disk full, out of memory, too many connections.
        "53100" => StoreError::Full(text),
        c if c.starts_with("53") => StoreError::Unavailable(text),
        _ => StoreError::Io(text),
    }
}

/// The store's own runtime: where the connections' tasks and every call run.
#[derive(Debug)]
pub struct Bridge {
    rt: Option<tokio::runtime::Runtime>,
}

impl Bridge {
    /// Worker threads of the store's runtime: the work is waiting on sockets.
    pub const THREADS: usize = 2;

    pub fn new() -> Result<Bridge, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(Self::THREADS)
            .thread_name("formica-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(format!("the PostgreSQL store's runtime: {e}")))?;
        Ok(Bridge { rt: Some(rt) })
    }

    /// Runs `fut` on the store's runtime, bounded by [`CALL_TIMEOUT`], and waits for it on this
    /// thread (any thread: a std channel, never `block_on`).
    pub fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let Some(rt) = self.rt.as_ref() else {
            return Err(StoreError::Unavailable("the store is closed".into()));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let r = match tokio::time::timeout(CALL_TIMEOUT, fut).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "PostgreSQL did not answer within {} s",
                    CALL_TIMEOUT.as_secs()
                ))),
            };
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the store's runtime stopped during a call".into(),
            ))
        })
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Not `Runtime::drop`, which panics when the last handle goes on a runtime thread: the
        // connections' tasks are dropped, which closes their sockets (and releases the lead).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A connection slot: `None` until first use and after an error (made again on next use).
pub type Slot = std::sync::Mutex<Option<Conn>>;

/// Runs `f` with the connection in `slot` (its lock held by the caller; made first when there
/// is none) on `bridge`; the connection goes back into the slot after success and is dropped
/// after an error (the server then ends its session and any transaction in it).
pub fn with_conn<T, F, Fut>(
    bridge: &Bridge,
    settings: &Settings,
    role: Role,
    slot: &mut Option<Conn>,
    f: F,
) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(Conn) -> Fut + Send + 'static,
    Fut: Future<Output = (Conn, Result<T, StoreError>)> + Send + 'static,
{
    let held = slot.take().filter(|c| !c.client.is_closed());
    let settings = settings.clone();
    let (conn, r) = bridge.run(async move {
        let conn = match held {
            Some(c) => c,
            None => settings.connect(role).await?,
        };
        let (conn, r) = f(conn).await;
        Ok((r.is_ok().then_some(conn), r))
    })?;
    *slot = conn;
    r
}
