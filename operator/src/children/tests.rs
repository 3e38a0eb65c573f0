//! Tests of `children.rs`.

use super::*;
use scale_agent_crds::{AgentShardSpec, HubSpec, LocalObjectRef};

fn shard(accounts: &[&str]) -> AgentShard {
    let mut s = AgentShard::new(
        "east",
        AgentShardSpec {
            replicas: 1,
            hub: Some(HubSpec {
                address: "hub.example.com:443".into(),
                tls_secret_ref: None,
            }),
            accounts: accounts
                .iter()
                .map(|n| AccountSpec::new(*n, format!("kc-{n}")))
                .collect(),
            budget: Default::default(),
            image: Some("example.com/agent:1".into()),
            image_pull_policy: None,
            resources: None,
            node_selector: None,
            tolerations: None,
            affinity: None,
            pod_labels: None,
            pod_annotations: None,
            image_pull_secrets: None,
            priority_class_name: None,
            topology_spread_constraints: None,
            service_account_name: None,
            paused: false,
        },
    );
    s.metadata.namespace = Some("ns".into());
    s.metadata.uid = Some("uid-1".into());
    s
}

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "scaleagent.dev/v1alpha1".into(),
        kind: "AgentShard".into(),
        name: "east".into(),
        uid: "uid-1".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn template(s: &AgentShard) -> PodTemplateSpec {
    let r = ShardRef::new("ns", "east");
    let d = deployment(
        &r,
        s,
        &owner(),
        "img:1",
        "east-agent",
        None,
        LogFormat::Text,
    );
    d.spec.expect("spec").template
}

#[test]
fn agents_log_json_only_when_the_operator_says_so() {
    let r = ShardRef::new("ns", "east");
    let args = |format| {
        deployment(&r, &shard(&["a"]), &owner(), "img:1", "sa", None, format)
            .spec
            .and_then(|s| s.template.spec)
            .map(|p| p.containers[0].args.clone().unwrap_or_default())
            .unwrap_or_default()
    };
    assert!(args(LogFormat::Json).contains(&"--log-format=json".to_owned()));
    // Text is the agent's default: no argument, so existing Deployments do not change.
    assert!(
        !args(LogFormat::Text)
            .iter()
            .any(|a| a.starts_with("--log-format"))
    );
}

#[test]
fn accounts_do_not_change_the_pod_template() {
    let one = shard(&["a"]);
    let three = shard(&["a", "b", "c"]);
    let mut edited = shard(&["a"]);
    edited.spec.accounts[0].scope.namespaces = vec!["x".into()];
    assert_eq!(template(&one), template(&three));
    assert_eq!(template(&one), template(&edited));
}

#[test]
fn agents_get_default_resources_unless_the_shard_sets_its_own() {
    let resources = |s: &AgentShard| {
        template(s).spec.expect("pod").containers[0]
            .resources
            .clone()
    };
    let defaults = resources(&shard(&["a"])).expect("default resources");
    let q = |r: &Option<BTreeMap<String, Quantity>>, k: &str| {
        r.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone())
    };
    // Not BestEffort, and admitted where a ResourceQuota counts requests or limits.
    for k in ["cpu", "memory"] {
        assert!(q(&defaults.requests, k).is_some(), "request {k}");
        assert!(q(&defaults.limits, k).is_some(), "limit {k}");
    }
    assert_eq!(q(&defaults.limits, "memory").as_deref(), Some("512Mi"));

    let mut own = shard(&["a"]);
    let mine = ResourceRequirements {
        requests: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("1Gi".into()),
        )])),
        ..ResourceRequirements::default()
    };
    own.spec.resources = Some(mine.clone());
    assert_eq!(resources(&own), Some(mine));
}

#[test]
fn image_resources_and_tls_change_the_pod_template() {
    let base = shard(&["a"]);
    let r = ShardRef::new("ns", "east");
    let t1 = deployment(&r, &base, &owner(), "img:1", "sa", None, LogFormat::Text)
        .spec
        .expect("spec")
        .template;
    let t2 = deployment(&r, &base, &owner(), "img:2", "sa", None, LogFormat::Text)
        .spec
        .expect("spec")
        .template;
    assert_ne!(t1, t2);
    let t3 = deployment(
        &r,
        &base,
        &owner(),
        "img:1",
        "sa",
        Some("mtls"),
        LogFormat::Text,
    )
    .spec
    .expect("spec")
    .template;
    assert_ne!(t1, t3);
}

