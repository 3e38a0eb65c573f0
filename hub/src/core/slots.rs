//! Things each owner holds at once (a token's watches, a client address's
//! connections), counted against a limit and given back when dropped.

use std::sync::Arc;

/// What each owner holds (a token's watches, keyed by its line; an address's
/// connections), counted against a limit.
#[derive(Debug)]
pub struct Slots<K: std::hash::Hash + Eq + Copy = usize> {
    held: std::sync::Mutex<std::collections::HashMap<K, usize>>,
}

impl<K: std::hash::Hash + Eq + Copy> Default for Slots<K> {
    fn default() -> Self {
        Slots {
            held: std::sync::Mutex::default(),
        }
    }
}

/// One thing an owner holds: given back when dropped.
#[derive(Debug)]
pub struct Slot<K: std::hash::Hash + Eq + Copy = usize> {
    slots: Arc<Slots<K>>,
    owner: K,
}

impl<K: std::hash::Hash + Eq + Copy> Slots<K> {
    /// A slot for `owner`, unless it holds `max`.
    pub fn take(self: &Arc<Slots<K>>, owner: K, max: usize) -> Option<Slot<K>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(owner).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: Arc::clone(self),
            owner,
        })
    }
}

impl<K: std::hash::Hash + Eq + Copy> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.owner);
            }
        }
    }
}
