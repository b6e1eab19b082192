//! Injected faults: fsync and write errors are fatal, short writes are harmless, ENOSPC refuses
//! writes but not reads, and a power loss keeps exactly what was acknowledged under `immediate`.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};

use bytesize::ByteSize;
use common::*;
use replog::fs::MemFs;
use replog::wal::{Manager, SyncPolicy, WalConfig, WalError};

#[test]
fn power_loss_keeps_every_acknowledged_entry_under_immediate() {
    let fs = MemFs::new();
    let wal = open_mem(&fs, small_config(mem_dir()));
    for i in 0..300u32 {
        wal.write(record("t", &i.to_le_bytes())).unwrap();
    }
    let acked = summary(&wal);
    fs.crash();
    drop(wal);
    let wal = open_mem(&fs, small_config(mem_dir()));
    assert_eq!(summary(&wal), acked);
    assert_eq!(wal.write(record("t", b"after")).unwrap(), 301);
}

#[test]
fn power_loss_under_async_loses_only_a_suffix() {
    let fs = MemFs::new();
    let cfg = WalConfig {
        sync_policy: SyncPolicy::Async,
        ..small_config(mem_dir())
    };
    let wal = open_mem(&fs, cfg.clone());
    for i in 0..100u32 {
        wal.write(record("t", &i.to_le_bytes())).unwrap();
    }
    wal.sync().unwrap();
    for i in 100..300u32 {
        wal.write(record("t", &i.to_le_bytes())).unwrap();
    }
    let written = summary(&wal);
    // Torn: a random-looking part of the unsynced bytes reaches the disk.
    let mut n = 0usize;
    fs.crash_keeping(|len| {
        n += 1;
        (len * 7 / 13 + n) % (len + 1)
    });
    drop(wal);
    let wal = open_mem(&fs, cfg);
    let got = summary(&wal);
    assert!(got.len() >= 100, "the synced prefix survives");
    assert_eq!(
        got[..],
        written[..got.len()],
        "what survives is a prefix of what was written"
    );
}

#[test]
fn an_fsync_error_is_fatal_and_never_retried() {
    let fs = MemFs::new();
    let wal = open_mem(&fs, small_config(mem_dir()));
    for i in 0..10u32 {
        wal.write(record("t", &i.to_le_bytes())).unwrap();
    }
    fs.faults().fail_sync.store(true, Ordering::SeqCst);
    assert!(matches!(
        wal.write(record("t", b"lost")),
        Err(WalError::Fatal(_))
    ));
    // Even once the disk "recovers", the WAL does not pretend the failed fsync happened.
    fs.faults().fail_sync.store(false, Ordering::SeqCst);
    assert!(matches!(
        wal.write(record("t", b"refused")),
        Err(WalError::Fatal(_))
    ));
    assert!(matches!(wal.sync(), Err(WalError::Fatal(_))));
    // Reads go on, and never show the unacknowledged entry.
    assert_eq!(summary(&wal).len(), 10);
    fs.crash();
    drop(wal);
    let wal = open_mem(&fs, small_config(mem_dir()));
    assert_eq!(summary(&wal).len(), 10);
    assert_eq!(wal.write(record("t", b"reopened")).unwrap(), 11);
}

#[test]
fn a_write_error_is_fatal() {
    let fs = MemFs::new();
    let wal = open_mem(&fs, small_config(mem_dir()));
    wal.write(record("t", b"one")).unwrap();
    fs.faults().fail_next_write.store(true, Ordering::SeqCst);
    assert!(matches!(
        wal.write(record("t", b"two")),
        Err(WalError::Fatal(_))
    ));
    assert!(matches!(
        wal.write(record("t", b"three")),
        Err(WalError::Fatal(_))
    ));
    assert_eq!(summary(&wal).len(), 1);
    drop(wal);
    let wal = open_mem(&fs, small_config(mem_dir()));
    assert_eq!(summary(&wal).len(), 1);
}

#[test]
fn short_writes_are_completed() {
    let fs = MemFs::new();
    fs.faults().short_writes.store(true, Ordering::SeqCst);
    let wal = open_mem(&fs, small_config(mem_dir()));
    for i in 0..200u32 {
        wal.write(record("t", &[i as u8; 33])).unwrap();
    }
    let acked = summary(&wal);
    fs.crash();
    drop(wal);
    let wal = open_mem(&fs, small_config(mem_dir()));
    assert_eq!(summary(&wal), acked);
}

