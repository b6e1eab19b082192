//! Self-repair of a damaged replica: a node whose WAL holds a damaged sealed
//! segment fetches that range from a healthy replica instead of refusing to run.
//!
//! - **Found** by a read (replay, a Raft log read), by recovery (a segment without a valid
//!   index that does not scan), or by the scrubber, which reads every sealed segment every
//!   `repair.scrub_interval` at most `repair.scrub_rate` bytes per second.
//! - **Repair state.** While any segment is damaged the node does not campaign (its election
//!   timer is off), refuses votes, serves no reads (`replica_state` says why), shows role
//!   `repairing` in `cluster status` and `replog_repairing` 1. A leader first hands leadership to
//!   the most caught-up voter. It keeps accepting appends as a follower: its tail stays current.
//! - **Repair.** For each damaged segment, newest first (a repaired successor anchors its
//!   predecessor), it asks the leader, then every other member, for the segment's frames
//!   (`FetchFrames`), and hands them to [`crate::wal::Manager::repair_segment`], which checks
//!   them against the intact log before swapping the file. When none is left the node votes,
//!   campaigns and serves reads again.
//!
//! A single-node cluster has no replica to ask: it stays in the repair state and logs why; the
//! operator restores the segment from a backup.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Core;
use crate::raft::network::Network;
use crate::raft::{NodeId, WalHandle};
use crate::wal::DamagedSegment;

/// How often the repair task looks for damaged segments.
const POLL: Duration = Duration::from_millis(200);
/// How long one fetch from a peer may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a leader waits for its leadership to move before it tries again.
const STEP_DOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a round in which no segment could be repaired.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How often a node that cannot repair says so again.
const COMPLAIN_EVERY: Duration = Duration::from_secs(30);

/// The `repair` section of the configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepairConfig {
    /// How often every sealed segment is read and checked; `0s` turns the scrubber off.
    /// Default 24h (the first pass starts one interval after the node starts).
    #[serde(with = "humantime_serde")]
    pub scrub_interval: Duration,
    /// Bytes per second the scrubber reads at most. Default 32MiB.
    pub scrub_rate: ByteSize,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            scrub_interval: Duration::from_secs(24 * 3600),
            scrub_rate: ByteSize::mib(32),
        }
    }
}

/// Whether the node is repairing; shared with the Raft service (which refuses votes).
#[derive(Default)]
pub struct RepairState {
    repairing: Arc<AtomicBool>,
}

impl RepairState {
    pub fn is_repairing(&self) -> bool {
        self.repairing.load(Ordering::Acquire)
    }

    pub fn flag(&self) -> Arc<AtomicBool> {
        self.repairing.clone()
    }
}

/// Watches for damaged segments and repairs them, until the node stops.
pub(crate) async fn run(core: Arc<Core>, max_fetch_bytes: usize, mut stop: watch::Receiver<bool>) {
    let mut complained: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(POLL) => {}
        }
        let Ok(wal) = core.wal.get() else {
            continue; // a snapshot install is swapping the WAL
        };
        let damaged = wal.damaged_segments();
        drop(wal);
        if damaged.is_empty() {
            if core.repair.is_repairing() {
                leave(&core);
            } else {
                // A repair done before Raft started (`before_raft`) may have left it set.
                core.metrics.repairing.set(0);
            }
            continue;
        }
        if !core.repair.is_repairing() {
            enter(&core, &damaged);
        }
        if core.is_leader() {
            match core.raft.step_down(STEP_DOWN_TIMEOUT).await {
                Ok(to) => tracing::warn!(to, "leadership handed over to repair the WAL"),
                Err(e) => {
                    if complained.is_none_or(|t| t.elapsed() >= COMPLAIN_EVERY) {
                        complained = Some(Instant::now());
                        tracing::error!(error = %e, "a leader with a damaged WAL cannot step down; it keeps leading and its reads of the damaged range fail");
                    }
                    pause(&mut stop, RETRY_PAUSE).await;
                }
            }
            continue;
        }
        let peers = peers_leader_first(&core);
        let repaired = repair_all(
            &core.net,
            &core.wal,
            &peers,
            &damaged,
            max_fetch_bytes,
            &mut complained,
        )
        .await;
        if repaired == 0 {
            pause(&mut stop, RETRY_PAUSE).await;
        }
    }
}

async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        () = tokio::time::sleep(d) => {}
    }
}

/// Enters the repair state at once if the WAL holds damage when the node starts (before the
/// services run, so it never votes with a damaged log).
pub(crate) fn enter_if_damaged(core: &Core) {
    let damaged = core
        .wal
        .get()
        .map(|w| w.damaged_segments())
        .unwrap_or_default();
    if !damaged.is_empty() {
        enter(core, &damaged);
    }
}

fn enter(core: &Core, damaged: &[DamagedSegment]) {
    core.repair.repairing.store(true, Ordering::Release);
    core.raft.allow_elections(false);
    core.metrics.repairing.set(1);
    for d in damaged {
        tracing::warn!(
            segment = d.segment,
            first_index = d.first_index,
            next_index = d.next_index,
            offset = d.offset,
            kind = %d.kind,
            "repair state: not voting or serving reads until the damaged WAL segment is repaired"
        );
    }
}

fn leave(core: &Core) {
    core.raft.allow_elections(true);
    core.repair.repairing.store(false, Ordering::Release);
    core.metrics.repairing.set(0);
    tracing::info!("WAL repaired: voting and serving reads again");
}

