//! The replicated state machine: what applying committed entries builds, kept in sled.
//!
//! It owns: the record sequence counter (`next_seq`, the same function of the log prefix as the
//! WAL's), per-tenant counters, the idempotency table, named checkpoints, the truncation
//! watermark, the applied log id and the membership. Everything lives in one sled tree and each
//! `apply` call writes one atomic `sled::Batch` with the applied id in it, so sled always holds
//! a consistent image of some applied prefix; after a crash openraft re-applies from there.
//!
//! sled is written at most every `SAVE_INTERVAL` (and when the state machine is dropped), with
//! every change since the last write: a write costs as much as the entries it carries, and
//! after a crash openraft re-applies the entries sled lacks from the WAL, which is the truth.
//!
//! sled is not a durability barrier (its `flush()` was seen issuing `sync_file_range`), so the
//! image that cannot be rebuilt from the retained log — the one a snapshot describes, taken
//! before the log below it is purged — is also written to `SM_SNAPSHOT` with write + fsync +
//! rename + directory fsync ([`super::snapshot`]). On open, the newer of the two wins.
//!
//! Idempotency: `(producer_id, producer_seq)`. A write whose key is at or below the producer's
//! last applied `producer_seq` is a duplicate: it changes nothing and answers the original
//! result (exact for a retry of one of the producer's last `RECENT_KEYS` writes since the node
//! started; for an older one, the last write's result).
//! The table keeps `max_producers` producers; past that, the producer whose last write is the
//! oldest (by log index, so every replica evicts the same one) is forgotten, and a retry from
//! it would be written again. The leader never proposes a key that is applied or in flight
//! (`core::producers`), so a duplicate never takes sequence numbers; one that reached the log
//! anyway is counted (`duplicate_keys_applied`).

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, TryStreamExt};
use openraft::EntryPayload;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::durable::LocalDurable;
pub use super::image::{Checkpoint, Image, ProducerState, TenantStats};
use super::log_store::WRITE_PATH;
use super::snapshot::{self, SnapshotData, SnapshotFile};
use super::types::{
    Entry, LogId, NodeId, Request, Response, SnapshotMeta, StoredMembership, TypeConfig,
    WriteRecord,
};
use super::wal_handle::WalHandle;
use crate::wal::{ProducerKey, SequenceNumber, WritePart};

/// Default bound of the idempotency table.
pub const DEFAULT_MAX_PRODUCERS: usize = 100_000;

/// What readers (the API, replay) see of the state machine, shared with it.
pub struct SmShared {
    image: RwLock<Image>,
    /// One past the last applied record's sequence number: replay shows records below it.
    applied_seq: watch::Sender<SequenceNumber>,
    /// Sequence number below which the WAL may delete data (set by applied truncations; the
    /// log store deletes only below its Raft purge point too).
    pub data_watermark: Arc<AtomicU64>,
    /// Told each time `data_watermark` rises (a permit waits if no one does): the truncator
    /// wakes on truncations only, not on every apply.
    pub watermark_raised: tokio::sync::Notify,
    /// Snapshots (with their segments) installed since the node started.
    pub snapshots_installed: AtomicU64,
    /// Entries applied since the node started (a restart re-applies only what sled lacked).
    pub applied_since_open: AtomicU64,
    /// Keyed writes applied whose key had been applied before, since the node started. The
    /// leader never proposes a key twice (`core::producers`): anything but 0 is a bug.
    pub duplicate_keys_applied: AtomicU64,
    /// The last `RECENT_KEYS` keyed writes applied per producer since the node started (the
    /// table keeps only the last one), so a pipelining producer that resends several keys
    /// after a leader change gets each one's own result. In memory only: after a restart an
    /// older key's retry gets the last write's result, as the table alone answers.
    recent: parking_lot::Mutex<
        std::collections::HashMap<u64, std::collections::VecDeque<ProducerState>>,
    >,
}

/// Keyed writes remembered per producer (see [`SmShared::recent`]); a producer keeps at most
/// this many writes in flight.
pub const RECENT_KEYS: usize = 16;

