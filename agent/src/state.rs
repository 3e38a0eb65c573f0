//! What the agent knows right now, shared by the session, the account tasks and the
//! admin server: the clusters operations run against, and what readiness reports.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::operations::Cluster;

/// Shared agent state.
#[derive(Default)]
pub struct State {
    connected: AtomicBool,
    /// This replica is among the shard's live members (its own Lease counted), so the
    /// accounts it holds are decided; until then it holds none and is not ready.
    member: AtomicBool,
    budget: RwLock<Option<crate::budget::Budget>>,
    clusters: RwLock<HashMap<String, Arc<Cluster>>>,
    synced: RwLock<HashMap<String, Vec<Arc<AtomicBool>>>>,
    held: RwLock<Vec<String>>,
    problems: RwLock<BTreeMap<String, String>>,
    hub_error: RwLock<Option<String>>,
    accepted: RwLock<BTreeSet<String>>,
    refusals: RwLock<BTreeMap<String, (String, String)>>,
}

impl State {
    /// Whether a hub session is established.
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// Whether this replica is among the shard's live members now.
    pub fn set_member(&self, member: bool) {
        self.member.store(member, Ordering::Relaxed);
    }

    /// The current session's memory budget.
    pub fn set_budget(&self, budget: Option<crate::budget::Budget>) {
        if let Ok(mut b) = self.budget.write() {
            *b = budget;
        }
    }

    /// Bytes sent and not yet acknowledged by the hub, now.
    pub fn buffered_bytes(&self) -> u64 {
        self.budget
            .read()
            .ok()
            .and_then(|b| b.as_ref().map(crate::budget::Budget::buffered_bytes))
            .unwrap_or(0)
    }

    /// The accounts this replica should stream now.
    pub fn set_held(&self, accounts: Vec<String>) {
        if let Ok(mut h) = self.held.write() {
            *h = accounts;
        }
    }

    /// The cluster of a streaming account.
    pub fn cluster(&self, account: &str) -> Option<Arc<Cluster>> {
        self.clusters.read().ok()?.get(account).cloned()
    }

    /// Records a streaming account's cluster.
    pub fn set_cluster(&self, account: &str, c: Arc<Cluster>) {
        if let Ok(mut m) = self.clusters.write() {
            m.insert(account.to_string(), c);
        }
    }

    /// Forgets an account (stopped or handed over).
    pub fn remove_cluster(&self, account: &str) {
        if let Ok(mut m) = self.clusters.write() {
            m.remove(account);
        }
        if let Ok(mut a) = self.accepted.write() {
            a.remove(account);
        }
        if let Ok(mut m) = self.synced.write() {
            m.remove(account);
        }
    }

    /// The per-kind "listed once" flags of an account.
    pub fn set_sync_flags(&self, account: &str, flags: Vec<Arc<AtomicBool>>) {
        if let Ok(mut m) = self.synced.write() {
            m.insert(account.to_string(), flags);
        }
    }

    /// Records why the last attempt to reach the hub failed (`None`: it succeeded).
    pub fn set_hub_error(&self, error: Option<String>) {
        if let Ok(mut e) = self.hub_error.write() {
            *e = error;
        }
    }

    /// Whether a hub session is established, and why not.
    pub fn hub_link(&self) -> (bool, Option<String>) {
        (
            self.connected.load(Ordering::Relaxed),
            self.hub_error.read().ok().and_then(|e| e.clone()),
        )
    }

    /// The hub accepted the account's registration.
    pub fn set_accepted(&self, account: &str) {
        if let Ok(mut a) = self.accepted.write() {
            a.insert(account.to_string());
        }
        if let Ok(mut r) = self.refusals.write() {
            r.remove(account);
        }
    }

    /// The hub refused the account (or took it back): its reason (`NotOwner`...) and
    /// message. Also a problem.
    pub fn set_refused(&self, account: &str, reason: String, message: String) {
        if let Ok(mut a) = self.accepted.write() {
            a.remove(account);
        }
        if let Ok(mut r) = self.refusals.write() {
            r.insert(account.to_string(), (reason, message.clone()));
        }
        self.set_problem(account, message);
    }

