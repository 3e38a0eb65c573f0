//! Tests of `decide.rs`.

use k8s_openapi::ByteString;
use k8s_openapi::jiff::Timestamp;
use scale_agent_crds::report::{AccountReport, HubLink, HubState, ReplicaReport, StreamState};
use scale_agent_crds::{AgentShardStatus, CONFIG_KEY, condition_type};

use super::*;
use crate::replicas::ReplicaView;
use crate::status::DeploymentView;

/// One live replica streaming `accounts`, its Lease expiring at 1 010.
fn streaming_replicas(accounts: &[&str]) -> Replicas {
    Replicas {
        members: vec![ReplicaView {
            replica: "east-agent-x".into(),
            expires: Timestamp::from_second(1_010).expect("t"),
            report: Ok(ReplicaReport {
                hub: HubLink {
                    state: HubState::Connected,
                    message: String::new(),
                },
                accounts: accounts
                    .iter()
                    .map(|a| ((*a).to_owned(), AccountReport::new(StreamState::Streaming)))
                    .collect(),
                truncated: false,
            }),
        }],
        ignored: Vec::new(),
    }
}

const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://192.0.2.1:6443\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user: {}\n";

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).expect("valid"))
}

fn shard(accounts: &[&str]) -> AgentShard {
    let spec = serde_json::json!({
        "hub": { "address": "hub.example.com:443" },
        "image": "example.com/agent:1",
        "accounts": accounts.iter().map(|a| serde_json::json!({
            "name": a, "kubeconfigSecretRef": { "name": format!("kc-{a}") }
        })).collect::<Vec<_>>()
    });
    let mut s = AgentShard::new("east", serde_json::from_value(spec).expect("spec"));
    s.metadata.namespace = Some("ns".into());
    s.metadata.uid = Some("uid-1".into());
    s.metadata.generation = Some(2);
    s.metadata.creation_timestamp = Some(t(100));
    s
}

fn secret(data: Option<&str>) -> Option<Secret> {
    Some(Secret {
        data: data.map(|d| [("kubeconfig".to_owned(), ByteString(d.as_bytes().to_vec()))].into()),
        ..Secret::default()
    })
}

fn owned(names: &[&str]) -> BTreeMap<String, Resolution> {
    names
        .iter()
        .map(|n| ((*n).to_owned(), Resolution::Owned))
        .collect()
}

/// The Secrets as a reconcile that read them has them.
fn secrets(list: &[(&str, Option<Secret>)]) -> BTreeMap<String, Option<Source>> {
    list.iter()
        .map(|(n, s)| ((*n).to_owned(), s.clone().map(Source::read)))
        .collect()
}

fn run(
    s: &AgentShard,
    r: &BTreeMap<String, Resolution>,
    sec: &BTreeMap<String, Option<Source>>,
) -> Decision {
    decide(
        Fetched {
            shard: s,
            resolutions: r,
            secrets: sec,
            tls_secret: None,
            agent_ca: None,
            replicas: &Replicas::default(),
        },
        &defaults(),
        &t(1_000),
    )
    .expect("decides")
}

/// Decides `s` owning its account a, whose kubeconfig is valid.
fn decide_a(s: &AgentShard, replicas: &Replicas, defaults: &Defaults, now: i64) -> Decision {
    decide(
        Fetched {
            shard: s,
            resolutions: &owned(&["a"]),
            secrets: &secrets(&[("kc-a", secret(Some(KUBECONFIG)))]),
            tls_secret: None,
            agent_ca: None,
            replicas,
        },
        defaults,
        &t(now),
    )
    .expect("decides")
}

/// The operator's defaults for these tests: the shards' image is its own.
fn defaults() -> Defaults {
    Defaults {
        image: Some("example.com/agent:1".into()),
        ..Defaults::default()
    }
}

