//! `replog verify`: a correctness check of a live cluster.
//!
//! Writers (one producer id each) write unique, self-describing entries with idempotency keys,
//! one write at a time, through whatever happens to the cluster meanwhile (leader changes,
//! restarts, partitions: the client retries). Then every member is read on its own, and the
//! acknowledged writes are checked against what each holds: lost, duplicated, reordered (per
//! producer), sequence gaps, unexpected entries, entries found away from the sequence number
//! acknowledged, and divergence between replicas. Exit 0 only when all of those are zero and
//! no writer gave up.
//!
//! Entry data: `replog-verify run=<hex> p=<producer index> s=<producer seq> ` padded with `.`
//! to `--size` bytes, so a reader can tell whose write an entry is without the writer's state.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde::Serialize;

use super::CliError;
use super::client::ClientArgs;
use super::output::Format;
use crate::client::{Client, NewEntry};
use crate::proto::{self as pb, ReplayRequest, replay_request::Start};

/// The prefix of every entry `verify` writes.
const MAGIC: &str = "replog-verify";
/// Entries read from one member at most (memory bound of the check).
const MAX_READ_ENTRIES: usize = 10_000_000;
/// Stalls listed at most in the report (the longest are kept).
const MAX_STALLS_LISTED: usize = 100;
/// Writer errors kept at most in the report.
const MAX_ERRORS_LISTED: usize = 32;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Concurrent writers, each with its own producer id, one write in flight each.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub producers: u32,
    /// How long to write (e.g. 30s, 5m). Default 10s unless --count is given. Ctrl-C stops
    /// writing early and goes on to the check.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "count")]
    pub duration: Option<Duration>,
    /// Writes in all (shared among the producers) instead of a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub count: Option<u64>,
    /// Tenant to write to.
    #[arg(long, default_value = "replog-verify")]
    pub tenant: String,
    /// Bytes of data per entry (at least 64: the entry describes itself in its first bytes).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(64..=1_048_576))]
    pub size: u64,
    /// A gap between two acknowledgements longer than this is listed as a stall.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub stall_threshold: Duration,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What one writer saw.
#[derive(Default)]
struct WriterLog {
    /// Producer seq -> acknowledged sequence number.
    acked: BTreeMap<u64, u64>,
    /// Highest producer seq attempted.
    attempted: u64,
    /// When each acknowledgement arrived (ms since the Unix epoch).
    ack_times_ms: Vec<u64>,
    /// Why it stopped early, if it gave up.
    gave_up: Option<String>,
}

#[derive(Serialize)]
pub struct Stall {
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
    pub ms: u64,
}

#[derive(Serialize, Default)]
pub struct MemberReport {
    pub id: u64,
    pub address: String,
    /// Entries read from the start of the run on.
    pub entries: u64,
    /// Entries of this run among them.
    pub run_entries: u64,
    pub last_sequence: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub sequence_gaps: u64,
    pub unexpected: u64,
    pub misplaced: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, Default)]
pub struct Report {
    pub run_id: String,
    pub tenant: String,
    pub producers: u32,
    pub duration_ms: u64,
    /// Writes attempted (each with its own idempotency key).
    pub attempted: u64,
    pub acknowledged: u64,
    pub writes_per_second: f64,
    /// Acknowledged writes missing from some member.
    pub lost: u64,
    /// Keys found more than once on some member.
    pub duplicated: u64,
    /// A producer's writes out of their producer-sequence order on some member.
    pub reordered: u64,
    /// Missing sequence numbers in what some member holds after the start.
    pub sequence_gaps: u64,
    /// Entries of this run that no writer attempted, or that do not parse.
    pub unexpected: u64,
    /// Acknowledged writes found at another sequence number than the one acknowledged.
    pub misplaced: u64,
    /// Sequence numbers at which two members hold different entries.
    pub divergent: u64,
    /// Entries in which a member's replay of the run's tenant (through its tenant index)
    /// differs from that tenant's entries in its unfiltered replay, up to the last of those.
    pub tenant_read_mismatches: u64,
    /// Members that could not be read.
    pub unreadable_members: u64,
    pub writers_failed: u64,
    pub writer_errors: Vec<String>,
    pub first_sequence: u64,
    pub longest_stall_ms: u64,
    pub stalls: Vec<Stall>,
    pub members: Vec<MemberReport>,
    pub ok: bool,
}

