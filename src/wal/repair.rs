//! Damaged sealed segments: how they are found, and how one is rewritten from a replica's frames.
//!
//! - **Finding.** A read that meets a bad frame in a *sealed* segment (replay, a Raft log read,
//!   a scrub with [`Manager::scrub_segment`]) records the segment as damaged and deletes its
//!   `.idx`, so a restart scans it strictly and finds the damage again instead of trusting the
//!   index. Recovery opens a log whose sealed segments are damaged (their bounds come from their
//!   neighbours) rather than refusing it; it still refuses when the damage hides the log's last
//!   entry, or when a segment's bounds cannot be known.
//! - **Repairing.** The caller (the node) fetches the segment's frames, as stored, from a replica
//!   ([`Manager::read_stored_frames`] there) and hands them to [`Manager::repair_segment`], which
//!   accepts them only if they are exactly the segment's range: every frame's CRC, log indexes
//!   without gaps, sequence numbers continuing into the next segment, and one frame whose
//!   `(index, term)` this log holds intact (the first frame of the next segment, or the
//!   segment's last frame as its index recorded it). By Raft's log matching, a log that agrees on
//!   that entry agrees on every entry before it. The frames are written to a temporary file,
//!   fsync'd, scanned strictly (every record's checksum too), and only then renamed over the
//!   damaged file by the writer, so the swap never races an append, a roll or a truncation.
//!
//! A frame's `synced_upto` is relative to the segment that holds it, so each copied frame gets
//! its own offset there (everything before it is durable once the file is installed) and a fresh
//! CRC. Nothing else of a frame changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::{Corruption, Result, WalError};
use super::frame::{FRAME_HEADER_LEN, FrameHeader, reseal_synced_upto};
use super::manager::Manager;
use super::read::{Bound, Cursor};
use super::scan::{self, ScanEnd, ScanOptions, scan_options};
use super::segment::{self, SegmentHeader};
use super::state::{Shared, now_us};
use super::types::SegmentId;
use super::writer::{Command, StagedRepair};
use crate::fs::write_all_at;

/// A damaged sealed segment, as [`Manager::damaged_segments`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedSegment {
    pub segment: SegmentId,
    /// The range of log indexes a repair restores: `first_index..next_index` (the part of the
    /// segment at or after the log start).
    pub first_index: u64,
    pub next_index: u64,
    /// The range to fetch from a replica: `first_index..=fetch_last` (one frame past the segment
    /// when the next segment's first frame anchors the check).
    pub fetch_last: u64,
    pub offset: u64,
    pub kind: Corruption,
}

impl Manager {
    /// Sealed segments known damaged and not yet repaired, with what to fetch for each.
    pub fn damaged_segments(&self) -> Vec<DamagedSegment> {
        let sh = self.shared();
        let damaged = sh.damaged.lock().clone();
        let st = sh.state.read();
        damaged
            .into_iter()
            .filter_map(|(id, d)| {
                let s = st.segments.get(&id)?;
                let first_index = s.meta.first_index.max(st.start.index);
                let next_index = s.meta.next_index;
                if first_index >= next_index {
                    return None; // wholly below the log start: deleted, not repaired
                }
                let anchored_after = st
                    .segments
                    .range(id + 1..)
                    .next()
                    .is_some_and(|(_, n)| !n.meta.is_empty());
                Some(DamagedSegment {
                    segment: id,
                    first_index,
                    next_index,
                    fetch_last: if anchored_after {
                        next_index
                    } else {
                        next_index - 1
                    },
                    offset: d.offset,
                    kind: d.kind,
                })
            })
            .collect()
    }

    /// Whether a segment is known damaged.
    pub fn is_damaged(&self, id: SegmentId) -> bool {
        self.shared().damaged.lock().contains_key(&id)
    }

