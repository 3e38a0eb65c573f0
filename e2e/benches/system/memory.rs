//! `agent_memory_scaling`: one agent with N accounts (each its own namespace of seeded
//! objects, the default kinds, the default budget), for each N: peak resident set
//! during the initial sync (`VmHWM` when the hub holds everything), steady resident set
//! after it (median of the second half of the steady window), and established
//! connections to each cluster's API server, and the watches the busiest API server
//! serves for it. Baseline, in the same run on the same objects: a process with a
//! kube-rs reflector per account and kind holding them (the watches one per account
//! would open).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use scale_agent_e2e::bench::goal::Goal;
use scale_agent_e2e::bench::layout::{cluster_of, seeded};
use scale_agent_e2e::bench::procfs;
use scale_agent_e2e::bench::report::Figure;
use scale_agent_e2e::bench::sampler::{self, Sampler};
use serde_json::json;

use crate::baseline::{Baseline, Spec, SpecAccount};
use crate::params::Params;

/// Streams a kube-apiserver carries at once on one HTTP/2 connection when its
/// `--http2-max-streams-per-connection` is not set, as on the benchmark's API servers.
const API_SERVER_STREAMS: usize = 100;
use crate::stack::{Stack, account};
use crate::{Ctx, mib, secs};

/// The figures this scenario makes, with their units.
pub fn names(p: &Params) -> Vec<(String, &'static str)> {
    p.accounts
        .iter()
        .flat_map(|n| {
            [
                (format!("agent_memory_scaling.peak_rss.{n}"), "MiB"),
                (format!("agent_memory_scaling.steady_rss.{n}"), "MiB"),
                (
                    format!("agent_memory_scaling.connections_per_cluster.{n}"),
                    "connections",
                ),
                (format!("agent_memory_scaling.sync_seconds.{n}"), "s"),
                (
                    format!("agent_memory_scaling.watches_per_api_server.{n}"),
                    "watches",
                ),
            ]
        })
        .collect()
}

/// What one process showed.
struct Measured {
    sync: Duration,
    peak_kib: sampler::Measured<u64>,
    steady_kib: sampler::Measured<f64>,
    /// Established connections to the busiest cluster's API server.
    per_cluster: sampler::Measured<usize>,
    /// Established connections to every cluster's API server.
    to_clusters: usize,
    /// Watches the busiest API server served for it (more than before it started).
    watches: sampler::Measured<f64>,
    fds: String,
}

/// Watches each shared cluster's API server serves (its `apiserver_longrunning_requests`
/// gauge, verb `WATCH`: its own loopback informers included), by cluster.
async fn watches_by_cluster(ctx: &Ctx) -> sampler::Measured<Vec<f64>> {
    let mut out = Vec::with_capacity(ctx.clusters.len());
    for i in 0..ctx.clusters.len() {
        let text = async {
            let client = ctx.client(i).await?;
            let request = http::Request::get("/metrics").body(Vec::new())?;
            anyhow::Ok(client.request_text(request).await?)
        }
        .await
        .map_err(|e| {
            format!(
                "the metrics of {} could not be read: {e:#}",
                ctx.clusters[i]
            )
        })?;
        let series = "apiserver_longrunning_requests";
        if !text.lines().any(|l| l.starts_with(series)) {
            return Err(format!("{} exports no {series}", ctx.clusters[i]));
        }
        out.push(scale_agent_e2e::metrics::sum_with(
            &text,
            series,
            "verb=\"WATCH\"",
        ));
    }
    Ok(out)
}

