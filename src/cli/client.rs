//! The client commands: `write`, `replay`, `checkpoint`, `truncate`, `segments`, `cluster ...`.
//! Each parses its flags, makes one [`Client`] call (or a stream of them) and prints the answer
//! as a table or JSON. Failures exit 1 with the server's message.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use serde::Serialize;

use super::CliError;
use super::output::{Format, Table};
use crate::client::{
    AckFuture, Client, ClientError, ClientOptions, NewEntry, Producer, ProducerOptions,
    UnreachableHook, display_endpoint,
};
use crate::proto::{self as pb, ReplayRequest, replay_request::Start};
use crate::wal::{EntryRef, Operation};

/// Where the cluster is and how to print. Shared by every client command.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Nodes to contact (comma list, any node works).
    #[arg(
        long,
        env = "REPLOG_ENDPOINTS",
        default_value = "127.0.0.1:7400",
        value_delimiter = ',',
        global = true
    )]
    pub endpoints: Vec<String>,
    /// Output format: a table for people, or JSON for scripts (the default depends on the
    /// command).
    #[arg(long, short = 'o', value_enum, global = true)]
    pub output: Option<Format>,
    /// How long a command keeps retrying through leader changes and outages.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub retry_timeout: Duration,
    /// The cluster's CA certificate (PEM): connect with TLS and trust it.
    #[arg(long, env = "REPLOG_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) to present, when the cluster asks for one (with --key).
    #[arg(long, env = "REPLOG_CERT", global = true, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, env = "REPLOG_KEY", global = true, requires = "cert")]
    pub key: Option<PathBuf>,
    /// A bearer token (`replog auth token create`), for a cluster with authentication on.
    #[arg(long, env = "REPLOG_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
}

impl ClientArgs {
    pub(super) fn client(&self) -> Result<Client, CliError> {
        Client::new(&self.endpoints, self.options()?).map_err(|e| CliError::usage(e.to_string()))
    }

    /// The client's options from these flags; a client that cannot reach any endpoint says so
    /// on stderr at once, while it keeps retrying.
    pub(super) fn options(&self) -> Result<ClientOptions, CliError> {
        let retry = self.retry_timeout;
        let hook = move |list: &[(String, String)]| {
            eprintln!("warning: {}", unreachable_message(list, retry));
        };
        Ok(ClientOptions {
            retry_timeout: retry,
            tls: self.tls()?,
            token: self.token.clone(),
            on_unreachable: Some(UnreachableHook(std::sync::Arc::new(hook))),
            ..ClientOptions::default()
        })
    }

    /// TLS from --ca (and --cert/--key), if given.
    pub(super) fn tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>, CliError> {
        let Some(ca) = &self.ca else {
            if self.cert.is_some() {
                return Err(CliError::usage("--cert needs --ca (the cluster's CA)"));
            }
            return Ok(None);
        };
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        crate::tls::client_config(ca, identity)
            .map(Some)
            .map_err(|e| CliError::usage(e.to_string()))
    }

    pub(super) fn format(&self, default: Format) -> Format {
        self.output.unwrap_or(default)
    }
}

