//! The account registry: which account name is bound to which cluster, which
//! shard and replica streams it, on which session, and whether it is connected.
//!
//! Pure bookkeeping, no I/O: the session code asks for decisions and carries
//! them out (answers the agent, notifies a superseded session, writes the
//! store, schedules grace expiry).
//!
//! The rules:
//! - A name is bound to the cluster id of its first registration. A
//!   registration of that name with another cluster id is rejected
//!   (`CLUSTER_MISMATCH`) and the holder keeps streaming.
//! - A name also belongs to the shard that registered it: a registration
//!   from another shard is refused (`NOT_OWNER`), whatever cluster id it
//!   names, unless the AgentShards say that shard owns it now
//!   (`--authorize-shards`); then it moves, and a session of the old shard
//!   that still held it is told it lost it. The cluster id is no secret and
//!   grants nothing.
//! - The same cluster coming back on the same shard (agent restart, another
//!   replica of the shard) is accepted. When another live session of that
//!   shard holds the account, the newer session wins and the older one is
//!   told it was superseded; a session of another shard never supersedes.
//! - When a session ends, its accounts become Disconnected for the grace
//!   period; each change of holder or state bumps the account's epoch, so a
//!   grace timer started for an older disconnection cannot remove an account
//!   that came back.
//! - When the grace period runs out (or the agent unregisters the account with
//!   reason REMOVED — also right after the hub released it from that agent's
//!   session, as long as nobody else took it since), the account, its cache
//!   *and its binding* are removed: a
//!   name that nobody streams any more may be registered again, by any cluster.
//!   While it is present (connected or within its grace period) the binding
//!   holds, also across hub restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

/// Identifies one agent session (one `Connect` stream).
pub type SessionId = Arc<str>;

/// The namespaced name of an AgentShard: the one type every component uses.
pub use scale_agent_crds::ShardRef;

/// What an account name is bound to; persisted in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The cluster's identity (UID of its kube-system namespace, or the URL+CA
    /// fingerprint).
    pub cluster_id: String,
    /// The shard that registered it last.
    pub shard: ShardRef,
    /// The API server URL, for display.
    pub server_url: String,
}

/// Whether an account is being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum AccountState {
    /// A live session streams it.
    Connected,
    /// No session streams it; it is kept until the grace period ends.
    Disconnected,
}

/// One account in the registry.
#[derive(Debug, Clone)]
pub struct Account {
    /// The Spinnaker account name.
    pub name: String,
    /// The cluster and shard the name is bound to.
    pub binding: Binding,
    /// The replica that streams (or last streamed) it; empty when loaded from
    /// the store and not yet registered since the hub started.
    pub replica: String,
    /// The cluster's Kubernetes version, as the agent reported it.
    pub kubernetes_version: String,
    /// The session that streams it; `None` when Disconnected.
    pub session: Option<SessionId>,
    /// The session that streamed it last (also after it was released from
    /// it), so that its agent's Unregister REMOVED still counts.
    pub last_session: Option<SessionId>,
    /// When it last changed state.
    pub since: SystemTime,
    /// Bumped on every change of holder or state.
    pub epoch: u64,
}

impl Account {
    /// Connected when a session holds it.
    pub fn state(&self) -> AccountState {
        if self.session.is_some() {
            AccountState::Connected
        } else {
            AccountState::Disconnected
        }
    }
}

/// The session asking to register.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its session id.
    pub session: SessionId,
    /// The shard named in its Hello.
    pub shard: ShardRef,
    /// The replica named in its Hello.
    pub replica: String,
}

/// One account of a Register frame.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// The account name.
    pub name: String,
    /// The cluster id.
    pub cluster_id: String,
    /// The API server URL.
    pub server_url: String,
    /// The cluster's Kubernetes version.
    pub kubernetes_version: String,
}

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Empty or malformed name or cluster id.
    Invalid,
    /// The name is bound to another cluster.
    ClusterMismatch,
    /// The name belongs to another shard.
    OtherShard,
}

impl RejectReason {
    /// Stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Invalid => "invalid",
            RejectReason::ClusterMismatch => "cluster_mismatch",
            RejectReason::OtherShard => "not_owner_bound",
        }
    }
}

