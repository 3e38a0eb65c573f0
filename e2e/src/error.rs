//! The harness's one error type: every variant says which component and which file.

use std::path::PathBuf;

/// Why the test control plane could not be built, started or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder of the run could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A prerequisite program is missing; the message names the command that installs it.
    #[error("{program} is missing: {install}")]
    Missing {
        program: &'static str,
        install: &'static str,
    },
    /// Building the Kubernetes binaries failed.
    #[error("building the control plane binaries failed (exit {status}); see the output above")]
    Build { status: String },
    /// A component process could not be started.
    #[error("starting {component}: {source}")]
    Spawn {
        component: String,
        #[source]
        source: std::io::Error,
    },
    /// A component did not become ready in time; carries the tail of its log.
    #[error("{component} did not become ready within {seconds}s; last log lines of {log}:\n{tail}")]
    NotReady {
        component: String,
        seconds: u64,
        log: PathBuf,
        tail: String,
    },
    /// A component exited while it was expected to run.
    #[error("{component} exited ({status}); last log lines of {log}:\n{tail}")]
    Exited {
        component: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    /// Certificates could not be generated.
    #[error("generating certificates: {0}")]
    Certs(#[from] rcgen::Error),
    /// A kubeconfig could not be written or loaded.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// kubectl failed.
    #[error("kubectl {args} failed ({status}):\n{stderr}")]
    Kubectl {
        args: String,
        status: String,
        stderr: String,
    },
    /// An HTTP call to a component failed.
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    /// Something the harness reads or builds is not what it should be (a manifest, an
    /// agent config, a cluster name).
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    /// Something did not happen within its deadline.
    #[error("timed out after {seconds}s waiting for {what}")]
    Timeout { what: String, seconds: u64 },
}

/// Result with the harness error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path` while doing `action`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// A failed Kubernetes API call.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            action: action.into(),
            source,
        }
    }
}
