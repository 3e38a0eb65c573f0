//! The cache of every streamed object, per account, and the per-kind sync
//! bookkeeping that keeps it equal to the cluster across reconnects.
//!
//! - Events apply in arrival order (the agent sends each object's changes in
//!   watch order): ADDED and MODIFIED store the object, DELETED removes it.
//! - A full relist of a kind is bracketed by SyncStart and SyncEnd. Every
//!   object of that kind not sent in between vanished while the agent was away
//!   and is dropped at SyncEnd ([`crate::core::resync`], the resync diff), unless the agent says it sent more objects than
//!   arrived (then nothing is dropped and the kind gets no resume point, so the
//!   next reconnect relists it).
//! - Per (account, kind) the hub tracks the resourceVersion to resume a watch
//!   from: the SyncEnd's, then each later event's or WatchProgress's. While a
//!   full relist is open the kind has no resume point (a half-done list is no
//!   place to resume from). A resume point only moves forward: a bookmark at an
//!   older resourceVersion than the kind's resume point (a late or replayed frame)
//!   leaves it where it is.
//! - Per kind the hub also keeps the *selection* (the agent's fingerprint of the
//!   account's cluster and filters) of the last complete full relist, and returns it
//!   with the resume point: an agent whose filters changed relists instead of
//!   resuming. A kind with cached objects but no resume point is still reported
//!   (with an empty resourceVersion), so an agent that no longer watches it can
//!   clear it.
//!
//! Kinds are keyed by (group, kind): the version an agent watches may change,
//! the object does not. Each kind holds its own objects, ordered by (namespace,
//! name) as one string ([`NsName`]): a lookup compares one string per step, not
//! four (a profile of the hub's ingest put half of its time in comparing
//! (group, kind, namespace, name) keys of one map of every kind).
//!
//! With a shared store, each account's cache also notes what changed since
//! the store last took it ([`AccountCache::take_changes`]): the holder writes
//! the changes behind, and a replica taking the account over starts from
//! them ([`Cache::restore`]).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::core::window::{self, ChangeType, KindWindow};

/// A kind, without its version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KindKey {
    /// API group; empty for the core group.
    pub group: String,
    /// Kind, as the API server spells it.
    pub kind: String,
}

/// Where an object is cached: (group, kind, namespace, name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// API group; empty for the core group.
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// The kind part of the key.
    pub fn kind_key(&self) -> KindKey {
        KindKey {
            group: self.group.clone(),
            kind: self.kind.clone(),
        }
    }

    /// The key split into its kind and its place within the kind.
    fn split(self) -> (KindKey, NsName) {
        let at = NsName::new(&self.namespace, &self.name);
        (
            KindKey {
                group: self.group,
                kind: self.kind,
            },
            at,
        )
    }

    /// The key as a borrowed view.
    pub fn as_ref(&self) -> ObjectRef<'_> {
        ObjectRef {
            group: &self.group,
            kind: &self.kind,
            namespace: &self.namespace,
            name: &self.name,
        }
    }
}

/// Where an object is within its kind: its namespace (empty for cluster-scoped
/// objects) and name as one string, `namespace NUL name`. NUL sorts before every
/// character of a namespace, so the order is that of (namespace, name); the agent's
/// events with a NUL in either are refused before they reach the cache
/// ([`NsName::valid`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NsName(Box<str>);

impl NsName {
    /// The place of `namespace`/`name`.
    pub fn new(namespace: &str, name: &str) -> NsName {
        let mut s = String::with_capacity(namespace.len() + 1 + name.len());
        s.push_str(namespace);
        s.push('\0');
        s.push_str(name);
        NsName(s.into_boxed_str())
    }

    /// Whether a namespace or name can be part of a place (it holds no NUL).
    pub fn valid(part: &str) -> bool {
        !part.contains('\0')
    }

    /// The namespace; empty for cluster-scoped objects.
    pub fn namespace(&self) -> &str {
        self.0.split_once('\0').map_or("", |(ns, _)| ns)
    }