/// `cannot connect to 127.0.0.1:7999: connection refused — is a node running? (set
/// --endpoints or REPLOG_ENDPOINTS); retrying for up to 30s`.
fn unreachable_message(list: &[(String, String)], retry: Duration) -> String {
    let mut out = String::from("cannot connect to ");
    if let [(e, why)] = list {
        out.push_str(&format!("{}: {why}", display_endpoint(e)));
    } else {
        let each: Vec<String> = list
            .iter()
            .map(|(e, why)| format!("{} ({why})", display_endpoint(e)))
            .collect();
        out.push_str(&each.join(", "));
    }
    if list.iter().all(|(_, why)| why == "connection refused") {
        out.push_str(" — is a node running?");
    }
    out.push_str(" (set --endpoints or REPLOG_ENDPOINTS)");
    if !retry.is_zero() {
        out.push_str(&format!(
            "; retrying for up to {}",
            humantime::format_duration(retry)
        ));
    }
    out
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::failure(e.to_string())
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OpArg {
    Insert,
    Update,
    Delete,
}

impl From<OpArg> for pb::Operation {
    fn from(o: OpArg) -> pb::Operation {
        match o {
            OpArg::Insert => pb::Operation::Insert,
            OpArg::Update => pb::Operation::Update,
            OpArg::Delete => pb::Operation::Delete,
        }
    }
}

#[derive(Args, Debug)]
pub struct WriteArgs {
    /// Tenant id: 1-128 characters of [A-Za-z0-9._-].
    #[arg(long)]
    pub tenant: String,
    /// The operation each entry records (stored with it and shown by replay; replog does not
    /// interpret it).
    #[arg(long, value_enum, default_value = "insert")]
    pub op: OpArg,
    /// One entry with this data; without it, each line of stdin is one entry.
    #[arg(long)]
    pub data: Option<String>,
    /// Lines of stdin written per atomic batch.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    /// Idempotency key: with a fixed producer id, batch k of the input is written with producer
    /// sequence k, so re-running the same input with the same --batch after a failure writes
    /// only what is missing.
    /// Default: a random id per run.
    #[arg(long)]
    pub producer_id: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Only this tenant's entries.
    #[arg(long)]
    pub tenant: Option<String>,
    /// First sequence number (default: the log start).
    #[arg(long, conflicts_with = "checkpoint")]
    pub from: Option<u64>,
    /// Start after this checkpoint. A checkpoint of one tenant replays only that tenant's
    /// entries (as its consumer would); add --all-tenants for every tenant's.
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// Every tenant's entries, also after a checkpoint of one tenant.
    #[arg(long, conflicts_with = "tenant")]
    pub all_tenants: bool,
    /// Keep streaming entries as they are committed (Ctrl-C stops).
    #[arg(long)]
    pub follow: bool,
    /// Stop after this many entries.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Read-your-writes: wait until the node serving the replay has applied this sequence.
    #[arg(long)]
    pub min_sequence: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct CheckpointArgs {
    #[command(subcommand)]
    pub command: CheckpointCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum CheckpointCommand {
    /// Record a named position (default: the last committed entry, of the tenant if given).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        sequence: Option<u64>,
    },
    Get {
        #[arg(long)]
        name: String,
    },
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct TruncateArgs {
    /// Drop every entry with a sequence number below this, on every replica.
    #[arg(long)]
    pub before: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct SegmentsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Members, roles, terms, indexes, lag and whether each is in sync.
    Status,
    /// Exit 0 if a leader exists and every member is reachable and in sync, 1 otherwise.
    Health {
        /// Check every second until Ctrl-C (exit code of the last check).
        #[arg(long)]
        watch: bool,
    },
    /// Add a node (as a learner until it has caught up, then a voter).
    AddNode {
        #[arg(long)]
        id: u64,
        /// The new node's peer address (host:port, its --peer-advertise), as the other
        /// members reach it.
        #[arg(long, visible_alias = "peer-addr")]
        addr: String,
        /// Keep it a learner (it receives the log, does not vote).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster (stop its process afterwards).
    RemoveNode {
        #[arg(long)]
        id: u64,
    },
    /// Hand leadership to another voter.
    TransferLeader {
        #[arg(long)]
        to: u64,
    },
}

pub fn run_async<F: Future<Output = Result<(), CliError>>>(f: F) -> Result<(), CliError> {
    super::serve::runtime()?.block_on(f)
}

pub(super) fn stdout_line(line: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(line)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
        .map_err(|e| CliError::failure(format!("writing to stdout: {e}")))
}

pub(super) fn print_json(v: &impl Serialize) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v).map_err(|e| CliError::failure(e.to_string()))?;
    stdout_line(format_args!("{s}"))
}

pub async fn write(a: &WriteArgs) -> Result<(), CliError> {
    let client = a.client.client()?;
    let op = pb::Operation::from(a.op);
    let entry = |data: Vec<u8>| NewEntry {
        tenant: a.tenant.clone(),
        operation: op,
        data,
    };
    // Batch k of the input is request k of the producer: with a fixed id, its key is (id, k).
    let producer = Producer::new(
        &client,
        ProducerOptions {
            producer_id: a.producer_id,
            ..ProducerOptions::default()
        },
    );
    // Acks are printed in input order as they come, while later batches are in flight.
    let (acks_tx, mut acks_rx) = tokio::sync::mpsc::channel::<Vec<AckFuture>>(1024);
    let printer = tokio::spawn(async move {
        while let Some(batch) = acks_rx.recv().await {
            for ack in batch {
                let seq = ack.await?.sequence;
                stdout_line(format_args!("{seq}"))?;
            }
        }
        Ok::<(), CliError>(())
    });
    let sent = send_input(a, &producer, &acks_tx, entry).await;
    drop(acks_tx);
    let printed = printer
        .await
        .map_err(|e| CliError::failure(format!("the output task: {e}")))?;
    // The first failure, whether reading the input or writing it.
    printed?;
    sent?;
    producer.close().await?;
    Ok(())
}

/// Sends `--data`, or stdin in batches of `--batch` lines, through the producer.
async fn send_input(
    a: &WriteArgs,
    producer: &Producer,
    acks: &tokio::sync::mpsc::Sender<Vec<AckFuture>>,
    entry: impl Fn(Vec<u8>) -> NewEntry,
) -> Result<(), CliError> {
    let send = async |batch: Vec<NewEntry>| -> Result<(), CliError> {
        let futures = producer.send_batch(batch).await?;
        // The printer stopped at a failure: stop reading.
        acks.send(futures)
            .await
            .map_err(|_| CliError::failure("writing stopped"))
    };
    if let Some(d) = &a.data {
        return send(vec![entry(d.clone().into_bytes())]).await;
    }
    use tokio::io::AsyncBufReadExt;
    let mut batch = Vec::new();
    // Tokio reads stdin on a blocking thread, so the producer runs meanwhile.
    let mut lines = tokio::io::BufReader::with_capacity(1 << 16, tokio::io::stdin());
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = lines
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| CliError::failure(format!("reading stdin: {e}")))?;
        if n == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        batch.push(entry(buf.clone()));
        if batch.len() as u64 >= a.batch {
            send(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        send(batch).await?;
    }
    Ok(())
}

pub async fn replay(a: &ReplayArgs) -> Result<(), CliError> {
    let client = a.client.client()?;
    let start = match (&a.from, &a.checkpoint) {
        (Some(f), _) => Some(Start::FromSequence(*f)),
        (None, Some(c)) => Some(Start::Checkpoint(c.clone())),
        (None, None) => None,
    };
    let req = ReplayRequest {
        start,
        tenant: a.tenant.clone(),
        follow: a.follow,
        min_sequence: a.min_sequence.unwrap_or(0),
        limit: a.limit.unwrap_or(0),
        all_tenants: a.all_tenants,
    };
    let format = a.client.format(Format::Json);
    let mut stream = client.replay(req).await?;
    let mut out = std::io::stdout().lock();
    super::output::write_entry_header(&mut out, format)?;
    let signal = super::serve::shutdown_signal();
    tokio::pin!(signal);
    loop {
        let item = tokio::select! {
            _ = &mut signal => break,
            item = stream.next() => item,
        };
        let Some(item) = item else { break };
        let e = item?;
        let op = u8::try_from(e.operation)
            .ok()
            .and_then(|v| Operation::try_from(v).ok())
            .ok_or_else(|| CliError::failure(format!("entry {}: bad operation", e.sequence)))?;
        let r = EntryRef {
            sequence_number: e.sequence,
            timestamp: e.timestamp_us,
            tenant_id: &e.tenant,
            operation: op,
            data: &e.data,
            checksum: e.checksum,
        };
        super::output::write_entry(&mut out, format, &r)?;
        // A follower of the tail sees each entry at once.
        out.flush()?;
    }
    Ok(())
}

#[derive(Serialize)]
struct CheckpointJson<'a> {
    name: &'a str,
    tenant: Option<&'a str>,
    sequence: u64,
}

fn print_checkpoints(format: Format, cps: &[pb::Checkpoint]) -> Result<(), CliError> {
    let rows: Vec<CheckpointJson> = cps
        .iter()
        .map(|c| CheckpointJson {
            name: &c.name,
            tenant: c.tenant.as_deref(),
            sequence: c.sequence,
        })
        .collect();
    if format == Format::Json {
        return print_json(&rows);
    }
    let mut t = Table::new(&["NAME", "TENANT", "SEQUENCE"]);
    for r in rows {
        let tenant = r.tenant.unwrap_or("-").to_owned();
        t.row(vec![r.name.to_owned(), tenant, r.sequence.to_string()]);
    }
    stdout_line(format_args!("{}", t.render()))
}

pub async fn checkpoint(a: &CheckpointArgs) -> Result<(), CliError> {
    let client = a.client.client()?;
    let format = a.client.format(Format::Table);
    let cps = match &a.command {
        CheckpointCommand::Create {
            name,
            tenant,
            sequence,
        } => vec![
            client
                .create_checkpoint(name, tenant.clone(), *sequence)
                .await?,
        ],
        CheckpointCommand::Get { name } => vec![client.get_checkpoint(name).await?],
        CheckpointCommand::List { tenant } => client.list_checkpoints(tenant.clone()).await?,
    };
    if format == Format::Json && !matches!(a.command, CheckpointCommand::List { .. }) {
        let c = &cps[0];
        return print_json(&CheckpointJson {
            name: &c.name,
            tenant: c.tenant.as_deref(),
            sequence: c.sequence,
        });
    }
    print_checkpoints(format, &cps)
}

pub async fn truncate(a: &TruncateArgs) -> Result<(), CliError> {
    let log_start = a.client.client()?.truncate(a.before).await?;
    match a.client.format(Format::Table) {
        Format::Json => print_json(&serde_json::json!({ "log_start": log_start })),
        Format::Table => stdout_line(format_args!("log start is now {log_start}")),
    }
}

#[derive(Serialize)]
struct SegmentJson<'a> {
    id: u64,
    status: &'a str,
    start_sequence: u64,
    end_sequence: Option<u64>,
    entries: u64,
    size_bytes: u64,
    max_timestamp: Option<String>,
    path: &'a str,
}

