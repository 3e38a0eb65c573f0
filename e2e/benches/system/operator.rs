//! `operator_convergence`: `--shards` AgentShards with `--accounts-per-shard` accounts
//! each (`--conflict-percent` of the accounts claiming a name another shard claims too)
//! created at once → every status final (current generation, each account served or
//! Conflict as the oldest-claim rule says; no agent runs, so served accounts show
//! NoReplica). Then one shard edited (an account added) →
//! its status final again, and the writes the edit caused.
//!
//! The operator runs against an API server of its own with no controllers (the agent
//! pods need not run), through a proxy that records each of its requests: writes are
//! counted as the operator made them and attributed to the shard they are about. Every
//! account has its own kubeconfig Secret, as in production.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use scale_agent_crds::AgentShard;
use scale_agent_e2e::bench::convergence::{Key, Tracker, shard_of};
use scale_agent_e2e::bench::goal::Goal;
use scale_agent_e2e::bench::proxy::{ApiProxy, Recorded};
use scale_agent_e2e::bench::report::Figure;
use scale_agent_e2e::bench::sampler::Sampler;
use scale_agent_e2e::bench::seed;
use scale_agent_e2e::operator::{NAMESPACE, Operator, OperatorOptions};
use serde_json::json;
use tokio::sync::mpsc;

use crate::baseline::{Baseline, Spec, SpecAccount};
use crate::{Ctx, OPERATOR_CLUSTER, mib, secs};

/// Namespaces the shards are spread over.
const NAMESPACES: usize = 10;
/// How long without a write by the operator counts as settled.
const QUIET: Duration = Duration::from_secs(5);
/// How long the shards may take to become final.
const TIMEOUT: Duration = Duration::from_secs(900);

/// The figures this scenario makes, with their units.
pub fn names() -> Vec<(String, &'static str)> {
    vec![
        ("operator_convergence".into(), "s"),
        ("operator_convergence.writes_per_shard".into(), "writes"),
        ("operator_convergence.peak_rss".into(), "MiB"),
        ("operator_convergence.edit_settle".into(), "s"),
        ("operator_convergence.edit_writes".into(), "writes"),
        (
            "operator_convergence.edit_writes_other_shards".into(),
            "writes",
        ),
    ]
}

fn namespace(s: usize) -> String {
    format!("ops-{}", s % NAMESPACES)
}

fn shard_name(s: usize) -> String {
    format!("shard-{s}")
}

/// The shards whose last account claims the first account name of the shard before
/// them: `conflicts` of them, spread evenly.
fn conflicting(shards: usize, conflicts: usize) -> BTreeSet<usize> {
    if conflicts == 0 || shards < 2 {
        return BTreeSet::new();
    }
    let step = (shards / conflicts).max(1);
    (0..conflicts.min(shards - 1))
        .map(|i| i * step + 1)
        .collect()
}

fn accounts_of(s: usize, per_shard: usize, conflicts: &BTreeSet<usize>) -> Vec<serde_json::Value> {
    (0..per_shard)
        .map(|k| {
            let name = if k + 1 == per_shard && conflicts.contains(&s) {
                format!("acc-{}-0", s - 1)
            } else {
                format!("acc-{s}-{k}")
            };
            json!({ "name": name, "kubeconfigSecretRef": { "name": format!("kc-{s}-{k}") } })
        })
        .collect()
}

fn writes(requests: &[Recorded]) -> Vec<&Recorded> {
    requests.iter().filter(|r| r.is_write()).collect()
}

