//! scale-agent's operator: every AgentShard becomes its own agent Deployment, and account
//! names stay unique across every shard.
//!
//! - [`index`]: the uniqueness rule (claims index).
//! - [`children`]: what a shard becomes (agent config, ConfigMap, Secret, Deployment...).
//! - [`status`]: the status and Events, computed from what was observed.
//! - [`reconcile`]: one shard's reconcile (fetch, decide, apply, write status).
//! - [`controller`]: the watches and the kube-runtime Controller.
//! - [`webhook`]: the validating admission webhook and its certificate.
//! - [`leader`]: Lease leader election (only the leader reconciles).
//! - [`metrics`]: Prometheus metrics and the admin server.
//! - [`cli`], [`error`].

pub mod children;
pub mod cli;
pub mod controller;
pub mod error;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod status;
pub mod webhook;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::{Api, Client};
use scale_agent_crds::AgentShard;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::children::Defaults;
use crate::cli::Args;
use crate::controller::{Leading, TriggerSlot};
use crate::error::{Error, Result};
use crate::index::ClaimIndex;
use crate::leader::{Elector, LeaseConfig};
use crate::metrics::Metrics;
use crate::webhook::{CertSecret, Endpoint, WebhookServer};

/// Aborts the task when dropped.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the operator until SIGTERM or Ctrl-C.
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
    let metrics = Arc::new(Metrics::new());
    let _admin = Task(tokio::spawn({
        let metrics = metrics.clone();
        let addr = args.admin_addr;
        async move {
            if let Err(e) = metrics::serve_admin(addr, metrics).await {
                tracing::error!(error = %e, "admin server stopped");
                std::process::exit(2);
            }
        }
    }));

    let (store, writer) = reflector::store::<AgentShard>();
    let index = Arc::new(Mutex::new(ClaimIndex::new()));
    let slot: TriggerSlot = Arc::new(Mutex::new(None));
    let _watch = Task(tokio::spawn(controller::watch_shards(
        Api::all(client.clone()),
        writer,
        index.clone(),
        slot.clone(),
    )));
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
    let _webhook = Task(tokio::spawn({
        let client = client.clone();
        let store = store.clone();
        let metrics = metrics.clone();
        async move {
            if let Err(e) = server.run(client, store, metrics).await {
                tracing::error!(error = %e, "webhook stopped");
                std::process::exit(2);
            }
        }
    }));

    tokio::select! {
        r = store.wait_until_ready() => if r.is_err() { return Ok(()) },
        _ = shutdown() => return Ok(()),
    }
    metrics.set_ready(true);
    tracing::info!(shards = store.state().len(), "shard cache synced");

    let lease = LeaseConfig {
        namespace: args.leader_election_namespace.clone(),
        name: args.leader_election_name.clone(),
        identity: identity.clone(),
        duration: Duration::from_secs(u64::from(args.lease_duration_seconds.max(2))),
    };
    let elector = Elector::new(client.clone(), lease);
    let (leading_tx, mut leading_rx) = watch::channel(false);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: children::FIELD_MANAGER.to_owned(),
            instance: Some(identity.clone()),
        },
    );
    let defaults = Defaults {
        hub: args.default_hub.clone(),
        image: args.default_image.clone(),
        service_account: Some(args.default_service_account.clone()).filter(|s| !s.is_empty()),
        hub_tls_secret: args.default_hub_tls_secret.clone(),
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
                    index: index.clone(),
                    slot: slot.clone(),
                    defaults: defaults.clone(),
                    recorder: recorder.clone(),
                    metrics: metrics.clone(),
                }))));
            } else if !leading && running.is_some() {
                tracing::warn!("lost the lead: stopped reconciling");
                running = None;
            }
            if leading_rx.changed().await.is_err() {
                return;
            }
        }
    };
    let mut elector = elector;
    tokio::select! {
        _ = elector.run(leading_tx) => {}
        _ = manage => {}
        _ = shutdown() => {}
    }
    tracing::info!("shutting down");
    elector.release().await;
    Ok(())
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

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
