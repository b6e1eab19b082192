//! Segment files and their persisted indexes: names, headers, summaries, sparse indexes, and a
//! read-ahead buffer. Scanning a segment's frames is [`crate::wal::scan`]'s.
//!
//! A segment is named `{first_index:020}.seg` and starts with a 40-byte header:
//! ```text
//!  0 magic: u32        SEGMENT_MAGIC
//!  4 version: u8       SEGMENT_VERSION
//!  5 reserved: [u8;3]  zero
//!  8 first_index: u64  log index of the segment's first frame (== the name)
//! 16 first_seq: u64    sequence number the segment's first record gets
//! 24 created_us: u64   creation time, µs since the Unix epoch
//! 32 reserved: u32     zero
//! 36 crc: u32          CRC-32 of bytes 0..36
//! ```
//! then frames back to back ([`crate::wal::frame`]), then zeros up to the preallocated size.
//!
//! When a segment is sealed, its sparse index is written beside it as `{first_index:020}.idx`:
//! ```text
//!  0 magic: u32 INDEX_MAGIC | 4 version: u8 | 5 reserved: [u8;3]
//!  8 first_index: u64 | 16 next_index: u64 | 24 first_seq: u64 | 32 next_seq: u64
//! 40 last_term: u64 | 48 max_timestamp: u64 | 56 data_len: u64 | 64 entry_count: u32 | 68 reserved: u32
//! 72 entries: entry_count x { index: u64 | first_seq: u64 | offset: u64 }
//!    crc: u32 (CRC-32 of everything before it)
//! ```
//! so reopening reads a small file per sealed segment instead of the segment itself.

use std::io;

use super::error::Corruption;
use super::frame::FrameHeader;
use super::types::SegmentId;
use crate::fs::{WalFile, read_full_at};

pub const SEGMENT_HEADER_LEN: usize = 40;
pub const SEGMENT_MAGIC: u32 = 0x5347_4C57; // "WLGS"
pub const SEGMENT_VERSION: u8 = 1;
pub const INDEX_MAGIC: u32 = 0x5849_4C57; // "WLIX"
pub const INDEX_VERSION: u8 = 1;
const INDEX_HEADER_LEN: usize = 72;
const INDEX_ENTRY_LEN: usize = 24;

pub fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:020}.seg")
}

pub fn index_file_name(first_index: u64) -> String {
    format!("{first_index:020}.idx")
}

/// `Some(first_index)` for a name made by [`segment_file_name`] (or the `.idx` form).
pub fn parse_file_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok())?
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub first_index: u64,
    pub first_seq: u64,
    pub created_us: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        h[0..4].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
        h[4] = SEGMENT_VERSION;
        h[8..16].copy_from_slice(&self.first_index.to_le_bytes());
        h[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        h[24..32].copy_from_slice(&self.created_us.to_le_bytes());
        let crc = crc32fast::hash(&h[..36]);
        h[36..40].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub fn decode(h: &[u8]) -> Result<SegmentHeader, Corruption> {
        if h.len() < SEGMENT_HEADER_LEN {
            return Err(Corruption::Truncated);
        }
        if u32_at(h, 0) != SEGMENT_MAGIC || crc32fast::hash(&h[..36]) != u32_at(h, 36) {
            return Err(Corruption::BadSegmentHeader);
        }
        if h[4] != SEGMENT_VERSION {
            return Err(Corruption::UnsupportedVersion(h[4]));
        }
        Ok(SegmentHeader {
            first_index: u64_at(h, 8),
            first_seq: u64_at(h, 16),
            created_us: u64_at(h, 24),
        })
    }
}

/// One entry of a sparse index: where the frame with this index starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub index: u64,
    pub first_seq: u64,
    pub offset: u64,
}

/// What a segment holds, kept in memory for every segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentMeta {
    pub first_index: u64,
    /// One past the last frame's index (`== first_index` when empty).
    pub next_index: u64,
    pub first_seq: u64,
    /// One past the last record's sequence number.
    pub next_seq: u64,
    pub last_term: u64,
    pub max_timestamp: u64,
    /// Bytes used: header plus frames.
    pub data_len: u64,
}

