//! The preparer thread: makes the next segment file (space reserved per `preallocate`, fsync'd)
//! while the active one fills, so a roll is a rename and never stalls appends.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use super::config::{Preallocate, WalConfig};
use super::error::{Result, WalError};
use super::fs::{FileSystem, WalFile, is_enospc, write_all_at};
use super::manager::Shared;
use super::segment::{self, SegmentHeader};

/// Bytes zero-filled between two writeback starts.
const ZERO_FILL_STEP_BYTES: usize = 1 << 20;

pub(crate) struct Prepared {
    pub path: PathBuf,
    pub file: Arc<dyn WalFile>,
    pub len: u64,
}

/// Makes the next segment file ahead of time, off the append path.
pub(crate) struct Preparer {
    tx: Option<SyncSender<()>>,
    rx: Receiver<Result<Prepared>>,
    outstanding: bool,
    ready: Option<Prepared>,
    /// Set on close: a zero-fill in progress stops and deletes its file.
    cancel: Arc<AtomicBool>,
    sh: Arc<Shared>,
}

impl Preparer {
    pub(crate) fn start(sh: Arc<Shared>) -> Result<(Preparer, JoinHandle<()>)> {
        let (req_tx, req_rx) = sync_channel::<()>(1);
        let (res_tx, res_rx) = sync_channel(1);
        let thread_sh = sh.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let thread_cancel = cancel.clone();
        let handle = std::thread::Builder::new()
            .name("wal-preparer".into())
            .spawn(move || {
                let mut n = 0u64;
                while req_rx.recv().is_ok() {
                    n += 1;
                    if res_tx
                        .send(prepare(&*thread_sh.fs, &thread_sh.cfg, n, &thread_cancel))
                        .is_err()
                    {
                        break;
                    }
                }
            })?;
        Ok((
            Preparer {
                tx: Some(req_tx),
                rx: res_rx,
                outstanding: false,
                ready: None,
                cancel,
                sh,
            },
            handle,
        ))
    }

    /// Starts preparing a file unless one is ready or on its way.
    pub(crate) fn request(&mut self) {
        if self.outstanding || self.ready.is_some() {
            return;
        }
        if let Some(tx) = &self.tx {
            self.outstanding = tx.send(()).is_ok();
        }
    }

    /// A prepared file, waiting for it if needed.
    pub(crate) fn take(&mut self) -> Result<Prepared> {
        if let Some(p) = self.ready.take() {
            return Ok(p);
        }
        self.request();
        if !self.outstanding {
            return Err(WalError::Closed);
        }
        self.outstanding = false;
        self.rx.recv().map_err(|_| WalError::Closed)?
    }

    /// Stops the thread and deletes a file it prepared but nobody used.
    pub(crate) fn discard(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        if self.outstanding {
            if let Ok(Ok(p)) = self.rx.recv() {
                self.ready = Some(p);
            }
            self.outstanding = false;
        }
        self.tx = None;
        if let Some(p) = self.ready.take() {
            let _ = self.sh.fs.remove(&p.path);
        }
    }
}

/// Creates `prealloc-N.tmp`, zero-filled to `segment_size` when `preallocate` is on, fsync'd.
pub(crate) fn prepare(
    fs: &dyn FileSystem,
    cfg: &WalConfig,
    n: u64,
    cancel: &AtomicBool,
) -> Result<Prepared> {
    let dir = &cfg.directory;
    let size = cfg.segment_size.as_u64();
    let required_bytes = size + cfg.min_free_bytes.as_u64();
    let available_bytes = fs.available_space(dir)?;
    if available_bytes < required_bytes {
        return Err(WalError::InsufficientSpace {
            dir: dir.clone(),
            available_bytes,
            required_bytes,
        });
    }
    let path = dir.join(format!("prealloc-{n}.tmp"));
    let file = fs.create(&path)?;
    let no_space = |e: io::Error| {
        let _ = fs.remove(&path);
        if is_enospc(&e) {
            WalError::InsufficientSpace {
                dir: dir.clone(),
                available_bytes: 0,
                required_bytes,
            }
        } else {
            e.into()
        }
    };
    let len = match cfg.preallocate {
        Preallocate::None => 0,
        Preallocate::Fallocate => {
            file.allocate(size).map_err(no_space)?;
            size
        }
        Preallocate::Zero => {
            // Writeback starts step by step (no cache flush) and one fdatasync ends it: a single
            // 64 MiB flush at the end, or an fsync per step, would stall the writer's fsyncs
            // queued behind them on the same disk.
            let zeros = vec![0u8; (ZERO_FILL_STEP_BYTES as u64).min(size) as usize];
            let mut at = 0;
            while at < size {
                if cancel.load(Ordering::SeqCst) {
                    let _ = fs.remove(&path);
                    return Err(WalError::Closed);
                }
                let n = zeros.len().min((size - at) as usize);
                write_all_at(&*file, &zeros[..n], at).map_err(no_space)?;
                file.start_writeback(at, n as u64)?;
                at += n as u64;
            }
            size
        }
    };
    file.sync_data()?;
    Ok(Prepared { path, file, len })
}

/// Turns a prepared file into segment `header.first_index`: header written and fsync'd, file
/// renamed into place, directory fsync'd. Returns the segment's path.
pub(crate) fn install_file(
    fs: &dyn FileSystem,
    dir: &Path,
    prepared: &Prepared,
    header: &SegmentHeader,
) -> io::Result<PathBuf> {
    let path = dir.join(segment::segment_file_name(header.first_index));
    write_all_at(&*prepared.file, &header.encode(), 0)?;
    prepared.file.sync_data()?;
    fs.rename(&prepared.path, &path)?;
    fs.sync_dir(dir)?;
    Ok(path)
}
