//! Acting on the test control plane as a user installing scale-agent does.

use std::collections::BTreeMap;

use anyhow::ensure;
use scale_agent_e2e::kubectl::{Output, run_full};
use scale_agent_e2e::{ControlPlane, Env};
use serde_json::Value;

use crate::kustomize;

/// kubectl with `args`, whatever its exit status.
pub fn kubectl_full<I, S>(cp: &ControlPlane, args: I) -> anyhow::Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Ok(run_full(
        &cp.bins.kubectl,
        &cp.management.kubeconfig,
        args,
        None,
    )?)
}

/// A generic Secret `ns/name` with `data`.
pub fn secret(env: &Env, ns: &str, name: &str, data: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut s = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": name, "namespace": ns },
        "stringData": {},
    });
    for (k, v) in data {
        s["stringData"][*k] = Value::from(*v);
    }
    env.apply(&serde_json::to_string(&s)?)?;
    Ok(())
}

pub fn shard_yaml(ns: &str, name: &str, account: &str) -> String {
    format!(
        "apiVersion: scaleagent.dev/v1alpha1\nkind: AgentShard\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  accounts:\n    - name: {account}\n      kubeconfigSecretRef: {{ name: kc-1 }}\n      namespaces: [{ns}]\n      kinds: [ConfigMap]\n"
    )
}

/// Minimal stand-ins for the CRDs of kinds the test control plane does not have
/// (cert-manager, Prometheus Operator): the kinds exist, their specs are not checked.
pub fn stand_in_crds() -> String {
    let kinds = [
        ("cert-manager.io", "Issuer", "issuers"),
        ("cert-manager.io", "Certificate", "certificates"),
        ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
        ("monitoring.coreos.com", "PodMonitor", "podmonitors"),
        ("monitoring.coreos.com", "PrometheusRule", "prometheusrules"),
    ];
    kinds
        .iter()
        .map(|(group, kind, plural)| {
            format!(
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {plural}.{group}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{ kind: {kind}, plural: {plural}, singular: {}, listKind: {kind}List }}\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      schema:\n        openAPIV3Schema:\n          type: object\n          properties:\n            spec: {{ type: object, x-kubernetes-preserve-unknown-fields: true }}\n---\n",
                kind.to_lowercase()
            )
        })
        .collect()
}

/// `kubectl apply --server-side -k manifests/install`: fails on an error or a warning.
pub fn apply_install(env: &Env) -> anyhow::Result<String> {
    let dir = kustomize::manifests().join("install").display().to_string();
    let out = kubectl_full(&env.cp, ["apply", "--server-side", "-k", &dir])?;
    ensure!(out.success, "applying manifests/install:\n{}", out.stderr);
    ensure!(
        !out.stderr.contains("Warning"),
        "manifests/install applies with warnings:\n{}",
        out.stderr
    );
    Ok(out.stdout)
}

/// What `kubectl` (the apply field manager) owns of each installed object, and its
/// generation: a second apply that changes nothing leaves all of it as it was.
pub fn applied_state(env: &Env) -> anyhow::Result<BTreeMap<String, Value>> {
    let dir = kustomize::manifests().join("install").display().to_string();
    let list: Value = serde_json::from_str(&env.cp.kubectl([
        "get",
        "-k",
        &dir,
        "-o",
        "json",
        "--show-managed-fields",
    ])?)?;
    let mut state = BTreeMap::new();
    for o in list["items"].as_array().into_iter().flatten() {
        let mine = applied_by_kubectl(o);
        state.insert(
            kustomize::key(o),
            serde_json::json!({ "generation": o["metadata"]["generation"], "applied": mine }),
        );
    }
    Ok(state)
}

/// Removes what `kubectl apply -k <dir>` (or the chart) installed and what the operator
/// and the hub left beside it: the ValidatingWebhookConfiguration the operator registers
/// and the hub's volume. Nothing of it need be there.
pub fn remove(cp: &ControlPlane, dir: &str) -> anyhow::Result<()> {
    kubectl_full(cp, ["delete", "-k", dir, "--ignore-not-found", "--wait"])?;
    for args in [
        &[
            "delete",
            "validatingwebhookconfiguration",
            "scale-agent-operator",
            "--ignore-not-found",
        ][..],
        &[
            "delete",
            "pv",
            "scale-agent-hub-store",
            "--ignore-not-found",
            "--wait",
        ],
    ] {
        cp.kubectl(args)?;
    }
    Ok(())
}

/// A volume for the hub's claim: the test control plane has no storage provisioner.
pub fn hub_volume(env: &Env) -> anyhow::Result<()> {
    let path = env.cp.run_dir.join("hub-store-volume");
    std::fs::create_dir_all(&path)?;
    let out = env.cp.kubectl_stdin(
        ["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: scale-agent-hub-store\nspec:\n  capacity: {{ storage: 1Gi }}\n  accessModes: [ReadWriteOnce]\n  hostPath: {{ path: {} }}\n",
            path.display()
        ),
    )?;
    ensure!(out.success, "creating the hub's volume: {}", out.stderr);
    Ok(())
}

/// `manifests/shard-namespace` for namespace `ns`, as a user's overlay.
pub fn shard_namespace(env: &Env, ns: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    kustomize::overlay(dir.path(), "shard-namespace", &format!("namespace: {ns}"))?;
    let out = kubectl_full(
        &env.cp,
        [
            "apply",
            "--server-side",
            "-k",
            &dir.path().display().to_string(),
        ],
    )?;
    ensure!(
        out.success,
        "applying manifests/shard-namespace for {ns}: {}",
        out.stderr
    );
    Ok(())
}

/// The managed-fields entries of object `o` that `kubectl apply` (server-side) owns.
pub fn applied_by_kubectl(o: &Value) -> Vec<&Value> {
    o["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["manager"] == "kubectl" && m["operation"] == "Apply")
        .collect()
}
