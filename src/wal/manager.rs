//! The [`Manager`]: the WAL's public API and the state its threads share.
//!
//! One writer owns every change to the log (appends, rolls, truncations, checkpoints, and their
//! fsyncs); callers reach it through a bounded queue, and whichever thread leads the `pipeline`
//! runs it (usually the caller's own). The preparer thread makes the next segment file in the
//! background. Readers go through neither: they take a short read lock on the segment table to
//! find where to read, then `pread` without holding any lock.

use std::collections::BTreeMap;
use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use lru::LruCache;
use parking_lot::{Mutex, RwLock};
use prometheus::Registry;

use super::config::WalConfig;
use super::error::{Result, WalError};
use super::frame::FRAME_HEADER_LEN;
use super::metrics::WalMetrics;
use super::pipeline::Pipeline;
use super::read::{Bound, Cursor, EntryIter};
use super::record::Records;
use super::segment::{IndexEntry, SegmentHeader, SegmentMeta};
use super::types::*;
use super::writer::{self, AppendReq, Command, Completion, PrefixPoint, SuffixPoint};
use super::{recovery, segment};
use crate::fs::{FileSystem, StdFs, WalFile};

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
    pub synced: Mutex<SyncedPos>,
    pub fatal: OnceLock<Arc<io::Error>>,
    pub metrics: WalMetrics,
    pub index_cache: Mutex<LruCache<SegmentId, Arc<Vec<IndexEntry>>>>,
    /// Open handles of sealed segments (LRU, `max_open_segments`).
    pub open_files: Mutex<LruCache<SegmentId, Arc<dyn WalFile>>>,
    pub checkpoints: RwLock<BTreeMap<String, SequenceNumber>>,
    /// Sealed segments known damaged (see `repair`); `repaired` wakes waiters when one is fixed.
    pub damaged: Mutex<BTreeMap<SegmentId, super::repair::Damage>>,
    pub repaired: parking_lot::Condvar,
    /// One repair at a time (they stage into the same temporary file).
    pub repairing: Mutex<()>,
}

impl Shared {
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
        for id in ids {
            files.pop(&id);
            indexes.pop(&id);
        }
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
        let loaded = crate::fs::read_file(&*self.fs, &path)
            .ok()
            .and_then(|b| segment::decode_index_file(&b, id).ok());
        let entries = match loaded {
            Some((m, entries)) if m == *meta => entries,
            _ => recovery::rescan_index(self, id, file, meta)?,
        };
        let idx = Arc::new(entries);
        self.index_cache.lock().put(id, idx.clone());
        Ok(idx)
    }
}

/// A segment-based write-ahead log. See the module docs of [`crate::wal`].
pub struct Manager {
    shared: Arc<Shared>,
    pipeline: Option<Arc<Pipeline>>,
    threads: Vec<JoinHandle<()>>,
    _lock: Box<dyn Send + Sync>,
}

fn blocking<T: Send + 'static>() -> (SyncSender<Result<T>>, std::sync::mpsc::Receiver<Result<T>>) {
    sync_channel(1)
}

impl Manager {
    /// Opens (recovering) or creates the WAL in `cfg.directory` on the real file system.
    pub fn open(cfg: WalConfig) -> Result<Manager> {
        Self::open_with(cfg, Arc::new(StdFs), None)
    }

    /// Opens the WAL over `fs`, registering its metrics into `registry` if one is given.
    pub fn open_with(
        cfg: WalConfig,
        fs: Arc<dyn FileSystem>,
        registry: Option<&Registry>,
    ) -> Result<Manager> {
        let metrics = WalMetrics::new(registry).map_err(|e| WalError::InvalidConfig {
            key: "metrics",
            reason: e.to_string(),
        })?;
        Self::open_with_metrics(cfg, fs, metrics)
    }

