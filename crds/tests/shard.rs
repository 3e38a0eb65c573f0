//! The AgentShard type: what users write reads as intended, what the operator writes
//! has the documented shape, and the helpers behave.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::Resource;
use scale_agent_crds::{
    AccountSpec, AccountState, AccountStatus, AgentShard, AgentShardSpec, AgentShardStatus, Budget,
    ConfigError, ShardRef, condition_status, condition_type, new_condition,
};
use serde_json::json;

const EXAMPLE: &str = r#"
apiVersion: scaleagent.dev/v1alpha1
kind: AgentShard
metadata: { name: prod-east, namespace: spinnaker, generation: 3 }
spec:
  replicas: 2
  hub: { address: "clouddriver-grpc.example.com:443", tlsSecretRef: { name: agent-mtls } }
  accounts:
    - name: prod-east-1
      kubeconfigSecretRef: { name: kc-prod-east-1, key: kubeconfig }
      context: prod-east-1-admin
      namespaces: []
      omitNamespaces: [kube-system]
      kinds: []
      omitKinds: []
      onlySpinnakerManaged: false
  budget: { concurrentSyncs: 4, maxBufferedBytes: 64Mi }
"#;

fn time(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).expect("a valid time"))
}

fn kubeconfig_key(account: &AccountSpec) -> &str {
    account
        .kubeconfig_secret_ref
        .as_ref()
        .map_or("", |r| r.key.as_str())
}

#[test]
fn the_architecture_example_reads() {
    let shard: AgentShard = serde_yaml::from_str(EXAMPLE).expect("the example is an AgentShard");
    assert_eq!(shard.spec.replicas, 2);
    let hub = shard.spec.hub.as_ref().expect("hub");
    assert_eq!(hub.address, "clouddriver-grpc.example.com:443");
    assert_eq!(
        hub.tls_secret_ref.as_ref().map(|r| r.name.as_str()),
        Some("agent-mtls")
    );
    let account = shard.spec.account("prod-east-1").expect("account");
    assert_eq!(account.scope.omit_namespaces, ["kube-system"]);
    assert_eq!(account.scope.context.as_deref(), Some("prod-east-1-admin"));
    assert_eq!(kubeconfig_key(account), "kubeconfig");
    assert_eq!(shard.spec.budget, Budget::default());
    assert_eq!(
        shard.shard_ref(),
        Some(ShardRef::new("spinnaker", "prod-east"))
    );
    assert_eq!(shard.account_names().collect::<Vec<_>>(), ["prod-east-1"]);
}

#[test]
fn a_minimal_spec_gets_the_defaults() {
    let spec: AgentShardSpec = serde_json::from_value(json!({})).expect("empty spec");
    assert_eq!(spec.replicas, 1);
    assert_eq!(spec.hub, None);
    assert!(spec.accounts.is_empty());
    assert_eq!(spec.budget.concurrent_syncs, 4);
    assert_eq!(spec.budget.max_buffered_bytes.0, "64Mi");
    assert!(!spec.paused);
    let account: AccountSpec =
        serde_json::from_value(json!({ "name": "a", "kubeconfigSecretRef": { "name": "kc" } }))
            .expect("minimal account");
    assert_eq!(kubeconfig_key(&account), "kubeconfig");
}

#[test]
fn an_integer_quantity_reads() {
    let spec: AgentShardSpec =
        serde_json::from_value(json!({ "budget": { "maxBufferedBytes": 67108864 } }))
            .expect("int quantity");
    assert_eq!(spec.budget.max_buffered_bytes.0, "67108864");
    assert_eq!(spec.budget.concurrent_syncs, 4);
}

#[test]
fn unset_options_are_not_written() {
    let spec: AgentShardSpec = serde_json::from_value(json!({})).expect("empty spec");
    let written = serde_json::to_value(&spec).expect("writes");
    assert_eq!(
        written,
        json!({
            "replicas": 1,
            "budget": { "concurrentSyncs": 4, "maxBufferedBytes": "64Mi" },
            "paused": false,
        })
    );
}

#[test]
fn the_resource_identity() {
    assert_eq!(AgentShard::group(&()), "scaleagent.dev");
    assert_eq!(AgentShard::version(&()), "v1alpha1");
    assert_eq!(AgentShard::kind(&()), "AgentShard");
    assert_eq!(AgentShard::plural(&()), "agentshards");
    assert_eq!(AgentShard::api_version(&()), "scaleagent.dev/v1alpha1");
}

