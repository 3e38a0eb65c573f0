//! The listener of the per-account Kubernetes API: TLS with the hub's certificate when
//! it has one (reloaded with it), HTTP/2 and HTTP/1.1, bounded connections (overall and
//! per client address), header timeouts, and idle and age limits per connection; and
//! the order every request goes through: which account, who is asking,
//! what they may do, where the account is, then the answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use futures::StreamExt as _;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use scale_agent_proto::kube_api;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument as _, debug, info, info_span, warn};

use super::auth::{Refusal, Tokens};
use super::barrier::Barriers;
use super::cached::{self, Ctx};
use super::columns;
use super::discovery;
use super::hold::Holding;
use super::host::{self, Selected};
use super::list::{self, Snapshots};
use super::locate::{Located, locate};
use super::options;
use super::passthrough::{self, Replay};
use super::path::{self, PathError};
use super::read;
use super::scope;
use super::stale;
use super::status::Failure;
use super::upgrade;
use super::{AGE_GRACE, KubeApiConfig, TokenSource};
use crate::Error;
use crate::core::clip::clip;
use crate::core::fair::Class;
use crate::core::memory::Memory;
use crate::net::tls::{TlsConfig, TlsState};
use crate::replicas::forward::{self, Endpoint, Routed};
use crate::spinnaker::tokens::Check;
use crate::state::Shared;

/// How long open connections get to finish when the hub stops.
const DRAIN: Duration = Duration::from_secs(5);

/// The per-account Kubernetes API.
pub struct KubeApi {
    shared: Arc<Shared>,
    tokens: Arc<Tokens>,
    config: KubeApiConfig,
    snapshots: Snapshots,
    barriers: Arc<Barriers>,
    discovery: discovery::Memory,
    /// The columns of custom resources' Tables.
    columns: columns::Memory,
    /// The watches each token holds from the cache.
    watches: Arc<super::watch::Slots>,
    /// The bytes held for each token's bodies and unsent lists.
    memory: Arc<Memory>,
    /// The JSON API, for the requests other replicas forward here.
    json_api: axum::Router,
}

