//! What a shard's author may choose for the pods the operator creates. Whoever may create
//! an AgentShard picks the agent image and the ServiceAccount its pods run as; the
//! operator runs them with its own rights to create Deployments, so it accepts only
//! images and ServiceAccounts its flags allow:
//!
//! - images: the operator's default agent image, and those matching `--allowed-images`;
//! - ServiceAccounts: the shard's own `<shard>-agent` (made by the operator with only
//!   the rights agents need), the operator's `--default-service-account`, and those
//!   matching `--allowed-service-accounts`.
//!
//! A pattern is a value, or a prefix ending in `*` (`registry.example.com/scale-agent:*`);
//! `*` alone allows anything.

use scale_agent_crds::{AgentShard, deployment_name};

use crate::status::reason;

/// A list of allowed values or `prefix*` patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowed(Vec<String>);

impl Allowed {
    /// The patterns of a flag (empty entries are dropped).
    pub fn new(patterns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self(
            patterns
                .into_iter()
                .map(Into::into)
                .filter(|p: &String| !p.trim().is_empty())
                .collect(),
        )
    }

    /// Whether `value` matches a pattern.
    pub fn allows(&self, value: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => value.starts_with(prefix),
            None => p == value,
        })
    }

    /// The patterns, for messages.
    pub fn describe(&self) -> String {
        if self.0.is_empty() {
            "none".to_owned()
        } else {
            self.0.join(", ")
        }
    }
}

/// Why a shard's choice is refused: a stable reason and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// `ImageNotAllowed` or `ServiceAccountNotAllowed`.
    pub reason: &'static str,
    /// For people: what was asked, what is allowed, and how to allow it.
    pub message: String,
}

/// Checks the image the shard's pods would run (`image`: the shard's, else the default).
pub fn check_image(
    shard: &AgentShard,
    image: &str,
    default: Option<&str>,
    allowed: &Allowed,
) -> Result<(), Refused> {
    let own = shard.spec.image.as_deref();
    if own.is_none() || Some(image) == default || allowed.allows(image) {
        return Ok(());
    }
    Err(Refused {
        reason: reason::IMAGE_NOT_ALLOWED,
        message: format!(
            "spec.image {image:?} is not allowed: the operator runs its default agent image ({}) and images matching --allowed-images ({})",
            default.unwrap_or("none"),
            allowed.describe()
        ),
    })
}

/// Checks the ServiceAccount named by `spec.serviceAccountName`, if any.
pub fn check_service_account(
    shard: &AgentShard,
    default: Option<&str>,
    allowed: &Allowed,
) -> Result<(), Refused> {
    let Some(sa) = shard.spec.service_account_name.as_deref() else {
        return Ok(());
    };
    let own = deployment_name(shard.metadata.name.as_deref().unwrap_or_default());
    if sa == own || Some(sa) == default || allowed.allows(sa) {
        return Ok(());
    }
    Err(Refused {
        reason: reason::SERVICE_ACCOUNT_NOT_ALLOWED,
        message: format!(
            "spec.serviceAccountName {sa:?} is not allowed: agent pods run as the shard's own {own:?}{}, or a ServiceAccount matching --allowed-service-accounts ({})",
            default
                .map(|d| format!(", the operator's default {d:?}"))
                .unwrap_or_default(),
            allowed.describe()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(image: Option<&str>, sa: Option<&str>) -> AgentShard {
        let mut s = AgentShard::new(
            "east",
            serde_json::from_value(serde_json::json!({})).expect("spec"),
        );
        s.spec.image = image.map(Into::into);
        s.spec.service_account_name = sa.map(Into::into);
        s
    }

    #[test]
    fn patterns() {
        let a = Allowed::new(["registry.example.com/scale-agent:*", "exact:1", ""]);
        assert!(a.allows("registry.example.com/scale-agent:v2"));
        assert!(a.allows("exact:1"));
        assert!(!a.allows("exact:2"));
        assert!(!a.allows("registry.example.com/other:v2"));
        assert!(Allowed::new(["*"]).allows("anything"));
        assert!(!Allowed::default().allows("anything"));
    }

    #[test]
    fn by_default_only_the_operators_own_image() {
        let none = Allowed::default();
        let default = Some("ghcr.io/scale-agent/scale-agent:v1");
        assert!(
            check_image(
                &shard(None, None),
                "ghcr.io/scale-agent/scale-agent:v1",
                default,
                &none
            )
            .is_ok()
        );
        assert!(
            check_image(
                &shard(Some("ghcr.io/scale-agent/scale-agent:v1"), None),
                "ghcr.io/scale-agent/scale-agent:v1",
                default,
                &none
            )
            .is_ok()
        );
        let r = check_image(
            &shard(Some("evil:latest"), None),
            "evil:latest",
            default,
            &none,
        )
        .expect_err("refused");
        assert_eq!(r.reason, "ImageNotAllowed");
        assert!(r.message.contains("--allowed-images"), "{}", r.message);
        let some = Allowed::new(["evil:*"]);
        assert!(
            check_image(
                &shard(Some("evil:latest"), None),
                "evil:latest",
                default,
                &some
            )
            .is_ok()
        );
    }

    #[test]
    fn by_default_only_the_shards_own_service_account() {
        let none = Allowed::default();
        assert!(check_service_account(&shard(None, None), None, &none).is_ok());
        assert!(check_service_account(&shard(None, Some("east-agent")), None, &none).is_ok());
        assert!(check_service_account(&shard(None, Some("shared")), Some("shared"), &none).is_ok());
        let r = check_service_account(&shard(None, Some("cluster-admin-sa")), None, &none)
            .expect_err("refused");
        assert_eq!(r.reason, "ServiceAccountNotAllowed");
        assert!(
            check_service_account(
                &shard(None, Some("team-x")),
                None,
                &Allowed::new(["team-*"])
            )
            .is_ok()
        );
    }
}
