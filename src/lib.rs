//! replog: durable, replicated, multi-tenant logs.
//!
//! Layout:
//! - [`wal`]: the segment-based write-ahead log, usable on its own and as the node's Raft log
//!   store. Plain threads and files: it uses neither tokio, openraft nor prost.
//! - [`cli`]: the `replog` command line (`replog wal ...`), on top of the library.
//! - `proto/` (compiled by `build.rs` with protox, no system `protoc`): the `replog.v1` types,
//!   included below for the API that the replication milestone adds.

pub mod api;
pub mod cli;
pub mod node;
pub mod raft;
pub mod wal;

/// Generated protobuf types of package `replog.v1`.
pub mod proto {
    tonic::include_proto!("replog.v1");

    /// The internal node-to-node Raft service (`replog.raft.v1`).
    pub mod raft {
        tonic::include_proto!("replog.raft.v1");
    }
}
