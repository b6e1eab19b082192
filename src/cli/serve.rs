//! `replog serve` (one node, from config, env and flags) and `replog dev` (a local N-node
//! cluster of `replog serve` child processes).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use clap::Args;

use super::CliError;
use crate::config::{Config, FlagOverrides};
use crate::node::Node;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// YAML config file (see cluster/local-3/ for examples). Flags override it, and
    /// REPLOG_<SECTION>__<KEY> environment variables (e.g. REPLOG_WAL__SYNC_POLICY) override it
    /// too, below flags.
    #[arg(long, short = 'c', env = "REPLOG_CONFIG")]
    pub config: Option<PathBuf>,
    /// Node id, unique in the cluster (>= 1). [default: 1]
    #[arg(long)]
    pub id: Option<u64>,
    /// Client gRPC address to bind (public services, health, reflection).
    /// [default: 127.0.0.1:7400]
    #[arg(long)]
    pub listen: Option<String>,
    /// Address clients use. [default: the listen address]
    #[arg(long)]
    pub advertise: Option<String>,
    /// Peer gRPC address to bind (Raft traffic between members only).
    /// [default: the listen host, its port + 100]
    #[arg(long)]
    pub peer_listen: Option<String>,
    /// Address other members use: what membership, --initial-members and `cluster add-node`
    /// name. [default: the advertise host with the peer port, or the peer listen address]
    #[arg(long)]
    pub peer_advertise: Option<String>,
    /// Prometheus /metrics address ("" turns it off). [default: 127.0.0.1:9400]
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Data directory (WAL, state machine, Raft metadata). [default: ./replog-data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Initialize a new single-node cluster on first start (the default when neither
    /// --initial-members nor --join is given).
    #[arg(long)]
    pub init: bool,
    /// Start uninitialized and wait to be added (`replog cluster add-node`).
    #[arg(long, conflicts_with = "init")]
    pub no_init: bool,
    /// Static bootstrap, the same on every first member, naming peer addresses:
    /// 1=host:peerport,2=host:peerport,...
    #[arg(long)]
    pub initial_members: Option<String>,
    /// Endpoints of an existing cluster to ask to add this node (comma list).
    #[arg(long, value_delimiter = ',')]
    pub join: Vec<String>,
    /// This node's TLS certificate (PEM); turns TLS on for both listeners (with --tls-key and
    /// --tls-ca). The peer listener then requires mTLS.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM) peers' (and, with --client-cert-auth, clients') certificates chain to.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// The peer listener's own certificate, key and CA. [default: --tls-cert, --tls-key, --tls-ca]
    #[arg(long)]
    pub peer_tls_cert: Option<PathBuf>,
    #[arg(long)]
    pub peer_tls_key: Option<PathBuf>,
    #[arg(long)]
    pub peer_tls_ca: Option<PathBuf>,
    /// Require a client certificate from the CA on the client listener too.
    #[arg(long)]
    pub client_cert_auth: bool,
    /// Allow plaintext on an address other than loopback (anyone who reaches it can write,
    /// read and change the cluster).
    #[arg(long)]
    pub insecure: bool,
    /// Require credentials (a token or a granted client certificate) on the client listener.
    /// [default: on when --listen is not a loopback address]
    #[arg(long, value_enum)]
    pub auth: Option<OnOff>,
    /// The token file (`replog auth token create --file`): hashes of tokens and certificate
    /// grants, re-read when it changes.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Serve /metrics over HTTPS with the client certificate (needs TLS).
    #[arg(long)]
    pub metrics_tls: bool,
    /// Require a bearer token on /metrics (needs auth on).
    #[arg(long)]
    pub metrics_token: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl ServeArgs {
    /// The flags given, as config overrides.
    pub fn overrides(&self) -> FlagOverrides {
        let mut node = BTreeMap::new();
        if let Some(id) = self.id {
            node.insert("id", serde_json::json!(id));
        }
        for (k, v) in [
            ("listen", &self.listen),
            ("advertise", &self.advertise),
            ("peer_listen", &self.peer_listen),
            ("peer_advertise", &self.peer_advertise),
            ("metrics_listen", &self.metrics_listen),
        ] {
            if let Some(v) = v {
                node.insert(k, serde_json::json!(v));
            }
        }
        if let Some(d) = &self.data_dir {
            node.insert("data_dir", serde_json::json!(d));
        }
        let mut cluster = BTreeMap::new();
        if self.init {
            cluster.insert("init", serde_json::Value::Bool(true));
        }
        if self.no_init {
            cluster.insert("init", serde_json::Value::Bool(false));
        }
        if let Some(m) = &self.initial_members {
            cluster.insert("initial_members", serde_json::Value::String(m.clone()));
        }
        if !self.join.is_empty() {
            cluster.insert("join", serde_json::json!(self.join));
        }
        let mut tls = BTreeMap::new();
        for (k, v) in [
            ("cert", &self.tls_cert),
            ("key", &self.tls_key),
            ("ca", &self.tls_ca),
            ("peer_cert", &self.peer_tls_cert),
            ("peer_key", &self.peer_tls_key),
            ("peer_ca", &self.peer_tls_ca),
        ] {
            if let Some(v) = v {
                tls.insert(k, serde_json::json!(v));
            }
        }
        if self.client_cert_auth {
            tls.insert("client_cert_auth", serde_json::Value::Bool(true));
        }
        if self.insecure {
            tls.insert("insecure", serde_json::Value::Bool(true));
        }
        let mut auth = BTreeMap::new();
        if let Some(a) = self.auth {
            auth.insert("enabled", serde_json::Value::Bool(a == OnOff::On));
        }
        if let Some(f) = &self.token_file {
            auth.insert("token_file", serde_json::json!(f));
        }
        if self.metrics_tls {
            auth.insert("metrics_tls", serde_json::Value::Bool(true));
        }
        if self.metrics_token {
            auth.insert("metrics_token", serde_json::Value::Bool(true));
        }
        FlagOverrides {
            node: (!node.is_empty()).then_some(node),
            cluster: (!cluster.is_empty()).then_some(cluster),
            tls: (!tls.is_empty()).then_some(tls),
            auth: (!auth.is_empty()).then_some(auth),
        }
    }
}

pub fn serve(args: &ServeArgs, log_format: super::LogFormat) -> Result<(), CliError> {
    let flags = args.overrides();
    let cfg = Config::load(args.config.as_deref(), &flags).map_err(|e| CliError::usage(e.0))?;
    let node_cfg = cfg.node_config().map_err(|e| CliError::usage(e.0))?;
    let rt = node_runtime(Some(cfg.node.worker_threads_or_default()))?;
    rt.block_on(async move {
        // First: a SIGTERM from a script that read the startup line (or sent while the node
        // starts) must stop the node cleanly, not end it by the signal.
        let stop = shutdown_signal();
        let node = Node::start(node_cfg).await.map_err(|e| match e {
            crate::node::NodeError::Config(m) => CliError::usage(m),
            other => CliError::failure(format!("the node did not start: {other}")),
        })?;
        let metrics = node
            .metrics_addr()
            .map(|a| format!(", metrics on http://{a}/metrics"))
            .unwrap_or_default();
        let line = format!(
            "replog node {} serving gRPC on {} (advertised as {}), peers on {} (advertised as {}){metrics}; data in {}",
            node.core().id(),
            node.addr(),
            node.core().advertise(),
            node.peer_addr(),
            node.core().peer_advertise(),
            cfg.node.data_dir.display()
        );
        tracing::info!(
            target: "replog",
            worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
            lifo_slot = LIFO_SLOT,
            "runtime"
        );
        // Scripts wait for this line; with JSON logs it is a log event like the others.
        match log_format {
            super::LogFormat::Text => eprintln!("{line}"),
            super::LogFormat::Json => tracing::info!(target: "replog", "{line}"),
        }
        let fatal = wait_for_stop(&node, stop).await;
        node.shutdown()
            .await
            .map_err(|e| CliError::failure(format!("stopping the node: {e}")))?;
        match fatal {
            Some(why) => Err(CliError::failure(format!("the node stopped: {why}"))),
            None => Ok(()),
        }
    })
}

/// The runtime of `replog serve` (`threads`: `node.worker_threads` or its default) and of the
/// other commands (`None`: one thread per core), with the scheduler's LIFO slot off when the
/// build allows it ([`LIFO_SLOT`]).
///
/// With the slot on, a task woken by the running task runs next. When a Raft entry of N
/// coalesced unary writes commits, each write's HTTP/2 stream task then wakes its connection
/// task, which runs at once and writes that one response: N `writev` calls, and N reads at
/// the other end. With the slot off, woken tasks queue in order: the stream tasks of the
/// entry all run first, then each connection writes all of its ready responses in one call
/// (64 unary clients on the leader: 0.39 `writev` per write there instead of 1.13; spread over
/// the nodes, 1.26x the writes per second; `benches/write-path/HISTORY.md`, "the LIFO
/// slot").
fn node_runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime, CliError> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        b.worker_threads(n);
    }
    // `disable_lifo_slot` is one of tokio's unstable APIs: `.cargo/config.toml` builds with
    // `--cfg tokio_unstable`, which a `RUSTFLAGS` variable replaces (then the slot stays on).
    #[cfg(tokio_unstable)]
    b.disable_lifo_slot();
    b.enable_all()
        .build()
        .map_err(|e| CliError::failure(format!("starting the runtime: {e}")))
}

