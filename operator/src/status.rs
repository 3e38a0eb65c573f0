//! A shard's status, computed from what the reconciler observed, and the Events worth
//! publishing when it changes. Pure: the reconciler writes the status only when
//! [`compute`] returns something different from what is stored, so a reconcile of an
//! unchanged shard writes nothing.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use scale_agent_crds::decode::bounded;
use scale_agent_crds::{
    AccountState, AccountStatus, AgentShardStatus, ShardRef, condition_status, condition_type,
    new_condition, unknown_condition,
};

/// Stable reasons, in conditions, account statuses and Events (see
/// docs/troubleshooting.md).
pub mod reason {
    /// Account: streaming (a live replica reports it).
    pub const STREAMING: &str = "Streaming";
    /// Account, conditions Ready and Reconciling: a replica is registering it with the
    /// hub or listing it for the first time.
    pub const SYNCING: &str = "Syncing";
    /// Account, conditions Ready and Reconciling, Event: no live replica of the shard
    /// holds it.
    pub const NO_REPLICA: &str = "NoReplica";
    /// Account, conditions Ready and Reconciling, Event: the replica holding it cannot
    /// reach the hub.
    pub const HUB_UNREACHABLE: &str = "HubUnreachable";
    /// Account, conditions Ready and Reconciling, Event: the replica holding it cannot
    /// reach its cluster.
    pub const CLUSTER_UNREACHABLE: &str = "ClusterUnreachable";
    /// Conditions Ready and Stalled, Event: the hub refuses an account (the account's
    /// own reason is the hub's: NotOwner, ClusterMismatch...).
    pub const REFUSED_BY_HUB: &str = "RefusedByHub";
    /// Account: in the agent config (the state says whether it streams). Written by
    /// older versions of the operator.
    pub const SERVING: &str = "Serving";
    /// Account: an older claim (or the current holder) owns the name.
    pub const OWNED_BY_ANOTHER_SHARD: &str = "OwnedByAnotherShard";
    /// Account, conditions Ready and Reconciling: the owner dropped the name and is
    /// rewriting its config; it comes next.
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
    /// Account: the kubeconfig asks for something the operator does not allow (running a
    /// program, reading the agent's files...).
    pub const KUBECONFIG_REFUSED: &str = "KubeconfigRefused";
    /// Condition ConfigValid, Event: the shard's TLS Secret does not exist.
    pub const TLS_SECRET_NOT_FOUND: &str = "TlsSecretNotFound";
    /// Condition ConfigValid, Event: the TLS Secret lacks tls.crt, tls.key or ca.crt.
    pub const TLS_SECRET_KEY_NOT_FOUND: &str = "TlsSecretKeyNotFound";
    /// Condition ConfigValid, Event: the TLS Secret's certificate names another shard
    /// (or none).
    pub const TLS_CERTIFICATE_WRONG_SHARD: &str = "TlsCertificateWrongShard";
    /// Condition ConfigValid, Event: the TLS Secret's certificate does not parse, is not
    /// valid now, or does not match its key.
    pub const TLS_CERTIFICATE_INVALID: &str = "TlsCertificateInvalid";
    /// Condition ConfigValid, Event: the operator's CA (`--agent-ca-secret`) cannot
    /// issue the shard's certificate.
    pub const AGENT_CA_INVALID: &str = "AgentCaInvalid";
    /// Condition ConfigValid, Event: the operator may not write the shard's children in
    /// its namespace (no RoleBinding to the ClusterRole scale-agent-operator-shards).
    pub const NAMESPACE_NOT_OPENED: &str = "NamespaceNotOpened";
    /// Condition ConfigValid, Event: spec.image is not one the operator may run.
    pub const IMAGE_NOT_ALLOWED: &str = "ImageNotAllowed";
    /// Condition ConfigValid, Event: spec.serviceAccountName is not one the operator may
    /// run pods as.
    pub const SERVICE_ACCOUNT_NOT_ALLOWED: &str = "ServiceAccountNotAllowed";
    /// Condition Ready: Ready until the operator has looked at the shard once
    /// (status Unknown); condition Reconciling then.
    pub const RECONCILING: &str = "Reconciling";
    /// Condition Ready, Event: every account streams and the agents are rolled out.
    pub const READY: &str = "Ready";
    /// Condition Reconciling (False): nothing left to do.
    pub const RECONCILED: &str = "Reconciled";
    /// Condition Stalled (False): nothing needs a person.
    pub const NOT_STALLED: &str = "NotStalled";
    /// Conditions Ready, AccountsUnique, Stalled, Event: an account is left out for a
    /// conflict.
    pub const ACCOUNT_CONFLICT: &str = "AccountConflict";
    /// Condition AccountsUnique: no conflict.
    pub const ALL_ACCOUNTS_OWNED: &str = "AllAccountsOwned";
    /// Conditions Ready, ConfigValid, Stalled, Event: something in the spec cannot be
    /// used.
    pub const CONFIG_INVALID: &str = "ConfigInvalid";
    /// Condition ConfigValid: the spec became the agent config.
    pub const CONFIG_APPLIED: &str = "ConfigApplied";
    /// Conditions Ready, Reconciling, Available: the agent Deployment is rolling out or
    /// not yet available.
    pub const PROGRESSING: &str = "Progressing";
    /// Condition Available: the agent Deployment has its replicas available.
    pub const AVAILABLE: &str = "DeploymentAvailable";
    /// Condition Available: the Deployment reports it is not available.
    pub const UNAVAILABLE: &str = "DeploymentUnavailable";
    /// Conditions Ready and Reconciling: spec.paused is true; nothing is reconciled.
    pub const PAUSED: &str = "Paused";
    /// Event: an account left out for a conflict is now served.
    pub const ACCOUNT_ACQUIRED: &str = "AccountAcquired";
    /// Condition Reconciling (False): the shard is Stalled.
    pub const STALLED_REASON: &str = "Stalled";
}

