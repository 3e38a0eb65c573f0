//! What the agent is told about one account of a Register — streamed, with
//! its resume points, or refused with a reason, a message and, when it may
//! know it, who has the account instead. Every account line of a
//! RegisterResult, in answer or unsolicited (superseded, revoked), is built
//! by [`Answer::result`].

use scale_agent_proto::v1::{
    self as pb, AccountOwner, AccountResult, HubFrame, RegisterReason, ResumePoint, hub_frame,
};

use crate::core::clip::clip;
use crate::core::registry::{Account, Binding, Caller, RejectReason, ShardRef};

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

fn account_owner(shard: &ShardRef, cluster_id: String, replica_id: String) -> AccountOwner {
    AccountOwner {
        shard: Some(pb::ShardRef {
            namespace: shard.namespace.clone(),
            name: shard.name.clone(),
        }),
        cluster_id,
        replica_id,
    }
}

impl Refusal {
    /// The shard does not own the account; `owner` is the one that does.
    pub fn not_owner(message: String, owner: Option<ShardRef>) -> Refusal {
        Refusal {
            reason: RegisterReason::NotOwner,
            label: "not_owner",
            message,
            owner: owner.map(|shard| account_owner(&shard, String::new(), String::new())),
        }
    }

    /// The shard owned the account but no longer does (the AgentShards
    /// changed while it streamed).
    pub fn revoked(message: String, owner: Option<ShardRef>) -> Refusal {
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

    /// The hub's shared store cannot be used (`why`), so nothing can be
    /// bound or claimed; the agent retries.
    pub fn store_unavailable(why: &str) -> Refusal {
        Refusal {
            reason: RegisterReason::Unavailable,
            label: "store_unavailable",
            message: format!(
                "the hub cannot reach its shared store, so it cannot bind or take accounts now ({}); retry shortly",
                clip(why)
            ),
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
    /// way, if any (what of it the caller is told is [`Refusal::tell`]'s
    /// choice).
    pub(crate) fn from_registry(
        reason: RejectReason,
        message: String,
        owner: Option<Binding>,
    ) -> Refusal {
        Refusal {
            reason: match reason {
                RejectReason::Invalid => RegisterReason::Invalid,
                RejectReason::ClusterMismatch => RegisterReason::ClusterMismatch,
                RejectReason::OtherShard => RegisterReason::NotOwner,
            },
            label: reason.label(),
            message,
            owner: owner.map(|b| account_owner(&b.shard, b.cluster_id, String::new())),
        }
    }

    /// The account is past one of the session's limits.
    pub(crate) fn over_limit(label: &'static str, message: String) -> Refusal {
        Refusal {
            reason: RegisterReason::Invalid,
            label,
            message,
            owner: None,
        }
    }

    /// What `caller` (registering from `cluster_id`) may be told of the
    /// owner, given the registry's `account` entry: the owner's shard; the
    /// replica streaming it, when that shard holds it now; the bound cluster
    /// id only when it is the caller's own shard's binding or equals the
    /// cluster the caller named (a refusal never teaches another shard a
    /// cluster id it did not know).
    pub(crate) fn tell(
        mut self,
        caller: &Caller,
        cluster_id: &str,
        account: Option<&Account>,
    ) -> Refusal {
        let Some(owner) = self.owner.as_mut() else {
            return self;
        };
        let owner_shard = owner
            .shard
            .as_ref()
            .map(|s| ShardRef {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
            })
            .unwrap_or_default();
        owner.cluster_id = match account {
            Some(a)
                if a.binding.shard == owner_shard
                    && (a.binding.shard == caller.shard || a.binding.cluster_id == cluster_id) =>
            {
                a.binding.cluster_id.clone()
            }
            _ => String::new(),
        };
        if owner.replica_id.is_empty()
            && let Some(a) = account
            && a.session.is_some()
            && a.binding.shard == owner_shard
        {
            owner.replica_id.clone_from(&a.replica);
        }
        self
    }

    /// An unsolicited RegisterResult telling a session it lost `account`.
    pub fn notice(self, account: String) -> HubFrame {
        HubFrame {
            frame: Some(hub_frame::Frame::RegisterResult(pb::RegisterResult {
                accounts: vec![Answer::Refused(self).result(account)],
            })),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::registry::testing::{caller, shard};

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
