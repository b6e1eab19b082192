//! The node's configuration: a YAML file, overridden by `REPLOG_<SECTION>__<KEY>` environment
//! variables, overridden by command-line flags (figment does the layering; serde_yaml_ng parses
//! YAML). Every key has a default, so a node runs with no file at all.
//!
//! ```yaml
//! node:    { id: 1, listen: 127.0.0.1:7400, advertise: ..., peer_listen: 127.0.0.1:7500,
//!            peer_advertise: ..., metrics_listen: 127.0.0.1:9400, data_dir: ./replog-data }
//! cluster: { name: replog, init: true, initial_members: "1=a:7400,2=b:7400", join: [a:7400] }
//! wal:     { segment_size: 64MiB, sync_policy: immediate, retention_hours: 168, compression: zstd }
//! raft:    { heartbeat_interval: 100ms, election_timeout_min: 500ms, election_timeout_max: 1s }
//! limits:  { max_entry_bytes: 1MiB, max_batch_entries: 10000, ... }
//! repair:  { scrub_interval: 24h, scrub_rate: 32MiB }
//! ```
//!
//! This module only parses and checks; [`Config::node_config`] turns it into what
//! [`crate::node::Node`] takes. Bad values are refused with the key and the reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::Figment;
use figment::providers::{Env, Format, Serialized};
use serde::{Deserialize, Serialize};

use crate::core::{Limits, QuotaConfig, RepairConfig};
use crate::node::{NodeAuth, NodeConfig, NodeTls};
use crate::raft::RaftTiming;
use crate::raft::network::NetConfig;
use crate::tls::TlsFiles;
use crate::wal::WalConfig;

/// YAML for figment, parsed by serde_yaml_ng (serde_yaml is unmaintained).
pub struct Yaml;

impl Format for Yaml {
    type Error = serde_yaml_ng::Error;
    const NAME: &'static str = "YAML";

    fn from_str<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, Self::Error> {
        serde_yaml_ng::from_str(s)
    }
}

/// A configuration that cannot be used: which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad(key: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("invalid configuration: {key}: {why}"))
}

/// The prefix of the environment variables that set configuration keys.
const ENV_PREFIX: &str = "REPLOG_";

/// `wal.sync_policy` as the variable that sets it: `REPLOG_WAL__SYNC_POLICY`.
fn env_var_name(path: &[&str]) -> String {
    let upper: Vec<String> = path.iter().map(|k| k.to_ascii_uppercase()).collect();
    format!("{ENV_PREFIX}{}", upper.join("__"))
}

/// Figment's `Env` provider under a name its errors can be told by, and with keys shown as the
/// variables that set them.
struct EnvVars(Env);

const ENV_SOURCE: &str = "environment";

impl figment::Provider for EnvVars {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(ENV_SOURCE).interpolater(|_, path| env_var_name(path))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        self.0.data()
    }
}

