//! Reading: a [`Cursor`] walks frames across segments from a log index or a sequence number,
//! seeking with the sparse indexes and reading ahead in large chunks; [`EntryIter`] turns frames
//! into owned entries and can follow the tail.
//!
//! Readers never hold a lock while reading a file: they copy what they need from the segment
//! table (a file handle, a length) under a short read lock, then `pread`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::error::{Corruption, Result, WalError};
use super::frame::{FRAME_HEADER_LEN, FrameHeader, raw_body};
use super::segment::{self, ChunkReader, IndexEntry, SEGMENT_HEADER_LEN};
use super::state::Shared;
use super::types::{Entry, SegmentId, SequenceNumber};
use crate::fs::WalFile;

/// How far a cursor may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bound {
    /// Up to the last frame written (for a Raft log reader, which may read unflushed entries).
    Written,
    /// Up to the last frame acknowledged per the sync policy (for replay).
    Acked,
}

/// Bytes read ahead per `pread`.
const READ_AHEAD: usize = 256 << 10;

/// A frame as a cursor returns it: borrowed from the cursor's buffers.
pub(crate) struct FrameRef<'a> {
    pub header: FrameHeader,
    /// The raw (decompressed) body.
    pub body: &'a [u8],
    pub segment: SegmentId,
    /// Byte offset of the frame in its segment.
    pub offset: u64,
}

impl FrameRef<'_> {
    pub fn corrupted(&self, kind: Corruption) -> WalError {
        WalError::corrupted(self.segment, self.offset, kind)
    }
}

pub(crate) struct Cursor {
    sh: Arc<Shared>,
    bound: Bound,
    segment: SegmentId,
    file: Arc<dyn WalFile>,
    /// Bytes of the current segment known to hold frames.
    seg_end: u64,
    /// One past the current segment's last frame index known.
    seg_next_index: u64,
    pos: u64,
    next_index: u64,
    end_index: u64,
    generation: u64,
    frame_pos: u64,
    reader: ChunkReader,
    scratch: Vec<u8>,
}

enum Target {
    Index(u64),
    Seq(SequenceNumber),
}

impl Cursor {
    /// A cursor whose first frame is at or before frame `index`.
    pub fn at_index(sh: Arc<Shared>, index: u64, bound: Bound) -> Result<Cursor> {
        Self::seek(sh, Target::Index(index), bound)
    }

    /// A cursor whose first frame is at or before the frame holding record `seq`.
    pub fn at_seq(sh: Arc<Shared>, seq: SequenceNumber, bound: Bound) -> Result<Cursor> {
        Self::seek(sh, Target::Seq(seq), bound)
    }

    fn seek(sh: Arc<Shared>, target: Target, bound: Bound) -> Result<Cursor> {
        let (segment, file, meta, sealed, active_entry, generation, end_index) = {
            let st = sh.state.read();
            match target {
                Target::Index(i) if i < st.start.index => {
                    return Err(WalError::BeforeLogStart {
                        requested: i,
                        log_start: st.start.index,
                    });
                }
                Target::Seq(s) if s < st.start.seq => {
                    return Err(WalError::BeforeLogStart {
                        requested: s,
                        log_start: st.start.seq,
                    });
                }
                _ => {}
            }
            let found = match target {
                Target::Index(i) => st.segments.range(..=i).next_back().map(|(_, s)| s),
                Target::Seq(q) => st.segments.values().rev().find(|s| s.meta.first_seq <= q),
            };
            let s = found
                .or_else(|| st.segments.values().next())
                .ok_or(WalError::SegmentNotFound(st.start.index))?;
            let entry = match target {
                Target::Index(i) => segment::seek_by_index(&s.index, i),
                Target::Seq(q) => segment::seek_by_seq(&s.index, q),
            };
            let end_index = match bound {
                Bound::Written => st.next_index,
                Bound::Acked => sh.acked_index.load(Ordering::Acquire).min(st.next_index),
            };
            (
                s.meta.id(),
                (s.path.clone(), s.file.clone()),
                s.meta,
                s.sealed,
                entry,
                st.generation,
                end_index,
            )
        };
        let file = sh.segment_file(segment, &file.0, file.1.as_ref())?;
        let entry = if sealed {
            let idx = sh.sealed_index(segment, &*file, &meta)?;
            match target {
                Target::Index(i) => segment::seek_by_index(&idx, i),
                Target::Seq(q) => segment::seek_by_seq(&idx, q),
            }
        } else {
            active_entry
        };
        let start = entry.unwrap_or(IndexEntry {
            index: meta.first_index,
            first_seq: meta.first_seq,
            offset: SEGMENT_HEADER_LEN as u64,
        });
        Ok(Cursor {
            sh,
            bound,
            segment,
            file,
            seg_end: meta.data_len,
            seg_next_index: meta.next_index,
            pos: start.offset,
            next_index: start.index,
            end_index,
            generation,
            frame_pos: start.offset,
            reader: ChunkReader::new(READ_AHEAD),
            scratch: Vec::new(),
        })
    }

