//! The operator's one error type.

/// What can go wrong in the operator. Problems with a shard's own input (a missing
/// Secret, a garbage kubeconfig) are not errors: they go into the shard's status and the
/// shard waits for a change. These are failures to talk to the API server or to start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done, naming the object (`applying ConfigMap ns/x-agent-config`).
        action: String,
        /// What the client said.
        #[source]
        source: kube::Error,
    },

    /// An object read from the API server lacks something the server always sets.
    #[error("{what} has no {field}")]
    MissingField {
        /// The object.
        what: String,
        /// The field (`metadata.uid`).
        field: &'static str,
    },

    /// An object could not be serialized or deserialized.
    #[error("{what}: {source}")]
    Json {
        /// What was being converted.
        what: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },

    /// The agent config could not be written.
    #[error("writing the agent config of {shard}: {source}")]
    Config {
        /// The shard.
        shard: String,
        /// What the crds crate said.
        #[source]
        source: scale_agent_crds::ConfigError,
    },

    /// Generating or loading the webhook's serving certificate failed.
    #[error("webhook certificate: {0}")]
    Certificate(String),

    /// A server could not bind or serve.
    #[error("{what} on {addr}: {source}")]
    Serve {
        /// Which server (`admin`, `webhook`).
        what: &'static str,
        /// The address.
        addr: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// The client could not be configured from the environment or kubeconfig.
    #[error("configuring the Kubernetes client: {0}")]
    ClientConfig(String),

    /// A reconcile went by an earlier check of a kubeconfig Secret that did not check
    /// the key (or context) an account uses: it reads the Secret next time.
    #[error("the kubeconfig Secret {secret} was not checked for key {key}")]
    Unchecked {
        /// The Secret, `namespace/name`.
        secret: String,
        /// The key.
        key: String,
    },

    /// The claims index task is gone: no ownership decision can be made.
    #[error("the claims index stopped")]
    IndexStopped,

    /// A task the operator cannot run without ended.
    #[error("the {task} stopped: {reason}")]
    TaskEnded {
        /// Which task (`admin server`, `webhook`, `shard watch`...).
        task: &'static str,
        /// Its error, or how it ended.
        reason: String,
    },
}

impl Error {
    /// A failed API call while doing `action`.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            action: action.into(),
            source,
        }
    }

    /// A stable, low-cardinality label of the error, for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube { source, .. } => match source {
                kube::Error::Api(s) if s.code == 409 => "ApiConflict",
                kube::Error::Api(s) if s.code == 403 => "ApiForbidden",
                kube::Error::Api(s) if s.code == 404 => "ApiNotFound",
                kube::Error::Api(s) if s.code == 422 => "ApiInvalid",
                kube::Error::Api(_) => "ApiError",
                _ => "ApiUnreachable",
            },
            Self::MissingField { .. } => "MissingField",
            Self::Json { .. } => "Json",
            Self::Config { .. } => "Config",
            Self::Certificate(_) => "Certificate",
            Self::Serve { .. } => "Serve",
            Self::ClientConfig(_) => "ClientConfig",
            Self::Unchecked { .. } => "Unchecked",
            Self::IndexStopped => "IndexStopped",
            Self::TaskEnded { .. } => "TaskEnded",
        }
    }
}

/// Result with the operator's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