    /// Opens the WAL over `fs` with metrics already registered (to reopen a WAL in place).
    pub fn open_with_metrics(
        cfg: WalConfig,
        fs: Arc<dyn FileSystem>,
        metrics: WalMetrics,
    ) -> Result<Manager> {
        cfg.validate()?;
        fs.create_dir_all(&cfg.directory)?;
        let lock = fs.lock_dir(&cfg.directory).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => WalError::Locked(cfg.directory.clone()),
            _ => WalError::Io(e),
        })?;
        let started = Instant::now();
        let recovered = recovery::recover(&*fs, &cfg)?;
        metrics
            .replay_duration
            .observe(started.elapsed().as_secs_f64());
        metrics.set_segments(recovered.state.segments.len());
        metrics.damaged_segments.set(recovered.damaged.len() as i64);
        let cache_len = std::num::NonZeroUsize::new(cfg.index_cache_segments)
            .unwrap_or(std::num::NonZeroUsize::MIN);
        let shared = Arc::new(Shared {
            fs,
            acked_index: AtomicU64::new(recovered.state.next_index),
            synced: Mutex::new(SyncedPos {
                segment: recovered.active.id,
                offset: recovered.active.len,
            }),
            state: RwLock::new(recovered.state),
            fatal: OnceLock::new(),
            metrics,
            index_cache: Mutex::new(LruCache::new(cache_len)),
            open_files: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(cfg.max_open_segments)
                    .unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            checkpoints: RwLock::new(recovered.checkpoints),
            damaged: Mutex::new(recovered.damaged),
            repaired: parking_lot::Condvar::new(),
            repairing: Mutex::new(()),
            cfg,
        });
        let (pipeline, threads) = writer::start(shared.clone(), recovered.active)?;
        Ok(Manager {
            shared,
            pipeline: Some(pipeline),
            threads,
            _lock: lock,
        })
    }

    /// The metrics this WAL updates (clones share the same series).
    pub fn metrics(&self) -> WalMetrics {
        self.shared.metrics.clone()
    }

    pub fn file_system(&self) -> Arc<dyn FileSystem> {
        self.shared.fs.clone()
    }

    pub fn config(&self) -> &WalConfig {
        &self.shared.cfg
    }

    /// Queues a command; with `lead` the calling thread may run the group itself.
    fn send(&self, cmd: Command, lead: bool) -> Result<()> {
        self.pipeline
            .as_ref()
            .ok_or(WalError::Closed)?
            .submit(cmd, lead)
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(super) fn call<T: Send + 'static>(
        &self,
        make: impl FnOnce(SyncSender<Result<T>>) -> Command,
    ) -> Result<T> {
        let (tx, rx) = blocking();
        self.send(make(tx), true)?;
        rx.recv().map_err(|_| WalError::Closed)?
    }

    /// Appends one record; returns its sequence number once it is durable per the sync policy.
    pub fn write(&self, record: Record) -> Result<SequenceNumber> {
        Ok(self.write_batch(vec![record])?.first_seq)
    }

    /// Appends records as one atomic batch (one frame): after a crash all of them are in the log
    /// or none. They get a contiguous range of sequence numbers.
    pub fn write_batch(&self, records: Vec<Record>) -> Result<Appended> {
        if records.is_empty() {
            return Err(WalError::InvalidRecord(
                super::error::RecordError::EmptyBatch,
            ));
        }
        self.append(vec![FrameSpec::records(records)])
    }

    /// Appends frames and waits until they are durable per the sync policy. Each frame is atomic;
    /// several frames are not atomic together.
    pub fn append(&self, frames: Vec<FrameSpec>) -> Result<Appended> {
        let (tx, rx) = blocking();
        let done: Completion = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.send(Command::Append(AppendReq::new(frames, None, done)), true)?;
        rx.recv().map_err(|_| WalError::Closed)?
    }

    /// Queues frames for appending without waiting (for async callers such as a Raft store).
    /// `on_written` runs once they are written and readable (before they are durable);
    /// `on_durable` once they are durable per the sync policy, or with the error that stopped
    /// them. Both run on a WAL thread: keep them short, and never call a blocking `Manager`
    /// method from them. Blocks only while `queue_depth` commands wait. If this returns an
    /// error, neither callback runs.
    pub fn append_with(
        &self,
        frames: Vec<FrameSpec>,
        on_written: Option<Completion>,
        on_durable: Completion,
    ) -> Result<()> {
        self.send(
            Command::Append(AppendReq::new(frames, on_written, on_durable)),
            false,
        )
    }

    /// Makes everything appended so far durable, whatever the sync policy.
    pub fn sync(&self) -> Result<()> {
        self.call(Command::Sync)
    }

    /// Makes everything durable and records the last sequence number under `name`; returns it
    /// (0 if the log never held a record).
    pub fn checkpoint(&self, name: &str) -> Result<SequenceNumber> {
        let name = name.to_owned();
        self.call(|reply| Command::Checkpoint { name, reply })
    }

    pub fn checkpoint_seq(&self, name: &str) -> Option<SequenceNumber> {
        self.shared.checkpoints.read().get(name).copied()
    }

    pub fn checkpoints(&self) -> BTreeMap<String, SequenceNumber> {
        self.shared.checkpoints.read().clone()
    }

    /// Drops every record before `seq` (prefix truncation). Whole segments below it are deleted;
    /// the rest is hidden by a persisted watermark. Returns the new log start.
    pub fn truncate_before(&self, seq: SequenceNumber) -> Result<LogStart> {
        self.call(|reply| Command::TruncatePrefix {
            to: PrefixPoint::Seq(seq),
            reply,
        })
    }

    /// Drops every frame up to and including log index `index` (Raft's purge). `index` may lie
    /// past the end: the log is then empty and continues at `index + 1`, in a fresh segment.
    pub fn purge_through(&self, index: u64) -> Result<LogStart> {
        self.call(|reply| Command::TruncatePrefix {
            to: PrefixPoint::Index(index + 1),
            reply,
        })
    }

    /// Drops every frame from log index `index` on (Raft's conflict truncation). Crash-safe: the
    /// cut is durable before this returns.
    pub fn truncate_from_index(&self, index: u64) -> Result<()> {
        self.call(|reply| Command::TruncateSuffix {
            from: SuffixPoint::Index(index),
            reply,
        })
    }

    /// Drops every record from `seq` on. `seq` must start a batch, since batches are atomic.
    pub fn truncate_from_seq(&self, seq: SequenceNumber) -> Result<()> {
        self.call(|reply| Command::TruncateSuffix {
            from: SuffixPoint::Seq(seq),
            reply,
        })
    }

    /// Deletes sealed segments whose newest entry is older than `retention_hours` before
    /// `now_us`. Returns how many were deleted. The writer also runs this on every segment roll
    /// and when idle.
    pub fn apply_retention(&self, now_us: u64) -> Result<usize> {
        self.call(|reply| Command::Retention { now_us, reply })
    }

    pub fn log_start(&self) -> LogStart {
        self.shared.state.read().start
    }

    /// The sequence number the next appended record gets.
    pub fn next_seq(&self) -> SequenceNumber {
        self.shared.state.read().next_seq
    }

    /// The log index the next appended frame gets.
    pub fn next_index(&self) -> u64 {
        self.shared.state.read().next_index
    }

    /// The index and term of the last frame written, if any frame is visible.
    pub fn last_frame(&self) -> Option<(u64, u64)> {
        let st = self.shared.state.read();
        (st.next_index > st.start.index).then_some((st.next_index - 1, st.last_term))
    }

    /// One past the last acknowledged frame's index (what replay shows).
    pub fn acked_index(&self) -> u64 {
        self.shared.acked_index.load(Ordering::Acquire)
    }

    pub fn segments(&self) -> Vec<Segment> {
        let st = self.shared.state.read();
        st.segments
            .values()
            .map(|s| describe(s, &st.start))
            .collect()
    }

    /// Calls `handler` for every acknowledged record from `from` on, in order, without
    /// allocating per record. Stops early when the handler breaks. Returns the records seen.
    pub fn replay<F>(&self, from: SequenceNumber, mut handler: F) -> Result<u64>
    where
        F: FnMut(EntryRef<'_>) -> ControlFlow<()>,
    {
        let started = Instant::now();
        let seen = self.shared.noted(self.replay_inner(from, &mut handler))?;
        self.shared
            .metrics
            .replay_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(seen)
    }

    fn replay_inner<F>(&self, from: SequenceNumber, handler: &mut F) -> Result<u64>
    where
        F: FnMut(EntryRef<'_>) -> ControlFlow<()>,
    {
        let mut cursor = Cursor::at_seq(self.shared.clone(), from, Bound::Acked)?;
        let mut seen = 0;
        'frames: while let Some(f) = cursor.next_frame()? {
            let h = f.header;
            if h.is_control() || h.next_seq() <= from {
                continue;
            }
            for r in h.records(f.body).map_err(|k| f.corrupted(k))? {
                let e = r.map_err(|kind| f.corrupted(kind))?;
                if e.sequence_number < from {
                    continue;
                }
                seen += 1;
                if handler(e).is_break() {
                    break 'frames;
                }
            }
        }
        Ok(seen)
    }

    /// Replays the records after checkpoint `name`.
    pub fn replay_from_checkpoint<F>(&self, name: &str, handler: F) -> Result<u64>
    where
        F: FnMut(EntryRef<'_>) -> ControlFlow<()>,
    {
        let seq = self
            .checkpoint_seq(name)
            .ok_or_else(|| WalError::CheckpointNotFound(name.to_owned()))?;
        let from = (seq + 1).max(self.log_start().seq);
        self.replay(from, handler)
    }

    /// Acknowledged records from `from` on, as owned entries. When it returns `None` it has
    /// caught up; calling `next` again returns records appended since (it follows the tail).
    pub fn iter_from(&self, from: SequenceNumber) -> Result<EntryIter> {
        self.shared.noted(EntryIter::new(self.shared.clone(), from))
    }

    /// The records after checkpoint `name`, as an iterator (see [`Manager::iter_from`]).
    pub fn iter_from_checkpoint(&self, name: &str) -> Result<EntryIter> {
        let seq = self
            .checkpoint_seq(name)
            .ok_or_else(|| WalError::CheckpointNotFound(name.to_owned()))?;
        self.iter_from((seq + 1).max(self.log_start().seq))
    }

    /// Frames with log indexes in `from..to` that were written (durable or not), for a Raft log
    /// reader. `to` is clamped to the end of the log.
    pub fn read_frames(&self, from: u64, to: u64) -> Result<Vec<Frame>> {
        self.shared.noted(self.read_frames_inner(from, to))
    }

    fn read_frames_inner(&self, from: u64, to: u64) -> Result<Vec<Frame>> {
        let mut cursor = Cursor::at_index(self.shared.clone(), from, Bound::Written)?;
        let mut frames = Vec::new();
        while let Some(f) = cursor.next_frame()? {
            let h = f.header;
            if h.index >= to {
                break;
            }
            if h.index < from {
                continue;
            }
            let (producer, body) = h.split_body(f.body).map_err(|k| f.corrupted(k))?;
            let payload = if h.is_control() {
                FramePayload::Control(body.to_vec())
            } else {
                let recs = Records::new(body, h.first_seq, h.record_count)
                    .map(|r| r.map(|e| e.to_owned()));
                FramePayload::Records(recs.collect::<Result<_, _>>().map_err(|k| f.corrupted(k))?)
            };
            frames.push(Frame {
                index: h.index,
                term: h.term,
                first_seq: h.first_seq,
                timestamp: h.timestamp,
                producer,
                payload,
            });
        }
        Ok(frames)
    }

    /// The acknowledged records of one segment.
    pub fn read_segment(&self, id: SegmentId) -> Result<Vec<Entry>> {
        self.shared.noted(self.read_segment_inner(id))
    }

    fn read_segment_inner(&self, id: SegmentId) -> Result<Vec<Entry>> {
        let (first_index, next_index, start_seq) = {
            let st = self.shared.state.read();
            let s = st.segments.get(&id).ok_or(WalError::SegmentNotFound(id))?;
            (
                s.meta.first_index.max(st.start.index),
                s.meta.next_index,
                st.start.seq,
            )
        };
        let mut out = Vec::new();
        if first_index >= next_index {
            return Ok(out);
        }
        let mut cursor = Cursor::at_index(self.shared.clone(), first_index, Bound::Acked)?;
        while let Some(f) = cursor.next_frame()? {
            let h = f.header;
            if h.index >= next_index {
                break;
            }
            if h.is_control() || h.index < first_index {
                continue;
            }
            for r in h.records(f.body).map_err(|k| f.corrupted(k))? {
                let e = r.map_err(|k| f.corrupted(k))?;
                if e.sequence_number >= start_seq {
                    out.push(e.to_owned());
                }
            }
        }
        Ok(out)
    }

    /// Flushes, fsyncs and stops the WAL's threads. Dropping a `Manager` does the same, but
    /// cannot report an error.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let result = match self.pipeline.as_ref() {
            Some(_) => self.call(Command::Close),
            None => Ok(()),
        };
        self.pipeline = None;
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a WAL thread panicked");
            }
        }
        result
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "closing the WAL on drop failed");
        }
    }
}

