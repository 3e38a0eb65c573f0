//! The scale-agent hub: the Clouddriver side of the protocol.
//!
//! Agents stream the objects of their clusters over gRPC
//! (`AgentHub.Connect`); the hub keeps an account registry (name → cluster,
//! shard, replica, session), a cache of every streamed object, and serves both
//! over an HTTP JSON API, through which deploy operations are also routed to
//! the agent replica that holds the account.
//!
//! Run it in-process:
//!
//! ```no_run
//! # async fn demo() -> Result<(), scale_agent_hub::Error> {
//! use scale_agent_hub::{Config, Hub};
//! let mut config = Config::local();
//! config.grace_period = std::time::Duration::from_secs(1);
//! let hub = Hub::start(config).await?;
//! println!("gRPC on {}, HTTP on {}", hub.grpc_addr(), hub.http_addr());
//! hub.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Security, all optional and off in [`Config::local`]:
//! - TLS/mTLS served by rustls ([`net::tls`]); certificate, key and client CA
//!   files are reloaded when they change, without dropping open streams.
//! - The agent's shard identity is the URI SAN of its client certificate,
//!   from the TLS session or forwarded by a trusted load balancer in a header
//!   ([`net::identity`]); a Hello naming another shard is refused.
//! - With [`Config::authorize`] an account is accepted only from the shard
//!   whose AgentShard lists it ([`core::ownership`]); without it a name belongs to
//!   the first shard that registers it ([`core::registry`]). Either way another
//!   shard never takes a streaming account, whatever cluster id it names.
//! - Forwarded certificates must chain to the agents' CA
//!   ([`Config::forwarded_client_ca`]); trusted proxies may have to prove
//!   themselves with a shared secret ([`Config::proxy_secret_file`]).
//! - Limits: accounts per session and per Register frame, HTTP header and
//!   idle timeouts and a connection cap ([`net::serve`]), pages of every list
//!   ([`api::page`]).
//! - [`Config::api_token_file`]: the HTTP API needs a bearer token.
//! - [`Config::max_connection_age`]: sessions are drained (REBALANCE) at an
//!   age with jitter, so agents spread over hub replicas.
//!
//! The code is grouped by job, one folder each (see `ARCHITECTURE.md`):
//! - [`stream`]: the agents' gRPC side — sessions, registration (alone or
//!   through the shared store), ingest, routing of operations and proxied
//!   requests to the session that holds an account, revocation.
//! - [`core`]: the hub's state and its rules — the registry's binding rules, the
//!   cache, the resync diff, the window of recent changes, ownership,
//!   operations waiting for results; the only I/O is the AgentShards watch
//!   that feeds ownership.
//! - [`replicas`]: this replica's side of a store shared with other replicas —
//!   heartbeats, the leader, write-behind, forwarding, operations in flight.
//! - [`api`]: the JSON API; [`kubeapi`]: the Kubernetes API of every account.
//! - [`net`]: TLS, identity, the accept loops and their limits, reloaded files.
//! - [`store`]: the SQLite store of one hub, or the PostgreSQL store replicas share.
//! - [`cli`] and [`cmd`]: the `scale-agent-hub` program's flags and `main`.
//! - At the root, the wiring every folder reads: [`config`], [`state`]
//!   (the [`state::Shared`] context), [`metrics`], [`error`].

pub mod api;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod core;
pub mod error;
pub mod kubeapi;
pub mod metrics;
pub mod net;
pub mod replicas;
pub mod spinnaker;
pub mod state;
pub mod store;
pub mod stream;

// The flags (`cli`) name the library's items as `scale_agent_hub::...`, as they did when
// they lived in the binary; this keeps those paths valid inside the library.
extern crate self as scale_agent_hub;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use scale_agent_proto::v1::agent_hub_server::AgentHubServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::{info, warn};

pub use config::Config;
pub use core::ownership::ShardSource;
pub use error::Error;
pub use net::tls::{TlsConfig, TlsFiles};

use crate::api::http;
use crate::config::HttpLimits;
use crate::core::ownership;
use crate::net::{identity, serve, tls};
use crate::stream::{grpc, revocation};

use crate::state::Shared;

