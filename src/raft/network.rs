//! The Raft network: openraft's `RaftNetworkV2` over tonic (`proto/replog/raft/v1`).
//!
//! - Two channels per peer, each created once and reused by every client of that peer: `data`
//!   for AppendEntries that carry entries and for snapshots, `control` for heartbeats, votes and
//!   leader transfer, so a heartbeat never waits behind a large replication message.
//! - Message bodies are openraft's types encoded with postcard. An AppendEntries is capped at
//!   `append_max_bytes`: a larger one sends the entries that fit and reports `PartialSuccess`,
//!   and openraft sends the rest next.
//! - openraft sends a follower an entry-less AppendEntries each time the commit index moves
//!   and no new entry is there to carry it: a second message per write at a low rate, with its
//!   own wake-up, decode, Raft step and reply on the follower. [`defer_commit_updates`] holds
//!   such a request up to `commit_linger`: the next request carries the same commit and goes
//!   instead; with none by then it goes as it is.
//! - [`NetSwitch`] lets tests cut a node off (both directions are checked, here and in the
//!   server).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openraft::AnyError;
use openraft::RaftNetworkFactory;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use parking_lot::{Mutex, RwLock};
use tonic::transport::{Channel, Endpoint};

use super::log_store::WRITE_PATH;
use super::snapshot::{CHUNK_BYTES, SnapshotData};
use super::types::{LogId, NodeId, TypeConfig, Vote, from_wire, to_wire, to_wire_sized};
use crate::proto::raft::{
    DescribeRequest, FetchFramesRequest, FileChunk, RaftMessage, SnapshotChunk, SnapshotHeader,
    raft_service_client::RaftServiceClient, snapshot_chunk::Kind,
};
use crate::tls::Reloadable;

/// Limits of the Raft transport.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Largest gRPC message accepted or sent (both sides).
    pub max_message_bytes: usize,
    /// Bytes of entries per AppendEntries, at most (one entry is always sent whole).
    pub append_max_bytes: usize,
    pub connect_timeout: Duration,
    /// How long a commit-only AppendEntries waits on the replication stream for the next
    /// request, which then carries the commit instead (0: each goes at once).
    pub commit_linger: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            max_message_bytes: 64 << 20,
            append_max_bytes: 8 << 20,
            connect_timeout: Duration::from_secs(2),
            commit_linger: DEFAULT_COMMIT_LINGER,
        }
    }
}

/// The default `raft.commit_linger`: longer than the gap between a commit and the next write's
/// entry at a few hundred writes a second, short next to the heartbeat and a follower's
/// lease.
pub const DEFAULT_COMMIT_LINGER: Duration = Duration::from_millis(5);

/// A test switch: traffic to or from a blocked peer fails as if the network were cut.
#[derive(Default)]
pub struct NetSwitch {
    blocked: RwLock<HashSet<NodeId>>,
}

impl NetSwitch {
    pub fn block(&self, peer: NodeId) {
        self.blocked.write().insert(peer);
    }

    pub fn heal(&self) {
        self.blocked.write().clear();
    }

    pub fn is_blocked(&self, peer: NodeId) -> bool {
        self.blocked.read().contains(&peer)
    }
}

type Client = RaftServiceClient<Channel>;

#[derive(Clone)]
struct Peer {
    data: Client,
    control: Client,
    /// The TLS generation its channels were made with (0: plaintext).
    generation: u64,
}

/// Creates (and caches) one pair of channels per peer address.
#[derive(Clone)]
pub struct Network {
    id: NodeId,
    cfg: NetConfig,
    switch: Arc<NetSwitch>,
    peers: Arc<Mutex<HashMap<(NodeId, String), Peer>>>,
    /// TLS towards other members (their peer listeners require this node's certificate).
    tls: Option<Arc<Reloadable>>,
}

impl Network {
    pub fn new(id: NodeId, cfg: NetConfig, switch: Arc<NetSwitch>) -> Network {
        Network {
            id,
            cfg,
            switch,
            peers: Arc::default(),
            tls: None,
        }
    }

