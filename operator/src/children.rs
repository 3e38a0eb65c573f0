//! What a shard becomes: its agent config and the objects the operator applies for it
//! (ConfigMap, kubeconfig Secret, ServiceAccount + Role + RoleBinding, Deployment,
//! PodDisruptionBudget). Pure functions of the shard, the accounts it serves and the
//! operator's defaults.
//!
//! The pod template depends only on what should restart the agents (image, resources,
//! scheduling, the hub's TLS Secret...). Accounts reach running agents through the
//! mounted ConfigMap and Secret, which kubelet refreshes in place: the template carries
//! no hash of them, so adding, removing or editing an account never rolls the pods.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, Secret,
    SecretVolumeSource, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use scale_agent_crds::{
    AccountConfig, AccountSpec, AgentConfig, AgentShard, BudgetConfig, ConfigError, HubConfig,
    KubeconfigAllow, ShardRef, TlsConfig, config_map_name, deployment_name, kubeconfig_file_name,
    kubeconfig_secret_name,
};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "scale-agent-operator";
/// Where the agent config is mounted (a directory, so kubelet can refresh it).
pub const CONFIG_DIR: &str = "/etc/scale-agent/config";
/// Where the kubeconfigs are mounted.
pub const KUBECONFIG_DIR: &str = "/etc/scale-agent/kubeconfigs";
/// Where the hub mTLS Secret is mounted.
pub const TLS_DIR: &str = "/etc/scale-agent/tls";
/// The agent's admin port (/metrics, /healthz, /readyz).
pub const ADMIN_PORT: i32 = 8080;
/// The label naming the shard on every child and agent pod.
pub const SHARD_LABEL: &str = "scaleagent.dev/shard";

/// The operator's defaults for what a shard may leave out.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    /// Hub address for shards without spec.hub.
    pub hub: Option<String>,
    /// Agent image for shards without spec.image.
    pub image: Option<String>,
    /// ServiceAccount for shards without spec.serviceAccountName; `None`: a per-shard one.
    pub service_account: Option<String>,
    /// TLS Secret (in the shard's namespace) for shards without spec.hub; `{shard}` in the
    /// name is replaced by the shard's name, since each shard's certificate names it.
    pub hub_tls_secret: Option<String>,
    /// Kubeconfig features accounts may use (`--allow-kubeconfig`); none by default.
    pub allow_kubeconfig: KubeconfigAllow,
}

/// The shard as the operator builds its children: a shard that leaves `spec.hub` out gets
/// the default hub and, when one is set, the default TLS Secret. Only the in-memory copy
/// changes; the stored object is not touched.
pub fn with_defaults<'a>(
    shard: &'a AgentShard,
    defaults: &Defaults,
) -> std::borrow::Cow<'a, AgentShard> {
    match (&shard.spec.hub, &defaults.hub, &defaults.hub_tls_secret) {
        (None, Some(address), Some(secret)) => {
            let name = shard.metadata.name.clone().unwrap_or_default();
            let mut s = shard.clone();
            s.spec.hub = Some(scale_agent_crds::HubSpec {
                address: address.clone(),
                tls_secret_ref: Some(scale_agent_crds::LocalObjectRef {
                    name: secret.replace("{shard}", &name),
                }),
            });
            std::borrow::Cow::Owned(s)
        }
        _ => std::borrow::Cow::Borrowed(shard),
    }
}

/// Labels on every child of `shard`.
pub fn labels(shard: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(shard);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        FIELD_MANAGER.to_owned(),
    );
    l
}

/// The labels selecting `shard`'s agent pods.
pub fn selector_labels(shard: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "scale-agent".to_owned(),
        ),
        ("app.kubernetes.io/component".to_owned(), "agent".to_owned()),
        (SHARD_LABEL.to_owned(), shard.to_owned()),
    ])
}

/// The hub address a shard streams to: its own, else the default.
pub fn hub_address<'a>(shard: &'a AgentShard, defaults: &'a Defaults) -> Option<&'a str> {
    shard
        .spec
        .hub
        .as_ref()
        .map(|h| h.address.as_str())
        .or(defaults.hub.as_deref())
}

