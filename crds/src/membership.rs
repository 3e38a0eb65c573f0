//! Who is a replica of a shard: the membership rule the agents use to split a shard's
//! accounts, and the operator uses to read what the replicas report.
//!
//! Each agent replica keeps one coordination Lease in the shard's namespace. A label alone
//! cannot be trusted: anyone who may write Leases there (and many apps may, for their own
//! leader election) could add members, and an account assigned to a member that does not
//! run is streamed by nobody. So a Lease counts only when it proves it belongs to a live
//! replica of the shard:
//!
//! - it carries the label [`SHARD_LABEL`] with the shard's name, is named
//!   [`lease_name`]`(pod)` and is held by `pod` (`spec.holderIdentity`), and its renewal
//!   has not expired;
//! - it has an ownerReference to Pod `pod` with that Pod's uid (which only someone who can
//!   read the Pod knows, and which goes stale when the Pod is replaced: the garbage
//!   collector then deletes the Lease);
//! - Pod `pod` exists with that uid, is Running and not being deleted, carries the shard's
//!   [`selector_labels`], and is controlled by a ReplicaSet of the shard's Deployment
//!   (named `<shard>-agent-<hash>`; the garbage collector deletes a Pod whose controller
//!   does not exist, so the reference cannot be made up).
//!
//! Faking a member therefore takes creating Pods in the shard's namespace, and whoever can
//! do that can already run an agent with the shard's kubeconfigs.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::deployment_name;

/// The label that ties a Lease (and the agent pods) to its shard.
pub const SHARD_LABEL: &str = "scaleagent.dev/shard";

/// The name of the membership Lease of the replica running in Pod `pod`. Pod names are
/// unique in a namespace; the prefix keeps these Leases apart from other apps'.
pub fn lease_name(pod: &str) -> String {
    format!("scale-agent-{pod}")
}

/// The labels that select shard `shard`'s agent pods (the Deployment's selector).
pub fn selector_labels(shard: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "scale-agent".to_owned(),
        ),
        ("app.kubernetes.io/component".to_owned(), "agent".to_owned()),
        (SHARD_LABEL.to_owned(), shard.to_owned()),
    ])
}

/// Why a Lease is not a member of a shard; agents log it (once per change) so a stray or
/// forged Lease is visible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotMember {
    /// The Lease is labelled for another shard (or not at all).
    #[error("it is not labelled {SHARD_LABEL}={shard}")]
    OtherShard {
        /// The shard asked about.
        shard: String,
    },
    /// No `spec.holderIdentity`.
    #[error("it has no holder")]
    NoHolder,
    /// The Lease's name is not the one its holder's Lease must have.
    #[error("its name is not {expected} (the Lease of its holder {holder})")]
    Name {
        /// The holder it names.
        holder: String,
        /// The name that holder's Lease has.
        expected: String,
    },
    /// Not renewed within its duration (or no renewal time at all).
    #[error("it has expired")]
    Expired,
    /// No ownerReference to the holder's Pod.
    #[error("it is not owned by Pod {pod}")]
    NoPodOwner {
        /// The holder's Pod.
        pod: String,
    },
    /// The holder's Pod does not exist, or is another Pod of that name now.
    #[error("Pod {pod} with uid {uid} does not exist")]
    NoPod {
        /// The holder's Pod.
        pod: String,
        /// The uid the Lease's ownerReference names.
        uid: String,
    },
    /// The Pod is being deleted, or is not Running.
    #[error("Pod {pod} is not running")]
    PodNotRunning {
        /// The holder's Pod.
        pod: String,
    },
    /// The Pod lacks one of the shard's selector labels.
    #[error("Pod {pod} does not carry the labels of shard {shard}'s agent pods")]
    PodLabels {
        /// The holder's Pod.
        pod: String,
        /// The shard asked about.
        shard: String,
    },
    /// The Pod is not controlled by a ReplicaSet of the shard's Deployment.
    #[error("Pod {pod} is not controlled by a ReplicaSet of Deployment {deployment}")]
    PodController {
        /// The holder's Pod.
        pod: String,
        /// The shard's agent Deployment.
        deployment: String,
    },
}

