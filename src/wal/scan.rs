//! Scanning a segment file: the one reader of raw frames that checks them strictly, used by
//! recovery (the tail and sealed segments without an index), truncation (the cut segment's new
//! summary), repair (scrubs and staged rewrites) and `verify`.
//!
//! A scan reads the frames of a segment from its header on, until an end offset or the first
//! frame that does not decode, checks that log indexes follow each other and sequence numbers
//! never go back, and rebuilds the segment's summary and sparse index. What lies after the first
//! bad frame of the last segment is classified by [`classify_tail`]: zeros, a torn write, or
//! damage to data that was durable.

use std::io;

use super::config::WalConfig;
use super::error::{Corruption, Result, WalError};
use super::frame::{FRAME_HEADER_LEN, FRAME_MAGIC, FrameHeader, raw_body};
use super::segment::{
    ChunkReader, IndexEntry, SEGMENT_HEADER_LEN, SegmentHeader, SegmentMeta, maybe_index,
};
use super::types::SegmentId;
use crate::fs::{WalFile, read_full_at};

/// How a scan ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte up to the end was frames.
    Clean,
    /// The frame at `offset` failed to decode; nothing after it was read.
    Bad { offset: u64, kind: Corruption },
}

pub struct Scan {
    pub meta: SegmentMeta,
    pub index: Vec<IndexEntry>,
    pub records: u64,
    pub end: ScanEnd,
}

/// Options of [`scan`].
pub struct ScanOptions {
    pub max_body: u32,
    pub index_interval: u64,
    /// Also decode every record and check its entry checksum (for `verify`).
    pub check_records: bool,
}

/// Reads the frames of a segment from its header on, until `end` or the first frame that does
/// not decode, checks that log indexes follow each other and sequence numbers never go back,
/// and rebuilds the segment's summary and sparse index.
pub fn scan(
    file: &dyn WalFile,
    header: &SegmentHeader,
    end: u64,
    opts: &ScanOptions,
) -> io::Result<Scan> {
    let mut meta = SegmentMeta::empty(header);
    let mut index = Vec::new();
    let mut reader = ChunkReader::new(1 << 20);
    let mut scratch = Vec::new();
    let mut records = 0;
    let mut pos = SEGMENT_HEADER_LEN as u64;
    while pos < end {
        let frame = read_frame(&mut reader, file, pos, end, &meta, opts, &mut scratch)?;
        let h = match frame {
            Ok(h) => h,
            Err(kind) => {
                return Ok(Scan {
                    meta,
                    index,
                    records,
                    end: ScanEnd::Bad { offset: pos, kind },
                });
            }
        };
        maybe_index(
            &mut index,
            IndexEntry {
                index: h.index,
                first_seq: h.first_seq,
                offset: pos,
            },
            opts.index_interval,
        );
        records += u64::from(h.record_count);
        meta.add_frame(&h, pos);
        pos += h.frame_len();
    }
    Ok(Scan {
        meta,
        index,
        records,
        end: ScanEnd::Clean,
    })
}

/// Decodes and checks the frame at `pos`, which must follow the frames summed up in `meta`.
fn read_frame(
    reader: &mut ChunkReader,
    file: &dyn WalFile,
    pos: u64,
    end: u64,
    meta: &SegmentMeta,
    opts: &ScanOptions,
    scratch: &mut Vec<u8>,
) -> io::Result<Result<FrameHeader, Corruption>> {
    let head = reader.get(file, pos, FRAME_HEADER_LEN, end)?;
    let h = match FrameHeader::decode(head, opts.max_body) {
        Ok(h) => h,
        Err(kind) => return Ok(Err(kind)),
    };
    if h.index != meta.next_index {
        return Ok(Err(Corruption::IndexGap {
            expected: meta.next_index,
            found: h.index,
        }));
    }
    if h.first_seq < meta.next_seq {
        return Ok(Err(Corruption::SequenceGoesBack {
            expected_min: meta.next_seq,
            found: h.first_seq,
        }));
    }
    let frame = reader.get(file, pos, h.frame_len() as usize, end)?;
    if frame.len() as u64 != h.frame_len() {
        return Ok(Err(Corruption::Truncated));
    }
    let (head, body) = frame.split_at(FRAME_HEADER_LEN);
    if let Err(kind) = h.verify(head, body) {
        return Ok(Err(kind));
    }
    if opts.check_records
        && !h.is_control()
        && let Err(kind) = check_records(&h, body, scratch)
    {
        return Ok(Err(kind));
    }
    Ok(Ok(h))
}

