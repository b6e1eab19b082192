//! Self-repair through the binary: three `replog serve` processes with a 1 s scrub. A byte
//! flipped in a sealed segment of the leader is found by the scrubber, the leader steps down and
//! repairs; a follower killed, damaged and restarted repairs as it starts. Each ends with every
//! node replaying the same entries, in sync, and `replog_repairing` at 0.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::*;

const SYNC: Duration = Duration::from_secs(60);

const CONFIG: &str =
    "wal:\n  segment_size: 64KiB\nrepair:\n  scrub_interval: 1s\n  scrub_rate: 64MiB\n";

/// Restarts node `id` on its old addresses (the others know it there).
fn restart(id: u64, dir: &Path, listen: &str, peer: &str) -> ServeProc {
    let cfg = dir.join("replog.yaml");
    ServeProc::start(
        id,
        dir,
        listen,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--no-init",
            "--peer-listen",
            peer,
        ],
    )
}

/// A sealed segment in the middle of a node's WAL (the segments are listed by file name).
fn middle_sealed(node: &ServeProc) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(node.data_dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 4, "{} segments", segs.len());
    segs[segs.len() / 2].clone()
}

fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

fn write_lines(endpoint: &str, tag: &str, n: usize) {
    let input: String = (0..n)
        .map(|i| format!("{tag}-{i}-{}\n", "y".repeat(100)))
        .collect();
    ok_in(
        &["write", "--tenant", "t", "--endpoints", endpoint],
        input.as_bytes(),
    );
}

fn replay_all(endpoint: &str) -> Vec<(u64, String, String)> {
    replay_lines(&ok(&["replay", "--endpoints", endpoint]))
}

fn repaired(node: &ServeProc, times: f64) -> bool {
    node.metric("replog_repairing") == 0.0
        && node.metric("wal_damaged_segments") == 0.0
        && node.metric("wal_segments_repaired_total") == times
}

#[test]
fn damaged_segments_of_the_leader_and_of_a_follower_are_repaired_from_replicas() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("replog.yaml"), CONFIG).unwrap();
    let cfg = dir.join("replog.yaml");
    let mut nodes = start_cluster_with(dir, 3, &["--config", cfg.to_str().unwrap()]);
    let ids = [1, 2, 3];
    write_lines(&nodes[0].addr, "a", 3000);

    // The leader: the scrubber finds the damage, leadership moves, the segment is refetched.
    let leader_id = status(&nodes[0].addr)["leader_id"].as_u64().unwrap();
    let leader = nodes.iter().position(|n| n.id == leader_id).unwrap();
    flip_byte(&middle_sealed(&nodes[leader]));
    wait_until("the damaged leader repaired", SYNC, || {
        repaired(&nodes[leader], 1.0)
    });
    let other = (leader + 1) % 3;
    wait_until("a new leader, every member in sync", SYNC, || {
        let s = status(&nodes[other].addr);
        all_in_sync(&s, &ids) && s["leader_id"].as_u64() != Some(leader_id)
    });

    // A follower: killed, damaged (its index gone, so the open scans it), restarted.
    let leader_id = status(&nodes[0].addr)["leader_id"].as_u64().unwrap();
    let f = nodes.iter().position(|n| n.id != leader_id).unwrap();
    nodes[f].kill();
    let seg = middle_sealed(&nodes[f]);
    flip_byte(&seg);
    std::fs::remove_file(seg.with_extension("idx")).unwrap();
    // On its old address: the others know it there.
    let (id, addr, peer) = (
        nodes[f].id,
        nodes[f].addr.clone(),
        nodes[f].peer_addr.clone(),
    );
    nodes[f] = restart(id, dir, &addr, &peer);
    write_lines(&nodes[other].addr, "b", 200);
    wait_until("the damaged follower repaired", SYNC, || {
        repaired(&nodes[f], 1.0)
    });
    wait_until(
        "every member in sync and caught up after the repairs",
        SYNC,
        || {
            let s = status(&nodes[f].addr);
            all_in_sync(&s, &ids) && ids.iter().all(|id| caught_up(&s, *id))
        },
    );

    let reference = replay_all(&nodes[0].addr);
    assert_eq!(reference.len(), 3200);
    for n in &nodes {
        assert_eq!(replay_all(&n.addr), reference, "node {}'s replay", n.id);
    }
    for n in &mut nodes {
        n.stop();
    }
}
