//! WAL configuration: the keys of the `wal:` section of the node's YAML config, each with its
//! default and the reason for it. Bad values are rejected by [`WalConfig::validate`], never clamped.
//!
//! Sizes are human strings parsed by `bytesize`: decimal units are powers of 1000 ("64MB" =
//! 64,000,000 bytes, "4KB" = 4,000), binary units are powers of 1024 ("64MiB" = 67,108,864
//! bytes, "4KiB" = 4,096); a bare number is bytes.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use super::error::{Result, WalError};

/// When an appended entry counts as written (and the append returns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// Acknowledge only after the fsync that covers the entry (group commit shares one fsync
    /// among all concurrent appends). Nothing acknowledged is lost by a crash.
    Immediate,
    /// Acknowledge after the write; fsync every `sync_interval`. A crash loses up to one interval
    /// of acknowledged entries.
    Periodic,
    /// Acknowledge after the write; leave flushing to the OS (fsync only when a segment is sealed,
    /// on `sync`, checkpoint, truncation and close). A crash can lose every acknowledged entry
    /// since then.
    Async,
}

/// How a new segment file reserves its space before appends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preallocate {
    /// `fallocate` the whole segment: cheap to create, and appends never grow the file.
    Fallocate,
    /// Write zeros over the whole segment: fsyncs into it skip even the extent conversion, at
    /// the cost of writing every segment twice.
    Zero,
    /// Let appends grow the file.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    /// zstd per frame, for frames of at least `compression_min_bytes`, kept only if smaller.
    Zstd,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalConfig {
    /// Folder of the segment files. Default `./replog-data/wal`.
    pub directory: PathBuf,
    /// Size at which the active segment is sealed and a new one started. Default 64MiB: large
    /// enough that rolling is rare, small enough that retention frees space in useful steps.
    /// Between 4KiB and 2GiB.
    pub segment_size: ByteSize,
    /// Default `immediate`: the only policy under which an acknowledged entry survives any crash.
    pub sync_policy: SyncPolicy,
    /// fsync interval under `periodic`. Default 100ms (what a crash may lose). 1ms to 1h.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// Sealed segments whose newest entry is older than this are deleted. Default: none (keep
    /// everything), since deleting data must be asked for.
    pub retention_hours: Option<u64>,
    /// Default `none`.
    pub compression: Compression,
    /// zstd level, 1 to 22. Default 3 (zstd's own default: fast, decent ratio).
    pub compression_level: i32,
    /// Frames smaller than this are stored uncompressed. Default 4KiB: below that zstd rarely
    /// pays for its CPU.
    pub compression_min_bytes: ByteSize,
    /// Largest frame (one batch) accepted, encoded. Default 16MiB. 1KiB to 1GiB.
    pub max_frame_bytes: ByteSize,
    /// Appends waiting for the writer thread; beyond it appenders block (back-pressure).
    /// Default 4096.
    pub queue_depth: usize,
    /// Bytes one group commit writes at most before it fsyncs. Default 8MiB.
    pub group_commit_max_bytes: ByteSize,
    /// The per-segment index keeps one entry per this many bytes of frames (seeks scan at most
    /// this much). Default 4KiB.
    pub index_interval_bytes: ByteSize,
    /// Sealed segments' indexes kept in memory (LRU). Default 16.
    pub index_cache_segments: usize,
    /// Free space that must remain on the disk after a new segment is created; below it writes
    /// fail with `InsufficientSpace` (reads go on). Default 64MiB.
    pub min_free_bytes: ByteSize,
    /// How new segments reserve their space (made in the background, before they are needed).
    /// Default `zero`: fsyncs into written zeros update no file metadata at all, which measured
    /// 1.3x faster with 64 writers and 1.4x with large batches than `fallocate` here, at the
    /// cost of writing each segment's bytes twice (see the README's numbers).
    pub preallocate: Preallocate,
    /// Sealed segment files kept open at most (LRU); others are opened when read. Default 64.
    pub max_open_segments: usize,
    /// Named checkpoints kept at most. Default 1024.
    pub max_checkpoints: usize,
    /// Memory the active segment's tenant index may take (32 bytes per run of one tenant's
    /// records in a frame). A segment whose index would grow past it gets none: tenant replays
    /// scan it. Default 32MiB (64MiB segments of 100-byte records interleaved one by one over
    /// many tenants need about 17MiB).
    pub tenant_index_max_bytes: ByteSize,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            directory: PathBuf::from("./replog-data/wal"),
            segment_size: ByteSize::mib(64),
            sync_policy: SyncPolicy::Immediate,
            sync_interval: Duration::from_millis(100),
            retention_hours: None,
            compression: Compression::None,
            compression_level: 3,
            compression_min_bytes: ByteSize::kib(4),
            max_frame_bytes: ByteSize::mib(16),
            queue_depth: 4096,
            group_commit_max_bytes: ByteSize::mib(8),
            index_interval_bytes: ByteSize::kib(4),
            index_cache_segments: 16,
            min_free_bytes: ByteSize::mib(64),
            preallocate: Preallocate::Zero,
            max_open_segments: 64,
            max_checkpoints: 1024,
            tenant_index_max_bytes: ByteSize::mib(32),
        }
    }
}