/// Waits until the proxy has seen no write about a shard for [`QUIET`] (at most a
/// minute; the leader Lease is renewed all along); returns when the last such write
/// arrived.
async fn quiet(proxy: &ApiProxy, since: Instant) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = proxy
            .requests_since(since)
            .iter()
            .filter(|r| r.is_write() && shard_of(r).is_some())
            .map(|r| r.at)
            .max()
            .unwrap_or(since);
        if last.elapsed() >= QUIET || Instant::now() > deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let p = &ctx.p;
    let env = &ctx.env;
    let cluster = env
        .cp
        .target(OPERATOR_CLUSTER)
        .context("the operator's cluster")?;
    let crd = scale_agent_e2e::crd::checked_in();
    let kubectl = |args: &[&str]| {
        scale_agent_e2e::kubectl::run(&env.cp.bins.kubectl, &cluster.kubeconfig, args, None)
    };
    kubectl(&["apply", "--server-side", "-f", &crd.display().to_string()])?;
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        &format!("crd/{}", scale_agent_e2e::crd::NAME),
    ])?;
    let client = cluster.client().await?;
    seed::namespace(&client, NAMESPACE).await?;
    for n in 0..NAMESPACES {
        seed::namespace(&client, &format!("ops-{n}")).await?;
    }

    // A kubeconfig Secret per account, created 16 at a time: also what a bare client's
    // writes cost on this API server.
    let kubeconfig = std::fs::read_to_string(&cluster.kubeconfig)?;
    let secrets_started = Instant::now();
    let jobs: Vec<(String, String)> = (0..p.shards)
        .flat_map(|s| (0..p.accounts_per_shard).map(move |k| (namespace(s), format!("kc-{s}-{k}"))))
        .collect();
    let secret_count = jobs.len();
    let jobs = Arc::new(jobs);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (client, jobs, next, kubeconfig) = (
            client.clone(),
            Arc::clone(&jobs),
            Arc::clone(&next),
            kubeconfig.clone(),
        );
        workers.spawn(async move {
            while let Some((ns, name)) =
                jobs.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
            {
                let secret: Secret = serde_json::from_value(json!({
                    "metadata": { "name": name },
                    "stringData": { "kubeconfig": kubeconfig },
                }))?;
                match Api::<Secret>::namespaced(client.clone(), ns)
                    .create(&PostParams::default(), &secret)
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        return Err(
                            anyhow::Error::from(e).context(format!("creating Secret {ns}/{name}"))
                        );
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = workers.join_next().await {
        r??;
    }
    let secrets_took = secrets_started.elapsed();
    let write_seconds = secs(secrets_took) / secret_count.max(1) as f64;

    let dir = env.cp.run_dir.join("bench").join("operator");
    std::fs::create_dir_all(&dir)?;
    let proxy = ApiProxy::start(&cluster.kubeconfig).await?;
    let op_kubeconfig = dir.join("operator.kubeconfig");
    proxy.write_kubeconfig(&op_kubeconfig)?;
    let mut op = Operator::start(
        &env.cp,
        OperatorOptions {
            kubeconfig: Some(op_kubeconfig),
            run_dir: Some(dir.clone()),
            ..OperatorOptions::default()
        },
    )
    .await?;
    let op_pid = op.process().pid();
    let sampler = Sampler::start(op_pid, Duration::from_millis(250));

    // Watch the statuses from before the first shard exists.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, AgentShard)>();
    let shards_api: Api<AgentShard> = Api::all(client.clone());
    // In a JoinSet, so that it stops however this function returns.
    let mut watch = tokio::task::JoinSet::new();
    watch.spawn(async move {
        let stream = watcher::watcher(shards_api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        while let Some(e) = stream.next().await {
            if let Ok(Event::Apply(s) | Event::InitApply(s)) = e
                && tx.send((Instant::now(), s)).is_err()
            {
                return;
            }
        }
    });

    let total_accounts = p.shards * p.accounts_per_shard;
    let conflicts = conflicting(
        p.shards,
        (total_accounts as f64 * p.conflict_percent / 100.0).round() as usize,
    );
    let mut tracker = Tracker::new(p.shards);
    tracing::info!(
        shards = p.shards,
        accounts = total_accounts,
        conflicts = conflicts.len(),
        "operator_convergence: creating the shards"
    );
    let started = Instant::now();
    let creating = {
        let (client, per_shard, conflicts, shards) = (
            client.clone(),
            p.accounts_per_shard,
            conflicts.clone(),
            p.shards,
        );
        tokio::spawn(async move {
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let conflicts = Arc::new(conflicts);
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..16 {
                let (client, next, conflicts) =
                    (client.clone(), Arc::clone(&next), Arc::clone(&conflicts));
                workers.spawn(async move {
                    loop {
                        let s = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if s >= shards {
                            return anyhow::Ok(());
                        }
                        let shard: AgentShard = serde_json::from_value(json!({
                            "apiVersion": "scaleagent.dev/v1alpha1",
                            "kind": "AgentShard",
                            "metadata": { "name": shard_name(s), "namespace": namespace(s) },
                            "spec": { "replicas": 1, "accounts": accounts_of(s, per_shard, &conflicts) },
                        }))?;
                        Api::<AgentShard>::namespaced(client.clone(), &namespace(s))
                            .create(&PostParams::default(), &shard)
                            .await
                            .with_context(|| format!("creating AgentShard {}", shard_name(s)))?;
                    }
                });
            }
            while let Some(r) = workers.join_next().await {
                r??;
            }
            anyhow::Ok(Instant::now())
        })
    };
    let deadline = started + TIMEOUT;
    let mut converged = None;
    while converged.is_none() && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some((at, shard))) => {
                tracker.apply(shard);
                if tracker.all_final() {
                    converged = Some(at);
                }
            }
            Ok(None) => anyhow::bail!("the AgentShard watch ended"),
            Err(_) => {}
        }
    }
    let created = creating.await??;
    let convergence = match converged {
        Some(at) => at - started,
        None => {
            watch.abort_all();
            anyhow::bail!(
                "{} of {} shards seen with a current status, or an account name served by more or fewer than one shard, after {} s; operator log: {}",
                tracker.current(),
                p.shards,
                TIMEOUT.as_secs(),
                op.tail(10)
            );
        }
    };
    let last_write = quiet(&proxy, started).await;
    let all = proxy.requests();
    let (conv_writes, other_writes): (Vec<&Recorded>, Vec<&Recorded>) = writes(&all)
        .into_iter()
        .filter(|r| r.at <= last_write)
        .partition(|r| shard_of(r).is_some());
    let mut by_resource: BTreeMap<String, usize> = BTreeMap::new();
    let mut distinct: BTreeSet<(String, String, String)> = BTreeSet::new();
    for r in &conv_writes {
        *by_resource
            .entry(format!("{} {}", r.method, r.resource()))
            .or_insert(0) += 1;
        if let Some(path) = &r.path
            && !path.name.is_empty()
            && path.resource != "events"
        {
            distinct.insert((r.resource(), path.namespace.clone(), path.name.clone()));
        }
    }
    let per_shard = conv_writes.len() as f64 / p.shards as f64;
    let distinct_per_shard = distinct
        .iter()
        .filter(|(res, _, _)| !res.starts_with("validatingwebhook") && !res.starts_with("leases"))
        .count() as f64
        / p.shards as f64;
    sampler.sample_now();
    let peak = sampler.peak_kib();
    let conv_reads = all
        .iter()
        .filter(|r| !r.is_write() && r.at <= last_write)
        .count();

    // The edit: one shard that takes no part in a conflict gets one more account.
    let edited = (0..p.shards)
        .map(|i| (p.shards / 2 + i) % p.shards)
        .find(|s| !conflicts.contains(s) && !conflicts.contains(&(s + 1)))
        .context("every shard takes part in a conflict: nothing to edit")?;
    let key = (namespace(edited), shard_name(edited));
    let mut accounts = accounts_of(edited, p.accounts_per_shard, &conflicts);
    accounts.push(json!({ "name": format!("acc-{edited}-new"), "kubeconfigSecretRef": { "name": format!("kc-{edited}-0") } }));
    let api: Api<AgentShard> = Api::namespaced(client.clone(), &key.0);
    let edit_started = Instant::now();
    let patched = api
        .patch(
            &key.1,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "accounts": accounts } })),
        )
        .await?;
    let patch_rtt = edit_started.elapsed();
    let generation = patched.metadata.generation;
    let new_name = format!("acc-{edited}-new");
    let mut settled = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while settled.is_none() && Instant::now() < deadline {
        if let Ok(Some((at, shard))) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await
        {
            let done = shard.metadata.name.as_deref() == Some(key.1.as_str())
                && shard.metadata.namespace.as_deref() == Some(key.0.as_str())
                && shard.metadata.generation == generation
                && shard.status.as_ref().is_some_and(|st| {
                    st.observed_generation == generation
                        && st
                            .accounts
                            .iter()
                            .any(|a| a.name == new_name && a.state.served())
                });
            tracker.apply(shard);
            if done {
                settled = Some(at);
            }
        }
    }
    watch.abort_all();
    let settled = settled
        .context("the edited shard's status did not show the new account served within 120 s")?;
    let edit_last = quiet(&proxy, edit_started).await;
    let edit_requests = proxy.requests_since(edit_started);
    let edit_writes: Vec<&Recorded> = writes(&edit_requests)
        .into_iter()
        .filter(|r| r.at <= edit_last)
        .collect();
    let known: BTreeSet<Key> = tracker.shards().map(|(k, _)| k.clone()).collect();
    let (mut own, mut others, mut unattributed) = (0usize, 0usize, 0usize);
    let mut other_list = BTreeSet::new();
    for r in &edit_writes {
        match shard_of(r).filter(|k| known.contains(k)) {
            Some(k) if k == key => own += 1,
            Some(k) => {
                others += 1;
                other_list.insert(format!("{}/{}", k.0, k.1));
            }
            None => unattributed += 1,
        }
    }
    let edit_objects: BTreeSet<String> = edit_writes
        .iter()
        .filter(|r| shard_of(r).as_ref() == Some(&key))
        .filter(|r| r.path.as_ref().is_some_and(|p| p.resource != "events"))
        .map(|r| r.resource())
        .collect();
    let all_still_final = tracker.all_final();
    drop(sampler);
    drop(op);

    // Memory baseline: a reflector holding the same AgentShards.
    let spec = Spec {
        accounts: vec![SpecAccount {
            kubeconfig: cluster.kubeconfig.clone(),
            namespaces: vec![],
            kinds: vec!["AgentShard.scaleagent.dev".into()],
        }],
    };
    let mut base = Baseline::start(&dir, "reflector-agentshards", &spec)?;
    let base_sampler = Sampler::start(base.proc.pid(), Duration::from_millis(250));
    base.wait_synced(Duration::from_secs(300)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    base_sampler.sample_now();
    let base_peak = base_sampler.peak_kib();
    drop(base);

    let mut params = BTreeMap::new();
    params.insert("shards".to_string(), json!(p.shards));
    params.insert("accounts".to_string(), json!(total_accounts));
    params.insert("conflicting_accounts".to_string(), json!(conflicts.len()));
    params.insert("namespaces".to_string(), json!(NAMESPACES));
    params.insert("kubeconfig_secrets".to_string(), json!(secret_count));
    params.insert(
        "cluster".to_string(),
        json!("an API server of its own (same etcd), no controllers: agent pods do not run"),
    );
    params.insert("webhook_mode".to_string(), json!("warn"));
    let breakdown: Vec<String> = by_resource
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    Ok(vec![
        Figure::new("operator_convergence", "operator_convergence", secs(convergence), "s")
            .baseline(
                write_seconds * conv_writes.len() as f64,
                "the same number of writes by a bare client, at the rate it created the kubeconfig Secrets (16 at a time)",
            )
            .goal(Goal::AtMost { limit: 20.0 })
            .params(&params)
            .note(format!(
                "from the first create until every status was final (current generation, every account served or Conflict, every name served by exactly one shard), seen by a watch; creating the shards took {:.1} s; {} reads and {} writes by the operator until {:.1} s without a write",
                secs(created - started),
                conv_reads,
                conv_writes.len(),
                QUIET.as_secs_f64()
            )),
        Figure::new("operator_convergence", "operator_convergence.writes_per_shard", per_shard, "writes")
            .baseline(distinct_per_shard, "distinct objects written per shard (each written once)")
            .params(&params)
            .note(format!(
                "writes about shards by resource: {}; besides, {} writes about no shard (leader Lease, webhook configuration)",
                breakdown.join(", "),
                other_writes.len()
            )),
        Figure::measured("operator_convergence", "operator_convergence.peak_rss", peak.map(mib), "MiB")
            .baseline_measured(base_peak.map(mib), "kube-rs reflector holding the same AgentShards")
            .goal(Goal::RatioAtMost { ratio: 1.3 })
            .params(&params)
            .note("VmHWM of the operator over the convergence and the edit"),
        Figure::new("operator_convergence", "operator_convergence.edit_settle", secs(settled - edit_started), "s")
            .baseline(secs(patch_rtt), "the edit's own API round trip")
            .goal(Goal::AtMost { limit: 0.2 })
            .params(&params)
            .note(format!(
                "one account added to {}/{}: from the patch until its status showed the new generation with the account served; every shard still final afterwards: {all_still_final}",
                key.0, key.1
            )),
        Figure::new("operator_convergence", "operator_convergence.edit_writes", (own + others + unattributed) as f64, "writes")
            .baseline(edit_objects.len() as f64, "distinct objects of the edited shard written")
            .params(&params)
            .note(format!(
                "{own} about the edited shard, {others} about other shards, {unattributed} about no shard, until {:.0} s without a write",
                QUIET.as_secs_f64()
            )),
        Figure::new("operator_convergence", "operator_convergence.edit_writes_other_shards", others as f64, "writes")
            .goal(Goal::AtMost { limit: 0.0 })
            .params(&params)
            .note(if other_list.is_empty() {
                "no other shard's objects or status written".to_string()
            } else {
                format!("written: {}", other_list.into_iter().take(10).collect::<Vec<_>>().join(", "))
            }),
    ])
}