/// Starts serving (TLS with the hub's certificate, when it has one); returns the
/// bound address and the server's task, which ends when the hub shuts down.
/// `json_api` serves the JSON API requests other replicas forward here.
pub async fn start(
    shared: Arc<Shared>,
    config: KubeApiConfig,
    json_api: axum::Router,
) -> Result<(SocketAddr, JoinHandle<std::io::Result<()>>), Error> {
    let shutdown = shared.shutdown.clone();
    let reload_interval = shared.config.reload_interval;
    // A client certificate is asked for (never required) with the replicas' CA: a
    // replica forwarding a request proves with it which replica it is.
    let tls = config
        .tls
        .as_ref()
        .or(shared.config.tls.as_ref())
        .map(|tls| tls.with_client_ca(config.replica_ca.as_deref()))
        .transpose()?;
    let tokens = match &config.tokens {
        TokenSource::File(path) => Tokens::watch(path, reload_interval, shutdown.clone())?,
        TokenSource::Text(text) => Tokens::from_text(text).map_err(|message| Error::Setting {
            setting: "--kube-api-tokens-file",
            message,
        })?,
    };
    let bind = |source| Error::Bind {
        addr: config.addr,
        what: "kube-api",
        source,
    };
    let listener = TcpListener::bind(config.addr).await.map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let tls_state = match &tls {
        Some(tls) => {
            let state = TlsState::with(tls.https_server_config()?);
            if let Some(files) = &tls.files {
                state.watch_files(
                    files.clone(),
                    tls.clone(),
                    reload_interval,
                    shutdown.clone(),
                    shared.metrics.tls_reloads.clone(),
                    TlsConfig::https_server_config,
                );
            }
            Some(state)
        }
        None => {
            warn!(%addr, "the Kubernetes API of the accounts is served without TLS (no --kube-api-tls-cert, and the hub has no certificate): bearer tokens cross the network in the clear, and kubectl does not send them over plain HTTP");
            None
        }
    };
    info!(%addr, tls = tls_state.is_some(), allow_impersonation = config.allow_impersonation, "serving the Kubernetes API of every account at /accounts/<account>/");
    let max_connections = config.max_connections;
    let max_per_address = config.max_connections_per_address;
    let idle_timeout = config.idle_timeout;
    let max_age = config.max_connection_age;
    // The same header timeout as the HTTP API (`--http-header-timeout`): also the idle
    // time of a kept-alive HTTP/1.1 connection.
    let header_timeout = shared.config.http_limits.header_timeout;
    let held = config.held;
    let api = Arc::new(KubeApi {
        shared: Arc::clone(&shared),
        tokens,
        config,
        snapshots: Snapshots::default(),
        barriers: Arc::default(),
        discovery: discovery::Memory::default(),
        columns: columns::Memory::default(),
        watches: Arc::default(),
        memory: Arc::new(Memory::new(held)),
        json_api,
    });
    tokio::spawn(forget_removed(Arc::clone(&api), shutdown.clone()));
    let mut incoming = crate::net::tls::incoming(
        listener,
        "kube-api",
        tls_state,
        shutdown.clone(),
        shared.metrics.tls_handshake_failures.clone(),
    );
    let task = tokio::spawn(async move {
        let limit = Arc::new(Semaphore::new(max_connections));
        let per_address = Arc::new(crate::core::slots::Slots::<std::net::IpAddr>::default());
        let mut refused: u64 = 0;
        let mut refused_address: u64 = 0;
        while let Some(conn) = incoming.next().await {
            let Ok(conn) = conn else { continue };
            let info = tonic::transport::server::Connected::connect_info(&conn);
            let address = info.remote_addr.ip();
            // The client certificate the handshake verified, if the client gave one.
            let peer = info.client_cert.map(Arc::new);
            let Some(address_slot) = per_address.take(address, max_per_address) else {
                refused_address += 1;
                if refused_address == 1 || refused_address.is_multiple_of(1000) {
                    warn!(
                        %address,
                        limit = max_per_address,
                        refused = refused_address,
                        "too many Kubernetes API connections from one address; closing its new ones"
                    );
                }
                continue;
            };
            let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                refused += 1;
                if refused == 1 || refused.is_multiple_of(1000) {
                    warn!(
                        limit = max_connections,
                        refused, "too many Kubernetes API connections; closing new ones"
                    );
                }
                continue;
            };
            let api = Arc::clone(&api);
            let shutdown = shutdown.clone();
            // The TLS server name may name the account (`host.rs`).
            let server_name: Option<Arc<str>> = conn.server_name().map(Arc::from);
            tokio::spawn(async move {
                // Until a request with a valid token begins, the connection has the
                // header timeout from its start to live: one that sends nothing, or
                // only requests refused 401 (HTTP/2 has no idle timeout of its own),
                // does not hold one of the API's connections.
                let authenticated = Arc::new(Notify::new());
                let started = Arc::clone(&authenticated);
                // Requests in flight on the connection, until their answers are sent.
                let (active, in_flight) = watch::channel(0usize);
                let active = Arc::new(active);
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    if api.authenticated(req.headers())
                        || forward::from_replica(req.headers(), peer.as_deref())
                    {
                        started.notify_one();
                    }
                    let request = InFlight::new(&active);
                    let api = Arc::clone(&api);
                    let server_name = server_name.clone();
                    let peer = peer.clone();
                    async move {
                        // Another replica's forwarded JSON API request (replicas/forward.rs).
                        let response = if forward::is_forwarded_json_api(&req) {
                            forward::serve_forwarded_json_api(
                                &api.shared,
                                api.json_api.clone(),
                                req,
                                peer.as_deref(),
                            )
                            .await
                        } else {
                            api.handle(req, server_name.as_deref(), peer.as_deref())
                                .await
                        };
                        Ok::<_, Infallible>(response.map(|body| Holding::new(body, request)))
                    }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout);
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Some(Duration::from_secs(30)));
                // With upgrades: exec, attach and port-forward (`upgrade.rs`).
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(conn), service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(err) = r {
                            debug!(%err, "Kubernetes API connection ended with an error");
                        }
                    }
                    () = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(DRAIN, conn).await;
                    }
                    () = unauthenticated(&authenticated, header_timeout) => {
                        debug!("closed a Kubernetes API connection that began no request with a valid token within the header timeout");
                    }
                    () = idle(in_flight, idle_timeout) => {
                        debug!(?idle_timeout, "closing a Kubernetes API connection with no request in flight");
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(DRAIN, conn).await;
                    }
                    () = aged(max_age) => {
                        debug!(?max_age, "asking a Kubernetes API connection past its age to close");
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(AGE_GRACE, conn).await;
                    }
                }
                drop(permit);
                drop(address_slot);
            });
        }
        Ok(())
    });
    Ok((addr, task))
}

