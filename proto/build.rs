//! Generates the protobuf messages and the tonic client and server from
//! `scaleagent/v1/agent.proto`.
//!
//! The .proto is parsed by `protox`, a protobuf compiler in pure Rust, so that
//! building needs no system `protoc`; `tonic-prost-build` turns the resulting
//! descriptors into Rust. The descriptors are also written out, encoded, so the
//! crate can offer them for gRPC reflection.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTO: &str = "scaleagent/v1/agent.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Source info keeps the .proto comments, which become the Rust docs.
    let fds = protox::compile([PROTO], ["."])?;
    fs::write(out_dir.join("scaleagent.v1.fds.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No generated `AgentHubClient::connect(dst)` constructor: it would clash
        // with the `Connect` rpc's method of the same name. The agent builds its
        // own `Channel` anyway (mTLS, keepalive) and uses `AgentHubClient::new`.
        .build_transport(false)
        // `bytes::Bytes` for every bytes field: object bodies can be passed on
        // and cached without copying.
        .bytes(".scaleagent.v1")
        .compile_fds(fds)?;
    Ok(())
}
