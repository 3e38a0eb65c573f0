//! Watches served from the cache: the changes of a kind after a resourceVersion, from
//! the kind's window ([`crate::core::window`]), written as the API server writes a watch
//! (one JSON event per line, or length-prefixed protobuf `WatchEvent`s when the client
//! prefers them and the kind has them, [`super::protobuf`]), with bookmarks when asked.
//!
//! - Without a resourceVersion (or with "0"), or with `sendInitialEvents=true`, the
//!   watch starts with an ADDED event per object, then follows the changes, as the API
//!   server's does; when it allows bookmarks, a BOOKMARK marked
//!   `k8s.io/initial-events-end: "true"` at the objects' resourceVersion comes between
//!   (the end of a streaming list, which client-go's informers wait for).
//! - A selector turns a change that makes an object match into ADDED and one that makes
//!   it stop matching into DELETED (with its previous state at the change's version).
//! - The watch ends (the client watches again from its last version) when the hub
//!   relisted the kind (continuity lost), the account left the cache, the client fell
//!   so far behind that its next change left the window, or its timeout passed.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::Response;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use super::list::Item;
use super::protobuf;
use super::read::{Read, selected, selected_object};
use super::table::{Include, Print};
use crate::core::cache::KindKey;
use crate::core::window::{Change, ChangeType, Follower, Mark, TooOld};

pub use crate::core::slots::{Slot, Slots};

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);
/// A watch without a timeout ends after this (the API server picks 30–60 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Chunks written ahead of the client.
const QUEUE: usize = 64;
/// Events are written in chunks of about this many bytes: a streaming list of
/// thousands of objects goes out in few writes (and TLS records), not one per object.
const CHUNK: usize = 64 << 10;

/// The watch's side of its body: events gathered into chunks. A chunk goes out when
/// it is full and whenever the watch has nothing more to write at once, so a change
/// waits for no other.
struct Out {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: BytesMut,
}

/// The client went away.
struct Gone;

impl Out {
    fn new(tx: mpsc::Sender<Result<Bytes, std::io::Error>>) -> Out {
        Out {
            tx,
            buf: BytesMut::new(),
        }
    }

    /// Adds an event, writing the chunk when it is full.
    async fn push(&mut self, event: &[u8]) -> Result<(), Gone> {
        self.buf.extend_from_slice(event);
        if self.buf.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes what is gathered.
    async fn flush(&mut self) -> Result<(), Gone> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.tx.send(Ok(chunk)).await.map_err(|_| Gone)
    }
}

/// Where a watch starts.
#[derive(Debug)]
pub enum Start {
    /// With every current object (ADDED), at the kind's current version.
    Objects(Vec<Item>),
    /// After this resourceVersion.
    After(u64),
}

/// A watch from the cache.
#[derive(Debug)]
pub struct Watch {
    /// The account.
    pub account: String,
    /// The kind.
    pub kind: KindKey,
    /// `group/version` of the kind.
    pub api_version: String,
    /// The request.
    pub read: Read,
    /// What writes its Tables, when it asks for them.
    pub print: Option<Print>,
    /// Where it starts.
    pub start: Start,
    /// The kind's epoch and version when the watch was planned.
    pub mark: Mark,
    /// The kind's changes, read without the cache's lock, and a wake-up on each.
    pub follower: Follower,
}

fn line(kind: &str, object: &str) -> Bytes {
    let mut out = String::with_capacity(object.len() + 32);
    out.push_str("{\"type\":\"");
    out.push_str(kind);
    out.push_str("\",\"object\":");
    out.push_str(object);
    out.push_str("}\n");
    Bytes::from(out)
}

/// The annotation of the bookmark that ends a watch's initial events.
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

fn bookmark(kind: &str, api_version: &str, rv: u64, initial_events_end: bool) -> Bytes {
    line(
        "BOOKMARK",
        &bookmark_object(kind, api_version, rv, initial_events_end).to_string(),
    )
}