    /// Where each account stands: accepted by the hub, refused (reason, message), its
    /// problem, and whether every kind has listed once.
    pub fn account_phase(&self, account: &str) -> AccountPhase {
        let refused = self
            .refusals
            .read()
            .ok()
            .and_then(|r| r.get(account).cloned());
        let problem = self
            .problems
            .read()
            .ok()
            .and_then(|p| p.get(account).cloned());
        let accepted = self.accepted.read().is_ok_and(|a| a.contains(account));
        let synced = self.synced.read().ok().is_some_and(|m| {
            m.get(account)
                .is_some_and(|f| f.iter().all(|x| x.load(Ordering::Relaxed)))
        });
        AccountPhase {
            accepted,
            synced,
            refused,
            problem,
        }
    }

    /// Records why an account is not streaming.
    pub fn set_problem(&self, account: &str, problem: String) {
        if let Ok(mut m) = self.problems.write() {
            m.insert(account.to_string(), problem);
        }
    }

    /// The account streams again.
    pub fn clear_problem(&self, account: &str) {
        if let Ok(mut m) = self.problems.write() {
            m.remove(account);
        }
        if let Ok(mut r) = self.refusals.write() {
            r.remove(account);
        }
    }

    /// Forgets everything about accounts no longer held.
    pub fn retain(&self, keep: &[String]) {
        if let Ok(mut m) = self.problems.write() {
            m.retain(|k, _| keep.contains(k));
        }
        if let Ok(mut m) = self.refusals.write() {
            m.retain(|k, _| keep.contains(k));
        }
        if let Ok(mut m) = self.accepted.write() {
            m.retain(|k| keep.contains(k));
        }
        if let Ok(mut m) = self.clusters.write() {
            m.retain(|k, _| keep.contains(k));
        }
        if let Ok(mut m) = self.synced.write() {
            m.retain(|k, _| keep.contains(k));
        }
    }

    /// Ready means connected to the hub and every held account that can stream has
    /// listed once. An account with a problem (unreachable cluster, rejected by the hub)
    /// does not hold the others hostage: it is reported, not counted. Returns the reasons
    /// when not ready.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut why = Vec::new();
        if !self.connected.load(Ordering::Relaxed) {
            why.push("not connected to the hub".to_string());
        }
        if !self.member.load(Ordering::Relaxed) {
            why.push(
                "not a member of the shard yet (its Lease is not written or not renewed), so the accounts it holds are not decided"
                    .to_string(),
            );
        }
        let held = self.held.read().map(|h| h.clone()).unwrap_or_default();
        let synced = self.synced.read();
        let problems = self.problems.read();
        for a in held {
            if let Ok(p) = &problems
                && let Some(p) = p.get(&a)
            {
                tracing::trace!(account = %a, problem = %p, "not counted for readiness");
                continue;
            }
            let done = synced
                .as_ref()
                .ok()
                .and_then(|m| {
                    m.get(&a)
                        .map(|f| f.iter().all(|x| x.load(Ordering::Relaxed)))
                })
                .unwrap_or(false);
            if !done {
                why.push(format!("account {a}: not synced yet"));
            }
        }
        if why.is_empty() { Ok(()) } else { Err(why) }
    }
}

/// Where one account stands in this replica (see [`State::account_phase`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountPhase {
    /// The hub accepted its registration in the current session.
    pub accepted: bool,
    /// Every kind has listed once.
    pub synced: bool,
    /// The hub refused it: its reason and message.
    pub refused: Option<(String, String)>,
    /// Why it is not streaming (cluster unreachable, refused...).
    pub problem: Option<String>,
}

impl State {
    /// Accounts that are not streaming, and why.
    pub fn problems(&self) -> BTreeMap<String, String> {
        self.problems.read().map(|p| p.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica that has not yet counted itself among the shard's members holds no
    /// account because nothing is decided yet, not because it has nothing to stream: it
    /// must not say it is ready (a rollout would take it for a streaming replica).
    #[test]
    fn ready_only_once_a_member_with_its_accounts_synced() {
        let s = State::default();
        s.set_connected(true);
        assert!(s.readiness().is_err(), "connected, membership unknown");
        s.set_member(true);
        assert_eq!(s.readiness(), Ok(()), "a member holding no account");
        s.set_held(vec!["a".into()]);
        assert!(s.readiness().is_err(), "a held account not synced");
        let flag = Arc::new(AtomicBool::new(false));
        s.set_sync_flags("a", vec![flag.clone()]);
        assert!(s.readiness().is_err(), "a held account listing");
        flag.store(true, Ordering::Relaxed);
        assert_eq!(s.readiness(), Ok(()));
        s.set_member(false);
        assert!(s.readiness().is_err(), "no longer a member");
    }
}
