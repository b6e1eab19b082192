//! `replog bench-cluster`: acknowledged writes per second and latency percentiles of an
//! in-process cluster (Raft traffic over gRPC on loopback; clients call the leader in-process, or
//! with `--grpc` go through the public API with the Rust client),
//! with `--nodes 1` giving the single-node figure beside it. Data goes to a fresh subdirectory
//! of `--dir`, deleted afterwards.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::CliError;
use super::output::Format;
use crate::core::NewRecord;
use crate::node::{Listeners, Node, NodeConfig};
use crate::proto;
use crate::wal::{Operation, Preallocate, SyncPolicy, WalConfig};

#[derive(Args, Debug)]
pub struct BenchClusterArgs {
    /// Parent directory; the bench writes to a fresh subdirectory and deletes it.
    #[arg(long, default_value = "./replog-data")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
    pub nodes: u64,
    /// Concurrent clients, each waiting for its own acknowledgement.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub clients: u32,
    /// Bytes of data per entry.
    #[arg(long, default_value_t = 100)]
    pub entry_size: usize,
    #[arg(long, value_enum, default_value_t = SyncPolicy::Immediate)]
    pub sync_policy: SyncPolicy,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    #[arg(long, value_parser = super::wal::parse_size_arg, default_value = "64MiB")]
    pub segment_size: ByteSize,
    #[arg(long, value_enum, default_value_t = Preallocate::Zero)]
    pub preallocate: Preallocate,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Clients write through the public gRPC API with the Rust client (idempotency keys,
    /// leader following) over loopback, instead of calling the leader in-process.
    #[arg(long)]
    pub grpc: bool,
}

#[derive(Serialize)]
struct Report {
    nodes: u64,
    clients: u32,
    entry_size: usize,
    sync_policy: String,
    acked_writes: u64,
    /// Writes refused (e.g. during a leader change) and retried.
    failed_attempts: u64,
    seconds: f64,
    writes_per_sec: f64,
    latency_us_p50: u64,
    latency_us_p99: u64,
    latency_us_p999: u64,
    latency_us_max: u64,
}

pub fn run(args: &BenchClusterArgs) -> Result<(), CliError> {
    let rt = super::serve::runtime()?;
    let root = args
        .dir
        .join(format!("bench-cluster-{}", std::process::id()));
    let report = rt.block_on(bench(args, &root));
    let _ = std::fs::remove_dir_all(&root);
    print(&report?, args.output)
}

async fn bench(args: &BenchClusterArgs, root: &std::path::Path) -> Result<Report, CliError> {
    let nodes = Arc::new(start_nodes(args, root).await?);
    let leader = warm_leader(&nodes, args.entry_size).await?;
    let started = Instant::now();
    let h = drive(args, &nodes, leader, started + args.duration).await;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(nodes) = Arc::into_inner(nodes) {
        for n in nodes {
            if let Err(e) = n.shutdown().await {
                tracing::warn!(error = %e, "stopping a bench node");
            }
        }
    }
    let (h, errors) = h?;
    Ok(Report {
        nodes: args.nodes,
        clients: args.clients,
        entry_size: args.entry_size,
        sync_policy: format!("{:?}", args.sync_policy).to_lowercase(),
        acked_writes: h.len(),
        failed_attempts: errors,
        seconds,
        writes_per_sec: h.len() as f64 / seconds,
        latency_us_p50: h.value_at_quantile(0.5),
        latency_us_p99: h.value_at_quantile(0.99),
        latency_us_p999: h.value_at_quantile(0.999),
        latency_us_max: h.max(),
    })
}

/// Starts `args.nodes` nodes on loopback ports, bootstrapped as one cluster under `root`.
async fn start_nodes(
    args: &BenchClusterArgs,
    root: &std::path::Path,
) -> Result<Vec<Node>, CliError> {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut listeners = Vec::new();
    for _ in 0..args.nodes {
        let l = Listeners::bind(any, any)
            .await
            .map_err(|e| CliError::failure(e.to_string()))?;
        listeners.push(l);
    }
    let members: std::collections::BTreeMap<u64, String> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| Ok((i as u64 + 1, l.peer.local_addr()?.to_string())))
        .collect::<Result<_, std::io::Error>>()?;
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let dir = root.join(format!("node-{id}"));
        let mut cfg = NodeConfig::new(id, l.client.local_addr()?, &dir);
        cfg.peer_listen = l.peer.local_addr()?;
        cfg.wal = WalConfig {
            sync_policy: args.sync_policy,
            segment_size: args.segment_size,
            preallocate: args.preallocate,
            ..WalConfig::new(dir.join("wal"))
        };
        cfg.initial_members = Some(members.clone());
        let node = Node::start_on(cfg, l).await;
        nodes.push(node.map_err(|e| CliError::failure(e.to_string()))?);
    }
    Ok(nodes)
}

