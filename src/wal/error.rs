//! The WAL's one error type. Callers match on variants; the gRPC layer maps them to status
//! codes in one place.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::types::{SegmentId, SequenceNumber};

/// `Clone`, so one failure fans out to every waiter of a group commit (`io::Error` is not
/// `Clone`: it is shared behind an `Arc`).
#[derive(Clone, Debug, thiserror::Error)]
pub enum WalError {
    #[error("segment {0} not found")]
    SegmentNotFound(SegmentId),

    #[error("corrupted entry in segment {segment} at byte offset {offset}: {kind}")]
    CorruptedEntry {
        segment: SegmentId,
        offset: u64,
        kind: Corruption,
    },

    #[error("insufficient disk space in {}: {available_bytes} bytes free, {required_bytes} needed", dir.display())]
    InsufficientSpace {
        dir: PathBuf,
        available_bytes: u64,
        required_bytes: u64,
    },

    #[error("invalid {what} {got}: {rule}")]
    InvalidSequence {
        what: &'static str,
        got: u64,
        rule: SequenceRule,
    },

    #[error("position {requested} is before the log start {log_start}")]
    BeforeLogStart { requested: u64, log_start: u64 },

    #[error("frame of {bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    FrameTooLarge { bytes: u64, limit_bytes: u64 },

    #[error("invalid record: {0}")]
    InvalidRecord(RecordError),

    #[error("invalid configuration: {key}: {reason}")]
    InvalidConfig { key: &'static str, reason: String },

    #[error("checkpoint {0:?} not found")]
    CheckpointNotFound(String),

    #[error("too many checkpoints: the limit is {limit} (max_checkpoints)")]
    TooManyCheckpoints { limit: usize },

    #[error("the WAL directory {} is in use by another process", .0.display())]
    Locked(PathBuf),

    /// A write or fsync failed. The WAL never retries an fsync (the kernel may have dropped the
    /// dirty pages), so it refuses every later write; reopen it to recover from disk.
    #[error("the WAL stopped after a fatal I/O error and refuses writes until reopened: {0}")]
    Fatal(Arc<io::Error>),

    /// A concurrent truncation removed what a reader was about to read; read again from the
    /// log start (prefix) or from the new end (suffix).
    #[error("the log was truncated at index {index} while it was being read")]
    TruncatedWhileReading { index: u64 },

    #[error("the WAL is closed")]
    Closed,

    /// Bytes offered to repair a damaged segment do not prove to be the log's frames for it.
    #[error("repair of WAL segment {segment} refused: {reason}")]
    RepairRefused { segment: SegmentId, reason: String },

    #[error("I/O error: {0}")]
    Io(#[source] Arc<io::Error>),
}

impl From<io::Error> for WalError {
    fn from(e: io::Error) -> Self {
        WalError::Io(Arc::new(e))
    }
}

pub type Result<T, E = WalError> = std::result::Result<T, E>;

/// What is wrong with bytes that failed to decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Corruption {
    BadMagic,
    UnsupportedVersion(u8),
    BadChecksum {
        stored: u32,
        computed: u32,
    },
    /// The file ends inside the structure.
    Truncated,
    BadLength(u64),
    /// A frame's log index does not follow its predecessor's.
    IndexGap {
        expected: u64,
        found: u64,
    },
    /// A frame's first sequence number goes back.
    SequenceGoesBack {
        expected_min: u64,
        found: u64,
    },
    UnknownOperation(u8),
    BadRecord(&'static str),
    Decompress(String),
    BadSegmentHeader,
    BadIndexFile,
    BadMetadata(&'static str),
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corruption::BadMagic => write!(f, "bad magic number"),
            Corruption::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            Corruption::BadChecksum { stored, computed } => {
                write!(
                    f,
                    "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
            Corruption::Truncated => write!(f, "data ends early"),
            Corruption::BadLength(n) => write!(f, "impossible length {n}"),
            Corruption::IndexGap { expected, found } => {
                write!(f, "log index {found} where {expected} was expected")
            }
            Corruption::SequenceGoesBack {
                expected_min,
                found,
            } => {
                write!(
                    f,
                    "sequence number {found} below the previous frame's end {expected_min}"
                )
            }
            Corruption::UnknownOperation(v) => write!(f, "unknown operation {v}"),
            Corruption::BadRecord(why) => write!(f, "bad record: {why}"),
            Corruption::Decompress(why) => write!(f, "cannot decompress: {why}"),
            Corruption::BadSegmentHeader => write!(f, "bad segment header"),
            Corruption::BadIndexFile => write!(f, "bad segment index file"),
            Corruption::BadMetadata(file) => write!(f, "bad metadata file {file}"),
        }
    }
}

/// Which rule a sequence number or log index broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceRule {
    Exactly(u64),
    AtLeast(u64),
    Between(u64, u64),
    /// A suffix truncation must start on a frame (batch) boundary.
    BatchBoundary {
        batch_first: SequenceNumber,
        batch_last: SequenceNumber,
    },
}

impl fmt::Display for SequenceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SequenceRule::Exactly(n) => write!(f, "expected {n}"),
            SequenceRule::AtLeast(n) => write!(f, "must be at least {n}"),
            SequenceRule::Between(a, b) => write!(f, "must be between {a} and {b}"),
            SequenceRule::BatchBoundary {
                batch_first,
                batch_last,
            } => {
                write!(
                    f,
                    "falls inside the atomic batch {batch_first}..={batch_last}; use {batch_first}"
                )
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordError {
    EmptyBatch,
    EmptyTenant,
    CheckpointName {
        len: usize,
        max: usize,
    },
    TenantTooLong {
        len: usize,
        max: usize,
    },
    DataTooLarge {
        len: usize,
        max: usize,
    },
    /// A frame's parts do not split its records (empty parts, a key beside them, a wrong sum).
    BadParts,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::EmptyBatch => write!(f, "a batch needs at least one record"),
            RecordError::EmptyTenant => write!(f, "tenant id is empty"),
            RecordError::CheckpointName { len, max } => {
                write!(f, "checkpoint names are 1 to {max} bytes, got {len}")
            }
            RecordError::TenantTooLong { len, max } => {
                write!(f, "tenant id is {len} bytes, the limit is {max}")
            }
            RecordError::DataTooLarge { len, max } => {
                write!(f, "data is {len} bytes, the limit is {max}")
            }
            RecordError::BadParts => write!(
                f,
                "a frame's parts must each hold at least one record, cover all its records, and come without a frame-wide producer key"
            ),
        }
    }
}

impl WalError {
    pub(crate) fn corrupted(segment: SegmentId, offset: u64, kind: Corruption) -> Self {
        WalError::CorruptedEntry {
            segment,
            offset,
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_keep_their_variant() {
        let cases = [
            WalError::InvalidRecord(RecordError::EmptyTenant),
            WalError::FrameTooLarge {
                bytes: 2,
                limit_bytes: 1,
            },
            WalError::InvalidSequence {
                what: "log index",
                got: 3,
                rule: SequenceRule::Exactly(2),
            },
            WalError::from(io::Error::from(io::ErrorKind::PermissionDenied)),
            WalError::Fatal(Arc::new(io::Error::other("disk"))),
        ];
        for e in cases {
            let d = e.clone();
            assert_eq!(std::mem::discriminant(&e), std::mem::discriminant(&d));
            assert_eq!(e.to_string(), d.to_string());
        }
    }
}
