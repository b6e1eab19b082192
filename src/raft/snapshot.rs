//! Snapshots when the log is the data (DESIGN.md §7).
//!
//! openraft needs a snapshot before it purges its log and to catch up a replica that lags behind
//! the purge point. Here a snapshot is two things:
//! - the state machine [`Image`] as of the snapshot's last log id (small: counters, producers,
//!   checkpoints, membership), kept durable in `SM_SNAPSHOT` (write + fsync + rename + dir
//!   fsync) because sled is not a durability barrier;
//! - for a replica that receives it, the retained WAL segments from the log start through that
//!   log id, streamed as files (a [`Manifest`] then chunks with CRCs), so it ends up holding
//!   every retained entry, not just the state derived from them.
//!
//! Receiving and installing are crash-safe: files are staged in `snapshot.tmp/` (the staged WAL
//! is opened once, which checks every frame, and cut after the snapshot's last entry), then
//! `snapshot.tmp` is renamed to `snapshot.ready` (the commit point), then `SM_SNAPSHOT` and the
//! WAL directory are replaced. [`finish_install`] redoes the steps after the commit point, and
//! runs at every start.
//!
//! Every file step goes through the node's [`FileSystem`] (the one its WAL was opened with), so
//! the fault-injecting file system of the tests crashes installs too
//! (`tests/snapshot_crash_points.rs`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::image::{Image, ImageV1};
use super::meta::{seal, unseal};
use super::types::SnapshotMeta;
use super::wal_handle::WalHandle;
use crate::fs::{FileSystem, WalFile, read_file, read_full_at, write_all_at, write_file_atomic};
use crate::wal::{LogStart, WalError, meta as wal_meta, segment};

pub const SNAPSHOT_FILE: &str = "SM_SNAPSHOT";
const SNAPSHOT_MAGIC: u32 = 0x5053_4D53; // "SMSP"
pub const STAGING_DIR: &str = "snapshot.tmp";
pub const READY_DIR: &str = "snapshot.ready";
/// Bytes per snapshot chunk on the wire.
pub const CHUNK_BYTES: usize = 1 << 20;

fn to_io(e: WalError) -> io::Error {
    io::Error::other(e)
}

/// `SM_SNAPSHOT`: the last snapshot's meta and image, durable.
pub struct SnapshotFile {
    fs: Arc<dyn FileSystem>,
    path: PathBuf,
}

impl SnapshotFile {
    pub fn new(fs: Arc<dyn FileSystem>, dir: &Path) -> SnapshotFile {
        SnapshotFile {
            fs,
            path: dir.join(SNAPSHOT_FILE),
        }
    }

