//! The agent and the hub against the real control plane and three target clusters:
//! objects stream, change and vanish; accounts come and go without restarts; names bound
//! to another cluster are refused; the grace period; operations; replicas splitting
//! accounts; relists after a watch expired; a quiet kind resuming through bookmarks.
//! Every scenario ends with the hub's cache equal to a fresh list of the cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, ListParams, WatchEvent, WatchParams};
use nix::sys::signal::Signal;
use scale_agent_crds::AccountConfig;
use scale_agent_e2e::agent::AgentProcess;
use scale_agent_e2e::converge::{
    account_state, configmaps, converge, create_namespace, hub_snapshot, put_cm, wait_state,
};
use scale_agent_e2e::hub::HubProcess;
use scale_agent_e2e::scenario::*;
use scale_agent_e2e::{Env, runner, wait};
use serde_json::json;

const TARGETS: [&str; 3] = ["cluster-1", "cluster-2", "cluster-3"];
/// Restarted by the relist test; no other test uses it.
const RESTARTED: &str = "cluster-restarted";
/// The quiet-kind test's: only its own ConfigMaps move this API server's watch window.
const QUIET: &str = "cluster-quiet";

fn main() {
    runner::main(
        &[TARGETS[0], TARGETS[1], TARGETS[2], RESTARTED, QUIET],
        vec![
            ("objects_created_changed_deleted_reach_the_hub", |e| {
                Box::pin(objects_flow(e))
            }),
            ("account_added_streams_without_restart", |e| {
                Box::pin(account_added(e))
            }),
            ("name_bound_to_another_cluster_is_rejected", |e| {
                Box::pin(cluster_mismatch(e))
            }),
            ("grace_period_keeps_objects_when_agent_returns", |e| {
                Box::pin(grace_return(e))
            }),
            ("grace_period_removes_account_when_agent_stays_away", |e| {
                Box::pin(grace_expire(e))
            }),
            ("operations_change_the_target_cluster", |e| {
                Box::pin(operations(e))
            }),
            ("replicas_split_accounts_and_take_over", |e| {
                Box::pin(replicas(e))
            }),
            ("expired_watch_relists_without_loss", |e| {
                Box::pin(relist_after_compaction(e))
            }),
            ("quiet_kind_resumes_after_its_window_moved_on", |e| {
                Box::pin(quiet_kind_resumes(e))
            }),
            ("objects_near_the_size_limit_stream", |e| {
                Box::pin(large_objects(e))
            }),
        ],
    );
}

// ---------- scenarios ----------

async fn objects_flow(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "flow", "60s").await?;
    let names = ["flow-a", "flow-b", "flow-c"];
    let cfg = config(
        &s,
        "flow",
        names.iter().map(|n| account(n, &s.ns)).collect(),
    );
    let kcs = kubeconfigs(
        &env,
        &[
            ("flow-a", "cluster-1"),
            ("flow-b", "cluster-2"),
            ("flow-c", "cluster-3"),
        ],
    )?;
    let agent = start_agent(
        &env,
        &s,
        "flow-0",
        &cfg,
        &kcs,
        &["--lease-renew-interval=500ms"],
    )?;
    for (account, cluster) in names.iter().zip(TARGETS) {
        let api = configmaps(target(&env, cluster)?, &s.ns).await?;
        for i in 0..5 {
            put_cm(&api, &format!("cm-{i}"), "one").await?;
        }
        wait_state(&s.hub, account, "Connected", Duration::from_secs(30))
            .await
            .with_context(|| agent_log(&agent))?;
        converge(&s.hub, account, &api, &s.ns, Duration::from_secs(30)).await?;
        // Change and delete: the hub follows.
        put_cm(&api, "cm-1", "two").await?;
        api.delete("cm-2", &DeleteParams::default()).await?;
        put_cm(&api, "cm-new", "three").await?;
        let took = converge(&s.hub, account, &api, &s.ns, Duration::from_secs(30)).await?;
        let hub = hub_snapshot(&s.hub, account, &s.ns)
            .await
            .unwrap_or_default();
        ensure!(
            hub.get("cm-1").map(|v| v.1.as_str()) == Some("two"),
            "cm-1 not updated: {hub:?}"
        );
        ensure!(!hub.contains_key("cm-2"), "cm-2 not deleted: {hub:?}");
        eprintln!("{account}: changes converged in {took:?}");
    }
    // Get by kind/namespace/name, case-insensitive kind; 404 when absent.
    let (code, obj) = s
        .hub
        .get(&format!(
            "/v1/accounts/flow-a/objects/configmap/{}/cm-1",
            s.ns
        ))
        .await?;
    ensure!(
        code == 200 && obj["object"]["data"]["v"] == "two",
        "get by name: {code} {obj}"
    );
    let (code, _) = s
        .hub
        .get(&format!(
            "/v1/accounts/flow-a/objects/ConfigMap/{}/cm-2",
            s.ns
        ))
        .await?;
    ensure!(code == 404, "deleted object should 404, got {code}");
    // The cluster id is the UID of kube-system in that cluster.
    let ks: Namespace = Api::all(target(&env, "cluster-2")?.client().await?)
        .get("kube-system")
        .await?;
    // The agent registered flow-b with it; the hub shows cluster ids only to callers
    // with an API token, and this hub has none.
    let uid = ks.metadata.uid.unwrap_or_default();
    let log = std::fs::read_to_string(agent.proc.log())?;
    ensure!(
        log.lines()
            .any(|l| l.contains("account=flow-b") && l.contains(&format!("cluster_id={uid}"))),
        "flow-b registered with another cluster id than {uid}: {}",
        agent_log(&agent)
    );
    let a = account_state(&s.hub, "flow-b")
        .await
        .context("flow-b listed")?;
    ensure!(
        a.get("clusterId").is_none(),
        "anonymous caller saw a cluster id: {a}"
    );
    Ok(())
}

