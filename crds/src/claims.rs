//! The account-ownership rule: who owns each account name, decided from AgentShards alone
//! (spec, status, metadata). The operator's claims index, its admission webhook and the
//! hub all ask this module, so the three cannot disagree.
//!
//! - A shard **holds** a name when its status lists the account in any state but
//!   `Conflict`: the operator put it in the shard's agent config (`Active`), or keeps it
//!   reserved for the shard while the account cannot be used (`Invalid`). Only the
//!   operator writes statuses, and it records a name there before any agent config
//!   carries it, so "held" covers every name an agent config may carry.
//! - A shard **claims** a name when its spec lists it. A shard being deleted
//!   (`deletionTimestamp` set) holds and claims nothing: its agents go with it.
//! - The **owner** of a name is its holder (should two statuses hold it, the older claim);
//!   with no holder, its oldest claimant, which the operator grants the name to at its
//!   next reconcile. A holder never loses a name to a later claimant.
//! - Claims are ordered by [`ClaimTime`], then by the shard's creationTimestamp, then by
//!   namespace/name ([`ClaimOrder`]).
//! - A holder whose spec no longer claims a name is **releasing** it: it still owns the
//!   name until its status drops it, which the operator does only once that shard's agent
//!   config has been rewritten without it. While a name is being released nobody may
//!   stream it, neither the releasing shard nor the next claimant.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::{AccountStatus, AgentShard, ShardRef};

/// When a shard claimed a name, as far as the AgentShards tell.
///
/// Orders recorded times first (oldest first), then [`ClaimTime::Unrecorded`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClaimTime {
    /// Seconds since the Unix epoch: the `claimedAt` the operator recorded in the status;
    /// for a shard with no status yet (or a status written before `claimedAt` existed),
    /// the shard's creationTimestamp.
    At(i64),
    /// The name is in the spec of a shard whose status does not list it: it was added
    /// after the operator last wrote that status, so it comes after every recorded claim
    /// (an old shard that adds a name later cannot jump the queue).
    Unrecorded,
}

/// The place of one claim in the queue for a name: earliest [`ClaimTime`], then the
/// oldest shard, then namespace/name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimOrder {
    /// When the name was claimed.
    pub since: ClaimTime,
    /// The shard's creationTimestamp in seconds (`i64::MAX` when unknown).
    pub created: i64,
    /// The shard.
    pub shard: ShardRef,
}

/// What one shard says about one account name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stake {
    /// Its place in the queue for the name.
    pub order: ClaimOrder,
    /// The shard's spec lists the name.
    pub claims: bool,
    /// The shard's status lists the name in a state other than `Conflict`.
    pub holds: bool,
}

impl Stake {
    /// The shard with this stake.
    pub fn shard(&self) -> &ShardRef {
        &self.order.shard
    }
}

/// The owner of an account name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The shard that owns the name.
    pub shard: ShardRef,
    /// It holds the name (its status says so); otherwise it is the oldest claimant,
    /// not granted yet.
    pub holds: bool,
    /// It holds the name but its spec no longer lists it: the name is on its way to the
    /// next claimant, and nobody may stream it meanwhile.
    pub releasing: bool,
}

impl Owner {
    /// Whether `shard` may carry the name in its agent config and stream it: it owns the
    /// name and is not letting it go.
    pub fn serves(&self, shard: &ShardRef) -> bool {
        self.shard == *shard && !self.releasing
    }
}

/// The rule for one name, over every shard's stake in it: the oldest holder, else the
/// oldest claimant. `None` when no shard holds or claims the name.
pub fn owner<'a>(stakes: impl IntoIterator<Item = &'a Stake>) -> Option<Owner> {
    let mut holder: Option<&Stake> = None;
    let mut claimant: Option<&Stake> = None;
    for stake in stakes {
        let best = if stake.holds {
            &mut holder
        } else if stake.claims {
            &mut claimant
        } else {
            continue;
        };
        if best.is_none_or(|b| stake.order < b.order) {
            *best = Some(stake);
        }
    }
    match (holder, claimant) {
        (Some(h), _) => Some(Owner {
            shard: h.shard().clone(),
            holds: true,
            releasing: !h.claims,
        }),
        (None, Some(c)) => Some(Owner {
            shard: c.shard().clone(),
            holds: false,
            releasing: false,
        }),
        (None, None) => None,
    }
}

