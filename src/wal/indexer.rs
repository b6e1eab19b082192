//! The indexer thread: writes sealed segments' tenant indexes (`.tix`, see
//! [`crate::wal::tenants`]) off the writer. In the worst case (a run per record) an index is a
//! quarter of its segment, and writing it on the writer stalled appends for 50-75 ms at every
//! roll.
//!
//! Jobs: a segment just sealed, whose index is in memory (and served from there, through
//! `Shared::sealing`, until its file is in place); and the sealed segments of a log just opened
//! (or a segment just repaired), whose files it checks and rebuilds when missing or invalid.
//!
//! A `.tix` is written to a `.tmp` file, fsync'd, then renamed, under the `sealing` lock and only
//! if the segment is still in the table with the same summary (truncations delete `.tix` files
//! under that lock), so it never outlives its segment. It is a cache: opening validates it
//! against its segment and rebuilds it, and readers check every record they read through it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use super::error::WalError;
use super::segment::{self, SegmentMeta};
use super::state::Shared;
use super::tenants::{self, TenantIndex, TixDir};
use crate::fs::write_all_at;

/// Jobs waiting at most (a roll rarely comes before the previous index is written).
const QUEUE: usize = 4;

pub(crate) enum Job {
    /// A segment just sealed, with its index (registered in `Shared::sealing`).
    Sealed(SegmentMeta, Arc<TenantIndex>),
    /// Sealed segments that may lack a valid `.tix`.
    Check(Vec<SegmentMeta>),
}

pub(crate) struct Indexer {
    tx: Option<SyncSender<Job>>,
    /// Set on close: checks stop (the next open resumes them); sealed indexes are still written.
    cancel: Arc<AtomicBool>,
}

impl Indexer {
    pub(crate) fn start(sh: Arc<Shared>) -> io::Result<(Indexer, JoinHandle<()>)> {
        let (tx, rx) = sync_channel(QUEUE);
        let cancel = Arc::new(AtomicBool::new(false));
        let thread_cancel = cancel.clone();
        let handle = std::thread::Builder::new()
            .name("wal-indexer".into())
            .spawn(move || run(&sh, &rx, &thread_cancel))?;
        Ok((
            Indexer {
                tx: Some(tx),
                cancel,
            },
            handle,
        ))
    }

    /// Queues a job; gives it back if the queue is full or the thread is gone.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        match &self.tx {
            Some(tx) => tx.try_send(job).map_err(|e| match e {
                TrySendError::Full(j) | TrySendError::Disconnected(j) => j,
            }),
            None => Err(job),
        }
    }

    /// Lets the thread finish the sealed indexes queued and stop.
    pub(crate) fn close(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        self.tx = None;
    }
}

fn run(sh: &Shared, rx: &Receiver<Job>, cancel: &AtomicBool) {
    while let Ok(job) = rx.recv() {
        match job {
            Job::Sealed(meta, index) => write_sealed(sh, &meta, &index),
            Job::Check(metas) => {
                for meta in metas {
                    if cancel.load(Ordering::SeqCst) {
                        break;
                    }
                    check(sh, &meta);
                }
            }
        }
    }
}

/// Writes the `.tix` of a segment just sealed, whose index is `index`.
pub(crate) fn write_sealed(sh: &Shared, meta: &SegmentMeta, index: &Arc<TenantIndex>) {
    publish(sh, meta, &index.encode(meta), Some(index));
}

/// Rebuilds the `.tix` of sealed segment `meta` unless a valid one is there.
fn check(sh: &Shared, meta: &SegmentMeta) {
    let id = meta.id();
    let path = sh.dir().join(tenants::tenant_index_file_name(id));
    let built = TixDir::load(&*sh.fs, &path, meta)
        .map_err(WalError::from)
        .and_then(|found| {
            if found.is_some() {
                return Ok(None);
            }
            let file = sh.fs.open(&sh.dir().join(segment::segment_file_name(id)))?;
            let max = sh.cfg.tenant_index_max_bytes.as_u64();
            TenantIndex::build(&*file, id, meta.data_len, sh.max_body(), max).map(Some)
        });
    match built {
        Ok(Some(index)) if index.usable() => publish(sh, meta, &index.encode(meta), None),
        Ok(_) => {}
        // A damaged segment gets its index once it is repaired.
        Err(WalError::CorruptedEntry { .. }) => {}
        Err(e) => {
            tracing::warn!(segment = id, error = %e, "could not build a WAL tenant index; tenant replays will scan this segment");
        }
    }
}

/// Writes `bytes` as the `.tix` of segment `meta` if the segment is still there, sealed and
/// unchanged; then stops serving `index` (if any) from memory.
fn publish(sh: &Shared, meta: &SegmentMeta, bytes: &[u8], index: Option<&Arc<TenantIndex>>) {
    let id = meta.id();
    let dir = sh.dir();
    let (tmp, path) = (
        dir.join(tenants::tenant_index_tmp_name(id)),
        dir.join(tenants::tenant_index_file_name(id)),
    );
    let written = sh
        .fs
        .create(&tmp)
        .and_then(|f| write_all_at(&*f, bytes, 0).and_then(|()| f.sync_data()));
    let mut sealing = sh.sealing.lock();
    let current = sh
        .state
        .read()
        .segments
        .get(&id)
        .is_some_and(|s| s.sealed && s.meta == *meta);
    let r = match written {
        Ok(()) if current => sh.fs.rename(&tmp, &path),
        Ok(()) => sh.fs.remove(&tmp),
        Err(e) => Err(e),
    };
    if let Some(index) = index
        && sealing.get(&id).is_some_and(|s| Arc::ptr_eq(s, index))
    {
        sealing.remove(&id);
    }
    drop(sealing);
    if let Err(e) = r {
        let _ = sh.fs.remove(&tmp);
        tracing::warn!(segment = id, error = %e, "could not write a WAL tenant index; tenant replays will scan this segment");
    }
}
