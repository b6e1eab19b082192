//! Helpers shared by the WAL integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use bytesize::ByteSize;
use replog::fs::MemFs;
use replog::wal::{Entry, Manager, Operation, Record, SyncPolicy, WalConfig};

/// A config for small, fast tests: 4 KiB segments, no free-space reserve.
pub fn small_config(dir: &Path) -> WalConfig {
    WalConfig {
        segment_size: ByteSize::kib(4),
        min_free_bytes: ByteSize::b(0),
        index_interval_bytes: ByteSize::b(256),
        sync_policy: SyncPolicy::Immediate,
        ..WalConfig::new(dir)
    }
}

pub fn mem_dir() -> &'static Path {
    Path::new("/wal")
}

pub fn open_mem(fs: &MemFs, cfg: WalConfig) -> Manager {
    Manager::open_with(cfg, Arc::new(fs.clone()), None).expect("open the WAL")
}

pub fn record(tenant: &str, data: &[u8]) -> Record {
    Record {
        timestamp: Some(1_700_000_000_000_000),
        ..Record::new(tenant, Operation::Insert, data.to_vec())
    }
}

/// Every acknowledged entry from the log start on.
pub fn all_entries(wal: &Manager) -> Vec<Entry> {
    let from = wal.log_start().seq;
    wal.iter_from(from)
        .expect("iterate")
        .collect::<Result<_, _>>()
        .expect("read every entry")
}

/// `(sequence, tenant, data)` of every entry, for comparing logs.
pub fn summary(wal: &Manager) -> Vec<(u64, String, Vec<u8>)> {
    all_entries(wal)
        .into_iter()
        .map(|e| (e.sequence_number, e.tenant_id, e.data))
        .collect()
}
pub mod cluster;
pub mod crash_fs;
pub mod netns;
pub mod process;
