//! The leader's ledger of keyed writes in flight: each idempotency key is proposed to Raft at
//! most once.
//!
//! A keyed write `(producer id, producer seq)` is, on the leader, in one of three places: in
//! the state machine's producer table (applied), in this ledger (proposed, outcome not known
//! yet), or nowhere (never proposed by this leader). The ledger owns each proposal's outcome
//! apart from any request: the proposal runs in its own task, so a caller that goes away (a
//! client deadline, a forwarding follower killed, a dropped connection) never releases the key
//! while Raft still holds it, and a retry of the key waits for that same outcome instead of
//! proposing it again.
//!
//! Why that suffices, with [`crate::raft::RaftNode::own_term_applied`]: a leader proposes keyed
//! writes only once it has applied an entry of its own term, so every entry of earlier terms
//! in its log is applied (its table knows those keys, committed or not before it led: they
//! commit with its first entry). The keys it proposed itself in this term are in the ledger
//! until they are applied. Raft answers every proposal (applied, discarded on a leader change,
//! or the node stopped), so every entry leaves the ledger. A term belongs to one process: a
//! restarted leader does not take its leadership back without an election (openraft's leader
//! restore is off, see `raft::openraft_config`), since its new ledger would not know the keys
//! it proposed in that term before the restart.
//!
//! Pipelining: a producer may have several writes in flight (a `Produce` stream sends the next
//! before the last is acknowledged), with increasing sequence numbers, proposed in that order.
//! Each is proposed conditionally on the term the leader checked ([`Step::Propose::term`]), so
//! a later one never enters the log after an earlier one was refused for a leader change: the
//! log holds a prefix of a producer's pipeline, and a retry of the rest (in order) is never
//! mistaken for a duplicate. A write older than one in flight waits for it and looks again.
//!
//! Invariant (checked in [`Ledger::begin`]): a key is proposed only when it is neither applied
//! nor in flight, by a leader whose own term is applied, under one lock.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::{CoreError, Written};
use crate::raft::RaftOpError;
use crate::raft::state_machine::{ProducerState, SmShared};
use crate::wal::ProducerKey;

/// What a proposal ended with, shared by every request that waits for it.
pub type Outcome = Result<Written, RaftOpError>;

struct Pending {
    seq: u64,
    /// Tells this proposal from a later one of the same producer.
    ticket: u64,
    outcome: watch::Receiver<Option<Outcome>>,
}

/// What a keyed write does next.
pub enum Step {
    /// Applied before: answer the original result.
    Applied(ProducerState),
    /// A proposal of this producer is in flight (with producer seq `seq`): wait for it.
    Wait {
        seq: u64,
        outcome: watch::Receiver<Option<Outcome>>,
    },
    /// This node no longer leads with its own term applied: look again.
    NotReady,
    /// Propose it, taken only by this node as the leader of `term`: the caller must hand
    /// `publish` to the task that owns the proposal.
    Propose {
        publish: Publish,
        outcome: watch::Receiver<Option<Outcome>>,
        term: u64,
    },
}

/// The right, and the duty, to end one pending proposal: its outcome is published to every
/// waiter and the key leaves the ledger. Dropped without [`Publish::finish`] (a panicking
/// task), waiters see the channel close and the key leaves the ledger all the same.
pub struct Publish {
    ledger: Arc<Ledger>,
    producer: u64,
    ticket: u64,
    tx: watch::Sender<Option<Outcome>>,
}

impl Publish {
    /// Ends the proposal. Raft has answered it, so an applied key is in the table already and
    /// leaves the ledger before the waiters wake (a waiter that looks again finds it applied).
    pub fn finish(self, outcome: Outcome) {
        self.leave();
        self.tx.send_replace(Some(outcome));
    }

    fn leave(&self) {
        let mut map = self.ledger.pending.lock();
        if let Some(list) = map.get_mut(&self.producer) {
            list.retain(|p| p.ticket != self.ticket);
            if list.is_empty() {
                map.remove(&self.producer);
            }
        }
    }
}

