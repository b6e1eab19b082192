//! `replog.v1.LogService`: writes, replay, checkpoints, truncation and segments.
//!
//! Writes, checkpoint creation and truncation run on the leader (forwarded there from a
//! follower). Replay, checkpoint reads and segment reads are served by the node asked when it is
//! in sync, and show committed (applied) entries only: a replay reads the local WAL below the
//! state machine's next sequence number, which never passes what is durable locally.

use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::{Request, Response, Status};

use super::error::{ApiError, to_status};
use super::forward::{Forwarder, on_leader};
use super::{check_name, observed, operation, require_in_sync};
use crate::node::Core;
use crate::proto::log_service_client::LogServiceClient;
use crate::proto::log_service_server::LogService;
use crate::proto::{
    self as pb, Checkpoint, CreateCheckpointRequest, GetCheckpointRequest, ListCheckpointsRequest,
    ListCheckpointsResponse, ListSegmentsRequest, ListSegmentsResponse, ReadSegmentRequest,
    ReplayRequest, ReplayResponse, TruncateRequest, TruncateResponse, WriteBatchRequest,
    WriteRequest, WriteResponse, replay_request::Start,
};
use crate::raft::types::WriteRecord;
use crate::raft::{Request as Command, Response as Outcome};
use crate::wal::{EntryRef, ProducerKey, SegmentStatus, SequenceNumber};

/// How long a new leader may take to apply the entries of earlier terms before a command that
/// is checked against the state gives up.
const LEADER_READY: std::time::Duration = std::time::Duration::from_secs(10);

