//! `kube_api`: the hub's Kubernetes API of an account, as Clouddriver uses it.
//! Measured: `kubectl get configmaps -o json` of every object of a 2,000-object
//! account through the hub (answered from its cache), against the same command on the
//! cluster's API server; and a change becoming visible to a watch through the hub,
//! against a watch on the API server, both opened before the change; [`CLIENTS`]
//! clients listing a [`LIST_OBJECTS`]-object kind at once through the hub and on the
//! API server (`concurrent_list`); and the hub's watch latency again while those lists
//! run through it; and client-go's informer syncing that kind through the hub and on
//! the API server (`informer_sync`); and [`watch_fan_out::WATCHES`] watches of one
//! account following [`watch_fan_out::RATE`] changes a second, through the hub and on
//! the API server, with the hub's CPU meanwhile (`watch_fan_out`); and Clouddriver's
//! caching cycle of [`caching_cycle::ACCOUNTS`] accounts, through the hub and on the
//! API servers, counting the requests the hub sent on to the clusters
//! (`caching_cycle`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use futures::StreamExt as _;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use scale_agent_e2e::bench::goal::Goal;
use scale_agent_e2e::bench::report::Figure;
use scale_agent_e2e::converge::put_cm;
use scale_agent_e2e::workspace_binary;
use serde_json::json;

use crate::caching_cycle::{self, CycleAccount};
use crate::concurrent_list::{self, CLIENTS, ROUNDS};
use crate::informer_sync;
use crate::stack::{Stack, configmap_accounts};
use crate::watch_fan_out::{self, FanOut};
use crate::{Ctx, secs};

/// Objects of the account.
const OBJECTS: usize = 2_000;
/// Runs of the kubectl command each way; the median is reported.
const KUBECTL_RUNS: usize = 5;
/// Changes watched each way; the median is reported.
const CHANGES: usize = 20;
/// Objects of the kind the concurrent clients list.
const LIST_OBJECTS: usize = 10_000;

