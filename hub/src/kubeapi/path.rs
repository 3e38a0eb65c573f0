//! Paths of the per-account Kubernetes API: which account a request is for, whether
//! the rest of its path is safe to replay against that account's cluster, and what a
//! Kubernetes API path names (group, version, namespace, resource, name, subresource),
//! the way the API server reads it.
//!
//! The account's API lives at `/accounts/<account>/`; what follows is the path as the
//! cluster would get it. That path is replayed under the cluster's URL, which may
//! itself have a path (a cluster reached through a proxy such as Rancher's), so a path
//! that could climb out of it (`..`, `.`, encoded dots or slashes, backslashes, empty
//! segments) is refused rather than replayed.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use crate::core::registry::validate_name;

/// The prefix of every per-account path.
pub const PREFIX: &str = "/accounts/";

/// Why a path is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/accounts/<account>`.
    #[error("the Kubernetes API of an account is served under /accounts/<account>/")]
    NotAccount,
    /// The account name is not one an account can have.
    #[error("{0}")]
    BadAccount(String),
    /// The path could leave the cluster's API root.
    #[error(
        "the path {0:?} is not a plain Kubernetes API path (dot segments, encoded slashes and empty segments are refused)"
    )]
    Unsafe(String),
}

/// Splits `/accounts/<account>/<rest>` into the account and `/<rest>` (just `/` when
/// there is no rest).
pub fn route(path: &str) -> Result<(&str, &str), PathError> {
    let after = path.strip_prefix(PREFIX).ok_or(PathError::NotAccount)?;
    let (account, rest) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    if account.is_empty() {
        return Err(PathError::NotAccount);
    }
    validate_name(account).map_err(PathError::BadAccount)?;
    check(rest)?;
    Ok((account, rest))
}

/// Refuses a path that is not a plain absolute path of segments.
pub fn check(path: &str) -> Result<(), PathError> {
    let unsafe_path = || PathError::Unsafe(path.chars().take(200).collect());
    if !path.starts_with('/') || path.contains('\\') {
        return Err(unsafe_path());
    }
    let body = &path[1..];
    if body.is_empty() {
        return Ok(());
    }
    // A trailing slash is allowed (`/api/`), an empty segment anywhere else is not.
    let body = body.strip_suffix('/').unwrap_or(body);
    for segment in body.split('/') {
        let lower = segment.to_ascii_lowercase();
        if segment.is_empty()
            || lower.contains("%2f")
            || lower.contains("%5c")
            || lower.contains("%00")
        {
            return Err(unsafe_path());
        }
        let decoded = percent_decode_str(segment).decode_utf8_lossy();
        if decoded == "." || decoded == ".." {
            return Err(unsafe_path());
        }
    }
    Ok(())
}

/// What a Kubernetes API path names, as the API server's request-info parser reads
/// it. `None` for paths that name no resource (`/api`, `/apis/apps/v1`, `/version`,
/// `/openapi/v2`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    /// API group; empty for the core group (`/api/v1`).
    pub group: String,
    /// API version.
    pub version: String,
    /// The namespace the path is in, if any.
    pub namespace: Option<String>,
    /// The resource (plural), e.g. `deployments`.
    pub resource: String,
    /// The object's name, for a path that names one object.
    pub name: Option<String>,
    /// The subresource, e.g. `status`, `scale`, `log`.
    pub subresource: Option<String>,
}

/// Subresources of a namespace that the API server reads as such rather than as a
/// resource inside the namespace (`/api/v1/namespaces/x/status`).
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

fn segment(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Parses the path part (no query) of a Kubernetes API request.
pub fn resource_path(path: &str) -> Option<ResourcePath> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (String::new(), (*version).to_owned(), rest),
        ["apis", group, version, rest @ ..] => ((*group).to_owned(), (*version).to_owned(), rest),
        _ => return None,
    };
    let mut rest: Vec<String> = rest.iter().map(|s| segment(s)).collect();
    if rest.is_empty() || rest[0].is_empty() {
        return None;
    }
    let mut namespace = None;
    if rest[0] == "namespaces" && rest.len() > 1 {
        namespace = Some(rest[1].clone());
        if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2].as_str()) {
            rest.drain(..2);
        } else {
            // `/namespaces/<name>[/status|finalize]`: the Namespace object itself.
            let name = namespace.take();
            return Some(ResourcePath {
                group,
                version,
                namespace: None,
                resource: "namespaces".into(),
                name,
                subresource: rest.get(2).cloned(),
            });
        }
    }
    let mut it = rest.into_iter();
    let resource = it.next()?;
    let name = it.next();
    let subresource = it.next();
    if it.next().is_some() {
        // Deeper paths are proxy subresources (`pods/x/proxy/...`): not a read of
        // an object in any case this module cares about.
        return Some(ResourcePath {
            group,
            version,
            namespace,
            resource,
            name,
            subresource: Some("proxy".into()),
        });
    }
    Some(ResourcePath {
        group,
        version,
        namespace,
        resource,
        name,
        subresource,
    })
}

