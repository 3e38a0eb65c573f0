//! Streaming states, certificates, policy and timing.

use k8s_openapi::ByteString;
use k8s_openapi::jiff::Timestamp;
use scale_agent_crds::report::{AccountReport, HubLink, ReplicaReport, StreamState};
use scale_agent_crds::{CONFIG_KEY, HubSpec, LocalObjectRef};

use super::*;
use crate::replicas::ReplicaView;

const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://192.0.2.1:6443\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user: {}\n";
const NOW: i64 = 1_800_000_000;

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).expect("valid"))
}

fn shard(spec: serde_json::Value) -> AgentShard {
    let mut s = AgentShard::new("east", serde_json::from_value(spec).expect("spec"));
    s.metadata.namespace = Some("ns".into());
    s.metadata.uid = Some("uid-1".into());
    s.metadata.generation = Some(1);
    s.metadata.creation_timestamp = Some(t(100));
    s
}

fn one_account() -> AgentShard {
    shard(serde_json::json!({
        "hub": { "address": "hub.example.com:443" },
        "accounts": [{ "name": "a", "kubeconfigSecretRef": { "name": "kc-a" } }]
    }))
}

fn kc() -> BTreeMap<String, Option<Source>> {
    [(
        "kc-a".to_owned(),
        Some(Source::read(Secret {
            data: Some(
                [(
                    "kubeconfig".to_owned(),
                    ByteString(KUBECONFIG.as_bytes().to_vec()),
                )]
                .into(),
            ),
            ..Secret::default()
        })),
    )]
    .into()
}

fn defaults() -> Defaults {
    Defaults {
        image: Some("ghcr.io/scale-agent/scale-agent:v1".into()),
        ..Defaults::default()
    }
}

fn replica(connected: bool, accounts: &[(&str, StreamState)]) -> Replicas {
    Replicas {
        members: vec![ReplicaView {
            replica: "east-agent-x".into(),
            expires: Timestamp::from_second(NOW + 7).expect("t"),
            report: Ok(ReplicaReport {
                hub: HubLink::new(
                    connected,
                    "TLS: reading /etc/scale-agent/tls/ca.crt: No such file",
                ),
                accounts: accounts
                    .iter()
                    .map(|(a, s)| {
                        (
                            (*a).to_owned(),
                            AccountReport::because(
                                *s,
                                if *s == StreamState::Refused {
                                    "NotOwner"
                                } else {
                                    ""
                                },
                                "why",
                            ),
                        )
                    })
                    .collect(),
                truncated: false,
            }),
        }],
        ignored: Vec::new(),
    }
}

fn run_with(
    s: &AgentShard,
    d: &Defaults,
    replicas: &Replicas,
    tls_secret: Option<&Secret>,
    agent_ca: Option<&std::result::Result<AgentCa, String>>,
) -> Decision {
    decide(
        Fetched {
            shard: s,
            resolutions: &[("a".to_owned(), Resolution::Owned)].into(),
            secrets: &kc(),
            tls_secret,
            agent_ca,
            replicas,
        },
        d,
        &t(NOW),
    )
    .expect("decides")
}

fn state(d: &Decision) -> (AccountState, String) {
    let a = &d.observed.accounts[0];
    (a.state, a.reason.clone())
}

#[test]
fn an_account_is_active_only_while_a_live_replica_reports_it_streaming() {
    let s = one_account();
    for (replicas, expected) in [
        (
            replica(true, &[("a", StreamState::Streaming)]),
            (AccountState::Active, "Streaming"),
        ),
        (
            replica(true, &[("a", StreamState::Syncing)]),
            (AccountState::Syncing, "Syncing"),
        ),
        (
            replica(true, &[("a", StreamState::Refused)]),
            (AccountState::RefusedByHub, "NotOwner"),
        ),
        (
            replica(true, &[("a", StreamState::ClusterUnreachable)]),
            (AccountState::ClusterUnreachable, "ClusterUnreachable"),
        ),
        (
            replica(false, &[("a", StreamState::Streaming)]),
            (AccountState::HubUnreachable, "HubUnreachable"),
        ),
        (replica(true, &[]), (AccountState::NoReplica, "NoReplica")),
        (Replicas::default(), (AccountState::NoReplica, "NoReplica")),
    ] {
        let d = run_with(&s, &defaults(), &replicas, None, None);
        assert_eq!(state(&d), (expected.0, expected.1.to_owned()));
        // Every such state keeps the name this shard's.
        assert!(d.observed.accounts[0].state.holds());
    }
}

#[test]
fn the_shard_is_looked_at_again_when_a_replica_lease_expires() {
    let d = run_with(
        &one_account(),
        &defaults(),
        &replica(true, &[("a", StreamState::Streaming)]),
        None,
        None,
    );
    assert_eq!(d.next, Next::At(Duration::from_secs(8)));
    let quiet = run_with(
        &one_account(),
        &defaults(),
        &Replicas::default(),
        None,
        None,
    );
    assert_eq!(quiet.next, Next::Resync);
}