impl Report {
    fn failures(&self) -> u64 {
        self.lost
            + self.duplicated
            + self.reordered
            + self.sequence_gaps
            + self.unexpected
            + self.misplaced
            + self.divergent
            + self.tenant_read_mismatches
            + self.unreadable_members
            + self.writers_failed
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random_run_id() -> u64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => unix_ms() ^ (u64::from(std::process::id()) << 40),
    }
}

/// The data of write `seq` of producer `p` in run `run`, `size` bytes long.
fn entry_data(run: u64, p: u32, seq: u64, size: usize) -> Vec<u8> {
    let mut d = format!("{MAGIC} run={run:016x} p={p} s={seq} ").into_bytes();
    d.resize(size.max(d.len()), b'.');
    d
}

/// `(producer index, producer seq)` of an entry of run `run`; `None` for another run's or
/// another writer's entry; `Some(None)` for an entry of this run that does not parse.
fn parse_entry(run: u64, data: &[u8]) -> Option<Option<(u32, u64)>> {
    let text = std::str::from_utf8(data.get(..80.min(data.len()))?).ok()?;
    let mut words = text.split(' ');
    if words.next()? != MAGIC || words.next()? != format!("run={run:016x}") {
        return None;
    }
    let field = |w: Option<&str>, name: &str| w?.strip_prefix(name)?.parse::<u64>().ok();
    let p = field(words.next(), "p=");
    let s = field(words.next(), "s=");
    Some(
        p.zip(s)
            .and_then(|(p, s)| Some((u32::try_from(p).ok()?, s))),
    )
}

/// The producer id of writer `p` in run `run` (distinct per writer, random per run).
fn producer_id(run: u64, p: u32) -> u64 {
    run.rotate_left(17) ^ u64::from(p)
}

pub async fn verify(a: &VerifyArgs) -> Result<(), CliError> {
    let client = a.client.client()?;
    crate::wire::check_name("tenant", &a.tenant).map_err(|e| CliError::usage(e.to_string()))?;
    let format = a.client.format(Format::Table);
    let run = random_run_id();
    let from = commit_point(&client).await? + 1;
    let started = Instant::now();
    let logs = write_phase(&client, a, run).await;
    let duration = started.elapsed();
    let members = client.cluster_status().await?.members;
    let max_acked = logs
        .iter()
        .flat_map(|l| l.acked.values())
        .copied()
        .max()
        .unwrap_or(0);
    let mut reads = Vec::new();
    for m in &members {
        let req = ReplayRequest {
            start: Some(Start::FromSequence(from)),
            tenant: None,
            follow: false,
            min_sequence: max_acked,
            limit: 0,
            ..ReplayRequest::default()
        };
        let tenant_req = ReplayRequest {
            tenant: Some(a.tenant.clone()),
            ..req.clone()
        };
        let r = client.read_node(&m.address, req, MAX_READ_ENTRIES).await;
        // The same member again, filtered by the run's tenant (its tenant index's path).
        let t = client
            .read_node(&m.address, tenant_req, MAX_READ_ENTRIES)
            .await;
        let r = r.and_then(|all| t.map(|tenant| (all, tenant)));
        reads.push((m.id, m.address.clone(), r.map_err(|e| e.to_string())));
    }
    let report = check(a, run, from, duration, &logs, reads);
    print_report(&report, format)?;
    if report.ok {
        Ok(())
    } else {
        Err(CliError::failure(format!(
            "verify found {} problem(s) (see the report above)",
            report.failures()
        )))
    }
}

/// The highest commit sequence any member reports: every write of this run comes after it.
async fn commit_point(client: &Client) -> Result<u64, CliError> {
    let s = client.cluster_status().await?;
    Ok(s.members
        .iter()
        .map(|m| m.commit_sequence)
        .max()
        .unwrap_or(0))
}

