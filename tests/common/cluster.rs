//! An in-process cluster of real nodes on 127.0.0.1 (port 0), each in its own temp dir.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use replog::core::{NewRecord, Written};
use replog::fs::MemFs;
use replog::node::{Listeners, Node, NodeConfig, NodeError, NodeFs};
use replog::raft::{NodeId, RaftTiming};
use replog::wal::{Entry, Operation, ProducerKey, SyncPolicy, WalConfig};
use tempfile::TempDir;

/// How long any condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn timing() -> RaftTiming {
    RaftTiming {
        heartbeat_interval: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(400),
        election_timeout_max: Duration::from_millis(800),
    }
}

pub struct TestCluster {
    pub dirs: BTreeMap<NodeId, TempDir>,
    pub addrs: BTreeMap<NodeId, SocketAddr>,
    /// Each node's peer address (Raft traffic; what membership names).
    pub peer_addrs: BTreeMap<NodeId, SocketAddr>,
    pub nodes: BTreeMap<NodeId, Node>,
    pub segment_size: ByteSize,
    /// Applied to every node's config (e.g. retention).
    pub tweak: Tweak,
    /// Nodes whose log and Raft metadata live on an in-memory, fault-injecting file system.
    pub mem: BTreeMap<NodeId, MemFs>,
}

/// A change to every node's config.
pub type Tweak = std::sync::Arc<dyn Fn(&mut NodeConfig) + Send + Sync>;

pub fn record(tenant: &str, data: impl Into<Vec<u8>>) -> NewRecord {
    NewRecord {
        tenant: tenant.to_owned(),
        operation: Operation::Insert,
        data: data.into(),
    }
}

/// Waits until `cond` holds, polling; panics with `what` after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs to the test's output when `RUST_LOG` is set (e.g. `RUST_LOG=replog=debug`).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A node's client and peer listeners on free loopback ports.
pub async fn loopback_listeners() -> Listeners {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Listeners::bind(any, any).await.unwrap()
}

impl TestCluster {
    /// Starts `n` nodes (ids 1..=n) bootstrapped as voters.
    pub async fn start(n: u64) -> TestCluster {
        Self::start_with(n, ByteSize::mib(1)).await
    }

    pub async fn start_with(n: u64, segment_size: ByteSize) -> TestCluster {
        Self::start_tweaked(n, segment_size, |_| {}).await
    }

    pub async fn start_tweaked(
        n: u64,
        segment_size: ByteSize,
        tweak: fn(&mut NodeConfig),
    ) -> TestCluster {
        Self::start_full(n, segment_size, std::sync::Arc::new(tweak), false).await
    }

    /// `n` nodes, each config changed by `tweak` (which may capture, e.g. a file's path).
    pub async fn start_configured(
        n: u64,
        tweak: impl Fn(&mut NodeConfig) + Send + Sync + 'static,
    ) -> TestCluster {
        Self::start_full(n, ByteSize::mib(1), std::sync::Arc::new(tweak), false).await
    }

    /// `n` nodes whose logs live on [`MemFs`] file systems (`c.mem[&id]`), to inject storage
    /// faults into a live node and to crash it.
    pub async fn start_on_mem(n: u64, tweak: fn(&mut NodeConfig)) -> TestCluster {
        Self::start_full(n, ByteSize::mib(1), std::sync::Arc::new(tweak), true).await
    }

