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
//! sets it only loses forwarding (and, on the Kubernetes API, is refused 403
//! unless it is the replica it names).
//!
//! Forwarded requests keep the caller's own credentials (the API's bearer
//! token, or the account token of the Kubernetes API), and the holder checks
//! them again (the account's token, its namespaces, impersonation): a replica
//! gets nothing through another that it would not get directly.
//!
//! Requests are forwarded only over TLS, and both replicas prove which
//! replica they are (`--kube-api-replica-ca`): each replica's Kubernetes API
//! certificate chains to the replicas' CA and names it
//! (`spiffe://scaleagent.dev/hub/<replica id>`). The forwarding replica accepts
//! the holder only when its certificate names the replica the store says holds
//! the account ([`HolderVerifier`]): an address in the database grants nothing,
//! and a row pointing at another process, even one with a valid certificate of
//! another replica, gets no caller's token. It presents its own certificate as
//! a client certificate, and the holder serves a request marked forwarded only
//! from a connection whose certificate names the replica the mark names
//! ([`check_forwarded`]). Without that CA (or to a holder serving plain HTTP) a
//! request for an account held elsewhere gets 503 saying so.
//!
//! The JSON API goes the same way, on the same connections: its listener serves
//! plain HTTP, so a JSON API request is forwarded to the holder's *Kubernetes
//! API* listener (TLS, the replicas' identities), which serves a JSON API path
//! only to a request marked forwarded by the replica its connection's
//! certificate names ([`serve_forwarded_json_api`]). No caller's token ever
//! goes in the clear, nor to an address the store names without that address
//! proving it is the holder.
//!
//! A forwarded answer streams through as it comes
//! (watches, `logs -f`): the client's reading paces the holder's sending, and
//! a client that goes away closes the forwarded connection, which ends the
//! request at the holder. A connection upgrade (exec, attach, port-forward)
//! is forwarded with its `Upgrade`, and when the holder switches protocols
//! the two connections are joined byte for byte ([`splice`]): the holder
//! keeps the session's limits, and either end closing closes the other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use tracing::{debug, warn};

use crate::core::clip::clip;
use crate::net::identity::check_replica;
use crate::net::tls::TlsConfig;
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

/// The HTTP clients replicas forward with (both APIs): TLS both ways under the
/// replicas' CA.
#[derive(Debug, Clone, Default)]
pub struct Forwarder {
    /// `None` without `--kube-api-replica-ca`: nothing is forwarded.
    kube: Option<Arc<KubeForwarding>>,
}

type KubeClient = Client<HttpsConnector<HttpConnector>, ForwardBody>;

/// The most holders a replica keeps a Kubernetes API client for; past it they are
/// all made again (a store naming ever new holders cannot grow this).
const MAX_HOLDER_CLIENTS: usize = 64;

/// Kubernetes API requests to other replicas: the replicas' CA, this replica's own
/// certificate, and one client per holder, whose connections were checked to reach
/// that replica (never one checked for another: connections are pooled per client).
struct KubeForwarding {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    identity: Arc<Identity>,
    clients: Mutex<HashMap<String, KubeClient>>,
}

impl std::fmt::Debug for KubeForwarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeForwarding").finish_non_exhaustive()
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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Forwarder {
    /// The forwarder `config` asks for: Kubernetes API requests too when it
    /// serves that API with `--kube-api-replica-ca`, this replica proving itself
    /// with the API's certificate.
    pub fn for_config(config: &crate::Config) -> Result<Forwarder, crate::Error> {
        let Some(api) = config.kube_api.as_ref() else {
            return Ok(Forwarder::default());
        };
        let Some(path) = api.replica_ca.as_ref() else {
            return Ok(Forwarder::default());
        };
        let pem = std::fs::read(path).map_err(|e| crate::Error::Tls {
            message: format!("--kube-api-replica-ca {}: {e}", path.display()),
        })?;
        let Some(tls) = api.tls.as_ref().or(config.tls.as_ref()) else {
            return Err(crate::Error::Setting {
                setting: "--kube-api-replica-ca",
                message: "replicas forward Kubernetes API requests to each other over TLS, each proving which replica it is with its certificate: serve the Kubernetes API with TLS (--kube-api-tls-cert, or the hub's --tls-cert)".into(),
            });
        };
        Forwarder::with_kube_api(&pem, tls, &config.hub_id, config.reload_interval)
    }

    /// A forwarder that also forwards Kubernetes API requests, over TLS to
    /// holders whose certificate chains to `replica_ca` (a PEM bundle) and names
    /// the holder, presenting `identity` (this replica's certificate, which must
    /// name `me`; its files re-read every `reload`).
    pub fn with_kube_api(
        replica_ca: &[u8],
        identity: &TlsConfig,
        me: &str,
        reload: Duration,
    ) -> Result<Forwarder, crate::Error> {
        let roots = crate::net::tls::roots_of(replica_ca, "--kube-api-replica-ca")?;
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| crate::Error::Tls {
            message: format!("--kube-api-replica-ca: {e}"),
        })?;
        let identity = Identity::new(identity, me, reload)?;
        Ok(Forwarder {
            kube: Some(Arc::new(KubeForwarding {
                webpki,
                identity: Arc::new(identity),
                clients: Mutex::default(),
            })),
        })
    }
}

