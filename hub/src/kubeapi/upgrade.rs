//! exec, attach, port-forward (and `kubectl cp`, which is exec): requests that ask for a
//! connection upgrade, WebSocket (`v5.channel.k8s.io`, port-forward's tunnelled SPDY)
//! or SPDY alike. The hub parses neither protocol:
//!
//! - the request is authorized as any other (the account's token, its namespaces; see
//!   `server.rs`), then travels to the agent with the protocol it asks for
//!   ([`super::passthrough`]); the agent makes the same upgrade request to the API
//!   server and answers with its head;
//! - on `101` both sides carry the connection's bytes as they are ([`carry`]): the
//!   cluster's within the window the hub grants as the client reads (as any answer's),
//!   the client's within the window the agent grants as the cluster reads, so a client
//!   or a process that stops reading holds back its own session only;
//! - the client closing its sending side is passed on as a half-close; the cluster
//!   closing the connection ends the session; the client going away, or the idle or
//!   total time limit ([`Limits`]), cancels it at the agent, which closes it at the API
//!   server.
//!
//! Only HTTP/1.1 requests upgrade (as kubectl's do); HTTP/2 has no `Upgrade` header.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tracing::{debug, info};

use super::passthrough::Answer;
use super::status::Failure;
use crate::stream::tunnel::Part;

/// The largest part of the client's bytes in one frame.
const CHUNK: usize = 64 << 10;

/// The protocol a request asks to upgrade to (its `Upgrade` header), if it asks.
pub fn requested(headers: &HeaderMap) -> Result<Option<String>, Failure> {
    let Some(value) = headers.get(http::header::UPGRADE) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(protocol) if !protocol.trim().is_empty() => Ok(Some(protocol.trim().to_owned())),
        _ => Err(Failure::bad_request(
            "the Upgrade header names no protocol the hub can pass on",
        )),
    }
}

/// How long an upgraded connection may last.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// With no byte either way for this long, it is closed.
    pub idle: Duration,
    /// It is closed this long after it began.
    pub total: Duration,
}

/// Why a session ended, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The cluster closed the connection.
    Cluster,
    /// The cluster's side broke off (the agent said why).
    ClusterError,
    /// The client went away or broke off.
    Client,
    /// The agent's session ended, or it overran its window.
    Agent,
    Idle,
    Total,
}

/// The client's side of an upgraded connection, as [`carry`] takes it.
pub fn client_io(io: Upgraded) -> TokioIo<Upgraded> {
    TokioIo::new(io)
}

