//! Kubernetes API requests the hub carries over the session: each `KubeRequest` is
//! replayed against the account's cluster with the account's own credentials, and the
//! answer streams back byte for byte (`KubeResponseHead`, then `KubeResponseBody`
//! frames).
//!
//! - Only accounts this replica streams are served; any other gets a 503 Status.
//! - The response body is sent at most a window ahead of the hub's `KubeWindow`
//!   grants, so a client that reads slowly holds back its own answer and nothing else.
//! - `KubeCancel` (the client went away) drops the cluster's response, which closes the
//!   request to the API server; the end of the session does the same for every request.
//! - Requests are replayed without retries: the client that sent them decides whether
//!   to try again, as it would talking to the cluster directly.
//! - Request bodies are held until the cluster has them, at most a byte budget per
//!   session (`--max-held-request-mib`, [`HeldBodies`]): a request whose body does not
//!   fit in what is left is answered 429 with `Retry-After` and its bytes given back,
//!   so many large bodies at once cost the agent at most the budget.
//! - A request naming an `upgrade` (exec, attach, port-forward) is made over HTTP/1.1
//!   with the same upgrade; on `101` the connection's bytes are carried both ways by
//!   [`crate::upgrade`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::BodyExt as _;
use prometheus_client::metrics::gauge::Gauge;
use scale_agent_proto::kube_api;
use scale_agent_proto::v1::{
    HttpHeader, KubeCancel, KubeRequest, KubeRequestBody, KubeResponseBody, KubeResponseHead,
    KubeWindow, agent_frame::Frame,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::AbortHandle;

use crate::metrics::Metrics;
use crate::outbound::{Closed, Outbound};
use crate::state::State;
use crate::upgrade::Credit;

/// Requests in flight on one session at most; more are answered 429 at once. The hub
/// sends no more than this, shared fairly between the session's accounts and tokens
/// (`hub/src/core/fair.rs`, the same number).
pub const MAX_IN_FLIGHT: usize = 256;
/// The largest request body accepted (the API server itself takes at most 3 MiB).
pub const MAX_REQUEST_BODY: usize = 16 << 20;
/// The largest body part sent in one frame.
pub const MAX_CHUNK: usize = 256 << 10;
/// Mebibytes of request bodies held per session at most, by default
/// (`--max-held-request-mib`).
pub const DEFAULT_HELD_REQUEST_MIB: u32 = 64;
/// The largest window the hub may grant for one response.
const MAX_WINDOW: u64 = 64 << 20;
/// Characters of a request path shown in logs.
const LOGGED_PATH: usize = 200;

/// The requests in flight on one hub session. Dropping it (the session ended) stops
/// every one of them.
pub struct Proxy {
    state: Arc<State>,
    metrics: Arc<Metrics>,
    out: Outbound,
    inflight: Arc<Mutex<HashMap<u64, InFlight>>>,
    bodies: HeldBodies,
}

/// The bytes of request bodies one session holds until the cluster has them: at most
/// a budget, counted in `scale_agent_kube_api_request_bytes_held`.
#[derive(Clone)]
pub struct HeldBodies {
    budget: Arc<Semaphore>,
    mib: u32,
    gauge: Gauge,
}

/// Bytes of a request body held, given back (and uncounted) when dropped.
pub struct Held {
    _permit: OwnedSemaphorePermit,
    bytes: i64,
    gauge: Gauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes);
    }
}

/// Part of a request body (or of an upgraded connection's client bytes, never held) on
/// its way to the task replaying the request.
pub type Part = (Bytes, bool, Option<Held>);

impl HeldBodies {
    /// A budget of `mib` MiB (at least 1), counted in `metrics`.
    pub fn new(mib: u32, metrics: &Metrics) -> HeldBodies {
        let mib = mib.max(1);
        let bytes = (mib as usize).saturating_mul(1 << 20);
        HeldBodies {
            budget: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
            mib,
            gauge: metrics.kube_api_request_bytes_held.clone(),
        }
    }

