//! Command-line flags of the hub.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use scale_agent_hub::config::{CaBundle, HttpLimits, StoreLocation};
use scale_agent_hub::core::memory::Bounds;
use scale_agent_hub::kubeapi::{KubeApiConfig, TokenSource};
use scale_agent_hub::spinnaker::ClouddriverConfig;
use scale_agent_hub::spinnaker::secret::SecretTarget;
use scale_agent_hub::{Config, Error, ShardSource, TlsConfig};
pub use scale_agent_runtime::LogFormat;
use scale_agent_runtime::parse_duration;

/// The Clouddriver side of scale-agent: accepts agent streams over gRPC, keeps
/// the account registry and the cache of every streamed object, serves them
/// over HTTP (JSON), and routes deploy operations to the agent replica that
/// holds the account.
///
/// Serve with mTLS (--tls-cert, --tls-key, --client-ca) in production, or
/// behind a load balancer that verifies client certificates and forwards them
/// (--trusted-proxy); plain HTTP/2 needs an explicit --insecure.
///
/// Agents are identified by the URI SAN of their client certificate,
/// spiffe://scaleagent.dev/ns/<namespace>/shard/<name>; a Hello naming another
/// shard is refused. With --authorize-shards an account is accepted only from
/// the shard whose AgentShard lists it.
#[derive(Debug, Parser)]
#[command(name = "scale-agent-hub", version, about, long_about)]
// Plaintext must be asked for: one of --tls-cert and --insecure is required.
#[command(group(ArgGroup::new("transport").required(true).args(["tls_cert", "insecure"])))]
#[command(group(ArgGroup::new("clouddriver_target").args(["clouddriver_url", "clouddriver_secret"])))]
pub struct Args {
    /// Address of the gRPC server agents connect to (AgentHub.Connect).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9090")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP server: the JSON API (accounts, objects,
    /// operations), /metrics and /healthz.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Also serve /healthz and /readyz (only) on this address, with
    /// connections of their own: point the kubelet's probes there, so that
    /// callers filling the HTTP API's connections do not fail them. Off when
    /// unset.
    #[arg(long, value_name = "ADDR")]
    pub probe_addr: Option<SocketAddr>,

    /// How long the accounts of a dropped stream are kept (shown as
    /// Disconnected) waiting for their agent to come back, before they and
    /// their cache are removed. A number with a unit: ms, s, m, h (e.g. 600s,
    /// 10m, 1h30m).
    #[arg(long, value_name = "DURATION", default_value = "600s", value_parser = parse_duration)]
    pub grace_period: Duration,

    /// Where the hub keeps its state. A file path: a SQLite database holding
    /// the account bindings (name to cluster id and shard), so they survive a
    /// restart, for one hub. A
    /// `postgres://user@host:port/database?sslrootcert=/path/ca.crt` URL: a
    /// PostgreSQL database several hub replicas share behind one load
    /// balancer (bindings, which replica holds which account, resume points,
    /// operations in flight); each replica forwards requests about accounts
    /// another holds to it. The hub creates and migrates its tables itself.
    /// Without it bindings live in memory only.
    #[arg(long, value_name = "PATH|URL", value_parser = parse_store)]
    pub store: Option<StoreLocation>,

    /// With a postgres:// --store: a file holding the database password (e.g. a
    /// mounted Secret), read at start, so that it is on no command line. A
    /// password in the URL still wins, with a warning; without either, the
    /// environment's PGPASSWORD. TLS is set in the URL as libpq reads it:
    /// sslmode=verify-full (the default: the server's certificate chained to
    /// sslrootcert=<CA file>, or the system's CAs, and naming the host) or
    /// sslmode=disable (plain TCP, warned about).
    #[arg(long, value_name = "PATH")]
    pub store_password_file: Option<PathBuf>,

    /// This replica's id: sent to agents in Welcome and, with a shared store,
    /// the name other replicas know it by (in Kubernetes, the pod name).
    /// Random when unset.
    #[arg(long, value_name = "ID", env = "SCALE_AGENT_HUB_ID")]
    pub hub_id: Option<String>,

    /// With a shared store: the host or address other replicas reach this
    /// one's HTTP API at (in Kubernetes, the pod IP from the downward API).
    /// Defaults to the --http-addr address when that is a specific one.
    #[arg(long, value_name = "HOST")]
    pub advertise_address: Option<String>,

