//! A stand-in kubelet for agent pods. There is no kubelet in the test control plane:
//! kwok marks pods Running (but agent pods not Ready), and this runner starts a real
//! `scale-agent` process for every Running agent pod, with the pod's ConfigMap and
//! Secret volumes written out as files (kept current, swapped atomically as a kubelet
//! does: every file of a volume changes at once), its downward-API environment, and its
//! arguments with mount paths pointed at those files. Like a kubelet it runs the
//! container's readiness probe and writes the pod's Ready condition from it, so the
//! agent Deployment is available only while its agents answer `/readyz` (connected to
//! the hub and synced). The process stops when the pod goes away. The agent reaches the
//! management cluster with the admin kubeconfig in place of a service-account token.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Volume};
use kube::api::{Api, ListParams, Patch, PatchParams};
use nix::sys::signal::Signal;

use crate::ports::free_port;
use crate::process::Proc;
use crate::{ControlPlane, Env, Error, Result, workspace_binary};

/// The labels of agent pods.
pub const AGENT_SELECTOR: &str =
    "app.kubernetes.io/name=scale-agent,app.kubernetes.io/component=agent";

/// One agent process standing in for a pod.
#[derive(Debug)]
pub struct PodProcess {
    /// The process.
    pub proc: Proc,
    /// `127.0.0.1:<port>` of its admin server (`/metrics`, `/healthz`, `/readyz`).
    pub admin: String,
    uid: String,
}

/// Runs agent processes for agent pods until dropped.
#[derive(Debug)]
pub struct PodRunner {
    task: tokio::task::JoinHandle<()>,
    pods: Arc<Mutex<HashMap<String, PodProcess>>>,
}

impl Drop for PodRunner {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(mut p) = self.pods.lock() {
            p.clear();
        }
    }
}

/// Settings of the runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The `scale-agent` binary.
    pub agent_bin: PathBuf,
    /// Kubeconfig standing in for the pods' service account (management cluster).
    pub kubeconfig: PathBuf,
    /// The run folder (pod files go to `<run>/pods/<namespace>/<pod>/`).
    pub run_dir: PathBuf,
    /// Extra environment for every agent (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Extra arguments for every agent (e.g. shorter lease timings for tests).
    pub args: Vec<String>,
    /// Only the agent pods of this namespace (a test's own); every namespace when `None`.
    pub namespace: Option<String>,
}

impl RunnerConfig {
    /// Agents of this workspace's `scale-agent` binary, logging at `info`, reaching the
    /// management cluster of `cp` as its admin, with their files and logs under `run_dir`.
    pub fn new(cp: &ControlPlane, run_dir: PathBuf) -> Result<RunnerConfig> {
        Ok(RunnerConfig {
            agent_bin: workspace_binary("scale-agent")?,
            kubeconfig: cp.management.kubeconfig.clone(),
            run_dir,
            env: vec![("RUST_LOG".into(), "info,kube_client=warn".into())],
            args: Vec::new(),
            namespace: None,
        })
    }
}

impl PodRunner {
    /// Agents for the pods of the test namespace `ns` of `env` only, logging into the
    /// test's folder, with short Leases (renewed every 500 ms, lasting 4 s) so that a dead
    /// replica is noticed within seconds, and config reloads every 500 ms.
    pub async fn for_test(env: &Env, ns: &str) -> Result<PodRunner> {
        Ok(PodRunner::start(
            env.client().await?,
            RunnerConfig {
                args: vec![
                    "--lease-renew-interval=500ms".into(),
                    "--lease-duration=4s".into(),
                    "--reload-interval=500ms".into(),
                ],
                namespace: Some(ns.to_owned()),
                ..RunnerConfig::new(&env.cp, env.test_dir(ns))?
            },
        ))
    }

