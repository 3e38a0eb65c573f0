//! Shared set-up for the end-to-end test binaries: one control plane per binary (started
//! before the tests, stopped after them, also on panic), a namespace per test, and the
//! AgentShard CRD installed.

#![allow(dead_code)]

pub mod agents;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use libtest_mimic::{Arguments, Failed, Trial};
use scale_agent_e2e::{ControlPlane, Options};

/// The checked-in CRD.
pub fn crd_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/agentshards.scaleagent.dev.yaml"
    ))
}

/// What every test gets.
pub struct Env {
    pub cp: ControlPlane,
    pub rt: tokio::runtime::Handle,
    counter: AtomicUsize,
}

impl Env {
    /// A fresh namespace named after the test.
    pub async fn namespace(&self, test: &str) -> anyhow::Result<String> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{}-{n}", test.replace('_', "-"), std::process::id());
        let name: String = name.chars().take(63).collect();
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name }
        }))?;
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
}

type TestFn =
    fn(Arc<Env>) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// Starts the control plane with `targets`, installs the CRD, runs `tests`, stops
/// everything, and exits with libtest's status.
pub fn main(targets: &[&str], tests: Vec<(&'static str, TestFn)>) {
    main_with(targets, tests, None)
}

/// [`main`], with at most `threads` tests at once (`Some(1)`: one after another, for tests
/// that stop shared components).
pub fn main_with(targets: &[&str], tests: Vec<(&'static str, TestFn)>, threads: Option<usize>) {
    let _ = tracing_subscriber_init();
    let mut args = Arguments::from_args();
    if threads.is_some() {
        args.test_threads = threads;
    }
    if args.list {
        let trials = tests
            .iter()
            .map(|(name, _)| Trial::test(*name, || Ok(())))
            .collect();
        libtest_mimic::run(&args, trials).exit();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("building the tokio runtime: {e}"),
    };
    let opts = Options {
        targets: targets.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    };
    let started = std::time::Instant::now();
    let cp = match rt.block_on(ControlPlane::start(opts)) {
        Ok(cp) => cp,
        Err(e) => panic!("starting the control plane: {e}"),
    };
    if let Err(e) = install_crd(&cp) {
        panic!("installing the CRD: {e}");
    }
    eprintln!(
        "control plane ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let env = Arc::new(Env {
        cp,
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
    drop(env);
    drop(rt);
    conclusion.exit();
}

fn install_crd(cp: &ControlPlane) -> anyhow::Result<()> {
    let crd = crd_path();
    cp.kubectl([
        "apply".as_ref(),
        "--server-side".as_ref(),
        "-f".as_ref(),
        crd.as_os_str(),
    ])?;
    cp.kubectl([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/agentshards.scaleagent.dev",
    ])?;
    Ok(())
}

fn tracing_subscriber_init() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client::client::builder=off".into()),
        )
        .with_test_writer()
        .try_init()
}
