//! `replog.v1.AdminService`: cluster status, membership changes and leadership transfer.
//!
//! `ClusterStatus` asks every member for its own `NodeStatus` (concurrently, with a deadline),
//! like `etcdctl endpoint status --cluster`; an unreachable member is listed as such. Membership
//! changes and transfers run on the leader (forwarded there from a follower).

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::forward::{Forwarder, on_leader};
use super::observed;
use crate::node::{Core, ReplicaState};
use crate::proto::admin_service_client::AdminServiceClient;
use crate::proto::admin_service_server::AdminService;
use crate::proto::{
    AddNodeRequest, AddNodeResponse, ClusterStatusRequest, ClusterStatusResponse, Member,
    NodeStatusRequest, RemoveNodeRequest, RemoveNodeResponse, TransferLeaderRequest,
    TransferLeaderResponse,
};
use crate::raft::NodeId;

/// How long `ClusterStatus` waits for each member's answer.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a leadership transfer may take before the call fails.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AdminApi {
    core: Arc<Core>,
    fwd: Arc<Forwarder>,
}

impl AdminApi {
    pub fn new(core: Arc<Core>, fwd: Arc<Forwarder>) -> AdminApi {
        AdminApi { core, fwd }
    }

    /// This node as it sees itself.
    fn own_status(&self) -> Member {
        let c = &self.core;
        let s = c.status();
        let (log_start, commit_sequence) = c
            .state()
            .read(|i| (i.log_start, i.next_seq.saturating_sub(1)));
        Member {
            id: c.id(),
            address: c.advertise().to_owned(),
            role: if c.is_repairing() {
                "repairing".to_owned()
            } else {
                s.role.to_owned()
            },
            voter: s.voters.contains(&c.id()),
            term: s.term,
            last_index: s.last_log_index.unwrap_or(0),
            commit_index: s.committed.map_or(0, |l| l.index),
            applied_index: s.applied.map_or(0, |l| l.index),
            lag: 0,
            in_sync: c.replica_state() == ReplicaState::InSync,
            leader_id: s.leader.unwrap_or(0),
            error: String::new(),
            log_start,
            commit_sequence,
        }
    }

    async fn member_status(&self, id: NodeId, addr: String) -> Member {
        if id == self.core.id() {
            return self.own_status();
        }
        let unreachable = |error: String| Member {
            id,
            address: addr.clone(),
            role: "unreachable".to_owned(),
            error,
            ..Default::default()
        };
        let channel = match self.fwd.channel(&addr) {
            Ok(c) => c,
            Err(e) => return unreachable(e.to_string()),
        };
        let mut req = Request::new(NodeStatusRequest {});
        req.set_timeout(MEMBER_STATUS_TIMEOUT);
        let mut client = AdminServiceClient::new(channel);
        match tokio::time::timeout(MEMBER_STATUS_TIMEOUT, client.node_status(req)).await {
            Ok(Ok(r)) => {
                let mut m = r.into_inner();
                // The membership's address is what the cluster uses.
                m.address = addr;
                m
            }
            Ok(Err(s)) => unreachable(s.message().to_owned()),
            Err(_) => unreachable("no answer within 2 s".to_owned()),
        }
    }

    async fn cluster_status(&self) -> ClusterStatusResponse {
        let s = self.core.status();
        let asks = s
            .members
            .iter()
            .map(|(id, addr)| self.member_status(*id, addr.clone()));
        let mut members = futures::future::join_all(asks).await;
        for m in &mut members {
            m.voter = s.voters.contains(&m.id);
        }
        // The leader: the one a reachable member claims in the highest term.
        let leader = members
            .iter()
            .filter(|m| m.role == "leader")
            .max_by_key(|m| m.term)
            .map(|m| (m.id, m.last_index, m.term));
        let leader_id = leader.map_or(s.leader.unwrap_or(0), |l| l.0);
        if let Some((_, last, _)) = leader {
            for m in &mut members {
                m.lag = if m.role == "unreachable" {
                    last
                } else {
                    last.saturating_sub(m.last_index)
                };
            }
        }
        let term = leader.map_or(s.term, |l| l.2);
        ClusterStatusResponse {
            leader_id,
            term,
            members,
        }
    }