    pub fn load(&self) -> io::Result<Option<(SnapshotMeta, Image)>> {
        match read_file(&*self.fs, &self.path) {
            Ok(b) => match unseal(SNAPSHOT_MAGIC, &b, SNAPSHOT_FILE) {
                Ok(v) => Ok(Some(v)),
                // Written by a version without quotas: the same image, without them.
                Err(e) => {
                    match unseal::<(SnapshotMeta, ImageV1)>(SNAPSHOT_MAGIC, &b, SNAPSHOT_FILE) {
                        Ok((meta, old)) => Ok(Some((meta, old.into()))),
                        Err(_) => Err(e),
                    }
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Durable before it returns.
    pub async fn store(&self, meta: &SnapshotMeta, image: &Image) -> io::Result<()> {
        let bytes = seal(SNAPSHOT_MAGIC, &(meta, image))?;
        let (fs, path) = (self.fs.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || write_file_atomic(&*fs, &path, &bytes))
            .await
            .map_err(io::Error::other)?
    }
}

/// What a receiver is sent first: the snapshot, the data's log start and the segment files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub meta: SnapshotMeta,
    pub image: Image,
    /// `(index, seq)` of the sender's WAL start (its `LOG_START`).
    pub log_start: (u64, u64),
    /// One past the last WAL frame the files hold up to the snapshot (what the receiver must
    /// find in them).
    pub wal_next_index: u64,
    pub files: Vec<ManifestFile>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestFile {
    pub name: String,
    pub len: u64,
}

/// openraft's snapshot data: the image, and where the segments come from.
pub struct SnapshotData {
    pub image: Image,
    source: Source,
}

enum Source {
    /// Built here: segments are read from this node's WAL when sent.
    Local(Arc<WalHandle>),
    /// Received and staged in this directory, ready to install.
    Received(PathBuf),
}

impl SnapshotData {
    pub fn local(image: Image, wal: Arc<WalHandle>) -> SnapshotData {
        SnapshotData {
            image,
            source: Source::Local(wal),
        }
    }

    /// The manifest of a local snapshot: every segment holding a retained frame up to the
    /// snapshot's last entry, with the bytes written so far.
    pub fn manifest(&self, meta: &SnapshotMeta) -> io::Result<Manifest> {
        let Source::Local(handle) = &self.source else {
            return Err(io::Error::other("a received snapshot is not sent on"));
        };
        let wal = handle.get().map_err(to_io)?;
        let start = wal.log_start();
        let last_wal_index = meta.last_log_id.map_or(0, |l| l.index + 1);
        let files = wal
            .segments()
            .into_iter()
            .filter(|s| {
                s.last_index.is_some_and(|l| l >= start.index) && s.first_index <= last_wal_index
            })
            .map(|s| ManifestFile {
                name: segment::segment_file_name(s.id),
                len: s.size,
            })
            .collect();
        Ok(Manifest {
            meta: meta.clone(),
            image: self.image.clone(),
            log_start: (start.index, start.seq),
            wal_next_index: wal.next_index().min(last_wal_index + 1),
            files,
        })
    }

    /// Reads up to `buf.len()` bytes of a manifest file at `offset` (blocking).
    pub fn read_file_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let Source::Local(handle) = &self.source else {
            return Err(io::Error::other("a received snapshot is not sent on"));
        };
        let path = handle.config().directory.join(name);
        let file = handle.file_system().open(&path)?;
        read_full_at(&*file, buf, offset)
    }
}

/// A snapshot being received into `<data>/snapshot.tmp/`.
pub struct Staging {
    fs: Arc<dyn FileSystem>,
    root: PathBuf,
    dir: PathBuf,
    manifest: Manifest,
    /// Index of the file being written and the bytes written to it.
    at: (usize, u64),
    file: Option<Arc<dyn WalFile>>,
}

impl Staging {
    /// Starts staging on the node's file system `fs` (its WAL's), under `data_dir`.
    pub fn begin(
        fs: Arc<dyn FileSystem>,
        data_dir: &Path,
        manifest: Manifest,
    ) -> io::Result<Staging> {
        let dir = data_dir.join(STAGING_DIR);
        if fs.exists(&dir)? {
            fs.remove_dir_all(&dir)?;
        }
        fs.create_dir_all(&dir.join("wal"))?;
        Ok(Staging {
            fs,
            root: data_dir.to_path_buf(),
            dir,
            manifest,
            at: (0, 0),
            file: None,
        })
    }

    /// Appends a chunk of file `file_no` at `offset`; chunks arrive in order.
    pub fn write(&mut self, file_no: usize, offset: u64, data: &[u8], crc: u32) -> io::Result<()> {
        let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
        if crc32fast::hash(data) != crc {
            return Err(bad(format!(
                "snapshot chunk of file {file_no} at {offset}: CRC mismatch"
            )));
        }
        if file_no != self.at.0 {
            self.close_current()?;
            if file_no != self.at.0 + 1 || offset != 0 {
                return Err(bad(format!(
                    "snapshot chunk out of order: file {file_no} at {offset}"
                )));
            }
            self.at = (file_no, 0);
        }
        let spec = self
            .manifest
            .files
            .get(file_no)
            .ok_or_else(|| bad(format!("no file {file_no} in the manifest")))?;
        if offset != self.at.1 || offset + data.len() as u64 > spec.len {
            return Err(bad(format!(
                "snapshot chunk of {} at {offset} does not follow {} (file is {} bytes)",
                spec.name, self.at.1, spec.len
            )));
        }
        if self.file.is_none() {
            self.file = Some(self.fs.create(&self.dir.join("wal").join(&spec.name))?);
        }
        if let Some(f) = &self.file {
            write_all_at(&**f, data, offset)?;
        }
        self.at.1 += data.len() as u64;
        Ok(())
    }

    fn close_current(&mut self) -> io::Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_data()?;
        }
        Ok(())
    }

    /// Checks that every file arrived whole, that the staged WAL opens and reaches the
    /// snapshot's last entry, and cuts it after that entry.
    pub fn finish(mut self, wal: &WalHandle) -> io::Result<SnapshotData> {
        self.close_current()?;
        let incomplete = |why: String| io::Error::new(io::ErrorKind::UnexpectedEof, why);
        let files = &self.manifest.files;
        let received_all =
            files.is_empty() || (self.at.0 + 1 == files.len() && self.at.1 == files[self.at.0].len);
        if !received_all {
            return Err(incomplete(format!(
                "snapshot stream ended at file {} byte {}",
                self.at.0, self.at.1
            )));
        }
        for f in files.iter().filter(|f| f.len == 0) {
            self.fs
                .create(&self.dir.join("wal").join(&f.name))?
                .sync_data()?;
        }
        let wal_dir = self.dir.join("wal");
        let (index, seq) = self.manifest.log_start;
        write_file_atomic(
            &*self.fs,
            &wal_dir.join(wal_meta::LOG_START_FILE),
            &wal_meta::encode_log_start(LogStart { index, seq }),
        )?;
        let staged = wal.open_other(&wal_dir).map_err(to_io)?;
        if staged.next_index() < self.manifest.wal_next_index {
            return Err(incomplete(format!(
                "received segments end before frame {}, the sender had up to {}",
                staged.next_index(),
                self.manifest.wal_next_index
            )));
        }
        if let Some(last) = self.manifest.meta.last_log_id {
            let wal_last = last.index + 1;
            let visible = if wal_last < staged.log_start().index {
                Vec::new() // everything up to the snapshot was truncated
            } else {
                staged.read_frames(wal_last, wal_last + 1).map_err(to_io)?
            };
            match visible.first() {
                Some(f) if f.term != last.leader_id.term => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "received frame {wal_last} has term {}, the snapshot says {last}",
                            f.term
                        ),
                    ));
                }
                Some(_) => staged.truncate_from_index(wal_last + 1).map_err(to_io)?,
                // The records up to the snapshot were all truncated: the log continues after it.
                None => drop(staged.purge_through(wal_last).map_err(to_io)?),
            }
        }
        if staged.next_seq() != self.manifest.image.next_seq {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "received log continues at sequence {}, the snapshot's state at {}",
                    staged.next_seq(),
                    self.manifest.image.next_seq
                ),
            ));
        }
        staged.close().map_err(to_io)?;
        let image_bytes = seal(SNAPSHOT_MAGIC, &(&self.manifest.meta, &self.manifest.image))?;
        write_file_atomic(&*self.fs, &self.dir.join(SNAPSHOT_FILE), &image_bytes)?;
        self.fs.sync_dir(&self.dir)?;
        self.fs.sync_dir(&self.root)?;
        Ok(SnapshotData {
            image: self.manifest.image,
            source: Source::Received(self.dir),
        })
    }
}