    async fn start_full(n: u64, segment_size: ByteSize, tweak: Tweak, on_mem: bool) -> TestCluster {
        init_tracing();
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            listeners.insert(id, loopback_listeners().await);
        }
        let addrs: BTreeMap<NodeId, SocketAddr> = listeners
            .iter()
            .map(|(id, l)| (*id, l.client.local_addr().unwrap()))
            .collect();
        let peer_addrs: BTreeMap<NodeId, SocketAddr> = listeners
            .iter()
            .map(|(id, l)| (*id, l.peer.local_addr().unwrap()))
            .collect();
        let members: BTreeMap<NodeId, String> = peer_addrs
            .iter()
            .map(|(id, a)| (*id, a.to_string()))
            .collect();
        let mut c = TestCluster {
            dirs: BTreeMap::new(),
            addrs,
            peer_addrs,
            nodes: BTreeMap::new(),
            segment_size,
            tweak,
            mem: if on_mem {
                (1..=n).map(|id| (id, MemFs::new())).collect()
            } else {
                BTreeMap::new()
            },
        };
        for (id, l) in listeners {
            let dir = TempDir::new().unwrap();
            let mut cfg = c.config(id, dir.path());
            cfg.initial_members = Some(members.clone());
            c.dirs.insert(id, dir);
            c.nodes.insert(id, Node::start_on(cfg, l).await.unwrap());
        }
        c
    }

    pub fn config(&self, id: NodeId, dir: &std::path::Path) -> NodeConfig {
        let addr = self
            .addrs
            .get(&id)
            .copied()
            .unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let mut cfg = NodeConfig::new(id, addr, dir);
        cfg.peer_listen = self
            .peer_addrs
            .get(&id)
            .copied()
            .unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        cfg.raft = timing();
        cfg.wal = WalConfig {
            segment_size: self.segment_size,
            sync_policy: SyncPolicy::Immediate,
            min_free_bytes: ByteSize::b(0),
            ..WalConfig::new(dir.join("wal"))
        };
        if let Some(mem) = self.mem.get(&id) {
            cfg.file_system = Some(NodeFs(std::sync::Arc::new(mem.clone())));
        }
        (self.tweak)(&mut cfg);
        cfg
    }

    /// Starts a new, empty node (not a member yet).
    pub async fn start_new(&mut self, id: NodeId) -> &Node {
        let l = loopback_listeners().await;
        self.addrs.insert(id, l.client.local_addr().unwrap());
        self.peer_addrs.insert(id, l.peer.local_addr().unwrap());
        let dir = TempDir::new().unwrap();
        let cfg = self.config(id, dir.path());
        self.dirs.insert(id, dir);
        self.nodes.insert(id, Node::start_on(cfg, l).await.unwrap());
        &self.nodes[&id]
    }

    pub async fn stop(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("node running");
        node.shutdown().await.unwrap();
    }

    /// Restarts a stopped node on its old address and data.
    pub async fn restart(&mut self, id: NodeId) {
        let cfg = self.config(id, self.dirs[&id].path());
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let node = loop {
            match Node::start(cfg.clone()).await {
                Ok(n) => break n,
                // The old socket may linger for a moment.
                Err(e @ (NodeError::Io(_) | NodeError::Storage(_) | NodeError::Config(_)))
                    if tokio::time::Instant::now() < deadline =>
                {
                    eprintln!("restart of node {id}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("restart of node {id}: {e}"),
            }
        };
        self.nodes.insert(id, node);
    }

    /// The leader that every running node in `among` agrees on.
    pub async fn leader_among(&self, among: &[NodeId]) -> NodeId {
        let mut found = None;
        eventually("a leader that the nodes agree on", || {
            let views: Vec<Option<NodeId>> = among
                .iter()
                .map(|id| self.nodes[id].core().leader().map(|l| l.0))
                .collect();
            let agreed =
                views[0].filter(|l| views.iter().all(|v| *v == Some(*l)) && among.contains(l));
            let is_leader = agreed.is_some_and(|l| self.nodes[&l].core().is_leader());
            found = agreed.filter(|_| is_leader);
            async move { is_leader }
        })
        .await;
        found.unwrap()
    }

    /// Cuts `node` off from every other node, both ways (its clients still reach it).
    pub fn isolate(&self, node: NodeId) {
        for (id, n) in &self.nodes {
            if *id == node {
                for other in self.nodes.keys().filter(|o| **o != node) {
                    n.core().switch().block(*other);
                }
            } else {
                n.core().switch().block(node);
            }
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        for n in self.nodes.values() {
            n.core().switch().heal();
        }
    }

    pub async fn leader(&self) -> NodeId {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        self.leader_among(&ids).await
    }

    /// Writes through whoever leads, retrying through leader changes.
    pub async fn write(&self, producer: Option<ProducerKey>, records: Vec<NewRecord>) -> Written {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            // Every leader some live node knows of (a node whose Raft stopped on a storage
            // error keeps its last view, which may name itself).
            let mut leaders: Vec<NodeId> = self
                .nodes
                .values()
                .filter(|n| n.core().raft().fatal().is_none())
                .filter_map(|n| n.core().leader().map(|l| l.0))
                .collect();
            leaders.dedup();
            for node in leaders.iter().filter_map(|l| self.nodes.get(l)) {
                match node.core().write(producer, records.clone()).await {
                    Ok(w) => return w,
                    Err(e) => eprintln!("write via node {}: {e}; retrying", node.core().id()),
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no write succeeded before the deadline"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running node has applied up to `next_seq`.
    pub async fn wait_applied(&self, next_seq: u64) {
        for node in self.nodes.values() {
            let mut rx = node.core().state().applied_seq();
            let _ = tokio::time::timeout(DEADLINE, rx.wait_for(|s| *s >= next_seq))
                .await
                .unwrap_or_else(|_| {
                    panic!("node {} did not apply up to {next_seq}", node.core().id())
                });
        }
    }

    pub async fn entries(&self, id: NodeId) -> Vec<Entry> {
        self.nodes[&id]
            .core()
            .committed_entries(0, usize::MAX)
            .await
            .unwrap()
    }

    pub async fn shutdown(self) {
        for (_, n) in self.nodes {
            n.shutdown().await.unwrap();
        }
    }
}
