//! What the hub knows of one kind beyond its objects, for serving it as a Kubernetes
//! API: its resource name, whether it can be answered from the cache at all, the
//! resourceVersion the cache is current to, and a window of its recent changes, so that
//! a watch from a resourceVersion inside the window gets exactly the changes after it.
//!
//! The window holds the kind's changes in the order they were applied, each with the
//! object's previous state (a watch with a selector turns a change that makes an
//! object stop matching into a deletion, as the API server does). Older changes fall
//! out (count and bytes are bounded).
//!
//! A watch from resourceVersion X can be served from the window only when the hub can
//! vouch that every change after X is in it. A full relist of the kind breaks that:
//! the agent's list folds whatever happened while the hub was not following (objects
//! deleted meanwhile simply are not listed) into one state, so a client that followed
//! the kind before the relist could miss those deletions. That state is the cluster's
//! at the list's own resourceVersion (the agent's SyncEnd says it, and its watch goes
//! on from there), so after a relist the window vouches for that version and later
//! ones only; when the list's version is not known, for none until the first change
//! after it arrives, and from then on for versions at or after that change. The
//! epoch changes, which ends every watch opened before. A watch the window does not
//! vouch for goes to the cluster, which knows its own history (and answers `410 Gone`
//! when it does not either).
//!
//! Pure bookkeeping apart from one `tokio::sync::watch` channel that wakes the watches
//! (and the reads waiting for their own writes) when something changes.
//!
//! A change costs per change, not per watch: the kept changes sit behind a lock of
//! their own, which watches read through a [`Follower`] without the cache's lock (so
//! thousands of watches waking on a change never hold up the agents' streams), and
//! each change's watch event is written once, by the first watch that sends it, and
//! shared by every other ([`Change::encoded`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::watch;

use crate::core::cache::NsName;

/// Changes kept per kind at most.
pub const MAX_CHANGES: usize = 1024;
/// Bytes of object bodies kept per kind at most.
pub const MAX_BYTES: usize = 8 << 20;

/// What happened to an object, as a watch says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    /// It appeared.
    Added,
    /// It changed.
    Modified,
    /// It was deleted.
    Deleted,
}

impl ChangeType {
    /// The watch event type.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One change in the window.
#[derive(Debug)]
pub struct Change {
    /// Its resourceVersion.
    pub rv: u64,
    /// What happened.
    pub change: ChangeType,
    /// Where the object is: its namespace ("" for cluster-scoped kinds) and name.
    pub at: NsName,
    /// The object after the change (the last state for a deletion).
    pub body: Arc<RawValue>,
    /// The object before the change, when there was one.
    pub prev: Option<Arc<RawValue>>,
    /// The change as a watch event, once one watch wrote it.
    pub encoded: OnceLock<Bytes>,
    /// The labels of `body` and of `prev`, once one watch with a label selector read
    /// them: a change read by thousands of selecting watches is parsed once.
    pub labels: OnceLock<(Labels, Option<Labels>)>,
}

/// An object's `metadata.labels`.
pub type Labels = BTreeMap<String, String>;

/// The labels of an object's JSON (none when it has none or is not an object).
pub fn labels_of(body: &RawValue) -> Labels {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(default)]
        labels: Option<Labels>,
    }
    #[derive(serde::Deserialize)]
    struct WithMeta {
        #[serde(default)]
        metadata: Option<Meta>,
    }
    serde_json::from_str::<WithMeta>(body.get())
        .ok()
        .and_then(|o| o.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default()
}

impl Change {
    /// A change of `namespace`/`name` at `rv`, nothing of it encoded or parsed yet.
    pub fn new(
        rv: u64,
        change: ChangeType,
        at: NsName,
        body: Arc<RawValue>,
        prev: Option<Arc<RawValue>>,
    ) -> Change {
        Change {
            rv,
            change,
            at,
            body,
            prev,
            encoded: OnceLock::new(),
            labels: OnceLock::new(),
        }
    }

    /// The object's namespace ("" for cluster-scoped kinds).
    pub fn namespace(&self) -> &str {
        self.at.namespace()
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.at.name()
    }

