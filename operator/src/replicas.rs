//! A shard's agent replicas as their coordination Leases show them, and what their
//! reports say about each account. Pure: the reconciler hands in the Leases and pods the
//! watches hold.
//!
//! Only Leases that prove they belong to a live replica of the shard count
//! ([`scale_agent_crds::membership`]): a ghost Lease's report is ignored, whatever it
//! says. An account is streaming only while a live member reports it streaming; the
//! [rule](account_view) for what several reports say together prefers the best news
//! (one replica streaming it is enough), then what a person can act on.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use scale_agent_crds::membership::{self, NotMember};
use scale_agent_crds::report::{
    AccountReport, HubState, REPORT_ANNOTATION, ReplicaReport, ReportError, StreamState,
};
use scale_agent_crds::{AccountState, ShardRef};

use crate::status::reason;

/// The hub's refusals that clear by themselves: replicas briefly disagreeing on who
/// holds an account, a hub still reading AgentShards.
pub const TRANSIENT_REFUSALS: [&str; 2] = ["Superseded", "Unavailable"];

/// One live replica of the shard.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaView {
    /// Its name (its pod's).
    pub replica: String,
    /// When its Lease expires unless renewed.
    pub expires: Timestamp,
    /// What it reports; an error when the annotation is missing or unreadable.
    pub report: Result<ReplicaReport, ReportError>,
}

/// The replicas of one shard at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Replicas {
    /// The live members, by replica name.
    pub members: Vec<ReplicaView>,
    /// Leases labelled for the shard that are not live members, and why.
    pub ignored: Vec<(String, NotMember)>,
}

/// What the replicas say about one account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountView {
    /// Its state in the status (one the agent config carries).
    pub state: AccountState,
    /// Why, one CamelCase word (for RefusedByHub, the hub's reason).
    pub reason: String,
    /// For people.
    pub message: String,
}

impl Replicas {
    /// The replicas of `shard` among `leases` (every Lease labelled for it), given
    /// `pod`, which finds the metadata of a pod of the shard's namespace by name.
    pub fn observe<'a>(
        shard: &ShardRef,
        leases: impl IntoIterator<Item = &'a Lease>,
        pod: impl Fn(&str) -> Option<ObjectMeta>,
        now: Timestamp,
    ) -> Self {
        let mut out = Self::default();
        for lease in leases {
            let name = lease.metadata.name.clone().unwrap_or_default();
            let holder_pod = membership::holder(lease).and_then(&pod);
            match membership::member(shard, lease, holder_pod.as_ref(), now) {
                Ok(m) => {
                    let report = lease
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(REPORT_ANNOTATION))
                        .map_or_else(
                            || {
                                Err(ReportError::Malformed {
                                    reason: "the replica has not reported yet".to_owned(),
                                })
                            },
                            |text| ReplicaReport::decode(text),
                        );
                    out.members.push(ReplicaView {
                        replica: m.replica,
                        expires: m.expires,
                        report,
                    });
                }
                Err(why) => out.ignored.push((name, why)),
            }
        }
        out.members.sort_by(|a, b| a.replica.cmp(&b.replica));
        out.ignored.sort();
        out
    }

    /// When the first live member's Lease expires: the status may change then without
    /// any event, so the shard is looked at again.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.members.iter().map(|m| m.expires).min()
    }

    /// The replicas with no session to the hub, and why.
    pub fn disconnected(&self) -> Vec<(&str, &str)> {
        self.members
            .iter()
            .filter_map(|m| {
                let r = m.report.as_ref().ok()?;
                (r.hub.state != HubState::Connected)
                    .then_some((m.replica.as_str(), r.hub.message.as_str()))
            })
            .collect()
    }

    /// What the live replicas report about `account`.
    pub fn account(&self, account: &str) -> AccountView {
        let reports: Vec<(&str, AccountReport)> = self
            .members
            .iter()
            .filter_map(|m| {
                let r = m.report.as_ref().ok()?;
                let a = r.accounts.get(account)?;
                Some((m.replica.as_str(), effective(r, a)))
            })
            .collect();
        account_view(&reports, self.members.len())
    }
}

/// An account's report as far as the replica's hub link allows: without a session, an
/// account cannot be streaming or syncing, whatever the entry says.
fn effective(r: &ReplicaReport, a: &AccountReport) -> AccountReport {
    let live = matches!(a.state, StreamState::Streaming | StreamState::Syncing);
    if live && r.hub.state != HubState::Connected {
        return AccountReport::because(
            StreamState::HubUnreachable,
            String::new(),
            r.hub.message.clone(),
        );
    }
    a.clone()
}

