//! Shards under test with real agents, as the status and certificate tests drive them:
//! a shard streaming the ConfigMaps of the test's namespace in the management cluster,
//! and waiting on its status as its users (kubectl, kstatus, Argo CD) read it — only
//! once the operator has caught up with the shard's latest spec.

use std::time::Duration;

use kube::api::Api;
use scale_agent_crds::AgentShard;

use crate::{Env, Result, wait};

/// Shard `ns/name` streaming the ConfigMaps of `ns` (management cluster) as each of
/// `accounts`, through the kubeconfig Secret `kc`, with `extra` spec lines (each
/// indented two spaces; none: the operator's default hub and certificates).
pub fn configmap_shard(ns: &str, name: &str, accounts: &[&str], extra: &str) -> String {
    let mut y = format!(
        "apiVersion: scaleagent.dev/v1alpha1\nkind: AgentShard\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{extra}"
    );
    if accounts.is_empty() {
        y.push_str("  accounts: []\n");
        return y;
    }
    y.push_str("  accounts:\n");
    for a in accounts {
        y.push_str(&format!(
            "  - name: {a}\n    kubeconfigSecretRef: {{ name: kc }}\n    namespaces: [{ns}]\n    kinds: [ConfigMap]\n"
        ));
    }
    y
}

/// Waits (at most `secs`) until shard `ns/name`, its status current (observed at the
/// shard's generation), satisfies `check`; `what` names the wait in the timeout error.
pub async fn wait_shard(
    env: &Env,
    what: &str,
    ns: &str,
    name: &str,
    secs: u64,
    check: impl Fn(&AgentShard) -> bool,
) -> Result<AgentShard> {
    until_shard(env, what, ns, name, secs, |s| {
        s.status_is_current() && check(s)
    })
    .await
}

/// Waits (at most `secs`) until shard `ns/name` exists and satisfies `check`, whether or
/// not its status is current (for what the operator writes besides the status).
pub async fn until_shard(
    env: &Env,
    what: &str,
    ns: &str,
    name: &str,
    secs: u64,
    check: impl Fn(&AgentShard) -> bool,
) -> Result<AgentShard> {
    let api = Api::<AgentShard>::namespaced(env.client().await?, ns);
    let check = &check;
    wait::until(what, Duration::from_secs(secs), || {
        let api = api.clone();
        async move {
            let s = api.get_opt(name).await.ok()??;
            check(&s).then_some(s)
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use scale_agent_crds::AgentShard;

    use super::configmap_shard;

    #[test]
    fn configmap_shards_parse_as_agent_shards() {
        let one: AgentShard = serde_yaml::from_str(&configmap_shard(
            "ns",
            "east",
            &["a", "b"],
            "  hub: { address: \"127.0.0.1:1\" }\n",
        ))
        .expect("an AgentShard");
        let names: Vec<_> = one.spec.accounts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(one.spec.accounts[0].scope.namespaces, ["ns"]);
        assert!(one.spec.hub.is_some());
        let none: AgentShard =
            serde_yaml::from_str(&configmap_shard("ns", "idle", &[], "")).expect("an AgentShard");
        assert!(none.spec.accounts.is_empty() && none.spec.hub.is_none());
    }
}
