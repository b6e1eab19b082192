//! Generated gRPC clients (see build.rs).

#![allow(clippy::all)]

pub mod replog {
    tonic::include_proto!("replog.v1");
}

pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}
