//! The uniqueness rule: one in-memory index of every shard's account claims, deciding
//! which shard owns each account name.
//!
//! - The oldest claim wins: claims are ordered by when they were made (the shard's
//!   `creationTimestamp` for claims seen when the index is first filled or for a new
//!   shard, the time the operator saw the spec change for an account added later), then
//!   by `namespace/name`.
//! - A holder never loses: once a shard holds a name (its agent config carries it, or is
//!   about to), a later claimant waits, whatever its age.
//! - Handoff without overlap: a shard that stops claiming a name keeps holding it until
//!   its agent config has been rewritten without it ([`ClaimIndex::published`]); only then
//!   may the next claimant take it, so no two agent configs ever carry one name.
//!
//! Plain data and plain functions, no I/O: the reconciler feeds it from the AgentShard
//! watch and from its own writes.

use std::collections::{BTreeMap, BTreeSet};

use scale_agent_crds::ShardRef;

/// Seconds since the Unix epoch: when a claim was made.
pub type Since = i64;

/// Who gets an account name, as seen by one claimant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The name is this shard's: put it in its agent config.
    Owned,
    /// Another shard owns the name (or is first in line for it).
    Taken {
        /// The shard that owns the name.
        owner: ShardRef,
        /// The owner no longer claims the name and is rewriting its config without it:
        /// the name is on its way to the next claimant.
        releasing: bool,
    },
}

/// Every shard's claims, and which shard holds each name.
#[derive(Clone, Debug, Default)]
pub struct ClaimIndex {
    /// Account name → claimant → when it claimed the name.
    claims: BTreeMap<String, BTreeMap<ShardRef, Since>>,
    /// Shard → the names it claims.
    by_shard: BTreeMap<ShardRef, BTreeSet<String>>,
    /// Account name → the shard whose agent config carries it (or is about to).
    holders: BTreeMap<String, ShardRef>,
}