    /// `bytes` more held, or `None` when they do not fit in what is left.
    fn take(&self, bytes: usize) -> Option<Held> {
        let permits = u32::try_from(bytes).ok()?;
        let permit = Arc::clone(&self.budget)
            .try_acquire_many_owned(permits)
            .ok()?;
        let bytes = i64::from(permits);
        self.gauge.inc_by(bytes);
        Some(Held {
            _permit: permit,
            bytes,
            gauge: self.gauge.clone(),
        })
    }

    /// Why a body was refused, for the client.
    fn refusal(&self) -> String {
        format!(
            "the agent already holds {} MiB of request bodies for this hub session, the most it holds (--max-held-request-mib); retry",
            self.mib
        )
    }
}

struct InFlight {
    body: Option<mpsc::UnboundedSender<Part>>,
    window: Arc<Semaphore>,
    /// For an upgrade: the client's bytes the hub may still send.
    credit: Option<Arc<Credit>>,
    task: AbortHandle,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for (_, r) in lock(&self.inflight).drain() {
            r.task.abort();
        }
    }
}

fn lock(m: &Mutex<HashMap<u64, InFlight>>) -> std::sync::MutexGuard<'_, HashMap<u64, InFlight>> {
    // The map only holds handles; a panic elsewhere cannot leave it half-changed.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `path` cut to a length fit for a log line.
fn short(path: &str) -> &str {
    match path.char_indices().nth(LOGGED_PATH) {
        Some((i, _)) => &path[..i],
        None => path,
    }
}

impl Proxy {
    /// The proxy of a new session, holding request bodies within `bodies`.
    pub fn new(
        state: Arc<State>,
        metrics: Arc<Metrics>,
        out: Outbound,
        bodies: HeldBodies,
    ) -> Proxy {
        Proxy {
            state,
            metrics,
            out,
            inflight: Arc::default(),
            bodies,
        }
    }

    /// Answers request `id` 429 with `message` (in the background).
    fn too_many(&self, id: u64, message: String) {
        let out = self.out.clone();
        tokio::spawn(async move {
            let _ = answer_status(&out, id, 429, "TooManyRequests", &message).await;
        });
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        lock(&self.inflight).len()
    }

