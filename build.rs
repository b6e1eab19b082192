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
        // A Raft message's body as `Bytes`: decoded as a view of the received buffer, which a
        // follower's records then share (`raft::types::from_wire_shared`) instead of copying.
        .bytes(".replog.raft.v1.RaftMessage.body")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
