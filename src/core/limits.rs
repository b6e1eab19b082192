//! The limits of the node's use cases: what one request, stream or client may take (the
//! `limits` section of the configuration). Every refusal names its key.

use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::raft::state_machine::DEFAULT_MAX_PRODUCERS;

/// A limit with a value that cannot work: which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: limits.{key}: {why}")]
pub struct InvalidLimit {
    pub key: &'static str,
    pub why: String,
}

fn invalid(key: &'static str, why: impl std::fmt::Display) -> InvalidLimit {
    InvalidLimit {
        key,
        why: why.to_string(),
    }
}

/// What one request, stream or client may take. Each refusal names the key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Data bytes of one entry. Default 1MiB (Kafka's default message size).
    pub max_entry_bytes: ByteSize,
    /// Entries in one `WriteBatch`. Default 10000.
    pub max_batch_entries: usize,
    /// Data bytes of one `WriteBatch`. Default 8MiB (below the WAL's 16MiB frame limit).
    pub max_batch_bytes: ByteSize,
    /// Largest gRPC message, both directions, client API and Raft. Default 64MiB.
    pub max_message_bytes: ByteSize,
    /// Replay streams open at once on a node. Default 256.
    pub max_replay_streams: usize,
    /// Requests (HTTP/2 streams) in flight at once on one client connection; more wait for the
    /// client's connection to free a slot (HTTP/2 flow control). Default 1024.
    pub max_concurrent_streams: u32,
    /// Entries per replay message at most. Default 1024.
    pub replay_batch_entries: usize,
    /// Replay messages buffered per stream before the reader waits for the client. Default 8.
    pub replay_buffer_messages: usize,
    /// How long a replay with `min_sequence` waits for this node to apply it. Default 10s.
    #[serde(with = "humantime_serde")]
    pub min_sequence_wait: Duration,
    /// A replica serves replay only if it heard from the leader within this. Default 3s.
    #[serde(with = "humantime_serde")]
    pub max_leader_silence: Duration,
    /// ... and is at most this many entries behind what it knows is committed. Default 10000.
    pub max_lag_entries: u64,
    /// Producers remembered for idempotent retries. Default 100000.
    pub max_producers: usize,
    /// Named checkpoints at most. Default 10000.
    pub max_checkpoints: usize,
    /// Records the leader coalesces into one Raft entry at most (a single larger batch goes
    /// alone). Default 10000; at most `max_batch_entries`.
    pub coalesce_max_entries: usize,
    /// Data bytes the leader coalesces into one Raft entry at most. Default 4MiB; at most
    /// `max_batch_bytes`.
    pub coalesce_max_bytes: ByteSize,
    /// Write entries the leader has proposed and not yet answered at most; while that many are
    /// in flight, new writes wait and go together in the next one. Default 2.
    pub coalesce_max_proposals: usize,
    /// Records an entry needs to be proposed while another is in flight (else its writes wait
    /// for the entries in flight to be answered, and more join them). Default 16.
    pub coalesce_pipeline_min_entries: usize,
    /// ... or data bytes. Default 32KiB.
    pub coalesce_pipeline_min_bytes: ByteSize,
    /// Writes waiting at the leader to be proposed at most; more wait to be queued. Default
    /// 16384.
    pub write_queue: usize,
    /// `Produce` streams open at once on a node. Default 1024.
    pub max_produce_streams: usize,
    /// Writes a `Produce` stream (and a producer id) has in flight at most; the stream reads
    /// no more until one is answered. Default 1024.
    pub produce_max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entry_bytes: ByteSize::mib(1),
            max_batch_entries: 10_000,
            max_batch_bytes: ByteSize::mib(8),
            max_message_bytes: ByteSize::mib(64),
            max_replay_streams: 256,
            max_concurrent_streams: 1024,
            replay_batch_entries: 1024,
            replay_buffer_messages: 8,
            min_sequence_wait: Duration::from_secs(10),
            max_leader_silence: Duration::from_secs(3),
            max_lag_entries: 10_000,
            max_producers: DEFAULT_MAX_PRODUCERS,
            max_checkpoints: 10_000,
            coalesce_max_entries: 10_000,
            coalesce_max_bytes: ByteSize::mib(4),
            coalesce_max_proposals: 2,
            coalesce_pipeline_min_entries: 16,
            coalesce_pipeline_min_bytes: ByteSize::kib(32),
            write_queue: 16_384,
            max_produce_streams: 1024,
            produce_max_in_flight: 1024,
        }
    }
}

