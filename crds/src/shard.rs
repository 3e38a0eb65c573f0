//! The `AgentShard` custom resource (`scaleagent.dev/v1alpha1`).
//!
//! One AgentShard is one agent Deployment serving a group of clusters ("accounts"). The
//! schema carries as much validation as the API server can do (lengths, patterns,
//! list-map keys, CEL rules), so a bad shard is refused at `kubectl apply` time. What
//! only the operator can check (account names unique across *all* shards, Secrets that
//! exist) shows in the status.

use std::{collections::BTreeMap, fmt, str::FromStr};

use k8s_openapi::{
    api::core::v1::{
        Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{Condition, Time},
    },
};
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The API group of every scale-agent resource.
pub const GROUP: &str = "scaleagent.dev";
/// The served and stored version of [`AgentShard`].
pub const VERSION: &str = "v1alpha1";

/// An account name, and every other DNS-1123 label: lowercase letters, digits and `-`, starting and ending with a letter or digit (the length limit is separate).
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// The longest DNS-1123 label (account names, namespaces).
pub const DNS_LABEL_MAX_LEN: usize = 63;
/// A DNS-1123 subdomain, as Kubernetes object names (Secrets) are.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// The longest DNS-1123 subdomain.
pub const DNS_SUBDOMAIN_MAX_LEN: usize = 253;
/// A key of a Secret's data.
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
/// The hub's address: `host:port`, where host is a DNS name, an IPv4 address or a bracketed IPv6 address.
pub const HUB_ADDRESS_PATTERN: &str =
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):[0-9]{1,5}$";
/// The longest hub address: a 253-character host name, `:` and a 5-digit port.
pub const HUB_ADDRESS_MAX_LEN: usize = 259;
/// A kind to watch: a Kind (`Deployment`), optionally qualified by its API group (`Ingress.networking.k8s.io`).
pub const KIND_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9]*(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A quantity of bytes as [`parse_quantity_bytes`](crate::parse_quantity_bytes) reads it (an unsigned Kubernetes quantity). When the value is a string the API server checks it against this; whether it is a whole number of bytes only the operator can tell.
pub const BYTE_QUANTITY_PATTERN: &str =
    r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[mkMGTPE]|[eE][-+]?[0-9]+)?$";

/// The most accounts one shard may serve.
pub const MAX_ACCOUNTS: usize = 500;
/// The most entries in each of an account's namespace and kind lists.
pub const MAX_FILTER_ITEMS: usize = 256;
/// The highest `budget.concurrentSyncs`.
pub const MAX_CONCURRENT_SYNCS: i32 = 64;

/// The default `spec.replicas`.
pub const DEFAULT_REPLICAS: i32 = 1;
/// The default `budget.concurrentSyncs`.
pub const DEFAULT_CONCURRENT_SYNCS: i32 = 4;
/// The default `budget.maxBufferedBytes`.
pub const DEFAULT_MAX_BUFFERED_BYTES: &str = "64Mi";
/// The default key of a kubeconfig Secret.
pub const DEFAULT_KUBECONFIG_KEY: &str = "kubeconfig";

/// The condition types the operator sets on an AgentShard.
pub mod condition_type {
    /// The shard does what it was asked: config valid, every account it claims is its own, and every account streaming, as a live agent replica reports it. The summary condition (kstatus and Argo CD read it); `Unknown` until the operator has looked at the shard once.
    pub const READY: &str = "Ready";
    /// The operator or the agents are still working towards Ready (rolling out, syncing, waiting for replicas or for a name its owner is releasing); it clears by itself. False while the shard is Stalled (kstatus: InProgress).
    pub const RECONCILING: &str = "Reconciling";
    /// Only a person can make the shard Ready: an invalid config, an account another shard owns, an account the hub refuses (kstatus: Failed).
    pub const STALLED: &str = "Stalled";
    /// No account of this shard is claimed by an older shard.
    pub const ACCOUNTS_UNIQUE: &str = "AccountsUnique";
    /// The spec could be turned into an agent config (Secrets found, budget readable...).
    pub const CONFIG_VALID: &str = "ConfigValid";
    /// The agent Deployment has its minimum of available replicas.
    pub const AVAILABLE: &str = "Available";
    /// All of the above, in the order the operator writes them.
    pub const ALL: [&str; 6] = [
        READY,
        RECONCILING,
        STALLED,
        ACCOUNTS_UNIQUE,
        CONFIG_VALID,
        AVAILABLE,
    ];
}

