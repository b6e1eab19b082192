//! `replog.v1.LogService`: writes, replay, checkpoints, truncation and segments.
//!
//! Writes, checkpoint creation and truncation run on the leader (forwarded there from a
//! follower). Replay, checkpoint reads and segment reads are served by the node asked when it is
//! in sync, and show committed (applied) entries only: a replay reads the local WAL below the
//! state machine's next sequence number, which never passes what is durable locally.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::{Request, Response, Status, Streaming};

use super::auth::{authorize, caller, require};
use super::error::to_status;
use super::forward::{Forwarder, Target, is_forwarded, on_leader, target};
use super::observed;
use super::produce;
use super::relay::Relay;
use crate::auth::{Principal, Right};
use crate::core::{Core, CoreError, ReplayFrom, ReplayStart};
use crate::proto::log_service_client::LogServiceClient;
use crate::proto::log_service_server::LogService;
use crate::proto::{
    self as pb, Checkpoint, CreateCheckpointRequest, GetCheckpointRequest, ListCheckpointsRequest,
    ListCheckpointsResponse, ListSegmentsRequest, ListSegmentsResponse, ProduceRequest,
    ReadSegmentRequest, ReplayRequest, ReplayResponse, TruncateRequest, TruncateResponse,
    WriteBatchRequest, WriteRequest, WriteResponse, replay_request::Start,
};
use crate::wal::{EntryRef, SegmentStatus, SequenceNumber};

pub struct LogApi {
    core: Arc<Core>,
    fwd: Arc<Forwarder>,
    replay_slots: Arc<Semaphore>,
    produce_slots: Arc<Semaphore>,
    /// This node's link to the leader for the writes it relays.
    relay: Arc<Relay>,
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<ReplayResponse, Status>> + Send>>;

impl LogApi {
    pub fn new(core: Arc<Core>, fwd: Arc<Forwarder>) -> LogApi {
        let replay_slots = Arc::new(Semaphore::new(core.limits().max_replay_streams));
        let produce_slots = Arc::new(Semaphore::new(core.limits().max_produce_streams));
        let relay = Arc::new(Relay::new(fwd.clone(), core.limits().produce_max_in_flight));
        LogApi {
            core,
            fwd,
            replay_slots,
            produce_slots,
            relay,
        }
    }

    fn leader_client(
        &self,
        channel: tonic::transport::Channel,
    ) -> LogServiceClient<tonic::transport::Channel> {
        let max = self.fwd.max_message_bytes();
        LogServiceClient::new(channel)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }

    /// Validates and writes a batch on this node, the leader.
    async fn write_local(&self, r: WriteBatchRequest) -> Result<WriteResponse, CoreError> {
        let producer = produce::key(r.producer_id, r.producer_seq)?;
        let records = produce::records(r.entries)?;
        // The write path's stages (`raft::log_store::WRITE_PATH`).
        tracing::trace!(target: "replog::write_path", stage = "api.received");
        let w = self.core.write(producer, records).await?;
        tracing::trace!(target: "replog::write_path", stage = "api.reply", seq = w.last_seq);
        Ok(produce::written_response(&self.core, w))
    }

    /// A write on the leader, or relayed to it over this follower's link.
    async fn write_batch_any(
        &self,
        req: Request<WriteBatchRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let p = caller(&req)?;
        for e in &req.get_ref().entries {
            require(&p, Right::Write(Some(&e.tenant)))?;
        }
        let forwarded = is_forwarded(&req);
        match target(&self.core, forwarded)? {
            Target::Local => self
                .write_local(req.into_inner())
                .await
                .map(Response::new)
                .map_err(to_status),
            Target::Leader(leader) => {
                let r = req.into_inner();
                let relayed = ProduceRequest {
                    id: 0,
                    entries: r.entries,
                    producer_id: r.producer_id,
                    producer_seq: r.producer_seq,
                };
                let rx = self.relay.submit(&self.core, leader, relayed).await?;
                let answer = rx.await.unwrap_or_else(|_| {
                    Err(Status::unavailable(
                        "the link to the leader dropped a write without an answer",
                    ))
                });
                answer.map(Response::new)
            }
        }
    }

    async fn create_checkpoint_local(
        &self,
        r: CreateCheckpointRequest,
    ) -> Result<Checkpoint, CoreError> {
        let cp = self
            .core
            .create_checkpoint(r.name, r.tenant, r.sequence)
            .await?;
        Ok(to_proto_checkpoint(cp))
    }

