//! Which shard owns which account, learned by watching AgentShards
//! (`--authorize-shards`).
//!
//! An account is owned by a shard whose `spec.accounts` lists it, unless that
//! shard's status marks it `Conflict` (the operator gave the name to an older
//! claim). When several shards list a name and the status does not settle it
//! (the operator has not written it yet), the hub decides as the operator
//! will: a shard whose status says `Active` for it, then the oldest shard
//! (creationTimestamp), then namespace/name.
//!
//! Before the first complete list of AgentShards the hub cannot decide; a
//! Register then waits a few seconds and is answered `UNAVAILABLE` (retry).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Client};
use scale_agent_crds::{AccountState, AgentShard};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::registry::ShardKey;

/// One shard's claim on an account name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    shard: ShardKey,
    /// creationTimestamp in seconds; `i64::MAX` when unknown.
    created: i64,
    /// The status says Conflict for this account on this shard.
    conflict: bool,
    /// The status says Active for it.
    active: bool,
    /// The owner the status names when in Conflict.
    owner_hint: Option<ShardKey>,
}

/// The account → owner index, built from a complete set of AgentShards.
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    claims: HashMap<String, Vec<Claim>>,
    shards: usize,
}

/// The answer for one account and one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The shard owns the account.
    Owner,
    /// It does not; `owner` is the shard that does, when there is one.
    NotOwner {
        /// The owning shard.
        owner: Option<ShardKey>,
        /// A sentence for the agent and the shard's status.
        message: String,
    },
}

fn shard_key(text: &str) -> Option<ShardKey> {
    let (namespace, name) = text.split_once('/')?;
    (!namespace.is_empty() && !name.is_empty()).then(|| ShardKey {
        namespace: namespace.into(),
        name: name.into(),
    })
}

impl Ownership {
    /// The index over these shards.
    pub fn from_shards<'a>(shards: impl IntoIterator<Item = &'a AgentShard>) -> Ownership {
        let mut claims: HashMap<String, Vec<Claim>> = HashMap::new();
        let mut count = 0;
        for shard in shards {
            let Some(sref) = shard.shard_ref() else {
                continue;
            };
            if shard.metadata.deletion_timestamp.is_some() {
                // Being deleted: its names are free for the next claimant.
                continue;
            }
            count += 1;
            let key = ShardKey {
                namespace: sref.namespace,
                name: sref.name,
            };
            let created = shard
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(i64::MAX, |t| t.0.as_second());
            for name in shard.account_names() {
                let status = shard.account_status(name);
                claims.entry(name.to_owned()).or_default().push(Claim {
                    shard: key.clone(),
                    created,
                    conflict: status.is_some_and(|s| s.state == AccountState::Conflict),
                    active: status.is_some_and(|s| s.state == AccountState::Active),
                    owner_hint: status
                        .and_then(|s| s.owner_shard.as_deref())
                        .and_then(shard_key),
                });
            }
        }
        Ownership {
            claims,
            shards: count,
        }
    }

    /// Number of shards indexed.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The shard that owns `account`, if any shard lists it.
    pub fn owner(&self, account: &str) -> Option<ShardKey> {
        let claims = self.claims.get(account)?;
        let best = claims
            .iter()
            .filter(|c| !c.conflict)
            .min_by(|a, b| (!a.active, a.created, &a.shard).cmp(&(!b.active, b.created, &b.shard)));
        match best {
            Some(claim) => Some(claim.shard.clone()),
            // Every lister is in Conflict (the owner's shard is gone and the
            // operator has not caught up): the status names the owner.
            None => claims.iter().find_map(|c| c.owner_hint.clone()),
        }
    }

    /// May `shard` stream `account`?
    pub fn check(&self, account: &str, shard: &ShardKey) -> Verdict {
        match self.owner(account) {
            Some(owner) if owner == *shard => Verdict::Owner,
            Some(owner) => {
                let listed = self
                    .claims
                    .get(account)
                    .is_some_and(|c| c.iter().any(|c| c.shard == *shard));
                let why = if listed {
                    " (this shard lists it too, but the name is taken: its status shows Conflict)"
                } else {
                    ""
                };
                Verdict::NotOwner {
                    message: format!(
                        "account {account} is owned by AgentShard {owner}, not by {shard}{why}"
                    ),
                    owner: Some(owner),
                }
            }
            None => Verdict::NotOwner {
                owner: None,
                message: format!(
                    "no AgentShard lists account {account}; shard {shard} may not stream it"
                ),
            },
        }
    }
}