    /// The labels of the object after the change and before it (when there was a
    /// before), parsed for the first watch that asks.
    pub fn labels(&self) -> (&Labels, Option<&Labels>) {
        let (now, before) = self
            .labels
            .get_or_init(|| (labels_of(&self.body), self.prev.as_deref().map(labels_of)));
        (now, before.as_ref())
    }

    /// The change as a watch event: written by `encode` for the first watch that
    /// asks, the same bytes for every later one.
    pub fn encoded(&self, encode: impl FnOnce(&Change) -> Bytes) -> Bytes {
        self.encoded.get_or_init(|| encode(self)).clone()
    }
}

/// Where the kind stands, as watches and waiting reads see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    /// Changes with every full relist; a watch opened in an older epoch ends.
    pub epoch: u64,
    /// The resourceVersion the cache of the kind is current to.
    pub rv: u64,
}

/// A watch asked for changes the window cannot vouch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooOld {
    /// The oldest resourceVersion a watch can start from now, if any.
    pub start: Option<u64>,
}

/// The Kubernetes API's view of one kind.
#[derive(Debug)]
pub struct KindWindow {
    /// The resource name in API paths (plural); empty until the agent says it.
    pub resource: String,
    /// Whether objects of the kind live in namespaces.
    pub namespaced: bool,
    /// The current registration of the account streams this kind (it said so since
    /// it registered).
    pub live: bool,
    /// A resourceVersion that is not a number was seen: the kind is never answered
    /// from the cache (versions cannot be compared).
    pub opaque: bool,
    kept: Arc<Mutex<Kept>>,
    mark: watch::Sender<Mark>,
}

/// The changes a window keeps, shared with the watches that follow it.
#[derive(Debug, Default)]
struct Kept {
    /// The epoch these changes belong to (as [`Mark::epoch`]).
    epoch: u64,
    /// Watches from this resourceVersion on are served; `None` right after a relist.
    start: Option<u64>,
    changes: VecDeque<Arc<Change>>,
    bytes: usize,
}

impl Kept {
    fn since(&self, rv: u64) -> Result<Vec<Arc<Change>>, TooOld> {
        if self.start.is_none_or(|start| rv < start) {
            return Err(TooOld { start: self.start });
        }
        // Changes are in resourceVersion order: skip the old ones from the back.
        let newer = self.changes.iter().rev().take_while(|c| c.rv > rv).count();
        Ok(self
            .changes
            .iter()
            .skip(self.changes.len() - newer)
            .cloned()
            .collect())
    }
}

fn kept(kept: &Mutex<Kept>) -> MutexGuard<'_, Kept> {
    // Changed in whole steps; a panic elsewhere leaves it usable.
    kept.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for KindWindow {
    fn default() -> Self {
        KindWindow {
            resource: String::new(),
            namespaced: false,
            live: false,
            opaque: false,
            kept: Arc::default(),
            mark: watch::Sender::new(Mark::default()),
        }
    }
}

/// A watch's side of a window: the changes without the cache's lock, and a wake-up
/// on every change of the kind. It ends when the kind (or its account) leaves the
/// cache.
#[derive(Debug)]
pub struct Follower {
    kept: Arc<Mutex<Kept>>,
    mark: watch::Receiver<Mark>,
}

/// The kind left the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

impl Follower {
    /// Where the kind stands now (marked as seen: [`Follower::changed`] waits for the
    /// next change), the epoch of the kept changes and the changes after `rv`.
    pub fn look(&mut self, rv: u64) -> (Mark, u64, Result<Vec<Arc<Change>>, TooOld>) {
        // The mark first: a change is kept before the mark moves past it, so every
        // change up to the mark is in what is read next.
        let mark = *self.mark.borrow_and_update();
        let kept = kept(&self.kept);
        (mark, kept.epoch, kept.since(rv))
    }

    /// Waits for the kind's next change.
    pub async fn changed(&mut self) -> Result<(), Gone> {
        self.mark.changed().await.map_err(|_| Gone)
    }
}