/// The known key closest to a misspelt one, if one is close enough to be what was meant.
fn closest<'a>(typed: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(typed, k), *k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// One figment error as a user reads it: where the value came from (the file with its absolute
/// path, or the environment variable and its value), the key, and what is wrong, in words.
fn describe(e: &figment::Error) -> String {
    let path: Vec<&str> = e.path.iter().map(String::as_str).collect();
    let key = path.join(".");
    let source = e.metadata.as_ref();
    let from_env = source.is_some_and(|m| m.name == ENV_SOURCE);
    let unknown = |field: &str, expected: &[&str]| -> String {
        match closest(field, expected) {
            Some(k) if from_env => {
                let mut p = path.clone();
                p.pop();
                p.push(k);
                format!("unknown key (did you mean {}?)", env_var_name(&p))
            }
            Some(k) => format!("unknown key (did you mean {k}?)"),
            None => format!("unknown key (the keys here: {})", expected.join(", ")),
        }
    };
    let value = |a: &figment::error::Actual| match a {
        figment::error::Actual::Str(s) => format!("{s:?}"),
        figment::error::Actual::Signed(n) => n.to_string(),
        figment::error::Actual::Unsigned(n) => n.to_string(),
        figment::error::Actual::Float(n) => n.to_string(),
        figment::error::Actual::Bool(b) => b.to_string(),
        other => other.to_string(),
    };
    use figment::error::Kind;
    let problem = match &e.kind {
        Kind::UnknownField(f, expected) => unknown(f, expected),
        // The variable's value is said with its name.
        Kind::UnknownVariant(_, expected) if from_env => {
            format!("expected one of {}", expected.join(", "))
        }
        Kind::UnknownVariant(found, expected) => {
            format!("expected one of {}, found {found:?}", expected.join(", "))
        }
        Kind::InvalidValue(a, expected) | Kind::InvalidType(a, expected) => {
            match expected.as_str() {
                // bytesize's and humantime's words for their formats.
                "parsable string" => format!("{} is not a size (e.g. 64MiB, 256KiB)", value(a)),
                "a duration" => format!("{} is not a duration (e.g. 500ms, 2s, 1h)", value(a)),
                "u64" | "u32" | "u16" | "u8" | "usize" => {
                    format!("{} is not a whole number >= 0", value(a))
                }
                "a boolean" => format!("{} is not true or false", value(a)),
                // A section (`wal: 5`): its keys go under it.
                e if e.starts_with("struct ") || e == "a map" => {
                    format!("expected a section of keys, found {}", value(a))
                }
                _ => format!("expected {expected}, found {}", value(a)),
            }
        }
        Kind::Message(m) => m.clone(),
        other => other.to_string(),
    };
    let file = source
        .and_then(|m| m.source.as_ref())
        .and_then(|s| s.file_path());
    if from_env {
        let var = env_var_name(&path);
        match std::env::var(&var) {
            Ok(v) => format!("{var}={v}: {problem}"),
            Err(_) => format!("{var}: {problem}"),
        }
    } else if let Some(f) = file {
        let f = std::path::absolute(f).unwrap_or_else(|_| f.to_owned());
        if key.is_empty() {
            format!("config file {}: {problem}", f.display())
        } else {
            format!("config file {}: {key}: {problem}", f.display())
        }
    } else if key.is_empty() {
        format!("invalid configuration: {problem}")
    } else {
        format!("invalid configuration: {key}: {problem}")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    pub cluster: ClusterSection,
    /// TLS on both listeners (off when `cert` is not set).
    pub tls: TlsSection,
    /// Authentication and authorization of clients (tokens, certificate grants).
    pub auth: AuthSection,
    /// Per-tenant quotas: `default` and `tenants.<name>`, each with write_entries_per_sec,
    /// write_bytes_per_sec, replay_bytes_per_sec and retained_bytes (0 or unset: no limit).
    /// `replog quota set` sets replicated ones over these.
    pub quotas: QuotaConfig,
    /// The WAL's keys (see [`WalConfig`]). In a node the WAL lives in `<data_dir>/wal`.
    pub wal: WalConfig,
    pub raft: RaftSection,
    pub limits: Limits,
    /// Scrubbing and self-repair of damaged WAL segments.
    pub repair: RepairConfig,
}

/// Most `node.worker_threads` a node may ask for.
pub const MAX_WORKER_THREADS: usize = 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Unique in the cluster, >= 1. Default 1.
    pub id: u64,
    /// Client gRPC address to bind (public services). Default `127.0.0.1:7400`.
    pub listen: String,
    /// Address clients use. Default: `listen`.
    pub advertise: Option<String>,
    /// Peer gRPC address to bind (Raft traffic only). Default: `listen`'s host, port + 100.
    pub peer_listen: Option<String>,
    /// Address other members use (what membership and `initial_members` name). Default:
    /// `advertise`'s host with the peer port, or `peer_listen`.
    pub peer_advertise: Option<String>,
    /// Prometheus `/metrics` over HTTP. Default `127.0.0.1:9400`; `""` turns it off.
    pub metrics_listen: String,
    /// Holds `wal/`, `sled/` and the Raft metadata. Default `./replog-data`.
    pub data_dir: PathBuf,
    /// Threads running the node's tasks (gRPC, Raft, replication). Default: one per core but
    /// the one left to the WAL writer's thread, at least one ([`default_worker_threads`]).
    /// Nodes sharing a machine's cores (a test cluster on one host) are faster with fewer:
    /// each spare thread costs wake-ups on the write path.
    pub worker_threads: Option<usize>,
}

