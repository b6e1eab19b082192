//! openraft glue: the type config, the log store over the WAL with its durable metadata, the
//! state machine kept in sled, snapshots made of segment files, and the tonic network client.
//!
//! openraft (pinned `=0.10.0-alpha.37`) is used nowhere else, so an upgrade touches this folder
//! only: the rest of replog talks to [`RaftNode`].
//!
//! Invariants:
//! - Raft index `i` is WAL frame `i + 1`; one entry is one frame, so a client batch is atomic.
//! - Record sequence numbers are a function of the log prefix, computed identically by the WAL
//!   (which stores them) and the state machine (which answers the client).
//! - An entry is reported flushed to openraft only by the WAL's durability callback.
//! - The WAL deletes records only below both the replicated truncation watermark and Raft's
//!   purge point, and Raft purges only up to a snapshot made durable in `SM_SNAPSHOT`.

pub mod directory;
pub mod durable;
pub mod handle;
pub mod image;
pub mod log_store;
pub mod meta;
pub mod network;
pub mod service;
pub mod snapshot;
pub mod state_machine;
pub mod types;
mod wal_handle;

use std::time::Duration;

/// How often sled makes what the state machine wrote durable (its own fsyncs; sled's default
/// is every 500 ms). sled is a cache of the state machine, the WAL is the truth: after a crash
/// openraft re-applies what sled lacks, so this bounds that work, nothing else. Each of sled's
/// fsyncs shares the disk with the WAL's and stalled the appends behind it.
const SLED_FLUSH_EVERY_MS: u64 = 5_000;

pub use handle::{Raft, RaftNode, RaftOpError, RaftStatus};
pub use log_store::LogStore;
pub use state_machine::StateMachine;
pub use types::{NodeId, Request, Response, TypeConfig};
pub use wal_handle::WalHandle;

/// Raft timing, from the node config.
#[derive(Clone, Debug)]
pub struct RaftTiming {
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
}

impl Default for RaftTiming {
    fn default() -> Self {
        // Election timeout well above 10x an append's latency (an fsync, ~0.3-5 ms).
        RaftTiming {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
        }
    }
}

/// openraft's config for replog: no automatic snapshot or purge (the log is the data; purges
/// follow replicated truncation), entries per AppendEntries bounded.
pub fn openraft_config(
    cluster: &str,
    t: &RaftTiming,
    max_payload_entries: u64,
) -> Result<openraft::Config, String> {
    let cfg = openraft::Config {
        cluster_name: cluster.to_owned(),
        heartbeat_interval: t.heartbeat_interval.as_millis() as u64,
        election_timeout_min: t.election_timeout_min.as_millis() as u64,
        election_timeout_max: t.election_timeout_max.as_millis() as u64,
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        max_payload_entries,
        // A restarted leader must win a new election, as in standard Raft. openraft would
        // otherwise restore its leadership in the same term, with entries it proposed before
        // the restart still uncommitted in its log while its applied entry is already of that
        // term: it would look ready to propose keyed writes whose keys it cannot see yet, and
        // a retried key would be written twice (`core::producers`).
        enable_leader_restore: Some(false),
        // A node that cannot win (cut off, restarted, behind) asks first whether it would, so
        // it does not raise its term and depose a healthy leader when it comes back.
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    cfg.validate().map_err(|e| e.to_string())
}

/// Why a node's storage did not open.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The WAL did not open (corruption, a locked directory, a bad config, I/O).
    #[error("opening the WAL: {0}")]
    Wal(#[from] crate::wal::WalError),
    /// sled (the state machine's cache) did not open.
    #[error("opening the state machine's sled database: {0}")]
    Sled(#[from] sled::Error),
    /// The data directory, `RAFT_META`, `SM_SNAPSHOT` or a snapshot install left before a
    /// restart could not be read or written.
    #[error("I/O on the node's storage: {0}")]
    Io(#[from] std::io::Error),
}

/// A node's storage, opened from its data directory:
/// `wal/` (the log), `sled/` (the state machine), `RAFT_META`, `SM_SNAPSHOT`.
pub struct Storage {
    pub log_store: LogStore,
    pub state_machine: StateMachine,
    pub wal: std::sync::Arc<WalHandle>,
    pub sm: std::sync::Arc<state_machine::SmShared>,
    pub db: sled::Db,
}

impl Storage {
    /// Opens (recovering) a node's storage on the OS's file system. `wal_cfg.directory` is
    /// replaced by `<data>/wal`.
    pub fn open(
        data_dir: &std::path::Path,
        wal_cfg: crate::wal::WalConfig,
        registry: Option<&prometheus::Registry>,
        max_producers: usize,
    ) -> Result<Storage, StorageError> {
        let fs: std::sync::Arc<dyn crate::fs::FileSystem> = std::sync::Arc::new(crate::fs::StdFs);
        Self::open_with(data_dir, wal_cfg, registry, max_producers, fs)
    }

    /// Like [`Storage::open`], with the log, `RAFT_META` and `SM_SNAPSHOT` on `fs` (tests inject
    /// storage faults this way; sled stays on the OS's file system: it is only a cache).
    pub fn open_with(
        data_dir: &std::path::Path,
        mut wal_cfg: crate::wal::WalConfig,
        registry: Option<&prometheus::Registry>,
        max_producers: usize,
        fs: std::sync::Arc<dyn crate::fs::FileSystem>,
    ) -> Result<Storage, StorageError> {
        use std::sync::Arc;
        // sled (only a cache) lives on the OS's file system, everything else on `fs`.
        std::fs::create_dir_all(data_dir)?;
        fs.create_dir_all(data_dir)?;
        wal_cfg.directory = data_dir.join("wal");
        // A snapshot install interrupted after its commit point is finished first.
        if snapshot::finish_install(&*fs, data_dir, &wal_cfg.directory)? {
            tracing::info!("finished installing a snapshot received before a restart");
        }
        let wal = WalHandle::new(crate::wal::Manager::open_with(
            wal_cfg,
            fs.clone(),
            registry,
        )?);
        let db = sled::Config::new()
            .path(data_dir.join("sled"))
            .flush_every_ms(Some(SLED_FLUSH_EVERY_MS))
            .open()?;
        let snapshots = Arc::new(snapshot::SnapshotFile::new(fs.clone(), data_dir));
        let snapshot_last = snapshots.load()?.and_then(|(m, _)| m.last_log_id);
        // Everything recovered is durable: the first index not in the log is the WAL's next.
        let next_raft_index = wal.get()?.acked_index().saturating_sub(1);
        let durable = durable::LocalDurable::new(next_raft_index);
        let state_machine = StateMachine::open(
            &db,
            snapshots,
            wal.clone(),
            data_dir.to_path_buf(),
            max_producers,
            durable.clone(),
        )?;
        let sm = state_machine.shared();
        let log_store = LogStore::open(
            wal.clone(),
            meta::MetaStore::new(fs, data_dir),
            sm.data_watermark.clone(),
            snapshot_last,
            durable,
        )?;
        Ok(Storage {
            log_store,
            state_machine,
            wal,
            sm,
            db,
        })
    }
}