/// Runs the writers until the duration or count is reached; prints progress on stderr.
async fn write_phase(client: &Client, a: &VerifyArgs, run: u64) -> Vec<WriterLog> {
    let deadline = a
        .count
        .is_none()
        .then(|| Instant::now() + a.duration.unwrap_or(Duration::from_secs(10)));
    let budget = Arc::new(std::sync::atomic::AtomicU64::new(
        a.count.unwrap_or(u64::MAX),
    ));
    // Ctrl-C (or SIGTERM) ends the writing early: the writes in flight finish, then the check.
    let stop_writing = {
        let budget = budget.clone();
        tokio::spawn(async move {
            super::serve::shutdown_signal().await;
            eprintln!("verify: stopping the writers, then checking");
            budget.store(0, std::sync::atomic::Ordering::Release);
        })
    };
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..a.producers {
        let (client, budget, acked) = (client.clone(), budget.clone(), acked.clone());
        let (tenant, size) = (a.tenant.clone(), a.size as usize);
        tasks.push(tokio::spawn(async move {
            writer(client, run, p, tenant, size, deadline, budget, acked).await
        }));
    }
    let total = a.duration.unwrap_or(Duration::from_secs(10));
    let progress = tokio::spawn(progress(acked.clone(), deadline.map(|_| total), a.count));
    let mut logs = Vec::new();
    for t in tasks {
        logs.push(t.await.unwrap_or_else(|e| WriterLog {
            gave_up: Some(format!("writer task failed: {e}")),
            ..WriterLog::default()
        }));
    }
    progress.abort();
    stop_writing.abort();
    logs
}

#[allow(clippy::too_many_arguments)]
async fn writer(
    client: Client,
    run: u64,
    p: u32,
    tenant: String,
    size: usize,
    deadline: Option<Instant>,
    budget: Arc<std::sync::atomic::AtomicU64>,
    acked: Arc<std::sync::atomic::AtomicU64>,
) -> WriterLog {
    use std::sync::atomic::Ordering;
    let mut log = WriterLog::default();
    let id = producer_id(run, p);
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return log;
        }
        let took = budget.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1));
        if took.is_err() {
            return log;
        }
        let seq = log.attempted + 1;
        log.attempted = seq;
        let entry = NewEntry {
            tenant: tenant.clone(),
            operation: pb::Operation::Insert,
            data: entry_data(run, p, seq, size),
        };
        match client.write_batch_keyed(vec![entry], id, seq).await {
            Ok(r) => {
                log.acked.insert(seq, r.first_sequence);
                log.ack_times_ms.push(unix_ms());
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                log.gave_up = Some(format!("writer {p} (producer {id}), write {seq}: {e}"));
                return log;
            }
        }
    }
}

/// Progress on stderr: a bar updated every second on a terminal, else a line every 5 s.
async fn progress(
    acked: Arc<std::sync::atomic::AtomicU64>,
    duration: Option<Duration>,
    count: Option<u64>,
) {
    let bar = super::progress::Progress::new(match (duration, count) {
        (Some(d), _) => Some(d.as_secs()),
        (None, c) => c,
    });
    let every = Duration::from_secs(if bar.on_terminal() { 1 } else { 5 });
    let started = Instant::now();
    let mut last = 0;
    loop {
        tokio::time::sleep(every).await;
        let n = acked.load(std::sync::atomic::Ordering::Relaxed);
        let rate = (n - last) as f64 / every.as_secs_f64();
        last = n;
        let elapsed = started.elapsed().as_secs();
        let (position, goal) = match (duration, count) {
            (Some(d), _) => (elapsed, format!("{elapsed}s/{}s ", d.as_secs())),
            (None, Some(c)) => (n, format!("{n}/{c} writes ")),
            (None, None) => (n, String::new()),
        };
        let line = if bar.on_terminal() {
            format!("acknowledged {n} ({rate:.0}/s)")
        } else {
            format!("verify: {goal}acknowledged {n} ({rate:.0}/s)")
        };
        bar.update(position, &line);
    }
}

/// A member's id, address, and its entries from the run's start: all of them, and the run's
/// tenant's alone.
type Read = (
    u64,
    String,
    Result<(Vec<pb::Entry>, Vec<pb::Entry>), String>,
);

