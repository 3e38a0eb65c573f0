//! The memory budget: at most `concurrentSyncs` initial lists at once, and at most
//! `maxBufferedBytes` of events sent but not yet acknowledged by the hub. When the byte
//! budget is used up, watchers stop reading (backpressure) until the hub acknowledges.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Limits shared by every account of one agent.
#[derive(Debug, Clone)]
pub struct Budget {
    syncs: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_bytes: u32,
}

/// Bytes reserved for one batch, returned when the hub acknowledges it (or the session
/// ends and the ledger is dropped).
#[derive(Debug)]
pub struct Reservation(#[allow(dead_code)] OwnedSemaphorePermit);

impl Budget {
    /// A budget of `concurrent_syncs` lists and `max_buffered_bytes` bytes.
    pub fn new(concurrent_syncs: u32, max_buffered_bytes: u64) -> Budget {
        // Semaphore permits are u32-sized per acquisition; cap the budget there (4 GiB).
        let max_bytes = u32::try_from(max_buffered_bytes).unwrap_or(u32::MAX).max(1);
        Budget {
            syncs: Arc::new(Semaphore::new(concurrent_syncs.max(1) as usize)),
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            max_bytes,
        }
    }

    /// Waits for a slot to run an initial list.
    pub async fn sync_slot(&self) -> OwnedSemaphorePermit {
        match self.syncs.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed.
            Err(_) => unreachable!("sync semaphore closed"),
        }
    }

    /// Waits until `bytes` fit in the budget and reserves them. A batch larger than the
    /// whole budget reserves the whole budget, so it still goes out, alone.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let n = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_bytes);
        match self.bytes.clone().acquire_many_owned(n).await {
            Ok(p) => Reservation(p),
            Err(_) => unreachable!("byte semaphore closed"),
        }
    }

    /// Bytes reserved now (sent, not yet acknowledged).
    pub fn buffered_bytes(&self) -> u64 {
        u64::from(self.max_bytes).saturating_sub(self.bytes.available_permits() as u64)
    }

    /// Lists running now.
    pub fn syncs_available(&self) -> usize {
        self.syncs.available_permits()
    }
}

/// Per-session record of unacknowledged batches: account → (sequence, reservation).
#[derive(Debug, Default)]
pub struct Ledger {
    pending: Mutex<HashMap<String, VecDeque<(u64, Reservation)>>>,
}

impl Ledger {
    /// Records a sent batch.
    pub fn sent(&self, account: &str, sequence: u64, reservation: Reservation) {
        if let Ok(mut p) = self.pending.lock() {
            p.entry(account.to_string())
                .or_default()
                .push_back((sequence, reservation));
        }
    }

    /// The hub acknowledged every batch of `account` up to `sequence`: release them.
    pub fn acked(&self, account: &str, sequence: u64) {
        if let Ok(mut p) = self.pending.lock()
            && let Some(q) = p.get_mut(account)
        {
            while q.front().is_some_and(|(s, _)| *s <= sequence) {
                q.pop_front();
            }
        }
    }

    /// Forget an account's batches (it stopped streaming).
    pub fn forget(&self, account: &str) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(account);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reading_stops_when_the_budget_is_full_and_resumes_on_ack() {
        let budget = Budget::new(1, 1000);
        let ledger = Ledger::default();
        ledger.sent("a", 1, budget.reserve(600).await);
        ledger.sent("a", 2, budget.reserve(400).await);
        assert_eq!(budget.buffered_bytes(), 1000);
        // A third batch must wait: the budget is full.
        let blocked = tokio::time::timeout(Duration::from_millis(50), budget.reserve(100)).await;
        assert!(
            blocked.is_err(),
            "reserve should block while the budget is full"
        );
        ledger.acked("a", 1);
        assert_eq!(budget.buffered_bytes(), 400);
        let r = tokio::time::timeout(Duration::from_millis(50), budget.reserve(100)).await;
        assert!(r.is_ok(), "reserve should go through after an ack");
    }

    #[tokio::test]
    async fn oversized_batch_takes_the_whole_budget_and_still_goes() {
        let budget = Budget::new(1, 100);
        let r = tokio::time::timeout(Duration::from_millis(50), budget.reserve(10_000)).await;
        assert!(r.is_ok());
        assert_eq!(budget.buffered_bytes(), 100);
    }

    #[tokio::test]
    async fn dropping_the_ledger_releases_everything() {
        let budget = Budget::new(1, 100);
        {
            let ledger = Ledger::default();
            ledger.sent("a", 1, budget.reserve(100).await);
            assert_eq!(budget.buffered_bytes(), 100);
        }
        assert_eq!(budget.buffered_bytes(), 0);
    }

    #[tokio::test]
    async fn sync_slots_are_bounded() {
        let budget = Budget::new(2, 100);
        let a = budget.sync_slot().await;
        let _b = budget.sync_slot().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), budget.sync_slot())
                .await
                .is_err()
        );
        drop(a);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), budget.sync_slot())
                .await
                .is_ok()
        );
    }
}
