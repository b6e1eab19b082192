//! The Raft log store and state machine: openraft's conformance suite, then our own
//! kill-and-reopen checks (the suite never reopens a store).

mod common;

use std::path::Path;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use replog::raft::{LogStore, StateMachine, Storage, TypeConfig};
use tempfile::TempDir;

fn wal_config() -> replog::wal::WalConfig {
    common::small_config(Path::new("unused"))
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let s = Storage::open(dir.path(), wal_config(), None, 1000)
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, s.log_store, s.state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_conformance_suite() {
    Suite::test_all(Builder)
        .await
        .expect("openraft's log store suite");
}

// ---- kill-and-reopen: a power loss at every mutating file-system step -------------------------

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use common::crash_fs::CrashFs;
use openraft::EntryPayload;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use replog::fs::{FileSystem, MemFs};
use replog::raft::WalHandle;
use replog::raft::durable::LocalDurable;
use replog::raft::meta::{MetaStore, RaftMeta};
use replog::raft::types::{Entry, LogId, Request, Vote, WriteRecord};
use replog::wal::{Manager, Operation};

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new_term_index(term, index)
}

fn entry(term: u64, index: u64) -> Entry {
    let payload = if index == 0 {
        EntryPayload::Blank
    } else {
        EntryPayload::Normal(Request::Write {
            producer: None,
            records: vec![WriteRecord {
                tenant_id: "t".into(),
                operation: Operation::Insert,
                data: format!("{term}-{index}").into_bytes().into(),
                timestamp: 1,
            }]
            .into(),
        })
    };
    Entry::new(log_id(term, index), payload)
}

fn open_store(fs: Arc<dyn FileSystem>) -> std::io::Result<LogStore> {
    let wal = Manager::open_with(common::small_config(common::mem_dir()), fs.clone(), None)
        .map_err(std::io::Error::other)?;
    let next = wal.acked_index() - 1;
    LogStore::open(
        WalHandle::new(wal),
        MetaStore::new(fs, Path::new("/meta")),
        Arc::new(AtomicU64::new(0)),
        None,
        LocalDurable::new(next),
    )
}

/// What the workload was told is durable.
#[derive(Default, Debug)]
struct Acked {
    vote: Option<Vote>,
    entries: BTreeMap<u64, LogId>,
    purged: Option<LogId>,
}

async fn append(
    store: &mut LogStore,
    entries: Vec<Entry>,
    acked: &mut Acked,
) -> std::io::Result<()> {
    let ids: Vec<LogId> = entries.iter().map(|e| e.log_id).collect();
    let (tx, rx) = TypeConfig::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await?;
    rx.await.map_err(std::io::Error::other)??;
    for id in ids {
        acked.entries.insert(id.index, id);
    }
    Ok(())
}

async fn workload(fs: Arc<dyn FileSystem>, acked: &mut Acked) -> std::io::Result<()> {
    let mut store = open_store(fs)?;
    store.save_vote(&Vote::new(1, 1)).await?;
    acked.vote = Some(Vote::new(1, 1));
    append(&mut store, (0..3).map(|i| entry(1, i)).collect(), acked).await?;
    append(&mut store, (3..7).map(|i| entry(1, i)).collect(), acked).await?;
    store.save_vote(&Vote::new(2, 2)).await?;
    acked.vote = Some(Vote::new(2, 2));
    store.truncate_after(Some(log_id(1, 4))).await?;
    acked.entries.retain(|i, _| *i <= 4);
    append(&mut store, (5..7).map(|i| entry(2, i)).collect(), acked).await?;
    store.purge(log_id(1, 2)).await?;
    acked.purged = Some(log_id(1, 2));
    acked.entries.retain(|i, _| *i > 2);
    append(&mut store, vec![entry(2, 7)], acked).await?;
    Ok(())
}