impl ClaimIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the index knows `shard` (it claims at least nothing: it was upserted).
    pub fn knows(&self, shard: &ShardRef) -> bool {
        self.by_shard.contains_key(shard)
    }

    /// The names `shard` claims.
    pub fn claims_of(&self, shard: &ShardRef) -> impl Iterator<Item = &str> {
        self.by_shard
            .get(shard)
            .into_iter()
            .flat_map(|names| names.iter().map(String::as_str))
    }

    /// The shards claiming `name`, oldest claim first.
    pub fn claimants(&self, name: &str) -> Vec<ShardRef> {
        let mut all: Vec<(Since, &ShardRef)> = self
            .claims
            .get(name)
            .map(|c| c.iter().map(|(s, t)| (*t, s)).collect())
            .unwrap_or_default();
        all.sort();
        all.into_iter().map(|(_, s)| s.clone()).collect()
    }

    /// The shard holding `name`, if any.
    pub fn holder(&self, name: &str) -> Option<&ShardRef> {
        self.holders.get(name)
    }

    /// Sets the names `shard` claims. A name it already claimed keeps its claim time; a
    /// new name is claimed at `created` when the shard is new to the index, else at `now`
    /// (so an old shard adding a name later cannot jump the queue).
    ///
    /// Returns every shard that shares a name with the old or new claims (including
    /// `shard`): they may need to be reconciled again.
    pub fn upsert(
        &mut self,
        shard: &ShardRef,
        names: impl IntoIterator<Item = String>,
        created: Since,
        now: Since,
    ) -> BTreeSet<ShardRef> {
        let since_new = if self.knows(shard) { now } else { created };
        let new: BTreeSet<String> = names.into_iter().collect();
        let old = self.by_shard.remove(shard).unwrap_or_default();
        for gone in old.difference(&new) {
            if let Some(c) = self.claims.get_mut(gone) {
                c.remove(shard);
                if c.is_empty() {
                    self.claims.remove(gone);
                }
            }
        }
        for name in &new {
            self.claims
                .entry(name.clone())
                .or_default()
                .entry(shard.clone())
                .or_insert(since_new);
        }
        let mut affected = self.sharing(old.iter().chain(new.iter()));
        affected.insert(shard.clone());
        self.by_shard.insert(shard.clone(), new);
        affected
    }

    /// Forgets `shard` (it was deleted): its claims and holdings go at once, its agent
    /// config going with it. Returns the other shards that claimed one of its names.
    pub fn remove(&mut self, shard: &ShardRef) -> BTreeSet<ShardRef> {
        let old = self.by_shard.remove(shard).unwrap_or_default();
        for name in &old {
            if let Some(c) = self.claims.get_mut(name) {
                c.remove(shard);
                if c.is_empty() {
                    self.claims.remove(name);
                }
            }
        }
        let held: Vec<String> = self
            .holders
            .iter()
            .filter(|(_, h)| *h == shard)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &held {
            self.holders.remove(name);
        }
        let mut affected = self.sharing(old.iter().chain(held.iter()));
        affected.remove(shard);
        affected
    }

    /// Forgets every shard not in `keep` (after a re-list). Returns the shards affected.
    pub fn retain(&mut self, keep: &BTreeSet<ShardRef>) -> BTreeSet<ShardRef> {
        let gone: Vec<ShardRef> = self
            .by_shard
            .keys()
            .chain(self.holders.values())
            .filter(|s| !keep.contains(*s))
            .cloned()
            .collect();
        let mut affected = BTreeSet::new();
        for shard in gone {
            affected.extend(self.remove(&shard));
        }
        affected.retain(|s| keep.contains(s));
        affected
    }

    /// Decides every name `shard` claims, in name order. A name with no holder goes to its
    /// oldest claimant; when that is `shard`, `shard` becomes the holder at once, so no
    /// other shard can be granted it meanwhile.
    pub fn resolve(&mut self, shard: &ShardRef) -> BTreeMap<String, Resolution> {
        let names: Vec<String> = self.claims_of(shard).map(str::to_owned).collect();
        names
            .into_iter()
            .map(|name| {
                let r = self.resolve_one(shard, &name);
                (name, r)
            })
            .collect()
    }

    fn resolve_one(&mut self, shard: &ShardRef, name: &str) -> Resolution {
        if let Some(holder) = self.holders.get(name) {
            if holder == shard {
                return Resolution::Owned;
            }
            let releasing = !self
                .claims
                .get(name)
                .is_some_and(|c| c.contains_key(holder));
            return Resolution::Taken {
                owner: holder.clone(),
                releasing,
            };
        }
        let winner = self.claims.get(name).and_then(|c| {
            c.iter()
                .min_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)))
                .map(|(s, _)| s.clone())
        });
        match winner {
            Some(w) if &w == shard => {
                self.holders.insert(name.to_owned(), shard.clone());
                Resolution::Owned
            }
            Some(w) => Resolution::Taken {
                owner: w,
                releasing: false,
            },
            // `shard` does not claim it: resolve is only called on claimed names.
            None => Resolution::Taken {
                owner: shard.clone(),
                releasing: true,
            },
        }
    }

    /// Records that `shard`'s agent config now carries exactly `carried`. Each name the
    /// shard holds but neither carries nor claims any more is released. Returns the
    /// shards waiting for a released name.
    pub fn published(
        &mut self,
        shard: &ShardRef,
        carried: &BTreeSet<String>,
    ) -> BTreeSet<ShardRef> {
        let claimed: BTreeSet<&str> = self.claims_of(shard).collect();
        let released: Vec<String> = self
            .holders
            .iter()
            .filter(|(n, h)| *h == shard && !carried.contains(*n) && !claimed.contains(n.as_str()))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &released {
            self.holders.remove(name);
        }
        let mut affected = self.sharing(released.iter());
        affected.remove(shard);
        affected
    }

    /// Marks `shard` as the holder of `name` (what its status says it serves), when no
    /// other shard holds it, or when `shard`'s claim is older than the current holder's.
    /// Used when the operator starts leading and learns the holders from the statuses.
    pub fn seed_holder(&mut self, name: &str, shard: &ShardRef) {
        let since = |s: &ShardRef| {
            self.claims
                .get(name)
                .and_then(|c| c.get(s).copied())
                .unwrap_or(Since::MAX)
        };
        let replace = match self.holders.get(name) {
            None => true,
            Some(current) => (since(shard), shard) < (since(current), current),
        };
        if replace {
            self.holders.insert(name.to_owned(), shard.clone());
        }
    }

    /// Forgets every holder (before seeding them again).
    pub fn clear_holders(&mut self) {
        self.holders.clear();
    }

    /// Every shard claiming one of `names`.
    fn sharing<'a>(&self, names: impl Iterator<Item = &'a String>) -> BTreeSet<ShardRef> {
        let mut out = BTreeSet::new();
        for name in names {
            if let Some(c) = self.claims.get(name) {
                out.extend(c.keys().cloned());
            }
            if let Some(h) = self.holders.get(name) {
                out.insert(h.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ns: &str, name: &str) -> ShardRef {
        ShardRef::new(ns, name)
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    fn taken(owner: &ShardRef) -> Resolution {
        Resolution::Taken {
            owner: owner.clone(),
            releasing: false,
        }
    }

    #[test]
    fn single_claim_is_owned() {
        let mut idx = ClaimIndex::new();
        let a = s("ns", "a");
        idx.upsert(&a, names(&["x", "y"]), 10, 10);
        let r = idx.resolve(&a);
        assert_eq!(r["x"], Resolution::Owned);
        assert_eq!(r["y"], Resolution::Owned);
        assert_eq!(idx.holder("x"), Some(&a));
    }

    #[test]
    fn oldest_claim_wins_even_when_resolved_last() {
        let mut idx = ClaimIndex::new();
        let old = s("z-ns", "old");
        let new = s("a-ns", "new");
        idx.upsert(&new, names(&["x"]), 20, 20);
        idx.upsert(&old, names(&["x"]), 10, 20);
        assert_eq!(idx.resolve(&new)["x"], taken(&old));
        assert_eq!(idx.resolve(&old)["x"], Resolution::Owned);
        assert_eq!(idx.resolve(&new)["x"], taken(&old));
    }

    #[test]
    fn ties_break_by_namespace_then_name() {
        let mut idx = ClaimIndex::new();
        let b = s("ns-b", "a");
        let a2 = s("ns-a", "z");
        let a1 = s("ns-a", "b");
        for sh in [&b, &a2, &a1] {
            idx.upsert(sh, names(&["x"]), 5, 5);
        }
        assert_eq!(idx.resolve(&b)["x"], taken(&a1));
        assert_eq!(idx.resolve(&a2)["x"], taken(&a1));
        assert_eq!(idx.resolve(&a1)["x"], Resolution::Owned);
    }

    #[test]
    fn holder_never_loses_to_an_older_shard_claiming_later() {
        let mut idx = ClaimIndex::new();
        let young = s("ns", "young");
        let old = s("ns", "old");
        // `old` exists first, without the name.
        idx.upsert(&old, names(&[]), 1, 1);
        idx.upsert(&young, names(&["x"]), 50, 50);
        assert_eq!(idx.resolve(&young)["x"], Resolution::Owned);
        // `old` adds the name later: its claim is as of now, and young holds it anyway.
        let affected = idx.upsert(&old, names(&["x"]), 1, 60);
        assert!(affected.contains(&young) && affected.contains(&old));
        assert_eq!(idx.resolve(&old)["x"], taken(&young));
        assert_eq!(idx.resolve(&young)["x"], Resolution::Owned);
    }

    #[test]
    fn removing_an_account_hands_off_only_after_publish() {
        let mut idx = ClaimIndex::new();
        let a = s("ns", "a");
        let b = s("ns", "b");
        idx.upsert(&a, names(&["x", "y"]), 1, 1);
        assert_eq!(idx.resolve(&a)["x"], Resolution::Owned);
        // One apply: x moves from a to b.
        idx.upsert(&b, names(&["x"]), 2, 2);
        idx.upsert(&a, names(&["y"]), 1, 3);
        // a's config still carries x: b waits.
        assert_eq!(
            idx.resolve(&b)["x"],
            Resolution::Taken {
                owner: a.clone(),
                releasing: true
            }
        );
        // a rewrites its config without x: x is released, b is told.
        let carried: BTreeSet<String> = ["y".to_string()].into();
        let waiting = idx.published(&a, &carried);
        assert_eq!(waiting, [b.clone()].into());
        assert_eq!(idx.resolve(&b)["x"], Resolution::Owned);
    }

    #[test]
    fn publish_keeps_a_name_still_claimed_but_left_out() {
        // An Invalid account (Secret missing) is left out of the config but stays claimed.
        let mut idx = ClaimIndex::new();
        let a = s("ns", "a");
        let b = s("ns", "b");
        idx.upsert(&a, names(&["x"]), 1, 1);
        idx.upsert(&b, names(&["x"]), 2, 2);
        idx.resolve(&a);
        assert!(idx.published(&a, &BTreeSet::new()).is_empty());
        assert_eq!(idx.resolve(&b)["x"], taken(&a));
    }

    #[test]
    fn deleting_the_owner_frees_the_name_for_the_next_oldest() {
        let mut idx = ClaimIndex::new();
        let a = s("ns", "a");
        let b = s("ns", "b");
        let c = s("ns", "c");
        idx.upsert(&a, names(&["x"]), 1, 1);
        idx.upsert(&c, names(&["x"]), 3, 3);
        idx.upsert(&b, names(&["x"]), 2, 2);
        idx.resolve(&a);
        let affected = idx.remove(&a);
        assert_eq!(affected, [b.clone(), c.clone()].into());
        assert_eq!(idx.resolve(&c)["x"], taken(&b));
        assert_eq!(idx.resolve(&b)["x"], Resolution::Owned);
        assert!(!idx.knows(&a));
    }

    #[test]
    fn seeding_holders_from_status_keeps_the_serving_shard() {
        let mut idx = ClaimIndex::new();
        let young = s("ns", "young");
        let old = s("ns", "old");
        // After a restart both claims look as old as their shards; the status says young serves x.
        idx.upsert(&old, names(&["x"]), 1, 100);
        idx.upsert(&young, names(&["x"]), 50, 100);
        idx.seed_holder("x", &young);
        assert_eq!(idx.resolve(&old)["x"], taken(&young));
        assert_eq!(idx.resolve(&young)["x"], Resolution::Owned);
    }

    #[test]
    fn retain_drops_shards_that_vanished_during_a_relist() {
        let mut idx = ClaimIndex::new();
        let a = s("ns", "a");
        let b = s("ns", "b");
        idx.upsert(&a, names(&["x"]), 1, 1);
        idx.upsert(&b, names(&["x"]), 2, 2);
        idx.resolve(&a);
        let affected = idx.retain(&[b.clone()].into());
        assert_eq!(affected, [b.clone()].into());
        assert_eq!(idx.resolve(&b)["x"], Resolution::Owned);
    }
}
