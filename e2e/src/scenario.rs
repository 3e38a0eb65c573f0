//! Fixtures for tests that run agents and a hub against the target clusters: a scenario
//! (a namespace in every cluster, its own hub), agent configs, kubeconfigs, agent
//! processes. Their errors are the tests' own (`anyhow`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use scale_agent_crds::{AccountConfig, AgentConfig, BudgetConfig, HubConfig, ShardRef};

use crate::agent::{AgentProcess, AgentSpec};
use crate::converge::create_namespace;
use crate::hub::{HubOptions, HubProcess};
use crate::{Cluster, Env, workspace_binary};

/// One test's hub, folder and namespace.
pub struct Scenario {
    /// The test's own hub (its log is in the test's folder).
    pub hub: HubProcess,
    /// Where the agents' config files go.
    pub dir: tempfile::TempDir,
    /// The test's namespace: in the management cluster (the agents' Leases) and in every
    /// target cluster (the objects they stream).
    pub ns: String,
}

/// A fresh namespace for `test` in every cluster and a hub with grace period `grace`.
pub async fn scenario(env: &Env, test: &str, grace: &str) -> anyhow::Result<Scenario> {
    scenario_with(env, test, grace, None, Vec::new()).await
}

/// [`scenario`] with a hub store file and extra hub flags.
pub async fn scenario_with(
    env: &Env,
    test: &str,
    grace: &str,
    store: Option<PathBuf>,
    hub_args: Vec<String>,
) -> anyhow::Result<Scenario> {
    let ns = env.namespace(test).await?;
    // The same namespace in every target cluster holds the test's objects.
    for t in &env.cp.targets {
        // A test elsewhere in the binary may be restarting this cluster: retry.
        crate::wait::until(
            &format!("namespace {ns} in {}", t.name),
            std::time::Duration::from_secs(60),
            || async { create_namespace(t, &ns).await.ok() },
        )
        .await?;
    }
    let hub = HubProcess::start(
        HubOptions {
            bin: workspace_binary("scale-agent-hub")?,
            grace_period: grace.into(),
            store,
            args: hub_args,
            kubeconfig: Some(env.cp.management.kubeconfig.clone()),
        },
        &env.test_dir(&ns),
    )
    .await?;
    Ok(Scenario {
        hub,
        dir: tempfile::tempdir()?,
        ns,
    })
}

/// Account `name` streaming the ConfigMaps and Deployments of namespace `ns`, its
/// kubeconfig in `<name>.kubeconfig`.
pub fn account(name: &str, ns: &str) -> AccountConfig {
    let mut account = AccountConfig::new(name);
    account.scope.namespaces = vec![ns.into()];
    account.scope.kinds = vec!["ConfigMap".into(), "Deployment".into()];
    account
}

/// The config of an agent of shard `shard` (in the scenario's namespace) streaming
/// `accounts` to the scenario's hub, without TLS.
pub fn config(s: &Scenario, shard: &str, accounts: Vec<AccountConfig>) -> AgentConfig {
    AgentConfig {
        shard: ShardRef::new(s.ns.clone(), shard.to_string()),
        hub: HubConfig {
            address: s.hub.grpc.clone(),
            tls: None,
        },
        accounts,
        budget: BudgetConfig::default(),
        allow_kubeconfig: crate::kubeconfig::allow(),
    }
}

/// The kubeconfig files (name → text) that give each account of `pairs` (account,
/// target cluster) its cluster.
pub fn kubeconfigs(env: &Env, pairs: &[(&str, &str)]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|(account, cluster)| {
            let c = target(env, cluster)?;
            Ok((
                format!("{account}.kubeconfig"),
                std::fs::read_to_string(&c.kubeconfig)?,
            ))
        })
        .collect()
}

/// Starts agent replica `replica` with `cfg`, kubeconfig files `kcs` and extra flags
/// `args`; its log goes to the test's folder.
pub fn start_agent(
    env: &Env,
    s: &Scenario,
    replica: &str,
    cfg: &AgentConfig,
    kcs: &BTreeMap<String, String>,
    args: &[&str],
) -> anyhow::Result<AgentProcess> {
    let spec = AgentSpec {
        bin: workspace_binary("scale-agent")?,
        replica: replica.into(),
        namespace: s.ns.clone(),
        management_kubeconfig: env.cp.management.kubeconfig.clone(),
        args: args.iter().map(|a| a.to_string()).collect(),
    };
    let dir: PathBuf = s.dir.path().join(replica);
    Ok(AgentProcess::start(
        &spec,
        &dir,
        cfg,
        kcs,
        &env.test_dir(&s.ns),
    )?)
}

/// The target cluster `name`.
pub fn target<'a>(env: &'a Env, name: &str) -> anyhow::Result<&'a Cluster> {
    env.cp
        .target(name)
        .with_context(|| format!("no cluster {name}"))
}

/// The last lines of an agent's log, to add to an error.
pub fn agent_log(a: &AgentProcess) -> String {
    crate::process::tail(a.proc.log(), 40)
}

/// Waits up to 30 s until the agent's log holds every one of `needles` (a refusal it was
/// told, say); fails with the log's tail, saying it waited for `what`.
pub async fn wait_logged(a: &AgentProcess, what: &str, needles: &[&str]) -> anyhow::Result<()> {
    let log = a.proc.log().to_path_buf();
    crate::wait::until(what, std::time::Duration::from_secs(30), || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            needles.iter().all(|n| text.contains(n)).then_some(())
        }
    })
    .await
    .with_context(|| crate::process::tail(&log, 20))
}

/// Starts an agent ([`start_agent`]) and waits up to 30 s until the hub shows `account`
/// Connected; fails with the agent's log.
pub async fn start_connected(
    env: &Env,
    s: &Scenario,
    replica: &str,
    cfg: &AgentConfig,
    kubeconfigs: &BTreeMap<String, String>,
    args: &[&str],
    account: &str,
) -> anyhow::Result<AgentProcess> {
    let agent = start_agent(env, s, replica, cfg, kubeconfigs, args)?;
    crate::converge::wait_state(
        &s.hub,
        account,
        "Connected",
        std::time::Duration::from_secs(30),
    )
    .await
    .with_context(|| agent_log(&agent))?;
    Ok(agent)
}

/// One agent of shard `shard` streaming `account` of `cluster`, connected at the hub.
pub async fn stream_one(
    env: &Env,
    s: &Scenario,
    shard: &str,
    account_name: &str,
    cluster: &str,
) -> anyhow::Result<AgentProcess> {
    let cfg = config(s, shard, vec![account(account_name, &s.ns)]);
    let kcs = kubeconfigs(env, &[(account_name, cluster)])?;
    start_connected(
        env,
        s,
        &format!("{shard}-0"),
        &cfg,
        &kcs,
        &["--lease-renew-interval=500ms"],
        account_name,
    )
    .await
}
