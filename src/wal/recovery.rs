//! Opening a WAL directory: what is on disk becomes the in-memory segment table.
//!
//! - Sealed segments are trusted through their `.idx` files (a small read each), so reopening
//!   costs the size of the tail, not of the log. A sealed segment without a valid index is
//!   scanned strictly: any bad frame in it is `CorruptedEntry`.
//! - The last segment is always scanned. At its first bad frame, [`segment::classify_tail`]
//!   decides: zeros are preallocated space; garbage that no later valid frame vouches for is a
//!   torn write, which is zeroed (those frames were never acknowledged under `immediate`); a
//!   later valid frame whose `synced_upto` covers the bad one proves it was durable and then
//!   damaged, which is `CorruptedEntry`: the WAL refuses to open rather than drop it.
//! - A sealed segment whose strict scan fails is opened as damaged (`repair`): its bounds come
//!   from its neighbours, its reads fail until a replica's frames replace it.
//! - Leftovers of interrupted operations are finished: temporary files are deleted, segments
//!   wholly below the persisted log start are deleted, a last segment whose header never made
//!   it to disk is deleted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::config::WalConfig;
use super::error::{Corruption, Result, WalError};
use super::meta;
use super::preparer::{FillPace, install_file, prepare};
use super::scan::{self, ScanEnd, Tail, read_header, scan_options};
use super::segment::{self, SEGMENT_HEADER_LEN, SegmentHeader, SegmentMeta};
use super::state::{Active, Damage, LogState, SegState, now_us};
use super::tenants;
use super::types::{LogStart, SegmentId};
use crate::fs::{FileSystem, WalFile, read_file, read_full_at, write_all_at, write_file_atomic};

pub(crate) struct Recovered {
    pub state: LogState,
    pub active: Active,
    pub checkpoints: BTreeMap<String, u64>,
    pub damaged: BTreeMap<SegmentId, Damage>,
}

fn metadata_corrupt(kind: Corruption) -> WalError {
    WalError::corrupted(0, 0, kind)
}

/// Opens what is in `cfg.directory`, in six phases: list and clean the directory, read the
/// metadata, finish an interrupted prefix truncation, recover the tail, load the sealed
/// segments, and put the segment table together.
pub(crate) fn recover(fs: &dyn FileSystem, cfg: &WalConfig) -> Result<Recovered> {
    let dir = &cfg.directory;
    let mut ids = list_segments(fs, dir)?;
    let persisted_start = read_meta_file(fs, dir, meta::LOG_START_FILE, meta::decode_log_start)?;
    let checkpoints = read_meta_file(fs, dir, meta::CHECKPOINTS_FILE, meta::decode_checkpoints)?
        .unwrap_or_default();
    if let Some(start) = persisted_start {
        finish_prefix_truncation(fs, dir, &mut ids, start)?;
    }
    let tail = recover_last(fs, cfg, &mut ids)?;
    let mut segments = BTreeMap::new();
    let mut found_damaged = Vec::new();
    for &id in &ids[..ids.len().saturating_sub(1)] {
        match load_sealed(fs, cfg, id)? {
            Sealed::Intact(seg) => {
                segments.insert(id, seg);
            }
            Sealed::Damaged(d) => found_damaged.push(d),
        }
    }
    let active = match tail {
        Some((seg, file_len)) => continue_tail(&mut segments, seg, file_len)?,
        None => start_fresh(fs, cfg, &mut segments, persisted_start)?,
    };
    let damaged = bound_damaged(&mut segments, found_damaged)?;
    let state = assemble(segments, persisted_start, active.id)?;
    Ok(Recovered {
        state,
        active,
        checkpoints,
        damaged,
    })
}

