//! Clouddriver follows the shards (`--clouddriver-url`): the hub keeps Clouddriver's
//! `kubernetes` account definitions (its account storage API, Spinnaker ≥ 1.28 with
//! `account.storage.enabled`) in step with the accounts it serves.
//!
//! Every `--clouddriver-sync-interval` the writer (the one hub, or the replicas' leader)
//! lists Clouddriver's definitions and [`definition::plan`]s: an account the hub serves
//! (streaming, or within its grace period) and Clouddriver lacks is created, with a
//! kubeconfig naming the hub's Kubernetes API for that account and a token minted for
//! it alone ([`tokens`]); a definition the hub made that says something else (the
//! shard's namespaces, kinds, permissions, or the next token) is updated; one the hub
//! made for an account it no longer serves is deleted. An account no shard lists any
//! more, still served within its grace period, keeps its definition as it is. A
//! definition of the same name the hub did not make is left alone and reported. A change
//! Clouddriver refuses or cannot take is retried with a backoff of its own, so one
//! account never holds back the others.
//!
//! This folder imports `core` alone (`hub/tests/layout.rs`); the root hands it the accounts
//! ([`Accounts`]) and the kubeconfig of an account ([`Kubeconfig`]).

pub mod client;
pub mod definition;
pub mod secret;
pub mod tokens;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::client::{CallError, Client};
use self::definition::{Action, Wanted};
use self::tokens::Minter;
use crate::core::clip::clip;

/// Longest wait before a refused change is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How to reach Clouddriver and what to tell it.
#[derive(Debug, Clone)]
pub struct ClouddriverConfig {
    /// Clouddriver's base URL, e.g. `http://spin-clouddriver:7002`: its account storage
    /// API is kept in step (`--clouddriver-url`).
    pub url: Option<String>,
    /// The Secret kept for a Clouddriver without that API (`--clouddriver-secret`).
    pub secret: Option<secret::SecretTarget>,
    /// Sent as `X-SPINNAKER-USER`.
    pub user: String,
    /// The CA that signs Clouddriver's certificate (PEM), for `https://` URLs; the
    /// system's roots when `None`.
    pub ca_pem: Option<Vec<u8>>,
    /// The hub's Kubernetes API as Clouddriver reaches it (the kubeconfigs' server).
    pub kube_api_server: String,
    /// The CA of the hub's Kubernetes API, written into the kubeconfigs.
    pub kube_api_ca_pem: Option<Vec<u8>>,
    /// How often the definitions are compared and changed.
    pub interval: Duration,
    /// The key the account tokens are minted with (shared by replicas); random when
    /// `None` (one hub).
    pub token_key: Option<Vec<u8>>,
    /// How often the tokens turn.
    pub token_rotation: Duration,
}

/// The accounts the hub serves, as the root knows them.
pub trait Accounts: Send + Sync {
    /// True when this hub is the one that writes (one hub, or the replicas' leader).
    fn may_write(&self) -> bool;
    /// Every account served (streaming, or within its grace period), with what its
    /// shard says of it.
    fn wanted(&self) -> BoxFuture<'_, Result<Vec<Wanted>, String>>;
    /// Tells the platform team what became of `account`'s definition (an Event on the
    /// AgentShard that declares it); called once per change, not once per round.
    fn report(&self, account: &str, report: &Report);
}

/// What became of one account's definition, as a platform team is told (an Event on its
/// AgentShard). Nothing here quotes a definition: its kubeconfig holds a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Clouddriver made the change (`create`, `update`, `delete`).
    Pushed {
        /// The change.
        action: &'static str,
    },
    /// Clouddriver answered the change with an error.
    Refused {
        /// The change.
        action: &'static str,
        /// Why, as Clouddriver said it (clipped; withheld when it quotes the
        /// definition).
        message: String,
    },
    /// Clouddriver has a definition of the account's name that this hub did not make.
    Foreign,
}