/// Gives `s` a stored status serving b (in its config), and decides it owning a.
fn with_b_in_the_config(s: &mut AgentShard) -> Decision {
    s.status = Some(AgentShardStatus {
        accounts: vec![AccountStatus {
            claimed_at: Some(t(100)),
            ..status::account(
                "b",
                AccountState::Active,
                reason::SERVING,
                String::new(),
                None,
            )
        }],
        ..AgentShardStatus::default()
    });
    run(
        s,
        &owned(&["a"]),
        &secrets(&[("kc-a", secret(Some(KUBECONFIG)))]),
    )
}

fn config(d: &Decision) -> AgentConfig {
    let c = d.children.as_ref().expect("children");
    let yaml = &c.config_map.data.as_ref().expect("data")[CONFIG_KEY];
    AgentConfig::from_yaml(yaml).expect("config")
}

fn states(d: &Decision) -> Vec<(String, AccountState, String)> {
    d.observed
        .accounts
        .iter()
        .map(|a| (a.name.clone(), a.state, a.reason.clone()))
        .collect()
}

#[test]
fn owned_and_usable_accounts_are_served_and_reserved_first() {
    let s = shard(&["a", "b"]);
    let d = run(
        &s,
        &owned(&["a", "b"]),
        &secrets(&[
            ("kc-a", secret(Some(KUBECONFIG))),
            ("kc-b", secret(Some(KUBECONFIG))),
        ]),
    );
    // No replica runs yet: in the config, not streaming.
    assert_eq!(
        states(&d),
        [
            ("a".into(), AccountState::NoReplica, "NoReplica".into()),
            ("b".into(), AccountState::NoReplica, "NoReplica".into())
        ]
    );
    let c = config(&d);
    assert_eq!(c.accounts.len(), 2);
    let children = d.children.as_ref().expect("children");
    let kc = children
        .kubeconfigs
        .secret
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .expect("data");
    assert!(kc.contains_key("a.kubeconfig") && kc.contains_key("b.kubeconfig"));
    assert!(children.identity.is_some() && children.pdb.is_none());
    // A shard with no status yet: its names are recorded before any config carries them.
    assert_eq!(d.reserve.as_ref(), Some(&d.observed.accounts));
    assert_eq!(d.next, Next::Resync);
    // Claimed at the shard's creation, the time the rule used.
    assert!(
        d.observed
            .accounts
            .iter()
            .all(|a| a.claimed_at == Some(t(100)))
    );
}

#[test]
fn nothing_to_reserve_when_the_status_already_holds_every_served_name() {
    let mut s = shard(&["a"]);
    let first = run(
        &s,
        &owned(&["a"]),
        &secrets(&[("kc-a", secret(Some(KUBECONFIG)))]),
    );
    let seen = status::compute(None, &first.observed, t(1_000));
    s.status = Some(status::compute(Some(&seen), &first.observed, t(1_000)));
    let again = run(
        &s,
        &owned(&["a"]),
        &secrets(&[("kc-a", secret(Some(KUBECONFIG)))]),
    );
    assert!(again.reserve.is_none());
    // The same decision again: the same status, so nothing would be written.
    let st = status::compute(s.status.as_ref(), &again.observed, t(2_000));
    assert_eq!(Some(&st), s.status.as_ref());
}

#[test]
fn the_reservation_keeps_the_names_the_config_still_carries() {
    // b is in the config (held); the spec swaps it for a.
    let mut s = shard(&["a"]);
    let d = with_b_in_the_config(&mut s);
    let reserved: Vec<&str> = d
        .reserve
        .as_ref()
        .expect("a is newly carried")
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(reserved, ["a", "b"]);
    // The status written after the config lets b go.
    assert_eq!(states(&d).len(), 1);
    assert_eq!(config(&d).accounts.len(), 1);
}

