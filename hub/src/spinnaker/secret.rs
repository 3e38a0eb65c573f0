//! Clouddriver without the account storage API (before Spinnaker 1.28, or without
//! `account.storage.enabled`): `--clouddriver-secret NAMESPACE/NAME`. The writer (the one
//! hub, or the replicas' leader) keeps one Secret in Clouddriver's namespace holding, for
//! every account it serves, `<account>.kubeconfig` (the hub's Kubernetes API for that
//! account, with a token minted for it alone) and `clouddriver-local.yml`, a fragment of
//! Clouddriver's configuration listing them as `kubernetes.accounts[]` whose
//! `kubeconfigFile` is where the Secret is mounted (`--clouddriver-secret-mount-path`).
//!
//! What each entry says is the account storage API's definition ([`definition::render`]),
//! with the file's path for the kubeconfig. An account no shard lists any more keeps its
//! entry as it is during its grace period, and one the hub no longer serves is removed
//! once this writer has seen it unserved for the grace period ([`Leaving`]). A Secret of
//! that name the hub did not make is left alone and reported.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::Value;
use tracing::{debug, info, warn};

use super::definition::{self, Wanted};
use super::{Leaving, PushLabel, Sources, served};

/// The fragment's key in the Secret.
pub const FRAGMENT: &str = "clouddriver-local.yml";

/// The label that marks the Secret as the hub's.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "scale-agent-hub");

/// The annotation naming the hub's Kubernetes API the kubeconfigs point at (two hubs
/// never take each other's Secret).
pub const SERVER_ANNOTATION: &str = "scale-agent.dev/kube-api-server";

/// Where the Secret goes and where Clouddriver mounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretTarget {
    /// The Secret's namespace (Clouddriver's).
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
    /// The directory the Secret is mounted at in Clouddriver's pod: the fragment's
    /// `kubeconfigFile`s are `<mount_path>/<account>.kubeconfig`.
    pub mount_path: String,
}

impl SecretTarget {
    /// `NAMESPACE/NAME` and the mount path.
    pub fn parse(spec: &str, mount_path: &str) -> Result<SecretTarget, String> {
        let (namespace, name) = spec
            .split_once('/')
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| format!("{spec:?} is not NAMESPACE/NAME"))?;
        if !mount_path.starts_with('/') {
            return Err(format!("the mount path {mount_path:?} is not absolute"));
        }
        Ok(SecretTarget {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            mount_path: mount_path.trim_end_matches('/').to_owned(),
        })
    }
}

/// The Secret's key of `account`'s kubeconfig; `None` for a name a Secret key cannot
/// hold (`[-._a-zA-Z0-9]+`).
pub fn key_of(account: &str) -> Option<String> {
    let ok = !account.is_empty()
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| format!("{account}.kubeconfig"))
}

/// The fragment's entry of one account: its definition, with `kubeconfigFile` for the
/// kubeconfig.
pub fn entry(wanted: &Wanted, server: &str, mount_path: &str) -> Value {
    let mut d = definition::render(wanted, server, "");
    if let Some(o) = d.as_object_mut() {
        o.remove("type");
        o.remove("kubeconfigContents");
        o.insert(
            "kubeconfigFile".into(),
            Value::String(format!(
                "{mount_path}/{}",
                key_of(&wanted.name).unwrap_or_default()
            )),
        );
    }
    d
}

/// What the Secret holds: `<account>.kubeconfig` → kubeconfig, and the entries of the
/// fragment by account.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Contents {
    /// Account → its kubeconfig.
    pub kubeconfigs: BTreeMap<String, String>,
    /// Account → its entry in `kubernetes.accounts[]`.
    pub entries: BTreeMap<String, Value>,
}

impl Contents {
    /// The Secret's data.
    pub fn data(&self, server: &str) -> Result<BTreeMap<String, String>, String> {
        let mut data: BTreeMap<String, String> = self
            .kubeconfigs
            .iter()
            .filter_map(|(account, k)| Some((key_of(account)?, k.clone())))
            .collect();
        let accounts: Vec<&Value> = self.entries.values().collect();
        let fragment = serde_json::json!({
            "kubernetes": {
                "enabled": true,
                "accounts": accounts,
            }
        });
        let yaml = serde_yaml::to_string(&fragment).map_err(|e| e.to_string())?;
        data.insert(
            FRAGMENT.to_owned(),
            format!(
                "# Written by scale-agent-hub ({}): the kubernetes accounts it serves. Do not edit; it is rewritten as AgentShards change.\n{yaml}",
                server.trim_end_matches('/')
            ),
        );
        Ok(data)
    }

    /// What a Secret's data holds (the entries of its fragment and their kubeconfigs);
    /// empty for what it cannot read.
    pub fn read(data: &BTreeMap<String, String>) -> Contents {
        let mut contents = Contents::default();
        let entries = data
            .get(FRAGMENT)
            .and_then(|f| serde_yaml::from_str::<Value>(f).ok())
            .and_then(|v| v["kubernetes"]["accounts"].as_array().cloned())
            .unwrap_or_default();
        for entry in entries {
            let Some(name) = entry.get("name").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            if let Some(k) = key_of(&name).and_then(|key| data.get(&key)) {
                contents.kubeconfigs.insert(name.clone(), k.clone());
            }
            contents.entries.insert(name, entry);
        }
        contents
    }
}