/// The hub.
#[derive(Debug)]
pub struct Hub;

/// The accounts this hub serves, as the Clouddriver sync asks for them: the registry
/// (one hub) or the shared store (replicas; only the leader writes), each with its
/// owning shard's spec when ownership is enforced. What became of an account's
/// definition is published as an Event on the AgentShard that owns it (with
/// `--authorize-shards`: the hub knows the shards then).
struct Served(Arc<Shared>, Option<kube::runtime::events::Recorder>);

impl Served {
    fn wanted_of(&self, names: Vec<String>) -> Result<Vec<spinnaker::definition::Wanted>, String> {
        let ownership = match &self.0.ownership {
            None => None,
            Some(rx) => Some(rx.borrow().clone().ok_or(
                "the AgentShards are not listed yet (what Clouddriver is told of an account comes from its shard)",
            )?),
        };
        Ok(names
            .into_iter()
            .map(|name| {
                let spec = ownership.as_ref().and_then(|o| o.spec(&name));
                spinnaker::definition::Wanted::of(name, spec, ownership.is_some())
            })
            .collect())
    }
}

impl spinnaker::Accounts for Served {
    fn may_write(&self) -> bool {
        self.0.replicas.as_ref().is_none_or(|r| r.is_leader())
    }

    fn wanted(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<Vec<spinnaker::definition::Wanted>, String>> {
        Box::pin(async move {
            let names: Vec<String> = match &self.0.replicas {
                Some(replicas) => replicas
                    .store()
                    .accounts(self.0.config.replica_timeout)
                    .await
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|row| row.name)
                    .collect(),
                None => {
                    let core = self.0.core();
                    core.registry.accounts().map(|a| a.name.clone()).collect()
                }
            };
            self.wanted_of(names)
        })
    }

    fn report(&self, account: &str, report: &spinnaker::Report) {
        let (Some(recorder), Some(ownership)) = (&self.1, &self.0.ownership) else {
            return;
        };
        let Some(reference) = ownership
            .borrow()
            .as_ref()
            .and_then(|o| o.owner_reference(account).cloned())
        else {
            return;
        };
        let event = kube::runtime::events::Event {
            type_: if report.warning() {
                kube::runtime::events::EventType::Warning
            } else {
                kube::runtime::events::EventType::Normal
            },
            reason: report.reason().to_owned(),
            note: Some(report.note(account)),
            action: "ClouddriverSync".to_owned(),
            secondary: None,
        };
        let recorder = recorder.clone();
        let reason = report.reason();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!(error = %e, reason, "publishing an Event on an AgentShard failed");
            }
        });
    }
}

/// The hub's client of the cluster it runs in: the one AgentShards are watched with, else
/// the default (in-cluster, or KUBECONFIG).
async fn kube_client(shared: &Shared) -> Result<kube::Client, String> {
    if let Some(ShardSource::Watch {
        client: Some(c), ..
    }) = &shared.config.authorize
    {
        return Ok(c.clone());
    }
    kube::Client::try_default().await.map_err(|e| e.to_string())
}

/// The recorder of the Clouddriver sync's Events, when the hub watches AgentShards.
async fn sync_recorder(shared: &Shared) -> Option<kube::runtime::events::Recorder> {
    if !matches!(shared.config.authorize, Some(ShardSource::Watch { .. })) {
        return None;
    }
    let client = match kube_client(shared).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "no Kubernetes client for the Clouddriver sync's Events: they are not published");
            return None;
        }
    };
    Some(kube::runtime::events::Recorder::new(
        client,
        kube::runtime::events::Reporter {
            controller: "scale-agent-hub".to_owned(),
            instance: Some(shared.config.hub_id.clone()),
        },
    ))
}

