//! Accounts of one cluster with the same credentials share the agent's watches, and
//! each still sees exactly its own objects: its namespaces, its label filter
//! (`onlySpinnakerManaged`), its changes. An account with other credentials gets
//! watches of its own. Removing an account leaves the others streaming, with no
//! relist. The watches are counted where they cost: the API server's own gauge.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, Patch, PatchParams, PostParams};
use scale_agent_e2e::converge::{configmaps, create_namespace, hub_snapshot, wait_state};
use scale_agent_e2e::scenario::*;
use scale_agent_e2e::{Env, runner, wait};
use serde_json::json;

/// Only this test's agent watches it: its API server's watch count is the agent's.
const CLUSTER: &str = "cluster-shared";

fn main() {
    runner::main(
        &[CLUSTER],
        vec![(
            "accounts_of_one_identity_share_watches_and_see_only_their_objects",
            |e| Box::pin(shared_watches(e)),
        )],
    );
}

/// The kinds each account watches (the scenario's accounts': ConfigMap, Deployment),
/// and the watches of the API's surface (CRDs, APIServices) every identity keeps.
const WATCHES_PER_IDENTITY: f64 = 2.0 + 2.0;

async fn shared_watches(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "shared", "60s").await?;
    let cluster = target(&env, CLUSTER)?;
    let ns_a = s.ns.clone();
    let ns_b = format!("{}-b", s.ns);
    create_namespace(cluster, &ns_b).await?;
    let cms_a = configmaps(cluster, &ns_a).await?;
    let cms_b = configmaps(cluster, &ns_b).await?;
    for (api, prefix) in [(&cms_a, "a"), (&cms_b, "b")] {
        labelled(api, &format!("{prefix}-plain"), false).await?;
        labelled(api, &format!("{prefix}-managed"), true).await?;
    }

    // share-a: namespace A, everything. share-b: namespace B, only what Spinnaker
    // manages. Both with the cluster's admin kubeconfig. other-a: namespace A, as a
    // ServiceAccount of its own.
    let mut only_managed = account("share-b", &ns_b);
    only_managed.scope.only_spinnaker_managed = true;
    let mut cfg = config(
        &s,
        "shared",
        vec![
            account("share-a", &ns_a),
            only_managed,
            account("other-a", &ns_a),
        ],
    );
    let mut kcs = kubeconfigs(&env, &[("share-a", CLUSTER), ("share-b", CLUSTER)])?;
    kcs.insert(
        "other-a.kubeconfig".into(),
        token_kubeconfig(&env, &s.ns).await?,
    );

    let before = api_server_watches(&env).await?;
    let agent = start_agent(
        &env,
        &s,
        "shared-0",
        &cfg,
        &kcs,
        &["--lease-renew-interval=500ms", "--reload-interval=300ms"],
    )?;
    for name in ["share-a", "share-b", "other-a"] {
        wait_state(&s.hub, name, "Connected", Duration::from_secs(60))
            .await
            .with_context(|| agent_log(&agent))?;
    }
    // Each sees exactly its own objects.
    let sees = |account: &'static str, ns: String, names: &'static [&'static str]| {
        let hub = &s.hub;
        async move {
            let want: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
            wait::until(
                &format!("{account} to see exactly {names:?} in {ns}"),
                Duration::from_secs(30),
                || async {
                    let got: BTreeSet<String> = hub_snapshot(hub, account, &ns)
                        .await
                        .unwrap_or_default()
                        .into_keys()
                        .filter(|n| n != "kube-root-ca.crt")
                        .collect();
                    (got == want).then_some(())
                },
            )
            .await
        }
    };
    sees("share-a", ns_a.clone(), &["a-plain", "a-managed"]).await?;
    sees("share-a", ns_b.clone(), &[]).await?;
    sees("share-b", ns_b.clone(), &["b-managed"]).await?;
    sees("share-b", ns_a.clone(), &[]).await?;
    sees("other-a", ns_a.clone(), &["a-plain", "a-managed"]).await?;

    // Two identities: two sets of watches on the API server, not three (one per
    // account, as before).
    let server = cluster_server(&env)?;
    let last = std::sync::Mutex::new((0.0, 0.0));
    let open = wait::until(
        "the agent's watches to settle",
        Duration::from_secs(30),
        || async {
            let now = api_server_watches(&env).await.ok()? - before;
            let agent_says = agent_watches(&agent, &server).await;
            *last.lock().ok()? = (now, agent_says);
            (now <= 2.0 * WATCHES_PER_IDENTITY && agent_says == 2.0 * WATCHES_PER_IDENTITY)
                .then_some(now)
        },
    )
    .await
    .with_context(|| {
        let (api_server, agent_says) = *last.lock().unwrap_or_else(|e| e.into_inner());
        format!(
            "three accounts of two identities on {CLUSTER}: the API server serves {api_server} watches for the agent, which counts {agent_says} (want at most {} and exactly that): {}",
            2.0 * WATCHES_PER_IDENTITY,
            agent_log(&agent)
        )
    })?;
    eprintln!("shared-watches: {open} watches on the API server for 3 accounts of 2 identities");

    // Changes while sharing: a label put on and taken off turns into an add and a
    // delete for the filtered account only; a new object reaches both of namespace A.
    labelled(&cms_b, "b-plain", true).await?;
    labelled(&cms_b, "b-managed", false).await?;
    labelled(&cms_a, "a-new", false).await?;
    sees("share-b", ns_b.clone(), &["b-plain"]).await?;
    sees("share-a", ns_a.clone(), &["a-plain", "a-managed", "a-new"]).await?;
    sees("other-a", ns_a.clone(), &["a-plain", "a-managed", "a-new"]).await?;
    sees("share-a", ns_b.clone(), &[]).await?;

    // Removing share-b leaves share-a streaming on the shared watch, with no relist.
    let relisted = relists(&agent).await;
    cfg.accounts.retain(|a| a.name != "share-b");
    agent.update(&cfg, &kcs)?;
    wait::until(
        "share-b to leave the hub or disconnect",
        Duration::from_secs(20),
        || async {
            match scale_agent_e2e::converge::account_state(&s.hub, "share-b").await {
                None => Some(()),
                Some(a) if a["state"] != "Connected" => Some(()),
                _ => None,
            }
        },
    )
    .await?;
    labelled(&cms_a, "a-after", true).await?;
    sees(
        "share-a",
        ns_a.clone(),
        &["a-plain", "a-managed", "a-new", "a-after"],
    )
    .await?;
    ensure!(
        relists(&agent).await == relisted,
        "removing share-b made the agent relist: {}",
        agent_log(&agent)
    );
    ensure!(
        agent_watches(&agent, &server).await == 2.0 * WATCHES_PER_IDENTITY,
        "removing one of two accounts sharing watches changed the watches open: {}",
        agent_log(&agent)
    );
    Ok(())
}