/// What the Secret should hold: `desired` (account → its entry and kubeconfig), and, as
/// they are in `current`, the accounts of `kept` (served, listed by no shard) and of
/// `held` (no longer served, within the grace period).
pub fn plan(
    desired: &BTreeMap<String, (Value, String)>,
    kept: &BTreeSet<String>,
    held: &BTreeSet<String>,
    current: &Contents,
) -> Contents {
    let mut out = Contents::default();
    for (name, (entry, kubeconfig)) in desired {
        out.entries.insert(name.clone(), entry.clone());
        out.kubeconfigs.insert(name.clone(), kubeconfig.clone());
    }
    for name in kept.iter().chain(held) {
        if let Some(entry) = current.entries.get(name) {
            out.entries.insert(name.clone(), entry.clone());
            if let Some(k) = current.kubeconfigs.get(name) {
                out.kubeconfigs.insert(name.clone(), k.clone());
            }
        }
    }
    out
}

fn decode(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect()
}

fn encode(data: BTreeMap<String, String>) -> BTreeMap<String, ByteString> {
    data.into_iter()
        .map(|(k, v)| (k, ByteString(v.into_bytes())))
        .collect()
}

/// True when `secret` is this hub's (its label and the server it names).
fn is_ours(secret: &Secret, server: &str) -> bool {
    let meta = &secret.metadata;
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .is_some_and(|v| v == MANAGED_BY.1)
        && meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(SERVER_ANNOTATION))
            .is_some_and(|s| s.trim_end_matches('/') == server.trim_end_matches('/'))
}