/// The values of a condition's `status`.
pub mod condition_status {
    /// The condition holds.
    pub const TRUE: &str = "True";
    /// The condition does not hold.
    pub const FALSE: &str = "False";
    /// Not known (yet).
    pub const UNKNOWN: &str = "Unknown";
}

/// The desired state of an AgentShard: the clusters to stream, where to, and how its agent pods run.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "scaleagent.dev",
    version = "v1alpha1",
    kind = "AgentShard",
    namespaced,
    shortname = "ash",
    category = "scaleagent",
    status = "AgentShardStatus",
    derive = "PartialEq",
    doc = "AgentShard runs one scale-agent Deployment that streams a group of Kubernetes clusters (accounts) to Spinnaker's Clouddriver. Account names are unique across every AgentShard in the cluster: the oldest claim wins.",
    validation = Rule::new("self.metadata.name.size() <= 63")
        .message("AgentShard names are at most 63 characters: they become label values of the agent pods"),
    scale(spec_replicas_path = ".spec.replicas", status_replicas_path = ".status.replicas"),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired agent replicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Agent replicas ready"
    ),
    printcolumn(
        name = "Accounts",
        type_ = "integer",
        json_path = ".status.activeAccounts",
        description = "Accounts streaming, as the agent replicas report them"
    ),
    printcolumn(
        name = "Conflicts",
        type_ = "integer",
        json_path = ".status.conflicts",
        description = "Accounts left out because an older shard owns the name"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#,
        description = "Reason of the Ready condition"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Hub",
        type_ = "string",
        json_path = ".spec.hub.address",
        description = "Address of the hub the agents stream to",
        priority = 1
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.image",
        description = "Agent container image",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AgentShardSpec {
    /// Number of agent replicas. The replicas split the shard's accounts between them; 0 stops the agents (the accounts stay claimed).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// Where the agents stream to (Clouddriver's gRPC endpoint, usually behind an HTTP/2 load balancer). When unset the operator's default hub is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubSpec>,

    /// The clusters this shard streams, one entry per Spinnaker account. Names are unique within the shard (the API server rejects a repeat) and across all shards (the operator leaves out a name an older shard already claims, and reports a Conflict).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ACCOUNTS))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub accounts: Vec<AccountSpec>,

    /// Memory and concurrency limits of each agent replica.
    #[serde(default)]
    pub budget: Budget,

    /// Agent container image. When unset the operator's default image is used. The operator accepts only the images its flags allow (by default its own agent image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Pull policy of the agent image: Always, IfNotPresent or Never. When unset Kubernetes picks it from the image tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Always", "IfNotPresent", "Never"]))]
    pub image_pull_policy: Option<String>,

    /// Compute resources of the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node selector of the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Tolerations of the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// Affinity of the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Extra labels on the agent pods. The operator's own selector labels win over these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<BTreeMap<String, String>>,

    /// Extra annotations on the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,

    /// Secrets holding credentials to pull the agent image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,

    /// PriorityClass of the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = DNS_SUBDOMAIN_MAX_LEN), pattern(DNS_SUBDOMAIN_PATTERN))]
    pub priority_class_name: Option<String>,

    /// How the agent pods spread over zones and nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,

    /// Service account of the agent pods (it needs to read and renew its coordination Leases). When unset the operator's default is used. The operator accepts only the ServiceAccounts its flags allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = DNS_SUBDOMAIN_MAX_LEN), pattern(DNS_SUBDOMAIN_PATTERN))]
    pub service_account_name: Option<String>,

    /// Stop reconciling this shard: its children are left as they are and its account claims stay. Set it back to false to resume.
    #[serde(default)]
    pub paused: bool,
}

/// Where a shard's agents stream to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubSpec {
    /// The hub's gRPC endpoint as host:port, e.g. clouddriver-grpc.example.com:443 (an IPv6 host goes in brackets).
    #[schemars(length(min = 3, max = HUB_ADDRESS_MAX_LEN), pattern(HUB_ADDRESS_PATTERN))]
    pub address: String,

    /// A Secret in the shard's namespace with the agent's mTLS material: tls.crt and tls.key (the client certificate naming this shard) and ca.crt (the hub's CA). When unset the operator issues one (when it is given a CA or a cert-manager issuer), else the agents connect without TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_ref: Option<LocalObjectRef>,
}

