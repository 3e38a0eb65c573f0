//! One shard's reconcile: fetch (the shard, the claims index's answer, the kubeconfig
//! Secrets of the accounts it owns — those not checked before at the version the watch
//! shows, [`crate::kubeconfigs`]), [`decide`](crate::decide::decide), then apply
//! ([`crate::apply`]): record newly held names, apply the children, write the status
//! when it changed, and tell the index what the status now holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use scale_agent_crds::kubeconfig_file_name;
use scale_agent_crds::membership::SHARD_LABEL;
use scale_agent_crds::{AgentShard, AgentShardStatus, ShardRef, condition_status, condition_type};

use crate::applied::{Applied, ChildKey, Watched};
use crate::apply::{self, Written};
use crate::certs::AgentCa;
use crate::children::{self, Defaults, TlsSource};
use crate::claims_index::{ClaimsHandle, Resolution};
use crate::decide::{self, Fetched};
use crate::error::{Error, Result};
use crate::kubeconfigs::{self, Copied, Kubeconfigs, Source, Use};
use crate::metrics::{ErrorLabels, Metrics};
use crate::replicas::Replicas;
use crate::rollout::{self, Rollouts};
use crate::status;
use crate::superseded::Superseded;

pub use crate::decide::{HANDOFF_RETRY, RESYNC};

/// What every reconcile shares.
pub struct Context {
    /// The client, with the operator's identity.
    pub client: Client,
    /// The claims index.
    pub claims: ClaimsHandle,
    /// Defaults for what shards leave out.
    pub defaults: Defaults,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per shard, for the error backoff.
    pub failures: Mutex<HashMap<ObjectRef<AgentShard>, u32>>,
    /// The agent replicas' Leases (labelled for a shard).
    pub leases: Store<Lease>,
    /// The agent pods' metadata.
    pub pods: Store<PartialObjectMeta<Pod>>,
    /// What the operator last applied of each shard's children.
    pub applied: Applied,
    /// The children as the watches show them.
    pub watched: Watched,
    /// The shard versions the operator's own status writes replaced.
    pub superseded: Superseded,
    /// The agent image rollouts under way.
    pub rollouts: Rollouts,
    /// The kubeconfig Secrets' versions and checks.
    pub kubeconfigs: Arc<Kubeconfigs>,
}

/// Reconciles one shard. Errors are failures to talk to the API server; problems with
/// the shard's input end up in its status.
#[tracing::instrument(skip_all, fields(shard = %format!("{}/{}", shard.namespace().unwrap_or_default(), shard.name_any())))]
pub async fn reconcile(shard: Arc<AgentShard>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_shard(&shard, &ctx).await;
    ctx.metrics
        .reconcile_duration_seconds
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
        .reconcile_errors
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
    Action::requeue(backoff(n))
}

/// The delay after `n` consecutive failures: 0.5 s doubling, at most 5 min.
pub fn backoff(n: u32) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(1u32 << n.min(10))
        .min(Duration::from_secs(300))
}

/// Now, to the second: what the API server stores of a time.
fn now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()))
}

