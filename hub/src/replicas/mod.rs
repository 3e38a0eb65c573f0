//! Several hub replicas behind one load balancer, sharing a PostgreSQL store
//! (`--store postgres://...`).
//!
//! Each replica holds the streams that reached it, caches their accounts,
//! and keeps its word in the shared store:
//! - **Claims.** An account is held by the replica whose claim came last
//!   (`stream/register_shared.rs`); the claim raises the account's epoch, and the
//!   replica writes only at the epoch it claimed at. [`Replicas::claims`] is
//!   this replica's side of that: account → epoch, for the accounts whose
//!   cache here is current.
//! - **Write-behind.** Every [`FLUSH_INTERVAL`] the changes of each claimed
//!   account's cache go to the store in one transaction per account, objects
//!   and resume points together: a replica taking the account over starts
//!   from them and the agent resumes its watches there, without a relist.
//! - **Liveness.** Every heartbeat interval the replica records that it is
//!   alive and where it is reached; one replica holds the leader lease and
//!   enforces grace periods for everyone ([`crate::store::PgStore::sweep`]),
//!   so each is enforced once, also for the accounts of replicas that died.
//! - **Letting go.** A claim elsewhere is announced (LISTEN/NOTIFY) and also
//!   checked at every heartbeat: the replica that lost an account drops its
//!   copy and tells the session that streamed it (SUPERSEDED, or NOT_OWNER
//!   when the account moved to another shard).
//! - **Unreachable store.** The replica serves what it holds, refuses new
//!   registrations (UNAVAILABLE, the agent retries), reports unready on
//!   `/readyz`, keeps the changes it could not write, and catches up by
//!   itself when the database answers again.

pub mod forward;
pub mod inflight;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::core::answer::Refusal;
use crate::core::clip::clip;
use crate::core::registry::{Caller, SessionId};
use crate::state::Shared;
use crate::store::postgres::{AccountRow, FlushError, PgStore, ReplicaInfo};
use forward::Forwarder;

/// How often each claimed account's changes are written to the store: the
/// most a replica taking an account over has to replay from the cluster.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);

/// Liveness settings.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often a replica records that it is alive.
    pub heartbeat: Duration,
    /// A replica silent for longer is dead: its accounts are Disconnected
    /// and its operations go to the accounts' next holders.
    pub timeout: Duration,
    /// How long a Disconnected account is kept.
    pub grace: Duration,
}

/// Whether the shared store answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not reached yet (connecting, migrating).
    Starting(String),
    /// It answered the last heartbeat.
    Ready,
    /// It did not answer; why.
    Unreachable(String),
}

/// This replica's side of the shared store.
#[derive(Debug)]
pub struct Replicas {
    store: PgStore,
    me: RwLock<ReplicaInfo>,
    claims: Mutex<HashMap<String, u64>>,
    health: watch::Sender<Health>,
    leader: AtomicBool,
    timing: Timing,
    /// Since when the store has answered without a break.
    answering_since: Mutex<Option<Instant>>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// The client requests are forwarded to other replicas with.
    pub forwarder: Forwarder,
}

impl Replicas {
    /// This replica (`id`) on `store`, forwarding with `forwarder`; nothing is
    /// connected until [`Replicas::start`].
    pub fn new(
        store: PgStore,
        id: &str,
        timing: Timing,
        forwarder: Forwarder,
    ) -> Result<Replicas, crate::Error> {
        let (health, _) = watch::channel(Health::Starting(format!(
            "connecting to the shared store {}",
            store.location()
        )));
        Ok(Replicas {
            store,
            me: RwLock::new(ReplicaInfo {
                id: id.to_owned(),
                api_url: String::new(),
                kube_api_url: String::new(),
            }),
            claims: Mutex::new(HashMap::new()),
            health,
            leader: AtomicBool::new(false),
            timing,
            answering_since: Mutex::new(None),
            task: Mutex::new(None),
            forwarder,
        })
    }

    /// The shared store.
    pub fn store(&self) -> &PgStore {
        &self.store
    }

    /// This replica's id.
    pub fn id(&self) -> String {
        self.info().id
    }

