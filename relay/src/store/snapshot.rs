//! A checkpoint's snapshot: every row of the projection tables as they stood at one log
//! position, in a file of the data directory's `checkpoints/` folder, named by that position
//! (`00000000000001000000.snap`). The engine writes one from a consistent read of the store
//! (`engine::checkpoint`), logs a checkpoint record that commits to its hash, and may then drop
//! the log records before it: a rebuild loads the snapshot and replays the records after it.
//!
//! Format (integers big-endian), written once and never changed in place:
//! ```text
//! magic  "formica-snapshot/v1\n"
//! len    u64        the log position the rows are the replay of
//! head   [32]       the chain hash of record `len`
//! rows   { code u8 (Table::code, 1..=254), klen u32, key, vlen u32, value }*
//!        in strictly increasing (code, key) order
//! end    0xff, count u64, hash [32]
//! ```
//! `hash = BLAKE3("formica/relay-snapshot/v1\0" || len || head || every row as encoded)`: the
//! projections' hash the checkpoint record carries. A file is written as `<name>.partial`,
//! synced, and left under that name until the checkpoint record that names it is durable; only
//! then is it renamed ([`publish`]). So a `.snap` file always has its record in the log, and a
//! `.partial` one is either unfinished (removed) or waiting for its record (published at start
//! when the record is there). A reader checks the order, the count and the hash.

use super::{io, StoreError, Table, TableVisit};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"formica-snapshot/v1\n";
const HASH_TAG: &[u8] = b"formica/relay-snapshot/v1\0";
const END: u8 = 0xff;
/// The largest key or value a snapshot row may have: far above any row the relay writes (an
/// agent's row with its key log is the largest), so that a damaged length cannot make a
/// reader allocate without bound.
const FIELD_MAX: usize = 64 << 20;

/// The folder of a data directory that holds the snapshots.
pub const DIR: &str = "checkpoints";

/// What a snapshot holds, as its header and trailer say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The log position the rows are the replay of.
    pub len: u64,
    pub head: [u8; 32],
    pub rows: u64,
    /// The projections' hash (see the module's documentation).
    pub hash: [u8; 32],
}

/// The snapshot file of position `len` in `dir`.
pub fn path(dir: &Path, len: u64) -> PathBuf {
    dir.join(format!("{len:020}.snap"))
}

/// The positions of the files in `dir` named `<position, 20 digits><suffix>`, in order, with
/// their paths (a missing folder holds none; other names are left alone).
fn positions(dir: &Path, suffix: &str) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(format!("{}: {e}", dir.display()))),
    };
    for e in entries {
        let e = e.map_err(|e| io(format!("{}: {e}", dir.display())))?;
        let name = e.file_name();
        if let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(suffix)) {
            if let (20, Ok(len)) = (stem.len(), stem.parse::<u64>()) {
                out.push((len, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The published snapshots in `dir`, by position.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    positions(dir, ".snap")
}

/// The snapshot of position `len` in `dir` before it is published.
pub fn partial_path(dir: &Path, len: u64) -> PathBuf {
    path(dir, len).with_extension("snap.partial")
}

/// The positions of the snapshots in `dir` that are written but not published.
pub fn list_partial(dir: &Path) -> Result<Vec<u64>, StoreError> {
    Ok(positions(dir, ".snap.partial")?
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// Publishes the snapshot of position `len` (its checkpoint record is durable): renames it to
/// its name and syncs the folder.
pub fn publish(dir: &Path, len: u64) -> Result<(), StoreError> {
    let (from, to) = (partial_path(dir, len), path(dir, len));
    std::fs::rename(&from, &to).map_err(|e| io(format!("{}: {e}", from.display())))?;
    super::sync_dir(dir).map_err(|e| io(format!("{}: {e}", dir.display())))
}

/// Removes what an interrupted snapshot left (`*.partial`) from `dir`.
pub fn remove_partials(dir: &Path) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(format!("{}: {e}", dir.display()))),
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".partial"))
        {
            std::fs::remove_file(e.path())
                .map_err(|x| io(format!("{}: {x}", e.path().display())))?;
        }
    }
    Ok(())
}

/// Removes snapshot `p` and makes that durable.
pub fn remove(p: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(format!("{}: {e}", p.display()))),
    }
    if let Some(dir) = p.parent() {
        super::sync_dir(dir).map_err(|e| io(format!("{}: {e}", dir.display())))?;
    }
    Ok(())
}

fn hasher(len: u64, head: &[u8; 32]) -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    h.update(HASH_TAG);
    h.update(&len.to_be_bytes());
    h.update(head);
    h
}

fn row_bytes(code: u8, k: &[u8], v: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(code);
    out.extend_from_slice(&(k.len() as u32).to_be_bytes());
    out.extend_from_slice(k);
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    out.extend_from_slice(v);
}

