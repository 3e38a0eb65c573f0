//! When the operator is done with a set of AgentShards, judged from their statuses: a
//! shard is final when its status describes its current spec (`observedGeneration`) and
//! lists every account it claims in the state the uniqueness rule gives it — `Active`
//! for the oldest claim of a name (creationTimestamp, then namespace/name), `Conflict`
//! for every later one. And which shard an API request of the operator is about, to
//! count its writes per shard.

use std::collections::HashMap;

use scale_agent_crds::{AccountState, AgentShard};

use super::proxy::Recorded;

/// A claimant of an account name: (creation second, namespace, name). The smallest wins.
pub type Claim = (i64, String, String);

fn claim(shard: &AgentShard) -> Claim {
    (
        shard
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(i64::MAX, |t| t.0.as_second()),
        shard.metadata.namespace.clone().unwrap_or_default(),
        shard.metadata.name.clone().unwrap_or_default(),
    )
}

/// The owner of every account name claimed by `shards`: its oldest claimant.
pub fn owners<'a>(shards: impl IntoIterator<Item = &'a AgentShard>) -> HashMap<String, Claim> {
    let mut out: HashMap<String, Claim> = HashMap::new();
    for s in shards {
        let c = claim(s);
        for name in s.account_names() {
            match out.get(name) {
                Some(held) if *held <= c => {}
                _ => {
                    out.insert(name.to_owned(), c.clone());
                }
            }
        }
    }
    out
}

/// Whether `shard`'s status is final given the `owners` of every name.
pub fn is_final(shard: &AgentShard, owners: &HashMap<String, Claim>) -> bool {
    let Some(status) = &shard.status else {
        return false;
    };
    if status.observed_generation.is_none() || status.observed_generation != shard.metadata.generation {
        return false;
    }
    let me = claim(shard);
    shard.account_names().all(|name| {
        let want = match owners.get(name) {
            Some(owner) if owner.1 == me.1 && owner.2 == me.2 => AccountState::Active,
            Some(_) => AccountState::Conflict,
            None => return false,
        };
        status
            .accounts
            .iter()
            .any(|a| a.name == name && a.state == want)
    })
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

    fn shard(ns: &str, name: &str, created: &str, accounts: &[&str]) -> AgentShard {
        let accounts: Vec<_> = accounts
            .iter()
            .map(|a| serde_json::json!({ "name": a, "kubeconfigSecretRef": { "name": "kc" } }))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "scaleagent.dev/v1alpha1",
            "kind": "AgentShard",
            "metadata": { "name": name, "namespace": ns, "creationTimestamp": created, "generation": 1 },
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
    fn the_oldest_claim_owns_a_name_then_namespace_and_name_decide() {
        let a = shard("ns", "a", "2026-01-01T00:00:02Z", &["x", "y"]);
        let b = shard("ns", "b", "2026-01-01T00:00:01Z", &["x"]);
        let c = shard("ns", "c", "2026-01-01T00:00:02Z", &["y"]);
        let o = owners([&a, &b, &c]);
        assert_eq!(o["x"].2, "b", "older wins");
        assert_eq!(o["y"].2, "a", "same second: namespace/name");
    }

    #[test]
    fn a_shard_is_final_when_its_status_is_current_and_every_account_is_as_the_rule_says() {
        let a = shard("ns", "a", "2026-01-01T00:00:01Z", &["x", "y"]);
        let b = shard("ns", "b", "2026-01-01T00:00:02Z", &["x"]);
        let o = owners([&a, &b]);
        assert!(!is_final(&a, &o), "no status yet");
        assert!(is_final(&with_status(a.clone(), 1, &[("x", "Active"), ("y", "Active")]), &o));
        assert!(!is_final(&with_status(a.clone(), 0, &[("x", "Active"), ("y", "Active")]), &o), "stale generation");
        assert!(!is_final(&with_status(a.clone(), 1, &[("x", "Active")]), &o), "an account missing");
        assert!(is_final(&with_status(b.clone(), 1, &[("x", "Conflict")]), &o));
        assert!(!is_final(&with_status(b, 1, &[("x", "Active")]), &o), "two Active owners of x");
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
            of(rec("PATCH", "/apis/scaleagent.dev/v1alpha1/namespaces/o/agentshards/shard-1/status", None)).as_deref(),
            Some("o/shard-1")
        );
        for child in ["shard-1-agent", "shard-1-agent-config", "shard-1-agent-kubeconfigs"] {
            assert_eq!(
                of(rec("PATCH", &format!("/api/v1/namespaces/o/configmaps/{child}"), None)).as_deref(),
                Some("o/shard-1"),
                "{child}"
            );
        }
        assert_eq!(
            of(rec("POST", "/apis/events.k8s.io/v1/namespaces/o/events", Some("shard-2"))).as_deref(),
            Some("o/shard-2")
        );
        assert_eq!(
            of(rec("PATCH", "/apis/events.k8s.io/v1/namespaces/o/events/shard-3.17a2b", None)).as_deref(),
            Some("o/shard-3")
        );
        assert_eq!(
            of(rec("PUT", "/apis/coordination.k8s.io/v1/namespaces/scale-agent-system/leases/scale-agent-operator", None)),
            None
        );
        assert_eq!(
            of(rec("PATCH", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/x", None)),
            None
        );
    }
}