/// Starts keeping the Secret; it ends with `shutdown`.
pub fn start(
    target: SecretTarget,
    client: Client,
    server: String,
    interval: Duration,
    sources: Sources,
) {
    let Sources {
        minter,
        accounts,
        kubeconfig,
        metrics,
        grace,
        shutdown,
    } = sources;
    info!(secret = %format!("{}/{}", target.namespace, target.name), mount_path = %target.mount_path,
        "keeping a Secret of the accounts served for Clouddriver (kubeconfigs and clouddriver-local.yml)");
    let api: Api<Secret> = Api::namespaced(client, &target.namespace);
    tokio::spawn(async move {
        let mut leaving = Leaving::default();
        let mut foreign_reported = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            if !accounts.may_write() {
                continue;
            }
            let Some(round) = served(
                accounts.as_ref(),
                &minter,
                &kubeconfig,
                "Clouddriver Secret",
            )
            .await
            else {
                continue;
            };
            let kept = round.kept;
            let mut desired = BTreeMap::new();
            for (w, k) in round.listed {
                if key_of(&w.name).is_none() {
                    warn!(account = %crate::core::clip::clip(&w.name), "Clouddriver Secret: an account name a Secret key cannot hold; left out");
                    continue;
                }
                desired.insert(w.name.clone(), (entry(&w, &server, &target.mount_path), k));
            }
            let existing = match api.get_opt(&target.name).await {
                Ok(s) => s,
                Err(err) => {
                    metrics.list_failures.inc();
                    warn!(%err, "Clouddriver Secret: cannot read it; trying again");
                    continue;
                }
            };
            if let Some(secret) = &existing
                && !is_ours(secret, &server)
            {
                if !foreign_reported {
                    warn!(secret = %target.name, namespace = %target.namespace,
                        "Clouddriver Secret: a Secret of this name that this hub did not make: left alone (delete it, or name another with --clouddriver-secret)");
                    foreign_reported = true;
                }
                metrics.foreign.set(1);
                continue;
            }
            metrics.foreign.set(0);
            let current = existing
                .as_ref()
                .map(|s| Contents::read(&decode(s)))
                .unwrap_or_default();
            let gone: BTreeSet<String> = current
                .entries
                .keys()
                .filter(|n| !desired.contains_key(*n) && !kept.contains(*n))
                .cloned()
                .collect();
            let held = leaving.held(&gone, grace);
            let next = plan(&desired, &kept, &held, &current);
            metrics
                .in_step
                .set(i64::try_from(desired.len()).unwrap_or(i64::MAX));
            let data = match next.data(&server) {
                Ok(d) => d,
                Err(err) => {
                    warn!(%err, "Clouddriver Secret: cannot write the fragment");
                    continue;
                }
            };
            if existing.as_ref().is_some_and(|s| decode(s) == data) {
                debug!("Clouddriver Secret: in step");
                continue;
            }
            let (action, result) = match existing {
                Some(mut secret) => {
                    secret.data = Some(encode(data));
                    (
                        "update",
                        api.replace(&target.name, &PostParams::default(), &secret)
                            .await
                            .map(|_| ()),
                    )
                }
                None => {
                    let secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(target.name.clone()),
                            namespace: Some(target.namespace.clone()),
                            labels: Some(
                                [(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into(),
                            ),
                            annotations: Some(
                                [(
                                    SERVER_ANNOTATION.to_owned(),
                                    server.trim_end_matches('/').to_owned(),
                                )]
                                .into(),
                            ),
                            ..ObjectMeta::default()
                        },
                        data: Some(encode(data)),
                        ..Secret::default()
                    };
                    (
                        "create",
                        api.create(&PostParams::default(), &secret)
                            .await
                            .map(|_| ()),
                    )
                }
            };
            let outcome = match &result {
                Ok(()) => "ok",
                Err(kube::Error::Api(_)) => "refused",
                Err(_) => "unreachable",
            };
            metrics
                .pushes
                .get_or_create(&PushLabel {
                    action: if action == "create" {
                        "secret-create"
                    } else {
                        "secret-update"
                    },
                    outcome,
                })
                .inc();
            match result {
                Ok(()) => info!(
                    accounts = next.entries.len(),
                    action, "Clouddriver Secret: written"
                ),
                // The API server's answer names the Secret, never its data.
                Err(err) => warn!(%err, action, "Clouddriver Secret: not written; trying again"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: &str = "https://hub.example:8443";
    const MOUNT: &str = "/opt/spinnaker/config/scale-agent";

    fn wanted(name: &str) -> Wanted {
        Wanted {
            name: name.into(),
            namespaces: vec!["web".into()],
            only_spinnaker_managed: true,
            listed: true,
            ..Wanted::default()
        }
    }

    #[test]
    fn each_account_is_a_kubeconfig_file_and_an_entry_naming_it() {
        let desired: BTreeMap<String, (Value, String)> = ["east", "west"]
            .into_iter()
            .map(|n| {
                (
                    n.to_owned(),
                    (entry(&wanted(n), HUB, MOUNT), format!("kubeconfig of {n}")),
                )
            })
            .collect();
        let contents = plan(
            &desired,
            &BTreeSet::new(),
            &BTreeSet::new(),
            &Contents::default(),
        );
        let data = contents.data(HUB).expect("data");
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            [
                "clouddriver-local.yml",
                "east.kubeconfig",
                "west.kubeconfig"
            ]
        );
        assert_eq!(data["east.kubeconfig"], "kubeconfig of east");
        let fragment: Value = serde_yaml::from_str(&data[FRAGMENT]).expect("YAML");
        assert_eq!(fragment["kubernetes"]["enabled"], Value::Bool(true));
        let east = &fragment["kubernetes"]["accounts"][0];
        assert_eq!(east["name"], "east");
        assert_eq!(
            east["kubeconfigFile"],
            "/opt/spinnaker/config/scale-agent/east.kubeconfig"
        );
        assert_eq!(east["namespaces"], serde_json::json!(["web"]));
        assert_eq!(east["onlySpinnakerManaged"], Value::Bool(true));
        assert!(east.get("kubeconfigContents").is_none() && east.get("type").is_none());
        // What is written reads back the same.
        assert_eq!(Contents::read(&data), contents);
    }

    #[test]
    fn kept_and_held_accounts_stay_as_they_are_the_others_go() {
        let desired: BTreeMap<String, (Value, String)> = [(
            "east".to_owned(),
            (entry(&wanted("east"), HUB, MOUNT), "new".to_owned()),
        )]
        .into();
        let mut current = Contents::default();
        for n in ["east", "kept", "held", "gone"] {
            current
                .entries
                .insert(n.into(), entry(&wanted(n), HUB, MOUNT));
            current.kubeconfigs.insert(n.into(), format!("old {n}"));
        }
        let next = plan(
            &desired,
            &BTreeSet::from(["kept".to_owned()]),
            &BTreeSet::from(["held".to_owned()]),
            &current,
        );
        assert_eq!(
            next.kubeconfigs,
            BTreeMap::from([
                ("east".to_owned(), "new".to_owned()),
                ("held".to_owned(), "old held".to_owned()),
                ("kept".to_owned(), "old kept".to_owned()),
            ])
        );
    }

    #[test]
    fn names_and_targets() {
        assert_eq!(
            key_of("prod-east.1").as_deref(),
            Some("prod-east.1.kubeconfig")
        );
        assert_eq!(key_of("a/b"), None);
        assert_eq!(key_of(""), None);
        let t = SecretTarget::parse("spinnaker/accounts", "/mnt/x/").expect("parses");
        assert_eq!(
            (t.namespace.as_str(), t.name.as_str(), t.mount_path.as_str()),
            ("spinnaker", "accounts", "/mnt/x")
        );
        assert!(SecretTarget::parse("accounts", "/x").is_err());
        assert!(SecretTarget::parse("a/b/c", "/x").is_err());
        assert!(SecretTarget::parse("a/b", "relative").is_err());
    }
}
