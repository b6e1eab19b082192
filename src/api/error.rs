//! The public API's errors and their one mapping to gRPC status codes ([`to_status`]).
//!
//! Every failure a client can see goes through [`ApiError`]: node, Raft and WAL errors convert
//! into it, and [`to_status`] is the only place that picks a code. "Not leader" answers carry a
//! `google.rpc.ErrorInfo` detail with the leader's id and address, which clients follow.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::node::NodeError;
use crate::raft::{NodeId, RaftOpError};
use crate::wal::WalError;

/// `ErrorInfo.domain` of replog's errors.
pub const ERROR_DOMAIN: &str = "replog";
/// `ErrorInfo.reason` of an answer that names the leader to ask instead.
pub const REASON_NOT_LEADER: &str = "NOT_LEADER";
/// `ErrorInfo.reason` of a replica that will not serve reads (behind or cut off).
pub const REASON_NOT_IN_SYNC: &str = "NOT_IN_SYNC";
/// `ErrorInfo.reason` of a write whose outcome the server cannot know (the leader changed
/// while it replicated): retry it with the same idempotency key, on the leader named.
pub const REASON_OUTCOME_UNKNOWN: &str = "OUTCOME_UNKNOWN";
pub const META_LEADER_ID: &str = "leader_id";
pub const META_LEADER_ADDRESS: &str = "leader_address";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A configured limit (or disk space) would be exceeded.
    #[error("{0}")]
    ResourceExhausted(String),
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
        leader: Option<(NodeId, String)>,
    },
    /// The leader changed while the request replicated: it may or may not have committed.
    /// Retryable (UNAVAILABLE): a keyed write's retry is applied at most once.
    #[error("{message}")]
    OutcomeUnknown {
        message: String,
        leader: Option<(NodeId, String)>,
    },
    /// This replica does not serve reads now; the leader does.
    #[error("{message}")]
    NotInSync {
        message: String,
        leader: Option<(NodeId, String)>,
    },
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

impl From<WalError> for ApiError {
    fn from(e: WalError) -> Self {
        let msg = e.to_string();
        match e {
            WalError::SegmentNotFound(_) | WalError::CheckpointNotFound(_) => {
                ApiError::NotFound(msg)
            }
            WalError::CorruptedEntry { .. } => ApiError::DataLoss(msg),
            WalError::InsufficientSpace { .. }
            | WalError::FrameTooLarge { .. }
            | WalError::TooManyCheckpoints { .. } => ApiError::ResourceExhausted(msg),
            WalError::BeforeLogStart {
                requested,
                log_start,
            } => ApiError::OutOfRange {
                requested,
                log_start,
            },
            WalError::InvalidSequence { .. } => ApiError::FailedPrecondition(msg),
            WalError::InvalidRecord(_) => ApiError::InvalidArgument(msg),
            WalError::TruncatedWhileReading { .. } => ApiError::Aborted(msg),
            WalError::Fatal(_) | WalError::Closed => ApiError::Unavailable(msg),
            _ => ApiError::Internal(msg),
        }
    }
}

impl From<RaftOpError> for ApiError {
    fn from(e: RaftOpError) -> Self {
        let message = e.to_string();
        match e {
            RaftOpError::NotLeader { leader } => ApiError::NotLeader { message, leader },
            RaftOpError::OutcomeUnknown { leader } => ApiError::OutcomeUnknown { message, leader },
            RaftOpError::Rejected(_) => ApiError::FailedPrecondition(message),
            RaftOpError::Timeout(_) => ApiError::DeadlineExceeded(message),
            RaftOpError::Stopped(_) => ApiError::Unavailable(message),
        }
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Raft(e) => e.into(),
            NodeError::Wal(e) => e.into(),
            NodeError::InvalidArgument(m) => ApiError::InvalidArgument(m),
            NodeError::Overloaded(m) => ApiError::Unavailable(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The one mapping from an API error to what the client receives.
pub fn to_status(e: ApiError) -> Status {
    let message = e.to_string();
    let code = match &e {
        ApiError::InvalidArgument(_) => Code::InvalidArgument,
        ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
        ApiError::NotFound(_) => Code::NotFound,
        ApiError::OutOfRange { .. } => Code::OutOfRange,
        ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
        ApiError::DataLoss(_) => Code::DataLoss,
        ApiError::NotLeader { .. }
        | ApiError::NotInSync { .. }
        | ApiError::OutcomeUnknown { .. }
        | ApiError::Unavailable(_) => Code::Unavailable,
        ApiError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        ApiError::Aborted(_) => Code::Aborted,
        ApiError::Internal(_) => Code::Internal,
    };
    let (reason, leader) = match e {
        ApiError::NotLeader { leader, .. } => (REASON_NOT_LEADER, leader),
        ApiError::NotInSync { leader, .. } => (REASON_NOT_IN_SYNC, leader),
        ApiError::OutcomeUnknown { leader, .. } => (REASON_OUTCOME_UNKNOWN, leader),
        _ => return Status::new(code, message),
    };
    let mut meta = HashMap::new();
    if let Some((id, addr)) = leader {
        meta.insert(META_LEADER_ID.to_owned(), id.to_string());
        meta.insert(META_LEADER_ADDRESS.to_owned(), addr);
    }
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, meta),
    )
}

/// The leader a status names in its `ErrorInfo`, if any.
pub fn leader_hint(status: &Status) -> Option<(NodeId, String)> {
    let info = status.get_details_error_info()?;
    if info.domain != ERROR_DOMAIN {
        return None;
    }
    let id = info.metadata.get(META_LEADER_ID)?.parse().ok()?;
    let addr = info.metadata.get(META_LEADER_ADDRESS)?.clone();
    Some((id, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_carries_the_leader() {
        let s = to_status(ApiError::NotLeader {
            message: "not the leader".into(),
            leader: Some((3, "10.0.0.3:7400".into())),
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(leader_hint(&s), Some((3, "10.0.0.3:7400".to_owned())));
        let s = to_status(ApiError::NotFound("checkpoint \"x\" not found".into()));
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(leader_hint(&s), None);
    }

    #[test]
    fn an_unknown_outcome_is_retryable_and_names_the_new_leader() {
        let e = RaftOpError::OutcomeUnknown {
            leader: Some((2, "10.0.0.2:7400".into())),
        };
        let s = to_status(e.into());
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(leader_hint(&s), Some((2, "10.0.0.2:7400".to_owned())));
        assert_eq!(
            s.get_details_error_info().map(|i| i.reason),
            Some(REASON_OUTCOME_UNKNOWN.to_owned())
        );
        assert!(!s.message().contains("deduplicate"), "{}", s.message());
    }

    #[test]
    fn wal_errors_map_to_documented_codes() {
        let code = |e: WalError| to_status(e.into()).code();
        assert_eq!(code(WalError::SegmentNotFound(4)), Code::NotFound);
        assert_eq!(
            code(WalError::BeforeLogStart {
                requested: 1,
                log_start: 9
            }),
            Code::OutOfRange
        );
        assert_eq!(
            code(WalError::InsufficientSpace {
                dir: "/d".into(),
                available_bytes: 1,
                required_bytes: 2
            }),
            Code::ResourceExhausted
        );
        assert_eq!(
            code(WalError::CheckpointNotFound("c".into())),
            Code::NotFound
        );
    }
}
