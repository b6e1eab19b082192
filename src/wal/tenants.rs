//! The per-tenant index (DESIGN §6): where each tenant's records lie in a segment, so a replay
//! of one tenant reads that tenant's records and not the rest of the log.
//!
//! The index lists *runs* per tenant: consecutive records of one tenant inside one frame, in
//! sequence order. The active segment's index is in memory ([`TenantIndex`]): the writer adds a
//! frame's runs as it encodes the frame, and opening the log rebuilds it from the active
//! segment. When a segment is sealed, its index is written beside it as `{first_index:020}.tix`:
//! ```text
//!  0 magic: u32 TENANT_INDEX_MAGIC | 4 version: u8 | 5 reserved: [u8; 3]
//!  8 the segment's summary: first_index, next_index, first_seq, next_seq, last_term,
//!    max_timestamp, data_len: u64 each (an index is used only for a segment summed up alike)
//! 64 tenants: u32 | 68 runs: u32 | 72 directory_len: u32
//! 76 crc: u32 (CRC-32 of bytes 0..76 and of the directory)
//! 80 directory: per tenant, sorted by name { name_len: u8 | name | first_run: u32 | runs: u32 }
//!    runs: per tenant in directory order, each tenant's in sequence order, RUN_LEN bytes each:
//!    { first_seq: u64 | frame: u32 | index: u32 | at: u32 | len: u32 | count: u32 | crc: u32 }
//! ```
//! `frame` is the frame's byte offset in the segment and `index` its log index minus the
//! segment's first; `at` and `len` place the run's records in the frame's raw body; the top bit
//! of `count` says the frame is compressed (its body is read whole and decompressed). Each run
//! carries its own CRC, so a reader reads only the runs it needs (found by a binary search on
//! the sequence number), and every record read through a run is checked by its entry checksum
//! and its tenant (the frame's CRC covers the whole frame, which such a read does not load).
//!
//! The `.tix` files are written by the indexer thread (`indexer`), off the writer: at a seal,
//! and for any sealed segment found without a valid one when the log is opened (written by an
//! older replog, or lost in a crash) or once it is repaired. Until its file is written a sealed
//! segment's index is served from memory, or, when there is none, a tenant replay scans it.
//! Reading through the index is `tenant_read`'s.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::error::{Corruption, Result, WalError};
use super::frame::{FRAME_HEADER_LEN, FrameHeader, raw_body};
use super::record::{RECORD_HEADER_LEN, Records};
use super::segment::{ChunkReader, SEGMENT_HEADER_LEN, SegmentMeta};
use super::types::{SegmentId, SequenceNumber};
use crate::fs::{FileSystem, WalFile, read_full_at};

pub const TENANT_INDEX_MAGIC: u32 = 0x5854_4C57; // "WLTX"
pub const TENANT_INDEX_VERSION: u8 = 1;
/// The segment id of no segment (the active tenant index between a seal and the next segment).
pub(crate) const NO_SEGMENT: SegmentId = SegmentId::MAX;
const HEADER_LEN: usize = 80;
/// Bytes of one run in a `.tix` file.
pub const RUN_LEN: usize = 32;
const COMPRESSED: u32 = 1 << 31;

pub fn tenant_index_file_name(first_index: u64) -> String {
    format!("{first_index:020}.tix")
}

/// Where the indexer writes a `.tix` before renaming it (opening deletes `.tmp` files).
pub fn tenant_index_tmp_name(first_index: u64) -> String {
    format!("{first_index:020}.tix.tmp")
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// Consecutive records of one tenant in one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub first_seq: SequenceNumber,
    /// Byte offset of the frame in its segment.
    pub frame: u32,
    /// The frame's log index minus the segment's first.
    pub index: u32,
    /// Where the run's records start in the frame's raw body, and their bytes.
    pub at: u32,
    pub len: u32,
    /// Records, with [`COMPRESSED`] set when the frame's body is compressed.
    count: u32,
}

impl Run {
    pub fn count(&self) -> u32 {
        self.count & !COMPRESSED
    }

    pub fn compressed(&self) -> bool {
        self.count & COMPRESSED != 0
    }

