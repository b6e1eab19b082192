//! Storage faults on a live node of a 3-node cluster: its fsync fails, its disk fills up, or
//! its write fails halfway and the machine then loses power (a torn tail). The node's log lives
//! on `MemFs`, the fault-injecting file system every WAL writer goes through.
//!
//! In every case the cluster keeps acknowledging writes through the other two, the faulty
//! node stops (a failed write or fsync is fatal for its log store, never retried) or refuses,
//! and once the fault is cleared and the node restarted, every node holds every acknowledged
//! write, identically.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::cluster::*;
use replog::raft::NodeId;
use replog::wal::Preallocate;

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Every fsync fails.
    Fsync,
    /// The disk is full.
    Enospc,
    /// A write fails with EIO, then power is lost keeping half of what was not synced.
    TornWrite,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    Leader,
    Follower,
}

/// Appends grow the files, so a power loss can keep part of an unsynced append (a torn tail).
fn growing_files(cfg: &mut replog::node::NodeConfig) {
    cfg.wal.preallocate = Preallocate::None;
}

async fn write_n(c: &TestCluster, tag: &str, n: usize, acked: &mut Vec<(u64, Vec<u8>)>) {
    for i in 0..n {
        let data = format!("{tag}-{i}").into_bytes();
        let w = c.write(None, vec![record("t", data.clone())]).await;
        acked.push((w.first_seq, data));
    }
}

fn inject(c: &TestCluster, id: NodeId, fault: Fault) {
    let mem = &c.mem[&id];
    match fault {
        Fault::Fsync => mem.faults().fail_sync.store(true, Ordering::SeqCst),
        Fault::Enospc => mem.set_capacity(0),
        Fault::TornWrite => mem.faults().fail_next_write.store(true, Ordering::SeqCst),
    }
}

fn clear(c: &TestCluster, id: NodeId, fault: Fault) {
    let mem = &c.mem[&id];
    mem.faults().fail_sync.store(false, Ordering::SeqCst);
    mem.faults().fail_next_write.store(false, Ordering::SeqCst);
    mem.set_capacity(u64::MAX);
    match fault {
        // A power loss that keeps half of each file's unsynced bytes.
        Fault::TornWrite => mem.crash_keeping(|unsynced| unsynced / 2),
        _ => mem.crash(),
    }
}

async fn fault_on_a_live_node(victim: Victim, fault: Fault) {
    let mut c = TestCluster::start_on_mem(3, growing_files).await;
    let mut acked = Vec::new();
    write_n(&c, "before", 20, &mut acked).await;
    let leader = c.leader().await;
    let id = match victim {
        Victim::Leader => leader,
        Victim::Follower => *c.nodes.keys().find(|id| **id != leader).unwrap(),
    };
    inject(&c, id, fault);
    // The cluster goes on through the other two (electing another leader if it must).
    write_n(&c, "during", 50, &mut acked).await;
    // The faulty node stopped or refused: it does not hold what was acknowledged meanwhile.
    let last = acked.last().unwrap().0;
    let faulty = &c.nodes[&id];
    let stopped = faulty.core().raft().fatal().is_some();
    if stopped {
        // What `replog serve` waits on to exit: it resolves, with why.
        let why = tokio::time::timeout(Duration::from_secs(60), faulty.failure())
            .await
            .expect("Node::failure resolves once Raft has stopped");
        assert!(!why.is_empty() && why != "raft stopped", "{why}");
    }
    let behind = faulty.core().next_seq() <= last;
    assert!(
        stopped || behind,
        "{fault:?} on the {victim:?}: node {id} neither stopped nor refused"
    );
    // Cleared and restarted (what an operator does once the disk is fixed), it catches up.
    let node = c.nodes.remove(&id).unwrap();
    let _ = node.shutdown().await;
    clear(&c, id, fault);
    c.restart(id).await;
    write_n(&c, "after", 10, &mut acked).await;
    let last = acked.last().unwrap().0;
    c.wait_applied(last + 1).await;
    let reference = c.entries(id).await;
    for (seq, data) in &acked {
        let e = reference.iter().find(|e| e.sequence_number == *seq);
        assert_eq!(
            e.map(|e| &e.data),
            Some(data),
            "{fault:?} on the {victim:?}: acknowledged {seq} on node {id}"
        );
    }
    for other in c.nodes.keys() {
        assert!(
            c.entries(*other).await == reference,
            "{fault:?} on the {victim:?}: node {other} differs from node {id}"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_fsync_fails_stops_and_loses_nothing() {
    fault_on_a_live_node(Victim::Follower, Fault::Fsync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_fsync_fails_stops_and_another_takes_over() {
    fault_on_a_live_node(Victim::Leader, Fault::Fsync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_full_disk_refuses_and_catches_up() {
    fault_on_a_live_node(Victim::Follower, Fault::Enospc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_a_full_disk_loses_nothing() {
    fault_on_a_live_node(Victim::Leader, Fault::Enospc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_on_a_follower_is_cut_at_recovery_and_refetched() {
    fault_on_a_live_node(Victim::Follower, Fault::TornWrite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_on_the_leader_is_cut_at_recovery_and_refetched() {
    fault_on_a_live_node(Victim::Leader, Fault::TornWrite).await;
}
