//! Requests the hub does not answer itself travel to the agent that holds the account,
//! which replays them against the cluster; the answer comes back byte for byte.
//!
//! The response body streams: the agent may be at most a window ahead of what the
//! client has read (the hub grants more as the client reads), so a slow client holds
//! back its own answer and nothing else on the stream. When the client goes away the
//! request is cancelled at the agent, which closes it at the API server.
//!
//! A connection upgrade (exec, attach, port-forward) is replayed the same way; when the
//! cluster switches protocols the answer is a `101` carrying a [`Switched`], the
//! agent's side of the connection, which [`super::upgrade`] carries on.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use futures::Stream;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use scale_agent_proto::kube_api;
use scale_agent_proto::v1::{
    HttpHeader, HubFrame, KubeCancel, KubeRequest, KubeRequestBody, KubeWindow, hub_frame,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::barrier::{self, Barriers};
use super::status::Failure;
use crate::core::fair::{Class, Flow};
use crate::core::memory::{Held, Over};
use crate::core::registry::SessionId;
use crate::state::{Outbound, Shared};
use crate::stream::tunnel::{Part, Refused};

/// The largest request body the hub carries (the API server takes at most 3 MiB).
pub const MAX_REQUEST_BODY: usize = 16 << 20;
/// The largest part of a request body in one frame.
const REQUEST_CHUNK: usize = 1 << 20;
/// A deadline given in the request's `timeout` parameter is honoured up to this.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// What to replay.
#[derive(Debug)]
pub struct Replay<'a> {
    /// The account.
    pub account: &'a str,
    /// The caller's token (its line in the tokens file).
    pub token: usize,
    /// Short or long-running.
    pub class: Class,
    /// The session holding it.
    pub session: SessionId,
    /// Its outbound frames.
    pub tx: Outbound,
    /// The method.
    pub method: &'a Method,
    /// Path and query relative to the cluster's API root.
    pub path_and_query: &'a str,
    /// The client's headers.
    pub headers: &'a HeaderMap,
    /// The request body.
    pub body: Bytes,
    /// Its bytes, counted until the agent has it.
    pub held: Held,
    /// How long to wait for the answer's head when the request names no timeout.
    pub default_timeout: Duration,
    /// The response window.
    pub window: u64,
    /// For a request that names a resource: where a successful write's version is
    /// recorded, so the client's later reads reflect it.
    pub barrier: Option<BarrierFor>,
    /// For a connection upgrade: the protocol the client asked for (its `Upgrade`).
    pub upgrade: Option<String>,
}

/// The kind a write is to, and where its version goes.
#[derive(Debug)]
pub struct BarrierFor {
    /// The account's barriers.
    pub barriers: Arc<Barriers>,
    /// API group of the resource.
    pub group: String,
    /// API version in the path.
    pub version: String,
    /// The resource (plural).
    pub resource: String,
}

/// A write's answer is at most this large to be read whole for its version; a
/// larger one sets the barrier to the kind's next change.
const MAX_WRITE_ANSWER: usize = 16 << 20;

/// Reads a successful write's whole answer, records the version it is at as the
/// floor of the client's next reads of the kind, and answers with the same bytes.
async fn record_write(
    shared: &Shared,
    account: &str,
    method: &Method,
    barrier: &BarrierFor,
    response: Response<Body>,
) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let bytes = match http_body_util::BodyExt::collect(http_body_util::Limited::new(
        body,
        MAX_WRITE_ANSWER,
    ))
    .await
    {
        Ok(c) => c.to_bytes(),
        Err(err) => {
            warn!(account, %err, "the answer to a write could not be read whole");
            return Failure::new(
                StatusCode::BAD_GATEWAY,
                "InternalError",
                format!("the cluster's answer to the write broke off: {err}"),
            )
            .response();
        }
    };
    let floor = match barrier::written(method, &bytes) {
        Some(w) => w.floor(),
        // No version in the answer (a Status): the kind's next change.
        None => {
            let core = shared.core();
            core.cache
                .account(account)
                .and_then(|c| c.kind_for(&barrier.group, &barrier.version, &barrier.resource))
                .map_or(0, |k| k.window.mark().rv + 1)
        }
    };
    if floor > 0 {
        barrier
            .barriers
            .note(account, &barrier.group, &barrier.resource, floor);
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// 429: the hub holds as many bytes for the token (or for everybody) as it may.
pub fn too_much(over: Over) -> Failure {
    Failure::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        over.to_string(),
    )
}

