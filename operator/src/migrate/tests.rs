//! `scale-agent migrate` on a configuration shaped like a real platform team's: dozens of
//! accounts over three environments sharing a few kubeconfig files, and one account for
//! every field and every way a field can fail to carry over.

use std::collections::BTreeMap;

use scale_agent_crds::{AgentShard, KubeconfigAllow, KubeconfigFeature};

use super::*;

/// A kubeconfig for `cluster` with a bearer token (the secret the notes must never show).
fn kubeconfig(cluster: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: https://{cluster}.k8s.example.com\n    certificate-authority-data: Q0EK\nusers:\n- name: spinnaker\n  user:\n    token: TOKEN-{cluster}-s3cr3t\ncontexts:\n- name: {cluster}\n  context:\n    cluster: {cluster}\n    user: spinnaker\ncurrent-context: {cluster}\n"
    )
}

/// A kubeconfig with one context per region and no current-context.
fn multi_context() -> String {
    let mut k = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for r in ["eu-west-1", "eu-central-1"] {
        k.push_str(&format!(
            "- name: {r}\n  cluster:\n    server: https://{r}.eks.example.com\n"
        ));
    }
    k.push_str("users:\n- name: spinnaker\n  user:\n    token: TOKEN-multi-s3cr3t\ncontexts:\n");
    for r in ["eu-west-1", "eu-central-1"] {
        k.push_str(&format!(
            "- name: {r}\n  context:\n    cluster: {r}\n    user: spinnaker\n"
        ));
    }
    k
}

/// An EKS kubeconfig whose user runs `aws eks get-token` (exec).
fn exec_kubeconfig() -> String {
    "apiVersion: v1\nkind: Config\nclusters:\n- name: eks\n  cluster:\n    server: https://eks.example.com\ncontexts:\n- name: eks\n  context:\n    cluster: eks\n    user: aws\ncurrent-context: eks\nusers:\n- name: aws\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: aws\n      args: [eks, get-token, --cluster-name, eks]\n".to_owned()
}

/// The files the configuration names.
fn files() -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    for env in ["prod", "staging", "dev"] {
        f.insert(
            format!("/opt/spinnaker/kubeconfigs/{env}.yml"),
            kubeconfig(env),
        );
    }
    f.insert(
        "/opt/spinnaker/kubeconfigs/eu.yml".to_owned(),
        multi_context(),
    );
    f.insert("kubeconfigs/eks.yml".to_owned(), exec_kubeconfig());
    f.insert(
        "/opt/spinnaker/kubeconfigs/broken.yml".to_owned(),
        "clusters: [".to_owned(),
    );
    f
}

