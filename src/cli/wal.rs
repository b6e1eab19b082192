//! `replog wal ...`: offline tools over a local WAL directory, for operators and for us (like
//! kafka-dump-log or etcd-dump-logs). Flags mirror the `wal:` config keys.

use std::io::{self, BufRead, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use clap::{Args, Subcommand};

use super::output::{self, Format};
use super::{CliError, bench};
use crate::fs::StdFs;
use crate::wal::debug::{SegmentHealth, verify};
use crate::wal::{
    Compression, EntryRef, FrameSpec, Manager, Operation, Record, SyncPolicy, WalConfig, WalError,
};

#[derive(Args, Debug)]
pub struct WalCommand {
    #[command(subcommand)]
    pub action: WalAction,
}

/// Parses a size flag (see [`crate::wal::config::parse_size`]).
pub fn parse_size_arg(s: &str) -> Result<ByteSize, String> {
    crate::wal::config::parse_size(s)
}

/// The WAL directory and the `wal:` config keys, as flags.
#[derive(Args, Debug, Clone)]
pub struct WalOpts {
    /// The WAL directory.
    #[arg(long, default_value = "./replog-data/wal")]
    pub dir: PathBuf,
    /// Size at which segments roll: 64MiB (binary, 1024^2) or 64MB (decimal, 1000^2). Default 64MiB.
    #[arg(long, value_parser = parse_size_arg)]
    pub segment_size: Option<ByteSize>,
    /// When a write counts as done. Default immediate (fsync'd).
    #[arg(long, value_enum)]
    pub sync_policy: Option<SyncPolicy>,
    /// fsync interval under `--sync-policy periodic`, e.g. 100ms. Default 100ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub sync_interval: Option<Duration>,
    /// Per-frame compression. Default none.
    #[arg(long, value_enum)]
    pub compression: Option<Compression>,
    /// zstd level, 1-22. Default 3.
    #[arg(long)]
    pub compression_level: Option<i32>,
    /// Delete sealed segments whose newest entry is older than this. Default: keep everything.
    #[arg(long)]
    pub retention_hours: Option<u64>,
}

impl WalOpts {
    pub fn config(&self) -> WalConfig {
        let mut c = WalConfig::new(&self.dir);
        if let Some(v) = self.segment_size {
            c.segment_size = v;
        }
        if let Some(v) = self.sync_policy {
            c.sync_policy = v;
        }
        if let Some(v) = self.sync_interval {
            c.sync_interval = v;
        }
        if let Some(v) = self.compression {
            c.compression = v;
        }
        if let Some(v) = self.compression_level {
            c.compression_level = v;
        }
        c.retention_hours = self.retention_hours;
        c
    }

    /// Opens an existing WAL; read commands never create one by accident.
    fn open_existing(&self) -> Result<Manager, CliError> {
        if !self.dir.is_dir() {
            return Err(CliError::failure(format!(
                "no WAL directory at {}",
                self.dir.display()
            )));
        }
        Ok(Manager::open(self.config())?)
    }
}

#[derive(Subcommand, Debug)]
pub enum WalAction {
    /// Append one entry per stdin line; print each entry's sequence number once it is durable.
    Append {
        #[command(flatten)]
        wal: WalOpts,
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "insert")]
        op: Operation,
        /// Lines submitted but not yet durable, at most (more are read once some are).
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65536))]
        max_in_flight: u32,
    },
    /// Print entries in sequence order.
    Replay {
        #[command(flatten)]
        wal: WalOpts,
        /// First sequence number; 0 or omitted: the log start.
        #[arg(long, conflicts_with = "checkpoint")]
        from: Option<u64>,
        /// Start after this named checkpoint.
        #[arg(long)]
        checkpoint: Option<String>,
        /// Only this tenant's entries.
        #[arg(long)]
        tenant: Option<String>,
        /// Stop after this many entries.
        #[arg(long)]
        limit: Option<u64>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// List the segment files.
    Segments {
        #[command(flatten)]
        wal: WalOpts,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Check every frame and entry checksum; exit 1 if anything is corrupted. Read-only.
    Verify {
        #[command(flatten)]
        wal: WalOpts,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Make everything durable and record the last sequence number under a name; print it.
    Checkpoint {
        #[command(flatten)]
        wal: WalOpts,
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// Drop every entry before sequence number N.
    Truncate {
        #[command(flatten)]
        wal: WalOpts,
        #[arg(long)]
        before: u64,
    },
    /// End-to-end demo: concurrent writers, reopen, replay with checksum verification.
    Demo {
        #[command(flatten)]
        wal: WalOpts,
        #[arg(long, default_value_t = 200_000)]
        entries: u64,
        #[arg(long, default_value_t = 16)]
        writers: u32,
    },
    /// Measure append throughput and latency (in a fresh directory under --dir, deleted after).
    Bench(bench::BenchArgs),
}

pub fn run(cmd: WalCommand) -> Result<(), CliError> {
    match cmd.action {
        WalAction::Append {
            wal,
            tenant,
            op,
            max_in_flight,
        } => append(&wal, tenant, op, max_in_flight as usize),
        WalAction::Replay {
            wal,
            from,
            checkpoint,
            tenant,
            limit,
            output,
        } => replay(
            &wal,
            from,
            checkpoint.as_deref(),
            tenant.as_deref(),
            limit,
            output,
        ),
        WalAction::Segments { wal, output } => {
            let segments = wal.open_existing()?.segments();
            ok_or_pipe(output::write_segments(
                &mut io::stdout().lock(),
                output,
                &segments,
            ))
        }
        WalAction::Verify { wal, output } => verify_dir(&wal, output),
        WalAction::Checkpoint { wal, name } => {
            let seq = wal.open_existing()?.checkpoint(&name)?;
            println!("{seq}");
            Ok(())
        }
        WalAction::Truncate { wal, before } => {
            let start = wal.open_existing()?.truncate_before(before)?;
            println!(
                "log start is now sequence {} (log index {})",
                start.seq, start.index
            );
            Ok(())
        }
        WalAction::Demo {
            wal,
            entries,
            writers,
        } => demo(&wal, entries, writers),
        WalAction::Bench(args) => bench::run(&args),
    }
}

/// A closed stdout (`| head`) ends the command quietly.
fn ok_or_pipe(r: io::Result<()>) -> Result<(), CliError> {
    match r {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// A counting window: at most `limit` appends in flight.
struct Window {
    in_flight: Mutex<usize>,
    changed: Condvar,
    limit: usize,
}

impl Window {
    fn acquire(&self) {
        let mut n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= self.limit {
            n = self.changed.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
    }

    fn release(&self) {
        *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.changed.notify_all();
    }

    fn drain(&self) {
        let mut n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            n = self.changed.wait(n).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Reads one line of at most `max` bytes (without its `\n` or `\r\n`); `None` at end of input.
fn read_line(input: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<()>> {
    buf.clear();
    let mut limited = io::Read::take(&mut *input, max as u64 + 2);
    let n = limited.read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a line is longer than the limit of {max} bytes (max_frame_bytes)"),
        ));
    }
    Ok(Some(()))
}

fn append(
    opts: &WalOpts,
    tenant: String,
    op: Operation,
    max_in_flight: usize,
) -> Result<(), CliError> {
    let wal = Manager::open(opts.config())?;
    let max_line = wal.config().max_frame_bytes.as_u64() as usize;
    let window = Arc::new(Window {
        in_flight: Mutex::new(0),
        changed: Condvar::new(),
        limit: max_in_flight,
    });
    let failed = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = mpsc::channel::<Result<u64, WalError>>();
    // Prints sequence numbers as appends become durable: they complete in submission order.
    let printer = {
        let (window, failed) = (window.clone(), failed.clone());
        std::thread::spawn(move || -> Result<(), CliError> {
            let mut out = io::stdout().lock();
            let mut first_error = None;
            for r in done_rx {
                match r {
                    Ok(seq) if first_error.is_none() => {
                        if writeln!(out, "{seq}").and_then(|()| out.flush()).is_err() {
                            failed.store(true, Ordering::SeqCst);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        failed.store(true, Ordering::SeqCst);
                        first_error.get_or_insert(e);
                    }
                }
                window.release();
            }
            first_error.map_or(Ok(()), |e| Err(e.into()))
        })
    };
    let mut input = io::stdin().lock();
    let mut line = Vec::new();
    let mut read_error = None;
    while !failed.load(Ordering::SeqCst) {
        match read_line(&mut input, &mut line, max_line) {
            Ok(Some(())) => {}
            Ok(None) => break,
            Err(e) => {
                read_error = Some(CliError::failure(format!("reading stdin: {e}")));
                break;
            }
        }
        window.acquire();
        let record = Record::new(tenant.clone(), op, std::mem::take(&mut line));
        let tx = done_tx.clone();
        let done = Box::new(move |r: crate::wal::Result<crate::wal::Appended>| {
            let _ = tx.send(r.map(|a| a.first_seq));
        });
        if let Err(e) = wal.append_with(vec![FrameSpec::records(vec![record])], None, done) {
            window.release();
            read_error = Some(e.into());
            break;
        }
    }
    window.drain();
    drop(done_tx);
    let printed = printer
        .join()
        .map_err(|_| CliError::failure("the output thread panicked"))?;
    wal.close()?;
    printed?;
    read_error.map_or(Ok(()), Err)
}

fn replay(
    opts: &WalOpts,
    from: Option<u64>,
    checkpoint: Option<&str>,
    tenant: Option<&str>,
    limit: Option<u64>,
    format: Format,
) -> Result<(), CliError> {
    let wal = opts.open_existing()?;
    let from = match (from, checkpoint) {
        (Some(0), _) | (None, None) => wal.log_start().seq,
        (Some(n), _) => n,
        (None, Some(name)) => {
            wal.checkpoint_seq(name)
                .ok_or_else(|| WalError::CheckpointNotFound(name.into()))?
                + 1
        }
    };
    let log_start = wal.log_start().seq;
    if from < log_start {
        return Err(WalError::BeforeLogStart {
            requested: from,
            log_start,
        }
        .into());
    }
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut result = output::write_entry_header(&mut out, format);
    let mut printed = 0u64;
    let mut bad_checksum = None;
    if limit != Some(0) && result.is_ok() {
        let handler = |e: EntryRef<'_>| {
            if !e.checksum_ok() {
                bad_checksum = Some(e.sequence_number);
                return ControlFlow::Break(());
            }
            result = output::write_entry(&mut out, format, &e);
            printed += 1;
            if result.is_err() || limit == Some(printed) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        // One tenant is read through the tenant index, without the others' records.
        match tenant {
            Some(t) => wal.replay_tenant(from, t, handler)?,
            None => wal.replay(from, handler)?,
        };
    }
    ok_or_pipe(result.and_then(|()| out.flush()))?;
    if let Some(seq) = bad_checksum {
        return Err(CliError::failure(format!(
            "entry {seq} fails its checksum: the log is corrupted"
        )));
    }
    Ok(())
}

fn verify_dir(opts: &WalOpts, format: Format) -> Result<(), CliError> {
    if !opts.dir.is_dir() {
        return Err(CliError::failure(format!(
            "no WAL directory at {}",
            opts.dir.display()
        )));
    }
    let reports = verify(&StdFs, &opts.config())?;
    let mut out = io::stdout().lock();
    if format == Format::Json {
        ok_or_pipe(
            serde_json::to_writer_pretty(&mut out, &reports)
                .map_err(io::Error::from)
                .and_then(|()| writeln!(out)),
        )?;
    } else {
        for r in &reports {
            let name = r.path.file_name().map_or_else(
                || r.path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let health = match &r.health {
                SegmentHealth::Ok => "ok".to_string(),
                SegmentHealth::TornTail { offset } => format!(
                    "torn tail at offset {offset} (unacknowledged; cut when the WAL is opened)"
                ),
                SegmentHealth::Corrupted { offset, reason } => {
                    format!("CORRUPTED at offset {offset}: {reason}")
                }
            };
            ok_or_pipe(writeln!(
                out,
                "{name}  {health}  frames={} records={} bytes={}",
                r.frames, r.records, r.bytes
            ))?;
        }
    }
    let corrupted = reports.iter().filter(|r| r.is_corrupted()).count();
    if corrupted > 0 {
        return Err(CliError::failure(format!(
            "{corrupted} of {} segments are corrupted",
            reports.len()
        )));
    }
    Ok(())
}

fn demo(opts: &WalOpts, entries: u64, writers: u32) -> Result<(), CliError> {
    if writers == 0 {
        return Err(CliError::usage("--writers must be at least 1"));
    }
    let cfg = opts.config();
    println!(
        "replog WAL demo in {} (sync_policy {:?})",
        cfg.directory.display(),
        cfg.sync_policy
    );
    let wal = Arc::new(Manager::open(cfg.clone())?);
    let first = wal.next_seq();
    let started = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let wal = wal.clone();
            let n = entries / u64::from(writers) + u64::from(u64::from(w) < entries % u64::from(writers));
            std::thread::spawn(move || -> crate::wal::Result<()> {
                for i in 0..n {
                    let data = format!("{{\"writer\":{w},\"i\":{i:>8},\"note\":\"a 100-byte demo entry, padded to size....\"}}");
                    wal.write(Record::new(format!("tenant-{}", w % 4), Operation::Insert, data.into_bytes()))?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| CliError::failure("a writer panicked"))??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "wrote {entries} entries with {writers} concurrent writers in {secs:.2}s: {:.0} durable entries/s",
        entries as f64 / secs
    );
    let wal = Arc::try_unwrap(wal).map_err(|_| CliError::failure("writers still hold the WAL"))?;
    wal.close()?;
    let started = Instant::now();
    let wal = Manager::open(cfg)?;
    println!(
        "reopened in {:.1}ms: {} segments, next sequence number {}",
        started.elapsed().as_secs_f64() * 1e3,
        wal.segments().len(),
        wal.next_seq()
    );
    let started = Instant::now();
    let (mut seen, mut bad) = (0u64, 0u64);
    wal.replay(first, |e| {
        seen += 1;
        bad += u64::from(!e.checksum_ok());
        ControlFlow::Continue(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "replayed {seen} entries in {:.1}ms ({:.0}/s), {bad} checksum failures",
        secs * 1e3,
        seen as f64 / secs
    );
    if bad > 0 || seen != entries {
        return Err(CliError::failure(format!(
            "expected {entries} intact entries, found {seen} with {bad} bad"
        )));
    }
    println!(
        "ok. Inspect it with: replog wal segments --dir {0}   and   replog wal replay --dir {0} --limit 5",
        opts.dir.display()
    );
    Ok(())
}
