//! The identity an agent's client certificate carries: a URI SAN naming its shard,
//! `spiffe://scaleagent.dev/ns/<namespace>/shard/<name>`. The hub reads it (from the TLS
//! session, or from the certificate a trusted load balancer forwards) to know which shard
//! is speaking, and accepts an account only from the shard that owns it.
//!
//! A hub replica's certificate names the replica the same way,
//! `spiffe://scaleagent.dev/hub/<replica id>`: replicas that share a store check it on
//! each other when one forwards a request to the holder of an account.

use crate::ShardRef;

const PREFIX: &str = "spiffe://scaleagent.dev/ns/";

/// The URI SAN for `shard`.
pub fn shard_identity_uri(shard: &ShardRef) -> String {
    format!("{PREFIX}{}/shard/{}", shard.namespace, shard.name)
}

const REPLICA_PREFIX: &str = "spiffe://scaleagent.dev/hub/";

/// The URI SAN of hub replica `id` (its `--hub-id`).
pub fn hub_replica_identity_uri(id: &str) -> String {
    format!("{REPLICA_PREFIX}{id}")
}

/// The hub replica a URI SAN names, when it is a replica identity.
pub fn parse_hub_replica_identity_uri(uri: &str) -> Option<&str> {
    uri.strip_prefix(REPLICA_PREFIX)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// The shard a URI SAN names, when it is a shard identity.
pub fn parse_shard_identity_uri(uri: &str) -> Option<ShardRef> {
    let rest = uri.strip_prefix(PREFIX)?;
    let (namespace, name) = rest.split_once("/shard/")?;
    let valid = |s: &str| !s.is_empty() && !s.contains('/');
    (valid(namespace) && valid(name))
        .then(|| ShardRef::new(namespace.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = ShardRef::new("spinnaker".to_string(), "prod-east".to_string());
        let uri = shard_identity_uri(&s);
        assert_eq!(uri, "spiffe://scaleagent.dev/ns/spinnaker/shard/prod-east");
        assert_eq!(parse_shard_identity_uri(&uri), Some(s));
    }

    #[test]
    fn hub_replicas_round_trip_and_are_not_shards() {
        let uri = hub_replica_identity_uri("hub-a");
        assert_eq!(uri, "spiffe://scaleagent.dev/hub/hub-a");
        assert_eq!(parse_hub_replica_identity_uri(&uri), Some("hub-a"));
        assert_eq!(parse_shard_identity_uri(&uri), None);
        for bad in [
            "spiffe://scaleagent.dev/hub/",
            "spiffe://scaleagent.dev/hub/a/b",
            "spiffe://scaleagent.dev/ns/a/shard/b",
        ] {
            assert_eq!(parse_hub_replica_identity_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn rejects_other_uris() {
        for bad in [
            "spiffe://example.org/ns/a/shard/b",
            "spiffe://scaleagent.dev/ns//shard/b",
            "spiffe://scaleagent.dev/ns/a/shard/",
            "spiffe://scaleagent.dev/ns/a/shard/b/c",
            "spiffe://scaleagent.dev/ns/a",
        ] {
            assert_eq!(parse_shard_identity_uri(bad), None, "{bad}");
        }
    }
}
