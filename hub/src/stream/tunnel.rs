//! Kubernetes API requests in flight over agent sessions: which session may answer
//! which request, and how much of an answer it may send before the client reads it.
//!
//! - Ids are allocated here and looked up per session: an answer is taken only from
//!   the session its request was sent on, so one agent cannot answer (or end) another
//!   agent's requests, whatever ids it sends.
//! - Each request has a credit, the response bytes the agent may still send. Frames
//!   are delivered without waiting (the session reads every account's frames in one
//!   loop, which must never stall on a slow HTTP client), so the credit is enforced
//!   here: an agent that sends more than it was granted has its request ended.
//! - When a session ends, its requests end with it: their clients get a 503 (no head
//!   yet) or a broken body (mid-stream).
//! - A connection upgrade (exec, attach, port-forward) is a request too, on a session
//!   that also carries upgrades: after its `101` head the body is the cluster's side of
//!   the connection, under the same credit, and the agent's `KubeWindow` grants reach
//!   the hub's side of the connection here (`kubeapi/upgrade.rs`).

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use scale_agent_proto::v1::{KubeResponseBody, KubeResponseHead, KubeWindow};
use tokio::sync::mpsc;

use crate::core::registry::SessionId;

/// A piece of an agent's answer.
#[derive(Debug)]
pub enum Part {
    /// Status and headers.
    Head(KubeResponseHead),
    /// Body bytes; the last has `done`.
    Body(KubeResponseBody),
    /// For an upgraded connection: the agent wrote that much of the client's bytes to
    /// the cluster, the hub may send that much more.
    Window(KubeWindow),
}

/// What happened to a frame from an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Passed to the waiting client.
    Delivered,
    /// No request with that id on that session (answered, cancelled, or never
    /// sent there): dropped.
    Unknown,
    /// The agent sent more body than it was granted: the request is ended.
    OverWindow,
}

struct Pending {
    tx: mpsc::UnboundedSender<Part>,
    credit: u64,
}

#[derive(Default)]
struct Inner {
    capable: HashSet<SessionId>,
    upgrades: HashSet<SessionId>,
    requests: HashMap<SessionId, HashMap<u64, Pending>>,
}

/// Every request in flight, by session.
#[derive(Default)]
pub struct Tunnels {
    next_id: AtomicU64,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels").finish_non_exhaustive()
    }
}

