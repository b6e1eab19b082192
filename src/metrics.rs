//! The node's Prometheus registry and `/metrics` over HTTP.
//!
//! One registry per node holds the WAL's metrics (`wal_*`, registered by the WAL) and the ones
//! below (`replog_*`). Raft gauges are refreshed from openraft's metrics by a task of the node;
//! API metrics are recorded by the gRPC services. Names follow Prometheus conventions (base
//! units, `_total` counters), which the tests check with a text-format parser.

use std::future::Future;
use std::sync::Arc;

use crate::auth::{Authenticator, Principal};
use crate::tls::Reloadable;

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct NodeMetrics {
    pub registry: Registry,
    pub term: IntGauge,
    pub is_leader: IntGauge,
    pub has_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub last_log_index: IntGauge,
    pub commit_index: IntGauge,
    pub applied_index: IntGauge,
    pub replication_lag: IntGaugeVec,
    pub in_sync: IntGauge,
    pub write_duration: Histogram,
    pub coalesced_writes: Histogram,
    pub grpc_requests: IntCounterVec,
    pub grpc_duration: HistogramVec,
    pub replay_streams: IntGauge,
    pub replayed_entries: IntCounter,
    pub keyed_writes_in_flight: IntGauge,
    pub duplicate_keys_applied: IntCounter,
    pub repairing: IntGauge,
    /// TLS: reloads of each listener's files, by result (`ok`, `error`).
    pub tls_reloads: IntCounterVec,
    /// TLS: when each listener's certificate expires (Unix seconds).
    pub tls_cert_expiry: IntGaugeVec,
    /// TLS: handshakes refused or timed out, by listener.
    pub tls_handshake_failures: IntCounterVec,
    /// Auth: calls refused before reaching a service, by reason (`unauthenticated`, `no_grant`).
    pub auth_refused: IntCounterVec,
    /// Auth: token file reloads, by result (`ok`, `error`).
    pub auth_reloads: IntCounterVec,
    /// Quotas: writes refused, by tenant and limit.
    pub quota_exceeded: IntCounterVec,
    /// Quotas: time replay streams waited for their tenant's replay rate, by tenant.
    pub replay_throttled_seconds: CounterVec,
    /// Quotas: data bytes each tenant with a retained-bytes limit keeps in the log.
    pub tenant_retained_bytes: IntGaugeVec,
    /// The file system holding the data directory: bytes this node may still write...
    pub disk_available: IntGauge,
    /// ...of its size.
    pub disk_capacity: IntGauge,
    /// Run before each scrape, to set gauges from state read at that moment (see
    /// [`NodeMetrics::before_gather`]).
    refresh: Arc<parking_lot::Mutex<Option<Refresh>>>,
}

/// Sets gauges from the current state, at scrape time (never while rendering: it runs under
/// a lock).
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

