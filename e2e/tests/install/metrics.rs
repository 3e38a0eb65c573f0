//! Which metrics the components export, and which the alerts and the dashboard name.

use std::collections::BTreeSet;

use anyhow::bail;

use crate::{kustomize, policy};

/// Metric names of a Prometheus text exposition: sample names, and the family names of
/// `# TYPE` lines with the suffixes their samples carry.
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_owned());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#')
            && let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty())
        {
            names.insert(name.to_owned());
        }
    }
    names
}

/// The scale-agent metrics the PrometheusRule of manifests/components/production names.
pub fn alert_metrics() -> anyhow::Result<BTreeSet<String>> {
    let objects = kustomize::render(&kustomize::manifests().join("overlays/production"))?;
    let rule = policy::find(&objects, "PrometheusRule", "scale-agent")?;
    let mut names = BTreeSet::new();
    for group in rule["spec"]["groups"].as_array().into_iter().flatten() {
        for r in group["rules"].as_array().into_iter().flatten() {
            named_in(r["expr"].as_str().unwrap_or_default(), &mut names);
        }
    }
    if names.is_empty() {
        bail!("the PrometheusRule names no scale-agent metric");
    }
    Ok(names)
}

/// The scale-agent metrics the queries of the Grafana dashboard
/// (manifests/grafana/scale-agent.json) name.
pub fn dashboard_metrics() -> anyhow::Result<BTreeSet<String>> {
    let path = kustomize::manifests().join("grafana/scale-agent.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let mut names = BTreeSet::new();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            named_in(expr, &mut names);
            queries += 1;
        }
    }
    if names.is_empty() || queries == 0 {
        bail!(
            "{} has no query naming a scale-agent metric",
            path.display()
        );
    }
    Ok(names)
}

/// Adds the scale-agent metric names PromQL `expr` names to `names`.
fn named_in(expr: &str, names: &mut BTreeSet<String>) {
    for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if token.starts_with("scale_agent_") {
            names.insert(token.to_owned());
        }
    }
}
