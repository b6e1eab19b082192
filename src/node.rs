//! One replog node wired together: storage (WAL, sled), Raft, the gRPC server and background
//! tasks; and its shutdown.
//!
//! [`Node::start`] returns once the server listens (so `listen` may use port 0); [`run`] starts
//! a node and stops it when the shutdown future resolves. Stopping ends every task, shuts Raft
//! down and closes the WAL (flushed and fsync'd). This module knows nothing of openraft: it
//! talks to [`RaftNode`].

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Limits;
use crate::metrics::NodeMetrics;
use crate::proto::raft::raft_service_server::RaftServiceServer;
use crate::raft::network::{NetConfig, NetSwitch, Network};
use crate::raft::service::{LeaderContact, RaftServer};
use crate::raft::state_machine::{DEFAULT_MAX_PRODUCERS, SmShared};
use crate::raft::types::WriteRecord;
use crate::raft::{
    NodeId, Raft, RaftNode, RaftOpError, RaftStatus, RaftTiming, Request, Response, Storage,
    WalHandle, openraft_config,
};
use crate::wal::{Entry, ProducerKey, SequenceNumber, WalConfig, WalError};

pub mod producers;
pub mod repair;

pub use repair::RepairConfig;

/// How long a stopping node lets in-flight RPCs finish.
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(500);

/// How long a new leader may take to apply its first entry before a keyed write gives up.
const LEADER_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Other writes of one producer a keyed write waits behind at most (see `write_keyed`).
const MAX_KEYED_TURNS: usize = 64;

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Where the gRPC server binds (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The address other nodes and clients use; defaults to the bound address.
    pub advertise: Option<String>,
    /// Holds `wal/`, `sled/`, `RAFT_META`, `SM_SNAPSHOT`.
    pub data_dir: PathBuf,
    /// WAL settings; its `directory` is replaced by `<data_dir>/wal`. Its `retention_hours` is
    /// applied by the cluster (a replicated truncation proposed by the leader), not by each
    /// node's WAL on its own.
    pub wal: WalConfig,
    pub raft: RaftTiming,
    pub net: NetConfig,
    /// Initial voters (`id -> address`, including this node) when bootstrapping a new cluster;
    /// ignored once the node is initialized.
    pub initial_members: Option<BTreeMap<NodeId, String>>,
    /// Bound of the idempotency table (default 100,000 producers).
    pub max_producers: usize,
    /// Entries per AppendEntries at most (bytes are capped by `net.append_max_bytes`).
    pub max_payload_entries: u64,
    /// How often the leader checks retention (default 60 s).
    pub retention_check_interval: Duration,
    pub cluster_name: String,
    /// Where `/metrics` is served over HTTP (`None`: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// Limits of the public API.
    pub limits: Limits,
    /// Endpoints of a cluster to ask, once started, to add this (uninitialized) node.
    pub join: Vec<String>,
    /// Without `initial_members`: initialize a single-node cluster of this node (at its
    /// advertised address) if it was never initialized.
    pub init: bool,
    /// The file system of the log and the Raft metadata (default: the OS's). Tests put a
    /// fault-injecting one here to fail fsyncs, fill the disk or tear writes on a live node.
    pub file_system: Option<NodeFs>,
    /// Scrubbing and self-repair of damaged WAL segments.
    pub repair: RepairConfig,
}

/// A file system for [`NodeConfig::file_system`].
#[derive(Clone)]
pub struct NodeFs(pub Arc<dyn crate::fs::FileSystem>);

impl std::fmt::Debug for NodeFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeFs(..)")
    }
}