async fn reconcile_shard(shard: &AgentShard, ctx: &Context) -> Result<Action> {
    let sref = shard.shard_ref().ok_or_else(|| Error::MissingField {
        what: format!("AgentShard {}", shard.name_any()),
        field: "metadata.namespace",
    })?;
    if shard.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the children; the watch frees the names.
        ctx.applied.forget(&sref);
        ctx.superseded.forget(&sref);
        ctx.kubeconfigs.retain(|s| s != &sref);
        return Ok(Action::await_change());
    }
    if ctx
        .superseded
        .is_behind(&sref, shard.metadata.resource_version.as_deref())
    {
        // The cache has not seen the operator's last status write yet: its watch event
        // brings a reconcile of the newer version.
        return Ok(stale());
    }

    // Fetch.
    let fetch_started = Instant::now();
    let resolutions = if shard.spec.paused {
        BTreeMap::new()
    } else {
        ctx.claims.resolve(shard).await?
    };
    // The operator reads Secrets only in namespaces opened to it: a refusal here means
    // this one is not, which the status says (below) as it does for a refused write.
    let mut forbidden = None;
    let mut secrets = BTreeMap::new();
    let mut tls_secret = None;
    let needed = decide::secrets_to_fetch(shard, &resolutions);
    let fetched = async {
        secrets = kubeconfig_sources(ctx, &sref, &needed).await?;
        tls_secret = match children::tls_source(shard, &ctx.defaults) {
            TlsSource::None => None,
            TlsSource::Secret(name) | TlsSource::Issued(name) | TlsSource::CertManager(name) => {
                fetch_secret(&ctx.client, &sref.namespace, &name).await?
            }
        };
        Ok::<_, Error>(())
    }
    .await;
    match fetched {
        Ok(()) => {}
        Err(e) if e.label() == "ApiForbidden" => forbidden = Some(e),
        Err(e) => return Err(e),
    }
    let agent_ca = match &ctx.defaults.agent_ca {
        Some(ca) if !shard.spec.paused => Some(read_ca(&ctx.client, ca).await?),
        _ => None,
    };
    let now = now();
    let replicas = observe_replicas(ctx, &sref, &now);
    for (lease, why) in &replicas.ignored {
        tracing::debug!(%lease, %why, "a Lease labelled for the shard is not a live replica");
    }

    // Decide.
    let decide_on = |secrets: &BTreeMap<String, Option<Source>>| {
        let mut decision = decide::decide(
            Fetched {
                shard,
                resolutions: &resolutions,
                secrets,
                tls_secret: tls_secret.as_ref(),
                agent_ca: agent_ca.as_ref(),
                replicas: &replicas,
            },
            &ctx.defaults,
            &now,
        )?;
        for (name, checked) in std::mem::take(&mut decision.checked) {
            ctx.kubeconfigs
                .checked(&sref.namespace, &name, checked, fetch_started);
        }
        Ok::<_, Error>(decision)
    };
    let mut decision = decide_on(&secrets)?;
    // The agents' kubeconfig Secret copies kubeconfigs known only by an earlier check:
    // read them, and decide again on what was read, only when it must be applied.
    if forbidden.is_none()
        && let Some(c) = &decision.children
        && c.kubeconfigs.secret.is_none()
    {
        let kc = c.kubeconfigs.clone();
        let read = async {
            let due =
                apply::kubeconfigs_due(&ctx.client, &sref, kc.desired, &ctx.applied, &ctx.watched);
            if !due.await? {
                return Ok(None);
            }
            copy_sources(ctx, &sref, &needed, &secrets, &kc.unread)
                .await
                .map(Some)
        };
        let read = read.await;
        match read {
            Ok(Some(read)) => {
                secrets.extend(read);
                decision = decide_on(&secrets)?;
            }
            Ok(None) => {}
            Err(e) if e.label() == "ApiForbidden" => forbidden = Some(e),
            Err(e) => return Err(e),
        }
    }
    drop(secrets);
    let decided = fetch_started.elapsed();
    log_waiting(&resolutions);
    if let Some(children) = decision.children.as_mut()
        && stage_image(ctx, shard, &sref, &mut children.deployment).await
    {
        decision.next = decision.next.or_sooner(Some(ROLLOUT_RETRY));
    }
    if let Some(e) = forbidden {
        decision.children = None;
        for a in &mut decision.observed.accounts {
            if a.reason == status::reason::SECRET_NOT_FOUND {
                a.reason = status::reason::NAMESPACE_NOT_OPENED.to_owned();
                a.message = format!(
                    "the operator may not read Secrets in namespace {}",
                    sref.namespace
                );
            }
        }
        let rv = shard.metadata.resource_version.as_deref();
        return not_opened(ctx, shard, &sref, rv, &mut decision, now, e).await;
    }

    // Apply.
    let mut resource_version = shard.metadata.resource_version.clone();
    // The status as stored once the reserve is written: what the status write below
    // starts from.
    let mut reserved = None;
    if let Some(accounts) = &decision.reserve {
        let after = status::reserved(
            shard.status.as_ref(),
            accounts,
            shard.metadata.generation,
            now.clone(),
        );
        match apply::reserve(
            &ctx.client,
            &sref,
            resource_version.as_deref(),
            shard.status.as_ref(),
            &after,
        )
        .await?
        {
            Written::Yes(rv) => {
                ctx.metrics.status_writes.inc();
                ctx.superseded.replaced(&sref, resource_version.as_deref());
                resource_version = rv;
                reserved = Some(after);
            }
            Written::Unchanged => {}
            Written::Stale => return Ok(stale()),
        }
    }
    let reserved_at = fetch_started.elapsed();
    let deployment = match &decision.children {
        Some(c) => {
            match apply::children(
                &ctx.client,
                &sref,
                shard.metadata.uid.as_deref(),
                c,
                &ctx.applied,
                &ctx.watched,
            )
            .await
            {
                Ok(d) => {
                    if c.kubeconfigs.secret.is_some() {
                        let copied = Copied {
                            desired: c.kubeconfigs.desired,
                            from: c.kubeconfigs.from.clone(),
                        };
                        ctx.kubeconfigs.applied(&sref, copied);
                    }
                    Some(d)
                }
                Err(e) if e.label() == "ApiForbidden" => {
                    let rv = shard.metadata.resource_version.as_deref();
                    return not_opened(ctx, shard, &sref, rv, &mut decision, now, e).await;
                }
                Err(e) => return Err(e),
            }
        }
        None if decision.observed.paused => None,
        None => apply::read_deployment(&ctx.client, &sref).await?,
    };
    let applied_at = fetch_started.elapsed();
    decision.observed.deployment = deployment
        .as_ref()
        .map(|d| status::DeploymentView::of(shard.spec.replicas, d));
    let (written, new) = write_status(
        ctx,
        shard,
        &sref,
        resource_version.as_deref(),
        reserved.as_ref().or(shard.status.as_ref()),
        &decision.observed,
        now,
    )
    .await?;
    match written {
        Written::Yes(_) => {
            ctx.metrics.status_writes.inc();
            ctx.superseded.replaced(&sref, resource_version.as_deref());
            // Where the reconcile's time went (ms since it started fetching): with the
            // API server's latency, what an edit waits for.
            tracing::info!(
                active = new.active_accounts,
                conflicts = new.conflicts,
                ready = ready(&new),
                decided_ms = ms(decided),
                reserved_ms = ms(reserved_at),
                applied_ms = ms(applied_at),
                written_ms = ms(fetch_started.elapsed()),
                "status written"
            );
        }
        Written::Unchanged => {}
        Written::Stale => return Ok(stale()),
    }
    if !decision.observed.paused {
        ctx.claims.published(sref, status::holds(&new));
    }
    Ok(decision
        .next
        .delay()
        .map_or_else(Action::await_change, Action::requeue))
}

