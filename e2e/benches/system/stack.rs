//! The path users deploy, for the scenarios that stream: agent → nginx (TLS, client
//! certificate checked, HTTP/2) → hub, each scenario with a fresh hub and nginx; agents
//! with a client certificate naming their shard, Leases in the management cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use scale_agent_crds::{
    AccountConfig, AgentConfig, BudgetConfig, HubConfig, ShardRef, TlsConfig, shard_identity_uri,
};
use scale_agent_e2e::agent::{AgentProcess, AgentSpec};
use scale_agent_e2e::hub::{HubOptions, HubProcess};
use scale_agent_e2e::hubstack::{behind_nginx, nginx_in_front};
use scale_agent_e2e::nginx::{Mode, Nginx};
use scale_agent_e2e::{Env, workspace_binary};

/// The management namespace of the agents' Leases.
pub const LEASE_NAMESPACE: &str = "bench";

/// A hub behind nginx.
pub struct Stack {
    /// The hub (Clouddriver's side).
    pub hub: HubProcess,
    /// The load balancer agents connect to.
    pub nginx: Nginx,
    /// The scenario's folder (logs, agent files).
    pub dir: PathBuf,
}

/// One account of an agent: its config and the kubeconfig text of its cluster.
#[derive(Clone)]
pub struct Account {
    /// The account as the agent config lists it.
    pub config: AccountConfig,
    /// Its kubeconfig.
    pub kubeconfig: String,
}

/// An account named `name` on the cluster of `kubeconfig`, watching `kinds` (the
/// default set when empty) in `namespaces`.
pub fn account(name: &str, kubeconfig: &str, namespaces: Vec<String>, kinds: &[&str]) -> Account {
    Account {
        config: AccountConfig {
            scope: scale_agent_crds::AccountScope {
                namespaces,
                kinds: kinds.iter().map(|k| k.to_string()).collect(),
                ..Default::default()
            },
            ..AccountConfig::new(name)
        },
        kubeconfig: kubeconfig.into(),
    }
}

/// One account per namespace `<prefix>-<j>` (`j` below `count`), on the shared clusters
/// in turn, each namespace seeded with `objects` ConfigMaps named `obj-<k>` and the
/// account watching only ConfigMaps there: the shape of the latency and reconnect
/// scenarios.
pub struct ConfigMapAccount {
    /// The account (and namespace) name.
    pub name: String,
    /// A client of its cluster.
    pub client: kube::Client,
    /// The account as the agent lists it.
    pub account: Account,
}

/// Seeds and describes the accounts of [`ConfigMapAccount`].
pub async fn configmap_accounts(
    ctx: &crate::Ctx,
    prefix: &str,
    count: usize,
    objects: usize,
) -> anyhow::Result<Vec<ConfigMapAccount>> {
    let clusters = ctx.clusters.len();
    let mut out = Vec::with_capacity(count);
    for j in 0..count {
        let name = format!("{prefix}-{j}");
        let client = ctx.client(j % clusters).await?;
        scale_agent_e2e::bench::seed::configmaps(
            &client,
            &[scale_agent_e2e::bench::seed::Batch {
                namespace: name.clone(),
                prefix: "obj".into(),
                count: objects,
            }],
            ctx.p.object_bytes,
            4,
        )
        .await?;
        let account = account(
            &name,
            &ctx.kubeconfig(j % clusters)?,
            vec![name.clone()],
            &["ConfigMap"],
        );
        out.push(ConfigMapAccount {
            name,
            client,
            account,
        });
    }
    Ok(out)
}

/// The workspace binary `name`, or, when the environment variable `wrapper_var` names
/// a command (`heaptrack -o /tmp/agent`, `perf record -g -o /tmp/agent.data --`), a
/// script in `dir` that runs the binary under it: for profiling a scenario's agent or
/// hub. Figures measured through a wrapper are the wrapper's, not the component's.
fn wrapped(dir: &std::path::Path, name: &str, wrapper_var: &str) -> anyhow::Result<PathBuf> {
    let bin = workspace_binary(name)?;
    let Ok(wrapper) = std::env::var(wrapper_var) else {
        return Ok(bin);
    };
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    let script = dir.join(format!("{name}-wrapped"));
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec {wrapper} {} \"$@\"\n", bin.display()),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    tracing::warn!(%name, %wrapper, "running under a profiler: its figures are the profiler's");
    Ok(script)
}

impl Stack {
    /// Starts a hub (in-memory store, trusting nginx's forwarded client certificate)
    /// and nginx in front of it (the shipped `nginx-grpc-tls.conf`).
    pub async fn start(env: &Env, name: &str) -> anyhow::Result<Stack> {
        Stack::start_with(env, name, Vec::new()).await
    }

    /// [`Stack::start`], the hub given the extra flags `hub_args`.
    pub async fn start_with(env: &Env, name: &str, hub_args: Vec<String>) -> anyhow::Result<Stack> {
        let dir = env.cp.run_dir.join("bench").join(name);
        std::fs::create_dir_all(&dir)?;
        let hub = HubProcess::start(
            HubOptions {
                bin: wrapped(&dir, "scale-agent-hub", "BENCH_HUB_WRAPPER")?,
                grace_period: "600s".into(),
                store: None,
                // nginx verifies agent certificates and forwards them; the hub checks
                // the forwarded certificate against the same CA.
                args: behind_nginx(&env.cp.pki, None)
                    .into_iter()
                    .chain(hub_args)
                    .collect(),
                kubeconfig: None,
            },
            &dir,
        )
        .await?;
        let nginx = nginx_in_front(
            &env.cp.pki,
            &format!("lb-{name}"),
            Mode::GrpcTls,
            vec![hub.grpc.clone()],
            None,
            &dir,
        )
        .await?;
        Ok(Stack { hub, nginx, dir })
    }

