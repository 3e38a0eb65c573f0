//! Golden tests of the generated CRD: what `kubectl get` prints, the names, the list-map
//! keys, the CEL rules and their messages, patterns and defaults. A change here is a
//! change of the API users see: make it on purpose.

use scale_agent_crds::{
    BYTE_QUANTITY_PATTERN, DNS_LABEL_PATTERN, HUB_ADDRESS_PATTERN, crd, parse_quantity_bytes,
};
use serde_json::{Value, json};

fn crd_json() -> Value {
    serde_json::to_value(crd()).expect("the CRD serializes to JSON")
}

fn version() -> Value {
    let crd = crd_json();
    let versions = crd["spec"]["versions"]
        .as_array()
        .expect("versions is a list");
    assert_eq!(versions.len(), 1, "one version: {versions:?}");
    versions[0].clone()
}

fn root_schema() -> Value {
    version()["schema"]["openAPIV3Schema"].clone()
}

fn spec_schema() -> Value {
    root_schema()["properties"]["spec"].clone()
}

fn account_schema() -> Value {
    spec_schema()["properties"]["accounts"]["items"].clone()
}

fn status_schema() -> Value {
    root_schema()["properties"]["status"].clone()
}

#[test]
fn names_scope_and_group() {
    let crd = crd_json();
    assert_eq!(crd["metadata"]["name"], "agentshards.scaleagent.dev");
    assert_eq!(crd["spec"]["group"], "scaleagent.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(
        crd["spec"]["names"],
        json!({
            "kind": "AgentShard",
            "plural": "agentshards",
            "singular": "agentshard",
            "shortNames": ["ash"],
            "categories": ["scaleagent"],
        })
    );
    let version = version();
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["served"], true);
    assert_eq!(version["storage"], true);
}

#[test]
fn subresources_status_and_scale() {
    assert_eq!(
        version()["subresources"],
        json!({
            "status": {},
            "scale": { "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas" },
        })
    );
}