#[test]
fn taken_accounts_conflict_and_stay_out_of_the_config() {
    let s = shard(&["a", "x", "y"]);
    let mut r = owned(&["a"]);
    r.insert(
        "x".into(),
        Resolution::Taken {
            owner: ShardRef::new("other", "o"),
            releasing: false,
        },
    );
    r.insert(
        "y".into(),
        Resolution::Taken {
            owner: ShardRef::new("other", "p"),
            releasing: true,
        },
    );
    assert_eq!(
        secrets_to_fetch(&s, &r).into_keys().collect::<Vec<_>>(),
        ["kc-a"]
    );
    let d = run(&s, &r, &secrets(&[("kc-a", secret(Some(KUBECONFIG)))]));
    assert_eq!(
        states(&d),
        [
            ("a".into(), AccountState::NoReplica, "NoReplica".into()),
            (
                "x".into(),
                AccountState::Conflict,
                "OwnedByAnotherShard".into()
            ),
            ("y".into(), AccountState::Conflict, "OwnerReleasing".into()),
        ]
    );
    assert_eq!(
        d.observed.accounts[1].owner_shard.as_deref(),
        Some("other/o")
    );
    assert_eq!(config(&d).accounts.len(), 1);
    // Waiting for y: look again soon.
    assert_eq!(d.next, Next::HandoffRetry);
    let st = status::compute(None, &d.observed, t(1_000));
    // Nothing streams yet; one account is in the config, two are left out.
    assert_eq!((st.active_accounts, st.conflicts), (0, 2));
}

#[test]
fn unusable_kubeconfigs_are_invalid_with_the_reason() {
    let s = shard(&["gone", "nokey", "junk", "ok"]);
    let d = run(
        &s,
        &owned(&["gone", "nokey", "junk", "ok"]),
        &secrets(&[
            ("kc-gone", None),
            ("kc-nokey", secret(None)),
            ("kc-junk", secret(Some("not a kubeconfig: ["))),
            ("kc-ok", secret(Some(KUBECONFIG))),
        ]),
    );
    let reasons: Vec<String> = states(&d).into_iter().map(|(_, _, r)| r).collect();
    assert_eq!(
        reasons,
        [
            "SecretNotFound",
            "SecretKeyNotFound",
            "KubeconfigInvalid",
            "NoReplica"
        ]
    );
    assert_eq!(config(&d).accounts.len(), 1);
    let st = status::compute(None, &d.observed, t(1_000));
    let c = st
        .condition(condition_type::CONFIG_VALID)
        .expect("ConfigValid");
    assert_eq!(c.status, "False");
    assert!(c.message.contains("kc-gone"), "{}", c.message);
}

/// An account pointed at a Secret that is not a kubeconfig (a service-account token, a
/// private key) is Invalid; its message says where the YAML broke, never what the
/// Secret holds: whoever may write AgentShards must not read Secrets through them.
#[test]
fn a_secret_that_is_not_a_kubeconfig_is_never_quoted() {
    const JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6Ik1ZS0VZIn0.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDphZG1pbiJ9.U0lHTkFUVVJFU0lHTkFUVVJF";
    const KEY: &str = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIHNlY3JldHNlY3JldHNlY3JldHNlY3JldHNlY3JldHNlY3JldA==\n-----END EC PRIVATE KEY-----\n";
    let s = shard(&["token", "key"]);
    let d = run(
        &s,
        &owned(&["token", "key"]),
        &secrets(&[
            ("kc-token", secret(Some(JWT))),
            ("kc-key", secret(Some(KEY))),
        ]),
    );
    for a in &d.observed.accounts {
        assert_eq!(a.reason, "KubeconfigInvalid", "{a:?}");
        assert!(
            a.message.contains(&format!("Secret kc-{}", a.name)),
            "{}",
            a.message
        );
        for secret in ["eyJhbGci", "U0lHTkFU", "MHcCAQEE", "c2VjcmV0"] {
            assert!(!a.message.contains(secret), "{}", a.message);
        }
    }
}