pub async fn segments(a: &SegmentsArgs) -> Result<(), CliError> {
    let r = a.client.client()?.segments().await?;
    let rows: Vec<SegmentJson> = r
        .segments
        .iter()
        .map(|s| SegmentJson {
            id: s.id,
            status: &s.status,
            start_sequence: s.start_sequence,
            end_sequence: (s.end_sequence > 0).then_some(s.end_sequence),
            entries: s.entries,
            size_bytes: s.size_bytes,
            max_timestamp: (s.max_timestamp_us > 0)
                .then(|| super::output::rfc3339(s.max_timestamp_us)),
            path: &s.path,
        })
        .collect();
    if a.client.format(Format::Table) == Format::Json {
        return print_json(&serde_json::json!({ "log_start": r.log_start, "segments": rows }));
    }
    let header = [
        "ID",
        "STATUS",
        "FIRST_SEQ",
        "LAST_SEQ",
        "ENTRIES",
        "BYTES",
        "PATH",
    ];
    let mut t = Table::new(&header);
    for s in rows {
        t.row(vec![
            s.id.to_string(),
            s.status.to_owned(),
            s.start_sequence.to_string(),
            s.end_sequence.map_or("-".to_owned(), |e| e.to_string()),
            s.entries.to_string(),
            s.size_bytes.to_string(),
            s.path.to_owned(),
        ]);
    }
    stdout_line(format_args!("{}", t.render()))
}

