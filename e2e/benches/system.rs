//! System benchmarks (`just bench`): the agent and hub against real clusters, each
//! number next to a baseline measured in the same run, and written to
//! `bench-results/system-<unix time>.md`.
//!
//! - initial sync of N objects through agent → hub, against a plain paginated list of the
//!   same objects by one client (the least any sync can cost);
//! - a burst of updates reaching the hub, against the time the API server took to accept
//!   them;
//! - the agent's memory with one account and with three (each with N objects): it must
//!   not grow with the number of clusters;
//! - `kubectl get -o json` of every object of an account through the hub's Kubernetes
//!   API (answered from its cache) against the same command on the API server;
//! - a change becoming visible to a watch through the hub against a watch on the API
//!   server.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use scale_agent_crds::{AccountConfig, AgentConfig, BudgetConfig, HubConfig, ShardRef};
use scale_agent_e2e::agent::{AgentProcess, AgentSpec};
use scale_agent_e2e::converge::{configmaps, converge, create_namespace, put_cm};
use scale_agent_e2e::hub::{HubOptions, HubProcess};
use scale_agent_e2e::process::rss_kib;
use scale_agent_e2e::scenario::kubeconfigs;
use scale_agent_e2e::{Env, Options, workspace_binary};

const OBJECTS: usize = 2000;
const NS: &str = "bench";
const TARGETS: [&str; 3] = ["cluster-1", "cluster-2", "cluster-3"];

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; nothing else is read.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run())?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench-results");
    std::fs::create_dir_all(&dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let file = dir.join(format!("system-{stamp}.md"));
    std::fs::write(&file, &report)?;
    println!("{report}\nwritten to {}", file.display());
    Ok(())
}

async fn run() -> anyhow::Result<String> {
    let env = Env::start(Options {
        targets: TARGETS.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    })
    .await?;
    let cp = &env.cp;
    create_namespace(&cp.management, NS).await?;
    let mut apis = Vec::new();
    for t in &cp.targets {
        create_namespace(t, NS).await?;
        let api = configmaps(t, NS).await?;
        fill(&api, OBJECTS).await?;
        apis.push(api);
    }
    // The hub serves the accounts' Kubernetes API too (TLS: kubectl sends no token over
    // plain HTTP).
    let api_port = scale_agent_e2e::ports::free_port()?;
    let api_cert = cp.pki.issue_server("bench-kube-api", &["127.0.0.1"])?;
    let tokens = cp.run_dir.join("bench-kube-api-tokens");
    std::fs::write(&tokens, format!("{BENCH_TOKEN} *\n"))?;
    let hub = HubProcess::start(
        HubOptions {
            bin: workspace_binary("scale-agent-hub")?,
            grace_period: "600s".into(),
            store: None,
            args: vec![
                format!("--kube-api-addr=127.0.0.1:{api_port}"),
                format!("--kube-api-tokens-file={}", tokens.display()),
                format!("--kube-api-tls-cert={}", api_cert.cert_file.display()),
                format!("--kube-api-tls-key={}", api_cert.key_file.display()),
            ],
            kubeconfig: None,
        },
        &cp.run_dir,
    )
    .await?;
    let mut out = String::new();
    writeln!(out, "# scale-agent system benchmark\n")?;
    writeln!(
        out,
        "{OBJECTS} ConfigMaps of ~1 KiB per cluster; 2 cores shared by the control plane, hub and agent.\n"
    )?;

    // 1. Initial sync against a plain list.
    let list = timed_list(&apis[0]).await?;
    let dir = tempfile::tempdir()?;
    let one = start(&env, &hub, dir.path(), "one", &["b-1"], &TARGETS[..1])?;
    let t = Instant::now();
    converge(&hub, "b-1", &apis[0], NS, Duration::from_secs(300)).await?;
    let sync = t.elapsed();
    writeln!(
        out,
        "| measure | value | baseline | ratio |\n|---|---|---|---|"
    )?;
    writeln!(
        out,
        "| initial sync, agent start → hub cache equal ({OBJECTS} objects) | {:.2?} | paginated list by one client {:.2?} | {:.1}× |",
        sync,
        list,
        sync.as_secs_f64() / list.as_secs_f64()
    )?;

    // 2. A burst of updates.
    let t = Instant::now();
    for i in 0..500 {
        put_cm(&apis[0], &format!("obj-{i}"), &format!("updated-{i}")).await?;
    }
    let accepted = t.elapsed();
    converge(&hub, "b-1", &apis[0], NS, Duration::from_secs(300)).await?;
    let reached = t.elapsed();
    writeln!(
        out,
        "| 500 updates, first write → hub cache equal | {:.2?} | API server accepting them {:.2?} | {:.2}× |",
        reached,
        accepted,
        reached.as_secs_f64() / accepted.as_secs_f64()
    )?;

    // 3. Memory with one account and with three.
    let rss_one = rss_kib(one.proc.pid());
    let three = start(
        &env,
        &hub,
        dir.path(),
        "three",
        &["c-1", "c-2", "c-3"],
        &TARGETS,
    )?;
    for (i, api) in apis.iter().enumerate() {
        converge(
            &hub,
            &format!("c-{}", i + 1),
            api,
            NS,
            Duration::from_secs(300),
        )
        .await?;
    }
    let rss_three = rss_kib(three.proc.pid());
    writeln!(
        out,
        "| agent RSS after sync, 3 accounts ({} objects) | {rss_three} KiB | 1 account ({OBJECTS} objects) {rss_one} KiB | {:.2}× |",
        3 * OBJECTS,
        rss_three as f64 / rss_one.max(1) as f64
    )?;

    // 4. kubectl get -o json of the whole account, through the hub and directly.
    let server = format!("https://127.0.0.1:{api_port}");
    let kubeconfig = hub_kubeconfig(&env, &server, "b-1", &dir.path().join("hub-kubeconfig"))?;
    let direct = &cp.targets[0].kubeconfig;
    let args = ["get", "configmaps", "-n", NS, "-o", "json"];
    let (through, direct_t) = (
        kubectl_time(&env, &kubeconfig, &args, OBJECTS)?,
        kubectl_time(&env, direct, &args, OBJECTS)?,
    );
    writeln!(
        out,
        "| `kubectl get configmaps -o json` of the account ({OBJECTS} objects), median of 5, through the hub | {through:.2?} | the API server directly {direct_t:.2?} | {:.2}× |",
        through.as_secs_f64() / direct_t.as_secs_f64()
    )?;

    // 5. A change → visible on a watch through the hub, and on a watch on the API server.
    let (hub_watch, direct_watch) = watch_latency(&env, &kubeconfig, &apis[0]).await?;
    writeln!(
        out,
        "| change → seen by a watch through the hub, median of 20 | {hub_watch:.2?} | by a watch on the API server {direct_watch:.2?} | {:.2}× |",
        hub_watch.as_secs_f64() / direct_watch.as_secs_f64().max(1e-6)
    )?;
    drop(three);
    drop(one);
    Ok(out)
}

