//! The operator's end-to-end tests: an [`Env`] plus the operator under test (stopped
//! before the control plane, also on panic), helpers to write shards and Secrets and to
//! wait for what the operator does, and the operator's log in every failure report.

use std::ops::Deref;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use scale_agent_crds::{AgentConfig, AgentShard, CONFIG_KEY, config_map_name};

use crate::operator::{Operator, OperatorOptions};
use crate::runner::{self, Fixture, Test};
use crate::{ControlPlane, Env, Error, Options, Result, wait};

/// An [`Env`] with the operator under test; it dereferences to the [`Env`].
#[derive(Debug)]
pub struct OperatorEnv {
    /// The operator under test (a test may stop it, or put another in its place).
    // Declared before `env`: it stops before the control plane it talks to.
    pub op: tokio::sync::Mutex<Option<Operator>>,
    env: Env,
}

/// Prepares the control plane before the operator starts; may change its options.
pub type Setup = fn(&ControlPlane, &mut OperatorOptions) -> anyhow::Result<()>;

impl OperatorEnv {
    /// Starts an [`Env`] (no target clusters), runs `setup`, and starts the operator.
    pub async fn start(mut options: OperatorOptions, setup: Setup) -> anyhow::Result<Self> {
        let env = Env::start(Options::default()).await?;
        setup(&env.cp, &mut options)?;
        let op = Operator::start(&env.cp, options).await?;
        Ok(OperatorEnv {
            op: tokio::sync::Mutex::new(Some(op)),
            env,
        })
    }

    /// The shard `ns/name` as stored.
    pub async fn shard(&self, ns: &str, name: &str) -> Result<Option<AgentShard>> {
        let api: Api<AgentShard> = Api::namespaced(self.client().await?, ns);
        api.get_opt(name)
            .await
            .map_err(|e| Error::kube(format!("reading AgentShard {ns}/{name}"), e))
    }

    /// The agent config the operator wrote for shard `ns/name`, if any.
    pub async fn agent_config(&self, ns: &str, name: &str) -> Result<Option<AgentConfig>> {
        let cm_name = config_map_name(name);
        let api: Api<ConfigMap> = Api::namespaced(self.client().await?, ns);
        let Some(cm) = api
            .get_opt(&cm_name)
            .await
            .map_err(|e| Error::kube(format!("reading ConfigMap {ns}/{cm_name}"), e))?
        else {
            return Ok(None);
        };
        let invalid = |message: String| Error::Invalid {
            what: format!("agent config in ConfigMap {ns}/{cm_name}"),
            message,
        };
        let text = cm
            .data
            .and_then(|d| d.get(CONFIG_KEY).cloned())
            .ok_or_else(|| invalid(format!("no key {CONFIG_KEY}")))?;
        AgentConfig::from_yaml(&text)
            .map(Some)
            .map_err(|e| invalid(e.to_string()))
    }

    /// Waits (at most `secs`) until `check` on shard `ns/name` holds; `what` names the
    /// wait in the timeout error.
    pub async fn wait_shard(
        &self,
        what: &str,
        ns: &str,
        name: &str,
        secs: u64,
        check: impl Fn(&AgentShard) -> bool,
    ) -> Result<AgentShard> {
        crate::shards::until_shard(&self.env, what, ns, name, secs, check).await
    }

    /// Waits (at most `secs`) until the agent config of shard `ns/name` satisfies `check`.
    pub async fn wait_config(
        &self,
        what: &str,
        ns: &str,
        name: &str,
        secs: u64,
        check: impl Fn(&AgentConfig) -> bool,
    ) -> Result<AgentConfig> {
        let check = &check;
        wait::until(what, Duration::from_secs(secs), || async move {
            let c = self.agent_config(ns, name).await.ok()??;
            check(&c).then_some(c)
        })
        .await
    }
}

impl Deref for OperatorEnv {
    type Target = Env;

    fn deref(&self) -> &Env {
        &self.env
    }
}

impl Fixture for OperatorEnv {
    fn env(&self) -> &Env {
        &self.env
    }

    async fn shared_logs(&self) -> Vec<PathBuf> {
        let op = self.op.lock().await;
        op.iter().map(|op| op.log().to_path_buf()).collect()
    }
}

/// Runs `tests` against an [`OperatorEnv`] whose operator starts with `options` (at most
/// `threads` tests at once, when given), and exits with libtest's status.
pub fn main(options: OperatorOptions, threads: Option<usize>, tests: Vec<Test<OperatorEnv>>) -> ! {
    main_with(options, threads, |_, _| Ok(()), tests)
}

/// [`main`], with `setup` run on the control plane before the operator starts.
pub fn main_with(
    options: OperatorOptions,
    threads: Option<usize>,
    setup: Setup,
    tests: Vec<Test<OperatorEnv>>,
) -> ! {
    runner::run(threads, OperatorEnv::start(options, setup), tests)
}

/// A shard manifest: `accounts` as (name, kubeconfig Secret) pairs, plus `extra` spec
/// lines (indented by two spaces).
pub fn shard_yaml(ns: &str, name: &str, accounts: &[(&str, &str)], extra: &str) -> String {
    let mut y = format!(
        "apiVersion: scaleagent.dev/v1alpha1\nkind: AgentShard\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{extra}"
    );
    if accounts.is_empty() {
        y += "  accounts: []\n";
    } else {
        y += "  accounts:\n";
        for (a, secret) in accounts {
            y += &format!("  - name: {a}\n    kubeconfigSecretRef:\n      name: {secret}\n");
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use scale_agent_crds::AgentShard;

    use super::shard_yaml;

    #[test]
    fn shard_manifests_parse_as_agent_shards() {
        let yaml = shard_yaml(
            "ns",
            "east",
            &[("a", "kc-a"), ("b", "kc-b")],
            "  replicas: 2\n",
        );
        let shard: AgentShard = serde_yaml::from_str(&yaml).expect("an AgentShard");
        assert_eq!(shard.spec.replicas, 2);
        let names: Vec<&str> = shard
            .spec
            .accounts
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let empty: AgentShard =
            serde_yaml::from_str(&shard_yaml("ns", "e", &[], "")).expect("an AgentShard");
        assert!(empty.spec.accounts.is_empty());
    }
}
