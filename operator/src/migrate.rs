//! `scale-agent migrate`: a Clouddriver configuration's Kubernetes accounts
//! (`kubernetes.accounts[]`) as AgentShards and kubeconfig Secrets, and a list of what
//! could not be carried over.
//!
//! This module decides (pure: the kubeconfig files are read through the function it is
//! given); [`cli`] reads the files and writes the manifests. What each Clouddriver field
//! becomes:
//!
//! | Clouddriver | AgentShard `spec.accounts[]` |
//! |---|---|
//! | `name` | `name` (a DNS-1123 label, else the account is skipped: pipelines name it) |
//! | `kubeconfigContents`, else `kubeconfigFile` | a Secret `kubeconfig-<account>` (one per distinct kubeconfig), `kubeconfigSecretRef` |
//! | `serviceAccount: true` without a kubeconfig | `inCluster: true` (the agents' cluster, noted) |
//! | `context`, `namespaces`, `omitNamespaces`, `kinds`, `omitKinds`, `onlySpinnakerManaged` | the same names |
//! | `permissions` (READ, WRITE, EXECUTE), else `requiredGroupMembership` (as READ and WRITE, as Clouddriver reads it) | `permissions` |
//! | `environment`, `accountType`, `cacheThreads` | the same names |
//!
//! Each account's fields go through the AgentShard type itself: a field the type does not
//! have (an older or newer CRD) is reported as not carried, never silently dropped. An
//! account is skipped, not weakened, when carrying it would widen what it streams or who
//! may use it (a filter or permission list whose every entry is unusable).

mod cli;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use cli::{Args, main_with};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use scale_agent_crds::{
    AccountConfig, AccountSpec, AgentShard, AgentShardSpec, DNS_LABEL_MAX_LEN,
    DNS_SUBDOMAIN_MAX_LEN, KubeconfigAllow, KubeconfigProblem, MAX_ACCOUNTS, MAX_FILTER_ITEMS,
    check_kubeconfig, kubeconfig_file_name, validate_account_name, validate_kind,
    validate_namespace,
};
use serde_json::{Map, Value, json};
use serde_yaml::Value as Yaml;

/// The label every object migrate writes carries (`app.kubernetes.io/created-by`).
pub const CREATED_BY: (&str, &str) = ("app.kubernetes.io/created-by", "scale-agent-migrate");

/// The longest account name, field or value a note quotes (config values are not trusted
/// to be short).
const QUOTE_MAX: usize = 80;
/// The longest note message (it may quote a namespace, a kind or a role).
const NOTE_MAX: usize = 300;

/// Fields of a Clouddriver account that need no AgentShard field when they hold these
/// values (Clouddriver's defaults, or the only provider version there is).
const NO_OP_VALUES: &[(&str, &str)] = &[
    ("providerVersion", "v2"),
    ("checkPermissionsOnStartup", "true"),
    ("configureImagePullSecrets", "true"),
];

/// Why the shard has no field for some Clouddriver settings, where it is worth saying.
const NOT_CARRIED_WHY: &[(&str, &str)] = &[
    (
        "customResources",
        "the agents discover custom resources themselves: list them in kinds as Kind.group",
    ),
    (
        "cachingPolicies",
        "a setting of Clouddriver's caching cycle: keep it in Clouddriver's account",
    ),
    (
        "cacheIntervalSeconds",
        "a setting of Clouddriver's caching cycle: keep it in Clouddriver's account",
    ),
    (
        "kubectlExecutable",
        "deploys go through the hub and the agent, not kubectl",
    ),
    (
        "kubectlRequestTimeoutSeconds",
        "deploys go through the hub and the agent, not kubectl",
    ),
    (
        "cluster",
        "the kubeconfig's context names the cluster: set context",
    ),
    (
        "user",
        "the kubeconfig's context names the user: set context",
    ),
];

/// How accounts are grouped into shards before they are cut into shards of
/// `accounts_per_shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GroupBy {
    /// All accounts in config order.
    #[default]
    None,
    /// One group per `environment` (accounts without one: `default`).
    Environment,
    /// One group per `accountType` (accounts without one: `default`).
    AccountType,
}

