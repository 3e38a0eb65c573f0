//! The agent config file: round trips, the shape on disk, and every validation error.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use scale_agent_crds::{
    AccountConfig, AccountScope, AccountSpec, AgentConfig, Budget, BudgetConfig, ConfigError,
    HubConfig, ShardRef, TlsConfig, kubeconfig_file_name,
};

fn account(name: &str) -> AccountConfig {
    AccountConfig::new(name)
}

fn config() -> AgentConfig {
    AgentConfig {
        shard: ShardRef::new("spinnaker", "prod-east"),
        hub: HubConfig {
            address: "clouddriver-grpc.example.com:443".to_owned(),
            tls: Some(TlsConfig {
                ca_file: "/etc/scale-agent/tls/ca.crt".to_owned(),
                cert_file: "/etc/scale-agent/tls/tls.crt".to_owned(),
                key_file: "/etc/scale-agent/tls/tls.key".to_owned(),
                server_name: None,
            }),
        },
        accounts: vec![
            AccountConfig {
                scope: AccountScope {
                    omit_namespaces: vec!["kube-system".to_owned()],
                    ..AccountScope::default()
                },
                ..account("prod-east-1")
            },
            AccountConfig {
                scope: AccountScope {
                    context: Some("prod-east-2-admin".to_owned()),
                    namespaces: vec!["apps".to_owned()],
                    kinds: vec![
                        "Deployment".to_owned(),
                        "Ingress.networking.k8s.io".to_owned(),
                    ],
                    only_spinnaker_managed: true,
                    ..AccountScope::default()
                },
                ..account("prod-east-2")
            },
        ],
        budget: BudgetConfig {
            concurrent_syncs: 4,
            max_buffered_bytes: 64 << 20,
        },
        allow_kubeconfig: Default::default(),
    }
}

fn error_of(config: &AgentConfig) -> ConfigError {
    let err = config.validate().expect_err("the config is invalid");
    // What validate says, from_yaml says too.
    let yaml = config.to_yaml().expect("writes");
    let again = AgentConfig::from_yaml(&yaml).expect_err("reading refuses it too");
    assert_eq!(err.to_string(), again.to_string());
    err
}

/// `config` is refused for an empty `field`.
fn assert_empty(config: &AgentConfig, field: &str) {
    let err = error_of(config);
    assert!(
        matches!(err, ConfigError::Empty { field: f } if f == field),
        "{err}"
    );
}

#[test]
fn round_trips_through_yaml() {
    let config = config();
    config.validate().expect("the example is valid");
    let yaml = config.to_yaml().expect("writes");
    assert_eq!(AgentConfig::from_yaml(&yaml).expect("reads back"), config);
}

#[test]
fn the_file_is_camel_case_and_omits_empty_lists() {
    let yaml = config().to_yaml().expect("writes");
    let value: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("yaml");
    assert_eq!(value["shard"]["namespace"].as_str(), Some("spinnaker"));
    assert_eq!(value["shard"]["name"].as_str(), Some("prod-east"));
    assert_eq!(
        value["hub"]["tls"]["caFile"].as_str(),
        Some("/etc/scale-agent/tls/ca.crt")
    );
    assert!(value["hub"]["tls"].get("serverName").is_none());
    let first = &value["accounts"][0];
    assert_eq!(
        first["kubeconfigFile"].as_str(),
        Some("prod-east-1.kubeconfig")
    );
    assert_eq!(first["omitNamespaces"][0].as_str(), Some("kube-system"));
    assert!(first.get("namespaces").is_none(), "{yaml}");
    assert!(first.get("onlySpinnakerManaged").is_none(), "{yaml}");
    assert!(first.get("context").is_none(), "{yaml}");
    let second = &value["accounts"][1];
    assert_eq!(second["context"].as_str(), Some("prod-east-2-admin"));
    assert_eq!(second["onlySpinnakerManaged"].as_bool(), Some(true));
    assert_eq!(value["budget"]["concurrentSyncs"].as_u64(), Some(4));
    assert_eq!(value["budget"]["maxBufferedBytes"].as_u64(), Some(64 << 20));
}

#[test]
fn reads_the_documented_example_with_defaults() {
    let yaml = r#"
shard: { namespace: spinnaker, name: prod-east }
hub: { address: "hub.spinnaker.svc:9091" }
accounts:
  - name: prod-east-1
    kubeconfigFile: prod-east-1.kubeconfig
"#;
    let config = AgentConfig::from_yaml(yaml).expect("valid");
    assert_eq!(config.hub.tls, None);
    assert_eq!(config.budget, BudgetConfig::default());
    assert_eq!(config.budget.concurrent_syncs, 4);
    assert_eq!(config.budget.max_buffered_bytes, 64 << 20);
    let account = config.account("prod-east-1").expect("listed");
    assert!(account.scope.namespaces.is_empty() && account.scope.kinds.is_empty());
    assert!(!account.scope.only_spinnaker_managed);
    assert!(config.account("other").is_none());
}