impl Report {
    /// The Event's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Report::Pushed { .. } => "ClouddriverAccountPushed",
            Report::Refused { .. } => "ClouddriverAccountRefused",
            Report::Foreign => "ClouddriverAccountForeign",
        }
    }

    /// True for what a platform team must act on (a Warning Event).
    pub fn warning(&self) -> bool {
        !matches!(self, Report::Pushed { .. })
    }

    /// The Event's note: bounded (the account name and Clouddriver's message clipped),
    /// well under the 1 KiB the API server accepts.
    pub fn note(&self, account: &str) -> String {
        let account = clip(account);
        match self {
            Report::Pushed { action } => {
                format!("Clouddriver's kubernetes account {account}: {action}d by the hub")
            }
            Report::Refused { action, message } => format!(
                "Clouddriver refused to {action} its kubernetes account {account}: {}; the hub tries again with a backoff",
                clip(message)
            ),
            Report::Foreign => format!(
                "Clouddriver already has a kubernetes account {account} that this hub did not make: left alone, and this account is not defined in Clouddriver by the hub (delete that definition in Clouddriver for the hub to create its own, or rename the account)"
            ),
        }
    }
}

/// The kubeconfig of `(account, token)`.
pub type Kubeconfig = Arc<dyn Fn(&str, &str) -> Result<String, String> + Send + Sync>;

/// What was done with a definition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PushLabel {
    /// `create`, `update` or `delete`.
    pub action: &'static str,
    /// `ok`, `refused`, `unreachable`.
    pub outcome: &'static str,
}

/// The metrics of the sync (fields of the hub's metrics).
#[derive(Debug, Clone, Default)]
pub struct SyncMetrics {
    /// Changes sent, by action and outcome.
    pub pushes: Family<PushLabel, Counter>,
    /// Definitions of a served account's name that the hub did not make.
    pub foreign: Gauge,
    /// Accounts whose definition says what the hub wants.
    pub in_step: Gauge,
    /// Lists of Clouddriver's definitions that failed.
    pub list_failures: Counter,
    /// Served accounts whose last change Clouddriver refused (tried again with a
    /// backoff).
    pub refused: Gauge,
}

/// What a writer (the account storage API's sync, or the Secret's) works from.
#[derive(Clone)]
pub struct Sources {
    /// Mints each account's token.
    pub minter: Arc<Minter>,
    /// The accounts served, and where what became of them is reported.
    pub accounts: Arc<dyn Accounts>,
    /// The kubeconfig of an account.
    pub kubeconfig: Kubeconfig,
    /// The sync's metrics.
    pub metrics: SyncMetrics,
    /// The hub's grace period: how long an account served by no shard keeps what was
    /// written for it.
    pub grace: Duration,
    /// Ends the writer.
    pub shutdown: CancellationToken,
}

/// The retry state of one account.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    next: Instant,
}

/// Since when this writer has seen each account whose definition (or Secret entry) it
/// made served by no shard: removed once that is the grace period ago. An account moving
/// between shards, or whose agent reconnects after a restart of the hub, keeps it.
#[derive(Debug, Default)]
struct Leaving(HashMap<String, Instant>);

