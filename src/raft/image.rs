//! The replicated state as a value: [`Image`] (counters, producers, checkpoints, membership,
//! the applied log id). The state machine keeps it in sled and applies entries to it; a snapshot
//! carries it. It knows neither sled nor snapshots' files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::types::{LogId, QuotaLimits, StoredMembership};
use crate::wal::SequenceNumber;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantStats {
    pub entries: u64,
    pub bytes: u64,
    pub last_seq: SequenceNumber,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    pub seq: u64,
    pub first_seq: SequenceNumber,
    pub last_seq: SequenceNumber,
    pub timestamp: u64,
    /// Raft index of the write, which orders eviction identically on every replica.
    pub index: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub sequence: SequenceNumber,
    pub tenant: Option<String>,
}

/// The whole replicated state; also the snapshot image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    /// The sequence number the next record gets.
    pub next_seq: SequenceNumber,
    /// Records before this were truncated by a replicated `Truncate`.
    pub log_start: SequenceNumber,
    pub tenants: BTreeMap<String, TenantStats>,
    pub producers: BTreeMap<u64, ProducerState>,
    pub checkpoints: BTreeMap<String, Checkpoint>,
    /// Quotas set with `replog quota set` (over the nodes' configured ones).
    pub quotas: BTreeMap<String, QuotaLimits>,
}

/// An image as replog before quotas stored it (`SM_SNAPSHOT` files of older versions).
#[derive(Deserialize)]
pub struct ImageV1 {
    applied: Option<LogId>,
    membership: StoredMembership,
    next_seq: SequenceNumber,
    log_start: SequenceNumber,
    tenants: BTreeMap<String, TenantStats>,
    producers: BTreeMap<u64, ProducerState>,
    checkpoints: BTreeMap<String, Checkpoint>,
}

impl From<ImageV1> for Image {
    fn from(v: ImageV1) -> Image {
        Image {
            applied: v.applied,
            membership: v.membership,
            next_seq: v.next_seq,
            log_start: v.log_start,
            tenants: v.tenants,
            producers: v.producers,
            checkpoints: v.checkpoints,
            quotas: BTreeMap::new(),
        }
    }
}

impl Default for Image {
    fn default() -> Self {
        Image {
            applied: None,
            membership: StoredMembership::default(),
            next_seq: 1,
            log_start: 1,
            tenants: BTreeMap::new(),
            producers: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            quotas: BTreeMap::new(),
        }
    }
}
