//! `replog quota`: per-tenant quotas set on the cluster (replicated) and as nodes apply them.

use clap::{Args, Subcommand};
use serde::Serialize;

use super::CliError;
use super::client::{ClientArgs, print_json, stdout_line};
use super::output::Format;
use crate::proto::{QuotaLimits, TenantQuota};

#[derive(Args, Debug)]
pub struct QuotaArgs {
    #[command(subcommand)]
    pub command: QuotaCommand,
}

#[derive(Subcommand, Debug)]
pub enum QuotaCommand {
    /// Set a tenant's quota on every node (replicated; needs the admin role). Limits not given
    /// stay as they are; 0 is no limit. Over the limit, writes get RESOURCE_EXHAUSTED with a
    /// retry delay (clients wait and retry) and replay slows down.
    Set(SetArgs),
    /// Each tenant's quota as the node asked applies it, and the bytes it keeps in the log.
    List(ListArgs),
}

#[derive(Args, Debug)]
pub struct SetArgs {
    #[arg(long)]
    pub tenant: String,
    /// Entries written per second.
    #[arg(long)]
    pub write_entries_per_sec: Option<u64>,
    /// Data bytes written per second (e.g. 1MiB).
    #[arg(long, value_parser = super::wal::parse_size_arg)]
    pub write_bytes_per_sec: Option<bytesize::ByteSize>,
    /// Data bytes replayed per second, on each node (e.g. 10MiB).
    #[arg(long, value_parser = super::wal::parse_size_arg)]
    pub replay_bytes_per_sec: Option<bytesize::ByteSize>,
    /// Data bytes the tenant may keep in the log (e.g. 10GiB); writes past it are refused
    /// until the log is truncated.
    #[arg(long, value_parser = super::wal::parse_size_arg)]
    pub retained_bytes: Option<bytesize::ByteSize>,
    /// Remove the tenant's replicated quota first: the nodes' configured one applies again
    /// (with no limit flags, that is all it does).
    #[arg(long)]
    pub clear: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Serialize)]
struct LimitsJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    write_entries_per_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write_bytes_per_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replay_bytes_per_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retained_bytes: Option<u64>,
}

impl From<&QuotaLimits> for LimitsJson {
    fn from(l: &QuotaLimits) -> Self {
        LimitsJson {
            write_entries_per_sec: l.write_entries_per_sec,
            write_bytes_per_sec: l.write_bytes_per_sec,
            replay_bytes_per_sec: l.replay_bytes_per_sec,
            retained_bytes: l.retained_bytes,
        }
    }
}

#[derive(Serialize)]
struct QuotaJson<'a> {
    tenant: &'a str,
    effective: LimitsJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    replicated: Option<LimitsJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retained_bytes_used: Option<u64>,
}

fn to_json(q: &TenantQuota) -> QuotaJson<'_> {
    QuotaJson {
        tenant: &q.tenant,
        effective: q.effective.as_ref().map(Into::into).unwrap_or(LimitsJson {
            write_entries_per_sec: None,
            write_bytes_per_sec: None,
            replay_bytes_per_sec: None,
            retained_bytes: None,
        }),
        replicated: q.replicated.as_ref().map(Into::into),
        retained_bytes_used: q.retained_bytes,
    }
}

/// A limit as the table shows it: `-` for none.
fn cell(v: Option<u64>) -> String {
    match v {
        None | Some(0) => "-".to_owned(),
        Some(n) => n.to_string(),
    }
}

fn print_table(quotas: &[TenantQuota]) -> Result<(), CliError> {
    let mut t = super::output::Table::new(&[
        "TENANT",
        "ENTRIES/S",
        "BYTES/S",
        "REPLAY_BYTES/S",
        "RETAINED_BYTES",
        "RETAINED_USED",
    ]);
    for q in quotas {
        let e = q.effective.unwrap_or_default();
        t.row(vec![
            q.tenant.clone(),
            cell(e.write_entries_per_sec),
            cell(e.write_bytes_per_sec),
            cell(e.replay_bytes_per_sec),
            cell(e.retained_bytes),
            q.retained_bytes.map_or("-".to_owned(), |b| b.to_string()),
        ]);
    }
    stdout_line(format_args!("{}", t.render()))
}

pub async fn run(a: &QuotaArgs) -> Result<(), CliError> {
    match &a.command {
        QuotaCommand::Set(s) => {
            let limits = QuotaLimits {
                write_entries_per_sec: s.write_entries_per_sec,
                write_bytes_per_sec: s.write_bytes_per_sec.map(|b| b.as_u64()),
                replay_bytes_per_sec: s.replay_bytes_per_sec.map(|b| b.as_u64()),
                retained_bytes: s.retained_bytes.map(|b| b.as_u64()),
            };
            if limits == QuotaLimits::default() && !s.clear {
                return Err(CliError::usage(
                    "give at least one limit (--write-entries-per-sec, --write-bytes-per-sec, --replay-bytes-per-sec, --retained-bytes) or --clear",
                ));
            }
            let q = s
                .client
                .client()?
                .set_quota(&s.tenant, limits, s.clear)
                .await?;
            match s.client.format(Format::Table) {
                Format::Json => print_json(&to_json(&q)),
                Format::Table => print_table(std::slice::from_ref(&q)),
            }
        }
        QuotaCommand::List(l) => {
            let r = l
                .client
                .client()?
                .list_quotas(l.tenant.as_deref().unwrap_or(""))
                .await?;
            match l.client.format(Format::Table) {
                Format::Json => {
                    let d = r.default.unwrap_or_default();
                    print_json(&serde_json::json!({
                        "default": LimitsJson::from(&d),
                        "quotas": r.quotas.iter().map(to_json).collect::<Vec<_>>(),
                    }))
                }
                Format::Table => {
                    let d = r.default.unwrap_or_default();
                    stdout_line(format_args!(
                        "default: entries/s {}, bytes/s {}, replay bytes/s {}, retained bytes {}",
                        cell(d.write_entries_per_sec),
                        cell(d.write_bytes_per_sec),
                        cell(d.replay_bytes_per_sec),
                        cell(d.retained_bytes)
                    ))?;
                    print_table(&r.quotas)
                }
            }
        }
    }
}
