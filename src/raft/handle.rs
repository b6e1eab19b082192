//! [`RaftNode`]: what the rest of the node asks of Raft, in replog's terms (proposals, leader,
//! membership, purge), so openraft's types stay inside `src/raft/`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, Fatal, RaftError};

use super::directory::Directory;
use super::log_store::LogStore;
use super::network::Network;
use super::state_machine::StateMachine;
use super::types::{LogId, NodeId, Request, Response, TypeConfig};
use super::{RaftTiming, openraft_config};

/// openraft's Raft over replog's type config and state machine.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// Why a Raft operation did not happen.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RaftOpError {
    #[error("this node is not the leader (leader: {})", leader_text(.leader))]
    NotLeader { leader: Option<(NodeId, String)> },
    /// The proposal was appended here, then this node lost the leadership: it may yet commit
    /// through another leader, or never. Only a keyed write can be retried safely.
    #[error(
        "the leader changed while this request was replicating; its outcome is unknown (leader: {})",
        leader_text(.leader)
    )]
    OutcomeUnknown { leader: Option<(NodeId, String)> },
    /// Refused by Raft or by the state machine, identically on every replica.
    #[error("refused: {0}")]
    Rejected(String),
    #[error("timed out: {0}")]
    Timeout(String),
    /// Raft stopped (shutdown, or a storage error such as a failed fsync).
    #[error("raft stopped: {0}")]
    Stopped(String),
}

fn leader_text(l: &Option<(NodeId, String)>) -> String {
    match l {
        Some((id, addr)) => format!("node {id} at {addr}"),
        None => "unknown".to_owned(),
    }
}

impl From<RaftError<TypeConfig, ClientWriteError<TypeConfig>>> for RaftOpError {
    fn from(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => RaftOpError::NotLeader {
                leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
            },
            // openraft's wording ("application must deduplicate retries") stays here.
            RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => {
                RaftOpError::OutcomeUnknown {
                    leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                }
            }
            RaftError::APIError(other) => RaftOpError::Rejected(other.to_string()),
            RaftError::Fatal(f) => RaftOpError::Stopped(f.to_string()),
        }
    }
}

/// A leader hint naming a peer address, turned into one naming the client address (`None`
/// while the directory does not know it).
fn client_hint(dir: &Directory, hint: Option<(NodeId, String)>) -> Option<(NodeId, String)> {
    let (id, peer) = hint?;
    dir.client_of(id, &peer).map(|client| (id, client))
}

/// `e` with its leader hint (openraft names the peer address) naming the client address.
fn client_hints(dir: &Directory, e: RaftOpError) -> RaftOpError {
    match e {
        RaftOpError::NotLeader { leader } => RaftOpError::NotLeader {
            leader: client_hint(dir, leader),
        },
        RaftOpError::OutcomeUnknown { leader } => RaftOpError::OutcomeUnknown {
            leader: client_hint(dir, leader),
        },
        other => other,
    }
}

fn stopped(f: Fatal<TypeConfig>) -> RaftOpError {
    RaftOpError::Stopped(f.to_string())
}

/// A Raft node as the rest of replog sees it. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    id: NodeId,
    raft: Raft,
    /// Client addresses of the members (membership names peer addresses).
    dir: Arc<Directory>,
}

/// A point-in-time view of Raft's state on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: NodeId,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub committed: Option<LogId>,
    pub applied: Option<LogId>,
    pub voters: Vec<NodeId>,
    /// Each member's peer address (what membership names).
    pub members: BTreeMap<NodeId, String>,
    /// Each member's client address, where this node knows it.
    pub client_addresses: BTreeMap<NodeId, String>,
    /// "leader", "follower", "candidate", "learner" or "shutdown".
    pub role: &'static str,
    /// The commit index the leader last told this node of (may be ahead of `committed`).
    pub cluster_committed: Option<u64>,
    /// On the leader: how long ago a quorum last acknowledged it.
    pub quorum_acked_ago: Option<Duration>,
    /// On the leader: each peer's last replicated index (`None`: nothing yet).
    pub replication: BTreeMap<NodeId, Option<u64>>,
}

/// Wakes on changes of Raft's role, vote (term), leader or membership on this node, not on
/// each entry appended, committed or applied (see [`RaftNode::watch`]).
pub struct StatusWatch(
    openraft::alias::WatchReceiverOf<TypeConfig, openraft::metrics::RaftServerMetrics<TypeConfig>>,
);

impl StatusWatch {
    /// Waits for the next change; false once Raft has stopped (its core task has ended, on a
    /// shutdown or a fatal error: see [`RaftNode::fatal`]).
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// What [`RaftNode::start`] needs besides the storage.
pub struct StartRaft<'a> {
    pub id: NodeId,
    pub cluster_name: &'a str,
    pub timing: &'a RaftTiming,
    pub max_payload_entries: u64,
    pub network: Network,
    pub directory: Arc<Directory>,
}

impl RaftNode {
    pub fn new(id: NodeId, raft: Raft, dir: Arc<Directory>) -> RaftNode {
        RaftNode { id, raft, dir }
    }

