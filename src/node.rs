//! One replog node wired together: storage (WAL, sled), Raft, the gRPC server and background
//! tasks; and its shutdown.
//!
//! [`Node::start`] returns once the server listens (so `listen` may use port 0); [`run`] starts
//! a node and stops it when the shutdown future resolves. Stopping ends every task, shuts Raft
//! down and closes the WAL (flushed and fsync'd).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::raft_service::RaftServer;
use crate::proto::raft::raft_service_server::RaftServiceServer;
use crate::raft::network::{NetConfig, NetSwitch, Network};
use crate::raft::state_machine::{DEFAULT_MAX_PRODUCERS, SmShared};
use crate::raft::types::WriteRecord;
use crate::raft::{
    NodeId, Raft, RaftTiming, Request, Response, Storage, WalHandle, openraft_config,
};
use crate::wal::{Entry, ProducerKey, SequenceNumber, WalConfig, WalError};

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
    /// WAL settings; its `directory` is replaced by `<data_dir>/wal`.
    pub wal: WalConfig,
    pub raft: RaftTiming,
    pub net: NetConfig,
    /// Initial voters (`id -> address`, including this node) when bootstrapping a new cluster;
    /// ignored once the node is initialized.
    pub initial_members: Option<BTreeMap<NodeId, String>>,
    /// Bound of the idempotency table.
    pub max_producers: usize,
    /// Entries per AppendEntries at most (bytes are capped by `net.append_max_bytes`).
    pub max_payload_entries: u64,
    pub cluster_name: String,
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
            cluster_name: "replog".to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("this node is not the leader (leader: {})", leader_text(.leader))]
    NotLeader { leader: Option<(NodeId, String)> },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("refused: {0}")]
    Rejected(String),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

fn leader_text(l: &Option<(NodeId, String)>) -> String {
    match l {
        Some((id, addr)) => format!("node {id} at {addr}"),
        None => "unknown".to_owned(),
    }
}

impl NodeError {
    fn from_write(
        e: RaftError<crate::raft::TypeConfig, ClientWriteError<crate::raft::TypeConfig>>,
    ) -> NodeError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => NodeError::NotLeader {
                leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
            },
            RaftError::APIError(other) => NodeError::Rejected(other.to_string()),
            RaftError::Fatal(f) => NodeError::Raft(f.to_string()),
        }
    }
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

/// Producers whose writes are in flight on this leader: a retry waits for the first attempt.
type InFlight = parking_lot::Mutex<BTreeMap<u64, Arc<tokio::sync::Mutex<()>>>>;