/// The longest condition message written (metav1.Condition's limit): a shard with
/// hundreds of accounts in trouble says so without growing its status without bound.
pub const MAX_CONDITION_MESSAGE_BYTES: usize = 32 * 1024;

/// The longest Event note published: the API server refuses events.k8s.io/v1 Events
/// with a longer note, and the Event would be lost.
pub const MAX_NOTE_BYTES: usize = 1024;

/// The longest account message written (`status.accounts[].message`): hundreds of
/// accounts each say what is wrong without growing the status without bound.
pub const MAX_ACCOUNT_MESSAGE_BYTES: usize = 1024;

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

/// A problem of the whole shard: the spec cannot become an agent config (no hub, no
/// image, a budget the agent cannot read, an image or ServiceAccount not allowed, an
/// unusable TLS Secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Stable reason (ConfigValid's).
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

impl Problem {
    /// A problem with `reason` and `message`.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// What the agent replicas say about themselves, in short.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaSummary {
    /// Live replicas (members of the shard renewing their Lease).
    pub live: usize,
    /// Live replicas without a hub session, and why (their last connection error).
    pub disconnected: Vec<(String, String)>,
}

/// Everything the status is computed from.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// metadata.generation of the shard.
    pub generation: Option<i64>,
    /// spec.paused.
    pub paused: bool,
    /// One entry per account in the spec, in spec order (plus those still carried).
    pub accounts: Vec<AccountStatus>,
    /// A problem of the whole shard; the children were not applied.
    pub config_problem: Option<Problem>,
    /// The agent Deployment, when it exists.
    pub deployment: Option<DeploymentView>,
    /// The live agent replicas.
    pub replicas: ReplicaSummary,
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
        message: bounded(&message, MAX_ACCOUNT_MESSAGE_BYTES),
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

/// The status the reserve write leaves (see [`crate::decide::Decision::reserve`]): `old`
/// with `accounts` and their counts and, on first sight (no conditions yet), Ready
/// `Unknown`, since the operator has not looked at the shard's agents yet. The status
/// write that follows in the same reconcile starts from it, so it says what the
/// operator then saw rather than first sight again (a third write).
pub fn reserved(
    old: Option<&AgentShardStatus>,
    accounts: &[AccountStatus],
    generation: Option<i64>,
    now: Time,
) -> AgentShardStatus {
    let mut st = old.cloned().unwrap_or_default();
    st.accounts = accounts.to_vec();
    let count = |s: AccountState| {
        i32::try_from(accounts.iter().filter(|a| a.state == s).count()).unwrap_or(i32::MAX)
    };
    st.active_accounts = count(AccountState::Active);
    st.conflicts = count(AccountState::Conflict);
    if st.conditions.is_empty() {
        st.set_condition(first_sight(generation, now));
    }
    st
}