/// A reference to an object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = DNS_SUBDOMAIN_MAX_LEN), pattern(DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// One cluster streamed by the shard, as one Spinnaker account.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "!has(self.namespaces) || !has(self.omitNamespaces) || self.namespaces.size() == 0 || self.omitNamespaces.size() == 0"
    )
    .message("namespaces and omitNamespaces cannot both be set: list the namespaces to watch, or the ones to skip")
    .field_path(".omitNamespaces"),
    validation = Rule::new(
        "!has(self.kinds) || !has(self.omitKinds) || self.kinds.size() == 0 || self.omitKinds.size() == 0"
    )
    .message("kinds and omitKinds cannot both be set: list the kinds to watch, or the ones to skip")
    .field_path(".omitKinds"),
    validation = Rule::new(
        "has(self.kubeconfigSecretRef) != (has(self.inCluster) && self.inCluster)"
    )
    .message("set exactly one of kubeconfigSecretRef (a kubeconfig for the cluster) and inCluster: true (the cluster the agents run in)")
)]
pub struct AccountSpec {
    /// The Spinnaker account name. Unique across every AgentShard in the cluster; a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters).
    #[schemars(length(min = 1, max = DNS_LABEL_MAX_LEN), pattern(DNS_LABEL_PATTERN))]
    pub name: String,

    /// The Secret, in the shard's namespace, holding a kubeconfig for the cluster. Exactly one of this and inCluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<SecretKeyRef>,

    /// Stream the cluster the agents run in, with the credentials of their own ServiceAccount (agent mode). Exactly one of this and kubeconfigSecretRef.
    #[serde(default, skip_serializing_if = "is_false")]
    pub in_cluster: bool,

    /// Which context of the kubeconfig, and what of the cluster, the account streams.
    #[serde(flatten)]
    pub scope: AccountScope,

    /// What Clouddriver is told of the account besides what it streams.
    #[serde(flatten)]
    pub spinnaker: SpinnakerSettings,
}

/// What Clouddriver is told of an account besides what the stream already says: read by
/// the hub when it keeps Clouddriver's account definitions (`--clouddriver-url`), ignored
/// by the agents. The names are those of a Clouddriver `kubernetes` account.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpinnakerSettings {
    /// Fiat roles allowed each action on the account in Spinnaker (as a Clouddriver account's permissions): READ sees it, WRITE deploys to it, EXECUTE runs pipelines with it. Unset: everyone may.
    #[serde(default, skip_serializing_if = "Permissions::is_empty")]
    pub permissions: Permissions,

    /// The account's environment in Spinnaker (e.g. prod, staging); unset: Clouddriver uses the account name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = DNS_LABEL_MAX_LEN))]
    pub environment: Option<String>,

    /// The account's type in Spinnaker; unset: Clouddriver uses the account name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = DNS_LABEL_MAX_LEN))]
    pub account_type: Option<String>,

    /// Threads Clouddriver caches the account with; unset: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub cache_threads: Option<u32>,
}

/// Fiat roles per action on a Spinnaker account.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Permissions {
    /// Roles that see the account.
    #[serde(rename = "READ", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FILTER_ITEMS), inner(length(min = 1, max = DNS_SUBDOMAIN_MAX_LEN)))]
    pub read: Vec<String>,

    /// Roles that deploy to the account.
    #[serde(rename = "WRITE", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FILTER_ITEMS), inner(length(min = 1, max = DNS_SUBDOMAIN_MAX_LEN)))]
    pub write: Vec<String>,

    /// Roles that run pipelines with the account.
    #[serde(rename = "EXECUTE", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FILTER_ITEMS), inner(length(min = 1, max = DNS_SUBDOMAIN_MAX_LEN)))]
    pub execute: Vec<String>,
}

impl Permissions {
    /// True when no action names a role.
    pub fn is_empty(&self) -> bool {
        self.read.is_empty() && self.write.is_empty() && self.execute.is_empty()
    }
}