    /// The name.
    pub fn name(&self) -> &str {
        self.0.split_once('\0').map_or(&self.0, |(_, name)| name)
    }
}

/// An object's key, borrowed from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectRef<'a> {
    /// API group; empty for the core group.
    pub group: &'a str,
    /// Kind.
    pub kind: &'a str,
    /// Namespace; empty for cluster-scoped objects.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
}

impl ObjectRef<'_> {
    /// An owned copy of the key.
    pub fn to_key(self) -> ObjectKey {
        ObjectKey {
            group: self.group.to_owned(),
            kind: self.kind.to_owned(),
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
        }
    }
}

/// The borrowed key of the object at `at` of `kind`.
fn object_ref<'a>(kind: &'a KindKey, at: &'a NsName) -> ObjectRef<'a> {
    ObjectRef {
        group: &kind.group,
        kind: &kind.kind,
        namespace: at.namespace(),
        name: at.name(),
    }
}

/// One cached object.
#[derive(Debug, Clone)]
pub struct CachedObject {
    /// API version of the watch it came from, e.g. "v1".
    pub version: String,
    /// metadata.uid.
    pub uid: String,
    /// metadata.resourceVersion.
    pub resource_version: String,
    /// The object as JSON (validated on arrival).
    pub body: Arc<RawValue>,
    /// The full relist that last saw it (0: none).
    pub(crate) seen_in_sync: u64,
}

/// An event, already parsed and validated outside the cache lock.
#[derive(Debug, Clone)]
pub struct Event {
    /// What happened.
    pub change: Change,
    /// Where.
    pub key: ObjectKey,
    /// API version.
    pub version: String,
    /// metadata.uid.
    pub uid: String,
    /// metadata.resourceVersion.
    pub resource_version: String,
    /// The body; for Deleted it is not kept.
    pub body: Arc<RawValue>,
}

/// The kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Created or listed, or changed: stored.
    Upsert,
    /// Deleted: removed.
    Delete,
}

/// How a kind is brought up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Everything is listed again; what is not listed is gone.
    FullRelist,
    /// The watch resumes; only changes follow.
    ResumedWatch,
}

#[derive(Debug, Clone)]
struct OpenSync {
    generation: u64,
    mode: SyncMode,
    seen: u64,
    selection: String,
}

#[derive(Debug, Default)]
struct KindState {
    /// The kind's cached objects.
    objects: BTreeMap<NsName, CachedObject>,
    version: String,
    open: Option<OpenSync>,
    resume: Option<String>,
    /// The selection of the last complete full relist.
    selection: String,
    /// How the Kubernetes API of the account serves the kind.
    api: KindWindow,
}

impl KindState {
    fn in_full_relist(&self) -> bool {
        full_relist(self.open.as_ref())
    }

    /// The cache holds the kind exactly as the cluster has it (up to the stream's
    /// lag): the account's current registration streams it, no relist is under way,
    /// it has synced, and its versions are comparable.
    fn servable(&self) -> bool {
        self.api.live
            && !self.api.opaque
            && !self.api.resource.is_empty()
            && !self.in_full_relist()
            && self.resume.is_some()
    }
}

/// What an account's agent streams of its cluster (its filters), so that reads
/// asking for more are not answered from the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Only these namespaces; empty means all.
    pub namespaces: Vec<String>,
    /// Never these namespaces.
    pub omit_namespaces: Vec<String>,
    /// Only objects matching this label selector; empty means all.
    pub label_selector: String,
}

/// A kind as the Kubernetes API of the account sees it.
#[derive(Debug, Clone, Copy)]
pub struct KindView<'a> {
    /// The cache's key of the kind.
    pub key: &'a KindKey,
    /// Whether reads of it can be answered from the cache.
    pub servable: bool,
    /// Its resource name, version and window of recent changes.
    pub window: &'a KindWindow,
}