#[test]
fn enospc_refuses_writes_but_not_reads_and_is_not_fatal() {
    let fs = MemFs::new();
    let cfg = WalConfig {
        min_free_bytes: ByteSize::kib(1),
        ..small_config(mem_dir())
    };
    let wal = open_mem(&fs, cfg);
    fs.set_capacity(20 << 10);
    let mut written = 0u32;
    let err = loop {
        match wal.write(record("t", &[written as u8; 100])) {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 10_000, "never ran out of space");
    };
    assert!(matches!(err, WalError::InsufficientSpace { .. }), "{err}");
    assert_eq!(summary(&wal).len() as u32, written, "reads go on");
    assert!(matches!(
        wal.write(record("t", b"x")),
        Err(WalError::InsufficientSpace { .. })
    ));
    // Space comes back (an operator deleted something): writes resume, nothing was lost.
    fs.set_capacity(u64::MAX);
    let seq = wal.write(record("t", b"resumed")).unwrap();
    assert_eq!(seq, u64::from(written) + 1);
    fs.crash();
    drop(wal);
    let wal = open_mem(&fs, small_config(mem_dir()));
    assert_eq!(summary(&wal).len() as u32, written + 1);
}

#[test]
fn a_write_hitting_enospc_leaves_no_stale_frame() {
    // No preallocation: appends grow the file, so the write itself meets ENOSPC.
    let fs = MemFs::new();
    let cfg = WalConfig {
        preallocate: replog::wal::Preallocate::None,
        segment_size: ByteSize::kib(64),
        ..small_config(mem_dir())
    };
    let wal = open_mem(&fs, cfg.clone());
    wal.write(record("t", b"first")).unwrap();
    let used = fs
        .contents(&mem_dir().join(replog::wal::debug::segment_file_name(1)))
        .unwrap()
        .len() as u64;
    fs.set_capacity(used + 100);
    assert!(matches!(
        wal.write(record("t", &[7; 500])),
        Err(WalError::InsufficientSpace { .. })
    ));
    fs.set_capacity(u64::MAX);
    assert_eq!(wal.write(record("t", b"second")).unwrap(), 2);
    fs.crash();
    drop(wal);
    let wal = open_mem(&fs, cfg);
    let data: Vec<Vec<u8>> = all_entries(&wal).into_iter().map(|e| e.data).collect();
    assert_eq!(data, vec![b"first".to_vec(), b"second".to_vec()]);
}

#[test]
fn many_concurrent_writers_one_total_order_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        segment_size: ByteSize::kib(256),
        ..small_config(dir.path())
    };
    let wal = Arc::new(Manager::open(cfg.clone()).unwrap());
    let (threads, per_thread) = (16u32, 400u32);
    let start = Arc::new(Barrier::new(threads as usize));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (wal, start) = (wal.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                (0..per_thread)
                    .map(|i| {
                        (
                            wal.write(record(&format!("w{t}"), &i.to_le_bytes()))
                                .unwrap(),
                            i,
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acked: Vec<Vec<(u64, u32)>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut all: Vec<u64> = acked.iter().flatten().map(|(s, _)| *s).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=u64::from(threads * per_thread)).collect::<Vec<_>>(),
        "unique, gap-free sequence numbers"
    );
    for per in &acked {
        assert!(
            per.windows(2).all(|w| w[0].0 < w[1].0),
            "each writer's entries in its order"
        );
    }
    drop(wal);
    let wal = Manager::open(cfg).unwrap();
    let entries = all_entries(&wal);
    assert_eq!(entries.len() as u32, threads * per_thread);
    for (t, per) in acked.iter().enumerate() {
        for (seq, i) in per {
            let e = &entries[*seq as usize - 1];
            assert_eq!(
                (e.tenant_id.as_str(), e.data.as_slice()),
                (format!("w{t}").as_str(), &i.to_le_bytes()[..])
            );
        }
    }
}

#[test]
fn a_panicking_callback_closes_the_wal_instead_of_hanging_it() {
    let fs = MemFs::new();
    let wal = open_mem(&fs, small_config(mem_dir()));
    let frames = vec![replog::wal::FrameSpec::records(vec![record("t", b"x")])];
    let boom: replog::wal::Completion = Box::new(|_| panic!("a caller's callback panics"));
    wal.append_with(frames, None, boom).unwrap();
    // The background thread died leading; later calls get an error, not a hang.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match wal.write(record("t", b"y")) {
            Err(WalError::Closed) => break,
            Ok(_) => assert!(
                std::time::Instant::now() < deadline,
                "the WAL never noticed the panic"
            ),
            Err(e) => panic!("{e}"),
        }
    }
    drop(wal);
    let wal = open_mem(&fs, small_config(mem_dir()));
    assert!(!summary(&wal).is_empty());
}