    /// With a shared store: how often this replica records that it is alive.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub replica_heartbeat: Duration,

    /// With a shared store: a replica silent for longer is dead; its
    /// accounts are Disconnected (their grace period counted from its last
    /// heartbeat) and its operations in flight go to the accounts' next
    /// holders.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub replica_timeout: Duration,

    /// PEM certificate chain the gRPC server presents. Reloaded when the file
    /// changes (see --reload-interval): new connections use the new one, open
    /// streams keep going.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (reloaded with it).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM bundle of the CAs that sign agent client certificates. With TLS,
    /// agents without a certificate from one of them are refused at the TLS
    /// handshake (mTLS), and the certificate's URI SAN names the agent's
    /// shard. Certificates forwarded by a --trusted-proxy must chain to it
    /// too (required with --trusted-proxy, also with --insecure). Reloaded
    /// when it changes.
    #[arg(long, value_name = "PATH")]
    pub client_ca: Option<PathBuf>,

    /// Serve gRPC without TLS (plain HTTP/2, h2c), e.g. behind a load
    /// balancer that terminates TLS (then use --trusted-proxy), or in
    /// development. Without --trusted-proxy agents are not authenticated and
    /// the shard named in Hello is believed; a warning is logged at startup.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub insecure: bool,

    /// A load balancer (CIDR or address; repeatable) whose forwarded client
    /// certificate is believed: when the TCP peer is in one of these, the
    /// agent's identity is read from --client-cert-header, provided the
    /// certificate chains to --client-ca (required) and is valid now. From
    /// any other peer that header is ignored (with a warning). When set,
    /// every session needs an identity (forwarded, or its own TLS client
    /// certificate, which always wins over a header). A CIDR with host bits
    /// set (10.0.0.5/8) is refused; 0.0.0.0/0 is warned about.
    #[arg(long = "trusted-proxy", value_name = "CIDR", value_parser = parse_cidr)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// File holding a secret shared with the trusted proxies: a forwarded
    /// certificate is then believed only when the request also carries it in
    /// header x-scale-agent-proxy-secret (nginx: `grpc_set_header
    /// x-scale-agent-proxy-secret <secret>;`), so that a process that can
    /// connect from a trusted address is not trusted for that alone.
    /// Re-read when it changes. Without it a warning is logged.
    #[arg(long, value_name = "PATH", requires = "trusted_proxies")]
    pub proxy_secret_file: Option<PathBuf>,

    /// The header a trusted proxy forwards the verified client certificate
    /// in, as URL-encoded PEM (nginx: `grpc_set_header x-client-cert
    /// $ssl_client_escaped_cert;`). Plain PEM is accepted too.
    #[arg(long, value_name = "NAME", default_value = "x-client-cert", value_parser = parse_header_name)]
    pub client_cert_header: String,

    /// Enforce account ownership: watch the AgentShards of this namespace
    /// (repeatable; `*` for all namespaces) through the in-cluster config or
    /// KUBECONFIG, and accept an account only from the shard that lists it
    /// (and is not in Conflict for it); others get NOT_OWNER naming the owner.
    /// Without it a name belongs to the first shard that registers it, and is
    /// refused to every other shard until it is removed (a warning is logged).
    #[arg(long = "authorize-shards", value_name = "NAMESPACE")]
    pub authorize_shards: Vec<String>,

    /// End each agent session after this age, ±10% jitter (Drain REBALANCE,
    /// then the stream ends), so that agents spread over hub replicas after a
    /// scale-out. The agent reconnects at once; its accounts stay. Off when
    /// unset. A duration, e.g. 30m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_connection_age: Option<Duration>,

    /// How long an aged-out session may stay open after its Drain before the
    /// hub ends the stream.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub max_connection_age_grace: Duration,

    /// File holding the bearer token of the HTTP API: every /v1/... request
    /// then needs `Authorization: Bearer <token>` (401 otherwise). One token
    /// for every account, or `<token> <accounts>` lines as in
    /// --kube-api-tokens-file (403 for another account). /healthz and /metrics
    /// stay open. Re-read when it changes. Without it the API is
    /// open (a warning is logged).
    #[arg(long, value_name = "PATH")]
    pub api_token_file: Option<PathBuf>,