#[test]
fn status_shape() {
    let status = AgentShardStatus {
        observed_generation: Some(3),
        conditions: vec![new_condition(
            condition_type::READY,
            false,
            "AccountConflict",
            "prod-east-1 is owned by spinnaker/prod-west",
            Some(3),
            time(0),
        )],
        accounts: vec![AccountStatus {
            name: "prod-east-1".to_owned(),
            state: AccountState::Conflict,
            reason: "ClaimedByOlderShard".to_owned(),
            message: "owned by spinnaker/prod-west".to_owned(),
            owner_shard: Some("spinnaker/prod-west".to_owned()),
            claimed_at: Some(time(1_700_000_000)),
        }],
        replicas: 2,
        ready_replicas: 1,
        active_accounts: 0,
        conflicts: 1,
    };
    let written = serde_json::to_value(&status).expect("writes");
    assert_eq!(
        written,
        json!({
            "observedGeneration": 3,
            "conditions": [{
                "type": "Ready",
                "status": "False",
                "reason": "AccountConflict",
                "message": "prod-east-1 is owned by spinnaker/prod-west",
                "observedGeneration": 3,
                "lastTransitionTime": "1970-01-01T00:00:00Z",
            }],
            "accounts": [{
                "name": "prod-east-1",
                "state": "Conflict",
                "reason": "ClaimedByOlderShard",
                "message": "owned by spinnaker/prod-west",
                "ownerShard": "spinnaker/prod-west",
                "claimedAt": "2023-11-14T22:13:20Z",
            }],
            "replicas": 2,
            "readyReplicas": 1,
            "activeAccounts": 0,
            "conflicts": 1,
        })
    );
    // Empty lists are written, so a merge patch clears stale entries.
    let empty = serde_json::to_value(AgentShardStatus::default()).expect("writes");
    assert_eq!(empty["accounts"], json!([]));
    assert_eq!(empty["conditions"], json!([]));
    let back: AgentShardStatus = serde_json::from_value(written).expect("reads back");
    assert_eq!(back, status);
}

#[test]
fn conditions_keep_their_transition_time_while_unchanged() {
    let mut status = AgentShardStatus::default();
    let ready = |ok: bool, reason: &str, at: i64| {
        new_condition(condition_type::READY, ok, reason, "", Some(1), time(at))
    };
    assert!(status.set_condition(ready(true, "Ready", 10)));
    // Same status, same everything but the time: no change, old time kept.
    assert!(!status.set_condition(ready(true, "Ready", 20)));
    assert_eq!(
        status
            .condition(condition_type::READY)
            .map(|c| c.last_transition_time.clone()),
        Some(time(10))
    );
    // Same status, new reason: a change, but the transition time stays.
    assert!(status.set_condition(ready(true, "StillReady", 30)));
    let c = status.condition(condition_type::READY).expect("ready");
    assert_eq!(
        (c.reason.as_str(), c.last_transition_time.clone()),
        ("StillReady", time(10))
    );
    // New status: the time moves.
    assert!(status.set_condition(ready(false, "AccountConflict", 40)));
    let c = status.condition(condition_type::READY).expect("ready");
    assert_eq!(
        (c.status.as_str(), c.last_transition_time.clone()),
        ("False", time(40))
    );
    // Other types are added, not replaced.
    assert!(status.set_condition(new_condition(
        condition_type::AVAILABLE,
        true,
        "MinimumReplicasAvailable",
        "",
        Some(1),
        time(50),
    )));
    assert_eq!(status.conditions.len(), 2);
}

#[test]
fn shard_helpers_read_the_status() {
    let mut shard: AgentShard = serde_yaml::from_str(EXAMPLE).expect("example");
    assert!(!shard.is_condition_true(condition_type::READY));
    assert!(!shard.status_is_current());
    let mut status = AgentShardStatus {
        observed_generation: Some(3),
        ..Default::default()
    };
    status.set_condition(new_condition(
        condition_type::READY,
        true,
        "Ready",
        "",
        Some(3),
        time(0),
    ));
    status.accounts.push(AccountStatus {
        name: "prod-east-1".to_owned(),
        state: AccountState::Active,
        reason: String::new(),
        message: String::new(),
        owner_shard: None,
        claimed_at: None,
    });
    shard.status = Some(status);
    assert!(shard.is_condition_true(condition_type::READY));
    assert_eq!(
        shard
            .condition(condition_type::READY)
            .map(|c| c.status.as_str()),
        Some(condition_status::TRUE)
    );
    assert!(shard.condition(condition_type::AVAILABLE).is_none());
    assert!(shard.status_is_current());
    assert_eq!(
        shard.account_status("prod-east-1").map(|a| a.state),
        Some(AccountState::Active)
    );
    shard.metadata.generation = Some(4);
    assert!(!shard.status_is_current());
}