    /// Connections to members over TLS with this material (re-made after each reload).
    pub fn with_tls(mut self, tls: Option<Arc<Reloadable>>) -> Network {
        self.tls = tls;
        self
    }

    fn client(&self, target: NodeId, addr: &str) -> PeerClient {
        let key = (target, addr.to_owned());
        let generation = self.tls.as_ref().map_or(0, |t| t.generation());
        let peer = {
            let mut peers = self.peers.lock();
            match peers.get(&key).filter(|p| p.generation == generation) {
                Some(p) => Ok(p.clone()),
                None => match self.connect(addr) {
                    Ok(p) => {
                        peers.insert(key, p.clone());
                        Ok(p)
                    }
                    Err(e) => Err(e),
                },
            }
        };
        PeerClient {
            from: self.id,
            target,
            peer,
            cfg: self.cfg.clone(),
            switch: self.switch.clone(),
        }
    }

    fn connect(&self, addr: &str) -> Result<Peer, String> {
        let (generation, tls) = match &self.tls {
            Some(t) => {
                let (g, c) = t.outgoing();
                (g, Some(c))
            }
            None => (0, None),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?;
        if let Some(c) = tls {
            endpoint = endpoint
                .tls_config(c)
                .map_err(|e| format!("TLS towards {addr}: {e}"))?;
        }
        let endpoint = endpoint
            .connect_timeout(self.cfg.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let make = || {
            RaftServiceClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(self.cfg.max_message_bytes)
                .max_encoding_message_size(self.cfg.max_message_bytes)
        };
        Ok(Peer {
            data: make(),
            control: make(),
            generation,
        })
    }
}

impl Network {
    /// Fetches WAL frames `first..=last` as stored from peer `target` (for a segment repair).
    /// Fails if the peer does not hold them all, or if they add up to more than `max_bytes`.
    pub async fn fetch_frames(
        &self,
        target: NodeId,
        addr: &str,
        (first, last): (u64, u64),
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let peer = self.client(target, addr);
        let mut client = peer.channel(true).map_err(|e| e.to_string())?;
        let req = FetchFramesRequest {
            from: self.id,
            first,
            last,
        };
        let fetch = async move {
            let mut stream = client
                .fetch_frames(req)
                .await
                .map_err(|s| format!("{}: {}", s.code(), s.message()))?
                .into_inner();
            let mut out = Vec::new();
            let mut next = first;
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|s| format!("{}: {}", s.code(), s.message()))?
            {
                if out.len() + chunk.frames.len() > max_bytes {
                    return Err(format!("the frames exceed {max_bytes} bytes"));
                }
                out.extend_from_slice(&chunk.frames);
                next = chunk.next;
            }
            if next <= last {
                return Err(format!(
                    "the peer sent frames up to {} of {first}..={last}",
                    next.saturating_sub(1)
                ));
            }
            Ok(out)
        };
        tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }
}

impl Network {
    /// Asks the node at peer address `addr` who it is and where its clients reach it.
    pub async fn describe(
        &self,
        target: NodeId,
        addr: &str,
        timeout: Duration,
    ) -> Result<(NodeId, String), String> {
        let peer = self.client(target, addr);
        let mut client = peer.channel(true).map_err(|e| e.to_string())?;
        let req = DescribeRequest { from: self.id };
        let call = async move {
            client
                .describe(req)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| format!("{}: {}", s.code(), s.message()))
        };
        let r = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))??;
        Ok((r.id, r.client_address))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &openraft::BasicNode) -> PeerClient {
        self.client(target, &node.addr)
    }
}

/// openraft's client for one peer.
pub struct PeerClient {
    from: NodeId,
    target: NodeId,
    peer: Result<Peer, String>,
    cfg: NetConfig,
    switch: Arc<NetSwitch>,
}

type RpcErr = RPCError<TypeConfig>;

fn unreachable(msg: impl std::fmt::Display) -> RpcErr {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(msg.to_string())))
}

fn network(msg: impl std::fmt::Display) -> RpcErr {
    RPCError::Network(NetworkError::new(&AnyError::error(msg.to_string())))
}