/// The segment ids in `dir`, oldest first, after deleting temporary files and indexes whose
/// segment is gone.
fn list_segments(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<SegmentId>> {
    let mut ids = Vec::new();
    let mut idx_ids = Vec::new();
    for name in &fs.list(dir)? {
        if name.ends_with(".tmp") {
            fs.remove(&dir.join(name))?;
        } else if let Some(id) = segment::parse_file_name(name, ".seg") {
            ids.push(id);
        } else if let Some(id) = segment::parse_file_name(name, ".idx") {
            idx_ids.push((id, segment::index_file_name(id)));
        } else if let Some(id) = segment::parse_file_name(name, ".tix") {
            idx_ids.push((id, tenants::tenant_index_file_name(id)));
        }
    }
    ids.sort_unstable();
    // An index whose segment is gone (deleted by a truncation that crashed midway).
    for (_, name) in idx_ids
        .into_iter()
        .filter(|(id, _)| ids.binary_search(id).is_err())
    {
        fs.remove(&dir.join(name))?;
    }
    Ok(ids)
}

/// A metadata file decoded, `None` if it does not exist.
fn read_meta_file<T>(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    decode: impl FnOnce(&[u8]) -> std::result::Result<T, Corruption>,
) -> Result<Option<T>> {
    match read_file(fs, &dir.join(name)) {
        Ok(b) => Ok(Some(decode(&b).map_err(metadata_corrupt)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A prefix truncation that crashed before deleting its segments: finish it.
fn finish_prefix_truncation(
    fs: &dyn FileSystem,
    dir: &Path,
    ids: &mut Vec<SegmentId>,
    start: LogStart,
) -> Result<()> {
    let mut removed = false;
    while ids.len() >= 2 && ids[1] <= start.index {
        remove_segment(fs, dir, ids.remove(0))?;
        removed = true;
    }
    if removed {
        fs.sync_dir(dir)?;
    }
    Ok(())
}

/// The last segment, scanned and repaired; segments whose creation never completed are
/// dropped from `ids` (and deleted) first.
fn recover_last(
    fs: &dyn FileSystem,
    cfg: &WalConfig,
    ids: &mut Vec<SegmentId>,
) -> Result<Option<(SegState, u64)>> {
    while let Some(&id) = ids.last() {
        match recover_tail(fs, cfg, id)? {
            Some(t) => return Ok(Some(t)),
            None => {
                ids.pop();
            }
        }
    }
    Ok(None)
}

/// The writer continues the recovered tail segment.
fn continue_tail(
    segments: &mut BTreeMap<SegmentId, SegState>,
    seg: SegState,
    file_len: u64,
) -> Result<Active> {
    let file = seg.file.clone().ok_or_else(|| {
        WalError::from(std::io::Error::other(
            "the recovered tail segment is not open",
        ))
    })?;
    let active = Active {
        id: seg.meta.id(),
        file,
        len: seg.meta.data_len,
        file_len,
    };
    segments.insert(seg.meta.id(), seg);
    Ok(active)
}

/// An empty log (new, or every segment gone): a first segment at the persisted log start.
fn start_fresh(
    fs: &dyn FileSystem,
    cfg: &WalConfig,
    segments: &mut BTreeMap<SegmentId, SegState>,
    persisted_start: Option<LogStart>,
) -> Result<Active> {
    let first = persisted_start.unwrap_or(LogStart { index: 1, seq: 1 });
    let header = SegmentHeader {
        first_index: first.index.max(1),
        first_seq: first.seq.max(1),
        created_us: now_us(),
    };
    let prepared = prepare(fs, cfg, 0, &FillPace::unpaced())?;
    let path = install_file(fs, &cfg.directory, &prepared, &header)?;
    segments.insert(
        header.first_index,
        SegState::fresh(&header, path, prepared.file.clone()),
    );
    let len = SEGMENT_HEADER_LEN as u64;
    Ok(Active {
        id: header.first_index,
        file: prepared.file,
        len,
        file_len: prepared.len.max(len),
    })
}

/// The segment table and the log's bounds, after checking the segments are contiguous and
/// the persisted log start lies within them.
fn assemble(
    segments: BTreeMap<SegmentId, SegState>,
    persisted_start: Option<LogStart>,
    active: SegmentId,
) -> Result<LogState> {
    check_contiguous(&segments)?;
    let (Some(first), Some(last)) = (
        segments.values().next().map(|s| s.meta),
        segments.get(&active).map(|s| s.meta),
    ) else {
        return Err(metadata_corrupt(Corruption::BadSegmentHeader));
    };
    let start = persisted_start.unwrap_or(LogStart {
        index: first.first_index,
        seq: first.first_seq,
    });
    if start.index > last.next_index {
        return Err(metadata_corrupt(Corruption::BadMetadata(
            meta::LOG_START_FILE,
        )));
    }
    let last_term = segments
        .values()
        .rev()
        .find(|s| !s.meta.is_empty())
        .map_or(0, |s| s.meta.last_term);
    debug_assert!(start.index >= 1, "log indexes start at 1");
    Ok(LogState {
        segments,
        start,
        next_index: last.next_index,
        next_seq: last.next_seq.max(start.seq),
        last_term,
        generation: 0,
    })
}

fn remove_segment(fs: &dyn FileSystem, dir: &std::path::Path, id: SegmentId) -> Result<()> {
    for p in [
        dir.join(segment::index_file_name(id)),
        dir.join(tenants::tenant_index_file_name(id)),
        dir.join(segment::segment_file_name(id)),
    ] {
        match fs.remove(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

fn check_contiguous(segments: &BTreeMap<SegmentId, SegState>) -> Result<()> {
    let metas: Vec<&SegmentMeta> = segments.values().map(|s| &s.meta).collect();
    for w in metas.windows(2) {
        if w[0].next_index != w[1].first_index {
            return Err(WalError::corrupted(
                w[1].id(),
                0,
                Corruption::IndexGap {
                    expected: w[0].next_index,
                    found: w[1].first_index,
                },
            ));
        }
        if w[1].first_seq < w[0].next_seq {
            return Err(WalError::corrupted(
                w[1].id(),
                0,
                Corruption::SequenceGoesBack {
                    expected_min: w[0].next_seq,
                    found: w[1].first_seq,
                },
            ));
        }
    }
    Ok(())
}

/// How a sealed segment loaded.
enum Sealed {
    Intact(SegState),
    /// It does not scan: [`bound_damaged`] bounds it from its neighbours.
    Damaged(FoundDamage),
}

/// A sealed segment: its `.idx` if valid, else a strict scan (and a fresh `.idx`).
fn load_sealed(fs: &dyn FileSystem, cfg: &WalConfig, id: SegmentId) -> Result<Sealed> {
    let path = cfg.directory.join(segment::segment_file_name(id));
    let file = fs.open(&path)?;
    let file_len = file.len()?;
    let idx_path = cfg.directory.join(segment::index_file_name(id));
    let from_idx = read_file(fs, &idx_path)
        .ok()
        .and_then(|b| segment::decode_index_file(&b, id).ok());
    let meta = match from_idx {
        Some((meta, _)) if meta.data_len <= file_len => meta,
        _ => {
            let header = match read_header(&*file, id)? {
                Ok(h) => h,
                Err(kind) => {
                    return Ok(Sealed::Damaged((id, path, file_len, None, 0, kind)));
                }
            };
            let scan = scan::scan(&*file, &header, file_len, &scan_options(cfg))?;
            if let ScanEnd::Bad { offset, kind } = scan.end {
                return Ok(Sealed::Damaged((
                    id,
                    path,
                    file_len,
                    Some(header),
                    offset,
                    kind,
                )));
            }
            write_file_atomic(
                fs,
                &idx_path,
                &segment::encode_index_file(&scan.meta, &scan.index),
            )?;
            scan.meta
        }
    };
    Ok(Sealed::Intact(SegState {
        meta,
        path,
        file: None,
        sealed: true,
        index: Vec::new(),
    }))
}

/// The last segment, scanned and repaired; `None` if it is a creation that never completed.
fn recover_tail(
    fs: &dyn FileSystem,
    cfg: &WalConfig,
    id: SegmentId,
) -> Result<Option<(SegState, u64)>> {
    let dir = &cfg.directory;
    let path: PathBuf = dir.join(segment::segment_file_name(id));
    let file = fs.open(&path)?;
    let file_len = file.len()?;
    let header = match read_header(&*file, id)? {
        Ok(h) => h,
        Err(kind) => {
            if all_zero(&*file, file_len)? {
                tracing::warn!(
                    segment = id,
                    "deleting a WAL segment whose creation did not complete"
                );
                remove_segment(fs, dir, id)?;
                fs.sync_dir(dir)?;
                return Ok(None);
            }
            return Err(WalError::corrupted(id, 0, kind));
        }
    };
    // The tail is always rescanned; its indexes are rewritten when it is sealed.
    for name in [
        segment::index_file_name(id),
        tenants::tenant_index_file_name(id),
    ] {
        match fs.remove(&dir.join(name)) {
            Ok(()) => fs.sync_dir(dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    let opts = scan_options(cfg);
    let scan = scan::scan(&*file, &header, file_len, &opts)?;
    if let ScanEnd::Bad { offset, kind } = &scan.end {
        match scan::classify_tail(&*file, *offset, file_len, opts.max_body)? {
            Tail::Zeros => {}
            Tail::Torn { dirty_end } => {
                tracing::warn!(
                    segment = id,
                    offset,
                    bytes = dirty_end - offset,
                    "cutting a torn write off the WAL tail"
                );
                zero_range(&*file, *offset, dirty_end)?;
                file.sync_data()?;
            }
            Tail::Corrupted => return Err(WalError::corrupted(id, *offset, kind.clone())),
        }
    }
    let seg = SegState {
        meta: scan.meta,
        path,
        file: Some(file),
        sealed: false,
        index: scan.index,
    };
    Ok(Some((seg, file_len)))
}

fn all_zero(file: &dyn WalFile, len: u64) -> Result<bool> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = read_full_at(file, &mut buf, at)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

fn zero_range(file: &dyn WalFile, from: u64, to: u64) -> Result<()> {
    let zeros = vec![0u8; (1 << 20).min((to - from) as usize)];
    let mut at = from;
    while at < to {
        let n = zeros.len().min((to - at) as usize);
        write_all_at(file, &zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// A sealed segment recovery could not scan: `(id, path, file length, header if it decodes,
/// offset of the first bad frame, what is wrong)`.
type FoundDamage = (
    SegmentId,
    PathBuf,
    u64,
    Option<SegmentHeader>,
    u64,
    Corruption,
);

/// Damage recovery found: sealed segments whose frames do not all scan, with their bounds taken
/// from their neighbours. Refuses (`CorruptedEntry`) a damaged segment whose bounds cannot be
/// known or that holds the log's last entry.
fn bound_damaged(
    segments: &mut BTreeMap<SegmentId, SegState>,
    found: Vec<FoundDamage>,
) -> Result<BTreeMap<SegmentId, Damage>> {
    let mut damage = BTreeMap::new();
    // Newest first: a damaged segment's successor is then in the table already.
    for (id, path, file_len, header, offset, kind) in found.into_iter().rev() {
        let refuse = || WalError::corrupted(id, offset, kind.clone());
        let next = segments
            .range(id + 1..)
            .next()
            .map(|(_, n)| n.meta)
            .filter(|n| !n.is_empty())
            .ok_or_else(refuse)?;
        let first_seq = match header {
            Some(h) => h.first_seq,
            None => segments
                .range(..id)
                .next_back()
                .map(|(_, p)| p.meta.next_seq)
                .ok_or_else(refuse)?,
        };
        let meta = SegmentMeta {
            first_index: id,
            next_index: next.first_index,
            first_seq,
            next_seq: next.first_seq,
            // Unknown; never the log's last term (a later segment holds frames).
            last_term: 0,
            // Unknown: retention must not consider it expired.
            max_timestamp: u64::MAX,
            data_len: file_len,
        };
        tracing::error!(
            segment = id,
            offset,
            %kind,
            "damaged WAL segment found on open: its reads fail until it is repaired from a replica"
        );
        segments.insert(
            id,
            SegState {
                meta,
                path,
                file: None,
                sealed: true,
                index: Vec::new(),
            },
        );
        damage.insert(
            id,
            Damage {
                offset,
                kind,
                summary_known: false,
            },
        );
    }
    Ok(damage)
}
