//! Offline verification (`replog wal verify`): reads every frame of every segment, checks frame
//! CRCs, index continuity and every entry checksum. Read-only: it repairs nothing.

use std::path::{Path, PathBuf};

use super::config::WalConfig;
use super::error::{Corruption, Result};
use super::scan::{self, ScanEnd, ScanOptions, Tail, read_header, scan_options};
use super::segment;
use super::types::SegmentId;
use crate::fs::FileSystem;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SegmentHealth {
    Ok,
    /// An unacknowledged torn write at the end of the last segment; opening the WAL cuts it.
    TornTail {
        offset: u64,
    },
    Corrupted {
        offset: u64,
        reason: String,
    },
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SegmentReport {
    pub id: SegmentId,
    pub path: PathBuf,
    pub frames: u64,
    pub records: u64,
    pub bytes: u64,
    pub health: SegmentHealth,
}

impl SegmentReport {
    pub fn is_corrupted(&self) -> bool {
        matches!(self.health, SegmentHealth::Corrupted { .. })
    }
}

/// Verifies every segment in `cfg.directory`.
pub fn verify(fs: &dyn FileSystem, cfg: &WalConfig) -> Result<Vec<SegmentReport>> {
    let dir = &cfg.directory;
    let mut ids: Vec<SegmentId> = fs
        .list(dir)?
        .iter()
        .filter_map(|n| segment::parse_file_name(n, ".seg"))
        .collect();
    ids.sort_unstable();
    let mut reports = Vec::with_capacity(ids.len());
    for (i, &id) in ids.iter().enumerate() {
        reports.push(verify_segment(fs, cfg, dir, id, i + 1 == ids.len())?);
    }
    Ok(reports)
}

fn verify_segment(
    fs: &dyn FileSystem,
    cfg: &WalConfig,
    dir: &Path,
    id: SegmentId,
    last: bool,
) -> Result<SegmentReport> {
    let path = dir.join(segment::segment_file_name(id));
    let file = fs.open(&path)?;
    let len = file.len()?;
    let mut report = SegmentReport {
        id,
        path,
        frames: 0,
        records: 0,
        bytes: len,
        health: SegmentHealth::Ok,
    };
    let header = match read_header(&*file, id)? {
        Ok(h) => h,
        Err(kind) => return Ok(corrupted(report, 0, &kind)),
    };
    let opts = ScanOptions {
        check_records: true,
        ..scan_options(cfg)
    };
    let scan = scan::scan(&*file, &header, len, &opts)?;
    report.frames = scan.meta.next_index - scan.meta.first_index;
    report.records = scan.records;
    report.bytes = scan.meta.data_len;
    if let ScanEnd::Bad { offset, kind } = scan.end {
        let tail = if last {
            scan::classify_tail(&*file, offset, len, opts.max_body)?
        } else {
            Tail::Corrupted
        };
        report.health = match tail {
            Tail::Zeros => SegmentHealth::Ok,
            Tail::Torn { .. } => SegmentHealth::TornTail { offset },
            Tail::Corrupted => return Ok(corrupted(report, offset, &kind)),
        };
    }
    Ok(report)
}

fn corrupted(mut report: SegmentReport, offset: u64, kind: &Corruption) -> SegmentReport {
    report.health = SegmentHealth::Corrupted {
        offset,
        reason: kind.to_string(),
    };
    report
}
