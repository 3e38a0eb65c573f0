//! A proxy between one component and its API server that records every request it
//! forwards: method, path, and the object a write is about. The benchmark points the
//! operator's kubeconfig at it (plain HTTP on loopback); the proxy forwards with the
//! cluster's admin client. So "API writes per shard" is counted request by request, as
//! the component made them, apart from every other client of the same API server
//! (controllers, the benchmark itself).
//!
//! Streams (watches) are passed through as they come; only request bodies are read
//! whole, to see which object an Event is about.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::{Error, Result};

/// The largest request body the proxy forwards (an AgentShard with 500 accounts, a
/// Secret of kubeconfigs, fit well within it).
const MAX_BODY: usize = 32 << 20;

/// Where a request goes, read from its path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiPath {
    /// API group; empty for the core group.
    pub group: String,
    /// Namespace; empty for cluster-scoped paths.
    pub namespace: String,
    /// Resource (plural), e.g. `configmaps`, `agentshards`.
    pub resource: String,
    /// Object name; empty for collections.
    pub name: String,
    /// Subresource, e.g. `status`.
    pub subresource: String,
}

/// Reads a Kubernetes API path: `/api/v1/...` or `/apis/<group>/<version>/...`, then
/// `namespaces/<ns>/<resource>[/<name>[/<subresource>]]` or
/// `<resource>[/<name>[/<subresource>]]`. `None` for other paths (discovery, `/version`).
pub fn parse_path(path: &str) -> Option<ApiPath> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, resource, tail @ ..] => (*ns, [&[*resource][..], tail].concat()),
        _ => ("", rest.to_vec()),
    };
    let resource = rest.first().filter(|r| !r.is_empty())?;
    Some(ApiPath {
        group: group.into(),
        namespace: namespace.into(),
        resource: (*resource).into(),
        name: rest.get(1).copied().unwrap_or_default().into(),
        subresource: rest.get(2).copied().unwrap_or_default().into(),
    })
}

/// One forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// When it arrived.
    pub at: Instant,
    /// HTTP method.
    pub method: String,
    /// True for a `GET` with `watch=true` (or `watch=1`).
    pub watch: bool,
    /// What the path names; `None` for non-resource paths.
    pub path: Option<ApiPath>,
    /// For an Event (core or events.k8s.io): the name of the object it is about.
    pub regarding: Option<String>,
}

impl Recorded {
    /// True for requests that change something (`POST`, `PUT`, `PATCH`, `DELETE`).
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }

    /// `resource[/subresource]`, e.g. `agentshards/status`; `other` for non-resource
    /// paths.
    pub fn resource(&self) -> String {
        match &self.path {
            Some(p) if p.subresource.is_empty() => p.resource.clone(),
            Some(p) => format!("{}/{}", p.resource, p.subresource),
            None => "other".into(),
        }
    }
}

/// The object an Event body is about: `regarding.name` (events.k8s.io/v1) or
/// `involvedObject.name` (core v1).
pub fn event_subject(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    ["regarding", "involvedObject"]
        .iter()
        .find_map(|k| v.get(k)?.get("name")?.as_str().map(str::to_owned))
}

struct Inner {
    upstream: kube::Client,
    log: Mutex<Vec<Recorded>>,
}

/// A running proxy; dropping it stops it.
pub struct ApiProxy {
    /// `http://127.0.0.1:<port>`: the server URL for the component's kubeconfig.
    pub url: String,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ApiProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiProxy").field("url", &self.url).finish()
    }
}

