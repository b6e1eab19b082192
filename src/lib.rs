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

    /// The codec of every generated client and server (`build.rs` names it): prost's, with a
    /// first buffer of [`codec::FIRST_BUFFER_BYTES`] per call instead of tonic's 8 KiB.
    pub mod codec {
        use std::marker::PhantomData;

        use tonic::codec::{BufferSettings, Codec};
        use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

        /// Bytes each call's encode and decode buffers start with. tonic's default (8 KiB) is
        /// allocated twice per unary call, for a `Write` of ~150 bytes and its ~30-byte answer;
        /// a bigger message grows the buffer as it needs (a stream keeps what it grew to).
        pub const FIRST_BUFFER_BYTES: usize = 1024;
        /// tonic's default: a stream's encoder hands on what it has once it holds this much.
        const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

        fn settings() -> BufferSettings {
            BufferSettings::new(FIRST_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
        }

        /// See the module doc.
        #[derive(Debug, Clone)]
        pub struct GrpcCodec<T, U>(PhantomData<(T, U)>);

        impl<T, U> Default for GrpcCodec<T, U> {
            fn default() -> Self {
                GrpcCodec(PhantomData)
            }
        }

        impl<T, U> Codec for GrpcCodec<T, U>
        where
            T: prost::Message + Send + 'static,
            U: prost::Message + Default + Send + 'static,
        {
            type Encode = T;
            type Decode = U;
            type Encoder = ProstEncoder<T>;
            type Decoder = ProstDecoder<U>;

            fn encoder(&mut self) -> Self::Encoder {
                ProstCodec::<T, U>::raw_encoder(settings())
            }

            fn decoder(&mut self) -> Self::Decoder {
                ProstCodec::<T, U>::raw_decoder(settings())
            }
        }
    }

    /// The internal node-to-node Raft service (`replog.raft.v1`).
    pub mod raft {
        tonic::include_proto!("replog.raft.v1");
    }
}
