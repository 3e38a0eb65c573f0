//! Revocation: when the AgentShards change, an account held by a session
//! whose shard no longer owns it (the AgentShard dropped it, or another shard
//! took it) is released from that session — Disconnected, so the owner's
//! agent can take it over, or it is removed after the grace period — and the
//! session is told with an unsolicited RegisterResult NOT_OWNER.
//!
//! [`revoke`] decides and releases, over the registry alone;
//! [`revoke_on_ownership_change`] follows the ownership index and carries the
//! decisions out.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::warn;

use crate::core::answer::Refusal;
use crate::core::ownership::{OwnershipRx, Verdict};
use crate::core::registry::{Registry, Release, SessionId, ShardRef};
use crate::state::Shared;
use crate::stream::register::DECISIONS_LOGGED;

/// One account taken from a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Revoked {
    /// The account.
    pub account: String,
    /// The session that held it.
    pub session: SessionId,
    /// That session's shard.
    pub shard: ShardRef,
    /// The epoch of its disconnection, for the grace period's expiry.
    pub epoch: u64,
    /// What the session is told.
    pub refusal: Refusal,
}

/// Releases every held account whose holder's shard the ownership rule
/// (`check`) no longer allows to stream it. `shard_of` names the shard of a
/// live session; accounts of sessions it does not know are left alone (their
/// session is ending, which disconnects them anyway).
pub fn revoke(
    registry: &mut Registry,
    check: impl Fn(&str, &ShardRef) -> Verdict,
    shard_of: impl Fn(&SessionId) -> Option<ShardRef>,
    now: SystemTime,
) -> Vec<Revoked> {
    let held: Vec<(String, SessionId)> = registry
        .accounts()
        .filter_map(|a| a.session.clone().map(|s| (a.name.clone(), s)))
        .collect();
    let mut revoked = Vec::new();
    for (account, session) in held {
        let Some(shard) = shard_of(&session) else {
            continue;
        };
        let Verdict::NotOwner { owner, message } = check(&account, &shard) else {
            continue;
        };
        if let Release::Disconnected(epoch) = registry.unregister(&session, &account, false, now) {
            revoked.push(Revoked {
                account,
                session,
                shard,
                epoch,
                refusal: Refusal::revoked(message, owner),
            });
        }
    }
    revoked
}