/// A resourceVersion as a number; `None` for an empty or opaque one.
pub fn parse_rv(rv: &str) -> Option<u64> {
    rv.parse().ok()
}

impl KindWindow {
    /// Where the kind stands now.
    pub fn mark(&self) -> Mark {
        *self.mark.borrow()
    }

    /// A receiver that wakes on every change of [`KindWindow::mark`]; it ends when
    /// the kind (or its account) is dropped from the cache.
    pub fn subscribe(&self) -> watch::Receiver<Mark> {
        self.mark.subscribe()
    }

    /// What a watch follows the kind with.
    pub fn follow(&self) -> Follower {
        Follower {
            kept: Arc::clone(&self.kept),
            mark: self.mark.subscribe(),
        }
    }

    /// The oldest resourceVersion a watch can start from, if any.
    pub fn start(&self) -> Option<u64> {
        kept(&self.kept).start
    }

    fn bump(&mut self, rv: u64, new_epoch: bool) {
        self.mark.send_if_modified(|m| {
            let next = Mark {
                epoch: m.epoch + u64::from(new_epoch),
                rv: m.rv.max(rv),
            };
            let changed = next != *m;
            *m = next;
            changed
        });
    }

    /// Notes a resourceVersion the kind is current to without a change to keep (a
    /// listed object during a relist, a SyncEnd, a bookmark). An opaque one makes
    /// the kind unservable.
    pub fn advance(&mut self, rv: &str) {
        if rv.is_empty() {
            return;
        }
        match parse_rv(rv) {
            Some(n) => self.bump(n, false),
            None => self.opaque = true,
        }
    }

    /// Records a change applied to the cache outside a full relist.
    pub fn record(&mut self, change: Change) {
        let rv = change.rv;
        {
            let mut k = kept(&self.kept);
            k.bytes += change.body.get().len();
            // The first change after a relist: every later version is covered.
            k.start.get_or_insert(rv);
            k.changes.push_back(Arc::new(change));
            while k.changes.len() > MAX_CHANGES || (k.bytes > MAX_BYTES && k.changes.len() > 1) {
                if let Some(old) = k.changes.pop_front() {
                    k.bytes -= old.body.get().len();
                    k.start = k.start.map(|s| s.max(old.rv));
                }
            }
        }
        self.bump(rv, false);
    }

    /// A full relist ended, the list taken at `listed_at` (when known): continuity
    /// was lost, so the window starts over, vouching for the list's version and later
    /// ones (for nothing until the next change when the list's version is unknown or
    /// older than what the kind showed before), and watches opened before end.
    pub fn restart(&mut self, listed_at: Option<u64>) {
        let rv = self.mark().rv;
        {
            let mut k = kept(&self.kept);
            k.changes.clear();
            k.bytes = 0;
            k.start = listed_at.filter(|at| *at >= rv);
            k.epoch += 1;
        }
        self.bump(rv, true);
    }

