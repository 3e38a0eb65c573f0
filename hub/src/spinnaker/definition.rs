//! What the hub tells Clouddriver of an account, and what to change there: pure.
//!
//! A definition is Clouddriver's `kubernetes` account definition
//! (`KubernetesAccountProperties.ManagedAccount`, type discriminator `"type":
//! "kubernetes"`). The hub marks the ones it creates by the first line of their
//! `kubeconfigContents`, a YAML comment naming the hub's Kubernetes API
//! ([`marker`]): Clouddriver keeps the string as given, kubectl ignores the comment,
//! and two hubs with different APIs never take each other's definitions.

use std::collections::{BTreeMap, BTreeSet};

use scale_agent_crds::AccountSpec;
use serde_json::{Value, json};

/// What a definition of one account says, apart from its kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The account name.
    pub name: String,
    /// `namespaces`.
    pub namespaces: Vec<String>,
    /// `omitNamespaces`.
    pub omit_namespaces: Vec<String>,
    /// `kinds`.
    pub kinds: Vec<String>,
    /// `omitKinds`.
    pub omit_kinds: Vec<String>,
    /// `onlySpinnakerManaged`.
    pub only_spinnaker_managed: bool,
    /// `permissions`: READ / WRITE / EXECUTE → roles.
    pub permissions: BTreeMap<String, Vec<String>>,
    /// `environment` (Clouddriver: the name when unset).
    pub environment: Option<String>,
    /// `accountType` (Clouddriver: the name when unset).
    pub account_type: Option<String>,
    /// `cacheThreads`.
    pub cache_threads: u32,
    /// False when the hub enforces ownership and no shard lists the account any more
    /// (it is served within its grace period): its definition is left as it is, neither
    /// created, updated with empty settings, nor deleted before the grace period ends.
    pub listed: bool,
}

impl Default for Wanted {
    fn default() -> Self {
        Wanted {
            name: String::new(),
            namespaces: Vec::new(),
            omit_namespaces: Vec::new(),
            kinds: Vec::new(),
            omit_kinds: Vec::new(),
            only_spinnaker_managed: false,
            permissions: BTreeMap::new(),
            environment: None,
            account_type: None,
            // Clouddriver's default; a `null` would read as 0.
            cache_threads: 1,
            listed: false,
        }
    }
}

impl Wanted {
    /// What the definition of account `name` says. `spec` is its entry in the spec of
    /// the shard that owns it; with `enforced` (the hub follows the AgentShards), `None`
    /// means no shard lists it any more ([`Wanted::listed`] false).
    pub fn of(name: String, spec: Option<&AccountSpec>, enforced: bool) -> Wanted {
        let mut wanted = Wanted {
            name,
            listed: !enforced || spec.is_some(),
            ..Wanted::default()
        };
        if let Some(spec) = spec {
            let scope = spec.scope.clone();
            wanted.namespaces = scope.namespaces;
            wanted.omit_namespaces = scope.omit_namespaces;
            wanted.kinds = scope.kinds;
            wanted.omit_kinds = scope.omit_kinds;
            wanted.only_spinnaker_managed = scope.only_spinnaker_managed;
            let settings = spec.spinnaker.clone();
            let permissions = settings.permissions;
            wanted.permissions = [
                ("READ", permissions.read),
                ("WRITE", permissions.write),
                ("EXECUTE", permissions.execute),
            ]
            .into_iter()
            .filter(|(_, roles)| !roles.is_empty())
            .map(|(action, roles)| (action.to_owned(), roles))
            .collect();
            wanted.environment = settings.environment;
            wanted.account_type = settings.account_type;
            wanted.cache_threads = settings.cache_threads.unwrap_or(1);
        }
        wanted
    }
}

/// The first line of the kubeconfig of every definition this hub made.
pub fn marker(server: &str) -> String {
    format!(
        "# scale-agent.dev/managed-by: scale-agent-hub {}",
        server.trim_end_matches('/')
    )
}