#[test]
fn printer_columns_in_order() {
    let columns: Vec<(String, String, String, i64)> = version()["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_uppercase(),
                c["type"].as_str().unwrap_or_default().to_owned(),
                c["jsonPath"].as_str().unwrap_or_default().to_owned(),
                c["priority"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let expected = [
        ("REPLICAS", "integer", ".spec.replicas", 0),
        ("READY", "integer", ".status.readyReplicas", 0),
        ("ACCOUNTS", "integer", ".status.activeAccounts", 0),
        ("CONFLICTS", "integer", ".status.conflicts", 0),
        (
            "STATUS",
            "string",
            r#".status.conditions[?(@.type=="Ready")].reason"#,
            0,
        ),
        ("AGE", "date", ".metadata.creationTimestamp", 0),
        ("HUB", "string", ".spec.hub.address", 1),
        ("IMAGE", "string", ".spec.image", 1),
    ]
    .map(|(n, t, p, prio)| (n.to_owned(), t.to_owned(), p.to_owned(), prio));
    assert_eq!(columns, expected);
}

#[test]
fn accounts_are_a_list_map_keyed_by_name() {
    let accounts = &spec_schema()["properties"]["accounts"];
    assert_eq!(accounts["type"], "array");
    assert_eq!(accounts["x-kubernetes-list-type"], "map");
    assert_eq!(accounts["x-kubernetes-list-map-keys"], json!(["name"]));
    assert_eq!(accounts["maxItems"], 500);
    // A list-map key must be required (or defaulted) in every item.
    let required = account_schema()["required"].clone();
    assert!(
        required
            .as_array()
            .is_some_and(|r| r.contains(&json!("name"))),
        "{required}"
    );
}

#[test]
fn status_lists_are_list_maps() {
    let props = &status_schema()["properties"];
    assert_eq!(props["conditions"]["x-kubernetes-list-type"], "map");
    assert_eq!(
        props["conditions"]["x-kubernetes-list-map-keys"],
        json!(["type"])
    );
    assert_eq!(props["accounts"]["x-kubernetes-list-type"], "map");
    assert_eq!(
        props["accounts"]["x-kubernetes-list-map-keys"],
        json!(["name"])
    );
    assert_eq!(
        props["accounts"]["items"]["properties"]["state"]["enum"],
        json!([
            "Active",
            "Syncing",
            "NoReplica",
            "HubUnreachable",
            "RefusedByHub",
            "ClusterUnreachable",
            "Conflict",
            "Invalid"
        ])
    );
    for field in [
        "observedGeneration",
        "replicas",
        "readyReplicas",
        "activeAccounts",
        "conflicts",
    ] {
        assert_eq!(props[field]["type"], "integer", "status.{field}");
    }
}

#[test]
fn account_name_is_a_dns_label() {
    let name = &account_schema()["properties"]["name"];
    assert_eq!(name["type"], "string");
    assert_eq!(name["pattern"], DNS_LABEL_PATTERN);
    assert_eq!(name["pattern"], "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$");
    assert_eq!(name["minLength"], 1);
    assert_eq!(name["maxLength"], 63);
}

#[test]
fn cel_rules_and_messages() {
    let rules = account_schema()["x-kubernetes-validations"].clone();
    assert_eq!(
        rules,
        json!([
            {
                "rule": "!has(self.namespaces) || !has(self.omitNamespaces) || self.namespaces.size() == 0 || self.omitNamespaces.size() == 0",
                "message": "namespaces and omitNamespaces cannot both be set: list the namespaces to watch, or the ones to skip",
                "fieldPath": ".omitNamespaces",
            },
            {
                "rule": "!has(self.kinds) || !has(self.omitKinds) || self.kinds.size() == 0 || self.omitKinds.size() == 0",
                "message": "kinds and omitKinds cannot both be set: list the kinds to watch, or the ones to skip",
                "fieldPath": ".omitKinds",
            },
            {
                "rule": "has(self.kubeconfigSecretRef) != (has(self.inCluster) && self.inCluster)",
                "message": "set exactly one of kubeconfigSecretRef (a kubeconfig for the cluster) and inCluster: true (the cluster the agents run in)",
            },
        ])
    );
    assert_eq!(
        root_schema()["x-kubernetes-validations"],
        json!([{
            "rule": "self.metadata.name.size() <= 63",
            "message": "AgentShard names are at most 63 characters: they become label values of the agent pods",
        }])
    );
}

#[test]
fn defaults() {
    let spec = spec_schema();
    let props = &spec["properties"];
    assert_eq!(props["replicas"]["default"], 1);
    assert_eq!(props["replicas"]["minimum"], 0.0);
    assert_eq!(props["paused"]["default"], false);
    assert_eq!(
        props["budget"]["default"],
        json!({ "concurrentSyncs": 4, "maxBufferedBytes": "64Mi" })
    );
    let budget = &props["budget"]["properties"];
    assert_eq!(budget["concurrentSyncs"]["default"], 4);
    assert_eq!(budget["concurrentSyncs"]["minimum"], 1.0);
    assert_eq!(budget["concurrentSyncs"]["maximum"], 64.0);
    assert_eq!(budget["maxBufferedBytes"]["default"], "64Mi");
    assert_eq!(
        budget["maxBufferedBytes"]["x-kubernetes-int-or-string"],
        true
    );
    assert_eq!(budget["maxBufferedBytes"]["pattern"], BYTE_QUANTITY_PATTERN);
    // Not nullable: a null is dropped and defaulted, never stored.
    assert_eq!(budget["maxBufferedBytes"]["nullable"], false);
    // No defaults inside list items: the API server would fill them in, and every
    // client-side `kubectl apply` would then send the whole list again ("configured").
    let account = account_schema();
    walk("accounts[]", &account, &mut |path, node| {
        assert!(node.get("default").is_none(), "{path} has a default");
    });
    // The hub is optional (the operator fills its default), its address is not.
    assert!(spec["required"].as_array().is_none_or(|r| r.is_empty()));
    assert_eq!(props["hub"]["required"], json!(["address"]));
    assert_eq!(
        props["hub"]["properties"]["address"]["pattern"],
        HUB_ADDRESS_PATTERN
    );
}

#[test]
fn the_default_quantity_is_readable() {
    assert_eq!(parse_quantity_bytes("64Mi").expect("64Mi"), 64 << 20);
}

/// Walks every schema node, with its path.
fn walk(path: &str, node: &Value, f: &mut dyn FnMut(&str, &Value)) {
    f(path, node);
    if let Some(props) = node["properties"].as_object() {
        for (k, v) in props {
            walk(&format!("{path}.{k}"), v, f);
        }
    }
    if node["items"].is_object() {
        walk(&format!("{path}[]"), &node["items"], f);
    }
    if node["additionalProperties"].is_object() {
        walk(&format!("{path}{{}}"), &node["additionalProperties"], f);
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = node[key].as_array() {
            for (i, v) in list.iter().enumerate() {
                walk(&format!("{path}/{key}{i}"), v, f);
            }
        }
    }
}

#[test]
fn schema_is_structural_and_prunes_unknown_fields() {
    let mut problems = Vec::new();
    walk("", &root_schema(), &mut |path, node| {
        let int_or_string = node["x-kubernetes-int-or-string"] == true;
        if node["x-kubernetes-preserve-unknown-fields"] == true {
            problems.push(format!("{path}: preserves unknown fields"));
        }
        if node.get("type").is_none() && !int_or_string {
            problems.push(format!("{path}: no type"));
        }
        for key in [
            "$ref",
            "anyOf",
            "oneOf",
            "allOf",
            "not",
            "definitions",
            "$defs",
            "const",
        ] {
            if node.get(key).is_some() {
                problems.push(format!("{path}: has {key}"));
            }
        }
        if node["type"] == "object"
            && node.get("properties").is_some()
            && node.get("additionalProperties").is_some()
        {
            problems.push(format!("{path}: both properties and additionalProperties"));
        }
        if node.get("uniqueItems").is_some() {
            problems.push(format!("{path}: uniqueItems"));
        }
        if let Some(keys) = node["x-kubernetes-list-map-keys"].as_array() {
            let item = &node["items"];
            for key in keys {
                let key = key.as_str().unwrap_or_default();
                let required = item["required"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|k| k == key));
                let defaulted = item["properties"][key].get("default").is_some();
                if !required && !defaulted {
                    problems.push(format!("{path}: list-map key {key} is optional"));
                }
            }
        }
    });
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn string_defaults_match_their_patterns() {
    let mut checked = 0;
    walk("", &root_schema(), &mut |path, node| {
        if let (Some(pattern), Some(default)) = (node["pattern"].as_str(), node["default"].as_str())
        {
            let re = regex::Regex::new(pattern).expect("pattern compiles");
            assert!(
                re.is_match(default),
                "{path}: default {default:?} !~ {pattern}"
            );
            checked += 1;
        }
    });
    assert_eq!(checked, 1, "maxBufferedBytes");
}

#[test]
fn patterns_are_re2_compatible() {
    // The API server uses Go's RE2: no look-around, no backreferences. The regex crate
    // has the same limits, so what compiles here compiles there.
    let mut count = 0;
    walk("", &root_schema(), &mut |path, node| {
        if let Some(pattern) = node["pattern"].as_str() {
            regex::Regex::new(pattern)
                .unwrap_or_else(|e| panic!("{path}: pattern {pattern} does not compile: {e}"));
            count += 1;
        }
    });
    assert!(count >= 10, "{count} patterns");
}