/// Follows ownership changes until the hub shuts down, revoking what a
/// session's shard no longer owns (see the module documentation).
pub fn revoke_on_ownership_change(shared: Arc<Shared>, mut rx: OwnershipRx) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = shared.shutdown.cancelled() => return,
            }
            let Some(ownership) = rx.borrow_and_update().clone() else {
                continue;
            };
            let revoked = revoke(
                &mut shared.core().registry,
                |account, shard| ownership.check(account, shard),
                |session| shared.session(session).map(|h| h.shard),
                SystemTime::now(),
            );
            let mut expiries = Vec::with_capacity(revoked.len());
            let count = revoked.len();
            for (i, r) in revoked.into_iter().enumerate() {
                if i < DECISIONS_LOGGED {
                    warn!(account = %r.account, shard = %r.shard, session = %r.session, message = %r.refusal.message,
                        "the shard no longer owns the account; revoked from its session");
                } else if i == DECISIONS_LOGGED {
                    warn!(
                        revoked = count,
                        not_logged = count - DECISIONS_LOGGED,
                        "more accounts revoked than are logged one by one"
                    );
                }
                shared.metrics.registration_rejected(r.refusal.label);
                shared.send_detached(&r.session, r.refusal.notice(r.account.clone()));
                expiries.push((r.account, r.epoch));
            }
            shared.schedule_expiry(expiries);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::registry::testing::{caller, registration, shard};
    use scale_agent_proto::v1::RegisterReason;

    fn register(registry: &mut Registry, session: &str, shard_name: &str, account: &str) {
        let who = caller(session, shard_name, &format!("{shard_name}-0"));
        let reg = registration(account, &format!("uid-{account}"));
        registry.register(&who, &reg, false, SystemTime::UNIX_EPOCH);
    }

    /// `west` now owns `moved`; `east` keeps `kept`; nobody lists `dropped`.
    fn rule(account: &str, who: &ShardRef) -> Verdict {
        let owner = match account {
            "moved" => Some(shard("west")),
            "kept" => Some(shard("east")),
            _ => None,
        };
        match owner {
            Some(owner) if owner == *who => Verdict::Owner,
            owner => Verdict::NotOwner {
                message: format!("account {account} is not {who}'s"),
                owner,
            },
        }
    }

    fn live(session: &SessionId) -> Option<ShardRef> {
        (&**session != "gone").then(|| shard("east"))
    }

    #[test]
    fn accounts_a_shard_lost_are_released_and_their_session_told_who_owns_them() {
        let mut registry = Registry::new();
        for account in ["moved", "kept", "dropped"] {
            register(&mut registry, "s1", "east", account);
        }
        let revoked = revoke(&mut registry, rule, live, SystemTime::UNIX_EPOCH);
        let names: Vec<&str> = revoked.iter().map(|r| r.account.as_str()).collect();
        assert_eq!(names, ["dropped", "moved"]);
        let moved = &revoked[1];
        assert_eq!(moved.session, Arc::from("s1"));
        assert_eq!(moved.refusal.reason, RegisterReason::NotOwner);
        assert_eq!(moved.refusal.label, "not_owner_revoked");
        let owner = moved.refusal.owner.as_ref().and_then(|o| o.shard.as_ref());
        assert_eq!(owner.map(|s| s.name.as_str()), Some("west"));
        assert_eq!(revoked[0].refusal.owner, None);
        // Released, not removed: Disconnected for the grace period.
        assert_eq!(registry.counts(), (1, 2));
        assert!(registry.holds("kept", &Arc::from("s1")));
        let moved = registry.get("moved").expect("kept for the grace period");
        assert_eq!(moved.epoch, revoked[1].epoch);
        // Nothing is left to revoke.
        assert!(revoke(&mut registry, rule, live, SystemTime::UNIX_EPOCH).is_empty());
    }

    #[test]
    fn accounts_of_sessions_that_are_not_live_are_left_to_their_ending() {
        let mut registry = Registry::new();
        register(&mut registry, "gone", "east", "moved");
        assert!(revoke(&mut registry, rule, live, SystemTime::UNIX_EPOCH).is_empty());
        assert!(registry.holds("moved", &Arc::from("gone")));
    }

    /// The race: the hub revokes an account (the AgentShards dropped it)
    /// while the agent, not told yet, unregisters it as REMOVED. Before, the
    /// Unregister was ignored (the session no longer held it) and the name
    /// stayed bound for the whole grace period; now it is removed at once.
    #[tokio::test]
    async fn a_removal_that_races_a_revocation_frees_the_name_at_once() {
        use crate::stream::register;
        use crate::stream::session::testing::{session, shared};
        use scale_agent_proto::v1 as pb;

        let shared = shared();
        let (s, _rx) = session(&shared, "s1", "east", "east-0");
        assert!(
            register::register(
                &s,
                pb::Register {
                    accounts: vec![pb::Account {
                        name: "dropped".into(),
                        cluster_id: "uid-d".into(),
                        ..Default::default()
                    }],
                }
            )
            .await
        );
        let revoked = revoke(
            &mut shared.core().registry,
            rule,
            |_| Some(shard("east")),
            SystemTime::now(),
        );
        assert_eq!(revoked.len(), 1);
        register::unregister(
            &s,
            &pb::Unregister {
                account_names: vec!["dropped".into()],
                reason: pb::UnregisterReason::Removed as i32,
                message: "removed from the AgentShard".into(),
            },
        );
        assert!(
            shared.core().registry.get("dropped").is_none(),
            "the account lingered after its agent removed it"
        );
        assert!(
            shared
                .metrics
                .encode()
                .contains(r#"scale_agent_hub_accounts_removed_total{reason="unregistered"} 1"#)
        );
    }
}
