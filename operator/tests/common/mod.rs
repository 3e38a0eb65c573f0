//! What the operator's integration tests share.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use scale_agent_crds::AgentShard;
use scale_agent_operator::children::Defaults;
use scale_agent_operator::claims_index::Resolution;
use scale_agent_operator::decide::{self, Decision, Fetched};
use scale_agent_operator::kubeconfigs::Source;
use scale_agent_operator::replicas::Replicas;

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

/// What the operator decides for `shard` at `now`, with these claims and Secrets (read), no TLS
/// and no replica, its defaults naming the shards' image.
pub fn decide(
    shard: &AgentShard,
    resolutions: &BTreeMap<String, Resolution>,
    secrets: &BTreeMap<String, Option<Secret>>,
    now: &Time,
) -> Decision {
    let secrets: BTreeMap<String, Option<Source>> = secrets
        .iter()
        .map(|(name, s)| (name.clone(), s.clone().map(Source::read)))
        .collect();
    decide::decide(
        Fetched {
            shard,
            resolutions,
            secrets: &secrets,
            tls_secret: None,
            agent_ca: None,
            replicas: &Replicas::default(),
        },
        &Defaults {
            image: Some("example.com/agent:1".into()),
            ..Defaults::default()
        },
        now,
    )
    .expect("decides")
}
