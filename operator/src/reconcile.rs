//! The reconcile loop of one shard: fetch what it references, call the pure functions
//! ([`crate::index`], [`crate::children`], [`crate::status`]), server-side apply the
//! children, write the status only when it changed, and publish Events on transitions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use scale_agent_crds::{
    AccountSpec, AccountState, AccountStatus, AgentShard, ShardRef, deployment_name,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;

use crate::children::{self, Defaults, FIELD_MANAGER};
use crate::error::{Error, Result};
use crate::index::{ClaimIndex, Resolution};
use crate::metrics::{ErrorLabels, Metrics};
use crate::status::{self, DeploymentView, Observed, reason};

/// How often an unchanged shard is looked at again (drift of its children).
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon a shard waiting for a name its owner is releasing looks again (a trigger
/// normally comes first).
pub const HANDOFF_RETRY: Duration = Duration::from_secs(2);

/// What every reconcile shares.
pub struct Context {
    /// The client, with the operator's identity.
    pub client: Client,
    /// The claims index.
    pub index: Arc<Mutex<ClaimIndex>>,
    /// Every AgentShard, as watched.
    pub store: Store<AgentShard>,
    /// Defaults for what shards leave out.
    pub defaults: Defaults,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Asks the controller to reconcile other shards (a released name's claimants).
    pub triggers: UnboundedSender<ObjectRef<AgentShard>>,
    /// Consecutive failures per shard, for the error backoff.
    pub failures: Mutex<HashMap<ObjectRef<AgentShard>, u32>>,
}

impl Context {
    /// Asks for a reconcile of each of `shards`.
    pub fn trigger(&self, shards: impl IntoIterator<Item = ShardRef>) {
        for s in shards {
            let _ = self
                .triggers
                .send(ObjectRef::new(&s.name).within(&s.namespace));
        }
    }
}

/// Reconciles one shard. Errors are failures to talk to the API server; problems with
/// the shard's input end up in its status.
#[tracing::instrument(skip_all, fields(shard = %format!("{}/{}", shard.namespace().unwrap_or_default(), shard.name_any())))]
pub async fn reconcile(shard: Arc<AgentShard>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_shard(&shard, &ctx).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(action) => {
            if let Ok(mut f) = ctx.failures.lock() {
                f.remove(&ObjectRef::from_obj(shard.as_ref()));
            }
            tracing::debug!(?action, "reconciled");
        }
        Err(e) => tracing::warn!(error = %e, "reconcile failed"),
    }
    result
}

/// Transient failures requeue with a per-shard backoff (0.5 s doubling to 5 min), reset
/// by the next success.
pub fn error_policy(shard: Arc<AgentShard>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .get_or_create(&ErrorLabels {
            error: error.label().to_owned(),
        })
        .inc();
    let n = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(ObjectRef::from_obj(shard.as_ref())).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    let delay = Duration::from_millis(500)
        .saturating_mul(1u32 << n.min(10))
        .min(Duration::from_secs(300));
    Action::requeue(delay)
}

fn now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()))
}