async fn account_added(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "added", "60s").await?;
    let mut cfg = config(&s, "added", vec![account("added-a", &s.ns)]);
    let kcs = kubeconfigs(&env, &[("added-a", "cluster-1"), ("added-b", "cluster-2")])?;
    let agent = start_connected(
        &env,
        &s,
        "added-0",
        &cfg,
        &kcs,
        &["--lease-renew-interval=500ms", "--reload-interval=300ms"],
        "added-a",
    )
    .await?;
    let pid = agent.proc.pid();
    let api_b = configmaps(target(&env, "cluster-2")?, &s.ns).await?;
    put_cm(&api_b, "b-1", "x").await?;
    cfg.accounts.push(account("added-b", &s.ns));
    agent.update(&cfg, &kcs)?;
    wait_state(&s.hub, "added-b", "Connected", Duration::from_secs(20))
        .await
        .with_context(|| agent_log(&agent))?;
    converge(&s.hub, "added-b", &api_b, &s.ns, Duration::from_secs(20)).await?;
    ensure!(agent.proc.pid() == pid, "the agent restarted");
    let mut agent = agent;
    agent
        .proc
        .check_running()
        .context("the agent process exited")?;
    // The first account kept streaming.
    let api_a = configmaps(target(&env, "cluster-1")?, &s.ns).await?;
    put_cm(&api_a, "a-after", "y").await?;
    converge(&s.hub, "added-a", &api_a, &s.ns, Duration::from_secs(20)).await?;
    // Removing an account unregisters it; the other stays.
    cfg.accounts.retain(|a| a.name != "added-a");
    agent.update(&cfg, &kcs)?;
    wait::until(
        "added-a to leave the hub or disconnect",
        Duration::from_secs(20),
        || async {
            match account_state(&s.hub, "added-a").await {
                None => Some(()),
                Some(a) if a["state"] != "Connected" => Some(()),
                _ => None,
            }
        },
    )
    .await?;
    ensure!(
        account_state(&s.hub, "added-b")
            .await
            .is_some_and(|a| a["state"] == "Connected"),
        "added-b should stay"
    );
    Ok(())
}

