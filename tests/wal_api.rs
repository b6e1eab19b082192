//! The WAL's public API end to end, on real files.

mod common;

use std::ops::ControlFlow;

use bytesize::ByteSize;
use common::*;
use replog::wal::{
    Compression, FramePayload, FrameSpec, Manager, Operation, Payload, Record, SegmentStatus,
    SequenceRule, SyncPolicy, WalConfig, WalError,
};

#[test]
fn write_reopen_replay() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Manager::open(small_config(dir.path())).unwrap();
    let mut seqs = Vec::new();
    for i in 0..200u32 {
        seqs.push(
            wal.write(record(&format!("t{}", i % 3), &i.to_le_bytes()))
                .unwrap(),
        );
    }
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    let batch = wal
        .write_batch((0..10).map(|i| record("b", &[i])).collect())
        .unwrap();
    assert_eq!((batch.first_seq, batch.next_seq), (201, 211));
    assert!(wal.segments().len() > 3, "4 KiB segments must have rolled");
    let before = summary(&wal);
    wal.close().unwrap();

    let wal = Manager::open(small_config(dir.path())).unwrap();
    assert_eq!(summary(&wal), before);
    assert_eq!(wal.next_seq(), 211);
    let entries = all_entries(&wal);
    assert!(entries.iter().all(|e| replog::checksum::entry_checksum(
        e.sequence_number,
        e.timestamp,
        e.operation as u8,
        &e.tenant_id,
        &e.data
    ) == e.checksum));
    // Replay from the middle, through a handler, stopping early.
    let mut got = Vec::new();
    wal.replay(150, |e| {
        got.push(e.sequence_number);
        if got.len() == 5 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(got, vec![150, 151, 152, 153, 154]);
    let seg_status: Vec<_> = wal.segments().iter().map(|s| s.status).collect();
    assert_eq!(seg_status.last(), Some(&SegmentStatus::Active));
    assert!(
        seg_status[..seg_status.len() - 1]
            .iter()
            .all(|s| *s == SegmentStatus::Sealed)
    );
}

#[test]
fn read_segment_and_frames_with_index_and_term() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Manager::open(small_config(dir.path())).unwrap();
    let frames: Vec<FrameSpec> = (1..=50u64)
        .map(|i| FrameSpec {
            index: Some(i),
            term: 1 + i / 20,
            first_seq: None,
            producer: None,
            parts: Vec::new(),
            payload: if i % 10 == 0 {
                Payload::Control(vec![i as u8; 30])
            } else {
                Payload::Records(vec![record("t", &[i as u8; 100])])
            },
        })
        .collect();
    wal.append(frames).unwrap();
    assert_eq!(wal.last_frame(), Some((50, 3)));
    let read = wal.read_frames(17, 23).unwrap();
    assert_eq!(
        read.iter().map(|f| (f.index, f.term)).collect::<Vec<_>>(),
        (17..23).map(|i| (i, 1 + i / 20)).collect::<Vec<_>>()
    );
    assert!(matches!(&read[3].payload, FramePayload::Control(b) if b == &vec![20u8; 30]));
    assert!(matches!(&read[0].payload, FramePayload::Records(r) if r[0].data == vec![17u8; 100]));
    // Control frames hold no records: 45 records for 50 frames.
    assert_eq!(wal.next_seq(), 46);
    let seg = &wal.segments()[1];
    let entries = wal.read_segment(seg.id).unwrap();
    assert_eq!(
        entries.first().map(|e| e.sequence_number),
        Some(seg.start_seq)
    );
    assert_eq!(entries.last().map(|e| e.sequence_number), seg.end_seq);
    assert!(matches!(
        wal.read_segment(999_999),
        Err(WalError::SegmentNotFound(999_999))
    ));
    // Indexes must follow each other.
    let bad = FrameSpec {
        index: Some(52),
        term: 3,
        first_seq: None,
        producer: None,
        parts: Vec::new(),
        payload: Payload::Control(vec![]),
    };
    match wal.append(vec![bad]) {
        Err(WalError::InvalidSequence {
            got: 52,
            rule: SequenceRule::Exactly(51),
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn given_sequence_numbers_must_increase() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Manager::open(small_config(dir.path())).unwrap();
    let at = |seq| FrameSpec {
        first_seq: Some(seq),
        producer: None,
        parts: Vec::new(),
        ..FrameSpec::records(vec![record("t", b"x")])
    };
    assert_eq!(wal.append(vec![at(100)]).unwrap().first_seq, 100);
    assert!(matches!(
        wal.append(vec![at(100)]),
        Err(WalError::InvalidSequence {
            got: 100,
            rule: SequenceRule::AtLeast(101),
            ..
        })
    ));
    assert_eq!(wal.write(record("t", b"y")).unwrap(), 101);
    assert_eq!(wal.append(vec![at(500)]).unwrap().first_seq, 500);
    assert_eq!(
        summary(&wal).iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![100, 101, 500]
    );
}

#[test]
fn prefix_truncation_hides_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Manager::open(small_config(dir.path())).unwrap();
    for i in 0..300u32 {
        wal.write(record("t", &i.to_le_bytes())).unwrap();
    }
    let segs_before = wal.segments().len();
    let start = wal.truncate_before(150).unwrap();
    assert_eq!(start.seq, 150);
    assert!(
        wal.segments().len() < segs_before,
        "whole segments below the start are deleted"
    );
    assert_eq!(
        all_entries(&wal).first().map(|e| e.sequence_number),
        Some(150)
    );
    assert!(matches!(
        wal.iter_from(10),
        Err(WalError::BeforeLogStart {
            requested: 10,
            log_start: 150
        })
    ));
    assert!(matches!(
        wal.truncate_before(1000),
        Err(WalError::InvalidSequence { .. })
    ));
    wal.close().unwrap();
    let wal = Manager::open(small_config(dir.path())).unwrap();
    assert_eq!(wal.log_start().seq, 150);
    assert_eq!(summary(&wal).len(), 151);
    assert_eq!(wal.write(record("t", b"after")).unwrap(), 301);
}

#[test]
fn suffix_truncation_and_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Manager::open(small_config(dir.path())).unwrap();
    for i in 0..100u32 {
        wal.write(record("t", &i.to_le_bytes())).unwrap();
    }
    let batch = wal
        .write_batch(vec![
            record("t", b"a"),
            record("t", b"b"),
            record("t", b"c"),
        ])
        .unwrap();
    assert_eq!(batch.first_seq, 101);
    match wal.truncate_from_seq(102) {
        Err(WalError::InvalidSequence {
            rule:
                SequenceRule::BatchBoundary {
                    batch_first: 101,
                    batch_last: 103,
                },
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    wal.truncate_from_seq(40).unwrap();
    assert_eq!(wal.next_seq(), 40);
    assert_eq!(summary(&wal).len(), 39);
    assert_eq!(wal.write(record("new", b"z")).unwrap(), 40);
    wal.truncate_from_index(41).unwrap();
    assert_eq!(wal.next_index(), 41);
    wal.close().unwrap();
    let wal = Manager::open(small_config(dir.path())).unwrap();
    let s = summary(&wal);
    assert_eq!(s.len(), 40);
    assert_eq!(s.last().unwrap().1, "new");
    assert_eq!(wal.write(record("t", b"again")).unwrap(), 41);
}

#[test]
fn checkpoints_are_durable_and_replayable() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Manager::open(small_config(dir.path())).unwrap();
    for i in 0..20u32 {
        wal.write(record("t", &i.to_le_bytes())).unwrap();
    }
    assert_eq!(wal.checkpoint("consumer-a").unwrap(), 20);
    for i in 20..25u32 {
        wal.write(record("t", &i.to_le_bytes())).unwrap();
    }
    wal.close().unwrap();
    let wal = Manager::open(small_config(dir.path())).unwrap();
    assert_eq!(wal.checkpoint_seq("consumer-a"), Some(20));
    let mut seen = Vec::new();
    wal.replay_from_checkpoint("consumer-a", |e| {
        seen.push(e.sequence_number);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(seen, vec![21, 22, 23, 24, 25]);
    let iterated: Vec<u64> = wal
        .iter_from_checkpoint("consumer-a")
        .unwrap()
        .map(|e| e.unwrap().sequence_number)
        .collect();
    assert_eq!(iterated, seen);
    assert!(matches!(
        wal.replay_from_checkpoint("nope", |_| ControlFlow::Continue(())),
        Err(WalError::CheckpointNotFound(_))
    ));
    assert!(matches!(
        wal.checkpoint(""),
        Err(WalError::InvalidRecord(_))
    ));
}

#[test]
fn retention_deletes_old_sealed_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        retention_hours: Some(1),
        ..small_config(dir.path())
    };
    let wal = Manager::open(cfg).unwrap();
    let hour = 3_600_000_000u64;
    let now = replog::wal::now_us();
    // Rolls apply retention with the real clock: old entries are 3 hours old, young ones new.
    let old = |i: u32| Record {
        timestamp: Some(now - 3 * hour),
        ..record("t", &[i as u8; 200])
    };
    for i in 0..60 {
        wal.write(old(i)).unwrap();
    }
    let young = |i: u32| Record {
        timestamp: Some(now),
        ..record("t", &[i as u8; 200])
    };
    for i in 0..60 {
        wal.write(young(i)).unwrap();
    }
    wal.apply_retention(now).unwrap();
    assert!(wal.log_start().seq > 1, "old segments were deleted");
    assert!(wal.segments()[0].start_seq > 1);
    let entries = all_entries(&wal);
    assert!(
        entries
            .iter()
            .all(|e| e.sequence_number >= wal.log_start().seq)
    );
    assert_eq!(
        entries.iter().filter(|e| e.timestamp == now).count(),
        60,
        "young entries are kept"
    );
    // Everything old: still never the active segment.
    wal.apply_retention(now + 100 * hour).unwrap();
    assert_eq!(wal.segments().last().unwrap().status, SegmentStatus::Active);
}

/// The cut a node proposes (`retention_cut`) is where the WAL's own retention puts the log start.
#[test]
fn retention_cut_is_where_retention_starts_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Manager::open(small_config(dir.path())).unwrap();
    let hour = 3_600_000_000u64;
    let now = replog::wal::now_us();
    for (i, age) in (0..120u32).map(|i| (i, if i < 60 { 3 * hour } else { 0 })) {
        let r = Record {
            timestamp: Some(now - age),
            ..record("t", &[i as u8; 200])
        };
        wal.write(r).unwrap();
    }
    assert_eq!(wal.retention_cut(4, now), None, "nothing is 4 hours old");
    let cut = wal.retention_cut(1, now).expect("old segments expired");
    assert!(cut > 1 && cut <= 61, "cut {cut} keeps every young record");
    wal.truncate_before(cut).unwrap();
    assert_eq!(wal.log_start().seq, cut);
    assert_eq!(wal.retention_cut(1, now), None, "nothing more expired");
}

#[test]
fn compression_round_trips_and_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        compression: Compression::Zstd,
        compression_min_bytes: ByteSize::b(256),
        segment_size: ByteSize::mib(1),
        ..small_config(dir.path())
    };
    let wal = Manager::open(cfg.clone()).unwrap();
    let recs: Vec<Record> = (0..100)
        .map(|i| {
            record(
                "tenant",
                format!("{{\"user\":{i},\"event\":\"login\",\"ok\":true}}").as_bytes(),
            )
        })
        .collect();
    wal.write_batch(recs.clone()).unwrap();
    let size = wal.segments()[0].size;
    let raw: usize = recs.iter().map(|r| r.data.len() + 24).sum();
    assert!(
        (size as usize) < raw / 2,
        "{size} bytes stored for {raw} raw"
    );
    wal.close().unwrap();
    let wal = Manager::open(cfg).unwrap();
    let data: Vec<Vec<u8>> = all_entries(&wal).into_iter().map(|e| e.data).collect();
    assert_eq!(data, recs.into_iter().map(|r| r.data).collect::<Vec<_>>());
}

