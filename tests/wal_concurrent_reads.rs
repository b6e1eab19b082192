//! Readers racing a writer across segment rolls and prefix truncations: every read is gap-free,
//! in order, with intact data, and never shows an entry that was not acknowledged.

mod common;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use replog::wal::{Manager, WalError};

fn payload(seq: u64) -> Vec<u8> {
    let n = 20 + (seq % 200) as usize;
    (0..n)
        .map(|i| (seq as u8).wrapping_mul(7).wrapping_add(i as u8))
        .collect()
}

#[test]
fn readers_see_a_gap_free_prefix_while_the_log_rolls_and_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Manager::open(small_config(dir.path())).unwrap());
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (wal, acked, done) = (wal.clone(), acked.clone(), done.clone());
        std::thread::spawn(move || {
            for seq in 1..=6_000u64 {
                assert_eq!(wal.write(record("t", &payload(seq))).unwrap(), seq);
                acked.store(seq, Ordering::SeqCst);
                if seq % 1_000 == 0 {
                    wal.truncate_before(seq - 500).unwrap();
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (wal, acked, done) = (wal.clone(), acked.clone(), done.clone());
            std::thread::spawn(move || {
                let mut passes = 0u64;
                while !done.load(Ordering::SeqCst) || passes < 3 {
                    let from = wal.log_start().seq;
                    let acked_before = acked.load(Ordering::SeqCst);
                    let mut next = from;
                    let r = wal.replay(from, |e| {
                        assert_eq!(e.sequence_number, next, "gap or reorder");
                        assert_eq!(e.data, payload(next).as_slice(), "data of {next}");
                        assert!(e.checksum_ok());
                        next += 1;
                        ControlFlow::Continue(())
                    });
                    match r {
                        // A truncation overtook the reader: start again from the new start.
                        Ok(_)
                        | Err(WalError::BeforeLogStart { .. })
                        | Err(WalError::TruncatedWhileReading { .. }) => {}
                        Err(e) => panic!("replay from {from}: {e}"),
                    }
                    let acked_after = acked.load(Ordering::SeqCst);
                    // A clean end covers everything acknowledged before the replay began...
                    assert!(
                        next > acked_before || r.is_err(),
                        "replay ended at {next}, {acked_before} was acknowledged before it began"
                    );
                    // ...and nothing beyond what is acknowledged (the writer's own counter may
                    // trail the WAL's acknowledgement by one entry).
                    assert!(
                        next <= acked_after + 2,
                        "replay showed {} past the acknowledged {acked_after}",
                        next - 1
                    );
                    passes += 1;
                }
            })
        })
        .collect();
    writer.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(
        all_entries(&wal).last().map(|e| e.sequence_number),
        Some(6_000)
    );
}
