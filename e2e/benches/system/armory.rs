//! `armory_workload`, after Armory's published agent test: one agent, 100 accounts, 10
//! kinds, one deploy and one delete per account per minute, for 10 minutes after the
//! initial sync. Every account is on the management cluster (the only one where
//! kube-controller-manager, the scheduler and kwok turn Deployments into running pods),
//! each in namespaces of its own. A Deployment deployed is a Deployment created with one
//! replica (so a ReplicaSet and a Pod follow); a delete removes the account's oldest
//! Deployment (and, by garbage collection, its ReplicaSet and Pod).
//!
//! Baseline, in the same run and under the same workload at the same time: a process with
//! a kube-rs reflector per kind and namespace holding the same objects.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use scale_agent_e2e::bench::goal::Goal;
use scale_agent_e2e::bench::procfs;
use scale_agent_e2e::bench::report::Figure;
use scale_agent_e2e::bench::sampler::Sampler;
use scale_agent_e2e::bench::seed;
use scale_agent_e2e::controlplane::KWOK_ANNOTATION;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::task::JoinSet;

use crate::baseline::{Baseline, Spec, SpecAccount};
use crate::stack::{Stack, account};
use crate::{Ctx, mib, secs};

/// The ten kinds each account watches.
pub const KINDS: [&str; 10] = [
    "Deployment.apps",
    "ReplicaSet.apps",
    "Pod",
    "Service",
    "ConfigMap",
    "ServiceAccount",
    "StatefulSet.apps",
    "DaemonSet.apps",
    "Job.batch",
    "Ingress.networking.k8s.io",
];

/// Pods each extra kwok node takes.
const PODS_PER_NODE: usize = 250;

/// The figures this scenario makes, with their units.
pub fn names() -> Vec<(String, &'static str)> {
    vec![
        ("armory_workload.agent_peak_rss".into(), "MiB"),
        ("armory_workload.agent_steady_rss".into(), "MiB"),
        ("armory_workload.agent_cpu".into(), "CPU s/min"),
        ("armory_workload.agent_sync_cpu".into(), "CPU s"),
        ("armory_workload.hub_rss".into(), "MiB"),
        ("armory_workload.operations".into(), "operations/min"),
    ]
}

fn object<T: DeserializeOwned>(v: serde_json::Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(v)?)
}

fn deployment(name: &str) -> anyhow::Result<Deployment> {
    object(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "labels": { "app": name, "app.kubernetes.io/managed-by": "spinnaker" } },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "containers": [{ "name": "app", "image": "registry.k8s.io/pause:3.10" }],
                    "tolerations": [{ "key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule" }],
                }
            }
        }
    }))
}

fn service(name: &str) -> anyhow::Result<Service> {
    // Headless: the test control plane's service range has only 254 addresses.
    object(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name },
        "spec": { "clusterIP": "None", "selector": { "app": name }, "ports": [{ "port": 80 }] }
    }))
}

async fn create<T>(api: &Api<T>, obj: &T) -> anyhow::Result<()>
where
    T: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Adds kwok nodes so `pods` pods fit.
async fn nodes(client: &kube::Client, pods: usize) -> anyhow::Result<usize> {
    let api: Api<Node> = Api::all(client.clone());
    let n = pods.div_ceil(PODS_PER_NODE) + 1;
    for i in 0..n {
        let name = format!("bench-node-{i}");
        let node: Node = object(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": { KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0" },
                "labels": { "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "type": "kwok" },
            },
            "status": {
                "allocatable": { "cpu": "64", "memory": "512Gi", "pods": PODS_PER_NODE.to_string() },
                "capacity": { "cpu": "64", "memory": "512Gi", "pods": PODS_PER_NODE.to_string() },
            },
        }))?;
        create(&api, &node).await?;
    }
    Ok(n)
}

