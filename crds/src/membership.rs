//! Which coordination Leases are replicas of a shard: the one membership rule the agents
//! (to split the accounts) and the operator (to read the replicas' reports, see
//! [`crate::report`]) share.
//!
//! Anyone who may write Leases in a namespace (every shard's agents there, for a start)
//! can write one labelled for any shard, so the label alone proves nothing. A Lease is
//! a live member of shard `ns/name` when all of this holds:
//!
//! - it is in the shard's namespace and labelled `scaleagent.dev/shard=<name>`;
//! - its `holderIdentity` is a pod name and the Lease is named after it
//!   ([`lease_name`]), so there is one Lease per pod and a pod's own agent, renewing
//!   it, overwrites whatever anyone else wrote there;
//! - it is owned by that pod: an ownerReference with the pod's uid ([`lease_owner`]),
//!   which a Lease of an earlier pod of the same name does not have (and garbage
//!   collection deletes the Lease with its pod);
//! - the pod exists, is not being deleted, carries the shard's agent labels
//!   ([`agent_selector_labels`]) and is controlled by a ReplicaSet of the shard's agent
//!   Deployment (`<name>-agent-<pod-template-hash>`);
//! - its renewal has not expired.
//!
//! The rule trusts pods: who may create pods in the namespace may run an agent for any
//! shard there anyway. It does not trust Lease writers.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::{ShardRef, deployment_name};

/// The label naming the shard, on its agent pods, its children and its replicas' Leases.
pub const SHARD_LABEL: &str = "scaleagent.dev/shard";
/// The label the ReplicaSet controller puts on pods: their template's hash, the suffix
/// of their ReplicaSet's name.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// What every replica's Lease name starts with.
pub const LEASE_PREFIX: &str = "scale-agent-";

/// The labels of shard `shard`'s agent pods (its Deployment's selector).
pub fn agent_selector_labels(shard: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "scale-agent".to_owned(),
        ),
        ("app.kubernetes.io/component".to_owned(), "agent".to_owned()),
        (SHARD_LABEL.to_owned(), shard.to_owned()),
    ])
}

/// The label selector of every agent pod, whatever its shard (for list and watch calls).
pub const AGENT_POD_SELECTOR: &str =
    "app.kubernetes.io/name=scale-agent,app.kubernetes.io/component=agent";

/// The Lease of the replica running in pod `pod`.
pub fn lease_name(pod: &str) -> String {
    format!("{LEASE_PREFIX}{pod}")
}

/// The ownerReference a replica puts on its Lease: its pod (uid `pod_uid`). Not
/// blocking the pod's deletion, so no permission on pods is needed to set it.
pub fn lease_owner(pod: &str, pod_uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Pod".to_owned(),
        name: pod.to_owned(),
        uid: pod_uid.to_owned(),
        controller: None,
        block_owner_deletion: None,
    }
}

/// A Lease that is a live member of its shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The replica: its pod's name.
    pub replica: String,
    /// When its renewal expires, unless renewed.
    pub expires: Timestamp,
}

/// Why a Lease is not a live member of a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NotMember {
    /// Another namespace, or not labelled for the shard.
    OtherShard,
    /// No holderIdentity.
    NoHolder,
    /// Not named after its holder.
    NotNamedForHolder,
    /// No ownerReference to its holder's pod.
    NotOwnedByPod,
    /// Its holder's pod does not exist.
    NoSuchPod,
    /// The ownerReference names another pod of the same name (an earlier one).
    PodReplaced,
    /// The pod is being deleted.
    PodDeleting,
    /// The pod is not an agent pod of the shard's Deployment.
    PodNotOfShard,
    /// Never renewed (no renewTime or duration).
    NeverRenewed,
    /// Its renewal expired.
    Expired,
}