/// The registry's answer to one registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Stream it on this session.
    Accepted {
        /// The older session of the same shard that held the account and
        /// must be told (SUPERSEDED), with its replica.
        superseded: Option<(SessionId, String)>,
        /// The session of another shard that held the account, which the
        /// AgentShards now give to the caller's shard: it must be told it is
        /// no longer the owner (NOT_OWNER).
        moved_from: Option<(SessionId, ShardRef)>,
        /// The binding to write to the store, when it is new or changed.
        persist: Option<Binding>,
        /// True when the account was not present before (no cache to resume).
        fresh: bool,
    },
    /// Refused; the holder, if any, goes on.
    Rejected {
        /// Why.
        reason: RejectReason,
        /// A sentence for the agent's logs and the shard's status.
        message: String,
        /// The binding that caused the refusal, if any.
        owner: Option<Binding>,
    },
}

/// What an Unregister did to one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The session did not hold the account: nothing changed.
    NotHeld,
    /// The account is Disconnected and waits for the grace period (epoch to
    /// expire with).
    Disconnected(u64),
    /// The account was removed with its binding; the caller drops its cache
    /// and its stored binding.
    Removed,
}

/// The account registry.
#[derive(Debug, Default)]
pub struct Registry {
    accounts: BTreeMap<String, Account>,
    next_epoch: u64,
}

