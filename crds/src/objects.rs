//! What of a cluster's object leaves the agent and is kept or shown by the
//! hub: never `metadata.managedFields` (kubectl hides them when it prints an
//! object, and they are often a third of it), never a Secret's `data` or
//! `stringData`, and never a Secret's last-applied annotation (it repeats the
//! whole manifest, the data included). Other objects keep their last-applied
//! annotation: `kubectl get NAME -o json|yaml` prints it, so the hub answers
//! that read from its cache only with it. The one rule for streamed objects
//! and operation results alike, applied by the agent before sending and by
//! the hub again on what it is sent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value};

/// The annotation that repeats an object's last applied manifest.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The field of metadata that never leaves.
pub const MANAGED_FIELDS: &str = "managedFields";

/// The top-level fields of a Secret that never leave.
pub const SECRET_DATA: [&str; 2] = ["data", "stringData"];

/// True for a core `v1` Secret, whose data is never sent.
pub fn is_secret(api_version: &str, kind: &str) -> bool {
    api_version == "v1" && kind == "Secret"
}

/// Whether top-level field `key` of an object is kept: all but a Secret's
/// [`SECRET_DATA`] (for a reader of an object's fields one by one, as
/// [`strip_secret_data`] is for one in JSON form).
pub fn keeps_field(secret: bool, key: &str) -> bool {
    !(secret && SECRET_DATA.contains(&key))
}

/// Removes managedFields and, for a Secret, the last-applied annotation (and
/// the annotations map, when that was all it held).
pub fn strip_metadata(metadata: &mut ObjectMeta, secret: bool) {
    metadata.managed_fields = None;
    if !secret {
        return;
    }
    if let Some(annotations) = metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            metadata.annotations = None;
        }
    }
}

/// Removes a Secret's `data` and `stringData` from its body.
pub fn strip_secret_data(body: &mut Map<String, Value>) {
    for key in SECRET_DATA {
        body.remove(key);
    }
}

/// [`strip_metadata`] and, for a Secret, [`strip_secret_data`] on an object
/// in JSON form, or on each item of a list.
pub fn strip(value: &mut Value) {
    let Some(object) = value.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(items)) = object.get_mut("items") {
        for item in items {
            strip(item);
        }
    }
    let text = |key: &str| object.get(key).and_then(Value::as_str).unwrap_or_default();
    let secret = is_secret(text("apiVersion"), text("kind"));
    if let Some(Value::Object(metadata)) = object.get_mut("metadata") {
        metadata.remove(MANAGED_FIELDS);
        if secret && let Some(Value::Object(annotations)) = metadata.get_mut("annotations") {
            annotations.remove(LAST_APPLIED);
            if annotations.is_empty() {
                metadata.remove("annotations");
            }
        }
    }
    if secret {
        strip_secret_data(object);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_object_loses_managed_fields_last_applied_and_secret_data() {
        let mut secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "managedFields": [{"manager": "kubectl"}],
                         "annotations": {LAST_APPLIED: "{\"data\":{\"k\":\"djE=\"}}", "keep": "me"}},
            "data": {"k": "djE="}, "stringData": {"k": "v1"}, "type": "Opaque"
        });
        strip(&mut secret);
        assert_eq!(
            secret,
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "s", "annotations": {"keep": "me"}}, "type": "Opaque"})
        );
    }

    #[test]
    fn each_item_of_a_list_is_stripped_and_other_kinds_keep_their_data_and_last_applied() {
        let mut list = json!({"kind": "List", "apiVersion": "v1", "items": [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "djE="}},
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "c", "annotations": {LAST_APPLIED: "{}"}}, "data": {"k": "v"}},
        ]});
        strip(&mut list);
        assert_eq!(
            list["items"][0],
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}})
        );
        let mut foreign =
            json!({"apiVersion": "example.com/v1", "kind": "Secret", "data": {"k": 1}});
        strip(&mut foreign);
        assert_eq!(
            foreign["data"]["k"], 1,
            "a Secret of another group is not the core Secret"
        );
        assert_eq!(
            list["items"][1],
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "c", "annotations": {LAST_APPLIED: "{}"}}, "data": {"k": "v"}})
        );
    }

    #[test]
    fn field_by_field_only_a_secrets_data_is_left_out() {
        assert!(!keeps_field(true, "data") && !keeps_field(true, "stringData"));
        assert!(keeps_field(true, "type") && keeps_field(false, "data"));
    }

    #[test]
    fn typed_metadata_drops_an_annotations_map_left_empty() {
        let applied = ObjectMeta {
            annotations: Some([(LAST_APPLIED.to_owned(), "{}".to_owned())].into()),
            managed_fields: Some(Vec::new()),
            ..ObjectMeta::default()
        };
        let mut secret = applied.clone();
        strip_metadata(&mut secret, true);
        assert_eq!(secret, ObjectMeta::default());
        let mut other = applied.clone();
        strip_metadata(&mut other, false);
        assert_eq!(
            other,
            ObjectMeta {
                managed_fields: None,
                ..applied
            }
        );
    }
}
