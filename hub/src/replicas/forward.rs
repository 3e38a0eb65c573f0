//! Any replica answers any request: a request about an account whose stream
//! another replica holds is forwarded there, one hop.
//!
//! [`route`] is the one place that answers "where is account X held, and
//! forward this HTTP request there", for the JSON API ([`json_api`], a
//! middleware in front of its per-account routes) and the Kubernetes API of
//! the accounts alike:
//! - held by a session of this replica (or a single hub): served here;
//! - held by another replica that heartbeats: forwarded to it, and its answer
//!   streamed back (watches too), marked `x-scale-agent-served-by`;
//! - held by a replica that stopped heartbeating, or the store cannot say:
//!   503 with the reason and `Retry-After` (the agent is reconnecting to a
//!   live replica, which will then answer).
//!
//! A forwarded request carries `x-scale-agent-forwarded-by: <replica>`. A
//! replica receiving one for an account it does not hold answers 503 (the
//! account moved meanwhile) instead of forwarding again, so a request makes
//! at most one hop and never loops. The header grants nothing: a client that
//! sets it only loses forwarding.
//!
//! Forwarded requests keep the caller's own credentials (the API's bearer
//! token, or the account token of the Kubernetes API), and the holder checks
//! them again (the account's token, its namespaces, impersonation): a replica
//! gets nothing through another that it would not get directly.
//!
//! The Kubernetes API is forwarded only over TLS, to a holder whose
//! certificate chains to the replicas' CA (`--kube-api-replica-ca`): the
//! caller's bearer token goes to no process that cannot prove it is a hub
//! replica, whatever the store names as the holder's address. Without that CA
//! (or to a holder serving plain HTTP) a request for an account held elsewhere
//! gets 503 saying so. A forwarded answer streams through as it comes
//! (watches, `logs -f`): the client's reading paces the holder's sending, and
//! a client that goes away closes the forwarded connection, which ends the
//! request at the holder. A connection upgrade (exec, attach, port-forward)
//! is forwarded with its `Upgrade`, and when the holder switches protocols
//! the two connections are joined byte for byte ([`splice`]): the holder
//! keeps the session's limits, and either end closing closes the other.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::middleware::Next;
use axum::response::IntoResponse as _;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tracing::{debug, warn};

use crate::core::clip::clip;
use crate::state::Shared;

/// Marks a request one replica forwarded to another (its value names the
/// forwarding replica).
pub const FORWARDED_BY: &str = "x-scale-agent-forwarded-by";

/// Names the replica that answered a forwarded request.
pub const SERVED_BY: &str = "x-scale-agent-served-by";

/// How long a replica may take to accept a forwarded connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A forwarded request's body.
pub type ForwardBody = UnsyncBoxBody<Bytes, BoxError>;

/// Which of the holder's listeners a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The JSON API (`--http-addr`).
    Api,
    /// The accounts' Kubernetes API.
    KubeApi,
}

/// Where an account's requests are answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Here.
    Here,
    /// At another replica.
    Replica {
        /// Its id.
        id: String,
        /// The base URL of the endpoint there.
        url: String,
    },
    /// Nowhere now; why (503).
    Unavailable(String),
}

/// A request that could not be served nor forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The status to answer.
    pub status: StatusCode,
    /// A sentence saying why.
    pub message: String,
}

/// What became of a request.
#[derive(Debug)]
pub enum Routed<B> {
    /// Serve it here.
    Here(Request<B>),
    /// Another replica answered it.
    Answered(Response<Incoming>),
    /// Answer this.
    Refused(Refused),
}

/// The HTTP clients replicas forward with: plain HTTP for the JSON API, TLS
/// checked against the replicas' CA for the Kubernetes API.
#[derive(Debug, Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, ForwardBody>,
    /// `None` without `--kube-api-replica-ca`: Kubernetes API requests are not
    /// forwarded.
    kube: Option<Client<HttpsConnector<HttpConnector>, ForwardBody>>,
}

impl Default for Forwarder {
    fn default() -> Self {
        Forwarder {
            client: client(tcp()),
            kube: None,
        }
    }
}

fn tcp() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    connector
}

fn client<C>(connector: C) -> Client<C, ForwardBody>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

impl Forwarder {
    /// The forwarder `config` asks for: Kubernetes API requests too when it
    /// serves that API with `--kube-api-replica-ca`.
    pub fn for_config(config: &crate::Config) -> Result<Forwarder, crate::Error> {
        let Some(path) = config.kube_api.as_ref().and_then(|k| k.replica_ca.as_ref()) else {
            return Ok(Forwarder::default());
        };
        let pem = std::fs::read(path).map_err(|e| crate::Error::Tls {
            message: format!("--kube-api-replica-ca {}: {e}", path.display()),
        })?;
        Forwarder::with_kube_api(&pem)
    }