/// The outcome of a SyncEnd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncOutcome {
    /// Objects dropped because the relist did not include them.
    pub dropped: usize,
    /// The agent sent more objects than arrived; nothing was dropped.
    pub count_mismatch: bool,
    /// There was no open sync for the kind.
    pub unmatched: bool,
}

/// One account's objects and kinds.
#[derive(Debug, Default)]
pub struct AccountCache {
    kinds: HashMap<KindKey, KindState>,
    next_generation: u64,
    /// What the current registration streams; `None`: not said.
    scope: Option<Scope>,
    /// The cluster's served APIs as the agent follows them (see
    /// [`AccountCache::api_surface`]).
    api_surface: Option<u64>,
    /// What changed since the store last took it; `None` when no store
    /// takes changes (one replica).
    dirty: Option<Dirty>,
}

/// The objects changed, and whether the resume points may have moved.
#[derive(Debug, Default)]
struct Dirty {
    keys: BTreeSet<ObjectKey>,
    resume: bool,
}

/// What changed in an account's cache since the store last took it: each
/// changed object as it is now (or gone), and the resume points as they are
/// now. Taken at one instant, so the resume points never run ahead of the
/// objects.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Objects present now.
    pub upserts: Vec<(ObjectKey, CachedObject)>,
    /// Objects gone.
    pub deletes: Vec<ObjectKey>,
    /// Every resume point of the account.
    pub resume: Vec<Resume>,
    /// The account's number of objects.
    pub objects: usize,
}

/// One object as a store kept it.
#[derive(Debug, Clone)]
pub struct StoredObject {
    /// Where.
    pub key: ObjectKey,
    /// API version.
    pub version: String,
    /// metadata.uid.
    pub uid: String,
    /// metadata.resourceVersion.
    pub resource_version: String,
    /// The object as JSON.
    pub body: Arc<RawValue>,
}

/// A resume point: kind (with version) and resourceVersion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The kind.
    pub kind: KindKey,
    /// The version the kind was last watched at.
    pub version: String,
    /// Where to resume; empty when the kind has cached objects but no point to
    /// resume from.
    pub resource_version: String,
    /// The selection the kind's objects were listed with (empty: unknown).
    pub selection: String,
}

/// Whether resourceVersion `next` may replace `current` as a resume point: not when
/// both are numbers (as every API server's are) and `next` is older.
fn not_older(next: &str, current: Option<&str>) -> bool {
    match (next.parse::<u64>(), current.map(str::parse::<u64>)) {
        (Ok(n), Some(Ok(c))) => n >= c,
        _ => true,
    }
}

impl AccountCache {
    fn kind_mut(&mut self, kind: &KindKey, version: &str) -> &mut KindState {
        kind_state(&mut self.kinds, &mut self.dirty, kind, version)
    }

