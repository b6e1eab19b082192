//! Forwarding a follower's write or admin call to the leader, once.
//!
//! Forwarded calls go to the leader's **peer** listener, where only members reach (with TLS,
//! by a certificate of the cluster CA naming a member): the follower has authenticated and
//! authorized the caller, and the leader trusts the member that forwards. On the peer listener
//! every call counts as forwarded, as does one carrying the `replog-forwarded-by` header on the
//! client listener: a node that receives one and is not the leader answers UNAVAILABLE with its
//! leader hint instead of forwarding again, so a request never loops during an election.
//! Channels to members are made once and reused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::error::to_status;
use crate::core::{Core, CoreError};
use crate::tls::Reloadable;
use crate::wire::FORWARDED_BY;

type NodeId = u64;

/// Channels kept at most (one per leader address seen; a cluster has a handful).
const MAX_CHANNELS: usize = 64;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Forwarder {
    /// Per address: the channel and the TLS generation it was made with (0: plaintext).
    channels: parking_lot::Mutex<HashMap<String, (Channel, u64)>>,
    max_message_bytes: usize,
    /// TLS towards other members' peer listeners (presenting this node's peer certificate).
    tls: Option<Arc<Reloadable>>,
}

/// Where a call that must run on the leader goes.
pub enum Route {
    Local,
    Leader { leader: Leader, channel: Channel },
}

/// The leader a call is forwarded to.
#[derive(Clone, Debug)]
pub struct Leader {
    pub id: NodeId,
    /// Where members reach it (the forwarded call goes there).
    pub peer: String,
    /// Where clients reach it (what a hint names), `None` until known.
    pub client: Option<String>,
}

impl Leader {
    /// The hint a client gets: the leader's client address, when known.
    pub fn hint(&self) -> Option<(NodeId, String)> {
        self.client.clone().map(|c| (self.id, c))
    }
}

impl std::fmt::Display for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.client {
            Some(c) => write!(f, "node {} at {c}", self.id),
            None => write!(f, "node {} at peer address {}", self.id, self.peer),
        }
    }
}

impl Forwarder {
    pub fn new(max_message_bytes: usize, tls: Option<Arc<Reloadable>>) -> Forwarder {
        Forwarder {
            channels: parking_lot::Mutex::new(HashMap::new()),
            max_message_bytes,
            tls,
        }
    }

    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// The (reused) channel to a member's peer listener.
    pub fn channel(&self, addr: &str) -> Result<Channel, CoreError> {
        let current = self.tls.as_ref().map_or(0, |t| t.generation());
        let mut map = self.channels.lock();
        if let Some((c, g)) = map.get(addr)
            && *g == current
        {
            return Ok(c.clone());
        }
        let (generation, tls) = match &self.tls {
            Some(t) => {
                let (g, c) = t.outgoing();
                (g, Some(c))
            }
            None => (0, None),
        };
        let unusable = |e: &dyn std::fmt::Display| {
            CoreError::Unavailable(format!("the node address {addr:?} is not usable: {e}"))
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint =
            Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| unusable(&e))?;
        if let Some(c) = tls {
            endpoint = endpoint.tls_config(c).map_err(|e| unusable(&e))?;
        }
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        if map.len() >= MAX_CHANNELS {
            map.clear();
        }
        map.insert(addr.to_owned(), (channel.clone(), generation));
        Ok(channel)
    }

    /// Local on the leader; else the leader's channel, unless the request was already forwarded
    /// or no leader is known (then UNAVAILABLE with the hint).
    pub fn route<T>(&self, core: &Core, req: &Request<T>) -> Result<Route, Status> {
        match target(core, is_forwarded(req))? {
            Target::Local => Ok(Route::Local),
            Target::Leader(leader) => {
                let channel = self.channel(&leader.peer).map_err(to_status)?;
                Ok(Route::Leader { leader, channel })
            }
        }
    }
}

/// Where a call that must run on the leader goes, before any channel is made.
pub enum Target {
    Local,
    Leader(Leader),
}