/// Starts keeping Clouddriver's definitions in step (`--clouddriver-url`), or the Secret
/// of them (`--clouddriver-secret`).
async fn start_clouddriver_sync(
    shared: &Arc<Shared>,
    cd: spinnaker::ClouddriverConfig,
    minter: Arc<spinnaker::tokens::Minter>,
) -> Result<(), Error> {
    if shared.config.kube_api.is_none() {
        return Err(Error::Setting {
            setting: "--clouddriver-kube-api-server",
            message: "the kubeconfigs given to Clouddriver name the hub's Kubernetes API: serve it (--kube-api-addr)".into(),
        });
    }
    if cd.token_key.is_none() && shared.replicas.is_some() {
        return Err(Error::Setting {
            setting: "--clouddriver-token-key-file",
            message: "hub replicas sharing a store check each other's minted tokens: give every replica the same key file".into(),
        });
    }
    let server = cd.kube_api_server.clone();
    let ca = cd.kube_api_ca_pem.clone();
    let kubeconfig: spinnaker::Kubeconfig = Arc::new(move |account, token| {
        let accounts = [account.to_owned()];
        kubeapi::kubeconfig::render(&kubeapi::kubeconfig::Contexts {
            server: &server,
            ca_pem: ca.as_deref(),
            token,
            accounts: &accounts,
            host_suffix: None,
        })
    });
    let sources = spinnaker::Sources {
        minter,
        accounts: Arc::new(Served(Arc::clone(shared), sync_recorder(shared).await)),
        kubeconfig,
        metrics: spinnaker::SyncMetrics {
            pushes: shared.metrics.clouddriver_pushes.clone(),
            foreign: shared.metrics.clouddriver_foreign.clone(),
            in_step: shared.metrics.clouddriver_in_step.clone(),
            list_failures: shared.metrics.clouddriver_list_failures.clone(),
            refused: shared.metrics.clouddriver_refused.clone(),
        },
        grace: shared.config.grace_period,
        shutdown: shared.shutdown.clone(),
    };
    if let Some(target) = cd.secret.clone() {
        let client = kube_client(shared)
            .await
            .map_err(|message| Error::Setting {
                setting: "--clouddriver-secret",
                message: format!("no Kubernetes client to write the Secret with: {message}"),
            })?;
        spinnaker::secret::start(
            target,
            client,
            cd.kube_api_server.clone(),
            cd.interval,
            sources.clone(),
        );
    }
    spinnaker::start(cd, sources).map_err(|message| Error::Setting {
        setting: "--clouddriver-url",
        message,
    })
}

/// Binds one of the hub's listening sockets; `what` names it in the error.
async fn bind(addr: SocketAddr, what: &'static str) -> Result<(TcpListener, SocketAddr), Error> {
    let error = |source| Error::Bind { addr, what, source };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}

