//! Account registration: what the hub answers a Register, and what an
//! Unregister does.
//!
//! [`decide`] is the whole decision for a Register, over plain data: the
//! ownership rule (when enforced), the registry's binding rules and the
//! cache's resume points. It changes the registry and the cache in memory and
//! returns, per account, what the agent is told and what else must happen.
//! [`register`] is the I/O around it: it waits for the ownership index, locks,
//! decides, then writes the store, tells a superseded session, answers, and
//! resends operations that were waiting for the account.
//!
//! Every account line of a RegisterResult the hub sends — in answer, or
//! unsolicited when a session is superseded or its shard loses the account —
//! is built by [`Answer::result`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use scale_agent_proto::v1::{
    self as pb, AccountOwner, AccountResult, HubFrame, RegisterReason, ResumePoint, ShardRef,
    hub_frame,
};
use tracing::{debug, info, warn};

use crate::cache::{Resume, Scope};
use crate::clip::clip;
use crate::ownership::{Ownership, OwnershipRx, Verdict};
use crate::registry::{
    Binding, Caller, Decision, Registration, RejectReason, Release, SessionId, ShardKey,
};
use crate::routing;
use crate::session::{Session, frame};
use crate::state::Core;

/// How long a Register waits for the first list of AgentShards before it is
/// answered UNAVAILABLE.
const OWNERSHIP_WAIT: Duration = Duration::from_secs(5);

/// The ownership rule as the registration asks it: may this shard stream
/// this account?
pub type OwnerRule = Box<dyn Fn(&str, &ShardKey) -> Verdict + Send + Sync>;

/// Whether, and how, ownership is checked for a Register.
pub enum Owners {
    /// Not enforced (no `--authorize-shards`): any shard may register any
    /// account.
    Unchecked,
    /// Enforced, but the AgentShards are not listed yet, so nobody can be
    /// told they own an account.
    Unknown,
    /// Enforced, by this rule.
    Known(OwnerRule),
}

impl Owners {
    /// Enforced by `index` (the watched AgentShards).
    pub fn from_index(index: Arc<Ownership>) -> Owners {
        Owners::Known(Box::new(move |account, shard| index.check(account, shard)))
    }

    /// The refusal of `account` for `shard`; `None` when it may stream it.
    pub fn refusal(&self, account: &str, shard: &ShardKey) -> Option<Refusal> {
        match self {
            Owners::Unchecked => None,
            Owners::Unknown => Some(Refusal::ownership_unknown()),
            Owners::Known(rule) => match rule(account, shard) {
                Verdict::Owner => None,
                Verdict::NotOwner { owner, message } => Some(Refusal::not_owner(message, owner)),
            },
        }
    }
}

/// Why an account is not (or no longer) streamed on a session, as the agent
/// is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The reason code the agent acts on.
    pub reason: RegisterReason,
    /// A stable word for logs and the `registrations_rejected_total` metric.
    pub label: &'static str,
    /// A sentence for the agent's logs and the shard's status.
    pub message: String,
    /// Who has the account instead, when known.
    pub owner: Option<AccountOwner>,
}

fn account_owner(shard: &ShardKey, cluster_id: String, replica_id: String) -> AccountOwner {
    AccountOwner {
        shard: Some(ShardRef {
            namespace: shard.namespace.clone(),
            name: shard.name.clone(),
        }),
        cluster_id,
        replica_id,
    }
}

impl Refusal {
    /// The shard does not own the account; `owner` is the one that does.
    pub fn not_owner(message: String, owner: Option<ShardKey>) -> Refusal {
        Refusal {
            reason: RegisterReason::NotOwner,
            label: "not_owner",
            message,
            owner: owner.map(|shard| account_owner(&shard, String::new(), String::new())),
        }
    }

    /// The shard owned the account but no longer does (the AgentShards
    /// changed while it streamed).
    pub fn revoked(message: String, owner: Option<ShardKey>) -> Refusal {
        Refusal {
            label: "not_owner_revoked",
            ..Refusal::not_owner(message, owner)
        }
    }