/// The object of a BOOKMARK: only its kind and version.
fn bookmark_object(kind: &str, api_version: &str, rv: u64, initial_events_end: bool) -> Value {
    let mut metadata = serde_json::json!({ "resourceVersion": rv.to_string() });
    if initial_events_end {
        metadata["annotations"] = serde_json::json!({ INITIAL_EVENTS_END: "true" });
    }
    serde_json::json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": metadata,
    })
}

/// `body` with its `metadata.resourceVersion` set to `rv`.
fn at_version(body: &RawValue, rv: u64) -> String {
    match serde_json::from_str::<Value>(body.get()) {
        Ok(mut v) => {
            if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
            }
            v.to_string()
        }
        Err(_) => body.get().to_owned(),
    }
}

/// How a watch writes its events: the objects themselves (JSON lines, or Kubernetes
/// protobuf frames when the client prefers it and the kind has it), or (`kubectl get
/// -w`) each as a Table of one row, as kube-apiserver writes them: the column
/// definitions in the first event only, the object's resourceVersion as the Table's; a
/// BOOKMARK as the row of an empty object at its version.
pub struct Encoder {
    table: Option<(Print, Include)>,
    protobuf: Option<protobuf::Kind>,
    headers_sent: bool,
}

impl Encoder {
    /// The encoder of a watch asked as `read`, whose Tables (if it asks for them)
    /// `print` writes, in protobuf of `protobuf` when given.
    pub fn new(read: &Read, print: Option<Print>, protobuf: Option<protobuf::Kind>) -> Encoder {
        Encoder {
            table: read.table.and_then(|t| print.map(|p| (p, t.include))),
            protobuf,
            headers_sent: false,
        }
    }

    /// One event; `Err` when the watch is protobuf and the object has none.
    pub fn line(&mut self, kind: &str, object: &str) -> Result<Bytes, protobuf::Untranscodable> {
        if let Some(pb) = &self.protobuf {
            return protobuf::watch_event(pb, kind, object).map(Bytes::from);
        }
        let Some((print, include)) = &self.table else {
            return Ok(line(kind, object));
        };
        let table = print.one(object, *include);
        Ok(self.table_line(kind, table))
    }

    /// A BOOKMARK at `rv` of a watch of `kind`.
    fn bookmark(
        &mut self,
        kind: &str,
        api_version: &str,
        rv: u64,
        initial_events_end: bool,
    ) -> Result<Bytes, protobuf::Untranscodable> {
        if let Some(pb) = &self.protobuf {
            let json = bookmark_object(kind, api_version, rv, initial_events_end);
            return protobuf::watch_event(pb, "BOOKMARK", &json.to_string()).map(Bytes::from);
        }
        let Some((print, include)) = &self.table else {
            return Ok(bookmark(kind, api_version, rv, initial_events_end));
        };
        let row = print.bookmark_row(rv, initial_events_end, *include);
        let table = print.table(
            serde_json::json!({ "resourceVersion": rv.to_string() }),
            vec![row],
        );
        Ok(self.table_line("BOOKMARK", table))
    }

    /// The event of a Table, with the column definitions in the watch's first only.
    fn table_line(&mut self, event: &str, mut table: Value) -> Bytes {
        if std::mem::replace(&mut self.headers_sent, true) {
            table["columnDefinitions"] = Value::Null;
        }
        line(event, &table.to_string())
    }
}

/// The event a watch with `read`'s namespace and selectors sees for a change, if any.
pub fn event(read: &Read, kind: &KindKey, c: &Change) -> Option<Bytes> {
    change_event(read, kind, c).map(|(t, o)| line(t, &o))
}

