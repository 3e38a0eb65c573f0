//! One kind of one account, from the API server to the hub: list it (paginated)
//! between SyncStart and SyncEnd, or resume from the hub's resourceVersion without
//! listing, then watch every change in order. A resume point is checked first: one
//! ahead of the newest resourceVersion the API server has would make the watch wait
//! for changes that never come, so the kind is relisted instead. Every relist is
//! counted with its cause. Watch bookmarks go to the hub as watch
//! progress, so the resume point of a quiet kind stays fresh. With several
//! `namespaces`, one watch per namespace, merged; when any of them expires (410 Gone)
//! the whole kind is relisted, so the hub can drop exactly what vanished. No object is
//! kept in memory; events leave through the kind's [`KindSender`].
//!
//! An account whose cluster identity others share ([`crate::shared`]) lists on its own
//! but watches through the kind's shared watch, taking what its filters select
//! ([`crate::shared::view`]); it watches alone when the kind cannot be shared. Such an
//! account's kinds are streamed by one task ([`shared_kinds`]); a kind watched alone
//! has a task of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::stream::{self, BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::core::Status;
use scale_agent_crds::AccountConfig;
use scale_agent_proto::v1::{
    EventType, GroupVersionKind, SyncEnd, SyncMode, SyncStart, WatchProgress, agent_frame::Frame,
};
use tracing::Instrument;

use crate::batch::KindSender;
use crate::budget::Budget;
use crate::kinds::WatchedKind;
use crate::metrics::{KindLabels, Metrics, OpenWatch, RelistCause};
use crate::objects::{self, LeanList, LeanObject, Selectors};
use crate::outbound::{Closed, Outbound};
use crate::shared::view::View;
use crate::shared::{Shared, Subscription};

pub mod shared_kinds;

/// Objects per list page.
const PAGE_SIZE: u32 = 500;
/// How long the API server keeps one watch open; the next starts where it ended.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// A watch that outlives its timeout by this much is taken for dead (the connection
/// dropped silently) and started again.
const WATCH_DEAD_AFTER: Duration = Duration::from_secs(WATCH_TIMEOUT_SECS as u64 + 5);

/// What a kind watcher needs: one for every kind of an account.
pub struct KindCtx {
    /// The account's name.
    pub account: String,
    /// The account's client.
    pub client: kube::Client,
    /// The account's filters.
    pub config: AccountConfig,
    /// The session's sending half.
    pub out: Outbound,
    /// The agent's limits.
    pub budget: Budget,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The account's selection fingerprint, sent with every full relist (see
    /// [`crate::account::selection`]).
    pub selection: String,
    /// Whether the hub takes WatchProgress frames on this session.
    pub watch_progress: bool,
    /// The cluster's URL (the label of `watches_open`).
    pub server: String,
}

/// How a kind's watch starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Resume from the hub's resume point (checked against the server first).
    Resume(String),
    /// List everything again, for this reason.
    Relist(RelistCause),
}

/// Streams `kind` alone (not through a shared watch) until the session ends, from
/// `start`. `synced` is set once the kind is current at the hub (listed, or resumed).
/// The kinds of an account whose identity shares watches go through
/// [`shared_kinds::run`] instead.
pub async fn run(
    ctx: Arc<KindCtx>,
    start: Start,
    kind: WatchedKind,
    synced: Arc<AtomicBool>,
) -> Result<(), Closed> {
    let span = tracing::info_span!("watch", account = %ctx.account, kind = %kind.resource.kind);
    async move {
        let mut watch = KindWatch::new(ctx, kind, synced);
        let start = watch.first(start).await?;
        watch.alone(start).await
    }
    .instrument(span)
    .await
}

/// The state of one kind's list-and-watch loop.
struct KindWatch {
    ctx: Arc<KindCtx>,
    kind: WatchedKind,
    gvk: GroupVersionKind,
    /// One per listed namespace, or one over all namespaces.
    apis: Vec<Api<LeanObject>>,
    selectors: Selectors,
    sender: KindSender,
    synced: Arc<AtomicBool>,
    /// The latest resourceVersion of this kind the hub has been sent (by an event, a
    /// SyncEnd or a WatchProgress): a bookmark at the same version tells it nothing.
    told_hub: String,
    /// The kind's label on per-kind metrics.
    label: KindLabels,
    /// While listing for a shared watch: the uids listed.
    uids: Option<Vec<String>>,
}