/// Ends when a connection has not begun a request with a valid token within
/// `timeout` of its start; never otherwise. The HTTP/1.1 header timeout only starts
/// once the protocol is known, and HTTP/2 has none, so without this a client that
/// sends nothing at all, or only requests refused 401, would hold its connection for
/// ever.
async fn unauthenticated(authenticated: &Notify, timeout: Duration) {
    if tokio::time::timeout(timeout, authenticated.notified())
        .await
        .is_ok()
    {
        std::future::pending::<()>().await;
    }
}

/// Counts a request in flight on its connection until its answer is sent (or
/// dropped).
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn new(active: &Arc<watch::Sender<usize>>) -> InFlight {
        active.send_modify(|n| *n += 1);
        InFlight(Arc::clone(active))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Ends once the connection has had no request in flight for `limit` (HTTP/2 has no
/// idle limit of its own); never when `limit` is zero.
async fn idle(mut in_flight: watch::Receiver<usize>, limit: Duration) {
    if limit.is_zero() {
        return std::future::pending().await;
    }
    loop {
        // The connection's task holds the sender: an error cannot come first.
        if in_flight.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        let busy = tokio::time::timeout(limit, async {
            in_flight.wait_for(|n| *n > 0).await.is_ok()
        })
        .await;
        match busy {
            Err(_) => return,
            Ok(true) => continue,
            Ok(false) => return std::future::pending().await,
        }
    }
}

/// Ends when a connection reaches `limit` of age; never when `limit` is zero.
async fn aged(limit: Duration) {
    if limit.is_zero() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(limit).await;
}

/// The key the watches of `account`'s minted token are counted under: apart from
/// every line of the tokens file (the top bit set) and, but for a hash collision, from
/// every other account's.
fn minted_owner(account: &str) -> usize {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    account.hash(&mut hasher);
    // On 32-bit targets the cast keeps the hash's low half: still a hash.
    let hash = hasher.finish() as usize;
    hash | (1 << (usize::BITS - 1))
}

/// The host a request names: HTTP/2's `:authority` (or an absolute URI's), else the
/// `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
}

/// Rewrites a request for `account` by host name into the path form
/// (`/accounts/<account>/<path>`), the one form the rest of the way knows (the hop to
/// the replica holding the account keeps the path, not the host).
fn in_path_form<B>(req: &mut Request<B>, account: &str) {
    let mut parts = req.uri().clone().into_parts();
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{}{account}{}?{query}", path::PREFIX, req.uri().path()),
        None => format!("{}{account}{}", path::PREFIX, req.uri().path()),
    };
    // Built from a path that parsed, a valid account name and a query that parsed.
    if let Ok(pq) = http::uri::PathAndQuery::try_from(path_and_query) {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// An answer the hub gave from its memory, counted as such; while the agent is away,
/// with the Warning saying since when it is not followed.
fn from_memory(
    mut response: Response<Body>,
    account: &str,
    stale_since: Option<std::time::SystemTime>,
) -> Response<Body> {
    let source = match stale_since {
        Some(since) => {
            response
                .headers_mut()
                .insert(http::header::WARNING, stale::warning(account, since));
            "stale"
        }
        None => "cache",
    };
    response
        .extensions_mut()
        .insert(passthrough::AnsweredBy(source));
    response
}

/// The body of a watch another replica answers, ended cleanly if that replica goes
/// away mid-stream: a watch that ends is started again from the client's last
/// resourceVersion (as when the API server closes one), where a broken stream makes
/// client-go relist.
fn forwarded_watch(body: Incoming) -> Body {
    use http_body_util::BodyExt as _;
    let events = body.into_data_stream().take_while(|chunk| {
        if let Err(err) = chunk {
            debug!(%err, "a forwarded watch broke off; ending it");
        }
        std::future::ready(chunk.is_ok())
    });
    Body::from_stream(events)
}

/// How often what the API keeps of accounts that left the hub is dropped.
const FORGET_EVERY: Duration = Duration::from_secs(10);

/// Drops, every [`FORGET_EVERY`], the discovery answers and custom-resource columns
/// kept for accounts the hub no longer has (their grace period over, or taken by
/// another replica), until the hub stops.
async fn forget_removed(api: Arc<KubeApi>, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(FORGET_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => api.forget_removed(),
            () = shutdown.cancelled() => return,
        }
    }
}

/// The `content_type` label of an answer from the cache to a client that asked for
/// `media`.
fn cache_content_type(
    media: Result<super::table::Media, &'static str>,
    response: &Response<Body>,
) -> &'static str {
    let written = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if written.starts_with(super::protobuf::MEDIA_TYPE) {
        "protobuf"
    } else if written.contains("as=Table") {
        "table"
    } else if media == Ok(super::table::Media::Protobuf) {
        "json_not_protobuf"
    } else {
        "json"
    }
}

