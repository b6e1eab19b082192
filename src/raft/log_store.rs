//! openraft's log store over the WAL: each Raft entry is one WAL frame.
//!
//! - Raft index `i` is WAL frame index `i + 1` (Raft logs start at 0, WAL frames at 1).
//! - A client write is a records frame (with its producer key); every other entry (blank,
//!   membership, commands) is a control frame holding [`Control`].
//! - Record sequence numbers are assigned by the WAL from the log prefix (previous frame's first
//!   sequence + its record count), so every replica derives the same numbers.
//! - `append` returns once the frames are written (readable); `IOFlushed` fires from the WAL's
//!   durability callback, after the fsync covering them under `immediate`. Appends that arrive
//!   while an fsync runs share the next one (group commit).
//! - The newest entries appended are also kept in memory ([`EntryCache`], bounded by bytes), so
//!   replicating them to followers and applying them reads no file and hops to no thread.
//! - The vote, committed id and Raft purge point live in `RAFT_META` ([`MetaStore`]); a vote is
//!   saved only after everything appended before it is durable, so vote and log writes are never
//!   reordered.
//!
//! This module knows openraft and the WAL; it knows nothing of gRPC or sled.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound as RangeBound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::EntryPayload;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use parking_lot::Mutex;

use super::durable::LocalDurable;
use super::meta::{MetaStore, RaftMeta};
use super::types::{
    Control, Entry, LogId, Records, Request, TenantRun, TypeConfig, Vote, WriteRecord,
};
use super::wal_handle::WalHandle;
use crate::wal::{Frame, FramePayload, FrameSpec, Manager, Payload, SharedRecord, WalError};

/// The tracing target of the write path's stages (`RUST_LOG=replog::write_path=trace`): each
/// event names a stage and the Raft index it reached, so one write can be followed across the
/// nodes' logs ([`crate::raft`] explains the stages).
pub const WRITE_PATH: &str = "replog::write_path";

/// How often a changed committed log id is persisted at most (it is also persisted with every
/// vote). Losing it only makes a restarted node wait to learn the commit from the leader.
const COMMITTED_PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// How long a Raft log read of a damaged segment waits for its repair before failing (which
/// stops Raft on this node).
const REPAIR_WAIT: Duration = Duration::from_secs(120);

/// The log store handed to openraft. Cheap to clone: readers share the WAL and the metadata.
#[derive(Clone)]
pub struct LogStore {
    wal: Arc<WalHandle>,
    meta: Arc<SharedMeta>,
    /// Sequence number below which records may be deleted (replicated truncation/retention,
    /// published by the state machine).
    data_watermark: Arc<AtomicU64>,
    durable: Arc<LocalDurable>,
    cache: Arc<Mutex<EntryCache>>,
    /// Raft indexes below this were submitted to the WAL, and below `written` the WAL has
    /// written them: an append whose entries are in the cache returns before the WAL has
    /// written them (they are readable from the cache), and a read the cache cannot serve waits
    /// for the WAL to write what it asks for.
    submitted: Arc<AtomicU64>,
    written: Arc<tokio::sync::watch::Sender<Written>>,
}

/// How far the WAL has written a log store's appends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Written {
    /// Raft indexes below `next` are written. `generation` changes whenever `next` goes back
    /// (indexes rewritten after a truncation or a snapshot install), so a late report of a write
    /// submitted before cannot move it forward again.
    Upto { next: u64, generation: u64 },
    /// A write failed: the WAL is closed and Raft stops.
    Failed,
}

impl Written {
    /// Indexes from `first` on are not written (yet): returns the generation to report in.
    fn rewind(&mut self, first: u64) -> u64 {
        match self {
            Written::Upto { next, generation } => {
                if *next > first {
                    *next = first;
                    *generation += 1;
                }
                *generation
            }
            Written::Failed => 0,
        }
    }
}

/// Default bytes of recent entries kept in memory (`raft.entry_cache_bytes`).
pub const DEFAULT_ENTRY_CACHE_BYTES: usize = 32 << 20;

/// The newest entries appended, with contiguous indexes, as they are in the WAL: filled by
/// `append` once the WAL has written them, cut by `truncate_after`, and dropped whole when the
/// WAL is swapped (a snapshot install) or an append does not follow the cached ones.
struct EntryCache {
    entries: std::collections::VecDeque<Entry>,
    bytes: usize,
    max_bytes: usize,
    /// The WAL the entries are in (a swapped WAL is another one; held weakly, so its address
    /// is not reused while the cache names it).
    wal: std::sync::Weak<Manager>,
}