/// The query parameters of a request, decoded as Go's `url.ParseQuery` does (`+` is a
/// space). Repeated keys keep their first value, as the API server's parameter
/// decoding does.
pub fn query(raw: Option<&str>) -> Vec<(String, String)> {
    let Some(raw) = raw else {
        return Vec::new();
    };
    let decode = |s: &str| -> String {
        let spaced: Cow<'_, str> = if s.contains('+') {
            Cow::Owned(s.replace('+', " "))
        } else {
            Cow::Borrowed(s)
        };
        percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k);
        if out.iter().any(|(seen, _)| *seen == k) {
            continue;
        }
        out.push((k, decode(v)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_split_account_and_rest() {
        assert_eq!(
            route("/accounts/prod-1/api/v1/pods"),
            Ok(("prod-1", "/api/v1/pods"))
        );
        assert_eq!(route("/accounts/prod-1"), Ok(("prod-1", "/")));
        assert_eq!(route("/accounts/prod-1/"), Ok(("prod-1", "/")));
        assert_eq!(
            route("/accounts/a.b:c@d_e/apis"),
            Ok(("a.b:c@d_e", "/apis"))
        );
        assert_eq!(route("/v1/accounts"), Err(PathError::NotAccount));
        assert_eq!(route("/accounts/"), Err(PathError::NotAccount));
        assert!(matches!(
            route("/accounts/a%20b/api"),
            Err(PathError::BadAccount(_))
        ));
    }

    #[test]
    fn paths_that_could_climb_out_of_the_cluster_root_are_refused() {
        for bad in [
            "/accounts/a/../b/api",
            "/accounts/a/api/../../x",
            "/accounts/a/api/./v1",
            "/accounts/a/api/%2e%2e/x",
            "/accounts/a/api/%2E./x",
            "/accounts/a/api/v1%2Fpods",
            "/accounts/a/api/v1%5cpods",
            "/accounts/a//api",
            "/accounts/a/api//v1",
            "/accounts/a/api\\v1",
            "/accounts/a/api/%00",
        ] {
            assert!(
                matches!(route(bad), Err(PathError::Unsafe(_))),
                "{bad} should be refused"
            );
        }
        for good in [
            "/accounts/a/api/v1/namespaces/x/pods/p/log",
            "/accounts/a/api/",
            "/accounts/a/openapi/v3/apis/apps/v1",
            "/accounts/a/apis/apps/v1/namespaces/x/deployments/a..b",
        ] {
            assert!(route(good).is_ok(), "{good} should be served");
        }
    }

    fn rp(
        group: &str,
        ns: Option<&str>,
        resource: &str,
        name: Option<&str>,
        sub: Option<&str>,
    ) -> ResourcePath {
        ResourcePath {
            group: group.into(),
            version: "v1".into(),
            namespace: ns.map(Into::into),
            resource: resource.into(),
            name: name.map(Into::into),
            subresource: sub.map(Into::into),
        }
    }

    #[test]
    fn resource_paths_read_like_the_api_server() {
        assert_eq!(
            resource_path("/api/v1/pods"),
            Some(rp("", None, "pods", None, None))
        );
        assert_eq!(
            resource_path("/api/v1/namespaces/a/pods/p/log"),
            Some(rp("", Some("a"), "pods", Some("p"), Some("log")))
        );
        assert_eq!(
            resource_path("/apis/apps/v1/namespaces/a/deployments/web/scale"),
            Some(rp(
                "apps",
                Some("a"),
                "deployments",
                Some("web"),
                Some("scale")
            ))
        );
        // The Namespace object and its subresources.
        assert_eq!(
            resource_path("/api/v1/namespaces"),
            Some(rp("", None, "namespaces", None, None))
        );
        assert_eq!(
            resource_path("/api/v1/namespaces/a"),
            Some(rp("", None, "namespaces", Some("a"), None))
        );
        assert_eq!(
            resource_path("/api/v1/namespaces/a/status"),
            Some(rp("", None, "namespaces", Some("a"), Some("status")))
        );
        assert_eq!(
            resource_path("/api/v1/namespaces/a/configmaps"),
            Some(rp("", Some("a"), "configmaps", None, None))
        );
        assert_eq!(
            resource_path("/api/v1/nodes/n1"),
            Some(rp("", None, "nodes", Some("n1"), None))
        );
        assert_eq!(
            resource_path("/api/v1/namespaces/a/pods/p/proxy/x/y").map(|r| r.subresource),
            Some(Some("proxy".into()))
        );
        for none in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps/v1",
            "/version",
            "/openapi/v2",
        ] {
            assert_eq!(resource_path(none), None, "{none}");
        }
    }

    #[test]
    fn queries_decode_like_go() {
        let q = query(Some(
            "labelSelector=app%3Dweb%2Ctier+in+(a%2Cb)&limit=500&limit=7&watch",
        ));
        assert_eq!(
            q,
            vec![
                ("labelSelector".into(), "app=web,tier in (a,b)".into()),
                ("limit".into(), "500".into()),
                ("watch".into(), String::new()),
            ]
        );
        assert!(query(None).is_empty());
    }
}
