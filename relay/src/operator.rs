//! The operator's commands besides `serve`: `relay check`, `relay backup` and `relay peer`.
//! Each first asks whether a relay serves the data directory (its lock, [`LOCK_FILE`]): if
//! one does, the command goes through that relay's admin endpoint (loopback, with the token
//! from `admin.token`); if none does, `check` and `backup` read the store themselves through
//! a read-only view, holding the lock shared so that no relay starts under them.

use crate::engine::replay;
use crate::http::admin::{ADMIN_ADDR_FILE, ADMIN_TOKEN_FILE};
use crate::store::datadir::{copy_data_dir, DirLock, LockError, LOCK_FILE, LOG_FILE};
use crate::store::{RedbStore, Store, StoreError};
use formica_protocol::{canon, Object, RelayHost, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Exit status of `relay check` and `relay backup` when the store could not be checked now,
/// which says nothing of damage: a relay serves the directory and could not be asked, or the
/// store could not be read (an I/O error, a full disk, permissions). Distinct from 1, damage.
pub const EXIT_IN_USE: u8 = 3;

/// Whether a relay serves `dir`: `Ok(None)` if one does, else the reader's lock.
/// What `check` and `backup` add when a data directory holds no `log.redb`: a relay on
/// PostgreSQL keeps its log in the database, which these commands do not read yet.
const POSTGRES_HINT: &str = " (a relay with store.kind = \"postgres\" keeps its log in the \
                             database: copy it with pg_dump; relay check and backup read only \
                             the redb store for now)";

fn served(dir: &Path) -> Result<Option<DirLock>, String> {
    if !dir.is_dir() {
        return Err(format!("{}: no such data directory", dir.display()));
    }
    match DirLock::shared(dir) {
        Ok(l) => Ok(Some(l)),
        Err(LockError::InUse) => Ok(None),
        Err(LockError::Io(e)) => Err(format!("{}: {e}", dir.join(LOCK_FILE).display())),
    }
}

/// One HTTP/1.1 request to the admin endpoint of the relay serving `dir`, on the loopback
/// address it recorded there. Returns the status and the body.
pub fn admin_request(
    dir: &Path,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map(|s| s.trim().to_owned())
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    let token = read(ADMIN_TOKEN_FILE)?;
    let addr: SocketAddr = read(ADMIN_ADDR_FILE)?
        .parse()
        .map_err(|e| format!("admin address: {e}"))?;
    let addr = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port());
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .map_err(|e| format!("{addr}: {e}"))?;
    // A check or a backup of a large store takes as long as a start-up.
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(3600)));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A member of a JSON answer, as text.
fn member(body: &str, key: &str) -> String {
    formica_protocol::json::parse(
        body.as_bytes(),
        formica_protocol::json::JsonLimits::default(),
    )
    .ok()
    .and_then(|v| {
        let o = v.as_object()?;
        Some(match o.get(key)? {
            Value::String(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            other => format!("{other:?}"),
        })
    })
    .unwrap_or_default()
}

/// The error message of an error answer.
fn error_message(body: &str) -> String {
    formica_protocol::json::parse(
        body.as_bytes(),
        formica_protocol::json::JsonLimits::default(),
    )
    .ok()
    .and_then(|v| {
        let e = v.as_object()?.get("error")?.as_object()?;
        Some(format!(
            "{} ({})",
            e.get("message")?.as_str()?,
            e.get("code")?.as_str()?
        ))
    })
    .unwrap_or_else(|| body.trim().to_owned())
}

/// `relay peer ...` against the relay serving `dir`.
pub fn peer(dir: &Path, method: &str, path: &str, body: &[u8]) -> ExitCode {
    match served(dir) {
        Ok(Some(_)) => {
            eprintln!(
                "relay peer: no relay is serving {} (start it with `relay serve --data-dir {}`)",
                dir.display(),
                dir.display()
            );
            return ExitCode::FAILURE;
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("relay peer: {e}");
            return ExitCode::FAILURE;
        }
    }
    match admin_request(dir, method, path, body) {
        Ok((200..=299, body)) => {
            println!("{}", body.trim());
            ExitCode::SUCCESS
        }
        Ok((_, body)) => {
            eprintln!("relay peer: {}", error_message(&body));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("relay peer: the relay serving this directory did not answer: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `relay check`: on a directory no relay serves, reads the store without changing it (a
/// read-only view: the file is left byte for byte as it was, also when it is damaged or was
/// not closed cleanly), checks every record's chain hash and event, and says what it found; on
/// a directory a relay serves, asks that relay to do the same (`POST /admin/v1/check`). Exit 0
/// sound, 1 damaged or unreadable, 2 usage, [`EXIT_IN_USE`] when the serving relay could not
/// be asked.
pub fn check(data_dir: &Path, public_host: Option<&RelayHost>, rebuild: bool) -> ExitCode {
    if !data_dir.is_dir() {
        eprintln!(
            "relay check: {}: no such data directory",
            data_dir.display()
        );
        return ExitCode::from(2);
    }
    let lock = match served(data_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("relay check: {e} (the store was not checked; this is not damage)");
            return ExitCode::from(EXIT_IN_USE);
        }
    };
    let Some(_lock) = lock else {
        if rebuild {
            eprintln!(
                "relay check --rebuild: a relay is serving {}; stop it first (a rebuild needs the store to itself)",
                data_dir.display()
            );
            return ExitCode::from(EXIT_IN_USE);
        }
        return check_online(data_dir);
    };
    let path = data_dir.join(LOG_FILE);
    if !path.exists() {
        eprintln!(
            "relay check: no store at {}{}",
            path.display(),
            POSTGRES_HINT
        );
        return ExitCode::FAILURE;
    }
    let host = match crate::recorded_host(data_dir) {
        Ok(Some(h)) => h,
        Ok(None) => match public_host {
            Some(h) => h.clone(),
            None => {
                eprintln!(
                    "relay check: {} records no host; pass --public-host",
                    data_dir.display()
                );
                return ExitCode::from(2);
            }
        },
        Err(e) => {
            eprintln!("relay check: {e}");
            return ExitCode::from(2);
        }
    };
    let report = |e: StoreError| {
        let code = match &e {
            StoreError::Corrupt { .. } => {
                eprintln!("relay check: DAMAGED: {e}");
                ExitCode::FAILURE
            }
            _ => {
                eprintln!("relay check: cannot read the store now (this is not damage): {e}");
                ExitCode::from(EXIT_IN_USE)
            }
        };
        eprintln!("relay check: {} was not changed", path.display());
        code
    };
    if rebuild {
        return rebuild_tables(&path, &host);
    }
    let view = match RedbStore::open_read_only(&path) {
        Ok(s) => s,
        Err(e) => return report(e),
    };
    let recovered = view.recovered();
    match replay::check(Arc::new(view), &host, None, true) {
        Ok(c) => {
            let dropped = match c.first {
                1 => String::new(),
                f => format!(" (records 1 to {} dropped behind a checkpoint)", f - 1),
            };
            println!(
                "relay check: ok: {} records{dropped}, chain head {}, {} agents, {} messages; the projection tables are the replay of the log",
                c.log.len,
                formica_protocol::hex::encode(&c.log.head),
                c.agents,
                c.messages
            );
            if recovered {
                println!(
                    "relay check: the store was not closed cleanly (a crash or a kill) and was recovered in memory to check it; it is sound, and `relay serve` recovers it on disk"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => report(e),
    }
}

/// `relay check --rebuild` on a stopped relay: checks the whole chain first (a damaged log
/// cannot be rebuilt from, and is left as it is), then empties the projection tables and
/// replays the log into them.
fn rebuild_tables(path: &Path, host: &RelayHost) -> ExitCode {
    let done = RedbStore::open(path).and_then(|store| {
        let store: Arc<dyn crate::store::Store> = Arc::new(store);
        let len = store.len()?;
        crate::store::EventLog::verify_chain(&*store, len, 10_000)?;
        let t0 = std::time::Instant::now();
        let (log, st) = replay::rebuild(store, host)?;
        Ok((
            log.position(),
            st.agents.len(),
            st.messages_len,
            t0.elapsed(),
        ))
    });
    match done {
        Ok((at, agents, messages, took)) => {
            println!(
                "relay check: rebuilt the projection tables from {} records (chain head {}) in {:.1} s: {agents} agents, {messages} messages",
                at.len,
                formica_protocol::hex::encode(&at.head),
                took.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relay check --rebuild: {e}");
            match e {
                StoreError::Corrupt { .. } => ExitCode::FAILURE,
                _ => ExitCode::from(EXIT_IN_USE),
            }
        }
    }
}

fn check_online(data_dir: &Path) -> ExitCode {
    match admin_request(data_dir, "POST", "/admin/v1/check", b"") {
        Ok((200, body)) => {
            println!(
                "relay check: ok: {} records, chain head {}, {} agents, {} messages (checked by the relay serving {}, as of now)",
                member(&body, "records"),
                member(&body, "chain_head"),
                member(&body, "agents"),
                member(&body, "messages"),
                data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Ok((500, body)) => {
            eprintln!(
                "relay check: the relay serving {} found: {}",
                data_dir.display(),
                error_message(&body)
            );
            ExitCode::FAILURE
        }
        Ok((_, body)) => {
            eprintln!(
                "relay check: a relay is serving {} and could not check it now: {}",
                data_dir.display(),
                error_message(&body)
            );
            ExitCode::from(EXIT_IN_USE)
        }
        Err(e) => {
            eprintln!(
                "relay check: a relay is serving {} (it holds {}), and its admin endpoint did not answer: {e}",
                data_dir.display(),
                data_dir.join(LOCK_FILE).display()
            );
            ExitCode::from(EXIT_IN_USE)
        }
    }
}

/// `relay backup --to DIR`: a consistent copy of the data directory (every durable record, the
/// relay key, the host; not the admin token), checked after it is written. Made by the relay
/// serving the directory if there is one (it goes on serving), else read here through a
/// read-only view. `relay serve --data-dir DIR` serves the copy.
pub fn backup(data_dir: &Path, to: &Path) -> ExitCode {
    let to: PathBuf = match std::path::absolute(to) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("relay backup: {}: {e}", to.display());
            return ExitCode::from(2);
        }
    };
    let done = |records: &str, head: &str, by: &str| {
        println!(
            "relay backup: {records} records, chain head {head}, copied{by} into {} and checked; `relay serve --data-dir {}` serves it",
            to.display(),
            to.display()
        );
        ExitCode::SUCCESS
    };
    let lock = match served(data_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("relay backup: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(_lock) = lock else {
        let mut o = Object::new();
        let Some(to_text) = to.to_str() else {
            eprintln!(
                "relay backup: {} is not UTF-8 text; choose another path",
                to.display()
            );
            return ExitCode::from(2);
        };
        o.insert("to", to_text.into());
        let body = canon::canonicalize(&Value::Object(o));
        return match admin_request(data_dir, "POST", "/admin/v1/backup", &body) {
            Ok((200, body)) => {
                let (records, head) = (member(&body, "records"), member(&body, "chain_head"));
                // The relay wrote it, maybe in a file-system view of its own (systemd's
                // PrivateTmp, a container): check that the copy is here, as reported.
                let here = RedbStore::open_read_only(&to.join(LOG_FILE)).and_then(|v| {
                    let log = crate::store::EventLog::open(Arc::new(v), &mut |_, _| Ok(()))?;
                    Ok((
                        log.len().to_string(),
                        formica_protocol::hex::encode(&log.head()),
                    ))
                });
                match here {
                    Ok((r, h)) if r == records && h == head => {
                        done(&records, &head, " by the running relay")
                    }
                    Ok((r, h)) => {
                        eprintln!("relay backup: the relay reports {records} records (head {head}), but the copy at {} holds {r} (head {h})", to.display());
                        ExitCode::FAILURE
                    }
                    Err(e) => {
                        eprintln!("relay backup: the relay reports the copy written, but it cannot be read here at {}: {e} (does the relay see another file system, such as systemd's PrivateTmp?)", to.display());
                        ExitCode::FAILURE
                    }
                }
            }
            Ok((_, body)) => {
                eprintln!("relay backup: {}", error_message(&body));
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!(
                    "relay backup: a relay is serving {} and its admin endpoint did not answer: {e}",
                    data_dir.display()
                );
                ExitCode::from(EXIT_IN_USE)
            }
        };
    };
    let path = data_dir.join(LOG_FILE);
    if !path.exists() {
        eprintln!(
            "relay backup: no store at {}{}",
            path.display(),
            POSTGRES_HINT
        );
        return ExitCode::FAILURE;
    }
    let host = crate::recorded_host(data_dir).ok().flatten();
    let project = move |s: Arc<dyn crate::store::Store>| match &host {
        Some(h) => replay::rebuild(s, h).map(|_| ()),
        None => Ok(()),
    };
    let copied = RedbStore::open_read_only(&path).and_then(|view| {
        let len = view.len()?;
        copy_data_dir(&view, len, data_dir, &to, Some(&project))
    });
    match copied {
        Ok(r) => done(&r.records.to_string(), &r.chain_head, ""),
        Err(e) => {
            eprintln!("relay backup: {e}");
            ExitCode::FAILURE
        }
    }
}
