//! Three server processes on loopback, in a fresh temporary directory: `replog serve` with a
//! static bootstrap, or etcd members with an initial cluster. Dropping a [`Cluster`] kills its
//! processes (SIGKILL: their data is thrown away) and deletes the directory.

use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;

use crate::client::{self, System, TENANT};
use crate::proto::etcd::maintenance_client::MaintenanceClient;
use crate::proto::etcd::{PutRequest, StatusRequest};
use crate::proto::replog::log_service_client::LogServiceClient;
use crate::proto::replog::{Operation, WriteRequest};

pub const NODES: usize = 3;
/// Between two rounds of readiness probes.
const POLL: Duration = Duration::from_millis(100);
/// One readiness probe (connect + one write) at most.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// One server process. Dropping it kills it and reaps it.
struct Node {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Node {
    /// Starts `cmd` with its output in `log`. It gets SIGKILL if the harness dies without
    /// cleaning up (PR_SET_PDEATHSIG: the signal follows the *thread* that spawned it, and the
    /// harness spawns from its main thread, which lives as long as the process).
    fn spawn(name: String, mut cmd: Command, log: PathBuf) -> Result<Node> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file handle")?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: prctl(2) is async-signal-safe, and nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {:?}", cmd.get_program()))?;
        Ok(Node { name, child, log })
    }

    /// An error naming the node and quoting the end of its log, if it has exited.
    fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited ({status}); the end of its log:\n{}",
                self.name,
                log_tail(&self.log)
            ),
            Err(e) => Err(anyhow!(e).context(format!("waiting for {}", self.name))),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log file (for error messages).
fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A running 3-node cluster of one system.
pub struct Cluster {
    pub system: System,
    /// Client endpoints ("127.0.0.1:port"), node 1 first.
    pub endpoints: Vec<String>,
    /// The endpoint of the node that was leader when the cluster became ready.
    pub leader: String,
    // Declared before `dir`: fields drop in order, so the processes are dead before their
    // directory is deleted.
    nodes: Vec<Node>,
    dir: TempDir,
}