impl NodeSection {
    /// `worker_threads`, or its default on this machine.
    pub fn worker_threads_or_default(&self) -> usize {
        self.worker_threads
            .unwrap_or_else(|| default_worker_threads(machine_cores()))
    }
}

/// The cores this process may run on (its CPU affinity and cgroup quota count), at least one.
pub fn machine_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The default `node.worker_threads` on `cores` cores: all but one, at least one. The node's
/// WAL writer is a thread of its own that every write waits for (its write and fsync); with
/// a worker on every core it queues for a core behind them. On 2 cores, one worker instead
/// of two took 3 nodes sharing the machine from 21.0K to 22.1K unary writes/s at 64 clients
/// (54 instead of 61 µs of CPU per write) and one node from 42.2K to 43-46K
/// (`benches/write-path/HISTORY.md`, "the node's threads").
pub fn default_worker_threads(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            id: 1,
            listen: "127.0.0.1:7400".to_owned(),
            advertise: None,
            peer_listen: None,
            peer_advertise: None,
            metrics_listen: "127.0.0.1:9400".to_owned(),
            data_dir: PathBuf::from("./replog-data"),
            worker_threads: None,
        }
    }
}

/// How a node joins a cluster. With neither `initial_members` nor `join`, a node that was never
/// initialized starts a single-node cluster of its own (unless `init: false`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// Raft's cluster name (messages from another cluster are refused). Default `replog`.
    pub name: String,
    /// Initialize a single-node cluster on first start. Default: true when neither
    /// `initial_members` nor `join` is set.
    pub init: Option<bool>,
    /// Static bootstrap, identical on every first member: `"1=host:port,2=host:port,..."`.
    pub initial_members: Option<String>,
    /// Endpoints of an existing cluster: this node, uninitialized, asks them to add it (as a
    /// learner, then a voter once caught up).
    pub join: Vec<String>,
    /// The bearer token `join` presents (adding a member needs the admin role) when the cluster
    /// has authentication on. Or set REPLOG_CLUSTER__JOIN_TOKEN. A client certificate granted
    /// the admin role works too.
    pub join_token: Option<String>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            name: "replog".to_owned(),
            init: None,
            initial_members: None,
            join: Vec::new(),
            join_token: None,
        }
    }
}

/// TLS of the node's listeners and of its connections to other nodes. With `cert` set, both
/// listeners speak only TLS and the peer listener requires a certificate from `ca` naming a
/// member (mTLS). The files are re-read when they change, or on SIGHUP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// This node's certificate chain (PEM, leaf first), for both listeners and as its client
    /// certificate when it calls other nodes. Needs `key` and `ca`.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// The cluster CA (PEM): peers' certificates must chain to it (and clients' with
    /// `client_cert_auth`); other nodes' certificates are checked against it.
    pub ca: Option<PathBuf>,
    /// The peer listener's own certificate, key and CA. Default: `cert`, `key`, `ca`.
    pub peer_cert: Option<PathBuf>,
    pub peer_key: Option<PathBuf>,
    pub peer_ca: Option<PathBuf>,
    /// Require a client certificate chaining to `ca` on the client listener. Default false.
    pub client_cert_auth: bool,
    /// Allow listening without TLS on an address other than loopback. Default false: `serve`
    /// refuses to, since anyone who reaches the port could write, read and change membership.
    pub insecure: bool,
}

