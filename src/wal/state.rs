//! The state the WAL's threads share: the segment table and the log's bounds ([`LogState`]),
//! and around it [`Shared`] (config, file system, metrics, caches, the fatal error, the damaged
//! segments). The bottom of the WAL's own modules: the manager, the writer, the preparer,
//! readers, recovery and repair all build on it; it knows none of them.
//!
//! Invariants (checked where they change):
//! - segments are contiguous: each one's `first_index` is the previous one's `next_index`, and
//!   sequence numbers never go back from one segment to the next;
//! - `start.index <= next_index` and `start.seq <= next_seq`; log indexes start at 1.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use lru::LruCache;
use parking_lot::{Mutex, RwLock};

use super::config::WalConfig;
use super::error::{Corruption, Result, WalError};
use super::metrics::WalMetrics;
use super::scan;
use super::segment::{self, IndexEntry, SegmentHeader, SegmentMeta};
use super::tenants::{self, NO_SEGMENT, TenantIndex, TixDir};
use super::types::{LogStart, SegmentId, SequenceNumber};
use crate::fs::{FileSystem, WalFile, read_file};

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One segment as the readers and the writer see it.
pub(crate) struct SegState {
    pub meta: SegmentMeta,
    pub path: PathBuf,
    /// The active segment's handle. Sealed segments are opened on demand through
    /// [`Shared::segment_file`], so a long log does not hold a descriptor per segment.
    pub file: Option<Arc<dyn WalFile>>,
    pub sealed: bool,
    /// Sparse index of the active segment; sealed segments keep theirs on disk (and in the cache).
    pub index: Vec<IndexEntry>,
}

impl SegState {
    /// A new, empty active segment (its file just installed with `header`).
    pub fn fresh(header: &SegmentHeader, path: PathBuf, file: Arc<dyn WalFile>) -> Self {
        SegState {
            meta: SegmentMeta::empty(header),
            path,
            file: Some(file),
            sealed: false,
            index: Vec::new(),
        }
    }
}

/// The segment table and the log's bounds, behind one `RwLock`.
pub(crate) struct LogState {
    pub segments: BTreeMap<SegmentId, SegState>,
    pub start: LogStart,
    pub next_index: u64,
    pub next_seq: SequenceNumber,
    pub last_term: u64,
    /// Bumped by every suffix truncation, so a reader can tell a vanished frame from corruption.
    pub generation: u64,
}

impl LogState {
    /// The log start a retention of `hours` asks for at `now_us`: the start of the first segment
    /// that holds a record younger than that, if segments before it expired. Only whole sealed
    /// segments from the front expire, never the active one (like Kafka's time retention); a
    /// damaged segment's unknown timestamp never expires. The one retention formula: the writer
    /// applies it, and a node turns it into a replicated truncation
    /// ([`crate::wal::Manager::retention_cut`]).
    pub fn retention_start(&self, hours: u64, now_us: u64) -> Option<LogStart> {
        let cutoff = now_us.saturating_sub(hours.saturating_mul(3_600_000_000));
        let expired = self
            .segments
            .values()
            .take_while(|s| s.sealed && s.meta.max_timestamp < cutoff)
            .count();
        let next = self
            .segments
            .values()
            .nth(expired)
            .filter(|_| expired > 0)?;
        Some(LogStart {
            index: next.meta.first_index.max(self.start.index),
            seq: next.meta.first_seq.max(self.start.seq),
        })
    }
}

/// How far the data of the active segment is known to be on disk.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SyncedPos {
    pub segment: SegmentId,
    pub offset: u64,
}

pub(crate) struct Shared {
    pub fs: Arc<dyn FileSystem>,
    pub cfg: WalConfig,
    pub state: RwLock<LogState>,
    /// Frames with a lower index are acknowledged as the sync policy promises; replay stops here.
    pub acked_index: AtomicU64,
    /// The sequence number after the records of the frames below some `acked_index` (never
    /// ahead of it: raised after it, and read before it; lowered together with it under the
    /// `state` lock, which readers load both under).
    pub acked_seq: AtomicU64,
    pub synced: Mutex<SyncedPos>,
    pub fatal: OnceLock<Arc<io::Error>>,
    pub metrics: WalMetrics,
    pub index_cache: Mutex<LruCache<SegmentId, Arc<Vec<IndexEntry>>>>,
    /// The active segment's tenant index (the writer adds to it as it encodes frames).
    pub active_tenants: Mutex<TenantIndex>,
    /// Indexes of segments sealed whose `.tix` the indexer has not written yet.
    pub sealing: Mutex<BTreeMap<SegmentId, Arc<TenantIndex>>>,
    /// Directories of sealed segments' `.tix` files (LRU, `index_cache_segments`).
    pub tenant_dirs: Mutex<LruCache<SegmentId, Arc<TixDir>>>,
    /// Open handles of sealed segments (LRU, `max_open_segments`).
    pub open_files: Mutex<LruCache<SegmentId, Arc<dyn WalFile>>>,
    pub checkpoints: RwLock<BTreeMap<String, SequenceNumber>>,
    /// Sealed segments known damaged (see `repair`); `repaired` wakes waiters when one is fixed.
    pub damaged: Mutex<BTreeMap<SegmentId, Damage>>,
    pub repaired: parking_lot::Condvar,
    /// One repair at a time (they stage into the same temporary file).
    pub repairing: Mutex<()>,
}

