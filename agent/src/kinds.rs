//! Which kinds an account watches: the default set, or the config's `kinds`, less
//! `omitKinds`, resolved against the cluster's discovery. Names are case-insensitive and
//! may carry a group (`Ingress.networking.k8s.io`).

use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};

/// What is watched when `kinds` is empty: the objects Spinnaker shows and deploys.
/// Secrets are never in it (their data never leaves the cluster).
pub const DEFAULT_KINDS: &[&str] = &[
    "Namespace",
    "Pod",
    "Service",
    "ConfigMap",
    "ServiceAccount",
    "PersistentVolumeClaim",
    "Deployment.apps",
    "ReplicaSet.apps",
    "StatefulSet.apps",
    "DaemonSet.apps",
    "Job.batch",
    "CronJob.batch",
    "HorizontalPodAutoscaler.autoscaling",
    "Ingress.networking.k8s.io",
    "NetworkPolicy.networking.k8s.io",
];

/// A kind as written in config: `Kind` or `Kind.group`, matched case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindName {
    kind: String,
    group: Option<String>,
}

impl KindName {
    /// Parses `Kind` or `Kind.group`.
    pub fn parse(s: &str) -> KindName {
        match s.split_once('.') {
            Some((kind, group)) => KindName {
                kind: kind.to_ascii_lowercase(),
                group: Some(group.to_ascii_lowercase()),
            },
            None => KindName {
                kind: s.to_ascii_lowercase(),
                group: None,
            },
        }
    }

    /// Whether an API resource is this kind.
    pub fn matches(&self, ar: &ApiResource) -> bool {
        ar.kind.eq_ignore_ascii_case(&self.kind)
            && self
                .group
                .as_ref()
                .is_none_or(|g| ar.group.eq_ignore_ascii_case(g))
    }
}

/// One kind to watch, as the cluster serves it.
#[derive(Debug, Clone)]
pub struct WatchedKind {
    /// Group, version, kind and plural.
    pub resource: ApiResource,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
}

/// Resolves the config's kind lists against discovery. Returns the kinds to watch and the
/// names that matched nothing (reported, not fatal).
pub fn resolve(
    discovery: &Discovery,
    kinds: &[String],
    omit_kinds: &[String],
) -> (Vec<WatchedKind>, Vec<String>) {
    let wanted: Vec<String> = if kinds.is_empty() {
        DEFAULT_KINDS.iter().map(|s| s.to_string()).collect()
    } else {
        kinds.to_vec()
    };
    let omit: Vec<KindName> = omit_kinds.iter().map(|k| KindName::parse(k)).collect();
    let mut out: Vec<WatchedKind> = Vec::new();
    let mut unknown = Vec::new();
    for name in &wanted {
        let k = KindName::parse(name);
        let mut found = false;
        for group in discovery.groups() {
            // The preferred version of each group only: one watch per kind.
            for (ar, caps) in group.recommended_resources() {
                if !k.matches(&ar) || !watchable(&caps) || omit.iter().any(|o| o.matches(&ar)) {
                    continue;
                }
                found = true;
                if !out
                    .iter()
                    .any(|w| w.resource.group == ar.group && w.resource.kind == ar.kind)
                {
                    out.push(WatchedKind {
                        namespaced: caps.scope == Scope::Namespaced,
                        resource: ar,
                    });
                }
            }
        }
        if !found && !omit.iter().any(|o| o == &k) {
            unknown.push(name.clone());
        }
    }
    (out, unknown)
}

fn watchable(caps: &ApiCapabilities) -> bool {
    caps.supports_operation(kube::discovery::verbs::LIST)
        && caps.supports_operation(kube::discovery::verbs::WATCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ar(group: &str, kind: &str) -> ApiResource {
        ApiResource {
            group: group.into(),
            version: "v1".into(),
            api_version: if group.is_empty() {
                "v1".into()
            } else {
                format!("{group}/v1")
            },
            kind: kind.into(),
            plural: format!("{}s", kind.to_ascii_lowercase()),
        }
    }

    #[test]
    fn names_match_case_insensitively_with_optional_group() {
        assert!(KindName::parse("deployment").matches(&ar("apps", "Deployment")));
        assert!(KindName::parse("Deployment.apps").matches(&ar("apps", "Deployment")));
        assert!(!KindName::parse("Deployment.extensions").matches(&ar("apps", "Deployment")));
        assert!(
            KindName::parse("ingress.NETWORKING.k8s.io")
                .matches(&ar("networking.k8s.io", "Ingress"))
        );
    }

    #[test]
    fn secrets_are_not_watched_by_default() {
        assert!(
            !DEFAULT_KINDS
                .iter()
                .any(|k| KindName::parse(k).matches(&ar("", "Secret")))
        );
    }
}