#[test]
fn unknown_fields_are_tolerated() {
    // A newer operator may write fields an older agent does not know yet.
    let yaml = r#"
shard: { namespace: s, name: n }
hub: { address: "hub:1", futureOption: true }
"#;
    AgentConfig::from_yaml(yaml).expect("valid");
}

#[test]
fn yaml_errors_say_where() {
    let err = AgentConfig::from_yaml("shard: [\n").expect_err("not yaml");
    assert_eq!(err.label(), "ParseYaml");
    let err = AgentConfig::from_yaml("shard: { namespace: s, name: n }\n").expect_err("no hub");
    assert!(err.to_string().contains("hub"), "{err}");
    let yaml = "shard: { namespace: s, name: n }\nhub: { address: 'h:1' }\nbudget: { concurrentSyncs: -1, maxBufferedBytes: 1 }\n";
    let err = AgentConfig::from_yaml(yaml).expect_err("negative");
    assert!(err.to_string().contains("line"), "{err}");
}

#[test]
fn duplicate_accounts() {
    let mut config = config();
    config.accounts.push(account("prod-east-1"));
    let err = error_of(&config);
    assert!(matches!(&err, ConfigError::DuplicateAccount { name } if name == "prod-east-1"));
    assert_eq!(
        err.to_string(),
        r#"account "prod-east-1" is listed more than once"#
    );
}

#[test]
fn hub_address() {
    let mut config = config();
    config.hub.address = String::new();
    assert_empty(&config, "hub.address");

    config.hub.address = "https://hub:443".to_owned();
    let err = error_of(&config);
    assert_eq!(err.label(), "InvalidHubAddress");
    assert!(err.to_string().contains("https://hub:443"), "{err}");

    config.hub.address = "hub".to_owned();
    assert!(error_of(&config).to_string().contains("no :port"));
}

#[test]
fn tls_files() {
    let mut config = config();
    if let Some(tls) = config.hub.tls.as_mut() {
        tls.key_file.clear();
    }
    assert_empty(&config, "hub.tls.keyFile");
}

#[test]
fn shard_ref() {
    let mut config = config();
    config.shard.namespace.clear();
    assert_empty(&config, "shard.namespace");
    let mut config = self::config();
    config.shard.name.clear();
    assert_empty(&config, "shard.name");
}

#[test]
fn an_account_context_is_not_empty() {
    let mut config = config();
    config.accounts[0].scope.context = Some(String::new());
    assert_empty(&config, "accounts[].context");
}

#[test]
fn budget() {
    let mut config = config();
    config.budget.concurrent_syncs = 0;
    let err = error_of(&config);
    assert_eq!(err.label(), "InvalidBudget");
    assert!(err.to_string().contains("concurrentSyncs"), "{err}");

    let mut config = self::config();
    config.budget.max_buffered_bytes = 0;
    assert!(error_of(&config).to_string().contains("maxBufferedBytes"));
}

#[test]
fn account_names() {
    for bad in ["", "Prod", "prod_east", "-prod", "prod-"] {
        let mut config = config();
        config.accounts[0].name = bad.to_owned();
        let err = error_of(&config);
        assert_eq!(err.label(), "InvalidName", "{bad:?}: {err}");
        assert!(err.to_string().contains("account name"), "{err}");
    }
}

