//! Which reads the hub answers from its cache, decided from the request alone: lists
//! (with label and field selectors, `limit`/`continue`) and watches of the kinds the
//! account's agent streams, with the cluster's own resourceVersions. Lists and their
//! pages are written by [`super::list`], watches by [`super::watch`].
//!
//! A read is answered from the cache only when the answer is exactly what the cluster
//! would give (up to the stream's lag, which [`super::barrier`] closes for the
//! client's own writes); everything else goes to the cluster:
//! - anything but a GET of a collection or of one object by name, subresources,
//!   Secrets (the stream scrubs their data);
//! - one object by name that the cache does not hold (it may be newer than the
//!   stream), with any parameter but `resourceVersion` (and `includeObject` of a
//!   Table), or read by a kubectl command
//!   that computes a write from it (`Kubectl-Command` other than `kubectl get`, such
//!   as the read `kubectl apply` makes before it patches): those read the cluster;
//! - a kind the agent does not stream, at another version, mid-relist, or outside the
//!   account's namespaces or label filter;
//! - metadata-only answers, Tables of kinds the hub has no printer for
//!   ([`super::table`], [`super::columns`]), `pretty`,
//!   `resourceVersionMatch=Exact`, parameters the hub does not know, selectors it
//!   cannot evaluate exactly (a field the kind does not index, a selector the API
//!   server would refuse), and a `continue` token the cluster issued.
//!
//! Streaming lists (`watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan`,
//! client-go's informers since 0.35) are watches that start with every object; list
//! options the API server refuses get its own `422` ([`super::options`]).

use std::time::Duration;

use http::{HeaderMap, Method};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::list::Token;
use super::options::{self, NOT_OLDER_THAN, go_bool};
use super::path::ResourcePath;
use super::selector::{self, FieldSelector, LabelSelector};
use super::table::{self, Include, Media, TableAsk};
use crate::core::cache::{KindKey, Scope};
use crate::core::window::Labels;
/// Why a read goes to the cluster (for logs).
pub type Pass = &'static str;

/// Which version of the data a read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `resourceVersion` unset: the most recent.
    Latest,
    /// `resourceVersion=0`: any.
    Any,
    /// `resourceVersion=N` (not older than N).
    NotOlderThan(u64),
}

/// A watch's own parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchAsk {
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// The watch starts with every current object as ADDED (`sendInitialEvents=true`,
    /// or no resourceVersion or "0" without `sendInitialEvents`, as the API server
    /// defaults it); with `bookmarks`, a BOOKMARK marked
    /// `k8s.io/initial-events-end: "true"` follows them.
    pub initial_events: bool,
}

/// A read the cache may answer, as the request asks it.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    /// The namespace, when the path names one.
    pub namespace: Option<String>,
    /// One object by name (a GET of `<resource>/<name>`), not a collection.
    pub name: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// `limit` (0: none).
    pub limit: usize,
    /// A `continue` token the hub issued.
    pub cont: Option<Token>,
    /// `resourceVersion`.
    pub version: Version,
    /// Set for `watch=true`.
    pub watch: Option<WatchAsk>,
    /// Set when the answer is a `Table` (`Accept: ...;as=Table;v=v1;g=meta.k8s.io`).
    pub table: Option<TableAsk>,
    /// The client prefers Kubernetes protobuf, JSON second (client-go for built-in
    /// kinds): protobuf when the kind transcodes ([`super::protobuf`]).
    pub protobuf: bool,
}