/// Waits for a leader, then writes one entry through it (connections, first segment), following
/// an early re-election; returns the leader's position in `nodes`.
async fn warm_leader(nodes: &[Node], entry_size: usize) -> Result<usize, CliError> {
    let leads =
        |fallback: Option<usize>| nodes.iter().position(|n| n.core().is_leader()).or(fallback);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut leader = loop {
        if let Some(n) = leads(None) {
            break n;
        }
        if Instant::now() > deadline {
            return Err(CliError::failure("no leader was elected within 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut tries = 0;
    while let Err(e) = nodes[leader]
        .core()
        .write(None, vec![record(entry_size)])
        .await
    {
        tries += 1;
        if tries > 100 {
            return Err(CliError::failure(e.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        leader = leads(Some(leader)).unwrap_or(leader);
    }
    Ok(leader)
}

/// Runs `args.clients` clients until `until` (in process, or through gRPC with `--grpc`);
/// returns their latencies and failed attempts.
async fn drive(
    args: &BenchClusterArgs,
    nodes: &Arc<Vec<Node>>,
    leader: usize,
    until: Instant,
) -> Result<(Histogram<u64>, u64), CliError> {
    let grpc = if args.grpc {
        let endpoints: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
        let c = crate::client::Client::new(&endpoints, Default::default())
            .map_err(|e| CliError::failure(e.to_string()))?;
        Some(c)
    } else {
        None
    };
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let size = args.entry_size;
        tasks.push(match grpc.clone() {
            Some(client) => tokio::spawn(grpc_client(client, size, until)),
            None => tokio::spawn(node_client(nodes.clone(), leader, size, until)),
        });
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("static bounds");
    let mut errors = 0;
    for t in tasks {
        let (part, e) = t.await.map_err(|e| CliError::failure(e.to_string()))?;
        h.add(&part).map_err(|e| CliError::failure(e.to_string()))?;
        errors += e;
    }
    Ok((h, errors))
}

/// One client writing through the leader's core (in process) until `until`.
async fn node_client(
    nodes: Arc<Vec<Node>>,
    leader: usize,
    size: usize,
    until: Instant,
) -> (Histogram<u64>, u64) {
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("static bounds");
    let (mut at, mut errors) = (leader, 0u64);
    while Instant::now() < until {
        let t = Instant::now();
        match nodes[at].core().write(None, vec![record(size)]).await {
            Ok(_) => drop(h.record(t.elapsed().as_micros() as u64)),
            Err(_) => {
                // Follow a leader change; the failed attempt is not counted.
                errors += 1;
                at = nodes
                    .iter()
                    .position(|n| n.core().is_leader())
                    .unwrap_or(at);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (h, errors)
}

/// One client writing through the public API until `until`.
async fn grpc_client(
    client: crate::client::Client,
    size: usize,
    until: Instant,
) -> (Histogram<u64>, u64) {
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("static bounds");
    let mut errors = 0u64;
    while Instant::now() < until {
        let t = Instant::now();
        match client
            .write("bench", proto::Operation::Insert, vec![b'x'; size])
            .await
        {
            Ok(_) => drop(h.record(t.elapsed().as_micros() as u64)),
            Err(_) => errors += 1,
        }
    }
    (h, errors)
}

fn record(size: usize) -> NewRecord {
    NewRecord {
        tenant: "bench".to_owned(),
        operation: Operation::Insert,
        data: vec![b'x'; size],
    }
}

fn print(r: &Report, format: Format) -> Result<(), CliError> {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string(r).map_err(|e| CliError::failure(e.to_string()))?
        ),
        Format::Table => {
            println!(
                "nodes {}  clients {}  entry {} B  sync {}",
                r.nodes, r.clients, r.entry_size, r.sync_policy
            );
            println!(
                "acked writes  {:>12}  in {:.1} s",
                r.acked_writes, r.seconds
            );
            println!("writes/s      {:>12.0}", r.writes_per_sec);
            println!(
                "latency µs    p50 {}  p99 {}  p99.9 {}  max {}",
                r.latency_us_p50, r.latency_us_p99, r.latency_us_p999, r.latency_us_max
            );
        }
    }
    Ok(())
}
