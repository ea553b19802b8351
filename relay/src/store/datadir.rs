//! The data directory as files: their names, the lock that says a relay serves it, and a
//! consistent copy of it (`relay backup`).
//!
//! A serving relay holds an exclusive `flock` on [`LOCK_FILE`] for its whole life. `relay
//! check` and `relay backup` take a shared one while they read a directory no relay serves, so
//! that none starts under them; when the lock is held exclusively, a relay is running and they
//! ask it over its admin endpoint instead.

use super::log::EventLog;
use super::redb::RedbStore;
use super::{sync_dir, Store, StoreError};
use std::fs::File;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

/// The event log.
pub const LOG_FILE: &str = "log.redb";
/// The relay's secret key (hex seed, 0600).
pub const KEY_FILE: &str = "relay.key";
/// The host the directory was first served as (handles embed it).
pub const HOST_FILE: &str = "public_host";
/// Locked (exclusively) by the relay serving a data directory for as long as it runs, so that
/// no second relay opens the store, even while the first has it closed after a failed write.
pub const LOCK_FILE: &str = "relay.lock";

/// Mode of the data directory: only the relay's user may read it (every message is in it).
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the relay writes into it.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) with [`DIR_MODE`].
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Refuses a data directory that users other than the owner may read, write or enter, naming
/// the `chmod` that fixes it (as for the relay key).
pub fn check_private_dir(dir: &Path) -> Result<(), String> {
    let mode = std::fs::metadata(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "permissions {:04o} let other local users read every stored message; run chmod 700 {}",
            mode & 0o777,
            dir.display()
        ));
    }
    Ok(())
}

/// Records copied per commit of a backup.
const COPY_CHUNK: usize = 4096;

/// A held lock on a data directory (released when dropped).
#[derive(Debug)]
pub struct DirLock(#[allow(dead_code)] File);

/// Why a data directory's lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// A relay serves the directory (it holds the lock exclusively); or, for an exclusive
    /// lock, a `relay check` or `relay backup` is reading it.
    InUse,
    Io(std::io::Error),
}

impl DirLock {
    /// The serving relay's lock: exclusive, created (0600) if missing.
    pub fn exclusive(dir: &Path) -> Result<DirLock, LockError> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(dir.join(LOCK_FILE))
            .map_err(LockError::Io)?;
        Self::take(f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
    }

    /// A reader's lock: shared, so that no relay starts while it reads. A directory without a
    /// lock file has never been served by this version; then nothing is created (a reader
    /// writes nothing) and the returned lock is on the directory itself, which does not keep
    /// a relay from starting (it locks `relay.lock`): such a directory is read unprotected.
    pub fn shared(dir: &Path) -> Result<DirLock, LockError> {
        let f = match File::open(dir.join(LOCK_FILE)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                File::open(dir).map_err(LockError::Io)?
            }
            Err(e) => return Err(LockError::Io(e)),
        };
        Self::take(f, rustix::fs::FlockOperation::NonBlockingLockShared)
    }

    fn take(f: File, op: rustix::fs::FlockOperation) -> Result<DirLock, LockError> {
        match rustix::fs::flock(&f, op) {
            Ok(()) => Ok(DirLock(f)),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(LockError::InUse),
            Err(e) => Err(LockError::Io(e.into())),
        }
    }
}

/// An I/O error on `what`, as the store reports errors.
fn io(what: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{}: {e}", what.display()))
}

/// What a backup holds, checked on the copy after it was written.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub records: u64,
    /// The chain hash of the last record, hex.
    pub chain_head: String,
}

/// Copies the first `len` records of `store` (the data directory `from`'s log) and the files a
/// relay needs to serve them (`relay.key`, `public_host`) into the new directory `to`, then
/// checks the copy's chain from its first record. `to` must not exist, or be an empty
/// directory. Records up to `len` never change once durable, so a running relay can be copied
/// while it writes. The admin token is not copied: a relay started on the copy makes its own.
///
/// The copy is built in a sibling directory (`.<name>.partial`) and renamed to `to` only once
/// it is complete, synced and checked, so a crash or a kill during a backup never leaves at
/// `to` a shorter log without its key that a relay would serve under a new identity. A
/// leftover partial directory is refused (the error names it), never reused.
pub fn copy_data_dir(
    store: &dyn Store,
    len: u64,
    from: &Path,
    to: &Path,
    project: Project<'_>,
) -> Result<BackupReport, StoreError> {
    let name = to
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| StoreError::Io(format!("{}: not a directory name", to.display())))?;
    let partial = to.with_file_name(format!(".{name}.partial"));
    let to_exists = match std::fs::read_dir(to) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(StoreError::Io(format!(
                    "{} is not empty: a backup goes into a new or empty directory",
                    to.display()
                )));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io(to, e)),
    };
    if partial.exists() {
        return Err(StoreError::Io(format!(
            "{} exists: an earlier backup into {} did not finish; remove it first",
            partial.display(),
            to.display()
        )));
    }
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent).map_err(|e| io(parent, e))?;
    }
    create_private_dir(&partial).map_err(|e| io(&partial, e))?;
    let r = copy_into(store, len, from, &partial, project).and_then(|report| {
        if to_exists {
            std::fs::remove_dir(to).map_err(|e| io(to, e))?;
        }
        std::fs::rename(&partial, to).map_err(|e| io(to, e))?;
        if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent).map_err(|e| io(parent, e))?;
        }
        Ok(report)
    });
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    r
}

