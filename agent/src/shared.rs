//! Watches shared by the accounts of one cluster identity: accounts whose kubeconfigs
//! reach the same server as the same user ([`crate::cluster_client::identity_key`])
//! see the same objects, so the agent keeps one watch per kind for all of them (a
//! *source*), cluster-wide, and each account's kind ([`crate::watch`]) subscribes to it
//! and keeps what its filters select. An account whose identity differs (another
//! user's token, an exec plugin, a client certificate from a file) watches on its own.
//!
//! A source keeps no object. What it knows is its *position*: the newest resourceVersion
//! it has passed on (an event's or a bookmark's); every subscriber has been given every
//! change up to it. Sharing needs resourceVersions that are numbers (every API server's
//! are, from etcd's revision): a subscriber skips what its own list or resume point
//! already covers by comparing them.
//!
//! - Joining to list: the subscriber joins first, then lists on its own (with its own
//!   filters): its list is at least as new as the source's position when it joined, and
//!   every change after it arrives through the source; what its list covers it skips.
//! - Joining to resume from the hub's resume point `R`: at or after the position, the
//!   subscriber skips up to `R`; before it, the source *rewinds*: it watches again from
//!   `R` and every subscriber skips what it already had. Should `R` be too old (410
//!   Gone), only the subscribers that rewound relist, and the source goes back to its
//!   position.
//! - 410 Gone on the source's own position: the source reads the newest resourceVersion,
//!   then tells every subscriber to relist (each relists on its own, with its filters,
//!   exactly as its own watch expiring would make it), and watches from there.
//! - A subscriber that falls [`BACKLOG`] items behind is dropped from the source and
//!   relists; the others never wait for it.
//! - The identity may not watch the kind cluster-wide (403, an account that may read
//!   only its namespaces): the source tells its subscribers to go on on their own, from
//!   where they are, and the kind is never shared for that identity again.
//! - The last subscriber leaving (an account removed at a config reload, its session
//!   ended) ends the source and its watch; nobody else notices a subscriber leave.
//!
//! The API's surface (CRDs, APIServices, [`crate::surface`]) is followed once per
//! identity too, and every account of it told.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::api::Api;
use scale_agent_proto::v1::EventType;
use tokio::sync::{mpsc, oneshot, watch as tokio_watch};

use crate::cluster_client::{Connections, Key};
use crate::kinds::WatchedKind;
use crate::metrics::Metrics;
use crate::objects::{LeanObject, Selectors, Written};
use crate::watch::{self, Step};

pub mod view;

/// Items a subscriber may have waiting (while it lists, or its hub stream is slow)
/// before it is dropped from the source and relists.
pub const BACKLOG: usize = 16_384;

/// Accounts that may share watches: one cluster, one user, and the config to connect
/// as them.
#[derive(Clone)]
pub struct Identity {
    /// The hash of the server, its CA and what authenticates.
    pub key: Key,
    /// How to connect (any of the accounts' configs: they agree on all that counts).
    pub config: Arc<kube::Config>,
    /// The server's URL (the label of `watches_open`).
    pub server: String,
}

/// What a kind's watch needs to share: the agent's connections and who it is.
#[derive(Clone)]
pub struct Shared {
    /// The agent's connections (and the registry of shared watches).
    pub connections: Arc<Connections>,
    /// The account's identity.
    pub identity: Identity,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// One source: an identity's watch of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SourceKey {
    identity: Key,
    group: String,
    version: String,
    plural: String,
}

impl SourceKey {
    fn of(identity: &Identity, kind: &WatchedKind) -> SourceKey {
        SourceKey {
            identity: identity.key,
            group: kind.resource.group.clone(),
            version: kind.resource.version.clone(),
            plural: kind.resource.plural.clone(),
        }
    }
}

/// What a source passes on to its subscribers.
#[derive(Debug)]
pub enum Item {
    /// A change, written once for every subscriber, with its resourceVersion when it is
    /// a number.
    Change(EventType, Arc<Written>, Option<u64>),
    /// The watch is current up to this resourceVersion.
    Bookmark(u64),
    /// Relist: the source's watch expired; it goes on from this resourceVersion, which
    /// a list taken after this item is at least as new as.
    Expired(u64),
    /// The kind is not shared any more: go on alone, from where you are.
    Unshared,
}