    /// Ownership is enforced but not known yet; the agent retries.
    pub fn ownership_unknown() -> Refusal {
        Refusal {
            reason: RegisterReason::Unavailable,
            label: "ownership_unavailable",
            message: "the hub has not loaded the AgentShards yet, so it cannot tell who owns this account; retry shortly".to_owned(),
            owner: None,
        }
    }

    /// A newer session (`by`) took the account over.
    pub fn superseded(account: &str, by: &Caller) -> Refusal {
        Refusal {
            reason: RegisterReason::Superseded,
            label: "superseded",
            message: format!(
                "account {account} is now streamed by replica {} (session {}) of shard {}",
                by.replica, by.session, by.shard
            ),
            owner: Some(account_owner(&by.shard, String::new(), by.replica.clone())),
        }
    }

    /// The registry refused the registration; `owner` is the binding in the
    /// way, if any.
    fn from_registry(reason: RejectReason, message: String, owner: Option<Binding>) -> Refusal {
        Refusal {
            reason: match reason {
                RejectReason::Invalid => RegisterReason::Invalid,
                RejectReason::ClusterMismatch => RegisterReason::ClusterMismatch,
            },
            label: reason.label(),
            message,
            owner: owner.map(|b| account_owner(&b.shard, b.cluster_id, String::new())),
        }
    }

    /// An unsolicited RegisterResult telling a session it lost `account`.
    pub fn notice(self, account: String) -> HubFrame {
        frame(hub_frame::Frame::RegisterResult(pb::RegisterResult {
            accounts: vec![Answer::Refused(self).result(account)],
        }))
    }
}

/// What the agent is told about one account.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Stream it; resume each kind's watch from these points (none for an
    /// account new to the hub).
    Accepted(Vec<ResumePoint>),
    /// Do not.
    Refused(Refusal),
}

impl Answer {
    /// The account's line in a RegisterResult: built here only, so that
    /// `accepted` is true exactly when the reason is OK.
    pub fn result(self, name: String) -> AccountResult {
        let (reason, message, owner, resume_points) = match self {
            Answer::Accepted(points) => (RegisterReason::Ok, String::new(), None, points),
            Answer::Refused(r) => (r.reason, r.message, r.owner, Vec::new()),
        };
        AccountResult {
            name,
            accepted: reason == RegisterReason::Ok,
            reason: reason as i32,
            message,
            owner,
            resume_points,
        }
    }
}

/// The decision on one account of a Register.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// The account name.
    pub account: String,
    /// The cluster the agent registered it from.
    pub cluster_id: String,
    /// What the agent is told.
    pub answer: Answer,
    /// The binding to write to the store (new or changed).
    pub persist: Option<Binding>,
    /// The older session that held the account, with its replica: it is
    /// told SUPERSEDED.
    pub superseded: Option<(SessionId, String)>,
}

fn resume_point(r: Resume) -> ResumePoint {
    ResumePoint {
        kind: Some(pb::GroupVersionKind {
            group: r.kind.group,
            version: r.version,
            kind: r.kind.kind,
        }),
        resource_version: r.resource_version,
    }
}

/// Decides a Register from `caller`, account by account in order, and
/// records the accepted ones in the registry and cache.
///
/// An account is refused when `owners` says the caller's shard may not
/// stream it (the registry is then not touched), or when the registry's
/// binding rules refuse it. An accepted account that was not already held by
/// this session voids the syncs its last holder left open (it died or was
/// superseded mid-relist); one the hub knew before is answered with the
/// resume points of its cache.
pub fn decide(
    core: &mut Core,
    caller: &Caller,
    owners: &Owners,
    accounts: Vec<pb::Account>,
    now: SystemTime,
) -> Vec<Decided> {
    accounts
        .into_iter()
        .map(|account| decide_one(core, caller, owners, account, now))
        .collect()
}

fn decide_one(
    core: &mut Core,
    caller: &Caller,
    owners: &Owners,
    account: pb::Account,
    now: SystemTime,
) -> Decided {
    let (answer, persist, superseded) = match owners.refusal(&account.name, &caller.shard) {
        Some(refusal) => (Answer::Refused(refusal), None, None),
        None => admit(core, caller, &account, now),
    };
    Decided {
        account: account.name,
        cluster_id: account.cluster_id,
        answer,
        persist,
        superseded,
    }
}

