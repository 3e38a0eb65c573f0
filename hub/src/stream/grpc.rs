//! The AgentHub gRPC service: accepts a stream, checks its Hello, answers
//! Welcome, and hands the stream to a [`Session`].

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::UnixTime;
use scale_agent_proto::PROTOCOL_VERSION;
use scale_agent_proto::v1::agent_hub_server::AgentHub;
use scale_agent_proto::v1::{AgentFrame, HubFrame, Welcome, agent_frame, hub_frame};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument as _, info, info_span, warn};

use crate::core::clip::clip;
use crate::core::registry::{SessionId, ShardRef};
use crate::net::identity::{
    IdentityError, IdentitySource, PROXY_SECRET_HEADER, PeerInfo, Presented,
};
use crate::state::{Outbound, SessionHandle, Shared};
use crate::stream::session::Session;

/// Capabilities this hub supports (Welcome.capabilities is the intersection
/// with the agent's).
pub const CAPABILITIES: &[&str] = &[
    "watch-progress",
    scale_agent_proto::kube_api::CAPABILITY,
    scale_agent_proto::kube_api::UPGRADE_CAPABILITY,
    "api-surface",
];

/// Frames queued towards one agent before the hub waits for it to read.
const OUTBOUND_QUEUE: usize = 256;

/// The AgentHub service.
#[derive(Debug, Clone)]
pub struct HubService {
    shared: Arc<Shared>,
}

impl HubService {
    /// A service over the shared state.
    pub fn new(shared: Arc<Shared>) -> HubService {
        HubService { shared }
    }

    fn reject(&self, reason: &'static str, status: Status) -> Status {
        self.shared.metrics.session_rejected(reason);
        status
    }
}

fn frame_name(f: &agent_frame::Frame) -> &'static str {
    match f {
        agent_frame::Frame::Hello(_) => "Hello",
        agent_frame::Frame::Register(_) => "Register",
        agent_frame::Frame::Unregister(_) => "Unregister",
        agent_frame::Frame::EventBatch(_) => "EventBatch",
        agent_frame::Frame::SyncStart(_) => "SyncStart",
        agent_frame::Frame::SyncEnd(_) => "SyncEnd",
        agent_frame::Frame::OperationResult(_) => "OperationResult",
        agent_frame::Frame::Heartbeat(_) => "Heartbeat",
        agent_frame::Frame::WatchProgress(_) => "WatchProgress",
        agent_frame::Frame::KubeResponseHead(_) => "KubeResponseHead",
        agent_frame::Frame::KubeResponseBody(_) => "KubeResponseBody",
        agent_frame::Frame::ApiSurface(_) => "ApiSurface",
        agent_frame::Frame::KubeWindow(_) => "KubeWindow",
    }
}

#[tonic::async_trait]
impl AgentHub for HubService {
    type ConnectStream = ReceiverStream<Result<HubFrame, Status>>;

