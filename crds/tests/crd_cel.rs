//! The CRD's CEL rules compile and decide as intended, evaluated client-side with the
//! Kubernetes CEL library (defaults applied first, as the API server does).

use kube_cel::{ScopeContext, Validator, analyze_rule, compile_schema};
use serde_json::{Value, json};

fn root_schema() -> Value {
    let crd = serde_json::to_value(scale_agent_crds::crd()).expect("the CRD serializes");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn shard(name: &str, accounts: Value) -> Value {
    json!({
        "apiVersion": "scaleagent.dev/v1alpha1",
        "kind": "AgentShard",
        "metadata": { "name": name, "namespace": "spinnaker" },
        "spec": { "accounts": accounts },
    })
}

fn account(extra: Value) -> Value {
    let mut account = json!({ "name": "prod-east-1", "kubeconfigSecretRef": { "name": "kc" } });
    if let (Some(a), Some(extra)) = (account.as_object_mut(), extra.as_object()) {
        a.extend(extra.clone());
    }
    account
}

/// The messages of the rules that fail for `object`.
fn failures(object: &Value) -> Vec<String> {
    match Validator::new().validate(&root_schema(), object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| format!("{e}")).collect(),
    }
}

#[test]
fn every_rule_compiles() {
    let compiled = compile_schema(&root_schema());
    fn errors(node: &kube_cel::CompiledSchema, out: &mut Vec<String>) {
        out.extend(node.compilation_errors().iter().map(|e| format!("{e:?}")));
        node.properties.values().for_each(|p| errors(p, out));
        if let Some(items) = &node.items {
            errors(items, out);
        }
        if let Some(additional) = &node.additional_properties {
            errors(additional, out);
        }
    }
    let mut out = Vec::new();
    errors(&compiled, &mut out);
    assert!(out.is_empty(), "{out:#?}");
}

#[test]
fn rules_use_only_what_their_scope_has() {
    let schema = root_schema();
    let compiled = compile_schema(&schema);
    let account = &compiled.properties["spec"].properties["accounts"];
    let account = account.items.as_deref().expect("accounts has items");
    let mut checked = 0;
    for rule in account.validations.iter().flatten() {
        // Scope (only self and friends), cost, and bounds of the lists it reads.
        let warnings = analyze_rule(&rule.rule.rule, account, ScopeContext::CrdValidation);
        assert!(warnings.is_empty(), "{}: {warnings:?}", rule.rule.rule);
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn credentials_are_a_kubeconfig_or_in_cluster_not_both_nor_neither() {
    let in_cluster = json!({ "name": "self", "inCluster": true });
    assert_eq!(
        failures(&shard("agent-mode", json!([in_cluster]))),
        Vec::<String>::new()
    );
    for bad in [
        json!({ "name": "both", "inCluster": true, "kubeconfigSecretRef": { "name": "kc" } }),
        json!({ "name": "neither" }),
        json!({ "name": "off", "inCluster": false }),
    ] {
        let failures = failures(&shard("agent-mode", json!([bad.clone()])));
        assert_eq!(failures.len(), 1, "{bad}: {failures:?}");
        assert!(
            failures[0].contains("set exactly one of kubeconfigSecretRef"),
            "{failures:?}"
        );
    }
}

#[test]
fn a_plain_shard_passes() {
    let object = shard("prod-east", json!([account(json!({}))]));
    assert_eq!(failures(&object), Vec::<String>::new());
}

#[test]
fn one_side_of_each_filter_pair_passes() {
    for extra in [
        json!({ "namespaces": ["a", "b"] }),
        json!({ "omitNamespaces": ["kube-system"] }),
        json!({ "kinds": ["Deployment"] }),
        json!({ "omitKinds": ["Secret"] }),
        json!({ "namespaces": [], "omitNamespaces": ["x"] }),
        json!({ "namespaces": ["a"], "omitNamespaces": [], "kinds": ["Pod"], "omitKinds": [] }),
    ] {
        let object = shard("prod-east", json!([account(extra.clone())]));
        assert_eq!(failures(&object), Vec::<String>::new(), "{extra}");
    }
}

#[test]
fn both_namespace_lists_fail_with_the_message() {
    let object = shard(
        "prod-east",
        json!([account(
            json!({ "namespaces": ["a"], "omitNamespaces": ["b"] })
        )]),
    );
    let failures = failures(&object);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains("namespaces and omitNamespaces cannot both be set"),
        "{failures:?}"
    );
}

#[test]
fn both_kind_lists_fail_with_the_message() {
    let object = shard(
        "prod-east",
        json!([account(
            json!({ "kinds": ["Pod"], "omitKinds": ["Secret"] })
        )]),
    );
    let failures = failures(&object);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains("kinds and omitKinds cannot both be set"),
        "{failures:?}"
    );
}

#[test]
fn each_bad_account_fails_on_its_own() {
    let object = shard(
        "prod-east",
        json!([
            account(json!({ "name": "a", "kinds": ["Pod"], "omitKinds": ["Secret"] })),
            account(json!({ "name": "b" })),
            account(json!({ "name": "c", "namespaces": ["x"], "omitNamespaces": ["y"] })),
        ]),
    );
    assert_eq!(failures(&object).len(), 2);
}

#[test]
fn long_shard_names_fail() {
    let ok = shard(&"a".repeat(63), json!([]));
    assert_eq!(failures(&ok), Vec::<String>::new());
    let long = shard(&"a".repeat(64), json!([]));
    let failures = failures(&long);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains("at most 63 characters"),
        "{failures:?}"
    );
}
