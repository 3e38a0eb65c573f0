//! Free loopback ports.

use std::net::{Ipv4Addr, TcpListener};

use crate::{Error, Result};

/// A port on 127.0.0.1 that was free a moment ago. The caller binds it soon after; a lost
/// race shows up as a component that does not become ready, and the start is retried.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::io("binding a free port on", "127.0.0.1:0", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io("reading the address of", "127.0.0.1:0", e))?
        .port();
    Ok(port)
}