/// 36 ordinary accounts (12 per environment, sharing their environment's kubeconfig
/// file) and the special ones.
fn config() -> String {
    let mut y = String::from("server:\n  port: 7002\nkubernetes:\n  enabled: true\n  accounts:\n");
    for env in ["prod", "staging", "dev"] {
        for i in 1..=12 {
            y.push_str(&format!(
                "  - name: {env}-team-{i:02}\n    providerVersion: v2\n    environment: {env}\n    accountType: {env}-k8s\n    kubeconfigFile: /opt/spinnaker/kubeconfigs/{env}.yml\n    namespaces: [team-{i:02}, team-{i:02}-jobs]\n    kinds: [deployment, replicaSet, service, configMap, Ingress.networking.k8s.io]\n    onlySpinnakerManaged: {}\n    cacheThreads: 2\n    checkPermissionsOnStartup: true\n    liveManifestCalls: false\n    permissions:\n      READ: [{env}-readers, team-{i:02}]\n      WRITE: [team-{i:02}]\n      EXECUTE: [team-{i:02}]\n    dockerRegistries: []\n    customResources: []\n",
                i % 2 == 0
            ));
        }
    }
    y.push_str(&format!(
        r#"  # Every field, through an inline kubeconfig.
  - name: platform-tools
    environment: platform
    accountType: tools
    kubeconfigContents: |
{}    context: tools
    omitNamespaces: [kube-system, kube-public]
    omitKinds: [secret, podPreset]
    onlySpinnakerManaged: "true"
    cacheThreads: "4"
    permissions:
      READ: [platform]
      WRITE: [platform-admins]
      EXECUTE: [platform-admins]
      CREATE: [platform-admins]
    customResources:
    - kubernetesKind: SealedSecret.bitnami.com
      versioned: false
    cachingPolicies:
    - kubernetesKind: pod
      maxEntriesPerAgent: 1000
    kubectlRequestTimeoutSeconds: 60
  # Two contexts in one file: each account its own.
  - name: eu-west
    environment: prod
    kubeconfigFile: /opt/spinnaker/kubeconfigs/eu.yml
    context: eu-west-1
    namespaces: [checkout, payments]
    omitNamespaces: [kube-system]
    kinds: [deployment]
    omitKinds: [secret]
  - name: eu-central
    environment: prod
    kubeconfigFile: /opt/spinnaker/kubeconfigs/eu.yml
    context: eu-central-1
    requiredGroupMembership: [eu-operators]
  # A relative path, read from the configuration's folder; exec needs an operator flag.
  - name: eks-batch
    kubeconfigFile: kubeconfigs/eks.yml
    namespaces: "batch, batch-nightly"
    kinds: [job, cronJob, "not a kind!"]
  # Clouddriver's own ServiceAccount.
  - name: local
    serviceAccount: true
    namespaces: [spinnaker]
  # What cannot be carried over.
  - name: Legacy_Prod
    kubeconfigFile: /opt/spinnaker/kubeconfigs/prod.yml
  - name: vault-backed
    kubeconfigFile: encryptedFile:s3!r:us-west-2!b:secrets!f:kubeconfig
  - name: missing-file
    kubeconfigFile: /opt/spinnaker/kubeconfigs/gone.yml
  - name: broken
    kubeconfigFile: /opt/spinnaker/kubeconfigs/broken.yml
  - name: no-credentials
    namespaces: [default]
  - name: bad-namespaces
    kubeconfigFile: /opt/spinnaker/kubeconfigs/dev.yml
    namespaces: [Team_A, "team b"]
  - name: bad-roles
    kubeconfigFile: /opt/spinnaker/kubeconfigs/dev.yml
    permissions:
      WRITE: [""]
  - name: multi-no-context
    kubeconfigFile: /opt/spinnaker/kubeconfigs/eu.yml
  - name: prod-team-01
    kubeconfigFile: /opt/spinnaker/kubeconfigs/dev.yml
"#,
        kubeconfig("tools")
            .lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    ));
    y
}

fn options() -> Options {
    Options {
        namespace: "spinnaker".to_owned(),
        shard_prefix: "clouddriver".to_owned(),
        accounts_per_shard: 10,
        group_by: GroupBy::None,
        hub: Some("scale-agent-hub.spinnaker.svc:9090".to_owned()),
        allow: KubeconfigAllow::default(),
    }
}

fn run(options: &Options) -> Plan {
    let (accounts, documents) = read_accounts(&config()).expect("the config reads");
    assert_eq!(documents, 1);
    let files = files();
    plan(&accounts, options, |path| {
        files
            .get(path)
            .map(|k| k.clone().into_bytes())
            .ok_or_else(|| format!("{path}: No such file or directory"))
    })
}

fn notes_of<'a>(plan: &'a Plan, account: &str) -> Vec<&'a Note> {
    plan.notes.iter().filter(|n| n.account == account).collect()
}

fn has_note(plan: &Plan, account: &str, kind: NoteKind, text: &str) -> bool {
    notes_of(plan, account)
        .iter()
        .any(|n| n.kind == kind && n.message.contains(text))
}

fn account<'a>(plan: &'a Plan, name: &str) -> (&'a AgentShard, &'a AccountSpec) {
    plan.shards
        .iter()
        .find_map(|s| {
            s.spec
                .accounts
                .iter()
                .find(|a| a.name == name)
                .map(|a| (s, a))
        })
        .unwrap_or_else(|| panic!("{name} is in no shard"))
}

fn secret_data<'a>(plan: &'a Plan, name: &str) -> &'a [u8] {
    let secret = plan
        .secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no Secret {name}"));
    &secret.data.as_ref().expect("data")["kubeconfig"].0
}