    fn membership(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        let s = self.core.status();
        let learners = s
            .members
            .keys()
            .filter(|id| !s.voters.contains(id))
            .copied()
            .collect();
        (s.voters, learners)
    }

    async fn add_node_local(&self, r: AddNodeRequest) -> Result<AddNodeResponse, ApiError> {
        if r.id == 0 {
            return Err(ApiError::InvalidArgument("node ids start at 1".to_owned()));
        }
        let addr_ok = r
            .address
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !addr_ok {
            return Err(ApiError::InvalidArgument(format!(
                "address {:?} is not host:port",
                r.address
            )));
        }
        let s = self.core.status();
        if let Some(existing) = s.members.get(&r.id)
            && *existing != r.address
        {
            return Err(ApiError::FailedPrecondition(format!(
                "node {} is already a member at {existing}; remove it first to change its address",
                r.id
            )));
        }
        if r.learner_only {
            self.core.raft().add_learner(r.id, &r.address).await?;
        } else if !s.voters.contains(&r.id) {
            self.core.add_node(r.id, &r.address).await?;
        }
        let (voters, learners) = self.membership();
        Ok(AddNodeResponse { voters, learners })
    }

    async fn remove_node_local(
        &self,
        r: RemoveNodeRequest,
    ) -> Result<RemoveNodeResponse, ApiError> {
        if !self.core.status().members.contains_key(&r.id) {
            return Err(ApiError::NotFound(format!(
                "node {} is not a member of the cluster",
                r.id
            )));
        }
        self.core.remove_node(r.id).await?;
        let (voters, learners) = self.membership();
        Ok(RemoveNodeResponse { voters, learners })
    }

    async fn transfer_local(
        &self,
        r: TransferLeaderRequest,
    ) -> Result<TransferLeaderResponse, ApiError> {
        let s = self.core.status();
        if !s.members.contains_key(&r.to) {
            return Err(ApiError::NotFound(format!(
                "node {} is not a member of the cluster",
                r.to
            )));
        }
        if !s.voters.contains(&r.to) {
            return Err(ApiError::FailedPrecondition(format!(
                "node {} is a learner: only a voter can lead",
                r.to
            )));
        }
        if r.to != self.core.id() {
            self.core
                .raft()
                .transfer_leader(r.to, TRANSFER_TIMEOUT)
                .await?;
        }
        Ok(TransferLeaderResponse { leader_id: r.to })
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn cluster_status(
        &self,
        _req: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        observed(&self.core, "ClusterStatus", async {
            Ok(Response::new(self.cluster_status().await))
        })
        .await
    }

    async fn node_status(
        &self,
        _req: Request<NodeStatusRequest>,
    ) -> Result<Response<Member>, Status> {
        observed(&self.core, "NodeStatus", async {
            Ok(Response::new(self.own_status()))
        })
        .await
    }

    async fn add_node(
        &self,
        req: Request<AddNodeRequest>,
    ) -> Result<Response<AddNodeResponse>, Status> {
        observed(&self.core, "AddNode", async {
            on_leader(
                &self.fwd,
                &self.core,
                req,
                |r| self.add_node_local(r),
                |ch, r| async move { AdminServiceClient::new(ch).add_node(r).await },
            )
            .await
        })
        .await
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        observed(&self.core, "RemoveNode", async {
            on_leader(
                &self.fwd,
                &self.core,
                req,
                |r| self.remove_node_local(r),
                |ch, r| async move { AdminServiceClient::new(ch).remove_node(r).await },
            )
            .await
        })
        .await
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        observed(&self.core, "TransferLeader", async {
            on_leader(
                &self.fwd,
                &self.core,
                req,
                |r| self.transfer_local(r),
                |ch, r| async move { AdminServiceClient::new(ch).transfer_leader(r).await },
            )
            .await
        })
        .await
    }
}
