//! Damaged sealed segments: found by reads, scrubs and recovery, and rewritten only from frames
//! that prove to be this log's.

mod common;

use std::path::PathBuf;

use common::*;
use replog::fs::MemFs;
use replog::wal::{FrameSpec, Manager, Payload, SegmentStatus, WalConfig, WalError};

/// A log of `frames` frames of 3 records each, in term `term`, over several 4 KiB segments.
fn filled(fs: &MemFs, frames: u32, term: u64) -> Manager {
    let wal = open_mem(fs, small_config(mem_dir()));
    for i in 0..frames {
        let recs = (0..3u32)
            .map(|j| {
                record(
                    &format!("t{}", j % 2),
                    &(i * 3 + j).to_le_bytes().repeat(20),
                )
            })
            .collect();
        wal.append(vec![FrameSpec {
            term,
            ..FrameSpec::records(recs)
        }])
        .unwrap();
    }
    wal
}

/// A sealed segment that is neither the first nor the last one: `(id, path, first frame, next)`.
fn middle_sealed(wal: &Manager) -> (u64, PathBuf, u64, u64) {
    let segs: Vec<_> = wal
        .segments()
        .into_iter()
        .filter(|s| s.status == SegmentStatus::Sealed)
        .collect();
    assert!(segs.len() >= 3, "the test needs several sealed segments");
    let s = &segs[segs.len() / 2];
    (
        s.id,
        s.file_path.clone(),
        s.first_index,
        s.last_index.unwrap() + 1,
    )
}

