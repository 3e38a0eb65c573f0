//! The hub's listeners: an accept loop that backs off when accepting fails
//! (out of file descriptors and the like) instead of spinning and logging
//! every failure, and the HTTP API's server, which closes connections whose
//! client is slow to send headers or idle, and holds at most a fixed number
//! of connections open (the rest wait in the kernel's listen backlog, where
//! they cost the hub no file descriptor), and at most a fixed number from one
//! client address (more are closed at once).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::HttpLimits;
use crate::core::slots::Slots;

/// The first wait after a failed accept.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// The longest wait between accept attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// During a streak of failures, at most one log line per this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long open HTTP requests get to finish when the hub stops.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// Accepts connections on one listener, waiting longer after each failed
/// accept (doubling up to [`MAX_BACKOFF`]) and logging a streak of failures
/// once per [`LOG_EVERY`] with its count.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    what: &'static str,
    delay: Duration,
    failures: u64,
    logged_at: Option<Instant>,
}

impl Acceptor {
    /// Accepts on `listener`; `what` names it in log lines.
    pub fn new(listener: TcpListener, what: &'static str) -> Acceptor {
        Acceptor {
            listener,
            what,
            delay: FIRST_BACKOFF,
            failures: 0,
            logged_at: None,
        }
    }

    /// The next connection; waits (backing off) through failures.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    if self.failures > 0 {
                        info!(
                            listener = self.what,
                            failures = self.failures,
                            "accepting connections again"
                        );
                    }
                    self.delay = FIRST_BACKOFF;
                    self.failures = 0;
                    self.logged_at = None;
                    return accepted;
                }
                Err(err) => {
                    self.failures += 1;
                    let due = self.logged_at.is_none_or(|at| at.elapsed() >= LOG_EVERY);
                    if due {
                        warn!(listener = self.what, %err, failures = self.failures, retry_in = ?self.delay,
                            "accepting a connection failed (e.g. out of file descriptors); backing off");
                        self.logged_at = Some(Instant::now());
                    }
                    tokio::time::sleep(self.delay).await;
                    self.delay = (self.delay * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Serves `app` over HTTP/1.1 on `listener` until `shutdown`, within
/// `limits`; then lets open requests finish for a few seconds.
pub async fn http(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut acceptor = Acceptor::new(listener, "http");
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut full_since: Option<Instant> = None;
    let per_address = Arc::new(Slots::<std::net::IpAddr>::default());
    let mut refused_address: u64 = 0;
    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if full_since.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                    warn!(
                        max_connections = limits.max_connections,
                        "the HTTP API holds its most connections (--http-max-connections); new ones wait until one closes"
                    );
                    full_since = Some(Instant::now());
                }
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = acceptor.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let Some(address_slot) = per_address.take(peer.ip(), limits.max_connections_per_address)
        else {
            refused_address += 1;
            if refused_address == 1 || refused_address.is_multiple_of(1000) {
                warn!(
                    address = %peer.ip(),
                    limit = limits.max_connections_per_address,
                    refused = refused_address,
                    "too many HTTP API connections from one address (--http-max-connections-per-address); closing its new ones"
                );
            }
            // Its slot of the overall limit goes back with `slot`.
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!(%peer, %err, "HTTP connection ended with an error");
            }
            drop(address_slot);
            drop(slot);
        });
    }
    if tokio::time::timeout(HTTP_DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        debug!("HTTP requests still open after {HTTP_DRAIN:?}; leaving them");
    }
    Ok(())
}
