//! Checkpoints and truncation: created on the leader after a check against the committed log
//! (a new leader first applies every entry of earlier terms), replicated as Raft commands; read
//! by any in-sync replica from its state machine.

use super::{Core, CoreError, LEADER_READY};
use crate::raft::{Request, Response};
use crate::wal::SequenceNumber;
use crate::wire::check_name;

/// A named position in the log (of one tenant's entries, when it has a tenant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub name: String,
    pub tenant: Option<String>,
    pub sequence: SequenceNumber,
}

impl Core {
    /// Records checkpoint `name` at `sequence`, or at the last committed entry (of `tenant`,
    /// if given). Runs on the leader.
    pub async fn create_checkpoint(
        &self,
        name: String,
        tenant: Option<String>,
        sequence: Option<SequenceNumber>,
    ) -> Result<Checkpoint, CoreError> {
        check_name("checkpoint name", &name)?;
        if let Some(t) = &tenant {
            check_name("tenant", t)?;
        }
        // A new leader checks against a state that includes every committed entry.
        self.raft.wait_own_term_applied(LEADER_READY).await?;
        let sequence = self.checkpoint_position(&name, tenant.as_deref(), sequence)?;
        let cmd = Request::Checkpoint {
            name: name.clone(),
            tenant: tenant.clone(),
            sequence,
        };
        match self.raft.propose(cmd).await? {
            Response::Checkpoint { sequence } => Ok(Checkpoint {
                name,
                tenant,
                sequence,
            }),
            other => Err(CoreError::Internal(format!(
                "unexpected reply to a checkpoint: {other:?}"
            ))),
        }
    }

    /// Where a new checkpoint goes, checked against the applied state and the limit.
    fn checkpoint_position(
        &self,
        name: &str,
        tenant: Option<&str>,
        sequence: Option<SequenceNumber>,
    ) -> Result<SequenceNumber, CoreError> {
        let (next_seq, tenant_last, known, count) = self.sm.read(|img| {
            let tenant_last = tenant.map(|t| img.tenants.get(t).map_or(0, |s| s.last_seq));
            (
                img.next_seq,
                tenant_last,
                img.checkpoints.contains_key(name),
                img.checkpoints.len(),
            )
        });
        let max = self.limits.max_checkpoints;
        if !known && count >= max {
            return Err(CoreError::ResourceExhausted(format!(
                "{count} checkpoints exist, the limit is limits.max_checkpoints ({max})"
            )));
        }
        let sequence = match (sequence, tenant_last) {
            (Some(s), _) => s,
            (None, Some(0)) => {
                return Err(CoreError::FailedPrecondition(format!(
                    "tenant {:?} has no committed entry to checkpoint",
                    tenant.unwrap_or_default()
                )));
            }
            (None, Some(last)) => last,
            (None, None) if next_seq <= 1 => {
                return Err(CoreError::FailedPrecondition(
                    "the log has no committed entry to checkpoint".to_owned(),
                ));
            }
            (None, None) => next_seq - 1,
        };
        if sequence == 0 || sequence >= next_seq {
            return Err(CoreError::FailedPrecondition(format!(
                "checkpoint {name:?} at sequence {sequence}: positions go from 1 to the last committed sequence number ({})",
                next_seq - 1
            )));
        }
        Ok(sequence)
    }

    /// Drops the entries before `before` on every replica; returns the new log start. Runs on
    /// the leader.
    pub async fn truncate(&self, before: SequenceNumber) -> Result<SequenceNumber, CoreError> {
        self.raft.wait_own_term_applied(LEADER_READY).await?;
        let next = self.next_seq();
        if before == 0 {
            return Err(CoreError::InvalidArgument(
                "truncate needs `before` >= 1 (entries below it are dropped)".to_owned(),
            ));
        }
        if before > next {
            return Err(CoreError::FailedPrecondition(format!(
                "cannot truncate before {before}: it must be at most the last committed sequence number + 1 ({next})"
            )));
        }
        match self.raft.propose(Request::Truncate { before }).await? {
            Response::Truncated { log_start } => Ok(log_start),
            other => Err(CoreError::Internal(format!(
                "unexpected reply to a truncation: {other:?}"
            ))),
        }
    }

    /// Checkpoint `name`, read on this replica if it is in sync.
    pub fn checkpoint(&self, name: &str) -> Result<Checkpoint, CoreError> {
        check_name("checkpoint name", name)?;
        self.require_in_sync()?;
        self.sm
            .read(|i| i.checkpoints.get(name).cloned())
            .map(|c| Checkpoint {
                name: name.to_owned(),
                tenant: c.tenant,
                sequence: c.sequence,
            })
            .ok_or_else(|| CoreError::NotFound(format!("checkpoint {name:?} not found")))
    }

    /// The checkpoints (of `tenant`, if given), read on this replica if it is in sync.
    pub fn checkpoints(&self, tenant: Option<&str>) -> Result<Vec<Checkpoint>, CoreError> {
        self.require_in_sync()?;
        Ok(self.sm.read(|i| {
            i.checkpoints
                .iter()
                .filter(|(_, c)| tenant.is_none() || c.tenant.as_deref() == tenant)
                .map(|(name, c)| Checkpoint {
                    name: name.clone(),
                    tenant: c.tenant.clone(),
                    sequence: c.sequence,
                })
                .collect()
        }))
    }
}