#[test]
fn every_usable_account_lands_in_a_shard_of_at_most_the_size_asked() {
    let plan = run(&options());
    // 36 ordinary accounts, platform-tools, eu-west, eu-central, eks-batch, local.
    assert_eq!(plan.accounts_written, 41, "{:#?}", plan.notes);
    assert_eq!(plan.accounts_read, 50);
    let names: Vec<&str> = plan
        .shards
        .iter()
        .map(|s| s.metadata.name.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "clouddriver-1",
            "clouddriver-2",
            "clouddriver-3",
            "clouddriver-4",
            "clouddriver-5"
        ]
    );
    for shard in &plan.shards {
        assert!(shard.spec.accounts.len() <= 10);
        assert_eq!(shard.metadata.namespace.as_deref(), Some("spinnaker"));
        assert_eq!(
            shard.spec.hub.as_ref().map(|h| h.address.as_str()),
            Some("scale-agent-hub.spinnaker.svc:9090")
        );
        assert_eq!(
            shard
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(CREATED_BY.0)),
            Some(&CREATED_BY.1.to_owned())
        );
    }
    // Config order is kept.
    assert_eq!(plan.shards[0].spec.accounts[0].name, "prod-team-01");
    assert_eq!(plan.shards[4].spec.accounts[0].name, "local");
}

#[test]
fn every_field_clouddriver_and_the_shard_share_is_carried() {
    let plan = run(&options());
    let (_, team) = account(&plan, "staging-team-04");
    assert_eq!(team.scope.namespaces, ["team-04", "team-04-jobs"]);
    assert_eq!(
        team.scope.kinds,
        [
            "deployment",
            "replicaSet",
            "service",
            "configMap",
            "Ingress.networking.k8s.io"
        ]
    );
    assert!(team.scope.only_spinnaker_managed);
    assert!(
        !account(&plan, "staging-team-03")
            .1
            .scope
            .only_spinnaker_managed
    );
    assert_eq!(
        team.spinnaker.permissions.read,
        ["staging-readers", "team-04"]
    );
    assert_eq!(team.spinnaker.permissions.write, ["team-04"]);
    assert_eq!(team.spinnaker.permissions.execute, ["team-04"]);
    assert_eq!(team.spinnaker.environment.as_deref(), Some("staging"));
    assert_eq!(team.spinnaker.account_type.as_deref(), Some("staging-k8s"));
    assert_eq!(team.spinnaker.cache_threads, Some(2));
    assert!(!team.in_cluster);
    // Defaults and empty lists say nothing.
    assert!(
        notes_of(&plan, "staging-team-04").is_empty(),
        "{:#?}",
        notes_of(&plan, "staging-team-04")
    );

    let (_, tools) = account(&plan, "platform-tools");
    assert_eq!(tools.scope.context.as_deref(), Some("tools"));
    assert_eq!(tools.scope.omit_namespaces, ["kube-system", "kube-public"]);
    assert_eq!(tools.scope.omit_kinds, ["secret", "podPreset"]);
    assert!(tools.scope.only_spinnaker_managed, "\"true\" is true");
    assert_eq!(tools.spinnaker.cache_threads, Some(4), "\"4\" is 4");
    assert_eq!(tools.spinnaker.permissions.write, ["platform-admins"]);
    assert_eq!(tools.spinnaker.environment.as_deref(), Some("platform"));
    assert_eq!(
        secret_data(&plan, "kubeconfig-platform-tools"),
        kubeconfig("tools").as_bytes()
    );

    // Two accounts of one multi-context file: one Secret, each its own context.
    let (_, west) = account(&plan, "eu-west");
    let (_, central) = account(&plan, "eu-central");
    assert_eq!(west.scope.context.as_deref(), Some("eu-west-1"));
    assert_eq!(central.scope.context.as_deref(), Some("eu-central-1"));
    let west_secret = west.kubeconfig_secret_ref.as_ref().expect("a Secret");
    assert_eq!(west_secret.name, "kubeconfig-eu-west");
    assert_eq!(west_secret.key, "kubeconfig");
    assert_eq!(
        central.kubeconfig_secret_ref.as_ref().map(|r| &r.name),
        Some(&west_secret.name)
    );
    assert_eq!(west.scope.namespaces, ["checkout", "payments"]);
    assert!(west.scope.omit_namespaces.is_empty() && west.scope.omit_kinds.is_empty());

    // requiredGroupMembership, as Clouddriver reads it.
    assert_eq!(central.spinnaker.permissions.read, ["eu-operators"]);
    assert_eq!(central.spinnaker.permissions.write, ["eu-operators"]);
    assert!(central.spinnaker.permissions.execute.is_empty());

    // A comma-separated string is a list; a bad kind is left out, the others kept.
    let (_, eks) = account(&plan, "eks-batch");
    assert_eq!(eks.scope.namespaces, ["batch", "batch-nightly"]);
    assert_eq!(eks.scope.kinds, ["job", "cronJob"]);

    let (_, local) = account(&plan, "local");
    assert!(local.in_cluster && local.kubeconfig_secret_ref.is_none());
}