/// Checks what every member holds against the writers' acknowledgements.
fn check(
    a: &VerifyArgs,
    run: u64,
    from: u64,
    duration: Duration,
    logs: &[WriterLog],
    reads: Vec<Read>,
) -> Report {
    let acknowledged: u64 = logs.iter().map(|l| l.acked.len() as u64).sum();
    let mut r = Report {
        run_id: format!("{run:016x}"),
        tenant: a.tenant.clone(),
        producers: a.producers,
        duration_ms: duration.as_millis() as u64,
        attempted: logs.iter().map(|l| l.attempted).sum(),
        acknowledged,
        writes_per_second: acknowledged as f64 / duration.as_secs_f64().max(1e-9),
        first_sequence: from,
        ..Report::default()
    };
    for l in logs {
        if let Some(e) = &l.gave_up {
            r.writers_failed += 1;
            if r.writer_errors.len() < MAX_ERRORS_LISTED {
                r.writer_errors.push(e.clone());
            }
        }
    }
    stalls(logs, a.stall_threshold, &mut r);
    let mut reference: Option<(u64, Vec<pb::Entry>)> = None;
    for (id, address, read) in reads {
        let (entries, tenant_entries) = match read {
            Ok(e) => e,
            Err(error) => {
                r.unreadable_members += 1;
                r.members.push(MemberReport {
                    id,
                    address,
                    error: Some(error),
                    ..MemberReport::default()
                });
                continue;
            }
        };
        r.tenant_read_mismatches += tenant_mismatches(&entries, &a.tenant, &tenant_entries);
        let m = check_member(id, address, run, from, logs, &entries);
        r.lost += m.lost;
        r.duplicated += m.duplicated;
        r.reordered += m.reordered;
        r.sequence_gaps += m.sequence_gaps;
        r.unexpected += m.unexpected;
        r.misplaced += m.misplaced;
        r.members.push(m);
        match &reference {
            None => reference = Some((id, entries)),
            Some((_, base)) => r.divergent += divergence(base, &entries),
        }
    }
    r.ok = r.failures() == 0;
    r
}

/// Entries in which `filtered` (a replay of `tenant`) differs from `tenant`'s entries in `all`
/// (a replay of every tenant, read first), up to the last entry of `all`.
fn tenant_mismatches(all: &[pb::Entry], tenant: &str, filtered: &[pb::Entry]) -> u64 {
    let upto = all.last().map_or(0, |e| e.sequence);
    let by_seq = |it: &mut dyn Iterator<Item = &pb::Entry>| -> BTreeMap<u64, pb::Entry> {
        it.map(|e| (e.sequence, e.clone())).collect()
    };
    let want = by_seq(&mut all.iter().filter(|e| e.tenant == tenant));
    let got = by_seq(&mut filtered.iter().filter(|e| e.sequence <= upto));
    let missing_or_changed = want.iter().filter(|(s, e)| got.get(s) != Some(e)).count();
    let extra = got.keys().filter(|s| !want.contains_key(s)).count();
    let foreign_later = filtered
        .iter()
        .filter(|e| e.sequence > upto && e.tenant != tenant)
        .count();
    (missing_or_changed + extra + foreign_later) as u64
}

/// The gaps between consecutive acknowledgements (of any writer) above `threshold`.
fn stalls(logs: &[WriterLog], threshold: Duration, r: &mut Report) {
    let mut times: Vec<u64> = logs
        .iter()
        .flat_map(|l| l.ack_times_ms.iter().copied())
        .collect();
    times.sort_unstable();
    let mut all: Vec<Stall> = times
        .windows(2)
        .filter(|w| w[1] - w[0] > threshold.as_millis() as u64)
        .map(|w| Stall {
            start_unix_ms: w[0],
            end_unix_ms: w[1],
            ms: w[1] - w[0],
        })
        .collect();
    r.longest_stall_ms = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    all.sort_by_key(|s| std::cmp::Reverse(s.ms));
    all.truncate(MAX_STALLS_LISTED);
    all.sort_by_key(|s| s.start_unix_ms);
    r.stalls = all;
}

