//! The agent's connections to the clusters: accounts whose connection would be made the
//! same way share it, as client-go's transport cache shares one HTTP/2 connection among
//! every client of a cluster with the same TLS settings. kube's default client speaks
//! HTTP/1.1 only, which takes one connection per open watch: about fifteen per account.
//!
//! An account's connection is decided by its *transport*: the server, the CA, the client
//! certificate and the TLS server name ([`transport_key`]). Bearer tokens, exec-plugin
//! tokens and extra headers go on each request (kube's layers above the pool), so
//! accounts that differ only in them share a connection safely; a client certificate is
//! the connection's identity, so a different one means a different connection.
//!
//! Accounts of one identity (the same transport and credentials, [`identity_key`]) share
//! their kube clients as well ([`client_key`]): the watch client of each connection, and
//! the proxy and upgrade clients of the transport. A kube client keeps a request buffer
//! and its worker task; one per account was ≈ 10 MiB at 500 accounts of three
//! identities. An account with other credentials never gets another's client.
//!
//! An HTTP/2 connection carries at most the number of streams the server allows (a
//! kube-apiserver: 100, its `--http2-max-streams-per-connection`); a request past that
//! waits for a stream to end, and a watch never ends on its own. So each account reserves
//! as many streams as it keeps open (one for its lists and operations, which come and go,
//! and, when it watches alone, one per watch; a watch shared by the accounts of one
//! identity, [`crate::shared`], reserves its own) on a connection that has room
//! ([`place`]), and a
//! transport gets another connection when none has, as Go's HTTP/2 client (client-go's)
//! opens another when one is full. The limit is the server's own, read once per transport
//! from its HTTP/2 SETTINGS ([`probe_max_streams`]).
//!
//! The hub's Kubernetes API requests ([`crate::proxy`]) get one more connection per
//! transport, without retries, opened only when the first such request comes: HTTP/2 flow
//! control is per connection too, and a caller that stops reading a large answer must not
//! hold the watches back.
//!
//! Connection upgrades the hub carries (exec, attach, port-forward) go over HTTP/1.1, as
//! kubectl's do: the API server takes WebSocket and SPDY upgrades only there. Each takes
//! a connection of its own for as long as it lasts, made by the same transport offering
//! only `http/1.1`; nothing else shares it.
//!
//! A server that does not offer `h2` (plain `http://`, or a proxy in front that speaks
//! HTTP/1.1 only) is spoken to in HTTP/1.1, one connection per request in flight.
//!
//! The stack is kube's own, from the same `kube::Config`: its TLS settings (CA, client
//! certificate, server name), base URI, authentication and extra headers, and its retry of
//! server errors; only the connector and the HTTP client differ.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ClientBuilder, ConfigExt};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tower::{ServiceBuilder, ServiceExt};

/// How often an idle HTTP/2 connection is pinged: a dead one is noticed, and no load
/// balancer in between closes it for idleness.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is taken for dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The connection-level HTTP/2 receive window, as client-go's (1 GiB): many accounts'
/// watches share a connection, and a stream whose reader is slow may hold at most its
/// own window (hyper's default, 2 MiB), never every other stream's.
const CONNECTION_WINDOW: u32 = 1 << 30;
/// Streams per connection when the server's limit cannot be read: the least HTTP/2
/// (RFC 9113, 6.5.2) recommends a server to allow.
const FALLBACK_MAX_STREAMS: usize = 100;
/// How long reading the server's limit may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

type Pool = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Body>;

/// What decides an account's connection: two accounts with the same key may share one.
pub type Key = [u8; 32];

/// The clients of one account, and its share of a connection.
pub struct AccountClients {
    /// Watches, lists and operations (retrying server errors, as kube does).
    pub client: kube::Client,
    /// The hub's Kubernetes API requests: never retried, so a caller's request reaches
    /// the cluster at most once.
    pub proxy: kube::Client,
    /// The hub's connection upgrades (exec, attach, port-forward): HTTP/1.1, one
    /// connection each, never retried.
    pub upgrade: kube::Client,
    /// The streams this account reserved; given back when dropped.
    pub lease: StreamLease,
    /// Who the account is to its cluster, when accounts may share its watches.
    pub identity: Option<crate::shared::Identity>,
}

