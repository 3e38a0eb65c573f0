//! The versions of each shard that the operator's own status writes replaced.
//!
//! A reconcile works on the shard as the cache has it, and the cache learns of the
//! operator's status writes only when their watch events arrive. A reconcile that
//! starts before then (a child's change, a Secret's, a replica's triggered it) would
//! decide from the status before the write, find it different from what it computes,
//! and send a write bound to lose (the resourceVersion precondition: a 409). Such a
//! reconcile has nothing to do: the newer version is on its way, and its watch event
//! brings a reconcile of it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use scale_agent_crds::ShardRef;

/// How many replaced versions are kept per shard: a reconcile writes at most two (the
/// accounts it reserves, then the status), and the cache is rarely more than a few
/// writes behind.
const KEPT: usize = 8;

/// Shard → the resourceVersions the operator's own writes replaced, oldest first.
#[derive(Debug, Default)]
pub struct Superseded {
    shards: Mutex<HashMap<ShardRef, VecDeque<String>>>,
}

impl Superseded {
    /// Nothing replaced yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operator wrote onto `shard` at `replaced`: that version is now behind.
    pub fn replaced(&self, shard: &ShardRef, replaced: Option<&str>) {
        let (Some(rv), Ok(mut s)) = (replaced, self.shards.lock()) else {
            return;
        };
        let versions = s.entry(shard.clone()).or_default();
        if versions.len() >= KEPT {
            versions.pop_front();
        }
        versions.push_back(rv.to_owned());
    }

    /// Whether `resource_version` of `shard` is one the operator's own writes replaced
    /// (the cache is behind them).
    pub fn is_behind(&self, shard: &ShardRef, resource_version: Option<&str>) -> bool {
        let Some(rv) = resource_version else {
            return false;
        };
        self.shards
            .lock()
            .ok()
            .is_some_and(|s| s.get(shard).is_some_and(|v| v.iter().any(|r| r == rv)))
    }

    /// Keeps the versions of the shards `keep` says still exist.
    pub fn retain(&self, keep: impl Fn(&ShardRef) -> bool) {
        if let Ok(mut s) = self.shards.lock() {
            s.retain(|shard, _| keep(shard));
        }
    }

    /// Forgets a shard that is going.
    pub fn forget(&self, shard: &ShardRef) {
        if let Ok(mut s) = self.shards.lock() {
            s.remove(shard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_versions_an_own_write_replaced_are_behind() {
        let s = Superseded::new();
        let (east, west) = (ShardRef::new("ns", "east"), ShardRef::new("ns", "west"));
        s.replaced(&east, Some("7"));
        s.replaced(&east, Some("8"));
        assert!(s.is_behind(&east, Some("7")) && s.is_behind(&east, Some("8")));
        // The version written, someone else's, another shard's: current.
        assert!(!s.is_behind(&east, Some("9")));
        assert!(!s.is_behind(&west, Some("7")));
        assert!(!s.is_behind(&east, None));
        s.forget(&east);
        assert!(!s.is_behind(&east, Some("7")));
        s.replaced(&east, Some("7"));
        s.replaced(&west, Some("7"));
        s.retain(|r| r == &west);
        assert!(!s.is_behind(&east, Some("7")) && s.is_behind(&west, Some("7")));
    }

    #[test]
    fn only_the_last_few_are_kept() {
        let s = Superseded::new();
        let east = ShardRef::new("ns", "east");
        for rv in 0..20 {
            s.replaced(&east, Some(&rv.to_string()));
        }
        assert!(!s.is_behind(&east, Some("0")));
        assert!(s.is_behind(&east, Some("19")));
    }
}
