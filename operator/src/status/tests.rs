//! Tests of `status.rs`.

use super::*;
use k8s_openapi::jiff::Timestamp;
use scale_agent_crds::condition_status;

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).expect("valid"))
}

fn with(name: &str, state: AccountState, reason: &str) -> AccountStatus {
    account(name, state, reason, format!("{name} is {state}"), None)
}

fn active(name: &str) -> AccountStatus {
    with(name, AccountState::Active, reason::STREAMING)
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
        replicas: ReplicaSummary {
            live: 1,
            disconnected: Vec::new(),
        },
    }
}

/// The status after the first sight: what the operator writes from then on.
fn settled(o: &Observed) -> AgentShardStatus {
    let first = compute(None, o, t(1));
    compute(Some(&first), o, t(2))
}

/// (Ready status, Ready reason, Reconciling, Stalled).
fn summary(s: &AgentShardStatus) -> (String, String, String, String) {
    let c = |t| s.condition(t).map(|c| c.status.clone()).unwrap_or_default();
    (
        c(condition_type::READY),
        s.condition(condition_type::READY)
            .map(|c| c.reason.clone())
            .unwrap_or_default(),
        c(condition_type::RECONCILING),
        c(condition_type::STALLED),
    )
}

fn sum(
    ready: &str,
    why: &str,
    reconciling: &str,
    stalled: &str,
) -> (String, String, String, String) {
    (ready.into(), why.into(), reconciling.into(), stalled.into())
}

#[test]
fn ready_is_unknown_on_first_sight_then_true_when_everything_streams() {
    let o = obs(vec![active("a")], Some(rolled_out()));
    let first = compute(None, &o, t(1));
    let ready = first.condition(condition_type::READY).expect("ready");
    assert_eq!(ready.status, condition_status::UNKNOWN);
    let s = compute(Some(&first), &o, t(2));
    let ready = s.condition(condition_type::READY).expect("ready");
    assert_eq!(ready.status, condition_status::TRUE);
    assert_eq!(ready.observed_generation, Some(3));
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!((s.active_accounts, s.conflicts), (1, 0));
    assert_eq!(s.conditions.len(), 6);
    assert_eq!(summary(&s), sum("True", "Ready", "False", "False"));
}

#[test]
fn each_state_speaks_the_gitops_tools_language() {
    // kstatus: Stalled=True is Failed, Reconciling=True is InProgress, Ready=True
    // with neither is Current.
    let cases = [
        (
            with("a", AccountState::Syncing, reason::SYNCING),
            sum("False", "Syncing", "True", "False"),
        ),
        (
            with("a", AccountState::NoReplica, reason::NO_REPLICA),
            sum("False", "NoReplica", "True", "False"),
        ),
        (
            with("a", AccountState::HubUnreachable, reason::HUB_UNREACHABLE),
            sum("False", "HubUnreachable", "True", "False"),
        ),
        (
            with(
                "a",
                AccountState::ClusterUnreachable,
                reason::CLUSTER_UNREACHABLE,
            ),
            sum("False", "ClusterUnreachable", "True", "False"),
        ),
        (
            with("a", AccountState::RefusedByHub, "NotOwner"),
            sum("False", "RefusedByHub", "False", "True"),
        ),
        (
            with("a", AccountState::Invalid, reason::SECRET_NOT_FOUND),
            sum("False", "ConfigInvalid", "False", "True"),
        ),
        (
            conflict("a", "o/x"),
            sum("False", "AccountConflict", "False", "True"),
        ),
        (
            account(
                "a",
                AccountState::Conflict,
                reason::OWNER_RELEASING,
                "next".into(),
                None,
            ),
            sum("False", "OwnerReleasing", "True", "False"),
        ),
    ];
    for (account, expected) in cases {
        let s = settled(&obs(
            vec![active("ok"), account.clone()],
            Some(rolled_out()),
        ));
        assert_eq!(summary(&s), expected, "{account:?}");
    }
    let mut rolling = rolled_out();
    rolling.updated = 0;
    assert_eq!(
        summary(&settled(&obs(vec![active("a")], Some(rolling)))),
        sum("False", "Progressing", "True", "False")
    );
    let mut bad = obs(vec![], Some(rolled_out()));
    bad.config_problem = Some(Problem::new(reason::IMAGE_NOT_ALLOWED, "no"));
    let s = settled(&bad);
    assert_eq!(summary(&s), sum("False", "ConfigInvalid", "False", "True"));
    let stalled = s.condition(condition_type::STALLED).expect("stalled");
    assert_eq!(stalled.reason, "ImageNotAllowed");
    let config = s.condition(condition_type::CONFIG_VALID).expect("config");
    assert_eq!(config.reason, "ImageNotAllowed");
}

