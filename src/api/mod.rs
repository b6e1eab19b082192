//! The public gRPC API of a node: `replog.v1.LogService` ([`log`]), `replog.v1.AdminService`
//! ([`admin`]), `grpc.health.v1` and server reflection (v1 and v1alpha), all on the node's
//! client listener (the internal Raft service has a listener of its own).
//!
//! Any node accepts every call. Writes and membership changes on a follower are forwarded to
//! the leader once ([`forward`]); reads are served locally when this replica is in sync. Errors
//! become gRPC statuses in one function ([`error::to_status`]).
//!
//! A thin adapter: each call decodes its request into the core's types, calls the [`Core`] and
//! maps the answer (or the error) back. The use cases and their rules live in [`crate::core`];
//! what an error status carries is the wire contract ([`crate::wire`]). It knows nothing of
//! Raft.

pub mod admin;
pub mod auth;
pub mod error;
pub mod forward;
pub mod log;
mod produce;
mod relay;

use std::sync::Arc;
use std::time::Instant;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Router;

use crate::core::{Core, CoreError};
use crate::proto::admin_service_server::AdminServiceServer;
use crate::proto::log_service_server::LogServiceServer;
use crate::wal::Operation;
use crate::wire;

/// How often the health service's answer for `LogService` is brought up to date.
const HEALTH_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps `grpc.health.v1` current until the node stops: "" (the node as a whole, a liveness
/// check) and `replog.v1.AdminService` are SERVING while the server runs; `replog.v1.LogService`
/// is SERVING only while this replica is in sync (it hears from a leader and has applied what
/// is committed, so it serves replay): a readiness check that holds a rolling restart until the
/// restarted node has caught up.
async fn report_health(core: Arc<Core>, reporter: tonic_health::server::HealthReporter) {
    reporter
        .set_serving::<AdminServiceServer<admin::AdminApi>>()
        .await;
    let stopped = core.stopped();
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(HEALTH_CHECK);
    let mut last = None;
    loop {
        let in_sync = matches!(core.replica_state(), crate::core::ReplicaState::InSync);
        if last != Some(in_sync) {
            if in_sync {
                reporter
                    .set_serving::<LogServiceServer<log::LogApi>>()
                    .await;
            } else {
                reporter
                    .set_not_serving::<LogServiceServer<log::LogApi>>()
                    .await;
            }
            last = Some(in_sync);
        }
        tokio::select! {
            () = &mut stopped => return,
            _ = tick.tick() => {}
        }
    }
}

/// The encoded descriptors of replog's protos, published by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/replog_descriptor.bin"));

/// The public services of a node, served on both listeners: to clients on the client
/// listener (behind [`auth::Authenticate`]) and to members forwarding calls on the peer
/// listener (behind the member check). One instance, so both share the node's stream limits
/// and its link to the leader.
pub struct Api {
    core: Arc<Core>,
    log: Arc<log::LogApi>,
    admin: Arc<admin::AdminApi>,
    max_message_bytes: usize,
}

impl Api {
    /// `peer_tls`: TLS towards other members' peer listeners (forwarding, status).
    pub fn new(
        core: Arc<Core>,
        max_message_bytes: usize,
        peer_tls: Option<Arc<crate::tls::Reloadable>>,
    ) -> Api {
        let fwd = Arc::new(forward::Forwarder::new(max_message_bytes, peer_tls));
        Api {
            log: Arc::new(log::LogApi::new(core.clone(), fwd.clone())),
            admin: Arc::new(admin::AdminApi::new(core.clone(), fwd)),
            core,
            max_message_bytes,
        }
    }

    fn servers(
        &self,
    ) -> (
        LogServiceServer<log::LogApi>,
        AdminServiceServer<admin::AdminApi>,
    ) {
        let max = self.max_message_bytes;
        let log = LogServiceServer::from_arc(self.log.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let admin = AdminServiceServer::from_arc(self.admin.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        (log, admin)
    }

    /// The client listener's routes: the public services (each call authenticated by
    /// `auth`), health and reflection.
    pub fn client_routes(
        &self,
        mut server: tonic::transport::Server,
        auth: auth::Authenticate,
    ) -> Router {
        let (log, admin) = self.servers();
        let (reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(report_health(self.core.clone(), reporter));
        let mut router = server
            .add_service(health)
            .add_service(InterceptedService::new(log, auth.clone()))
            .add_service(InterceptedService::new(admin, auth));
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

    /// Adds the public services to the peer listener's `router`, for calls members forward:
    /// each admitted by `member_check`, then run as forwarded by a member (never forwarded
    /// again, and as the open principal: the member has checked its caller's rights).
    pub fn add_peer_routes<I>(&self, router: Router, member_check: I) -> Router
    where
        I: tonic::service::Interceptor + Clone + Send + Sync + 'static,
    {
        let (log, admin) = self.servers();
        let internal = move |req: tonic::Request<()>| {
            let mut check = member_check.clone();
            let mut req = check.call(req)?;
            req.extensions_mut().insert(forward::Internal);
            Ok(req)
        };
        router
            .add_service(InterceptedService::new(log, internal.clone()))
            .add_service(InterceptedService::new(admin, internal))
    }
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
    let m = core.metrics();
    m.grpc_requests
        .with_label_values(&[method, wire::code_name(code)])
        .inc();
    m.grpc_duration
        .with_label_values(&[method])
        .observe(started.elapsed().as_secs_f64());
    r
}

/// The WAL operation of a protobuf operation value (INSERT, UPDATE or DELETE).
pub fn operation(v: i32) -> Result<Operation, CoreError> {
    let op = wire::operation(v)?;
    Operation::try_from(wire::operation_code(op))
        .map_err(|code| CoreError::InvalidArgument(format!("operation {code} is not known")))
}
