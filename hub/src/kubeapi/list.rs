//! Lists answered from the cache: the objects taken under the cache's lock, filtered
//! by the read's selectors and written as the API server writes a list, in pages.
//!
//! Pages of one list come from one snapshot of the cache taken at its first page, so
//! they are consistent with each other as the API server's are; a snapshot is kept for
//! [`SNAPSHOT_TTL`], after which its token gets `410 Gone` as an expired one does from
//! the API server.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use base64::Engine as _;
use http::{HeaderValue, Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::protobuf;
use super::read::{Read, selected_object};
use super::status::Failure;
use super::table;
use crate::core::cache::{AccountCache, KindKey};

/// How long the pages of a list stay available after its first page.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(90);
/// Lists kept for their next pages at most.
const MAX_SNAPSHOTS: usize = 64;

/// One object of a list: its body as cached, shared with the cache (taking a list
/// under the cache's lock copies nothing else).
#[derive(Debug, Clone)]
pub struct Item {
    /// The object as cached.
    pub body: Arc<RawValue>,
}

/// What a list is made of, taken from the cache under its lock (cheap: names and
/// shared bodies), to be filtered and written outside it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The kind.
    pub kind: KindKey,
    /// `group/version` (or `version` for the core group).
    pub api_version: String,
    /// The resourceVersion the list is current to.
    pub rv: u64,
    /// The objects, in the API server's order (namespace, then name).
    pub items: Vec<Item>,
}

/// Takes the objects of `kind` (in `namespace`) from the account's cache.
pub fn take(
    cache: &AccountCache,
    kind: &KindKey,
    version: &str,
    namespace: Option<&str>,
    rv: u64,
) -> Listed {
    let items = cache
        .objects_of(kind, namespace)
        .map(|(_, o)| Item {
            body: Arc::clone(&o.body),
        })
        .collect();
    Listed {
        kind: kind.clone(),
        api_version: if kind.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", kind.group)
        },
        rv,
        items,
    }
}

/// API groups served by the API server itself: their list items carry no
/// `apiVersion`/`kind` (those of custom resources do).
fn built_in(group: &str) -> bool {
    matches!(
        group,
        "" | "apps"
            | "batch"
            | "autoscaling"
            | "policy"
            | "networking.k8s.io"
            | "rbac.authorization.k8s.io"
            | "storage.k8s.io"
            | "apiextensions.k8s.io"
            | "admissionregistration.k8s.io"
            | "apiregistration.k8s.io"
            | "certificates.k8s.io"
            | "coordination.k8s.io"
            | "discovery.k8s.io"
            | "events.k8s.io"
            | "flowcontrol.apiserver.k8s.io"
            | "node.k8s.io"
            | "scheduling.k8s.io"
            | "resource.k8s.io"
            | "storagemigration.k8s.io"
            | "internal.apiserver.k8s.io"
    )
}

/// The object's JSON without its top-level `apiVersion` and `kind`, keeping the
/// order of the other fields.
///
/// The objects the agent streams are written with their keys in order, so they begin
/// `{"apiVersion":"…","kind":"…",`: that prefix is cut off without parsing the object
/// (a list of 10,000 objects used to parse each one here: the hub's largest CPU cost
/// when serving lists). Anything else is parsed.
fn without_type(body: &RawValue) -> Option<String> {
    if let Some(rest) = after_leading_type(body.get()) {
        let mut out = String::with_capacity(rest.len() + 1);
        out.push('{');
        out.push_str(rest);
        return Some(out);
    }
    without_type_parsed(body)
}

/// What follows `{"apiVersion":"<plain>","kind":"<plain>",` in `json` (values with no
/// escapes), or `None` when `json` does not begin that way.
fn after_leading_type(json: &str) -> Option<&str> {
    fn plain_string_then<'a>(json: &'a str, key: &str) -> Option<&'a str> {
        let rest = json.strip_prefix(key)?;
        let end = rest.find('"')?;
        if rest[..end].contains('\\') {
            return None;
        }
        Some(&rest[end + 1..])
    }
    let rest = plain_string_then(json, "{\"apiVersion\":\"")?;
    let rest = plain_string_then(rest, ",\"kind\":\"")?;
    rest.strip_prefix(',')
}

