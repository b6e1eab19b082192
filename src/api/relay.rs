//! A follower's one long-lived `Produce` stream to the leader, carrying every write the
//! follower relays (unary writes and `Produce` streams alike) instead of one RPC each.
//!
//! Writes enter the link in the order they are relayed and the leader answers them in that
//! order, so a producer pipelining through a follower keeps its order. The link follows the
//! leader: a write for another leader opens a new link, and the old one ends once it has its
//! answers. When a link breaks (the leader died, was cut off, or went silent), every write
//! without an answer fails as UNAVAILABLE with an unknown outcome, the same answer a unary
//! forward gives, and the next write opens a new link.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

use super::error::to_status;
use super::forward::{Forwarder, Leader, leader_failed};
use crate::core::{Core, CoreError};
use crate::proto::log_service_client::LogServiceClient;
use crate::proto::{ProduceRequest, ProduceResponse, WriteResponse, produce_response};
use crate::wire::FORWARDED_BY;

type NodeId = u64;

/// What a relayed write ends with: the leader's answer, or why it has none.
pub type Relayed = Result<WriteResponse, Status>;

type Job = (ProduceRequest, oneshot::Sender<Relayed>);

struct Link {
    leader: NodeId,
    /// The leader's peer address (the link's far end).
    addr: String,
    tx: mpsc::Sender<Job>,
}

/// The follower's link to the leader (made when first needed).
pub struct Relay {
    fwd: Arc<Forwarder>,
    link: parking_lot::Mutex<Option<Link>>,
    /// Writes in flight on a link at most (`limits.produce_max_in_flight`).
    window: usize,
}

impl Relay {
    pub fn new(fwd: Arc<Forwarder>, window: usize) -> Relay {
        Relay {
            fwd,
            link: parking_lot::Mutex::new(None),
            window: window.max(1),
        }
    }

    /// Relays a write to the leader (at its peer address); writes relayed one after another
    /// (each awaited) reach it in that order. The receiver answers with the leader's result.
    pub async fn submit(
        &self,
        core: &Arc<Core>,
        leader: Leader,
        req: ProduceRequest,
    ) -> Result<oneshot::Receiver<Relayed>, Status> {
        let tx = self.link_to(core, &leader)?;
        let (reply, rx) = oneshot::channel();
        tx.send((req, reply)).await.map_err(|_| {
            to_status(CoreError::NotLeader {
                message: format!("the link to the leader ({leader}) closed"),
                leader: leader.hint(),
            })
        })?;
        Ok(rx)
    }

    /// The link to this leader: the current one, or a new one.
    fn link_to(&self, core: &Arc<Core>, leader: &Leader) -> Result<mpsc::Sender<Job>, Status> {
        let mut link = self.link.lock();
        if let Some(l) = link.as_ref()
            && l.leader == leader.id
            && l.addr == leader.peer
            && !l.tx.is_closed()
        {
            return Ok(l.tx.clone());
        }
        let channel = self.fwd.channel(&leader.peer).map_err(to_status)?;
        let max = self.fwd.max_message_bytes();
        let client = LogServiceClient::new(channel)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let (tx, rx) = mpsc::channel(self.window);
        tokio::spawn(run_link(
            core.clone(),
            client,
            leader.clone(),
            rx,
            self.window,
        ));
        *link = Some(Link {
            leader: leader.id,
            addr: leader.peer.clone(),
            tx: tx.clone(),
        });
        Ok(tx)
    }
}

/// Carries jobs to the leader and its answers back, until the link breaks or is replaced.
async fn run_link(
    core: Arc<Core>,
    mut client: LogServiceClient<tonic::transport::Channel>,
    leader: Leader,
    mut jobs: mpsc::Receiver<Job>,
    window: usize,
) {
    let (up_tx, up_rx) = mpsc::channel::<ProduceRequest>(window);
    let mut request = Request::new(ReceiverStream::new(up_rx));
    if let Ok(v) = core.id().to_string().parse() {
        request.metadata_mut().insert(FORWARDED_BY, v);
    }
    let mut waiting: VecDeque<oneshot::Sender<Relayed>> = VecDeque::new();
    let broke = |status: Status| leader_failed(status, &leader);
    // The call resolves once the leader has accepted the stream; jobs queue meanwhile.
    let opened = tokio::select! {
        r = client.produce(request) => r.map(tonic::Response::into_inner),
        () = core.until_leader_silent() => Err(silent(&core, &leader)),
    };
    let mut answers = match opened {
        Ok(s) => s,
        Err(status) => {
            let status = broke(status);
            jobs.close();
            while let Some((_, reply)) = jobs.recv().await {
                let _ = reply.send(Err(status.clone()));
            }
            return;
        }
    };
    let mut sending = true;
    let failure = loop {
        tokio::select! {
            job = jobs.recv(), if sending && waiting.len() < window => match job {
                Some((req, reply)) => {
                    waiting.push_back(reply);
                    if up_tx.send(req).await.is_err() {
                        break broke(Status::unavailable("the stream to the leader closed"));
                    }
                }
                // Replaced (or the node stops): finish what was sent, then end.
                None => sending = false,
            },
            answer = answers.next() => match answer {
                Some(Ok(r)) => match waiting.pop_front() {
                    Some(reply) => {
                        let _ = reply.send(from_response(r));
                    }
                    None => break broke(Status::internal("the leader answered a write it was not sent")),
                },
                Some(Err(status)) => break broke(status),
                None => break broke(Status::unavailable("the leader ended the stream")),
            },
            () = core.until_leader_silent() => break silent(&core, &leader),
        }
        if !sending && waiting.is_empty() {
            return;
        }
    };
    jobs.close();
    for reply in waiting {
        let _ = reply.send(Err(failure.clone()));
    }
    while let Some((_, reply)) = jobs.recv().await {
        let _ = reply.send(Err(failure.clone()));
    }
}

fn silent(core: &Core, leader: &Leader) -> Status {
    to_status(CoreError::OutcomeUnknown {
        message: format!(
            "node {} lost contact with the leader ({leader}) while relaying writes; their outcome is unknown",
            core.id()
        ),
        leader: None,
    })
}

/// A `Produce` answer as the result a unary write would have had.
pub fn from_response(r: ProduceResponse) -> Relayed {
    match r.result {
        Some(produce_response::Result::Written(w)) => Ok(w),
        Some(produce_response::Result::Error(e)) => Err(crate::wire::produce_status(e)),
        None => Err(Status::internal("the leader sent an empty answer")),
    }
}