/// Parses a size as flags and config keys write it: `64MiB` (binary, 1024^2) or `64MB`
/// (decimal, 1000^2); the error says which forms exist.
pub fn parse_size(s: &str) -> std::result::Result<ByteSize, String> {
    s.parse::<ByteSize>().map_err(|e| {
        format!("{e} (sizes look like 64MiB = 64x1024^2 bytes or 64MB = 64x1000^2 bytes)")
    })
}

fn check(ok: bool, key: &'static str, reason: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(WalError::InvalidConfig {
            key,
            reason: reason(),
        })
    }
}

impl WalConfig {
    /// A config for `directory` with every other key at its default.
    pub fn new(directory: impl Into<PathBuf>) -> Self {
        WalConfig {
            directory: directory.into(),
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let seg = self.segment_size.as_u64();
        check((4 << 10..=2 << 30).contains(&seg), "segment_size", || {
            format!("{seg} bytes is outside 4KiB..=2GiB")
        })?;
        let ms = self.sync_interval.as_millis();
        check((1..=3_600_000).contains(&ms), "sync_interval", || {
            format!("{ms}ms is outside 1ms..=1h")
        })?;
        if let Some(h) = self.retention_hours {
            check(h >= 1, "retention_hours", || {
                "must be at least 1 (omit it to keep everything)".into()
            })?;
        }
        let level = self.compression_level;
        check((1..=22).contains(&level), "compression_level", || {
            format!("{level} is outside 1..=22")
        })?;
        let frame = self.max_frame_bytes.as_u64();
        check(
            (1 << 10..=1 << 30).contains(&frame),
            "max_frame_bytes",
            || format!("{frame} bytes is outside 1KiB..=1GiB"),
        )?;
        check(
            (1..=1 << 20).contains(&self.queue_depth),
            "queue_depth",
            || "must be between 1 and 1048576".into(),
        )?;
        let gc = self.group_commit_max_bytes.as_u64();
        check(gc >= 4096, "group_commit_max_bytes", || {
            format!("{gc} bytes is below 4KiB")
        })?;
        let ii = self.index_interval_bytes.as_u64();
        check((1..=seg).contains(&ii), "index_interval_bytes", || {
            format!("{ii} must be between 1 and segment_size")
        })?;
        check(
            self.index_cache_segments >= 1,
            "index_cache_segments",
            || "must be at least 1".into(),
        )?;
        check(self.max_open_segments >= 1, "max_open_segments", || {
            "must be at least 1".into()
        })?;
        check(self.max_checkpoints >= 1, "max_checkpoints", || {
            "must be at least 1".into()
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_decimal_and_binary() {
        assert_eq!("64MB".parse::<ByteSize>().unwrap().as_u64(), 64_000_000);
        assert_eq!("64MiB".parse::<ByteSize>().unwrap().as_u64(), 64 << 20);
        assert_eq!("4KiB".parse::<ByteSize>().unwrap().as_u64(), 4096);
    }

    #[test]
    fn defaults_are_valid_and_bad_values_rejected() {
        WalConfig::default().validate().unwrap();
        let bad = WalConfig {
            segment_size: ByteSize::b(10),
            ..Default::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(WalError::InvalidConfig {
                key: "segment_size",
                ..
            })
        ));
        let bad = WalConfig {
            compression_level: 0,
            ..Default::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(WalError::InvalidConfig {
                key: "compression_level",
                ..
            })
        ));
    }
}
