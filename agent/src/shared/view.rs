//! Where one account's kind stands on a shared watch, and what of the watch it takes:
//! pure, so that each account is handed exactly what its own watch would have given it.

use std::collections::{HashMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use scale_agent_crds::AccountConfig;
use scale_agent_proto::v1::EventType;

use crate::kinds::WatchedKind;
use crate::objects;

/// What the account's own lists covered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Listed {
    /// Nothing: it resumed.
    Nothing,
    /// One list over every namespace (or of a cluster-scoped kind), at this version.
    All(u64),
    /// One list per namespace, each at its version.
    Namespaces(HashMap<String, u64>),
}

/// An account's place on a shared watch.
#[derive(Debug, Clone)]
pub struct View {
    /// The newest version handed on or resumed from: nothing older is handed on again.
    seen: u64,
    /// The newest version the account told the hub of (a change handed on, a bookmark,
    /// or where it resumed): a change the account does not select moves `seen` but not
    /// this, so the next bookmark still tells the hub how far the account is current.
    told: u64,
    listed: Listed,
    /// With a label selector: the uids of the objects the account streams now, so a
    /// change that makes an object match (or stop matching) is handed on as the API
    /// server's own filtered watch would: added (or deleted).
    selected: Option<HashSet<String>>,
}

impl View {
    /// Resumed from `version` (the hub has everything up to it).
    pub fn resumed(version: u64, config: &AccountConfig) -> View {
        View {
            seen: version,
            told: version,
            listed: Listed::Nothing,
            selected: tracks(config).then(HashSet::new),
        }
    }

    /// Listed (after joining): once over all namespaces at `versions[0]` when
    /// `namespaces` is empty, else namespace `namespaces[i]` at `versions[i]`; the
    /// `uids` listed.
    pub fn listed<'a>(
        namespaces: &[String],
        versions: &[u64],
        uids: impl Iterator<Item = &'a str>,
        config: &AccountConfig,
    ) -> View {
        let listed = if namespaces.is_empty() || namespaces.len() != versions.len() {
            Listed::All(versions.iter().copied().min().unwrap_or(0))
        } else {
            Listed::Namespaces(
                namespaces
                    .iter()
                    .cloned()
                    .zip(versions.iter().copied())
                    .collect(),
            )
        };
        View {
            seen: 0,
            told: 0,
            listed,
            selected: tracks(config).then(|| uids.map(str::to_owned).collect()),
        }
    }

    /// Whether a change at `version` in `namespace` is news to the account (and moves
    /// it on).
    fn fresh(&mut self, namespace: Option<&str>, version: Option<u64>) -> bool {
        let Some(v) = version else {
            // Not a number: nothing can be judged by it.
            return true;
        };
        let listed = match &self.listed {
            Listed::Nothing => 0,
            Listed::All(l) => *l,
            Listed::Namespaces(m) => namespace.and_then(|n| m.get(n)).copied().unwrap_or(0),
        };
        if v <= self.seen || v <= listed {
            return false;
        }
        self.seen = v;
        true
    }

    /// What the account is handed of a change on the shared watch: `None` when it had
    /// it already or does not select it, else the event type its own watch would have
    /// had (a label selector turns a change into an add or a delete).
    pub fn admit(
        &mut self,
        config: &AccountConfig,
        kind: &WatchedKind,
        ty: EventType,
        meta: &ObjectMeta,
        version: Option<u64>,
    ) -> Option<EventType> {
        let handed = self.select(config, kind, ty, meta, version);
        if handed.is_some()
            && let Some(v) = version
        {
            self.told = self.told.max(v);
        }
        handed
    }

    fn select(
        &mut self,
        config: &AccountConfig,
        kind: &WatchedKind,
        ty: EventType,
        meta: &ObjectMeta,
        version: Option<u64>,
    ) -> Option<EventType> {
        if !self.fresh(meta.namespace.as_deref(), version) {
            return None;
        }
        if kind.namespaced && !objects::in_namespaces(config, meta.namespace.as_deref()) {
            return None;
        }
        let Some(selected) = self.selected.as_mut() else {
            return Some(ty);
        };
        let uid = meta.uid.clone().unwrap_or_default();
        let matches = objects::labelled(config, meta);
        match ty {
            EventType::Deleted => (selected.remove(&uid) || matches).then_some(EventType::Deleted),
            _ if matches => Some(if selected.insert(uid) {
                EventType::Added
            } else {
                ty
            }),
            _ => selected.remove(&uid).then_some(EventType::Deleted),
        }
    }

    /// Whether a bookmark at `version` is news to the account (and moves it on).
    pub fn bookmark(&mut self, version: u64) -> bool {
        let listed = match &self.listed {
            Listed::Nothing => 0,
            Listed::All(l) => *l,
            Listed::Namespaces(m) => m.values().copied().max().unwrap_or(0),
        };
        if version <= self.told || version <= listed {
            return false;
        }
        self.seen = self.seen.max(version);
        self.told = version;
        true
    }

    /// Whether the account's lists already cover an expiry after which the shared watch
    /// went on from `version` (it relisted after it).
    pub fn covers(&self, version: u64) -> bool {
        match &self.listed {
            Listed::Nothing => false,
            Listed::All(l) => *l >= version,
            Listed::Namespaces(m) => m.values().all(|l| *l >= version),
        }
    }

    /// Where the account's own watches go on from, to watch alone: one version per
    /// namespace in `namespaces`, or one.
    pub fn versions(&self, namespaces: &[String]) -> Vec<String> {
        match &self.listed {
            Listed::Namespaces(m) if !namespaces.is_empty() => namespaces
                .iter()
                .map(|n| m.get(n).copied().unwrap_or(0).max(self.seen).to_string())
                .collect(),
            Listed::All(l) => vec![(*l).max(self.seen).to_string()],
            _ => vec![self.seen.to_string(); namespaces.len().max(1)],
        }
    }
}

/// Whether the account's kinds are filtered by labels (and the uids it streams tracked).
fn tracks(config: &AccountConfig) -> bool {
    config.scope.only_spinnaker_managed
}

#[cfg(test)]
mod tests;