    /// Re-reads the log's end, so a cursor that caught up sees frames appended since.
    pub fn refresh(&mut self) {
        let st = self.sh.state.read();
        self.end_index = match self.bound {
            Bound::Written => st.next_index,
            Bound::Acked => self
                .sh
                .acked_index
                .load(Ordering::Acquire)
                .min(st.next_index),
        };
        if let Some(s) = st.segments.get(&self.segment) {
            self.seg_end = s.meta.data_len;
            self.seg_next_index = s.meta.next_index;
        }
    }

    /// The next frame's header and raw (decompressed) body, or `None` at the bound.
    pub fn next_frame(&mut self) -> Result<Option<FrameRef<'_>>> {
        let Some(h) = self.advance()? else {
            return Ok(None);
        };
        // Split borrows: the stored body lives in `reader`, a decompressed one in `scratch`.
        let len = h.frame_len() as usize;
        let frame = self
            .reader
            .get(&*self.file, self.frame_pos, len, self.seg_end)?;
        match raw_body(&h, &frame[FRAME_HEADER_LEN..], &mut self.scratch) {
            Ok(body) => Ok(Some(FrameRef {
                header: h,
                body,
                segment: self.segment,
                offset: self.frame_pos,
            })),
            Err(kind) => Err(WalError::corrupted(self.segment, self.frame_pos, kind)),
        }
    }

    /// The next frame as stored (header and body, compressed or not), checked against its CRC,
    /// or `None` at the bound.
    pub fn next_stored(&mut self) -> Result<Option<(FrameHeader, &[u8])>> {
        let Some(h) = self.advance()? else {
            return Ok(None);
        };
        let len = h.frame_len() as usize;
        let frame = self
            .reader
            .get(&*self.file, self.frame_pos, len, self.seg_end)?;
        Ok(Some((h, frame)))
    }

    /// Reads and checks the next frame (its CRC over the stored bytes) and moves past it; its
    /// bytes stay in `reader` at `frame_pos`.
    fn advance(&mut self) -> Result<Option<FrameHeader>> {
        loop {
            if self.next_index >= self.end_index {
                return Ok(None);
            }
            if self.next_index < self.seg_next_index && self.pos < self.seg_end {
                break;
            }
            if !self.advance_segment()? {
                return Ok(None);
            }
        }
        let head = self
            .reader
            .get(&*self.file, self.pos, FRAME_HEADER_LEN, self.seg_end)?;
        let h = match FrameHeader::decode(head, self.sh.max_body()) {
            Ok(h) if h.index == self.next_index => h,
            Ok(h) => {
                return Err(self.corrupt(Corruption::IndexGap {
                    expected: self.next_index,
                    found: h.index,
                }));
            }
            Err(kind) => return Err(self.corrupt(kind)),
        };
        let len = h.frame_len() as usize;
        let frame = self.reader.get(&*self.file, self.pos, len, self.seg_end)?;
        if frame.len() != len {
            return Err(self.corrupt(Corruption::Truncated));
        }
        let (head, stored) = frame.split_at(FRAME_HEADER_LEN);
        if let Err(kind) = h.verify(head, stored) {
            return Err(self.corrupt(kind));
        }
        self.frame_pos = self.pos;
        self.pos += len as u64;
        self.next_index += 1;
        Ok(Some(h))
    }

    /// Moves to the segment holding `next_index`; false if there is none (yet).
    fn advance_segment(&mut self) -> Result<bool> {
        let st = self.sh.state.read();
        if st.generation != self.generation {
            return Err(WalError::TruncatedWhileReading {
                index: self.next_index,
            });
        }
        if let Some(cur) = st.segments.get(&self.segment)
            && cur.meta.next_index > self.seg_next_index
        {
            // The active segment grew since we looked.
            self.seg_end = cur.meta.data_len;
            self.seg_next_index = cur.meta.next_index;
            return Ok(true);
        }
        let Some(next) = st.segments.get(&self.next_index) else {
            if self.next_index < st.start.index {
                // A prefix truncation deleted the rest of what this cursor was reading: that is
                // not the end of the log.
                return Err(WalError::TruncatedWhileReading {
                    index: self.next_index,
                });
            }
            return Ok(false);
        };
        let (id, path, active, meta) = (
            next.meta.id(),
            next.path.clone(),
            next.file.clone(),
            next.meta,
        );
        drop(st);
        self.file = self.sh.segment_file(id, &path, active.as_ref())?;
        self.segment = id;
        self.seg_end = meta.data_len;
        self.seg_next_index = meta.next_index;
        self.pos = SEGMENT_HEADER_LEN as u64;
        self.reader.invalidate();
        Ok(true)
    }

    /// Corruption unless a concurrent suffix truncation explains the bad bytes.
    fn corrupt(&self, kind: Corruption) -> WalError {
        if self.sh.state.read().generation != self.generation {
            return WalError::TruncatedWhileReading {
                index: self.next_index,
            };
        }
        WalError::corrupted(self.segment, self.pos, kind)
    }
}