async fn cluster_mismatch(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "mismatch", "60s").await?;
    let _first = stream_one(&env, &s, "first", "shared-name", "cluster-1").await?;
    let held = account_state(&s.hub, "shared-name")
        .await
        .context("shared-name listed")?;
    // Another shard claims the same name for a different cluster: the name is bound to
    // the first shard (and its cluster), so it is refused as not its to take.
    let second = config(&s, "second", vec![account("shared-name", &s.ns)]);
    let b = start_agent(
        &env,
        &s,
        "second-0",
        &second,
        &kubeconfigs(&env, &[("shared-name", "cluster-2")])?,
        &["--lease-renew-interval=500ms"],
    )?;
    wait_logged(
        &b,
        "the second agent to log its rejection",
        &["hub rejected the account", "NotOwner"],
    )
    .await?;
    let now = account_state(&s.hub, "shared-name")
        .await
        .context("still listed")?;
    ensure!(
        now["shard"] == held["shard"]
            && now["serverUrl"] == held["serverUrl"]
            && now["state"] == "Connected",
        "binding changed: {now}"
    );
    // The first keeps streaming.
    let api = configmaps(target(&env, "cluster-1")?, &s.ns).await?;
    put_cm(&api, "still-streaming", "yes").await?;
    converge(&s.hub, "shared-name", &api, &s.ns, Duration::from_secs(20)).await?;
    Ok(())
}

async fn grace_return(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "graceback", "20s").await?;
    let cfg = config(&s, "graceback", vec![account("grace-back", &s.ns)]);
    let kcs = kubeconfigs(&env, &[("grace-back", "cluster-1")])?;
    let api = configmaps(target(&env, "cluster-1")?, &s.ns).await?;
    for i in 0..3 {
        put_cm(&api, &format!("g-{i}"), "v").await?;
    }
    // The agent, started again after it was killed.
    let start = || {
        start_connected(
            &env,
            &s,
            "graceback-0",
            &cfg,
            &kcs,
            &["--lease-renew-interval=500ms", "--lease-duration=3s"],
            "grace-back",
        )
    };
    let mut agent = start().await?;
    converge(&s.hub, "grace-back", &api, &s.ns, Duration::from_secs(20)).await?;
    agent.proc.signal(Signal::SIGKILL);
    agent.proc.stop(Duration::from_secs(1));
    wait_state(
        &s.hub,
        "grace-back",
        "Disconnected",
        Duration::from_secs(10),
    )
    .await?;
    let kept = hub_snapshot(&s.hub, "grace-back", &s.ns)
        .await
        .unwrap_or_default();
    ensure!(
        kept.len() == 3,
        "objects should stay while disconnected: {kept:?}"
    );
    // Changes while the agent is away are picked up when it is back (its lease has expired by then).
    api.delete("g-0", &DeleteParams::default()).await?;
    put_cm(&api, "g-while-away", "v").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let agent2 = start().await?;
    let took = converge(&s.hub, "grace-back", &api, &s.ns, Duration::from_secs(20)).await?;
    // It resumed the watches from the hub's resume points instead of listing again.
    let resumes = metric(&agent2, "scale_agent_resumes_total").await;
    let relisted = relists(&agent2).await;
    eprintln!(
        "grace-back: resynced in {took:?} after the agent came back ({resumes} watches resumed, {relisted} relists)"
    );
    ensure!(
        resumes >= 1,
        "the agent should resume from the hub's resume points, resumed {resumes}"
    );
    Ok(())
}