/// Decides from the request alone whether the cache may answer it.
pub fn plan(
    method: &Method,
    path: &ResourcePath,
    query: &[(String, String)],
    headers: &HeaderMap,
) -> Result<Read, Pass> {
    if method != Method::GET {
        return Err("not a GET");
    }
    if path.name.is_some() && !reads_to_show(headers) {
        return Err("one object read by a kubectl command that writes what it read");
    }
    if path.subresource.is_some() {
        return Err("a subresource");
    }
    if path.group.is_empty() && path.resource == "secrets" {
        return Err("Secrets");
    }
    let media = table::wanted(headers)?;
    let mut read = Read {
        namespace: path.namespace.clone(),
        name: path.name.clone(),
        labels: LabelSelector::default(),
        fields: FieldSelector::default(),
        limit: 0,
        cont: None,
        version: Version::Latest,
        watch: None,
        table: (media == Media::Table).then_some(TableAsk {
            include: Include::Metadata,
        }),
        protobuf: media == Media::Protobuf,
    };
    let mut watch = false;
    let mut bookmarks = false;
    let mut timeout = None;
    let mut rv: Option<&str> = None;
    for (k, v) in query {
        match k.as_str() {
            "labelSelector" => read.labels = selector::parse_labels(v).ok_or("label selector")?,
            "fieldSelector" => read.fields = selector::parse_fields(v).ok_or("field selector")?,
            "limit" => {
                read.limit = match v.parse::<i64>() {
                    Ok(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
                    Ok(_) => 0,
                    Err(_) => return Err("limit"),
                }
            }
            "continue" if v.is_empty() => {}
            "continue" => {
                read.cont = Some(Token::decode(v).ok_or("a continue token the hub did not issue")?)
            }
            "resourceVersion" => rv = Some(v),
            "resourceVersionMatch" if v.is_empty() || v == NOT_OLDER_THAN => {}
            "sendInitialEvents" => {}
            "watch" => watch = go_bool(v),
            "allowWatchBookmarks" => bookmarks = go_bool(v),
            "timeoutSeconds" => {
                let s: u64 = v.parse().map_err(|_| "timeoutSeconds")?;
                timeout = (s > 0).then(|| Duration::from_secs(s));
            }
            // kubectl's request timeout: the answer comes from memory, far sooner.
            "timeout" => {}
            "includeObject" => {
                if let Some(t) = &mut read.table {
                    t.include = table::include(v)?;
                }
            }
            _ => return Err("a parameter the hub does not answer itself"),
        }
    }
    read.version = match rv {
        None | Some("") => Version::Latest,
        Some("0") => Version::Any,
        Some(n) => Version::NotOlderThan(n.parse().map_err(|_| "an opaque resourceVersion")?),
    };
    if read.name.is_some() {
        // The API server reads one object with `resourceVersion` alone (and, for a
        // Table, `includeObject`).
        let allowed = |k: &str| {
            matches!(k, "resourceVersion" | "timeout")
                || (k == "includeObject" && read.table.is_some())
        };
        if query.iter().any(|(k, _)| !allowed(k)) {
            return Err("one object by name with list or watch parameters");
        }
        return Ok(read);
    }
    let given = options::ListOptions::from_query(query);
    if !options::validate(&given).is_empty() {
        return Err("list options the API server refuses");
    }
    if watch {
        if read.cont.is_some() || read.limit > 0 {
            return Err("a watch with limit or continue");
        }
        // The API server's defaults: a watch from no version or "0" that says
        // nothing of initial events gets them.
        let initial_events = given.send_initial_events.unwrap_or(
            given.resource_version_match.is_empty()
                && matches!(read.version, Version::Latest | Version::Any),
        );
        read.watch = Some(WatchAsk {
            bookmarks,
            timeout,
            initial_events,
        });
    } else if read.cont.is_some() && rv.is_some_and(|v| !v.is_empty()) {
        return Err("continue with a resourceVersion");
    }
    Ok(read)
}

/// The header kubectl (since 1.22, unless `KUBECTL_COMMAND_HEADERS=false`) names its
/// command in.
pub const KUBECTL_COMMAND: &str = "kubectl-command";

/// False when the request comes from a kubectl command that computes a write from
/// what it reads (`kubectl apply`, `edit`, `patch`, `scale`, ...): the object it
/// patches must be the cluster's own, not the cache's copy a moment behind; and from
/// a kubectl older than 1.21, which prints `managedFields` (the cache has none).
/// Every other client, and `kubectl get`, reads what the cache shows.
fn reads_to_show(headers: &HeaderMap) -> bool {
    let command = headers
        .get(KUBECTL_COMMAND)
        .is_none_or(|c| c.to_str().is_ok_and(|c| c == "kubectl get"));
    command && !prints_managed_fields(headers)
}

/// kubectl's User-Agent is `kubectl/v1.<minor>.<patch> (...)`; before 1.21 it printed
/// `managedFields` with `-o json|yaml`.
fn prints_managed_fields(headers: &HeaderMap) -> bool {
    let agent = headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(version) = agent.strip_prefix("kubectl/v1.") else {
        return false;
    };
    let minor: String = version.chars().take_while(char::is_ascii_digit).collect();
    minor.parse::<u32>().is_ok_and(|m| m < 21)
}

/// True when the account's agent streams every object the read could select.
pub fn in_scope(scope: &Scope, read: &Read, kind: &KindKey) -> bool {
    let namespace_object = kind.group.is_empty() && kind.kind == "Namespace";
    if !scope.namespaces.is_empty() || !scope.omit_namespaces.is_empty() {
        if namespace_object {
            return false;
        }
        match &read.namespace {
            None if !scope.namespaces.is_empty() => return false,
            None if !scope.omit_namespaces.is_empty() => {
                // All namespaces but the omitted ones: only when the read leaves them
                // out too, which a field selector can say.
                let excluded = |ns: &String| {
                    read.fields
                        .0
                        .iter()
                        .any(|r| r.field == "metadata.namespace" && r.negated && r.value == *ns)
                };
                if !scope.omit_namespaces.iter().all(excluded) {
                    return false;
                }
            }
            None => {}
            Some(ns)
                if (!scope.namespaces.is_empty() && !scope.namespaces.contains(ns))
                    || scope.omit_namespaces.contains(ns) =>
            {
                return false;
            }
            Some(_) => {}
        }
    }
    if !scope.label_selector.is_empty() {
        match selector::parse_labels(&scope.label_selector) {
            Some(required) => {
                if !read.labels.implies(&required) {
                    return false;
                }
            }
            None => return false,
        }
    }
    true
}

#[derive(Deserialize, Default)]
struct Meta {
    #[serde(default)]
    labels: Option<Labels>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
}

#[derive(Deserialize)]
struct WithMeta {
    #[serde(default)]
    metadata: Option<Meta>,
}

/// True when the object (whose namespace and name are read from its body) passes the
/// read's selectors.
pub fn selected_object(read: &Read, kind: &KindKey, body: &RawValue) -> bool {
    if read.labels.is_empty() && read.fields.is_empty() {
        return true;
    }
    let Meta {
        labels,
        name,
        namespace,
    } = serde_json::from_str::<WithMeta>(body.get())
        .ok()
        .and_then(|o| o.metadata)
        .unwrap_or_default();
    let labels = labels.unwrap_or_default();
    selected(read, kind, &namespace, &name, || &labels, body)
}

/// True when the object passes the read's selectors; `labels` gives the object's
/// labels (asked only when the read selects by label).
pub fn selected<'l>(
    read: &Read,
    kind: &KindKey,
    namespace: &str,
    name: &str,
    labels: impl FnOnce() -> &'l Labels,
    body: &RawValue,
) -> bool {
    if !read.labels.is_empty() && !read.labels.matches(labels()) {
        return false;
    }
    if !read.fields.is_empty() {
        let object = if read.fields.only_metadata() {
            Value::Null
        } else {
            serde_json::from_str(body.get()).unwrap_or(Value::Null)
        };
        if !read
            .fields
            .matches(&kind.group, &kind.kind, namespace, name, &object)
        {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, header};

    fn rp(ns: Option<&str>, resource: &str, name: Option<&str>) -> ResourcePath {
        ResourcePath {
            group: "apps".into(),
            version: "v1".into(),
            namespace: ns.map(Into::into),
            resource: resource.into(),
            name: name.map(Into::into),
            subresource: None,
        }
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn accept(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn only_plain_collection_reads_are_planned_for_the_cache() {
        let list = rp(Some("a"), "deployments", None);
        let none = HeaderMap::new();
        assert!(plan(&Method::GET, &list, &[], &none).is_ok());
        assert!(plan(&Method::POST, &list, &[], &none).is_err());
        let mut secrets = rp(Some("a"), "secrets", None);
        secrets.group = String::new();
        assert!(plan(&Method::GET, &secrets, &[], &none).is_err());
        let mut sub = list.clone();
        sub.subresource = Some("status".into());
        assert!(plan(&Method::GET, &sub, &[], &none).is_err());
        assert!(plan(&Method::GET, &list, &[], &accept("application/json")).is_ok());
        assert!(plan(&Method::GET, &list, &[], &accept("application/json, */*")).is_ok());
        assert!(
            plan(
                &Method::GET,
                &list,
                &[],
                &accept("application/vnd.kubernetes.protobuf, application/json")
            )
            .is_ok()
        );
        assert!(
            plan(
                &Method::GET,
                &list,
                &[],
                &accept("application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
            )
            .is_ok_and(|r| r.table.is_some())
        );
        assert!(
            plan(
                &Method::GET,
                &list,
                &[],
                &accept("application/vnd.kubernetes.protobuf")
            )
            .is_err()
        );
        for pass in [
            ("pretty", "true"),
            ("sendInitialEvents", "true"),
            ("resourceVersionMatch", "NotOlderThan"),
            ("resourceVersionMatch", "Exact"),
            ("labelSelector", "a in ("),
            ("resourceVersion", "abc"),
            ("continue", "a-token-from-the-cluster"),
            ("somethingNew", "1"),
        ] {
            assert!(
                plan(&Method::GET, &list, &q(&[pass]), &none).is_err(),
                "{pass:?}"
            );
        }
        let read = plan(
            &Method::GET,
            &list,
            &q(&[
                ("labelSelector", "app=web"),
                ("limit", "500"),
                ("resourceVersion", "0"),
                ("timeout", "32s"),
            ]),
            &none,
        )
        .expect("planned");
        assert_eq!(read.limit, 500);
        assert_eq!(read.version, Version::Any);
        assert!(read.watch.is_none());
        let watch = plan(
            &Method::GET,
            &list,
            &q(&[
                ("watch", "true"),
                ("resourceVersion", "42"),
                ("allowWatchBookmarks", "true"),
                ("timeoutSeconds", "300"),
            ]),
            &none,
        )
        .expect("planned");
        assert_eq!(watch.version, Version::NotOlderThan(42));
        assert_eq!(
            watch.watch,
            Some(WatchAsk {
                bookmarks: true,
                timeout: Some(Duration::from_secs(300)),
                initial_events: false,
            })
        );
    }

    #[test]
    fn one_object_by_name_is_planned_unless_a_kubectl_write_reads_it() {
        let one = rp(Some("a"), "deployments", Some("web"));
        let none = HeaderMap::new();
        let read =
            plan(&Method::GET, &one, &q(&[("resourceVersion", "0")]), &none).expect("planned");
        assert_eq!(read.name.as_deref(), Some("web"));
        assert_eq!(read.version, Version::Any);
        let command = |c: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(KUBECTL_COMMAND, HeaderValue::from_static(c));
            h
        };
        assert!(plan(&Method::GET, &one, &[], &command("kubectl get")).is_ok());
        let agent = |a: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::USER_AGENT, HeaderValue::from_static(a));
            h
        };
        assert!(
            plan(
                &Method::GET,
                &one,
                &[],
                &agent("kubectl/v1.20.2 (linux/amd64) kubernetes/faecb19")
            )
            .is_err(),
            "kubectl 1.20 prints managedFields"
        );
        for newer in [
            "kubectl/v1.36.3 (linux/amd64) kubernetes/abc",
            "kubectl1.20",
            "Go-http-client/2.0",
        ] {
            assert!(
                plan(&Method::GET, &one, &[], &agent(newer)).is_ok(),
                "{newer}"
            );
        }
        for writes in ["kubectl apply", "kubectl edit", "kubectl scale"] {
            assert!(
                plan(&Method::GET, &one, &[], &command(writes)).is_err(),
                "{writes}"
            );
        }
        for pass in [
            ("labelSelector", "app=web"),
            ("watch", "true"),
            ("pretty", "1"),
        ] {
            assert!(
                plan(&Method::GET, &one, &q(&[pass]), &none).is_err(),
                "{pass:?}"
            );
        }
        let table = accept("application/json;as=Table;v=v1;g=meta.k8s.io,application/json");
        assert!(
            plan(&Method::GET, &one, &[], &table).is_ok_and(|r| r.table.is_some()),
            "a Table of one object (kubectl get deploy web)"
        );
        assert!(
            plan(&Method::GET, &one, &q(&[("includeObject", "None")]), &table).is_ok(),
            "a Table of one object without the object"
        );
        assert!(
            plan(&Method::GET, &one, &q(&[("includeObject", "None")]), &none).is_err(),
            "includeObject without a Table"
        );
    }

    fn scope(ns: &[&str], omit: &[&str], labels: &str) -> Scope {
        Scope {
            namespaces: ns.iter().map(|s| (*s).to_owned()).collect(),
            omit_namespaces: omit.iter().map(|s| (*s).to_owned()).collect(),
            label_selector: labels.into(),
        }
    }

    fn read(ns: Option<&str>, query: &[(&str, &str)]) -> Read {
        plan(
            &Method::GET,
            &rp(ns, "deployments", None),
            &q(query),
            &HeaderMap::new(),
        )
        .expect("planned")
    }

    #[test]
    fn reads_outside_what_the_agent_streams_go_to_the_cluster() {
        let deploy = KindKey {
            group: "apps".into(),
            kind: "Deployment".into(),
        };
        let ns_kind = KindKey {
            group: String::new(),
            kind: "Namespace".into(),
        };
        let everything = Scope::default();
        assert!(in_scope(&everything, &read(None, &[]), &deploy));
        let two = scope(&["a", "b"], &[], "");
        assert!(in_scope(&two, &read(Some("a"), &[]), &deploy));
        assert!(!in_scope(&two, &read(Some("c"), &[]), &deploy));
        assert!(!in_scope(&two, &read(None, &[]), &deploy));
        assert!(!in_scope(&two, &read(None, &[]), &ns_kind));
        let omit = scope(&[], &["kube-system"], "");
        assert!(!in_scope(&omit, &read(Some("kube-system"), &[]), &deploy));
        assert!(in_scope(&omit, &read(Some("a"), &[]), &deploy));
        assert!(!in_scope(&omit, &read(None, &[]), &deploy));
        assert!(in_scope(
            &omit,
            &read(
                None,
                &[("fieldSelector", "metadata.namespace!=kube-system")]
            ),
            &deploy
        ));
        let managed = scope(&[], &[], "app.kubernetes.io/managed-by=spinnaker");
        assert!(!in_scope(&managed, &read(Some("a"), &[]), &deploy));
        assert!(in_scope(
            &managed,
            &read(
                Some("a"),
                &[(
                    "labelSelector",
                    "app.kubernetes.io/managed-by=spinnaker,app=web"
                )]
            ),
            &deploy
        ));
    }
}
