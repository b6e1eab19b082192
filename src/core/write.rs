//! Writes: a batch of records checked against the limits, stamped with one timestamp and
//! proposed through Raft as one atomic entry; with a producer key, proposed at most once
//! ([`super::producers`]).

use std::future::Future;
use std::time::Instant;

use super::{Core, CoreError, LEADER_READY, NewRecord, Written, contact, producers};
use crate::raft::types::WriteRecord;
use crate::raft::{RaftNode, RaftOpError, Request, Response};
use crate::wal::ProducerKey;
use crate::wire::check_name;

/// Other writes of one producer a keyed write waits behind at most (see `write_keyed`).
const MAX_KEYED_TURNS: usize = 64;

impl Core {
    /// Writes records as one atomic batch through Raft (on the leader). With a producer key,
    /// the key is proposed at most once ([`producers`]): a retry of a write applied or in
    /// flight returns the original result and writes nothing.
    pub async fn write(
        &self,
        producer: Option<ProducerKey>,
        records: Vec<NewRecord>,
    ) -> Result<Written, CoreError> {
        let records = self.stamped(records)?;
        let started = Instant::now();
        let written = match producer {
            None => {
                self.unless_contact_lost(propose_write(&self.raft, None, records))
                    .await?
            }
            Some(key) => self.write_keyed(key, records).await?,
        };
        self.metrics
            .write_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(written)
    }

    /// Checks a batch against the limits and turns it into records stamped with one timestamp.
    fn stamped(&self, records: Vec<NewRecord>) -> Result<Vec<WriteRecord>, CoreError> {
        let l = &self.limits;
        if records.is_empty() {
            return Err(CoreError::InvalidArgument(
                "a batch needs at least one entry".to_owned(),
            ));
        }
        if records.len() > l.max_batch_entries {
            return Err(CoreError::ResourceExhausted(format!(
                "a batch of {} entries exceeds limits.max_batch_entries ({})",
                records.len(),
                l.max_batch_entries
            )));
        }
        let mut total = 0u64;
        let timestamp = crate::wal::now_us();
        let mut out = Vec::with_capacity(records.len());
        for (i, r) in records.into_iter().enumerate() {
            check_name("tenant", &r.tenant)?;
            let len = r.data.len() as u64;
            if len > l.max_entry_bytes.as_u64() {
                return Err(CoreError::ResourceExhausted(format!(
                    "entry {i} has {len} bytes of data, more than limits.max_entry_bytes ({} bytes)",
                    l.max_entry_bytes.as_u64()
                )));
            }
            total += len;
            out.push(WriteRecord {
                tenant_id: r.tenant,
                operation: r.operation,
                data: r.data,
                timestamp,
            });
        }
        if total > l.max_batch_bytes.as_u64() {
            return Err(CoreError::ResourceExhausted(format!(
                "a batch of {total} data bytes exceeds limits.max_batch_bytes ({} bytes)",
                l.max_batch_bytes.as_u64()
            )));
        }
        Ok(out)
    }

    /// Awaits `outcome`, unless this node, as leader, loses its quorum first: then the answer
    /// is "outcome unknown" (retryable, and safe to retry with the same key) at once, instead of
    /// when the partition heals. openraft keeps such a proposal pending (it may still commit if
    /// the quorum comes back), and a retry elsewhere finds a new leader. A keyed proposal goes on
    /// in its own task and keeps its key until it ends, so a retry here waits for it.
    async fn unless_contact_lost<T>(
        &self,
        outcome: impl Future<Output = Result<T, RaftOpError>>,
    ) -> Result<T, RaftOpError> {
        tokio::select! {
            r = outcome => r,
            () = contact::until(&self.lost.quorum_lost) => Err(RaftOpError::OutcomeUnknown { leader: None }),
        }
    }

    async fn write_keyed(
        &self,
        key: ProducerKey,
        records: Vec<WriteRecord>,
    ) -> Result<Written, CoreError> {
        // Each turn waits for a real proposal of this producer to end, so the bound is only
        // reached by a producer that breaks the one-write-at-a-time contract.
        for _ in 0..MAX_KEYED_TURNS {
            // Once the leader has applied an entry of its own term its table holds every key
            // of earlier terms; the ledger holds the ones it proposed since.
            self.raft.wait_own_term_applied(LEADER_READY).await?;
            let step = self
                .keyed
                .begin(key, &self.sm, || self.raft.own_term_applied())?;
            match step {
                producers::Step::Applied(p) => {
                    return Ok(Written {
                        first_seq: p.first_seq,
                        last_seq: p.last_seq,
                        timestamp_us: p.timestamp,
                        duplicate: true,
                    });
                }
                producers::Step::Wait { seq, outcome } => {
                    let result = self.unless_contact_lost(producers::outcome(outcome)).await;
                    if seq == key.seq {
                        // A retry of a write in flight: the first attempt's outcome.
                        let w = result?;
                        return Ok(Written {
                            duplicate: true,
                            ..w
                        });
                    }
                    // Another write of this producer was in flight: look again.
                }
                // Leadership moved since the wait: the wait answers with the new leader.
                producers::Step::NotReady => {}
                producers::Step::Propose { publish, outcome } => {
                    let raft = self.raft.clone();
                    // The proposal belongs to the leader, not to this request: it goes on
                    // (and publishes its outcome) if the caller goes away.
                    tokio::spawn(async move {
                        let result = propose_write(&raft, Some(key), records).await;
                        publish.finish(result);
                    });
                    return Ok(self
                        .unless_contact_lost(producers::outcome(outcome))
                        .await?);
                }
            }
        }
        Err(CoreError::Unavailable(format!(
            "producer {} had {MAX_KEYED_TURNS} other writes in flight while write {} waited (one write at a time per producer id)",
            key.id, key.seq
        )))
    }
}

/// Proposes a write and returns what applying it answered.
async fn propose_write(
    raft: &RaftNode,
    producer: Option<ProducerKey>,
    records: Vec<WriteRecord>,
) -> Result<Written, RaftOpError> {
    let n = records.len() as u64;
    match raft.propose(Request::Write { producer, records }).await? {
        Response::Written {
            first_seq,
            last_seq,
            timestamp: timestamp_us,
            duplicate,
        } => {
            // A batch takes consecutive sequence numbers (a duplicate answers the original's).
            debug_assert!(
                duplicate || last_seq + 1 - first_seq == n,
                "batch of {n} got {first_seq}..={last_seq}"
            );
            Ok(Written {
                first_seq,
                last_seq,
                timestamp_us,
                duplicate,
            })
        }
        other => Err(RaftOpError::Rejected(format!(
            "unexpected reply to a write: {other:?}"
        ))),
    }
}
