//! The watches: one AgentShard watch (every replica) that feeds the shard cache and the
//! claims index, read tolerantly (a shard that does not decode is reported and skipped,
//! never stops the others); and, on the leader only, the kube-runtime Controller that
//! reconciles the shards the index asks for, their children's changes, those of the
//! user Secrets they reference, and the agent replicas' Leases and pods.
//!
//! Lease renewals come every few seconds from every replica; only a change of what a
//! Lease says (its report, its holder, its owner) triggers a reconcile of its shard
//! ([`Signatures`]), so a steady fleet costs no reconcile. A replica that stops renewing
//! changes nothing: its shard is looked at again when its Lease expires (the reconcile
//! asks for that).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt, future};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Api, Client, Resource, ResourceExt};
use scale_agent_crds::decode::{self, Undecodable};
use scale_agent_crds::membership::{AGENT_POD_SELECTOR, SHARD_LABEL};
use scale_agent_crds::report::REPORT_ANNOTATION;
use scale_agent_crds::{AgentShard, ShardRef};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::applied::{Applied, Watched};
use crate::children::{self, Defaults, FIELD_MANAGER, TlsSource};
use crate::claims_index::ClaimsHandle;
use crate::kubeconfigs::Kubeconfigs;
use crate::metrics::Metrics;
use crate::reconcile::{self, Context};
use crate::superseded::Superseded;

/// The stable reason of the Warning Event about an AgentShard that cannot be decoded.
pub const UNDECODABLE_REASON: &str = "Undecodable";

/// Watches every AgentShard: keeps the cache (`writer`) and the claims index current. A
/// shard that does not decode is reported through `undecodable` and stands as its last
/// decodable version (or is left out), so its names stay as they were.
pub async fn watch_shards(
    api: Api<DeserializeGuard<AgentShard>>,
    mut writer: Writer<AgentShard>,
    claims: ClaimsHandle,
    mut undecodable: Undecodables,
) {
    let reader = writer.as_reader();
    let stream = watch(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                let error = decode::bounded(&e.to_string(), decode::MAX_REASON_LEN);
                tracing::warn!(%error, "AgentShard watch failed; retrying");
                continue;
            }
        };
        let sifted = decode::sift(event, |r| {
            reader
                .get(&ObjectRef::new(&r.name).within(&r.namespace))
                .map(|s| s.as_ref().clone())
        });
        let decoded = sifted.undecodable.is_none();
        if let Some(u) = sifted.undecodable {
            undecodable.report(u);
        }
        if let Some(mut event) = sifted.event {
            // Who wrote which field is not what the operator reads: the cache and the
            // claims index keep the shards without it.
            if let Event::Apply(s) | Event::InitApply(s) | Event::Delete(s) = &mut event {
                strip_managed_fields(s);
            }
            match &event {
                Event::Apply(s) | Event::InitApply(s) | Event::Delete(s) if decoded => {
                    undecodable.forget(s.shard_ref().as_ref());
                }
                _ => {}
            }
            writer.apply_watcher_event(&event);
            claims.watched(event);
        }
    }
}

/// Reports AgentShards that do not decode: a log line naming the shard and the reason
/// (every replica), the `undecodable_shards_total` metric, and, on the leader, a
/// Warning Event on the shard. Once per version of the object.
pub struct Undecodables {
    recorder: Recorder,
    metrics: Arc<Metrics>,
    leading: tokio::sync::watch::Receiver<bool>,
    /// Shard → the resourceVersion last reported.
    reported: HashMap<ShardRef, Option<String>>,
}

impl Undecodables {
    /// A reporter publishing Events with `recorder` while `leading` is true.
    pub fn new(
        recorder: Recorder,
        metrics: Arc<Metrics>,
        leading: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            recorder,
            metrics,
            leading,
            reported: HashMap::new(),
        }
    }

    fn report(&mut self, u: Undecodable) {
        if self.reported.get(&u.shard) == Some(&u.resource_version) {
            return;
        }
        self.reported
            .insert(u.shard.clone(), u.resource_version.clone());
        tracing::warn!(
            shard = %u.shard,
            resource_version = u.resource_version.as_deref().unwrap_or(""),
            reason = %u.reason,
            kept_last_good = u.kept_last_good,
            "AgentShard cannot be decoded; skipped (its account names stay as they were)"
        );
        self.metrics.undecodable_shards.inc();
        if !*self.leading.borrow() {
            return;
        }
        let reference = ObjectReference {
            api_version: Some(AgentShard::api_version(&()).into_owned()),
            kind: Some(AgentShard::kind(&()).into_owned()),
            namespace: Some(u.shard.namespace.clone()),
            name: Some(u.shard.name.clone()),
            uid: u.uid.clone(),
            resource_version: u.resource_version.clone(),
            ..ObjectReference::default()
        };
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: UNDECODABLE_REASON.to_owned(),
            note: Some(format!(
                "the operator cannot read this AgentShard and leaves it as it was: {}",
                u.reason
            )),
            action: "Decode".to_owned(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "publishing an Event failed");
            }
        });
    }

    fn forget(&mut self, shard: Option<&ShardRef>) {
        if let Some(s) = shard
            && !self.reported.is_empty()
        {
            self.reported.remove(s);
        }
    }
}