impl NodeConfig {
    pub fn new(id: NodeId, listen: SocketAddr, data_dir: impl Into<PathBuf>) -> NodeConfig {
        let data_dir = data_dir.into();
        NodeConfig {
            id,
            listen,
            advertise: None,
            wal: WalConfig::new(data_dir.join("wal")),
            data_dir,
            raft: RaftTiming::default(),
            net: NetConfig::default(),
            initial_members: None,
            max_producers: DEFAULT_MAX_PRODUCERS,
            max_payload_entries: 4096,
            retention_check_interval: Duration::from_secs(60),
            cluster_name: "replog".to_owned(),
            metrics_listen: None,
            limits: Limits::default(),
            join: Vec::new(),
            init: false,
            file_system: None,
            repair: RepairConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Raft(#[from] RaftOpError),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Storage(#[from] crate::raft::StorageError),
    /// Too much in flight now; retryable.
    #[error("overloaded: {0}")]
    Overloaded(String),
    #[error("internal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What a write returns once committed and applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub first_seq: SequenceNumber,
    pub last_seq: SequenceNumber,
    pub timestamp: u64,
    /// The idempotency key had been applied before: this is the original write's result.
    pub duplicate: bool,
}

/// What the node's services share: Raft, the storage readers, limits and metrics. The public
/// API ([`crate::api`]) holds it; [`Node`] derefs to it.
pub struct Core {
    id: NodeId,
    advertise: String,
    raft: RaftNode,
    wal: Arc<WalHandle>,
    sm: Arc<SmShared>,
    switch: Arc<NetSwitch>,
    /// Keyed writes in flight on this leader.
    keyed: Arc<producers::Ledger>,
    contact: Arc<LeaderContact>,
    /// Peer connections outside openraft (fetching frames for a repair).
    net: Network,
    repair: repair::RepairState,
    /// Contact lost for longer than the leader lease (`watch_contact`): calls waiting on the
    /// leader are then answered "outcome unknown". Two flags, each only ever set in its role,
    /// so a flag left over from the other role never answers a call.
    lost: ContactFlags,
    /// openraft's leader lease (`election_timeout_max`): a follower that has not heard from the
    /// leader for longer stops forwarding to it.
    leader_lease: Duration,
    pub limits: Limits,
    pub metrics: NodeMetrics,
    /// Resolves when the node stops (ends long-lived streams).
    stop: watch::Receiver<bool>,
}

/// A running node.
pub struct Node {
    core: Arc<Core>,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    db: sled::Db,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::ops::Deref for Node {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

/// Whether this replica serves reads, and if not why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaState {
    InSync,
    Behind(String),
}

impl Node {
    /// Opens the storage, starts Raft and the gRPC server. Returns once the server listens.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        Self::start_on(cfg, listener).await
    }

    /// Like [`Node::start`], on a listener the caller bound (to know every address first).
    pub async fn start_on(
        cfg: NodeConfig,
        listener: tokio::net::TcpListener,
    ) -> Result<Node, NodeError> {
        let raft_cfg = openraft_config(&cfg.cluster_name, &cfg.raft, cfg.max_payload_entries)
            .map_err(NodeError::Config)?;
        let metrics = NodeMetrics::new().map_err(|e| NodeError::Config(e.to_string()))?;
        let metrics_listener = match cfg.metrics_listen {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| {
                NodeError::Config(format!("cannot listen for metrics on {a}: {e}"))
            })?),
            None => None,
        };
        let retention_hours = cfg.wal.retention_hours;
        let wal_cfg = WalConfig {
            retention_hours: None,
            ..cfg.wal.clone()
        };
        let (data_dir, max_producers, id) = (cfg.data_dir.clone(), cfg.max_producers, cfg.id);
        let registry = metrics.registry.clone();
        let fs = cfg.file_system.clone().map_or_else(
            || Arc::new(crate::fs::StdFs) as Arc<dyn crate::fs::FileSystem>,
            |f| f.0,
        );
        let storage = tokio::task::spawn_blocking(move || {
            claim_data_dir(&data_dir, id)?;
            Ok::<_, NodeError>(Storage::open_with(
                &data_dir,
                wal_cfg,
                Some(&registry),
                max_producers,
                fs,
            )?)
        })
        .await??;
        let addr = listener.local_addr()?;
        let advertise = cfg.advertise.clone().unwrap_or_else(|| addr.to_string());
        let switch = Arc::new(NetSwitch::default());
        let network = Network::new(cfg.id, cfg.net.clone(), switch.clone());
        let net = network.clone();
        let Storage {
            log_store,
            state_machine,
            wal,
            sm,
            db,
        } = storage;
        let mut members: BTreeMap<NodeId, String> = sm.members();
        members.extend(cfg.initial_members.clone().unwrap_or_default());
        let early_repair = repair::before_raft(
            cfg.id,
            net.clone(),
            wal.clone(),
            members.into_iter().collect(),
            max_fetch_bytes(&cfg.wal),
            metrics.clone(),
        );
        let raft = Raft::new(
            cfg.id,
            Arc::new(raft_cfg),
            network,
            log_store,
            state_machine,
        );
        tokio::pin!(raft);
        let raft = tokio::select! {
            biased;
            r = &mut raft => r,
            () = early_repair => raft.await,
        }
        .map_err(|e| RaftOpError::Stopped(e.to_string()))?;
        let raft = RaftNode::new(cfg.id, raft);
        let (stop, stop_rx) = watch::channel(false);
        let (quorum_tx, quorum_lost) = watch::channel(false);
        let (silent_tx, leader_silent) = watch::channel(false);
        let core = Arc::new(Core {
            id: cfg.id,
            advertise,
            raft,
            wal,
            sm,
            switch,
            keyed: producers::Ledger::new(cfg.max_producers),
            contact: Arc::default(),
            net,
            repair: repair::RepairState::default(),
            lost: ContactFlags {
                quorum_lost,
                leader_silent,
            },
            leader_lease: cfg.raft.election_timeout_max,
            limits: cfg.limits.clone(),
            metrics,
            stop: stop_rx.clone(),
        });
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        repair::enter_if_damaged(&core);
        let mut tasks = spawn_tasks(&cfg, &core, listener, metrics_listener, retention_hours);
        tasks.push(tokio::spawn(watch_contact(
            core.clone(),
            [quorum_tx, silent_tx],
            stop_rx.clone(),
        )));
        let node = Node {
            core,
            addr,
            metrics_addr,
            db,
            stop,
            tasks,
        };
        if let Some(members) = &cfg.initial_members {
            if !members.contains_key(&cfg.id) {
                let msg = format!(
                    "initial members {members:?} do not include this node ({})",
                    cfg.id
                );
                node.shutdown().await?;
                return Err(NodeError::Config(msg));
            }
            node.raft.bootstrap(members).await?;
        } else if cfg.init {
            let me = BTreeMap::from([(cfg.id, node.advertise().to_owned())]);
            node.raft.bootstrap(&me).await?;
        }
        tracing::info!(id = cfg.id, %addr, ?metrics_addr, "node started");
        Ok(node)
    }

    /// The address the gRPC server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address `/metrics` is served on, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// What the services share.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Stops the node: tasks, Raft, then the WAL (flushed and fsync'd) and sled.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let _ = self.stop.send(true);
        self.core.raft.shutdown().await;
        for mut t in self.tasks {
            // A peer's replication stream can keep the server's graceful shutdown waiting:
            // after a short drain, connections are dropped (peers reconnect elsewhere).
            if tokio::time::timeout(SHUTDOWN_DRAIN, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
        let (wal, db, id) = (self.core.wal.clone(), self.db, self.core.id);
        drop(self.core);
        tokio::task::spawn_blocking(move || {
            let _ = db.flush();
            wal.take_and_close()
        })
        .await??;
        tracing::info!(id, "node stopped");
        Ok(())
    }
}

/// Starts the node's tasks: the gRPC server, the truncator, retention (on a leader), metrics
/// (refresh and HTTP) and joining a cluster. Each ends when the node stops.
fn spawn_tasks(
    cfg: &NodeConfig,
    core: &Arc<Core>,
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    retention_hours: Option<u64>,
) -> Vec<JoinHandle<()>> {
    let stop = core.stop.clone();
    let mut tasks = vec![
        tokio::spawn(serve(cfg, listener, core)),
        tokio::spawn(truncator(core.raft.clone(), core.sm.clone(), stop.clone())),
        tokio::spawn(crate::api::watch_metrics(core.clone())),
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
    if let Some(hours) = retention_hours {
        let every = cfg.retention_check_interval;
        tasks.push(tokio::spawn(retention(
            core.raft.clone(),
            core.wal.clone(),
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
        tasks.push(tokio::spawn(crate::metrics::serve(
            l,
            core.metrics.clone(),
            done,
        )));
    }
    if !cfg.join.is_empty() && cfg.initial_members.is_none() {
        tasks.push(tokio::spawn(crate::api::join(
            core.clone(),
            cfg.join.clone(),
        )));
    }
    tasks
}

/// The most a repair fetches for one segment: a segment can exceed `segment_size` by one frame,
/// plus the frame after it that anchors the check.
fn max_fetch_bytes(wal: &WalConfig) -> usize {
    let frame = wal.max_frame_bytes.as_u64();
    usize::try_from(wal.segment_size.as_u64() + 2 * frame).unwrap_or(usize::MAX)
}

impl Core {
    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    pub fn status(&self) -> RaftStatus {
        self.raft.status()
    }

    pub fn state(&self) -> &Arc<SmShared> {
        &self.sm
    }

    /// The test switch of this node's network.
    pub fn switch(&self) -> &Arc<NetSwitch> {
        &self.switch
    }

    /// The leader as this node knows it.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        self.raft.leader()
    }

    pub fn is_leader(&self) -> bool {
        self.raft.is_leader()
    }

    pub fn voters(&self) -> Vec<NodeId> {
        self.raft.status().voters
    }

    /// Writes records as one atomic batch through Raft (on the leader). With a producer key,
    /// the key is proposed at most once ([`producers`]): a retry of a write applied or in
    /// flight returns the original result and writes nothing.
    pub async fn write(
        &self,
        producer: Option<ProducerKey>,
        records: Vec<WriteRecord>,
    ) -> Result<Written, NodeError> {
        if records.is_empty() {
            return Err(NodeError::InvalidArgument(
                "a write needs at least one record".to_owned(),
            ));
        }
        match producer {
            None => Ok(self
                .unless_contact_lost(propose_write(&self.raft, None, records))
                .await?),
            Some(key) => self.write_keyed(key, records).await,
        }
    }

    /// Awaits `outcome`, unless this node, as leader, loses its quorum first: then the answer
    /// is "outcome unknown" (retryable, and safe to retry with the same key) at once, instead of
    /// when the partition heals. openraft keeps such a proposal pending (it may still commit if
    /// the quorum comes back), and a retry elsewhere finds a new leader. A keyed proposal goes on
    /// in its own task and keeps its key until it ends, so a retry here waits for it.
    async fn unless_contact_lost<T>(
        &self,
        outcome: impl Future<Output = Result<T, RaftOpError>>,
    ) -> Result<T, RaftOpError> {
        tokio::select! {
            r = outcome => r,
            () = until(&self.lost.quorum_lost) => Err(RaftOpError::OutcomeUnknown { leader: None }),
        }
    }

    async fn write_keyed(
        &self,
        key: ProducerKey,
        records: Vec<WriteRecord>,
    ) -> Result<Written, NodeError> {
        // Each turn waits for a real proposal of this producer to end, so the bound is only
        // reached by a producer that breaks the one-write-at-a-time contract.
        for _ in 0..MAX_KEYED_TURNS {
            // Once the leader has applied an entry of its own term its table holds every key
            // of earlier terms; the ledger holds the ones it proposed since.
            self.raft
                .wait_own_term_applied(LEADER_READY_TIMEOUT)
                .await?;
            let step = self
                .keyed
                .begin(key, &self.sm, || self.raft.own_term_applied())?;
            match step {
                producers::Step::Applied(p) => {
                    return Ok(Written {
                        first_seq: p.first_seq,
                        last_seq: p.last_seq,
                        timestamp: p.timestamp,
                        duplicate: true,
                    });
                }
                producers::Step::Wait { seq, outcome } => {
                    let result = self.unless_contact_lost(producers::outcome(outcome)).await;
                    if seq == key.seq {
                        // A retry of a write in flight: the first attempt's outcome.
                        let w = result?;
                        return Ok(Written {
                            duplicate: true,
                            ..w
                        });
                    }
                    // Another write of this producer was in flight: look again.
                }
                // Leadership moved since the wait: the wait answers with the new leader.
                producers::Step::NotReady => {}
                producers::Step::Propose { publish, outcome } => {
                    let raft = self.raft.clone();
                    // The proposal belongs to the leader, not to this request: it goes on
                    // (and publishes its outcome) if the caller goes away.
                    tokio::spawn(async move {
                        let result = propose_write(&raft, Some(key), records).await;
                        publish.finish(result);
                    });
                    return Ok(self
                        .unless_contact_lost(producers::outcome(outcome))
                        .await?);
                }
            }
        }
        Err(NodeError::Overloaded(format!(
            "producer {} had {MAX_KEYED_TURNS} other writes in flight while write {} waited (one write at a time per producer id)",
            key.id, key.seq
        )))
    }

    /// Proposes a replicated command (checkpoint, truncation) and returns its result.
    pub async fn command(&self, req: Request) -> Result<Response, NodeError> {
        Ok(self.raft.propose(req).await?)
    }

    /// Adds a node as a learner (it catches up), then makes it a voter.
    pub async fn add_node(&self, id: NodeId, addr: &str) -> Result<(), NodeError> {
        Ok(self.raft.add_node(id, addr).await?)
    }

    /// Removes a node from the cluster (voter or learner).
    pub async fn remove_node(&self, id: NodeId) -> Result<(), NodeError> {
        Ok(self.raft.remove_node(id).await?)
    }

    /// The committed records from `from` on (at most `limit`), read from this node's WAL.
    pub async fn committed_entries(
        &self,
        from: SequenceNumber,
        limit: usize,
    ) -> Result<Vec<Entry>, NodeError> {
        // The state machine never applies past the local WAL's durable (acknowledged) copy,
        // so everything below `upto` is visible to replay.
        let upto = self.sm.read(|i| i.next_seq);
        let wal = self.wal.get()?;
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            wal.replay(from.max(wal.log_start().seq), |e| {
                if e.sequence_number >= upto || out.len() >= limit {
                    return std::ops::ControlFlow::Break(());
                }
                out.push(e.to_owned());
                std::ops::ControlFlow::Continue(())
            })?;
            Ok::<_, WalError>(out)
        });
        Ok(read.await??)
    }

    /// The sequence number of the first retained record.
    pub fn log_start(&self) -> Result<SequenceNumber, NodeError> {
        Ok(self.wal.get()?.log_start().seq)
    }

    /// The first sequence number a read may ask for: the replicated truncation point moves
    /// before the WAL's files are deleted, so it can be ahead of [`Core::log_start`].
    pub fn readable_start(&self) -> Result<SequenceNumber, NodeError> {
        let replicated = self.sm.read(|i| i.log_start);
        Ok(self.log_start()?.max(replicated))
    }

    /// Whether this replica may serve reads: it hears from a leader (or, as the leader, from a
    /// quorum) within `limits.max_leader_silence`, and has applied within
    /// `limits.max_lag_entries` of the commit index it knows.
    pub fn replica_state(&self) -> ReplicaState {
        if self.is_repairing() {
            return ReplicaState::Behind(format!(
                "node {} is repairing damaged WAL segments from a replica",
                self.id
            ));
        }
        let s = self.raft.status();
        let silence = self.limits.max_leader_silence;
        let Some(leader) = s.leader else {
            return ReplicaState::Behind(format!("node {} knows no leader", self.id));
        };
        let heard = if leader == self.id {
            // A single voter is its own quorum.
            if s.voters == [self.id] {
                Some(Duration::ZERO)
            } else {
                s.quorum_acked_ago
            }
        } else {
            self.contact.since()
        };
        match heard {
            Some(ago) if ago <= silence => {}
            Some(ago) => {
                return ReplicaState::Behind(format!(
                    "node {} has not heard from {} for {} ms (limits.max_leader_silence {} ms)",
                    self.id,
                    if leader == self.id {
                        "a quorum"
                    } else {
                        "the leader"
                    },
                    ago.as_millis(),
                    silence.as_millis()
                ));
            }
            None => {
                return ReplicaState::Behind(format!(
                    "node {} has not heard from the leader yet",
                    self.id
                ));
            }
        }
        let applied = s.applied.map_or(0, |l| l.index);
        let Some(committed) = s.cluster_committed else {
            return ReplicaState::Behind(format!(
                "node {} has not learned the commit index yet",
                self.id
            ));
        };
        let known = committed.max(applied);
        let lag = known - applied;
        if lag > self.limits.max_lag_entries {
            return ReplicaState::Behind(format!(
                "node {} is {lag} entries behind the commit (limits.max_lag_entries {})",
                self.id, self.limits.max_lag_entries
            ));
        }
        ReplicaState::InSync
    }

    /// On a follower: how long since the leader was last heard from, when that is longer than the
    /// leader lease (the leader may be cut off or dead; an election is due).
    pub fn leader_silent(&self) -> Option<Duration> {
        self.contact.since().filter(|d| *d > self.leader_lease)
    }

    /// On a follower: resolves once the leader has been silent for longer than the lease;
    /// never if the node stops.
    pub async fn until_leader_silent(&self) {
        until(&self.lost.leader_silent).await
    }

    /// Whether this node is repairing damaged WAL segments (it neither votes nor serves reads).
    pub fn is_repairing(&self) -> bool {
        self.repair.is_repairing()
    }

    /// Producers with a keyed write in flight on this leader.
    pub fn keyed_writes_in_flight(&self) -> usize {
        self.keyed.len()
    }

    /// The sequence number after the last applied (committed) record.
    pub fn next_seq(&self) -> SequenceNumber {
        self.sm.read(|i| i.next_seq)
    }

    /// The node's WAL (for reads).
    pub fn wal(&self) -> Result<Arc<crate::wal::Manager>, NodeError> {
        Ok(self.wal.get()?)
    }

    /// Resolves when the node stops.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        let mut stop = self.stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    }
}

/// The node's gRPC server: the internal Raft service and the public API, until the node stops.
fn serve(
    cfg: &NodeConfig,
    listener: tokio::net::TcpListener,
    core: &Arc<Core>,
) -> impl Future<Output = ()> + use<> {
    let raft_server = RaftServer::new(
        cfg.id,
        core.raft.raft().clone(),
        core.switch.clone(),
        cfg.data_dir.clone(),
        core.wal.clone(),
        core.stop.clone(),
        core.contact.clone(),
    )
    .refusing_votes_while(core.repair.flag());
    let max = cfg.net.max_message_bytes;
    let raft_svc = RaftServiceServer::new(raft_server)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    // Nagle off on accepted connections too: with delayed ACKs it stalls replies by 40 ms.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(cfg.limits.max_concurrent_streams);
    let router = crate::api::routes(core.clone(), max, server).add_service(raft_svc);
    let serve = router.serve_with_incoming_shutdown(incoming, core.stopped());
    async move {
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "the gRPC server stopped");
        }
    }
}

/// Moves Raft's purge point (and so the WAL's data start) after each replicated truncation:
/// snapshot at the applied index, then purge up to it; the log store deletes records only below
/// the truncation watermark.
async fn truncator(raft: RaftNode, sm: Arc<SmShared>, mut stop: watch::Receiver<bool>) {
    let mut applied = sm.applied_seq();
    let mut handled = sm.data_watermark.load(Ordering::Acquire);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = applied.changed() => if r.is_err() { return },
        }
        let watermark = sm.data_watermark.load(Ordering::Acquire);
        if watermark <= handled {
            continue;
        }
        let Some(at) = sm.read(|i| i.applied) else {
            continue;
        };
        match raft.purge_up_to(at.index).await {
            Ok(()) => handled = watermark,
            Err(e) => {
                tracing::warn!(error = %e, "purging after a truncation failed; retried on the next one")
            }
        }
    }
}

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