fn describe(s: &SegState, start: &LogStart) -> Segment {
    let m = &s.meta;
    let first_index = m.first_index.max(start.index);
    let start_seq = m.first_seq.max(start.seq);
    let holds = m.next_index > first_index && m.next_seq > start_seq;
    Segment {
        id: m.id(),
        start_seq,
        end_seq: holds.then(|| m.next_seq - 1),
        first_index,
        last_index: (m.next_index > first_index).then(|| m.next_index - 1),
        size: m.data_len,
        file_path: s.path.clone(),
        status: if s.sealed {
            SegmentStatus::Sealed
        } else {
            SegmentStatus::Active
        },
        max_timestamp: m.max_timestamp,
    }
}

const _: () = assert!(FRAME_HEADER_LEN == 64);

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;

    use super::*;
    use crate::fs::MemFs;
    use crate::wal::{Operation, Preallocate};

    /// One group holds A (fits in the active segment) then B (needs a new one). The roll first
    /// writes A, and that write finds the disk full: A must fail too, not be acknowledged.
    #[test]
    fn a_group_member_whose_bytes_were_dropped_is_not_acknowledged() {
        let fs = MemFs::new();
        let cfg = WalConfig {
            segment_size: bytesize::ByteSize::kib(4),
            min_free_bytes: bytesize::ByteSize::b(0),
            preallocate: Preallocate::None,
            ..WalConfig::new("/wal")
        };
        let wal = Manager::open_with(cfg, Arc::new(fs.clone()), None).unwrap();
        for _ in 0..20 {
            wal.write(Record::new("t", Operation::Insert, vec![1; 100]))
                .unwrap();
        }
        let used = fs
            .contents(Path::new("/wal/00000000000000000001.seg"))
            .unwrap()
            .len() as u64;
        fs.set_capacity(used);
        let answer = |data: Vec<u8>| {
            let (tx, rx) = sync_channel(1);
            let done: Completion = Box::new(move |r| drop(tx.send(r)));
            (
                Command::Append(AppendReq::new(
                    vec![FrameSpec::records(vec![Record::new(
                        "t",
                        Operation::Insert,
                        data,
                    )])],
                    None,
                    done,
                )),
                rx,
            )
        };
        let (a, a_rx) = answer(vec![2; 10]);
        let (b, b_rx) = answer(vec![3; 3000]);
        wal.pipeline.as_ref().unwrap().run_group(vec![a, b]);
        assert!(matches!(
            b_rx.recv().unwrap(),
            Err(WalError::InsufficientSpace { .. })
        ));
        assert!(
            matches!(
                a_rx.recv().unwrap(),
                Err(WalError::InsufficientSpace { .. })
            ),
            "A was acknowledged without being written"
        );
        fs.set_capacity(u64::MAX);
        assert_eq!(
            wal.write(Record::new("t", Operation::Insert, vec![4]))
                .unwrap(),
            21
        );
    }
}
