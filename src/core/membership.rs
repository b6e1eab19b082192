//! Membership: this node's status as it sees itself, the cluster's members, and changes to
//! them (add a learner or voter, remove, move the leadership). Changes run on the leader.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Core, CoreError, ReplicaState};
use crate::raft::NodeId;

/// How long a leadership transfer may take before the call fails.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);

/// One node's view of itself.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeStatus {
    pub id: NodeId,
    /// Where clients reach it.
    pub address: String,
    /// Where other members reach it (what membership names).
    pub peer_address: String,
    /// "leader", "follower", "candidate", "learner", "shutdown" or "repairing".
    pub role: String,
    pub voter: bool,
    pub term: u64,
    pub last_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub in_sync: bool,
    /// 0 when no leader is known.
    pub leader_id: NodeId,
    pub log_start: u64,
    pub commit_sequence: u64,
    /// CPU time (user + system) of this process so far, in seconds (0 if unknown).
    pub cpu_seconds: f64,
}

/// The cluster's members as this node knows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub term: u64,
    pub leader: Option<NodeId>,
    /// Every member (voters and learners) and its peer address.
    pub members: BTreeMap<NodeId, String>,
    /// The members' client addresses this node knows.
    pub clients: BTreeMap<NodeId, String>,
    pub voters: Vec<NodeId>,
}

impl Membership {
    pub fn learners(&self) -> Vec<NodeId> {
        self.members
            .keys()
            .filter(|id| !self.voters.contains(id))
            .copied()
            .collect()
    }
}

impl Core {
    /// This node as it sees itself.
    pub fn node_status(&self) -> NodeStatus {
        let s = self.raft.status();
        let (log_start, commit_sequence) = self
            .sm
            .read(|i| (i.log_start, i.next_seq.saturating_sub(1)));
        NodeStatus {
            id: self.id,
            address: self.advertise.clone(),
            peer_address: self.peer_advertise.clone(),
            role: if self.is_repairing() {
                "repairing".to_owned()
            } else {
                s.role.to_owned()
            },
            voter: s.voters.contains(&self.id),
            term: s.term,
            last_index: s.last_log_index.unwrap_or(0),
            commit_index: s.committed.map_or(0, |l| l.index),
            applied_index: s.applied.map_or(0, |l| l.index),
            in_sync: self.replica_state() == ReplicaState::InSync,
            leader_id: s.leader.unwrap_or(0),
            log_start,
            commit_sequence,
            cpu_seconds: process_cpu_seconds(),
        }
    }

    pub fn membership(&self) -> Membership {
        let s = self.raft.status();
        Membership {
            term: s.term,
            leader: s.leader,
            members: s.members,
            clients: s.client_addresses,
            voters: s.voters,
        }
    }

    /// Adds node `id` at peer address `address`: as a learner only, or as a learner that becomes a voter
    /// once caught up. Adding a member again at the same address changes nothing.
    pub async fn add_node(
        &self,
        id: NodeId,
        address: &str,
        learner_only: bool,
    ) -> Result<Membership, CoreError> {
        if id == 0 {
            return Err(CoreError::InvalidArgument("node ids start at 1".to_owned()));
        }
        let addr_ok = address
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !addr_ok {
            return Err(CoreError::InvalidArgument(format!(
                "address {address:?} is not host:port"
            )));
        }
        let m = self.membership();
        if let Some(existing) = m.members.get(&id)
            && existing != address
        {
            return Err(CoreError::FailedPrecondition(format!(
                "node {id} is already a member at {existing}; remove it first to change its address"
            )));
        }
        if learner_only {
            self.raft.add_learner(id, address).await?;
        } else if !m.voters.contains(&id) {
            self.raft.add_node(id, address).await?;
        }
        Ok(self.membership())
    }

    /// Removes node `id` from the cluster (voter or learner).
    pub async fn remove_node(&self, id: NodeId) -> Result<Membership, CoreError> {
        if !self.membership().members.contains_key(&id) {
            return Err(CoreError::NotFound(format!(
                "node {id} is not a member of the cluster"
            )));
        }
        self.raft.remove_node(id).await?;
        Ok(self.membership())
    }

    /// Moves the leadership to voter `to` (nothing to do if this node is `to`).
    pub async fn transfer_leader(&self, to: NodeId) -> Result<NodeId, CoreError> {
        let m = self.membership();
        if !m.members.contains_key(&to) {
            return Err(CoreError::NotFound(format!(
                "node {to} is not a member of the cluster"
            )));
        }
        if !m.voters.contains(&to) {
            return Err(CoreError::FailedPrecondition(format!(
                "node {to} is a learner: only a voter can lead"
            )));
        }
        if to != self.id {
            self.raft.transfer_leader(to, TRANSFER_TIMEOUT).await?;
        }
        Ok(to)
    }
}

/// CPU time (user + system) this process has used, in seconds (0 if the OS does not say).
fn process_cpu_seconds() -> f64 {
    // SAFETY: `getrusage` fills the zeroed struct it is given and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct, for the calling process.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
