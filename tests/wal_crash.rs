//! Torn writes and corruption on real files: recovery keeps exactly the valid prefix, and damage
//! to data that was durable is always reported, never dropped.

mod common;

use std::fs;
use std::path::Path;

use bytesize::ByteSize;
use common::*;
use replog::fs::StdFs;
use replog::wal::debug::verify;
use replog::wal::{Manager, WalConfig, WalError};

const ENTRY: &[u8] = &[0xAB; 40];

fn config(dir: &Path) -> WalConfig {
    WalConfig {
        segment_size: ByteSize::kib(64),
        ..small_config(dir)
    }
}

/// Writes `n` entries to a fresh WAL in `cfg.directory` and closes it; returns the last segment's path
/// and its used length.
fn write_log(cfg: &WalConfig, n: u32) -> (std::path::PathBuf, u64) {
    let wal = Manager::open(cfg.clone()).unwrap();
    for i in 0..n {
        wal.write(record("tenant", &[ENTRY, &i.to_le_bytes()].concat()))
            .unwrap();
    }
    let last = wal.segments().pop().unwrap();
    wal.close().unwrap();
    (last.file_path, last.size)
}

fn copy_dir(from: &Path, to: &Path) {
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "LOCK" {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn torn_tail_at_every_byte_of_the_last_frame() {
    let src = tempfile::tempdir().unwrap();
    let cfg = config(src.path());
    let n = 20;
    let (seg, used) = write_log(&cfg, n);
    let frame_len = 64 + 18 + "tenant".len() as u64 + ENTRY.len() as u64 + 4;
    let frame_at = used - frame_len;
    for keep in 0..frame_len {
        for garbage in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(src.path(), dir.path());
            let path = dir.path().join(seg.file_name().unwrap());
            let original = fs::read(&path).unwrap();
            let mut bytes = original.clone();
            // The first `keep` bytes of the last frame reached the disk; the rest did not.
            for (i, b) in bytes[(frame_at + keep) as usize..used as usize]
                .iter_mut()
                .enumerate()
            {
                *b = if garbage {
                    (i as u8).wrapping_mul(31).wrapping_add(7)
                } else {
                    0
                };
            }
            // Bytes that "tore" into exactly what was written leave the frame whole.
            let expect = if bytes == original { n } else { n - 1 };
            fs::write(&path, &bytes).unwrap();
            let cfg = config(dir.path());
            let wal = Manager::open(cfg.clone())
                .unwrap_or_else(|e| panic!("keep {keep} garbage {garbage}: {e}"));
            let got = summary(&wal);
            assert_eq!(got.len() as u32, expect, "keep {keep} garbage {garbage}");
            assert_eq!(got.last().unwrap().0, u64::from(expect));
            // The log goes on from the cut, and the cut survives another reopen.
            assert_eq!(
                wal.write(record("tenant", b"next")).unwrap(),
                u64::from(expect + 1)
            );
            wal.close().unwrap();
            let wal = Manager::open(cfg).unwrap();
            assert_eq!(summary(&wal).len() as u32, expect + 1);
        }
    }
}

#[test]
fn every_byte_flip_in_a_sealed_segment_is_detected() {
    let src = tempfile::tempdir().unwrap();
    let cfg = small_config(src.path());
    let wal = Manager::open(cfg.clone()).unwrap();
    for i in 0..200u32 {
        wal.write(record("t", &i.to_le_bytes())).unwrap();
    }
    let sealed = wal.segments()[1].clone();
    wal.close().unwrap();
    let original = fs::read(&sealed.file_path).unwrap();
    assert_eq!(
        original.len() as u64,
        sealed.size,
        "a sealed segment is cut to its data"
    );
    for at in 0..original.len() {
        let mut bad = original.clone();
        bad[at] ^= 1 << (at % 8);
        fs::write(&sealed.file_path, &bad).unwrap();
        // `verify` reads every byte.
        let reports = verify(&StdFs, &cfg).unwrap();
        assert!(
            reports
                .iter()
                .any(|r| r.id == sealed.id && r.is_corrupted()),
            "verify missed byte {at}"
        );
        // Reading the data reports it too (the segment header is only read by verify and scans).
        if at >= 40 {
            let wal = Manager::open(cfg.clone()).unwrap();
            let read = wal.iter_from(1).unwrap().collect::<Result<Vec<_>, _>>();
            match read {
                Err(WalError::CorruptedEntry { segment, .. }) => assert_eq!(segment, sealed.id),
                other => panic!("byte {at}: {:?}", other.map(|v| v.len())),
            }
        }
    }
    fs::write(&sealed.file_path, &original).unwrap();
    let wal = Manager::open(cfg).unwrap();
    assert_eq!(summary(&wal).len(), 200);
}

#[test]
fn damage_before_the_tail_of_the_active_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (seg, _) = write_log(&cfg, 10);
    let frame_len = 64 + 18 + 6 + ENTRY.len() + 4;
    let mut bytes = fs::read(&seg).unwrap();
    // Frame 3's body: fsync'd long before frames 4..10, which say so.
    let at = 40 + 2 * frame_len + 70;
    bytes[at] ^= 0x20;
    fs::write(&seg, &bytes).unwrap();
    match Manager::open(cfg.clone()) {
        Err(WalError::CorruptedEntry { offset, .. }) => {
            assert_eq!(offset, (40 + 2 * frame_len) as u64)
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened a WAL with a damaged acknowledged entry"),
    }
    let reports = verify(&StdFs, &cfg).unwrap();
    assert!(reports.last().unwrap().is_corrupted());
}

#[test]
fn a_bad_index_file_is_rebuilt_from_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let wal = Manager::open(cfg.clone()).unwrap();
    for i in 0..200u32 {
        wal.write(record("t", &i.to_le_bytes())).unwrap();
    }
    let before = summary(&wal);
    let id = wal.segments()[0].id;
    wal.close().unwrap();
    let idx = dir.path().join(replog::wal::debug::index_file_name(id));
    let mut bytes = fs::read(&idx).unwrap();
    bytes[20] ^= 0xFF;
    fs::write(&idx, &bytes).unwrap();
    let wal = Manager::open(cfg).unwrap();
    assert_eq!(summary(&wal), before);
}

#[test]
fn leftovers_of_interrupted_operations_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    write_log(&cfg, 5);
    fs::write(dir.path().join("prealloc-9.tmp"), vec![0u8; 100]).unwrap();
    fs::write(dir.path().join("CHECKPOINTS.tmp"), b"half").unwrap();
    // A segment whose creation never reached its header.
    fs::write(
        dir.path().join(replog::wal::debug::segment_file_name(1000)),
        vec![0u8; 4096],
    )
    .unwrap();
    let wal = Manager::open(cfg).unwrap();
    assert_eq!(summary(&wal).len(), 5);
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.ends_with(".tmp") && !n.starts_with("00000000000000001000")),
        "{names:?}"
    );
}