impl Drop for Publish {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Keyed writes in flight on this leader, by producer, in increasing producer seq.
pub struct Ledger {
    pending: parking_lot::Mutex<HashMap<u64, Vec<Pending>>>,
    next_ticket: std::sync::atomic::AtomicU64,
    /// Producers with a proposal in flight at most (bounded like the producer table).
    max: usize,
    /// Writes in flight per producer at most (a producer's pipeline).
    max_per_producer: usize,
}

impl Ledger {
    pub fn new(max: usize, max_per_producer: usize) -> Arc<Ledger> {
        Arc::new(Ledger {
            pending: parking_lot::Mutex::new(HashMap::new()),
            next_ticket: std::sync::atomic::AtomicU64::new(1),
            max: max.max(1),
            max_per_producer: max_per_producer.max(1),
        })
    }

    /// Producers with a proposal in flight.
    pub fn len(&self) -> usize {
        self.pending.lock().len()
    }

    /// Decides, under one lock, what a keyed write does: the ledger is looked at before the
    /// table, and an entry leaves the ledger only after it is applied, so a key is never
    /// missed between the two. `ready` says this node still leads with its own term applied.
    pub fn begin(
        self: &Arc<Self>,
        key: ProducerKey,
        sm: &SmShared,
        ready: impl FnOnce() -> Option<u64>,
    ) -> Result<Step, CoreError> {
        let mut map = self.pending.lock();
        let in_flight = map.get(&key.id).map_or(&[][..], Vec::as_slice);
        // The same key in flight (a retry): its outcome. An older key than one in flight:
        // wait for the newest and look again (it is then applied, or was never proposed).
        if let Some(p) = in_flight
            .iter()
            .find(|p| p.seq == key.seq)
            .or_else(|| in_flight.last().filter(|p| p.seq > key.seq))
        {
            return Ok(Step::Wait {
                seq: p.seq,
                outcome: p.outcome.clone(),
            });
        }
        if in_flight.is_empty()
            && let Some(applied) = sm.duplicate_of(key)
        {
            return Ok(Step::Applied(applied));
        }
        let Some(term) = ready() else {
            return Ok(Step::NotReady);
        };
        if in_flight.len() >= self.max_per_producer {
            return Err(CoreError::ResourceExhausted(format!(
                "producer {} has {} writes in flight on this leader (the bound is limits.produce_max_in_flight)",
                key.id,
                in_flight.len()
            )));
        }
        if in_flight.is_empty() && map.len() >= self.max {
            return Err(CoreError::Unavailable(format!(
                "{} producers have a write in flight on this leader (the bound is max_producers)",
                map.len()
            )));
        }
        let ticket = self
            .next_ticket
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, outcome) = watch::channel(None);
        let list = map.entry(key.id).or_default();
        assert!(
            list.last().is_none_or(|p| p.seq < key.seq),
            "a producer's writes in flight have increasing seqs"
        );
        list.push(Pending {
            seq: key.seq,
            ticket,
            outcome: outcome.clone(),
        });
        Ok(Step::Propose {
            publish: Publish {
                ledger: self.clone(),
                producer: key.id,
                ticket,
                tx,
            },
            outcome,
            term,
        })
    }
}

/// Waits for a proposal's outcome (cancellable: the proposal goes on without the waiter).
pub async fn outcome(mut rx: watch::Receiver<Option<Outcome>>) -> Outcome {
    match rx.wait_for(Option::is_some).await {
        Ok(o) => o.clone().unwrap_or_else(|| {
            Err(RaftOpError::Stopped(
                "a proposal's outcome was empty".to_owned(),
            ))
        }),
        Err(_) => Err(RaftOpError::Stopped(
            "the task that proposed this write ended without an answer".to_owned(),
        )),
    }
}