impl NotMember {
    /// A stable CamelCase word for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::OtherShard => "OtherShard",
            Self::NoHolder => "NoHolder",
            Self::NotNamedForHolder => "NotNamedForHolder",
            Self::NotOwnedByPod => "NotOwnedByPod",
            Self::NoSuchPod => "NoSuchPod",
            Self::PodReplaced => "PodReplaced",
            Self::PodDeleting => "PodDeleting",
            Self::PodNotOfShard => "PodNotOfShard",
            Self::NeverRenewed => "NeverRenewed",
            Self::Expired => "Expired",
        }
    }
}

impl fmt::Display for NotMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The pod a Lease claims to be held by: its holderIdentity (to look the pod up in the
/// Lease's namespace).
pub fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()?
        .holder_identity
        .as_deref()
        .filter(|h| !h.is_empty())
}

/// Whether `lease` is a live member of `shard` at `now`, given `pod`, the metadata of
/// the pod in the Lease's namespace named by its holder (`None`: no such pod). See the
/// module documentation for the rule.
pub fn member(
    shard: &ShardRef,
    lease: &Lease,
    pod: Option<&ObjectMeta>,
    now: Timestamp,
) -> Result<Member, NotMember> {
    let meta = &lease.metadata;
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(SHARD_LABEL))
        .is_some_and(|s| *s == shard.name);
    if meta.namespace.as_deref() != Some(shard.namespace.as_str()) || !labelled {
        return Err(NotMember::OtherShard);
    }
    let replica = holder(lease).ok_or(NotMember::NoHolder)?;
    if meta.name.as_deref() != Some(lease_name(replica).as_str()) {
        return Err(NotMember::NotNamedForHolder);
    }
    let owner_uid = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Pod" && o.api_version == "v1" && o.name == replica)
        .map(|o| o.uid.as_str())
        .ok_or(NotMember::NotOwnedByPod)?;
    let pod = pod.ok_or(NotMember::NoSuchPod)?;
    if pod.name.as_deref() != Some(replica) || pod.namespace != meta.namespace {
        return Err(NotMember::NoSuchPod);
    }
    if pod.uid.as_deref() != Some(owner_uid) {
        return Err(NotMember::PodReplaced);
    }
    if pod.deletion_timestamp.is_some() {
        return Err(NotMember::PodDeleting);
    }
    if !is_agent_pod_of(shard, pod) {
        return Err(NotMember::PodNotOfShard);
    }
    let expires = expiry(lease).ok_or(NotMember::NeverRenewed)?;
    if expires <= now {
        return Err(NotMember::Expired);
    }
    Ok(Member {
        replica: replica.to_owned(),
        expires,
    })
}

/// When a Lease's renewal expires: renewTime + leaseDurationSeconds.
pub fn expiry(lease: &Lease) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref()?.0;
    let seconds = spec.lease_duration_seconds.filter(|s| *s > 0)?;
    renewed
        .checked_add(SignedDuration::from_secs(i64::from(seconds)))
        .ok()
}