/// The token of the hub's Kubernetes API in the benchmark.
const BENCH_TOKEN: &str = "bench-token-0123456789abcdef";

/// Writes a kubeconfig for `account` with `scale-agent-hub kubeconfig`.
fn hub_kubeconfig(
    env: &Env,
    server: &str,
    account: &str,
    out: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    let token = out.with_extension("token");
    std::fs::write(&token, BENCH_TOKEN)?;
    let status = std::process::Command::new(workspace_binary("scale-agent-hub")?)
        .arg("kubeconfig")
        .arg(format!("--server={server}"))
        .arg(format!("--token-file={}", token.display()))
        .arg(format!(
            "--certificate-authority={}",
            env.cp.pki.ca_file.display()
        ))
        .arg(format!("--account={account}"))
        .arg(format!("--output={}", out.display()))
        .status()?;
    anyhow::ensure!(status.success(), "scale-agent-hub kubeconfig failed");
    Ok(out.to_path_buf())
}

/// The median of 5 runs of kubectl `args` with `kubeconfig`; each must list at least
/// `objects` items.
fn kubectl_time(
    env: &Env,
    kubeconfig: &std::path::Path,
    args: &[&str],
    objects: usize,
) -> anyhow::Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out = scale_agent_e2e::kubectl::run(&env.cp.bins.kubectl, kubeconfig, args, None)?;
        times.push(t.elapsed());
        let list: serde_json::Value = serde_json::from_str(&out)?;
        let n = list["items"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(n >= objects, "kubectl listed {n} objects");
    }
    times.sort();
    Ok(times[2])
}