    /// A forwarder that also forwards Kubernetes API requests, over TLS to
    /// holders whose certificate chains to `replica_ca` (a PEM bundle).
    pub fn with_kube_api(replica_ca: &[u8]) -> Result<Forwarder, crate::Error> {
        let invalid = |message: String| crate::Error::Tls {
            message: format!("--kube-api-replica-ca: {message}"),
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(replica_ca) {
            roots
                .add(cert.map_err(|e| invalid(e.to_string()))?)
                .map_err(|e| invalid(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(invalid("no PEM certificate".into()));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = tcp();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        Ok(Forwarder {
            kube: Some(client(connector)),
            ..Forwarder::default()
        })
    }
}

/// Where `account`'s requests to `endpoint` are answered.
pub async fn locate(shared: &Shared, account: &str, endpoint: Endpoint) -> Holder {
    let Some(replicas) = shared.replicas.as_ref() else {
        return Holder::Here;
    };
    let streamed_here = || {
        shared
            .core()
            .registry
            .get(account)
            .and_then(|a| a.session.clone())
            .is_some_and(|s| shared.is_live(&s))
    };
    if replicas.claim_of(account).is_some() && streamed_here() {
        return Holder::Here;
    }
    let me = replicas.id();
    let rows = replicas
        .store()
        .accounts_named(&[account.to_owned()], replicas.timing().timeout)
        .await;
    let row = match rows {
        Ok(mut rows) => match rows.pop() {
            Some(row) => row,
            // Unknown everywhere: answered here (404).
            None => return Holder::Here,
        },
        Err(err) => {
            if shared.core().registry.get(account).is_some() {
                return Holder::Here;
            }
            return Holder::Unavailable(format!(
                "cannot tell which hub replica holds account {account}: {err}"
            ));
        }
    };
    if row.holder == me {
        if shared.core().registry.get(account).is_some() {
            return Holder::Here;
        }
        // Held by this replica's previous run (a restart under the same id):
        // its copy is gone with it.
        return Holder::Unavailable(format!(
            "account {account} was held by this hub replica before it restarted and is Disconnected; its objects are back when its agent reconnects"
        ));
    }
    if !row.holder_alive {
        return Holder::Unavailable(format!(
            "account {account} was held by hub replica {}, which stopped heartbeating; its agent reconnects to another replica, retry shortly",
            row.holder
        ));
    }
    let url = match endpoint {
        Endpoint::Api => row.holder_api_url,
        Endpoint::KubeApi => row.holder_kube_api_url,
    }
    .unwrap_or_default();
    if url.is_empty() {
        return Holder::Unavailable(format!(
            "account {account} is held by hub replica {}, which does not serve this API",
            row.holder
        ));
    }
    Holder::Replica {
        id: row.holder,
        url,
    }
}

fn unavailable(message: String) -> Refused {
    Refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message,
    }
}

/// Serves `request` about `account` here when this replica holds it, or
/// forwards it to the replica that does (see the module documentation).
pub async fn route<B>(
    shared: &Shared,
    account: &str,
    endpoint: Endpoint,
    request: Request<B>,
) -> Routed<B>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Some(replicas) = shared.replicas.as_ref() else {
        return Routed::Here(request);
    };
    let (id, url) = match locate(shared, account, endpoint).await {
        Holder::Here => return Routed::Here(request),
        Holder::Unavailable(message) => return Routed::Refused(unavailable(message)),
        Holder::Replica { id, url } => (id, url),
    };
    if let Some(from) = request.headers().get(FORWARDED_BY) {
        let from = clip(from.to_str().unwrap_or("?")).to_string();
        shared.metrics.forwarded("refused_second_hop");
        return Routed::Refused(unavailable(format!(
            "account {account} is not held by hub replica {} (it moved to {id} while replica {from} forwarded the request here); retry",
            replicas.id()
        )));
    }
    if endpoint == Endpoint::KubeApi
        && let Err(why) = replicas.forwarder.kube_api_refusal(&url)
    {
        shared.metrics.forwarded("refused_insecure");
        return Routed::Refused(unavailable(format!(
            "account {account} is held by hub replica {id}, and {why}; send the request to that replica, or see docs/clouddriver.md (several hub replicas)"
        )));
    }
    match forward(
        &replicas.forwarder,
        endpoint,
        &replicas.id(),
        &id,
        &url,
        request,
    )
    .await
    {
        Ok(response) => {
            shared.metrics.forwarded("forwarded");
            Routed::Answered(response)
        }
        Err(message) => {
            shared.metrics.forwarded("failed");
            warn!(%account, replica = %id, %url, %message, "could not forward the request to the replica holding the account");
            Routed::Refused(unavailable(format!(
                "account {account} is held by hub replica {id}, which did not answer ({message}); retry (an operation posted again with the same id runs at most once)"
            )))
        }
    }
}

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

impl Forwarder {
    /// Why a Kubernetes API request cannot go to the holder at `url`, if it
    /// cannot: only over TLS, checked against the replicas' CA.
    fn kube_api_refusal(&self, url: &str) -> Result<(), &'static str> {
        if self.kube.is_none() {
            return Err(
                "this replica forwards Kubernetes API requests only with --kube-api-replica-ca (the CA the replicas' certificates chain to)",
            );
        }
        if !url.starts_with("https://") {
            return Err(
                "that replica serves the Kubernetes API without TLS: requests with bearer tokens are not forwarded in the clear",
            );
        }
        Ok(())
    }
}

async fn forward<B>(
    forwarder: &Forwarder,
    endpoint: Endpoint,
    me: &str,
    to: &str,
    base: &str,
    request: Request<B>,
) -> Result<Response<Incoming>, String>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = format!("{}{path}", base.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("bad URL {base}{path}: {e}"))?;
    let upgrade = parts.headers.get(header::UPGRADE).cloned();
    for name in HOP_BY_HOP.iter().chain([&header::HOST]) {
        parts.headers.remove(name);
    }
    if let Some(protocol) = upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        parts.headers.insert(header::UPGRADE, protocol);
    }
    parts.version = http::Version::HTTP_11;
    parts.headers.insert(
        FORWARDED_BY,
        HeaderValue::from_str(me).map_err(|e| e.to_string())?,
    );
    let body = body.map_err(Into::into).boxed_unsync();
    debug!(replica = %to, %path, "forwarding");
    let request = Request::from_parts(parts, body);
    let sent = match (endpoint, &forwarder.kube) {
        (Endpoint::KubeApi, Some(kube)) => kube.request(request).await,
        (Endpoint::KubeApi, None) => return Err("no TLS client for the Kubernetes API".into()),
        (Endpoint::Api, _) => forwarder.client.request(request).await,
    };
    let mut response = sent.map_err(|e| error_chain(&e))?;
    for name in &HOP_BY_HOP {
        response.headers_mut().remove(name);
    }
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(SERVED_BY, value);
    }
    Ok(response)
}

