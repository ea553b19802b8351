//! The PostgreSQL store's tables, created at open, and the checks made before it serves.
//!
//! One database holds one relay: the tables have fixed names and the nodes coordinate through
//! advisory locks of one fixed class ([`LOCK_CLASS`]), which any other relay in the same
//! database would share.

use super::conn::{pg, Conn};
use crate::store::StoreError;

/// The class of the store's advisory locks (the two-int form): "Form" in ASCII.
pub const LOCK_CLASS: i32 = 0x466f_726d;
/// The write lock (transaction level): one node's turn at a time.
pub const LOCK_WRITE: i32 = 1;
/// The lead lock (session level, on the lead connection): one node runs the lead's duties.
pub const LOCK_LEAD: i32 = 2;
/// Held while the schema is created or checked, so that nodes starting at once do not race.
pub const LOCK_SCHEMA: i32 = 3;

/// The schema's version, in `formica_meta` under [`VERSION_KEY`] (4 bytes, big-endian). A
/// store of a newer version is refused: an older relay would misread it.
pub const SCHEMA_VERSION: u32 = 1;
pub const VERSION_KEY: &str = "version";
/// Where the kept log starts ([`LogBase`](crate::store::LogBase) encoded), once records were
/// dropped; absent before.
pub const BASE_KEY: &str = "base";

/// The tables. `formica_log.v` is what redb keeps for a record (chain hash, then payload);
/// every projection table is in `formica_rows` under its stable code (`Table::code`), so a
/// commit touches few tables; `formica_admission` holds request nonces and challenges, the
/// ones `claim` inserted with their expiry (ms since the epoch), the writer's with none.
/// `bytea` compares bytewise (memcmp, then the shorter first), the engine's key order.
const CREATE: &str = "
CREATE TABLE IF NOT EXISTS formica_log (seq bigint PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE IF NOT EXISTS formica_rows (
    t smallint NOT NULL, k bytea NOT NULL, v bytea NOT NULL, PRIMARY KEY (t, k));
CREATE TABLE IF NOT EXISTS formica_admission (k bytea PRIMARY KEY, v bytea NOT NULL, expires bigint);
CREATE INDEX IF NOT EXISTS formica_admission_expires ON formica_admission (expires)
    WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS formica_meta (k text PRIMARY KEY, v bytea NOT NULL);
";

/// Creates the tables when they are missing and checks the schema's version, in one
/// transaction under [`LOCK_SCHEMA`].
pub async fn create(c: &mut Conn) -> Result<(), StoreError> {
    c.client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL client_min_messages = warning; SELECT pg_advisory_xact_lock({LOCK_CLASS}, {LOCK_SCHEMA}); {CREATE}"
        ))
        .await
        .map_err(pg)?;
    let version = SCHEMA_VERSION.to_be_bytes().to_vec();
    c.client
        .execute(
            "INSERT INTO formica_meta (k, v) VALUES ($1, $2) ON CONFLICT (k) DO NOTHING",
            &[&VERSION_KEY, &version],
        )
        .await
        .map_err(pg)?;
    let row = c
        .client
        .query_one("SELECT v FROM formica_meta WHERE k = $1", &[&VERSION_KEY])
        .await
        .map_err(pg)?;
    let v: Vec<u8> = row.get(0);
    let found = <[u8; 4]>::try_from(v.as_slice())
        .map(u32::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            seq: 0,
            reason: "formica_meta's version row is not 4 bytes".into(),
        })?;
    if found > SCHEMA_VERSION {
        let _ = c.client.batch_execute("ROLLBACK").await;
        return Err(StoreError::Io(format!(
            "the PostgreSQL store has schema version {found}, newer than this relay's \
             {SCHEMA_VERSION}: run the newer relay"
        )));
    }
    c.client.batch_execute("COMMIT").await.map_err(pg)?;
    Ok(())
}

/// Refuses a server that may lose a commit the relay answered 2xx for, unless `allow_weak`.
///
/// A 2xx answer means committed. With `fsync = off` a crash of the server's host can lose or
/// corrupt committed transactions; with `synchronous_commit = off` a crash loses the last
/// commits although their COMMIT was answered. `local` and `remote_write` wait for the local
/// disk but not for a standby to have the commit on its disk (`remote_write`: only in its
/// memory), so a fail-over to that standby can lose commits; only `on` (with synchronous
/// standbys: on their disk) and `remote_apply` keep them. Returns the warnings to log when
/// `allow_weak` lets a weak setting through, and `synchronous_commit`'s value, which the store
/// then sets on every session it opens (a later `ALTER ROLE ... SET` does not weaken them).
pub async fn check_durability(
    c: &mut Conn,
    allow_weak: bool,
) -> Result<(Vec<String>, String), StoreError> {
    let mut weak = Vec::new();
    let mut sync = String::new();
    for (name, ok) in [
        ("synchronous_commit", &["on", "remote_apply"][..]),
        ("fsync", &["on"][..]),
    ] {
        let row = c
            .client
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .map_err(pg)?;
        let value: String = row.get(0);
        if name == "synchronous_commit" {
            sync = value.clone();
        }
        if !ok.contains(&value.as_str()) {
            weak.push(format!(
                "PostgreSQL's {name} is {value:?}: a commit the relay answered may be lost \
                 (expected {})",
                ok.join(" or ")
            ));
        }
    }
    if !weak.is_empty() && !allow_weak {
        return Err(StoreError::Io(format!(
            "{}; refusing to serve (set store.allow_weak_durability = true to accept it)",
            weak.join("; ")
        )));
    }
    Ok((weak, sync))
}
