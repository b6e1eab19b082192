//! A long log does not hold a file descriptor per segment (own test binary: it counts this
//! process's descriptors).

mod common;

use bytesize::ByteSize;
use common::*;
use replog::wal::{Manager, WalConfig};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[test]
fn sealed_segments_are_opened_on_demand_within_a_bound() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        max_open_segments: 4,
        segment_size: ByteSize::kib(4),
        ..small_config(dir.path())
    };
    let wal = Manager::open(cfg.clone()).unwrap();
    for i in 0..3000u32 {
        wal.write(record("t", &[i as u8; 100])).unwrap();
    }
    assert!(wal.segments().len() > 50);
    drop(wal);
    let before = open_fds();
    let wal = Manager::open(cfg).unwrap();
    assert_eq!(summary(&wal).len(), 3000);
    let during = open_fds();
    assert!(
        during <= before + 12,
        "{before} descriptors before opening, {during} after reading every segment"
    );
}