fn gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl NodeMetrics {
    pub fn new() -> prometheus::Result<NodeMetrics> {
        let r = Registry::new();
        let latency = prometheus::exponential_buckets(0.000_1, 2.0, 16)?;
        let write_duration = Histogram::with_opts(
            HistogramOpts::new(
                "replog_write_duration_seconds",
                "Time from receiving a write on the leader to acknowledging it (committed, applied).",
            )
            .buckets(latency.clone()),
        )?;
        r.register(Box::new(write_duration.clone()))?;
        let coalesced_writes = Histogram::with_opts(
            HistogramOpts::new(
                "replog_write_coalesced_writes",
                "On the leader: client writes carried by each Raft entry it proposed for writes.",
            )
            .buckets(prometheus::exponential_buckets(1.0, 2.0, 14)?),
        )?;
        r.register(Box::new(coalesced_writes.clone()))?;
        let grpc_requests = IntCounterVec::new(
            Opts::new(
                "replog_grpc_requests_total",
                "Public gRPC requests handled, by method and status code.",
            ),
            &["method", "code"],
        )?;
        r.register(Box::new(grpc_requests.clone()))?;
        let grpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "replog_grpc_request_duration_seconds",
                "Duration of unary public gRPC requests (streams: until the first message), by method.",
            )
            .buckets(latency),
            &["method"],
        )?;
        r.register(Box::new(grpc_duration.clone()))?;
        let replication_lag = IntGaugeVec::new(
            Opts::new(
                "replog_raft_replication_lag_entries",
                "On the leader: entries each peer's log is behind the leader's last index.",
            ),
            &["peer"],
        )?;
        r.register(Box::new(replication_lag.clone()))?;
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "replog_tls_reloads_total",
                "TLS files re-read after a change or SIGHUP, by listener and result (ok, error: the old files stay in use).",
            ),
            &["listener", "result"],
        )?;
        r.register(Box::new(tls_reloads.clone()))?;
        let tls_cert_expiry = IntGaugeVec::new(
            Opts::new(
                "replog_tls_certificate_expiry_timestamp_seconds",
                "When the certificate each listener serves expires (Unix time).",
            ),
            &["listener"],
        )?;
        r.register(Box::new(tls_cert_expiry.clone()))?;
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "replog_tls_handshake_failures_total",
                "TLS handshakes refused (plaintext, unknown CA, no or expired certificate) or timed out, by listener.",
            ),
            &["listener"],
        )?;
        r.register(Box::new(tls_handshake_failures.clone()))?;
        let auth_refused = IntCounterVec::new(
            Opts::new(
                "replog_auth_refused_total",
                "Calls refused for their credentials, by reason (unauthenticated: none or an invalid token; no_grant: a certificate without a grant).",
            ),
            &["reason"],
        )?;
        r.register(Box::new(auth_refused.clone()))?;
        let auth_reloads = IntCounterVec::new(
            Opts::new(
                "replog_auth_token_file_reloads_total",
                "Token file re-reads after a change or SIGHUP, by result (ok, error: the grants in use stay).",
            ),
            &["result"],
        )?;
        r.register(Box::new(auth_reloads.clone()))?;
        let quota_exceeded = IntCounterVec::new(
            Opts::new(
                "replog_quota_exceeded_total",
                "Writes refused (RESOURCE_EXHAUSTED, nothing written) for a tenant's quota, by tenant and limit (write_entries_per_sec, write_bytes_per_sec, retained_bytes).",
            ),
            &[TENANT_LABEL, "quota"],
        )?;
        r.register(Box::new(quota_exceeded.clone()))?;
        let replay_throttled_seconds = CounterVec::new(
            Opts::new(
                "replog_quota_replay_throttled_seconds_total",
                "Time replay streams of each tenant waited for its replay_bytes_per_sec quota.",
            ),
            &[TENANT_LABEL],
        )?;
        r.register(Box::new(replay_throttled_seconds.clone()))?;
        let tenant_retained_bytes = IntGaugeVec::new(
            Opts::new(
                "replog_tenant_retained_bytes",
                "Data bytes each tenant with a retained_bytes quota keeps in the log (counted per range of 65,536 sequence numbers).",
            ),
            &[TENANT_LABEL],
        )?;
        r.register(Box::new(tenant_retained_bytes.clone()))?;
        Ok(NodeMetrics {
            quota_exceeded,
            replay_throttled_seconds,
            tenant_retained_bytes,
            auth_refused,
            auth_reloads,
            tls_reloads,
            tls_cert_expiry,
            tls_handshake_failures,
            term: gauge(&r, "replog_raft_term", "Current Raft term of this node.")?,
            is_leader: gauge(&r, "replog_raft_is_leader", "1 if this node is the leader.")?,
            has_leader: gauge(
                &r,
                "replog_raft_has_leader",
                "1 if this node knows a leader.",
            )?,
            leader_changes: counter(
                &r,
                "replog_raft_leader_changes_total",
                "Times the leader this node knows changed.",
            )?,
            last_log_index: gauge(
                &r,
                "replog_raft_last_log_index",
                "Last Raft log index held.",
            )?,
            commit_index: gauge(
                &r,
                "replog_raft_commit_index",
                "Last committed Raft index known.",
            )?,
            applied_index: gauge(&r, "replog_raft_applied_index", "Last Raft index applied.")?,
            in_sync: gauge(
                &r,
                "replog_replica_in_sync",
                "1 if this node serves replay (hears from the leader, applied what is committed).",
            )?,
            replay_streams: gauge(&r, "replog_replay_streams", "Replay streams open.")?,
            replayed_entries: counter(
                &r,
                "replog_replayed_entries_total",
                "Entries sent by replay and segment reads.",
            )?,
            keyed_writes_in_flight: gauge(
                &r,
                "replog_keyed_writes_in_flight",
                "On the leader: producers with a keyed write proposed and not yet answered.",
            )?,
            duplicate_keys_applied: counter(
                &r,
                "replog_duplicate_keys_applied_total",
                "Keyed writes applied whose key was applied before (a broken invariant: always 0).",
            )?,
            repairing: gauge(
                &r,
                "replog_repairing",
                "1 while this node repairs damaged WAL segments from a replica (it neither votes nor serves reads), else 0.",
            )?,
            disk_available: gauge(
                &r,
                "replog_disk_available_bytes",
                "Bytes available to this node on the file system of its data directory.",
            )?,
            disk_capacity: gauge(
                &r,
                "replog_disk_capacity_bytes",
                "Size of the file system of this node's data directory, in bytes.",
            )?,
            registry: r,
            replication_lag,
            write_duration,
            coalesced_writes,
            grpc_requests,
            grpc_duration,
            refresh: Arc::default(),
        })
    }

    /// Runs `f` before every scrape (it replaces an earlier one): gauges that follow state
    /// changing on every write are set when read, rather than by a task woken on every write.
    pub fn before_gather(&self, f: Refresh) {
        *self.refresh.lock() = Some(f);
    }

    /// Runs the [`NodeMetrics::before_gather`] function, if any; one at a time, so that its
    /// updates of counters from totals are never applied twice.
    pub fn refresh_now(&self) {
        if let Some(f) = &*self.refresh.lock() {
            f();
        }
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> String {
        self.render_for(&Principal::open())
    }

    /// The registry in Prometheus' text format, as `p` may see it: series labelled with a
    /// `tenant` outside its scope are left out.
    pub fn render_for(&self, p: &Principal) -> String {
        self.refresh_now();
        let mut families = self.registry.gather();
        if !p.sees(None) {
            for f in &mut families {
                let kept: Vec<_> = f
                    .take_metric()
                    .into_iter()
                    .filter(|m| {
                        m.get_label()
                            .iter()
                            .all(|l| l.name() != TENANT_LABEL || p.sees(Some(l.value())))
                    })
                    .collect();
                f.set_metric(kept);
            }
            families.retain(|f| !f.get_metric().is_empty());
        }
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&families, &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// The label naming a tenant: a principal never sees another tenant's series.
pub const TENANT_LABEL: &str = "tenant";

/// Who may read `/metrics`, and how.
#[derive(Clone, Default)]
pub struct Access {
    /// HTTPS with this material (the client listener's).
    pub tls: Option<Arc<Reloadable>>,
    /// A bearer token from this file is required.
    pub auth: Option<Arc<Authenticator>>,
}

/// The principal of a `/metrics` request, or the answer refusing it.
fn metrics_principal(
    auth: Option<&Authenticator>,
    headers: &axum::http::HeaderMap,
) -> Result<Principal, &'static str> {
    let Some(auth) = auth else {
        return Ok(Principal::open());
    };
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, t) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| t.trim())
        })
        .ok_or("a bearer token is required (Authorization: Bearer <token>)\n")?;
    auth.token(token)
        .map(|p| (*p).clone())
        .map_err(|_| "the bearer token is not valid (unknown, revoked or mistyped)\n")
}

