//! What the operator last applied of each shard's children, so that a reconcile applies
//! only the children that need it: every AgentShard watch event, status write and
//! child change brings a reconcile, and server-side applying the seven unchanged
//! children each time is seven writes the API server has to process for nothing.
//!
//! A child is applied again when what the shard asks of it changed (a hash of the
//! desired object), or when the child as the operator's watches show it is no longer
//! what the operator's last apply left (deleted, edited by someone else, its labels or
//! owner changed); when the watch does not show at all a child the operator applied as
//! it would now, the API server is asked first ([`unconfirmed`]): the watch may not
//! have caught up with that apply. The children the operator does not watch (ServiceAccount, Role,
//! RoleBinding, cert-manager Certificate) are applied again once they were last applied
//! [`RESYNC`] ago, which is when the periodic resync looks at every shard anyway.
//!
//! The rule ([`needs_apply`]) is pure; [`Applied`] keeps the records for one leadership
//! term (a new leader applies everything once).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use scale_agent_crds::ShardRef;
use serde::Serialize;

use crate::decide::RESYNC;

/// One child of a shard: its kind and name (the namespace is the shard's).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChildKey {
    /// The child's kind, as Kubernetes spells it.
    pub kind: String,
    /// The child's name.
    pub name: String,
}

/// The operator's last successful apply of one child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// [`desired_hash`] of the object applied.
    pub desired: u64,
    /// [`fingerprint`] of the object as the API server returned it.
    pub observed: u64,
    /// When it was applied.
    pub at: Instant,
}

/// How the operator sees a child now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Through a watch: its [`fingerprint`], or `None` when the watch does not show it
    /// (deleted, its labels changed, or the watch is not synced yet).
    Watched(Option<u64>),
    /// Not watched: only the time since the last apply tells.
    Unwatched,
}

/// Whether a child whose desired object hashes to `desired`, seen as `seen`, must be
/// applied, given the operator's last apply of it (`record`).
pub fn needs_apply(record: Option<&Record>, desired: u64, seen: Seen, now: Instant) -> bool {
    let Some(r) = record else {
        return true;
    };
    if r.desired != desired {
        return true;
    }
    match seen {
        Seen::Watched(Some(fp)) => fp != r.observed,
        Seen::Watched(None) => true,
        Seen::Unwatched => now.saturating_duration_since(r.at) >= resync_after(),
    }
}

/// Whether a watched child that [`needs_apply`] would apply only because the watch does
/// not show it is the very object the operator last applied (`record`): the watch may
/// simply not have caught up with that apply yet, so the API server is asked before it
/// is applied again (as it is when the read finds it gone or changed).
pub fn unconfirmed(record: &Record, desired: u64, seen: Seen) -> bool {
    record.desired == desired && seen == Seen::Watched(None)
}

/// How long an unwatched child is left alone: a little under [`RESYNC`], so that the
/// periodic resync (which comes [`RESYNC`] after the reconcile that applied it) does
/// apply it.
fn resync_after() -> Duration {
    RESYNC.saturating_sub(Duration::from_secs(5))
}

/// A hash of the object the operator is about to apply. Stable within the process
/// (the records live no longer).
pub fn desired_hash<T: Serialize>(obj: &T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match serde_json::to_vec(obj) {
        Ok(bytes) => bytes.hash(&mut h),
        // Cannot happen for Kubernetes objects; a hash no record has forces the apply.
        Err(_) => Instant::now().hash(&mut h),
    }
    h.finish()
}

/// What of a child's metadata changes when anyone but its controllers' status writes
/// changes it: for objects with a `generation` (a spec the API server versions: the
/// Deployment, the PodDisruptionBudget), the generation, labels, annotations and owners
/// (their status changes all the time and is not the operator's); for the others, the
/// resourceVersion. The uid tells a child deleted and created again.
pub fn fingerprint(meta: &ObjectMeta) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    meta.uid.hash(&mut h);
    match meta.generation {
        Some(g) => {
            g.hash(&mut h);
            meta.labels.hash(&mut h);
            meta.annotations.hash(&mut h);
            for o in meta.owner_references.iter().flatten() {
                (&o.api_version, &o.kind, &o.name, &o.uid, o.controller).hash(&mut h);
            }
        }
        None => meta.resource_version.hash(&mut h),
    }
    h.finish()
}

