//! One replog node wired together: storage (WAL, sled), Raft, the [`Core`] of use cases, the
//! gRPC server and the background tasks ([`tasks`]); and its shutdown.
//!
//! [`Node::start`] returns once the server listens (so `listen` may use port 0); [`run`] starts
//! a node and stops it when the shutdown future resolves. Stopping ends every task, shuts Raft
//! down and closes the WAL (flushed and fsync'd). This module knows nothing of openraft: it
//! starts Raft through [`RaftNode::start`] and talks to it through [`RaftNode`].

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::core::{Core, Limits, Parts, QuotaConfig, RepairConfig, contact, repair};
use crate::metrics::NodeMetrics;
use crate::raft::directory::{Addresses, Directory};
use crate::raft::handle::StartRaft;
use crate::raft::network::{NetConfig, NetSwitch, Network};
use crate::raft::state_machine::DEFAULT_MAX_PRODUCERS;
use crate::raft::{NodeId, RaftNode, RaftOpError, RaftTiming, Storage};
use crate::tls::{ClientAuth, Reloadable, TlsFiles};
use crate::wal::{WalConfig, WalError};

pub mod tasks;

/// How long a stopping node lets in-flight RPCs finish.
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(500);

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Where the client gRPC server binds (port 0 picks a free port): the public services,
    /// health and reflection.
    pub listen: SocketAddr,
    /// The address clients use; defaults to the bound address.
    pub advertise: Option<String>,
    /// Where the peer gRPC server binds: Raft traffic only (default: `listen`'s port + 100).
    pub peer_listen: SocketAddr,
    /// The address other members use (what membership names); defaults to `advertise`'s host
    /// with the bound peer port, or the bound peer address.
    pub peer_advertise: Option<String>,
    /// Holds `wal/`, `sled/`, `RAFT_META`, `SM_SNAPSHOT`.
    pub data_dir: PathBuf,
    /// WAL settings; its `directory` is replaced by `<data_dir>/wal`. Its `retention_hours` is
    /// applied by the cluster (a replicated truncation proposed by the leader), not by each
    /// node's WAL on its own.
    pub wal: WalConfig,
    pub raft: RaftTiming,
    pub net: NetConfig,
    /// Initial voters (`id -> peer address`, including this node) when bootstrapping a new cluster;
    /// ignored once the node is initialized.
    pub initial_members: Option<BTreeMap<NodeId, String>>,
    /// Bound of the idempotency table (default 100,000 producers).
    pub max_producers: usize,
    /// Entries per AppendEntries at most (bytes are capped by `net.append_max_bytes`).
    pub max_payload_entries: u64,
    /// Bytes of the newest log entries kept in memory for replication and apply.
    pub entry_cache_bytes: usize,
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
    /// TLS on both listeners and for connections to other nodes (`None`: plaintext).
    pub tls: Option<NodeTls>,
    /// Authentication of the client listener's calls (and of `/metrics`).
    pub auth: NodeAuth,
    /// The bearer token joining (`join`) presents, for a cluster with authentication on.
    pub join_token: Option<String>,
    /// Per-tenant quotas (the configured ones; `replog quota set` adds replicated ones).
    pub quotas: QuotaConfig,
}

/// Who may call the client listener.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAuth {
    /// The token file; `None`: authentication is off (everyone may do everything).
    pub token_file: Option<PathBuf>,
    /// `/metrics` over HTTPS, with the client listener's certificate.
    pub metrics_tls: bool,
    /// `/metrics` needs a bearer token.
    pub metrics_token: bool,
}

/// The TLS files of a node's listeners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTls {
    /// The client listener's; also what the node presents when it forwards a call to another
    /// node's client listener.
    pub client: TlsFiles,
    /// The peer listener's (mTLS: a peer must present a certificate from this CA naming a
    /// member); also what the node presents to other members.
    pub peer: TlsFiles,
    /// Require a certificate from the CA on the client listener too.
    pub client_cert_auth: bool,
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
            peer_listen: default_peer_listen(listen),
            peer_advertise: None,
            wal: WalConfig::new(data_dir.join("wal")),
            data_dir,
            raft: RaftTiming::default(),
            net: NetConfig::default(),
            initial_members: None,
            max_producers: DEFAULT_MAX_PRODUCERS,
            max_payload_entries: 4096,
            entry_cache_bytes: crate::raft::log_store::DEFAULT_ENTRY_CACHE_BYTES,
            retention_check_interval: Duration::from_secs(60),
            cluster_name: "replog".to_owned(),
            metrics_listen: None,
            limits: Limits::default(),
            join: Vec::new(),
            init: false,
            file_system: None,
            repair: RepairConfig::default(),
            tls: None,
            auth: NodeAuth::default(),
            join_token: None,
            quotas: QuotaConfig::default(),
        }
    }
}