/// Checks an account name: non-empty, at most 253 characters, ASCII letters,
/// digits and `-_.:@` only (it appears in URL paths and metric labels).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("account name is empty".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "account name is {} characters long; at most 253",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:@".contains(*c)))
    {
        return Err(format!(
            "account name {name:?} contains {bad:?}; only ASCII letters, digits and -_.:@ are allowed"
        ));
    }
    Ok(())
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    fn epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    /// Loads stored bindings after a restart: each becomes a Disconnected
    /// account, so the binding is enforced at once and the grace period runs
    /// from now. Returns (name, epoch) to schedule expiry for.
    pub fn load(
        &mut self,
        bindings: Vec<(String, Binding)>,
        now: SystemTime,
    ) -> Vec<(String, u64)> {
        let mut expiries = Vec::with_capacity(bindings.len());
        for (name, binding) in bindings {
            let epoch = self.epoch();
            expiries.push((name.clone(), epoch));
            self.accounts.insert(
                name.clone(),
                Account {
                    name,
                    binding,
                    replica: String::new(),
                    kubernetes_version: String::new(),
                    session: None,
                    last_session: None,
                    since: now,
                    epoch,
                },
            );
        }
        expiries
    }

    /// Decides on one registration from `caller`, and records it when
    /// accepted. `declared_owner` is true when the AgentShards say the
    /// caller's shard owns the account: only then may it take a name bound
    /// to another shard.
    pub fn register(
        &mut self,
        caller: &Caller,
        reg: &Registration,
        declared_owner: bool,
        now: SystemTime,
    ) -> Decision {
        if let Err(message) = validate_name(&reg.name) {
            return Decision::Rejected {
                reason: RejectReason::Invalid,
                message,
                owner: None,
            };
        }
        if reg.cluster_id.trim().is_empty() {
            return Decision::Rejected {
                reason: RejectReason::Invalid,
                message: format!("account {}: cluster id is empty", reg.name),
                owner: None,
            };
        }
        let binding = Binding {
            cluster_id: reg.cluster_id.clone(),
            shard: caller.shard.clone(),
            server_url: reg.server_url.clone(),
        };
        let epoch = self.epoch();
        match self.accounts.get_mut(&reg.name) {
            Some(existing)
                if !existing.binding.shard.is_unset()
                    && existing.binding.shard != caller.shard
                    && !declared_owner =>
            {
                Decision::Rejected {
                    reason: RejectReason::OtherShard,
                    message: format!(
                        "account {} belongs to shard {}, which registered it first; shard {} may not stream it",
                        reg.name, existing.binding.shard, caller.shard
                    ),
                    owner: Some(existing.binding.clone()),
                }
            }
            Some(existing) if existing.binding.cluster_id != reg.cluster_id => {
                // The bound cluster id is told only to the shard that bound it.
                let message = if existing.binding.shard == caller.shard {
                    format!(
                        "account {} is bound to cluster {} (server {}); this registration is from cluster {}",
                        reg.name,
                        existing.binding.cluster_id,
                        existing.binding.server_url,
                        reg.cluster_id
                    )
                } else {
                    format!(
                        "account {} is bound to another cluster (registered by shard {}); this registration is from cluster {}",
                        reg.name, existing.binding.shard, reg.cluster_id
                    )
                };
                Decision::Rejected {
                    reason: RejectReason::ClusterMismatch,
                    message,
                    owner: Some(existing.binding.clone()),
                }
            }
            Some(existing) => {
                let same_shard =
                    existing.binding.shard.is_unset() || existing.binding.shard == caller.shard;
                let displaced = existing
                    .session
                    .clone()
                    .filter(|old| *old != caller.session);
                let (superseded, moved_from) = match displaced {
                    Some(old) if same_shard => (Some((old, existing.replica.clone())), None),
                    Some(old) => (None, Some((old, existing.binding.shard.clone()))),
                    None => (None, None),
                };
                let persist = (existing.binding != binding).then(|| binding.clone());
                existing.binding = binding;
                existing.replica = caller.replica.clone();
                existing.kubernetes_version = reg.kubernetes_version.clone();
                if existing.session.as_ref() != Some(&caller.session) {
                    existing.since = now;
                }
                existing.session = Some(caller.session.clone());
                existing.last_session = Some(caller.session.clone());
                existing.epoch = epoch;
                Decision::Accepted {
                    superseded,
                    moved_from,
                    persist,
                    fresh: false,
                }
            }
            None => {
                self.accounts.insert(
                    reg.name.clone(),
                    Account {
                        name: reg.name.clone(),
                        binding: binding.clone(),
                        replica: caller.replica.clone(),
                        kubernetes_version: reg.kubernetes_version.clone(),
                        session: Some(caller.session.clone()),
                        last_session: Some(caller.session.clone()),
                        since: now,
                        epoch,
                    },
                );
                Decision::Accepted {
                    superseded: None,
                    moved_from: None,
                    persist: Some(binding),
                    fresh: true,
                }
            }
        }
    }

    /// True when `session` streams `name`.
    pub fn holds(&self, name: &str, session: &SessionId) -> bool {
        self.accounts
            .get(name)
            .is_some_and(|a| a.session.as_ref() == Some(session))
    }

    /// The session that streams `name`, if any: where frames about the
    /// account (operations, requests) go.
    pub fn holder(&self, name: &str) -> Option<&SessionId> {
        self.accounts.get(name).and_then(|a| a.session.as_ref())
    }

    /// An account by name.
    pub fn get(&self, name: &str) -> Option<&Account> {
        self.accounts.get(name)
    }

    /// Every account, by name.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    /// The accounts whose names sort after `after` (all when `None`), by
    /// name: a page of the list.
    pub fn accounts_after<'a>(&'a self, after: Option<&str>) -> impl Iterator<Item = &'a Account> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, |name| Bound::Excluded(name.to_owned()));
        self.accounts
            .range::<String, _>((start, Bound::Unbounded))
            .map(|(_, a)| a)
    }

    /// Accounts `session` holds.
    pub fn held_by<'a>(&'a self, session: &'a SessionId) -> impl Iterator<Item = &'a Account> + 'a {
        self.accounts
            .values()
            .filter(move |a| a.session.as_ref() == Some(session))
    }

    /// An Unregister of `name` by `session`: `remove` for reason REMOVED (drop
    /// at once), otherwise the account waits for the grace period.
    ///
    /// A REMOVED from the session the hub released the account from (a
    /// revocation the agent had not heard of when it sent it) still removes
    /// it, as long as no other session took it since: the agent's word that
    /// the account is gone is not lost to the race.
    pub fn unregister(
        &mut self,
        session: &SessionId,
        name: &str,
        remove: bool,
        now: SystemTime,
    ) -> Release {
        let Some(account) = self.accounts.get(name) else {
            return Release::NotHeld;
        };
        let held = account.session.as_ref() == Some(session);
        let released_from_it =
            account.session.is_none() && account.last_session.as_ref() == Some(session);
        if remove && (held || released_from_it) {
            self.accounts.remove(name);
            return Release::Removed;
        }
        if !held {
            return Release::NotHeld;
        }
        let epoch = self.epoch();
        match self.accounts.get_mut(name) {
            Some(account) => {
                account.session = None;
                account.since = now;
                account.epoch = epoch;
                Release::Disconnected(epoch)
            }
            None => Release::NotHeld,
        }
    }

    /// The session ended: every account it held becomes Disconnected. Returns
    /// (name, epoch) for each, to expire after the grace period.
    pub fn disconnect_session(
        &mut self,
        session: &SessionId,
        now: SystemTime,
    ) -> Vec<(String, u64)> {
        let names: Vec<String> = self.held_by(session).map(|a| a.name.clone()).collect();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let epoch = self.epoch();
            if let Some(account) = self.accounts.get_mut(&name) {
                account.session = None;
                account.since = now;
                account.epoch = epoch;
                out.push((name, epoch));
            }
        }
        out
    }

    /// The grace period of the disconnection numbered `epoch` ran out: removes
    /// the account when it is still Disconnected since then. True when removed
    /// (the caller drops its cache and stored binding).
    pub fn expire(&mut self, name: &str, epoch: u64) -> bool {
        let expired = self
            .accounts
            .get(name)
            .is_some_and(|a| a.session.is_none() && a.epoch == epoch);
        if expired {
            self.accounts.remove(name);
        }
        expired
    }

    /// Removes `name` whatever its state (another hub replica holds it now,
    /// or the shared store no longer has it); the removed account.
    pub fn remove(&mut self, name: &str) -> Option<Account> {
        self.accounts.remove(name)
    }

    /// Number of accounts in each state: (connected, disconnected).
    pub fn counts(&self) -> (usize, usize) {
        let connected = self
            .accounts
            .values()
            .filter(|a| a.session.is_some())
            .count();
        (connected, self.accounts.len() - connected)
    }
}

