//! The hub session: connect (HTTP/2, TLS or mTLS, keepalive pings), say Hello, register
//! the accounts this replica holds, stream them, run operations, and reconnect with
//! capped exponential backoff and jitter when the stream breaks. A Drain from the hub
//! (maximum connection age, shutdown) reconnects at once without counting as a failure.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use scale_agent_crds::HubConfig;
use scale_agent_proto::v1::agent_hub_client::AgentHubClient;
use scale_agent_proto::v1::{
    AccountResult, Heartbeat, Hello, ShardRef, Unregister, UnregisterReason, agent_frame::Frame,
    hub_frame,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::account::{self, AccountCtx};
use crate::batch::Limits;
use crate::budget::Budget;
use crate::cluster_client::Connections;
use crate::config::{AccountDesired, Snapshot};
use crate::metrics::Metrics;
use crate::operations::Operations;
use crate::outbound::Outbound;
use crate::proxy::Proxy;
use crate::state::State;
use crate::{Error, Result};

/// Largest frame either side sends (Kubernetes objects reach 1.5 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// The optional protocol features this agent speaks (Hello.capabilities).
pub const CAPABILITIES: &[&str] = &[
    WATCH_PROGRESS,
    scale_agent_proto::kube_api::CAPABILITY,
    scale_agent_proto::kube_api::UPGRADE_CAPABILITY,
    crate::surface::CAPABILITY,
];
/// Watch bookmarks are passed on to the hub as WatchProgress frames.
pub const WATCH_PROGRESS: &str = "watch-progress";

/// Everything a session needs.
pub struct Agent {
    /// The config files.
    pub config: watch::Receiver<Arc<Snapshot>>,
    /// The accounts this replica holds now.
    pub held: watch::Receiver<BTreeMap<String, AccountDesired>>,
    /// This replica's id.
    pub replica: String,
    /// Shared state.
    pub state: Arc<State>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The connections to the clusters, kept across sessions.
    pub connections: Arc<Connections>,
    /// Operation runner.
    pub ops: Arc<Operations>,
    /// HTTP/2 keepalive interval.
    pub keepalive: Duration,
    /// How often the hub TLS files are checked for a renewed certificate.
    pub tls_poll: Duration,
    /// MiB of Kubernetes API request bodies held per session at most.
    pub held_request_mib: u32,
    /// Set to true to end the session for good.
    pub shutdown: watch::Receiver<bool>,
}

enum End {
    Shutdown,
    Reconnect {
        after: Duration,
    },
    /// An established session broke (the hub or the path went away): the next attempt
    /// starts the backoff over, so rare blips never inherit a long wait.
    Broken(Error),
}

/// Keeps a session with the hub until shutdown.
pub async fn run(mut agent: Agent) {
    let mut failures: u32 = 0;
    loop {
        let hub = agent.config.borrow().hub.clone();
        let budget = {
            let b = &agent.config.borrow().budget;
            Budget::new(b.concurrent_syncs, b.max_buffered_bytes)
        };
        let span = tracing::info_span!("session", hub = %hub.address);
        let result = tracing::Instrument::instrument(session(&mut agent, &hub, budget), span).await;
        agent.state.set_connected(false);
        agent.state.set_hub_error(match &result {
            Ok(End::Broken(e)) | Err(e) => Some(e.to_string()),
            Ok(End::Reconnect { .. }) => Some("reconnecting".to_owned()),
            Ok(End::Shutdown) => Some("shutting down".to_owned()),
        });
        match result {
            Ok(End::Shutdown) => return,
            Ok(End::Reconnect { after }) => {
                failures = 0;
                tokio::time::sleep(after).await;
            }
            Ok(End::Broken(e)) => {
                failures = 1;
                let wait = backoff(failures);
                tracing::warn!(error = %e, "hub session broke; reconnecting in {wait:?}");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = agent.shutdown.changed() => return,
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                agent.metrics.connect_failures.inc();
                let wait = backoff(failures);
                tracing::warn!(error = %e, attempt = failures, "hub session failed; reconnecting in {wait:?}");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = agent.shutdown.changed() => return,
                }
            }
        }
        if *agent.shutdown.borrow() {
            return;
        }
    }
}

