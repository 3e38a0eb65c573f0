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

pub mod bins;
pub mod certs;
pub mod controlplane;
mod error;
pub mod kubeconfig;
pub mod kubectl;
pub mod ports;
pub mod process;
pub mod wait;

pub use controlplane::{Cluster, ControlPlane, MANAGEMENT, Options};
pub use error::{Error, Result};
