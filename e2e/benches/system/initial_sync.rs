//! `initial_sync`: an agent started cold (new process, new hub) with every account
//! already full of objects → every object in the hub's cache. Baseline: bare paginated
//! LISTs of the same objects, namespace by namespace, by one client per cluster (the
//! least any sync can cost), run before and after the agent; the faster one counts.
//!
//! Also measures the hub's resident memory per cached object (`hub_ingest`), from the
//! hub that now holds every object: resident set after the sync minus before it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use scale_agent_e2e::bench::goal::Goal;
use scale_agent_e2e::bench::layout::{seeded, sync_namespaces};
use scale_agent_e2e::bench::procfs;
use scale_agent_e2e::bench::report::Figure;
use scale_agent_e2e::bench::sampler::Sampler;
use serde_json::json;

use crate::stack::{Stack, account};
use crate::{Ctx, mib, secs};

/// The figures this scenario makes, with their units.
pub fn names() -> Vec<(String, &'static str)> {
    vec![
        ("initial_sync".into(), "s"),
        ("initial_sync.agent_peak_rss".into(), "MiB"),
        (crate::ingest::RSS_PER_OBJECT.into(), "KiB"),
    ]
}

/// What bare LISTs found.
struct Listed {
    took: Duration,
    /// Objects per account.
    per_account: BTreeMap<String, usize>,
}

/// Lists every account's namespaces (limit 500 per page) with one fresh client per
/// cluster, one request at a time.
async fn bare_lists(ctx: &Ctx, layout: &[Vec<usize>]) -> anyhow::Result<Listed> {
    let mut clients = Vec::new();
    for c in 0..ctx.clusters.len() {
        clients.push(ctx.client(c).await?);
    }
    let started = Instant::now();
    let mut per_account = BTreeMap::new();
    for (j, namespaces) in layout.iter().enumerate() {
        let client = &clients[j % clients.len()];
        let mut n = 0;
        for &i in namespaces {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &seeded(i));
            let mut lp = ListParams::default().limit(500);
            loop {
                let page = api.list(&lp).await?;
                n += page.items.len();
                match page.metadata.continue_ {
                    Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
                    _ => break,
                }
            }
        }
        per_account.insert(name(j), n);
    }
    Ok(Listed {
        took: started.elapsed(),
        per_account,
    })
}

fn name(j: usize) -> String {
    format!("sync-{j}")
}

/// The mean size of an object as the hub keeps it (JSON, managedFields stripped), KiB.
async fn object_kib(ctx: &Ctx) -> anyhow::Result<f64> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client(0).await?, &seeded(0));
    let items = api.list(&ListParams::default().limit(100)).await?.items;
    let mut bytes = 0usize;
    for mut cm in items.iter().cloned() {
        cm.metadata.managed_fields = None;
        bytes += serde_json::to_vec(&cm)?.len();
    }
    Ok(bytes as f64 / items.len().max(1) as f64 / 1024.0)
}

/// CPU seconds used so far by each part of the path: (name, seconds).
fn cpu(parts: &[(&str, Vec<u32>)]) -> Vec<f64> {
    parts
        .iter()
        .map(|(name, groups)| {
            if *name == "this benchmark (the LIST client)" {
                groups.iter().filter_map(|p| procfs::cpu_seconds(*p)).sum()
            } else {
                groups.iter().map(|g| procfs::group_cpu_seconds(*g)).sum()
            }
        })
        .collect()
}

