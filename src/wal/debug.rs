//! The WAL's debug surface: what the `replog wal ...` commands and the integration tests need
//! beyond the [`Manager`](super::Manager) API (like raft-engine's), kept small so the on-disk
//! formats stay free to change: file names, header sizes for corruption tests, and the offline
//! checker.

pub use super::frame::{FRAME_HEADER_LEN, FRAME_MAGIC};
pub use super::segment::{SEGMENT_HEADER_LEN, index_file_name, parse_file_name, segment_file_name};
pub use super::verify::{SegmentHealth, SegmentReport, verify};
