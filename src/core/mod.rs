//! The node's use cases, in replog's terms: writes (with idempotency keys), checkpoints,
//! truncation, membership changes, where a replay starts and what it reads, and the rule for
//! when a replica may serve reads ("in sync"). Each takes and returns the core's own types
//! ([`NewRecord`], [`Written`], [`Checkpoint`], [`NodeStatus`], ...) and fails with one typed
//! [`CoreError`].
//!
//! The core knows nothing of gRPC or protobuf: [`crate::api`] decodes a request, calls the core
//! and maps its error to a status. It knows nothing of openraft either: it talks to Raft
//! through [`RaftNode`] and to storage through the WAL and the state machine's image. Wiring a
//! node (opening storage, starting Raft and the server, the background tasks) is
//! [`crate::node`]'s job; it builds a [`Core`] from [`Parts`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::NodeMetrics;
use crate::raft::network::{NetSwitch, Network};
use crate::raft::service::LeaderContact;
use crate::raft::state_machine::SmShared;
use crate::raft::{NodeId, RaftNode, RaftStatus, WalHandle};
use crate::wal::{Operation, SequenceNumber};

mod coalesce;
pub mod contact;
mod error;
mod limits;
mod log;
mod membership;
mod producers;
pub mod quota;
mod read;
pub mod repair;
mod write;

pub use error::CoreError;
pub use limits::{InvalidLimit, Limits};
pub use log::Checkpoint;
pub use membership::{Membership, NodeStatus};
pub use quota::{Quota, QuotaConfig};
pub use read::{Chunk, LogBounds, ReplayFrom, ReplayStart};
pub use repair::RepairConfig;
pub use write::PendingWrite;

/// How long a new leader may take to apply the entries of earlier terms (so its state holds
/// every committed entry) before a use case checked against that state gives up.
const LEADER_READY: Duration = Duration::from_secs(10);

/// One record of a write, as a caller gives it (the core stamps the time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    pub tenant: String,
    pub operation: Operation,
    pub data: Vec<u8>,
}

/// What a write returns once committed and applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub first_seq: SequenceNumber,
    pub last_seq: SequenceNumber,
    /// Microseconds since the Unix epoch, shared by the batch's records.
    pub timestamp_us: u64,
    /// The idempotency key had been applied before: this is the original write's result.
    pub duplicate: bool,
}

/// What the node's services share: Raft, the storage readers, limits and metrics.
pub struct Core {
    id: NodeId,
    /// Where clients reach this node.
    advertise: String,
    /// Where other members reach this node (what membership names).
    peer_advertise: String,
    raft: RaftNode,
    wal: Arc<WalHandle>,
    sm: Arc<SmShared>,
    switch: Arc<NetSwitch>,
    /// Keyed writes in flight on this leader.
    keyed: Arc<producers::Ledger>,
    /// Writes waiting to be proposed, coalesced into Raft entries.
    writes: coalesce::Coalescer,
    contact: Arc<LeaderContact>,
    /// Peer connections outside openraft (fetching frames for a repair).
    net: Network,
    repair: repair::RepairState,
    /// Contact lost for longer than the leader lease ([`contact::watch`]): calls waiting on the
    /// leader are then answered "outcome unknown".
    lost: contact::ContactFlags,
    /// openraft's leader lease (`election_timeout_max`): a follower that has not heard from the
    /// leader for longer stops forwarding to it.
    leader_lease: Duration,
    limits: Limits,
    /// Per-tenant quotas and their counters.
    quotas: quota::Quotas,
    metrics: NodeMetrics,
    /// Resolves when the node stops (ends long-lived streams).
    stop: watch::Receiver<bool>,
}

/// What [`crate::node`] hands over to build a [`Core`].
pub struct Parts {
    pub id: NodeId,
    pub advertise: String,
    pub peer_advertise: String,
    pub raft: RaftNode,
    pub wal: Arc<WalHandle>,
    pub sm: Arc<SmShared>,
    pub switch: Arc<NetSwitch>,
    pub contact: Arc<LeaderContact>,
    pub net: Network,
    pub lost: contact::ContactFlags,
    pub leader_lease: Duration,
    pub limits: Limits,
    pub quotas: quota::QuotaConfig,
    pub max_producers: usize,
    pub metrics: NodeMetrics,
    pub stop: watch::Receiver<bool>,
}

/// Whether this replica serves reads, and if not why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaState {
    InSync,
    Behind(String),
}