/// What the manifests are made with.
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespace of the shards and Secrets.
    pub namespace: String,
    /// Shards are named `<prefix>-<n>`, or `<prefix>-<group>-<n>` when grouped.
    pub shard_prefix: String,
    /// Most accounts in one shard (1 to [`MAX_ACCOUNTS`]).
    pub accounts_per_shard: usize,
    /// How accounts are grouped.
    pub group_by: GroupBy,
    /// `spec.hub.address` of every shard; unset: the operator's default hub.
    pub hub: Option<String>,
    /// The kubeconfig features the operator will be started allowing
    /// (`--allow-kubeconfig`): a kubeconfig that needs another is reported.
    pub allow: KubeconfigAllow,
}

/// How sure a note is about the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NoteKind {
    /// The account is not in the manifests.
    Skipped,
    /// The account is, without this setting.
    NotCarried,
    /// The account is, and this is worth knowing.
    Note,
}

/// One thing to tell the user about an account, or the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The account, as the configuration names it (`#<n>` when it has no usable name).
    pub account: String,
    /// What happened to it.
    pub kind: NoteKind,
    /// What and why; never a kubeconfig's content.
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            NoteKind::Skipped => "skipped",
            NoteKind::NotCarried => "not carried",
            NoteKind::Note => "note",
        };
        write!(f, "account {}: {kind}: {}", self.account, self.message)
    }
}

/// The manifests and the notes.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Kubeconfig Secrets, one per distinct kubeconfig.
    pub secrets: Vec<Secret>,
    /// AgentShards, in config order of their first account.
    pub shards: Vec<AgentShard>,
    /// What was skipped, not carried or worth a note, in config order.
    pub notes: Vec<Note>,
    /// Accounts in the configuration.
    pub accounts_read: usize,
    /// Accounts in the shards.
    pub accounts_written: usize,
}

impl Plan {
    /// The manifests as one multi-document YAML stream: the Secrets first, so that a
    /// `kubectl apply -f` creates them before the shards that name them.
    pub fn to_yaml(&self) -> Result<String, MigrateError> {
        let mut out = String::new();
        for doc in self
            .secrets
            .iter()
            .map(serde_yaml::to_string)
            .chain(self.shards.iter().map(serde_yaml::to_string))
        {
            out.push_str("---\n");
            out.push_str(&doc.map_err(|e| MigrateError::Write(e.to_string()))?);
        }
        Ok(out)
    }
}

/// Why the configuration could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Not YAML. Only the position is said: the configuration may hold credentials.
    #[error("the Clouddriver configuration is not YAML ({at}; its content is not shown)")]
    Yaml {
        /// Where the parser stopped.
        at: String,
    },
    /// No document has `kubernetes.accounts`.
    #[error("the Clouddriver configuration has no kubernetes.accounts list")]
    NoAccounts,
    /// A bad option.
    #[error("{0}")]
    Option(String),
    /// The manifests could not be written as YAML.
    #[error("writing the manifests as YAML: {0}")]
    Write(String),
}

/// The accounts of a Clouddriver configuration (every YAML document's
/// `kubernetes.accounts`, in order), and how many documents held some.
pub fn read_accounts(text: &str) -> Result<(Vec<Yaml>, usize), MigrateError> {
    let mut accounts = Vec::new();
    let mut documents = 0;
    for doc in serde_yaml::Deserializer::from_str(text) {
        let doc: Yaml = serde::Deserialize::deserialize(doc).map_err(|e: serde_yaml::Error| {
            MigrateError::Yaml {
                at: e.location().map_or_else(
                    || "no position".to_owned(),
                    |l| format!("line {}, column {}", l.line(), l.column()),
                ),
            }
        })?;
        if let Some(list) = doc
            .get("kubernetes")
            .and_then(|k| k.get("accounts"))
            .and_then(Yaml::as_sequence)
        {
            documents += 1;
            accounts.extend(list.iter().cloned());
        }
    }
    if documents == 0 {
        return Err(MigrateError::NoAccounts);
    }
    Ok((accounts, documents))
}

/// Checks the options that name things: namespace, prefix, hub, shard size.
pub fn check_options(options: &Options) -> Result<(), MigrateError> {
    let bad = |e: scale_agent_crds::ConfigError| MigrateError::Option(e.to_string());
    validate_namespace(&options.namespace).map_err(bad)?;
    if options.shard_prefix.len() > 40 {
        return Err(MigrateError::Option(
            "--shard-prefix is at most 40 characters (shard names are at most 63)".to_owned(),
        ));
    }
    validate_namespace(&options.shard_prefix).map_err(|e| {
        MigrateError::Option(format!(
            "--shard-prefix must be a DNS-1123 label: {}",
            e.to_string().replace("namespace", "prefix")
        ))
    })?;
    if let Some(hub) = &options.hub {
        scale_agent_crds::validate_hub_address(hub).map_err(bad)?;
    }
    if !(1..=MAX_ACCOUNTS).contains(&options.accounts_per_shard) {
        return Err(MigrateError::Option(format!(
            "--accounts-per-shard is between 1 and {MAX_ACCOUNTS}"
        )));
    }
    Ok(())
}