#[test]
fn an_account_state_from_a_newer_version_reads_as_unknown() {
    // A newer operator may write a state this version does not know: the shard still
    // reads, and the state counts as holding the name.
    let shard: AgentShard = serde_json::from_value(json!({
        "apiVersion": "scaleagent.dev/v1alpha1",
        "kind": "AgentShard",
        "metadata": { "name": "east", "namespace": "ns" },
        "spec": { "accounts": [{ "name": "a", "kubeconfigSecretRef": { "name": "kc" } }] },
        "status": { "accounts": [
            { "name": "a", "state": "Draining", "claimedAt": "2024-01-01T00:00:00Z" },
            { "name": "b", "state": "Active" },
        ]},
    }))
    .expect("a newer status reads");
    let a = shard.account_status("a").expect("a");
    assert_eq!(a.state, AccountState::Unknown);
    assert!(a.state.holds());
    assert_eq!(
        shard.account_status("b").map(|b| b.state),
        Some(AccountState::Active)
    );
    assert!(!AccountState::Conflict.holds());
}

#[test]
fn shard_refs() {
    let r: ShardRef = "spinnaker/prod-east".parse().expect("ns/name");
    assert_eq!(r, ShardRef::new("spinnaker", "prod-east"));
    assert_eq!(r.to_string(), "spinnaker/prod-east");
    assert_eq!(r.key(), "spinnaker/prod-east");
    for bad in ["", "a", "/a", "a/", "a/b/c"] {
        let err = bad.parse::<ShardRef>().expect_err(bad);
        assert!(matches!(err, ConfigError::InvalidShardRef { .. }), "{bad}");
    }
    // Namespace first, then name: the claim tie-break.
    let mut refs = [
        ShardRef::new("b", "a"),
        ShardRef::new("a", "z"),
        ShardRef::new("a", "b"),
    ];
    refs.sort();
    assert_eq!(
        refs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["a/b", "a/z", "b/a"]
    );
}

#[test]
fn condition_types_are_the_documented_ones() {
    assert_eq!(
        condition_type::ALL,
        [
            "Ready",
            "Reconciling",
            "Stalled",
            "AccountsUnique",
            "ConfigValid",
            "Available"
        ]
    );
    assert_eq!(AccountState::Conflict.to_string(), "Conflict");
}

#[test]
fn account_states_read_back_and_every_state_but_conflict_holds_the_name() {
    for state in AccountState::WRITTEN {
        let text = serde_json::to_string(&state).expect("writes");
        assert_eq!(text, format!("\"{state}\""));
        let back: AccountState = serde_json::from_str(&text).expect("reads");
        assert_eq!(back, state);
        assert_eq!(state.holds(), state != AccountState::Conflict, "{state}");
        assert_eq!(
            state.served(),
            !matches!(state, AccountState::Conflict | AccountState::Invalid),
            "{state}"
        );
    }
    // A state of a newer operator reads as Unknown, which holds the name.
    let newer: AccountState = serde_json::from_str("\"Draining\"").expect("tolerated");
    assert_eq!(newer, AccountState::Unknown);
    assert!(newer.holds() && !newer.served());
}

/// Objects as kube-apiserver v1.36 returned them after applying the generated CRD:
/// defaults filled in by the server, a status written through the subresource, and
/// `kubectl scale` through the scale subresource.
#[test]
fn objects_written_by_the_api_server_read() {
    let shard: AgentShard =
        serde_json::from_str(include_str!("fixtures/server-prod-east.json")).expect("reads");
    assert_eq!(
        shard.spec.replicas, 3,
        "scaled through the scale subresource"
    );
    assert_eq!(
        shard.spec.budget,
        Budget::default(),
        "defaulted by the server"
    );
    let account = shard.spec.account("prod-east-1").expect("account");
    assert_eq!(kubeconfig_key(account), "kubeconfig");
    let status = shard.status.as_ref().expect("status");
    assert_eq!((status.replicas, status.ready_replicas), (2, 1));
    assert_eq!(
        shard
            .condition(condition_type::READY)
            .map(|c| c.reason.as_str()),
        Some("Progressing")
    );
    assert_eq!(
        shard.account_status("prod-east-1").map(|a| a.state),
        Some(AccountState::Active)
    );

    let int: AgentShard =
        serde_json::from_str(include_str!("fixtures/server-int-quantity.json")).expect("reads");
    assert_eq!(int.spec.budget.max_buffered_bytes.0, "67108864");
    assert_eq!(
        scale_agent_crds::BudgetConfig::from_spec(&int.spec.budget)
            .expect("valid")
            .max_buffered_bytes,
        64 << 20
    );
}
