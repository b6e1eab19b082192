//! The [`Manager`]: the WAL's public API. The state its threads share is `state`'s.
//!
//! One writer owns every change to the log (appends, rolls, truncations, checkpoints, and their
//! fsyncs); callers reach it through a bounded queue, and whichever thread leads the `pipeline`
//! runs it (usually the caller's own). The preparer thread makes the next segment file in the
//! background. Readers go through neither: they take a short read lock on the segment table to
//! find where to read, then `pread` without holding any lock.

use std::collections::BTreeMap;
use std::io;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use prometheus::Registry;

use super::config::WalConfig;
use super::error::{RecordError, Result, WalError};
use super::frame::FRAME_HEADER_LEN;
use super::indexer::{Indexer, Job};
use super::metrics::WalMetrics;
use super::pipeline::Pipeline;
use super::preparer::Preparer;
use super::read::{Bound, Cursor, EntryIter};
use super::record::Records;
use super::recovery;
use super::state::{SegState, Shared, SyncedPos};
use super::tenant_read;
use super::types::*;
use super::writer::{AppendReq, Command, Completion, PrefixPoint, SuffixPoint, Writer};
use crate::fs::{FileSystem, StdFs};

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
            _ => WalError::from(e),
        })?;
        let started = Instant::now();
        let recovered = recovery::recover(&*fs, &cfg)?;
        metrics
            .replay_duration
            .observe(started.elapsed().as_secs_f64());
        metrics.set_segments(recovered.state.segments.len());
        metrics.damaged_segments.set(recovered.damaged.len() as i64);
        let synced = SyncedPos {
            segment: recovered.active.id,
            offset: recovered.active.len,
        };
        let shared = Arc::new(Shared::new(
            fs,
            cfg,
            metrics,
            recovered.state,
            synced,
            recovered.checkpoints,
            recovered.damaged,
        ));
        let (preparer, prep_thread) = Preparer::start(shared.clone())?;
        let (indexer, index_thread) = Indexer::start(shared.clone())?;
        // Sealed segments without a valid tenant index (an older replog's, or one a crash lost)
        // get one in the background; meanwhile tenant replays scan them.
        let sealed = {
            let st = shared.state.read();
            let damaged = shared.damaged.lock();
            st.segments
                .values()
                .filter(|s| s.sealed && !damaged.contains_key(&s.meta.id()))
                .map(|s| s.meta)
                .collect()
        };
        if indexer.submit(Job::Check(sealed)).is_err() {
            tracing::warn!("the WAL indexer did not take the check of sealed segments");
        }
        let writer = Writer::new(shared.clone(), recovered.active, preparer, indexer)?;
        let (pipeline, writer_thread) = Pipeline::start(writer)?;
        let threads = vec![writer_thread, prep_thread, index_thread];
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
            return Err(WalError::InvalidRecord(RecordError::EmptyBatch));
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

    /// The first sequence number to keep under a retention of `hours` at `now_us`, if records
    /// before it expired (see [`Manager::apply_retention`] for what expires). A node proposes
    /// a replicated truncation to it, so every replica drops the same records.
    pub fn retention_cut(&self, hours: u64, now_us: u64) -> Option<SequenceNumber> {
        let st = self.shared.state.read();
        let start = st.retention_start(hours, now_us)?;
        (start.seq > st.start.seq).then_some(start.seq)
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

    /// Replays the acknowledged records of one tenant from `from` on, reading only that
    /// tenant's records through the per-tenant index (segments without one are scanned).
    /// Returns how many records `handler` was given.
    pub fn replay_tenant<F>(
        &self,
        from: SequenceNumber,
        tenant: &str,
        mut handler: F,
    ) -> Result<u64>
    where
        F: FnMut(EntryRef<'_>) -> ControlFlow<()>,
    {
        let started = Instant::now();
        let (mut pos, mut seen, mut stopped) = (from, 0, false);
        loop {
            let next = self.read_tenant(pos, SequenceNumber::MAX, tenant, |e| {
                seen += 1;
                let r = handler(e);
                stopped = r.is_break();
                r
            })?;
            if stopped || next <= pos {
                break;
            }
            pos = next;
        }
        self.shared
            .metrics
            .replay_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(seen)
    }

    /// One bounded step of a tenant replay: hands `handler` the acknowledged records of
    /// `tenant` in `from..upto`, through the per-tenant index, and returns where the next step
    /// starts: one past the record `handler` stopped at, or how far every record was
    /// considered. A step looks at a bounded number of segments, so it may return before
    /// `upto` having handed nothing over; it returns `from` when nothing is left to read.
    pub fn read_tenant<F>(
        &self,
        from: SequenceNumber,
        upto: SequenceNumber,
        tenant: &str,
        mut handler: F,
    ) -> Result<SequenceNumber>
    where
        F: FnMut(EntryRef<'_>) -> ControlFlow<()>,
    {
        if from >= upto {
            return Ok(from);
        }
        self.shared.noted(tenant_read::replay_tenant(
            &self.shared,
            from,
            upto,
            tenant,
            &mut handler,
        ))
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
            let (producer, parts, body) = h.split_keys(f.body, true).map_err(|k| f.corrupted(k))?;
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
                parts,
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

    use std::path::Path;

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
