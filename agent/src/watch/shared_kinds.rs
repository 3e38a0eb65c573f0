//! The kinds of one account whose identity shares watches ([`crate::shared`]), all
//! streamed by one task: a kind taking its shared watch's changes is a little state
//! (its [`KindWatch`], its subscription and its [`View`]) that this task hands each
//! change to, not a task of its own. At 500 accounts that was 7,500 tasks, each as
//! large as the largest thing a kind ever awaits (a list), for kinds that mostly wait.
//!
//! What a kind does rarely and at length — resuming or listing at the start, relisting
//! after its watch expired or it fell behind — runs beside the others (as its own
//! future, boxed) and hands the kind back when it is current again; a kind that cannot
//! be shared (or stops being) goes on alone in a task of its own, as an account that
//! shares nothing does. Each kind is handed exactly what [`KindWatch`] would have
//! handed it in a task of its own, in the same order, and its events are batched the
//! same way: a kind's waiting events go out once it has nothing more at hand.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::Poll;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{KindCtx, KindWatch, Start};
use crate::kinds::WatchedKind;
use crate::metrics::RelistCause;
use crate::objects;
use crate::outbound::Closed;
use crate::shared::view::View;
use crate::shared::{Item, Shared, Subscription};

/// Changes of one kind handled in a row before the other kinds get their turn.
const TURN: usize = 64;

/// A kind current on its shared watch.
struct Streaming {
    watch: KindWatch,
    sub: Subscription,
    view: View,
}

/// Where a kind stands after what it did at length.
enum Outcome {
    /// Current on its shared watch: its changes are handed to it here.
    Streaming(Box<Streaming>),
    /// Not shared (any more): it goes on alone from there.
    Alone(Box<KindWatch>, Result<Vec<String>, RelistCause>),
}

type Work = BoxFuture<'static, (usize, Result<Outcome, Closed>)>;

/// Streams `kinds` of one account (each from its [`Start`]) through the watches its
/// identity shares (`ctx.shared`), until the session ends.
pub async fn run(
    ctx: Arc<KindCtx>,
    shared: Shared,
    kinds: Vec<(WatchedKind, Start, Arc<AtomicBool>)>,
) -> Result<(), Closed> {
    let span = tracing::info_span!("kinds", account = %ctx.account);
    drive(ctx, shared, kinds).instrument(span).await
}