/// Reads a request body whole: at most [`MAX_REQUEST_BODY`] bytes (413 past it), each
/// counted in `held` as it arrives (429 past the token's or the hub's bound), and
/// within `deadline` (408 past it), so a client that never finishes its body does
/// not hold the hub's memory and its connection's task for ever.
pub async fn read_body<B>(body: B, deadline: Duration, held: &mut Held) -> Result<Bytes, Failure>
where
    B: hyper::body::Body,
    B::Error: std::fmt::Display,
{
    use bytes::{Buf as _, BufMut as _};
    use http_body_util::BodyExt as _;
    let read = async {
        let mut body = std::pin::pin!(body);
        let mut all = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| {
                Failure::bad_request(format!(
                    "reading the request body: {}",
                    crate::core::clip::clip(&err.to_string())
                ))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if all.len().saturating_add(data.remaining()) > MAX_REQUEST_BODY {
                return Err(Failure::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestEntityTooLarge",
                    format!("the request body is larger than {MAX_REQUEST_BODY} bytes"),
                ));
            }
            held.grow(data.remaining()).map_err(too_much)?;
            all.put(data);
        }
        Ok(all.freeze())
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(read) => read,
        Err(_) => Err(Failure::new(
            StatusCode::REQUEST_TIMEOUT,
            "Timeout",
            format!("the request body did not arrive whole within {deadline:?}"),
        )),
    }
}

/// Parses a Go duration as kubectl writes `timeout=` (`32s`, `1m0s`, `500ms`).
pub fn go_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => value / 1e9,
            "us" | "µs" => value / 1e6,
            "ms" => value / 1e3,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        // Checked: a sum past what a Duration holds is no duration (not a panic).
        total = total.checked_add(Duration::try_from_secs_f64(seconds).ok()?)?;
    }
    Some(total)
}

/// The headers the cluster gets: the client's, minus hop-by-hop headers and
/// credentials (the agent adds the account's own).
pub fn forwarded_headers(headers: &HeaderMap) -> Vec<HttpHeader> {
    headers
        .iter()
        .filter(|(name, _)| {
            !kube_api::is_hop_by_hop(name.as_str()) && !kube_api::is_credential(name.as_str())
        })
        .map(|(name, value)| HttpHeader {
            name: name.as_str().to_owned(),
            value: Bytes::copy_from_slice(value.as_bytes()),
        })
        .collect()
}

fn frame(f: hub_frame::Frame) -> HubFrame {
    HubFrame { frame: Some(f) }
}

fn head_deadline(path_and_query: &str, default: Duration) -> Duration {
    let query = path_and_query.split_once('?').map(|(_, q)| q);
    super::path::query(query)
        .into_iter()
        .find(|(k, _)| k == "timeout")
        .and_then(|(_, v)| go_duration(&v))
        .filter(|d| !d.is_zero())
        .map_or(default, |d| d.min(MAX_TIMEOUT))
}