fn check_member(
    id: u64,
    address: String,
    run: u64,
    from: u64,
    logs: &[WriterLog],
    entries: &[pb::Entry],
) -> MemberReport {
    let mut m = MemberReport {
        id,
        address,
        entries: entries.len() as u64,
        last_sequence: entries.last().map_or(0, |e| e.sequence),
        ..MemberReport::default()
    };
    let mut expected = from;
    for e in entries {
        m.sequence_gaps += e.sequence.saturating_sub(expected);
        expected = e.sequence + 1;
    }
    // Where each key was found, in log order.
    let mut found: HashMap<(u32, u64), Vec<u64>> = HashMap::new();
    let mut last_seq_of: HashMap<u32, u64> = HashMap::new();
    for e in entries {
        match parse_entry(run, &e.data) {
            None => {}
            Some(None) => m.unexpected += 1,
            Some(Some((p, s))) => {
                m.run_entries += 1;
                let attempted = logs
                    .get(p as usize)
                    .is_some_and(|l| s >= 1 && s <= l.attempted);
                if !attempted {
                    m.unexpected += 1;
                    continue;
                }
                let last = last_seq_of.entry(p).or_insert(0);
                if s <= *last {
                    m.reordered += u64::from(s < *last);
                } else {
                    *last = s;
                }
                found.entry((p, s)).or_default().push(e.sequence);
            }
        }
    }
    m.duplicated = found.values().filter(|v| v.len() > 1).count() as u64;
    for (p, log) in logs.iter().enumerate() {
        for (s, acked_at) in &log.acked {
            match found.get(&(p as u32, *s)) {
                None => m.lost += 1,
                Some(at) if !at.contains(acked_at) => m.misplaced += 1,
                Some(_) => {}
            }
        }
    }
    m
}

/// Sequence numbers held by both lists whose entries differ (or that one list lacks inside
/// the range both cover).
fn divergence(a: &[pb::Entry], b: &[pb::Entry]) -> u64 {
    let upto = a
        .last()
        .map_or(0, |e| e.sequence)
        .min(b.last().map_or(0, |e| e.sequence));
    let index = |l: &[pb::Entry]| -> HashMap<u64, u32> {
        l.iter()
            .take_while(|e| e.sequence <= upto)
            .map(|e| (e.sequence, e.checksum))
            .collect()
    };
    let (ia, ib) = (index(a), index(b));
    let keys: HashSet<u64> = ia.keys().chain(ib.keys()).copied().collect();
    keys.into_iter().filter(|k| ia.get(k) != ib.get(k)).count() as u64
}