impl EntryCache {
    fn new(max_bytes: usize) -> EntryCache {
        EntryCache {
            entries: std::collections::VecDeque::new(),
            bytes: 0,
            max_bytes,
            wal: std::sync::Weak::new(),
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Adds entries written to `wal`, following the cached ones (else starting over).
    fn push(&mut self, wal: &Arc<Manager>, entries: Vec<Entry>) {
        let follows = |c: &EntryCache, first: u64| {
            c.is_of(wal) && c.entries.back().is_none_or(|l| l.log_id.index + 1 == first)
        };
        if let Some(first) = entries.first()
            && !follows(self, first.log_id.index)
        {
            self.clear();
            self.wal = Arc::downgrade(wal);
        }
        for e in entries {
            self.bytes += entry_bytes(&e);
            self.entries.push_back(e);
        }
        self.shrink();
    }

    fn shrink(&mut self) {
        while self.bytes > self.max_bytes {
            match self.entries.pop_front() {
                Some(e) => self.bytes -= entry_bytes(&e),
                None => break,
            }
        }
    }

    fn is_of(&self, wal: &Arc<Manager>) -> bool {
        std::ptr::eq(self.wal.as_ptr(), Arc::as_ptr(wal))
    }

    /// Entries `start..end` if all are cached and `wal` is still the WAL they are in.
    fn get(&self, wal: &Arc<Manager>, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.log_id.index;
        let last = self.entries.back()?.log_id.index;
        if !self.is_of(wal) || start < first || end > last + 1 {
            return None;
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(self.entries.range(from..to).cloned().collect())
    }

    /// Drops cached entries after Raft index `last` (all of them for `None`).
    fn cut_after(&mut self, last: Option<u64>) {
        while let Some(e) = self.entries.back() {
            if last.is_some_and(|l| e.log_id.index <= l) {
                break;
            }
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= entry_bytes(&e);
            }
        }
    }
}

/// An entry's size in memory, closely enough to bound the cache (records dominate).
fn entry_bytes(e: &Entry) -> usize {
    const OVERHEAD: usize = 96;
    match &e.payload {
        EntryPayload::Normal(
            Request::Write { records, .. } | Request::Coalesced { records, .. },
        ) => {
            OVERHEAD
                + records
                    .iter()
                    .map(|r| r.data.len() + r.tenant_id.len() + 40)
                    .sum::<usize>()
        }
        _ => OVERHEAD * 2,
    }
}

struct SharedMeta {
    store: MetaStore,
    current: Mutex<RaftMeta>,
    committed_persisted_at: Mutex<Option<Instant>>,
    /// Serializes read-modify-write of `RAFT_META`: openraft may save the vote and the committed
    /// id from different tasks, and two writers would share the temporary file and could each
    /// write back a stale copy of the other's field. Held only on a blocking thread.
    write: std::sync::Mutex<()>,
}

pub fn to_io(e: WalError) -> io::Error {
    io::Error::other(e)
}

fn join_err(e: tokio::task::JoinError) -> io::Error {
    io::Error::other(e)
}

impl LogStore {
    /// Opens the store over an opened WAL; `meta` is where `RAFT_META` lives.
    pub fn open(
        wal: Arc<WalHandle>,
        meta: MetaStore,
        data_watermark: Arc<AtomicU64>,
        snapshot_last: Option<LogId>,
        durable: Arc<LocalDurable>,
    ) -> io::Result<LogStore> {
        let mut current = meta.load()?;
        // After a snapshot install the WAL may start above the old purge point: everything up
        // to the snapshot is in the state machine, so Raft's purge point moves up to it.
        if snapshot_last > current.purged {
            current.purged = snapshot_last;
            meta.store(&current)?;
        }
        let next = wal.get().map_err(to_io)?.acked_index().saturating_sub(1);
        Ok(LogStore {
            wal,
            data_watermark,
            durable,
            cache: Arc::new(Mutex::new(EntryCache::new(DEFAULT_ENTRY_CACHE_BYTES))),
            submitted: Arc::new(AtomicU64::new(next)),
            written: Arc::new(tokio::sync::watch::Sender::new(Written::Upto {
                next,
                generation: 0,
            })),
            meta: Arc::new(SharedMeta {
                store: meta,
                current: Mutex::new(current),
                committed_persisted_at: Mutex::new(None),
                write: std::sync::Mutex::new(()),
            }),
        })
    }

    /// Sets how many bytes of recent entries are kept in memory (0: none).
    pub fn set_entry_cache_bytes(&self, bytes: usize) {
        let mut c = self.cache.lock();
        c.max_bytes = bytes;
        c.shrink();
    }

    fn wal(&self) -> io::Result<Arc<Manager>> {
        self.wal.get().map_err(to_io)
    }

    pub fn meta(&self) -> RaftMeta {
        self.meta.current.lock().clone()
    }

    /// The last log id present in the WAL, if any.
    fn last_in_wal(&self) -> io::Result<Option<LogId>> {
        Ok(self
            .wal()?
            .last_frame()
            .map(|(index, term)| LogId::new_term_index(term, index - 1)))
    }

    /// Applies `change` to the current metadata, persists it (blocking, off the executor) and
    /// publishes it once durable.
    async fn persist(&self, change: impl FnOnce(&mut RaftMeta) + Send + 'static) -> io::Result<()> {
        let shared = self.meta.clone();
        tokio::task::spawn_blocking(move || {
            let _writing = shared
                .write
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut meta = shared.current.lock().clone();
            change(&mut meta);
            shared.store.store(&meta)?;
            *shared.current.lock() = meta;
            Ok(())
        })
        .await
        .map_err(join_err)?
    }

    /// Reads entries with Raft indexes in `range`, off the executor.
    async fn read(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        let purged_next = self.meta.current.lock().purged.map_or(0, |p| p.index + 1);
        let start = start.max(purged_next);
        if start >= end {
            return Ok(Vec::new());
        }
        let wal = self.wal()?;
        if let Some(hit) = self.cache.lock().get(&wal, start, end) {
            return Ok(hit);
        }
        // Entries appended but not yet written by the WAL must be read once written.
        let wanted = end.min(self.submitted.load(Ordering::Acquire));
        let mut rx = self.written.subscribe();
        let failed = *rx
            .wait_for(|w| match w {
                Written::Failed => true,
                Written::Upto { next, .. } => *next >= wanted,
            })
            .await
            .map_err(|_| to_io(WalError::Closed))?
            == Written::Failed;
        if failed {
            return Err(to_io(WalError::Closed));
        }
        tokio::task::spawn_blocking(move || {
            // Frames below the WAL's start do not exist (never written, or truncated).
            let from = (start + 1).max(wal.log_start().index);
            let mut frames = wal.read_frames(from, end.saturating_add(1));
            // A damaged segment is being repaired from a replica (`core::repair`): an error
            // here would stop Raft, so wait for the repair instead.
            if let Err(WalError::CorruptedEntry { segment, .. }) = &frames
                && wal.is_damaged(*segment)
            {
                tracing::warn!(
                    segment,
                    "a Raft log read waits for a damaged WAL segment to be repaired"
                );
                if wal.wait_repaired(REPAIR_WAIT) {
                    frames = wal.read_frames(from, end.saturating_add(1));
                }
            }
            let frames = frames.map_err(to_io)?;
            frames.into_iter().map(frame_to_entry).collect()
        })
        .await
        .map_err(join_err)?
    }
}

fn range_to_half_open(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        RangeBound::Included(s) => *s,
        RangeBound::Excluded(s) => s + 1,
        RangeBound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        RangeBound::Included(e) => e.saturating_add(1),
        RangeBound::Excluded(e) => *e,
        RangeBound::Unbounded => u64::MAX,
    };
    (start, end)
}

/// A WAL frame back into the Raft entry it was written from.
pub fn frame_to_entry(f: Frame) -> io::Result<Entry> {
    // WAL frame `i + 1` holds Raft index `i`; the WAL never writes a frame 0.
    let raft_index = f.index.checked_sub(1).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "a WAL frame with log index 0")
    })?;
    let log_id = LogId::new_term_index(f.term, raft_index);
    let payload = match f.payload {
        FramePayload::Records(entries) => {
            let mut tenants = TenantRun::default();
            let records = entries
                .into_iter()
                .map(|e| WriteRecord {
                    tenant_id: tenants.share(&e.tenant_id),
                    operation: e.operation,
                    data: e.data.into(),
                    timestamp: e.timestamp,
                })
                .collect();
            let records = Arc::new(records);
            EntryPayload::Normal(if f.parts.is_empty() {
                Request::Write {
                    producer: f.producer,
                    records,
                }
            } else {
                Request::Coalesced {
                    parts: f.parts,
                    records,
                }
            })
        }
        FramePayload::Control(bytes) => match Control::decode(&bytes) {
            Ok(Control::Blank) => EntryPayload::Blank,
            Ok(Control::Membership(m)) => EntryPayload::Membership(m),
            Ok(Control::Command(r)) => EntryPayload::Normal(r),
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("log index {}: undecodable control frame: {e}", raft_index),
                ));
            }
        },
    };
    Ok(Entry::new(log_id, payload))
}