    /// The changes after `rv` (oldest first), or how far back the window reaches.
    pub fn since(&self, rv: u64) -> Result<Vec<Arc<Change>>, TooOld> {
        kept(&self.kept).since(rv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(rv: u64, name: &str, size: usize) -> Change {
        let body = format!("{{\"x\":\"{}\"}}", "a".repeat(size));
        Change::new(
            rv,
            ChangeType::Modified,
            NsName::new("ns", name),
            Arc::from(RawValue::from_string(body).expect("json")),
            None,
        )
    }

    fn rvs(changes: &[Arc<Change>]) -> Vec<u64> {
        changes.iter().map(|c| c.rv).collect()
    }

    #[test]
    fn a_watch_gets_exactly_the_changes_after_its_version() {
        let mut w = KindWindow::default();
        w.advance("10");
        w.restart(None);
        assert_eq!(
            w.since(10).err(),
            Some(TooOld { start: None }),
            "right after a relist at an unknown version the window vouches for none"
        );
        for rv in [11, 12, 15] {
            w.record(change(rv, "a", 1));
        }
        assert_eq!(rvs(&w.since(11).expect("in the window")), [12, 15]);
        assert_eq!(rvs(&w.since(12).expect("in the window")), [15]);
        assert_eq!(rvs(&w.since(13).expect("in the window")), [15]);
        assert!(w.since(15).expect("current").is_empty());
        assert_eq!(
            w.since(10).err(),
            Some(TooOld { start: Some(11) }),
            "a version from before the first change after the relist may miss deletions"
        );
        assert_eq!(w.mark().rv, 15);
    }

    #[test]
    fn old_changes_fall_out_by_count_and_by_bytes() {
        let mut w = KindWindow::default();
        w.restart(None);
        for rv in 1..=(MAX_CHANGES as u64 + 5) {
            w.record(change(rv, "a", 1));
        }
        assert_eq!(w.start(), Some(5));
        assert!(w.since(4).is_err());
        assert_eq!(w.since(5).expect("in the window").len(), MAX_CHANGES);
        let mut w = KindWindow::default();
        w.restart(None);
        let big = MAX_BYTES / 3;
        for rv in 1..=4 {
            w.record(change(rv, "a", big));
        }
        assert_eq!(w.start(), Some(2), "the two oldest fell out");
        assert_eq!(rvs(&w.since(2).expect("in the window")), [3, 4]);
    }

    #[test]
    fn a_relist_starts_a_new_epoch_and_window() {
        let mut w = KindWindow::default();
        let rx = w.subscribe();
        w.restart(None);
        w.record(change(6, "a", 1));
        let before = w.mark();
        w.advance("20");
        w.restart(None);
        let after = *rx.borrow();
        assert_eq!(after.epoch, before.epoch + 1);
        assert_eq!(after.rv, 20);
        assert!(w.since(6).is_err(), "changes before the relist are gone");
        assert!(
            w.since(20).is_err(),
            "nothing is vouched for until the next change"
        );
        w.record(change(21, "b", 1));
        w.record(change(22, "c", 1));
        assert_eq!(rvs(&w.since(21).expect("covered")), [22]);
        assert!(
            w.since(20).is_err(),
            "20 may predate what the relist folded in"
        );
        // A relist whose own version is known vouches for it: the cache is the
        // cluster's state there, and every later change follows.
        w.advance("30");
        w.restart(Some(30));
        assert!(w.since(30).expect("the list's version").is_empty());
        assert!(w.since(29).is_err(), "older versions may miss deletions");
        w.record(change(31, "d", 1));
        assert_eq!(rvs(&w.since(30).expect("covered")), [31]);
        // A list older than what the kind showed before proves nothing.
        w.restart(Some(25));
        assert!(w.since(31).is_err());
    }

    #[tokio::test]
    async fn a_follower_reads_the_changes_and_ends_with_the_kind() {
        let mut w = KindWindow::default();
        w.restart(None);
        let mut follower = w.follow();
        w.record(change(1, "a", 1));
        follower.changed().await.expect("woken by the change");
        let (mark, epoch, since) = follower.look(0);
        assert_eq!((mark.rv, epoch), (1, w.mark().epoch));
        assert!(since.is_err(), "0 is before the window's start");
        w.record(change(2, "b", 1));
        let (_, _, since) = follower.look(1);
        assert_eq!(rvs(&since.expect("in the window")), [2]);
        // Each change's event is written once, whoever asks.
        let changes = w.since(1).expect("in the window");
        let mut written = 0;
        for _ in 0..3 {
            changes[0].encoded(|_| {
                written += 1;
                Bytes::from_static(b"event")
            });
        }
        assert_eq!(written, 1);
        drop(w);
        assert_eq!(follower.changed().await, Err(Gone));
    }

    #[test]
    fn versions_that_are_not_numbers_make_the_kind_opaque() {
        let mut w = KindWindow::default();
        w.advance("17");
        assert_eq!(w.mark().rv, 17);
        assert!(!w.opaque);
        w.advance("etcd-17");
        assert!(w.opaque);
        w.advance("");
        assert_eq!(w.mark().rv, 17);
    }
}
