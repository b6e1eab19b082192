//! The directory of client addresses: membership names each node by its **peer** address (Raft
//! traffic, repairs), while clients, leader hints and forwarded writes need its **client**
//! address. As etcd's members publish their client URLs, each node answers `Describe` on its
//! peer listener with its client address, and [`maintain`] asks every member it does not know
//! yet (and everyone again now and then, since a node may restart with another address).
//!
//! Nothing here is replicated or persisted: a node that restarts learns the directory again
//! within a second of reaching its peers. Until it knows a leader's client address, its hints
//! name the leader without an address (clients then try their other endpoints).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tokio::sync::watch;

use super::network::Network;
use super::types::NodeId;

/// How often every member is asked again, known or not.
const REFRESH_ALL: Duration = Duration::from_secs(30);
/// How soon a member whose address is missing (or failed to answer) is asked again.
const RETRY_MISSING: Duration = Duration::from_millis(500);
/// How often the member list is looked at for new members.
const POLL: Duration = Duration::from_secs(1);
/// How long one `Describe` may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A node's two addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub peer: String,
    pub client: String,
}

/// Client addresses of the members, keyed by node id and checked against the peer address
/// membership names (an entry learned for an old peer address is not used).
pub struct Directory {
    me: NodeId,
    known: RwLock<HashMap<NodeId, Addresses>>,
}

impl Directory {
    /// A directory that knows this node's own addresses.
    pub fn new(me: NodeId, own: Addresses) -> Directory {
        Directory {
            me,
            known: RwLock::new(HashMap::from([(me, own)])),
        }
    }

    /// This node's client address.
    pub fn own_client(&self) -> String {
        self.known
            .read()
            .get(&self.me)
            .map(|a| a.client.clone())
            .unwrap_or_default()
    }

    /// The client address of `id` when it is known for this peer address.
    pub fn client_of(&self, id: NodeId, peer: &str) -> Option<String> {
        let known = self.known.read();
        let a = known.get(&id)?;
        (a.peer == peer).then(|| a.client.clone())
    }

    /// Records what `id` answered at `peer`.
    pub fn learn(&self, id: NodeId, peer: &str, client: String) {
        let addrs = Addresses {
            peer: peer.to_owned(),
            client,
        };
        let mut known = self.known.write();
        if known.get(&id) != Some(&addrs) {
            tracing::info!(node = id, peer = %addrs.peer, client = %addrs.client, "learned a member's client address");
            known.insert(id, addrs);
        }
    }
}

/// Keeps `dir` filled for the members Raft knows (`members()`: id -> peer address), until `stop`: looks for new members every
/// `POLL`, asks each member without a known client address every `RETRY_MISSING`, and every
/// member every `REFRESH_ALL`.
pub async fn maintain(
    dir: Arc<Directory>,
    members: impl Fn() -> BTreeMap<NodeId, String>,
    network: Network,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_full: Option<Instant> = None;
    loop {
        let full = last_full.is_none_or(|t| t.elapsed() >= REFRESH_ALL);
        let members = members();
        let mut missing = false;
        for (id, peer) in members {
            if id == dir.me {
                continue;
            }
            if !full && dir.client_of(id, &peer).is_some() {
                continue;
            }
            match network.describe(id, &peer, DESCRIBE_TIMEOUT).await {
                Ok((answered, client)) if answered == id => dir.learn(id, &peer, client),
                Ok((answered, _)) => {
                    missing = true;
                    tracing::warn!(node = id, %peer, answered, "another node answers at a member's peer address");
                }
                Err(e) => {
                    missing = true;
                    tracing::debug!(node = id, %peer, error = %e, "no client address yet");
                }
            }
        }
        if full {
            last_full = Some(Instant::now());
        }
        let wait = if missing { RETRY_MISSING } else { POLL };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_learned_for_an_old_peer_address_is_not_used() {
        let d = Directory::new(
            1,
            Addresses {
                peer: "a:2".into(),
                client: "a:1".into(),
            },
        );
        assert_eq!(d.own_client(), "a:1");
        assert_eq!(d.client_of(2, "b:2"), None);
        d.learn(2, "b:2", "b:1".into());
        assert_eq!(d.client_of(2, "b:2").as_deref(), Some("b:1"));
        assert_eq!(d.client_of(2, "c:2"), None);
    }
}
