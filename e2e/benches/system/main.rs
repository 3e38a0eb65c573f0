//! System benchmarks (`just bench`): the agent, hub and operator against the real test
//! control plane, at the scale users run, each figure next to a baseline measured in the
//! same run. The report goes to `bench-results/latest.json` (one object per figure) and
//! `bench-results/latest.md` (a table), with a timestamped copy of each.
//!
//! Scenarios (`--only a,b` runs some; `--help` lists the scale flags):
//! - `hub_ingest`: events per second the hub applies on one core (criterion, run by
//!   `just bench` before this binary; read from `target/criterion/hub_ingest`), and the
//!   hub's resident memory per cached object (from `initial_sync`'s hub);
//! - `initial_sync`: agent started cold → every object in the hub's cache, against bare
//!   paginated LISTs of the same objects by one client;
//! - `agent_memory_scaling`: the agent's peak and steady resident set and its
//!   connections at several account counts, against a kube-rs reflector per kind
//!   holding the same objects;
//! - `change_latency`: changes at a steady rate → the new resourceVersion in the hub's
//!   cache, through nginx, against a bare kube-rs watcher on the same API servers;
//! - `reconnect`: nginx restarted under load: relists, and time until the cache equals
//!   the clusters again;
//! - `kube_api`: `kubectl get -o json` of a 2,000-object account through the hub's
//!   Kubernetes API against the API server, change → seen by a watch through the
//!   hub against a watch on the API server, 50 clients listing a 10,000-object kind at
//!   once through the hub against the API server, the hub's watch latency while
//!   they do, and client-go's informer syncing that kind through the hub against the
//!   API server;
//! - `kube_api_interactive`: `kubectl port-forward` throughput (MiB/s of a TCP payload
//!   to an echo server and back) and `kubectl exec` round trips (a line through `cat`
//!   in one session) through the hub, against the same on the API server, with kwok as
//!   the node's kubelet;
//! - `armory_workload`: one agent, 100 accounts, deploys and deletes every minute, kwok
//!   running the pods, next to a reflector baseline under the same workload;
//! - `operator_convergence`: 1,000 AgentShards applied at once → every status final;
//!   then one shard edited.

mod armory;
mod baseline;
mod caching_cycle;
mod concurrent_list;
mod informer_sync;
mod ingest;
mod initial_sync;
mod interactive;
mod kube_api;
mod latency;
mod memory;
mod operator;
mod params;
mod reconnect;
mod stack;
mod watch_fan_out;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use scale_agent_e2e::bench::layout::{cluster_of, seeded};
use scale_agent_e2e::bench::report::{Figure, Load, Report, ScenarioRun, one_line};
use scale_agent_e2e::bench::sampler::LoadSampler;
use scale_agent_e2e::bench::{procfs, seed};
use scale_agent_e2e::{Env, Options};
use serde_json::{Value, json};

use crate::params::{Params, SCENARIOS};

/// The cluster the operator scenario uses: an API server of its own, with no
/// controllers (the agent pods need not run there).
pub const OPERATOR_CLUSTER: &str = "operators";

/// What every scenario gets.
pub struct Ctx {
    /// The control plane.
    pub env: Env,
    /// The command line.
    pub p: Params,
    /// Target clusters the accounts share (`cluster-1` ...), in order.
    pub clusters: Vec<String>,
    /// ConfigMaps in each seeded namespace.
    pub seeded_per_namespace: usize,
}

impl Ctx {
    /// The admin kubeconfig text of target cluster `i` (of the shared ones).
    pub fn kubeconfig(&self, i: usize) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.kubeconfig_path(i)?)?)
    }

    /// The admin kubeconfig file of target cluster `i`.
    pub fn kubeconfig_path(&self, i: usize) -> anyhow::Result<PathBuf> {
        let name = &self.clusters[i % self.clusters.len()];
        Ok(self
            .env
            .cp
            .target(name)
            .with_context(|| format!("no cluster {name}"))?
            .kubeconfig
            .clone())
    }

    /// A fresh client of target cluster `i`.
    pub async fn client(&self, i: usize) -> anyhow::Result<kube::Client> {
        Ok(scale_agent_e2e::kubeconfig::client(&self.kubeconfig_path(i)?).await?)
    }

    /// Port of each shared target cluster's API server → its index.
    pub fn cluster_ports(&self) -> BTreeMap<u16, usize> {
        self.clusters
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let server = &self.env.cp.target(name)?.server;
                Some((server.rsplit(':').next()?.parse().ok()?, i))
            })
            .collect()
    }

    /// Parameters every figure of a streaming scenario shares.
    pub fn stream_params(&self) -> BTreeMap<String, Value> {
        BTreeMap::from([
            ("clusters".to_string(), json!(self.p.clusters)),
            ("object_bytes".to_string(), json!(self.p.object_bytes)),
            (
                "path".to_string(),
                json!("agent → nginx (TLS, client certificate) → hub"),
            ),
            (
                "budget".to_string(),
                json!("default (concurrentSyncs 4, maxBufferedBytes 64Mi)"),
            ),
        ])
    }
}

