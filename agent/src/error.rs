//! The agent's errors. Each variant names what it was about (account, file, kind).

use std::path::PathBuf;

/// Why something the agent tried failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file could not be read or is invalid.
    #[error("config {path}: {source}")]
    Config {
        path: PathBuf,
        #[source]
        source: scale_agent_crds::ConfigError,
    },
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An account's kubeconfig is unusable.
    #[error("account {account}: kubeconfig: {message}")]
    Kubeconfig { account: String, message: String },
    /// A call to an account's cluster failed.
    #[error("account {account}: {action}: {source}")]
    Cluster {
        account: String,
        action: String,
        #[source]
        source: kube::Error,
    },
    /// A call to the management cluster (leases) failed.
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// This replica's own Pod is not among the shard's agent pods, so its Lease cannot
    /// prove membership: the agent holds no account.
    #[error(
        "Pod {pod} is not an agent pod of shard {shard} (it must exist with the shard's selector labels; --replica-id and --namespace come from the downward API)"
    )]
    NotAReplica { pod: String, shard: String },
    /// The hub could not be reached or the stream broke.
    #[error("hub {address}: {message}")]
    Hub { address: String, message: String },
    /// TLS material could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
}

impl Error {
    /// A stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::Read { .. } => "read",
            Error::Kubeconfig { .. } => "kubeconfig",
            Error::Cluster { .. } => "cluster",
            Error::Kube { .. } => "kube",
            Error::NotAReplica { .. } => "not_a_replica",
            Error::Hub { .. } => "hub",
            Error::Tls(_) => "tls",
        }
    }
}

/// Result with the agent's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
