//! Leader-side coalescing: writes that wait at the leader together go to Raft as one entry (one
//! WAL frame, one replication message, one apply), each keeping its own result.
//!
//! Writes queue in arrival order ([`Coalescer::enqueue`]); one task takes them in that order
//! and submits them, each entry up to `coalesce_max_entries` records and `coalesce_max_bytes`
//! data bytes. When an entry goes:
//! - with nothing in flight, at once: a write that arrives alone is submitted alone, and
//!   nothing waits on a timer;
//! - while other entries are in flight (their fsync and replication under way), only once it
//!   holds `coalesce_pipeline_min_entries` records or `coalesce_pipeline_min_bytes` bytes
//!   (or is full), and fewer than `coalesce_max_proposals` entries are in flight. Until then it
//!   waits for the entries in flight to be answered, and the writes arriving meanwhile join it.
//!
//! Why the second rule: every entry costs the cluster about the same fixed work (a replication
//! message and an fsync per node, an apply, openraft's bookkeeping), a few hundred µs of CPU
//! on a small machine. Pipelining an entry of a few small writes buys no latency when the
//! machine is busy and spends that work again; a producer's batches are big enough to pipeline.
//!
//! An entry of one write is an ordinary [`Request::Write`]; one of several is a
//! [`Request::Coalesced`] whose parts keep each write's key and record count, and whose result
//! (one contiguous range) is split by those counts. A keyed write carries the term its leader
//! checked (see [`super::producers`]) and an entry only holds writes of one such term, submitted
//! conditionally on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc, oneshot};

use super::Written;
use crate::raft::log_store::WRITE_PATH;
use crate::raft::types::WriteRecord;
use crate::raft::{RaftNode, RaftOpError, Request, Response};
use crate::wal::{ProducerKey, WritePart};

/// What a queued write ends with.
pub type Reply = Result<Written, RaftOpError>;

/// What an entry's outcome is handed to, once known.
type Done = Box<dyn FnOnce(Result<Response, RaftOpError>) + Send>;

/// Where the coalescer's entries go: Raft, or a test's stand-in.
trait Propose: Send + 'static {
    /// Submits `request` (conditionally on leading in `term`, if given); `done` gets its outcome,
    /// or is dropped if Raft stops first. An error: not submitted, `done` dropped unused.
    fn propose(
        &self,
        request: Request,
        term: Option<u64>,
        done: Done,
    ) -> impl std::future::Future<Output = Result<(), RaftOpError>> + Send;
}

impl Propose for RaftNode {
    async fn propose(
        &self,
        request: Request,
        term: Option<u64>,
        done: Done,
    ) -> Result<(), RaftOpError> {
        self.submit(request, term, done).await
    }
}

/// The coalescer's bounds (the `limits.coalesce_*` keys).
#[derive(Clone, Copy, Debug)]
pub struct CoalesceLimits {
    /// Records in one coalesced entry at most (a single larger batch goes alone).
    pub max_entries: usize,
    /// Data bytes in one coalesced entry at most (a single larger batch goes alone).
    pub max_bytes: u64,
    /// Entries submitted and not yet answered at most.
    pub max_proposals: usize,
    /// An entry submitted while others are in flight holds at least this many records...
    pub pipeline_min_entries: usize,
    /// ... or this many data bytes (or is full).
    pub pipeline_min_bytes: u64,
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

/// Entries submitted and not yet answered; a [`Slot`] is one of them.
#[derive(Default)]
struct InFlight {
    n: AtomicUsize,
    answered: Notify,
}

/// One entry in flight, until dropped (when it is answered, or when Raft drops its responder).
struct Slot(Arc<InFlight>);

impl Slot {
    fn take(f: &Arc<InFlight>) -> Slot {
        f.n.fetch_add(1, Ordering::AcqRel);
        Slot(f.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.n.fetch_sub(1, Ordering::AcqRel);
        self.0.answered.notify_one();
    }
}

/// The writes of the next entry.
struct Batch {
    writes: Vec<Queued>,
    entries: usize,
    bytes: u64,
    term: Option<u64>,
}

impl Batch {
    fn new(first: Queued) -> Batch {
        Batch {
            entries: first.records.len(),
            bytes: first.bytes,
            term: first.term,
            writes: vec![first],
        }
    }

