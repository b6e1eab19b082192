//! `replog bench produce` and `replog bench replay`: the product's load tool against any
//! cluster (like `kafka-producer-perf-test` and `nats bench`). A progress line every second on
//! stderr (rate, p50, p99, errors), then HDR percentiles and the servers' CPU per acknowledged
//! entry when their status is reachable; `-o json` for scripts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use futures::StreamExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::CliError;
use super::client::ClientArgs;
use super::output::Format;
use super::progress::Progress;
use crate::client::{Client, ClientOptions, NewEntry, Producer, ProducerOptions};
use crate::proto::log_service_client::LogServiceClient;
use crate::proto::{self as pb, ReplayRequest, WriteBatchRequest, replay_request::Start};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub action: BenchAction,
}

#[derive(Subcommand, Debug)]
pub enum BenchAction {
    /// Write as fast as the cluster acknowledges: producers (a `Produce` stream each, or unary
    /// calls with --unary), each with a window of requests in flight.
    Produce(ProduceArgs),
    /// Read the log back through one replay stream as fast as it comes.
    Replay(ReplayBenchArgs),
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// Producers, each on its own connection (spread over the endpoints).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub producers: u32,
    /// Requests each producer keeps unacknowledged at most (an idempotent producer keeps at
    /// most 16; with --unary, concurrent calls per producer).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub in_flight: u32,
    /// How long a producer's batch waits for more entries before it is sent.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub linger: Duration,
    /// Entries per request at most (with --unary: entries per WriteBatch call).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
    /// Bytes of data per entry.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Tenants written to, round-robin (bench-0, bench-1, ...).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub tenants: u32,
    /// How long to write (the default when --count is not given).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "count")]
    pub duration: Option<Duration>,
    /// Write this long first without measuring (connections, caches and the log's first
    /// segments warm up); --duration, the rates, latencies and the server CPU count from its
    /// end, errors from the start.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s", conflicts_with = "count")]
    pub warmup: Duration,
    /// Entries to write in all, instead of --duration.
    #[arg(long)]
    pub count: Option<u64>,
    /// Writes carry idempotency keys (producer id, seq), as an idempotent producer's do.
    #[arg(long)]
    pub keys: bool,
    /// Unary `Write`/`WriteBatch` calls instead of `Produce` streams.
    #[arg(long)]
    pub unary: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct ReplayBenchArgs {
    /// First sequence number (default: the log start).
    #[arg(long)]
    pub from: Option<u64>,
    /// Only this tenant's entries.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Entries to read at most (default: up to the end of the log).
    #[arg(long)]
    pub count: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Serialize)]
struct ProduceReport {
    mode: &'static str,
    producers: u32,
    in_flight: u32,
    batch: u32,
    linger_ms: f64,
    /// Writing before the measured window, not counted but in `errors`.
    warmup_ms: f64,
    entry_size: usize,
    keys: bool,
    acked_entries: u64,
    errors: u64,
    /// The first error's message (`code: message` for a gRPC status), if any failed.
    first_error: Option<String>,
    seconds: f64,
    entries_per_sec: f64,
    mib_per_sec: f64,
    latency_ms: Percentiles,
    /// CPU seconds the cluster's members used per acknowledged entry, in µs (if every member
    /// reported its CPU time before and after).
    server_cpu_us_per_entry: Option<f64>,
    /// How many members `server_cpu_us_per_entry` sums (every member of the cluster, whichever
    /// endpoints were given).
    server_cpu_nodes: Option<usize>,
}

#[derive(Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// What the load tasks share: counters and latency histograms (all, and this second's).
struct Stats {
    acked: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    total: Mutex<Histogram<u64>>,
    interval: Mutex<Histogram<u64>>,
    /// Entries handed out so far (with --count) and whether to stop.
    issued: AtomicU64,
    stop: AtomicBool,
}

