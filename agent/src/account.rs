//! One account within a hub session: connect to its cluster, identify it, register it
//! with the hub, then stream each of its kinds until the session ends, the account is
//! removed, or the hub gives it to a newer session.
//!
//! What the hub caches must always equal what the account selects now. The hub returns,
//! per kind it caches, where to resume and the *selection* (a fingerprint of the
//! cluster, namespaces and filters) the cache was listed with: a kind resumes only when
//! the selection is the same, is relisted otherwise, and a kind the account no longer
//! watches is listed empty, so the hub drops it ([`plan`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::Discovery;
use scale_agent_crds::AccountConfig;
use scale_agent_proto::v1::{
    Account, AccountResult, GroupVersionKind, Register, RegisterReason, ResumePoint, StreamScope,
    SyncEnd, SyncMode, SyncStart, agent_frame::Frame,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::budget::Budget;
use crate::cluster_client::{AccountClients, Connections};
use crate::config::AccountDesired;
use crate::kinds;
use crate::metrics::{Metrics, RelistCause};
use crate::operations::Cluster;
use crate::outbound::{Closed, Outbound};
use crate::shared::Shared;
use crate::state::State;
use crate::watch::{self, KindCtx, Start};
use crate::{Error, Result};

/// What an account task needs from its session.
#[derive(Clone)]
pub struct AccountCtx {
    /// The session's sending half.
    pub out: Outbound,
    /// Whether the hub takes WatchProgress frames on this session.
    pub watch_progress: bool,
    /// Whether the hub takes ApiSurface frames on this session.
    pub api_surface: bool,
    /// The agent's limits.
    pub budget: Budget,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Shared state (clusters for operations, readiness).
    pub state: Arc<State>,
    /// The connections to the clusters, shared by accounts of the same transport.
    pub connections: Arc<Connections>,
}

/// Runs `desired` until cancelled (the task is aborted) or the session closes.
/// `results` delivers the hub's RegisterResults for this account.
pub async fn run(
    ctx: AccountCtx,
    desired: AccountDesired,
    mut results: mpsc::Receiver<AccountResult>,
) {
    let name = desired.config.name.clone();
    let span = tracing::info_span!("account", account = %name);
    let _ = tracing::Instrument::instrument(
        async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                // Boxed, as the discovery below: the account's task holds no room for
                // them while it streams.
                match Box::pin(connect(&ctx.connections, &desired)).await {
                    Ok((clients, account)) => {
                        backoff = Duration::from_secs(1);
                        match serve(&ctx, &desired, clients, account, &mut results).await {
                            Ok(wait) => {
                                tokio::time::sleep(wait).await;
                                // Answers to the previous registration are stale now.
                                while results.try_recv().is_ok() {}
                            }
                            Err(Closed) => return,
                        }
                    }
                    Err(e) => {
                        ctx.state.set_problem(&name, e.to_string());
                        tracing::error!(error = %e, "cannot reach the account's cluster; retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                    }
                }
            }
        },
        span,
    )
    .await;
}

/// What the account streams, for the hub to know which reads its cache can answer.
fn scope(config: &scale_agent_crds::AccountConfig) -> StreamScope {
    StreamScope {
        namespaces: config.scope.namespaces.clone(),
        omit_namespaces: config.scope.omit_namespaces.clone(),
        label_selector: if config.scope.only_spinnaker_managed {
            crate::objects::SPINNAKER_MANAGED.to_owned()
        } else {
            String::new()
        },
    }
}

/// Builds the clients and identifies the cluster.
async fn connect(
    connections: &Arc<Connections>,
    desired: &AccountDesired,
) -> Result<(AccountClients, Account)> {
    let name = &desired.config.name;
    let kc_err = |message: String| Error::Kubeconfig {
        account: name.clone(),
        message,
    };
    let config = if desired.config.in_cluster {
        // The agent's own credentials: its ServiceAccount in a pod.
        kube::Config::infer()
            .await
            .map_err(|e| kc_err(format!("in-cluster credentials: {e}")))?
    } else {
        let usable = desired.kubeconfig.as_ref().map_err(|e| kc_err(e.clone()))?;
        // Checked when read (config.rs), so a parse error here cannot quote it; the
        // context is the one the check chose, whatever current-context says.
        let kc = Kubeconfig::from_yaml(&usable.text)
            .map_err(|_| kc_err("the kubeconfig does not parse".to_owned()))?;
        let options = KubeConfigOptions {
            context: Some(usable.context.clone()),
            ..KubeConfigOptions::default()
        };
        kube::Config::from_custom_kubeconfig(kc, &options)
            .await
            .map_err(|e| kc_err(e.to_string()))?
    };
    let server = config.cluster_url.to_string();
    let ca = config.root_cert.clone().unwrap_or_default();
    let shares = crate::cluster_client::identity_key(&config).is_some();
    let clients = connections
        .clients(
            &config,
            crate::cluster_client::streams_for(&desired.config, shares),
        )
        .await
        .map_err(|e| kc_err(e.to_string()))?;
    let client = clients.client.clone();
    let version = client
        .apiserver_version()
        .await
        .map_err(|source| Error::Cluster {
            account: name.clone(),
            action: "reading /version".into(),
            source,
        })?;
    let cluster_id = match Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await
    {
        Ok(ns) => ns.metadata.uid.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(account = %name, error = %e, "cannot read namespace kube-system; identifying the cluster by URL and CA");
            fallback_cluster_id(&server, &ca)
        }
    };
    Ok((
        clients,
        Account {
            name: name.clone(),
            cluster_id,
            server_url: server,
            kubernetes_version: version.git_version,
            scope: Some(scope(&desired.config)),
        },
    ))
}