    pub fn next_seq(&self) -> SequenceNumber {
        self.first_seq + u64::from(self.count())
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        for v in [self.frame, self.index, self.at, self.len, self.count] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    fn decode(b: &[u8]) -> std::result::Result<Run, Corruption> {
        if b.len() < RUN_LEN {
            return Err(Corruption::Truncated);
        }
        let stored = u32_at(b, RUN_LEN - 4);
        let computed = crc32fast::hash(&b[..RUN_LEN - 4]);
        if stored != computed {
            return Err(Corruption::BadChecksum { stored, computed });
        }
        Ok(Run {
            first_seq: u64_at(b, 0),
            frame: u32_at(b, 8),
            index: u32_at(b, 12),
            at: u32_at(b, 16),
            len: u32_at(b, 20),
            count: u32_at(b, 24),
        })
    }
}

/// The runs of every tenant of one segment, in memory.
#[derive(Debug)]
pub(crate) struct TenantIndex {
    segment: SegmentId,
    tenants: HashMap<Box<str>, Vec<Run>>,
    runs: usize,
    /// Runs it may hold (`tenant_index_max_bytes`); past them it becomes unusable.
    max_runs: usize,
    /// False when the index could not be built: readers scan the segment instead, and sealing
    /// it writes no `.tix`.
    usable: bool,
}

impl TenantIndex {
    pub fn new(segment: SegmentId) -> Self {
        TenantIndex {
            segment,
            tenants: HashMap::new(),
            runs: 0,
            max_runs: usize::MAX,
            usable: true,
        }
    }

    /// An empty index that may take `max_bytes` of memory.
    pub fn bounded(segment: SegmentId, max_bytes: u64) -> Self {
        TenantIndex {
            max_runs: usize::try_from(max_bytes / RUN_LEN as u64).unwrap_or(usize::MAX),
            ..TenantIndex::new(segment)
        }
    }

    /// The index of a segment whose frames could not be read back (`why`), which readers do
    /// not use.
    pub fn unusable(segment: SegmentId, why: &WalError) -> Self {
        tracing::warn!(segment, error = %why, "could not build the WAL tenant index of the active segment; tenant replays will scan it");
        TenantIndex {
            usable: false,
            ..TenantIndex::new(segment)
        }
    }

    /// Gives the index up: its memory is freed, and readers scan the segment instead.
    fn give_up(&mut self) {
        tracing::warn!(
            segment = self.segment,
            runs = self.runs,
            "a segment's tenant index reached wal.tenant_index_max_bytes; tenant replays will scan this segment"
        );
        self.tenants = HashMap::new();
        self.runs = 0;
        self.usable = false;
    }

    pub fn usable(&self) -> bool {
        self.usable
    }

    /// The index of the active segment `segment`, whose frames lie below `end` of `file`, in
    /// at most `max_bytes`.
    pub fn build_active(
        file: &dyn WalFile,
        segment: SegmentId,
        end: u64,
        max_body: u32,
        max_bytes: u64,
    ) -> Self {
        Self::build(file, segment, end, max_body, max_bytes)
            .unwrap_or_else(|e| TenantIndex::unusable(segment, &e))
    }

    pub fn segment(&self) -> SegmentId {
        self.segment
    }

