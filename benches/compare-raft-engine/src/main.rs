//! replog's WAL and raft-engine 0.4.2 under one harness, on the same disk. See README.md.
//!
//! Cases, each with 100-byte entries and an fsync before every acknowledgement:
//! - `single`: 1 writer, 1 entry per write, waiting for its durable ack;
//! - `concurrent`: 64 writers, 1 entry per write, each waiting for its own ack;
//! - `batch`: 1 writer, 1,000 entries per write;
//! - `replay`: reading back everything that the `batch` run wrote.
//!
//! Every run gets a fresh directory (deleted after). Each case is repeated, alternating the
//! engines; one line per run, then the medians.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use raft_engine::{Config, Engine, LogBatch, MessageExt};
use raft_proto::eraftpb::Entry;
use replog::wal::{Manager, Operation, Preallocate, Record, SyncPolicy, WalConfig};

const ENTRY_BYTES: usize = 100;
const BATCH: usize = 1000;
/// Entries per `fetch_entries_to` call when raft-engine reads back.
const FETCH_CHUNK: u64 = 64 * 1024;

/// The entries' payloads: entry `i` carries `self.0[i % len]`.
struct Payloads(Vec<Vec<u8>>);

impl Payloads {
    /// `b'x'` repeated, or 4096 distinct pseudo-random payloads (so that a batch of 1,000 does
    /// not compress).
    fn new(random: bool) -> Self {
        if !random {
            return Payloads(vec![vec![b'x'; ENTRY_BYTES]]);
        }
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        };
        Payloads(
            (0..4096)
                .map(|_| (0..ENTRY_BYTES).map(|_| next()).collect())
                .collect(),
        )
    }

    fn get(&self, i: u64) -> &[u8] {
        &self.0[i as usize % self.0.len()]
    }
}

/// An engine under test. Writer `w` appends to its own stream (raft-engine: region `w + 1`;
/// replog: the one shared log) and numbers its entries from 1.
trait Log: Send + Sync + Sized + 'static {
    const NAME: &'static str;
    fn open(dir: &Path, opts: &Opts) -> Self;
    /// Appends entries `first..first + n` of stream `w` as one write; returns once durable.
    fn append(&self, w: u64, first: u64, n: usize, p: &Payloads);
    /// Reads back every entry of stream `w`; returns how many there were.
    fn read_all(&self, w: u64) -> u64;
}

impl Log for Manager {
    const NAME: &'static str = "replog";

    fn open(dir: &Path, opts: &Opts) -> Self {
        let mut cfg = WalConfig::new(dir);
        cfg.sync_policy = SyncPolicy::Immediate;
        if let Some(p) = opts.replog_preallocate {
            cfg.preallocate = p;
        }
        Manager::open(cfg).expect("open replog WAL")
    }

    fn append(&self, _w: u64, first: u64, n: usize, p: &Payloads) {
        // `Manager::write(r)` is `write_batch(vec![r])`: one call covers both shapes.
        let records = (first..first + n as u64)
            .map(|i| Record::new("tenant-1", Operation::Insert, p.get(i)))
            .collect();
        self.write_batch(records).expect("replog write");
    }

    fn read_all(&self, _w: u64) -> u64 {
        let mut bytes = 0;
        let n = self
            .replay(1, |e| {
                bytes += e.data.len();
                ControlFlow::Continue(())
            })
            .expect("replog replay");
        assert_eq!(bytes as u64, n * ENTRY_BYTES as u64);
        n
    }
}

struct RaftEngine(Engine);

struct Ext;

impl MessageExt for Ext {
    type Entry = Entry;

    fn index(e: &Entry) -> u64 {
        e.index
    }
}

impl Log for RaftEngine {
    const NAME: &'static str = "raft-engine";

    fn open(dir: &Path, _opts: &Opts) -> Self {
        let cfg = Config {
            dir: dir.to_str().expect("UTF-8 path").to_owned(),
            ..Config::default()
        };
        RaftEngine(Engine::open(cfg).expect("open raft-engine"))
    }