/// The definition to push: `kubeconfig` is the account's kubeconfig, without the
/// marker (added here).
pub fn render(wanted: &Wanted, server: &str, kubeconfig: &str) -> Value {
    json!({
        "type": "kubernetes",
        "name": wanted.name,
        "kubeconfigContents": format!("{}\n{kubeconfig}", marker(server)),
        "namespaces": wanted.namespaces,
        "omitNamespaces": wanted.omit_namespaces,
        "kinds": wanted.kinds,
        "omitKinds": wanted.omit_kinds,
        "onlySpinnakerManaged": wanted.only_spinnaker_managed,
        "permissions": wanted.permissions,
        "environment": wanted.environment,
        "accountType": wanted.account_type,
        "cacheThreads": wanted.cache_threads,
    })
}

/// True when `definition` was made by the hub whose Kubernetes API is `server`.
pub fn is_ours(definition: &Value, server: &str) -> bool {
    definition
        .get("kubeconfigContents")
        .and_then(Value::as_str)
        .and_then(|k| k.lines().next())
        .is_some_and(|first| first == marker(server))
}

/// True when `current` already says everything `desired` says (Clouddriver adds its
/// defaults for what the hub does not set).
pub fn carries(current: &Value, desired: &Value) -> bool {
    let (Some(current), Some(desired)) = (current.as_object(), desired.as_object()) else {
        return false;
    };
    desired
        .iter()
        .all(|(k, v)| current.get(k).unwrap_or(&Value::Null) == v)
}

/// One change to make in Clouddriver.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `POST /credentials`.
    Create(Value),
    /// `PUT /credentials/{name}`.
    Update(Value),
    /// `DELETE /credentials/{name}`.
    Delete(String),
    /// A definition of this name that the hub did not make: left alone, reported.
    Foreign(String),
}

impl Action {
    /// The account it is about.
    pub fn account(&self) -> &str {
        match self {
            Action::Create(d) | Action::Update(d) => {
                d.get("name").and_then(Value::as_str).unwrap_or("")
            }
            Action::Delete(name) | Action::Foreign(name) => name,
        }
    }

    /// A word for logs and metrics.
    pub fn verb(&self) -> &'static str {
        match self {
            Action::Create(_) => "create",
            Action::Update(_) => "update",
            Action::Delete(_) => "delete",
            Action::Foreign(_) => "foreign",
        }
    }
}

