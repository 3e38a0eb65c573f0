//! [`Env`]: what every end-to-end test runs against — the control plane with the
//! AgentShard CRD installed — and the one way a test gets a namespace of its own and a
//! folder for the logs of the components it starts. The failure report
//! ([`crate::diagnostics`]) looks in both.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};

use crate::{ControlPlane, Error, Options, Result, crd, runner};

/// The control plane of one test binary, shared by its tests.
#[derive(Debug)]
pub struct Env {
    /// The control plane (clusters, kubectl, certificates).
    pub cp: ControlPlane,
    namespaces: AtomicUsize,
}

impl Env {
    /// Starts the control plane and installs the checked-in CRD.
    pub async fn start(options: Options) -> Result<Env> {
        let cp = ControlPlane::start(options).await?;
        crd::install(&cp, &crd::checked_in())?;
        Ok(Env {
            cp,
            namespaces: AtomicUsize::new(0),
        })
    }

    /// Creates a fresh namespace in the management cluster, named after `test` (unique
    /// within the run). Under the test runner it belongs to the running test: shown in
    /// the test's failure report, deleted when the test passes.
    pub async fn namespace(&self, test: &str) -> Result<String> {
        let n = self.namespaces.fetch_add(1, Ordering::Relaxed);
        let name = namespace_name(test, std::process::id(), n);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name }
        }))
        .map_err(|e| Error::Invalid {
            what: format!("namespace {name}"),
            message: e.to_string(),
        })?;
        let api: Api<Namespace> = Api::all(self.cp.client().await?);
        api.create(&PostParams::default(), &ns)
            .await
            .map_err(|e| Error::kube(format!("creating namespace {name}"), e))?;
        runner::record_namespace(&name);
        Ok(name)
    }

    /// Deletes a namespace (not waiting for it to be gone).
    pub async fn drop_namespace(&self, name: &str) {
        if let Ok(client) = self.cp.client().await {
            let api: Api<Namespace> = Api::all(client);
            let _ = api.delete(name, &DeleteParams::default()).await;
        }
    }

    /// The folder for what the components of the test owning namespace `ns` write (their
    /// logs go to `logs/` in it), kept apart from other tests'.
    pub fn test_dir(&self, ns: &str) -> PathBuf {
        self.cp.run_dir.join(ns)
    }

    /// A client for the management cluster.
    pub async fn client(&self) -> Result<kube::Client> {
        self.cp.client().await
    }

    /// `kubectl apply -f -` of `yaml`; returns kubectl's warnings.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        self.cp.apply(yaml)
    }

    /// A kubeconfig Secret `name` in `ns` holding a valid kubeconfig (the management
    /// cluster's: the operator only checks that it parses and names a cluster).
    pub fn kubeconfig_secret(&self, ns: &str, name: &str) -> Result<()> {
        self.cp
            .kubeconfig_secret(ns, name, &self.cp.management.kubeconfig)
    }
}

/// A namespace name (a DNS label) for the `n`th namespace of process `pid`, named after
/// `test`.
fn namespace_name(test: &str, pid: u32, n: usize) -> String {
    let stem: String = test
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    let suffix = format!("-{pid}-{n}");
    let stem = stem.trim_matches('-');
    let room = 63usize.saturating_sub(suffix.len());
    let stem = stem.get(..room.min(stem.len())).unwrap_or(stem);
    let stem = stem.trim_end_matches('-');
    if stem.is_empty() {
        format!("test{suffix}")
    } else {
        format!("{stem}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::namespace_name;

    #[test]
    fn namespace_names_are_dns_labels() {
        assert_eq!(
            namespace_name("conflict_owner", 42, 3),
            "conflict-owner-42-3"
        );
        assert_eq!(namespace_name("Deny.Late", 1, 0), "deny-late-1-0");
        assert_eq!(namespace_name("__", 1, 0), "test-1-0");
        let long = namespace_name(&"a-".repeat(60), 4_000_000, 12);
        assert!(long.len() <= 63, "{long}");
        assert!(long.ends_with("-4000000-12"), "{long}");
        assert!(!long.contains("--"), "{long}");
    }
}
