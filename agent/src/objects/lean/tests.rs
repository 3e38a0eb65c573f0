//! Tests of `lean.rs`: a lean object is sent exactly as a `DynamicObject` stripped and
//! written again was, for objects as the API server writes them.

use super::*;
use kube::core::{DynamicObject, TypeMeta, WatchEvent};
use serde_json::Value;

/// Objects as an API server writes them (`agent/fixtures/`).
const POD: &str = include_str!("../../../fixtures/pod.json");
const SECRET: &str = include_str!("../../../fixtures/secret.json");
const NAMESPACE: &str = include_str!("../../../fixtures/namespace.json");
const CERTIFICATE: &str = include_str!("../../../fixtures/certificate.json");
const ESCAPES: &str = include_str!("../../../fixtures/escapes.json");

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Each fixture and the kind it is watched as.
fn fixtures() -> Vec<(&'static str, ApiResource)> {
    vec![
        (POD, resource("", "v1", "Pod", "pods")),
        (SECRET, resource("", "v1", "Secret", "secrets")),
        (NAMESPACE, resource("", "v1", "Namespace", "namespaces")),
        (
            CERTIFICATE,
            resource("cert-manager.io", "v1", "Certificate", "certificates"),
        ),
        (ESCAPES, resource("", "v1", "ConfigMap", "configmaps")),
    ]
}

/// What the agent sent before lean objects: kube's `DynamicObject`, stripped by the
/// rule of `scale_agent_crds::objects`, typed as the kind watched, written again.
fn old_body(resource: &ApiResource, text: &str) -> Vec<u8> {
    let mut obj: DynamicObject = serde_json::from_str(text).expect("object");
    let secret = resource.group.is_empty() && resource.kind == "Secret";
    objects::strip_metadata(&mut obj.metadata, secret);
    if secret && let Some(body) = obj.data.as_object_mut() {
        objects::strip_secret_data(body);
    }
    obj.types = Some(TypeMeta {
        api_version: resource.api_version.clone(),
        kind: resource.kind.clone(),
    });
    serde_json::to_vec(&obj).expect("json")
}

fn new_body(resource: &ApiResource, text: &str) -> Vec<u8> {
    let obj: LeanObject = serde_json::from_str(text).expect("object");
    obj.body(resource).expect("body")
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("JSON")
}

#[test]
fn every_object_is_sent_as_before() {
    for (text, resource) in fixtures() {
        let (old, new) = (old_body(&resource, text), new_body(&resource, text));
        assert_eq!(
            json(&new),
            json(&old),
            "{}\nnew: {}\nold: {}",
            resource.kind,
            String::from_utf8_lossy(&new),
            String::from_utf8_lossy(&old)
        );
        // The hub cuts the type off a stored object without parsing it.
        let lead = format!(
            "{{\"apiVersion\":\"{}\",\"kind\":\"{}\",\"metadata\":{{",
            resource.api_version, resource.kind
        );
        assert!(new.starts_with(lead.as_bytes()), "{}", resource.kind);
        assert!(
            old.starts_with(lead.as_bytes()),
            "the old body led the same way"
        );
    }
}

#[test]
fn what_never_leaves_is_not_sent() {
    for (text, resource) in fixtures() {
        let new = String::from_utf8(new_body(&resource, text)).expect("UTF-8");
        assert!(text.contains("\"managedFields\""));
        assert!(!new.contains("managedFields"), "{new}");
        assert!(
            !new.contains("futureField"),
            "ObjectMeta knows no such field"
        );
    }
    let secret = String::from_utf8(new_body(&resource("", "v1", "Secret", "secrets"), SECRET))
        .expect("UTF-8");
    for leak in ["aHVudGVyMg==", "s3cr3t-t0ken", "last-applied", "\"data\""] {
        assert!(!secret.contains(leak), "{leak} in {secret}");
    }
    let body = json(secret.as_bytes());
    assert_eq!(
        body["metadata"]["annotations"],
        serde_json::json!({ "owner": "team-shop" })
    );
    assert_eq!(body["type"], "Opaque");
    assert_eq!(body["immutable"], false);
    // Another kind keeps its last-applied annotation; a Secret of another group its data.
    let pod = json(&new_body(&resource("", "v1", "Pod", "pods"), POD));
    assert!(pod["metadata"]["annotations"][objects::LAST_APPLIED].is_string());
    let foreign = resource("example.com", "v1", "Secret", "secrets");
    assert_eq!(
        json(&new_body(&foreign, SECRET))["data"]["password"],
        "aHVudGVyMg=="
    );
}

