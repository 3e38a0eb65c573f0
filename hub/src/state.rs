//! The state every part of the hub shares: the settings, registry and cache
//! (under one lock, so "is this account held by this session" and "apply its
//! events" are one step), the store (and, when it is shared with other
//! replicas, this replica's side of it), live sessions, pending operations
//! and metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use scale_agent_proto::v1::HubFrame;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::core::cache::Cache;
use crate::core::operations::Operations;
use crate::core::ownership::OwnershipRx;
use crate::core::registry::{Binding, Registry, SessionId, ShardRef};
use crate::metrics::{Metrics, StateLabel};
use crate::net::identity::IdentityPolicy;
use crate::replicas::{Replicas, Timing};
use crate::store::{self, Store, StoreLocation};

/// The frames the hub sends on one session.
pub type Outbound = mpsc::Sender<Result<HubFrame, Status>>;

/// Registry and cache, changed together.
#[derive(Debug, Default)]
pub struct Core {
    /// Accounts.
    pub registry: Registry,
    /// Objects.
    pub cache: Cache,
}

/// One live session, as other tasks see it.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Where to send it frames.
    pub tx: Outbound,
    /// Its shard.
    pub shard: ShardRef,
    /// Its replica.
    pub replica: String,
}

/// Everything shared.
#[derive(Debug)]
pub struct Shared {
    /// The hub's settings, as checked by [`Config::checked`].
    pub config: Config,
    /// How sessions are authenticated (from the settings).
    pub identity: IdentityPolicy,
    /// Who owns which account, when enforced ([`Config::authorize`]).
    pub ownership: Option<OwnershipRx>,
    core: Mutex<Core>,
    /// Times [`Shared::core`] was taken (see [`Shared::core_locks`]).
    core_locks: std::sync::atomic::AtomicU64,
    /// Durable bindings.
    pub store: Box<dyn Store>,
    /// This replica's side of a store shared with other replicas
    /// (`--store postgres://...`); `None` for one hub.
    pub replicas: Option<Arc<Replicas>>,
    sessions: Mutex<HashMap<SessionId, SessionHandle>>,
    /// Operations waiting for results.
    pub operations: Operations,
    /// Kubernetes API requests in flight over sessions.
    pub tunnels: crate::kubeapi::Tunnels,
    /// Metrics.
    pub metrics: Metrics,
    /// Mints and checks the per-account tokens of the kubeconfigs pushed to
    /// Clouddriver (`--clouddriver-url`); `None` without it.
    pub minter: Option<Arc<crate::spinnaker::tokens::Minter>>,
    /// Cancelled when the hub shuts down.
    pub shutdown: CancellationToken,
}