#[test]
fn what_a_person_can_act_on_comes_first() {
    let s = settled(&obs(
        vec![
            with("a", AccountState::NoReplica, reason::NO_REPLICA),
            with("b", AccountState::RefusedByHub, "ClusterMismatch"),
            with("c", AccountState::HubUnreachable, reason::HUB_UNREACHABLE),
        ],
        None,
    ));
    let ready = s.condition(condition_type::READY).expect("ready");
    assert_eq!(ready.reason, "RefusedByHub");
    assert!(
        ready.message.contains("b is RefusedByHub"),
        "{}",
        ready.message
    );
}

#[test]
fn a_disconnected_replica_says_why_in_ready() {
    let mut o = obs(
        vec![with(
            "a",
            AccountState::HubUnreachable,
            reason::HUB_UNREACHABLE,
        )],
        None,
    );
    o.replicas.disconnected = vec![(
        "east-agent-x".into(),
        "TLS: reading ca.crt: No such file".into(),
    )];
    let ready = settled(&o)
        .condition(condition_type::READY)
        .cloned()
        .expect("ready");
    assert!(ready.message.contains("No such file"), "{}", ready.message);
}

#[test]
fn conflict_makes_ready_false_and_counts() {
    let s = settled(&obs(
        vec![active("a"), conflict("b", "o/x")],
        Some(rolled_out()),
    ));
    assert_eq!((s.active_accounts, s.conflicts), (1, 1));
    let ready = s.condition(condition_type::READY).expect("ready");
    assert_eq!(ready.reason, reason::ACCOUNT_CONFLICT);
    assert!(ready.message.contains("o/x"));
    let unique = s.condition(condition_type::ACCOUNTS_UNIQUE).expect("c");
    assert_eq!(unique.status, condition_status::FALSE);
}

#[test]
fn same_observation_is_no_change_even_later() {
    let o = obs(vec![active("a"), conflict("b", "o/x")], Some(rolled_out()));
    let first = settled(&o);
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
fn a_tls_problem_is_an_event_with_its_own_reason() {
    let mut o = obs(vec![], Some(rolled_out()));
    o.config_problem = Some(Problem::new(
        reason::TLS_CERTIFICATE_WRONG_SHARD,
        "TLS Secret mtls: its certificate names ns/west",
    ));
    let s = compute(None, &o, t(1));
    let n = notices(None, &s);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].reason, "TlsCertificateWrongShard");
    assert!(n[0].warning && n[0].note.contains("ns/west"));
    // Once: the same problem again says nothing.
    assert!(notices(Some(&s), &compute(Some(&s), &o, t(9))).is_empty());
}

#[test]
fn hundreds_of_accounts_in_trouble_keep_messages_and_notes_within_limits() {
    // 500 accounts (the most a shard has) whose replica cannot reach the hub, each
    // with a long error: the conditions stay within metav1.Condition's limit and the
    // Event note within what the API server accepts, so the Event is not lost.
    let long = "x".repeat(300);
    let accounts: Vec<AccountStatus> = (0..500)
        .map(|i| {
            account(
                &format!("account-{i}"),
                AccountState::HubUnreachable,
                reason::HUB_UNREACHABLE,
                long.clone(),
                None,
            )
        })
        .collect();
    let before = settled(&obs(vec![active("account-0")], Some(rolled_out())));
    let after = compute(Some(&before), &obs(accounts, Some(rolled_out())), t(5));
    for c in &after.conditions {
        assert!(
            c.message.len() <= MAX_CONDITION_MESSAGE_BYTES,
            "{}: {} bytes",
            c.type_,
            c.message.len()
        );
    }
    let ready = after.condition(condition_type::READY).expect("Ready");
    assert_eq!(ready.reason, reason::HUB_UNREACHABLE);
    assert!(
        ready
            .message
            .starts_with("500 of 500 accounts: account-0: xxx")
    );
    assert!(ready.message.ends_with('…'), "cut, and says so");
    let n = notices(Some(&before), &after);
    assert!(
        n.iter().any(|n| n.reason == reason::HUB_UNREACHABLE),
        "{n:?}"
    );
    for n in &n {
        assert!(
            n.note.len() <= MAX_NOTE_BYTES,
            "{}: {} bytes",
            n.reason,
            n.note.len()
        );
    }
}

