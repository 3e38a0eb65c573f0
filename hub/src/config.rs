//! The hub's settings: one type, built once — from the command-line flags by
//! the binary, or from [`Config::local`] by tests, benchmarks and the fuzz
//! target, which then change the fields they care about — and read by every
//! part of the hub from the shared state.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::Error;
use crate::core::ownership::ShardSource;
use crate::net::identity;
use crate::net::tls::TlsConfig;
pub use crate::store::StoreLocation;

/// A PEM CA bundle, and the file it came from (then re-read when it
/// changes).
#[derive(Debug, Clone)]
pub struct CaBundle {
    /// The PEM certificates.
    pub pem: Vec<u8>,
    /// The file to follow; `None` for a bundle given as bytes.
    pub file: Option<PathBuf>,
}

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
    /// Where bindings (and, shared between replicas, the registry, resume
    /// points and operations in flight) are kept.
    pub store: StoreLocation,
    /// A file holding the password of a PostgreSQL store (`--store-password-file`),
    /// when the URL holds none; read at start.
    pub store_password_file: Option<PathBuf>,
    /// The host or address other replicas reach this one's HTTP API at, for
    /// forwarding (with a shared store); the HTTP listener's address when
    /// `None` and it is a specific one.
    pub advertise_address: Option<String>,
    /// How often a replica sharing a store records that it is alive.
    pub replica_heartbeat: Duration,
    /// A replica sharing a store and silent for longer is dead: its
    /// accounts are Disconnected, and its operations in flight go to the
    /// accounts' next holders.
    pub replica_timeout: Duration,
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
    /// believed. When non-empty, every session needs an identity, and
    /// [`Config::forwarded_client_ca`] (or the TLS client CA) is required.
    pub trusted_proxies: Vec<IpNet>,
    /// The agents' CA: a forwarded client certificate is believed only when
    /// it chains to it and is valid now. `None`: the TLS client CA, when
    /// there is one.
    pub forwarded_client_ca: Option<CaBundle>,
    /// A file holding a secret the trusted proxies send in
    /// [`identity::PROXY_SECRET_HEADER`]: with it, an address alone does not
    /// make a peer a trusted proxy.
    pub proxy_secret_file: Option<PathBuf>,
    /// The header trusted proxies forward the client certificate in (nginx
    /// `$ssl_client_escaped_cert`: URL-encoded PEM).
    pub client_cert_header: String,
    /// Where account ownership is learned from; `None`: first claim (a name
    /// belongs to the shard that registered it first, until it is removed).
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
    /// The most accounts one session may hold; registrations past it are
    /// refused (INVALID, saying so), the ones before it stand.
    pub max_accounts_per_session: usize,
    /// The most accounts one Register frame may carry; the rest of the frame
    /// is refused (INVALID, saying so).
    pub max_accounts_per_frame: usize,
    /// Limits of the HTTP API's connections.
    pub http_limits: HttpLimits,
    /// Keep Clouddriver's account definitions in step with the accounts served
    /// (`--clouddriver-url`); off when `None`. Needs the Kubernetes API ([`Config::kube_api`]).
    pub clouddriver: Option<crate::spinnaker::ClouddriverConfig>,
    /// Where `/healthz` and `/readyz` are served too, with connections of their own,
    /// so that callers filling the HTTP API's connections do not make the probes fail.
    pub probe_addr: Option<SocketAddr>,
}

/// How the HTTP API keeps slow or idle clients from holding its connections
/// (and the hub's file descriptors) for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long a client may take to send a request's headers, from the
    /// connection's start or the end of the previous response; the
    /// connection is closed after it (this is also the idle timeout of a
    /// kept-alive connection).
    pub header_timeout: Duration,
    /// Open connections at most; more wait in the listen backlog until one
    /// closes.
    pub max_connections: usize,
    /// Open connections at most from one client address; more are closed at once,
    /// so one address cannot take every connection.
    pub max_connections_per_address: usize,
}