#[test]
fn bad_records_are_refused_without_trace() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        max_frame_bytes: ByteSize::kib(2),
        ..small_config(dir.path())
    };
    let wal = Manager::open(cfg).unwrap();
    wal.write(record("t", b"ok")).unwrap();
    assert!(matches!(
        wal.write(record("", b"x")),
        Err(WalError::InvalidRecord(_))
    ));
    assert!(matches!(
        wal.write(record(&"x".repeat(300), b"x")),
        Err(WalError::InvalidRecord(_))
    ));
    assert!(matches!(
        wal.write(record("t", &[0; 3000])),
        Err(WalError::FrameTooLarge { .. })
    ));
    assert!(matches!(
        wal.write_batch(vec![]),
        Err(WalError::InvalidRecord(_))
    ));
    assert_eq!(wal.write(record("t", b"ok2")).unwrap(), 2);
}

#[test]
fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _wal = Manager::open(small_config(dir.path())).unwrap();
    assert!(matches!(
        Manager::open(small_config(dir.path())),
        Err(WalError::Locked(_))
    ));
}

#[test]
fn iterator_follows_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Manager::open(WalConfig {
        sync_policy: SyncPolicy::Async,
        ..small_config(dir.path())
    })
    .unwrap();
    wal.write(record("t", b"1")).unwrap();
    let mut it = wal.iter_from(1).unwrap();
    assert_eq!(it.next().unwrap().unwrap().data, b"1");
    assert!(it.next().is_none());
    for i in 0..100u32 {
        wal.write(record("t", &i.to_le_bytes())).unwrap();
    }
    assert_eq!(it.by_ref().count(), 100);
    let _ = Operation::Insert;
}

/// The next segment's file is prepared while the segment a log was opened with fills (once it
/// is a quarter full), not at its roll: the first roll after every open used to wait for the
/// whole zero-fill, stalling every append (170 ms for a 64 MiB segment, measured).
#[test]
fn the_next_segment_is_prepared_before_the_first_roll_after_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        segment_size: ByteSize::kib(64),
        ..small_config(dir.path())
    };
    let prepared = || {
        std::fs::read_dir(dir.path()).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("prealloc-")
        })
    };
    let wal = Manager::open(cfg.clone()).unwrap();
    assert!(!prepared(), "nothing is due in an empty segment");
    let mut i = 0u32;
    while wal.segments()[0].size * 4 < cfg.segment_size.as_u64() {
        wal.write(record("t", &[&[7u8; 40][..], &i.to_le_bytes()].concat()))
            .unwrap();
        i += 1;
    }
    assert_eq!(wal.segments().len(), 1, "still the first segment");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !prepared() {
        assert!(
            std::time::Instant::now() < deadline,
            "no next segment prepared with the active one a quarter full"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    wal.close().unwrap();
    assert!(!prepared(), "closing deletes the unused prepared file");
}