impl Cluster {
    /// Starts a fresh cluster of `system`; with `threads`, each server runs that many threads
    /// for its work (replog's `node.worker_threads`, etcd's `GOMAXPROCS`), else its default
    /// (one per core for both).
    pub async fn start(
        system: System,
        bin: &Path,
        parent: &Path,
        ready_timeout: Duration,
        threads: Option<u32>,
    ) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("compare-etcd-{}-", system.name()))
            .tempdir_in(parent)
            .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
        let mut cluster = match system {
            System::Replog => start_replog(bin, dir, threads)?,
            System::Etcd => start_etcd(bin, dir, threads)?,
        };
        cluster.wait_ready(ready_timeout).await?;
        Ok(cluster)
    }

    /// The process ids of the servers.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.child.id()).collect()
    }

    /// Fails if a server has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.nodes.iter_mut().try_for_each(Node::check_running)
    }

    /// Polls until a write through every node has been acknowledged, then finds the leader.
    /// Fails when `timeout` runs out or a server exits.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut ready = [false; NODES];
        let mut last_error = String::from("no probe answered yet");
        loop {
            self.check_running()?;
            for (i, addr) in self.endpoints.iter().enumerate() {
                if ready[i] {
                    continue;
                }
                let probe = tokio::time::timeout(PROBE_TIMEOUT, probe_write(self.system, addr));
                match probe.await {
                    Ok(Ok(())) => ready[i] = true,
                    Ok(Err(e)) => last_error = format!("{addr}: {e:#}"),
                    Err(_) => last_error = format!("{addr}: no answer in {PROBE_TIMEOUT:?}"),
                }
            }
            if ready.iter().all(|r| *r) {
                match self.find_leader().await {
                    Ok(Some(leader)) => {
                        self.leader = leader;
                        return Ok(());
                    }
                    Ok(None) => last_error = "no leader known".into(),
                    Err(e) => last_error = format!("{e:#}"),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the {} cluster was not ready after {timeout:?} (last: {last_error}); logs in {}",
                    self.system.name(),
                    self.dir.path().display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// replog: the node that committed a write (`leader_address`); etcd: the member whose
    /// `Status` names itself as leader.
    async fn find_leader(&self) -> Result<Option<String>> {
        match self.system {
            System::Replog => {
                let channel = client::connect(&self.endpoints[0]).await?;
                let resp = LogServiceClient::new(channel)
                    .write(replog_probe())
                    .await?
                    .into_inner();
                Ok(self
                    .endpoints
                    .iter()
                    .find(|e| **e == resp.leader_address)
                    .cloned())
            }
            System::Etcd => {
                for addr in &self.endpoints {
                    let channel = client::connect(addr).await?;
                    let status = MaintenanceClient::new(channel)
                        .status(StatusRequest {})
                        .await?
                        .into_inner();
                    let me = status.header.map(|h| h.member_id).unwrap_or(0);
                    if status.leader != 0 && status.leader == me {
                        return Ok(Some(addr.clone()));
                    }
                }
                Ok(None)
            }
        }
    }
}

fn replog_probe() -> WriteRequest {
    WriteRequest {
        tenant: TENANT.to_owned(),
        operation: Operation::Insert as i32,
        data: b"compare-etcd readiness probe".to_vec(),
        producer_id: None,
        producer_seq: None,
    }
}

/// One acknowledged write through `addr`.
async fn probe_write(system: System, addr: &str) -> Result<()> {
    let channel = client::connect(addr).await?;
    match system {
        System::Replog => {
            LogServiceClient::new(channel).write(replog_probe()).await?;
        }
        System::Etcd => {
            crate::proto::etcd::kv_client::KvClient::new(channel)
                .put(PutRequest {
                    key: b"compare-etcd/probe".to_vec(),
                    value: b"ready".to_vec(),
                    ..Default::default()
                })
                .await?;
        }
    }
    Ok(())
}

/// `n` loopback ports that were free a moment ago (bound to port 0, then released together).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free loopback ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<std::io::Result<Vec<_>>>()
        .context("reading a bound port")
}

/// A command without the caller's variables that would configure the server (`prefix*`).
fn clean_command(bin: &Path, prefix: &str) -> Command {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with(prefix) {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn start_replog(bin: &Path, dir: TempDir, threads: Option<u32>) -> Result<Cluster> {
    let ports = free_ports(2 * NODES)?;
    let (client_ports, peer_ports) = ports.split_at(NODES);
    let endpoints: Vec<String> = client_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let peers: Vec<String> = peer_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    // Membership names peer addresses.
    let members = peers
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{}={e}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::with_capacity(NODES);
    for (i, (addr, peer)) in endpoints.iter().zip(&peers).enumerate() {
        let id = i + 1;
        let data = dir.path().join(format!("node-{id}"));
        let mut cmd = clean_command(bin, "REPLOG_");
        if let Some(n) = threads {
            cmd.env("REPLOG_NODE__WORKER_THREADS", n.to_string());
        }
        cmd.env_remove("TOKIO_WORKER_THREADS")
            .env("REPLOG_WAL__SYNC_POLICY", "immediate")
            .arg("serve")
            .args(["--id", &id.to_string()])
            .args(["--listen", addr])
            .args(["--peer-listen", peer])
            .args(["--metrics-listen", ""])
            .arg("--data-dir")
            .arg(&data)
            .args(["--initial-members", &members]);
        let log = dir.path().join(format!("node-{id}.log"));
        nodes.push(Node::spawn(format!("replog node {id}"), cmd, log)?);
    }
    Ok(Cluster {
        system: System::Replog,
        endpoints,
        leader: String::new(),
        nodes,
        dir,
    })
}

fn start_etcd(bin: &Path, dir: TempDir, threads: Option<u32>) -> Result<Cluster> {
    let ports = free_ports(2 * NODES)?;
    let (client_ports, peer_ports) = ports.split_at(NODES);
    let endpoints: Vec<String> = client_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let peer_urls: Vec<String> = peer_ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let initial_cluster = peer_urls
        .iter()
        .enumerate()
        .map(|(i, u)| format!("m{}={u}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    // A token unique to this cluster, so members of two runs can never talk to each other.
    let token = format!(
        "compare-etcd-{}",
        dir.path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let mut nodes = Vec::with_capacity(NODES);
    for i in 0..NODES {
        let name = format!("m{}", i + 1);
        let client_url = format!("http://{}", endpoints[i]);
        let data = dir.path().join(&name);
        let mut cmd = clean_command(bin, "ETCD");
        cmd.env_remove("GOMAXPROCS");
        if let Some(n) = threads {
            cmd.env("GOMAXPROCS", n.to_string());
        }
        cmd.args(["--name", &name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_urls[i]])
            .args(["--initial-advertise-peer-urls", &peer_urls[i]])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &token])
            .args(["--logger", "zap"]);
        let log = dir.path().join(format!("{name}.log"));
        nodes.push(Node::spawn(format!("etcd member {name}"), cmd, log)?);
    }
    Ok(Cluster {
        system: System::Etcd,
        endpoints,
        leader: String::new(),
        nodes,
        dir,
    })
}
