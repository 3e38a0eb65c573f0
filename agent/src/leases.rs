//! Shard membership: one coordination Lease per replica, renewed every few seconds. The
//! live members are the shard's Leases that prove they belong to a live replica: named
//! after, owned by and held by a Pod of the shard's Deployment (the rule is
//! [`scale_agent_crds::membership`], shared with the operator). A Lease anyone else
//! wrote is ignored and logged, so it can neither join the shard nor take accounts off
//! the real replicas. SIGTERM deletes this replica's Lease so the others take its
//! accounts at once.
//!
//! The Lease also carries this replica's report ([`crate::report`]) for the operator,
//! written with each renewal and, when it changes, at once (at most once a second).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use scale_agent_crds::ShardRef;
use scale_agent_crds::membership::{self, NotMember};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::{Error, Result};

/// The label that ties a Lease to its shard.
pub const SHARD_LABEL: &str = membership::SHARD_LABEL;
const FIELD_MANAGER: &str = "scale-agent";
/// At most this many refused Leases are named in one log line.
const LOGGED_REFUSALS: usize = 10;

/// How membership is kept.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Namespace of the shard (and of the Leases and the agent pods).
    pub namespace: String,
    /// The shard's name.
    pub shard: String,
    /// This replica's id: its Pod's name.
    pub replica: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often it is renewed and the members re-read.
    pub renew_every: Duration,
    /// The uid of this replica's pod (downward API), when known: the listed pod of this
    /// replica's name must have it, so a namesake pod is never taken for this replica.
    pub pod_uid: Option<String>,
}

impl Membership {
    fn lease_name(&self) -> String {
        membership::lease_name(&self.replica)
    }