/// One account carried over: its spec entry (as JSON the AgentShard type accepted), its
/// kubeconfig, and its group.
struct Carried {
    name: String,
    spec: Value,
    kubeconfig: Option<Vec<u8>>,
    group: String,
}

/// Turns `accounts` (as [`read_accounts`] returns them) into manifests. `read` returns
/// the bytes of a `kubeconfigFile`, or why it cannot.
pub fn plan(
    accounts: &[Yaml],
    options: &Options,
    mut read: impl FnMut(&str) -> Result<Vec<u8>, String>,
) -> Plan {
    let mut plan = Plan {
        accounts_read: accounts.len(),
        ..Plan::default()
    };
    let mut seen = BTreeSet::new();
    let mut carried = Vec::new();
    for (i, raw) in accounts.iter().enumerate() {
        let mut notes = Notes {
            account: account_label(i, raw),
            notes: &mut plan.notes,
        };
        let Some(fields) = raw.as_mapping() else {
            notes.skip("it is not a mapping of fields");
            continue;
        };
        if raw
            .get("name")
            .and_then(Yaml::as_str)
            .is_some_and(|name| seen.contains(name))
        {
            notes.skip("an account before it has the same name");
            continue;
        }
        match carry(fields, options, &mut read, &mut notes) {
            Ok(account) => {
                seen.insert(account.name.clone());
                carried.push(account);
            }
            Err(reason) => notes.skip(&reason),
        }
    }
    plan.accounts_written = carried.len();
    assemble(&mut plan, carried, options);
    plan
}

/// The notes of one account.
struct Notes<'a> {
    account: String,
    notes: &'a mut Vec<Note>,
}

impl Notes<'_> {
    fn push(&mut self, kind: NoteKind, message: impl Into<String>) {
        let message: String = message.into();
        let message = if message.chars().count() > NOTE_MAX {
            let cut: String = message.chars().take(NOTE_MAX).collect();
            format!("{cut}...")
        } else {
            message
        };
        self.notes.push(Note {
            account: self.account.clone(),
            kind,
            message,
        });
    }
    fn skip(&mut self, why: &str) {
        self.push(NoteKind::Skipped, why);
    }
    fn not_carried(&mut self, message: impl Into<String>) {
        self.push(NoteKind::NotCarried, message);
    }
    fn note(&mut self, message: impl Into<String>) {
        self.push(NoteKind::Note, message);
    }
}

/// How notes name account `i`: its name, cut short, else its position.
fn account_label(i: usize, raw: &Yaml) -> String {
    match raw.get("name").and_then(Yaml::as_str) {
        Some(name) if !name.is_empty() => quote(name),
        _ => format!("#{}", i + 1),
    }
}

/// `s` cut to [`QUOTE_MAX`] characters.
fn quote(s: &str) -> String {
    if s.chars().count() <= QUOTE_MAX {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(QUOTE_MAX).collect();
        format!("{cut}...")
    }
}

/// The fields this module reads; anything else is reported when it is set.
const READ_FIELDS: &[&str] = &[
    "name",
    "environment",
    "accountType",
    "context",
    "kubeconfigFile",
    "kubeconfigContents",
    "serviceAccount",
    "namespaces",
    "omitNamespaces",
    "kinds",
    "omitKinds",
    "onlySpinnakerManaged",
    "permissions",
    "requiredGroupMembership",
    "cacheThreads",
];

/// The secret-store prefixes of Spinnaker's Kork (`encrypted:`, `encryptedFile:`) and of
/// Spring Cloud Config (`configserver:`): values migrate cannot resolve.
const SECRET_REFERENCES: &[&str] = &["encrypted:", "encryptedFile:", "configserver:"];