#[test]
fn accounts_sharing_a_kubeconfig_share_one_secret() {
    let plan = run(&options());
    // prod, staging, dev, tools, eu, eks.
    assert_eq!(plan.secrets.len(), 6, "{:?}", plan.secrets);
    for env in ["prod", "staging", "dev"] {
        let first = format!("kubeconfig-{env}-team-01");
        assert_eq!(secret_data(&plan, &first), kubeconfig(env).as_bytes());
        for i in 1..=12 {
            let (_, a) = account(&plan, &format!("{env}-team-{i:02}"));
            assert_eq!(
                a.kubeconfig_secret_ref.as_ref().map(|r| r.name.as_str()),
                Some(first.as_str())
            );
        }
    }
    for secret in &plan.secrets {
        assert_eq!(secret.metadata.namespace.as_deref(), Some("spinnaker"));
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    }
}

#[test]
fn what_cannot_be_carried_is_said_per_account_and_never_shows_a_credential() {
    let plan = run(&options());
    let skipped = |account: &str, text: &str| {
        assert!(
            has_note(&plan, account, NoteKind::Skipped, text),
            "{account}: no skip saying {text:?}: {:#?}",
            notes_of(&plan, account)
        );
    };
    skipped("Legacy_Prod", "not a DNS-1123 label");
    skipped("vault-backed", "secret reference (encryptedFile:");
    skipped("missing-file", "cannot read kubeconfigFile");
    skipped("broken", "its kubeconfig cannot be used");
    skipped("no-credentials", "no kubeconfigFile, kubeconfigContents");
    skipped("bad-namespaces", "an empty list would stream them all");
    skipped("bad-roles", "an empty list would let everyone");
    skipped("multi-no-context", "context");
    skipped("prod-team-01", "same name");

    let not_carried = |account: &str, text: &str| {
        assert!(
            has_note(&plan, account, NoteKind::NotCarried, text),
            "{account}: nothing says {text:?} is not carried: {:#?}",
            notes_of(&plan, account)
        );
    };
    not_carried("platform-tools", "customResources");
    not_carried("platform-tools", "cachingPolicies");
    not_carried("platform-tools", "kubectlRequestTimeoutSeconds");
    not_carried("platform-tools", "permissions.CREATE");
    not_carried("eu-west", "omitNamespaces: namespaces is set");
    not_carried("eu-west", "omitKinds: kinds is set");
    not_carried("eks-batch", "kinds entry left out");
    not_carried("bad-namespaces", "namespaces entry left out");
    let noted = |account: &str, text: &str| {
        assert!(
            has_note(&plan, account, NoteKind::Note, text),
            "{account}: no note saying {text:?}: {:#?}",
            notes_of(&plan, account)
        );
    };
    noted("eks-batch", "--allow-kubeconfig=exec");
    noted("local", "inCluster: true");
    noted("eu-central", "requiredGroupMembership becomes permissions");
    // No skipped account is in a shard.
    for name in ["Legacy_Prod", "vault-backed", "broken", "bad-roles"] {
        assert!(
            plan.shards
                .iter()
                .all(|s| s.spec.accounts.iter().all(|a| a.name != name))
        );
    }
    for note in &plan.notes {
        let text = note.to_string();
        assert!(
            !text.contains("s3cr3t") && !text.contains("TOKEN"),
            "{text}"
        );
        assert!(text.len() < 400, "an unbounded note: {text}");
    }
}

#[test]
fn an_allowed_kubeconfig_feature_is_not_noted() {
    let mut options = options();
    options.allow = KubeconfigAllow(vec![KubeconfigFeature::Exec]);
    let plan = run(&options);
    assert!(!has_note(
        &plan,
        "eks-batch",
        NoteKind::Note,
        "allow-kubeconfig"
    ));
}