    fn pod_selector(&self) -> String {
        membership::agent_selector_labels(&self.shard)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The shortest time between two writes of the Lease when only the report changed.
const MIN_REPORT_GAP: Duration = Duration::from_secs(1);

/// Starts keeping this replica's Lease, with `report` in it, and publishing the sorted
/// live members.
pub fn run(
    client: kube::Client,
    m: Membership,
    metrics: Arc<Metrics>,
    mut report: watch::Receiver<String>,
) -> watch::Receiver<Vec<String>> {
    let (tx, rx) = watch::channel(Vec::new());
    tokio::spawn(async move {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &m.namespace);
        let pods: Api<Pod> = Api::namespaced(client, &m.namespace);
        let mut failures = 0u32;
        let mut refused_before: Vec<(String, NotMember)> = Vec::new();
        loop {
            let text = report.borrow_and_update().clone();
            match renew_and_list(&leases, &pods, &m, &text).await {
                Ok((members, refused)) => {
                    if failures > 0 {
                        tracing::info!(shard = %m.shard, "lease renewal recovered");
                    }
                    failures = 0;
                    if refused != refused_before {
                        log_refused(&m, &refused);
                        refused_before = refused;
                    }
                    metrics.members.set(members.len() as i64);
                    tx.send_if_modified(|cur| {
                        if *cur != members {
                            tracing::info!(shard = %m.shard, ?members, "shard members changed");
                            *cur = members;
                            true
                        } else {
                            false
                        }
                    });
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(shard = %m.shard, error = %e, "lease renewal failed");
                    // Without renewals our Lease expires and the others take our accounts;
                    // stop claiming them ourselves too, so both never stream one account.
                    if failures as u128 * m.renew_every.as_millis() >= m.lease_duration.as_millis()
                    {
                        tx.send_if_modified(|cur| {
                            let changed = !cur.is_empty();
                            cur.clear();
                            changed
                        });
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
            // Renew on time, or sooner when the report changed.
            let renew = tokio::time::sleep(m.renew_every);
            tokio::pin!(renew);
            tokio::select! {
                () = &mut renew => {}
                changed = report.changed() => {
                    if changed.is_ok() {
                        tokio::select! {
                            () = &mut renew => {}
                            () = tokio::time::sleep(MIN_REPORT_GAP) => {}
                        }
                    } else {
                        renew.await;
                    }
                }
            }
        }
    });
    rx
}

/// Logs the shard's Leases that are not members, and why (a bounded number of them).
fn log_refused(m: &Membership, refused: &[(String, NotMember)]) {
    if refused.is_empty() {
        return;
    }
    let named: Vec<String> = refused
        .iter()
        .take(LOGGED_REFUSALS)
        .map(|(lease, why)| format!("{lease}: {why}"))
        .collect();
    tracing::warn!(shard = %m.shard, count = refused.len(), leases = ?named,
        "Leases labelled for the shard that are not a live replica of it are ignored");
}

/// Renews this replica's Lease, owned by its Pod, and reads the members; returns them
/// with the Leases that are not members. `report` goes into the Lease for the operator.
async fn renew_and_list(
    leases: &Api<Lease>,
    pods: &Api<Pod>,
    m: &Membership,
    report: &str,
) -> Result<(Vec<String>, Vec<(String, NotMember)>)> {
    let now = Timestamp::now();
    let pod_list = pods
        .list(&ListParams::default().labels(&m.pod_selector()))
        .await
        .map_err(|source| Error::Kube {
            action: format!(
                "listing the agent pods of shard {}/{}",
                m.namespace, m.shard
            ),
            source,
        })?;
    let uid = pod_list
        .items
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(m.replica.as_str()))
        .and_then(|p| p.metadata.uid.clone())
        // A uid from the downward API must be the listed pod's: another pod of that name
        // is not this replica.
        .filter(|uid| {
            m.pod_uid
                .as_deref()
                .is_none_or(|mine| mine.is_empty() || mine == uid)
        })
        .ok_or_else(|| Error::NotAReplica {
            pod: format!("{}/{}", m.namespace, m.replica),
            shard: m.shard.clone(),
        })?;
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": m.lease_name(),
            "labels": { SHARD_LABEL: m.shard },
            "annotations": { scale_agent_crds::report::REPORT_ANNOTATION: report },
            // Proves the Lease is this Pod's; the garbage collector deletes it with the Pod.
            "ownerReferences": [membership::lease_owner(&m.replica, &uid)],
        },
        "spec": {
            "holderIdentity": m.replica,
            "leaseDurationSeconds": m.lease_duration.as_secs(),
            "renewTime": MicroTime(now),
        }
    });
    leases
        .patch(
            &m.lease_name(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await
        .map_err(|source| Error::Kube {
            action: format!("renewing lease {}/{}", m.namespace, m.lease_name()),
            source,
        })?;
    let list = leases
        .list(&ListParams::default().labels(&format!("{SHARD_LABEL}={}", m.shard)))
        .await
        .map_err(|source| Error::Kube {
            action: format!("listing leases of shard {}/{}", m.namespace, m.shard),
            source,
        })?;
    Ok(members(m, &list.items, &pod_list.items, now))
}

/// The live members among `leases` (sorted, each once), and the Leases that are not
/// members with why, by the shared rule ([`membership::member`]).
pub fn members(
    m: &Membership,
    leases: &[Lease],
    pods: &[Pod],
    now: Timestamp,
) -> (Vec<String>, Vec<(String, NotMember)>) {
    let shard = ShardRef::new(m.namespace.clone(), m.shard.clone());
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for lease in leases {
        let pod = membership::holder(lease).and_then(|h| {
            pods.iter()
                .find(|p| p.metadata.name.as_deref() == Some(h))
                .map(|p| &p.metadata)
        });
        match membership::member(&shard, lease, pod, now) {
            Ok(member) => ok.push(member.replica),
            Err(why) => refused.push((lease.metadata.name.clone().unwrap_or_default(), why)),
        }
    }
    ok.sort();
    ok.dedup();
    refused.sort();
    (ok, refused)
}

/// Gives this replica's Lease up (on SIGTERM), so its accounts move at once.
pub async fn release(client: kube::Client, m: &Membership) {
    let api: Api<Lease> = Api::namespaced(client, &m.namespace);
    match api.delete(&m.lease_name(), &DeleteParams::default()).await {
        Ok(_) => tracing::info!(shard = %m.shard, "lease released"),
        Err(e) => {
            tracing::warn!(shard = %m.shard, error = %e, "releasing the lease failed; it expires by itself")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn membership() -> Membership {
        Membership {
            namespace: "ns".into(),
            shard: "east".into(),
            replica: "east-agent-5d8f-aaaaa".into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(3),
            pod_uid: None,
        }
    }

    fn pod(name: &str, uid: &str) -> Pod {
        let mut labels = membership::agent_selector_labels("east");
        labels.insert(membership::POD_TEMPLATE_HASH_LABEL.into(), "5d8f".into());
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "ns", "uid": uid, "labels": labels,
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "east-agent-5d8f", "uid": "rs", "controller": true }] },
        }))
        .expect("pod")
    }

    fn lease(holder: &str, uid: Option<&str>, now: Timestamp) -> Lease {
        let owners: Vec<_> = uid
            .map(|u| membership::lease_owner(holder, u))
            .into_iter()
            .collect();
        serde_json::from_value(json!({
            "metadata": { "name": membership::lease_name(holder), "namespace": "ns",
                "labels": { SHARD_LABEL: "east" }, "ownerReferences": owners },
            "spec": { "holderIdentity": holder, "leaseDurationSeconds": 3600, "renewTime": MicroTime(now) },
        }))
        .expect("lease")
    }

    /// Ghost Leases (no pod, a chosen name, a pod of another uid) are not members and
    /// are reported with why; only the replicas backed by their pods count.
    #[test]
    fn only_leases_backed_by_live_agent_pods_are_members() {
        let now = Timestamp::now();
        let pods = [
            pod("east-agent-5d8f-aaaaa", "u1"),
            pod("east-agent-5d8f-bbbbb", "u2"),
        ];
        let leases = [
            lease("east-agent-5d8f-aaaaa", Some("u1"), now),
            lease("east-agent-5d8f-bbbbb", Some("u2"), now),
            lease("chosen-17", None, now),
            lease("ghost-1", Some("u9"), now),
            lease("east-agent-5d8f-bbbbb", Some("old-uid"), now),
        ];
        let (ok, refused) = members(&membership(), &leases, &pods, now);
        assert_eq!(ok, ["east-agent-5d8f-aaaaa", "east-agent-5d8f-bbbbb"]);
        let why: Vec<NotMember> = refused.iter().map(|(_, w)| *w).collect();
        assert!(why.contains(&NotMember::NotOwnedByPod), "{refused:?}");
        assert!(why.contains(&NotMember::NoSuchPod), "{refused:?}");
        assert!(why.contains(&NotMember::PodReplaced), "{refused:?}");
        assert_eq!(refused.len(), 3);
    }
}
