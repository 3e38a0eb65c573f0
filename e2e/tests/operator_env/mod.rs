//! Shared set-up of the operator's end-to-end test binaries: one control plane and one
//! operator per binary (stopped before the control plane, also on panic), a namespace
//! per test, helpers to apply shards and Secrets and to wait for what the operator does,
//! and diagnostics (shards, events, operator log) appended to a failure.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, PostParams};
use libtest_mimic::{Arguments, Failed, Trial};
use scale_agent_crds::{AgentConfig, AgentShard, CONFIG_KEY, config_map_name};
use scale_agent_e2e::operator::{Operator, OperatorOptions};
use scale_agent_e2e::{ControlPlane, Options, wait};

/// What every test gets.
pub struct Env {
    pub cp: ControlPlane,
    /// The operator under test (a test may stop it).
    pub op: tokio::sync::Mutex<Option<Operator>>,
    pub rt: tokio::runtime::Handle,
    counter: AtomicUsize,
}

pub type TestFn = fn(Arc<Env>) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

impl Env {
    /// A fresh namespace named after the test.
    pub async fn namespace(&self, test: &str) -> anyhow::Result<String> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{}-{n}", test.replace('_', "-"), std::process::id());
        let name: String = name.chars().take(63).collect();
        let name = name.trim_end_matches('-').to_string();
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({ "metadata": { "name": name } }))?;
        let api: Api<Namespace> = Api::all(self.cp.client().await?);
        api.create(&PostParams::default(), &ns).await?;
        Ok(name)
    }

    /// Deletes a namespace (not waiting for it to be gone).
    pub async fn drop_namespace(&self, name: &str) {
        if let Ok(client) = self.cp.client().await {
            let api: Api<Namespace> = Api::all(client);
            let _ = api.delete(name, &DeleteParams::default()).await;
        }
    }

    /// `kubectl apply -f -` of `yaml`; fails with stderr when kubectl fails. Returns stderr
    /// (where kubectl prints admission warnings).
    pub fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        let out = self.cp.kubectl_stdin(["apply", "-f", "-"], yaml)?;
        anyhow::ensure!(out.success, "kubectl apply failed:\n{}\n{yaml}", out.stderr);
        Ok(out.stderr)
    }

    /// A kubeconfig Secret `name` in `ns` holding a valid kubeconfig (the management
    /// cluster's: the operator only checks it parses and names a cluster).
    pub fn kubeconfig_secret(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        let kc = self.cp.management.kubeconfig.display().to_string();
        let yaml = self.cp.kubectl([
            "create",
            "secret",
            "generic",
            name,
            "-n",
            ns,
            &format!("--from-file=kubeconfig={kc}"),
            "--dry-run=client",
            "-o",
            "yaml",
        ])?;
        self.apply(&yaml)?;
        Ok(())
    }

    /// A client for the management cluster.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        Ok(self.cp.client().await?)
    }

    /// The shard `ns/name` as stored.
    pub async fn shard(&self, ns: &str, name: &str) -> anyhow::Result<Option<AgentShard>> {
        let api: Api<AgentShard> = Api::namespaced(self.client().await?, ns);
        Ok(api.get_opt(name).await?)
    }

    /// The agent config the operator wrote for shard `ns/name`, if any.
    pub async fn agent_config(&self, ns: &str, name: &str) -> anyhow::Result<Option<AgentConfig>> {
        let api: Api<ConfigMap> = Api::namespaced(self.client().await?, ns);
        let Some(cm) = api.get_opt(&config_map_name(name)).await? else {
            return Ok(None);
        };
        let text = cm
            .data
            .and_then(|d| d.get(CONFIG_KEY).cloned())
            .context("agent ConfigMap without config.yaml")?;
        Ok(Some(AgentConfig::from_yaml(&text)?))
    }

    /// Waits until `check` on shard `ns/name` returns true.
    pub async fn wait_shard(
        &self,
        what: &str,
        ns: &str,
        name: &str,
        secs: u64,
        check: impl Fn(&AgentShard) -> bool,
    ) -> anyhow::Result<AgentShard> {
        let api: Api<AgentShard> = Api::namespaced(self.client().await?, ns);
        let check = &check;
        let found = wait::until(what, Duration::from_secs(secs), || {
            let api = api.clone();
            async move {
                let s = api.get_opt(name).await.ok()??;
                check(&s).then_some(s)
            }
        })
        .await?;
        Ok(found)
    }

    /// Waits until the agent config of `ns/name` satisfies `check`.
    pub async fn wait_config(
        &self,
        what: &str,
        ns: &str,
        name: &str,
        secs: u64,
        check: impl Fn(&AgentConfig) -> bool,
    ) -> anyhow::Result<AgentConfig> {
        let check = &check;
        Ok(wait::until(what, Duration::from_secs(secs), || async move {
            let c = self.agent_config(ns, name).await.ok()??;
            check(&c).then_some(c)
        })
        .await?)
    }

    /// Shards, children and events of `ns`, and the operator's log tail: what a failed
    /// test prints.
    pub async fn diagnostics(&self, ns: &str) -> String {
        let get = |args: &[&str]| {
            self.cp
                .kubectl(args)
                .unwrap_or_else(|e| format!("(kubectl {args:?} failed: {e})"))
        };
        let mut out = String::new();
        out += &get(&["get", "ash,cm,secret,deploy,pdb", "-n", ns, "-o", "wide"]);
        out += &get(&["get", "ash", "-n", ns, "-o", "yaml"]);
        out += &get(&["get", "events", "-n", ns]);
        if let Some(op) = self.op.lock().await.as_ref() {
            out += &format!(
                "\n--- operator log ({}):\n{}",
                op.log().display(),
                op.tail(40)
            );
        }
        out
    }
}