fn status_err(s: tonic::Status) -> RpcErr {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled => unreachable(s.message()),
        _ => network(format!("{}: {}", s.code(), s.message())),
    }
}

impl PeerClient {
    fn channel(&self, control: bool) -> Result<Client, RpcErr> {
        if self.switch.is_blocked(self.target) {
            return Err(unreachable(format!(
                "node {} is cut off (test switch)",
                self.target
            )));
        }
        let p = self.peer.as_ref().map_err(unreachable)?;
        Ok(if control {
            p.control.clone()
        } else {
            p.data.clone()
        })
    }

    async fn call<Req, Resp, F, Fut>(
        &self,
        control: bool,
        req: &Req,
        option: &RPCOption,
        f: F,
    ) -> Result<Resp, RpcErr>
    where
        Req: serde::Serialize,
        Resp: for<'de> serde::Deserialize<'de>,
        F: FnOnce(Client, tonic::Request<RaftMessage>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        let client = self.channel(control)?;
        let body = to_wire(req).map_err(network)?;
        let mut request = tonic::Request::new(RaftMessage {
            from: self.from,
            body: body.into(),
        });
        request.set_timeout(option.soft_ttl());
        let reply = f(client, request).await.map_err(status_err)?.into_inner();
        let decoded: Result<Resp, String> = from_wire(&reply.body).map_err(network)?;
        decoded.map_err(|e| network(format!("node {}: {e}", self.target)))
    }
}

/// An entry's size on the wire, closely enough to cap a message (records dominate).
fn approx_bytes(e: &super::types::Entry) -> usize {
    use super::types::Request;
    const OVERHEAD: usize = 32;
    match &e.payload {
        openraft::EntryPayload::Normal(
            Request::Write { records, .. } | Request::Coalesced { records, .. },
        ) => {
            records
                .iter()
                .map(|r| r.data.len() + r.tenant_id.len() + 16)
                .sum::<usize>()
                + OVERHEAD
        }
        openraft::EntryPayload::Membership(m) => OVERHEAD + 64 * m.nodes().count(),
        _ => OVERHEAD,
    }
}

/// How many leading entries fit in `max_bytes` (at least one).
fn entries_that_fit(entries: &[super::types::Entry], max_bytes: usize) -> usize {
    let mut total = 0usize;
    for (i, e) in entries.iter().enumerate() {
        total += approx_bytes(e);
        if total > max_bytes {
            return i.max(1);
        }
    }
    entries.len()
}

/// Splits a request whose entries exceed `max_bytes` into a chain of requests (each one's
/// `prev_log_id` is the previous one's last entry).
fn split_request(
    mut req: AppendEntriesRequest<TypeConfig>,
    max_bytes: usize,
) -> Vec<AppendEntriesRequest<TypeConfig>> {
    let mut out = Vec::new();
    loop {
        let fit = entries_that_fit(&req.entries, max_bytes);
        if fit >= req.entries.len() {
            out.push(req);
            return out;
        }
        let rest = req.entries.split_off(fit);
        let next = AppendEntriesRequest {
            vote: req.vote,
            prev_log_id: req.entries.last().map(|e| e.log_id),
            entries: rest,
            leader_commit: req.leader_commit,
        };
        out.push(req);
        req = next;
    }
}

/// A request on a replication stream, as [`defer_commit_updates`] sees it.
type AppendReq = AppendEntriesRequest<TypeConfig>;

/// The requests of one replication stream, with each commit-only request (no entries, right
/// after the previous request's last entry) held up to `linger`: a request that comes
/// meanwhile from the same leader with at least its commit goes instead, and the held one is
/// never sent; else it goes when `linger` ends or the stream does. The first request of a
/// stream (a probe for where the follower's log matches) always goes.
///
/// Why openraft is content without its reply: a reply acknowledges every request up to the
/// log id it matches (openraft drains its in-flight queue by log id, not by count), so the
/// next request's reply covers the held one, which asked nothing new. The follower learns the
/// commit at most `linger` later, or with the next entries.
fn defer_commit_updates<S>(input: S, linger: Duration) -> Deferring<S>
where
    S: futures::Stream<Item = AppendReq> + Unpin,
{
    Deferring {
        input,
        linger,
        held: None,
        deadline: Box::pin(tokio::time::sleep(linger)),
        queued: None,
        last: None,
        ended: false,
    }
}