async fn drive(
    ctx: Arc<KindCtx>,
    shared: Shared,
    kinds: Vec<(WatchedKind, Start, Arc<AtomicBool>)>,
) -> Result<(), Closed> {
    let mut streaming: Vec<Option<Box<Streaming>>> = Vec::with_capacity(kinds.len());
    let mut working: FuturesUnordered<Work> = FuturesUnordered::new();
    let mut alone = JoinSet::new();
    for (i, (kind, start, synced)) in kinds.into_iter().enumerate() {
        streaming.push(None);
        let mut watch = KindWatch::new(ctx.clone(), kind, synced);
        let shared = shared.clone();
        // Every kind waits in here for its sync slot at the start: small, with what it
        // does at length (resuming, listing) boxed.
        working.push(work(i, kind_span(&watch), async move {
            let start = Box::pin(watch.first(start)).await?;
            Ok(match watch.join(&shared, &start).await? {
                Some((sub, view)) => Outcome::Streaming(Box::new(Streaming { watch, sub, view })),
                None => Outcome::Alone(Box::new(watch), start),
            })
        }));
    }
    // Where the next look for changes starts, so that every kind gets its turn.
    let mut next = 0usize;
    loop {
        let event = poll_fn(|cx| {
            let n = streaming.len();
            for k in 0..n {
                let i = (next + k) % n;
                if let Some(kind) = streaming[i].as_mut()
                    && let Poll::Ready(item) = kind.sub.items.poll_recv(cx)
                {
                    next = i + 1;
                    return Poll::Ready(Event::Item(i, item));
                }
            }
            if let Poll::Ready(Some((i, done))) = working.poll_next_unpin(cx) {
                return Poll::Ready(Event::Done(i, done));
            }
            if let Poll::Ready(Some(done)) = alone.poll_join_next(cx) {
                return Poll::Ready(Event::AloneEnded(done));
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Item(i, item) => {
                let Some(mut kind) = streaming[i].take() else {
                    continue;
                };
                match kind.take(item).await? {
                    Next::Again => streaming[i] = Some(kind),
                    Next::Relist(cause) => {
                        let Streaming { mut watch, sub, .. } = *kind;
                        working.push(work(i, kind_span(&watch), async move {
                            let view = watch.relist_shared(cause).await?;
                            Ok(Outcome::Streaming(Box::new(Streaming { watch, sub, view })))
                        }));
                    }
                    Next::Rejoin => {
                        let Streaming { mut watch, sub, .. } = *kind;
                        let shared = shared.clone();
                        working.push(work(i, kind_span(&watch), async move {
                            let Some(sub) = watch.rejoin(&shared, sub).await else {
                                return Ok(Outcome::Alone(
                                    Box::new(watch),
                                    Err(RelistCause::FellBehind),
                                ));
                            };
                            let view = watch.relist_shared(RelistCause::FellBehind).await?;
                            Ok(Outcome::Streaming(Box::new(Streaming { watch, sub, view })))
                        }));
                    }
                    Next::Alone(start) => go_alone(&mut alone, Box::new(kind.watch), start),
                }
            }
            Event::Done(i, done) => match done? {
                Outcome::Streaming(kind) => streaming[i] = Some(kind),
                Outcome::Alone(watch, start) => go_alone(&mut alone, watch, start),
            },
            Event::AloneEnded(done) => {
                if let Ok(Err(Closed)) = done {
                    return Err(Closed);
                }
            }
        }
    }
}

enum Event {
    Item(usize, Option<Arc<Item>>),
    Done(usize, Result<Outcome, Closed>),
    AloneEnded(Result<Result<(), Closed>, tokio::task::JoinError>),
}

/// What a streaming kind does after the changes it was handed.
enum Next {
    /// Waits for more.
    Again,
    /// Relists, on its shared watch.
    Relist(RelistCause),
    /// Fell behind: joins again and relists.
    Rejoin,
    /// Goes on alone from there.
    Alone(Result<Vec<String>, RelistCause>),
}

/// What kind `i` does at length, beside the other kinds, in its `span`;
/// boxed, so that only kinds doing it hold its state.
fn work(
    i: usize,
    span: tracing::Span,
    f: impl Future<Output = Result<Outcome, Closed>> + Send + 'static,
) -> Work {
    Box::pin(async move { (i, f.await) }.instrument(span))
}

/// The span of kind `watch`, as a kind's own task has it.
fn kind_span(watch: &KindWatch) -> tracing::Span {
    tracing::info_span!("watch", account = %watch.ctx.account, kind = %watch.kind.resource.kind)
}

/// Kind `watch` goes on alone, from `start`, in a task of its own.
fn go_alone(
    alone: &mut JoinSet<Result<(), Closed>>,
    watch: Box<KindWatch>,
    start: Result<Vec<String>, RelistCause>,
) {
    let span = kind_span(&watch);
    alone.spawn((*watch).alone(start).instrument(span));
}

impl Streaming {
    /// Hands the kind `item` (`None`: it fell behind) and whatever else it has at hand,
    /// up to [`TURN`] changes, as its own task would have: what is due goes out, and
    /// once nothing more is at hand, whatever waits.
    async fn take(&mut self, item: Option<Arc<Item>>) -> Result<Next, Closed> {
        let mut item = item;
        let mut turn = 0;
        loop {
            let Some(it) = item else {
                tracing::warn!(kind = %self.watch.kind.resource.kind, "fell behind the shared watch; relisting");
                return Ok(Next::Rejoin);
            };
            if let Some(next) = self.handle(&it).await? {
                return Ok(next);
            }
            self.watch.sender.flush_if_due().await?;
            turn += 1;
            if turn >= TURN && !self.sub.items.is_empty() {
                // More at hand: the other kinds' turn first; this one comes back to it.
                return Ok(Next::Again);
            }
            item = match self.sub.items.try_recv() {
                Ok(it) => Some(it),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    self.watch.sender.flush().await?;
                    return Ok(Next::Again);
                }
            };
        }
    }

    /// One item of the shared watch; what the kind does next when it is not waiting
    /// for more.
    async fn handle(&mut self, item: &Item) -> Result<Option<Next>, Closed> {
        let watch = &mut self.watch;
        match item {
            Item::Change(ty, obj, version) => {
                if let Some(ty) =
                    self.view
                        .admit(&watch.ctx.config, &watch.kind, *ty, &obj.metadata, *version)
                    && let Some(ev) =
                        objects::encode_written(&watch.kind, &watch.gvk, &watch.ctx.config, ty, obj)
                {
                    watch.told_hub.clone_from(&ev.resource_version);
                    watch.sender.event(ev).await?;
                }
            }
            Item::Bookmark(version) => {
                if self.view.bookmark(*version) {
                    watch.progress(version.to_string()).await?;
                }
            }
            Item::Expired(version) => {
                if !self.view.covers(*version) {
                    tracing::info!(kind = %watch.kind.resource.kind, "watch expired (410 Gone); relisting");
                    return Ok(Some(Next::Relist(RelistCause::Expired)));
                }
            }
            Item::Unshared => {
                tracing::info!(kind = %watch.kind.resource.kind, "the kind is no longer shared; watching it alone");
                return Ok(Some(Next::Alone(Ok(self
                    .view
                    .versions(&watch.namespaces())))));
            }
        }
        Ok(None)
    }
}

impl KindWatch {
    /// Joins the kind's shared watch from `start` (resume or relist), and lists when
    /// `start` says so; `None` when the kind cannot be shared (or `start` cannot resume
    /// it): it goes on alone, from `start`.
    async fn join(
        &mut self,
        shared: &Shared,
        start: &Result<Vec<String>, RelistCause>,
    ) -> Result<Option<(Subscription, View)>, Closed> {
        let from = match start {
            Ok(versions) => match versions.as_slice() {
                [v] => match v.parse::<u64>() {
                    Ok(v) => Some(v),
                    Err(_) => return Ok(None),
                },
                _ => return Ok(None),
            },
            Err(_) => None,
        };
        let Some(sub) = shared.join(&self.kind, from).await else {
            return Ok(None);
        };
        let view = match start {
            Ok(_) => View::resumed(from.unwrap_or_default(), &self.ctx.config),
            Err(cause) => self.relist_shared(*cause).await?,
        };
        Ok(Some((sub, view)))
    }
}