/// Sends the request to the agent and answers with what the cluster answered.
pub async fn replay(shared: &Arc<Shared>, r: Replay<'_>) -> Response<Body> {
    let started = Instant::now();
    let deadline = head_deadline(r.path_and_query, r.default_timeout);
    let accounts = shared.core().registry.held_by(&r.session).count();
    let flow = Flow {
        account: Arc::from(r.account),
        token: r.token,
        class: r.class,
    };
    let (id, mut rx) = match shared.tunnels.open(&r.session, r.window, flow, accounts) {
        Ok(opened) => opened,
        Err(Refused::NotCarried) => return Failure::disconnected(r.account).response(),
        Err(Refused::Busy(busy)) => {
            debug!(account = r.account, %busy, "a request past its fair share of the agent's session; answering 429");
            let mut response = Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                busy.to_string(),
            )
            .response();
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
    };
    let mut body = r.body;
    let held = r.held;
    let first = body.split_to(body.len().min(REQUEST_CHUNK));
    let request = KubeRequest {
        id,
        account: r.account.to_owned(),
        method: r.method.as_str().to_owned(),
        path: r.path_and_query.to_owned(),
        headers: forwarded_headers(r.headers),
        deadline: Some(prost_types::Timestamp::from(SystemTime::now() + deadline)),
        body: first,
        // An upgrade's "body" is the client's side of the connection, after the switch.
        body_done: body.is_empty() && r.upgrade.is_none(),
        window_bytes: r.window,
        upgrade: r.upgrade.clone().unwrap_or_default(),
    };
    let mut cancel = CancelOnDrop {
        shared: Arc::clone(shared),
        session: r.session.clone(),
        tx: r.tx.clone(),
        id,
        armed: true,
    };
    let send = async {
        r.tx.send(Ok(frame(hub_frame::Frame::KubeRequest(request))))
            .await
            .ok()?;
        while !body.is_empty() {
            let chunk = body.split_to(body.len().min(REQUEST_CHUNK));
            let part = KubeRequestBody {
                id,
                chunk,
                done: body.is_empty(),
            };
            r.tx.send(Ok(frame(hub_frame::Frame::KubeRequestBody(part))))
                .await
                .ok()?;
        }
        Some(())
    };
    // The agent's own deadline answers 504 first; a little more here covers the trip.
    let wait = deadline + Duration::from_secs(2);
    let head = tokio::time::timeout(wait, async {
        send.await?;
        loop {
            match rx.recv().await? {
                Part::Head(head) => return Some(head),
                // A body before the head: the agent is confused; ignore it.
                Part::Body(_) | Part::Window(_) => continue,
            }
        }
    })
    .await;
    let head = match head {
        Ok(Some(head)) => head,
        Ok(None) => {
            cancel.armed = false;
            info!(
                account = r.account,
                "the agent's session ended before it answered"
            );
            return Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!(
                    "account {:?}: the agent's session ended before it answered; retry",
                    r.account
                ),
            )
            .response();
        }
        Err(_) => {
            warn!(
                account = r.account,
                ?deadline,
                "no answer from the agent before the deadline"
            );
            return Failure::timeout(format!(
                "account {:?}: no answer from its agent within {deadline:?}",
                r.account
            ))
            .response();
        }
    };
    // The agent answered: it has the whole body, the hub no longer holds it.
    drop(held);
    let Ok(status) = StatusCode::from_u16(u16::try_from(head.status).unwrap_or(0)) else {
        warn!(
            account = r.account,
            status = head.status,
            "the agent answered an invalid HTTP status"
        );
        return Failure::new(
            StatusCode::BAD_GATEWAY,
            "InternalError",
            "the agent answered an invalid HTTP status",
        )
        .response();
    };
    let write = !matches!(*r.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if write {
        info!(account = r.account, method = %r.method, path = %short(r.path_and_query), status = status.as_u16(), took = ?started.elapsed(), "write passed to the cluster");
    } else {
        debug!(account = r.account, method = %r.method, path = %short(r.path_and_query), status = status.as_u16(), took = ?started.elapsed(), "read passed to the cluster");
    }
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response.extensions_mut().insert(AnsweredBy("cluster"));
    for h in head.headers {
        if kube_api::is_hop_by_hop(&h.name) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(&h.value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    let answer = Answer {
        rx,
        cancel,
        window: r.window,
        unacked: 0,
        done: false,
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(protocol) = r
            .upgrade
            .as_deref()
            .and_then(|p| HeaderValue::from_str(p).ok())
        else {
            warn!(
                account = r.account,
                "the cluster switched protocols for a request that asked for no upgrade"
            );
            return Failure::new(
                StatusCode::BAD_GATEWAY,
                "InternalError",
                "the cluster switched protocols for a request that asked for no upgrade",
            )
            .response();
        };
        info!(account = r.account, method = %r.method, path = %short(r.path_and_query), protocol = ?protocol, took = ?started.elapsed(), "connection upgraded at the cluster");
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        );
        headers.insert(http::header::UPGRADE, protocol);
        response
            .extensions_mut()
            .insert(Switched(Arc::new(std::sync::Mutex::new(Some(answer)))));
        return response;
    }
    *response.body_mut() = Body::from_stream(answer);
    match &r.barrier {
        Some(barrier) if write && status.is_success() => {
            record_write(shared, r.account, r.method, barrier, response).await
        }
        _ => response,
    }
}

/// Which part answered a request (for metrics): set on answers that did not come
/// from the hub itself.
#[derive(Debug, Clone, Copy)]
pub struct AnsweredBy(pub &'static str);

fn short(path: &str) -> &str {
    match path.char_indices().nth(200) {
        Some((i, _)) => &path[..i],
        None => path,
    }
}

/// Tells the agent to stop a request the hub no longer waits for.
struct CancelOnDrop {
    shared: Arc<Shared>,
    session: SessionId,
    tx: Outbound,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.shared.tunnels.close(&self.session, self.id);
        let cancel = frame(hub_frame::Frame::KubeCancel(KubeCancel {
            id: self.id,
            reason: "the client went away or the hub stopped waiting".into(),
        }));
        if let Err(mpsc::error::TrySendError::Full(f)) = self.tx.try_send(Ok(cancel)) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(f).await;
            });
        }
    }
}

