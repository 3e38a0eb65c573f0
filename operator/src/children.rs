//! What a shard becomes: its agent config and the objects the operator applies for it
//! (ConfigMap, kubeconfig Secret, TLS Secret or cert-manager Certificate,
//! ServiceAccount + Role + RoleBinding, Deployment, PodDisruptionBudget). Pure functions
//! of the shard, the accounts it serves and the operator's defaults.
//!
//! The pod template depends only on what should restart the agents (image, resources,
//! scheduling, which TLS Secret...). Accounts reach running agents through the mounted
//! ConfigMap and Secret, which kubelet refreshes in place: the template carries no hash
//! of them, so adding, removing or editing an account never rolls the pods, and neither
//! does a renewed certificate (agents reload it).
//!
//! Agent pods pass Pod Security `restricted`: non-root, read-only root filesystem, no
//! privilege escalation, every capability dropped, the runtime's default seccomp
//! profile.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource, SecurityContext,
    ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use scale_agent_crds::membership::agent_selector_labels;
use scale_agent_crds::{
    AccountConfig, AccountSpec, AgentConfig, AgentShard, BudgetConfig, ConfigError, HubConfig,
    KubeconfigAllow, ShardRef, TlsConfig, agent_tls_secret_name, config_map_name, deployment_name,
    kubeconfig_file_name, kubeconfig_secret_name, shard_identity_uri,
};

use crate::policy::Allowed;
use scale_agent_runtime::LogFormat;

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
pub const SHARD_LABEL: &str = scale_agent_crds::membership::SHARD_LABEL;
/// The default lifetime of the agents' client certificates.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A cert-manager issuer: `ClusterIssuer/<name>` or `Issuer/<name>` (in the shard's
/// namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerRef {
    /// `ClusterIssuer` or `Issuer`.
    pub kind: String,
    /// Its name.
    pub name: String,
}

impl std::str::FromStr for IssuerRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, name) = s.split_once('/').unwrap_or(("ClusterIssuer", s));
        if !matches!(kind, "ClusterIssuer" | "Issuer") || name.is_empty() || name.contains('/') {
            return Err(format!(
                "{s:?} is not ClusterIssuer/<name> or Issuer/<name>"
            ));
        }
        Ok(Self {
            kind: kind.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// The operator's defaults for what a shard may leave out, and its limits on what a
/// shard may ask for.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Hub address for shards without spec.hub.
    pub hub: Option<String>,
    /// Agent image for shards without spec.image.
    pub image: Option<String>,
    /// ServiceAccount for shards without spec.serviceAccountName; `None`: a per-shard one.
    pub service_account: Option<String>,
    /// TLS Secret (in the shard's namespace) for shards without spec.hub, when the
    /// operator issues no certificates; `{shard}` in the name is replaced by the shard's
    /// name, since each shard's certificate names it.
    pub hub_tls_secret: Option<String>,
    /// Kubeconfig features accounts may use (`--allow-kubeconfig`); none by default.
    pub allow_kubeconfig: KubeconfigAllow,
    /// The CA Secret (`namespace/name`) the operator issues agents' certificates from.
    pub agent_ca: Option<ShardRef>,
    /// The cert-manager issuer of agents' certificates, instead of the operator.
    pub cert_issuer: Option<IssuerRef>,
    /// Lifetime of the agents' certificates (renewed at two thirds of it).
    pub cert_lifetime: Duration,
    /// Images a shard may name besides the default.
    pub allowed_images: Allowed,
    /// ServiceAccounts a shard may name besides its own and the default.
    pub allowed_service_accounts: Allowed,
    /// The agents' log line format (`--agent-log-format`).
    pub agent_log_format: LogFormat,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            hub: None,
            image: None,
            service_account: None,
            hub_tls_secret: None,
            allow_kubeconfig: KubeconfigAllow::default(),
            agent_ca: None,
            cert_issuer: None,
            cert_lifetime: DEFAULT_CERT_LIFETIME,
            agent_log_format: LogFormat::Text,
            allowed_images: Allowed::default(),
            allowed_service_accounts: Allowed::default(),
        }
    }
}

/// Where a shard's agents get their TLS material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSource {
    /// Nowhere: they connect in plain text.
    None,
    /// A Secret the shard names (`spec.hub.tlsSecretRef`), or the operator's default
    /// (`--default-hub-tls-secret`): checked, and mounted.
    Secret(String),
    /// The operator issues it into this Secret (`<shard>-agent-tls`).
    Issued(String),
    /// A cert-manager Certificate fills this Secret (`<shard>-agent-tls`).
    CertManager(String),
}