impl Default for HttpLimits {
    /// 30 s for headers, 1024 connections, 256 from one address.
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_connections_per_address: 256,
        }
    }
}

/// The shortest heartbeat interval the hub runs with: a shorter (or zero)
/// setting would flood agents, so it is raised to this.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

impl Config {
    /// Defaults on the given addresses: 600 s grace period, in-memory store
    /// (replicas of a shared store heartbeat every 2 s, dead after 10 s),
    /// no TLS, no ownership check, no API token.
    pub fn new(grpc_addr: SocketAddr, http_addr: SocketAddr) -> Config {
        Config {
            grpc_addr,
            http_addr,
            grace_period: Duration::from_secs(600),
            store: StoreLocation::Memory,
            store_password_file: None,
            advertise_address: None,
            replica_heartbeat: Duration::from_secs(2),
            replica_timeout: Duration::from_secs(10),
            tls: None,
            hub_id: format!("hub-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            heartbeat_interval: Duration::from_secs(15),
            max_message_bytes: 16 * 1024 * 1024,
            initial_window_bytes: 32 * 1024 * 1024,
            default_operation_timeout: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(30),
            reload_interval: Duration::from_secs(5),
            trusted_proxies: Vec::new(),
            forwarded_client_ca: None,
            proxy_secret_file: None,
            client_cert_header: identity::DEFAULT_CLIENT_CERT_HEADER.into(),
            authorize: None,
            max_connection_age: None,
            max_connection_age_grace: Duration::from_secs(30),
            api_token_file: None,
            kube_api: None,
            max_accounts_per_session: 10_000,
            max_accounts_per_frame: 1_000,
            http_limits: HttpLimits::default(),
            clouddriver: None,
            probe_addr: None,
        }
    }

    /// The defaults on 127.0.0.1 with OS-chosen ports: the starting point of
    /// tests and dev runs, which change only the fields they are about.
    pub fn local() -> Config {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Config::new(any, any)
    }

    /// These settings with hub id `id`, when given (the random one stays
    /// otherwise).
    pub fn with_hub_id(mut self, id: Option<String>) -> Config {
        if let Some(id) = id.filter(|id| !id.trim().is_empty()) {
            self.hub_id = id;
        }
        self
    }

    /// The base URL other replicas forward this replica's API requests to:
    /// `http://<advertised address>:<port>`; `None` when the listener's
    /// address is unspecified (0.0.0.0) and nothing is advertised.
    pub fn advertised_api(&self, bound: SocketAddr) -> Option<String> {
        self.advertised("http", bound)
    }

    /// `<scheme>://<advertised address>:<port>` of a listener bound at
    /// `bound`, as other replicas reach it; `None` as for [`Config::advertised_api`].
    pub fn advertised(&self, scheme: &str, bound: SocketAddr) -> Option<String> {
        let host = match &self.advertise_address {
            Some(host) => host.clone(),
            None if bound.ip().is_unspecified() => return None,
            None => bound.ip().to_string(),
        };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        Some(format!("{scheme}://{host}:{}", bound.port()))
    }

    /// The settings as the hub runs them: the heartbeat interval raised to
    /// [`MIN_HEARTBEAT_INTERVAL`], the client certificate header in lower
    /// case, the forwarded certificates' CA defaulted to the TLS client CA;
    /// an error for a setting that cannot work (a header name that is not
    /// one, a trusted proxy CIDR with host bits set, trusted proxies without
    /// a CA to check what they forward, a zero limit, a hub id that cannot
    /// name a replica, replicas that would count each other dead between
    /// heartbeats).
    pub fn checked(mut self) -> Result<Config, Error> {
        self.heartbeat_interval = self.heartbeat_interval.max(MIN_HEARTBEAT_INTERVAL);
        let header = self.client_cert_header.to_ascii_lowercase();
        identity::check_header_name(&header).map_err(|message| Error::Setting {
            setting: "--client-cert-header",
            message,
        })?;
        self.client_cert_header = header;
        if let Some(net) = self.trusted_proxies.iter().find(|n| n.trunc() != **n) {
            return Err(Error::Setting {
                setting: "--trusted-proxy",
                message: identity::parse_cidr(&net.to_string())
                    .err()
                    .unwrap_or_else(|| format!("{net} has host bits set")),
            });
        }
        if self.forwarded_client_ca.is_none()
            && let Some(tls) = &self.tls
            && let Some(pem) = &tls.client_ca_pem
        {
            self.forwarded_client_ca = Some(CaBundle {
                pem: pem.clone(),
                file: tls.files.as_ref().and_then(|f| f.client_ca.clone()),
            });
        }
        if !self.trusted_proxies.is_empty() && self.forwarded_client_ca.is_none() {
            return Err(Error::Setting {
                setting: "--trusted-proxy",
                message: "needs --client-ca (the agents' CA): a forwarded client certificate is believed only when it chains to it".into(),
            });
        }
        if self.proxy_secret_file.is_some() && self.trusted_proxies.is_empty() {
            return Err(Error::Setting {
                setting: "--proxy-secret-file",
                message: "is the secret of trusted proxies; give --trusted-proxy too".into(),
            });
        }
        for (setting, value) in [
            ("--max-accounts-per-session", self.max_accounts_per_session),
            ("--max-accounts-per-frame", self.max_accounts_per_frame),
            ("--http-max-connections", self.http_limits.max_connections),
        ] {
            if value == 0 {
                return Err(Error::Setting {
                    setting,
                    message: "must be at least 1".into(),
                });
            }
        }
        let id_ok = !self.hub_id.is_empty()
            && self.hub_id.len() <= 253
            && self
                .hub_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !id_ok {
            return Err(Error::Setting {
                setting: "--hub-id",
                message: format!(
                    "{:?}: use 1 to 253 ASCII letters, digits and -_. (it names this replica in headers and the shared store)",
                    self.hub_id
                ),
            });
        }
        if self.store.is_shared() && self.replica_timeout <= self.replica_heartbeat {
            return Err(Error::Setting {
                setting: "--replica-timeout",
                message: format!(
                    "{:?} must be longer than the heartbeat interval {:?} (three intervals or more), or live replicas count as dead",
                    self.replica_timeout, self.replica_heartbeat
                ),
            });
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_raises_a_too_short_heartbeat_and_lowers_the_header() {
        let mut config = Config::local();
        config.heartbeat_interval = Duration::ZERO;
        config.client_cert_header = "X-SSL-Client-Cert".into();
        let config = config.checked().expect("valid settings");
        assert_eq!(config.heartbeat_interval, MIN_HEARTBEAT_INTERVAL);
        assert_eq!(config.client_cert_header, "x-ssl-client-cert");
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

    #[test]
    fn trusted_proxies_need_a_ca_and_a_clean_network() {
        let mut config = Config::local();
        config.trusted_proxies = vec!["10.0.0.0/8".parse().expect("a CIDR")];
        let err = config.clone().checked().expect_err("no CA");
        assert!(err.to_string().contains("--client-ca"), "{err}");
        config.forwarded_client_ca = Some(CaBundle {
            pem: b"a bundle".to_vec(),
            file: None,
        });
        assert!(config.clone().checked().is_ok());
        config.trusted_proxies = vec!["10.0.0.5/8".parse().expect("a CIDR")];
        let err = config.clone().checked().expect_err("host bits");
        assert!(err.to_string().contains("host bits"), "{err}");
        let mut alone = Config::local();
        alone.proxy_secret_file = Some("/run/secret".into());
        assert!(alone.checked().is_err(), "a proxy secret without proxies");
        let mut zero = Config::local();
        zero.max_accounts_per_frame = 0;
        assert!(zero.checked().is_err());
    }
}
