//! Clouddriver's caching cycle over many accounts, as its kubernetes provider runs it:
//! for each account, new `kubectl` processes (one kubeconfig and discovery cache per
//! account, [`PARALLEL`] at once as its caching threads) get every kind it caches in the
//! account's namespace as JSON, the same with Spinnaker's label selector, and the
//! Namespace. Timed through the hub (each account its own kubeconfig written by
//! `scale-agent-hub kubeconfig`) and on the clusters' API servers, after one cycle each
//! way that fills the discovery caches.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::Ctx;
use crate::stack::{Account, account};

/// Accounts cycled.
pub const ACCOUNTS: usize = 100;
/// ConfigMaps in each account's namespace.
pub const OBJECTS: usize = 20;
/// kubectl processes at once.
pub const PARALLEL: usize = 8;
/// The kinds Clouddriver caches (the agent's default kinds but Namespace).
const KINDS: &str = "deployment,replicaset,statefulset,daemonset,pod,service,configmap,serviceaccount,persistentvolumeclaim,job,cronjob,horizontalpodautoscaler,ingress,networkpolicy";

/// One account of the cycle.
pub struct CycleAccount {
    /// Its name, which is also its namespace's.
    pub name: String,
    /// Its configuration for the agent (the default kinds, its namespace).
    pub account: Account,
    /// Its cluster's admin kubeconfig.
    pub direct: PathBuf,
}

/// Makes [`ACCOUNTS`] accounts named `{prefix}-N` over the shared clusters, each a
/// namespace of [`OBJECTS`] ConfigMaps.
pub async fn accounts(ctx: &Ctx, prefix: &str) -> anyhow::Result<Vec<CycleAccount>> {
    let clusters = ctx.clusters.len();
    let mut out = Vec::with_capacity(ACCOUNTS);
    for j in 0..ACCOUNTS {
        let name = format!("{prefix}-{j}");
        scale_agent_e2e::bench::seed::configmaps(
            &ctx.client(j % clusters).await?,
            &[scale_agent_e2e::bench::seed::Batch {
                namespace: name.clone(),
                prefix: "obj".into(),
                count: OBJECTS,
            }],
            ctx.p.object_bytes,
            4,
        )
        .await?;
        out.push(CycleAccount {
            account: account(
                &name,
                &ctx.kubeconfig(j % clusters)?,
                vec![name.clone()],
                &[],
            ),
            direct: ctx.kubeconfig_path(j % clusters)?,
            name,
        });
    }
    Ok(out)
}

/// One kubectl process of a cycle: its kubeconfig, discovery cache and arguments.
struct Run {
    kubeconfig: PathBuf,
    cache: PathBuf,
    args: Vec<String>,
}

/// The commands of one account's cycle in namespace `ns`.
fn commands(ns: &str) -> [Vec<String>; 3] {
    let owned = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    [
        owned(&["get", KINDS, "-n", ns, "-o", "json"]),
        owned(&[
            "get",
            KINDS,
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/managed-by=spinnaker",
            "-o",
            "json",
        ]),
        owned(&["get", "namespace", ns, "-o", "json"]),
    ]
}

/// Runs the cycle of every account, each with its kubeconfig from `kubeconfig_of`
/// and a discovery cache under `caches` (kept between cycles); the cycle's time. Every
/// command must succeed, and each account's kinds list must hold its ConfigMaps.
pub fn cycle(
    kubectl: &Path,
    accounts: &[CycleAccount],
    kubeconfig_of: &dyn Fn(&CycleAccount) -> PathBuf,
    caches: &Path,
) -> anyhow::Result<Duration> {
    let runs: Vec<Run> = accounts
        .iter()
        .flat_map(|a| {
            let kubeconfig = kubeconfig_of(a);
            let cache = caches.join(&a.name);
            commands(&a.name).into_iter().map(move |args| Run {
                kubeconfig: kubeconfig.clone(),
                cache: cache.clone(),
                args,
            })
        })
        .collect();
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..PARALLEL)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    while let Some(run) = runs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        one(kubectl, run)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| anyhow::anyhow!("a kubectl worker panicked"))?
        })
    })?;
    Ok(started.elapsed())
}

/// Runs one kubectl process; a kinds list must hold at least [`OBJECTS`] items.
fn one(kubectl: &Path, run: &Run) -> anyhow::Result<()> {
    let args = ["--cache-dir".to_owned(), run.cache.display().to_string()]
        .into_iter()
        .chain(run.args.iter().cloned());
    let out = scale_agent_e2e::kubectl::run(kubectl, &run.kubeconfig, args, None)?;
    if run.args[1] == KINDS && !run.args.iter().any(|a| a == "-l") {
        let list: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("kubectl {:?} printed no JSON", run.args))?;
        let n = list["items"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(
            n >= OBJECTS,
            "kubectl {:?} listed {n} objects, fewer than the namespace's {OBJECTS} ConfigMaps",
            run.args
        );
    }
    Ok(())
}
