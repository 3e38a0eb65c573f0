//! An account's `namespaces` as a limit at its Kubernetes API: whatever the
//! kubeconfig behind the account allows, a request through the hub reaches only the
//! namespaces the account lists. The rule is [`check`]; the request path calls it
//! before the cache or the pass-through.
//!
//! What a limited account may do:
//! - anything inside one of its namespaces (`/…/namespaces/<ns>/…`);
//! - read (GET) kinds that are cluster-scoped — Namespaces, CRDs, ClusterRoles,
//!   Nodes, … — which kubectl, Helm and Clouddriver read to find their way and which
//!   hold no namespace's data; which resources are cluster-scoped is known from the
//!   kinds the account streams and from the API server's built-in kinds
//!   ([`CLUSTER_SCOPED`]); a resource known to neither is refused;
//! - discovery (`/api`, `/apis`, `/version`, `/openapi/…`), read only.
//!
//! What it may not: requests in any other namespace; lists, watches and deletes of a
//! namespaced kind across all namespaces; anything through a cluster-scoped object's
//! `proxy` (`nodes/<node>/proxy/...` reaches the node's kubelet, which serves every
//! namespace's pods, logs and exec — `POST .../run/...` runs a command without any
//! upgrade); and every write outside its namespaces,
//! cluster-scoped writes included — among them SelfSubjectAccessReviews and
//! SelfSubjectRulesReviews, whose answer would describe the kubeconfig's rights, not
//! the account's.

use http::Method;

use super::path::ResourcePath;

/// The API server's built-in cluster-scoped resources, `(group, resource)`.
pub const CLUSTER_SCOPED: &[(&str, &str)] = &[
    ("", "namespaces"),
    ("", "nodes"),
    ("", "persistentvolumes"),
    ("", "componentstatuses"),
    ("rbac.authorization.k8s.io", "clusterroles"),
    ("rbac.authorization.k8s.io", "clusterrolebindings"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("apiregistration.k8s.io", "apiservices"),
    ("storage.k8s.io", "storageclasses"),
    ("storage.k8s.io", "csidrivers"),
    ("storage.k8s.io", "csinodes"),
    ("storage.k8s.io", "volumeattachments"),
    ("scheduling.k8s.io", "priorityclasses"),
    ("networking.k8s.io", "ingressclasses"),
    ("node.k8s.io", "runtimeclasses"),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
    ),
    (
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
    ),
    ("certificates.k8s.io", "certificatesigningrequests"),
];

/// Whether `resource` of `group` is one of the API server's built-in cluster-scoped
/// resources.
pub fn builtin_cluster_scoped(group: &str, resource: &str) -> bool {
    CLUSTER_SCOPED
        .iter()
        .any(|(g, r)| *g == group && *r == resource)
}

/// Whether the request may go on for an account limited to `limit` (empty: not
/// limited). `cluster_scoped`: whether the path's resource is known to be
/// cluster-scoped. `Err` is the reason for the 403.
pub fn check(
    limit: &[String],
    method: &Method,
    path: Option<&ResourcePath>,
    cluster_scoped: bool,
) -> Result<(), String> {
    if limit.is_empty() {
        return Ok(());
    }
    let read = method == Method::GET || method == Method::HEAD;
    let Some(path) = path else {
        return if read {
            Ok(())
        } else {
            Err(format!(
                "this account is limited to namespaces {limit:?}: only reads outside a resource path"
            ))
        };
    };
    if let Some(ns) = &path.namespace {
        return if limit.contains(ns) {
            Ok(())
        } else {
            Err(format!(
                "this account is limited to namespaces {limit:?}; namespace {:?} is outside them",
                clip(ns)
            ))
        };
    }
    if path.subresource.as_deref() == Some("proxy") {
        return Err(format!(
            "this account is limited to namespaces {limit:?}: {}/{}/proxy reaches every namespace (a node's kubelet serves all its pods, their logs and exec)",
            clip(&path.resource),
            clip(path.name.as_deref().unwrap_or_default())
        ));
    }
    if !cluster_scoped {
        return Err(format!(
            "this account is limited to namespaces {limit:?}: {} across all namespaces is refused (name a namespace)",
            clip(&path.resource)
        ));
    }
    if !read {
        return Err(format!(
            "this account is limited to namespaces {limit:?}: cluster-scoped {} may be read, not written",
            clip(&path.resource)
        ));
    }
    Ok(())
}

