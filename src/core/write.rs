//! Writes: a batch of records checked against the limits, stamped with one timestamp and
//! proposed through Raft as one atomic entry; with a producer key, proposed at most once
//! ([`super::producers`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use super::producers::Outcome;
use super::{Core, CoreError, LEADER_READY, NewRecord, Written, coalesce, contact, producers};
use crate::raft::RaftOpError;
use crate::raft::types::WriteRecord;
use crate::wal::ProducerKey;
use crate::wire::check_name;

/// Other writes of one producer a keyed write waits behind at most (see `submit_keyed`).
const MAX_KEYED_TURNS: usize = 64;

/// A write queued at the leader, to be awaited for its result (see [`Core::submit_write`]).
pub type PendingWrite = Pin<Box<dyn Future<Output = Result<Written, CoreError>> + Send>>;

impl Core {
    /// Writes records as one atomic batch through Raft (on the leader). With a producer key,
    /// the key is proposed at most once ([`producers`]): a retry of a write applied or in
    /// flight returns the original result and writes nothing.
    pub async fn write(
        &self,
        producer: Option<ProducerKey>,
        records: Vec<NewRecord>,
    ) -> Result<Written, CoreError> {
        self.submit_write(producer, records).await?.await
    }

    /// Queues a write at the leader and returns its pending result. Writes submitted one after
    /// another (each `submit_write` awaited before the next) enter the log in that order, which
    /// is what lets a producer pipeline its keyed writes: the pending results may be awaited
    /// together. The write goes on if its pending result is dropped.
    pub async fn submit_write(
        &self,
        producer: Option<ProducerKey>,
        records: Vec<NewRecord>,
    ) -> Result<PendingWrite, CoreError> {
        let records = self.stamped(records)?;
        if self.quotas.active() {
            self.quotas
                .admit_keyed_write(producer, &demands(&records))?;
        }
        let started = Instant::now();
        let answer: Pin<Box<dyn Future<Output = Outcome> + Send>> = match producer {
            None => {
                let rx = self.writes.enqueue(None, None, records).await?;
                Box::pin(coalesce::answer(rx))
            }
            Some(key) => match self.submit_keyed(key, records).await? {
                Keyed::Done(w) => return Ok(Box::pin(std::future::ready(Ok(w)))),
                Keyed::Pending { outcome, retry } => Box::pin(async move {
                    let w = producers::outcome(outcome).await?;
                    // A retry of a write in flight gets the first attempt's outcome.
                    Ok(Written {
                        duplicate: w.duplicate || retry,
                        ..w
                    })
                }),
            },
        };
        let quorum_lost = self.lost.quorum_lost.clone();
        let histogram = self.metrics.write_duration.clone();
        Ok(Box::pin(async move {
            let written = unless_contact_lost(&quorum_lost, answer).await?;
            histogram.observe(started.elapsed().as_secs_f64());
            Ok(written)
        }))
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
        let mut tenants = crate::raft::types::TenantRun::default();
        for (i, r) in records.into_iter().enumerate() {
            check_name("tenant", &r.tenant)?;
            let len = r.data.len() as u64;
            if len > l.max_entry_bytes.as_u64() {
                return Err(CoreError::ResourceExhausted(format!(
                    "entry {} of the batch has {len} bytes of data, more than limits.max_entry_bytes ({} bytes)",
                    i + 1,
                    l.max_entry_bytes.as_u64()
                )));
            }
            total += len;
            out.push(WriteRecord {
                tenant_id: tenants.share(&r.tenant),
                operation: r.operation,
                data: r.data.into(),
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

    /// The ordered part of a keyed write: answered from the table, or waiting on a proposal
    /// already in flight with this key, or queued now.
    async fn submit_keyed(
        &self,
        key: ProducerKey,
        records: Vec<WriteRecord>,
    ) -> Result<Keyed, CoreError> {
        // Each turn waits for a real proposal of this producer to end, so the bound is only
        // reached by a producer that breaks its order (older keys sent after newer ones).
        for _ in 0..MAX_KEYED_TURNS {
            // Once the leader has applied an entry of its own term its table holds every key
            // of earlier terms; the ledger holds the ones it proposed since.
            self.raft.wait_own_term_applied(LEADER_READY).await?;
            let step = self
                .keyed
                .begin(key, &self.sm, || self.raft.own_term_applied())?;
            match step {
                producers::Step::Applied(p) => {
                    return Ok(Keyed::Done(Written {
                        first_seq: p.first_seq,
                        last_seq: p.last_seq,
                        timestamp_us: p.timestamp,
                        duplicate: true,
                    }));
                }
                // A retry of a write in flight: the first attempt's outcome.
                producers::Step::Wait { seq, outcome } if seq == key.seq => {
                    return Ok(Keyed::Pending {
                        outcome,
                        retry: true,
                    });
                }
                // A newer write of this producer is in flight: look again once it ended.
                producers::Step::Wait { outcome, .. } => {
                    let quorum_lost = self.lost.quorum_lost.clone();
                    let _ = unless_contact_lost(&quorum_lost, producers::outcome(outcome)).await;
                }
                // Leadership moved since the wait: the wait answers with the new leader.
                producers::Step::NotReady => {}
                producers::Step::Propose {
                    publish,
                    outcome,
                    term,
                } => {
                    // Queued here, in the caller's order (a producer's pipeline keeps its
                    // order); if the caller goes away before it is queued, `publish` drops
                    // and the key leaves the ledger unproposed.
                    let queued = self.writes.enqueue(Some(key), Some(term), records).await;
                    // The proposal belongs to the leader, not to this request: it goes on
                    // (and publishes its outcome) if the caller goes away.
                    tokio::spawn(async move {
                        let result = match queued {
                            Ok(rx) => coalesce::answer(rx).await,
                            Err(e) => Err(e),
                        };
                        publish.finish(result);
                    });
                    return Ok(Keyed::Pending {
                        outcome,
                        retry: false,
                    });
                }
            }
        }
        Err(CoreError::Unavailable(format!(
            "producer {} had {MAX_KEYED_TURNS} newer writes in flight while write {} waited (a producer sends its writes in producer_seq order)",
            key.id, key.seq
        )))
    }
}

/// Where a keyed write stands once submitted.
enum Keyed {
    /// Applied before: the original result.
    Done(Written),
    /// In flight: its outcome (`retry`: proposed by an earlier attempt of this key).
    Pending {
        outcome: tokio::sync::watch::Receiver<Option<Outcome>>,
        retry: bool,
    },
}

/// Awaits `outcome`, unless this node, as leader, loses its quorum first: then the answer is
/// "outcome unknown" (retryable, and safe to retry with the same key) at once, instead of when
/// the partition heals. openraft keeps such a proposal pending (it may still commit if the
/// quorum comes back), and a retry elsewhere finds a new leader. A keyed proposal goes on in its
/// own task and keeps its key until it ends, so a retry here waits for it.
async fn unless_contact_lost<T>(
    quorum_lost: &tokio::sync::watch::Receiver<bool>,
    outcome: impl Future<Output = Result<T, RaftOpError>>,
) -> Result<T, RaftOpError> {
    tokio::select! {
        r = outcome => r,
        () = contact::until(quorum_lost) => Err(RaftOpError::OutcomeUnknown { leader: None }),
    }
}

/// A batch's entries and data bytes per tenant, in order of first appearance.
fn demands(records: &[WriteRecord]) -> Vec<super::quota::Demand<'_>> {
    let mut out: Vec<super::quota::Demand<'_>> = Vec::new();
    for r in records {
        let bytes = r.data.len() as u64;
        match out.iter_mut().find(|d| d.tenant == &*r.tenant_id) {
            Some(d) => {
                d.entries += 1;
                d.bytes += bytes;
            }
            None => out.push(super::quota::Demand {
                tenant: &r.tenant_id,
                entries: 1,
                bytes,
            }),
        }
    }
    out
}
