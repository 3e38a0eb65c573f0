//! What a caller asks of a cluster through the hub: the JSON body of an
//! operation, its kind resolved (against the kinds the account streams, or
//! the built-in ones), its translation into an `Operation` frame, and its
//! deadline.

use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::Value;

use scale_agent_proto::v1::{
    self as pb, GroupVersionKind, ObjectRef, PatchType, PropagationPolicy, operation,
};

/// What the caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OperationType {
    /// Server-side apply of `manifest`.
    Apply,
    /// Delete the object.
    Delete,
    /// Patch the object with `patch`.
    Patch,
    /// Set `replicas`.
    Scale,
    /// Restart the pods of a workload.
    RolloutRestart,
    /// Read the object from the API server.
    Get,
}

/// The JSON body of `POST /v1/accounts/{account}/operations`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperationRequest {
    /// Optional caller-chosen id (e.g. the Spinnaker task id), for retries.
    #[serde(default)]
    pub id: Option<String>,
    /// The operation.
    #[serde(rename = "type")]
    pub op_type: OperationType,
    /// apply: the object (JSON object, or a JSON/YAML string passed as is).
    #[serde(default)]
    pub manifest: Option<Value>,
    /// The target's kind; `Kind.group` is accepted.
    #[serde(default)]
    pub kind: Option<String>,
    /// The target's API group ("" for core).
    #[serde(default)]
    pub group: Option<String>,
    /// The target's API version.
    #[serde(default)]
    pub version: Option<String>,
    /// The target's namespace (empty or `_` for cluster-scoped).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The target's name.
    #[serde(default)]
    pub name: Option<String>,
    /// scale: the replicas.
    #[serde(default)]
    pub replicas: Option<i32>,
    /// patch: the patch document (JSON, or a string passed as is).
    #[serde(default)]
    pub patch: Option<Value>,
    /// patch: merge (default), json, strategic or apply.
    #[serde(default)]
    pub patch_type: Option<String>,
    /// delete: orphan, background or foreground.
    #[serde(default)]
    pub propagation_policy: Option<String>,
    /// delete: overrides the object's grace period.
    #[serde(default)]
    pub grace_period_seconds: Option<i64>,
    /// apply/patch: the field manager (default scale-agent).
    #[serde(default)]
    pub field_manager: Option<String>,
    /// apply/patch(apply): take over conflicting fields.
    #[serde(default)]
    pub force: Option<bool>,
    /// How long to wait for the result; default 60, at most 3600.
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
}

/// A kind resolved to group, version and the API server's spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedKind {
    /// API group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind.
    pub kind: String,
}

/// Splits `Kind.group` into kind and optional group; `core` means "".
pub fn split_kind(kind: &str) -> (&str, Option<&str>) {
    match kind.split_once('.') {
        Some((kind, "core")) => (kind, Some("")),
        Some((kind, group)) => (kind, Some(group)),
        None => (kind, None),
    }
}

/// Well-known kinds, for when the account's cache has not seen the kind.
const BUILTIN_KINDS: &[(&str, &str, &str)] = &[
    ("", "v1", "ConfigMap"),
    ("", "v1", "Namespace"),
    ("", "v1", "PersistentVolumeClaim"),
    ("", "v1", "Pod"),
    ("", "v1", "Secret"),
    ("", "v1", "Service"),
    ("", "v1", "ServiceAccount"),
    ("apps", "v1", "DaemonSet"),
    ("apps", "v1", "Deployment"),
    ("apps", "v1", "ReplicaSet"),
    ("apps", "v1", "StatefulSet"),
    ("autoscaling", "v2", "HorizontalPodAutoscaler"),
    ("batch", "v1", "CronJob"),
    ("batch", "v1", "Job"),
    ("networking.k8s.io", "v1", "Ingress"),
    ("networking.k8s.io", "v1", "NetworkPolicy"),
    ("policy", "v1", "PodDisruptionBudget"),
    ("rbac.authorization.k8s.io", "v1", "ClusterRole"),
    ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io", "v1", "Role"),
    ("rbac.authorization.k8s.io", "v1", "RoleBinding"),
];