/// Keeps the shards / accounts / conflicts gauges current from the cache.
pub async fn update_gauges(store: Store<AgentShard>, metrics: Arc<Metrics>) {
    loop {
        let shards = store.state();
        let (mut accounts, mut conflicts) = (0i64, 0i64);
        for s in &shards {
            if let Some(st) = &s.status {
                accounts += i64::from(st.active_accounts);
                conflicts += i64::from(st.conflicts);
            }
        }
        metrics
            .shards
            .set(i64::try_from(shards.len()).unwrap_or(i64::MAX));
        metrics.accounts.set(accounts);
        metrics.conflicts.set(conflicts);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Everything the leader's controller needs.
pub struct Leading {
    /// API client.
    pub client: Client,
    /// The shard cache.
    pub store: Store<AgentShard>,
    /// The claims index, where reconcile triggers come from.
    pub claims: ClaimsHandle,
    /// Defaults for what shards leave out.
    pub defaults: Defaults,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// How many shards are reconciled at once. Each reconcile holds its shard's kubeconfigs
/// and children in memory and a connection to the API server while it waits for it, so
/// a thousand shards created at once would otherwise hold a thousand of each; the API
/// server is what a reconcile waits for, and this many keep it busy.
pub const MAX_CONCURRENT_RECONCILES: u16 = 32;

/// How long the leader waits for the replicas' Leases and pods before reconciling.
const REPLICAS_WAIT: Duration = Duration::from_secs(30);

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What each watched object last said, as far as its shard's status is concerned: a
/// reconcile is asked for only when that changes (or the object goes).
#[derive(Default)]
pub struct Signatures {
    seen: HashMap<(String, String), u64>,
}

impl Signatures {
    /// The shard to reconcile for this watch event, if what the object says changed:
    /// `signature` hashes what matters of an object, `shard` names its shard.
    pub fn trigger<K: Resource>(
        &mut self,
        event: &Event<K>,
        signature: impl Fn(&K) -> u64,
        shard: impl Fn(&K) -> Option<ObjectRef<AgentShard>>,
    ) -> Option<ObjectRef<AgentShard>> {
        let key = |k: &K| {
            (
                k.meta().namespace.clone().unwrap_or_default(),
                k.meta().name.clone().unwrap_or_default(),
            )
        };
        match event {
            Event::Apply(k) | Event::InitApply(k) => {
                let sig = signature(k);
                (self.seen.insert(key(k), sig) != Some(sig))
                    .then(|| shard(k))
                    .flatten()
            }
            Event::Delete(k) => {
                self.seen.remove(&key(k));
                shard(k)
            }
            Event::Init | Event::InitDone => None,
        }
    }
}

fn hash_of(value: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

fn owners(meta: &ObjectMeta) -> Vec<(&str, &str, &str)> {
    meta.owner_references
        .iter()
        .flatten()
        .map(|o| (o.kind.as_str(), o.name.as_str(), o.uid.as_str()))
        .collect()
}

/// What matters of a replica's Lease: its report, holder, owner and shard label (not its
/// renewal time).
pub fn lease_signature(l: &Lease) -> u64 {
    let m = &l.metadata;
    hash_of((
        m.annotations
            .as_ref()
            .and_then(|a| a.get(REPORT_ANNOTATION)),
        l.spec.as_ref().and_then(|s| s.holder_identity.as_ref()),
        owners(m),
        m.labels.as_ref().and_then(|a| a.get(SHARD_LABEL)),
        m.uid.as_ref(),
    ))
}

/// What matters of an agent pod for membership: its uid, labels, owner and deletion.
pub fn pod_signature(p: &PartialObjectMeta<Pod>) -> u64 {
    let m = &p.metadata;
    hash_of((
        m.uid.as_ref(),
        m.labels.as_ref(),
        owners(m),
        m.deletion_timestamp.is_some(),
    ))
}

/// The shard an object labelled `scaleagent.dev/shard` belongs to.
pub fn labelled_shard<K: Resource>(k: &K) -> Option<ObjectRef<AgentShard>> {
    let m = k.meta();
    let shard = m.labels.as_ref()?.get(SHARD_LABEL)?;
    Some(ObjectRef::new(shard).within(m.namespace.as_deref()?))
}

/// Feeds `writer` from the watch `events` and sends the shards whose status may change
/// to `triggers`.
fn forward<K>(
    events: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    mut writer: Writer<K>,
    signature: fn(&K) -> u64,
    triggers: UnboundedSender<ObjectRef<AgentShard>>,
) -> AbortOnDrop
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    AbortOnDrop(tokio::spawn(async move {
        let mut signatures = Signatures::default();
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    let error = decode::bounded(&e.to_string(), decode::MAX_REASON_LEN);
                    tracing::warn!(kind = %K::kind(&()), %error, "watch failed; retrying");
                    continue;
                }
            };
            writer.apply_watcher_event(&event);
            if let Some(shard) = signatures.trigger(&event, signature, labelled_shard)
                && triggers.send(shard).is_err()
            {
                return;
            }
        }
    }))
}

