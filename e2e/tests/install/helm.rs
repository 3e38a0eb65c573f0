//! The Helm chart `charts/scale-agent`, driven with the real helm (built from its Go module
//! by `e2e/scripts/build-helm.sh`, cached by version).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};
use scale_agent_e2e::ControlPlane;
use serde_json::Value;

use crate::kustomize;

/// The release name the tests install the chart as.
pub const RELEASE: &str = "scale-agent";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chart's folder.
pub fn chart() -> PathBuf {
    repo().join("charts/scale-agent")
}

/// The helm binary, built on first use.
pub fn helm() -> anyhow::Result<PathBuf> {
    Ok(scale_agent_e2e::bins::build_script(
        &repo().join("e2e/scripts/build-helm.sh"),
        &[],
    )?)
}

/// `helm <args>` against the test control plane's management cluster; its standard
/// output, or an error with its standard error.
pub fn run(cp: &ControlPlane, args: &[&str]) -> anyhow::Result<String> {
    let helm = helm()?;
    let home = cp.run_dir.join("helm");
    let out = Command::new(&helm)
        .args(args)
        .env("KUBECONFIG", &cp.management.kubeconfig)
        // Its cache, config and data in the run folder, not the user's.
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .context("running helm")?;
    ensure!(
        out.status.success(),
        "helm {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `helm template` of the chart into `namespace` (CRDs included) with `set` values, as
/// objects by `kind/namespace/name`.
pub fn template(
    cp: &ControlPlane,
    namespace: &str,
    set: &[&str],
) -> anyhow::Result<BTreeMap<String, Value>> {
    let chart = chart().display().to_string();
    let mut args = vec![
        "template",
        RELEASE,
        &chart,
        "--namespace",
        namespace,
        "--include-crds",
    ];
    for s in set {
        args.extend(["--set", s]);
    }
    let text = run(cp, &args)?;
    Ok(by_key(kustomize::objects(&text)?))
}

/// Objects by `kind/namespace/name`.
pub fn by_key(objects: Vec<Value>) -> BTreeMap<String, Value> {
    objects
        .into_iter()
        .map(|o| (kustomize::key(&o), o))
        .collect()
}

/// Where `a` and `b` differ: the paths of the differing values, each with both.
pub fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                differences(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}[{i}]"), p, q, out);
            }
        }
        // The same number, written `64` by kustomize and `64.0` in the CRD file.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a != b => out.push(format!("{path}: {a} ≠ {b}")),
        _ => {}
    }
}