impl ApiProxy {
    /// Starts a proxy to the cluster of the admin kubeconfig `upstream`.
    pub async fn start(upstream: &Path) -> Result<ApiProxy> {
        let client = crate::kubeconfig::client(upstream).await?;
        let inner = Arc::new(Inner {
            upstream: client,
            log: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(|e| Error::io("binding the API proxy on", "127.0.0.1:0", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the address of", "the API proxy", e))?;
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&inner));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "the API proxy stopped");
            }
        });
        Ok(ApiProxy {
            url: format!("http://{addr}"),
            inner,
            task,
        })
    }

    /// Writes a kubeconfig at `path` whose cluster is this proxy (no credentials: the
    /// proxy adds the admin's).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: {}\nusers:\n- name: proxy\n  user: {{}}\ncontexts:\n- name: proxy\n  context:\n    cluster: proxy\n    user: proxy\ncurrent-context: proxy\n",
            self.url
        );
        crate::kubeconfig::write(path, &text)
    }

    /// Every request forwarded so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The requests that arrived at or after `since`.
    pub fn requests_since(&self, since: Instant) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.at >= since)
            .collect()
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Headers that belong to one hop, not to the request or response.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host" | "connection" | "transfer-encoding" | "keep-alive" | "upgrade" | "content-length"
    )
}

async fn forward(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let path = parse_path(parts.uri.path());
    let watch = parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let regarding = match &path {
        Some(p) if p.resource == "events" && !body.is_empty() => event_subject(&body),
        _ => None,
    };
    if let Ok(mut log) = inner.log.lock() {
        log.push(Recorded {
            at: Instant::now(),
            method: parts.method.as_str().to_owned(),
            watch,
            path,
            regarding,
        });
    }
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    let mut builder = http::Request::builder().method(parts.method).uri(uri);
    for (k, v) in &parts.headers {
        if !hop_by_hop(k) {
            builder = builder.header(k, v);
        }
    }
    let request = match builder.body(kube::client::Body::from(body.to_vec())) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match inner.upstream.send(request).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            let drop: Vec<HeaderName> = parts
                .headers
                .keys()
                .filter(|k| {
                    matches!(
                        k.as_str(),
                        "connection" | "transfer-encoding" | "keep-alive"
                    )
                })
                .cloned()
                .collect();
            for k in drop {
                parts.headers.remove(k);
            }
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("API proxy: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_group_namespace_resource_object_and_subresource() {
        assert_eq!(
            parse_path("/apis/scaleagent.dev/v1alpha1/namespaces/team-a/agentshards/east/status"),
            Some(ApiPath {
                group: "scaleagent.dev".into(),
                namespace: "team-a".into(),
                resource: "agentshards".into(),
                name: "east".into(),
                subresource: "status".into(),
            })
        );
        assert_eq!(
            parse_path("/api/v1/namespaces/team-a/configmaps"),
            Some(ApiPath {
                namespace: "team-a".into(),
                resource: "configmaps".into(),
                ..ApiPath::default()
            })
        );
        // A namespace itself is a cluster-scoped object.
        assert_eq!(
            parse_path("/api/v1/namespaces/team-a"),
            Some(ApiPath {
                resource: "namespaces".into(),
                name: "team-a".into(),
                ..ApiPath::default()
            })
        );
        assert_eq!(
            parse_path("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/x")
                .map(|p| (p.group, p.resource, p.name)),
            Some((
                "admissionregistration.k8s.io".into(),
                "validatingwebhookconfigurations".into(),
                "x".into()
            ))
        );
        assert_eq!(parse_path("/version"), None);
        assert_eq!(parse_path("/apis"), None);
    }

    #[test]
    fn events_are_about_their_regarding_or_involved_object() {
        assert_eq!(
            event_subject(br#"{"regarding":{"kind":"AgentShard","name":"east"}}"#).as_deref(),
            Some("east")
        );
        assert_eq!(
            event_subject(br#"{"involvedObject":{"name":"west"}}"#).as_deref(),
            Some("west")
        );
        assert_eq!(event_subject(b"{}"), None);
        assert_eq!(event_subject(b"not json"), None);
    }

    #[test]
    fn writes_and_resources_are_told_apart() {
        let r = Recorded {
            at: Instant::now(),
            method: "PATCH".into(),
            watch: false,
            path: parse_path("/apis/scaleagent.dev/v1alpha1/namespaces/a/agentshards/e/status"),
            regarding: None,
        };
        assert!(r.is_write());
        assert_eq!(r.resource(), "agentshards/status");
        let get = Recorded {
            method: "GET".into(),
            path: None,
            ..r
        };
        assert!(!get.is_write());
        assert_eq!(get.resource(), "other");
    }
}