    /// Adds the records of frame `h`, stored at `offset` of the segment; `records` yields each
    /// record's tenant and encoded length in order, the first starting `at` bytes into the raw
    /// body.
    pub fn add_frame<'a, E>(
        &mut self,
        h: &FrameHeader,
        offset: u64,
        at: usize,
        records: impl Iterator<Item = std::result::Result<(&'a str, usize), E>>,
    ) -> std::result::Result<(), E> {
        if !self.usable {
            return Ok(());
        }
        let flag = if h.is_compressed() { COMPRESSED } else { 0 };
        let index = (h.index - self.segment) as u32;
        let (mut pos, mut seq) = (at as u32, h.first_seq);
        let mut cur: Option<(&'a str, Run)> = None;
        for r in records {
            let (tenant, len) = r?;
            let len = len as u32;
            match &mut cur {
                Some((t, run)) if *t == tenant => {
                    run.len += len;
                    run.count += 1;
                }
                _ => {
                    if let Some((t, run)) = cur.take() {
                        self.push(t, run);
                    }
                    let run = Run {
                        first_seq: seq,
                        frame: offset as u32,
                        index,
                        at: pos,
                        len,
                        count: 1 | flag,
                    };
                    cur = Some((tenant, run));
                }
            }
            pos += len;
            seq += 1;
        }
        if let Some((t, run)) = cur {
            self.push(t, run);
        }
        Ok(())
    }

    /// Adds the records of a frame read back from disk (`raw` is its raw body).
    fn add_raw(
        &mut self,
        h: &FrameHeader,
        offset: u64,
        raw: &[u8],
    ) -> std::result::Result<(), Corruption> {
        let (_, _, rest) = h.split_keys(raw, false)?;
        let at = raw.len() - rest.len();
        let records = Records::new(rest, h.first_seq, h.record_count).map(|r| {
            r.map(|e| {
                (
                    e.tenant_id,
                    RECORD_HEADER_LEN + e.tenant_id.len() + e.data.len(),
                )
            })
        });
        self.add_frame(h, offset, at, records)
    }

    fn push(&mut self, tenant: &str, run: Run) {
        if !self.usable {
            return;
        }
        if self.runs >= self.max_runs {
            self.give_up();
            return;
        }
        self.runs += 1;
        match self.tenants.get_mut(tenant) {
            Some(v) => v.push(run),
            None => {
                self.tenants.insert(tenant.into(), vec![run]);
            }
        }
    }

    /// Forgets the runs of frames `index` and later (a discarded write or a suffix truncation).
    pub fn truncate_from(&mut self, index: u64) {
        let Some(keep_below) = index.checked_sub(self.segment) else {
            self.tenants.clear();
            self.runs = 0;
            return;
        };
        let mut runs = 0;
        self.tenants.retain(|_, v| {
            while v.last().is_some_and(|r| u64::from(r.index) >= keep_below) {
                v.pop();
            }
            runs += v.len();
            !v.is_empty()
        });
        self.runs = runs;
    }

    /// Appends to `out` up to `max` runs of `tenant` holding records at or after `from`.
    pub fn runs_from(&self, tenant: &str, from: SequenceNumber, max: usize, out: &mut Vec<Run>) {
        if let Some(v) = self.tenants.get(tenant) {
            let first = v.partition_point(|r| r.next_seq() <= from);
            out.extend_from_slice(&v[first..(first + max).min(v.len())]);
        }
    }

    /// The `.tix` file of this index, for a segment summed up by `meta`.
    pub fn encode(&self, meta: &SegmentMeta) -> Vec<u8> {
        let mut names: Vec<(&str, &Vec<Run>)> =
            self.tenants.iter().map(|(t, v)| (&**t, v)).collect();
        names.sort_unstable_by_key(|(t, _)| *t);
        let mut directory = Vec::new();
        let mut first_run = 0u32;
        for (t, v) in &names {
            directory.push(t.len() as u8);
            directory.extend_from_slice(t.as_bytes());
            directory.extend_from_slice(&first_run.to_le_bytes());
            directory.extend_from_slice(&(v.len() as u32).to_le_bytes());
            first_run += v.len() as u32;
        }
        let mut out = Vec::with_capacity(HEADER_LEN + directory.len() + self.runs * RUN_LEN);
        out.extend_from_slice(&TENANT_INDEX_MAGIC.to_le_bytes());
        out.extend_from_slice(&[TENANT_INDEX_VERSION, 0, 0, 0]);
        for v in meta_fields(meta) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [names.len() as u32, first_run, directory.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&out);
        crc.update(&directory);
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(&directory);
        for (_, v) in &names {
            for r in v.iter() {
                r.encode(&mut out);
            }
        }
        out
    }

    /// The index of a segment's frames in `SEGMENT_HEADER_LEN..end`, read from its file.
    pub fn build(
        file: &dyn WalFile,
        segment: SegmentId,
        end: u64,
        max_body: u32,
        max_bytes: u64,
    ) -> Result<TenantIndex> {
        let mut idx = TenantIndex::bounded(segment, max_bytes);
        let mut reader = ChunkReader::new(1 << 20);
        let mut scratch = Vec::new();
        let mut pos = SEGMENT_HEADER_LEN as u64;
        let bad = |pos: u64, kind| WalError::corrupted(segment, pos, kind);
        while pos < end {
            let head = reader.get(file, pos, FRAME_HEADER_LEN, end)?;
            let h = FrameHeader::decode(head, max_body).map_err(|k| bad(pos, k))?;
            let frame = reader.get(file, pos, h.frame_len() as usize, end)?;
            if frame.len() as u64 != h.frame_len() {
                return Err(bad(pos, Corruption::Truncated));
            }
            let (head, stored) = frame.split_at(FRAME_HEADER_LEN);
            h.verify(head, stored).map_err(|k| bad(pos, k))?;
            if !h.is_control() {
                let raw = raw_body(&h, stored, &mut scratch).map_err(|k| bad(pos, k))?;
                idx.add_raw(&h, pos, raw).map_err(|k| bad(pos, k))?;
                if !idx.usable {
                    break;
                }
            }
            pos += h.frame_len();
        }
        Ok(idx)
    }
}

/// The directory of a sealed segment's `.tix` file, with the file open to read runs from.
pub(crate) struct TixDir {
    file: Arc<dyn WalFile>,
    tenants: HashMap<Box<str>, (u32, u32)>,
    runs_at: u64,
}

impl TixDir {
    /// The directory of the `.tix` at `path` and the bytes read for it, if the file exists, is
    /// intact and describes the segment summed up by `meta`; `None` otherwise.
    pub fn load(
        fs: &dyn FileSystem,
        path: &Path,
        meta: &SegmentMeta,
    ) -> io::Result<Option<(TixDir, u64)>> {
        let file = match fs.open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut head = [0u8; HEADER_LEN];
        if read_full_at(&*file, &mut head, 0)? != HEADER_LEN
            || u32_at(&head, 0) != TENANT_INDEX_MAGIC
            || head[4] != TENANT_INDEX_VERSION
            || (0..7)
                .map(|i| u64_at(&head, 8 + 8 * i))
                .ne(meta_fields(meta))
        {
            return Ok(None);
        }
        let (count, runs, dir_len) = (u32_at(&head, 64), u32_at(&head, 68), u32_at(&head, 72));
        let file_len = file.len()?;
        let runs_at = (HEADER_LEN as u64) + u64::from(dir_len);
        if runs_at + u64::from(runs) * RUN_LEN as u64 != file_len {
            return Ok(None);
        }
        let mut dir = vec![0u8; dir_len as usize];
        if read_full_at(&*file, &mut dir, HEADER_LEN as u64)? != dir.len() {
            return Ok(None);
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[..76]);
        crc.update(&dir);
        if crc.finalize() != u32_at(&head, 76) {
            return Ok(None);
        }
        let mut tenants = HashMap::with_capacity(count as usize);
        let mut at = 0;
        for _ in 0..count {
            let Some(&len) = dir.get(at) else {
                return Ok(None);
            };
            let end = at + 1 + len as usize + 8;
            if end > dir.len() {
                return Ok(None);
            }
            let Ok(name) = std::str::from_utf8(&dir[at + 1..at + 1 + len as usize]) else {
                return Ok(None);
            };
            let (first, n) = (u32_at(&dir, end - 8), u32_at(&dir, end - 4));
            if u64::from(first) + u64::from(n) > u64::from(runs) {
                return Ok(None);
            }
            tenants.insert(name.into(), (first, n));
            at = end;
        }
        let read = (HEADER_LEN + dir.len()) as u64;
        Ok(Some((
            TixDir {
                file,
                tenants,
                runs_at,
            },
            read,
        )))
    }

