//! Frames on their way to the hub over one session: event batches numbered per account,
//! split by bytes, each holding its bytes in the budget until the hub acknowledges it.

use std::collections::HashMap;
use std::sync::Arc;

use scale_agent_proto::v1::{AgentFrame, EventBatch, ObjectEvent, agent_frame::Frame};
use tokio::sync::{Mutex, mpsc};

use crate::budget::{Budget, Ledger};

/// The session ended; the frame was not sent.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the hub session ended")]
pub struct Closed;

/// The sending half of a session, shared by every account task in it.
#[derive(Debug, Clone)]
pub struct Outbound {
    tx: mpsc::Sender<AgentFrame>,
    budget: Budget,
    ledger: Arc<Ledger>,
    sequences: Arc<Mutex<HashMap<String, u64>>>,
    /// Largest batch, in bytes of object bodies.
    pub max_batch_bytes: usize,
}

impl Outbound {
    /// An outbound half over `tx`.
    pub fn new(tx: mpsc::Sender<AgentFrame>, budget: Budget, max_batch_bytes: usize) -> Outbound {
        Outbound {
            tx,
            budget,
            ledger: Arc::new(Ledger::default()),
            sequences: Arc::default(),
            max_batch_bytes,
        }
    }

    /// The session's record of unacknowledged batches.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Sends one control frame.
    pub async fn send(&self, frame: Frame) -> Result<(), Closed> {
        self.tx
            .send(AgentFrame { frame: Some(frame) })
            .await
            .map_err(|_| Closed)
    }

    /// Sends `events` of `account`, split into batches of at most `max_batch_bytes` (an
    /// object larger than that goes alone). Waits for budget before each batch: this is
    /// where watchers feel backpressure.
    pub async fn events(&self, account: &str, events: Vec<ObjectEvent>) -> Result<(), Closed> {
        for (batch, bytes) in split(events, self.max_batch_bytes) {
            let reservation = self.budget.reserve(bytes).await;
            // Number and enqueue under one lock so sequences reach the hub in order.
            let mut seqs = self.sequences.lock().await;
            let seq = seqs.entry(account.to_string()).or_insert(0);
            *seq += 1;
            let sequence = *seq;
            self.tx
                .send(AgentFrame {
                    frame: Some(Frame::EventBatch(EventBatch {
                        account: account.to_string(),
                        sequence,
                        events: batch,
                    })),
                })
                .await
                .map_err(|_| Closed)?;
            drop(seqs);
            self.ledger.sent(account, sequence, reservation);
        }
        Ok(())
    }
}

/// Splits events into batches whose bodies add up to at most `max_bytes`; an event larger
/// than `max_bytes` forms a batch of its own. Order is kept.
pub fn split(events: Vec<ObjectEvent>, max_bytes: usize) -> Vec<(Vec<ObjectEvent>, usize)> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut cur_bytes = 0usize;
    for ev in events {
        let size = event_size(&ev);
        if !cur.is_empty() && cur_bytes + size > max_bytes {
            out.push((std::mem::take(&mut cur), cur_bytes));
            cur_bytes = 0;
        }
        cur_bytes += size;
        cur.push(ev);
    }
    if !cur.is_empty() {
        out.push((cur, cur_bytes));
    }
    out
}

/// Approximate wire size of one event.
pub fn event_size(ev: &ObjectEvent) -> usize {
    ev.body_json.len()
        + ev.name.len()
        + ev.namespace.len()
        + ev.uid.len()
        + ev.resource_version.len()
        + 32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(name: &str, body: usize) -> ObjectEvent {
        ObjectEvent {
            name: name.into(),
            body_json: vec![b'x'; body].into(),
            ..Default::default()
        }
    }

    #[test]
    fn big_object_goes_alone() {
        let batches = split(vec![ev("a", 10), ev("big", 5000), ev("b", 10)], 1000);
        let names: Vec<Vec<&str>> = batches
            .iter()
            .map(|(b, _)| b.iter().map(|e| e.name.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["a"], vec!["big"], vec!["b"]]);
    }

    proptest! {
        #[test]
        fn batches_keep_order_and_respect_the_limit(sizes in proptest::collection::vec(0usize..3000, 0..60), max in 100usize..4000) {
            let events: Vec<ObjectEvent> = sizes.iter().enumerate().map(|(i, s)| ev(&i.to_string(), *s)).collect();
            let batches = split(events.clone(), max);
            let flat: Vec<String> = batches.iter().flat_map(|(b, _)| b.iter().map(|e| e.name.clone())).collect();
            let want: Vec<String> = events.iter().map(|e| e.name.clone()).collect();
            prop_assert_eq!(flat, want);
            for (b, bytes) in &batches {
                prop_assert!(*bytes <= max || b.len() == 1, "batch of {} events, {} bytes over {}", b.len(), bytes, max);
                prop_assert_eq!(*bytes, b.iter().map(event_size).sum::<usize>());
            }
        }
    }

    #[tokio::test]
    async fn sequences_increase_per_account() {
        let (tx, mut rx) = mpsc::channel(16);
        let out = Outbound::new(tx, Budget::new(1, 1 << 20), 1000);
        out.events("a", vec![ev("1", 900), ev("2", 900)])
            .await
            .expect("send");
        out.events("b", vec![ev("3", 10)]).await.expect("send");
        let mut seen = Vec::new();
        while let Ok(f) = rx.try_recv() {
            if let Some(Frame::EventBatch(b)) = f.frame {
                seen.push((b.account, b.sequence));
            }
        }
        assert_eq!(
            seen,
            vec![("a".into(), 1), ("a".into(), 2), ("b".into(), 1)]
        );
    }
}
