//! `LogService.Produce`: a producer's pipelined writes on one stream, answered in order.
//!
//! One task per stream reads requests while fewer than `limits.produce_max_in_flight` are
//! unanswered, submits each in stream order (on the leader to the core's write queue, on a
//! follower to its [`Relay`] link to the leader), and sends each result as soon as it and every
//! earlier one are known. A request that fails is answered with its error and the stream goes
//! on; the stream itself fails only when the client breaks it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::error::to_status;
use super::forward::{Target, target};
use super::relay::{Relay, Relayed};
use crate::auth::{Principal, Right};
use crate::core::{Core, CoreError, NewRecord};
use crate::proto::{self as pb, ProduceRequest, ProduceResponse, WriteResponse, produce_response};
use crate::wal::ProducerKey;

pub type ProduceStream = ReceiverStream<Result<ProduceResponse, Status>>;

type Answer = Pin<Box<dyn Future<Output = ProduceResponse> + Send>>;

/// Starts serving one `Produce` stream.
pub fn serve(
    core: Arc<Core>,
    relay: Arc<Relay>,
    (forwarded, caller): (bool, Arc<Principal>),
    input: Streaming<ProduceRequest>,
    permit: OwnedSemaphorePermit,
) -> ProduceStream {
    let window = core.limits().produce_max_in_flight;
    let (tx, rx) = mpsc::channel(window);
    tokio::spawn(async move {
        let from = Origin { forwarded, caller };
        run(&core, &relay, &from, input, tx, window).await;
        drop(permit);
    });
    ReceiverStream::new(rx)
}

/// Who sends a stream's writes: a member forwarding them, and the principal they run as.
struct Origin {
    forwarded: bool,
    caller: Arc<Principal>,
}

async fn run(
    core: &Arc<Core>,
    relay: &Relay,
    from: &Origin,
    mut input: Streaming<ProduceRequest>,
    tx: mpsc::Sender<Result<ProduceResponse, Status>>,
    window: usize,
) {
    let mut in_flight: FuturesOrdered<Answer> = FuturesOrdered::new();
    let mut reading = true;
    while reading || !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                count(core, &answer);
                if tx.send(Ok(answer)).await.is_err() {
                    // The client went away; the writes it sent go on without it.
                    return;
                }
            }
            msg = input.next(), if reading && in_flight.len() < window => match msg {
                Some(Ok(req)) => in_flight.push_back(submit(core, relay, from, req).await),
                // The client finished sending (or broke the stream): answer what was sent.
                Some(Err(_)) | None => reading = false,
            },
            () = tx.closed() => return,
        }
    }
}

/// Counts a write answered on a stream, as a unary call is counted (method `ProduceWrite`).
fn count(core: &Core, answer: &ProduceResponse) {
    let code = match &answer.result {
        Some(produce_response::Result::Error(e)) => tonic::Code::from(e.code),
        _ => tonic::Code::Ok,
    };
    core.metrics()
        .grpc_requests
        .with_label_values(&["ProduceWrite", crate::wire::code_name(code)])
        .inc();
}

/// The ordered part of one request: checked and queued (or relayed) now; its answer later.
async fn submit(core: &Arc<Core>, relay: &Relay, from: &Origin, req: ProduceRequest) -> Answer {
    let id = req.id;
    let failed = |status: Status| -> Answer { Box::pin(std::future::ready(error(id, &status))) };
    for e in &req.entries {
        if let Err(denied) = from.caller.check(Right::Write(Some(&e.tenant))) {
            return failed(Status::permission_denied(denied));
        }
    }
    match target(core, from.forwarded) {
        Err(status) => failed(status),
        Ok(Target::Local) => {
            let submitted = match decode(req) {
                Ok((producer, records)) => core.submit_write(producer, records).await,
                Err(e) => Err(e),
            };
            match submitted {
                Err(e) => failed(to_status(e)),
                Ok(pending) => {
                    let core = core.clone();
                    Box::pin(async move {
                        match pending.await {
                            Ok(w) => written(id, written_response(&core, w)),
                            Err(e) => error(id, &to_status(e)),
                        }
                    })
                }
            }
        }
        Ok(Target::Leader(leader)) => match relay.submit(core, leader, req).await {
            Err(status) => failed(status),
            Ok(rx) => Box::pin(async move {
                let relayed: Relayed = rx.await.unwrap_or_else(|_| {
                    Err(Status::unavailable(
                        "the link to the leader dropped a write without an answer",
                    ))
                });
                match relayed {
                    Ok(w) => written(id, w),
                    Err(status) => error(id, &status),
                }
            }),
        },
    }
}

/// A request's key and records (the core checks them against the limits).
pub fn decode(req: ProduceRequest) -> Result<(Option<ProducerKey>, Vec<NewRecord>), CoreError> {
    let producer = key(req.producer_id, req.producer_seq)?;
    Ok((producer, records(req.entries)?))
}

/// An idempotency key from its two optional fields.
pub fn key(id: Option<u64>, seq: Option<u64>) -> Result<Option<ProducerKey>, CoreError> {
    match (id, seq) {
        (Some(id), Some(seq)) => Ok(Some(ProducerKey { id, seq })),
        (None, None) => Ok(None),
        _ => Err(CoreError::InvalidArgument(
            "producer_id and producer_seq go together".to_owned(),
        )),
    }
}

/// Decodes a batch's entries.
pub fn records(entries: Vec<pb::EntryInput>) -> Result<Vec<NewRecord>, CoreError> {
    entries
        .into_iter()
        .map(|e| {
            Ok(NewRecord {
                operation: super::operation(e.operation)?,
                tenant: e.tenant,
                data: e.data,
            })
        })
        .collect()
}

/// The answer to a write committed by this node as leader.
pub fn written_response(core: &Core, w: crate::core::Written) -> WriteResponse {
    WriteResponse {
        first_sequence: w.first_seq,
        last_sequence: w.last_seq,
        timestamp_us: w.timestamp_us,
        duplicate: w.duplicate,
        leader_id: core.id(),
        leader_address: core.advertise().to_owned(),
    }
}

fn written(id: u64, w: WriteResponse) -> ProduceResponse {
    ProduceResponse {
        id,
        result: Some(produce_response::Result::Written(w)),
    }
}

fn error(id: u64, status: &Status) -> ProduceResponse {
    ProduceResponse {
        id,
        result: Some(produce_response::Result::Error(crate::wire::produce_error(
            status,
        ))),
    }
}