/// Which context of an account's kubeconfig the agent uses and what of that cluster it
/// streams: the same fields in an AgentShard's `spec.accounts[]` and in the agent's
/// config file ([`crate::AccountConfig`]), defined once here.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AccountScope {
    /// The context of the kubeconfig to use, for a kubeconfig with several (as a Clouddriver account's context). Unset: the kubeconfig's current-context, else its only context; a kubeconfig with several contexts and no current-context needs this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = DNS_SUBDOMAIN_MAX_LEN))]
    pub context: Option<String>,

    /// Namespaces to watch. Empty means all namespaces (less omitNamespaces).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_FILTER_ITEMS),
        inner(length(min = 1, max = DNS_LABEL_MAX_LEN), pattern(DNS_LABEL_PATTERN))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub namespaces: Vec<String>,

    /// Namespaces not to watch. Only when namespaces is empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_FILTER_ITEMS),
        inner(length(min = 1, max = DNS_LABEL_MAX_LEN), pattern(DNS_LABEL_PATTERN))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub omit_namespaces: Vec<String>,

    /// Kinds to watch, e.g. Deployment, or Kind.group (Ingress.networking.k8s.io) for one group's kind; matched without regard to case. Empty means the agent's default set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_FILTER_ITEMS),
        inner(length(min = 1, max = DNS_SUBDOMAIN_MAX_LEN), pattern(KIND_PATTERN))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub kinds: Vec<String>,

    /// Kinds not to watch, in the same form as kinds. Only when kinds is empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_FILTER_ITEMS),
        inner(length(min = 1, max = DNS_SUBDOMAIN_MAX_LEN), pattern(KIND_PATTERN))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub omit_kinds: Vec<String>,

    /// Stream only objects Spinnaker manages (those with Spinnaker's annotations).
    // Left out when false, so the schema carries no default inside list items: a
    // default there makes every client-side `kubectl apply` of an unchanged shard
    // send the whole list again ("configured").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub only_spinnaker_managed: bool,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = DNS_SUBDOMAIN_MAX_LEN), pattern(DNS_SUBDOMAIN_PATTERN))]
    pub name: String,

    /// Key in the Secret's data; `kubeconfig` when unset.
    // Left out when it is the default, for the reason `only_spinnaker_managed` is.
    #[serde(
        default = "default_kubeconfig_key",
        skip_serializing_if = "is_default_kubeconfig_key"
    )]
    #[schemars(length(min = 1, max = DNS_SUBDOMAIN_MAX_LEN), pattern(SECRET_KEY_PATTERN))]
    pub key: String,
}

fn is_default_kubeconfig_key(key: &String) -> bool {
    *key == default_kubeconfig_key()
}

impl SecretKeyRef {
    /// A reference to `name`'s default key (`kubeconfig`).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            key: default_kubeconfig_key(),
        }
    }
}

/// Limits of each agent replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Most initial lists (full syncs of one kind in one account) running at once.
    #[serde(default = "default_concurrent_syncs")]
    #[schemars(range(min = 1, max = MAX_CONCURRENT_SYNCS))]
    pub concurrent_syncs: i32,

    /// Most bytes of events waiting to be sent to the hub, as a quantity (64Mi, 1G, 67108864). When full the agent stops reading from clusters until the hub catches up.
    #[serde(default = "default_max_buffered_bytes")]
    #[schemars(schema_with = "byte_quantity_schema")]
    pub max_buffered_bytes: Quantity,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            concurrent_syncs: DEFAULT_CONCURRENT_SYNCS,
            max_buffered_bytes: default_max_buffered_bytes(),
        }
    }
}

/// The `observedGeneration` of a status the operator has not written: what the API server
/// shows of a shard the operator has not observed yet (the CRD's default status).
/// Generations start at 1, so no status the operator writes says 0.
pub const UNOBSERVED_GENERATION: i64 = 0;

/// What the operator last saw and did for a shard. Until the operator writes it: observedGeneration 0.
// Until the operator writes one, the API server shows the schema's default,
// `{observedGeneration: 0}` (and the defaults inside): the status subresource drops any
// status sent with a create, but defaults are applied whenever the object is read (also
// in the response to a create or a server-side dry run). So GitOps tools see the
// generation as not observed yet (kstatus reads InProgress, the Argo CD check
// Progressing) instead of a shard with no status, which kstatus reads as Current.
// `AgentShard::written_status` reads that default as no status.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("default" = { "observedGeneration": UNOBSERVED_GENERATION }))]
pub struct AgentShardStatus {
    /// The metadata.generation this status is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Reconciling, Stalled, AccountsUnique, ConfigValid and Available.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// One entry per account in the spec: whether this shard serves it, and whether it streams.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub accounts: Vec<AccountStatus>,

    /// Agent replicas that exist.
    #[serde(default)]
    pub replicas: i32,

    /// Agent replicas that are ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Accounts streaming (state Active): a live agent replica reports the hub accepted them and their initial sync finished.
    #[serde(default)]
    pub active_accounts: i32,

    /// Accounts left out because an older shard owns the name (state Conflict).
    #[serde(default)]
    pub conflicts: i32,
}

