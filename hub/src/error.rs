//! The hub's error type.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can stop the hub from starting or keep it from running.
///
/// Errors caused by one agent or one HTTP client never become an `Error`: they
/// are answered on that stream or request and logged, and the hub serves on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store (SQLite, or the shared PostgreSQL) could not be opened,
    /// read or written.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Which server: "grpc" or "http".
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    TlsFile {
        /// Which file: certificate, key, client CA.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS material is not usable (bad PEM, key does not match, empty CA
    /// bundle).
    #[error("TLS: {message}")]
    Tls {
        /// What is wrong.
        message: String,
    },
    /// A setting is not usable (e.g. a header name that is not one).
    #[error("{setting}: {message}")]
    Setting {
        /// The flag (or the `Config` field) at fault.
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The Kubernetes client for the AgentShard watch could not be built.
    #[error("Kubernetes client (for --authorize-shards): {0}")]
    Kube(String),
    /// The API token file could not be read or is empty.
    #[error("API token file {path}: {message}")]
    ApiToken {
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The gRPC server could not be configured or failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(#[source] std::io::Error),
}

impl Error {
    /// A stable, low-cardinality label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Store(_) => "store",
            Error::Bind { .. } => "bind",
            Error::TlsFile { .. } => "tls_file",
            Error::Tls { .. } => "tls",
            Error::Setting { .. } => "setting",
            Error::Kube(_) => "kube",
            Error::ApiToken { .. } => "api_token",
            Error::Transport(_) => "transport",
            Error::Http(_) => "http",
        }
    }
}

/// An error and its causes, `: `-separated (a TLS refusal is a cause of a client's
/// "connect error"); a cause whose text its error already ends with is not repeated.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}