fn check_records(h: &FrameHeader, body: &[u8], scratch: &mut Vec<u8>) -> Result<(), Corruption> {
    let raw = raw_body(h, body, scratch)?;
    let mut records = h.records(raw)?;
    for r in records.by_ref() {
        if !r?.checksum_ok() {
            return Err(Corruption::BadRecord("entry checksum mismatch"));
        }
    }
    if records.finished_cleanly() {
        Ok(())
    } else {
        Err(Corruption::BadRecord("bytes left after the last record"))
    }
}

/// What lies after the first bad frame of the last segment, at `bad_offset`.
#[derive(Debug, PartialEq, Eq)]
pub enum Tail {
    /// Only zeros: nothing to repair.
    Zeros,
    /// Unsynced garbage (a torn write) up to `dirty_end`: zero it.
    Torn { dirty_end: u64 },
    /// A later valid frame says the bytes at `bad_offset` had been fsync'd: they were damaged
    /// afterwards. This is corruption, not a torn write.
    Corrupted,
}

/// Classifies the bytes of `file` in `[bad_offset, file_len)`.
pub fn classify_tail(
    file: &dyn WalFile,
    bad_offset: u64,
    file_len: u64,
    max_body: u32,
) -> io::Result<Tail> {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK + FRAME_HEADER_LEN];
    let mut dirty_end = None;
    let mut pos = bad_offset;
    while pos < file_len {
        let n = read_full_at(file, &mut buf, pos)?;
        if n == 0 {
            break;
        }
        let scan_len = n.min(CHUNK);
        if let Some(last) = buf[..scan_len].iter().rposition(|&b| b != 0) {
            dirty_end = Some(pos + last as u64 + 1);
        }
        for at in 0..scan_len {
            if u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) == FRAME_MAGIC
                && pos + (at as u64) > bad_offset
                && claims_synced_past(file, pos + at as u64, bad_offset, max_body)?
            {
                return Ok(Tail::Corrupted);
            }
        }
        pos += scan_len as u64;
    }
    Ok(match dirty_end {
        None => Tail::Zeros,
        Some(dirty_end) => Tail::Torn { dirty_end },
    })
}

/// Whether a valid frame starts at `at` and says bytes past `bad_offset` were durable.
fn claims_synced_past(
    file: &dyn WalFile,
    at: u64,
    bad_offset: u64,
    max_body: u32,
) -> io::Result<bool> {
    let mut head = [0u8; FRAME_HEADER_LEN];
    if read_full_at(file, &mut head, at)? < FRAME_HEADER_LEN {
        return Ok(false);
    }
    let Ok(h) = FrameHeader::decode(&head, max_body) else {
        return Ok(false);
    };
    if u64::from(h.synced_upto) <= bad_offset {
        return Ok(false);
    }
    let mut body = vec![0u8; h.body_len as usize];
    if read_full_at(file, &mut body, at + FRAME_HEADER_LEN as u64)? < body.len() {
        return Ok(false);
    }
    Ok(h.verify(&head, &body).is_ok())
}

/// The options recovery, truncation and repair scan with (`check_records` off).
pub(crate) fn scan_options(cfg: &WalConfig) -> ScanOptions {
    ScanOptions {
        max_body: cfg.max_frame_bytes.as_u64().min(u64::from(u32::MAX)) as u32,
        index_interval: cfg.index_interval_bytes.as_u64(),
        check_records: false,
    }
}

/// Reads and checks a segment's header.
pub(crate) fn read_header(
    file: &dyn WalFile,
    id: SegmentId,
) -> Result<std::result::Result<SegmentHeader, Corruption>> {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    let n = read_full_at(file, &mut h, 0)?;
    Ok(SegmentHeader::decode(&h[..n]).and_then(|h| {
        if h.first_index == id {
            Ok(h)
        } else {
            Err(Corruption::BadSegmentHeader)
        }
    }))
}

/// Rebuilds a sealed segment's sparse index by scanning it (its `.idx` is gone or bad).
pub(crate) fn rescan_index(
    file: &dyn WalFile,
    id: SegmentId,
    meta: &SegmentMeta,
    opts: &ScanOptions,
) -> Result<Vec<IndexEntry>> {
    let header = read_header(file, id)?.map_err(|k| WalError::corrupted(id, 0, k))?;
    let scan = scan(file, &header, meta.data_len, opts)?;
    match scan.end {
        ScanEnd::Bad { offset, kind } => Err(WalError::corrupted(id, offset, kind)),
        ScanEnd::Clean => Ok(scan.index),
    }
}
