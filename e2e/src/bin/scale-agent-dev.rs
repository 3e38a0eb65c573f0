//! `scale-agent-dev up`: runs the local development environment of `just up` in the
//! foreground until SIGTERM or Ctrl-C: the real control plane with target clusters, the
//! AgentShard CRD installed, and shell-sourceable settings in `<dir>/env`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use scale_agent_e2e::certs::Pki;
use scale_agent_e2e::clouddriver::{Clouddriver, Running, Settings};
use scale_agent_e2e::hub::{HubOptions, HubProcess};
use scale_agent_e2e::hubstack::{
    ApiToken, HOST_SUFFIX, agents_pki, behind_nginx, nginx_in_front, random_secret, write_private,
};
use scale_agent_e2e::nginx::{Mode, Nginx};
use scale_agent_e2e::pods::{PodRunner, RunnerConfig};
use scale_agent_e2e::postgres::Postgres;
use scale_agent_e2e::{ControlPlane, Error, Options, Result, workspace_binary};

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
    // The hub (Clouddriver's side) and nginx in front of it; with
    // SCALE_AGENT_HUB_REPLICAS=2 (or more), that many replicas sharing PostgreSQL.
    let stack = Stack::start(&cp, &run_dir, hub_replicas()?).await?;
    // kwok as the kubelet of one node per target cluster, with the pod `demo/web` on
    // it, so `kubectl exec` and `kubectl port-forward` through the hub work at once
    // (docs/clouddriver.md): exec runs local commands in `run/kubelets/work`,
    // port-forward reaches an echo server.
    let work = run_dir.join("kubelets").join("work");
    let mut kubelets = Vec::new();
    for t in &cp.targets {
        let kubelet = scale_agent_e2e::kubelet::with_pod(
            &cp.bins,
            &cp.pki,
            t,
            &format!("{}-node-0", t.name),
            &run_dir,
            &work,
            "demo",
            "web",
        )
        .await?;
        kubelets.push(kubelet);
    }
    // The operator issues every shard's agents a client certificate naming their shard,
    // from the agents' CA (the one nginx verifies agents with; not the API servers'
    // client CA): any shard applied, in any namespace, reaches the hub through nginx with
    // no manual step, and no agent certificate logs in to an API server.
    scale_agent_e2e::operator::ensure_namespace(&cp, scale_agent_e2e::operator::NAMESPACE)?;
    cp.apply(
        &stack
            .agents
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
    // The kubeconfig of the accounts' Kubernetes API on the hub, one context per
    // example account, written by the hub's own subcommand; and the same naming each
    // account by host name (for clients that drop a server URL's path).
    hub_kubeconfig(&stack, &dir.join("hub-kubeconfig"), &[])?;
    hub_kubeconfig(
        &stack,
        &dir.join("hub-kubeconfig-by-host"),
        &[format!("--host-suffix={HOST_SUFFIX}")],
    )?;

    let hub = stack.hubs.first().ok_or_else(|| Error::Invalid {
        what: "the hub".into(),
        message: "no replica started".into(),
    })?;
    let mut env = format!(
        "# Written by `just up`; source it: . .dev/env\n\
         export KUBECONFIG={}\n\
         export HUB_HTTP={}\n\
         export HUB_GRPC={}\n\
         export LB_GRPC={}\n\
         export HUB_KUBE_API={}\n\
         export HUB_API_TOKEN={}\n\
         export CLOUDDRIVER_URL={}\n",
        dir.join("kubeconfig").display(),
        hub.http,
        hub.grpc,
        stack.nginx.address,
        stack.kube_api,
        stack.api_token,
        stack.clouddriver.url(),
    );
    if let Some(url) = &stack.store_url {
        let replicas: Vec<&str> = stack.hubs.iter().map(|h| h.http.as_str()).collect();
        env.push_str(&format!(
            "export HUB_REPLICAS_HTTP=\"{}\"\nexport HUB_STORE={url}\n",
            replicas.join(" ")
        ));
    }
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
    drop(kubelets);
    drop(operator);
    drop(stack);
    drop(cp);
    Ok(())
}

