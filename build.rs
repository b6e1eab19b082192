//! Compiles `proto/` with protox (pure Rust), so building needs no system `protoc`. Also writes
//! the encoded descriptor set the server's reflection service publishes.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/replog/v1/log.proto",
        "proto/replog/v1/admin.proto",
        "proto/replog/raft/v1/raft.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("replog_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