#[test]
fn tls_comes_from_the_shard_then_the_operators_certificates_then_the_default_secret() {
    let defaults = Defaults {
        hub: Some("lb:443".into()),
        hub_tls_secret: Some("agent-mtls-{shard}".into()),
        ..Defaults::default()
    };
    let s = shard(&["a"]);
    let mut bare = s.clone();
    bare.spec.hub = None;
    assert_eq!(
        tls_source(&bare, &defaults),
        TlsSource::Secret("agent-mtls-east".into())
    );
    // A shard with its own hub and no Secret talks plain text, unless the operator
    // issues certificates.
    assert_eq!(tls_source(&s, &defaults), TlsSource::None);
    let issuing = Defaults {
        agent_ca: Some(ShardRef::new("system", "ca")),
        ..defaults.clone()
    };
    assert_eq!(
        tls_source(&s, &issuing),
        TlsSource::Issued("east-agent-tls".into())
    );
    assert_eq!(
        tls_source(&bare, &issuing),
        TlsSource::Issued("east-agent-tls".into())
    );
    let cert_manager = Defaults {
        cert_issuer: Some("ClusterIssuer/ca".parse().expect("issuer")),
        ..defaults.clone()
    };
    assert_eq!(
        tls_source(&bare, &cert_manager),
        TlsSource::CertManager("east-agent-tls".into())
    );
    // The shard's own Secret always wins.
    let mut own = s.clone();
    own.spec.hub = Some(HubSpec {
        address: "hub:443".into(),
        tls_secret_ref: Some(LocalObjectRef {
            name: "mine".into(),
        }),
    });
    assert_eq!(tls_source(&own, &issuing), TlsSource::Secret("mine".into()));
    // The TLS Secret is mounted and the config points at its files.
    let d = deployment(
        &ShardRef::new("ns", "east"),
        &bare,
        &owner(),
        "img:1",
        "sa",
        Some("agent-mtls-east"),
        LogFormat::Text,
    );
    let vols = d
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.volumes)
        .unwrap_or_default();
    assert!(vols.iter().any(
        |v| v.secret.as_ref().and_then(|x| x.secret_name.as_deref()) == Some("agent-mtls-east")
    ));
    let c = agent_config(&ShardRef::new("ns", "east"), &s, "hub:443", &[], true).expect("config");
    assert_eq!(
        c.hub.tls.map(|t| t.cert_file).as_deref(),
        Some("/etc/scale-agent/tls/tls.crt")
    );
}

#[test]
fn agent_pods_pass_pod_security_restricted() {
    let mut s = shard(&["a"]);
    s.spec.priority_class_name = Some("high".into());
    s.spec.image_pull_secrets = Some(vec![k8s_openapi::api::core::v1::LocalObjectReference {
        name: "regcred".into(),
    }]);
    let pod = template(&s).spec.expect("pod");
    let psc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let sc = pod.containers[0]
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_owned()])
    );
    assert!(sc.capabilities.as_ref().is_some_and(|c| c.add.is_none()));
    assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
    assert_eq!(
        pod.image_pull_secrets.map(|s| s[0].name.clone()).as_deref(),
        Some("regcred")
    );
    let env: Vec<String> = pod.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect();
    assert!(env.contains(&"POD_UID".to_owned()), "{env:?}");
}

#[test]
fn a_certificate_for_cert_manager_names_the_shard() {
    let c = certificate(
        &ShardRef::new("ns", "east"),
        "east-agent-tls",
        &"Issuer/agents".parse().expect("issuer"),
        Duration::from_secs(86_400),
    );
    assert_eq!(
        c.types.as_ref().map(|t| t.api_version.as_str()),
        Some("cert-manager.io/v1")
    );
    let spec = &c.data["spec"];
    assert_eq!(spec["uris"][0], "spiffe://scaleagent.dev/ns/ns/shard/east");
    assert_eq!(spec["secretName"], "east-agent-tls");
    assert_eq!(spec["issuerRef"]["kind"], "Issuer");
    assert_eq!(spec["duration"], "86400s");
    assert_eq!(spec["renewBefore"], "28800s");
    assert_eq!(spec["privateKey"]["encoding"], "PKCS8");
    assert!("Other/x".parse::<IssuerRef>().is_err());
    assert_eq!(
        "ca".parse::<IssuerRef>().map(|i| i.kind),
        Ok("ClusterIssuer".to_owned())
    );
}

#[test]
fn selector_labels_win_over_pod_labels() {
    let mut s = shard(&[]);
    s.spec.pod_labels = Some(BTreeMap::from([
        (SHARD_LABEL.to_owned(), "other".to_owned()),
        ("team".to_owned(), "x".to_owned()),
    ]));
    let labels = template(&s)
        .metadata
        .and_then(|m| m.labels)
        .expect("labels");
    assert_eq!(labels[SHARD_LABEL], "east");
    assert_eq!(labels["team"], "x");
}

#[test]
fn pdb_only_with_more_than_one_replica() {
    let r = ShardRef::new("ns", "east");
    let mut s = shard(&[]);
    assert!(pdb(&r, &s, &owner()).is_none());
    s.spec.replicas = 2;
    assert!(pdb(&r, &s, &owner()).is_some());
}

#[test]
fn agent_config_lists_only_the_given_accounts() {
    let s = shard(&["a", "b"]);
    let r = ShardRef::new("ns", "east");
    let served = [&s.spec.accounts[1]];
    let c = agent_config(&r, &s, "hub:443", &served, false).expect("valid");
    assert_eq!(c.accounts.len(), 1);
    assert_eq!(c.accounts[0].name, "b");
    assert_eq!(c.accounts[0].kubeconfig_file, "b.kubeconfig");
    assert_eq!(c.budget.max_buffered_bytes, 64 << 20);
    let yaml = c.to_yaml().expect("yaml");
    assert_eq!(AgentConfig::from_yaml(&yaml).expect("reads back"), c);
}

#[test]
fn children_carry_the_controller_owner_reference() {
    let r = ShardRef::new("ns", "east");
    let cm = config_map(&r, &owner(), String::new());
    let refs = cm.metadata.owner_references.expect("refs");
    assert_eq!(refs[0].controller, Some(true));
    assert_eq!(cm.metadata.name.as_deref(), Some("east-agent-config"));
}