impl SmShared {
    pub fn read<T>(&self, f: impl FnOnce(&Image) -> T) -> T {
        f(&self.image.read())
    }

    /// Members of the last applied membership, with their addresses (known before Raft starts).
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        self.read(|i| {
            i.membership
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect()
        })
    }

    pub fn applied_seq(&self) -> watch::Receiver<SequenceNumber> {
        self.applied_seq.subscribe()
    }

    /// The applied write of a key not newer than its producer's last: its own result if this
    /// node remembers it, else the producer's last write.
    pub fn duplicate_of(&self, key: ProducerKey) -> Option<ProducerState> {
        let last = self
            .image
            .read()
            .producers
            .get(&key.id)
            .filter(|p| key.seq <= p.seq)
            .copied()?;
        if key.seq == last.seq {
            return Some(last);
        }
        let recent = self.recent.lock();
        let own = recent
            .get(&key.id)
            .and_then(|r| r.iter().find(|p| p.seq == key.seq).copied());
        Some(own.unwrap_or(last))
    }

    /// Remembers keyed writes just applied (`(producer, its write)`), forgetting producers
    /// the table evicted.
    fn remember(&self, keyed: Vec<(u64, ProducerState)>, evicted: &[u64], max_producers: usize) {
        let mut recent = self.recent.lock();
        for (id, p) in keyed {
            let r = recent.entry(id).or_default();
            if r.len() >= RECENT_KEYS {
                r.pop_front();
            }
            r.push_back(p);
        }
        for id in evicted {
            recent.remove(id);
        }
        if recent.len() > max_producers {
            let image = self.image.read();
            recent.retain(|id, _| image.producers.contains_key(id));
        }
    }
}

pub struct StateMachine {
    shared: Arc<SmShared>,
    tree: sled::Tree,
    snapshots: Arc<SnapshotFile>,
    wal: Arc<WalHandle>,
    data_dir: PathBuf,
    max_producers: usize,
    durable: Arc<LocalDurable>,
    unsaved: parking_lot::Mutex<Unsaved>,
}

const KEY_APPLIED: &[u8] = b"m/applied";
const KEY_MEMBERSHIP: &[u8] = b"m/membership";
const KEY_NEXT_SEQ: &[u8] = b"m/next_seq";
const KEY_LOG_START: &[u8] = b"m/log_start";
const PREFIX_TENANT: &[u8] = b"t/";
const PREFIX_PRODUCER: &[u8] = b"p/";
const PREFIX_CHECKPOINT: &[u8] = b"c/";
const PREFIX_QUOTA: &[u8] = b"q/";

fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

