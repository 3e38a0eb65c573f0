//! The sending half of a hub session: control frames as they come, and event batches
//! numbered per account, each holding its bytes in the budget until the hub
//! acknowledges it. What goes into a batch is decided in [`crate::batch`].

use std::collections::HashMap;
use std::sync::Arc;

use scale_agent_proto::v1::{AgentFrame, EventBatch, agent_frame::Frame};
use tokio::sync::{Mutex, mpsc};

use crate::batch::{Limits, Sealed};
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
    limits: Limits,
}

impl Outbound {
    /// An outbound half over `tx`, whose event batches are made under `limits`.
    pub fn new(tx: mpsc::Sender<AgentFrame>, budget: Budget, limits: Limits) -> Outbound {
        Outbound {
            tx,
            budget,
            ledger: Arc::new(Ledger::default()),
            sequences: Arc::default(),
            limits,
        }
    }

    /// The session's record of unacknowledged batches.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// The limits event batches are made under on this session.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Sends one control frame.
    pub async fn send(&self, frame: Frame) -> Result<(), Closed> {
        self.tx
            .send(AgentFrame { frame: Some(frame) })
            .await
            .map_err(|_| Closed)
    }

    /// Sends one sealed batch of `account`'s events. Waits until its bytes fit in the
    /// budget, and keeps them reserved until the hub acknowledges the batch's sequence.
    pub async fn send_batch(&self, account: &str, batch: Sealed) -> Result<(), Closed> {
        let reservation = self.budget.reserve(batch.bytes).await;
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
                    events: batch.events,
                })),
            })
            .await
            .map_err(|_| Closed)?;
        drop(seqs);
        self.ledger.sent(account, sequence, reservation);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scale_agent_proto::v1::ObjectEvent;

    fn sealed(name: &str) -> Sealed {
        Sealed {
            events: vec![ObjectEvent {
                name: name.into(),
                ..Default::default()
            }],
            bytes: 100,
        }
    }

    #[tokio::test]
    async fn sequences_increase_per_account() {
        let (tx, mut rx) = mpsc::channel(16);
        let out = Outbound::new(tx, Budget::new(1, 1 << 20), Limits::default());
        out.send_batch("a", sealed("1")).await.expect("send");
        out.send_batch("a", sealed("2")).await.expect("send");
        out.send_batch("b", sealed("3")).await.expect("send");
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

    #[tokio::test]
    async fn a_batch_holds_its_bytes_until_acknowledged() {
        let (tx, _rx) = mpsc::channel(16);
        let budget = Budget::new(1, 1 << 20);
        let out = Outbound::new(tx, budget.clone(), Limits::default());
        out.send_batch("a", sealed("1")).await.expect("send");
        out.send_batch("a", sealed("2")).await.expect("send");
        assert_eq!(budget.buffered_bytes(), 200);
        out.ledger().acked("a", 1);
        assert_eq!(budget.buffered_bytes(), 100);
        out.ledger().acked("a", 2);
        assert_eq!(budget.buffered_bytes(), 0);
    }
}