/// How soon a shard whose image change waits for its turn looks again.
const ROLLOUT_RETRY: Duration = Duration::from_secs(5);

/// Staged rollouts ([`crate::rollout`]): when the agents would move to a new default
/// image while as many other shards as allowed are rolling, `deployment` keeps the image
/// its agents run now. Returns whether it waits.
async fn stage_image(
    ctx: &Context,
    shard: &AgentShard,
    sref: &ShardRef,
    deployment: &mut k8s_openapi::api::apps::v1::Deployment,
) -> bool {
    let Some(desired) = rollout::template_image(deployment).map(str::to_owned) else {
        return false;
    };
    let name = scale_agent_crds::deployment_name(&sref.name);
    let running = ctx
        .watched
        .deployments
        .get(&ObjectRef::new(&name).within(&sref.namespace));
    let current = running.as_deref().and_then(rollout::template_image);
    let max = ctx.defaults.max_rolling_shards;
    let chosen = rollout::image(&desired, shard.spec.image.is_some(), current, || {
        ctx.rollouts
            .claim(sref, &desired, &ctx.watched.deployments, max)
    });
    if chosen == desired {
        return false;
    }
    let chosen = chosen.to_owned();
    tracing::info!(current = %chosen, desired = %desired, max, "the agents keep their image until fewer shards are rolling out");
    if let Some(container) = deployment
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|p| p.containers.first_mut())
    {
        container.image = Some(chosen.clone());
    }
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Normal,
        reason: "AgentImageQueued".to_owned(),
        note: Some(scale_agent_crds::decode::bounded(
            &format!(
                "the agents keep {chosen} until fewer than {max} other shards' agents are rolling out (a Deployment whose agents are not all available counts), then move to the new default image {desired}"
            ),
            status::MAX_NOTE_BYTES,
        )),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    let reference = kube::Resource::object_ref(shard, &());
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(error = %e, "publishing an Event failed");
    }
    true
}

