//! A power loss at every single mutating file-system step of a workload (appends, segment
//! rolls, checkpoints, prefix and suffix truncation, close): the WAL always reopens, and holds
//! the state before or after the interrupted operation (or, inside a truncation, a state between
//! the two that loses nothing else).
//!
//! The steps counted are those of the workload's own thread, which leads the WAL's writer. The
//! segment preparer thread makes the next segment file meanwhile, and where its steps fall among
//! the writer's varies from run to run: counted, they would make step `k` of a crash run a
//! different call from step `k` of the dry run. They still obey the power loss (they run before
//! it and fail after it), and the dry run checks that they touch only `.tmp` files, which
//! recovery deletes, and tenant indexes (`.tix`, the indexer thread's), which opening checks
//! against their segments, so how far those threads got cannot change the reopened log.

mod common;

use std::sync::Arc;

use common::crash_fs::CrashFs;
use common::*;
use replog::fs::MemFs;
use replog::wal::{Manager, WalConfig};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Open,
    Append,
    Checkpoint,
    TruncatePrefix,
    TruncateSuffix,
    Close,
}

type Log = Vec<(u64, Vec<u8>)>;

fn entries(wal: &Manager) -> Log {
    summary(wal).into_iter().map(|(s, _, d)| (s, d)).collect()
}

fn cfg() -> WalConfig {
    small_config(mem_dir())
}

/// What the dry run records after each operation: the log, the checkpoint, and how many steps
/// had been taken.
type State = (Log, Option<u64>, u64);

/// Runs the workload until it completes or the file system "loses power". Returns the kind of
/// each operation started and, when `states` is given, records the state after each one.
fn workload(fs: &CrashFs, mut states: Option<&mut Vec<State>>) -> Vec<Kind> {
    let mut started = vec![Kind::Open];
    let Ok(wal) = Manager::open_with(cfg(), Arc::new(fs.clone()), None) else {
        return started;
    };
    let mut note = |wal: &Manager| {
        if let Some(s) = states.as_deref_mut() {
            s.push((entries(wal), wal.checkpoint_seq("c"), fs.steps()));
        }
    };
    note(&wal);
    macro_rules! step {
        ($kind:expr, $op:expr) => {{
            started.push($kind);
            if $op.is_err() {
                return started;
            }
            note(&wal);
        }};
    }
    for i in 0..40u32 {
        step!(
            Kind::Append,
            wal.write(record("t", &vec![i as u8; 40 + (i as usize * 37) % 300]))
        );
        if i == 12 {
            step!(Kind::Checkpoint, wal.checkpoint("c"));
        }
        if i == 20 {
            step!(Kind::TruncatePrefix, wal.truncate_before(9));
        }
        if i == 30 {
            step!(
                Kind::Append,
                wal.write_batch((0..5).map(|j| record("b", &[j; 90])).collect())
            );
            step!(Kind::TruncateSuffix, wal.truncate_from_seq(12));
        }
    }
    started.push(Kind::Close);
    if wal.close().is_ok()
        && let Some(s) = states
    {
        let (log, cp, _) = s.last().cloned().unwrap();
        s.push((log, cp, fs.steps()));
    }
    started
}

fn acceptable(kind: Kind, before: &Log, after: &Log, got: &Log) -> bool {
    if got == before || got == after {
        return true;
    }
    match kind {
        // Segments are removed newest first, then the cut segment is cut: what is left is a
        // prefix of the log before, and at least the log after.
        Kind::TruncateSuffix => got.len() >= after.len() && before.starts_with(got),
        // The new start is persisted before any segment is deleted: hidden or not, nothing else.
        Kind::TruncatePrefix => got.len() >= after.len() && before.ends_with(got),
        _ => false,
    }
}

#[test]
fn a_power_loss_at_every_step_keeps_a_consistent_log() {
    // A dry run counts the steps and records the state after every operation.
    let dry = CrashFs::on_this_thread(MemFs::new(), 0);
    let mut states = Vec::new();
    let kinds = workload(&dry, Some(&mut states));
    let steps = dry.steps();
    assert_eq!(
        kinds.len(),
        states.len(),
        "every operation completed in the dry run"
    );
    assert!(steps > 140, "only {steps} steps");
    // Besides temporary files, the indexer writes tenant indexes: a cache that opening checks
    // against its segment (and rebuilds), which readers check record by record.
    let background = dry.uncounted_paths();
    assert!(
        background
            .iter()
            .all(|p| p.extension().is_some_and(|e| e == "tmp" || e == "tix")),
        "a background thread changed more than temporary files and tenant indexes, so where it \
         stands at a power loss matters and its steps must be counted: {background:?}"
    );
    for k in 1..=steps {
        let fs = CrashFs::on_this_thread(MemFs::new(), k as i64);
        let started = workload(&fs, None);
        let (j, kind) = (started.len() - 1, *started.last().unwrap());
        // The comparisons below mean something only if step k is the same call in every run:
        // the power must have gone out during the operation that took step k in the dry run.
        let dry_j = states.iter().position(|s| s.2 >= k).unwrap();
        assert!(
            fs.crashed() && j == dry_j,
            "step {k}: interrupted {kind:?} #{j}, but the dry run took it in #{dry_j}"
        );
        let wal = Manager::open_with(cfg(), Arc::new(fs.mem.clone()), None)
            .unwrap_or_else(|e| panic!("step {k} (during {kind:?} #{j}): reopen failed: {e}"));
        let got = entries(&wal);
        let empty = (Vec::new(), None, 0);
        let before = if j == 0 { &empty } else { &states[j - 1] };
        let after = &states[j];
        assert!(
            acceptable(kind, &before.0, &after.0, &got),
            "step {k} (during {kind:?} #{j}): {} entries ({:?}..{:?}); before {} after {}",
            got.len(),
            got.first().map(|e| e.0),
            got.last().map(|e| e.0),
            before.0.len(),
            after.0.len()
        );
        let cp = wal.checkpoint_seq("c");
        assert!(
            cp == before.1 || cp == after.1,
            "step {k}: checkpoint {cp:?}"
        );
        // And the log goes on.
        wal.write(record("t", b"after"))
            .unwrap_or_else(|e| panic!("step {k}: write after reopen: {e}"));
    }
}