impl KindWatch {
    fn new(ctx: Arc<KindCtx>, kind: WatchedKind, synced: Arc<AtomicBool>) -> KindWatch {
        let gvk = GroupVersionKind {
            group: kind.resource.group.clone(),
            version: kind.resource.version.clone(),
            kind: kind.resource.kind.clone(),
        };
        let ar = &kind.resource;
        let apis = if kind.namespaced && !ctx.config.scope.namespaces.is_empty() {
            ctx.config
                .scope
                .namespaces
                .iter()
                .map(|ns| Api::namespaced_with(ctx.client.clone(), ns, ar))
                .collect()
        } else {
            vec![Api::all_with(ctx.client.clone(), ar)]
        };
        let selectors = Selectors::of(&ctx.config, &kind);
        let sender = KindSender::new(ctx.account.clone(), ctx.out.clone(), ctx.metrics.clone());
        let label = KindLabels::of(&ar.group, &ar.kind);
        KindWatch {
            ctx,
            kind,
            gvk,
            apis,
            selectors,
            sender,
            synced,
            told_hub: String::new(),
            label,
            uids: None,
        }
    }

    /// How the kind goes on from `start`: from the resourceVersion(s) it resumed at, or
    /// to relist for a cause. A resume point is checked against the server first, and
    /// the hub told the kind is streamed.
    async fn first(&mut self, start: Start) -> Result<Result<Vec<String>, RelistCause>, Closed> {
        let first = match start {
            // One resourceVersion cannot resume several per-namespace watches safely.
            Start::Resume(_) if self.apis.len() > 1 => {
                tracing::info!("several namespaces are watched: relisting instead of resuming");
                Start::Relist(RelistCause::SeveralNamespaces)
            }
            Start::Resume(rv) => match self.newest_version().await {
                Some(newest) if ahead(&rv, &newest) => {
                    tracing::warn!(resume_point = %truncate(&rv, 64), newest = %newest,
                        "the hub's resume point is ahead of the API server's newest resourceVersion; relisting instead of resuming");
                    Start::Relist(RelistCause::SuspiciousResume)
                }
                _ => Start::Resume(rv),
            },
            relist => relist,
        };
        let start = match first {
            Start::Resume(rv) => {
                tracing::info!(resource_version = %rv, "resuming the watch");
                self.ctx.metrics.resumes.inc();
                self.synced.store(true, Ordering::Relaxed);
                self.told_hub.clone_from(&rv);
                Ok(vec![rv])
            }
            Start::Relist(cause) => Err(cause),
        };
        if let Ok([rv]) = start.as_deref() {
            // Tells the hub the kind is streamed on this registration, and how it
            // appears in API paths.
            self.sender
                .frame(Frame::SyncStart(SyncStart {
                    account: self.ctx.account.clone(),
                    kind: Some(self.gvk.clone()),
                    mode: SyncMode::ResumedWatch as i32,
                    resource_version: rv.clone(),
                    selection: self.ctx.selection.clone(),
                    resource: self.kind.resource.plural.clone(),
                    namespaced: self.kind.namespaced,
                }))
                .await?;
        }
        Ok(start)
    }

    /// Lists (when `start` says so) and watches the kind alone, relisting whenever its
    /// watch expires, until the session ends.
    async fn alone(mut self, mut start: Result<Vec<String>, RelistCause>) -> Result<(), Closed> {
        loop {
            let versions = match start {
                Ok(versions) => versions,
                Err(cause) => {
                    self.ctx.metrics.relist(cause);
                    self.list().await?
                }
            };
            self.watch(versions).await?;
            tracing::info!("watch expired (410 Gone); relisting");
            start = Err(RelistCause::Expired);
        }
    }

    /// The newest resourceVersion the API server has for the kind (a one-item list of
    /// metadata); `None` when it cannot be read, and then nothing is judged by it.
    async fn newest_version(&self) -> Option<String> {
        // Boxed: the kind's future stays small for the rest of its life.
        match Box::pin(newest_version(self.apis.first()?)).await {
            Ok(v) => Some(v),
            Err(error) => {
                tracing::debug!(error = %truncate(&error, 512), "cannot read the newest resourceVersion; resuming unchecked");
                None
            }
        }
    }

    /// Leaves the shared watch and joins it again, to list.
    async fn rejoin(&self, shared: &Shared, old: Subscription) -> Option<Subscription> {
        drop(old);
        shared.join(&self.kind, None).await
    }

    /// The namespaces the kind is listed and watched in one by one; empty when it is
    /// over all namespaces (or cluster-scoped).
    fn namespaces(&self) -> Vec<String> {
        if self.apis.len() > 1 {
            self.ctx.config.scope.namespaces.clone()
        } else {
            Vec::new()
        }
    }