/// Acknowledged entries from a sequence number on, as owned values. Returns `None` when caught
/// up; a later `next` returns entries appended since (it follows the tail). After an error it
/// returns `None` for good.
pub struct EntryIter {
    cursor: Cursor,
    from: SequenceNumber,
    ready: VecDeque<Entry>,
    failed: bool,
}

impl EntryIter {
    pub(crate) fn new(sh: Arc<Shared>, from: SequenceNumber) -> Result<Self> {
        Ok(EntryIter {
            cursor: Cursor::at_seq(sh, from, Bound::Acked)?,
            from,
            ready: VecDeque::new(),
            failed: false,
        })
    }

    fn fill(&mut self) -> Result<()> {
        let mut refreshed = false;
        while self.ready.is_empty() {
            let Some(f) = self.cursor.next_frame()? else {
                if refreshed {
                    return Ok(());
                }
                self.cursor.refresh();
                refreshed = true;
                continue;
            };
            let h = f.header;
            if h.is_control() || h.next_seq() <= self.from {
                continue;
            }
            for r in h.records(f.body).map_err(|kind| f.corrupted(kind))? {
                let e = r.map_err(|kind| f.corrupted(kind))?;
                if e.sequence_number >= self.from {
                    self.ready.push_back(e.to_owned());
                }
            }
        }
        Ok(())
    }
}

impl Iterator for EntryIter {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if self.failed {
            return None;
        }
        if self.ready.is_empty()
            && let Err(e) = self.fill()
        {
            self.failed = true;
            self.cursor.sh.note_damage(&e);
            return Some(Err(e));
        }
        let e = self.ready.pop_front()?;
        self.from = e.sequence_number + 1;
        Some(Ok(e))
    }
}
