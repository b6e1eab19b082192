//! Self-repair of a damaged replica: a byte flipped in a sealed WAL segment of a follower or of
//! the leader ends with every node replaying the same entries, the damaged node back in sync and
//! `replog_repairing` at 0. While it repairs, the node serves no reads.

mod common;

use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use common::cluster::*;
use replog::core::ReplicaState;
use replog::raft::NodeId;
use replog::wal::{Entry, SegmentStatus};

/// Enough entries of ~400 bytes for several 64 KiB segments.
async fn fill(c: &TestCluster, tag: &str, n: usize) -> u64 {
    let mut last = 0;
    for i in 0..n / 10 {
        let batch = (0..10)
            .map(|j| record("t", format!("{tag}-{i}-{j}-{}", "x".repeat(400))))
            .collect();
        last = c.write(None, batch).await.last_seq;
    }
    last
}

/// A sealed segment in the middle of node `id`'s WAL: `(id, path)`.
fn middle_sealed(c: &TestCluster, id: NodeId) -> (u64, PathBuf) {
    let segs: Vec<_> = c.nodes[&id]
        .core()
        .wal()
        .unwrap()
        .segments()
        .into_iter()
        .filter(|s| s.status == SegmentStatus::Sealed)
        .collect();
    assert!(
        segs.len() >= 3,
        "node {id} has {} sealed segments",
        segs.len()
    );
    let s = &segs[segs.len() / 2];
    (s.id, s.file_path.clone())
}

fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// What node `addr`'s Raft service answers to a vote request (with an empty body).
async fn vote_answer(addr: std::net::SocketAddr) -> tonic::Status {
    use replog::proto::raft::{RaftMessage, raft_service_client::RaftServiceClient};
    let mut client = RaftServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let msg = RaftMessage {
        from: 99,
        body: Default::default(),
    };
    client.vote(msg).await.unwrap_err()
}

fn key(entries: &[Entry]) -> Vec<(u64, Vec<u8>)> {
    entries
        .iter()
        .map(|e| (e.sequence_number, e.data.clone()))
        .collect()
}

/// Every node repaired, in sync, with the same entries as every other.
async fn all_repaired_and_identical(c: &TestCluster, repaired: NodeId, upto: u64) {
    eventually("the damaged node repaired and in sync", || {
        let n = &c.nodes[&repaired];
        let done = !n.core().is_repairing()
            && n.core().metrics().repairing.get() == 0
            && n.core().wal().unwrap().damaged_segments().is_empty()
            && n.core().replica_state() == ReplicaState::InSync;
        async move { done }
    })
    .await;
    c.wait_applied(upto + 1).await;
    let reference = key(&c.entries(c.leader().await).await);
    assert_eq!(reference.len() as u64, upto, "the leader holds every write");
    for id in c.nodes.keys() {
        assert_eq!(key(&c.entries(*id).await), reference, "node {id}'s replay");
    }
    let wal = c.nodes[&repaired].core().wal().unwrap();
    assert_eq!(wal.metrics().segments_repaired.get(), 1);
    assert_eq!(wal.metrics().damaged_segments.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_found_damaged_on_restart_repairs_from_a_replica() {
    let mut c = TestCluster::start_with(3, ByteSize::kib(64)).await;
    fill(&c, "a", 600).await;
    let leader = c.leader().await;
    let f = *c.nodes.keys().find(|id| **id != leader).unwrap();
    let (_, path) = middle_sealed(&c, f);
    c.stop(f).await;
    flip_byte(&path);
    // Without its index the segment is scanned when the WAL opens, and the damage is found.
    std::fs::remove_file(path.with_extension("idx")).unwrap();
    // Raft re-applies the log since the last snapshot as it starts: that read waits while the
    // segment is fetched from a replica.
    c.restart(f).await;
    let last = fill(&c, "b", 100).await;
    all_repaired_and_identical(&c, f, last).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_follower_stays_in_the_repair_state_until_it_can_fetch() {
    let c = TestCluster::start_with(3, ByteSize::kib(64)).await;
    fill(&c, "a", 600).await;
    let leader = c.leader().await;
    let f = *c.nodes.keys().find(|id| **id != leader).unwrap();
    let (seg, path) = middle_sealed(&c, f);
    flip_byte(&path);
    c.isolate(f);
    let n = &c.nodes[&f];
    assert!(n.core().committed_entries(0, usize::MAX).await.is_err());
    assert!(n.core().wal().unwrap().is_damaged(seg));
    eventually("the node enters the repair state", || {
        let r = n.core().is_repairing() && n.core().metrics().repairing.get() == 1;
        async move { r }
    })
    .await;
    assert!(
        matches!(n.core().replica_state(), ReplicaState::Behind(why) if why.contains("repairing")),
        "a repairing node serves no reads"
    );
    let vote = vote_answer(c.peer_addrs[&f]).await;
    assert_eq!(vote.code(), tonic::Code::Unavailable, "{vote:?}");
    assert!(vote.message().contains("does not vote"), "{vote:?}");
    // The cluster goes on without it.
    fill(&c, "b", 50).await;
    c.heal();
    let last = fill(&c, "c", 50).await;
    all_repaired_and_identical(&c, f, last).await;
    // Repaired, it takes vote requests again (this one is refused only for its empty body).
    let vote = vote_answer(c.peer_addrs[&f]).await;
    assert_eq!(vote.code(), tonic::Code::InvalidArgument, "{vote:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_finds_a_damaged_segment_steps_down_and_repairs() {
    let c = TestCluster::start_with(3, ByteSize::kib(64)).await;
    fill(&c, "a", 600).await;
    let leader = c.leader().await;
    let (seg, path) = middle_sealed(&c, leader);
    flip_byte(&path);
    // A read of the damaged range finds it (the index still vouches for the segment).
    let err = c.nodes[&leader]
        .core()
        .committed_entries(0, usize::MAX)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("corrupted"), "{err}");
    assert!(c.nodes[&leader].core().wal().unwrap().is_damaged(seg));
    eventually("the damaged leader hands leadership over", || {
        let moved = !c.nodes[&leader].core().is_leader()
            && c.nodes
                .iter()
                .any(|(id, n)| *id != leader && n.core().is_leader());
        async move { moved }
    })
    .await;
    let last = fill(&c, "b", 100).await;
    all_repaired_and_identical(&c, leader, last).await;
    c.shutdown().await;
}
