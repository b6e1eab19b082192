//! The node's background tasks, each ending when the node stops: the client gRPC server (public
//! API), the peer gRPC server (the internal Raft service), the directory of client addresses, the truncator (purges after a replicated truncation),
//! retention (on the leader), the self-repair loop and the scrubber, the metrics (refresh and
//! HTTP) and joining a cluster.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{LoadedTls, NodeConfig};
use crate::core::{Core, ReplicaState, repair};
use crate::metrics::NodeMetrics;
use crate::raft::service::RaftServer;
use crate::raft::state_machine::SmShared;
use crate::raft::{RaftNode, Request, WalHandle};
use crate::wal::WalConfig;

/// Starts the node's tasks: the gRPC server, the truncator, retention (on a leader), metrics
/// (refresh and HTTP) and joining a cluster. Each ends when the node stops.
pub(super) fn spawn(
    cfg: &NodeConfig,
    core: &Arc<Core>,
    listeners: super::Listeners,
    security: Security,
    metrics_listener: Option<tokio::net::TcpListener>,
) -> Vec<JoinHandle<()>> {
    let stop = core.stop_signal();
    let Security { tls, auth } = security;
    let api = crate::api::Api::new(
        core.clone(),
        cfg.net.max_message_bytes,
        tls.as_ref().map(|t| t.peer.clone()),
    );
    let authenticate =
        crate::api::auth::Authenticate::new(auth.clone(), core.metrics().auth_refused.clone());
    let mut tasks = vec![
        tokio::spawn(serve_clients(
            cfg,
            listeners.client,
            tls.clone(),
            (&api, authenticate),
            core,
        )),
        tokio::spawn(serve_peers(cfg, listeners.peer, tls.clone(), &api, core)),
        tokio::spawn(crate::raft::directory::maintain(
            core.raft().directory().clone(),
            {
                let raft = core.raft().clone();
                move || raft.status().members
            },
            core.network().clone(),
            stop.clone(),
        )),
        tokio::spawn(truncator(
            core.raft().clone(),
            core.state().clone(),
            stop.clone(),
        )),
        tokio::spawn(watch_metrics(core.clone())),
        tokio::spawn(watch_disk(
            cfg.data_dir.clone(),
            core.metrics().clone(),
            stop.clone(),
        )),
        tokio::spawn(crate::core::quota::count_retained(
            core.clone(),
            stop.clone(),
        )),
        tokio::spawn(repair::run(
            core.clone(),
            max_fetch_bytes(&cfg.wal),
            stop.clone(),
        )),
    ];
    if !cfg.repair.scrub_interval.is_zero() {
        tasks.push(tokio::spawn(repair::scrub(
            core.clone(),
            cfg.repair.scrub_interval,
            cfg.repair.scrub_rate.as_u64(),
            stop.clone(),
        )));
    }
    if let Some(hours) = cfg.wal.retention_hours {
        let every = cfg.retention_check_interval;
        tasks.push(tokio::spawn(retention(
            core.raft().clone(),
            core.wal_handle().clone(),
            hours,
            every,
            stop.clone(),
        )));
    }
    if let Some(l) = metrics_listener {
        let mut stop = stop.clone();
        let done = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let access = crate::metrics::Access {
            tls: tls
                .as_ref()
                .filter(|_| cfg.auth.metrics_tls)
                .map(|t| t.client.clone()),
            auth: auth.clone().filter(|_| cfg.auth.metrics_token),
        };
        tasks.push(tokio::spawn(crate::metrics::serve(
            l,
            core.metrics().clone(),
            access,
            done,
        )));
    }
    if !cfg.join.is_empty() && cfg.initial_members.is_none() {
        let opts = crate::client::ClientOptions {
            tls: tls.as_ref().map(|t| t.client.outgoing().1),
            token: cfg.join_token.clone(),
            ..Default::default()
        };
        tasks.push(tokio::spawn(join(core.clone(), cfg.join.clone(), opts)));
    }
    tasks.push(tokio::spawn(reload_files(
        Security { tls, auth },
        core.metrics().clone(),
        stop.clone(),
    )));
    tasks
}

/// What guards the node's listeners: TLS material and the token file (each `None` when off).
pub(super) struct Security {
    pub tls: Option<LoadedTls>,
    pub auth: Option<Arc<crate::auth::Authenticator>>,
}