/// Every stake `shard` has, by account name: the names its spec lists, and the names its
/// status holds that the spec no longer lists. Nothing for a shard being deleted, or
/// without a namespace and name.
pub fn stakes(shard: &AgentShard) -> BTreeMap<String, Stake> {
    let mut out = BTreeMap::new();
    let Some(sref) = shard.shard_ref() else {
        return out;
    };
    if shard.metadata.deletion_timestamp.is_some() {
        return out;
    }
    let created = seconds(shard.metadata.creation_timestamp.as_ref());
    let order = |since| ClaimOrder {
        since,
        created: created.unwrap_or(i64::MAX),
        shard: sref.clone(),
    };
    let recorded = |a: &AccountStatus| {
        seconds(a.claimed_at.as_ref())
            .or(created)
            .map_or(ClaimTime::Unrecorded, ClaimTime::At)
    };
    match shard.written_status() {
        None => {
            let since = created.map_or(ClaimTime::Unrecorded, ClaimTime::At);
            for name in shard.account_names() {
                out.entry(name.to_owned()).or_insert_with(|| Stake {
                    order: order(since),
                    claims: true,
                    holds: false,
                });
            }
        }
        Some(status) => {
            for name in shard.account_names() {
                let stake = match status.account(name) {
                    Some(a) => Stake {
                        order: order(recorded(a)),
                        claims: true,
                        holds: a.state.holds(),
                    },
                    None => Stake {
                        order: order(ClaimTime::Unrecorded),
                        claims: true,
                        holds: false,
                    },
                };
                out.entry(name.to_owned()).or_insert(stake);
            }
            for a in &status.accounts {
                if a.state.holds() && !out.contains_key(&a.name) {
                    out.insert(
                        a.name.clone(),
                        Stake {
                            order: order(recorded(a)),
                            claims: false,
                            holds: true,
                        },
                    );
                }
            }
        }
    }
    out
}

/// The `claimedAt` the operator records for `name` of `shard` when it writes the status
/// at `now`: the one already recorded; for a shard with no status yet, its
/// creationTimestamp; for a name its status does not list yet, `now`. The same times
/// [`stakes`] reads back, so recording a claim never moves it in the queue.
pub fn claimed_at(shard: &AgentShard, name: &str, now: &Time) -> Time {
    let created = shard.metadata.creation_timestamp.as_ref();
    let recorded = match shard.written_status() {
        None => created,
        Some(status) => status
            .account(name)
            .and_then(|a| a.claimed_at.as_ref().or(created)),
    };
    recorded.unwrap_or(now).clone()
}

/// Every shard's stakes by account name: the rule over a set of AgentShards, kept
/// current one shard at a time.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    /// Account name → shard → its stake.
    names: BTreeMap<String, BTreeMap<ShardRef, Stake>>,
    /// Every shard known (not being deleted) → the names it has a stake in.
    shards: BTreeMap<ShardRef, BTreeSet<String>>,
}

impl Claims {
    /// No shards.
    pub fn new() -> Self {
        Self::default()
    }

