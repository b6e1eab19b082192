//! The writer: the one place that changes the log, run by whichever thread leads the
//! manager's `pipeline` (which it does not know).
//!
//! - It owns the tail. It takes every queued append (up to `group_commit_max_bytes`),
//!   encodes them into one buffer, writes it with one `pwrite`, publishes the frames to readers,
//!   and (under `immediate`) covers them all with one `fdatasync` before answering any. Appends
//!   that arrive during that fsync queue up and form the next group (group commit). It also
//!   rolls segments and runs truncations, checkpoints, retention and the `periodic` fsync timer,
//!   so none of those race with appends. An fsync error is fatal and never retried: the kernel
//!   may already have dropped the dirty pages it failed to write.
//! - Truncation and retention live in [`truncate`]; the next segment file comes from the
//!   preparer thread (`crate::wal::preparer`).
//!
//! fsyncs run on the writer thread itself. A separate fsync thread would overlap the next
//! `pwrite` (a few µs) with the fsync, but costs a cross-thread wake-up per group, which on this
//! kind of machine cost more than it saved (1 writer: 4.6k entries/s with it, 6.3k without).

mod swap;
mod truncate;

pub(crate) use swap::StagedRepair;

use std::io;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use super::config::{Compression, SyncPolicy};
use super::error::{RecordError, Result, SequenceRule, WalError};
use super::frame::{Encoder, FrameHeader, FrameMeta, max_encoded_len, records_at};
use super::indexer::{self, Indexer, Job};
use super::meta;
use super::preparer::{Prepared, Preparer, install_file};
use super::record;
use super::segment::{self, IndexEntry, SEGMENT_HEADER_LEN, SegmentHeader, maybe_index};
use super::state::{Active, SegState, Shared, now_us};
use super::tenants::{NO_SEGMENT, TenantIndex};
use super::types::*;
use crate::fs::{WalFile, is_enospc, write_all_at, write_file_atomic};

/// Called once with the outcome of an append.
pub type Completion = Box<dyn FnOnce(Result<Appended>) + Send>;
type Reply<T> = SyncSender<Result<T>>;

pub(crate) struct AppendReq {
    pub frames: Vec<FrameSpec>,
    /// Upper bound of the encoded size, for sizing group commits.
    pub bytes: u64,
    pub on_written: Option<Completion>,
    pub on_durable: Completion,
}

impl AppendReq {
    pub fn new(
        frames: Vec<FrameSpec>,
        on_written: Option<Completion>,
        on_durable: Completion,
    ) -> Self {
        let bytes = frames
            .iter()
            .map(|f| max_encoded_len(&f.payload, f.parts.len()) as u64)
            .sum();
        AppendReq {
            frames,
            bytes,
            on_written,
            on_durable,
        }
    }
}

pub(crate) enum PrefixPoint {
    /// Hide every record below this sequence number.
    Seq(SequenceNumber),
    /// Hide every frame below this log index.
    Index(u64),
}

pub(crate) enum SuffixPoint {
    Index(u64),
    Seq(SequenceNumber),
}

pub(crate) enum Command {
    Append(AppendReq),
    Sync(Reply<()>),
    Checkpoint {
        name: String,
        reply: Reply<SequenceNumber>,
    },
    TruncatePrefix {
        to: PrefixPoint,
        reply: Reply<LogStart>,
    },
    TruncateSuffix {
        from: SuffixPoint,
        reply: Reply<()>,
    },
    Retention {
        now_us: u64,
        reply: Reply<usize>,
    },
    InstallRepair {
        staged: StagedRepair,
        reply: Reply<()>,
    },
    Close(Reply<()>),
}