    async fn truncate_local(&self, r: TruncateRequest) -> Result<TruncateResponse, CoreError> {
        let log_start = self.core.truncate(r.before).await?;
        Ok(TruncateResponse { log_start })
    }

    /// Checks that `p` may read what the replay `r` asks for: a tenant in its scope, or (for a
    /// principal with one tenant and no filter given) that tenant. A checkpoint of a tenant
    /// outside its scope is not found, as if it did not exist.
    fn authorize_replay(&self, p: &Principal, r: &mut ReplayRequest) -> Result<(), Status> {
        if p.sees(None) {
            return Ok(());
        }
        let mut tenant = r.tenant.clone();
        if let Some(Start::Checkpoint(name)) = &r.start {
            let cp = self.core.checkpoint(name).map_err(to_status)?;
            if !p.sees(cp.tenant.as_deref()) {
                return Err(to_status(CoreError::NotFound(format!(
                    "checkpoint {name:?} not found"
                ))));
            }
            if !r.all_tenants {
                tenant = tenant.or(cp.tenant);
            }
        }
        if tenant.is_none()
            && let crate::auth::Tenants::Only(only) = &p.tenants
            && only.len() == 1
        {
            tenant = only.iter().next().cloned();
            r.tenant.clone_from(&tenant);
            // Every tenant it may read is this one.
            r.all_tenants = false;
        }
        require(p, Right::Read(tenant.as_deref()))
    }