/// One account's spec entry, or why it is skipped.
fn carry(
    fields: &serde_yaml::Mapping,
    options: &Options,
    read: &mut impl FnMut(&str) -> Result<Vec<u8>, String>,
    notes: &mut Notes<'_>,
) -> Result<Carried, String> {
    let field = |name: &str| fields.get(name).filter(|v| !is_unset(v));
    let text = |key: &str| {
        field(key)
            .map(|v| scalar(v).map_err(|e| format!("{key}: {e}")))
            .transpose()
    };
    let flag = |key: &str| {
        field(key)
            .map(|v| boolean(v).map_err(|e| format!("{key}: {e}")))
            .transpose()
    };
    let name = field("name")
        .and_then(Yaml::as_str)
        .ok_or("it has no name")?
        .to_owned();
    validate_account_name(&name).map_err(|e| {
        let reason = match e {
            scale_agent_crds::ConfigError::InvalidName { reason, .. } => reason,
            _ => "it is not a DNS-1123 label",
        };
        format!(
            "its name is not a DNS-1123 label ({reason}): AgentShard account names are, and pipelines name the account, so it is not renamed"
        )
    })?;
    let mut spec = Map::new();
    spec.insert("name".into(), json!(name));

    // Credentials: Clouddriver uses kubeconfigContents when it is set, else the file.
    let contents = text("kubeconfigContents")?;
    let file = text("kubeconfigFile")?;
    let service_account = flag("serviceAccount")?;
    let kubeconfig = match (contents, file) {
        (Some(contents), file) => {
            if file.is_some() {
                notes.not_carried(
                    "kubeconfigFile: kubeconfigContents is set, and Clouddriver uses that",
                );
            }
            if let Some(reference) = secret_reference(&contents) {
                return Err(format!(
                    "kubeconfigContents is a secret reference ({reference}...), which migrate cannot resolve: put the kubeconfig in a file and name it in kubeconfigFile"
                ));
            }
            Some(contents.into_bytes())
        }
        (None, Some(path)) => {
            if let Some(reference) = secret_reference(&path) {
                return Err(format!(
                    "kubeconfigFile is a secret reference ({reference}...), which migrate cannot resolve: fetch the file and name its path instead"
                ));
            }
            Some(read(&path).map_err(|e| format!("cannot read kubeconfigFile: {e}"))?)
        }
        (None, None) if service_account == Some(true) => {
            notes.note(
                "serviceAccount: true becomes inCluster: true, the cluster the shard's agents run in with their ServiceAccount (the same as Clouddriver's only when the shard runs where Clouddriver ran)",
            );
            spec.insert("inCluster".into(), json!(true));
            None
        }
        (None, None) => {
            return Err(
                "it has no kubeconfigFile, kubeconfigContents or serviceAccount: true (Clouddriver then reads its own ~/.kube/config)"
                    .to_owned(),
            );
        }
    };
    if kubeconfig.is_some() && service_account == Some(true) {
        notes.not_carried(
            "serviceAccount: the account's kubeconfig is carried instead (an AgentShard account has one or the other)",
        );
    }

    let context = text("context")?;
    if let Some(context) = &context {
        if context.len() > DNS_SUBDOMAIN_MAX_LEN {
            return Err("its context is longer than 253 characters".to_owned());
        }
        spec.insert("context".into(), json!(context));
    }
    if let Some(bytes) = &kubeconfig {
        match check_kubeconfig(bytes, context.as_deref(), &options.allow) {
            Ok(_) => {}
            Err(problem @ KubeconfigProblem::Refused { .. }) => notes.note(format!(
                "the operator marks it Invalid unless it runs with the flag this names: {problem}"
            )),
            Err(problem) => return Err(format!("its kubeconfig cannot be used: {problem}")),
        }
    }

    filters(
        &mut spec,
        notes,
        [
            ("namespaces", field("namespaces")),
            ("omitNamespaces", field("omitNamespaces")),
        ],
        |n| validate_namespace(n).map_err(|e| e.to_string()),
    )?;
    filters(
        &mut spec,
        notes,
        [("kinds", field("kinds")), ("omitKinds", field("omitKinds"))],
        |k| validate_kind(k).map_err(|e| e.to_string()),
    )?;
    if let Some(only) = flag("onlySpinnakerManaged")?
        && only
    {
        spec.insert("onlySpinnakerManaged".into(), json!(true));
    }

    permissions(
        &mut spec,
        notes,
        field("permissions"),
        field("requiredGroupMembership"),
    )?;
    for key in ["environment", "accountType"] {
        if let Some(value) = text(key)? {
            if value.chars().count() <= DNS_LABEL_MAX_LEN {
                spec.insert(key.into(), json!(value));
            } else {
                notes.not_carried(format!("{key}: longer than {DNS_LABEL_MAX_LEN} characters"));
            }
        }
    }
    if let Some(threads) = field("cacheThreads") {
        match scalar(threads).ok().and_then(|t| t.parse::<u32>().ok()) {
            Some(t) if (1..=64).contains(&t) => {
                spec.insert("cacheThreads".into(), json!(t));
            }
            _ => notes.not_carried("cacheThreads: not a number from 1 to 64"),
        }
    }

    let unread: Vec<String> = fields
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?, v)))
        .filter(|(k, v)| !READ_FIELDS.contains(k) && !is_unset(v) && !is_no_op(k, v))
        .map(|(k, _)| quote(k))
        .collect();
    for key in unread {
        let why = NOT_CARRIED_WHY
            .iter()
            .find(|(k, _)| *k == key)
            .map_or("an AgentShard has no such setting", |(_, why)| why);
        notes.not_carried(format!("{key}: {why}"));
    }

    let group = match options.group_by {
        GroupBy::None => String::new(),
        GroupBy::Environment => group_of(field("environment")),
        GroupBy::AccountType => group_of(field("accountType")),
    };
    let spec = through_the_type(spec, notes)?;
    Ok(Carried {
        name,
        spec,
        kubeconfig,
        group,
    })
}

