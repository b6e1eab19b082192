//! A power loss at every single mutating file-system step of a snapshot install (staging the
//! received segments and `SM_SNAPSHOT`, the commit rename, swapping the WAL directory, closing
//! and reopening the WAL): after a restart (which finishes a committed install, as
//! `Storage::open` does) the node holds either its old state or the snapshot's, never a mix of
//! the two, and a later install works.
//!
//! Like `wal_crash_points.rs`, only the test thread's steps are counted: the WALs' segment
//! preparer threads make files meanwhile at moments that vary from run to run.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::crash_fs::CrashFs;
use common::*;
use replog::fs::{FileSystem, MemFs};
use replog::raft::WalHandle;
use replog::raft::image::Image;
use replog::raft::snapshot::{self, SnapshotData, SnapshotFile};
use replog::raft::types::{LogId, SnapshotMeta};
use replog::wal::{FrameSpec, Manager, Payload, WalConfig};

const DATA: &str = "/node";
/// Frames in the sender's log; the snapshot covers the first `SNAPSHOT_FRAMES`.
const SOURCE_FRAMES: u64 = 40;
const SNAPSHOT_FRAMES: u64 = 30;

fn wal_cfg(dir: &Path) -> WalConfig {
    small_config(dir)
}

/// Frames `1..=n` of term 1, one record each, tagged so two logs differ.
fn fill(wal: &Manager, tag: u8, n: u64) {
    for i in 1..=n {
        let spec = FrameSpec {
            index: Some(i),
            term: 1,
            first_seq: None,
            producer: None,
            parts: Vec::new(),
            payload: Payload::Records(vec![record("t", &[tag; 300])]),
        };
        wal.append(vec![spec]).expect("append a frame");
    }
}

type Log = Vec<(u64, String, Vec<u8>)>;

/// The node's state after a restart: its log and its durable snapshot, if any.
#[derive(Debug, PartialEq)]
struct State {
    log: Log,
    snapshot: Option<(Option<LogId>, Image)>,
}

struct Sender {
    wal: Arc<WalHandle>,
    meta: SnapshotMeta,
    image: Image,
    /// What the receiver must hold once it installed the snapshot.
    installed: State,
}

fn sender() -> Sender {
    let fs: Arc<dyn FileSystem> = Arc::new(MemFs::new());
    let wal = Manager::open_with(wal_cfg(Path::new("/src/wal")), fs, None).expect("open");
    fill(&wal, 2, SOURCE_FRAMES);
    let log: Log = summary(&wal)
        .into_iter()
        .take(SNAPSHOT_FRAMES as usize)
        .collect();
    assert!(
        wal.segments().len() > 2,
        "the snapshot spans several segments"
    );
    let last = LogId::new_term_index(1, SNAPSHOT_FRAMES - 1); // Raft index i is frame i + 1
    let image = Image {
        applied: Some(last),
        next_seq: SNAPSHOT_FRAMES + 1,
        ..Image::default()
    };
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: Default::default(),
    };
    Sender {
        wal: WalHandle::new(wal),
        installed: State {
            log,
            snapshot: Some((meta.last_log_id, image.clone())),
        },
        meta,
        image,
    }
}

/// A receiver's disk holding its old state: a log of its own, no snapshot yet.
fn receiver(mem: &MemFs) -> State {
    let wal = open_mem(mem, wal_cfg(&Path::new(DATA).join("wal")));
    fill(&wal, 1, 5);
    let log = summary(&wal);
    wal.close().expect("close");
    State {
        log,
        snapshot: None,
    }
}

/// Restarts the receiver as `Storage::open` does: finishes a committed install, opens the WAL.
fn restart(mem: &MemFs) -> (Arc<WalHandle>, State) {
    let fs: Arc<dyn FileSystem> = Arc::new(mem.clone());
    let data = Path::new(DATA);
    snapshot::finish_install(&*fs, data, &data.join("wal")).expect("finish an install");
    let wal = Manager::open_with(wal_cfg(&data.join("wal")), fs.clone(), None).expect("reopen");
    let log = summary(&wal);
    let snapshot = SnapshotFile::new(fs, data)
        .load()
        .expect("SM_SNAPSHOT reads")
        .map(|(m, i)| (m.last_log_id, i));
    (WalHandle::new(wal), State { log, snapshot })
}

fn install(s: &Sender, wal: &WalHandle) -> std::io::Result<Image> {
    let data = SnapshotData::local(s.image.clone(), s.wal.clone());
    snapshot::install(Path::new(DATA), wal, &s.meta, data)
}

/// Installs on a receiver whose file system loses power at its `crash_at`-th step (counted
/// from before the WAL opens); returns the steps taken once the WAL was open and once the
/// install returned, and whether it succeeded.
fn run(s: &Sender, mem: &MemFs, crash_at: i64) -> (u64, u64, bool) {
    let fs = CrashFs::on_this_thread(mem.clone(), crash_at);
    let cfg = wal_cfg(&Path::new(DATA).join("wal"));
    let Ok(wal) = Manager::open_with(cfg, Arc::new(fs.clone()), None) else {
        return (0, fs.steps(), false);
    };
    let wal = WalHandle::new(wal);
    let opened = fs.steps();
    let ok = install(s, &wal).is_ok();
    // Closing the reopened WAL afterwards is not part of the install.
    (opened, fs.steps(), ok)
}

#[test]
fn a_crash_at_any_step_of_an_install_leaves_the_old_or_the_new_state() {
    let s = sender();
    let dry = MemFs::new();
    let old = receiver(&dry);
    let (opened, total, ok) = run(&s, &dry, 0);
    assert!(ok, "the install without a crash succeeds");
    assert_eq!(restart(&dry).1, s.installed, "the install's result");
    assert!(total > opened + 10, "an install takes many steps");
    let mut outcomes = (0, 0);
    for k in opened + 1..=total {
        let mem = MemFs::new();
        assert_eq!(receiver(&mem), old);
        let (_, _, ok) = run(&s, &mem, k as i64);
        assert!(
            !ok,
            "step {k}: the power went out, the install cannot have succeeded"
        );
        let (wal, state) = restart(&mem);
        if state == old {
            outcomes.0 += 1;
        } else {
            assert_eq!(
                state, s.installed,
                "step {k}: neither the old nor the new state"
            );
            outcomes.1 += 1;
        }
        // The node goes on: a new install (e.g. the leader retrying) succeeds.
        install(&s, &wal).unwrap_or_else(|e| panic!("step {k}: install after restart: {e}"));
        drop(wal);
        assert_eq!(restart(&mem).1, s.installed, "step {k}: a later install");
    }
    assert!(
        outcomes.0 > 0 && outcomes.1 > 0,
        "crashes before and after the commit point: {outcomes:?}"
    );
}