/// Every connection of the agent, by transport.
#[derive(Default)]
pub struct Connections {
    transports: Mutex<HashMap<Key, Transport>>,
    /// The watches accounts of the same identity share.
    pub(crate) shared: crate::shared::Registry,
}

/// The connections of one transport.
struct Transport {
    /// How many streams one connection may reserve for watches.
    limit: usize,
    /// The watch connections, each with the streams reserved on it.
    slots: Vec<Slot>,
    /// The connection for the hub's Kubernetes API requests.
    proxy: Pool,
    /// HTTP/1.1 connections for the hub's connection upgrades, one each.
    upgrade: Pool,
    /// Builds another watch connection.
    connector: HttpsConnector<HttpConnector>,
    /// Whether the server speaks HTTP/2.
    http2: bool,
    /// Numbers the slots, so a lease finds its own after others were removed.
    next_slot: u64,
    /// The proxy and upgrade clients of each identity on this transport, shared by its
    /// accounts.
    clients: HashMap<Key, Cached<(kube::Client, kube::Client)>>,
}

/// A client kept for the accounts of one identity ([`client_key`]), and how many of
/// their leases use it: it goes with the last.
struct Cached<T> {
    value: T,
    users: usize,
}

/// Takes a user of the client of `key` in `cache` (when it is there) away; the client
/// goes with the last.
fn release<T>(cache: &mut HashMap<Key, Cached<T>>, key: &Key) {
    if let Some(c) = cache.get_mut(key) {
        c.users = c.users.saturating_sub(1);
        if c.users == 0 {
            cache.remove(key);
        }
    }
}

/// Adds a user of `value` as the client of `key` in `cache`.
fn keep<T>(cache: &mut HashMap<Key, Cached<T>>, key: Key, value: &T)
where
    T: Clone,
{
    cache
        .entry(key)
        .or_insert_with(|| Cached {
            value: value.clone(),
            users: 0,
        })
        .users += 1;
}

impl Transport {
    /// A transport with no connection yet, and the server's stream limit.
    async fn new(config: &kube::Config) -> Result<Self, kube::Error> {
        let upgrade = pool(&connector(config, false)?, false);
        let connector = connector(config, true)?;
        let (limit, http2) = match probe_max_streams(&connector, &config.cluster_url).await {
            Ok(Some(n)) => (n.max(1), true),
            // HTTP/1.1: one connection per request, nothing to share.
            Ok(None) => (usize::MAX, false),
            Err(e) => {
                tracing::warn!(server = %config.cluster_url, error = %e, "cannot read the server's HTTP/2 stream limit; assuming {FALLBACK_MAX_STREAMS}");
                (FALLBACK_MAX_STREAMS, false)
            }
        };
        tracing::info!(server = %config.cluster_url, http2, streams_per_connection = limit, "connecting to a cluster");
        Ok(Transport {
            limit,
            slots: Vec::new(),
            proxy: pool(&connector, http2),
            upgrade,
            connector,
            http2,
            next_slot: 0,
            clients: HashMap::new(),
        })
    }
}

struct Slot {
    id: u64,
    pool: Pool,
    reserved: usize,
    /// The watch client of each identity on this connection, shared by its accounts.
    clients: HashMap<Key, Cached<kube::Client>>,
}

/// An account's reservation on a connection; dropping it gives the streams back, and the
/// connection goes when nobody has streams on it.
pub struct StreamLease {
    connections: Arc<Connections>,
    key: Key,
    slot: u64,
    streams: usize,
    /// The identity's clients this lease uses ([`client_key`]), when they are shared.
    client: Option<Key>,
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        let mut transports = self
            .connections
            .transports
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(transport) = transports.get_mut(&self.key) else {
            return;
        };
        if let Some(slot) = transport.slots.iter_mut().find(|s| s.id == self.slot) {
            slot.reserved = slot.reserved.saturating_sub(self.streams);
            if let Some(key) = &self.client {
                release(&mut slot.clients, key);
            }
        }
        if let Some(key) = &self.client {
            release(&mut transport.clients, key);
        }
        transport.slots.retain(|s| s.reserved > 0);
        if transport.slots.is_empty() {
            transports.remove(&self.key);
        }
    }
}