impl Shared {
    /// The shared state of a WAL just recovered into `state`, durable up to `synced`.
    pub fn new(
        fs: Arc<dyn FileSystem>,
        cfg: WalConfig,
        metrics: WalMetrics,
        state: LogState,
        synced: SyncedPos,
        checkpoints: BTreeMap<String, SequenceNumber>,
        damaged: BTreeMap<SegmentId, Damage>,
    ) -> Shared {
        let cache_len = std::num::NonZeroUsize::new(cfg.index_cache_segments)
            .unwrap_or(std::num::NonZeroUsize::MIN);
        let open_len = std::num::NonZeroUsize::new(cfg.max_open_segments)
            .unwrap_or(std::num::NonZeroUsize::MIN);
        Shared {
            fs,
            acked_index: AtomicU64::new(state.next_index),
            acked_seq: AtomicU64::new(state.next_seq),
            synced: Mutex::new(synced),
            state: RwLock::new(state),
            fatal: OnceLock::new(),
            metrics,
            index_cache: Mutex::new(LruCache::new(cache_len)),
            active_tenants: Mutex::new(TenantIndex::new(NO_SEGMENT)),
            sealing: Mutex::new(BTreeMap::new()),
            tenant_dirs: Mutex::new(LruCache::new(cache_len)),
            open_files: Mutex::new(LruCache::new(open_len)),
            checkpoints: RwLock::new(checkpoints),
            damaged: Mutex::new(damaged),
            repaired: parking_lot::Condvar::new(),
            repairing: Mutex::new(()),
            cfg,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.cfg.directory
    }

    pub fn max_body(&self) -> u32 {
        self.cfg.max_frame_bytes.as_u64().min(u64::from(u32::MAX)) as u32
    }

    /// Records the first fatal I/O error; every later write fails with it.
    pub fn set_fatal(&self, e: io::Error) -> WalError {
        let e = self.fatal.get_or_init(|| {
            tracing::error!(error = %e, dir = %self.dir().display(), "WAL write path failed; refusing further writes");
            Arc::new(e)
        });
        WalError::Fatal(e.clone())
    }

    pub fn fatal_error(&self) -> Option<WalError> {
        self.fatal.get().map(|e| WalError::Fatal(e.clone()))
    }

    /// Frames below `index` (records below `seq`) are acknowledged.
    pub fn raise_acked(&self, (index, seq): (u64, SequenceNumber)) {
        self.acked_index.fetch_max(index, Ordering::AcqRel);
        self.acked_seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// After a suffix truncation: only frames below `index` (records below `seq`) remain. Call
    /// it holding the `state` write lock.
    pub fn rewind_acked(&self, (index, seq): (u64, SequenceNumber)) {
        self.acked_seq.store(seq, Ordering::Release);
        self.acked_index.store(index, Ordering::Release);
    }

    pub fn note_synced(&self, segment: SegmentId, offset: u64) {
        let mut s = self.synced.lock();
        if s.segment != segment || s.offset < offset {
            *s = SyncedPos { segment, offset };
        }
    }

    /// A handle on segment `id`: the active one's, or a sealed one's from the LRU (opened now
    /// if needed). A segment deleted by a concurrent truncation is `BeforeLogStart`.
    pub fn segment_file(
        &self,
        id: SegmentId,
        path: &Path,
        active: Option<&Arc<dyn WalFile>>,
    ) -> Result<Arc<dyn WalFile>> {
        if let Some(f) = active {
            return Ok(f.clone());
        }
        if let Some(f) = self.open_files.lock().get(&id) {
            return Ok(f.clone());
        }
        let file = match self.fs.open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let log_start = self.state.read().start.index;
                return Err(WalError::BeforeLogStart {
                    requested: id,
                    log_start,
                });
            }
            Err(e) => return Err(e.into()),
        };
        self.open_files.lock().put(id, file.clone());
        Ok(file)
    }