/// Ready on first sight: `Unknown`, the operator has not looked at the agents yet.
fn first_sight(
    generation: Option<i64>,
    now: Time,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    unknown_condition(
        condition_type::READY,
        reason::RECONCILING,
        "the operator has not looked at this shard's agents yet",
        generation,
        now,
    )
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
///
/// Ready is `Unknown` until the shard has had a status with conditions (first sight);
/// then True only when the config is valid, every account is its own, every account
/// streams (as a live replica reports it) and the agents are rolled out. Stalled is
/// True when only a person can make it Ready (an invalid config, a conflict that is not
/// a handoff, an account the hub refuses); Reconciling is True while it is on its way
/// by itself, and False while Stalled, so kstatus reads Failed, InProgress or Current.
pub fn compute(old: Option<&AgentShardStatus>, obs: &Observed, now: Time) -> AgentShardStatus {
    let mut st = old.cloned().unwrap_or_default();
    let generation = obs.generation;
    let first_sight = old
        .and_then(|o| o.condition(condition_type::READY))
        .is_none();
    let cond = |type_: &str, status: bool, reason: &str, message: String| {
        let message = bounded(&message, MAX_CONDITION_MESSAGE_BYTES);
        new_condition(type_, status, reason, message, generation, now.clone())
    };
    st.observed_generation = generation;
    if obs.paused {
        let why = "spec.paused is true: the operator leaves this shard's agents as they are";
        st.set_condition(cond(
            condition_type::READY,
            false,
            reason::PAUSED,
            why.into(),
        ));
        st.set_condition(cond(
            condition_type::RECONCILING,
            false,
            reason::PAUSED,
            why.into(),
        ));
        st.set_condition(cond(
            condition_type::STALLED,
            false,
            reason::NOT_STALLED,
            "paused".into(),
        ));
        sort_conditions(&mut st);
        return st;
    }
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
    let (config_reason, config_message) = match &obs.config_problem {
        Some(p) => (p.reason, p.message.clone()),
        None if !invalid.is_empty() => (
            reason::CONFIG_INVALID,
            format!(
                "{} of {} accounts cannot be used and are left out: {}",
                invalid.len(),
                obs.accounts.len(),
                invalid
                    .iter()
                    .map(|a| format!("{} ({})", a.name, a.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
        None => (
            reason::CONFIG_APPLIED,
            "the spec became the agent config".to_owned(),
        ),
    };
    st.set_condition(cond(
        condition_type::CONFIG_VALID,
        config_valid,
        config_reason,
        config_message.clone(),
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
    st.set_condition(cond(
        condition_type::ACCOUNTS_UNIQUE,
        unique,
        if unique {
            reason::ALL_ACCOUNTS_OWNED
        } else {
            reason::ACCOUNT_CONFLICT
        },
        unique_message.clone(),
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
    st.set_condition(cond(
        condition_type::AVAILABLE,
        available,
        avail_reason,
        avail_message,
    ));

    // Ready, Reconciling, Stalled
    let verdict = verdict(obs, &invalid, &conflicts, unique_message);
    if first_sight {
        st.set_condition(self::first_sight(generation, now.clone()));
    } else {
        st.set_condition(cond(
            condition_type::READY,
            verdict.ready,
            verdict.reason,
            verdict.message.clone(),
        ));
    }
    let (reconciling, reconciling_reason) = match verdict.progress {
        Progress::Done => (false, reason::RECONCILED),
        Progress::Stalled => (false, reason::STALLED_REASON),
        Progress::Working => (true, verdict.reason),
    };
    st.set_condition(cond(
        condition_type::RECONCILING,
        reconciling,
        reconciling_reason,
        verdict.message.clone(),
    ));
    let stalled = verdict.progress == Progress::Stalled;
    st.set_condition(cond(
        condition_type::STALLED,
        stalled,
        if stalled {
            verdict.stall_reason
        } else {
            reason::NOT_STALLED
        },
        if stalled {
            verdict.message
        } else {
            "nothing needs a person".to_owned()
        },
    ));
    sort_conditions(&mut st);
    st
}

/// Conditions in a stable order, so a reorder is never a change.
fn sort_conditions(st: &mut AgentShardStatus) {
    st.conditions.sort_by_key(|c| {
        condition_type::ALL
            .iter()
            .position(|t| *t == c.type_)
            .unwrap_or(usize::MAX)
    });
}

/// Where a shard stands on its way to Ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    /// Ready.
    Done,
    /// On its way by itself (Reconciling).
    Working,
    /// Only a person can move it (Stalled).
    Stalled,
}

struct Verdict {
    ready: bool,
    reason: &'static str,
    stall_reason: &'static str,
    message: String,
    progress: Progress,
}

/// The first thing that keeps the shard from Ready, what a person can act on first.
fn verdict(
    obs: &Observed,
    invalid: &[&AccountStatus],
    conflicts: &[&AccountStatus],
    unique_message: String,
) -> Verdict {
    let not_ready = |reason, stall_reason, message, progress| Verdict {
        ready: false,
        reason,
        stall_reason,
        message,
        progress,
    };
    let working = |reason, message| not_ready(reason, reason, message, Progress::Working);
    if let Some(p) = &obs.config_problem {
        return not_ready(
            reason::CONFIG_INVALID,
            p.reason,
            p.message.clone(),
            Progress::Stalled,
        );
    }
    if !invalid.is_empty() {
        return not_ready(
            reason::CONFIG_INVALID,
            reason::CONFIG_INVALID,
            format!(
                "accounts left out: {}",
                invalid
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Progress::Stalled,
        );
    }
    if conflicts
        .iter()
        .any(|a| a.reason != reason::OWNER_RELEASING)
    {
        return not_ready(
            reason::ACCOUNT_CONFLICT,
            reason::ACCOUNT_CONFLICT,
            unique_message,
            Progress::Stalled,
        );
    }
    let with = |state: AccountState| -> Vec<&AccountStatus> {
        obs.accounts.iter().filter(|a| a.state == state).collect()
    };
    let describe = |accounts: &[&AccountStatus]| {
        accounts
            .iter()
            .map(|a| format!("{}: {}", a.name, a.message))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let refused = with(AccountState::RefusedByHub);
    if !refused.is_empty() {
        return not_ready(
            reason::REFUSED_BY_HUB,
            reason::REFUSED_BY_HUB,
            format!("the hub refuses {}", describe(&refused)),
            Progress::Stalled,
        );
    }
    if !conflicts.is_empty() {
        return working(
            reason::OWNER_RELEASING,
            format!("waiting for a handoff: {unique_message}"),
        );
    }
    let states = [
        AccountState::ClusterUnreachable,
        AccountState::HubUnreachable,
        AccountState::NoReplica,
        AccountState::Syncing,
    ];
    for state in states {
        let accounts = with(state);
        if accounts.is_empty() {
            continue;
        }
        let why = match state {
            AccountState::ClusterUnreachable => reason::CLUSTER_UNREACHABLE,
            AccountState::HubUnreachable => reason::HUB_UNREACHABLE,
            AccountState::NoReplica => reason::NO_REPLICA,
            _ => reason::SYNCING,
        };
        let mut message = format!(
            "{} of {} accounts: {}",
            accounts.len(),
            obs.accounts.len(),
            describe(&accounts)
        );
        if state == AccountState::HubUnreachable || state == AccountState::NoReplica {
            for (replica, error) in &obs.replicas.disconnected {
                message.push_str(&format!(
                    "; replica {replica} is not connected to the hub: {error}"
                ));
            }
        }
        return working(why, message);
    }
    let rolled_out = obs
        .deployment
        .as_ref()
        .is_some_and(DeploymentView::rolled_out);
    if !rolled_out {
        let message = match &obs.deployment {
            Some(d) => format!(
                "agent Deployment: {} of {} replicas updated, {} available",
                d.updated, d.desired, d.available_replicas
            ),
            None => "the agent Deployment does not exist yet".to_owned(),
        };
        return working(reason::PROGRESSING, message);
    }
    let streaming = obs
        .accounts
        .iter()
        .filter(|a| a.state == AccountState::Active)
        .count();
    Verdict {
        ready: true,
        reason: reason::READY,
        stall_reason: reason::NOT_STALLED,
        message: format!(
            "{streaming} accounts streaming from {} agent replicas",
            obs.replicas.live
        ),
        progress: Progress::Done,
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

/// The Events a status change deserves, once per transition: one per account that newly
/// conflicts, becomes invalid, is refused by the hub, loses its cluster, or is acquired
/// after a conflict; one when the shard's config becomes unusable; one when accounts a
/// replica held lose it (not for a new shard whose agents are still starting); one when
/// the shard becomes Ready, and one when it is not because the hub cannot be reached.
/// Nothing when nothing changed, so no-op reconciles publish nothing.
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
        let was = |s: AccountState| prev.is_some_and(|p| p.state == s);
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
            AccountState::Invalid => out.push(Notice {
                warning: true,
                reason: invalid_reason(&a.reason),
                note: format!("account {}: {}", a.name, a.message),
            }),
            AccountState::RefusedByHub if !was(AccountState::RefusedByHub) => out.push(Notice {
                warning: true,
                reason: reason::REFUSED_BY_HUB,
                note: format!("account {}: {}", a.name, a.message),
            }),
            AccountState::ClusterUnreachable if !was(AccountState::ClusterUnreachable) => {
                out.push(Notice {
                    warning: true,
                    reason: reason::CLUSTER_UNREACHABLE,
                    note: format!("account {}: {}", a.name, a.message),
                })
            }
            s if s.served() && was(AccountState::Conflict) => out.push(Notice {
                warning: false,
                reason: reason::ACCOUNT_ACQUIRED,
                note: format!(
                    "account {} is now this shard's (its previous owner released it)",
                    a.name
                ),
            }),
            _ => {}
        }
    }
    let was_problem = old
        .and_then(|o| o.condition(condition_type::CONFIG_VALID))
        .map(|c| (c.status.clone(), c.message.clone()));
    if let Some(c) = new.condition(condition_type::CONFIG_VALID)
        && c.status == condition_status::FALSE
        && was_problem != Some((c.status.clone(), c.message.clone()))
        && new
            .accounts
            .iter()
            .all(|a| a.state != AccountState::Invalid)
    {
        out.push(Notice {
            warning: true,
            reason: config_reason(&c.reason),
            note: c.message.clone(),
        });
    }
    // Accounts a replica held before and none holds now.
    let orphaned: Vec<&str> = new
        .accounts
        .iter()
        .filter(|a| {
            a.state == AccountState::NoReplica
                && before(&a.name)
                    .is_some_and(|p| p.state.served() && p.state != AccountState::NoReplica)
        })
        .map(|a| a.name.as_str())
        .collect();
    if !orphaned.is_empty() {
        out.push(Notice {
            warning: true,
            reason: reason::NO_REPLICA,
            note: format!(
                "no live agent replica holds {} any more: {}",
                if orphaned.len() == 1 {
                    "this account"
                } else {
                    "these accounts"
                },
                orphaned.join(", ")
            ),
        });
    }
    let ready_before = old
        .and_then(|o| o.condition(condition_type::READY))
        .map(|c| (c.status.as_str(), c.reason.as_str()));
    if let Some(c) = new.condition(condition_type::READY)
        && ready_before != Some((c.status.as_str(), c.reason.as_str()))
    {
        let notice = |warning, reason| Notice {
            warning,
            reason,
            note: c.message.clone(),
        };
        match (c.status.as_str(), c.reason.as_str()) {
            (condition_status::TRUE, _) => out.push(notice(false, reason::READY)),
            (condition_status::FALSE, reason::HUB_UNREACHABLE) => {
                out.push(notice(true, reason::HUB_UNREACHABLE));
            }
            _ => {}
        }
    }
    for n in &mut out {
        n.note = bounded(&n.note, MAX_NOTE_BYTES);
    }
    out
}

fn invalid_reason(r: &str) -> &'static str {
    match r {
        reason::SECRET_NOT_FOUND => reason::SECRET_NOT_FOUND,
        reason::SECRET_KEY_NOT_FOUND => reason::SECRET_KEY_NOT_FOUND,
        reason::KUBECONFIG_REFUSED => reason::KUBECONFIG_REFUSED,
        _ => reason::KUBECONFIG_INVALID,
    }
}

/// ConfigValid's reason as an Event reason (one of the stable words).
fn config_reason(r: &str) -> &'static str {
    [
        reason::TLS_SECRET_NOT_FOUND,
        reason::TLS_SECRET_KEY_NOT_FOUND,
        reason::TLS_CERTIFICATE_WRONG_SHARD,
        reason::TLS_CERTIFICATE_INVALID,
        reason::AGENT_CA_INVALID,
        reason::NAMESPACE_NOT_OPENED,
        reason::IMAGE_NOT_ALLOWED,
        reason::SERVICE_ACCOUNT_NOT_ALLOWED,
    ]
    .into_iter()
    .find(|known| *known == r)
    .unwrap_or(reason::CONFIG_INVALID)
}

#[cfg(test)]
mod tests;