#[test]
fn namespaces_must_be_names() {
    let mut config = config();
    config.accounts[0].scope.omit_namespaces = vec!["Kube_System".to_owned()];
    let err = error_of(&config);
    assert_eq!(err.label(), "InvalidName");
    assert!(
        err.to_string()
            .contains(r#"namespace of account "prod-east-1""#),
        "{err}"
    );
}

#[test]
fn kubeconfig_files_stay_in_their_directory() {
    for bad in [
        "",
        ".",
        "..",
        "../etc/passwd",
        "/etc/kubeconfig",
        "a/b",
        "a\\b",
    ] {
        let mut config = config();
        config.accounts[0].kubeconfig_file = bad.to_owned();
        let err = error_of(&config);
        assert_eq!(err.label(), "InvalidKubeconfigFile", "{bad:?}: {err}");
        assert!(err.to_string().contains("prod-east-1"), "{err}");
    }
    let mut config = config();
    config.accounts[0].kubeconfig_file = "..kube.config".to_owned();
    config
        .validate()
        .expect("a dotted name is a plain file name");
}

#[test]
fn include_and_exclude_lists_are_exclusive() {
    let mut config = config();
    config.accounts[0].scope.namespaces = vec!["apps".to_owned()];
    let err = error_of(&config);
    assert_eq!(
        err.to_string(),
        r#"account "prod-east-1": namespaces and omitNamespaces cannot both be set; use one of them"#
    );

    let mut config = self::config();
    config.accounts[1].scope.omit_kinds = vec!["Secret".to_owned()];
    let err = error_of(&config);
    assert!(
        matches!(&err, ConfigError::ConflictingFilters { account, include: "kinds", exclude: "omitKinds" } if account == "prod-east-2"),
        "{err}"
    );
}

#[test]
fn budget_from_spec() {
    assert_eq!(
        BudgetConfig::from_spec(&Budget::default()).expect("the default is valid"),
        BudgetConfig::default()
    );
    let budget = Budget {
        concurrent_syncs: 8,
        max_buffered_bytes: Quantity("1.5Gi".to_owned()),
    };
    assert_eq!(
        BudgetConfig::from_spec(&budget).expect("valid"),
        BudgetConfig {
            concurrent_syncs: 8,
            max_buffered_bytes: 3 << 29,
        }
    );
    for (syncs, bytes, label) in [
        (-1, "1Mi", "InvalidBudget"),
        (0, "1Mi", "InvalidBudget"),
        (1, "0", "InvalidBudget"),
        (1, "0.5", "InvalidQuantity"),
        (1, "-1Mi", "InvalidQuantity"),
        (1, "64MB", "InvalidQuantity"),
    ] {
        let budget = Budget {
            concurrent_syncs: syncs,
            max_buffered_bytes: Quantity(bytes.to_owned()),
        };
        let err = BudgetConfig::from_spec(&budget).expect_err("invalid");
        assert_eq!(err.label(), label, "{syncs} {bytes}: {err}");
    }
}

#[test]
fn account_from_spec() {
    let scope = AccountScope {
        context: Some("admin@prod-east-1".to_owned()),
        namespaces: vec!["apps".to_owned()],
        omit_kinds: vec!["Secret".to_owned()],
        only_spinnaker_managed: true,
        ..AccountScope::default()
    };
    let spec = AccountSpec {
        scope: scope.clone(),
        ..AccountSpec::new("prod-east-1", "kc-prod-east-1")
    };
    let config = AccountConfig::from_spec(&spec, kubeconfig_file_name(&spec.name));
    assert_eq!(
        config,
        AccountConfig {
            scope,
            ..account("prod-east-1")
        }
    );
    config.validate().expect("valid");
}

/// `validate_kind` and `validate_namespace` (what `scale-agent migrate` checks each entry
/// with before it writes a shard) accept exactly what the CRD's patterns accept.
#[test]
fn kind_and_namespace_checks_agree_with_the_crd_patterns() {
    use scale_agent_crds::{DNS_LABEL_PATTERN, KIND_PATTERN, validate_kind, validate_namespace};
    let kind = regex::Regex::new(KIND_PATTERN).expect("KIND_PATTERN compiles");
    let label = regex::Regex::new(DNS_LABEL_PATTERN).expect("DNS_LABEL_PATTERN compiles");
    let samples = [
        "Deployment",
        "deployment",
        "replicaSet",
        "ConfigMap",
        "Ingress.networking.k8s.io",
        "ingress.networking.k8s.io",
        "SealedSecret.bitnami.com",
        "v1",
        "a",
        "",
        "1Pod",
        "Pod.",
        ".Pod",
        "Pod..apps",
        "Pod.Apps",
        "Pod.-apps",
        "Pod.apps-",
        "Pod-x",
        "Pod_x",
        "Pod.ap_ps",
        "kube-system",
        "team-a",
        "-team",
        "team-",
        "Team",
        "a.b",
        "ünicode",
    ];
    for s in samples {
        assert_eq!(
            validate_kind(s).is_ok(),
            kind.is_match(s),
            "validate_kind({s:?})"
        );
        let ns_ok = label.is_match(s) && s.len() <= 63;
        assert_eq!(
            validate_namespace(s).is_ok(),
            ns_ok,
            "validate_namespace({s:?})"
        );
    }
    let long_group = format!("Pod.{}", ["abcdefghij"; 25].join("."));
    assert!(long_group.len() > 253 && kind.is_match(&long_group));
    assert!(
        validate_kind(&long_group).is_err(),
        "the CRD's maxLength is 253"
    );
}