/// A kubeconfig that would run a program in the agent is Invalid (KubeconfigRefused)
/// and left out of the agent config, unless the operator allows exec; the agents get
/// the same allowance, to check again.
#[test]
fn kubeconfigs_that_run_code_are_refused_unless_allowed() {
    let exec = KUBECONFIG.replace(
        "user: {}",
        "user:\n    exec: { apiVersion: client.authentication.k8s.io/v1, command: /bin/sh }",
    );
    let s = shard(&["exec", "ok"]);
    let sec = secrets(&[
        ("kc-exec", secret(Some(&exec))),
        ("kc-ok", secret(Some(KUBECONFIG))),
    ]);
    let d = run(&s, &owned(&["exec", "ok"]), &sec);
    let got = states(&d);
    assert_eq!(got[0].2, "KubeconfigRefused", "{got:?}");
    let st = status::compute(None, &d.observed, t(1_000));
    let exec_status = st.account("exec").expect("exec account");
    assert_eq!(exec_status.state, AccountState::Invalid);
    assert!(
        exec_status.message.contains("exec")
            && exec_status.message.contains("--allow-kubeconfig=exec"),
        "{}",
        exec_status.message
    );
    assert_eq!(config(&d).accounts.len(), 1);
    assert!(config(&d).allow_kubeconfig.is_empty());

    let allowing = Defaults {
        allow_kubeconfig: scale_agent_crds::KubeconfigAllow(vec![
            scale_agent_crds::KubeconfigFeature::Exec,
        ]),
        ..defaults()
    };
    let d = decide(
        Fetched {
            shard: &s,
            resolutions: &owned(&["exec", "ok"]),
            secrets: &sec,
            tls_secret: None,
            agent_ca: None,
            replicas: &Replicas::default(),
        },
        &allowing,
        &t(1_000),
    )
    .expect("decides");
    assert_eq!(config(&d).accounts.len(), 2);
    assert_eq!(config(&d).allow_kubeconfig, allowing.allow_kubeconfig);
}

#[test]
fn no_hub_leaves_the_children_alone_and_keeps_what_the_config_carries() {
    let mut s = shard(&["a"]);
    s.spec.hub = None;
    // The stored status shows b in the config; the spec dropped it.
    let d = with_b_in_the_config(&mut s);
    assert!(d.children.is_none() && d.reserve.is_none());
    assert!(
        d.observed
            .config_problem
            .as_ref()
            .is_some_and(|p| p.message.contains("--default-hub"))
    );
    assert_eq!(
        states(&d),
        [
            ("a".into(), AccountState::NoReplica, "NoReplica".into()),
            ("b".into(), AccountState::NoReplica, "Releasing".into()),
        ]
    );
    // a was never in the stored status: recorded now, after every earlier claim.
    assert_eq!(d.observed.accounts[0].claimed_at, Some(t(1_000)));
    assert_eq!(d.observed.accounts[1].claimed_at, Some(t(100)));
}

#[test]
fn the_default_hub_and_image_fill_in() {
    let mut s = shard(&["a"]);
    s.spec.hub = None;
    s.spec.image = None;
    let defaults = Defaults {
        hub: Some("lb:443".into()),
        image: Some("img:2".into()),
        service_account: Some("shared".into()),
        ..Defaults::default()
    };
    let d = decide_a(&s, &Replicas::default(), &defaults, 1);
    assert_eq!(config(&d).hub.address, "lb:443");
    let c = d.children.expect("children");
    assert!(
        c.identity.is_none(),
        "the operator's ServiceAccount is used"
    );
    let pod = c
        .deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod");
    assert_eq!(pod.containers[0].image.as_deref(), Some("img:2"));
    assert_eq!(pod.service_account_name.as_deref(), Some("shared"));
}

#[test]
fn paused_decides_nothing_but_the_status() {
    let mut s = shard(&["a"]);
    s.spec.paused = true;
    let d = run(&s, &BTreeMap::new(), &BTreeMap::new());
    assert!(d.children.is_none() && d.reserve.is_none() && d.observed.paused);
    assert_eq!(d.next, Next::AwaitChange);
}