    /// Applies one event.
    pub fn apply(&mut self, event: Event) {
        let (kind, at) = event.key.split();
        let Self { kinds, dirty, .. } = self;
        // The kind's key goes into the map when new; a store noting changes needs a copy.
        let noted_kind = dirty.is_some().then(|| kind.clone());
        let state = owned_kind_state(kinds, dirty, kind, &event.version);
        let KindState {
            objects,
            open,
            api,
            resume,
            ..
        } = state;
        // Outside a full relist, a change at a numeric resourceVersion goes into the
        // window; anything else only moves the kind's version on.
        let rv = if full_relist(open.as_ref()) {
            None
        } else {
            window::parse_rv(&event.resource_version)
        };
        if rv.is_none() {
            api.advance(&event.resource_version);
        }
        let mut seen_in_sync = 0;
        match open {
            Some(open) if open.mode == SyncMode::FullRelist => {
                if event.change == Change::Upsert {
                    open.seen += 1;
                    seen_in_sync = open.generation;
                }
            }
            _ => {
                if !event.resource_version.is_empty() {
                    // Into the kind's last resume point's buffer: no allocation per event.
                    resume
                        .get_or_insert_default()
                        .clone_from(&event.resource_version);
                }
            }
        }
        let Event {
            change,
            version,
            uid,
            resource_version,
            body,
            ..
        } = event;
        let window_body = rv.map(|_| Arc::clone(&body));
        let object = || CachedObject {
            version,
            uid,
            resource_version,
            body,
            seen_in_sync,
        };
        // One search of the kind's objects for the read and the write. The object it
        // replaces or removes is moved out whole: its body becomes the window's
        // previous state without being touched (in a large cache it is rarely in the
        // CPU's caches; a profile of the ingest showed a fifth of this function
        // waiting on that memory to count one more reference to it).
        let wants_key = rv.is_some() || noted_kind.is_some();
        let (at, prev) = match (objects.entry(at), change) {
            (Entry::Occupied(mut o), Change::Upsert) => {
                let at = wants_key.then(|| o.key().clone());
                (at, Some(o.insert(object())))
            }
            (Entry::Vacant(v), Change::Upsert) => {
                let at = wants_key.then(|| v.key().clone());
                v.insert(object());
                (at, None)
            }
            (Entry::Occupied(o), Change::Delete) => {
                let (at, prev) = o.remove_entry();
                (Some(at), Some(prev))
            }
            (Entry::Vacant(v), Change::Delete) => (Some(v.into_key()), None),
        };
        if let (Some(dirty), Some(kind), Some(at)) = (dirty, &noted_kind, &at) {
            dirty.keys.insert(object_ref(kind, at).to_key());
        }
        if let (Some(rv), Some(at), Some(body)) = (rv, at, window_body) {
            let prev = prev.map(|p| p.body);
            let change = match (change, &prev) {
                (Change::Delete, _) => ChangeType::Deleted,
                (Change::Upsert, Some(_)) => ChangeType::Modified,
                (Change::Upsert, None) => ChangeType::Added,
            };
            // A deletion whose body did not parse is shown with its last state.
            let body = match (&prev, body.get()) {
                (Some(p), "null") if change == ChangeType::Deleted => Arc::clone(p),
                _ => body,
            };
            api.record(window::Change::new(rv, change, at, body, prev));
        }
    }

    /// Opens the sync of a kind; replaces an open one. `selection` is what a full
    /// relist selects; it becomes the kind's once the relist completes.
    pub fn sync_start(&mut self, kind: &KindKey, version: &str, mode: SyncMode, selection: &str) {
        self.next_generation += 1;
        let generation = self.next_generation;
        let state = self.kind_mut(kind, version);
        state.api.live = true;
        if mode == SyncMode::FullRelist {
            state.resume = None;
        }
        state.open = Some(OpenSync {
            generation,
            mode,
            seen: 0,
            selection: selection.to_owned(),
        });
    }

    /// Closes the sync of a kind: after a full relist, drops what was not seen.
    pub fn sync_end(
        &mut self,
        kind: &KindKey,
        version: &str,
        resource_version: &str,
        object_count: u64,
    ) -> SyncOutcome {
        let Self { kinds, dirty, .. } = self;
        let state = kind_state(kinds, dirty, kind, version);
        let Some(open) = state.open.take() else {
            if !resource_version.is_empty() {
                state.resume = Some(resource_version.to_owned());
            }
            state.api.advance(resource_version);
            return SyncOutcome {
                unmatched: true,
                ..SyncOutcome::default()
            };
        };
        if open.mode == SyncMode::FullRelist && open.seen < object_count {
            state.resume = None;
            return SyncOutcome {
                count_mismatch: true,
                ..SyncOutcome::default()
            };
        }
        if !resource_version.is_empty() {
            state.resume = Some(resource_version.to_owned());
        }
        state.api.advance(resource_version);
        if open.mode == SyncMode::FullRelist {
            // The hub lost continuity while the kind was relisted: watches start over,
            // from the list's version.
            state.api.restart(window::parse_rv(resource_version));
        }
        let mut dropped = 0;
        if open.mode == SyncMode::FullRelist {
            state.selection = open.selection;
            for at in crate::core::resync::unlisted(&state.objects, open.generation) {
                state.objects.remove(&at);
                // A shared store drops the object too, with the next write-behind.
                if let Some(dirty) = dirty {
                    dirty.keys.insert(object_ref(kind, &at).to_key());
                }
                dropped += 1;
            }
        }
        SyncOutcome {
            dropped,
            ..SyncOutcome::default()
        }
    }