fn enc<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn dec<T: for<'de> Deserialize<'de>>(b: &[u8]) -> io::Result<T> {
    postcard::from_bytes(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn prefixed(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + key.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(key);
    k
}

/// Keys changed by one `apply` call, written together.
#[derive(Default)]
struct Dirty {
    tenants: HashSet<String>,
    producers: HashSet<u64>,
    evicted: Vec<u64>,
    checkpoints: HashSet<String>,
    /// Tenants whose quota was set or removed.
    quotas: HashSet<String>,
    membership: bool,
    duplicate_keys: u64,
    /// Keyed writes applied, in order (for [`SmShared::remember`]; not saved).
    keyed: Vec<(u64, ProducerState)>,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        self.tenants.is_empty()
            && self.producers.is_empty()
            && self.evicted.is_empty()
            && self.checkpoints.is_empty()
            && self.quotas.is_empty()
            && !self.membership
    }

    /// Adds the keys `other` changed (written as they are in the image at the next save).
    fn merge(&mut self, other: Dirty) {
        self.tenants.extend(other.tenants);
        self.producers.extend(other.producers);
        self.evicted.extend(other.evicted);
        self.checkpoints.extend(other.checkpoints);
        self.quotas.extend(other.quotas);
        self.membership |= other.membership;
    }
}

/// How often applied changes are written to sled at most.
const SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Changes applied and not yet written to sled, and when sled was last written.
struct Unsaved {
    dirty: Dirty,
    saved_at: std::time::Instant,
    /// Entries applied since the last save (a save is due after `SAVE_ENTRIES` too).
    entries: u64,
}

/// Entries applied between two saves at most.
const SAVE_ENTRIES: u64 = 10_000;

impl StateMachine {
    /// Opens the state machine: the sled image, or the snapshot file if that is newer.
    pub fn open(
        db: &sled::Db,
        snapshots: Arc<SnapshotFile>,
        wal: Arc<WalHandle>,
        data_dir: PathBuf,
        max_producers: usize,
        durable: Arc<LocalDurable>,
    ) -> io::Result<StateMachine> {
        let tree = db.open_tree("state").map_err(io_err)?;
        let mut image = load_image(&tree)?;
        if let Some((meta, snap)) = snapshots.load()?
            && meta.last_log_id > image.applied
        {
            image = snap;
            store_image(&tree, &image)?;
        }
        let shared = Arc::new(SmShared {
            applied_seq: watch::Sender::new(image.next_seq),
            data_watermark: Arc::new(AtomicU64::new(image.log_start)),
            watermark_raised: tokio::sync::Notify::new(),
            image: RwLock::new(image),
            snapshots_installed: AtomicU64::new(0),
            applied_since_open: AtomicU64::new(0),
            duplicate_keys_applied: AtomicU64::new(0),
            recent: parking_lot::Mutex::new(std::collections::HashMap::new()),
        });
        Ok(StateMachine {
            shared,
            tree,
            snapshots,
            wal,
            data_dir,
            max_producers,
            durable,
            unsaved: parking_lot::Mutex::new(Unsaved {
                dirty: Dirty::default(),
                saved_at: std::time::Instant::now(),
                entries: 0,
            }),
        })
    }

    pub fn shared(&self) -> Arc<SmShared> {
        self.shared.clone()
    }

    /// Applies one committed entry to `img`: a write takes the sequence numbers
    /// `img.next_seq..`, the same function of the log prefix the WAL computed for its frame.
    /// Applied indexes never go back nor repeat (that would apply an entry twice and renumber
    /// every later record); within one `apply` call they advance by exactly one (checked
    /// there). Across calls openraft advances them by one too, but its conformance suite feeds
    /// the state machine made-up entries with gaps, so only the order is asserted here.
    fn apply_one(
        img: &mut Image,
        entry: &Entry,
        dirty: &mut Dirty,
        max_producers: usize,
    ) -> Response {
        if let Some(prev) = img.applied {
            assert!(
                entry.log_id.index > prev.index,
                "entry {} applied after entry {}",
                entry.log_id.index,
                prev.index
            );
        }
        img.applied = Some(entry.log_id);
        match &entry.payload {
            EntryPayload::Blank => Response::None,
            EntryPayload::Membership(m) => {
                img.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                dirty.membership = true;
                Response::None
            }
            EntryPayload::Normal(Request::Write { producer, records }) => {
                let part = WritePart {
                    producer: *producer,
                    records: records.len() as u32,
                };
                apply_write(
                    img,
                    entry.log_id.index,
                    &[part],
                    records,
                    dirty,
                    max_producers,
                )
            }
            EntryPayload::Normal(Request::Coalesced { parts, records }) => apply_write(
                img,
                entry.log_id.index,
                parts,
                records,
                dirty,
                max_producers,
            ),
            EntryPayload::Normal(Request::Checkpoint {
                name,
                tenant,
                sequence,
            }) => apply_checkpoint(img, name, tenant, *sequence, dirty),
            EntryPayload::Normal(Request::Truncate { before }) => apply_truncate(img, *before),
            EntryPayload::Normal(Request::SetQuota { tenant, clear, set }) => {
                let old = if *clear {
                    img.quotas.remove(tenant)
                } else {
                    img.quotas.get(tenant).copied()
                };
                let new = set.over(old.unwrap_or_default());
                if new.is_empty() {
                    img.quotas.remove(tenant);
                } else {
                    img.quotas.insert(tenant.clone(), new);
                }
                dirty.quotas.insert(tenant.clone());
                Response::QuotaSet
            }
        }
    }

    /// Debug builds: the sequence numbers this write got here are those the WAL gave the
    /// frame that stores it (both are the same function of the log prefix). Skipped when the
    /// frame cannot be read (truncated, or the WAL being swapped by a snapshot install).
    #[cfg(debug_assertions)]
    fn check_wal_agrees(&self, raft_index: u64, resp: &Response) {
        let Response::Written { first_seq, .. } = resp else {
            return;
        };
        let frame = self.wal.get().ok().and_then(|w| {
            let f = w.read_frames(raft_index + 1, raft_index + 2).ok()?;
            f.into_iter().next()
        });
        if let Some(f) = frame {
            debug_assert_eq!(
                f.first_seq, *first_seq,
                "the WAL and the state machine numbered entry {raft_index} differently"
            );
        }
    }

    /// Notes what one `apply` call changed and writes every unsaved change, with the applied
    /// id, as one atomic batch once a save is due (or `now`).
    fn persist(&self, dirty: Dirty, entries: u64, now: bool) -> io::Result<()> {
        let mut unsaved = self.unsaved.lock();
        unsaved.dirty.merge(dirty);
        unsaved.entries += entries;
        let due = unsaved.saved_at.elapsed() >= SAVE_INTERVAL || unsaved.entries >= SAVE_ENTRIES;
        if !(now || due) || (unsaved.entries == 0 && unsaved.dirty.is_empty()) {
            return Ok(());
        }
        let mut b = sled::Batch::default();
        put_changes(&mut b, &self.shared.image.read(), &unsaved.dirty)?;
        self.tree.apply_batch(b).map_err(io_err)?;
        unsaved.dirty = Dirty::default();
        unsaved.entries = 0;
        unsaved.saved_at = std::time::Instant::now();
        Ok(())
    }

    /// Replaces the whole state with `image` (snapshot install).
    fn replace(&self, image: Image) -> io::Result<()> {
        let mut unsaved = self.unsaved.lock();
        store_image(&self.tree, &image)?;
        unsaved.dirty = Dirty::default();
        unsaved.entries = 0;
        unsaved.saved_at = std::time::Instant::now();
        let next_seq = image.next_seq;
        self.shared
            .data_watermark
            .store(image.log_start, Ordering::Release);
        *self.shared.image.write() = image;
        self.shared.applied_seq.send_replace(next_seq);
        self.shared.watermark_raised.notify_one();
        Ok(())
    }
}

/// Client writes in one entry (one, or several coalesced): the next sequence numbers, tenant
/// counters, and each write's producer key at its piece of the range. The response covers the
/// whole entry; the leader splits it by the parts' record counts.
fn apply_write(
    img: &mut Image,
    index: u64,
    parts: &[WritePart],
    records: &[WriteRecord],
    dirty: &mut Dirty,
    max_producers: usize,
) -> Response {
    let first_seq = img.next_seq;
    img.next_seq += records.len() as u64;
    let timestamp = records.iter().map(|r| r.timestamp).max().unwrap_or(0);
    // One lookup per run of records of one tenant (a batch is usually one tenant's), and a
    // tenant's name copied only the first time it is seen.
    let mut start = 0;
    while let Some(first) = records.get(start) {
        let tenant = &*first.tenant_id;
        let run = records[start..]
            .iter()
            .take_while(|r| &*r.tenant_id == tenant)
            .count();
        let bytes: u64 = records[start..start + run]
            .iter()
            .map(|r| r.data.len() as u64)
            .sum();
        if !img.tenants.contains_key(tenant) {
            img.tenants
                .insert(tenant.to_owned(), TenantStats::default());
        }
        if let Some(t) = img.tenants.get_mut(tenant) {
            t.entries += run as u64;
            t.bytes += bytes;
            t.last_seq = first_seq + (start + run - 1) as u64;
        }
        if !dirty.tenants.contains(tenant) {
            dirty.tenants.insert(tenant.to_owned());
        }
        start += run;
    }
    let last_seq = img.next_seq.saturating_sub(1).max(first_seq);
    let mut part_first = first_seq;
    for part in parts {
        let part_last = (part_first + u64::from(part.records))
            .saturating_sub(1)
            .max(part_first);
        if let Some(key) = part.producer {
            record_key(img, index, key, (part_first, part_last), timestamp, dirty);
        }
        part_first += u64::from(part.records);
    }
    evict_producers(img, dirty, max_producers);
    Response::Written {
        first_seq,
        last_seq,
        timestamp,
        duplicate: false,
    }
}

/// Records a keyed write's result in the producer table.
fn record_key(
    img: &mut Image,
    index: u64,
    key: ProducerKey,
    (first_seq, last_seq): (SequenceNumber, SequenceNumber),
    timestamp: u64,
    dirty: &mut Dirty,
) {
    let duplicate = img.producers.get(&key.id).is_some_and(|p| key.seq <= p.seq);
    if duplicate {
        // The leader never proposes a known key (`core::producers`): this is a broken
        // invariant, counted and logged on every replica. Its records are in the log already;
        // the table keeps the first write.
        dirty.duplicate_keys += 1;
        tracing::error!(
            producer = key.id,
            seq = key.seq,
            index,
            "duplicate producer key applied (a key was proposed twice)"
        );
        return;
    }
    let state = ProducerState {
        seq: key.seq,
        first_seq,
        last_seq,
        timestamp,
        index,
    };
    img.producers.insert(key.id, state);
    dirty.producers.insert(key.id);
    dirty.keyed.push((key.id, state));
}

/// A named position; every replica refuses the same way: it must be a committed record.
fn apply_checkpoint(
    img: &mut Image,
    name: &str,
    tenant: &Option<String>,
    sequence: SequenceNumber,
    dirty: &mut Dirty,
) -> Response {
    if sequence >= img.next_seq {
        return Response::Rejected {
            reason: format!(
                "checkpoint {name:?} at {sequence}: the last committed sequence number is {}",
                img.next_seq - 1
            ),
        };
    }
    img.checkpoints.insert(
        name.to_owned(),
        Checkpoint {
            sequence,
            tenant: tenant.clone(),
        },
    );
    dirty.checkpoints.insert(name.to_owned());
    Response::Checkpoint { sequence }
}

/// A replicated prefix truncation: the log start moves up, never past the committed records.
fn apply_truncate(img: &mut Image, before: SequenceNumber) -> Response {
    if before > img.next_seq {
        return Response::Rejected {
            reason: format!(
                "cannot truncate before {before}: the last committed sequence number is {}",
                img.next_seq - 1
            ),
        };
    }
    img.log_start = img.log_start.max(before);
    Response::Truncated {
        log_start: img.log_start,
    }
}

fn evict_producers(img: &mut Image, dirty: &mut Dirty, max: usize) {
    while img.producers.len() > max {
        let Some((&oldest, _)) = img.producers.iter().min_by_key(|(_, p)| p.index) else {
            return;
        };
        img.producers.remove(&oldest);
        dirty.producers.remove(&oldest);
        dirty.evicted.push(oldest);
    }
}

fn load_image(tree: &sled::Tree) -> io::Result<Image> {
    let mut img = Image::default();
    let get = |k: &[u8]| tree.get(k).map_err(io_err);
    if let Some(v) = get(KEY_APPLIED)? {
        img.applied = dec(&v)?;
    }
    if let Some(v) = get(KEY_MEMBERSHIP)? {
        img.membership = dec(&v)?;
    }
    let u64_of = |v: &[u8]| {
        v.try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad u64 in state"))
    };
    if let Some(v) = get(KEY_NEXT_SEQ)? {
        img.next_seq = u64_of(&v)?;
    }
    if let Some(v) = get(KEY_LOG_START)? {
        img.log_start = u64_of(&v)?;
    }
    for kv in tree.scan_prefix(PREFIX_TENANT) {
        let (k, v) = kv.map_err(io_err)?;
        let name = String::from_utf8_lossy(&k[PREFIX_TENANT.len()..]).into_owned();
        img.tenants.insert(name, dec(&v)?);
    }
    for kv in tree.scan_prefix(PREFIX_PRODUCER) {
        let (k, v) = kv.map_err(io_err)?;
        let id = u64_of(&k[PREFIX_PRODUCER.len()..])?;
        img.producers.insert(id, dec(&v)?);
    }
    for kv in tree.scan_prefix(PREFIX_CHECKPOINT) {
        let (k, v) = kv.map_err(io_err)?;
        let name = String::from_utf8_lossy(&k[PREFIX_CHECKPOINT.len()..]).into_owned();
        img.checkpoints.insert(name, dec(&v)?);
    }
    for kv in tree.scan_prefix(PREFIX_QUOTA) {
        let (k, v) = kv.map_err(io_err)?;
        let name = String::from_utf8_lossy(&k[PREFIX_QUOTA.len()..]).into_owned();
        img.quotas.insert(name, dec(&v)?);
    }
    Ok(img)
}

/// Adds to `b` the keys `dirty` names, with their values in `img`, and the applied id.
fn put_changes(b: &mut sled::Batch, img: &Image, dirty: &Dirty) -> io::Result<()> {
    for t in &dirty.tenants {
        if let Some(s) = img.tenants.get(t) {
            b.insert(prefixed(PREFIX_TENANT, t.as_bytes()), enc(s)?);
        }
    }
    for id in &dirty.producers {
        if let Some(p) = img.producers.get(id) {
            b.insert(prefixed(PREFIX_PRODUCER, &id.to_be_bytes()), enc(p)?);
        }
    }
    for id in &dirty.evicted {
        // Evicted, unless it came back since (then it was written above).
        if !img.producers.contains_key(id) {
            b.remove(prefixed(PREFIX_PRODUCER, &id.to_be_bytes()));
        }
    }
    for c in &dirty.checkpoints {
        if let Some(cp) = img.checkpoints.get(c) {
            b.insert(prefixed(PREFIX_CHECKPOINT, c.as_bytes()), enc(cp)?);
        }
    }
    for t in &dirty.quotas {
        match img.quotas.get(t) {
            Some(q) => b.insert(prefixed(PREFIX_QUOTA, t.as_bytes()), enc(q)?),
            None => b.remove(prefixed(PREFIX_QUOTA, t.as_bytes())),
        }
    }
    if dirty.membership {
        b.insert(KEY_MEMBERSHIP, enc(&img.membership)?);
    }
    b.insert(KEY_NEXT_SEQ, &img.next_seq.to_be_bytes());
    b.insert(KEY_LOG_START, &img.log_start.to_be_bytes());
    b.insert(KEY_APPLIED, enc(&img.applied)?);
    Ok(())
}

/// Replaces the tree's content with `img` in one batch.
fn store_image(tree: &sled::Tree, img: &Image) -> io::Result<()> {
    let mut b = sled::Batch::default();
    for k in tree.iter().keys() {
        b.remove(k.map_err(io_err)?);
    }
    let everything = Dirty {
        tenants: img.tenants.keys().cloned().collect(),
        producers: img.producers.keys().copied().collect(),
        evicted: Vec::new(),
        checkpoints: img.checkpoints.keys().cloned().collect(),
        quotas: img.quotas.keys().cloned().collect(),
        membership: true,
        duplicate_keys: 0,
        keyed: Vec::new(),
    };
    // A later insert of a key overrides its removal above within the batch.
    put_changes(&mut b, img, &everything)?;
    tree.apply_batch(b).map_err(io_err)
}

impl Drop for StateMachine {
    /// Saves what was applied since the last save, so a clean stop re-applies nothing.
    fn drop(&mut self) {
        if let Err(e) = self.persist(Dirty::default(), 0, true) {
            tracing::warn!(error = %e, "saving the state machine to sled at shutdown");
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Ok(self.shared.read(|i| (i.applied, i.membership.clone())))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        let mut dirty = Dirty::default();
        let mut replies = Vec::new();
        let mut last_index = None;
        let mut applied = 0u64;
        while let Some((entry, responder)) = entries.try_next().await? {
            // Committed entries come in log order, without gaps.
            assert!(
                last_index.is_none_or(|l: u64| entry.log_id.index == l + 1),
                "entry {} applied after entry {last_index:?} in one batch",
                entry.log_id.index
            );
            last_index = Some(entry.log_id.index);
            tracing::trace!(target: WRITE_PATH, stage = "sm.apply", index = entry.log_id.index);
            // Never ahead of the local log's durable copy (see `durable`).
            self.durable.wait_for(entry.log_id.index).await?;
            self.shared
                .applied_since_open
                .fetch_add(1, Ordering::Relaxed);
            applied += 1;
            let resp = {
                let mut img = self.shared.image.write();
                Self::apply_one(&mut img, &entry, &mut dirty, self.max_producers)
            };
            #[cfg(debug_assertions)]
            self.check_wal_agrees(entry.log_id.index, &resp);
            if let Some(r) = responder {
                replies.push((r, resp));
            }
        }
        self.shared
            .duplicate_keys_applied
            .fetch_add(dirty.duplicate_keys, Ordering::Relaxed);
        let (next_seq, log_start) = self.shared.read(|i| (i.next_seq, i.log_start));
        let keyed = std::mem::take(&mut dirty.keyed);
        self.shared
            .remember(keyed, &dirty.evicted, self.max_producers);
        // sled I/O is buffered (no fsync) and runs at most every `SAVE_INTERVAL`, inline.
        self.persist(dirty, applied, false)?;
        let raised = self
            .shared
            .data_watermark
            .fetch_max(log_start, Ordering::AcqRel)
            < log_start;
        // Readable before any writer hears back: a client replaying its own acknowledged write
        // from this node sees it.
        self.shared.applied_seq.send_replace(next_seq);
        if raised {
            self.shared.watermark_raised.notify_one();
        }
        tracing::trace!(target: WRITE_PATH, stage = "sm.applied", index = last_index);
        for (r, resp) in replies {
            r.send(resp);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
            snapshots: self.snapshots.clone(),
            wal: self.wal.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotData,
    ) -> io::Result<()> {
        let (dir, wal, m) = (self.data_dir.clone(), self.wal.clone(), meta.clone());
        let image = tokio::task::spawn_blocking(move || snapshot::install(&dir, &wal, &m, data))
            .await
            .map_err(io::Error::other)??;
        tracing::info!(last_log_id = ?meta.last_log_id, "installed a snapshot with its segments");
        self.shared
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        if let Some(last) = meta.last_log_id {
            // The installed segments are durable up to the snapshot's last entry.
            self.durable.advance(last.index + 1);
        }
        self.replace(image)
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<openraft::alias::SnapshotOf<TypeConfig, SnapshotData>>> {
        let Some((meta, image)) = self.snapshots.load()? else {
            return Ok(None);
        };
        Ok(Some(openraft::Snapshot {
            snapshot: SnapshotData::local(image, self.wal.clone()),
            meta,
        }))
    }
}

/// Builds a snapshot: the current image, made durable in `SM_SNAPSHOT` before openraft may
/// purge the log below it.
pub struct SnapshotBuilder {
    shared: Arc<SmShared>,
    snapshots: Arc<SnapshotFile>,
    wal: Arc<WalHandle>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(
        &mut self,
    ) -> io::Result<openraft::alias::SnapshotOf<TypeConfig, SnapshotData>> {
        let image = self.shared.read(Image::clone);
        let meta = SnapshotMeta {
            last_log_id: image.applied,
            last_membership: image.membership.clone(),
        };
        self.snapshots.store(&meta, &image).await?;
        Ok(openraft::Snapshot {
            snapshot: SnapshotData::local(image, self.wal.clone()),
            meta,
        })
    }
}