/// A running node.
pub struct Node {
    id: NodeId,
    addr: SocketAddr,
    advertise: String,
    raft: Raft,
    wal: Arc<WalHandle>,
    sm: Arc<SmShared>,
    db: sled::Db,
    switch: Arc<NetSwitch>,
    in_flight: InFlight,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
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
        let (data_dir, wal_cfg, max_producers) =
            (cfg.data_dir.clone(), cfg.wal.clone(), cfg.max_producers);
        let storage = tokio::task::spawn_blocking(move || {
            Storage::open(&data_dir, wal_cfg, None, max_producers)
        })
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))??;
        let addr = listener.local_addr()?;
        let advertise = cfg.advertise.clone().unwrap_or_else(|| addr.to_string());
        let switch = Arc::new(NetSwitch::default());
        let network = Network::new(cfg.id, cfg.net.clone(), switch.clone());
        let Storage {
            log_store,
            state_machine,
            wal,
            sm,
            db,
        } = storage;
        let raft = Raft::new(
            cfg.id,
            Arc::new(raft_cfg),
            network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let (stop, stop_rx) = watch::channel(false);
        let server = RaftServer::new(
            cfg.id,
            raft.clone(),
            switch.clone(),
            cfg.data_dir.clone(),
            wal.clone(),
        );
        let svc = RaftServiceServer::new(server)
            .max_decoding_message_size(cfg.net.max_message_bytes)
            .max_encoding_message_size(cfg.net.max_message_bytes);
        let mut rx = stop_rx.clone();
        let serve = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(svc)
            .serve_with_incoming_shutdown(
                // Nagle off on accepted connections too: with delayed ACKs it stalls 40 ms.
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            );
        let mut tasks = vec![tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "the gRPC server stopped");
            }
        })];
        tasks.push(tokio::spawn(truncator(
            raft.clone(),
            sm.clone(),
            stop_rx.clone(),
        )));
        let node = Node {
            id: cfg.id,
            addr,
            advertise,
            raft,
            wal,
            sm,
            db,
            switch,
            in_flight: InFlight::default(),
            stop,
            tasks,
        };
        if let Some(members) = &cfg.initial_members {
            node.bootstrap(members).await?;
        }
        tracing::info!(id = cfg.id, %addr, "node started");
        Ok(node)
    }

    async fn bootstrap(&self, members: &BTreeMap<NodeId, String>) -> Result<(), NodeError> {
        if !members.contains_key(&self.id) {
            return Err(NodeError::Config(format!(
                "initial members {members:?} do not include this node ({})",
                self.id
            )));
        }
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
        {
            return Ok(());
        }
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .iter()
            .map(|(id, a)| (*id, BasicNode::new(a)))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            // Another member initialized first with the same list: fine.
            Err(RaftError::APIError(e)) => {
                tracing::info!(error = %e, "cluster already initialized");
                Ok(())
            }
            Err(RaftError::Fatal(f)) => Err(NodeError::Raft(f.to_string())),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address the gRPC server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
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
        let m = self.raft.metrics().borrow_watched().clone();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())?;
        Some((id, addr))
    }

    /// Whether this node is the leader (as far as it knows).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().current_leader == Some(self.id)
    }

    /// The current voters.
    pub fn voters(&self) -> Vec<NodeId> {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Writes records as one atomic batch through Raft (on the leader). With a producer key, a
    /// retry of a write already applied returns its original result and writes nothing.
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
        let Some(key) = producer else {
            return self.propose_write(None, records).await;
        };
        // One attempt per producer at a time, so a retry sees its first attempt's outcome. An
        // async mutex: it is held while the write replicates, which is its purpose.
        let lock = self.in_flight.lock().entry(key.id).or_default().clone();
        let result = {
            let _turn = lock.lock().await;
            self.write_once(key, records).await
        };
        let mut map = self.in_flight.lock();
        if Arc::strong_count(&lock) == 2 {
            map.remove(&key.id);
        }
        result
    }

    async fn write_once(
        &self,
        key: ProducerKey,
        records: Vec<WriteRecord>,
    ) -> Result<Written, NodeError> {
        self.wait_own_term_applied().await?;
        if let Some(p) = self.sm.duplicate_of(key) {
            return Ok(Written {
                first_seq: p.first_seq,
                last_seq: p.last_seq,
                timestamp: p.timestamp,
                duplicate: true,
            });
        }
        self.propose_write(Some(key), records).await
    }

    /// A leader's table is complete once it has applied an entry of its own term: every entry
    /// of earlier terms is then applied too.
    async fn wait_own_term_applied(&self) -> Result<(), NodeError> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            {
                let m = rx.borrow_and_update();
                if m.current_leader != Some(self.id) {
                    return Err(NodeError::NotLeader {
                        leader: self.leader(),
                    });
                }
                if m.last_applied
                    .is_some_and(|a| a.leader_id.term == m.current_term)
                {
                    return Ok(());
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(NodeError::ShuttingDown),
                Err(_) => {
                    return Err(NodeError::Timeout(
                        "the new leader has not applied its first entry".to_owned(),
                    ));
                }
            }
        }
    }

    async fn propose_write(
        &self,
        producer: Option<ProducerKey>,
        records: Vec<WriteRecord>,
    ) -> Result<Written, NodeError> {
        let resp = self
            .raft
            .client_write(Request::Write { producer, records })
            .await
            .map_err(NodeError::from_write)?;
        match resp.data {
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
            other => Err(NodeError::Raft(format!(
                "unexpected reply to a write: {other:?}"
            ))),
        }
    }

    /// Proposes a replicated command (checkpoint, truncation) and returns its result.
    pub async fn command(&self, req: Request) -> Result<Response, NodeError> {
        let resp = self
            .raft
            .client_write(req)
            .await
            .map_err(NodeError::from_write)?;
        match resp.data {
            Response::Rejected { reason } => Err(NodeError::Rejected(reason)),
            other => Ok(other),
        }
    }

    /// Adds a node as a learner (it catches up), then makes it a voter.
    pub async fn add_node(&self, id: NodeId, addr: &str) -> Result<(), NodeError> {
        self.raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(NodeError::from_write)?;
        let mut voters: std::collections::BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        voters.insert(id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(NodeError::from_write)?;
        Ok(())
    }

    /// Removes a node from the cluster (voter or learner).
    pub async fn remove_node(&self, id: NodeId) -> Result<(), NodeError> {
        let mut voters: std::collections::BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        voters.remove(&id);
        if voters.is_empty() {
            return Err(NodeError::InvalidArgument(
                "cannot remove the last voter".to_owned(),
            ));
        }
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(NodeError::from_write)?;
        Ok(())
    }

    /// The committed records from `from` on (at most `limit`), read from this node's WAL.
    pub async fn committed_entries(
        &self,
        from: SequenceNumber,
        limit: usize,
    ) -> Result<Vec<Entry>, NodeError> {
        let wal = self.wal.get()?;
        let upto = *self.sm.applied_seq().borrow();
        let entries = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            wal.replay(from.max(wal.log_start().seq), |e| {
                if e.sequence_number >= upto || out.len() >= limit {
                    return std::ops::ControlFlow::Break(());
                }
                out.push(e.to_owned());
                std::ops::ControlFlow::Continue(())
            })?;
            Ok::<_, WalError>(out)
        })
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))??;
        Ok(entries)
    }

    /// The sequence number of the first retained record.
    pub fn log_start(&self) -> Result<SequenceNumber, NodeError> {
        Ok(self.wal.get()?.log_start().seq)
    }

    /// Stops the node: tasks, Raft, then the WAL (flushed and fsync'd) and sled.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let _ = self.stop.send(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        for t in self.tasks {
            let _ = t.await;
        }
        drop(self.raft);
        let (wal, db) = (self.wal, self.db);
        tokio::task::spawn_blocking(move || {
            let _ = db.flush();
            wal.take_and_close()
        })
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))??;
        tracing::info!(id = self.id, "node stopped");
        Ok(())
    }
}

