//! What of a cluster's objects an account streams, and how each is sent: the selectors
//! the API server applies (`onlySpinnakerManaged`, `omitNamespaces`), the filters it
//! cannot express (Namespace objects by name), and the object stripped of what the hub
//! does not need or must not see (managedFields, a Secret's data and its last-applied
//! annotation). Streamed objects are read as [`LeanObject`]s, never as trees.

use bytes::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use scale_agent_crds::{AccountConfig, objects};
use scale_agent_proto::v1::{EventType, GroupVersionKind, ObjectEvent};

use crate::kinds::WatchedKind;

pub mod lean;

pub use lean::{LeanList, LeanObject};

/// The label Spinnaker puts on what it deploys.
pub const SPINNAKER_MANAGED: &str = "app.kubernetes.io/managed-by=spinnaker";

/// The selectors the API server filters a kind's lists and watches by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selectors {
    /// Label selector.
    pub labels: Option<String>,
    /// Field selector.
    pub fields: Option<String>,
}

impl Selectors {
    /// The selectors of `kind` for an account configured as `config`.
    pub fn of(config: &AccountConfig, kind: &WatchedKind) -> Selectors {
        Selectors {
            labels: config
                .scope
                .only_spinnaker_managed
                .then(|| SPINNAKER_MANAGED.to_string()),
            fields: omitted_namespaces(config, kind),
        }
    }
}

/// The field selector that leaves out `omitNamespaces`; `omitNamespaces` counts only
/// when `namespaces` is empty.
fn omitted_namespaces(config: &AccountConfig, kind: &WatchedKind) -> Option<String> {
    if !kind.namespaced
        || !config.scope.namespaces.is_empty()
        || config.scope.omit_namespaces.is_empty()
    {
        return None;
    }
    let sel: Vec<String> = config
        .scope
        .omit_namespaces
        .iter()
        .map(|ns| format!("metadata.namespace!={ns}"))
        .collect();
    Some(sel.join(","))
}

/// The label of [`SPINNAKER_MANAGED`] and its value.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "spinnaker");

/// Whether an object of a namespaced kind in `namespace` is within what the account
/// streams: the namespaces the API server selects for it (its `namespaces`, each watched
/// on its own, or else all but `omitNamespaces`, by [`Selectors::of`]'s field selector),
/// for a watch of every namespace that others share.
pub fn in_namespaces(config: &AccountConfig, namespace: Option<&str>) -> bool {
    let ns = namespace.unwrap_or_default();
    if config.scope.namespaces.is_empty() {
        !config.scope.omit_namespaces.iter().any(|o| o == ns)
    } else {
        config.scope.namespaces.iter().any(|n| n == ns)
    }
}

/// Whether an object with `metadata` carries the labels [`Selectors::of`]'s label
/// selector asks for (always, without `onlySpinnakerManaged`).
pub fn labelled(config: &AccountConfig, metadata: &ObjectMeta) -> bool {
    !config.scope.only_spinnaker_managed
        || metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY.0))
            .is_some_and(|v| v == MANAGED_BY.1)
}

/// Turns an object into the event the hub receives, stripped by the one rule in
/// [`scale_agent_crds::objects`] (see [`LeanObject::body`]). Returns `None` for an
/// object the account does not stream, or one that cannot be encoded.
pub fn encode(
    kind: &WatchedKind,
    gvk: &GroupVersionKind,
    config: &AccountConfig,
    ty: EventType,
    obj: &LeanObject,
) -> Option<ObjectEvent> {
    event(kind, gvk, config, ty, &obj.metadata, || {
        obj.body(&kind.resource).ok().map(Bytes::from)
    })
}

/// An object of a shared watch as every account on it sends it: what they read of its
/// metadata, and its body, written once for all of them.
#[derive(Debug)]
pub struct Written {
    /// What the agent reads of the object's metadata (see [`LeanObject::metadata`]).
    pub metadata: ObjectMeta,
    /// The object as the hub receives it.
    pub body: Bytes,
}

impl Written {
    /// `obj`, of `kind`, written; the object's name when it cannot be.
    pub fn of(kind: &WatchedKind, obj: LeanObject) -> Result<Written, String> {
        match obj.body(&kind.resource) {
            Ok(body) => Ok(Written {
                metadata: obj.metadata,
                body: body.into(),
            }),
            Err(_) => Err(obj.metadata.name.unwrap_or_default()),
        }
    }
}

/// [`encode`] for an object written already.
pub fn encode_written(
    kind: &WatchedKind,
    gvk: &GroupVersionKind,
    config: &AccountConfig,
    ty: EventType,
    obj: &Written,
) -> Option<ObjectEvent> {
    event(kind, gvk, config, ty, &obj.metadata, || {
        Some(obj.body.clone())
    })
}

