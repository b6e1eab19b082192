//! The write path of issue 11: writes coalesced at the leader keep their own results, a
//! producer's pipelined keyed writes land once and in order, the `Produce` stream and the
//! client's `Producer` survive a leader kill without loss, duplicates or reordering, and
//! `replog bench` drives a cluster of real processes.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::cluster::*;
use common::process::*;
use replog::client::{
    Ack, Client, ClientError, ClientOptions, NewEntry, Producer, ProducerOptions,
};
use replog::proto;
use replog::wal::ProducerKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_coalesced_at_the_leader_each_get_their_own_range() {
    let c = TestCluster::start(3).await;
    let leader = c.leader().await;
    let core = c.nodes[&leader].core().clone();
    // 200 writes at once, keyed and unkeyed, of 1 to 3 records each.
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let core = core.clone();
        tasks.push(tokio::spawn(async move {
            let n = 1 + i % 3;
            let records = (0..n)
                .map(|r| record("t", format!("w{i}-r{r}")))
                .collect::<Vec<_>>();
            let key = (i % 2 == 0).then_some(ProducerKey {
                id: 1000 + i,
                seq: 1,
            });
            let w = core.write(key, records).await.expect("write");
            (i, n, w)
        }));
    }
    let mut written = Vec::new();
    for t in tasks {
        written.push(t.await.unwrap());
    }
    // Ranges are disjoint, the right length, and together gap-free.
    let mut ranges: Vec<(u64, u64)> = written
        .iter()
        .map(|(_, n, w)| {
            assert_eq!(w.last_seq - w.first_seq + 1, *n, "{w:?}");
            assert!(!w.duplicate);
            (w.first_seq, w.last_seq)
        })
        .collect();
    ranges.sort();
    for pair in ranges.windows(2) {
        assert_eq!(pair[0].1 + 1, pair[1].0, "ranges overlap or leave a gap");
    }
    // Each write's records sit at its own range, on every node.
    let next = ranges.last().unwrap().1 + 1;
    c.wait_applied(next).await;
    for id in c.nodes.keys() {
        let by_seq: HashMap<u64, Vec<u8>> = c
            .entries(*id)
            .await
            .into_iter()
            .map(|e| (e.sequence_number, e.data))
            .collect();
        for (i, n, w) in &written {
            for r in 0..*n {
                assert_eq!(
                    by_seq.get(&(w.first_seq + r)).map(Vec::as_slice),
                    Some(format!("w{i}-r{r}").as_bytes()),
                    "node {id}: write {i} record {r}"
                );
            }
        }
    }
    // A retried key answers its original range.
    let (i, _, w) = written.iter().find(|(i, _, _)| i % 2 == 0).unwrap();
    let again = core
        .write(
            Some(ProducerKey {
                id: 1000 + i,
                seq: 1,
            }),
            vec![record("t", "retry")],
        )
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!((again.first_seq, again.last_seq), (w.first_seq, w.last_seq));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producers_pipelined_keys_land_in_order_and_each_retry_gets_its_own_result() {
    let c = TestCluster::start(3).await;
    let leader = c.leader().await;
    let core = c.nodes[&leader].core().clone();
    let id = 77;
    // Submitted one after another without waiting for the results: a producer's pipeline.
    let mut pending = Vec::new();
    for seq in 1..=12u64 {
        let p = core
            .submit_write(
                Some(ProducerKey { id, seq }),
                vec![record("p", format!("k{seq}"))],
            )
            .await
            .expect("submitted");
        pending.push(p);
    }
    let mut results = Vec::new();
    for p in pending {
        results.push(p.await.expect("written"));
    }
    for pair in results.windows(2) {
        assert!(
            pair[0].last_seq < pair[1].first_seq,
            "out of order: {results:?}"
        );
    }
    // Resending the whole pipeline (as after a leader change) writes nothing and answers each
    // key with its own sequence number.
    for (i, seq) in (1..=12u64).enumerate() {
        let w = core
            .write(Some(ProducerKey { id, seq }), vec![record("p", "again")])
            .await
            .unwrap();
        assert!(w.duplicate);
        assert_eq!(w.first_seq, results[i].first_seq, "key {seq}");
    }
    let next = results.last().unwrap().last_seq + 1;
    c.wait_applied(next).await;
    let copies = c
        .entries(leader)
        .await
        .iter()
        .filter(|e| e.tenant_id == "p")
        .count();
    assert_eq!(copies, 12);
    c.shutdown().await;
}