    /// A watch bookmark: the kind is current up to `resource_version`.
    pub fn progress(&mut self, kind: &KindKey, version: &str, resource_version: &str) {
        let state = self.kind_mut(kind, version);
        if !state.in_full_relist()
            && !resource_version.is_empty()
            && not_older(resource_version, state.resume.as_deref())
        {
            state.resume = Some(resource_version.to_owned());
            state.api.advance(resource_version);
        }
    }

    /// The agent says how the kind appears in API paths (from its SyncStart).
    pub fn describe(&mut self, kind: &KindKey, version: &str, resource: &str, namespaced: bool) {
        let state = self.kind_mut(kind, version);
        if !resource.is_empty() {
            resource.clone_into(&mut state.api.resource);
            state.api.namespaced = namespaced;
        }
    }

    /// The account was (re)registered with `scope`: until each kind's sync starts
    /// again, nothing is known to be streamed.
    pub fn registered(&mut self, scope: Option<Scope>) {
        for state in self.kinds.values_mut() {
            state.api.live = false;
        }
        self.scope = scope;
        self.api_surface = None;
    }

    /// The agent says whether it follows the cluster's CRDs and APIServices, and
    /// that what the cluster serves may have changed.
    pub fn surface_changed(&mut self, followed: bool) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        self.api_surface =
            followed.then(|| NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    }

    /// A number that stays the same while what the cluster serves (its discovery
    /// and OpenAPI) does, as far as the agent follows it; `None` when it does not
    /// (an older agent, no right to watch CRDs and APIServices, or not said since
    /// the account was last registered). Unique across accounts and sessions.
    pub fn api_surface(&self) -> Option<u64> {
        self.api_surface
    }

    /// What the current registration streams, when it said.
    pub fn scope(&self) -> Option<&Scope> {
        self.scope.as_ref()
    }

