//! Where an account's Kubernetes API is answered on this replica: the one place that
//! decides which live session holds an account. With several hub replicas a request
//! for an account another replica holds was already carried there
//! (`replicas/forward.rs`) before it gets here.

use std::time::SystemTime;

use crate::core::registry::SessionId;
use crate::state::{Outbound, Shared};

/// Where an account is.
#[derive(Debug, Clone)]
pub enum Located {
    /// This hub knows no such account.
    Unknown,
    /// Known, but no agent streams it now (within its grace period).
    Disconnected {
        /// When its cache stopped following the cluster.
        since: SystemTime,
    },
    /// Streamed on a session of this hub whose agent cannot carry Kubernetes API
    /// requests (an older agent).
    NotCapable,
    /// Streamed on a session of this hub that carries requests.
    Here {
        /// The session.
        session: SessionId,
        /// Its outbound frames.
        tx: Outbound,
    },
}

/// Finds the session holding `account`.
pub fn locate(shared: &Shared, account: &str) -> Located {
    let (session, since) = {
        let core = shared.core();
        match core.registry.get(account) {
            None => return Located::Unknown,
            Some(a) => (a.session.clone(), a.since),
        }
    };
    let Some(session) = session else {
        return Located::Disconnected { since };
    };
    let Some(handle) = shared.session(&session) else {
        // The session is ending: its accounts become Disconnected now.
        return Located::Disconnected {
            since: SystemTime::now(),
        };
    };
    if !shared.tunnels.capable(&session) {
        return Located::NotCapable;
    }
    Located::Here {
        session,
        tx: handle.tx,
    }
}
