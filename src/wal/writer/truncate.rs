//! Truncation and retention. They run on the writer (as [`super::Command`]s), so they never race
//! with appends, and each is crash-safe:
//! - prefix truncation syncs the data, persists the new log start (`LOG_START`, atomically), and
//!   only then deletes the segments wholly below it; a crash in between is finished on open;
//! - suffix truncation removes later segments newest first, each removal made durable, then cuts
//!   and fsyncs the segment holding the cut, so a crash leaves a gap-free prefix of the log.

use std::io;
use std::path::{Path, PathBuf};

use super::{PrefixPoint, SuffixPoint, Writer};
use crate::fs::{FileSystem, write_file_atomic};
use crate::wal::error::{Result, SequenceRule, WalError};
use crate::wal::frame::FrameHeader;
use crate::wal::meta;
use crate::wal::read::{Bound, Cursor};
use crate::wal::scan::{self, scan_options};
use crate::wal::segment::{self, SegmentHeader};
use crate::wal::state::SyncedPos;
use crate::wal::tenants::{self, TenantIndex};
use crate::wal::types::{LogStart, SegmentId};

impl Writer {
    /// The header of the first frame at or after which `pred` holds, scanning from the frame
    /// that the cursor is positioned at.
    fn find_frame(
        &self,
        mut cursor: Cursor,
        pred: impl Fn(&FrameHeader) -> bool,
    ) -> Result<Option<(FrameHeader, SegmentId, u64)>> {
        while let Some(f) = cursor.next_frame()? {
            if pred(&f.header) {
                return Ok(Some((f.header, f.segment, f.offset)));
            }
        }
        Ok(None)
    }

    pub(super) fn truncate_prefix(&mut self, to: PrefixPoint) -> Result<LogStart> {
        let (start, next_index, next_seq) = {
            let st = self.sh.state.read();
            (st.start, st.next_index, st.next_seq)
        };
        let new = match to {
            PrefixPoint::Seq(seq) if seq <= start.seq => return Ok(start),
            PrefixPoint::Index(index) if index <= start.index => return Ok(start),
            PrefixPoint::Seq(seq) if seq > next_seq => {
                return Err(WalError::InvalidSequence {
                    what: "sequence number",
                    got: seq,
                    rule: SequenceRule::Between(start.seq, next_seq),
                });
            }
            PrefixPoint::Index(index) if index > next_index => {
                return self.restart_at(index);
            }
            PrefixPoint::Seq(seq) => {
                let cursor = Cursor::at_seq(self.sh.clone(), seq, Bound::Written)?;
                match self.find_frame(cursor, |h| h.next_seq() > seq)? {
                    Some((h, _, _)) => LogStart {
                        index: h.index,
                        seq,
                    },
                    None => LogStart {
                        index: next_index,
                        seq,
                    },
                }
            }
            PrefixPoint::Index(index) => {
                let cursor =
                    Cursor::at_index(self.sh.clone(), index.min(next_index), Bound::Written)?;
                match self.find_frame(cursor, |h| h.index >= index)? {
                    Some((h, _, _)) => LogStart {
                        index,
                        seq: h.first_seq,
                    },
                    None => LogStart {
                        index,
                        seq: next_seq,
                    },
                }
            }
        };
        self.set_log_start(new)?;
        Ok(new)
    }

    /// Drops every frame and continues the log at frame `index` (past the end), in a fresh
    /// segment: how a Raft follower's log jumps ahead. Sequence numbers continue. Crash-safe:
    /// the new start is persisted first, and a log whose segments all lie below it reopens as
    /// an empty log starting there.
    fn restart_at(&mut self, index: u64) -> Result<LogStart> {
        let new = LogStart {
            index,
            seq: self.next_seq,
        };
        self.set_log_start(new)?;
        self.next_index = index;
        self.published.0 = index;
        self.sh.state.write().next_index = index;
        self.sh.raise_acked((index, self.next_seq));
        self.roll()?;
        // Deletes the segment that was active (it now lies wholly below the start).
        self.set_log_start(new)?;
        Ok(new)
    }

