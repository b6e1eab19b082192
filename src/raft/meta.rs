//! The Raft metadata that cannot be rebuilt from the WAL: the vote, the committed log id and the
//! Raft purge point. Written by our own code (write, fsync, rename, directory fsync) through the
//! WAL's `FileSystem`, so crash tests can cut power between any two steps.
//!
//! Format of `RAFT_META` (little-endian):
//! ```text
//!  0 magic: u32    META_MAGIC
//!  4 version: u8   META_VERSION
//!  5 len: u32      bytes of the postcard body
//!  9 crc: u32      CRC-32 of the body
//! 13 body          postcard(RaftMeta)
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::types::{LogId, Vote};
use crate::fs::{self, FileSystem};

pub const META_FILE: &str = "RAFT_META";
const META_MAGIC: u32 = 0x4154_4D52; // "RMTA"
const META_VERSION: u8 = 1;
const META_HEADER_LEN: usize = 13;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMeta {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    /// Raft's purge point: the last log id openraft no longer reads from this store. The WAL may
    /// still hold records below it (the data's own start is the WAL's log start).
    pub purged: Option<LogId>,
}

/// Reads and atomically replaces `RAFT_META`.
pub struct MetaStore {
    fs: Arc<dyn FileSystem>,
    path: PathBuf,
}

impl MetaStore {
    pub fn new(fs: Arc<dyn FileSystem>, dir: &Path) -> Self {
        MetaStore {
            fs,
            path: dir.join(META_FILE),
        }
    }

    /// The stored metadata, or the default if none was ever written. A damaged file is an
    /// error: the vote cannot be guessed.
    pub fn load(&self) -> io::Result<RaftMeta> {
        match fs::read_file(&*self.fs, &self.path) {
            Ok(bytes) => decode(&bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(RaftMeta::default()),
            Err(e) => Err(e),
        }
    }

    /// Durable before it returns (blocking I/O: call it off the async executor).
    pub fn store(&self, meta: &RaftMeta) -> io::Result<()> {
        fs::write_file_atomic(&*self.fs, &self.path, &encode(meta)?)
    }
}

pub fn encode(meta: &RaftMeta) -> io::Result<Vec<u8>> {
    seal(META_MAGIC, meta)
}

pub fn decode(b: &[u8]) -> io::Result<RaftMeta> {
    unseal(META_MAGIC, b, META_FILE)
}

/// Frames a value as `magic | version | len | crc | postcard body` (see the module doc).
pub fn seal<T: Serialize>(magic: u32, value: &T) -> io::Result<Vec<u8>> {
    let body =
        postcard::to_stdvec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut out = Vec::with_capacity(META_HEADER_LEN + body.len());
    out.extend_from_slice(&magic.to_le_bytes());
    out.push(META_VERSION);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks and decodes what [`seal`] made; `what` names the file in errors.
pub fn unseal<T: for<'de> Deserialize<'de>>(magic: u32, b: &[u8], what: &str) -> io::Result<T> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {why}"));
    if b.len() < META_HEADER_LEN {
        return Err(bad("cut short"));
    }
    let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    if u32_at(0) != magic || b[4] != META_VERSION {
        return Err(bad("bad magic or version"));
    }
    let body = &b[META_HEADER_LEN..];
    if u32_at(5) as usize != body.len() || u32_at(9) != crc32fast::hash(body) {
        return Err(bad("length or checksum mismatch"));
    }
    postcard::from_bytes(body).map_err(|e| bad(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RaftMeta {
        RaftMeta {
            vote: Some(Vote::new(3, 2)),
            committed: Some(LogId::new_term_index(3, 17)),
            purged: Some(LogId::new_term_index(1, 4)),
        }
    }

    #[test]
    fn round_trip() {
        assert_eq!(decode(&encode(&sample()).unwrap()).unwrap(), sample());
        assert_eq!(
            decode(&encode(&RaftMeta::default()).unwrap()).unwrap(),
            RaftMeta::default()
        );
    }

    #[test]
    fn every_flipped_byte_or_cut_is_detected() {
        let good = encode(&sample()).unwrap();
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x40;
            assert!(decode(&b).is_err(), "flip at {i} undetected");
            assert!(decode(&good[..i]).is_err(), "cut at {i} undetected");
        }
    }
}