/// Moves Raft's purge point (and so the WAL's data start) after each replicated truncation:
/// snapshot at the applied index, then purge up to it; the log store deletes records only below
/// the truncation watermark.
async fn truncator(raft: Raft, sm: Arc<SmShared>, mut stop: watch::Receiver<bool>) {
    let mut applied = sm.applied_seq();
    let mut handled = sm.data_watermark.load(std::sync::atomic::Ordering::Acquire);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = applied.changed() => if r.is_err() { return },
        }
        let watermark = sm.data_watermark.load(std::sync::atomic::Ordering::Acquire);
        if watermark <= handled {
            continue;
        }
        let Some(at) = sm.read(|i| i.applied) else {
            continue;
        };
        if let Err(e) = purge_up_to(&raft, at.index).await {
            tracing::warn!(error = %e, "purging after a truncation failed; retried on the next one");
            continue;
        }
        handled = watermark;
    }
}

async fn purge_up_to(raft: &Raft, index: u64) -> Result<(), NodeError> {
    let fatal =
        |e: openraft::errors::Fatal<crate::raft::TypeConfig>| NodeError::Raft(e.to_string());
    raft.trigger().snapshot().await.map_err(fatal)?;
    raft.wait(Some(Duration::from_secs(30)))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= index),
            "snapshot built",
        )
        .await
        .map_err(|e| NodeError::Timeout(e.to_string()))?;
    raft.trigger().purge_log(index).await.map_err(fatal)?;
    Ok(())
}

/// Runs a node until `shutdown` resolves, then stops it cleanly.
pub async fn run(cfg: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    let node = Node::start(cfg).await?;
    shutdown.await;
    node.shutdown().await
}