impl Shared {
    /// Builds the shared state from the settings: opens the store
    /// ([`Config::store`]) and loads its bindings, each a Disconnected
    /// account whose grace period starts now. `ownership` is the index
    /// [`crate::core::ownership::start`] keeps, when ownership is enforced.
    pub fn new(
        config: Config,
        ownership: Option<OwnershipRx>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Shared>, crate::Error> {
        let config = config.checked()?;
        let identity = IdentityPolicy::start(&config, &shutdown)?;
        let store = store::open(&config.store)?;
        let bindings = store.load()?;
        let replicas = match &config.store {
            StoreLocation::Postgres(url) => Some(Arc::new(Replicas::new(
                crate::store::PgStore::open(url, config.store_password_file.as_deref())
                    .map_err(crate::Error::Store)?,
                &config.hub_id,
                Timing {
                    heartbeat: config.replica_heartbeat,
                    timeout: config.replica_timeout,
                    grace: config.grace_period,
                },
                crate::replicas::forward::Forwarder::for_config(&config)?,
            )?)),
            _ => None,
        };
        let minter = match &config.clouddriver {
            Some(cd) => {
                let minted = match &cd.token_key {
                    Some(key) => crate::spinnaker::tokens::Minter::new(
                        key.trim_ascii().to_vec(),
                        cd.token_rotation,
                    ),
                    None => crate::spinnaker::tokens::Minter::random(cd.token_rotation),
                };
                Some(Arc::new(minted.map_err(|message| {
                    crate::Error::Setting {
                        setting: "--clouddriver-token-key-file",
                        message,
                    }
                })?))
            }
            None => None,
        };
        let mut core = Core::default();
        if replicas.is_some() {
            // The changes of every account are written behind to the shared
            // store.
            core.cache = crate::core::cache::Cache::noting_changes();
        }
        let expiries = core.registry.load(bindings, SystemTime::now());
        if !expiries.is_empty() {
            info!(
                accounts = expiries.len(),
                "loaded account bindings from the store"
            );
        }
        let shared = Arc::new(Shared {
            config,
            identity,
            ownership,
            core: Mutex::new(core),
            core_locks: std::sync::atomic::AtomicU64::new(0),
            store,
            replicas,
            sessions: Mutex::new(HashMap::new()),
            operations: Operations::default(),
            tunnels: crate::kubeapi::Tunnels::default(),
            metrics: Metrics::default(),
            minter,
            shutdown,
        });
        shared.schedule_expiry(expiries);
        Ok(shared)
    }

    /// Locks registry and cache. Never held across an await.
    pub fn core(&self) -> MutexGuard<'_, Core> {
        // Every change under this lock is a whole step of plain data updates;
        // a panic cannot leave it half-way in a way worse than losing the
        // hub, so keep serving rather than fail every later request.
        self.core_locks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many times registry and cache were locked since the hub started: what
    /// tests count to prove a path does not take the lock per watch or per request.
    pub fn core_locks(&self) -> u64 {
        self.core_locks.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<SessionId, SessionHandle>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a live session.
    pub fn add_session(&self, id: SessionId, handle: SessionHandle) {
        let count = {
            let mut sessions = self.sessions();
            sessions.insert(id, handle);
            sessions.len()
        };
        self.metrics
            .sessions
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Removes a session (it ended).
    pub fn remove_session(&self, id: &SessionId) {
        let count = {
            let mut sessions = self.sessions();
            sessions.remove(id);
            sessions.len()
        };
        self.metrics
            .sessions
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// A live session by id.
    pub fn session(&self, id: &SessionId) -> Option<SessionHandle> {
        self.sessions().get(id).cloned()
    }

    /// True when the session is live.
    pub fn is_live(&self, id: &SessionId) -> bool {
        self.sessions().contains_key(id)
    }

    /// Sends a frame to another session without waiting on its queue: the
    /// caller's own stream must never stall on someone else's slow reader.
    pub fn send_detached(&self, session: &SessionId, frame: HubFrame) {
        if let Some(handle) = self.session(session) {
            tokio::spawn(async move {
                // The receiver may be gone; then there is nobody to tell.
                let _ = handle.tx.send(Ok(frame)).await;
            });
        }
    }

    /// Writes a binding; a failure is logged and counted, the registration
    /// stands (the binding is enforced in memory until the next restart).
    pub fn persist(&self, name: &str, binding: &Binding) {
        if let Err(err) = self.store.put(name, binding) {
            self.metrics.store_errors.inc();
            warn!(account = name, %err, "could not persist the account binding");
        }
    }

    /// Removes an account with its cache and binding.
    pub fn forget(&self, name: &str, reason: &'static str) {
        if let Err(err) = self.store.remove(name) {
            self.metrics.store_errors.inc();
            warn!(account = name, %err, "could not remove the account binding from the store");
        }
        if let Some(replicas) = &self.replicas {
            replicas.removed(name);
        }
        self.metrics.account_removed(reason);
    }

    /// Whether the hub can do all it should: `Err` says why not (the shared
    /// store does not answer).
    pub fn ready(&self) -> Result<(), String> {
        match &self.replicas {
            Some(replicas) => replicas.ready(),
            None => Ok(()),
        }
    }

    /// After the grace period, removes each account that is still
    /// Disconnected since the given epoch, with its objects and binding.
    ///
    /// With a shared store the accounts are recorded Disconnected there now,
    /// and its leader removes them after the grace period (once, for every
    /// replica); here only the local copy is dropped then.
    pub fn schedule_expiry(self: &Arc<Self>, expiries: Vec<(String, u64)>) {
        if expiries.is_empty() {
            return;
        }
        if let Some(replicas) = &self.replicas {
            replicas.released(expiries.iter().map(|(name, _)| name.clone()).collect());
        }
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(shared.config.grace_period) => {}
                () = shared.shutdown.cancelled() => return,
            }
            for (name, epoch) in expiries {
                let removed = {
                    let mut core = shared.core();
                    if core.registry.expire(&name, epoch) {
                        if let Some(replicas) = &shared.replicas {
                            replicas.forget_claim(&name);
                        }
                        Some(core.cache.remove(&name))
                    } else {
                        None
                    }
                };
                if let (Some(objects), Some(_)) = (removed, &shared.replicas) {
                    debug!(account = %name, objects, "grace period over: dropped this replica's copy (the shared store's leader removes the account)");
                    continue;
                }
                if let Some(objects) = removed {
                    info!(
                        account = %name,
                        objects,
                        grace_period = ?shared.config.grace_period,
                        "account removed: its agent did not come back within the grace period"
                    );
                    shared.forget(&name, "grace_period_expired");
                }
            }
        });
    }

    /// Refreshes the gauges computed from the registry and cache.
    pub fn refresh_gauges(&self) {
        let (connected, disconnected, objects) = {
            let core = self.core();
            let (c, d) = core.registry.counts();
            (c, d, core.cache.total())
        };
        let to_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics
            .accounts
            .get_or_create(&StateLabel { state: "connected" })
            .set(to_i64(connected));
        self.metrics
            .accounts
            .get_or_create(&StateLabel {
                state: "disconnected",
            })
            .set(to_i64(disconnected));
        self.metrics.objects.set(to_i64(objects));
        self.metrics
            .kube_api_requests_in_flight
            .set(to_i64(self.tunnels.in_flight()));
    }

    /// Senders of every live session (for draining at shutdown).
    pub fn all_sessions(&self) -> Vec<(SessionId, SessionHandle)> {
        self.sessions()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