    /// Appends to `out` up to `max` runs of `tenant` holding records at or after `from`, read
    /// from the file (a binary search, then one read). Returns the bytes read.
    pub fn runs_from(
        &self,
        tenant: &str,
        from: SequenceNumber,
        max: usize,
        out: &mut Vec<Run>,
    ) -> Result<u64> {
        let Some(&(first, n)) = self.tenants.get(tenant) else {
            return Ok(0);
        };
        let bad = |k| WalError::corrupted(0, self.runs_at, k);
        let at = |i: u32| self.runs_at + u64::from(first + i) * RUN_LEN as u64;
        let mut one = [0u8; RUN_LEN];
        let (mut lo, mut hi, mut read) = (0u32, n, 0u64);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            read_full_at(&*self.file, &mut one, at(mid))?;
            read += RUN_LEN as u64;
            if Run::decode(&one).map_err(bad)?.next_seq() <= from {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let take = (n - lo).min(max as u32) as usize;
        if take > 0 {
            let mut buf = vec![0u8; take * RUN_LEN];
            if read_full_at(&*self.file, &mut buf, at(lo))? != buf.len() {
                return Err(bad(Corruption::Truncated));
            }
            read += buf.len() as u64;
            for b in buf.chunks_exact(RUN_LEN) {
                out.push(Run::decode(b).map_err(bad)?);
            }
        }
        Ok(read)
    }
}

/// The fields of a segment's summary a `.tix` file repeats.
fn meta_fields(m: &SegmentMeta) -> [u64; 7] {
    [
        m.first_index,
        m.next_index,
        m.first_seq,
        m.next_seq,
        m.last_term,
        m.max_timestamp,
        m.data_len,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::MemFs;
    use crate::wal::segment::SegmentHeader;

    fn header(index: u64, first_seq: u64, count: u32) -> FrameHeader {
        FrameHeader {
            flags: 0,
            body_len: 0,
            raw_len: 0,
            record_count: count,
            synced_upto: 0,
            index,
            term: 0,
            first_seq,
            timestamp: 0,
            crc: 0,
        }
    }

    fn add(idx: &mut TenantIndex, h: &FrameHeader, offset: u64, tenants: &[&'static str]) {
        let recs = tenants.iter().map(|t| Ok::<_, ()>((*t, 20)));
        idx.add_frame(h, offset, 4, recs).unwrap();
    }

    #[test]
    fn runs_join_neighbours_of_one_tenant_and_truncate_by_frame() {
        let mut idx = TenantIndex::new(10);
        add(&mut idx, &header(10, 1, 4), 40, &["a", "a", "b", "a"]);
        add(&mut idx, &header(11, 5, 2), 200, &["b", "b"]);
        let mut a = Vec::new();
        idx.runs_from("a", 1, 10, &mut a);
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].first_seq, a[0].count(), a[0].at, a[0].len),
            (1, 2, 4, 40)
        );
        assert_eq!((a[1].first_seq, a[1].count(), a[1].at), (4, 1, 64));
        let mut b = Vec::new();
        idx.runs_from("b", 4, 10, &mut b);
        assert_eq!(b.len(), 1, "runs ending before the position are skipped");
        assert_eq!((b[0].first_seq, b[0].index, b[0].frame), (5, 1, 200));
        idx.truncate_from(11);
        b.clear();
        idx.runs_from("b", 1, 10, &mut b);
        assert_eq!(b.len(), 1);
        assert_eq!(idx.runs, 3);
    }

