//! What a use case of the core can answer instead of a result: one typed error, each variant a
//! kind the caller can react to. Raft and WAL errors are classified here, once and
//! exhaustively (a new variant of either fails to compile until it is placed); the API turns
//! each kind into a gRPC status in one function (`api::error::to_status`).

use crate::raft::RaftOpError;
use crate::wal::WalError;
use crate::wire::{Invalid, NodeHint};

#[derive(Clone, Debug, thiserror::Error)]
pub enum CoreError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A configured limit (or disk space) would be exceeded.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A tenant's quota refused a write (nothing written): retry after `retry_after`, or (for
    /// retained bytes, `None`) once the log is truncated.
    #[error("{message}")]
    QuotaExceeded {
        message: String,
        retry_after: Option<std::time::Duration>,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("sequence {requested} is before the log start {log_start} (truncated)")]
    OutOfRange { requested: u64, log_start: u64 },
    /// The request is valid but the log's state refuses it (e.g. a position past the commit).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("checksum mismatch: {0}")]
    DataLoss(String),
    /// Ask the leader instead (when one is known).
    #[error("{message}")]
    NotLeader {
        message: String,
        leader: Option<NodeHint>,
    },
    /// The leader changed while the request replicated: it may or may not have committed.
    /// Retryable: a keyed write's retry is applied at most once.
    #[error("{message}")]
    OutcomeUnknown {
        message: String,
        leader: Option<NodeHint>,
    },
    /// This replica does not serve reads now; the leader does.
    #[error("{message}")]
    NotInSync {
        message: String,
        leader: Option<NodeHint>,
    },
    /// Not now (stopping, overloaded, storage failed): retryable elsewhere or later.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The read raced a truncation; read again.
    #[error("{0}")]
    Aborted(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Invalid> for CoreError {
    fn from(e: Invalid) -> Self {
        CoreError::InvalidArgument(e.0)
    }
}

impl From<WalError> for CoreError {
    fn from(e: WalError) -> Self {
        let msg = e.to_string();
        match e {
            WalError::SegmentNotFound(_) | WalError::CheckpointNotFound(_) => {
                CoreError::NotFound(msg)
            }
            WalError::CorruptedEntry { .. } => CoreError::DataLoss(msg),
            WalError::InsufficientSpace { .. }
            | WalError::FrameTooLarge { .. }
            | WalError::TooManyCheckpoints { .. } => CoreError::ResourceExhausted(msg),
            WalError::BeforeLogStart {
                requested,
                log_start,
            } => CoreError::OutOfRange {
                requested,
                log_start,
            },
            WalError::InvalidSequence { .. } => CoreError::FailedPrecondition(msg),
            WalError::InvalidRecord(_) => CoreError::InvalidArgument(msg),
            WalError::TruncatedWhileReading { .. } => CoreError::Aborted(msg),
            WalError::Fatal(_) | WalError::Closed => CoreError::Unavailable(msg),
            WalError::Io(_)
            | WalError::InvalidConfig { .. }
            | WalError::Locked(_)
            | WalError::RepairRefused { .. } => CoreError::Internal(msg),
        }
    }
}

impl From<RaftOpError> for CoreError {
    fn from(e: RaftOpError) -> Self {
        let message = e.to_string();
        match e {
            RaftOpError::NotLeader { leader } => CoreError::NotLeader { message, leader },
            RaftOpError::OutcomeUnknown { leader } => CoreError::OutcomeUnknown { message, leader },
            RaftOpError::Rejected(_) => CoreError::FailedPrecondition(message),
            RaftOpError::Timeout(_) => CoreError::DeadlineExceeded(message),
            RaftOpError::Stopped(_) => CoreError::Unavailable(message),
        }
    }
}

impl From<tokio::task::JoinError> for CoreError {
    fn from(e: tokio::task::JoinError) -> Self {
        CoreError::Internal(format!("a blocking task failed: {e}"))
    }
}