/// A Raft entry as the WAL frame that stores it.
pub fn entry_to_frame(e: Entry) -> io::Result<FrameSpec> {
    let control = |c: Control| {
        c.encode()
            .map(Payload::Control)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    };
    let index = e.log_id.index + 1;
    let term = e.log_id.leader_id.term;
    let records = |records: Records| {
        Payload::Shared(
            records
                .iter()
                .map(|r| SharedRecord {
                    // Shared with the entry (and the entry cache's copy): the WAL encodes the
                    // frame from them, copying nothing first.
                    tenant_id: r.tenant_id.clone(),
                    operation: r.operation,
                    data: r.data.clone(),
                    timestamp: Some(r.timestamp),
                })
                .collect(),
        )
    };
    let (producer, parts, payload) = match e.payload {
        EntryPayload::Normal(Request::Write {
            producer,
            records: r,
        }) => (producer, Vec::new(), records(r)),
        EntryPayload::Normal(Request::Coalesced { parts, records: r }) => (None, parts, records(r)),
        EntryPayload::Normal(cmd) => (None, Vec::new(), control(Control::Command(cmd))?),
        EntryPayload::Blank => (None, Vec::new(), control(Control::Blank)?),
        EntryPayload::Membership(m) => (None, Vec::new(), control(Control::Membership(m))?),
    };
    Ok(FrameSpec {
        index: Some(index),
        term,
        first_seq: None,
        producer,
        parts,
        payload,
    })
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let (start, end) = range_to_half_open(&range);
        self.read(start, end).await
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(self.meta.current.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let purged = self.meta.current.lock().purged;
        let last = match (self.last_in_wal()?, purged) {
            (Some(l), Some(p)) => Some(l.max(p)),
            (l, p) => l.or(p),
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        // Everything appended before this vote must be durable first (no reordering).
        let wal = self.wal()?;
        tokio::task::spawn_blocking(move || wal.sync())
            .await
            .map_err(join_err)?
            .map_err(to_io)?;
        let vote = *vote;
        self.persist(move |m| m.vote = Some(vote)).await?;
        *self.meta.committed_persisted_at.lock() = Some(Instant::now());
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        tracing::trace!(target: WRITE_PATH, stage = "log.committed", index = committed.map(|c| c.index));
        let due = self
            .meta
            .committed_persisted_at
            .lock()
            .is_none_or(|at| at.elapsed() >= COMMITTED_PERSIST_INTERVAL);
        if due {
            *self.meta.committed_persisted_at.lock() = Some(Instant::now());
            self.persist(move |m| m.committed = committed).await
        } else {
            // Kept in memory; persisted with the next vote, purge or due save. If a write is
            // under way it would overwrite this: then the next save keeps it.
            if let Ok(_writing) = self.meta.write.try_lock() {
                self.meta.current.lock().committed = committed;
            }
            Ok(())
        }
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        let committed = self.meta.current.lock().committed;
        // Under `async`/`periodic` a crash may have lost entries that were committed; claiming
        // them would make openraft apply entries that are gone.
        let last = self.get_log_state().await?.last_log_id;
        Ok(committed.filter(|c| Some(*c) <= last))
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // Entries that fit the cache well are readable from it at once: the append returns
        // without waiting for the WAL thread to write them.
        let bytes: usize = entries.iter().map(entry_bytes).sum();
        let early = {
            let c = self.cache.lock();
            c.max_bytes > 0 && bytes <= c.max_bytes / 2
        };
        let cached = if early { entries.clone() } else { Vec::new() };
        let frames: Vec<FrameSpec> = entries
            .into_iter()
            .map(entry_to_frame)
            .collect::<io::Result<_>>()?;
        let Some(first_index) = frames.first().and_then(|f| f.index) else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        // openraft appends log ids that strictly increase without gaps; one that does not
        // would leave a hole in the log or two entries at one index.
        assert!(
            frames
                .iter()
                .zip(first_index..)
                .all(|(f, i)| f.index == Some(i)),
            "appended log indexes are not contiguous from {first_index}"
        );
        let wal = self.wal()?;
        if wal.last_frame().is_none() && first_index > wal.next_index() {
            // An empty log that continues above its start (e.g. after a purge past its end).
            tokio::task::spawn_blocking(move || wal.purge_through(first_index - 1))
                .await
                .map_err(join_err)?
                .map_err(to_io)?;
        }
        let last_index = first_index - 1 + frames.len() as u64 - 1;
        tracing::trace!(target: WRITE_PATH, stage = "log.append", index = last_index);
        let (written_tx, written_rx) = tokio::sync::oneshot::channel();
        let written = self.written.clone();
        // These indexes are being (re)written: not written until the WAL says so, whatever an
        // earlier log (before a truncation or a snapshot install) held there.
        let mut generation = 0;
        written.send_modify(|w| generation = w.rewind(first_index - 1));
        let on_written: crate::wal::Completion = Box::new(move |r| {
            tracing::trace!(target: WRITE_PATH, stage = "log.written", index = last_index);
            written.send_modify(|w| match (&r, w) {
                (Err(_), w) => *w = Written::Failed,
                (
                    Ok(_),
                    Written::Upto {
                        next,
                        generation: g,
                    },
                ) if *g == generation => {
                    *next = (*next).max(last_index + 1);
                }
                (Ok(_), _) => {}
            });
            let _ = written_tx.send(r.map(|_| ()));
        });
        let durable = self.durable.clone();
        let on_durable: crate::wal::Completion = Box::new(move |r| {
            tracing::trace!(target: WRITE_PATH, stage = "log.durable", index = last_index);
            match &r {
                Ok(a) => durable.advance(a.last_index),
                Err(_) => durable.fail(),
            }
            callback.io_completed(r.map(|_| ()).map_err(to_io))
        });
        // Raft index of the first entry is `first_index - 1`.
        let next = first_index - 1 + frames.len() as u64;
        // Blocks only while `queue_depth` commands wait: the WAL's back-pressure.
        let wal = self.wal()?;
        if early {
            // In the cache before the WAL takes them: readable from now on.
            self.cache.lock().push(&wal, cached);
        }
        if let Err(e) = wal.append_with(frames, Some(on_written), on_durable) {
            // Refused (nothing written): nor cached, nor waited for.
            self.cache.lock().cut_after(first_index.checked_sub(2));
            return Err(to_io(e));
        }
        self.submitted.store(next, Ordering::Release);
        self.durable.written(next);
        if !early {
            // Readable once written; durability is reported through the callback.
            written_rx
                .await
                .map_err(|_| to_io(WalError::Closed))?
                .map_err(to_io)?;
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |l| l.index + 1) + 1;
        self.cache.lock().cut_after(last_log_id.map(|l| l.index));
        self.durable.cut(from - 1);
        let wal = self.wal()?;
        // Queued behind the appends before it, so they are written (then cut) first.
        tokio::task::spawn_blocking(move || wal.truncate_from_index(from))
            .await
            .map_err(join_err)?
            .map_err(to_io)?;
        // Only ever lowers it: truncating after the end removes nothing.
        self.submitted.fetch_min(from - 1, Ordering::AcqRel);
        self.written.send_modify(|w| {
            w.rewind(from - 1);
        });
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // The purge point is persisted first; data below it is deleted by replicated
        // truncation and retention, not here (the log is the data).
        if self.meta().purged.is_some_and(|p| p >= log_id) {
            return Ok(());
        }
        self.persist(move |m| m.purged = m.purged.max(Some(log_id)))
            .await?;
        let watermark = self.data_watermark.load(Ordering::Acquire);
        let wal = self.wal()?;
        tokio::task::spawn_blocking(move || delete_below(&wal, watermark, log_id.index))
            .await
            .map_err(join_err)?
            .map_err(to_io)
    }
}

/// Deletes records below `watermark`, but never a record of a frame Raft may still read (those
/// after `purged_index`).
fn delete_below(wal: &Manager, watermark: u64, purged_index: u64) -> Result<(), WalError> {
    let first_readable = purged_index + 2; // WAL index of Raft index `purged_index + 1`
    let limit = if first_readable >= wal.next_index() {
        wal.next_seq()
    } else {
        wal.read_frames(first_readable, first_readable + 1)?
            .first()
            .map_or(wal.next_seq(), |f| f.first_seq)
    };
    let to = watermark.min(limit);
    if to > wal.log_start().seq {
        wal.truncate_before(to)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::MemFs;
    use crate::wal::WalConfig;

    fn wal() -> Arc<Manager> {
        let cfg = WalConfig::new(std::path::PathBuf::from("/wal"));
        Arc::new(Manager::open_with(cfg, Arc::new(MemFs::new()), None).unwrap())
    }

    fn entry(index: u64, bytes: usize) -> Entry {
        Entry::new(
            LogId::new_term_index(1, index),
            EntryPayload::Normal(Request::Write {
                producer: None,
                records: Arc::new(vec![WriteRecord {
                    tenant_id: "t".into(),
                    operation: crate::wal::Operation::Insert,
                    data: vec![0; bytes].into(),
                    timestamp: 1,
                }]),
            }),
        )
    }

    #[test]
    fn a_frame_read_back_gives_a_run_of_one_tenant_one_name() {
        let record = |tenant: &str, n: u8| crate::wal::Entry {
            sequence_number: 10 + u64::from(n),
            timestamp: 7,
            tenant_id: tenant.to_owned(),
            operation: crate::wal::Operation::Insert,
            data: vec![n; 3],
            checksum: 0,
        };
        let frame = Frame {
            index: 5,
            term: 2,
            first_seq: 10,
            timestamp: 7,
            producer: None,
            parts: Vec::new(),
            payload: FramePayload::Records(vec![
                record("a", 0),
                record("a", 1),
                record("b", 2),
                record("a", 3),
            ]),
        };
        let entry = frame_to_entry(frame).unwrap();
        assert_eq!(entry.log_id, LogId::new_term_index(2, 4));
        let EntryPayload::Normal(Request::Write { records, .. }) = entry.payload else {
            panic!("not a write: {entry:?}")
        };
        let names: Vec<&str> = records.iter().map(|r| &*r.tenant_id).collect();
        assert_eq!(names, ["a", "a", "b", "a"]);
        assert_eq!(records[2].data.as_ref(), [2, 2, 2]);
        assert!(Arc::ptr_eq(&records[0].tenant_id, &records[1].tenant_id));
        assert!(!Arc::ptr_eq(&records[1].tenant_id, &records[3].tenant_id));
    }

    fn indexes(v: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn the_entry_cache_serves_only_what_it_holds_of_the_wal_it_holds_it_for() {
        let (a, b) = (wal(), wal());
        let mut c = EntryCache::new(10_000);
        c.push(&a, (1..=5).map(|i| entry(i, 10)).collect());
        assert_eq!(indexes(c.get(&a, 2, 4)), Some(vec![2, 3]));
        assert_eq!(indexes(c.get(&a, 1, 6)), Some(vec![1, 2, 3, 4, 5]));
        // Outside what it holds, or another WAL (a swap): a miss.
        assert_eq!(indexes(c.get(&a, 0, 3)), None);
        assert_eq!(indexes(c.get(&a, 3, 7)), None);
        assert_eq!(indexes(c.get(&b, 2, 3)), None);
        // A truncation cuts the tail; an append that does not follow starts over.
        c.cut_after(Some(3));
        assert_eq!(indexes(c.get(&a, 3, 5)), None);
        assert_eq!(indexes(c.get(&a, 1, 4)), Some(vec![1, 2, 3]));
        c.push(&a, vec![entry(9, 10)]);
        assert_eq!(indexes(c.get(&a, 1, 2)), None);
        assert_eq!(indexes(c.get(&a, 9, 10)), Some(vec![9]));
        // The byte bound drops the oldest entries.
        c.push(&a, (10..=100).map(|i| entry(i, 1000)).collect());
        assert!(c.bytes <= 10_000);
        assert_eq!(indexes(c.get(&a, 100, 101)), Some(vec![100]));
        assert_eq!(indexes(c.get(&a, 9, 10)), None);
        c.cut_after(None);
        assert_eq!(c.bytes, 0);
    }
}
