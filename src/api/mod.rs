//! The public gRPC API of a node: `replog.v1.LogService` ([`log`]), `replog.v1.AdminService`
//! ([`admin`]), `grpc.health.v1` and server reflection (v1 and v1alpha), all on the node's one
//! gRPC port beside the internal Raft service.
//!
//! Any node accepts every call. Writes and membership changes on a follower are forwarded to
//! the leader once ([`forward`]); reads are served locally when this replica is in sync. Errors
//! become gRPC statuses in one function ([`error::to_status`]). This module knows nothing of
//! openraft: it talks to [`Core`].

pub mod admin;
pub mod error;
pub mod forward;
pub mod log;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tonic::transport::server::Router;

use self::error::ApiError;
use crate::node::{Core, ReplicaState};
use crate::proto::admin_service_server::AdminServiceServer;
use crate::proto::log_service_server::LogServiceServer;
use crate::wal::Operation;

/// The encoded descriptors of replog's protos, published by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/replog_descriptor.bin"));

/// Longest tenant id or checkpoint name, in characters.
pub const NAME_MAX_CHARS: usize = 128;

/// Adds the public services, health and reflection to a server.
pub fn routes(
    core: Arc<Core>,
    max_message_bytes: usize,
    mut server: tonic::transport::Server,
) -> Router {
    let fwd = Arc::new(forward::Forwarder::new(max_message_bytes));
    let log = LogServiceServer::new(log::LogApi::new(core.clone(), fwd.clone()))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let admin = AdminServiceServer::new(admin::AdminApi::new(core.clone(), fwd))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        reporter
            .set_serving::<LogServiceServer<log::LogApi>>()
            .await;
        reporter
            .set_serving::<AdminServiceServer<admin::AdminApi>>()
            .await;
    });
    let mut router = server
        .add_service(health)
        .add_service(log)
        .add_service(admin);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    match (reflection().build_v1(), reflection().build_v1alpha()) {
        (Ok(v1), Ok(v1alpha)) => router = router.add_service(v1).add_service(v1alpha),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "server reflection is off: bad embedded descriptors")
        }
    }
    router
}

/// Runs `call`, recording the request in `replog_grpc_requests_total` and its duration.
pub async fn observed<T>(
    core: &Core,
    method: &'static str,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let started = Instant::now();
    let r = call.await;
    let code = match &r {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    };
    let m = &core.metrics;
    m.grpc_requests
        .with_label_values(&[method, code_name(code)])
        .inc();
    m.grpc_duration
        .with_label_values(&[method])
        .observe(started.elapsed().as_secs_f64());
    r
}

/// The canonical upper-snake name of a code (as grpc-go prints them).
pub fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Checks a tenant id or checkpoint name: 1-128 characters of `[A-Za-z0-9._-]`.
pub fn check_name(what: &str, s: &str) -> Result<(), ApiError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if s.is_empty() || s.len() > NAME_MAX_CHARS {
        return Err(ApiError::InvalidArgument(format!(
            "{what} must be 1-{NAME_MAX_CHARS} characters, got {}",
            s.len()
        )));
    }
    if let Some(c) = s.chars().find(|c| !ok_char(*c)) {
        return Err(ApiError::InvalidArgument(format!(
            "{what} {s:?} contains {c:?}: only [A-Za-z0-9._-] are allowed"
        )));
    }
    Ok(())
}

/// The WAL operation of a protobuf operation value.
pub fn operation(v: i32) -> Result<Operation, ApiError> {
    match crate::proto::Operation::try_from(v) {
        Ok(crate::proto::Operation::Insert) => Ok(Operation::Insert),
        Ok(crate::proto::Operation::Update) => Ok(Operation::Update),
        Ok(crate::proto::Operation::Delete) => Ok(Operation::Delete),
        _ => Err(ApiError::InvalidArgument(format!(
            "operation {v} is not one of OPERATION_INSERT (1), OPERATION_UPDATE (2), OPERATION_DELETE (3)"
        ))),
    }
}