    /// Relists the kind (after joining its shared watch) for `cause`. Until its sync slot
    /// comes, it holds no room for the list (as [`Self::list`]).
    async fn relist_shared(&mut self, cause: RelistCause) -> Result<View, Closed> {
        self.ctx.metrics.relist(cause);
        let slot = self.ctx.budget.sync_slot().await;
        Box::pin(self.relist_shared_in_slot(slot)).await
    }

    async fn relist_shared_in_slot(
        &mut self,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<View, Closed> {
        self.uids = Some(Vec::new());
        let versions = self.list_in_slot(slot).await?;
        let uids = self.uids.take().unwrap_or_default();
        let versions: Vec<u64> = versions.iter().map(|v| v.parse().unwrap_or(0)).collect();
        Ok(View::listed(
            &self.namespaces(),
            &versions,
            uids.iter().map(String::as_str),
            &self.ctx.config,
        ))
    }

    /// Lists every object of the kind between SyncStart and SyncEnd, within a sync
    /// slot of the budget. Returns the resourceVersion of each API's list, to watch
    /// from. A failed list starts over with a new SyncStart.
    async fn list(&mut self) -> Result<Vec<String>, Closed> {
        // The slot first, then the list's own state, boxed: a kind waiting for its turn
        // (every kind at the start, 7,500 at 500 accounts) holds no room for a list.
        let slot = self.ctx.budget.sync_slot().await;
        Box::pin(self.list_in_slot(slot)).await
    }

    async fn list_in_slot(
        &mut self,
        _slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Vec<String>, Closed> {
        let mut failures = 0u32;
        loop {
            self.sender
                .frame(Frame::SyncStart(SyncStart {
                    account: self.ctx.account.clone(),
                    kind: Some(self.gvk.clone()),
                    mode: SyncMode::FullRelist as i32,
                    resource_version: String::new(),
                    selection: self.ctx.selection.clone(),
                    resource: self.kind.resource.plural.clone(),
                    namespaced: self.kind.namespaced,
                }))
                .await?;
            match self.list_once().await? {
                Ok((versions, count)) => {
                    // Lists are taken one after another: the last is the newest.
                    let newest = versions.last().cloned().unwrap_or_default();
                    self.sender
                        .frame(Frame::SyncEnd(SyncEnd {
                            account: self.ctx.account.clone(),
                            kind: Some(self.gvk.clone()),
                            resource_version: newest.clone(),
                            object_count: count,
                        }))
                        .await?;
                    self.told_hub = newest;
                    self.synced.store(true, Ordering::Relaxed);
                    tracing::debug!(objects = count, "synced");
                    return Ok(versions);
                }
                Err(e) => {
                    failures += 1;
                    self.failed(failures, "list", &e);
                    tokio::time::sleep(retry_delay(failures)).await;
                }
            }
        }
    }

    /// One pass over every page of every API. `Ok(Err(..))` when a request failed.
    async fn list_once(&mut self) -> Result<Result<(Vec<String>, u64), String>, Closed> {
        let mut versions = Vec::with_capacity(self.apis.len());
        let mut count = 0u64;
        if let Some(uids) = self.uids.as_mut() {
            uids.clear();
        }
        for api in self.apis.clone() {
            let mut params = ListParams::default().limit(PAGE_SIZE);
            params.label_selector.clone_from(&self.selectors.labels);
            params.field_selector.clone_from(&self.selectors.fields);
            loop {
                let page = match list_page(&self.ctx.client, &api, &params).await {
                    Ok(page) => page,
                    Err(e) => return Ok(Err(e)),
                };
                for obj in &page.items {
                    if let Some(ev) = self.encode(EventType::Added, obj) {
                        if let Some(uids) = self.uids.as_mut() {
                            uids.push(ev.uid.clone());
                        }
                        count += 1;
                        self.sender.event(ev).await?;
                    }
                }
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(token) => params.continue_token = Some(token),
                    None => match page.metadata.resource_version.filter(|v| !v.is_empty()) {
                        Some(version) => {
                            versions.push(version);
                            break;
                        }
                        None => return Ok(Err("the list has no resourceVersion".into())),
                    },
                }
            }
        }
        Ok(Ok((versions, count)))
    }

    /// Watches every API from its resourceVersion in `versions` until one of them
    /// expires (returns then, to relist). Watches that end or fail start again from
    /// the last resourceVersion they delivered.
    async fn watch(&mut self, mut versions: Vec<String>) -> Result<(), Closed> {
        let mut watches = SelectAll::new();
        let mut failures = vec![0u32; versions.len()];
        for (i, version) in versions.iter().enumerate() {
            watches.push(self.open(i, version.clone(), Duration::ZERO));
        }
        loop {
            // What the watches have already delivered joins the waiting batch; once they
            // have nothing more at hand the batch goes out. A burst that arrived together
            // becomes one frame, and a lone change does not wait for others that may
            // never come. A stream that never pauses is bounded by the linger.
            self.sender.flush_if_due().await?;
            let next = match watches.next().now_or_never() {
                Some(next) => next,
                None => {
                    self.sender.flush().await?;
                    watches.next().await
                }
            };
            // Every watch is opened again when it stops, so the set never runs dry.
            let Some((i, step)) = next else {
                return Ok(());
            };
            match step {
                Step::Change(ty, obj) => {
                    failures[i] = 0;
                    if let Some(version) = obj.metadata.resource_version.as_ref() {
                        versions[i].clone_from(version);
                    }
                    if let Some(ev) = self.encode(ty, &obj) {
                        self.told_hub.clone_from(&ev.resource_version);
                        self.sender.event(ev).await?;
                    }
                }
                Step::Bookmark(version) => {
                    failures[i] = 0;
                    versions[i].clone_from(&version);
                    self.progress(version).await?;
                }
                Step::Skipped(e) => {
                    self.ctx.metrics.watch_errors.inc();
                    let error = truncate(&e, 512);
                    tracing::warn!(%error, "an unreadable watch event was skipped");
                }
                Step::Ended => watches.push(self.open(i, versions[i].clone(), Duration::ZERO)),
                Step::Expired => return Ok(()),
                Step::Forbidden(e) | Step::Failed(e) => {
                    failures[i] += 1;
                    self.failed(failures[i], "watch", &e);
                    watches.push(self.open(i, versions[i].clone(), retry_delay(failures[i])));
                }
            }
        }
    }

    /// Tells the hub the kind is current up to `version`, when the session speaks
    /// watch progress and the hub does not know it yet. Only a kind watched through
    /// one API: the hub keeps one resume point per kind, and several namespace watches
    /// are each at their own version.
    async fn progress(&mut self, version: String) -> Result<(), Closed> {
        if !self.ctx.watch_progress
            || self.apis.len() != 1
            || version.is_empty()
            || version == self.told_hub
        {
            return Ok(());
        }
        self.sender
            .frame(Frame::WatchProgress(WatchProgress {
                account: self.ctx.account.clone(),
                kind: Some(self.gvk.clone()),
                resource_version: version.clone(),
            }))
            .await?;
        self.ctx.metrics.watch_progressed(&self.label);
        self.told_hub = version;
        Ok(())
    }

    /// One watch of API `i` from `version`, after `delay`; its items tagged with `i`.
    /// The stream stops after the first step that ends the watch.
    fn open(
        &self,
        i: usize,
        version: String,
        delay: Duration,
    ) -> BoxStream<'static, (usize, Step)> {
        open(
            self.apis[i].clone(),
            &self.selectors,
            version,
            delay,
            self.ctx.metrics.watch_opened(&self.ctx.server),
        )
        .map(move |step| (i, step))
        .boxed()
    }