    /// Waits up to `timeout` for every damaged segment to be repaired; true if none is left.
    pub fn wait_repaired(&self, timeout: Duration) -> bool {
        let sh = self.shared();
        let deadline = Instant::now() + timeout;
        let mut damaged = sh.damaged.lock();
        while !damaged.is_empty() {
            if sh.repaired.wait_until(&mut damaged, deadline).timed_out() {
                return damaged.is_empty();
            }
        }
        true
    }

    /// Frames with log indexes `from..=last`, as stored (header and body), concatenated, for a
    /// replica repairing its copy. Stops before `max_bytes` (but returns at least one frame);
    /// returns the bytes and the index after the last frame included.
    pub fn read_stored_frames(
        &self,
        from: u64,
        last: u64,
        max_bytes: usize,
    ) -> Result<(Vec<u8>, u64)> {
        let sh = self.shared();
        sh.noted((|| {
            let mut cursor = Cursor::at_index(sh.clone(), from, Bound::Written)?;
            let mut out = Vec::new();
            let mut next = from;
            while let Some((h, bytes)) = cursor.next_stored()? {
                if h.index > last {
                    break;
                }
                if h.index < from {
                    continue;
                }
                if !out.is_empty() && out.len() + bytes.len() > max_bytes {
                    break;
                }
                out.extend_from_slice(bytes);
                next = h.index + 1;
            }
            Ok((out, next))
        })())
    }

    /// Reads a sealed segment whole, checking every frame and record; a damaged one is recorded
    /// (see [`Manager::damaged_segments`]). Returns the bytes checked. A segment that is gone (a
    /// truncation deleted it) or not sealed is skipped.
    pub fn scrub_segment(&self, id: SegmentId) -> Result<u64> {
        let sh = self.shared();
        let (path, meta) = {
            let st = sh.state.read();
            match st.segments.get(&id) {
                Some(s) if s.sealed && !sh.damaged.lock().contains_key(&id) => {
                    (s.path.clone(), s.meta)
                }
                _ => return Ok(0),
            }
        };
        let file = match sh.segment_file(id, &path, None) {
            Ok(f) => f,
            Err(WalError::BeforeLogStart { .. }) => return Ok(0),
            Err(e) => return Err(e),
        };
        let header = SegmentHeader {
            first_index: meta.first_index,
            first_seq: meta.first_seq,
            created_us: 0,
        };
        let opts = ScanOptions {
            check_records: true,
            ..scan_options(&sh.cfg)
        };
        let scan = scan::scan(&*file, &header, meta.data_len, &opts)?;
        let bad = match scan.end {
            ScanEnd::Bad { offset, kind } => Some(WalError::corrupted(id, offset, kind)),
            ScanEnd::Clean if scan.meta != meta => Some(WalError::corrupted(
                id,
                scan.meta.data_len,
                Corruption::BadIndexFile,
            )),
            ScanEnd::Clean => None,
        };
        if let Some(e) = bad {
            // A truncation may have deleted or cut the segment while it was read.
            if sh
                .state
                .read()
                .segments
                .get(&id)
                .is_some_and(|s| s.sealed && s.meta == meta)
            {
                sh.note_damage(&e);
            }
        }
        Ok(meta.data_len)
    }

    /// Ids of the sealed segments, oldest first (what a scrub walks).
    pub fn sealed_segments(&self) -> Vec<SegmentId> {
        let st = self.shared().state.read();
        st.segments
            .values()
            .filter(|s| s.sealed)
            .map(|s| s.meta.id())
            .collect()
    }

    /// Rewrites damaged segment `id` from `stored`: frames as [`Manager::read_stored_frames`]
    /// returns them for the range [`Manager::damaged_segments`] names. Refuses
    /// (`RepairRefused`) bytes that do not prove to be that range of this log; then the segment
    /// stays damaged and nothing changed.
    pub fn repair_segment(&self, id: SegmentId, stored: &[u8]) -> Result<()> {
        let sh = self.shared();
        let _one_at_a_time = sh.repairing.lock();
        let refuse = |reason: String| WalError::RepairRefused {
            segment: id,
            reason,
        };
        let target = self
            .damaged_segments()
            .into_iter()
            .find(|d| d.segment == id)
            .ok_or_else(|| refuse("the segment is not known damaged".into()))?;
        let expect = Expected::of(sh, &target)?;
        let frames = parse_frames(stored, sh.max_body(), &target, &expect).map_err(refuse)?;
        let staged = stage(sh, &target, &frames, stored)?;
        if let Err(e) = check_staged(&staged, &target, &expect) {
            let _ = sh.fs.remove(&staged.tmp);
            return Err(refuse(e));
        }
        self.install_repair(staged)
    }
}