/// The stream [`defer_commit_updates`] makes.
struct Deferring<S> {
    input: S,
    linger: Duration,
    /// A commit-only request waiting for the next one...
    held: Option<AppendReq>,
    /// ... until then (armed while one is held).
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// A request to send after the held one it could not replace.
    queued: Option<AppendReq>,
    /// The vote and last log id of the last request sent.
    last: Option<(Vote, Option<LogId>)>,
    /// The input ended (it is never polled again).
    ended: bool,
}

impl<S: futures::Stream<Item = AppendReq> + Unpin> futures::Stream for Deferring<S> {
    type Item = AppendReq;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<AppendReq>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            let req = match this.queued.take() {
                Some(r) => r,
                None if this.ended => return Poll::Ready(this.held.take()),
                None => match this.input.poll_next_unpin(cx) {
                    Poll::Ready(Some(r)) => r,
                    // The stream ends: a held request goes first.
                    Poll::Ready(None) => {
                        this.ended = true;
                        return Poll::Ready(this.held.take());
                    }
                    Poll::Pending => {
                        // Nothing came to carry the commit in time: it goes alone.
                        if this.held.is_some() && this.deadline.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(this.held.take());
                        }
                        return Poll::Pending;
                    }
                },
            };
            let replaces = this
                .held
                .as_ref()
                .map(|held| req.vote == held.vote && req.leader_commit >= held.leader_commit);
            if replaces == Some(false) {
                this.queued = Some(req);
                return Poll::Ready(this.held.take());
            }
            let commit_only = !this.linger.is_zero()
                && req.entries.is_empty()
                && this.last.as_ref() == Some(&(req.vote, req.prev_log_id));
            if commit_only {
                // A newer commit replacing a held one keeps its deadline.
                if this.held.is_none() {
                    let at = tokio::time::Instant::now() + this.linger;
                    this.deadline.as_mut().reset(at);
                }
                this.held = Some(req);
                continue;
            }
            this.held = None;
            let last = req.entries.last().map(|e| e.log_id).or(req.prev_log_id);
            this.last = Some((req.vote, last));
            return Poll::Ready(Some(req));
        }
    }
}

