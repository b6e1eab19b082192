//! `replog.v1.AdminService`: cluster status, membership changes and leadership transfer.
//!
//! `ClusterStatus` asks every member for its own `NodeStatus` (concurrently, with a deadline),
//! like `etcdctl endpoint status --cluster`; an unreachable member is listed as such. Membership
//! changes and transfers run on the leader (forwarded there from a follower).

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::auth::{authorize, caller};
use super::forward::{Forwarder, on_leader};
use super::observed;
use crate::auth::{Principal, Right};
use crate::core::Quota;
use crate::core::{Core, CoreError, Membership, NodeStatus};
use crate::proto::admin_service_client::AdminServiceClient;
use crate::proto::admin_service_server::AdminService;
use crate::proto::{
    AddNodeRequest, AddNodeResponse, ClusterStatusRequest, ClusterStatusResponse,
    ListQuotasRequest, ListQuotasResponse, Member, NodeStatusRequest, QuotaLimits,
    RemoveNodeRequest, RemoveNodeResponse, SetQuotaRequest, TenantQuota, TransferLeaderRequest,
    TransferLeaderResponse,
};

/// How long `ClusterStatus` waits for each member's answer.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

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
        to_member(self.core.node_status())
    }

    async fn member_status(&self, id: u64, peer: String, client: Option<String>) -> Member {
        if id == self.core.id() {
            return self.own_status();
        }
        let unreachable = |error: String| Member {
            id,
            address: client.clone().unwrap_or_default(),
            peer_address: peer.clone(),
            role: "unreachable".to_owned(),
            error,
            ..Default::default()
        };
        // Asked over the peer listener, as a member.
        let channel = match self.fwd.channel(&peer) {
            Ok(c) => c,
            Err(e) => return unreachable(e.to_string()),
        };
        let mut req = Request::new(NodeStatusRequest {});
        req.set_timeout(MEMBER_STATUS_TIMEOUT);
        let mut admin = AdminServiceClient::new(channel);
        match tokio::time::timeout(MEMBER_STATUS_TIMEOUT, admin.node_status(req)).await {
            Ok(Ok(r)) => {
                let mut m = r.into_inner();
                // The addresses this cluster uses for it (the client one: as it says, until
                // this node's directory learns it).
                if let Some(addr) = client {
                    m.address = addr;
                }
                m.peer_address = peer;
                m
            }
            Ok(Err(s)) => unreachable(s.message().to_owned()),
            Err(_) => unreachable("no answer within 2 s".to_owned()),
        }
    }

    async fn cluster_status(&self) -> ClusterStatusResponse {
        let s = self.core.membership();
        let asks = s
            .members
            .iter()
            .map(|(id, peer)| self.member_status(*id, peer.clone(), s.clients.get(id).cloned()));
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

    async fn add_node_local(&self, r: AddNodeRequest) -> Result<AddNodeResponse, CoreError> {
        let m = self.core.add_node(r.id, &r.address, r.learner_only).await?;
        Ok(AddNodeResponse {
            learners: m.learners(),
            voters: m.voters,
        })
    }

    async fn remove_node_local(
        &self,
        r: RemoveNodeRequest,
    ) -> Result<RemoveNodeResponse, CoreError> {
        let m: Membership = self.core.remove_node(r.id).await?;
        Ok(RemoveNodeResponse {
            learners: m.learners(),
            voters: m.voters,
        })
    }

    async fn set_quota_local(&self, r: SetQuotaRequest) -> Result<TenantQuota, CoreError> {
        let set = r.limits.map(from_limits).unwrap_or_default();
        self.core.set_quota(r.tenant.clone(), r.clear, set).await?;
        Ok(self.tenant_quota(&r.tenant))
    }

    fn tenant_quota(&self, tenant: &str) -> TenantQuota {
        let q = self.core.quotas();
        TenantQuota {
            tenant: tenant.to_owned(),
            effective: Some(to_limits(q.effective(tenant))),
            replicated: q.replicated().get(tenant).copied().map(to_limits),
            retained_bytes: q.retained(tenant),
        }
    }

    async fn transfer_local(
        &self,
        r: TransferLeaderRequest,
    ) -> Result<TransferLeaderResponse, CoreError> {
        let leader_id = self.core.transfer_leader(r.to).await?;
        Ok(TransferLeaderResponse { leader_id })
    }
}

