//! Reads: where a replay starts, reading committed entries in bounded chunks, the log's
//! bounds, and the WAL's segments. Reads show committed (applied) entries only: they stop
//! below the state machine's next sequence number, which never passes what is durable in the
//! local WAL. Replay asks for an in-sync replica ([`Core::require_in_sync`]).

use std::ops::ControlFlow;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Core, CoreError};
use crate::wal::{Entry, EntryRef, Segment, SequenceNumber, WalError};
use crate::wire::check_name;

/// Where a replay starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayFrom {
    /// The first retained entry.
    LogStart,
    Sequence(SequenceNumber),
    /// After a checkpoint's position (its tenant filters the replay unless one is given).
    Checkpoint(String),
}

/// A replay as a caller asks for it.
#[derive(Clone, Debug)]
pub struct ReplayStart {
    pub from: ReplayFrom,
    pub tenant: Option<String>,
    /// Every tenant's entries even after a checkpoint of one tenant (which otherwise filters
    /// to that tenant).
    pub all_tenants: bool,
    /// Wait (up to `limits.min_sequence_wait`) until this node has applied this sequence.
    pub min_sequence: SequenceNumber,
    /// Refuse unless this replica is in sync (a replay; a segment read is about the node asked).
    pub require_sync: bool,
}

/// Entries read by [`Core::read_chunk`].
pub struct Chunk<T> {
    pub entries: Vec<T>,
    /// Where the next chunk starts.
    pub next: SequenceNumber,
}

/// The log's bounds as this replica knows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBounds {
    /// The first sequence number a read may ask for.
    pub log_start: SequenceNumber,
    /// The last committed (applied) sequence number; 0 if none.
    pub commit_sequence: SequenceNumber,
    /// The last sequence number in the local WAL (committed or not); 0 if none.
    pub last_sequence: SequenceNumber,
}

impl Core {
    /// Where a replay starts and which tenant it shows, after waiting for `min_sequence`.
    pub async fn replay_start(
        &self,
        r: &ReplayStart,
    ) -> Result<(SequenceNumber, Option<String>), CoreError> {
        if let Some(t) = &r.tenant {
            check_name("tenant", t)?;
            if r.all_tenants {
                return Err(CoreError::InvalidArgument(
                    "a replay of one tenant cannot also be of all tenants".into(),
                ));
            }
        }
        if r.min_sequence > 0 {
            self.wait_applied(r.min_sequence).await?;
        }
        if r.require_sync {
            self.require_in_sync()?;
        }
        let log_start = self.readable_start()?;
        let mut tenant = r.tenant.clone();
        let from = match &r.from {
            ReplayFrom::LogStart | ReplayFrom::Sequence(0) => log_start,
            ReplayFrom::Sequence(s) => *s,
            ReplayFrom::Checkpoint(name) => {
                check_name("checkpoint name", name)?;
                let cp = self
                    .sm
                    .read(|i| i.checkpoints.get(name).cloned())
                    .ok_or_else(|| CoreError::NotFound(format!("checkpoint {name:?} not found")))?;
                if !r.all_tenants {
                    tenant = tenant.or(cp.tenant);
                }
                (cp.sequence + 1).max(log_start)
            }
        };
        if from < log_start {
            return Err(CoreError::OutOfRange {
                requested: from,
                log_start,
            });
        }
        Ok((from, tenant))
    }

    /// Waits up to `limits.min_sequence_wait` for this node to apply `seq`.
    async fn wait_applied(&self, seq: SequenceNumber) -> Result<(), CoreError> {
        let mut applied = self.sm.applied_seq();
        let wait = self.limits.min_sequence_wait;
        match tokio::time::timeout(wait, applied.wait_for(|next| *next > seq)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(CoreError::Unavailable("node stopping".to_owned())),
            Err(_) => Err(CoreError::DeadlineExceeded(format!(
                "node {} has not applied sequence {seq} within {} ms (limits.min_sequence_wait)",
                self.id,
                wait.as_millis()
            ))),
        }
    }

    /// The sequence number after the last applied entry, watched (it moves on every commit).
    pub fn applied_watch(&self) -> watch::Receiver<SequenceNumber> {
        self.sm.applied_seq()
    }