impl SegmentMeta {
    pub fn empty(h: &SegmentHeader) -> Self {
        SegmentMeta {
            first_index: h.first_index,
            next_index: h.first_index,
            first_seq: h.first_seq,
            next_seq: h.first_seq,
            last_term: 0,
            max_timestamp: 0,
            data_len: SEGMENT_HEADER_LEN as u64,
        }
    }

    pub fn id(&self) -> SegmentId {
        self.first_index
    }

    pub fn is_empty(&self) -> bool {
        self.next_index == self.first_index
    }

    /// Accounts for a frame appended at `offset`; returns whether the sparse index wants an entry
    /// for it given the offset of the last indexed frame.
    pub fn add_frame(&mut self, h: &FrameHeader, offset: u64) {
        self.next_index = h.index + 1;
        self.next_seq = h.next_seq();
        self.last_term = h.term;
        // Only records age: a control frame (e.g. a Raft membership change) must not keep a
        // segment of expired records alive.
        if !h.is_control() {
            self.max_timestamp = self.max_timestamp.max(h.timestamp);
        }
        self.data_len = offset + h.frame_len();
    }
}

/// Appends `entry` to a sparse index if it is the first or `interval` bytes past the last one.
pub fn maybe_index(index: &mut Vec<IndexEntry>, entry: IndexEntry, interval: u64) {
    match index.last() {
        Some(last) if entry.offset < last.offset + interval => {}
        _ => index.push(entry),
    }
}

/// The entry to start a scan from for the frame with log index `target`.
pub fn seek_by_index(index: &[IndexEntry], target: u64) -> Option<IndexEntry> {
    let i = index.partition_point(|e| e.index <= target);
    i.checked_sub(1).map(|i| index[i])
}

/// The entry to start a scan from for the record with sequence number `target`.
pub fn seek_by_seq(index: &[IndexEntry], target: u64) -> Option<IndexEntry> {
    let i = index.partition_point(|e| e.first_seq <= target);
    i.checked_sub(1).map(|i| index[i])
}

