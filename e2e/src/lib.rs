//! The real test control plane for scale-agent, shared by `just up`, the end-to-end
//! tests and the system benchmarks: etcd, kube-apiservers (one management cluster plus
//! target clusters on the same etcd under their own prefixes), kube-controller-manager,
//! kube-scheduler and kwok, all built from their Go modules and run as local processes on
//! 127.0.0.1; and the components under test as processes (hub, agents, operator, nginx).
//!
//! The tests stand on three pieces, one place each:
//! - [`Env`]: the control plane with the AgentShard CRD installed ([`crd::install`], the
//!   one install `just up` and the benchmarks use too), a namespace per test and a folder
//!   per test for the logs of what it starts;
//! - [`runner`]: the one libtest-compatible runner of every test binary; it deletes a
//!   passing test's namespaces and appends the [`diagnostics`] of a failing one;
//! - fixtures on top: [`scenario`] (a hub and agents per test) and [`operator_env`] (an
//!   [`Env`] plus the operator under test).
//!
//! Errors are this crate's [`Error`], except where a fixture hands on the tests' own
//! (`anyhow`): [`scenario`], the runner's test bodies and setup hooks.
//!
//! ```no_run
//! # async fn demo() -> scale_agent_e2e::Result<()> {
//! use scale_agent_e2e::{ControlPlane, Options};
//! let cp = ControlPlane::start(Options { targets: vec!["east".into()], ..Options::default() }).await?;
//! let client = cp.client().await?;
//! # Ok(()) }
//! ```

pub mod agent;
pub mod bench;
pub mod bins;
pub mod certs;
pub mod churn;
pub mod clouddriver;
pub mod controlplane;
pub mod converge;
pub mod crd;
pub mod diagnostics;
mod env;
mod error;
pub mod gitops;
pub mod guide;
pub mod hub;
pub mod hubstack;
pub mod informer;
pub mod kubeconfig;
pub mod kubectl;
pub mod kubelet;
pub mod metrics;
pub mod nginx;
pub mod operator;
pub mod operator_env;
pub mod pods;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod runner;
pub mod scenario;
pub mod shards;
pub mod wait;

pub use controlplane::{Cluster, ControlPlane, MANAGEMENT, Options};
pub use env::Env;

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
