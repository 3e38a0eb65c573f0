//! The claims index: the operator's one view of who owns each account name, and the one
//! place that asks for reconciles when that changes.
//!
//! The rule itself is [`scale_agent_crds::claims`], the same the webhook and the hub use:
//! the index keeps every shard's stakes current from the AgentShard watch and applies
//! it. What the index adds is its *grants*: a name the rule gives to a shard at its
//! reconcile is the shard's from that moment, before its status says so, so no other
//! reconcile can be granted it meanwhile. A grant lasts until the watch shows the
//! shard's status holding the name, the shard writes a status that does not hold it, or
//! the shard goes.
//!
//! One task owns the index ([`run`]); everything else talks to it through a
//! [`ClaimsHandle`]: the shard watch tells it what changed, reconciles ask it for their
//! answer and tell it what they wrote, the leader plugs in where triggers go. It has no
//! lock to poison, and the shards it says are affected become reconcile triggers in one
//! place.

use std::collections::{BTreeMap, BTreeSet};

use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;
use scale_agent_crds::claims::{self, Claims, Owner, Stake};
use scale_agent_crds::{AgentShard, ShardRef};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

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

/// Account name → its owner and the shards with a stake in it, at one moment.
type Owners = BTreeMap<String, (Option<Owner>, Vec<ShardRef>)>;

/// Every shard's stakes, and the names granted but not yet seen in a status.
#[derive(Clone, Debug, Default)]
pub struct ClaimsIndex {
    claims: Claims,
    /// Account name → the granted shard's stake, holding.
    grants: BTreeMap<String, Stake>,
}