pub struct LogApi {
    core: Arc<Core>,
    fwd: Arc<Forwarder>,
    replay_slots: Arc<Semaphore>,
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<ReplayResponse, Status>> + Send>>;

impl LogApi {
    pub fn new(core: Arc<Core>, fwd: Arc<Forwarder>) -> LogApi {
        let replay_slots = Arc::new(Semaphore::new(core.limits.max_replay_streams));
        LogApi {
            core,
            fwd,
            replay_slots,
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

    /// Checks a batch against the limits and turns it into records stamped with one timestamp.
    fn records(&self, entries: Vec<pb::EntryInput>) -> Result<Vec<WriteRecord>, ApiError> {
        let l = &self.core.limits;
        if entries.is_empty() {
            return Err(ApiError::InvalidArgument(
                "a batch needs at least one entry".to_owned(),
            ));
        }
        if entries.len() > l.max_batch_entries {
            return Err(ApiError::ResourceExhausted(format!(
                "a batch of {} entries exceeds limits.max_batch_entries ({})",
                entries.len(),
                l.max_batch_entries
            )));
        }
        let mut total = 0u64;
        let timestamp = crate::wal::now_us();
        let mut out = Vec::with_capacity(entries.len());
        for (i, e) in entries.into_iter().enumerate() {
            check_name("tenant", &e.tenant)?;
            let op = operation(e.operation)?;
            let len = e.data.len() as u64;
            if len > l.max_entry_bytes.as_u64() {
                return Err(ApiError::ResourceExhausted(format!(
                    "entry {i} has {len} bytes of data, more than limits.max_entry_bytes ({} bytes)",
                    l.max_entry_bytes.as_u64()
                )));
            }
            total += len;
            out.push(WriteRecord {
                tenant_id: e.tenant,
                operation: op,
                data: e.data,
                timestamp,
            });
        }
        if total > l.max_batch_bytes.as_u64() {
            return Err(ApiError::ResourceExhausted(format!(
                "a batch of {total} data bytes exceeds limits.max_batch_bytes ({} bytes)",
                l.max_batch_bytes.as_u64()
            )));
        }
        Ok(out)
    }

    /// Validates and writes a batch on this node, the leader.
    async fn write_local(
        &self,
        entries: Vec<pb::EntryInput>,
        producer: (Option<u64>, Option<u64>),
    ) -> Result<WriteResponse, ApiError> {
        let producer = match producer {
            (Some(id), Some(seq)) => Some(ProducerKey { id, seq }),
            (None, None) => None,
            _ => {
                return Err(ApiError::InvalidArgument(
                    "producer_id and producer_seq go together".to_owned(),
                ));
            }
        };
        let records = self.records(entries)?;
        let started = Instant::now();
        let w = self.core.write(producer, records).await?;
        self.core
            .metrics
            .write_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(WriteResponse {
            first_sequence: w.first_seq,
            last_sequence: w.last_seq,
            timestamp_us: w.timestamp,
            duplicate: w.duplicate,
            leader_id: self.core.id(),
            leader_address: self.core.advertise().to_owned(),
        })
    }

    async fn write_batch_any(
        &self,
        req: Request<WriteBatchRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let client = |ch| self.leader_client(ch);
        on_leader(
            &self.fwd,
            &self.core,
            req,
            |r| self.write_local(r.entries, (r.producer_id, r.producer_seq)),
            |ch, r| async move { client(ch).write_batch(r).await },
        )
        .await
    }

    /// Proposes a checkpoint on the leader, after checking it against the committed log.
    async fn create_checkpoint_local(
        &self,
        r: CreateCheckpointRequest,
    ) -> Result<Checkpoint, ApiError> {
        check_name("checkpoint name", &r.name)?;
        if let Some(t) = &r.tenant {
            check_name("tenant", t)?;
        }
        // A new leader checks against a state that includes every committed entry.
        self.core.raft().wait_own_term_applied(LEADER_READY).await?;
        let (next_seq, tenant_last, known, count) = self.core.state().read(|img| {
            let tenant_last = r
                .tenant
                .as_ref()
                .map(|t| img.tenants.get(t).map_or(0, |s| s.last_seq));
            (
                img.next_seq,
                tenant_last,
                img.checkpoints.contains_key(&r.name),
                img.checkpoints.len(),
            )
        });
        let max = self.core.limits.max_checkpoints;
        if !known && count >= max {
            return Err(ApiError::ResourceExhausted(format!(
                "{count} checkpoints exist, the limit is limits.max_checkpoints ({max})"
            )));
        }
        let sequence = match (r.sequence, tenant_last) {
            (Some(s), _) => s,
            (None, Some(0)) => {
                return Err(ApiError::FailedPrecondition(format!(
                    "tenant {:?} has no committed entry to checkpoint",
                    r.tenant.as_deref().unwrap_or_default()
                )));
            }
            (None, Some(last)) => last,
            (None, None) if next_seq <= 1 => {
                return Err(ApiError::FailedPrecondition(
                    "the log has no committed entry to checkpoint".to_owned(),
                ));
            }
            (None, None) => next_seq - 1,
        };
        if sequence == 0 || sequence >= next_seq {
            return Err(ApiError::FailedPrecondition(format!(
                "checkpoint {:?} at sequence {sequence}: positions go from 1 to the last committed sequence number ({})",
                r.name,
                next_seq - 1
            )));
        }
        let cmd = Command::Checkpoint {
            name: r.name.clone(),
            tenant: r.tenant.clone(),
            sequence,
        };
        match self.core.command(cmd).await? {
            Outcome::Checkpoint { sequence } => Ok(Checkpoint {
                name: r.name,
                tenant: r.tenant,
                sequence,
            }),
            other => Err(ApiError::Internal(format!(
                "unexpected reply to a checkpoint: {other:?}"
            ))),
        }
    }

    async fn truncate_local(&self, r: TruncateRequest) -> Result<TruncateResponse, ApiError> {
        self.core.raft().wait_own_term_applied(LEADER_READY).await?;
        let next = self.core.next_seq();
        if r.before == 0 {
            return Err(ApiError::InvalidArgument(
                "truncate needs `before` >= 1 (entries below it are dropped)".to_owned(),
            ));
        }
        if r.before > next {
            return Err(ApiError::FailedPrecondition(format!(
                "cannot truncate before {}: it must be at most the last committed sequence number + 1 ({next})",
                r.before
            )));
        }
        match self
            .core
            .command(Command::Truncate { before: r.before })
            .await?
        {
            Outcome::Truncated { log_start } => Ok(TruncateResponse { log_start }),
            other => Err(ApiError::Internal(format!(
                "unexpected reply to a truncation: {other:?}"
            ))),
        }
    }

    /// Checks the request and where it starts (waiting for `min_sequence`), so a bad replay
    /// fails as the call's status; then streams from a task.
    async fn replay_open(
        &self,
        r: ReplayRequest,
        require_sync: bool,
    ) -> Result<EntryStream, ApiError> {
        if let Some(t) = &r.tenant {
            check_name("tenant", t)?;
        }
        let permit = self.replay_slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::ResourceExhausted(format!(
                "{} replay streams are open on node {}, the limit is limits.max_replay_streams",
                self.core.limits.max_replay_streams,
                self.core.id()
            ))
        })?;
        let (tx, rx) = mpsc::channel(self.core.limits.replay_buffer_messages);
        let reader = Replayer {
            core: self.core.clone(),
            req: r,
            require_sync,
            tx,
            _permit: permit,
        };
        let start = reader.start().await?;
        tokio::spawn(reader.run(start));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// One replay stream: reads committed records in chunks on a blocking thread and sends them,
/// waiting for the client (bounded channel) and, with `follow`, for new commits.
struct Replayer {
    core: Arc<Core>,
    req: ReplayRequest,
    /// Replay asks for an in-sync replica; a segment read is about the node asked.
    require_sync: bool,
    tx: mpsc::Sender<Result<ReplayResponse, Status>>,
    _permit: OwnedSemaphorePermit,
}

impl Replayer {
    async fn run(self, start: (SequenceNumber, Option<String>)) {
        let core = self.core.clone();
        core.metrics.replay_streams.inc();
        let tx = self.tx.clone();
        let stopped = core.stopped();
        let r = tokio::select! {
            r = self.stream(start) => r,
            _ = stopped => Err(ApiError::Unavailable(format!("node {} is stopping", core.id()))),
            _ = tx.closed() => Ok(()),
        };
        if let Err(e) = r {
            let _ = tx.send(Err(to_status(e))).await;
        }
        core.metrics.replay_streams.dec();
    }

    /// Where the stream starts, after waiting for `min_sequence`.
    async fn start(&self) -> Result<(SequenceNumber, Option<String>), ApiError> {
        let core = &self.core;
        let r = &self.req;
        if r.min_sequence > 0 {
            let mut applied = core.state().applied_seq();
            let wait = core.limits.min_sequence_wait;
            let reached =
                tokio::time::timeout(wait, applied.wait_for(|next| *next > r.min_sequence));
            match reached.await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(ApiError::Unavailable("node stopping".to_owned())),
                Err(_) => {
                    return Err(ApiError::DeadlineExceeded(format!(
                        "node {} has not applied sequence {} within {} ms (limits.min_sequence_wait)",
                        core.id(),
                        r.min_sequence,
                        wait.as_millis()
                    )));
                }
            }
        }
        if self.require_sync {
            require_in_sync(core)?;
        }
        let log_start = core.readable_start()?;
        let mut tenant = r.tenant.clone();
        let from = match &r.start {
            None | Some(Start::FromSequence(0)) => log_start,
            Some(Start::FromSequence(s)) => *s,
            Some(Start::Checkpoint(name)) => {
                check_name("checkpoint name", name)?;
                let cp = core
                    .state()
                    .read(|i| i.checkpoints.get(name).cloned())
                    .ok_or_else(|| ApiError::NotFound(format!("checkpoint {name:?} not found")))?;
                tenant = tenant.or(cp.tenant);
                (cp.sequence + 1).max(log_start)
            }
        };
        if from < log_start {
            return Err(ApiError::OutOfRange {
                requested: from,
                log_start,
            });
        }
        Ok((from, tenant))
    }

    async fn stream(&self, start: (SequenceNumber, Option<String>)) -> Result<(), ApiError> {
        let (mut pos, tenant) = start;
        let tenant: Option<Arc<str>> = tenant.map(Into::into);
        let mut left = if self.req.limit == 0 {
            u64::MAX
        } else {
            self.req.limit
        };
        let mut applied = self.core.state().applied_seq();
        let batch = self.core.limits.replay_batch_entries;
        loop {
            let upto = *applied.borrow_and_update();
            if pos < upto {
                let chunk = read_chunk(
                    &self.core,
                    pos,
                    upto,
                    tenant.clone(),
                    batch.min(left as usize),
                )
                .await?;
                pos = chunk.next;
                let n = chunk.entries.len() as u64;
                if n > 0 {
                    left -= n;
                    self.core.metrics.replayed_entries.inc_by(n);
                    let msg = self.message(chunk.entries)?;
                    if self.tx.send(Ok(msg)).await.is_err() {
                        return Ok(());
                    }
                }
                if left == 0 {
                    return Ok(());
                }
                continue;
            }
            if !self.req.follow {
                return Ok(());
            }
            if applied.changed().await.is_err() {
                return Err(ApiError::Unavailable("node stopping".to_owned()));
            }
        }
    }

    fn message(&self, entries: Vec<pb::Entry>) -> Result<ReplayResponse, ApiError> {
        let commit = self.core.next_seq() - 1;
        let wal = self.core.wal()?;
        Ok(ReplayResponse {
            entries,
            log_start: self.core.readable_start()?,
            commit_sequence: commit,
            last_sequence: wal.next_seq().saturating_sub(1),
        })
    }
}

struct Chunk {
    entries: Vec<pb::Entry>,
    /// Where the next chunk starts.
    next: SequenceNumber,
}

/// Reads up to `max` records of `tenant` (all tenants: `None`) in `from..upto` on a blocking
/// thread.
async fn read_chunk(
    core: &Core,
    from: SequenceNumber,
    upto: SequenceNumber,
    tenant: Option<Arc<str>>,
    max: usize,
) -> Result<Chunk, ApiError> {
    let wal = core.wal()?;
    // Records skipped by the tenant filter count too, so a chunk's work stays bounded.
    let scan_max = max.saturating_mul(64).max(4096);
    let read = tokio::task::spawn_blocking(move || {
        let mut entries = Vec::new();
        let mut next = from;
        let mut scanned = 0usize;
        wal.replay(from, |e| {
            if e.sequence_number >= upto || entries.len() >= max || scanned >= scan_max {
                return ControlFlow::Break(());
            }
            scanned += 1;
            next = e.sequence_number + 1;
            if tenant.as_deref().is_none_or(|t| t == e.tenant_id) {
                entries.push(to_proto(&e));
            }
            ControlFlow::Continue(())
        })?;
        Ok::<_, crate::wal::WalError>(Chunk { entries, next })
    });
    let chunk = read
        .await
        .map_err(|e| ApiError::Internal(format!("replay task: {e}")))?
        .map_err(|e| super::read_error(core, e))?;
    if chunk.next == from && from < upto {
        // The WAL holds no record at `from` although it is committed: it was truncated.
        return Err(ApiError::OutOfRange {
            requested: from,
            log_start: core.readable_start()?,
        });
    }
    Ok(chunk)
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

    type ReplayStream = EntryStream;

    async fn replay(&self, req: Request<ReplayRequest>) -> Result<Response<EntryStream>, Status> {
        observed(&self.core, "Replay", async {
            self.replay_open(req.into_inner(), true)
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
            let name = req.into_inner().name;
            let r = check_name("checkpoint name", &name)
                .and_then(|_| require_in_sync(&self.core))
                .and_then(|_| {
                    self.core
                        .state()
                        .read(|i| i.checkpoints.get(&name).cloned())
                        .ok_or_else(|| ApiError::NotFound(format!("checkpoint {name:?} not found")))
                });
            let cp = r.map_err(to_status)?;
            Ok(Response::new(Checkpoint {
                name,
                tenant: cp.tenant,
                sequence: cp.sequence,
            }))
        })
        .await
    }

    async fn list_checkpoints(
        &self,
        req: Request<ListCheckpointsRequest>,
    ) -> Result<Response<ListCheckpointsResponse>, Status> {
        observed(&self.core, "ListCheckpoints", async {
            let tenant = req.into_inner().tenant;
            require_in_sync(&self.core).map_err(to_status)?;
            let checkpoints = self.core.state().read(|i| {
                i.checkpoints
                    .iter()
                    .filter(|(_, c)| tenant.is_none() || c.tenant == tenant)
                    .map(|(name, c)| Checkpoint {
                        name: name.clone(),
                        tenant: c.tenant.clone(),
                        sequence: c.sequence,
                    })
                    .collect()
            });
            Ok(Response::new(ListCheckpointsResponse { checkpoints }))
        })
        .await
    }

    async fn truncate(
        &self,
        req: Request<TruncateRequest>,
    ) -> Result<Response<TruncateResponse>, Status> {
        observed(&self.core, "Truncate", async {
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
        _req: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        observed(&self.core, "ListSegments", async {
            let wal = self.core.wal().map_err(|e| to_status(e.into()))?;
            let log_start = self
                .core
                .readable_start()
                .map_err(|e| to_status(e.into()))?;
            let segments = wal
                .segments()
                .into_iter()
                .map(|s| pb::Segment {
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
                })
                .collect();
            Ok(Response::new(ListSegmentsResponse {
                segments,
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
            let id = req.into_inner().id;
            let seg = self
                .core
                .wal()
                .map_err(|e| to_status(e.into()))?
                .segments()
                .into_iter()
                .find(|s| s.id == id)
                .ok_or_else(|| {
                    to_status(ApiError::NotFound(format!(
                        "segment {id} not found on node {}",
                        self.core.id()
                    )))
                })?;
            let from = seg.start_seq.max(
                self.core
                    .readable_start()
                    .map_err(|e| to_status(e.into()))?,
            );
            let upto = seg
                .end_seq
                .map_or(from, |e| e + 1)
                .min(self.core.next_seq());
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