/// The registry's and the cache's part of [`decide`], for an account the
/// caller's shard may stream.
fn admit(
    core: &mut Core,
    caller: &Caller,
    account: &pb::Account,
    now: SystemTime,
) -> (Answer, Option<Binding>, Option<(SessionId, String)>) {
    let held_before = core.registry.holds(&account.name, &caller.session);
    let registration = Registration {
        name: account.name.clone(),
        cluster_id: account.cluster_id.clone(),
        server_url: account.server_url.clone(),
        kubernetes_version: account.kubernetes_version.clone(),
    };
    match core.registry.register(caller, &registration, now) {
        Decision::Accepted {
            superseded,
            persist,
            fresh,
        } => {
            let cache = core.cache.account_mut(&account.name);
            if !held_before {
                cache.abandon_open_syncs();
            }
            cache.registered(account.scope.as_ref().map(|s| Scope {
                namespaces: s.namespaces.clone(),
                omit_namespaces: s.omit_namespaces.clone(),
                label_selector: s.label_selector.clone(),
            }));
            let points = if fresh {
                Vec::new()
            } else {
                cache
                    .resume_points()
                    .into_iter()
                    .map(resume_point)
                    .collect()
            };
            (Answer::Accepted(points), persist, superseded)
        }
        Decision::Rejected {
            reason,
            message,
            owner,
        } => (
            Answer::Refused(Refusal::from_registry(reason, message, owner)),
            None,
            None,
        ),
    }
}

/// The ownership index, waiting a little for the first list; `None` when it
/// is still not there.
async fn ownership_snapshot(mut rx: OwnershipRx) -> Option<Arc<Ownership>> {
    if let Some(o) = rx.borrow().clone() {
        return Some(o);
    }
    match tokio::time::timeout(OWNERSHIP_WAIT, rx.wait_for(Option::is_some)).await {
        Ok(Ok(o)) => o.clone(),
        _ => None,
    }
}

/// How ownership is checked for a Register on this hub right now.
async fn owners(ownership: Option<&OwnershipRx>) -> Owners {
    let Some(rx) = ownership else {
        return Owners::Unchecked;
    };
    match ownership_snapshot(rx.clone()).await {
        Some(index) => Owners::from_index(index),
        None => Owners::Unknown,
    }
}

/// Answers a Register on `session`, then carries out what [`decide`] said:
/// store writes, SUPERSEDED notices to older sessions, and operations that
/// waited for an account's new holder. False when the agent's side is gone.
pub async fn register(session: &Session, reg: pb::Register) -> bool {
    let shared = &session.shared;
    let owners = owners(shared.ownership.as_ref()).await;
    let caller = session.caller();
    let decided = {
        let mut core = shared.core();
        decide(&mut core, &caller, &owners, reg.accounts, SystemTime::now())
    };
    let accepted: Vec<String> = decided
        .iter()
        .filter(|d| matches!(d.answer, Answer::Accepted(_)))
        .map(|d| d.account.clone())
        .collect();
    let results = decided
        .into_iter()
        .map(|d| carry_out(session, &caller, d))
        .collect();
    shared
        .metrics
        .registrations_accepted
        .inc_by(accepted.len() as u64);
    let answer = pb::RegisterResult { accounts: results };
    if !session.send(hub_frame::Frame::RegisterResult(answer)).await {
        return false;
    }
    routing::resend_orphans(session, &accepted).await
}

/// Logs and counts one decision, writes its binding, tells the session it
/// supersedes; the account's line of the answer.
fn carry_out(session: &Session, caller: &Caller, d: Decided) -> AccountResult {
    let shared = &session.shared;
    match &d.answer {
        Answer::Accepted(points) => info!(
            account = %d.account,
            cluster_id = %clip(&d.cluster_id),
            resume_points = points.len(),
            superseded = d.superseded.as_ref().map(|(s, _)| &**s),
            "account accepted"
        ),
        Answer::Refused(refusal) => {
            warn!(account = %clip(&d.account), cluster_id = %clip(&d.cluster_id), identity = session.identity.label(),
                reason = refusal.label, message = %clip(&refusal.message), "registration rejected");
            shared.metrics.registration_rejected(refusal.label);
        }
    }
    if let Some(binding) = &d.persist {
        shared.persist(&d.account, binding);
    }
    if let Some((old_session, old_replica)) = &d.superseded {
        shared.metrics.registrations_superseded.inc();
        info!(account = %d.account, %old_session, old_replica = %clip(old_replica),
            "a newer session took the account over; telling the older one");
        let notice = Refusal::superseded(&d.account, caller).notice(d.account.clone());
        shared.send_detached(old_session, notice);
    }
    d.answer.result(d.account)
}