/// The status computed from what the reconcile observed, starting from `stored` (the
/// shard's status as stored at `resource_version`), written when it changed; returns it
/// with what became of the write.
async fn write_status(
    ctx: &Context,
    shard: &AgentShard,
    sref: &ShardRef,
    resource_version: Option<&str>,
    stored: Option<&AgentShardStatus>,
    observed: &status::Observed,
    now: Time,
) -> Result<(Written, AgentShardStatus)> {
    let new = status::compute(stored, observed, now);
    let written = apply::status(
        &ctx.client,
        &ctx.recorder,
        shard,
        sref,
        resource_version,
        stored,
        &new,
    )
    .await?;
    Ok((written, new))
}

/// The shard changed since the cache gave it (usually the cache is behind the operator's
/// own last write): the watch brings the newer version, which triggers a new reconcile;
/// the requeue is a safety net. The names granted stay reserved until then.
fn stale() -> Action {
    tracing::debug!("the shard changed since it was read; deciding again on the newer version");
    Action::requeue(HANDOFF_RETRY)
}

/// The shard's replicas as the watches show them now.
fn observe_replicas(ctx: &Context, sref: &ShardRef, now: &Time) -> Replicas {
    let mut leases = ctx.leases.state();
    leases.retain(|l| {
        l.metadata.namespace.as_deref() == Some(sref.namespace.as_str())
            && l.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SHARD_LABEL))
                .is_some_and(|s| *s == sref.name)
    });
    Replicas::observe(
        sref,
        leases.iter().map(AsRef::as_ref),
        |pod| {
            ctx.pods
                .get(&ObjectRef::new(pod).within(&sref.namespace))
                .map(|p| p.metadata.clone())
        },
        now.0,
    )
}

/// The operator's CA, or why it cannot issue certificates.
/// Says in the status that the shard's namespace is not opened to the operator (it may
/// write statuses everywhere), then fails the reconcile with `e`: it retries with backoff.
async fn not_opened(
    ctx: &Context,
    shard: &AgentShard,
    sref: &ShardRef,
    resource_version: Option<&str>,
    decision: &mut decide::Decision,
    now: Time,
    e: Error,
) -> Result<Action> {
    decision.observed.config_problem = Some(status::Problem::new(
        status::reason::NAMESPACE_NOT_OPENED,
        format!(
            "the operator may not read Secrets or write this shard's agents in namespace {}: bind the ClusterRole scale-agent-operator-shards to its ServiceAccount there (manifests/shard-namespace); {e}",
            sref.namespace
        ),
    ));
    let (written, _) = write_status(
        ctx,
        shard,
        sref,
        resource_version,
        shard.status.as_ref(),
        &decision.observed,
        now,
    )
    .await?;
    if matches!(written, Written::Yes(_)) {
        ctx.superseded.replaced(sref, resource_version);
    }
    Err(e)
}

async fn read_ca(client: &Client, ca: &ShardRef) -> Result<std::result::Result<AgentCa, String>> {
    Ok(match fetch_secret(client, &ca.namespace, &ca.name).await? {
        Some(secret) => AgentCa::from_secret(&secret, &ca.key()),
        None => Err(format!(
            "the CA Secret {ca} (--agent-ca-secret) does not exist"
        )),
    })
}

async fn fetch_secret(client: &Client, ns: &str, name: &str) -> Result<Option<Secret>> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("reading Secret {ns}/{name}"), e))
}

/// How many of a shard's kubeconfig Secrets are read at once: a reconcile waits for one
/// round trip, not one per account.
const PARALLEL_SECRET_READS: usize = 8;

/// The kubeconfig Secrets a reconcile needs (`needed`: name → the uses made of it):
/// those checked before at the version the watch shows, by that check; the others read
/// ([`crate::kubeconfigs`]).
async fn kubeconfig_sources(
    ctx: &Context,
    sref: &ShardRef,
    needed: &BTreeMap<String, BTreeSet<Use>>,
) -> Result<BTreeMap<String, Option<Source>>> {
    let now = Instant::now();
    let mut sources = BTreeMap::new();
    let mut to_read = BTreeSet::new();
    for (name, uses) in needed {
        match ctx.kubeconfigs.usable(&sref.namespace, name, uses, now) {
            Some(checked) => {
                sources.insert(name.clone(), Some(Source::Known(checked)));
            }
            None => {
                to_read.insert(name.clone());
            }
        }
    }
    if !to_read.is_empty() {
        tracing::debug!(
            known = sources.len(),
            read = to_read.len(),
            "reading kubeconfig Secrets"
        );
    }
    sources.extend(read_sources(ctx, sref, to_read).await?);
    Ok(sources)
}

