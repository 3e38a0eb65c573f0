//! A Kubernetes API for every account, so that stock Clouddriver, kubectl, helm and
//! any client-go or kube-rs program can use an account through the hub with nothing
//! but a kubeconfig whose `server:` is `https://<hub>:<port>/accounts/<account>`.
//!
//! Lists, watches and objects by name of the kinds the account's agent streams are
//! answered from the hub's cache, with the cluster's resourceVersions ([`read`], [`cached`], [`watch`]);
//! a client's own writes are a read barrier ([`barrier`]). Everything else travels over
//! the stream of the agent that holds the account, which replays it against the
//! cluster with the account's credentials ([`passthrough`]); the target cluster never
//! has to be reachable from Spinnaker.
//!
//! Modules, one job each: [`server`] (listener, the order a request goes through),
//! [`path`] (routing and what a path names), [`auth`] (bearer tokens and their
//! accounts), [`locate`] (which session holds an account), [`read`] (which reads the
//! cache answers), [`list`] (lists and their pages), [`options`] (list options
//! checked as the API server checks them), [`selector`] (label and field selectors), [`scope`] (an account's
//! `namespaces` as a limit),
//! [`cached`] (the checks under the cache's lock), [`watch`] (watches from the
//! cache), [`barrier`] (read your writes), [`tunnel`] (requests in flight per
//! session, flow control), [`passthrough`] (replaying a request through the agent),
//! [`upgrade`] (exec, attach, port-forward: an upgraded connection carried through the
//! agent), [`stale`] (reads
//! while an account's agent is away),
//! [`discovery`] (discovery and OpenAPI kept while the agent follows what the
//! cluster serves), [`hold`] (answers that hold their place or bytes until sent), [`host`]
//! (accounts by host name),
//! [`status`] (Kubernetes `Status` answers), [`table`] (lists as `Table`s, the columns
//! `kubectl get` prints), [`protobuf`] (Kubernetes protobuf of the built-in kinds,
//! transcoded from the cached JSON by the upstream schema), [`columns`] (custom resources' columns, from their CRDs),
//! [`kubeconfig`] (the kubeconfig Spinnaker
//! operators paste into Clouddriver).

pub mod auth;
pub mod barrier;
pub mod cached;
pub mod columns;
pub mod discovery;
pub mod hold;
pub mod host;
pub mod kubeconfig;
pub mod list;
pub mod locate;
pub mod options;
pub mod passthrough;
pub mod path;
pub mod protobuf;
pub mod read;
pub mod scope;
pub mod selector;
pub mod server;
pub mod stale;
pub mod status;
pub mod table;
pub mod upgrade;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::stream::tunnel::Tunnels;

/// How long a connection past its age still gets for the requests it carries.
pub const AGE_GRACE: Duration = Duration::from_secs(60);

/// Where the bearer tokens of the Kubernetes API come from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// A file (see [`auth`] for its format), re-read when it changes.
    File(PathBuf),
    /// The file's content, given directly (tests, embedding).
    Text(String),
}

/// How to serve the per-account Kubernetes API.
#[derive(Debug, Clone)]
pub struct KubeApiConfig {
    /// Listen address (port 0: any free port).
    pub addr: SocketAddr,
    /// The tokens clients authenticate with.
    pub tokens: TokenSource,
    /// Pass `Impersonate-*` headers on to the cluster, where they act with the
    /// agent's rights; refused (403) when false.
    pub allow_impersonation: bool,
    /// While an account's agent is away (within the grace period), answer the reads
    /// the cache can answer from its last known state, with a `Warning` saying since
    /// when it is not followed (503 like every other request when false).
    pub stale_reads: bool,
    /// How long the hub waits for the head of the cluster's answer when the request
    /// names no `timeout`; past it the client gets 504.
    pub request_timeout: Duration,
    /// Bytes of a response body the agent may send ahead of what the client read;
    /// for exec, attach and port-forward, also each direction's bytes in flight.
    pub window_bytes: u64,
    /// An upgraded connection (exec, attach, port-forward) with no byte either way
    /// for this long is closed (`upgrade.rs`).
    pub stream_idle_timeout: Duration,
    /// An upgraded connection is closed this long after it began, however busy.
    pub stream_max_duration: Duration,
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// Open connections at most from one client address; more are closed at once, so
    /// one address cannot take every connection.
    pub max_connections_per_address: usize,
    /// Watches served from the cache at once per token; more are answered 429, so
    /// one token's watches cannot take the hub's time from every other's.
    pub max_watches_per_token: usize,
    /// A connection with no request in flight for this long is closed (HTTP/2
    /// included, which has no idle limit of its own); zero: never.
    pub idle_timeout: Duration,
    /// A connection this old is asked to close (HTTP/2 GOAWAY; HTTP/1.1 after its
    /// current request), and closed [`AGE_GRACE`] later whatever it still carries;
    /// zero: never.
    pub max_connection_age: Duration,
    /// Bytes the hub holds for requests (bodies on their way to an agent, list
    /// answers not yet sent), per token and in total; past them, 429.
    pub held: crate::core::memory::Bounds,
    /// The certificate the API is served with, when not the hub's own (`Config::tls`);
    /// with neither, it is served over plain HTTP.
    pub tls: Option<crate::net::tls::TlsConfig>,
    /// With a shared store: the PEM bundle the replicas' Kubernetes API
    /// certificates chain to. Each replica's certificate names it (URI SAN
    /// `spiffe://scaleagent.dev/hub/<hub id>`, checked at start). Requests for an
    /// account another replica holds are forwarded to it over TLS, its certificate
    /// checked against the bundle and to name the holder, this replica's presented
    /// as a client certificate; a request marked forwarded is served only from a
    /// connection whose certificate names the replica the mark names. Without it
    /// such requests get 503, and marked ones 403 (see `replicas/forward.rs`).
    pub replica_ca: Option<PathBuf>,
    /// The hub's domain for accounts by host name: account `a` is also served at
    /// `a.<suffix>`, chosen by `Host` or the TLS server name ([`host`]); only paths
    /// under `/accounts/<account>/` when unset. Lowercase, as [`host::check_suffix`]
    /// returns it.
    pub host_suffix: Option<String>,
}

impl KubeApiConfig {
    /// Defaults on `addr` with `tokens`: impersonation refused, stale reads served,
    /// 60 s request timeout, 1 MiB window, 4096 connections (1024 per client
    /// address), closed after 5 minutes idle or asked to close at 1 hour old, upgraded
    /// connections (exec, attach, port-forward) closed after 4 h idle or 24 h, 1000
    /// watches per token, 128 MiB of bodies and unsent lists held per token (512 MiB
    /// in total), the hub's own certificate.
    pub fn new(addr: SocketAddr, tokens: TokenSource) -> KubeApiConfig {
        KubeApiConfig {
            addr,
            tokens,
            allow_impersonation: false,
            stale_reads: true,
            request_timeout: Duration::from_secs(60),
            window_bytes: 1 << 20,
            stream_idle_timeout: Duration::from_secs(4 * 3600),
            stream_max_duration: Duration::from_secs(24 * 3600),
            max_connections: 4096,
            max_connections_per_address: 1024,
            max_watches_per_token: 1000,
            idle_timeout: Duration::from_secs(5 * 60),
            max_connection_age: Duration::from_secs(60 * 60),
            held: crate::core::memory::Bounds::default(),
            tls: None,
            replica_ca: None,
            host_suffix: None,
        }
    }
}