    /// Forgets cached handles and indexes of segments that were deleted or changed.
    pub fn forget_segments(&self, ids: impl IntoIterator<Item = SegmentId>) {
        let (mut files, mut indexes) = (self.open_files.lock(), self.index_cache.lock());
        let mut tenants = self.tenant_dirs.lock();
        for id in ids {
            files.pop(&id);
            indexes.pop(&id);
            tenants.pop(&id);
        }
    }

    /// The tenant index directory of sealed segment `id` (summed up by `meta`): from the cache
    /// or its `.tix` file; `None` if it has no valid one.
    pub fn tenant_dir(&self, id: SegmentId, meta: &SegmentMeta) -> Result<Option<Arc<TixDir>>> {
        if let Some(d) = self.tenant_dirs.lock().get(&id) {
            return Ok(Some(d.clone()));
        }
        let path = self.dir().join(tenants::tenant_index_file_name(id));
        let Some((dir, read)) = TixDir::load(&*self.fs, &path, meta)? else {
            return Ok(None);
        };
        self.metrics.tenant_read_bytes.inc_by(read);
        let dir = Arc::new(dir);
        self.tenant_dirs.lock().put(id, dir.clone());
        Ok(Some(dir))
    }

    /// Deletes segment `id`'s tenant index (file and pending write) under the `sealing` lock,
    /// so the indexer cannot put it back.
    pub fn remove_tenant_index(&self, id: SegmentId) -> io::Result<()> {
        let mut sealing = self.sealing.lock();
        sealing.remove(&id);
        match self
            .fs
            .remove(&self.dir().join(tenants::tenant_index_file_name(id)))
        {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn forget_tenant_dir(&self, id: SegmentId) {
        self.tenant_dirs.lock().pop(&id);
    }

    /// The sparse index of a sealed segment: from the cache, its `.idx` file, or a scan.
    pub fn sealed_index(
        &self,
        id: SegmentId,
        file: &dyn WalFile,
        meta: &SegmentMeta,
    ) -> Result<Arc<Vec<IndexEntry>>> {
        if let Some(idx) = self.index_cache.lock().get(&id) {
            return Ok(idx.clone());
        }
        let path = self.dir().join(segment::index_file_name(id));
        let loaded = read_file(&*self.fs, &path)
            .ok()
            .and_then(|b| segment::decode_index_file(&b, id).ok());
        let entries = match loaded {
            Some((m, entries)) if m == *meta => entries,
            _ => scan::rescan_index(file, id, meta, &scan::scan_options(&self.cfg))?,
        };
        let idx = Arc::new(entries);
        self.index_cache.lock().put(id, idx.clone());
        Ok(idx)
    }
}

/// The segment the writer continues.
pub(crate) struct Active {
    pub id: SegmentId,
    pub file: Arc<dyn WalFile>,
    /// Bytes used (header and frames).
    pub len: u64,
    pub file_len: u64,
}

/// What is known about a damaged segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Damage {
    /// Where the first bad frame starts and what is wrong with it.
    pub offset: u64,
    pub kind: Corruption,
    /// Whether the segment's summary (last term, timestamps) came from its index while it was
    /// intact; a segment found damaged by recovery has bounds from its neighbours only.
    pub summary_known: bool,
}

impl Shared {
    /// Records the segment of a `CorruptedEntry` as damaged if it is sealed (the active segment
    /// is recovery's business). Idempotent.
    pub fn note_damage(&self, e: &WalError) {
        let WalError::CorruptedEntry {
            segment,
            offset,
            kind,
        } = e
        else {
            return;
        };
        let sealed = self
            .state
            .read()
            .segments
            .get(segment)
            .is_some_and(|s| s.sealed);
        if !sealed {
            return;
        }
        {
            let mut damaged = self.damaged.lock();
            if damaged.contains_key(segment) {
                return;
            }
            damaged.insert(
                *segment,
                Damage {
                    offset: *offset,
                    kind: kind.clone(),
                    summary_known: true,
                },
            );
            self.metrics.damaged_segments.set(damaged.len() as i64);
        }
        tracing::error!(
            segment,
            offset,
            %kind,
            dir = %self.dir().display(),
            "damaged WAL segment: its reads fail until it is repaired from a replica"
        );
        // A restart must find the damage again: without its index the segment is scanned.
        let idx = self.dir().join(segment::index_file_name(*segment));
        match self
            .fs
            .remove(&idx)
            .and_then(|()| self.fs.sync_dir(self.dir()))
        {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(segment, error = %e, "cannot delete the index of a damaged segment");
            }
            _ => {}
        }
        self.index_cache.lock().pop(segment);
    }

    /// `r`, after recording the damage its error reports.
    pub fn noted<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.note_damage(e);
        }
        r
    }
}