/// The medians of 20 changes' time to a watch through the hub and to a watch on the
/// API server.
async fn watch_latency(
    env: &Env,
    kubeconfig: &std::path::Path,
    api: &Api<ConfigMap>,
) -> anyhow::Result<(Duration, Duration)> {
    use futures::StreamExt as _;
    use kube::api::WatchParams;
    let text = std::fs::read_to_string(kubeconfig)?;
    let kc = kube::config::Kubeconfig::from_yaml(&text)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    let through: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(config)?, NS);
    let direct: Api<ConfigMap> = Api::namespaced(env.cp.targets[0].client().await?, NS);
    let (mut to_hub, mut to_server) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let name = format!("obj-{i}");
        let params = WatchParams::default().fields(&format!("metadata.name={name}"));
        let rv = |list: kube::core::ObjectList<ConfigMap>| {
            list.metadata.resource_version.unwrap_or_default()
        };
        let lp = ListParams::default().fields(&format!("metadata.name={name}"));
        let hub_rv = rv(through.list(&lp).await?);
        let server_rv = rv(direct.list(&lp).await?);
        let mut hub_stream = through.watch(&params, &hub_rv).await?.boxed();
        let mut server_stream = direct.watch(&params, &server_rv).await?.boxed();
        let changed = Instant::now();
        put_cm(api, &name, &format!("watched-{i}")).await?;
        let (a, b) = tokio::join!(
            tokio::time::timeout(
                Duration::from_secs(30),
                first_modified(&mut hub_stream, changed)
            ),
            tokio::time::timeout(
                Duration::from_secs(30),
                first_modified(&mut server_stream, changed)
            ),
        );
        to_hub.push(a?.ok_or_else(|| anyhow::anyhow!("the hub's watch ended"))?);
        to_server.push(b?.ok_or_else(|| anyhow::anyhow!("the server's watch ended"))?);
    }
    to_hub.sort();
    to_server.sort();
    Ok((to_hub[10], to_server[10]))
}

/// How long after `since` the watch shows a modification; `None` when it ends first.
async fn first_modified(
    stream: &mut futures::stream::BoxStream<
        'static,
        kube::Result<kube::api::WatchEvent<ConfigMap>>,
    >,
    since: Instant,
) -> Option<Duration> {
    use futures::StreamExt as _;
    while let Some(ev) = stream.next().await {
        if let Ok(kube::api::WatchEvent::Modified(_)) = ev {
            return Some(since.elapsed());
        }
    }
    None
}

async fn fill(api: &Api<ConfigMap>, n: usize) -> anyhow::Result<()> {
    let pad = "x".repeat(1000);
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..8 {
        let api = api.clone();
        let pad = pad.clone();
        tasks.spawn(async move {
            for i in (chunk..n).step_by(8) {
                put_cm(&api, &format!("obj-{i}"), &pad).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

async fn timed_list(api: &Api<ConfigMap>) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut lp = ListParams::default().limit(500);
    loop {
        let page = api.list(&lp).await?;
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    Ok(t.elapsed())
}

fn start(
    env: &Env,
    hub: &HubProcess,
    dir: &std::path::Path,
    shard: &str,
    accounts: &[&str],
    clusters: &[&str],
) -> anyhow::Result<AgentProcess> {
    let pairs: Vec<(&str, &str)> = accounts
        .iter()
        .copied()
        .zip(clusters.iter().copied())
        .collect();
    let kcs = kubeconfigs(env, &pairs)?;
    let mut accs = Vec::new();
    for a in accounts {
        accs.push(AccountConfig {
            name: a.to_string(),
            kubeconfig_file: format!("{a}.kubeconfig"),
            namespaces: vec![NS.into()],
            omit_namespaces: vec![],
            kinds: vec!["ConfigMap".into()],
            omit_kinds: vec![],
            only_spinnaker_managed: false,
        });
    }
    let cfg = AgentConfig {
        shard: ShardRef::new(NS.to_string(), shard.to_string()),
        hub: HubConfig {
            address: hub.grpc.clone(),
            tls: None,
        },
        accounts: accs,
        budget: BudgetConfig::default(),
    };
    let spec = AgentSpec {
        bin: workspace_binary("scale-agent")?,
        replica: format!("{shard}-0"),
        namespace: NS.into(),
        management_kubeconfig: env.cp.management.kubeconfig.clone(),
        args: vec!["--lease-renew-interval=500ms".into()],
    };
    Ok(AgentProcess::start(
        &spec,
        &dir.join(shard),
        &cfg,
        &kcs,
        &env.cp.run_dir,
    )?)
}
