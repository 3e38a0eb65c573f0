//! Leader election with a coordination Lease: only the replica holding the Lease
//! reconciles and writes. Every replica keeps serving the webhook and its admin server.
//!
//! As client-go does, expiry is judged by how long the Lease record has gone unchanged as
//! seen by this replica's own clock, so clock skew between replicas does not matter.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// Where the Lease is and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity.
    pub identity: String,
    /// How long the Lease lasts without renewal.
    pub duration: Duration,
}

impl LeaseConfig {
    /// How often to try to acquire or renew.
    pub fn retry_period(&self) -> Duration {
        (self.duration / 5).max(Duration::from_millis(500))
    }

    /// How long a leader keeps leading without a successful renewal.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
}

/// The state of one replica's view of the Lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last record seen (resourceVersion) and when it was first seen.
    observed: Option<(String, Instant)>,
    last_renew: Option<Instant>,
}

impl Elector {
    /// An elector for `config` using `client`.
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            last_renew: None,
        }
    }

    /// Runs forever: publishes `true` on `leading` while this replica holds the Lease.
    pub async fn run(&mut self, leading: watch::Sender<bool>) {
        loop {
            let is_leader = match self.try_acquire_or_renew().await {
                Ok(held) => {
                    if held {
                        self.last_renew = Some(Instant::now());
                    }
                    held
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: cannot reach the Lease");
                    // Keep leading until the renew deadline passes: a blip is not a loss.
                    *leading.borrow()
                        && self
                            .last_renew
                            .is_some_and(|t| t.elapsed() < self.config.renew_deadline())
                }
            };
            if *leading.borrow() != is_leader {
                tracing::info!(
                    identity = %self.config.identity,
                    leading = is_leader,
                    "leader election: leadership changed"
                );
                leading.send_replace(is_leader);
            }
            tokio::time::sleep(self.config.retry_period()).await;
        }
    }

    /// Gives the Lease up (on shutdown), so another replica takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("leader election: Lease released"),
            Err(e) => tracing::warn!(error = %e, "leader election: releasing the Lease failed"),
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let now = MicroTime(Timestamp::now());
        let secs = i32::try_from(self.config.duration.as_secs()).unwrap_or(i32::MAX);
        let name = &self.config.name;
        let me = &self.config.identity;
        let current = self
            .api
            .get_opt(name)
            .await
            .map_err(|e| Error::kube(format!("reading Lease {name}"), e))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(Error::kube(format!("creating Lease {name}"), e)),
            };
        };
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let held_by_me = holder.as_deref() == Some(me.as_str());
        if !held_by_me && holder.is_some() {
            // Someone else's: take it only when its record has not changed for its duration.
            let their = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(secs)).unwrap_or(0),
            );
            let seen_at = match &self.observed {
                Some((seen_rv, at)) if *seen_rv == rv => *at,
                _ => {
                    self.observed = Some((rv.clone(), Instant::now()));
                    return Ok(false);
                }
            };
            if seen_at.elapsed() < their {
                return Ok(false);
            }
        }
        if !held_by_me {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(me.clone());
        spec.lease_duration_seconds = Some(secs);
        spec.renew_time = Some(now);
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(updated) => {
                self.observed = updated
                    .metadata
                    .resource_version
                    .map(|rv| (rv, Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(Error::kube(format!("updating Lease {name}"), e)),
        }
    }
}