    fn encode(
        &self,
        ty: EventType,
        obj: &LeanObject,
    ) -> Option<scale_agent_proto::v1::ObjectEvent> {
        objects::encode(&self.kind, &self.gvk, &self.ctx.config, ty, obj)
    }

    /// Counts a failed request and logs it: the first time, then every 20th.
    fn failed(&self, failures: u32, what: &str, error: &str) {
        self.ctx.metrics.watch_errors.inc();
        if failures == 1 || failures.is_multiple_of(20) {
            let error = truncate(error, 512);
            tracing::warn!(%error, failures, "{what} failed; retrying");
        }
    }
}

/// One watch of `api` from `version` with `selectors`, after `delay`, counted in
/// `watches_open` (by `open`) until it ends. The stream stops after the first step that
/// ends the watch.
pub(crate) fn open(
    api: Api<LeanObject>,
    selectors: &Selectors,
    version: String,
    delay: Duration,
    open: OpenWatch,
) -> BoxStream<'static, Step> {
    let mut params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
    params.bookmarks = true;
    params.label_selector.clone_from(&selectors.labels);
    params.field_selector.clone_from(&selectors.fields);
    let opened = async move {
        tokio::time::sleep(delay).await;
        api.watch(&params, &version).await
    };
    let steps = stream::once(opened)
        .flat_map(|opened| match opened {
            Ok(events) => events
                .map(classify)
                .take_until(tokio::time::sleep(WATCH_DEAD_AFTER))
                .chain(stream::once(async { Step::Ended }))
                .boxed(),
            Err(e) => stream::once(async move { classify(Err(e)) }).boxed(),
        })
        .boxed();
    // After the step that ends it, the watch (and its connection) is dropped at once.
    stream::unfold(Some((steps, open)), |state| async move {
        let (mut steps, open) = state?;
        let step = steps.next().await?;
        let rest = (!step.ends_the_watch()).then_some((steps, open));
        Some((step, rest))
    })
    .boxed()
}