async fn reconcile_shard(shard: &AgentShard, ctx: &Context) -> Result<Action> {
    let shard = &*children::with_defaults(shard, &ctx.defaults);
    let sref = shard.shard_ref().ok_or_else(|| Error::MissingField {
        what: format!("AgentShard {}", shard.name_any()),
        field: "metadata.namespace",
    })?;
    if shard.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the children; the watch frees the names.
        return Ok(Action::await_change());
    }
    let now_s = Timestamp::now().as_second();
    let created = shard
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(now_s);
    let names: Vec<String> = shard.account_names().map(str::to_owned).collect();

    if shard.spec.paused {
        if let Ok(mut idx) = ctx.index.lock() {
            idx.upsert(&sref, names, created, now_s);
        }
        let observed = Observed {
            generation: shard.metadata.generation,
            paused: true,
            ..Observed::default()
        };
        write_status(shard, &sref, ctx, &observed).await?;
        return Ok(Action::await_change());
    }

    let resolutions = match ctx.index.lock() {
        Ok(mut idx) => {
            idx.upsert(&sref, names, created, now_s);
            idx.resolve(&sref)
        }
        Err(_) => BTreeMap::new(),
    };

    // Decide each account: ours and usable, someone else's, or ours but unusable.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &sref.namespace);
    let mut fetched: HashMap<String, Option<Secret>> = HashMap::new();
    let mut accounts: Vec<AccountStatus> = Vec::with_capacity(shard.spec.accounts.len());
    let mut served: Vec<&AccountSpec> = Vec::new();
    let mut kubeconfigs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut waiting = false;
    for a in &shard.spec.accounts {
        match resolutions.get(&a.name) {
            Some(Resolution::Owned) => {}
            Some(Resolution::Taken { owner, releasing }) => {
                waiting |= *releasing;
                let (r, m) = if *releasing {
                    (
                        reason::OWNER_RELEASING,
                        format!(
                            "AgentShard {owner} dropped this account and is letting it go; it comes next"
                        ),
                    )
                } else {
                    (
                        reason::OWNED_BY_ANOTHER_SHARD,
                        format!(
                            "AgentShard {owner} owns this account name (the oldest claim wins)"
                        ),
                    )
                };
                accounts.push(status::account(
                    &a.name,
                    AccountState::Conflict,
                    r,
                    m,
                    Some(owner),
                ));
                continue;
            }
            None => {
                waiting = true;
                accounts.push(status::account(
                    &a.name,
                    AccountState::Conflict,
                    reason::OWNER_RELEASING,
                    "waiting for the claims index".to_owned(),
                    None,
                ));
                continue;
            }
        }
        let secret_name = &a.kubeconfig_secret_ref.name;
        if !fetched.contains_key(secret_name) {
            let s = secrets.get_opt(secret_name).await.map_err(|e| {
                Error::kube(
                    format!("reading Secret {}/{secret_name}", sref.namespace),
                    e,
                )
            })?;
            fetched.insert(secret_name.clone(), s);
        }
        let key = &a.kubeconfig_secret_ref.key;
        let outcome = match fetched.get(secret_name).and_then(Option::as_ref) {
            None => Err((
                reason::SECRET_NOT_FOUND,
                format!(
                    "Secret {secret_name} not found in namespace {}",
                    sref.namespace
                ),
            )),
            Some(s) => match s.data.as_ref().and_then(|d| d.get(key)) {
                None => Err((
                    reason::SECRET_KEY_NOT_FOUND,
                    format!("Secret {secret_name} has no key {key}"),
                )),
                Some(bytes) => children::validate_kubeconfig(&bytes.0)
                    .map(|()| bytes.0.clone())
                    .map_err(|why| {
                        (
                            reason::KUBECONFIG_INVALID,
                            format!("the kubeconfig in Secret {secret_name} key {key}: {why}"),
                        )
                    }),
            },
        };
        match outcome {
            Ok(bytes) => {
                kubeconfigs.insert(a.name.clone(), bytes);
                served.push(a);
                accounts.push(status::account(
                    &a.name,
                    AccountState::Active,
                    reason::SERVING,
                    String::new(),
                    None,
                ));
            }
            Err((r, m)) => {
                accounts.push(status::account(&a.name, AccountState::Invalid, r, m, None))
            }
        }
    }

    let mut observed = Observed {
        generation: shard.metadata.generation,
        paused: false,
        accounts,
        config_problem: None,
        deployment: None,
    };
    let hub = children::hub_address(shard, &ctx.defaults);
    let image = children::image(shard, &ctx.defaults);
    let config = match (hub, image) {
        (None, _) => Err(
            "no hub address: set spec.hub.address, or start the operator with --default-hub"
                .to_owned(),
        ),
        (_, None) => Err(
            "no agent image: set spec.image, or start the operator with --default-image".to_owned(),
        ),
        (Some(hub), Some(image)) => children::agent_config(&sref, shard, hub, &served)
            .map(|c| (c, image))
            .map_err(|e| e.to_string()),
    };
    match config {
        Ok((config, image)) => {
            let yaml = config.to_yaml().map_err(|source| Error::Config {
                shard: sref.key(),
                source,
            })?;
            let dep = apply_children(shard, &sref, ctx, yaml, &kubeconfigs, image).await?;
            observed.deployment = Some(view(shard, &dep));
        }
        Err(problem) => {
            // Invalid input: keep the children as they are and wait for a change.
            observed.config_problem = Some(problem);
            let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &sref.namespace);
            if let Some(d) = deployments
                .get_opt(&deployment_name(&sref.name))
                .await
                .map_err(|e| Error::kube(format!("reading the Deployment of {sref}"), e))?
            {
                observed.deployment = Some(view(shard, &d));
            }
        }
    }
    write_status(shard, &sref, ctx, &observed).await?;

    Ok(if waiting {
        Action::requeue(HANDOFF_RETRY)
    } else {
        Action::requeue(RESYNC)
    })
}