enum Control {
    Join {
        id: u64,
        from: Option<u64>,
        tx: mpsc::Sender<Arc<Item>>,
        reply: oneshot::Sender<bool>,
    },
    Leave(u64),
}

/// The agent's shared watches, by identity and kind.
#[derive(Default)]
pub struct Registry {
    sources: Mutex<HashMap<SourceKey, mpsc::UnboundedSender<Control>>>,
    /// Kinds an identity may not watch cluster-wide, or whose resourceVersions are not
    /// numbers: their accounts watch them on their own.
    unshared: Mutex<HashSet<SourceKey>>,
    next_id: AtomicU64,
    surfaces: Mutex<HashMap<Key, Arc<tokio_watch::Sender<Surface>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A subscriber's place on a source; leaving it (dropping it) ends nobody else's.
pub struct Subscription {
    id: u64,
    /// What the source passes on; `None` once the subscriber fell behind (or the source
    /// ended): relist.
    pub items: mpsc::Receiver<Arc<Item>>,
    control: mpsc::UnboundedSender<Control>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Leave(self.id));
    }
}

/// Whether a kind may be shared at all: every kind may, namespaced ones through a
/// cluster-wide watch each subscriber filters by its namespaces. (The one decision of
/// scope: one watch per kind and identity, cluster-wide; per namespace, on its own, only
/// when the identity may not watch the whole kind.)
fn shareable(unshared: &HashSet<SourceKey>, key: &SourceKey) -> bool {
    !unshared.contains(key)
}

impl Shared {
    /// Joins the source of `kind`: to resume from `from`, or (`None`) to list right after.
    /// `None` when the kind is not shared for this identity: watch it alone.
    pub async fn join(&self, kind: &WatchedKind, from: Option<u64>) -> Option<Subscription> {
        let registry = &self.connections.shared;
        let key = SourceKey::of(&self.identity, kind);
        loop {
            let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, items) = mpsc::channel(BACKLOG);
            let (reply, answer) = oneshot::channel();
            let control = {
                if !shareable(&lock(&registry.unshared), &key) {
                    return None;
                }
                let mut sources = lock(&registry.sources);
                let control = match sources.get(&key) {
                    Some(c) if !c.is_closed() => c.clone(),
                    _ => {
                        let (c, r) = mpsc::unbounded_channel();
                        let source = Source::new(self, key.clone(), kind.clone(), c.clone());
                        let span = tracing::info_span!("shared_watch", server = %self.identity.server, kind = %kind.resource.kind);
                        tokio::spawn(tracing::Instrument::instrument(source.run(r), span));
                        sources.insert(key.clone(), c.clone());
                        c
                    }
                };
                let _ = control.send(Control::Join {
                    id,
                    from,
                    tx,
                    reply,
                });
                control
            };
            match answer.await {
                Ok(true) => {
                    return Some(Subscription { id, items, control });
                }
                Ok(false) => return None,
                // The source ended as the join arrived: the next one is new.
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }

    /// Follows the identity's API surface; the receiver sees every change of it.
    pub fn surface(&self) -> tokio_watch::Receiver<Surface> {
        let registry = &self.connections.shared;
        let mut surfaces = lock(&registry.surfaces);
        if let Some(tx) = surfaces.get(&self.identity.key) {
            return tx.subscribe();
        }
        let (tx, rx) = tokio_watch::channel(Surface::default());
        let tx = Arc::new(tx);
        surfaces.insert(self.identity.key, tx.clone());
        tokio::spawn(follow_surface(self.clone(), tx));
        rx
    }
}

/// What the shared follower of an identity's API surface last decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Surface {
    /// How many decisions so far: each is told to every account.
    pub told: u64,
    /// The last: followed (`true`), or no longer (`false`).
    pub followed: Option<bool>,
}