/// Flips one byte in the middle of a file (inside a frame body, past the segment header).
fn flip(fs: &MemFs, path: &std::path::Path) {
    let mut bytes = fs.contents(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    fs.set_contents(path, bytes).unwrap();
}

fn idx_path(path: &std::path::Path) -> PathBuf {
    path.with_extension("idx")
}

#[test]
fn a_read_finds_a_damaged_segment_and_a_replica_copy_repairs_it() {
    let fs = MemFs::new();
    let wal = filled(&fs, 120, 3);
    let before = summary(&wal);
    let (id, path, first, next) = middle_sealed(&wal);
    let (copy, after) = wal.read_stored_frames(first, next, usize::MAX).unwrap();
    assert_eq!(after, next + 1);
    flip(&fs, &path);
    assert!(wal.damaged_segments().is_empty(), "nothing read it yet");

    let err = wal.iter_from(1).unwrap().find_map(Result::err).unwrap();
    assert!(
        matches!(err, WalError::CorruptedEntry { segment, .. } if segment == id),
        "{err}"
    );
    let damaged = wal.damaged_segments();
    assert_eq!(damaged.len(), 1);
    let d = &damaged[0];
    assert_eq!(
        (d.segment, d.first_index, d.next_index, d.fetch_last),
        (id, first, next, next)
    );
    assert!(
        fs.contents(&idx_path(&path)).is_err(),
        "the index of a damaged segment is dropped"
    );

    wal.repair_segment(id, &copy).unwrap();
    assert!(wal.damaged_segments().is_empty());
    assert!(wal.wait_repaired(std::time::Duration::ZERO));
    assert_eq!(summary(&wal), before);
    assert_eq!(wal.metrics().segments_repaired.get(), 1);
    assert_eq!(wal.metrics().damaged_segments.get(), 0);
    drop(wal);
    let wal = open_mem(&fs, small_config(mem_dir()));
    assert_eq!(
        summary(&wal),
        before,
        "the repaired segment survives a reopen"
    );
    assert!(wal.damaged_segments().is_empty());
}

#[test]
fn frames_that_are_not_this_logs_are_refused_and_change_nothing() {
    let fs = MemFs::new();
    let wal = filled(&fs, 120, 3);
    let (id, path, first, next) = middle_sealed(&wal);
    let (good, _) = wal.read_stored_frames(first, next, usize::MAX).unwrap();
    // Another log: same shape, other terms (a replica that diverged).
    let other_fs = MemFs::new();
    let other = filled(&other_fs, 120, 4);
    let (foreign, _) = other.read_stored_frames(first, next, usize::MAX).unwrap();
    flip(&fs, &path);
    wal.scrub_segment(id).unwrap();
    assert_eq!(
        wal.damaged_segments().len(),
        1,
        "the scrub found the damage"
    );
    let damaged_bytes = fs.contents(&path).unwrap();

    let mut bad_crc = good.clone();
    let at = bad_crc.len() / 3;
    bad_crc[at] ^= 1;
    let short = good[..good.len() / 2].to_vec();
    let cases: [(&str, &[u8]); 4] = [
        ("foreign", &foreign),
        ("bad crc", &bad_crc),
        ("short", &short),
        ("empty", &[]),
    ];
    for (what, bytes) in cases {
        let e = wal.repair_segment(id, bytes).unwrap_err();
        assert!(matches!(e, WalError::RepairRefused { .. }), "{what}: {e}");
        assert_eq!(wal.damaged_segments().len(), 1, "{what}");
        assert_eq!(fs.contents(&path).unwrap(), damaged_bytes, "{what}");
    }
    wal.repair_segment(id, &good).unwrap();
    assert!(wal.damaged_segments().is_empty());
    assert!(matches!(
        wal.repair_segment(id, &good),
        Err(WalError::RepairRefused { .. })
    ));
}

#[test]
fn recovery_opens_a_log_with_a_damaged_sealed_segment_and_it_can_be_repaired() {
    let fs = MemFs::new();
    let wal = filled(&fs, 120, 3);
    let before = summary(&wal);
    let (id, path, first, next) = middle_sealed(&wal);
    let (copy, _) = wal.read_stored_frames(first, next, usize::MAX).unwrap();
    drop(wal);
    flip(&fs, &path);
    // Without its index the segment is scanned on open, and the scan fails.
    MemFsExt::remove(&fs, &idx_path(&path));
    let cfg: WalConfig = small_config(mem_dir());
    let wal = open_mem(&fs, cfg.clone());
    let damaged = wal.damaged_segments();
    assert_eq!(damaged.len(), 1);
    assert_eq!(
        (
            damaged[0].segment,
            damaged[0].first_index,
            damaged[0].next_index
        ),
        (id, first, next)
    );
    // Appends go on; reads before the damage work, reads through it fail.
    wal.write(record("t", b"after")).unwrap();
    assert!(wal.iter_from(1).unwrap().any(|r| r.is_err()));
    wal.repair_segment(id, &copy).unwrap();
    let mut expected = before;
    expected.push((expected.len() as u64 + 1, "t".into(), b"after".to_vec()));
    assert_eq!(summary(&wal), expected);
    drop(wal);
    assert_eq!(summary(&open_mem(&fs, cfg)), expected);
}

/// Deleting a file through the `FileSystem` trait.
trait MemFsExt {
    fn remove(&self, path: &std::path::Path);
}

impl MemFsExt for MemFs {
    fn remove(&self, path: &std::path::Path) {
        replog::fs::FileSystem::remove(self, path).unwrap();
    }
}

#[test]
fn a_payload_check_covers_control_frames_too() {
    // Control frames (Raft membership and blanks) are copied like record frames.
    let fs = MemFs::new();
    let wal = open_mem(&fs, small_config(mem_dir()));
    for i in 0..200u32 {
        let spec = if i % 5 == 0 {
            FrameSpec {
                term: 2,
                payload: Payload::Control(vec![7; 40]),
                ..FrameSpec::records(Vec::new())
            }
        } else {
            FrameSpec {
                term: 2,
                ..FrameSpec::records(vec![record("t", &i.to_le_bytes().repeat(10))])
            }
        };
        wal.append(vec![spec]).unwrap();
    }
    let before = summary(&wal);
    let (id, path, first, next) = middle_sealed(&wal);
    let (copy, _) = wal.read_stored_frames(first, next, usize::MAX).unwrap();
    flip(&fs, &path);
    assert!(wal.read_frames(first, next).is_err());
    wal.repair_segment(id, &copy).unwrap();
    assert_eq!(summary(&wal), before);
    assert_eq!(
        wal.read_frames(first, next).unwrap().len() as u64,
        next - first
    );
}
