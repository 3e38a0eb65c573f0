//! Property tests of account ownership, with the operator's real claims index, its real
//! `decide` and status computation, its webhook check and the hub's ownership check, over
//! random histories of spec changes, deletions, watch events delivered late and
//! reconciles of several shards interleaved step by step (as the controller runs them).
//!
//! - Safety, at every step: no account name is in two agent configs; every name a config
//!   carries is held by that shard's status; a shard keeps serving a name it serves and
//!   still claims.
//! - Agreement, whenever the statuses are as the operator wrote them (every watch event
//!   delivered, no reconcile half done): the operator's index, the webhook and the hub
//!   name the same owner for every name, and give a claimant the name in the same cases.
//! - Liveness: once the operator has caught up, every claimed name is served by exactly
//!   one of its claimants, the one the rule names.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

mod common;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher::Event;
use proptest::prelude::*;
use scale_agent_crds::{AgentConfig, AgentShard, CONFIG_KEY, ShardRef};
use scale_agent_hub::core::ownership::{Ownership, Verdict};
use scale_agent_operator::claims_index::{ClaimsIndex, Resolution};
use scale_agent_operator::decide::Decision;
use scale_agent_operator::status;

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
const SHARDS: usize = 6;

fn sref(i: usize) -> ShardRef {
    ShardRef::new(format!("ns-{}", i % 3), format!("shard-{i}"))
}

fn time(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).expect("valid"))
}

fn names(mask: u8) -> Vec<&'static str> {
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect()
}

fn new_shard(i: usize, created: i64, mask: u8) -> AgentShard {
    let r = sref(i);
    let spec = serde_json::json!({
        "hub": { "address": "hub.example.com:443" },
        "image": "example.com/agent:1",
        "accounts": names(mask).iter().map(|a| serde_json::json!({
            "name": a, "kubeconfigSecretRef": { "name": format!("kc-{a}") }
        })).collect::<Vec<_>>()
    });
    let mut s = AgentShard::new(&r.name, serde_json::from_value(spec).expect("spec"));
    s.metadata.namespace = Some(r.namespace);
    s.metadata.uid = Some(format!("uid-{i}-{created}"));
    s.metadata.creation_timestamp = Some(time(created));
    s.metadata.generation = Some(1);
    s
}

#[derive(Clone, Debug)]
enum Op {
    /// The user creates shard i, or sets its accounts.
    Spec(usize, u8),
    /// The user deletes shard i (its children go with it).
    Delete(usize),
    /// The watch delivers the oldest pending event.
    Deliver,
    /// Shard i's reconcile takes its next step (starting one if none runs).
    Step(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..SHARDS, any::<u8>()).prop_map(|(s, m)| Op::Spec(s, m & 0x1f)),
        1 => (0..SHARDS).prop_map(Op::Delete),
        4 => Just(Op::Deliver),
        6 => (0..SHARDS).prop_map(Op::Step),
    ]
}

/// A reconcile between its steps: the shard as read, its decision, and the
/// resourceVersion its status writes are conditioned on.
enum Pending {
    /// Decided (and the newly held names recorded); the children come next.
    Decided(AgentShard, Decision, String),
    /// Children applied; the status comes next.
    Applied(AgentShard, Decision, String),
}

/// The API server, the watch and the operator.
#[derive(Default)]
struct World {
    /// The API server's AgentShards.
    api: BTreeMap<usize, AgentShard>,
    /// What each agent config (ConfigMap) carries.
    configs: BTreeMap<usize, BTreeSet<String>>,
    /// Watch events not delivered yet.
    queue: VecDeque<Event<AgentShard>>,
    /// The operator's shard cache: what the watch delivered.
    store: BTreeMap<ShardRef, AgentShard>,
    index: ClaimsIndex,
    pending: BTreeMap<usize, Pending>,
    now: i64,
    /// The API server's last resourceVersion.
    rv: u64,
}

fn secrets() -> BTreeMap<String, Option<Secret>> {
    NAMES
        .iter()
        .map(|n| (format!("kc-{n}"), Some(common::kubeconfig_secret())))
        .collect()
}

fn carried(d: &Decision) -> Option<BTreeSet<String>> {
    let c = d.children.as_ref()?;
    let yaml = &c.config_map.data.as_ref()?[CONFIG_KEY];
    let config = AgentConfig::from_yaml(yaml).ok()?;
    Some(config.accounts.into_iter().map(|a| a.name).collect())
}