    /// Starts Raft on a node's opened storage (openraft reads the log to restore its state).
    pub async fn start(
        s: StartRaft<'_>,
        log_store: LogStore,
        state_machine: StateMachine,
    ) -> Result<RaftNode, RaftOpError> {
        let cfg = openraft_config(s.cluster_name, s.timing, s.max_payload_entries)
            .map_err(RaftOpError::Rejected)?;
        let raft = Raft::new(s.id, Arc::new(cfg), s.network, log_store, state_machine)
            .await
            .map_err(|e| RaftOpError::Stopped(e.to_string()))?;
        Ok(RaftNode::new(s.id, raft, s.directory))
    }

    /// The openraft handle (for the Raft gRPC service).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn status(&self) -> RaftStatus {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        let membership = m.membership_config.membership();
        let role = match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Shutdown => "shutdown",
        };
        RaftStatus {
            id: self.id,
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            committed: m.local_committed,
            applied: m.last_applied,
            voters: membership.voter_ids().collect(),
            members: membership
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
            client_addresses: membership
                .nodes()
                .filter_map(|(id, n)| Some((*id, self.dir.client_of(*id, &n.addr)?)))
                .collect(),
            role,
            cluster_committed: m.cluster_committed.map(|l| l.index),
            quorum_acked_ago: m
                .last_quorum_acked
                .as_ref()
                .map(|t| openraft::Instant::elapsed(&**t)),
            replication: m
                .replication
                .iter()
                .flatten()
                .map(|(id, l)| (*id, l.map(|l| l.index)))
                .collect(),
        }
    }

    /// A receiver that wakes when Raft's role, term, leader or membership on this node
    /// changes, and ends when Raft stops. It does not wake per entry: openraft's full metrics
    /// change several times for every write, and each wake-up of a waiting task costs a
    /// thread hand-off on the write path.
    pub fn watch(&self) -> StatusWatch {
        StatusWatch(self.raft.server_metrics())
    }

    /// Why Raft stopped on its own (a storage error such as a failed fsync), if it did.
    pub fn fatal(&self) -> Option<String> {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        m.running_state.as_ref().err().map(|e| e.to_string())
    }

    /// The leader as this node knows it, with its client address (`None` until that address
    /// is known, see [`Directory`]).
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let (id, _, client) = self.leader_route()?;
        Some((id, client?))
    }

    /// The leader as this node knows it, with its peer address (what membership names) and
    /// its client address where the directory knows it.
    pub fn leader_route(&self) -> Option<(NodeId, String, Option<String>)> {
        let (id, peer) = {
            let rx = self.raft.metrics();
            let m = rx.borrow_watched();
            let id = m.current_leader?;
            let node = m.membership_config.membership().get_node(&id)?;
            (id, node.addr.clone())
        };
        let client = self.dir.client_of(id, &peer);
        Some((id, peer, client))
    }

    /// The directory of the members' client addresses.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.dir
    }

    /// `e` with its leader hint naming the leader's client address rather than its peer address.
    fn hinted(&self, e: impl Into<RaftOpError>) -> RaftOpError {
        client_hints(&self.dir, e.into())
    }

    /// Read on every API request: only the leader field, not a whole [`RaftStatus`].
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().current_leader == Some(self.id)
    }

    /// Initializes a new cluster with these voters; a no-op once initialized (by this node or
    /// another member with the same list).
    pub async fn bootstrap(&self, members: &BTreeMap<NodeId, String>) -> Result<(), RaftOpError> {
        if self.raft.is_initialized().await.map_err(stopped)? {
            return Ok(());
        }
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .iter()
            .map(|(id, a)| (*id, BasicNode::new(a)))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(e)) => {
                tracing::info!(error = %e, "cluster already initialized");
                Ok(())
            }
            Err(RaftError::Fatal(f)) => Err(stopped(f)),
        }
    }

    /// Replicates a request and returns what applying it answered.
    pub async fn propose(&self, req: Request) -> Result<Response, RaftOpError> {
        let resp = self
            .raft
            .client_write(req)
            .await
            .map_err(|e| self.hinted(e))?;
        match resp.data {
            Response::Rejected { reason } => Err(RaftOpError::Rejected(reason)),
            other => Ok(other),
        }
    }

    /// Submits a request now; `done` is called with what applying it answers (or why it was
    /// refused), where that is known, without a hand-off to another task. It is dropped
    /// uncalled if Raft stops first. Requests submitted one after another (awaiting each
    /// `submit`) enter the log in that order. With `term`, the request is taken only by this node
    /// as the leader of that term (else it fails as not leader, before reaching the log): a
    /// later request of the same term never enters the log after an earlier one was refused for
    /// a leader change.
    pub async fn submit(
        &self,
        req: Request,
        term: Option<u64>,
        done: impl FnOnce(Result<Response, RaftOpError>) + Send + 'static,
    ) -> Result<(), RaftOpError> {
        let dir = self.dir.clone();
        let responder = super::types::Callback::new(
            move |result: openraft::raft::ClientWriteResult<TypeConfig>| {
                done(match result {
                    Ok(resp) => match resp.data {
                        Response::Rejected { reason } => Err(RaftOpError::Rejected(reason)),
                        other => Ok(other),
                    },
                    Err(e) => Err(client_hints(
                        &dir,
                        RaftOpError::from(RaftError::APIError(e)),
                    )),
                })
            },
        );
        let write = self.raft.write(req).responder(responder);
        match term {
            Some(t) => write.with_leader(t).await,
            None => write.await,
        }
        .map_err(stopped)
    }

    /// The term this node leads with its own term's entry applied, if it does (checked now).
    pub fn own_term_applied(&self) -> Option<u64> {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        (m.current_leader == Some(self.id)
            && m.last_applied
                .is_some_and(|a| a.leader_id.term == m.current_term))
        .then_some(m.current_term)
    }

    /// Waits until this leader has applied an entry of its own term, so every entry of earlier
    /// terms is applied too (its state machine is current).
    pub async fn wait_own_term_applied(&self, timeout: Duration) -> Result<(), RaftOpError> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let m = rx.borrow_and_update();
                if m.current_leader != Some(self.id) {
                    return Err(RaftOpError::NotLeader {
                        leader: self.leader(),
                    });
                }
                if m.last_applied
                    .is_some_and(|a| a.leader_id.term == m.current_term)
                {
                    return Ok(());
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(RaftOpError::Stopped("metrics closed".to_owned())),
                Err(_) => {
                    return Err(RaftOpError::Timeout(
                        "the new leader has not applied its first entry".to_owned(),
                    ));
                }
            }
        }
    }

    /// Adds a node as a learner (returns once it has caught up), then makes it a voter.
    pub async fn add_node(&self, id: NodeId, addr: &str) -> Result<(), RaftOpError> {
        self.raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(|e| self.hinted(e))?;
        let mut voters: BTreeSet<NodeId> = self.status().voters.into_iter().collect();
        voters.insert(id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| self.hinted(e))?;
        Ok(())
    }

    /// Adds a node as a learner only; returns once it has caught up.
    pub async fn add_learner(&self, id: NodeId, addr: &str) -> Result<(), RaftOpError> {
        self.raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(|e| self.hinted(e))?;
        Ok(())
    }

    /// Asks the leader to hand leadership to `to` and waits (bounded) until it has.
    pub async fn transfer_leader(&self, to: NodeId, timeout: Duration) -> Result<(), RaftOpError> {
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(stopped)?;
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader == Some(to), "leadership transferred")
            .await
            .map_err(|e| RaftOpError::Timeout(e.to_string()))?;
        Ok(())
    }

    /// Whether this node leads other voters without a quorum's acknowledgement within `lease`.
    pub fn quorum_lost(&self, lease: Duration) -> bool {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        if m.current_leader != Some(self.id) {
            return false;
        }
        if m.membership_config
            .membership()
            .voter_ids()
            .all(|v| v == self.id)
        {
            return false;
        }
        // No acknowledgement yet: a leader just elected (openraft counts its lease from the
        // vote then); not a lost quorum.
        m.last_quorum_acked
            .as_ref()
            .is_some_and(|t| openraft::Instant::elapsed(&**t) > lease)
    }

    /// Turns this node's election timer on or off: off, it never campaigns (a node repairing
    /// its log must not become leader).
    pub fn allow_elections(&self, on: bool) {
        self.raft.runtime_config().elect(on);
    }

    /// On the leader: hands leadership to the voter that has replicated the most and waits
    /// (bounded) until it has it. Returns the new leader.
    pub async fn step_down(&self, timeout: Duration) -> Result<NodeId, RaftOpError> {
        let s = self.status();
        let to = s
            .voters
            .iter()
            .filter(|v| **v != self.id)
            .max_by_key(|v| s.replication.get(v).copied().flatten())
            .copied()
            .ok_or_else(|| {
                RaftOpError::Rejected("no other voter to hand leadership to".to_owned())
            })?;
        self.transfer_leader(to, timeout).await?;
        Ok(to)
    }

    /// Removes a node (voter or learner) from the cluster.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), RaftOpError> {
        let status = self.status();
        if !status.members.contains_key(&id) {
            return Err(RaftOpError::Rejected(format!(
                "node {id} is not a member of the cluster"
            )));
        }
        if !status.voters.contains(&id) {
            let remove = openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id]));
            self.raft
                .change_membership(remove, false)
                .await
                .map_err(|e| self.hinted(e))?;
            return Ok(());
        }
        let mut voters: BTreeSet<NodeId> = status.voters.into_iter().collect();
        voters.remove(&id);
        if voters.is_empty() {
            return Err(RaftOpError::Rejected(
                "cannot remove the last voter".to_owned(),
            ));
        }
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| self.hinted(e))?;
        Ok(())
    }

    /// Snapshots at the applied index, then lets Raft purge its log up to `index`.
    pub async fn purge_up_to(&self, index: u64) -> Result<(), RaftOpError> {
        self.raft.trigger().snapshot().await.map_err(stopped)?;
        self.raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= index),
                "snapshot built",
            )
            .await
            .map_err(|e| RaftOpError::Timeout(e.to_string()))?;
        self.raft.trigger().purge_log(index).await.map_err(stopped)
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}
