//! Compiles replog's public log API (`../../proto/replog/v1/log.proto`) and the part of etcd's
//! v3 API the harness uses (`proto/etcd/rpc.proto`) with protox (pure Rust): no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let replog_root = here.join("../../proto");
    let etcd_root = here.join("proto");
    let files = [
        replog_root.join("replog/v1/log.proto"),
        etcd_root.join("etcd/rpc.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&replog_root, &etcd_root])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