fn clip(s: &str) -> String {
    crate::core::clip::clip(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeapi::path::resource_path;

    fn limit() -> Vec<String> {
        vec!["team-b".into()]
    }

    fn decide(method: Method, path: &str, known_cluster_scoped: bool) -> Result<(), String> {
        let parsed = resource_path(path);
        let cluster_scoped = known_cluster_scoped
            || parsed
                .as_ref()
                .is_some_and(|p| builtin_cluster_scoped(&p.group, &p.resource));
        check(&limit(), &method, parsed.as_ref(), cluster_scoped)
    }

    #[test]
    fn inside_its_namespaces_anything_goes() {
        for (m, p) in [
            (Method::GET, "/api/v1/namespaces/team-b/configmaps"),
            (Method::POST, "/api/v1/namespaces/team-b/secrets"),
            (
                Method::DELETE,
                "/apis/apps/v1/namespaces/team-b/deployments/web",
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/team-b/deployments/web/scale",
            ),
        ] {
            assert_eq!(decide(m.clone(), p, false), Ok(()), "{m} {p}");
        }
    }

    #[test]
    fn other_namespaces_and_all_namespaces_are_refused() {
        for (m, p) in [
            (Method::GET, "/api/v1/namespaces/kube-system/secrets"),
            (Method::POST, "/api/v1/namespaces/team-a/configmaps"),
            (Method::GET, "/api/v1/secrets"),
            (Method::GET, "/api/v1/configmaps"),
            (Method::DELETE, "/apis/apps/v1/deployments"),
            // A kind nobody said is cluster-scoped: refused, not guessed.
            (Method::GET, "/apis/example.com/v1/widgets"),
        ] {
            let decided = decide(m.clone(), p, false);
            assert!(
                decided.as_ref().is_err_and(|why| why.contains("team-b")),
                "{m} {p}: {decided:?}"
            );
        }
    }

    #[test]
    fn cluster_scoped_kinds_are_read_not_written() {
        for p in [
            "/api/v1/namespaces",
            "/api/v1/namespaces/team-a",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
        ] {
            assert_eq!(decide(Method::GET, p, false), Ok(()), "GET {p}");
        }
        // A streamed kind the cache knows is cluster-scoped.
        assert_eq!(
            decide(Method::GET, "/apis/example.com/v1/globals", true),
            Ok(())
        );
        for (m, p) in [
            (
                Method::POST,
                "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            ),
            (Method::DELETE, "/api/v1/namespaces/team-b"),
            (Method::POST, "/api/v1/namespaces"),
            (Method::PUT, "/api/v1/nodes/n1"),
            (Method::POST, "/apis/example.com/v1/globals"),
        ] {
            assert!(decide(m.clone(), p, true).is_err(), "{m} {p}");
        }
    }

    #[test]
    fn a_nodes_proxy_is_refused_whatever_the_method() {
        for (m, p) in [
            (Method::GET, "/api/v1/nodes/n1/proxy"),
            (Method::GET, "/api/v1/nodes/n1/proxy/pods"),
            (
                Method::GET,
                "/api/v1/nodes/n1/proxy/containerLogs/kube-system/p/c",
            ),
            (Method::POST, "/api/v1/nodes/n1/proxy/run/kube-system/p/c"),
            (Method::GET, "/api/v1/nodes/n1:10250/proxy/exec/team-a/p/c"),
        ] {
            let decided = decide(m.clone(), p, false);
            assert!(
                decided.as_ref().is_err_and(|why| why.contains("proxy")),
                "{m} {p}: {decided:?}"
            );
        }
        // The node itself may still be read; an unlimited account may use the proxy.
        assert_eq!(decide(Method::GET, "/api/v1/nodes/n1", false), Ok(()));
        let p = resource_path("/api/v1/nodes/n1/proxy/run/a/b/c");
        assert_eq!(check(&[], &Method::POST, p.as_ref(), true), Ok(()));
    }

    #[test]
    fn access_reviews_of_the_kubeconfig_are_refused() {
        for p in [
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        ] {
            assert!(decide(Method::POST, p, false).is_err(), "{p}");
        }
    }

    #[test]
    fn discovery_is_read_only_and_unlimited_accounts_are_untouched() {
        assert_eq!(decide(Method::GET, "/apis", false), Ok(()));
        assert_eq!(decide(Method::GET, "/version", false), Ok(()));
        assert!(decide(Method::POST, "/version", false).is_err());
        let p = resource_path("/api/v1/secrets");
        assert_eq!(check(&[], &Method::POST, p.as_ref(), false), Ok(()));
    }
}
