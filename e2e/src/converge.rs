//! What the end-to-end tests assert after every scenario: the hub's cache of an account
//! equals a fresh list of its cluster — zero missing, zero stale, zero extra. The tests
//! stream ConfigMaps of one namespace, compared by name, resourceVersion and `data.v`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::hub::HubProcess;
use crate::{Cluster, Error, Result};

/// name → (resourceVersion, data.v)
pub type Snapshot = BTreeMap<String, (String, String)>;

/// Creates `ns` in `cluster` unless it exists.
pub async fn create_namespace(cluster: &Cluster, ns: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(cluster.client().await?);
    let obj: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": ns } })).map_err(|e| Error::Http {
            url: ns.into(),
            message: e.to_string(),
        })?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(format!("creating namespace {ns}"), e)),
    }
}

/// The ConfigMaps of `ns` in `cluster`.
pub async fn configmaps(cluster: &Cluster, ns: &str) -> Result<Api<ConfigMap>> {
    Ok(Api::namespaced(cluster.client().await?, ns))
}

/// Creates or updates ConfigMap `name` with `data.v = value` (server-side apply).
pub async fn put_cm(api: &Api<ConfigMap>, name: &str, value: &str) -> Result<()> {
    let cm = json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name }, "data": { "v": value } });
    api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&cm))
        .await
        .map_err(|e| Error::kube(format!("applying ConfigMap {name}"), e))?;
    Ok(())
}

/// The hub's ConfigMaps of `account` in `ns` (None when the hub does not answer 200).
pub async fn hub_snapshot(hub: &HubProcess, account: &str, ns: &str) -> Option<Snapshot> {
    let (code, body) = hub
        .get(&format!(
            // The hub answers lists in pages; one page of its largest size holds
            // every ConfigMap the tests and benchmarks create in a namespace.
            "/v1/accounts/{account}/objects?kind=ConfigMap&namespace={ns}&limit=5000"
        ))
        .await
        .ok()?;
    if code != 200 {
        return None;
    }
    let field = |o: &Value, path: &[&str]| {
        path.iter()
            .fold(o, |v, k| &v[*k])
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    Some(
        body.as_array()?
            .iter()
            .map(|o| {
                (
                    field(o, &["name"]),
                    (
                        field(o, &["resourceVersion"]),
                        field(o, &["object", "data", "v"]),
                    ),
                )
            })
            .collect(),
    )
}

/// A fresh list of the cluster, in the same shape (the per-namespace root CA ConfigMap,
/// which every namespace gets, is left out only when no controller made it).
pub async fn cluster_snapshot(api: &Api<ConfigMap>) -> Result<Snapshot> {
    Ok(api
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("listing ConfigMaps", e))?
        .items
        .into_iter()
        .map(|c| {
            let v = c
                .data
                .as_ref()
                .and_then(|d| d.get("v"))
                .cloned()
                .unwrap_or_default();
            (
                c.metadata.name.unwrap_or_default(),
                (c.metadata.resource_version.unwrap_or_default(), v),
            )
        })
        .collect())
}

/// [`converge`] for each `(account, ConfigMaps of ns)` in turn, each within `timeout`.
/// Returns how long until the last one converged.
pub async fn converge_all(
    hub: &HubProcess,
    accounts: &[(String, Api<ConfigMap>)],
    ns: &str,
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    for (account, api) in accounts {
        converge(hub, account, api, ns, timeout).await?;
    }
    Ok(start.elapsed())
}

/// Waits until the hub's cache of `account` equals a fresh list of the cluster. Returns
/// how long it took; on timeout, the error lists what is missing, extra and stale.
pub async fn converge(
    hub: &HubProcess,
    account: &str,
    api: &Api<ConfigMap>,
    ns: &str,
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let mut last = (Snapshot::new(), Snapshot::new());
    while start.elapsed() < timeout {
        // The cluster may be restarting: a failed list is "not yet", not a failure.
        let Ok(want) = cluster_snapshot(api).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let got = hub_snapshot(hub, account, ns).await.unwrap_or_default();
        if got == want {
            return Ok(start.elapsed());
        }
        last = (want, got);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (want, got) = last;
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let stale: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, _)| k)
        .collect();
    Err(Error::Timeout {
        what: format!(
            "account {account}: hub cache to equal the cluster (missing {missing:?}, extra {extra:?}, stale {stale:?})"
        ),
        seconds: timeout.as_secs(),
    })
}

/// The hub's view of `account` (`GET /v1/accounts`), if listed.
pub async fn account_state(hub: &HubProcess, account: &str) -> Option<Value> {
    let (code, body) = hub.get("/v1/accounts").await.ok()?;
    if code != 200 {
        return None;
    }
    body.as_array()?
        .iter()
        .find(|a| a["name"] == account)
        .cloned()
}

/// Waits until the hub lists `account` in `state` (Connected, Disconnected).
pub async fn wait_state(
    hub: &HubProcess,
    account: &str,
    state: &str,
    timeout: Duration,
) -> Result<Value> {
    crate::wait::until(
        &format!("account {account} {state} at the hub"),
        timeout,
        || async {
            account_state(hub, account)
                .await
                .filter(|a| a["state"] == state)
        },
    )
    .await
}