/// The current ownership index; `None` until the first complete list.
pub type OwnershipRx = watch::Receiver<Option<Arc<Ownership>>>;

/// Where the hub learns AgentShards from.
#[derive(Clone)]
pub enum ShardSource {
    /// Watch the AgentShards of these namespaces (empty: all namespaces)
    /// with this client (`None`: `kube::Client::try_default()`, i.e.
    /// in-cluster config or KUBECONFIG).
    Watch {
        /// Namespaces to watch; empty means all.
        namespaces: Vec<String>,
        /// The client; the default one when `None`.
        client: Option<Client>,
    },
    /// A fixed set, for tests and for running without a cluster.
    Fixed(Vec<AgentShard>),
}

impl std::fmt::Debug for ShardSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardSource::Watch { namespaces, client } => f
                .debug_struct("Watch")
                .field("namespaces", namespaces)
                .field("client", &client.as_ref().map(|_| "given"))
                .finish(),
            ShardSource::Fixed(shards) => f.debug_tuple("Fixed").field(&shards.len()).finish(),
        }
    }
}

/// Starts learning ownership from `source`; the receiver sees each new index.
pub async fn start(
    source: ShardSource,
    shutdown: CancellationToken,
) -> Result<OwnershipRx, crate::Error> {
    match source {
        ShardSource::Fixed(shards) => {
            let (tx, rx) = watch::channel(Some(Arc::new(Ownership::from_shards(&shards))));
            // Keep the sender alive for as long as the hub runs.
            tokio::spawn(async move {
                shutdown.cancelled().await;
                drop(tx);
            });
            Ok(rx)
        }
        ShardSource::Watch { namespaces, client } => {
            let client = match client {
                Some(c) => c,
                None => Client::try_default()
                    .await
                    .map_err(|e| crate::Error::Kube(e.to_string()))?,
            };
            let (tx, rx) = watch::channel(None);
            let tx = Arc::new(tx);
            let apis: Vec<(String, Api<AgentShard>)> = if namespaces.is_empty() {
                vec![("*".into(), Api::all(client))]
            } else {
                namespaces
                    .iter()
                    .map(|ns| (ns.clone(), Api::namespaced(client.clone(), ns)))
                    .collect()
            };
            let stores: Arc<std::sync::Mutex<Vec<Option<reflector::Store<AgentShard>>>>> =
                Arc::new(std::sync::Mutex::new(vec![None; apis.len()]));
            for (i, (namespace, api)) in apis.into_iter().enumerate() {
                tokio::spawn(watch_namespace(
                    i,
                    namespace,
                    api,
                    Arc::clone(&stores),
                    Arc::clone(&tx),
                    shutdown.clone(),
                ));
            }
            Ok(rx)
        }
    }
}

