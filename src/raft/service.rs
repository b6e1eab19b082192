//! The server side of the internal Raft RPCs: decode, hand to openraft, encode.
//!
//! Snapshots arrive as a stream (header, then file chunks) and are staged on disk as they come
//! ([`crate::raft::snapshot::Staging`]), never held in memory whole. One at a time.

use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{Semaphore, watch};
use tonic::{Request, Response, Status, Streaming};

use openraft::async_runtime::WatchReceiver;
use tonic::service::interceptor::InterceptedService;

use super::handle::Raft;
use super::log_store::WRITE_PATH;
use super::network::NetSwitch;
use super::snapshot::{CHUNK_BYTES, Manifest, Staging};
use super::types::{NodeId, Vote, from_wire, from_wire_shared, to_wire};
use super::wal_handle::WalHandle;
use crate::proto::raft::raft_service_server::RaftServiceServer;
use crate::proto::raft::{
    DescribeRequest, DescribeResponse, FetchFramesRequest, FramesChunk, RaftMessage, SnapshotChunk,
    raft_service_server::RaftService, snapshot_chunk::Kind,
};
use crate::tls;

/// When this node last received an append (or heartbeat) from a leader: a replica that has not
/// heard from one for long may be behind and must not serve replay.
pub struct LeaderContact {
    base: std::time::Instant,
    /// Milliseconds after `base`, plus one (0: never).
    last_ms: std::sync::atomic::AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact {
            base: std::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl LeaderContact {
    pub fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64 + 1;
        self.last_ms
            .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Time since the last append, if there was one.
    pub fn since(&self) -> Option<std::time::Duration> {
        let ms = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
        let now = self.base.elapsed().as_millis() as u64 + 1;
        (ms > 0).then(|| std::time::Duration::from_millis(now.saturating_sub(ms)))
    }
}

pub struct RaftServer {
    id: NodeId,
    contact: Arc<LeaderContact>,
    raft: Raft,
    switch: Arc<NetSwitch>,
    data_dir: PathBuf,
    wal: Arc<WalHandle>,
    snapshot_slot: Semaphore,
    /// Ends long-lived streams when the node stops (a graceful server shutdown waits for them).
    stop: watch::Receiver<bool>,
    /// Set while this node repairs damaged WAL segments: it refuses to vote.
    repairing: Arc<std::sync::atomic::AtomicBool>,
    /// What `Describe` answers: this node's client address.
    client_address: String,
}

impl RaftServer {
    pub fn new(
        id: NodeId,
        raft: Raft,
        switch: Arc<NetSwitch>,
        data_dir: PathBuf,
        wal: Arc<WalHandle>,
        stop: watch::Receiver<bool>,
        contact: Arc<LeaderContact>,
    ) -> RaftServer {
        let snapshot_slot = Semaphore::new(1);
        RaftServer {
            id,
            contact,
            raft,
            switch,
            data_dir,
            wal,
            snapshot_slot,
            stop,
            repairing: Arc::default(),
            client_address: String::new(),
        }
    }

    /// `Describe` answers this client address.
    pub fn describing(mut self, client_address: String) -> Self {
        self.client_address = client_address;
        self
    }

    /// Votes are refused while `flag` is set (the node repairs its log).
    pub fn refusing_votes_while(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.repairing = flag;
        self
    }

    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    }

    fn admit(&self, from: NodeId) -> Result<(), Status> {
        if self.switch.is_blocked(from) {
            return Err(Status::unavailable(format!(
                "node {} is cut off from node {from} (test switch)",
                self.id
            )));
        }
        Ok(())
    }

    /// A node repairing its log does not vote: its log is not whole.
    fn may_vote(&self) -> Result<(), Status> {
        if self.repairing.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Status::unavailable(format!(
                "node {} is repairing its log and does not vote",
                self.id
            )));
        }
        Ok(())
    }

    fn decode<T: for<'de> serde::Deserialize<'de>>(&self, m: &RaftMessage) -> Result<T, Status> {
        self.admit(m.from)?;
        from_wire_shared(&m.body)
            .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
    }
}