#[derive(Serialize)]
struct MemberJson<'a> {
    id: u64,
    /// Where clients reach it.
    address: &'a str,
    /// Where other members reach it (what membership names).
    peer_address: &'a str,
    role: &'a str,
    voter: bool,
    term: u64,
    last_index: u64,
    commit_index: u64,
    applied_index: u64,
    lag: u64,
    in_sync: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    error: &'a str,
}

#[derive(Serialize)]
struct StatusJson<'a> {
    leader_id: Option<u64>,
    term: u64,
    members: Vec<MemberJson<'a>>,
}

fn status_json(s: &pb::ClusterStatusResponse) -> StatusJson<'_> {
    StatusJson {
        leader_id: (s.leader_id != 0).then_some(s.leader_id),
        term: s.term,
        members: s
            .members
            .iter()
            .map(|m| MemberJson {
                id: m.id,
                address: &m.address,
                peer_address: &m.peer_address,
                role: &m.role,
                voter: m.voter,
                term: m.term,
                last_index: m.last_index,
                commit_index: m.commit_index,
                applied_index: m.applied_index,
                lag: m.lag,
                in_sync: m.in_sync,
                error: &m.error,
            })
            .collect(),
    }
}

fn print_status(format: Format, s: &pb::ClusterStatusResponse) -> Result<(), CliError> {
    if format == Format::Json {
        return print_json(&status_json(s));
    }
    let mut header = vec![
        "ID",
        "ADDRESS",
        "PEER_ADDRESS",
        "ROLE",
        "VOTER",
        "TERM",
        "LAST_INDEX",
        "COMMIT",
        "APPLIED",
        "LAG",
        "IN_SYNC",
    ];
    // A column of errors only when a member has one (an unreachable node).
    let errors = s.members.iter().any(|m| !m.error.is_empty());
    if errors {
        header.push("ERROR");
    }
    let mut t = Table::new(&header);
    for m in &s.members {
        let mut row = vec![
            m.id.to_string(),
            m.address.clone(),
            m.peer_address.clone(),
            m.role.clone(),
            m.voter.to_string(),
            m.term.to_string(),
            m.last_index.to_string(),
            m.commit_index.to_string(),
            m.applied_index.to_string(),
            m.lag.to_string(),
            m.in_sync.to_string(),
        ];
        if errors {
            row.push(m.error.clone());
        }
        t.row(row);
    }
    stdout_line(format_args!("{}", t.render()))
}