/// The kubeconfig Secrets `unread` (known so far only by their check, at the versions
/// `known` gives) with the data the agents' kubeconfig Secret is to copy: what that
/// Secret holds already at the same version and key is taken from it, as the operator
/// last applied it (one read, at once with the others); the others are read.
async fn copy_sources(
    ctx: &Context,
    sref: &ShardRef,
    needed: &BTreeMap<String, BTreeSet<Use>>,
    known: &BTreeMap<String, Option<Source>>,
    unread: &BTreeSet<String>,
) -> Result<BTreeMap<String, Option<Source>>> {
    let version = |name: &str| {
        known
            .get(name)
            .and_then(Option::as_ref)
            .and_then(Source::version)
    };
    let own_name = scale_agent_crds::kubeconfig_secret_name(&sref.name);
    let record = ctx.applied.get(
        sref,
        &ChildKey {
            kind: "Secret".to_owned(),
            name: own_name.clone(),
        },
    );
    let reuse = match (ctx.kubeconfigs.copied(sref), record) {
        (Some(copied), Some(record)) if copied.desired == record.desired => {
            kubeconfigs::reusable(unread, needed, version, &copied)
        }
        _ => BTreeMap::new(),
    };
    let rest: BTreeSet<String> = unread
        .iter()
        .filter(|n| !reuse.contains_key(*n))
        .cloned()
        .collect();
    let own = async {
        if reuse.is_empty() {
            return Ok(None);
        }
        fetch_secret(&ctx.client, &sref.namespace, &own_name).await
    };
    let (own, mut sources) = futures::try_join!(own, read_sources(ctx, sref, rest))?;
    // Only the very Secret the operator applied holds what the record says.
    let own = own
        .filter(|s| record.is_some_and(|r| crate::applied::fingerprint(&s.metadata) == r.observed));
    let mut missing = BTreeSet::new();
    for (secret, keys) in reuse {
        let data: Option<BTreeMap<String, ByteString>> = keys
            .into_iter()
            .map(|(key, account)| {
                let copy = own
                    .as_ref()?
                    .data
                    .as_ref()?
                    .get(&kubeconfig_file_name(&account))?;
                Some((key, copy.clone()))
            })
            .collect();
        match (data, version(secret.as_str())) {
            (Some(data), Some(v)) => {
                let source = Source::Read {
                    version: Some(v.clone()),
                    data,
                };
                sources.insert(secret, Some(source));
            }
            _ => {
                missing.insert(secret);
            }
        }
    }
    if !missing.is_empty() {
        sources.extend(read_sources(ctx, sref, missing).await?);
    }
    Ok(sources)
}

/// Reads the kubeconfig Secrets `names` of the shard's namespace, [`PARALLEL_SECRET_READS`]
/// at a time; `None`: not found (and its earlier check forgotten).
async fn read_sources(
    ctx: &Context,
    sref: &ShardRef,
    names: BTreeSet<String>,
) -> Result<BTreeMap<String, Option<Source>>> {
    use futures::{StreamExt, TryStreamExt};
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &sref.namespace);
    futures::stream::iter(names)
        .map(|name| {
            let api = api.clone();
            async move {
                let secret = api.get_opt(&name).await.map_err(|e| {
                    Error::kube(format!("reading Secret {}/{name}", sref.namespace), e)
                })?;
                if secret.is_none() {
                    ctx.kubeconfigs.gone(&sref.namespace, &name);
                }
                Ok::<_, Error>((name, secret.map(Source::read)))
            }
        })
        .buffer_unordered(PARALLEL_SECRET_READS)
        .try_collect()
        .await
}

/// A duration in whole milliseconds, for a log line.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn log_waiting(resolutions: &BTreeMap<String, Resolution>) {
    for (account, r) in resolutions {
        if let Resolution::Taken {
            owner,
            releasing: true,
        } = r
        {
            tracing::debug!(%account, %owner, "waiting for the owner to release the account");
        }
    }
}

fn ready(st: &AgentShardStatus) -> bool {
    st.condition(condition_type::READY)
        .is_some_and(|c| c.status == condition_status::TRUE)
}