fn decode_stream_reply(
    r: Result<RaftMessage, tonic::Status>,
) -> Result<StreamAppendResult<TypeConfig>, RpcErr> {
    let m = r.map_err(status_err)?;
    let decoded: Result<StreamAppendResult<TypeConfig>, String> =
        from_wire(&m.body).map_err(network)?;
    decoded.map_err(network)
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    /// Pipelined: requests are sent as openraft produces them, without waiting for replies.
    /// A request over `append_max_bytes` goes as several chained ones, and their replies are
    /// folded back into one (the first error, else the last match).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RpcErr>>, RpcErr>>
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            let mut client = self.channel(false)?;
            let (from, max) = (self.from, self.cfg.append_max_bytes);
            let parts = Arc::new(Mutex::new(VecDeque::new()));
            let sent = parts.clone();
            let outgoing = defer_commit_updates(input, self.cfg.commit_linger)
                .flat_map(move |req| {
                    if let Some(last) = req.entries.last() {
                        tracing::trace!(target: WRITE_PATH, stage = "net.send", index = last.log_id.index);
                    }
                    let chunks = split_request(req, max);
                    sent.lock().push_back(chunks.len());
                    futures::stream::iter(
                        chunks
                            .into_iter()
                            .map(move |r| {
                                let size = r.entries.iter().map(approx_bytes).sum::<usize>() + 128;
                                to_wire_sized(&r, size).map(|body| RaftMessage { from, body: body.into() })
                            }),
                    )
                })
                // An unencodable request ends the stream (openraft sees it end and retries)
                // rather than sending a message the follower cannot decode.
                .take_while(|m| {
                    if let Err(e) = m {
                        tracing::error!(error = %e, "encoding an AppendEntries request failed");
                    }
                    futures::future::ready(m.is_ok())
                })
                .filter_map(|m| futures::future::ready(m.ok()));
            let replies = client
                .stream_append(outgoing)
                .await
                .map_err(status_err)?
                .into_inner();
            let folded = futures::stream::unfold(
                (replies, parts),
                |(mut replies, parts)| async move {
                    let first = replies.next().await?;
                    // The reply came after its request was sent, so its part count is queued.
                    let n = parts.lock().pop_front().unwrap_or(1);
                    let mut result = decode_stream_reply(first);
                    tracing::trace!(target: WRITE_PATH, stage = "net.acked", reply = ?result.as_ref().ok());
                    for _ in 1..n {
                        let next = match replies.next().await {
                            Some(r) => decode_stream_reply(r),
                            None => Err(network("the append stream ended inside a split request")),
                        };
                        if matches!(result, Ok(Ok(_))) {
                            result = next;
                        }
                    }
                    Some((result, (replies, parts)))
                },
            );
            Ok(Box::pin(folded) as BoxStream<'s, _>)
        })
    }

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcErr> {
        let fit = entries_that_fit(&rpc.entries, self.cfg.append_max_bytes);
        let cut = fit < rpc.entries.len();
        if cut {
            rpc.entries.truncate(fit);
        }
        let last_sent = rpc.entries.last().map(|e| e.log_id);
        let heartbeat = rpc.entries.is_empty();
        let resp: AppendEntriesResponse<TypeConfig> = self
            .call(heartbeat, &rpc, &option, |mut c, r| async move {
                c.append_entries(r).await
            })
            .await?;
        Ok(match resp {
            AppendEntriesResponse::Success if cut => {
                AppendEntriesResponse::PartialSuccess(last_sent)
            }
            other => other,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.call(
            true,
            &rpc,
            &option,
            |mut c, r| async move { c.vote(r).await },
        )
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.call(true, &rpc, &option, |mut c, r| async move {
            c.pre_vote(r).await
        })
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcErr> {
        self.call(true, &req, &option, |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let to_streaming = |e: RpcErr| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            RPCError::Timeout(t) => StreamingError::Timeout(t),
            RPCError::RemoteError(r) => StreamingError::Network(NetworkError::new(&r)),
        };
        let mut client = self.channel(false).map_err(to_streaming)?;
        let manifest = snapshot
            .snapshot
            .manifest(&snapshot.meta)
            .map_err(|e| to_streaming(network(e)))?;
        let header = SnapshotChunk {
            kind: Some(Kind::Header(SnapshotHeader {
                from: self.from,
                vote: to_wire(&vote).map_err(|e| to_streaming(network(e)))?,
                manifest: to_wire(&manifest).map_err(|e| to_streaming(network(e)))?,
            })),
        };
        let files: Vec<(String, u64)> = manifest
            .files
            .iter()
            .map(|f| (f.name.clone(), f.len))
            .collect();
        let data = Arc::new(snapshot.snapshot);
        // Chunks are read lazily (one at a time, off the executor) as the stream is polled,
        // so memory stays at one chunk whatever the snapshot's size.
        let chunks =
            futures::stream::iter(files.into_iter().enumerate().flat_map(|(no, (name, len))| {
                (0..len.div_ceil(CHUNK_BYTES as u64))
                    .map(move |c| (no, name.clone(), c * CHUNK_BYTES as u64, len))
            }))
            .then(move |(no, name, offset, len)| {
                let data = data.clone();
                async move {
                    let want = (len - offset).min(CHUNK_BYTES as u64) as usize;
                    let read = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0; want];
                        let n = data.read_file_at(&name, offset, &mut buf)?;
                        buf.truncate(n);
                        Ok::<_, std::io::Error>(buf)
                    })
                    .await;
                    match read {
                        Ok(Ok(buf)) => Some(SnapshotChunk {
                            kind: Some(Kind::Data(FileChunk {
                                file: no as u32,
                                offset,
                                crc32: crc32fast::hash(&buf),
                                data: buf,
                            })),
                        }),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "reading a segment for a snapshot failed");
                            None
                        }
                        Err(_) => None,
                    }
                }
            })
            // A failed read ends the stream early; the receiver sees it incomplete and refuses it.
            .take_while(|c| futures::future::ready(c.is_some()))
            .filter_map(futures::future::ready);
        let stream = futures::stream::once(futures::future::ready(header)).chain(chunks);
        let send = client.install_snapshot(stream);
        let reply = tokio::select! {
            r = send => r.map_err(|s| to_streaming(status_err(s)))?.into_inner(),
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let decoded: Result<SnapshotResponse<TypeConfig>, String> =
            from_wire(&reply.body).map_err(|e| to_streaming(network(e)))?;
        decoded.map_err(|e| to_streaming(network(format!("node {}: {e}", self.target))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{Entry, LogId, Request, WriteRecord};
    use openraft::entry::RaftEntry;

    fn entry(index: u64, bytes: usize) -> Entry {
        let records = vec![WriteRecord {
            tenant_id: "t".into(),
            operation: crate::wal::Operation::Insert,
            data: vec![0; bytes].into(),
            timestamp: 1,
        }];
        Entry::new(
            LogId::new_term_index(1, index),
            openraft::EntryPayload::Normal(Request::Write {
                producer: None,
                records: records.into(),
            }),
        )
    }

    fn vote(term: u64) -> Vote {
        openraft::impls::Vote::new_committed(term, 1)
    }

    /// An AppendEntries of `vote`'s term after `prev`, with entries up to `last`, committing
    /// `commit`.
    fn append(term: u64, prev: u64, last: u64, commit: u64) -> AppendReq {
        AppendEntriesRequest {
            vote: vote(term),
            prev_log_id: Some(LogId::new_term_index(term, prev)),
            entries: (prev + 1..=last)
                .map(|i| {
                    let mut e = entry(i, 10);
                    e.log_id = LogId::new_term_index(term, i);
                    e
                })
                .collect(),
            leader_commit: Some(LogId::new_term_index(term, commit)),
        }
    }

    /// (prev, last, commit) of a request.
    fn shape(r: &AppendReq) -> (u64, u64, u64) {
        let prev = r.prev_log_id.map_or(0, |l| l.index);
        let last = r.entries.last().map_or(prev, |e| e.log_id.index);
        (prev, last, r.leader_commit.map_or(0, |l| l.index))
    }

    /// Feeds `defer_commit_updates` by hand: what was sent so far, without waiting.
    struct Feed {
        tx: futures::channel::mpsc::UnboundedSender<AppendReq>,
        out: Deferring<futures::channel::mpsc::UnboundedReceiver<AppendReq>>,
    }

    impl Feed {
        fn new(linger: Duration) -> Feed {
            let (tx, rx) = futures::channel::mpsc::unbounded();
            Feed {
                tx,
                out: defer_commit_updates(rx, linger),
            }
        }

        fn send(&self, r: AppendReq) {
            self.tx.unbounded_send(r).unwrap();
        }

        /// The requests sent by now: polled without waiting (the clock is paused, so only
        /// `advance` makes a linger end).
        fn sent(&mut self) -> Vec<(u64, u64, u64)> {
            use futures::FutureExt;
            let mut got = Vec::new();
            while let Some(Some(r)) = self.out.next().now_or_never() {
                got.push(shape(&r));
            }
            got
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_only_request_rides_with_the_next_entries() {
        let mut f = Feed::new(Duration::from_millis(5));
        f.send(append(1, 0, 3, 0));
        assert_eq!(f.sent(), vec![(0, 3, 0)]);
        // The commit moves with no entry to carry it: held...
        f.send(append(1, 3, 3, 3));
        assert_eq!(f.sent(), vec![]);
        tokio::time::advance(Duration::from_millis(4)).await;
        assert_eq!(f.sent(), vec![]);
        // ... and the next entries carry it: the held request is never sent.
        f.send(append(1, 3, 4, 3));
        assert_eq!(f.sent(), vec![(3, 4, 3)]);
        // A newer commit-only request replaces a held one.
        f.send(append(1, 4, 4, 4));
        f.send(append(1, 4, 4, 4));
        assert_eq!(f.sent(), vec![]);
        // With nothing after it, it goes once the linger ends.
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(f.sent(), vec![(4, 4, 4)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_commit_keeps_the_held_ones_deadline() {
        let mut f = Feed::new(Duration::from_millis(5));
        f.send(append(1, 0, 6, 0));
        f.send(append(1, 6, 6, 4));
        assert_eq!(f.sent(), vec![(0, 6, 0)]);
        tokio::time::advance(Duration::from_millis(3)).await;
        // The commit moves again, still with nothing to carry it: the newer one waits in its
        // place, and the follower still hears within one linger of the first.
        f.send(append(1, 6, 6, 6));
        assert_eq!(f.sent(), vec![]);
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(f.sent(), vec![(6, 6, 6)]);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_that_are_not_commit_updates_go_at_once() {
        let mut f = Feed::new(Duration::from_millis(5));
        // The first request of a stream (a probe) goes, entries or not.
        f.send(append(1, 7, 7, 5));
        assert_eq!(f.sent(), vec![(7, 7, 5)]);
        // An entry-less request that does not follow the last one sent is not a commit update.
        f.send(append(1, 6, 6, 5));
        assert_eq!(f.sent(), vec![(6, 6, 5)]);
        // A held request goes before a request that cannot carry it (another leader's, or an
        // older commit).
        f.send(append(1, 6, 6, 6));
        assert_eq!(f.sent(), vec![]);
        f.send(append(2, 6, 8, 6));
        assert_eq!(f.sent(), vec![(6, 6, 6), (6, 8, 6)]);
        f.send(append(2, 8, 8, 8));
        f.send(append(2, 8, 9, 7));
        assert_eq!(f.sent(), vec![(8, 8, 8), (8, 9, 7)]);
        // The stream ending sends a held request at once, then ends.
        f.send(append(2, 9, 9, 9));
        assert_eq!(f.sent(), vec![]);
        drop(f.tx);
        let rest: Vec<_> = f.out.map(|r| shape(&r)).collect().await;
        assert_eq!(rest, vec![(9, 9, 9)]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_linger_sends_every_request() {
        let mut f = Feed::new(Duration::ZERO);
        f.send(append(1, 0, 3, 0));
        f.send(append(1, 3, 3, 3));
        f.send(append(1, 3, 4, 3));
        assert_eq!(f.sent(), vec![(0, 3, 0), (3, 3, 3), (3, 4, 3)]);
    }

    #[test]
    fn oversized_requests_split_into_a_chain() {
        let req = AppendEntriesRequest {
            vote: openraft::impls::Vote::new_committed(1, 1),
            prev_log_id: Some(LogId::new_term_index(1, 9)),
            entries: (10..20).map(|i| entry(i, 1000)).collect(),
            leader_commit: Some(LogId::new_term_index(1, 8)),
        };
        let parts = split_request(req, 3000);
        assert!(parts.len() > 3, "{} parts", parts.len());
        let mut prev = Some(LogId::new_term_index(1, 9));
        let mut next_index = 10;
        for p in &parts {
            assert_eq!(p.prev_log_id, prev);
            assert!(!p.entries.is_empty());
            for e in &p.entries {
                assert_eq!(e.log_id.index, next_index);
                next_index += 1;
            }
            prev = p.entries.last().map(|e| e.log_id);
        }
        assert_eq!(next_index, 20);
        // An entry larger than the cap still goes, alone.
        let big = AppendEntriesRequest {
            vote: parts[0].vote,
            prev_log_id: None,
            entries: vec![entry(0, 10_000)],
            leader_commit: None,
        };
        assert_eq!(split_request(big, 3000).len(), 1);
    }
}