/// Drives a `Producer` of `n` entries through `client`, checking acks as they come; returns
/// (index, sequence) per entry.
async fn produce(client: &Client, n: usize, on_half: impl FnOnce()) -> Vec<(usize, u64)> {
    let producer = Producer::new(
        client,
        ProducerOptions {
            batch_max_entries: 50,
            ..ProducerOptions::default()
        },
    );
    type AckF =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Ack, ClientError>> + Send>>;
    let mut acks: Vec<AckF> = Vec::new();
    let mut on_half = Some(on_half);
    for i in 0..n {
        let entry = NewEntry {
            tenant: "prod".into(),
            operation: proto::Operation::Insert,
            data: format!("e{i}").into_bytes(),
        };
        acks.push(Box::pin(producer.send(entry).await.expect("buffered")));
        if i == n / 2 {
            // Half of them acknowledged before the fault.
            let ack = acks.pop().unwrap();
            let first = ack.await.expect("acknowledged before the fault");
            acks.push(Box::pin(std::future::ready(Ok(first))));
            if let Some(f) = on_half.take() {
                f();
            }
        }
    }
    let mut out = Vec::new();
    for (i, ack) in acks.into_iter().enumerate() {
        let a = ack.await.unwrap_or_else(|e| panic!("entry {i}: {e}"));
        out.push((i, a.sequence));
    }
    producer.close().await.expect("closed");
    out
}

