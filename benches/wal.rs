//! Criterion benchmarks of the WAL (`cargo bench --bench wal`). Each measures durable appends
//! as a caller sees them: a writer thread waits for its own acknowledgement.
//!
//! - `append/{policy}/{size}B/{writers}w`: one entry per write, N concurrent writers.
//! - `batch/1000x100B`: atomic batches of 1,000 entries, `immediate`.
//! - `replay/100B`: replay of 1M entries through a handler (no allocation per entry).
//! - `reopen/1GiB`: open (recovery) and close of a 1 GiB log.
//!
//! Files go to a temporary directory under `REPLOG_BENCH_DIR` (default: the system's).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use replog::wal::{Manager, Operation, Record, SyncPolicy, WalConfig};

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("REPLOG_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    tempfile::Builder::new()
        .prefix("replog-wal-bench-")
        .tempdir_in(base)
        .expect("temporary directory")
}

fn config(dir: &std::path::Path, policy: SyncPolicy) -> WalConfig {
    WalConfig {
        sync_policy: policy,
        ..WalConfig::new(dir)
    }
}

fn record(size: usize) -> Record {
    Record::new("tenant-1", Operation::Insert, vec![b'x'; size])
}

/// `writers` threads share `total` single-entry writes; returns the wall time.
fn run_writers(wal: &Arc<Manager>, writers: u64, total: u64, size: usize) -> Duration {
    let start = Arc::new(Barrier::new(writers as usize + 1));
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (wal, start) = (wal.clone(), start.clone());
            let n = total / writers + u64::from(w < total % writers);
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..n {
                    wal.write(record(size)).expect("durable write");
                }
            })
        })
        .collect();
    start.wait();
    let t = Instant::now();
    for h in handles {
        h.join().expect("writer thread");
    }
    t.elapsed()
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(1));
    for policy in [SyncPolicy::Immediate, SyncPolicy::Async] {
        for size in [100usize, 4096] {
            for writers in [1u64, 16, 64] {
                let dir = bench_dir();
                let wal = Arc::new(Manager::open(config(dir.path(), policy)).expect("open"));
                let id = BenchmarkId::new(
                    format!("{policy:?}/{size}B").to_lowercase(),
                    format!("{writers}w"),
                );
                g.bench_function(id, |b| {
                    b.iter_custom(|iters| run_writers(&wal, writers.min(iters), iters, size))
                });
            }
        }
    }
    g.finish();
}

fn batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1000));
    let dir = bench_dir();
    let wal = Manager::open(config(dir.path(), SyncPolicy::Immediate)).expect("open");
    g.bench_function("1000x100B", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let recs: Vec<Record> = (0..1000).map(|_| record(100)).collect();
                let t = Instant::now();
                wal.write_batch(recs).expect("durable batch");
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// Fills a WAL quickly (async, batches) up to `bytes` of data; returns its directory.
fn filled(bytes: u64, entry: usize) -> (tempfile::TempDir, u64) {
    let dir = bench_dir();
    let wal = Manager::open(config(dir.path(), SyncPolicy::Async)).expect("open");
    let per_batch = 1000u64;
    let batches = bytes / (per_batch * entry as u64);
    for _ in 0..batches {
        wal.write_batch((0..per_batch).map(|_| record(entry)).collect())
            .expect("batch");
    }
    wal.close().expect("close");
    (dir, batches * per_batch)
}

fn replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    let (dir, entries) = filled(100_000_000, 100);
    let wal = Manager::open(config(dir.path(), SyncPolicy::Immediate)).expect("open");
    g.throughput(Throughput::Elements(entries));
    g.bench_function("100B", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            let n = wal
                .replay(1, |e| {
                    bytes += e.data.len();
                    ControlFlow::Continue(())
                })
                .expect("replay");
            assert_eq!(n, entries);
            std::hint::black_box(bytes)
        })
    });
    g.finish();
}

fn reopen(c: &mut Criterion) {
    let mut g = c.benchmark_group("reopen");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    let (dir, _) = filled(1 << 30, 1000);
    g.bench_function("1GiB", |b| {
        b.iter(|| {
            let wal = Manager::open(config(dir.path(), SyncPolicy::Immediate)).expect("open");
            std::hint::black_box(wal.next_seq());
            wal.close().expect("close");
        })
    });
    g.finish();
}

criterion_group!(benches, append, batch, replay, reopen);
criterion_main!(benches);