    /// Starts replaying a request.
    pub fn request(&self, req: KubeRequest) {
        let id = req.id;
        let span = tracing::info_span!("kube_request", id, account = %req.account, method = %req.method, path = %short(&req.path));
        let mut map = lock(&self.inflight);
        if map.contains_key(&id) {
            tracing::warn!(parent: &span, "a request id already in flight; ignored");
            return;
        }
        let out = self.out.clone();
        if map.len() >= MAX_IN_FLIGHT {
            tracing::warn!(parent: &span, limit = MAX_IN_FLIGHT, "too many Kubernetes API requests in flight; answering 429");
            self.too_many(
                id,
                format!(
                    "the agent already carries {MAX_IN_FLIGHT} requests for this hub session; retry"
                ),
            );
            return;
        }
        let Some(first) = self.bodies.take(req.body.len()) else {
            tracing::warn!(parent: &span, limit_mib = self.bodies.mib, "request bodies held past the budget; answering 429");
            self.too_many(id, self.bodies.refusal());
            return;
        };
        let (body_tx, body_rx) = mpsc::unbounded_channel();
        let body = if req.body_done { None } else { Some(body_tx) };
        let initial = req.window_bytes.clamp(1, MAX_WINDOW);
        let window = Arc::new(Semaphore::new(
            usize::try_from(initial).unwrap_or(MAX_CHUNK),
        ));
        let cluster = self.state.cluster(&req.account);
        let inflight = Arc::downgrade(&self.inflight);
        let task_window = window.clone();
        let credit = (!req.upgrade.is_empty()).then(|| Credit::new(initial));
        let task_credit = credit.clone();
        self.metrics.kube_api_requests.inc();
        let gauge = InFlightGauge::new(&self.metrics);
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move {
                // Dropped when the task ends or is aborted.
                let _gauge = gauge;
                let chunk = usize::try_from(initial).unwrap_or(MAX_CHUNK).min(MAX_CHUNK);
                let upgrade = task_credit.is_some();
                let client = cluster.map(|c| {
                    if upgrade {
                        c.upgrade.clone()
                    } else {
                        c.proxy.clone()
                    }
                });
                let flow = Flow {
                    window: &task_window,
                    credit: task_credit.as_deref(),
                    chunk,
                };
                let outcome = replay(&out, req, first, client, body_rx, flow).await;
                if let Err(Closed) = outcome {
                    tracing::debug!("the session ended during the request");
                }
                finished(&inflight, id);
            },
            span,
        ));
        map.insert(
            id,
            InFlight {
                body,
                window,
                credit,
                task: task.abort_handle(),
            },
        );
    }

    /// More of a request body.
    pub fn body(&self, part: KubeRequestBody) {
        let mut map = lock(&self.inflight);
        let Some(r) = map.get_mut(&part.id) else {
            return;
        };
        let over = r
            .credit
            .as_ref()
            .is_some_and(|c| !c.take(part.chunk.len() as u64));
        if over {
            tracing::warn!(
                id = part.id,
                "the hub sent more of an upgraded connection than the agent granted; the connection is ended"
            );
            if let Some(r) = map.remove(&part.id) {
                r.task.abort();
            }
            return;
        }
        // An upgraded connection's bytes are bounded by its credit instead.
        let held = match r.credit {
            Some(_) => None,
            None if r.body.is_none() => None,
            None => match self.bodies.take(part.chunk.len()) {
                Some(held) => Some(held),
                None => {
                    tracing::warn!(
                        id = part.id,
                        limit_mib = self.bodies.mib,
                        "request bodies held past the budget; answering 429"
                    );
                    // What it held so far goes with its task.
                    if let Some(r) = map.remove(&part.id) {
                        r.task.abort();
                    }
                    self.too_many(part.id, self.bodies.refusal());
                    return;
                }
            },
        };
        if let Some(tx) = &r.body {
            // The task may have given up on the request already; then nobody reads.
            let _ = tx.send((part.chunk, part.done, held));
        }
        if part.done {
            r.body = None;
        }
    }

    /// The hub read some of a response: more of it may be sent.
    pub fn window(&self, grant: KubeWindow) {
        if let Some(r) = lock(&self.inflight).get(&grant.id) {
            let room = r.window.available_permits() as u64;
            let add = grant.bytes.min(MAX_WINDOW.saturating_sub(room));
            r.window
                .add_permits(usize::try_from(add).unwrap_or(MAX_CHUNK));
        }
    }

    /// The hub gave up on a request (its client went away).
    pub fn cancel(&self, cancel: KubeCancel) {
        if let Some(r) = lock(&self.inflight).remove(&cancel.id) {
            tracing::debug!(id = cancel.id, reason = %short(&cancel.reason), "Kubernetes API request cancelled by the hub");
            r.task.abort();
        }
    }
}

/// Counts a request in flight for as long as it lives.
struct InFlightGauge(prometheus_client::metrics::gauge::Gauge);

