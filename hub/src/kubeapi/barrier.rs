//! Read your writes: after a write through the hub returns resourceVersion R, reads of
//! that kind through the hub reflect at least R. The cache follows the cluster a little
//! behind (the agent's stream); a read that would be older than the client's own
//! write waits briefly for the cache to catch up, and otherwise goes to the cluster.
//!
//! Clouddriver deploys, then reads the object to decide whether it is stable: a read
//! older than the deploy would make an unfinished deployment look finished.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a barrier is kept: by then the cache has long caught up, or the account
/// went away.
const KEEP: Duration = Duration::from_secs(600);
/// Barriers kept at most; the oldest go first.
const MAX: usize = 100_000;

/// (account, group, resource) → (floor, when it was set).
type Floors = HashMap<(String, String, String), (u64, Instant)>;

/// The resourceVersion a read of a kind must reflect, per account and resource.
#[derive(Debug, Default)]
pub struct Barriers {
    inner: Mutex<Floors>,
}

/// What a successful write says about the version reads must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The object as written, at this resourceVersion.
    At(u64),
    /// The object was deleted; it was last at this resourceVersion, so the deletion
    /// is newer.
    DeletedAfter(u64),
}

impl Written {
    /// The lowest resourceVersion a read may be at.
    pub fn floor(self) -> u64 {
        match self {
            Written::At(rv) => rv,
            Written::DeletedAfter(rv) => rv.saturating_add(1),
        }
    }
}

/// Reads `metadata.resourceVersion` of a write's answer; `None` when it has none
/// (a `Status`) or is not JSON.
pub fn written(method: &http::Method, body: &[u8]) -> Option<Written> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "resourceVersion", default)]
        resource_version: String,
    }
    #[derive(serde::Deserialize)]
    struct Obj {
        #[serde(default)]
        kind: String,
        metadata: Option<Meta>,
    }
    let obj: Obj = serde_json::from_slice(body).ok()?;
    if obj.kind == "Status" {
        return None;
    }
    let rv = obj.metadata?.resource_version.parse().ok()?;
    Some(if method == http::Method::DELETE {
        Written::DeletedAfter(rv)
    } else {
        Written::At(rv)
    })
}

impl Barriers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Floors> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that reads of `resource` (of `group`) in `account` must reach `floor`.
    pub fn note(&self, account: &str, group: &str, resource: &str, floor: u64) {
        let mut map = self.lock();
        if map.len() >= MAX {
            map.retain(|_, (_, at)| at.elapsed() < KEEP);
            if map.len() >= MAX {
                map.clear();
            }
        }
        let entry = map
            .entry((account.to_owned(), group.to_owned(), resource.to_owned()))
            .or_insert((0, Instant::now()));
        entry.0 = entry.0.max(floor);
        entry.1 = Instant::now();
    }

    /// The version a read of `resource` in `account` must reach (0: none).
    pub fn floor(&self, account: &str, group: &str, resource: &str) -> u64 {
        self.lock()
            .get(&(account.to_owned(), group.to_owned(), resource.to_owned()))
            .filter(|(_, at)| at.elapsed() < KEEP)
            .map_or(0, |(rv, _)| *rv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_sets_the_floor_of_its_kind_only() {
        let b = Barriers::default();
        assert_eq!(b.floor("a", "apps", "deployments"), 0);
        b.note("a", "apps", "deployments", 10);
        b.note("a", "apps", "deployments", 7);
        assert_eq!(b.floor("a", "apps", "deployments"), 10, "floors only rise");
        assert_eq!(b.floor("a", "apps", "replicasets"), 0);
        assert_eq!(b.floor("b", "apps", "deployments"), 0);
    }

    #[test]
    fn the_answer_of_a_write_says_its_version() {
        let body = br#"{"kind":"Deployment","metadata":{"name":"web","resourceVersion":"42"}}"#;
        assert_eq!(written(&http::Method::PATCH, body), Some(Written::At(42)));
        assert_eq!(
            written(&http::Method::DELETE, body).map(Written::floor),
            Some(43),
            "the deletion is newer than the object's last version"
        );
        let status = br#"{"kind":"Status","status":"Success","metadata":{}}"#;
        assert_eq!(written(&http::Method::DELETE, status), None);
        assert_eq!(written(&http::Method::POST, b"not json"), None);
    }
}
