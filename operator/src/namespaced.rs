//! Watches of a namespaced kind in only the namespaces that hold AgentShards, not
//! cluster-wide: the operator may read Secrets only where a namespace was opened to it
//! (manifests/shard-namespace binds it there), so a compromise of the operator, or a
//! confused-deputy bug, reaches no other namespace's Secrets.
//!
//! One watch per namespace with a shard, started when the first shard appears there and
//! stopped (its objects forgotten) when the last one goes. The watches are merged into one
//! stream of events as a single cluster-wide watch would give them, except that a
//! namespace's relist becomes `Apply` and `Delete` events: a reflector store fed by it
//! keeps every namespace's objects (a relist of one namespace must not empty the others).
//! A namespace not opened to the operator answers 403; its watch retries with backoff and
//! is logged once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::Store;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use scale_agent_crds::AgentShard;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// How often the set of namespaces with shards is looked at again.
const RESCAN: Duration = Duration::from_secs(1);

enum Msg<K> {
    Event(String, Result<Event<K>, watcher::Error>),
    Closed(String),
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The annotation `kubectl apply` leaves on what it applied: the whole object as
/// applied, for a Secret its data.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the merge and the stores fed by it keep of an object: neither who wrote which
/// field nor the copy `kubectl apply` left in [`LAST_APPLIED`] (a metadata watch of
/// Secrets would otherwise hold the data of every Secret applied with kubectl).
fn trim<K: Resource>(k: &mut K) {
    crate::controller::strip_managed_fields(k);
    if let Some(a) = k.meta_mut().annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// The namespaces `shards` are in.
pub fn shard_namespaces(shards: &Store<AgentShard>) -> BTreeSet<String> {
    shards
        .state()
        .iter()
        .filter_map(|s| s.namespace())
        .collect()
}

/// Events of `K` (selected by `config`) in each namespace that holds an AgentShard of
/// `shards`, merged, the objects without their managedFields and last-applied copy
/// ([`trim`]: neither the merge nor the stores fed by it keep them); see the module
/// documentation. The watches stop when the stream is dropped.
pub fn watch_shard_namespaces<K>(
    client: Client,
    shards: Store<AgentShard>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel::<Msg<K>>();
    let supervisor = AbortOnDrop(tokio::spawn(async move {
        let mut running: HashMap<String, AbortOnDrop> = HashMap::new();
        loop {
            let wanted = shard_namespaces(&shards);
            let gone: Vec<String> = running
                .keys()
                .filter(|ns| !wanted.contains(*ns))
                .cloned()
                .collect();
            for ns in gone {
                running.remove(&ns);
                if tx.send(Msg::Closed(ns)).is_err() {
                    return;
                }
            }
            for ns in wanted {
                if running.contains_key(&ns) {
                    continue;
                }
                let api = Api::<K>::namespaced(client.clone(), &ns);
                let events = watcher::watcher(api, config.clone())
                    .default_backoff()
                    .modify(trim);
                let tx = tx.clone();
                let name = ns.clone();
                running.insert(
                    ns,
                    AbortOnDrop(tokio::spawn(async move {
                        futures::pin_mut!(events);
                        while let Some(e) = events.next().await {
                            if tx.send(Msg::Event(name.clone(), e)).is_err() {
                                return;
                            }
                        }
                    })),
                );
            }
            tokio::time::sleep(RESCAN).await;
        }
    }));
    // The store fed by this stream is ready at once: each namespace's objects arrive as
    // they are listed.
    let start = futures::stream::iter([Ok(Event::Init), Ok(Event::InitDone)]);
    let merged = futures::stream::unfold(
        (rx, Merge::<K>::default(), supervisor),
        |(mut rx, mut merge, supervisor)| async move {
            let msg = rx.recv().await?;
            let out = merge.apply(msg);
            Some((futures::stream::iter(out), (rx, merge, supervisor)))
        },
    )
    .flatten();
    start.chain(merged)
}

/// What the merged watches have shown, per namespace, to turn each namespace's relist
/// into changes.
struct Merge<K> {
    /// Namespace → name → object.
    objects: HashMap<String, HashMap<String, K>>,
    /// Namespaces being relisted: what the relist has shown so far.
    listing: HashMap<String, HashMap<String, K>>,
    /// Namespaces whose watch fails (logged once until it works again).
    failing: HashSet<String>,
}

impl<K> Default for Merge<K> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            listing: HashMap::new(),
            failing: HashSet::new(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + Clone> Merge<K> {
    fn apply(&mut self, msg: Msg<K>) -> Vec<Result<Event<K>, watcher::Error>> {
        match msg {
            Msg::Closed(ns) => {
                self.listing.remove(&ns);
                self.failing.remove(&ns);
                self.objects
                    .remove(&ns)
                    .into_iter()
                    .flat_map(HashMap::into_values)
                    .map(|o| Ok(Event::Delete(o)))
                    .collect()
            }
            Msg::Event(ns, Err(e)) => {
                if self.failing.insert(ns.clone()) {
                    let error = scale_agent_crds::decode::bounded(
                        &e.to_string(),
                        scale_agent_crds::decode::MAX_REASON_LEN,
                    );
                    tracing::warn!(
                        kind = %K::kind(&()),
                        namespace = %ns,
                        %error,
                        "watch failed (is the namespace opened to the operator? manifests/shard-namespace); retrying"
                    );
                }
                vec![Err(e)]
            }
            Msg::Event(ns, Ok(event)) => {
                // A retry starts with Init before its list fails again: only what comes
                // after a list shows the watch works.
                if !matches!(event, Event::Init) {
                    self.failing.remove(&ns);
                }
                match event {
                    Event::Init => {
                        self.listing.insert(ns, HashMap::new());
                        Vec::new()
                    }
                    Event::InitApply(o) => {
                        self.listing
                            .entry(ns)
                            .or_default()
                            .insert(o.name_any(), o.clone());
                        vec![Ok(Event::Apply(o))]
                    }
                    Event::InitDone => {
                        let listed = self.listing.remove(&ns).unwrap_or_default();
                        let before = self.objects.insert(ns, listed.clone());
                        before
                            .into_iter()
                            .flat_map(HashMap::into_iter)
                            .filter(|(name, _)| !listed.contains_key(name))
                            .map(|(_, o)| Ok(Event::Delete(o)))
                            .collect()
                    }
                    Event::Apply(o) => {
                        self.objects
                            .entry(ns)
                            .or_default()
                            .insert(o.name_any(), o.clone());
                        vec![Ok(Event::Apply(o))]
                    }
                    Event::Delete(o) => {
                        if let Some(objects) = self.objects.get_mut(&ns) {
                            objects.remove(&o.name_any());
                        }
                        vec![Ok(Event::Delete(o))]
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::ObjectMeta;

    fn secret(ns: &str, name: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        }
    }

    fn names(events: &[Result<Event<Secret>, watcher::Error>]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Ok(Event::Apply(o)) => format!("+{}", o.name_any()),
                Ok(Event::Delete(o)) => format!("-{}", o.name_any()),
                Ok(_) => "other".into(),
                Err(_) => "error".into(),
            })
            .collect()
    }

    /// A relist of one namespace drops only that namespace's vanished objects, and a
    /// namespace left by its last shard forgets its objects; the store fed by the merge
    /// never sees another namespace's relist.
    /// A Secret created with `kubectl apply` carries its data in an annotation, which a
    /// metadata watch delivers: the merge does not keep it.
    #[test]
    fn the_copy_kubectl_apply_leaves_is_not_kept() {
        let mut s = secret("a", "kc");
        s.metadata.annotations = Some(
            [
                (
                    LAST_APPLIED.to_owned(),
                    "{\"data\":{\"kubeconfig\":\"c2VjcmV0\"}}".to_owned(),
                ),
                ("team".to_owned(), "x".to_owned()),
            ]
            .into(),
        );
        trim(&mut s);
        assert_eq!(
            s.metadata.annotations,
            Some([("team".to_owned(), "x".to_owned())].into())
        );
    }

    #[test]
    fn a_relist_of_one_namespace_leaves_the_others_alone() {
        let mut m = Merge::<Secret>::default();
        let ev = |ns: &str, e: Event<Secret>| Msg::Event(ns.into(), Ok(e));
        let mut out = Vec::new();
        for msg in [
            ev("a", Event::Init),
            ev("a", Event::InitApply(secret("a", "x"))),
            ev("a", Event::InitApply(secret("a", "y"))),
            ev("a", Event::InitDone),
            ev("b", Event::Init),
            ev("b", Event::InitApply(secret("b", "z"))),
            ev("b", Event::InitDone),
        ] {
            out.extend(m.apply(msg));
        }
        assert_eq!(names(&out), ["+x", "+y", "+z"]);
        // a relists without y.
        let mut out = Vec::new();
        for msg in [
            ev("a", Event::Init),
            ev("a", Event::InitApply(secret("a", "x"))),
            ev("a", Event::InitDone),
        ] {
            out.extend(m.apply(msg));
        }
        assert_eq!(names(&out), ["+x", "-y"]);
        // b has no shard any more.
        assert_eq!(names(&m.apply(Msg::Closed("b".into()))), ["-z"]);
        assert_eq!(
            names(&m.apply(ev("a", Event::Delete(secret("a", "x"))))),
            ["-x"]
        );
    }
}