/// [`without_type`] by parsing the object's top-level fields.
fn without_type_parsed(body: &RawValue) -> Option<String> {
    struct Fields<'a>(Vec<(&'a str, &'a RawValue)>);
    impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
                type Value = Fields<'a>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<M: serde::de::MapAccess<'de>>(
                    self,
                    mut m: M,
                ) -> Result<Fields<'a>, M::Error> {
                    let mut out = Vec::new();
                    while let Some((k, v)) = m.next_entry::<&'de str, &'de RawValue>()? {
                        out.push((k, v));
                    }
                    Ok(Fields(out))
                }
            }
            d.deserialize_map(V(std::marker::PhantomData))
        }
    }
    let Fields(fields) = serde_json::from_str(body.get()).ok()?;
    let mut out = String::with_capacity(body.get().len());
    out.push('{');
    let mut first = true;
    for (k, v) in fields {
        if k == "apiVersion" || k == "kind" {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&serde_json::to_string(k).ok()?);
        out.push(':');
        out.push_str(v.get());
    }
    out.push('}');
    Some(out)
}

/// A `continue` token of the hub: which snapshot, where in it, and which request it
/// belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Marks the hub's tokens apart from the cluster's.
    hub: u8,
    /// The snapshot.
    s: u64,
    /// The offset of the next item.
    o: usize,
    /// The list's resourceVersion.
    rv: u64,
    /// The request it continues (account, path, selectors).
    q: u64,
}

impl Token {
    /// Decodes a token the hub issued; `None` for anything else (such as a token the
    /// cluster issued for a list that went to it).
    pub fn decode(text: &str) -> Option<Token> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        let token: Token = serde_json::from_slice(&bytes).ok()?;
        (token.hub == 1).then_some(token)
    }

    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }
}

/// A fingerprint of what a list asks for, so a token is used only for its own list.
pub fn fingerprint(account: &str, path: &str, query: &[(String, String)]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    account.hash(&mut h);
    path.hash(&mut h);
    for (k, v) in query {
        if k == "labelSelector" || k == "fieldSelector" {
            k.hash(&mut h);
            v.hash(&mut h);
        }
    }
    h.finish()
}

struct Snapshot {
    list: Arc<Filtered>,
    taken: Instant,
}

/// A list after its selectors: what its pages are cut from.
#[derive(Debug)]
pub struct Filtered {
    /// Kind, version and resourceVersion.
    pub kind: KindKey,
    /// `group/version`.
    pub api_version: String,
    /// The resourceVersion.
    pub rv: u64,
    /// The selected objects, in order.
    pub items: Vec<Item>,
    /// The request's fingerprint.
    pub q: u64,
}

/// Lists kept for their next pages, apart per owner (the token that listed), so
/// that one token's lists never push another's out: each owner keeps its
/// [`MAX_SNAPSHOTS`] newest, for [`SNAPSHOT_TTL`] at most.
#[derive(Default)]
pub struct Snapshots {
    next: std::sync::atomic::AtomicU64,
    kept: Mutex<HashMap<usize, Kept>>,
}

/// One owner's lists, oldest first.
#[derive(Default)]
struct Kept {
    map: HashMap<u64, Snapshot>,
    order: VecDeque<u64>,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots").finish_non_exhaustive()
    }
}

impl Snapshots {
    fn keep(&self, owner: usize, list: Arc<Filtered>) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut guard = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        // Owners whose newest list has expired keep nothing.
        guard.retain(|_, kept| {
            kept.order
                .back()
                .and_then(|newest| kept.map.get(newest))
                .is_some_and(|s| s.taken.elapsed() <= SNAPSHOT_TTL)
        });
        let Kept { map, order } = guard.entry(owner).or_default();
        map.insert(
            id,
            Snapshot {
                list,
                taken: Instant::now(),
            },
        );
        order.push_back(id);
        while order.len() > MAX_SNAPSHOTS
            || order
                .front()
                .and_then(|o| map.get(o))
                .is_some_and(|s| s.taken.elapsed() > SNAPSHOT_TTL)
        {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
        id
    }

