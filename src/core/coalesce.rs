//! Leader-side coalescing: writes that wait at the leader together go to Raft as one entry (one
//! WAL frame, one replication message, one apply), each keeping its own result.
//!
//! Writes queue in arrival order ([`Coalescer::enqueue`]); one task takes them in that order
//! and submits them. At most `coalesce_max_proposals` entries are submitted and not yet
//! answered at once: while that many are in flight (their fsync and replication under way), new
//! writes wait in the queue, and the next entry takes all of them, up to
//! `coalesce_max_entries` records and `coalesce_max_bytes` data bytes. A write that arrives
//! when nothing is in flight is submitted at once, alone: nothing waits on a timer.
//!
//! An entry of one write is an ordinary [`Request::Write`]; one of several is a
//! [`Request::Coalesced`] whose parts keep each write's key and record count, and whose result
//! (one contiguous range) is split by those counts. A keyed write carries the term its leader
//! checked (see [`super::producers`]) and an entry only holds writes of one such term, submitted
//! conditionally on it.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Written;
use crate::raft::log_store::WRITE_PATH;
use crate::raft::types::WriteRecord;
use crate::raft::{RaftNode, RaftOpError, Request, Response};
use crate::wal::{ProducerKey, WritePart};

/// What a queued write ends with.
pub type Reply = Result<Written, RaftOpError>;

/// The coalescer's bounds (the `limits.coalesce_*` keys).
#[derive(Clone, Copy, Debug)]
pub struct CoalesceLimits {
    /// Records in one coalesced entry at most (a single larger batch goes alone).
    pub max_entries: usize,
    /// Data bytes in one coalesced entry at most (a single larger batch goes alone).
    pub max_bytes: u64,
    /// Entries submitted and not yet answered at most.
    pub max_proposals: usize,
    /// Writes waiting in the queue at most; more wait to enter it.
    pub queue: usize,
}

struct Queued {
    producer: Option<ProducerKey>,
    /// The leader term a keyed write was checked in.
    term: Option<u64>,
    records: Vec<WriteRecord>,
    bytes: u64,
    timestamp: u64,
    reply: oneshot::Sender<Reply>,
}

/// The leader's write queue. Cheap to clone.
#[derive(Clone)]
pub struct Coalescer {
    tx: mpsc::Sender<Queued>,
}

impl Coalescer {
    /// Starts the task that submits queued writes to `raft`; it ends when every clone of the
    /// coalescer is dropped.
    pub fn start(
        raft: RaftNode,
        limits: CoalesceLimits,
        metrics: Option<prometheus::Histogram>,
    ) -> Coalescer {
        let (tx, rx) = mpsc::channel(limits.queue.max(1));
        tokio::spawn(run(raft, rx, limits, metrics));
        Coalescer { tx }
    }

    /// Queues a write; writes queued one after another (each `enqueue` awaited) enter the log in
    /// that order. The returned receiver answers once the write is applied or refused; the write
    /// goes on if it is dropped.
    pub async fn enqueue(
        &self,
        producer: Option<ProducerKey>,
        term: Option<u64>,
        records: Vec<WriteRecord>,
    ) -> Result<oneshot::Receiver<Reply>, RaftOpError> {
        let (reply, rx) = oneshot::channel();
        let bytes = records.iter().map(|r| r.data.len() as u64).sum();
        let timestamp = records.iter().map(|r| r.timestamp).max().unwrap_or(0);
        let q = Queued {
            producer,
            term,
            records,
            bytes,
            timestamp,
            reply,
        };
        self.tx
            .send(q)
            .await
            .map_err(|_| RaftOpError::Stopped("the write queue has stopped".to_owned()))?;
        Ok(rx)
    }
}

/// Waits for a queued write's answer.
pub async fn answer(rx: oneshot::Receiver<Reply>) -> Reply {
    rx.await.unwrap_or_else(|_| {
        Err(RaftOpError::Stopped(
            "the write queue dropped a write without an answer".to_owned(),
        ))
    })
}

async fn run(
    raft: RaftNode,
    mut rx: mpsc::Receiver<Queued>,
    limits: CoalesceLimits,
    metrics: Option<prometheus::Histogram>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_proposals.max(1)));
    let mut carry: Option<Queued> = None;
    loop {
        let first = match carry.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        // Waiting for a slot is the coalescing window: what queues meanwhile joins this entry.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        let (mut entries, mut bytes) = (batch[0].records.len(), batch[0].bytes);
        let mut term = batch[0].term;
        while let Ok(q) = rx.try_recv() {
            let other_term = q.term.is_some() && term.is_some() && q.term != term;
            if other_term
                || entries + q.records.len() > limits.max_entries
                || bytes + q.bytes > limits.max_bytes
            {
                carry = Some(q);
                break;
            }
            entries += q.records.len();
            bytes += q.bytes;
            term = term.or(q.term);
            batch.push(q);
        }
        if let Some(h) = &metrics {
            h.observe(batch.len() as f64);
        }
        let (request, waiters) = into_request(batch);
        tracing::trace!(target: WRITE_PATH, stage = "core.submit", writes = waiters.len());
        // The writers are answered where the outcome is known (see `RaftNode::submit`); if Raft
        // stops first, dropping the waiters answers them with an error.
        let waiting = std::sync::Arc::new(parking_lot::Mutex::new(Some(waiters)));
        let answered = waiting.clone();
        let done = move |result: Result<Response, RaftOpError>| {
            tracing::trace!(target: WRITE_PATH, stage = "core.answered", result = ?result.as_ref().ok());
            drop(slot);
            if let Some(waiters) = answered.lock().take() {
                answer_all(result, waiters);
            }
        };
        if let Err(e) = raft.submit(request, term, done).await
            && let Some(waiters) = waiting.lock().take()
        {
            answer_all(Err(e), waiters);
        }
    }
}

