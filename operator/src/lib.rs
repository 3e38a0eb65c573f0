//! scale-agent's operator: every AgentShard becomes its own agent Deployment, and account
//! names stay unique across every shard.
//!
//! - [`claims_index`]: the claims index (the ownership rule of
//!   [`scale_agent_crds::claims`] over every shard, and the grants made since the
//!   statuses were written) and the one place reconcile triggers come from.
//! - [`decide`]: what one reconcile does, decided from what it fetched (pure).
//! - [`children`]: what a shard becomes (agent config, ConfigMap, Secret, Deployment...).
//! - [`replicas`]: the shard's agent replicas, from their Leases, and what they report
//!   about each account (pure).
//! - [`certs`]: the agents' client certificates, issued and renewed from a CA, and the
//!   checks of a TLS Secret a shard names (pure).
//! - [`policy`]: the images and ServiceAccounts a shard may ask for (pure).
//! - [`status`]: the status and Events, computed from what was observed.
//! - [`kubeconfigs`]: the accounts' kubeconfig Secrets as the operator checked them
//!   (versions and verdicts, never data), and whether a reconcile must read one (pure
//!   rule).
//! - [`applied`]: what the operator last applied of each child, and whether a child
//!   needs applying again (pure rule).
//! - [`apply`]: the reconciler's writes (server-side apply, status patches, Events).
//! - [`reconcile`]: one shard's reconcile (fetch, decide, apply).
//! - [`superseded`]: the shard versions the operator's own status writes replaced (a
//!   reconcile of one of them waits for the newer one).
//! - [`controller`]: the watches and the kube-runtime Controller.
//! - [`webhook`]: the validating admission webhook and its certificate.
//! - [`leader`]: Lease leader election (only the leader reconciles).
//! - [`metrics`]: Prometheus metrics and the admin server.
//! - [`migrate`]: `scale-agent migrate`, a Clouddriver configuration's Kubernetes
//!   accounts as AgentShards and kubeconfig Secrets (pure, but for its CLI).
//! - [`cli`], [`error`].

pub mod applied;
pub mod apply;
pub mod certs;
pub mod children;
pub mod claims_index;
pub mod cli;
pub mod controller;
pub mod decide;
pub mod error;
pub mod kubeconfigs;
pub mod leader;
pub mod metrics;
pub mod migrate;
pub mod namespaced;
pub mod policy;
pub mod reconcile;
pub mod replicas;
pub mod rollout;
pub mod status;
pub mod superseded;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use kube::core::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::{Api, Client};
use scale_agent_crds::AgentShard;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::children::Defaults;
use crate::cli::Args;
use crate::controller::{Leading, Undecodables};
use crate::error::{Error, Result};
use crate::leader::{Elector, LeaseConfig};
use crate::metrics::Metrics;
use crate::webhook::{CertSecret, Endpoint, WebhookServer};

/// The shortest Lease the operator takes: renewals come every fifth of it.
pub const MIN_LEASE_DURATION: Duration = Duration::from_secs(2);
/// The shortest lifetime of an agent certificate (renewed at two thirds of it).
pub const MIN_CERT_LIFETIME: Duration = Duration::from_secs(30);