/// The other members, the leader first (it holds every committed entry).
fn peers_leader_first(core: &Core) -> Vec<(NodeId, String)> {
    let status = core.status();
    let mut peers: Vec<(NodeId, String)> = status
        .members
        .iter()
        .filter(|(id, _)| **id != core.id)
        .map(|(id, a)| (*id, a.clone()))
        .collect();
    peers.sort_by_key(|(id, _)| Some(*id) != status.leader);
    peers
}

/// One pass over `damaged`, newest first (a repaired successor anchors its predecessor);
/// failures are logged at most every `COMPLAIN_EVERY`. Returns how many were repaired.
async fn repair_all(
    net: &Network,
    wal: &WalHandle,
    peers: &[(NodeId, String)],
    damaged: &[DamagedSegment],
    max_bytes: usize,
    complained: &mut Option<Instant>,
) -> usize {
    let mut repaired = 0;
    for d in damaged.iter().rev() {
        match fetch_and_repair(net, wal, peers, d, max_bytes).await {
            Ok(from) => {
                repaired += 1;
                tracing::info!(
                    segment = d.segment,
                    from,
                    "WAL segment repaired from a replica"
                );
            }
            Err(e) => {
                if complained.is_none_or(|t| t.elapsed() >= COMPLAIN_EVERY) {
                    *complained = Some(Instant::now());
                    tracing::error!(segment = d.segment, error = %e, "cannot repair a damaged WAL segment yet");
                }
            }
        }
    }
    repaired
}

/// Asks `peers` in turn for `d`'s frames until one's repair the segment; returns that peer.
async fn fetch_and_repair(
    net: &Network,
    wal: &WalHandle,
    peers: &[(NodeId, String)],
    d: &DamagedSegment,
    max_bytes: usize,
) -> Result<NodeId, String> {
    if peers.is_empty() {
        return Err("no other member to fetch the frames from".to_owned());
    }
    let mut errors = Vec::new();
    for (peer, addr) in peers {
        let frames = match net
            .fetch_frames(
                *peer,
                addr,
                (d.first_index, d.fetch_last),
                max_bytes,
                FETCH_TIMEOUT,
            )
            .await
        {
            Ok(f) => f,
            Err(e) => {
                errors.push(format!("node {peer}: {e}"));
                continue;
            }
        };
        let wal = wal.get().map_err(|e| e.to_string())?;
        let segment = d.segment;
        let done = tokio::task::spawn_blocking(move || wal.repair_segment(segment, &frames))
            .await
            .map_err(|e| e.to_string())?;
        match done {
            Ok(()) => return Ok(*peer),
            Err(e) => errors.push(format!("node {peer}: {e}")),
        }
    }
    Err(errors.join("; "))
}

/// Before Raft runs: openraft reads the log while it starts (to re-apply entries since the last
/// snapshot), and a read of a damaged segment waits for its repair. This repairs from the
/// members of the last applied membership meanwhile; it returns once nothing is damaged (the
/// caller drops it if Raft started first).
pub(crate) async fn before_raft(
    id: NodeId,
    net: Network,
    wal: Arc<WalHandle>,
    members: Vec<(NodeId, String)>,
    max_bytes: usize,
    metrics: crate::metrics::NodeMetrics,
) {
    let peers: Vec<(NodeId, String)> = members.into_iter().filter(|(m, _)| *m != id).collect();
    let mut complained: Option<Instant> = None;
    loop {
        let damaged = wal.get().map(|w| w.damaged_segments()).unwrap_or_default();
        if damaged.is_empty() {
            metrics.repairing.set(0);
            return;
        }
        metrics.repairing.set(1);
        let repaired = repair_all(&net, &wal, &peers, &damaged, max_bytes, &mut complained).await;
        if repaired == 0 {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// Reads every sealed segment every `interval`, pacing itself to `rate` bytes per second; a
/// damaged one is recorded, and the repair task takes it from there.
pub(crate) async fn scrub(
    core: Arc<Core>,
    interval: Duration,
    rate: u64,
    mut stop: watch::Receiver<bool>,
) {
    let rate = rate.max(1);
    loop {
        pause(&mut stop, interval).await;
        if *stop.borrow() {
            return;
        }
        let Ok(wal) = core.wal.get() else { continue };
        let ids = wal.sealed_segments();
        drop(wal);
        let started = Instant::now();
        let (mut bytes, mut damaged) = (0u64, 0usize);
        for id in ids {
            if *stop.borrow() {
                return;
            }
            let Ok(wal) = core.wal.get() else { break };
            let checked = tokio::task::spawn_blocking(move || {
                let r = wal.scrub_segment(id);
                (r, wal.is_damaged(id))
            })
            .await;
            match checked {
                Ok((Ok(n), bad)) => {
                    bytes += n;
                    damaged += usize::from(bad);
                    pause(&mut stop, Duration::from_secs_f64(n as f64 / rate as f64)).await;
                }
                Ok((Err(e), _)) => {
                    tracing::warn!(segment = id, error = %e, "scrub could not read a segment")
                }
                Err(e) => tracing::warn!(error = %e, "scrub task failed"),
            }
        }
        tracing::info!(
            bytes,
            damaged,
            seconds = started.elapsed().as_secs(),
            "WAL scrub pass done"
        );
    }
}