impl KubeApi {
    /// Forgets what is kept for accounts the cache no longer has.
    fn forget_removed(&self) {
        let mut kept = self.discovery.accounts.accounts();
        kept.extend(self.columns.accounts.accounts());
        kept.sort_unstable();
        kept.dedup();
        // The cache's lock is taken alone: the memories' locks are not held under it.
        let gone: Vec<String> = {
            let core = self.shared.core();
            kept.into_iter()
                .filter(|a| core.cache.account(a).is_none())
                .collect()
        };
        for account in &gone {
            self.discovery.accounts.forget(account);
            self.columns.accounts.forget(account);
            debug!(account = %clip(account), "forgot the discovery and columns kept for an account the hub no longer has");
        }
        self.count_discovery();
    }

    /// Sets the gauge of the discovery bytes kept.
    fn count_discovery(&self) {
        self.shared
            .metrics
            .kube_api_discovery_bytes
            .set(i64::try_from(self.discovery.bytes()).unwrap_or(i64::MAX));
    }

    /// Reads the cluster's discovery answer whole, keeps it, and answers the client
    /// from it (`304` when it holds that version).
    async fn keep_discovery(
        &self,
        account: &str,
        surface: u64,
        key: discovery::Key,
        client: &http::HeaderMap,
        response: Response<Body>,
    ) -> Response<Body> {
        let (parts, body) = response.into_parts();
        let limited = http_body_util::Limited::new(body, discovery::MAX_ANSWER);
        let bytes = match http_body_util::BodyExt::collect(limited).await {
            Ok(c) => c.to_bytes(),
            Err(err) => {
                warn!(%err, "a discovery answer of the cluster could not be read whole");
                return Failure::new(
                    StatusCode::BAD_GATEWAY,
                    "InternalError",
                    format!("the cluster's discovery answer broke off: {err}"),
                )
                .response();
            }
        };
        let kept = Arc::new(discovery::Kept::new(&parts.headers, bytes));
        if let Err(bound) = self
            .discovery
            .keep(account, surface, key, Arc::clone(&kept))
        {
            debug!(
                reason = bound.reason(),
                "a discovery answer passed on without being kept"
            );
            self.shared.metrics.discovery_not_kept(bound.reason());
        }
        self.count_discovery();
        let mut response = kept.answer(client);
        response
            .extensions_mut()
            .insert(passthrough::AnsweredBy("cluster"));
        response
    }

    /// Before a Table of a custom resource is answered from the cache: the columns its
    /// CustomResourceDefinition names, asked of the cluster once while the account's
    /// surface number holds ([`columns`]).
    async fn learn_columns(
        &self,
        req: &Request<Incoming>,
        owner: usize,
        account: &str,
        resource: &path::ResourcePath,
        session: &crate::core::registry::SessionId,
        tx: &crate::state::Outbound,
    ) {
        if req.method() != http::Method::GET
            || resource.subresource.is_some()
            || super::table::wanted(req.headers()) != Ok(super::table::Media::Table)
        {
            return;
        }
        let gvr = (
            resource.group.as_str(),
            resource.version.as_str(),
            resource.resource.as_str(),
        );
        let surface = {
            let core = self.shared.core();
            let Some(cache) = core.cache.account(account) else {
                return;
            };
            let custom = cache
                .kind_for(gvr.0, gvr.1, gvr.2)
                .is_some_and(|k| super::table::Print::built_in(k.key).is_none());
            match cache.api_surface() {
                Some(surface) if custom => surface,
                _ => return,
            }
        };
        if !matches!(
            self.columns.get(account, surface, gvr),
            columns::Known::Unknown
        ) {
            return;
        }
        let name = format!("{}.{}", gvr.2, gvr.0);
        let path_and_query = format!(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions?fieldSelector=metadata.name%3D{name}"
        );
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        // Asked on the caller's behalf: counted in its token's share and bytes.
        let Ok(held) = self.memory.take(owner, 0) else {
            return;
        };
        let response = passthrough::replay(
            &self.shared,
            Replay {
                account,
                token: owner,
                class: Class::Short,
                session: session.clone(),
                tx: tx.clone(),
                method: &http::Method::GET,
                path_and_query: &path_and_query,
                headers: &headers,
                body: bytes::Bytes::new(),
                held,
                default_timeout: self.config.request_timeout,
                window: self.config.window_bytes,
                barrier: None,
                upgrade: None,
            },
        )
        .await;
        // A request of the hub's own that reached the cluster: counted as such.
        self.shared
            .metrics
            .kube_api("cluster", response.status().as_u16());
        if response.status().is_client_error() {
            // Refused (no right to list CRDs, ...): not asked again under this surface.
            debug!(crd = %clip(&name), status = %response.status(), "the cluster refused the CRD of a custom resource's Table; its Tables go to the cluster");
            self.columns.keep(
                account,
                surface,
                gvr,
                Err("the cluster refused to list the CRD"),
            );
            return;
        }
        if response.status() != StatusCode::OK {
            debug!(crd = %clip(&name), status = %response.status(), "the cluster did not give the CRD of a custom resource's Table; its Tables go to the cluster");
            return;
        }
        let limited = http_body_util::Limited::new(response.into_body(), columns::MAX_CRD);
        let Ok(bytes) = http_body_util::BodyExt::collect(limited).await else {
            debug!(crd = %clip(&name), "the CRD of a custom resource's Table could not be read whole");
            return;
        };
        let found = serde_json::from_slice::<serde_json::Value>(&bytes.to_bytes())
            .ok()
            .and_then(|list| list["items"].get(0).cloned());
        let learned = match found {
            Some(crd) => columns::Custom::from_crd(&crd, gvr.1).map(Arc::new),
            None => Err("no CustomResourceDefinition of that name"),
        };
        if let Err(why) = &learned {
            debug!(crd = %clip(&name), why, "a custom resource's Tables go to the cluster");
        }
        self.columns.keep(account, surface, gvr, learned);
    }