/// Encodes openraft's answer; its errors travel as text (the caller only reports them).
fn reply<T: serde::Serialize, E: std::fmt::Display>(
    id: NodeId,
    r: Result<T, E>,
) -> Result<Response<RaftMessage>, Status> {
    let r = r.map_err(|e| e.to_string());
    let body = to_wire(&r).map_err(|e| Status::internal(format!("encoding a Raft reply: {e}")))?;
    Ok(Response::new(RaftMessage {
        from: id,
        body: body.into(),
    }))
}

type ReplyStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftMessage, Status>> + Send>>;
type FramesStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<FramesChunk, Status>> + Send>>;

#[tonic::async_trait]
impl RaftService for RaftServer {
    type StreamAppendStream = ReplyStream;

    async fn stream_append(
        &self,
        req: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let (id, switch, contact) = (self.id, self.switch.clone(), self.contact.clone());
        // The stream ends at the first undecodable or cut-off message (a skipped request would
        // shift every later reply); the leader then reconnects.
        let input = req
            .into_inner()
            .map(move |m| {
                let rpc = m
                    .ok()
                    .filter(|m| !switch.is_blocked(m.from))
                    .and_then(|m| from_wire_shared(&m.body).ok());
                if let Some(r) = &rpc {
                    contact.touch();
                    let r: &openraft::raft::AppendEntriesRequest<super::TypeConfig> = r;
                    if let Some(last) = r.entries.last() {
                        tracing::trace!(target: WRITE_PATH, stage = "net.received", index = last.log_id.index);
                    }
                }
                rpc
            })
            .take_while(|r| futures::future::ready(r.is_some()))
            .filter_map(futures::future::ready);
        let output = self.raft.stream_append(input).map(move |r| match r {
            Ok(result) => {
                tracing::trace!(target: WRITE_PATH, stage = "net.reply", result = ?result);
                let body = to_wire(&Ok::<_, String>(result))
                    .map_err(|e| Status::internal(e.to_string()))?;
                Ok(RaftMessage {
                    from: id,
                    body: body.into(),
                })
            }
            Err(fatal) => Err(Status::unavailable(format!("raft stopped: {fatal}"))),
        });
        let output = output.take_until(self.stopped());
        Ok(Response::new(Box::pin(output)))
    }

    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = self.decode(req.get_ref())?;
        self.contact.touch();
        reply(self.id, self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.may_vote()?;
        let rpc = self.decode(req.get_ref())?;
        reply(self.id, self.raft.vote(rpc).await)
    }

