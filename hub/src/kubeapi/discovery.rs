//! Discovery and OpenAPI from the hub's memory: every kubectl process (and client-go
//! 0.26 every 10 minutes, group by group) asks the cluster what it serves before it
//! does anything. The first answer to each such request passes through to the cluster
//! and is kept, bytes and headers as the cluster served them; later ones are answered
//! from memory, `304 Not Modified` when the client already holds that `ETag`.
//!
//! What is kept is good only while the agent follows the cluster's CustomResourceDefinitions and
//! APIServices (the `ApiSurface` frame): the account's surface number
//! ([`crate::core::cache::AccountCache::api_surface`]) changes with every change the
//! agent reports and is unset when the agent does not follow them (an older agent, no
//! right to watch them) or registers the account anew. Answers kept under another
//! number are dropped, so the next request asks the cluster again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};

/// Answers larger than this are not kept (a cluster's OpenAPI v2 is a few MiB).
pub const MAX_ANSWER: usize = 64 << 20;
/// Answers kept per account at most (a cluster's groups, versions and OpenAPI v3
/// documents, in the few forms clients ask them).
pub const MAX_PER_ACCOUNT: usize = 512;

/// Headers of the cluster's answer that belong to that one request, not to what it
/// served.
const PER_REQUEST: &[&str] = &["date", "audit-id", "content-length"];

/// True for the requests the API server answers with what it serves rather than with
/// objects: `/version`, `/api`, `/apis` and their groups and versions, aggregated
/// discovery (the same paths), `/openapi/v2`, `/openapi/v3` and its documents.
pub fn is_discovery(method: &Method, path: &str) -> bool {
    if method != Method::GET {
        return false;
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        parts.as_slice(),
        ["version"]
            | ["api"]
            | ["api", _]
            | ["apis"]
            | ["apis", _]
            | ["apis", _, _]
            | ["openapi", "v2"]
            | ["openapi", "v3", ..]
    )
}

/// What one kept answer is found by: the request's path and query, and the headers
/// that choose the answer's form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    path_and_query: String,
    accept: Vec<u8>,
    encoding: Vec<u8>,
}

impl Key {
    /// The key of a request.
    pub fn of(path_and_query: &str, headers: &HeaderMap) -> Key {
        let joined = |name: HeaderName| {
            let mut out = Vec::new();
            for v in headers.get_all(name) {
                if !out.is_empty() {
                    out.push(b',');
                }
                out.extend_from_slice(v.as_bytes());
            }
            out
        };
        Key {
            path_and_query: path_and_query.to_owned(),
            accept: joined(header::ACCEPT),
            encoding: joined(header::ACCEPT_ENCODING),
        }
    }
}

/// One answer as the cluster gave it (status 200).
#[derive(Debug)]
pub struct Kept {
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Kept {
    /// The cluster's headers (less the per-request ones) and body.
    pub fn new(headers: &HeaderMap, body: Bytes) -> Kept {
        Kept {
            headers: headers
                .iter()
                .filter(|(n, _)| !PER_REQUEST.contains(&n.as_str()))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            body,
        }
    }

    fn etag(&self) -> Option<&HeaderValue> {
        self.headers
            .iter()
            .find(|(n, _)| *n == header::ETAG)
            .map(|(_, v)| v)
    }

    /// The answer to a request with these headers: `304` when its `If-None-Match`
    /// names the kept `ETag`, else the kept answer.
    pub fn answer(&self, request: &HeaderMap) -> Response<Body> {
        let fresh = self.etag().is_some_and(|etag| {
            request.get_all(header::IF_NONE_MATCH).iter().any(|v| {
                v.to_str().is_ok_and(|v| {
                    v.split(',')
                        .map(str::trim)
                        .any(|t| t == "*" || t.as_bytes() == etag.as_bytes())
                })
            })
        });
        let mut response = if fresh {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        } else {
            Response::new(Body::from(self.body.clone()))
        };
        for (n, v) in &self.headers {
            // A 304 carries the validators and caching headers, not the body's.
            if fresh && matches!(n.as_str(), "content-type" | "content-encoding") {
                continue;
            }
            response.headers_mut().append(n.clone(), v.clone());
        }
        response
    }
}

#[derive(Debug, Default)]
struct Account {
    surface: u64,
    answers: HashMap<Key, Arc<Kept>>,
}

/// Every account's kept answers.
#[derive(Debug, Default)]
pub struct Memory {
    accounts: Mutex<HashMap<String, Account>>,
}

impl Memory {
    /// The answer kept for `key` while the account's surface is `surface`; answers
    /// kept under another surface are dropped.
    pub fn get(&self, account: &str, surface: u64, key: &Key) -> Option<Arc<Kept>> {
        let mut accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        let a = accounts.get_mut(account)?;
        if a.surface != surface {
            accounts.remove(account);
            return None;
        }
        a.answers.get(key).cloned()
    }

