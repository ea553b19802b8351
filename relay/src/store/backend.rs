//! Where redb keeps its pages. Two storages, both on the store's file:
//!
//! - [`FileStorage`]: the file itself, locked against a second relay, counting its syncs (the
//!   metric `formica_store_syncs_total`, which is how the benchmark checks that its relaxed mode
//!   does not sync), and with [`StoreFaults`] that tests switch on to make writes fail as on a
//!   full disk.
//! - [`OverlayStorage`]: the file opened read-only, with every write redb makes kept in memory.
//!   redb writes to its file whenever it opens one (it marks the file as open, and repairs a
//!   file that was not closed cleanly), so a store that is only to be read (`relay check`, the
//!   check before `relay serve` trusts a file, the rebuild after a failed write) is opened on
//!   this: the file stays byte for byte as it was, whatever redb does.

use redb::{BackendError, StorageBackend};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The unit the overlay keeps written bytes in.
const BLOCK: u64 = 4096;

/// Faults a test can switch on in a store: writes and syncs that fail as on a full disk, and a
/// free-space figure to report instead of the file system's.
#[derive(Debug, Default)]
pub struct StoreFaults {
    /// While true, every write, length change and sync fails with ENOSPC.
    pub full: AtomicBool,
    /// While true, only syncs fail with ENOSPC (as delayed allocation reports a full disk at
    /// fsync): the bytes of a commit reach the file, the commit fails.
    pub sync_full: AtomicBool,
    /// When not zero, the free space the store reports, in bytes (instead of statvfs's).
    pub free_bytes: AtomicU64,
}

impl StoreFaults {
    fn check(&self) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            // ENOSPC, as the kernel reports it.
            return Err(io::Error::from_raw_os_error(28));
        }
        Ok(())
    }
}

/// The store's file, for reading and writing.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    syncs: Arc<AtomicU64>,
    faults: Arc<StoreFaults>,
}

impl FileStorage {
    /// The storage on `file`, which it locks exclusively: a second relay (or `relay serve`
    /// while another runs) on the same data directory is refused.
    pub fn new(file: File, syncs: Arc<AtomicU64>, faults: Arc<StoreFaults>) -> io::Result<Self> {
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                if e == rustix::io::Errno::WOULDBLOCK {
                    io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "the store is in use by another process (a running relay?)",
                    )
                } else {
                    io::Error::from(e)
                }
            },
        )?;
        Ok(FileStorage {
            file,
            syncs,
            faults,
        })
    }
}

impl StorageBackend for FileStorage {
    fn len(&self) -> Result<u64, BackendError> {
        Ok(self.file.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.file.read_exact_at(out, offset)?;
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        self.faults.check()?;
        Ok(self.file.set_len(len)?)
    }

    fn sync_data(&self) -> Result<(), BackendError> {
        self.faults.check()?;
        if self.faults.sync_full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28).into());
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(self.file.sync_data()?)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.faults.check()?;
        Ok(self.file.write_all_at(data, offset)?)
    }
}

/// The store's file read-only, with what redb writes kept in memory.
#[derive(Debug)]
pub struct OverlayStorage {
    file: File,
    state: Mutex<Overlay>,
}

#[derive(Debug)]
struct Overlay {
    /// The length redb sees.
    len: u64,
    /// Bytes of the file still seen through the overlay: the file's length, lowered by any
    /// truncation (what lies beyond it reads as zeros unless written again).
    base: u64,
    /// Written blocks, by block number.
    blocks: BTreeMap<u64, Vec<u8>>,
}

impl OverlayStorage {
    /// The overlay on `file`, opened read-only. A shared lock keeps a running relay (which
    /// holds an exclusive one) from writing under it.
    pub fn new(file: File) -> io::Result<Self> {
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared).map_err(
            |e| {
                if e == rustix::io::Errno::WOULDBLOCK {
                    io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "the store is in use by a running relay; stop it first",
                    )
                } else {
                    io::Error::from(e)
                }
            },
        )?;
        let len = file.metadata()?.len();
        Ok(OverlayStorage {
            file,
            state: Mutex::new(Overlay {
                len,
                base: len,
                blocks: BTreeMap::new(),
            }),
        })
    }

    /// The block `n` as it reads now: written, else from the file (zeros beyond `base`).
    fn block(&self, o: &Overlay, n: u64) -> io::Result<Vec<u8>> {
        if let Some(b) = o.blocks.get(&n) {
            return Ok(b.clone());
        }
        let mut buf = vec![0u8; BLOCK as usize];
        let start = n * BLOCK;
        if start < o.base {
            let take = (o.base - start).min(BLOCK) as usize;
            self.file.read_exact_at(&mut buf[..take], start)?;
        }
        Ok(buf)
    }
}

impl StorageBackend for OverlayStorage {
    fn len(&self) -> Result<u64, BackendError> {
        Ok(self.state.lock().unwrap_or_else(|p| p.into_inner()).len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        let len = out.len();
        let o = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let end = offset
            .checked_add(len as u64)
            .filter(|e| *e <= o.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        let mut filled = 0;
        let mut at = offset;
        while at < end {
            let n = at / BLOCK;
            let block = self.block(&o, n)?;
            let from = (at - n * BLOCK) as usize;
            let to = ((end - n * BLOCK).min(BLOCK)) as usize;
            out[filled..filled + (to - from)].copy_from_slice(&block[from..to]);
            filled += to - from;
            at = n * BLOCK + to as u64;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        let mut o = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if len < o.len {
            // Blocks wholly beyond the new end go; a block cut in two keeps its head.
            let keep = len.div_ceil(BLOCK);
            o.blocks.retain(|n, _| *n < keep);
            if !len.is_multiple_of(BLOCK) {
                let n = len / BLOCK;
                if let Some(b) = o.blocks.get_mut(&n) {
                    for x in &mut b[(len % BLOCK) as usize..] {
                        *x = 0;
                    }
                }
            }
            o.base = o.base.min(len);
        }
        o.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let mut o = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let n = at / BLOCK;
            let mut block = self.block(&o, n)?;
            let from = (at - n * BLOCK) as usize;
            let to = ((end - n * BLOCK).min(BLOCK)) as usize;
            let src = (at - offset) as usize;
            block[from..to].copy_from_slice(&data[src..src + (to - from)]);
            o.blocks.insert(n, block);
            at = n * BLOCK + to as u64;
        }
        if end > o.len {
            o.len = end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The overlay reads as the file would after the same writes, and leaves the file alone.
    #[test]
    fn the_overlay_reads_like_the_file_would_and_never_writes_it() {
        let dir = std::env::temp_dir().join(format!("formica-overlay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let original: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &original).unwrap();
        let o = OverlayStorage::new(File::open(&path).unwrap()).unwrap();
        let read = |at: u64, len: usize| {
            let mut out = vec![0; len];
            o.read(at, &mut out).map(|()| out)
        };
        let mut model = original.clone();
        {
            let mut write = |at: usize, data: &[u8]| {
                o.write(at as u64, data).unwrap();
                if model.len() < at + data.len() {
                    model.resize(at + data.len(), 0);
                }
                model[at..at + data.len()].copy_from_slice(data);
            };
            write(4000, &[7; 300]);
            write(9_990, &[9; 40]);
        }
        assert_eq!(read(0, model.len()).unwrap(), model);
        // Truncate inside a written block, then grow: the cut part reads as zeros.
        o.set_len(4100).unwrap();
        model.truncate(4100);
        o.set_len(12_000).unwrap();
        model.resize(12_000, 0);
        assert_eq!(read(0, 12_000).unwrap(), model);
        assert!(read(11_999, 2).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), original);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
