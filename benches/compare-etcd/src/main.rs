//! replog and etcd side by side: each as 3 processes on loopback, driven by the same load
//! shapes (100-byte writes, each client waiting for its acknowledgement), alternating systems,
//! a fresh cluster for every run. See README.md.

mod client;
mod cluster;
mod cpu;
mod load;
mod proto;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};

use crate::client::System;
use crate::cluster::Cluster;
use crate::load::Shape;
use crate::report::{Output, RunResult};

/// Benchmarks a 3-node replog cluster against a 3-member etcd cluster on this machine.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The replog binary.
    #[arg(long, default_value = "/work/main/target/release/replog")]
    replog_bin: PathBuf,
    /// The etcd binary (3.4 or newer).
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// Runs of each (system, shape); the summary shows medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Measured time of each run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before the measured time of each run (not counted).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Load shapes, CLIENTSxCONNECTIONS (connections spread over all nodes) or
    /// CLIENTSxCONNECTIONS@leader (all to the leader).
    #[arg(long, value_delimiter = ',', default_value = "1x1@leader,64x16,256x16")]
    shapes: Vec<Shape>,
    /// Another shape to run after --shapes (repeatable), e.g. --add-shape 1024x32.
    #[arg(long)]
    add_shape: Vec<Shape>,
    /// Systems to run, in this order within each round.
    #[arg(long, value_delimiter = ',', default_value = "replog,etcd")]
    systems: Vec<System>,
    /// Where the clusters' temporary directories go (on the disk to measure).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// How long a new cluster may take to accept a write through every node.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    ready_timeout: Duration,
    /// Threads each server runs its work on (replog's `node.worker_threads`, etcd's
    /// `GOMAXPROCS`); default: each system's own default (etcd one per core, replog every
    /// core but its WAL writer's). The 3 servers of a cluster share this machine's cores, so
    /// fewer per server is closer to a cluster of 3 machines.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    threads_per_node: Option<u32>,
    /// A run during which the hypervisor stole more than this share of the machine's CPU time
    /// (%, from /proc/stat) is reported, left out of the medians and run again, at most
    /// --steal-retries times (the last attempt counts whatever its steal).
    #[arg(long, default_value_t = 5.0)]
    max_steal: f64,
    /// How many times one run may be run again for --max-steal (0: never).
    #[arg(long, default_value_t = 2)]
    steal_retries: u32,
    /// text: one line per run, then a table; json: one JSON document on stdout (progress on
    /// stderr).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `block_on` polls this future on the main thread, so the servers are spawned from it
    // (their PR_SET_PDEATHSIG follows the spawning thread; see cluster.rs).
    let result = runtime.block_on(async {
        let mut stop = Signals::new()?;
        tokio::select! {
            r = run(&args) => r.map(|()| None),
            s = stop.recv() => Ok(Some(s)),
        }
        // Leaving the select drops the run in progress: its cluster kills its processes and
        // deletes its directory.
    });
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(signal)) => {
            eprintln!("stopped by {signal}; servers killed, temporary directories removed");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP.
struct Signals([(tokio::signal::unix::Signal, &'static str); 3]);

impl Signals {
    fn new() -> Result<Signals> {
        let one = |kind, name| -> Result<_> {
            Ok((
                signal(kind).with_context(|| format!("handling {name}"))?,
                name,
            ))
        };
        Ok(Signals([
            one(SignalKind::interrupt(), "SIGINT")?,
            one(SignalKind::terminate(), "SIGTERM")?,
            one(SignalKind::hangup(), "SIGHUP")?,
        ]))
    }

    async fn recv(&mut self) -> &'static str {
        let [(int, a), (term, b), (hup, c)] = &mut self.0;
        tokio::select! {
            _ = int.recv() => a,
            _ = term.recv() => b,
            _ = hup.recv() => c,
        }
    }
}

async fn run(args: &Args) -> Result<()> {
    let shapes: Vec<Shape> = args.shapes.iter().chain(&args.add_shape).copied().collect();
    if shapes.is_empty() || args.systems.is_empty() {
        bail!("nothing to run: give at least one shape and one system");
    }
    for system in &args.systems {
        let bin = bin(args, *system);
        if !bin.is_file() {
            bail!(
                "the {} binary {} does not exist (--{}-bin)",
                system.name(),
                bin.display(),
                system.name()
            );
        }
    }
    let mut out = Output::new(args.output == OutputFormat::Json, &shapes, args.max_steal);
    out.header(&[
        ("replog", args.replog_bin.display().to_string()),
        ("etcd", etcd_version(&args.etcd_bin)),
        ("runs", args.runs.to_string()),
        (
            "warm-up",
            humantime::format_duration(args.warmup).to_string(),
        ),
        (
            "duration",
            humantime::format_duration(args.duration).to_string(),
        ),
        ("dir", args.dir.display().to_string()),
        (
            "runs again",
            if args.steal_retries == 0 {
                "never".to_owned()
            } else {
                format!(
                    "up to {} times, a run with steal above {}%",
                    args.steal_retries, args.max_steal
                )
            },
        ),
        (
            "threads per node",
            args.threads_per_node
                .map_or("each system's default".to_owned(), |n| n.to_string()),
        ),
    ]);
    for shape in &shapes {
        for run in 1..=args.runs {
            for &system in &args.systems {
                for attempt in 0..=args.steal_retries {
                    let mut cluster = Cluster::start(
                        system,
                        bin(args, system),
                        &args.dir,
                        args.ready_timeout,
                        args.threads_per_node,
                    )
                    .await
                    .with_context(|| format!("starting {} for {shape}", system.name()))?;
                    let measured = load::run(&mut cluster, *shape, args.warmup, args.duration)
                        .await
                        .with_context(|| format!("{} run {run} of {shape}", system.name()))?;
                    drop(cluster);
                    let result = RunResult::new(system, *shape, run, &measured);
                    if result.steal_pct > args.max_steal && attempt < args.steal_retries {
                        out.discarded(result);
                        continue;
                    }
                    out.run(result);
                    break;
                }
            }
        }
    }
    out.finish(&shapes, &args.systems)
}

fn bin(args: &Args, system: System) -> &std::path::Path {
    match system {
        System::Replog => &args.replog_bin,
        System::Etcd => &args.etcd_bin,
    }
}

/// "etcd Version: 3.4.23" -> "3.4.23 (/usr/bin/etcd)".
fn etcd_version(bin: &std::path::Path) -> String {
    let version = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("etcd Version:").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_else(|| "unknown version".into());
    format!("{version} ({})", bin.display())
}