/// The type and object of the event a watch with `read`'s namespace and selectors sees
/// for a change, if any.
fn change_event<'a>(
    read: &Read,
    kind: &KindKey,
    c: &'a Change,
) -> Option<(&'static str, std::borrow::Cow<'a, str>)> {
    if read
        .namespace
        .as_ref()
        .is_some_and(|ns| ns != c.namespace())
    {
        return None;
    }
    // The labels are parsed once per change, for every watch that selects by them.
    let labels = |before: bool| {
        let (now, prev) = c.labels();
        if before { prev.unwrap_or(now) } else { now }
    };
    let passes = |body: &RawValue, before: bool| {
        selected(read, kind, c.namespace(), c.name(), || labels(before), body)
    };
    let now = c.change != ChangeType::Deleted && passes(&c.body, false);
    let before = match c.change {
        ChangeType::Deleted => passes(c.prev.as_deref().unwrap_or(&c.body), true),
        _ => c.prev.as_deref().is_some_and(|p| passes(p, true)),
    };
    let body = || std::borrow::Cow::Borrowed(c.body.get());
    match (c.change, before, now) {
        (ChangeType::Deleted, true, _) => Some(("DELETED", body())),
        (ChangeType::Deleted, false, _) => None,
        (_, false, true) => Some(("ADDED", body())),
        (_, true, true) => Some(("MODIFIED", body())),
        (_, true, false) => {
            let prev = c.prev.as_deref().unwrap_or(&c.body);
            Some(("DELETED", std::borrow::Cow::Owned(at_version(prev, c.rv))))
        }
        (_, false, false) => None,
    }
}

/// What the watch's next look at the window found.
enum Next {
    Changes(Vec<Arc<Change>>, Mark),
    /// The kind was relisted, or dropped with its account: the watch ends.
    Ended(&'static str),
    /// The client fell behind the window.
    Behind,
}

/// The watch's next look at the kind's changes: without the cache's lock, so a
/// change costs the cache's writers nothing per watch.
fn look(w: &mut Watch, cursor: u64) -> Next {
    let (mark, epoch, since) = w.follower.look(cursor);
    if epoch != w.mark.epoch || mark.epoch != w.mark.epoch {
        return Next::Ended("the hub relisted the kind");
    }
    match since {
        Ok(changes) => Next::Changes(changes, mark),
        // No change since the kind was (re)listed: a watch that started with the
        // objects of this epoch has nothing to catch up on. (A watch from a version
        // was served only when the window vouched for it, and the window vouches for
        // some version from its first change until the epoch ends.)
        Err(TooOld { start: None }) => Next::Changes(Vec::new(), mark),
        Err(_) => Next::Behind,
    }
}

/// Answers the watch: a streaming body fed by a task that follows the window; `slot`
/// is held until the watch ends.
pub fn serve(mut w: Watch, slot: Slot) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(QUEUE);
    let pb = w
        .read
        .protobuf
        .then(|| protobuf::schema().kind_of(&w.api_version, &w.kind.kind))
        .flatten();
    let media = if pb.is_some() {
        protobuf::WATCH_MEDIA_TYPE
    } else {
        "application/json"
    };
    tokio::spawn(async move {
        // Held until the watch ends.
        let _slot = slot;
        let mut encoder = Encoder::new(&w.read, w.print.clone(), pb.clone());
        match follow(&mut w, &mut encoder, Out::new(tx)).await {
            // The client went away, or the watch ended.
            Ok(()) | Err(Ended::Gone) => {}
            // A content type cannot change midway: the watch ends, and the kind is
            // answered in JSON from then on (the client watches again from its last
            // version, in JSON).
            Err(Ended::Untranscodable(err)) => {
                if let Some(pb) = &pb {
                    protobuf::schema().refuse(pb, &err);
                }
                debug!(account = %w.account, kind = %w.kind.kind, error = %err, "a protobuf watch ends: an object without protobuf");
            }
        }
    });
    let mut response = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(media),
    );
    response
}

/// Why a watch ended early.
enum Ended {
    /// The client went away.
    Gone,
    /// An object has no protobuf.
    Untranscodable(protobuf::Untranscodable),
}

impl From<Gone> for Ended {
    fn from(_: Gone) -> Ended {
        Ended::Gone
    }
}