async fn watch_namespace(
    index: usize,
    namespace: String,
    api: Api<AgentShard>,
    stores: Arc<std::sync::Mutex<Vec<Option<reflector::Store<AgentShard>>>>>,
    tx: Arc<watch::Sender<Option<Arc<Ownership>>>>,
    shutdown: CancellationToken,
) {
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    futures::pin_mut!(stream);
    let mut ready = false;
    let mut last_error = String::new();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = stream.next() => event,
        };
        let Some(event) = event else {
            return;
        };
        match event {
            Ok(watcher::Event::InitDone) => {
                if !ready {
                    ready = true;
                    info!(%namespace, shards = reader.state().len(), "AgentShards listed; account ownership is enforced");
                    if let Ok(mut s) = stores.lock()
                        && let Some(slot) = s.get_mut(index)
                    {
                        *slot = Some(reader.clone());
                    }
                }
                last_error.clear();
                publish(&stores, &tx);
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                if ready {
                    publish(&stores, &tx);
                }
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Err(err) => {
                let text = err.to_string();
                if text != last_error {
                    warn!(%namespace, %err, "watching AgentShards failed; retrying (ownership decisions use the last list)");
                    last_error = text;
                }
                // The backoff delays the next attempt.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn publish(
    stores: &std::sync::Mutex<Vec<Option<reflector::Store<AgentShard>>>>,
    tx: &watch::Sender<Option<Arc<Ownership>>>,
) {
    let Ok(stores) = stores.lock() else {
        return;
    };
    if stores.iter().any(Option::is_none) {
        return;
    }
    let all: Vec<Arc<AgentShard>> = stores.iter().flatten().flat_map(|s| s.state()).collect();
    let ownership = Ownership::from_shards(all.iter().map(AsRef::as_ref));
    tx.send_replace(Some(Arc::new(ownership)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use scale_agent_crds::{AccountStatus, AgentShardStatus};

    fn shard(ns: &str, name: &str, created: i64, accounts: &[&str]) -> AgentShard {
        let spec = serde_json::json!({
            "accounts": accounts.iter().map(|a| serde_json::json!({
                "name": a, "kubeconfigSecretRef": {"name": format!("kc-{a}")}
            })).collect::<Vec<_>>()
        });
        let mut s = AgentShard::new(name, serde_json::from_value(spec).expect("spec"));
        s.metadata.namespace = Some(ns.into());
        s.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).expect("t")));
        s
    }

    fn with_status(
        mut s: AgentShard,
        account: &str,
        state: AccountState,
        owner: &str,
    ) -> AgentShard {
        let status = s.status.get_or_insert_with(AgentShardStatus::default);
        status.accounts.push(AccountStatus {
            name: account.into(),
            state,
            reason: String::new(),
            message: String::new(),
            owner_shard: (!owner.is_empty()).then(|| owner.to_owned()),
        });
        s
    }

    fn key(ns: &str, name: &str) -> ShardKey {
        ShardKey {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn the_only_lister_owns() {
        let o = Ownership::from_shards(&[shard("spinnaker", "east", 100, &["a", "b"])]);
        assert_eq!(o.check("a", &key("spinnaker", "east")), Verdict::Owner);
        assert_eq!(o.owner("b"), Some(key("spinnaker", "east")));
        match o.check("a", &key("spinnaker", "west")) {
            Verdict::NotOwner { owner, message } => {
                assert_eq!(owner, Some(key("spinnaker", "east")));
                assert!(
                    message.contains("owned by AgentShard spinnaker/east"),
                    "{message}"
                );
            }
            v => panic!("{v:?}"),
        }
        match o.check("c", &key("spinnaker", "east")) {
            Verdict::NotOwner { owner, message } => {
                assert_eq!(owner, None);
                assert!(
                    message.contains("no AgentShard lists account c"),
                    "{message}"
                );
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn conflict_in_status_means_not_owner() {
        // The younger shard was given the name by the operator's status
        // (e.g. the older one added it later): status wins over age.
        let old = with_status(
            shard("spinnaker", "old", 100, &["a"]),
            "a",
            AccountState::Conflict,
            "spinnaker/young",
        );
        let young = with_status(
            shard("spinnaker", "young", 200, &["a"]),
            "a",
            AccountState::Active,
            "",
        );
        let o = Ownership::from_shards(&[old, young]);
        assert_eq!(o.owner("a"), Some(key("spinnaker", "young")));
        match o.check("a", &key("spinnaker", "old")) {
            Verdict::NotOwner { owner, message } => {
                assert_eq!(owner, Some(key("spinnaker", "young")));
                assert!(message.contains("Conflict"), "{message}");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn without_status_the_oldest_claim_wins_then_the_name() {
        let o = Ownership::from_shards(&[
            shard("spinnaker", "b", 200, &["x"]),
            shard("spinnaker", "a", 300, &["x"]),
            shard("other", "z", 200, &["x"]),
        ]);
        assert_eq!(o.owner("x"), Some(key("other", "z")));
        assert_eq!(o.shards(), 3);
    }

    #[test]
    fn a_deleted_shard_owns_nothing_and_all_conflict_uses_the_hint() {
        let mut gone = shard("spinnaker", "gone", 100, &["x"]);
        gone.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(150).expect("t")));
        let waiting = with_status(
            shard("spinnaker", "next", 200, &["x"]),
            "x",
            AccountState::Conflict,
            "spinnaker/gone",
        );
        let o = Ownership::from_shards(&[gone, waiting]);
        assert_eq!(o.owner("x"), Some(key("spinnaker", "gone")));
        assert!(matches!(
            o.check("x", &key("spinnaker", "next")),
            Verdict::NotOwner { .. }
        ));
    }
}
