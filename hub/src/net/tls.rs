//! The gRPC listener: TCP accept, TLS (rustls) with material that can be
//! swapped while serving, and the connect info (peer address, verified client
//! certificate) every request carries.
//!
//! The hub serves TLS itself rather than through tonic's `ServerTlsConfig` so
//! that rotated certificates, keys and client CAs take effect without a
//! restart: each new handshake uses the `ServerConfig` current at accept time,
//! and established connections (with their streams) keep the one they were
//! made with.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::{debug, info, warn};

use crate::Error;
use crate::net::identity::PeerInfo;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for the gRPC server to pick them up.
const ACCEPT_QUEUE: usize = 128;

/// TLS for the gRPC server, as PEM bytes, and optionally the files they came
/// from (then reloaded when they change).
#[derive(Clone)]
pub struct TlsConfig {
    /// Certificate chain the server presents.
    pub cert_pem: Vec<u8>,
    /// Its private key.
    pub key_pem: Vec<u8>,
    /// When set, clients must present a certificate signed by one of these
    /// CAs (mTLS).
    pub client_ca_pem: Option<Vec<u8>>,
    /// The files to watch for rotation; `None` for material given as bytes.
    pub files: Option<TlsFiles>,
}

/// The files of a [`TlsConfig`].
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM client CA bundle.
    pub client_ca: Option<PathBuf>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("mtls", &self.client_ca_pem.is_some())
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::TlsFile {
        what,
        path: path.to_owned(),
        source,
    })
}

impl TlsConfig {
    /// Reads the PEM files, and remembers them so the hub reloads them when
    /// they change.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<TlsConfig, Error> {
        let files = TlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            client_ca: client_ca.map(Path::to_owned),
        };
        let mut config = files.read()?;
        config.files = Some(files);
        Ok(config)
    }

    /// A rustls server configuration (HTTP/2 via ALPN, client certificates
    /// required when a client CA is set).
    pub fn server_config(&self) -> Result<ServerConfig, Error> {
        let verifier = match &self.client_ca_pem {
            Some(pem) => Some(client_verifier(pem)?),
            None => None,
        };
        let mut config = self.build(verifier)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// This certificate and key, and `verifier` for client certificates (none asked
    /// for without one).
    fn build(&self, verifier: Option<Arc<dyn ClientCertVerifier>>) -> Result<ServerConfig, Error> {
        let invalid = |message: String| Error::Tls { message };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (certs, key) = self.certified()?;
        let builder = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?;
        let builder = match verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        builder
            .with_single_cert(certs, key)
            .map_err(|e| invalid(format!("certificate and key: {e}")))
    }

    /// The certificate chain and its key, parsed.
    pub fn certified(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
        let invalid = |message: String| Error::Tls { message };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(format!("server certificate: {e}")))?;
        if certs.is_empty() {
            return Err(invalid("server certificate: no PEM certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| invalid(format!("private key: {e}")))?;
        Ok((certs, key))
    }
}

impl TlsConfig {
    /// The rustls configuration of the per-account Kubernetes API: the same
    /// certificate, HTTP/2 or HTTP/1.1. Clients authenticate with bearer tokens, so a
    /// client certificate is never required; with `client_ca_pem` (the replicas' CA,
    /// `--kube-api-replica-ca`) one is asked for, and one offered must chain to it: a
    /// hub replica forwarding a request proves with it which replica it is
    /// (`replicas/forward.rs`).
    pub fn https_server_config(&self) -> Result<ServerConfig, Error> {
        let verifier = match &self.client_ca_pem {
            Some(pem) => Some(verifier_of(pem, true)?),
            None => None,
        };
        let mut config = self.build(verifier)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// This certificate with `client_ca` (read now, and followed with the
    /// certificate's files) as the CA of client certificates, or none.
    pub fn with_client_ca(&self, client_ca: Option<&Path>) -> Result<TlsConfig, Error> {
        Ok(TlsConfig {
            client_ca_pem: client_ca
                .map(|p| read_file("client CA bundle", p))
                .transpose()?,
            files: self.files.clone().map(|f| TlsFiles {
                client_ca: client_ca.map(Path::to_owned),
                ..f
            }),
            ..self.clone()
        })
    }
}

/// The CAs of a PEM bundle, `what` naming it in errors.
pub fn roots_of(pem: &[u8], what: &str) -> Result<rustls::RootCertStore, Error> {
    let invalid = |message: String| Error::Tls {
        message: format!("{what}: {message}"),
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.map_err(|e| invalid(e.to_string()))?)
            .map_err(|e| invalid(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid("no PEM certificate".into()));
    }
    Ok(roots)
}

/// The verifier of client certificates signed by the CAs of a PEM bundle:
/// used by the TLS handshake (mTLS) and for certificates a trusted load
/// balancer forwards, so both accept exactly the same certificates (chained
/// to the bundle, valid now).
pub fn client_verifier(pem: &[u8]) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    verifier_of(pem, false)
}

/// [`client_verifier`]; `optional`: a client without a certificate is let through
/// (one with a certificate must still chain to the bundle).
fn verifier_of(pem: &[u8], optional: bool) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    let roots = roots_of(pem, "client CA bundle")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().map_err(|e| Error::Tls {
        message: format!("client CA bundle: {e}"),
    })
}

impl TlsFiles {
    /// Reads the files.
    pub fn read(&self) -> Result<TlsConfig, Error> {
        Ok(TlsConfig {
            cert_pem: read_file("certificate", &self.cert)?,
            key_pem: read_file("private key", &self.key)?,
            client_ca_pem: self
                .client_ca
                .as_deref()
                .map(|p| read_file("client CA bundle", p))
                .transpose()?,
            files: None,
        })
    }
}

/// The rustls configuration new handshakes use; swapped on reload.
#[derive(Debug)]
pub struct TlsState {
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsState {
    /// From a first configuration.
    pub fn new(config: &TlsConfig) -> Result<Arc<TlsState>, Error> {
        Ok(TlsState::with(config.server_config()?))
    }

    /// From a rustls configuration built some other way (see
    /// [`TlsConfig::https_server_config`]).
    pub fn with(config: ServerConfig) -> Arc<TlsState> {
        Arc::new(TlsState {
            current: RwLock::new(Arc::new(config)),
        })
    }

    fn get(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn set(&self, config: ServerConfig) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }

    /// Polls the files every `interval`; when their content changed and the
    /// new material is valid, new handshakes use it. Invalid material (e.g. a
    /// certificate written before its key) is logged and retried on the next
    /// poll; the old material stays in use meanwhile. `build` turns the material
    /// into a rustls configuration ([`TlsConfig::server_config`] for gRPC).
    pub fn watch_files(
        self: &Arc<Self>,
        files: TlsFiles,
        first: TlsConfig,
        interval: Duration,
        shutdown: CancellationToken,
        reloads: prometheus_client::metrics::counter::Counter,
        build: fn(&TlsConfig) -> Result<ServerConfig, Error>,
    ) {
        let state = Arc::clone(self);
        tokio::spawn(async move {
            let mut last = (first.cert_pem, first.key_pem, first.client_ca_pem);
            let mut last_error = String::new();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = shutdown.cancelled() => return,
                }
                let to_read = files.clone();
                let read = tokio::task::spawn_blocking(move || to_read.read()).await;
                let next = match read {
                    Ok(Ok(next)) => next,
                    Ok(Err(err)) => {
                        let text = err.to_string();
                        if text != last_error {
                            warn!(%err, "cannot read the TLS files; serving with the material loaded before");
                            last_error = text;
                        }
                        continue;
                    }
                    Err(_) => continue,
                };
                if (&next.cert_pem, &next.key_pem, &next.client_ca_pem)
                    == (&last.0, &last.1, &last.2)
                {
                    continue;
                }
                match build(&next) {
                    Ok(config) => {
                        state.set(config);
                        reloads.inc();
                        last_error.clear();
                        info!(cert = %files.cert.display(), client_ca = ?files.client_ca, "TLS material changed on disk; new connections use it, open ones keep theirs");
                        last = (next.cert_pem, next.key_pem, next.client_ca_pem);
                    }
                    Err(err) => {
                        let text = err.to_string();
                        if text != last_error {
                            warn!(%err, "the TLS files changed but are not usable (yet); serving with the material loaded before");
                            last_error = text;
                        }
                    }
                }
            }
        });
    }
}