    /// Starts watching agent pods in every namespace of `client`'s cluster.
    pub fn start(client: kube::Client, cfg: RunnerConfig) -> PodRunner {
        let pods: Arc<Mutex<HashMap<String, PodProcess>>> = Arc::default();
        let shared = pods.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = sync(&client, &cfg, &shared).await {
                    tracing::warn!(error = %e, "pod runner: sync failed");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        PodRunner { task, pods }
    }

    /// The keys (`namespace/name`) of pods with a running agent.
    pub fn running(&self) -> Vec<String> {
        self.pods
            .lock()
            .map(|p| {
                let mut k: Vec<String> = p.keys().cloned().collect();
                k.sort();
                k
            })
            .unwrap_or_default()
    }

    /// The admin address of a pod's agent.
    pub fn admin(&self, pod_key: &str) -> Option<String> {
        self.pods.lock().ok()?.get(pod_key).map(|p| p.admin.clone())
    }

    /// Sends a signal to a pod's agent process (SIGKILL to simulate a crash, SIGSTOP to freeze it).
    pub fn signal(&self, pod_key: &str, signal: Signal) -> bool {
        match self.pods.lock() {
            Ok(p) => p.get(pod_key).map(|pp| pp.proc.signal(signal)).is_some(),
            Err(_) => false,
        }
    }

    /// The process id of a pod's agent (the same while the agent is not restarted).
    pub fn pid(&self, pod_key: &str) -> Option<u32> {
        self.pods.lock().ok()?.get(pod_key).map(|p| p.proc.pid())
    }

    /// The log file of a pod's agent.
    pub fn log(&self, pod_key: &str) -> Option<PathBuf> {
        self.pods
            .lock()
            .ok()?
            .get(pod_key)
            .map(|p| p.proc.log().to_path_buf())
    }
}

async fn sync(
    client: &kube::Client,
    cfg: &RunnerConfig,
    procs: &Mutex<HashMap<String, PodProcess>>,
) -> Result<()> {
    let api: Api<Pod> = match &cfg.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let list = api
        .list(&ListParams::default().labels(AGENT_SELECTOR))
        .await
        .map_err(|e| Error::kube("listing agent pods", e))?;
    let mut live: BTreeMap<String, Pod> = BTreeMap::new();
    for pod in list.items {
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let direct = pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(crate::agent::DIRECT_AGENT_ANNOTATION));
        if running && !deleting && !direct {
            let key = format!(
                "{}/{}",
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default()
            );
            live.insert(key, pod);
        }
    }
    // Stop agents whose pod is gone (or replaced by one of the same name).
    {
        let mut p = procs.lock().map_err(|_| Error::Timeout {
            what: "pod table lock".into(),
            seconds: 0,
        })?;
        p.retain(|key, pp| {
            let keep =
                live.get(key).and_then(|pod| pod.metadata.uid.as_deref()) == Some(pp.uid.as_str());
            if !keep {
                tracing::info!(pod = %key, "pod gone: stopping its agent");
            }
            keep
        });
    }
    for (key, pod) in &live {
        let dir = cfg.run_dir.join("pods").join(key);
        let Some(container) = pod.spec.as_ref().and_then(|s| s.containers.first()) else {
            continue;
        };
        let mounts = write_volumes(client, pod, container, &dir).await?;
        let started = procs.lock().map(|p| p.contains_key(key)).unwrap_or(true);
        if !started {
            let pp = spawn(cfg, pod, container, &mounts, key)?;
            tracing::info!(pod = %key, admin = %pp.admin, "started an agent for the pod");
            if let Ok(mut p) = procs.lock() {
                p.insert(key.clone(), pp);
            }
        }
        let admin = procs
            .lock()
            .ok()
            .and_then(|p| p.get(key).map(|pp| pp.admin.clone()));
        if let Some(admin) = admin {
            probe_readiness(client, pod, container, &admin).await?;
        }
    }
    Ok(())
}