    /// Which account `req` is for (by its path, its host or its TLS `server_name`), then
    /// [`KubeApi::serve`].
    async fn handle(
        &self,
        mut req: Request<Incoming>,
        server_name: Option<&str>,
        peer: Option<&rustls_pki_types::CertificateDer<'static>>,
    ) -> Response<Body> {
        let suffix = self.config.host_suffix.as_deref();
        let selected = host::select(suffix, server_name, request_host(&req), req.uri().path());
        let routed = match selected {
            Selected::Path => path::route(req.uri().path())
                .map(|(account, rest)| (account.to_owned(), rest.to_owned())),
            Selected::Host(account) => {
                let rest = req.uri().path().to_owned();
                path::check(&rest).map(|()| {
                    in_path_form(&mut req, &account);
                    (account, rest)
                })
            }
            Selected::Misdirected { server_name, host } => {
                debug!(server_name = %clip(&server_name), host = %clip(&host), "a request whose host and TLS server name name different accounts");
                return Failure::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    "BadRequest",
                    format!(
                        "this connection was opened for account {server_name:?}, and the request is for account {host:?}: open a connection for that host name"
                    ),
                )
                .response();
            }
        };
        let (account, rest) = match routed {
            Ok(routed) => routed,
            Err(PathError::NotAccount) => {
                let message = match suffix {
                    Some(suffix) => format!(
                        "the Kubernetes API of an account is served under /accounts/<account>/, and at https://<account>.{suffix}/"
                    ),
                    None => "the Kubernetes API of an account is served under /accounts/<account>/"
                        .to_owned(),
                };
                return Failure::new(StatusCode::NOT_FOUND, "NotFound", message).response();
            }
            Err(err) => return Failure::bad_request(err.to_string()).response(),
        };
        let span = info_span!("kube_api", %account, method = %req.method());
        let media = super::table::wanted(req.headers());
        let response = self.serve(req, account, rest, peer).instrument(span).await;
        let source = response
            .extensions()
            .get::<passthrough::AnsweredBy>()
            .map_or("hub", |a| a.0);
        self.shared
            .metrics
            .kube_api(source, response.status().as_u16());
        if matches!(source, "cache" | "stale") && response.status().is_success() {
            self.shared
                .metrics
                .kube_api_cache_answer(cache_content_type(media, &response));
        }
        response
    }

    /// Answers a read of `resource` from the cache when it can: `Err(None)` when it
    /// goes to the cluster, `Err(Some(answer))` when it is refused as the API server
    /// would refuse it. `stale`: the account's agent is away, the cache waits for
    /// nothing.
    async fn answer_from_cache(
        &self,
        req: &Request<Incoming>,
        owner: usize,
        account: &str,
        rest: &str,
        resource: &path::ResourcePath,
        stale: bool,
    ) -> Result<Response<Body>, Option<Response<Body>>> {
        let query = path::query(req.uri().query());
        if req.method() == http::Method::GET
            && resource.name.is_none()
            && resource.subresource.is_none()
            && let Err(refused) = options::check(&query)
        {
            return Err(Some(refused.response()));
        }
        let read = match read::plan(req.method(), resource, &query, req.headers()) {
            Ok(read) => read,
            Err(why) => {
                debug!(path = %clip(rest), why, "request goes to the cluster");
                return Err(None);
            }
        };
        let ctx = Ctx {
            shared: &self.shared,
            snapshots: &self.snapshots,
            owner,
            watches: &self.watches,
            max_watches: self.config.max_watches_per_token,
            memory: &self.memory,
            barriers: &self.barriers,
            columns: &self.columns,
            stale,
        };
        let fingerprint = list::fingerprint(account, rest, &query);
        cached::answer(&ctx, account, resource, read, fingerprint)
            .await
            .map_err(|why| {
                debug!(path = %clip(rest), why, "read goes to the cluster");
                None
            })
    }

    /// [`scope::check`] with what the hub knows of the account: the namespaces its
    /// agent registered it with, and whether the path's resource is a cluster-scoped
    /// kind the account streams.
    fn within_scope(
        &self,
        account: &str,
        method: &http::Method,
        resource: Option<&path::ResourcePath>,
    ) -> Result<(), String> {
        let (limit, streamed_cluster_scoped) = {
            let core = self.shared.core();
            let Some(cache) = core.cache.account(account) else {
                return Ok(());
            };
            let limit = cache
                .scope()
                .map(|s| s.namespaces.clone())
                .unwrap_or_default();
            let streamed = resource.is_some_and(|r| {
                cache
                    .kind_for(&r.group, &r.version, &r.resource)
                    .is_some_and(|k| !k.window.namespaced)
            });
            (limit, streamed)
        };
        let cluster_scoped = streamed_cluster_scoped
            || resource.is_some_and(|r| scope::builtin_cluster_scoped(&r.group, &r.resource));
        scope::check(&limit, method, resource, cluster_scoped)
    }

    /// True when `headers` carry a token of the tokens file or a valid minted one
    /// (for any account): the connection may stay past the header timeout.
    fn authenticated(&self, headers: &http::HeaderMap) -> bool {
        self.tokens.scope(headers).is_ok()
            || self.shared.minter.as_ref().is_some_and(|minter| {
                super::auth::bearer(headers)
                    .is_some_and(|t| minter.is_valid(t, std::time::SystemTime::now()))
            })
    }

    /// Who is asking for `account`: the key their watches from the cache are counted
    /// under (a tokens-file token's line, or one key per account for the tokens the hub
    /// minted), or why not. A minted token is checked first: it names its account, so
    /// one used for another account is refused whatever the file says.
    fn authorize(&self, headers: &http::HeaderMap, account: &str) -> Result<usize, Refusal> {
        let minted = match (&self.shared.minter, super::auth::bearer(headers)) {
            (Some(minter), Some(token)) => {
                minter.check(token, account, std::time::SystemTime::now())
            }
            _ => Check::NotMinted,
        };
        match minted {
            Check::Allowed => Ok(minted_owner(account)),
            Check::NotMinted => self.tokens.check(headers, account),
            Check::Invalid => Err(Refusal::Unauthenticated),
            Check::OtherAccount => Err(Refusal::NotAllowed),
        }
    }

    async fn serve(
        &self,
        mut req: Request<Incoming>,
        account: String,
        rest: String,
        peer: Option<&rustls_pki_types::CertificateDer<'static>>,
    ) -> Response<Body> {
        // Marked as forwarded by another replica: only that replica may say so.
        if let Err(why) = forward::check_forwarded(req.headers(), peer) {
            self.shared.metrics.forwarded("refused_unproven");
            warn!(%why, "refused a request marked as forwarded by a hub replica");
            return Failure::forbidden(why).response();
        }
        let owner = match self.authorize(req.headers(), &account) {
            Ok(owner) => owner,
            Err(Refusal::Unauthenticated) => {
                self.shared.metrics.http_unauthorized.inc();
                debug!("Kubernetes API request without a valid token");
                return Failure::unauthorized().response();
            }
            Err(Refusal::NotAllowed) => {
                warn!("a token used for an account it is not allowed");
                return Failure::forbidden(format!("this token may not use account {account:?}"))
                    .response();
            }
        };
        if !self.config.allow_impersonation
            && req
                .headers()
                .keys()
                .any(|k| kube_api::is_impersonation(k.as_str()))
        {
            warn!("refused a request asking to impersonate (Impersonate-* headers)");
            return Failure::forbidden(
                "Impersonate-* headers are refused by this hub: the request would act with the agent's rights to impersonate (the hub's operator can allow it with --kube-api-allow-impersonation)",
            )
            .response();
        }
        // exec, attach, port-forward: authorized as any other request below, then
        // carried through the agent (`upgrade.rs`).
        let upgrade = match upgrade::requested(req.headers()) {
            Ok(upgrade) => upgrade,
            Err(refused) => return refused.response(),
        };
        let mut client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        // Held by another replica: carried there, and its answer streamed back.
        let watch = options::ListOptions::from_query(&path::query(req.uri().query())).watch;
        let req = match forward::route(&self.shared, &account, Endpoint::KubeApi, req).await {
            Routed::Here(req) => req,
            Routed::Answered(mut response) => {
                if let Some(client) = client_upgrade.take()
                    && response.status() == StatusCode::SWITCHING_PROTOCOLS
                {
                    forward::splice(&account, client, &mut response, upgrade.as_deref());
                }
                let mut response = if watch {
                    response.map(forwarded_watch)
                } else {
                    response.map(Body::new)
                };
                response
                    .extensions_mut()
                    .insert(passthrough::AnsweredBy("replica"));
                return response;
            }
            Routed::Refused(refused) => {
                let mut response =
                    Failure::new(refused.status, "ServiceUnavailable", refused.message).response();
                response.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                return response;
            }
        };
        let located = locate(&self.shared, &account);
        let resource = path::resource_path(&rest);
        let stale_since = match &located {
            Located::Disconnected { since } => Some(*since),
            _ => None,
        };
        let (session, tx) = match located {
            Located::Unknown => return Failure::unknown_account(&account).response(),
            Located::Disconnected { .. } if !self.config.stale_reads => {
                return Failure::disconnected(&account).response();
            }
            Located::Disconnected { .. } => (None, None),
            Located::NotCapable => {
                return Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    format!(
                        "account {account:?} is streamed by an agent that cannot carry Kubernetes API requests; upgrade the agent"
                    ),
                )
                .response();
            }
            Located::Here { session, tx } => (Some(session), Some(tx)),
        };
        if let Err(why) = self.within_scope(&account, req.method(), resource.as_ref()) {
            warn!(path = %clip(&rest), %why, "refused a request outside the account's namespaces");
            return Failure::forbidden(why).response();
        }
        if let (Some(protocol), Some(client)) = (upgrade, client_upgrade) {
            let (Some(session), Some(tx)) = (session, tx) else {
                return Failure::disconnected(&account).response();
            };
            return self
                .upgrade(req, owner, &account, rest, session, tx, protocol, client)
                .await;
        }
        if let (Some(resource), Some(session), Some(tx)) = (&resource, &session, &tx) {
            self.learn_columns(&req, owner, &account, resource, session, tx)
                .await;
        }
        if let Some(resource) = &resource {
            match self
                .answer_from_cache(
                    &req,
                    owner,
                    &account,
                    &rest,
                    resource,
                    stale_since.is_some(),
                )
                .await
            {
                Ok(response) => return from_memory(response, &account, stale_since),
                Err(Some(refused)) => return refused,
                Err(None) => {}
            }
        }
        let is_discovery = discovery::is_discovery(req.method(), &rest);
        let path_and_query = match req.uri().query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest,
        };
        // Discovery and OpenAPI from memory, while the agent follows what the
        // cluster serves.
        let kept = is_discovery
            .then(|| {
                let core = self.shared.core();
                core.cache.account(&account).and_then(|c| c.api_surface())
            })
            .flatten()
            .map(|surface| (surface, discovery::Key::of(&path_and_query, req.headers())));
        if let Some((surface, key)) = &kept
            && let Some(answer) = self.discovery.get(&account, *surface, key)
        {
            return from_memory(answer.answer(req.headers()), &account, stale_since);
        }
        let (Some(session), Some(tx)) = (session, tx) else {
            // Away: what the cache cannot answer waits for the agent.
            return Failure::disconnected(&account).response();
        };
        // Watches, logs and the like take the session's long-running room.
        let class = Class::of(
            watch,
            resource.as_ref().and_then(|r| r.subresource.as_deref()),
        );
        let barrier = resource
            .filter(|r| r.subresource.as_deref() != Some("log"))
            .map(|r| passthrough::BarrierFor {
                barriers: Arc::clone(&self.barriers),
                group: r.group,
                version: r.version,
                resource: r.resource,
            });
        let (mut parts, body) = req.into_parts();
        let client_headers = kept.as_ref().map(|_| {
            // The full answer is kept, whatever validator the client holds.
            let headers = parts.headers.clone();
            parts.headers.remove(http::header::IF_NONE_MATCH);
            headers
        });
        // The body's deadline is the request's default one (`--kube-api-request-timeout`);
        // its bytes count against the token's and the hub's bounds until the agent
        // has it.
        let mut held = match self.memory.take(owner, 0) {
            Ok(held) => held,
            Err(over) => return passthrough::too_much(over).response(),
        };
        let read = passthrough::read_body(body, self.config.request_timeout, &mut held);
        let body = match read.await {
            Ok(body) => body,
            Err(refused) => return refused.response(),
        };
        let response = passthrough::replay(
            &self.shared,
            Replay {
                account: &account,
                token: owner,
                class,
                session,
                tx,
                method: &parts.method,
                path_and_query: &path_and_query,
                headers: &parts.headers,
                body,
                held,
                default_timeout: self.config.request_timeout,
                window: self.config.window_bytes,
                barrier,
                upgrade: None,
            },
        )
        .await;
        match (kept, client_headers) {
            (Some((surface, key)), Some(headers)) if response.status() == StatusCode::OK => {
                self.keep_discovery(&account, surface, key, &headers, response)
                    .await
            }
            _ => response,
        }
    }

    /// Carries an authorized connection upgrade (exec, attach, port-forward) to the
    /// cluster through the agent; on `101`, the connection's bytes both ways until
    /// either end closes it or a limit passes (`upgrade.rs`).
    #[allow(clippy::too_many_arguments)]
    async fn upgrade(
        &self,
        req: Request<Incoming>,
        owner: usize,
        account: &str,
        rest: String,
        session: crate::core::registry::SessionId,
        tx: crate::state::Outbound,
        protocol: String,
        client: hyper::upgrade::OnUpgrade,
    ) -> Response<Body> {
        if !self.shared.tunnels.carries_upgrades(&session) {
            return Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!(
                    "account {account:?} is streamed by an agent that cannot carry exec, attach or port-forward; upgrade the agent"
                ),
            )
            .response();
        }
        let path_and_query = match req.uri().query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest,
        };
        let (parts, _) = req.into_parts();
        let held = match self.memory.take(owner, 0) {
            Ok(held) => held,
            Err(over) => return passthrough::too_much(over).response(),
        };
        let mut response = passthrough::replay(
            &self.shared,
            Replay {
                account,
                // Exec, attach and port-forward take the session's long-running room.
                token: owner,
                class: Class::LongRunning,
                session,
                tx,
                method: &parts.method,
                path_and_query: &path_and_query,
                headers: &parts.headers,
                body: bytes::Bytes::new(),
                held,
                default_timeout: self.config.request_timeout,
                window: self.config.window_bytes,
                barrier: None,
                upgrade: Some(protocol),
            },
        )
        .await;
        let Some(switched) = response.extensions_mut().remove::<passthrough::Switched>() else {
            // Refused by the cluster (or the hub): an ordinary answer.
            return response;
        };
        let Some(agent) = switched.take() else {
            return response;
        };
        let limits = upgrade::Limits {
            idle: self.config.stream_idle_timeout,
            total: self.config.stream_max_duration,
        };
        let account = account.to_owned();
        tokio::spawn(
            async move {
                match client.await {
                    Ok(io) => upgrade::carry(upgrade::client_io(io), agent, limits, &account).await,
                    // `agent` drops: the session is cancelled at the agent.
                    Err(err) => debug!(%err, "the client's connection was not upgraded"),
                }
            }
            .instrument(tracing::Span::current()),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_idle_only_with_nothing_in_flight() {
        let (active, in_flight) = watch::channel(0usize);
        let active = Arc::new(active);
        let request = InFlight::new(&active);
        let limit = Duration::from_millis(100);
        let idle = tokio::spawn(idle(in_flight.clone(), limit));
        tokio::time::sleep(limit * 4).await;
        assert!(!idle.is_finished(), "a request in flight: not idle");
        drop(request);
        tokio::time::timeout(Duration::from_secs(5), idle)
            .await
            .expect("idle once its request ended")
            .expect("ran");
        // A zero limit: never idle.
        let never = tokio::spawn(super::idle(in_flight, Duration::ZERO));
        tokio::time::sleep(limit * 2).await;
        assert!(!never.is_finished());
        never.abort();
    }
}
