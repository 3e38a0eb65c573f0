//! One kind of one account: list (paginated) between SyncStart and SyncEnd, then stream
//! every change in order. With `namespaces` set, one watcher per namespace, merged; any
//! relist (a watch expired past etcd compaction: 410 Gone) relists the whole kind, so the
//! hub can drop exactly what vanished. No object is kept in memory.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{StreamExt, stream::BoxStream};
use kube::api::{Api, DynamicObject, WatchEvent, WatchParams};
use kube::runtime::watcher::{self, Event};
use scale_agent_crds::AccountConfig;
use scale_agent_proto::v1::{
    EventType, GroupVersionKind, ObjectEvent, SyncEnd, SyncMode, SyncStart, agent_frame::Frame,
};

use crate::budget::Budget;
use crate::kinds::WatchedKind;
use crate::metrics::Metrics;
use crate::outbound::{Closed, Outbound};

/// The label Spinnaker puts on what it deploys.
pub const SPINNAKER_MANAGED: &str = "app.kubernetes.io/managed-by=spinnaker";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const PAGE_SIZE: u32 = 500;

/// What a kind watcher needs.
#[derive(Clone)]
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
    /// The hub's resourceVersion for this kind, to resume the watch from.
    pub resume_from: Option<String>,
}

/// Streams `kind` until the session ends. `synced` is set after the first SyncEnd.
pub async fn run(ctx: KindCtx, kind: WatchedKind, synced: Arc<AtomicBool>) -> Result<(), Closed> {
    let gvk = GroupVersionKind {
        group: kind.resource.group.clone(),
        version: kind.resource.version.clone(),
        kind: kind.resource.kind.clone(),
    };
    if let Some(rv) = ctx.resume_from.clone() {
        match resume(&ctx, &kind, &gvk, rv, &synced).await? {
            Resumed::Expired => {
                tracing::info!(account = %ctx.account, kind = %gvk.kind, "resume point expired (410 Gone); relisting");
                ctx.metrics.relists.inc();
            }
            Resumed::Failed(e) => {
                tracing::info!(account = %ctx.account, kind = %gvk.kind, error = %e, "resuming failed; relisting");
            }
        }
    }
    let mut backoff = Duration::from_millis(500);
    loop {
        let restart = sync_and_watch(&ctx, &kind, &gvk, &synced).await?;
        if restart {
            tracing::info!(account = %ctx.account, kind = %gvk.kind, "relisting");
            ctx.metrics.relists.inc();
            continue;
        }
        // The streams ended (they do not, normally): start over after a pause.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

enum Resumed {
    /// The revision is gone from the cluster (compacted or older than the watch cache).
    Expired,
    /// Another failure; relisting is the safe way on.
    Failed(String),
}

/// Watches from the hub's resume point without listing: after a load-balancer blip or a
/// hub restart nothing is sent twice. Runs until the watch cannot go on.
async fn resume(
    ctx: &KindCtx,
    kind: &WatchedKind,
    gvk: &GroupVersionKind,
    mut rv: String,
    synced: &AtomicBool,
) -> Result<Resumed, Closed> {
    let apis = apis(ctx, kind);
    let [api] = apis.as_slice() else {
        // One revision cannot resume several per-namespace watches safely.
        return Ok(Resumed::Failed("several namespaces".into()));
    };
    let mut params = WatchParams::default().timeout(290);
    if let Some(f) = field_selector(ctx, kind) {
        params = params.fields(&f);
    }
    if ctx.config.only_spinnaker_managed {
        params = params.labels(SPINNAKER_MANAGED);
    }
    tracing::info!(account = %ctx.account, kind = %gvk.kind, resource_version = %rv, "resuming the watch");
    ctx.out
        .send(Frame::SyncStart(SyncStart {
            account: ctx.account.clone(),
            kind: Some(gvk.clone()),
            mode: SyncMode::ResumedWatch as i32,
            resource_version: rv.clone(),
            resource: kind.resource.plural.clone(),
            namespaced: kind.namespaced,
        }))
        .await?;
    ctx.metrics.resumes.inc();
    synced.store(true, Ordering::Relaxed);
    loop {
        let stream = match api.watch(&params, &rv).await {
            Ok(s) => s,
            Err(kube::Error::Api(s)) if s.code == 410 => return Ok(Resumed::Expired),
            Err(e) => return Ok(Resumed::Failed(e.to_string())),
        };
        futures::pin_mut!(stream);
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        loop {
            let next = if batch.is_empty() {
                stream.next().await
            } else {
                match tokio::time::timeout(Duration::from_millis(20), stream.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        flush(ctx, &mut batch, &mut bytes).await?;
                        continue;
                    }
                }
            };
            let (ty, obj) = match next {
                // The server ended the watch (its timeout): go on from the last revision.
                None => break,
                Some(Ok(WatchEvent::Added(o))) => (EventType::Added, o),
                Some(Ok(WatchEvent::Modified(o))) => (EventType::Modified, o),
                Some(Ok(WatchEvent::Deleted(o))) => (EventType::Deleted, o),
                Some(Ok(WatchEvent::Bookmark(b))) => {
                    rv = b.metadata.resource_version;
                    continue;
                }
                Some(Ok(WatchEvent::Error(e))) if e.code == 410 => {
                    flush(ctx, &mut batch, &mut bytes).await?;
                    return Ok(Resumed::Expired);
                }
                Some(Ok(WatchEvent::Error(e))) => {
                    flush(ctx, &mut batch, &mut bytes).await?;
                    return Ok(Resumed::Failed(e.message));
                }
                Some(Err(e)) => {
                    flush(ctx, &mut batch, &mut bytes).await?;
                    return Ok(Resumed::Failed(e.to_string()));
                }
            };
            if let Some(ev) = encode(kind, gvk, &ctx.config, ty, obj, &mut rv) {
                push(ctx, &mut batch, &mut bytes, ev).await?;
            }
        }
        flush(ctx, &mut batch, &mut bytes).await?;
    }
}

enum Phase {
    Listing {
        pending: BTreeSet<usize>,
        count: u64,
    },
    Watching,
}

/// One list-then-watch cycle. Returns `Ok(true)` when a stream restarted and the kind
/// must be relisted as a whole.
async fn sync_and_watch(
    ctx: &KindCtx,
    kind: &WatchedKind,
    gvk: &GroupVersionKind,
    synced: &AtomicBool,
) -> Result<bool, Closed> {
    let mut slot = Some(ctx.budget.sync_slot().await);
    let streams = streams(ctx, kind);
    let n = streams.len();
    let mut merged = futures::stream::select_all(streams);
    ctx.out
        .send(Frame::SyncStart(SyncStart {
            account: ctx.account.clone(),
            kind: Some(gvk.clone()),
            mode: SyncMode::FullRelist as i32,
            resource_version: String::new(),
            resource: kind.resource.plural.clone(),
            namespaced: kind.namespaced,
        }))
        .await?;
    let mut phase = Phase::Listing {
        pending: (0..n).collect(),
        count: 0,
    };
    let mut seen_init: BTreeSet<usize> = BTreeSet::new();
    let mut batch: Vec<ObjectEvent> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut last_rv = String::new();
    let mut errors = 0u32;
    loop {
        let next = if batch.is_empty() {
            merged.next().await
        } else {
            match tokio::time::timeout(Duration::from_millis(20), merged.next()).await {
                Ok(next) => next,
                Err(_) => {
                    flush(ctx, &mut batch, &mut batch_bytes).await?;
                    continue;
                }
            }
        };
        let Some((i, item)) = next else {
            flush(ctx, &mut batch, &mut batch_bytes).await?;
            return Ok(false);
        };
        let event = match item {
            Ok(e) => {
                errors = 0;
                e
            }
            Err(e) => {
                errors += 1;
                ctx.metrics.watch_errors.inc();
                if errors == 1 || errors.is_multiple_of(20) {
                    tracing::warn!(account = %ctx.account, kind = %gvk.kind, error = %e, "watch error; retrying");
                }
                flush(ctx, &mut batch, &mut batch_bytes).await?;
                tokio::time::sleep(Duration::from_millis(
                    (250 * u64::from(errors.min(20))).max(250),
                ))
                .await;
                continue;
            }
        };
        match event {
            Event::Init => {
                if !seen_init.insert(i) {
                    // A stream that already listed lists again (its watch expired):
                    // relist every stream of the kind between a new SyncStart/SyncEnd.
                    flush(ctx, &mut batch, &mut batch_bytes).await?;
                    return Ok(true);
                }
            }
            Event::InitApply(obj) => {
                if let Some(ev) =
                    encode(kind, gvk, &ctx.config, EventType::Added, obj, &mut last_rv)
                {
                    if let Phase::Listing { count, .. } = &mut phase {
                        *count += 1;
                    }
                    push(ctx, &mut batch, &mut batch_bytes, ev).await?;
                }
            }
            Event::InitDone => {
                if let Phase::Listing { pending, count } = &mut phase {
                    pending.remove(&i);
                    if pending.is_empty() {
                        let count = *count;
                        flush(ctx, &mut batch, &mut batch_bytes).await?;
                        ctx.out
                            .send(Frame::SyncEnd(SyncEnd {
                                account: ctx.account.clone(),
                                kind: Some(gvk.clone()),
                                resource_version: last_rv.clone(),
                                object_count: count,
                            }))
                            .await?;
                        drop(slot.take());
                        synced.store(true, Ordering::Relaxed);
                        phase = Phase::Watching;
                        tracing::debug!(account = %ctx.account, kind = %gvk.kind, objects = count, "synced");
                    }
                }
            }
            Event::Apply(obj) => {
                if let Some(ev) = encode(
                    kind,
                    gvk,
                    &ctx.config,
                    EventType::Modified,
                    obj,
                    &mut last_rv,
                ) {
                    push(ctx, &mut batch, &mut batch_bytes, ev).await?;
                }
            }
            Event::Delete(obj) => {
                if let Some(ev) = encode(
                    kind,
                    gvk,
                    &ctx.config,
                    EventType::Deleted,
                    obj,
                    &mut last_rv,
                ) {
                    push(ctx, &mut batch, &mut batch_bytes, ev).await?;
                }
            }
        }
    }
}

async fn push(
    ctx: &KindCtx,
    batch: &mut Vec<ObjectEvent>,
    bytes: &mut usize,
    ev: ObjectEvent,
) -> Result<(), Closed> {
    *bytes += crate::outbound::event_size(&ev);
    batch.push(ev);
    if *bytes >= ctx.out.max_batch_bytes {
        flush(ctx, batch, bytes).await?;
    }
    Ok(())
}

async fn flush(
    ctx: &KindCtx,
    batch: &mut Vec<ObjectEvent>,
    bytes: &mut usize,
) -> Result<(), Closed> {
    if batch.is_empty() {
        return Ok(());
    }
    let events = std::mem::take(batch);
    ctx.metrics.events_sent.inc_by(events.len() as u64);
    *bytes = 0;
    ctx.out.events(&ctx.account, events).await
}

type Tagged = (usize, Result<Event<DynamicObject>, watcher::Error>);

/// The APIs a kind is watched through: all namespaces, or one per listed namespace.
fn apis(ctx: &KindCtx, kind: &WatchedKind) -> Vec<Api<DynamicObject>> {
    let ar = &kind.resource;
    if kind.namespaced && !ctx.config.namespaces.is_empty() {
        ctx.config
            .namespaces
            .iter()
            .map(|ns| Api::namespaced_with(ctx.client.clone(), ns, ar))
            .collect()
    } else {
        vec![Api::all_with(ctx.client.clone(), ar)]
    }
}

/// The field selector that leaves out `omitNamespaces` (server side).
fn field_selector(ctx: &KindCtx, kind: &WatchedKind) -> Option<String> {
    if !kind.namespaced
        || !ctx.config.namespaces.is_empty()
        || ctx.config.omit_namespaces.is_empty()
    {
        return None;
    }
    let sel: Vec<String> = ctx
        .config
        .omit_namespaces
        .iter()
        .map(|ns| format!("metadata.namespace!={ns}"))
        .collect();
    Some(sel.join(","))
}

/// The watch streams of a kind: one over all namespaces, or one per listed namespace.
fn streams(ctx: &KindCtx, kind: &WatchedKind) -> Vec<BoxStream<'static, Tagged>> {
    let mut cfg = watcher::Config::default().page_size(PAGE_SIZE);
    if ctx.config.only_spinnaker_managed {
        cfg = cfg.labels(SPINNAKER_MANAGED);
    }
    if let Some(f) = field_selector(ctx, kind) {
        cfg = cfg.fields(&f);
    }
    apis(ctx, kind)
        .into_iter()
        .enumerate()
        .map(|(i, api)| {
            watcher::watcher(api, cfg.clone())
                .map(move |e| (i, e))
                .boxed()
        })
        .collect()
}