    /// Serve the Kubernetes API of every account on this address, at
    /// /accounts/<account>/ (point a kubeconfig's server there; `scale-agent-hub
    /// kubeconfig` writes one). TLS with --tls-cert when the hub has one. Needs
    /// --kube-api-tokens-file. Off when unset.
    #[arg(long, value_name = "ADDR", requires = "kube_api_tokens_file")]
    pub kube_api_addr: Option<SocketAddr>,

    /// The bearer tokens of the Kubernetes API: one per line, then the accounts
    /// it may use (`*`, or names separated by commas). Tokens have at least 16
    /// characters. Re-read when the file changes.
    #[arg(long, value_name = "PATH", requires = "kube_api_addr")]
    pub kube_api_tokens_file: Option<PathBuf>,

    /// PEM certificate chain the Kubernetes API is served with, when not the
    /// hub's own --tls-cert (e.g. a certificate from a public CA, while agents
    /// use a private one). Reloaded when it changes.
    #[arg(long, value_name = "PATH", requires_all = ["kube_api_addr", "kube_api_tls_key"])]
    pub kube_api_tls_cert: Option<PathBuf>,

    /// PEM private key of --kube-api-tls-cert.
    #[arg(long, value_name = "PATH", requires = "kube_api_tls_cert")]
    pub kube_api_tls_key: Option<PathBuf>,

    /// With a shared store (several replicas): the PEM bundle the replicas'
    /// Kubernetes API certificates chain to. Each replica's certificate is its
    /// identity: it names the replica (URI SAN spiffe://scaleagent.dev/hub/<--hub-id>;
    /// the hub does not start otherwise) and allows client use. A request for an
    /// account another replica holds is forwarded to it over TLS, its certificate
    /// checked against this bundle, the host it advertises (--advertise-address)
    /// and the replica the store names as the holder, this replica presenting its
    /// own; a request marked forwarded is served only to the replica it names.
    /// Without it such requests get 503.
    #[arg(long, value_name = "PATH", requires = "kube_api_addr")]
    pub kube_api_replica_ca: Option<PathBuf>,

    /// Serve each account also at a host name under this domain: account `prod` at
    /// https://prod.<DOMAIN>/, its API at the root, chosen by the Host header or the
    /// TLS server name (SNI), for clients that drop a server URL's path. Only accounts
    /// whose names are DNS labels have one; the certificate needs `*.<DOMAIN>`.
    #[arg(long, value_name = "DOMAIN", requires = "kube_api_addr")]
    pub kube_api_host_suffix: Option<String>,

    /// Pass Impersonate-* headers on to the clusters. They act there with the
    /// agent's rights to impersonate, so by default they are refused (403).
    #[arg(long, requires = "kube_api_addr")]
    pub kube_api_allow_impersonation: bool,

    /// While an account's agent is away (within the grace period), answer reads the
    /// cache can answer with 503 like every other request, instead of from the
    /// account's last known state with a Warning.
    #[arg(long, requires = "kube_api_addr")]
    pub kube_api_no_stale_reads: bool,

    /// How long a Kubernetes API request waits for the cluster's answer to begin
    /// when it names no timeout of its own; past it the client gets 504.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub kube_api_request_timeout: Duration,

    /// Keep Clouddriver's kubernetes account definitions (its account storage API,
    /// `account.storage.enabled`) in step with the accounts this hub serves: created
    /// when an account streams, updated when its shard changes it, deleted after its
    /// grace period when no shard streams it. Needs --kube-api-addr and
    /// --clouddriver-kube-api-server. See docs/clouddriver.md.
    #[arg(long, value_name = "URL", requires_all = ["kube_api_addr", "clouddriver_kube_api_server"])]
    pub clouddriver_url: Option<String>,

    /// For a Clouddriver without the account storage API: keep the Secret
    /// NAMESPACE/NAME (in Clouddriver's namespace) holding each account's kubeconfig and
    /// a clouddriver-local.yml listing them, updated as the shards change. Instead of
    /// --clouddriver-url. Needs --kube-api-addr and --clouddriver-kube-api-server. See
    /// docs/clouddriver.md.
    #[arg(long, value_name = "NAMESPACE/NAME", requires_all = ["kube_api_addr", "clouddriver_kube_api_server"])]
    pub clouddriver_secret: Option<String>,