#[test]
fn the_full_status_of_a_served_shard() {
    let mut s = shard(&["a"]);
    s.spec.replicas = 2;
    let streaming = streaming_replicas(&["a"]);
    let mut d = decide_a(&s, &streaming, &defaults(), 1_000);
    assert!(d.children.as_ref().is_some_and(|c| c.pdb.is_some()));
    d.observed.deployment = Some(DeploymentView {
        desired: 2,
        generation: Some(1),
        observed_generation: Some(1),
        replicas: 2,
        ready: 2,
        updated: 2,
        available_replicas: 2,
        available: Some((true, "MinimumReplicasAvailable".into(), "ok".into())),
    });
    // Ready is Unknown on first sight, then what the replicas and the rollout say.
    let first = status::compute(None, &d.observed, t(1_000));
    assert!(
        first
            .condition(condition_type::READY)
            .is_some_and(|c| c.status == "Unknown")
    );
    let st = status::compute(Some(&first), &d.observed, t(1_000));
    assert!(
        st.condition(condition_type::READY)
            .is_some_and(|c| c.status == "True")
    );
    assert_eq!(st.observed_generation, Some(2));
    assert_eq!(
        (st.replicas, st.ready_replicas, st.active_accounts),
        (2, 2, 1)
    );
}

#[test]
fn a_shard_without_a_uid_is_an_error_not_a_panic() {
    let mut s = shard(&[]);
    s.metadata.uid = None;
    let e = decide(
        Fetched {
            shard: &s,
            resolutions: &BTreeMap::new(),
            secrets: &BTreeMap::new(),
            tls_secret: None,
            agent_ca: None,
            replicas: &Replicas::default(),
        },
        &defaults(),
        &t(1),
    );
    assert!(matches!(
        e,
        Err(Error::MissingField {
            field: "metadata.uid",
            ..
        })
    ));
}

/// Issue 20: an account names which context of a multi-context kubeconfig it uses. The
/// one it names is used (and carried into the agent config); an unknown one, or none
/// when the kubeconfig has several contexts and no current-context, is Invalid with the
/// reason.
#[test]
fn an_accounts_context_picks_one_of_several_and_an_unknown_one_is_invalid() {
    let two = "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster:\n    server: https://192.0.2.1:6443\n- name: b\n  cluster:\n    server: https://192.0.2.2:6443\ncontexts:\n- name: ctx-a\n  context:\n    cluster: a\n- name: ctx-b\n  context:\n    cluster: b\n";
    let mut s = shard(&["named", "unknown", "several"]);
    s.spec.accounts[0].scope.context = Some("ctx-b".into());
    s.spec.accounts[1].scope.context = Some("nope".into());
    let d = run(
        &s,
        &owned(&["named", "unknown", "several"]),
        &secrets(&[
            ("kc-named", secret(Some(two))),
            ("kc-unknown", secret(Some(two))),
            ("kc-several", secret(Some(two))),
        ]),
    );
    let by_name: BTreeMap<&str, _> = d
        .observed
        .accounts
        .iter()
        .map(|a| (a.name.as_str(), a))
        .collect();
    assert_eq!(
        by_name["named"].reason, "NoReplica",
        "{:?}",
        by_name["named"]
    );
    let unknown = by_name["unknown"];
    assert_eq!(
        (unknown.state, unknown.reason.as_str()),
        (AccountState::Invalid, "KubeconfigInvalid")
    );
    assert!(
        unknown.message.contains("\"nope\"") && unknown.message.contains("not among its contexts"),
        "{}",
        unknown.message
    );
    assert!(
        by_name["several"]
            .message
            .contains("set the account's context"),
        "{}",
        by_name["several"].message
    );
    let cfg = config(&d);
    let names: Vec<&str> = cfg.accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["named"]);
    assert_eq!(cfg.accounts[0].scope.context.as_deref(), Some("ctx-b"));
}

/// A Secret as the API server has it: with a uid and a resourceVersion.
fn versioned(data: &str, rv: &str) -> Option<Secret> {
    let mut s = secret(Some(data))?;
    s.metadata.uid = Some("uid-kc".into());
    s.metadata.resource_version = Some(rv.into());
    Some(s)
}

/// What a later reconcile has of Secrets an earlier one read and checked (`d.checked`):
/// their checks, not their data.
fn known(d: &Decision) -> BTreeMap<String, Option<Source>> {
    d.checked
        .iter()
        .map(|(n, c)| {
            (
                n.clone(),
                Some(Source::Known(std::sync::Arc::new(c.clone()))),
            )
        })
        .collect()
}