async fn grace_expire(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "graceexp", "3s").await?;
    let api = configmaps(target(&env, "cluster-3")?, &s.ns).await?;
    put_cm(&api, "e-1", "v").await?;
    let mut agent = stream_one(&env, &s, "graceexp", "grace-gone", "cluster-3").await?;
    converge(&s.hub, "grace-gone", &api, &s.ns, Duration::from_secs(20)).await?;
    let dropped = Instant::now();
    agent.proc.signal(Signal::SIGKILL);
    agent.proc.stop(Duration::from_secs(1));
    wait::until(
        "grace-gone removed after the grace period",
        Duration::from_secs(20),
        || async {
            account_state(&s.hub, "grace-gone")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await?;
    let after = dropped.elapsed();
    ensure!(
        after >= Duration::from_millis(2500),
        "removed after {after:?}, before the 3 s grace period"
    );
    let (code, _) = s
        .hub
        .get(&format!(
            "/v1/accounts/grace-gone/objects?kind=ConfigMap&namespace={}",
            s.ns
        ))
        .await?;
    ensure!(
        code == 404,
        "objects of a removed account should be gone (404), got {code}"
    );
    Ok(())
}

async fn operations(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "ops", "60s").await?;
    let _agent = stream_one(&env, &s, "ops", "ops-a", "cluster-2").await?;
    let client = target(&env, "cluster-2")?.client().await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &s.ns);
    let cms: Api<ConfigMap> = Api::namespaced(client, &s.ns);
    let path = "/v1/accounts/ops-a/operations";

    // apply
    let manifest = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web", "namespace": s.ns },
        "spec": { "replicas": 1, "selector": { "matchLabels": { "app": "web" } },
                  "template": { "metadata": { "labels": { "app": "web" } },
                                "spec": { "containers": [{ "name": "web", "image": "example.com/web:1" }] } } }
    });
    let (code, body) = s
        .hub
        .post(path, &json!({ "type": "apply", "manifest": manifest }))
        .await?;
    ensure!(code == 200, "apply: {code} {body}");
    let d = deployments
        .get("web")
        .await
        .context("apply created the Deployment")?;
    let managers: Vec<String> = d
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    ensure!(
        managers.contains(&"scale-agent".to_string()),
        "field manager: {managers:?}"
    );

    // scale
    let (code, body) = s.hub.post(path, &json!({ "type": "scale", "kind": "Deployment", "namespace": s.ns, "name": "web", "replicas": 3 })).await?;
    ensure!(code == 200, "scale: {code} {body}");
    ensure!(
        deployments.get("web").await?.spec.and_then(|s| s.replicas) == Some(3),
        "scale did not reach the cluster"
    );

    // patch (merge) a ConfigMap
    put_cm(&cms, "settings", "old").await?;
    let (code, body) = s.hub.post(path, &json!({ "type": "patch", "kind": "ConfigMap", "namespace": s.ns, "name": "settings", "patchType": "merge", "patch": { "data": { "v": "new" } } })).await?;
    ensure!(code == 200, "patch: {code} {body}");
    ensure!(
        cms.get("settings")
            .await?
            .data
            .and_then(|d| d.get("v").cloned())
            .as_deref()
            == Some("new"),
        "patch did not reach the cluster"
    );

    // delete
    let (code, body) = s.hub.post(path, &json!({ "type": "delete", "kind": "ConfigMap", "namespace": s.ns, "name": "settings" })).await?;
    ensure!(code == 200, "delete: {code} {body}");
    ensure!(
        cms.get_opt("settings").await?.is_none(),
        "delete did not reach the cluster"
    );

    // A bad manifest returns the API server's own error text.
    let bad = json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "Bad_Name", "namespace": s.ns } });
    let (code, body) = s
        .hub
        .post(path, &json!({ "type": "apply", "manifest": bad }))
        .await?;
    let text = body.to_string();
    ensure!(code == 422, "bad manifest: expected 422, got {code} {text}");
    ensure!(
        text.contains("Bad_Name") && text.contains("RFC 1123"),
        "the API server's message should come through: {text}"
    );

    // Unknown account: 404.
    let (code, _) = s
        .hub
        .post(
            "/v1/accounts/nobody/operations",
            &json!({ "type": "get", "kind": "ConfigMap", "namespace": s.ns, "name": "x" }),
        )
        .await?;
    ensure!(code == 404, "unknown account: {code}");
    Ok(())
}