/// `url+ca-sha256:<hex sha256 of the URL, a newline and the CA certificates>`.
pub fn fallback_cluster_id(server: &str, ca: &[Vec<u8>]) -> String {
    let mut h = Sha256::new();
    h.update(server.as_bytes());
    h.update(b"\n");
    for c in ca {
        h.update(c);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("url+ca-sha256:{hex}")
}

/// How long a rejected account waits before registering again (unless offered sooner).
const RETRY_REJECTED: Duration = Duration::from_secs(30);
/// How long a superseded account waits before registering again.
const RETRY_SUPERSEDED: Duration = Duration::from_secs(3);
/// How long the hub's refusal of an account holds before registering it again.
fn retry_after(reason: RegisterReason) -> Duration {
    match reason {
        // Replicas briefly disagree on membership while a Lease changes.
        RegisterReason::Superseded => RETRY_SUPERSEDED,
        // The hub could not decide yet (e.g. it is still reading AgentShards).
        RegisterReason::Unavailable => RETRY_UNAVAILABLE,
        // Bound to another cluster, owned by another shard, invalid: a person must act.
        _ => RETRY_REJECTED,
    }
}

/// How long after UNAVAILABLE the account registers again.
const RETRY_UNAVAILABLE: Duration = Duration::from_secs(2);

/// How long after a failed discovery the account starts over.
const RETRY_DISCOVERY: Duration = Duration::from_secs(10);

/// Registers and streams the account. Returns how long to wait before registering it
/// again (rejected, taken back, discovery failed), or `Closed` when the session ended.
async fn serve(
    ctx: &AccountCtx,
    desired: &AccountDesired,
    clients: AccountClients,
    account: Account,
    results: &mut mpsc::Receiver<AccountResult>,
) -> Result<Duration, Closed> {
    // The lease keeps the account's streams reserved while it streams.
    let AccountClients {
        client,
        proxy,
        upgrade,
        lease: _lease,
        identity,
    } = clients;
    let shared = identity.map(|identity| Shared {
        connections: ctx.connections.clone(),
        identity,
        metrics: ctx.metrics.clone(),
    });
    let name = account.name.clone();
    ctx.out
        .send(Frame::Register(Register {
            accounts: vec![account.clone()],
        }))
        .await?;
    // Wait for the hub's answer.
    let Some(r) = results.recv().await else {
        return Err(Closed);
    };
    // Where the hub's cache of each kind stands: watches resume there instead of
    // relisting, when it was listed with the same selection and the cluster still has
    // that revision.
    let points = if r.accepted {
        tracing::info!(cluster_id = %account.cluster_id, resume_points = r.resume_points.len(), "registered");
        r.resume_points
    } else {
        let reason = RegisterReason::try_from(r.reason).unwrap_or_default();
        let owner = r.owner.as_ref().map(|o| {
            let shard = o
                .shard
                .as_ref()
                .map(|s| format!("{}/{}", s.namespace, s.name))
                .unwrap_or_default();
            format!(" (held by shard {shard}, cluster {})", o.cluster_id)
        });
        let msg = format!(
            "hub rejected the account: {reason:?}: {}{}",
            r.message,
            owner.unwrap_or_default()
        );
        tracing::error!("{msg}");
        ctx.state.set_refused(&name, format!("{reason:?}"), msg);
        ctx.metrics.accounts_rejected.inc();
        // Wait for the hub to offer the account (its owner let go), or ask again later.
        let offered = tokio::select! {
            r = wait_for_acceptance(results) => Some(r),
            _ = tokio::time::sleep(retry_after(reason)) => None,
        };
        ctx.metrics.accounts_rejected.dec();
        match offered {
            Some(r) => r?.resume_points,
            None => return Ok(Duration::ZERO),
        }
    };
    ctx.state.clear_problem(&name);
    ctx.state.set_accepted(&name);

    let discovery = match Box::pin(Discovery::new(client.clone()).run_aggregated()).await {
        Ok(d) => d,
        Err(e) => {
            let msg = format!("discovery failed: {e}");
            tracing::error!("{msg}");
            ctx.state.set_problem(&name, msg);
            return Ok(RETRY_DISCOVERY);
        }
    };
    let (watched, unknown) = kinds::resolve(
        &discovery,
        &desired.config.scope.kinds,
        &desired.config.scope.omit_kinds,
    );
    if !unknown.is_empty() {
        tracing::warn!(?unknown, "kinds the cluster does not serve are skipped");
    }
    ctx.state.set_cluster(
        &name,
        Arc::new(Cluster {
            client: client.clone(),
            proxy,
            upgrade,
            discovery,
        }),
    );
    let selection = selection(&desired.config, &account);
    let keys: Vec<(String, String)> = watched
        .iter()
        .map(|k| (k.resource.group.clone(), k.resource.kind.clone()))
        .collect();
    let (mut starts, cleared) = plan(&keys, points, &selection);
    for gvk in cleared {
        tracing::info!(kind = %gvk.kind, group = %gvk.group, "the hub caches a kind the account no longer watches; clearing it");
        ctx.metrics.relist(RelistCause::KindRemoved);
        clear(&ctx.out, &name, gvk).await?;
    }
    let flags: Vec<Arc<AtomicBool>> = watched
        .iter()
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    ctx.state.set_sync_flags(&name, flags.clone());
    ctx.metrics.accounts_streaming.inc();
    let _streaming = scopeguard(ctx.metrics.clone());
    let mut tasks = JoinSet::new();
    // One for every kind of the account.
    let kctx = Arc::new(KindCtx {
        selection: selection.clone(),
        account: name.clone(),
        client: client.clone(),
        config: desired.config.clone(),
        out: ctx.out.clone(),
        budget: ctx.budget.clone(),
        metrics: ctx.metrics.clone(),
        watch_progress: ctx.watch_progress,
        server: account.server_url.clone(),
    });
    let kinds = watched.into_iter().zip(flags).map(|(kind, flag)| {
        let start = starts
            .remove(&(kind.resource.group.clone(), kind.resource.kind.clone()))
            .unwrap_or(Start::Relist(RelistCause::NoResumePoint));
        (kind, start, flag)
    });
    match &shared {
        // Every kind through one task: most of them only take their shared watch's
        // changes.
        Some(shared) => {
            tasks.spawn(watch::shared_kinds::run(
                kctx,
                shared.clone(),
                kinds.collect(),
            ));
        }
        None => {
            for (kind, start, flag) in kinds {
                tasks.spawn(watch::run(kctx.clone(), start, kind, flag));
            }
        }
    }
    if ctx.api_surface {
        match &shared {
            Some(shared) => tasks.spawn(crate::surface::run_shared(
                shared.surface(),
                name.clone(),
                ctx.out.clone(),
            )),
            None => {
                let open: Vec<_> = (0..crate::surface::WATCHES)
                    .map(|_| ctx.metrics.watch_opened(&account.server_url))
                    .collect();
                let surface = crate::surface::run(client.clone(), name.clone(), ctx.out.clone());
                tasks.spawn(async move {
                    let _open = open;
                    surface.await
                })
            }
        };
    }
    loop {
        tokio::select! {
            r = results.recv() => match r {
                None => return Err(Closed),
                Some(r) if !r.accepted => {
                    let reason = RegisterReason::try_from(r.reason).unwrap_or_default();
                    tracing::warn!(?reason, message = %r.message, "the hub took the account back; stopping it");
                    tasks.abort_all();
                    ctx.out.ledger().forget(&name);
                    ctx.state.remove_cluster(&name);
                    ctx.state.set_refused(&name, format!("{reason:?}"), format!("hub: {reason:?}: {}", r.message));
                    // Replicas briefly disagree on membership while a Lease changes; once
                    // they agree, the other one lets go and this registration sticks.
                    return Ok(retry_after(reason));
                }
                Some(_) => {}
            },
            Some(done) = tasks.join_next() => {
                if let Ok(Err(Closed)) = done {
                    return Err(Closed);
                }
            }
        }
    }
}

async fn wait_for_acceptance(
    results: &mut mpsc::Receiver<AccountResult>,
) -> Result<AccountResult, Closed> {
    loop {
        match results.recv().await {
            None => return Err(Closed),
            Some(r) if r.accepted => return Ok(r),
            Some(_) => {}
        }
    }
}

/// What sets the objects of every kind of an account apart, as one fingerprint: the
/// cluster (its identity and URL), the namespaces and filters, and how objects are
/// encoded (bump [`ENCODING`] when what is sent of an object changes). Kinds are not in
/// it: each kind has its own resume point.
pub fn selection(config: &AccountConfig, account: &Account) -> String {
    let mut h = Sha256::new();
    let mut field = |name: &str, values: &[&str]| {
        h.update(name.as_bytes());
        for v in values {
            h.update([0u8]);
            h.update(v.as_bytes());
        }
        h.update([0xffu8]);
    };
    let sorted = |v: &[String]| {
        let mut v: Vec<String> = v.to_vec();
        v.sort();
        v.dedup();
        v
    };
    let namespaces = sorted(&config.scope.namespaces);
    let omitted = sorted(&config.scope.omit_namespaces);
    field("cluster", &[&account.cluster_id, &account.server_url]);
    field(
        "namespaces",
        &namespaces.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    field(
        "omitNamespaces",
        &omitted.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    field(
        "onlySpinnakerManaged",
        &[if config.scope.only_spinnaker_managed {
            "true"
        } else {
            "false"
        }],
    );
    let digest = h.finalize();
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("{ENCODING}:{hex}")
}

/// The version of what the agent sends of an object (see [`crate::objects`]).
const ENCODING: &str = "e1";

/// How each watched kind (group, kind) starts, from the hub's resume points, and the
/// kinds the hub caches that are no longer watched (to be cleared). A kind resumes only
/// from a resourceVersion listed with the same `selection` (an empty stored selection,
/// from a hub that keeps none, is taken as the same); otherwise it is relisted.
pub fn plan(
    watched: &[(String, String)],
    points: Vec<ResumePoint>,
    selection: &str,
) -> (HashMap<(String, String), Start>, Vec<GroupVersionKind>) {
    let mut starts = HashMap::new();
    let mut cleared = Vec::new();
    for p in points {
        let Some(kind) = p.kind else { continue };
        let key = (kind.group.clone(), kind.kind.clone());
        if !watched.contains(&key) {
            cleared.push(kind);
            continue;
        }
        let start = if p.resource_version.is_empty() {
            Start::Relist(RelistCause::NoResumePoint)
        } else if !p.selection.is_empty() && p.selection != selection {
            Start::Relist(RelistCause::SelectionChanged)
        } else {
            Start::Resume(p.resource_version)
        };
        starts.insert(key, start);
    }
    for key in watched {
        starts
            .entry(key.clone())
            .or_insert(Start::Relist(RelistCause::NoResumePoint));
    }
    (starts, cleared)
}

/// Lists a kind as empty, so the hub drops every object of it it caches.
async fn clear(out: &Outbound, account: &str, kind: GroupVersionKind) -> Result<(), Closed> {
    out.send(Frame::SyncStart(SyncStart {
        account: account.to_owned(),
        kind: Some(kind.clone()),
        mode: SyncMode::FullRelist as i32,
        resource_version: String::new(),
        ..SyncStart::default()
    }))
    .await?;
    out.send(Frame::SyncEnd(SyncEnd {
        account: account.to_owned(),
        kind: Some(kind),
        resource_version: String::new(),
        object_count: 0,
    }))
    .await
}

struct StreamingGuard(Arc<Metrics>);

impl Drop for StreamingGuard {
    fn drop(&mut self) {
        self.0.accounts_streaming.dec();
    }
}

fn scopeguard(m: Arc<Metrics>) -> StreamingGuard {
    StreamingGuard(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_id_depends_on_url_and_ca() {
        let a = fallback_cluster_id("https://a:6443", &[b"ca1".to_vec()]);
        assert!(a.starts_with("url+ca-sha256:"));
        assert_ne!(a, fallback_cluster_id("https://b:6443", &[b"ca1".to_vec()]));
        assert_ne!(a, fallback_cluster_id("https://a:6443", &[b"ca2".to_vec()]));
        assert_eq!(a, fallback_cluster_id("https://a:6443", &[b"ca1".to_vec()]));
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    fn config(yaml: &str) -> AccountConfig {
        serde_yaml::from_str(&format!("name: a\nkubeconfigFile: a.kubeconfig\n{yaml}"))
            .expect("config")
    }

    fn account(server: &str) -> Account {
        Account {
            name: "a".into(),
            cluster_id: "uid-1".into(),
            server_url: server.into(),
            kubernetes_version: String::new(),
            scope: None,
        }
    }

    fn point(kind: &str, rv: &str, selection: &str) -> ResumePoint {
        ResumePoint {
            kind: Some(GroupVersionKind {
                group: String::new(),
                version: "v1".into(),
                kind: kind.into(),
            }),
            resource_version: rv.into(),
            selection: selection.into(),
        }
    }

    fn key(kind: &str) -> (String, String) {
        (String::new(), kind.into())
    }

    #[test]
    fn the_selection_changes_with_cluster_namespaces_and_filters_only() {
        let base = selection(&config(""), &account("https://a"));
        assert_eq!(base, selection(&config(""), &account("https://a")));
        assert!(base.starts_with("e1:"));
        for (what, other) in [
            (
                "omitNamespaces",
                selection(
                    &config("omitNamespaces: [kube-system]"),
                    &account("https://a"),
                ),
            ),
            (
                "namespaces",
                selection(&config("namespaces: [web]"), &account("https://a")),
            ),
            (
                "onlySpinnakerManaged",
                selection(&config("onlySpinnakerManaged: true"), &account("https://a")),
            ),
            ("server", selection(&config(""), &account("https://b"))),
        ] {
            assert_ne!(base, other, "{what} must change the selection");
        }
        // Kinds have their own resume points; order of namespaces does not matter.
        assert_eq!(
            base,
            selection(&config("kinds: [ConfigMap]"), &account("https://a"))
        );
        assert_eq!(
            selection(&config("namespaces: [a, b]"), &account("https://a")),
            selection(&config("namespaces: [b, a]"), &account("https://a"))
        );
    }

    #[test]
    fn a_kind_resumes_only_from_its_own_selection_and_unwatched_kinds_are_cleared() {
        let watched = [key("ConfigMap"), key("Secret"), key("Service"), key("Pod")];
        let points = vec![
            point("ConfigMap", "10", "sel"),
            point("Secret", "11", "old"),
            point("Service", "", "sel"),
            point("Namespace", "12", "sel"),
        ];
        let (starts, cleared) = plan(&watched, points, "sel");
        assert_eq!(starts[&key("ConfigMap")], Start::Resume("10".into()));
        assert_eq!(
            starts[&key("Secret")],
            Start::Relist(RelistCause::SelectionChanged)
        );
        assert_eq!(
            starts[&key("Service")],
            Start::Relist(RelistCause::NoResumePoint)
        );
        assert_eq!(
            starts[&key("Pod")],
            Start::Relist(RelistCause::NoResumePoint)
        );
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].kind, "Namespace");
        // A hub that keeps no selection: resume as before.
        let (starts, _) = plan(&watched, vec![point("ConfigMap", "10", "")], "sel");
        assert_eq!(starts[&key("ConfigMap")], Start::Resume("10".into()));
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    #[test]
    fn refusals_that_need_a_person_wait_longest() {
        assert_eq!(retry_after(RegisterReason::Superseded), RETRY_SUPERSEDED);
        assert_eq!(retry_after(RegisterReason::Unavailable), RETRY_UNAVAILABLE);
        for r in [
            RegisterReason::ClusterMismatch,
            RegisterReason::NotOwner,
            RegisterReason::Invalid,
        ] {
            assert_eq!(retry_after(r), RETRY_REJECTED);
        }
        assert!(RETRY_UNAVAILABLE < RETRY_SUPERSEDED && RETRY_SUPERSEDED < RETRY_REJECTED);
    }
}
