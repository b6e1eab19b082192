//! The wire contract between nodes and clients, beyond the `replog.v1` messages themselves:
//! what an error status carries (`google.rpc.ErrorInfo` reasons and metadata keys, the leader
//! hint), the names of status codes, the forwarding header, the rule for tenant and checkpoint
//! names, and the operation values.
//!
//! Both sides use this module: the server's API ([`crate::api`]) writes these details and the
//! client ([`crate::client`]) reads them, so the two cannot drift apart. It depends on the
//! generated protos and tonic only; it knows nothing of the server's internals (WAL, Raft, the
//! node), which is what lets the client stay a client.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::proto;

/// `ErrorInfo.domain` of replog's errors.
pub const ERROR_DOMAIN: &str = "replog";
/// `ErrorInfo.reason` of an answer that names the leader to ask instead.
pub const REASON_NOT_LEADER: &str = "NOT_LEADER";
/// `ErrorInfo.reason` of a replica that will not serve reads (behind or cut off).
pub const REASON_NOT_IN_SYNC: &str = "NOT_IN_SYNC";
/// `ErrorInfo.reason` of a write whose outcome the server cannot know (the leader changed
/// while it replicated): retry it with the same idempotency key, on the leader named.
pub const REASON_OUTCOME_UNKNOWN: &str = "OUTCOME_UNKNOWN";
/// `ErrorInfo.metadata` key of the leader's node id.
pub const META_LEADER_ID: &str = "leader_id";
/// `ErrorInfo.metadata` key of the leader's address (`host:port`).
pub const META_LEADER_ADDRESS: &str = "leader_address";

/// Header naming the node that forwarded a request to the leader: a node that receives it and
/// is not the leader answers with its hint instead of forwarding again.
pub const FORWARDED_BY: &str = "replog-forwarded-by";

/// Longest tenant id or checkpoint name, in characters.
pub const NAME_MAX_CHARS: usize = 128;

/// A node the cluster names (id and address), e.g. the leader to ask instead.
pub type NodeHint = (u64, String);

/// A status with a replog `ErrorInfo` of `reason`, naming `leader` when it is known.
pub fn status_with_reason(
    code: Code,
    message: String,
    reason: &str,
    leader: Option<NodeHint>,
) -> Status {
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

/// A tenant went over a quota: RESOURCE_EXHAUSTED.
pub const REASON_QUOTA_EXCEEDED: &str = "QUOTA_EXCEEDED";

/// RESOURCE_EXHAUSTED for a quota, with a `google.rpc.RetryInfo` when waiting helps.
pub fn quota_status(message: String, retry_after: Option<std::time::Duration>) -> Status {
    let mut details =
        ErrorDetails::with_error_info(REASON_QUOTA_EXCEEDED, ERROR_DOMAIN, HashMap::new());
    if let Some(d) = retry_after {
        details.set_retry_info(Some(d));
    }
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

/// How long the server asks to wait before retrying (`google.rpc.RetryInfo`), if it does.
pub fn retry_delay(status: &Status) -> Option<std::time::Duration> {
    status.get_details_retry_info()?.retry_delay
}

/// The `ErrorInfo.reason` of a replog status, if it has one.
pub fn reason(status: &Status) -> Option<String> {
    let info = status.get_details_error_info()?;
    (info.domain == ERROR_DOMAIN).then_some(info.reason)
}

/// The leader a status names in its `ErrorInfo`, if any.
pub fn leader_hint(status: &Status) -> Option<NodeHint> {
    let info = status.get_details_error_info()?;
    if info.domain != ERROR_DOMAIN {
        return None;
    }
    let id = info.metadata.get(META_LEADER_ID)?.parse().ok()?;
    let addr = info.metadata.get(META_LEADER_ADDRESS)?.clone();
    Some((id, addr))
}

/// The canonical upper-snake name of a code (as grpc-go prints them).
pub fn code_name(c: Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A value the wire contract does not allow (a bad name or operation), with the message the
/// caller gets (INVALID_ARGUMENT).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Checks a tenant id or checkpoint name (`what` names it in the message): 1-128 characters of
/// `[A-Za-z0-9._-]`.
pub fn check_name(what: &str, s: &str) -> Result<(), Invalid> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if s.is_empty() || s.len() > NAME_MAX_CHARS {
        return Err(Invalid(format!(
            "{what} must be 1-{NAME_MAX_CHARS} characters, got {}",
            s.len()
        )));
    }
    if let Some(c) = s.chars().find(|c| !ok_char(*c)) {
        return Err(Invalid(format!(
            "{what} {s:?} contains {c:?}: only [A-Za-z0-9._-] are allowed"
        )));
    }
    Ok(())
}

/// The operation of an `operation` field: one of INSERT, UPDATE, DELETE (UNSPECIFIED and
/// unknown values are refused). Its value is also the operation's code in the WAL's records
/// and in the entry checksum (1, 2, 3).
pub fn operation(v: i32) -> Result<proto::Operation, Invalid> {
    match proto::Operation::try_from(v) {
        Ok(
            op @ (proto::Operation::Insert | proto::Operation::Update | proto::Operation::Delete),
        ) => Ok(op),
        _ => Err(Invalid(format!(
            "operation {v} is not one of OPERATION_INSERT (1), OPERATION_UPDATE (2), OPERATION_DELETE (3)"
        ))),
    }
}

/// The code of an operation in records and checksums (its protobuf value, 1-3).
pub fn operation_code(op: proto::Operation) -> u8 {
    // The enum's values are 0-3 (checked by `operation_codes_are_the_proto_values`).
    op as u8
}

/// A failed write of a `Produce` stream, as its answer carries it: the status a unary call
/// would have had (code, message and details).
pub fn produce_error(status: &Status) -> proto::ProduceError {
    proto::ProduceError {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: status.details().to_vec(),
    }
}

/// The status a `Produce` answer's error stands for (the inverse of [`produce_error`]).
pub fn produce_status(e: proto::ProduceError) -> Status {
    Status::with_details(Code::from(e.code), e.message, e.details.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_carries_its_reason_and_leader() {
        let s = status_with_reason(
            Code::Unavailable,
            "not the leader".into(),
            REASON_NOT_LEADER,
            Some((3, "10.0.0.3:7400".into())),
        );
        assert_eq!(leader_hint(&s), Some((3, "10.0.0.3:7400".to_owned())));
        assert_eq!(reason(&s).as_deref(), Some(REASON_NOT_LEADER));
        assert_eq!(leader_hint(&Status::unavailable("x")), None);
    }

    #[test]
    fn names_follow_the_rule() {
        assert!(check_name("tenant", "acme-1.eu_west").is_ok());
        assert!(check_name("tenant", "").is_err());
        assert!(check_name("tenant", &"a".repeat(NAME_MAX_CHARS + 1)).is_err());
        assert!(check_name("tenant", "a/b").is_err());
    }

    #[test]
    fn operation_codes_are_the_proto_values() {
        assert_eq!(operation(1), Ok(proto::Operation::Insert));
        assert_eq!(operation(3), Ok(proto::Operation::Delete));
        assert!(operation(0).is_err() && operation(4).is_err());
        let codes = [
            proto::Operation::Insert,
            proto::Operation::Update,
            proto::Operation::Delete,
        ]
        .map(operation_code);
        assert_eq!(codes, [1, 2, 3]);
    }
}
