//! replog: durable, replicated, multi-tenant logs.
//!
//! Layout:
//! - [`checksum`]: the entry checksum the WAL stores and the client checks (a leaf).
//! - [`fs`]: the file-system seam every durable byte goes through ([`fs::StdFs`], and
//!   [`fs::MemFs`] for fault injection); it imports nothing from the crate.
//! - [`wal`]: the segment-based write-ahead log, usable on its own and as the node's Raft log
//!   store. Plain threads and files: it uses neither tokio, openraft nor prost.
//! - [`raft`]: everything that knows openraft: the log store over the WAL, the state machine in
//!   sled, snapshots made of segment files, the Raft gRPC network (client and service).
//! - [`core`]: the node's use cases (writes, checkpoints, truncation, membership, replay, the
//!   in-sync rule) with their own request/result types and one typed error.
//! - [`node`]: one node wired together (storage, Raft, the core, the server, background tasks)
//!   and its shutdown.
//! - [`api`]: the public gRPC services (`LogService`, `AdminService`, health, reflection), a
//!   thin adapter over the core: decode, call, map the error to a status (in one function).
//! - [`wire`]: the wire contract shared by the API and the client (error details, leader hints,
//!   code names, name and operation rules).
//! - [`client`]: the Rust client (leader following, retries with idempotency keys, replay
//!   streams with checksum verification); it uses only the protos, `wire` and `checksum`.
//! - [`config`]: the node's YAML config with env and flag overrides; [`metrics`]: the
//!   Prometheus registry and `/metrics`.
//! - [`cli`]: the `replog` command line (`serve`, `dev`, client commands, `wal ...`, benches).
//! - `proto/` (compiled by `build.rs` with protox, no system `protoc`): the `replog.v1` types,
//!   included below, and the internal `replog.raft.v1` service.

pub mod api;
pub mod auth;
pub mod checksum;
pub mod cli;
pub mod client;
pub mod config;
pub mod core;
pub mod fs;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod tls;
pub mod wal;
pub mod wire;

/// Generated protobuf types of package `replog.v1`.
pub mod proto {
    tonic::include_proto!("replog.v1");

    /// The internal node-to-node Raft service (`replog.raft.v1`).
    pub mod raft {
        tonic::include_proto!("replog.raft.v1");
    }
}