/// A shard manifest: `accounts` as (name, secret) pairs, plus `extra` spec lines
/// (indented by two spaces).
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

/// The checked-in CRD.
pub fn crd_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/agentshards.scaleagent.dev.yaml"
    ))
}

/// Starts the control plane, installs the CRD, starts the operator with `options`, runs
/// `tests` (`threads` at a time, unless given on the command line), stops the operator,
/// then everything else, and exits with libtest's status.
pub fn main(options: OperatorOptions, threads: Option<usize>, tests: Vec<(&'static str, TestFn)>) {
    main_with(options, threads, |_, _| Ok(()), tests)
}

/// [`main`], with `setup` run on the control plane before the operator starts (it may
/// change the operator's options).
pub fn main_with(
    mut options: OperatorOptions,
    threads: Option<usize>,
    setup: fn(&ControlPlane, &mut OperatorOptions) -> anyhow::Result<()>,
    tests: Vec<(&'static str, TestFn)>,
) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client::client::builder=off".into()),
        )
        .with_test_writer()
        .try_init();
    let mut args = Arguments::from_args();
    if args.list {
        let trials = tests
            .iter()
            .map(|(name, _)| Trial::test(*name, || Ok(())))
            .collect();
        libtest_mimic::run(&args, trials).exit();
    }
    if args.test_threads.is_none() {
        args.test_threads = threads;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("building the tokio runtime: {e}"),
    };
    let started = std::time::Instant::now();
    let cp = match rt.block_on(ControlPlane::start(Options::default())) {
        Ok(cp) => cp,
        Err(e) => panic!("starting the control plane: {e}"),
    };
    let crd = crd_path();
    let installed = cp
        .kubectl([
            "apply".as_ref(),
            "--server-side".as_ref(),
            "-f".as_ref(),
            crd.as_os_str(),
        ])
        .and_then(|_| {
            cp.kubectl([
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/agentshards.scaleagent.dev",
            ])
        });
    if let Err(e) = installed {
        panic!("installing the CRD: {e}");
    }
    if let Err(e) = setup(&cp, &mut options) {
        panic!("setting up: {e:#}");
    }
    let op = match rt.block_on(Operator::start(&cp, options)) {
        Ok(op) => op,
        Err(e) => panic!("starting the operator: {e}"),
    };
    eprintln!(
        "control plane and operator ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let env = Arc::new(Env {
        cp,
        op: tokio::sync::Mutex::new(Some(op)),
        rt: rt.handle().clone(),
        counter: AtomicUsize::new(0),
    });
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let env = env.clone();
            Trial::test(name, move || {
                let handle = env.rt.clone();
                handle
                    .block_on(f(env))
                    .map_err(|e| Failed::from(format!("{e:#}")))
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // The operator goes before the control plane it talks to.
    rt.block_on(async {
        env.op.lock().await.take();
    });
    drop(env);
    drop(rt);
    conclusion.exit();
}

/// Runs a test body in a fresh namespace; on failure appends the diagnostics of that
/// namespace; deletes the namespace on success.
pub async fn in_namespace<F, Fut>(env: Arc<Env>, test: &str, body: F) -> anyhow::Result<()>
where
    F: FnOnce(Arc<Env>, String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let ns = env.namespace(test).await?;
    match body(env.clone(), ns.clone()).await {
        Ok(()) => {
            env.drop_namespace(&ns).await;
            Ok(())
        }
        Err(e) => {
            let diag = env.diagnostics(&ns).await;
            Err(anyhow::anyhow!(
                "{e:#}\n\n--- diagnostics of namespace {ns}:\n{diag}"
            ))
        }
    }
}