impl Limits {
    pub fn validate(&self) -> Result<(), InvalidLimit> {
        let pos = |key: &'static str, v: u64| {
            if v == 0 {
                Err(invalid(key, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        pos("max_entry_bytes", self.max_entry_bytes.as_u64())?;
        pos("max_batch_entries", self.max_batch_entries as u64)?;
        pos("max_batch_bytes", self.max_batch_bytes.as_u64())?;
        pos("max_replay_streams", self.max_replay_streams as u64)?;
        pos(
            "max_concurrent_streams",
            u64::from(self.max_concurrent_streams),
        )?;
        pos("replay_batch_entries", self.replay_batch_entries as u64)?;
        pos("replay_buffer_messages", self.replay_buffer_messages as u64)?;
        pos("max_lag_entries", self.max_lag_entries)?;
        pos("max_producers", self.max_producers as u64)?;
        pos("max_checkpoints", self.max_checkpoints as u64)?;
        pos("coalesce_max_entries", self.coalesce_max_entries as u64)?;
        pos("coalesce_max_bytes", self.coalesce_max_bytes.as_u64())?;
        pos("coalesce_max_proposals", self.coalesce_max_proposals as u64)?;
        pos("write_queue", self.write_queue as u64)?;
        pos("max_produce_streams", self.max_produce_streams as u64)?;
        pos("produce_max_in_flight", self.produce_max_in_flight as u64)?;
        if self.coalesce_max_entries > self.max_batch_entries {
            return Err(invalid(
                "coalesce_max_entries",
                "must not exceed limits.max_batch_entries (a coalesced entry must fit a frame)",
            ));
        }
        if self.coalesce_max_bytes > self.max_batch_bytes {
            return Err(invalid(
                "coalesce_max_bytes",
                "must not exceed limits.max_batch_bytes (a coalesced entry must fit a frame)",
            ));
        }
        let msg = self.max_message_bytes.as_u64();
        if !(4 << 20..=1 << 30).contains(&msg) {
            return Err(invalid(
                "max_message_bytes",
                format!("{msg} bytes is outside 4MiB..=1GiB"),
            ));
        }
        if self.max_batch_bytes.as_u64() + (1 << 20) > msg {
            return Err(invalid(
                "max_batch_bytes",
                "must be at least 1MiB below limits.max_message_bytes",
            ));
        }
        if self.max_entry_bytes > self.max_batch_bytes {
            return Err(invalid(
                "max_entry_bytes",
                "must not exceed limits.max_batch_bytes",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_and_produce_limits_are_checked_by_name() {
        assert!(Limits::default().validate().is_ok());
        let bad = |l: Limits| l.validate().map_err(|e| e.key).err();
        assert_eq!(
            bad(Limits {
                coalesce_max_entries: 20_000,
                ..Limits::default()
            }),
            Some("coalesce_max_entries")
        );
        assert_eq!(
            bad(Limits {
                coalesce_max_bytes: ByteSize::mib(9),
                ..Limits::default()
            }),
            Some("coalesce_max_bytes")
        );
        for (key, l) in [
            (
                "coalesce_max_proposals",
                Limits {
                    coalesce_max_proposals: 0,
                    ..Limits::default()
                },
            ),
            (
                "write_queue",
                Limits {
                    write_queue: 0,
                    ..Limits::default()
                },
            ),
            (
                "max_produce_streams",
                Limits {
                    max_produce_streams: 0,
                    ..Limits::default()
                },
            ),
            (
                "produce_max_in_flight",
                Limits {
                    produce_max_in_flight: 0,
                    ..Limits::default()
                },
            ),
        ] {
            assert_eq!(bad(l), Some(key));
        }
    }
}