/// Aborts the task when dropped.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The tasks the operator cannot run without; the first to end ends the operator.
#[derive(Default)]
struct Essential(JoinSet<(&'static str, Result<()>)>);

impl Essential {
    fn spawn<F>(&mut self, task: &'static str, f: F)
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        self.0.spawn(async move { (task, f.await) });
    }

    /// Waits for the first task to end: its error (every task is meant to run until
    /// the operator stops).
    async fn first_ended(&mut self) -> Error {
        match self.0.join_next().await {
            Some(Ok((task, Err(e)))) => Error::TaskEnded {
                task,
                reason: e.to_string(),
            },
            Some(Ok((task, Ok(())))) => Error::TaskEnded {
                task,
                reason: "it ended".to_owned(),
            },
            Some(Err(e)) => Error::TaskEnded {
                task: "task",
                reason: e.to_string(),
            },
            None => futures::future::pending().await,
        }
    }
}

/// The operator's `main`: parses `args` (the program name first), sets up logging and
/// runs the operator ([`run`]). Its own binary and the image's `scale-agent` executable
/// (as `scale-agent-operator`) call it.
pub fn main_with(args: impl IntoIterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    use clap::Parser as _;
    let args = Args::parse_from(args);
    scale_agent_runtime::init_logging(args.log_format, "info,kube_runtime=warn,kube_client=warn");
    scale_agent_runtime::run_to_exit("scale-agent-operator", run(args))
}

/// Runs the operator until SIGTERM or Ctrl-C, or until a task it cannot run without
/// ends; either way it gives its Lease up before returning.
pub async fn run(args: Args) -> Result<()> {
    let client = Client::try_default()
        .await
        .map_err(|e| Error::ClientConfig(e.to_string()))?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".to_owned()),
            std::process::id()
        )
    });
    tracing::info!(%identity, mode = ?args.webhook_mode, "scale-agent-operator starting");
    let metrics = Arc::new(Metrics::default());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: children::FIELD_MANAGER.to_owned(),
            instance: Some(identity.clone()),
        },
    );
    let (leading_tx, mut leading_rx) = watch::channel(false);
    let mut tasks = Essential::default();
    tasks.spawn(
        "admin server",
        metrics::serve_admin(args.admin_addr, metrics.clone()),
    );

    let (claims, index) = claims_index::channel();
    tasks.spawn("claims index", async move {
        index.await;
        Err(Error::IndexStopped)
    });
    let writer = reflector::store::Writer::<AgentShard>::default();
    let store = writer.as_reader();
    tasks.spawn("shard watch", {
        let watch = controller::watch_shards(
            Api::<DeserializeGuard<AgentShard>>::all(client.clone()),
            writer,
            claims.clone(),
            Undecodables::new(recorder.clone(), metrics.clone(), leading_rx.clone()),
        );
        async move {
            watch.await;
            Ok(())
        }
    });
    let _gauges = Task(tokio::spawn(controller::update_gauges(
        store.clone(),
        metrics.clone(),
    )));

    let endpoint = match &args.webhook_url {
        Some(url) => Endpoint::Url(url.clone()),
        None => {
            let (ns, name) = args
                .webhook_service
                .split_once('/')
                .unwrap_or(("scale-agent-system", args.webhook_service.as_str()));
            Endpoint::Service(ns.to_owned(), name.to_owned())
        }
    };
    let hosts = webhook_hosts(&endpoint);
    let server = WebhookServer {
        addr: args.webhook_addr,
        mode: args.webhook_mode,
        cert: CertSecret {
            namespace: args.leader_election_namespace.clone(),
            name: format!("{}-webhook-tls", args.leader_election_name),
            hosts,
        },
        config_name: Some(args.webhook_config_name.clone()).filter(|n| !n.is_empty()),
        endpoint,
    };
    tasks.spawn(
        "webhook",
        server.run(client.clone(), claims.clone(), metrics.clone()),
    );

    tokio::select! {
        r = store.wait_until_ready() => if r.is_err() { return Ok(()) },
        e = tasks.first_ended() => return Err(e),
        () = scale_agent_runtime::terminated() => return Ok(()),
    }
    metrics.set_ready(true);
    tracing::info!(shards = store.state().len(), "shard cache synced");

    let lease = LeaseConfig {
        namespace: args.leader_election_namespace.clone(),
        name: args.leader_election_name.clone(),
        identity: identity.clone(),
        duration: args.lease_duration.max(MIN_LEASE_DURATION),
    };
    let mut elector = Elector::new(client.clone(), lease);
    let agent_ca = args
        .agent_ca_secret
        .as_deref()
        .map(|s| {
            s.parse::<scale_agent_crds::ShardRef>().map_err(|_| {
                Error::ClientConfig(format!("--agent-ca-secret {s:?} is not namespace/name"))
            })
        })
        .transpose()?;
    let defaults = Defaults {
        hub: args.default_hub.clone(),
        image: args.default_image.clone(),
        service_account: Some(args.default_service_account.clone()).filter(|s| !s.is_empty()),
        hub_tls_secret: args.default_hub_tls_secret.clone(),
        allow_kubeconfig: scale_agent_crds::KubeconfigAllow(args.allow_kubeconfig.clone()),
        agent_ca,
        cert_issuer: args.agent_cert_issuer.clone(),
        cert_lifetime: args.agent_cert_lifetime.max(MIN_CERT_LIFETIME),
        allowed_images: policy::Allowed::new(args.allowed_images.clone()),
        allowed_service_accounts: policy::Allowed::new(args.allowed_service_accounts.clone()),
        agent_log_format: args.agent_log_format,
        max_rolling_shards: args.max_rolling_shards,
    };
    let manage = async {
        let mut running: Option<Task> = None;
        loop {
            let leading = *leading_rx.borrow_and_update();
            metrics.leader.set(i64::from(leading));
            if leading && running.is_none() {
                tracing::info!("leading: reconciling AgentShards");
                running = Some(Task(tokio::spawn(controller::run_controller(Leading {
                    client: client.clone(),
                    store: store.clone(),
                    claims: claims.clone(),
                    defaults: defaults.clone(),
                    recorder: recorder.clone(),
                    metrics: metrics.clone(),
                }))));
            } else if !leading && running.is_some() {
                tracing::warn!("lost the lead: stopped reconciling");
                running = None;
                claims.lead(None);
            }
            if leading_rx.changed().await.is_err() {
                return;
            }
        }
    };
    let outcome = tokio::select! {
        () = elector.run(leading_tx) => Ok(()),
        () = manage => Ok(()),
        e = tasks.first_ended() => Err(e),
        () = scale_agent_runtime::terminated() => Ok(()),
    };
    match &outcome {
        Ok(()) => tracing::info!("shutting down"),
        Err(e) => tracing::error!(error = %e, "shutting down"),
    }
    elector.release().await;
    outcome
}

/// The hosts the webhook's serving certificate names: loopback, the Service's DNS names,
/// and the host of --webhook-url.
fn webhook_hosts(endpoint: &Endpoint) -> Vec<String> {
    let mut hosts = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    match endpoint {
        Endpoint::Service(ns, name) => {
            hosts.push(format!("{name}.{ns}.svc"));
            hosts.push(format!("{name}.{ns}.svc.cluster.local"));
        }
        Endpoint::Url(url) => {
            let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
            let authority = rest.split('/').next().unwrap_or(rest);
            let host = match authority.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or(v6),
                None => authority
                    .rsplit_once(':')
                    .map(|(h, _)| h)
                    .unwrap_or(authority),
            };
            if !host.is_empty() && !hosts.iter().any(|h| h == host) {
                hosts.push(host.to_owned());
            }
        }
    }
    hosts
}