/// The spec entry as the AgentShard type reads it back: a field the type does not have
/// is reported not carried; an entry the type or the agent's own check refuses is
/// skipped.
fn through_the_type(candidate: Map<String, Value>, notes: &mut Notes<'_>) -> Result<Value, String> {
    let mut with_ref = candidate.clone();
    if !with_ref.contains_key("inCluster") {
        // The Secret's name is chosen later; the type needs a reference to read it.
        with_ref.insert("kubeconfigSecretRef".into(), json!({"name": "placeholder"}));
    }
    let typed: AccountSpec = serde_json::from_value(Value::Object(with_ref))
        .map_err(|e| format!("the AgentShard type refuses it: {e}"))?;
    AccountConfig::from_spec(&typed, kubeconfig_file_name(&typed.name))
        .validate()
        .map_err(|e| format!("the agent would refuse it: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut kept = Map::new();
    for (key, value) in candidate {
        if back.get(&key) == Some(&value) {
            kept.insert(key, value);
        } else {
            notes.not_carried(format!(
                "{key}: this version's AgentShard has no such field"
            ));
        }
    }
    Ok(Value::Object(kept))
}

/// An include/exclude pair (`namespaces`/`omitNamespaces`, `kinds`/`omitKinds`) into
/// `spec`: entries `check` refuses are left out (noted), the exclude list is dropped
/// when the include list is set (Clouddriver ignores it then), and the account is
/// skipped when an include list loses every entry (it would widen to everything) or
/// either list is longer than the CRD allows.
fn filters(
    spec: &mut Map<String, Value>,
    notes: &mut Notes<'_>,
    [(include_key, include), (exclude_key, exclude)]: [(&str, Option<&Yaml>); 2],
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<(), String> {
    let mut lists = Vec::new();
    for (key, value) in [(include_key, include), (exclude_key, exclude)] {
        let given = value
            .map(strings)
            .transpose()
            .map_err(|e| format!("{key}: {e}"))?
            .unwrap_or_default();
        if given.len() > MAX_FILTER_ITEMS {
            return Err(format!(
                "{key} has {} entries; an AgentShard account has at most {MAX_FILTER_ITEMS}",
                given.len()
            ));
        }
        let mut kept = Vec::new();
        for entry in &given {
            match check(entry) {
                Ok(()) if !kept.contains(entry) => kept.push(entry.clone()),
                Ok(()) => {}
                Err(e) => notes.not_carried(format!("{key} entry left out: {e}")),
            }
        }
        if key == include_key && !given.is_empty() && kept.is_empty() {
            return Err(format!(
                "none of its {key} can be carried over, and an empty list would stream them all"
            ));
        }
        lists.push((key, kept));
    }
    let include_set = !lists[0].1.is_empty();
    for (key, kept) in lists {
        if kept.is_empty() {
            continue;
        }
        if key == exclude_key && include_set {
            notes.not_carried(format!(
                "{exclude_key}: {include_key} is set, and Clouddriver ignores {exclude_key} then"
            ));
            continue;
        }
        spec.insert(key.into(), json!(kept));
    }
    Ok(())
}

/// `permissions` (READ, WRITE, EXECUTE) into `spec`; without them
/// `requiredGroupMembership` as READ and WRITE, as Clouddriver reads it. An action whose
/// every role is unusable skips the account: an empty list would let everyone.
fn permissions(
    spec: &mut Map<String, Value>,
    notes: &mut Notes<'_>,
    permissions: Option<&Yaml>,
    required: Option<&Yaml>,
) -> Result<(), String> {
    let mut actions: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    if let Some(p) = permissions {
        let map = p
            .as_mapping()
            .ok_or("permissions is not a mapping of action to roles")?;
        for (action, roles) in map {
            let action_name = action.as_str().unwrap_or("?");
            let Some(key) = ["READ", "WRITE", "EXECUTE"]
                .into_iter()
                .find(|k| k.eq_ignore_ascii_case(action_name))
            else {
                notes.not_carried(format!(
                    "permissions.{}: an AgentShard account's permissions are READ, WRITE and EXECUTE",
                    quote(action_name)
                ));
                continue;
            };
            let roles = if is_unset(roles) {
                Vec::new()
            } else {
                strings(roles).map_err(|e| format!("permissions.{key}: {e}"))?
            };
            let given = roles.len();
            let kept = usable_roles(roles, notes, &format!("permissions.{key}"));
            if given > 0 && kept.is_empty() {
                return Err(format!(
                    "none of the roles in permissions.{key} can be carried over, and an empty list would let everyone"
                ));
            }
            if !kept.is_empty() {
                actions.entry(key).or_default().extend(kept);
            }
        }
    }
    if let Some(required) = required {
        let roles = strings(required).map_err(|e| format!("requiredGroupMembership: {e}"))?;
        if !actions.is_empty() {
            notes.not_carried(
                "requiredGroupMembership: permissions are set, and Clouddriver ignores requiredGroupMembership then",
            );
        } else if !roles.is_empty() {
            let kept = usable_roles(roles, notes, "requiredGroupMembership");
            if kept.is_empty() {
                return Err("none of the roles in requiredGroupMembership can be carried over, and no permissions would let everyone".to_owned());
            }
            notes.note(
                "requiredGroupMembership becomes permissions READ and WRITE (how Clouddriver reads it)",
            );
            actions.insert("READ", kept.clone());
            actions.insert("WRITE", kept);
        }
    }
    if !actions.is_empty() {
        spec.insert("permissions".into(), json!(actions));
    }
    Ok(())
}

/// The roles the AgentShard accepts (1 to 253 characters, at most [`MAX_FILTER_ITEMS`]),
/// the others noted.
fn usable_roles(roles: Vec<String>, notes: &mut Notes<'_>, key: &str) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for role in roles {
        if role.is_empty() || role.len() > DNS_SUBDOMAIN_MAX_LEN {
            notes.not_carried(format!("{key}: a role of {} characters", role.len()));
        } else if kept.len() >= MAX_FILTER_ITEMS {
            notes.not_carried(format!("{key}: roles past the first {MAX_FILTER_ITEMS}"));
            break;
        } else if !kept.contains(&role) {
            kept.push(role);
        }
    }
    kept
}

/// The group of an account: the field's value as a DNS label, else `default`.
fn group_of(value: Option<&Yaml>) -> String {
    let label = value
        .and_then(|v| scalar(v).ok())
        .map(|v| dns_label(&v, 20))
        .unwrap_or_default();
    if label.is_empty() {
        "default".to_owned()
    } else {
        label
    }
}

/// `s` lowercased, other characters than a-z and 0-9 as single '-', trimmed of '-',
/// at most `max` characters.
fn dns_label(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let cut: String = out.trim_matches('-').chars().take(max).collect();
    cut.trim_end_matches('-').to_owned()
}

/// The shards and Secrets of the carried accounts.
fn assemble(plan: &mut Plan, carried: Vec<Carried>, options: &Options) {
    // Groups in the order of their first account.
    let mut groups: Vec<(String, Vec<Carried>)> = Vec::new();
    for account in carried {
        match groups.iter_mut().find(|(g, _)| *g == account.group) {
            Some((_, members)) => members.push(account),
            None => groups.push((account.group.clone(), vec![account])),
        }
    }
    let mut secret_of: BTreeMap<Vec<u8>, String> = BTreeMap::new();
    for (group, members) in groups {
        let mut members = members.into_iter().peekable();
        let mut n = 0;
        while members.peek().is_some() {
            n += 1;
            let name = if group.is_empty() {
                format!("{}-{n}", options.shard_prefix)
            } else {
                format!("{}-{group}-{n}", options.shard_prefix)
            };
            let mut accounts = Vec::new();
            for mut account in members.by_ref().take(options.accounts_per_shard) {
                if let Some(bytes) = account.kubeconfig.take() {
                    let secret = match secret_of.get(&bytes) {
                        Some(secret) => secret.clone(),
                        None => {
                            let secret = format!("kubeconfig-{}", account.name);
                            plan.secrets.push(kubeconfig_secret(
                                &secret,
                                &options.namespace,
                                bytes.clone(),
                            ));
                            secret_of.insert(bytes, secret.clone());
                            secret
                        }
                    };
                    if let Some(spec) = account.spec.as_object_mut() {
                        spec.insert("kubeconfigSecretRef".into(), json!({ "name": secret }));
                    }
                }
                accounts.push(account.spec);
            }
            let mut spec = json!({ "accounts": accounts });
            if let Some(hub) = &options.hub {
                spec["hub"] = json!({ "address": hub });
            }
            match serde_json::from_value::<AgentShardSpec>(spec) {
                Ok(spec) => {
                    let mut shard = AgentShard::new(&name, spec);
                    shard.metadata.namespace = Some(options.namespace.clone());
                    shard.metadata.labels = Some(created_by());
                    plan.shards.push(shard);
                }
                // Every entry passed the type on its own; say so if the whole does not.
                Err(e) => plan.notes.push(Note {
                    account: format!("(shard {name})"),
                    kind: NoteKind::Skipped,
                    message: format!("the AgentShard type refuses the shard: {e}"),
                }),
            }
        }
    }
}

fn created_by() -> BTreeMap<String, String> {
    BTreeMap::from([(CREATED_BY.0.to_owned(), CREATED_BY.1.to_owned())])
}

/// A Secret `name` holding `kubeconfig` under the key the shard's reference defaults to.
fn kubeconfig_secret(name: &str, namespace: &str, kubeconfig: Vec<u8>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(created_by()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            scale_agent_crds::DEFAULT_KUBECONFIG_KEY.to_owned(),
            ByteString(kubeconfig),
        )])),
        ..Secret::default()
    }
}

