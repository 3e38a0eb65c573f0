//! Which shard owns which account, learned by watching AgentShards
//! (`--authorize-shards`).
//!
//! The owner of an account name is decided by the ownership rule the operator and its
//! webhook use ([`scale_agent_crds::claims`]): the shard whose status holds the name
//! (any state but `Conflict`), else the oldest claim in the specs (recorded claim time,
//! then creationTimestamp, then namespace/name). A shard may stream an account only
//! when it owns it and its spec still lists it: a holder letting a name go (its spec no
//! longer lists it) keeps it from everyone until the operator has rewritten its agent
//! config and status without it.
//!
//! Before the first complete list of AgentShards the hub cannot decide; a
//! Register then waits a few seconds and is answered `UNAVAILABLE` (retry). An
//! AgentShard the hub cannot decode is skipped (logged once per version) and stands as
//! its last decodable version, so it neither stops the watch nor frees its names.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource as _};
use scale_agent_crds::claims::Claims;
use scale_agent_crds::decode::{self, Undecodable};
use scale_agent_crds::{AgentShard, ShardRef};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The account → owner index, built from a complete set of AgentShards.
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    claims: Claims,
    /// Each account's entry in the spec of the shard that owns it.
    specs: HashMap<String, scale_agent_crds::AccountSpec>,
    /// Each shard as an Event names it (with its uid, which `kubectl describe` matches).
    refs: HashMap<ShardRef, ObjectReference>,
}

/// The answer for one account and one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The shard owns the account.
    Owner,
    /// It does not; `owner` is the shard that does, when there is one.
    NotOwner {
        /// The owning shard.
        owner: Option<ShardRef>,
        /// A sentence for the agent and the shard's status.
        message: String,
    },
}

impl Ownership {
    /// The index over these shards.
    pub fn from_shards<'a>(shards: impl IntoIterator<Item = &'a AgentShard>) -> Ownership {
        let shards: Vec<&AgentShard> = shards.into_iter().collect();
        let claims = Claims::from_shards(shards.iter().copied());
        let mut specs = HashMap::new();
        let mut refs = HashMap::new();
        for shard in &shards {
            let Some(me) = shard.shard_ref() else {
                continue;
            };
            refs.insert(me.clone(), shard.object_ref(&()));
            for account in &shard.spec.accounts {
                if claims.owner(&account.name).is_some_and(|o| o.shard == me) {
                    specs.insert(account.name.clone(), account.clone());
                }
            }
        }
        Ownership {
            claims,
            specs,
            refs,
        }
    }

    /// The AgentShard that owns `account`, as an Event about it names it.
    pub fn owner_reference(&self, account: &str) -> Option<&ObjectReference> {
        self.refs.get(&self.owner(account)?)
    }

    /// `account`'s entry in the spec of the shard that owns it (what Clouddriver is told
    /// of the account: its namespaces, kinds, permissions).
    pub fn spec(&self, account: &str) -> Option<&scale_agent_crds::AccountSpec> {
        self.specs.get(account)
    }

    /// Number of shards indexed (those being deleted are not).
    pub fn shards(&self) -> usize {
        self.claims.shard_count()
    }

    /// The shard that owns `account`, if any shard holds or lists it.
    pub fn owner(&self, account: &str) -> Option<ShardRef> {
        self.claims.owner(account).map(|o| o.shard)
    }

    /// May `shard` stream `account`?
    pub fn check(&self, account: &str, shard: &ShardRef) -> Verdict {
        let Some(owner) = self.claims.owner(account) else {
            return Verdict::NotOwner {
                owner: None,
                message: format!(
                    "no AgentShard lists account {account}; shard {shard} may not stream it"
                ),
            };
        };
        if owner.serves(shard) {
            return Verdict::Owner;
        }
        let message = if owner.releasing {
            format!(
                "account {account} is being released by AgentShard {}: its spec no longer lists it, and no shard may stream it until the operator has rewritten that shard's agent config without it",
                owner.shard
            )
        } else {
            let listed = self.claims.stake(account, shard).is_some_and(|s| s.claims);
            let why = if listed {
                " (this shard lists it too, but the name is taken: its status shows Conflict)"
            } else {
                ""
            };
            format!(
                "account {account} is owned by AgentShard {}, not by {shard}{why}",
                owner.shard
            )
        };
        Verdict::NotOwner {
            owner: Some(owner.shard),
            message,
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
            let apis: Vec<(String, Api<DeserializeGuard<AgentShard>>)> = if namespaces.is_empty() {
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
    api: Api<DeserializeGuard<AgentShard>>,
    stores: Arc<std::sync::Mutex<Vec<Option<reflector::Store<AgentShard>>>>>,
    tx: Arc<watch::Sender<Option<Arc<Ownership>>>>,
    shutdown: CancellationToken,
) {
    let mut writer = reflector::store::Writer::<AgentShard>::default();
    let reader = writer.as_reader();
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut ready = false;
    let mut last_error = String::new();
    // Shard → the resourceVersion last reported as undecodable.
    let mut undecodable: HashMap<ShardRef, Option<String>> = HashMap::new();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = stream.next() => event,
        };
        let Some(event) = event else {
            return;
        };
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                let text = decode::bounded(&err.to_string(), decode::MAX_REASON_LEN);
                if text != last_error {
                    warn!(%namespace, err = %text, "watching AgentShards failed; retrying (ownership decisions use the last list)");
                    last_error = text;
                }
                // The backoff delays the next attempt.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let sifted = decode::sift(event, |r| {
            reader
                .get(&ObjectRef::new(&r.name).within(&r.namespace))
                .map(|s| s.as_ref().clone())
        });
        match sifted.undecodable {
            Some(u) => report_undecodable(&mut undecodable, u),
            None => {
                if !undecodable.is_empty()
                    && let Some(
                        watcher::Event::Apply(s)
                        | watcher::Event::InitApply(s)
                        | watcher::Event::Delete(s),
                    ) = &sifted.event
                    && let Some(r) = s.shard_ref()
                {
                    undecodable.remove(&r);
                }
            }
        }
        let Some(event) = sifted.event else {
            continue;
        };
        writer.apply_watcher_event(&event);
        match event {
            watcher::Event::InitDone => {
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
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                if ready {
                    publish(&stores, &tx);
                }
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }
}

