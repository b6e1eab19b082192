//! In-process clusters of real nodes over gRPC on loopback: replication, elections,
//! partitions, catch-up by segment shipping, membership changes and idempotent retries.

mod common;

use std::sync::Arc;

use common::cluster::*;
use replog::raft::Request;
use replog::wal::{Entry, ProducerKey};

/// Every running node holds exactly `expected`.
async fn assert_all_hold(c: &TestCluster, expected: &[Entry]) {
    for id in c.nodes.keys() {
        let got = c.entries(*id).await;
        assert_eq!(
            got.len(),
            expected.len(),
            "node {id} holds {} entries, expected {}",
            got.len(),
            expected.len()
        );
        assert!(got == expected, "node {id} differs from the reference");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_commit_10000_concurrent_writes_identically() {
    let c = Arc::new(TestCluster::start(3).await);
    c.leader().await;
    let clients = 16;
    let per_client = 10_000 / clients;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..per_client {
                let w = c
                    .write(
                        None,
                        vec![record(
                            &format!("tenant-{}", client % 4),
                            format!("c{client}-{i}"),
                        )],
                    )
                    .await;
                seqs.push(w.first_seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=10_000).collect::<Vec<u64>>(),
        "sequence numbers are unique and gap-free"
    );
    c.wait_applied(10_001).await;
    let reference = c.entries(1).await;
    assert_eq!(reference.len(), 10_000);
    assert!(reference.iter().all(|e| e.checksum_ok()));
    assert_all_hold(&c, &reference).await;
    Arc::into_inner(c).unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_the_old_one_catches_up() {
    let mut c = TestCluster::start(3).await;
    for i in 0..100 {
        c.write(None, vec![record("t", format!("before-{i}"))])
            .await;
    }
    let old = c.leader().await;
    c.stop(old).await;
    let rest: Vec<u64> = c.nodes.keys().copied().collect();
    let new = c.leader_among(&rest).await;
    assert_ne!(new, old);
    for i in 0..100 {
        c.write(None, vec![record("t", format!("after-{i}"))]).await;
    }
    c.restart(old).await;
    c.wait_applied(201).await;
    // sled kept its state: the restarted node applied what it missed, not the whole log.
    let reapplied = c.nodes[&old]
        .core()
        .state()
        .applied_since_open
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        reapplied < 150,
        "the restarted node re-applied {reapplied} entries"
    );
    let reference = c.entries(new).await;
    assert_eq!(reference.len(), 200);
    assert_all_hold(&c, &reference).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_minority_cannot_commit_and_heals_without_losing_writes() {
    let c = TestCluster::start(3).await;
    let mut acked = Vec::new();
    for i in 0..50 {
        acked.push(
            c.write(None, vec![record("t", format!("a-{i}"))])
                .await
                .first_seq,
        );
    }
    let leader = c.leader().await;
    // Cut the leader off from both others, both ways.
    c.isolate(leader);
    let isolated = &c.nodes[&leader];
    let stuck = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        isolated.core().write(None, vec![record("t", "lost?")]),
    )
    .await;
    assert!(
        !matches!(stuck, Ok(Ok(_))),
        "a cut-off leader must not commit: {stuck:?}"
    );
    let majority: Vec<u64> = c.nodes.keys().copied().filter(|id| *id != leader).collect();
    let mut new = c.leader_among(&majority).await;
    for i in 0..50 {
        // A slow machine may re-elect within the majority: a write refused with "not the
        // leader" was never proposed, so it is safe to send again to the new one.
        let mut tries = 0;
        let w = loop {
            tries += 1;
            assert!(tries <= 100, "no leader of the majority took write b-{i}");
            match c.nodes[&new]
                .core()
                .write(None, vec![record("t", format!("b-{i}"))])
                .await
            {
                Err(replog::core::CoreError::NotLeader { .. }) => {
                    new = c.leader_among(&majority).await;
                }
                r => break r.unwrap(),
            }
        };
        acked.push(w.first_seq);
    }
    c.heal();
    let last = *acked.iter().max().unwrap();
    c.wait_applied(last + 1).await;
    let reference = c.entries(new).await;
    for seq in &acked {
        assert!(
            reference.iter().any(|e| e.sequence_number == *seq),
            "acknowledged {seq} is missing"
        );
    }
    assert!(
        reference.iter().all(|e| e.data != b"lost?"),
        "the minority's write was never acknowledged and must not survive"
    );
    assert_all_hold(&c, &reference).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_truncation_receives_the_retained_segments() {
    let mut c = TestCluster::start_with(3, bytesize::ByteSize::kib(256)).await;
    c.write(None, vec![record("t", "first")]).await;
    let leader = c.leader().await;
    let lagging = *c.nodes.keys().find(|id| **id != leader).unwrap();
    c.stop(lagging).await;
    // 50,000 entries in batches of 100.
    let mut last = None;
    for b in 0..500 {
        let batch = (0..100)
            .map(|i| record(&format!("t{}", i % 7), format!("{b}-{i}-padding-padding")))
            .collect();
        last = Some(c.write(None, batch).await);
    }
    let last = last.unwrap();
    let leader = c.leader().await;
    let cut = last.last_seq - 20_000;
    let resp = c.nodes[&leader]
        .core()
        .raft()
        .propose(Request::Truncate { before: cut })
        .await
        .unwrap();
    assert_eq!(resp, replog::raft::Response::Truncated { log_start: cut });
    eventually("the leader deletes segments below the cut", || {
        let start = c.nodes[&leader].core().log_start().unwrap();
        async move { start > 1 && start <= cut }
    })
    .await;
    c.restart(lagging).await;
    c.wait_applied(last.last_seq + 1).await;
    let reference = c.entries(leader).await;
    assert_eq!(
        reference.first().map(|e| e.sequence_number),
        Some(c.nodes[&leader].core().log_start().unwrap())
    );
    assert!(reference.first().unwrap().sequence_number <= cut);
    assert_eq!(reference.last().unwrap().sequence_number, last.last_seq);
    let installs = c.nodes[&lagging]
        .core()
        .state()
        .snapshots_installed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        installs >= 1,
        "the follower caught up by a snapshot of segments"
    );
    let got = c.entries(lagging).await;
    assert!(
        got == reference,
        "the restarted follower holds {} entries from {:?}, the leader {} from {:?}",
        got.len(),
        got.first().map(|e| e.sequence_number),
        reference.len(),
        reference.first().map(|e| e.sequence_number)
    );
    // It keeps replicating normally afterwards.
    let w = c.write(None, vec![record("t", "after")]).await;
    c.wait_applied(w.last_seq + 1).await;
    assert_eq!(c.entries(lagging).await.last().unwrap().data, b"after");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_later_gets_everything_and_a_removed_one_stops_receiving() {
    // Small AppendEntries: catching up takes many split, pipelined requests.
    let mut c = TestCluster::start_tweaked(3, bytesize::ByteSize::mib(1), |cfg| {
        cfg.net.append_max_bytes = 2048
    })
    .await;
    for i in 0..300 {
        c.write(None, vec![record("t", format!("{i}"))]).await;
    }
    let leader = c.leader().await;
    let addr = c.start_new(4).await.core().peer_advertise().to_owned();
    c.nodes[&leader]
        .core()
        .add_node(4, &addr, false)
        .await
        .unwrap();
    assert_eq!(c.nodes[&leader].core().voters(), vec![1, 2, 3, 4]);
    c.wait_applied(301).await;
    let reference = c.entries(leader).await;
    assert_eq!(c.entries(4).await, reference);
    // Remove a follower other than the new node; it stops receiving entries.
    let removed = *c
        .nodes
        .keys()
        .find(|id| **id != leader && **id != 4)
        .unwrap();
    c.nodes[&leader].core().remove_node(removed).await.unwrap();
    let before = c.nodes[&removed].core().state().read(|i| i.next_seq);
    for i in 0..50 {
        c.write(None, vec![record("t", format!("late-{i}"))]).await;
    }
    let leader = c.leader_among(&[leader, 4]).await;
    let next = c.nodes[&leader].core().state().read(|i| i.next_seq);
    for id in [leader, 4] {
        let mut rx = c.nodes[&id].core().state().applied_seq();
        tokio::time::timeout(DEADLINE, rx.wait_for(|s| *s >= next))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        c.nodes[&removed].core().state().read(|i| i.next_seq),
        before,
        "a removed node received entries"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_applied_once_even_across_a_leader_change() {
    let mut c = TestCluster::start(3).await;
    let key = ProducerKey { id: 7, seq: 1 };
    let first = c.write(Some(key), vec![record("t", "once")]).await;
    assert!(!first.duplicate);
    let again = c.write(Some(key), vec![record("t", "once")]).await;
    assert!(again.duplicate);
    assert_eq!(
        (again.first_seq, again.last_seq),
        (first.first_seq, first.last_seq)
    );
    let old = c.leader().await;
    c.stop(old).await;
    let retried = c.write(Some(key), vec![record("t", "once")]).await;
    assert!(retried.duplicate, "a new leader must know the key");
    assert_eq!(retried.first_seq, first.first_seq);
    let next = c
        .write(
            Some(ProducerKey { id: 7, seq: 2 }),
            vec![record("t", "twice")],
        )
        .await;
    assert!(!next.duplicate);
    c.restart(old).await;
    c.wait_applied(next.last_seq + 1).await;
    for id in c.nodes.keys() {
        let e = c.entries(*id).await;
        assert_eq!(
            e.iter().filter(|e| e.data == b"once").count(),
            1,
            "node {id}"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_truncates_the_same_expired_prefix_on_every_replica() {
    let c = TestCluster::start_tweaked(3, bytesize::ByteSize::kib(16), |cfg| {
        cfg.wal.retention_hours = Some(1);
        cfg.retention_check_interval = std::time::Duration::from_millis(100);
    })
    .await;
    // Records stamped two hours ago, proposed as they are (the core stamps the time now).
    let two_hours_ago = replog::wal::now_us() - 2 * 3_600_000_000;
    let leader = c.leader().await;
    for i in 0..100 {
        let r = replog::raft::types::WriteRecord {
            tenant_id: "t".into(),
            operation: replog::wal::Operation::Insert,
            data: vec![b'o'; 500].into(),
            timestamp: two_hours_ago + i,
        };
        let write = Request::Write {
            producer: None,
            records: vec![r].into(),
        };
        c.nodes[&leader].core().raft().propose(write).await.unwrap();
    }
    let mut first_fresh = None;
    for i in 0..100 {
        let w = c.write(None, vec![record("t", format!("fresh-{i}"))]).await;
        first_fresh.get_or_insert(w.first_seq);
    }
    let first_fresh = first_fresh.unwrap();
    // Retention may cut in steps while the old segments seal; wait for every replica to agree.
    eventually("every replica drops the same expired prefix", || {
        let starts: Vec<(u64, u64)> = c
            .nodes
            .values()
            .map(|n| {
                (
                    n.core().state().read(|i| i.log_start),
                    n.core().log_start().unwrap(),
                )
            })
            .collect();
        async move { starts.iter().all(|s| *s == starts[0] && s.0 > 1 && s.1 > 1) }
    })
    .await;
    let cut = c.nodes[&1].core().state().read(|i| i.log_start);
    assert!(
        cut <= first_fresh,
        "retention cut {cut} is past the first fresh record {first_fresh}"
    );
    for id in c.nodes.keys() {
        let e = c.entries(*id).await;
        assert!(
            e.iter().any(|e| e.data == b"fresh-0"),
            "node {id} lost a record inside the retention"
        );
        assert!(e.first().unwrap().sequence_number >= cut);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_run_stops_cleanly_on_the_signal() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut cfg = replog::node::NodeConfig::new(1, "127.0.0.1:0".parse().unwrap(), dir.path());
    cfg.initial_members = Some([(1, "127.0.0.1:1".to_owned())].into());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(replog::node::run(cfg.clone(), async move {
        let _ = rx.await;
    }));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    tx.send(()).unwrap();
    tokio::time::timeout(DEADLINE, node)
        .await
        .expect("run returned")
        .unwrap()
        .unwrap();
    // Everything was closed: the same data directory opens again at once.
    let again = replog::node::Node::start(cfg).await.unwrap();
    again.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_replicate_and_survive_restarts_and_bad_commands_are_refused() {
    let mut c = TestCluster::start(3).await;
    let w = c
        .write(None, vec![record("t", "a"), record("t", "b")])
        .await;
    let leader = c.leader().await;
    let cp = Request::Checkpoint {
        name: "consumer-1".into(),
        tenant: Some("t".into()),
        sequence: w.last_seq,
    };
    let resp = c.nodes[&leader].core().raft().propose(cp).await.unwrap();
    assert_eq!(
        resp,
        replog::raft::Response::Checkpoint {
            sequence: w.last_seq
        }
    );
    for (bad, what) in [
        (
            Request::Checkpoint {
                name: "x".into(),
                tenant: None,
                sequence: w.last_seq + 1,
            },
            "checkpoint",
        ),
        (
            Request::Truncate {
                before: w.last_seq + 2,
            },
            "truncate",
        ),
    ] {
        let err = c.nodes[&leader]
            .core()
            .raft()
            .propose(bad)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("last committed sequence number is"),
            "{what}: {err}"
        );
    }
    let follower = *c.nodes.keys().find(|id| **id != leader).unwrap();
    c.stop(follower).await;
    c.restart(follower).await;
    c.wait_applied(w.last_seq + 1).await;
    eventually("the restarted follower has the checkpoint", || {
        let cp = c.nodes[&follower]
            .core()
            .state()
            .read(|i| i.checkpoints.get("consumer-1").map(|c| c.sequence));
        async move { cp == Some(w.last_seq) }
    })
    .await;
    for n in c.nodes.values() {
        assert!(n.core().state().read(|i| !i.checkpoints.contains_key("x")));
    }
    c.shutdown().await;
}