fn view(shard: &AgentShard, d: &Deployment) -> DeploymentView {
    let st = d.status.clone().unwrap_or_default();
    let available = st
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Available")
        .map(|c| {
            (
                c.status == "True",
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default(),
            )
        });
    DeploymentView {
        desired: shard.spec.replicas,
        generation: d.metadata.generation,
        observed_generation: st.observed_generation,
        replicas: st.replicas.unwrap_or(0),
        ready: st.ready_replicas.unwrap_or(0),
        updated: st.updated_replicas.unwrap_or(0),
        available_replicas: st.available_replicas.unwrap_or(0),
        available,
    }
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|e| Error::kube(format!("applying {} {ns}/{name}", K::kind(&())), e))
}

/// Applies every child; returns the Deployment as the server has it (with its status).
async fn apply_children(
    shard: &AgentShard,
    sref: &ShardRef,
    ctx: &Context,
    config_yaml: String,
    kubeconfigs: &BTreeMap<String, Vec<u8>>,
    image: &str,
) -> Result<Deployment> {
    let owner = shard
        .controller_owner_ref(&())
        .ok_or_else(|| Error::MissingField {
            what: format!("AgentShard {sref}"),
            field: "metadata.uid",
        })?;
    let client = &ctx.client;
    let ns = sref.namespace.as_str();
    let sa = children::service_account_name(shard, &ctx.defaults);
    if shard.spec.service_account_name.is_none() && ctx.defaults.service_account.is_none() {
        apply::<ServiceAccount>(client, ns, &children::service_account(sref, &owner)).await?;
        apply::<Role>(client, ns, &children::role(sref, &owner)).await?;
        apply::<RoleBinding>(client, ns, &children::role_binding(sref, &owner)).await?;
    }
    // The config and the kubeconfigs first: the Deployment mounts them.
    apply::<Secret>(
        client,
        ns,
        &children::kubeconfig_secret(sref, &owner, kubeconfigs),
    )
    .await?;
    apply::<ConfigMap>(client, ns, &children::config_map(sref, &owner, config_yaml)).await?;
    // The config no longer carries what was dropped: hand released names to the next claimant.
    let carried: BTreeSet<String> = kubeconfigs.keys().cloned().collect();
    let waiting = match ctx.index.lock() {
        Ok(mut idx) => idx.published(sref, &carried),
        Err(_) => BTreeSet::new(),
    };
    if !waiting.is_empty() {
        tracing::info!(next = ?waiting.iter().map(ShardRef::key).collect::<Vec<_>>(), "released account names");
    }
    ctx.trigger(waiting);

    let dep = apply::<Deployment>(
        client,
        ns,
        &children::deployment(sref, shard, &owner, image, &sa),
    )
    .await?;
    match children::pdb(sref, shard, &owner) {
        Some(pdb) => {
            apply::<PodDisruptionBudget>(client, ns, &pdb).await?;
        }
        None => {
            let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
            let name = deployment_name(&sref.name);
            if let Some(existing) = api
                .get_metadata_opt(&name)
                .await
                .map_err(|e| Error::kube(format!("reading PodDisruptionBudget {ns}/{name}"), e))?
                && existing
                    .owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == shard.metadata.uid.as_ref())
            {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        return Err(Error::kube(
                            format!("deleting PodDisruptionBudget {ns}/{name}"),
                            e,
                        ));
                    }
                }
            }
        }
    }
    Ok(dep)
}

/// Writes the status when it differs from the stored one, and publishes the Events its
/// transitions deserve.
async fn write_status(
    shard: &AgentShard,
    sref: &ShardRef,
    ctx: &Context,
    observed: &Observed,
) -> Result<()> {
    let old = shard.status.as_ref();
    let new = status::compute(old, observed, now());
    if old == Some(&new) {
        return Ok(());
    }
    let api: Api<AgentShard> = Api::namespaced(ctx.client.clone(), &sref.namespace);
    let patch = serde_json::json!({ "status": new });
    let written = api
        .patch_status(
            &sref.name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await;
    match written {
        Ok(_) => {}
        // Deleted meanwhile: nothing to report to.
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => {
            return Err(Error::kube(
                format!("writing the status of AgentShard {sref}"),
                e,
            ));
        }
    }
    ctx.metrics.status_writes.inc();
    tracing::info!(
        active = new.active_accounts,
        conflicts = new.conflicts,
        ready = shard_ready(&new),
        "status written"
    );
    let reference = shard.object_ref(&());
    for n in status::notices(old, &new) {
        let event = Event {
            type_: if n.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: n.reason.to_owned(),
            note: Some(n.note.clone()),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, reason = n.reason, "publishing an Event failed");
        }
    }
    Ok(())
}

fn shard_ready(st: &scale_agent_crds::AgentShardStatus) -> bool {
    st.condition(scale_agent_crds::condition_type::READY)
        .is_some_and(|c| c.status == scale_agent_crds::condition_status::TRUE)
}