/// Re-reads the TLS files and the token file when they change (checked every few seconds) or
/// on SIGHUP, until the node stops. A bad file is reported and what is in use stays. With
/// neither, SIGHUP is only logged (it never stops the node, as its default action would).
async fn reload_files(security: Security, metrics: NodeMetrics, mut stop: watch::Receiver<bool>) {
    let Security { tls, auth } = security;
    let listeners: Vec<(&str, &Arc<crate::tls::Reloadable>)> = match &tls {
        Some(t) => vec![("client", &t.client), ("peer", &t.peer)],
        None => Vec::new(),
    };
    for (name, r) in &listeners {
        metrics
            .tls_cert_expiry
            .with_label_values(&[*name])
            .set(r.not_after());
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(crate::tls::RELOAD_CHECK);
    loop {
        let forced = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => false,
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        if forced && listeners.is_empty() && auth.is_none() {
            tracing::info!("SIGHUP: TLS and auth are off, nothing to reload");
        }
        if let Some(a) = &auth {
            let reloading = a.clone();
            match tokio::task::spawn_blocking(move || reloading.reload(forced)).await {
                Ok(Ok(true)) => {
                    metrics.auth_reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(file = %a.path().display(), "token file reloaded");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    metrics.auth_reloads.with_label_values(&["error"]).inc();
                    tracing::error!(error = %e, "token file not reloaded; the grants in use stay");
                }
                Err(_) => tracing::error!("the token file reload task failed"),
            }
        }
        for (name, r) in &listeners {
            // File reads: off the runtime's threads.
            let reloading = (*r).clone();
            let result = tokio::task::spawn_blocking(move || reloading.reload(forced)).await;
            let Ok(result) = result else {
                tracing::error!(listener = name, "the TLS reload task failed");
                continue;
            };
            match result {
                Ok(true) => {
                    metrics.tls_reloads.with_label_values(&[*name, "ok"]).inc();
                    metrics
                        .tls_cert_expiry
                        .with_label_values(&[*name])
                        .set(r.not_after());
                    tracing::info!(listener = name, cert = %r.files().cert.display(), "TLS certificates reloaded");
                }
                Ok(false) => {}
                Err(e) => {
                    metrics
                        .tls_reloads
                        .with_label_values(&[*name, "error"])
                        .inc();
                    tracing::error!(listener = name, error = %e, "TLS certificates not reloaded; the previous ones stay in use");
                }
            }
        }
    }
}

/// The most a repair fetches for one segment: a segment can exceed `segment_size` by one frame,
/// plus the frame after it that anchors the check.
pub(super) fn max_fetch_bytes(wal: &WalConfig) -> usize {
    let frame = wal.max_frame_bytes.as_u64();
    usize::try_from(wal.segment_size.as_u64() + 2 * frame).unwrap_or(usize::MAX)
}

/// The client gRPC server: the public services (each call authenticated), health and
/// reflection, until the node stops.
fn serve_clients(
    cfg: &NodeConfig,
    listener: tokio::net::TcpListener,
    tls: Option<LoadedTls>,
    (api, authenticate): (&crate::api::Api, crate::api::auth::Authenticate),
    core: &Arc<Core>,
) -> impl Future<Output = ()> + use<> {
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(cfg.limits.max_concurrent_streams);
    let router = api.client_routes(server, authenticate);
    serve(router, listener, tls.map(|t| t.client), "client", core)
}

/// The peer gRPC server, for members only: the internal Raft service, and the public services
/// for the calls members forward (to the leader) or ask (status), until the node stops.
fn serve_peers(
    cfg: &NodeConfig,
    listener: tokio::net::TcpListener,
    tls: Option<LoadedTls>,
    api: &crate::api::Api,
    core: &Arc<Core>,
) -> impl Future<Output = ()> + use<> {
    let max = cfg.net.max_message_bytes;
    let raft_svc = RaftServer::new(
        cfg.id,
        core.raft().raft().clone(),
        core.switch().clone(),
        cfg.data_dir.clone(),
        core.wal_handle().clone(),
        core.stop_signal(),
        core.leader_contact().clone(),
    )
    .refusing_votes_while(core.repairing_flag())
    .describing(core.advertise().to_owned());
    let check = raft_svc.member_check(tls.is_some());
    let raft_svc = raft_svc.into_service(max, check.clone());
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(cfg.limits.max_concurrent_streams)
        .add_service(raft_svc);
    let router = api.add_peer_routes(router, check);
    serve(router, listener, tls.map(|t| t.peer), "peer", core)
}

/// Serves `router` on `listener` (over TLS with `tls`) until the node stops; `name` labels the
/// listener in logs and metrics.
fn serve(
    router: tonic::transport::server::Router,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<crate::tls::Reloadable>>,
    name: &'static str,
    core: &Arc<Core>,
) -> impl Future<Output = ()> + use<> {
    let stopped = core.stopped();
    let failures = core
        .metrics()
        .tls_handshake_failures
        .with_label_values(&[name]);
    async move {
        let r = match tls {
            Some(t) => {
                let incoming = crate::tls::incoming(listener, t, name, failures);
                router.serve_with_incoming_shutdown(incoming, stopped).await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(incoming(listener), stopped)
                    .await
            }
        };
        if let Err(e) = r {
            tracing::error!(listener = name, error = %e, "a gRPC server stopped");
        }
    }
}

/// Accepted connections, Nagle off: with delayed ACKs it stalls replies by 40 ms.
fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Moves Raft's purge point (and so the WAL's data start) after each replicated truncation:
/// snapshot at the applied index, then purge up to it; the log store deletes records only below
/// the truncation watermark.
async fn truncator(raft: RaftNode, sm: Arc<SmShared>, mut stop: watch::Receiver<bool>) {
    let mut handled = sm.data_watermark.load(Ordering::Acquire);
    let mut failed = false;
    loop {
        let retry = async {
            if failed {
                tokio::time::sleep(PURGE_RETRY).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = sm.watermark_raised.notified() => {}
            _ = retry => {}
        }
        let watermark = sm.data_watermark.load(Ordering::Acquire);
        if watermark <= handled {
            continue;
        }
        let Some(at) = sm.read(|i| i.applied) else {
            continue;
        };
        failed = false;
        match raft.purge_up_to(at.index).await {
            Ok(()) => handled = watermark,
            Err(e) => {
                failed = true;
                tracing::warn!(error = %e, "purging after a truncation failed; retried in 1 s")
            }
        }
    }
}

/// How long the truncator waits before it retries a purge that failed.
const PURGE_RETRY: Duration = Duration::from_secs(1);

/// On the leader, turns `retention_hours` into a replicated truncation: every `every`, records
/// in the oldest sealed segments whose newest entry is older than the retention are truncated
/// on every replica (whole segments, like Kafka's time retention).
async fn retention(
    raft: RaftNode,
    wal: Arc<WalHandle>,
    hours: u64,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        if !raft.is_leader() {
            continue;
        }
        let Some(before) = wal
            .get()
            .ok()
            .and_then(|w| w.retention_cut(hours, crate::wal::now_us()))
        else {
            continue;
        };
        match raft.propose(Request::Truncate { before }).await {
            Ok(_) => tracing::info!(before, hours, "retention truncated the log"),
            Err(e) => tracing::warn!(error = %e, "retention truncation failed; retried later"),
        }
    }
}

