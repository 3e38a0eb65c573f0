//! A shard's status, computed from what the reconciler observed, and the Events worth
//! publishing when it changes. Pure: the reconciler writes the status only when
//! [`compute`] returns something different from what is stored, so a reconcile of an
//! unchanged shard writes nothing.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use scale_agent_crds::{
    AccountState, AccountStatus, AgentShardStatus, ShardRef, condition_type, new_condition,
};

/// Stable reasons, in conditions, account statuses and Events (see
/// docs/troubleshooting.md).
pub mod reason {
    /// Account: in the agent config.
    pub const SERVING: &str = "Serving";
    /// Account: an older claim (or the current holder) owns the name.
    pub const OWNED_BY_ANOTHER_SHARD: &str = "OwnedByAnotherShard";
    /// Account: the owner dropped the name and is rewriting its config; it comes next.
    pub const OWNER_RELEASING: &str = "OwnerReleasing";
    /// Account: no longer in the spec, but still in the agent config, which cannot be
    /// rewritten until the shard's config problem is fixed; the name stays this shard's
    /// until then.
    pub const RELEASING: &str = "Releasing";
    /// Account: the kubeconfig Secret does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// Account: the Secret has no such key.
    pub const SECRET_KEY_NOT_FOUND: &str = "SecretKeyNotFound";
    /// Account: the kubeconfig does not parse or names no usable cluster.
    pub const KUBECONFIG_INVALID: &str = "KubeconfigInvalid";
    /// Condition Ready: everything holds.
    pub const READY: &str = "Ready";
    /// Conditions Ready, AccountsUnique: an account is left out for a conflict.
    pub const ACCOUNT_CONFLICT: &str = "AccountConflict";
    /// Condition AccountsUnique: no conflict.
    pub const ALL_ACCOUNTS_OWNED: &str = "AllAccountsOwned";
    /// Conditions Ready, ConfigValid: something in the spec cannot be used.
    pub const CONFIG_INVALID: &str = "ConfigInvalid";
    /// Condition ConfigValid: the spec became an agent config.
    pub const CONFIG_APPLIED: &str = "ConfigApplied";
    /// Conditions Ready, Available: the agent Deployment is rolling out or not yet available.
    pub const PROGRESSING: &str = "Progressing";
    /// Condition Available: the agent Deployment has its replicas available.
    pub const AVAILABLE: &str = "DeploymentAvailable";
    /// Condition Available: the Deployment reports it is not available.
    pub const UNAVAILABLE: &str = "DeploymentUnavailable";
    /// Condition Ready: spec.paused is true; nothing is reconciled.
    pub const PAUSED: &str = "Paused";
    /// Event: an account left out for a conflict is now served.
    pub const ACCOUNT_ACQUIRED: &str = "AccountAcquired";
}

/// What the reconciler found about the agent Deployment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeploymentView {
    /// spec.replicas of the shard.
    pub desired: i32,
    /// metadata.generation of the Deployment.
    pub generation: Option<i64>,
    /// status.observedGeneration of the Deployment.
    pub observed_generation: Option<i64>,
    /// status.replicas.
    pub replicas: i32,
    /// status.readyReplicas.
    pub ready: i32,
    /// status.updatedReplicas.
    pub updated: i32,
    /// status.availableReplicas.
    pub available_replicas: i32,
    /// The Deployment's Available condition: (status True, reason, message).
    pub available: Option<(bool, String, String)>,
}

impl DeploymentView {
    /// Rolled out: the controller saw the latest spec, every replica runs it and is
    /// available, and the Deployment says Available.
    pub fn rolled_out(&self) -> bool {
        let current =
            matches!((self.generation, self.observed_generation), (Some(g), Some(o)) if o >= g);
        current
            && self.updated >= self.desired
            && self.available_replicas >= self.desired
            && self.replicas == self.desired
            && self.available.as_ref().is_some_and(|a| a.0)
    }
}