/// Resolves the request's kind: explicit group and version win; otherwise the
/// kinds the account has streamed (`known`: group, version, kind), then the
/// built-in table. Kind matching is case-insensitive.
pub fn resolve_kind(
    req: &OperationRequest,
    known: &[(String, String, String)],
) -> Result<ResolvedKind, String> {
    let raw = req.kind.as_deref().map(str::trim).unwrap_or_default();
    if raw.is_empty() {
        return Err("kind is required".into());
    }
    let (kind, dotted_group) = split_kind(raw);
    let group = req.group.as_deref().or(dotted_group);
    let version = req.version.as_deref().filter(|v| !v.is_empty());
    let candidates = |list: Vec<(String, String, String)>| -> Vec<ResolvedKind> {
        let mut found: Vec<ResolvedKind> = list
            .into_iter()
            .filter(|(g, _, k)| k.eq_ignore_ascii_case(kind) && group.is_none_or(|want| want == g))
            .map(|(group, version, kind)| ResolvedKind {
                group,
                version,
                kind,
            })
            .collect();
        found.dedup_by(|a, b| a.group == b.group && a.kind == b.kind);
        found
    };
    let mut found = candidates(known.to_vec());
    if found.is_empty() {
        found = candidates(
            BUILTIN_KINDS
                .iter()
                .map(|(g, v, k)| ((*g).to_owned(), (*v).to_owned(), (*k).to_owned()))
                .collect(),
        );
    }
    match (found.len(), version) {
        (1, _) => {
            let mut one = found.remove(0);
            if let Some(v) = version {
                v.clone_into(&mut one.version);
            }
            Ok(one)
        }
        (0, Some(v)) => match group {
            Some(g) => Ok(ResolvedKind {
                group: g.to_owned(),
                version: v.to_owned(),
                kind: kind.to_owned(),
            }),
            None => Err(format!(
                "kind {kind:?} is not known here; give its group (kind {kind}.<group>, or \"group\")"
            )),
        },
        (0, None) => Err(format!(
            "kind {kind:?} is not known here; give its group and version"
        )),
        _ => Err(format!(
            "kind {kind:?} is ambiguous ({}); write it as Kind.group",
            found
                .iter()
                .map(|k| if k.group.is_empty() {
                    k.kind.clone()
                } else {
                    format!("{}.{}", k.kind, k.group)
                })
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn target(req: &OperationRequest, known: &[(String, String, String)]) -> Result<ObjectRef, String> {
    let kind = resolve_kind(req, known)?;
    let name = req.name.as_deref().map(str::trim).unwrap_or_default();
    if name.is_empty() {
        return Err("name is required".into());
    }
    let namespace = match req.namespace.as_deref().map(str::trim) {
        None | Some("_") => "",
        Some(ns) => ns,
    };
    Ok(ObjectRef {
        kind: Some(GroupVersionKind {
            group: kind.group,
            version: kind.version,
            kind: kind.kind,
        }),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

fn document(value: &Value) -> Vec<u8> {
    match value {
        Value::String(text) => text.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

/// `propagationPolicy` words.
const PROPAGATION_POLICIES: &[(&str, PropagationPolicy)] = &[
    ("orphan", PropagationPolicy::Orphan),
    ("background", PropagationPolicy::Background),
    ("foreground", PropagationPolicy::Foreground),
];

/// `patchType` words.
const PATCH_TYPES: &[(&str, PatchType)] = &[
    ("merge", PatchType::Merge),
    ("json", PatchType::Json),
    ("strategic", PatchType::Strategic),
    ("apply", PatchType::Apply),
];

/// The choice a request's `field` names, case-insensitively, among
/// `choices`; `default` when it names none (absent or empty).
fn choose<T: Copy>(
    field: &str,
    value: Option<&str>,
    default: T,
    choices: &[(&str, T)],
) -> Result<T, String> {
    let value = value.unwrap_or_default();
    if value.is_empty() {
        return Ok(default);
    }
    if let Some((_, choice)) = choices
        .iter()
        .find(|(word, _)| word.eq_ignore_ascii_case(value))
    {
        return Ok(*choice);
    }
    let words: Vec<&str> = choices.iter().map(|(word, _)| *word).collect();
    let expected = match words.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(format!(
        "{field} {:?}: expected {expected}",
        value.to_ascii_lowercase()
    ))
}

/// Translates a request into the `Operation.kind` oneof. `known` are the kinds
/// the account has streamed, for resolving a kind without group/version.
pub fn build_kind(
    req: &OperationRequest,
    known: &[(String, String, String)],
) -> Result<operation::Kind, String> {
    Ok(match req.op_type {
        OperationType::Apply => {
            let manifest = req.manifest.as_ref().ok_or("apply needs a manifest")?;
            if !(manifest.is_object() || manifest.is_string()) {
                return Err("manifest must be a JSON object (or a string)".into());
            }
            operation::Kind::Apply(pb::Apply {
                manifest_json: document(manifest).into(),
                field_manager: req.field_manager.clone().unwrap_or_default(),
                force: req.force.unwrap_or(false),
            })
        }
        OperationType::Delete => {
            let policy = choose(
                "propagationPolicy",
                req.propagation_policy.as_deref(),
                PropagationPolicy::Unspecified,
                PROPAGATION_POLICIES,
            )?;
            operation::Kind::Delete(pb::Delete {
                target: Some(target(req, known)?),
                propagation_policy: policy as i32,
                grace_period_seconds: req.grace_period_seconds,
            })
        }
        OperationType::Patch => {
            let patch = req.patch.as_ref().ok_or("patch needs a patch document")?;
            // A JSON array can only be a JSON patch.
            let default = if patch.is_array() {
                PatchType::Json
            } else {
                PatchType::Merge
            };
            let patch_type = choose("patchType", req.patch_type.as_deref(), default, PATCH_TYPES)?;
            operation::Kind::Patch(pb::Patch {
                target: Some(target(req, known)?),
                patch_type: patch_type as i32,
                patch: document(patch).into(),
                field_manager: req.field_manager.clone().unwrap_or_default(),
                force: req.force.unwrap_or(false),
            })
        }
        OperationType::Scale => {
            let replicas = req.replicas.ok_or("scale needs replicas")?;
            if replicas < 0 {
                return Err(format!("replicas must be 0 or more, not {replicas}"));
            }
            operation::Kind::Scale(pb::Scale {
                target: Some(target(req, known)?),
                replicas,
            })
        }
        OperationType::RolloutRestart => operation::Kind::RolloutRestart(pb::RolloutRestart {
            target: Some(target(req, known)?),
        }),
        OperationType::Get => operation::Kind::Get(pb::Get {
            target: Some(target(req, known)?),
        }),
    })
}

/// The timeout of a request: default `default`, between 0.1 s and 1 hour.
pub fn timeout(req: &OperationRequest, default: Duration) -> Result<Duration, String> {
    match req.timeout_seconds {
        None => Ok(default),
        Some(s) if s.is_finite() && (0.1..=3600.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(format!("timeoutSeconds {s}: must be between 0.1 and 3600")),
    }
}

/// A timestamp for `Operation.deadline`.
pub fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: Value) -> OperationRequest {
        serde_json::from_value(json).expect("valid request")
    }

    #[test]
    fn scale_resolves_builtin_kind_case_insensitively() {
        let r = req(
            serde_json::json!({"type": "scale", "kind": "deployment", "namespace": "a", "name": "web", "replicas": 3}),
        );
        match build_kind(&r, &[]) {
            Ok(operation::Kind::Scale(s)) => {
                assert_eq!(s.replicas, 3);
                let t = s.target.expect("target");
                let k = t.kind.expect("kind");
                assert_eq!(
                    (k.group.as_str(), k.version.as_str(), k.kind.as_str()),
                    ("apps", "v1", "Deployment")
                );
                assert_eq!(t.namespace, "a");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn streamed_kinds_win_and_ambiguity_is_reported() {
        let known = vec![
            (
                "example.com".to_owned(),
                "v1beta1".to_owned(),
                "Widget".to_owned(),
            ),
            ("other.io".to_owned(), "v1".to_owned(), "Widget".to_owned()),
        ];
        let ambiguous = req(serde_json::json!({"type": "get", "kind": "widget", "name": "w"}));
        let err = resolve_kind(&ambiguous, &known).expect_err("ambiguous");
        assert!(err.contains("Widget.example.com"), "{err}");
        let dotted =
            req(serde_json::json!({"type": "get", "kind": "widget.example.com", "name": "w"}));
        assert_eq!(
            resolve_kind(&dotted, &known),
            Ok(ResolvedKind {
                group: "example.com".into(),
                version: "v1beta1".into(),
                kind: "Widget".into()
            })
        );
        let unknown = req(serde_json::json!({"type": "get", "kind": "Gadget", "name": "g"}));
        assert!(resolve_kind(&unknown, &known).is_err());
        let explicit = req(
            serde_json::json!({"type": "get", "kind": "Gadget", "group": "x.io", "version": "v2", "name": "g"}),
        );
        assert_eq!(
            resolve_kind(&explicit, &known).map(|k| k.version),
            Ok("v2".to_owned())
        );
    }

    #[test]
    fn invalid_requests_are_explained() {
        for (json, needle) in [
            (serde_json::json!({"type": "apply"}), "manifest"),
            (
                serde_json::json!({"type": "scale", "kind": "Deployment", "name": "x"}),
                "replicas",
            ),
            (
                serde_json::json!({"type": "delete", "kind": "Deployment"}),
                "name",
            ),
            (
                serde_json::json!({"type": "patch", "kind": "Deployment", "name": "x", "patch": {}, "patchType": "weird"}),
                "patchType",
            ),
            (
                serde_json::json!({"type": "delete", "kind": "Deployment", "name": "x", "propagationPolicy": "now"}),
                "propagationPolicy",
            ),
        ] {
            let err = build_kind(&req(json.clone()), &[]).expect_err("invalid");
            assert!(err.contains(needle), "{json}: {err}");
        }
        assert!(
            serde_json::from_value::<OperationRequest>(serde_json::json!({"type": "explode"}))
                .is_err()
        );
    }

    #[test]
    fn choices_are_case_insensitive_and_a_wrong_one_lists_them_all() {
        let r = req(
            serde_json::json!({"type": "delete", "kind": "Deployment", "name": "x", "propagationPolicy": "Foreground"}),
        );
        match build_kind(&r, &[]) {
            Ok(operation::Kind::Delete(d)) => {
                assert_eq!(d.propagation_policy, PropagationPolicy::Foreground as i32);
            }
            other => panic!("unexpected {other:?}"),
        }
        let r = req(
            serde_json::json!({"type": "patch", "kind": "Deployment", "name": "x", "patch": {}, "patchType": "Weird"}),
        );
        assert_eq!(
            build_kind(&r, &[]).expect_err("invalid"),
            "patchType \"weird\": expected merge, json, strategic or apply"
        );
        let r = req(
            serde_json::json!({"type": "delete", "kind": "Deployment", "name": "x", "propagationPolicy": "now"}),
        );
        assert_eq!(
            build_kind(&r, &[]).expect_err("invalid"),
            "propagationPolicy \"now\": expected orphan, background or foreground"
        );
    }

    #[test]
    fn json_patch_is_default_for_arrays() {
        let r = req(
            serde_json::json!({"type": "patch", "kind": "ConfigMap", "namespace": "n", "name": "c", "patch": [{"op": "add", "path": "/data/x", "value": "1"}]}),
        );
        match build_kind(&r, &[]) {
            Ok(operation::Kind::Patch(p)) => assert_eq!(p.patch_type, PatchType::Json as i32),
            other => panic!("unexpected {other:?}"),
        }
    }
}