impl Stats {
    fn new() -> Result<Stats, CliError> {
        let h = || {
            Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .map_err(|e| CliError::failure(format!("histogram: {e}")))
        };
        Ok(Stats {
            acked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            total: Mutex::new(h()?),
            interval: Mutex::new(h()?),
            issued: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }

    /// Counts a failed write (or ack), keeping the first one's message for the report.
    fn fail(&self, error: impl FnOnce() -> String) {
        if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
            *self.first_error.lock() = Some(error());
        }
    }

    /// Forgets the acknowledgements and latencies so far (the warm-up's); errors stay.
    fn restart(&self) {
        self.total.lock().reset();
        self.interval.lock().reset();
        self.acked.store(0, Ordering::Relaxed);
    }

    fn record(&self, latency: Duration, entries: u64) {
        let us = (latency.as_micros() as u64).max(1);
        let _ = self.total.lock().record_n(us, entries);
        let _ = self.interval.lock().record_n(us, entries);
        self.acked.fetch_add(entries, Ordering::Relaxed);
    }

    /// Takes `n` more entries to write, if the run is not over.
    fn take(&self, n: u64, count: Option<u64>) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let before = self.issued.fetch_add(n, Ordering::Relaxed);
        match count {
            Some(c) if before >= c => None,
            Some(c) => Some(n.min(c - before)),
            None => Some(n),
        }
    }
}

pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    let rt = super::serve::runtime()?;
    match &args.action {
        BenchAction::Produce(a) => rt.block_on(produce(a)),
        BenchAction::Replay(a) => rt.block_on(replay(a)),
    }
}

async fn produce(a: &ProduceArgs) -> Result<(), CliError> {
    let client = a.client.client()?;
    let stats = Arc::new(Stats::new()?);
    let mut cpu_before = cluster_cpu(&client).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let endpoints = client.endpoints();
    let tls = a.client.tls()?;
    for p in 0..a.producers {
        // Each producer starts on its own endpoint (rotated) and has its own connection.
        let mut mine = endpoints.clone();
        mine.rotate_left(p as usize % endpoints.len().max(1));
        let stats = stats.clone();
        let load = Load::new(a, p);
        tasks.push(if a.unary {
            tokio::spawn(unary_producer(
                load,
                mine,
                (tls.clone(), a.client.token.clone()),
                a.in_flight,
                a.keys,
                stats,
            ))
        } else {
            let opts = ClientOptions {
                tls: tls.clone(),
                ..a.client.options()?
            };
            let c = Client::new(&mine, opts).map_err(|e| CliError::usage(e.to_string()))?;
            tokio::spawn(stream_producer(
                load,
                c,
                a.in_flight,
                a.linger,
                a.keys,
                stats,
            ))
        });
    }
    let window = match (a.duration, a.count) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    // The bar: seconds of the run (warm-up included), or entries of --count.
    let bar = Progress::new(Some(match (window, a.count) {
        (Some(d), _) => (a.warmup + d).as_secs(),
        (None, count) => count.unwrap_or(0),
    }));
    let by_count = window.is_none();
    let mut measured = started;
    if !a.warmup.is_zero() {
        let end = started + a.warmup;
        progress(
            &stats,
            started,
            Some(end),
            &tasks,
            &bar,
            by_count,
            " (warm-up)",
        )
        .await;
        // The CPU first: what the warm-up's last writes cost while it is read is counted,
        // and those writes are not (the figure errs high, not low).
        cpu_before = cluster_cpu(&client).await;
        stats.restart();
        measured = Instant::now();
    }
    let deadline = window.map(|d| measured + d);
    progress(&stats, started, deadline, &tasks, &bar, by_count, "").await;
    drop(bar);
    stats.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await
            .map_err(|e| CliError::failure(format!("a producer task: {e}")))??;
    }
    let seconds = measured.elapsed().as_secs_f64();
    let cpu_after = cluster_cpu(&client).await;
    let cpu_used = cpu_before
        .zip(cpu_after)
        .and_then(|(b, e)| cpu_between(&b, &e));
    let acked = stats.acked.load(Ordering::Relaxed);
    let report = ProduceReport {
        mode: if a.unary { "unary" } else { "produce" },
        producers: a.producers,
        in_flight: a.in_flight,
        batch: a.batch,
        linger_ms: a.linger.as_secs_f64() * 1000.0,
        warmup_ms: a.warmup.as_secs_f64() * 1000.0,
        entry_size: a.size,
        keys: a.keys,
        acked_entries: acked,
        errors: stats.errors.load(Ordering::Relaxed),
        first_error: stats.first_error.lock().clone(),
        seconds,
        entries_per_sec: acked as f64 / seconds,
        mib_per_sec: (acked * a.size as u64) as f64 / seconds / (1 << 20) as f64,
        latency_ms: Percentiles::of(&stats.total.lock()),
        server_cpu_us_per_entry: cpu_used
            .filter(|_| acked > 0)
            .map(|(used, _)| used * 1e6 / acked as f64),
        server_cpu_nodes: cpu_used.map(|(_, nodes)| nodes),
    };
    print_produce(&report, a.client.format(Format::Table))
}