#[test]
fn a_secret_whose_annotations_held_only_last_applied_has_none() {
    let text = r#"{"metadata":{"name":"s","annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{}"}},"data":{"k":"djE="}}"#;
    let secret = resource("", "v1", "Secret", "secrets");
    assert_eq!(
        new_body(&secret, text),
        br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"}}"#
    );
    assert_eq!(
        json(&new_body(&secret, text)),
        json(&old_body(&secret, text))
    );
}

#[test]
fn metadata_the_agent_reads_is_parsed() {
    let obj: LeanObject = serde_json::from_str(POD).expect("object");
    let meta = obj.meta();
    assert_eq!(meta.name.as_deref(), Some("web-7d4b9c8f5-x2x9z"));
    assert_eq!(meta.namespace.as_deref(), Some("shop"));
    assert_eq!(
        meta.uid.as_deref(),
        Some("0b5a3c1e-8f2d-4e6a-b1c9-3d7e5f9a2b40")
    );
    assert_eq!(meta.resource_version.as_deref(), Some("4815162"));
    let labels = meta.labels.as_ref().expect("labels");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "spinnaker");
    // Escapes in what is parsed are read as the text they spell.
    let obj: LeanObject = serde_json::from_str(ESCAPES).expect("object");
    assert_eq!(obj.metadata.name.as_deref(), Some("café-menu"));
}

/// kube reads each watch event with `serde_json::from_str`, and an API server writes
/// its `type` first: the object is read straight from the text.
#[test]
fn watch_events_and_list_pages_as_the_api_server_writes_them() {
    let pods = resource("", "v1", "Pod", "pods");
    let line = format!("{{\"type\":\"MODIFIED\",\"object\":{}}}", POD.trim());
    let event: WatchEvent<LeanObject> = serde_json::from_str(&line).expect("event");
    let WatchEvent::Modified(obj) = event else {
        panic!("a change");
    };
    assert_eq!(
        json(&obj.body(&pods).expect("body")),
        json(&old_body(&pods, POD))
    );

    let page = format!(
        "{{\"kind\":\"PodList\",\"apiVersion\":\"v1\",\"metadata\":{{\"resourceVersion\":\"4815170\",\"continue\":\"next\"}},\"items\":[{},{}]}}",
        POD.trim(),
        POD.trim()
    );
    let list: LeanList = serde_json::from_str(&page).expect("page");
    assert_eq!(list.metadata.resource_version.as_deref(), Some("4815170"));
    assert_eq!(list.metadata.continue_.as_deref(), Some("next"));
    assert_eq!(list.items.len(), 2);
    let empty: LeanList = serde_json::from_str(r#"{"metadata":{},"items":null}"#).expect("page");
    assert!(empty.items.is_empty());
}

/// An object read through a buffer (its event's `type` after it) cannot be kept raw:
/// the event is refused, never sent different.
#[test]
fn an_object_that_cannot_be_read_raw_is_an_error() {
    let line = format!("{{\"object\":{},\"type\":\"ADDED\"}}", POD.trim());
    assert!(serde_json::from_str::<WatchEvent<LeanObject>>(&line).is_err());
    assert!(serde_json::from_str::<LeanObject>(r#"{"metadata":{},"metadata":{}}"#).is_err());
}

#[test]
fn a_repeated_field_counts_once_and_last() {
    let cm = resource("", "v1", "ConfigMap", "configmaps");
    let text = r#"{"metadata":{"name":"c"},"data":{"k":"old"},"data":{"k":"new"}}"#;
    assert_eq!(
        new_body(&cm, text),
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"k":"new"}}"#
    );
}