/// The replica (Pod name) `lease` proves to be a live member of shard `shard` at `now`,
/// given the Pods of the shard's namespace; or why it does not.
pub fn member(
    shard: &str,
    lease: &Lease,
    pods: &[Pod],
    now: Timestamp,
) -> Result<String, NotMember> {
    let labels = lease.metadata.labels.as_ref();
    if labels.and_then(|l| l.get(SHARD_LABEL)).map(String::as_str) != Some(shard) {
        return Err(NotMember::OtherShard {
            shard: shard.to_owned(),
        });
    }
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty())
        .ok_or(NotMember::NoHolder)?;
    let expected = lease_name(&holder);
    if lease.metadata.name.as_deref() != Some(expected.as_str()) {
        return Err(NotMember::Name { holder, expected });
    }
    if !live(lease, now) {
        return Err(NotMember::Expired);
    }
    let uid = lease
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Pod" && o.api_version == "v1" && o.name == holder)
        .map(|o| o.uid.clone())
        .ok_or_else(|| NotMember::NoPodOwner {
            pod: holder.clone(),
        })?;
    let pod = pods
        .iter()
        .find(|p| {
            p.metadata.name.as_deref() == Some(holder.as_str())
                && p.metadata.uid.as_deref() == Some(uid.as_str())
        })
        .ok_or_else(|| NotMember::NoPod {
            pod: holder.clone(),
            uid,
        })?;
    pod_of_shard(shard, pod)?;
    Ok(holder)
}

/// Checks that `pod` is a live agent pod of shard `shard`: Running, not being deleted,
/// with the shard's selector labels, controlled by a ReplicaSet of the shard's Deployment.
pub fn pod_of_shard(shard: &str, pod: &Pod) -> Result<(), NotMember> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    if !running || pod.metadata.deletion_timestamp.is_some() {
        return Err(NotMember::PodNotRunning { pod: name });
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    if selector_labels(shard)
        .iter()
        .any(|(k, v)| labels.get(k) != Some(v))
    {
        return Err(NotMember::PodLabels {
            pod: name,
            shard: shard.to_owned(),
        });
    }
    let deployment = deployment_name(shard);
    let prefix = format!("{deployment}-");
    let controlled = pod.metadata.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true)
            && o.kind == "ReplicaSet"
            && o.api_version == "apps/v1"
            && o.name
                .strip_prefix(&prefix)
                .is_some_and(|hash| !hash.is_empty() && !hash.contains('-'))
    });
    if !controlled {
        return Err(NotMember::PodController {
            pod: name,
            deployment,
        });
    }
    Ok(())
}

/// Whether `lease` was renewed less than its duration before `now`.
pub fn live(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return false;
    };
    let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else {
        return false;
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    renewed
        .checked_add(SignedDuration::from_secs(duration))
        .is_ok_and(|expires| expires > now)
}