impl DeploymentView {
    /// What the reconciler sees of `d`, the agent Deployment of a shard that asks for
    /// `desired` replicas.
    pub fn of(desired: i32, d: &Deployment) -> Self {
        let st = d.status.clone().unwrap_or_default();
        let available = st
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Available")
            .map(|c| {
                (
                    c.status == "True",
                    c.reason.unwrap_or_default(),
                    c.message.unwrap_or_default(),
                )
            });
        Self {
            desired,
            generation: d.metadata.generation,
            observed_generation: st.observed_generation,
            replicas: st.replicas.unwrap_or(0),
            ready: st.ready_replicas.unwrap_or(0),
            updated: st.updated_replicas.unwrap_or(0),
            available_replicas: st.available_replicas.unwrap_or(0),
            available,
        }
    }
}

/// Everything the status is computed from.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// metadata.generation of the shard.
    pub generation: Option<i64>,
    /// spec.paused.
    pub paused: bool,
    /// One entry per account in the spec, in spec order.
    pub accounts: Vec<AccountStatus>,
    /// A problem of the whole shard (no hub, no image, a budget the agent cannot read):
    /// the message. The children were not applied.
    pub config_problem: Option<String>,
    /// The agent Deployment, when it exists.
    pub deployment: Option<DeploymentView>,
}

/// An account's status.
pub fn account(
    name: &str,
    state: AccountState,
    reason: &str,
    message: String,
    owner: Option<&ShardRef>,
) -> AccountStatus {
    AccountStatus {
        name: name.to_owned(),
        state,
        reason: reason.to_owned(),
        message,
        owner_shard: owner.map(ShardRef::key),
        claimed_at: None,
    }
}

/// The names a status holds: every account in a state other than `Conflict` (see
/// [`scale_agent_crds::claims`]).
pub fn holds(status: &AgentShardStatus) -> BTreeSet<String> {
    status
        .accounts
        .iter()
        .filter(|a| a.state.holds())
        .map(|a| a.name.clone())
        .collect()
}