/// The connection an account reserving `streams` goes on: the first whose reservations
/// leave room for it, or `None` for a new one. An account that alone needs more than
/// `limit` gets a connection of its own (a new one).
pub fn place(reserved: &[usize], limit: usize, streams: usize) -> Option<usize> {
    reserved.iter().position(|r| r + streams <= limit)
}

/// The streams an account keeps open: one watch per kind it names (the default set when
/// it names none) and namespace it lists (a namespaced kind is watched in each), and one
/// for its lists and operations, and the watches of what its cluster serves
/// ([`crate::surface`], reserved whether or not the hub asks for them). Cluster-scoped
/// kinds are counted per namespace too: a reservation a little too large costs a
/// connection sooner, one too small a watch that waits — and a list that waits behind
/// watches that never end waits for ever.
///
/// An account whose watches are shared (`shared`: its cluster identity is known, see
/// [`identity_key`]) keeps one stream of its own, for its lists and operations: the
/// shared watches reserve their streams themselves ([`crate::shared`]).
pub fn streams_for(config: &scale_agent_crds::AccountConfig, shared: bool) -> usize {
    if shared {
        return 1;
    }
    let kinds = if config.scope.kinds.is_empty() {
        crate::kinds::DEFAULT_KINDS.len()
    } else {
        config.scope.kinds.len()
    };
    kinds * config.scope.namespaces.len().max(1) + 1 + crate::surface::WATCHES
}

