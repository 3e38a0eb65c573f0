//! Shard membership: one coordination Lease per replica, renewed every few seconds. The
//! live members are the Leases of the shard whose renewal has not expired. SIGTERM
//! deletes this replica's Lease so the others take its accounts at once.
//!
//! The Lease also carries this replica's report ([`crate::report`]) for the operator,
//! written with each renewal and, when it changes, at once (at most once a second); and,
//! in a pod, an ownerReference to the pod, which the operator's membership rule
//! requires ([`scale_agent_crds::membership`]).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::{Error, Result};

/// The label that ties a Lease to its shard.
pub const SHARD_LABEL: &str = "scaleagent.dev/shard";
const FIELD_MANAGER: &str = "scale-agent";

/// How membership is kept.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Namespace of the shard (and of the Leases).
    pub namespace: String,
    /// The shard's name.
    pub shard: String,
    /// This replica's id.
    pub replica: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often it is renewed and the members re-read.
    pub renew_every: Duration,
    /// The uid of this replica's pod (downward API), to name the pod as the Lease's owner.
    pub pod_uid: Option<String>,
}

impl Membership {
    fn lease_name(&self) -> String {
        // Pod names are unique in the namespace; prefixing keeps our Leases apart from others'.
        scale_agent_crds::membership::lease_name(&self.replica)
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
        let api: Api<Lease> = Api::namespaced(client, &m.namespace);
        let mut failures = 0u32;
        loop {
            let text = report.borrow_and_update().clone();
            match renew_and_list(&api, &m, &text).await {
                Ok(members) => {
                    if failures > 0 {
                        tracing::info!(shard = %m.shard, "lease renewal recovered");
                    }
                    failures = 0;
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

async fn renew_and_list(api: &Api<Lease>, m: &Membership, report: &str) -> Result<Vec<String>> {
    let now = Timestamp::now();
    let owner = m
        .pod_uid
        .as_deref()
        .filter(|u| !u.is_empty())
        .map(|uid| scale_agent_crds::membership::lease_owner(&m.replica, uid));
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": m.lease_name(),
            "labels": { SHARD_LABEL: m.shard },
            "annotations": { scale_agent_crds::report::REPORT_ANNOTATION: report },
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "holderIdentity": m.replica,
            "leaseDurationSeconds": m.lease_duration.as_secs(),
            "renewTime": MicroTime(now),
        }
    });
    api.patch(
        &m.lease_name(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&lease),
    )
    .await
    .map_err(|source| Error::Kube {
        action: format!("renewing lease {}/{}", m.namespace, m.lease_name()),
        source,
    })?;
    let list = api
        .list(&ListParams::default().labels(&format!("{SHARD_LABEL}={}", m.shard)))
        .await
        .map_err(|source| Error::Kube {
            action: format!("listing leases of shard {}/{}", m.namespace, m.shard),
            source,
        })?;
    let mut members: Vec<String> = list
        .items
        .iter()
        .filter_map(|l| live_holder(l, now))
        .collect();
    members.sort();
    members.dedup();
    Ok(members)
}

/// The holder of a Lease whose renewal has not expired at `now`.
pub fn live_holder(lease: &Lease, now: Timestamp) -> Option<String> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.clone()?;
    let renewed = spec.renew_time.as_ref()?.0;
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    let expires = renewed
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(duration))
        .ok()?;
    (expires > now).then_some(holder)
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

    fn lease(holder: &str, renewed: Timestamp, secs: i32) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": holder },
            "spec": { "holderIdentity": holder, "leaseDurationSeconds": secs, "renewTime": MicroTime(renewed) }
        }))
        .expect("lease")
    }

    #[test]
    fn expired_leases_are_not_members() {
        let now = Timestamp::now();
        let old = now
            .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(30))
            .expect("time");
        assert_eq!(live_holder(&lease("a", now, 15), now).as_deref(), Some("a"));
        assert_eq!(live_holder(&lease("b", old, 15), now), None);
    }
}
