//! A tenant replay: the acknowledged records of one tenant, read through the per-tenant index
//! ([`crate::wal::tenants`]): a binary search for the first run, then one `pread` per run (or
//! per group of nearby runs), each record checked by its entry checksum and tenant. A segment
//! without a usable index is scanned frame by frame.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::error::{Corruption, Result, WalError};
use super::frame::{FRAME_HEADER_LEN, FrameHeader, raw_body};
use super::read::{Bound, Cursor};
use super::record::Records;
use super::segment::SegmentMeta;
use super::state::Shared;
use super::tenants::Run;
use super::types::{EntryRef, SegmentId, SequenceNumber};
use crate::fs::{WalFile, read_full_at};

/// Runs a reader takes at a time.
const RUNS_PER_READ: usize = 4096;
/// Runs of uncompressed frames closer than this are read with one `pread`.
const MERGE_GAP: u64 = 4 << 10;
/// The most bytes one `pread` of records asks for.
const MAX_SPAN: u64 = 1 << 20;
/// Segments one call looks at before it returns (so a rare tenant in a long log is read in
/// bounded steps).
const SEGMENTS_PER_CALL: usize = 64;

/// One segment as a tenant read sees it.
struct Seg {
    id: SegmentId,
    path: std::path::PathBuf,
    file: Option<Arc<dyn WalFile>>,
    meta: SegmentMeta,
}

/// Hands `handler` the acknowledged records of `tenant` in `from..upto`, reading them through
/// the per-tenant index (a sealed segment without one is scanned). Returns where the next
/// call continues: one past the record `handler` stopped at, or how far every record was
/// considered (`upto` at most); a call looks at a bounded number of segments.
pub(crate) fn replay_tenant(
    sh: &Arc<Shared>,
    from: SequenceNumber,
    upto: SequenceNumber,
    tenant: &str,
    handler: &mut dyn FnMut(EntryRef<'_>) -> ControlFlow<()>,
) -> Result<SequenceNumber> {
    let (segs, generation, end_index, acked_seq) = {
        let st = sh.state.read();
        if from < st.start.seq {
            return Err(WalError::BeforeLogStart {
                requested: from,
                log_start: st.start.seq,
            });
        }
        // The sequence number first: it never runs ahead of the index read after it.
        let acked_seq = sh.acked_seq.load(Ordering::Acquire).min(st.next_seq);
        let end_index = sh.acked_index.load(Ordering::Acquire).min(st.next_index);
        let segs: Vec<Seg> = st
            .segments
            .values()
            .filter(|s| s.meta.next_seq > from && s.meta.first_seq < upto && !s.meta.is_empty())
            .take(SEGMENTS_PER_CALL)
            .map(|s| Seg {
                id: s.meta.id(),
                path: s.path.clone(),
                file: s.file.clone(),
                meta: s.meta,
            })
            .collect();
        (segs, st.generation, end_index, acked_seq)
    };
    let mut r = TenantRead {
        sh,
        tenant,
        from,
        upto,
        end_index,
        generation,
        runs: Vec::new(),
        buf: Vec::new(),
        scratch: Vec::new(),
        read: 0,
    };
    let out = r.segments(&segs, handler);
    sh.metrics.tenant_read_bytes.inc_by(r.read);
    let stopped = out?;
    if let Some(next) = stopped {
        return Ok(next);
    }
    // Every acknowledged record of the segments looked at was considered: say how far that
    // goes (not into frames that are not acknowledged: a truncation could replace them).
    let mut covered = acked_seq;
    if segs.len() == SEGMENTS_PER_CALL
        && let Some(last) = segs.last()
    {
        covered = covered.min(last.meta.next_seq);
    }
    if sh.state.read().generation != generation {
        covered = r.from;
    }
    Ok(covered.min(upto).max(r.from))
}

struct TenantRead<'a> {
    sh: &'a Arc<Shared>,
    tenant: &'a str,
    /// The next sequence number to consider.
    from: SequenceNumber,
    upto: SequenceNumber,
    end_index: u64,
    generation: u64,
    runs: Vec<Run>,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    /// Bytes read (runs and records, or whole frames when scanning).
    read: u64,
}