    async fn pre_vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.may_vote()?;
        let rpc = self.decode(req.get_ref())?;
        reply(self.id, self.raft.pre_vote(rpc).await)
    }

    type FetchFramesStream = FramesStream;

    async fn fetch_frames(
        &self,
        req: Request<FetchFramesRequest>,
    ) -> Result<Response<FramesStream>, Status> {
        let r = req.into_inner();
        self.admit(r.from)?;
        if r.first == 0 || r.first > r.last {
            return Err(Status::invalid_argument(format!(
                "bad frame range {}..={}",
                r.first, r.last
            )));
        }
        let (wal, last) = (self.wal.clone(), r.last);
        let chunks = futures::stream::try_unfold(r.first, move |at| {
            let wal = wal.clone();
            async move {
                if at > last {
                    return Ok(None);
                }
                let (frames, next) = blocking(move || {
                    wal.get()
                        .and_then(|w| w.read_stored_frames(at, last, CHUNK_BYTES))
                })
                .await?
                .map_err(|e| Status::unavailable(format!("reading frames from {at}: {e}")))?;
                if frames.is_empty() {
                    return Err(Status::out_of_range(format!(
                        "this node does not hold log frames {at}..={last}"
                    )));
                }
                Ok(Some((FramesChunk { frames, next }, next)))
            }
        });
        Ok(Response::new(Box::pin(chunks.take_until(self.stopped()))))
    }

    async fn describe(
        &self,
        req: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        self.admit(req.get_ref().from)?;
        Ok(Response::new(DescribeResponse {
            id: self.id,
            client_address: self.client_address.clone(),
        }))
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = self.decode(req.get_ref())?;
        reply(self.id, self.raft.handle_transfer_leader(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let _slot = self
            .snapshot_slot
            .try_acquire()
            .map_err(|_| Status::resource_exhausted("a snapshot is already being received"))?;
        let mut stream = Box::pin(req.into_inner().take_until(self.stopped()));
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let Some(Kind::Header(h)) = first.kind else {
            return Err(Status::invalid_argument(
                "a snapshot stream starts with its header",
            ));
        };
        self.admit(h.from)?;
        let bad = |e: postcard::Error| {
            Status::invalid_argument(format!("undecodable snapshot header: {e}"))
        };
        let vote: Vote = from_wire(&h.vote).map_err(bad)?;
        let manifest: Manifest = from_wire(&h.manifest).map_err(bad)?;
        let meta = manifest.meta.clone();
        let io = |e: std::io::Error| Status::internal(format!("staging a snapshot: {e}"));
        let (dir, fs) = (self.data_dir.clone(), self.wal.file_system().clone());
        let mut staging = blocking(move || Staging::begin(fs, &dir, manifest))
            .await?
            .map_err(io)?;
        while let Some(chunk) = stream.next().await {
            let Some(Kind::Data(c)) = chunk?.kind else {
                return Err(Status::invalid_argument(
                    "a snapshot header after the first message",
                ));
            };
            staging = blocking(move || {
                staging
                    .write(c.file as usize, c.offset, &c.data, c.crc32)
                    .map(|_| staging)
            })
            .await?
            .map_err(|e| Status::data_loss(format!("snapshot chunk refused: {e}")))?;
        }
        let wal = self.wal.clone();
        let data = blocking(move || staging.finish(&wal)).await?.map_err(io)?;
        let snapshot = openraft::Snapshot {
            meta,
            snapshot: data,
        };
        reply(
            self.id,
            self.raft.install_full_snapshot(vote, snapshot).await,
        )
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("snapshot task failed: {e}")))
}

impl RaftServer {
    /// The check of callers on the peer listener: with `mtls`, every call must come over TLS
    /// with a certificate (already checked against the cluster CA by the handshake) naming a
    /// member.
    pub fn member_check(&self, mtls: bool) -> MemberCheck {
        MemberCheck {
            raft: self.raft.clone(),
            on: mtls,
        }
    }

    /// This server as the tonic service `replog.raft.v1.RaftService`, with messages of up to
    /// `max_message_bytes` both ways, each call admitted by `check`.
    pub fn into_service(
        self,
        max_message_bytes: usize,
        check: MemberCheck,
    ) -> InterceptedService<RaftServiceServer<RaftServer>, MemberCheck> {
        let svc = RaftServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        InterceptedService::new(svc, check)
    }
}

/// Admits a peer's call when its certificate names a member of this node's membership (by
/// the host of its peer address: a DNS name or an IP address). A node with no membership yet
/// (one waiting to be added) admits any certificate of the cluster CA: the leader adding it
/// is not known to it yet.
#[derive(Clone)]
pub struct MemberCheck {
    raft: Raft,
    on: bool,
}

impl tonic::service::Interceptor for MemberCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if !self.on {
            return Ok(req);
        }
        let Some(certs) = req.peer_certs() else {
            return Err(Status::unauthenticated(
                "the peer listener requires a client certificate from the cluster CA",
            ));
        };
        let names = certs.first().map(|c| tls::names(c)).unwrap_or_default();
        let members: Vec<String> = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            m.membership_config
                .membership()
                .nodes()
                .map(|(_, n)| n.addr.clone())
                .collect()
        };
        if members.is_empty() || members.iter().any(|a| tls::names_host(&names, a)) {
            return Ok(req);
        }
        Err(Status::permission_denied(format!(
            "the peer's certificate names {names:?}, none of them a member of this cluster ({})",
            members.join(", ")
        )))
    }
}