/// The JSON merge patch of `status` that turns `old` into `new`, carrying only the
/// fields that changed (so what this version cannot read, like an account state
/// a newer version wrote, is not written back unless it is replaced); `None` when
/// nothing changed.
pub fn patch(old: Option<&AgentShardStatus>, new: &AgentShardStatus) -> Option<serde_json::Value> {
    if old == Some(new) {
        return None;
    }
    let new_v = serde_json::to_value(new).ok()?;
    let old_v = old
        .and_then(|o| serde_json::to_value(o).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    let (serde_json::Value::Object(new_m), serde_json::Value::Object(old_m)) = (new_v, old_v)
    else {
        return None;
    };
    let mut out = serde_json::Map::new();
    for (k, v) in &new_m {
        if old_m.get(k) != Some(v) {
            out.insert(k.clone(), v.clone());
        }
    }
    for k in old_m.keys().filter(|k| !new_m.contains_key(*k)) {
        out.insert(k.clone(), serde_json::Value::Null);
    }
    (!out.is_empty()).then_some(serde_json::Value::Object(out))
}

/// The status a shard should have, starting from `old` (condition times are kept when a
/// condition's status does not change).
pub fn compute(old: Option<&AgentShardStatus>, obs: &Observed, now: Time) -> AgentShardStatus {
    let mut st = old.cloned().unwrap_or_default();
    let generation = obs.generation;
    if obs.paused {
        st.set_condition(new_condition(
            condition_type::READY,
            false,
            reason::PAUSED,
            "spec.paused is true: the operator leaves this shard's agents as they are",
            generation,
            now,
        ));
        st.observed_generation = generation;
        return st;
    }
    st.observed_generation = generation;
    st.accounts = obs.accounts.clone();
    let count = |s: AccountState| {
        i32::try_from(obs.accounts.iter().filter(|a| a.state == s).count()).unwrap_or(i32::MAX)
    };
    st.active_accounts = count(AccountState::Active);
    st.conflicts = count(AccountState::Conflict);
    let (replicas, ready) = obs
        .deployment
        .as_ref()
        .map(|d| (d.replicas, d.ready))
        .unwrap_or((0, 0));
    st.replicas = replicas;
    st.ready_replicas = ready;

    // ConfigValid
    let invalid: Vec<&AccountStatus> = obs
        .accounts
        .iter()
        .filter(|a| a.state == AccountState::Invalid)
        .collect();
    let config_valid = obs.config_problem.is_none() && invalid.is_empty();
    let config_message = match &obs.config_problem {
        Some(p) => p.clone(),
        None if !invalid.is_empty() => format!(
            "{} of {} accounts cannot be used and are left out: {}",
            invalid.len(),
            obs.accounts.len(),
            invalid
                .iter()
                .map(|a| format!("{} ({})", a.name, a.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        None => "the spec became the agent config".to_owned(),
    };
    st.set_condition(new_condition(
        condition_type::CONFIG_VALID,
        config_valid,
        if config_valid {
            reason::CONFIG_APPLIED
        } else {
            reason::CONFIG_INVALID
        },
        config_message,
        generation,
        now.clone(),
    ));

    // AccountsUnique
    let conflicts: Vec<&AccountStatus> = obs
        .accounts
        .iter()
        .filter(|a| a.state == AccountState::Conflict)
        .collect();
    let unique = conflicts.is_empty();
    let unique_message = if unique {
        "every account of this shard is its own".to_owned()
    } else {
        conflicts
            .iter()
            .map(|a| {
                format!(
                    "account {} is owned by AgentShard {}",
                    a.name,
                    a.owner_shard.as_deref().unwrap_or("?")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    st.set_condition(new_condition(
        condition_type::ACCOUNTS_UNIQUE,
        unique,
        if unique {
            reason::ALL_ACCOUNTS_OWNED
        } else {
            reason::ACCOUNT_CONFLICT
        },
        unique_message.clone(),
        generation,
        now.clone(),
    ));

    // Available
    let (available, avail_reason, avail_message) = match &obs.deployment {
        None => (
            false,
            reason::PROGRESSING,
            "the agent Deployment does not exist yet".to_owned(),
        ),
        Some(d) => match &d.available {
            Some((true, _, m)) => (true, reason::AVAILABLE, m.clone()),
            Some((false, _, m)) => (false, reason::UNAVAILABLE, m.clone()),
            None => (
                false,
                reason::PROGRESSING,
                "the agent Deployment has not reported availability yet".to_owned(),
            ),
        },
    };
    st.set_condition(new_condition(
        condition_type::AVAILABLE,
        available,
        avail_reason,
        avail_message,
        generation,
        now.clone(),
    ));

    // Ready
    let rolled_out = obs
        .deployment
        .as_ref()
        .is_some_and(DeploymentView::rolled_out);
    let (ready, ready_reason, ready_message) = if !config_valid {
        (
            false,
            reason::CONFIG_INVALID,
            config_message_short(obs, &invalid),
        )
    } else if !unique {
        (false, reason::ACCOUNT_CONFLICT, unique_message)
    } else if !rolled_out {
        let m = match &obs.deployment {
            Some(d) => format!(
                "agent Deployment: {} of {} replicas updated, {} available",
                d.updated, d.desired, d.available_replicas
            ),
            None => "the agent Deployment does not exist yet".to_owned(),
        };
        (false, reason::PROGRESSING, m)
    } else {
        (
            true,
            reason::READY,
            format!(
                "{} accounts served by {} agent replicas",
                st.active_accounts, st.ready_replicas
            ),
        )
    };
    st.set_condition(new_condition(
        condition_type::READY,
        ready,
        ready_reason,
        ready_message,
        generation,
        now,
    ));
    // Conditions in a stable order, so a reorder is never a change.
    st.conditions.sort_by_key(|c| {
        condition_type::ALL
            .iter()
            .position(|t| *t == c.type_)
            .unwrap_or(usize::MAX)
    });
    st
}

fn config_message_short(obs: &Observed, invalid: &[&AccountStatus]) -> String {
    match &obs.config_problem {
        Some(p) => p.clone(),
        None => format!(
            "accounts left out: {}",
            invalid
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// An Event to publish about a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Warning (true) or Normal.
    pub warning: bool,
    /// Stable CamelCase reason.
    pub reason: &'static str,
    /// For people.
    pub note: String,
}

/// The Events a status change deserves: one per account that newly conflicts, becomes
/// invalid or is acquired after a conflict, and one when the shard's config becomes
/// unusable. Nothing when nothing changed, so no-op reconciles publish nothing.
pub fn notices(old: Option<&AgentShardStatus>, new: &AgentShardStatus) -> Vec<Notice> {
    let mut out = Vec::new();
    let before = |name: &str| old.and_then(|o| o.account(name));
    for a in &new.accounts {
        let prev = before(&a.name);
        let same = prev.is_some_and(|p| {
            p.state == a.state && p.reason == a.reason && p.owner_shard == a.owner_shard
        });
        if same {
            continue;
        }
        match a.state {
            AccountState::Conflict if a.reason == reason::OWNED_BY_ANOTHER_SHARD => out.push(Notice {
                warning: true,
                reason: reason::ACCOUNT_CONFLICT,
                note: format!(
                    "account {} is owned by AgentShard {}; it is left out of this shard's agent config",
                    a.name,
                    a.owner_shard.as_deref().unwrap_or("?")
                ),
            }),
            AccountState::Conflict => {}
            AccountState::Invalid => out.push(Notice {
                warning: true,
                reason: invalid_reason(&a.reason),
                note: format!("account {}: {}", a.name, a.message),
            }),
            AccountState::Active if prev.is_some_and(|p| p.state == AccountState::Conflict) => {
                out.push(Notice {
                    warning: false,
                    reason: reason::ACCOUNT_ACQUIRED,
                    note: format!(
                        "account {} is now served by this shard (its previous owner released it)",
                        a.name
                    ),
                })
            }
            AccountState::Active | AccountState::Unknown => {}
        }
    }
    let was_problem = old
        .and_then(|o| o.condition(condition_type::CONFIG_VALID))
        .map(|c| (c.status.clone(), c.message.clone()));
    if let Some(c) = new.condition(condition_type::CONFIG_VALID)
        && c.status == scale_agent_crds::condition_status::FALSE
        && was_problem != Some((c.status.clone(), c.message.clone()))
        && new
            .accounts
            .iter()
            .all(|a| a.state != AccountState::Invalid)
    {
        out.push(Notice {
            warning: true,
            reason: reason::CONFIG_INVALID,
            note: c.message.clone(),
        });
    }
    out
}

fn invalid_reason(r: &str) -> &'static str {
    match r {
        reason::SECRET_NOT_FOUND => reason::SECRET_NOT_FOUND,
        reason::SECRET_KEY_NOT_FOUND => reason::SECRET_KEY_NOT_FOUND,
        _ => reason::KUBECONFIG_INVALID,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use scale_agent_crds::condition_status;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid"))
    }

    fn active(name: &str) -> AccountStatus {
        account(
            name,
            AccountState::Active,
            reason::SERVING,
            String::new(),
            None,
        )
    }

    fn conflict(name: &str, owner: &str) -> AccountStatus {
        let owner: ShardRef = owner.parse().expect("ref");
        account(
            name,
            AccountState::Conflict,
            reason::OWNED_BY_ANOTHER_SHARD,
            "owned".into(),
            Some(&owner),
        )
    }

    fn rolled_out() -> DeploymentView {
        DeploymentView {
            desired: 1,
            generation: Some(1),
            observed_generation: Some(1),
            replicas: 1,
            ready: 1,
            updated: 1,
            available_replicas: 1,
            available: Some((true, "MinimumReplicasAvailable".into(), "ok".into())),
        }
    }

    fn obs(accounts: Vec<AccountStatus>, d: Option<DeploymentView>) -> Observed {
        Observed {
            generation: Some(3),
            paused: false,
            accounts,
            config_problem: None,
            deployment: d,
        }
    }

    #[test]
    fn ready_when_valid_unique_and_rolled_out() {
        let s = compute(None, &obs(vec![active("a")], Some(rolled_out())), t(1));
        let ready = s.condition(condition_type::READY).expect("ready");
        assert_eq!(ready.status, condition_status::TRUE);
        assert_eq!(ready.observed_generation, Some(3));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!((s.active_accounts, s.conflicts), (1, 0));
        assert_eq!(s.conditions.len(), 4);
    }

    #[test]
    fn conflict_makes_ready_false_and_counts() {
        let s = compute(
            None,
            &obs(vec![active("a"), conflict("b", "o/x")], Some(rolled_out())),
            t(1),
        );
        assert_eq!((s.active_accounts, s.conflicts), (1, 1));
        let ready = s.condition(condition_type::READY).expect("ready");
        assert_eq!(ready.reason, reason::ACCOUNT_CONFLICT);
        assert!(ready.message.contains("o/x"));
        let unique = s.condition(condition_type::ACCOUNTS_UNIQUE).expect("c");
        assert_eq!(unique.status, condition_status::FALSE);
    }

    #[test]
    fn not_ready_while_rolling_out() {
        let mut d = rolled_out();
        d.updated = 0;
        let s = compute(None, &obs(vec![active("a")], Some(d)), t(1));
        assert_eq!(
            s.condition(condition_type::READY).expect("r").reason,
            reason::PROGRESSING
        );
    }

    #[test]
    fn same_observation_is_no_change_even_later() {
        let o = obs(vec![active("a"), conflict("b", "o/x")], Some(rolled_out()));
        let first = compute(None, &o, t(1));
        let second = compute(Some(&first), &o, t(100));
        assert_eq!(first, second);
        assert!(notices(Some(&first), &second).is_empty());
    }

    #[test]
    fn invalid_account_makes_config_invalid_naming_it() {
        let bad = account(
            "b",
            AccountState::Invalid,
            reason::SECRET_NOT_FOUND,
            "Secret kc-b not found".into(),
            None,
        );
        let s = compute(None, &obs(vec![active("a"), bad], Some(rolled_out())), t(1));
        let c = s.condition(condition_type::CONFIG_VALID).expect("c");
        assert_eq!(c.status, condition_status::FALSE);
        assert!(c.message.contains("kc-b"), "{}", c.message);
        let n = notices(None, &s);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].reason, reason::SECRET_NOT_FOUND);
    }

    #[test]
    fn notices_on_conflict_and_on_acquire() {
        let before = compute(None, &obs(vec![conflict("b", "o/x")], None), t(1));
        let n = notices(None, &before);
        assert_eq!(n.len(), 1);
        assert!(n[0].warning && n[0].note.contains("o/x"));
        let after = compute(Some(&before), &obs(vec![active("b")], None), t(2));
        let n = notices(Some(&before), &after);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].reason, reason::ACCOUNT_ACQUIRED);
    }

    #[test]
    fn paused_only_touches_ready() {
        let running = compute(None, &obs(vec![active("a")], Some(rolled_out())), t(1));
        let mut o = obs(vec![], None);
        o.paused = true;
        let paused = compute(Some(&running), &o, t(2));
        assert_eq!(paused.accounts, running.accounts);
        assert_eq!(
            paused.condition(condition_type::READY).expect("r").reason,
            reason::PAUSED
        );
    }
}