/// The agent image of a shard: its own, else the default.
pub fn image<'a>(shard: &'a AgentShard, defaults: &'a Defaults) -> Option<&'a str> {
    shard.spec.image.as_deref().or(defaults.image.as_deref())
}

/// The ServiceAccount the agent pods run as.
pub fn service_account_name(shard: &AgentShard, defaults: &Defaults) -> String {
    shard
        .spec
        .service_account_name
        .clone()
        .or_else(|| defaults.service_account.clone())
        .unwrap_or_else(|| deployment_name(&shard.metadata.name.clone().unwrap_or_default()))
}

/// The agent config: `hub`, the `accounts` the shard serves (already filtered to those it
/// owns and can use), and its budget. Validated.
pub fn agent_config(
    shard_ref: &ShardRef,
    shard: &AgentShard,
    hub: &str,
    accounts: &[&AccountSpec],
) -> Result<AgentConfig, ConfigError> {
    let tls = shard
        .spec
        .hub
        .as_ref()
        .and_then(|h| h.tls_secret_ref.as_ref())
        .map(|_| TlsConfig {
            ca_file: format!("{TLS_DIR}/ca.crt"),
            cert_file: format!("{TLS_DIR}/tls.crt"),
            key_file: format!("{TLS_DIR}/tls.key"),
            server_name: None,
        });
    let config = AgentConfig {
        shard: shard_ref.clone(),
        hub: HubConfig {
            address: hub.to_owned(),
            tls,
        },
        accounts: accounts
            .iter()
            .map(|a| AccountConfig::from_spec(a, kubeconfig_file_name(&a.name)))
            .collect(),
        budget: BudgetConfig::from_spec(&shard.spec.budget)?,
        allow_kubeconfig: KubeconfigAllow::default(),
    };
    config.validate()?;
    Ok(config)
}

fn meta(shard: &ShardRef, name: String, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(shard.namespace.clone()),
        labels: Some(labels(&shard.name)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The ConfigMap `<shard>-agent-config` with the agent config as YAML.
pub fn config_map(shard: &ShardRef, owner: &OwnerReference, config_yaml: String) -> ConfigMap {
    ConfigMap {
        metadata: meta(shard, config_map_name(&shard.name), owner),
        data: Some(BTreeMap::from([(
            scale_agent_crds::CONFIG_KEY.to_owned(),
            config_yaml,
        )])),
        ..ConfigMap::default()
    }
}

/// The Secret `<shard>-agent-kubeconfigs`: one key `<account>.kubeconfig` per account
/// served, copied from the user's Secrets.
pub fn kubeconfig_secret(
    shard: &ShardRef,
    owner: &OwnerReference,
    kubeconfigs: &BTreeMap<String, Vec<u8>>,
) -> Secret {
    Secret {
        metadata: meta(shard, kubeconfig_secret_name(&shard.name), owner),
        type_: Some("Opaque".to_owned()),
        data: Some(
            kubeconfigs
                .iter()
                .map(|(account, bytes)| (kubeconfig_file_name(account), ByteString(bytes.clone())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The per-shard ServiceAccount `<shard>-agent`.
pub fn service_account(shard: &ShardRef, owner: &OwnerReference) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(shard, deployment_name(&shard.name), owner),
        ..ServiceAccount::default()
    }
}

/// The Role of the per-shard ServiceAccount: the coordination Leases the replicas use to
/// split the accounts, and reading the Pods that prove a Lease is a replica's.
pub fn role(shard: &ShardRef, owner: &OwnerReference) -> Role {
    Role {
        metadata: meta(shard, deployment_name(&shard.name), owner),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods".to_owned()]),
                verbs: vec!["get".to_owned(), "list".to_owned()],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec!["coordination.k8s.io".to_owned()]),
                resources: Some(vec!["leases".to_owned()]),
                verbs: [
                    "get", "list", "watch", "create", "update", "patch", "delete",
                ]
                .iter()
                .map(|v| (*v).to_owned())
                .collect(),
                ..PolicyRule::default()
            },
        ]),
    }
}

/// Binds [`role`] to [`service_account`].
pub fn role_binding(shard: &ShardRef, owner: &OwnerReference) -> RoleBinding {
    let name = deployment_name(&shard.name);
    RoleBinding {
        metadata: meta(shard, name.clone(), owner),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name,
            namespace: Some(shard.namespace.clone()),
            ..Subject::default()
        }]),
    }
}

