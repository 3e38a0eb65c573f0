//! The watches: one AgentShard watch (every replica) that feeds the shard cache and the
//! claims index, read tolerantly (a shard that does not decode is reported and skipped,
//! never stops the others); and, on the leader only, the kube-runtime Controller that
//! reconciles the shards the index asks for, their children's changes and those of the
//! user Secrets they reference.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Api, Client, Resource, ResourceExt};
use scale_agent_crds::decode::{self, Undecodable};
use scale_agent_crds::{AgentShard, ShardRef};
use tokio::sync::mpsc::unbounded_channel;

use crate::children::{Defaults, FIELD_MANAGER};
use crate::claims_index::ClaimsHandle;
use crate::metrics::Metrics;
use crate::reconcile::{self, Context};

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
        if let Some(event) = sifted.event {
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

/// Runs the controller until the future is dropped (leadership lost). The claims index
/// sends it every shard once at the start, then each shard a change concerns.
pub async fn run_controller(l: Leading) {
    let (tx, rx) = unbounded_channel();
    l.claims.lead(Some(tx));
    let ctx = Arc::new(Context {
        client: l.client.clone(),
        claims: l.claims.clone(),
        defaults: l.defaults.clone(),
        recorder: l.recorder.clone(),
        metrics: l.metrics.clone(),
        failures: std::sync::Mutex::new(HashMap::new()),
    });
    let reader = l.store.clone();
    let trigger =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
            .filter_map(move |r| future::ready(reader.get(&r).map(|s| Ok(s.as_ref().clone()))));
    let managed =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    let store = l.store.clone();
    let secrets = watch(
        Api::<PartialObjectMeta<Secret>>::all(l.client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    Controller::for_stream(trigger, l.store.clone())
        .owns(Api::<ConfigMap>::all(l.client.clone()), managed.clone())
        .owns(Api::<Deployment>::all(l.client.clone()), managed.clone())
        .owns(Api::<PodDisruptionBudget>::all(l.client.clone()), managed)
        .watches_stream(secrets, move |secret: PartialObjectMeta<Secret>| {
            shards_for_secret(&store.state(), &secret)
        })
        .with_config(ControllerConfig::default().debounce(Duration::from_millis(50)))
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller");
            }
            future::ready(())
        })
        .await;
}

/// The shards a Secret matters to: the shard owning it (its managed kubeconfig Secret)
/// and every shard in its namespace referencing it (kubeconfigs, hub TLS).
pub fn shards_for_secret(
    shards: &[Arc<AgentShard>],
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<AgentShard>> {
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
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
            .any(|a| a.kubeconfig_secret_ref.name == name)
            || s.spec
                .hub
                .as_ref()
                .and_then(|h| h.tls_secret_ref.as_ref())
                .is_some_and(|r| r.name == name);
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
        let mut hit = shards_for_secret(&shards, &secret("ns", "kc", None));
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
        let hit = shards_for_secret(&[], &secret("ns", "east-agent-kubeconfigs", Some("east")));
        assert_eq!(hit, [ObjectRef::new("east").within("ns")]);
    }
}