    /// Where Clouddriver's pod mounts the Secret of --clouddriver-secret: the
    /// kubeconfigFile of each account in its clouddriver-local.yml.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/opt/spinnaker/config/scale-agent"
    )]
    pub clouddriver_secret_mount_path: String,

    /// The user named to Clouddriver in X-SPINNAKER-USER (with Fiat on, an account
    /// manager).
    #[arg(long, value_name = "NAME", default_value = "scale-agent-hub")]
    pub clouddriver_user: String,

    /// PEM CA bundle that signs Clouddriver's certificate (https:// URLs); the
    /// system's roots when unset.
    #[arg(long, value_name = "PATH", requires = "clouddriver_url")]
    pub clouddriver_ca_file: Option<PathBuf>,

    /// This hub's Kubernetes API as Clouddriver reaches it, e.g.
    /// https://scale-agent-hub.spinnaker:8443: the server of the kubeconfigs pushed.
    #[arg(long, value_name = "URL", requires = "clouddriver_target")]
    pub clouddriver_kube_api_server: Option<String>,

    /// PEM CA bundle of the hub's Kubernetes API, written into the kubeconfigs pushed
    /// (when Clouddriver does not trust its certificate already).
    #[arg(long, value_name = "PATH", requires = "clouddriver_target")]
    pub clouddriver_kube_api_ca_file: Option<PathBuf>,

    /// File holding the key (at least 32 bytes) the per-account tokens of the
    /// kubeconfigs pushed are minted with; every replica needs the same file. Unset:
    /// a random key per start (one hub only: its tokens die with it).
    #[arg(long, value_name = "PATH", requires = "clouddriver_target")]
    pub clouddriver_token_key_file: Option<PathBuf>,

    /// How often the per-account tokens turn; a token is accepted for one to two
    /// periods, and the next one is pushed when the period turns.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub clouddriver_token_rotation: Duration,

    /// How often Clouddriver's definitions are compared with the accounts served.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub clouddriver_sync_interval: Duration,

    /// An exec, attach or port-forward connection with no byte either way for this
    /// long is closed (the kubelet's default streaming idle timeout).
    #[arg(long, value_name = "DURATION", default_value = "4h", value_parser = parse_duration)]
    pub kube_api_stream_idle_timeout: Duration,

    /// An exec, attach or port-forward connection is closed this long after it
    /// began, however busy.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub kube_api_stream_max_duration: Duration,

    /// The most accounts one agent session may hold; registrations past it
    /// are refused (INVALID, with the limit in the message).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_accounts_per_session: usize,

    /// The most accounts one Register frame may carry; the rest of the frame
    /// is refused (INVALID, with the limit in the message). Agents register
    /// one account per frame.
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pub max_accounts_per_frame: usize,

    /// How long an HTTP client may take to send a request's headers (from
    /// connecting, or from the end of its previous response): slower or idle
    /// connections are closed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// The most open HTTP connections; more wait in the listen backlog until
    /// one closes, so the API can never use up the hub's file descriptors.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub http_max_connections: usize,

    /// The most open HTTP connections from one client address; more are closed
    /// at once, so one address cannot take every connection.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub http_max_connections_per_address: usize,

    /// The most open Kubernetes API connections; more are closed at once.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub kube_api_max_connections: usize,

    /// The most open Kubernetes API connections from one client address; more are
    /// closed at once.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub kube_api_max_connections_per_address: usize,

    /// How long a Kubernetes API connection may stay open with no request in flight
    /// (HTTP/2 included) before it is closed; 0s: never.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub kube_api_idle_timeout: Duration,

    /// How old a Kubernetes API connection may grow before it is asked to close
    /// (HTTP/2 GOAWAY; requests in flight get 60 s more to finish); 0s: never.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub kube_api_max_connection_age: Duration,

    /// The most watches one token holds from the cache at once; more get 429.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub kube_api_max_watches_per_token: usize,

    /// The most MiB the hub holds for one token's Kubernetes API requests (bodies on
    /// their way to an agent, list answers not yet sent); more get 429.
    #[arg(long, value_name = "MIB", default_value_t = 128)]
    pub kube_api_max_held_mib_per_token: usize,

    /// The most MiB the hub holds for every token's Kubernetes API requests
    /// together; more get 429.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    pub kube_api_max_held_mib: usize,

    /// How often the TLS files and the API token file are checked for
    /// changes.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub reload_interval: Duration,

    /// Log line format: human-readable text, or one JSON object per line for
    /// log collectors.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

