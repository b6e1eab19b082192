//! Who runs the writer: leader/follower group commit.
//!
//! Every change to the log is a [`Command`] in one bounded queue. Whoever finds the queue
//! without a leader becomes the leader and runs the [`Writer`] on whatever is queued, as one
//! group (one write, one fsync):
//! - a blocking caller (`Manager::write`, ...) leads on its own thread, so a lone writer pays no
//!   thread hand-off at all (each wake-up of another thread measured ~30 µs on this kind of
//!   machine, as much as a quarter of an fsync);
//! - after at most two groups, a caller hands leadership to the background thread if more work
//!   is queued, so no caller is kept serving others for long;
//! - asynchronous submissions (`Manager::append_with`) and timers (the `periodic` fsync,
//!   retention) are always run by the background thread.
//!
//! Leadership is a flag under the queue's lock; the writer itself sits behind a mutex that only
//! the leader takes, so it is never contended.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::error::{Result, WalError};
use super::writer::{Command, GROUP_MAX_REQUESTS, RETENTION_IDLE_CHECK, Writer};

/// Groups a caller thread runs before it hands leadership to the background thread.
const CALLER_GROUPS_MAX: u32 = 2;

/// Closes the queue if the leader unwinds.
struct PanicGuard<'a>(&'a Pipeline);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the WAL writer panicked; closing the WAL");
            self.0.close_queue();
        }
    }
}

struct Queue {
    pending: VecDeque<Command>,
    /// Someone is (or was asked to be) running the writer.
    leading: bool,
    /// The background thread was asked to lead.
    background_turn: bool,
    closed: bool,
}

pub(crate) struct Pipeline {
    queue: Mutex<Queue>,
    /// The background thread waits here for its turn.
    work: Condvar,
    /// Submitters wait here while the queue is full.
    space: Condvar,
    writer: Mutex<Writer>,
    queue_depth: usize,
    group_max_bytes: u64,
    timer: Duration,
}

impl Pipeline {
    pub fn start(writer: Writer) -> Result<(Arc<Pipeline>, JoinHandle<()>)> {
        let cfg = &writer.shared().cfg;
        let timer = match cfg.sync_policy {
            super::SyncPolicy::Periodic => cfg.sync_interval.min(RETENTION_IDLE_CHECK),
            _ => RETENTION_IDLE_CHECK,
        };
        let p = Arc::new(Pipeline {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                leading: false,
                background_turn: false,
                closed: false,
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            queue_depth: cfg.queue_depth,
            group_max_bytes: cfg.group_commit_max_bytes.as_u64(),
            timer,
            writer: Mutex::new(writer),
        });
        let background = p.clone();
        let handle = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || background.background())?;
        Ok((p, handle))
    }

    /// Queues a command. With `lead`, the calling thread runs the writer itself if nobody is;
    /// otherwise the background thread does. Blocks while `queue_depth` commands wait. On error
    /// the command was not queued (and none of its callbacks will run).
    pub fn submit(&self, cmd: Command, lead: bool) -> Result<()> {
        let mut q = self.queue.lock();
        while q.pending.len() >= self.queue_depth && !q.closed {
            self.space.wait(&mut q);
        }
        if q.closed {
            return Err(WalError::Closed);
        }
        q.pending.push_back(cmd);
        if q.leading {
            return Ok(());
        }
        q.leading = true;
        if !lead {
            q.background_turn = true;
            self.work.notify_one();
            return Ok(());
        }
        drop(q);
        self.lead(false);
        Ok(())
    }

    /// Takes the next group: appends up to the group limits, or one other command alone.
    fn next_group(&self, q: &mut Queue) -> Vec<Command> {
        let mut group = Vec::new();
        let mut bytes = 0;
        while let Some(cmd) = q.pending.front() {
            let full = group.len() >= GROUP_MAX_REQUESTS || bytes >= self.group_max_bytes;
            match cmd {
                Command::Append(req) if !full => bytes += req.bytes,
                Command::Append(_) => break,
                _ if group.is_empty() => {
                    group.extend(q.pending.pop_front());
                    break;
                }
                _ => break,
            }
            group.extend(q.pending.pop_front());
        }
        if !group.is_empty() {
            self.space.notify_all();
        }
        group
    }

    /// Runs groups while there is work. A caller thread (`background == false`) runs at most
    /// `CALLER_GROUPS_MAX` groups, then hands over to the background thread, so its own call
    /// returns. (Two, not one: a second group often completes the writers that queued during the
    /// first, without waking the background thread; measured 1.04-1.12x with 16-64 writers.)
    fn lead(&self, background: bool) {
        // A panic while leading (a bug, or a callback that panics) must not leave the flag set
        // and every later caller waiting forever: the guard closes the queue instead.
        let _guard = PanicGuard(self);
        let mut writer = self.writer.lock();
        let mut groups = 0;
        loop {
            groups += 1;
            let group = {
                let mut q = self.queue.lock();
                let group = self.next_group(&mut q);
                if group.is_empty() {
                    q.leading = false;
                    return;
                }
                group
            };
            if writer.process(group) {
                self.close_queue();
                return;
            }
            if !background && groups >= CALLER_GROUPS_MAX {
                let mut q = self.queue.lock();
                if q.pending.is_empty() {
                    q.leading = false;
                } else {
                    q.background_turn = true;
                    self.work.notify_one();
                }
                return;
            }
        }
    }

    /// After `Close` (or a panic while leading): refuse new commands and fail the queued ones.
    fn close_queue(&self) {
        let rest: Vec<Command> = {
            let mut q = self.queue.lock();
            q.closed = true;
            q.leading = false;
            self.work.notify_all();
            self.space.notify_all();
            q.pending.drain(..).collect()
        };
        for cmd in rest {
            cmd.fail(WalError::Closed);
        }
    }

    /// Runs exactly `cmds` as one group (tests that need a precise group).
    #[cfg(test)]
    pub fn run_group(&self, cmds: Vec<Command>) {
        self.writer.lock().process(cmds);
    }

    fn background(&self) {
        let mut next_timer = Instant::now() + self.timer;
        loop {
            let mut q = self.queue.lock();
            while !q.background_turn && !q.closed && Instant::now() < next_timer {
                self.work.wait_until(&mut q, next_timer);
            }
            if q.closed {
                return;
            }
            if q.background_turn {
                q.background_turn = false;
                drop(q);
                self.lead(true);
                continue;
            }
            next_timer = Instant::now() + self.timer;
            if q.leading {
                // The leader runs the timers between groups.
                continue;
            }
            q.leading = true;
            drop(q);
            self.writer.lock().timers();
            self.lead(true);
        }
    }
}