/// Whether a call was forwarded already: it came through the peer listener (see
/// [`Internal`]) or carries the forwarding header.
pub fn is_forwarded<T>(req: &Request<T>) -> bool {
    req.extensions().get::<Internal>().is_some() || req.metadata().contains_key(FORWARDED_BY)
}

/// Marks a call that came through the peer listener, from a member.
#[derive(Clone, Copy, Debug)]
pub struct Internal;

/// This node if it leads; else the leader it knows, unless the call was already forwarded
/// (`forwarded`), the leader has gone silent, or none is known (then UNAVAILABLE with the
/// hint).
pub fn target(core: &Core, forwarded: bool) -> Result<Target, Status> {
    if core.is_leader() {
        return Ok(Target::Local);
    }
    let leader = core
        .leader_route()
        .filter(|(id, ..)| *id != core.id())
        .map(|(id, peer, client)| Leader { id, peer, client });
    if let (Some(l), Some(silent)) = (&leader, core.leader_silent()) {
        return Err(to_status(CoreError::NotLeader {
            message: format!(
                "node {} has not heard from the leader (node {}) for {} ms; an election is due",
                core.id(),
                l.id,
                silent.as_millis()
            ),
            leader: None,
        }));
    }
    match leader {
        Some(l) if !forwarded => Ok(Target::Leader(l)),
        leader => Err(to_status(CoreError::NotLeader {
            message: format!("node {} is not the leader", core.id()),
            leader: leader.and_then(|l| l.hint()),
        })),
    }
}

/// The request to send to the leader: the message, the caller's deadline, and the header.
pub fn forwarded<T>(core: &Core, req: Request<T>) -> Request<T> {
    let timeout = req.metadata().get("grpc-timeout").cloned();
    let mut out = Request::new(req.into_inner());
    if let Some(t) = timeout {
        out.metadata_mut().insert("grpc-timeout", t);
    }
    if let Ok(v) = core.id().to_string().parse() {
        out.metadata_mut().insert(FORWARDED_BY, v);
    }
    out
}

/// What the caller gets when the leader could not be reached: UNAVAILABLE naming the leader,
/// so the client goes there itself. The leader's own answers pass through unchanged.
pub fn leader_failed(status: Status, leader: &Leader) -> Status {
    let from_leader = !status.details().is_empty() || status.code() != Code::Unavailable;
    if from_leader {
        return status;
    }
    to_status(CoreError::NotLeader {
        message: format!(
            "forwarding to the leader ({leader}) failed: {}",
            status.message()
        ),
        leader: leader.hint(),
    })
}

/// Runs a call that must happen on the leader: `local` here if this node leads, else `remote`
/// on the leader's channel with the forwarded request (once). Leader failures become hints.
pub async fn on_leader<Req, Resp, L, LF, R, RF>(
    fwd: &Forwarder,
    core: &Core,
    req: Request<Req>,
    local: L,
    remote: R,
) -> Result<tonic::Response<Resp>, Status>
where
    L: FnOnce(Req) -> LF,
    LF: Future<Output = Result<Resp, CoreError>>,
    R: FnOnce(Channel, Request<Req>) -> RF,
    RF: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    match fwd.route(core, &req)? {
        Route::Local => local(req.into_inner())
            .await
            .map(tonic::Response::new)
            .map_err(to_status),
        // A leader that goes silent mid-call (cut off, dead) leaves the call's outcome unknown:
        // answered so at once rather than at the caller's deadline.
        Route::Leader { leader, channel } => tokio::select! {
            r = remote(channel, forwarded(core, req)) => r.map_err(|s| leader_failed(s, &leader)),
            () = core.until_leader_silent() => Err(to_status(CoreError::OutcomeUnknown {
                message: format!(
                    "node {} lost contact with the leader ({leader}) while it handled the request; its outcome is unknown",
                    core.id()
                ),
                leader: None,
            })),
        },
    }
}