/// Whether the shard serves one of its accounts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountStatus {
    /// The account name.
    pub name: String,

    /// Active (streaming), Syncing, NoReplica, HubUnreachable, RefusedByHub, ClusterUnreachable (in the agent config, not streaming), Conflict or Invalid (left out).
    pub state: AccountState,

    /// Why, as one CamelCase word (for RefusedByHub, the hub's reason, e.g. NotOwner).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,

    /// Why, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,

    /// The shard that owns the account name (namespace/name), when it is another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_shard: Option<String>,

    /// When this shard claimed the name, as the operator first recorded it. Claims on one name are served in this order (oldest first), so it is kept across restarts of the operator; see the ownership rule in the operator's documentation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<Time>,
}

/// Whether the shard serves an account, and how that goes.
///
/// The first six states are accounts in the shard's agent config (the shard holds the
/// name); `Conflict` and `Invalid` are left out of it. Readers written before a state
/// existed read it as [`AccountState::Unknown`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AccountState {
    /// Streaming: a live agent replica of the shard reports that the hub accepted the account and its initial sync finished.
    Active,
    /// In the agent config; a replica holds it and is registering it or listing it for the first time.
    Syncing,
    /// In the agent config, but no live replica of the shard holds it (none running, or none has picked it up yet).
    NoReplica,
    /// In the agent config; the replica holding it cannot reach the hub (the message says why).
    HubUnreachable,
    /// In the agent config; the hub refuses it (the reason is the hub's: NotOwner, ClusterMismatch...).
    RefusedByHub,
    /// In the agent config; the replica holding it cannot reach the account's cluster.
    ClusterUnreachable,
    /// Left out: an older shard claims the same name.
    Conflict,
    /// Left out: its configuration cannot be used (e.g. the kubeconfig Secret is missing).
    Invalid,
    /// A state written by a newer version of the operator that this version does not
    /// know. Read so that one new value does not make the whole AgentShard unreadable;
    /// never written (the schema does not list it). The ownership rule counts it as
    /// holding the name, the safe side.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

impl AccountState {
    /// Every state the operator writes.
    pub const WRITTEN: [AccountState; 8] = [
        Self::Active,
        Self::Syncing,
        Self::NoReplica,
        Self::HubUnreachable,
        Self::RefusedByHub,
        Self::ClusterUnreachable,
        Self::Conflict,
        Self::Invalid,
    ];

    /// The state as written in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::Syncing => "Syncing",
            Self::NoReplica => "NoReplica",
            Self::HubUnreachable => "HubUnreachable",
            Self::RefusedByHub => "RefusedByHub",
            Self::ClusterUnreachable => "ClusterUnreachable",
            Self::Conflict => "Conflict",
            Self::Invalid => "Invalid",
            Self::Unknown => "Unknown",
        }
    }

    /// Whether a shard whose status shows this state holds the name: everything but
    /// `Conflict` (an `Invalid` account is left out of the agent config but stays
    /// reserved for its shard; every state of an account in the config holds it).
    pub fn holds(self) -> bool {
        self != Self::Conflict
    }

    /// Whether the account is in the shard's agent config: it streams or should.
    pub fn served(self) -> bool {
        matches!(
            self,
            Self::Active
                | Self::Syncing
                | Self::NoReplica
                | Self::HubUnreachable
                | Self::RefusedByHub
                | Self::ClusterUnreachable
        )
    }
}

impl fmt::Display for AccountState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The namespace and name of an AgentShard: the key of the operator's claim index, the
/// `ownerShard` of a conflicting account, and the `shard` of an agent config.
///
/// Orders by namespace, then name: the tie-break between claims made at the same instant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardRef {
    /// The shard's namespace.
    pub namespace: String,
    /// The shard's name.
    pub name: String,
}

impl ShardRef {
    /// A reference to `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        self.to_string()
    }

    /// True for the empty reference (e.g. a hub binding stored before
    /// bindings named their shard): it names no shard.
    pub fn is_unset(&self) -> bool {
        self.namespace.is_empty() && self.name.is_empty()
    }
}

impl fmt::Display for ShardRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for ShardRef {
    type Err = ConfigError;

    /// Reads `namespace/name`; both parts non-empty, no second `/`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self::new(ns, name))
            }
            _ => Err(ConfigError::InvalidShardRef {
                value: s.to_owned(),
            }),
        }
    }
}

impl AgentShard {
    /// The shard's namespace and name; `None` for an object without both (never the case for one read from the API server).
    pub fn shard_ref(&self) -> Option<ShardRef> {
        Some(ShardRef::new(
            self.metadata.namespace.clone()?,
            self.metadata.name.clone()?,
        ))
    }

