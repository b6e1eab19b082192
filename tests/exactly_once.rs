//! Keyed writes land exactly once whatever happens to the request that carried them: a caller
//! that goes away while its write replicates, concurrent retries, a leader cut off mid-write.

mod common;

use std::time::Duration;

use common::cluster::*;
use replog::core::CoreError;
use replog::raft::NodeId;
use replog::wal::ProducerKey;

/// How many entries with `data` each running node holds (after all applied `next_seq`).
async fn copies_everywhere(c: &TestCluster, next_seq: u64, data: &[u8]) -> Vec<(NodeId, usize)> {
    c.wait_applied(next_seq).await;
    let mut out = Vec::new();
    for id in c.nodes.keys() {
        let n = c
            .entries(*id)
            .await
            .iter()
            .filter(|e| e.data == data)
            .count();
        out.push((*id, n));
    }
    out
}

/// Elections far slower than the test: the leader stays leader while it cannot replicate.
fn slow_elections(cfg: &mut replog::node::NodeConfig) {
    cfg.raft.election_timeout_min = Duration::from_secs(20);
    cfg.raft.election_timeout_max = Duration::from_secs(25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_write_whose_caller_went_away_is_not_proposed_again() {
    let c = TestCluster::start_tweaked(3, bytesize::ByteSize::mib(1), slow_elections).await;
    let leader = c.leader().await;
    c.write(None, vec![record("t", "warm-up")]).await;
    let key = ProducerKey { id: 42, seq: 1 };
    c.isolate(leader);
    let core = c.nodes[&leader].core().clone();
    // The caller gives up while the write cannot commit (a client deadline, a forwarding
    // follower killed): its future is dropped with the proposal still in Raft.
    let first = tokio::time::timeout(
        Duration::from_millis(200),
        core.write(Some(key), vec![record("t", "once")]),
    )
    .await;
    assert!(first.is_err(), "a write cannot commit while cut off");
    let retry = {
        let core = core.clone();
        tokio::spawn(async move { core.write(Some(key), vec![record("t", "once")]).await })
    };
    // Not a condition to wait for: it only gives a retry that would propose again the time
    // to do so before the heal (the assertions below hold however long it takes).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        core.keyed_writes_in_flight(),
        1,
        "the first proposal is owned by the leader"
    );
    c.heal();
    let w = tokio::time::timeout(DEADLINE, retry)
        .await
        .expect("the retry is answered")
        .unwrap()
        .expect("the retry gets the first proposal's outcome");
    assert!(w.duplicate, "the retry answers the first attempt's result");
    for (id, n) in copies_everywhere(&c, w.last_seq + 1, b"once").await {
        assert_eq!(n, 1, "node {id} holds {n} copies of a keyed write");
    }
    assert_eq!(core.keyed_writes_in_flight(), 0);
    assert_eq!(
        core.state()
            .duplicate_keys_applied
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_one_key_share_one_proposal() {
    let c = TestCluster::start_tweaked(3, bytesize::ByteSize::mib(1), slow_elections).await;
    let leader = c.leader().await;
    let core = c.nodes[&leader].core().clone();
    let key = ProducerKey { id: 9, seq: 5 };
    c.isolate(leader);
    let tries: Vec<_> = (0..8)
        .map(|_| {
            let core = core.clone();
            tokio::spawn(async move { core.write(Some(key), vec![record("t", "shared")]).await })
        })
        .collect();
    c.heal();
    let mut results = Vec::new();
    for t in tries {
        results.push(t.await.unwrap().expect("every try is answered"));
    }
    let firsts: Vec<u64> = results.iter().map(|w| w.first_seq).collect();
    assert!(
        firsts.iter().all(|f| *f == firsts[0]),
        "one result for all: {firsts:?}"
    );
    assert_eq!(results.iter().filter(|w| !w.duplicate).count(), 1);
    for (id, n) in copies_everywhere(&c, results[0].last_seq + 1, b"shared").await {
        assert_eq!(n, 1, "node {id} holds {n} copies");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_write_cut_off_with_its_leader_is_retryable_and_lands_once() {
    let c = TestCluster::start(3).await;
    let old = c.leader().await;
    c.write(None, vec![record("t", "warm-up")]).await;
    // The leader cut off from both followers: they elect another.
    c.isolate(old);
    let key = ProducerKey { id: 77, seq: 1 };
    let stuck = {
        let core = c.nodes[&old].core().clone();
        tokio::spawn(async move { core.write(Some(key), vec![record("t", "cut")]).await })
    };
    let majority: Vec<NodeId> = c.nodes.keys().copied().filter(|id| *id != old).collect();
    let new = c.leader_among(&majority).await;
    let w = c.nodes[&new]
        .core()
        .write(Some(key), vec![record("t", "cut")])
        .await
        .expect("the new leader takes the retry");
    c.heal();
    // The old leader's attempt ends with a retryable answer (never a refusal).
    match tokio::time::timeout(DEADLINE, stuck)
        .await
        .expect("answered")
        .unwrap()
    {
        Ok(first) => assert_eq!(first.first_seq, w.first_seq),
        Err(CoreError::OutcomeUnknown { .. } | CoreError::NotLeader { .. }) => {}
        Err(e) => panic!("the cut-off attempt must end retryable, got: {e}"),
    }
    for (id, n) in copies_everywhere(&c, w.last_seq + 1, b"cut").await {
        assert_eq!(n, 1, "node {id} holds {n} copies");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_answers_its_waiting_writes_before_the_partition_heals() {
    let c = TestCluster::start(3).await;
    let old = c.leader().await;
    c.write(None, vec![record("t", "warm-up")]).await;
    c.isolate(old);
    let key = ProducerKey { id: 78, seq: 1 };
    // Proposed at once, inside the leader's lease: it waits for a quorum that never comes.
    let stuck = {
        let core = c.nodes[&old].core().clone();
        tokio::spawn(async move { core.write(Some(key), vec![record("t", "wait")]).await })
    };
    // Still cut off, the old leader answers: outcome unknown (or, had the lease run out before
    // the proposal, not the leader). Both are retryable; neither waits for the heal.
    match tokio::time::timeout(DEADLINE, stuck)
        .await
        .expect("answered while the partition lasts")
        .unwrap()
    {
        Err(CoreError::OutcomeUnknown { .. } | CoreError::NotLeader { .. }) => {}
        other => panic!("a cut-off leader must answer retryable, got: {other:?}"),
    }
    let majority: Vec<NodeId> = c.nodes.keys().copied().filter(|id| *id != old).collect();
    let new = c.leader_among(&majority).await;
    let w = c.nodes[&new]
        .core()
        .write(Some(key), vec![record("t", "wait")])
        .await
        .expect("the retry lands on the new leader");
    c.heal();
    for (id, n) in copies_everywhere(&c, w.last_seq + 1, b"wait").await {
        assert_eq!(n, 1, "node {id} holds {n} copies");
    }
    c.shutdown().await;
}

/// Elections that take a few seconds: a restarted node is back well before.
fn unhurried_elections(cfg: &mut replog::node::NodeConfig) {
    cfg.raft.election_timeout_min = Duration::from_secs(3);
    cfg.raft.election_timeout_max = Duration::from_secs(4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_does_not_propose_again_a_key_it_held_before() {
    let mut c =
        TestCluster::start_tweaked(3, bytesize::ByteSize::mib(1), unhurried_elections).await;
    let leader = c.leader().await;
    c.write(None, vec![record("t", "warm-up")]).await;
    c.isolate(leader);
    let key = ProducerKey { id: 5, seq: 1 };
    // Appended (durably) on the leader only, then the leader restarts: its new process has
    // never seen the key in flight.
    let first = tokio::time::timeout(
        Duration::from_millis(300),
        c.nodes[&leader]
            .core()
            .write(Some(key), vec![record("t", "held")]),
    )
    .await;
    assert!(first.is_err(), "a write cannot commit while cut off");
    c.stop(leader).await;
    // Restarted, still cut off from the others (their switches block it).
    c.restart(leader).await;
    let restarted = c.nodes[&leader].core().clone();
    let w = {
        let retry = c.write(Some(key), vec![record("t", "held")]);
        tokio::pin!(retry);
        // The retry lands wherever a leader takes it: the others, once they elect one, or the
        // restarted node if it led again at once and proposed the key a second time (then the heal
        // lets both copies commit, which the check below catches).
        loop {
            tokio::select! {
                w = &mut retry => break w,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    if restarted.keyed_writes_in_flight() > 0 {
                        c.heal();
                    }
                }
            }
        }
    };
    c.heal();
    for (id, n) in copies_everywhere(&c, w.last_seq + 1, b"held").await {
        assert_eq!(n, 1, "node {id} holds {n} copies");
    }
    c.shutdown().await;
}