/// Whether a value says nothing: null, empty, or false.
fn is_unset(v: &Yaml) -> bool {
    match v {
        Yaml::Null => true,
        Yaml::Bool(b) => !b,
        Yaml::String(s) => s.is_empty(),
        Yaml::Sequence(s) => s.is_empty(),
        Yaml::Mapping(m) => m.is_empty(),
        _ => false,
    }
}

/// Whether `key: v` is one of [`NO_OP_VALUES`].
fn is_no_op(key: &str, v: &Yaml) -> bool {
    let Ok(text) = scalar(v) else { return false };
    NO_OP_VALUES
        .iter()
        .any(|(k, value)| *k == key && text.eq_ignore_ascii_case(value))
}

/// A scalar as text (Spring reads numbers and booleans from strings too).
fn scalar(v: &Yaml) -> Result<String, String> {
    match v {
        Yaml::String(s) => Ok(s.clone()),
        Yaml::Number(n) => Ok(n.to_string()),
        Yaml::Bool(b) => Ok(b.to_string()),
        _ => Err("a field that holds one value holds a list or a mapping".to_owned()),
    }
}

/// A boolean, written as one or as text.
fn boolean(v: &Yaml) -> Result<bool, String> {
    match scalar(v)?.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("a true/false field holds something else".to_owned()),
    }
}

/// A list of strings: a YAML list of scalars, or one comma-separated string (as Spring
/// binds it).
fn strings(v: &Yaml) -> Result<Vec<String>, String> {
    match v {
        Yaml::Sequence(items) => items.iter().map(scalar).collect(),
        Yaml::Null => Ok(Vec::new()),
        other => Ok(scalar(other)?
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()),
    }
}

/// The secret-store prefix `value` starts with, if any.
fn secret_reference(value: &str) -> Option<&'static str> {
    SECRET_REFERENCES
        .iter()
        .copied()
        .find(|p| value.starts_with(p))
}

#[cfg(test)]
mod tests;
