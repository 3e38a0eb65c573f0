//! Property tests of the claims index: whatever the order of spec changes, deletions and
//! reconciles, no account name is ever in two agent configs, a holder keeps its names,
//! the oldest claim wins, and every claimed name ends up served by exactly one claimant.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use scale_agent_crds::ShardRef;
use scale_agent_operator::index::{ClaimIndex, Resolution};

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

fn shard(i: usize) -> ShardRef {
    ShardRef::new(format!("ns-{}", i % 3), format!("shard-{i}"))
}

fn names(mask: u8) -> Vec<String> {
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, n)| (*n).to_owned())
        .collect()
}

#[derive(Clone, Debug)]
enum Op {
    /// A shard's spec now claims these names (created at this second).
    Upsert(usize, u8, i64),
    /// A shard is deleted.
    Remove(usize),
    /// A shard is reconciled: it writes its config with the names it owns.
    Reconcile(usize),
}

fn op(shards: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..shards, any::<u8>(), 0..5i64).prop_map(|(s, m, c)| Op::Upsert(s, m, c)),
        1 => (0..shards).prop_map(Op::Remove),
        4 => (0..shards).prop_map(Op::Reconcile),
    ]
}

/// The world: the index, and what each shard's agent config carries.
#[derive(Default)]
struct World {
    idx: ClaimIndex,
    configs: BTreeMap<ShardRef, BTreeSet<String>>,
    now: i64,
}

impl World {
    fn apply(&mut self, op: &Op) {
        self.now += 1;
        match op {
            Op::Upsert(s, mask, created) => {
                self.idx
                    .upsert(&shard(*s), names(*mask), *created, 10 + self.now);
            }
            Op::Remove(s) => {
                self.idx.remove(&shard(*s));
                self.configs.remove(&shard(*s));
            }
            Op::Reconcile(s) => {
                let s = shard(*s);
                if !self.idx.knows(&s) {
                    return;
                }
                let before = self.configs.get(&s).cloned().unwrap_or_default();
                let owned: BTreeSet<String> = self
                    .idx
                    .resolve(&s)
                    .into_iter()
                    .filter(|(_, r)| *r == Resolution::Owned)
                    .map(|(n, _)| n)
                    .collect();
                // A holder keeps what it still claims.
                let claimed: BTreeSet<&str> = self.idx.claims_of(&s).collect();
                for n in &before {
                    if claimed.contains(n.as_str()) {
                        assert!(
                            owned.contains(n),
                            "{s} lost {n}, which it served and still claims"
                        );
                    }
                }
                self.configs.insert(s.clone(), owned.clone());
                self.idx.published(&s, &owned);
            }
        }
        self.check_no_overlap();
    }

    fn check_no_overlap(&self) {
        let mut seen: BTreeMap<&str, &ShardRef> = BTreeMap::new();
        for (s, names) in &self.configs {
            for n in names {
                if let Some(other) = seen.insert(n, s) {
                    panic!("{n} is in the configs of both {other} and {s}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_name_in_two_configs_and_holders_keep_theirs(ops in prop::collection::vec(op(6), 1..80)) {
        let mut w = World::default();
        for op in &ops {
            w.apply(op);
        }
        // Quiesce: reconcile everyone a few rounds; every claimed name is then served by
        // exactly one of its claimants.
        for _ in 0..3 {
            for s in 0..6 {
                w.apply(&Op::Reconcile(s));
            }
        }
        for name in NAMES {
            let claimants = w.idx.claimants(name);
            let serving: Vec<&ShardRef> = w
                .configs
                .iter()
                .filter(|(_, n)| n.contains(name))
                .map(|(s, _)| s)
                .collect();
            if claimants.is_empty() {
                prop_assert!(serving.is_empty(), "{name} unclaimed but served by {serving:?}");
            } else {
                prop_assert_eq!(serving.len(), 1, "{} claimed by {:?}, served by {:?}", name, claimants, serving);
                prop_assert!(claimants.contains(serving[0]));
            }
        }
    }

    #[test]
    fn oldest_claim_wins_whatever_the_resolve_order(
        created in prop::collection::vec(0..4i64, 2..12),
        order in Just(()).prop_perturb(|_, mut rng| {
            let mut v: Vec<usize> = (0..12).collect();
            for i in (1..v.len()).rev() {
                let j = (rng.next_u32() as usize) % (i + 1);
                v.swap(i, j);
            }
            v
        }),
    ) {
        let mut idx = ClaimIndex::new();
        for (i, c) in created.iter().enumerate() {
            idx.upsert(&shard(i), vec!["x".to_owned()], *c, 100);
        }
        let expected = (0..created.len())
            .min_by(|a, b| (created[*a], shard(*a)).cmp(&(created[*b], shard(*b))))
            .map(shard);
        let mut owners = Vec::new();
        for i in order.into_iter().filter(|i| *i < created.len()) {
            if idx.resolve(&shard(i))["x"] == Resolution::Owned {
                owners.push(shard(i));
            }
        }
        prop_assert_eq!(owners.len(), 1);
        prop_assert_eq!(Some(owners[0].clone()), expected);
    }

    #[test]
    fn many_shards_many_names(n in 50usize..300) {
        // Each shard claims a window of names; every name has exactly one owner, and the
        // index answers in time proportional to the claims.
        let mut idx = ClaimIndex::new();
        for i in 0..n {
            let names: Vec<String> = (i..i + 3).map(|k| format!("acct-{}", k % 100)).collect();
            idx.upsert(&ShardRef::new("ns", format!("s-{i:04}")), names, i64::try_from(i).unwrap_or(0), 10_000);
        }
        let mut owner: BTreeMap<String, ShardRef> = BTreeMap::new();
        for i in 0..n {
            let s = ShardRef::new("ns", format!("s-{i:04}"));
            for (name, r) in idx.resolve(&s) {
                if r == Resolution::Owned {
                    prop_assert!(owner.insert(name.clone(), s.clone()).is_none(), "{} owned twice", name);
                }
            }
        }
        for (name, s) in &owner {
            prop_assert_eq!(&idx.claimants(name)[0], s, "{} not owned by its oldest claimant", name);
        }
    }
}