/// Capped exponential backoff with jitter: uniformly in [d/2, d], d = 0.5 s · 2^(n-1),
/// at most 30 s. Jitter spreads many agents reconnecting after one outage.
pub fn backoff(failures: u32) -> Duration {
    let exp = 500u64.saturating_mul(1u64 << failures.min(16).saturating_sub(1));
    let d = exp.min(30_000);
    let ms = rand::rng().random_range(d / 2..=d);
    Duration::from_millis(ms)
}

/// Connects to the hub; returns the channel and the fingerprint of the TLS files it
/// used, if any.
async fn endpoint(hub: &HubConfig, keepalive: Duration) -> Result<(Channel, Option<u64>)> {
    let err = |message: String| Error::Hub {
        address: hub.address.clone(),
        message,
    };
    let scheme = if hub.tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{}", hub.address))
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(keepalive)
        .keep_alive_timeout(keepalive.min(Duration::from_secs(20)))
        .keep_alive_while_idle(true);
    let mut fingerprint = None;
    if let Some(tls) = &hub.tls {
        let material = crate::tls::Material::read(tls)?;
        fingerprint = Some(material.fingerprint());
        let host = hub
            .address
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&hub.address);
        let cfg = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(material.ca))
            .identity(Identity::from_pem(material.cert, material.key))
            .domain_name(tls.server_name.clone().unwrap_or_else(|| host.to_string()));
        ep = ep.tls_config(cfg).map_err(|e| Error::Tls(e.to_string()))?;
    }
    let channel = ep
        .connect()
        .await
        .map_err(|e| err(format!("connecting: {e}")))?;
    Ok((channel, fingerprint))
}

struct Running {
    task: JoinHandle<()>,
    results: mpsc::Sender<AccountResult>,
    desired: AccountDesired,
}