#[test]
fn a_producer_through_a_follower_survives_a_leader_kill_without_loss_duplicates_or_reordering() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster_with(dir.path(), 3, &[]);
    let leader_id = status(&nodes[0].addr)["leader_id"].as_u64().unwrap();
    let leader = nodes.iter().position(|n| n.id == leader_id).unwrap();
    let follower = (leader + 1) % 3;
    // The producer starts on a follower (its writes are relayed), then follows the leader.
    let mut endpoints = vec![nodes[follower].addr.clone()];
    endpoints.extend(nodes.iter().map(|n| n.addr.clone()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = 4000;
    let acks = rt.block_on(async {
        let client = Client::new(&endpoints, ClientOptions::default()).unwrap();
        let killed = std::sync::Mutex::new(None);
        let acks = produce(&client, n, || {
            nodes[leader].kill();
            *killed.lock().unwrap() = Some(leader);
        })
        .await;
        assert!(killed.lock().unwrap().is_some());
        acks
    });
    // Acks come in send order with increasing sequence numbers.
    for pair in acks.windows(2) {
        assert!(pair[0].1 < pair[1].1, "acks out of order: {pair:?}");
    }
    // Every entry is on the survivors exactly once, in send order, at its acknowledged number.
    let last = acks.last().unwrap().1;
    for node in nodes.iter().filter(|p| p.id != leader_id) {
        let lines = replay_lines(&ok(&[
            "replay",
            "--tenant",
            "prod",
            "--min-sequence",
            &last.to_string(),
            "--endpoints",
            &node.addr,
        ]));
        let data: Vec<(u64, String)> = lines.into_iter().map(|(s, _, d)| (s, d)).collect();
        assert_eq!(
            data.len(),
            n,
            "node {}: entries lost or duplicated",
            node.id
        );
        for ((i, seq), (s, d)) in acks.iter().zip(&data) {
            assert_eq!(d, &format!("e{i}"), "node {}: order", node.id);
            assert_eq!(
                s, seq,
                "node {}: entry {i} not at its acknowledged number",
                node.id
            );
        }
    }
}

#[test]
fn replog_bench_produces_and_replays_against_a_cluster_of_processes() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster_with(dir.path(), 3, &[]);
    let endpoints = nodes
        .iter()
        .map(|n| n.addr.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let json = |out: &str| -> serde_json::Value { serde_json::from_str(out).expect(out) };
    let stream = json(&ok(&[
        "bench",
        "produce",
        "--count",
        "3000",
        "--producers",
        "2",
        "--keys",
        "-o",
        "json",
        "--endpoints",
        &endpoints,
    ]));
    assert_eq!(stream["mode"], "produce");
    assert_eq!(stream["acked_entries"], 3000);
    assert_eq!(stream["errors"], 0);
    assert!(stream["first_error"].is_null(), "{stream}");
    assert!(stream["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(stream["server_cpu_us_per_entry"].as_f64().unwrap() > 0.0);
    assert_eq!(stream["server_cpu_nodes"], 3);
    let unary = json(&ok(&[
        "bench",
        "produce",
        "--unary",
        "--count",
        "500",
        "--in-flight",
        "4",
        "--batch",
        "10",
        "-o",
        "json",
        "--endpoints",
        &endpoints,
    ]));
    assert_eq!(unary["mode"], "unary");
    assert_eq!(unary["acked_entries"], 500);
    // One endpoint given: the CPU figure still covers every member.
    let one = json(&ok(&[
        "bench",
        "produce",
        "--unary",
        "--count",
        "200",
        "-o",
        "json",
        "--endpoints",
        &nodes[1].addr,
    ]));
    assert_eq!(one["acked_entries"], 200);
    assert!(one["server_cpu_us_per_entry"].as_f64().unwrap() > 0.0);
    assert_eq!(one["server_cpu_nodes"], 3);
    let replay = json(&ok(&[
        "bench",
        "replay",
        "--tenant",
        "bench-0",
        "-o",
        "json",
        "--endpoints",
        &endpoints,
    ]));
    assert_eq!(replay["entries"], 3700);
    // Without a terminal, progress is plain lines on stderr (no bar, no escape codes): one a
    // second with the rate, p50, p99 and errors.
    let out = cli(
        &[
            "bench",
            "produce",
            "--duration",
            "2s",
            "--endpoints",
            &endpoints,
        ],
        b"",
        Duration::from_secs(120),
    );
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains('\x1b') && !err.contains('\r'), "{err:?}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        !lines.is_empty()
            && lines.iter().all(|l| l.contains(" entries/s  p50 ")
                && l.contains(" ms  p99 ")
                && l.contains("errors 0")),
        "{err}"
    );
    // A warm-up: written, marked as such on the progress lines, and not measured.
    let out = cli(
        &[
            "bench",
            "produce",
            "--warmup",
            "2s",
            "--duration",
            "2s",
            "-o",
            "json",
            "--endpoints",
            &endpoints,
        ],
        b"",
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{out:?}");
    let warmed = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(warmed["warmup_ms"], 2000.0);
    assert!(warmed["acked_entries"].as_u64().unwrap() > 0, "{warmed}");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.ends_with("(warm-up)"))
            && lines.last().is_some_and(|l| !l.contains("warm-up")),
        "{err}"
    );
    // Writes the cluster refuses (entries over limits.max_entry_bytes, 1 MiB) are counted, and
    // the report says why with the first one's status.
    let refused = json(&ok(&[
        "bench",
        "produce",
        "--unary",
        "--batch",
        "1",
        "--size",
        "1100000",
        "--duration",
        "1s",
        "-o",
        "json",
        "--endpoints",
        &endpoints,
    ]));
    assert_eq!(refused["acked_entries"], 0, "{refused}");
    assert!(refused["errors"].as_u64().unwrap() > 0, "{refused}");
    let first = refused["first_error"].as_str().unwrap_or_default();
    assert!(first.contains("max_entry_bytes"), "{refused}");
    // A bad flag is a usage error.
    fails(&["bench", "produce", "--producers", "0"], b"", 2);
}