    /// This replica as the others reach it.
    pub fn info(&self) -> ReplicaInfo {
        self.me.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Where the others reach this replica's HTTP API (set once it listens).
    pub fn advertise_api(&self, url: String) {
        self.me.write().unwrap_or_else(|p| p.into_inner()).api_url = url;
    }

    /// Where the others reach this replica's Kubernetes API, when it serves
    /// one.
    pub fn advertise_kube_api(&self, url: String) {
        self.me
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .kube_api_url = url;
    }

    /// The liveness settings.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Whether the store answers; `Err` says why not.
    pub fn ready(&self) -> Result<(), String> {
        match &*self.health.borrow() {
            Health::Ready => Ok(()),
            Health::Starting(why) | Health::Unreachable(why) => Err(why.clone()),
        }
    }

    /// True while this replica holds the leader lease.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// The claims, locked. Changed only under the core lock too, so that a
    /// registration deciding on an account and a check letting it go never
    /// interleave.
    pub fn claims_lock(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The accounts whose cache here is current, with the epoch this replica
    /// claimed each at.
    pub fn claims(&self) -> HashMap<String, u64> {
        self.claims_lock().clone()
    }

    /// The epoch this replica claimed `account` at, if it holds it.
    pub fn claim_of(&self, account: &str) -> Option<u64> {
        self.claims_lock().get(account).copied()
    }

    /// Records claims that committed.
    pub fn record_claims(&self, epochs: Vec<(String, u64)>) {
        self.claims_lock().extend(epochs);
    }

    /// Forgets the claim of `account` (its local copy is gone).
    pub fn forget_claim(&self, account: &str) {
        self.claims_lock().remove(account);
    }

    /// True when the store has answered for longer than the replica
    /// timeout: a replica whose heartbeat is older than that is dead, not
    /// just kept from the store by the store's own outage.
    fn can_judge_liveness(&self) -> bool {
        self.answering_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|since| since.elapsed() > self.timing.timeout)
    }

    fn set_health(&self, health: Health) {
        {
            let mut since = self
                .answering_since
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match health {
                Health::Ready => {
                    since.get_or_insert_with(Instant::now);
                }
                _ => *since = None,
            }
        }
        self.health.send_if_modified(|h| {
            let changed = *h != health;
            if changed {
                match &health {
                    Health::Ready => info!(store = %self.store.location(), "the shared store answers; ready"),
                    Health::Unreachable(why) => warn!(store = %self.store.location(), error = %clip(why),
                        "the shared store does not answer: serving what this replica holds, refusing new registrations, unready"),
                    Health::Starting(_) => {}
                }
                *h = health;
            }
            changed
        });
    }

    /// Starts the replica's loop: migrations, heartbeats, the leader's
    /// sweeps, write-behind and letting go. It stops with the hub (writing
    /// what is left and leaving the list of replicas).
    pub fn start(shared: &Arc<Shared>) {
        let Some(replicas) = shared.replicas.clone() else {
            return;
        };
        let task = tokio::spawn(run(Arc::clone(shared), Arc::clone(&replicas)));
        *replicas.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// Waits (at most `limit`) for the loop to finish after the hub's
    /// shutdown began.
    pub async fn finish(&self, limit: Duration) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task
            && tokio::time::timeout(limit, task).await.is_err()
        {
            warn!("the shared store did not take this replica's last writes in time");
        }
    }

    /// A session of this replica let `accounts` go (it ended, or they were
    /// unregistered or revoked): in the store they become Disconnected and
    /// their grace period starts.
    pub fn released(self: &Arc<Self>, accounts: Vec<String>) {
        let claimed: Vec<(String, u64)> = {
            let claims = self.claims_lock();
            accounts
                .into_iter()
                .filter_map(|a| claims.get(&a).map(|e| (a, *e)))
                .collect()
        };
        if claimed.is_empty() {
            return;
        }
        let replicas = Arc::clone(self);
        tokio::spawn(async move {
            let me = replicas.id();
            for (account, epoch) in claimed {
                if let Err(err) = replicas.store.release(&me, &account, epoch).await {
                    // The leader disconnects it once this replica's
                    // heartbeat stops, should the store not come back in
                    // time.
                    warn!(%account, %err, "could not record in the shared store that the account is Disconnected");
                }
            }
        });
    }

    /// This replica removed `account` (its agent said it is gone): so does
    /// the store, unless another replica claimed it since.
    pub fn removed(self: &Arc<Self>, account: &str) {
        let Some(epoch) = self.claims_lock().remove(account) else {
            return;
        };
        let replicas = Arc::clone(self);
        let account = account.to_owned();
        tokio::spawn(async move {
            if let Err(err) = replicas.store.remove(&replicas.id(), &account, epoch).await {
                warn!(%account, %err, "could not remove the account from the shared store; the leader removes it after its grace period");
            }
        });
    }
}

async fn run(shared: Arc<Shared>, replicas: Arc<Replicas>) {
    let timing = replicas.timing;
    let shutdown = shared.shutdown.clone();
    // The schema first: nothing else works without it. Then what a previous
    // run under this id held is let go.
    loop {
        let started = async {
            let applied = replicas.store.migrate().await?;
            if !applied.is_empty() {
                info!(store = %replicas.store.location(), ?applied, "migrated the shared store");
            }
            let released = replicas.store.restart(&replicas.id()).await?;
            if released > 0 {
                info!(
                    accounts = released,
                    "accounts held by this replica's previous run are Disconnected"
                );
            }
            Ok::<_, crate::store::StoreError>(())
        };
        match started.await {
            Ok(()) => break,
            Err(err) => replicas.set_health(Health::Unreachable(err.to_string())),
        }
        tokio::select! {
            () = tokio::time::sleep(timing.heartbeat) => {}
            () = shutdown.cancelled() => return,
        }
    }
    let mut beat = tokio::time::interval(timing.heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush = tokio::time::interval(FLUSH_INTERVAL);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut claims: Option<mpsc::Receiver<String>> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = beat.tick() => {
                heartbeat(&shared, &replicas).await;
                if claims.is_none() {
                    claims = replicas.store.listen().await.ok();
                }
            }
            _ = flush.tick() => write_behind(&shared, &replicas).await,
            claimed = next_claim(&mut claims) => match claimed {
                Some(account) => check(&shared, &replicas, vec![account]).await,
                None => claims = None,
            },
        }
    }
    // The sessions are ending with the hub: what they sent goes to the store
    // before this replica leaves it.
    write_behind(&shared, &replicas).await;
    match replicas.store.leave(&replicas.id()).await {
        Ok(()) => info!("left the shared store: this replica's accounts are Disconnected"),
        Err(err) => {
            warn!(%err, "could not leave the shared store; the leader disconnects this replica's accounts when its heartbeat stops")
        }
    }
}