/// Writes a snapshot: rows in order, then [`finish`](Self::finish).
#[derive(Debug)]
pub struct SnapshotWriter {
    /// `None` once finished.
    file: Option<BufWriter<std::fs::File>>,
    partial: PathBuf,
    hasher: blake3::Hasher,
    len: u64,
    head: [u8; 32],
    rows: u64,
    last: Option<(u8, Vec<u8>)>,
    buf: Vec<u8>,
}

impl SnapshotWriter {
    /// Starts the snapshot of position `len` (chain hash `head`) in `dir`, created 0700 if
    /// missing.
    pub fn create(dir: &Path, len: u64, head: [u8; 32]) -> Result<SnapshotWriter, StoreError> {
        if !dir.exists() {
            super::datadir::create_private_dir(dir)
                .map_err(|e| io(format!("{}: {e}", dir.display())))?;
            if let Some(parent) = dir.parent() {
                super::sync_dir(parent).map_err(|e| io(format!("{}: {e}", parent.display())))?;
            }
        }
        let partial = partial_path(dir, len);
        let file = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true),
            super::datadir::FILE_MODE,
        )
        .open(&partial)
        .map_err(|e| io(format!("{}: {e}", partial.display())))?;
        let mut w = SnapshotWriter {
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            partial,
            hasher: hasher(len, &head),
            len,
            head,
            rows: 0,
            last: None,
            buf: Vec::new(),
        };
        w.put(MAGIC)?;
        w.put(&len.to_be_bytes())?;
        w.put(&head)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), StoreError> {
        let r = match self.file.as_mut() {
            Some(f) => f.write_all(b),
            None => Err(std::io::Error::other("the snapshot is finished")),
        };
        r.map_err(|e| io(format!("{}: {e}", self.partial.display())))
    }

    /// Adds a row; rows come in strictly increasing (table, key) order.
    pub fn row(&mut self, t: Table, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
        let code = t.code();
        if code == 0 || code == END || k.len() > FIELD_MAX || v.len() > FIELD_MAX {
            return Err(StoreError::Io(format!(
                "table {} cannot be in a snapshot",
                t.name()
            )));
        }
        if let Some((c, last)) = &self.last {
            if (*c, last.as_slice()) >= (code, k) {
                return Err(StoreError::Io("snapshot rows out of order".into()));
            }
        }
        self.last = Some((code, k.to_vec()));
        let mut buf = std::mem::take(&mut self.buf);
        row_bytes(code, k, v, &mut buf);
        self.hasher.update(&buf);
        let r = self.put(&buf);
        self.buf = buf;
        r?;
        self.rows += 1;
        Ok(())
    }

    /// Writes the trailer and syncs the file and the folder; the file keeps its `.partial`
    /// name until [`publish`].
    pub fn finish(mut self) -> Result<SnapshotInfo, StoreError> {
        let hash = *self.hasher.finalize().as_bytes();
        self.put(&[END])?;
        let rows = self.rows;
        self.put(&rows.to_be_bytes())?;
        self.put(&hash)?;
        let at = |e: std::io::Error, p: &Path| io(format!("{}: {e}", p.display()));
        let Some(file) = self.file.take() else {
            return Err(StoreError::Io("the snapshot is finished".into()));
        };
        let synced = file
            .into_inner()
            .map_err(|e| at(e.into_error(), &self.partial))
            .and_then(|f| f.sync_all().map_err(|e| at(e, &self.partial)))
            .and_then(|()| match self.partial.parent() {
                Some(dir) => super::sync_dir(dir).map_err(|e| at(e, dir)),
                None => Ok(()),
            });
        if let Err(e) = synced {
            let _ = std::fs::remove_file(&self.partial);
            return Err(e);
        }
        Ok(SnapshotInfo {
            len: self.len,
            head: self.head,
            rows,
            hash,
        })
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        // Unfinished (an error, a stop): nothing of it stays.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// Reads snapshot `p`, handing each row to `f` in order, and checks it whole: the magic, the
/// order, the count and the hash. Rows reach `f` before the hash is checked at the end, so a
/// caller that must not act on a damaged file calls [`check`] first.
pub fn read(p: &Path, f: &mut TableVisit<'_>) -> Result<SnapshotInfo, StoreError> {
    let bad = |why: String| StoreError::Corrupt {
        seq: 0,
        reason: format!(
            "checkpoint snapshot {}: {why} (relay check --rebuild sets it aside)",
            p.display()
        ),
    };
    let file = std::fs::File::open(p).map_err(|e| io(format!("{}: {e}", p.display())))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let exact = |r: &mut BufReader<std::fs::File>, n: usize| -> Result<Vec<u8>, StoreError> {
        let mut b = vec![0u8; n];
        r.read_exact(&mut b).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bad("it ends early".into())
            } else {
                io(format!("{}: {e}", p.display()))
            }
        })?;
        Ok(b)
    };
    let u32_of = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let u64_of = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        u64::from_be_bytes(a)
    };
    if exact(&mut r, MAGIC.len())? != MAGIC {
        return Err(bad("it does not start like a snapshot".into()));
    }
    let len = u64_of(&exact(&mut r, 8)?);
    let mut head = [0u8; 32];
    head.copy_from_slice(&exact(&mut r, 32)?);
    let mut h = hasher(len, &head);
    let mut rows = 0u64;
    let mut last: Option<(u8, Vec<u8>)> = None;
    let mut buf = Vec::new();
    loop {
        let code = exact(&mut r, 1)?[0];
        if code == END {
            break;
        }
        let table = Table::from_code(code)
            .filter(|t| t.is_projection())
            .ok_or_else(|| bad(format!("row {} names no table ({code})", rows + 1)))?;
        let klen = u32_of(&exact(&mut r, 4)?);
        if klen > FIELD_MAX {
            return Err(bad(format!("row {} has a key of {klen} bytes", rows + 1)));
        }
        let k = exact(&mut r, klen)?;
        let vlen = u32_of(&exact(&mut r, 4)?);
        if vlen > FIELD_MAX {
            return Err(bad(format!("row {} has a value of {vlen} bytes", rows + 1)));
        }
        let v = exact(&mut r, vlen)?;
        if let Some((c, lk)) = &last {
            if (*c, lk.as_slice()) >= (code, k.as_slice()) {
                return Err(bad(format!("row {} is out of order", rows + 1)));
            }
        }
        row_bytes(code, &k, &v, &mut buf);
        h.update(&buf);
        f(table, &k, &v)?;
        rows += 1;
        last = Some((code, k));
    }
    let count = u64_of(&exact(&mut r, 8)?);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&exact(&mut r, 32)?);
    if count != rows {
        return Err(bad(format!(
            "it holds {rows} rows, its trailer says {count}"
        )));
    }
    if *h.finalize().as_bytes() != hash {
        return Err(bad("its rows do not match its hash".into()));
    }
    let mut more = [0u8; 1];
    if r.read(&mut more)
        .map_err(|e| io(format!("{}: {e}", p.display())))?
        != 0
    {
        return Err(bad("bytes follow its trailer".into()));
    }
    Ok(SnapshotInfo {
        len,
        head,
        rows,
        hash,
    })
}