    /// The kind served at `/<group>/<version>/<resource>`, if the cache has it at
    /// that version.
    pub fn kind_for(&self, group: &str, version: &str, resource: &str) -> Option<KindView<'_>> {
        self.kinds
            .iter()
            .find(|(k, s)| k.group == group && s.version == version && s.api.resource == resource)
            .map(|(key, s)| KindView {
                key,
                servable: s.servable(),
                window: &s.api,
            })
    }

    /// The Kubernetes API's view of `kind`.
    pub fn window(&self, kind: &KindKey) -> Option<&KindWindow> {
        self.kinds.get(kind).map(|s| &s.api)
    }

    /// The objects of `kind` (in `namespace`, when given), in key order.
    pub fn objects_of<'a>(
        &'a self,
        kind: &'a KindKey,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (ObjectRef<'a>, &'a CachedObject)> + 'a {
        let objects = self.kinds.get(kind).map(|s| &s.objects);
        let from = NsName::new(namespace.unwrap_or_default(), "");
        objects
            .into_iter()
            .flat_map(move |objects| objects.range(from.clone()..))
            .take_while(move |(at, _)| namespace.is_none_or(|ns| at.namespace() == ns))
            .map(move |(at, o)| (object_ref(kind, at), o))
    }

    /// A new session took the account over: syncs the old one left open are
    /// abandoned, and a half-done relist leaves its kind without resume point.
    pub fn abandon_open_syncs(&mut self) {
        if let Some(dirty) = &mut self.dirty {
            dirty.resume = true;
        }
        for state in self.kinds.values_mut() {
            if state.in_full_relist() {
                state.resume = None;
            }
            state.open = None;
        }
    }

    /// Where each kind's watch can resume, for kinds with no relist open; and kinds
    /// with cached objects and no resume point, with an empty resourceVersion.
    pub fn resume_points(&self) -> Vec<Resume> {
        let mut points: Vec<Resume> = self
            .kinds
            .iter()
            .filter_map(|(kind, s)| {
                let rv = match &s.resume {
                    Some(rv) if !s.in_full_relist() => rv.clone(),
                    _ if self.has_objects_of(kind) => String::new(),
                    _ => return None,
                };
                Some(Resume {
                    kind: kind.clone(),
                    version: s.version.clone(),
                    resource_version: rv,
                    selection: s.selection.clone(),
                })
            })
            .collect();
        points.sort_by(|a, b| a.kind.cmp(&b.kind));
        points
    }

    fn has_objects_of(&self, kind: &KindKey) -> bool {
        self.kinds.get(kind).is_some_and(|s| !s.objects.is_empty())
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.kinds.values().map(|s| s.objects.len()).sum()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.kinds.values().all(|s| s.objects.is_empty())
    }

    /// The kinds holding objects, in key order.
    fn sorted_kinds(&self) -> Vec<(&KindKey, &KindState)> {
        let mut kinds: Vec<_> = self
            .kinds
            .iter()
            .filter(|(_, s)| !s.objects.is_empty())
            .collect();
        kinds.sort_unstable_by(|a, b| a.0.cmp(b.0));
        kinds
    }

    /// Every object, in key order.
    pub fn objects(&self) -> impl Iterator<Item = (ObjectRef<'_>, &CachedObject)> {
        self.objects_after(None)
    }

    /// The objects whose keys sort after `after` (all when `None`), in key
    /// order: a page of the list.
    pub fn objects_after(
        &self,
        after: Option<&ObjectKey>,
    ) -> impl Iterator<Item = (ObjectRef<'_>, &CachedObject)> {
        use std::ops::Bound;
        let after = after.map(|key| (key.kind_key(), NsName::new(&key.namespace, &key.name)));
        let first = after.as_ref().map(|(k, _)| k.clone());
        self.sorted_kinds()
            .into_iter()
            .filter(move |(kind, _)| first.as_ref().is_none_or(|k| *kind >= k))
            .flat_map(move |(kind, state)| {
                let start = match &after {
                    Some((k, at)) if k == kind => Bound::Excluded(at.clone()),
                    _ => Bound::Unbounded,
                };
                state
                    .objects
                    .range((start, Bound::Unbounded))
                    .map(move |(at, o)| (object_ref(kind, at), o))
            })
    }

    /// One object.
    pub fn get(&self, key: &ObjectKey) -> Option<&CachedObject> {
        self.kinds
            .get(&key.kind_key())?
            .objects
            .get(&NsName::new(&key.namespace, &key.name))
    }

    /// Kinds with objects or sync state, with their last version.
    pub fn kinds(&self) -> impl Iterator<Item = (&KindKey, &str)> {
        self.kinds.iter().map(|(k, s)| (k, s.version.as_str()))
    }

    /// What changed since the last call, when changes are noted and there
    /// are any; the account then counts as unchanged.
    pub fn take_changes(&mut self) -> Option<Changes> {
        let dirty = self.dirty.as_mut()?;
        if dirty.keys.is_empty() && !dirty.resume {
            return None;
        }
        let dirty = std::mem::take(dirty);
        let mut changes = Changes {
            objects: self.len(),
            resume: self.resume_points(),
            ..Changes::default()
        };
        for key in dirty.keys {
            match self.get(&key) {
                Some(object) => changes.upserts.push((key, object.clone())),
                None => changes.deletes.push(key),
            }
        }
        Some(changes)
    }

    /// Changes the store could not take: they count as changed again (with
    /// their values as they will be at the next take).
    pub fn put_back(&mut self, changes: &Changes) {
        if let Some(dirty) = &mut self.dirty {
            dirty.resume = true;
            dirty
                .keys
                .extend(changes.upserts.iter().map(|(k, _)| k.clone()));
            dirty.keys.extend(changes.deletes.iter().cloned());
        }
    }
}