/// The readiness probe's path: the container's `httpGet` probe, else `/readyz`.
fn readiness_path(c: &Container) -> String {
    c.readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .and_then(|h| h.path.clone())
        .unwrap_or_else(|| "/readyz".to_owned())
}

/// Runs the container's readiness probe against the agent's admin server and writes the
/// pod's Ready and ContainersReady conditions when they change, as a kubelet does.
async fn probe_readiness(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    admin: &str,
) -> Result<()> {
    let url = format!("http://{admin}{}", readiness_path(container));
    let ready = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    write_readiness(client, pod, &container.name, ready).await
}

/// Writes the pod's Ready and ContainersReady conditions (and its container `container`'s
/// readiness) as a kubelet does, unless they already say `ready`.
pub async fn write_readiness(
    client: &kube::Client,
    pod: &Pod,
    container: &str,
    ready: bool,
) -> Result<()> {
    let status = if ready { "True" } else { "False" };
    let was = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    if was == Some(status) {
        return Ok(());
    }
    let (ns, name) = (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let reason = if ready {
        None
    } else {
        Some("ReadinessProbeFailed")
    };
    let patch = serde_json::json!({
        "status": {
            "conditions": [
                { "type": "Ready", "status": status, "lastTransitionTime": now, "reason": reason },
                { "type": "ContainersReady", "status": status, "lastTransitionTime": now, "reason": reason },
            ],
            "containerStatuses": [{ "name": container, "ready": ready }],
        }
    });
    Api::<Pod>::namespaced(client.clone(), &ns)
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map_err(|e| Error::kube(format!("writing the readiness of pod {ns}/{name}"), e))?;
    tracing::info!(pod = %format!("{ns}/{name}"), ready, "pod readiness changed");
    Ok(())
}

/// Writes the pod's ConfigMap and Secret volumes under `dir`; returns mount path → folder.
/// Paths under a mount that a ConfigMap's text names (the agent config names its TLS
/// files) are pointed at the local folders too: here every "pod" shares one filesystem.
async fn write_volumes(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    dir: &Path,
) -> Result<Vec<(String, PathBuf)>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mounts: Vec<(String, PathBuf, Volume)> = container
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| {
            let v = volumes.iter().find(|v| v.name == m.name)?.clone();
            Some((m.mount_path.clone(), dir.join(&m.name), v))
        })
        .collect();
    let paths: Vec<(String, PathBuf)> = mounts
        .iter()
        .map(|(m, d, _)| (m.clone(), d.clone()))
        .collect();
    for (_, target, v) in &mounts {
        let files: Option<BTreeMap<String, Vec<u8>>> = if let Some(cm) = &v.config_map {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            api.get_opt(&cm.name).await.ok().flatten().map(|c| {
                c.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, rewrite(&v, &paths).into_bytes()))
                    .collect()
            })
        } else if let Some(s) = &v.secret {
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let name = s.secret_name.clone().unwrap_or_default();
            api.get_opt(&name).await.ok().flatten().map(|s| {
                let mut files: BTreeMap<String, Vec<u8>> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                for (k, v) in s.string_data.unwrap_or_default() {
                    files.insert(k, v.into_bytes());
                }
                files
            })
        } else {
            None
        };
        if let Some(files) = files {
            sync_dir(target, &files)?;
        }
    }
    Ok(paths)
}

/// The entry of a volume folder that points at its current contents, as the kubelet's.
const DATA: &str = "..data";

