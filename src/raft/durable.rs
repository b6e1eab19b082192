//! How far this node's own copy of the log is durable. The log store advances it from the WAL's
//! durability callbacks; the state machine applies nothing that was written locally but is not
//! durable yet.
//!
//! Why: a follower learns that entries are committed (a majority holds them) possibly before
//! its own fsync of them returns. Applying them then could leave sled's applied id ahead of the
//! local log after a crash, and the node would restart with a hole in its copy of the data.

use std::io;
use std::sync::Arc;

use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Raft indexes below `durable` are durable in the local WAL; those in `durable..written`
    /// were handed to the WAL and wait for their fsync.
    Tracking { durable: u64, written: u64 },
    /// A write or fsync failed: nothing more becomes durable.
    Failed,
}

pub struct LocalDurable {
    tx: watch::Sender<State>,
}

impl LocalDurable {
    /// `next`: the first Raft index not in the local log (everything before it is durable).
    pub fn new(next: u64) -> Arc<LocalDurable> {
        let state = State::Tracking {
            durable: next,
            written: next,
        };
        Arc::new(LocalDurable {
            tx: watch::Sender::new(state),
        })
    }

    /// Indexes below `next` were handed to the WAL.
    pub fn written(&self, next: u64) {
        self.tx.send_if_modified(|s| match s {
            State::Tracking { written, .. } if *written < next => {
                *written = next;
                true
            }
            _ => false,
        });
    }

    /// Indexes below `next` are durable.
    pub fn advance(&self, next: u64) {
        self.tx.send_if_modified(|s| match s {
            State::Tracking { durable, written } if *durable < next => {
                *durable = next;
                *written = (*written).max(next);
                true
            }
            _ => false,
        });
    }

    /// After a suffix truncation: indexes from `next` on are gone.
    pub fn cut(&self, next: u64) {
        self.tx.send_if_modified(|s| match s {
            State::Tracking { durable, written } if *written > next => {
                *written = next;
                *durable = (*durable).min(next);
                true
            }
            _ => false,
        });
    }

    pub fn fail(&self) {
        self.tx.send_replace(State::Failed);
    }

    /// Waits until `index`, if it was written locally, is durable; an error once the WAL failed.
    pub async fn wait_for(&self, index: u64) -> io::Result<()> {
        let mut rx = self.tx.subscribe();
        let ready = |s: &State| match *s {
            State::Failed => true,
            State::Tracking { durable, written } => index < durable || index >= written,
        };
        let state = *rx
            .wait_for(ready)
            .await
            .map_err(|_| io::Error::other("the log store was closed"))?;
        match state {
            State::Failed => Err(io::Error::other(format!(
                "log index {index} will never be durable here: the WAL failed"
            ))),
            State::Tracking { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn blocks(d: &Arc<LocalDurable>, index: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(20), d.wait_for(index))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn waits_only_for_written_entries_not_yet_durable() {
        let d = LocalDurable::new(3);
        assert!(!blocks(&d, 2).await, "recovered entries are durable");
        assert!(
            !blocks(&d, 7).await,
            "an entry never written here is not waited for"
        );
        d.written(6);
        assert!(blocks(&d, 4).await);
        d.advance(5);
        assert!(!blocks(&d, 4).await);
        assert!(blocks(&d, 5).await);
        d.cut(5);
        assert!(!blocks(&d, 5).await, "truncated away");
        d.written(8);
        d.fail();
        assert!(d.wait_for(6).await.is_err());
    }
}