impl ClaimsIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every shard known.
    pub fn shards(&self) -> impl Iterator<Item = &ShardRef> {
        self.claims.shards()
    }

    /// Whether `shard` is known.
    pub fn knows(&self, shard: &ShardRef) -> bool {
        self.claims.knows(shard)
    }

    /// The owner of `name`, grants included.
    pub fn owner(&self, name: &str) -> Option<Owner> {
        claims::owner(&self.effective(name, None))
    }

    /// The shard granted `name` whose status does not show it yet, if any.
    pub fn granted(&self, name: &str) -> Option<&ShardRef> {
        self.grants.get(name).map(Stake::shard)
    }

    /// A shard as the watch sees it now (added or changed; being deleted counts as gone).
    /// Returns the shards to reconcile: this one, and every shard with a stake in a name
    /// whose owner changed.
    pub fn observe(&mut self, shard: &AgentShard) -> BTreeSet<ShardRef> {
        let Some(sref) = shard.shard_ref() else {
            return BTreeSet::new();
        };
        let new = claims::stakes(shard);
        let touched: BTreeSet<String> = self
            .claims
            .names_of(&sref)
            .map(str::to_owned)
            .chain(new.keys().cloned())
            .chain(self.grants_of(&sref))
            .collect();
        let before = self.owners(&touched);
        self.claims.upsert(shard);
        // A grant ends when the status shows it held, or when the shard goes.
        let deleting = shard.metadata.deletion_timestamp.is_some();
        self.grants.retain(|name, g| {
            g.shard() != &sref || (!deleting && !new.get(name).is_some_and(|s| s.holds))
        });
        let mut affected = self.changed(&touched, before);
        if deleting {
            affected.remove(&sref);
        } else {
            affected.insert(sref);
        }
        affected
    }

    /// A shard that is gone. Returns the other shards to reconcile.
    pub fn forget(&mut self, shard: &ShardRef) -> BTreeSet<ShardRef> {
        let touched: BTreeSet<String> = self
            .claims
            .names_of(shard)
            .map(str::to_owned)
            .chain(self.grants_of(shard))
            .collect();
        let before = self.owners(&touched);
        self.claims.remove(shard);
        self.grants.retain(|_, g| g.shard() != shard);
        let mut affected = self.changed(&touched, before);
        affected.remove(shard);
        affected
    }

    /// After a re-list: forgets every shard not in `listed`. Returns the listed shards
    /// to reconcile.
    pub fn retain(&mut self, listed: &BTreeSet<ShardRef>) -> BTreeSet<ShardRef> {
        let gone: Vec<ShardRef> = self
            .claims
            .shards()
            .filter(|s| !listed.contains(*s))
            .cloned()
            .collect();
        let mut affected = BTreeSet::new();
        for shard in &gone {
            affected.extend(self.forget(shard));
        }
        affected.retain(|s| listed.contains(s));
        affected
    }

    /// Decides every name in `shard`'s spec, from the copy its reconcile works with. A
    /// name the rule gives to `shard` that its status does not hold yet is granted to it
    /// at once, so no other reconcile is given it before the status says so.
    pub fn resolve(&mut self, shard: &AgentShard) -> BTreeMap<String, Resolution> {
        let Some(sref) = shard.shard_ref() else {
            return BTreeMap::new();
        };
        let mine = claims::stakes(shard);
        let mut out = BTreeMap::new();
        for name in shard.account_names() {
            let Some(my) = mine.get(name) else {
                continue;
            };
            let resolution = match self.owner_with(name, &sref, my) {
                Some(o) if o.shard != sref => Resolution::Taken {
                    owner: o.shard,
                    releasing: o.releasing,
                },
                _ => {
                    if !my.holds && self.granted(name) != Some(&sref) {
                        let mut grant = my.clone();
                        grant.holds = true;
                        self.grants.insert(name.to_owned(), grant);
                    }
                    Resolution::Owned
                }
            };
            out.insert(name.to_owned(), resolution);
        }
        out
    }

    /// The names `new` adds (not in `old`) that the rule, grants included, gives to
    /// another shard, each with that owner: what the admission webhook answers, so it
    /// agrees with the reconciles (a name granted to a shard whose status does not show
    /// it yet is that shard's here too). Changes nothing.
    pub fn taken(&self, new: &AgentShard, old: Option<&AgentShard>) -> Vec<(String, ShardRef)> {
        let Some(me) = new.shard_ref() else {
            return Vec::new();
        };
        let mine = claims::stakes(new);
        new.account_names()
            .filter(|name| old.is_none_or(|o| o.spec.account(name).is_none()))
            .filter_map(|name| {
                let my = mine.get(name)?;
                let owner = self.owner_with(name, &me, my)?;
                (owner.shard != me).then(|| (name.to_owned(), owner.shard))
            })
            .collect()
    }

    /// `shard`'s status was just written holding exactly `holds`: its grants of other
    /// names end (its agent config does not carry them). Returns the shards to reconcile.
    pub fn published(&mut self, shard: &ShardRef, holds: &BTreeSet<String>) -> BTreeSet<ShardRef> {
        let ended: BTreeSet<String> = self
            .grants_of(shard)
            .filter(|n| !holds.contains(n))
            .collect();
        let before = self.owners(&ended);
        self.grants
            .retain(|name, g| g.shard() != shard || holds.contains(name));
        let mut affected = self.changed(&ended, before);
        affected.remove(shard);
        affected
    }

    /// Forgets every grant: leadership starts or ends, and the statuses are the truth.
    pub fn clear_grants(&mut self) {
        self.grants.clear();
    }

    fn grants_of<'a>(&'a self, shard: &'a ShardRef) -> impl Iterator<Item = String> + 'a {
        self.grants
            .iter()
            .filter(move |(_, g)| g.shard() == shard)
            .map(|(n, _)| n.clone())
    }

    /// The owner of `name` as `shard` would be judged with its own copy's stake `mine`
    /// (the grants folded in).
    fn owner_with(&self, name: &str, shard: &ShardRef, mine: &Stake) -> Option<Owner> {
        claims::owner(&self.effective(name, Some((shard, mine))))
    }

    /// The stakes in `name` with the grants folded in, and `replace`'s stake (the
    /// reconciling shard's own copy) in place of the watched one.
    fn effective(&self, name: &str, replace: Option<(&ShardRef, &Stake)>) -> Vec<Stake> {
        let mut out: Vec<Stake> = self
            .claims
            .stakes(name)
            .filter(|s| replace.is_none_or(|(r, _)| s.shard() != r))
            .cloned()
            .collect();
        if let Some((_, mine)) = replace {
            out.push(mine.clone());
        }
        if let Some(grant) = self.grants.get(name) {
            match out.iter_mut().find(|s| s.shard() == grant.shard()) {
                Some(s) => s.holds = true,
                None => out.push(grant.clone()),
            }
        }
        out
    }

    /// Each name's owner and every shard with a stake in it.
    fn owners(&self, names: &BTreeSet<String>) -> Owners {
        names
            .iter()
            .map(|n| {
                let stakes = self.effective(n, None);
                let stakeholders = stakes.iter().map(|s| s.shard().clone()).collect();
                (n.clone(), (claims::owner(&stakes), stakeholders))
            })
            .collect()
    }

    /// Every shard with a stake (before or after) in a name whose owner changed.
    fn changed(&self, names: &BTreeSet<String>, before: Owners) -> BTreeSet<ShardRef> {
        let after = self.owners(names);
        let mut affected = BTreeSet::new();
        for (name, (owner, stakeholders)) in after {
            let (old_owner, old_stakeholders) = before.get(&name).cloned().unwrap_or_default();
            if owner != old_owner {
                affected.extend(stakeholders);
                affected.extend(old_stakeholders);
            }
        }
        affected
    }
}