/// What the repaired range must match, from the intact parts of this log.
struct Expected {
    /// First sequence number of the first frame, when the segment starts at the range's start.
    first_seq: Option<u64>,
    /// One past the last sequence number (the next segment's first).
    next_seq: u64,
    /// `(index, term)` of an entry this log holds intact.
    anchor: (u64, u64),
}

impl Expected {
    fn of(sh: &Arc<Shared>, t: &DamagedSegment) -> Result<Expected> {
        let refuse = |reason: &str| WalError::RepairRefused {
            segment: t.segment,
            reason: reason.to_owned(),
        };
        let (meta, summary_known, next) = {
            let st = sh.state.read();
            let s = st
                .segments
                .get(&t.segment)
                .ok_or_else(|| refuse("the segment is gone"))?;
            let next = st
                .segments
                .range(t.segment + 1..)
                .next()
                .map(|(_, n)| n.meta);
            let known = sh
                .damaged
                .lock()
                .get(&t.segment)
                .is_some_and(|d| d.summary_known);
            (s.meta, known, next)
        };
        let anchor = if t.fetch_last == t.next_index {
            // The next segment's first frame: read it (it is intact or the read says not).
            let mut c = Cursor::at_index(sh.clone(), t.next_index, Bound::Written)?;
            let mut term = None;
            while let Some((h, _)) = sh.noted(c.next_stored())? {
                if h.index == t.next_index {
                    term = Some(h.term);
                    break;
                }
            }
            (
                t.next_index,
                term.ok_or_else(|| refuse("the frame after the segment is missing"))?,
            )
        } else if summary_known {
            (t.next_index - 1, meta.last_term)
        } else {
            return Err(refuse("no intact entry of this log anchors the range"));
        };
        Ok(Expected {
            first_seq: (t.first_index == meta.first_index).then_some(meta.first_seq),
            next_seq: next.map_or(meta.next_seq, |n| n.first_seq),
            anchor,
        })
    }
}

/// Where each frame of the range starts in `stored`, after checking the frames.
fn parse_frames(
    stored: &[u8],
    max_body: u32,
    t: &DamagedSegment,
    expect: &Expected,
) -> std::result::Result<Vec<(usize, FrameHeader)>, String> {
    let mut frames = Vec::new();
    let mut at = 0;
    let mut index = t.first_index;
    let mut next_seq = expect.first_seq;
    let mut anchored = false;
    while at < stored.len() {
        let h = FrameHeader::decode(&stored[at..], max_body)
            .map_err(|k| format!("frame {index}: {k}"))?;
        let end = at + h.frame_len() as usize;
        if end > stored.len() {
            return Err(format!("frame {index} is cut short"));
        }
        h.verify(
            &stored[at..at + FRAME_HEADER_LEN],
            &stored[at + FRAME_HEADER_LEN..end],
        )
        .map_err(|k| format!("frame {index}: {k}"))?;
        if h.index != index {
            return Err(format!("log index {} where {index} was expected", h.index));
        }
        if next_seq.is_some_and(|s| s != h.first_seq) {
            return Err(format!(
                "frame {index} starts at sequence number {} instead of {}",
                h.first_seq,
                next_seq.unwrap_or(0)
            ));
        }
        if (h.index, h.term) == expect.anchor {
            anchored = true;
        } else if h.index == expect.anchor.0 {
            return Err(format!(
                "entry {} has term {} here and {} on the replica: the logs differ",
                h.index, expect.anchor.1, h.term
            ));
        }
        if h.index < t.next_index {
            frames.push((at, h));
            next_seq = Some(h.next_seq());
        } else if h.index > t.fetch_last {
            return Err(format!("frame {} is past the range", h.index));
        }
        at = end;
        index += 1;
    }
    if index <= t.fetch_last {
        return Err(format!(
            "the frames end at index {} before {}",
            index.saturating_sub(1),
            t.fetch_last
        ));
    }
    if !anchored {
        return Err(format!("entry {} was not sent", expect.anchor.0));
    }
    if next_seq != Some(expect.next_seq) {
        return Err(format!(
            "the frames end at sequence number {} where the next segment starts at {}",
            next_seq.unwrap_or(0),
            expect.next_seq
        ));
    }
    Ok(frames)
}