/// Joins a client's connection, upgraded once this replica answers with
/// `response` (the holder's `101`), to the holder's upgraded connection, byte
/// for byte, until either end closes. `response` gets the `Upgrade` the client
/// asked for back (hop-by-hop headers are not forwarded).
pub fn splice(
    account: &str,
    client: hyper::upgrade::OnUpgrade,
    response: &mut Response<Incoming>,
    protocol: Option<&str>,
) {
    let holder = hyper::upgrade::on(&mut *response);
    if let Some(value) = protocol.and_then(|p| HeaderValue::from_str(p).ok()) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        response.headers_mut().insert(header::UPGRADE, value);
    }
    let account = account.to_owned();
    tokio::spawn(async move {
        let (client, holder) = match (client.await, holder.await) {
            (Ok(c), Ok(h)) => (c, h),
            (c, h) => {
                debug!(%account, client = c.is_ok(), holder = h.is_ok(), "a forwarded upgrade was not taken over on both sides");
                return;
            }
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut holder = hyper_util::rt::TokioIo::new(holder);
        match tokio::io::copy_bidirectional(&mut client, &mut holder).await {
            Ok((up, down)) => debug!(%account, up, down, "forwarded upgraded connection closed"),
            Err(err) => debug!(%account, %err, "forwarded upgraded connection broke off"),
        }
    });
}

/// An error and its causes, `: `-separated (a TLS refusal is a cause of the
/// client's "connect error").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The account a JSON API path is about: `/v1/accounts/{account}[/...]`.
pub fn account_in_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1/accounts/")?;
    let segment = rest.split('/').next().filter(|s| !s.is_empty())?;
    Some(
        percent_encoding::percent_decode_str(segment)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// The JSON API's per-account requests, served by the replica holding the
/// account (see [`route`]).
pub async fn json_api(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: Next,
) -> axum::response::Response {
    let Some(account) = account_in_path(request.uri().path()) else {
        return next.run(request).await;
    };
    match route(&shared, &account, Endpoint::Api, request).await {
        Routed::Here(request) => next.run(request).await,
        Routed::Answered(response) => response.map(axum::body::Body::new),
        Routed::Refused(refused) => (
            refused.status,
            [(header::RETRY_AFTER, "1")],
            Json(serde_json::json!({ "error": refused.message })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_of_a_json_api_path() {
        assert_eq!(
            account_in_path("/v1/accounts/prod-1"),
            Some("prod-1".into())
        );
        assert_eq!(
            account_in_path("/v1/accounts/prod%3A1/objects/ConfigMap/a/b"),
            Some("prod:1".into())
        );
        assert_eq!(account_in_path("/v1/accounts"), None);
        assert_eq!(account_in_path("/v1/accounts/"), None);
        assert_eq!(account_in_path("/metrics"), None);
    }
}