impl InFlightGauge {
    fn new(metrics: &Metrics) -> InFlightGauge {
        metrics.kube_api_requests_in_flight.inc();
        InFlightGauge(metrics.kube_api_requests_in_flight.clone())
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn finished(inflight: &Weak<Mutex<HashMap<u64, InFlight>>>, id: u64) {
    if let Some(map) = inflight.upgrade() {
        lock(&map).remove(&id);
    }
}

/// A Kubernetes `Status` object as the API server writes it.
pub fn status_body(code: u16, reason: &str, message: &str) -> Bytes {
    let status = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    Bytes::from(status.to_string())
}

async fn answer_status(
    out: &Outbound,
    id: u64,
    code: u16,
    reason: &str,
    message: &str,
) -> Result<(), Closed> {
    let mut headers = vec![HttpHeader {
        name: "content-type".into(),
        value: Bytes::from_static(b"application/json"),
    }];
    if code == 429 {
        // client-go waits this long and retries by itself.
        headers.push(HttpHeader {
            name: "retry-after".into(),
            value: Bytes::from_static(b"1"),
        });
    }
    out.send(Frame::KubeResponseHead(KubeResponseHead {
        id,
        status: u32::from(code),
        headers,
    }))
    .await?;
    out.send(Frame::KubeResponseBody(KubeResponseBody {
        id,
        chunk: status_body(code, reason, message),
        done: true,
        error: String::new(),
    }))
    .await
}

/// Why a request could not be built.
#[derive(Debug, thiserror::Error)]
enum Invalid {
    #[error("method {0:?} is not an HTTP method")]
    Method(String),
    #[error("path is not a path relative to the API root")]
    Path,
    #[error("the request body is larger than {MAX_REQUEST_BODY} bytes")]
    TooLarge,
    #[error("the request body did not arrive")]
    BodyLost,
    #[error("the upgrade asked for is not a header value")]
    Upgrade,
}

/// Builds the request the cluster gets: the hub's method, path, headers and body, with
/// the hop-by-hop and credential headers left out (the account's client adds its own).
fn build(req: &KubeRequest, body: Bytes) -> Result<Request<kube::client::Body>, Invalid> {
    let upgrade = if req.upgrade.is_empty() {
        None
    } else {
        Some(HeaderValue::from_str(&req.upgrade).map_err(|_| Invalid::Upgrade)?)
    };
    let method = Method::from_bytes(req.method.as_bytes())
        .map_err(|_| Invalid::Method(req.method.clone()))?;
    if !req.path.starts_with('/') || req.path.starts_with("//") {
        return Err(Invalid::Path);
    }
    let uri: Uri = req.path.parse().map_err(|_| Invalid::Path)?;
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(Invalid::Path);
    }
    let mut builder = Request::builder().method(method).uri(uri);
    for h in &req.headers {
        if kube_api::is_hop_by_hop(&h.name) || kube_api::is_credential(&h.name) {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(&h.value),
        ) else {
            continue;
        };
        builder = builder.header(name, value);
    }
    if let Some(protocol) = upgrade {
        builder = builder
            .header(
                http::header::CONNECTION,
                HeaderValue::from_static("Upgrade"),
            )
            .header(http::header::UPGRADE, protocol);
    }
    builder
        .body(kube::client::Body::from(body))
        .map_err(|_| Invalid::Path)
}

/// The whole request body: the first part from the request, then the parts that
/// follow; and what holds their bytes in the session's budget (`held`, which gets the
/// parts' own).
async fn collect_body(
    req: &KubeRequest,
    rx: &mut mpsc::UnboundedReceiver<Part>,
    held: &mut Vec<Held>,
) -> Result<Bytes, Invalid> {
    // An upgrade has no body: what follows it is the upgraded connection's.
    if req.body_done || !req.upgrade.is_empty() {
        return Ok(req.body.clone());
    }
    let mut all = BytesMut::from(&req.body[..]);
    loop {
        let Some((chunk, done, part)) = rx.recv().await else {
            return Err(Invalid::BodyLost);
        };
        held.extend(part);
        if all.len() + chunk.len() > MAX_REQUEST_BODY {
            return Err(Invalid::TooLarge);
        }
        all.extend_from_slice(&chunk);
        if done {
            return Ok(all.freeze());
        }
    }
}

fn deadline(req: &KubeRequest) -> Option<Duration> {
    let d = req.deadline.as_ref()?;
    let at = SystemTime::UNIX_EPOCH
        + Duration::new(
            u64::try_from(d.seconds).unwrap_or(0),
            u32::try_from(d.nanos).unwrap_or(0),
        );
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// How much of an answer (and of an upgraded connection) may be in flight.
struct Flow<'a> {
    /// The hub's grants for the answer.
    window: &'a Semaphore,
    /// For an upgrade: the hub's credit for the client's bytes.
    credit: Option<&'a Credit>,
    /// The largest part sent in one frame.
    chunk: usize,
}

/// Replays one request and streams its answer; `Err(Closed)` when the session ended.
async fn replay(
    out: &Outbound,
    req: KubeRequest,
    first: Held,
    client: Option<kube::Client>,
    mut body_rx: mpsc::UnboundedReceiver<Part>,
    flow: Flow<'_>,
) -> Result<(), Closed> {
    let Flow {
        window,
        credit,
        chunk,
    } = flow;
    let id = req.id;
    let Some(client) = client else {
        tracing::info!("request for an account this replica does not stream");
        return answer_status(
            out,
            id,
            503,
            "ServiceUnavailable",
            &format!(
                "account {} is not streamed by this agent replica right now; retry",
                req.account
            ),
        )
        .await;
    };
    let limit = deadline(&req);
    let head = async {
        let mut held = vec![first];
        let body = collect_body(&req, &mut body_rx, &mut held).await?;
        let request = build(&req, body)?;
        let sent = client.send(request).await;
        // The cluster has the body (or will never take it): its bytes are given back.
        drop(held);
        Ok::<_, Invalid>(sent)
    };
    let sent = match limit {
        Some(left) => match tokio::time::timeout(left, head).await {
            Ok(r) => r,
            Err(_) => {
                tracing::info!(?limit, "the cluster did not answer before the deadline");
                return answer_status(
                    out,
                    id,
                    504,
                    "Timeout",
                    "the cluster did not answer before the hub's deadline",
                )
                .await;
            }
        },
        None => head.await,
    };
    let response = match sent {
        Err(invalid) => {
            tracing::warn!(error = %invalid, "refusing a malformed request from the hub");
            let code = if matches!(invalid, Invalid::TooLarge) {
                413
            } else {
                400
            };
            let reason = if code == 413 {
                "RequestEntityTooLarge"
            } else {
                "BadRequest"
            };
            return answer_status(out, id, code, reason, &invalid.to_string()).await;
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the cluster could not be reached");
            return answer_status(
                out,
                id,
                503,
                "ServiceUnavailable",
                &format!("the agent could not reach the account's cluster: {e}"),
            )
            .await;
        }
        Ok(Ok(r)) => r,
    };
    let mut response = response;
    let switched = (response.status() == http::StatusCode::SWITCHING_PROTOCOLS)
        .then(|| hyper::upgrade::on(&mut response));
    let (parts, mut body) = response.into_parts();
    tracing::debug!(status = parts.status.as_u16(), "the cluster answered");
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| !kube_api::is_hop_by_hop(name.as_str()))
        .map(|(name, value)| HttpHeader {
            name: name.as_str().to_owned(),
            value: Bytes::copy_from_slice(value.as_bytes()),
        })
        .collect();
    out.send(Frame::KubeResponseHead(KubeResponseHead {
        id,
        status: u32::from(parts.status.as_u16()),
        headers,
    }))
    .await?;
    if let Some(switched) = switched {
        let (Some(credit), Ok(io)) = (credit, switched.await) else {
            tracing::warn!(
                "the cluster switched protocols but the connection could not be taken over"
            );
            return out
                .send(Frame::KubeResponseBody(KubeResponseBody {
                    id,
                    chunk: Bytes::new(),
                    done: true,
                    error: "the cluster switched protocols, but the agent could not take the connection over".into(),
                }))
                .await;
        };
        tracing::info!(protocol = %short(&req.upgrade), "connection upgraded at the cluster");
        return crate::upgrade::pump(out, id, io, body_rx, window, credit, chunk).await;
    }
    loop {
        let error = match body.frame().await {
            None => String::new(),
            Some(Err(e)) => {
                tracing::info!(error = %e, "the cluster's answer broke off");
                format!("the cluster's answer broke off: {e}")
            }
            Some(Ok(frame)) => {
                let Ok(mut data) = frame.into_data() else {
                    // Trailers: the API server sends none worth carrying.
                    continue;
                };
                while !data.is_empty() {
                    let part = data.split_to(data.len().min(chunk));
                    // Waits for the hub's grants: the client reads at its own pace.
                    let permits = u32::try_from(part.len()).unwrap_or(u32::MAX);
                    match window.acquire_many(permits).await {
                        Ok(p) => p.forget(),
                        Err(_) => return Ok(()),
                    }
                    out.send(Frame::KubeResponseBody(KubeResponseBody {
                        id,
                        chunk: part,
                        done: false,
                        error: String::new(),
                    }))
                    .await?;
                }
                continue;
            }
        };
        return out
            .send(Frame::KubeResponseBody(KubeResponseBody {
                id,
                chunk: Bytes::new(),
                done: true,
                error,
            }))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, headers: &[(&str, &str)]) -> KubeRequest {
        KubeRequest {
            id: 1,
            account: "a".into(),
            method: "GET".into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| HttpHeader {
                    name: (*n).into(),
                    value: Bytes::copy_from_slice(v.as_bytes()),
                })
                .collect(),
            body_done: true,
            ..Default::default()
        }
    }

    #[test]
    fn credentials_and_connection_headers_never_reach_the_cluster() {
        let req = request(
            "/api/v1/namespaces/a/pods?limit=5",
            &[
                ("authorization", "Bearer hub-token"),
                ("cookie", "c=1"),
                ("x-remote-user", "admin"),
                ("connection", "close"),
                ("accept", "application/json"),
            ],
        );
        let built = build(&req, Bytes::new()).expect("valid");
        let names: Vec<&str> = built.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept"]);
        assert_eq!(
            built.uri().path_and_query().map(|p| p.as_str()),
            Some("/api/v1/namespaces/a/pods?limit=5")
        );
    }

    #[test]
    fn only_paths_relative_to_the_api_root_are_replayed() {
        for bad in [
            "http://evil/api",
            "//evil/api",
            "api/v1",
            "",
            "/api/v1/pods with space",
        ] {
            assert!(build(&request(bad, &[]), Bytes::new()).is_err(), "{bad}");
        }
        let mut req = request("/api", &[]);
        req.method = "GET /x".into();
        assert!(build(&req, Bytes::new()).is_err());
    }

    #[tokio::test]
    async fn a_request_body_in_parts_is_put_together_and_bounded() {
        let mut req = request("/api/v1/namespaces/a/configmaps", &[]);
        req.body_done = false;
        req.body = Bytes::from_static(b"{\"a\":");
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send((Bytes::from_static(b"1"), false, None))
            .expect("open");
        tx.send((Bytes::from_static(b"}"), true, None))
            .expect("open");
        let mut rx = rx;
        let mut held = Vec::new();
        assert_eq!(
            collect_body(&req, &mut rx, &mut held).await.expect("whole"),
            Bytes::from_static(b"{\"a\":1}")
        );
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send((Bytes::from(vec![b'x'; MAX_REQUEST_BODY]), true, None))
            .expect("open");
        let mut rx = rx;
        assert!(matches!(
            collect_body(&req, &mut rx, &mut held).await,
            Err(Invalid::TooLarge)
        ));
        let (tx, rx) = mpsc::unbounded_channel::<Part>();
        drop(tx);
        let mut rx = rx;
        assert!(matches!(
            collect_body(&req, &mut rx, &mut held).await,
            Err(Invalid::BodyLost)
        ));
    }

    #[test]
    fn request_bodies_held_stay_within_the_budget_and_are_given_back() {
        let metrics = Metrics::default();
        let bodies = HeldBodies::new(1, &metrics);
        let first = bodies.take(600 << 10).expect("fits");
        assert!(bodies.take(600 << 10).is_none(), "past the budget");
        assert_eq!(metrics.kube_api_request_bytes_held.get(), 600 << 10);
        drop(first);
        assert_eq!(metrics.kube_api_request_bytes_held.get(), 0);
        assert!(bodies.take(1 << 20).is_some(), "given back");
        assert!(bodies.refusal().contains("--max-held-request-mib"));
    }
}
