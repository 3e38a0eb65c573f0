//! Reading AgentShards from a watch tolerantly. One shard this version cannot decode (a
//! malformed object, or one written by a newer version in a shape this one does not
//! know) must not stop the watch of all the others, nor take away the account names it
//! holds. The operator and the hub watch `DeserializeGuard<AgentShard>` and pass every
//! event through [`sift`].

use kube::core::DeserializeGuard;
use kube::runtime::watcher::Event;

use crate::{AgentShard, AgentShardSpec, ShardRef};

/// The longest reason kept from a decoding error, so log lines and Events stay short
/// whatever the object holds.
pub const MAX_REASON_LEN: usize = 256;

/// An AgentShard that could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undecodable {
    /// Its namespace and name (`?` for a part the object lacks).
    pub shard: ShardRef,
    /// Its uid, when it has one.
    pub uid: Option<String>,
    /// Its resourceVersion, when it has one: the version that could not be decoded.
    pub resource_version: Option<String>,
    /// What the decoder said, at most [`MAX_REASON_LEN`] bytes.
    pub reason: String,
    /// Whether the last version that could be decoded stands in for it, so the names it
    /// held stay held.
    pub kept_last_good: bool,
}

/// One watch event, sifted.
#[derive(Debug)]
pub struct Sifted {
    /// The event to pass on (to a reflector, an index), if any.
    pub event: Option<Event<AgentShard>>,
    /// The shard that could not be decoded, to report.
    pub undecodable: Option<Undecodable>,
}

/// Sifts one event of a watch of `DeserializeGuard<AgentShard>`: shards that decode pass
/// as they are; one that does not is reported, and stands as its last decodable version
/// (`last_good`, usually the reflector's copy) when there is one, or is left out. A
/// deletion always passes, so the shard is forgotten whatever it held.
pub fn sift(
    event: Event<DeserializeGuard<AgentShard>>,
    last_good: impl Fn(&ShardRef) -> Option<AgentShard>,
) -> Sifted {
    let pass = |event| Sifted {
        event: Some(event),
        undecodable: None,
    };
    let replace = |invalid: kube::core::error_boundary::InvalidObject,
                   wrap: fn(AgentShard) -> Event<AgentShard>| {
        let shard = shard_ref(&invalid.metadata);
        let kept = last_good(&shard);
        let undecodable = Undecodable {
            kept_last_good: kept.is_some(),
            uid: invalid.metadata.uid.clone(),
            resource_version: invalid.metadata.resource_version.clone(),
            reason: bounded(&invalid.error, MAX_REASON_LEN),
            shard,
        };
        Sifted {
            event: kept.map(wrap),
            undecodable: Some(undecodable),
        }
    };
    match event {
        Event::Init => pass(Event::Init),
        Event::InitDone => pass(Event::InitDone),
        Event::Apply(DeserializeGuard(Ok(s))) => pass(Event::Apply(s)),
        Event::InitApply(DeserializeGuard(Ok(s))) => pass(Event::InitApply(s)),
        Event::Delete(DeserializeGuard(Ok(s))) => pass(Event::Delete(s)),
        Event::Apply(DeserializeGuard(Err(invalid))) => replace(invalid, Event::Apply),
        Event::InitApply(DeserializeGuard(Err(invalid))) => replace(invalid, Event::InitApply),
        Event::Delete(DeserializeGuard(Err(invalid))) => {
            let gone = last_good(&shard_ref(&invalid.metadata)).or_else(|| {
                let spec: AgentShardSpec = serde_json::from_value(serde_json::json!({})).ok()?;
                let mut s = AgentShard::new("", spec);
                s.metadata = invalid.metadata;
                Some(s)
            });
            Sifted {
                event: gone.map(Event::Delete),
                undecodable: None,
            }
        }
    }
}

fn shard_ref(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ShardRef {
    ShardRef::new(
        meta.namespace.as_deref().unwrap_or("?"),
        meta.name.as_deref().unwrap_or("?"),
    )
}

/// `text` cut to at most `max` bytes (on a character boundary), with `…` when cut.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;
    use serde_json::json;

    fn guarded(value: serde_json::Value) -> DeserializeGuard<AgentShard> {
        serde_json::from_value(value).expect("a guard always decodes an object with metadata")
    }

    fn good(name: &str) -> serde_json::Value {
        json!({
            "apiVersion": "scaleagent.dev/v1alpha1", "kind": "AgentShard",
            "metadata": { "name": name, "namespace": "ns", "resourceVersion": "1" },
            "spec": { "accounts": [{ "name": "a", "kubeconfigSecretRef": { "name": "kc" } }] },
        })
    }

    fn bad(name: &str) -> serde_json::Value {
        let mut v = good(name);
        v["spec"]["replicas"] = json!("x".repeat(10_000));
        v["metadata"]["resourceVersion"] = json!("2");
        v
    }

    #[test]
    fn decodable_shards_pass() {
        let s = sift(Event::Apply(guarded(good("a"))), |_| None);
        assert!(s.undecodable.is_none());
        assert!(
            matches!(s.event, Some(Event::Apply(sh)) if sh.meta().name.as_deref() == Some("a"))
        );
    }

    #[test]
    fn an_undecodable_shard_is_reported_with_a_bounded_reason_and_left_out() {
        let s = sift(Event::InitApply(guarded(bad("b"))), |_| None);
        assert!(s.event.is_none());
        let u = s.undecodable.expect("reported");
        assert_eq!(u.shard, ShardRef::new("ns", "b"));
        assert_eq!(u.resource_version.as_deref(), Some("2"));
        assert!(!u.kept_last_good);
        assert!(u.reason.len() <= MAX_REASON_LEN, "{}", u.reason.len());
        assert!(
            u.reason.to_lowercase().contains("invalid type"),
            "{}",
            u.reason
        );
    }

    #[test]
    fn an_undecodable_update_keeps_the_last_good_version() {
        let last: AgentShard = serde_json::from_value(good("c")).expect("good");
        let s = sift(Event::Apply(guarded(bad("c"))), |r| {
            (*r == ShardRef::new("ns", "c")).then(|| last.clone())
        });
        assert!(s.undecodable.is_some_and(|u| u.kept_last_good));
        match s.event {
            Some(Event::Apply(sh)) => assert_eq!(sh, last),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_undecodable_deletion_still_deletes() {
        let s = sift(Event::Delete(guarded(bad("d"))), |_| None);
        assert!(s.undecodable.is_none());
        match s.event {
            Some(Event::Delete(sh)) => assert_eq!(sh.shard_ref(), Some(ShardRef::new("ns", "d"))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bounded_cuts_on_a_character_boundary() {
        assert_eq!(bounded("short", 10), "short");
        let cut = bounded(&"é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with('…'), "{cut}");
    }
}