async fn session(agent: &mut Agent, hub: &HubConfig, budget: Budget) -> Result<End> {
    let hub_err = |message: String| Error::Hub {
        address: hub.address.clone(),
        message,
    };
    let (channel, tls_fingerprint) = endpoint(hub, agent.keepalive).await?;
    agent.metrics.connects.inc();
    let (tx, rx) = mpsc::channel(256);
    let out = Outbound::new(tx, budget.clone(), Limits::default());
    let shard = agent.config.borrow().shard.clone();
    out.send(Frame::Hello(Hello {
        protocol_version: scale_agent_proto::PROTOCOL_VERSION,
        shard: Some(ShardRef {
            namespace: shard.namespace.clone(),
            name: shard.name.clone(),
        }),
        replica_id: agent.replica.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
    }))
    .await
    .map_err(|e| hub_err(e.to_string()))?;
    let mut client = AgentHubClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut inbound = client
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|s| hub_err(format!("{}: {}", s.code(), s.message())))?
        .into_inner();
    let welcome = tokio::time::timeout(Duration::from_secs(15), inbound.message())
        .await
        .map_err(|_| hub_err("no Welcome within 15s".into()))?
        .map_err(|s| hub_err(format!("{}: {}", s.code(), s.message())))?;
    let (heartbeat_every, watch_progress, api_surface) = match welcome.and_then(|f| f.frame) {
        Some(hub_frame::Frame::Welcome(w)) => {
            // Only what both sides listed may be used.
            let watch_progress = w.capabilities.iter().any(|c| c == WATCH_PROGRESS);
            let api_surface = w
                .capabilities
                .iter()
                .any(|c| c == crate::surface::CAPABILITY);
            tracing::info!(session = %w.session_id, hub = %w.hub_id, watch_progress, api_surface, "connected to the hub");
            let heartbeat = w
                .heartbeat_interval
                .and_then(|d| Duration::try_from(d).ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(10));
            (heartbeat, watch_progress, api_surface)
        }
        other => return Err(hub_err(format!("expected Welcome, got {other:?}"))),
    };
    agent.state.set_connected(true);
    agent.state.set_hub_error(None);
    agent.state.set_budget(Some(budget.clone()));
    // A renewed client certificate: reconnect with it (watches resume where they were).
    let tls_renewed = async {
        match (&hub.tls, tls_fingerprint) {
            (Some(tls), Some(current)) => {
                crate::tls::changed(tls.clone(), current, agent.tls_poll).await;
            }
            _ => std::future::pending().await,
        }
    };
    tokio::pin!(tls_renewed);

    let ctx = AccountCtx {
        out: out.clone(),
        watch_progress,
        api_surface,
        budget,
        metrics: agent.metrics.clone(),
        state: agent.state.clone(),
        connections: agent.connections.clone(),
    };
    let mut running: HashMap<String, Running> = HashMap::new();
    let bodies = crate::proxy::HeldBodies::new(agent.held_request_mib, &agent.metrics);
    let proxy = Proxy::new(
        agent.state.clone(),
        agent.metrics.clone(),
        out.clone(),
        bodies,
    );
    let held = agent.held.borrow_and_update().clone();
    reconcile(&ctx, &mut running, &held, &configured(&agent.config)).await;
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    let end = loop {
        tokio::select! {
            msg = inbound.message() => {
                let frame = match msg {
                    Ok(Some(f)) => f,
                    Ok(None) => break Ok(End::Broken(hub_err("the hub closed the stream".into()))),
                    Err(s) => break Ok(End::Broken(hub_err(format!("{}: {}", s.code(), s.message())))),
                };
                match frame.frame {
                    Some(hub_frame::Frame::RegisterResult(r)) => {
                        for a in r.accounts {
                            match running.get(&a.name) {
                                Some(run) => { let _ = run.results.try_send(a); }
                                None => tracing::debug!(account = %a.name, "result for an account not running"),
                            }
                        }
                    }
                    Some(hub_frame::Frame::Operation(op)) => {
                        let ops = agent.ops.clone();
                        let cluster = agent.state.cluster(&op.account);
                        let out = out.clone();
                        let metrics = agent.metrics.clone();
                        tokio::spawn(async move {
                            let span = tracing::info_span!("operation", id = %op.id, account = %op.account);
                            let result = tracing::Instrument::instrument(ops.run(op, cluster), span).await;
                            metrics.operations.inc();
                            let _ = out.send(Frame::OperationResult(result)).await;
                        });
                    }
                    Some(hub_frame::Frame::Ack(a)) => out.ledger().acked(&a.account, a.sequence),
                    Some(hub_frame::Frame::KubeRequest(r)) => proxy.request(r),
                    Some(hub_frame::Frame::KubeRequestBody(b)) => proxy.body(b),
                    Some(hub_frame::Frame::KubeWindow(w)) => proxy.window(w),
                    Some(hub_frame::Frame::KubeCancel(c)) => proxy.cancel(c),
                    Some(hub_frame::Frame::Drain(d)) => {
                        let after = d.reconnect_after.and_then(|d| Duration::try_from(d).ok()).unwrap_or_default();
                        tracing::info!(reason = d.reason, message = %d.message, "the hub asked to reconnect");
                        break Ok(End::Reconnect { after: after.min(Duration::from_secs(30)) });
                    }
                    Some(hub_frame::Frame::Heartbeat(_)) | Some(hub_frame::Frame::Welcome(_)) | None => {}
                }
            }
            changed = agent.held.changed() => {
                if changed.is_err() { break Ok(End::Shutdown); }
                let held = agent.held.borrow_and_update().clone();
                reconcile(&ctx, &mut running, &held, &configured(&agent.config)).await;
            }
            changed = agent.config.changed() => {
                if changed.is_err() { break Ok(End::Shutdown); }
                let next = agent.config.borrow_and_update().clone();
                if next.hub != *hub {
                    tracing::info!("hub settings changed; reconnecting");
                    break Ok(End::Reconnect { after: Duration::ZERO });
                }
            }
            () = &mut tls_renewed => {
                tracing::info!("the hub TLS files changed; reconnecting with them");
                break Ok(End::Reconnect { after: Duration::ZERO });
            }
            _ = heartbeat.tick() => {
                let _ = out.send(Frame::Heartbeat(Heartbeat { sent_at: Some(std::time::SystemTime::now().into()), reply_to: None })).await;
            }
            _ = agent.shutdown.changed() => break Ok(End::Shutdown),
        }
    };
    for (_, r) in running.drain() {
        r.task.abort();
    }
    agent.state.retain(&[]);
    agent.state.set_budget(None);
    end
}

/// The account names of the config file now.
fn configured(config: &watch::Receiver<Arc<Snapshot>>) -> BTreeSet<String> {
    config.borrow().accounts.keys().cloned().collect()
}

