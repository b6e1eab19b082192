//! gRPC services. This milestone has the internal Raft service; the public log and admin APIs
//! come with the API milestone.

pub mod raft_service;