/// Every log id the workload ever writes at an index.
fn written(index: u64) -> Vec<LogId> {
    match index {
        0..=4 => vec![log_id(1, index)],
        5 | 6 => vec![log_id(1, index), log_id(2, index)],
        _ => vec![log_id(2, index)],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_store_survives_a_power_loss_at_every_step() {
    for n in 1i64.. {
        let fs = CrashFs::new(MemFs::new(), n);
        let mut acked = Acked::default();
        let done = workload(Arc::new(fs.clone()), &mut acked).await;
        if done.is_ok() && !fs.crashed() {
            assert!(n > 20, "the workload crashed only {} times", n - 1);
            return;
        }
        // Reopen on what the power loss left.
        let mut store = open_store(Arc::new(fs.mem.clone()))
            .unwrap_or_else(|e| panic!("step {n}: reopen failed: {e}"));
        let vote = store.read_vote().await.unwrap();
        assert!(
            vote >= acked.vote,
            "step {n}: vote {vote:?} is older than the acknowledged {:?}",
            acked.vote
        );
        let state = store.get_log_state().await.unwrap();
        assert!(
            state.last_purged_log_id >= acked.purged,
            "step {n}: purge point went back"
        );
        let from = state.last_purged_log_id.map_or(0, |p| p.index + 1);
        let to = state.last_log_id.map_or(0, |l| l.index + 1);
        let present = store.try_get_log_entries(from..to).await.unwrap();
        let indexes: Vec<u64> = present.iter().map(|e| e.log_id.index).collect();
        assert_eq!(
            indexes,
            (from..to).collect::<Vec<_>>(),
            "step {n}: a hole in the log"
        );
        for e in &present {
            assert!(
                written(e.log_id.index).contains(&e.log_id),
                "step {n}: {:?} was never written",
                e.log_id
            );
        }
        for (index, id) in acked.entries.iter().filter(|(i, _)| **i >= from) {
            let got = present
                .iter()
                .find(|e| e.log_id.index == *index)
                .map(|e| e.log_id);
            assert_eq!(got, Some(*id), "step {n}: acknowledged entry {id} lost");
        }
    }
}

#[test]
fn raft_meta_is_old_or_new_after_a_power_loss_at_every_step() {
    let metas: Vec<RaftMeta> = (1..=3)
        .map(|t| RaftMeta {
            vote: Some(Vote::new(t, t)),
            committed: Some(log_id(t, t * 10)),
            purged: Some(log_id(t, t)),
        })
        .collect();
    for n in 1i64.. {
        let fs = CrashFs::new(MemFs::new(), n);
        let store = MetaStore::new(Arc::new(fs.clone()), Path::new("/meta"));
        let mut last_acked = RaftMeta::default();
        let mut in_flight = None;
        for m in &metas {
            in_flight = Some(m.clone());
            if store.store(m).is_err() {
                break;
            }
            last_acked = m.clone();
            in_flight = None;
        }
        if in_flight.is_none() && !fs.crashed() {
            assert!(n > 12, "only {} crash points", n - 1);
            return;
        }
        let loaded = MetaStore::new(Arc::new(fs.mem.clone()), Path::new("/meta"))
            .load()
            .unwrap_or_else(|e| panic!("step {n}: {e}"));
        assert!(
            loaded == last_acked || Some(&loaded) == in_flight.as_ref(),
            "step {n}: loaded {loaded:?}, acknowledged {last_acked:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_is_reported_to_raft_and_is_fatal() {
    let mem = MemFs::new();
    let mut store = open_store(Arc::new(mem.clone())).unwrap();
    let mut acked = Acked::default();
    append(&mut store, vec![entry(1, 0), entry(1, 1)], &mut acked)
        .await
        .unwrap();
    mem.faults()
        .fail_sync
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = append(&mut store, vec![entry(1, 2)], &mut acked).await;
    assert!(
        failed.is_err(),
        "an entry whose fsync failed was reported flushed"
    );
    // Never retried silently: the store refuses every later write, even once fsync works again.
    mem.faults()
        .fail_sync
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        append(&mut store, vec![entry(1, 3)], &mut acked)
            .await
            .is_err()
    );
    assert!(store.save_vote(&Vote::new(2, 2)).await.is_err());
    assert_eq!(acked.entries.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_vote_and_committed_saves_never_lose_each_other() {
    let mem = MemFs::new();
    let store = open_store(Arc::new(mem.clone())).unwrap();
    let mut tasks = Vec::new();
    for i in 1..=20u64 {
        let mut votes = store.clone();
        tasks.push(tokio::spawn(async move {
            votes.save_vote(&Vote::new(i, 1)).await
        }));
        let mut commits = store.clone();
        // Spaced past the once-a-second limit would take too long; the first save is always due.
        tasks.push(tokio::spawn(async move {
            commits.save_committed(Some(log_id(1, i))).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let on_disk = MetaStore::new(Arc::new(mem), Path::new("/meta"))
        .load()
        .unwrap();
    assert_eq!(
        on_disk,
        store.meta(),
        "what was published is what is on disk"
    );
    assert!(
        on_disk.vote.is_some() && on_disk.committed.is_some(),
        "{on_disk:?}"
    );
}
