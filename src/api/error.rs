//! The one mapping of the core's errors to the gRPC statuses clients receive ([`to_status`]).
//!
//! Every failure a client can see is a [`CoreError`] (node, Raft and WAL errors are classified
//! there); this is the only place that picks a code. "Not leader", "not in sync" and "outcome
//! unknown" answers carry a `google.rpc.ErrorInfo` detail with the leader's id and address
//! ([`crate::wire`]), which clients follow.

use tonic::{Code, Status};

use crate::core::CoreError;
use crate::wire::{
    REASON_NOT_IN_SYNC, REASON_NOT_LEADER, REASON_OUTCOME_UNKNOWN, status_with_reason,
};

/// The one mapping from an error to what the client receives.
pub fn to_status(e: CoreError) -> Status {
    let message = e.to_string();
    let code = match &e {
        CoreError::InvalidArgument(_) => Code::InvalidArgument,
        CoreError::ResourceExhausted(_) | CoreError::QuotaExceeded { .. } => {
            Code::ResourceExhausted
        }
        CoreError::NotFound(_) => Code::NotFound,
        CoreError::OutOfRange { .. } => Code::OutOfRange,
        CoreError::FailedPrecondition(_) => Code::FailedPrecondition,
        CoreError::DataLoss(_) => Code::DataLoss,
        CoreError::NotLeader { .. }
        | CoreError::NotInSync { .. }
        | CoreError::OutcomeUnknown { .. }
        | CoreError::Unavailable(_) => Code::Unavailable,
        CoreError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        CoreError::Aborted(_) => Code::Aborted,
        CoreError::Internal(_) => Code::Internal,
    };
    let (reason, leader) = match e {
        CoreError::QuotaExceeded { retry_after, .. } => {
            return crate::wire::quota_status(message, retry_after);
        }
        CoreError::NotLeader { leader, .. } => (REASON_NOT_LEADER, leader),
        CoreError::NotInSync { leader, .. } => (REASON_NOT_IN_SYNC, leader),
        CoreError::OutcomeUnknown { leader, .. } => (REASON_OUTCOME_UNKNOWN, leader),
        CoreError::InvalidArgument(_)
        | CoreError::ResourceExhausted(_)
        | CoreError::NotFound(_)
        | CoreError::OutOfRange { .. }
        | CoreError::FailedPrecondition(_)
        | CoreError::DataLoss(_)
        | CoreError::Unavailable(_)
        | CoreError::DeadlineExceeded(_)
        | CoreError::Aborted(_)
        | CoreError::Internal(_) => return Status::new(code, message),
    };
    status_with_reason(code, message, reason, leader)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::RaftOpError;
    use crate::wal::WalError;
    use crate::wire::{leader_hint, reason};

    #[test]
    fn not_leader_carries_the_leader() {
        let s = to_status(CoreError::NotLeader {
            message: "not the leader".into(),
            leader: Some((3, "10.0.0.3:7400".into())),
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(leader_hint(&s), Some((3, "10.0.0.3:7400".to_owned())));
        let s = to_status(CoreError::NotFound("checkpoint \"x\" not found".into()));
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
        assert_eq!(reason(&s), Some(REASON_OUTCOME_UNKNOWN.to_owned()));
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