    /// Answers at once with the response stream, then reads Hello from the
    /// request stream: the agent may send Hello before or after it sees the
    /// response headers. A refused Hello ends the stream with its status.
    async fn connect(
        &self,
        request: Request<Streaming<AgentFrame>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let info = request.extensions().get::<PeerInfo>().cloned();
        let peer = info
            .as_ref()
            .map(|p| p.remote_addr)
            .or_else(|| request.remote_addr())
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let policy = &self.shared.identity;
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .map(|v| v.to_str().unwrap_or_default())
        };
        let presented = Presented {
            client_cert: header(policy.client_cert_header.as_str()),
            proxy_secret: header(PROXY_SECRET_HEADER),
        };
        let identity = match policy.resolve(info.as_ref(), presented, UnixTime::now()) {
            Ok(identity) => identity,
            Err(IdentityError::Missing(message)) => {
                warn!(%peer, %message, "unauthenticated stream refused");
                return Err(self.reject("unauthenticated", Status::unauthenticated(message)));
            }
            Err(IdentityError::Invalid(message)) => {
                warn!(%peer, %message, "stream with an unusable identity refused");
                return Err(self.reject("bad_identity", Status::permission_denied(message)));
            }
        };
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let service = self.clone();
        tokio::spawn(async move {
            match service.handshake(&peer, identity, &mut inbound, &tx).await {
                Ok(session) => {
                    let shard = session.shard.to_string();
                    let span = info_span!("session", session = %session.id, shard = %clip(&shard), replica = %clip(&session.replica));
                    session.run(inbound).instrument(span).await;
                }
                Err(status) => {
                    // The agent may be gone already; then nobody needs telling.
                    let _ = tx.send(Err(status)).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl HubService {
    /// Reads and checks Hello, sends Welcome, and registers the session.
    async fn handshake(
        &self,
        peer: &str,
        identity: Option<(ShardRef, IdentitySource)>,
        inbound: &mut Streaming<AgentFrame>,
        tx: &Outbound,
    ) -> Result<Session, Status> {
        let hello_timeout = self.shared.config.hello_timeout;
        let first = match tokio::time::timeout(hello_timeout, inbound.message()).await {
            Err(_) => {
                warn!(%peer, "no Hello within {hello_timeout:?}; refusing the stream");
                return Err(self.reject(
                    "hello_timeout",
                    Status::deadline_exceeded(format!("no Hello within {hello_timeout:?}")),
                ));
            }
            Ok(Err(status)) => {
                info!(%peer, code = ?status.code(), "stream broke before Hello");
                return Err(status);
            }
            Ok(Ok(None)) => {
                return Err(self.reject(
                    "no_hello",
                    Status::invalid_argument("the stream ended before Hello"),
                ));
            }
            Ok(Ok(Some(f))) => f,
        };
        let hello = match first.frame {
            Some(agent_frame::Frame::Hello(hello)) => hello,
            other => {
                let got = other.as_ref().map_or("a frame of unknown kind", frame_name);
                warn!(%peer, got, "first frame is not Hello; refusing the stream");
                return Err(self.reject(
                    "no_hello",
                    Status::failed_precondition(format!(
                        "the first frame must be Hello; got {got}"
                    )),
                ));
            }
        };
        let shard = hello.shard.clone().unwrap_or_default();
        if hello.protocol_version != PROTOCOL_VERSION {
            warn!(%peer, shard = %clip(&format!("{}/{}", shard.namespace, shard.name)), replica = %clip(&hello.replica_id),
                version = hello.protocol_version, "unsupported protocol version; refusing the stream");
            return Err(self.reject(
                "protocol_version",
                Status::failed_precondition(format!(
                    "unsupported protocol version {}; this hub speaks {PROTOCOL_VERSION}",
                    hello.protocol_version
                )),
            ));
        }
        if shard.name.is_empty() {
            warn!(%peer, replica = %clip(&hello.replica_id), "Hello names no shard; refusing the stream");
            return Err(self.reject(
                "invalid_hello",
                Status::invalid_argument("Hello.shard.name is required"),
            ));
        }
        let shard = ShardRef {
            namespace: shard.namespace,
            name: shard.name,
        };
        let source = match identity {
            Some((certified, source)) if certified != shard => {
                warn!(%peer, hello_shard = %clip(&shard.to_string()), certified_shard = %certified, source = source.label(),
                    "Hello names another shard than the client certificate; refusing the stream");
                return Err(self.reject(
                    "wrong_shard",
                    Status::permission_denied(format!(
                        "Hello names shard {shard}, but the client certificate identifies shard {certified}: a replica may speak only for its own shard"
                    )),
                ));
            }
            Some((_, source)) => source,
            None => IdentitySource::Hello,
        };
        let id: SessionId = Arc::from(uuid::Uuid::new_v4().simple().to_string());
        let replica = if hello.replica_id.is_empty() {
            format!("unnamed-{id}")
        } else {
            hello.replica_id.clone()
        };
        let capabilities: Vec<String> = hello
            .capabilities
            .iter()
            .filter(|c| CAPABILITIES.contains(&c.as_str()))
            .cloned()
            .collect();
        let kube_api = capabilities
            .iter()
            .any(|c| c == scale_agent_proto::kube_api::CAPABILITY);
        let kube_upgrade = capabilities
            .iter()
            .any(|c| c == scale_agent_proto::kube_api::UPGRADE_CAPABILITY);
        let config = &self.shared.config;
        let welcome = Welcome {
            session_id: id.to_string(),
            hub_id: config.hub_id.clone(),
            protocol_version: PROTOCOL_VERSION,
            heartbeat_interval: prost_types::Duration::try_from(config.heartbeat_interval).ok(),
            max_message_bytes: config.max_message_bytes,
            capabilities,
            initial_window_bytes: config.initial_window_bytes,
        };
        tx.send(Ok(HubFrame {
            frame: Some(hub_frame::Frame::Welcome(welcome)),
        }))
        .await
        .map_err(|_| Status::cancelled("the agent went away before Welcome"))?;
        let handle = SessionHandle {
            tx: tx.clone(),
            shard,
            replica,
        };
        info!(session = %id, shard = %clip(&handle.shard.to_string()), replica = %clip(&handle.replica), %peer, identity = source.label(),
            agent_version = %clip(&hello.agent_version), capabilities = %clip(&hello.capabilities.join(",")), "session opened");
        let session = Session::open(Arc::clone(&self.shared), id, handle, source);
        if kube_api {
            self.shared.tunnels.enable(&session.id);
            if kube_upgrade {
                self.shared.tunnels.enable_upgrades(&session.id);
            }
        }
        Ok(session)
    }
}

/// How often the server pings idle connections, and how long it waits for
/// the answer, to notice dead peers behind load balancers.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