impl World {
    fn apply(&mut self, op: &Op) {
        self.now += 1;
        match op {
            Op::Spec(i, mask) => {
                let mut s = match self.api.get(i) {
                    Some(old) => {
                        let mut s = old.clone();
                        s.spec = new_shard(*i, 0, *mask).spec;
                        s.metadata.generation = s.metadata.generation.map(|g| g + 1);
                        s
                    }
                    None => new_shard(*i, self.seconds(), *mask),
                };
                self.rv += 1;
                s.metadata.resource_version = Some(self.rv.to_string());
                self.api.insert(*i, s.clone());
                self.queue.push_back(Event::Apply(s));
            }
            Op::Delete(i) => {
                if let Some(s) = self.api.remove(i) {
                    self.configs.remove(i);
                    self.queue.push_back(Event::Delete(s));
                }
            }
            Op::Deliver => self.deliver(),
            Op::Step(i) => self.step(*i),
        }
        self.check_safety();
    }

    fn deliver(&mut self) {
        let Some(event) = self.queue.pop_front() else {
            return;
        };
        match &event {
            Event::Apply(s) | Event::InitApply(s) => {
                self.store.insert(s.shard_ref().expect("ref"), s.clone());
            }
            Event::Delete(s) => {
                self.store.remove(&s.shard_ref().expect("ref"));
            }
            Event::Init | Event::InitDone => {}
        }
        match event {
            Event::Apply(s) => {
                self.index.observe(&s);
            }
            Event::Delete(s) => {
                self.index.forget(&s.shard_ref().expect("ref"));
            }
            _ => {}
        }
    }

    /// A status write on the API server: a merge patch of the fields that changed, on
    /// the condition that the shard is still at `rv`. Its new resourceVersion, or `None`
    /// (409, or 404).
    fn write_status(&mut self, i: usize, rv: &str, patch: serde_json::Value) -> Option<String> {
        let s = self.api.get_mut(&i)?;
        if s.metadata.resource_version.as_deref() != Some(rv) {
            return None;
        }
        self.rv += 1;
        s.metadata.resource_version = Some(self.rv.to_string());
        let mut status = serde_json::to_value(s.status.clone().unwrap_or_default()).expect("json");
        if let (Some(into), Some(from)) = (status.as_object_mut(), patch.as_object()) {
            for (k, v) in from {
                into.insert(k.clone(), v.clone());
            }
        }
        s.status = Some(serde_json::from_value(status).expect("a status"));
        self.queue.push_back(Event::Apply(s.clone()));
        s.metadata.resource_version.clone()
    }

    fn step(&mut self, i: usize) {
        match self.pending.remove(&i) {
            None => {
                // Fetch from the cache, ask the index, decide; record new holds first.
                let Some(shard) = self.store.get(&sref(i)).cloned() else {
                    return;
                };
                let resolutions = self.index.resolve(&shard);
                let secrets = secrets();
                let decision =
                    common::decide(&shard, &resolutions, &secrets, &time(self.seconds()));
                let mut rv = shard.metadata.resource_version.clone().expect("rv");
                if let Some(accounts) = &decision.reserve {
                    let patch = serde_json::json!({ "accounts": accounts });
                    match self.write_status(i, &rv, patch) {
                        Some(new) => rv = new,
                        // The cache was behind: decided again on the next trigger.
                        None => return,
                    }
                }
                self.pending
                    .insert(i, Pending::Decided(shard, decision, rv));
            }
            Some(Pending::Decided(shard, decision, rv)) => {
                // Children of a shard deleted meanwhile (or deleted and created again)
                // carry the old owner's uid: garbage collection takes them.
                let same = self.api.get(&i).map(|a| &a.metadata.uid) == Some(&shard.metadata.uid);
                if same && let Some(names) = carried(&decision) {
                    // A holder keeps what it serves and still claims.
                    let before = self.configs.get(&i).cloned().unwrap_or_default();
                    for n in &before {
                        if shard.spec.account(n).is_some() {
                            assert!(
                                names.contains(n),
                                "{} stopped serving {n}, which it serves and still claims",
                                sref(i)
                            );
                        }
                    }
                    self.configs.insert(i, names);
                }
                self.pending
                    .insert(i, Pending::Applied(shard, decision, rv));
            }
            Some(Pending::Applied(shard, decision, rv)) => {
                let new = status::compute(
                    shard.status.as_ref(),
                    &decision.observed,
                    time(self.seconds()),
                );
                if let Some(patch) = status::patch(shard.status.as_ref(), &new)
                    && self.write_status(i, &rv, patch).is_none()
                {
                    return; // Stale: decided again on the next trigger.
                }
                self.index.published(&sref(i), &status::holds(&new));
            }
        }
    }

