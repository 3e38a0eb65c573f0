//! When the operator is done with a set of AgentShards, judged from their statuses (the
//! operator is the component that knows): every shard's status describes its current
//! spec (`observedGeneration`) and gives each account it claims a state, served (in the
//! shard's agent config: Active once an agent streams it, NoReplica while none runs) or
//! Conflict; and every claimed account name is served by exactly one shard. Which
//! claimant owns a name is the operator's call (the oldest claim, unless another already
//! holds it); that there is exactly one is the rule users rely on. And which shard an API
//! request of the operator is about, to count its writes per shard.

use std::collections::{BTreeSet, HashMap};

use scale_agent_crds::{AccountState, AgentShard};

use super::proxy::Recorded;

/// A shard: (namespace, name).
pub type Key = (String, String);

fn key(shard: &AgentShard) -> Key {
    (
        shard.metadata.namespace.clone().unwrap_or_default(),
        shard.metadata.name.clone().unwrap_or_default(),
    )
}

/// Whether `shard`'s status describes its current spec and gives every account it
/// claims a state: served or Conflict.
pub fn is_current(shard: &AgentShard) -> bool {
    let Some(status) = &shard.status else {
        return false;
    };
    status.observed_generation.is_some()
        && status.observed_generation == shard.metadata.generation
        && shard.account_names().all(|name| {
            status
                .accounts
                .iter()
                .any(|a| a.name == name && (a.state.served() || a.state == AccountState::Conflict))
        })
}

/// The shards as last seen, and whether they are all final.
#[derive(Debug, Default)]
pub struct Tracker {
    shards: HashMap<Key, AgentShard>,
    current: BTreeSet<Key>,
    expected: usize,
}

impl Tracker {
    /// A tracker waiting for `expected` shards.
    pub fn new(expected: usize) -> Tracker {
        Tracker {
            expected,
            ..Tracker::default()
        }
    }

    /// Takes the shard as it is now.
    pub fn apply(&mut self, shard: AgentShard) {
        let k = key(&shard);
        if is_current(&shard) {
            self.current.insert(k.clone());
        } else {
            self.current.remove(&k);
        }
        self.shards.insert(k, shard);
    }

    /// Shards seen.
    pub fn seen(&self) -> usize {
        self.shards.len()
    }

    /// Shards whose status is current.
    pub fn current(&self) -> usize {
        self.current.len()
    }

    /// Every shard seen.
    pub fn shards(&self) -> impl Iterator<Item = (&Key, &AgentShard)> {
        self.shards.iter()
    }

    /// Every expected shard is there with a current status, and every claimed name is
    /// served by exactly one of them.
    pub fn all_final(&self) -> bool {
        if self.shards.len() < self.expected || self.current.len() < self.shards.len() {
            return false;
        }
        let mut active: HashMap<&str, usize> = HashMap::new();
        for s in self.shards.values() {
            for name in s.account_names() {
                active.entry(name).or_insert(0);
            }
            if let Some(st) = &s.status {
                for a in st.accounts.iter().filter(|a| a.state.served()) {
                    *active.entry(a.name.as_str()).or_insert(0) += 1;
                }
            }
        }
        active.values().all(|n| *n == 1)
    }
}

/// The names of a shard's children end in one of these (longest first).
const CHILD_SUFFIXES: [&str; 3] = ["-agent-kubeconfigs", "-agent-config", "-agent"];

