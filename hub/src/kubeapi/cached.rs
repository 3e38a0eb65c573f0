//! Answering a read from the cache: the checks that need the cache (is the kind
//! streamed, synced, inside the account's scope, new enough for the client's own
//! writes), taken under the cache's lock in one short step that copies out only names
//! and shared bodies; the list is filtered and written, and the watch followed,
//! outside the lock, so a 10,000-object list does not hold up the agents' streams.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::Response;

use super::barrier::Barriers;
use super::columns;
use super::hold::Holding;
use super::list::{self, Snapshots};
use super::path::ResourcePath;
use super::read::{self, Pass, Read, Version};
use super::table::Print;
use super::watch::{self, Start, Watch};
use crate::core::cache::ObjectKey;
use crate::core::memory::Memory;
use crate::core::window::Mark;
use crate::state::Shared;

/// How long a read waits for the cache to reach the client's own write (or the
/// resourceVersion it asks for) before it goes to the cluster instead.
pub const CATCH_UP: Duration = Duration::from_secs(3);

enum Step {
    Wait(tokio::sync::watch::Receiver<Mark>),
    Object(
        Arc<serde_json::value::RawValue>,
        Option<Print>,
        Option<super::protobuf::Kind>,
    ),
    List(list::Listed, Option<Print>),
    Continue(Option<Print>),
    Watch(Box<Watch>),
}

/// What a read needs from the hub besides the request.
pub struct Ctx<'a> {
    /// Shared state (the cache).
    pub shared: &'a Arc<Shared>,
    /// Lists kept for their next pages.
    pub snapshots: &'a Snapshots,
    /// Who asks (the token's line), whose list snapshots the pages come from.
    pub owner: usize,
    /// The watches each token holds, and how many it may.
    pub watches: &'a Arc<watch::Slots>,
    /// Watches at most per token.
    pub max_watches: usize,
    /// The bytes held for each token; a page of a list counts until it is sent.
    pub memory: &'a Arc<Memory>,
    /// Versions reads must reach after the clients' writes.
    pub barriers: &'a Barriers,
    /// The columns of custom resources' Tables.
    pub columns: &'a columns::Memory,
    /// The account's agent is away: the cache answers from its last known state and
    /// cannot catch up with anything, so a read that would wait goes elsewhere at once.
    pub stale: bool,
}

/// Answers `read` of `path` in `account` from the cache, or says why it goes to the
/// cluster.
pub async fn answer(
    ctx: &Ctx<'_>,
    account: &str,
    path: &ResourcePath,
    read: Read,
    fingerprint: u64,
) -> Result<Response<Body>, Pass> {
    let written = ctx.barriers.floor(account, &path.group, &path.resource);
    // A list, or a watch that starts with the objects, shows the objects at a version
    // not older than the one asked; a watch from a version starts after it instead.
    let asked = match read.version {
        Version::NotOlderThan(n) if read.watch.as_ref().is_none_or(|w| w.initial_events) => n,
        _ => 0,
    };
    let floor = written.max(asked);
    let give_up = Instant::now() + CATCH_UP;
    loop {
        match step(ctx, account, path, &read, floor)? {
            Step::Wait(_) if ctx.stale => {
                return Err("the cache is not followed while the agent is away");
            }
            Step::Wait(mut rx) => {
                let left = give_up.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err("the cache has not caught up with the client's write");
                }
                // Woken by the kind's next change; the check runs again.
                let _ = tokio::time::timeout(left, rx.changed()).await;
            }
            Step::Object(body, print, pb) => {
                if let Some(pb) = pb {
                    match super::protobuf::object(&pb, body.get()) {
                        Ok(bytes) => return Ok(super::protobuf::response(bytes)),
                        // Answered in JSON, as the client accepts.
                        Err(err) => super::protobuf::schema().refuse(&pb, &err),
                    }
                }
                return Ok(match (print, read.table) {
                    (Some(print), Some(ask)) => {
                        list::table_response(&print.one(body.get(), ask.include))
                    }
                    _ => super::status::json_response(Body::from(format!("{}\n", body.get()))),
                });
            }
            Step::List(listed, print) => {
                return Ok(page(ctx, &read, Some(listed), fingerprint, print.as_ref()));
            }
            Step::Continue(print) => {
                return Ok(page(ctx, &read, None, fingerprint, print.as_ref()));
            }
            Step::Watch(w) => {
                let Some(slot) = ctx.watches.take(ctx.owner, ctx.max_watches) else {
                    return Ok(super::status::Failure::new(
                        http::StatusCode::TOO_MANY_REQUESTS,
                        "TooManyRequests",
                        format!(
                            "this token holds {} watches, the most it may; end one first",
                            ctx.max_watches
                        ),
                    )
                    .response());
                };
                return Ok(watch::serve(*w, slot));
            }
        }
    }
}

/// A page of the list (`listed`) or of the list kept for the request's continue
/// token (`None`), held until sent.
fn page(
    ctx: &Ctx<'_>,
    read: &Read,
    listed: Option<list::Listed>,
    fingerprint: u64,
    print: Option<&Print>,
) -> Response<Body> {
    held_until_sent(
        ctx,
        list::page(ctx.snapshots, ctx.owner, read, listed, fingerprint, print),
    )
}