impl Leaving {
    /// Of `gone` (the accounts no longer served that still have one), those whose removal
    /// waits: seen gone for less than `grace`. Forgets the accounts no longer gone.
    fn held(&mut self, gone: &BTreeSet<String>, grace: Duration) -> BTreeSet<String> {
        let now = Instant::now();
        self.0.retain(|name, _| gone.contains(name));
        for name in gone {
            self.0.entry(name.clone()).or_insert(now);
        }
        self.0
            .iter()
            .filter(|(_, since)| since.elapsed() < grace)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// One round's accounts: those a shard lists, each with its kubeconfig (a token minted
/// now), and those served but listed by no shard (whose definition or entry is kept as
/// it is).
struct Round {
    listed: Vec<(Wanted, String)>,
    kept: BTreeSet<String>,
}

/// The accounts served, for one round of `what` (the sync, or the Secret); `None` (and
/// a warning) when they cannot be listed.
async fn served(
    accounts: &dyn Accounts,
    minter: &Minter,
    kubeconfig: &Kubeconfig,
    what: &str,
) -> Option<Round> {
    let wanted = match accounts.wanted().await {
        Ok(w) => w,
        Err(err) => {
            warn!(%err, "{what}: cannot list the accounts served; trying again");
            return None;
        }
    };
    let now = SystemTime::now();
    let mut round = Round {
        listed: Vec::new(),
        kept: BTreeSet::new(),
    };
    for w in wanted {
        if !w.listed {
            round.kept.insert(w.name);
            continue;
        }
        match kubeconfig(&w.name, &minter.token(&w.name, now)) {
            Ok(k) => round.listed.push((w, k)),
            Err(err) => warn!(account = %w.name, %err, "{what}: no kubeconfig for the account"),
        }
    }
    Some(round)
}

fn backoff_after(failures: u32) -> Duration {
    let secs = 1u64 << failures.min(9);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

/// Starts the sync; it ends with `shutdown`. A definition the hub made is deleted once
/// this writer has seen its account served by no shard for `grace` (the hub's grace
/// period): an account moving between shards, or whose agent reconnects after a
/// restart of the hub, keeps its definition.
pub fn start(config: ClouddriverConfig, sources: Sources) -> Result<(), String> {
    let Sources {
        minter,
        accounts,
        kubeconfig,
        metrics,
        grace,
        shutdown,
    } = sources;
    let Some(url) = config.url.clone() else {
        return Ok(());
    };
    let client = Client::new(&url, &config.user, config.ca_pem.as_deref())?;
    info!(%url, server = %config.kube_api_server, interval = ?config.interval,
        "keeping Clouddriver's kubernetes account definitions in step with the accounts served");
    tokio::spawn(async move {
        let mut leaving = Leaving::default();
        let mut backoff: HashMap<String, Backoff> = HashMap::new();
        let mut reported: BTreeSet<String> = BTreeSet::new();
        // The last refusal reported of each account (reported again only when it says
        // something else), until a change of it goes through.
        let mut refusals: HashMap<String, Report> = HashMap::new();
        let mut was_writer = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(config.interval) => {}
            }
            let writer = accounts.may_write();
            if writer != was_writer {
                info!(
                    writer,
                    "Clouddriver sync: this hub {} the writer",
                    if writer { "is now" } else { "is no longer" }
                );
                was_writer = writer;
            }
            if !writer {
                continue;
            }
            let Some(round) =
                served(accounts.as_ref(), &minter, &kubeconfig, "Clouddriver sync").await
            else {
                continue;
            };
            let kept = round.kept;
            let desired: BTreeMap<String, serde_json::Value> = round
                .listed
                .iter()
                .map(|(w, k)| {
                    (
                        w.name.clone(),
                        definition::render(w, &config.kube_api_server, k),
                    )
                })
                .collect();
            let current = match client.list().await {
                Ok(c) => c,
                Err(err) => {
                    metrics.list_failures.inc();
                    warn!(%err, "Clouddriver sync: cannot list Clouddriver's kubernetes definitions; trying again");
                    continue;
                }
            };
            let actions = definition::plan(&desired, &kept, &current, &config.kube_api_server);
            let foreign: BTreeSet<String> = actions
                .iter()
                .filter(|a| matches!(a, Action::Foreign(_)))
                .map(|a| a.account().to_owned())
                .collect();
            for name in foreign.difference(&reported) {
                warn!(account = %name, "Clouddriver has a kubernetes definition of this name that this hub did not make: left alone (delete it in Clouddriver for the hub to create its own)");
                accounts.report(name, &Report::Foreign);
            }
            reported = foreign;
            metrics
                .foreign
                .set(i64::try_from(reported.len()).unwrap_or(i64::MAX));
            let changing = actions
                .iter()
                .filter(|a| matches!(a, Action::Create(_) | Action::Update(_)))
                .count();
            metrics.in_step.set(
                i64::try_from(desired.len().saturating_sub(changing + reported.len()))
                    .unwrap_or(i64::MAX),
            );
            backoff.retain(|name, _| actions.iter().any(|a| a.account() == name));
            refusals.retain(|name, _| {
                actions
                    .iter()
                    .any(|a| a.account() == name && !matches!(a, Action::Foreign(_)))
            });
            let gone: BTreeSet<String> = actions
                .iter()
                .filter_map(|a| match a {
                    Action::Delete(name) => Some(name.clone()),
                    _ => None,
                })
                .collect();
            let held = leaving.held(&gone, grace);
            for action in actions {
                if matches!(action, Action::Foreign(_)) {
                    continue;
                }
                if let Action::Delete(name) = &action
                    && held.contains(name)
                {
                    debug!(
                        account = %name,
                        "Clouddriver sync: delete held back until the account has been served by no shard for the grace period"
                    );
                    continue;
                }
                let account = action.account().to_owned();
                if backoff
                    .get(&account)
                    .is_some_and(|b| b.next > Instant::now())
                {
                    continue;
                }
                match client.apply(&action).await {
                    Ok(()) => {
                        info!(%account, action = action.verb(), "Clouddriver sync: definition pushed");
                        metrics
                            .pushes
                            .get_or_create(&PushLabel {
                                action: action.verb(),
                                outcome: "ok",
                            })
                            .inc();
                        backoff.remove(&account);
                        refusals.remove(&account);
                        accounts.report(
                            &account,
                            &Report::Pushed {
                                action: action.verb(),
                            },
                        );
                    }
                    Err(err) => {
                        let entry = backoff.entry(account.clone()).or_insert(Backoff {
                            failures: 0,
                            next: Instant::now(),
                        });
                        entry.failures += 1;
                        let wait = backoff_after(entry.failures);
                        entry.next = Instant::now() + wait;
                        metrics
                            .pushes
                            .get_or_create(&PushLabel {
                                action: action.verb(),
                                outcome: err.outcome(),
                            })
                            .inc();
                        warn!(%account, action = action.verb(), %err, retry_in = ?wait, "Clouddriver sync: change not made");
                        // Per account: what Clouddriver said of this definition (no
                        // answer at all concerns every account: the log and the metrics).
                        if let CallError::Refused {
                            status, message, ..
                        } = &err
                        {
                            let report = Report::Refused {
                                action: action.verb(),
                                message: format!("{status}: {message}"),
                            };
                            if refusals.get(&account) != Some(&report) {
                                accounts.report(&account, &report);
                                refusals.insert(account.clone(), report);
                            }
                        }
                    }
                }
            }
            metrics
                .refused
                .set(i64::try_from(refusals.len()).unwrap_or(i64::MAX));
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_gone_is_held_for_the_grace_period_from_when_it_was_first_seen_gone() {
        let grace = Duration::from_millis(50);
        let mut leaving = Leaving::default();
        let both = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        assert_eq!(leaving.held(&both, grace), both);
        std::thread::sleep(grace + Duration::from_millis(10));
        // a, gone since the first round: no longer held. b is served again (not gone):
        // forgotten.
        assert!(
            leaving
                .held(&BTreeSet::from(["a".to_owned()]), grace)
                .is_empty()
        );
        // b gone again waits anew; a's wait still counts from when it was first seen.
        assert_eq!(leaving.held(&both, grace), BTreeSet::from(["b".to_owned()]));
    }

    #[test]
    fn the_backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff_after(1), Duration::from_secs(2));
        assert_eq!(backoff_after(2), Duration::from_secs(4));
        assert_eq!(backoff_after(30), MAX_BACKOFF);
    }
}