/// Healthy: a leader, and every member reachable and in sync.
fn unhealthy_reasons(s: &pb::ClusterStatusResponse) -> Vec<String> {
    let mut why = Vec::new();
    if s.leader_id == 0 {
        why.push("no leader".to_owned());
    }
    for m in &s.members {
        if m.role == "unreachable" {
            why.push(format!("node {} unreachable: {}", m.id, m.error));
        } else if !m.in_sync {
            why.push(format!("node {} not in sync", m.id));
        }
    }
    why
}

pub async fn cluster(a: &ClusterArgs) -> Result<(), CliError> {
    let client = if let ClusterCommand::Health { .. } = a.command {
        // A check: its one line says what is wrong (an unreachable node too), nothing besides.
        let quiet = ClientOptions {
            on_unreachable: Some(UnreachableHook(std::sync::Arc::new(|_| {}))),
            ..a.client.options()?
        };
        Client::new(&a.client.endpoints, quiet).map_err(|e| CliError::usage(e.to_string()))?
    } else {
        a.client.client()?
    };
    let format = a.client.format(Format::Table);
    match &a.command {
        ClusterCommand::Status => print_status(format, &client.cluster_status().await?),
        ClusterCommand::Health { watch } => health(&client, format, *watch).await,
        ClusterCommand::AddNode { id, addr, learner } => {
            add_node(&client, format, *id, addr, *learner).await
        }
        ClusterCommand::RemoveNode { id } => {
            let r = client.remove_node(*id).await?;
            print_membership(format, &r.voters, &r.learners)?;
            eprintln!("node {id} removed; it no longer receives entries: stop its process");
            Ok(())
        }
        ClusterCommand::TransferLeader { to } => {
            let leader = client.transfer_leader(*to).await?;
            match format {
                Format::Json => print_json(&serde_json::json!({ "leader_id": leader })),
                Format::Table => stdout_line(format_args!("node {leader} is the leader")),
            }
        }
    }
}

fn print_membership(format: Format, voters: &[u64], learners: &[u64]) -> Result<(), CliError> {
    match format {
        Format::Json => print_json(&serde_json::json!({ "voters": voters, "learners": learners })),
        Format::Table => stdout_line(format_args!("voters {voters:?}, learners {learners:?}")),
    }
}

async fn health(client: &Client, format: Format, watch: bool) -> Result<(), CliError> {
    let signal = super::serve::shutdown_signal();
    tokio::pin!(signal);
    loop {
        let why = match client.cluster_status().await {
            Ok(s) => unhealthy_reasons(&s),
            Err(e) => vec![e.to_string()],
        };
        let healthy = why.is_empty();
        match format {
            Format::Json => {
                print_json(&serde_json::json!({ "healthy": healthy, "problems": why }))?
            }
            Format::Table if healthy => stdout_line(format_args!("healthy"))?,
            Format::Table => stdout_line(format_args!("unhealthy: {}", why.join("; ")))?,
        }
        if !watch {
            return if healthy {
                Ok(())
            } else {
                // The output said why: exit 1 without a second message.
                Err(CliError::silent(super::EXIT_FAILURE))
            };
        }
        tokio::select! {
            _ = &mut signal => return if healthy { Ok(()) } else {
                Err(CliError::silent(super::EXIT_FAILURE))
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Adds a node and shows its catch-up (its lag, from the cluster status) while the leader
/// waits for it.
async fn add_node(
    client: &Client,
    format: Format,
    id: u64,
    addr: &str,
    learner: bool,
) -> Result<(), CliError> {
    let add = client.add_node(id, addr, learner);
    tokio::pin!(add);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    // A bar of the log the new node copies: its last index out of the leader's.
    let progress = super::progress::Progress::new(Some(0));
    let r = loop {
        tokio::select! {
            r = &mut add => break r?,
            _ = tick.tick() => {
                if let Ok(s) = client.cluster_status().await
                    && let Some(m) = s.members.iter().find(|m| m.id == id)
                {
                    progress.set_length(m.last_index + m.lag);
                    progress.update(
                        m.last_index,
                        &format!(
                            "node {id}: catching up, {} entries behind (last index {})",
                            m.lag, m.last_index
                        ),
                    );
                }
            }
        }
    };
    drop(progress);
    eprintln!(
        "node {id} added as a {}",
        if r.voters.contains(&id) {
            "voter"
        } else {
            "learner"
        }
    );
    print_membership(format, &r.voters, &r.learners)
}