    /// The claims of these shards.
    pub fn from_shards<'a>(shards: impl IntoIterator<Item = &'a AgentShard>) -> Self {
        let mut claims = Self::new();
        for shard in shards {
            claims.upsert(shard);
        }
        claims
    }

    /// Puts `shard`'s current stakes in place of those it had (a shard being deleted is
    /// forgotten). Returns the names whose stake from this shard changed.
    pub fn upsert(&mut self, shard: &AgentShard) -> BTreeSet<String> {
        let Some(sref) = shard.shard_ref() else {
            return BTreeSet::new();
        };
        if shard.metadata.deletion_timestamp.is_some() {
            return self.remove(&sref);
        }
        let new = stakes(shard);
        let old = self.shards.remove(&sref).unwrap_or_default();
        let mut changed = BTreeSet::new();
        for gone in old.iter().filter(|n| !new.contains_key(*n)) {
            self.drop_stake(gone, &sref);
            changed.insert(gone.clone());
        }
        for (name, stake) in &new {
            let slot = self.names.entry(name.clone()).or_default();
            if slot.get(&sref) != Some(stake) {
                slot.insert(sref.clone(), stake.clone());
                changed.insert(name.clone());
            }
        }
        self.shards.insert(sref, new.into_keys().collect());
        changed
    }

    /// Forgets `shard`. Returns the names it had a stake in.
    pub fn remove(&mut self, shard: &ShardRef) -> BTreeSet<String> {
        let old = self.shards.remove(shard).unwrap_or_default();
        for name in &old {
            self.drop_stake(name, shard);
        }
        old
    }

    fn drop_stake(&mut self, name: &str, shard: &ShardRef) {
        if let Some(slot) = self.names.get_mut(name) {
            slot.remove(shard);
            if slot.is_empty() {
                self.names.remove(name);
            }
        }
    }

    /// Whether `shard` is known (and not being deleted).
    pub fn knows(&self, shard: &ShardRef) -> bool {
        self.shards.contains_key(shard)
    }

    /// Every shard known.
    pub fn shards(&self) -> impl Iterator<Item = &ShardRef> {
        self.shards.keys()
    }

    /// How many shards are known.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The names `shard` has a stake in.
    pub fn names_of(&self, shard: &ShardRef) -> impl Iterator<Item = &str> {
        self.shards
            .get(shard)
            .into_iter()
            .flat_map(|names| names.iter().map(String::as_str))
    }

    /// Every shard's stake in `name`.
    pub fn stakes(&self, name: &str) -> impl Iterator<Item = &Stake> {
        self.names.get(name).into_iter().flat_map(|s| s.values())
    }

    /// `shard`'s stake in `name`, if any.
    pub fn stake(&self, name: &str, shard: &ShardRef) -> Option<&Stake> {
        self.names.get(name)?.get(shard)
    }

    /// The owner of `name`.
    pub fn owner(&self, name: &str) -> Option<Owner> {
        owner(self.stakes(name))
    }
}