/// The event of an object with `meta` and the body `body` gives, unless the account
/// does not stream it.
fn event(
    kind: &WatchedKind,
    gvk: &GroupVersionKind,
    config: &AccountConfig,
    ty: EventType,
    meta: &ObjectMeta,
    body: impl FnOnce() -> Option<Bytes>,
) -> Option<ObjectEvent> {
    let name = meta.name.clone().unwrap_or_default();
    if kind.resource.group.is_empty() && kind.resource.kind == "Namespace" {
        if !config.scope.namespaces.is_empty() && !config.scope.namespaces.contains(&name) {
            return None;
        }
        if config.scope.omit_namespaces.contains(&name) {
            return None;
        }
    }
    Some(ObjectEvent {
        r#type: ty as i32,
        kind: Some(gvk.clone()),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name,
        uid: meta.uid.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
        body_json: body()?,
    })
}

/// An operation's result (the object, or list, as the API server answered)
/// stripped like a streamed object.
pub fn strip_result(mut value: serde_json::Value) -> serde_json::Value {
    objects::strip(&mut value);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_matched_here_is_the_selector_the_api_server_is_given() {
        assert_eq!(
            SPINNAKER_MANAGED,
            format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)
        );
    }
    use kube::discovery::ApiResource;
    use scale_agent_crds::AccountScope;
    use scale_agent_crds::objects::LAST_APPLIED;

    fn kind(kind: &str, namespaced: bool) -> WatchedKind {
        WatchedKind {
            resource: ApiResource {
                group: String::new(),
                version: "v1".into(),
                api_version: "v1".into(),
                kind: kind.into(),
                plural: format!("{}s", kind.to_ascii_lowercase()),
            },
            namespaced,
        }
    }

    fn account() -> AccountConfig {
        AccountConfig::new("a")
    }

    fn scoped(scope: AccountScope) -> AccountConfig {
        AccountConfig { scope, ..account() }
    }

    /// The event an account configured as `config` sends for `object`, a core-group
    /// object of its own `kind`.
    fn event(config: &AccountConfig, object: serde_json::Value) -> Option<ObjectEvent> {
        let name = object["kind"].as_str().unwrap_or("Namespace").to_string();
        let namespaced = name != "Namespace";
        let gvk = GroupVersionKind {
            group: String::new(),
            version: "v1".into(),
            kind: name.clone(),
        };
        let obj: LeanObject = serde_json::from_str(&object.to_string()).expect("object");
        encode(
            &kind(&name, namespaced),
            &gvk,
            config,
            EventType::Added,
            &obj,
        )
    }

    fn body(ev: &ObjectEvent) -> serde_json::Value {
        serde_json::from_slice(&ev.body_json).expect("json")
    }

    #[test]
    fn strips_managed_fields_and_keeps_last_applied_but_a_secrets() {
        let ev = event(
            &account(),
            serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {
                    "name": "x", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                    "annotations": { LAST_APPLIED: "{}", "keep": "me" },
                    "managedFields": [{ "manager": "kubectl" }]
                },
                "data": { "k": "v" }
            }),
        )
        .expect("event");
        let body = body(&ev);
        assert!(body["metadata"].get("managedFields").is_none());
        // `kubectl get NAME -o json` prints it; the hub answers that read from its cache.
        assert_eq!(body["metadata"]["annotations"][LAST_APPLIED], "{}");
        assert_eq!(body["metadata"]["annotations"]["keep"], "me");
        assert_eq!(body["data"]["k"], "v");
        assert_eq!(
            (
                ev.namespace.as_str(),
                ev.name.as_str(),
                ev.uid.as_str(),
                ev.resource_version.as_str()
            ),
            ("ns", "x", "u1", "7")
        );
    }

    #[test]
    fn secret_data_never_leaves() {
        let secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": "s", "namespace": "ns",
                "annotations": { LAST_APPLIED: "{\"data\":{\"password\":\"aHVudGVyMg==\"}}" } },
            "data": { "password": "aHVudGVyMg==" },
            "stringData": { "token": "t" },
            "type": "Opaque"
        });
        let ev = event(&account(), secret).expect("event");
        let body = body(&ev);
        assert!(body.get("data").is_none() && body.get("stringData").is_none());
        assert!(
            !String::from_utf8_lossy(&ev.body_json).contains("aHVudGVyMg=="),
            "{body}"
        );
        assert_eq!(body["type"], "Opaque");
    }

    /// An account on a shared watch sends what its own watch would have sent.
    #[test]
    fn an_object_written_once_for_a_shared_watch_is_sent_as_its_own() {
        let text = r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"s","namespace":"ns","uid":"u","resourceVersion":"9","managedFields":[{}],"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{}","keep":"me"}},"data":{"k":"djE="},"type":"Opaque"}"#;
        let secrets = kind("Secret", true);
        let gvk = GroupVersionKind {
            group: String::new(),
            version: "v1".into(),
            kind: "Secret".into(),
        };
        let obj: LeanObject = serde_json::from_str(text).expect("object");
        let own = encode(&secrets, &gvk, &account(), EventType::Modified, &obj).expect("event");
        let written = Written::of(&secrets, obj).expect("written");
        let shared = encode_written(&secrets, &gvk, &account(), EventType::Modified, &written);
        assert_eq!(shared.as_ref(), Some(&own));
        assert_eq!(
            own.body_json.as_ref(),
            br#"{"apiVersion":"v1","kind":"Secret","metadata":{"annotations":{"keep":"me"},"name":"s","namespace":"ns","resourceVersion":"9","uid":"u"},"type":"Opaque"}"#
        );
        // The Namespace filters hold for it too.
        let namespaces = kind("Namespace", false);
        let ns: LeanObject =
            serde_json::from_str(r#"{"metadata":{"name":"kube-system"}}"#).expect("object");
        let omit = scoped(AccountScope {
            omit_namespaces: vec!["kube-system".into()],
            ..AccountScope::default()
        });
        let written = Written::of(&namespaces, ns).expect("written");
        assert!(encode_written(&namespaces, &gvk, &omit, EventType::Added, &written).is_none());
        assert!(
            encode_written(&namespaces, &gvk, &account(), EventType::Added, &written).is_some()
        );
    }

    #[test]
    fn namespace_objects_follow_the_namespace_filters() {
        let send = |config: &AccountConfig, name: &str| {
            event(config, serde_json::json!({ "metadata": { "name": name } })).is_some()
        };
        let only = scoped(AccountScope {
            namespaces: vec!["team".into()],
            ..AccountScope::default()
        });
        assert!(send(&only, "team") && !send(&only, "other"));
        let omit = scoped(AccountScope {
            omit_namespaces: vec!["kube-system".into()],
            ..AccountScope::default()
        });
        assert!(send(&omit, "team") && !send(&omit, "kube-system"));
    }

    #[test]
    fn selectors_follow_the_account() {
        let cm = kind("ConfigMap", true);
        assert_eq!(Selectors::of(&account(), &cm), Selectors::default());
        let config = scoped(AccountScope {
            omit_namespaces: vec!["a".into(), "b".into()],
            only_spinnaker_managed: true,
            ..AccountScope::default()
        });
        assert_eq!(
            Selectors::of(&config, &cm),
            Selectors {
                labels: Some(SPINNAKER_MANAGED.into()),
                fields: Some("metadata.namespace!=a,metadata.namespace!=b".into()),
            }
        );
        // Cluster-scoped kinds have no namespace to select on.
        assert_eq!(
            Selectors::of(&config, &kind("Namespace", false)).fields,
            None
        );
        // With `namespaces` set, `omitNamespaces` does not count.
        let listed = scoped(AccountScope {
            namespaces: vec!["a".into()],
            ..config.scope
        });
        assert_eq!(Selectors::of(&listed, &cm).fields, None);
    }

    #[test]
    fn operation_results_are_stripped_like_streamed_objects() {
        let secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {
                "name": "db", "namespace": "a",
                "managedFields": [{ "manager": "kubectl" }],
                "annotations": { LAST_APPLIED: "{}", "keep": "me" },
            },
            "data": { "password": "aHVudGVyMg==" },
            "stringData": { "token": "t" },
            "type": "Opaque",
        });
        let out = strip_result(secret);
        assert!(
            out.get("data").is_none() && out.get("stringData").is_none(),
            "{out}"
        );
        assert!(out["metadata"].get("managedFields").is_none(), "{out}");
        assert_eq!(
            out["metadata"]["annotations"],
            serde_json::json!({ "keep": "me" })
        );
        assert_eq!(out["type"], "Opaque");
        // Other kinds keep their data; a Status passes through.
        let cm = serde_json::json!({ "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "c", "managedFields": [] }, "data": { "k": "v" } });
        let out = strip_result(cm);
        assert_eq!(out["data"]["k"], "v");
        assert!(out["metadata"].get("managedFields").is_none());
        let status =
            serde_json::json!({ "kind": "Status", "apiVersion": "v1", "status": "Success" });
        assert_eq!(strip_result(status.clone()), status);
    }
}
