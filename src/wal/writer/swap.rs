//! Swapping a repaired segment in (see `crate::wal::repair`): the repair is staged and checked
//! off the writer; the rename and the segment table change run on the writer, so the swap never
//! races an append, a roll or a truncation.

use std::path::PathBuf;

use crate::fs::write_file_atomic;
use crate::wal::error::{Result, WalError};
use crate::wal::segment::{self, IndexEntry, SegmentMeta};
use crate::wal::state::{SegState, Shared};
use crate::wal::types::SegmentId;

/// A repaired segment file, written and checked, waiting for the writer to install it.
pub(crate) struct StagedRepair {
    /// The damaged segment it replaces.
    pub replaces: SegmentId,
    pub tmp: PathBuf,
    pub meta: SegmentMeta,
    pub index: Vec<IndexEntry>,
}

/// Runs on the writer: renames the staged file over the damaged one (or next to it, when the
/// log start cut the segment's head) and swaps the segment table entry. Returns the repaired
/// segment's summary (its tenant index is the indexer's to write).
pub(super) fn install_repair(sh: &Shared, staged: StagedRepair) -> Result<SegmentMeta> {
    let id = staged.replaces;
    let new_id = staged.meta.first_index;
    let refuse = |reason: &str| WalError::RepairRefused {
        segment: id,
        reason: reason.to_owned(),
    };
    let old_path = {
        let st = sh.state.read();
        let s = st
            .segments
            .get(&id)
            .ok_or_else(|| refuse("a truncation deleted the segment meanwhile"))?;
        if !s.sealed || s.meta.next_index != staged.meta.next_index {
            return Err(refuse("a truncation changed the segment meanwhile"));
        }
        s.path.clone()
    };
    let dir = sh.dir().to_owned();
    let path = dir.join(segment::segment_file_name(new_id));
    sh.fs.rename(&staged.tmp, &path)?;
    // From here the repaired file is in place: an error is fatal rather than a log whose files
    // and table disagree.
    let finish = || -> std::io::Result<()> {
        if new_id != id {
            sh.fs.remove(&old_path)?;
        }
        for tix in [id, new_id] {
            sh.remove_tenant_index(tix)?;
        }
        sh.fs.sync_dir(&dir)?;
        write_file_atomic(
            &*sh.fs,
            &dir.join(segment::index_file_name(new_id)),
            &segment::encode_index_file(&staged.meta, &staged.index),
        )
    };
    finish().map_err(|e| sh.set_fatal(e))?;
    {
        let mut st = sh.state.write();
        st.segments.remove(&id);
        st.segments.insert(
            new_id,
            SegState {
                meta: staged.meta,
                path,
                file: None,
                sealed: true,
                index: Vec::new(),
            },
        );
    }
    sh.forget_segments([id, new_id]);
    {
        let mut damaged = sh.damaged.lock();
        damaged.remove(&id);
        sh.metrics.damaged_segments.set(damaged.len() as i64);
    }
    sh.metrics.segments_repaired.inc();
    sh.repaired.notify_all();
    tracing::info!(
        segment = id,
        first_index = staged.meta.first_index,
        next_index = staged.meta.next_index,
        "repaired a damaged WAL segment from a replica's frames"
    );
    Ok(staged.meta)
}