impl Hub {
    /// Opens the store, binds both servers and starts serving. Returns once
    /// both sockets listen.
    pub async fn start(config: Config) -> Result<RunningHub, Error> {
        let shutdown = CancellationToken::new();
        // Whatever was started before a failure below stops with it.
        let started = shutdown.clone().drop_guard();
        let ownership = match config.authorize.clone() {
            Some(source) => Some(ownership::start(source, shutdown.clone()).await?),
            None => None,
        };
        let shared = Shared::new(config, ownership, shutdown.clone())?;
        let config = &shared.config;
        let api_token = match &config.api_token_file {
            Some(path) => Some(kubeapi::auth::Tokens::watch_api(
                path,
                config.reload_interval,
                shutdown.clone(),
            )?),
            None => None,
        };
        if let Some(rx) = &shared.ownership {
            revocation::revoke_on_ownership_change(Arc::clone(&shared), rx.clone());
        }
        let (grpc_listener, grpc_addr) = bind(config.grpc_addr, "grpc").await?;
        let (http_listener, http_addr) = bind(config.http_addr, "http").await?;
        if let Some(replicas) = &shared.replicas {
            let url = config
                .advertised_api(http_addr)
                .ok_or_else(|| Error::Setting {
                    setting: "--advertise-address",
                    message: format!(
                        "with a shared store, other replicas must reach this one's HTTP API, and {http_addr} names no single address: give the address they reach it at (in Kubernetes, the pod IP)"
                    ),
                })?;
            replicas.advertise_api(url);
            replicas::Replicas::start(&shared);
        }

        let mut builder = Server::builder()
            .http2_keepalive_interval(Some(grpc::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(grpc::KEEPALIVE_TIMEOUT));
        // The maximum connection age is enforced per session (Drain REBALANCE,
        // then the stream ends), not with tonic's connection-level
        // max_connection_age: a load balancer reuses its upstream connections
        // for new streams, and a GOAWAY timed from the connection's start would
        // cut a young session without a Drain. Agents open a new connection
        // for every session, so the session's end frees the connection too.
        let tls_state = match &config.tls {
            Some(tls) => {
                let state = tls::TlsState::new(tls)?;
                if let Some(files) = &tls.files {
                    state.watch_files(
                        files.clone(),
                        tls.clone(),
                        config.reload_interval,
                        shutdown.clone(),
                        shared.metrics.tls_reloads.clone(),
                        TlsConfig::server_config,
                    );
                }
                info!(
                    mtls = tls.client_ca_pem.is_some(),
                    reload = tls.files.is_some(),
                    "gRPC serves TLS"
                );
                Some(state)
            }
            None => {
                if config.trusted_proxies.is_empty() {
                    warn!(
                        "INSECURE: gRPC serves plain HTTP/2 without TLS (--insecure) and trusts no proxy: agents are not authenticated, and the shard named in Hello is believed"
                    );
                } else {
                    warn!(
                        trusted_proxies = ?config.trusted_proxies,
                        "gRPC serves plain HTTP/2 without TLS: agents are authenticated only by the client certificate the trusted proxies forward"
                    );
                }
                None
            }
        };
        for warning in
            identity::trust_warnings(&config.trusted_proxies, config.proxy_secret_file.is_some())
        {
            warn!("INSECURE: {warning}");
        }
        if config.authorize.is_none() {
            warn!(
                "account ownership is not checked against AgentShards (no --authorize-shards): a name belongs to the first shard that registers it"
            );
        }
        if config.api_token_file.is_none() {
            warn!(
                "the HTTP API needs no token (no --api-token-file): anyone who reaches it may read the cache and run operations"
            );
        }
        let max = usize::try_from(config.max_message_bytes).unwrap_or(usize::MAX);
        let service = AgentHubServer::new(grpc::HubService::new(Arc::clone(&shared)))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let incoming = tls::incoming(
            grpc_listener,
            "grpc",
            tls_state,
            shutdown.clone(),
            shared.metrics.tls_handshake_failures.clone(),
        );
        let grpc_task = tokio::spawn(
            builder
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned()),
        );
        let json_api = http::router(Arc::clone(&shared), api_token);
        let http_task = tokio::spawn(serve::http(
            http_listener,
            json_api.clone(),
            config.http_limits,
            shutdown.clone(),
        ));
        let probe_addr = match config.probe_addr {
            Some(addr) => {
                let (listener, bound) = bind(addr, "probes").await?;
                // Its own connections: the API's callers cannot fill them. It stops
                // with the hub.
                tokio::spawn(serve::http(
                    listener,
                    http::probes(Arc::clone(&shared)),
                    HttpLimits::default(),
                    shutdown.clone(),
                ));
                Some(bound)
            }
            None => None,
        };
        let kube_api = match config.kube_api.clone() {
            Some(api) => Some(kubeapi::server::start(Arc::clone(&shared), api, json_api).await?),
            None => None,
        };
        if let (Some(cd), Some(minter)) = (config.clouddriver.clone(), shared.minter.clone()) {
            start_clouddriver_sync(&shared, cd, minter).await?;
        }
        let (kube_api_addr, kube_api_task) = kube_api.unzip();
        if let (Some(replicas), Some(addr), Some(api)) =
            (&shared.replicas, kube_api_addr, &config.kube_api)
        {
            // Others forward to it only over TLS (replicas/forward.rs).
            let tls = api.tls.is_some() || config.tls.is_some();
            let scheme = if tls { "https" } else { "http" };
            if let Some(url) = config.advertised(scheme, addr) {
                replicas.advertise_kube_api(url);
            }
            if api.replica_ca.is_none() {
                warn!(
                    "with a shared store and no --kube-api-replica-ca, requests (JSON API and Kubernetes API) for accounts another replica holds get 503: send each to the replica holding the account, or give the replicas' CA"
                );
            }
        } else if shared.replicas.is_some() {
            warn!(
                "with a shared store and no --kube-api-addr, JSON API requests for accounts another replica holds get 503: the replicas forward each other's requests only over the Kubernetes API's TLS listener, proving which replica they are (--kube-api-replica-ca)"
            );
        }
        info!(%grpc_addr, %http_addr, hub_id = %config.hub_id, grace_period = ?config.grace_period,
            max_connection_age = ?config.max_connection_age,
            store = %config.store, "hub started");
        started.disarm();
        Ok(RunningHub {
            grpc_addr,
            http_addr,
            kube_api_addr,
            probe_addr,
            kube_api_task,
            shutdown,
            shared,
            grpc_task: Some(grpc_task),
            http_task: Some(http_task),
        })
    }
}