/// Writes the repaired segment to a temporary file (deleted by recovery if we crash) and
/// fsyncs it.
fn stage(
    sh: &Arc<Shared>,
    t: &DamagedSegment,
    frames: &[(usize, FrameHeader)],
    stored: &[u8],
) -> Result<StagedRepair> {
    let first = frames
        .first()
        .map(|(_, h)| *h)
        .ok_or_else(|| WalError::RepairRefused {
            segment: t.segment,
            reason: "no frame to write".into(),
        })?;
    let header = SegmentHeader {
        first_index: t.first_index,
        first_seq: first.first_seq,
        created_us: now_us(),
    };
    let bytes: usize = frames.iter().map(|(_, h)| h.frame_len() as usize).sum();
    let mut buf = Vec::with_capacity(segment::SEGMENT_HEADER_LEN + bytes);
    buf.extend_from_slice(&header.encode());
    for (at, h) in frames {
        let offset = buf.len();
        buf.extend_from_slice(&stored[*at..*at + h.frame_len() as usize]);
        let synced = u32::try_from(offset).unwrap_or(u32::MAX);
        reseal_synced_upto(&mut buf[offset..], synced);
    }
    let name = segment::segment_file_name(t.first_index);
    let tmp = sh.dir().join(format!("{name}.repair.tmp"));
    let file = sh.fs.create(&tmp)?;
    let written = write_all_at(&*file, &buf, 0).and_then(|()| file.sync_data());
    if let Err(e) = written {
        let _ = sh.fs.remove(&tmp);
        return Err(e.into());
    }
    let opts = ScanOptions {
        check_records: true,
        ..scan_options(&sh.cfg)
    };
    let scan = scan::scan(&*file, &header, buf.len() as u64, &opts)?;
    if let ScanEnd::Bad { offset, kind } = scan.end {
        let _ = sh.fs.remove(&tmp);
        return Err(WalError::RepairRefused {
            segment: t.segment,
            reason: format!("the rewritten segment does not scan at byte {offset}: {kind}"),
        });
    }
    Ok(StagedRepair {
        replaces: t.segment,
        tmp,
        meta: scan.meta,
        index: scan.index,
    })
}

fn check_staged(
    s: &StagedRepair,
    t: &DamagedSegment,
    e: &Expected,
) -> std::result::Result<(), String> {
    if s.meta.first_index != t.first_index || s.meta.next_index != t.next_index {
        return Err(format!(
            "the rewritten segment holds {}..{} instead of {}..{}",
            s.meta.first_index, s.meta.next_index, t.first_index, t.next_index
        ));
    }
    if s.meta.next_seq != e.next_seq {
        return Err(format!(
            "the rewritten segment ends at sequence number {} instead of {}",
            s.meta.next_seq, e.next_seq
        ));
    }
    Ok(())
}

impl Manager {
    /// Has the writer swap a staged segment in.
    fn install_repair(&self, staged: StagedRepair) -> Result<()> {
        let tmp = staged.tmp.clone();
        let r = self.call(|reply| Command::InstallRepair { staged, reply });
        if r.is_err() {
            let _ = self.shared().fs.remove(&tmp);
        }
        r
    }
}
