//! Registration with a store several replicas share: the decision of
//! [`crate::stream::register::decide`], taken inside a claim transaction of the
//! shared store, so that two replicas can never both hold an account.
//!
//! For the accounts of a Register, in one transaction
//! ([`crate::store::PgStore::claim`]):
//! 1. the accounts are locked and their stored rows read, with the stored
//!    cache of every account this replica does not hold already;
//! 2. the store's word replaces this replica's for each account it does not
//!    hold at its current epoch ([`import`]): the binding, and the cache the
//!    last holder wrote behind (so the agent resumes there instead of
//!    relisting); a local session that still streamed such an account is
//!    told it lost it;
//! 3. the registry decides as it does for one hub;
//! 4. each accepted account is written with this replica as its holder and
//!    its epoch raised, and the claim is announced to the other replicas.
//!
//! When the store cannot be reached, or the transaction fails, nothing is
//! accepted: every account is answered UNAVAILABLE (the agent retries) and
//! what the registry had accepted is undone.

use std::time::SystemTime;

use scale_agent_proto::v1 as pb;
use tracing::{info, warn};

use crate::core::answer::{Answer, Refusal};
use crate::core::registry::{Caller, SessionId, validate_name};
use crate::replicas::Replicas;
use crate::state::{Core, Shared};
use crate::store::postgres::{ClaimView, ClaimWrite};
use crate::stream::register::Decided;

/// Decides a Register from `caller` with `decide` (the registry's decision
/// over the core), inside a claim of the shared store when there is one.
pub async fn decide(
    shared: &Shared,
    caller: &Caller,
    accounts: Vec<pb::Account>,
    registry_decides: impl FnOnce(&mut Core, Vec<pb::Account>) -> Vec<Decided>,
) -> Vec<Decided> {
    let Some(replicas) = shared.replicas.as_ref() else {
        let mut core = shared.core();
        return registry_decides(&mut core, accounts);
    };
    if let Err(why) = replicas.ready() {
        return refuse_all(shared, accounts, &why);
    }
    let me = replicas.id();
    let mut names: Vec<String> = accounts
        .iter()
        .map(|a| a.name.clone())
        .filter(|n| validate_name(n).is_ok())
        .collect();
    names.sort();
    names.dedup();
    let current = replicas.claims();
    let claimed = replicas
        .store()
        .claim(&me, &names, &current, replicas.timing().timeout, |view| {
            let mut core = shared.core();
            let lost = import(&mut core, replicas, &me, caller, view, &names);
            let decided = registry_decides(&mut core, accounts);
            let writes = writes(&core, caller, &decided);
            drop(core);
            tell_lost(shared, lost);
            (decided, writes)
        })
        .await;
    match claimed {
        Ok((decided, epochs)) => {
            replicas.record_claims(epochs);
            decided
        }
        Err(failed) => {
            shared.metrics.store_errors.inc();
            warn!(error = %failed.error, accounts = names.len(),
                "could not claim the accounts in the shared store; answering UNAVAILABLE");
            let why = failed.error.to_string();
            match failed.decided {
                Some(decided) => undo(shared, replicas, decided, &why),
                None => {
                    // Nothing was decided: refuse what the agent asked.
                    let names: Vec<pb::Account> = names
                        .into_iter()
                        .map(|name| pb::Account {
                            name,
                            ..Default::default()
                        })
                        .collect();
                    refuse_all(shared, names, &why)
                }
            }
        }
    }
}

/// Every account refused UNAVAILABLE because the shared store cannot be
/// used (`why`).
fn refuse_all(shared: &Shared, accounts: Vec<pb::Account>, why: &str) -> Vec<Decided> {
    accounts
        .into_iter()
        .map(|a| {
            shared.metrics.registration_rejected("store_unavailable");
            Decided::refused(a.name, a.cluster_id, Refusal::store_unavailable(why))
        })
        .collect()
}

/// Replaces this replica's knowledge of `names` with the store's where this
/// replica does not hold the account at its current epoch. Returns what to
/// tell the local sessions (other than `caller`'s) that streamed such an
/// account: another replica took it since, and `caller` takes it now.
fn import(
    core: &mut Core,
    replicas: &Replicas,
    me: &str,
    caller: &Caller,
    mut view: ClaimView,
    names: &[String],
) -> Vec<(SessionId, Refusal, String)> {
    let now = SystemTime::now();
    let mut claims = replicas.claims_lock();
    let mut lost = Vec::new();
    for name in names {
        let row = view.rows.remove(name);
        let current = row
            .as_ref()
            .is_some_and(|r| r.holder == me && claims.get(name) == Some(&r.epoch));
        if current {
            continue;
        }
        claims.remove(name);
        let displaced = core.registry.remove(name).and_then(|a| {
            let session = a.session.filter(|s| *s != caller.session)?;
            let refusal = if a.binding.shard == caller.shard {
                Refusal::superseded(name, caller)
            } else {
                Refusal::revoked(
                    format!("account {name} is held by another hub replica now"),
                    None,
                )
            };
            Some((session, refusal))
        });
        core.cache.remove(name);
        if let Some(row) = row {
            core.registry.load(vec![(name.clone(), row.binding)], now);
            if let Some(cache) = view.caches.remove(name) {
                if cache.unreadable > 0 {
                    warn!(account = %name, objects = cache.unreadable,
                        "stored objects of the account do not parse; their kinds will be relisted");
                }
                info!(account = %name, objects = cache.objects.len(), resume_points = cache.resume.len(),
                    from = %row.holder, "taking the account's cache over from the shared store");
                core.cache.restore(name, cache.objects, cache.resume);
            }
        }
        if let Some((session, refusal)) = displaced {
            lost.push((session, refusal, name.clone()));
        }
    }
    lost
}

/// The rows to write for the accounts `decided` accepted.
fn writes(core: &Core, caller: &Caller, decided: &[Decided]) -> Vec<ClaimWrite> {
    decided
        .iter()
        .filter(|d| matches!(d.answer, Answer::Accepted(_)))
        .filter_map(|d| {
            let account = core.registry.get(&d.account)?;
            Some(ClaimWrite {
                name: d.account.clone(),
                binding: account.binding.clone(),
                session: caller.session.to_string(),
                agent_replica: caller.replica.clone(),
                kubernetes_version: account.kubernetes_version.clone(),
            })
        })
        .collect()
}

/// Tells each local session of `lost` that it does not stream the account
/// any more.
fn tell_lost(shared: &Shared, lost: Vec<(SessionId, Refusal, String)>) {
    for (session, refusal, account) in lost {
        info!(%account, %session, "another hub replica held the account since; telling the session that streamed it here");
        shared.send_detached(&session, refusal.notice(account));
    }
}

/// The claim did not commit: the accounts `decided` accepted are not held
/// here after all (their local copies go; the store keeps the last holder's),
/// and each is answered UNAVAILABLE.
fn undo(shared: &Shared, replicas: &Replicas, decided: Vec<Decided>, why: &str) -> Vec<Decided> {
    let mut core = shared.core();
    let mut claims = replicas.claims_lock();
    decided
        .into_iter()
        .map(|d| {
            if !matches!(d.answer, Answer::Accepted(_)) {
                return d;
            }
            claims.remove(&d.account);
            core.registry.remove(&d.account);
            core.cache.remove(&d.account);
            shared.metrics.registration_rejected("store_unavailable");
            Decided {
                answer: Answer::Refused(Refusal::store_unavailable(why)),
                persist: None,
                superseded: None,
                moved_from: None,
                ..d
            }
        })
        .collect()
}