    /// Checks the request and where it starts (waiting for `min_sequence`), so a bad replay
    /// fails as the call's status; then streams from a task.
    async fn replay_open(
        &self,
        r: ReplayRequest,
        require_sync: bool,
    ) -> Result<EntryStream, CoreError> {
        let start = ReplayStart {
            from: match r.start {
                None => ReplayFrom::LogStart,
                Some(Start::FromSequence(s)) => ReplayFrom::Sequence(s),
                Some(Start::Checkpoint(name)) => ReplayFrom::Checkpoint(name),
            },
            tenant: r.tenant,
            all_tenants: r.all_tenants,
            min_sequence: r.min_sequence,
            require_sync,
        };
        let permit = self.replay_slots.clone().try_acquire_owned().map_err(|_| {
            CoreError::ResourceExhausted(format!(
                "{} replay streams are open on node {}, the limit is limits.max_replay_streams",
                self.core.limits().max_replay_streams,
                self.core.id()
            ))
        })?;
        let (from, tenant) = self.core.replay_start(&start).await?;
        let (tx, rx) = mpsc::channel(self.core.limits().replay_buffer_messages);
        let reader = Replayer {
            core: self.core.clone(),
            limit: r.limit,
            follow: r.follow,
            tx,
            _permit: permit,
        };
        tokio::spawn(reader.run(from, tenant));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// One replay stream: reads committed records in chunks on a blocking thread and sends them,
/// waiting for the client (bounded channel) and, with `follow`, for new commits.
struct Replayer {
    core: Arc<Core>,
    /// Entries to send at most (0: no limit).
    limit: u64,
    follow: bool,
    tx: mpsc::Sender<Result<ReplayResponse, Status>>,
    _permit: OwnedSemaphorePermit,
}

impl Replayer {
    async fn run(self, from: SequenceNumber, tenant: Option<String>) {
        let core = self.core.clone();
        core.metrics().replay_streams.inc();
        let tx = self.tx.clone();
        let stopped = core.stopped();
        let r = tokio::select! {
            r = self.stream(from, tenant) => r,
            _ = stopped => Err(CoreError::Unavailable(format!("node {} is stopping", core.id()))),
            _ = tx.closed() => Ok(()),
        };
        if let Err(e) = r {
            let _ = tx.send(Err(to_status(e))).await;
        }
        core.metrics().replay_streams.dec();
    }

    async fn stream(
        &self,
        mut pos: SequenceNumber,
        tenant: Option<String>,
    ) -> Result<(), CoreError> {
        let tenant: Option<Arc<str>> = tenant.map(Into::into);
        let mut left = if self.limit == 0 {
            u64::MAX
        } else {
            self.limit
        };
        let mut applied = self.core.applied_watch();
        let batch = self.core.limits().replay_batch_entries;
        loop {
            let upto = *applied.borrow_and_update();
            if pos < upto {
                let max = batch.min(usize::try_from(left).unwrap_or(usize::MAX));
                let chunk = self
                    .core
                    .read_chunk(pos, upto, tenant.clone(), max, to_proto)
                    .await?;
                pos = chunk.next;
                let n = chunk.entries.len() as u64;
                if n > 0 {
                    left -= n;
                    self.core.metrics().replayed_entries.inc_by(n);
                    let wait = self.throttle(&chunk.entries);
                    let msg = self.message(chunk.entries)?;
                    if self.tx.send(Ok(msg)).await.is_err() {
                        return Ok(());
                    }
                    if !wait.is_zero() {
                        // The tenants' replay quotas: wait before reading on.
                        tokio::time::sleep(wait).await;
                    }
                }
                if left == 0 {
                    return Ok(());
                }
                continue;
            }
            if !self.follow {
                return Ok(());
            }
            if applied.changed().await.is_err() {
                return Err(CoreError::Unavailable("node stopping".to_owned()));
            }
        }
    }

    /// Charges the entries' data bytes to their tenants' replay quotas; how long to wait.
    fn throttle(&self, entries: &[pb::Entry]) -> std::time::Duration {
        let quotas = self.core.quotas();
        if !quotas.active() {
            return std::time::Duration::ZERO;
        }
        let mut wait = std::time::Duration::ZERO;
        let mut i = 0;
        while i < entries.len() {
            // A run of one tenant's entries at a time.
            let tenant = &entries[i].tenant;
            let mut bytes = 0u64;
            while i < entries.len() && entries[i].tenant == *tenant {
                bytes += entries[i].data.len() as u64;
                i += 1;
            }
            wait = wait.max(quotas.replayed(tenant, bytes));
        }
        wait
    }

    fn message(&self, entries: Vec<pb::Entry>) -> Result<ReplayResponse, CoreError> {
        let b = self.core.log_bounds()?;
        Ok(ReplayResponse {
            entries,
            log_start: b.log_start,
            commit_sequence: b.commit_sequence,
            last_sequence: b.last_sequence,
        })
    }
}

pub fn to_proto(e: &EntryRef<'_>) -> pb::Entry {
    pb::Entry {
        sequence: e.sequence_number,
        timestamp_us: e.timestamp,
        tenant: e.tenant_id.to_owned(),
        operation: e.operation as i32,
        data: e.data.to_vec(),
        checksum: e.checksum,
    }
}

fn to_proto_checkpoint(c: crate::core::Checkpoint) -> Checkpoint {
    Checkpoint {
        name: c.name,
        tenant: c.tenant,
        sequence: c.sequence,
    }
}

fn to_proto_segment(s: crate::wal::Segment) -> pb::Segment {
    pb::Segment {
        id: s.id,
        start_sequence: s.start_seq,
        end_sequence: s.end_seq.unwrap_or(0),
        entries: s.end_seq.map_or(0, |e| e + 1 - s.start_seq),
        size_bytes: s.size,
        status: match s.status {
            SegmentStatus::Active => "active",
            SegmentStatus::Sealed => "sealed",
        }
        .to_owned(),
        max_timestamp_us: s.max_timestamp,
        path: s.file_path.display().to_string(),
    }
}

#[tonic::async_trait]
impl LogService for LogApi {
    async fn write(&self, req: Request<WriteRequest>) -> Result<Response<WriteResponse>, Status> {
        observed(&self.core, "Write", async {
            let (meta, ext, r) = req.into_parts();
            let batch = WriteBatchRequest {
                entries: vec![pb::EntryInput {
                    tenant: r.tenant,
                    operation: r.operation,
                    data: r.data,
                }],
                producer_id: r.producer_id,
                producer_seq: r.producer_seq,
            };
            self.write_batch_any(Request::from_parts(meta, ext, batch))
                .await
        })
        .await
    }

    async fn write_batch(
        &self,
        req: Request<WriteBatchRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        observed(&self.core, "WriteBatch", self.write_batch_any(req)).await
    }

    type ProduceStream = produce::ProduceStream;

    async fn produce(
        &self,
        req: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStream>, Status> {
        observed(&self.core, "Produce", async {
            let Ok(permit) = self.produce_slots.clone().try_acquire_owned() else {
                return Err(to_status(CoreError::ResourceExhausted(format!(
                    "{} Produce streams are open on this node (limits.max_produce_streams)",
                    self.core.limits().max_produce_streams
                ))));
            };
            let forwarded = is_forwarded(&req);
            let p = caller(&req)?;
            let stream = produce::serve(
                self.core.clone(),
                self.relay.clone(),
                (forwarded, p),
                req.into_inner(),
                permit,
            );
            Ok(Response::new(stream))
        })
        .await
    }

    type ReplayStream = EntryStream;

    async fn replay(&self, req: Request<ReplayRequest>) -> Result<Response<EntryStream>, Status> {
        observed(&self.core, "Replay", async {
            let p = caller(&req)?;
            let mut r = req.into_inner();
            self.authorize_replay(&p, &mut r)?;
            self.replay_open(r, true)
                .await
                .map(Response::new)
                .map_err(to_status)
        })
        .await
    }

    async fn create_checkpoint(
        &self,
        req: Request<CreateCheckpointRequest>,
    ) -> Result<Response<Checkpoint>, Status> {
        observed(&self.core, "CreateCheckpoint", async {
            authorize(&req, Right::Write(req.get_ref().tenant.as_deref()))?;
            let client = |ch| self.leader_client(ch);
            on_leader(
                &self.fwd,
                &self.core,
                req,
                |r| self.create_checkpoint_local(r),
                |ch, r| async move { client(ch).create_checkpoint(r).await },
            )
            .await
        })
        .await
    }

    async fn get_checkpoint(
        &self,
        req: Request<GetCheckpointRequest>,
    ) -> Result<Response<Checkpoint>, Status> {
        observed(&self.core, "GetCheckpoint", async {
            let p = caller(&req)?;
            let name = req.into_inner().name;
            let cp = self.core.checkpoint(&name).map_err(to_status)?;
            if !p.sees(cp.tenant.as_deref()) {
                // Not visible to this principal: as if it did not exist.
                return Err(to_status(CoreError::NotFound(format!(
                    "checkpoint {name:?} not found"
                ))));
            }
            Ok(Response::new(to_proto_checkpoint(cp)))
        })
        .await
    }

    async fn list_checkpoints(
        &self,
        req: Request<ListCheckpointsRequest>,
    ) -> Result<Response<ListCheckpointsResponse>, Status> {
        observed(&self.core, "ListCheckpoints", async {
            let p = caller(&req)?;
            let tenant = req.into_inner().tenant;
            if tenant.is_some() {
                require(&p, Right::Read(tenant.as_deref()))?;
            }
            let list = self
                .core
                .checkpoints(tenant.as_deref())
                .map_err(to_status)?;
            let checkpoints = list
                .into_iter()
                .filter(|c| p.sees(c.tenant.as_deref()))
                .map(to_proto_checkpoint)
                .collect();
            Ok(Response::new(ListCheckpointsResponse { checkpoints }))
        })
        .await
    }

    async fn truncate(
        &self,
        req: Request<TruncateRequest>,
    ) -> Result<Response<TruncateResponse>, Status> {
        observed(&self.core, "Truncate", async {
            authorize(&req, Right::Admin)?;
            let client = |ch| self.leader_client(ch);
            on_leader(
                &self.fwd,
                &self.core,
                req,
                |r| self.truncate_local(r),
                |ch, r| async move { client(ch).truncate(r).await },
            )
            .await
        })
        .await
    }

    async fn list_segments(
        &self,
        req: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        observed(&self.core, "ListSegments", async {
            authorize(&req, Right::Admin)?;
            let (segments, log_start) = self.core.segments().map_err(to_status)?;
            Ok(Response::new(ListSegmentsResponse {
                segments: segments.into_iter().map(to_proto_segment).collect(),
                log_start,
            }))
        })
        .await
    }

    type ReadSegmentStream = EntryStream;

    async fn read_segment(
        &self,
        req: Request<ReadSegmentRequest>,
    ) -> Result<Response<EntryStream>, Status> {
        observed(&self.core, "ReadSegment", async {
            authorize(&req, Right::Admin)?;
            let id = req.into_inner().id;
            let (from, upto) = self.core.segment_range(id).map_err(to_status)?;
            let req = ReplayRequest {
                start: Some(Start::FromSequence(from)),
                limit: upto.saturating_sub(from),
                ..Default::default()
            };
            if req.limit == 0 {
                return Ok(Response::new(
                    Box::pin(futures::stream::empty()) as EntryStream
                ));
            }
            self.replay_open(req, false)
                .await
                .map(Response::new)
                .map_err(to_status)
        })
        .await
    }
}