/// Logs an AgentShard that cannot be decoded, once per version.
fn report_undecodable(reported: &mut HashMap<ShardRef, Option<String>>, u: Undecodable) {
    if reported.get(&u.shard) == Some(&u.resource_version) {
        return;
    }
    warn!(
        shard = %u.shard,
        resource_version = u.resource_version.as_deref().unwrap_or(""),
        reason = %u.reason,
        kept_last_good = u.kept_last_good,
        "AgentShard cannot be decoded; skipped (ownership uses its last decodable version, if any)"
    );
    reported.insert(u.shard, u.resource_version);
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
    use scale_agent_crds::{AccountState, AccountStatus, AgentShardStatus};

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
            claimed_at: None,
        });
        s
    }

    fn key(ns: &str, name: &str) -> ShardRef {
        ShardRef {
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
    fn a_deleting_shard_owns_nothing_and_the_next_claimant_owns_at_once() {
        // The operator frees a deleting shard's names at once, and so does the hub:
        // the deleting shard's agents are refused, the next claimant is not.
        let mut gone = with_status(
            shard("spinnaker", "gone", 100, &["x"]),
            "x",
            AccountState::Active,
            "",
        );
        gone.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(150).expect("t")));
        let waiting = with_status(
            shard("spinnaker", "next", 200, &["x"]),
            "x",
            AccountState::Conflict,
            "spinnaker/gone",
        );
        let o = Ownership::from_shards(&[gone, waiting]);
        assert_eq!(o.owner("x"), Some(key("spinnaker", "next")));
        assert_eq!(o.shards(), 1);
        assert_eq!(o.check("x", &key("spinnaker", "next")), Verdict::Owner);
        assert!(matches!(
            o.check("x", &key("spinnaker", "gone")),
            Verdict::NotOwner { .. }
        ));
    }

    #[test]
    fn a_name_being_released_is_nobodys_to_stream() {
        // east's status holds x, its spec dropped it; west claims it.
        let east = with_status(
            shard("spinnaker", "east", 100, &[]),
            "x",
            AccountState::Active,
            "",
        );
        let west = shard("spinnaker", "west", 50, &["x"]);
        let o = Ownership::from_shards(&[east, west]);
        assert_eq!(o.owner("x"), Some(key("spinnaker", "east")));
        for who in ["east", "west"] {
            match o.check("x", &key("spinnaker", who)) {
                Verdict::NotOwner { owner, message } => {
                    assert_eq!(owner, Some(key("spinnaker", "east")));
                    assert!(message.contains("being released"), "{message}");
                }
                v => panic!("{who}: {v:?}"),
            }
        }
    }

    #[test]
    fn a_state_from_a_newer_operator_still_holds() {
        let status: AgentShardStatus = serde_json::from_value(serde_json::json!({
            "accounts": [{ "name": "x", "state": "SomethingNew" }],
        }))
        .expect("an unknown state reads");
        let mut newer = shard("spinnaker", "newer", 100, &["x"]);
        newer.status = Some(status);
        let older = shard("spinnaker", "older", 10, &["x"]);
        let o = Ownership::from_shards(&[newer, older]);
        assert_eq!(o.check("x", &key("spinnaker", "newer")), Verdict::Owner);
    }
}