pub fn encode_index_file(meta: &SegmentMeta, entries: &[IndexEntry]) -> Vec<u8> {
    let mut b = Vec::with_capacity(INDEX_HEADER_LEN + entries.len() * INDEX_ENTRY_LEN + 4);
    b.extend_from_slice(&INDEX_MAGIC.to_le_bytes());
    b.extend_from_slice(&[INDEX_VERSION, 0, 0, 0]);
    for v in [
        meta.first_index,
        meta.next_index,
        meta.first_seq,
        meta.next_seq,
        meta.last_term,
        meta.max_timestamp,
        meta.data_len,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    debug_assert_eq!(b.len(), INDEX_HEADER_LEN);
    for e in entries {
        for v in [e.index, e.first_seq, e.offset] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

pub fn decode_index_file(
    b: &[u8],
    first_index: u64,
) -> Result<(SegmentMeta, Vec<IndexEntry>), Corruption> {
    if b.len() < INDEX_HEADER_LEN + 4 || u32_at(b, 0) != INDEX_MAGIC || b[4] != INDEX_VERSION {
        return Err(Corruption::BadIndexFile);
    }
    let body = &b[..b.len() - 4];
    if crc32fast::hash(body) != u32_at(b, b.len() - 4) {
        return Err(Corruption::BadIndexFile);
    }
    let meta = SegmentMeta {
        first_index: u64_at(b, 8),
        next_index: u64_at(b, 16),
        first_seq: u64_at(b, 24),
        next_seq: u64_at(b, 32),
        last_term: u64_at(b, 40),
        max_timestamp: u64_at(b, 48),
        data_len: u64_at(b, 56),
    };
    let count = u32_at(b, 64) as usize;
    if meta.first_index != first_index || body.len() != INDEX_HEADER_LEN + count * INDEX_ENTRY_LEN {
        return Err(Corruption::BadIndexFile);
    }
    let entries = body[INDEX_HEADER_LEN..]
        .chunks_exact(INDEX_ENTRY_LEN)
        .map(|c| IndexEntry {
            index: u64_at(c, 0),
            first_seq: u64_at(c, 8),
            offset: u64_at(c, 16),
        })
        .collect();
    Ok((meta, entries))
}

/// A read-ahead buffer over a file, so sequential frame reads cost one `pread` per chunk.
pub struct ChunkReader {
    buf: Vec<u8>,
    start: u64,
    len: usize,
    chunk: usize,
}

impl ChunkReader {
    pub fn new(chunk: usize) -> Self {
        ChunkReader {
            buf: Vec::new(),
            start: 0,
            len: 0,
            chunk,
        }
    }

    /// Bytes `[offset, offset + len)` of `file`, never past `end`; fewer if the file is shorter.
    pub fn get(
        &mut self,
        file: &dyn WalFile,
        offset: u64,
        len: usize,
        end: u64,
    ) -> io::Result<&[u8]> {
        let have = offset >= self.start && offset + len as u64 <= self.start + self.len as u64;
        if !have {
            let want = (len.max(self.chunk) as u64).min(end.saturating_sub(offset)) as usize;
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            self.len = read_full_at(file, &mut self.buf[..want], offset)?;
            self.start = offset;
        }
        let from = (offset - self.start) as usize;
        let to = (from + len).min(self.len);
        Ok(&self.buf[from.min(to)..to])
    }

    pub fn invalidate(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_file_name(&segment_file_name(42), ".seg"), Some(42));
        assert_eq!(parse_file_name(&index_file_name(7), ".idx"), Some(7));
        assert_eq!(parse_file_name("42.seg", ".seg"), None);
        assert_eq!(parse_file_name("0000000000000000004x.seg", ".seg"), None);
    }

    #[test]
    fn segment_header_round_trip_and_corruption() {
        let h = SegmentHeader {
            first_index: 5,
            first_seq: 9,
            created_us: 77,
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(h));
        for i in 0..bytes.len() {
            let mut bad = bytes;
            bad[i] ^= 0x10;
            assert!(SegmentHeader::decode(&bad).is_err(), "byte {i}");
        }
        assert_eq!(
            SegmentHeader::decode(&bytes[..10]),
            Err(Corruption::Truncated)
        );
    }

    #[test]
    fn index_file_round_trip_and_corruption() {
        let meta = SegmentMeta {
            first_index: 3,
            next_index: 10,
            first_seq: 4,
            next_seq: 50,
            last_term: 2,
            max_timestamp: 9,
            data_len: 999,
        };
        let entries = vec![
            IndexEntry {
                index: 3,
                first_seq: 4,
                offset: 40,
            },
            IndexEntry {
                index: 8,
                first_seq: 30,
                offset: 600,
            },
        ];
        let bytes = encode_index_file(&meta, &entries);
        assert_eq!(decode_index_file(&bytes, 3), Ok((meta, entries.clone())));
        assert_eq!(decode_index_file(&bytes, 4), Err(Corruption::BadIndexFile));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(decode_index_file(&bad, 3).is_err(), "byte {i}");
        }
        assert!(decode_index_file(&bytes[..bytes.len() - 1], 3).is_err());
    }

    #[test]
    fn sparse_index_seeks() {
        let mut idx = Vec::new();
        for (i, off) in [(1, 40), (2, 100), (3, 5000), (4, 5100), (5, 9200)] {
            maybe_index(
                &mut idx,
                IndexEntry {
                    index: i,
                    first_seq: i * 10,
                    offset: off,
                },
                4096,
            );
        }
        assert_eq!(
            idx.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![1, 3, 5]
        );
        assert_eq!(seek_by_index(&idx, 4).unwrap().index, 3);
        assert_eq!(seek_by_index(&idx, 0), None);
        assert_eq!(seek_by_seq(&idx, 49).unwrap().index, 3);
        assert_eq!(seek_by_seq(&idx, 50).unwrap().index, 5);
    }
}