    /// Adds `q`, or hands it back if it does not fit (bounds, or a keyed write of another term).
    fn push(&mut self, q: Queued, limits: &CoalesceLimits) -> Result<(), Queued> {
        let other_term = q.term.is_some() && self.term.is_some() && q.term != self.term;
        if other_term
            || self.entries + q.records.len() > limits.max_entries
            || self.bytes + q.bytes > limits.max_bytes
        {
            return Err(q);
        }
        self.entries += q.records.len();
        self.bytes += q.bytes;
        self.term = self.term.or(q.term);
        self.writes.push(q);
        Ok(())
    }

    /// Worth an entry of its own beside others in flight.
    fn pipelines(&self, limits: &CoalesceLimits) -> bool {
        self.entries >= limits.pipeline_min_entries || self.bytes >= limits.pipeline_min_bytes
    }
}

async fn run(
    raft: impl Propose,
    mut rx: mpsc::Receiver<Queued>,
    limits: CoalesceLimits,
    metrics: Option<prometheus::Histogram>,
) {
    let max_proposals = limits.max_proposals.max(1);
    let in_flight = Arc::new(InFlight::default());
    let mut carry: Option<Queued> = None;
    let mut open = true;
    loop {
        let first = match carry.take() {
            Some(q) => q,
            None if open => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
            None => return,
        };
        let mut batch = Batch::new(first);
        // The coalescing window: until the entry may go, writes arriving join it.
        loop {
            let answered = in_flight.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let n = in_flight.n.load(Ordering::Acquire);
            // Full (a write waits that does not fit) counts as big enough.
            let closed = carry.is_some() || !open;
            if n == 0 || (n < max_proposals && (closed || batch.pipelines(&limits))) {
                break;
            }
            if closed {
                answered.await;
                continue;
            }
            tokio::select! {
                biased;
                () = &mut answered => {}
                q = rx.recv() => match q {
                    Some(q) => carry = batch.push(q, &limits).err(),
                    None => open = false,
                },
            }
        }
        // And whatever else is queued now.
        while carry.is_none()
            && let Ok(q) = rx.try_recv()
        {
            carry = batch.push(q, &limits).err();
        }
        let slot = Slot::take(&in_flight);
        if let Some(h) = &metrics {
            h.observe(batch.writes.len() as f64);
        }
        let term = batch.term;
        let (request, waiters) = into_request(batch.writes);
        tracing::trace!(target: WRITE_PATH, stage = "core.submit", writes = waiters.len());
        // The writers are answered where the outcome is known (see `RaftNode::submit`); if Raft
        // stops first, dropping the waiters answers them with an error.
        let waiting = std::sync::Arc::new(parking_lot::Mutex::new(Some(waiters)));
        let answered = waiting.clone();
        let done: Done = Box::new(move |result: Result<Response, RaftOpError>| {
            tracing::trace!(target: WRITE_PATH, stage = "core.answered", result = ?result.as_ref().ok());
            drop(slot);
            if let Some(waiters) = answered.lock().take() {
                answer_all(result, waiters);
            }
        });
        if let Err(e) = raft.propose(request, term, done).await
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
            records: Arc::new(q.records),
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
    (
        Request::Coalesced {
            parts,
            records: Arc::new(records),
        },
        waiters,
    )
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
                data: vec![i as u8; 10].into(),
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

    /// Stands in for Raft: hands each proposed entry (its write count and outcome callback) to
    /// the test, which answers it when it wants.
    struct Fake(mpsc::UnboundedSender<(usize, Done)>);

    impl Propose for Fake {
        async fn propose(&self, r: Request, _: Option<u64>, done: Done) -> Result<(), RaftOpError> {
            let writes = match r {
                Request::Coalesced { parts, .. } => parts.len(),
                _ => 1,
            };
            self.0
                .send((writes, done))
                .map_err(|_| RaftOpError::Stopped("test over".to_owned()))
        }
    }

    fn written(done: Done) {
        done(Ok(Response::Written {
            first_seq: 1,
            last_seq: 1,
            timestamp: 0,
            duplicate: false,
        }));
    }

    fn records(n: usize) -> Vec<WriteRecord> {
        queued(None, n).0.records
    }

    /// A coalescer over [`Fake`], two entries in flight at most, `pipeline_min_entries` as given.
    fn start(pipeline_min_entries: usize) -> (Coalescer, mpsc::UnboundedReceiver<(usize, Done)>) {
        let (tx, proposed) = mpsc::unbounded_channel();
        let limits = CoalesceLimits {
            max_entries: 1000,
            max_bytes: 1 << 20,
            max_proposals: 2,
            pipeline_min_entries,
            pipeline_min_bytes: if pipeline_min_entries == 0 {
                0
            } else {
                1 << 20
            },
            queue: 100,
        };
        let (qtx, qrx) = mpsc::channel(limits.queue);
        tokio::spawn(run(Fake(tx), qrx, limits, None));
        (Coalescer { tx: qtx }, proposed)
    }

    /// Nothing more is proposed: the paused clock only moves once every task is idle.
    async fn settle(proposed: &mut mpsc::UnboundedReceiver<(usize, Done)>) -> Option<usize> {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        proposed.try_recv().ok().map(|(n, _)| n)
    }

    #[tokio::test(start_paused = true)]
    async fn small_writes_wait_for_the_entry_in_flight_and_big_ones_pipeline() {
        // Two entries in flight at most; 16 records to pipeline one.
        let (c, mut proposed) = start(16);

        // Nothing in flight: a lone write goes at once, alone.
        let a = c.enqueue(None, None, records(1)).await.unwrap();
        let (n, done_a) = proposed.recv().await.unwrap();
        assert_eq!(n, 1);
        // Small writes wait while it is in flight...
        let b = c.enqueue(None, None, records(1)).await.unwrap();
        let b2 = c.enqueue(None, None, records(1)).await.unwrap();
        assert_eq!(
            settle(&mut proposed).await,
            None,
            "a small entry was pipelined"
        );
        // ... until enough records join them to be worth an entry of their own.
        let big = c.enqueue(None, None, records(14)).await.unwrap();
        let (n, done_b) = proposed.recv().await.unwrap();
        assert_eq!(n, 3, "the waiting writes and the big one go together");
        // Two in flight (`max_proposals`): even a big write waits.
        let d = c.enqueue(None, None, records(20)).await.unwrap();
        assert_eq!(settle(&mut proposed).await, None, "a third entry went");
        // An answer frees a slot, and the big write goes beside the other entry in flight.
        written(done_a);
        assert!(answer(a).await.is_ok());
        let (n, done_d) = proposed.recv().await.unwrap();
        assert_eq!(n, 1);
        // A small write waits until nothing is in flight...
        let e = c.enqueue(None, None, records(1)).await.unwrap();
        written(done_b);
        assert!(answer(b).await.is_ok() && answer(b2).await.is_ok() && answer(big).await.is_ok());
        assert_eq!(settle(&mut proposed).await, None, "pipelined beside d");
        // ... and goes when the last answer comes, even as an error.
        done_d(Err(RaftOpError::OutcomeUnknown { leader: None }));
        assert!(answer(d).await.is_err());
        let (n, done_e) = proposed.recv().await.unwrap();
        assert_eq!(n, 1);
        // A responder Raft drops (it stopped) frees its slot too, and its writers get an error.
        drop(done_e);
        assert!(answer(e).await.is_err());
        let f = c.enqueue(None, None, records(1)).await.unwrap();
        let (n, done_f) = proposed.recv().await.unwrap();
        assert_eq!(n, 1);
        written(done_f);
        assert!(answer(f).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_pipeline_minimum_every_free_slot_takes_what_waits() {
        let (c, mut proposed) = start(0);
        let _a = c.enqueue(None, None, records(1)).await.unwrap();
        let (_, done_a) = proposed.recv().await.unwrap();
        let _b = c.enqueue(None, None, records(1)).await.unwrap();
        let (n, _done_b) = proposed.recv().await.unwrap();
        assert_eq!(n, 1, "pipelined at once");
        let _c = c.enqueue(None, None, records(1)).await.unwrap();
        let _d = c.enqueue(None, None, records(1)).await.unwrap();
        assert_eq!(settle(&mut proposed).await, None, "more than max_proposals");
        written(done_a);
        let (n, _) = proposed.recv().await.unwrap();
        assert_eq!(n, 2);
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
