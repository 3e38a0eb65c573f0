//! The one place where watch events become `EventBatch` frames.
//!
//! Each watched kind owns a [`KindSender`]. Events go into its [`Batch`], which seals
//! them into a frame when the next event would pass the byte limit, when the count limit
//! is reached, or when the oldest waiting event has lingered long enough; the sealed
//! batch then goes out through [`Outbound::send_batch`], which charges it to the byte
//! budget (and so blocks the watcher while the hub has not acknowledged enough).
//! Control frames of the kind (SyncStart, SyncEnd, WatchProgress) go through the same
//! sender, after the events before them, so the hub sees them in watch order.

use std::sync::Arc;
use std::time::Duration;

use scale_agent_proto::v1::{ObjectEvent, agent_frame::Frame};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::outbound::{Closed, Outbound};

/// When a batch is sealed and sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest batch, by [`event_size`]; an event larger than this goes alone.
    pub max_bytes: usize,
    /// Most events in one batch.
    pub max_events: usize,
    /// Longest an event waits for others before its batch goes out anyway: a short
    /// wait turns a burst of changes into one frame, and a lone change still leaves
    /// within this long.
    pub linger: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: 1 << 20,
            max_events: 1000,
            linger: Duration::from_millis(20),
        }
    }
}

/// Events ready to go out as one frame, in watch order.
#[derive(Debug, Clone, PartialEq)]
pub struct Sealed {
    /// The events.
    pub events: Vec<ObjectEvent>,
    /// Their summed [`event_size`], which the budget is charged.
    pub bytes: usize,
}

/// Events of one kind waiting to be sent, and the rule for when they go. No I/O:
/// the caller passes the time and sends what comes back sealed.
#[derive(Debug)]
pub struct Batch {
    limits: Limits,
    events: Vec<ObjectEvent>,
    bytes: usize,
    opened: Option<Instant>,
}

impl Batch {
    /// An empty batch under `limits`.
    pub fn new(limits: Limits) -> Batch {
        Batch {
            limits,
            events: Vec::new(),
            bytes: 0,
            opened: None,
        }
    }

    /// Adds `event` (arrived at `now`). Returns the batches it sealed, oldest first:
    /// the waiting one when `event` would push it past the byte limit, and the one
    /// `event` joined when that reached a limit.
    pub fn push(&mut self, event: ObjectEvent, now: Instant) -> Vec<Sealed> {
        let mut sealed = Vec::new();
        let size = event_size(&event);
        if !self.events.is_empty() && self.bytes.saturating_add(size) > self.limits.max_bytes {
            sealed.extend(self.take());
        }
        self.bytes = self.bytes.saturating_add(size);
        self.events.push(event);
        self.opened.get_or_insert(now);
        if self.events.len() >= self.limits.max_events || self.bytes >= self.limits.max_bytes {
            sealed.extend(self.take());
        }
        sealed
    }

    /// When the waiting events must go out even if no more arrive; `None` when none wait.
    pub fn due(&self) -> Option<Instant> {
        self.opened.map(|t| t + self.limits.linger)
    }

    /// Seals whatever waits, now.
    pub fn take(&mut self) -> Option<Sealed> {
        self.opened = None;
        if self.events.is_empty() {
            return None;
        }
        let bytes = std::mem::take(&mut self.bytes);
        Some(Sealed {
            events: std::mem::take(&mut self.events),
            bytes,
        })
    }
}

/// Approximate wire size of one event: what the batch limit and the budget count.
pub fn event_size(ev: &ObjectEvent) -> usize {
    ev.body_json.len()
        + ev.name.len()
        + ev.namespace.len()
        + ev.uid.len()
        + ev.resource_version.len()
        + 32
}

/// Sends the events and frames of one kind of one account through the session, in
/// the order they are given.
#[derive(Debug)]
pub struct KindSender {
    account: String,
    batch: Batch,
    out: Outbound,
    metrics: Arc<Metrics>,
}

impl KindSender {
    /// A sender for `account`'s events over `out`, batched under `out`'s limits.
    pub fn new(account: String, out: Outbound, metrics: Arc<Metrics>) -> KindSender {
        KindSender {
            account,
            batch: Batch::new(out.limits()),
            out,
            metrics,
        }
    }