/// The agent Deployment `<shard>-agent`.
pub fn deployment(
    shard_ref: &ShardRef,
    shard: &AgentShard,
    owner: &OwnerReference,
    image: &str,
    service_account: &str,
) -> Deployment {
    let spec = &shard.spec;
    let selector = selector_labels(&shard_ref.name);
    let mut pod_labels = spec.pod_labels.clone().unwrap_or_default();
    pod_labels.extend(selector.clone());
    let tls_secret = spec
        .hub
        .as_ref()
        .and_then(|h| h.tls_secret_ref.as_ref())
        .map(|r| r.name.clone());

    let mut volumes = vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(&shard_ref.name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "kubeconfigs".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(kubeconfig_secret_name(&shard_ref.name)),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        mount("config", CONFIG_DIR),
        mount("kubeconfigs", KUBECONFIG_DIR),
    ];
    if let Some(secret) = tls_secret {
        volumes.push(Volume {
            name: "hub-tls".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("hub-tls", TLS_DIR));
    }
    let probe = |path: &str, period| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    };
    let field_env = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let container = Container {
        name: "agent".to_owned(),
        image: Some(image.to_owned()),
        image_pull_policy: spec.image_pull_policy.clone(),
        args: Some(vec![
            format!("--config={CONFIG_DIR}/{}", scale_agent_crds::CONFIG_KEY),
            format!("--kubeconfig-dir={KUBECONFIG_DIR}"),
            format!("--admin-addr=0.0.0.0:{ADMIN_PORT}"),
        ]),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("admin".to_owned()),
            container_port: ADMIN_PORT,
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe("/healthz", 10)),
        readiness_probe: Some(probe("/readyz", 5)),
        resources: spec.resources.clone(),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    Deployment {
        metadata: meta(shard_ref, deployment_name(&shard_ref.name), owner),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: spec.pod_annotations.clone(),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(service_account.to_owned()),
                    containers: vec![container],
                    volumes: Some(volumes),
                    node_selector: spec.node_selector.clone(),
                    tolerations: spec.tolerations.clone(),
                    affinity: spec.affinity.clone(),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The PodDisruptionBudget `<shard>-agent`, only when the shard runs more than one
/// replica: at most one agent down at a time during drains.
pub fn pdb(
    shard_ref: &ShardRef,
    shard: &AgentShard,
    owner: &OwnerReference,
) -> Option<PodDisruptionBudget> {
    (shard.spec.replicas > 1).then(|| PodDisruptionBudget {
        metadata: meta(shard_ref, deployment_name(&shard_ref.name), owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&shard_ref.name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// Checks a kubeconfig the agent will use (see [`scale_agent_crds::check_kubeconfig`]).
pub fn validate_kubeconfig(
    bytes: &[u8],
    allow: &KubeconfigAllow,
) -> Result<(), scale_agent_crds::KubeconfigProblem> {
    scale_agent_crds::check_kubeconfig(bytes, allow).map(|_| ())
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scale_agent_crds::{AgentShardSpec, HubSpec, LocalObjectRef, SecretKeyRef};

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
                    .map(|n| AccountSpec {
                        name: (*n).into(),
                        kubeconfig_secret_ref: SecretKeyRef::new(format!("kc-{n}")),
                        namespaces: vec![],
                        omit_namespaces: vec![],
                        kinds: vec![],
                        omit_kinds: vec![],
                        only_spinnaker_managed: false,
                    })
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
        let d = deployment(&r, s, &owner(), "img:1", "east-agent");
        d.spec.expect("spec").template
    }

    #[test]
    fn accounts_do_not_change_the_pod_template() {
        let one = shard(&["a"]);
        let three = shard(&["a", "b", "c"]);
        let mut edited = shard(&["a"]);
        edited.spec.accounts[0].namespaces = vec!["x".into()];
        assert_eq!(template(&one), template(&three));
        assert_eq!(template(&one), template(&edited));
    }

    #[test]
    fn image_resources_and_tls_change_the_pod_template() {
        let base = shard(&["a"]);
        let r = ShardRef::new("ns", "east");
        let t1 = deployment(&r, &base, &owner(), "img:1", "sa")
            .spec
            .expect("spec")
            .template;
        let t2 = deployment(&r, &base, &owner(), "img:2", "sa")
            .spec
            .expect("spec")
            .template;
        assert_ne!(t1, t2);
        let mut tls = base.clone();
        tls.spec.hub = Some(HubSpec {
            address: "hub:443".into(),
            tls_secret_ref: Some(LocalObjectRef {
                name: "mtls".into(),
            }),
        });
        assert_ne!(template(&base), template(&tls));
    }

    #[test]
    fn default_hub_tls_secret_applies_only_without_spec_hub() {
        let defaults = Defaults {
            hub: Some("lb:443".into()),
            hub_tls_secret: Some("agent-mtls-{shard}".into()),
            ..Defaults::default()
        };
        let s = shard(&["a"]);
        let mut bare = s.clone();
        bare.spec.hub = None;
        let eff = with_defaults(&bare, &defaults);
        let hub = eff.spec.hub.clone().expect("hub filled in");
        assert_eq!(hub.address, "lb:443");
        assert_eq!(
            hub.tls_secret_ref.map(|r| r.name).as_deref(),
            Some("agent-mtls-east")
        );
        // The TLS Secret is mounted and the config points at its files.
        let d = deployment(&ShardRef::new("ns", "east"), &eff, &owner(), "img:1", "sa");
        let vols = d
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|p| p.volumes)
            .unwrap_or_default();
        assert!(
            vols.iter()
                .any(|v| v.secret.as_ref().and_then(|x| x.secret_name.as_deref())
                    == Some("agent-mtls-east"))
        );
        // A shard with its own hub is left as it is.
        let own = with_defaults(&s, &defaults);
        assert_eq!(own.spec.hub, s.spec.hub);
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
        let c = agent_config(&r, &s, "hub:443", &served).expect("valid");
        assert_eq!(c.accounts.len(), 1);
        assert_eq!(c.accounts[0].name, "b");
        assert_eq!(c.accounts[0].kubeconfig_file, "b.kubeconfig");
        assert_eq!(c.budget.max_buffered_bytes, 64 << 20);
        let yaml = c.to_yaml().expect("yaml");
        assert_eq!(AgentConfig::from_yaml(&yaml).expect("reads back"), c);
    }

    #[test]
    fn kubeconfigs_are_checked() {
        let good = b"apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user: {}\n";
        let none = KubeconfigAllow::default();
        assert_eq!(validate_kubeconfig(good, &none), Ok(()));
        assert!(validate_kubeconfig(b"this is not a kubeconfig", &none).is_err());
        assert!(validate_kubeconfig(b"\xff\xfe", &none).is_err());
        let no_cluster = b"apiVersion: v1\nkind: Config\ncontexts:\n- name: x\n  context:\n    cluster: c\ncurrent-context: x\n";
        assert!(
            validate_kubeconfig(no_cluster, &none)
                .err()
                .is_some_and(|e| e.to_string().contains("not defined"))
        );
    }

    #[test]
    fn children_carry_the_controller_owner_reference() {
        let r = ShardRef::new("ns", "east");
        let cm = config_map(&r, &owner(), String::new());
        let refs = cm.metadata.owner_references.expect("refs");
        assert_eq!(refs[0].controller, Some(true));
        assert_eq!(cm.metadata.name.as_deref(), Some("east-agent-config"));
    }
}
