//! `replog::wal` — a segment-based write-ahead log, usable on its own and as the Raft log store.
//!
//! Layout:
//! - The public API: [`Manager`], its [`config`], [`types`] (entries, records, frames,
//!   segments), [`error`]s and [`metrics`]; [`debug`]: what the `replog wal` commands and the
//!   integration tests need beyond it (file names, header sizes, the offline checker). The rest
//!   is the crate's own.
//! - `record`, `frame`, `segment`, `meta`: the on-disk formats, each documented above its
//!   encoder.
//! - All file I/O goes through [`crate::fs::FileSystem`].
//! - `state`: the state the WAL's threads share (segment table, log bounds, caches, damage);
//!   the bottom layer, which none of the others is imported by.
//! - `scan`: the one strict reader of a segment file's frames (recovery, truncation, repair,
//!   `verify`).
//! - `manager`: the public API, [`Manager`], on top; behind it `pipeline` (leader/follower
//!   group commit: who runs the writer), `writer` (encoding, writes, fsyncs, rolls,
//!   checkpoints; `writer::truncate`: truncation and retention; `writer::swap`: installing a
//!   repaired segment), `preparer` (the next segment file, made in the background), `read`
//!   (cursors and iterators) and `recovery` (open).
//! - `repair`: damaged sealed segments, found by reads and scrubs, rewritten from a replica's
//!   frames.
//! - `verify`: the offline checker behind `replog wal verify`.
//!
//! Invariants:
//! - Frames of a log have log indexes 1, 2, 3, ... without gaps; record sequence numbers never go
//!   back. A frame is atomic: recovery keeps it whole or drops it whole.
//! - Under `sync_policy: immediate` no append is acknowledged before the fsync that covers it.
//! - An fsync or write error is fatal: the WAL refuses further writes; reads go on.
//! - Recovery cuts only a torn tail of the last segment; damage anywhere else is
//!   `CorruptedEntry`, never silently dropped. A damaged sealed segment stays in the log, its
//!   reads failing, until a replica's copy of its frames, checked against the intact log,
//!   replaces it.
//! - This module uses neither tokio, openraft nor prost: it is plain threads and files.
//! - Its files import each other without cycles: `manager` -> `pipeline` -> `writer` ->
//!   `preparer`/`read`/`scan` -> `state` -> `segment`/`frame`/`record` -> `error`/`types`.

pub mod config;
pub mod debug;
pub mod error;
pub(crate) mod frame;
mod indexer;
mod manager;
pub(crate) mod meta;
pub mod metrics;
mod pipeline;
mod preparer;
mod read;
pub(crate) mod record;
mod recovery;
mod repair;
mod scan;
pub(crate) mod segment;
mod state;
mod tenant_read;
mod tenants;
pub mod types;
mod verify;
mod writer;

pub use config::{Compression, Preallocate, SyncPolicy, WalConfig};
pub use error::{Corruption, RecordError, Result, SequenceRule, WalError};
pub use frame::max_batch_frame_len;
pub use manager::Manager;
pub use read::EntryIter;
pub use repair::DamagedSegment;
pub use state::now_us;
pub use types::*;
pub use writer::Completion;
