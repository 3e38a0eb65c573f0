//! The kustomizations of `manifests/`, rendered with `kubectl kustomize` as a user would.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};
use serde::Deserialize as _;
use serde_json::Value;

/// Every kustomization a user applies on its own (folders under `manifests/`).
pub const APPLIED: &[&str] = &[
    "namespace",
    "crd",
    "operator",
    "hub",
    "install",
    "shard-namespace",
    "overlays/production",
    "overlays/cert-manager",
    "overlays/agent-mode",
];

/// Kustomizations that are parts of others, never applied alone: components and the
/// `follow` transformers.
pub const PARTS: &[&str] = &[
    "components/production",
    "components/cert-manager",
    "follow",
    "follow/image",
];

/// The kustomizations that install scale-agent (the rest are bases, the CRD alone, or the
/// per-namespace binding), with the `follow` transformer a user lists after them.
pub const INSTALLS: &[(&str, &str)] = &[
    ("install", "follow"),
    ("overlays/production", "follow"),
    ("overlays/cert-manager", "follow"),
    ("overlays/agent-mode", "follow/image"),
];

/// The repository's `manifests/` folder.
pub fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// Every folder under `manifests/` with a kustomization.yaml, relative to it.
pub fn all() -> anyhow::Result<Vec<String>> {
    let root = manifests().canonicalize()?;
    let mut found = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                let rel = dir.strip_prefix(&root)?.to_string_lossy().into_owned();
                found.push(rel);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// `kubectl kustomize <dir>` as objects.
pub fn render(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .context("running kubectl kustomize")?;
    ensure!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    objects(&String::from_utf8(out.stdout)?)
}

/// The objects of a YAML stream (`---` between documents; empty documents left out).
pub fn objects(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(doc)?;
        if !v.is_null() {
            objects.push(v);
        }
    }
    Ok(objects)
}

/// Writes a user's kustomization in `dir` on top of `base` (a folder under `manifests/`):
/// `body` plus `resources: [base]`. Kustomize takes only relative paths.
pub fn overlay(dir: &Path, base: &str, body: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let base = relative(dir, &manifests().join(base))?;
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!("{body}\nresources:\n  - {}\n", base.display()),
    )?;
    Ok(())
}

/// The path from folder `from` to `to`, both existing.
pub fn relative(from: &Path, to: &Path) -> anyhow::Result<PathBuf> {
    let from = from.canonicalize()?;
    let to = to.canonicalize()?;
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..f.len() {
        path.push("..");
    }
    for c in &t[common..] {
        path.push(c.as_os_str());
    }
    Ok(path)
}

/// `kind/namespace/name` of an object.
pub fn key(o: &Value) -> String {
    format!(
        "{}/{}/{}",
        o["kind"].as_str().unwrap_or_default(),
        o["metadata"]["namespace"].as_str().unwrap_or_default(),
        o["metadata"]["name"].as_str().unwrap_or_default()
    )
}