/// Starts, stops or restarts account tasks so that exactly `held` run, each with its
/// current settings; untouched accounts keep streaming. An account that left `held` but
/// is still `configured` moved to another replica (HANDOFF: the hub keeps its cache and
/// binding for the new holder); one that left the config is REMOVED.
async fn reconcile(
    ctx: &AccountCtx,
    running: &mut HashMap<String, Running>,
    held: &BTreeMap<String, AccountDesired>,
    configured: &BTreeSet<String>,
) {
    let stale: Vec<String> = running
        .iter()
        .filter(|(name, r)| held.get(*name) != Some(&r.desired))
        .map(|(name, _)| name.clone())
        .collect();
    if !stale.is_empty() {
        for name in &stale {
            if let Some(r) = running.remove(name) {
                r.task.abort();
                ctx.out.ledger().forget(name);
                ctx.state.remove_cluster(name);
                ctx.state.clear_problem(name);
            }
        }
        let gone = stale.iter().filter(|n| !held.contains_key(*n));
        let (moved, removed): (Vec<String>, Vec<String>) =
            gone.cloned().partition(|n| configured.contains(n));
        for (names, reason, message) in [
            (
                moved,
                UnregisterReason::Handoff,
                "moved to another replica of the shard",
            ),
            (
                removed,
                UnregisterReason::Removed,
                "removed from the shard's accounts",
            ),
        ] {
            if names.is_empty() {
                continue;
            }
            tracing::info!(accounts = ?names, ?reason, "unregistering");
            let _ = ctx
                .out
                .send(Frame::Unregister(Unregister {
                    account_names: names,
                    reason: reason as i32,
                    message: message.into(),
                }))
                .await;
        }
    }
    for (name, desired) in held {
        if running.contains_key(name) {
            continue;
        }
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(account::run(ctx.clone(), desired.clone(), rx));
        running.insert(
            name.clone(),
            Running {
                task,
                results: tx,
                desired: desired.clone(),
            },
        );
    }
    ctx.state.set_held(held.keys().cloned().collect());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for n in 1..40 {
            let d = backoff(n);
            assert!(d <= Duration::from_secs(30), "{n}: {d:?}");
            assert!(d >= Duration::from_millis(250), "{n}: {d:?}");
        }
        let late: Vec<Duration> = (0..20).map(|_| backoff(20)).collect();
        assert!(late.iter().any(|d| *d != late[0]), "no jitter: {late:?}");
        assert!(late.iter().all(|d| *d >= Duration::from_secs(15)));
    }
}

#[cfg(test)]
mod reconcile_tests {
    use super::*;
    use scale_agent_crds::AccountConfig;

    fn desired(name: &str) -> AccountDesired {
        AccountDesired {
            config: AccountConfig::new(name),
            kubeconfig: Ok(Default::default()),
        }
    }

    #[tokio::test]
    async fn an_account_moved_to_another_replica_is_handed_off_not_removed() {
        let (tx, mut rx) = mpsc::channel(8);
        let budget = Budget::new(1, 1024);
        let ctx = AccountCtx {
            out: Outbound::new(tx, budget.clone(), Limits::default()),
            watch_progress: false,
            api_surface: false,
            budget,
            metrics: Arc::default(),
            state: Arc::default(),
            connections: Arc::default(),
        };
        let mut running = HashMap::new();
        for name in ["moved", "deleted"] {
            running.insert(
                name.to_string(),
                Running {
                    task: tokio::spawn(std::future::pending()),
                    results: mpsc::channel(1).0,
                    desired: desired(name),
                },
            );
        }
        // Neither is held any more; only "moved" is still in the config.
        let configured = BTreeSet::from(["moved".to_string()]);
        reconcile(&ctx, &mut running, &BTreeMap::new(), &configured).await;
        assert!(running.is_empty(), "both tasks stop");
        let mut reasons = BTreeMap::new();
        while let Ok(f) = rx.try_recv() {
            if let Some(Frame::Unregister(u)) = f.frame {
                for n in u.account_names {
                    reasons.insert(n, UnregisterReason::try_from(u.reason).unwrap_or_default());
                }
            }
        }
        assert_eq!(reasons.get("moved"), Some(&UnregisterReason::Handoff));
        assert_eq!(reasons.get("deleted"), Some(&UnregisterReason::Removed));
    }
}
