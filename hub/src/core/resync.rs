//! The resync diff: after a full relist of a kind, which cached objects the
//! cluster no longer has.
//!
//! An agent that relists a kind (first connect, a `410 Gone`, a filter change)
//! sends every object it still sees between `SyncStart` and `SyncEnd`; the
//! cache stamps each with the relist's generation. What of that kind carries an
//! older stamp was deleted while nobody watched, and only this diff finds it:
//! no DELETED event will ever arrive for it.

use std::collections::BTreeMap;

use crate::core::cache::{CachedObject, NsName};

/// The objects of a kind (`objects`) that the relist numbered `generation` did
/// not list: the ones to drop when it ends.
pub fn unlisted(objects: &BTreeMap<NsName, CachedObject>, generation: u64) -> Vec<NsName> {
    objects
        .iter()
        .filter(|(_, object)| object.seen_in_sync != generation)
        .map(|(at, _)| at.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::value::RawValue;

    use super::*;

    fn at(name: &str) -> NsName {
        NsName::new("ns", name)
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
    fn only_the_objects_the_relist_missed() {
        let objects = BTreeMap::from([
            (at("listed"), object(7)),
            (at("gone"), object(3)),
            (at("never-relisted"), object(0)),
        ]);
        assert_eq!(
            unlisted(&objects, 7),
            vec![at("gone"), at("never-relisted")]
        );
        assert!(unlisted(&BTreeMap::new(), 7).is_empty());
    }
}
