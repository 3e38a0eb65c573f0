//! `scale-agent migrate` as a platform team moving off Clouddriver's own accounts runs
//! it: a Clouddriver configuration with a dozen accounts (kubeconfig files by relative
//! and absolute path, an inline kubeconfig, a multi-context file with `context`,
//! permissions, requiredGroupMembership, the settings only Clouddriver has, an account
//! whose name cannot be carried), through the real `scale-agent` executable, applied
//! with kubectl to the test control plane: every carried account streams through the
//! operator's agents to the test's hub, and what was not carried is said on stderr.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, ensure};
use scale_agent_crds::{AccountState, AgentShard};
use scale_agent_e2e::operator::{Operator, OperatorOptions};
use scale_agent_e2e::pods::PodRunner;
use scale_agent_e2e::runner::{self, Fixture};
use scale_agent_e2e::scenario::scenario_with;
use scale_agent_e2e::shards::wait_shard;
use scale_agent_e2e::{Env, Options, workspace_binary};

/// The control plane and the operator under test.
struct MigrateEnv {
    // Declared first: it stops before the control plane.
    op: Operator,
    env: Env,
}

impl Fixture for MigrateEnv {
    fn env(&self) -> &Env {
        &self.env
    }

    async fn shared_logs(&self) -> Vec<PathBuf> {
        vec![self.op.log().to_path_buf()]
    }
}

async fn start() -> anyhow::Result<MigrateEnv> {
    let env = Env::start(Options::default()).await?;
    let op = Operator::start(&env.cp, OperatorOptions::default()).await?;
    Ok(MigrateEnv { op, env })
}

fn main() {
    runner::run(
        None,
        start(),
        scale_agent_e2e::tests![
            a_migrated_clouddriver_configuration_streams => migrated,
        ],
    );
}