/// Runs the controller until the future is dropped (leadership lost). The claims index
/// sends it every shard once at the start, then each shard a change concerns; the agent
/// replicas' Leases and pods, each shard whose replicas' reports changed.
pub async fn run_controller(l: Leading) {
    let (tx, rx) = unbounded_channel();
    let (replica_tx, replica_rx) = unbounded_channel();
    let lease_writer = Writer::<Lease>::default();
    let leases = lease_writer.as_reader();
    let pod_writer = Writer::<PartialObjectMeta<Pod>>::default();
    let pods = pod_writer.as_reader();
    let _lease_watch = forward(
        watch(
            Api::<Lease>::all(l.client.clone()),
            watcher::Config::default().labels(SHARD_LABEL),
        )
        .default_backoff(),
        lease_writer,
        lease_signature,
        replica_tx.clone(),
    );
    let _pod_watch = forward(
        watch(
            Api::<PartialObjectMeta<Pod>>::all(l.client.clone()),
            watcher::Config::default().labels(AGENT_POD_SELECTOR),
        )
        .default_backoff(),
        pod_writer,
        pod_signature,
        replica_tx,
    );
    // Deciding before the replicas are known would report every account NoReplica; but
    // an operator that may not read them (its RBAC) still makes the children.
    let known =
        async { leases.wait_until_ready().await.is_ok() && pods.wait_until_ready().await.is_ok() };
    match tokio::time::timeout(REPLICAS_WAIT, known).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(_) => tracing::error!(
            "the agent replicas' Leases and pods cannot be read (RBAC: list and watch leases and pods): reconciling without them, every account shows NoReplica"
        ),
    }
    let managed =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    let (config_maps, config_map_writer) = reflector::store();
    let config_map_events = watch(
        Api::<PartialObjectMeta<ConfigMap>>::all(l.client.clone()),
        managed.clone(),
    )
    .default_backoff()
    .modify(strip_managed_fields)
    .reflect(config_map_writer)
    .touched_objects();
    let (deployments, deployment_writer) = reflector::store();
    let deployment_events = watch(Api::<Deployment>::all(l.client.clone()), managed.clone())
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(deployment_writer)
        .touched_objects();
    let (pdbs, pdb_writer) = reflector::store();
    let pdb_events = watch(
        Api::<PartialObjectMeta<PodDisruptionBudget>>::all(l.client.clone()),
        managed,
    )
    .default_backoff()
    .modify(strip_managed_fields)
    .reflect(pdb_writer)
    .touched_objects();
    let (managed_secrets, mut secret_writer) = reflector::store();
    let kubeconfigs = Arc::new(Kubeconfigs::new());
    // Secrets only in the namespaces with shards, which are opened to the operator: its
    // RBAC grants no cluster-wide Secret read. Their metadata only: the versions tell a
    // reconcile which kubeconfig Secrets it must read (crate::kubeconfigs).
    let secrets = crate::namespaced::watch_shard_namespaces::<PartialObjectMeta<Secret>>(
        l.client.clone(),
        l.store.clone(),
        watcher::Config::default(),
    )
    .inspect_ok({
        let kubeconfigs = Arc::clone(&kubeconfigs);
        move |event| {
            kubeconfigs.watched(event);
            reflect_managed(&mut secret_writer, event);
        }
    })
    .touched_objects();
    l.claims.lead(Some(tx));
    let ctx = Arc::new(Context {
        client: l.client.clone(),
        claims: l.claims.clone(),
        defaults: l.defaults.clone(),
        recorder: l.recorder.clone(),
        metrics: l.metrics.clone(),
        failures: std::sync::Mutex::new(HashMap::new()),
        leases,
        pods,
        applied: Applied::new(),
        watched: Watched {
            config_maps,
            secrets: managed_secrets,
            deployments,
            pdbs,
        },
        superseded: Superseded::new(),
        rollouts: crate::rollout::Rollouts::default(),
        kubeconfigs,
    });
    // A shard deleted without a reconcile (no finalizer: the watch just loses it) leaves
    // its records behind; drop them now and then.
    let _prune = {
        let (ctx, store) = (Arc::clone(&ctx), l.store.clone());
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(reconcile::RESYNC).await;
                let exists = |s: &ShardRef| {
                    store
                        .get(&ObjectRef::new(&s.name).within(&s.namespace))
                        .is_some()
                };
                ctx.applied.retain(exists);
                ctx.superseded.retain(exists);
                ctx.kubeconfigs.retain(exists);
            }
        }))
    };
    let reader = l.store.clone();
    let trigger =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
            .filter_map(move |r| future::ready(reader.get(&r).map(|s| Ok(s.as_ref().clone()))));
    let replica_triggers = futures::stream::unfold(replica_rx, |mut rx| async move {
        rx.recv().await.map(|r| (r, rx))
    });
    let store = l.store.clone();
    let defaults = l.defaults.clone();
    Controller::for_stream(trigger, l.store.clone())
        .owns_stream(config_map_events)
        .owns_stream(deployment_events)
        .owns_stream(pdb_events)
        .watches_stream(secrets, move |secret: PartialObjectMeta<Secret>| {
            shards_for_secret(&store.state(), &secret, &defaults)
        })
        .reconcile_on(replica_triggers)
        .with_config(
            ControllerConfig::default()
                .debounce(Duration::from_millis(50))
                .concurrency(MAX_CONCURRENT_RECONCILES),
        )
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller");
            }
            future::ready(())
        })
        .await;
}

