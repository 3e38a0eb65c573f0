//! What the operator's integration tests share.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

/// A kubeconfig every check accepts with the operator's defaults: an `https://` server at a
/// documentation address (192.0.2.0/24), nothing the agent would run or read.
pub const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://192.0.2.1:6443\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user: {}\n";

/// A Secret holding [`KUBECONFIG`] under the default key.
pub fn kubeconfig_secret() -> Secret {
    Secret {
        data: Some(
            [(
                "kubeconfig".to_owned(),
                ByteString(KUBECONFIG.as_bytes().to_vec()),
            )]
            .into(),
        ),
        ..Secret::default()
    }
}