impl TenantRead<'_> {
    /// Reads `segs` in order; `Some(next)` when the handler stopped or the bound was reached.
    fn segments(
        &mut self,
        segs: &[Seg],
        handler: &mut dyn FnMut(EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<Option<SequenceNumber>> {
        for seg in segs {
            loop {
                self.runs.clear();
                if !self.fill_runs(seg)? {
                    if let Some(next) = self.scan_segment(seg, handler)? {
                        return Ok(Some(next));
                    }
                    break;
                }
                let got = self.runs.len();
                if let Some(next) = self.read_runs(seg, handler)? {
                    return Ok(Some(next));
                }
                if got < RUNS_PER_READ {
                    break;
                }
            }
        }
        Ok(None)
    }

    /// The next runs of this segment into `self.runs`; false when it has no usable index.
    fn fill_runs(&mut self, seg: &Seg) -> Result<bool> {
        {
            let active = self.sh.active_tenants.lock();
            if active.segment() == seg.id {
                if !active.usable() {
                    return Ok(false);
                }
                active.runs_from(self.tenant, self.from, RUNS_PER_READ, &mut self.runs);
                return Ok(true);
            }
        }
        let sealing = self.sh.sealing.lock().get(&seg.id).cloned();
        if let Some(index) = sealing {
            index.runs_from(self.tenant, self.from, RUNS_PER_READ, &mut self.runs);
            return Ok(true);
        }
        let Some(dir) = self.sh.tenant_dir(seg.id, &seg.meta)? else {
            return Ok(false);
        };
        match dir.runs_from(self.tenant, self.from, RUNS_PER_READ, &mut self.runs) {
            Ok(n) => {
                self.read += n;
                Ok(true)
            }
            Err(WalError::CorruptedEntry { kind, .. }) => {
                // Deleted, so later reads scan without reading it again; the next open
                // rebuilds it.
                tracing::warn!(segment = seg.id, error = %kind, "a WAL tenant index is damaged; deleting it and scanning the segment instead");
                self.sh.forget_tenant_dir(seg.id);
                if let Err(e) = self.sh.remove_tenant_index(seg.id) {
                    tracing::warn!(segment = seg.id, error = %e, "could not delete a damaged WAL tenant index");
                }
                self.runs.clear();
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Hands over the records of `self.runs`.
    fn read_runs(
        &mut self,
        seg: &Seg,
        handler: &mut dyn FnMut(EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<Option<SequenceNumber>> {
        let file = self.sh.segment_file(seg.id, &seg.path, seg.file.as_ref())?;
        let runs = std::mem::take(&mut self.runs);
        let mut i = 0;
        let out = loop {
            let Some(first) = runs.get(i) else {
                break None;
            };
            if first.first_seq >= self.upto || seg.id + u64::from(first.index) >= self.end_index {
                break Some(first.first_seq.max(self.from).min(self.upto));
            }
            // One read: this run and the next ones of uncompressed frames close enough.
            let mut j = i + 1;
            if first.compressed() {
                // The tenant's other runs in the same frame: one decompression for all.
                while runs.get(j).is_some_and(|r| r.frame == first.frame) {
                    j += 1;
                }
            } else {
                let start = pos(first);
                while let Some(r) = runs.get(j) {
                    let end = pos(&runs[j - 1]) + u64::from(runs[j - 1].len);
                    if r.compressed()
                        || r.first_seq >= self.upto
                        || seg.id + u64::from(r.index) >= self.end_index
                        || pos(r) < end
                        || pos(r) - end > MERGE_GAP
                        || pos(r) + u64::from(r.len) - start > MAX_SPAN
                    {
                        break;
                    }
                    j += 1;
                }
            }
            if let Some(next) = self.read_span(seg.id, &*file, &runs[i..j], handler)? {
                break Some(next);
            }
            i = j;
        };
        self.runs = runs;
        Ok(out)
    }

    /// Reads runs `span` (the runs of one compressed frame, or nearby runs of uncompressed
    /// frames, read at once) and hands their records over.
    fn read_span(
        &mut self,
        segment: SegmentId,
        file: &dyn WalFile,
        span: &[Run],
        handler: &mut dyn FnMut(EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<Option<SequenceNumber>> {
        let first = &span[0];
        let (sh, generation) = (self.sh, self.generation);
        let bad = move |k| corrupt(sh, generation, segment, u64::from(first.frame), k);
        let (bytes, base): (&[u8], u64) = if first.compressed() {
            let mut head = [0u8; FRAME_HEADER_LEN];
            read_full_at(file, &mut head, u64::from(first.frame))?;
            let h = FrameHeader::decode(&head, self.sh.max_body()).map_err(bad)?;
            self.buf.resize(h.body_len as usize, 0);
            let at = u64::from(first.frame) + FRAME_HEADER_LEN as u64;
            if read_full_at(file, &mut self.buf, at)? != self.buf.len() {
                return Err(bad(Corruption::Truncated));
            }
            self.read += h.frame_len();
            h.verify(&head, &self.buf).map_err(bad)?;
            let raw = raw_body(&h, &self.buf, &mut self.scratch).map_err(bad)?;
            (raw, 0)
        } else {
            let start = pos(first);
            let last = &span[span.len() - 1];
            let len = (pos(last) + u64::from(last.len) - start) as usize;
            self.buf.resize(len, 0);
            if read_full_at(file, &mut self.buf, start)? != len {
                return Err(bad(Corruption::Truncated));
            }
            self.read += len as u64;
            (&self.buf[..], start)
        };
        for run in span {
            let at = if run.compressed() {
                run.at as usize
            } else {
                (pos(run) - base) as usize
            };
            let Some(body) = bytes.get(at..at + run.len as usize) else {
                return Err(corrupt(
                    sh,
                    generation,
                    segment,
                    u64::from(run.frame),
                    Corruption::Truncated,
                ));
            };
            let mut records = Records::new(body, run.first_seq, run.count());
            for r in records.by_ref() {
                let e = r.map_err(|k| corrupt(sh, generation, segment, u64::from(run.frame), k))?;
                if e.tenant_id != self.tenant || !e.checksum_ok() {
                    let why = Corruption::BadRecord(
                        "a record does not match its tenant index entry or its checksum",
                    );
                    return Err(corrupt(sh, generation, segment, u64::from(run.frame), why));
                }
                if let Some(next) = offer(&mut self.from, self.upto, e, handler) {
                    return Ok(Some(next));
                }
            }
            if !records.finished_cleanly() {
                let why = Corruption::BadRecord("a tenant index run does not end with its records");
                return Err(corrupt(sh, generation, segment, u64::from(run.frame), why));
            }
            self.from = self.from.max(run.next_seq());
        }
        Ok(None)
    }

    /// Scans a segment without a tenant index, frame by frame.
    fn scan_segment(
        &mut self,
        seg: &Seg,
        handler: &mut dyn FnMut(EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<Option<SequenceNumber>> {
        self.sh.metrics.tenant_scans.inc();
        let start = self.from.max(seg.meta.first_seq);
        let mut cursor = Cursor::at_seq(self.sh.clone(), start, Bound::Acked)?;
        while let Some(f) = cursor.next_frame()? {
            if f.segment != seg.id {
                break;
            }
            let h = f.header;
            self.read += h.frame_len();
            if h.is_control() || h.next_seq() <= self.from {
                continue;
            }
            for r in h.records(f.body).map_err(|k| f.corrupted(k))? {
                let e = r.map_err(|kind| f.corrupted(kind))?;
                if e.tenant_id != self.tenant {
                    continue;
                }
                if let Some(next) = offer(&mut self.from, self.upto, e, handler) {
                    return Ok(Some(next));
                }
            }
            self.from = self.from.max(h.next_seq().min(self.upto));
        }
        Ok(None)
    }
}

/// Hands `e` to `handler` if it lies in `from..upto`, moving `from` past it; `Some(next)` when
/// the read stops here (at `upto`, or because the handler said so).
fn offer(
    from: &mut SequenceNumber,
    upto: SequenceNumber,
    e: EntryRef<'_>,
    handler: &mut dyn FnMut(EntryRef<'_>) -> ControlFlow<()>,
) -> Option<SequenceNumber> {
    if e.sequence_number < *from {
        return None;
    }
    if e.sequence_number >= upto {
        return Some(upto);
    }
    *from = e.sequence_number + 1;
    handler(e).is_break().then_some(*from)
}

/// Corruption, unless a suffix truncation since the read began explains the bytes read.
fn corrupt(
    sh: &Shared,
    generation: u64,
    segment: SegmentId,
    offset: u64,
    kind: Corruption,
) -> WalError {
    if sh.state.read().generation != generation {
        return WalError::TruncatedWhileReading { index: segment };
    }
    WalError::corrupted(segment, offset, kind)
}

/// Where a run of an uncompressed frame starts in its segment.
fn pos(r: &Run) -> u64 {
    u64::from(r.frame) + FRAME_HEADER_LEN as u64 + u64::from(r.at)
}
