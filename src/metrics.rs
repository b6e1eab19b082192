//! The node's Prometheus registry and `/metrics` over HTTP.
//!
//! One registry per node holds the WAL's metrics (`wal_*`, registered by the WAL) and the ones
//! below (`replog_*`). Raft gauges are refreshed from openraft's metrics by a task of the node;
//! API metrics are recorded by the gRPC services. Names follow Prometheus conventions (base
//! units, `_total` counters), which the tests check with a text-format parser.

use std::future::Future;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
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
}

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
        Ok(NodeMetrics {
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
            registry: r,
            replication_lag,
            write_duration,
            coalesced_writes,
            grpc_requests,
            grpc_duration,
        })
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: NodeMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    m.render(),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "the metrics server stopped");
    }
}