/// Who may call the client listener. With authentication on, every public call needs a bearer
/// token from `token_file` or a client certificate granted there (health and reflection stay
/// open); members' calls on the peer listener are authenticated by mTLS instead.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// Default: on when `node.listen` is not a loopback address, off on loopback.
    pub enabled: Option<bool>,
    /// The token file: hashes of tokens and certificate grants (`replog auth token create`,
    /// `replog auth cert grant`), re-read when it changes or on SIGHUP. Needed with auth on.
    pub token_file: Option<PathBuf>,
    /// Serve `/metrics` over HTTPS with the client listener's certificate. Default false.
    pub metrics_tls: bool,
    /// Require a bearer token on `/metrics` (with auth on); a principal without every tenant
    /// sees no series of other tenants. Default false.
    pub metrics_token: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSection {
    /// Default 100ms.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Default 500ms: well above 10x an append's latency (an fsync).
    #[serde(with = "humantime_serde")]
    pub election_timeout_min: Duration,
    /// Default 1s.
    #[serde(with = "humantime_serde")]
    pub election_timeout_max: Duration,
    /// Entries per AppendEntries at most. Default 4096.
    pub max_payload_entries: u64,
    /// Bytes of entries per AppendEntries at most (one entry is always sent whole). Default 8MiB.
    pub append_max_bytes: ByteSize,
    /// Default 2s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bytes of the newest log entries kept in memory, so replicating and applying them reads
    /// no file. Default 32MiB; 0 turns it off.
    pub entry_cache_bytes: ByteSize,
    /// How long the leader holds a follower's commit-index update that has no entries to ride
    /// with, waiting for the next entries to carry it (one message instead of two). Default
    /// 5ms: a follower learns a commit at most that much later when writes stop; 0 sends each
    /// at once.
    #[serde(with = "humantime_serde")]
    pub commit_linger: Duration,
}

impl Default for RaftSection {
    fn default() -> Self {
        let t = RaftTiming::default();
        let n = NetConfig::default();
        RaftSection {
            heartbeat_interval: t.heartbeat_interval,
            election_timeout_min: t.election_timeout_min,
            election_timeout_max: t.election_timeout_max,
            max_payload_entries: 4096,
            append_max_bytes: ByteSize(n.append_max_bytes as u64),
            connect_timeout: n.connect_timeout,
            entry_cache_bytes: ByteSize(crate::raft::log_store::DEFAULT_ENTRY_CACHE_BYTES as u64),
            commit_linger: n.commit_linger,
        }
    }
}

/// Values given as command-line flags; `None` leaves the file/env value.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<BTreeMap<&'static str, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<BTreeMap<&'static str, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<BTreeMap<&'static str, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<BTreeMap<&'static str, serde_json::Value>>,
}