    /// Starts an agent of shard `shard` streaming `accounts` through nginx with the
    /// default budget, and the extra flags `args`.
    pub fn agent(
        &self,
        env: &Env,
        shard: &str,
        accounts: &[Account],
        args: &[&str],
    ) -> anyhow::Result<AgentProcess> {
        let sref = ShardRef::new(LEASE_NAMESPACE.to_string(), shard.to_string());
        let stem = format!("agent-{shard}");
        let cert = env
            .cp
            .pki
            .issue_client(&stem, &stem, None, &[&shard_identity_uri(&sref)])?;
        let config = AgentConfig {
            shard: sref,
            hub: HubConfig {
                address: self.nginx.address.clone(),
                tls: Some(TlsConfig {
                    ca_file: env.cp.pki.ca_file.display().to_string(),
                    cert_file: cert.cert_file.display().to_string(),
                    key_file: cert.key_file.display().to_string(),
                    server_name: None,
                }),
            },
            accounts: accounts.iter().map(|a| a.config.clone()).collect(),
            budget: BudgetConfig::default(),
            allow_kubeconfig: scale_agent_e2e::kubeconfig::allow(),
        };
        let kubeconfigs: BTreeMap<String, String> = accounts
            .iter()
            .map(|a| (a.config.kubeconfig_file.clone(), a.kubeconfig.clone()))
            .collect();
        let mut flags = vec!["--lease-renew-interval=1s".to_string()];
        flags.extend(args.iter().map(|a| a.to_string()));
        let spec = AgentSpec {
            bin: wrapped(&self.dir, "scale-agent", "BENCH_AGENT_WRAPPER")?,
            replica: format!("{shard}-0"),
            namespace: LEASE_NAMESPACE.into(),
            management_kubeconfig: env.cp.management.kubeconfig.clone(),
            args: flags,
        };
        Ok(AgentProcess::start(
            &spec,
            &self.dir.join(shard),
            &config,
            &kubeconfigs,
            &self.dir,
        )?)
    }

    /// Objects the hub holds per account (`GET /v1/accounts`, every page); `None` when
    /// it does not answer.
    pub async fn counts(&self) -> Option<BTreeMap<String, usize>> {
        let http = reqwest::Client::new();
        let mut out = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = http
                .get(format!("{}/v1/accounts", self.hub.http))
                .query(&[("limit", "5000")])
                .timeout(Duration::from_secs(30));
            if let Some(t) = &token {
                req = req.query(&[("continue", t.as_str())]);
            }
            let resp = req.send().await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            token = resp
                .headers()
                .get("x-continue")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body: serde_json::Value = resp.json().await.ok()?;
            for a in body.as_array()? {
                if let (Some(name), Some(n)) = (a["name"].as_str(), a["objects"].as_u64()) {
                    out.insert(name.to_string(), usize::try_from(n).ok()?);
                }
            }
            if token.is_none() {
                return Some(out);
            }
        }
    }

    /// Starts an agent of shard `shard` streaming `accounts` ([`Stack::agent`]) and waits
    /// until the hub holds the objects of `expected` (polled every 200 ms, at most 300 s).
    pub async fn synced_agent(
        &self,
        env: &Env,
        shard: &str,
        accounts: &[Account],
        expected: &BTreeMap<String, usize>,
    ) -> anyhow::Result<AgentProcess> {
        let mut agent = self.agent(env, shard, accounts, &[])?;
        self.wait_synced(
            &mut agent,
            expected,
            Duration::from_millis(200),
            Duration::from_secs(300),
        )
        .await?;
        Ok(agent)
    }

    /// Polls the hub every `every` until each account of `expected` holds at least its
    /// expected number of objects; returns when that was first seen. Fails when the
    /// agent exits or `timeout` passes, saying how far the sync got.
    pub async fn wait_synced(
        &self,
        agent: &mut AgentProcess,
        expected: &BTreeMap<String, usize>,
        every: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        let want: usize = expected.values().sum();
        let mut got = 0;
        loop {
            if let Some(counts) = self.counts().await {
                got = expected
                    .keys()
                    .map(|a| counts.get(a).copied().unwrap_or(0))
                    .sum();
                if expected
                    .iter()
                    .all(|(a, n)| counts.get(a).is_some_and(|c| c >= n))
                {
                    return Ok(Instant::now());
                }
            }
            agent.proc.check_running().with_context(|| {
                format!("the agent exited with {got} of {want} objects at the hub")
            })?;
            if Instant::now() > deadline {
                bail!(
                    "the hub held {got} of {want} objects after {} s; agent log: {}",
                    timeout.as_secs(),
                    scale_agent_e2e::process::tail(agent.proc.log(), 15)
                );
            }
            tokio::time::sleep(every).await;
        }
    }
}