/// One page of a list of `api`'s kind: kube's own list, read as a [`LeanList`] (straight
/// from the response's text) instead of kube's `ObjectList`. The error says why, without
/// the response (it may hold a Secret).
async fn list_page(
    client: &kube::Client,
    api: &Api<LeanObject>,
    params: &ListParams,
) -> Result<LeanList, String> {
    let mut request = kube::core::Request::new(api.resource_url())
        .list(params)
        .map_err(|e| e.to_string())?;
    request.extensions_mut().insert("list");
    let text = client
        .request_text(request)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("the list cannot be read: {e}"))
}

/// The newest resourceVersion the API server has for `api`'s kind (a one-item list of
/// metadata), or why it cannot be read.
pub(crate) async fn newest_version(api: &Api<LeanObject>) -> Result<String, String> {
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(list) => list
            .metadata
            .resource_version
            .filter(|v| !v.is_empty())
            .ok_or_else(|| "the list has no resourceVersion".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// What one item of a watch means for the loop.
#[derive(Debug)]
pub(crate) enum Step {
    /// An object was added, changed or deleted.
    Change(EventType, Box<LeanObject>),
    /// The watch is current up to this resourceVersion.
    Bookmark(String),
    /// An item that could not be read; the watch goes on without it.
    Skipped(String),
    /// The server closed the watch (its timeout), or it went silent: watch again
    /// from the last resourceVersion.
    Ended,
    /// The resourceVersion cannot be watched from any more (410 Gone, or one the
    /// server does not have): relist.
    Expired,
    /// The watch failed: watch again from the last resourceVersion after a pause.
    Failed(String),
    /// The watch was refused (403): the same, unless a narrower one may do.
    Forbidden(String),
}

impl Step {
    fn ends_the_watch(&self) -> bool {
        matches!(
            self,
            Step::Ended | Step::Expired | Step::Failed(_) | Step::Forbidden(_)
        )
    }
}

/// Reads one item of a watch stream (or the error opening it).
fn classify(item: Result<WatchEvent<LeanObject>, kube::Error>) -> Step {
    match item {
        Ok(WatchEvent::Added(o)) => Step::Change(EventType::Added, Box::new(o)),
        Ok(WatchEvent::Modified(o)) => Step::Change(EventType::Modified, Box::new(o)),
        Ok(WatchEvent::Deleted(o)) => Step::Change(EventType::Deleted, Box::new(o)),
        Ok(WatchEvent::Bookmark(b)) => Step::Bookmark(b.metadata.resource_version),
        Ok(WatchEvent::Error(status)) | Err(kube::Error::Api(status)) => refused(&status),
        Err(kube::Error::SerdeError(e)) => Step::Skipped(e.to_string()),
        Err(e) => Step::Failed(e.to_string()),
    }
}

/// The API server refused the watch: expired when the resourceVersion is the reason
/// (gone, newer than the server has, or not a version at all), failed otherwise.
fn refused(status: &Status) -> Step {
    let about_the_version = status.details.as_ref().is_some_and(|d| {
        d.causes
            .iter()
            .any(|c| c.reason == "ResourceVersionTooLarge" || c.field == "resourceVersion")
    });
    if status.code == 410 || about_the_version {
        Step::Expired
    } else if status.code == 403 {
        Step::Forbidden(format!("{} ({})", status.message, status.code))
    } else {
        Step::Failed(format!("{} ({})", status.message, status.code))
    }
}

/// Whether resume point `rv` is ahead of `newest`, the newest resourceVersion the API
/// server has. Kubernetes resourceVersions are opaque, but every API server's are
/// numbers that grow; when either is not one, nothing is judged.
fn ahead(rv: &str, newest: &str) -> bool {
    matches!((rv.parse::<u64>(), newest.parse::<u64>()), (Ok(r), Ok(n)) if r > n)
}

/// The pause before retrying a failed list or watch: 250 ms per consecutive failure,
/// at most 5 s.
pub(crate) fn retry_delay(failures: u32) -> Duration {
    Duration::from_millis(250 * u64::from(failures.clamp(1, 20)))
}

/// At most `max` bytes of `text`, cut at a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests;

/// The loop against a scripted API server (kube's client over a mock service): which
/// requests it makes and which frames reach the hub, in which order.
#[cfg(test)]
mod loop_tests {
    use super::*;
    use crate::batch::Limits;
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body::Frame as BodyFrame;
    use http_body_util::StreamBody;
    use kube::client::Body;
    use kube::discovery::ApiResource;
    use scale_agent_proto::v1::AgentFrame;
    use std::convert::Infallible;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    type Chunks = ReceiverStream<Result<BodyFrame<Bytes>, Infallible>>;
    type Handle = tower_test::mock::Handle<Request<Body>, Response<StreamBody<Chunks>>>;

    struct Rig {
        api: Handle,
        frames: mpsc::Receiver<AgentFrame>,
        metrics: Arc<Metrics>,
    }

    fn start(resume_from: Option<&str>, watch_progress: bool) -> Rig {
        let start = match resume_from {
            Some(rv) => Start::Resume(rv.to_string()),
            None => Start::Relist(RelistCause::NoResumePoint),
        };
        let (service, api) =
            tower_test::mock::pair::<Request<Body>, Response<StreamBody<Chunks>>>();
        let (tx, frames) = mpsc::channel(64);
        let budget = Budget::new(1, 1 << 20);
        let metrics = Arc::new(Metrics::default());
        let ctx = KindCtx {
            account: "a".into(),
            client: kube::Client::new(service, "default"),
            // As the config file says it: every filter left at its default.
            config: serde_json::from_value(
                serde_json::json!({ "name": "a", "kubeconfigFile": "a.kubeconfig" }),
            )
            .expect("account config"),
            out: Outbound::new(tx, budget.clone(), Limits::default()),
            budget,
            metrics: metrics.clone(),
            selection: "sel".into(),
            watch_progress,
            server: "https://test".into(),
        };
        let kind = WatchedKind {
            resource: ApiResource {
                group: String::new(),
                version: "v1".into(),
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                plural: "configmaps".into(),
            },
            namespaced: true,
        };
        tokio::spawn(run(Arc::new(ctx), start, kind, Arc::default()));
        Rig {
            api,
            frames,
            metrics,
        }
    }

    /// The per-kind metric label of the kind the rig watches.
    fn configmaps() -> KindLabels {
        KindLabels::of("", "ConfigMap")
    }

    fn cm(name: &str, version: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": name, "namespace": "ns", "resourceVersion": version }
        })
    }

    fn line(value: serde_json::Value) -> Bytes {
        let mut text = value.to_string();
        text.push('\n');
        Bytes::from(text)
    }

    impl Rig {
        /// Waits for the next request; returns its query and the sender of its body.
        async fn request(
            &mut self,
        ) -> (String, mpsc::Sender<Result<BodyFrame<Bytes>, Infallible>>) {
            let (req, reply) =
                tokio::time::timeout(Duration::from_secs(5), self.api.next_request())
                    .await
                    .expect("a request within 5 s")
                    .expect("the client is alive");
            assert_eq!(req.uri().path(), "/api/v1/configmaps");
            let (tx, rx) = mpsc::channel(16);
            reply.send_response(Response::new(StreamBody::new(ReceiverStream::new(rx))));
            (req.uri().query().unwrap_or_default().to_string(), tx)
        }

        /// Answers the next request, a list, with `items` at `version`.
        async fn list(&mut self, items: Vec<serde_json::Value>, version: &str) {
            let (query, body) = self.request().await;
            assert!(!query.contains("watch"), "expected a list: {query}");
            assert!(query.contains("limit=500"), "{query}");
            let list = serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMapList",
                "metadata": { "resourceVersion": version }, "items": items
            });
            send(&body, line(list)).await;
        }

        /// Answers the next request, a one-item list of metadata, with `version` as the
        /// newest resourceVersion the server has.
        async fn newest(&mut self, version: &str) {
            let (query, body) = self.request().await;
            assert!(!query.contains("watch"), "expected a list: {query}");
            assert!(query.split('&').any(|p| p == "limit=1"), "{query}");
            let list = serde_json::json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                "metadata": { "resourceVersion": version }, "items": []
            });
            send(&body, line(list)).await;
        }

        /// Takes the next request, a watch from `version`; returns its body's sender.
        async fn watch(
            &mut self,
            version: &str,
        ) -> mpsc::Sender<Result<BodyFrame<Bytes>, Infallible>> {
            let (query, body) = self.request().await;
            for want in [
                "watch=true".to_string(),
                format!("resourceVersion={version}"),
                "allowWatchBookmarks=true".into(),
                format!("timeoutSeconds={WATCH_TIMEOUT_SECS}"),
            ] {
                assert!(query.contains(&want), "{want} not in {query}");
            }
            body
        }

        /// The next frame to the hub, in short.
        async fn frame(&mut self) -> String {
            let f = tokio::time::timeout(Duration::from_secs(5), self.frames.recv())
                .await
                .expect("a frame within 5 s")
                .expect("the session is open");
            match f.frame {
                Some(Frame::SyncStart(_)) => "SyncStart".into(),
                Some(Frame::SyncEnd(e)) => {
                    format!("SyncEnd {} {}", e.resource_version, e.object_count)
                }
                Some(Frame::EventBatch(b)) => {
                    let names: Vec<String> = b
                        .events
                        .iter()
                        .map(|e| format!("{}@{}", e.name, e.resource_version))
                        .collect();
                    format!("batch {}", names.join(","))
                }
                Some(Frame::WatchProgress(p)) => format!("progress {}", p.resource_version),
                other => format!("{other:?}"),
            }
        }

        /// The bodies of the next frame to the hub, a batch of events.
        async fn bodies(&mut self) -> Vec<serde_json::Value> {
            let f = tokio::time::timeout(Duration::from_secs(5), self.frames.recv())
                .await
                .expect("a frame within 5 s")
                .expect("the session is open");
            let Some(Frame::EventBatch(b)) = f.frame else {
                panic!("expected a batch, got {f:?}");
            };
            b.events
                .iter()
                .map(|e| serde_json::from_slice(&e.body_json).expect("a JSON body"))
                .collect()
        }

        async fn no_frame(&mut self) {
            let f = tokio::time::timeout(Duration::from_millis(200), self.frames.recv()).await;
            assert!(f.is_err(), "unexpected frame {f:?}");
        }
    }

    async fn send(body: &mpsc::Sender<Result<BodyFrame<Bytes>, Infallible>>, bytes: Bytes) {
        body.send(Ok(BodyFrame::data(bytes)))
            .await
            .expect("the client reads");
    }

    /// A watch event as the API server writes it: its type before its object.
    fn event(ty: &str, object: serde_json::Value) -> Bytes {
        Bytes::from(format!("{{\"type\":\"{ty}\",\"object\":{object}}}\n"))
    }

    fn bookmark(version: &str) -> Bytes {
        event(
            "BOOKMARK",
            serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "resourceVersion": version }
            }),
        )
    }

    fn gone() -> Bytes {
        event(
            "ERROR",
            serde_json::json!({
                "apiVersion": "v1", "kind": "Status", "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410
            }),
        )
    }

    #[tokio::test]
    async fn lists_watches_from_the_list_and_passes_new_bookmarks_on_after_the_events() {
        let mut rig = start(None, true);
        rig.list(vec![cm("x", "5")], "10").await;
        assert_eq!(rig.frame().await, "SyncStart");
        assert_eq!(rig.frame().await, "batch x@5");
        assert_eq!(rig.frame().await, "SyncEnd 10 1");

        let body = rig.watch("10").await;
        send(&body, event("ADDED", cm("y", "11"))).await;
        send(&body, bookmark("12")).await;
        // The event is still lingering when the bookmark comes: it must go first.
        assert_eq!(rig.frame().await, "batch y@11");
        assert_eq!(rig.frame().await, "progress 12");
        // A bookmark at a version the hub already has says nothing new.
        send(&body, bookmark("12")).await;
        rig.no_frame().await;
        send(&body, bookmark("13")).await;
        assert_eq!(rig.frame().await, "progress 13");
        assert_eq!(rig.metrics.watch_progress_of(&configmaps()), 2);

        // 410 Gone: the kind is listed again, as a whole.
        send(&body, gone()).await;
        rig.list(vec![cm("y", "11")], "20").await;
        assert_eq!(rig.frame().await, "SyncStart");
        assert_eq!(rig.frame().await, "batch y@11");
        assert_eq!(rig.frame().await, "SyncEnd 20 1");
        rig.watch("20").await;
        assert_eq!(rig.metrics.relists(RelistCause::Expired), 1);
        assert_eq!(rig.metrics.relists(RelistCause::NoResumePoint), 1);
    }

    /// What kube's list and watch read reaches the hub whole, as the API server wrote
    /// it, but for what never leaves the agent.
    #[tokio::test]
    async fn listed_and_watched_objects_reach_the_hub_whole_and_stripped() {
        let full = |name: &str, version: &str| {
            let mut o = cm(name, version);
            o["metadata"]["managedFields"] = serde_json::json!([{ "manager": "kubectl" }]);
            o["metadata"]["labels"] = serde_json::json!({ "app": "web" });
            o["data"] = serde_json::json!({ "k": "v \u{e9} \"q\" \\ \n" });
            o
        };
        let sent = |o: serde_json::Value| {
            let mut o = o;
            o["metadata"]
                .as_object_mut()
                .expect("metadata")
                .remove("managedFields");
            o
        };
        let mut rig = start(None, true);
        rig.list(vec![full("x", "5")], "10").await;
        assert_eq!(rig.frame().await, "SyncStart");
        assert_eq!(rig.bodies().await, vec![sent(full("x", "5"))]);
        assert_eq!(rig.frame().await, "SyncEnd 10 1");
        let body = rig.watch("10").await;
        send(&body, event("MODIFIED", full("x", "11"))).await;
        assert_eq!(rig.bodies().await, vec![sent(full("x", "11"))]);
    }

    #[tokio::test]
    async fn without_the_capability_bookmarks_stay_with_the_agent() {
        let mut rig = start(None, false);
        rig.list(vec![], "10").await;
        assert_eq!(rig.frame().await, "SyncStart");
        assert_eq!(rig.frame().await, "SyncEnd 10 0");
        let body = rig.watch("10").await;
        send(&body, bookmark("15")).await;
        rig.no_frame().await;
        // The watch itself still moves on: the next one starts at the bookmark.
        drop(body);
        rig.watch("15").await;
        assert_eq!(rig.metrics.watch_progress_of(&configmaps()), 0);
    }

    #[tokio::test]
    async fn resumes_without_listing_and_retries_a_failed_watch_from_the_same_version() {
        let mut rig = start(Some("7"), true);
        rig.newest("7").await;
        let body = rig.watch("7").await;
        // The hub learns the kind is streamed (and its resource name) first.
        assert_eq!(rig.frame().await, "SyncStart");
        send(
            &body,
            event(
                "ERROR",
                serde_json::json!({
                    "apiVersion": "v1", "kind": "Status", "status": "Failure",
                    "message": "etcd is unavailable", "reason": "InternalError", "code": 500
                }),
            ),
        )
        .await;
        // Not a reason to relist: the same version again, after a pause.
        let body = rig.watch("7").await;
        send(&body, event("MODIFIED", cm("x", "8"))).await;
        assert_eq!(rig.frame().await, "batch x@8");
        // The server ends the watch (its timeout): the next starts at the last event.
        drop(body);
        rig.watch("8").await;
        assert_eq!(rig.metrics.resumes.get(), 1);
        for cause in [RelistCause::Expired, RelistCause::NoResumePoint] {
            assert_eq!(rig.metrics.relists(cause), 0);
        }
        assert_eq!(rig.metrics.watch_errors.get(), 1);
    }

    #[tokio::test]
    async fn a_resume_point_the_server_no_longer_has_relists() {
        let mut rig = start(Some("7"), true);
        rig.newest("25").await;
        let body = rig.watch("7").await;
        assert_eq!(rig.frame().await, "SyncStart", "the resumed watch's");
        send(&body, gone()).await;
        rig.list(vec![cm("x", "9")], "30").await;
        assert_eq!(rig.frame().await, "SyncStart");
        assert_eq!(rig.frame().await, "batch x@9");
        assert_eq!(rig.frame().await, "SyncEnd 30 1");
        assert_eq!(rig.metrics.relists(RelistCause::Expired), 1);
    }

    /// A resume point from the future (planted, or from another cluster) would make
    /// the watch wait for changes that never come: the kind is relisted instead, and
    /// the relist carries the account's selection.
    #[tokio::test]
    async fn a_resume_point_ahead_of_the_server_relists_instead_of_watching() {
        let mut rig = start(Some("999999"), true);
        rig.newest("1200").await;
        rig.list(vec![cm("x", "1100")], "1200").await;
        let f = tokio::time::timeout(Duration::from_secs(5), rig.frames.recv())
            .await
            .expect("a frame")
            .expect("open");
        match f.frame {
            Some(Frame::SyncStart(s)) => {
                assert_eq!(s.mode, SyncMode::FullRelist as i32);
                assert_eq!(s.selection, "sel");
            }
            other => panic!("expected SyncStart, got {other:?}"),
        }
        assert_eq!(rig.frame().await, "batch x@1100");
        assert_eq!(rig.frame().await, "SyncEnd 1200 1");
        rig.watch("1200").await;
        assert_eq!(rig.metrics.relists(RelistCause::SuspiciousResume), 1);
        assert_eq!(rig.metrics.resumes.get(), 0);
    }
}
