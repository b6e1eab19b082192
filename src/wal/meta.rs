//! Small metadata files beside the segments, each replaced atomically
//! ([`crate::fs::write_file_atomic`]) and protected by a CRC.
//!
//! `LOG_START` — the prefix-truncation watermark:
//! ```text
//! { magic: u32 META_MAGIC | kind: u8 = 1 | reserved: [u8;3] | index: u64 | seq: u64 | crc: u32 }
//! ```
//! `CHECKPOINTS` — named positions:
//! ```text
//! { magic: u32 META_MAGIC | kind: u8 = 2 | reserved: [u8;3] | count: u32
//!   | count x { name_len: u16 | name | seq: u64 } | crc: u32 }
//! ```
//! The CRC covers every byte before it.

use std::collections::BTreeMap;

use super::error::Corruption;
use super::types::LogStart;

pub const LOG_START_FILE: &str = "LOG_START";
pub const CHECKPOINTS_FILE: &str = "CHECKPOINTS";
const META_MAGIC: u32 = 0x544D_4C57; // "WLMT"
const KIND_LOG_START: u8 = 1;
const KIND_CHECKPOINTS: u8 = 2;
/// Checkpoint names are at most this many bytes.
pub const CHECKPOINT_NAME_MAX: usize = 255;

fn with_crc(mut b: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Checks magic, kind and CRC; returns the bytes between the 8-byte prefix and the CRC.
fn open_envelope<'a>(b: &'a [u8], kind: u8, file: &'static str) -> Result<&'a [u8], Corruption> {
    let bad = Corruption::BadMetadata(file);
    if b.len() < 12 || b[..4] != META_MAGIC.to_le_bytes() || b[4] != kind {
        return Err(bad);
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(bad);
    }
    Ok(&body[8..])
}

fn prefix(kind: u8) -> Vec<u8> {
    let mut b = META_MAGIC.to_le_bytes().to_vec();
    b.extend_from_slice(&[kind, 0, 0, 0]);
    b
}

pub fn encode_log_start(start: LogStart) -> Vec<u8> {
    let mut b = prefix(KIND_LOG_START);
    b.extend_from_slice(&start.index.to_le_bytes());
    b.extend_from_slice(&start.seq.to_le_bytes());
    with_crc(b)
}

pub fn decode_log_start(b: &[u8]) -> Result<LogStart, Corruption> {
    let body = open_envelope(b, KIND_LOG_START, LOG_START_FILE)?;
    if body.len() != 16 {
        return Err(Corruption::BadMetadata(LOG_START_FILE));
    }
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().unwrap_or_default());
    Ok(LogStart {
        index: u64_at(0),
        seq: u64_at(8),
    })
}

pub fn encode_checkpoints(cps: &BTreeMap<String, u64>) -> Vec<u8> {
    let mut b = prefix(KIND_CHECKPOINTS);
    b.extend_from_slice(&(cps.len() as u32).to_le_bytes());
    for (name, seq) in cps {
        debug_assert!(name.len() <= CHECKPOINT_NAME_MAX);
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&seq.to_le_bytes());
    }
    with_crc(b)
}

pub fn decode_checkpoints(b: &[u8]) -> Result<BTreeMap<String, u64>, Corruption> {
    let bad = || Corruption::BadMetadata(CHECKPOINTS_FILE);
    let mut body = open_envelope(b, KIND_CHECKPOINTS, CHECKPOINTS_FILE)?;
    let mut take = |n: usize| -> Result<&[u8], Corruption> {
        let (head, rest) = body.split_at_checked(n).ok_or_else(bad)?;
        body = rest;
        Ok(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad())?);
    let mut cps = BTreeMap::new();
    for _ in 0..count {
        let len = u16::from_le_bytes(take(2)?.try_into().map_err(|_| bad())?) as usize;
        let name = std::str::from_utf8(take(len)?)
            .map_err(|_| bad())?
            .to_owned();
        let seq = u64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?);
        cps.insert(name, seq);
    }
    if !take(0)?.is_empty() || !body.is_empty() {
        return Err(bad());
    }
    Ok(cps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_start_round_trip_and_corruption() {
        let s = LogStart {
            index: 12,
            seq: 340,
        };
        let b = encode_log_start(s);
        assert_eq!(decode_log_start(&b), Ok(s));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 4;
            assert!(decode_log_start(&bad).is_err());
        }
        assert!(decode_log_start(&b[..b.len() - 2]).is_err());
    }

    #[test]
    fn checkpoints_round_trip_and_corruption() {
        let cps: BTreeMap<String, u64> =
            [("a".to_string(), 1), ("consumer-7".to_string(), 99)].into();
        let b = encode_checkpoints(&cps);
        assert_eq!(decode_checkpoints(&b), Ok(cps));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 4;
            assert!(decode_checkpoints(&bad).is_err());
        }
        assert_eq!(
            decode_checkpoints(&encode_checkpoints(&BTreeMap::new())),
            Ok(BTreeMap::new())
        );
    }
}