/// The agent's side of a connection the cluster upgraded (on a `101` answer): taken
/// once, by [`Switched::take`].
#[derive(Clone)]
pub struct Switched(Arc<std::sync::Mutex<Option<Answer>>>);

impl std::fmt::Debug for Switched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switched").finish_non_exhaustive()
    }
}

impl Switched {
    /// The connection's answer half, the first time.
    pub fn take(&self) -> Option<Answer> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The response body: the agent's parts as the client reads them; for an upgraded
/// connection, the agent's side of it.
pub struct Answer {
    rx: mpsc::UnboundedReceiver<Part>,
    cancel: CancelOnDrop,
    window: u64,
    unacked: u64,
    done: bool,
}

impl Answer {
    /// The next part from the agent; `None` when its session ended or it overran its
    /// window.
    pub async fn next(&mut self) -> Option<Part> {
        self.rx.recv().await
    }

    /// The bytes in flight either way.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// The agent finished the answer: nothing to cancel.
    pub fn finished(&mut self) {
        self.done = true;
        self.cancel.armed = false;
    }

    /// Sends the agent more of the client's side of an upgraded connection (`done`:
    /// the client closed its sending side); `false` when the session is gone.
    pub async fn send(&self, chunk: Bytes, done: bool) -> bool {
        let c = &self.cancel;
        let part = KubeRequestBody {
            id: c.id,
            chunk,
            done,
        };
        c.tx.send(Ok(frame(hub_frame::Frame::KubeRequestBody(part))))
            .await
            .is_ok()
    }

    /// Grants the agent what the client has read, in steps of a quarter window.
    pub fn read(&mut self, bytes: u64) {
        self.unacked += bytes;
        if self.unacked < (self.window / 4).max(1) {
            return;
        }
        let grant = std::mem::take(&mut self.unacked);
        let c = &self.cancel;
        c.shared.tunnels.grant(&c.session, c.id, grant);
        let f = frame(hub_frame::Frame::KubeWindow(KubeWindow {
            id: c.id,
            bytes: grant,
        }));
        if let Err(mpsc::error::TrySendError::Full(f)) = c.tx.try_send(Ok(f)) {
            let tx = c.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(f).await;
            });
        }
    }
}

