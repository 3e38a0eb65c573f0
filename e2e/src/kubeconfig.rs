//! Kubeconfig files for the run's clusters, self-contained (certificates embedded).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::{Error, Result};

/// What the run's kubeconfigs need of `--allow-kubeconfig` (and of an agent config's
/// `allowKubeconfig`): their clusters listen on 127.0.0.1, a loopback address the
/// operator and the agents refuse by default. Link-local servers stay refused.
pub const NEEDS: scale_agent_crds::KubeconfigFeature =
    scale_agent_crds::KubeconfigFeature::Loopback;

/// [`NEEDS`] as an agent config's allowance.
pub fn allow() -> scale_agent_crds::KubeconfigAllow {
    scale_agent_crds::KubeconfigAllow(vec![NEEDS])
}

/// Renders a kubeconfig for `server` whose single context is `name`, trusting `ca_pem` and
/// authenticating with the client certificate `cert_pem` / `key_pem`.
pub fn render(name: &str, server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    let b64 = |s: &str| STANDARD.encode(s.as_bytes());
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": name, "cluster": {
            "server": server,
            "certificate-authority-data": b64(ca_pem),
        }}],
        "users": [{ "name": name, "user": {
            "client-certificate-data": b64(cert_pem),
            "client-key-data": b64(key_pem),
        }}],
        "contexts": [{ "name": name, "context": { "cluster": name, "user": name }}],
        "current-context": name,
    });
    // A JSON value always renders as YAML.
    serde_yaml::to_string(&doc).unwrap_or_default()
}

/// Writes `text` to `path`, readable by the owner only.
pub fn write(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    }
    std::fs::write(path, text).map_err(|e| Error::io("writing", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("setting permissions of", path, e))
}

/// A kube client for the kubeconfig file at `path`.
pub async fn client(path: &Path) -> Result<kube::Client> {
    let err = |message: String| Error::Kubeconfig {
        path: path.to_path_buf(),
        message,
    };
    let kc = Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| err(e.to_string()))
}

/// `kubeconfig` (one of the run's, with one context) with a decoy cluster and context put
/// first (an address nothing answers at) and no current-context: only an account's
/// `context` naming the real one makes it usable. The new kubeconfig and the real
/// context's name.
pub fn with_decoy_context(kubeconfig: &str) -> Result<(String, String)> {
    let invalid = |message: String| Error::Invalid {
        what: "a kubeconfig with a decoy context".to_owned(),
        message,
    };
    let mut kc: serde_yaml::Value =
        serde_yaml::from_str(kubeconfig).map_err(|e| invalid(e.to_string()))?;
    let real = kc["contexts"][0]["name"]
        .as_str()
        .ok_or_else(|| invalid("the kubeconfig names no context".to_owned()))?
        .to_owned();
    let decoy_cluster: serde_yaml::Value =
        serde_yaml::from_str("{name: decoy, cluster: {server: 'https://192.0.2.1:6443'}}")
            .map_err(|e| invalid(e.to_string()))?;
    let decoy_context: serde_yaml::Value =
        serde_yaml::from_str("{name: decoy, context: {cluster: decoy}}")
            .map_err(|e| invalid(e.to_string()))?;
    if let Some(clusters) = kc["clusters"].as_sequence_mut() {
        clusters.insert(0, decoy_cluster);
    }
    if let Some(contexts) = kc["contexts"].as_sequence_mut() {
        contexts.insert(0, decoy_context);
    }
    if let Some(map) = kc.as_mapping_mut() {
        map.remove("current-context");
    }
    let text = serde_yaml::to_string(&kc).map_err(|e| invalid(e.to_string()))?;
    Ok((text, real))
}