/// Follows the surface for every account of `shared`'s identity until none is left.
async fn follow_surface(shared: Shared, tx: Arc<tokio_watch::Sender<Surface>>) {
    loop {
        let follow = async {
            let clients = loop {
                match shared
                    .connections
                    .clients(&shared.identity.config, crate::surface::WATCHES)
                    .await
                {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::warn!(server = %shared.identity.server, error = %e, "cannot connect to follow the cluster's CRDs and APIServices; retrying");
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                }
            };
            let _open: Vec<_> = (0..crate::surface::WATCHES)
                .map(|_| shared.metrics.watch_opened(&shared.identity.server))
                .collect();
            crate::surface::follow(clients.client.clone(), |followed| {
                tx.send_modify(|s| {
                    s.told += 1;
                    s.followed = Some(followed);
                });
                std::future::ready(Ok(()))
            })
            .await
        };
        tokio::select! {
            _ = follow => {}
            () = tx.closed() => {}
        }
        let mut surfaces = lock(&shared.connections.shared.surfaces);
        if tx.receiver_count() == 0 {
            surfaces.remove(&shared.identity.key);
            return;
        }
    }
}

/// One identity's watch of one kind and its subscribers.
struct Source {
    key: SourceKey,
    kind: WatchedKind,
    shared: Shared,
    metrics: Arc<Metrics>,
    /// Its own control channel, to know its entry in the registry.
    own: mpsc::UnboundedSender<Control>,
    subs: HashMap<u64, mpsc::Sender<Arc<Item>>>,
    /// Subscribers that joined behind the position, for which the watch started again
    /// from their resume point: should that be too old, they alone relist.
    rewinding: Vec<u64>,
    /// The newest resourceVersion passed on: every subscriber has every change up to it.
    position: Option<u64>,
    /// Where the open watch goes on from when it ends.
    from: u64,
    failures: u32,
}

/// What the source does next.
enum Next {
    Control(Option<Control>),
    Step(Step),
}

/// How the source goes on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    /// As it was.
    Go,
    /// The kind cannot be shared for this identity: its subscribers go on alone.
    Unshare,
    /// Nobody is left to serve.
    End,
}

impl Source {
    fn new(
        shared: &Shared,
        key: SourceKey,
        kind: WatchedKind,
        own: mpsc::UnboundedSender<Control>,
    ) -> Source {
        Source {
            key,
            kind,
            shared: shared.clone(),
            metrics: shared.metrics.clone(),
            own,
            subs: HashMap::new(),
            rewinding: Vec::new(),
            position: None,
            from: 0,
            failures: 0,
        }
    }

