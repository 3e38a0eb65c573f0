//! Clouddriver's account storage API (`/credentials`), as the hub calls it: HTTP or
//! HTTPS (the system's roots, or `--clouddriver-ca-file`), every request naming the
//! hub's user in `X-SPINNAKER-USER` (Clouddriver's `AuthenticatedRequest` reads it; with
//! Fiat on, that user needs to be an account manager).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as Legacy;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::Value;

use super::definition::Action;
use crate::core::clip::clip;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Definitions asked for per page (Clouddriver's default is 100).
const PAGE: usize = 100;

/// Why a call did not go through.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer (connection refused, TLS, timeout).
    #[error("Clouddriver at {url} did not answer: {message}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// Why.
        message: String,
    },
    /// Clouddriver answered with an error.
    #[error("Clouddriver answered {status} to {method} {path}: {message}")]
    Refused {
        /// The request method.
        method: Method,
        /// The path.
        path: String,
        /// The status.
        status: StatusCode,
        /// Its message, clipped; withheld when it quotes a definition (whose kubeconfig
        /// holds a token).
        message: String,
    },
    /// An answer that is not what the API returns.
    #[error("Clouddriver's answer to {path} is not a list of definitions: {message}")]
    Malformed {
        /// The path.
        path: String,
        /// Why.
        message: String,
    },
}

impl CallError {
    /// A word for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallError::Unreachable { .. } => "unreachable",
            CallError::Refused { .. } => "refused",
            CallError::Malformed { .. } => "malformed",
        }
    }
}

/// The message of an error answer, safe to log: Spring's `message`, clipped, unless it
/// quotes a definition.
fn safe_message(body: &[u8]) -> String {
    let text = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    if text.contains("kubeconfig") || text.contains("sa1.") || text.contains("token") {
        return "(the message quotes the definition, which holds a token: not shown)".into();
    }
    clip(&text).to_string()
}

/// A client of one Clouddriver.
#[derive(Clone)]
pub struct Client {
    http: Legacy<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    user: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the Clouddriver at `base` (`http://` or `https://`), trusting
    /// `ca_pem` for HTTPS when given, else the system's roots.
    pub fn new(base: &str, user: &str, ca_pem: Option<&[u8]>) -> Result<Client, String> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("{base:?} is not an http:// or https:// URL"));
        }
        let mut roots = rustls::RootCertStore::empty();
        match ca_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| format!("the CA file: {e}"))?;
                    roots.add(cert).map_err(|e| format!("the CA file: {e}"))?;
                }
                if roots.is_empty() {
                    return Err("the CA file holds no certificate".into());
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // A system root rustls cannot use is skipped, as kube and curl do.
                    let _ = roots.add(cert);
                }
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Client {
            http: Legacy::builder(TokioExecutor::new()).build(connector),
            base,
            user: user.to_owned(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Bytes, CallError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |message: String| CallError::Unreachable {
            url: url.clone(),
            message,
        };
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header("X-SPINNAKER-USER", &self.user)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| unreachable(e.to_string()))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let response = self.http.request(request).await.map_err(|e| {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    message = format!("{message}: {s}");
                    source = s.source();
                }
                message
            })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        })
        .await
        .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))?
        .map_err(unreachable)?;
        let (status, body) = response;
        if status.is_success() {
            Ok(body)
        } else {
            Err(CallError::Refused {
                method,
                path: path.to_owned(),
                status,
                message: safe_message(&body),
            })
        }
    }

    /// Every `kubernetes` definition, page by page (`startingAccountName` is inclusive).
    pub async fn list(&self) -> Result<Vec<Value>, CallError> {
        let mut out: Vec<Value> = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let mut path = format!("/credentials/type/kubernetes?limit={PAGE}");
            if let Some(s) = &start {
                path.push_str("&startingAccountName=");
                path.push_str(
                    &percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                        .to_string(),
                );
            }
            let body = self.call(Method::GET, &path, None).await?;
            let page: Vec<Value> =
                serde_json::from_slice(&body).map_err(|e| CallError::Malformed {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            let full = page.len() >= PAGE;
            let mut last = None;
            for definition in page {
                let name = definition
                    .get("name")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if name.is_some() && name == start {
                    // The first of a next page is the last of the one before.
                    continue;
                }
                last = name;
                out.push(definition);
            }
            match last {
                Some(name) if full => start = Some(name),
                _ => return Ok(out),
            }
        }
    }

    /// Makes one change.
    pub async fn apply(&self, action: &Action) -> Result<(), CallError> {
        let name = percent_encoding::utf8_percent_encode(
            action.account(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        match action {
            Action::Create(d) => self.call(Method::POST, "/credentials", Some(d)).await,
            Action::Update(d) => {
                self.call(Method::PUT, &format!("/credentials/{name}"), Some(d))
                    .await
            }
            Action::Delete(_) => {
                self.call(Method::DELETE, &format!("/credentials/{name}"), None)
                    .await
            }
            Action::Foreign(_) => return Ok(()),
        }
        .map(|_| ())
    }
}
