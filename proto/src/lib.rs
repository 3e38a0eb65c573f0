//! The scale-agent wire protocol: `scaleagent.v1`.
//!
//! Agents and the hub talk over one bidirectional gRPC stream per agent replica,
//! `AgentHub.Connect(stream AgentFrame) returns (stream HubFrame)`. This crate
//! holds the Rust generated from `proto/scaleagent/v1/agent.proto`, which is the
//! source of truth and documents every message; the docs of [`v1`] are its
//! comments.
//!
//! - Messages: [`v1::AgentFrame`] (agent to hub) and [`v1::HubFrame`] (hub to
//!   agent), each a oneof of frame kinds.
//! - Client, for the agent: [`v1::agent_hub_client::AgentHubClient`], built with
//!   `AgentHubClient::new(channel)` on a `tonic::transport::Channel` the agent
//!   configures (mTLS, keepalive). There is no generated `connect(dst)`
//!   constructor: it would clash with the `Connect` rpc, which is the client's
//!   `connect` method.
//! - Server, for the hub: implement [`v1::agent_hub_server::AgentHub`] and serve
//!   [`v1::agent_hub_server::AgentHubServer`].
//!
//! Compatibility: v1 only grows. Unknown fields are ignored; a frame whose oneof
//! is `None` is a frame kind newer than the receiver and must be ignored, not
//! treated as an error. Breaking changes go to a `v2` package.
//!
//! The code is generated at build time with `protox` and `tonic-prost-build`,
//! so no `protoc` is needed.

/// The protocol version this crate speaks, sent in `Hello.protocol_version` and
/// negotiated in `Welcome.protocol_version`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The encoded `google.protobuf.FileDescriptorSet` of `scaleagent/v1/agent.proto`
/// and its imports, with source info; for gRPC server reflection and for tools
/// that decode frames without the generated types.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/scaleagent.v1.fds.bin"));

/// The `scaleagent.v1` package: messages, enums, and the `AgentHub` client and
/// server.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/scaleagent.v1.rs"));
}