/// Carries the client's upgraded connection `io` and the agent's side `agent` until
/// either ends, or a limit passes. Dropping `agent` unfinished cancels the session at
/// the agent.
pub async fn carry<IO>(io: IO, mut agent: Answer, limits: Limits, account: &str)
where
    IO: AsyncRead + AsyncWrite,
{
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + limits.total;
    let (mut reader, mut writer) = tokio::io::split(io);
    let mut buf = vec![0u8; CHUNK];
    // The client's bytes the agent may still receive.
    let mut credit = agent.window();
    let mut client_open = true;
    let (mut up, mut down) = (0u64, 0u64);
    let end = loop {
        let room = usize::try_from(credit).unwrap_or(CHUNK).min(CHUNK);
        tokio::select! {
            part = agent.next() => match part {
                None => break End::Agent,
                Some(Part::Window(w)) => credit = credit.saturating_add(w.bytes),
                Some(Part::Head(_)) => {}
                Some(Part::Body(b)) => {
                    if !b.chunk.is_empty() {
                        let len = b.chunk.len() as u64;
                        // A client that stops reading meets the idle limit here too.
                        match tokio::time::timeout(limits.idle, writer.write_all(&b.chunk)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => break End::Client,
                            Err(_) => break End::Idle,
                        }
                        down += len;
                        agent.read(len);
                    }
                    if b.done {
                        agent.finished();
                        let _ = writer.shutdown().await;
                        if b.error.is_empty() {
                            break End::Cluster;
                        }
                        debug!(account, error = %crate::core::clip::clip(&b.error), "the cluster's side of an upgraded connection broke off");
                        break End::ClusterError;
                    }
                }
            },
            read = reader.read(&mut buf[..room]), if client_open && room > 0 => match read {
                Ok(0) => {
                    client_open = false;
                    if !agent.send(Bytes::new(), true).await {
                        break End::Agent;
                    }
                }
                Ok(n) => {
                    credit -= n as u64;
                    up += n as u64;
                    if !agent.send(Bytes::copy_from_slice(&buf[..n]), false).await {
                        break End::Agent;
                    }
                }
                Err(_) => break End::Client,
            },
            () = tokio::time::sleep(limits.idle) => break End::Idle,
            () = tokio::time::sleep_until(deadline) => break End::Total,
        }
    };
    let took = started.elapsed();
    match end {
        End::Idle => {
            info!(account, ?took, up, down, idle = ?limits.idle, "closed an upgraded connection idle for too long")
        }
        End::Total => {
            info!(account, ?took, up, down, limit = ?limits.total, "closed an upgraded connection open for too long")
        }
        _ => info!(account, ?took, up, down, ended_by = ?end, "upgraded connection ended"),
    }
    // `agent` drops here: unless the cluster ended the session, the agent is told to
    // end it.
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::registry::SessionId;
    use crate::kubeapi::passthrough::{self, Replay, Switched};
    use http::HeaderValue;
    use scale_agent_proto::v1::{KubeResponseHead, KubeWindow, hub_frame};
    use std::sync::Arc;
    use tokio::sync::mpsc;

    /// The frames the agent got within `wait`, until one that is not a body part.
    async fn body_parts(
        inbox: &mut mpsc::Receiver<Result<scale_agent_proto::v1::HubFrame, tonic::Status>>,
        wait: Duration,
    ) -> (usize, bool, Option<hub_frame::Frame>) {
        let (mut bytes, mut done) = (0, false);
        while let Ok(Some(Ok(f))) = tokio::time::timeout(wait, inbox.recv()).await {
            match f.frame {
                Some(hub_frame::Frame::KubeRequestBody(b)) => {
                    bytes += b.chunk.len();
                    done |= b.done;
                }
                other => return (bytes, done, other),
            }
        }
        (bytes, done, None)
    }

    /// One session through the hub's side, the agent played by hand: each direction
    /// stays within its window until the other side grants more, the client's
    /// half-close is passed on, and the idle limit ends the session with a cancel.
    #[tokio::test]
    async fn each_direction_keeps_its_window_and_the_idle_limit_cancels() {
        let shared = crate::stream::session::testing::shared();
        let sid: SessionId = Arc::from("s");
        shared.tunnels.enable(&sid);
        shared.tunnels.enable_upgrades(&sid);
        let (tx, mut inbox) = mpsc::channel(256);
        let window = 1000;
        let replay = tokio::spawn({
            let shared = Arc::clone(&shared);
            let sid = sid.clone();
            async move {
                let (method, headers) = (http::Method::GET, HeaderMap::new());
                passthrough::replay(
                    &shared,
                    Replay {
                        account: "a",
                        token: 0,
                        class: crate::core::fair::Class::LongRunning,
                        session: sid,
                        tx,
                        method: &method,
                        path_and_query: "/api/v1/namespaces/n/pods/p/exec?command=sh",
                        headers: &headers,
                        body: Bytes::new(),
                        held: Arc::new(crate::core::memory::Memory::new(
                            crate::core::memory::Bounds {
                                per_token: 1 << 20,
                                total: 1 << 20,
                            },
                        ))
                        .take(0, 0)
                        .expect("nothing held yet"),
                        default_timeout: Duration::from_secs(5),
                        window,
                        barrier: None,
                        upgrade: Some("websocket".into()),
                    },
                )
                .await
            }
        });
        let Some(Ok(first)) = inbox.recv().await else {
            panic!("no request reached the agent");
        };
        let Some(hub_frame::Frame::KubeRequest(request)) = first.frame else {
            panic!("not a request: {first:?}");
        };
        assert_eq!(request.upgrade, "websocket");
        assert!(!request.body_done, "the connection's bytes follow");
        let id = request.id;
        shared.tunnels.deliver(
            &sid,
            Part::Head(KubeResponseHead {
                id,
                status: 101,
                headers: vec![],
            }),
        );
        let mut response = replay.await.expect("replayed");
        assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            response.headers().get(http::header::UPGRADE),
            Some(&HeaderValue::from_static("websocket"))
        );
        let agent = response
            .extensions_mut()
            .remove::<Switched>()
            .and_then(|s| s.take())
            .expect("the agent's side");
        let (mut client, hub_side) = tokio::io::duplex(64);
        let limits = Limits {
            idle: Duration::from_millis(1500),
            total: Duration::from_secs(30),
        };
        let carried = tokio::spawn(async move { carry(hub_side, agent, limits, "a").await });

        // The cluster's bytes reach the client; what it read is granted back.
        let delivered = shared.tunnels.deliver(
            &sid,
            Part::Body(scale_agent_proto::v1::KubeResponseBody {
                id,
                chunk: Bytes::from(vec![b'c'; 600]),
                done: false,
                error: String::new(),
            }),
        );
        assert_eq!(delivered, crate::stream::tunnel::Delivery::Delivered);
        let mut got = vec![0u8; 600];
        client
            .read_exact(&mut got)
            .await
            .expect("the cluster's bytes");
        let Ok(Some(Ok(grant))) = tokio::time::timeout(Duration::from_secs(2), inbox.recv()).await
        else {
            panic!("no grant for what the client read");
        };
        assert!(
            matches!(
                grant.frame,
                Some(hub_frame::Frame::KubeWindow(KubeWindow { bytes: 600, .. }))
            ),
            "{grant:?}"
        );

        // The client's bytes reach the agent only as far as it granted.
        let (mut read_half, mut write_half) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            write_half.write_all(&[b'i'; 2500]).await.expect("written");
            write_half.shutdown().await.expect("half-closed");
            write_half
        });
        let (bytes, done, _) = body_parts(&mut inbox, Duration::from_millis(300)).await;
        assert_eq!((bytes, done), (1000, false), "the first window only");
        shared
            .tunnels
            .deliver(&sid, Part::Window(KubeWindow { id, bytes: 1000 }));
        let (bytes, done, _) = body_parts(&mut inbox, Duration::from_millis(300)).await;
        assert_eq!((bytes, done), (1000, false), "as much as granted");
        shared
            .tunnels
            .deliver(&sid, Part::Window(KubeWindow { id, bytes: 1000 }));
        let (bytes, done, next) = body_parts(&mut inbox, Duration::from_millis(300)).await;
        assert_eq!((bytes, done), (500, true), "the rest, then the half-close");
        assert!(next.is_none(), "{next:?}");
        let _write_half = writer.await.expect("the client wrote");

        // Nothing either way for the idle limit: the session ends, cancelled at the agent.
        tokio::time::timeout(Duration::from_secs(5), carried)
            .await
            .expect("ended by the idle limit")
            .expect("carried");
        let (_, _, next) = body_parts(&mut inbox, Duration::from_secs(2)).await;
        assert!(
            matches!(next, Some(hub_frame::Frame::KubeCancel(_))),
            "{next:?}"
        );
        let mut rest = Vec::new();
        read_half.read_to_end(&mut rest).await.expect("closed");
        assert!(rest.is_empty());
    }

    #[test]
    fn the_upgrade_asked_for_is_passed_on_as_it_is() {
        let mut h = HeaderMap::new();
        assert_eq!(requested(&h).map_err(|f| f.code), Ok(None));
        h.insert(http::header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        assert_eq!(
            requested(&h).map_err(|f| f.code),
            Ok(Some("SPDY/3.1".into()))
        );
        h.insert(http::header::UPGRADE, HeaderValue::from_static(" "));
        assert!(requested(&h).is_err());
    }
}