/// Refuses a read on a replica that is not in sync, naming the leader to ask instead.
pub fn require_in_sync(core: &Core) -> Result<(), ApiError> {
    match core.replica_state() {
        ReplicaState::InSync => Ok(()),
        ReplicaState::Behind(why) => Err(ApiError::NotInSync {
            message: format!("{why}; ask the leader"),
            leader: core.leader().filter(|(id, _)| *id != core.id()),
        }),
    }
}

/// A WAL read error as the client sees it: a damaged segment this node is repairing is not data
/// loss (the cluster holds the entries): the read is sent elsewhere, like any read of a replica
/// that is not in sync.
pub fn read_error(core: &Core, e: crate::wal::WalError) -> ApiError {
    if let crate::wal::WalError::CorruptedEntry { segment, .. } = &e
        && core.wal().is_ok_and(|w| w.is_damaged(*segment))
    {
        return ApiError::NotInSync {
            message: format!(
                "node {} found a damaged WAL segment ({e}) and is repairing it from a replica; ask the leader",
                core.id()
            ),
            leader: core.leader().filter(|(id, _)| *id != core.id()),
        };
    }
    e.into()
}

/// Keeps the Raft gauges current: refreshed on every change of Raft's state, and every second
/// (lag and in-sync move with time too).
pub async fn watch_metrics(core: Arc<Core>) {
    let mut watch = core.raft().watch();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let stopped = core.stopped();
    tokio::pin!(stopped);
    let mut leader = None;
    loop {
        let s = core.status();
        let m = &core.metrics;
        m.term.set(s.term as i64);
        m.is_leader.set(i64::from(s.leader == Some(core.id())));
        m.has_leader.set(i64::from(s.leader.is_some()));
        if s.leader.is_some() && s.leader != leader {
            m.leader_changes.inc();
        }
        leader = s.leader;
        let last = s.last_log_index.unwrap_or(0);
        m.last_log_index.set(last as i64);
        m.commit_index
            .set(s.committed.map_or(0, |l| l.index) as i64);
        m.applied_index.set(s.applied.map_or(0, |l| l.index) as i64);
        m.replication_lag.reset();
        for (peer, matched) in &s.replication {
            if *peer != core.id() {
                let lag = last.saturating_sub(matched.unwrap_or(0));
                m.replication_lag
                    .with_label_values(&[&peer.to_string()])
                    .set(lag as i64);
            }
        }
        m.in_sync
            .set(i64::from(core.replica_state() == ReplicaState::InSync));
        m.keyed_writes_in_flight
            .set(core.keyed_writes_in_flight() as i64);
        let dups = core.state().duplicate_keys_applied.load(Ordering::Relaxed);
        m.duplicate_keys_applied
            .inc_by(dups.saturating_sub(m.duplicate_keys_applied.get()));
        tokio::select! {
            _ = &mut stopped => return,
            alive = watch.changed() => if !alive { return },
            _ = tick.tick() => {}
        }
    }
}

/// An uninitialized node started with `cluster.join`: asks the cluster to add it (as a learner,
/// then a voter once caught up), retrying until it is a member or the node stops.
pub async fn join(core: Arc<Core>, endpoints: Vec<String>) {
    let stopped = core.stopped();
    tokio::pin!(stopped);
    // One client (and its channels) for every attempt.
    let client = match crate::client::Client::new(&endpoints, Default::default()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, ?endpoints, "cannot join: bad cluster.join endpoints");
            return;
        }
    };
    loop {
        if core.status().members.contains_key(&core.id()) {
            tracing::info!(id = core.id(), "this node is a member of the cluster");
            return;
        }
        let attempt = client.add_node(core.id(), core.advertise(), false);
        tokio::select! {
            _ = &mut stopped => return,
            r = attempt => match r {
                Ok(_) => {
                    tracing::info!(id = core.id(), ?endpoints, "joined the cluster");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, ?endpoints, "joining the cluster failed; retrying"),
            },
        }
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