async fn next_claim(claims: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match claims {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// One heartbeat: alive, leader lease, the leader's sweep, and a check of
/// every claim.
async fn heartbeat(shared: &Arc<Shared>, replicas: &Arc<Replicas>) {
    let timing = replicas.timing;
    let me = replicas.info();
    let lease = timing.timeout;
    match replicas.store.heartbeat(&me, lease).await {
        Ok(beat) => {
            replicas.set_health(Health::Ready);
            let was = replicas.leader.swap(beat.leader, Ordering::Relaxed);
            if beat.leader != was {
                info!(
                    leader = beat.leader,
                    "leader lease (grace periods of every replica's accounts) {}",
                    if beat.leader { "taken" } else { "lost" }
                );
            }
            shared.metrics.replica_leader.set(i64::from(beat.leader));
        }
        Err(err) => {
            replicas.set_health(Health::Unreachable(err.to_string()));
            replicas.leader.store(false, Ordering::Relaxed);
            shared.metrics.replica_leader.set(0);
            return;
        }
    }
    if replicas.is_leader() {
        let judge = replicas.can_judge_liveness();
        match replicas
            .store
            .sweep(timing.grace, timing.timeout, judge)
            .await
        {
            Ok(sweep) => {
                if !sweep.disconnected.is_empty() {
                    info!(accounts = ?sweep.disconnected, "a hub replica stopped heartbeating: its accounts are Disconnected for the grace period");
                }
                for account in &sweep.expired {
                    info!(%account, grace_period = ?timing.grace, "account removed: its agent did not come back within the grace period");
                    shared.metrics.account_removed("grace_period_expired");
                }
                if sweep.failed_operations > 0 {
                    warn!(
                        operations = sweep.failed_operations,
                        "failed operations nobody can answer any more (their account was removed, or their replica stopped and the deadline passed)"
                    );
                }
            }
            Err(err) => warn!(%err, "could not enforce grace periods this round"),
        }
    }
    let claimed: Vec<String> = replicas.claims().into_keys().collect();
    if !claimed.is_empty() {
        check(shared, replicas, claimed.clone()).await;
    }
    // Operations: those this replica sent on accounts it let go go to their
    // new holders; those nobody waits for on accounts streamed here are sent
    // again.
    inflight::hand_over(shared, replicas).await;
    let streamed: Vec<String> = {
        let core = shared.core();
        claimed
            .into_iter()
            .filter(|a| core.registry.holder(a).is_some_and(|s| shared.is_live(s)))
            .collect()
    };
    inflight::adopt(shared, replicas, streamed).await;
}

/// Writes the changes of every claimed account; an account claimed
/// elsewhere since is let go.
async fn write_behind(shared: &Arc<Shared>, replicas: &Arc<Replicas>) {
    let claims = replicas.claims();
    if claims.is_empty() {
        return;
    }
    let pending: Vec<(String, u64, crate::core::cache::Changes)> = {
        let mut core = shared.core();
        claims
            .into_iter()
            .filter_map(|(account, epoch)| {
                let changes = core
                    .cache
                    .account_mut_if_present(&account)?
                    .take_changes()?;
                Some((account, epoch, changes))
            })
            .collect()
    };
    let me = replicas.id();
    let mut lost = Vec::new();
    for (account, epoch, changes) in pending {
        match replicas.store.flush(&me, &account, epoch, &changes).await {
            Ok(()) => {
                shared.metrics.store_flushes.inc();
            }
            Err(failure) => {
                // Kept for the next round; dropped with the account if it
                // was lost.
                if let Some(cache) = shared.core().cache.account_mut_if_present(&account) {
                    cache.put_back(&changes);
                }
                match failure {
                    FlushError::Lost => lost.push(account),
                    FlushError::Store(err) => {
                        shared.metrics.store_errors.inc();
                        debug!(%account, %err, "could not write the account's changes; kept for the next round");
                    }
                }
            }
        }
    }
    if !lost.is_empty() {
        check(shared, replicas, lost).await;
    }
}

/// Compares the claims on `accounts` with the store, and lets go of each
/// account another replica claimed since (or that was removed).
async fn check(shared: &Arc<Shared>, replicas: &Arc<Replicas>, accounts: Vec<String>) {
    let me = replicas.id();
    let rows = match replicas
        .store
        .accounts_named(&accounts, replicas.timing.timeout)
        .await
    {
        Ok(rows) => rows,
        Err(err) => {
            debug!(%err, "could not check this replica's claims this round");
            return;
        }
    };
    let mut stored: HashMap<String, AccountRow> =
        rows.into_iter().map(|r| (r.name.clone(), r)).collect();
    for account in accounts {
        let Some(epoch) = replicas.claim_of(&account) else {
            continue;
        };
        match stored.remove(&account) {
            // Still ours, or ours again by a claim not recorded yet.
            Some(row) if row.holder == me => {
                if row.epoch == epoch && row.session.is_none() {
                    reassert(shared, replicas, &me, &account, epoch).await;
                }
            }
            Some(row) => let_go(shared, replicas, &account, epoch, Some(&row)),
            None => let_go(shared, replicas, &account, epoch, None),
        }
    }
}

/// `account` is streamed here at `epoch`, but the store has it Disconnected
/// (the leader took this replica for dead while it could not heartbeat):
/// records the session again, so that it is not removed at the end of a grace
/// period while it streams.
async fn reassert(shared: &Shared, replicas: &Replicas, me: &str, account: &str, epoch: u64) {
    let session = shared
        .core()
        .registry
        .get(account)
        .and_then(|a| a.session.clone())
        .filter(|s| shared.is_live(s));
    let Some(session) = session else {
        return;
    };
    match replicas.store.reassert(me, account, epoch, &session).await {
        Ok(true) => {
            info!(%account, %session, "the shared store had the account Disconnected while this replica streams it; recorded it Connected again")
        }
        Ok(false) => {}
        Err(err) => {
            debug!(%account, %err, "could not record the account Connected again this round")
        }
    }
}

/// Drops this replica's copy of `account`, claimed here at `epoch`, which
/// `now` (another replica's claim) holds now, or nobody (removed); tells the
/// local session that streamed it. Nothing happens when this replica's
/// claim changed meanwhile (a registration here took the account again).
fn let_go(
    shared: &Arc<Shared>,
    replicas: &Replicas,
    account: &str,
    epoch: u64,
    now: Option<&AccountRow>,
) {
    let dropped = {
        // Claims change under the core lock (see `stream/register_shared.rs`): checked
        // and dropped under it too.
        let mut core = shared.core();
        let mut claims = replicas.claims_lock();
        if claims.get(account) != Some(&epoch) {
            return;
        }
        claims.remove(account);
        drop(claims);
        let dropped = core.registry.remove(account);
        core.cache.remove(account);
        dropped
    };
    let Some(dropped) = dropped else {
        return;
    };
    shared.metrics.accounts_handed_over.inc();
    let Some(session) = dropped.session else {
        info!(%account, holder = now.map(|r| r.holder.as_str()), "another hub replica holds the account now; dropped this replica's copy");
        return;
    };
    let notice = match now {
        Some(row) if row.binding.shard == dropped.binding.shard => {
            let by = Caller {
                session: SessionId::from(row.session.clone().unwrap_or_default()),
                shard: row.binding.shard.clone(),
                replica: row.agent_replica.clone(),
            };
            Refusal::superseded(account, &by)
        }
        Some(row) => Refusal::revoked(
            format!(
                "account {account} is streamed by AgentShard {} now (through hub replica {})",
                row.binding.shard, row.holder
            ),
            Some(row.binding.shard.clone()),
        ),
        None => Refusal::revoked(
            format!("account {account} was removed from the shared registry"),
            None,
        ),
    };
    info!(%account, %session, holder = now.map(|r| r.holder.as_str()),
        "another hub replica took the account over; telling the session that streamed it here");
    shared.send_detached(&session, notice.notice(account.to_owned()));
}