/// Fixtures for the tests of the registry and of the modules that decide
/// over it.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Shard `spinnaker/<name>`.
    pub(crate) fn shard(name: &str) -> ShardRef {
        ShardRef {
            namespace: "spinnaker".into(),
            name: name.into(),
        }
    }

    /// Replica `replica` of shard `spinnaker/<shard_name>` on `session`.
    pub(crate) fn caller(session: &str, shard_name: &str, replica: &str) -> Caller {
        Caller {
            session: Arc::from(session),
            shard: shard(shard_name),
            replica: replica.into(),
        }
    }

    /// Account `name` of cluster `cluster`.
    pub(crate) fn registration(name: &str, cluster: &str) -> Registration {
        Registration {
            name: name.into(),
            cluster_id: cluster.into(),
            server_url: format!("https://{cluster}:6443"),
            kubernetes_version: "v1.36.0".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::registration as reg;
    use super::*;

    fn caller(session: &str, replica: &str) -> Caller {
        testing::caller(session, "east", replica)
    }

    /// A registry where replica r1 on session s1 holds `accounts` (name,
    /// cluster).
    fn held_by_s1(accounts: &[(&str, &str)]) -> (Registry, Caller) {
        let mut r = Registry::new();
        let s1 = caller("s1", "r1");
        for (name, cluster) in accounts {
            r.register(&s1, &reg(name, cluster), false, now());
        }
        (r, s1)
    }

    fn state(r: &Registry, name: &str) -> Option<AccountState> {
        r.get(name).map(Account::state)
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH
    }

    #[test]
    fn first_registration_binds_and_persists() {
        let mut r = Registry::new();
        let d = r.register(&caller("s1", "r1"), &reg("prod", "uid-a"), false, now());
        match d {
            Decision::Accepted {
                superseded: None,
                moved_from: None,
                persist: Some(b),
                fresh: true,
            } => assert_eq!(b.cluster_id, "uid-a"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(state(&r, "prod"), Some(AccountState::Connected));
    }

    #[test]
    fn cluster_mismatch_is_rejected_and_holder_keeps_streaming() {
        let (mut r, s1) = held_by_s1(&[("prod", "uid-a")]);
        let d = r.register(&caller("s2", "r9"), &reg("prod", "uid-b"), false, now());
        match d {
            Decision::Rejected {
                reason: RejectReason::ClusterMismatch,
                message,
                owner: Some(owner),
            } => {
                assert_eq!(owner.cluster_id, "uid-a");
                assert!(
                    message.contains("uid-a") && message.contains("uid-b"),
                    "{message}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(r.holds("prod", &s1.session));
        // Also rejected while disconnected: the binding outlives the session.
        r.disconnect_session(&s1.session, now());
        assert!(matches!(
            r.register(&caller("s3", "r9"), &reg("prod", "uid-b"), false, now()),
            Decision::Rejected {
                reason: RejectReason::ClusterMismatch,
                ..
            }
        ));
    }

    #[test]
    fn same_cluster_back_is_accepted_without_persisting_again() {
        let (mut r, s1) = held_by_s1(&[("prod", "uid-a")]);
        r.disconnect_session(&s1.session, now());
        assert_eq!(state(&r, "prod"), Some(AccountState::Disconnected));
        let d = r.register(&caller("s2", "r1"), &reg("prod", "uid-a"), false, now());
        assert_eq!(
            d,
            Decision::Accepted {
                superseded: None,
                moved_from: None,
                persist: None,
                fresh: false
            }
        );
        assert_eq!(state(&r, "prod"), Some(AccountState::Connected));
    }

    #[test]
    fn newer_session_supersedes_older() {
        let mut r = Registry::new();
        let s1 = caller("s1", "r1");
        let s2 = caller("s2", "r2");
        r.register(&s1, &reg("prod", "uid-a"), false, now());
        let d = r.register(&s2, &reg("prod", "uid-a"), false, now());
        assert_eq!(
            d,
            Decision::Accepted {
                superseded: Some((Arc::from("s1"), "r1".to_owned())),
                moved_from: None,
                persist: None,
                fresh: false
            }
        );
        assert!(r.holds("prod", &s2.session));
        assert!(!r.holds("prod", &s1.session));
        // The old session ending later does not disconnect the account.
        assert!(r.disconnect_session(&s1.session, now()).is_empty());
        assert_eq!(state(&r, "prod"), Some(AccountState::Connected));
        // Nor can it unregister it.
        assert_eq!(
            r.unregister(&s1.session, "prod", true, now()),
            Release::NotHeld
        );
        // Re-registering on the same session is a refresh, not a supersede.
        assert!(matches!(
            r.register(&s2, &reg("prod", "uid-a"), false, now()),
            Decision::Accepted {
                superseded: None,
                ..
            }
        ));
    }

    #[test]
    fn grace_expiry_removes_only_if_still_disconnected() {
        let (mut r, s1) = held_by_s1(&[("prod", "uid-a"), ("stage", "uid-b")]);
        let expiries = r.disconnect_session(&s1.session, now());
        assert_eq!(expiries.len(), 2);
        // prod comes back in time; stage does not.
        r.register(&caller("s2", "r1"), &reg("prod", "uid-a"), false, now());
        for (name, epoch) in &expiries {
            let removed = r.expire(name, *epoch);
            assert_eq!(removed, name == "stage", "{name}");
        }
        assert!(r.get("prod").is_some());
        assert!(r.get("stage").is_none());
        // After removal the name is free, for any cluster.
        assert!(matches!(
            r.register(&caller("s3", "r1"), &reg("stage", "uid-z"), false, now()),
            Decision::Accepted { fresh: true, .. }
        ));
    }

    #[test]
    fn stale_timer_from_an_earlier_disconnection_is_ignored() {
        let (mut r, s1) = held_by_s1(&[("prod", "uid-a")]);
        let first = r.disconnect_session(&s1.session, now());
        let s2 = caller("s2", "r1");
        r.register(&s2, &reg("prod", "uid-a"), false, now());
        let second = r.disconnect_session(&s2.session, now());
        assert!(!r.expire("prod", first[0].1), "old timer must not remove");
        assert!(r.expire("prod", second[0].1));
    }

    #[test]
    fn unregister_removed_drops_at_once_other_reasons_wait() {
        let (mut r, s1) = held_by_s1(&[("a", "uid-a"), ("b", "uid-b")]);
        assert_eq!(
            r.unregister(&s1.session, "a", true, now()),
            Release::Removed
        );
        assert!(r.get("a").is_none());
        assert!(matches!(
            r.unregister(&s1.session, "b", false, now()),
            Release::Disconnected(_)
        ));
        assert_eq!(r.counts(), (0, 1));
    }

    #[test]
    fn invalid_registrations_are_rejected() {
        let mut r = Registry::new();
        let c = caller("s1", "r1");
        for (name, cluster) in [("", "uid"), ("a/b", "uid"), ("a b", "uid"), ("ok", " ")] {
            assert!(
                matches!(
                    r.register(&c, &reg(name, cluster), false, now()),
                    Decision::Rejected {
                        reason: RejectReason::Invalid,
                        ..
                    }
                ),
                "{name:?} {cluster:?}"
            );
        }
        assert_eq!(r.counts(), (0, 0));
    }

    #[test]
    fn another_shard_never_takes_a_bound_name_nor_learns_its_cluster() {
        let (mut r, s1) = held_by_s1(&[("prod", "uid-a")]);
        let west = testing::caller("w1", "west", "w-0");
        // The right cluster id, the wrong shard: refused, the holder keeps it.
        let d = r.register(&west, &reg("prod", "uid-a"), false, now());
        let Decision::Rejected {
            reason: RejectReason::OtherShard,
            message,
            ..
        } = d
        else {
            panic!("unexpected {d:?}");
        };
        assert!(message.contains("spinnaker/east"), "{message}");
        assert!(r.holds("prod", &s1.session));
        // Another cluster id from another shard: the message names no cluster.
        let d = r.register(&west, &reg("prod", "uid-b"), true, now());
        let Decision::Rejected {
            reason: RejectReason::ClusterMismatch,
            message,
            ..
        } = d
        else {
            panic!("unexpected {d:?}");
        };
        assert!(!message.contains("uid-a"), "{message}");
        // Also while Disconnected.
        r.disconnect_session(&s1.session, now());
        assert!(matches!(
            r.register(&west, &reg("prod", "uid-a"), false, now()),
            Decision::Rejected {
                reason: RejectReason::OtherShard,
                ..
            }
        ));
    }

    #[test]
    fn the_declared_owner_takes_the_name_and_the_old_shard_is_told_not_superseded() {
        let (mut r, s1) = held_by_s1(&[("prod", "uid-a")]);
        let west = testing::caller("w1", "west", "w-0");
        let d = r.register(&west, &reg("prod", "uid-a"), true, now());
        let Decision::Accepted {
            superseded: None,
            moved_from: Some((old, old_shard)),
            persist: Some(binding),
            ..
        } = d
        else {
            panic!("unexpected {d:?}");
        };
        assert_eq!(
            (old, old_shard),
            (s1.session.clone(), testing::shard("east"))
        );
        assert_eq!(binding.shard, testing::shard("west"));
        // Now east is the other shard.
        assert!(matches!(
            r.register(&s1, &reg("prod", "uid-a"), false, now()),
            Decision::Rejected {
                reason: RejectReason::OtherShard,
                ..
            }
        ));
    }

    #[test]
    fn a_removal_sent_before_the_agent_heard_of_its_release_still_counts() {
        let (mut r, s1) = held_by_s1(&[("prod", "uid-a"), ("stage", "uid-b")]);
        // The hub releases both (a revocation); the agent, not knowing yet,
        // says one was removed and the other merely stopped.
        assert!(matches!(
            r.unregister(&s1.session, "prod", false, now()),
            Release::Disconnected(_)
        ));
        assert!(matches!(
            r.unregister(&s1.session, "stage", false, now()),
            Release::Disconnected(_)
        ));
        assert_eq!(
            r.unregister(&s1.session, "prod", true, now()),
            Release::Removed
        );
        assert!(r.get("prod").is_none(), "the name is free at once");
        assert_eq!(
            r.unregister(&s1.session, "stage", false, now()),
            Release::NotHeld
        );
        // Once another session took an account, the old one's word is void.
        let s2 = caller("s2", "r2");
        r.register(&s2, &reg("stage", "uid-b"), false, now());
        r.disconnect_session(&s2.session, now());
        assert_eq!(
            r.unregister(&s1.session, "stage", true, now()),
            Release::NotHeld
        );
        assert!(r.get("stage").is_some());
    }

    #[test]
    fn loaded_bindings_are_enforced_and_expire() {
        let mut r = Registry::new();
        let binding = Binding {
            cluster_id: "uid-a".into(),
            shard: ShardRef::default(),
            server_url: String::new(),
        };
        let expiries = r.load(vec![("prod".into(), binding)], now());
        assert!(matches!(
            r.register(&caller("s1", "r1"), &reg("prod", "uid-b"), false, now()),
            Decision::Rejected {
                reason: RejectReason::ClusterMismatch,
                ..
            }
        ));
        assert!(r.expire("prod", expiries[0].1));
    }
}
