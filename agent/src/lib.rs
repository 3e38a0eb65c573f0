//! The scale-agent agent: watches a group of Kubernetes clusters (one account each) and
//! streams every change to the hub, Spinnaker Clouddriver's side, and runs the deploy
//! operations the hub sends back.
//!
//! - [`config`]: the mounted config file and kubeconfigs, reloaded on change.
//! - [`leases`] and [`assignment`]: replicas of one shard split its accounts.
//! - [`session`]: the hub connection, reconnects, frame routing.
//! - [`account`], [`kinds`], [`watch`], [`objects`]: per-account discovery, watches, and
//!   what of each object is sent; [`cluster_client`]: one HTTP/2 connection per cluster;
//!   [`shared`]: one watch per kind for the accounts of one cluster and user.
//! - [`batch`], [`outbound`], [`budget`]: events into batches, batches onto the stream,
//!   bounded memory and backpressure.
//! - [`operations`]: apply, delete, patch, scale, rollout restart, get.
//! - [`proxy`]: Kubernetes API requests the hub carries, replayed against the cluster;
//!   [`upgrade`]: the upgraded connections of exec, attach and port-forward.
//! - [`report`]: what this replica tells the operator, through its Lease.
//! - [`tls`]: the hub TLS files, and reconnecting when they are renewed.

pub mod account;
pub mod admin;
pub mod assignment;
pub mod batch;
pub mod budget;
pub mod cli;
pub mod cluster_client;
pub mod config;
mod error;
pub mod kinds;
pub mod leases;
pub mod metrics;
pub mod objects;
pub mod operations;
pub mod outbound;
pub mod proxy;
pub mod report;
pub mod session;
pub mod shared;
pub mod state;
pub mod surface;
pub mod tls;
pub mod upgrade;
pub mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use error::{Error, Result};
use tokio::sync::watch as tokio_watch;

use crate::config::{AccountDesired, Snapshot};

/// The agent's `main`: parses `args` (the program name first), sets up logging and runs
/// the agent until SIGTERM or Ctrl-C. The image's `scale-agent` executable calls it.
pub fn main_with(args: impl IntoIterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    use clap::Parser as _;
    let args = cli::Args::parse_from(args);
    scale_agent_runtime::init_logging(args.log_format, "info,kube_client=warn");
    scale_agent_runtime::run_to_exit("scale-agent", run(args))
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub async fn run(args: cli::Args) -> Result<()> {
    let metrics = Arc::new(metrics::Metrics::default());
    let state = Arc::new(state::State::default());
    let config = config::watch(
        args.config.clone(),
        args.kubeconfig_dir.clone(),
        args.reload_interval,
    )?;
    let shard = config.borrow().shard.clone();
    tracing::info!(shard = %shard, replica = %args.replica_id, accounts = config.borrow().accounts.len(), "starting");

    let mgmt = kube::Client::try_default()
        .await
        .map_err(|source| Error::Kube {
            action: "connecting to the cluster the agent runs in (for membership Leases)".into(),
            source,
        })?;
    let membership = leases::Membership {
        namespace: args.namespace.clone(),
        shard: shard.name.clone(),
        replica: args.replica_id.clone(),
        lease_duration: args.lease_duration,
        renew_every: args.lease_renew_interval,
        pod_uid: args.pod_uid.clone(),
    };
    let (held_tx, held_rx) = tokio_watch::channel(BTreeMap::new());
    let report = report::run(state.clone(), held_rx);
    let members = leases::run(mgmt.clone(), membership.clone(), metrics.clone(), report);
    let held = held_accounts(
        config.clone(),
        members,
        args.replica_id.clone(),
        held_tx,
        state.clone(),
    );

    let admin = tokio::spawn(admin::serve(
        args.admin_addr,
        state.clone(),
        metrics.clone(),
    ));
    let (stop_tx, stop_rx) = tokio_watch::channel(false);
    let session = tokio::spawn(session::run(session::Agent {
        config,
        held,
        replica: args.replica_id.clone(),
        state,
        metrics,
        connections: Arc::default(),
        ops: Arc::new(operations::Operations::default()),
        keepalive: args.keepalive_interval,
        tls_poll: args.reload_interval,
        held_request_mib: args.max_held_request_mib,
        shutdown: stop_rx,
    }));

    tokio::select! {
        () = scale_agent_runtime::terminated() => tracing::info!("terminated: handing the accounts over"),
        r = admin => {
            if let Ok(Err(e)) = r {
                tracing::error!(addr = %args.admin_addr, error = %e, "admin server failed");
            }
        }
    }
    // Give the Lease up first so the other replicas take the accounts at once.
    leases::release(mgmt, &membership).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), session).await;
    Ok(())
}

/// The accounts of the config that this replica holds among the live members.
pub fn held(snapshot: &Snapshot, members: &[String], me: &str) -> BTreeMap<String, AccountDesired> {
    snapshot
        .accounts
        .iter()
        .filter(|(name, _)| assignment::holds(name, me, members))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The accounts this replica holds, kept current; `tx` (whose receivers the report
/// reads) is the channel they go to. Whether it is a member goes to `state` (readiness).
fn held_accounts(
    mut config: tokio_watch::Receiver<Arc<Snapshot>>,
    mut members: tokio_watch::Receiver<Vec<String>>,
    me: String,
    tx: tokio_watch::Sender<BTreeMap<String, AccountDesired>>,
    state: Arc<state::State>,
) -> tokio_watch::Receiver<BTreeMap<String, AccountDesired>> {
    let first = held(
        &config.borrow_and_update(),
        &members.borrow_and_update(),
        &me,
    );
    // What it holds is known before it counts as a member, so readiness never sees a
    // member with its accounts not yet decided.
    state.set_held(first.keys().cloned().collect());
    state.set_member(members.borrow().contains(&me));
    tx.send_replace(first);
    let rx = tx.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = config.changed() => if r.is_err() { return },
                r = members.changed() => if r.is_err() { return },
            }
            let next = held(
                &config.borrow_and_update(),
                &members.borrow_and_update(),
                &me,
            );
            state.set_held(next.keys().cloned().collect());
            state.set_member(members.borrow().contains(&me));
            tx.send_if_modified(|cur| {
                if *cur != next {
                    tracing::info!(accounts = ?next.keys().collect::<Vec<_>>(), "held accounts changed");
                    *cur = next;
                    true
                } else {
                    false
                }
            });
        }
    });
    rx
}