/// A running hub: its addresses, and the way to stop it.
#[derive(Debug)]
pub struct RunningHub {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    kube_api_addr: Option<SocketAddr>,
    probe_addr: Option<SocketAddr>,
    kube_api_task: Option<JoinHandle<std::io::Result<()>>>,
    shutdown: CancellationToken,
    shared: Arc<Shared>,
    grpc_task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    http_task: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningHub {
    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound address of the accounts' Kubernetes API, when served.
    pub fn kube_api_addr(&self) -> Option<SocketAddr> {
        self.kube_api_addr
    }

    /// The bound address of the probes (`--probe-addr`), when served.
    pub fn probe_addr(&self) -> Option<SocketAddr> {
        self.probe_addr
    }

    /// `http://<grpc addr>`, for a plaintext tonic channel.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// `http://<http addr>`, the base of the JSON API.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// A token that stops the hub when cancelled (e.g. from a signal handler).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// How many times the hub's registry and cache were locked since it started
    /// ([`state::Shared::core_locks`]).
    pub fn core_locks(&self) -> u64 {
        self.shared.core_locks()
    }

    /// The hub's metrics in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.shared.refresh_gauges();
        self.shared.metrics.encode()
    }

    /// Serves until the shutdown token is cancelled or a server fails, then
    /// stops both.
    pub async fn wait(mut self) -> Result<(), Error> {
        let failed = {
            let (Some(grpc), Some(http)) = (self.grpc_task.as_mut(), self.http_task.as_mut())
            else {
                return Ok(());
            };
            tokio::select! {
                () = self.shutdown.cancelled() => None,
                r = grpc => Some(flatten_grpc(r)),
                r = http => Some(flatten_http(r)),
            }
        };
        match failed {
            // One server stopped on its own: stop the other too.
            Some(result) => {
                self.shutdown.cancel();
                self.grpc_task = None;
                self.http_task = None;
                result
            }
            None => self.stop().await,
        }
    }

    /// Drains every agent session (Drain SHUTDOWN), stops both servers and
    /// waits for them (at most 10 s).
    pub async fn shutdown(self) -> Result<(), Error> {
        self.shutdown.cancel();
        self.stop().await
    }

    async fn stop(mut self) -> Result<(), Error> {
        self.shutdown.cancel();
        let grpc = self.grpc_task.take();
        let http = self.http_task.take();
        let kube_api = self.kube_api_task.take();
        let join = async {
            if let Some(task) = kube_api {
                // Its connections drain on their own; nothing to report.
                let _ = task.await;
            }
            let mut result = Ok(());
            if let Some(task) = grpc {
                result = result.and(flatten_grpc(task.await));
            }
            if let Some(task) = http {
                result = result.and(flatten_http(task.await));
            }
            result
        };
        let result = match tokio::time::timeout(Duration::from_secs(10), join).await {
            Ok(result) => result,
            Err(_) => {
                warn!("servers did not stop within 10s; leaving them");
                Ok(())
            }
        };
        if let Some(replicas) = &self.shared.replicas {
            replicas.finish(Duration::from_secs(5)).await;
        }
        result
    }
}

impl Drop for RunningHub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn flatten_grpc(
    r: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), Error> {
    match r {
        Ok(inner) => inner.map_err(Error::Transport),
        Err(join) => Err(Error::Http(std::io::Error::other(join))),
    }
}

fn flatten_http(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), Error> {
    match r {
        Ok(inner) => inner.map_err(Error::Http),
        Err(join) => Err(Error::Http(std::io::Error::other(join))),
    }
}
