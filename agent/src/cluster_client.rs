//! One connection per cluster: the Kubernetes client of an account, speaking HTTP/2 when
//! the API server offers it (ALPN `h2`, as every kube-apiserver over TLS does), so that
//! every watch, list and operation of the account shares one multiplexed connection, as
//! client-go does (the hub's Kubernetes API requests get a second one, see [`clients`]). kube's default client speaks HTTP/1.1 only, which takes one
//! connection per open watch: about fifteen per account. A server that does not offer
//! `h2` (plain `http://`, or a proxy in front that speaks HTTP/1.1 only) is spoken to in
//! HTTP/1.1, as before.
//!
//! The stack is kube's own, from the same `kube::Config`: its TLS settings (CA, client
//! certificate, server name), base URI, authentication and extra headers, and its
//! retry of server errors; only the connector and the HTTP client differ.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ClientBuilder, ConfigExt};
use tower::ServiceBuilder;

/// How often an idle HTTP/2 connection is pinged: a dead one is noticed, and no load
/// balancer in between closes it for idleness.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is taken for dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the account's two clients from its kubeconfig's `config`, each with a
/// connection pool of its own: the agent's (retrying server errors, as kube does), whose
/// one HTTP/2 connection carries every watch, and the one that carries the hub's
/// Kubernetes API requests ([`crate::proxy`]), which never retries, so a caller's
/// request reaches the cluster at most once. Separate connections, because HTTP/2 flow
/// control is per connection too: a caller that stops reading a large answer must not
/// hold the account's watches back. The second connection opens only when the first
/// such request comes.
pub fn clients(config: kube::Config) -> Result<(kube::Client, kube::Client), kube::Error> {
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
    // ALPN offers h2, then http/1.1: a server that does not take HTTP/2 answers in 1.1.
    let connector = builder.enable_all_versions().wrap_connector(http);
    let pool = || -> hyper_util::client::legacy::Client<_, Body> {
        hyper_util::client::legacy::Builder::new(TokioExecutor::new())
            // Keepalive pings and idle-pool expiry need a timer.
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .http2_keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .http2_keep_alive_while_idle(true)
            .build(connector.clone())
    };
    let build = |retry: bool| -> Result<kube::Client, kube::Error> {
        let service = ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(retry.then(|| tower::retry::RetryLayer::new(RetryPolicy::server_retry())))
            .option_layer(config.auth_layer()?)
            .layer(config.extra_headers_layer()?)
            .map_err(tower::BoxError::from)
            .service(pool());
        Ok(ClientBuilder::new(service, config.default_namespace.clone()).build())
    };
    Ok((build(config.default_retry)?, build(false)?))
}