fn print_report(r: &Report, format: Format) -> Result<(), CliError> {
    if format == Format::Json {
        let s = serde_json::to_string_pretty(r).map_err(|e| CliError::failure(e.to_string()))?;
        println!("{s}");
        return Ok(());
    }
    let rows: [(&str, String); 16] = [
        ("run", r.run_id.clone()),
        ("duration", format!("{:.1}s", r.duration_ms as f64 / 1000.0)),
        ("producers", r.producers.to_string()),
        ("attempted", r.attempted.to_string()),
        (
            "acknowledged",
            format!("{} ({:.0}/s)", r.acknowledged, r.writes_per_second),
        ),
        ("lost", r.lost.to_string()),
        ("duplicated", r.duplicated.to_string()),
        ("reordered", r.reordered.to_string()),
        ("sequence gaps", r.sequence_gaps.to_string()),
        ("unexpected", r.unexpected.to_string()),
        ("misplaced", r.misplaced.to_string()),
        ("divergent", r.divergent.to_string()),
        (
            "tenant read mismatches",
            r.tenant_read_mismatches.to_string(),
        ),
        ("unreadable members", r.unreadable_members.to_string()),
        ("writers failed", r.writers_failed.to_string()),
        ("longest stall", format!("{} ms", r.longest_stall_ms)),
    ];
    for (k, v) in rows {
        println!("{k:<20} {v}");
    }
    println!();
    let header = [
        "MEMBER", "ADDRESS", "ENTRIES", "LAST SEQ", "LOST", "DUP", "GAPS", "ERROR",
    ];
    let mut t = super::output::Table::new(&header);
    for m in &r.members {
        t.row(vec![
            m.id.to_string(),
            m.address.clone(),
            m.entries.to_string(),
            m.last_sequence.to_string(),
            m.lost.to_string(),
            m.duplicated.to_string(),
            m.sequence_gaps.to_string(),
            m.error.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    println!("{}", t.render());
    for e in &r.writer_errors {
        println!("writer gave up: {e}");
    }
    println!("{}", if r.ok { "OK" } else { "FAILED" });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_describe_themselves() {
        let d = entry_data(0xabc, 3, 17, 100);
        assert_eq!(d.len(), 100);
        assert_eq!(parse_entry(0xabc, &d), Some(Some((3, 17))));
        assert_eq!(parse_entry(0xabd, &d), None, "another run's entry");
        assert_eq!(parse_entry(0xabc, b"hello"), None);
        let bad = format!("{MAGIC} run={:016x} p=x s=1 ", 0xabc);
        assert_eq!(parse_entry(0xabc, bad.as_bytes()), Some(None));
    }

    fn entry(sequence: u64, data: Vec<u8>) -> pb::Entry {
        pb::Entry {
            sequence,
            checksum: crc32fast::hash(&data),
            data,
            ..pb::Entry::default()
        }
    }

    #[test]
    fn a_tenant_replay_must_match_the_tenants_entries_of_the_whole_replay() {
        let e = |sequence: u64, tenant: &str| pb::Entry {
            tenant: tenant.into(),
            ..entry(sequence, vec![sequence as u8])
        };
        let all = vec![e(1, "a"), e(2, "b"), e(3, "a"), e(4, "b")];
        let good = vec![e(1, "a"), e(3, "a"), e(5, "a")]; // 5 came after the first read
        assert_eq!(tenant_mismatches(&all, "a", &good), 0);
        assert_eq!(tenant_mismatches(&all, "a", &good[1..]), 1, "one missing");
        let changed = vec![
            e(1, "a"),
            pb::Entry {
                data: vec![9],
                ..e(3, "a")
            },
        ];
        assert_eq!(tenant_mismatches(&all, "a", &changed), 1, "one changed");
        let foreign = vec![e(1, "a"), e(2, "b"), e(3, "a")];
        assert_eq!(
            tenant_mismatches(&all, "a", &foreign),
            1,
            "another tenant's entry"
        );
    }

    #[test]
    fn the_checker_finds_each_kind_of_problem() {
        let run = 7;
        let log = WriterLog {
            acked: BTreeMap::from([(1, 10), (2, 11), (3, 12), (4, 13)]),
            attempted: 5,
            ..WriterLog::default()
        };
        let ok: Vec<pb::Entry> = (1..=4)
            .map(|s| entry(9 + s, entry_data(run, 0, s, 64)))
            .collect();
        let m = check_member(1, "a".into(), run, 10, std::slice::from_ref(&log), &ok);
        assert_eq!(
            (
                m.lost,
                m.duplicated,
                m.reordered,
                m.sequence_gaps,
                m.unexpected,
                m.misplaced
            ),
            (0, 0, 0, 0, 0, 0)
        );
        // 2 written twice, 3 lost, 4 before 2's copy, a gap, an unattempted key.
        let bad = vec![
            entry(10, entry_data(run, 0, 1, 64)),
            entry(11, entry_data(run, 0, 2, 64)),
            entry(13, entry_data(run, 0, 4, 64)),
            entry(14, entry_data(run, 0, 2, 64)),
            entry(15, entry_data(run, 0, 9, 64)),
        ];
        let m = check_member(2, "b".into(), run, 10, std::slice::from_ref(&log), &bad);
        assert_eq!(m.lost, 1, "3 is lost");
        assert_eq!(m.duplicated, 1, "2 is twice");
        assert_eq!(m.reordered, 1, "2 again after 4");
        assert_eq!(m.sequence_gaps, 1, "12 is missing");
        assert_eq!(m.unexpected, 1, "9 was never attempted");
        assert_eq!(divergence(&ok, &bad), 1, "12 is held by one only");
        let mut other = ok.clone();
        other[1] = entry(11, entry_data(run, 0, 3, 64));
        assert_eq!(divergence(&ok, &other), 1, "11 differs");
    }
}