/// The live members of shard `shard` at `now`, sorted, each once, with the Leases that
/// are not members and why. Every replica that computes it from the same Leases and Pods
/// gets the same members.
pub fn members(
    shard: &str,
    leases: &[Lease],
    pods: &[Pod],
    now: Timestamp,
) -> (Vec<String>, Vec<(String, NotMember)>) {
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for lease in leases {
        match member(shard, lease, pods, now) {
            Ok(m) => ok.push(m),
            Err(why) => refused.push((lease.metadata.name.clone().unwrap_or_default(), why)),
        }
    }
    ok.sort();
    ok.dedup();
    refused.sort_by(|a, b| a.0.cmp(&b.0));
    (ok, refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHARD: &str = "east";

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn pod(name: &str, uid: &str) -> serde_json::Value {
        json!({
            "metadata": {
                "name": name, "uid": uid,
                "labels": selector_labels(SHARD),
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "east-agent-5d8f7c9b4", "uid": "rs-1", "controller": true }],
            },
            "status": { "phase": "Running" },
        })
    }

    fn lease(pod: &str, uid: &str) -> serde_json::Value {
        json!({
            "metadata": {
                "name": lease_name(pod),
                "labels": { SHARD_LABEL: SHARD },
                "ownerReferences": [{ "apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid }],
            },
            "spec": {
                "holderIdentity": pod, "leaseDurationSeconds": 15,
                "renewTime": "2027-01-15T08:00:00.000000Z",
            },
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("fixture: {e}"))
    }

    /// `now()` is 2027-01-15T08:00:00Z; the fixture Leases were renewed then.
    fn check(l: serde_json::Value, p: serde_json::Value) -> Result<String, NotMember> {
        member(SHARD, &parse(l), &[parse(p)], now())
    }

    #[test]
    fn a_replica_of_the_shard_is_a_member() {
        assert_eq!(
            check(lease("east-agent-1", "u1"), pod("east-agent-1", "u1")),
            Ok("east-agent-1".into())
        );
    }

    #[test]
    fn a_lease_without_a_live_pod_of_the_shard_is_not() {
        let good = || (lease("p", "u1"), pod("p", "u1"));
        let cases: Vec<(
            &str,
            Box<dyn Fn(&mut serde_json::Value, &mut serde_json::Value)>,
        )> = vec![
            (
                "other shard",
                Box::new(|l, _| l["metadata"]["labels"][SHARD_LABEL] = json!("west")),
            ),
            (
                "no holder",
                Box::new(|l, _| l["spec"]["holderIdentity"] = json!(null)),
            ),
            (
                "chosen name",
                Box::new(|l, _| l["metadata"]["name"] = json!("scale-agent-zzz")),
            ),
            (
                "holder not the pod",
                Box::new(|l, _| l["spec"]["holderIdentity"] = json!("q")),
            ),
            (
                "expired",
                Box::new(|l, _| l["spec"]["renewTime"] = json!("2027-01-15T07:59:00.000000Z")),
            ),
            (
                "no owner",
                Box::new(|l, _| l["metadata"]["ownerReferences"] = json!([])),
            ),
            (
                "owner is a ConfigMap",
                Box::new(|l, _| l["metadata"]["ownerReferences"][0]["kind"] = json!("ConfigMap")),
            ),
            (
                "stale uid",
                Box::new(|l, _| l["metadata"]["ownerReferences"][0]["uid"] = json!("old")),
            ),
            (
                "pod gone",
                Box::new(|_, p| p["metadata"]["name"] = json!("other")),
            ),
            (
                "pod pending",
                Box::new(|_, p| p["status"]["phase"] = json!("Pending")),
            ),
            (
                "pod deleting",
                Box::new(|_, p| p["metadata"]["deletionTimestamp"] = json!("2027-01-15T07:59:00Z")),
            ),
            (
                "pod of another shard",
                Box::new(|_, p| p["metadata"]["labels"][SHARD_LABEL] = json!("west")),
            ),
            (
                "pod without controller",
                Box::new(|_, p| p["metadata"]["ownerReferences"][0]["controller"] = json!(false)),
            ),
            (
                "pod of another Deployment",
                Box::new(|_, p| {
                    p["metadata"]["ownerReferences"][0]["name"] = json!("west-agent-5d8f7c9b4")
                }),
            ),
            (
                "pod of a Deployment named like ours",
                Box::new(|_, p| {
                    p["metadata"]["ownerReferences"][0]["name"] = json!("east-agent-x-5d8f7c9b4")
                }),
            ),
            (
                "pod of a bare ReplicaSet kind elsewhere",
                Box::new(|_, p| {
                    p["metadata"]["ownerReferences"][0]["apiVersion"] = json!("example.com/v1")
                }),
            ),
        ];
        for (what, spoil) in cases {
            let (mut l, mut p) = good();
            spoil(&mut l, &mut p);
            assert!(check(l, p).is_err(), "{what}: counted as a member");
        }
    }

    #[test]
    fn members_are_sorted_unique_and_say_why_others_are_not() {
        let leases: Vec<Lease> = vec![
            parse(lease("b", "ub")),
            parse(lease("a", "ua")),
            parse(lease("ghost", "ug")),
        ];
        let pods: Vec<Pod> = vec![parse(pod("a", "ua")), parse(pod("b", "ub"))];
        let (ok, refused) = members(SHARD, &leases, &pods, now());
        assert_eq!(ok, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "scale-agent-ghost");
        assert!(matches!(refused[0].1, NotMember::NoPod { .. }));
        assert!(refused[0].1.to_string().contains("ghost"));
    }
}