/// The Secret (in the operator's namespace) holding the CA the operator issues agents'
/// client certificates from.
const AGENT_CA_SECRET: &str = "scale-agent-agent-ca";

/// The accounts of the example shards (`manifests/examples/`).
const EXAMPLE_ACCOUNTS: [&str; 4] = ["cluster-1", "cluster-2", "cluster-3", "team-b-sandbox"];

/// Writes the kubeconfig of the accounts' Kubernetes API with `scale-agent-hub
/// kubeconfig` (and `extra` flags).
fn hub_kubeconfig(stack: &Stack, out: &Path, extra: &[String]) -> Result<()> {
    let bin = workspace_binary("scale-agent-hub")?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("kubeconfig")
        .args(extra)
        .arg(format!("--server={}", stack.kube_api))
        .arg(format!("--token-file={}", stack.kube_api_token.display()))
        .arg(format!(
            "--certificate-authority={}",
            stack.kube_api_ca.display()
        ))
        .arg(format!("--output={}", out.display()));
    for account in EXAMPLE_ACCOUNTS {
        cmd.arg(format!("--account={account}"));
    }
    let output = cmd.output().map_err(|e| Error::io("running", &bin, e))?;
    if !output.status.success() {
        return Err(Error::Invalid {
            what: "scale-agent-hub kubeconfig".into(),
            message: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(())
}

/// How many hub replicas to run: `SCALE_AGENT_HUB_REPLICAS`, 1 by default (SQLite);
/// from 2 on they share a PostgreSQL database.
fn hub_replicas() -> Result<usize> {
    match std::env::var("SCALE_AGENT_HUB_REPLICAS") {
        Err(_) => Ok(1),
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n) if (1..=9).contains(&n) => Ok(n),
            _ => Err(Error::Invalid {
                what: format!("SCALE_AGENT_HUB_REPLICAS={text}"),
                message: "a number of hub replicas from 1 to 9".into(),
            }),
        },
    }
}

/// The hub replicas, their shared store, and the load balancer in front of them.
struct Stack {
    nginx: Nginx,
    /// The replicas (fields drop in order: nginx, then the hubs, then PostgreSQL).
    hubs: Vec<HubProcess>,
    /// The database the replicas share, when there are several.
    store_url: Option<String>,
    _postgres: Option<Postgres>,
    /// `https://127.0.0.1:<port>`: the accounts' Kubernetes API, served by the first
    /// replica with a certificate of its own (the hubs' gRPC is plain behind nginx,
    /// which terminates the agents' TLS).
    kube_api: String,
    /// The file holding the API's token.
    kube_api_token: PathBuf,
    /// The CA of the API's certificate.
    kube_api_ca: PathBuf,
    /// The JSON API's token for every account (`HUB_API_TOKEN`).
    api_token: String,
    /// The agents' CA (nginx's serving certificate, the agents' client certificates).
    agents: Pki,
    /// The stand-in of Clouddriver's account storage API the hub keeps the accounts'
    /// definitions in (`CLOUDDRIVER_URL`).
    clouddriver: Running,
}

impl Stack {
    async fn start(cp: &ControlPlane, run_dir: &Path, replicas: usize) -> Result<Stack> {
        let postgres = if replicas > 1 {
            tracing::info!("starting PostgreSQL, the store of {replicas} hub replicas");
            Some(Postgres::start(run_dir).await?)
        } else {
            None
        };
        let store_url = match &postgres {
            Some(pg) => Some(pg.database("scaleagent")?),
            None => None,
        };
        // The accounts' Kubernetes API: one token for every account.
        let token = random_secret()?;
        let tokens_file = run_dir.join("kube-api-tokens");
        write_private(&tokens_file, &format!("{token} *\n"))?;
        let kube_api_token = run_dir.join("kube-api-token");
        write_private(&kube_api_token, &format!("{token}\n"))?;
        let kube_api_port = scale_agent_e2e::ports::free_port()?;
        // Accounts by host name too (`<account>.hub.test`, chosen by the TLS server
        // name at 127.0.0.1): the certificate names `*.hub.test`.
        let wildcard = format!("*.{HOST_SUFFIX}");
        let kube_api_cert = cp
            .pki
            .issue_server("hub-kube-api", &["127.0.0.1", "localhost", &wildcard])?;
        // Agents come through nginx, which verifies their certificates and forwards
        // them. Every local process can connect from 127.0.0.1, so the address alone
        // proves nothing: nginx also sends a secret only it and the hubs know, and a
        // hub believes a forwarded certificate only with that secret and only when
        // the certificate chains to the agents' CA. A hub accepts an account only
        // from the AgentShard that owns it.
        let proxy_secret = random_secret()?;
        let secret_file = run_dir.join("hub-proxy-secret");
        write_private(&secret_file, &proxy_secret)?;
        // The JSON API: one token for every account, read by every replica.
        let api = ApiToken::write(run_dir)?;
        let agents = agents_pki(run_dir)?;
        // Clouddriver's account storage API (the e2e stand-in): the hub that serves the
        // accounts' Kubernetes API keeps a definition of every account there.
        let clouddriver = Clouddriver::new(Settings::default())
            .serve("127.0.0.1:0".parse().map_err(|e| Error::Invalid {
                what: "the stand-in Clouddriver's address".into(),
                message: format!("{e}"),
            })?)
            .await
            .map_err(|e| Error::io("serving the stand-in Clouddriver on", run_dir, e))?;
        let token_key = run_dir.join("clouddriver-token-key");
        write_private(&token_key, &random_secret()?)?;
        let mut hubs = Vec::new();
        for i in 1..=replicas {
            tracing::info!("starting hub replica {i} of {replicas}");
            let mut args = behind_nginx(&agents, Some(&secret_file));
            args.push("--authorize-shards=*".into());
            args.push(api.flag());
            if i == 1 {
                args.extend([
                    format!("--kube-api-addr=127.0.0.1:{kube_api_port}"),
                    format!("--kube-api-tokens-file={}", tokens_file.display()),
                    format!("--kube-api-tls-cert={}", kube_api_cert.cert_file.display()),
                    format!("--kube-api-tls-key={}", kube_api_cert.key_file.display()),
                    format!("--kube-api-host-suffix={HOST_SUFFIX}"),
                ]);
                // Only the replicas' leader writes to Clouddriver, and only this
                // replica serves the Kubernetes API the definitions name: with several
                // replicas the definitions are kept only while it leads.
                args.extend([
                    format!("--clouddriver-url={}", clouddriver.url()),
                    format!("--clouddriver-kube-api-server=https://127.0.0.1:{kube_api_port}"),
                    format!(
                        "--clouddriver-kube-api-ca-file={}",
                        cp.pki.ca_file.display()
                    ),
                    format!("--clouddriver-token-key-file={}", token_key.display()),
                ]);
            }
            if let Some(url) = &store_url {
                args.extend([format!("--store={url}"), format!("--hub-id=hub-{i}")]);
            }
            hubs.push(
                HubProcess::start(
                    HubOptions {
                        bin: workspace_binary("scale-agent-hub")?,
                        grace_period: "600s".into(),
                        store: store_url.is_none().then(|| run_dir.join("hub.sqlite")),
                        args,
                        kubeconfig: Some(cp.management.kubeconfig.clone()),
                    },
                    run_dir,
                )
                .await?,
            );
        }
        tracing::info!("starting nginx in front of the hub");
        let nginx = nginx_in_front(
            &agents,
            "lb",
            Mode::GrpcTls,
            hubs.iter().map(|h| h.grpc.clone()).collect(),
            Some(proxy_secret),
            run_dir,
        )
        .await?;
        Ok(Stack {
            nginx,
            hubs,
            store_url,
            _postgres: postgres,
            kube_api: format!("https://127.0.0.1:{kube_api_port}"),
            kube_api_token,
            kube_api_ca: cp.pki.ca_file.clone(),
            api_token: api.token,
            agents,
            clouddriver,
        })
    }
}

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