    async fn run(mut self, mut control: mpsc::UnboundedReceiver<Control>) {
        let clients = match self
            .shared
            .connections
            .clients(&self.shared.identity.config, 1)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect for a shared watch; its accounts watch on their own");
                self.unshare(&mut control);
                return;
            }
        };
        let api: Api<LeanObject> = Api::all_with(clients.client.clone(), &self.kind.resource);
        let mut watch: Option<BoxStream<'static, Step>> = None;
        loop {
            let next = {
                let step = async {
                    match watch.as_mut() {
                        Some(w) => w.next().await.unwrap_or(Step::Ended),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    m = control.recv() => Next::Control(m),
                    s = step => Next::Step(s),
                }
            };
            let flow = match next {
                Next::Control(None) => Flow::End,
                Next::Control(Some(c)) => self.control(c, &api, &mut watch).await,
                Next::Step(step) => self.step(step, &api, &mut watch).await,
            };
            if self.stop(flow, &mut control) {
                return;
            }
            while self.subs.is_empty() {
                // The last one left: end, unless a join is already on its way.
                let pending = {
                    let mut sources = lock(&self.shared.connections.shared.sources);
                    match control.try_recv() {
                        Ok(c) => Some(c),
                        Err(_) => {
                            if sources
                                .get(&self.key)
                                .is_some_and(|c| c.same_channel(&self.own))
                            {
                                sources.remove(&self.key);
                            }
                            None
                        }
                    }
                };
                match pending {
                    Some(c) => {
                        let flow = self.control(c, &api, &mut watch).await;
                        if self.stop(flow, &mut control) {
                            return;
                        }
                    }
                    None => return,
                }
            }
        }
    }

    /// Whether the source ends after `flow`.
    fn stop(&mut self, flow: Flow, control: &mut mpsc::UnboundedReceiver<Control>) -> bool {
        match flow {
            Flow::Go => false,
            Flow::Unshare => {
                self.unshare(control);
                true
            }
            Flow::End => {
                self.end(control, false);
                true
            }
        }
    }

    /// A join or a leave.
    async fn control(
        &mut self,
        c: Control,
        api: &Api<LeanObject>,
        watch: &mut Option<BoxStream<'static, Step>>,
    ) -> Flow {
        match c {
            Control::Leave(id) => {
                self.subs.remove(&id);
                self.rewinding.retain(|r| *r != id);
                Flow::Go
            }
            Control::Join {
                id,
                from,
                tx,
                reply,
            } => {
                let position = match (self.position, from) {
                    (Some(p), _) => p,
                    (None, Some(r)) => r,
                    (None, None) => {
                        // The joiner waits for this one: it is a subscriber already.
                        self.subs.insert(id, tx.clone());
                        let newest = self.newest(api).await;
                        self.subs.remove(&id);
                        match newest {
                            Ok(p) => p,
                            Err(flow) => {
                                let _ = reply.send(false);
                                return flow;
                            }
                        }
                    }
                };
                if self.position.is_none() {
                    self.position = Some(position);
                    self.from = position;
                    *watch = Some(self.open(api, position, Duration::ZERO));
                }
                if let Some(r) = from
                    && r < position
                {
                    // Behind the position: it depends on a watch from its resume point
                    // (this one, or one already going on from further back); the others
                    // skip what they already had.
                    self.rewinding.push(id);
                    if r < self.from {
                        tracing::debug!(resume_point = r, position, "rewinding the shared watch");
                        self.from = r;
                        *watch = Some(self.open(api, r, Duration::ZERO));
                    }
                }
                self.subs.insert(id, tx);
                let _ = reply.send(true);
                Flow::Go
            }
        }
    }

    /// One step of the watch.
    async fn step(
        &mut self,
        step: Step,
        api: &Api<LeanObject>,
        watch: &mut Option<BoxStream<'static, Step>>,
    ) -> Flow {
        match step {
            Step::Change(ty, obj) => {
                self.failures = 0;
                let version = obj
                    .metadata
                    .resource_version
                    .as_deref()
                    .and_then(|v| v.parse::<u64>().ok());
                if let Some(v) = version {
                    self.advance(v);
                }
                match Written::of(&self.kind, *obj) {
                    Ok(written) => self.send(Item::Change(ty, Arc::new(written), version)),
                    Err(name) => {
                        self.metrics.watch_errors.inc();
                        let name = watch::truncate(&name, 256);
                        tracing::warn!(%name, "an object that cannot be written was skipped");
                    }
                }
            }
            Step::Bookmark(version) => {
                self.failures = 0;
                if let Ok(v) = version.parse::<u64>() {
                    self.advance(v);
                    self.send(Item::Bookmark(v));
                }
            }
            Step::Skipped(e) => {
                self.metrics.watch_errors.inc();
                let error = watch::truncate(&e, 512);
                tracing::warn!(%error, "an unreadable watch event was skipped");
            }
            Step::Ended => *watch = Some(self.open(api, self.from, Duration::ZERO)),
            Step::Expired if !self.rewinding.is_empty() => {
                // Too old a resume point: only who asked for it relists.
                let position = self.position.unwrap_or(self.from);
                tracing::info!(
                    subscribers = self.rewinding.len(),
                    "a resume point behind the shared watch expired; those accounts relist"
                );
                let item = Arc::new(Item::Expired(position));
                for id in std::mem::take(&mut self.rewinding) {
                    if let Some(tx) = self.subs.get(&id)
                        && tx.try_send(item.clone()).is_err()
                    {
                        self.subs.remove(&id);
                    }
                }
                self.from = position;
                *watch = Some(self.open(api, position, Duration::ZERO));
            }
            Step::Expired => {
                tracing::info!("the shared watch expired (410 Gone); every account on it relists");
                let newest = match self.newest(api).await {
                    Ok(v) => v,
                    Err(flow) => return flow,
                };
                self.position = Some(newest);
                self.from = newest;
                self.send(Item::Expired(newest));
                *watch = Some(self.open(api, newest, Duration::ZERO));
            }
            Step::Forbidden(e) if self.kind.namespaced => {
                let error = watch::truncate(&e, 512);
                tracing::info!(%error, "the accounts may not watch the kind cluster-wide; each watches its own namespaces");
                return Flow::Unshare;
            }
            Step::Forbidden(e) | Step::Failed(e) => {
                self.failures += 1;
                self.metrics.watch_errors.inc();
                if self.failures == 1 || self.failures.is_multiple_of(20) {
                    let error = watch::truncate(&e, 512);
                    tracing::warn!(%error, failures = self.failures, "the shared watch failed; retrying");
                }
                *watch = Some(self.open(api, self.from, watch::retry_delay(self.failures)));
            }
        }
        Flow::Go
    }

    /// The watch has passed `version` on.
    fn advance(&mut self, version: u64) {
        self.from = version;
        self.position = Some(self.position.map_or(version, |p| p.max(version)));
        // The watch from a resume point works: it is not too old.
        self.rewinding.clear();
    }

    /// Passes `item` to every subscriber; one that cannot take it now fell behind and is
    /// dropped (its channel closes: it relists).
    fn send(&mut self, item: Item) {
        let item = Arc::new(item);
        self.subs.retain(|id, tx| match tx.try_send(item.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    subscriber = id,
                    "an account fell {BACKLOG} changes behind the shared watch; it relists"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    fn open(&self, api: &Api<LeanObject>, from: u64, delay: Duration) -> BoxStream<'static, Step> {
        watch::open(
            api.clone(),
            &Selectors::default(),
            from.to_string(),
            delay,
            self.metrics.watch_opened(&self.shared.identity.server),
        )
    }

    /// The newest resourceVersion of the kind, retried while anybody waits for it;
    /// [`Flow::Unshare`] when it is not a number, [`Flow::End`] when nobody waits.
    async fn newest(&mut self, api: &Api<LeanObject>) -> Result<u64, Flow> {
        let mut failures = 0u32;
        loop {
            match watch::newest_version(api).await {
                Ok(v) => match v.parse::<u64>() {
                    Ok(v) => return Ok(v),
                    Err(_) => {
                        tracing::info!(
                            "the API server's resourceVersions are not numbers; the kind is not shared"
                        );
                        return Err(Flow::Unshare);
                    }
                },
                Err(e) => {
                    failures += 1;
                    self.metrics.watch_errors.inc();
                    if failures == 1 || failures.is_multiple_of(20) {
                        let error = watch::truncate(&e, 512);
                        tracing::warn!(%error, failures, "cannot read the kind's newest resourceVersion; retrying");
                    }
                    self.subs.retain(|_, tx| !tx.is_closed());
                    if self.subs.is_empty() {
                        return Err(Flow::End);
                    }
                    tokio::time::sleep(watch::retry_delay(failures)).await;
                }
            }
        }
    }

    /// The kind is not shared for this identity any more: every subscriber goes on
    /// alone, later accounts start alone (a join on its way too), and the source ends.
    fn unshare(&mut self, control: &mut mpsc::UnboundedReceiver<Control>) {
        lock(&self.shared.connections.shared.unshared).insert(self.key.clone());
        self.end(control, true);
    }

    /// Ends the source: whoever is still on it is told `Unshared` (goes on alone); a join
    /// on its way is refused when `unshared`, or else joins the next source.
    fn end(&mut self, control: &mut mpsc::UnboundedReceiver<Control>, unshared: bool) {
        let registry = &self.shared.connections.shared;
        let mut sources = lock(&registry.sources);
        if sources
            .get(&self.key)
            .is_some_and(|c| c.same_channel(&self.own))
        {
            sources.remove(&self.key);
        }
        drop(sources);
        self.send(Item::Unshared);
        self.subs.clear();
        control.close();
        while let Ok(c) = control.try_recv() {
            if let Control::Join { reply, .. } = c
                && unshared
            {
                let _ = reply.send(false);
            }
        }
    }
}