/// One accepted connection: plain TCP or TLS over TCP.
#[derive(Debug)]
pub struct Conn {
    io: ConnIo,
    info: PeerInfo,
}

#[derive(Debug)]
enum ConnIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// The server name (SNI) the client asked for in its TLS handshake, if any.
    pub fn server_name(&self) -> Option<&str> {
        match &self.io {
            ConnIo::Plain(_) => None,
            ConnIo::Tls(stream) => stream.get_ref().1.server_name(),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ConnIo::Plain(s) => s.is_write_vectored(),
            ConnIo::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Accepts connections on `listener` (doing the TLS handshake when `tls` is
/// set, each in its own task so a slow client holds up nobody) until
/// `shutdown`; the stream of connections for tonic's `serve_with_incoming`
/// and the Kubernetes API. `what` names the listener in log lines.
pub fn incoming(
    listener: TcpListener,
    what: &'static str,
    tls: Option<Arc<TlsState>>,
    shutdown: CancellationToken,
    handshake_failures: prometheus_client::metrics::counter::Counter,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let mut acceptor = crate::net::serve::Acceptor::new(listener, what);
    tokio::spawn(async move {
        loop {
            let (stream, remote_addr) = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = acceptor.accept() => accepted,
            };
            let _ = stream.set_nodelay(true);
            match &tls {
                None => {
                    let conn = Conn {
                        io: ConnIo::Plain(stream),
                        info: PeerInfo {
                            remote_addr,
                            client_cert: None,
                        },
                    };
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.get());
                    let tx = tx.clone();
                    let failures = handshake_failures.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                        {
                            Ok(Ok(stream)) => {
                                let client_cert = stream
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(|c| c.clone().into_owned());
                                let conn = Conn {
                                    io: ConnIo::Tls(Box::new(stream)),
                                    info: PeerInfo {
                                        remote_addr,
                                        client_cert,
                                    },
                                };
                                let _ = tx.send(Ok(conn)).await;
                            }
                            Ok(Err(err)) => {
                                failures.inc();
                                info!(peer = %remote_addr, %err, "TLS handshake refused");
                            }
                            Err(_) => {
                                failures.inc();
                                debug!(peer = %remote_addr, "TLS handshake timed out");
                            }
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