impl Tunnels {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain maps changed in whole steps; a panic elsewhere leaves them usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session agreed to carry Kubernetes API requests (both sides listed the
    /// capability).
    pub fn enable(&self, session: &SessionId) {
        self.inner().capable.insert(session.clone());
    }

    /// The session also carries connection upgrades (both sides listed
    /// `kube-upgrade`).
    pub fn enable_upgrades(&self, session: &SessionId) {
        self.inner().upgrades.insert(session.clone());
    }

    /// True when the session carries connection upgrades.
    pub fn carries_upgrades(&self, session: &SessionId) -> bool {
        self.inner().upgrades.contains(session)
    }

    /// True when the session carries Kubernetes API requests.
    pub fn capable(&self, session: &SessionId) -> bool {
        self.inner().capable.contains(session)
    }

    /// Registers a request on `session` with `window` bytes of credit; `None` when
    /// the session does not carry requests (or has ended).
    pub fn open(
        &self,
        session: &SessionId,
        window: u64,
    ) -> Option<(u64, mpsc::UnboundedReceiver<Part>)> {
        let mut inner = self.inner();
        if !inner.capable.contains(session) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        inner
            .requests
            .entry(session.clone())
            .or_default()
            .insert(id, Pending { tx, credit: window });
        Some((id, rx))
    }

    /// Hands a frame from `session` to the request it answers.
    pub fn deliver(&self, session: &SessionId, part: Part) -> Delivery {
        let id = match &part {
            Part::Head(h) => h.id,
            Part::Body(b) => b.id,
            Part::Window(w) => w.id,
        };
        let mut inner = self.inner();
        let Some(requests) = inner.requests.get_mut(session) else {
            return Delivery::Unknown;
        };
        let Some(pending) = requests.get_mut(&id) else {
            return Delivery::Unknown;
        };
        let done = match &part {
            Part::Head(_) | Part::Window(_) => false,
            Part::Body(b) => {
                let len = b.chunk.len() as u64;
                if len > pending.credit {
                    requests.remove(&id);
                    return Delivery::OverWindow;
                }
                pending.credit -= len;
                b.done
            }
        };
        // The client may have gone; its cancel is on its way to the agent.
        let _ = pending.tx.send(part);
        if done {
            requests.remove(&id);
        }
        Delivery::Delivered
    }

    /// The client read `bytes` more: the agent may send that much more.
    pub fn grant(&self, session: &SessionId, id: u64, bytes: u64) {
        if let Some(p) = self
            .inner()
            .requests
            .get_mut(session)
            .and_then(|r| r.get_mut(&id))
        {
            p.credit = p.credit.saturating_add(bytes);
        }
    }

    /// Forgets a request (answered, or given up); later frames for it are dropped.
    pub fn close(&self, session: &SessionId, id: u64) {
        let mut inner = self.inner();
        if let Some(requests) = inner.requests.get_mut(session) {
            requests.remove(&id);
        }
    }

    /// The session ended: every request on it ends (their receivers see the channel
    /// close), and it carries no more.
    pub fn session_ended(&self, session: &SessionId) -> usize {
        let mut inner = self.inner();
        inner.capable.remove(session);
        inner.upgrades.remove(session);
        inner.requests.remove(session).map_or(0, |r| r.len())
    }

    /// Requests in flight on every session.
    pub fn in_flight(&self) -> usize {
        self.inner().requests.values().map(HashMap::len).sum()
    }
}

/// Takes a Kubernetes API frame from an agent's session: passes it to the request it
/// answers, and counts and logs what cannot be (an id the session was never given, or
/// more body than granted).
pub fn from_agent(shared: &crate::state::Shared, session: &SessionId, part: Part) {
    match shared.tunnels.deliver(session, part) {
        Delivery::Delivered => {}
        Delivery::Unknown => {
            // Common and harmless: the client went away and the cancel crossed the
            // agent's last frames.
            tracing::debug!(%session, "Kubernetes API frame for no request in flight on this session; ignored");
            shared.metrics.frame_ignored("kube_response_unknown");
        }
        Delivery::OverWindow => {
            tracing::warn!(%session, "the agent sent more response body than the hub granted; the request is ended");
            shared.metrics.frame_ignored("kube_response_over_window");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn body(id: u64, bytes: usize, done: bool) -> Part {
        Part::Body(KubeResponseBody {
            id,
            chunk: vec![b'x'; bytes].into(),
            done,
            error: String::new(),
        })
    }

    #[test]
    fn an_agent_answers_only_requests_sent_on_its_session() {
        let tunnels = Tunnels::default();
        let (a, b): (SessionId, SessionId) = (Arc::from("a"), Arc::from("b"));
        assert!(tunnels.open(&a, 10).is_none(), "not capable yet");
        tunnels.enable(&a);
        tunnels.enable(&b);
        let (id, mut rx) = tunnels.open(&a, 10).expect("capable");
        // Session b guesses the id: dropped, and the request is untouched.
        let forged = Part::Head(KubeResponseHead {
            id,
            status: 200,
            headers: vec![],
        });
        assert_eq!(tunnels.deliver(&b, forged), Delivery::Unknown);
        assert!(rx.try_recv().is_err());
        let real = Part::Head(KubeResponseHead {
            id,
            status: 200,
            headers: vec![],
        });
        assert_eq!(tunnels.deliver(&a, real), Delivery::Delivered);
        assert!(matches!(rx.try_recv(), Ok(Part::Head(_))));
        assert_eq!(tunnels.deliver(&a, body(id, 3, true)), Delivery::Delivered);
        // Answered: nothing more is taken for it.
        assert_eq!(tunnels.deliver(&a, body(id, 1, true)), Delivery::Unknown);
        assert_eq!(tunnels.in_flight(), 0);
    }

    #[test]
    fn the_body_stays_within_the_granted_window() {
        let tunnels = Tunnels::default();
        let s: SessionId = Arc::from("s");
        tunnels.enable(&s);
        let (id, mut rx) = tunnels.open(&s, 10).expect("capable");
        assert_eq!(tunnels.deliver(&s, body(id, 6, false)), Delivery::Delivered);
        assert_eq!(tunnels.deliver(&s, body(id, 4, false)), Delivery::Delivered);
        tunnels.grant(&s, id, 5);
        assert_eq!(tunnels.deliver(&s, body(id, 5, false)), Delivery::Delivered);
        // One byte more than granted ends the request.
        assert_eq!(
            tunnels.deliver(&s, body(id, 1, false)),
            Delivery::OverWindow
        );
        assert_eq!(tunnels.deliver(&s, body(id, 0, true)), Delivery::Unknown);
        let mut received = 0;
        while let Ok(Part::Body(b)) = rx.try_recv() {
            received += b.chunk.len();
        }
        assert_eq!(received, 15);
        assert!(
            rx.try_recv().is_err(),
            "the sender is gone: the client sees the end"
        );
    }

    #[test]
    fn ending_a_session_ends_its_requests_only() {
        let tunnels = Tunnels::default();
        let (a, b): (SessionId, SessionId) = (Arc::from("a"), Arc::from("b"));
        tunnels.enable(&a);
        tunnels.enable(&b);
        let (_, mut ra) = tunnels.open(&a, 1).expect("capable");
        let (ib, _rb) = tunnels.open(&b, 1).expect("capable");
        assert_eq!(tunnels.session_ended(&a), 1);
        assert!(matches!(
            ra.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        assert!(!tunnels.capable(&a));
        assert!(tunnels.open(&a, 1).is_none());
        assert_eq!(tunnels.deliver(&b, body(ib, 1, false)), Delivery::Delivered);
    }
}