#[test]
fn grouping_by_environment_keeps_each_shard_to_one_environment() {
    let mut options = options();
    options.group_by = GroupBy::Environment;
    options.accounts_per_shard = 5;
    let plan = run(&options);
    let names: Vec<&str> = plan
        .shards
        .iter()
        .map(|s| s.metadata.name.as_deref().unwrap_or_default())
        .collect();
    // prod: 12 teams + eu-west + eu-central; staging 12; dev 12; platform 1; the
    // accounts without an environment (eks-batch, local) in `default`.
    assert_eq!(
        names,
        [
            "clouddriver-prod-1",
            "clouddriver-prod-2",
            "clouddriver-prod-3",
            "clouddriver-staging-1",
            "clouddriver-staging-2",
            "clouddriver-staging-3",
            "clouddriver-dev-1",
            "clouddriver-dev-2",
            "clouddriver-dev-3",
            "clouddriver-platform-1",
            "clouddriver-default-1",
        ]
    );
    for shard in &plan.shards {
        let envs: BTreeSet<Option<&str>> = shard
            .spec
            .accounts
            .iter()
            .map(|a| a.spinnaker.environment.as_deref())
            .collect();
        assert_eq!(envs.len(), 1, "{:?}", shard.metadata.name);
        assert!(shard.spec.accounts.len() <= 5);
    }
    assert_eq!(plan.accounts_written, 41);
}

#[test]
fn the_manifests_read_back_as_secrets_then_shards() {
    let plan = run(&options());
    let yaml = plan.to_yaml().expect("YAML");
    let mut kinds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("a document");
        kinds.push(v["kind"].as_str().unwrap_or_default().to_owned());
        if v["kind"] == "AgentShard" {
            let shard: AgentShard = serde_yaml::from_value(v).expect("an AgentShard");
            assert!(!shard.spec.accounts.is_empty());
        }
    }
    let secrets = kinds.iter().take_while(|k| *k == "Secret").count();
    assert_eq!(secrets, plan.secrets.len());
    assert!(kinds[secrets..].iter().all(|k| k == "AgentShard"));
    assert_eq!(kinds.len() - secrets, plan.shards.len());
}

#[test]
fn a_field_the_shard_type_lacks_is_reported_not_dropped() {
    let mut notes = Vec::new();
    let mut n = Notes {
        account: "a".to_owned(),
        notes: &mut notes,
    };
    let mut candidate = Map::new();
    candidate.insert("name".into(), json!("a"));
    candidate.insert("namespaces".into(), json!(["x"]));
    candidate.insert("futureSetting".into(), json!(3));
    let kept = through_the_type(candidate, &mut n).expect("the type accepts it");
    assert_eq!(kept, json!({"name": "a", "namespaces": ["x"]}));
    assert_eq!(notes.len(), 1);
    assert!(notes[0].message.starts_with("futureSetting:"), "{notes:?}");
}

#[test]
fn reading_the_configuration() {
    let two = "kubernetes:\n  accounts:\n  - name: a\n---\nspring:\n  profiles: prod\nkubernetes:\n  accounts:\n  - name: b\n";
    let (accounts, documents) = read_accounts(two).expect("reads");
    assert_eq!((accounts.len(), documents), (2, 2));
    assert!(matches!(
        read_accounts("kubernetes:\n  enabled: true\n"),
        Err(MigrateError::NoAccounts)
    ));
    let err = read_accounts("kubernetes:\n  accounts: [\n    kubeconfigContents: s3cr3t")
        .expect_err("not YAML");
    let text = err.to_string();
    assert!(text.contains("line") && !text.contains("s3cr3t"), "{text}");
}

#[test]
fn options_that_would_make_invalid_names_are_refused() {
    assert!(check_options(&options()).is_ok());
    let changes: [fn(&mut Options); 6] = [
        |o: &mut Options| o.namespace = "Spinnaker".to_owned(),
        |o: &mut Options| o.shard_prefix = "cd_".to_owned(),
        |o: &mut Options| o.shard_prefix = "a".repeat(41),
        |o: &mut Options| o.accounts_per_shard = 0,
        |o: &mut Options| o.accounts_per_shard = MAX_ACCOUNTS + 1,
        |o: &mut Options| o.hub = Some("no-port".to_owned()),
    ];
    for change in changes {
        let mut o = options();
        change(&mut o);
        assert!(check_options(&o).is_err(), "{o:?}");
    }
}

#[test]
fn group_names_become_dns_labels() {
    assert_eq!(dns_label("Prod US/East", 20), "prod-us-east");
    assert_eq!(dns_label("--a__b--", 20), "a-b");
    assert_eq!(dns_label("abcdefghij-klmnopqrstu", 11), "abcdefghij");
    assert_eq!(group_of(Some(&Yaml::from("!!!"))), "default");
    assert_eq!(group_of(None), "default");
}
