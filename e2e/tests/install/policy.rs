//! Static checks of rendered manifests: what Pod Security `restricted` requires of pod
//! templates, and least privilege of what is bound cluster-wide.

use anyhow::Context;
use serde_json::Value;

use crate::kustomize;

pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name}"))
}

/// What Pod Security `restricted` requires of every pod template, plus a read-only root
/// filesystem; and the image the manifests name.
pub fn restricted_problems(objects: &[Value], image: &str, problems: &mut Vec<String>) {
    for o in objects {
        if o["kind"] == "Namespace" {
            let labels = &o["metadata"]["labels"];
            if labels["pod-security.kubernetes.io/enforce"] != "restricted" {
                problems.push(format!(
                    "{}: Pod Security `restricted` is not enforced",
                    kustomize::key(o)
                ));
            }
        }
        let Some(pod) = o["spec"]["template"]["spec"].as_object() else {
            continue;
        };
        let key = kustomize::key(o);
        let psc = &pod.get("securityContext").cloned().unwrap_or_default();
        if psc["runAsNonRoot"] != true {
            problems.push(format!("{key}: runAsNonRoot is not set"));
        }
        for c in pod
            .get("containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = c["name"].as_str().unwrap_or_default();
            let sc = &c["securityContext"];
            if sc["allowPrivilegeEscalation"] != false {
                problems.push(format!(
                    "{key} {name}: allowPrivilegeEscalation is not false"
                ));
            }
            if sc["readOnlyRootFilesystem"] != true {
                problems.push(format!("{key} {name}: the root filesystem is writable"));
            }
            if !sc["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.contains(&Value::from("ALL")))
                || !sc["capabilities"]["add"].is_null()
            {
                problems.push(format!("{key} {name}: capabilities are not all dropped"));
            }
            let seccomp = if sc["seccompProfile"]["type"].is_null() {
                &psc["seccompProfile"]["type"]
            } else {
                &sc["seccompProfile"]["type"]
            };
            if seccomp != "RuntimeDefault" {
                problems.push(format!("{key} {name}: seccomp profile is {seccomp}"));
            }
            if c["image"] != image {
                problems.push(format!("{key} {name}: image {} is not {image}", c["image"]));
            }
        }
    }
}

/// No cluster-wide Secret or Lease write; the webhook configuration only by name.
pub fn least_privilege_problems(objects: &[Value], problems: &mut Vec<String>) {
    // A ClusterRole aggregated into the built-in roles reaches everyone bound to them:
    // it may only read (writing a shard chooses an image and a ServiceAccount).
    let aggregated = |role: &Value| {
        ["view", "edit", "admin"].iter().any(|r| {
            role["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{r}")]
                == "true"
        })
    };
    for role in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" && aggregated(o))
    {
        for rule in role["rules"].as_array().into_iter().flatten() {
            let verbs = rule["verbs"].as_array().cloned().unwrap_or_default();
            if verbs
                .iter()
                .any(|v| !["get", "list", "watch"].contains(&v.as_str().unwrap_or("*")))
            {
                problems.push(format!(
                    "{} is aggregated into the built-in roles and grants more than reading: {rule}",
                    kustomize::key(role)
                ));
            }
        }
    }
    let writes = [
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
        "*",
    ];
    for binding in objects.iter().filter(|o| o["kind"] == "ClusterRoleBinding") {
        let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
        let Ok(role) = find(objects, "ClusterRole", role_name) else {
            problems.push(format!(
                "{} binds a ClusterRole not installed",
                kustomize::key(binding)
            ));
            continue;
        };
        for rule in role["rules"].as_array().into_iter().flatten() {
            let has = |field: &str, want: &str| {
                rule[field]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x == want || x == "*"))
            };
            let writes_it = writes.iter().any(|w| has("verbs", w));
            for resource in ["secrets", "leases"] {
                if has("resources", resource) && writes_it {
                    problems.push(format!(
                        "ClusterRole {role_name} (bound cluster-wide) writes {resource}: {rule}"
                    ));
                }
            }
            if has("resources", "validatingwebhookconfigurations")
                && rule["resourceNames"].as_array().is_none_or(Vec::is_empty)
            {
                problems.push(format!(
                    "ClusterRole {role_name} may change every webhook configuration: {rule}"
                ));
            }
        }
    }
}