/// Keeps the Raft gauges current: set at every scrape, on every change of Raft's role, term,
/// leader or membership (which also counts leader changes), and every second.
async fn watch_metrics(core: Arc<Core>) {
    // The gauges follow entries appended, committed and applied: they are set at each scrape
    // (and each second), not by a wake-up per write.
    let weak = Arc::downgrade(&core);
    core.metrics().before_gather(Arc::new(move || {
        if let Some(core) = weak.upgrade() {
            refresh_raft_gauges(&core, &core.status());
        }
    }));
    let mut watch = core.raft().watch();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let stopped = core.stopped();
    tokio::pin!(stopped);
    let mut leader = None;
    loop {
        let s = core.status();
        if s.leader.is_some() && s.leader != leader {
            core.metrics().leader_changes.inc();
        }
        leader = s.leader;
        core.metrics().refresh_now();
        tokio::select! {
            _ = &mut stopped => return,
            alive = watch.changed() => if !alive { return },
            _ = tick.tick() => {}
        }
    }
}

/// Sets the Raft gauges (term, leader, log indexes, replication lag, in sync, keyed writes in
/// flight, duplicate keys applied) from `s` and the core's state now.
fn refresh_raft_gauges(core: &Core, s: &crate::raft::RaftStatus) {
    let m = core.metrics();
    m.term.set(s.term as i64);
    m.is_leader.set(i64::from(s.leader == Some(core.id())));
    m.has_leader.set(i64::from(s.leader.is_some()));
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
}

/// How often the data directory's file system is measured.
const DISK_CHECK: Duration = Duration::from_secs(10);

/// Keeps `replog_disk_available_bytes` and `replog_disk_capacity_bytes` current (a `statvfs`
/// every [`DISK_CHECK`], off the runtime's threads).
async fn watch_disk(
    data_dir: std::path::PathBuf,
    metrics: NodeMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(DISK_CHECK);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let dir = data_dir.clone();
        match tokio::task::spawn_blocking(move || fs4::statvfs(dir)).await {
            Ok(Ok(s)) => {
                metrics.disk_available.set(s.available_space() as i64);
                metrics.disk_capacity.set(s.total_space() as i64);
            }
            Ok(Err(e)) if !warned => {
                warned = true;
                tracing::warn!(dir = %data_dir.display(), error = %e, "cannot measure the data directory's file system");
            }
            Ok(Err(_)) | Err(_) => {}
        }
    }
}

/// An uninitialized node started with `cluster.join`: asks the cluster to add it (as a learner,
/// then a voter once caught up), retrying until it is a member or the node stops.
async fn join(core: Arc<Core>, endpoints: Vec<String>, opts: crate::client::ClientOptions) {
    let stopped = core.stopped();
    tokio::pin!(stopped);
    // One client (and its channels) for every attempt.
    let client = match crate::client::Client::new(&endpoints, opts) {
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
        let attempt = client.add_node(core.id(), core.peer_advertise(), false);
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