/// Whether this build runs its runtimes with tokio's LIFO slot (the node's `runtime` log event).
pub const LIFO_SLOT: &str = if cfg!(tokio_unstable) { "off" } else { "on" };

/// The runtime of the other commands: one thread per core.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    node_runtime(None)
}

/// Waits for SIGINT/SIGTERM (`stop`, returns `None`) or for Raft to stop on a storage error
/// (returns why: an fsync failure is fatal for the node).
async fn wait_for_stop(node: &Node, stop: impl Future<Output = ()>) -> Option<String> {
    tokio::select! {
        _ = stop => None,
        why = node.failure() => Some(why),
    }
}

/// Installs the SIGINT and SIGTERM handlers now and returns a future that resolves on either.
///
/// The handlers are in place when this returns, not when the future is first polled: a
/// command that announces it is ready (`serve`'s startup line) calls this first, so a SIGTERM
/// sent right after the announcement stops it cleanly instead of ending it by the signal.
/// Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(target: "replog", error = %e, "cannot handle {name}: it ends the process without a clean stop");
            None
        }
    };
    let int = install(SignalKind::interrupt(), "SIGINT");
    let term = install(SignalKind::terminate(), "SIGTERM");
    async move {
        let recv = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = recv(int) => {}
            _ = recv(term) => {}
        }
    }
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Parent of the nodes' data directories (node-1, node-2, ...) and logs.
    #[arg(long, default_value = "./replog-data/dev")]
    pub data_dir: PathBuf,
    /// Client gRPC port of node 1; node N listens on base + N - 1, for peers on base + 100 +
    /// N - 1, its metrics on base + 2000 + N - 1.
    #[arg(long, default_value_t = 7401)]
    pub base_port: u16,
    /// Run the cluster with TLS on both listeners (mTLS between nodes), with a throwaway CA
    /// and certificates made in <data-dir>/tls (CA, one per node, one for clients).
    #[arg(long)]
    pub tls: bool,
    /// Run the cluster with authentication on: a throwaway token file in <data-dir>/tokens.yaml
    /// with one admin token, printed as `export REPLOG_TOKEN=...` (make more with `replog auth
    /// token create --file <data-dir>/tokens.yaml`).
    #[arg(long)]
    pub auth: bool,
    /// Leave a node that dies down (by default it is restarted after --restart-delay, so
    /// failover and catch-up can be watched; the others keep running either way).
    #[arg(long)]
    pub no_restart: bool,
    /// How long after a node dies it is started again.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub restart_delay: Duration,
}