/// A member as a principal without the admin role sees it: what a client needs to find the
/// leader and an in-sync replica (id, client address, role, term, in sync, leader), without
/// the details (peer address, log positions, lag, CPU, errors).
fn without_details(p: &Principal, m: &mut Member) {
    if p.is_admin() {
        return;
    }
    *m = Member {
        id: m.id,
        address: std::mem::take(&mut m.address),
        role: std::mem::take(&mut m.role),
        voter: m.voter,
        term: m.term,
        in_sync: m.in_sync,
        leader_id: m.leader_id,
        ..Default::default()
    };
}

fn to_limits(q: Quota) -> QuotaLimits {
    QuotaLimits {
        write_entries_per_sec: q.write_entries_per_sec,
        write_bytes_per_sec: q.write_bytes_per_sec,
        replay_bytes_per_sec: q.replay_bytes_per_sec,
        retained_bytes: q.retained_bytes,
    }
}

fn from_limits(l: QuotaLimits) -> Quota {
    Quota {
        write_entries_per_sec: l.write_entries_per_sec,
        write_bytes_per_sec: l.write_bytes_per_sec,
        replay_bytes_per_sec: l.replay_bytes_per_sec,
        retained_bytes: l.retained_bytes,
    }
}

fn to_member(n: NodeStatus) -> Member {
    Member {
        id: n.id,
        address: n.address,
        peer_address: n.peer_address,
        role: n.role,
        voter: n.voter,
        term: n.term,
        last_index: n.last_index,
        commit_index: n.commit_index,
        applied_index: n.applied_index,
        lag: 0,
        in_sync: n.in_sync,
        leader_id: n.leader_id,
        error: String::new(),
        log_start: n.log_start,
        commit_sequence: n.commit_sequence,
        cpu_seconds: n.cpu_seconds,
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn cluster_status(
        &self,
        req: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        observed(&self.core, "ClusterStatus", async {
            let p = caller(&req)?;
            let mut s = self.cluster_status().await;
            for m in &mut s.members {
                without_details(&p, m);
            }
            Ok(Response::new(s))
        })
        .await
    }

    async fn node_status(
        &self,
        req: Request<NodeStatusRequest>,
    ) -> Result<Response<Member>, Status> {
        observed(&self.core, "NodeStatus", async {
            let p = caller(&req)?;
            let mut m = self.own_status();
            without_details(&p, &mut m);
            Ok(Response::new(m))
        })
        .await
    }

    async fn add_node(
        &self,
        req: Request<AddNodeRequest>,
    ) -> Result<Response<AddNodeResponse>, Status> {
        observed(&self.core, "AddNode", async {
            authorize(&req, Right::Admin)?;
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
            authorize(&req, Right::Admin)?;
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
            authorize(&req, Right::Admin)?;
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

    async fn set_quota(
        &self,
        req: Request<SetQuotaRequest>,
    ) -> Result<Response<TenantQuota>, Status> {
        observed(&self.core, "SetQuota", async {
            authorize(&req, Right::Admin)?;
            on_leader(
                &self.fwd,
                &self.core,
                req,
                |r| self.set_quota_local(r),
                |ch, r| async move { AdminServiceClient::new(ch).set_quota(r).await },
            )
            .await
        })
        .await
    }

    async fn list_quotas(
        &self,
        req: Request<ListQuotasRequest>,
    ) -> Result<Response<ListQuotasResponse>, Status> {
        observed(&self.core, "ListQuotas", async {
            let p = caller(&req)?;
            let only = req.into_inner().tenant;
            let q = self.core.quotas();
            let tenants: std::collections::BTreeSet<String> = if only.is_empty() {
                q.configured()
                    .tenants
                    .keys()
                    .cloned()
                    .chain(q.replicated().into_keys())
                    .collect()
            } else {
                crate::wire::check_name("tenant", &only)
                    .map_err(|e| crate::api::error::to_status(e.into()))?;
                authorize_read(&p, &only)?;
                [only].into()
            };
            let quotas = tenants
                .iter()
                .filter(|t| p.sees(Some(t)))
                .map(|t| self.tenant_quota(t))
                .collect();
            Ok(Response::new(ListQuotasResponse {
                default: Some(to_limits(q.configured().default)),
                quotas,
            }))
        })
        .await
    }
}

fn authorize_read(p: &Principal, tenant: &str) -> Result<(), Status> {
    super::auth::require(p, Right::Read(Some(tenant)))
}