/// Reads snapshot `p` whole and checks it ([`read`] with rows ignored).
pub fn check(p: &Path) -> Result<SnapshotInfo, StoreError> {
    read(p, &mut |_, _, _| Ok(()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rows() -> Vec<(Table, Vec<u8>, Vec<u8>)> {
        vec![
            (Table::Meta, b"projected".to_vec(), vec![1; 40]),
            (Table::Agents, b"@a@x".to_vec(), b"{}".to_vec()),
            (Table::Inbox, vec![0, 1], vec![]),
            (Table::Inbox, vec![0, 2], vec![7; 48]),
        ]
    }

    #[test]
    fn written_snapshots_read_back_and_damage_is_named() {
        let root = std::env::temp_dir().join(format!("formica-snap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let d = root.join(DIR);
        let mut w = SnapshotWriter::create(&d, 42, [9; 32]).unwrap();
        for (t, k, v) in rows() {
            w.row(t, &k, &v).unwrap();
        }
        // Out of order is refused while writing.
        assert!(w.row(Table::Agents, b"@b@x", b"").is_err());
        let info = w.finish().unwrap();
        assert_eq!((info.len, info.rows), (42, 4));
        // Not a snapshot until published.
        assert!(list(&d).unwrap().is_empty());
        assert_eq!(list_partial(&d).unwrap(), vec![42]);
        publish(&d, 42).unwrap();
        assert!(list_partial(&d).unwrap().is_empty());
        assert_eq!(list(&d).unwrap(), vec![(42, path(&d, 42))]);
        let mut got = Vec::new();
        let again = read(&path(&d, 42), &mut |t, k, v| {
            got.push((t, k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(again, info);
        assert_eq!(got, rows());
        // Any flipped byte is found, and named with the file.
        let bytes = std::fs::read(path(&d, 42)).unwrap();
        for i in [0, 25, 70, bytes.len() / 2, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 1;
            std::fs::write(path(&d, 7), &b).unwrap();
            match check(&path(&d, 7)) {
                Err(StoreError::Corrupt { reason, .. }) => {
                    assert!(reason.contains("00000000000000000007.snap"), "{reason}")
                }
                other => panic!("byte {i}: {other:?}"),
            }
        }
        // Cut short, or with bytes after its end.
        std::fs::write(path(&d, 7), &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(
            check(&path(&d, 7)),
            Err(StoreError::Corrupt { .. })
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        std::fs::write(path(&d, 7), &longer).unwrap();
        assert!(matches!(
            check(&path(&d, 7)),
            Err(StoreError::Corrupt { .. })
        ));
        // An unfinished writer leaves nothing.
        let w = SnapshotWriter::create(&d, 50, [0; 32]).unwrap();
        drop(w);
        assert_eq!(
            list(&d).unwrap().iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![7, 42]
        );
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 2);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