/// One node of `replog dev`: how to start it, and its process while it runs.
struct DevNode {
    id: u64,
    flags: Vec<String>,
    child: Option<Child>,
    /// When a dead node is to be started again.
    restart_at: Option<Instant>,
}

impl DevNode {
    fn log(&self, args: &DevArgs) -> PathBuf {
        args.data_dir.join(format!("node-{}.log", self.id))
    }

    /// Starts the node, its stdout and stderr appended to its log.
    fn spawn(&mut self, exe: &std::path::Path, args: &DevArgs) -> std::io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(args))?;
        let mut cmd = Command::new(exe);
        cmd.args(&self.flags)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // The nodes share this machine's cores: each gets its share of threads, unless the
        // caller chose.
        if std::env::var_os(WORKER_THREADS_VAR).is_none() {
            cmd.env(
                WORKER_THREADS_VAR,
                dev_worker_threads(args.nodes).to_string(),
            );
        }
        let child = cmd.spawn()?;
        self.child = Some(child);
        Ok(())
    }
}

/// The variable that sets `node.worker_threads`.
const WORKER_THREADS_VAR: &str = "REPLOG_NODE__WORKER_THREADS";

/// Threads of each of `nodes` nodes sharing this machine: the default for its share of the
/// cores (all of them but the WAL writer's), at least one.
fn dev_worker_threads(nodes: u64) -> usize {
    let cores = crate::config::machine_cores();
    crate::config::default_worker_threads(cores / usize::try_from(nodes.max(1)).unwrap_or(1))
}