fn main() -> ExitCode {
    let params = Params::parse();
    if let Some(spec) = &params.baseline_reflector {
        return match baseline::main(spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("reflector baseline: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // The measured components log at info: debug logging would cost them CPU the
    // figures would then include. The variables are read when they start, so set them
    // for this process by starting it again (setting them in-process is unsafe).
    if std::env::var_os("AGENT_LOG").is_none() || std::env::var_os("OPERATOR_LOG").is_none() {
        let status = std::env::current_exe().and_then(|exe| {
            std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env(
                    "AGENT_LOG",
                    std::env::var("AGENT_LOG").unwrap_or_else(|_| "info".into()),
                )
                .env(
                    "OPERATOR_LOG",
                    std::env::var("OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
                )
                .status()
        });
        return match status {
            Ok(s) if s.success() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("starting the benchmark: {e}");
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,kube=warn,kube_client=off")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(params));
    // A task still running must not keep the process from exiting.
    rt.shutdown_timeout(Duration::from_secs(10));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(p: Params) -> anyhow::Result<()> {
    let unknown = p.unknown_scenarios();
    anyhow::ensure!(
        unknown.is_empty(),
        "no scenario {unknown:?}; the scenarios are {SCENARIOS:?}"
    );
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let load_before = procfs::load_average().unwrap_or(0.0);
    let load = LoadSampler::start();
    let mut figures: Vec<Figure> = Vec::new();
    let mut runs: Vec<ScenarioRun> = Vec::new();
    let mut shared = BTreeMap::new();

    if p.runs("hub_ingest") {
        let t = Instant::now();
        let (f, error) = settle("hub_ingest", ingest::run(&p).await, ingest::names());
        figures.extend(f);
        runs.push(ScenarioRun {
            name: "hub_ingest".into(),
            seconds: t.elapsed().as_secs_f64(),
            error,
        });
    }
    let on_cluster: Vec<&str> = SCENARIOS
        .iter()
        .copied()
        .filter(|s| *s != "hub_ingest" && p.runs(s))
        .collect();
    if !on_cluster.is_empty() {
        let ctx = start(p.clone(), &mut shared).await?;
        for s in on_cluster {
            tracing::info!(scenario = s, "running");
            let t = Instant::now();
            let (f, error) = match s {
                "initial_sync" => settle(s, initial_sync::run(&ctx).await, initial_sync::names()),
                "agent_memory_scaling" => settle(s, memory::run(&ctx).await, memory::names(&p)),
                "change_latency" => settle(s, latency::run(&ctx).await, latency::names()),
                "reconnect" => settle(s, reconnect::run(&ctx).await, reconnect::names()),
                "kube_api" => settle(s, kube_api::run(&ctx).await, kube_api::names()),
                "kube_api_interactive" => {
                    settle(s, interactive::run(&ctx).await, interactive::names())
                }
                "armory_workload" => settle(s, armory::run(&ctx).await, armory::names()),
                "operator_convergence" => settle(s, operator::run(&ctx).await, operator::names()),
                _ => (Vec::new(), None),
            };
            if let Some(e) = &error {
                tracing::error!(scenario = s, error = %one_line(e, 2000), "scenario failed");
            }
            figures.extend(f);
            runs.push(ScenarioRun {
                name: s.into(),
                seconds: t.elapsed().as_secs_f64(),
                error,
            });
        }
        if p.keep_run_dir {
            eprintln!(
                "the run folder is kept: {}",
                ctx.env.cp.keep_run_dir().display()
            );
        }
    }
    if p.runs("hub_ingest") && !figures.iter().any(|f| f.name == ingest::RSS_PER_OBJECT) {
        figures.push(Figure::not_measured(
            "hub_ingest",
            ingest::RSS_PER_OBJECT,
            "KiB",
            "measured on the hub of initial_sync, which did not run or failed",
        ));
    }

    let samples = load.samples();
    let mean = if samples.is_empty() {
        load_before
    } else {
        samples.iter().sum::<f64>() / samples.len() as f64
    };
    let report = Report {
        command: std::env::var("BENCH_COMMAND").unwrap_or_else(|_| {
            let args: Vec<String> = std::env::args()
                .skip(1)
                .filter(|a| a != "--bench")
                .collect();
            format!(
                "cargo bench -p scale-agent-e2e --bench system -- {}",
                args.join(" ")
            )
        }),
        commit: commit(),
        started_unix,
        seconds: started.elapsed().as_secs_f64(),
        cpus: procfs::cpus(),
        memory_mib: procfs::memory_total_mib(),
        load: Load {
            before: load_before,
            mean,
            max: samples.iter().copied().fold(load_before, f64::max),
            after: procfs::load_average().unwrap_or(0.0),
        },
        parameters: shared,
        scenarios: runs,
        figures,
    };
    write(&p.out, &report, started_unix)
}

/// A scenario's figures, or on failure a "not measured" entry for each figure it would
/// have made, and the error.
fn settle(
    scenario: &str,
    result: anyhow::Result<Vec<Figure>>,
    names: Vec<(String, &'static str)>,
) -> (Vec<Figure>, Option<String>) {
    match result {
        Ok(f) => (f, None),
        Err(e) => {
            let error = format!("{e:#}");
            let why = format!("the scenario failed: {}", one_line(&error, 300));
            let f = names
                .iter()
                .map(|(name, unit)| Figure::not_measured(scenario, name, unit, &why))
                .collect();
            (f, Some(error))
        }
    }
}

/// Starts the control plane and seeds the objects the selected scenarios share.
async fn start(p: Params, shared: &mut BTreeMap<String, Value>) -> anyhow::Result<Ctx> {
    let clusters: Vec<String> = (1..=p.clusters.max(1))
        .map(|i| format!("cluster-{i}"))
        .collect();
    let mut targets = clusters.clone();
    if p.runs("operator_convergence") {
        targets.push(OPERATOR_CLUSTER.into());
    }
    let t = Instant::now();
    let env = Env::start(Options {
        targets,
        nodes: 2,
        run_dir: None,
    })
    .await?;
    shared.insert(
        "control_plane_start_seconds".into(),
        json!(t.elapsed().as_secs_f64()),
    );
    seed::namespace(&env.cp.client().await?, stack::LEASE_NAMESPACE).await?;
    let ctx = Ctx {
        env,
        seeded_per_namespace: p.objects_per_account,
        clusters,
        p,
    };
    let namespaces = ctx.p.seeded_namespaces();
    if namespaces > 0 {
        tracing::info!(
            namespaces,
            per_namespace = ctx.seeded_per_namespace,
            "seeding ConfigMaps"
        );
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..ctx.clusters.len() {
            let batches: Vec<seed::Batch> = (0..namespaces)
                .filter(|i| cluster_of(*i, ctx.clusters.len()) == c)
                .map(|i| seed::Batch {
                    namespace: seeded(i),
                    prefix: "obj".into(),
                    count: ctx.seeded_per_namespace,
                })
                .collect();
            let client = ctx.client(c).await?;
            let (bytes, workers) = (ctx.p.object_bytes, ctx.p.seed_workers);
            tasks.spawn(async move { seed::configmaps(&client, &batches, bytes, workers).await });
        }
        let mut created = 0;
        while let Some(r) = tasks.join_next().await {
            created += r??.0;
        }
        let secs = t.elapsed().as_secs_f64();
        tracing::info!(created, seconds = secs, "seeded");
        shared.insert("seeded_objects".into(), json!(created));
        shared.insert("seeded_namespaces".into(), json!(namespaces));
        shared.insert("seed_seconds".into(), json!(secs));
        shared.insert(
            "seed_creates_per_second".into(),
            json!(created as f64 / secs.max(1e-9)),
        );
    }
    Ok(ctx)
}

/// `git rev-parse --short HEAD`, with `-dirty` when the checkout has changes.
fn commit() -> Option<String> {
    let root = workspace_root();
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if hash.is_empty() {
        return None;
    }
    let dirty = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Writes the report as `latest.{json,md}` and `system-<time>.{json,md}` in `out`
/// (relative to the workspace root); for `bench-results/`, also the figures the README
/// and docs/performance.md show.
fn write(out: &Path, report: &Report, stamp: u64) -> anyhow::Result<()> {
    let dir = if out.is_absolute() {
        out.to_path_buf()
    } else {
        workspace_root().join(out)
    };
    std::fs::create_dir_all(&dir)?;
    let json = report.to_json();
    let md = report.to_markdown();
    for (name, text) in [
        ("latest.json".to_string(), &json),
        ("latest.md".to_string(), &md),
        (format!("system-{stamp}.json"), &json),
        (format!("system-{stamp}.md"), &md),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{md}\nwritten to {}", dir.join("latest.md").display());
    // The documents show the figures of the report in bench-results/, never of one
    // written elsewhere.
    if dir == workspace_root().join("bench-results") {
        scale_agent_e2e::bench::report::publish(&workspace_root(), report)
            .map_err(|e| anyhow::anyhow!("writing the figures into the documents: {e}"))?;
    }
    let failed: Vec<&str> = report
        .scenarios
        .iter()
        .filter(|s| s.error.is_some())
        .map(|s| s.name.as_str())
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "scenarios failed: {failed:?} (see the report)"
    );
    Ok(())
}

/// Seconds as f64, for figures.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// KiB → MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