impl Stream for Answer {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    // The session ended, or the agent overran its window.
                    self.done = true;
                    self.cancel.armed = false;
                    return Poll::Ready(Some(Err(std::io::Error::other(
                        "the agent's answer ended before it was complete",
                    ))));
                }
                Poll::Ready(Some(Part::Head(_) | Part::Window(_))) => continue,
                Poll::Ready(Some(Part::Body(b))) => {
                    if b.done {
                        self.done = true;
                        self.cancel.armed = false;
                        if !b.error.is_empty() {
                            return Poll::Ready(Some(Err(std::io::Error::other(b.error))));
                        }
                        if b.chunk.is_empty() {
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Ok(b.chunk)));
                    }
                    if b.chunk.is_empty() {
                        continue;
                    }
                    self.read(b.chunk.len() as u64);
                    return Poll::Ready(Some(Ok(b.chunk)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::memory::{Bounds, Memory};

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("32s"), Some(Duration::from_secs(32)));
        assert_eq!(go_duration("1m0s"), Some(Duration::from_secs(60)));
        assert_eq!(go_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "s", "10", "10x", "-1s"] {
            assert_eq!(go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_timeout_parameter_sets_the_deadline() {
        let d = Duration::from_secs(60);
        assert_eq!(head_deadline("/api/v1/pods", d), d);
        assert_eq!(
            head_deadline("/api/v1/pods?timeout=5s&limit=1", d),
            Duration::from_secs(5)
        );
        assert_eq!(head_deadline("/api/v1/pods?timeout=0", d), d);
        assert_eq!(head_deadline("/api/v1/pods?timeout=100h", d), MAX_TIMEOUT);
    }

    #[tokio::test]
    async fn a_body_that_never_ends_is_cut_at_its_deadline() {
        // One chunk, then nothing more, never the end.
        use futures::StreamExt as _;
        let chunks = futures::stream::iter([Ok::<_, std::io::Error>(hyper::body::Frame::data(
            Bytes::from_static(b"{\"kind\":"),
        ))])
        .chain(futures::stream::pending());
        let body = http_body_util::StreamBody::new(chunks);
        let memory = Arc::new(Memory::default());
        let mut held = memory.take(0, 0).expect("nothing held");
        let got = read_body(body, Duration::from_millis(50), &mut held).await;
        assert_eq!(
            got.map_err(|f| (f.code, f.reason)),
            Err((StatusCode::REQUEST_TIMEOUT, "Timeout"))
        );
        let whole = http_body_util::Full::new(Bytes::from_static(b"{}"));
        assert_eq!(
            read_body(whole, Duration::from_secs(5), &mut held)
                .await
                .ok(),
            Some(Bytes::from_static(b"{}"))
        );
    }

    #[tokio::test]
    async fn request_bodies_held_are_bounded_per_token() {
        let memory = Arc::new(Memory::new(Bounds {
            per_token: 3 << 20,
            total: 8 << 20,
        }));
        let body = || http_body_util::Full::new(Bytes::from(vec![b'x'; 2 << 20]));
        let mut first = memory.take(1, 0).expect("nothing held");
        read_body(body(), Duration::from_secs(5), &mut first)
            .await
            .expect("within the bound");
        // The first is still on its way to the agent: a second of the same token
        // would hold more than its bound.
        let mut second = memory.take(1, 0).expect("nothing more held");
        let refused = read_body(body(), Duration::from_secs(5), &mut second).await;
        assert_eq!(
            refused.map_err(|f| (f.code, f.reason)).err(),
            Some((StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"))
        );
        drop(second);
        // Another token is not affected; and once the first is sent, room again.
        let mut other = memory.take(2, 0).expect("nothing held");
        read_body(body(), Duration::from_secs(5), &mut other)
            .await
            .expect("another token");
        drop(first);
        let mut again = memory.take(1, 0).expect("given back");
        read_body(body(), Duration::from_secs(5), &mut again)
            .await
            .expect("given back");
        // Too large for any request: 413 whatever is held.
        let huge = http_body_util::Full::new(Bytes::from(vec![b'x'; MAX_REQUEST_BODY + 1]));
        let mut alone = Arc::new(Memory::default())
            .take(3, 0)
            .expect("nothing held");
        assert_eq!(
            read_body(huge, Duration::from_secs(5), &mut alone)
                .await
                .map_err(|f| f.code)
                .err(),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
    }

    #[test]
    fn a_timeout_too_large_to_add_up_is_the_default_not_a_panic() {
        // Each part fits a Duration, their sum does not: the API server falls back to
        // its default for a timeout it cannot parse, and so does the hub.
        let huge = "10000000000000000000s10000000000000000000s";
        assert_eq!(go_duration(huge), None);
        let d = Duration::from_secs(60);
        assert_eq!(head_deadline(&format!("/api/v1/pods?timeout={huge}"), d), d);
        assert_eq!(go_duration("1e400h"), None);
    }

    #[test]
    fn credentials_and_connection_headers_stay_at_the_hub() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer t"),
            ("connection", "keep-alive"),
            ("host", "hub"),
            ("content-type", "application/apply-patch+yaml"),
            ("x-remote-user", "admin"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let names: Vec<String> = forwarded_headers(&h).into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["content-type"]);
    }
}