fn parse_store(text: &str) -> Result<StoreLocation, String> {
    if text.trim().is_empty() {
        return Err("empty: give a SQLite file path or a postgres:// URL".into());
    }
    Ok(StoreLocation::parse(text))
}

fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    scale_agent_hub::net::identity::parse_cidr(text)
}

fn parse_header_name(text: &str) -> Result<String, String> {
    scale_agent_hub::net::identity::check_header_name(text).map(|()| text.to_owned())
}

impl Args {
    /// The hub's settings these flags ask for; the TLS files are read here,
    /// so a missing or unreadable one stops the hub before it listens.
    pub fn into_config(self) -> Result<Config, Error> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                Some(TlsConfig::from_files(cert, key, self.client_ca.as_deref())?)
            }
            _ => None,
        };
        if tls.is_none() && self.client_ca.is_some() && self.trusted_proxies.is_empty() {
            return Err(Error::Setting {
                setting: "--client-ca",
                message: "without TLS it only checks certificates forwarded by a --trusted-proxy; give --trusted-proxy, or serve TLS with --tls-cert and --tls-key".into(),
            });
        }
        let forwarded_client_ca = match &self.client_ca {
            Some(path) if !self.trusted_proxies.is_empty() => Some(CaBundle {
                pem: std::fs::read(path).map_err(|source| Error::TlsFile {
                    what: "client CA bundle",
                    path: path.clone(),
                    source,
                })?,
                file: Some(path.clone()),
            }),
            _ => None,
        };
        let authorize = (!self.authorize_shards.is_empty()).then(|| ShardSource::Watch {
            // `*` anywhere means every namespace.
            namespaces: if self.authorize_shards.iter().any(|n| n == "*") {
                Vec::new()
            } else {
                self.authorize_shards
            },
            client: None,
        });
        let kube_api_tls = match (&self.kube_api_tls_cert, &self.kube_api_tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig::from_files(cert, key, None)?),
            _ => None,
        };
        let host_suffix = self
            .kube_api_host_suffix
            .as_deref()
            .map(scale_agent_hub::kubeapi::host::check_suffix)
            .transpose()
            .map_err(|message| Error::Setting {
                setting: "--kube-api-host-suffix",
                message,
            })?;
        let kube_api = match (self.kube_api_addr, self.kube_api_tokens_file) {
            (Some(addr), Some(tokens)) => Some(KubeApiConfig {
                allow_impersonation: self.kube_api_allow_impersonation,
                stale_reads: !self.kube_api_no_stale_reads,
                request_timeout: self.kube_api_request_timeout,
                max_connections: self.kube_api_max_connections,
                max_connections_per_address: self.kube_api_max_connections_per_address,
                idle_timeout: self.kube_api_idle_timeout,
                max_connection_age: self.kube_api_max_connection_age,
                max_watches_per_token: self.kube_api_max_watches_per_token,
                held: Bounds {
                    per_token: self.kube_api_max_held_mib_per_token.saturating_mul(1 << 20),
                    total: self.kube_api_max_held_mib.saturating_mul(1 << 20),
                },

                stream_idle_timeout: self.kube_api_stream_idle_timeout,
                stream_max_duration: self.kube_api_stream_max_duration,
                tls: kube_api_tls,
                replica_ca: self.kube_api_replica_ca,
                host_suffix,
                ..KubeApiConfig::new(addr, TokenSource::File(tokens))
            }),
            _ => None,
        };
        let read = |setting: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| Error::Setting {
                setting,
                message: format!("{}: {e}", path.display()),
            })
        };
        let secret = self
            .clouddriver_secret
            .as_deref()
            .map(|spec| {
                SecretTarget::parse(spec, &self.clouddriver_secret_mount_path).map_err(|message| {
                    Error::Setting {
                        setting: "--clouddriver-secret",
                        message,
                    }
                })
            })
            .transpose()?;
        let clouddriver = match (
            self.clouddriver_url,
            secret,
            self.clouddriver_kube_api_server,
        ) {
            (None, None, _) | (_, _, None) => None,
            (url, secret, Some(server)) => Some(ClouddriverConfig {
                url,
                secret,
                user: self.clouddriver_user,
                ca_pem: self
                    .clouddriver_ca_file
                    .as_ref()
                    .map(|p| read("--clouddriver-ca-file", p))
                    .transpose()?,
                kube_api_server: server,
                kube_api_ca_pem: self
                    .clouddriver_kube_api_ca_file
                    .as_ref()
                    .map(|p| read("--clouddriver-kube-api-ca-file", p))
                    .transpose()?,
                interval: self.clouddriver_sync_interval,
                token_key: self
                    .clouddriver_token_key_file
                    .as_ref()
                    .map(|p| read("--clouddriver-token-key-file", p))
                    .transpose()?,
                token_rotation: self.clouddriver_token_rotation,
            }),
        };
        Ok(Config {
            clouddriver,
            grace_period: self.grace_period,
            store: self.store.unwrap_or_default(),
            store_password_file: self.store_password_file,
            advertise_address: self.advertise_address,
            replica_heartbeat: self.replica_heartbeat,
            replica_timeout: self.replica_timeout,
            tls,
            trusted_proxies: self.trusted_proxies,
            forwarded_client_ca,
            proxy_secret_file: self.proxy_secret_file,
            client_cert_header: self.client_cert_header,
            authorize,
            max_connection_age: self.max_connection_age,
            max_connection_age_grace: self.max_connection_age_grace,
            api_token_file: self.api_token_file,
            reload_interval: self.reload_interval,
            kube_api,
            max_accounts_per_session: self.max_accounts_per_session,
            max_accounts_per_frame: self.max_accounts_per_frame,
            http_limits: HttpLimits {
                header_timeout: self.http_header_timeout,
                max_connections: self.http_max_connections,
                max_connections_per_address: self.http_max_connections_per_address,
            },
            probe_addr: self.probe_addr,
            ..Config::new(self.grpc_addr, self.http_addr)
        }
        .with_hub_id(self.hub_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    scale_agent_runtime::flags_are_consistent!(Args);

    #[test]
    fn defaults() {
        let args = Args::try_parse_from(["scale-agent-hub", "--insecure"]).expect("parses");
        assert_eq!(args.grace_period, Duration::from_secs(600));
        assert_eq!(args.grpc_addr, "0.0.0.0:9090".parse().expect("valid"));
        assert_eq!(args.http_addr, "0.0.0.0:8080".parse().expect("valid"));
        assert_eq!(args.store, None);
        assert_eq!(args.client_cert_header, "x-client-cert");
        assert_eq!(args.max_connection_age, None);
        assert_eq!(args.max_connection_age_grace, Duration::from_secs(30));
        assert!(args.trusted_proxies.is_empty());
        assert!(args.authorize_shards.is_empty());
        assert_eq!(args.kube_api_addr, None);
        assert!(!args.kube_api_allow_impersonation);
        assert_eq!(args.kube_api_request_timeout, Duration::from_secs(60));
    }

    #[test]
    fn the_kube_api_needs_its_tokens() {
        assert!(
            Args::try_parse_from([
                "scale-agent-hub",
                "--insecure",
                "--kube-api-addr",
                "127.0.0.1:8443"
            ])
            .is_err()
        );
        let with_tokens = [
            "scale-agent-hub",
            "--insecure",
            "--kube-api-addr",
            "127.0.0.1:8443",
            "--kube-api-tokens-file",
            "/run/tokens",
        ];
        let args = Args::try_parse_from(with_tokens).expect("parses");
        assert_eq!(
            args.kube_api_tokens_file,
            Some(PathBuf::from("/run/tokens"))
        );
        // Its own certificate needs its key.
        assert!(
            Args::try_parse_from([&with_tokens[..], &["--kube-api-tls-cert", "api.crt"]].concat())
                .is_err()
        );
        // The limits: the library's defaults, or what the flags say.
        let api = |extra: &[&str]| {
            Args::try_parse_from([&with_tokens[..], extra].concat())
                .expect("parses")
                .into_config()
                .expect("a config")
                .kube_api
                .expect("the Kubernetes API")
        };
        let defaults = api(&[]);
        let library = KubeApiConfig::new(defaults.addr, TokenSource::Text(String::new()));
        assert_eq!(
            (
                defaults.max_connections,
                defaults.max_connections_per_address,
                defaults.idle_timeout,
                defaults.max_connection_age,
                defaults.max_watches_per_token,
                defaults.held
            ),
            (
                library.max_connections,
                library.max_connections_per_address,
                library.idle_timeout,
                library.max_connection_age,
                library.max_watches_per_token,
                library.held
            )
        );
        let set = api(&[
            "--kube-api-max-connections",
            "10",
            "--kube-api-max-connections-per-address",
            "3",
            "--kube-api-idle-timeout",
            "90s",
            "--kube-api-max-connection-age",
            "0s",
            "--kube-api-max-watches-per-token",
            "7",
            "--kube-api-max-held-mib-per-token",
            "2",
            "--kube-api-max-held-mib",
            "3",
        ]);
        assert_eq!(
            set.held,
            Bounds {
                per_token: 2 << 20,
                total: 3 << 20
            }
        );
        assert_eq!(
            (
                set.max_connections,
                set.max_connections_per_address,
                set.idle_timeout,
                set.max_connection_age,
                set.max_watches_per_token
            ),
            (10, 3, Duration::from_secs(90), Duration::ZERO, 7)
        );
    }

    #[test]
    fn security_flags() {
        let args = Args::try_parse_from([
            "scale-agent-hub",
            "--insecure",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxy",
            "127.0.0.1",
            "--authorize-shards",
            "spinnaker",
            "--max-connection-age",
            "30m",
            "--api-token-file",
            "/run/token",
        ])
        .expect("parses");
        assert_eq!(args.trusted_proxies.len(), 2);
        assert_eq!(args.authorize_shards, vec!["spinnaker".to_owned()]);
        assert_eq!(args.max_connection_age, Some(Duration::from_secs(1800)));
        assert!(
            Args::try_parse_from(["scale-agent-hub", "--insecure", "--trusted-proxy", "x"])
                .is_err()
        );
        let host_bits = Args::try_parse_from([
            "scale-agent-hub",
            "--insecure",
            "--trusted-proxy",
            "10.0.0.5/8",
        ])
        .expect_err("host bits set");
        assert!(host_bits.to_string().contains("host bits"), "{host_bits}");
        assert!(
            Args::try_parse_from(["scale-agent-hub", "--insecure", "--proxy-secret-file", "s"])
                .is_err(),
            "a proxy secret needs trusted proxies"
        );
    }

    fn config(args: &[&str]) -> Config {
        let args =
            Args::try_parse_from(["scale-agent-hub"].iter().chain(args)).expect("the flags parse");
        args.into_config().expect("the settings build")
    }

    #[test]
    fn the_flags_become_the_settings() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "the CA").expect("write");
        let defaults = config(&["--insecure"]);
        assert_eq!(
            (
                defaults.max_accounts_per_session,
                defaults.max_accounts_per_frame
            ),
            (10_000, 1_000)
        );
        assert_eq!(defaults.http_limits, HttpLimits::default());
        assert!(defaults.forwarded_client_ca.is_none());
        let library = Config::new(defaults.grpc_addr, defaults.http_addr);
        assert_eq!(defaults.grpc_addr, "0.0.0.0:9090".parse().expect("valid"));
        assert_eq!(defaults.grace_period, library.grace_period);
        assert_eq!(defaults.reload_interval, library.reload_interval);
        assert_eq!(defaults.client_cert_header, library.client_cert_header);
        assert_eq!(
            defaults.max_connection_age_grace,
            library.max_connection_age_grace
        );
        assert!(defaults.tls.is_none() && defaults.authorize.is_none());

        let set = config(&[
            "--insecure",
            "--grpc-addr",
            "127.0.0.1:7000",
            "--http-addr",
            "127.0.0.1:7001",
            "--grace-period",
            "1m30s",
            "--store",
            "/var/lib/hub.db",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--client-ca",
            ca.to_str().expect("utf-8"),
            "--proxy-secret-file",
            "/run/proxy-secret",
            "--client-cert-header",
            "x-ssl-cert",
            "--max-accounts-per-session",
            "50",
            "--max-accounts-per-frame",
            "5",
            "--http-header-timeout",
            "7s",
            "--http-max-connections",
            "9",
            "--http-max-connections-per-address",
            "4",
            "--authorize-shards",
            "spinnaker",
            "--authorize-shards",
            "tenants",
            "--max-connection-age",
            "30m",
            "--max-connection-age-grace",
            "10s",
            "--api-token-file",
            "/run/token",
            "--reload-interval",
            "2s",
        ]);
        assert_eq!(set.grpc_addr, "127.0.0.1:7000".parse().expect("valid"));
        assert_eq!(set.http_addr, "127.0.0.1:7001".parse().expect("valid"));
        assert_eq!(set.grace_period, Duration::from_secs(90));
        assert_eq!(set.store, StoreLocation::Sqlite("/var/lib/hub.db".into()));
        assert_eq!(set.trusted_proxies.len(), 1);
        let forwarded = set
            .forwarded_client_ca
            .as_ref()
            .expect("the CA of forwarded certificates");
        assert_eq!(forwarded.pem, b"the CA");
        assert_eq!(forwarded.file.as_deref(), Some(ca.as_path()));
        assert_eq!(
            set.proxy_secret_file,
            Some(PathBuf::from("/run/proxy-secret"))
        );
        assert_eq!(set.client_cert_header, "x-ssl-cert");
        assert_eq!(
            (set.max_accounts_per_session, set.max_accounts_per_frame),
            (50, 5)
        );
        assert_eq!(
            set.http_limits,
            HttpLimits {
                header_timeout: Duration::from_secs(7),
                max_connections: 9,
                max_connections_per_address: 4,
            }
        );
        assert!(matches!(
            &set.authorize,
            Some(ShardSource::Watch { namespaces, client: None }) if namespaces == &["spinnaker", "tenants"]
        ));
        assert_eq!(set.max_connection_age, Some(Duration::from_secs(1800)));
        assert_eq!(set.max_connection_age_grace, Duration::from_secs(10));
        assert_eq!(set.api_token_file, Some(PathBuf::from("/run/token")));
        assert_eq!(set.reload_interval, Duration::from_secs(2));

        let all = config(&[
            "--insecure",
            "--authorize-shards",
            "spinnaker",
            "--authorize-shards",
            "*",
        ]);
        assert!(matches!(
            &all.authorize,
            Some(ShardSource::Watch { namespaces, .. }) if namespaces.is_empty()
        ));
    }

    #[test]
    fn a_header_name_that_is_not_one_is_refused_at_parse_time() {
        let err = Args::try_parse_from([
            "scale-agent-hub",
            "--insecure",
            "--client-cert-header",
            "x client cert",
        ])
        .expect_err("not a header name");
        assert!(err.to_string().contains("not a valid header name"), "{err}");
    }

    #[test]
    fn missing_tls_files_stop_the_hub_with_the_path() {
        let args = Args::try_parse_from([
            "scale-agent-hub",
            "--tls-cert",
            "/nonexistent/c.pem",
            "--tls-key",
            "/nonexistent/k.pem",
        ])
        .expect("the flags parse");
        let err = args.into_config().expect_err("the files are missing");
        assert!(err.to_string().contains("/nonexistent/c.pem"), "{err}");
    }

    #[test]
    fn a_client_ca_without_tls_is_only_for_trusted_proxies() {
        let args = Args::try_parse_from(["scale-agent-hub", "--insecure", "--client-ca", "ca.pem"])
            .expect("the flags parse");
        let err = args.into_config().expect_err("nothing to check");
        assert!(err.to_string().contains("--trusted-proxy"), "{err}");
    }

    #[test]
    fn tls_or_insecure_is_required_and_exclusive() {
        assert!(Args::try_parse_from(["scale-agent-hub"]).is_err());
        assert!(Args::try_parse_from(["scale-agent-hub", "--tls-cert", "c.pem"]).is_err());
        assert!(
            Args::try_parse_from(["scale-agent-hub", "--insecure", "--tls-cert", "c.pem"]).is_err()
        );
        let args = Args::try_parse_from([
            "scale-agent-hub",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--client-ca",
            "ca.pem",
        ])
        .expect("mTLS flags parse");
        assert_eq!(args.client_ca, Some(PathBuf::from("ca.pem")));
    }
}