impl KubeForwarding {
    /// The client whose connections reach replica `holder` only.
    fn client_for(&self, holder: &str) -> Result<KubeClient, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(holder) {
            return Ok(client.clone());
        }
        if clients.len() >= MAX_HOLDER_CLIENTS {
            clients.clear();
        }
        let verifier = Arc::new(HolderVerifier {
            webpki: Arc::clone(&self.webpki),
            holder: holder.to_owned(),
        });
        let identity: Arc<dyn ResolvesClientCert> = self.identity.clone();
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(identity);
        let mut http = tcp();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let made = client(connector);
        clients.insert(holder.to_owned(), made.clone());
        Ok(made)
    }
}

/// Checks a holder's certificate as any server's (chained to the replicas' CA,
/// valid now, naming the address connected to), and that it names `holder`, the
/// replica the store says holds the account.
#[derive(Debug)]
struct HolderVerifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    holder: String,
}

impl ServerCertVerifier for HolderVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check_replica(end_entity, &self.holder).map_err(|why| {
            rustls::Error::General(format!(
                "the server at this address is not the hub replica the store names: its certificate {why}"
            ))
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// This replica's certificate as the client certificate of its forwarded
/// requests: the Kubernetes API's, re-read from its files at most every reload
/// interval when a handshake needs it (a renewed certificate is used from then on).
#[derive(Debug)]
struct Identity {
    me: String,
    files: Option<crate::net::tls::TlsFiles>,
    reload: Duration,
    current: Mutex<(Arc<CertifiedKey>, Instant)>,
}

impl Identity {
    fn new(tls: &TlsConfig, me: &str, reload: Duration) -> Result<Identity, crate::Error> {
        let certified = certified_key(tls, me)?;
        Ok(Identity {
            me: me.to_owned(),
            files: tls.files.clone().map(|f| crate::net::tls::TlsFiles {
                client_ca: None,
                ..f
            }),
            reload,
            current: Mutex::new((certified, Instant::now())),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(files) = &self.files
            && current.1.elapsed() >= self.reload
        {
            current.1 = Instant::now();
            match files.read().and_then(|tls| certified_key(&tls, &self.me)) {
                Ok(next) => current.0 = next,
                Err(err) => {
                    warn!(%err, "cannot use this replica's Kubernetes API certificate files as its identity to the other replicas; the certificate loaded before stays in use");
                }
            }
        }
        Arc::clone(&current.0)
    }
}

impl ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `tls`'s certificate and key as rustls signs with them, once its certificate is
/// seen to name replica `me`.
fn certified_key(tls: &TlsConfig, me: &str) -> Result<Arc<CertifiedKey>, crate::Error> {
    let (certs, key) = tls.certified()?;
    let named = match certs.first() {
        Some(cert) => check_replica(cert, me),
        None => Err("is missing".to_owned()),
    };
    if let Err(why) = named {
        return Err(crate::Error::Setting {
            setting: "--kube-api-replica-ca",
            message: format!(
                "this replica's Kubernetes API certificate is its identity to the other replicas (it presents it when it forwards a request to them, they check it when they forward one to it), and it {why}: give it the URI SAN {} and start the replica with that --hub-id",
                scale_agent_crds::hub_replica_identity_uri(me)
            ),
        });
    }
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| crate::Error::Tls {
            message: format!("the Kubernetes API's private key: {e}"),
        })?;
    Ok(Arc::new(CertifiedKey::new(certs, signer)))
}

/// Whether a request marked forwarded ([`FORWARDED_BY`]) comes from the replica
/// the mark names: its connection's client certificate (chained to the replicas'
/// CA, checked at the handshake) must name that replica. An unmarked request
/// passes. Why not otherwise.
pub fn check_forwarded(
    headers: &http::HeaderMap,
    peer: Option<&CertificateDer<'_>>,
) -> Result<(), String> {
    let Some(from) = headers.get(FORWARDED_BY) else {
        return Ok(());
    };
    let from = String::from_utf8_lossy(from.as_bytes());
    let Some(cert) = peer else {
        return Err(format!(
            "this request says hub replica {} forwarded it ({FORWARDED_BY}), but its connection has no hub replica's certificate (chained to --kube-api-replica-ca): only replicas forward requests",
            clip(&from)
        ));
    };
    check_replica(cert, &from).map_err(|why| {
        format!(
            "this request says hub replica {} forwarded it ({FORWARDED_BY}), but the certificate of its connection {why}",
            clip(&from)
        )
    })
}

/// Whether `headers` mark a request forwarded by the replica its connection's
/// certificate (`peer`) names.
pub fn from_replica(headers: &http::HeaderMap, peer: Option<&CertificateDer<'_>>) -> bool {
    headers.contains_key(FORWARDED_BY) && check_forwarded(headers, peer).is_ok()
}

/// Whether `request`, come to the Kubernetes API listener, is a JSON API request
/// another replica forwarded there (see [`serve_forwarded_json_api`]).
pub fn is_forwarded_json_api<B>(request: &Request<B>) -> bool {
    request.headers().contains_key(FORWARDED_BY) && account_in_path(request.uri().path()).is_some()
}

/// Serves with `json_api` (the JSON API's router, its token check included) a JSON
/// API request another replica forwarded to this one's Kubernetes API listener, once
/// its connection's certificate (`peer`) names the replica its mark names; 403
/// otherwise.
pub async fn serve_forwarded_json_api<B>(
    shared: &Shared,
    json_api: axum::Router,
    request: Request<B>,
    peer: Option<&CertificateDer<'_>>,
) -> axum::response::Response
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if let Err(why) = check_forwarded(request.headers(), peer) {
        shared.metrics.forwarded("refused_unproven");
        warn!(%why, "refused a JSON API request marked as forwarded by a hub replica");
        return (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({ "error": why })),
        )
            .into_response();
    }
    let service = hyper_util::service::TowerToHyperService::new(json_api);
    let request = request.map(axum::body::Body::new);
    match hyper::service::Service::call(&service, request).await {
        Ok(response) => response,
        Err(never) => match never {},
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
    // Both APIs are forwarded to the holder's Kubernetes API listener: the one
    // served over TLS with the replica's identity (see the module documentation).
    let url = row.holder_kube_api_url.unwrap_or_default();
    if url.is_empty() {
        let why = match endpoint {
            Endpoint::Api => {
                "which serves no Kubernetes API (--kube-api-addr), where the replicas forward each other's requests over TLS"
            }
            Endpoint::KubeApi => "which does not serve this API",
        };
        return Holder::Unavailable(format!(
            "account {account} is held by hub replica {}, {why}",
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
    if let Err(why) = replicas.forwarder.refusal(&url) {
        shared.metrics.forwarded("refused_insecure");
        return Routed::Refused(unavailable(format!(
            "account {account} is held by hub replica {id}, and {why}; send the request to that replica, or see docs/clouddriver.md (several hub replicas)"
        )));
    }
    match forward(&replicas.forwarder, &replicas.id(), &id, &url, request).await {
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
    /// Why a request cannot go to the holder at `url`, if it cannot: only over
    /// TLS, checked against the replicas' CA.
    fn refusal(&self, url: &str) -> Result<(), &'static str> {
        if self.kube.is_none() {
            return Err(
                "this replica forwards requests (with their callers' tokens) only with --kube-api-replica-ca, the CA the replicas' certificates chain to, to the holder proving which replica it is",
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
    let Some(kube) = &forwarder.kube else {
        return Err("no TLS client for the other replicas".into());
    };
    let sent = kube.client_for(to)?.request(request).await;
    let mut response = sent.map_err(|e| crate::error::chain(&e))?;
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