impl Core {
    /// Builds the core; starts its write queue's task (needs a Tokio runtime).
    pub fn new(p: Parts) -> Core {
        let writes = coalesce::Coalescer::start(
            p.raft.clone(),
            coalesce::CoalesceLimits {
                max_entries: p.limits.coalesce_max_entries,
                max_bytes: p.limits.coalesce_max_bytes.as_u64(),
                max_proposals: p.limits.coalesce_max_proposals,
                pipeline_min_entries: p.limits.coalesce_pipeline_min_entries,
                pipeline_min_bytes: p.limits.coalesce_pipeline_min_bytes.as_u64(),
                queue: p.limits.write_queue,
            },
            Some(p.metrics.coalesced_writes.clone()),
        );
        Core {
            writes,
            id: p.id,
            advertise: p.advertise,
            peer_advertise: p.peer_advertise,
            raft: p.raft,
            wal: p.wal,
            sm: p.sm.clone(),
            switch: p.switch,
            keyed: producers::Ledger::new(p.max_producers, p.limits.produce_max_in_flight),
            contact: p.contact,
            net: p.net,
            repair: repair::RepairState::default(),
            lost: p.lost,
            leader_lease: p.leader_lease,
            limits: p.limits,
            quotas: quota::Quotas::new(p.quotas, p.sm.clone(), p.metrics.clone()),
            metrics: p.metrics,
            stop: p.stop,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Where clients reach this node.
    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    /// Where other members reach this node (what membership names).
    pub fn peer_advertise(&self) -> &str {
        &self.peer_advertise
    }

    /// Peer connections outside openraft.
    pub fn network(&self) -> &Network {
        &self.net
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }

    /// Raft as the node's wiring sees it (not for use cases: they are methods here).
    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    pub fn status(&self) -> RaftStatus {
        self.raft.status()
    }

    pub fn state(&self) -> &Arc<SmShared> {
        &self.sm
    }

    pub fn wal_handle(&self) -> &Arc<WalHandle> {
        &self.wal
    }

    /// The test switch of this node's network.
    pub fn switch(&self) -> &Arc<NetSwitch> {
        &self.switch
    }

    /// When the leader was last heard from (the Raft service records it).
    pub fn leader_contact(&self) -> &Arc<LeaderContact> {
        &self.contact
    }

    /// The leader as this node knows it.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        self.raft.leader()
    }

    /// The leader as this node knows it: its id, peer address (where members forward to it)
    /// and client address (what clients are told), the latter `None` until known.
    pub fn leader_route(&self) -> Option<(NodeId, String, Option<String>)> {
        self.raft.leader_route()
    }

    pub fn is_leader(&self) -> bool {
        self.raft.is_leader()
    }

    pub fn voters(&self) -> Vec<NodeId> {
        self.raft.status().voters
    }

    /// Whether this replica may serve reads: it hears from a leader (or, as the leader, from a
    /// quorum) within `limits.max_leader_silence`, and has applied within
    /// `limits.max_lag_entries` of the commit index it knows. The one "in sync" rule.
    pub fn replica_state(&self) -> ReplicaState {
        if self.is_repairing() {
            return ReplicaState::Behind(format!(
                "node {} is repairing damaged WAL segments from a replica",
                self.id
            ));
        }
        let s = self.raft.status();
        let Some(leader) = s.leader else {
            return ReplicaState::Behind(format!("node {} knows no leader", self.id));
        };
        if let Err(why) = self.heard_recently(leader, &s) {
            return ReplicaState::Behind(why);
        }
        let applied = s.applied.map_or(0, |l| l.index);
        let Some(committed) = s.cluster_committed else {
            return ReplicaState::Behind(format!(
                "node {} has not learned the commit index yet",
                self.id
            ));
        };
        let lag = committed.max(applied) - applied;
        if lag > self.limits.max_lag_entries {
            return ReplicaState::Behind(format!(
                "node {} is {lag} entries behind the commit (limits.max_lag_entries {})",
                self.id, self.limits.max_lag_entries
            ));
        }
        ReplicaState::InSync
    }

    /// Whether this node heard from `leader` (or, as the leader, from a quorum) within
    /// `limits.max_leader_silence`; if not, why.
    fn heard_recently(&self, leader: NodeId, s: &RaftStatus) -> Result<(), String> {
        let silence = self.limits.max_leader_silence;
        let heard = if leader == self.id {
            // A single voter is its own quorum.
            if s.voters == [self.id] {
                Some(Duration::ZERO)
            } else {
                s.quorum_acked_ago
            }
        } else {
            self.contact.since()
        };
        match heard {
            Some(ago) if ago <= silence => Ok(()),
            Some(ago) => Err(format!(
                "node {} has not heard from {} for {} ms (limits.max_leader_silence {} ms)",
                self.id,
                if leader == self.id {
                    "a quorum"
                } else {
                    "the leader"
                },
                ago.as_millis(),
                silence.as_millis()
            )),
            None => Err(format!(
                "node {} has not heard from the leader yet",
                self.id
            )),
        }
    }

    /// Refuses a read on a replica that is not in sync, naming the leader to ask instead.
    pub fn require_in_sync(&self) -> Result<(), CoreError> {
        match self.replica_state() {
            ReplicaState::InSync => Ok(()),
            ReplicaState::Behind(why) => Err(CoreError::NotInSync {
                message: format!("{why}; ask the leader"),
                leader: self.other_leader(),
            }),
        }
    }

    /// The leader, unless it is this node.
    fn other_leader(&self) -> Option<(NodeId, String)> {
        self.leader().filter(|(id, _)| *id != self.id)
    }

    /// On a follower: how long since the leader was last heard from, when that is longer than
    /// the leader lease (the leader may be cut off or dead; an election is due).
    pub fn leader_silent(&self) -> Option<Duration> {
        self.contact.since().filter(|d| *d > self.leader_lease)
    }

    /// On a follower: resolves once the leader has been silent for longer than the lease;
    /// never if the node stops.
    pub async fn until_leader_silent(&self) {
        contact::until(&self.lost.leader_silent).await
    }

    /// Whether this node is repairing damaged WAL segments (it neither votes nor serves reads).
    pub fn is_repairing(&self) -> bool {
        self.repair.is_repairing()
    }

    /// The flag the Raft service reads to refuse votes while this node repairs.
    pub fn repairing_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.repair.flag()
    }

    /// Producers with a keyed write in flight on this leader.
    pub fn keyed_writes_in_flight(&self) -> usize {
        self.keyed.len()
    }

    /// The sequence number after the last applied (committed) record.
    pub fn next_seq(&self) -> SequenceNumber {
        self.sm.read(|i| i.next_seq)
    }

    /// The node's WAL (for reads).
    pub fn wal(&self) -> Result<Arc<crate::wal::Manager>, CoreError> {
        Ok(self.wal.get()?)
    }

    /// Resolves when the node stops.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        let mut stop = self.stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    }

    /// A receiver of the node's stop signal (for tasks that select on it).
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }
}
