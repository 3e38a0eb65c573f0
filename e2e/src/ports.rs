//! Free loopback ports, and starting a component on them.
//!
//! A port found free can be taken by another process before the component binds it
//! (the test suite and a benchmark on one machine). Every component the harness starts
//! and waits for starts again on new ports when it lost one ("address already in use"
//! in its log): etcd, the hub, nginx, the operator and PostgreSQL through
//! [`start_on_free_ports`], the kube-apiservers (started together) by the same test,
//! [`lost_its_port`]. Not re-picked: a restart on the same ports (after a test stopped a
//! component: the rest of the test knows the address), and a port a caller passes in a
//! component's flags (the hub's Kubernetes API port in `just up`). Agents are not waited
//! for at start (their readiness needs the hub): an agent that lost its admin port exits
//! saying so, and the test fails with its log.

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};

use crate::{Error, Result};

/// Starts per component before giving up on lost ports.
pub const ATTEMPTS: usize = 3;

/// A port on 127.0.0.1 that was free a moment ago: start the component that binds it
/// with [`start_on_free_ports`].
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::io("binding a free port on", "127.0.0.1:0", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io("reading the address of", "127.0.0.1:0", e))?
        .port();
    Ok(port)
}

/// Connects to `port` on 127.0.0.1 once something listens there (a `kubectl
/// port-forward` starting up), trying every 100 ms for up to `limit`.
pub async fn connect_when_listening(
    port: u16,
    limit: std::time::Duration,
) -> Result<tokio::net::TcpStream> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
            Ok(conn) => return Ok(conn),
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(Error::io(
                    "connecting (nothing listened in time) to",
                    format!("127.0.0.1:{port}"),
                    e,
                ));
            }
        }
    }
}

/// Whether `error` is a component that could not bind its port: it exited or never
/// became ready, and its log says the address was in use.
pub fn lost_its_port(error: &Error) -> bool {
    match error {
        Error::Exited { tail, .. } | Error::NotReady { tail, .. } => {
            tail.to_ascii_lowercase().contains("address already in use")
        }
        _ => false,
    }
}

/// Runs `start` (which picks its ports with [`free_port`] and waits until the component
/// is ready) up to [`ATTEMPTS`] times while the component lost a port to another
/// process; any other error, or the last, is returned as it is.
pub async fn start_on_free_ports<T, F, Fut>(component: &str, mut start: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 1;
    loop {
        match start().await {
            Err(e) if attempt < ATTEMPTS && lost_its_port(&e) => {
                tracing::warn!(component, attempt, error = %e, "a port was taken before the component bound it; starting it on new ports");
                attempt += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn taken() -> Error {
        Error::Exited {
            component: "hub".into(),
            status: "exit status: 1".into(),
            log: "hub.log".into(),
            tail: "Error: binding 127.0.0.1:4000: Address already in use (os error 98)".into(),
        }
    }

    #[tokio::test]
    async fn a_lost_port_is_retried_on_new_ports_and_other_errors_are_not() {
        let calls = AtomicUsize::new(0);
        let started = start_on_free_ports("hub", || async {
            match calls.fetch_add(1, Ordering::Relaxed) {
                0 => Err(taken()),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(started.ok(), Some(1));
        let calls = AtomicUsize::new(0);
        let always: Result<()> = start_on_free_ports("hub", || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(taken())
        })
        .await;
        assert!(always.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), ATTEMPTS);
        let calls = AtomicUsize::new(0);
        let other: Result<()> = start_on_free_ports("hub", || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(Error::Timeout {
                what: "x".into(),
                seconds: 1,
            })
        })
        .await;
        assert!(other.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), 1, "not a port: no retry");
    }

    #[test]
    fn every_component_s_wording_of_a_taken_port_is_recognised() {
        for tail in [
            "listen tcp 127.0.0.1:2379: bind: address already in use",
            "bind() to 127.0.0.1:8443 failed (98: Address already in use)",
            "could not bind IPv4 address \"127.0.0.1\": Address already in use",
        ] {
            let e = Error::NotReady {
                component: "c".into(),
                seconds: 1,
                log: "c.log".into(),
                tail: tail.into(),
            };
            assert!(lost_its_port(&e), "{tail}");
        }
    }
}