/// The figures this scenario makes, with their units.
pub fn names() -> Vec<(String, &'static str)> {
    vec![
        ("kube_api.kubectl_get_json".into(), "s"),
        ("kube_api.watch_latency".into(), "s"),
        ("kube_api.concurrent_list.p99".into(), "s"),
        ("kube_api.concurrent_list.round".into(), "s"),
        ("kube_api.watch_latency_under_list_load".into(), "s"),
        ("kube_api.informer_sync".into(), "s"),
        ("kube_api.watch_fan_out.p99".into(), "s"),
        ("kube_api.watch_fan_out.hub_cpu".into(), "cores"),
        ("kube_api.caching_cycle".into(), "s"),
        ("kube_api.caching_cycle.cluster_requests".into(), "requests"),
    ]
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let first = |seeded: Vec<crate::stack::ConfigMapAccount>| {
        seeded
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no account seeded"))
    };
    let account = first(configmap_accounts(ctx, "kapi", 1, OBJECTS).await?)?;
    let big = first(configmap_accounts(ctx, "klist", 1, LIST_OBJECTS).await?)?;
    let cycled = caching_cycle::accounts(ctx, "kcyc").await?;
    let ns = account.name.clone();
    let dir = ctx.env.cp.run_dir.join("bench").join("kube-api");
    std::fs::create_dir_all(&dir)?;
    // kubectl sends no token over plain HTTP: the API is served with TLS.
    let port = scale_agent_e2e::ports::free_port()?;
    let cert = ctx
        .env
        .cp
        .pki
        .issue_server("bench-kube-api", &["127.0.0.1"])?;
    let token = format!("bench-{:016x}", std::process::id());
    // Every listing client has a token of its own, as separate teams would.
    let list_tokens: Vec<String> = (0..CLIENTS)
        .map(|i| format!("bench-list-{i}-{:016x}", std::process::id()))
        .collect();
    // So has every connection of the fan-out's watches.
    let fan_tokens: Vec<String> = (0..watch_fan_out::CONNECTIONS)
        .map(|i| format!("bench-fan-{i}-{:016x}", std::process::id()))
        .collect();
    let tokens = dir.join("kube-api-tokens");
    let lines: String = std::iter::once(&token)
        .chain(&list_tokens)
        .chain(&fan_tokens)
        .map(|t| format!("{t} *\n"))
        .collect();
    std::fs::write(&tokens, lines)?;
    let stack = Stack::start_with(
        &ctx.env,
        "kube-api",
        vec![
            format!("--kube-api-addr=127.0.0.1:{port}"),
            format!("--kube-api-tokens-file={}", tokens.display()),
            format!("--kube-api-tls-cert={}", cert.cert_file.display()),
            format!("--kube-api-tls-key={}", cert.key_file.display()),
        ],
    )
    .await?;
    let mut expected =
        std::collections::BTreeMap::from([(ns.clone(), OBJECTS), (big.name.clone(), LIST_OBJECTS)]);
    expected.extend(
        cycled
            .iter()
            .map(|a| (a.name.clone(), caching_cycle::OBJECTS)),
    );
    let accounts: Vec<_> = [account.account.clone(), big.account.clone()]
        .into_iter()
        .chain(cycled.iter().map(|a| a.account.clone()))
        .collect();
    let agent = stack
        .synced_agent(&ctx.env, "kube-api", &accounts, &expected)
        .await?;
    let server = format!("https://127.0.0.1:{port}");
    let kubeconfig = hub_kubeconfig(ctx, &server, &token, &ns, &dir, "hub")?;
    let direct = ctx.kubeconfig_path(0)?;
    let args = ["get", "configmaps", "-n", ns.as_str(), "-o", "json"];
    let through = kubectl_median(ctx, &kubeconfig, &args)?;
    let on_server = kubectl_median(ctx, &direct, &args)?;
    let (hub_watch, server_watch) =
        watch_latency(&kubeconfig, &ns, account.client.clone(), CHANGES, "idle").await?;

    let mut hub_clients = Vec::with_capacity(CLIENTS);
    let mut direct_clients = Vec::with_capacity(CLIENTS);
    let mut big_kubeconfig = None;
    for (i, t) in list_tokens.iter().enumerate() {
        let path = hub_kubeconfig(ctx, &server, t, &big.name, &dir, &format!("list-{i}"))?;
        hub_clients.push(scale_agent_e2e::kubeconfig::client(&path).await?);
        direct_clients.push(scale_agent_e2e::kubeconfig::client(&direct).await?);
        big_kubeconfig.get_or_insert(path);
    }
    let big_kubeconfig = big_kubeconfig.context("no listing client")?;
    let informer_through = informer_sync::median(&big_kubeconfig, &big.name, LIST_OBJECTS)?;
    let informer_direct = informer_sync::median(&direct, &big.name, LIST_OBJECTS)?;
    let listed_through = concurrent_list::measure(&hub_clients, &big.name, LIST_OBJECTS).await?;
    let listed_direct = concurrent_list::measure(&direct_clients, &big.name, LIST_OBJECTS).await?;
    let (stop, load) = concurrent_list::background(hub_clients, big.name.clone(), LIST_OBJECTS);
    let loaded = watch_latency(&kubeconfig, &ns, account.client.clone(), CHANGES, "loaded").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let load_rounds = load.await??;
    let (hub_watch_loaded, _) = loaded?;

    let writer: Api<ConfigMap> = Api::namespaced(account.client.clone(), &ns);
    watch_fan_out::seed(&writer).await?;
    let fan_kubeconfigs = fan_tokens
        .iter()
        .enumerate()
        .map(|(i, t)| hub_kubeconfig(ctx, &server, t, &ns, &dir, &format!("fan-{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let fan_through =
        watch_fan_out::measure(&fan_kubeconfigs, &ns, &writer, stack.hub.pid()).await?;
    let fan_direct =
        watch_fan_out::measure(&vec![direct.clone(); fan_tokens.len()], &ns, &writer, None).await?;

    let cycle = cycle(ctx, &stack, &cycled, &server, &token, &dir).await?;
    drop(agent);
    drop(stack);

    let params = ctx
        .stream_params()
        .into_iter()
        .chain([
            ("objects".to_string(), json!(OBJECTS)),
            (
                "client".to_string(),
                json!("kubectl with a kubeconfig written by `scale-agent-hub kubeconfig`"),
            ),
        ])
        .collect();
    Ok(vec![
        Figure::new(
            "kube_api",
            "kube_api.kubectl_get_json",
            secs(through),
            "s",
        )
        .baseline(secs(on_server), "the same command on the cluster's API server")
        .goal(Goal::RatioAtMost { ratio: 0.5 })
        .params(&params)
        .param("runs", json!(KUBECTL_RUNS))
        .note("median of the runs, each a whole kubectl process (start, discovery, list, JSON printing) listing every object of the account"),
        Figure::new("kube_api", "kube_api.watch_latency", secs(hub_watch), "s")
            .baseline(secs(server_watch), "a watch on the cluster's API server")
            .goal(Goal::WithinOfBaseline {
                ratio: 1.0,
                slack: 0.5,
            })
            .params(&params)
            .param("changes", json!(CHANGES))
            .note("median time from the write's start until each watch showed the change; the hub's watch sees it after agent → nginx → hub"),
        concurrent_p99(&listed_through, &listed_direct, &params),
        Figure::new(
            "kube_api",
            "kube_api.concurrent_list.round",
            listed_through.round_wall,
            "s",
        )
        .baseline(
            listed_direct.round_wall,
            "the same lists at once on the cluster's API server",
        )
        .goal(Goal::RatioAtMost { ratio: 0.5 })
        .params(&params)
        .param("clients", json!(CLIENTS))
        .param("objects", json!(LIST_OBJECTS))
        .param("rounds", json!(ROUNDS))
        .note("median round's time from the first request until every client had listed every object: the inverse of throughput (≤ 0.5× is ≥ 2× the API server's throughput)"),
        Figure::new(
            "kube_api",
            "kube_api.watch_latency_under_list_load",
            secs(hub_watch_loaded),
            "s",
        )
        .baseline(secs(hub_watch), "the hub's watch with no lists running (kube_api.watch_latency)")
        .goal(Goal::WithinOfBaseline {
            ratio: 1.0,
            slack: 0.05,
        })
        .params(&params)
        .param("changes", json!(CHANGES))
        .param("list_rounds_during", json!(load_rounds))
        .note(format!("median change → the hub's watch while {CLIENTS} clients list {LIST_OBJECTS} objects of another account of the same agent through the hub, round after round: big answers must not hold back the agent's stream")),
        Figure::new("kube_api", "kube_api.informer_sync", secs(informer_through), "s")
            .baseline(secs(informer_direct), "the same informer on the cluster's API server")
            .goal(Goal::RatioAtMost { ratio: 0.5 })
            .params(&params)
            .param("objects", json!(LIST_OBJECTS))
            .param("runs", json!(informer_sync::RUNS))
            .note("median time from starting client-go's shared informer (e2e/informer, a streaming list: sendInitialEvents=true) until it reported itself synced with every object"),
    ]
    .into_iter()
    .chain(fan_out_figures(&fan_through, &fan_direct, &params))
    .chain(cycle.figures(&params))
    .collect())
}

/// What the caching cycle measured.
struct Cycle {
    through: Duration,
    direct: Duration,
    /// Requests of the measured cycle through the hub that the hub sent on to a cluster.
    to_clusters: f64,
    /// Requests of that cycle the hub answered from its cache.
    from_cache: f64,
}

/// Clouddriver's caching cycle of `accounts` through the hub at `server` (with `token`)
/// and on their clusters' API servers: one cycle each way to fill the discovery caches,
/// then one measured each way.
async fn cycle(
    ctx: &Ctx,
    stack: &Stack,
    accounts: &[CycleAccount],
    server: &str,
    token: &str,
    dir: &Path,
) -> anyhow::Result<Cycle> {
    let kubeconfigs = accounts
        .iter()
        .map(|a| {
            let path = hub_kubeconfig(
                ctx,
                server,
                token,
                &a.name,
                dir,
                &format!("cycle-{}", a.name),
            )?;
            Ok((a.name.clone(), path))
        })
        .collect::<anyhow::Result<std::collections::BTreeMap<_, _>>>()?;
    let through_of = |a: &CycleAccount| kubeconfigs.get(&a.name).cloned().unwrap_or_default();
    let direct_of = |a: &CycleAccount| a.direct.clone();
    let kubectl = &ctx.env.cp.bins.kubectl;
    let caches = dir.join("kubectl-caches");
    let run = |of: &dyn Fn(&CycleAccount) -> PathBuf, way: &str| {
        tokio::task::block_in_place(|| {
            caching_cycle::cycle(kubectl, accounts, of, &caches.join(way))
        })
    };
    run(&through_of, "hub")?;
    run(&direct_of, "direct")?;
    let before = answered(stack).await?;
    let through = run(&through_of, "hub")?;
    let after = answered(stack).await?;
    let direct = run(&direct_of, "direct")?;
    Ok(Cycle {
        through,
        direct,
        to_clusters: after.1 - before.1,
        from_cache: after.0 - before.0,
    })
}

/// The hub's Kubernetes API requests so far: answered from its cache, sent on to a
/// cluster.
async fn answered(stack: &Stack) -> anyhow::Result<(f64, f64)> {
    let addr = stack
        .hub
        .http
        .strip_prefix("http://")
        .unwrap_or(&stack.hub.http);
    let text = scale_agent_e2e::metrics::scrape(addr).await?;
    let name = "scale_agent_hub_kube_api_requests_total";
    scale_agent_e2e::metrics::require_sum(&text, name)?;
    Ok((
        scale_agent_e2e::metrics::sum_with(&text, name, "source=\"cache\""),
        scale_agent_e2e::metrics::sum_with(&text, name, "source=\"cluster\""),
    ))
}

impl Cycle {
    fn figures(
        &self,
        params: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Vec<Figure> {
        use caching_cycle::{ACCOUNTS, OBJECTS, PARALLEL};
        let shape = format!(
            "{ACCOUNTS} accounts (a namespace of {OBJECTS} ConfigMaps each), 3 kubectl processes per account (every cached kind as JSON, the same with Spinnaker's label selector, the Namespace), {PARALLEL} at once, each account with its own kubeconfig and discovery cache (filled by one cycle before)"
        );
        vec![
            Figure::new("kube_api", "kube_api.caching_cycle", secs(self.through), "s")
                .baseline(secs(self.direct), "the same cycle on the clusters' API servers")
                .goal(Goal::RatioAtMost { ratio: 0.5 })
                .params(params)
                .param("accounts", json!(ACCOUNTS))
                .param("parallel", json!(PARALLEL))
                .note(format!("one cycle's time; {shape}")),
            Figure::new(
                "kube_api",
                "kube_api.caching_cycle.cluster_requests",
                self.to_clusters,
                "requests",
            )
            .goal(Goal::AtMost { limit: 0.0 })
            .params(params)
            .param("from_cache", json!(self.from_cache))
            .note(format!(
                "requests of the measured cycle through the hub that the hub sent on to a cluster (scale_agent_hub_kube_api_requests_total, source=cluster); {} were answered from its cache",
                self.from_cache
            )),
        ]
    }
}

/// `kube_api.watch_fan_out.*`: many watches of one account following its changes,
/// through the hub against the API server, and the hub's CPU meanwhile.
fn fan_out_figures(
    through: &FanOut,
    direct: &FanOut,
    params: &std::collections::BTreeMap<String, serde_json::Value>,
) -> Vec<Figure> {
    use watch_fan_out::{CHANGES, CONNECTIONS, RATE, WATCHES};
    let p99_of = |times: &[f64]| {
        scale_agent_e2e::bench::stats::percentile(times, 99.0)
            .ok_or_else(|| "no change reached a watch".to_string())
    };
    let p99 = |f: &FanOut| p99_of(&f.latencies());
    let shape = format!(
        "{WATCHES} watches of one account's labelled ConfigMaps ({CONNECTIONS} HTTP/2 connections, each with a token of its own at the hub), {CHANGES} changes at {RATE} a second"
    );
    // A change the API server's watches never showed would count as 30 s there, and
    // such a baseline would make any figure look like a win: when it dropped some, its
    // p99 is over the pairs it showed (in its favour), and the note says how many it
    // never showed.
    let (baseline, baseline_what) = match direct.missing {
        0 => (
            p99(direct),
            "the same watches on the cluster's API server".to_string(),
        ),
        n => (
            p99_of(&direct.shown),
            format!(
                "the same watches on the cluster's API server, over the {} (watch, change) pairs it showed: it never showed {n} (it closes watches it finds slow)",
                direct.shown.len()
            ),
        ),
    };
    let latency = Figure::measured("kube_api", "kube_api.watch_fan_out.p99", p99(through), "s")
        .baseline_measured(baseline, &baseline_what)
        .goal(Goal::AtMost { limit: 0.05 })
        .params(params)
        .param("watches", json!(WATCHES))
        .param("changes", json!(CHANGES))
        .param("rate", json!(RATE))
        .param("missing", json!(through.missing))
        .param("missing_baseline", json!(direct.missing))
        .note(format!(
            "99th percentile over every (watch, change) of the time from the write's start until the watch showed it; {shape}; a change a watch never showed through the hub counts as 30 s ({} such); the API server never showed {}",
            through.missing, direct.missing
        ));
    let cores = match &through.cpu {
        Some(Ok((cpu, wall))) => Ok(cpu / wall),
        Some(Err(e)) => Err(e.clone()),
        None => Err("the hub's process was not known".to_string()),
    };
    let cpu = Figure::measured("kube_api", "kube_api.watch_fan_out.hub_cpu", cores, "cores")
        .goal(Goal::AtMost { limit: 1.0 })
        .params(params)
        .param("watches", json!(WATCHES))
        .param("rate", json!(RATE))
        .note(format!(
            "the hub's CPU seconds per second from the first write's start until every watch had shown the last change; {shape}"
        ));
    vec![latency, cpu]
}

/// `kube_api.concurrent_list.p99`: every client's time to list the kind, through the
/// hub against the API server.
fn concurrent_p99(
    through: &concurrent_list::Load,
    direct: &concurrent_list::Load,
    params: &std::collections::BTreeMap<String, serde_json::Value>,
) -> Figure {
    let p99 =
        |l: &concurrent_list::Load| scale_agent_e2e::bench::stats::percentile(&l.per_client, 99.0);
    let figure = match p99(through) {
        Some(v) => Figure::new("kube_api", "kube_api.concurrent_list.p99", v, "s"),
        None => Figure::not_measured(
            "kube_api",
            "kube_api.concurrent_list.p99",
            "s",
            "no client finished a list",
        ),
    };
    let figure = match p99(direct) {
        Some(b) => figure.baseline(b, "the same lists at once on the cluster's API server"),
        None => figure,
    };
    figure
        .goal(Goal::AtMost { limit: 0.3 })
        .params(params)
        .param("clients", json!(CLIENTS))
        .param("objects", json!(LIST_OBJECTS))
        .param("rounds", json!(ROUNDS))
        .note(format!("99th percentile of each client's time to list every object in pages of 500, {CLIENTS} clients at once, each with its own connection and token"))
}

/// Writes a kubeconfig for `account` with `scale-agent-hub kubeconfig`.
pub fn hub_kubeconfig(
    ctx: &Ctx,
    server: &str,
    token: &str,
    account: &str,
    dir: &Path,
    name: &str,
) -> anyhow::Result<PathBuf> {
    let token_file = dir.join(format!("{name}-token"));
    std::fs::write(&token_file, token)?;
    let out = dir.join(format!("{name}-kubeconfig"));
    let status = std::process::Command::new(workspace_binary("scale-agent-hub")?)
        .arg("kubeconfig")
        .arg(format!("--server={server}"))
        .arg(format!("--token-file={}", token_file.display()))
        .arg(format!(
            "--certificate-authority={}",
            ctx.env.cp.pki.ca_file.display()
        ))
        .arg(format!("--account={account}"))
        .arg(format!("--output={}", out.display()))
        .status()?;
    anyhow::ensure!(status.success(), "scale-agent-hub kubeconfig failed");
    Ok(out)
}

/// The median of [`KUBECTL_RUNS`] runs of kubectl `args` with `kubeconfig`; each must
/// list every object.
fn kubectl_median(ctx: &Ctx, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(KUBECTL_RUNS);
    for _ in 0..KUBECTL_RUNS {
        let t = Instant::now();
        let out = scale_agent_e2e::kubectl::run(&ctx.env.cp.bins.kubectl, kubeconfig, args, None)?;
        times.push(t.elapsed());
        let list: serde_json::Value = serde_json::from_str(&out)?;
        let n = list["items"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(n >= OBJECTS, "kubectl listed {n} of {OBJECTS} objects");
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// The medians of `changes` changes' (each writing a value marked `tag`) time to a watch through the hub and to a watch on
/// the API server.
async fn watch_latency(
    kubeconfig: &Path,
    ns: &str,
    direct_client: kube::Client,
    changes: usize,
    tag: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let through: Api<ConfigMap> =
        Api::namespaced(scale_agent_e2e::kubeconfig::client(kubeconfig).await?, ns);
    let direct: Api<ConfigMap> = Api::namespaced(direct_client, ns);
    let (mut to_hub, mut to_server) = (Vec::new(), Vec::new());
    for i in 0..changes {
        let name = format!("obj-{i}");
        let fields = format!("metadata.name={name}");
        let lp = ListParams::default().fields(&fields);
        let wp = WatchParams::default().fields(&fields);
        let hub_rv = through
            .list(&lp)
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        let server_rv = direct
            .list(&lp)
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        let mut hub_stream = through.watch(&wp, &hub_rv).await?.boxed();
        let mut server_stream = direct.watch(&wp, &server_rv).await?.boxed();
        let changed = Instant::now();
        put_cm(&direct, &name, &format!("watched-{tag}-{i}")).await?;
        let limit = Duration::from_secs(30);
        let (a, b) = tokio::join!(
            tokio::time::timeout(limit, first_modified(&mut hub_stream, changed)),
            tokio::time::timeout(limit, first_modified(&mut server_stream, changed)),
        );
        to_hub.push(a?.ok_or_else(|| anyhow::anyhow!("the hub's watch ended"))?);
        to_server.push(b?.ok_or_else(|| anyhow::anyhow!("the API server's watch ended"))?);
    }
    to_hub.sort();
    to_server.sort();
    Ok((to_hub[changes / 2], to_server[changes / 2]))
}

/// How long after `since` the watch shows a modification; `None` when it ends first.
async fn first_modified(
    stream: &mut BoxStream<'static, kube::Result<WatchEvent<ConfigMap>>>,
    since: Instant,
) -> Option<Duration> {
    while let Some(event) = stream.next().await {
        if let Ok(WatchEvent::Modified(_)) = event {
            return Some(since.elapsed());
        }
    }
    None
}
