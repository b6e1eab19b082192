//! The `replog` command line: clap definitions and dispatch. Each command maps to one library
//! call; this module only parses, prints and picks exit codes.

pub mod auth;
pub mod bench;
pub mod bench_cluster;
pub mod client;
pub mod health;
pub mod load;
pub mod output;
pub mod progress;
pub mod quota;
pub mod serve;
pub mod verify;
pub mod wal;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit code of a command that failed (I/O, corruption, refused write, ...).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of bad usage or configuration (clap uses it too).
pub const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "replog",
    version,
    about = "A durable, replicated, multi-tenant log",
    propagate_version = true
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node. With no flags: a single-node cluster, data in ./replog-data, gRPC on
    /// 127.0.0.1:7400, metrics on 127.0.0.1:9400.
    Serve(serve::ServeArgs),
    /// Run a local N-node cluster as child processes (Ctrl-C stops them all).
    Dev(serve::DevArgs),
    /// Write entries: --data, or one entry per line of stdin. Prints each sequence number.
    Write(client::WriteArgs),
    /// Stream committed entries as JSON lines.
    Replay(client::ReplayArgs),
    /// Create, get or list named checkpoints.
    Checkpoint(client::CheckpointArgs),
    /// Drop every entry before a sequence number, on every replica.
    Truncate(client::TruncateArgs),
    /// List the segment files of a node.
    Segments(client::SegmentsArgs),
    /// Cluster status, health and membership.
    Cluster(client::ClusterArgs),
    /// Ask nodes whether they serve (grpc.health.v1, no credentials needed): exit 0 only if
    /// every endpoint answers SERVING. For container health checks and probes.
    Health(health::HealthArgs),
    /// Check a live cluster: write unique keyed entries through whatever happens, then read
    /// every member and report lost, duplicated, reordered, gaps and divergence (exit 0: none).
    Verify(verify::VerifyArgs),
    /// Per-tenant quotas: set them on the cluster (replicated), list what nodes apply.
    Quota(quota::QuotaArgs),
    /// Manage the token file of a cluster with authentication on: bearer tokens (create, list,
    /// revoke) and rights of client certificates.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Work on a local write-ahead log directory (offline tools, like kafka-dump-log).
    Wal(wal::WalCommand),
    /// Measure acknowledged writes/s and latency of an in-process cluster (Raft over loopback).
    BenchCluster(bench_cluster::BenchClusterArgs),
    /// Load a running cluster and report throughput, latency percentiles and server CPU:
    /// `bench produce` (writes) and `bench replay` (reads).
    Bench(load::BenchArgs),
}

/// A failure, with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    pub fn failure(message: impl Into<String>) -> Self {
        CliError {
            code: EXIT_FAILURE,
            message: message.into(),
        }
    }

    /// An exit code alone, for a command whose output already said what went wrong.
    pub fn silent(code: u8) -> Self {
        CliError {
            code,
            message: String::new(),
        }
    }
}

impl From<crate::wal::WalError> for CliError {
    fn from(e: crate::wal::WalError) -> Self {
        match e {
            crate::wal::WalError::InvalidConfig { .. } => CliError::usage(e.to_string()),
            _ => CliError::failure(e.to_string()),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::failure(e.to_string())
    }
}

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft narrates every election and step at info: keep it to warnings by default.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve::serve(&args, cli.log_format),
        Command::Dev(args) => serve::dev(&args),
        Command::Write(args) => client::run_async(client::write(&args)),
        Command::Replay(args) => client::run_async(client::replay(&args)),
        Command::Checkpoint(args) => client::run_async(client::checkpoint(&args)),
        Command::Truncate(args) => client::run_async(client::truncate(&args)),
        Command::Segments(args) => client::run_async(client::segments(&args)),
        Command::Cluster(args) => client::run_async(client::cluster(&args)),
        Command::Health(args) => client::run_async(health::run(&args)),
        Command::Verify(args) => client::run_async(verify::verify(&args)),
        Command::Auth(cmd) => auth::run(&cmd),
        Command::Quota(args) => client::run_async(quota::run(&args)),
        Command::Wal(cmd) => wal::run(cmd),
        Command::BenchCluster(args) => bench_cluster::run(&args),
        Command::Bench(args) => load::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("error: {}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}
