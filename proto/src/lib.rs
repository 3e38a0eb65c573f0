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

/// What travels in the Kubernetes API frames (`KubeRequest` and its answers),
/// shared by the hub, which builds requests, and the agent, which replays
/// them: one place for the header rules both sides apply.
pub mod kube_api {
    /// The capability both sides list in Hello and Welcome to carry
    /// Kubernetes API requests on the stream.
    pub const CAPABILITY: &str = "kube-api";

    /// The capability both sides list to carry connection upgrades (exec,
    /// attach, port-forward) as `KubeRequest.upgrade`, besides [`CAPABILITY`].
    pub const UPGRADE_CAPABILITY: &str = "kube-upgrade";

    /// Headers that belong to one HTTP connection, not to the request or the
    /// answer (RFC 9110 §7.6.1, plus `host` and the framing headers the
    /// receiving side writes itself): never carried over the stream.
    pub fn is_hop_by_hop(name: &str) -> bool {
        const HOP: &[&str] = &[
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "host",
            "content-length",
        ];
        HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
    }

    /// Headers that carry the client's credentials for the hub, or claims
    /// only an authenticating front proxy may make to an API server: never
    /// passed on to the cluster, where the agent speaks with the account's
    /// own credentials.
    pub fn is_credential(name: &str) -> bool {
        const CREDENTIALS: &[&str] = &["authorization", "proxy-authorization", "cookie"];
        CREDENTIALS.iter().any(|h| name.eq_ignore_ascii_case(h))
            || starts_with_ignore_case(name, "x-remote-")
    }

    /// `Impersonate-User`, `Impersonate-Group`, `Impersonate-Uid` and
    /// `Impersonate-Extra-*`: a request that carries one asks the cluster to
    /// act as someone else, with the agent's rights to do so.
    pub fn is_impersonation(name: &str) -> bool {
        starts_with_ignore_case(name, "impersonate-")
    }

    fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
        name.len() >= prefix.len()
            && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn header_rules() {
            for h in [
                "Connection",
                "transfer-encoding",
                "Host",
                "Content-Length",
                "TE",
            ] {
                assert!(is_hop_by_hop(h), "{h}");
            }
            for h in ["content-type", "accept", "audit-id"] {
                assert!(!is_hop_by_hop(h) && !is_credential(h), "{h}");
            }
            for h in ["Authorization", "cookie", "X-Remote-User", "x-remote-group"] {
                assert!(is_credential(h), "{h}");
            }
            assert!(is_impersonation("Impersonate-User"));
            assert!(is_impersonation("impersonate-extra-scopes"));
            assert!(!is_impersonation("impersonat"));
        }
    }
}