    /// Reads up to `max` committed records of `tenant` (all tenants: `None`) in `from..upto`
    /// on a blocking thread, each turned into a `T` by `map` while it is borrowed.
    pub async fn read_chunk<T, F>(
        &self,
        from: SequenceNumber,
        upto: SequenceNumber,
        tenant: Option<Arc<str>>,
        max: usize,
        map: F,
    ) -> Result<Chunk<T>, CoreError>
    where
        T: Send + 'static,
        F: Fn(&EntryRef<'_>) -> T + Send + 'static,
    {
        let wal = self.wal()?;
        let read = tokio::task::spawn_blocking(move || {
            let mut entries = Vec::new();
            let next = match tenant.as_deref() {
                // The tenant index reads that tenant's records and no others.
                Some(t) => wal.read_tenant(from, upto, t, |e| {
                    entries.push(map(&e));
                    if entries.len() >= max {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })?,
                None => {
                    let mut next = from;
                    wal.replay(from, |e| {
                        if e.sequence_number >= upto || entries.len() >= max {
                            return ControlFlow::Break(());
                        }
                        next = e.sequence_number + 1;
                        entries.push(map(&e));
                        ControlFlow::Continue(())
                    })?;
                    next
                }
            };
            Ok::<_, WalError>(Chunk { entries, next })
        });
        let chunk = read.await?.map_err(|e| self.read_error(e))?;
        debug_assert!(
            (from..=upto).contains(&chunk.next) && chunk.entries.len() <= max,
            "a chunk of {from}..{upto} ends at {} with {} entries (max {max})",
            chunk.next,
            chunk.entries.len()
        );
        if chunk.next == from && from < upto {
            // The WAL holds no record at `from` although it is committed: it was truncated.
            return Err(CoreError::OutOfRange {
                requested: from,
                log_start: self.readable_start()?,
            });
        }
        Ok(chunk)
    }

    /// A WAL read error as the caller sees it: a damaged segment this node is repairing is not
    /// data loss (the cluster holds the entries): the read is sent elsewhere, like any read of
    /// a replica that is not in sync.
    fn read_error(&self, e: WalError) -> CoreError {
        if let WalError::CorruptedEntry { segment, .. } = &e
            && self.wal().is_ok_and(|w| w.is_damaged(*segment))
        {
            return CoreError::NotInSync {
                message: format!(
                    "node {} found a damaged WAL segment ({e}) and is repairing it from a replica; ask the leader",
                    self.id
                ),
                leader: self.other_leader(),
            };
        }
        e.into()
    }

    /// The committed records from `from` on (at most `limit`), read from this node's WAL.
    pub async fn committed_entries(
        &self,
        from: SequenceNumber,
        limit: usize,
    ) -> Result<Vec<Entry>, CoreError> {
        // The state machine never applies past the local WAL's durable (acknowledged) copy,
        // so everything below `upto` is visible to replay.
        let upto = self.next_seq();
        let wal = self.wal()?;
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            wal.replay(from.max(wal.log_start().seq), |e| {
                if e.sequence_number >= upto || out.len() >= limit {
                    return ControlFlow::Break(());
                }
                out.push(e.to_owned());
                ControlFlow::Continue(())
            })?;
            Ok::<_, WalError>(out)
        });
        Ok(read.await??)
    }

    /// The sequence number of the first record in the local WAL.
    pub fn log_start(&self) -> Result<SequenceNumber, CoreError> {
        Ok(self.wal.get()?.log_start().seq)
    }

    /// The first sequence number a read may ask for: the replicated truncation point moves
    /// before the WAL's files are deleted, so it can be ahead of [`Core::log_start`].
    pub fn readable_start(&self) -> Result<SequenceNumber, CoreError> {
        let replicated = self.sm.read(|i| i.log_start);
        Ok(self.log_start()?.max(replicated))
    }

    /// The log's bounds on this replica.
    pub fn log_bounds(&self) -> Result<LogBounds, CoreError> {
        let commit_sequence = self.next_seq() - 1;
        Ok(LogBounds {
            log_start: self.readable_start()?,
            commit_sequence,
            last_sequence: self.wal()?.next_seq().saturating_sub(1),
        })
    }

    /// The local WAL's segments, and the first readable sequence number.
    pub fn segments(&self) -> Result<(Vec<Segment>, SequenceNumber), CoreError> {
        let wal = self.wal()?;
        Ok((wal.segments(), self.readable_start()?))
    }

    /// The committed sequence numbers `from..upto` a read of segment `id` covers on this node.
    pub fn segment_range(&self, id: u64) -> Result<(SequenceNumber, SequenceNumber), CoreError> {
        let seg = self
            .wal()?
            .segments()
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| {
                CoreError::NotFound(format!("segment {id} not found on node {}", self.id))
            })?;
        let from = seg.start_seq.max(self.readable_start()?);
        let upto = seg.end_seq.map_or(from, |e| e + 1).min(self.next_seq());
        Ok((from, upto))
    }
}
