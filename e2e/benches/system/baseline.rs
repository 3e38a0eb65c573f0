//! The memory baseline: what someone writing their own forwarder would do — a kube-rs
//! reflector per kind (and per namespace, as the agent watches them) holding the same
//! objects, one client per account, every account started at once. It runs as its own
//! process (this benchmark binary, started again with `--baseline-reflector <spec>`) so
//! that its resident set is read from `/proc` exactly as the agent's is.
//!
//! It prints `synced <objects>` once every reflector has listed, then keeps watching
//! until it is killed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::discovery::Discovery;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use scale_agent_e2e::process::{Proc, read_end};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// What the baseline process watches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// The accounts.
    pub accounts: Vec<SpecAccount>,
}

/// One account of the baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpecAccount {
    /// Kubeconfig file of its cluster.
    pub kubeconfig: PathBuf,
    /// Namespaces (all when empty).
    pub namespaces: Vec<String>,
    /// Kinds as the agent config names them (the agent's default set when empty).
    pub kinds: Vec<String>,
}

/// A running baseline process.
pub struct Baseline {
    /// The process.
    pub proc: Proc,
}

impl Baseline {
    /// Writes `spec` under `dir` and starts the baseline process on it.
    pub fn start(dir: &Path, name: &str, spec: &Spec) -> anyhow::Result<Baseline> {
        std::fs::create_dir_all(dir)?;
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_vec(spec)?)?;
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.arg("--baseline-reflector")
            .arg(&file)
            .env("RUST_LOG", "warn");
        Ok(Baseline {
            proc: Proc::spawn(name, cmd, dir)?,
        })
    }

    /// Waits until the process says every reflector has listed; returns when that
    /// was seen and how many objects it holds.
    pub async fn wait_synced(&mut self, timeout: Duration) -> anyhow::Result<(Instant, u64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = read_end(self.proc.log(), 64 * 1024);
            if let Some(n) = text
                .lines()
                .find_map(|l| l.strip_prefix("synced "))
                .and_then(|n| n.trim().parse().ok())
            {
                return Ok((Instant::now(), n));
            }
            self.proc.check_running()?;
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the reflector baseline did not sync within {} s: {}",
                    timeout.as_secs(),
                    scale_agent_e2e::process::tail(self.proc.log(), 10)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The baseline process's main: reflects every account's kinds until killed.
pub fn main(spec_file: &Path) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let spec: Spec = serde_json::from_slice(&std::fs::read(spec_file)?)
        .with_context(|| format!("reading {}", spec_file.display()))?;
    // The same runtime the agent runs on (`#[tokio::main]`: one worker per CPU).
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let (tx, mut rx) = mpsc::unbounded_channel::<anyhow::Result<usize>>();
        let accounts = spec.accounts.len();
        for account in spec.accounts {
            let tx = tx.clone();
            tokio::spawn(async move {
                let r = reflect_account(account).await;
                let _ = tx.send(r);
            });
        }
        drop(tx);
        // Each account answers with the number of reflectors it started once all of
        // them listed.
        let mut stores = Vec::new();
        for _ in 0..accounts {
            match rx.recv().await {
                Some(Ok(n)) => stores.push(n),
                Some(Err(e)) => return Err(e),
                None => anyhow::bail!("an account task ended"),
            }
        }
        let objects = OBJECTS.load(std::sync::atomic::Ordering::Relaxed);
        println!("synced {objects}");
        std::io::stdout().flush()?;
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// Objects held by every store, counted at each store's first InitDone.
static OBJECTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn reflect_account(account: SpecAccount) -> anyhow::Result<usize> {
    let client = scale_agent_e2e::kubeconfig::client(&account.kubeconfig).await?;
    let discovery = Discovery::new(client.clone()).run_aggregated().await?;
    let (kinds, _) = scale_agent::kinds::resolve(&discovery, &account.kinds, &[]);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let mut started = 0;
    for kind in kinds {
        let ar = kind.resource.clone();
        let is_namespace = ar.group.is_empty() && ar.kind == "Namespace";
        let mut watches: Vec<(Api<DynamicObject>, watcher::Config)> = Vec::new();
        let config = watcher::Config::default().page_size(500);
        if account.namespaces.is_empty() {
            watches.push((Api::all_with(client.clone(), &ar), config));
        } else if kind.namespaced {
            for ns in &account.namespaces {
                watches.push((
                    Api::namespaced_with(client.clone(), ns, &ar),
                    config.clone(),
                ));
            }
        } else if is_namespace {
            // Only the account's own namespaces, as the agent sends them.
            for ns in &account.namespaces {
                watches.push((
                    Api::all_with(client.clone(), &ar),
                    config.clone().fields(&format!("metadata.name={ns}")),
                ));
            }
        } else {
            watches.push((Api::all_with(client.clone(), &ar), config));
        }
        for (api, config) in watches {
            let writer: Writer<DynamicObject> = Writer::new(ar.clone());
            let reader = writer.as_reader();
            let done = done_tx.clone();
            started += 1;
            tokio::spawn(async move {
                let stream = reflector(writer, watcher::watcher(api, config).default_backoff());
                futures::pin_mut!(stream);
                let mut listed = false;
                while let Some(event) = stream.next().await {
                    if let Ok(Event::InitDone) = event
                        && !listed
                    {
                        listed = true;
                        OBJECTS
                            .fetch_add(reader.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        let _ = done.send(());
                    }
                }
            });
        }
    }
    drop(done_tx);
    for _ in 0..started {
        done_rx
            .recv()
            .await
            .context("a reflector ended before it listed")?;
    }
    Ok(started)
}