/// The default peer address: `listen`'s host, its port + 100 (port 0 stays 0; a port too high
/// for that gives port 0, a free one).
pub fn default_peer_listen(listen: SocketAddr) -> SocketAddr {
    let port = match listen.port() {
        0 => 0,
        p => p.checked_add(100).unwrap_or(0),
    };
    SocketAddr::new(listen.ip(), port)
}

/// A node's TLS material, loaded and checked (each listener's re-read when its files change).
#[derive(Clone)]
pub struct LoadedTls {
    pub client: Arc<Reloadable>,
    pub peer: Arc<Reloadable>,
}

impl LoadedTls {
    fn load(t: &NodeTls) -> Result<LoadedTls, crate::tls::TlsError> {
        let auth = if t.client_cert_auth {
            ClientAuth::Required
        } else {
            ClientAuth::Off
        };
        Ok(LoadedTls {
            client: Reloadable::load(t.client.clone(), auth)?,
            peer: Reloadable::load(t.peer.clone(), ClientAuth::Required)?,
        })
    }
}

/// A node's two bound listeners.
pub struct Listeners {
    /// Public services, health, reflection.
    pub client: tokio::net::TcpListener,
    /// Raft traffic between members.
    pub peer: tokio::net::TcpListener,
}

impl Listeners {
    /// Binds both; an address in use is a configuration error naming it.
    pub async fn bind(client: SocketAddr, peer: SocketAddr) -> Result<Listeners, NodeError> {
        let bind = |what: &'static str, a: SocketAddr| async move {
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| NodeError::Config(format!("cannot listen for {what} on {a}: {e}")))
        };
        Ok(Listeners {
            client: bind("clients", client).await?,
            peer: bind("peers", peer).await?,
        })
    }
}

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Raft(#[from] RaftOpError),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Storage(#[from] crate::raft::StorageError),
    #[error("internal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running node.
pub struct Node {
    core: Arc<Core>,
    addr: SocketAddr,
    peer_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    db: sled::Db,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Opens the storage, starts Raft and the gRPC server. Returns once the server listens.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let listeners = Listeners::bind(cfg.listen, cfg.peer_listen).await?;
        Self::start_on(cfg, listeners).await
    }

    /// Like [`Node::start`], on listeners the caller bound (to know every address first).
    pub async fn start_on(cfg: NodeConfig, listeners: Listeners) -> Result<Node, NodeError> {
        let tls = match cfg.tls.clone() {
            // File reads: off the runtime's threads.
            Some(t) => Some(
                tokio::task::spawn_blocking(move || LoadedTls::load(&t))
                    .await?
                    .map_err(|e| NodeError::Config(e.to_string()))?,
            ),
            None => None,
        };
        if cfg.auth.token_file.is_some() && cfg.tls.is_none() {
            tracing::warn!(
                peer = %listeners.peer.local_addr()?,
                "authentication is on but TLS is off: tokens cross the network in the clear, and the peer listener trusts whoever reaches it (as Raft without TLS must); keep it on loopback or a private network, or turn TLS on"
            );
        }
        let auth = match cfg.auth.token_file.clone() {
            Some(f) => Some(Arc::new(
                tokio::task::spawn_blocking(move || crate::auth::Authenticator::load(&f))
                    .await?
                    .map_err(|e| NodeError::Config(e.to_string()))?,
            )),
            None => None,
        };
        let metrics = NodeMetrics::new().map_err(|e| NodeError::Config(e.to_string()))?;
        let metrics_listener = match cfg.metrics_listen {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| {
                NodeError::Config(format!("cannot listen for metrics on {a}: {e}"))
            })?),
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let addr = listeners.client.local_addr()?;
        let peer_addr = listeners.peer.local_addr()?;
        let Opened {
            core,
            db,
            stop,
            senders,
        } = open_core(&cfg, addr, peer_addr, tls.as_ref(), metrics).await?;
        repair::enter_if_damaged(&core);
        let security = tasks::Security { tls, auth };
        let mut tasks = tasks::spawn(&cfg, &core, listeners, security, metrics_listener);
        tasks.push(tokio::spawn(contact::watch(core.clone(), senders)));
        let node = Node {
            core,
            addr,
            peer_addr,
            metrics_addr,
            db,
            stop,
            tasks,
        };
        if let Err(e) = node.bootstrap(&cfg).await {
            let _ = node.shutdown().await;
            return Err(e);
        }
        tracing::info!(id = cfg.id, %addr, %peer_addr, ?metrics_addr, "node started");
        Ok(node)
    }

    /// Initializes a new cluster when the config asks for it (`initial_members` or `init`); a
    /// no-op on a node that was initialized before.
    async fn bootstrap(&self, cfg: &NodeConfig) -> Result<(), NodeError> {
        let raft = self.core.raft();
        if let Some(members) = &cfg.initial_members {
            let Some(mine) = members.get(&cfg.id) else {
                return Err(NodeError::Config(format!(
                    "initial members {members:?} do not include this node ({})",
                    cfg.id
                )));
            };
            let peer = self.core.peer_advertise();
            if mine != peer && mine == self.core.advertise() {
                return Err(NodeError::Config(format!(
                    "initial members name node {} at {mine}, its client address: they name peer addresses (this node's is {peer}, set by --peer-advertise)",
                    cfg.id
                )));
            }
            raft.bootstrap(members).await?;
        } else if cfg.init {
            let me = BTreeMap::from([(cfg.id, self.core.peer_advertise().to_owned())]);
            raft.bootstrap(&me).await?;
        }
        Ok(())
    }

    /// The address the client gRPC server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the peer gRPC server (Raft traffic) is bound to.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The address `/metrics` is served on, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The node's use cases (what its services call).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Resolves when Raft stops on its own (a storage error such as a failed fsync is fatal
    /// for the node), with why.
    pub async fn failure(&self) -> String {
        let raft = self.core.raft();
        let mut watch = raft.watch();
        loop {
            if let Some(why) = raft.fatal() {
                return why;
            }
            if !watch.changed().await {
                // Raft's core sets its fatal error before it ends.
                return raft.fatal().unwrap_or_else(|| "raft stopped".to_owned());
            }
        }
    }

    /// Stops the node: tasks, Raft, then the WAL (flushed and fsync'd) and sled.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let _ = self.stop.send(true);
        self.core.raft().shutdown().await;
        for mut t in self.tasks {
            // A peer's replication stream can keep the server's graceful shutdown waiting:
            // after a short drain, connections are dropped (peers reconnect elsewhere).
            if tokio::time::timeout(SHUTDOWN_DRAIN, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
        let (wal, db, id) = (self.core.wal_handle().clone(), self.db, self.core.id());
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

/// A node's parts once its storage is open and Raft runs.
struct Opened {
    core: Arc<Core>,
    /// Closed last, after Raft and the WAL.
    db: sled::Db,
    stop: watch::Sender<bool>,
    senders: contact::ContactSenders,
}

/// Opens the storage, starts Raft (repairing damaged segments meanwhile) and builds the core.
async fn open_core(
    cfg: &NodeConfig,
    addr: SocketAddr,
    peer_addr: SocketAddr,
    tls: Option<&LoadedTls>,
    metrics: NodeMetrics,
) -> Result<Opened, NodeError> {
    // Bad Raft timing is the operator's to fix (a usage error), found before opening anything.
    crate::raft::openraft_config(&cfg.cluster_name, &cfg.raft, cfg.max_payload_entries)
        .map_err(NodeError::Config)?;
    let storage = open_storage(cfg, &metrics).await?;
    let switch = Arc::new(NetSwitch::default());
    let network =
        Network::new(cfg.id, cfg.net.clone(), switch.clone()).with_tls(tls.map(|t| t.peer.clone()));
    let Storage {
        log_store,
        state_machine,
        wal,
        sm,
        db,
    } = storage;
    let mut members: BTreeMap<NodeId, String> = sm.members();
    members.extend(cfg.initial_members.clone().unwrap_or_default());
    // openraft reads the log while it starts, and a read of a damaged segment waits for its
    // repair: repair from the last known members meanwhile.
    let early_repair = repair::before_raft(
        cfg.id,
        network.clone(),
        wal.clone(),
        members.into_iter().collect(),
        tasks::max_fetch_bytes(&cfg.wal),
        metrics.clone(),
    );
    let advertise = cfg
        .advertise
        .clone()
        .unwrap_or_else(|| default_advertise(addr));
    let peer_advertise = peer_advertise(cfg, peer_addr);
    let directory = Arc::new(Directory::new(
        cfg.id,
        Addresses {
            peer: peer_advertise.clone(),
            client: advertise.clone(),
        },
    ));
    let start = StartRaft {
        id: cfg.id,
        cluster_name: &cfg.cluster_name,
        timing: &cfg.raft,
        max_payload_entries: cfg.max_payload_entries,
        network: network.clone(),
        directory,
    };
    let raft = RaftNode::start(start, log_store, state_machine);
    tokio::pin!(raft);
    let raft = tokio::select! {
        biased;
        r = &mut raft => r,
        () = early_repair => raft.await,
    }?;
    let (stop, stop_rx) = watch::channel(false);
    let (lost, senders) = contact::flags();
    let core = Arc::new(Core::new(Parts {
        id: cfg.id,
        advertise,
        peer_advertise,
        raft,
        wal,
        sm,
        switch,
        contact: Arc::default(),
        net: network,
        lost,
        leader_lease: cfg.raft.election_timeout_max,
        limits: cfg.limits.clone(),
        quotas: cfg.quotas.clone(),
        max_producers: cfg.max_producers,
        metrics,
        stop: stop_rx,
    }));
    Ok(Opened {
        core,
        db,
        stop,
        senders,
    })
}

/// Where clients reach this node when `advertise` is not set: the bound address, or, bound
/// to every interface (0.0.0.0, as in a container), this host's name with the bound port
/// (as Kafka's advertised listeners default to the host name).
fn default_advertise(addr: SocketAddr) -> String {
    match host_name() {
        Some(host) if addr.ip().is_unspecified() => format!("{host}:{}", addr.port()),
        _ => addr.to_string(),
    }
}

fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for `buf.len()` bytes; gethostname writes at most that many.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(&buf[..end]).ok()?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// Where other members reach this node: `peer_advertise`, else `advertise`'s host with the
/// bound peer port, else the bound peer address (or its default, as for `advertise`).
fn peer_advertise(cfg: &NodeConfig, peer_addr: SocketAddr) -> String {
    if let Some(a) = &cfg.peer_advertise {
        return a.clone();
    }
    match cfg.advertise.as_deref().and_then(|a| a.rsplit_once(':')) {
        Some((host, _)) => format!("{host}:{}", peer_addr.port()),
        None => default_advertise(peer_addr),
    }
}

/// Opens (recovering) the node's storage on a blocking thread, after claiming its data
/// directory. The WAL's own retention is off: the cluster applies it ([`tasks`]).
async fn open_storage(cfg: &NodeConfig, metrics: &NodeMetrics) -> Result<Storage, NodeError> {
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
    let cache = cfg.entry_cache_bytes;
    tokio::task::spawn_blocking(move || {
        claim_data_dir(&data_dir, id)?;
        let storage = Storage::open_with(&data_dir, wal_cfg, Some(&registry), max_producers, fs)?;
        storage.log_store.set_entry_cache_bytes(cache);
        Ok::<_, NodeError>(storage)
    })
    .await?
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

/// Runs a node until `shutdown` resolves, then stops it cleanly.
pub async fn run(cfg: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    let node = Node::start(cfg).await?;
    shutdown.await;
    node.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_defaults_to_the_host_name_only_when_bound_to_every_interface() {
        let host = host_name().expect("a host name");
        let any: SocketAddr = "0.0.0.0:7400".parse().unwrap();
        assert_eq!(default_advertise(any), format!("{host}:7400"));
        let any6: SocketAddr = "[::]:7500".parse().unwrap();
        assert_eq!(default_advertise(any6), format!("{host}:7500"));
        let lo: SocketAddr = "127.0.0.1:7400".parse().unwrap();
        assert_eq!(default_advertise(lo), "127.0.0.1:7400");

        let mut cfg = NodeConfig::new(1, lo, "/tmp/x");
        assert_eq!(peer_advertise(&cfg, any), format!("{host}:7400"));
        cfg.advertise = Some("db-1.internal:7400".into());
        assert_eq!(
            peer_advertise(&cfg, "0.0.0.0:7500".parse().unwrap()),
            "db-1.internal:7500"
        );
        cfg.peer_advertise = Some("10.0.0.1:7600".into());
        assert_eq!(peer_advertise(&cfg, any), "10.0.0.1:7600");
    }
}