/// Where `shard`'s agents get their TLS material: the shard's own Secret; else the
/// certificate the operator issues (or has cert-manager issue); else, for a shard that
/// leaves spec.hub out, the operator's default Secret; else none.
pub fn tls_source(shard: &AgentShard, defaults: &Defaults) -> TlsSource {
    if let Some(own) = shard
        .spec
        .hub
        .as_ref()
        .and_then(|h| h.tls_secret_ref.as_ref())
    {
        return TlsSource::Secret(own.name.clone());
    }
    let name = shard.metadata.name.clone().unwrap_or_default();
    if defaults.agent_ca.is_some() {
        return TlsSource::Issued(agent_tls_secret_name(&name));
    }
    if defaults.cert_issuer.is_some() {
        return TlsSource::CertManager(agent_tls_secret_name(&name));
    }
    match (&shard.spec.hub, &defaults.hub_tls_secret) {
        (None, Some(secret)) => TlsSource::Secret(secret.replace("{shard}", &name)),
        _ => TlsSource::None,
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
    agent_selector_labels(shard)
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

/// Whether the agent pods run as the shard's own ServiceAccount (`<shard>-agent`), which
/// the operator makes with only what agents need.
pub fn own_service_account(shard: &AgentShard, defaults: &Defaults) -> bool {
    let own = deployment_name(shard.metadata.name.as_deref().unwrap_or_default());
    match shard.spec.service_account_name.as_deref() {
        Some(sa) => sa == own,
        None => defaults.service_account.is_none(),
    }
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

/// The agent config: `hub` (with the mounted TLS files when `tls`), the `accounts` the
/// shard serves (already filtered to those it owns and can use), and its budget.
/// Validated.
pub fn agent_config(
    shard_ref: &ShardRef,
    shard: &AgentShard,
    hub: &str,
    accounts: &[&AccountSpec],
    tls: bool,
) -> Result<AgentConfig, ConfigError> {
    let tls = tls.then(|| TlsConfig {
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

/// `secret` with the labels of `shard`'s children and its controller reference.
pub fn owned(mut secret: Secret, owner: &OwnerReference) -> Secret {
    secret.metadata.owner_references = Some(vec![owner.clone()]);
    secret
}

/// The Secret `name` holding the agents' client certificate the operator issued
/// (`data`: tls.crt, tls.key, ca.crt); its owner is added by [`owned`].
pub fn tls_secret(shard: &ShardRef, name: &str, data: BTreeMap<String, ByteString>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(shard.namespace.clone()),
            labels: Some(labels(&shard.name)),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The API of cert-manager Certificates (cert-manager.io/v1).
pub fn certificate_api_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "cert-manager.io",
        "v1",
        "Certificate",
    ))
}

/// The cert-manager Certificate `name` for `shard`'s agents: the shard's identity as a
/// URI SAN, client auth, `lifetime` renewed at two thirds, a new ECDSA key each time
/// (PKCS#8), into the Secret `name`, issued by `issuer`. Its owner is set by the caller.
pub fn certificate(
    shard: &ShardRef,
    name: &str,
    issuer: &IssuerRef,
    lifetime: Duration,
) -> DynamicObject {
    let seconds = lifetime.as_secs().max(3600);
    let mut cert = DynamicObject::new(name, &certificate_api_resource()).within(&shard.namespace);
    cert.metadata.labels = Some(labels(&shard.name));
    cert.data = serde_json::json!({
        "spec": {
            "secretName": name,
            "commonName": shard.name,
            "uris": [shard_identity_uri(shard)],
            "usages": ["client auth", "digital signature"],
            "duration": format!("{seconds}s"),
            "renewBefore": format!("{}s", seconds / 3),
            "privateKey": { "algorithm": "ECDSA", "size": 256, "encoding": "PKCS8", "rotationPolicy": "Always" },
            "issuerRef": { "group": "cert-manager.io", "kind": issuer.kind, "name": issuer.name },
        }
    });
    cert
}

/// The per-shard ServiceAccount `<shard>-agent`.
pub fn service_account(shard: &ShardRef, owner: &OwnerReference) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(shard, deployment_name(&shard.name), owner),
        ..ServiceAccount::default()
    }
}

/// The Role of the per-shard ServiceAccount: the coordination Leases the replicas use
/// to split the accounts and report, and reading pods (a Lease counts only while the
/// agent pod holding it lives, see [`scale_agent_crds::membership`]).
pub fn role(shard: &ShardRef, owner: &OwnerReference) -> Role {
    let verbs = |v: &[&str]| v.iter().map(|v| (*v).to_owned()).collect();
    Role {
        metadata: meta(shard, deployment_name(&shard.name), owner),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec!["coordination.k8s.io".to_owned()]),
                resources: Some(vec!["leases".to_owned()]),
                verbs: verbs(&[
                    "get", "list", "watch", "create", "update", "patch", "delete",
                ]),
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods".to_owned()]),
                verbs: verbs(&["get", "list", "watch"]),
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

/// The agent Deployment `<shard>-agent`, mounting the TLS Secret `tls_secret` when the
/// agents use one.
pub fn deployment(
    shard_ref: &ShardRef,
    shard: &AgentShard,
    owner: &OwnerReference,
    image: &str,
    service_account: &str,
    tls_secret: Option<&str>,
    log_format: LogFormat,
) -> Deployment {
    let spec = &shard.spec;
    let selector = selector_labels(&shard_ref.name);
    let mut pod_labels = spec.pod_labels.clone().unwrap_or_default();
    pod_labels.extend(selector.clone());

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
                secret_name: Some(secret.to_owned()),
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
        args: Some(
            [
                format!("--config={CONFIG_DIR}/{}", scale_agent_crds::CONFIG_KEY),
                format!("--kubeconfig-dir={KUBECONFIG_DIR}"),
                format!("--admin-addr=0.0.0.0:{ADMIN_PORT}"),
            ]
            .into_iter()
            // Text is the agent's own default: the argument only for JSON, so that
            // Deployments made before the flag existed stay as they are.
            .chain((log_format == LogFormat::Json).then(|| "--log-format=json".to_owned()))
            .collect(),
        ),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            // The agent's Lease names its pod as owner: membership needs the uid.
            field_env("POD_UID", "metadata.uid"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("admin".to_owned()),
            container_port: ADMIN_PORT,
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe("/healthz", 10)),
        readiness_probe: Some(probe("/readyz", 5)),
        resources: Some(
            spec.resources
                .clone()
                .unwrap_or_else(default_agent_resources),
        ),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
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
                    image_pull_secrets: spec.image_pull_secrets.clone(),
                    priority_class_name: spec.priority_class_name.clone(),
                    topology_spread_constraints: spec.topology_spread_constraints.clone(),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(runtime_default()),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The agent container's CPU request when the shard sets no `resources`.
pub const DEFAULT_AGENT_CPU_REQUEST: &str = "100m";
/// The agent container's memory request when the shard sets no `resources`.
pub const DEFAULT_AGENT_MEMORY_REQUEST: &str = "128Mi";
/// The agent container's CPU limit when the shard sets no `resources`.
pub const DEFAULT_AGENT_CPU_LIMIT: &str = "1";
/// The agent container's memory limit when the shard sets no `resources`.
pub const DEFAULT_AGENT_MEMORY_LIMIT: &str = "512Mi";

/// The agent container's resources when the shard sets none (a shard's own
/// `spec.resources` replaces them whole). Requests and limits for both CPU and memory, so
/// that a namespace whose ResourceQuota counts any of them admits the pods (it refuses
/// pods that leave out what it counts), and the pods are not BestEffort, the first
/// evicted. The memory limit leaves room over the default budget (64 MiB of buffered
/// events) and the peaks measured in docs/install.md ("Sizing": 184 MiB for the initial
/// sync of 105,000 objects in 50 accounts).
pub fn default_agent_resources() -> ResourceRequirements {
    let q = |v: &str| Quantity(v.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), q(DEFAULT_AGENT_CPU_REQUEST)),
            ("memory".to_owned(), q(DEFAULT_AGENT_MEMORY_REQUEST)),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".to_owned(), q(DEFAULT_AGENT_CPU_LIMIT)),
            ("memory".to_owned(), q(DEFAULT_AGENT_MEMORY_LIMIT)),
        ])),
        ..ResourceRequirements::default()
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

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..SeccompProfile::default()
    }
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
mod tests;
