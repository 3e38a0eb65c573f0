//! Filling clusters with objects for the benchmarks: namespaces and ConfigMaps of a
//! chosen size, created by several concurrent workers (the API server, not the client,
//! is the limit). Creation is idempotent, so a rerun on the same clusters only adds
//! what is missing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::{Error, Result};

/// ConfigMaps to create in one namespace.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The namespace (created when missing).
    pub namespace: String,
    /// Name prefix; objects are `<prefix>-<i>`.
    pub prefix: String,
    /// How many.
    pub count: usize,
}

/// The body of a seeded ConfigMap: `data.v` of `bytes` characters.
pub fn configmap(name: &str, bytes: usize) -> Result<ConfigMap> {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": name, "labels": { "scale-agent.dev/bench": "seed" } },
        "data": { "v": "x".repeat(bytes) },
    }))
    .map_err(|e| Error::Invalid {
        what: format!("ConfigMap {name}"),
        message: e.to_string(),
    })
}

/// Creates namespace `name` through `client` unless it exists.
pub async fn namespace(client: &kube::Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": name } })).map_err(|e| {
            Error::Invalid {
                what: format!("namespace {name}"),
                message: e.to_string(),
            }
        })?;
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(format!("creating namespace {name}"), e)),
    }
}

/// Creates every batch's namespace and ConfigMaps of `bytes` bytes through `client`
/// with `workers` concurrent requests. Returns how many objects were created (objects
/// that existed already are not counted) and how long it took.
pub async fn configmaps(
    client: &kube::Client,
    batches: &[Batch],
    bytes: usize,
    workers: usize,
) -> Result<(usize, Duration)> {
    let started = Instant::now();
    for b in batches {
        namespace(client, &b.namespace).await?;
    }
    let jobs: Arc<Vec<(String, String)>> = Arc::new(
        batches
            .iter()
            .flat_map(|b| {
                (0..b.count).map(move |i| (b.namespace.clone(), format!("{}-{i}", b.prefix)))
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (client, jobs, next) = (client.clone(), Arc::clone(&jobs), Arc::clone(&next));
        tasks.spawn(async move {
            let mut created = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((ns, name)) = jobs.get(i) else {
                    return Ok(created);
                };
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
                let cm = configmap(name, bytes)?;
                let mut attempt = 0;
                loop {
                    match api.create(&PostParams::default(), &cm).await {
                        Ok(_) => {
                            created += 1;
                            break;
                        }
                        Err(kube::Error::Api(s)) if s.code == 409 => break,
                        // A loaded API server may answer 429 or time out: try again.
                        Err(e) if attempt < 5 => {
                            attempt += 1;
                            tracing::debug!(namespace = %ns, %name, error = %e, "creating a seed ConfigMap; retrying");
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                        }
                        Err(e) => {
                            return Err(Error::kube(format!("creating ConfigMap {ns}/{name}"), e));
                        }
                    }
                }
            }
        });
    }
    let mut created = 0;
    while let Some(r) = tasks.join_next().await {
        created += r.map_err(|e| Error::Invalid {
            what: "a seeding worker".into(),
            message: e.to_string(),
        })??;
    }
    Ok((created, started.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_configmap_has_the_asked_size() {
        let cm = configmap("obj-1", 1000).expect("valid");
        let v = cm.data.as_ref().and_then(|d| d.get("v")).expect("data.v");
        assert_eq!(v.len(), 1000);
        assert_eq!(cm.metadata.name.as_deref(), Some("obj-1"));
    }
}
