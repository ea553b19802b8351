//! Files of redb's format v2 (what every release up to storage v2 wrote, on redb 2) are
//! upgraded to format v3 (what redb 3 and later read) once, by redb 2.6's own
//! `Database::upgrade`, before the store opens them: redb 3 and later cannot read format v2,
//! and converting it is not ours to write.
//!
//! The conversion moves no data: after two two-phase commits that settle pending frees, redb 2.6
//! rewrites the header's two commit slots, over the same roots, with the new version. A store
//! opened for writing is upgraded in place; a store opened only to read (`relay check`) is
//! upgraded in its overlay: the file on disk is left as it was.

use super::backend::OverlayStorage;
use super::StoreError;
use redb::StorageBackend as _;
use std::path::Path;
use std::sync::Arc;

/// redb's file format that this release reads and writes.
pub const FILE_FORMAT: u8 = 3;

/// The overlay, shared between the redb 2 handle that upgrades it and the redb handle that
/// then opens it.
#[derive(Debug, Clone)]
pub struct SharedOverlay(pub Arc<OverlayStorage>);

impl redb::StorageBackend for SharedOverlay {
    fn len(&self) -> Result<u64, redb::BackendError> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), redb::BackendError> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), redb::BackendError> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), redb::BackendError> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), redb::BackendError> {
        self.0.write(offset, data)
    }
}

impl redb2::StorageBackend for SharedOverlay {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.len()?)
    }
    fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut out = vec![0; len];
        self.0.read(offset, &mut out)?;
        Ok(out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        Ok(self.0.set_len(len)?)
    }
    fn sync_data(&self, _eventual: bool) -> std::io::Result<()> {
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        Ok(self.0.write(offset, data)?)
    }
}

fn upgraded(db: &mut redb2::Database, path: &Path) -> Result<(), StoreError> {
    db.upgrade().map_err(|e| {
        StoreError::Io(format!(
            "{}: upgrading the file from redb format v2 to v{FILE_FORMAT}: {e}",
            path.display()
        ))
    })?;
    Ok(())
}

/// Upgrades the file at `path` (format v2, not open elsewhere) in place; returns it opened
/// again for reading and writing.
pub fn in_place(path: &Path, cache_bytes: usize) -> Result<std::fs::File, StoreError> {
    let mut db = redb2::Database::builder()
        .set_cache_size(cache_bytes)
        .open(path)
        .map_err(|e| {
            StoreError::Io(format!(
                "{}: opening it with redb 2 to upgrade it: {e}",
                path.display()
            ))
        })?;
    upgraded(&mut db, path)?;
    drop(db);
    tracing::info!(path = %path.display(), "upgraded the store file from redb format v2 to v3 (once; earlier releases cannot open it any more)");
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))
}

/// Upgrades the overlay (the file itself is not written).
pub fn in_overlay(overlay: &SharedOverlay, path: &Path) -> Result<(), StoreError> {
    let mut db = redb2::Database::builder()
        .create_with_backend(overlay.clone())
        .map_err(|e| {
            StoreError::Io(format!(
                "{}: opening it with redb 2 to upgrade it: {e}",
                path.display()
            ))
        })?;
    upgraded(&mut db, path)
}