/// The children as the operator's watches show them (those labelled
/// `app.kubernetes.io/managed-by: scale-agent-operator`).
#[derive(Clone)]
pub struct Watched {
    /// The agent configs.
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    /// The kubeconfig and TLS Secrets.
    pub secrets: Store<PartialObjectMeta<Secret>>,
    /// The agent Deployments, with their status (what the shard's status reports when
    /// the Deployment is left as it is).
    pub deployments: Store<Deployment>,
    /// The PodDisruptionBudgets.
    pub pdbs: Store<PartialObjectMeta<PodDisruptionBudget>>,
}

impl Watched {
    /// How the ConfigMap `name` in `ns` is seen.
    pub fn config_map(&self, ns: &str, name: &str) -> Seen {
        Seen::Watched(
            self.config_maps
                .get(&ObjectRef::new(name).within(ns))
                .map(|o| fingerprint(&o.metadata)),
        )
    }

    /// How the Secret `name` in `ns` is seen.
    pub fn secret(&self, ns: &str, name: &str) -> Seen {
        Seen::Watched(
            self.secrets
                .get(&ObjectRef::new(name).within(ns))
                .map(|o| fingerprint(&o.metadata)),
        )
    }

    /// How the Deployment `name` in `ns` is seen.
    pub fn deployment(&self, ns: &str, name: &str) -> Seen {
        Seen::Watched(
            self.deployments
                .get(&ObjectRef::new(name).within(ns))
                .map(|o| fingerprint(&o.metadata)),
        )
    }

    /// How the PodDisruptionBudget `name` in `ns` is seen.
    pub fn pdb(&self, ns: &str, name: &str) -> Seen {
        Seen::Watched(
            self.pdbs
                .get(&ObjectRef::new(name).within(ns))
                .map(|o| fingerprint(&o.metadata)),
        )
    }
}

/// The records of one leadership term: shard → child → last apply.
#[derive(Debug, Default)]
pub struct Applied {
    shards: Mutex<HashMap<ShardRef, HashMap<ChildKey, Record>>>,
}

impl Applied {
    /// No records: every child is applied once.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last apply of `child` of `shard`.
    pub fn get(&self, shard: &ShardRef, child: &ChildKey) -> Option<Record> {
        self.shards
            .lock()
            .ok()
            .and_then(|s| s.get(shard).and_then(|c| c.get(child)).copied())
    }

    /// Records a successful apply.
    pub fn record(&self, shard: &ShardRef, child: ChildKey, record: Record) {
        if let Ok(mut s) = self.shards.lock() {
            s.entry(shard.clone()).or_default().insert(child, record);
        }
    }

    /// Forgets `child` of `shard` (its apply failed or it was deleted): it is applied
    /// next time.
    pub fn forget_child(&self, shard: &ShardRef, child: &ChildKey) {
        if let Ok(mut s) = self.shards.lock()
            && let Some(c) = s.get_mut(shard)
        {
            c.remove(child);
        }
    }

    /// Forgets a shard that is going.
    pub fn forget(&self, shard: &ShardRef) {
        if let Ok(mut s) = self.shards.lock() {
            s.remove(shard);
        }
    }

    /// Keeps the records of the shards `keep` says still exist.
    pub fn retain(&self, keep: impl Fn(&ShardRef) -> bool) {
        if let Ok(mut s) = self.shards.lock() {
            s.retain(|shard, _| keep(shard));
        }
    }

