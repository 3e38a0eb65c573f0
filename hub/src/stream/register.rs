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

use scale_agent_proto::v1::{self as pb, AccountResult, ResumePoint, hub_frame};
use tracing::{debug, info, warn};

use crate::core::answer::{Answer, Refusal};
use crate::core::cache::{Resume, Scope};
use crate::core::clip::clip;
use crate::core::ownership::{Ownership, OwnershipRx, Verdict};
use crate::core::registry::{
    Binding, Caller, Decision, Registration, Release, SessionId, ShardRef,
};
use crate::state::Core;
use crate::stream::session::Session;
use crate::stream::{register_shared, routing};

/// How long a Register waits for the first list of AgentShards before it is
/// answered UNAVAILABLE.
const OWNERSHIP_WAIT: Duration = Duration::from_secs(5);

/// The ownership rule as the registration asks it: may this shard stream
/// this account?
pub type OwnerRule = Box<dyn Fn(&str, &ShardRef) -> Verdict + Send + Sync>;

/// Whether, and how, ownership is checked for a Register.
pub enum Owners {
    /// Not checked against AgentShards (no `--authorize-shards`): the
    /// registry's first-claim rule alone decides (a name belongs to the shard
    /// that registered it first).
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

    /// May `shard` stream `account`? `Ok(true)` when the AgentShards say
    /// it owns it (it may then take the name from another shard), `Ok(false)`
    /// when ownership is not checked (the registry's first-claim rule
    /// decides), the refusal otherwise.
    pub fn check(&self, account: &str, shard: &ShardRef) -> Result<bool, Box<Refusal>> {
        match self {
            Owners::Unchecked => Ok(false),
            Owners::Unknown => Err(Box::new(Refusal::ownership_unknown())),
            Owners::Known(rule) => match rule(account, shard) {
                Verdict::Owner => Ok(true),
                Verdict::NotOwner { owner, message } => {
                    Err(Box::new(Refusal::not_owner(message, owner)))
                }
            },
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
    /// The older session of the same shard that held the account, with its
    /// replica: it is told SUPERSEDED.
    pub superseded: Option<(SessionId, String)>,
    /// The session of another shard that held the account until the
    /// AgentShards gave it to the caller's shard, with that shard: it is told
    /// NOT_OWNER.
    pub moved_from: Option<(SessionId, ShardRef)>,
}

/// How many accounts a session may hold, and a Register frame may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Accounts one session may hold.
    pub per_session: usize,
    /// Accounts one Register frame may carry.
    pub per_frame: usize,
}

impl Decided {
    /// `account` of cluster `cluster_id`, refused for `refusal`, with nothing
    /// else to do.
    pub fn refused(account: String, cluster_id: String, refusal: Refusal) -> Decided {
        Decided {
            account,
            cluster_id,
            answer: Answer::Refused(refusal),
            persist: None,
            superseded: None,
            moved_from: None,
        }
    }
}

fn resume_point(r: Resume) -> ResumePoint {
    ResumePoint {
        kind: Some(pb::GroupVersionKind {
            group: r.kind.group,
            version: r.version,
            kind: r.kind.kind,
        }),
        resource_version: r.resource_version,
        selection: r.selection,
    }
}

/// Decides a Register from `caller`, account by account in order, and
/// records the accepted ones in the registry and cache.
///
/// An account is refused when it is past the frame's or the session's limit,
/// when `owners` says the caller's shard may not stream it (the registry is
/// then not touched), or when the registry's binding rules refuse it. An
/// accepted account that was not already held by this session voids the
/// syncs its last holder left open (it died or was superseded mid-relist);
/// one the hub knew before is answered with the resume points of its cache.
pub fn decide(
    core: &mut Core,
    caller: &Caller,
    owners: &Owners,
    limits: Limits,
    accounts: Vec<pb::Account>,
    now: SystemTime,
) -> Vec<Decided> {
    let (accounts, excess) = split_frame(accounts, limits.per_frame);
    let mut held = core.registry.held_by(&caller.session).count();
    let mut decided: Vec<Decided> = accounts
        .into_iter()
        .map(|account| {
            let already = core.registry.holds(&account.name, &caller.session);
            if !already && held >= limits.per_session {
                let refusal = Refusal::over_limit(
                    "too_many_in_session",
                    format!(
                        "this session holds {held} accounts, the most one session may hold (--max-accounts-per-session)"
                    ),
                );
                return refused(account, refusal);
            }
            let decided = decide_one(core, caller, owners, account, now);
            if !already && matches!(decided.answer, Answer::Accepted(_)) {
                held += 1;
            }
            decided
        })
        .collect();
    decided.extend(excess);
    decided
}

/// Splits a Register's accounts into the first `per_frame`, to decide, and
/// the refusals of the rest. Needs no lock: [`register`] calls it before it
/// takes one, so a huge frame costs other sessions nothing.
pub fn split_frame(
    mut accounts: Vec<pb::Account>,
    per_frame: usize,
) -> (Vec<pb::Account>, Vec<Decided>) {
    if accounts.len() <= per_frame {
        return (accounts, Vec::new());
    }
    let total = accounts.len();
    let excess = accounts.split_off(per_frame);
    let message = format!(
        "this Register frame carries {total} accounts; the hub takes at most {per_frame} per frame (--max-accounts-per-frame): register the rest in later frames"
    );
    let refusals = excess
        .into_iter()
        .map(|account| {
            refused(
                account,
                Refusal::over_limit("too_many_in_frame", message.clone()),
            )
        })
        .collect();
    (accounts, refusals)
}

fn refused(account: pb::Account, refusal: Refusal) -> Decided {
    Decided {
        account: account.name,
        cluster_id: account.cluster_id,
        answer: Answer::Refused(refusal),
        persist: None,
        superseded: None,
        moved_from: None,
    }
}

fn decide_one(
    core: &mut Core,
    caller: &Caller,
    owners: &Owners,
    account: pb::Account,
    now: SystemTime,
) -> Decided {
    let admitted = owners
        .check(&account.name, &caller.shard)
        .and_then(|declared| admit(core, caller, &account, declared, now));
    match admitted {
        Ok((points, persist, displaced)) => {
            let (superseded, moved_from) = displaced;
            Decided {
                account: account.name,
                cluster_id: account.cluster_id,
                answer: Answer::Accepted(points),
                persist,
                superseded,
                moved_from,
            }
        }
        Err(refusal) => {
            let refusal = (*refusal).tell(
                caller,
                &account.cluster_id,
                core.registry.get(&account.name),
            );
            refused(account, refusal)
        }
    }
}

/// The sessions an accepted registration displaced: one of the same shard
/// (superseded), or one of another shard the AgentShards no longer give the
/// account to.
type Displaced = (Option<(SessionId, String)>, Option<(SessionId, ShardRef)>);

/// The registry's and the cache's part of [`decide`], for an account the
/// caller's shard may stream (`declared`: the AgentShards say it owns it).
fn admit(
    core: &mut Core,
    caller: &Caller,
    account: &pb::Account,
    declared: bool,
    now: SystemTime,
) -> Result<(Vec<ResumePoint>, Option<Binding>, Displaced), Box<Refusal>> {
    let held_before = core.registry.holds(&account.name, &caller.session);
    let registration = Registration {
        name: account.name.clone(),
        cluster_id: account.cluster_id.clone(),
        server_url: account.server_url.clone(),
        kubernetes_version: account.kubernetes_version.clone(),
    };
    match core.registry.register(caller, &registration, declared, now) {
        Decision::Accepted {
            superseded,
            moved_from,
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
            Ok((points, persist, (superseded, moved_from)))
        }
        Decision::Rejected {
            reason,
            message,
            owner,
        } => Err(Box::new(Refusal::from_registry(reason, message, owner))),
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

/// Lines of one RegisterResult frame at most: a Register refused in bulk
/// is answered in several frames, each far below the message size limit.
pub const RESULT_LINES_PER_FRAME: usize = 1_000;

/// Decisions of one Register logged one by one; the rest only in the
/// frame's summary line, so that no Register makes the log grow with its
/// size.
pub const DECISIONS_LOGGED: usize = 20;

/// Account names a summary line shows.
pub const NAMES_SHOWN: usize = 10;

/// Answers a Register on `session`, then carries out what [`decide`] said:
/// store writes, SUPERSEDED and NOT_OWNER notices to the sessions it
/// displaced, and operations that waited for an account's new holder. False
/// when the agent's side is gone.
pub async fn register(session: &Session, reg: pb::Register) -> bool {
    let shared = &session.shared;
    let owners = owners(shared.ownership.as_ref()).await;
    let caller = session.caller();
    let limits = Limits {
        per_session: shared.config.max_accounts_per_session,
        per_frame: shared.config.max_accounts_per_frame,
    };
    let (accounts, excess) = split_frame(reg.accounts, limits.per_frame);
    let mut decided = register_shared::decide(shared, &caller, accounts, |core, accounts| {
        decide(core, &caller, &owners, limits, accounts, SystemTime::now())
    })
    .await;
    decided.extend(excess);
    let accepted: Vec<String> = decided
        .iter()
        .filter(|d| matches!(d.answer, Answer::Accepted(_)))
        .map(|d| d.account.clone())
        .collect();
    let mut summary = Summary::default();
    let results: Vec<AccountResult> = decided
        .into_iter()
        .map(|d| carry_out(session, &caller, d, &mut summary))
        .collect();
    summary.log(session);
    shared
        .metrics
        .registrations_accepted
        .inc_by(accepted.len() as u64);
    let mut results = results.into_iter().peekable();
    while results.peek().is_some() {
        let accounts: Vec<AccountResult> = results.by_ref().take(RESULT_LINES_PER_FRAME).collect();
        let answer = pb::RegisterResult { accounts };
        if !session.send(hub_frame::Frame::RegisterResult(answer)).await {
            return false;
        }
    }
    routing::resend_orphans(session, &accepted).await
}

/// What one Register did, for its summary line: counts by outcome and the
/// first few names.
#[derive(Debug, Default)]
struct Summary {
    decisions: usize,
    accepted: usize,
    refused: std::collections::BTreeMap<&'static str, usize>,
    names: Vec<String>,
}

impl Summary {
    /// Counts a decision; true when it is still logged on its own.
    fn count(&mut self, d: &Decided) -> bool {
        self.decisions += 1;
        match &d.answer {
            Answer::Accepted(_) => self.accepted += 1,
            Answer::Refused(r) => *self.refused.entry(r.label).or_default() += 1,
        }
        if self.names.len() < NAMES_SHOWN {
            self.names.push(clip(&d.account).to_string());
        }
        self.decisions <= DECISIONS_LOGGED
    }

    /// One line for a Register too large to log account by account.
    fn log(&self, session: &Session) {
        if self.decisions <= DECISIONS_LOGGED {
            return;
        }
        warn!(
            identity = session.identity.label(),
            accounts = self.decisions,
            accepted = self.accepted,
            refused = ?self.refused,
            first = ?self.names,
            logged_one_by_one = DECISIONS_LOGGED,
            "a Register of many accounts; the ones past the first few are summed up here"
        );
    }
}

/// Logs (while `summary` allows) and counts one decision, writes its
/// binding, tells the session it displaced; the account's line of the
/// answer.
fn carry_out(
    session: &Session,
    caller: &Caller,
    d: Decided,
    summary: &mut Summary,
) -> AccountResult {
    let shared = &session.shared;
    let log = summary.count(&d);
    match &d.answer {
        Answer::Accepted(points) => {
            if log {
                info!(
                    account = %d.account,
                    cluster_id = %clip(&d.cluster_id),
                    resume_points = points.len(),
                    superseded = d.superseded.as_ref().map(|(s, _)| &**s),
                    "account accepted"
                );
            }
        }
        Answer::Refused(refusal) => {
            if log {
                warn!(account = %clip(&d.account), cluster_id = %clip(&d.cluster_id), identity = session.identity.label(),
                    reason = refusal.label, message = %clip(&refusal.message), "registration rejected");
            }
            shared.metrics.registration_rejected(refusal.label);
        }
    }
    if let Some(binding) = &d.persist {
        shared.persist(&d.account, binding);
    }
    if let Some((old_session, old_replica)) = &d.superseded {
        shared.metrics.registrations_superseded.inc();
        info!(account = %d.account, %old_session, old_replica = %clip(old_replica),
            "a newer session of the shard took the account over; telling the older one");
        let notice = Refusal::superseded(&d.account, caller).notice(d.account.clone());
        shared.send_detached(old_session, notice);
    }
    if let Some((old_session, old_shard)) = &d.moved_from {
        shared.metrics.registration_rejected("not_owner_revoked");
        warn!(account = %d.account, %old_session, %old_shard, new_shard = %caller.shard,
            "the AgentShards give the account to another shard; telling the session of the old one");
        let message = format!(
            "account {} is owned by AgentShard {}, not by {old_shard}; it streams there now",
            d.account, caller.shard
        );
        let notice =
            Refusal::revoked(message, Some(caller.shard.clone())).notice(d.account.clone());
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
    use crate::core::cache::{KindKey, SyncMode};
    use crate::core::registry::AccountState;
    use crate::core::registry::testing::{caller, shard};
    use scale_agent_proto::v1::RegisterReason;

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
        decide(core, who, owners, LIMITS, accounts, SystemTime::UNIX_EPOCH)
    }

    const LIMITS: Limits = Limits {
        per_session: 100,
        per_frame: 100,
    };

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

    /// "accepted", or the refusal's metric label, per account in order.
    fn answer_labels(decided: &[Decided]) -> Vec<&str> {
        decided
            .iter()
            .map(|d| match &d.answer {
                Answer::Accepted(_) => "accepted",
                Answer::Refused(r) => r.label,
            })
            .collect()
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
        cache.sync_start(&deployments(), "v1", SyncMode::FullRelist, "");
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
                "",
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
    fn without_agentshards_an_account_stays_with_the_shard_that_has_it() {
        let mut core = Core::default();
        let east = caller("s1", "east", "r1");
        register(&mut core, &east, &Owners::Unchecked, &[("prod-1", "uid-a")]);
        let west = caller("s2", "west", "w1");
        for cluster in ["uid-a", "uid-guess"] {
            let decided = register(&mut core, &west, &Owners::Unchecked, &[("prod-1", cluster)]);
            let r = refusal(&decided[0]);
            assert_eq!(r.reason, RegisterReason::NotOwner, "{cluster}: {r:?}");
            assert!(decided[0].superseded.is_none() && decided[0].moved_from.is_none());
            let owner = r.owner.as_ref().expect("the owner");
            assert_eq!(owner.shard.as_ref().map(|s| s.name.as_str()), Some("east"));
            assert_eq!(
                owner.replica_id, "r1",
                "the holder's replica is safe to say"
            );
            // The bound cluster id is said only to a caller that named it.
            let told = if cluster == "uid-a" { "uid-a" } else { "" };
            assert_eq!(owner.cluster_id, told);
            assert!(!r.message.contains("uid-a"), "{}", r.message);
        }
        assert!(core.registry.holds("prod-1", &east.session));
    }

    #[test]
    fn the_agentshards_owner_takes_the_account_and_the_old_session_is_displaced() {
        let mut core = Core::default();
        let west = caller("s1", "west", "w1");
        register(&mut core, &west, &Owners::Unchecked, &[("prod-1", "uid-a")]);
        let east = caller("s2", "east", "r1");
        let decided = register(&mut core, &east, &east_owns_prod(), &[("prod-1", "uid-a")]);
        assert!(matches!(decided[0].answer, Answer::Accepted(_)));
        assert_eq!(
            decided[0].superseded, None,
            "another shard never supersedes"
        );
        assert_eq!(
            decided[0].moved_from,
            Some((west.session.clone(), shard("west")))
        );
        assert!(core.registry.holds("prod-1", &east.session));
    }

    #[test]
    fn accounts_past_the_frame_or_session_limit_are_refused_saying_so() {
        let mut core = Core::default();
        let s1 = caller("s1", "east", "r1");
        let limits = Limits {
            per_session: 3,
            per_frame: 2,
        };
        let accounts = |names: &[&str]| -> Vec<pb::Account> {
            names
                .iter()
                .map(|n| pb::Account {
                    name: (*n).into(),
                    cluster_id: format!("uid-{n}"),
                    ..Default::default()
                })
                .collect()
        };
        let now = SystemTime::UNIX_EPOCH;
        let decided = decide(
            &mut core,
            &s1,
            &Owners::Unchecked,
            limits,
            accounts(&["a", "b", "c"]),
            now,
        );
        let labels = answer_labels(&decided);
        assert_eq!(labels, ["accepted", "accepted", "too_many_in_frame"]);
        assert!(refusal(&decided[2]).message.contains("at most 2 per frame"));
        let decided = decide(
            &mut core,
            &s1,
            &Owners::Unchecked,
            limits,
            accounts(&["a", "c", "d"]),
            now,
        );
        let labels = answer_labels(&decided);
        // "a" is held already (a refresh); "c" is the third; "d" is over.
        assert_eq!(labels, ["accepted", "accepted", "too_many_in_frame"]);
        let decided = decide(
            &mut core,
            &s1,
            &Owners::Unchecked,
            limits,
            accounts(&["d"]),
            now,
        );
        assert_eq!(refusal(&decided[0]).label, "too_many_in_session");
        assert!(refusal(&decided[0]).message.contains("holds 3 accounts"));
        assert_eq!(core.registry.counts(), (3, 0));
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
}