/// What the index task is told.
enum Msg {
    /// An event of the AgentShard watch (already sifted: every shard decodes).
    Watched(Box<Event<AgentShard>>),
    /// A reconcile asks for its answer.
    Resolve(
        Box<AgentShard>,
        oneshot::Sender<BTreeMap<String, Resolution>>,
    ),
    /// The admission webhook asks which names a create or update (new, old) would
    /// claim from another shard.
    Taken(
        Box<(AgentShard, Option<AgentShard>)>,
        oneshot::Sender<Vec<(String, ShardRef)>>,
    ),
    /// A reconcile wrote a status holding these names.
    Published(ShardRef, BTreeSet<String>),
    /// Leadership starts (where to send triggers) or ends.
    Lead(Option<mpsc::UnboundedSender<ObjectRef<AgentShard>>>),
}

/// The way to the index task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ClaimsHandle {
    tx: mpsc::UnboundedSender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Watched(_) => "Watched",
            Msg::Resolve(..) => "Resolve",
            Msg::Taken(..) => "Taken",
            Msg::Published(..) => "Published",
            Msg::Lead(_) => "Lead",
        })
    }
}

impl ClaimsHandle {
    /// Tells the index what the AgentShard watch saw.
    pub fn watched(&self, event: Event<AgentShard>) {
        let _ = self.tx.send(Msg::Watched(Box::new(event)));
    }

    /// The index's answer for every name in `shard`'s spec (granting it what the rule
    /// gives it).
    pub async fn resolve(&self, shard: &AgentShard) -> Result<BTreeMap<String, Resolution>> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Resolve(Box::new(shard.clone()), reply))
            .map_err(|_| Error::IndexStopped)?;
        answer.await.map_err(|_| Error::IndexStopped)
    }

    /// The names `new` adds to `old` that another shard owns, with their owners
    /// ([`ClaimsIndex::taken`]).
    pub async fn taken(
        &self,
        new: AgentShard,
        old: Option<AgentShard>,
    ) -> Result<Vec<(String, ShardRef)>> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Taken(Box::new((new, old)), reply))
            .map_err(|_| Error::IndexStopped)?;
        answer.await.map_err(|_| Error::IndexStopped)
    }

    /// Tells the index that `shard`'s status now holds exactly `holds`.
    pub fn published(&self, shard: ShardRef, holds: BTreeSet<String>) {
        let _ = self.tx.send(Msg::Published(shard, holds));
    }

    /// Leadership starts: reconcile triggers go to `triggers` (every known shard at once).
    /// `None`: leadership ended.
    pub fn lead(&self, triggers: Option<mpsc::UnboundedSender<ObjectRef<AgentShard>>>) {
        let _ = self.tx.send(Msg::Lead(triggers));
    }
}

/// A handle, and the task that owns the index (to spawn; it ends when every handle is
/// dropped).
pub fn channel() -> (ClaimsHandle, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ClaimsHandle { tx }, run(rx))
}