    /// Queues one event; sends the batches it seals. Waits while the byte budget is
    /// full: this is where a watcher feels backpressure.
    pub async fn event(&mut self, event: ObjectEvent) -> Result<(), Closed> {
        for sealed in self.batch.push(event, Instant::now()) {
            self.send(sealed).await?;
        }
        Ok(())
    }

    /// Sends whatever events wait.
    pub async fn flush(&mut self) -> Result<(), Closed> {
        match self.batch.take() {
            Some(sealed) => self.send(sealed).await,
            None => Ok(()),
        }
    }

    /// Sends the waiting events, then `frame`: a frame about the kind (SyncEnd, a
    /// WatchProgress) must never overtake the events it vouches for.
    pub async fn frame(&mut self, frame: Frame) -> Result<(), Closed> {
        self.flush().await?;
        self.out.send(frame).await
    }

    /// Sends the waiting events if they are due by now.
    pub async fn flush_if_due(&mut self) -> Result<(), Closed> {
        if self.due().is_some_and(|due| due <= Instant::now()) {
            self.flush().await?;
        }
        Ok(())
    }

    /// When the waiting events are due (see [`Batch::due`]).
    pub fn due(&self) -> Option<Instant> {
        self.batch.due()
    }

    async fn send(&self, sealed: Sealed) -> Result<(), Closed> {
        self.metrics.events_sent.inc_by(sealed.events.len() as u64);
        self.out.send_batch(&self.account, sealed).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Budget;
    use proptest::prelude::*;
    use scale_agent_proto::v1::{AgentFrame, SyncEnd};
    use tokio::sync::mpsc;

    fn ev(name: &str, body: usize) -> ObjectEvent {
        ObjectEvent {
            name: name.into(),
            body_json: vec![b'x'; body].into(),
            ..Default::default()
        }
    }

    fn limits(max_bytes: usize, max_events: usize) -> Limits {
        Limits {
            max_bytes,
            max_events,
            linger: Duration::from_millis(20),
        }
    }

    fn names(batches: &[Sealed]) -> Vec<Vec<&str>> {
        batches
            .iter()
            .map(|b| b.events.iter().map(|e| e.name.as_str()).collect())
            .collect()
    }

    /// Pushes every event and takes the rest: every batch the rule makes.
    fn batches(events: Vec<ObjectEvent>, limits: Limits) -> Vec<Sealed> {
        let mut batch = Batch::new(limits);
        let now = Instant::now();
        let mut out: Vec<Sealed> = events
            .into_iter()
            .flat_map(|e| batch.push(e, now))
            .collect();
        out.extend(batch.take());
        out
    }

    #[test]
    fn the_byte_limit_seals_before_the_event_that_would_pass_it() {
        // 3 × (100 + 1 + 32) = 399 bytes fit in 400; a fourth would not.
        let got = batches(
            (0..5).map(|i| ev(&i.to_string(), 100)).collect(),
            limits(400, 100),
        );
        assert_eq!(names(&got), vec![vec!["0", "1", "2"], vec!["3", "4"]]);
    }

    #[test]
    fn an_event_larger_than_the_limit_goes_alone() {
        let got = batches(
            vec![ev("a", 10), ev("big", 5000), ev("b", 10)],
            limits(1000, 100),
        );
        assert_eq!(names(&got), vec![vec!["a"], vec!["big"], vec!["b"]]);
    }

    #[test]
    fn the_count_limit_seals_at_once() {
        let mut batch = Batch::new(limits(1 << 20, 2));
        let now = Instant::now();
        assert!(batch.push(ev("a", 1), now).is_empty());
        let sealed = batch.push(ev("b", 1), now);
        assert_eq!(names(&sealed), vec![vec!["a", "b"]]);
        assert_eq!(batch.due(), None, "nothing waits after a sealed batch");
    }

    #[test]
    fn the_first_waiting_event_sets_the_deadline() {
        let mut batch = Batch::new(limits(1 << 20, 100));
        let start = Instant::now();
        assert_eq!(batch.due(), None);
        batch.push(ev("a", 1), start);
        batch.push(ev("b", 1), start + Duration::from_millis(15));
        // Later events do not push the deadline back: a steady trickle still leaves.
        assert_eq!(batch.due(), Some(start + Duration::from_millis(20)));
        let sealed = batch.take().expect("two events wait");
        assert_eq!(sealed.bytes, 2 * (1 + 1 + 32));
        assert_eq!(batch.due(), None);
        assert_eq!(batch.take(), None);
    }

    proptest! {
        #[test]
        fn batches_keep_order_and_respect_the_limits(
            sizes in proptest::collection::vec(0usize..3000, 0..80),
            max_bytes in 100usize..4000,
            max_events in 1usize..10,
        ) {
            let events: Vec<ObjectEvent> = sizes.iter().enumerate().map(|(i, s)| ev(&i.to_string(), *s)).collect();
            let got = batches(events.clone(), limits(max_bytes, max_events));
            let flat: Vec<&str> = got.iter().flat_map(|b| b.events.iter().map(|e| e.name.as_str())).collect();
            let want: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
            prop_assert_eq!(flat, want);
            for b in &got {
                prop_assert!(!b.events.is_empty());
                prop_assert!(b.events.len() <= max_events);
                prop_assert!(b.bytes <= max_bytes || b.events.len() == 1, "{} events, {} bytes over {}", b.events.len(), b.bytes, max_bytes);
                prop_assert_eq!(b.bytes, b.events.iter().map(event_size).sum::<usize>());
            }
            // No two neighbours could have shared a batch under the byte and count limits.
            for pair in got.windows(2) {
                let first_next = event_size(&pair[1].events[0]);
                prop_assert!(
                    pair[0].bytes + first_next > max_bytes
                        || pair[0].events.len() == max_events
                        || pair[0].bytes >= max_bytes,
                    "a batch of {} bytes was sealed early", pair[0].bytes
                );
            }
        }
    }

    fn sender(budget: Budget, limits: Limits) -> (KindSender, mpsc::Receiver<AgentFrame>) {
        let (tx, rx) = mpsc::channel(64);
        let out = Outbound::new(tx, budget, limits);
        (
            KindSender::new("a".into(), out, Arc::new(Metrics::default())),
            rx,
        )
    }

    fn received(rx: &mut mpsc::Receiver<AgentFrame>) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(f) = rx.try_recv() {
            seen.push(match f.frame {
                Some(Frame::EventBatch(b)) => format!(
                    "batch {}: {}",
                    b.sequence,
                    b.events
                        .iter()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Some(Frame::SyncEnd(_)) => "SyncEnd".into(),
                other => format!("{other:?}"),
            });
        }
        seen
    }

    #[tokio::test]
    async fn a_frame_follows_the_events_before_it() {
        let (mut s, mut rx) = sender(Budget::new(1, 1 << 20), Limits::default());
        s.event(ev("x", 10)).await.expect("send");
        s.event(ev("y", 10)).await.expect("send");
        assert!(received(&mut rx).is_empty(), "events wait for more");
        s.frame(Frame::SyncEnd(SyncEnd::default()))
            .await
            .expect("send");
        assert_eq!(received(&mut rx), vec!["batch 1: x,y", "SyncEnd"]);
    }

    #[tokio::test]
    async fn the_watcher_waits_while_the_budget_is_full_and_goes_on_after_the_ack() {
        // Each event seals alone (over the 100-byte limit) and costs 600 + 33 bytes of a
        // 1000-byte budget: the second must wait for the hub's Ack of the first.
        let budget = Budget::new(1, 1000);
        let (mut s, mut rx) = sender(budget.clone(), limits(100, 100));
        let ledger = s.out.ledger().clone();
        s.event(ev("1", 600)).await.expect("send");
        assert_eq!(budget.buffered_bytes(), 633);
        let blocked = tokio::time::timeout(Duration::from_millis(100), s.event(ev("2", 600))).await;
        assert!(
            blocked.is_err(),
            "the second batch went out over the budget"
        );
        assert_eq!(received(&mut rx), vec!["batch 1: 1"]);
        ledger.acked("a", 1);
        assert_eq!(budget.buffered_bytes(), 0);
        tokio::time::timeout(Duration::from_millis(100), s.event(ev("2", 600)))
            .await
            .expect("the Ack frees the budget")
            .expect("send");
        assert_eq!(received(&mut rx), vec!["batch 2: 2"]);
        assert_eq!(budget.buffered_bytes(), 633);
    }

    #[tokio::test]
    async fn a_closed_session_is_reported() {
        let (mut s, rx) = sender(Budget::new(1, 1 << 20), limits(10, 100));
        drop(rx);
        assert!(s.event(ev("x", 100)).await.is_err());
    }
}