/// What `reports` (replica → its report about one account) say together, out of `live`
/// live replicas: streaming if any replica streams it; else syncing (also through the
/// hub's transient refusals); else refused by the hub, cluster unreachable, hub
/// unreachable, in that order (what a person can act on first); else no replica holds
/// it.
pub fn account_view(reports: &[(&str, AccountReport)], live: usize) -> AccountView {
    let find = |pred: &dyn Fn(&AccountReport) -> bool| reports.iter().find(|(_, r)| pred(r));
    let view = |state, reason: &str, message: String| AccountView {
        state,
        reason: reason.to_owned(),
        message,
    };
    if let Some((replica, _)) = find(&|r| r.state == StreamState::Streaming) {
        return view(
            AccountState::Active,
            reason::STREAMING,
            format!("streamed by replica {replica}"),
        );
    }
    let transient = |r: &AccountReport| {
        r.state == StreamState::Refused && TRANSIENT_REFUSALS.contains(&r.reason.as_str())
    };
    if let Some((replica, r)) = find(&|r| r.state == StreamState::Syncing || transient(r)) {
        let (why, message) = if r.state == StreamState::Syncing {
            (
                reason::SYNCING,
                format!("replica {replica} is registering it with the hub or listing it"),
            )
        } else {
            (
                r.reason.as_str(),
                format!("replica {replica}: the hub asks to retry: {}", r.message),
            )
        };
        return view(AccountState::Syncing, why, message);
    }
    if let Some((replica, r)) = find(&|r| r.state == StreamState::Refused) {
        let why = if r.reason.is_empty() {
            "Refused"
        } else {
            r.reason.as_str()
        };
        return view(
            AccountState::RefusedByHub,
            why,
            format!(
                "the hub refused it ({why}) from replica {replica}: {}",
                r.message
            ),
        );
    }
    if let Some((replica, r)) = find(&|r| r.state == StreamState::ClusterUnreachable) {
        return view(
            AccountState::ClusterUnreachable,
            reason::CLUSTER_UNREACHABLE,
            format!("replica {replica} cannot reach the cluster: {}", r.message),
        );
    }
    if let Some((replica, r)) = find(&|r| r.state == StreamState::HubUnreachable) {
        return view(
            AccountState::HubUnreachable,
            reason::HUB_UNREACHABLE,
            format!("replica {replica} cannot reach the hub: {}", r.message),
        );
    }
    if let Some((replica, _)) = reports.first() {
        return view(
            AccountState::Syncing,
            reason::SYNCING,
            format!("replica {replica} reports a state this operator does not know"),
        );
    }
    let message = match live {
        0 => "no live agent replica of this shard: none is running, or none renews its Lease"
            .to_owned(),
        n => format!("none of the {n} live agent replicas of this shard holds it yet"),
    };
    view(AccountState::NoReplica, reason::NO_REPLICA, message)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
    use scale_agent_crds::membership::{
        POD_TEMPLATE_HASH_LABEL, SHARD_LABEL, agent_selector_labels, lease_name, lease_owner,
    };
    use scale_agent_crds::report::HubLink;

    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid")
    }

    fn pod(name: &str) -> ObjectMeta {
        let mut labels = agent_selector_labels("east");
        labels.insert(POD_TEMPLATE_HASH_LABEL.into(), "h".into());
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "east-agent-h".into(),
                uid: "rs".into(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        }
    }

    fn lease(pod: &str, renewed: i64, report: Option<&ReplicaReport>) -> Lease {
        let mut l: Lease = serde_json::from_value(serde_json::json!({
            "metadata": { "name": lease_name(pod), "namespace": "ns", "labels": { SHARD_LABEL: "east" } },
            "spec": { "holderIdentity": pod, "leaseDurationSeconds": 10, "renewTime": MicroTime(at(renewed)) }
        }))
        .expect("lease");
        l.metadata.owner_references = Some(vec![lease_owner(pod, &format!("uid-{pod}"))]);
        if let Some(r) = report {
            l.metadata.annotations = Some([(REPORT_ANNOTATION.to_owned(), r.encode())].into());
        }
        l
    }

    fn report(connected: bool, accounts: &[(&str, AccountReport)]) -> ReplicaReport {
        ReplicaReport {
            hub: HubLink::new(connected, "TLS: reading ca.crt: No such file"),
            accounts: accounts
                .iter()
                .map(|(n, r)| ((*n).to_owned(), r.clone()))
                .collect(),
            truncated: false,
        }
    }

    fn observe(leases: &[Lease], pods: &[&str], now: i64) -> Replicas {
        let pods: Vec<ObjectMeta> = pods.iter().map(|p| pod(p)).collect();
        Replicas::observe(
            &ShardRef::new("ns", "east"),
            leases,
            |name| {
                pods.iter()
                    .find(|p| p.name.as_deref() == Some(name))
                    .cloned()
            },
            at(now),
        )
    }

    #[test]
    fn streaming_needs_a_live_member_saying_so() {
        let streaming = report(true, &[("a", AccountReport::new(StreamState::Streaming))]);
        let live = observe(&[lease("p1", 100, Some(&streaming))], &["p1"], 105);
        assert_eq!(live.account("a").state, AccountState::Active);
        assert_eq!(live.next_expiry(), Some(at(110)));
        // The same Lease once expired, or without its pod: nobody streams it.
        let expired = observe(&[lease("p1", 100, Some(&streaming))], &["p1"], 111);
        assert_eq!(expired.account("a").state, AccountState::NoReplica);
        assert_eq!(
            expired.ignored,
            [("scale-agent-p1".into(), NotMember::Expired)]
        );
        let ghost = observe(&[lease("p1", 100, Some(&streaming))], &[], 105);
        assert_eq!(ghost.account("a").state, AccountState::NoReplica);
        assert_eq!(ghost.ignored[0].1, NotMember::NoSuchPod);
    }

    #[test]
    fn a_ghost_cannot_make_an_account_look_streaming() {
        let streaming = report(true, &[("a", AccountReport::new(StreamState::Streaming))]);
        let mut ghost = lease("ghost", 100, Some(&streaming));
        ghost.metadata.owner_references = None;
        let honest = report(true, &[("a", AccountReport::new(StreamState::Syncing))]);
        let r = observe(
            &[ghost, lease("p1", 100, Some(&honest))],
            &["p1", "ghost"],
            101,
        );
        assert_eq!(r.account("a").state, AccountState::Syncing);
        assert_eq!(r.members.len(), 1);
    }

    #[test]
    fn without_a_hub_session_nothing_streams() {
        let stale = report(false, &[("a", AccountReport::new(StreamState::Streaming))]);
        let r = observe(&[lease("p1", 100, Some(&stale))], &["p1"], 101);
        let v = r.account("a");
        assert_eq!(v.state, AccountState::HubUnreachable);
        assert!(v.message.contains("No such file"), "{}", v.message);
        assert_eq!(
            r.disconnected(),
            [("p1", "TLS: reading ca.crt: No such file")]
        );
    }

    #[test]
    fn a_member_that_has_not_reported_holds_nothing() {
        let r = observe(&[lease("p1", 100, None)], &["p1"], 101);
        assert_eq!(r.members.len(), 1);
        let v = r.account("a");
        assert_eq!(v.state, AccountState::NoReplica);
        assert!(v.message.contains("1 live"), "{}", v.message);
    }

    #[test]
    fn several_reports_best_news_first_then_what_a_person_can_act_on() {
        let refused = AccountReport::because(StreamState::Refused, "NotOwner", "owned by x/y");
        let superseded = AccountReport::because(StreamState::Refused, "Superseded", "newer");
        let cluster = AccountReport::because(StreamState::ClusterUnreachable, "", "refused");
        let hub = AccountReport::because(StreamState::HubUnreachable, "", "timeout");
        let streaming = AccountReport::new(StreamState::Streaming);
        let state = |reports: &[AccountReport]| {
            let named: Vec<(&str, AccountReport)> =
                reports.iter().map(|r| ("p", r.clone())).collect();
            let v = account_view(&named, named.len());
            (v.state, v.reason)
        };
        assert_eq!(
            state(&[hub.clone(), refused.clone(), streaming]),
            (AccountState::Active, "Streaming".into())
        );
        assert_eq!(
            state(&[refused.clone(), superseded]),
            (AccountState::Syncing, "Superseded".into())
        );
        assert_eq!(
            state(&[hub.clone(), cluster.clone(), refused]),
            (AccountState::RefusedByHub, "NotOwner".into())
        );
        assert_eq!(
            state(&[hub.clone(), cluster]),
            (
                AccountState::ClusterUnreachable,
                "ClusterUnreachable".into()
            )
        );
        assert_eq!(
            state(&[hub]),
            (AccountState::HubUnreachable, "HubUnreachable".into())
        );
        assert_eq!(state(&[]), (AccountState::NoReplica, "NoReplica".into()));
        for s in AccountState::WRITTEN.iter().filter(|s| s.served()) {
            assert!(s.holds(), "{s}");
        }
    }
}