/// The index task: applies each message in order and sends the triggers they call for.
async fn run(mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut index = ClaimsIndex::new();
    let mut triggers: Option<mpsc::UnboundedSender<ObjectRef<AgentShard>>> = None;
    // The shards of a re-list in progress: all are reconciled once it completes.
    let mut relisted: BTreeSet<ShardRef> = BTreeSet::new();
    while let Some(msg) = rx.recv().await {
        let affected = match msg {
            Msg::Watched(event) => match *event {
                Event::Apply(shard) => index.observe(&shard),
                Event::Delete(shard) => match shard.shard_ref() {
                    Some(sref) => {
                        tracing::info!(shard = %sref, "shard deleted: its account names are free");
                        index.forget(&sref)
                    }
                    None => BTreeSet::new(),
                },
                Event::Init => {
                    relisted.clear();
                    BTreeSet::new()
                }
                Event::InitApply(shard) => {
                    index.observe(&shard);
                    relisted.extend(shard.shard_ref());
                    BTreeSet::new()
                }
                Event::InitDone => {
                    let mut affected = index.retain(&relisted);
                    affected.extend(std::mem::take(&mut relisted));
                    affected
                }
            },
            Msg::Resolve(shard, reply) => {
                let _ = reply.send(index.resolve(&shard));
                BTreeSet::new()
            }
            Msg::Taken(review, reply) => {
                let (new, old) = *review;
                let _ = reply.send(index.taken(&new, old.as_ref()));
                BTreeSet::new()
            }
            Msg::Published(shard, holds) => index.published(&shard, &holds),
            Msg::Lead(sink) => {
                index.clear_grants();
                triggers = sink;
                index.shards().cloned().collect()
            }
        };
        if let Some(tx) = &triggers {
            for s in affected {
                let _ = tx.send(ObjectRef::new(&s.name).within(&s.namespace));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use scale_agent_crds::{AccountState, AccountStatus, AgentShardStatus};

    use super::*;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid"))
    }

    fn shard(name: &str, created: i64, accounts: &[&str]) -> AgentShard {
        let spec = serde_json::json!({
            "accounts": accounts.iter().map(|a| serde_json::json!({
                "name": a, "kubeconfigSecretRef": { "name": format!("kc-{a}") }
            })).collect::<Vec<_>>()
        });
        let mut s = AgentShard::new(name, serde_json::from_value(spec).expect("spec"));
        s.metadata.namespace = Some("ns".into());
        s.metadata.creation_timestamp = Some(t(created));
        s
    }

    /// `s` with the status the operator writes after deciding `owned` (the rest Conflict).
    fn written(mut s: AgentShard, owned: &[&str], at: i64) -> AgentShard {
        let now = t(at);
        let accounts = s
            .account_names()
            .map(|n| AccountStatus {
                name: n.to_owned(),
                state: if owned.contains(&n) {
                    AccountState::Active
                } else {
                    AccountState::Conflict
                },
                reason: String::new(),
                message: String::new(),
                owner_shard: None,
                claimed_at: Some(claims::claimed_at(&s, n, &now)),
            })
            .collect();
        s.status = Some(AgentShardStatus {
            accounts,
            ..AgentShardStatus::default()
        });
        s
    }

    fn r(name: &str) -> ShardRef {
        ShardRef::new("ns", name)
    }

    fn taken(owner: &str, releasing: bool) -> Resolution {
        Resolution::Taken {
            owner: r(owner),
            releasing,
        }
    }

    #[test]
    fn a_grant_holds_the_name_until_the_status_shows_it() {
        let mut idx = ClaimsIndex::new();
        let a = shard("a", 10, &["x"]);
        let b = shard("b", 20, &["x"]);
        idx.observe(&a);
        idx.observe(&b);
        assert_eq!(idx.resolve(&a)["x"], Resolution::Owned);
        assert_eq!(idx.granted("x"), Some(&r("a")));
        // a's status is not written yet; b is still told a has it.
        assert_eq!(idx.resolve(&b)["x"], taken("a", false));
        // a's status arrives: the grant is no longer needed.
        idx.observe(&written(a, &["x"], 11));
        assert_eq!(idx.granted("x"), None);
        assert_eq!(idx.resolve(&b)["x"], taken("a", false));
    }

    #[test]
    fn a_grant_beats_an_older_shard_that_claims_later() {
        let mut idx = ClaimsIndex::new();
        // old exists (status written) without x; young claims x and is granted it.
        let old = written(shard("old", 1, &[]), &[], 2);
        idx.observe(&old);
        let young = shard("young", 50, &["x"]);
        idx.observe(&young);
        assert_eq!(idx.resolve(&young)["x"], Resolution::Owned);
        let mut old2 = old.clone();
        old2.spec = shard("old", 1, &["x"]).spec;
        let affected = idx.observe(&old2);
        assert!(affected.contains(&r("old")));
        assert_eq!(idx.resolve(&old2)["x"], taken("young", false));
    }

    #[test]
    fn handoff_waits_for_the_holders_status_to_drop_the_name() {
        let mut idx = ClaimsIndex::new();
        let a = written(shard("a", 1, &["x", "y"]), &["x", "y"], 1);
        idx.observe(&a);
        // One apply moves x from a to b.
        let b = shard("b", 2, &["x"]);
        idx.observe(&b);
        let mut a2 = a.clone();
        a2.spec = shard("a", 1, &["y"]).spec;
        let affected = idx.observe(&a2);
        assert!(affected.contains(&r("b")), "b learns x is being released");
        assert_eq!(idx.resolve(&b)["x"], taken("a", true));
        // a's config and status are rewritten without x: b is told, and gets it.
        let a3 = written(a2, &["y"], 3);
        let affected = idx.observe(&a3);
        assert!(affected.contains(&r("b")));
        assert_eq!(idx.resolve(&b)["x"], Resolution::Owned);
    }

    #[test]
    fn deleting_the_holder_frees_the_name_for_the_next_claimant() {
        let mut idx = ClaimsIndex::new();
        let a = written(shard("a", 1, &["x"]), &["x"], 1);
        let b = written(shard("b", 3, &["x"]), &[], 3);
        let c = written(shard("c", 2, &["x"]), &[], 2);
        for s in [&a, &b, &c] {
            idx.observe(s);
        }
        let affected = idx.forget(&r("a"));
        assert_eq!(affected, [r("b"), r("c")].into());
        assert_eq!(idx.resolve(&b)["x"], taken("c", false));
        assert_eq!(idx.resolve(&c)["x"], Resolution::Owned);
    }

    #[test]
    fn a_deletion_timestamp_counts_as_gone() {
        let mut idx = ClaimsIndex::new();
        let a = written(shard("a", 1, &["x"]), &["x"], 1);
        let b = written(shard("b", 2, &["x"]), &[], 2);
        idx.observe(&a);
        idx.observe(&b);
        let mut gone = a.clone();
        gone.metadata.deletion_timestamp = Some(t(5));
        let affected = idx.observe(&gone);
        assert_eq!(affected, [r("b")].into());
        assert_eq!(idx.resolve(&b)["x"], Resolution::Owned);
    }

    #[test]
    fn publishing_without_a_granted_name_ends_the_grant() {
        let mut idx = ClaimsIndex::new();
        let a = written(shard("a", 1, &[]), &[], 1);
        let mut a_with_x = a.clone();
        a_with_x.spec = shard("a", 1, &["x"]).spec;
        idx.observe(&a_with_x);
        assert_eq!(idx.resolve(&a_with_x)["x"], Resolution::Owned);
        // Before its status was written, a dropped x again; b claims it.
        let b = shard("b", 9, &["x"]);
        idx.observe(&b);
        assert_eq!(idx.resolve(&b)["x"], taken("a", false));
        idx.observe(&a);
        let affected = idx.published(&r("a"), &BTreeSet::new());
        assert_eq!(affected, [r("b")].into());
        assert_eq!(idx.resolve(&b)["x"], Resolution::Owned);
    }

    #[test]
    fn retain_forgets_shards_missing_from_a_relist() {
        let mut idx = ClaimsIndex::new();
        let a = written(shard("a", 1, &["x"]), &["x"], 1);
        let b = written(shard("b", 2, &["x"]), &[], 2);
        idx.observe(&a);
        idx.observe(&b);
        let affected = idx.retain(&[r("b")].into());
        assert_eq!(affected, [r("b")].into());
        assert!(!idx.knows(&r("a")));
        assert_eq!(idx.resolve(&b)["x"], Resolution::Owned);
    }

    #[test]
    fn a_status_only_change_triggers_only_the_shard_itself() {
        let mut idx = ClaimsIndex::new();
        let a = written(shard("a", 1, &["x"]), &["x"], 1);
        let b = written(shard("b", 2, &["x"]), &[], 2);
        idx.observe(&a);
        idx.observe(&b);
        let mut a2 = a.clone();
        if let Some(st) = a2.status.as_mut() {
            st.ready_replicas = 1;
        }
        assert_eq!(idx.observe(&a2), [r("a")].into());
    }

    #[tokio::test]
    async fn the_task_answers_and_sends_triggers_only_while_leading() {
        let (handle, task) = channel();
        let task = tokio::spawn(task);
        let a = shard("a", 1, &["x"]);
        handle.watched(Event::Apply(a.clone()));
        assert_eq!(
            handle.resolve(&a).await.expect("answer")["x"],
            Resolution::Owned
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        handle.lead(Some(tx));
        // Every known shard once, at the start.
        assert_eq!(rx.recv().await, Some(ObjectRef::new("a").within("ns")));
        handle.watched(Event::Apply(shard("b", 2, &["x"])));
        assert_eq!(rx.recv().await, Some(ObjectRef::new("b").within("ns")));
        handle.lead(None);
        handle.watched(Event::Apply(shard("c", 3, &[])));
        // The previous sink was dropped by the task: nothing more arrives.
        assert_eq!(rx.recv().await, None);
        drop(handle);
        task.await.expect("the task ends when every handle is gone");
    }
}