impl From<protobuf::Untranscodable> for Ended {
    fn from(err: protobuf::Untranscodable) -> Ended {
        Ended::Untranscodable(err)
    }
}

/// Writes the watch's events until it ends.
async fn follow(w: &mut Watch, encoder: &mut Encoder, mut out: Out) -> Result<(), Ended> {
    let timeout = w
        .read
        .watch
        .as_ref()
        .and_then(|a| a.timeout)
        .unwrap_or(DEFAULT_TIMEOUT);
    let bookmarks = w.read.watch.as_ref().is_some_and(|a| a.bookmarks);
    let end = tokio::time::sleep(timeout);
    tokio::pin!(end);
    let mut tick = tokio::time::interval(BOOKMARK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let mut cursor = match std::mem::replace(&mut w.start, Start::After(0)) {
        Start::Objects(items) => {
            for item in items {
                if selected_object(&w.read, &w.kind, &item.body) {
                    out.push(&encoder.line("ADDED", item.body.get())?).await?;
                }
            }
            if bookmarks {
                out.push(&encoder.bookmark(&w.kind.kind, &w.api_version, w.mark.rv, true)?)
                    .await?;
            }
            out.flush().await?;
            w.mark.rv
        }
        Start::After(rv) => rv,
    };
    loop {
        match look(w, cursor) {
            Next::Ended(why) => {
                debug!(account = %w.account, kind = %w.kind.kind, why, "watch from the cache ends");
                return Ok(());
            }
            Next::Behind => {
                debug!(account = %w.account, kind = %w.kind.kind, "a watch fell behind the window; ending it");
                return Ok(());
            }
            Next::Changes(changes, mark) => {
                for c in &changes {
                    if let Some((t, o)) = change_event(&w.read, &w.kind, c) {
                        // The change as it is, written once for every watch that
                        // sends it so.
                        let shared = encoder.table.is_none()
                            && encoder.protobuf.is_none()
                            && t == c.change.as_str()
                            && matches!(o, std::borrow::Cow::Borrowed(_));
                        if shared {
                            out.push(&c.encoded(|c| line(c.change.as_str(), c.body.get())))
                                .await?;
                        } else {
                            out.push(&encoder.line(t, &o)?).await?;
                        }
                    }
                    cursor = c.rv;
                }
                out.flush().await?;
                cursor = cursor.max(mark.rv);
            }
        }
        tokio::select! {
            changed = w.follower.changed() => {
                if changed.is_err() {
                    debug!(account = %w.account, kind = %w.kind.kind, "watch from the cache ends: the account or kind left the cache");
                    return Ok(());
                }
            }
            _ = tick.tick(), if bookmarks => {
                out.push(&encoder.bookmark(&w.kind.kind, &w.api_version, cursor, false)?)
                    .await?;
                out.flush().await?;
            }
            () = &mut end => return Ok(()),
            () = out.tx.closed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeapi::path::ResourcePath;
    use crate::kubeapi::read::plan;

    fn body(name: &str, app: &str, rv: u64) -> Arc<RawValue> {
        Arc::from(
            RawValue::from_string(format!(
                r#"{{"kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"a","resourceVersion":"{rv}","labels":{{"app":"{app}"}}}}}}"#
            ))
            .expect("json"),
        )
    }

    fn change(t: ChangeType, prev: Option<(&str, u64)>, now: (&str, u64)) -> Change {
        Change::new(
            now.1,
            t,
            crate::core::cache::NsName::new("a", "cm"),
            body("cm", now.0, now.1),
            prev.map(|(app, rv)| body("cm", app, rv)),
        )
    }

    fn read(selector: &str) -> Read {
        let path = ResourcePath {
            group: String::new(),
            version: "v1".into(),
            namespace: Some("a".into()),
            resource: "configmaps".into(),
            name: None,
            subresource: None,
        };
        let q = vec![
            ("watch".to_owned(), "true".to_owned()),
            ("labelSelector".to_owned(), selector.to_owned()),
        ];
        plan(&http::Method::GET, &path, &q, &http::HeaderMap::new()).expect("planned")
    }

    fn seen(read: &Read, c: &Change) -> Option<(String, String)> {
        let kind = KindKey {
            group: String::new(),
            kind: "ConfigMap".into(),
        };
        let ev: Value = serde_json::from_slice(&event(read, &kind, c)?).expect("json");
        Some((
            ev["type"].as_str().expect("type").to_owned(),
            ev["object"]["metadata"]["resourceVersion"]
                .as_str()
                .expect("rv")
                .to_owned(),
        ))
    }

    #[test]
    fn selectors_turn_changes_into_the_events_the_api_server_sends() {
        let web = read("app=web");
        let ev = |t, prev, now| seen(&web, &change(t, prev, now));
        let s = |t: &str, rv: &str| Some((t.to_owned(), rv.to_owned()));
        assert_eq!(ev(ChangeType::Added, None, ("web", 5)), s("ADDED", "5"));
        assert_eq!(ev(ChangeType::Added, None, ("api", 5)), None);
        assert_eq!(
            ev(ChangeType::Modified, Some(("web", 5)), ("web", 6)),
            s("MODIFIED", "6")
        );
        // Starts matching: ADDED. Stops matching: DELETED, previous state at the new version.
        assert_eq!(
            ev(ChangeType::Modified, Some(("api", 5)), ("web", 6)),
            s("ADDED", "6")
        );
        assert_eq!(
            ev(ChangeType::Modified, Some(("web", 6)), ("api", 7)),
            s("DELETED", "7")
        );
        assert_eq!(ev(ChangeType::Modified, Some(("api", 6)), ("api", 7)), None);
        assert_eq!(
            ev(ChangeType::Deleted, Some(("web", 7)), ("web", 8)),
            s("DELETED", "8")
        );
        assert_eq!(ev(ChangeType::Deleted, Some(("api", 7)), ("api", 8)), None);
        // No selector: every change as it is.
        let all = read("");
        assert_eq!(
            seen(
                &all,
                &change(ChangeType::Modified, Some(("api", 6)), ("api", 7))
            ),
            s("MODIFIED", "7")
        );
    }

    #[test]
    fn a_change_is_parsed_for_labels_once_whatever_the_number_of_selecting_watches() {
        let c = change(ChangeType::Modified, Some(("api", 5)), ("web", 6));
        // A watch without a selector never parses the object.
        let _ = seen(&read(""), &c);
        assert!(c.labels.get().is_none());
        let _ = seen(&read("app=web"), &c);
        let (now, before) = c
            .labels
            .get()
            .expect("parsed for the first selecting watch");
        assert_eq!(now.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            before
                .as_ref()
                .and_then(|b| b.get("app"))
                .map(String::as_str),
            Some("api")
        );
        // Later watches read what the first parsed: the same allocation.
        let first: *const _ = c.labels.get().expect("parsed");
        for selector in ["app=api", "app!=web", "app"] {
            let _ = seen(&read(selector), &c);
        }
        assert!(std::ptr::eq(first, c.labels.get().expect("parsed")));
    }

    #[test]
    fn bookmarks_look_like_the_api_servers() {
        let b: Value =
            serde_json::from_slice(&bookmark("ConfigMap", "v1", 9, false)).expect("json");
        assert_eq!(b["type"], "BOOKMARK");
        assert_eq!(b["object"]["metadata"]["resourceVersion"], "9");
        assert_eq!(b["object"]["apiVersion"], "v1");
        assert!(b["object"]["metadata"].get("annotations").is_none());
        let end: Value =
            serde_json::from_slice(&bookmark("ConfigMap", "v1", 9, true)).expect("json");
        assert_eq!(
            end["object"]["metadata"]["annotations"][INITIAL_EVENTS_END],
            "true"
        );
    }
}
