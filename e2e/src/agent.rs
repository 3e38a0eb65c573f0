//! An agent process started directly with config files the test writes, without the
//! operator (the operator's own tests cover the path from AgentShard to files).
//!
//! Agents count only the Leases of live agent pods of their shard's Deployment as
//! members, so each directly started agent gets a Pod of its own in the management
//! cluster, named after its replica, with the shard's labels and controlled by a
//! ReplicaSet named like the Deployment's (`<shard>-agent-<hash>`, the hash being the
//! replica's name), running on a kwok node. The pod runner ([`crate::pods`]) leaves these pods alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use scale_agent_crds::AgentConfig;

use crate::ports::free_port;
use crate::process::Proc;
use crate::{Error, Result};

/// A running agent and its files.
#[derive(Debug)]
pub struct AgentProcess {
    /// The process (kill it, freeze it, read its log).
    pub proc: Proc,
    /// `127.0.0.1:<port>` of its admin server.
    pub admin: String,
    /// Its config file.
    pub config_file: PathBuf,
    /// Its kubeconfig folder.
    pub kubeconfig_dir: PathBuf,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The `scale-agent` binary.
    pub bin: PathBuf,
    /// Replica id (and process name).
    pub replica: String,
    /// Namespace of the shard's Leases in the management cluster.
    pub namespace: String,
    /// Management cluster kubeconfig (for Leases).
    pub management_kubeconfig: PathBuf,
    /// Extra flags.
    pub args: Vec<String>,
}

impl AgentProcess {
    /// Writes `config` and `kubeconfigs` (file name → text) under `dir`, and starts the agent.
    pub fn start(
        spec: &AgentSpec,
        dir: &Path,
        config: &AgentConfig,
        kubeconfigs: &BTreeMap<String, String>,
        run_dir: &Path,
    ) -> Result<AgentProcess> {
        back_with_pod(spec, &config.shard.name)?;
        let config_file = dir.join("config.yaml");
        let kubeconfig_dir = dir.join("kubeconfigs");
        write_files(&config_file, &kubeconfig_dir, config, kubeconfigs)?;
        let admin = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(&spec.bin);
        cmd.arg(format!("--config={}", config_file.display()))
            .arg(format!("--kubeconfig-dir={}", kubeconfig_dir.display()))
            .arg(format!("--replica-id={}", spec.replica))
            .arg(format!("--namespace={}", spec.namespace))
            .arg(format!("--admin-addr={admin}"))
            .args(&spec.args)
            .env("KUBECONFIG", &spec.management_kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("AGENT_LOG")
                    .unwrap_or_else(|_| "info,scale_agent=debug,kube_client=warn".into()),
            );
        let proc = Proc::spawn(&format!("agent-{}", spec.replica), cmd, run_dir)?;
        Ok(AgentProcess {
            proc,
            admin,
            config_file,
            kubeconfig_dir,
        })
    }

    /// Whether the agent answers `/readyz` with success: connected to the hub and every
    /// account synced.
    pub async fn is_ready(&self) -> bool {
        ready(&self.admin).await
    }

    /// Rewrites the files the running agent reads (it reloads them by itself).
    pub fn update(
        &self,
        config: &AgentConfig,
        kubeconfigs: &BTreeMap<String, String>,
    ) -> Result<()> {
        write_files(&self.config_file, &self.kubeconfig_dir, config, kubeconfigs)
    }
}

/// Whether the agent whose admin server is at `admin` (`127.0.0.1:<port>`) answers
/// `/readyz` with success.
pub async fn ready(admin: &str) -> bool {
    reqwest::Client::new()
        .get(format!("http://{admin}/readyz"))
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// The annotation that marks an agent pod started directly by a test: the pod runner
/// starts no agent for it.
pub const DIRECT_AGENT_ANNOTATION: &str = "e2e.scaleagent.dev/direct";

/// Creates (or keeps) the Pod that makes agent `spec.replica` a replica of shard `shard`:
/// an orphan Pod first, then a one-replica ReplicaSet selecting it, which adopts it.
fn back_with_pod(spec: &AgentSpec, shard: &str) -> Result<()> {
    let suffix: String = spec
        .replica
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let rs = format!("{}-{suffix}", scale_agent_crds::deployment_name(shard));
    let mut labels = scale_agent_crds::membership::agent_selector_labels(shard);
    labels.insert(
        scale_agent_crds::membership::POD_TEMPLATE_HASH_LABEL.into(),
        suffix.clone(),
    );
    labels.insert("e2e.scaleagent.dev/replica".into(), spec.replica.clone());
    let annotations = BTreeMap::from([(DIRECT_AGENT_ANNOTATION.to_owned(), "true".to_owned())]);
    // A ServiceAccount of its own: a fresh namespace's `default` may not exist yet.
    let service_account = "scale-agent-e2e-direct";
    let pod_spec = serde_json::json!({
        "nodeName": "kwok-node-0",
        "serviceAccountName": service_account,
        "automountServiceAccountToken": false,
        "containers": [{ "name": "agent", "image": "scale-agent:e2e" }],
    });
    let docs = [
        serde_json::json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": { "name": service_account, "namespace": spec.namespace },
        }),
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": spec.replica, "namespace": spec.namespace,
                "labels": labels, "annotations": annotations },
            "spec": pod_spec,
        }),
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": { "name": rs, "namespace": spec.namespace, "labels": labels },
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": labels },
                "template": {
                    "metadata": { "labels": labels, "annotations": annotations },
                    "spec": pod_spec,
                },
            },
        }),
    ];
    let kubectl = crate::bins::kubectl()?;
    for doc in docs {
        // The Pod must exist before the ReplicaSet, or the ReplicaSet makes its own.
        crate::kubectl::run(
            &kubectl,
            &spec.management_kubeconfig,
            ["apply", "-f", "-"],
            Some(&doc.to_string()),
        )?;
    }
    Ok(())
}

fn write_files(
    config_file: &Path,
    kubeconfig_dir: &Path,
    config: &AgentConfig,
    kubeconfigs: &BTreeMap<String, String>,
) -> Result<()> {
    std::fs::create_dir_all(kubeconfig_dir)
        .map_err(|e| Error::io("creating", kubeconfig_dir, e))?;
    for (name, text) in kubeconfigs {
        let path = kubeconfig_dir.join(name);
        atomic_write(&path, text.as_bytes())?;
    }
    let yaml = config.to_yaml().map_err(|e| Error::Kubeconfig {
        path: config_file.to_path_buf(),
        message: e.to_string(),
    })?;
    atomic_write(config_file, yaml.as_bytes())
}

fn atomic_write(path: &Path, content: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).map_err(|e| Error::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming to", path, e))
}