    fn check_safety(&self) {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, names) in &self.configs {
            let held = self
                .api
                .get(i)
                .and_then(|s| s.status.as_ref())
                .map(status::holds)
                .unwrap_or_default();
            for n in names {
                if let Some(other) = seen.insert(n, *i) {
                    panic!(
                        "{n} is in the configs of both {} and {}",
                        sref(other),
                        sref(*i)
                    );
                }
                assert!(
                    held.contains(n),
                    "{}'s config carries {n} but its status does not hold it",
                    sref(*i)
                );
            }
        }
    }

    /// The clock as the API server records times: whole seconds, several steps in one
    /// (so claims often tie on time and the namespace/name tie-break decides).
    fn seconds(&self) -> i64 {
        self.now / 4
    }

    /// The statuses are as the operator wrote them: every event delivered, no reconcile
    /// half done, no decision waiting for a status (a reconcile that found its copy
    /// stale keeps its grants until the shard's next reconcile).
    fn caught_up(&self) -> bool {
        self.queue.is_empty()
            && self.pending.is_empty()
            && NAMES.iter().all(|n| self.index.granted(n).is_none())
    }

    /// Delivers every event and finishes every reconcile half done.
    fn settle(&mut self) {
        loop {
            while !self.queue.is_empty() {
                self.apply(&Op::Deliver);
            }
            let Some(i) = self.pending.keys().next().copied() else {
                break;
            };
            self.apply(&Op::Step(i));
        }
    }

    /// Reconciles every shard to completion, a few rounds, as the triggers would.
    fn catch_up(&mut self) {
        for _ in 0..4 {
            for i in 0..SHARDS {
                for _ in 0..3 {
                    self.apply(&Op::Step(i));
                }
                self.settle();
            }
        }
    }

    /// The index, the webhook and the hub agree on every name, over the shards as stored.
    fn check_agreement(&self) -> Result<(), TestCaseError> {
        let shards: Vec<Arc<AgentShard>> = self.api.values().cloned().map(Arc::new).collect();
        let hub = Ownership::from_shards(shards.iter().map(AsRef::as_ref));
        for n in NAMES {
            prop_assert_eq!(
                self.index.owner(n).map(|o| o.shard.clone()),
                hub.owner(n),
                "index and hub name different owners of {}",
                n
            );
        }
        for s in &shards {
            let me = s.shard_ref().expect("ref");
            // The index's answer, without granting anything.
            let resolutions = self.index.clone().resolve(s);
            // What the webhook answers (it asks the index): a create of `s`.
            let taken: BTreeMap<String, ShardRef> = self.index.taken(s, None).into_iter().collect();
            for (n, r) in &resolutions {
                let verdict = hub.check(n, &me);
                match r {
                    Resolution::Owned => {
                        prop_assert_eq!(&verdict, &Verdict::Owner, "{} {}: index Owned", me, n);
                        prop_assert!(!taken.contains_key(n), "{} {}: webhook says taken", me, n);
                    }
                    Resolution::Taken { owner, .. } => {
                        prop_assert!(
                            matches!(&verdict, Verdict::NotOwner { owner: Some(o), .. } if o == owner),
                            "{} {}: index says {} owns it, hub says {:?}",
                            me,
                            n,
                            owner,
                            verdict
                        );
                        prop_assert_eq!(taken.get(n), Some(owner), "{} {}: webhook", me, n);
                    }
                }
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_index_the_webhook_and_the_hub_agree_and_no_name_is_served_twice(
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let mut w = World::default();
        for op in &ops {
            w.apply(op);
            if w.caught_up() {
                w.check_agreement()?;
            }
        }
        w.settle();
        if w.caught_up() {
            w.check_agreement()?;
        }
        w.catch_up();
        prop_assert!(w.caught_up(), "not caught up after reconciling everyone");
        w.check_agreement()?;
        // No grant outlives its reconcile: every one shows in a status by now.
        for n in NAMES {
            prop_assert_eq!(w.index.granted(n), None, "{} still granted", n);
        }
        // Every claimed name is served by exactly one claimant: its owner by the rule.
        let hub = Ownership::from_shards(w.api.values());
        for n in NAMES {
            let claimants: Vec<usize> = w
                .api
                .iter()
                .filter(|(_, s)| s.spec.account(n).is_some())
                .map(|(i, _)| *i)
                .collect();
            let serving: Vec<usize> = w
                .configs
                .iter()
                .filter(|(_, c)| c.contains(n))
                .map(|(i, _)| *i)
                .collect();
            if claimants.is_empty() {
                prop_assert!(serving.is_empty(), "{} unclaimed but served by {:?}", n, serving);
            } else {
                prop_assert_eq!(serving.len(), 1, "{} claimed by {:?}, served by {:?}", n, claimants, serving);
                let owner = hub.owner(n).map(|k| ShardRef::new(k.namespace, k.name));
                prop_assert_eq!(owner.as_ref(), Some(&sref(serving[0])));
            }
        }
    }

    #[test]
    fn without_statuses_the_oldest_shard_wins_whatever_the_resolve_order(
        created in prop::collection::vec(0..4i64, 2..SHARDS),
        order in Just(()).prop_perturb(|_, mut rng| {
            let mut v: Vec<usize> = (0..SHARDS).collect();
            for i in (1..v.len()).rev() {
                let j = (rng.next_u32() as usize) % (i + 1);
                v.swap(i, j);
            }
            v
        }),
    ) {
        let mut idx = ClaimsIndex::new();
        let shards: Vec<AgentShard> = created
            .iter()
            .enumerate()
            .map(|(i, c)| new_shard(i, *c, 1))
            .collect();
        for s in &shards {
            idx.observe(s);
        }
        let expected = (0..created.len())
            .min_by(|a, b| (created[*a], sref(*a)).cmp(&(created[*b], sref(*b))))
            .map(sref);
        let mut owners = Vec::new();
        for i in order.into_iter().filter(|i| *i < created.len()) {
            if idx.resolve(&shards[i])["a"] == Resolution::Owned {
                owners.push(sref(i));
            }
        }
        prop_assert_eq!(owners.len(), 1);
        prop_assert_eq!(Some(owners[0].clone()), expected);
    }

    #[test]
    fn many_shards_many_names(n in 50usize..300) {
        // Each shard claims a window of names; every name has exactly one owner, its
        // oldest claimant, and the index answers in time proportional to the claims.
        let mut idx = ClaimsIndex::new();
        let shards: Vec<AgentShard> = (0..n)
            .map(|i| {
                let spec = serde_json::json!({
                    "accounts": (i..i + 3).map(|k| serde_json::json!({
                        "name": format!("acct-{}", k % 100), "kubeconfigSecretRef": { "name": "kc" }
                    })).collect::<Vec<_>>()
                });
                let mut s = AgentShard::new(&format!("s-{i:04}"), serde_json::from_value(spec).expect("spec"));
                s.metadata.namespace = Some("ns".into());
                s.metadata.creation_timestamp = Some(time(i64::try_from(i).unwrap_or(0)));
                s
            })
            .collect();
        for s in &shards {
            idx.observe(s);
        }
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for s in &shards {
            for (name, r) in idx.resolve(s) {
                if r == Resolution::Owned {
                    let me = s.metadata.name.clone().unwrap_or_default();
                    prop_assert!(owner.insert(name.clone(), me).is_none(), "{} owned twice", name);
                }
            }
        }
        for (name, s) in &owner {
            let first = shards.iter().find(|sh| sh.spec.account(name).is_some()).and_then(|sh| sh.metadata.name.clone());
            prop_assert_eq!(first.as_ref(), Some(s), "{} not owned by its oldest claimant", name);
        }
    }
}

#[test]
fn a_recorded_move_never_overlaps() {
    // The end-to-end move test's story, step by step: a serves x; one apply gives x to b
    // and takes it from a; the reconciles run interleaved.
    let mut w = World::default();
    for op in [
        Op::Spec(0, 0b1),
        Op::Deliver,
        Op::Step(0),
        Op::Step(0),
        Op::Step(0),
        Op::Deliver,
        Op::Deliver,
        Op::Spec(1, 0b1),
        Op::Spec(0, 0b0),
        Op::Deliver,
        Op::Step(1),
        Op::Deliver,
        Op::Step(0),
        Op::Step(1),
        Op::Step(0),
        Op::Step(1),
        Op::Step(0),
    ] {
        w.apply(&op);
    }
    w.settle();
    w.catch_up();
    assert_eq!(w.configs.get(&1).map(|c| c.contains("a")), Some(true));
    assert_eq!(w.configs.get(&0).map(|c| c.contains("a")), Some(false));
}