/// A page counted against its token's bytes until it is sent (a client that leaves
/// its lists unread holds no more than its bound); 429 past the bound.
fn held_until_sent(ctx: &Ctx<'_>, page: Response<Body>) -> Response<Body> {
    let bytes = hyper::body::Body::size_hint(page.body())
        .exact()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    match ctx.memory.take(ctx.owner, bytes) {
        Ok(held) => page.map(|body| Body::new(Holding::new(in_parts(body), held))),
        Err(over) => super::passthrough::too_much(over).response(),
    }
}

/// Parts of a page written at a time.
const PART: usize = 64 << 10;

/// `body` handed to the connection a part at a time (slices of the same bytes): the
/// connection takes the next part only when it has written the last, so the page
/// counts as held until it is nearly all sent, not as soon as the connection took it
/// whole into its buffer.
fn in_parts(body: Body) -> Body {
    use futures::StreamExt as _;
    let parts = body.into_data_stream().flat_map(|whole| {
        let parts: Vec<Result<bytes::Bytes, axum::Error>> = match whole {
            Ok(mut bytes) => {
                let mut parts = Vec::with_capacity(bytes.len() / PART + 1);
                while !bytes.is_empty() {
                    parts.push(Ok(bytes.split_to(bytes.len().min(PART))));
                }
                parts
            }
            Err(err) => vec![Err(err)],
        };
        futures::stream::iter(parts)
    });
    Body::from_stream(parts)
}

fn step(
    ctx: &Ctx<'_>,
    account: &str,
    path: &ResourcePath,
    read: &Read,
    floor: u64,
) -> Result<Step, Pass> {
    let core = ctx.shared.core();
    let cache = core.cache.account(account).ok_or("nothing cached")?;
    let scope = cache
        .scope()
        .ok_or("the agent did not say what it streams")?;
    let kind = cache
        .kind_for(&path.group, &path.version, &path.resource)
        .ok_or("a kind (or version) the agent does not stream")?;
    if !kind.servable {
        return Err("the kind is not synced");
    }
    if path.namespace.is_some() && !kind.window.namespaced {
        return Err("a namespace for a cluster-scoped kind");
    }
    let print = match read.table {
        None => None,
        Some(_) => Some(
            Print::built_in(kind.key)
                .or_else(|| {
                    let surface = cache.api_surface()?;
                    let gvr = (
                        path.group.as_str(),
                        path.version.as_str(),
                        path.resource.as_str(),
                    );
                    match ctx.columns.get(account, surface, gvr) {
                        columns::Known::Columns(c) => Some(Print::Custom(c)),
                        _ => None,
                    }
                })
                .ok_or("a Table of a kind the hub has no printer for")?,
        ),
    };
    if !read.fields.supported(&kind.key.group, &kind.key.kind) {
        return Err("a field the hub does not index");
    }
    // One object the cache holds is one the agent streams; one it does not hold is
    // asked of the cluster, so the account's filters need no check.
    if read.name.is_none() && !read::in_scope(scope, read, kind.key) {
        return Err("outside what the agent streams");
    }
    // An agent watching several namespaces apart merges their changes as they come,
    // not in one resourceVersion order: a version then says nothing about what the
    // cache holds, so neither a watch nor a read that must reach a version can be
    // answered from it.
    if kind.window.namespaced && scope.namespaces.len() > 1 && (read.watch.is_some() || floor > 0) {
        return Err("several namespaces watched apart: versions are not in one order");
    }
    let mark = kind.window.mark();
    if mark.rv < floor {
        return Ok(Step::Wait(kind.window.subscribe()));
    }
    if let Some(name) = &read.name {
        let key = ObjectKey {
            group: kind.key.group.clone(),
            kind: kind.key.kind.clone(),
            namespace: path.namespace.clone().unwrap_or_default(),
            name: name.clone(),
        };
        // Not held: created a moment ago, outside the account's filters, or absent;
        // the cluster says which.
        let object = cache
            .get(&key)
            .ok_or("one object the cache does not hold")?;
        let pb = read
            .protobuf
            .then(|| super::protobuf::schema().kind(&kind.key.group, &path.version, &kind.key.kind))
            .flatten();
        return Ok(Step::Object(Arc::clone(&object.body), print, pb));
    }
    if read.cont.is_some() {
        return Ok(Step::Continue(print));
    }
    let listed = || {
        list::take(
            cache,
            kind.key,
            &path.version,
            read.namespace.as_deref(),
            mark.rv,
        )
    };
    let Some(ask) = &read.watch else {
        return Ok(Step::List(listed(), print));
    };
    let start = match read.version {
        _ if ask.initial_events => Start::Objects(listed().items),
        Version::Latest | Version::Any => {
            if kind.window.since(mark.rv).is_err() {
                return Err("the window does not vouch for the kind's current version");
            }
            Start::After(mark.rv)
        }
        Version::NotOlderThan(rv) => {
            if kind.window.since(rv).is_err() {
                // The cluster knows its history: it streams from there, or answers
                // 410 Gone itself.
                return Err("a version the window does not vouch for");
            }
            Start::After(rv)
        }
    };
    let api_version = listed_api_version(&kind.key.group, &path.version);
    Ok(Step::Watch(Box::new(Watch {
        account: account.to_owned(),
        kind: kind.key.clone(),
        api_version,
        read: read.clone(),
        print,
        start,
        mark,
        follower: kind.window.follow(),
    })))
}

fn listed_api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}