/// The `serve` flags of node `id` in a `replog dev` cluster (what `cluster/local-3/` holds).
pub fn dev_node_flags(args: &DevArgs, id: u64) -> Vec<String> {
    let port = |base: u16, id: u64| u64::from(base) + id - 1;
    let members: Vec<String> = (1..=args.nodes)
        .map(|i| format!("{i}=127.0.0.1:{}", port(args.base_port, i) + 100))
        .collect();
    vec![
        "serve".into(),
        "--id".into(),
        id.to_string(),
        "--listen".into(),
        format!("127.0.0.1:{}", port(args.base_port, id)),
        "--peer-listen".into(),
        format!("127.0.0.1:{}", port(args.base_port, id) + 100),
        "--metrics-listen".into(),
        format!("127.0.0.1:{}", port(args.base_port, id) + 2000),
        "--data-dir".into(),
        args.data_dir
            .join(format!("node-{id}"))
            .display()
            .to_string(),
        "--initial-members".into(),
        members.join(","),
    ]
}

pub fn dev(args: &DevArgs) -> Result<(), CliError> {
    if u64::from(args.base_port) + args.nodes + 2000 > 65535 {
        return Err(CliError::usage(
            "--base-port is too high for that many nodes",
        ));
    }
    std::fs::create_dir_all(&args.data_dir)?;
    let tls = if args.tls {
        let local = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let names = vec![local; args.nodes as usize];
        let files = crate::tls::throwaway_ca(&args.data_dir.join("tls"), &names)
            .map_err(|e| CliError::failure(format!("making the throwaway CA: {e}")))?;
        Some(files)
    } else {
        None
    };
    let token = if args.auth {
        Some(dev_token_file(args)?)
    } else {
        None
    };
    let exe = std::env::current_exe()?;
    let mut nodes: Vec<DevNode> = Vec::new();
    for id in 1..=args.nodes {
        let mut flags = dev_node_flags(args, id);
        if token.is_some() {
            flags.extend([
                "--auth".to_owned(),
                "on".to_owned(),
                "--token-file".to_owned(),
                dev_tokens_path(args).display().to_string(),
            ]);
        }
        if let Some(t) = &tls {
            let f = &t.nodes[(id - 1) as usize];
            for (flag, path) in [
                ("--tls-cert", &f.cert),
                ("--tls-key", &f.key),
                ("--tls-ca", &f.ca),
            ] {
                flags.push(flag.into());
                flags.push(path.display().to_string());
            }
        }
        let mut node = DevNode {
            id,
            flags,
            child: None,
            restart_at: None,
        };
        let started = node.spawn(&exe, args);
        nodes.push(node);
        if let Err(e) = started {
            stop_all(&mut nodes);
            return Err(CliError::failure(format!("starting node {id}: {e}")));
        }
    }
    let endpoints: Vec<String> = (1..=args.nodes)
        .map(|i| format!("127.0.0.1:{}", u64::from(args.base_port) + i - 1))
        .collect();
    let client_tls = match &tls {
        Some(t) => Some(
            crate::tls::client_config(&t.ca, Some((&t.client.0, &t.client.1)))
                .map_err(|e| CliError::failure(e.to_string()))?,
        ),
        None => None,
    };
    let rt = runtime()?;
    let result = rt.block_on(supervise(
        args,
        &endpoints,
        (client_tls, token),
        tls.as_ref(),
        (&exe, &mut nodes),
    ));
    stop_all(&mut nodes);
    result
}