/// What to do so that Clouddriver's `kubernetes` definitions (`current`) hold
/// `desired` (name → definition): create what is missing, update what is ours and
/// differs, delete what is ours and no longer wanted, never touch another's. The
/// definitions of `kept` (served, but listed by no shard: see [`Wanted::listed`]) are
/// left as they are.
pub fn plan(
    desired: &BTreeMap<String, Value>,
    kept: &BTreeSet<String>,
    current: &[Value],
    server: &str,
) -> Vec<Action> {
    let by_name: BTreeMap<&str, &Value> = current
        .iter()
        .filter_map(|d| Some((d.get("name")?.as_str()?, d)))
        .collect();
    let mut actions = Vec::new();
    for (name, want) in desired {
        if kept.contains(name) {
            continue;
        }
        match by_name.get(name.as_str()) {
            None => actions.push(Action::Create(want.clone())),
            Some(have) if !is_ours(have, server) => actions.push(Action::Foreign(name.clone())),
            Some(have) if !carries(have, want) => actions.push(Action::Update(want.clone())),
            Some(_) => {}
        }
    }
    let wanted: BTreeSet<&str> = desired.keys().chain(kept).map(String::as_str).collect();
    for (name, have) in by_name {
        if !wanted.contains(name) && is_ours(have, server) {
            actions.push(Action::Delete(name.to_owned()));
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: &str = "https://hub.example:8443";

    fn want(name: &str, namespaces: &[&str]) -> Value {
        render(
            &Wanted {
                name: name.into(),
                namespaces: namespaces.iter().map(|s| (*s).to_owned()).collect(),
                ..Wanted::default()
            },
            HUB,
            "apiVersion: v1\n",
        )
    }

    /// As Clouddriver lists it: with its defaults added.
    fn stored(mut d: Value) -> Value {
        d["cacheThreads"] = json!(1);
        d["namingStrategy"] = json!("kubernetesAnnotations");
        d
    }

    #[test]
    fn missing_are_created_changed_updated_gone_deleted_foreign_left_alone() {
        let desired: BTreeMap<String, Value> = [
            ("new".to_owned(), want("new", &[])),
            ("same".to_owned(), want("same", &["a"])),
            ("changed".to_owned(), want("changed", &["b"])),
            ("theirs".to_owned(), want("theirs", &[])),
        ]
        .into();
        let current = vec![
            stored(want("same", &["a"])),
            stored(want("changed", &["a"])),
            stored(json!({"type": "kubernetes", "name": "theirs", "kubeconfigFile": "/x"})),
            stored(want("gone", &[])),
            // Served within its grace period, listed by no shard: left as it is.
            stored(want("leaving", &["a"])),
            // Made by another hub, or by hand: not ours to delete.
            stored(
                json!({"type": "kubernetes", "name": "hand", "kubeconfigContents": "apiVersion: v1"}),
            ),
            stored(render(
                &Wanted {
                    name: "other-hub".into(),
                    ..Wanted::default()
                },
                "https://other:8443",
                "",
            )),
        ];
        let kept = BTreeSet::from(["leaving".to_owned()]);
        let actions = plan(&desired, &kept, &current, HUB);
        let summary: Vec<(&str, &str)> = actions.iter().map(|a| (a.verb(), a.account())).collect();
        assert_eq!(
            summary,
            vec![
                ("update", "changed"),
                ("create", "new"),
                ("foreign", "theirs"),
                ("delete", "gone"),
            ]
        );
    }

    #[test]
    fn the_shard_entry_says_what_clouddriver_is_told() {
        let mut spec = AccountSpec::new("east", "kc");
        spec.scope.namespaces = vec!["web".into()];
        spec.spinnaker.permissions.read = vec!["dev".into(), "ops".into()];
        spec.spinnaker.permissions.write = vec!["ops".into()];
        spec.spinnaker.environment = Some("prod".into());
        spec.spinnaker.cache_threads = Some(4);
        spec.scope.only_spinnaker_managed = true;
        let d = render(&Wanted::of("east".into(), Some(&spec), true), HUB, "");
        assert_eq!(d["onlySpinnakerManaged"], json!(true));
        assert_eq!(d["namespaces"], json!(["web"]));
        assert_eq!(
            d["permissions"],
            json!({"READ": ["dev", "ops"], "WRITE": ["ops"]})
        );
        assert_eq!(d["environment"], json!("prod"));
        assert_eq!(d["accountType"], Value::Null);
        assert_eq!(d["cacheThreads"], json!(4));
        // Listed by no shard while ownership is enforced: kept as it is.
        assert!(!Wanted::of("east".into(), None, true).listed);
        assert!(Wanted::of("east".into(), None, false).listed);
        assert_eq!(
            render(&Wanted::of("east".into(), None, false), HUB, "")["cacheThreads"],
            json!(1)
        );
    }

    #[test]
    fn the_marker_is_the_first_line_for_this_hub_only() {
        let d = want("a", &[]);
        assert!(is_ours(&d, HUB));
        assert!(is_ours(&d, &format!("{HUB}/")));
        assert!(!is_ours(&d, "https://hub.example:9443"));
        let mut moved = d.clone();
        moved["kubeconfigContents"] = json!(format!("apiVersion: v1\n{}", marker(HUB)));
        assert!(!is_ours(&moved, HUB));
    }
}