/// Turns an object into an event: strips managedFields, the last-applied annotation and
/// Secret data, and applies the filters a field selector cannot express (Namespace
/// objects by name). Returns `None` for an object the account does not stream.
fn encode(
    kind: &WatchedKind,
    gvk: &GroupVersionKind,
    config: &AccountConfig,
    ty: EventType,
    mut obj: DynamicObject,
    last_rv: &mut String,
) -> Option<ObjectEvent> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    if kind.resource.group.is_empty() && kind.resource.kind == "Namespace" {
        if !config.namespaces.is_empty() && !config.namespaces.contains(&name) {
            return None;
        }
        if config.omit_namespaces.contains(&name) {
            return None;
        }
    }
    obj.metadata.managed_fields = None;
    if let Some(a) = obj.metadata.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            obj.metadata.annotations = None;
        }
    }
    if kind.resource.group.is_empty()
        && kind.resource.kind == "Secret"
        && let Some(map) = obj.data.as_object_mut()
    {
        map.remove("data");
        map.remove("stringData");
    }
    obj.types = Some(kube::api::TypeMeta {
        api_version: kind.resource.api_version.clone(),
        kind: kind.resource.kind.clone(),
    });
    let rv = obj.metadata.resource_version.clone().unwrap_or_default();
    if !rv.is_empty() {
        last_rv.clone_from(&rv);
    }
    let body = serde_json::to_vec(&obj).ok()?;
    Some(ObjectEvent {
        r#type: ty as i32,
        kind: Some(gvk.clone()),
        namespace: obj.metadata.namespace.clone().unwrap_or_default(),
        name,
        uid: obj.metadata.uid.clone().unwrap_or_default(),
        resource_version: rv,
        body_json: body.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::discovery::ApiResource;

    fn cm_kind() -> WatchedKind {
        WatchedKind {
            resource: ApiResource {
                group: String::new(),
                version: "v1".into(),
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                plural: "configmaps".into(),
            },
            namespaced: true,
        }
    }

    fn account() -> AccountConfig {
        AccountConfig {
            name: "a".into(),
            kubeconfig_file: "a.kubeconfig".into(),
            namespaces: vec![],
            omit_namespaces: vec![],
            kinds: vec![],
            omit_kinds: vec![],
            only_spinnaker_managed: false,
        }
    }

    #[test]
    fn strips_managed_fields_and_last_applied() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "x", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                "annotations": { LAST_APPLIED: "{}", "keep": "me" },
                "managedFields": [{ "manager": "kubectl" }]
            },
            "data": { "k": "v" }
        }))
        .expect("object");
        let kind = cm_kind();
        let gvk = GroupVersionKind {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
        };
        let mut rv = String::new();
        let ev = encode(&kind, &gvk, &account(), EventType::Added, obj, &mut rv).expect("event");
        let body: serde_json::Value = serde_json::from_slice(&ev.body_json).expect("json");
        assert!(body["metadata"].get("managedFields").is_none());
        assert!(body["metadata"]["annotations"].get(LAST_APPLIED).is_none());
        assert_eq!(body["metadata"]["annotations"]["keep"], "me");
        assert_eq!(body["data"]["k"], "v");
        assert_eq!(
            (
                ev.namespace.as_str(),
                ev.name.as_str(),
                ev.uid.as_str(),
                rv.as_str()
            ),
            ("ns", "x", "u1", "7")
        );
    }
}
