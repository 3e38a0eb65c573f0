//! TLS to PostgreSQL, as the `--store` URL asks with libpq's parameters `sslmode` and
//! `sslrootcert` (so the same URL works with `psql`).
//!
//! Unlike libpq (whose default is `prefer`: TLS when the server offers it, checked by
//! nobody), the hub verifies by default: without `sslmode` it is `verify-full`, the
//! server's certificate chained to `sslrootcert` (a PEM file; the system's roots when
//! absent or `system`) and naming the host connected to. `sslmode=disable` connects
//! in the clear, and is warned about. `prefer`, `require` and `verify-ca` are refused
//! with the reason: each lets whoever sits between the hub and the database read the
//! rows and the password.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// How the hub reaches the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTls {
    /// Plain TCP (`sslmode=disable`).
    Disable,
    /// TLS, the server's certificate chained to these roots and naming the host.
    VerifyFull {
        /// `sslrootcert`: a PEM file; `None` for the system's roots.
        root: Option<PathBuf>,
    },
}

/// The TLS `url` asks for, and the URL without `sslmode` and `sslrootcert` (which
/// the PostgreSQL client does not take); why not when it asks for a mode the hub
/// refuses.
pub fn parse(url: &str) -> Result<(String, PgTls), String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut mode = None;
    let mut root = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8_lossy()
            .into_owned();
        match key {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let root = root
        .filter(|r| !r.is_empty() && r != "system")
        .map(PathBuf::from);
    let tls = match mode.as_deref().unwrap_or("verify-full") {
        "verify-full" => PgTls::VerifyFull { root },
        "disable" => PgTls::Disable,
        weak @ ("allow" | "prefer" | "require" | "verify-ca") => {
            return Err(format!(
                "sslmode={weak} does not check that the server is the database named (whoever sits between the hub and it would read the rows and the password): use sslmode=verify-full (the default) with sslrootcert=<CA file>, or sslmode=disable on a network you trust"
            ));
        }
        other => {
            return Err(format!(
                "sslmode={other:?} is not one of verify-full (the default) or disable"
            ));
        }
    };
    Ok((url, tls))
}

/// The TLS connector of the PostgreSQL client: rustls, checking the server as
/// [`PgTls::VerifyFull`] says. Never asked to connect with `sslmode=disable`.
#[derive(Clone)]
pub struct Connector {
    config: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.config.is_some())
            .finish()
    }
}

impl Connector {
    /// The connector `tls` asks for; an error naming the CA file when it cannot be
    /// read or holds no certificate.
    pub fn new(tls: &PgTls) -> Result<Connector, String> {
        let PgTls::VerifyFull { root } = tls else {
            return Ok(Connector { config: None });
        };
        let roots = match root {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                crate::net::tls::roots_of(&pem, &format!("sslrootcert {}", path.display()))
                    .map_err(|e| e.to_string())?
            }
            None => {
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err("sslmode=verify-full without sslrootcert uses the system's CA certificates, and there are none: give sslrootcert=<CA file>".into());
                }
                roots
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Connector {
            config: Some(Arc::new(config)),
        })
    }
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<Connect, io::Error> {
        // The host is checked when a handshake is asked for: with sslmode=disable
        // none is.
        Ok(Connect {
            config: self.config.clone(),
            host: ServerName::try_from(host.to_owned()).map_err(|e| e.to_string()),
        })
    }
}

/// One connection's TLS handshake, with the host it must name.
pub struct Connect {
    config: Option<Arc<rustls::ClientConfig>>,
    host: Result<ServerName<'static>, String>,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self
                .config
                .ok_or_else(|| io::Error::other("TLS to PostgreSQL was not configured"))?;
            let host = self.host.map_err(|e| {
                io::Error::other(format!(
                    "the database's host is not a name a certificate can hold: {e}"
                ))
            })?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(host, stream)
                .await?;
            Ok(Stream(tls))
        })
    }
}

/// A TLS connection to PostgreSQL.
pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_full_is_the_default_and_the_parameters_leave_the_url() {
        assert_eq!(
            parse("postgres://hub@db:5432/hub"),
            Ok((
                "postgres://hub@db:5432/hub".into(),
                PgTls::VerifyFull { root: None }
            ))
        );
        assert_eq!(
            parse(
                "postgres://hub@db/hub?sslrootcert=%2Fetc%2Fca.pem&application_name=x&sslmode=verify-full"
            ),
            Ok((
                "postgres://hub@db/hub?application_name=x".into(),
                PgTls::VerifyFull {
                    root: Some("/etc/ca.pem".into())
                }
            ))
        );
        assert_eq!(
            parse("postgres://hub@db/hub?sslrootcert=system"),
            Ok((
                "postgres://hub@db/hub".into(),
                PgTls::VerifyFull { root: None }
            ))
        );
        assert_eq!(
            parse("postgres://hub@db/hub?sslmode=disable"),
            Ok(("postgres://hub@db/hub".into(), PgTls::Disable))
        );
    }

    #[test]
    fn modes_that_check_nobody_are_refused_with_the_reason() {
        for weak in ["allow", "prefer", "require", "verify-ca"] {
            let err = parse(&format!("postgres://hub@db/hub?sslmode={weak}")).expect_err("refused");
            assert!(err.contains(weak) && err.contains("verify-full"), "{err}");
        }
        assert!(parse("postgres://hub@db/hub?sslmode=bogus").is_err());
    }
}