/// Who waits on an entry: per write, its record count, timestamp and reply.
type Waiters = Vec<(u64, u64, oneshot::Sender<Reply>)>;

fn into_request(mut batch: Vec<Queued>) -> (Request, Waiters) {
    let mut waiters = Vec::with_capacity(batch.len());
    if batch.len() == 1
        && let Some(q) = batch.pop()
    {
        waiters.push((q.records.len() as u64, q.timestamp, q.reply));
        let req = Request::Write {
            producer: q.producer,
            records: q.records,
        };
        return (req, waiters);
    }
    let total = batch.iter().map(|q| q.records.len()).sum();
    let mut records = Vec::with_capacity(total);
    let mut parts = Vec::with_capacity(batch.len());
    for mut q in batch {
        let n = q.records.len();
        parts.push(WritePart {
            producer: q.producer,
            records: n as u32,
        });
        records.append(&mut q.records);
        waiters.push((n as u64, q.timestamp, q.reply));
    }
    (Request::Coalesced { parts, records }, waiters)
}

/// Splits an entry's result among its writes, in order.
fn answer_all(result: Result<Response, RaftOpError>, waiters: Waiters) {
    let mut next = match &result {
        Ok(Response::Written { first_seq, .. }) => *first_seq,
        _ => 0,
    };
    for (n, timestamp, reply) in waiters {
        let r = match &result {
            Ok(Response::Written { .. }) => {
                let first_seq = next;
                next += n;
                Ok(Written {
                    first_seq,
                    last_seq: first_seq + n.saturating_sub(1),
                    timestamp_us: timestamp,
                    duplicate: false,
                })
            }
            Ok(other) => Err(RaftOpError::Rejected(format!(
                "unexpected reply to a write: {other:?}"
            ))),
            Err(e) => Err(e.clone()),
        };
        // A waiter that went away does not need its answer.
        let _ = reply.send(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Operation;

    fn queued(producer: Option<ProducerKey>, n: usize) -> (Queued, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        let records = (0..n)
            .map(|i| WriteRecord {
                tenant_id: "t".into(),
                operation: Operation::Insert,
                data: vec![i as u8; 10],
                timestamp: 100 + i as u64,
            })
            .collect();
        let q = Queued {
            producer,
            term: None,
            records,
            bytes: 10 * n as u64,
            timestamp: 99 + n as u64,
            reply,
        };
        (q, rx)
    }

    #[test]
    fn one_write_is_an_ordinary_entry_and_several_keep_their_keys() {
        let key = ProducerKey { id: 7, seq: 3 };
        let (a, _ra) = queued(Some(key), 2);
        let (req, waiters) = into_request(vec![a]);
        assert!(
            matches!(req, Request::Write { producer: Some(k), ref records } if k == key && records.len() == 2)
        );
        assert_eq!(waiters.len(), 1);

        let (a, _ra) = queued(Some(key), 2);
        let (b, _rb) = queued(None, 3);
        let (req, waiters) = into_request(vec![a, b]);
        let Request::Coalesced { parts, records } = req else {
            panic!("expected a coalesced entry, got {req:?}");
        };
        assert_eq!(records.len(), 5);
        assert_eq!(
            parts,
            [
                WritePart {
                    producer: Some(key),
                    records: 2
                },
                WritePart {
                    producer: None,
                    records: 3
                }
            ]
        );
        assert_eq!(waiters.iter().map(|w| w.0).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn an_entry_result_is_split_in_order_and_errors_reach_every_write() {
        let (a, mut ra) = queued(None, 2);
        let (b, mut rb) = queued(None, 1);
        let (_, waiters) = into_request(vec![a, b]);
        answer_all(
            Ok(Response::Written {
                first_seq: 10,
                last_seq: 12,
                timestamp: 0,
                duplicate: false,
            }),
            waiters,
        );
        let wa = ra.try_recv().unwrap().unwrap();
        let wb = rb.try_recv().unwrap().unwrap();
        assert_eq!((wa.first_seq, wa.last_seq, wa.timestamp_us), (10, 11, 101));
        assert_eq!((wb.first_seq, wb.last_seq, wb.timestamp_us), (12, 12, 100));

        let (a, mut ra) = queued(None, 2);
        let (b, mut rb) = queued(None, 1);
        let (_, waiters) = into_request(vec![a, b]);
        answer_all(Err(RaftOpError::OutcomeUnknown { leader: None }), waiters);
        assert!(ra.try_recv().unwrap().is_err());
        assert!(rb.try_recv().unwrap().is_err());
    }
}