/// Runs `jobs` with `workers` at a time.
async fn parallel<F>(jobs: Vec<F>, workers: usize) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut set = JoinSet::new();
    for job in jobs {
        if set.len() >= workers
            && let Some(r) = set.join_next().await
        {
            r??;
        }
        set.spawn(job);
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

fn namespace(a: usize, k: usize) -> String {
    format!("armory-{a}-{k}")
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let p = &ctx.p;
    let env = &ctx.env;
    let client = env.cp.client().await?;
    let seeded_pods = p.armory_accounts * p.armory_deployments;
    let node_count = nodes(&client, seeded_pods * 2).await?;
    tracing::info!(accounts = p.armory_accounts, "armory_workload: seeding");
    let mut jobs = Vec::new();
    for a in 0..p.armory_accounts {
        for k in 0..p.armory_namespaces.max(1) {
            seed::namespace(&client, &namespace(a, k)).await?;
        }
        let ns = namespace(a, 0);
        for d in 0..p.armory_deployments {
            let client = client.clone();
            let ns = ns.clone();
            let bytes = p.object_bytes;
            jobs.push(async move {
                let name = format!("app-{d}");
                create(
                    &Api::<Deployment>::namespaced(client.clone(), &ns),
                    &deployment(&name)?,
                )
                .await?;
                create(
                    &Api::<Service>::namespaced(client.clone(), &ns),
                    &service(&name)?,
                )
                .await?;
                let cm = seed::configmap(&format!("{name}-config"), bytes)?;
                create(&Api::<ConfigMap>::namespaced(client, &ns), &cm).await?;
                Ok(())
            });
        }
    }
    parallel(jobs, 8).await?;
    let pods: Api<Pod> = Api::all(client.clone());
    scale_agent_e2e::wait::until("the seeded pods to run", Duration::from_secs(600), || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels("app")).await.ok()?;
            let running = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            (running >= seeded_pods).then_some(())
        }
    })
    .await?;

    let kubeconfig = std::fs::read_to_string(&env.cp.management.kubeconfig)?;
    let accounts: Vec<_> = (0..p.armory_accounts)
        .map(|a| {
            account(
                &format!("armory-{a}"),
                &kubeconfig,
                (0..p.armory_namespaces.max(1))
                    .map(|k| namespace(a, k))
                    .collect(),
                &KINDS,
            )
        })
        .collect();
    let spec = Spec {
        accounts: (0..p.armory_accounts)
            .map(|a| SpecAccount {
                kubeconfig: env.cp.management.kubeconfig.clone(),
                namespaces: (0..p.armory_namespaces.max(1))
                    .map(|k| namespace(a, k))
                    .collect(),
                kinds: KINDS.iter().map(|k| k.to_string()).collect(),
            })
            .collect(),
    };
    let stack = Stack::start(env, "armory").await?;
    let hub_pid = stack.hub.pid().unwrap_or(0);
    let every = Duration::from_millis(500);
    let hub_sampler = Sampler::start(hub_pid, every);
    let started = Instant::now();
    let agent = stack.agent(env, "armory", &accounts, &[])?;
    let agent_sampler = Sampler::start(agent.proc.pid(), every);
    let mut base = Baseline::start(&stack.dir, "reflector-armory", &spec)?;
    let base_sampler = Sampler::start(base.proc.pid(), every);
    scale_agent_e2e::wait::until(
        "the agent to be ready (every account synced)",
        Duration::from_secs(900),
        || async { agent.is_ready().await.then_some(()) },
    )
    .await
    .with_context(|| scale_agent_e2e::process::tail(agent.proc.log(), 20))?;
    let agent_synced = Instant::now();
    // CPU from each process's start until it synced: its CPU time read at that moment.
    let agent_sync_cpu = agent_sampler.cpu_so_far();
    base.wait_synced(Duration::from_secs(900)).await?;
    let base_sync_cpu = base_sampler.cpu_so_far();
    tracing::info!(sync = ?agent_synced - started, "armory_workload: workload starts");

    // The workload: one create and one delete per account per minute, spread evenly.
    let mut owned: Vec<VecDeque<String>> = (0..p.armory_accounts)
        .map(|_| {
            (0..p.armory_deployments)
                .map(|d| format!("app-{d}"))
                .collect()
        })
        .collect();
    let ops_per_minute = p.armory_accounts * 2;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(60.0 / ops_per_minute as f64));
    let work_start = Instant::now();
    let run_for = Duration::from_secs(60 * p.armory_minutes);
    // The windows the figures are computed over, each with a sample at both edges: steady
    // CPU after the first minute (or half), memory over the second half.
    let samplers = [&agent_sampler, &base_sampler, &hub_sampler];
    let edge = || {
        let at = Instant::now();
        for s in samplers {
            s.sample_now();
        }
        at
    };
    let (steady_after, half) = (Duration::from_secs(60).min(run_for / 2), run_for / 2);
    let (mut steady_from, mut second_half) = (None, None);
    let mut ops = JoinSet::new();
    let (mut op, mut seq) = (0usize, 0usize);
    while work_start.elapsed() < run_for {
        tick.tick().await;
        if steady_from.is_none() && work_start.elapsed() >= steady_after {
            steady_from = Some(edge());
        }
        if second_half.is_none() && work_start.elapsed() >= half {
            second_half = Some(edge());
        }
        let a = (op / 2) % p.armory_accounts;
        let api: Api<Deployment> = Api::namespaced(client.clone(), &namespace(a, 0));
        if op % 2 == 0 {
            seq += 1;
            let name = format!("wl-{seq}");
            owned[a].push_back(name.clone());
            ops.spawn(async move { create(&api, &deployment(&name)?).await });
        } else if let Some(name) = owned[a].pop_front() {
            ops.spawn(async move {
                api.delete(&name, &DeleteParams::background()).await?;
                Ok(())
            });
        }
        op += 1;
        while let Some(r) = ops.try_join_next() {
            r??;
        }
    }
    while let Some(r) = ops.join_next().await {
        r??;
    }
    let work_end = edge();
    let minutes = (work_end - work_start).as_secs_f64() / 60.0;
    let steady_from = steady_from.unwrap_or(work_end);
    let second_half = second_half.unwrap_or(work_end);
    let cpu_per_min = |s: &Sampler| {
        s.cpu_between(steady_from, work_end)
            .map(|(cpu, wall)| cpu / wall * 60.0)
    };
    let agent_cpu = cpu_per_min(&agent_sampler);
    let base_cpu = cpu_per_min(&base_sampler);
    let median = |s: &Sampler| {
        s.median_rss_kib(second_half, work_end)
            .map(|kib| kib / 1024.0)
    };
    let (agent_steady, base_steady, hub_steady) = (
        median(&agent_sampler),
        median(&base_sampler),
        median(&hub_sampler),
    );
    let peak = |s: &Sampler| s.peak_kib().map(mib);
    let (agent_peak, base_peak, hub_peak) = (
        peak(&agent_sampler),
        peak(&base_sampler),
        peak(&hub_sampler),
    );
    let hub_objects: usize = stack.counts().await.map_or(0, |c| c.values().sum());
    let fds =
        procfs::open_fds(agent.proc.pid()).map_or_else(|| "unknown".into(), |n| n.to_string());
    drop(base);
    drop(agent);
    drop(stack);

    let mut params = ctx.stream_params();
    params.insert("accounts".into(), json!(p.armory_accounts));
    params.insert("kinds".into(), json!(KINDS.join(", ")));
    params.insert("namespaces_per_account".into(), json!(p.armory_namespaces));
    params.insert(
        "deployments_per_account".into(),
        json!(p.armory_deployments),
    );
    params.insert("workload_minutes".into(), json!(p.armory_minutes));
    params.insert("kwok_nodes".into(), json!(node_count + 2));
    params.insert(
        "clusters".into(),
        json!("the management cluster, shared by every account (each its own namespaces)"),
    );
    params.insert("objects_at_hub_after".into(), json!(hub_objects));
    let base_what = "kube-rs reflector per kind holding the same objects, same workload, same time";
    let hub_peak = hub_peak.map_or_else(
        |why| format!("not measured: {why}"),
        |p| format!("{p:.0} MiB"),
    );
    Ok(vec![
        Figure::measured("armory_workload", "armory_workload.agent_peak_rss", agent_peak, "MiB")
            .baseline_measured(base_peak, base_what)
            .goal(Goal::AtMost { limit: 256.0 })
            .params(&params)
            .note("VmHWM over the initial sync and the workload"),
        Figure::measured("armory_workload", "armory_workload.agent_steady_rss", agent_steady.clone(), "MiB")
            .baseline_measured(base_steady.clone(), base_what)
            .params(&params)
            .note("median VmRSS over the second half of the workload, sampled at both its edges"),
        Figure::measured("armory_workload", "armory_workload.agent_cpu", agent_cpu, "CPU s/min")
            .baseline_measured(base_cpu, base_what)
            .goal(Goal::RatioAtMost { ratio: 1.0 })
            .params(&params)
            .note(format!("CPU seconds (user + system) per minute of the workload after its first minute, sampled at both edges of that window; 60 CPU s/min is one core; {fds} open file descriptors at the end")),
        Figure::measured("armory_workload", "armory_workload.agent_sync_cpu", agent_sync_cpu, "CPU s")
            .baseline_measured(base_sync_cpu, base_what)
            .params(&params)
            .note(format!("CPU seconds from the process's start until it was ready ({:.1} s for the agent), read from /proc at that moment", secs(agent_synced - started))),
        Figure::measured("armory_workload", "armory_workload.hub_rss", hub_steady, "MiB")
            .baseline_measured(base_steady, "the reflector baseline, which holds the same objects")
            .params(&params)
            .note(format!("median VmRSS of the hub over the second half of the workload; peak {hub_peak}")),
        Figure::new("armory_workload", "armory_workload.operations", (op as f64) / minutes, "operations/min")
            .reference(ops_per_minute as f64, "asked: one deploy and one delete per account per minute")
            .params(&params),
    ])
}
