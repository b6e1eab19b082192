//! The per-tenant index on real files: a replay of one tenant reads about that tenant's bytes,
//! survives reopening, rebuilds a missing index, falls back to a scan when the index is
//! damaged, and reports damage to the records it reads.

mod common;

use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use common::*;
use replog::wal::{Manager, WalConfig, WalError};

const TENANTS: u64 = 100;

fn config(dir: &Path) -> WalConfig {
    WalConfig {
        segment_size: ByteSize::kib(256),
        ..small_config(dir)
    }
}

fn tenant(i: u64) -> String {
    format!("tenant-{:03}", i % TENANTS)
}

/// 20,000 entries of 100 B, spread evenly over the tenants, written one by one and in batches
/// (so frames hold one tenant or many).
fn fill(wal: &Manager) {
    let mut i = 0u64;
    while i < 20_000 {
        if i % 2000 < 1000 {
            wal.write(record(&tenant(i), &[i as u8; 100])).unwrap();
            i += 1;
        } else {
            let batch = (i..i + 50)
                .map(|j| record(&tenant(j), &[j as u8; 100]))
                .collect();
            wal.write_batch(batch).unwrap();
            i += 50;
        }
    }
}

fn replay(wal: &Manager, from: u64, t: &str) -> Vec<(u64, String, Vec<u8>)> {
    let mut out = Vec::new();
    wal.replay_tenant(from, t, |e| {
        out.push((e.sequence_number, e.tenant_id.to_owned(), e.data.to_vec()));
        ControlFlow::Continue(())
    })
    .unwrap();
    out
}

fn filtered(wal: &Manager, from: u64, t: &str) -> Vec<(u64, String, Vec<u8>)> {
    summary(wal)
        .into_iter()
        .filter(|(s, tenant, _)| *s >= from && tenant == t)
        .collect()
}

fn tix_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tix"))
        .collect();
    v.sort();
    v
}

#[test]
fn one_tenant_of_a_hundred_reads_about_its_own_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // Segments of 1 MiB hold about 80 records of each tenant: a segment's directory of
    // tenants, read once, costs less than the tenant's records there.
    let cfg = WalConfig {
        segment_size: ByteSize::mib(1),
        ..config(dir.path())
    };
    let wal = Manager::open(cfg).unwrap();
    fill(&wal);
    assert!(
        wal.segments().len() > 2,
        "the log must span several segments"
    );
    let t = tenant(7);
    let want = filtered(&wal, 1, &t);
    assert_eq!(want.len(), 200);
    let before = wal.metrics().tenant_read_bytes.get();
    assert_eq!(replay(&wal, 1, &t), want);
    let read = wal.metrics().tenant_read_bytes.get() - before;
    // Its own bytes: each record's header, tenant and data.
    let own: u64 = want
        .iter()
        .map(|(_, t, d)| 18 + t.len() as u64 + d.len() as u64)
        .sum();
    assert!(
        read <= 2 * own,
        "a replay of one tenant read {read} bytes for {own} bytes of its own records"
    );
    assert_eq!(wal.metrics().tenant_scans.get(), 0);
    // From the middle of a run of batches, and from past the end.
    for from in [1, 4321, 10_025, 19_999, 20_001] {
        assert_eq!(
            replay(&wal, from, &t),
            filtered(&wal, from, &t),
            "from {from}"
        );
    }
    assert!(replay(&wal, 1, "nobody").is_empty());
}

#[test]
fn reopening_keeps_the_index_and_rebuilds_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Manager::open(config(dir.path())).unwrap();
    fill(&wal);
    let want: Vec<_> = (0..3).map(|i| filtered(&wal, 1, &tenant(i))).collect();
    wal.close().unwrap();
    let sealed = tix_files(dir.path());
    assert!(sealed.len() > 5, "every sealed segment has a tenant index");

    let wal = Manager::open(config(dir.path())).unwrap();
    for (i, w) in want.iter().enumerate() {
        assert_eq!(&replay(&wal, 1, &tenant(i as u64)), w);
    }
    wal.close().unwrap();

    // As a log written by an older replog: no tenant index at all.
    for p in &sealed {
        std::fs::remove_file(p).unwrap();
    }
    let wal = Manager::open(config(dir.path())).unwrap();
    // Meanwhile a tenant replay scans the segments that have none.
    for (i, w) in want.iter().enumerate() {
        assert_eq!(&replay(&wal, 1, &tenant(i as u64)), w);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while tix_files(dir.path()) != sealed {
        assert!(
            Instant::now() < deadline,
            "opening did not rebuild the missing indexes: {:?}",
            tix_files(dir.path())
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let scans = wal.metrics().tenant_scans.get();
    for (i, w) in want.iter().enumerate() {
        assert_eq!(&replay(&wal, 1, &tenant(i as u64)), w);
    }
    assert_eq!(
        wal.metrics().tenant_scans.get(),
        scans,
        "once rebuilt, the indexes serve the replays"
    );
}

#[test]
fn a_segment_whose_index_outgrows_its_bound_is_scanned() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        // A few hundred runs: the segments of `fill` need thousands.
        tenant_index_max_bytes: ByteSize::kib(8),
        ..config(dir.path())
    };
    let wal = Manager::open(cfg).unwrap();
    fill(&wal);
    for i in [0, 7, 99] {
        let t = tenant(i);
        assert_eq!(replay(&wal, 1, &t), filtered(&wal, 1, &t));
    }
    assert!(wal.metrics().tenant_scans.get() > 0);
    wal.close().unwrap();
    assert!(
        tix_files(dir.path()).is_empty(),
        "no index is written for them"
    );
}

#[test]
fn a_damaged_index_falls_back_to_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Manager::open(config(dir.path())).unwrap();
    fill(&wal);
    let t = tenant(3);
    let want = filtered(&wal, 1, &t);
    // Flip a byte in the runs of every sealed index (past their header and directory).
    for p in tix_files(dir.path()) {
        let mut b = std::fs::read(&p).unwrap();
        let at = b.len() - 40;
        b[at] ^= 0xFF;
        std::fs::write(&p, b).unwrap();
    }
    let mut got = Vec::new();
    for i in 0..TENANTS {
        got.push(replay(&wal, 1, &tenant(i)));
    }
    assert_eq!(replay(&wal, 1, &t), want);
    assert_eq!(got.iter().map(Vec::len).sum::<usize>(), 20_000);
    assert!(
        wal.metrics().tenant_scans.get() > 0,
        "damaged runs must send the read to a scan"
    );
}

#[test]
fn damage_to_a_record_read_through_the_index_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Manager::open(config(dir.path())).unwrap();
    // One tenant's record sits alone in its frame; damage its data in the first segment.
    for i in 0..3000u64 {
        wal.write(record(&tenant(i), &[0xAB; 100])).unwrap();
    }
    wal.close().unwrap();
    let first = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .min()
        .unwrap();
    let mut b = std::fs::read(&first).unwrap();
    // The last byte of the first record's data (segment header 40 B, frame header 64 B).
    let at = 40 + 64 + 18 + tenant(0).len() + 99;
    assert_eq!(b[at], 0xAB);
    b[at] ^= 0x01;
    std::fs::write(&first, b).unwrap();
    let wal = Manager::open(config(dir.path())).unwrap();
    let err = wal
        .replay_tenant(1, &tenant(0), |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert!(
        matches!(err, WalError::CorruptedEntry { .. }),
        "got {err:?}"
    );
    // Another tenant's records in that segment are intact and still served.
    assert_eq!(replay(&wal, 1, &tenant(1)).len(), 30);
}