/// Installs a received snapshot: commits the staged directory, then replaces `SM_SNAPSHOT` and
/// the WAL directory, closing and reopening the node's WAL around it (blocking).
pub fn install(
    data_dir: &Path,
    wal: &WalHandle,
    meta: &SnapshotMeta,
    data: SnapshotData,
) -> io::Result<Image> {
    let data = match data.source {
        Source::Received(_) => data,
        // Another node's snapshot handed over in-process (openraft's test suite does this):
        // staged exactly as if it had come over the network.
        Source::Local(_) => copy_to_staging(data_dir, wal, meta, &data)?,
    };
    let Source::Received(staged) = data.source else {
        return Err(io::Error::other(
            "a snapshot must be staged before it is installed",
        ));
    };
    wal.take_and_close().map_err(to_io)?;
    let fs = wal.file_system().clone();
    let ready = data_dir.join(READY_DIR);
    fs.rename(&staged, &ready)?;
    fs.sync_dir(data_dir)?;
    finish_install(&*fs, data_dir, &wal.config().directory)?;
    wal.reopen().map_err(to_io)?;
    Ok(data.image)
}

fn copy_to_staging(
    data_dir: &Path,
    wal: &WalHandle,
    meta: &SnapshotMeta,
    data: &SnapshotData,
) -> io::Result<SnapshotData> {
    let manifest = data.manifest(meta)?;
    let files: Vec<ManifestFile> = manifest.files.clone();
    let mut staging = Staging::begin(wal.file_system().clone(), data_dir, manifest)?;
    let mut buf = vec![0; CHUNK_BYTES];
    for (no, f) in files.iter().enumerate() {
        let mut offset = 0;
        while offset < f.len {
            let want = (f.len - offset).min(CHUNK_BYTES as u64) as usize;
            let n = data.read_file_at(&f.name, offset, &mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} ended at {offset}", f.name),
                ));
            }
            staging.write(no, offset, &buf[..n], crc32fast::hash(&buf[..n]))?;
            offset += n as u64;
        }
    }
    staging.finish(wal)
}

/// Finishes an install whose staged directory was committed (`snapshot.ready` exists); a no-op
/// otherwise. Each step can be redone after a crash. Returns whether there was one.
pub fn finish_install(fs: &dyn FileSystem, data_dir: &Path, wal_dir: &Path) -> io::Result<bool> {
    let ready = data_dir.join(READY_DIR);
    if !fs.exists(&ready)? {
        return Ok(false);
    }
    let image = ready.join(SNAPSHOT_FILE);
    if fs.exists(&image)? {
        fs.rename(&image, &data_dir.join(SNAPSHOT_FILE))?;
        fs.sync_dir(data_dir)?;
    }
    let staged_wal = ready.join("wal");
    if fs.exists(&staged_wal)? {
        if fs.exists(wal_dir)? {
            fs.remove_dir_all(wal_dir)?;
        }
        fs.rename(&staged_wal, wal_dir)?;
        if let Some(parent) = wal_dir.parent() {
            fs.sync_dir(parent)?;
        }
    }
    fs.remove_dir_all(&ready)?;
    fs.sync_dir(data_dir)?;
    Ok(true)
}
