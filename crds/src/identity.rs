//! The identity an agent's client certificate carries: a URI SAN naming its shard,
//! `spiffe://scaleagent.dev/ns/<namespace>/shard/<name>`. The hub reads it (from the TLS
//! session, or from the certificate a trusted load balancer forwards) to know which shard
//! is speaking, and accepts an account only from the shard that owns it.

use crate::ShardRef;

const PREFIX: &str = "spiffe://scaleagent.dev/ns/";

/// The URI SAN for `shard`.
pub fn shard_identity_uri(shard: &ShardRef) -> String {
    format!("{PREFIX}{}/shard/{}", shard.namespace, shard.name)
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