/// Whether `pod` is an agent pod of `shard`'s Deployment: the shard's agent labels, and
/// controlled by the ReplicaSet `<shard>-agent-<pod-template-hash>`.
pub fn is_agent_pod_of(shard: &ShardRef, pod: &ObjectMeta) -> bool {
    let Some(labels) = &pod.labels else {
        return false;
    };
    let labelled = agent_selector_labels(&shard.name)
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let Some(hash) = labels.get(POD_TEMPLATE_HASH_LABEL) else {
        return false;
    };
    let replica_set = format!("{}-{hash}", deployment_name(&shard.name));
    let controlled = pod.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true)
            && o.kind == "ReplicaSet"
            && o.api_version == "apps/v1"
            && o.name == replica_set
    });
    labelled && controlled
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};

    use super::*;

    fn shard() -> ShardRef {
        ShardRef::new("ns", "east")
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid")
    }

    fn pod(name: &str, uid: &str) -> ObjectMeta {
        let mut labels = agent_selector_labels("east");
        labels.insert(POD_TEMPLATE_HASH_LABEL.into(), "5d8f".into());
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(uid.into()),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "east-agent-5d8f".into(),
                uid: "rs-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        }
    }

    fn lease(pod: &str, uid: &str, renewed: i64) -> Lease {
        let mut l: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": lease_name(pod), "namespace": "ns",
                "labels": { SHARD_LABEL: "east" },
            },
            "spec": { "holderIdentity": pod, "leaseDurationSeconds": 15, "renewTime": MicroTime(at(renewed)) }
        }))
        .expect("lease");
        l.metadata.owner_references = Some(vec![lease_owner(pod, uid)]);
        l
    }

    #[test]
    fn a_lease_of_a_live_agent_pod_is_a_member_until_it_expires() {
        let p = pod("east-agent-5d8f-abcde", "u1");
        let l = lease("east-agent-5d8f-abcde", "u1", 100);
        assert_eq!(
            member(&shard(), &l, Some(&p), at(110)),
            Ok(Member {
                replica: "east-agent-5d8f-abcde".into(),
                expires: at(115)
            })
        );
        assert_eq!(
            member(&shard(), &l, Some(&p), at(115)),
            Err(NotMember::Expired)
        );
    }

    #[test]
    fn ghosts_are_not_members() {
        let p = pod("east-agent-5d8f-abcde", "u1");
        let good = lease("east-agent-5d8f-abcde", "u1", 100);
        let now = at(101);
        let check = |l: &Lease, p: Option<&ObjectMeta>| member(&shard(), l, p, now);

        // Labelled for another shard, or in another namespace.
        let mut other = good.clone();
        other.metadata.labels = Some([(SHARD_LABEL.to_owned(), "west".to_owned())].into());
        assert_eq!(check(&other, Some(&p)), Err(NotMember::OtherShard));
        let mut elsewhere = good.clone();
        elsewhere.metadata.namespace = Some("other".into());
        assert_eq!(check(&elsewhere, Some(&p)), Err(NotMember::OtherShard));

        // A chosen name that is not its holder's.
        let mut renamed = good.clone();
        renamed.metadata.name = Some("scale-agent-zzz".into());
        assert_eq!(check(&renamed, Some(&p)), Err(NotMember::NotNamedForHolder));

        // Without the pod's ownerReference, or with an earlier pod's uid.
        let mut unowned = good.clone();
        unowned.metadata.owner_references = None;
        assert_eq!(check(&unowned, Some(&p)), Err(NotMember::NotOwnedByPod));
        let stale = lease("east-agent-5d8f-abcde", "u0", 100);
        assert_eq!(check(&stale, Some(&p)), Err(NotMember::PodReplaced));

        // A holder that is no pod, a pod being deleted, a pod of another Deployment.
        assert_eq!(check(&good, None), Err(NotMember::NoSuchPod));
        let mut going = p.clone();
        going.deletion_timestamp = Some(Time(at(100)));
        assert_eq!(check(&good, Some(&going)), Err(NotMember::PodDeleting));
        let mut bare = p.clone();
        bare.owner_references = None;
        assert_eq!(check(&good, Some(&bare)), Err(NotMember::PodNotOfShard));
        let mut west = p.clone();
        if let Some(l) = west.labels.as_mut() {
            l.insert(SHARD_LABEL.into(), "west".into());
        }
        assert_eq!(check(&good, Some(&west)), Err(NotMember::PodNotOfShard));
        let mut other_rs = p.clone();
        if let Some(o) = other_rs.owner_references.as_mut() {
            o[0].name = "east-agent-other".into();
        }
        assert_eq!(check(&good, Some(&other_rs)), Err(NotMember::PodNotOfShard));

        // Never renewed.
        let mut never = good.clone();
        if let Some(s) = never.spec.as_mut() {
            s.renew_time = None;
        }
        assert_eq!(check(&never, Some(&p)), Err(NotMember::NeverRenewed));

        assert!(check(&good, Some(&p)).is_ok());
    }
}