/// "name 1.2 s, ..." of the CPU used between two snapshots.
fn cpu_used(parts: &[(&str, Vec<u32>)], before: &[f64], after: &[f64]) -> String {
    parts
        .iter()
        .zip(before.iter().zip(after))
        .map(|((name, _), (b, a))| format!("{name} {:.1} s", a - b))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The process (group) of each target cluster's kube-apiserver.
fn apiservers(ctx: &Ctx) -> Vec<u32> {
    ctx.cluster_ports()
        .keys()
        .filter_map(|port| procfs::find_process(&format!("--secure-port={port} ")))
        .collect()
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let p = &ctx.p;
    let layout = sync_namespaces(p.sync_accounts, p.sync_namespaces, ctx.clusters.len());
    let mut accounts = Vec::new();
    for (j, namespaces) in layout.iter().enumerate() {
        accounts.push(account(
            &name(j),
            &ctx.kubeconfig(j)?,
            namespaces.iter().map(|i| seeded(*i)).collect(),
            &["ConfigMap"],
        ));
    }
    tracing::info!(accounts = accounts.len(), "initial_sync: baseline LISTs");
    let me = std::process::id();
    let list_parts = [
        ("API servers", apiservers(ctx)),
        ("this benchmark (the LIST client)", vec![me]),
    ];
    let cpu0 = cpu(&list_parts);
    let before = bare_lists(ctx, &layout).await?;
    let list_cpu = cpu_used(&list_parts, &cpu0, &cpu(&list_parts));
    let objects: usize = before.per_account.values().sum();

    let stack = Stack::start(&ctx.env, "initial-sync").await?;
    let hub_pid = stack.hub.pid().context("the hub runs")?;
    let hub_rss = || {
        procfs::memory(hub_pid)
            .map(|m| m.rss_kib)
            .ok_or_else(|| format!("the hub's /proc/{hub_pid}/status could not be read"))
    };
    let hub_empty = hub_rss();
    let started = Instant::now();
    let mut agent = stack.agent(&ctx.env, "sync", &accounts, &[])?;
    let sampler = Sampler::start(agent.proc.pid(), Duration::from_millis(100));
    let sync_parts = [
        ("agent", vec![agent.proc.pid()]),
        (
            "nginx",
            stack.nginx.process().map(|p| p.pid()).into_iter().collect(),
        ),
        ("hub", vec![hub_pid]),
        ("API servers", apiservers(ctx)),
    ];
    let cpu1 = cpu(&sync_parts);
    tracing::info!(objects, "initial_sync: agent started");
    let synced = stack
        .wait_synced(
            &mut agent,
            &before.per_account,
            Duration::from_millis(100),
            Duration::from_secs(1200),
        )
        .await?;
    let sync = synced - started;
    let sync_cpu = cpu_used(&sync_parts, &cpu1, &cpu(&sync_parts));
    sampler.sample_now();
    let agent_peak = sampler.peak_kib();
    drop(sampler);
    // Let the hub's allocator settle before reading its resident set.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hub_full = hub_rss();
    drop(agent);
    drop(stack);

    tracing::info!(sync = ?sync, "initial_sync: baseline LISTs again");
    let after = bare_lists(ctx, &layout).await?;
    let baseline = before.took.min(after.took);
    let object_kib = object_kib(ctx).await?;
    let mut params = ctx.stream_params();
    params.insert("accounts".into(), json!(p.sync_accounts));
    params.insert("namespaces_per_account".into(), json!(p.sync_namespaces));
    params.insert("objects".into(), json!(objects));
    params.insert("kinds".into(), json!("ConfigMap"));
    let per_object = hub_full.clone().and_then(|full| {
        let empty = hub_empty.clone()?;
        Ok(full.saturating_sub(empty) as f64 / objects.max(1) as f64)
    });
    let hub_mib = |m: &Result<u64, String>| {
        m.as_ref().map_or_else(
            |why| format!("not measured ({why})"),
            |k| format!("{:.0} MiB", mib(*k)),
        )
    };
    Ok(vec![
        Figure::new("initial_sync", "initial_sync", secs(sync), "s")
            .baseline(
                secs(baseline),
                "bare paginated LISTs of the same objects by one client",
            )
            .goal(Goal::RatioAtMost { ratio: 0.8 })
            .params(&params)
            .note(format!(
                "from starting the agent process (new hub, cold) to the hub holding every object, polled every 100 ms; baseline LISTs took {:.1} s before and {:.1} s after the agent ran, the faster counts",
                secs(before.took),
                secs(after.took)
            ))
            .note(format!("CPU used during the sync: {sync_cpu}; during the first baseline LISTs: {list_cpu}")),
        Figure::measured(
            "initial_sync",
            "initial_sync.agent_peak_rss",
            agent_peak.map(mib),
            "MiB",
        )
        .params(&params)
        .note("VmHWM of the agent during the sync"),
        Figure::measured("hub_ingest", crate::ingest::RSS_PER_OBJECT, per_object, "KiB")
            .baseline(object_kib, "the object's own JSON, as the hub keeps it")
            .goal(Goal::RatioAtMost { ratio: 1.0 })
            .params(&params)
            .note(format!(
                "the hub of initial_sync: resident set {} holding {objects} objects, {} before the agent started",
                hub_mib(&hub_full),
                hub_mib(&hub_empty)
            )),
    ])
}