impl Config {
    /// Layers: defaults, then the YAML file (which must exist if given), then `REPLOG_*__*`
    /// environment variables, then flags.
    pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
                return Err(ConfigError(format!(
                    "config file {}: does not exist (or is not a file)",
                    abs.display()
                )));
            }
            fig = fig.merge(Yaml::file_exact(path));
        }
        // Only nested keys (`REPLOG_WAL__SYNC_POLICY`): `REPLOG_ENDPOINTS` is the client's.
        let env = Env::prefixed(ENV_PREFIX)
            .filter(|k| k.as_str().contains("__"))
            .split("__");
        let cfg: Config = fig
            .merge(EnvVars(env))
            .merge(Serialized::globals(flags))
            .extract()
            .map_err(|e| {
                ConfigError(
                    e.into_iter()
                        .map(|e| describe(&e))
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.id == 0 {
            return Err(bad("node.id", "must be at least 1"));
        }
        let listen = parse_addr("node.listen", &self.node.listen)?;
        if let Some(a) = &self.node.advertise {
            check_host_port("node.advertise", a)?;
        }
        if let Some(a) = &self.node.peer_listen {
            let peer = parse_addr("node.peer_listen", a)?;
            if peer == listen && peer.port() != 0 {
                return Err(bad(
                    "node.peer_listen",
                    format!("{a} is node.listen too: peers and clients need separate ports"),
                ));
            }
        }
        if let Some(a) = &self.node.peer_advertise {
            check_host_port("node.peer_advertise", a)?;
        }
        if !self.node.metrics_listen.is_empty() {
            parse_addr("node.metrics_listen", &self.node.metrics_listen)?;
        }
        if let Some(n) = self.node.worker_threads
            && !(1..=MAX_WORKER_THREADS).contains(&n)
        {
            return Err(bad(
                "node.worker_threads",
                format!("must be between 1 and {MAX_WORKER_THREADS}, got {n}"),
            ));
        }
        let wal_dir = self.node.data_dir.join("wal");
        if self.wal.directory != WalConfig::default().directory && self.wal.directory != wal_dir {
            return Err(bad(
                "wal.directory",
                format!(
                    "a node keeps its WAL in <node.data_dir>/wal ({}); set node.data_dir instead",
                    wal_dir.display()
                ),
            ));
        }
        let mut wal = self.wal.clone();
        wal.directory = wal_dir;
        wal.validate().map_err(|e| match e {
            crate::wal::WalError::InvalidConfig { key, reason } => {
                bad(&format!("wal.{key}"), reason)
            }
            other => ConfigError(format!("invalid configuration: {other}")),
        })?;
        if let Some(m) = &self.cluster.initial_members {
            let members = parse_members(m)?;
            if !members.contains_key(&self.node.id) {
                return Err(bad(
                    "cluster.initial_members",
                    format!("does not include this node's id {}", self.node.id),
                ));
            }
            if !self.cluster.join.is_empty() {
                return Err(bad(
                    "cluster.join",
                    "cannot be combined with cluster.initial_members",
                ));
            }
        }
        for j in &self.cluster.join {
            check_host_port("cluster.join", j)?;
        }
        self.node_config()?.raft_config_check()?;
        if self.raft.commit_linger >= self.raft.heartbeat_interval {
            return Err(bad(
                "raft.commit_linger",
                format!(
                    "must be shorter than raft.heartbeat_interval ({:?}), got {:?}",
                    self.raft.heartbeat_interval, self.raft.commit_linger
                ),
            ));
        }
        self.limits
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
        self.check_batch_fits_a_frame()
    }

    /// The largest batch the API accepts must fit in one WAL frame: a frame the WAL refused
    /// after Raft committed it would stop the node.
    fn check_batch_fits_a_frame(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let worst = crate::wal::max_batch_frame_len(
            l.max_batch_entries as u64,
            l.max_batch_bytes.as_u64(),
            crate::wire::NAME_MAX_CHARS as u64,
        );
        let frame = self.wal.max_frame_bytes.as_u64();
        if worst > frame {
            return Err(bad(
                "limits.max_batch_bytes",
                format!(
                    "a batch at limits.max_batch_bytes and limits.max_batch_entries encodes to up to {worst} bytes, more than wal.max_frame_bytes ({frame}): lower them or raise wal.max_frame_bytes"
                ),
            ));
        }
        Ok(())
    }

    /// What the node takes, resolved (addresses parsed, paths joined).
    pub fn node_config(&self) -> Result<NodeConfig, ConfigError> {
        let listen = parse_addr("node.listen", &self.node.listen)?;
        let mut cfg = NodeConfig::new(self.node.id, listen, &self.node.data_dir);
        cfg.advertise = self.node.advertise.clone();
        if let Some(a) = &self.node.peer_listen {
            cfg.peer_listen = parse_addr("node.peer_listen", a)?;
        }
        cfg.peer_advertise = self.node.peer_advertise.clone();
        cfg.metrics_listen = if self.node.metrics_listen.is_empty() {
            None
        } else {
            Some(parse_addr(
                "node.metrics_listen",
                &self.node.metrics_listen,
            )?)
        };
        cfg.wal = WalConfig {
            directory: self.node.data_dir.join("wal"),
            ..self.wal.clone()
        };
        cfg.raft = RaftTiming {
            heartbeat_interval: self.raft.heartbeat_interval,
            election_timeout_min: self.raft.election_timeout_min,
            election_timeout_max: self.raft.election_timeout_max,
        };
        cfg.net = NetConfig {
            max_message_bytes: self.limits.max_message_bytes.as_u64() as usize,
            append_max_bytes: self.raft.append_max_bytes.as_u64() as usize,
            connect_timeout: self.raft.connect_timeout,
            commit_linger: self.raft.commit_linger,
        };
        cfg.max_payload_entries = self.raft.max_payload_entries;
        cfg.entry_cache_bytes = self.raft.entry_cache_bytes.as_u64() as usize;
        cfg.cluster_name = self.cluster.name.clone();
        cfg.max_producers = self.limits.max_producers;
        cfg.limits = self.limits.clone();
        cfg.repair = self.repair.clone();
        cfg.initial_members = match &self.cluster.initial_members {
            Some(m) => Some(parse_members(m)?),
            None => None,
        };
        let init = self
            .cluster
            .init
            .unwrap_or(cfg.initial_members.is_none() && self.cluster.join.is_empty());
        cfg.init = init && cfg.initial_members.is_none();
        cfg.join = self.cluster.join.clone();
        cfg.tls = self.node_tls()?;
        cfg.auth = self.node_auth(cfg.listen, cfg.tls.is_some())?;
        cfg.join_token.clone_from(&self.cluster.join_token);
        cfg.quotas = self.quotas.clone();
        for t in self.quotas.tenants.keys() {
            crate::wire::check_name("tenant", t)
                .map_err(|e| bad(&format!("quotas.tenants.{t}"), e.to_string()))?;
        }
        if cfg.tls.is_none() && !self.tls.insecure {
            for (key, addr) in [
                ("node.listen", cfg.listen),
                ("node.peer_listen", cfg.peer_listen),
            ] {
                if !addr.ip().is_loopback() {
                    return Err(bad(
                        key,
                        format!(
                            "{addr} is not a loopback address and TLS is off: anyone who reaches it could write, read and change the cluster. Set tls.cert, tls.key and tls.ca (--tls-cert, --tls-key, --tls-ca), or accept the risk with --insecure (tls.insecure: true)"
                        ),
                    ));
                }
            }
        }
        Ok(cfg)
    }

    /// Authentication: on by default off loopback, and then with a token file.
    fn node_auth(&self, listen: SocketAddr, tls: bool) -> Result<NodeAuth, ConfigError> {
        let a = &self.auth;
        let enabled = a.enabled.unwrap_or(!listen.ip().is_loopback());
        if (a.metrics_tls) && !tls {
            return Err(bad(
                "auth.metrics_tls",
                "needs tls.cert, tls.key and tls.ca",
            ));
        }
        if !enabled {
            if a.metrics_token {
                return Err(bad("auth.metrics_token", "needs auth on (auth.enabled)"));
            }
            return Ok(NodeAuth {
                token_file: None,
                metrics_tls: a.metrics_tls,
                metrics_token: false,
            });
        }
        let Some(file) = a.token_file.clone() else {
            let why = if a.enabled == Some(true) {
                "auth is on".to_owned()
            } else {
                format!(
                    "auth is on by default since node.listen ({listen}) is not a loopback address"
                )
            };
            return Err(bad(
                "auth.token_file",
                format!(
                    "{why}, so a token file is needed: make one with `replog auth token create --file tokens.yaml --principal admin --role admin` and give it with --token-file (auth.token_file), or turn auth off with --auth off (auth.enabled: false)"
                ),
            ));
        };
        Ok(NodeAuth {
            token_file: Some(file),
            metrics_tls: a.metrics_tls,
            metrics_token: a.metrics_token,
        })
    }

    /// The TLS files of both listeners, when `tls.cert` (or `key` or `ca`) is set: then all
    /// three are needed.
    fn node_tls(&self) -> Result<Option<NodeTls>, ConfigError> {
        let t = &self.tls;
        let set = [
            &t.cert,
            &t.key,
            &t.ca,
            &t.peer_cert,
            &t.peer_key,
            &t.peer_ca,
        ];
        if set.iter().all(|f| f.is_none()) {
            if t.client_cert_auth {
                return Err(bad(
                    "tls.client_cert_auth",
                    "needs tls.cert, tls.key and tls.ca",
                ));
            }
            return Ok(None);
        }
        let need = |key: &str, v: &Option<PathBuf>| {
            v.clone().ok_or_else(|| {
                bad(
                    key,
                    "must be set with the other TLS files (cert, key and ca)",
                )
            })
        };
        let client = TlsFiles {
            cert: need("tls.cert", &t.cert)?,
            key: need("tls.key", &t.key)?,
            ca: need("tls.ca", &t.ca)?,
        };
        let peer = TlsFiles {
            cert: t.peer_cert.clone().unwrap_or_else(|| client.cert.clone()),
            key: t.peer_key.clone().unwrap_or_else(|| client.key.clone()),
            ca: t.peer_ca.clone().unwrap_or_else(|| client.ca.clone()),
        };
        Ok(Some(NodeTls {
            client,
            peer,
            client_cert_auth: t.client_cert_auth,
        }))
    }
}

impl NodeConfig {
    fn raft_config_check(&self) -> Result<(), ConfigError> {
        crate::raft::openraft_config(&self.cluster_name, &self.raft, self.max_payload_entries)
            .map(|_| ())
            .map_err(|e| bad("raft", e))
    }
}

fn parse_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|e| bad(key, format!("{s:?} is not an IP:port address ({e})")))
}