/// The shard (namespace, name) a request of the operator is about: the AgentShard
/// itself (its status), a child named after it (`<shard>-agent`, `-agent-config`,
/// `-agent-kubeconfigs`, ...), or the object of an Event (`regarding`, else the Event's
/// name up to its first dot). `None` for requests about no shard (the webhook
/// configuration, the leader Lease).
pub fn shard_of(r: &Recorded) -> Option<(String, String)> {
    let p = r.path.as_ref()?;
    if p.namespace.is_empty() {
        return None;
    }
    let name = if p.resource == "agentshards" {
        p.name.clone()
    } else if p.resource == "events" {
        r.regarding
            .clone()
            .or_else(|| p.name.split('.').next().map(str::to_owned))?
    } else {
        CHILD_SUFFIXES
            .iter()
            .find_map(|suffix| p.name.strip_suffix(suffix))?
            .to_owned()
    };
    (!name.is_empty()).then(|| (p.namespace.clone(), name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::proxy::parse_path;
    use std::time::Instant;

    fn shard(ns: &str, name: &str, accounts: &[&str]) -> AgentShard {
        let accounts: Vec<_> = accounts
            .iter()
            .map(|a| serde_json::json!({ "name": a, "kubeconfigSecretRef": { "name": "kc" } }))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "scaleagent.dev/v1alpha1",
            "kind": "AgentShard",
            "metadata": { "name": name, "namespace": ns, "generation": 1 },
            "spec": { "accounts": accounts },
        }))
        .expect("a shard")
    }

    fn with_status(mut s: AgentShard, generation: i64, states: &[(&str, &str)]) -> AgentShard {
        let accounts: Vec<_> = states
            .iter()
            .map(|(n, st)| serde_json::json!({ "name": n, "state": st }))
            .collect();
        s.status = serde_json::from_value(serde_json::json!({
            "observedGeneration": generation,
            "accounts": accounts,
        }))
        .expect("a status");
        s
    }

    #[test]
    fn a_status_is_current_when_it_is_about_this_generation_and_every_account() {
        let a = shard("ns", "a", &["x", "y"]);
        assert!(!is_current(&a), "no status yet");
        assert!(is_current(&with_status(
            a.clone(),
            1,
            &[("x", "Active"), ("y", "Conflict")]
        )));
        assert!(
            !is_current(&with_status(
                a.clone(),
                0,
                &[("x", "Active"), ("y", "Active")]
            )),
            "stale generation"
        );
        assert!(
            !is_current(&with_status(a.clone(), 1, &[("x", "Active")])),
            "an account missing"
        );
        assert!(
            !is_current(&with_status(a, 1, &[("x", "Active"), ("y", "Invalid")])),
            "an Invalid account"
        );
    }

    #[test]
    fn final_needs_every_shard_current_and_one_active_owner_per_name() {
        let a = shard("ns", "a", &["x", "y"]);
        let b = shard("ns", "b", &["x"]);
        let mut t = Tracker::new(2);
        t.apply(with_status(
            a.clone(),
            1,
            &[("x", "Active"), ("y", "Active")],
        ));
        assert!(!t.all_final(), "b not seen yet");
        t.apply(b.clone());
        assert!(!t.all_final(), "b has no status");
        t.apply(with_status(b.clone(), 1, &[("x", "Active")]));
        assert!(!t.all_final(), "x Active twice");
        t.apply(with_status(b.clone(), 1, &[("x", "Conflict")]));
        assert!(t.all_final());
        // Either claimant may own the name, as long as exactly one does.
        t.apply(with_status(
            a.clone(),
            1,
            &[("x", "Conflict"), ("y", "Active")],
        ));
        assert!(!t.all_final(), "x owned by nobody");
        t.apply(with_status(b, 1, &[("x", "Active")]));
        assert!(t.all_final());
        assert_eq!((t.seen(), t.current()), (2, 2));
    }

    #[test]
    fn an_account_no_agent_streams_is_served_all_the_same() {
        // The benchmark runs no agents: the owner's accounts show NoReplica.
        let a = shard("ns", "a", &["x"]);
        let b = shard("ns", "b", &["x"]);
        let mut t = Tracker::new(2);
        t.apply(with_status(a.clone(), 1, &[("x", "NoReplica")]));
        t.apply(with_status(b.clone(), 1, &[("x", "Conflict")]));
        assert!(is_current(&with_status(
            a.clone(),
            1,
            &[("x", "NoReplica")]
        )));
        assert!(t.all_final());
        t.apply(with_status(b, 1, &[("x", "NoReplica")]));
        assert!(!t.all_final(), "x served twice");
    }

    fn rec(method: &str, path: &str, regarding: Option<&str>) -> Recorded {
        Recorded {
            at: Instant::now(),
            method: method.into(),
            watch: false,
            path: parse_path(path),
            regarding: regarding.map(str::to_owned),
        }
    }

    #[test]
    fn requests_are_attributed_to_their_shard() {
        let of = |r: Recorded| shard_of(&r).map(|(ns, n)| format!("{ns}/{n}"));
        assert_eq!(
            of(rec(
                "PATCH",
                "/apis/scaleagent.dev/v1alpha1/namespaces/o/agentshards/shard-1/status",
                None
            ))
            .as_deref(),
            Some("o/shard-1")
        );
        for child in [
            "shard-1-agent",
            "shard-1-agent-config",
            "shard-1-agent-kubeconfigs",
        ] {
            assert_eq!(
                of(rec(
                    "PATCH",
                    &format!("/api/v1/namespaces/o/configmaps/{child}"),
                    None
                ))
                .as_deref(),
                Some("o/shard-1"),
                "{child}"
            );
        }
        assert_eq!(
            of(rec(
                "POST",
                "/apis/events.k8s.io/v1/namespaces/o/events",
                Some("shard-2")
            ))
            .as_deref(),
            Some("o/shard-2")
        );
        assert_eq!(
            of(rec(
                "PATCH",
                "/apis/events.k8s.io/v1/namespaces/o/events/shard-3.17a2b",
                None
            ))
            .as_deref(),
            Some("o/shard-3")
        );
        assert_eq!(
            of(rec(
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/scale-agent-system/leases/scale-agent-operator",
                None
            )),
            None
        );
        assert_eq!(
            of(rec(
                "PATCH",
                "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/x",
                None
            )),
            None
        );
    }
}