    /// Keeps an answer given while the account's surface was `surface`.
    pub fn keep(&self, account: &str, surface: u64, key: Key, kept: Arc<Kept>) {
        let mut accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        let a = accounts.entry(account.to_owned()).or_default();
        if a.surface != surface {
            *a = Account {
                surface,
                answers: HashMap::new(),
            };
        }
        if a.answers.len() < MAX_PER_ACCOUNT || a.answers.contains_key(&key) {
            a.answers.insert(key, kept);
        }
    }

    /// Drops an account's answers (it is gone).
    pub fn forget(&self, account: &str) {
        self.accounts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(account);
    }

    /// Bytes kept, all accounts together.
    pub fn bytes(&self) -> usize {
        self.accounts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .flat_map(|a| a.answers.values())
            .map(|k| k.body.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_paths_and_nothing_else() {
        for p in [
            "/version",
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/openapi/v2",
            "/openapi/v3",
            "/openapi/v3/apis/apps/v1",
        ] {
            assert!(is_discovery(&Method::GET, p), "{p}");
        }
        for p in [
            "/api/v1/pods",
            "/apis/apps/v1/deployments",
            "/apis/apps/v1/namespaces/a/deployments/web",
            "/healthz",
            "/openapi/v4",
        ] {
            assert!(!is_discovery(&Method::GET, p), "{p}");
        }
        assert!(!is_discovery(&Method::POST, "/api"));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn an_answer_is_kept_per_form_and_surface_and_304_for_its_etag() {
        let memory = Memory::default();
        let json = headers(&[("accept", "application/json")]);
        let aggregated = headers(&[(
            "accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        )]);
        let cluster = headers(&[
            ("content-type", "application/json"),
            ("etag", "\"abc\""),
            ("date", "Sun, 06 Dec 2026 11:00:00 GMT"),
            ("audit-id", "1234"),
        ]);
        let kept = Arc::new(Kept::new(
            &cluster,
            Bytes::from_static(b"{\"kind\":\"APIGroupList\"}"),
        ));
        memory.keep("a", 7, Key::of("/apis", &json), Arc::clone(&kept));
        assert!(memory.get("a", 7, &Key::of("/apis", &aggregated)).is_none());
        assert!(memory.get("b", 7, &Key::of("/apis", &json)).is_none());
        let got = memory.get("a", 7, &Key::of("/apis", &json)).expect("kept");
        let ok = got.answer(&json);
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()["etag"], "\"abc\"");
        assert!(ok.headers().get("date").is_none() && ok.headers().get("audit-id").is_none());
        let again = got.answer(&headers(&[("if-none-match", "\"abc\"")]));
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()["etag"], "\"abc\"");
        let other = got.answer(&headers(&[("if-none-match", "\"old\"")]));
        assert_eq!(other.status(), StatusCode::OK);
        // The cluster's APIs changed: what was kept is dropped.
        assert!(memory.get("a", 8, &Key::of("/apis", &json)).is_none());
        assert!(memory.get("a", 7, &Key::of("/apis", &json)).is_none());
        assert_eq!(memory.bytes(), 0);
    }
}
