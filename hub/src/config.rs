//! The hub's settings: one type, built once — from the command-line flags by
//! the binary, or from [`Config::local`] by tests, benchmarks and the fuzz
//! target, which then change the fields they care about — and read by every
//! part of the hub from the shared state.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::Error;
use crate::identity::{self, IdentityPolicy};
use crate::ownership::ShardSource;
use crate::tls::TlsConfig;

/// How to run the hub.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC listen address (port 0: any free port).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (port 0: any free port).
    pub http_addr: SocketAddr,
    /// How long a dropped account is kept (Disconnected) for its agent to come
    /// back before it, its cache and its binding are removed.
    pub grace_period: Duration,
    /// SQLite file for bindings; in memory when `None`.
    pub store: Option<PathBuf>,
    /// TLS for gRPC; plain HTTP/2 (h2c) when `None`.
    pub tls: Option<TlsConfig>,
    /// This instance's id, sent in Welcome; a random one by default.
    pub hub_id: String,
    /// Heartbeat interval announced to agents; a session silent for three
    /// intervals is ended. At least [`MIN_HEARTBEAT_INTERVAL`].
    pub heartbeat_interval: Duration,
    /// Largest frame accepted from an agent, in bytes.
    pub max_message_bytes: u32,
    /// Flow-control window per account, in bytes of EventBatch frames.
    pub initial_window_bytes: u64,
    /// Operation timeout when a request sets none.
    pub default_operation_timeout: Duration,
    /// How long a new stream may take to send Hello.
    pub hello_timeout: Duration,
    /// How often TLS files and the API token file are checked for changes.
    pub reload_interval: Duration,
    /// Peers (load balancers) whose forwarded client certificate header is
    /// believed. When non-empty, every session needs an identity.
    pub trusted_proxies: Vec<IpNet>,
    /// The header trusted proxies forward the client certificate in (nginx
    /// `$ssl_client_escaped_cert`: URL-encoded PEM).
    pub client_cert_header: String,
    /// Where account ownership is learned from; `None`: no ownership check
    /// (any shard may register any account).
    pub authorize: Option<ShardSource>,
    /// Sessions older than this (±10% jitter) are drained (Drain REBALANCE)
    /// so agents spread over hub replicas; `None`: never.
    pub max_connection_age: Option<Duration>,
    /// After the Drain, how long the agent has to close the stream before the
    /// hub ends it.
    pub max_connection_age_grace: Duration,
    /// When set, every `/v1/...` HTTP request needs `Authorization: Bearer
    /// <token>` with the token in this file (re-read when it changes).
    pub api_token_file: Option<PathBuf>,
    /// The Kubernetes API of every account (`/accounts/<account>/...`), on its
    /// own listener; off when `None`.
    pub kube_api: Option<crate::kubeapi::KubeApiConfig>,
}

/// The shortest heartbeat interval the hub runs with: a shorter (or zero)
/// setting would flood agents, so it is raised to this.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

impl Config {
    /// Defaults on the given addresses: 600 s grace period, in-memory store,
    /// no TLS, no ownership check, no API token.
    pub fn new(grpc_addr: SocketAddr, http_addr: SocketAddr) -> Config {
        Config {
            grpc_addr,
            http_addr,
            grace_period: Duration::from_secs(600),
            store: None,
            tls: None,
            hub_id: format!("hub-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            heartbeat_interval: Duration::from_secs(15),
            max_message_bytes: 16 * 1024 * 1024,
            initial_window_bytes: 32 * 1024 * 1024,
            default_operation_timeout: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(30),
            reload_interval: Duration::from_secs(5),
            trusted_proxies: Vec::new(),
            client_cert_header: identity::DEFAULT_CLIENT_CERT_HEADER.into(),
            authorize: None,
            max_connection_age: None,
            max_connection_age_grace: Duration::from_secs(30),
            api_token_file: None,
            kube_api: None,
        }
    }

    /// The defaults on 127.0.0.1 with OS-chosen ports: the starting point of
    /// tests and dev runs, which change only the fields they are about.
    pub fn local() -> Config {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Config::new(any, any)
    }

    /// The settings as the hub runs them: the heartbeat interval raised to
    /// [`MIN_HEARTBEAT_INTERVAL`], and how sessions are authenticated; an
    /// error when the client certificate header is not a valid header name.
    pub fn checked(mut self) -> Result<(Config, IdentityPolicy), Error> {
        self.heartbeat_interval = self.heartbeat_interval.max(MIN_HEARTBEAT_INTERVAL);
        let header = self.client_cert_header.to_ascii_lowercase();
        identity::check_header_name(&header).map_err(|message| Error::Setting {
            setting: "--client-cert-header",
            message,
        })?;
        let policy = IdentityPolicy {
            trusted_proxies: self.trusted_proxies.clone(),
            client_cert_header: header,
            mtls: self.tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some()),
        };
        Ok((self, policy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_raises_a_too_short_heartbeat_and_derives_the_identity_policy() {
        let mut config = Config::local();
        config.heartbeat_interval = Duration::ZERO;
        config.client_cert_header = "X-SSL-Client-Cert".into();
        config.trusted_proxies = vec!["10.0.0.0/8".parse().expect("a CIDR")];
        let (config, policy) = config.checked().expect("valid settings");
        assert_eq!(config.heartbeat_interval, MIN_HEARTBEAT_INTERVAL);
        assert_eq!(policy.client_cert_header, "x-ssl-client-cert");
        assert_eq!(policy.trusted_proxies, config.trusted_proxies);
        assert!(!policy.mtls);
    }

    #[test]
    fn checked_refuses_a_header_name_that_is_not_one() {
        let mut config = Config::local();
        config.client_cert_header = "x client cert".into();
        let err = config.checked().expect_err("not a header name");
        assert!(
            err.to_string().contains("--client-cert-header"),
            "the error names the setting: {err}"
        );
    }
}