async fn supervise(
    args: &DevArgs,
    endpoints: &[String],
    (client_tls, token): (Option<tonic::transport::ClientTlsConfig>, Option<String>),
    tls: Option<&crate::tls::ThrowawayFiles>,
    (exe, nodes): (&std::path::Path, &mut [DevNode]),
) -> Result<(), CliError> {
    let opts = crate::client::ClientOptions {
        tls: client_tls,
        token: token.clone(),
        // No retries inside a call (and so no retry warnings while the nodes start): the loop
        // below asks again every tick.
        retry_timeout: Duration::ZERO,
        ..Default::default()
    };
    let client = crate::client::Client::new(endpoints, opts)
        .map_err(|e| CliError::failure(e.to_string()))?;
    let started = Instant::now();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut ready = false;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut signal => {
                eprintln!("stopping the cluster");
                return Ok(());
            }
            _ = tick.tick() => {}
        }
        for node in nodes.iter_mut() {
            watch_node(node, ready, exe, args)?;
        }
        if ready {
            continue;
        }
        if let Ok(s) = client.cluster_status().await
            && s.leader_id != 0
        {
            ready = true;
            let list = endpoints.join(",");
            println!(
                "cluster of {} nodes ready, leader node {}",
                args.nodes, s.leader_id
            );
            println!("endpoints: {list}");
            println!("export REPLOG_ENDPOINTS={list}");
            if let Some(t) = tls {
                println!("export REPLOG_CA={}", t.ca.display());
                println!("export REPLOG_CERT={}", t.client.0.display());
                println!("export REPLOG_KEY={}", t.client.1.display());
            }
            if let Some(t) = &token {
                println!("export REPLOG_TOKEN={t}");
                println!(
                    "export REPLOG_AUTH__TOKEN_FILE={}",
                    dev_tokens_path(args).display()
                );
            }
            println!(
                "logs and data in {}; Ctrl-C stops every node",
                args.data_dir.display()
            );
            let _ = std::io::stdout().flush();
        } else if started.elapsed() > Duration::from_secs(60) {
            return Err(CliError::failure(format!(
                "no leader after 60 s; see the logs in {}",
                args.data_dir.display()
            )));
        }
    }
}

fn dev_tokens_path(args: &DevArgs) -> PathBuf {
    args.data_dir.join("tokens.yaml")
}

/// A new token file for `replog dev --auth`, holding one admin token (returned).
fn dev_token_file(args: &DevArgs) -> Result<String, CliError> {
    let mut f = crate::auth::TokenFile::default();
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let (_, token) = f
        .create_token("dev-admin", crate::auth::Role::Admin, &[], &now)
        .map_err(|e| CliError::failure(e.to_string()))?;
    f.write(&dev_tokens_path(args))
        .map_err(|e| CliError::failure(e.to_string()))?;
    Ok(token)
}

/// Notices a dead node of `replog dev`. Before the cluster is ready, a death is a failure
/// of the whole start (a port in use, a bad flag). Afterwards the others keep running and the
/// node is started again after `--restart-delay`, unless `--no-restart`, or it died of bad
/// usage (exit code 2), which a restart would only repeat.
fn watch_node(
    node: &mut DevNode,
    ready: bool,
    exe: &std::path::Path,
    args: &DevArgs,
) -> Result<(), CliError> {
    let id = node.id;
    if let Some(c) = node.child.as_mut()
        && let Ok(Some(status)) = c.try_wait()
    {
        node.child = None;
        let log = node.log(args);
        if !ready {
            return Err(CliError::failure(format!(
                "node {id} exited ({status}); see {}",
                log.display()
            )));
        }
        if args.no_restart || status.code() == Some(i32::from(super::EXIT_USAGE)) {
            let why = if args.no_restart {
                "--no-restart"
            } else {
                "it would fail the same way"
            };
            eprintln!(
                "node {id} exited ({status}); left down ({why}); the others keep running; see {}",
                log.display()
            );
        } else {
            eprintln!(
                "node {id} exited ({status}); restarting it in {}; the others keep running; see {}",
                humantime::format_duration(args.restart_delay),
                log.display()
            );
            node.restart_at = Some(Instant::now() + args.restart_delay);
        }
    }
    if node.restart_at.is_some_and(|t| Instant::now() >= t) {
        node.restart_at = None;
        match node.spawn(exe, args) {
            Ok(()) => eprintln!("node {id} restarted"),
            Err(e) => eprintln!("node {id} could not be restarted: {e}; left down"),
        }
    }
    Ok(())
}

/// Sends SIGTERM to every running node and waits for it (SIGKILL after 10 s).
fn stop_all(nodes: &mut [DevNode]) {
    for c in nodes.iter().filter_map(|n| n.child.as_ref()) {
        // SAFETY: kill(2) on a pid we spawned; no memory is involved.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (id, c) in nodes
        .iter_mut()
        .filter_map(|n| Some(n.id).zip(n.child.as_mut()))
    {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    eprintln!("node {id} did not stop in 10 s: killing it");
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    for n in nodes.iter_mut() {
        n.child = None;
        n.restart_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_nodes_share_the_cores_and_each_has_at_least_one_thread() {
        let cores = crate::config::machine_cores();
        assert_eq!(dev_worker_threads(1), (cores - 1).max(1));
        assert_eq!(dev_worker_threads(3), (cores / 3).saturating_sub(1).max(1));
        assert_eq!(dev_worker_threads(9), (cores / 9).saturating_sub(1).max(1));
        assert!(dev_worker_threads(9) >= 1);
    }
}