/// What decides how the connection to the account's cluster is made, or `None` when it
/// must not be shared: a client certificate from a file or an exec plugin may change
/// between two accounts' reads, so each such account gets its own.
fn transport_key(config: &kube::Config) -> Option<Key> {
    let auth = &config.auth_info;
    if auth.exec.is_some() || auth.client_certificate.is_some() || auth.client_key.is_some() {
        return None;
    }
    let mut h = Sha256::new();
    let mut field = |tag: &str, bytes: &[u8]| {
        h.update(tag.as_bytes());
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field("url", config.cluster_url.to_string().as_bytes());
    for ca in config.root_cert.iter().flatten() {
        field("ca", ca);
    }
    if let Some(path) = &config.root_cert_file {
        field("ca-file", path.to_string_lossy().as_bytes());
    }
    field("insecure", &[u8::from(config.accept_invalid_certs)]);
    if let Some(name) = &config.tls_server_name {
        field("server-name", name.as_bytes());
    }
    if let Some(proxy) = &config.proxy_url {
        field("proxy", proxy.to_string().as_bytes());
    }
    if let Some(t) = config.connect_timeout {
        field("connect-timeout", &t.as_millis().to_be_bytes());
    }
    if let Some(cert) = &auth.client_certificate_data {
        field("cert", cert.as_bytes());
    }
    if let Some(key) = &auth.client_key_data {
        field("key", key.expose_secret().as_bytes());
    }
    Some(h.finalize().into())
}

/// Who the agent is to the cluster with `config`, as a hash: its connection
/// ([`transport_key`]) and what authenticates its requests (token, token file, basic
/// auth, impersonation, extra headers). Accounts with the same identity see the same
/// objects, so they may share watches ([`crate::shared`]); `None` when it cannot be
/// told: an exec plugin or an auth provider (their tokens may differ between two runs),
/// or a client certificate read from a file. Only the hash is kept; nothing it hashes is
/// ever logged.
pub fn identity_key(config: &kube::Config) -> Option<Key> {
    let auth = &config.auth_info;
    if auth.auth_provider.is_some() {
        return None;
    }
    let transport = transport_key(config)?;
    let mut h = Sha256::new();
    let mut field = |tag: &str, bytes: &[u8]| {
        h.update(tag.as_bytes());
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field("transport", &transport);
    if let Some(user) = &auth.username {
        field("username", user.as_bytes());
    }
    if let Some(password) = &auth.password {
        field("password", password.expose_secret().as_bytes());
    }
    if let Some(token) = &auth.token {
        field("token", token.expose_secret().as_bytes());
    }
    if let Some(file) = &auth.token_file {
        field("token-file", file.as_bytes());
    }
    if let Some(user) = &auth.impersonate {
        field("as", user.as_bytes());
    }
    if let Some(uid) = &auth.impersonate_uid {
        field("as-uid", uid.as_bytes());
    }
    for group in auth.impersonate_groups.iter().flatten() {
        field("as-group", group.as_bytes());
    }
    let mut extra: Vec<_> = auth.impersonate_user_extra.iter().flatten().collect();
    extra.sort();
    for (name, values) in extra {
        field("as-extra", name.as_bytes());
        for v in values {
            field("as-extra-value", v.as_bytes());
        }
    }
    for (name, value) in &config.headers {
        field("header", name.as_str().as_bytes());
        field("header-value", value.as_bytes());
    }
    Some(h.finalize().into())
}

/// Which accounts may share kube clients (and so the state each keeps: its request
/// buffer, its layers): those of one identity ([`identity_key`]: the same server, TLS
/// and credentials) whose clients would be built alike (default namespace, retries).
/// Accounts with other credentials never share one.
fn client_key(identity: &Key, config: &kube::Config) -> Key {
    let mut h = Sha256::new();
    h.update(identity);
    h.update((config.default_namespace.len() as u64).to_be_bytes());
    h.update(config.default_namespace.as_bytes());
    h.update([u8::from(config.default_retry)]);
    h.finalize().into()
}

impl Connections {
    /// The clients of an account with kubeconfig `config` that keeps `streams` open: on a
    /// connection shared with the other accounts of the same transport that has room,
    /// or a new one.
    pub async fn clients(
        self: &Arc<Self>,
        config: &kube::Config,
        streams: usize,
    ) -> Result<AccountClients, kube::Error> {
        // A transport that must not be shared gets a key nobody else has.
        let key = transport_key(config).unwrap_or_else(rand::random);
        let mut fresh = None;
        loop {
            if let Some(reserved) = self.reserve(key, &mut fresh, config, streams) {
                return reserved;
            }
            fresh = Some(Transport::new(config).await?);
        }
    }

    /// Reserves `streams` on a connection of transport `key`, which is `fresh` when it is
    /// not there yet; `None` when it is not there and there is no `fresh` one.
    fn reserve(
        self: &Arc<Self>,
        key: Key,
        fresh: &mut Option<Transport>,
        config: &kube::Config,
        streams: usize,
    ) -> Option<Result<AccountClients, kube::Error>> {
        let mut transports = self.lock();
        let transport = match (transports.entry(key), fresh.take()) {
            (Entry::Occupied(o), _) => o.into_mut(),
            (Entry::Vacant(v), Some(t)) => v.insert(t),
            (Entry::Vacant(_), None) => return None,
        };
        let reserved: Vec<usize> = transport.slots.iter().map(|s| s.reserved).collect();
        let index = match place(&reserved, transport.limit, streams) {
            Some(i) => i,
            None => {
                if streams > transport.limit {
                    tracing::warn!(server = %config.cluster_url, streams, limit = transport.limit, "the account keeps more streams open than one connection to its server carries; some of its watches wait for others to end");
                }
                tracing::info!(server = %config.cluster_url, connections = transport.slots.len() + 1, "another connection to the cluster");
                transport.next_slot += 1;
                transport.slots.push(Slot {
                    id: transport.next_slot,
                    pool: pool(&transport.connector, transport.http2),
                    reserved: 0,
                    clients: HashMap::new(),
                });
                transport.slots.len() - 1
            }
        };
        let slot = &mut transport.slots[index];
        let identity = identity_key(config);
        let shared = identity.map(|identity| client_key(&identity, config));
        // The clients first: a lease dropped here, under the lock, would wait for it.
        // Accounts of one identity share them (on this connection: the watch client).
        let watch = shared.and_then(|k| slot.clients.get(&k).map(|c| c.value.clone()));
        let others = shared.and_then(|k| transport.clients.get(&k).map(|c| c.value.clone()));
        let built = match watch {
            Some(c) => Ok(c),
            None => client(config, slot.pool.clone(), config.default_retry),
        }
        .and_then(|c| match others {
            Some((p, u)) => Ok((c, p, u)),
            None => Ok((
                c,
                client(config, transport.proxy.clone(), false)?,
                client(config, transport.upgrade.clone(), false)?,
            )),
        });
        let (client, proxy, upgrade) = match built {
            Ok(clients) => clients,
            Err(e) => {
                transport.slots.retain(|s| s.reserved > 0);
                return Some(Err(e));
            }
        };
        slot.reserved += streams;
        if let Some(k) = shared {
            keep(&mut slot.clients, k, &client);
            keep(&mut transport.clients, k, &(proxy.clone(), upgrade.clone()));
        }
        let lease = StreamLease {
            connections: self.clone(),
            key,
            slot: slot.id,
            streams,
            client: shared,
        };
        let identity = identity.map(|key| crate::shared::Identity {
            key,
            config: Arc::new(config.clone()),
            server: config.cluster_url.to_string(),
        });
        Some(Ok(AccountClients {
            client,
            proxy,
            upgrade,
            lease,
            identity,
        }))
    }

    /// The watch clients and the proxy and upgrade pairs kept for sharing, over every
    /// transport.
    #[cfg(test)]
    fn shared_clients(&self) -> (usize, usize) {
        let transports = self.lock();
        let watch = transports
            .values()
            .flat_map(|t| &t.slots)
            .map(|s| s.clients.len())
            .sum();
        let others = transports.values().map(|t| t.clients.len()).sum();
        (watch, others)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Transport>> {
        self.transports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The connector of `config`'s transport: kube's TLS settings, ALPN offering h2 then
/// http/1.1, so a server that does not take HTTP/2 answers in 1.1; only http/1.1
/// without `http2` (connection upgrades).
fn connector(
    config: &kube::Config,
    http2: bool,
) -> Result<HttpsConnector<HttpConnector>, kube::Error> {
    let tls = config.rustls_client_config()?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    http.set_nodelay(true);
    let mut builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| {
            kube::Error::RustlsTls(kube::client::RustlsTlsError::InvalidServerName(e))
        })?;
        builder =
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    if http2 {
        Ok(builder.enable_all_versions().wrap_connector(http))
    } else {
        Ok(builder.enable_http1().wrap_connector(http))
    }
}

/// A connection pool of its own: over HTTP/2, one connection. Told that the server
/// speaks HTTP/2, requests that come together while it connects wait for that one
/// connection instead of each opening their own.
fn pool(connector: &HttpsConnector<HttpConnector>, http2: bool) -> Pool {
    hyper_util::client::legacy::Builder::new(TokioExecutor::new())
        .http2_only(http2)
        // Keepalive pings and idle-pool expiry need a timer.
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .http2_keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .http2_initial_connection_window_size(CONNECTION_WINDOW)
        .build(connector.clone())
}

/// A kube client of the account over `pool`: its base URI, authentication and headers.
fn client(config: &kube::Config, pool: Pool, retry: bool) -> Result<kube::Client, kube::Error> {
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(retry.then(|| tower::retry::RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(pool);
    Ok(ClientBuilder::new(service, config.default_namespace.clone()).build())
}

/// The server's HTTP/2 limit of concurrent streams per connection, read from its SETTINGS
/// over a connection of its own; `None` when it does not speak HTTP/2. No credentials
/// are sent: the answer to an anonymous `GET /version` only tells that the SETTINGS,
/// which the server sends first, have arrived.
async fn probe_max_streams(
    connector: &HttpsConnector<HttpConnector>,
    server: &http::Uri,
) -> Result<Option<usize>, tower::BoxError> {
    tokio::time::timeout(PROBE_TIMEOUT, async {
        let stream = connector.clone().oneshot(server.clone()).await?;
        if !stream.connected().is_negotiated_h2() {
            return Ok(None);
        }
        let (send, connection) = h2::client::handshake(TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let mut send = send.ready().await?;
        let mut uri = server.clone().into_parts();
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/version"));
        let request = http::Request::get(http::Uri::from_parts(uri)?).body(())?;
        let (response, _) = send.send_request(request, true)?;
        response.await?;
        let limit = send.current_max_send_streams();
        connection.abort();
        Ok(Some(limit))
    })
    .await
    .map_err(|_| tower::BoxError::from("no answer in time"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_fill_a_connection_before_the_next_one_opens() {
        assert_eq!(place(&[], 100, 16), None);
        assert_eq!(place(&[16], 100, 16), Some(0));
        assert_eq!(place(&[96], 100, 16), None);
        assert_eq!(place(&[96, 16], 100, 16), Some(1));
        // Room freed on the first is used again.
        assert_eq!(place(&[32, 96], 100, 16), Some(0));
        // Too big for any connection: one of its own.
        assert_eq!(place(&[0], 10, 16), None);
    }

    #[test]
    fn an_account_reserves_a_stream_per_watch_and_one_more_and_its_surface_watches() {
        let account = |kinds: &[&str], namespaces: &[&str]| {
            let mut a = scale_agent_crds::AccountConfig::new("a");
            a.scope.namespaces = namespaces.iter().map(|n| n.to_string()).collect();
            a.scope.kinds = kinds.iter().map(|k| k.to_string()).collect();
            a
        };
        let defaults = crate::kinds::DEFAULT_KINDS.len();
        // The CustomResourceDefinitions and APIServices watched for the hub.
        let surface = 2;
        assert_eq!(
            streams_for(&account(&[], &[]), false),
            defaults + 1 + surface
        );
        assert_eq!(
            streams_for(&account(&[], &["a"]), false),
            defaults + 1 + surface
        );
        assert_eq!(
            streams_for(
                &account(&["ConfigMap", "Deployment"], &["a", "b", "c"]),
                false
            ),
            7 + surface
        );
        // Shared watches reserve their own streams: the account keeps one for its lists.
        assert_eq!(streams_for(&account(&[], &["a", "b"]), true), 1);
    }

    fn config(yaml: &str) -> kube::Config {
        let kc = kube::config::Kubeconfig::from_yaml(yaml).expect("kubeconfig");
        futures::executor::block_on(kube::Config::from_custom_kubeconfig(
            kc,
            &kube::config::KubeConfigOptions::default(),
        ))
        .expect("config")
    }

    fn kubeconfig(server: &str, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster:\n    server: {server}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\nusers:\n- name: u\n  user:\n{user}\n"
        )
    }

    #[test]
    fn tokens_share_a_connection_and_certificates_or_servers_do_not() {
        let a = config(&kubeconfig("https://10.0.0.1:6443", "    token: a"));
        let b = config(&kubeconfig("https://10.0.0.1:6443", "    token: b"));
        let other = config(&kubeconfig("https://10.0.0.2:6443", "    token: a"));
        assert!(transport_key(&a).is_some());
        assert_eq!(transport_key(&a), transport_key(&b));
        assert_ne!(transport_key(&a), transport_key(&other));

        let cert = |data: &str| {
            config(&kubeconfig(
                "https://10.0.0.1:6443",
                &format!("    client-certificate-data: {data}\n    client-key-data: {data}"),
            ))
        };
        assert_ne!(transport_key(&cert("Y2VydDE=")), transport_key(&a));
        assert_ne!(
            transport_key(&cert("Y2VydDE=")),
            transport_key(&cert("Y2VydDI="))
        );
        let exec = config(&kubeconfig(
            "https://10.0.0.1:6443",
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: get-token",
        ));
        assert_eq!(transport_key(&exec), None);
    }

    /// A plain-HTTP API server on 127.0.0.1 that answers every request and records the
    /// `Authorization` header each came with.
    async fn recording_server() -> (String, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            buf.drain(..end + 4);
                            let auth = head
                                .lines()
                                .find_map(|l| {
                                    let (name, value) = l.split_once(':')?;
                                    name.eq_ignore_ascii_case("authorization")
                                        .then(|| value.trim().to_owned())
                                })
                                .unwrap_or_default();
                            record.lock().expect("record").push(auth);
                            let body = r#"{"major":"1","minor":"30","gitVersion":"v1.30.0"}"#;
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if conn.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    async fn config_async(yaml: &str) -> kube::Config {
        let kc = kube::config::Kubeconfig::from_yaml(yaml).expect("kubeconfig");
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("config")
    }

    /// Accounts of one identity share their kube clients; an account with another token
    /// to the same server (the same connection) never sends with another's client: each
    /// request carries the account's own token.
    #[tokio::test]
    async fn accounts_share_clients_only_with_the_same_credentials() {
        let (server, seen) = recording_server().await;
        let connections = Arc::new(Connections::default());
        let a = config_async(&kubeconfig(&server, "    token: token-a")).await;
        let b = config_async(&kubeconfig(&server, "    token: token-b")).await;
        let a1 = connections.clients(&a, 1).await.expect("clients");
        let a2 = connections.clients(&a, 1).await.expect("clients");
        let b1 = connections.clients(&b, 1).await.expect("clients");
        // Two identities on one transport: two watch clients, two proxy and upgrade pairs.
        assert_eq!(connections.shared_clients(), (2, 2));
        for (clients, token) in [(&a1, "token-a"), (&a2, "token-a"), (&b1, "token-b")] {
            for c in [&clients.client, &clients.proxy, &clients.upgrade] {
                c.apiserver_version().await.expect("version");
                let sent = seen.lock().expect("seen").pop();
                assert_eq!(sent.as_deref(), Some(format!("Bearer {token}").as_str()));
            }
        }
        // The clients go with the last account that uses them.
        drop(a1);
        assert_eq!(connections.shared_clients(), (2, 2));
        drop(b1);
        assert_eq!(connections.shared_clients(), (1, 1));
        drop(a2);
        assert_eq!(connections.shared_clients(), (0, 0));
    }

    #[test]
    fn accounts_share_watches_only_with_the_same_server_and_credentials() {
        let server = "https://10.0.0.1:6443";
        let a = config(&kubeconfig(server, "    token: a"));
        // The same credentials in another kubeconfig: one identity.
        assert!(identity_key(&a).is_some());
        assert_eq!(
            identity_key(&a),
            identity_key(&config(&kubeconfig(server, "    token: a")))
        );
        // Another token shares the connection, never the watches: its rights may differ.
        let b = config(&kubeconfig(server, "    token: b"));
        assert_eq!(transport_key(&a), transport_key(&b));
        assert_ne!(identity_key(&a), identity_key(&b));
        for other in [
            kubeconfig("https://10.0.0.2:6443", "    token: a"),
            kubeconfig(server, "    token: a\n    as: someone"),
            kubeconfig(server, "    username: u\n    password: p"),
            kubeconfig(server, "    tokenFile: /var/run/token"),
            kubeconfig(
                server,
                "    client-certificate-data: Y2VydDE=\n    client-key-data: a2V5MQ==",
            ),
        ] {
            assert_ne!(identity_key(&config(&other)), identity_key(&a), "{other}");
        }
        let cert = |key: &str| {
            identity_key(&config(&kubeconfig(
                server,
                &format!("    client-certificate-data: Y2VydDE=\n    client-key-data: {key}"),
            )))
        };
        assert_ne!(cert("a2V5MQ=="), cert("a2V5Mg=="));
        // Tokens an exec plugin gives may differ from one run to the next: never shared.
        let exec = config(&kubeconfig(
            server,
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: get-token",
        ));
        assert_eq!(identity_key(&exec), None);
    }
}