    /// The condition of type `type_` in the status, if any.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status.as_ref()?.condition(type_)
    }

    /// Whether the condition of type `type_` is present with status True.
    pub fn is_condition_true(&self, type_: &str) -> bool {
        self.condition(type_)
            .is_some_and(|c| c.status == condition_status::TRUE)
    }

    /// The status of account `name`, if the operator wrote one.
    pub fn account_status(&self, name: &str) -> Option<&AccountStatus> {
        self.status.as_ref()?.account(name)
    }

    /// The account names in the spec, in spec order.
    pub fn account_names(&self) -> impl Iterator<Item = &str> {
        self.spec.accounts.iter().map(|a| a.name.as_str())
    }

    /// The status the operator wrote; `None` before it wrote one, when the API server
    /// shows the CRD's default status (observedGeneration 0) in its place.
    pub fn written_status(&self) -> Option<&AgentShardStatus> {
        self.status
            .as_ref()
            .filter(|s| s.observed_generation != Some(UNOBSERVED_GENERATION))
    }

    /// Whether the status describes the current spec (observedGeneration = generation).
    pub fn status_is_current(&self) -> bool {
        match (&self.status, self.metadata.generation) {
            (Some(status), Some(generation)) => status.observed_generation == Some(generation),
            _ => false,
        }
    }
}

impl AgentShardSpec {
    /// The spec's account named `name`.
    pub fn account(&self, name: &str) -> Option<&AccountSpec> {
        self.accounts.iter().find(|a| a.name == name)
    }
}

impl AccountSpec {
    /// An account `name` whose kubeconfig is the Secret `secret`'s default key, streaming
    /// everything of the cluster.
    pub fn new(name: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kubeconfig_secret_ref: Some(SecretKeyRef::new(secret)),
            in_cluster: false,
            scope: AccountScope::default(),
            spinnaker: SpinnakerSettings::default(),
        }
    }

    /// The name of the Secret holding the account's kubeconfig (none for an in-cluster
    /// account).
    pub fn kubeconfig_secret_name(&self) -> Option<&str> {
        self.kubeconfig_secret_ref.as_ref().map(|r| r.name.as_str())
    }
}

impl AgentShardStatus {
    /// The condition of type `type_`, if any.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// The status of account `name`, if any.
    pub fn account(&self, name: &str) -> Option<&AccountStatus> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// Puts `new` in place of the condition of the same type (or appends it), keeping the old `lastTransitionTime` when the status did not change, as Kubernetes conventions want. Returns whether anything but that time changed, so the caller writes the status only then.
    pub fn set_condition(&mut self, mut new: Condition) -> bool {
        match self.conditions.iter_mut().find(|c| c.type_ == new.type_) {
            Some(old) => {
                if old.status == new.status {
                    new.last_transition_time = old.last_transition_time.clone();
                }
                if *old == new {
                    return false;
                }
                *old = new;
                true
            }
            None => {
                self.conditions.push(new);
                true
            }
        }
    }
}

/// A condition of type `type_`, `True` when `status` is true, else `False`, stamped with
/// `now` and the generation it is about.
pub fn new_condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status {
            condition_status::TRUE
        } else {
            condition_status::FALSE
        }
        .to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

/// A condition of type `type_` with status `Unknown`, stamped with `now` and the
/// generation it is about.
pub fn unknown_condition(
    type_: &str,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        status: condition_status::UNKNOWN.to_owned(),
        ..new_condition(type_, false, reason, message, observed_generation, now)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_replicas() -> i32 {
    DEFAULT_REPLICAS
}

fn default_concurrent_syncs() -> i32 {
    DEFAULT_CONCURRENT_SYNCS
}

fn default_max_buffered_bytes() -> Quantity {
    Quantity(DEFAULT_MAX_BUFFERED_BYTES.to_owned())
}

fn default_kubeconfig_key() -> String {
    DEFAULT_KUBECONFIG_KEY.to_owned()
}

/// An unsigned quantity of bytes: an integer or a string like `64Mi`, as Kubernetes' own quantities are (`x-kubernetes-int-or-string`), with the string form restricted to what the agent can read.
fn byte_quantity_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "pattern": BYTE_QUANTITY_PATTERN,
        // Not nullable, so the API server drops a null and applies the default, instead of
        // storing a null the Rust type cannot read.
        "nullable": false,
    })
}