/// Name of the file that records which node id owns a data directory.
const NODE_ID_FILE: &str = "NODE_ID";

/// Records this node's id in a new data directory, or checks it: a directory written by node 1
/// started as node 2 would vote and hold a log under the wrong identity.
fn claim_data_dir(dir: &std::path::Path, id: NodeId) -> Result<(), NodeError> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<NodeId>() {
            Ok(owner) if owner == id => Ok(()),
            Ok(owner) => Err(NodeError::Config(format!(
                "{} belongs to node {owner}, not node {id}: start it with --id {owner}, or give node {id} its own --data-dir",
                dir.display()
            ))),
            Err(_) => Err(NodeError::Config(format!(
                "{} does not hold a node id: {text:?}",
                path.display()
            ))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::fs::write_file_atomic(&crate::fs::StdFs, &path, format!("{id}\n").as_bytes())?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// How often a node checks its contact with the quorum (as leader) or the leader.
const CONTACT_CHECK_EVERY: Duration = Duration::from_millis(100);

/// See `Core::lost`.
struct ContactFlags {
    /// As leader: no quorum acknowledged it within the lease (openraft refuses new proposals
    /// then too).
    quorum_lost: watch::Receiver<bool>,
    /// As follower: the leader has been silent for longer than the lease.
    leader_silent: watch::Receiver<bool>,
}

/// Resolves once `flag` is true; never if its sender is gone (the node stops).
async fn until(flag: &watch::Receiver<bool>) {
    if flag.clone().wait_for(|l| *l).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Keeps the [`ContactFlags`] current, checking every `CONTACT_CHECK_EVERY`.
async fn watch_contact(
    core: Arc<Core>,
    [quorum_lost, leader_silent]: [watch::Sender<bool>; 2],
    mut stop: watch::Receiver<bool>,
) {
    let set = |flag: &watch::Sender<bool>, v: bool| {
        flag.send_if_modified(|l| std::mem::replace(l, v) != v);
    };
    loop {
        let leads = core.is_leader();
        set(
            &quorum_lost,
            leads && core.raft.quorum_lost(core.leader_lease),
        );
        set(&leader_silent, !leads && core.leader_silent().is_some());
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(CONTACT_CHECK_EVERY) => {}
        }
    }
}

/// Proposes a write and returns what applying it answered.
async fn propose_write(
    raft: &RaftNode,
    producer: Option<ProducerKey>,
    records: Vec<WriteRecord>,
) -> Result<Written, RaftOpError> {
    match raft.propose(Request::Write { producer, records }).await? {
        Response::Written {
            first_seq,
            last_seq,
            timestamp,
            duplicate,
        } => Ok(Written {
            first_seq,
            last_seq,
            timestamp,
            duplicate,
        }),
        other => Err(RaftOpError::Rejected(format!(
            "unexpected reply to a write: {other:?}"
        ))),
    }
}

/// Runs a node until `shutdown` resolves, then stops it cleanly.
pub async fn run(cfg: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    let node = Node::start(cfg).await?;
    shutdown.await;
    node.shutdown().await
}