    fn append(&self, w: u64, first: u64, n: usize, p: &Payloads) {
        let entries: Vec<Entry> = (first..first + n as u64)
            .map(|i| Entry {
                index: i,
                term: 1,
                data: p.get(i).to_vec().into(),
                ..Default::default()
            })
            .collect();
        let mut batch = LogBatch::with_capacity(1);
        batch
            .add_entries::<Ext>(w + 1, &entries)
            .expect("add_entries");
        self.0.write(&mut batch, true).expect("raft-engine write");
    }

    fn read_all(&self, w: u64) -> u64 {
        let region = w + 1;
        let (Some(first), Some(last)) = (self.0.first_index(region), self.0.last_index(region))
        else {
            return 0;
        };
        let (mut next, mut bytes, mut buf) = (first, 0, Vec::new());
        while next <= last {
            let end = (next + FETCH_CHUNK).min(last + 1);
            buf.clear();
            self.0
                .fetch_entries_to::<Ext>(region, next, end, None, &mut buf)
                .expect("fetch_entries_to");
            bytes += buf.iter().map(|e| e.data.len()).sum::<usize>();
            next = end;
        }
        let n = last + 1 - first;
        assert_eq!(bytes as u64, n * ENTRY_BYTES as u64);
        n
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Case {
    Single,
    Concurrent,
    Batch,
}

impl Case {
    /// (writer threads, entries per write)
    fn shape(self) -> (u64, usize) {
        match self {
            Case::Single => (1, 1),
            Case::Concurrent => (64, 1),
            Case::Batch => (1, BATCH),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Case::Single => "single 1w x1",
            Case::Concurrent => "concurrent 64w x1",
            Case::Batch => "batch 1w x1000",
        }
    }
}

const REPLAY: &str = "replay of batch";

/// One run's figures; latencies in µs (per write), `None` where not measured.
struct Row {
    case: &'static str,
    engine: &'static str,
    rate: f64,
    p50: Option<f64>,
    p99: Option<f64>,
}

impl Row {
    fn print(&self, label: &str) {
        let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} us"));
        println!(
            "{:<18} {:<12} {:<10} {:>13.0} entries/s  p50 {:>9}  p99 {:>9}",
            self.case,
            self.engine,
            label,
            self.rate,
            us(self.p50),
            us(self.p99)
        );
    }
}

/// `writers` threads append `per_write` entries per write to their own streams for `secs`.
/// Returns entries/s over the wall time and the latency histogram of the writes (ns).
fn write_for<L: Log>(log: &Arc<L>, case: Case, opts: &Opts) -> (f64, Histogram<u64>) {
    let (writers, per_write) = case.shape();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(writers as usize + 1));
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (log, payloads) = (log.clone(), opts.payloads.clone());
            let (stop, start) = (stop.clone(), start.clone());
            std::thread::spawn(move || {
                let mut hist = Histogram::<u64>::new(3).expect("histogram");
                let mut next = 1;
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    log.append(w, next, per_write, &payloads);
                    hist.record(t.elapsed().as_nanos() as u64)
                        .expect("record latency");
                    next += per_write as u64;
                }
                (next - 1, hist)
            })
        })
        .collect();
    start.wait();
    let t = Instant::now();
    std::thread::sleep(opts.duration);
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let mut entries = 0;
    for h in handles {
        let (n, h) = h.join().expect("writer thread");
        entries += n;
        hist.add(h).expect("merge histograms");
    }
    (entries as f64 / t.elapsed().as_secs_f64(), hist)
}

