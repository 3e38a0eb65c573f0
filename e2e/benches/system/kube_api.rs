//! `kube_api`: the hub's Kubernetes API of an account, as Clouddriver uses it.
//! Measured: `kubectl get configmaps -o json` of every object of a 2,000-object
//! account through the hub (answered from its cache), against the same command on the
//! cluster's API server; and a change becoming visible to a watch through the hub,
//! against a watch on the API server, both opened before the change.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use scale_agent_e2e::bench::goal::Goal;
use scale_agent_e2e::bench::report::Figure;
use scale_agent_e2e::converge::put_cm;
use scale_agent_e2e::workspace_binary;
use serde_json::json;

use crate::stack::{Stack, configmap_accounts};
use crate::{Ctx, secs};

/// Objects of the account.
const OBJECTS: usize = 2_000;
/// Runs of the kubectl command each way; the median is reported.
const KUBECTL_RUNS: usize = 5;
/// Changes watched each way; the median is reported.
const CHANGES: usize = 20;

/// The figures this scenario makes, with their units.
pub fn names() -> Vec<(String, &'static str)> {
    vec![
        ("kube_api.kubectl_get_json".into(), "s"),
        ("kube_api.watch_latency".into(), "s"),
    ]
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let seeded = configmap_accounts(ctx, "kapi", 1, OBJECTS).await?;
    let account = seeded
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no account seeded"))?;
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
    let tokens = dir.join("kube-api-tokens");
    std::fs::write(&tokens, format!("{token} *\n"))?;
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
    let expected = std::collections::BTreeMap::from([(ns.clone(), OBJECTS)]);
    let agent = stack
        .synced_agent(&ctx.env, "kube-api", &[account.account], &expected)
        .await?;
    let kubeconfig = hub_kubeconfig(ctx, &format!("https://127.0.0.1:{port}"), &token, &ns, &dir)?;
    let direct = ctx.kubeconfig_path(0)?;
    let args = ["get", "configmaps", "-n", ns.as_str(), "-o", "json"];
    let through = kubectl_median(ctx, &kubeconfig, &args)?;
    let on_server = kubectl_median(ctx, &direct, &args)?;
    let (hub_watch, server_watch) = watch_latency(&kubeconfig, &ns, account.client.clone()).await?;
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
        .goal(Goal::RatioAtMost { ratio: 1.0 })
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
    ])
}

/// Writes a kubeconfig for `account` with `scale-agent-hub kubeconfig`.
fn hub_kubeconfig(
    ctx: &Ctx,
    server: &str,
    token: &str,
    account: &str,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let token_file = dir.join("kube-api-token");
    std::fs::write(&token_file, token)?;
    let out = dir.join("hub-kubeconfig");
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

/// The medians of [`CHANGES`] changes' time to a watch through the hub and to a watch
/// on the API server.
async fn watch_latency(
    kubeconfig: &Path,
    ns: &str,
    direct_client: kube::Client,
) -> anyhow::Result<(Duration, Duration)> {
    let through: Api<ConfigMap> =
        Api::namespaced(scale_agent_e2e::kubeconfig::client(kubeconfig).await?, ns);
    let direct: Api<ConfigMap> = Api::namespaced(direct_client, ns);
    let (mut to_hub, mut to_server) = (Vec::new(), Vec::new());
    for i in 0..CHANGES {
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
        put_cm(&direct, &name, &format!("watched-{i}")).await?;
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
    Ok((to_hub[CHANGES / 2], to_server[CHANGES / 2]))
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