async fn replicas(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "replicas", "60s").await?;
    let names: Vec<String> = (0..6).map(|i| format!("rep-{i}")).collect();
    let accounts: Vec<AccountConfig> = names.iter().map(|n| account(n, &s.ns)).collect();
    let pairs: Vec<(&str, &str)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), TARGETS[i % 3]))
        .collect();
    let kcs = kubeconfigs(&env, &pairs)?;
    let cfg = config(&s, "replicas", accounts);
    let args = ["--lease-renew-interval=500ms", "--lease-duration=4s"];
    let mut r0 = start_agent(&env, &s, "replicas-0", &cfg, &kcs, &args)?;
    let r1 = start_agent(&env, &s, "replicas-1", &cfg, &kcs, &args)?;
    // Every account connected, split over both replicas.
    let split = wait::until(
        "all accounts connected over two replicas",
        Duration::from_secs(40),
        || async {
            let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for n in &names {
                let a = account_state(&s.hub, n).await?;
                if a["state"] != "Connected" {
                    return None;
                }
                by.entry(a["replica"].as_str()?.to_string())
                    .or_default()
                    .push(n.clone());
            }
            (by.len() == 2).then_some(by)
        },
    )
    .await
    .with_context(|| format!("{}\n{}", agent_log(&r0), agent_log(&r1)))?;
    eprintln!("split: {split:?}");
    let moved: Vec<String> = split.get("replicas-0").cloned().unwrap_or_default();
    ensure!(!moved.is_empty(), "replicas-0 holds nothing: {split:?}");
    // Kill replicas-0 without a goodbye: its accounts move when its lease expires.
    let killed = Instant::now();
    r0.proc.signal(Signal::SIGKILL);
    r0.proc.stop(Duration::from_secs(1));
    wait::until(
        "replicas-1 to take every account",
        Duration::from_secs(30),
        || async {
            for n in &names {
                let a = account_state(&s.hub, n).await?;
                if a["state"] != "Connected" || a["replica"] != "replicas-1" {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
    .with_context(|| agent_log(&r1))?;
    let took = killed.elapsed();
    eprintln!(
        "takeover of {} accounts after SIGKILL: {took:?} (lease 4 s)",
        moved.len()
    );
    ensure!(took < Duration::from_secs(15), "takeover took {took:?}");
    for (i, n) in names.iter().enumerate() {
        let api = configmaps(target(&env, TARGETS[i % 3])?, &s.ns).await?;
        put_cm(&api, &format!("after-{n}"), "v").await?;
        converge(&s.hub, n, &api, &s.ns, Duration::from_secs(20)).await?;
    }
    Ok(())
}

async fn relist_after_compaction(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "compact", "120s").await?;
    let cfg = config(&s, "compact", vec![account("compact-a", &s.ns)]);
    let agent = start_agent(
        &env,
        &s,
        "compact-0",
        &cfg,
        &kubeconfigs(&env, &[("compact-a", RESTARTED)])?,
        &["--lease-renew-interval=500ms"],
    )?;
    let api = configmaps(target(&env, RESTARTED)?, &s.ns).await?;
    for i in 0..20 {
        put_cm(&api, &format!("c-{i}"), "1").await?;
    }
    wait_state(&s.hub, "compact-a", "Connected", Duration::from_secs(30))
        .await
        .with_context(|| agent_log(&agent))?;
    converge(&s.hub, "compact-a", &api, &s.ns, Duration::from_secs(20)).await?;
    let relists_before = expired_relists(&agent).await;
    // Stop the target's API server, move etcd far ahead through another cluster, compact
    // etcd, and start it again: the agent's watch resumes from a compacted revision and
    // gets 410 Gone.
    let other = configmaps(target(&env, "cluster-1")?, &s.ns).await?;
    let restarted = target(&env, RESTARTED)?;
    restarted.stop();
    for i in 0..30 {
        put_cm(&other, &format!("churn-{i}"), "x").await?;
    }
    env.cp.compact_etcd().await?;
    restarted.start().await?;
    // Changes after the restart, including a deletion.
    api.delete("c-0", &DeleteParams::default()).await?;
    put_cm(&api, "c-1", "2").await?;
    put_cm(&api, "c-new", "1").await?;
    let took = converge(&s.hub, "compact-a", &api, &s.ns, Duration::from_secs(60))
        .await
        .with_context(|| agent_log(&agent))?;
    let relists_after = expired_relists(&agent).await;
    eprintln!(
        "relist after compaction converged in {took:?}; relists {relists_before} -> {relists_after}"
    );
    ensure!(
        relists_after > relists_before,
        "the agent did not relist ({relists_before} -> {relists_after})"
    );
    Ok(())
}

/// An account's ConfigMaps stay quiet while the rest of the cluster's ConfigMaps change:
/// the API server's watch window (its watch cache keeps about 75 s of a resource's
/// changes) moves past every revision the account's objects carry, so a watch from
/// the hub's list-time resume point would get 410 Gone. The agent passes the watch's
/// bookmarks on as watch progress; after a reconnect it resumes from there, with no
/// relist, and picks up what changed while it was away.
///
/// The reconnect waits for the one thing it depends on: the hub's resume point of the
/// account's ConfigMaps is newer than anything the account has seen *and* still inside
/// the window. Another kind's progress says nothing about ConfigMaps, and a ConfigMap
/// bookmark taken while the window was moving may have left it since.
async fn quiet_kind_resumes(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "quiet", "120s").await?;
    let cluster = target(&env, QUIET)?;
    let quiet = configmaps(cluster, &s.ns).await?;
    for i in 0..3 {
        put_cm(&quiet, &format!("q-{i}"), "v").await?;
    }
    // The rest of the cluster: ConfigMaps of a namespace the account does not stream.
    let busy_ns = format!("{}-busy", s.ns);
    create_namespace(cluster, &busy_ns).await?;
    let busy = configmaps(cluster, &busy_ns).await?;
    let cfg = config(&s, "quiet", vec![account("quiet-a", &s.ns)]);
    let kcs = kubeconfigs(&env, &[("quiet-a", QUIET)])?;
    let args = ["--lease-renew-interval=500ms", "--lease-duration=3s"];
    let mut agent = start_connected(&env, &s, "quiet-0", &cfg, &kcs, &args, "quiet-a").await?;
    converge(&s.hub, "quiet-a", &quiet, &s.ns, Duration::from_secs(20)).await?;
    // Read first: a bookmark newer than `synced_at` is counted after this.
    let progress_at_sync = configmap_progress(&agent).await;
    // No revision the account has seen is newer than this.
    let synced_at = quiet
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .context("a list without resourceVersion")?;

    // Let the account's last changes age out of the window's minimum (75 s), then change
    // the busy namespace until the window has moved past them.
    tokio::time::sleep(Duration::from_secs(80)).await;
    let mut writes = 0;
    while !watch_expired(&quiet, &synced_at).await? {
        ensure!(
            writes < 2000,
            "after {writes} changes the API server still serves watches from {synced_at}"
        );
        for _ in 0..50 {
            put_cm(&busy, &format!("b-{}", writes % 400), &writes.to_string()).await?;
            writes += 1;
        }
    }
    eprintln!(
        "quiet-kind: the watch window moved past {synced_at} after {writes} changes elsewhere"
    );

    // The cluster keeps changing slowly (as clusters do) while the agent's ConfigMap
    // watch sends its next bookmark, about once a minute, until the hub's resume point
    // for the account's ConfigMaps is past `synced_at`, still inside the window, and the
    // agent counts a ConfigMap bookmark since the sync (nothing else moves that point:
    // the account's ConfigMaps do not change).
    let waited = Instant::now();
    let mut beat = 0;
    let resume_from = loop {
        let point = configmap_resume_point(&s.hub, "quiet-a").await?;
        let progress = configmap_progress(&agent).await;
        if let Some(rv) = point.as_deref().filter(|rv| newer(rv, &synced_at))
            && progress > progress_at_sync
            && !watch_expired(&quiet, rv).await?
        {
            break rv.to_owned();
        }
        ensure!(
            waited.elapsed() < Duration::from_secs(100),
            "within {:?} the hub's ConfigMap resume point ({point:?}) did not get past \
             {synced_at} and stay inside the window ({} ConfigMap bookmarks passed on since \
             the sync): {}",
            waited.elapsed(),
            progress - progress_at_sync,
            agent_log(&agent)
        );
        put_cm(&busy, "heartbeat", &beat.to_string()).await?;
        beat += 1;
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    eprintln!(
        "quiet-kind: the hub's ConfigMap resume point moved to {resume_from} {:?} after the window moved",
        waited.elapsed()
    );
    ensure!(
        expired_relists(&agent).await == 0,
        "the streaming agent relisted while its kind was quiet"
    );

    // Reconnect: the agent dies, the account changes while it is away, a new one starts.
    agent.proc.signal(Signal::SIGKILL);
    agent.proc.stop(Duration::from_secs(1));
    wait_state(&s.hub, "quiet-a", "Disconnected", Duration::from_secs(10)).await?;
    quiet.delete("q-0", &DeleteParams::default()).await?;
    put_cm(&quiet, "q-1", "changed").await?;
    put_cm(&quiet, "q-new", "v").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let agent = start_connected(&env, &s, "quiet-0", &cfg, &kcs, &args, "quiet-a").await?;
    let took = converge(&s.hub, "quiet-a", &quiet, &s.ns, Duration::from_secs(20))
        .await
        .with_context(|| agent_log(&agent))?;
    // Every kind of the account has started (resumed or relisted), not only ConfigMaps.
    let kinds = cfg.accounts[0].scope.kinds.len() as u64;
    let (resumes, relisted) = wait::until(
        "every kind of quiet-a to start",
        Duration::from_secs(20),
        || async {
            let resumes = metric(&agent, "scale_agent_resumes_total").await;
            let relisted = relists(&agent).await;
            (resumes + relisted >= kinds).then_some((resumes, relisted))
        },
    )
    .await
    .with_context(|| agent_log(&agent))?;
    eprintln!(
        "quiet-kind: back in {took:?} after the reconnect ({resumes} watches resumed, {relisted} relists)"
    );
    ensure!(
        relisted == 0,
        "the reconnected agent relisted {relisted} kinds: {}",
        agent_log(&agent)
    );
    ensure!(
        resumes == kinds,
        "the reconnected agent resumed {resumes} of {kinds} watches"
    );
    Ok(())
}

/// Where the hub resumes `account`'s ConfigMap watch after a reconnect, as the
/// account's answer shows it; `None` while it has no point to resume from.
async fn configmap_resume_point(hub: &HubProcess, account: &str) -> anyhow::Result<Option<String>> {
    let (code, answer) = hub.get(&format!("/v1/accounts/{account}")).await?;
    ensure!(code == 200, "account {account}: {code} {answer}");
    let points = answer["resumePoints"]
        .as_array()
        .with_context(|| format!("account {account} without resumePoints: {answer}"))?;
    Ok(points
        .iter()
        .find(|p| p["group"] == "" && p["kind"] == "ConfigMap")
        .and_then(|p| p["resourceVersion"].as_str())
        .filter(|rv| !rv.is_empty())
        .map(str::to_owned))
}

/// Whether resourceVersion `a` is newer than `b` (the test's API servers number them).
fn newer(a: &str, b: &str) -> bool {
    matches!((a.parse::<u64>(), b.parse::<u64>()), (Ok(a), Ok(b)) if a > b)
}

/// Whether a watch of `api` from `version` is refused with 410 Gone.
async fn watch_expired(api: &Api<ConfigMap>, version: &str) -> anyhow::Result<bool> {
    let params = WatchParams::default().timeout(1);
    let events = match api.watch(&params, version).await {
        Err(kube::Error::Api(s)) if s.code == 410 => return Ok(true),
        other => other?,
    };
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        if let WatchEvent::Error(s) = event? {
            return Ok(s.code == 410);
        }
    }
    Ok(false)
}

async fn large_objects(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "large", "60s").await?;
    let api = configmaps(target(&env, "cluster-2")?, &s.ns).await?;
    // ConfigMaps hold at most 1 MiB of data; a few of them at that size, and small ones
    // around them, cross any batch boundary and gRPC's 4 MiB default limit together.
    let big = "y".repeat(1000 * 1024);
    for i in 0..5 {
        put_cm(&api, &format!("big-{i}"), &big).await?;
        put_cm(&api, &format!("small-{i}"), "s").await?;
    }
    let agent = stream_one(&env, &s, "large", "large-a", "cluster-2").await?;
    converge(&s.hub, "large-a", &api, &s.ns, Duration::from_secs(30))
        .await
        .with_context(|| agent_log(&agent))?;
    // And as changes, not only in the initial list.
    put_cm(&api, "big-0", &"z".repeat(1000 * 1024)).await?;
    converge(&s.hub, "large-a", &api, &s.ns, Duration::from_secs(30))
        .await
        .with_context(|| agent_log(&agent))?;
    let hub = hub_snapshot(&s.hub, "large-a", &s.ns)
        .await
        .unwrap_or_default();
    ensure!(
        hub.get("big-0")
            .is_some_and(|v| v.1.len() == 1000 * 1024 && v.1.starts_with('z')),
        "big-0 not updated at the hub"
    );
    Ok(())
}

/// Full relists of every cause (the first list of a kind included).
async fn relists(agent: &AgentProcess) -> u64 {
    scale_agent_e2e::metrics::metric_sum(&agent.admin, "scale_agent_relists_total").await
}

/// ConfigMap bookmarks the agent passed on to the hub as watch progress.
async fn configmap_progress(agent: &AgentProcess) -> u64 {
    metric(
        agent,
        "scale_agent_watch_progress_total{kind=\"ConfigMap\"}",
    )
    .await
}

/// Relists because a watch's resourceVersion expired (410 Gone).
async fn expired_relists(agent: &AgentProcess) -> u64 {
    metric(agent, "scale_agent_relists_total{cause=\"expired\"}").await
}

async fn metric(agent: &AgentProcess, name: &str) -> u64 {
    scale_agent_e2e::metrics::metric(&agent.admin, name).await
}
