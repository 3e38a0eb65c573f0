//! The real test control plane for scale-agent, shared by `just up` and the end-to-end
//! tests: etcd, kube-apiservers (one management cluster plus target clusters on the same
//! etcd under their own prefixes), kube-controller-manager, kube-scheduler and kwok, all
//! built from their Go modules and run as local processes on 127.0.0.1.
//!
//! ```no_run
//! # async fn demo() -> scale_agent_e2e::Result<()> {
//! use scale_agent_e2e::{ControlPlane, Options};
//! let cp = ControlPlane::start(Options { targets: vec!["east".into()], ..Options::default() }).await?;
//! let client = cp.client().await?;
//! # Ok(()) }
//! ```

pub mod agent;
pub mod bins;
pub mod certs;
pub mod controlplane;
pub mod converge;
mod error;
pub mod hub;
pub mod kubeconfig;
pub mod kubectl;
pub mod nginx;
pub mod operator;
pub mod pods;
pub mod ports;
pub mod process;
pub mod wait;

pub use controlplane::{Cluster, ControlPlane, MANAGEMENT, Options};

/// A binary of this workspace (`scale-agent`, `scale-agent-hub`, `scale-agent-operator`),
/// built by `cargo build --workspace --bins` (which `just test` runs first).
pub fn workspace_binary(name: &str) -> Result<std::path::PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    // `just bench` runs release builds.
    let profile = std::env::var("SCALE_AGENT_PROFILE").unwrap_or_else(|_| "debug".into());
    let path = target.join(profile).join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Missing {
            program: "a workspace binary (scale-agent, scale-agent-hub or scale-agent-operator)",
            install: "run `cargo build --workspace --bins` first (`just test` does)",
        })
    }
}
pub use error::{Error, Result};