/// Accepted TLS connections, for axum.
struct TlsListener {
    accepted: tokio_stream::wrappers::ReceiverStream<
        std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    >,
    addr: std::net::SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt;
        loop {
            match self.accepted.next().await {
                Some(Ok(s)) => {
                    let from = s.get_ref().0.peer_addr().unwrap_or(self.addr);
                    return (s, from);
                }
                Some(Err(_)) => continue,
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// Serves `GET /metrics` on `listener` (over HTTPS and behind a token as `access` says)
/// until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: NodeMetrics,
    access: Access,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;
    let auth = access.auth.clone();
    let failures = metrics
        .tls_handshake_failures
        .with_label_values(&["metrics"]);
    let app = axum::Router::new().route(
        "/metrics",
        get(move |headers: axum::http::HeaderMap| {
            let m = metrics.clone();
            let auth = auth.clone();
            async move {
                match metrics_principal(auth.as_deref(), &headers) {
                    Ok(p) => (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        m.render_for(&p),
                    )
                        .into_response(),
                    Err(why) => (
                        StatusCode::UNAUTHORIZED,
                        [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                        why,
                    )
                        .into_response(),
                }
            }
        }),
    );
    let r = match access.tls {
        Some(tls) => {
            let addr = match listener.local_addr() {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "the metrics server did not start");
                    return;
                }
            };
            let accepted = crate::tls::incoming_http(listener, tls, "metrics", failures);
            axum::serve(TlsListener { accepted, addr }, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    if let Err(e) = r {
        tracing::error!(error = %e, "the metrics server stopped");
    }
}