impl Command {
    /// Answers a command that will not run.
    pub fn fail(self, e: WalError) {
        match self {
            Command::Append(req) => {
                if let Some(w) = req.on_written {
                    w(Err(e.clone()));
                }
                (req.on_durable)(Err(e));
            }
            Command::Sync(reply) | Command::Close(reply) => drop(reply.send(Err(e))),
            Command::Checkpoint { reply, .. } => drop(reply.send(Err(e))),
            Command::TruncatePrefix { reply, .. } => drop(reply.send(Err(e))),
            Command::TruncateSuffix { reply, .. } => drop(reply.send(Err(e))),
            Command::Retention { reply, .. } => drop(reply.send(Err(e))),
            Command::InstallRepair { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// Requests the writer takes in one group commit at most.
pub(crate) const GROUP_MAX_REQUESTS: usize = 4096;
/// How often an idle writer applies retention.
pub(crate) const RETENTION_IDLE_CHECK: Duration = Duration::from_secs(60);

pub(crate) struct Writer {
    sh: Arc<Shared>,
    encoder: Encoder,
    /// Frames encoded but not yet written.
    buf: Vec<u8>,
    /// Headers and offsets of the frames in `buf`.
    pending: Vec<(FrameHeader, u64)>,
    /// Appends of the group being run (kept to reuse its allocation).
    batch: Vec<AppendReq>,
    done: Vec<(AppendReq, Result<Appended>)>,
    /// Positions in `done` of answers whose frames are still in `buf`.
    unpublished: Vec<usize>,
    last_retention: Instant,
    /// `periodic`: when the oldest write not yet fsync'd was made.
    unsynced_since: Option<Instant>,
    preparer: Preparer,
    indexer: Indexer,
    active_id: SegmentId,
    active_file: Arc<dyn WalFile>,
    /// Bytes of the active segment written (header and frames).
    active_len: u64,
    /// Size of the active segment's file (preallocated space included).
    file_len: u64,
    synced_hint: u32,
    /// The tail including frames in `buf`.
    next_index: u64,
    next_seq: SequenceNumber,
    last_term: u64,
    /// The tail readers see: `(next_index, next_seq, last_term)`.
    published: (u64, SequenceNumber, u64),
}

impl Writer {
    /// The writer of a WAL just recovered: it continues `active`, with segment files from
    /// `preparer`. The manager puts it behind its `Pipeline`.
    pub fn new(
        sh: Arc<Shared>,
        active: Active,
        preparer: Preparer,
        indexer: Indexer,
    ) -> Result<Writer> {
        let compression = match sh.cfg.compression {
            Compression::Zstd => Some((
                sh.cfg.compression_level,
                sh.cfg.compression_min_bytes.as_u64() as usize,
            )),
            Compression::None => None,
        };
        let published = {
            let st = sh.state.read();
            (st.next_index, st.next_seq, st.last_term)
        };
        *sh.active_tenants.lock() = TenantIndex::build_active(
            &*active.file,
            active.id,
            active.len,
            sh.max_body(),
            sh.cfg.tenant_index_max_bytes.as_u64(),
        );
        let mut writer = Writer {
            encoder: Encoder::new(compression)?,
            buf: Vec::with_capacity(1 << 20),
            pending: Vec::new(),
            batch: Vec::new(),
            done: Vec::new(),
            unpublished: Vec::new(),
            unsynced_since: None,
            last_retention: Instant::now(),
            preparer,
            indexer,
            active_id: active.id,
            active_file: active.file,
            active_len: active.len,
            file_len: active.file_len,
            synced_hint: active.len as u32,
            next_index: published.0,
            next_seq: published.1,
            last_term: published.2,
            published,
            sh,
        };
        writer.prepare_next_when_due();
        Ok(writer)
    }

    pub fn shared(&self) -> &Shared {
        &self.sh
    }

    /// Runs one group of commands in order: appends are written and fsync'd together; any
    /// other command first completes the appends queued before it. Returns true after `Close`.
    pub fn process(&mut self, cmds: Vec<Command>) -> bool {
        self.periodic_sync();
        let mut batch = std::mem::take(&mut self.batch);
        for cmd in cmds {
            match cmd {
                Command::Append(req) => batch.push(req),
                other => {
                    self.flush(&mut batch);
                    if self.handle(other) {
                        return true;
                    }
                }
            }
        }
        self.flush(&mut batch);
        self.batch = batch;
        false
    }

    /// The background thread's timers: the `periodic` fsync and retention.
    pub fn timers(&mut self) {
        self.periodic_sync();
        if self.last_retention.elapsed() >= RETENTION_IDLE_CHECK {
            self.last_retention = Instant::now();
            if let Err(e) = self.retention(now_us()) {
                tracing::warn!(error = %e, "WAL retention failed");
            }
        }
    }

    /// Runs a non-append command; returns true when the writer must stop.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Append(_) => unreachable!("appends are batched by process()"),
            Command::Sync(reply) => drop(reply.send(self.sync_all())),
            Command::Checkpoint { name, reply } => drop(reply.send(self.checkpoint(name))),
            Command::TruncatePrefix { to, reply } => drop(reply.send(self.truncate_prefix(to))),
            Command::TruncateSuffix { from, reply } => drop(reply.send(self.truncate_suffix(from))),
            Command::Retention { now_us, reply } => drop(reply.send(self.retention(now_us))),
            Command::InstallRepair { staged, reply } => {
                let r = swap::install_repair(&self.sh, staged).map(|meta| {
                    if self.indexer.submit(Job::Check(vec![meta])).is_err() {
                        tracing::warn!(segment = meta.id(), "the WAL indexer is busy; tenant replays will scan the repaired segment until the next open");
                    }
                });
                drop(reply.send(r))
            }
            Command::Close(reply) => {
                let _ = reply.send(self.close());
                return true;
            }
        }
        false
    }

    // ---- appends -------------------------------------------------------------------------

    fn flush(&mut self, batch: &mut Vec<AppendReq>) {
        if batch.is_empty() {
            return;
        }
        self.synced_hint = self.current_synced_hint();
        let now = now_us();
        for req in batch.drain(..) {
            let r = match self.sh.fatal_error() {
                Some(e) => Err(e),
                None => self.encode_request(&req.frames, now),
            };
            if r.is_ok() {
                self.unpublished.push(self.done.len());
            }
            self.done.push((req, r));
        }
        // A failure here has already turned every answer still waiting on `buf` into an error.
        let _ = self.write_out();
        debug_assert!(self.unpublished.is_empty());
        self.complete();
    }

    /// Answers the requests of the last flush: `on_written` now; `on_durable` once the policy
    /// says the data is durable (after the group's fsync under `immediate`).
    fn complete(&mut self) {
        for (req, r) in &mut self.done {
            if let Some(w) = req.on_written.take() {
                w(r.clone());
            }
        }
        let any_ok = self.done.iter().any(|(_, r)| r.is_ok());
        let policy = self.sh.cfg.sync_policy;
        if any_ok && policy == SyncPolicy::Immediate {
            if let Err(e) = self.fsync_active() {
                for (_, r) in &mut self.done {
                    if r.is_ok() {
                        *r = Err(e.clone());
                    }
                }
            }
        } else if any_ok && policy == SyncPolicy::Periodic {
            self.unsynced_since.get_or_insert_with(Instant::now);
        }
        if any_ok && self.sh.fatal.get().is_none() {
            // Before answering anyone: a reader that starts once an append returned must see it.
            self.sh.raise_acked((self.published.0, self.published.1));
        }
        for (req, r) in self.done.drain(..) {
            (req.on_durable)(r);
        }
    }

    /// `periodic`: fsyncs once `sync_interval` has passed since the oldest unsynced write.
    fn periodic_sync(&mut self) {
        let Some(since) = self.unsynced_since else {
            return;
        };
        if since.elapsed() < self.sh.cfg.sync_interval {
            return;
        }
        self.unsynced_since = None;
        if let Err(e) = self.fsync_active() {
            tracing::error!(error = %e, "periodic WAL fsync failed");
        }
    }

    /// Checks every frame of a request before encoding any, so a bad one leaves no trace.
    fn validate(&self, frames: &[FrameSpec]) -> Result<()> {
        if frames.is_empty() {
            return Err(WalError::InvalidRecord(RecordError::EmptyBatch));
        }
        let max_frame = self.sh.cfg.max_frame_bytes.as_u64();
        let (mut index, mut seq) = (self.next_index, self.next_seq);
        for f in frames {
            if let Some(i) = f.index.filter(|&i| i != index) {
                return Err(WalError::InvalidSequence {
                    what: "log index",
                    got: i,
                    rule: SequenceRule::Exactly(index),
                });
            }
            if let Some(s) = f.first_seq {
                if s < seq {
                    return Err(WalError::InvalidSequence {
                        what: "sequence number",
                        got: s,
                        rule: SequenceRule::AtLeast(seq),
                    });
                }
                seq = s;
            }
            let bytes = max_encoded_len(&f.payload, f.parts.len()) as u64;
            if bytes > max_frame {
                return Err(WalError::FrameTooLarge {
                    bytes,
                    limit_bytes: max_frame,
                });
            }
            if !f.parts.is_empty() {
                let records = f.payload.record_count().unwrap_or(0) as u64;
                let sum: u64 = f.parts.iter().map(|p| u64::from(p.records)).sum();
                if f.producer.is_some() || sum != records || f.parts.iter().any(|p| p.records == 0)
                {
                    return Err(WalError::InvalidRecord(RecordError::BadParts));
                }
            }
            if let Some(n) = f.payload.record_count() {
                for r in f.payload.record_views() {
                    record::validate(r, max_frame as usize).map_err(WalError::InvalidRecord)?;
                }
                seq += n as u64;
            }
            index += 1;
        }
        Ok(())
    }

    fn encode_request(&mut self, frames: &[FrameSpec], now: u64) -> Result<Appended> {
        self.validate(frames)?;
        let first_index = self.next_index;
        let first_seq = frames[0].first_seq.unwrap_or(self.next_seq);
        let segment_size = self.sh.cfg.segment_size.as_u64();
        for f in frames {
            let upper = max_encoded_len(&f.payload, f.parts.len()) as u64;
            let used = self.active_len + self.buf.len() as u64;
            if used + upper > segment_size && used > SEGMENT_HEADER_LEN as u64 {
                self.roll()?;
            }
            let offset = self.active_len + self.buf.len() as u64;
            let meta = FrameMeta {
                index: self.next_index,
                term: f.term,
                first_seq: f.first_seq.unwrap_or(self.next_seq),
                synced_upto: self.synced_hint,
                default_ts: now,
                producer: f.producer,
                parts: &f.parts,
            };
            // Log indexes start at 1 and follow each other; sequence numbers never go back, and
            // a frame's records take the contiguous range `first_seq..next_seq`.
            assert!(meta.index >= 1, "a frame index is at least 1");
            debug_assert!(meta.first_seq >= self.next_seq, "sequence numbers go back");
            let h = self.encoder.encode(&mut self.buf, &meta, &f.payload);
            debug_assert_eq!((h.index, h.first_seq), (meta.index, meta.first_seq));
            if f.payload.record_count().is_some() {
                // Readers bound themselves by the acknowledged index, so the runs of a frame
                // not yet written are never used (and a discarded frame's are dropped).
                let at = records_at(f.parts.len(), f.producer.is_some());
                let lens = f.payload.record_views().map(|r| {
                    Ok::<_, std::convert::Infallible>((r.tenant_id, record::encoded_len(r)))
                });
                let mut active = self.sh.active_tenants.lock();
                debug_assert_eq!(active.segment(), self.active_id);
                let Ok(()) = active.add_frame(&h, offset, at, lens);
            }
            self.pending.push((h, offset));
            self.next_index += 1;
            self.next_seq = h.next_seq();
            self.last_term = f.term;
        }
        debug_assert_eq!(self.next_index, first_index + frames.len() as u64);
        Ok(Appended {
            first_index,
            last_index: self.next_index - 1,
            first_seq,
            next_seq: self.next_seq,
            timestamp: now,
        })
    }

    fn current_synced_hint(&self) -> u32 {
        let s = *self.sh.synced.lock();
        let offset = if s.segment == self.active_id {
            s.offset
        } else {
            SEGMENT_HEADER_LEN as u64
        };
        offset.min(u64::from(u32::MAX)) as u32
    }

    /// Writes `buf` to the active segment and publishes its frames to readers.
    fn write_out(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let end = self.active_len + self.buf.len() as u64;
        if end > self.file_len
            && let Err(e) = self.ensure_space(end - self.file_len)
        {
            self.discard_pending(&e);
            return Err(e);
        }
        if let Err(e) = write_all_at(&*self.active_file, &self.buf, self.active_len) {
            return Err(self.write_failed(e));
        }
        self.file_len = self.file_len.max(end);
        self.active_len = end;
        self.publish();
        Ok(())
    }

    /// A failed write may have left part of `buf` in the file. ENOSPC: cut those bytes off (so
    /// no stale frame can follow the next write) and report it; anything else is fatal.
    fn write_failed(&mut self, e: io::Error) -> WalError {
        let err = if is_enospc(&e) {
            self.cut_after_enospc()
        } else {
            self.sh.set_fatal(e)
        };
        self.discard_pending(&err);
        err
    }

    fn cut_after_enospc(&mut self) -> WalError {
        let required_bytes = self.buf.len() as u64 + self.sh.cfg.min_free_bytes.as_u64();
        let cut = self
            .active_file
            .set_len(self.active_len)
            .and_then(|()| self.active_file.sync_data());
        if let Err(e) = cut {
            return self.sh.set_fatal(e);
        }
        self.file_len = self.active_len;
        let available_bytes = self.sh.fs.available_space(self.sh.dir()).unwrap_or(0);
        WalError::InsufficientSpace {
            dir: self.sh.dir().to_owned(),
            available_bytes,
            required_bytes,
        }
    }

    /// Drops the frames in `buf` (never written) and fails every answer that waited on them.
    fn discard_pending(&mut self, why: &WalError) {
        for i in self.unpublished.drain(..) {
            self.done[i].1 = Err(why.clone());
        }
        self.buf.clear();
        self.pending.clear();
        (self.next_index, self.next_seq, self.last_term) = self.published;
        self.sh
            .active_tenants
            .lock()
            .truncate_from(self.published.0);
    }

    fn ensure_space(&self, grow: u64) -> Result<()> {
        let required_bytes = grow + self.sh.cfg.min_free_bytes.as_u64();
        let available_bytes = self.sh.fs.available_space(self.sh.dir())?;
        if available_bytes < required_bytes {
            return Err(WalError::InsufficientSpace {
                dir: self.sh.dir().to_owned(),
                available_bytes,
                required_bytes,
            });
        }
        Ok(())
    }

    fn publish(&mut self) {
        let interval = self.sh.cfg.index_interval_bytes.as_u64();
        let (mut records, bytes) = (0u64, self.buf.len() as u64);
        {
            let mut st = self.sh.state.write();
            let seg = st
                .segments
                .get_mut(&self.active_id)
                .expect("the active segment is in the table");
            for (h, offset) in self.pending.drain(..) {
                seg.meta.add_frame(&h, offset);
                maybe_index(
                    &mut seg.index,
                    IndexEntry {
                        index: h.index,
                        first_seq: h.first_seq,
                        offset,
                    },
                    interval,
                );
                records += u64::from(h.record_count);
            }
            st.next_index = self.next_index;
            st.next_seq = self.next_seq;
            st.last_term = self.last_term;
        }
        self.buf.clear();
        self.unpublished.clear();
        self.published = (self.next_index, self.next_seq, self.last_term);
        self.sh.metrics.entries_written.inc_by(records);
        self.sh.metrics.bytes_written.inc_by(bytes);
        self.preparer.progress(self.active_len);
        self.prepare_next_when_due();
    }

    /// Asks for the next segment's file once the active one is a quarter full, so that it is
    /// ready before the roll: a roll that has to wait for it stalls every append for as long
    /// as the zero-fill takes (170 ms for 64 MiB, measured). After a roll the next one is
    /// asked for at once ([`Self::install`]); this covers the segment a log was opened with.
    fn prepare_next_when_due(&mut self) {
        if self.active_len * 4 >= self.sh.cfg.segment_size.as_u64() {
            self.preparer.request();
        }
    }

    // ---- segments ------------------------------------------------------------------------

    /// fdatasync of the active segment; on success everything written so far is durable.
    fn fsync_active(&mut self) -> Result<()> {
        if let Some(e) = self.sh.fatal_error() {
            return Err(e);
        }
        let started = Instant::now();
        let r = self.active_file.sync_data();
        self.sh
            .metrics
            .sync_duration
            .observe(started.elapsed().as_secs_f64());
        r.map_err(|e| self.sh.set_fatal(e))?;
        self.sh.note_synced(self.active_id, self.active_len);
        self.unsynced_since = None;
        Ok(())
    }

    /// Seals the active segment and starts a new one at the current tail.
    fn roll(&mut self) -> Result<()> {
        self.write_out()?;
        let prepared = self.preparer.take()?;
        self.seal_active()?;
        self.install(prepared)?;
        if let Err(e) = self.retention(now_us()) {
            tracing::warn!(error = %e, "WAL retention failed");
        }
        Ok(())
    }

    fn seal_active(&mut self) -> Result<()> {
        // Give back the preallocated tail, then make data and size durable together.
        if let Err(e) = self.active_file.set_len(self.active_len) {
            return Err(self.sh.set_fatal(e));
        }
        self.file_len = self.active_len;
        self.fsync_active()?;
        self.sh.raise_acked((self.published.0, self.published.1));
        let (meta, index) = {
            let st = self.sh.state.read();
            let seg = &st.segments[&self.active_id];
            (seg.meta, seg.index.clone())
        };
        let path = self.sh.dir().join(segment::index_file_name(self.active_id));
        write_file_atomic(
            &*self.sh.fs,
            &path,
            &segment::encode_index_file(&meta, &index),
        )
        .map_err(|e| self.meta_write_failed(e))?;
        // The tenant index moves from the active slot to the sealing one at once (readers look
        // in both), and stays there until the indexer has written its file.
        let tenants = {
            let mut sealing = self.sh.sealing.lock();
            let index = std::mem::replace(
                &mut *self.sh.active_tenants.lock(),
                TenantIndex::new(NO_SEGMENT),
            );
            let index = index.usable().then(|| Arc::new(index));
            if let Some(index) = &index {
                sealing.insert(self.active_id, index.clone());
            }
            index
        };
        let mut st = self.sh.state.write();
        let seg = st
            .segments
            .get_mut(&self.active_id)
            .expect("the active segment is in the table");
        seg.sealed = true;
        let index = std::mem::take(&mut seg.index);
        // From now on the handle lives in the LRU of sealed segments' handles.
        let file = seg.file.take();
        drop(st);
        self.sh
            .index_cache
            .lock()
            .put(self.active_id, Arc::new(index));
        if let Some(file) = file {
            self.sh.open_files.lock().put(self.active_id, file);
        }
        if let Some(index) = tenants
            && let Err(Job::Sealed(meta, index)) = self.indexer.submit(Job::Sealed(meta, index))
        {
            // The indexer is behind (or gone): write it here rather than hold it in memory.
            indexer::write_sealed(&self.sh, &meta, &index);
        }
        Ok(())
    }

    /// Makes a prepared file the new active segment, starting at the current tail.
    fn install(&mut self, prepared: Prepared) -> Result<()> {
        let header = SegmentHeader {
            first_index: self.next_index,
            first_seq: self.next_seq,
            created_us: now_us(),
        };
        let path = match install_file(&*self.sh.fs, self.sh.dir(), &prepared, &header) {
            Ok(path) => path,
            Err(e) => return Err(self.sh.set_fatal(e)),
        };
        *self.sh.active_tenants.lock() = TenantIndex::bounded(
            header.first_index,
            self.sh.cfg.tenant_index_max_bytes.as_u64(),
        );
        let count = {
            let mut st = self.sh.state.write();
            st.segments.insert(
                header.first_index,
                SegState::fresh(&header, path, prepared.file.clone()),
            );
            st.segments.len()
        };
        self.sh.metrics.set_segments(count);
        self.active_id = header.first_index;
        self.active_file = prepared.file;
        self.active_len = SEGMENT_HEADER_LEN as u64;
        self.file_len = prepared.len.max(self.active_len);
        self.sh.note_synced(self.active_id, self.active_len);
        self.synced_hint = SEGMENT_HEADER_LEN as u32;
        // The next segment is made while this one fills, so a roll never waits for it.
        self.preparer.progress(self.active_len);
        self.preparer.request();
        Ok(())
    }

    fn meta_write_failed(&self, e: io::Error) -> WalError {
        if is_enospc(&e) {
            let available_bytes = self.sh.fs.available_space(self.sh.dir()).unwrap_or(0);
            return WalError::InsufficientSpace {
                dir: self.sh.dir().to_owned(),
                available_bytes,
                required_bytes: 4096,
            };
        }
        self.sh.set_fatal(e)
    }

    // ---- durability points ---------------------------------------------------------------

    fn sync_all(&mut self) -> Result<()> {
        if let Some(e) = self.sh.fatal_error() {
            return Err(e);
        }
        self.write_out()?;
        self.fsync_active()?;
        self.sh.raise_acked((self.published.0, self.published.1));
        Ok(())
    }

    fn checkpoint(&mut self, name: String) -> Result<SequenceNumber> {
        if name.is_empty() || name.len() > meta::CHECKPOINT_NAME_MAX {
            return Err(WalError::InvalidRecord(RecordError::CheckpointName {
                len: name.len(),
                max: meta::CHECKPOINT_NAME_MAX,
            }));
        }
        self.sync_all()?;
        let seq = self.published.1.saturating_sub(1);
        let mut cps = self.sh.checkpoints.read().clone();
        if !cps.contains_key(&name) && cps.len() >= self.sh.cfg.max_checkpoints {
            return Err(WalError::TooManyCheckpoints {
                limit: self.sh.cfg.max_checkpoints,
            });
        }
        cps.insert(name, seq);
        let path = self.sh.dir().join(meta::CHECKPOINTS_FILE);
        write_file_atomic(&*self.sh.fs, &path, &meta::encode_checkpoints(&cps))
            .map_err(|e| self.meta_write_failed(e))?;
        *self.sh.checkpoints.write() = cps;
        Ok(seq)
    }

    /// Syncs and stops; reports the fatal error if the WAL had one.
    fn close(&mut self) -> Result<()> {
        let r = self.sync_all();
        self.preparer.discard();
        self.indexer.close();
        r
    }
}