async fn migrated(env: Arc<MigrateEnv>) -> anyhow::Result<()> {
    let scenario = scenario_with(&env.env, "migrate", "5s", None, Vec::new()).await?;
    let ns = scenario.ns.clone();
    let _pods = PodRunner::for_test(&env.env, &ns).await?;

    // Clouddriver's configuration folder: kubeconfig files beside it.
    let dir = tempfile::tempdir()?;
    let management = std::fs::read_to_string(&env.env.cp.management.kubeconfig)?;
    std::fs::create_dir(dir.path().join("kubeconfigs"))?;
    std::fs::write(dir.path().join("kubeconfigs/management.yml"), &management)?;
    let (multi, context) = scale_agent_e2e::kubeconfig::with_decoy_context(&management)?;
    let multi_path = dir.path().join("kubeconfigs/regions.yml");
    std::fs::write(&multi_path, multi)?;

    let name = |i: usize| format!("{ns}-{i:02}");
    let mut config = String::from("kubernetes:\n  enabled: true\n  accounts:\n");
    for i in 1..=8 {
        config.push_str(&format!(
            "  - name: {}\n    providerVersion: v2\n    environment: {}\n    kubeconfigFile: kubeconfigs/management.yml\n    namespaces: [{ns}]\n    kinds: [configMap]\n    onlySpinnakerManaged: {}\n    cacheThreads: 2\n    permissions:\n      READ: [team-{i}, auditors]\n      WRITE: [team-{i}]\n    customResources: {}\n",
            name(i),
            if i % 2 == 0 { "prod" } else { "staging" },
            i == 8,
            if i == 1 { "[{kubernetesKind: SealedSecret.bitnami.com}]" } else { "[]" },
        ));
    }
    for i in 9..=10 {
        config.push_str(&format!(
            "  - name: {}\n    kubeconfigFile: {}\n    context: {context}\n    namespaces: [{ns}]\n    omitNamespaces: [kube-system]\n    kinds: [ConfigMap]\n",
            name(i),
            multi_path.display()
        ));
    }
    let inline: String = management.lines().map(|l| format!("      {l}\n")).collect();
    config.push_str(&format!(
        "  - name: {}\n    kubeconfigContents: |\n{inline}    namespaces: [{ns}]\n    kinds: [configMap]\n    requiredGroupMembership: [operators]\n",
        name(11)
    ));
    config.push_str(&format!(
        "  - name: {}\n    kubeconfigFile: kubeconfigs/management.yml\n    namespaces: [{ns}]\n    kinds: [configMap]\n    cachingPolicies: [{{kubernetesKind: pod, maxEntriesPerAgent: 100}}]\n",
        name(12)
    ));
    config.push_str("  - name: Legacy_Account\n    kubeconfigFile: kubeconfigs/management.yml\n");
    let config_path = dir.path().join("clouddriver-local.yml");
    std::fs::write(&config_path, config)?;

    let out = Command::new(workspace_binary("scale-agent")?)
        .args(["migrate", "-f"])
        .arg(&config_path)
        .args([
            "--namespace",
            &ns,
            "--hub",
            &scenario.hub.grpc,
            "--accounts-per-shard",
            "5",
            "--shard-prefix",
            "mig",
            "--allow-kubeconfig",
            scale_agent_e2e::kubeconfig::NEEDS.as_str(),
        ])
        .output()
        .context("running scale-agent migrate")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("scale-agent migrate said:\n{stderr}");
    ensure!(out.status.success(), "scale-agent migrate failed");
    let manifests = String::from_utf8(out.stdout)?;
    for said in [
        "account Legacy_Account: skipped".to_owned(),
        format!("account {}: not carried: customResources", name(1)),
        format!("account {}: not carried: cachingPolicies", name(12)),
        format!("account {}: not carried: omitNamespaces", name(9)),
        format!("account {}: note: requiredGroupMembership", name(11)),
        "12 of 13 accounts in 3 AgentShards".to_owned(),
    ] {
        ensure!(stderr.contains(&said), "stderr does not say {said:?}");
    }
    ensure!(
        !stderr.contains("BEGIN") && !stderr.contains("client-key-data"),
        "stderr shows kubeconfig content"
    );

    env.env.apply(&manifests)?;
    for (shard, accounts) in [("mig-1", 1..=5), ("mig-2", 6..=10), ("mig-3", 11..=12)] {
        let names: Vec<String> = accounts.map(name).collect();
        let s = wait_shard(
            &env.env,
            &format!("{shard}'s accounts streaming"),
            &ns,
            shard,
            180,
            |s: &AgentShard| {
                names
                    .iter()
                    .all(|a| s.account_status(a).map(|st| st.state) == Some(AccountState::Active))
            },
        )
        .await?;
        ensure!(
            s.spec.accounts.len() == names.len(),
            "{shard} has {} accounts",
            s.spec.accounts.len()
        );
    }
    // What Clouddriver's account carried is in the applied shards.
    let api = kube::Api::<AgentShard>::namespaced(env.env.client().await?, &ns);
    let first = api.get("mig-1").await?;
    let a1 = &first.spec.accounts[0];
    ensure!(
        a1.spinnaker.permissions.read == ["team-1", "auditors"]
            && a1.spinnaker.environment.as_deref() == Some("staging")
            && a1.spinnaker.cache_threads == Some(2),
        "{a1:?}"
    );
    let second = api.get("mig-2").await?;
    let a8 = &second.spec.accounts[2];
    ensure!(
        a8.name == name(8) && a8.scope.only_spinnaker_managed,
        "{a8:?}"
    );
    let a9 = &second.spec.accounts[3];
    ensure!(
        a9.scope.context.as_deref() == Some(context.as_str()),
        "{a9:?}"
    );
    let third = api.get("mig-3").await?;
    ensure!(
        third.spec.accounts[0].spinnaker.permissions.write == ["operators"],
        "{:?}",
        third.spec.accounts[0]
    );
    Ok(())
}