/// `host:port` with a numeric port (host names are allowed: they are resolved when used).
fn check_host_port(key: &str, s: &str) -> Result<(), ConfigError> {
    let ok = s
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(bad(key, format!("{s:?} is not a host:port address")))
    }
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_members(s: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let key = "cluster.initial_members";
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| bad(key, format!("{part:?} is not ID=HOST:PORT")))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|i| *i > 0)
            .ok_or_else(|| bad(key, format!("{id:?} is not a node id (>= 1)")))?;
        check_host_port(key, addr.trim())?;
        if out.insert(id, addr.trim().to_owned()).is_some() {
            return Err(bad(key, format!("node id {id} appears twice")));
        }
    }
    if out.is_empty() {
        return Err(bad(key, "is empty"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_worker_threads_leave_a_core_to_the_wal_writer() {
        assert_eq!(default_worker_threads(0), 1);
        assert_eq!(default_worker_threads(1), 1);
        assert_eq!(default_worker_threads(2), 1);
        assert_eq!(default_worker_threads(16), 15);
        let set = NodeSection {
            worker_threads: Some(4),
            ..NodeSection::default()
        };
        assert_eq!(set.worker_threads_or_default(), 4);
        assert_eq!(
            NodeSection::default().worker_threads_or_default(),
            default_worker_threads(machine_cores())
        );
    }

    #[test]
    fn a_misspelt_key_suggests_the_close_one_only() {
        let known = [
            "segment_size",
            "sync_policy",
            "sync_interval",
            "compression",
        ];
        assert_eq!(closest("sync_polcy", &known), Some("sync_policy"));
        assert_eq!(closest("sync_intervall", &known), Some("sync_interval"));
        assert_eq!(closest("segmentsize", &known), Some("segment_size"));
        assert_eq!(closest("retention", &known), None);
        assert_eq!(closest("wall", &["wal", "raft"]), Some("wal"));
        assert_eq!(closest("x", &["wal", "raft"]), None);
        assert_eq!(
            env_var_name(&["wal", "sync_policy"]),
            "REPLOG_WAL__SYNC_POLICY"
        );
    }

    #[test]
    fn defaults_make_a_single_node_cluster() {
        let cfg = Config::load(None, &FlagOverrides::default()).unwrap();
        let n = cfg.node_config().unwrap();
        assert_eq!(n.listen.to_string(), "127.0.0.1:7400");
        assert_eq!(n.metrics_listen.unwrap().to_string(), "127.0.0.1:9400");
        assert_eq!(n.wal.directory, PathBuf::from("./replog-data/wal"));
        assert!(n.init);
        assert_eq!(n.initial_members, None);
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("n.yaml");
        std::fs::write(
            &f,
            "node:\n  id: 2\n  listen: 127.0.0.1:7402\n  data_dir: /tmp/x\n\
             cluster:\n  initial_members: \"1=127.0.0.1:7401,2=127.0.0.1:7402\"\n\
             wal:\n  segment_size: 8MiB\n  sync_policy: periodic\n\
             raft:\n  heartbeat_interval: 50ms\n\
             limits:\n  max_entry_bytes: 4KiB\n",
        )
        .unwrap();
        let flags = FlagOverrides {
            node: Some(BTreeMap::from([(
                "listen",
                serde_json::json!("127.0.0.1:7412"),
            )])),
            ..Default::default()
        };
        let cfg = Config::load(Some(&f), &flags).unwrap();
        assert_eq!(cfg.node.id, 2);
        assert_eq!(cfg.node.listen, "127.0.0.1:7412");
        assert_eq!(cfg.wal.segment_size, ByteSize::mib(8));
        assert_eq!(cfg.raft.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(cfg.limits.max_entry_bytes, ByteSize::kib(4));
        let n = cfg.node_config().unwrap();
        assert_eq!(n.initial_members.unwrap().len(), 2);
        assert_eq!(n.wal.directory, PathBuf::from("/tmp/x/wal"));
    }

    #[test]
    fn bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for (yaml, key) in [
            ("node:\n  id: 0\n", "node.id"),
            ("node:\n  listen: nowhere\n", "node.listen"),
            ("wal:\n  segment_size: 1KiB\n", "segment_size"),
            ("wal:\n  sync_policy: sometimes\n", "sync_policy"),
            (
                "raft:\n  heartbeat_interval: 50ms\n  commit_linger: 50ms\n",
                "raft.commit_linger",
            ),
            (
                "limits:\n  max_batch_entries: 0\n",
                "limits.max_batch_entries",
            ),
            ("nodes:\n  id: 1\n", "nodes"),
            (
                "limits:\n  max_batch_bytes: 20MiB\n  max_entry_bytes: 1MiB\n",
                "wal.max_frame_bytes",
            ),
            (
                "cluster:\n  initial_members: \"2=a:1\"\n",
                "cluster.initial_members",
            ),
        ] {
            let f = dir.path().join("c.yaml");
            std::fs::write(&f, yaml).unwrap();
            let e = Config::load(Some(&f), &FlagOverrides::default()).unwrap_err();
            assert!(e.0.contains(key), "{yaml:?}: {e}");
        }
        let e = Config::load(
            Some(&dir.path().join("none.yaml")),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert!(e.0.contains("does not exist"), "{e}");
    }

    #[test]
    fn members_parse() {
        let m = parse_members("1=a:1, 2=b:2").unwrap();
        assert_eq!(m[&2], "b:2");
        assert!(parse_members("1=a:1,1=b:2").is_err());
        assert!(parse_members("x=a:1").is_err());
        assert!(parse_members("1=a").is_err());
    }
}
