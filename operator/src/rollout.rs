//! Staged agent image rollouts. When the operator's `--default-image` changes (an
//! operator upgrade), every shard that leaves `spec.image` out would get the new image
//! at once and all agents would restart together. Instead at most
//! `--max-rolling-shards` shards roll at a time: a shard whose Deployment would change
//! to the default image keeps its current image while that many other shards' agent
//! Deployments are rolling out, and takes the new one when one finishes. A shard that
//! names its own image in `spec.image` rolls when its author changes it.
//!
//! A Deployment that never finishes (its agents do not become available) keeps counting
//! as rolling, so a bad image stops spreading; rolling back is restarting the operator
//! with the previous `--default-image`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::reflector::Store;
use scale_agent_crds::ShardRef;

/// How long a rollout the operator started counts as rolling at most before its
/// Deployment's watch shows the new image (the watch may lag the write).
const STARTED_COUNTS_FOR: Duration = Duration::from_secs(30);

/// Whether the agents of `d` are still rolling out: the Deployment controller has not
/// seen its latest spec, or not every replica runs the latest template and is available,
/// or old replicas are still there.
pub fn rolling(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(st) = d.status.as_ref() else {
        return want > 0;
    };
    let generation = d.metadata.generation.unwrap_or(0);
    st.observed_generation.unwrap_or(0) < generation
        || st.updated_replicas.unwrap_or(0) < want
        || st.available_replicas.unwrap_or(0) < want
        || st.replicas.unwrap_or(0) > st.updated_replicas.unwrap_or(0)
}

/// Whether a shard may change its agents' image now, with `rolling_others` other shards
/// rolling and at most `max` at a time (0: no limit).
pub fn may_roll(max: usize, rolling_others: usize) -> bool {
    max == 0 || rolling_others < max
}

/// The image a shard's Deployment gets: `desired`, unless the change comes from the
/// operator's default (`own_image` false), the Deployment runs another image
/// (`current`), and the gate (`allowed`) says not yet: then it keeps `current`.
pub fn image<'a>(
    desired: &'a str,
    own_image: bool,
    current: Option<&'a str>,
    allowed: impl FnOnce() -> bool,
) -> &'a str {
    match current {
        Some(current) if current != desired && !own_image && !allowed() => current,
        _ => desired,
    }
}

/// The shard owning an agent Deployment.
fn owner(d: &Deployment) -> Option<ShardRef> {
    let ns = d.metadata.namespace.as_deref()?;
    let owner = d
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == "AgentShard")?;
    Some(ShardRef::new(ns.to_owned(), owner.name.clone()))
}

/// The rollouts under way, shared by the reconciles.
#[derive(Debug, Default)]
pub struct Rollouts {
    /// Shards the operator moved to a new image, when, and the image, until the watch
    /// shows their Deployment with it.
    started: Mutex<HashMap<ShardRef, (Instant, String)>>,
}

impl Rollouts {
    /// Whether `shard` may move its agents to `image` now, with at most `max` shards
    /// rolling at a time (0: no limit), as `deployments` show them and as this operator
    /// started them; when it may, its rollout counts from now on. Counting and claiming
    /// are one step, so concurrent reconciles never start more than `max`.
    pub fn claim(
        &self,
        shard: &ShardRef,
        image: &str,
        deployments: &Store<Deployment>,
        max: usize,
    ) -> bool {
        if max == 0 {
            return true;
        }
        let mut started = self
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let seen = deployments.state();
        let by_shard: HashMap<ShardRef, &Deployment> = seen
            .iter()
            .filter_map(|d| Some((owner(d)?, d.as_ref())))
            .collect();
        // Once the watch shows a started rollout, the Deployment's own state counts.
        started.retain(|s, (at, image)| {
            now.duration_since(*at) < STARTED_COUNTS_FOR
                && by_shard
                    .get(s)
                    .is_none_or(|d| template_image(d) != Some(image.as_str()))
        });
        let mut others: std::collections::HashSet<&ShardRef> = by_shard
            .iter()
            .filter(|(_, d)| rolling(d))
            .map(|(s, _)| s)
            .collect();
        others.extend(started.keys());
        others.remove(shard);
        if !may_roll(max, others.len()) {
            return false;
        }
        started.insert(shard.clone(), (now, image.to_owned()));
        true
    }
}

/// The image of the agent container of `d`'s pod template.
pub fn template_image(d: &Deployment) -> Option<&str> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .image
        .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};

    fn deployment(
        generation: i64,
        observed: i64,
        want: i32,
        updated: i32,
        available: i32,
        total: i32,
    ) -> Deployment {
        Deployment {
            metadata: kube::api::ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(want),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                updated_replicas: Some(updated),
                available_replicas: Some(available),
                replicas: Some(total),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_deployment_rolls_until_every_replica_is_new_and_available() {
        assert!(!rolling(&deployment(3, 3, 2, 2, 2, 2)), "done");
        assert!(rolling(&deployment(4, 3, 2, 2, 2, 2)), "spec not yet seen");
        assert!(
            rolling(&deployment(4, 4, 2, 1, 2, 3)),
            "one replica still old"
        );
        assert!(
            rolling(&deployment(4, 4, 2, 2, 1, 2)),
            "one new replica not available"
        );
        assert!(
            rolling(&deployment(4, 4, 2, 2, 2, 3)),
            "an old replica still there"
        );
        assert!(!rolling(&deployment(4, 4, 0, 0, 0, 0)), "scaled to zero");
    }

    #[test]
    fn only_a_default_image_change_waits_for_its_turn() {
        let closed = || false;
        assert_eq!(image("b", false, Some("a"), closed), "a", "held");
        assert_eq!(image("b", false, Some("a"), || true), "b", "its turn");
        assert_eq!(
            image("b", true, Some("a"), closed),
            "b",
            "the shard's own image"
        );
        assert_eq!(image("b", false, None, closed), "b", "a new Deployment");
        assert_eq!(image("b", false, Some("b"), closed), "b", "no change");
        assert!(may_roll(0, 100) && may_roll(2, 1) && !may_roll(2, 2));
    }

    #[test]
    fn claims_count_the_rollouts_just_started() {
        let (store, _writer) = kube::runtime::reflector::store::<Deployment>();
        let rollouts = Rollouts::default();
        let shard = |n: &str| ShardRef::new("ns", n);
        assert!(rollouts.claim(&shard("a"), "i:2", &store, 2));
        assert!(
            rollouts.claim(&shard("a"), "i:2", &store, 2),
            "a shard's own rollout does not hold it"
        );
        assert!(rollouts.claim(&shard("b"), "i:2", &store, 2));
        assert!(
            !rollouts.claim(&shard("c"), "i:2", &store, 2),
            "two rolling already"
        );
        assert!(rollouts.claim(&shard("c"), "i:2", &store, 0), "no limit");
    }
}