/// Issue 23: a reconcile of a shard whose kubeconfig Secrets did not change reads none:
/// their checks give the accounts' states, and the agents' kubeconfig Secret is known to
/// be as it should (the same `desired` as when it was written), so it is not written
/// and its Secrets need not be read.
#[test]
fn secrets_known_by_their_check_decide_as_when_read_without_their_data() {
    let s = shard(&["a", "b", "bad"]);
    let r = owned(&["a", "b", "bad"]);
    let read = secrets(&[
        ("kc-a", versioned(KUBECONFIG, "10")),
        ("kc-b", versioned(KUBECONFIG, "11")),
        ("kc-bad", versioned("not: [a kubeconfig", "12")),
    ]);
    let first = run(&s, &r, &read);
    assert_eq!(
        first.checked.keys().collect::<Vec<_>>(),
        ["kc-a", "kc-b", "kc-bad"]
    );
    let written = first
        .children
        .as_ref()
        .expect("children")
        .kubeconfigs
        .clone();
    assert!(written.secret.is_some() && written.unread.is_empty());

    let later = run(&s, &r, &known(&first));
    assert_eq!(states(&later), states(&first));
    assert_eq!(later.observed.accounts, first.observed.accounts);
    assert!(
        later.checked.is_empty(),
        "nothing was read, nothing checked"
    );
    let kc = later
        .children
        .as_ref()
        .expect("children")
        .kubeconfigs
        .clone();
    assert_eq!(
        kc.desired, written.desired,
        "the same content, known without reading"
    );
    assert!(kc.secret.is_none());
    assert_eq!(
        kc.unread.into_iter().collect::<Vec<_>>(),
        ["kc-a", "kc-b"],
        "to write it, the served accounts' Secrets would be read (not the invalid one)"
    );
}

/// A rotated kubeconfig Secret (a new resourceVersion) changes what the agents'
/// kubeconfig Secret must hold, so it is written again, with the new data.
#[test]
fn a_rotated_secret_changes_the_agents_kubeconfig_secret() {
    let s = shard(&["a"]);
    let r = owned(&["a"]);
    let before = run(&s, &r, &secrets(&[("kc-a", versioned(KUBECONFIG, "10"))]));
    let rotated = KUBECONFIG.replace("192.0.2.1", "192.0.2.2");
    let after = run(&s, &r, &secrets(&[("kc-a", versioned(&rotated, "11"))]));
    let (b, a) = (
        &before.children.as_ref().expect("children").kubeconfigs,
        &after.children.as_ref().expect("children").kubeconfigs,
    );
    assert_ne!(a.desired, b.desired);
    let data = a
        .secret
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .expect("data");
    assert_eq!(data["a.kubeconfig"].0, rotated.as_bytes());
}

/// A check that lacks a use an account makes is never taken for a verdict: the
/// reconcile fails (and reads the Secret next time) rather than decide without it.
#[test]
fn a_check_without_the_use_is_an_error_not_a_verdict() {
    let s = shard(&["a"]);
    let r = owned(&["a"]);
    let first = run(&s, &r, &secrets(&[("kc-a", versioned(KUBECONFIG, "10"))]));
    let mut other = first.checked["kc-a"].clone();
    other.verdicts = other
        .verdicts
        .into_iter()
        .map(|(mut u, v)| {
            u.key = "other".into();
            (u, v)
        })
        .collect();
    let sec = [(
        "kc-a".to_owned(),
        Some(Source::Known(std::sync::Arc::new(other))),
    )]
    .into();
    let e = decide(
        Fetched {
            shard: &s,
            resolutions: &r,
            secrets: &sec,
            tls_secret: None,
            agent_ca: None,
            replicas: &Replicas::default(),
        },
        &defaults(),
        &t(1_000),
    )
    .expect_err("unchecked");
    assert_eq!(e.label(), "Unchecked");
}