    /// How many shards have records.
    pub fn len(&self) -> usize {
        self.shards.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether no shard has records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn meta(rv: &str, generation: Option<i64>) -> ObjectMeta {
        ObjectMeta {
            uid: Some("u1".into()),
            resource_version: Some(rv.into()),
            generation,
            ..ObjectMeta::default()
        }
    }

    fn record(desired: u64, observed: u64, at: Instant) -> Record {
        Record {
            desired,
            observed,
            at,
        }
    }

    #[test]
    fn an_unchanged_child_as_last_applied_is_left_alone() {
        let now = Instant::now();
        let r = record(1, 7, now);
        assert!(!needs_apply(Some(&r), 1, Seen::Watched(Some(7)), now));
        assert!(!needs_apply(
            Some(&r),
            1,
            Seen::Unwatched,
            now + Duration::from_secs(60)
        ));
    }

    #[test]
    fn a_new_desired_object_a_deleted_or_edited_child_is_applied() {
        let now = Instant::now();
        let r = record(1, 7, now);
        assert!(needs_apply(None, 1, Seen::Watched(Some(7)), now));
        assert!(needs_apply(Some(&r), 2, Seen::Watched(Some(7)), now));
        assert!(needs_apply(Some(&r), 2, Seen::Unwatched, now));
        assert!(needs_apply(Some(&r), 1, Seen::Watched(None), now));
        assert!(needs_apply(Some(&r), 1, Seen::Watched(Some(8)), now));
    }

    #[test]
    fn a_child_the_watch_does_not_show_yet_is_read_before_it_is_applied_again() {
        let now = Instant::now();
        let r = record(1, 7, now);
        assert!(unconfirmed(&r, 1, Seen::Watched(None)));
        // Shown, changed, never applied, or not watched: the usual rule alone.
        assert!(!unconfirmed(&r, 1, Seen::Watched(Some(7))));
        assert!(!unconfirmed(&r, 1, Seen::Watched(Some(8))));
        assert!(!unconfirmed(&r, 2, Seen::Watched(None)));
        assert!(!unconfirmed(&r, 1, Seen::Unwatched));
    }

    #[test]
    fn an_unwatched_child_is_applied_again_by_the_resync() {
        let then = Instant::now();
        let r = record(1, 7, then);
        assert!(needs_apply(Some(&r), 1, Seen::Unwatched, then + RESYNC));
    }

    #[test]
    fn a_status_change_is_not_an_edit_but_a_spec_or_label_change_is() {
        // With a generation: the resourceVersion alone (a status write) changes nothing.
        let base = fingerprint(&meta("10", Some(3)));
        assert_eq!(base, fingerprint(&meta("11", Some(3))));
        assert_ne!(base, fingerprint(&meta("12", Some(4))));
        let mut labelled = meta("13", Some(3));
        labelled.labels = Some([("x".to_owned(), "y".to_owned())].into());
        assert_ne!(base, fingerprint(&labelled));
        let mut owned = meta("14", Some(3));
        owned.owner_references = Some(vec![OwnerReference {
            uid: "other".into(),
            ..OwnerReference::default()
        }]);
        assert_ne!(base, fingerprint(&owned));
        // Without one (ConfigMap, Secret): every write is a change.
        assert_ne!(
            fingerprint(&meta("10", None)),
            fingerprint(&meta("11", None))
        );
        // Created again: another uid.
        let mut again = meta("10", None);
        again.uid = Some("u2".into());
        assert_ne!(fingerprint(&meta("10", None)), fingerprint(&again));
    }

    #[test]
    fn the_desired_hash_follows_the_content() {
        let a = serde_json::json!({ "data": { "k": "v" } });
        let b = serde_json::json!({ "data": { "k": "w" } });
        assert_eq!(desired_hash(&a), desired_hash(&a.clone()));
        assert_ne!(desired_hash(&a), desired_hash(&b));
    }

    #[test]
    fn records_are_per_shard_and_child() {
        let applied = Applied::new();
        let (east, west) = (ShardRef::new("ns", "east"), ShardRef::new("ns", "west"));
        let cm = ChildKey {
            kind: "ConfigMap".into(),
            name: "east-agent-config".into(),
        };
        let r = record(1, 2, Instant::now());
        applied.record(&east, cm.clone(), r);
        assert_eq!(applied.get(&east, &cm), Some(r));
        assert_eq!(applied.get(&west, &cm), None);
        applied.forget_child(&east, &cm);
        assert_eq!(applied.get(&east, &cm), None);
        applied.record(&east, cm.clone(), r);
        applied.forget(&east);
        assert!(applied.is_empty());
        applied.record(&east, cm.clone(), r);
        applied.record(&west, cm.clone(), r);
        applied.retain(|s| s == &west);
        assert_eq!((applied.get(&east, &cm), applied.len()), (None, 1));
    }
}