#[test]
fn an_image_or_service_account_not_allowed_is_a_config_problem_and_nothing_rolls_out() {
    let mut s = one_account();
    s.spec.image = Some("attacker.example.com/miner:latest".into());
    let d = run_with(&s, &defaults(), &Replicas::default(), None, None);
    assert!(d.children.is_none());
    assert_eq!(
        d.observed.config_problem.as_ref().map(|p| p.reason),
        Some("ImageNotAllowed")
    );
    let mut s = one_account();
    s.spec.service_account_name = Some("cluster-admin".into());
    let d = run_with(&s, &defaults(), &Replicas::default(), None, None);
    assert_eq!(
        d.observed.config_problem.as_ref().map(|p| p.reason),
        Some("ServiceAccountNotAllowed")
    );
    let allowed = Defaults {
        allowed_images: crate::policy::Allowed::new(["attacker.example.com/*"]),
        ..defaults()
    };
    let mut s = one_account();
    s.spec.image = Some("attacker.example.com/miner:latest".into());
    assert!(
        run_with(&s, &allowed, &Replicas::default(), None, None)
            .children
            .is_some()
    );
}

#[test]
fn a_tls_secret_the_agents_could_not_use_is_reported_not_rolled_out() {
    let mut s = one_account();
    s.spec.hub = Some(HubSpec {
        address: "hub:443".into(),
        tls_secret_ref: Some(LocalObjectRef {
            name: "mtls".into(),
        }),
    });
    let d = run_with(&s, &defaults(), &Replicas::default(), None, None);
    assert!(d.children.is_none());
    let p = d.observed.config_problem.expect("a problem");
    assert_eq!(p.reason, "TlsSecretNotFound");
    assert!(p.message.contains("mtls"), "{}", p.message);
}

#[test]
fn the_operator_issues_the_certificate_mounts_it_and_keeps_it_until_renewal() {
    let ca = test_ca();
    let issuing = Defaults {
        agent_ca: Some(ShardRef::new("system", "ca")),
        cert_lifetime: Duration::from_secs(120),
        ..defaults()
    };
    let d = run_with(
        &one_account(),
        &issuing,
        &Replicas::default(),
        None,
        Some(&Ok(ca.clone_for_test())),
    );
    let c = d.children.expect("children");
    let tls = c.tls.expect("the issued Secret");
    assert_eq!(tls.metadata.name.as_deref(), Some("east-agent-tls"));
    assert_eq!(
        tls.metadata
            .owner_references
            .as_ref()
            .map(|o| o[0].kind.as_str()),
        Some("AgentShard")
    );
    let pod = c
        .deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod");
    assert!(pod.volumes.iter().flatten().any(|v| {
        v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("east-agent-tls")
    }));
    let config =
        AgentConfig::from_yaml(&c.config_map.data.expect("data")[CONFIG_KEY]).expect("config");
    assert!(config.hub.tls.is_some());
    // Renewal due at two thirds of the lifetime (the certificate starts 30 s early).
    assert!(
        matches!(d.next, Next::At(d) if (65..=75).contains(&d.as_secs())),
        "{:?}",
        d.next
    );
    // Next time the same certificate is kept.
    let again = run_with(
        &one_account(),
        &issuing,
        &Replicas::default(),
        Some(&tls),
        Some(&Ok(ca.clone_for_test())),
    );
    assert_eq!(
        again.children.and_then(|c| c.tls).and_then(|s| s.data),
        tls.data
    );
    // A CA that cannot issue is a config problem.
    let broken = run_with(
        &one_account(),
        &issuing,
        &Replicas::default(),
        None,
        Some(&Err("the CA Secret system/ca does not exist".into())),
    );
    assert_eq!(
        broken.observed.config_problem.map(|p| p.reason),
        Some("AgentCaInvalid")
    );
}

/// A CA for tests, as the Secret the operator reads.
struct TestCa(Secret);

impl TestCa {
    fn clone_for_test(&self) -> AgentCa {
        AgentCa::from_secret(&self.0, "system/ca").expect("CA")
    }
}

fn test_ca() -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("cert");
    TestCa(Secret {
        data: Some(
            [
                ("tls.crt".to_owned(), ByteString(cert.pem().into_bytes())),
                (
                    "tls.key".to_owned(),
                    ByteString(key.serialize_pem().into_bytes()),
                ),
            ]
            .into(),
        ),
        ..Secret::default()
    })
}

#[test]
fn an_in_cluster_account_needs_no_kubeconfig() {
    let s = shard(serde_json::json!({
        "hub": { "address": "hub.example.com:443" },
        "accounts": [{ "name": "a", "inCluster": true }]
    }));
    let d = run_with(&s, &defaults(), &Replicas::default(), None, None);
    assert_eq!(d.observed.accounts[0].state, AccountState::NoReplica);
    let c = d.children.expect("children");
    let config =
        AgentConfig::from_yaml(&c.config_map.data.expect("data")[CONFIG_KEY]).expect("config");
    assert!(config.accounts[0].in_cluster);
    assert!(
        c.kubeconfigs
            .secret
            .and_then(|s| s.data)
            .unwrap_or_default()
            .is_empty()
    );
}