/// Creates or updates ConfigMap `name`, with Spinnaker's label when `managed`.
async fn labelled(api: &Api<ConfigMap>, name: &str, managed: bool) -> anyhow::Result<()> {
    let labels = if managed {
        json!({ "app.kubernetes.io/managed-by": "spinnaker" })
    } else {
        json!({})
    };
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": name, "labels": labels }, "data": { "v": name }
    });
    api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&cm))
        .await
        .with_context(|| format!("applying ConfigMap {name}"))?;
    Ok(())
}

/// A kubeconfig for the cluster as ServiceAccount `other` of namespace `ns`, bound to
/// cluster-admin: the same rights as the admin, but other credentials.
async fn token_kubeconfig(env: &Env, ns: &str) -> anyhow::Result<String> {
    let cluster = target(env, CLUSTER)?;
    let client = cluster.client().await?;
    let apply = PatchParams::apply("e2e").force();
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .patch(
            "other",
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "other" }
            })),
        )
        .await?;
    let binding = format!("{ns}-other");
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(
            &binding,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": { "name": binding },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin" },
                "subjects": [{ "kind": "ServiceAccount", "name": "other", "namespace": ns }]
            })),
        )
        .await?;
    let token = Api::<ServiceAccount>::namespaced(client, ns)
        .create_token_request(
            "other",
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..TokenRequestSpec::default()
                }),
                ..TokenRequest::default()
            },
        )
        .await?
        .status
        .context("a TokenRequest without status")?
        .token;
    let mut kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&cluster.kubeconfig)?)?;
    kc["users"][0]["user"] = serde_yaml::to_value(BTreeMap::from([("token", token)]))?;
    Ok(serde_yaml::to_string(&kc)?)
}

/// The cluster's server URL, as the agent labels its watches.
fn cluster_server(env: &Env) -> anyhow::Result<String> {
    let kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&target(env, CLUSTER)?.kubeconfig)?)?;
    let server = kc["clusters"][0]["cluster"]["server"]
        .as_str()
        .context("a kubeconfig without server")?;
    // As `kube::Config` writes it (a URI: a path of `/` at least).
    Ok(server.parse::<http::Uri>()?.to_string())
}

/// Watches the cluster's API server serves now (`apiserver_longrunning_requests`, verb
/// WATCH; its own loopback informers included).
async fn api_server_watches(env: &Env) -> anyhow::Result<f64> {
    let client = target(env, CLUSTER)?.client().await?;
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    Ok(scale_agent_e2e::metrics::sum_with(
        &text,
        "apiserver_longrunning_requests",
        "verb=\"WATCH\"",
    ))
}

/// Watches the agent says it keeps open on `server`.
async fn agent_watches(agent: &scale_agent_e2e::agent::AgentProcess, server: &str) -> f64 {
    scale_agent_e2e::metrics::metric(
        &agent.admin,
        &format!("scale_agent_watches_open{{server=\"{server}\"}}"),
    )
    .await as f64
}

/// Full relists of every cause (the first list of a kind included).
async fn relists(agent: &scale_agent_e2e::agent::AgentProcess) -> u64 {
    scale_agent_e2e::metrics::metric_sum(&agent.admin, "scale_agent_relists_total").await
}
