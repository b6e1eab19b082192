//! Contact with the rest of the cluster, as two flags kept by one task ([`watch`]): a leader
//! that no quorum acknowledged within the lease, and a follower whose leader has been silent
//! for longer than the lease. Calls waiting on the leader are then answered "outcome unknown"
//! at once instead of when the partition heals.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Core;

/// How often a node checks its contact with the quorum (as leader) or the leader.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// See [`Core`]'s `lost`. Each flag is only ever set in its role, so a flag left over from the
/// other role never answers a call.
pub struct ContactFlags {
    /// As leader: no quorum acknowledged it within the lease (openraft refuses new proposals
    /// then too).
    pub(super) quorum_lost: watch::Receiver<bool>,
    /// As follower: the leader has been silent for longer than the lease.
    pub(super) leader_silent: watch::Receiver<bool>,
}

/// The flags' senders, for [`watch`].
pub struct ContactSenders([watch::Sender<bool>; 2]);

/// New flags (both false) and their senders.
pub fn flags() -> (ContactFlags, ContactSenders) {
    let (quorum_tx, quorum_lost) = watch::channel(false);
    let (silent_tx, leader_silent) = watch::channel(false);
    (
        ContactFlags {
            quorum_lost,
            leader_silent,
        },
        ContactSenders([quorum_tx, silent_tx]),
    )
}

/// Resolves once `flag` is true; never if its sender is gone (the node stops).
pub(super) async fn until(flag: &watch::Receiver<bool>) {
    if flag.clone().wait_for(|l| *l).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Keeps the [`ContactFlags`] current, checking every `CHECK_EVERY`, until the node stops.
pub async fn watch(core: Arc<Core>, senders: ContactSenders) {
    let ContactSenders([quorum_lost, leader_silent]) = senders;
    let mut stop = core.stop_signal();
    let set = |flag: &watch::Sender<bool>, v: bool| {
        flag.send_if_modified(|l| std::mem::replace(l, v) != v);
    };
    loop {
        let leads = core.is_leader();
        set(
            &quorum_lost,
            leads && core.raft.quorum_lost(core.leader_lease),
        );
        set(&leader_silent, !leads && core.leader_silent().is_some());
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}
