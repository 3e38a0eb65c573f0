//! The watches: one AgentShard watch (every replica) that feeds the shard cache and the
//! claims index and says which shards a change concerns; and, on the leader only, the
//! kube-runtime Controller that reconciles them, triggered also by their children and by
//! the user Secrets they reference.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, future};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Api, Client, ResourceExt};
use scale_agent_crds::{AccountState, AgentShard, ShardRef};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_stream_shim::UnboundedReceiverStream;

use crate::children::{Defaults, FIELD_MANAGER};
use crate::index::ClaimIndex;
use crate::metrics::Metrics;
use crate::reconcile::{self, Context};

/// Where the shard watch sends "reconcile these" while this replica leads.
pub type TriggerSlot = Arc<Mutex<Option<UnboundedSender<ObjectRef<AgentShard>>>>>;

fn send(slot: &TriggerSlot, shards: impl IntoIterator<Item = ShardRef>) {
    if let Ok(guard) = slot.lock()
        && let Some(tx) = guard.as_ref()
    {
        for s in shards {
            let _ = tx.send(ObjectRef::new(&s.name).within(&s.namespace));
        }
    }
}

fn claims(shard: &AgentShard) -> Option<(ShardRef, Vec<String>, i64)> {
    let sref = shard.shard_ref()?;
    let created = shard
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or_else(|| Timestamp::now().as_second());
    Some((
        sref,
        shard.account_names().map(str::to_owned).collect(),
        created,
    ))
}

/// Watches every AgentShard: keeps the cache (`writer`) and the claims index current,
/// and asks the leader's controller to reconcile each shard a change concerns (the shard
/// itself and every shard sharing an account name with its old or new claims).
pub async fn watch_shards(
    api: Api<AgentShard>,
    writer: Writer<AgentShard>,
    index: Arc<Mutex<ClaimIndex>>,
    slot: TriggerSlot,
) {
    let stream = watch(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    futures::pin_mut!(stream);
    let mut relisted: BTreeSet<ShardRef> = BTreeSet::new();
    while let Some(event) = stream.next().await {
        let now = Timestamp::now().as_second();
        let affected = match event {
            Ok(Event::Apply(s)) => match (claims(&s), index.lock()) {
                (Some((sref, names, created)), Ok(mut idx)) => {
                    idx.upsert(&sref, names, created, now)
                }
                _ => BTreeSet::new(),
            },
            Ok(Event::Delete(s)) => match (s.shard_ref(), index.lock()) {
                (Some(sref), Ok(mut idx)) => {
                    tracing::info!(shard = %sref, "shard deleted: its account names are free");
                    idx.remove(&sref)
                }
                _ => BTreeSet::new(),
            },
            Ok(Event::Init) => {
                relisted.clear();
                BTreeSet::new()
            }
            Ok(Event::InitApply(s)) => {
                if let (Some((sref, names, created)), Ok(mut idx)) = (claims(&s), index.lock()) {
                    idx.upsert(&sref, names, created, now);
                    relisted.insert(sref);
                }
                BTreeSet::new()
            }
            Ok(Event::InitDone) => {
                if let Ok(mut idx) = index.lock() {
                    idx.retain(&relisted);
                }
                std::mem::take(&mut relisted)
            }
            Err(e) => {
                tracing::warn!(error = %e, "AgentShard watch failed; retrying");
                BTreeSet::new()
            }
        };
        send(&slot, affected);
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
    /// The claims index.
    pub index: Arc<Mutex<ClaimIndex>>,
    /// Where to plug the trigger channel.
    pub slot: TriggerSlot,
    /// Defaults for what shards leave out.
    pub defaults: Defaults,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Runs the controller until the future is dropped (leadership lost) — reconciling
/// every shard once at the start.
pub async fn run_controller(l: Leading) {
    // Who serves what is written in the statuses: the holders a previous leader left.
    if let Ok(mut idx) = l.index.lock() {
        idx.clear_holders();
        for s in l.store.state() {
            let (Some(sref), Some(st)) = (s.shard_ref(), &s.status) else {
                continue;
            };
            for a in st
                .accounts
                .iter()
                .filter(|a| a.state == AccountState::Active)
            {
                idx.seed_holder(&a.name, &sref);
            }
        }
    }
    let (tx, rx) = unbounded_channel();
    if let Ok(mut slot) = l.slot.lock() {
        *slot = Some(tx.clone());
    }
    for s in l.store.state() {
        let _ = tx.send(ObjectRef::from_obj(s.as_ref()));
    }
    let ctx = Arc::new(Context {
        client: l.client.clone(),
        index: l.index.clone(),
        store: l.store.clone(),
        defaults: l.defaults.clone(),
        recorder: l.recorder.clone(),
        metrics: l.metrics.clone(),
        triggers: tx,
        failures: Mutex::new(HashMap::new()),
    });
    let reader = l.store.clone();
    let trigger = UnboundedReceiverStream::new(rx)
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
            shards_for_secret(&store, &secret)
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
    if let Ok(mut slot) = l.slot.lock() {
        *slot = None;
    }
}

/// The shards a Secret matters to: the shard owning it (its managed kubeconfig Secret)
/// and every shard in its namespace referencing it (kubeconfigs, hub TLS).
fn shards_for_secret(
    store: &Store<AgentShard>,
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
    for s in store.state() {
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

mod tokio_stream_shim {
    //! A Stream over a tokio unbounded receiver (what tokio-stream's wrapper does).
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::sync::mpsc::UnboundedReceiver;

    /// Yields what the receiver receives.
    pub struct UnboundedReceiverStream<T>(UnboundedReceiver<T>);

    impl<T> UnboundedReceiverStream<T> {
        /// Wraps `rx`.
        pub fn new(rx: UnboundedReceiver<T>) -> Self {
            Self(rx)
        }
    }

    impl<T> futures::Stream for UnboundedReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}