/// One run of `case` on a fresh directory; `batch` runs are followed by their replay.
fn run<L: Log>(case: Case, rep: usize, opts: &Opts, rows: &mut Vec<Row>) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("compare-{}-", L::NAME))
        .tempdir_in(&opts.dir)
        .expect("run directory");
    let log = Arc::new(L::open(dir.path(), opts));
    let label = format!("run {rep}/{}", opts.reps);
    let (rate, hist) = write_for(&log, case, opts);
    let us = |q| Some(hist.value_at_quantile(q) as f64 / 1e3);
    let mut out = vec![Row {
        case: case.name(),
        engine: L::NAME,
        rate,
        p50: us(0.5),
        p99: us(0.99),
    }];
    if case == Case::Batch {
        let t = Instant::now();
        let n = log.read_all(0);
        let rate = n as f64 / t.elapsed().as_secs_f64();
        out.push(Row {
            case: REPLAY,
            engine: L::NAME,
            rate,
            p50: None,
            p99: None,
        });
    }
    drop(log); // closes the engine before its directory goes
    for row in out {
        row.print(&label);
        rows.push(row);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

struct Opts {
    duration: Duration,
    reps: usize,
    dir: PathBuf,
    random: bool,
    payloads: Arc<Payloads>,
    replog_preallocate: Option<Preallocate>,
}

const USAGE: &str = "usage: compare-raft-engine [--secs N] [--reps N] [--dir PATH] \
[--payload x|random] [--replog-preallocate zero|fallocate|none]";

fn fail(msg: &str) -> ! {
    eprintln!("{msg}\n{USAGE}");
    std::process::exit(2)
}

fn bad<T>(flag: &str, value: &str) -> T {
    fail(&format!("bad value for {flag}: {value}"))
}

fn parse_args() -> Opts {
    let (mut secs, mut reps, mut dir) = (4.0, 3, PathBuf::from("/work/benchtmp"));
    let (mut random, mut replog_preallocate) = (false, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args
            .next()
            .unwrap_or_else(|| fail(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--secs" => {
                secs = value
                    .parse()
                    .ok()
                    .filter(|&s: &f64| s > 0.0)
                    .unwrap_or_else(|| bad(&flag, &value))
            }
            "--reps" => {
                reps = value
                    .parse()
                    .ok()
                    .filter(|&r: &usize| r > 0)
                    .unwrap_or_else(|| bad(&flag, &value))
            }
            "--dir" => dir = PathBuf::from(&value),
            "--payload" => match value.as_str() {
                "x" => random = false,
                "random" => random = true,
                _ => bad(&flag, &value),
            },
            "--replog-preallocate" => {
                replog_preallocate = Some(match value.as_str() {
                    "zero" => Preallocate::Zero,
                    "fallocate" => Preallocate::Fallocate,
                    "none" => Preallocate::None,
                    _ => bad(&flag, &value),
                })
            }
            _ => fail(&format!("unknown argument {flag}")),
        }
    }
    Opts {
        duration: Duration::from_secs_f64(secs),
        reps,
        dir,
        random,
        payloads: Arc::new(Payloads::new(random)),
        replog_preallocate,
    }
}

fn main() {
    let opts = parse_args();
    std::fs::create_dir_all(&opts.dir).expect("create --dir");
    println!(
        "# replog WAL vs raft-engine 0.4.2: {ENTRY_BYTES} B entries ({} payload), fsync per \
         acknowledged write, {:?} per run, {} runs per engine, under {}; replog preallocate: {}",
        if opts.random { "random" } else { "b'x'" },
        opts.duration,
        opts.reps,
        opts.dir.display(),
        opts.replog_preallocate
            .map_or("default (zero)".to_owned(), |p| format!("{p:?}")),
    );
    let mut rows = Vec::new();
    for case in [Case::Single, Case::Concurrent, Case::Batch] {
        for rep in 1..=opts.reps {
            run::<Manager>(case, rep, &opts, &mut rows);
            run::<RaftEngine>(case, rep, &opts, &mut rows);
        }
    }
    println!("# medians of {} runs (latency per write)", opts.reps);
    let cases = [Case::Single, Case::Concurrent, Case::Batch].map(Case::name);
    for case in cases.into_iter().chain([REPLAY]) {
        let mut rates = Vec::new();
        for engine in [Manager::NAME, RaftEngine::NAME] {
            let runs: Vec<&Row> = rows
                .iter()
                .filter(|r| r.case == case && r.engine == engine)
                .collect();
            let med = |f: fn(&Row) -> Option<f64>| {
                let v: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
                (!v.is_empty()).then(|| median(v))
            };
            let row = Row {
                case,
                engine,
                rate: median(runs.iter().map(|r| r.rate).collect()),
                p50: med(|r| r.p50),
                p99: med(|r| r.p99),
            };
            row.print("median");
            rates.push(row.rate);
        }
        println!(
            "{case:<18} replog / raft-engine entries/s: {:.2}x",
            rates[0] / rates[1]
        );
    }
}