/// Carries out an Unregister on `session`: reason REMOVED drops each held
/// account with its cache and binding at once; any other reason leaves it
/// Disconnected for the grace period. Accounts the session does not hold
/// are ignored.
pub fn unregister(session: &Session, unreg: &pb::Unregister) {
    let shared = &session.shared;
    let reason = pb::UnregisterReason::try_from(unreg.reason).unwrap_or_default();
    let remove = reason == pb::UnregisterReason::Removed;
    let now = SystemTime::now();
    let mut expiries = Vec::new();
    for name in &unreg.account_names {
        let (release, objects) = {
            let mut core = shared.core();
            let release = core.registry.unregister(&session.id, name, remove, now);
            let objects = if release == Release::Removed {
                core.cache.remove(name)
            } else {
                0
            };
            (release, objects)
        };
        match release {
            Release::NotHeld => {
                debug!(account = %clip(name), "unregister of an account this session does not hold; ignored");
            }
            Release::Removed => {
                info!(account = %name, objects, message = %clip(&unreg.message), "account removed by its agent");
                shared.forget(name, "unregistered");
            }
            Release::Disconnected(epoch) => {
                info!(account = %name, reason = reason.as_str_name(), message = %clip(&unreg.message), "account unregistered; Disconnected for the grace period");
                expiries.push((name.clone(), epoch));
            }
        }
    }
    shared.schedule_expiry(expiries);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{KindKey, SyncMode};
    use crate::registry::AccountState;
    use crate::registry::testing::{caller, shard};

    /// [`decide`] on accounts `(name, cluster)` registered by `who`.
    fn register(
        core: &mut Core,
        who: &Caller,
        owners: &Owners,
        accounts: &[(&str, &str)],
    ) -> Vec<Decided> {
        let accounts = accounts
            .iter()
            .map(|(name, cluster)| pb::Account {
                name: (*name).into(),
                cluster_id: (*cluster).into(),
                server_url: format!("https://{cluster}:6443"),
                kubernetes_version: "v1.36.0".into(),
                ..Default::default()
            })
            .collect();
        decide(core, who, owners, accounts, SystemTime::UNIX_EPOCH)
    }

    /// Shard `east` owns `prod-*`; nobody owns anything else.
    fn east_owns_prod() -> Owners {
        Owners::Known(Box::new(|account, who| {
            if !account.starts_with("prod-") {
                Verdict::NotOwner {
                    owner: None,
                    message: format!("no AgentShard lists account {account}"),
                }
            } else if who.name == "east" {
                Verdict::Owner
            } else {
                Verdict::NotOwner {
                    owner: Some(shard("east")),
                    message: format!("account {account} is owned by AgentShard spinnaker/east"),
                }
            }
        }))
    }

    fn deployments() -> KindKey {
        KindKey {
            group: "apps".into(),
            kind: "Deployment".into(),
        }
    }

    fn refusal(d: &Decided) -> &Refusal {
        match &d.answer {
            Answer::Refused(r) => r,
            Answer::Accepted(_) => panic!("{} was accepted", d.account),
        }
    }

    #[test]
    fn a_new_account_is_bound_persisted_and_gets_no_resume_points() {
        let mut core = Core::default();
        let s1 = caller("s1", "east", "r1");
        let decided = register(&mut core, &s1, &Owners::Unchecked, &[("prod-1", "uid-a")]);
        assert_eq!(decided.len(), 1);
        assert_eq!(decided[0].answer, Answer::Accepted(Vec::new()));
        assert_eq!(
            decided[0].persist.as_ref().map(|b| b.cluster_id.as_str()),
            Some("uid-a")
        );
        assert_eq!(decided[0].superseded, None);
        assert!(core.registry.holds("prod-1", &s1.session));
    }

    #[test]
    fn a_returning_account_resumes_from_the_cache_and_supersedes_its_holder() {
        let mut core = Core::default();
        let s1 = caller("s1", "east", "r1");
        register(&mut core, &s1, &Owners::Unchecked, &[("prod-1", "uid-a")]);
        let cache = core.cache.account_mut("prod-1");
        cache.sync_start(&deployments(), "v1", SyncMode::FullRelist);
        cache.sync_end(&deployments(), "v1", "1234", 0);

        let s2 = caller("s2", "east", "r2");
        let decided = register(&mut core, &s2, &Owners::Unchecked, &[("prod-1", "uid-a")]);
        let Answer::Accepted(points) = &decided[0].answer else {
            panic!("refused: {:?}", decided[0]);
        };
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].resource_version, "1234");
        let kind = points[0].kind.as_ref().expect("a kind");
        assert_eq!(
            (
                kind.group.as_str(),
                kind.version.as_str(),
                kind.kind.as_str()
            ),
            ("apps", "v1", "Deployment")
        );
        assert_eq!(decided[0].superseded, Some((s1.session, "r1".to_owned())));
        assert_eq!(decided[0].persist, None, "the binding did not change");
    }

    #[test]
    fn syncs_left_open_by_the_last_holder_are_void_but_a_refresh_keeps_its_own() {
        let mut core = Core::default();
        let s1 = caller("s1", "east", "r1");
        let prod = [("prod-1", "uid-a")];
        register(&mut core, &s1, &Owners::Unchecked, &prod);
        let open_sync = |core: &mut Core| {
            core.cache.account_mut("prod-1").sync_start(
                &deployments(),
                "v1",
                SyncMode::ResumedWatch,
            );
        };
        let end_sync = |core: &mut Core| {
            core.cache
                .account_mut("prod-1")
                .sync_end(&deployments(), "v1", "5", 0)
        };
        open_sync(&mut core);
        // The same session registering again keeps its open sync.
        register(&mut core, &s1, &Owners::Unchecked, &prod);
        assert!(
            !end_sync(&mut core).unmatched,
            "a refresh must not void the session's own sync"
        );
        open_sync(&mut core);
        // Another session taking over voids it.
        register(
            &mut core,
            &caller("s2", "east", "r2"),
            &Owners::Unchecked,
            &prod,
        );
        assert!(
            end_sync(&mut core).unmatched,
            "the old holder's open sync must be void"
        );
    }

    #[test]
    fn refusals_name_who_has_the_account_and_leave_the_registry_alone() {
        let mut core = Core::default();
        let s1 = caller("s1", "east", "r1");
        register(&mut core, &s1, &Owners::Unchecked, &[("prod-1", "uid-a")]);
        let owners = east_owns_prod();
        let west = caller("s2", "west", "w1");
        let decided = register(
            &mut core,
            &west,
            &owners,
            &[("prod-1", "uid-a"), ("lab", "uid-l")],
        );
        let not_owner = refusal(&decided[0]);
        assert_eq!(not_owner.reason, RegisterReason::NotOwner);
        assert_eq!(not_owner.label, "not_owner");
        let owner = not_owner.owner.as_ref().and_then(|o| o.shard.as_ref());
        assert_eq!(owner.map(|s| s.name.as_str()), Some("east"));
        let unlisted = refusal(&decided[1]);
        assert_eq!(unlisted.reason, RegisterReason::NotOwner);
        assert_eq!(unlisted.owner, None);
        assert!(
            core.registry.holds("prod-1", &s1.session),
            "the holder keeps it"
        );
        assert!(
            core.registry.get("lab").is_none(),
            "a refused account is not recorded"
        );

        // The owner's shard, from another cluster: the binding refuses it.
        let east = caller("s3", "east", "r3");
        let decided = register(&mut core, &east, &owners, &[("prod-1", "uid-other")]);
        let mismatch = refusal(&decided[0]);
        assert_eq!(mismatch.reason, RegisterReason::ClusterMismatch);
        assert_eq!(mismatch.label, "cluster_mismatch");
        let owner = mismatch.owner.as_ref().expect("the binding in the way");
        assert_eq!(owner.cluster_id, "uid-a");
        assert_eq!(owner.shard.as_ref().map(|s| s.name.as_str()), Some("east"));
        assert!(core.registry.holds("prod-1", &s1.session));
    }

    #[test]
    fn unknown_ownership_refuses_everything_for_a_retry() {
        let mut core = Core::default();
        let s1 = caller("s1", "east", "r1");
        let decided = register(&mut core, &s1, &Owners::Unknown, &[("prod-1", "uid-a")]);
        let r = refusal(&decided[0]);
        assert_eq!(r.reason, RegisterReason::Unavailable);
        assert_eq!(r.label, "ownership_unavailable");
        assert_eq!(core.registry.counts(), (0, 0));
    }

    #[test]
    fn answers_keep_the_order_of_the_register() {
        let mut core = Core::default();
        let s1 = caller("s1", "east", "r1");
        let accounts = [
            ("prod-2", "uid-b"),
            ("", "uid-x"),
            ("lab", "uid-l"),
            ("prod-1", "uid-a"),
            ("prod-bad/name", "uid-c"),
        ];
        let decided = register(&mut core, &s1, &east_owns_prod(), &accounts);
        let names: Vec<&str> = decided.iter().map(|d| d.account.as_str()).collect();
        assert_eq!(names, ["prod-2", "", "lab", "prod-1", "prod-bad/name"]);
        let accepted: Vec<bool> = decided
            .iter()
            .map(|d| matches!(d.answer, Answer::Accepted(_)))
            .collect();
        assert_eq!(accepted, [true, false, false, true, false]);
        assert_eq!(refusal(&decided[1]).reason, RegisterReason::NotOwner);
        assert_eq!(refusal(&decided[4]).reason, RegisterReason::Invalid);
        assert_eq!(
            core.registry.get("prod-2").map(|a| a.state()),
            Some(AccountState::Connected)
        );
    }

    #[test]
    fn a_result_is_accepted_exactly_when_its_reason_is_ok() {
        let accepted = Answer::Accepted(Vec::new()).result("a".into());
        assert!(accepted.accepted);
        assert_eq!(accepted.reason, RegisterReason::Ok as i32);
        let refusals = [
            Refusal::not_owner("theirs".into(), Some(shard("east"))),
            Refusal::revoked("no longer yours".into(), None),
            Refusal::ownership_unknown(),
            Refusal::superseded("a", &caller("s2", "east", "r2")),
            Refusal::from_registry(RejectReason::Invalid, "bad name".into(), None),
            Refusal::from_registry(RejectReason::ClusterMismatch, "bound".into(), None),
        ];
        for refusal in refusals {
            let reason = refusal.reason;
            let result = Answer::Refused(refusal).result("a".into());
            assert!(!result.accepted, "{reason:?} must not read as accepted");
            assert_eq!(result.reason, reason as i32);
            assert!(result.resume_points.is_empty());
        }
    }

    #[test]
    fn a_superseded_session_is_told_who_took_the_account() {
        let superseded = Refusal::superseded("a", &caller("s2", "east", "r2"));
        assert!(
            superseded.message.contains("replica r2") && superseded.message.contains("session s2"),
            "{}",
            superseded.message
        );
        let HubFrame {
            frame: Some(hub_frame::Frame::RegisterResult(notice)),
        } = superseded.notice("a".into())
        else {
            panic!("a RegisterResult");
        };
        assert_eq!(notice.accounts.len(), 1);
        let line = &notice.accounts[0];
        assert_eq!(line.reason, RegisterReason::Superseded as i32);
        let owner = line.owner.as_ref().expect("the new holder");
        assert_eq!(owner.replica_id, "r2");
        assert_eq!(owner.shard.as_ref().map(|s| s.name.as_str()), Some("east"));
        let revoked = Refusal::revoked("gone".into(), None);
        assert_eq!(
            (revoked.reason, revoked.label),
            (RegisterReason::NotOwner, "not_owner_revoked")
        );
    }
}
