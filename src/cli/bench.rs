//! `replog wal bench`: durable-append throughput and latency percentiles, then reopen and replay
//! speed, on a fresh WAL under `--dir` that is deleted afterwards. Criterion benches
//! (`cargo bench`) cover the same workloads; this one reports tail latency.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::CliError;
use super::output::Format;
use crate::fs::StdFs;
use crate::wal::{Compression, Manager, Operation, Preallocate, Record, SyncPolicy, WalConfig};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Parent directory; the bench writes to a fresh subdirectory and deletes it.
    #[arg(long, default_value = "./replog-data")]
    pub dir: PathBuf,
    #[arg(long, value_enum, default_value_t = SyncPolicy::Immediate)]
    pub sync_policy: SyncPolicy,
    /// Concurrent writers, each waiting for its own acknowledgement.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub writers: u32,
    /// Bytes of data per entry.
    #[arg(long, default_value_t = 100)]
    pub entry_size: usize,
    /// Entries per atomic batch.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch: u32,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub duration: Duration,
    #[arg(long, value_parser = crate::wal::config::parse_size, default_value = "64MiB")]
    pub segment_size: ByteSize,
    #[arg(long, value_enum, default_value_t = Compression::None)]
    pub compression: Compression,
    #[arg(long, value_enum, default_value_t = Preallocate::Zero)]
    pub preallocate: Preallocate,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Serialize)]
struct Report {
    sync_policy: String,
    writers: u32,
    entry_size: usize,
    batch: u32,
    entries: u64,
    seconds: f64,
    entries_per_sec: f64,
    mib_per_sec: f64,
    fsyncs: u64,
    entries_per_fsync: f64,
    latency_us_p50: u64,
    latency_us_p99: u64,
    latency_us_p999: u64,
    latency_us_max: u64,
    reopen_ms: f64,
    replay_entries_per_sec: f64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid")
}

pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    std::fs::create_dir_all(&args.dir)?;
    let tmp = tempfile::Builder::new()
        .prefix("replog-bench-")
        .tempdir_in(&args.dir)?;
    let cfg = WalConfig {
        sync_policy: args.sync_policy,
        segment_size: args.segment_size,
        compression: args.compression,
        preallocate: args.preallocate,
        max_frame_bytes: ByteSize::mib(64),
        ..WalConfig::new(tmp.path())
    };
    let registry = prometheus::Registry::new();
    let wal = Arc::new(Manager::open_with(
        cfg.clone(),
        Arc::new(StdFs),
        Some(&registry),
    )?);
    let started = Instant::now();
    let (entries, hist) = write_phase(args, &wal, started + args.duration)?;
    let seconds = started.elapsed().as_secs_f64();
    let fsyncs = fsync_count(&registry);
    let wal = Arc::try_unwrap(wal).map_err(|_| CliError::failure("writers still hold the WAL"))?;
    wal.close()?;
    let (reopen_ms, replay_entries_per_sec) = reopen_and_replay(cfg)?;
    let report = Report {
        sync_policy: format!("{:?}", args.sync_policy).to_lowercase(),
        writers: args.writers,
        entry_size: args.entry_size,
        batch: args.batch,
        entries,
        seconds,
        entries_per_sec: entries as f64 / seconds,
        mib_per_sec: (entries * args.entry_size as u64) as f64 / seconds / f64::from(1 << 20),
        fsyncs,
        entries_per_fsync: if fsyncs > 0 {
            entries as f64 / fsyncs as f64
        } else {
            0.0
        },
        latency_us_p50: hist.value_at_quantile(0.5),
        latency_us_p99: hist.value_at_quantile(0.99),
        latency_us_p999: hist.value_at_quantile(0.999),
        latency_us_max: hist.max(),
        reopen_ms,
        replay_entries_per_sec,
    };
    print(&report, args.output)
}

/// `args.writers` threads writing batches until `deadline`; returns the entries written and
/// the batches' latencies.
fn write_phase(
    args: &BenchArgs,
    wal: &Arc<Manager>,
    deadline: Instant,
) -> Result<(u64, Histogram<u64>), CliError> {
    let handles: Vec<_> = (0..args.writers)
        .map(|w| {
            let wal = wal.clone();
            let (size, batch) = (args.entry_size, args.batch as usize);
            std::thread::spawn(move || -> crate::wal::Result<(u64, Histogram<u64>)> {
                let mut hist = histogram();
                let data = vec![b'x'; size];
                let tenant = format!("tenant-{}", w % 8);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let recs = (0..batch)
                        .map(|_| Record::new(tenant.clone(), Operation::Insert, data.clone()))
                        .collect();
                    let t = Instant::now();
                    wal.write_batch(recs)?;
                    let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    n += batch as u64;
                }
                Ok((n, hist))
            })
        })
        .collect();
    let (mut entries, mut hist) = (0u64, histogram());
    for h in handles {
        let (n, h) = h
            .join()
            .map_err(|_| CliError::failure("a bench writer panicked"))??;
        entries += n;
        hist.add(&h).map_err(|e| CliError::failure(e.to_string()))?;
    }
    Ok((entries, hist))
}

/// The fsyncs the WAL counted in `registry` (`wal_sync_duration_seconds` samples).
fn fsync_count(registry: &prometheus::Registry) -> u64 {
    registry
        .gather()
        .iter()
        .find(|m| m.name() == "wal_sync_duration_seconds")
        .and_then(|m| {
            m.get_metric()
                .first()
                .map(|m| m.get_histogram().get_sample_count())
        })
        .unwrap_or(0)
}

/// Reopens the closed log (recovery) and replays it all: how long the reopen took (ms) and the
/// replay's entries per second.
fn reopen_and_replay(cfg: WalConfig) -> Result<(f64, f64), CliError> {
    let t = Instant::now();
    let wal = Manager::open(cfg)?;
    let reopen_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let replayed = wal.replay(1, |_| ControlFlow::Continue(()))?;
    Ok((reopen_ms, replayed as f64 / t.elapsed().as_secs_f64()))
}

fn print(r: &Report, format: Format) -> Result<(), CliError> {
    if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string(r).map_err(|e| CliError::failure(e.to_string()))?
        );
        return Ok(());
    }
    println!(
        "{} writers={} entry={}B batch={}: {:.0} entries/s ({:.1} MiB/s), {:.1} entries/fsync, latency p50 {}us p99 {}us p99.9 {}us max {}us; reopen {:.1}ms; replay {:.0} entries/s",
        r.sync_policy,
        r.writers,
        r.entry_size,
        r.batch,
        r.entries_per_sec,
        r.mib_per_sec,
        r.entries_per_fsync,
        r.latency_us_p50,
        r.latency_us_p99,
        r.latency_us_p999,
        r.latency_us_max,
        r.reopen_ms,
        r.replay_entries_per_sec
    );
    Ok(())
}