/// A line a second until the deadline (or every task ended), kept above the bar on a terminal.
async fn progress(
    stats: &Stats,
    started: Instant,
    deadline: Option<Instant>,
    tasks: &[tokio::task::JoinHandle<Result<(), CliError>>],
    bar: &Progress,
    by_count: bool,
    phase: &str,
) {
    let mut last = 0u64;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    loop {
        let until_end = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = tick.tick() => {}
            () = tokio::time::sleep(until_end.unwrap_or(Duration::from_secs(3600))), if until_end.is_some() => return,
        }
        let acked = stats.acked.load(Ordering::Relaxed);
        let (p50, p99) = {
            let mut h = stats.interval.lock();
            let r = (h.value_at_quantile(0.5), h.value_at_quantile(0.99));
            h.reset();
            r
        };
        let errors = stats.errors.load(Ordering::Relaxed);
        let (elapsed, rate) = (started.elapsed().as_secs(), acked - last);
        let (p50, p99) = (p50 as f64 / 1000.0, p99 as f64 / 1000.0);
        bar.line(&format!(
            "{elapsed:>4}s  {rate:>10} entries/s  p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  errors {errors}{phase}"
        ));
        if bar.on_terminal() {
            bar.update(
                if by_count { acked } else { elapsed },
                &format!("{acked} acknowledged, {errors} errors"),
            );
        }
        last = acked;
        if tasks.iter().all(|t| t.is_finished()) {
            return;
        }
    }
}

/// What one producer writes: its tenants and entry data.
#[derive(Clone)]
struct Load {
    tenants: Vec<String>,
    data: Vec<u8>,
    batch: u64,
    count: Option<u64>,
    next: usize,
}

impl Load {
    fn new(a: &ProduceArgs, producer: u32) -> Load {
        Load {
            tenants: (0..a.tenants).map(|t| format!("bench-{t}")).collect(),
            data: (0..a.size).map(|i| b'a' + (i % 26) as u8).collect(),
            batch: u64::from(a.batch),
            count: a.count,
            next: producer as usize,
        }
    }

    fn entry(&mut self) -> NewEntry {
        let tenant = self.tenants[self.next % self.tenants.len()].clone();
        self.next += 1;
        NewEntry {
            tenant,
            operation: pb::Operation::Insert,
            data: self.data.clone(),
        }
    }
}

/// A `Produce` stream: entries sent one by one (the producer batches them), `in_flight`
/// requests in flight.
async fn stream_producer(
    mut load: Load,
    client: Client,
    in_flight: u32,
    linger: Duration,
    keys: bool,
    stats: Arc<Stats>,
) -> Result<(), CliError> {
    let batch = load.batch as usize;
    let producer = Producer::new(
        &client,
        ProducerOptions {
            linger,
            batch_max_entries: batch,
            max_in_flight: in_flight as usize,
            // A short buffer: latency is the pipeline's, not a queue's.
            buffer_max_entries: batch * in_flight as usize,
            idempotent: keys,
            ..ProducerOptions::default()
        },
    );
    let (acks_tx, mut acks_rx) = tokio::sync::mpsc::channel(batch * in_flight as usize + 1);
    let recorder = {
        let stats = stats.clone();
        tokio::spawn(async move {
            while let Some((sent, ack)) = acks_rx.recv().await {
                let ack: crate::client::AckFuture = ack;
                let sent: Instant = sent;
                match ack.await {
                    Ok(_) => stats.record(sent.elapsed(), 1),
                    Err(e) => stats.fail(|| e.to_string()),
                }
            }
        })
    };
    while stats.take(1, load.count).is_some() {
        let sent = Instant::now();
        let ack = producer.send(load.entry()).await?;
        if acks_tx.send((sent, ack)).await.is_err() {
            break;
        }
    }
    drop(acks_tx);
    producer.close().await?;
    recorder
        .await
        .map_err(|e| CliError::failure(format!("the ack recorder: {e}")))
}