    /// Persists a new log start, then deletes the segments wholly below it.
    fn set_log_start(&mut self, new: LogStart) -> Result<()> {
        // The data first: the watermark must never point past what a crash keeps.
        self.sync_all()?;
        let path = self.sh.dir().join(meta::LOG_START_FILE);
        write_file_atomic(&*self.sh.fs, &path, &meta::encode_log_start(new))
            .map_err(|e| self.meta_write_failed(e))?;
        let doomed: Vec<(SegmentId, PathBuf)> = {
            let mut st = self.sh.state.write();
            st.start = new;
            let ids: Vec<SegmentId> = st
                .segments
                .values()
                .filter(|s| {
                    s.sealed && s.meta.next_index <= new.index && s.meta.id() != self.active_id
                })
                .map(|s| s.meta.id())
                .collect();
            ids.iter()
                .filter_map(|id| st.segments.remove(id))
                .map(|s| (s.meta.id(), s.path))
                .collect()
        };
        if doomed.is_empty() {
            return Ok(());
        }
        self.sh.forget_segments(doomed.iter().map(|(id, _)| *id));
        self.remove_segment_files(&doomed);
        self.sh
            .metrics
            .segments
            .set(self.sh.state.read().segments.len() as i64);
        Ok(())
    }

    /// Deletes segment files no longer in the table. A failure only leaves a file that the
    /// next open deletes (it lies below the persisted log start), so it is logged, not fatal.
    fn remove_segment_files(&self, doomed: &[(SegmentId, PathBuf)]) {
        let fs = &*self.sh.fs;
        for (id, path) in doomed {
            if let Err(e) = self.sh.remove_tenant_index(*id) {
                tracing::warn!(error = %e, segment = id, "could not delete a truncated WAL segment's tenant index");
            }
            let idx = self.sh.dir().join(segment::index_file_name(*id));
            for p in [path, &idx] {
                if let Err(e) = fs.remove(p)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    tracing::warn!(error = %e, path = %p.display(), "could not delete a truncated WAL segment");
                }
            }
        }
        if let Err(e) = fs.sync_dir(self.sh.dir()) {
            tracing::warn!(error = %e, "could not fsync the WAL directory after deleting segments");
        }
    }

    pub(super) fn truncate_suffix(&mut self, from: SuffixPoint) -> Result<()> {
        let (start, next_index, next_seq) = {
            let st = self.sh.state.read();
            (st.start, st.next_index, st.next_seq)
        };
        let found = match from {
            SuffixPoint::Index(i) if i >= next_index => return Ok(()),
            SuffixPoint::Seq(s) if s >= next_seq => return Ok(()),
            SuffixPoint::Index(i) if i < start.index => {
                return Err(WalError::InvalidSequence {
                    what: "log index",
                    got: i,
                    rule: SequenceRule::AtLeast(start.index),
                });
            }
            SuffixPoint::Seq(s) if s < start.seq => {
                return Err(WalError::InvalidSequence {
                    what: "sequence number",
                    got: s,
                    rule: SequenceRule::AtLeast(start.seq),
                });
            }
            SuffixPoint::Index(i) => self
                .find_frame(Cursor::at_index(self.sh.clone(), i, Bound::Written)?, |h| {
                    h.index >= i
                })?,
            SuffixPoint::Seq(s) => {
                let found = self
                    .find_frame(Cursor::at_seq(self.sh.clone(), s, Bound::Written)?, |h| {
                        h.next_seq() > s
                    })?;
                if let Some((h, _, _)) = found.filter(|(h, _, _)| h.first_seq < s) {
                    let rule = SequenceRule::BatchBoundary {
                        batch_first: h.first_seq,
                        batch_last: h.next_seq() - 1,
                    };
                    return Err(WalError::InvalidSequence {
                        what: "sequence number",
                        got: s,
                        rule,
                    });
                }
                found
            }
        };
        let Some((h, segment, offset)) = found else {
            return Ok(());
        };
        self.cut_at(h.index, segment, offset)
    }

    /// Removes frame `index` (at `offset` of `segment`) and everything after it, durably.
    fn cut_at(&mut self, index: u64, segment: SegmentId, offset: u64) -> Result<()> {
        self.write_out()?;
        let fs = self.sh.fs.clone();
        let dir = self.sh.dir().to_owned();
        let (later, target) = {
            let st = self.sh.state.read();
            let later: Vec<(SegmentId, PathBuf)> = st
                .segments
                .range(segment + 1..)
                .map(|(id, s)| (*id, s.path.clone()))
                .collect();
            let t = &st.segments[&segment];
            (later, (t.path.clone(), t.file.clone(), t.meta, t.sealed))
        };
        let (path, active, old_meta, sealed) = target;
        let file = self.sh.segment_file(segment, &path, active.as_ref())?;
        // Newest first, each removal durable, so a crash leaves a contiguous log.
        for (id, path) in later.iter().rev() {
            let r = remove_if_exists(&*fs, &dir.join(segment::index_file_name(*id)))
                .and_then(|()| self.sh.remove_tenant_index(*id))
                .and_then(|()| fs.remove(path))
                .and_then(|()| fs.sync_dir(&dir));
            r.map_err(|e| self.sh.set_fatal(e))?;
        }
        if sealed {
            remove_if_exists(&*fs, &dir.join(segment::index_file_name(segment)))
                .and_then(|()| self.sh.remove_tenant_index(segment))
                .and_then(|()| fs.sync_dir(&dir))
                .map_err(|e| self.sh.set_fatal(e))?;
        }
        file.set_len(offset)
            .and_then(|()| file.sync_data())
            .map_err(|e| self.sh.set_fatal(e))?;
        let header = SegmentHeader {
            first_index: old_meta.first_index,
            first_seq: old_meta.first_seq,
            created_us: 0,
        };
        let opts = scan_options(&self.sh.cfg);
        let scan = scan::scan(&*file, &header, offset, &opts).map_err(|e| self.sh.set_fatal(e))?;
        debug_assert_eq!(scan.meta.next_index, index);
        // The segment the log now ends in is the active one: its tenant index moves to memory.
        let tenants = if sealed {
            TenantIndex::build_active(
                &*file,
                segment,
                offset,
                self.sh.max_body(),
                self.sh.cfg.tenant_index_max_bytes.as_u64(),
            )
        } else {
            let mut active = std::mem::replace(
                &mut *self.sh.active_tenants.lock(),
                TenantIndex::new(tenants::NO_SEGMENT),
            );
            active.truncate_from(index);
            active
        };
        {
            let mut st = self.sh.state.write();
            for (id, _) in &later {
                st.segments.remove(id);
            }
            let seg = st
                .segments
                .get_mut(&segment)
                .expect("the cut segment is in the table");
            seg.meta = scan.meta;
            seg.index = scan.index;
            seg.sealed = false;
            seg.file = Some(file.clone());
            st.next_index = scan.meta.next_index;
            st.next_seq = scan.meta.next_seq.max(st.start.seq);
            st.last_term = scan.meta.last_term;
            st.generation += 1;
            self.published = (st.next_index, st.next_seq, st.last_term);
            // Under the table's lock, which readers load both marks under: none sees one
            // rewound and not the other.
            self.sh.rewind_acked((self.published.0, self.published.1));
        }
        *self.sh.active_tenants.lock() = tenants;
        self.sh
            .forget_segments(std::iter::once(segment).chain(later.iter().map(|(id, _)| *id)));
        (self.next_index, self.next_seq, self.last_term) = self.published;
        self.active_id = segment;
        self.active_file = file;
        self.active_len = offset;
        self.file_len = offset;
        *self.sh.synced.lock() = SyncedPos { segment, offset };
        self.sh
            .metrics
            .segments
            .set(self.sh.state.read().segments.len() as i64);
        Ok(())
    }

    pub(super) fn retention(&mut self, now: u64) -> Result<usize> {
        let Some(hours) = self.sh.cfg.retention_hours else {
            return Ok(0);
        };
        let Some(new_start) = self.sh.state.read().retention_start(hours, now) else {
            return Ok(0);
        };
        let before = self.sh.state.read().segments.len();
        if new_start.index > self.sh.state.read().start.index {
            self.set_log_start(new_start)?;
        }
        let deleted = before - self.sh.state.read().segments.len();
        if deleted > 0 {
            tracing::info!(
                deleted,
                log_start = new_start.seq,
                "WAL retention deleted expired segments"
            );
        }
        Ok(deleted)
    }
}

fn remove_if_exists(fs: &dyn FileSystem, path: &Path) -> io::Result<()> {
    match fs.remove(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