/// Makes `dir` hold exactly `files`, all of them replaced at once when any changed, as
/// the kubelet's atomic writer does: the files live in a hidden folder, `..data` points
/// at it, and each name is a link through `..data`; a change writes a new hidden folder
/// and swaps `..data` in one rename. A reader never sees a new certificate with an old
/// key.
fn sync_dir(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    let data = dir.join(DATA);
    let unchanged = files
        .iter()
        .all(|(name, content)| std::fs::read(data.join(name)).ok().as_deref() == Some(content))
        && std::fs::read_dir(&data).map(|d| d.count()).ok() == Some(files.len());
    if !unchanged {
        let stamp = format!(
            "..{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let fresh = dir.join(&stamp);
        std::fs::create_dir_all(&fresh).map_err(|e| Error::io("creating", &fresh, e))?;
        for (name, content) in files {
            let path = fresh.join(name);
            std::fs::write(&path, content).map_err(|e| Error::io("writing", &path, e))?;
        }
        let old = std::fs::read_link(&data).ok();
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&stamp, &tmp).map_err(|e| Error::io("linking", &tmp, e))?;
        std::fs::rename(&tmp, &data).map_err(|e| Error::io("renaming to", &data, e))?;
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(dir.join(old));
        }
    }
    // One link per file, through ..data; nothing else (hidden entries are the writer's).
    for name in files.keys() {
        let link = dir.join(name);
        if std::fs::read_link(&link).ok() != Some(Path::new(DATA).join(name)) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(Path::new(DATA).join(name), &link)
                .map_err(|e| Error::io("linking", &link, e))?;
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !files.contains_key(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

fn rewrite(value: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut v = value.to_string();
    for (mount, local) in mounts {
        v = v.replace(mount.as_str(), &local.display().to_string());
    }
    v
}

fn spawn(
    cfg: &RunnerConfig,
    pod: &Pod,
    c: &Container,
    mounts: &[(String, PathBuf)],
    key: &str,
) -> Result<PodProcess> {
    let port = free_port()?;
    let admin = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(&cfg.agent_bin);
    // The pod's admin port is the container's; here every agent shares 127.0.0.1.
    for a in c.args.clone().unwrap_or_default() {
        if !a.starts_with("--admin-addr") {
            cmd.arg(rewrite(&a, mounts));
        }
    }
    cmd.arg(format!("--admin-addr={admin}"));
    cmd.args(&cfg.args);
    for e in c.env.clone().unwrap_or_default() {
        let value = match (
            &e.value,
            e.value_from.as_ref().and_then(|f| f.field_ref.as_ref()),
        ) {
            (Some(v), _) => rewrite(v, mounts),
            (None, Some(f)) => match f.field_path.as_str() {
                "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
                "metadata.namespace" => pod.metadata.namespace.clone().unwrap_or_default(),
                "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        cmd.env(&e.name, value);
    }
    cmd.env("KUBECONFIG", &cfg.kubeconfig);
    for (k, v) in &cfg.env {
        cmd.env(k, v);
    }
    let name = format!("agent-{}", key.replace('/', "-"));
    let proc = Proc::spawn(&name, cmd, &cfg.run_dir)?;
    Ok(PodProcess {
        proc,
        admin,
        uid: pod.metadata.uid.clone().unwrap_or_default(),
    })
}

/// Encodes base64 the way Secret `data` is written (for tests building Secrets by hand).
pub fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn volumes_are_swapped_whole_as_a_kubelet_does() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path().join("tls");
        sync_dir(&d, &files(&[("tls.crt", "cert-1"), ("tls.key", "key-1")])).expect("sync");
        let target = std::fs::read_link(d.join(DATA)).expect("..data");
        assert_eq!(
            std::fs::read_to_string(d.join("tls.crt")).expect("read"),
            "cert-1"
        );
        // Nothing changed: nothing is rewritten.
        sync_dir(&d, &files(&[("tls.crt", "cert-1"), ("tls.key", "key-1")])).expect("sync");
        assert_eq!(std::fs::read_link(d.join(DATA)).expect("..data"), target);
        // A renewal: both files change at once, and a key that went is gone.
        sync_dir(&d, &files(&[("tls.crt", "cert-2")])).expect("sync");
        assert_eq!(
            std::fs::read_to_string(d.join("tls.crt")).expect("read"),
            "cert-2"
        );
        assert!(!d.join("tls.key").exists());
        assert!(!d.join(&target).exists(), "the old contents are removed");
    }
}
