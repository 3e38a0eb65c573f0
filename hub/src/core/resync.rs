//! The resync diff: after a full relist of a kind, which cached objects the
//! cluster no longer has.
//!
//! An agent that relists a kind (first connect, a `410 Gone`, a filter change)
//! sends every object it still sees between `SyncStart` and `SyncEnd`; the
//! cache stamps each with the relist's generation. What of that kind carries an
//! older stamp was deleted while nobody watched, and only this diff finds it:
//! no DELETED event will ever arrive for it.

use std::collections::BTreeMap;

use crate::core::cache::{CachedObject, KindKey, ObjectKey};

/// The objects of `kind` that the relist numbered `generation` did not list:
/// the ones to drop when it ends. Objects of other kinds are never part of it.
pub fn unlisted(
    objects: &BTreeMap<ObjectKey, CachedObject>,
    kind: &KindKey,
    generation: u64,
) -> Vec<ObjectKey> {
    objects
        .iter()
        .filter(|(key, object)| {
            key.group == kind.group && key.kind == kind.kind && object.seen_in_sync != generation
        })
        .map(|(key, _)| key.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::value::RawValue;

    use super::*;

    fn key(kind: &str, name: &str) -> ObjectKey {
        ObjectKey {
            group: "apps".into(),
            kind: kind.into(),
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn object(seen_in_sync: u64) -> CachedObject {
        CachedObject {
            version: "v1".into(),
            uid: "u".into(),
            resource_version: "1".into(),
            body: Arc::from(RawValue::from_string("{}".into()).expect("json")),
            seen_in_sync,
        }
    }

    #[test]
    fn only_the_relisted_kinds_objects_the_relist_missed() {
        let objects = BTreeMap::from([
            (key("Deployment", "listed"), object(7)),
            (key("Deployment", "gone"), object(3)),
            (key("Deployment", "never-relisted"), object(0)),
            (key("ReplicaSet", "other-kind"), object(3)),
        ]);
        let kind = KindKey {
            group: "apps".into(),
            kind: "Deployment".into(),
        };
        assert_eq!(
            unlisted(&objects, &kind, 7),
            vec![
                key("Deployment", "gone"),
                key("Deployment", "never-relisted")
            ]
        );
        assert!(unlisted(&BTreeMap::new(), &kind, 7).is_empty());
    }
}