    #[test]
    fn an_index_past_its_memory_bound_is_given_up() {
        let mut idx = TenantIndex::bounded(10, 2 * RUN_LEN as u64);
        add(&mut idx, &header(10, 1, 2), 40, &["a", "b"]);
        assert!(idx.usable());
        add(&mut idx, &header(11, 3, 1), 200, &["c"]);
        assert!(!idx.usable(), "a third run is over the bound");
        assert_eq!(idx.runs, 0, "its memory is freed");
        add(&mut idx, &header(12, 4, 1), 300, &["a"]);
        assert!(!idx.usable() && idx.tenants.is_empty());
    }

    #[test]
    fn tix_files_round_trip_and_refuse_damage_or_another_segment() {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/w")).unwrap();
        let mut idx = TenantIndex::new(1);
        add(&mut idx, &header(1, 1, 3), 40, &["x", "y", "x"]);
        add(&mut idx, &header(2, 4, 1), 200, &["y"]);
        let mut meta = SegmentMeta::empty(&SegmentHeader {
            first_index: 1,
            first_seq: 1,
            created_us: 0,
        });
        (meta.next_index, meta.next_seq, meta.data_len) = (3, 5, 300);
        let path = Path::new("/w/x.tix");
        crate::fs::write_file_atomic(&fs, path, &idx.encode(&meta)).unwrap();
        let (dir, _) = TixDir::load(&fs, path, &meta).unwrap().unwrap();
        for (t, from, want) in [
            ("x", 1, 2),
            ("x", 2, 1),
            ("x", 4, 0),
            ("y", 1, 2),
            ("z", 1, 0),
        ] {
            let (mut mem, mut disk) = (Vec::new(), Vec::new());
            idx.runs_from(t, from, 10, &mut mem);
            dir.runs_from(t, from, 10, &mut disk).unwrap();
            assert_eq!((mem.len(), &mem), (want, &disk), "tenant {t} from {from}");
        }
        // Another segment's summary, or a flipped byte in the directory: not this index.
        let other = SegmentMeta {
            data_len: 301,
            ..meta
        };
        assert!(TixDir::load(&fs, path, &other).unwrap().is_none());
        let mut bytes = fs.contents(path).unwrap();
        bytes[HEADER_LEN + 1] ^= 1;
        fs.set_contents(path, bytes.clone()).unwrap();
        assert!(TixDir::load(&fs, path, &meta).unwrap().is_none());
        // A flipped byte in a run: the directory loads, the run does not.
        bytes[HEADER_LEN + 1] ^= 1;
        let last = bytes.len() - 10;
        bytes[last] ^= 1;
        fs.set_contents(path, bytes).unwrap();
        let (dir, _) = TixDir::load(&fs, path, &meta).unwrap().unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            dir.runs_from("y", 1, 10, &mut out),
            Err(WalError::CorruptedEntry { .. })
        ));
    }
}