/// Measures a started process `pid` until it has synced (`synced` resolves), then over
/// the steady window; `watches_before` are [`watches_by_cluster`] before it started.
async fn measure<F>(
    ctx: &Ctx,
    pid: u32,
    started: Instant,
    watches_before: &sampler::Measured<Vec<f64>>,
    synced: F,
) -> anyhow::Result<Measured>
where
    F: std::future::Future<Output = anyhow::Result<Instant>>,
{
    let sampler = Sampler::start(pid, Duration::from_millis(100));
    let at = synced.await?;
    sampler.sample_now();
    let peak_kib = sampler.peak_kib_until(Instant::now());
    let steady = Duration::from_secs(ctx.p.steady_seconds.max(2));
    tokio::time::sleep(steady / 2).await;
    // A sample at each edge of the window the median is taken over.
    let from = Instant::now();
    sampler.sample_now();
    tokio::time::sleep(steady - steady / 2).await;
    sampler.sample_now();
    let steady_kib = sampler.median_rss_kib(from, Instant::now());
    let watches = match (watches_before, watches_by_cluster(ctx).await) {
        (Ok(before), Ok(after)) => Ok(after
            .iter()
            .zip(before)
            .map(|(a, b)| a - b)
            .fold(0.0, f64::max)),
        (Err(e), _) => Err(e.clone()),
        (_, Err(e)) => Err(e),
    };
    let ports = ctx.cluster_ports();
    let conns = procfs::connections_by_remote_port(pid)
        .ok_or_else(|| format!("the sockets of process {pid} could not be read"));
    let mut by_cluster: BTreeMap<usize, usize> = BTreeMap::new();
    for (port, n) in conns.clone().unwrap_or_default() {
        if let Some(c) = ports.get(&port) {
            *by_cluster.entry(*c).or_insert(0) += n;
        }
    }
    Ok(Measured {
        sync: at - started,
        peak_kib,
        steady_kib,
        per_cluster: conns.map(|_| by_cluster.values().copied().max().unwrap_or(0)),
        to_clusters: by_cluster.values().sum(),
        watches,
        fds: procfs::open_fds(pid).map_or_else(|| "unknown".into(), |n| n.to_string()),
    })
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let mut out = Vec::new();
    let clusters = ctx.clusters.len();
    let kinds = scale_agent::kinds::DEFAULT_KINDS.len();
    for &n in &ctx.p.accounts {
        let mut accounts = Vec::new();
        let mut expected = BTreeMap::new();
        for i in 0..n {
            let name = format!("mem-{n}-{i}");
            accounts.push(account(
                &name,
                &ctx.kubeconfig(cluster_of(i, clusters))?,
                vec![seeded(i)],
                &[],
            ));
            // Its ConfigMaps and its Namespace (the other default kinds are empty there).
            expected.insert(name, ctx.seeded_per_namespace + 1);
        }
        let objects: usize = expected.values().sum();
        tracing::info!(accounts = n, objects, "agent_memory_scaling: agent");
        let stack = Stack::start(&ctx.env, &format!("memory-{n}")).await?;
        let watches_before = watches_by_cluster(ctx).await;
        let started = Instant::now();
        let mut agent = stack.agent(&ctx.env, &format!("mem{n}"), &accounts, &[])?;
        let pid = agent.proc.pid();
        let agent_m = {
            let synced = stack.wait_synced(
                &mut agent,
                &expected,
                Duration::from_millis(250),
                Duration::from_secs(1500),
            );
            measure(ctx, pid, started, &watches_before, synced).await?
        };
        let hub_mib = stack.hub.pid().and_then(procfs::memory).map_or_else(
            || "an unknown amount (not readable)".into(),
            |m| format!("{:.0} MiB", mib(m.rss_kib)),
        );
        drop(agent);
        drop(stack);

        tracing::info!(accounts = n, "agent_memory_scaling: reflector baseline");
        let spec = Spec {
            accounts: (0..n)
                .map(|i| {
                    Ok(SpecAccount {
                        kubeconfig: ctx.kubeconfig_path(cluster_of(i, clusters))?,
                        namespaces: vec![seeded(i)],
                        kinds: vec![],
                    })
                })
                .collect::<anyhow::Result<_>>()?,
        };
        let dir = ctx.env.cp.run_dir.join("bench").join(format!("memory-{n}"));
        let watches_before = watches_by_cluster(ctx).await;
        let started = Instant::now();
        let mut base = Baseline::start(&dir, &format!("reflector-{n}"), &spec)?;
        let pid = base.proc.pid();
        let base_m = {
            let synced = async {
                let (at, held) = base.wait_synced(Duration::from_secs(1500)).await?;
                anyhow::ensure!(
                    held as usize >= objects,
                    "the reflectors hold {held} objects, the agent sent {objects}"
                );
                Ok(at)
            };
            measure(ctx, pid, started, &watches_before, synced).await?
        };
        drop(base);

        let params = {
            let mut p = ctx.stream_params();
            p.insert("accounts".into(), json!(n));
            p.insert("objects".into(), json!(objects));
            p.insert(
                "kinds".into(),
                json!(format!(
                    "the default set ({kinds}), one namespace per account"
                )),
            );
            p
        };
        let base_what = "kube-rs reflector per kind holding the same objects";
        out.push(
            Figure::measured(
                "agent_memory_scaling",
                &format!("agent_memory_scaling.peak_rss.{n}"),
                agent_m.peak_kib.clone().map(mib),
                "MiB",
            )
            .baseline_measured(base_m.peak_kib.clone().map(mib), base_what)
            .goal(Goal::AtMost { limit: 128.0 })
            .params(&params)
            .note(format!(
                "VmHWM at the end of the initial sync; the hub then held {hub_mib}"
            )),
        );
        out.push(
            Figure::measured(
                "agent_memory_scaling",
                &format!("agent_memory_scaling.steady_rss.{n}"),
                agent_m.steady_kib.clone().map(|k| k / 1024.0),
                "MiB",
            )
            .baseline_measured(base_m.steady_kib.clone().map(|k| k / 1024.0), base_what)
            .params(&params)
            .note(format!(
                "median VmRSS over the second half of {} s after the sync",
                ctx.p.steady_seconds
            )),
        );
        // The fewest connections the busiest server's accounts can stream over: they
        // share one watch per kind and the surface's watches (one identity), and each
        // reserves one stream for its lists and operations.
        let busiest = n.div_ceil(clusters);
        let least = (busiest + kinds + scale_agent::surface::WATCHES).div_ceil(API_SERVER_STREAMS);
        out.push(
            Figure::measured(
                "agent_memory_scaling",
                &format!("agent_memory_scaling.connections_per_cluster.{n}"),
                agent_m.per_cluster.clone().map(|c| c as f64),
                "connections",
            )
            .baseline_measured(base_m.per_cluster.clone().map(|c| c as f64), base_what)
            .goal(Goal::AtMost { limit: 2.0 })
            .params(&params)
            .note(format!(
                "established TCP connections to the busiest API server ({n} accounts over {clusters} API servers); {} in all, {} open file descriptors (the baseline: {} and {}). Its {busiest} accounts share {} watches (one identity) and each reserves one stream for its lists and operations: at the API server's {API_SERVER_STREAMS} streams per connection (kube-apiserver's default) they need at least {least} connections",
                agent_m.to_clusters,
                agent_m.fds,
                base_m.to_clusters,
                base_m.fds,
                kinds + scale_agent::surface::WATCHES
            )),
        );
        out.push(
            Figure::new(
                "agent_memory_scaling",
                &format!("agent_memory_scaling.sync_seconds.{n}"),
                secs(agent_m.sync),
                "s",
            )
            .baseline(secs(base_m.sync), base_what)
            .params(&params)
            .note("process start → every object at the hub (the baseline: every reflector listed)"),
        );
        out.push(
            Figure::measured(
                "agent_memory_scaling",
                &format!("agent_memory_scaling.watches_per_api_server.{n}"),
                agent_m.watches.clone(),
                "watches",
            )
            .baseline_measured(base_m.watches.clone(), base_what)
            .goal(Goal::AtMost {
                limit: (kinds + scale_agent::surface::WATCHES) as f64,
            })
            .params(&params)
            .note(format!(
                "watches the busiest API server ({busiest} of the {n} accounts, one namespace each) served for the process once it had synced, over what it served before the process started (apiserver_longrunning_requests, verb WATCH); the goal: one watch per kind the accounts need, shared by accounts with the same credentials, and the agent's {} watches of the API's surface (CRDs, APIServices)",
                scale_agent::surface::WATCHES
            )),
        );
    }
    Ok(out)
}