    fn get(&self, owner: usize, id: u64) -> Option<Arc<Filtered>> {
        let guard = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .get(&owner)?
            .map
            .get(&id)
            .filter(|s| s.taken.elapsed() <= SNAPSHOT_TTL)
            .map(|s| Arc::clone(&s.list))
    }
}

/// `410 Gone` for a token whose snapshot is gone, as the API server answers an
/// expired one.
fn expired() -> Failure {
    Failure::new(
        StatusCode::GONE,
        "Expired",
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
    )
}

/// A Table as the API server answers it.
pub fn table_response(table: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(format!("{table}\n")));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io"),
    );
    response
}

/// One page of a list, as the API server writes it (a Table with `print` when the
/// read asks for one); `owner` names the caller (its token) whose snapshots keep the
/// next pages.
pub fn page(
    snapshots: &Snapshots,
    owner: usize,
    read: &Read,
    list: Option<Listed>,
    q: u64,
    print: Option<&table::Print>,
) -> Response<Body> {
    let (filtered, offset) = match (&read.cont, list) {
        (Some(token), _) => {
            let Some(snapshot) = snapshots.get(owner, token.s) else {
                return expired().response();
            };
            if snapshot.q != q || token.q != q {
                return Failure::bad_request(
                    "continue key is not valid: it belongs to another list",
                )
                .response();
            }
            (snapshot, token.o)
        }
        (None, Some(list)) => {
            let items = list
                .items
                .into_iter()
                .filter(|i| selected_object(read, &list.kind, &i.body))
                .collect();
            (
                Arc::new(Filtered {
                    kind: list.kind,
                    api_version: list.api_version,
                    rv: list.rv,
                    items,
                    q,
                }),
                0,
            )
        }
        (None, None) => return Failure::bad_request("nothing to list").response(),
    };
    let total = filtered.items.len();
    let from = offset.min(total);
    let to = if read.limit > 0 {
        from.saturating_add(read.limit).min(total)
    } else {
        total
    };
    let mut meta = protobuf::ListMeta {
        resource_version: filtered.rv.to_string(),
        cont: None,
        remaining: None,
    };
    if to < total {
        let id = match &read.cont {
            Some(token) => token.s,
            None => snapshots.keep(owner, Arc::clone(&filtered)),
        };
        let token = Token {
            hub: 1,
            s: id,
            o: to,
            rv: filtered.rv,
            q,
        };
        meta.cont = Some(token.encode());
        if read.labels.is_empty() && read.fields.is_empty() {
            meta.remaining = i64::try_from(total - to).ok();
        }
    }
    let items = &filtered.items[from..to];
    if read.protobuf
        && let Some(kind) = protobuf::schema().kind_of(&filtered.api_version, &filtered.kind.kind)
    {
        match protobuf::list(&kind, &meta, items.iter().map(|i| i.body.get())) {
            Ok(bytes) => return protobuf::response(bytes),
            // Answered in JSON, as the client accepts.
            Err(err) => protobuf::schema().refuse(&kind, &err),
        }
    }
    let mut metadata = serde_json::Map::new();
    metadata.insert(
        "resourceVersion".into(),
        Value::String(meta.resource_version),
    );
    if let Some(token) = meta.cont {
        metadata.insert("continue".into(), Value::String(token));
    }
    if let Some(n) = meta.remaining {
        metadata.insert("remainingItemCount".into(), Value::from(n));
    }
    if let Some(ask) = &read.table
        && let Some(print) = print
    {
        let now = std::time::SystemTime::now();
        let rows = items
            .iter()
            .map(|i| print.row(i.body.get(), ask.include, now))
            .collect();
        return table_response(&print.table(Value::Object(metadata), rows));
    }
    let strip = built_in(&filtered.kind.group);
    let mut out =
        String::with_capacity(64 + items.iter().map(|i| i.body.get().len() + 1).sum::<usize>());
    out.push_str("{\"kind\":");
    out.push_str(&Value::String(format!("{}List", filtered.kind.kind)).to_string());
    out.push_str(",\"apiVersion\":");
    out.push_str(&Value::String(filtered.api_version.clone()).to_string());
    out.push_str(",\"metadata\":");
    out.push_str(&Value::Object(metadata).to_string());
    out.push_str(",\"items\":[");
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        match strip.then(|| without_type(&item.body)).flatten() {
            Some(stripped) => out.push_str(&stripped),
            None => out.push_str(item.body.get()),
        }
    }
    out.push_str("]}\n");
    super::status::json_response(Body::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeapi::path::ResourcePath;
    use crate::kubeapi::read::plan;
    use http::{HeaderMap, Method};

    fn read(ns: Option<&str>, query: &[(&str, &str)]) -> Read {
        let path = ResourcePath {
            group: "apps".into(),
            version: "v1".into(),
            namespace: ns.map(Into::into),
            resource: "deployments".into(),
            name: None,
            subresource: None,
        };
        let query: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        plan(&Method::GET, &path, &query, &HeaderMap::new()).expect("planned")
    }

    fn listed(n: usize) -> Listed {
        Listed {
            kind: KindKey {
                group: "apps".into(),
                kind: "Deployment".into(),
            },
            api_version: "apps/v1".into(),
            rv: 77,
            items: (0..n)
                .map(|i| Item {
                    body: Arc::from(
                        RawValue::from_string(format!(
                            r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"d{i:02}","labels":{{"even":"{}"}}}}}}"#,
                            i % 2 == 0
                        ))
                        .expect("json"),
                    ),
                })
                .collect(),
        }
    }

    async fn json(response: Response<Body>) -> (StatusCode, Value) {
        let status = response.status();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    fn names(list: &Value) -> Vec<String> {
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["metadata"]["name"].as_str().expect("name").to_owned())
            .collect()
    }

    #[tokio::test]
    async fn lists_are_shaped_like_the_api_servers_and_page_through_one_snapshot() {
        let snapshots = Snapshots::default();
        let (status, all) = json(page(
            &snapshots,
            0,
            &read(Some("a"), &[]),
            Some(listed(5)),
            1,
            None,
        ))
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(all["kind"], "DeploymentList");
        assert_eq!(all["apiVersion"], "apps/v1");
        assert_eq!(all["metadata"]["resourceVersion"], "77");
        assert!(all["metadata"].get("continue").is_none());
        assert_eq!(names(&all), ["d00", "d01", "d02", "d03", "d04"]);
        assert!(
            all["items"][0].get("kind").is_none(),
            "built-in list items carry no kind"
        );
        // Pages of two: the next pages come from the first page's snapshot.
        let first = read(Some("a"), &[("limit", "2")]);
        let (_, p1) = json(page(&snapshots, 0, &first, Some(listed(5)), 1, None)).await;
        assert_eq!(names(&p1), ["d00", "d01"]);
        assert_eq!(p1["metadata"]["remainingItemCount"], 3);
        let mut seen = names(&p1);
        let mut token = p1["metadata"]["continue"]
            .as_str()
            .expect("a token")
            .to_owned();
        loop {
            let next = read(Some("a"), &[("limit", "2"), ("continue", &token)]);
            let (_, p) = json(page(&snapshots, 0, &next, None, 1, None)).await;
            assert_eq!(p["metadata"]["resourceVersion"], "77");
            seen.extend(names(&p));
            match p["metadata"]["continue"].as_str() {
                Some(t) => token = t.to_owned(),
                None => break,
            }
        }
        assert_eq!(seen, ["d00", "d01", "d02", "d03", "d04"]);
        // Selectors apply before paging; no remaining count with a selector.
        let even = read(Some("a"), &[("limit", "2"), ("labelSelector", "even=true")]);
        let (_, p) = json(page(&snapshots, 0, &even, Some(listed(5)), 2, None)).await;
        assert_eq!(names(&p), ["d00", "d02"]);
        assert!(p["metadata"].get("remainingItemCount").is_none());
        // A token of another list is refused; an unknown snapshot is expired.
        let wrong = read(Some("a"), &[("limit", "2"), ("continue", &token)]);
        assert_eq!(
            json(page(&snapshots, 0, &wrong, None, 9, None)).await.0,
            StatusCode::BAD_REQUEST
        );
        let gone = Token {
            hub: 1,
            s: 999,
            o: 2,
            rv: 77,
            q: 1,
        }
        .encode();
        let (status, body) = json(page(
            &snapshots,
            0,
            &read(Some("a"), &[("continue", &gone)]),
            None,
            1,
            None,
        ))
        .await;
        assert_eq!(status, StatusCode::GONE);
        assert_eq!(body["reason"], "Expired");
    }

    #[tokio::test]
    async fn another_owners_lists_do_not_push_out_your_pages() {
        let snapshots = Snapshots::default();
        let first = read(Some("a"), &[("limit", "2")]);
        let (_, p1) = json(page(&snapshots, 1, &first, Some(listed(5)), 1, None)).await;
        let token = p1["metadata"]["continue"]
            .as_str()
            .expect("a token")
            .to_owned();
        // Another token pages through more lists than anyone may keep.
        for _ in 0..MAX_SNAPSHOTS * 2 {
            let (status, _) = json(page(&snapshots, 2, &first, Some(listed(5)), 1, None)).await;
            assert_eq!(status, StatusCode::OK);
        }
        let next = read(Some("a"), &[("limit", "2"), ("continue", &token)]);
        let (status, p2) = json(page(&snapshots, 1, &next, None, 1, None)).await;
        assert_eq!(status, StatusCode::OK, "{p2}");
        assert_eq!(names(&p2), ["d02", "d03"]);
        // Your own lists still push out your oldest.
        for _ in 0..MAX_SNAPSHOTS {
            json(page(&snapshots, 1, &first, Some(listed(5)), 1, None)).await;
        }
        assert_eq!(
            json(page(&snapshots, 1, &next, None, 1, None)).await.0,
            StatusCode::GONE
        );
        // And nobody continues another owner's list.
        assert_eq!(
            json(page(&snapshots, 3, &next, None, 1, None)).await.0,
            StatusCode::GONE
        );
    }

    #[test]
    fn tokens_of_the_cluster_are_not_taken_for_the_hubs() {
        let ours = Token {
            hub: 1,
            s: 3,
            o: 500,
            rv: 9,
            q: 7,
        };
        assert_eq!(Token::decode(&ours.encode()), Some(ours));
        // The API server's tokens are base64 JSON too, without the hub's mark.
        let theirs = base64::engine::general_purpose::STANDARD
            .encode(r#"{"v":"meta.k8s.io/v1","rv":9,"start":"a/b\u0000"}"#);
        assert_eq!(Token::decode(&theirs), None);
        assert_eq!(Token::decode("not base64 at all!"), None);
    }

    #[test]
    fn type_meta_is_cut_off_without_parsing_only_when_it_leads_plainly() {
        let cases = [
            // The agent's order: cut.
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#,
            // Another order, an escape in a value, an object of only type meta, a
            // space: parsed.
            r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"x"}}"#,
            r#"{"apiVersion":"v\u0031","kind":"ConfigMap","metadata":{"name":"x"}}"#,
            r#"{"apiVersion":"v1","kind":"ConfigMap"}"#,
            r#"{ "apiVersion":"v1","kind":"ConfigMap","metadata":{}}"#,
            r#"{"apiVersion":"v1","kind":"Con\"fig","metadata":{"name":"x"}}"#,
        ];
        assert_eq!(
            after_leading_type(cases[0]),
            Some(r#""metadata":{"name":"x"}}"#)
        );
        for json in &cases[1..] {
            assert_eq!(after_leading_type(json), None, "{json}");
        }
        // Both ways give the same answer.
        for json in cases {
            let body = RawValue::from_string(json.into()).expect("json");
            assert_eq!(without_type(&body), without_type_parsed(&body), "{json}");
        }
    }

    #[test]
    fn type_meta_is_dropped_keeping_the_field_order() {
        let body = RawValue::from_string(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"kind":"stays"}}"#.into()).expect("json");
        assert_eq!(
            without_type(&body).as_deref(),
            Some(r#"{"metadata":{"name":"x"},"data":{"kind":"stays"}}"#)
        );
    }
}