fn seconds(t: Option<&Time>) -> Option<i64> {
    t.map(|t| t.0.as_second())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::{AccountState, AgentShardStatus};

    fn time(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid"))
    }

    fn shard(ns: &str, name: &str, created: i64, accounts: &[&str]) -> AgentShard {
        let spec = serde_json::json!({
            "accounts": accounts.iter().map(|a| serde_json::json!({
                "name": a, "kubeconfigSecretRef": { "name": format!("kc-{a}") }
            })).collect::<Vec<_>>()
        });
        let mut s = AgentShard::new(name, serde_json::from_value(spec).expect("spec"));
        s.metadata.namespace = Some(ns.into());
        s.metadata.creation_timestamp = Some(time(created));
        s
    }

    fn with(mut s: AgentShard, name: &str, state: AccountState, at: Option<i64>) -> AgentShard {
        s.status
            .get_or_insert_with(AgentShardStatus::default)
            .accounts
            .push(AccountStatus {
                name: name.into(),
                state,
                reason: String::new(),
                message: String::new(),
                owner_shard: None,
                claimed_at: at.map(time),
            });
        s
    }

    fn r(ns: &str, name: &str) -> ShardRef {
        ShardRef::new(ns, name)
    }

    #[test]
    fn without_statuses_the_oldest_shard_then_the_name_wins() {
        let c = Claims::from_shards(&[
            shard("b", "x", 20, &["n"]),
            shard("a", "z", 10, &["n"]),
            shard("a", "y", 10, &["n"]),
        ]);
        let o = c.owner("n").expect("owner");
        assert_eq!(o.shard, r("a", "y"));
        assert!(!o.holds && !o.releasing);
        assert_eq!(c.owner("other"), None);
    }

    #[test]
    fn a_holder_keeps_the_name_against_an_older_claimant() {
        let young = with(
            shard("ns", "young", 50, &["n"]),
            "n",
            AccountState::Active,
            Some(50),
        );
        let old = shard("ns", "old", 1, &["n"]);
        let c = Claims::from_shards(&[old, young]);
        assert_eq!(c.owner("n").map(|o| o.shard), Some(r("ns", "young")));
    }

    #[test]
    fn invalid_and_unknown_states_hold_conflict_does_not() {
        for (state, holds) in [
            (AccountState::Active, true),
            (AccountState::Invalid, true),
            (AccountState::Unknown, true),
            (AccountState::Conflict, false),
        ] {
            let s = with(shard("ns", "s", 50, &["n"]), "n", state, Some(50));
            assert_eq!(stakes(&s)["n"].holds, holds, "{state}");
        }
    }

    #[test]
    fn a_name_added_to_a_written_status_comes_after_every_recorded_claim() {
        // `old` exists with a status that does not list n; `young` is queued for n.
        let old = with(
            shard("ns", "old", 1, &["n"]),
            "m",
            AccountState::Active,
            Some(1),
        );
        let young = with(
            shard("ns", "young", 50, &["n"]),
            "n",
            AccountState::Conflict,
            Some(90),
        );
        assert_eq!(stakes(&old)["n"].order.since, ClaimTime::Unrecorded);
        let c = Claims::from_shards(&[old, young]);
        assert_eq!(c.owner("n").map(|o| o.shard), Some(r("ns", "young")));
    }

    #[test]
    fn the_api_servers_default_status_is_no_status_yet() {
        // The API server shows `{observedGeneration: 0, accounts: []...}` until the
        // operator writes a status: the new shard's claim counts from its creation, as
        // with no status at all, and is recorded at that time.
        let mut fresh = shard("ns", "fresh", 10, &["n"]);
        fresh.status = Some(AgentShardStatus {
            observed_generation: Some(crate::UNOBSERVED_GENERATION),
            ..AgentShardStatus::default()
        });
        assert_eq!(stakes(&fresh)["n"].order.since, ClaimTime::At(10));
        let now = Time(Timestamp::from_second(99).expect("time"));
        assert_eq!(seconds(Some(&claimed_at(&fresh, "n", &now))), Some(10));
        // A younger shard, also not observed yet, queues behind it.
        let mut younger = shard("ns", "younger", 20, &["n"]);
        younger.status = fresh.status.clone();
        let c = Claims::from_shards(&[younger, fresh]);
        assert_eq!(c.owner("n").map(|o| o.shard), Some(r("ns", "fresh")));
    }

    #[test]
    fn recorded_claims_order_the_queue_not_creation() {
        let a = with(
            shard("ns", "a", 1, &["n"]),
            "n",
            AccountState::Conflict,
            Some(300),
        );
        let b = with(
            shard("ns", "b", 2, &["n"]),
            "n",
            AccountState::Conflict,
            Some(200),
        );
        let c = Claims::from_shards(&[a, b]);
        assert_eq!(c.owner("n").map(|o| o.shard), Some(r("ns", "b")));
    }

    #[test]
    fn a_status_from_before_claimed_at_counts_from_creation() {
        let a = with(
            shard("ns", "a", 100, &["n"]),
            "n",
            AccountState::Conflict,
            None,
        );
        let b = with(
            shard("ns", "b", 5, &["n"]),
            "n",
            AccountState::Conflict,
            Some(150),
        );
        assert_eq!(stakes(&a)["n"].order.since, ClaimTime::At(100));
        let c = Claims::from_shards(&[a, b]);
        assert_eq!(c.owner("n").map(|o| o.shard), Some(r("ns", "a")));
    }

    #[test]
    fn two_holders_the_older_claim_wins() {
        let a = with(
            shard("ns", "a", 1, &["n"]),
            "n",
            AccountState::Active,
            Some(30),
        );
        let b = with(
            shard("ns", "b", 2, &["n"]),
            "n",
            AccountState::Active,
            Some(20),
        );
        let c = Claims::from_shards(&[a, b]);
        assert_eq!(c.owner("n").map(|o| o.shard), Some(r("ns", "b")));
    }

    #[test]
    fn a_holder_that_dropped_the_name_is_releasing_until_its_status_drops_it() {
        let a = with(shard("ns", "a", 1, &[]), "n", AccountState::Active, Some(1));
        let b = shard("ns", "b", 2, &["n"]);
        let mut c = Claims::from_shards(&[a.clone(), b]);
        let o = c.owner("n").expect("owner");
        assert_eq!(o.shard, r("ns", "a"));
        assert!(o.holds && o.releasing);
        assert!(!o.serves(&r("ns", "a")) && !o.serves(&r("ns", "b")));
        // The operator rewrote a's config and status without n: b is next.
        let mut a2 = a;
        a2.status = Some(AgentShardStatus::default());
        let changed = c.upsert(&a2);
        assert_eq!(changed, ["n".to_owned()].into());
        assert_eq!(c.owner("n").map(|o| o.shard), Some(r("ns", "b")));
    }

    #[test]
    fn a_deleting_shard_holds_and_claims_nothing() {
        let mut gone = with(
            shard("ns", "gone", 1, &["n"]),
            "n",
            AccountState::Active,
            Some(1),
        );
        gone.metadata.deletion_timestamp = Some(time(9));
        let next = with(
            shard("ns", "next", 5, &["n"]),
            "n",
            AccountState::Conflict,
            Some(5),
        );
        let c = Claims::from_shards(&[gone.clone(), next]);
        assert_eq!(c.owner("n").map(|o| o.shard), Some(r("ns", "next")));
        assert!(!c.knows(&r("ns", "gone")));
        assert!(stakes(&gone).is_empty());
    }

    #[test]
    fn claimed_at_records_what_stakes_reads() {
        let now = time(1_000);
        let fresh = shard("ns", "fresh", 10, &["n"]);
        assert_eq!(claimed_at(&fresh, "n", &now), time(10));
        let old = with(
            shard("ns", "old", 10, &["n", "added"]),
            "n",
            AccountState::Active,
            Some(40),
        );
        assert_eq!(claimed_at(&old, "n", &now), time(40));
        assert_eq!(claimed_at(&old, "added", &now), now);
        let legacy = with(
            shard("ns", "legacy", 10, &["n"]),
            "n",
            AccountState::Active,
            None,
        );
        assert_eq!(claimed_at(&legacy, "n", &now), time(10));
        for s in [&fresh, &old, &legacy] {
            for (name, stake) in stakes(s) {
                let written = claimed_at(s, &name, &now).0.as_second();
                match stake.order.since {
                    ClaimTime::At(t) => assert_eq!(t, written, "{name}"),
                    ClaimTime::Unrecorded => assert_eq!(written, 1_000, "{name}"),
                }
            }
        }
    }

    #[test]
    fn upsert_reports_only_the_names_that_changed() {
        let mut c = Claims::new();
        let a = shard("ns", "a", 1, &["n", "m"]);
        assert_eq!(c.upsert(&a), ["m".to_owned(), "n".to_owned()].into());
        assert!(c.upsert(&a).is_empty());
        let a2 = with(a, "n", AccountState::Active, Some(1));
        // The status appeared: every name's stake changed (held, or now unrecorded).
        assert_eq!(c.upsert(&a2), ["m".to_owned(), "n".to_owned()].into());
        assert_eq!(
            c.remove(&r("ns", "a")),
            ["m".to_owned(), "n".to_owned()].into()
        );
        assert_eq!(c.shard_count(), 0);
        assert_eq!(c.owner("n"), None);
    }
}