/// Unary calls: `in_flight` concurrent callers on one connection, each one call at a time.
async fn unary_producer(
    load: Load,
    endpoints: Vec<String>,
    (tls, token): (Option<tonic::transport::ClientTlsConfig>, Option<String>),
    in_flight: u32,
    keys: bool,
    stats: Arc<Stats>,
) -> Result<(), CliError> {
    let creds = crate::client::Credentials::bearer(token.as_deref())?;
    let first = endpoints
        .first()
        .ok_or_else(|| CliError::usage("no endpoint"))?;
    let url = if first.starts_with("http") {
        first.clone()
    } else if tls.is_some() {
        format!("https://{first}")
    } else {
        format!("http://{first}")
    };
    let mut endpoint = Endpoint::from_shared(url)
        .map_err(|e| CliError::usage(format!("endpoint {first}: {e}")))?;
    if let Some(t) = tls {
        endpoint = endpoint
            .tls_config(t)
            .map_err(|e| CliError::usage(format!("endpoint {first}: {e}")))?;
    }
    let channel: Channel = endpoint.tcp_nodelay(true).connect_lazy();
    let mut callers = Vec::new();
    for c in 0..in_flight {
        let mut load = load.clone();
        load.next += c as usize;
        let stats = stats.clone();
        let mut log = LogServiceClient::with_interceptor(channel.clone(), creds.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        callers.push(tokio::spawn(async move {
            let producer_id = keys.then(crate::client::random_producer_id);
            let mut seq = 0u64;
            while let Some(n) = stats.take(load.batch, load.count) {
                let entries = (0..n)
                    .map(|_| {
                        let e = load.entry();
                        pb::EntryInput {
                            tenant: e.tenant,
                            operation: e.operation as i32,
                            data: e.data,
                        }
                    })
                    .collect();
                seq += 1;
                let req = WriteBatchRequest {
                    entries,
                    producer_id,
                    producer_seq: producer_id.map(|_| seq),
                };
                let sent = Instant::now();
                loop {
                    match log.write_batch(req.clone()).await {
                        Ok(_) => {
                            stats.record(sent.elapsed(), n);
                            break;
                        }
                        Err(s) => {
                            stats.fail(|| format!("{:?}: {}", s.code(), s.message()));
                            if stats.stop.load(Ordering::Relaxed) {
                                return;
                            }
                            // Refused (a leader change): try again shortly; unkeyed retries
                            // may write twice, as any unkeyed client's would.
                            tracing::debug!(error = %s.message(), "bench write failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
        }));
    }
    for c in callers {
        c.await
            .map_err(|e| CliError::failure(format!("a caller task: {e}")))?;
    }
    Ok(())
}

/// Each member's CPU seconds, from the cluster's status (every member, not only the endpoints
/// given), if every member reported it (an admin sees it; a member that cannot be asked has 0).
async fn cluster_cpu(client: &Client) -> Option<BTreeMap<u64, f64>> {
    let s = client.cluster_status().await.ok()?;
    let cpu = s
        .members
        .iter()
        .map(|m| (m.cpu_seconds > 0.0).then_some((m.id, m.cpu_seconds)))
        .collect::<Option<BTreeMap<_, _>>>()?;
    (!cpu.is_empty()).then_some(cpu)
}

/// CPU seconds the members used between two readings, and how many members: `None` unless the
/// same members reported both times, none of them restarted (its CPU time went back).
fn cpu_between(before: &BTreeMap<u64, f64>, after: &BTreeMap<u64, f64>) -> Option<(f64, usize)> {
    if before.len() != after.len() {
        return None;
    }
    let mut used = 0.0;
    for (id, b) in before {
        let e = after.get(id)?;
        if e < b {
            return None;
        }
        used += e - b;
    }
    Some((used, before.len()))
}

fn print_produce(r: &ProduceReport, format: Format) -> Result<(), CliError> {
    match format {
        Format::Json => super::client::print_json(r),
        Format::Table => {
            let l = &r.latency_ms;
            println!(
                "{} x {} producers, in flight {}, batch {}, linger {} ms, {} B entries{}{}",
                r.mode,
                r.producers,
                r.in_flight,
                r.batch,
                r.linger_ms,
                r.entry_size,
                if r.keys { ", idempotency keys" } else { "" },
                if r.warmup_ms > 0.0 {
                    format!(", measured after {} s of warm-up", r.warmup_ms / 1000.0)
                } else {
                    String::new()
                }
            );
            println!(
                "acknowledged {} entries in {:.2} s: {:.0} entries/s, {:.2} MiB/s, {} errors",
                r.acked_entries, r.seconds, r.entries_per_sec, r.mib_per_sec, r.errors
            );
            if let Some(e) = &r.first_error {
                println!("first error: {e}");
            }
            println!(
                "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                l.p50, l.p90, l.p99, l.p999, l.max
            );
            match r.server_cpu_us_per_entry {
                Some(cpu) => println!(
                    "server CPU: {cpu:.1} µs per acknowledged entry (all {} members)",
                    r.server_cpu_nodes.unwrap_or(0)
                ),
                None => println!(
                    "server CPU: unknown (not every member reported its CPU time: it needs the admin role and every member reachable)"
                ),
            }
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct ReplayReport {
    entries: u64,
    bytes: u64,
    seconds: f64,
    entries_per_sec: f64,
    mib_per_sec: f64,
}

async fn replay(a: &ReplayBenchArgs) -> Result<(), CliError> {
    let client = a.client.client()?;
    let req = ReplayRequest {
        start: a.from.map(Start::FromSequence),
        tenant: a.tenant.clone(),
        follow: false,
        min_sequence: 0,
        limit: a.count.unwrap_or(0),
        ..ReplayRequest::default()
    };
    let started = Instant::now();
    let mut stream = client.replay(req).await?;
    // The bar: entries of --count, else a spinner.
    let bar = Progress::new(a.count);
    let (mut entries, mut bytes, mut last, mut at) = (0u64, 0u64, 0u64, Instant::now());
    while let Some(e) = stream.next().await {
        let e = e?;
        entries += 1;
        bytes += e.data.len() as u64;
        if at.elapsed() >= Duration::from_secs(1) {
            let rate = entries - last;
            bar.line(&format!(
                "{:>4}s  {rate:>10} entries/s",
                started.elapsed().as_secs()
            ));
            if bar.on_terminal() {
                bar.update(entries, &format!("{entries} entries"));
            }
            (last, at) = (entries, Instant::now());
        }
    }
    drop(bar);
    let seconds = started.elapsed().as_secs_f64();
    let r = ReplayReport {
        entries,
        bytes,
        seconds,
        entries_per_sec: entries as f64 / seconds,
        mib_per_sec: bytes as f64 / seconds / (1 << 20) as f64,
    };
    match a.client.format(Format::Table) {
        Format::Json => super::client::print_json(&r),
        Format::Table => {
            println!(
                "replayed {} entries ({:.1} MiB) in {:.2} s: {:.0} entries/s, {:.1} MiB/s",
                r.entries,
                r.bytes as f64 / (1 << 20) as f64,
                r.seconds,
                r.entries_per_sec,
                r.mib_per_sec
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_between_sums_every_member_and_refuses_a_changed_or_restarted_one() {
        let at = |v: &[(u64, f64)]| v.iter().copied().collect::<BTreeMap<_, _>>();
        let before = at(&[(1, 10.0), (2, 4.0), (3, 5.0)]);
        assert_eq!(
            cpu_between(&before, &at(&[(1, 12.0), (2, 5.0), (3, 5.5)])),
            Some((3.5, 3))
        );
        // A member restarted: its CPU time went back.
        assert_eq!(
            cpu_between(&before, &at(&[(1, 12.0), (2, 1.0), (3, 5.5)])),
            None
        );
        // A member left, or another joined.
        assert_eq!(cpu_between(&before, &at(&[(1, 12.0), (2, 5.0)])), None);
        assert_eq!(
            cpu_between(&before, &at(&[(1, 12.0), (2, 5.0), (4, 1.0)])),
            None
        );
    }
}