#[test]
fn notices_on_conflict_and_on_acquire() {
    let before = compute(None, &obs(vec![conflict("b", "o/x")], None), t(1));
    let n = notices(None, &before);
    assert_eq!(n.len(), 1);
    assert!(n[0].warning && n[0].note.contains("o/x"));
    let after = compute(
        Some(&before),
        &obs(
            vec![with("b", AccountState::NoReplica, reason::NO_REPLICA)],
            None,
        ),
        t(2),
    );
    let n = notices(Some(&before), &after);
    assert_eq!(
        n.iter().map(|n| n.reason).collect::<Vec<_>>(),
        [reason::ACCOUNT_ACQUIRED]
    );
}

#[test]
fn events_once_per_transition_of_the_streaming_truth() {
    let streaming = obs(vec![active("a")], Some(rolled_out()));
    let no_replica = obs(
        vec![with("a", AccountState::NoReplica, reason::NO_REPLICA)],
        Some(rolled_out()),
    );
    let refused = obs(
        vec![with("a", AccountState::RefusedByHub, "NotOwner")],
        Some(rolled_out()),
    );
    let reasons = |old: &AgentShardStatus, o: &Observed| {
        let new = compute(Some(old), o, t(5));
        (
            notices(Some(old), &new)
                .iter()
                .map(|n| n.reason)
                .collect::<Vec<_>>(),
            new,
        )
    };
    // A new shard's agents starting: no NoReplica warning, then Ready.
    let first = compute(None, &no_replica, t(1));
    assert!(notices(None, &first).is_empty());
    let (n, starting) = reasons(&first, &no_replica);
    assert!(n.is_empty(), "{n:?}");
    let (n, ready) = reasons(&starting, &streaming);
    assert_eq!(n, [reason::READY]);
    // Its replicas die (their pods become unready first, then their Leases expire):
    // one NoReplica warning, and not again while it lasts.
    let mut unready = streaming.clone();
    unready.deployment = Some(DeploymentView {
        available_replicas: 0,
        available: Some((false, "MinimumReplicasUnavailable".into(), "no".into())),
        ..rolled_out()
    });
    let (n, progressing) = reasons(&ready, &unready);
    assert!(n.is_empty(), "{n:?}");
    let (n, dead) = reasons(&progressing, &no_replica);
    assert_eq!(n, [reason::NO_REPLICA]);
    let (n, _) = reasons(&dead, &no_replica);
    assert!(n.is_empty(), "{n:?}");
    // The hub refuses the account: one RefusedByHub warning naming it.
    let (n, _) = reasons(&ready, &refused);
    assert_eq!(n, [reason::REFUSED_BY_HUB]);
}

#[test]
fn paused_only_touches_the_summary_conditions() {
    let running = settled(&obs(vec![active("a")], Some(rolled_out())));
    let mut o = obs(vec![], None);
    o.paused = true;
    let paused = compute(Some(&running), &o, t(3));
    assert_eq!(paused.accounts, running.accounts);
    assert_eq!(summary(&paused), sum("False", "Paused", "False", "False"));
}

#[test]
fn the_reserve_says_first_sight_so_the_status_write_after_it_says_what_was_seen() {
    let accounts = vec![active("a"), conflict("b", "ns/other")];
    let first = reserved(None, &accounts, Some(3), t(1));
    assert_eq!((first.active_accounts, first.conflicts), (1, 1));
    assert_eq!(first.accounts, accounts);
    let ready = first.condition(condition_type::READY).expect("ready");
    assert_eq!(ready.status, condition_status::UNKNOWN);
    // Not observed yet: the generation comes with the full status.
    assert_eq!(first.observed_generation, None);
    // The status write of the same reconcile: the verdict, at once.
    let o = obs(vec![active("a")], Some(rolled_out()));
    let s = compute(Some(&first), &o, t(2));
    assert_eq!(summary(&s), sum("True", "Ready", "False", "False"));
    // A status with conditions keeps them: only the accounts are recorded.
    let again = reserved(Some(&s), &[active("a"), active("c")], Some(4), t(3));
    assert_eq!(again.conditions, s.conditions);
    assert_eq!((again.active_accounts, again.conflicts), (2, 0));
}