/// Copies the checkpoint snapshots of positions `at_least..=len` into `to`'s snapshot folder.
fn copy_snapshots(store: &dyn Store, at_least: u64, len: u64, to: &Path) -> Result<(), StoreError> {
    let Some(src) = store.snapshot_dir() else {
        return Ok(());
    };
    let dst = to.join(super::snapshot::DIR);
    create_private_dir(&dst).map_err(|e| io(&dst, e))?;
    for (n, p) in super::snapshot::list(&src)? {
        if n < at_least || n > len {
            continue;
        }
        let name = p
            .file_name()
            .map(|f| dst.join(f))
            .unwrap_or_else(|| dst.join("x"));
        let mut r = File::open(&p).map_err(|e| io(&p, e))?;
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&name)
            .map_err(|e| io(&name, e))?;
        std::io::copy(&mut r, &mut w).map_err(|e| io(&name, e))?;
        w.sync_all().map_err(|e| io(&name, e))?;
    }
    sync_dir(&dst).map_err(|e| io(&dst, e))
}

/// What builds the projection tables of a copy from its records (the engine's rebuild; the
/// store layer does not know what the records mean). Without it the copy holds only the log,
/// and its first start builds them.
pub type Project<'a> = Option<&'a dyn Fn(Arc<dyn Store>) -> Result<(), StoreError>>;

fn copy_into(
    store: &dyn Store,
    len: u64,
    from: &Path,
    to: &Path,
    project: Project<'_>,
) -> Result<BackupReport, StoreError> {
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(DIR_MODE))
        .map_err(|e| io(to, e))?;
    {
        let copy = Arc::new(RedbStore::open(&to.join(LOG_FILE))?);
        // A log whose first records were dropped: the copy starts where it does, with the
        // checkpoint snapshots that can stand for the records before.
        let base = store.base()?;
        if base.first > 1 {
            copy.drop_before(base)?;
            copy_snapshots(store, base.first - 1, len, to)?;
        }
        let mut chunk: Vec<Vec<u8>> = Vec::with_capacity(COPY_CHUNK);
        let mut first = base.first;
        let flush = |chunk: &mut Vec<Vec<u8>>, first: &mut u64| -> Result<(), StoreError> {
            if !chunk.is_empty() {
                copy.append(*first, chunk)?;
                *first += chunk.len() as u64;
                chunk.clear();
            }
            Ok(())
        };
        // In ranges of COPY_CHUNK records, each read in its own short read transaction and
        // written (and synced) after it ends: the live store is not held open for the whole
        // copy, so its writer can reopen it after a failed write, and it can reuse its pages.
        while first <= len {
            let last = len.min(first + COPY_CHUNK as u64 - 1);
            store.scan(first, last, &mut |_, record| {
                chunk.push(record.to_vec());
                Ok(())
            })?;
            if chunk.is_empty() {
                break;
            }
            flush(&mut chunk, &mut first)?;
        }
        if first - 1 != len {
            return Err(StoreError::Corrupt {
                seq: first,
                reason: format!(
                    "the store holds records {} to {} of the {len} to copy (were records dropped behind a checkpoint meanwhile? try again)",
                    base.first,
                    first - 1
                ),
            });
        }
        if let Some(project) = project {
            project(copy.clone())?;
        }
        // Dropped here: closed cleanly before it is checked.
    }
    for name in [KEY_FILE, HOST_FILE] {
        let src = from.join(name);
        let dst = to.join(name);
        let bytes = std::fs::read(&src).map_err(|e| io(&src, e))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&dst)
            .map_err(|e| io(&dst, e))?;
        std::io::Write::write_all(&mut f, &bytes).map_err(|e| io(&dst, e))?;
        f.sync_all().map_err(|e| io(&dst, e))?;
    }
    sync_dir(to).map_err(|e| io(to, e))?;
    let view = RedbStore::open_read_only(&to.join(LOG_FILE))?;
    let log = EventLog::open(Arc::new(view), &mut |_, _| Ok(()))?;
    if log.len() != len {
        return Err(StoreError::Corrupt {
            seq: log.len() + 1,
            reason: format!("the copy holds {} records, not {len}", log.len()),
        });
    }
    Ok(BackupReport {
        records: len,
        chain_head: formica_protocol::hex::encode(&log.head()),
    })
}