/// What the operator's stores keep of an object: not who wrote which field.
pub(crate) fn strip_managed_fields<K: Resource>(k: &mut K) {
    k.meta_mut().managed_fields = None;
}

/// Keeps `writer` (the Secrets the operator manages) current from the watch of every
/// Secret of the shards' namespaces: a Secret that is not (or no longer) labelled as the operator's is left out.
fn reflect_managed(
    writer: &mut Writer<PartialObjectMeta<Secret>>,
    event: &Event<PartialObjectMeta<Secret>>,
) {
    let managed = |s: &PartialObjectMeta<Secret>| {
        s.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some(FIELD_MANAGER)
    };
    match event {
        Event::Apply(s) if !managed(s) => writer.apply_watcher_event(&Event::Delete(s.clone())),
        Event::InitApply(s) if !managed(s) => {}
        e => writer.apply_watcher_event(e),
    }
}

/// The shards a Secret matters to: the shard owning it (its managed kubeconfig and TLS
/// Secrets), every shard in its namespace referencing it (kubeconfigs, hub TLS, the
/// operator's default TLS Secret), and every shard when it is the operator's CA.
pub fn shards_for_secret(
    shards: &[Arc<AgentShard>],
    secret: &PartialObjectMeta<Secret>,
    defaults: &Defaults,
) -> Vec<ObjectRef<AgentShard>> {
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    if defaults
        .agent_ca
        .as_ref()
        .is_some_and(|ca| ca.namespace == ns && ca.name == name)
    {
        return shards
            .iter()
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect();
    }
    let mut out: Vec<ObjectRef<AgentShard>> = secret
        .owner_references()
        .iter()
        .filter(|o| o.kind == "AgentShard" && o.controller == Some(true))
        .map(|o| ObjectRef::new(&o.name).within(&ns))
        .collect();
    for s in shards {
        if s.metadata.namespace.as_deref() != Some(ns.as_str()) {
            continue;
        }
        let references = s
            .spec
            .accounts
            .iter()
            .any(|a| a.kubeconfig_secret_name() == Some(name.as_str()))
            || matches!(
                children::tls_source(s, defaults),
                TlsSource::Secret(n) | TlsSource::CertManager(n) if n == name
            );
        if references {
            out.push(ObjectRef::from_obj(s.as_ref()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;

    fn shard(ns: &str, name: &str, secrets: &[&str], tls: Option<&str>) -> Arc<AgentShard> {
        let spec = serde_json::json!({
            "hub": tls.map(|t| serde_json::json!({ "address": "hub:443", "tlsSecretRef": { "name": t } })),
            "accounts": secrets.iter().enumerate().map(|(i, s)| serde_json::json!({
                "name": format!("a{i}"), "kubeconfigSecretRef": { "name": s }
            })).collect::<Vec<_>>()
        });
        let mut s = AgentShard::new(name, serde_json::from_value(spec).expect("spec"));
        s.metadata.namespace = Some(ns.into());
        Arc::new(s)
    }

    fn secret(ns: &str, name: &str, owner: Option<&str>) -> PartialObjectMeta<Secret> {
        PartialObjectMeta::<Secret> {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                owner_references: owner.map(|o| {
                    vec![OwnerReference {
                        api_version: "scaleagent.dev/v1alpha1".into(),
                        kind: "AgentShard".into(),
                        name: o.into(),
                        uid: "u".into(),
                        controller: Some(true),
                        block_owner_deletion: None,
                    }]
                }),
                ..ObjectMeta::default()
            },
            ..PartialObjectMeta::default()
        }
    }

    #[test]
    fn a_secret_concerns_the_shards_of_its_namespace_that_reference_it() {
        let shards = vec![
            shard("ns", "uses-kc", &["kc", "other"], None),
            shard("ns", "uses-tls", &[], Some("kc")),
            shard("ns", "unrelated", &["other"], None),
            shard("elsewhere", "same-name", &["kc"], None),
        ];
        let mut hit = shards_for_secret(&shards, &secret("ns", "kc", None), &Defaults::default());
        hit.sort_by_key(|r| r.name.clone());
        assert_eq!(
            hit,
            [
                ObjectRef::new("uses-kc").within("ns"),
                ObjectRef::new("uses-tls").within("ns")
            ]
        );
    }

    #[test]
    fn a_managed_secret_concerns_its_owner() {
        let hit = shards_for_secret(
            &[],
            &secret("ns", "east-agent-kubeconfigs", Some("east")),
            &Defaults::default(),
        );
        assert_eq!(hit, [ObjectRef::new("east").within("ns")]);
    }

    #[test]
    fn the_default_tls_secret_and_the_ca_concern_their_shards() {
        let shards = [
            shard("ns", "bare", &[], None),
            shard("other", "bare", &[], None),
        ];
        let mut defaults = Defaults {
            hub: Some("lb:443".into()),
            hub_tls_secret: Some("{shard}-hub-tls".into()),
            ..Defaults::default()
        };
        // Shards made by `shard` name a hub: give the first none, so the default applies.
        let mut no_hub = (*shards[0]).clone();
        no_hub.spec.hub = None;
        let shards = vec![Arc::new(no_hub), shards[1].clone()];
        let hit = shards_for_secret(&shards, &secret("ns", "bare-hub-tls", None), &defaults);
        assert_eq!(hit, [ObjectRef::new("bare").within("ns")]);
        defaults.agent_ca = Some(ShardRef::new("system", "ca"));
        let hit = shards_for_secret(&shards, &secret("system", "ca", None), &defaults);
        assert_eq!(hit.len(), 2);
    }

    fn lease_event(report: &str, renewed: &str) -> Event<Lease> {
        Event::Apply(
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": "scale-agent-p", "namespace": "ns",
                    "labels": { SHARD_LABEL: "east" },
                    "annotations": { REPORT_ANNOTATION: report },
                },
                "spec": { "holderIdentity": "p", "renewTime": renewed },
            }))
            .expect("lease"),
        )
    }

    #[test]
    fn only_a_changed_report_triggers_its_shard() {
        let mut s = Signatures::default();
        let east = Some(ObjectRef::new("east").within("ns"));
        let mut trigger = |e: &Event<Lease>| s.trigger(e, lease_signature, labelled_shard);
        assert_eq!(
            trigger(&lease_event("a", "2025-01-01T00:00:00.000000Z")),
            east
        );
        // A renewal: nothing.
        assert_eq!(
            trigger(&lease_event("a", "2025-01-01T00:00:03.000000Z")),
            None
        );
        assert_eq!(
            trigger(&lease_event("b", "2025-01-01T00:00:06.000000Z")),
            east
        );
        let Event::Apply(gone) = lease_event("b", "2025-01-01T00:00:09.000000Z") else {
            unreachable!()
        };
        assert_eq!(trigger(&Event::Delete(gone)), east);
    }
}