/// Every account's cache.
#[derive(Debug, Default)]
pub struct Cache {
    accounts: HashMap<String, AccountCache>,
    /// Accounts note their changes for a shared store.
    noting: bool,
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Cache {
        Cache::default()
    }

    /// An empty cache whose accounts note their changes, for a store that
    /// takes them ([`AccountCache::take_changes`]).
    pub fn noting_changes() -> Cache {
        Cache {
            noting: true,
            ..Cache::default()
        }
    }

    /// The cache of `account`, created when missing.
    pub fn account_mut(&mut self, account: &str) -> &mut AccountCache {
        // Looked up before it is copied: every frame of an account finds it.
        if !self.accounts.contains_key(account) {
            let cache = AccountCache {
                dirty: self.noting.then(Dirty::default),
                ..AccountCache::default()
            };
            self.accounts.insert(account.to_owned(), cache);
        }
        self.accounts
            .get_mut(account)
            .expect("the account's cache was just made")
    }

    /// Replaces the cache of `account` with what a store kept: `objects`,
    /// and the kinds' resume points. Nothing counts as changed.
    pub fn restore(&mut self, account: &str, objects: Vec<StoredObject>, resume: Vec<Resume>) {
        let mut cache = AccountCache {
            dirty: self.noting.then(Dirty::default),
            ..AccountCache::default()
        };
        for point in resume {
            let state = cache.kinds.entry(point.kind).or_default();
            state.version = point.version;
            state.resume = Some(point.resource_version);
            state.selection = point.selection;
        }
        for object in objects {
            let (kind, at) = object.key.split();
            let state = cache.kinds.entry(kind).or_default();
            if state.version.is_empty() {
                state.version.clone_from(&object.version);
            }
            state.objects.insert(
                at,
                CachedObject {
                    version: object.version,
                    uid: object.uid,
                    resource_version: object.resource_version,
                    body: object.body,
                    seen_in_sync: 0,
                },
            );
        }
        self.accounts.insert(account.to_owned(), cache);
    }

    /// The cache of `account`, to change, if there is one.
    pub fn account_mut_if_present(&mut self, account: &str) -> Option<&mut AccountCache> {
        self.accounts.get_mut(account)
    }

    /// The cache of `account`, if any.
    pub fn account(&self, account: &str) -> Option<&AccountCache> {
        self.accounts.get(account)
    }

    /// Drops an account and all its objects.
    pub fn remove(&mut self, account: &str) -> usize {
        self.accounts.remove(account).map_or(0, |a| a.len())
    }

    /// Total number of cached objects.
    pub fn total(&self) -> usize {
        self.accounts.values().map(AccountCache::len).sum()
    }
}

/// Whether `open` is a full relist.
fn full_relist(open: Option<&OpenSync>) -> bool {
    open.is_some_and(|o| o.mode == SyncMode::FullRelist)
}

/// A kind's state, made when missing, its API version updated; whatever reaches a
/// kind's state may move its resume point, so the store's next take includes them.
fn kind_state<'a>(
    kinds: &'a mut HashMap<KindKey, KindState>,
    dirty: &mut Option<Dirty>,
    kind: &KindKey,
    version: &str,
) -> &'a mut KindState {
    owned_kind_state(kinds, dirty, kind.clone(), version)
}

/// [`kind_state`] of a kind given by value: no copy of its key.
fn owned_kind_state<'a>(
    kinds: &'a mut HashMap<KindKey, KindState>,
    dirty: &mut Option<Dirty>,
    kind: KindKey,
    version: &str,
) -> &'a mut KindState {
    if let Some(dirty) = dirty {
        dirty.resume = true;
    }
    let state = kinds.entry(kind).or_default();
    if !version.is_empty() && state.version != version {
        version.clone_into(&mut state.version);
    }
    state
}

#[cfg(test)]
mod tests;
