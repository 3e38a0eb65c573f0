//! `scale-agent-dev up`: runs the local development environment of `just up` in the
//! foreground until SIGTERM or Ctrl-C: the real control plane with target clusters, the
//! AgentShard CRD installed, and shell-sourceable settings in `<dir>/env`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use scale_agent_e2e::hubstack::HubStack;
use scale_agent_e2e::pods::{PodRunner, RunnerConfig};
use scale_agent_e2e::{ControlPlane, Error, Options, Result};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Local development environment for scale-agent (used by `just up`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start everything and keep it running until SIGTERM or Ctrl-C.
    Up {
        /// Folder for the environment (kubeconfigs, env file, logs, data).
        #[arg(long, default_value = ".dev")]
        dir: PathBuf,
        /// Number of target clusters.
        #[arg(long, default_value_t = 3)]
        targets: usize,
        /// The AgentShard CRD to install.
        #[arg(long, default_value = "crds/agentshards.scaleagent.dev.yaml")]
        crd: PathBuf,
    },
}

/// Default log filter: the harness polls API servers that are still starting, and the
/// client logs each refused poll as an error.
const QUIET: &str = "info,kube_client::client::builder=off";

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| QUIET.into()),
        )
        .init();
    let Cli { command } = Cli::parse();
    let result = match command {
        Cmd::Up { dir, targets, crd } => up(&dir, targets, &crd).await,
    };
    if let Err(e) = result {
        tracing::error!("{e}");
        std::process::exit(1);
    }
}

async fn up(dir: &Path, targets: usize, crd: &Path) -> Result<()> {
    let dir = std::path::absolute(dir).map_err(|e| Error::io("resolving", dir, e))?;
    let run_dir = dir.join("run");
    // A previous run's data is not reused: certificates and ports are per run.
    if run_dir.exists() {
        scale_agent_e2e::process::kill_recorded_groups(&run_dir);
        std::fs::remove_dir_all(&run_dir).map_err(|e| Error::io("removing", &run_dir, e))?;
    }
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    tracing::info!("starting the control plane in {}", run_dir.display());
    let names: Vec<String> = (1..=targets).map(|i| format!("cluster-{i}")).collect();
    let mut cp = ControlPlane::start(Options {
        targets: names,
        nodes: 2,
        run_dir: Some(run_dir.clone()),
    })
    .await?;

    copy(&cp.management.kubeconfig, &dir.join("kubeconfig"))?;
    for t in &cp.targets {
        copy(
            &t.kubeconfig,
            &dir.join("clusters").join(format!("{}.kubeconfig", t.name)),
        )?;
    }
    tracing::info!("installing the AgentShard CRD from {}", crd.display());
    scale_agent_e2e::crd::install(&cp, crd)?;
    // The hub (Clouddriver's side) and nginx in front of it.
    let stack = HubStack::start(&cp, &run_dir, "600s", Some(run_dir.join("hub.sqlite"))).await?;
    // The operator issues every shard's agents a client certificate naming their shard,
    // from the run's CA (the one nginx verifies agents with): any shard applied, in any
    // namespace, reaches the hub through nginx with no manual step.
    scale_agent_e2e::operator::ensure_namespace(&cp, scale_agent_e2e::operator::NAMESPACE)?;
    cp.apply(
        &cp.pki
            .ca_secret_yaml(scale_agent_e2e::operator::NAMESPACE, AGENT_CA_SECRET)?,
    )?;
    // The operator, then the example shards (one conflicting pair).
    let operator = scale_agent_e2e::operator::up(
        &cp,
        Path::new("manifests/examples"),
        Some(&stack.nginx.address),
        Some(&format!(
            "{}/{AGENT_CA_SECRET}",
            scale_agent_e2e::operator::NAMESPACE
        )),
    )
    .await?;
    // A real agent process for every agent pod (kwok runs the pods, nothing runs their
    // containers).
    let pods = PodRunner::start(cp.client().await?, RunnerConfig::new(&cp, run_dir.clone())?);

    let env = format!(
        "# Written by `just up`; source it: . .dev/env\n\
         export KUBECONFIG={}\n\
         export HUB_HTTP={}\n\
         export HUB_GRPC={}\n\
         export LB_GRPC={}\n",
        dir.join("kubeconfig").display(),
        stack.hub.http,
        stack.hub.grpc,
        stack.nginx.address,
    );
    write(&dir.join("env"), &env)?;
    write(&ready, &std::process::id().to_string())?;
    tracing::info!("ready: . {}/env; kubectl get agentshards", dir.display());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("installing a SIGTERM handler for", &dir, e))?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                if let Err(e) = cp.check_running() {
                    tracing::error!("a component stopped: {e}");
                }
            }
        }
    }
    tracing::info!("stopping");
    let _ = std::fs::remove_file(&ready);
    drop(pods);
    drop(operator);
    drop(stack);
    drop(cp);
    Ok(())
}

/// The Secret (in the operator's namespace) holding the CA the operator issues agents'
/// client certificates from.
const AGENT_CA_SECRET: &str = "scale-agent-agent-ca";

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
    }
    std::fs::copy(from, to).map_err(|e| Error::io("copying to", to, e))?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io("writing", path, e))
}
