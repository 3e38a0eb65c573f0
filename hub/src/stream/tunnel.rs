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
//! - A request starts only within its account's and its token's fair share of the
//!   session ([`crate::core::fair`]); it holds its place until it is forgotten here.
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

use crate::core::fair::{Busy, Flow, Limits, Load};
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
    flow: Flow,
}

#[derive(Default)]
struct Inner {
    capable: HashSet<SessionId>,
    upgrades: HashSet<SessionId>,
    requests: HashMap<SessionId, HashMap<u64, Pending>>,
    load: HashMap<SessionId, Load>,
}

impl Inner {
    /// Forgets a request and gives its place back.
    fn remove(&mut self, session: &SessionId, id: u64) {
        let Some(pending) = self.requests.get_mut(session).and_then(|r| r.remove(&id)) else {
            return;
        };
        if let Some(load) = self.load.get_mut(session) {
            load.release(&pending.flow);
        }
    }
}

/// Why a request was not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The session does not carry requests (or has ended).
    NotCarried,
    /// Not within the request's fair share now.
    Busy(Busy),
}

/// Every request in flight, by session.
#[derive(Default)]
pub struct Tunnels {
    next_id: AtomicU64,
    inner: Mutex<Inner>,
    limits: Limits,
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

    /// Registers a request of `flow` on `session` (which holds `accounts` accounts)
    /// with `window` bytes of credit, when the session carries requests and the flow
    /// is within its fair share.
    pub fn open(
        &self,
        session: &SessionId,
        window: u64,
        flow: Flow,
        accounts: usize,
    ) -> Result<(u64, mpsc::UnboundedReceiver<Part>), Refused> {
        let mut inner = self.inner();
        if !inner.capable.contains(session) {
            return Err(Refused::NotCarried);
        }
        inner
            .load
            .entry(session.clone())
            .or_default()
            .admit(&flow, accounts, self.limits)
            .map_err(Refused::Busy)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        inner.requests.entry(session.clone()).or_default().insert(
            id,
            Pending {
                tx,
                credit: window,
                flow,
            },
        );
        Ok((id, rx))
    }

    /// Hands a frame from `session` to the request it answers.
    pub fn deliver(&self, session: &SessionId, part: Part) -> Delivery {
        let id = match &part {
            Part::Head(h) => h.id,
            Part::Body(b) => b.id,
            Part::Window(w) => w.id,
        };
        let mut inner = self.inner();
        let Some(pending) = inner.requests.get_mut(session).and_then(|r| r.get_mut(&id)) else {
            return Delivery::Unknown;
        };
        let done = match &part {
            Part::Head(_) | Part::Window(_) => false,
            Part::Body(b) => {
                let len = b.chunk.len() as u64;
                if len > pending.credit {
                    inner.remove(session, id);
                    return Delivery::OverWindow;
                }
                pending.credit -= len;
                b.done
            }
        };
        // The client may have gone; its cancel is on its way to the agent.
        let _ = pending.tx.send(part);
        if done {
            inner.remove(session, id);
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
        self.inner().remove(session, id);
    }

    /// The session ended: every request on it ends (their receivers see the channel
    /// close), and it carries no more.
    pub fn session_ended(&self, session: &SessionId) -> usize {
        let mut inner = self.inner();
        inner.capable.remove(session);
        inner.load.remove(session);
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

    fn short() -> Flow {
        Flow {
            account: Arc::from("a"),
            token: 0,
            class: crate::core::fair::Class::Short,
        }
    }

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
        assert!(
            matches!(tunnels.open(&a, 10, short(), 1), Err(Refused::NotCarried)),
            "not capable yet"
        );
        tunnels.enable(&a);
        tunnels.enable(&b);
        let (id, mut rx) = tunnels.open(&a, 10, short(), 1).expect("capable");
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
        let (id, mut rx) = tunnels.open(&s, 10, short(), 1).expect("capable");
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
        let (_, mut ra) = tunnels.open(&a, 1, short(), 1).expect("capable");
        let (ib, _rb) = tunnels.open(&b, 1, short(), 1).expect("capable");
        assert_eq!(tunnels.session_ended(&a), 1);
        assert!(matches!(
            ra.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        assert!(!tunnels.capable(&a));
        assert!(matches!(
            tunnels.open(&a, 1, short(), 1),
            Err(Refused::NotCarried)
        ));
        assert_eq!(tunnels.deliver(&b, body(ib, 1, false)), Delivery::Delivered);
    }
}

#[cfg(test)]
mod fair_tests {
    use super::*;
    use crate::core::fair::Class;
    use std::sync::Arc;

    #[test]
    fn a_request_holds_its_place_until_it_is_forgotten_however_it_ends() {
        let tunnels = Tunnels::default();
        let s: SessionId = Arc::from("s");
        tunnels.enable(&s);
        let watch = Flow {
            account: Arc::from("a"),
            token: 0,
            class: Class::LongRunning,
        };
        // One account alone, one token: it leaves half of the long-running room.
        let mut open = Vec::new();
        while let Ok((id, rx)) = tunnels.open(&s, 1, watch.clone(), 1) {
            open.push((id, rx));
        }
        assert_eq!(open.len(), 64);
        assert!(matches!(
            tunnels.open(&s, 1, watch.clone(), 1),
            Err(Refused::Busy(Busy::Token { .. }))
        ));
        // Cancelled by the client, answered, or overrunning its window: each gives
        // its place back.
        let (cancelled, _) = open.pop().expect("one");
        tunnels.close(&s, cancelled);
        let (id, _rx) = tunnels.open(&s, 1, watch.clone(), 1).expect("room again");
        let done = Part::Body(KubeResponseBody {
            id,
            chunk: Default::default(),
            done: true,
            error: String::new(),
        });
        assert_eq!(tunnels.deliver(&s, done), Delivery::Delivered);
        let (id, _rx) = tunnels.open(&s, 1, watch.clone(), 1).expect("room again");
        let over = Part::Body(KubeResponseBody {
            id,
            chunk: vec![b'x'; 2].into(),
            done: false,
            error: String::new(),
        });
        assert_eq!(tunnels.deliver(&s, over), Delivery::OverWindow);
        assert!(tunnels.open(&s, 1, watch.clone(), 1).is_ok());
        // A session that ends forgets its load with its requests.
        tunnels.session_ended(&s);
        tunnels.enable(&s);
        assert!(tunnels.open(&s, 1, watch, 1).is_ok());
    }
}
